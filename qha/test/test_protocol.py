"""
Tests for L{qha.amqp.protocol} and L{qha.amqp.channel}: the AMQP 0-9-1
server over a L{StringTransport}, with time on a L{Clock}.

The test client (L{qha.test.support.Client}) encodes its frames with pamqp and decodes the server's output
with pamqp, so the server is checked against an independent implementation
of the wire format. No sockets, no reactor, no sleeps.
"""

from __future__ import annotations

import random
import struct
from typing import Any, Sequence

from pamqp import commands
from pamqp.body import ContentBody
from pamqp.encode import field_table
from pamqp.header import ContentHeader
from pamqp.heartbeat import Heartbeat
from twisted.internet.address import IPv4Address

from qha.amqp import wire
from qha.amqp.protocol import BrokerFactory
from qha.amqp.users import FailedLogins, ScryptHash, SynchronousVerifier, UserDatabase
from qha.broker.message import Message
from qha.broker.vhost import Resources, VirtualHost
from qha.testing import FakeConfirmHolder, RecordingVerifier
from qha.test.support import (
    CHANNEL_CLOSE,
    CONNECTION_CLOSE,
    LOOPBACK,
    REMOTE,
    Client,
    ProtocolTestCase,
    contents,
    decodeFrames,
    encode,
    fastUsers,
    names,
    publishBytes,
    rawFrame,
)


class HandshakeTests(ProtocolTestCase):
    """
    Tests for the protocol header and the connection handshake.
    """

    def test_badProtocolHeader(self) -> None:
        """
        A client that sends another protocol header gets the 0-9-1 header
        back and is disconnected.
        """
        for header in [
            b"GET / HTTP/1.1\r\n\r\n",
            b"AMQP\x01\x01\x08\x00",
            b"AMQP\x00\x00\x09\x00",
        ]:
            client = self.connect()
            client.send(header)
            self.assertEqual(client.transport.value(), wire.PROTOCOL_HEADER)
            self.assertTrue(client.transport.disconnecting)
            client.disconnect()

    def test_shortBadHeader(self) -> None:
        """
        A few bytes that cannot start the header are refused at once.
        """
        client = self.connect()
        client.send(b"XY")
        self.assertEqual(client.transport.value(), wire.PROTOCOL_HEADER)
        self.assertTrue(client.transport.disconnecting)

    def test_headerInPieces(self) -> None:
        """
        The protocol header may arrive a byte at a time; connection.start is
        sent once it is whole.
        """
        client = self.connect()
        for byte in wire.PROTOCOL_HEADER[:-1]:
            client.send(bytes((byte,)))
            self.assertEqual(client.transport.value(), b"")
        client.send(wire.PROTOCOL_HEADER[-1:])
        self.assertEqual(names(client.received()), [(0, "Connection.Start")])

    def test_plain(self) -> None:
        """
        The whole handshake with PLAIN and the built-in C{guest} user:
        connection.start offers both mechanisms and the capabilities,
        connection.tune the server's limits, and connection.open is answered
        with open-ok.
        """
        self.factory = BrokerFactory(self.vhost, UserDatabase.default(), self.clock)
        client = self.connect()
        client.send(wire.PROTOCOL_HEADER)
        [(channel, start)] = client.received()
        self.assertEqual(channel, 0)
        self.assertIsInstance(start, commands.Connection.Start)
        self.assertEqual((start.version_major, start.version_minor), (0, 9))
        self.assertEqual(start.mechanisms, "PLAIN AMQPLAIN")
        self.assertEqual(start.server_properties["product"], "qha")
        capabilities = start.server_properties["capabilities"]
        for name in [
            "publisher_confirms",
            "basic.nack",
            "consumer_cancel_notify",
            "exchange_exchange_bindings",
            "connection.blocked",
            "authentication_failure_close",
        ]:
            self.assertTrue(capabilities[name], name)
        [(_, tune)] = client.call(
            0,
            commands.Connection.StartOk(
                client_properties={"product": "test"},
                mechanism="PLAIN",
                response="\0guest\0guest",
            ),
        )
        self.assertIsInstance(tune, commands.Connection.Tune)
        self.assertEqual(
            (tune.channel_max, tune.frame_max, tune.heartbeat), (2047, 131072, 60)
        )
        self.assertEqual(client.call(0, commands.Connection.TuneOk(2047, 131072, 60)), [])
        self.assertEqual(
            names(client.call(0, commands.Connection.Open(virtual_host="/"))),
            [(0, "Connection.OpenOk")],
        )
        self.assertEqual(client.server.user, "guest")
        self.assertEqual(client.server.clientProperties, {"product": "test"})
        self.assertIn(client.server, self.factory.connections)
        client.disconnect()
        self.assertNotIn(client.server, self.factory.connections)

    def test_amqplain(self) -> None:
        """
        The handshake with AMQPLAIN, whose response is a field table without
        its length.
        """
        response = field_table({"LOGIN": "bob", "PASSWORD": "secret"})[4:]
        client = self.connect()
        frames = client.handshake(mechanism="AMQPLAIN", response=response.decode("ascii"))
        self.assertEqual(
            names(frames),
            [(0, "Connection.Start"), (0, "Connection.Tune"), (0, "Connection.OpenOk")],
        )
        self.assertEqual(client.server.user, "bob")

    def test_badPassword(self) -> None:
        """
        A wrong password is answered with connection.close 403 and the
        connection is dropped; nothing is tuned.
        """
        client = self.connect()
        frames = client.handshake(response="\0bob\0wrong")
        self.assertEqual(names(frames)[:1], [(0, "Connection.Start")])
        close = self.assertConnectionClosed(client, frames, 403, dropped=True)
        self.assertIn("ACCESS_REFUSED", close.reply_text)
        self.assertNotIn("Connection.Tune", [name for _, name in names(frames)])
        self.assertIsNone(client.server.user)

    def test_unknownUserAndMechanism(self) -> None:
        """
        An unknown user or mechanism is refused like a wrong password.
        """
        attempts: list[dict[str, Any]] = [
            {"response": "\0nobody\0guest"},
            {"mechanism": "EXTERNAL", "response": ""},
            {"response": "garbage"},
        ]
        for kwargs in attempts:
            client = self.connect()
            frames = client.handshake(**kwargs)
            self.assertConnectionClosed(client, frames, 403, dropped=True)
            client.disconnect()

    def test_guestOnlyFromLoopback(self) -> None:
        """
        C{guest} may not log in from a non-loopback address.
        """
        client = self.connect(peer=REMOTE)
        frames = client.handshake()
        close = self.assertConnectionClosed(client, frames, 403, dropped=True)
        self.assertIn("loopback", close.reply_text)

    def test_unknownVirtualHost(self) -> None:
        """
        Opening a virtual host the broker does not have is refused with
        530 NOT_ALLOWED naming it.
        """
        client = self.connect()
        frames = client.handshake(vhost="/other")
        close = self.assertConnectionClosed(client, frames, 530, dropped=True)
        self.assertIn("'/other'", close.reply_text)

    def test_tune(self) -> None:
        """
        The client's smaller frame_max and channel_max and its heartbeat are
        used.
        """
        client = self.openClient(channels=(), frameMax=8192, channelMax=10, heartbeat=0)
        server = client.server
        self.assertEqual((server.frameMax, server.channelMax, server.heartbeat), (8192, 10, 0))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_tuneZeroMeansServerLimits(self) -> None:
        """
        A frame_max or channel_max of 0 in tune-ok means the server's.
        """
        client = self.openClient(channels=(), frameMax=0, channelMax=0)
        self.assertEqual((client.server.frameMax, client.server.channelMax), (131072, 2047))

    def test_tuneOutOfRange(self) -> None:
        """
        A frame_max below 4096 or above the server's, or a channel_max above
        the server's, is refused with 530.
        """
        attempts: list[dict[str, Any]] = [
            {"frameMax": 1024},
            {"frameMax": 131073},
            {"channelMax": 2048},
        ]
        for kwargs in attempts:
            client = self.connect()
            frames = client.handshake(**kwargs)
            self.assertConnectionClosed(client, frames, 530, dropped=True)
            client.disconnect()

    def test_handshakeTimeout(self) -> None:
        """
        A client that does not finish the handshake in time is dropped.
        """
        client = self.connect()
        client.send(wire.PROTOCOL_HEADER)
        self.clock.advance(self.factory.handshakeTimeout - 0.5)
        self.assertFalse(client.transport.disconnecting)
        self.clock.advance(0.5)
        self.assertTrue(client.transport.disconnecting)

    def test_handshakeFinishedInTime(self) -> None:
        """
        Once the connection is open the handshake timeout no longer applies.
        """
        client = self.connect()
        self.clock.advance(self.factory.handshakeTimeout - 1)
        client.handshake()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(100)
        self.assertFalse(client.transport.disconnecting)

    def test_clientClose(self) -> None:
        """
        connection.close from the client is answered with close-ok and the
        connection is dropped and cleaned up at once.
        """
        client = self.openClient(heartbeat=10)
        frames = client.call(0, CONNECTION_CLOSE)
        self.assertEqual(names(frames), [(0, "Connection.CloseOk")])
        self.assertTrue(client.transport.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        client.send(encode(1, commands.Queue.Declare(queue="after")))
        self.assertEqual(client.transport.value(), b"")
        self.assertNotIn("after", self.vhost.queues)

    def test_methodBeforeOpen(self) -> None:
        """
        A channel method before connection.open is a connection error.
        """
        client = self.connect()
        client.send(wire.PROTOCOL_HEADER)
        client.sendFrames(
            0, commands.Connection.StartOk(mechanism="PLAIN", response="\0guest\0guest")
        )
        frames = client.call(1, commands.Channel.Open())
        self.assertConnectionClosed(client, frames, 504, dropped=True)


class HeartbeatTests(ProtocolTestCase):
    """
    Tests for heartbeats: sent to the client, and a silent client dropped.
    """

    def test_sent(self) -> None:
        """
        With a heartbeat of 10 seconds the server sends one every 5.
        """
        client = self.openClient(channels=(), heartbeat=10)
        self.clock.advance(4.9)
        self.assertEqual(client.received(), [])
        self.clock.advance(0.1)
        self.assertEqual(client.transport.value(), wire.HEARTBEAT_FRAME)
        self.assertIsInstance(client.received()[0][1], Heartbeat)

    def test_silentPeerDropped(self) -> None:
        """
        A client silent for two heartbeat intervals is dropped.
        """
        client = self.openClient(channels=(), heartbeat=10)
        self.clock.pump([5, 5, 5])
        self.assertFalse(client.transport.disconnecting)
        self.clock.advance(5)
        self.assertTrue(client.transport.disconnecting)
        self.assertEqual(len(client.received()), 3)

    def test_chattyPeerKept(self) -> None:
        """
        A client that sends heartbeats (or anything else) is kept.
        """
        client = self.openClient(channels=(), heartbeat=10)
        for _ in range(20):
            self.clock.advance(5)
            client.sendFrames(0, Heartbeat())
        self.assertFalse(client.transport.disconnecting)
        self.assertEqual(
            {name for _, name in names(client.received())}, {"Heartbeat"}
        )

    def test_disabled(self) -> None:
        """
        A heartbeat of 0 disables them: no timer, no drop.
        """
        client = self.openClient(channels=(), heartbeat=0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(3600)
        self.assertFalse(client.transport.disconnecting)

    def test_lostConnectionDropsHeartbeatLoop(self) -> None:
        """
        A connection with heartbeats lets go of its heartbeat loop when it
        ends: the loop holds a bound method of the connection, and kept it
        would make the connection a reference cycle that only a full
        collection frees (12 unreachable objects a connection, that the
        collector policy of L{qha.collector} sets aside; measured by
        C{python -m qha_bench.cycles}).
        """
        client = self.openClient(channels=(1,), heartbeat=10)
        self.assertIsNotNone(client.server._heartbeatLoop)
        client.disconnect()
        self.assertIsNone(client.server._heartbeatLoop)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_heartbeatOnChannel(self) -> None:
        """
        A heartbeat frame on a channel other than 0 is a frame error.
        """
        client = self.openClient(channels=())
        client.send(rawFrame(8, 1, b""))
        frames = client.received()
        self.assertConnectionClosed(client, frames, 501, dropped=True)


class ChannelTests(ProtocolTestCase):
    """
    Tests for channel.open, close and flow, and channel numbering errors.
    """

    def test_openClose(self) -> None:
        """
        A channel opens and closes; closing it cancels its consumers.
        """
        client = self.openClient(channels=(1,))
        client.call(1, commands.Queue.Declare(queue="q"))
        client.call(1, commands.Basic.Consume(queue="q", consumer_tag="c"))
        frames = client.call(1, CHANNEL_CLOSE)
        self.assertEqual(names(frames), [(1, "Channel.CloseOk")])
        self.assertEqual(self.vhost.queue("q").consumerCount, 0)
        self.assertNotIn(1, client.server.channels)
        self.assertEqual(names(client.openChannel(1)), [(1, "Channel.OpenOk")])

    def test_channelMax(self) -> None:
        """
        Opening a channel above the negotiated channel_max is refused with
        530.
        """
        client = self.openClient(channels=(10,), channelMax=10)
        frames = client.openChannel(11)
        self.assertConnectionClosed(client, frames, 530)
        self.finishClose(client)

    def test_unopenedChannel(self) -> None:
        """
        A method on a channel that was not opened is refused with 504.
        """
        client = self.openClient(channels=(1,))
        frames = client.call(3, commands.Queue.Declare(queue="q"))
        self.assertConnectionClosed(client, frames, 504)
        self.finishClose(client)

    def test_secondOpen(self) -> None:
        """
        channel.open on a channel that is open is refused with 504.
        """
        client = self.openClient(channels=(1,))
        frames = client.openChannel(1)
        self.assertConnectionClosed(client, frames, 504)
        self.finishClose(client)

    def test_closeOkWithoutClose(self) -> None:
        """
        channel.close-ok on an open channel that was not being closed is a
        channel state error.
        """
        client = self.openClient(channels=(1,))
        frames = client.call(1, commands.Channel.CloseOk())
        self.assertConnectionClosed(client, frames, 504)
        self.finishClose(client)

    def test_flow(self) -> None:
        """
        channel.flow(active=false) stops deliveries on the channel until
        channel.flow(active=true).
        """
        client = self.openClient(channels=(1,))
        client.call(1, commands.Queue.Declare(queue="q"))
        client.call(1, commands.Basic.Consume(queue="q", consumer_tag="c", no_ack=True))
        [(_, flowOk)] = client.call(1, commands.Channel.Flow(active=False))
        self.assertIsInstance(flowOk, commands.Channel.FlowOk)
        self.assertFalse(flowOk.active)
        self.assertEqual(client.call(1, *self.publishFrames(b"held")), [])
        self.assertEqual(self.vhost.queue("q").messageCount, 1)
        frames = client.call(1, commands.Channel.Flow(active=True))
        self.assertEqual(names(frames)[0], (1, "Channel.FlowOk"))
        self.assertTrue(frames[0][1].active)
        self.assertEqual([body for _, body in contents(frames)], [b"held"])

    def publishFrames(self, body: bytes, queue: str = "q") -> list[Any]:
        """
        The frame objects of a publish of C{body} to C{queue} through the
        default exchange.
        """
        return [
            commands.Basic.Publish(exchange="", routing_key=queue),
            ContentHeader(0, len(body), commands.Basic.Properties()),
            ContentBody(body),
        ]

    def test_channelErrorClosesOnlyThatChannel(self) -> None:
        """
        A channel error closes its channel: the frames that follow on it
        (content included) are ignored until the client's close-ok, other
        channels keep working, and the channel can then be opened again.
        """
        client = self.openClient(channels=(1, 2))
        frames = client.call(1, commands.Queue.Declare(queue="missing", passive=True))
        close = self.assertChannelClosed(frames, 1, 404)
        self.assertIn("missing", close.reply_text)
        self.assertEqual((close.class_id, close.method_id), (50, 10))
        ignored = encode(
            1,
            commands.Queue.Declare(queue="ignored"),
            commands.Basic.Publish(exchange="", routing_key="q"),
            ContentHeader(0, 3, commands.Basic.Properties()),
            ContentBody(b"abc"),
            commands.Basic.Ack(delivery_tag=99),
        )
        client.send(ignored)
        self.assertEqual(client.received(), [])
        self.assertNotIn("ignored", self.vhost.queues)
        frames = client.call(2, commands.Queue.Declare(queue="q2"))
        self.assertEqual(names(frames), [(2, "Queue.DeclareOk")])
        self.assertEqual(client.call(1, commands.Channel.CloseOk()), [])
        self.assertEqual(names(client.openChannel(1)), [(1, "Channel.OpenOk")])
        self.assertEqual(
            names(client.call(1, commands.Queue.Declare(queue="q1"))),
            [(1, "Queue.DeclareOk")],
        )

    def test_closeWhileClosing(self) -> None:
        """
        A client's channel.close crossing the server's is answered with
        close-ok, and the channel is free again.
        """
        client = self.openClient(channels=(1,))
        client.call(1, commands.Queue.Declare(queue="missing", passive=True))
        frames = client.call(1, CHANNEL_CLOSE)
        self.assertEqual(names(frames), [(1, "Channel.CloseOk")])
        self.assertEqual(names(client.openChannel(1)), [(1, "Channel.OpenOk")])

    def test_publishToMissingExchange(self) -> None:
        """
        A publish to a missing exchange closes the channel with 404; its
        content frames are ignored and the connection stays open.
        """
        client = self.openClient(channels=(1,))
        client.send(publishBytes(1, "nothing", "k", b"body"))
        frames = client.received()
        close = self.assertChannelClosed(frames, 1, 404)
        self.assertEqual((close.class_id, close.method_id), (60, 40))
        self.assertFalse(client.transport.disconnecting)


class PublishTests(ProtocolTestCase):
    """
    Tests for publishing, consuming, acknowledging and publisher confirms.
    """

    def setUp(self) -> None:
        """
        A client with channel 1 open and queue C{q} declared.
        """
        super().setUp()
        self.client = self.openClient(channels=(1,))
        self.client.call(1, commands.Queue.Declare(queue="q"))

    def test_publishConsumeAck(self) -> None:
        """
        Published messages are delivered to a consumer with increasing
        delivery tags and their properties, and a multiple ack settles them.
        """
        client = self.client
        properties = commands.Basic.Properties(
            content_type="text/plain", headers={"h": "v"}, delivery_mode=2
        )
        client.send(
            publishBytes(1, "", "q", b"one", properties=properties)
            + publishBytes(1, "", "q", b"two")
        )
        self.assertEqual(client.received(), [])
        frames = client.call(1, commands.Basic.Consume(queue="q", consumer_tag="ctag"))
        self.assertEqual(names(frames)[0], (1, "Basic.ConsumeOk"))
        self.assertEqual(frames[0][1].consumer_tag, "ctag")
        delivered = contents(frames)
        self.assertEqual([body for _, body in delivered], [b"one", b"two"])
        first = delivered[0][0]
        self.assertEqual(
            (
                first.consumer_tag,
                first.delivery_tag,
                first.redelivered,
                first.exchange,
                first.routing_key,
            ),
            ("ctag", 1, False, "", "q"),
        )
        self.assertEqual(delivered[1][0].delivery_tag, 2)
        header = frames[2][1]
        self.assertIsInstance(header, ContentHeader)
        self.assertEqual(header.properties.content_type, "text/plain")
        self.assertEqual(header.properties.headers, {"h": "v"})
        queue = self.vhost.queue("q")
        self.assertEqual(queue.unacked, 2)
        self.assertEqual(client.call(1, commands.Basic.Ack(delivery_tag=2, multiple=True)), [])
        self.assertEqual((queue.unacked, queue.messageCount), (0, 0))
        self.assertEqual(self.vhost.resources.used, 0)

    def test_unknownDeliveryTag(self) -> None:
        """
        Acknowledging a tag never delivered closes the channel with 406.
        """
        frames = self.client.call(1, commands.Basic.Ack(delivery_tag=7))
        self.assertChannelClosed(frames, 1, 406)

    def test_confirmsBatched(self) -> None:
        """
        In confirm mode, the publishes of one read are confirmed by one
        basic.ack with multiple set; a lone publish by one without.
        """
        client = self.client
        self.assertEqual(
            names(client.call(1, commands.Confirm.Select())), [(1, "Confirm.SelectOk")]
        )
        client.send(b"".join(publishBytes(1, "", "q", b"%d" % i) for i in range(3)))
        [(channel, ack)] = client.received()
        self.assertIsInstance(ack, commands.Basic.Ack)
        self.assertEqual((channel, ack.delivery_tag, ack.multiple), (1, 3, True))
        client.send(publishBytes(1, "", "q", b"3"))
        [(_, ack)] = client.received()
        self.assertEqual((ack.delivery_tag, ack.multiple), (4, False))
        self.assertEqual(self.vhost.queue("q").messageCount, 4)

    def test_confirmUnroutable(self) -> None:
        """
        An unroutable publish is confirmed too (it was handled).
        """
        client = self.client
        client.call(1, commands.Confirm.Select())
        client.send(publishBytes(1, "amq.direct", "nowhere", b"lost"))
        [(_, ack)] = client.received()
        self.assertEqual((ack.delivery_tag, ack.multiple), (1, False))

    def test_mandatoryUnroutable(self) -> None:
        """
        A mandatory message no queue takes comes back in basic.return 312
        NO_ROUTE with its content, before its confirm.
        """
        client = self.client
        client.call(1, commands.Confirm.Select())
        properties = commands.Basic.Properties(message_id="m1")
        client.send(
            publishBytes(
                1, "amq.direct", "nowhere", b"back", mandatory=True, properties=properties
            )
        )
        frames = client.received()
        self.assertEqual(
            names(frames),
            [(1, "Basic.Return"), (1, "ContentHeader"), (1, "ContentBody"), (1, "Basic.Ack")],
        )
        returned = frames[0][1]
        self.assertEqual(
            (returned.reply_code, returned.reply_text, returned.exchange, returned.routing_key),
            (312, "NO_ROUTE", "amq.direct", "nowhere"),
        )
        self.assertEqual(frames[1][1].properties.message_id, "m1")
        self.assertEqual(frames[2][1].value, b"back")
        self.assertEqual(frames[3][1].delivery_tag, 1)

    def test_mandatoryRoutable(self) -> None:
        """
        A mandatory message that reaches a queue is not returned.
        """
        self.client.send(publishBytes(1, "", "q", b"kept", mandatory=True))
        self.assertEqual(self.client.received(), [])
        self.assertEqual(self.vhost.queue("q").messageCount, 1)

    def test_emptyBody(self) -> None:
        """
        A message with an empty body has a content header and no body frame,
        both ways.
        """
        client = self.client
        client.sendFrames(
            1,
            commands.Basic.Publish(exchange="", routing_key="q"),
            ContentHeader(0, 0, commands.Basic.Properties()),
        )
        frames = client.call(1, commands.Basic.Consume(queue="q", consumer_tag="c", no_ack=True))
        self.assertEqual(
            names(frames),
            [(1, "Basic.ConsumeOk"), (1, "Basic.Deliver"), (1, "ContentHeader")],
        )
        self.assertEqual(frames[2][1].body_size, 0)

    def test_contentInManyFrames(self) -> None:
        """
        A body sent in many body frames arrives whole, and is delivered in
        frames no larger than the negotiated frame_max allows.
        """
        client = self.openClient(channels=(1,), frameMax=4096)
        body = bytes(range(256)) * 40
        client.send(publishBytes(1, "", "q", body, chunk=100))
        frames = client.call(1, commands.Basic.Consume(queue="q", consumer_tag="c", no_ack=True))
        [(_, delivered)] = contents(frames)
        self.assertEqual(delivered, body)
        bodies = [value for _, value in frames if isinstance(value, ContentBody)]
        self.assertEqual(len(bodies), 3)
        self.assertTrue(all(len(b.value) <= 4096 - 8 for b in bodies))

    def test_basicGet(self) -> None:
        """
        basic.get returns the first message with the count left, or
        get-empty; an unacknowledged one goes back on channel close,
        redelivered.
        """
        client = self.client
        client.send(publishBytes(1, "", "q", b"a") + publishBytes(1, "", "q", b"b"))
        frames = client.call(1, commands.Basic.Get(queue="q"))
        [(getOk, body)] = contents(frames)
        self.assertEqual((getOk.delivery_tag, getOk.message_count, body), (1, 1, b"a"))
        client.call(1, commands.Basic.Get(queue="q", no_ack=True))
        self.assertEqual(
            names(client.call(1, commands.Basic.Get(queue="q"))), [(1, "Basic.GetEmpty")]
        )
        client.call(1, CHANNEL_CLOSE)
        client.openChannel(1)
        [(getOk, body)] = contents(client.call(1, commands.Basic.Get(queue="q")))
        self.assertEqual((getOk.redelivered, body), (True, b"a"))

    def test_rejectRequeue(self) -> None:
        """
        basic.reject with requeue gives the message back, redelivered.
        """
        client = self.client
        client.send(publishBytes(1, "", "q", b"a"))
        client.call(1, commands.Basic.Get(queue="q"))
        client.call(1, commands.Basic.Reject(delivery_tag=1, requeue=True))
        [(getOk, _)] = contents(client.call(1, commands.Basic.Get(queue="q")))
        self.assertTrue(getOk.redelivered)

    def test_roundRobinBetweenChannels(self) -> None:
        """
        Two consumers on different channels take messages in turn.
        """
        client = self.client
        client.openChannel(2)
        client.call(1, commands.Basic.Consume(queue="q", consumer_tag="a", no_ack=True))
        client.call(2, commands.Basic.Consume(queue="q", consumer_tag="b", no_ack=True))
        client.send(b"".join(publishBytes(1, "", "q", b"%d" % i) for i in range(4)))
        delivered = contents(client.received())
        self.assertEqual(
            [(d.consumer_tag, body) for d, body in delivered],
            [("a", b"0"), ("b", b"1"), ("a", b"2"), ("b", b"3")],
        )

    def test_prefetch(self) -> None:
        """
        basic.qos prefetch_count limits unacknowledged deliveries; an ack
        lets the next one through.
        """
        client = self.client
        client.call(1, commands.Basic.Qos(prefetch_count=2))
        client.call(1, commands.Basic.Consume(queue="q", consumer_tag="c"))
        client.send(b"".join(publishBytes(1, "", "q", b"%d" % i) for i in range(4)))
        self.assertEqual([body for _, body in contents(client.received())], [b"0", b"1"])
        frames = client.call(1, commands.Basic.Ack(delivery_tag=1))
        self.assertEqual([body for _, body in contents(frames)], [b"2"])

    def test_exclusiveQueueGoesWithConnection(self) -> None:
        """
        An exclusive queue is locked to its connection (405 for another) and
        deleted when the connection goes.
        """
        self.client.call(1, commands.Queue.Declare(queue="mine", exclusive=True))
        other = self.openClient(channels=(1,))
        frames = other.call(1, commands.Queue.Declare(queue="mine", passive=True))
        self.assertChannelClosed(frames, 1, 405)
        self.client.disconnect()
        self.assertNotIn("mine", self.vhost.queues)

    def test_queueDeletedCancelsConsumer(self) -> None:
        """
        When a queue is deleted, its consumers' clients that announced
        C{consumer_cancel_notify} get basic.cancel; the deleter gets
        delete-ok with the count of ready messages.
        """
        client = self.openClient(
            channels=(1, 2), capabilities={"consumer_cancel_notify": True}
        )
        client.call(1, commands.Queue.Declare(queue="d"))
        client.call(1, commands.Basic.Consume(queue="d", consumer_tag="c"))
        client.send(publishBytes(2, "", "d", b"held"))
        client.received()
        frames = client.call(2, commands.Queue.Delete(queue="d"))
        self.assertEqual(names(frames), [(1, "Basic.Cancel"), (2, "Queue.DeleteOk")])
        self.assertEqual(frames[0][1].consumer_tag, "c")
        self.assertEqual(frames[1][1].message_count, 0)
        self.assertEqual(client.server.channels[1].consumers, {})
        self.assertEqual(client.call(1, commands.Basic.Ack(delivery_tag=1)), [])

    def test_autoDeleteOnCancel(self) -> None:
        """
        An auto-delete queue goes when its last consumer cancels.
        """
        client = self.client
        client.call(1, commands.Queue.Declare(queue="ad", auto_delete=True))
        client.call(1, commands.Basic.Consume(queue="ad", consumer_tag="c"))
        frames = client.call(1, commands.Basic.Cancel(consumer_tag="c"))
        self.assertEqual(names(frames), [(1, "Basic.CancelOk")])
        self.assertNotIn("ad", self.vhost.queues)

    def test_serverNamedQueue(self) -> None:
        """
        queue.declare with an empty name creates an C{amq.gen-} queue, and
        an empty queue name later means that queue.
        """
        frames = self.client.call(1, commands.Queue.Declare(queue=""))
        [(_, declareOk)] = frames
        self.assertTrue(declareOk.queue.startswith("amq.gen-"))
        self.client.call(1, commands.Queue.Bind(queue="", exchange="amq.fanout"))
        self.client.send(publishBytes(1, "amq.fanout", "", b"x"))
        self.assertEqual(self.vhost.queue(declareOk.queue).messageCount, 1)

    def test_invalidReplicate(self) -> None:
        """
        An invalid C{qpid.replicate} is a channel error 406 that says which
        values are valid.
        """
        frames = self.client.call(
            1, commands.Queue.Declare(queue="r", arguments={"qpid.replicate": "most"})
        )
        close = self.assertChannelClosed(frames, 1, 406)
        self.assertIn("none, configuration, all", close.reply_text)


class ChunkingTests(ProtocolTestCase):
    """
    Tests that the server's answers do not depend on how its input is cut
    into reads.
    """

    def conversation(self) -> bytes:
        """
        A whole client session as one byte stream: handshake, channel,
        queue, consumer, three multi-frame publishes, an ack, a get,
        and the closes.
        """
        body = bytes(range(256)) * 8
        return b"".join(
            [
                wire.PROTOCOL_HEADER,
                encode(
                    0,
                    commands.Connection.StartOk(mechanism="PLAIN", response="\0guest\0guest"),
                    commands.Connection.TuneOk(channel_max=0, frame_max=4096, heartbeat=0),
                    commands.Connection.Open(virtual_host="/"),
                ),
                encode(
                    1,
                    commands.Channel.Open(),
                    commands.Queue.Declare(queue="q"),
                    commands.Basic.Qos(prefetch_count=2),
                    commands.Basic.Consume(queue="q", consumer_tag="c"),
                ),
                publishBytes(1, "", "q", body, chunk=300),
                publishBytes(1, "", "q", b"small"),
                publishBytes(1, "", "q", body[::-1], chunk=1000),
                encode(
                    1,
                    commands.Basic.Ack(delivery_tag=2, multiple=True),
                    commands.Basic.Get(queue="q"),
                    CHANNEL_CLOSE,
                ),
                encode(0, CONNECTION_CLOSE),
            ]
        )

    def feed(self, chunks: Sequence[int] | None) -> bytes:
        """
        Feed the conversation to a fresh broker in reads of the given
        sizes (repeated; L{None}: all at once); return all it wrote.
        """
        vhost = VirtualHost()
        factory = BrokerFactory(vhost, fastUsers(), self.clock)
        client = Client(factory)
        data = self.conversation()
        if chunks is None:
            client.send(data)
        else:
            position = 0
            index = 0
            while position < len(data):
                size = chunks[index % len(chunks)]
                client.send(data[position : position + size])
                position += size
                index += 1
        client.disconnect()
        return client.transport.value()

    def test_sameOutput(self) -> None:
        """
        All at once, one byte at a time, or in uneven reads: the server
        writes exactly the same bytes.
        """
        whole = self.feed(None)
        frames = decodeFrames(whole)
        self.assertEqual(
            [name for _, name in names(frames) if not name.startswith("Content")],
            [
                "Connection.Start",
                "Connection.Tune",
                "Connection.OpenOk",
                "Channel.OpenOk",
                "Queue.DeclareOk",
                "Basic.QosOk",
                "Basic.ConsumeOk",
                "Basic.Deliver",
                "Basic.Deliver",
                "Basic.Deliver",
                "Basic.GetEmpty",
                "Channel.CloseOk",
                "Connection.CloseOk",
            ],
        )
        body = bytes(range(256)) * 8
        self.assertEqual(
            [content for _, content in contents(frames)], [body, b"small", body[::-1]]
        )
        self.assertEqual(self.feed([1]), whole)
        randomSizes = random.Random(4).choices(range(1, 700), k=50)
        self.assertEqual(self.feed(randomSizes), whole)
        self.assertEqual(self.feed([7, 3, 8, 1]), whole)


class FrameErrorTests(ProtocolTestCase):
    """
    Tests for malformed and unexpected frames: each is a connection error
    with the code the specification gives it.
    """

    def setUp(self) -> None:
        """
        A client with channel 1 open.
        """
        super().setUp()
        self.client = self.openClient(channels=(1,))

    def test_oversizedFrame(self) -> None:
        """
        A frame larger than frame_max is a frame error (501); the socket is
        dropped at once since nothing after it can be trusted.
        """
        header = struct.pack(">BHI", 1, 1, self.factory.frameMax + 1)
        self.client.send(header + b"\x00")
        frames = self.client.received()
        self.assertConnectionClosed(self.client, frames, 501, dropped=True)

    def test_oversizedForNegotiatedFrameMax(self) -> None:
        """
        frame_max is the one negotiated: a client that asked for 4096 may
        not send larger frames.
        """
        client = self.openClient(channels=(1,), frameMax=4096)
        client.send(publishBytes(1, "", "q", b"x" * 5000))
        self.assertConnectionClosed(client, client.received(), 501, dropped=True)

    def test_badFrameEnd(self) -> None:
        """
        A frame that does not end with 0xCE is a frame error.
        """
        data = encode(1, commands.Queue.Declare(queue="q"))[:-1] + b"\x00"
        self.client.send(data)
        self.assertConnectionClosed(self.client, self.client.received(), 501, dropped=True)
        self.assertNotIn("q", self.vhost.queues)

    def test_unknownFrameType(self) -> None:
        """
        A frame of an unknown type is a frame error.
        """
        self.client.send(rawFrame(9, 1, b"abc"))
        self.assertConnectionClosed(self.client, self.client.received(), 501, dropped=True)

    def test_undecodableArguments(self) -> None:
        """
        A method whose arguments cannot be decoded is a syntax error (502);
        the server waits for close-ok.
        """
        self.client.send(rawFrame(1, 1, struct.pack(">HH", 50, 10) + b"\x00"))
        close = self.assertConnectionClosed(self.client, self.client.received(), 502)
        self.assertIn("Queue.Declare", close.reply_text)
        self.finishClose(self.client)

    def test_shortMethodFrame(self) -> None:
        """
        A method frame too short to name its method is a frame error.
        """
        self.client.send(rawFrame(1, 1, b"\x00\x32"))
        self.assertConnectionClosed(self.client, self.client.received(), 501, dropped=True)

    def test_unknownMethod(self) -> None:
        """
        A method the protocol does not define is 540 NOT_IMPLEMENTED.
        """
        self.client.send(rawFrame(1, 1, struct.pack(">HH", 60, 999)))
        self.assertConnectionClosed(self.client, self.client.received(), 540)
        self.finishClose(self.client)

    def test_headerWithoutPublish(self) -> None:
        """
        A content header with no basic.publish before it is 505
        UNEXPECTED_FRAME.
        """
        self.client.sendFrames(1, ContentHeader(0, 3, commands.Basic.Properties()))
        self.assertConnectionClosed(self.client, self.client.received(), 505)
        self.finishClose(self.client)

    def test_bodyWithoutHeader(self) -> None:
        """
        A content body right after basic.publish (no header) is 505.
        """
        self.client.sendFrames(
            1, commands.Basic.Publish(exchange="", routing_key="q"), ContentBody(b"abc")
        )
        self.assertConnectionClosed(self.client, self.client.received(), 505)
        self.finishClose(self.client)

    def test_bodyLongerThanAnnounced(self) -> None:
        """
        More body bytes than the header announced is 505.
        """
        self.client.sendFrames(
            1,
            commands.Basic.Publish(exchange="", routing_key="q"),
            ContentHeader(0, 3, commands.Basic.Properties()),
            ContentBody(b"abcdef"),
        )
        self.assertConnectionClosed(self.client, self.client.received(), 505)
        self.finishClose(self.client)

    def test_methodInsteadOfContent(self) -> None:
        """
        A method where the content of a publish was expected is 505, the
        fast-pathed basic.ack and basic.publish included.
        """
        for method in [
            commands.Queue.Declare(queue="q"),
            commands.Basic.Ack(delivery_tag=1),
            commands.Basic.Publish(exchange="", routing_key="q"),
        ]:
            client = self.openClient(channels=(1,))
            client.sendFrames(1, commands.Basic.Publish(exchange="", routing_key="q"), method)
            self.assertConnectionClosed(client, client.received(), 505)
            self.finishClose(client)

    def test_contentOnUnopenedChannel(self) -> None:
        """
        Content frames on a channel that is not open are a channel state
        error.
        """
        self.client.sendFrames(5, ContentBody(b"abc"))
        self.assertConnectionClosed(self.client, self.client.received(), 504)
        self.finishClose(self.client)

    def test_messageTooLarge(self) -> None:
        """
        A content header announcing more than max-message-size closes the
        channel with 406; the body that follows is ignored and the
        connection carries on.
        """
        self.factory.maxMessageSize = 1000
        client = self.openClient(channels=(1, 2))
        client.send(publishBytes(1, "", "q", b"x" * 1001, chunk=500))
        close = self.assertChannelClosed(client.received(), 1, 406)
        self.assertIn("1001", close.reply_text)
        self.assertFalse(client.transport.disconnecting)
        client.call(2, commands.Queue.Declare(queue="q"))
        client.send(publishBytes(2, "", "q", b"x" * 1000))
        self.assertEqual(self.vhost.queue("q").messageCount, 1)

    def test_serverCloseTimesOut(self) -> None:
        """
        A client that never answers the server's connection.close is dropped
        after a while.
        """
        self.client.send(rawFrame(1, 1, struct.pack(">HH", 60, 999)))
        self.assertFalse(self.client.transport.disconnecting)
        self.client.sendFrames(1, commands.Queue.Declare(queue="ignored"))
        self.assertEqual(
            [name for _, name in names(self.client.received())], ["Connection.Close"]
        )
        self.assertNotIn("ignored", self.vhost.queues)
        self.clock.advance(3)
        self.assertTrue(self.client.transport.disconnecting)


class FlowControlTests(ProtocolTestCase):
    """
    Tests for write-side backpressure and the memory high watermark.
    """

    def test_writeBackpressure(self) -> None:
        """
        While the transport has paused the server (its send buffer is
        full), nothing is delivered and reading stops; on resume the
        waiting messages go out and reading resumes.
        """
        client = self.openClient(channels=(1,))
        client.call(1, commands.Queue.Declare(queue="q"))
        client.call(1, commands.Basic.Consume(queue="q", consumer_tag="c"))
        client.server.pauseProducing()
        self.assertEqual(client.transport.producerState, "paused")
        client.send(publishBytes(1, "", "q", b"1") + publishBytes(1, "", "q", b"2"))
        self.assertEqual(client.received(), [])
        self.assertEqual(self.vhost.queue("q").messageCount, 2)
        client.server.resumeProducing()
        self.assertEqual(client.transport.producerState, "producing")
        self.assertEqual([body for _, body in contents(client.received())], [b"1", b"2"])

    def test_memoryAlarm(self) -> None:
        """
        A publish that passes the memory high watermark sends
        connection.blocked to every client that announced the capability.
        As in RabbitMQ, a connection that publishes while memory is high
        stops being read after that read (whether it has the capability or
        not). When memory falls again connection.unblocked is sent and
        reading resumes.
        """
        resources = self.vhost.resources
        resources.highWatermark = 150 + Resources.overhead
        publisher = self.openClient(
            channels=(1,), capabilities={"connection.blocked": True}
        )
        watcher = self.openClient(channels=(1,), capabilities={"connection.blocked": True})
        plain = self.openClient(channels=(1,))
        publisher.call(1, commands.Queue.Declare(queue="q"))
        publisher.send(publishBytes(1, "", "q", b"x" * 100))
        self.assertEqual(publisher.received(), [])
        publisher.send(publishBytes(1, "", "q", b"x" * 100))
        self.assertTrue(resources.blocked)
        [(channel, blocked)] = publisher.received()
        self.assertIsInstance(blocked, commands.Connection.Blocked)
        self.assertEqual(channel, 0)
        self.assertEqual(names(watcher.received()), [(0, "Connection.Blocked")])
        self.assertEqual(plain.received(), [])
        self.assertEqual(publisher.transport.producerState, "producing")
        publisher.send(publishBytes(1, "", "q", b"x" * 100))
        self.assertEqual(publisher.transport.producerState, "paused")
        plain.send(publishBytes(1, "", "q", b"x"))
        self.assertEqual(plain.transport.producerState, "paused")
        self.assertEqual(watcher.transport.producerState, "producing")
        self.assertEqual(self.vhost.queue("q").messageCount, 4)
        for _ in range(2):
            watcher.call(1, commands.Basic.Get(queue="q", no_ack=True))
        self.assertTrue(resources.blocked)
        self.assertEqual(publisher.received(), [])
        watcher.call(1, commands.Basic.Get(queue="q", no_ack=True))
        self.assertFalse(resources.blocked)
        self.assertEqual(names(publisher.received()), [(0, "Connection.Unblocked")])
        self.assertEqual(publisher.transport.producerState, "producing")
        self.assertEqual(plain.transport.producerState, "producing")
        self.assertEqual(plain.received(), [])

    def test_blockedOnOpen(self) -> None:
        """
        A client that connects while memory is high is told at once.
        """
        self.vhost.resources.highWatermark = 1
        self.vhost.declareQueue("q")
        self.vhost.publish("", "q", Message.build("", "q", b"x"))
        client = self.connect()
        frames = client.handshake(capabilities={"connection.blocked": True})
        self.assertEqual(
            names(frames)[-2:], [(0, "Connection.OpenOk"), (0, "Connection.Blocked")]
        )

    def test_heartbeatWhileBlocked(self) -> None:
        """
        A publisher whose reading is paused for memory is not dropped for
        silence (its heartbeats wait unread); once reading resumes, silence
        counts again from then.
        """
        resources = self.vhost.resources
        resources.highWatermark = 1
        client = self.openClient(channels=(1,), heartbeat=10)
        client.call(1, commands.Queue.Declare(queue="q"))
        client.send(publishBytes(1, "", "q", b"x") + publishBytes(1, "", "q", b"y"))
        self.assertEqual(client.transport.producerState, "paused")
        self.clock.pump([5] * 12)
        self.assertFalse(client.transport.disconnecting)
        self.vhost.purgeQueue("q")
        self.assertEqual(client.transport.producerState, "producing")
        self.clock.pump([5, 5, 5])
        self.assertFalse(client.transport.disconnecting)
        self.clock.advance(5)
        self.assertTrue(client.transport.disconnecting)



class RefusedPublishTests(ProtocolTestCase):
    """
    A publish that a full queue (overflow C{reject-publish}) refuses,
    through the channel: the other queues it reached still take it, as
    L{VirtualHost.publishTo} does for every publish.
    """

    def setUp(self) -> None:
        """
        Fanout exchange C{fan} bound to an open queue C{open} and a full
        queue C{full}; a holder that records what it is asked to hold.
        """
        super().setUp()
        self.holder = FakeConfirmHolder(holding=False)
        self.factory = self.makeFactory(holders=[self.holder])
        self.vhost.declareExchange("fan", "fanout")
        self.vhost.declareQueue(
            "full", arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
        )
        self.vhost.declareQueue("open")
        for name in ("full", "open"):
            self.vhost.bindQueue(name, "fan", "")
        self.client = self.openClient(channels=(1,))

    def test_confirmModeNack(self) -> None:
        """
        A confirm-mode publisher gets basic.nack for it; the open queue
        took it, and the holders were asked to hold it for that queue only.
        """
        client = self.client
        client.call(1, commands.Confirm.Select())
        client.send(publishBytes(1, "fan", "", b"m"))
        [(_, nack)] = client.received()
        self.assertIsInstance(nack, commands.Basic.Nack)
        self.assertEqual(nack.delivery_tag, 1)
        self.assertEqual(self.vhost.queue("open").messageCount, 1)
        self.assertEqual(self.vhost.queue("full").messageCount, 0)
        self.assertEqual([queues for queues, _ in self.holder.held], [["open"]])

    def test_channelError(self) -> None:
        """
        Without confirms, the channel is closed with 406 naming the full
        queue; the open queue took the message, and no holder was asked.
        """
        client = self.client
        client.send(publishBytes(1, "fan", "", b"m"))
        close = self.assertChannelClosed(client.received(), 1, 406)
        self.assertIn("'full'", close.reply_text)
        self.assertEqual(self.vhost.queue("open").messageCount, 1)
        self.assertEqual(self.holder.held, [])


class LoginCheckTests(ProtocolTestCase):
    """
    Passwords are checked through the factory's L{IPasswordVerifier} (a
    thread pool in the broker), never on the reactor thread, and refused
    logins are slowed down per source by L{FailedLogins}.
    """

    def setUp(self) -> None:
        """
        A factory whose password checks wait for the test; hashing on this
        (the reactor's) thread fails the test.
        """
        super().setUp()
        self.verifier = RecordingVerifier()
        self.factory = self.makeFactory(verifier=self.verifier)
        self.patch(ScryptHash, "verify", lambda *args: self.fail("hashed on the reactor thread"))

    def startLogin(self, response: str, peer: IPv4Address = LOOPBACK) -> Client:
        """
        Connect and send the protocol header and connection.start-ok.
        """
        client = self.connect(peer)
        client.send(wire.PROTOCOL_HEADER)
        self.assertEqual(names(client.received()), [(0, "Connection.Start")])
        client.sendFrames(
            0,
            commands.Connection.StartOk(
                client_properties={}, mechanism="PLAIN", response=response
            ),
        )
        return client

    def test_floodCheckedOffReactorThread(self) -> None:
        """
        The flood's logins are checked off the reactor thread: four
        connections sending wrong passwords each hand their check to the
        verifier and stop reading, while another client's publishes are
        confirmed at once; the answers then close them with 403.
        """
        self.factory.verifier = SynchronousVerifier()
        self.patch(ScryptHash, "verify", lambda passwordHash, password: password == "guest")
        other = self.openClient()
        self.factory.verifier = self.verifier
        self.patch(ScryptHash, "verify", lambda *args: self.fail("hashed on the reactor thread"))
        other.call(1, commands.Queue.Declare(queue="q"))
        other.call(1, commands.Confirm.Select())
        flood = [self.startLogin("\0guest\0wrong") for _ in range(4)]
        self.assertEqual(len(self.verifier.calls), 4)
        for client in flood:
            self.assertEqual(client.received(), [])
            self.assertEqual(client.transport.producerState, "paused")
        other.send(publishBytes(1, "", "q", b"m"))
        [(_, ack)] = other.received()
        self.assertIsInstance(ack, commands.Basic.Ack)
        for _, _, d in self.verifier.calls:
            d.callback(False)
        for client in flood:
            self.assertConnectionClosed(client, client.received(), 403, dropped=True)

    def test_readingResumesAfterCheck(self) -> None:
        """
        What the client sends while its password is checked waits, and is
        handled once the check succeeded: tune, then open.
        """
        client = self.startLogin("\0guest\0guest")
        client.sendFrames(0, commands.Connection.TuneOk(channel_max=0, frame_max=0, heartbeat=0))
        client.sendFrames(0, commands.Connection.Open(virtual_host="/"))
        self.assertEqual(client.received(), [])
        self.verifier.calls[0][2].callback(True)
        self.assertEqual(
            names(client.received()), [(0, "Connection.Tune"), (0, "Connection.OpenOk")]
        )
        self.assertEqual(client.transport.producerState, "producing")
        self.assertEqual(client.server.user, "guest")

    def test_lostWhileChecking(self) -> None:
        """
        A client gone before its check finished is forgotten: the answer
        writes nothing and raises nothing.
        """
        for password, answer in (("guest", True), ("wrong", False)):
            client = self.startLogin(f"\0guest\0{password}")
            client.disconnect()
            self.verifier.calls[-1][2].callback(answer)
            self.assertEqual(client.received(), [])
            self.assertIsNone(client.server.user)

    def test_checkBroke(self) -> None:
        """
        A check that fails unexpectedly is logged and closes the
        connection with 541.
        """
        client = self.startLogin("\0guest\0guest")
        self.verifier.calls[0][2].errback(MemoryError())
        self.assertConnectionClosed(client, client.received(), 541, dropped=True)
        self.assertEqual(len(self.flushLoggedErrors(MemoryError)), 1)

    def test_refusalDelayedPerSource(self) -> None:
        """
        With L{FailedLogins}, a refusal is answered after a delay that grows
        with each failure from the same address; another address starts
        with the short one.
        """
        self.factory.failedLogins = FailedLogins(self.clock, firstDelay=0.1, maxDelay=2.0)
        for expected in (0.1, 0.2, 0.4):
            client = self.startLogin("\0guest\0wrong")
            self.verifier.calls[-1][2].callback(False)
            self.clock.advance(expected - 0.01)
            self.assertEqual(client.received(), [])
            self.clock.advance(0.01)
            self.assertConnectionClosed(client, client.received(), 403, dropped=True)
        remote = self.startLogin("\0bob\0wrong", peer=REMOTE)
        self.verifier.calls[-1][2].callback(False)
        self.clock.advance(0.1)
        self.assertConnectionClosed(remote, remote.received(), 403, dropped=True)
        self.clock.advance(10)

    def test_lostDuringDelay(self) -> None:
        """
        A client gone while its refusal waits gets nothing, and the timer
        goes with it.
        """
        self.factory.failedLogins = FailedLogins(self.clock)
        client = self.startLogin("\0guest\0wrong")
        self.verifier.calls[0][2].callback(False)
        client.disconnect()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(client.received(), [])
