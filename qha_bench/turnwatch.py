"""
A bench-only watch of a broker process's reactor turns: a L{LoopingCall}
ticks every 5 ms, and every quarter second the longest gap between two
ticks in that quarter (and the reactor thread's CPU seconds within that
gap: the store's thread, writing and syncing at the same time, is not
counted) is appended to a file, as C{wall-clock-time longest-gap-ms
its-CPU-ms longest-full-collection-ms most-CPU-ms}: the longest collection
of the oldest generation by the cyclic garbage collector in that quarter
(0 if none), and the most CPU any gap of that quarter had (the longest
turn by the reactor's own work, whatever the waits for a core).

The catch-up bench (L{qha_bench.catchupbench}) loads it into the brokers
it starts, through a C{sitecustomize} module it writes to a scratch
directory put on their C{PYTHONPATH} (see L{SITECUSTOMIZE}); it is never
part of a broker otherwise. A gap longer than the tick is a turn of the
reactor that long (or the reactor waiting for a core: the CPU seconds tell
which).
"""

from __future__ import annotations

import os
import time

TICK = 0.005
"""
Seconds between two ticks.
"""

REPORT = 0.25
"""
Seconds between two lines of the file.
"""

SITECUSTOMIZE = """\
import os
if os.environ.get("QHA_TURNWATCH"):
    import qha_bench.turnwatch
    qha_bench.turnwatch.install(os.environ["QHA_TURNWATCH"])
"""
"""
The C{sitecustomize} module that loads the watch into a process when
C{QHA_TURNWATCH} names a directory (the file is C{turns-PID} in it).
"""


def install(directory: str) -> None:
    """
    Start the watch once the reactor runs, writing to C{turns-PID} in
    C{directory}.
    """
    from twisted.internet import reactor, task

    import gc

    path = os.path.join(directory, f"turns-{os.getpid()}")
    state = {
        "last": time.monotonic(),
        "cpu": time.thread_time(),
        "gap": 0.0,
        "gapCPU": 0.0,
        "collecting": 0.0,
        "collection": 0.0,
        "mostCPU": 0.0,
    }
    out = open(path, "a", buffering=1)

    def collected(phase: str, info: dict) -> None:
        """
        Time each full collection.
        """
        if info.get("generation") != 2:
            return
        if phase == "start":
            state["collecting"] = time.monotonic()
        else:
            state["collection"] = max(state["collection"], time.monotonic() - state["collecting"])

    gc.callbacks.append(collected)

    def tick() -> None:
        """
        One tick: note the gap since the last one, if the longest.
        """
        now = time.monotonic()
        cpu = time.thread_time()
        gap = now - state["last"]
        used = cpu - state["cpu"]
        if gap > state["gap"]:
            state["gap"] = gap
            state["gapCPU"] = used
        if used > state["mostCPU"]:
            state["mostCPU"] = used
        state["last"] = now
        state["cpu"] = cpu

    def report() -> None:
        """
        Write the longest gap of the last quarter second, and start again.
        """
        out.write(
            f"{time.time():.3f} {state['gap'] * 1000:.1f} {state['gapCPU'] * 1000:.1f}"
            f" {state['collection'] * 1000:.1f} {state['mostCPU'] * 1000:.1f}\n"
        )
        state["gap"] = state["gapCPU"] = state["collection"] = state["mostCPU"] = 0.0

    def start() -> None:
        """
        Start both loops.
        """
        state["last"] = time.monotonic()
        state["cpu"] = time.thread_time()
        task.LoopingCall(tick).start(TICK)
        task.LoopingCall(report).start(REPORT, now=False)

    reactor.callWhenRunning(start)  # type: ignore[attr-defined]


def longestTurn(
    directory: str, pid: int, since: float, until: float
) -> tuple[float, float, float, float] | None:
    """
    The longest gap (ms) and its CPU (ms) that process C{pid} wrote for
    the wall-clock times C{since} to C{until}, its longest full collection
    then (ms), and the most CPU a gap had then (ms), or L{None} if it wrote
    none.
    """
    path = os.path.join(directory, f"turns-{pid}")
    try:
        with open(path) as lines:
            rows = [line.split() for line in lines]
    except OSError:
        return None
    chosen = [
        (float(gap), float(cpu), float(collection), float(most))
        for at, gap, cpu, collection, most in (row for row in rows if len(row) == 5)
        if since <= float(at) <= until + REPORT
    ]
    if not chosen:
        return None
    gap, cpu, _, _ = max(chosen)
    return (
        gap,
        cpu,
        max(collection for _, _, collection, _ in chosen),
        max(most for _, _, _, most in chosen),
    )


__all__ = ["SITECUSTOMIZE", "install", "longestTurn"]
