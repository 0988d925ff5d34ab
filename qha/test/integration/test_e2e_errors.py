"""
End-to-end tests of the broker's errors, with pika and, where no client
library would send the faulty method, a raw socket.

A channel error (403, 404, 405, 406) must close only the channel it
happened on: the tests check the reply code, that the channel is closed,
that another channel of the same connection keeps receiving, and that the
connection still does a round trip. A connection error (503, 504, 530, 540)
closes the whole connection: the tests check the reply code and that
another connection carries on.
"""

from __future__ import annotations

import struct
from typing import Any, Callable

from pamqp import commands
from pika import frame as pikaFrame
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.exceptions import ChannelClosedByBroker, ConnectionClosedByBroker
from pika.spec import BasicProperties

from qha.test.integration.brokerprocess import BrokerTestCase, methodFrame, rawFrame

MAX_MESSAGE_SIZE = 65536
"""
The C{--max-message-size} of the broker these tests use.
"""


class Bystander:
    """
    A consumer on its own queue, on a connection whose other channel is
    about to fail: it shows that the failure did not reach it.
    """

    def __init__(self, test: BrokerTestCase, connection: BlockingConnection) -> None:
        """
        Open a channel on C{connection}, declare a queue and consume it.
        """
        self.test = test
        self.connection = connection
        self.channel = connection.channel()
        self.queue = self.channel.queue_declare("", exclusive=True).method.queue
        self.received: list[bytes] = []
        self.channel.basic_consume(
            self.queue, lambda ch, method, properties, body: self.received.append(body),
            auto_ack=True,
        )

    def assertStillReceives(self) -> None:
        """
        A message published now on the bystander's channel reaches its
        consumer.
        """
        expected = len(self.received) + 1
        self.channel.basic_publish("", self.queue, b"after the error")
        self.test.waitFor(
            self.connection, lambda: len(self.received) == expected,
            what="the bystander's delivery",
        )
        self.test.assertEqual(self.received[-1], b"after the error")


class ErrorTestCase(BrokerTestCase):
    """
    Helpers that provoke one error and check its reply code and its reach.
    """

    brokerArguments = ["--max-message-size", str(MAX_MESSAGE_SIZE)]

    def assertChannelError(
        self,
        code: int,
        action: Callable[[BlockingChannel], Any],
        connection: BlockingConnection | None = None,
    ) -> ChannelClosedByBroker:
        """
        C{action} on a new channel fails with channel error C{code}; only
        that channel closes.

        @param action: does something wrong, then (if what it did has no
            reply) something that waits for one, so that the error shows.
        @return: the exception, for checks of its text.
        """
        if connection is None:
            connection = self.connect()
        bystander = Bystander(self, connection)
        channel = connection.channel()
        with self.assertRaises(ChannelClosedByBroker) as caught:
            action(channel)
        self.assertEqual(caught.exception.reply_code, code, caught.exception.reply_text)
        self.assertTrue(channel.is_closed)
        self.assertTrue(connection.is_open)
        bystander.assertStillReceives()
        self.assertConnectionWorks(connection)
        return caught.exception

    def assertConnectionError(
        self, code: int, action: Callable[[BlockingChannel], Any]
    ) -> ConnectionClosedByBroker:
        """
        C{action} on a channel of a new connection fails with connection
        error C{code}: that connection closes, another carries on.

        @return: the exception, for checks of its text.
        """
        bystander = Bystander(self, self.connect())
        connection = self.connect()
        with self.assertRaises(ConnectionClosedByBroker) as caught:
            action(connection.channel())
        self.assertEqual(caught.exception.reply_code, code, caught.exception.reply_text)
        self.assertTrue(connection.is_closed)
        bystander.assertStillReceives()
        return caught.exception

    def assertRawConnectionError(self, code: int, *frames: bytes, channel: int = 1) -> Any:
        """
        After a handshake and opening C{channel}, C{frames} make the broker
        close the connection with C{code}; another connection carries on.

        @return: the connection.close method.
        """
        bystander = Bystander(self, self.connect())
        raw = self.raw()
        raw.handshake()
        if channel:
            raw.openChannel(channel)
        raw.send(b"".join(frames))
        close = raw.expectConnectionClose()
        self.assertEqual(close.reply_code, code, close.reply_text)
        bystander.assertStillReceives()
        return close


class AccessRefusedTests(ErrorTestCase):
    """
    403 ACCESS_REFUSED, a channel error.
    """

    def test_reservedExchangeName(self) -> None:
        """
        Declaring an exchange named amq.* is refused.
        """
        error = self.assertChannelError(
            403, lambda c: c.exchange_declare("amq.mine", "direct")
        )
        self.assertIn("amq.", error.reply_text)

    def test_reservedQueueName(self) -> None:
        """
        Declaring a queue named amq.* is refused.
        """
        self.assertChannelError(403, lambda c: c.queue_declare("amq.mine"))

    def test_deleteBuiltInExchange(self) -> None:
        """
        The built-in exchanges cannot be deleted.
        """
        self.assertChannelError(403, lambda c: c.exchange_delete("amq.direct"))

    def test_defaultExchange(self) -> None:
        """
        Nothing may be bound to the default exchange.
        """

        def bind(channel: BlockingChannel) -> None:
            queue = channel.queue_declare("", exclusive=True).method.queue
            channel.queue_bind(queue, "", "key")

        self.assertChannelError(403, bind)

    def test_publishToInternal(self) -> None:
        """
        Publishing to an internal exchange is refused.
        """
        connection = self.connect()
        name = self.uniqueName("internal")
        connection.channel().exchange_declare(name, "fanout", internal=True)

        def publish(channel: BlockingChannel) -> None:
            channel.basic_publish(name, "", b"x")
            channel.queue_declare("", exclusive=True)

        self.assertChannelError(403, publish, connection)
        connection.channel().exchange_delete(name)

    def test_exclusiveConsumer(self) -> None:
        """
        A second consumer on a queue with an exclusive consumer is refused.
        """
        connection = self.connect()
        owner = connection.channel()
        queue = owner.queue_declare("", exclusive=True).method.queue
        owner.basic_consume(queue, lambda *args: None, exclusive=True)
        self.assertChannelError(
            403, lambda c: c.basic_consume(queue, lambda *args: None), connection
        )


class NotFoundTests(ErrorTestCase):
    """
    404 NOT_FOUND, a channel error.
    """

    def test_passiveQueue(self) -> None:
        """
        A passive declare of a missing queue.
        """
        error = self.assertChannelError(
            404, lambda c: c.queue_declare(self.uniqueName("missing"), passive=True)
        )
        self.assertIn("missing", error.reply_text)

    def test_passiveExchange(self) -> None:
        """
        A passive declare of a missing exchange.
        """
        self.assertChannelError(
            404, lambda c: c.exchange_declare(self.uniqueName("missing"), passive=True)
        )

    def test_publishToMissingExchange(self) -> None:
        """
        Publishing to a missing exchange.
        """

        def publish(channel: BlockingChannel) -> None:
            channel.basic_publish(self.uniqueName("missing"), "k", b"x")
            channel.queue_declare("", exclusive=True)

        self.assertChannelError(404, publish)

    def test_bindMissingQueue(self) -> None:
        """
        Binding a missing queue.
        """
        self.assertChannelError(
            404, lambda c: c.queue_bind(self.uniqueName("missing"), "amq.direct", "k")
        )

    def test_bindMissingExchange(self) -> None:
        """
        exchange.bind with a missing source.
        """
        self.assertChannelError(
            404, lambda c: c.exchange_bind("amq.fanout", self.uniqueName("missing"), "k")
        )

    def test_consumeMissingQueue(self) -> None:
        """
        Consuming from a missing queue.
        """
        self.assertChannelError(
            404, lambda c: c.basic_consume(self.uniqueName("missing"), lambda *args: None)
        )

    def test_getMissingQueue(self) -> None:
        """
        basic.get from a missing queue.
        """
        self.assertChannelError(404, lambda c: c.basic_get(self.uniqueName("missing")))

    def test_purgeMissingQueue(self) -> None:
        """
        Purging a missing queue.
        """
        self.assertChannelError(404, lambda c: c.queue_purge(self.uniqueName("missing")))


class ResourceLockedTests(ErrorTestCase):
    """
    405 RESOURCE_LOCKED: another connection's exclusive queue.
    """

    def test_exclusiveQueueOfAnotherConnection(self) -> None:
        """
        Every use of another connection's exclusive queue is refused with
        405, each time closing only the channel.
        """
        owner = self.connect()
        queue = self.uniqueName("exclusive")
        owner.channel().queue_declare(queue, exclusive=True)
        other = self.connect()
        for action in [
            lambda c: c.queue_declare(queue, passive=True),
            lambda c: c.queue_declare(queue, exclusive=True),
            lambda c: c.queue_declare(queue),
            lambda c: c.queue_bind(queue, "amq.fanout"),
            lambda c: c.basic_consume(queue, lambda *args: None),
            lambda c: c.basic_get(queue),
            lambda c: c.queue_purge(queue),
            lambda c: c.queue_delete(queue),
        ]:
            error = self.assertChannelError(405, action, other)
            self.assertIn(queue, error.reply_text)
        owner.channel().queue_declare(queue, passive=True)


class PreconditionFailedTests(ErrorTestCase):
    """
    406 PRECONDITION_FAILED, a channel error.
    """

    def test_inequivalentQueueArguments(self) -> None:
        """
        Declaring a queue again with another x- argument.
        """
        connection = self.connect()
        queue = self.uniqueName("q")
        connection.channel().queue_declare(queue, arguments={"x-message-ttl": 1000})
        error = self.assertChannelError(
            406,
            lambda c: c.queue_declare(queue, arguments={"x-message-ttl": 2000}),
            connection,
        )
        self.assertIn("x-message-ttl", error.reply_text)
        connection.channel().queue_delete(queue)

    def test_inequivalentExchangeType(self) -> None:
        """
        Declaring amq.direct as a fanout exchange.
        """
        self.assertChannelError(406, lambda c: c.exchange_declare("amq.direct", "fanout"))

    def test_unknownDeliveryTag(self) -> None:
        """
        Acknowledging a delivery tag that was never sent.
        """

        def ack(channel: BlockingChannel) -> None:
            channel.basic_ack(99)
            channel.queue_declare("", exclusive=True)

        error = self.assertChannelError(406, ack)
        self.assertIn("99", error.reply_text)

    def test_doubleAck(self) -> None:
        """
        Acknowledging the same delivery twice.
        """

        def ack(channel: BlockingChannel) -> None:
            queue = channel.queue_declare("", exclusive=True).method.queue
            channel.basic_publish("", queue, b"x")
            method, _, _ = channel.basic_get(queue)
            channel.basic_ack(method.delivery_tag)
            channel.basic_ack(method.delivery_tag)
            channel.queue_declare("", exclusive=True)

        self.assertChannelError(406, ack)

    def test_deleteIfUnused(self) -> None:
        """
        Deleting a queue in use with if-unused.
        """
        connection = self.connect()
        queue = self.uniqueName("q")
        owner = connection.channel()
        owner.queue_declare(queue, auto_delete=True)
        owner.basic_consume(queue, lambda *args: None)
        self.assertChannelError(
            406, lambda c: c.queue_delete(queue, if_unused=True), connection
        )

    def test_deleteIfEmpty(self) -> None:
        """
        Deleting a queue that holds messages with if-empty.
        """

        def delete(channel: BlockingChannel) -> None:
            queue = channel.queue_declare("", exclusive=True).method.queue
            channel.basic_publish("", queue, b"x")
            channel.queue_delete(queue, if_empty=True)

        self.assertChannelError(406, delete)

    def test_invalidReplicate(self) -> None:
        """
        An invalid qpid.replicate level; the text names the valid ones.
        """
        error = self.assertChannelError(
            406,
            lambda c: c.queue_declare(
                self.uniqueName("q"), arguments={"qpid.replicate": "sometimes"}
            ),
        )
        self.assertIn("none, configuration, all", error.reply_text)

    def test_invalidXMatch(self) -> None:
        """
        A headers binding with an x-match other than all or any.
        """

        def bind(channel: BlockingChannel) -> None:
            queue = channel.queue_declare("", exclusive=True).method.queue
            channel.queue_bind(queue, "amq.headers", arguments={"x-match": "most"})

        self.assertChannelError(406, bind)

    def test_messageTooLarge(self) -> None:
        """
        A message body larger than C{--max-message-size}.
        """

        def publish(channel: BlockingChannel) -> None:
            queue = channel.queue_declare("", exclusive=True).method.queue
            channel.basic_publish("", queue, b"x" * (MAX_MESSAGE_SIZE + 1))
            channel.queue_declare("", exclusive=True)

        error = self.assertChannelError(406, publish)
        self.assertIn(str(MAX_MESSAGE_SIZE), error.reply_text)

    def test_largestMessageAccepted(self) -> None:
        """
        A message of exactly C{--max-message-size} bytes is accepted.
        """
        channel = self.channel()
        queue = channel.queue_declare("", exclusive=True).method.queue
        body = b"y" * MAX_MESSAGE_SIZE
        channel.basic_publish("", queue, body)
        self.assertEqual(channel.basic_get(queue, auto_ack=True)[2], body)

    def test_confirmAfterTx(self) -> None:
        """
        confirm.select on a transactional channel.
        """

        def select(channel: BlockingChannel) -> None:
            channel.tx_select()
            channel.confirm_delivery()

        self.assertChannelError(406, select)

    def test_commitWithoutSelect(self) -> None:
        """
        tx.commit on a channel that is not transactional.
        """
        self.assertChannelError(406, lambda c: c.tx_commit())


class ConnectionErrorTests(ErrorTestCase):
    """
    Connection errors: 503, 504, 530 and 540 close the whole connection.
    """

    def test_reusedConsumerTag(self) -> None:
        """
        530 NOT_ALLOWED: a consumer tag used twice on one channel. (pika
        and aio-pika refuse this themselves, so it goes over a raw socket.)
        """
        close = self.assertRawConnectionError(
            530,
            methodFrame(1, commands.Queue.Declare(queue="", exclusive=True)),
            methodFrame(1, commands.Basic.Consume(queue="", consumer_tag="tag")),
            methodFrame(1, commands.Basic.Consume(queue="", consumer_tag="tag")),
        )
        self.assertIn("'tag'", close.reply_text)

    def test_prefetchSize(self) -> None:
        """
        540 NOT_IMPLEMENTED: basic.qos with prefetch_size other than 0.
        """
        error = self.assertConnectionError(540, lambda c: c.basic_qos(prefetch_size=1024))
        self.assertIn("prefetch_size", error.reply_text)

    def test_recoverWithoutRequeue(self) -> None:
        """
        540 NOT_IMPLEMENTED: basic.recover with requeue=false.
        """
        self.assertConnectionError(540, lambda c: c.basic_recover(requeue=False))

    def test_immediate(self) -> None:
        """
        540 NOT_IMPLEMENTED: basic.publish with immediate=true, which no
        client library still sends.
        """
        close = self.assertRawConnectionError(
            540,
            methodFrame(1, commands.Basic.Publish(routing_key="k", immediate=True)),
        )
        self.assertIn("immediate", close.reply_text)

    def test_unknownExchangeType(self) -> None:
        """
        503 COMMAND_INVALID: an exchange type the broker does not know.
        """
        error = self.assertConnectionError(
            503, lambda c: c.exchange_declare(self.uniqueName("x"), "no-such-type")
        )
        self.assertIn("no-such-type", error.reply_text)

    def test_methodOnClosedChannel(self) -> None:
        """
        504 CHANNEL_ERROR: a method on a channel that was never opened.
        """
        self.assertRawConnectionError(
            504, methodFrame(7, commands.Queue.Declare(queue="", exclusive=True))
        )

    def test_channelOpenedTwice(self) -> None:
        """
        504 CHANNEL_ERROR: channel.open on a channel that is open.
        """
        self.assertRawConnectionError(504, methodFrame(1, commands.Channel.Open()))

    def test_unsolicitedCloseOk(self) -> None:
        """
        504 CHANNEL_ERROR: channel.close-ok that answers no channel.close.
        """
        self.assertRawConnectionError(504, methodFrame(1, commands.Channel.CloseOk()))

    def test_contentOnWrongChannel(self) -> None:
        """
        504 CHANNEL_ERROR: a content header on a channel that is not open.
        """
        self.assertRawConnectionError(
            504, rawFrame(2, 9, struct.pack(">HHQH", 60, 0, 1, 0))
        )

    def test_channelErrorThenConnectionError(self) -> None:
        """
        After a channel error the connection is still usable, and a later
        connection error on it is still reported with its own code.
        """
        connection = self.connect()
        with self.assertRaises(ChannelClosedByBroker) as caught:
            connection.channel().queue_declare(self.uniqueName("missing"), passive=True)
        self.assertEqual(caught.exception.reply_code, 404)
        with self.assertRaises(ConnectionClosedByBroker) as closed:
            connection.channel().basic_qos(prefetch_size=1)
        self.assertEqual(closed.exception.reply_code, 540)


class RawChannelErrorTests(ErrorTestCase):
    """
    Channel errors seen on the wire: the broker sends channel.close with the
    reply code and the class and method that failed, ignores what the client
    sends on that channel until channel.close-ok, then lets the channel be
    opened again.
    """

    def test_channelCloseOnTheWire(self) -> None:
        """
        A passive declare of a missing queue: channel.close 404 naming
        queue.declare (class 50, method 10); frames sent before close-ok are
        ignored; the channel number can be reused after it.
        """
        raw = self.raw()
        raw.handshake()
        raw.openChannel(1)
        raw.openChannel(2)
        raw.sendMethod(1, commands.Queue.Declare(queue=self.uniqueName("missing"), passive=True))
        channel, close = raw.readMethod()
        self.assertEqual(channel, 1)
        self.assertIsInstance(close, commands.Channel.Close)
        self.assertEqual((close.reply_code, close.class_id, close.method_id), (404, 50, 10))
        raw.sendMethod(1, commands.Queue.Declare(queue="", exclusive=True))
        raw.send(
            methodFrame(1, commands.Basic.Publish(routing_key="x"))
            + rawFrame(2, 1, struct.pack(">HHQH", 60, 0, 1, 0))
            + rawFrame(3, 1, b"x")
        )
        raw.sendMethod(1, commands.Channel.CloseOk())
        raw.sendMethod(2, commands.Queue.Declare(queue="", exclusive=True))
        channel, declareOk = raw.readMethod()
        self.assertEqual((channel, type(declareOk)), (2, commands.Queue.DeclareOk))
        raw.openChannel(1)
        raw.sendMethod(1, commands.Queue.Declare(queue="", exclusive=True))
        channel, declareOk = raw.readMethod()
        self.assertEqual((channel, type(declareOk)), (1, commands.Queue.DeclareOk))

    def test_publishErrorAndProperties(self) -> None:
        """
        A publish to a missing exchange closes the channel with 404 naming
        basic.publish (class 60, method 40), even with properties and a body
        in the frames that follow.
        """
        raw = self.raw()
        raw.handshake()
        raw.openChannel(1)
        properties = BasicProperties(content_type="text/plain", headers={"a": 1})
        header = pikaFrame.Header(1, 5, properties).marshal()
        raw.send(
            methodFrame(1, commands.Basic.Publish(exchange=self.uniqueName("missing")))
            + header
            + rawFrame(3, 1, b"hello")
        )
        channel, close = raw.readMethod()
        self.assertEqual(
            (channel, close.reply_code, close.class_id, close.method_id), (1, 404, 60, 40)
        )
        raw.sendMethod(1, commands.Channel.CloseOk())
        raw.openChannel(1)
