"""
The reactor's longest stall while the store compacts a journal of many
messages: fills a store (a file journal in DIRECTORY) with N persistent
messages on a durable queue, then compacts it while a LoopingCall ticks
every millisecond, and prints the longest gap between two ticks.

    PYTHONPATH=. .venv/bin/python -m qha_bench.compactionstall DIRECTORY \\
        [--messages 1000000] [--size 100] [--mode incremental|reactor]

C{incremental} is the broker's compaction (L{qha.store.journal.Store.
startCompaction}: bounded steps in the reactor, the writes in the store's
thread); C{reactor} is the whole rewrite in one call (L{Store.compact}),
as compaction ran before.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred

from qha.broker.message import Message
from qha.broker.vhost import VirtualHost
from qha.store.journal import FileJournal, Store


def fill(directory: str, messages: int, size: int, reactor: Any) -> tuple[VirtualHost, Store]:
    """
    A store in C{directory} holding C{messages} persistent messages of
    C{size} bytes on the durable queue C{q}.
    """
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    vhost = VirtualHost(clock=reactor)
    store = Store(FileJournal(os.path.join(directory, "journal")), reactor)
    store.recover(vhost)
    vhost.declareQueue("q", durable=True)
    from pamqp import commands

    properties = commands.Basic.Properties(delivery_mode=2)
    body = b"x" * size
    for index in range(messages):
        vhost.publish("", "q", Message.build("", "q", body, properties))
        if index % 5000 == 4999:
            store.flush()
    store.flush()
    return vhost, store


async def main(reactor: Any, options: argparse.Namespace) -> None:
    """
    Fill, then compact while timing the reactor's ticks.
    """
    started = time.monotonic()
    vhost, store = fill(options.directory, options.messages, options.size, reactor)
    print(
        f"filled {options.messages} messages of {options.size} bytes:"
        f" {store.journal.size()} bytes of journal in {time.monotonic() - started:.1f}s"
    )
    if options.mode == "incremental":
        from qha.tap import storeThread

        store.threadSync = storeThread(reactor)
    gaps: list[float] = []
    last = [time.monotonic()]

    def tick() -> None:
        now = time.monotonic()
        gaps.append(now - last[0])
        last[0] = now

    ticker = task.LoopingCall(tick)
    ticker.clock = reactor
    ticker.start(0.001)
    await task.deferLater(reactor, 0.1, lambda: None)
    began = time.monotonic()
    if options.mode == "reactor":
        await task.deferLater(reactor, 0, store.compact)
    else:
        store.startCompaction()
        while store.compaction is not None:
            await task.deferLater(reactor, 0.01, lambda: None)
    seconds = time.monotonic() - began
    await task.deferLater(reactor, 0.05, lambda: None)
    ticker.stop()
    gaps.sort()
    print(
        f"{options.mode} compaction: {seconds:.2f}s, journal now {store.journal.size()} bytes;"
        f" reactor ticks every 1 ms: longest gap {gaps[-1] * 1000:.1f} ms,"
        f" 99th percentile {gaps[int(len(gaps) * 0.99)] * 1000:.1f} ms, {len(gaps)} ticks"
    )
    closed = store.close()
    if isinstance(closed, Deferred):
        await closed


def run() -> None:
    """
    The command line.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory")
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--mode", choices=["incremental", "reactor"], default="incremental")
    options = parser.parse_args()
    task.react(lambda reactor: Deferred.fromCoroutine(main(reactor, options)))


if __name__ == "__main__":
    run()
