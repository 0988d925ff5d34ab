"""
Build a backlog with no consumer, then drain it (issue 15): the publish
rate (with publisher confirms), the drain rate, and the broker's resident
memory with the backlog in it, so that a paged backlog can be compared with
one held in memory.

    python -m qha_bench.backlogbench --url amqp://guest:guest@127.0.0.1:5672/ \\
        --messages 200000 --size 1024 --pid BROKER-PID

pika's blocking channel waits for each confirm, which bounds the publish
rate at the client's round trip; for a large backlog, publish with
C{qha-bench --consumers 0 --confirm WINDOW --messages N --keep-queue} and
drain it with C{--drain-only} here. Either way the broker's peak resident
memory (VmHWM) is reported at the end.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import pika

from qha_bench.procfs import peakBytes, residentBytes


def run(
    url: str, queue: str, messages: int, size: int, pid: int, drainOnly: bool = False
) -> dict[str, Any]:
    """
    Publish C{messages} bodies of C{size} bytes to C{queue}, each confirmed
    (pika's blocking channel waits for each confirm), then consume them all; return the rates and the
    broker's memory.

    @param drainOnly: only drain the C{messages} the queue holds already
        (published by another tool).
    """
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    before = residentBytes(pid)
    published = 0.0
    if not drainOnly:
        channel.queue_delete(queue)
        channel.queue_declare(queue)
        body = b"x" * size
        channel.confirm_delivery()
        started = time.perf_counter()
        for _ in range(messages):
            channel.basic_publish("", queue, body)
        published = time.perf_counter() - started
    held = residentBytes(pid)
    channel.basic_qos(prefetch_count=1000)
    received = 0
    started = time.perf_counter()
    for method, _, _ in channel.consume(queue, inactivity_timeout=30):
        if method is None:
            break
        received += 1
        if received % 500 == 0 or received == messages:
            channel.basic_ack(method.delivery_tag, multiple=True)
        if received == messages:
            break
    drained = time.perf_counter() - started
    channel.cancel()
    channel.queue_delete(queue)
    connection.close()
    return {
        "messages": messages,
        "received": received,
        "size": size,
        "publish_msgs_per_s": messages / published if published else None,
        "drain_msgs_per_s": received / drained,
        "rss_before_mib": before / 2**20,
        "rss_with_backlog_mib": held / 2**20,
        "rss_after_mib": residentBytes(pid) / 2**20,
        "rss_peak_mib": peakBytes(pid) / 2**20,
    }


def main() -> None:
    """
    The command line.
    """
    parser = argparse.ArgumentParser(prog="qha-backlogbench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--queue", default="qha-backlog-bench")
    parser.add_argument("--messages", type=int, default=100000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--pid", type=int, default=0, help="the broker's process id, for its VmRSS")
    parser.add_argument(
        "--drain-only", action="store_true", help="drain a backlog another tool published"
    )
    options = parser.parse_args()
    result = run(
        options.url, options.queue, options.messages, options.size, options.pid, options.drain_only
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
