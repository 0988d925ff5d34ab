"""
Measure the memory a queued message costs beyond its body.

C{python -m qha_bench.memorybench [--messages N] [--size BYTES]} enqueues N
messages on one queue of a broker model built exactly as the AMQP layer
builds it (each message's addressing, content header and body are separate
bytes objects, as slicing the socket data makes them) and reports the bytes
per message that C{tracemalloc} saw, minus the body.

With C{--url} it instead publishes N messages over AMQP to a running broker
and reports the growth of that broker's resident memory (C{--pid}, read from
/proc), which includes the allocator's own overhead.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tracemalloc

from pamqp import commands
from pamqp.header import ContentHeader

from qha.broker.message import Message, encodeShortString
from qha.broker.vhost import VirtualHost


def _copy(data: bytes) -> bytes:
    """
    A fresh bytes object with the contents of C{data}, as slicing socket
    data would give.
    """
    return bytes(bytearray(data))


def modelBytesPerMessage(count: int, size: int) -> float:
    """
    Bytes of overhead per queued message in the broker model, beyond the
    body.
    """
    vhost = VirtualHost()
    queue = vhost.declareQueue("memory")
    addressing = encodeShortString("") + encodeShortString("memory")
    header = ContentHeader(0, size, commands.Basic.Properties()).marshal()
    body = b"x" * size
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(count):
        queue.enqueue(Message(_copy(addressing), _copy(header), _copy(body)))
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert queue.messageCount == count
    return (after - before) / count - size


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def processBytesPerMessage(url: str, pid: int, count: int, size: int) -> float:
    """
    Growth of a running broker's resident memory per message published to a
    fresh queue, minus the body.
    """
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.queue_delete("qha-memorybench")
    channel.queue_declare("qha-memorybench")
    body = b"x" * size
    before = _rss(pid)
    for sent in range(count):
        channel.basic_publish("", "qha-memorybench", body)
        if sent % 10000 == 9999:
            channel.queue_declare("qha-memorybench", passive=True)
    declared = channel.queue_declare("qha-memorybench", passive=True)
    after = _rss(pid)
    assert declared.method.message_count == count, declared.method
    channel.queue_delete("qha-memorybench")
    connection.close()
    return (after - before) / count - size


def main(argv: list[str] | None = None) -> int:
    """
    Print the overhead per queued message.
    """
    parser = argparse.ArgumentParser(prog="python -m qha_bench.memorybench", description=__doc__)
    parser.add_argument("--messages", type=int, default=100000)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--url", help="measure a running broker at this AMQP URL")
    parser.add_argument("--pid", type=int, help="the running broker's process id")
    options = parser.parse_args(argv)
    if options.url:
        if not options.pid:
            parser.error("--url needs --pid, the broker's process id")
        overhead = processBytesPerMessage(
            options.url, options.pid, options.messages, options.size
        )
        where = f"broker process {options.pid} (resident memory)"
    else:
        overhead = modelBytesPerMessage(options.messages, options.size)
        where = "broker model (tracemalloc)"
    print(
        f"{where}: {options.messages} messages of {options.size} bytes:"
        f" {overhead:.0f} bytes of overhead per queued message"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
