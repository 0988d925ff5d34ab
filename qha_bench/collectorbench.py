"""
What the garbage collector costs a broker with a growing backlog, with
CPython's default policy and with L{qha.collector.CollectorPolicy}: N
messages published in-process into one queue of a virtual host (no
sockets), each mode in a fresh process, in alternating rounds.

    python -m qha_bench.collectorbench --messages 1000000 --rounds 2

prints, per run, the CPU per message, the number of full collections,
the time spent collecting and the longest collection (the broker stands
still meanwhile). See doc/performance.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import struct
import subprocess
import sys
import time
from typing import Any

MODES = ("default", "policy")


def measure(messages: int, mode: str) -> dict[str, Any]:
    """
    Publish C{messages} 100-byte messages into one queue with the
    collector in C{mode}, and report what the collections cost.
    """
    from twisted.internet.task import Clock

    from qha.broker.message import Message
    from qha.broker.vhost import VirtualHost
    from qha.collector import CollectorPolicy

    vhost = VirtualHost()
    vhost.declareQueue("backlog")
    header = struct.pack(">HHQH", 60, 0, 100, 0)
    addressing = b"\x00\x07backlog"
    pauses: list[tuple[int, float]] = []
    started: list[float] = [0.0]

    def timed(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses.append((info["generation"], time.perf_counter() - started[0]))

    gc.collect()
    gc.callbacks.append(timed)
    policy = None
    if mode == "policy":
        policy = CollectorPolicy(Clock())
        policy.startService()
    begin = time.process_time()
    for _ in range(messages):
        vhost.publish("", "backlog", Message(addressing, header, b"x" * 100))
    cpu = time.process_time() - begin
    if policy is not None:
        policy.stopService()
    gc.callbacks.remove(timed)
    return {
        "mode": mode,
        "messages": messages,
        "usPerMessage": cpu * 1e6 / messages,
        "fullCollections": sum(1 for generation, _ in pauses if generation == 2),
        "collectingMs": sum(pause for _, pause in pauses) * 1000,
        "longestMs": max((pause for _, pause in pauses), default=0.0) * 1000,
    }


def main(argv: list[str] | None = None) -> None:
    """
    Run the rounds, each mode in a fresh process, and print the results.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.one:
        print(json.dumps(measure(options.messages, options.one)))
        return
    for round in range(1, options.rounds + 1):
        order = MODES if round % 2 else MODES[::-1]
        for mode in order:
            output = subprocess.run(
                [sys.executable, "-m", "qha_bench.collectorbench", "--messages",
                 str(options.messages), "--one", mode],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            result = json.loads(output.splitlines()[-1])
            print(
                f"round {round} {mode:8} {result['usPerMessage']:.2f} us/msg,"
                f" {result['fullCollections']} full collections,"
                f" collecting {result['collectingMs']:.0f} ms,"
                f" longest {result['longestMs']:.1f} ms",
                flush=True,
            )


if __name__ == "__main__":
    main()
