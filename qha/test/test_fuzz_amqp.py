"""
Property-based fuzzing of the AMQP 0-9-1 server (issue 12): whatever a
client sends after a correct handshake, the server never raises out of
C{dataReceived}, logs no traceback, answers a broken stream with
connection.close and a reply code from the specification (or goes on),
keeps what it buffers for one connection bounded, and serves the next
client on the same virtual host as before.

The server runs as in L{qha.test.test_protocol}: a L{BrokerFactory} with a
L{Clock}, one L{StringTransport} per connection, no reactor, no sockets.
The input comes from hypothesis: random bytes, valid frames, valid frames
made wrong (frame size, frame end, frame type, class and method ids,
declared body size, truncation, a flipped byte), cut into reads at random
places.

How many examples run is a hypothesis profile, shared with
L{qha.test.test_fuzz_events}: C{qha} (the default, a few seconds for
C{make test}, derandomized so that every run tries the same inputs) and
C{qha-fuzz} (C{QHA_FUZZ=1}, as C{make fuzz} runs it: many more examples,
random each run; C{QHA_FUZZ_EXAMPLES} sets how many). No example database
is written (C{database=None}); hypothesis prints how to reproduce a
failure.
"""

from __future__ import annotations

import functools
import os
import struct
import sys
import tracemalloc
from typing import Any, Callable, Sequence

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pamqp import commands
from pamqp.heartbeat import Heartbeat

from qha.amqp.protocol import BrokerFactory
from qha.broker.vhost import VirtualHost
from qha.test import support as tp

# Profiles

settings.register_profile(
    "qha",
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "qha-fuzz",
    max_examples=int(os.environ.get("QHA_FUZZ_EXAMPLES", "5000")),
    deadline=None,
    derandomize=False,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

FUZZING = os.environ.get("QHA_FUZZ", "") not in ("", "0")
"""
Whether the long run was asked for (C{QHA_FUZZ=1}, as C{make fuzz} does).
"""

PROFILE = settings.get_profile("qha-fuzz" if FUZZING else "qha")
"""
The hypothesis settings every fuzz test runs with; a test that costs more
per example runs a fraction of them (see L{fuzzed}).
"""


def fuzzed(divisor: int = 1) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """
    Run a C{@given} test with L{PROFILE}, and C{1/divisor} of its examples
    (at least 5) for a test whose examples are expensive.

    Hypothesis attaches the falsifying example to the exception as a note,
    which trial's report leaves out: the decorated test writes the notes
    to standard error before the failure goes on.
    """
    chosen = settings(PROFILE, max_examples=max(5, PROFILE.max_examples // divisor))

    def decorate(test: Callable[..., Any]) -> Callable[..., Any]:
        withSettings = chosen(test)

        @functools.wraps(withSettings)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return withSettings(*args, **kwargs)
            except BaseException as error:
                for note in getattr(error, "__notes__", []):
                    print(note, file=sys.stderr)
                raise

        return run

    return decorate


# What the specification allows

CONNECTION_CODES = frozenset({501, 502, 503, 504, 505, 506, 530, 540, 541})
"""
The reply codes of a connection.close that a server sends for a broken
stream after the handshake: the hard errors of AMQP 0-9-1.
"""

CHANNEL_CODES = frozenset({311, 312, 313, 403, 404, 405, 406})
"""
The reply codes of a channel.close for a command a channel refuses: the
soft errors of AMQP 0-9-1.
"""

FRAME_MAX = 131072
"""
The frame size the fuzzed server offers and the clients take (the
default of L{BrokerFactory}).
"""

MAX_MESSAGE = 64 * 1024
"""
The largest message the fuzzed server accepts: small, so that a client
declaring more is refused and one sending more is caught quickly.
"""

BUFFER_SLACK = 512 * 1024
"""
What a connection may keep beyond one frame and one message (the
channels, the decoded frames, the interpreter's own allocations) before
its buffering counts as unbounded.
"""

GOOD_QUEUE = "fuzz-good-client"
"""
The queue of the well-behaved client; the hostile input never names it.
"""


# Frames

def frame(frameType: int, channel: int, payload: bytes) -> bytes:
    """
    One frame with a correct size and frame end (see L{tp.rawFrame}).
    """
    return tp.rawFrame(frameType, channel, payload)


def header(bodySize: int, classId: int = 60) -> bytes:
    """
    The payload of a content header frame with no properties.
    """
    return struct.pack(">HHQH", classId, 0, bodySize, 0)


VALID_METHODS: list[Any] = [
    commands.Channel.Open(),
    commands.Channel.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0),
    commands.Channel.CloseOk(),
    commands.Channel.Flow(active=False),
    commands.Channel.Flow(active=True),
    commands.Confirm.Select(),
    commands.Tx.Select(),
    commands.Tx.Commit(),
    commands.Tx.Rollback(),
    commands.Basic.Qos(prefetch_count=3),
    commands.Queue.Declare(queue="fuzz"),
    commands.Queue.Declare(queue="fuzz-x", exclusive=True, auto_delete=True),
    commands.Queue.Declare(queue="", arguments={"x-max-length": 2}),
    commands.Queue.Bind(queue="fuzz", exchange="amq.direct", routing_key="k"),
    commands.Queue.Unbind(queue="fuzz", exchange="amq.direct", routing_key="k"),
    commands.Queue.Purge(queue="fuzz"),
    commands.Queue.Delete(queue="fuzz"),
    commands.Exchange.Declare(exchange="fuzz-t", exchange_type="topic"),
    commands.Exchange.Declare(exchange="fuzz-h", exchange_type="headers"),
    commands.Exchange.Bind(destination="fuzz-t", source="amq.fanout"),
    commands.Exchange.Delete(exchange="fuzz-t"),
    commands.Basic.Consume(queue="fuzz", consumer_tag="c"),
    commands.Basic.Cancel(consumer_tag="c"),
    commands.Basic.Get(queue="fuzz"),
    commands.Basic.Ack(delivery_tag=1),
    commands.Basic.Ack(delivery_tag=0, multiple=True),
    commands.Basic.Nack(delivery_tag=1, requeue=True),
    commands.Basic.Reject(delivery_tag=1, requeue=False),
    commands.Basic.Recover(requeue=True),
    commands.Basic.Publish(exchange="", routing_key="fuzz"),
    commands.Basic.Publish(exchange="amq.topic", routing_key="a.b", mandatory=True),
    commands.Connection.Blocked(reason="x"),
    commands.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0),
    commands.Connection.CloseOk(),
    commands.Connection.StartOk(
        client_properties={}, mechanism="PLAIN", response="\0guest\0guest"
    ),
]
"""
Methods a client may send (some only on channel 0, some only on another,
some only at one point of the conversation: the fuzzer sends them
anywhere).
"""


@st.composite
def validFrames(draw: Callable[..., Any]) -> bytes:
    """
    One or a few frames that are each well formed: a method, a whole
    publish with its content, a content header or body alone, or a
    heartbeat, on a small channel number (mostly 0 to 3).
    """
    channel = draw(st.one_of(st.integers(0, 3), st.integers(0, 0xFFFF)))
    kind = draw(st.sampled_from(["method", "publish", "header", "body", "heartbeat"]))
    if kind == "method":
        return tp.encode(channel, draw(st.sampled_from(VALID_METHODS)))
    if kind == "publish":
        body = draw(st.binary(max_size=300))
        return tp.publishBytes(
            channel,
            draw(st.sampled_from(["", "amq.direct", "amq.topic", "missing"])),
            draw(st.sampled_from(["fuzz", "a.b", ""])),
            body,
            mandatory=draw(st.booleans()),
            chunk=draw(st.integers(0, 64)),
        )
    if kind == "header":
        return frame(2, channel, header(draw(st.integers(0, 2 * MAX_MESSAGE))))
    if kind == "body":
        return frame(3, channel, draw(st.binary(max_size=200)))
    return tp.encode(0, Heartbeat())


@st.composite
def mutatedFrames(draw: Callable[..., Any]) -> bytes:
    """
    A valid frame made wrong in one way: its size field, its frame end,
    its type, its class and method ids, the body size its content header
    declares, a byte anywhere, or cut short.
    """
    data = bytearray(draw(validFrames()))
    # Only the first frame is mutated; the rest (a publish's content)
    # follows as it was.
    length = struct.unpack_from(">I", data, 3)[0]
    end = 7 + length
    how = draw(
        st.sampled_from(
            ["size", "end", "type", "method", "bodySize", "flip", "truncate", "channel"]
        )
    )
    if how == "size":
        size = draw(
            st.one_of(
                st.integers(0, 0xFFFFFFFF),
                st.integers(max(0, length - 8), length + 8),
                st.sampled_from([FRAME_MAX - 8, FRAME_MAX - 7, FRAME_MAX, 0xFFFFFFFF]),
            )
        )
        struct.pack_into(">I", data, 3, size)
    elif how == "end":
        data[end] = draw(st.integers(0, 255).filter(lambda byte: byte != 0xCE))
    elif how == "type":
        data[0] = draw(st.integers(0, 255))
    elif how == "method" and data[0] == 1 and length >= 4:
        struct.pack_into(
            ">HH",
            data,
            7,
            draw(st.one_of(st.sampled_from([10, 20, 40, 50, 60, 85, 90]), st.integers(0, 0xFFFF))),
            draw(st.one_of(st.integers(0, 120), st.integers(0, 0xFFFF))),
        )
    elif how == "bodySize" and data[0] == 2 and length >= 12:
        struct.pack_into(
            ">Q",
            data,
            11,
            draw(
                st.one_of(
                    st.integers(0, 2**64 - 1),
                    st.sampled_from([MAX_MESSAGE, MAX_MESSAGE + 1, 2**63 - 1, 2**63, 2**64 - 1]),
                )
            ),
        )
    elif how == "flip" and data:
        where = draw(st.integers(0, len(data) - 1))
        data[where] ^= draw(st.integers(1, 255))
    elif how == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    elif how == "channel":
        struct.pack_into(">H", data, 1, draw(st.integers(0, 0xFFFF)))
    return bytes(data)


def hugeContent() -> st.SearchStrategy[bytes]:
    """
    A publish whose content header declares a body of any size (up to
    2**64 - 1), followed by a few body frames.
    """
    return st.builds(
        lambda channel, size, bodies: (
            tp.encode(channel, commands.Basic.Publish(exchange="", routing_key="fuzz"))
            + frame(2, channel, header(size))
            + b"".join(frame(3, channel, body) for body in bodies)
        ),
        st.integers(1, 2),
        st.one_of(
            st.integers(0, 2**64 - 1),
            st.sampled_from([MAX_MESSAGE - 1, MAX_MESSAGE, MAX_MESSAGE + 1, 2**63, 2**64 - 1]),
        ),
        st.lists(st.binary(min_size=0, max_size=512), max_size=4),
    )


hostilePieces = st.one_of(
    st.binary(max_size=64),
    validFrames(),
    mutatedFrames(),
    hugeContent(),
)
"""
One piece of a hostile stream.
"""

hostileStreams = st.lists(hostilePieces, min_size=1, max_size=12).map(b"".join)
"""
What a hostile client sends after the handshake.
"""

readSizes = st.lists(st.integers(1, 96), max_size=16)
"""
Where the stream is cut into reads: the sizes of the first reads, the rest
in one.
"""


def inReads(data: bytes, sizes: Sequence[int]) -> list[bytes]:
    """
    C{data} cut into reads of C{sizes} bytes, and the rest as one read.
    """
    reads = []
    offset = 0
    for size in sizes:
        if offset >= len(data):
            break
        reads.append(data[offset : offset + size])
        offset += size
    if offset < len(data):
        reads.append(data[offset:])
    return reads


class AMQPFuzzTests(tp.ProtocolTestCase):
    """
    Hostile byte streams from one client of a L{BrokerFactory}, after a
    correct handshake, and a well-behaved client of the same virtual host
    after it.
    """

    def makeBroker(self) -> BrokerFactory:
        """
        A fresh virtual host and factory for one example, so that examples
        do not depend on each other; messages above L{MAX_MESSAGE} refused.
        """
        return BrokerFactory(
            VirtualHost(), tp.fastUsers(), self.clock, maxMessageSize=MAX_MESSAGE
        )

    def hostileClient(self, factory: BrokerFactory) -> tp.Client:
        """
        A client that did the handshake right (no heartbeats) and opened
        channel 1.
        """
        client = tp.Client(factory)
        frames = client.handshake()
        self.assertEqual(tp.names(frames)[-1], (0, "Connection.OpenOk"))
        self.assertEqual(tp.names(client.openChannel(1)), [(1, "Channel.OpenOk")])
        return client

    def assertSpecAnswers(self, output: bytes) -> tuple[bool, list[tp.Received]]:
        """
        What the server wrote decodes as AMQP frames; every connection.close
        and channel.close carries a reply code the specification gives for
        it, and nothing but close-ok follows a connection.close.

        @return: whether the server closed the connection, and the frames.
        """
        frames = tp.decodeFrames(output)
        closed = False
        for channel, value in frames:
            if closed:
                self.assertIsInstance(value, commands.Connection.CloseOk, value)
            if isinstance(value, commands.Connection.Close):
                self.assertEqual(channel, 0)
                self.assertIn(value.reply_code, CONNECTION_CODES, value.reply_text)
                closed = True
            elif isinstance(value, commands.Channel.Close):
                self.assertIn(value.reply_code, CHANNEL_CODES, value.reply_text)
        return closed, frames

    def assertNoTraceback(self) -> None:
        """
        Nothing was logged as a failure (a traceback): the server knew what
        was wrong with every input.
        """
        errors = self.flushLoggedErrors()
        self.assertEqual(errors, [], [error.getTraceback() for error in errors])

    def assertStillServes(self, factory: BrokerFactory) -> None:
        """
        A well-behaved client of C{factory} logs in, declares a queue,
        publishes with a confirm, and consumes and acknowledges its message.
        """
        good = tp.Client(factory)
        try:
            self.assertEqual(tp.names(good.handshake())[-1], (0, "Connection.OpenOk"))
            self.assertEqual(tp.names(good.openChannel(1)), [(1, "Channel.OpenOk")])
            self.assertEqual(
                tp.names(good.call(1, commands.Queue.Declare(queue=GOOD_QUEUE, auto_delete=True))),
                [(1, "Queue.DeclareOk")],
            )
            self.assertEqual(
                tp.names(good.call(1, commands.Confirm.Select())), [(1, "Confirm.SelectOk")]
            )
            self.assertEqual(
                tp.names(good.call(1, commands.Basic.Consume(queue=GOOD_QUEUE, consumer_tag="g"))),
                [(1, "Basic.ConsumeOk")],
            )
            good.send(tp.publishBytes(1, "", GOOD_QUEUE, b"still served"))
            frames = good.received()
            self.assertIn((1, "Basic.Ack"), tp.names(frames))
            [(deliver, body)] = tp.contents(frames)
            self.assertEqual(body, b"still served")
            good.sendFrames(1, commands.Basic.Ack(delivery_tag=deliver.delivery_tag))
            self.assertEqual(good.received(), [])
            self.assertFalse(good.transport.disconnecting)
        finally:
            good.disconnect()

    def feed(self, client: tp.Client, reads: Sequence[bytes]) -> None:
        """
        Deliver C{reads} one by one, stopping once the server dropped the
        connection (a transport would not read more).
        """
        for data in reads:
            if client.transport.disconnecting:
                break
            client.send(data)

    def finishExample(self, *clients: tp.Client) -> None:
        """
        Disconnect C{clients}; no timer of theirs may be left.
        """
        for client in clients:
            client.disconnect()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    @fuzzed()
    @given(stream=hostileStreams, sizes=readSizes)
    def test_hostileStream(self, stream: bytes, sizes: list[int]) -> None:
        """
        After any stream the server raised nothing, logged no traceback,
        wrote only frames, closed (if it did) with a hard-error code, and a
        new client of the same virtual host is served while the hostile one
        is still connected.
        """
        factory = self.makeBroker()
        hostile = self.hostileClient(factory)
        try:
            self.feed(hostile, inReads(stream, sizes))
            self.assertNoTraceback()
            closed, _ = self.assertSpecAnswers(hostile.transport.value())
            self.assertStillServes(factory)
            self.assertNoTraceback()
        finally:
            self.finishExample(hostile)

    @fuzzed()
    @given(garbage=st.binary(min_size=1, max_size=512), sizes=readSizes)
    def test_randomBytes(self, garbage: bytes, sizes: list[int]) -> None:
        """
        Random bytes after the handshake: the same as L{test_hostileStream},
        and the connection is either closed with a frame error code or still
        waiting for the rest of a frame that could be whole (at most
        C{frame_max} bytes, ending with 0xCE).
        """
        factory = self.makeBroker()
        hostile = self.hostileClient(factory)
        try:
            self.feed(hostile, inReads(garbage, sizes))
            self.assertNoTraceback()
            closed, _ = self.assertSpecAnswers(hostile.transport.value())
            if not closed:
                # Nothing was refused: what is left can only be a frame that
                # has not arrived whole, which must be able to arrive.
                self.assertFalse(hostile.transport.disconnecting)
            self.assertStillServes(factory)
        finally:
            self.finishExample(hostile)

    @fuzzed()
    @given(stream=hostileStreams, sizes=readSizes)
    # Found by make fuzz: a well-formed connection.close from the client.
    @example(
        stream=b"\x01\x00\x00\x00\x00\x00\x0e\x00\n\x002\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xce",
        sizes=[],
    )
    def test_neverWaitsForever(self, stream: bytes, sizes: list[int]) -> None:
        """
        Whatever came before, C{frame_max + 8} zero bytes more end the
        connection: they either complete the frame the server waits for,
        whose end is then not 0xCE, or are a frame of their own with a bad
        end (unless the stream closed the connection itself, answered with
        close-ok). A client cannot make the server hold a partial frame for
        ever nor keep reading past a framing error.
        """
        factory = self.makeBroker()
        hostile = self.hostileClient(factory)
        try:
            self.feed(hostile, inReads(stream, sizes) + [b"\x00" * (FRAME_MAX + 8)])
            self.assertNoTraceback()
            closed, frames = self.assertSpecAnswers(hostile.transport.value())
            # The stream may close the connection itself (a well-formed
            # connection.close): the server's close-ok ends it then.
            closedByClient = any(
                channel == 0 and isinstance(value, commands.Connection.CloseOk)
                for channel, value in frames
            )
            self.assertTrue(closed or closedByClient)
            self.assertTrue(hostile.transport.disconnecting)
            self.assertStillServes(factory)
        finally:
            self.finishExample(hostile)

    @fuzzed(20)
    @given(
        shape=st.sampled_from(["hugeBodySize", "exactBodySize", "oversizedFrames", "manyBodies"]),
        frameSize=st.integers(1024, FRAME_MAX - 8),
        readSize=st.sampled_from([512, 4096, 65536]),
    )
    def test_bufferedMemoryBounded(self, shape: str, frameSize: int, readSize: int) -> None:
        """
        A client that sends several megabytes in the shapes that could make
        a server buffer without bound (content whose header declares a huge
        or exact body size and then more body, frames declaring more than
        C{frame_max}, many small bodies) leaves the server holding at most
        one frame and one message for it (plus L{BUFFER_SLACK}), traced with
        L{tracemalloc}; what the server wrote to the transport is not
        counted.
        """
        factory = self.makeBroker()
        hostile = self.hostileClient(factory)
        total = 2 * (FRAME_MAX + MAX_MESSAGE + BUFFER_SLACK)
        body = b"\x00" * frameSize
        if shape == "hugeBodySize":
            start = tp.encode(1, commands.Basic.Publish(exchange="", routing_key="q"))
            start += frame(2, 1, header(2**63))
            unit = frame(3, 1, body)
        elif shape == "exactBodySize":
            start = tp.encode(1, commands.Basic.Publish(exchange="", routing_key="q"))
            start += frame(2, 1, header(MAX_MESSAGE))
            unit = frame(3, 1, body)
        elif shape == "oversizedFrames":
            start = b""
            unit = struct.pack(">BHI", 3, 1, FRAME_MAX + 1) + body
        else:
            start = b""
            unit = tp.publishBytes(1, "", "nowhere", b"x" * 100, chunk=10)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            hostile.send(start)
            sent = len(start)
            chunk = (unit * max(1, 65536 // len(unit)))[: max(readSize, len(unit))]
            while sent < total and not hostile.transport.disconnecting:
                for offset in range(0, len(chunk), readSize):
                    hostile.send(chunk[offset : offset + readSize])
                sent += len(chunk)
            retained = tracemalloc.get_traced_memory()[0] - before - len(
                hostile.transport.value()
            )
        finally:
            tracemalloc.stop()
        self.assertNoTraceback()
        self.assertSpecAnswers(hostile.transport.value())
        self.assertLess(retained, FRAME_MAX + MAX_MESSAGE + BUFFER_SLACK, (shape, sent))
        self.assertStillServes(factory)
        self.finishExample(hostile)

    def test_sameVirtualHostAfterward(self) -> None:
        """
        The same virtual host is shared by every connection of a factory:
        a hostile client that declared queues and exchanges and then broke
        its stream leaves a good client able to publish and consume (the
        same check as in every example, here once with named steps).
        """
        factory = self.makeBroker()
        hostile = self.hostileClient(factory)
        hostile.sendFrames(
            1,
            commands.Queue.Declare(queue="fuzz"),
            commands.Exchange.Declare(exchange="fuzz-t", exchange_type="topic"),
            commands.Basic.Consume(queue="fuzz", consumer_tag="c"),
        )
        hostile.send(tp.publishBytes(1, "", "fuzz", b"hostile"))
        hostile.send(frame(1, 1, b"\x00\x3c\x00\x28")[:-1] + b"\x00")
        closed, _ = self.assertSpecAnswers(hostile.transport.value())
        self.assertTrue(closed)
        self.assertStillServes(factory)
        self.finishExample(hostile)

