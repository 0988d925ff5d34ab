"""
End-to-end tests: a real C{twistd qha} process driven with aio-pika (and
aiormq under it), the asyncio client, through connection, channels,
exchanges, queues, consuming, acknowledgements, publisher confirms,
transactions and errors.

Each test runs one coroutine with C{asyncio.run} inside a synchronous
trial test, bounded by L{TEST_TIMEOUT}; every wait inside is for an event,
with C{asyncio.wait_for}.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

import aio_pika
import aiormq
from aio_pika import ExchangeType, Message
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from pamqp import commands

from qha.test.integration.brokerprocess import BrokerTestCase, quietLoggers

TEST_TIMEOUT = 20.0
"""
The most seconds one test's coroutine may run.
"""

EVENT_TIMEOUT = 5.0
"""
The most seconds a test waits for one event.
"""


async def nextMessage(iterator: Any) -> AbstractIncomingMessage:
    """
    The next message of a queue iterator, waiting at most
    L{EVENT_TIMEOUT} seconds.
    """
    message: AbstractIncomingMessage = await asyncio.wait_for(
        iterator.__anext__(), EVENT_TIMEOUT
    )
    return message


async def ignore(message: AbstractIncomingMessage) -> None:
    """
    A consumer callback that leaves its messages unacknowledged.
    """


async def getAll(queue: AbstractQueue) -> list[bytes]:
    """
    Take every ready message of C{queue} with basic.get and no-ack.
    """
    bodies: list[bytes] = []
    while True:
        message = await queue.get(no_ack=True, fail=False)
        if message is None:
            return bodies
        bodies.append(message.body)


class AioPikaTestCase(BrokerTestCase):
    """
    Runs each test's coroutine with C{asyncio.run}.
    """

    def setUp(self) -> None:
        """
        Start (or reuse) the broker, and quiet aio-pika's and aiormq's
        warnings about the errors these tests cause on purpose.
        """
        super().setUp()
        quietLoggers(self, "aiormq", "aio_pika")

    @property
    def url(self) -> str:
        """
        The broker's URL with the guest user.
        """
        return f"amqp://guest:guest@{self.broker.host}:{self.broker.port}/"

    def runAsync(self, test: Callable[[], Awaitable[Any]]) -> Any:
        """
        Run C{test()} in a new event loop, for at most L{TEST_TIMEOUT}
        seconds.
        """

        async def bounded() -> Any:
            return await asyncio.wait_for(test(), TEST_TIMEOUT)

        return asyncio.run(bounded())

    async def aioConnect(self, **kwargs: Any) -> aio_pika.abc.AbstractConnection:
        """
        An aio-pika connection to the broker.
        """
        return await asyncio.wait_for(aio_pika.connect(self.url, **kwargs), EVENT_TIMEOUT)

    async def assertStillWorks(self, connection: aio_pika.abc.AbstractConnection) -> None:
        """
        Check that C{connection} still does a round trip on a new channel.
        """
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        await channel.default_exchange.publish(Message(b"still working"), queue.name)
        message = await queue.get(no_ack=True)
        self.assertEqual(message.body, b"still working")
        await channel.close()


class ConnectionTests(AioPikaTestCase):
    """
    Logging in with aio-pika, and refusals.
    """

    def test_roundTripWithConfirms(self) -> None:
        """
        A message published with confirms (aio-pika's default) is
        acknowledged by basic.ack and consumed with its properties intact.
        """

        async def test() -> None:
            async with await self.aioConnect() as connection:
                channel = await connection.channel()
                queue = await channel.declare_queue(exclusive=True)
                confirmation = await channel.default_exchange.publish(
                    Message(
                        b"hello",
                        content_type="text/plain",
                        headers={"n": 1, "s": "x"},
                        correlation_id="c",
                        message_id="m",
                        reply_to="r",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        priority=4,
                    ),
                    queue.name,
                )
                self.assertIsInstance(confirmation, commands.Basic.Ack)
                async with queue.iterator() as messages:
                    message = await nextMessage(messages)
                    await message.ack()
                self.assertEqual(message.body, b"hello")
                self.assertEqual(message.content_type, "text/plain")
                self.assertEqual(message.headers, {"n": 1, "s": "x"})
                self.assertEqual(
                    (message.correlation_id, message.message_id, message.reply_to),
                    ("c", "m", "r"),
                )
                self.assertEqual(message.delivery_mode, aio_pika.DeliveryMode.PERSISTENT)
                self.assertEqual(message.priority, 4)
                self.assertFalse(message.redelivered)

        self.runAsync(test)

    def test_badPassword(self) -> None:
        """
        A wrong password is refused with ACCESS_REFUSED, which aiormq
        reports as a probable authentication error.
        """

        async def test() -> None:
            url = self.url.replace("guest:guest", "guest:wrong")
            with self.assertRaises(aiormq.exceptions.ProbableAuthenticationError) as caught:
                await asyncio.wait_for(aio_pika.connect(url), EVENT_TIMEOUT)
            self.assertIn("ACCESS_REFUSED", str(caught.exception))
            async with await self.aioConnect() as connection:
                await self.assertStillWorks(connection)

        self.runAsync(test)

    def test_unknownVirtualHost(self) -> None:
        """
        A virtual host the broker does not have is refused with
        connection.close at connection.open.
        """

        async def test() -> None:
            with self.assertRaises(aiormq.exceptions.AMQPError) as caught:
                await asyncio.wait_for(aio_pika.connect(self.url + "nope"), EVENT_TIMEOUT)
            self.assertIn("Connection.Close", str(caught.exception))

        self.runAsync(test)

    def test_manyChannels(self) -> None:
        """
        Fifty channels of one connection work at the same time.
        """

        async def test() -> None:
            async with await self.aioConnect() as connection:

                async def useChannel(index: int) -> bytes:
                    channel = await connection.channel()
                    queue = await channel.declare_queue(exclusive=True)
                    await channel.default_exchange.publish(Message(b"%d" % index), queue.name)
                    message = await queue.get(no_ack=True)
                    await channel.close()
                    return message.body

                bodies = await asyncio.gather(*[useChannel(i) for i in range(50)])
                self.assertEqual(bodies, [b"%d" % i for i in range(50)])

        self.runAsync(test)


class RoutingTests(AioPikaTestCase):
    """
    Exchanges declared with aio-pika and the routing through them.
    """

    def test_directFanoutTopicHeaders(self) -> None:
        """
        Declared exchanges of each type route as their type says.
        """

        async def test() -> None:
            async with await self.aioConnect() as connection:
                channel = await connection.channel()
                direct = await channel.declare_exchange(
                    self.uniqueName("direct"), ExchangeType.DIRECT, auto_delete=True
                )
                fanout = await channel.declare_exchange(
                    self.uniqueName("fanout"), ExchangeType.FANOUT, auto_delete=True
                )
                topic = await channel.declare_exchange(
                    self.uniqueName("topic"), ExchangeType.TOPIC, auto_delete=True
                )
                headers = await channel.declare_exchange(
                    self.uniqueName("headers"), ExchangeType.HEADERS, auto_delete=True
                )
                directQueue = await channel.declare_queue(exclusive=True)
                await directQueue.bind(direct, "k")
                fanoutQueues = [await channel.declare_queue(exclusive=True) for _ in range(2)]
                for queue in fanoutQueues:
                    await queue.bind(fanout)
                topicQueue = await channel.declare_queue(exclusive=True)
                await topicQueue.bind(topic, "*.error.#")
                headersQueue = await channel.declare_queue(exclusive=True)
                await headersQueue.bind(
                    headers, arguments={"x-match": "any", "level": "error", "team": "db"}
                )
                await direct.publish(Message(b"k"), "k")
                await direct.publish(Message(b"other"), "other")
                await fanout.publish(Message(b"everyone"), "")
                for key in ["app.error", "app.error.disk.full", "error", "app.info"]:
                    await topic.publish(Message(key.encode()), key)
                for level, team in [("error", "web"), ("info", "db"), ("info", "web")]:
                    await headers.publish(
                        Message(b"%s/%s" % (level.encode(), team.encode()),
                                headers={"level": level, "team": team}),
                        "",
                    )
                self.assertEqual(await getAll(directQueue), [b"k"])
                for queue in fanoutQueues:
                    self.assertEqual(await getAll(queue), [b"everyone"])
                self.assertEqual(
                    await getAll(topicQueue), [b"app.error", b"app.error.disk.full"]
                )
                self.assertEqual(await getAll(headersQueue), [b"error/web", b"info/db"])

        self.runAsync(test)

    def test_exchangeToExchange(self) -> None:
        """
        An exchange bound to another receives what the other routes to it,
        until it is unbound.
        """

        async def test() -> None:
            async with await self.aioConnect() as connection:
                channel = await connection.channel()
                source = await channel.declare_exchange(
                    self.uniqueName("source"), ExchangeType.TOPIC
                )
                destination = await channel.declare_exchange(
                    self.uniqueName("destination"), ExchangeType.FANOUT
                )
                await destination.bind(source, "a.#")
                queue = await channel.declare_queue(exclusive=True)
                await queue.bind(destination)
                await source.publish(Message(b"1"), "a.b")
                await source.publish(Message(b"2"), "b.a")
                await destination.unbind(source, "a.#")
                await source.publish(Message(b"3"), "a.b")
                self.assertEqual(await getAll(queue), [b"1"])
                await source.delete()
                await destination.delete()

        self.runAsync(test)

    def test_mandatoryReturned(self) -> None:
        """
        A mandatory message nobody receives comes back with basic.return
        312 NO_ROUTE, which aio-pika hands back from publish.
        """

        async def test() -> None:
            async with await self.aioConnect() as connection:
                channel = await connection.channel()
                exchange = await channel.get_exchange("amq.direct")
                returned = await exchange.publish(
                    Message(b"lost"), self.uniqueName("nobody"), mandatory=True
                )
                assert isinstance(returned, aiormq.abc.DeliveredMessage), returned
                delivery = returned.delivery
                assert isinstance(delivery, commands.Basic.Return), delivery
                self.assertEqual(delivery.reply_code, 312)
                self.assertEqual(delivery.reply_text, "NO_ROUTE")
                self.assertEqual(returned.body, b"lost")

        self.runAsync(test)


class QueueTests(AioPikaTestCase):
    """
    Queue declare, purge and delete through aio-pika.
    """

    def test_declareCounts(self) -> None:
        """
        queue.declare-ok carries the message and consumer counts.
        """

        async def test() -> None:
            async with await self.aioConnect() as connection:
                channel = await connection.channel()
                name = self.uniqueName("q")
                queue = await channel.declare_queue(name, auto_delete=True)
                for index in range(3):
                    await channel.default_exchange.publish(Message(b"%d" % index), name)
                again = await channel.declare_queue(name, auto_delete=True)
                result = again.declaration_result
                self.assertEqual((result.message_count, result.consumer_count), (3, 0))
                consumerChannel = await connection.channel()
                await consumerChannel.set_qos(prefetch_count=1)
                consumerQueue = await consumerChannel.get_queue(name)
                await consumerQueue.consume(ignore)
                passive = await channel.declare_queue(name, passive=True)
                result = passive.declaration_result
                self.assertEqual((result.message_count, result.consumer_count), (2, 1))
                del queue

        self.runAsync(test)

    def test_serverNamed(self) -> None:
        """
        A queue declared without a name gets an amq.gen- name.
        """

        async def test() -> None:
            async with await self.aioConnect() as connection:
                channel = await connection.channel()
                queue = await channel.declare_queue(exclusive=True)
                self.assertTrue(queue.name.startswith("amq.gen-"), queue.name)

        self.runAsync(test)

    def test_purgeAndDelete(self) -> None:
        """
        purge says how many messages it dropped; delete if-empty and
        if-unused refuse with 406 when the queue is not empty or in use.
        """

        async def test() -> None:
            async with await self.aioConnect() as connection:
                channel = await connection.channel()
                name = self.uniqueName("q")
                queue = await channel.declare_queue(name)
                for index in range(4):
                    await channel.default_exchange.publish(Message(b"%d" % index), name)
                with self.assertRaises(aiormq.exceptions.ChannelPreconditionFailed):
                    await queue.delete(if_empty=True)
                channel = await connection.channel()
                queue = await channel.get_queue(name)
                purged = await queue.purge()
                self.assertEqual(purged.message_count, 4)
                tag = await queue.consume(ignore)
                with self.assertRaises(aiormq.exceptions.ChannelPreconditionFailed):
                    await queue.delete(if_unused=True)
                channel = await connection.channel()
                queue = await channel.get_queue(name)
                deleted = await queue.delete(if_unused=False, if_empty=True)
                self.assertEqual(deleted.message_count, 0)
                with self.assertRaises(aiormq.exceptions.ChannelNotFoundEntity):
                    await channel.get_queue(name)
                del tag

        self.runAsync(test)

    def test_channelErrors(self) -> None:
        """
        404, 405 and 406 close the channel with the matching aiormq
        exception; the connection keeps working.
        """

        async def test() -> None:
            async with await self.aioConnect() as owner, await self.aioConnect() as other:
                ownerChannel = await owner.channel()
                exclusive = await ownerChannel.declare_queue(exclusive=True)
                durable = self.uniqueName("durable")
                await ownerChannel.declare_queue(durable, durable=True)
                cases: list[tuple[type[Exception], Callable[[AbstractChannel], Awaitable[Any]]]] = [
                    (
                        aiormq.exceptions.ChannelNotFoundEntity,
                        lambda c: c.declare_queue(self.uniqueName("missing"), passive=True),
                    ),
                    (
                        aiormq.exceptions.ChannelLockedResource,
                        lambda c: c.declare_queue(exclusive.name, passive=True),
                    ),
                    (
                        aiormq.exceptions.ChannelPreconditionFailed,
                        lambda c: c.declare_queue(durable, durable=False),
                    ),
                    (
                        aiormq.exceptions.ChannelAccessRefused,
                        lambda c: c.declare_exchange("amq.reserved", ExchangeType.DIRECT),
                    ),
                ]
                for exception, attempt in cases:
                    channel = await other.channel()
                    with self.assertRaises(exception):
                        await attempt(channel)
                    self.assertTrue(channel.is_closed)
                    await self.assertStillWorks(other)
                cleanup = await owner.channel()
                await cleanup.queue_delete(durable)

        self.runAsync(test)

    def test_invalidReplicateLevel(self) -> None:
        """
        An invalid qpid.replicate value is refused with 406 naming the
        valid ones.
        """

        async def test() -> None:
            async with await self.aioConnect() as connection:
                channel = await connection.channel()
                with self.assertRaises(aiormq.exceptions.ChannelPreconditionFailed) as caught:
                    await channel.declare_queue(
                        self.uniqueName("q"), arguments={"qpid.replicate": "always"}
                    )
                self.assertIn("none, configuration, all", str(caught.exception))
                channel = await connection.channel()
                queue = await channel.declare_queue(
                    self.uniqueName("q"),
                    auto_delete=True,
                    arguments={"qpid.replicate": "configuration"},
                )
                await queue.delete()

        self.runAsync(test)


class ConsumeTests(AioPikaTestCase):
    """
    Consuming, acknowledgements, prefetch, cancel, get, transactions.
    """

    def test_ackNackReject(self) -> None:
        """
        nack with requeue redelivers (marked redelivered), reject without
        requeue drops, ack settles.
        """

        async def test() -> None:
            async with await self.aioConnect() as connection:
                channel = await connection.channel()
                queue = await channel.declare_queue(exclusive=True)
                for body in [b"a", b"b"]:
                    await channel.default_exchange.publish(Message(body), queue.name)
                async with queue.iterator() as messages:
                    first = await nextMessage(messages)
                    second = await nextMessage(messages)
                    self.assertEqual((first.body, second.body), (b"a", b"b"))
                    await first.nack(requeue=True)
                    again = await nextMessage(messages)
                    self.assertEqual((again.body, again.redelivered), (b"a", True))
                    await second.reject(requeue=False)
                    await again.ack()
                self.assertEqual(await getAll(queue), [])

        self.runAsync(test)

    def test_nackMultiple(self) -> None:
        """
        nack multiple without requeue drops every message up to the tag.
        """

        async def test() -> None:
            async with await self.aioConnect() as connection:
                channel = await connection.channel()
                queue = await channel.declare_queue(exclusive=True)
                for index in range(4):
                    await channel.default_exchange.publish(Message(b"%d" % index), queue.name)
                got = [await queue.get() for _ in range(3)]
                await got[2].nack(multiple=True, requeue=False)
                self.assertEqual(await getAll(queue), [b"3"])

        self.runAsync(test)

    def test_getEmpty(self) -> None:
        """
        basic.get on an empty queue is get-empty: L{None}, or QueueEmpty.
        """

        async def test() -> None:
            async with await self.aioConnect() as connection:
                channel = await connection.channel()
                queue = await channel.declare_queue(exclusive=True)
                self.assertIsNone(await queue.get(fail=False))
                with self.assertRaises(aio_pika.exceptions.QueueEmpty):
                    await queue.get()

        self.runAsync(test)

    def test_prefetch(self) -> None:
        """
        With prefetch_count 1 a consumer gets the next message only after
        acknowledging the last.
        """

        async def test() -> None:
            async with await self.aioConnect() as connection:
                channel = await connection.channel()
                await channel.set_qos(prefetch_count=1)
                queue = await channel.declare_queue(exclusive=True)
                for index in range(3):
                    await channel.default_exchange.publish(Message(b"%d" % index), queue.name)
                async with queue.iterator() as messages:
                    first = await nextMessage(messages)
                    probe = await connection.channel()
                    passive = await probe.declare_queue(queue.name, passive=True)
                    self.assertEqual(passive.declaration_result.message_count, 2)
                    await first.ack()
                    second = await nextMessage(messages)
                    self.assertEqual((first.body, second.body), (b"0", b"1"))
                    await second.ack()

        self.runAsync(test)

    def test_cancel(self) -> None:
        """
        After basic.cancel the consumer gets nothing and the queue keeps
        what comes later.
        """

        async def test() -> None:
            async with await self.aioConnect() as connection:
                channel = await connection.channel()
                queue = await channel.declare_queue(exclusive=True)
                received: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
                tag = await queue.consume(received.put, no_ack=True)
                await channel.default_exchange.publish(Message(b"1"), queue.name)
                message = await asyncio.wait_for(received.get(), EVENT_TIMEOUT)
                self.assertEqual(message.body, b"1")
                await queue.cancel(tag)
                await channel.default_exchange.publish(Message(b"2"), queue.name)
                self.assertEqual(await getAll(queue), [b"2"])
                self.assertTrue(received.empty())

        self.runAsync(test)

    def test_brokerCancel(self) -> None:
        """
        Deleting a queue cancels its consumers: aiormq gets basic.cancel
        from the broker and calls its consumer-cancel callbacks.
        """

        async def test() -> None:
            async with await self.aioConnect() as connection:
                channel = await connection.channel()
                name = self.uniqueName("q")
                queue = await channel.declare_queue(name)
                cancelled: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                underlay = await channel.get_underlay_channel()

                def onCancel(frame: Any) -> None:
                    if not cancelled.done():
                        cancelled.set_result(frame)

                underlay.on_consumer_cancel_callbacks.add(onCancel)
                tag = await queue.consume(ignore)
                other = await connection.channel()
                await other.queue_delete(name)
                frame = await asyncio.wait_for(cancelled, EVENT_TIMEOUT)
                self.assertIsInstance(frame, commands.Basic.Cancel)
                self.assertEqual(frame.consumer_tag, tag)
                self.assertFalse(channel.is_closed)

        self.runAsync(test)

    def test_transactions(self) -> None:
        """
        Publishes in a transaction arrive at commit, and never after a
        rollback.
        """

        async def test() -> None:
            async with await self.aioConnect() as connection:
                channel = await connection.channel(publisher_confirms=False)
                queue = await channel.declare_queue(exclusive=True)
                transaction = channel.transaction()
                await transaction.select()
                await channel.default_exchange.publish(Message(b"rolled back"), queue.name)
                await transaction.rollback()
                await channel.default_exchange.publish(Message(b"committed"), queue.name)
                probe = await connection.channel()
                passive = await probe.declare_queue(queue.name, passive=True)
                self.assertEqual(passive.declaration_result.message_count, 0)
                await transaction.commit()
                self.assertEqual(await getAll(queue), [b"committed"])

        self.runAsync(test)

    def test_connectionErrorClosesOnlyThatConnection(self) -> None:
        """
        basic.qos with prefetch_size is 540 NOT_IMPLEMENTED, a connection
        error: that connection closes, others carry on.
        """

        async def test() -> None:
            async with await self.aioConnect() as bystander:
                connection = await self.aioConnect()
                channel = await connection.channel()
                underlay = await channel.get_underlay_channel()
                with self.assertRaises(aiormq.exceptions.ConnectionNotImplemented) as caught:
                    await channel.set_qos(prefetch_size=4096)
                self.assertIn("prefetch_size", str(caught.exception))
                self.assertTrue(underlay.connection.is_closed)
                with self.assertRaises(RuntimeError):
                    await connection.channel()
                await self.assertStillWorks(bystander)

        self.runAsync(test)


class MoreFeaturesTests(AioPikaTestCase):
    """
    The rest of the features through aio-pika: exclusive consumers, global
    prefetch, recover, exchange declare and delete options, unbind.
    """

    def test_exclusiveConsumer(self) -> None:
        """
        A second consumer on a queue consumed exclusively is refused with
        403.
        """

        async def test() -> None:
            async with await self.aioConnect() as connection:
                channel = await connection.channel()
                queue = await channel.declare_queue(exclusive=True)
                await queue.consume(ignore, exclusive=True)
                other = await connection.channel()
                otherQueue = await other.get_queue(queue.name)
                with self.assertRaises(aiormq.exceptions.ChannelAccessRefused):
                    await otherQueue.consume(ignore)
                await self.assertStillWorks(connection)

        self.runAsync(test)

    def test_globalPrefetch(self) -> None:
        """
        A global prefetch of 2 holds the whole channel to two
        unacknowledged messages across two consumers.
        """

        async def test() -> None:
            async with await self.aioConnect() as connection:
                channel = await connection.channel()
                await channel.set_qos(prefetch_count=2, global_=True)
                first = await channel.declare_queue(exclusive=True)
                second = await channel.declare_queue(exclusive=True)
                for queue in (first, second):
                    for index in range(3):
                        await channel.default_exchange.publish(
                            Message(b"%d" % index), queue.name
                        )
                received: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
                await first.consume(received.put)
                await second.consume(received.put)
                held = [await asyncio.wait_for(received.get(), EVENT_TIMEOUT) for _ in range(2)]
                probe = await connection.channel()
                ready = 0
                for queue in (first, second):
                    passive = await probe.declare_queue(queue.name, passive=True)
                    ready += passive.declaration_result.message_count or 0
                self.assertEqual(ready, 4)
                self.assertTrue(received.empty())
                for message in held:
                    await message.ack()
                more = [await asyncio.wait_for(received.get(), EVENT_TIMEOUT) for _ in range(2)]
                self.assertEqual(len(more), 2)

        self.runAsync(test)

    def test_recover(self) -> None:
        """
        basic.recover redelivers what the channel holds, marked
        redelivered.
        """

        async def test() -> None:
            async with await self.aioConnect() as connection:
                channel = await connection.channel()
                queue = await channel.declare_queue(exclusive=True)
                await channel.default_exchange.publish(Message(b"again"), queue.name)
                async with queue.iterator() as messages:
                    first = await nextMessage(messages)
                    self.assertFalse(first.redelivered)
                    underlay = await channel.get_underlay_channel()
                    await underlay.basic_recover(requeue=True)
                    second = await nextMessage(messages)
                    self.assertEqual((second.body, second.redelivered), (b"again", True))
                    await second.ack()

        self.runAsync(test)

    def test_exchangeOptions(self) -> None:
        """
        Passive declare of a missing exchange is 404; a durable exchange
        redeclared as transient is 406; delete if-unused of a bound exchange
        is 406; after unbinding it deletes.
        """

        async def test() -> None:
            async with await self.aioConnect() as connection:
                channel = await connection.channel()
                with self.assertRaises(aiormq.exceptions.ChannelNotFoundEntity):
                    await channel.get_exchange(self.uniqueName("missing"), ensure=True)
                channel = await connection.channel()
                name = self.uniqueName("x")
                exchange = await channel.declare_exchange(name, ExchangeType.DIRECT, durable=True)
                with self.assertRaises(aiormq.exceptions.ChannelPreconditionFailed):
                    await channel.declare_exchange(name, ExchangeType.DIRECT, durable=False)
                channel = await connection.channel()
                exchange = await channel.get_exchange(name)
                queue = await channel.declare_queue(exclusive=True)
                await queue.bind(exchange, "k")
                with self.assertRaises(aiormq.exceptions.ChannelPreconditionFailed):
                    await exchange.delete(if_unused=True)
                channel = await connection.channel()
                exchange = await channel.get_exchange(name)
                queue = await channel.get_queue(queue.name)
                await exchange.publish(Message(b"bound"), "k")
                await queue.unbind(exchange, "k")
                await exchange.publish(Message(b"unbound"), "k")
                self.assertEqual(await getAll(queue), [b"bound"])
                await exchange.delete(if_unused=True)
                with self.assertRaises(aiormq.exceptions.ChannelNotFoundEntity):
                    await channel.get_exchange(name, ensure=True)

        self.runAsync(test)

    def test_internalExchange(self) -> None:
        """
        An internal exchange refuses publishes (403) but receives through an
        exchange-to-exchange binding.
        """

        async def test() -> None:
            async with await self.aioConnect() as connection:
                channel = await connection.channel()
                internal = await channel.declare_exchange(
                    self.uniqueName("internal"), ExchangeType.FANOUT,
                    internal=True, auto_delete=True,
                )
                public = await channel.declare_exchange(
                    self.uniqueName("public"), ExchangeType.FANOUT, auto_delete=True
                )
                await internal.bind(public)
                queue = await channel.declare_queue(exclusive=True)
                await queue.bind(internal)
                await public.publish(Message(b"through"), "")
                self.assertEqual(await getAll(queue), [b"through"])
                # aio-pika refuses to publish to an exchange it declared as
                # internal; one it merely looked up by name it sends.
                unknowing = await channel.get_exchange(internal.name, ensure=False)
                with self.assertRaises(aiormq.exceptions.ChannelAccessRefused):
                    await unknowing.publish(Message(b"direct"), "")
                await self.assertStillWorks(connection)

        self.runAsync(test)
