"""
Bad input over a real socket: garbage, truncated, oversized and
out-of-order frames from one connection, while another client publishes
with publisher confirms and consumes, and loses nothing.

The bad connection is a raw socket (after a correct handshake for the
out-of-order cases). Each test checks the broker's answer: the 0-9-1
protocol header for a wrong header, connection.close with the reply code
the specification gives (501 FRAME_ERROR, 502 SYNTAX_ERROR, 503
COMMAND_INVALID, 504 CHANNEL_ERROR, 505 UNEXPECTED_FRAME), or a quiet
close for a peer that went away mid-frame. The good client runs in a
thread with its own pika connection for the whole test; at the end every
message the broker confirmed to it must have reached its consumer, once
and in order.
"""

from __future__ import annotations

import random
import struct
import threading
import time
from typing import Any

import pika
from pamqp import commands
from pika.adapters.blocking_connection import BlockingConnection

from qha.test.integration.brokerprocess import (
    PROTOCOL_HEADER,
    BrokerTestCase,
    RawConnection,
    methodFrame,
    rawFrame,
)

GOOD_CLIENT_TIMEOUT = 15.0
"""
The most seconds the good client may take to finish after it is told to
stop (it then drains what is still on its way).
"""


def contentHeader(bodySize: int, classId: int = 60, flags: int = 0) -> bytes:
    """
    A content header frame payload: class, weight, body size, property
    flags, and no properties.
    """
    return struct.pack(">HHQH", classId, 0, bodySize, flags)


def publishFrames(channel: int, routingKey: str, body: bytes) -> bytes:
    """
    The three frames of a correct basic.publish to the default exchange.
    """
    return (
        methodFrame(channel, commands.Basic.Publish(exchange="", routing_key=routingKey))
        + rawFrame(2, channel, contentHeader(len(body)))
        + rawFrame(3, channel, body)
    )


class GoodClient(threading.Thread):
    """
    A well-behaved client in a thread: one pika connection, one channel
    publishing with confirms to a queue, another consuming it with acks.

    @ivar confirmed: the bodies the broker confirmed, in order.
    @ivar received: the bodies the consumer got, in order.
    @ivar error: what went wrong in the thread, if anything.
    """

    def __init__(self, parameters: pika.ConnectionParameters, queue: str) -> None:
        """
        @param parameters: how to connect.
        @param queue: the queue to publish to and consume from; it exists.
        """
        super().__init__(name=f"good client on {queue}", daemon=True)
        self.parameters = parameters
        self.queue = queue
        self.confirmed: list[bytes] = []
        self.received: list[bytes] = []
        self.redelivered = 0
        self.error: BaseException | None = None
        self.started = threading.Event()
        self.stopping = threading.Event()

    def run(self) -> None:
        """
        Publish and consume until told to stop, then wait (bounded) for
        every confirmed message to arrive.
        """
        try:
            self._run()
        except BaseException as error:
            self.error = error
        finally:
            self.started.set()

    def _run(self) -> None:
        """
        The work of L{run}; exceptions go to L{run}, which keeps them.
        """
        connection = BlockingConnection(self.parameters)
        try:
            publisher = connection.channel()
            publisher.confirm_delivery()
            consumer = connection.channel()
            consumer.basic_qos(prefetch_count=20)

            def onMessage(channel: Any, method: Any, properties: Any, body: bytes) -> None:
                self.received.append(body)
                if method.redelivered:
                    self.redelivered += 1
                channel.basic_ack(method.delivery_tag)

            consumer.basic_consume(self.queue, onMessage)
            number = 0
            while not self.stopping.is_set() or number < 20:
                body = b"good %d" % number
                publisher.basic_publish(
                    "", self.queue, body, pika.BasicProperties(delivery_mode=2),
                    mandatory=True,
                )
                self.confirmed.append(body)
                number += 1
                if number == 5:
                    self.started.set()
                connection.process_data_events(time_limit=0)
            deadline = time.monotonic() + GOOD_CLIENT_TIMEOUT
            while len(self.received) < len(self.confirmed) and time.monotonic() < deadline:
                connection.process_data_events(time_limit=0.1)
        finally:
            if connection.is_open:
                connection.close()


class BadInputTestCase(BrokerTestCase):
    """
    Runs a L{GoodClient} around every test and checks at the end that it
    lost nothing and that the broker is still running.
    """

    def setUp(self) -> None:
        """
        Start the good client and wait until it has had messages
        confirmed, so that the bad input arrives while it works.
        """
        super().setUp()
        queue = self.uniqueName("good")
        channel = self.channel()
        channel.queue_declare(queue, auto_delete=True)
        self.good = GoodClient(self.parameters(), queue)
        self.good.start()
        self.addCleanup(self._stopGoodClient)
        if not self.good.started.wait(timeout=10):
            self.fail("the good client did not get going")
        if self.good.error is not None:
            raise self.good.error

    def _stopGoodClient(self) -> None:
        """
        Make sure the good client's thread ends, even if a test failed.
        """
        self.good.stopping.set()
        self.good.join(timeout=GOOD_CLIENT_TIMEOUT + 5)

    def assertNothingLost(self) -> None:
        """
        Stop the good client and check that every confirmed message reached
        its consumer exactly once, in order, and that the broker lives.
        """
        self.good.stopping.set()
        self.good.join(timeout=GOOD_CLIENT_TIMEOUT + 5)
        self.assertFalse(self.good.is_alive(), "the good client did not finish")
        if self.good.error is not None:
            raise self.good.error
        self.assertGreaterEqual(len(self.good.confirmed), 20)
        self.assertEqual(self.good.received, self.good.confirmed)
        self.assertEqual(self.good.redelivered, 0)
        self.assertTrue(self.broker.running(), self.broker.output())

    def bad(self, handshake: bool = True, channel: int = 1) -> RawConnection:
        """
        A raw connection, after a correct handshake and with C{channel}
        open unless told otherwise.
        """
        raw = self.raw()
        if handshake:
            raw.handshake()
            if channel:
                raw.openChannel(channel)
        return raw

    def assertClosedWith(self, raw: RawConnection, code: int, *words: str) -> Any:
        """
        The broker answers C{raw} with connection.close C{code} whose text
        holds C{words}, then closes the socket.
        """
        close = raw.expectConnectionClose()
        self.assertEqual(close.reply_code, code, close.reply_text)
        for word in words:
            self.assertIn(word, close.reply_text)
        return close


class ProtocolHeaderTests(BadInputTestCase):
    """
    Wrong protocol headers: the broker answers with the 0-9-1 header and
    closes, as the specification says.
    """

    def assertHeaderRefused(self, data: bytes) -> None:
        """
        C{data} as the first bytes brings back the 0-9-1 header, then the
        end of the connection.
        """
        raw = self.bad(handshake=False)
        raw.send(data)
        self.assertEqual(raw.expectEndOfFile(), PROTOCOL_HEADER)
        self.assertNothingLost()

    def test_otherVersion(self) -> None:
        """
        An AMQP 0-10 header.
        """
        self.assertHeaderRefused(b"AMQP\x01\x01\x00\x0a")

    def test_amqp10(self) -> None:
        """
        An AMQP 1.0 header.
        """
        self.assertHeaderRefused(b"AMQP\x00\x01\x00\x00")

    def test_http(self) -> None:
        """
        An HTTP request.
        """
        self.assertHeaderRefused(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")

    def test_garbage(self) -> None:
        """
        Random bytes instead of a header.
        """
        self.assertHeaderRefused(b"\x00" + random.Random(1).randbytes(4095))

    def test_shortHeaderThenClose(self) -> None:
        """
        Half a header and a closed socket: the broker just forgets the
        connection.
        """
        raw = self.bad(handshake=False)
        raw.send(PROTOCOL_HEADER[:5])
        raw.socket.shutdown(1)
        self.assertEqual(raw.expectEndOfFile(), b"")
        self.assertNothingLost()


class GarbageTests(BadInputTestCase):
    """
    Garbage after a correct handshake.
    """

    def test_hugeFrameLength(self) -> None:
        """
        Bytes that read as a frame far larger than frame_max: 501 at once,
        without the broker waiting for (or buffering) the announced size.
        """
        raw = self.bad()
        raw.send(b"\xff" * 64)
        self.assertClosedWith(raw, 501, "frame_max")
        self.assertNothingLost()

    def test_unknownFrameType(self) -> None:
        """
        A well-framed frame of a type AMQP does not have: 501.
        """
        raw = self.bad()
        raw.send(rawFrame(9, 1, b"what is this"))
        self.assertClosedWith(raw, 501, "frame type 9")
        self.assertNothingLost()

    def test_randomBytes(self) -> None:
        """
        Random bytes after the handshake, from several seeds: the broker
        closes each connection with a connection error (or drops it) and
        serves the good client throughout.
        """
        for seed in range(8):
            raw = self.bad()
            raw.send(random.Random(seed).randbytes(2048))
            try:
                close = raw.expectConnectionClose()
            except EOFError:
                continue
            self.assertIn(close.reply_code, (501, 502, 503, 504, 505, 540), close.reply_text)
        self.assertNothingLost()

    def test_randomMethodArguments(self) -> None:
        """
        Well-framed method frames of every kind with random argument bytes
        (seeded, so a failure repeats), each followed by connection.close
        from the client: the broker answers every one with close-ok or a
        connection error of its own, never 541 INTERNAL_ERROR (which would
        mean an exception it did not expect), and never hangs.
        """
        indexes = sorted(commands.INDEX_MAPPING)
        for seed in range(120):
            rnd = random.Random(seed)
            index = rnd.choice(indexes)
            payload = struct.pack(">I", index) + rnd.randbytes(rnd.randrange(0, 40))
            raw = self.bad()
            raw.send(
                rawFrame(1, rnd.choice([0, 1, 1, 2]), payload)
                + methodFrame(0, commands.Connection.Close(200, "bye", 0, 0))
            )
            while True:
                _, method = raw.readMethod()
                if isinstance(method, (commands.Connection.Close, commands.Connection.CloseOk)):
                    break
            what = f"seed {seed}: method {index >> 16}.{index & 0xFFFF}"
            if isinstance(method, commands.Connection.Close):
                code = method.reply_code or 0
                self.assertNotEqual(code, 541, f"{what}: {method.reply_text}")
                self.assertGreaterEqual(code, 500, f"{what}: {method.reply_text}")
            raw.close()
        self.assertNothingLost()

    def test_badFrameEnd(self) -> None:
        """
        A frame whose length is wrong, so its last octet is not 0xCE: 501.
        """
        raw = self.bad()
        raw.send(rawFrame(1, 1, struct.pack(">HH", 50, 10) + b"\x00\x00", end=b"\x00"))
        self.assertClosedWith(raw, 501, "0xCE")
        self.assertNothingLost()

    def test_unknownMethod(self) -> None:
        """
        A method that AMQP 0-9-1 does not define: 540 NOT_IMPLEMENTED.
        """
        raw = self.bad()
        raw.send(rawFrame(1, 1, struct.pack(">HH", 60, 999)))
        self.assertClosedWith(raw, 540)
        self.assertNothingLost()

    def test_malformedPropertiesTableTooLong(self) -> None:
        """
        A content header whose headers table claims more bytes than the
        frame has: 502 SYNTAX_ERROR naming the properties, and the message
        reaches no queue, so no other client is handed bytes its library
        cannot decode.
        """
        queue = self.uniqueName("malformed")
        channel = self.channel()
        channel.queue_declare(queue)
        self.addCleanup(lambda: self.channel().queue_delete(queue))
        raw = self.bad()
        header = contentHeader(1, flags=0x2000) + b"\x00\x00\x10\x00abc"
        raw.send(
            methodFrame(1, commands.Basic.Publish(routing_key=queue))
            + rawFrame(2, 1, header)
            + rawFrame(3, 1, b"x")
        )
        self.assertClosedWith(raw, 502, "properties", "headers table")
        self.assertEqual(channel.queue_declare(queue, passive=True).method.message_count, 0)
        self.assertNothingLost()

    def test_malformedPropertiesGarbageTable(self) -> None:
        """
        A headers table of the right length holding an unknown field type:
        502 SYNTAX_ERROR, and nothing is enqueued.
        """
        queue = self.uniqueName("garbage")
        channel = self.channel()
        channel.queue_declare(queue)
        self.addCleanup(lambda: self.channel().queue_delete(queue))
        raw = self.bad()
        garbage = b"\x01Z" + b"q\x00\x00"
        header = contentHeader(4, flags=0x2000) + struct.pack(">I", len(garbage)) + garbage
        raw.send(
            methodFrame(1, commands.Basic.Publish(routing_key=queue))
            + rawFrame(2, 1, header)
            + rawFrame(3, 1, b"body")
        )
        self.assertClosedWith(raw, 502, "properties")
        self.assertEqual(channel.queue_declare(queue, passive=True).method.message_count, 0)
        self.assertNothingLost()


class TruncatedTests(BadInputTestCase):
    """
    Frames cut short.
    """

    def test_truncatedMethodArguments(self) -> None:
        """
        A correctly framed queue.declare whose arguments stop half way:
        502 SYNTAX_ERROR naming the method.
        """
        raw = self.bad()
        raw.send(rawFrame(1, 1, struct.pack(">HH", 50, 10) + b"\x00\x00\x05ab"))
        self.assertClosedWith(raw, 502, "Queue.Declare")
        self.assertNothingLost()

    def test_methodFrameTooShort(self) -> None:
        """
        A method frame too short to hold a method id: 501.
        """
        raw = self.bad()
        raw.send(rawFrame(1, 1, b"\x00\x32"))
        self.assertClosedWith(raw, 501)
        self.assertNothingLost()

    def test_contentHeaderTooShort(self) -> None:
        """
        A content header frame too short to hold a body size: 505.
        """
        raw = self.bad()
        raw.send(
            methodFrame(1, commands.Basic.Publish(routing_key="x"))
            + rawFrame(2, 1, b"\x00\x3c\x00")
        )
        self.assertClosedWith(raw, 505)
        self.assertNothingLost()

    def test_peerGoesAwayMidFrame(self) -> None:
        """
        Half a frame and then the end of the connection: the broker drops
        the connection quietly, and the half-published message is not
        delivered anywhere.
        """
        raw = self.bad()
        raw.sendMethod(1, commands.Queue.Declare(queue=self.uniqueName("half"), durable=False))
        _, declareOk = raw.readMethod()
        frames = publishFrames(1, declareOk.queue, b"never whole")
        raw.send(frames[:-6])
        raw.socket.shutdown(1)
        self.assertEqual(raw.expectEndOfFile(), b"")
        channel = self.channel()
        self.assertEqual(
            channel.queue_declare(declareOk.queue, passive=True).method.message_count, 0
        )
        channel.queue_delete(declareOk.queue)
        self.assertNothingLost()

    def test_peerGoesAwayMidMessage(self) -> None:
        """
        A publish whose body frames stop before the announced size, then the
        end of the connection: nothing is enqueued.
        """
        raw = self.bad()
        queue = self.uniqueName("half")
        raw.sendMethod(1, commands.Queue.Declare(queue=queue))
        raw.readMethod()
        raw.send(
            methodFrame(1, commands.Basic.Publish(routing_key=queue))
            + rawFrame(2, 1, contentHeader(100))
            + rawFrame(3, 1, b"only part of it")
        )
        raw.socket.shutdown(1)
        raw.expectEndOfFile()
        channel = self.channel()
        self.assertEqual(channel.queue_declare(queue, passive=True).method.message_count, 0)
        channel.queue_delete(queue)
        self.assertNothingLost()

    def test_handshakeCutShort(self) -> None:
        """
        A connection.start-ok cut in the middle, then the end of the
        connection.
        """
        raw = self.bad(handshake=False)
        raw.send(PROTOCOL_HEADER)
        raw.readMethod()
        startOk = methodFrame(
            0, commands.Connection.StartOk(mechanism="PLAIN", response="\0guest\0guest")
        )
        raw.send(startOk[: len(startOk) // 2])
        raw.socket.shutdown(1)
        self.assertEqual(raw.expectEndOfFile(), b"")
        self.assertNothingLost()


class OversizedTests(BadInputTestCase):
    """
    Frames and bodies larger than allowed.
    """

    def test_frameLargerThanNegotiated(self) -> None:
        """
        A body frame larger than the frame_max the client itself
        negotiated (4096): 501.
        """
        raw = self.raw()
        raw.handshake(frameMax=4096)
        raw.openChannel(1)
        raw.send(
            methodFrame(1, commands.Basic.Publish(routing_key="x"))
            + rawFrame(2, 1, contentHeader(8000))
            + rawFrame(3, 1, b"x" * 8000)
        )
        self.assertClosedWith(raw, 501)
        self.assertNothingLost()

    def test_frameLargerThanBrokerMaximum(self) -> None:
        """
        A frame header announcing 2 GiB: 501 straight away.
        """
        raw = self.bad()
        raw.send(struct.pack(">BHI", 3, 1, 0x7FFFFFFF) + b"x" * 100)
        self.assertClosedWith(raw, 501, "frame_max")
        self.assertNothingLost()

    def test_bodyLongerThanHeaderSays(self) -> None:
        """
        Body frames that add up to more than the content header announced:
        505.
        """
        raw = self.bad()
        raw.send(
            methodFrame(1, commands.Basic.Publish(routing_key="x"))
            + rawFrame(2, 1, contentHeader(3))
            + rawFrame(3, 1, b"too long")
        )
        self.assertClosedWith(raw, 505)
        self.assertNothingLost()

    def test_tuneOkFrameMaxTooSmall(self) -> None:
        """
        A tune-ok with a frame_max below the 4096 minimum: 530.
        """
        raw = self.raw()
        raw.handshake(frameMax=1024, expectOpenOk=False)
        self.assertClosedWith(raw, 530, "frame_max")
        self.assertNothingLost()


class OutOfOrderTests(BadInputTestCase):
    """
    Well-formed frames in an order the protocol forbids.
    """

    def test_headerWithoutPublish(self) -> None:
        """
        A content header with no basic.publish before it: 505.
        """
        raw = self.bad()
        raw.send(rawFrame(2, 1, contentHeader(5)))
        self.assertClosedWith(raw, 505)
        self.assertNothingLost()

    def test_bodyWithoutHeader(self) -> None:
        """
        A content body with no content header before it: 505.
        """
        raw = self.bad()
        raw.send(rawFrame(3, 1, b"orphan"))
        self.assertClosedWith(raw, 505)
        self.assertNothingLost()

    def test_bodyRightAfterPublish(self) -> None:
        """
        basic.publish followed by a body without a header: 505.
        """
        raw = self.bad()
        raw.send(
            methodFrame(1, commands.Basic.Publish(routing_key="x"))
            + rawFrame(3, 1, b"no header")
        )
        self.assertClosedWith(raw, 505)
        self.assertNothingLost()

    def test_methodWhileContentExpected(self) -> None:
        """
        A method where the content of a publish should be: 505.
        """
        raw = self.bad()
        raw.send(
            methodFrame(1, commands.Basic.Publish(routing_key="x"))
            + methodFrame(1, commands.Queue.Declare(queue="", exclusive=True))
        )
        self.assertClosedWith(raw, 505)
        self.assertNothingLost()

    def test_publishWhileContentExpected(self) -> None:
        """
        A second basic.publish before the first one's content: 505.
        """
        raw = self.bad()
        publish = methodFrame(1, commands.Basic.Publish(routing_key="x"))
        raw.send(publish + rawFrame(2, 1, contentHeader(4)) + publish)
        self.assertClosedWith(raw, 505)
        self.assertNothingLost()

    def test_headerForAnotherClass(self) -> None:
        """
        A content header of class queue (50) after basic.publish: 505.
        """
        raw = self.bad()
        raw.send(
            methodFrame(1, commands.Basic.Publish(routing_key="x"))
            + rawFrame(2, 1, contentHeader(1, classId=50))
        )
        self.assertClosedWith(raw, 505, "class 50")
        self.assertNothingLost()

    def test_methodOnUnopenedChannel(self) -> None:
        """
        A method on a channel that was never opened: 504.
        """
        raw = self.bad()
        raw.sendMethod(5, commands.Basic.Qos(prefetch_count=1))
        self.assertClosedWith(raw, 504)
        self.assertNothingLost()

    def test_channelOpenTwice(self) -> None:
        """
        channel.open on an open channel: 504.
        """
        raw = self.bad()
        raw.sendMethod(1, commands.Channel.Open())
        self.assertClosedWith(raw, 504)
        self.assertNothingLost()

    def test_connectionOpenTwice(self) -> None:
        """
        connection.open on an open connection: 503.
        """
        raw = self.bad()
        raw.sendMethod(0, commands.Connection.Open("/"))
        self.assertClosedWith(raw, 503)
        self.assertNothingLost()

    def test_heartbeatOnChannel(self) -> None:
        """
        A heartbeat frame on a channel other than 0: 501, as the
        specification says for an invalid heartbeat.
        """
        raw = self.bad()
        raw.send(rawFrame(8, 1, b""))
        self.assertClosedWith(raw, 501, "heartbeat")
        self.assertNothingLost()

    def test_openBeforeStartOk(self) -> None:
        """
        connection.open before the client logged in: refused, and nothing
        is served to the unauthenticated peer.
        """
        raw = self.bad(handshake=False)
        raw.send(PROTOCOL_HEADER)
        raw.readMethod()
        raw.sendMethod(0, commands.Connection.Open("/"))
        raw.sendMethod(1, commands.Channel.Open())
        close = raw.expectConnectionClose()
        self.assertEqual(close.reply_code, 503, close.reply_text)
        self.assertNothingLost()

    def test_channelBeforeOpen(self) -> None:
        """
        channel.open after tune-ok but before connection.open: 504.
        """
        raw = self.bad(handshake=False)
        raw.send(PROTOCOL_HEADER)
        raw.readMethod()
        raw.sendMethod(
            0, commands.Connection.StartOk(mechanism="PLAIN", response="\0guest\0guest")
        )
        _, tune = raw.readMethod()
        raw.sendMethod(0, commands.Connection.TuneOk(tune.channel_max, tune.frame_max, 0))
        raw.sendMethod(1, commands.Channel.Open())
        self.assertClosedWith(raw, 504)
        self.assertNothingLost()

    def test_closeOkWithoutClose(self) -> None:
        """
        connection.close-ok that answers nothing: 503.
        """
        raw = self.bad()
        raw.sendMethod(0, commands.Connection.CloseOk())
        self.assertClosedWith(raw, 503)
        self.assertNothingLost()


class ManyBadConnectionsTests(BadInputTestCase):
    """
    Many bad connections at once.
    """

    def test_allAtOnce(self) -> None:
        """
        Forty connections, each with one kind of bad input, all sent before
        any answer is read: every one is closed, the good client loses
        nothing.
        """
        kinds = [
            (False, b"HTTP/1.1 200 OK\r\n\r\n", None),
            (True, b"\xff" * 32, 501),
            (True, rawFrame(3, 1, b"orphan"), 505),
            (True, methodFrame(6, commands.Channel.Flow(active=True)), 504),
            (True, rawFrame(1, 1, struct.pack(">HH", 50, 10) + b"\x00"), 502),
        ]
        connections = []
        for index in range(40):
            handshake, data, code = kinds[index % len(kinds)]
            raw = self.bad(handshake=handshake)
            raw.send(data)
            connections.append((raw, code))
        for raw, code in connections:
            if code is None:
                self.assertEqual(raw.expectEndOfFile(), PROTOCOL_HEADER)
            else:
                self.assertEqual(raw.expectConnectionClose().reply_code, code)
        self.assertNothingLost()
