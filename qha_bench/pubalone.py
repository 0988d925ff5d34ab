"""
Publishing alone, in-process (issue 15): the CPU a primary spends on a
confirmed publisher with no consumer, against a standalone broker, without
sockets, other processes or a shared machine's noise.

A client publishes windows of C{--window} messages of C{--size} bytes, each
window one read of an L{AMQPServer} over a L{StringTransport}, in confirm
mode, to a queue without consumers. Standalone, the read confirms its
window. Replicated (C{--ha-replicate all}), the primary's
L{ReplicationGate} and one L{ReplicationSource} send each window's events
in one L{Events} box over an in-memory connection to a fake backup that
answers every box at once without applying it; the answer confirms the
window. The fake backup's time is measured and left out, so the figures
are the primary's alone (CPU time of the thread, so that time the
process waits for a core on a shared machine does not count): microseconds a message for the read (the publish
path and its replication hooks), the box (sealing and writing it) and the
answer (taking it and writing the confirm). With C{--without-events}, a
third variant's source writes no enqueue events (its boxes carry none, the
confirms still wait for them): what replicating costs besides encoding them.

    PYTHONPATH=. python -m qha_bench.pubalone [--windows 2000] [--rounds 5] [--without-events] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from typing import Any, Callable

from pamqp import commands
from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.test import iosim

from qha.amqp.protocol import BrokerFactory
from qha.broker.vhost import VirtualHost
from qha.ha.commands import Events
from qha.ha.primary import ReplicationGate, ReplicationSource, SourceObserver
from qha.test.support import Client, fastUsers, publishBytes


class _Options:
    """
    What the gate reads of the node: C{--ha-replicate all}, no minimum of
    backups (read through properties, as of an L{qha.ha.node.HANode}).
    """

    @property
    def replicateDefault(self) -> str:
        """
        C{--ha-replicate}.
        """
        return "all"

    @property
    def minBackups(self) -> int:
        """
        C{--ha-min-backups}.
        """
        return 0


class _Node(_Options):
    """
    What a L{ReplicationSource} needs of its broker.
    """

    epoch = 1
    position = 0
    heartbeat = 0.0

    def __init__(self, vhost: VirtualHost, gate: ReplicationGate) -> None:
        """
        @param vhost: the virtual host streamed.
        @param gate: the gate of the confirms.
        """
        self.vhost = vhost
        self.gate = gate

    def backupReady(self, source: ReplicationSource) -> None:
        """
        The backup caught up: the gate counts it.
        """
        self.gate.backupReady(source)

    def backupLost(self, source: ReplicationSource) -> None:
        """
        The backup went (not in this bench).
        """

    def heardEpoch(self, epoch: int, role: str, brokerId: str) -> None:
        """
        The backup spoke of an epoch (not in this bench).
        """


class _FakeBackup(amp.CommandLocator):
    """
    A backup that answers every L{Events} box at once and applies nothing.

    @ivar boxes: boxes answered.
    """

    def __init__(self) -> None:
        """
        No box yet.
        """
        self.boxes = 0

    @Events.responder
    def events(self, epoch: int, seq: int, events: bytes, position: int | None = None, transient: bool | None = None) -> dict[str, Any]:
        """
        Answer at once.
        """
        self.boxes += 1
        return {}


class _Timed:
    """
    Wraps a method of an object with a stopwatch.

    @ivar seconds: the time spent in it so far.
    """

    def __init__(self, owner: Any, name: str) -> None:
        """
        Replace C{owner.name} with a timed call of it.
        """
        self.seconds = 0.0
        original: Callable[..., Any] = getattr(owner, name)

        def timed(*args: Any) -> Any:
            start = time.thread_time()
            try:
                return original(*args)
            finally:
                self.seconds += time.thread_time() - start

        setattr(owner, name, timed)


class _Silent(SourceObserver):
    """
    A source's observer that writes no enqueue events: what replicating
    costs besides them (the gate, the observer and holder calls, the boxes
    and answers), for C{--without-events}.
    """

    __slots__ = ()

    def enqueued(self, queue: Any, entry: Any) -> None:
        """
        Write nothing.
        """


def _client(factory: BrokerFactory, window: int, size: int) -> tuple[Client, bytes]:
    """
    A client in confirm mode with a queue C{perf} declared, and the bytes
    of one window of publishes to it.
    """
    client = Client(factory)
    client.handshake()
    client.openChannel(1)
    client.call(1, commands.Confirm.Select())
    client.call(1, commands.Queue.Declare(queue="perf"))
    one = publishBytes(1, "", "perf", b"x" * size)
    return client, one * window


def standalone(windows: int, window: int, size: int) -> dict[str, float]:
    """
    A standalone broker: microseconds a message for the reads.
    """
    clock = Clock()
    vhost = VirtualHost(clock=clock)
    factory = BrokerFactory(vhost, fastUsers(), clock)
    client, data = _client(factory, window, size)
    send = client.server.dataReceived
    transport = client.transport
    gc.collect()
    gc.disable()
    start = time.thread_time()
    for _ in range(windows):
        send(data)
        clock.advance(0)
        transport.clear()
    elapsed = time.thread_time() - start
    gc.enable()
    assert client.server.channels[1].confirmedUpTo == windows * window
    messages = windows * window
    return {"read": elapsed / messages * 1e6, "total": elapsed / messages * 1e6}


def replicated(windows: int, window: int, size: int, events: bool = True) -> dict[str, float]:
    """
    A primary with one ready backup (a fake that answers at once):
    microseconds a message for the reads, the boxes and the answers.

    @param events: if false, the source writes no enqueue events (its
        boxes carry none; the confirms still wait for them): an experiment
        that parts their cost from the rest.
    """
    clock = Clock()
    vhost = VirtualHost(clock=clock)
    gate = ReplicationGate(_Options(), clock)
    node = _Node(vhost, gate)
    factory = BrokerFactory(vhost, fastUsers(), clock, holders=[gate], pacer=gate)
    backup = _FakeBackup()
    primarySide = amp.AMP()
    backupSide = amp.AMP(locator=backup)
    pump = iosim.connect(
        primarySide,
        iosim.makeFakeServer(primarySide),
        backupSide,
        iosim.makeFakeClient(backupSide),
        clock=clock,
    )
    source = ReplicationSource(node, primarySide, "backup", "backup:5673", clock)  # type: ignore[arg-type]
    source.start({})
    clock.advance(0)
    pump.flush()
    assert source.ready and gate.sources, "the fake backup is not ready"
    if not events:
        for observer in vhost.observers:
            if isinstance(observer, SourceObserver):
                observer.__class__ = _Silent
    client, data = _client(factory, window, size)
    clock.advance(0)
    pump.flush()
    backupTime = _Timed(backupSide, "dataReceived")
    send = client.server.dataReceived
    transport = client.transport
    reads = boxes = answers = 0.0
    counter = time.thread_time
    gc.collect()
    gc.disable()
    before = backup.boxes
    for _ in range(windows):
        t0 = counter()
        send(data)
        t1 = counter()
        clock.advance(0)
        t2 = counter()
        pump.flush()
        t3 = counter()
        transport.clear()
        reads += t1 - t0
        boxes += t2 - t1
        answers += t3 - t2
    gc.enable()
    answers -= backupTime.seconds
    assert client.server.channels[1].confirmedUpTo == windows * window
    assert backup.boxes - before == windows, (backup.boxes - before, windows)
    messages = windows * window
    return {
        "read": reads / messages * 1e6,
        "box": boxes / messages * 1e6,
        "answer": answers / messages * 1e6,
        "total": (reads + boxes + answers) / messages * 1e6,
    }


def main(argv: list[str] | None = None) -> None:
    """
    Parse the options, measure in alternating rounds, print the best round
    of each (the least disturbed).
    """
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--windows", type=int, default=2000, help="windows a round (default 2000)")
    parser.add_argument("--window", type=int, default=100, help="publishes a read (default 100)")
    parser.add_argument("--size", type=int, default=100, help="body bytes (default 100)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each (default 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--without-events",
        action="store_true",
        help="also measure a primary whose source writes no enqueue events"
        " (what replicating costs besides them)",
    )
    options = parser.parse_args(argv)
    best: dict[str, dict[str, float]] = {}
    runs: list[tuple[str, Callable[[int, int, int], dict[str, float]]]] = [
        ("standalone", standalone),
        ("replicated", replicated),
    ]
    if options.without_events:
        runs.append(("without-events", lambda windows, window, size: replicated(windows, window, size, False)))
    for _ in range(options.rounds):
        for name, run in runs:
            figures = run(options.windows, options.window, options.size)
            if name not in best or figures["total"] < best[name]["total"]:
                best[name] = figures
            gc.collect()
    ratio = best["standalone"]["total"] / best["replicated"]["total"]
    if options.json:
        print(json.dumps({**best, "ratio": round(ratio, 3)}))
        return
    for name, figures in best.items():
        print(name, " ".join(f"{key} {value:.2f}us" for key, value in figures.items()))
    print(f"standalone/replicated CPU a message: {ratio:.2f}")


if __name__ == "__main__":
    main()
