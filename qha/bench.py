"""
C{qha-bench}: a load generator for any AMQP 0-9-1 broker.

It drives one queue with N publisher processes and M consumer processes and
prints messages per second (published, confirmed, consumed) and the
publish-to-deliver latency (p50, p99, max).  Run C{qha-bench --help} for the
options.

Why this does not use Twisted, nor an AMQP client library
=========================================================

A load generator must not be the bottleneck of what it measures.  General
purpose Python clients (pika, aio-pika) spend tens of microseconds of Python
per message and top out at a few thousand messages per second, far below what
a broker does.  So each client here is one process with one blocking TCP
socket and a C{selectors} loop, and it speaks AMQP itself:

  - Publishing is pipelined raw bytes.  The method, content header and body
    frames of a publish are encoded once with pamqp; a batch buffer holds
    copies of that encoding, and publishing a batch only writes an 8-byte
    send timestamp and an 8-byte sequence number into each copy's body with
    C{struct.pack_into} before one C{send}.
  - Receiving parses frames with C{struct} on the hot path (C{Basic.Deliver},
    C{Basic.Ack}, C{Basic.Nack}, C{Basic.Return}); pamqp decodes only the
    handshake and rare frames (C{Connection.Close}, C{Connection.Blocked}...).

An event loop such as Twisted's reactor buys concurrency within a process,
which a load generator does not need: concurrency comes from processes, one
per client, which also puts each client on its own interpreter lock and lets
the kernel spread clients over cores.  A reactor would add a callback layer per
read and per write for nothing.  For the same reason the tool reports with
C{print}, not C{twisted.logger}: it is a short-lived command, not a service.

How a run goes
==============

The parent process declares and purges the queue, starts the consumers and
waits (bounded) until each reports C{Basic.ConsumeOk}, starts the publishers
and waits until each is connected, then tells them all to go at once.  After
C{--duration} seconds (or once every publisher has sent C{--messages}) it tells
the publishers to stop; they finish the frame they are writing and, with
confirms, wait (bounded) for outstanding confirms.  The parent then waits
(bounded by C{--drain-timeout}) for the consumers to receive what was
published, stops them, prints the report and deletes the queue.

Processes talk to the parent over one C{multiprocessing} queue (reports) and
one pipe each (commands); nothing waits by sleeping.

Accuracy
========

  - Latency is measured from C{time.monotonic_ns()} read by the publisher just
    before it copies a batch into the kernel, to C{time.monotonic_ns()} read
    by the consumer right after the C{recv} that completed the message.  On
    Linux the monotonic clock is system-wide, so these compare across
    processes; they do not across machines.
  - Latencies are kept in a log-linear histogram (1 ns steps below 1024 ns,
    then 512 steps per power of two), so a reported percentile is the upper
    edge of its bucket, at most 0.2% above the true value.  C{max} is exact.
  - Without C{--confirm}, publishers send as fast as TCP lets them; if the
    broker cannot keep up, messages queue and the latency measures that queue.
    Use C{--confirm WINDOW} to bound messages in flight.
  - Clients and broker share the machine's cores when run on one host; see
    the CPU use of both before crediting a figure to the broker.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import queue as queuemodule
import selectors
import socket
import struct
import sys
import time
import traceback
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence, TextIO, TypeVar
from urllib.parse import quote, unquote, urlsplit

from pamqp import base, body, commands, constants, frame, header

__all__ = [
    "AMQPConnection",
    "AMQPURL",
    "BenchError",
    "BenchOptions",
    "BenchReport",
    "ConfirmTracker",
    "ConsumerResult",
    "FrameError",
    "FrameReader",
    "LatencyHistogram",
    "OptionsError",
    "PublishBatch",
    "PublishTemplate",
    "PublisherResult",
    "ServerClosedError",
    "buildPublishTemplate",
    "decodeMethod",
    "encodeAck",
    "encodeMethod",
    "formatTable",
    "main",
    "parseArguments",
    "parseURL",
    "runBench",
    "summarize",
]

PROGRAM = "qha-bench"

FRAME_METHOD = constants.FRAME_METHOD
FRAME_HEADER = constants.FRAME_HEADER
FRAME_BODY = constants.FRAME_BODY
FRAME_HEARTBEAT = constants.FRAME_HEARTBEAT
FRAME_END = constants.FRAME_END
FRAME_END_BYTE = constants.FRAME_END_CHAR

#: Frame header: type (octet), channel (short), payload size (long).
FRAME_HEADER_STRUCT = struct.Struct(">BHI")
#: Bytes a frame adds around its payload: the 7-byte header and the end octet.
FRAME_OVERHEAD = FRAME_HEADER_STRUCT.size + 1

#: First four payload bytes of a method frame: class id << 16 | method id.
METHOD_ID = struct.Struct(">I")
BASIC_DELIVER = commands.Basic.Deliver.index
BASIC_ACK = commands.Basic.Ack.index
BASIC_NACK = commands.Basic.Nack.index
BASIC_RETURN = commands.Basic.Return.index

#: Delivery tag (long long) and flag bits after the method id in Ack/Nack.
TAG_AND_BITS = struct.Struct(">QB")
#: Delivery tag alone; in Basic.Deliver it follows the consumer tag.
LONG_LONG = struct.Struct(">Q")
#: Body size in a content header payload: class id, weight, then this.
HEADER_BODY_SIZE = struct.Struct(">HHQ")
#: What a publisher writes at the start of every body: send time, sequence.
STAMP = struct.Struct(">QQ")
#: A whole Basic.Ack method frame on one channel.
ACK_FRAME = struct.Struct(">BHIIQBB")

#: The frame size we ask for when the server allows more (RabbitMQ's default).
PREFERRED_FRAME_MAX = 131072
#: The smallest frame size AMQP 0-9-1 lets a peer ask for.
MINIMUM_FRAME_MAX = constants.FRAME_MIN_SIZE
#: Bytes of publishes stamped and written per C{send} at most.
BATCH_BYTES = 65536
#: Bytes asked of the kernel per C{recv}.
RECEIVE_SIZE = 262144

#: The channel every client uses.
CHANNEL = 1

CONNECT_TIMEOUT = 10.0
RPC_TIMEOUT = 30.0
STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
CLOSE_TIMEOUT = 5.0
#: How often a consumer tells the parent how many messages it has received.
PROGRESS_INTERVAL_NS = 100_000_000
#: How long a client loop blocks in C{select} when it has nothing to do.
IDLE_WAIT = 0.1

#: Client properties sent in Connection.StartOk; the capabilities make
#: RabbitMQ send Connection.Blocked and Basic.Nack.
CLIENT_PROPERTIES: dict[str, Any] = {
    "product": PROGRAM,
    "platform": "Python " + sys.version.split()[0],
    "capabilities": {
        "publisher_confirms": True,
        "basic.nack": True,
        "connection.blocked": True,
        "consumer_cancel_notify": True,
        "exchange_exchange_bindings": True,
        "authentication_failure_close": True,
    },
}

MethodT = TypeVar("MethodT", bound=base.Frame)

#: One decoded frame: type, channel, payload (a view into received bytes).
Frame = tuple[int, int, memoryview]


class BenchError(Exception):
    """
    The run cannot go on; the message says why, in one line for a person.
    """


class OptionsError(Exception):
    """
    The command line is wrong; the message says which option and why.
    """


class FrameError(BenchError):
    """
    The peer sent bytes that are not well-formed AMQP frames.
    """


class ServerClosedError(BenchError):
    """
    The server closed the connection or the channel with a reply code.

    @ivar scope: C{"connection"} or C{"channel"}.
    @ivar replyCode: the AMQP reply code, such as 320 or 404.
    @ivar replyText: the server's reply text.
    """

    def __init__(self, scope: str, replyCode: int, replyText: str) -> None:
        """
        @param scope: C{"connection"} or C{"channel"}.
        @param replyCode: the AMQP reply code.
        @param replyText: the server's reply text.
        """
        super().__init__(
            f"server closed the {scope}: {replyCode} {replyText}"
        )
        self.scope = scope
        self.replyCode = replyCode
        self.replyText = replyText


# --------------------------------------------------------------------------
# Command line


@dataclass(frozen=True)
class AMQPURL:
    """
    Where and as whom to connect, parsed from an C{amqp://} URL.

    @ivar host: host name or address.
    @ivar port: TCP port.
    @ivar username: user for PLAIN authentication.
    @ivar password: password for PLAIN authentication.
    @ivar vhost: virtual host name, C{"/"} by default.
    """

    host: str
    port: int
    username: str
    password: str
    vhost: str

    def redacted(self) -> str:
        """
        @return: this URL without the password, fit to print.
        """
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = quote(self.username, safe="")
        vhost = quote(self.vhost, safe="")
        return f"amqp://{user}@{host}:{self.port}/{vhost}"


def parseURL(text: str) -> AMQPURL:
    """
    Parse an AMQP URL the way RabbitMQ documents them.

    C{amqp://user:pass@host:port/vhost}; user and password default to
    C{guest}, the port to 5672, the vhost to C{/}.  The vhost is the path's
    single segment, percent-decoded, so C{/} is written C{%2F}.

    @param text: the URL.
    @return: the parsed URL.
    @raise ValueError: with a message a person can act on.
    """
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as error:
        raise ValueError(f"bad URL {text!r}: {error}") from None
    if parts.scheme == "amqps":
        raise ValueError("amqps:// (TLS) is not supported; use amqp://")
    if parts.scheme != "amqp":
        raise ValueError(f"URL must start with amqp:// (got {text!r})")
    if parts.query or parts.fragment:
        raise ValueError(
            f"URL query parameters are not supported (got {text!r})"
        )
    path = parts.path
    if path in ("", "/"):
        vhost = "/"
    else:
        segment = path[1:]
        if "/" in segment:
            raise ValueError(
                f"the vhost must be one path segment; write / as %2F "
                f"(got {path!r})"
            )
        vhost = unquote(segment)
    return AMQPURL(
        host=parts.hostname or "localhost",
        port=5672 if port is None else port,
        username="guest" if parts.username is None else unquote(parts.username),
        password="guest" if parts.password is None else unquote(parts.password),
        vhost=vhost,
    )


@dataclass(frozen=True)
class BenchOptions:
    """
    Everything a run needs, validated; see C{qha-bench --help}.

    @ivar duration: seconds to publish for, or L{None} with C{messages}.
    @ivar messages: messages each publisher sends, or L{None} with
        C{duration}.
    """

    url: AMQPURL
    publishers: int = 1
    consumers: int = 1
    size: int = 100
    confirm: int = 0
    duration: float | None = 10.0
    messages: int | None = None
    queue: str = "qha-bench"
    queueArguments: dict[str, Any] = field(default_factory=dict)
    durable: bool = False
    persistent: bool = False
    prefetch: int = 1000
    json: bool = False
    keepQueue: bool = False
    drainTimeout: float = 30.0

    @property
    def ackEvery(self) -> int:
        """
        @return: how many deliveries a consumer acknowledges at once.
        """
        return max(1, self.prefetch // 2)


class _ArgumentParser(argparse.ArgumentParser):
    """
    An argument parser that raises L{OptionsError} instead of printing usage
    and exiting, so L{main} prints one line and tests can check the message.
    """

    def error(self, message: str) -> Any:  # type: ignore[override]
        """
        @param message: what is wrong.
        @raise OptionsError: always.
        """
        raise OptionsError(message)


def _integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """
    @return: an argparse type that accepts integers in a range.
    """

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be an integer (got {text!r})"
            ) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(
                f"must be at least {minimum} (got {value})"
            )
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(
                f"must be at most {maximum} (got {value})"
            )
        return value

    return convert


def _seconds(text: str) -> float:
    """
    @return: a positive, finite number of seconds.
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a number of seconds (got {text!r})"
        ) from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(
            f"must be more than 0 seconds (got {text!r})"
        )
    return value


def _url(text: str) -> AMQPURL:
    """
    @return: the parsed URL, for argparse.
    """
    try:
        return parseURL(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _queueName(text: str) -> str:
    """
    @return: a queue name that fits an AMQP short string.
    """
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    if len(text.encode("utf-8")) > 255:
        raise argparse.ArgumentTypeError("must be at most 255 bytes long")
    return text


def _queueArgument(text: str) -> tuple[str, Any]:
    """
    Parse C{K=V}: integers become integers, C{true}/C{false} booleans, and
    anything else stays a string.

    @return: the key and the value.
    """
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise argparse.ArgumentTypeError(f"must look like KEY=VALUE (got {text!r})")
    try:
        return key, int(value)
    except ValueError:
        pass
    if value.lower() in ("true", "false"):
        return key, value.lower() == "true"
    return key, value


def _buildParser() -> _ArgumentParser:
    """
    @return: the parser for C{qha-bench}'s command line.
    """
    parser = _ArgumentParser(
        prog=PROGRAM,
        description=(
            "Drive an AMQP 0-9-1 broker with N publisher and M consumer "
            "processes; print msgs/s and publish-to-deliver latency."
        ),
    )
    parser.add_argument(
        "--url",
        type=_url,
        default=parseURL("amqp://guest:guest@127.0.0.1:5672/"),
        help="amqp://user:pass@host:port/vhost, vhost / as %%2F "
        "(default amqp://guest:guest@127.0.0.1:5672/)",
    )
    parser.add_argument(
        "--publishers", type=_integer(1), default=1, metavar="N",
        help="publisher processes (default 1)",
    )
    parser.add_argument(
        "--consumers", type=_integer(0), default=1, metavar="M",
        help="consumer processes; 0 measures publishing alone (default 1)",
    )
    parser.add_argument(
        "--size", type=_integer(STAMP.size), default=100, metavar="BYTES",
        help=f"message body size, at least {STAMP.size} (default 100)",
    )
    parser.add_argument(
        "--confirm", type=_integer(0), default=0, metavar="WINDOW",
        help="use publisher confirms with at most WINDOW unconfirmed "
        "messages per publisher; 0 turns confirms off (default 0)",
    )
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument(
        "--duration", type=_seconds, default=None, metavar="SECONDS",
        help="publish for this long (default 10)",
    )
    amount.add_argument(
        "--messages", type=_integer(1), default=None, metavar="N",
        help="publish N messages per publisher, then stop",
    )
    parser.add_argument(
        "--queue", type=_queueName, default="qha-bench", metavar="NAME",
        help="queue to declare, purge, use and delete (default qha-bench)",
    )
    parser.add_argument(
        "--queue-arg", type=_queueArgument, action="append", default=[],
        dest="queueArguments", metavar="K=V",
        help="queue.declare argument, repeatable; integers and true/false "
        "are typed, e.g. --queue-arg x-queue-type=quorum",
    )
    parser.add_argument(
        "--durable", action="store_true", help="declare the queue durable",
    )
    parser.add_argument(
        "--persistent", action="store_true",
        help="publish with delivery_mode 2",
    )
    parser.add_argument(
        "--prefetch", type=_integer(1, 65535), default=1000, metavar="N",
        help="consumer prefetch; consumers ack (multiple) every N/2 "
        "deliveries (default 1000)",
    )
    parser.add_argument(
        "--drain-timeout", type=_seconds, default=30.0, metavar="SECONDS",
        dest="drainTimeout",
        help="after publishing, wait at most this long for consumers to "
        "receive what was published (default 30)",
    )
    parser.add_argument(
        "--keep-queue", action="store_true", dest="keepQueue",
        help="do not delete the queue at the end",
    )
    parser.add_argument(
        "--json", action="store_true",
        help="print one JSON object instead of the table",
    )
    return parser


def parseArguments(argv: Sequence[str]) -> BenchOptions:
    """
    Parse and validate C{qha-bench}'s command line.

    @param argv: the arguments, without the program name.
    @return: the options.
    @raise OptionsError: naming the bad option and why it is bad.
    """
    namespace = _buildParser().parse_args(list(argv))
    duration = namespace.duration
    if duration is None and namespace.messages is None:
        duration = 10.0
    return BenchOptions(
        url=namespace.url,
        publishers=namespace.publishers,
        consumers=namespace.consumers,
        size=namespace.size,
        confirm=namespace.confirm,
        duration=duration,
        messages=namespace.messages,
        queue=namespace.queue,
        queueArguments=dict(namespace.queueArguments),
        durable=namespace.durable,
        persistent=namespace.persistent,
        prefetch=namespace.prefetch,
        json=namespace.json,
        keepQueue=namespace.keepQueue,
        drainTimeout=namespace.drainTimeout,
    )


# --------------------------------------------------------------------------
# Frames


class FrameReader:
    """
    Split a byte stream into AMQP frames, whatever the chunking.

    Complete frames come out as views into the received bytes, so a frame
    is not copied unless it arrived in pieces.  Sizes are checked before
    anything is decoded, and a frame is only returned once all of it,
    including its end octet, has arrived.
    """

    def __init__(self, frameMax: int = 1 << 24) -> None:
        """
        @param frameMax: refuse frames larger than this, in bytes including
            the 8 bytes of framing, as a guard against garbage.
        """
        self.frameMax = frameMax
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._needed = FRAME_HEADER_STRUCT.size

    def feed(self, data: bytes) -> list[Frame]:
        """
        Take more bytes from the stream.

        @param data: the bytes, any length.
        @return: the frames completed by these bytes, in order.
        @raise FrameError: if a frame is oversized, of an unknown type, or
            does not end with the frame-end octet.
        """
        if self._chunks:
            self._chunks.append(data)
            self._buffered += len(data)
            if self._buffered < self._needed:
                return []
            data = b"".join(self._chunks)
        elif len(data) < self._needed:
            if data:
                self._chunks.append(data)
                self._buffered = len(data)
            return []
        frames: list[Frame] = []
        view = memoryview(data)
        unpack = FRAME_HEADER_STRUCT.unpack_from
        position = 0
        end = len(data)
        needed = FRAME_HEADER_STRUCT.size
        while end - position >= 7:
            frameType, channel, size = unpack(data, position)
            if size + FRAME_OVERHEAD > self.frameMax:
                raise FrameError(
                    f"frame of {size} bytes exceeds frame_max {self.frameMax}"
                )
            if frameType not in (
                FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT
            ):
                raise FrameError(f"unknown frame type {frameType}")
            payloadEnd = position + 7 + size
            if payloadEnd >= end:
                needed = size + FRAME_OVERHEAD
                break
            if data[payloadEnd] != FRAME_END:
                raise FrameError(
                    f"frame does not end with 0xCE (got {data[payloadEnd]:#x})"
                )
            frames.append((frameType, channel, view[position + 7:payloadEnd]))
            position = payloadEnd + 1
        if position < end:
            rest = data[position:]
            self._chunks = [rest]
            self._buffered = len(rest)
            self._needed = needed if len(rest) >= 7 else 7
        else:
            self._chunks = []
            self._buffered = 0
            self._needed = 7
        return frames


def encodeMethod(method: base.Frame, channel: int = CHANNEL) -> bytes:
    """
    @return: C{method} as a whole method frame on C{channel}.
    """
    return frame.marshal(method, channel)


def decodeMethod(channel: int, payload: bytes | memoryview) -> base.Frame:
    """
    Decode a method frame's payload with pamqp; for rare frames only.

    @param channel: the frame's channel.
    @param payload: the frame's payload.
    @return: the pamqp method.
    @raise FrameError: if pamqp cannot decode it.
    """
    raw = (
        FRAME_HEADER_STRUCT.pack(FRAME_METHOD, channel, len(payload))
        + bytes(payload)
        + FRAME_END_BYTE
    )
    try:
        _, _, method = frame.unmarshal(raw)
    except Exception as error:
        raise FrameError(f"cannot decode a method frame: {error}") from None
    if not isinstance(method, base.Frame):
        raise FrameError(f"expected a method frame, got {method!r}")
    return method


def encodeAck(deliveryTag: int, multiple: bool, channel: int = CHANNEL) -> bytes:
    """
    Encode a Basic.Ack without pamqp, for consumers' hot path.

    @return: the whole frame.
    """
    return ACK_FRAME.pack(
        FRAME_METHOD, channel, 13, BASIC_ACK, deliveryTag, int(multiple),
        FRAME_END,
    )


@dataclass(frozen=True)
class PublishTemplate:
    """
    One publish encoded once: method frame, content header frame and body
    frames, with zeros where the send timestamp and sequence number go.

    @ivar encoded: the whole publish.
    @ivar stampOffset: where in C{encoded} the L{STAMP} goes.
    """

    encoded: bytes
    stampOffset: int

    def stamp(self, sentNs: int, sequence: int) -> bytes:
        """
        @return: the publish with this timestamp and sequence number.
        """
        return (
            self.encoded[: self.stampOffset]
            + STAMP.pack(sentNs, sequence)
            + self.encoded[self.stampOffset + STAMP.size:]
        )


def buildPublishTemplate(
    queue: str,
    size: int,
    frameMax: int,
    persistent: bool = False,
    mandatory: bool = True,
    channel: int = CHANNEL,
) -> PublishTemplate:
    """
    Encode one publish to C{queue} through the default exchange with pamqp.

    @param queue: routing key, the queue's name.
    @param size: body size in bytes, at least L{STAMP}'s size.
    @param frameMax: negotiated frame_max; bodies longer than
        C{frameMax - 8} are split into several body frames.
    @param persistent: set delivery_mode 2.
    @param mandatory: ask the broker to return unroutable messages.
    @param channel: the channel to publish on.
    @return: the template.
    """
    if size < STAMP.size:
        raise ValueError(f"body size must be at least {STAMP.size}")
    chunk = frameMax - FRAME_OVERHEAD
    if chunk < STAMP.size:
        raise ValueError(f"frame_max {frameMax} is too small")
    properties = commands.Basic.Properties(
        delivery_mode=2 if persistent else None
    )
    parts = [
        frame.marshal(
            commands.Basic.Publish(routing_key=queue, mandatory=mandatory),
            channel,
        ),
        frame.marshal(header.ContentHeader(0, size, properties), channel),
    ]
    stampOffset = sum(map(len, parts)) + FRAME_HEADER_STRUCT.size
    zeros = bytes(size)
    for start in range(0, size, chunk):
        parts.append(
            frame.marshal(body.ContentBody(zeros[start:start + chunk]), channel)
        )
    return PublishTemplate(b"".join(parts), stampOffset)


class PublishBatch:
    """
    A buffer of back-to-back copies of one L{PublishTemplate}, stamped in
    place before each write, so a publish costs one C{pack_into}.
    """

    def __init__(self, template: PublishTemplate, capacity: int) -> None:
        """
        @param template: the encoded publish.
        @param capacity: how many publishes the buffer holds.
        """
        self.template = template
        self.capacity = capacity
        self.messageLength = len(template.encoded)
        self._buffer = bytearray(template.encoded * capacity)
        self._view = memoryview(self._buffer)

    def stamp(self, count: int, firstSequence: int) -> memoryview:
        """
        Stamp the first C{count} publishes with the time now and consecutive
        sequence numbers.  Only call once the previous result has been
        written out in full: this overwrites it.

        @return: the bytes of those C{count} publishes.
        """
        pack = STAMP.pack_into
        now = time.monotonic_ns
        buffer = self._buffer
        length = self.messageLength
        offset = self.template.stampOffset
        for index in range(count):
            pack(buffer, offset + index * length, now(), firstSequence + index)
        return self._view[: count * length]


# --------------------------------------------------------------------------
# Statistics


class LatencyHistogram:
    """
    Nanosecond latencies in log-linear buckets: exact below 1024 ns, then 512
    buckets per power of two (relative error under 0.2%).  Memory is fixed
    and histograms from several consumers add up.
    """

    #: Buckets enough for any 63-bit value.
    SIZE = 54 * 512 + 1024

    def __init__(self) -> None:
        """
        Make an empty histogram.
        """
        self.counts = [0] * self.SIZE
        self.count = 0
        self.maximum = 0

    @staticmethod
    def bucketOf(value: int) -> int:
        """
        @return: the bucket index of a non-negative C{value}.
        """
        bits = value.bit_length()
        if bits <= 10:
            return value
        shift = bits - 10
        return (shift << 9) + (value >> shift)

    @staticmethod
    def bucketRange(index: int) -> tuple[int, int]:
        """
        @return: the least and greatest value in bucket C{index}.
        """
        if index < 1024:
            return index, index
        shift = (index >> 9) - 1
        mantissa = index - (shift << 9)
        return mantissa << shift, ((mantissa + 1) << shift) - 1

    def record(self, value: int) -> None:
        """
        Count one latency; negative values count as 0.
        """
        if value < 0:
            value = 0
        self.counts[self.bucketOf(value)] += 1
        self.count += 1
        if value > self.maximum:
            self.maximum = value

    def merge(self, other: LatencyHistogram) -> None:
        """
        Add C{other}'s counts to this histogram.
        """
        counts = self.counts
        for index, count in enumerate(other.counts):
            if count:
                counts[index] += count
        self.count += other.count
        self.maximum = max(self.maximum, other.maximum)

    def percentile(self, percent: float) -> int | None:
        """
        The nearest-rank percentile: the least recorded value such that at
        least C{percent}% of the values are at most it, rounded up to its
        bucket's upper edge (and never above the maximum).

        @param percent: from 0 to 100.
        @return: the value, or L{None} if nothing was recorded.
        """
        if not self.count:
            return None
        rank = max(1, math.ceil(percent / 100 * self.count))
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                return min(self.bucketRange(index)[1], self.maximum)
        return self.maximum

    def toSparse(self) -> dict[int, int]:
        """
        @return: the non-zero buckets, compact to send between processes.
        """
        return {index: count for index, count in enumerate(self.counts) if count}

    @classmethod
    def fromSparse(cls, sparse: dict[int, int], maximum: int) -> LatencyHistogram:
        """
        @return: the histogram L{toSparse} described.
        """
        histogram = cls()
        for index, count in sparse.items():
            histogram.counts[index] = count
            histogram.count += count
        histogram.maximum = maximum
        return histogram


class ConfirmTracker:
    """
    Count publisher confirms, which come single or C{multiple}, possibly out
    of order, and possibly twice.

    @ivar settledUpTo: every delivery tag up to this one is settled.
    @ivar acked: how many tags were acked.
    @ivar nacked: how many tags were nacked.
    """

    def __init__(self) -> None:
        """
        Start with nothing published.
        """
        self.settledUpTo = 0
        self.acked = 0
        self.nacked = 0
        self._above: set[int] = set()

    @property
    def settled(self) -> int:
        """
        @return: how many tags were acked or nacked.
        """
        return self.acked + self.nacked

    def settle(self, tag: int, multiple: bool, ack: bool) -> None:
        """
        Apply a Basic.Ack (C{ack}) or Basic.Nack from the broker.
        """
        if tag <= self.settledUpTo:
            return
        if multiple:
            newly = tag - self.settledUpTo
            if self._above:
                covered = [each for each in self._above if each <= tag]
                self._above.difference_update(covered)
                newly -= len(covered)
            self.settledUpTo = tag
        elif tag in self._above:
            return
        else:
            newly = 1
            self._above.add(tag)
        if ack:
            self.acked += newly
        else:
            self.nacked += newly
        above = self._above
        while above and self.settledUpTo + 1 in above:
            self.settledUpTo += 1
            above.discard(self.settledUpTo)


@dataclass
class PublisherResult:
    """
    What one publisher did; times are C{time.monotonic_ns()}.
    """

    published: int = 0
    confirmed: int = 0
    nacked: int = 0
    returned: int = 0
    unconfirmed: int = 0
    startNs: int = 0
    lastSendNs: int = 0
    lastConfirmNs: int = 0
    blockedCount: int = 0
    blockedNs: int = 0


@dataclass
class ConsumerResult:
    """
    What one consumer received; times are C{time.monotonic_ns()}.

    @ivar latencies: sparse L{LatencyHistogram} buckets.
    """

    consumed: int = 0
    redelivered: int = 0
    firstNs: int = 0
    lastNs: int = 0
    latencies: dict[int, int] = field(default_factory=dict)
    maximumNs: int = 0


@dataclass
class BenchReport:
    """
    The figures of a run, as printed.  Rates are messages per second and
    L{None} where they do not apply; latencies are milliseconds.
    """

    url: str
    queue: str
    publishers: int
    consumers: int
    size: int
    confirm: int
    prefetch: int
    seconds: float
    published: int
    confirmed: int | None
    nacked: int
    returned: int
    consumed: int | None
    lost: int | None
    redelivered: int
    unconfirmed: int
    blocked: int
    blockedSeconds: float
    publishedRate: float
    confirmedRate: float | None
    consumedRate: float | None
    latencyP50: float | None
    latencyP99: float | None
    latencyMax: float | None
    latencyCount: int


def _rate(count: int, startNs: int, endNs: int) -> float:
    """
    @return: C{count} per second over the span, 0 for an empty span.
    """
    span = endNs - startNs
    return count * 1e9 / span if span > 0 and count else 0.0


def summarize(
    options: BenchOptions,
    publishers: Sequence[PublisherResult],
    consumers: Sequence[ConsumerResult],
) -> BenchReport:
    """
    Add up the processes' results.

    Every rate is counted from the earliest publisher start: published until
    the last write, confirmed until the last confirm, consumed until the last
    delivery.

    @return: the report.
    """
    start = min((each.startNs for each in publishers), default=0)
    published = sum(each.published for each in publishers)
    confirmed = sum(each.confirmed for each in publishers)
    lastSend = max((each.lastSendNs for each in publishers), default=start)
    lastConfirm = max((each.lastConfirmNs for each in publishers), default=start)
    histogram = LatencyHistogram()
    for result in consumers:
        histogram.merge(
            LatencyHistogram.fromSparse(result.latencies, result.maximumNs)
        )
    consumed = sum(each.consumed for each in consumers)
    lastDelivery = max((each.lastNs for each in consumers), default=start)

    def milliseconds(value: int | None) -> float | None:
        return None if value is None else value / 1e6

    return BenchReport(
        url=options.url.redacted(),
        queue=options.queue,
        publishers=options.publishers,
        consumers=options.consumers,
        size=options.size,
        confirm=options.confirm,
        prefetch=options.prefetch,
        seconds=max(0, lastSend - start) / 1e9,
        published=published,
        confirmed=confirmed if options.confirm else None,
        nacked=sum(each.nacked for each in publishers),
        returned=sum(each.returned for each in publishers),
        consumed=consumed if options.consumers else None,
        lost=published - consumed if options.consumers else None,
        redelivered=sum(each.redelivered for each in consumers),
        unconfirmed=sum(each.unconfirmed for each in publishers),
        blocked=sum(each.blockedCount for each in publishers),
        blockedSeconds=sum(each.blockedNs for each in publishers) / 1e9,
        publishedRate=_rate(published, start, lastSend),
        confirmedRate=(
            _rate(confirmed, start, lastConfirm) if options.confirm else None
        ),
        consumedRate=(
            _rate(consumed, start, lastDelivery) if options.consumers else None
        ),
        latencyP50=milliseconds(histogram.percentile(50)),
        latencyP99=milliseconds(histogram.percentile(99)),
        latencyMax=milliseconds(histogram.maximum if histogram.count else None),
        latencyCount=histogram.count,
    )


def formatTable(report: BenchReport) -> str:
    """
    @return: the report as a small table for people.
    """

    def rate(value: float | None) -> str:
        return "-" if value is None else f"{value:>12,.0f}"

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    def count(value: int | None) -> str:
        return "-" if value is None else f"{value:,}"

    lines = [
        f"{PROGRAM} {report.url} queue {report.queue}",
        f"  {report.publishers} publisher(s), {report.consumers} consumer(s), "
        f"{report.size}-byte bodies, "
        + (f"confirm window {report.confirm}" if report.confirm else "no confirms")
        + f", prefetch {report.prefetch}, published for {report.seconds:.2f} s",
        "",
        "               msgs/s",
        f"  published  {rate(report.publishedRate)}",
    ]
    if report.confirmedRate is not None:
        lines.append(f"  confirmed  {rate(report.confirmedRate)}")
    if report.consumedRate is not None:
        lines.append(f"  consumed   {rate(report.consumedRate)}")
    lines += [
        "",
        f"  latency ms  p50 {ms(report.latencyP50)}  p99 {ms(report.latencyP99)}"
        f"  max {ms(report.latencyMax)}  (of {report.latencyCount:,})",
        "",
        f"  published {count(report.published)}  confirmed "
        f"{count(report.confirmed)}  nacked {count(report.nacked)}  consumed "
        f"{count(report.consumed)}  lost {count(report.lost)}  returned "
        f"{count(report.returned)}",
    ]
    extra = []
    if report.unconfirmed:
        extra.append(f"unconfirmed at stop {report.unconfirmed:,}")
    if report.redelivered:
        extra.append(f"redelivered {report.redelivered:,}")
    if report.blocked:
        extra.append(
            f"connection.blocked {report.blocked} time(s), "
            f"{report.blockedSeconds:.2f} s"
        )
    if extra:
        lines.append("  " + "  ".join(extra))
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Connection


class AMQPConnection:
    """
    A client connection with one channel over a non-blocking socket waited
    on with C{selectors}: enough AMQP 0-9-1 for the bench's clients.

    @ivar frameMax: the negotiated frame_max.
    @ivar blocked: whether the server has sent Connection.Blocked.
    """

    def __init__(self, sock: socket.socket) -> None:
        """
        @param sock: a connected TCP socket; it is made non-blocking.
        """
        sock.setblocking(False)
        self.socket = sock
        self.reader = FrameReader()
        self.selector = selectors.DefaultSelector()
        self.selector.register(sock, selectors.EVENT_READ, None)
        self.frameMax = PREFERRED_FRAME_MAX
        self.blocked = False
        self.blockedCount = 0
        self.blockedNs = 0
        self._blockedSince = 0
        self._backlog: deque[Frame] = deque()

    @classmethod
    def open(cls, url: AMQPURL, timeout: float = CONNECT_TIMEOUT) -> AMQPConnection:
        """
        Connect, authenticate, open the vhost and channel L{CHANNEL}.

        @raise BenchError: if that fails.
        """
        try:
            sock = socket.create_connection((url.host, url.port), timeout)
        except OSError as error:
            raise BenchError(
                f"cannot connect to {url.host}:{url.port}: "
                f"{error.strerror or error}"
            ) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = cls(sock)
        try:
            connection.handshake(url, timeout)
        except BaseException:
            connection.abort()
            raise
        return connection

    def handshake(self, url: AMQPURL, timeout: float) -> None:
        """
        Run the connection and channel handshake; heartbeats are turned off.
        """
        self.sendAll(header.ProtocolHeader().marshal(), timeout)
        deadline = time.monotonic() + timeout
        first = b""
        while len(first) < 8:
            self._waitReadable(deadline)
            data = self._receive()
            first += data
            if not first.startswith(b"AMQP"[: len(first)]):
                break
        if first.startswith(b"AMQP"):
            raise BenchError(
                f"the server refused AMQP 0-9-1; it offers protocol "
                f"{'.'.join(str(each) for each in first[5:8])}"
            )
        self._backlog.extend(self.reader.feed(first))
        start = self.expect(commands.Connection.Start, 0, timeout)
        if "PLAIN" not in start.mechanisms.split():
            raise BenchError(
                f"the server does not offer PLAIN authentication "
                f"(it offers {start.mechanisms})"
            )
        self.sendMethod(
            commands.Connection.StartOk(
                client_properties=CLIENT_PROPERTIES,
                mechanism="PLAIN",
                response=f"\0{url.username}\0{url.password}",
            ),
            0,
        )
        tune = self.expect(commands.Connection.Tune, 0, timeout)
        frameMax = PREFERRED_FRAME_MAX
        if tune.frame_max:
            frameMax = min(frameMax, tune.frame_max)
        if frameMax - FRAME_OVERHEAD < STAMP.size:
            raise BenchError(f"the server's frame_max {frameMax} is too small")
        self.frameMax = frameMax
        self.reader.frameMax = max(frameMax, MINIMUM_FRAME_MAX)
        self.sendMethod(
            commands.Connection.TuneOk(
                channel_max=tune.channel_max, frame_max=frameMax, heartbeat=0
            ),
            0,
        )
        self.call(
            commands.Connection.Open(virtual_host=url.vhost),
            commands.Connection.OpenOk,
            0,
            timeout,
        )
        self.call(commands.Channel.Open(), commands.Channel.OpenOk, CHANNEL, timeout)

    def sendAll(self, data: bytes | memoryview, timeout: float = RPC_TIMEOUT) -> None:
        """
        Write all of C{data}, waiting for the socket to drain if need be.

        @raise BenchError: on timeout or a broken connection.
        """
        view = memoryview(data)
        deadline = time.monotonic() + timeout
        while view:
            try:
                sent = self.socket.send(view)
            except BlockingIOError:
                sent = 0
            except OSError as error:
                raise BenchError(f"connection lost: {error}") from None
            view = view[sent:]
            if view and not sent:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BenchError("timed out writing to the server")
                _waitWritable(self.socket, remaining)

    def sendMethod(self, method: base.Frame, channel: int = CHANNEL) -> None:
        """
        Encode and send one method frame.
        """
        self.sendAll(encodeMethod(method, channel))

    def _receive(self) -> bytes:
        """
        Read what the kernel has; the socket must be readable.

        @raise BenchError: when the server has closed the socket.
        """
        try:
            data = self.socket.recv(RECEIVE_SIZE)
        except BlockingIOError:
            return b""
        except OSError as error:
            raise BenchError(f"connection lost: {error}") from None
        if not data:
            raise BenchError("the server closed the socket without connection.close")
        return data

    def _waitReadable(self, deadline: float) -> None:
        """
        Wait until the socket is readable.

        @raise BenchError: at C{deadline} (a C{time.monotonic()} value).
        """
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError("timed out waiting for the server")
            for key, _ in self.selector.select(remaining):
                if key.fileobj is self.socket:
                    return

    def receiveFrames(self, deadline: float) -> list[Frame]:
        """
        @return: frames held back, or else those of the next read.
        """
        if self._backlog:
            frames = list(self._backlog)
            self._backlog.clear()
            return frames
        self._waitReadable(deadline)
        return self.reader.feed(self._receive())

    def takeBacklog(self) -> list[Frame]:
        """
        @return: frames read but not yet handled, for the hot loops to start
            with.
        """
        frames = list(self._backlog)
        self._backlog.clear()
        return frames

    def expect(
        self, kind: type[MethodT], channel: int = CHANNEL, timeout: float = RPC_TIMEOUT
    ) -> MethodT:
        """
        Read frames until a C{kind} method arrives on C{channel}; frames
        after it are kept for later.  Rare frames are handled on the way.

        @raise ServerClosedError: if the server closes instead.
        @raise BenchError: on timeout.
        """
        deadline = time.monotonic() + timeout
        while True:
            frames = self.receiveFrames(deadline)
            for position, (frameType, frameChannel, payload) in enumerate(frames):
                method = self.handleRareFrame(frameType, frameChannel, payload)
                if isinstance(method, kind) and frameChannel == channel:
                    self._backlog.extendleft(reversed(frames[position + 1:]))
                    return method

    def call(
        self,
        method: base.Frame,
        reply: type[MethodT],
        channel: int = CHANNEL,
        timeout: float = RPC_TIMEOUT,
    ) -> MethodT:
        """
        Send C{method} and wait for its C{reply}.
        """
        self.sendMethod(method, channel)
        return self.expect(reply, channel, timeout)

    def handleRareFrame(
        self, frameType: int, channel: int, payload: memoryview
    ) -> base.Frame | None:
        """
        Deal with a frame the hot loops do not: close, blocked, unblocked,
        consumer cancelled.  Heartbeats and stray content are ignored.

        @return: the decoded method, or L{None} for other frames.
        @raise ServerClosedError: for Connection.Close and Channel.Close,
            after answering them.
        @raise BenchError: for Basic.Cancel.
        """
        if frameType != FRAME_METHOD:
            return None
        method = decodeMethod(channel, payload)
        if isinstance(method, commands.Connection.Close):
            try:
                self.sendMethod(commands.Connection.CloseOk(), 0)
            except BenchError:
                pass
            raise ServerClosedError("connection", method.reply_code, method.reply_text)
        if isinstance(method, commands.Channel.Close):
            try:
                self.sendMethod(commands.Channel.CloseOk(), channel)
            except BenchError:
                pass
            raise ServerClosedError("channel", method.reply_code, method.reply_text)
        if isinstance(method, commands.Connection.Blocked):
            if not self.blocked:
                self.blocked = True
                self.blockedCount += 1
                self._blockedSince = time.monotonic_ns()
        elif isinstance(method, commands.Connection.Unblocked):
            if self.blocked:
                self.blocked = False
                self.blockedNs += time.monotonic_ns() - self._blockedSince
        elif isinstance(method, commands.Basic.Cancel):
            raise BenchError("the server cancelled the consumer (queue deleted?)")
        return method

    def blockedTime(self) -> int:
        """
        @return: nanoseconds spent blocked so far, including now.
        """
        if self.blocked:
            return self.blockedNs + time.monotonic_ns() - self._blockedSince
        return self.blockedNs

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """
        Close politely (Connection.Close, wait for Close-Ok), then the socket.
        Errors are ignored: this is the end anyway.
        """
        try:
            self.sendMethod(
                commands.Connection.Close(200, "bye", 0, 0), 0
            )
            deadline = time.monotonic() + timeout
            while True:
                for frameType, channel, payload in self.receiveFrames(deadline):
                    if frameType == FRAME_METHOD and channel == 0:
                        method = decodeMethod(channel, payload)
                        if isinstance(
                            method, (commands.Connection.CloseOk, commands.Connection.Close)
                        ):
                            return
        except BenchError:
            pass
        finally:
            self.abort()

    def abort(self) -> None:
        """
        Close the socket now.
        """
        try:
            self.selector.close()
        finally:
            self.socket.close()


def _waitWritable(sock: socket.socket, timeout: float) -> None:
    """
    Wait up to C{timeout} seconds for C{sock} to accept more bytes.
    """
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_WRITE)
        selector.select(timeout)
