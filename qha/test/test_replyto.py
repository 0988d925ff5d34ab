"""
Tests for L{qha.amqp.replyto}: RabbitMQ's direct reply-to, driven through
the AMQP server as a client drives it (the requester and the responder are
two connections of one broker).

The behaviours were compared with RabbitMQ 3.10.8 driven by pika; where
qha differs (a delivered reply published with C{mandatory} is not returned)
the test says so.
"""

from __future__ import annotations

import random
import string
from types import SimpleNamespace
from typing import Any, Sequence

from pamqp import commands
from pamqp.body import ContentBody
from pamqp.header import ContentHeader
from twisted.logger import globalLogPublisher
from twisted.internet.testing import EventLoggingObserver
from twisted.trial.unittest import SynchronousTestCase

from qha.amqp.replyto import REPLY_PREFIX, REPLY_QUEUE, DirectReplies
from qha.amqp.users import Permissions, ScryptHash, UserDatabase
from qha.broker.errors import NotAllowed
from qha.broker.message import Message
from qha.broker.vhosts import VirtualHosts
from qha.test.support import (
    FAST_N,
    Client,
    ProtocolTestCase,
    Received,
    contents,
    names,
    publishBytes,
    rawFrame,
)
from qha.testing import FakeConfirmHolder, RecordingObserver


def headers(frames: Sequence[Received]) -> list[ContentHeader]:
    """
    The content headers among C{frames}.
    """
    return [value for _, value in frames if isinstance(value, ContentHeader)]


def properties(**values: Any) -> commands.Basic.Properties:
    """
    Message properties.
    """
    return commands.Basic.Properties(**values)


class DirectReplyTestCase(ProtocolTestCase):
    """
    A requester (channel 1 of one connection, consuming from the
    pseudo-queue) and a responder (channel 1 of another), with the request
    queue C{requests}.
    """

    def requester(self, tag: str = "replies", **handshake: Any) -> Client:
        """
        A connection whose channel 1 consumes from C{amq.rabbitmq.reply-to}
        with C{tag}, and that declared the queue C{requests}.
        """
        client = self.openClient(**handshake)
        frames = client.call(1, commands.Basic.Consume(queue=REPLY_QUEUE, consumer_tag=tag, no_ack=True))
        self.assertEqual(names(frames), [(1, "Basic.ConsumeOk")])
        self.assertEqual(client.call(1, commands.Queue.Declare(queue="requests"))[0][1].name, "Queue.DeclareOk")
        return client

    def request(self, client: Client, channel: int = 1, **props: Any) -> str:
        """
        Publish a request to C{requests} on C{channel} with C{reply_to}
        C{amq.rabbitmq.reply-to}, and return the C{reply_to} it was queued
        with.
        """
        props.setdefault("reply_to", REPLY_QUEUE)
        client.send(publishBytes(channel, "", "requests", b"request", properties=properties(**props)))
        self.assertEqual(client.received(), [])
        return self.queuedRequest().properties.reply_to

    def queuedRequest(self) -> Any:
        """
        The message last queued on C{requests}, taken off the queue.
        """
        queue = self.vhost.queues["requests"]
        entry = queue.get()
        assert entry is not None
        queue.settle(entry)
        return entry.message

    def reply(
        self,
        responder: Client,
        address: str,
        body: bytes = b"reply",
        mandatory: bool = False,
        channel: int = 1,
        **props: Any,
    ) -> list[Received]:
        """
        Publish a reply to C{address} on the default exchange and return
        what the responder got back.
        """
        responder.send(
            publishBytes(channel, "", address, body, mandatory=mandatory, properties=properties(**props))
        )
        return responder.received()

    def assertUnroutable(self, address: str, *watching: Client) -> None:
        """
        A reply to C{address} from a new connection in confirm mode is
        returned 312 NO_ROUTE with mandatory and dropped without, is
        acknowledged both times, and none of the C{watching} clients gets
        anything.
        """
        responder = self.openClient()
        responder.call(1, commands.Confirm.Select())
        frames = self.reply(responder, address, mandatory=True)
        self.assertEqual(names(frames)[0], (1, "Basic.Return"))
        self.assertEqual(names(frames)[-1], (1, "Basic.Ack"))
        [(returned, body)] = contents(frames)
        self.assertEqual(
            (returned.reply_code, returned.reply_text, returned.exchange, returned.routing_key, body),
            (312, "NO_ROUTE", "", address, b"reply"),
        )
        self.assertEqual(names(self.reply(responder, address)), [(1, "Basic.Ack")])
        for client in watching:
            self.assertEqual(client.received(), [])


class ConsumeTests(DirectReplyTestCase):
    """
    basic.consume and basic.cancel of the pseudo-queue.
    """

    def test_capability(self) -> None:
        """
        connection.start announces the capability C{direct_reply_to}, as
        RabbitMQ does.
        """
        client = self.connect()
        client.send(b"AMQP\x00\x00\x09\x01")
        [(_, start)] = client.received()
        self.assertIs(start.server_properties["capabilities"]["direct_reply_to"], True)

    def test_consumeWithoutDeclare(self) -> None:
        """
        The pseudo-queue is consumed without being declared; a consumer tag
        left empty is made up by the broker, as for any queue.
        """
        client = self.openClient()
        [(_, ok)] = client.call(1, commands.Basic.Consume(queue=REPLY_QUEUE, no_ack=True))
        self.assertIsInstance(ok, commands.Basic.ConsumeOk)
        self.assertTrue(ok.consumer_tag.startswith("amq.ctag-"), ok.consumer_tag)
        self.assertNotIn(REPLY_QUEUE, self.vhost.queues)

    def test_consumeNoWait(self) -> None:
        """
        With nowait the consumer is set up and nothing is answered.
        """
        client = self.openClient()
        self.assertEqual(
            client.call(1, commands.Basic.Consume(queue=REPLY_QUEUE, consumer_tag="r", no_ack=True, nowait=True)),
            [],
        )
        self.assertEqual(client.server.channels[1].replyConsumer.tag, "r")  # type: ignore[union-attr]

    def test_consumeNeedsNoAck(self) -> None:
        """
        A consumer with acknowledgements: 406 PRECONDITION_FAILED with
        RabbitMQ's text, naming basic.consume; the channel closes.
        """
        client = self.openClient()
        frames = client.call(1, commands.Basic.Consume(queue=REPLY_QUEUE, no_ack=False))
        close = self.assertChannelClosed(frames, 1, 406)
        self.assertEqual(close.reply_text, "PRECONDITION_FAILED - reply consumer cannot acknowledge")
        self.assertEqual((close.class_id, close.method_id), (60, 20))

    def test_secondConsumer(self) -> None:
        """
        One reply consumer a channel: a second is 406 with RabbitMQ's text;
        another channel of the connection has its own.
        """
        client = self.requester()
        client.openChannel(2)
        frames = client.call(2, commands.Basic.Consume(queue=REPLY_QUEUE, consumer_tag="two", no_ack=True))
        self.assertEqual(names(frames), [(2, "Basic.ConsumeOk")])
        frames = client.call(1, commands.Basic.Consume(queue=REPLY_QUEUE, consumer_tag="again", no_ack=True))
        close = self.assertChannelClosed(frames, 1, 406)
        self.assertEqual(close.reply_text, "PRECONDITION_FAILED - reply consumer already set")

    def test_reusedTag(self) -> None:
        """
        The tag of another consumer of the channel is refused for the reply
        consumer, and the reply consumer's tag for another consumer, as any
        reused consumer tag is: 530 NOT_ALLOWED.
        """
        client = self.openClient()
        client.call(1, commands.Queue.Declare(queue="q"))
        client.call(1, commands.Basic.Consume(queue="q", consumer_tag="t"))
        # Checked first, as in RabbitMQ: 530 even with acknowledgements.
        frames = client.call(1, commands.Basic.Consume(queue=REPLY_QUEUE, consumer_tag="t", no_ack=False))
        self.assertConnectionClosed(client, frames, 530)

        other = self.requester(tag="r")
        frames = other.call(1, commands.Basic.Consume(queue="q", consumer_tag="r"))
        close = self.assertConnectionClosed(other, frames, 530)
        self.assertEqual(close.reply_text, "NOT_ALLOWED - attempt to reuse consumer tag 'r'")

    def test_cancel(self) -> None:
        """
        basic.cancel of the reply consumer's tag ends it (cancel-ok): a
        request with C{reply_to} C{amq.rabbitmq.reply-to} is then refused,
        and a new consumer may start.
        """
        client = self.requester(tag="r")
        frames = client.call(1, commands.Basic.Cancel(consumer_tag="r"))
        self.assertEqual(names(frames), [(1, "Basic.CancelOk")])
        self.assertEqual(frames[0][1].consumer_tag, "r")
        self.assertEqual(self.factory.replies.consumers, {})
        frames = client.call(1, commands.Basic.Consume(queue=REPLY_QUEUE, consumer_tag="r", no_ack=True))
        self.assertEqual(names(frames), [(1, "Basic.ConsumeOk")])

    def test_cancelNoWait(self) -> None:
        """
        basic.cancel with nowait ends the reply consumer without an answer.
        """
        client = self.requester(tag="r")
        self.assertEqual(client.call(1, commands.Basic.Cancel(consumer_tag="r", nowait=True)), [])
        self.assertIsNone(client.server.channels[1].replyConsumer)

    def test_cancelOtherTag(self) -> None:
        """
        basic.cancel of a tag that is not the reply consumer's leaves it
        (cancel-ok, as for any unknown tag).
        """
        client = self.requester(tag="r")
        self.assertEqual(names(client.call(1, commands.Basic.Cancel(consumer_tag="x"))), [(1, "Basic.CancelOk")])
        self.assertIsNotNone(client.server.channels[1].replyConsumer)

    def test_getIsNotFound(self) -> None:
        """
        basic.get of the pseudo-queue is 404, as in RabbitMQ: it is no queue.
        """
        client = self.openClient()
        close = self.assertChannelClosed(client.call(1, commands.Basic.Get(queue=REPLY_QUEUE)), 1, 404)
        self.assertEqual(close.reply_text, "NOT_FOUND - no queue 'amq.rabbitmq.reply-to' in vhost '/'")


class DeclareTests(DirectReplyTestCase):
    """
    queue.declare of the pseudo-queue and of reply addresses.
    """

    def test_declare(self) -> None:
        """
        Passive or not, queue.declare of C{amq.rabbitmq.reply-to} is
        declare-ok with 0 messages and 1 consumer, as in RabbitMQ; no queue
        is made.
        """
        client = self.openClient()
        for passive in (True, False):
            [(_, ok)] = client.call(1, commands.Queue.Declare(queue=REPLY_QUEUE, passive=passive))
            self.assertEqual((ok.queue, ok.message_count, ok.consumer_count), (REPLY_QUEUE, 0, 1))
        self.assertNotIn(REPLY_QUEUE, self.vhost.queues)
        self.assertEqual(client.call(1, commands.Queue.Declare(queue=REPLY_QUEUE, nowait=True)), [])

    def test_deleteAndPurge(self) -> None:
        """
        As in RabbitMQ, the pseudo-queue is no queue for queue.delete
        (delete-ok with 0 messages, as for any missing queue) and
        queue.purge (404).
        """
        client = self.requester()
        [(_, ok)] = client.call(1, commands.Queue.Delete(queue=REPLY_QUEUE))
        self.assertEqual((ok.name, ok.message_count), ("Queue.DeleteOk", 0))
        self.assertIsNotNone(client.server.channels[1].replyConsumer)
        self.assertChannelClosed(client.call(1, commands.Queue.Purge(queue=REPLY_QUEUE)), 1, 404)

    def test_declaredThenConsumedByEmptyName(self) -> None:
        """
        Like a declared queue, the pseudo-queue is the channel's last
        queue: basic.consume with an empty queue name consumes from it.
        """
        client = self.openClient()
        client.call(1, commands.Queue.Declare(queue=REPLY_QUEUE, passive=True))
        frames = client.call(1, commands.Basic.Consume(queue="", consumer_tag="r", no_ack=True))
        self.assertEqual(names(frames), [(1, "Basic.ConsumeOk")])
        self.assertIsNotNone(client.server.channels[1].replyConsumer)

    def test_otherNames(self) -> None:
        """
        Any other name that starts with C{amq.rabbitmq.reply-to} is 404,
        passive or not, with RabbitMQ's text.
        """
        client = self.openClient(channels=())
        number = 0
        for name in [REPLY_QUEUE + "X", REPLY_PREFIX, REPLY_PREFIX + "abc.def", REPLY_PREFIX + "A" * 32]:
            for passive in (True, False):
                number += 1
                client.openChannel(number)
                close = self.assertChannelClosed(
                    client.call(number, commands.Queue.Declare(queue=name, passive=passive)), number, 404
                )
                self.assertEqual(close.reply_text, f"NOT_FOUND - no queue '{name}' in vhost '/'")

    def test_liveAddress(self) -> None:
        """
        A responder may check that its requester is still there: the reply
        address declares (0 messages, 1 consumer) while its consumer is
        there, and is 404 once it was cancelled, as in RabbitMQ.
        """
        requester = self.requester(tag="r")
        address = self.request(requester)
        responder = self.openClient(channels=(1, 2))
        [(_, ok)] = responder.call(1, commands.Queue.Declare(queue=address, passive=True))
        self.assertEqual((ok.queue, ok.message_count, ok.consumer_count), (address, 0, 1))
        requester.call(1, commands.Basic.Cancel(consumer_tag="r"))
        self.assertChannelClosed(responder.call(2, commands.Queue.Declare(queue=address, passive=True)), 2, 404)


class RequestTests(DirectReplyTestCase):
    """
    A request's C{reply_to} C{amq.rabbitmq.reply-to} is rewritten to the
    channel's reply address.
    """

    def test_rewritten(self) -> None:
        """
        The request is queued with C{reply_to} rewritten to
        C{amq.rabbitmq.reply-to.} and a token; the other properties and the
        body are as published.
        """
        client = self.requester()
        client.send(
            publishBytes(
                1,
                "",
                "requests",
                b"request body",
                properties=properties(
                    content_type="application/json",
                    headers={"a": 1, "b": "two"},
                    delivery_mode=2,
                    priority=3,
                    correlation_id="c-1",
                    reply_to=REPLY_QUEUE,
                    expiration="60000",
                    message_id="m-1",
                    app_id="tests",
                ),
            )
        )
        message = self.queuedRequest()
        received = message.properties
        self.assertTrue(received.reply_to.startswith(REPLY_PREFIX), received.reply_to)
        self.assertEqual(len(received.reply_to), len(REPLY_PREFIX) + 32)
        self.assertEqual(
            (
                received.content_type,
                received.headers,
                received.delivery_mode,
                received.priority,
                received.correlation_id,
                received.expiration,
                received.message_id,
                received.app_id,
            ),
            ("application/json", {"a": 1, "b": "two"}, 2, 3, "c-1", "60000", "m-1", "tests"),
        )
        self.assertEqual(message.body, b"request body")
        # The header announces the same body size.
        self.assertEqual(int.from_bytes(message.header[4:12], "big"), len(b"request body"))

    def test_sameAddressEveryRequest(self) -> None:
        """
        Every request of the channel carries the same address; another
        channel's differs.
        """
        client = self.requester()
        first, second = self.request(client), self.request(client)
        self.assertEqual(first, second)
        client.openChannel(2)
        client.call(2, commands.Basic.Consume(queue=REPLY_QUEUE, no_ack=True))
        self.assertNotEqual(self.request(client, channel=2), first)

    def test_anyExchange(self) -> None:
        """
        The rewrite happens whatever exchange the request goes to, as in
        RabbitMQ.
        """
        client = self.requester()
        client.call(1, commands.Exchange.Declare(exchange="x", exchange_type="fanout"))
        client.call(1, commands.Queue.Bind(queue="requests", exchange="x"))
        client.send(publishBytes(1, "x", "", b"r", properties=properties(reply_to=REPLY_QUEUE)))
        self.assertTrue(self.queuedRequest().properties.reply_to.startswith(REPLY_PREFIX))

    def test_otherReplyToUntouched(self) -> None:
        """
        Any other C{reply_to} is left as it is, byte for byte, whether or not
        the channel consumes from the pseudo-queue.
        """
        client = self.requester()
        for replyTo in ["my-replies", REPLY_QUEUE + "X", REPLY_PREFIX + "x", "amq.rabbitmq.reply-tO"]:
            publish = publishBytes(
                1, "", "requests", b"r", properties=properties(correlation_id="c", reply_to=replyTo, message_id="m")
            )
            client.send(publish)
            message = self.queuedRequest()
            self.assertEqual(message.properties.reply_to, replyTo)
            # The header as published (the frame after the method frame).
            start = publish.index(b"\xce") + 1 + 7
            self.assertEqual(message.header, publish[start : start + len(message.header)])

    def test_pseudoQueueNameElsewhere(self) -> None:
        """
        C{amq.rabbitmq.reply-to} in another property than C{reply_to} (the
        correlation id, a header) changes nothing, on a channel with or
        without a reply consumer.
        """
        for client in [self.requester(), self.openClient(channels=(1,))]:
            publish = publishBytes(
                1,
                "",
                "requests",
                b"r",
                properties=properties(
                    headers={"x": REPLY_QUEUE}, correlation_id=REPLY_QUEUE, reply_to="my-replies"
                ),
            )
            client.send(publish)
            self.assertEqual(client.received(), [])
            message = self.queuedRequest()
            self.assertEqual(
                (message.properties.reply_to, message.properties.correlation_id), ("my-replies", REPLY_QUEUE)
            )

    def test_noConsumer(self) -> None:
        """
        A request with C{reply_to} C{amq.rabbitmq.reply-to} on a channel
        that does not consume from it: 406 with RabbitMQ's text, naming
        basic.publish; nothing is queued.
        """
        client = self.openClient()
        client.call(1, commands.Queue.Declare(queue="requests"))
        client.send(publishBytes(1, "", "requests", b"r", properties=properties(reply_to=REPLY_QUEUE)))
        close = self.assertChannelClosed(client.received(), 1, 406)
        self.assertEqual(close.reply_text, "PRECONDITION_FAILED - fast reply consumer does not exist")
        self.assertEqual((close.class_id, close.method_id), (60, 40))
        self.assertEqual(self.vhost.queues["requests"].messageCount, 0)

    def test_otherChannelsConsumer(self) -> None:
        """
        The consumer must be on the publishing channel: another channel's,
        of the same connection, does not count (as in RabbitMQ).
        """
        client = self.requester()
        client.openChannel(2)
        client.send(publishBytes(2, "", "requests", b"r", properties=properties(reply_to=REPLY_QUEUE)))
        self.assertChannelClosed(client.received(), 2, 406)

    def test_inTransaction(self) -> None:
        """
        A request published in a transaction is rewritten too, and queued
        at the commit.
        """
        client = self.requester()
        client.call(1, commands.Tx.Select())
        client.send(publishBytes(1, "", "requests", b"r", properties=properties(reply_to=REPLY_QUEUE)))
        self.assertEqual(self.vhost.queues["requests"].messageCount, 0)
        self.assertEqual(names(client.call(1, commands.Tx.Commit())), [(1, "Tx.CommitOk")])
        self.assertTrue(self.queuedRequest().properties.reply_to.startswith(REPLY_PREFIX))


class ReplyTests(DirectReplyTestCase):
    """
    A reply published to a reply address goes straight to its consumer.
    """

    def test_roundTrip(self) -> None:
        """
        The responder, on another connection, publishes to the request's
        C{reply_to} on the default exchange: the requester gets it as a
        basic.deliver to its reply consumer, exchange C{""}, the address as
        routing key, not redelivered, with the reply's properties and body,
        as in RabbitMQ.
        """
        requester = self.requester(tag="replies")
        address = self.request(requester, correlation_id="c-7")
        responder = self.openClient()
        self.assertEqual(self.reply(responder, address, b"the answer", correlation_id="c-7"), [])
        frames = requester.received()
        [(deliver, body)] = contents(frames)
        self.assertIsInstance(deliver, commands.Basic.Deliver)
        self.assertEqual(
            (deliver.consumer_tag, deliver.exchange, deliver.routing_key, deliver.redelivered),
            ("replies", "", address, False),
        )
        self.assertEqual(body, b"the answer")
        [header] = headers(frames)
        self.assertEqual(header.properties.correlation_id, "c-7")

    def test_sameConnection(self) -> None:
        """
        The responder may be the requester's own connection, another
        channel or the same.
        """
        requester = self.requester()
        address = self.request(requester)
        requester.openChannel(2)
        requester.send(publishBytes(2, "", address, b"from 2"))
        requester.send(publishBytes(1, "", address, b"from 1"))
        self.assertEqual([body for _, body in contents(requester.received())], [b"from 2", b"from 1"])

    def test_deliveryTags(self) -> None:
        """
        Replies take the channel's next delivery tags, so that every
        delivery of the channel has its own: a message of a queue consumed
        with acknowledgements on the same channel is acknowledged as usual.
        """
        requester = self.requester()
        address = self.request(requester)
        requester.call(1, commands.Basic.Consume(queue="requests", consumer_tag="work"))
        responder = self.openClient()
        self.reply(responder, address)
        responder.send(publishBytes(1, "", "requests", b"work"))
        self.reply(responder, address)
        deliveries = [method for method, _ in contents(requester.received())]
        self.assertEqual(
            [(d.consumer_tag, d.delivery_tag) for d in deliveries], [("replies", 1), ("work", 2), ("replies", 3)]
        )
        self.assertEqual(requester.call(1, commands.Basic.Ack(delivery_tag=2)), [])
        self.assertEqual(self.vhost.queues["requests"].messageCount, 0)

    def test_largeBody(self) -> None:
        """
        A body larger than the requester's frame_max is cut into frames of
        the requester's size.
        """
        requester = self.requester(frameMax=4096)
        address = self.request(requester)
        responder = self.openClient()
        body = bytes(range(256)) * 64
        self.reply(responder, address, body)
        frames = requester.received()
        self.assertEqual([body], [b for _, b in contents(frames)])
        parts = [value for _, value in frames if isinstance(value, ContentBody)]
        self.assertGreater(len(parts), 1)
        self.assertTrue(all(len(part.value) <= 4096 - 8 for part in parts))

    def test_confirmedAtOnce(self) -> None:
        """
        In confirm mode the reply's confirm comes at once, even when the
        broker's holders (replication, store) would hold a queued message:
        nothing holds a reply.
        """
        holder = FakeConfirmHolder()
        self.factory = self.makeFactory(holders=[holder])
        requester = self.requester()
        address = self.request(requester)
        holder.release()
        holder.held.clear()
        responder = self.openClient()
        responder.call(1, commands.Confirm.Select())
        frames = self.reply(responder, address, mandatory=True)
        self.assertEqual(names(frames), [(1, "Basic.Ack")])
        self.assertEqual(frames[0][1].delivery_tag, 1)
        self.assertEqual(holder.held, [])
        self.assertEqual(len(contents(requester.received())), 1)

    def test_notQueued(self) -> None:
        """
        A reply makes no queue and enters none: the broker's observers (the
        replication source and the store are observers) hear nothing of it
        and no holder is asked to hold it, so it is neither stored nor
        replicated.
        """
        holder = FakeConfirmHolder(holding=False)
        self.factory = self.makeFactory(holders=[holder])
        observer = RecordingObserver()
        self.vhost.observers.append(observer)
        requester = self.requester()
        address = self.request(requester)
        before = set(self.vhost.queues)
        held = len(holder.held)
        self.assertIn(("enqueued", "requests", 1), [event[:3] for event in observer.events])
        observer.clear()
        self.reply(self.openClient(), address)
        self.assertEqual(len(contents(requester.received())), 1)
        self.assertEqual(set(self.vhost.queues), before)
        self.assertEqual(len(holder.held), held)
        self.assertEqual(observer.events, [])

    def test_mandatoryDeliveredNotReturned(self) -> None:
        """
        A delivered reply published with mandatory is routed: no
        basic.return. (RabbitMQ 3.10 returns it all the same, 312 NO_ROUTE;
        RabbitMQ 4.2 counts it as routed, as the specification would.)
        """
        requester = self.requester()
        address = self.request(requester)
        self.assertEqual(self.reply(self.openClient(), address, mandatory=True), [])
        self.assertEqual(len(contents(requester.received())), 1)

    def test_inTransaction(self) -> None:
        """
        A reply published in a transaction is delivered at the commit.
        """
        requester = self.requester()
        address = self.request(requester)
        responder = self.openClient()
        responder.call(1, commands.Tx.Select())
        self.reply(responder, address)
        self.assertEqual(requester.received(), [])
        self.assertEqual(names(responder.call(1, commands.Tx.Commit())), [(1, "Tx.CommitOk")])
        self.assertEqual(len(contents(requester.received())), 1)

    def test_bareName(self) -> None:
        """
        A publish to the routing key C{amq.rabbitmq.reply-to} itself is an
        ordinary unroutable message (returned when mandatory), as in
        RabbitMQ.
        """
        requester = self.requester()
        frames = self.reply(self.openClient(), REPLY_QUEUE, mandatory=True)
        [(returned, _)] = contents(frames)
        self.assertEqual((returned.reply_code, returned.reply_text), (312, "NO_ROUTE"))
        self.assertEqual(requester.received(), [])


class DeadLetterTests(DirectReplyTestCase):
    """
    A message dead-lettered to a reply address goes to its consumer, as
    RabbitMQ 3.10 delivers it: its dead-lettering routes through
    C{rabbit_exchange:route}, whose default exchange hands every routing key
    that is a reply address to C{rabbit_channel:deliver_reply}.
    """

    def deadLetter(self, address: str) -> None:
        """
        Declare the queue C{answers}, which dead-letters to C{address}
        through the default exchange, publish a message to it and reject
        that message without requeueing it.
        """
        queue = self.vhost.declareQueue(
            "answers", arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": address}
        )
        self.vhost.publish("", "answers", Message.build("", "answers", b"x"))
        entry = queue.get()
        assert entry is not None
        queue.reject([entry])

    def test_deadLetterRoutingKey(self) -> None:
        """
        A message rejected from a queue whose dead-letter exchange is the
        default one and whose dead-letter routing key is a reply address
        reaches the requester: exchange C{""}, the address as routing key,
        with the x-death header of its rejection.
        """
        requester = self.requester(tag="replies")
        address = self.request(requester)
        responder = self.openClient()
        responder.call(
            1,
            commands.Queue.Declare(
                queue="answers",
                arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": address},
            ),
        )
        responder.send(publishBytes(1, "", "answers", b"dead answer", properties=properties(correlation_id="c-1")))
        [(deliver, _)] = contents(responder.call(1, commands.Basic.Consume(queue="answers", consumer_tag="w")))
        self.assertEqual(responder.call(1, commands.Basic.Reject(delivery_tag=deliver.delivery_tag, requeue=False)), [])
        frames = requester.received()
        [(delivered, body)] = contents(frames)
        self.assertEqual(
            (delivered.consumer_tag, delivered.exchange, delivered.routing_key, delivered.redelivered, body),
            ("replies", "", address, False, b"dead answer"),
        )
        [header] = headers(frames)
        self.assertEqual(header.properties.correlation_id, "c-1")
        deadHeaders: Any = header.properties.headers
        [death] = deadHeaders["x-death"]
        self.assertEqual((death["reason"], death["queue"]), ("rejected", "answers"))
        self.assertEqual(self.vhost.queues["answers"].messageCount, 0)

    def test_ownRoutingKey(self) -> None:
        """
        Without a dead-letter routing key a message keeps its own: one
        published with a reply address as its routing key (through a
        binding of that key) and dropped from a full queue reaches the
        requester.
        """
        requester = self.requester()
        address = self.request(requester)
        responder = self.openClient()
        responder.call(
            1,
            commands.Queue.Declare(
                queue="answers", arguments={"x-dead-letter-exchange": "", "x-max-length": 1}
            ),
        )
        responder.call(1, commands.Queue.Bind(queue="answers", exchange="amq.direct", routing_key=address))
        responder.send(publishBytes(1, "amq.direct", address, b"first"))
        responder.send(publishBytes(1, "amq.direct", address, b"second"))
        [(delivered, body)] = contents(requester.received())
        self.assertEqual((delivered.exchange, delivered.routing_key, body), ("", address, b"first"))
        self.assertEqual(self.vhost.queues["answers"].messageCount, 1)

    def test_consumerGone(self) -> None:
        """
        A message dead-lettered to the address of a cancelled reply
        consumer is dropped, as a reply to it is.
        """
        requester = self.requester(tag="replies")
        address = self.request(requester)
        requester.call(1, commands.Basic.Cancel(consumer_tag="replies"))
        self.deadLetter(address)
        self.assertEqual(requester.received(), [])
        self.assertEqual(self.vhost.queues["answers"].messageCount, 0)

    def test_notCountedAsPublish(self) -> None:
        """
        A dead-lettered message is no publish: the virtual host's count of
        direct replies published does not change.
        """
        requester = self.requester()
        address = self.request(requester)
        self.deadLetter(address)
        self.assertEqual(len(contents(requester.received())), 1)
        self.assertEqual(self.vhost.repliesPublished, 0)


class CountTests(DirectReplyTestCase):
    """
    Direct replies are publishes that enter no queue: the virtual host
    counts those that reach their consumer (RabbitMQ counts every reply as
    a publish of the channel and the virtual host).
    """

    def test_counted(self) -> None:
        """
        Each reply delivered counts once in its virtual host; a request,
        which enters a queue, is counted by that queue, not here.
        """
        requester = self.requester()
        address = self.request(requester)
        responder = self.openClient()
        self.reply(responder, address)
        self.reply(responder, address)
        self.assertEqual(len(contents(requester.received())), 2)
        self.assertEqual(self.vhost.repliesPublished, 2)
        self.assertEqual(self.vhost.queues["requests"].published, 1)

    def test_unroutableNotCounted(self) -> None:
        """
        A reply that reaches nobody (its consumer cancelled) is unroutable
        and not counted, as no unroutable publish is.
        """
        requester = self.requester(tag="replies")
        address = self.request(requester)
        requester.call(1, commands.Basic.Cancel(consumer_tag="replies"))
        self.assertUnroutable(address, requester)
        self.assertEqual(self.vhost.repliesPublished, 0)

    def test_perVhost(self) -> None:
        """
        A reply counts in the virtual host it was published in.
        """
        self.users = UserDatabase(
            {"guest": ScryptHash.fromPassword("guest", n=FAST_N)},
            permissions={"guest": {"/": Permissions.everything(), "a": Permissions.everything()}},
        )
        self.factory = self.makeFactory()
        other = VirtualHosts.of(self.vhost).add("a")
        requester = self.requester(vhost="a")
        requester.send(publishBytes(1, "", "requests", b"r", properties=properties(reply_to=REPLY_QUEUE)))
        entry = other.queues["requests"].get()
        assert entry is not None
        address = entry.message.properties.reply_to
        assert address is not None
        responder = self.openClient(vhost="a")
        self.reply(responder, address)
        self.assertEqual((other.repliesPublished, self.vhost.repliesPublished), (1, 0))


class BacklogTests(DirectReplyTestCase):
    """
    A requester that reads nothing cannot make the broker hold replies for
    it without bound: past L{DirectReplies.maxBacklog} bytes written while
    its send buffer is full, replies to it are dropped.
    """

    def test_dropsPastBacklog(self) -> None:
        """
        While the requester's send buffer is full, replies are written up
        to the backlog (the one that crosses it too), then dropped, still
        confirmed and not returned (they were routed); the drop is logged
        once. Once the buffer drains, replies are written again.
        """
        # Each reply is about 520 bytes of frames.
        self.factory.replies.maxBacklog = 1200
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]
        requester = self.requester()
        address = self.request(requester)
        responder = self.openClient()
        responder.call(1, commands.Confirm.Select())
        requester.server.pauseProducing()
        for number in range(4):
            frames = self.reply(responder, address, b"%d" % number + b"x" * 399, mandatory=True)
            self.assertEqual(names(frames), [(1, "Basic.Ack")])
        self.assertEqual([body[:1] for _, body in contents(requester.received())], [b"0", b"1", b"2"])
        self.assertEqual(
            [event["log_format"] for event in logged if "direct replies" in event.get("log_format", "")],
            ["{peer} reads nothing and {bytes} bytes of direct replies wait for it: further replies are dropped until it reads"],
        )
        requester.server.resumeProducing()
        self.reply(responder, address, b"after")
        self.assertEqual([body for _, body in contents(requester.received())], [b"after"])

    def test_flowPaused(self) -> None:
        """
        A reply to a channel whose client paused its deliveries with
        channel.flow active=false is dropped (it has no queue to wait in),
        routed all the same; after active=true replies come again.
        """
        requester = self.requester()
        address = self.request(requester)
        self.assertEqual(names(requester.call(1, commands.Channel.Flow(active=False))), [(1, "Channel.FlowOk")])
        responder = self.openClient()
        self.assertEqual(self.reply(responder, address, mandatory=True), [])
        self.assertEqual(requester.received(), [])
        requester.call(1, commands.Channel.Flow(active=True))
        self.reply(responder, address, b"after")
        self.assertEqual([body for _, body in contents(requester.received())], [b"after"])

    def test_writableNoBound(self) -> None:
        """
        A requester that reads gets every reply, however many bytes.
        """
        self.factory.replies.maxBacklog = 1000
        requester = self.requester()
        address = self.request(requester)
        responder = self.openClient()
        for number in range(10):
            self.reply(responder, address, b"x" * 400)
        self.assertEqual(len(contents(requester.received())), 10)


class GoneTests(DirectReplyTestCase):
    """
    A reply whose consumer is gone reaches nobody: dropped, or returned 312
    NO_ROUTE when mandatory; its confirm comes at once.
    """

    def test_cancelled(self) -> None:
        """
        After basic.cancel of the reply consumer.
        """
        requester = self.requester(tag="r")
        address = self.request(requester)
        requester.call(1, commands.Basic.Cancel(consumer_tag="r"))
        self.assertUnroutable(address, requester)

    def test_channelClosed(self) -> None:
        """
        After the requester's channel closed; a new channel of the same
        number that consumes again has a new address.
        """
        requester = self.requester()
        address = self.request(requester)
        self.assertEqual(
            names(requester.call(1, commands.Channel.Close(reply_code=200, reply_text="", class_id=0, method_id=0))),
            [(1, "Channel.CloseOk")],
        )
        self.assertEqual(self.factory.replies.consumers, {})
        requester.openChannel(1)
        requester.call(1, commands.Basic.Consume(queue=REPLY_QUEUE, no_ack=True))
        self.assertNotEqual(self.request(requester), address)
        requester.received()
        self.assertUnroutable(address, requester)

    def test_channelError(self) -> None:
        """
        After the requester's channel was closed by an error.
        """
        requester = self.requester()
        address = self.request(requester)
        self.assertChannelClosed(requester.call(1, commands.Queue.Declare(queue="nope", passive=True)), 1, 404)
        self.assertEqual(self.factory.replies.consumers, {})
        self.assertUnroutable(address, requester)

    def test_connectionLost(self) -> None:
        """
        After the requester's connection is gone.
        """
        requester = self.requester()
        address = self.request(requester)
        requester.disconnect()
        self.assertEqual(self.factory.replies.consumers, {})
        self.assertUnroutable(address)

    def test_connectionClosing(self) -> None:
        """
        After a connection error began closing the requester's connection.
        """
        requester = self.requester()
        address = self.request(requester)
        requester.server.connectionError(NotAllowed("closing"))
        self.assertEqual(names(requester.received()), [(0, "Connection.Close")])
        self.assertEqual(self.factory.replies.consumers, {})
        self.assertUnroutable(address, requester)


class TokenTests(DirectReplyTestCase):
    """
    The token of a reply address is client input: forged, altered or
    malformed ones reach no channel and break nothing.
    """

    def badAddresses(self, address: str) -> list[str]:
        """
        Addresses made from the good C{address} that must reach nobody.
        """
        token = address[len(REPLY_PREFIX) :]
        flipped = "A" if token[-1] != "A" else "B"
        first = "A" if token[0] != "A" else "B"
        return [
            address[:-1] + flipped,
            REPLY_PREFIX + first + token[1:],
            REPLY_PREFIX + token[::-1],
            address + "A",
            address[:-1],
            REPLY_PREFIX,
            REPLY_PREFIX + "=" * 32,
            REPLY_PREFIX + token[:-2] + "==",
            REPLY_PREFIX + token.replace("-", "+").replace("_", "/")
            if ("-" in token or "_" in token)
            else REPLY_PREFIX + "+" + token[1:],
            REPLY_PREFIX + token[:16] + " " + token[17:],
            REPLY_PREFIX + token[:31] + "\u00e9",
            REPLY_PREFIX + "\u2603" * 32,
            REPLY_PREFIX + "A" * 32,
            # The first 10 characters hold the top 60 bits of the number.
            REPLY_PREFIX + "AAAAAAAAAB" + token[10:],
            REPLY_PREFIX + "x" * 200,
            "amq.rabbitmq.reply-to" + token,
            "AMQ.RABBITMQ.REPLY-TO." + token,
        ]

    def test_forged(self) -> None:
        """
        Every altered or made-up address: unroutable (312 with mandatory),
        no delivery, the broker unharmed; the good address still works.
        """
        requester = self.requester()
        address = self.request(requester)
        for bad in self.badAddresses(address):
            with self.subTest(bad=bad):
                self.assertUnroutable(bad, requester)
        self.reply(self.openClient(), address)
        self.assertEqual(len(contents(requester.received())), 1)

    def test_randomTokens(self) -> None:
        """
        Hundreds of random tokens (a fixed seed), of every length up to the
        longest routing key and of any characters: none reaches the
        consumer, the broker keeps serving, and the good address still
        works.
        """
        requester = self.requester()
        address = self.request(requester)
        responder = self.openClient()
        responder.call(1, commands.Confirm.Select())
        rng = random.Random(15)
        alphabet = string.ascii_letters + string.digits + "-_+/=. \u00e9\u2603"
        for count in range(1, 301):
            length = rng.choice([rng.randrange(0, 60), 32, 32, rng.randrange(0, 200)])
            token = "".join(rng.choice(alphabet) for _ in range(length))
            key = (REPLY_PREFIX + token).encode("utf-8")[:255].decode("utf-8", "ignore")
            responder.send(publishBytes(1, "", key, b"x", mandatory=True))
            frames = responder.received()
            self.assertEqual(names(frames)[0], (1, "Basic.Return"), key)
            self.assertEqual(frames[-1][1].delivery_tag, count)
        self.assertEqual(requester.received(), [])
        self.reply(responder, address)
        self.assertEqual(len(contents(requester.received())), 1)

    def test_forgedDeclare(self) -> None:
        """
        queue.declare of an altered or made-up address is 404, never a
        crash (RabbitMQ 3.10 answers some with 541 INTERNAL_ERROR).
        """
        self.request(self.requester())
        address = self.request(self.requester(tag="other"))
        client = self.openClient(channels=())
        for number, bad in enumerate(self.badAddresses(address), 1):
            if not bad.startswith(REPLY_QUEUE):
                continue
            client.openChannel(number)
            # Built by hand: pamqp refuses to encode some of these names.
            name = bad.encode("utf-8")
            client.send(
                rawFrame(1, number, b"\x00\x32\x00\x0a\x00\x00" + bytes((len(name),)) + name + b"\x01" + b"\x00" * 4)
            )
            close = self.assertChannelClosed(client.received(), number, 404)
            # A reply text is cut at 255 bytes.
            expected = f"NOT_FOUND - no queue '{bad}' in vhost '/'"
            self.assertEqual(close.reply_text, expected.encode("utf-8")[:255].decode("utf-8", "ignore"))

    def test_otherConsumersNumber(self) -> None:
        """
        A token whose number is another live consumer's, with a tag that
        is not its own, reaches neither consumer.
        """
        first = self.requester()
        firstAddress = self.request(first)
        second = self.requester(tag="second")
        secondAddress = self.request(second)
        replies = self.factory.replies
        forged = REPLY_PREFIX + replies.address(2, "/")[len(REPLY_PREFIX) :][:11] + firstAddress[len(REPLY_PREFIX) + 11 :]
        self.assertNotIn(forged, (firstAddress, secondAddress))
        self.assertUnroutable(forged, first, second)

    def test_otherBroker(self) -> None:
        """
        An address made by another broker (or an earlier run of this one:
        another key) reaches nobody here, even when its number is a live
        consumer's.
        """
        requester = self.requester()
        self.request(requester)
        [ident] = self.factory.replies.consumers
        self.assertUnroutable(DirectReplies().address(ident, "/"), requester)

    def test_otherVhost(self) -> None:
        """
        A reply address works in its own virtual host only: published in
        another, it reaches nobody.
        """
        self.users = UserDatabase(
            {"guest": ScryptHash.fromPassword("guest", n=FAST_N)},
            permissions={"guest": {"/": Permissions.everything(), "a": Permissions.everything()}},
        )
        self.factory = self.makeFactory()
        VirtualHosts.of(self.vhost).add("a")
        requester = self.requester()
        address = self.request(requester)
        responder = self.openClient(vhost="a")
        frames = self.reply(responder, address, mandatory=True)
        self.assertEqual(names(frames)[0], (1, "Basic.Return"))
        self.assertEqual(requester.received(), [])
        self.assertIsNone(self.factory.replies.find(address, "a"))
        self.assertIsNotNone(self.factory.replies.find(address, "/"))


class DirectRepliesTests(SynchronousTestCase):
    """
    L{DirectReplies}' addresses on their own.
    """

    def test_addressShape(self) -> None:
        """
        An address is the prefix and 32 characters of URL-safe base64, and
        names one consumer number in one virtual host.
        """
        replies = DirectReplies(key=b"k" * 32)
        address = replies.address(1, "/")
        self.assertTrue(address.startswith(REPLY_PREFIX))
        token = address[len(REPLY_PREFIX) :]
        self.assertEqual(len(token), 32)
        self.assertTrue(set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))
        self.assertNotEqual(replies.address(2, "/"), address)
        self.assertNotEqual(replies.address(1, "a"), address)
        self.assertNotEqual(DirectReplies(key=b"j" * 32).address(1, "/"), address)
        self.assertEqual(replies.address(1, "/"), address)

    def test_requestMalformedHeader(self) -> None:
        """
        A content header cut short where its properties should be is left
        as it is (the channel refuses such headers before; this is the
        second line of defence).
        """
        replies = DirectReplies()
        channel: Any = SimpleNamespace(replyConsumer=None)
        header = b"\x00\x3c\x00\x00" + b"\x00" * 8 + b"\x06\x00" + b"\x05abc"
        self.assertEqual(replies.request(channel, header), header)

    def test_findNothingLive(self) -> None:
        """
        A well-made address whose consumer is not there finds nothing.
        """
        replies = DirectReplies()
        self.assertIsNone(replies.find(replies.address(1, "/"), "/"))
