"""
The memory a paged message keeps (issue 15): a lazy queue takes N messages
of 1 KiB, every body paged to real page files, published through
L{qha.broker.vhost.VirtualHost.publishTo} with fresh addressing, header and
body bytes for each (as an AMQP channel makes them); prints the growth of
the process's resident memory, and (with C{--trace}) of the Python heap,
per paged message.

By default the queue pages whole messages in segments (the broker's way for
a plain queue, durable or not); C{--per-message} pages bodies one by one,
each message keeping a L{qha.broker.message.PagedMessage} and an entry (the
way of priority, last-value and TTL queues). C{--durable} makes the queue
durable and the messages persistent, with a store writing them to a journal
in the same temporary directory (flushed every 1,000 messages).

    python -m qha_bench.pagedmemory --messages 1000000 [--per-message] [--durable] [--properties] [--trace] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import tempfile
import tracemalloc
from typing import Any

from pamqp import commands
from pamqp.header import ContentHeader
from twisted.internet.task import Clock

from qha.broker.message import Message, encodeShortString
from qha.broker.paging import Pager
from qha.broker.vhost import Resources, VirtualHost
from qha.store.journal import FileJournal, Store
from qha.store.paging import PageFiles
from qha_bench.procfs import residentBytes


def measure(
    messages: int,
    size: int,
    properties: bool,
    trace: bool,
    segments: bool = True,
    durable: bool = False,
) -> dict[str, Any]:
    """
    Page C{messages} bodies of C{size} bytes on a lazy queue and measure.

    @param properties: publish with delivery mode 2 and a content type
        (otherwise with no properties, as C{basic_publish} without any).
    @param trace: also trace the Python heap (slower, and its own records
        swell the resident memory).
    @param segments: page whole messages in segments (else bodies one by
        one).
    @param durable: a durable queue of persistent messages (delivery mode
        2 whatever C{properties} says), written to a journal by a store.
    """
    directory = tempfile.mkdtemp(prefix="qha-pagedmemory-")
    pages = PageFiles(os.path.join(directory, "paging"))
    store: Store | None = None
    try:
        vhost = VirtualHost("/", Resources(pager=Pager(pages, segments=segments)))
        if durable:
            journal = FileJournal(os.path.join(directory, "journal"))
            journal.load()  # (which opens it)
            store = Store(journal, Clock())
            store.attach(vhost)
        queue = vhost.declareQueue("paged", durable=durable, arguments={"x-queue-mode": "lazy"})
        exchange = vhost.publishTarget("")
        body = b"x" * size
        addressing = encodeShortString("") + encodeShortString("paged")
        basic = (
            commands.Basic.Properties(delivery_mode=2, content_type="text/plain")
            if properties
            else commands.Basic.Properties(delivery_mode=2)
            if durable
            else None
        )
        header = ContentHeader(0, size, basic).marshal()
        gc.collect()
        if trace:
            tracemalloc.start()
        before = residentBytes()
        heapBefore = tracemalloc.get_traced_memory()[0] if trace else 0
        for index in range(messages):
            vhost.publishTo(
                exchange,
                "paged",
                Message(bytes(bytearray(addressing)), bytes(bytearray(header)), bytes(bytearray(body))),
            )
            if store is not None and index % 1000 == 999:
                store.flush()
        if store is not None:
            store.flush()
        gc.collect()
        result: dict[str, Any] = {
            "messages": messages,
            "paged": queue.pagedCount,
            "size": size,
            "properties": properties,
            "segments": segments,
            "durable": durable,
            "rssPerMessage": round((residentBytes() - before) / messages),
        }
        if trace:
            result["heapPerMessage"] = round(
                (tracemalloc.get_traced_memory()[0] - heapBefore) / messages
            )
            tracemalloc.stop()
        return result
    finally:
        if store is not None:
            store.close()
        pages.close()
        shutil.rmtree(directory, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    """
    Parse the options, measure, print.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--properties", action="store_true")
    parser.add_argument("--trace", action="store_true")
    parser.add_argument("--per-message", action="store_true")
    parser.add_argument("--durable", action="store_true")
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args(argv)
    result = measure(
        options.messages,
        options.size,
        options.properties,
        options.trace,
        not options.per_message,
        options.durable,
    )
    if options.json:
        print(json.dumps(result))
        return
    print(
        f"{result['paged']} of {result['messages']} messages of {result['size']} bytes paged"
        f"{' (with properties)' if result['properties'] else ''}"
        f" {'in segments' if result['segments'] else 'one by one'}"
        f"{' (durable, persistent, journalled)' if result['durable'] else ''}:"
        f" {result['rssPerMessage']} bytes of resident memory a message"
        + (f", {result['heapPerMessage']} of Python heap" if "heapPerMessage" in result else "")
    )


if __name__ == "__main__":
    main()
