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
a broker does.  So each client here is one process with one plain TCP socket
and a C{selectors} loop, and it speaks AMQP itself.  The socket is
non-blocking only so that a publisher whose broker has stopped reading (TCP
back-pressure, C{Connection.Blocked}) still hears the parent's stop command;
every wait is a C{select} on the socket and the command pipe.

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
the publishers to stop; they finish the batch they are writing and, with
confirms, wait (bounded) for outstanding confirms.  The parent then waits
(bounded by C{--drain-timeout}) for the consumers to receive what was
published, stops them, prints the report and deletes the queue.

Processes talk to the parent over one C{multiprocessing} queue (reports) and
one pipe each (commands); nothing waits by sleeping.

Accuracy
========

  - Latency is measured from C{time.monotonic_ns()} read by the publisher as
    it stamps a message, just before writing its batch (at most 64 KiB) to
    the socket, to C{time.monotonic_ns()} read by the consumer when C{select}
    reports the socket readable for the read that completes the message.  On
    Linux the monotonic clock is system-wide, so these compare across
    processes; they do not across machines.  Time a stamped batch waits for
    a full socket to drain, and time a busy consumer leaves data in its
    socket, both count as latency.
  - Latencies are kept in a log-linear histogram (1 ns steps below 1024 ns,
    then 512 steps per power of two), so a reported percentile is the upper
    edge of its bucket, at most 0.2% above the true value.  C{max} is exact.
  - Without C{--confirm}, publishers send as fast as TCP lets them; if the
    broker cannot keep up, messages queue and the latency measures that queue.
    Use C{--confirm WINDOW} to bound messages in flight.
  - Rates count from the moment the publishers are told to go (process
    start-up and connection set-up are excluded) to the last write, the last
    confirm, or the last delivery.  C{lost} is published minus consumed when
    the consumers were stopped: if C{--drain-timeout} ran out first, it
    includes messages still queued.
  - Publishes are C{mandatory}, so unroutable messages come back as
    C{Basic.Return} and are counted as returned.
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
import ssl
import struct
import sys
import time
import traceback
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, NoReturn, Sequence, TextIO, TypeVar
from urllib.parse import parse_qs, quote, unquote, urlsplit

from pamqp import base, body, commands, constants, frame, header

__all__ = [
    "ProgressPrinter",
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
    @ivar tls: whether to speak TLS (C{amqps://}).
    @ivar caFile: with C{tls}, the CA certificates (PEM) the server's
        certificate is verified against; L{None} for the system's.
    """

    host: str
    port: int
    username: str
    password: str
    vhost: str
    tls: bool = False
    caFile: str | None = None

    def sslContext(self) -> ssl.SSLContext:
        """
        The client TLS context for C{amqps://}: the server's certificate
        verified against L{caFile} and its name against L{host}.
        """
        return ssl.create_default_context(cafile=self.caFile)

    def redacted(self) -> str:
        """
        @return: this URL without the password, fit to print.
        """
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = quote(self.username, safe="")
        vhost = quote(self.vhost, safe="")
        scheme = "amqps" if self.tls else "amqp"
        return f"{scheme}://{user}@{host}:{self.port}/{vhost}"


def parseURL(text: str) -> AMQPURL:
    """
    Parse an AMQP URL the way RabbitMQ documents them.

    C{amqp://user:pass@host:port/vhost}; user and password default to
    C{guest}, the port to 5672 (5671 for C{amqps://}), the vhost to C{/}.
    The vhost is the path's single segment, percent-decoded, so C{/} is
    written C{%2F}.  C{amqps://} speaks TLS and takes one query
    parameter, RabbitMQ's C{cacertfile}: the CA the server's certificate
    is verified against (the system's CAs without it).

    @param text: the URL.
    @return: the parsed URL.
    @raise ValueError: with a message a person can act on.
    """
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as error:
        raise ValueError(f"bad URL {text!r}: {error}") from None
    if parts.scheme not in ("amqp", "amqps"):
        raise ValueError(f"URL must start with amqp:// or amqps:// (got {text!r})")
    tls = parts.scheme == "amqps"
    caFile = None
    if parts.query and tls:
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = sorted(set(query) - {"cacertfile"})
        if unknown or len(query.get("cacertfile", [])) != 1 or not query["cacertfile"][0]:
            raise ValueError(
                f"the only URL query parameter supported is one cacertfile=PATH"
                f" with amqps:// (got {text!r})"
            )
        caFile = query["cacertfile"][0]
    elif parts.query or parts.fragment:
        raise ValueError(
            f"URL query parameters are not supported with amqp:// (got {text!r})"
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
        port=(5671 if tls else 5672) if port is None else port,
        username="guest" if parts.username is None else unquote(parts.username),
        password="guest" if parts.password is None else unquote(parts.password),
        vhost=vhost,
        tls=tls,
        caFile=caFile,
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
    progress: float = 5.0

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

    def error(self, message: str) -> NoReturn:
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
        """
        @return: C{text} as an integer in range.
        """
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


def _secondsType(zero: bool) -> Callable[[str], float]:
    """
    @param zero: whether 0 is accepted.
    @return: an argparse type for a finite number of seconds, more than 0
        (or, with C{zero}, 0 or more).
    """

    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be a number of seconds (got {text!r})"
            ) from None
        if not (math.isfinite(value) and (value >= 0 if zero else value > 0)):
            bound = "0 or more" if zero else "more than 0"
            raise argparse.ArgumentTypeError(f"must be {bound} seconds (got {text!r})")
        return value

    return convert


_seconds = _secondsType(zero=False)
_nonNegativeSeconds = _secondsType(zero=True)


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
        help="amqp://user:pass@host:port/vhost, vhost / as %%2F; amqps:// for "
        "TLS, with ?cacertfile=CA.pem to verify the server against that CA "
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
        "--progress", type=_nonNegativeSeconds, default=5.0, metavar="SECONDS",
        help="print a progress line to standard error every SECONDS while it "
        "runs; 0 for none (default 5)",
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
        progress=namespace.progress,
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
        # Rounded first so that float noise (99.9% of 1000 = 999.0000001)
        # does not push the rank up by one.
        rank = max(1, math.ceil(round(percent * self.count / 100, 6)))
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
        """
        @return: nanoseconds as milliseconds.
        """
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
        """
        @return: a rate, right-aligned with thousands separators.
        """
        return "-" if value is None else f"{value:>12,.0f}"

    def ms(value: float | None) -> str:
        """
        @return: milliseconds to the microsecond.
        """
        return "-" if value is None else f"{value:.3f}"

    def count(value: int | None) -> str:
        """
        @return: a count with thousands separators.
        """
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
        (
            f"  latency ms  p50 {ms(report.latencyP50)}  p99 "
            f"{ms(report.latencyP99)}  max {ms(report.latencyMax)}  "
            f"(of {report.latencyCount:,})"
            if report.latencyCount
            else "  latency ms  - (nothing consumed)"
        ),
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
        if url.tls:
            try:
                # The TLS handshake runs here, blocking with the timeout.
                sock = url.sslContext().wrap_socket(sock, server_hostname=url.host)
            except (OSError, ValueError) as error:
                sock.close()
                raise BenchError(f"TLS with {url.host}:{url.port} failed: {error}") from None
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
            data = self.receiveAvailable()
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
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
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

    def receiveAvailable(self) -> bytes:
        """
        Read what the kernel has; the socket must be readable.

        @raise BenchError: when the server has closed the socket.
        """
        try:
            data = self.socket.recv(RECEIVE_SIZE)
            # TLS: what is decrypted and buffered no longer shows on the
            # socket, so a select would not wake for it: take it all now.
            pending = self.socket.pending() if isinstance(self.socket, ssl.SSLSocket) else 0
            if data and pending:
                data += self.socket.recv(pending)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
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
            for key, mask in self.selector.select(remaining):
                if key.fileobj is self.socket and mask & selectors.EVENT_READ:
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
        return self.reader.feed(self.receiveAvailable())

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
            raise ServerClosedError(
                "connection", method.reply_code or 0, method.reply_text or ""
            )
        if isinstance(method, commands.Channel.Close):
            try:
                self.sendMethod(commands.Channel.CloseOk(), channel)
            except BenchError:
                pass
            raise ServerClosedError(
                "channel", method.reply_code or 0, method.reply_text or ""
            )
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
            self.sendAll(
                encodeMethod(commands.Connection.Close(200, "bye", 0, 0), 0),
                timeout,
            )
            deadline = time.monotonic() + timeout
            while True:
                for frameType, channel, payload in self.receiveFrames(deadline):
                    if frameType == FRAME_METHOD and channel == 0:
                        method = decodeMethod(channel, payload)
                        if isinstance(
                            method,
                            (commands.Connection.CloseOk, commands.Connection.Close),
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


# --------------------------------------------------------------------------
# Clients


#: A report from a client process to the parent: kind, role, index, payload.
Report = tuple[str, str, int, Any]


class Publisher:
    """
    One publishing client.  It keeps the socket full of stamped batches, or
    with confirms keeps at most C{--confirm} messages unconfirmed, and stops
    stamping while the server has the connection blocked.
    """

    def __init__(
        self,
        connection: AMQPConnection,
        options: BenchOptions,
        index: int,
        template: PublishTemplate,
        reports: Any = None,
    ) -> None:
        """
        @param connection: an open connection, in confirm mode if
            C{options.confirm}.
        @param options: the run's options.
        @param index: this publisher's number; the top 16 bits of its
            sequence numbers.
        @param template: the encoded publish.
        @param reports: the parent's report queue, told how many messages
            were published and confirmed every L{PROGRESS_INTERVAL_NS};
            L{None} for no progress reports.
        """
        self.connection = connection
        self.options = options
        self.index = index
        self.template = template
        self.reports = reports
        #: Whether we stopped in the middle of a frame (stop timed out).
        self.midFrame = False

    def run(self, control: multiprocessing.connection.Connection) -> PublisherResult:
        """
        Publish until C{"stop"} arrives on C{control} (then finish the batch
        being written and wait for outstanding confirms, both bounded by
        L{STOP_TIMEOUT}), or until C{--messages} are sent and settled.

        @return: the counts and times.
        """
        selector = self.connection.selector
        selector.register(control, selectors.EVENT_READ, "control")
        try:
            return self._publish(control)
        finally:
            # Leave the selector as the connection's own methods expect it:
            # a closed control pipe or a writable socket would wake them.
            selector.unregister(control)
            selector.modify(self.connection.socket, selectors.EVENT_READ)

    def _publish(
        self, control: multiprocessing.connection.Connection
    ) -> PublisherResult:
        """
        The publishing loop of L{run}.
        """
        connection = self.connection
        sock = connection.socket
        selector = connection.selector
        reader = connection.reader
        monotonic = time.monotonic_ns
        unpackMethod = METHOD_ID.unpack_from
        unpackTagAndBits = TAG_AND_BITS.unpack_from
        handleRare = connection.handleRareFrame

        length = len(self.template.encoded)
        capacity = max(1, BATCH_BYTES // length)
        window = self.options.confirm
        if window:
            capacity = min(capacity, window)
        limit = self.options.messages
        batch = PublishBatch(self.template, capacity)
        tracker = ConfirmTracker()
        sequenceBase = self.index << 48

        published = 0
        returned = 0
        pending: memoryview | None = None
        pendingCount = 0
        pendingOffset = 0
        stopping = False
        stopDeadline = 0
        writing = False
        start = lastSend = lastConfirm = lastProgress = monotonic()
        frames = connection.takeBacklog()
        reports = self.reports

        while True:
            if reports is not None:
                now = monotonic()
                if now - lastProgress >= PROGRESS_INTERVAL_NS:
                    reports.put(("progress", "publisher", self.index, (published, tracker.acked)))
                    lastProgress = now
            if frames:
                confirmed = False
                for frameType, channel, payload in frames:
                    if frameType != FRAME_METHOD:
                        continue
                    methodId = unpackMethod(payload)[0]
                    if methodId == BASIC_ACK:
                        tag, bits = unpackTagAndBits(payload, 4)
                        tracker.settle(tag, bool(bits & 1), True)
                        confirmed = True
                    elif methodId == BASIC_NACK:
                        tag, bits = unpackTagAndBits(payload, 4)
                        tracker.settle(tag, bool(bits & 1), False)
                        confirmed = True
                    elif methodId == BASIC_RETURN:
                        returned += 1
                    else:
                        handleRare(frameType, channel, payload)
                if confirmed:
                    lastConfirm = monotonic()
                frames = []

            if (
                pending is None
                and not stopping
                and not connection.blocked
                and (not window or published - tracker.settled < window)
                and (limit is None or published < limit)
            ):
                count = capacity
                if window:
                    count = min(count, window - (published - tracker.settled))
                if limit is not None:
                    count = min(count, limit - published)
                pending = batch.stamp(count, sequenceBase + published + 1)
                pendingCount = count
                pendingOffset = 0

            if pending is not None:
                try:
                    pendingOffset += sock.send(pending[pendingOffset:])
                except BlockingIOError:
                    pass
                except OSError as error:
                    raise BenchError(f"connection lost: {error}") from None
                if pendingOffset == len(pending):
                    published += pendingCount
                    pending = None
                    lastSend = monotonic()

            if pending is None and (not window or tracker.settled >= published):
                if stopping or (limit is not None and published >= limit):
                    break
            if stopping and monotonic() > stopDeadline:
                break

            canStamp = (
                pending is None
                and not stopping
                and not connection.blocked
                and (not window or published - tracker.settled < window)
                and (limit is None or published < limit)
            )
            wantWrite = pending is not None
            if wantWrite != writing:
                selector.modify(
                    sock,
                    selectors.EVENT_READ | (selectors.EVENT_WRITE if wantWrite else 0),
                )
                writing = wantWrite
            for key, mask in selector.select(0 if canStamp else IDLE_WAIT):
                if key.data == "control":
                    try:
                        command = control.recv()
                    except EOFError:
                        command = "stop"
                    if command == "stop" and not stopping:
                        stopping = True
                        stopDeadline = monotonic() + int(STOP_TIMEOUT * 1e9)
                elif mask & selectors.EVENT_READ:
                    frames = reader.feed(connection.receiveAvailable())

        if pending is not None:
            # Stopped while the socket would not drain: count what got out.
            published += pendingOffset // length
            self.midFrame = pendingOffset % length != 0
        return PublisherResult(
            published=published,
            confirmed=tracker.acked,
            nacked=tracker.nacked,
            returned=returned,
            unconfirmed=published - tracker.settled if window else 0,
            startNs=start,
            lastSendNs=lastSend,
            lastConfirmNs=lastConfirm if window else lastSend,
            blockedCount=connection.blockedCount,
            blockedNs=connection.blockedTime(),
        )


class Consumer:
    """
    One consuming client: receives deliveries, reads the send timestamp
    from the body, and acks (multiple) every C{prefetch / 2} deliveries.
    """

    def __init__(
        self,
        connection: AMQPConnection,
        options: BenchOptions,
        index: int,
        reports: Any,
    ) -> None:
        """
        @param connection: an open connection with a consumer on the queue.
        @param options: the run's options.
        @param index: this consumer's number.
        @param reports: the parent's report queue, for progress.
        """
        self.connection = connection
        self.options = options
        self.index = index
        self.reports = reports
        self.histogram = LatencyHistogram()
        self.consumed = 0
        self.redelivered = 0
        self.unacked = 0
        self.lastTag = 0
        self.firstNs = 0
        self.lastNs = 0
        self._bodySize = 0
        self._remaining = 0
        self._stampNs = -1

    def handleFrames(self, frames: list[Frame], receivedNs: int) -> None:
        """
        Account for a read's frames; the hot path, so everything is local.

        @param frames: the frames, in order.
        @param receivedNs: when the read that completed them returned.
        """
        counts = self.histogram.counts
        maximum = self.histogram.maximum
        recorded = 0
        consumed = self.consumed
        unacked = self.unacked
        lastTag = self.lastTag
        bodySize = self._bodySize
        remaining = self._remaining
        stampNs = self._stampNs
        ackEvery = self.options.ackEvery
        unpackMethod = METHOD_ID.unpack_from
        unpackLong = LONG_LONG.unpack_from
        unpackHeader = HEADER_BODY_SIZE.unpack_from
        consumedBefore = consumed
        for frameType, channel, payload in frames:
            if frameType == FRAME_BODY:
                if remaining == bodySize and len(payload) >= 16:
                    stampNs = unpackLong(payload)[0]
                remaining -= len(payload)
                if remaining > 0:
                    continue
            elif frameType == FRAME_HEADER:
                bodySize = remaining = unpackHeader(payload)[2]
                stampNs = -1
                if bodySize:
                    continue
            elif frameType == FRAME_METHOD:
                if unpackMethod(payload)[0] == BASIC_DELIVER:
                    tagEnd = 5 + payload[4]
                    lastTag = unpackLong(payload, tagEnd)[0]
                    if payload[tagEnd + 8] & 1:
                        self.redelivered += 1
                else:
                    self.connection.handleRareFrame(frameType, channel, payload)
                continue
            else:
                continue
            # A whole message has arrived.
            consumed += 1
            if stampNs >= 0:
                latency = receivedNs - stampNs
                if latency < 0:
                    latency = 0
                bits = latency.bit_length()
                if bits <= 10:
                    counts[latency] += 1
                else:
                    counts[((bits - 10) << 9) + (latency >> (bits - 10))] += 1
                if latency > maximum:
                    maximum = latency
                recorded += 1
            unacked += 1
            if unacked >= ackEvery:
                self.connection.sendAll(encodeAck(lastTag, True))
                unacked = 0
        if consumed != consumedBefore:
            if not consumedBefore:
                self.firstNs = receivedNs
            self.lastNs = receivedNs
        self.histogram.count += recorded
        self.histogram.maximum = maximum
        self.consumed = consumed
        self.unacked = unacked
        self.lastTag = lastTag
        self._bodySize = bodySize
        self._remaining = remaining
        self._stampNs = stampNs

    def ackAll(self) -> None:
        """
        Acknowledge every delivery not acknowledged yet.
        """
        if self.unacked:
            self.connection.sendAll(encodeAck(self.lastTag, True))
            self.unacked = 0

    def run(self, control: multiprocessing.connection.Connection) -> ConsumerResult:
        """
        Consume until C{"stop"} arrives on C{control}, telling the parent how
        many messages arrived every L{PROGRESS_INTERVAL_NS}.

        @return: the counts, times and latencies.
        """
        selector = self.connection.selector
        selector.register(control, selectors.EVENT_READ, "control")
        try:
            return self._consume(control)
        finally:
            selector.unregister(control)

    def _consume(
        self, control: multiprocessing.connection.Connection
    ) -> ConsumerResult:
        """
        The receiving loop of L{run}.
        """
        connection = self.connection
        selector = connection.selector
        reader = connection.reader
        monotonic = time.monotonic_ns
        lastProgress = monotonic()
        frames = connection.takeBacklog()
        if frames:
            self.handleFrames(frames, lastProgress)
        stopping = False
        while not stopping:
            events = selector.select(IDLE_WAIT)
            receivedNs = monotonic()
            for key, mask in events:
                if key.data == "control":
                    try:
                        stopping = control.recv() == "stop"
                    except EOFError:
                        stopping = True
                else:
                    self.handleFrames(
                        reader.feed(connection.receiveAvailable()), receivedNs
                    )
            if not events:
                self.ackAll()
            if receivedNs - lastProgress >= PROGRESS_INTERVAL_NS:
                self.reports.put(("progress", "consumer", self.index, self.consumed))
                lastProgress = receivedNs
        result = ConsumerResult(
            consumed=self.consumed,
            redelivered=self.redelivered,
            firstNs=self.firstNs,
            lastNs=self.lastNs,
            latencies=self.histogram.toSparse(),
            maximumNs=self.histogram.maximum,
        )
        self.ackAll()
        return result


def _waitForGo(control: multiprocessing.connection.Connection) -> bool:
    """
    @return: whether the parent said C{"go"} (rather than stop, or died).
    """
    try:
        command: object = control.recv()
    except EOFError:
        return False
    return command == "go"


def _runClient(role: str, index: int, reports: Any, body: Callable[[], None]) -> None:
    """
    Run a client's C{body}, reporting any failure to the parent in one line.
    """
    try:
        body()
    except KeyboardInterrupt:
        pass
    except BenchError as error:
        reports.put(("error", role, index, str(error)))
    except Exception:
        reports.put(("error", role, index, traceback.format_exc().rstrip()))


def publisherProcess(
    options: BenchOptions,
    index: int,
    control: multiprocessing.connection.Connection,
    reports: Any,
) -> None:
    """
    The body of a publisher process: connect, report ready, wait for
    C{"go"}, publish, report the result.

    @param control: commands from the parent (C{"go"}, C{"stop"}).
    @param reports: the parent's report queue.
    """

    def publish() -> None:
        """
        Connect, publish and report; close (or abort) the connection.
        """
        connection = AMQPConnection.open(options.url)
        publisher: Publisher | None = None
        try:
            if options.confirm:
                connection.call(commands.Confirm.Select(), commands.Confirm.SelectOk)
            template = buildPublishTemplate(
                options.queue, options.size, connection.frameMax, options.persistent
            )
            reports.put(("ready", "publisher", index, None))
            if not _waitForGo(control):
                return
            publisher = Publisher(connection, options, index, template, reports)
            result = publisher.run(control)
            reports.put(("done", "publisher", index, result))
        finally:
            if publisher is not None and publisher.midFrame:
                connection.abort()
            else:
                connection.close()

    _runClient("publisher", index, reports, publish)


def consumerProcess(
    options: BenchOptions,
    index: int,
    control: multiprocessing.connection.Connection,
    reports: Any,
) -> None:
    """
    The body of a consumer process: connect, set the prefetch, consume,
    report ready, receive until told to stop, report the result.

    @param control: commands from the parent (C{"stop"}).
    @param reports: the parent's report queue.
    """

    def consume() -> None:
        """
        Connect, consume and report; close the connection.
        """
        connection = AMQPConnection.open(options.url)
        try:
            connection.call(
                commands.Basic.Qos(prefetch_count=options.prefetch),
                commands.Basic.QosOk,
            )
            connection.call(
                commands.Basic.Consume(
                    queue=options.queue, consumer_tag=f"{PROGRAM}-{index}"
                ),
                commands.Basic.ConsumeOk,
            )
            reports.put(("ready", "consumer", index, None))
            result = Consumer(connection, options, index, reports).run(control)
            reports.put(("done", "consumer", index, result))
        finally:
            connection.close()

    _runClient("consumer", index, reports, consume)


# --------------------------------------------------------------------------
# The parent


class ProgressPrinter:
    """
    Progress lines while a run goes on, every C{interval} seconds, to
    standard error (the report itself goes to standard output, so
    C{--json} stays one object).

    @ivar interval: seconds between lines; 0 for none.
    """

    def __init__(self, interval: float, out: TextIO | None = None) -> None:
        """
        @param interval: seconds between lines; 0 for none.
        @param out: where lines go; standard error by default.
        """
        self.interval = interval
        self.out = out
        self.lines = 0
        self.last = (0.0, 0, 0)

    def due(self, started: float | None) -> float:
        """
        @return: the C{time.monotonic()} time the next line is due at
            (infinity when none is).
        """
        if not self.interval or started is None:
            return math.inf
        return started + (self.lines + 1) * self.interval

    def tick(self, elapsed: float, published: int, confirmed: int, consumed: int) -> None:
        """
        Print a line if one is due at C{elapsed} seconds into the run.
        """
        if not self.interval or elapsed < (self.lines + 1) * self.interval:
            return
        self.lines = int(elapsed // self.interval)
        print(self.format(elapsed, published, confirmed, consumed), file=self.out or sys.stderr, flush=True)

    def format(self, elapsed: float, published: int, confirmed: int, consumed: int) -> str:
        """
        One progress line: totals, and rates since the line before.
        """
        before, publishedBefore, consumedBefore = self.last
        span = max(elapsed - before, 1e-9)
        self.last = (elapsed, published, consumed)
        return (
            f"{PROGRAM}: {elapsed:.1f} s: published {published:,}"
            f" ({(published - publishedBefore) / span:,.0f}/s), confirmed {confirmed:,},"
            f" consumed {consumed:,} ({(consumed - consumedBefore) / span:,.0f}/s)"
        )


@dataclass
class _Client:
    """
    A client process as the parent sees it.
    """

    role: str
    index: int
    process: multiprocessing.process.BaseProcess
    control: multiprocessing.connection.Connection


class _Run:
    """
    The parent's side of a run: starts client processes, sends them
    commands, and handles their reports.
    """

    def __init__(self, options: BenchOptions) -> None:
        """
        @param options: the run's options.
        """
        self.options = options
        self.context = multiprocessing.get_context("spawn")
        self.reports = self.context.Queue()
        self.clients: dict[tuple[str, int], _Client] = {}
        self.ready: set[tuple[str, int]] = set()
        self.results: dict[tuple[str, int], Any] = {}
        self.progress: dict[int, int] = {}
        self.published: dict[int, tuple[int, int]] = {}
        self.started: float | None = None
        self.printer = ProgressPrinter(options.progress)

    def start(self, role: str, count: int) -> None:
        """
        Start C{count} client processes of a role.
        """
        target = publisherProcess if role == "publisher" else consumerProcess
        for index in range(count):
            receiver, sender = self.context.Pipe(duplex=False)
            process = self.context.Process(
                target=target,
                args=(self.options, index, receiver, self.reports),
                name=f"{PROGRAM}-{role}-{index}",
                daemon=True,
            )
            process.start()
            receiver.close()
            self.clients[(role, index)] = _Client(role, index, process, sender)

    def keys(self, role: str) -> list[tuple[str, int]]:
        """
        @return: the keys of the clients of a role.
        """
        return [key for key in self.clients if key[0] == role]

    def send(self, role: str, command: str) -> None:
        """
        Send a command to every client of a role.
        """
        for key in self.keys(role):
            try:
                self.clients[key].control.send(command)
            except OSError:
                pass  # it has exited; its report says why

    def pump(self, until: Callable[[], bool], deadline: float | None) -> bool:
        """
        Handle reports until C{until()} holds or the C{time.monotonic()}
        C{deadline} passes.

        @return: whether C{until()} holds.
        @raise BenchError: when a client reports an error or dies.
        """
        nextCheck = time.monotonic() + 0.5
        while not until():
            now = time.monotonic()
            if now >= nextCheck:
                self._checkAlive()
                nextCheck = now + 0.5
            if self.started is not None:
                self.printer.tick(
                    now - self.started,
                    sum(each[0] for each in self.published.values()),
                    sum(each[1] for each in self.published.values()),
                    sum(self.progress.values()),
                )
            wait = min(nextCheck, self.printer.due(self.started)) - now
            if deadline is not None:
                wait = min(wait, deadline - now)
                if wait <= 0:
                    return False
            try:
                report = self.reports.get(timeout=wait)
            except queuemodule.Empty:
                continue
            self._handle(report)
        return True

    def _handle(self, report: Report) -> None:
        """
        Take in one report.
        """
        kind, role, index, payload = report
        if kind == "ready":
            self.ready.add((role, index))
        elif kind == "progress":
            if role == "publisher":
                self.published[index] = payload
            else:
                self.progress[index] = payload
        elif kind == "done":
            self.results[(role, index)] = payload
            if role == "consumer":
                self.progress[index] = payload.consumed
            else:
                self.published[index] = (payload.published, payload.confirmed)
        elif kind == "error":
            raise BenchError(f"{role} {index}: {payload}")

    def _checkAlive(self) -> None:
        """
        @raise BenchError: if a client exited without reporting a result.
        """
        for key, client in self.clients.items():
            if client.process.exitcode is not None and key not in self.results:
                while True:
                    try:
                        self._handle(self.reports.get_nowait())
                    except queuemodule.Empty:
                        break
                if key not in self.results:
                    raise BenchError(
                        f"{key[0]} {key[1]} exited unexpectedly "
                        f"(exit code {client.process.exitcode})"
                    )

    def shutdown(self) -> None:
        """
        Let every client exit, ending those that do not within a few seconds.
        """
        for client in self.clients.values():
            client.control.close()
        deadline = time.monotonic() + CLOSE_TIMEOUT + 2
        for client in self.clients.values():
            client.process.join(max(0.0, deadline - time.monotonic()))
            if client.process.is_alive():
                client.process.terminate()
                client.process.join(2)
        self.reports.close()
        self.reports.cancel_join_thread()


def runBench(options: BenchOptions) -> BenchReport:
    """
    Run the whole benchmark against C{options.url}.

    @return: the figures.
    @raise BenchError: when it cannot run or the server refuses something.
    """
    admin = AMQPConnection.open(options.url)
    clients = _Run(options)
    declared = False

    def allOf(
        role: str, holds: Callable[[tuple[str, int]], bool]
    ) -> Callable[[], bool]:
        """
        @return: a test that C{holds} for every client of C{role}.
        """
        return lambda: all(holds(key) for key in clients.keys(role))

    try:
        admin.call(
            commands.Queue.Declare(
                queue=options.queue,
                durable=options.durable,
                arguments=options.queueArguments or None,
            ),
            commands.Queue.DeclareOk,
        )
        declared = True
        admin.call(
            commands.Queue.Purge(queue=options.queue), commands.Queue.PurgeOk
        )
        for role, count in (
            ("consumer", options.consumers),
            ("publisher", options.publishers),
        ):
            clients.start(role, count)
            if not clients.pump(
                allOf(role, clients.ready.__contains__),
                time.monotonic() + STARTUP_TIMEOUT,
            ):
                raise BenchError(
                    f"{role}s did not start within {STARTUP_TIMEOUT:.0f} s"
                )

        publishersDone = allOf("publisher", clients.results.__contains__)
        clients.send("publisher", "go")
        clients.started = time.monotonic()
        if options.duration is not None:
            clients.pump(publishersDone, time.monotonic() + options.duration)
            clients.send("publisher", "stop")
            if not clients.pump(
                publishersDone, time.monotonic() + STOP_TIMEOUT + 10
            ):
                raise BenchError("publishers did not stop")
        else:
            clients.pump(publishersDone, None)
        publishers: list[PublisherResult] = [
            clients.results[key] for key in clients.keys("publisher")
        ]

        consumers: list[ConsumerResult] = []
        if options.consumers:
            expected = sum(
                each.published - each.returned - each.nacked
                for each in publishers
            )
            clients.pump(
                lambda: sum(clients.progress.values()) >= expected,
                time.monotonic() + options.drainTimeout,
            )
            clients.send("consumer", "stop")
            if not clients.pump(
                allOf("consumer", clients.results.__contains__),
                time.monotonic() + STOP_TIMEOUT,
            ):
                raise BenchError("consumers did not stop")
            consumers = [
                clients.results[key] for key in clients.keys("consumer")
            ]
        return summarize(options, publishers, consumers)
    finally:
        clients.shutdown()
        if declared and not options.keepQueue:
            _deleteQueue(options, admin)
        admin.close()


def _deleteQueue(options: BenchOptions, admin: AMQPConnection) -> None:
    """
    Delete the bench's queue on C{admin}, or on a new connection if the
    server has closed that one; give up quietly if neither works.
    """
    delete = commands.Queue.Delete(queue=options.queue)
    try:
        admin.call(delete, commands.Queue.DeleteOk, timeout=CLOSE_TIMEOUT)
        return
    except BenchError:
        pass
    try:
        fresh = AMQPConnection.open(options.url, CLOSE_TIMEOUT)
    except BenchError:
        return
    try:
        fresh.call(delete, commands.Queue.DeleteOk, timeout=CLOSE_TIMEOUT)
    except BenchError:
        pass
    finally:
        fresh.close()


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """
    The C{qha-bench} command.

    @param argv: the arguments, without the program name; C{sys.argv[1:]}
        by default.
    @param out: where the report goes; standard output by default.
    @return: the exit code: 0, 1 when the run failed, 2 for a bad command
        line.
    """
    output = sys.stdout if out is None else out
    try:
        options = parseArguments(sys.argv[1:] if argv is None else argv)
    except OptionsError as error:
        print(f"{PROGRAM}: error: {error}", file=sys.stderr)
        return 2
    try:
        report = runBench(options)
    except BenchError as error:
        print(f"{PROGRAM}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROGRAM}: interrupted", file=sys.stderr)
        return 130
    if options.json:
        print(json.dumps(asdict(report)), file=output)
    else:
        print(formatTable(report), file=output)
    return 0


if __name__ == "__main__":
    # Import ourselves by name so that the classes pickled between processes
    # belong to qha_bench.bench rather than __main__.
    from qha_bench.bench import main as _main

    sys.exit(_main())
