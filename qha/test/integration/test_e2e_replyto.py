"""
End-to-end tests of direct reply-to (C{amq.rabbitmq.reply-to}, see
L{qha.amqp.replyto}): a real C{twistd qha} process, an RPC client and an RPC
server on connections of their own, with pika and with aio-pika; and a
cluster whose primary dies between a request and its reply.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
import pika
from aio_pika.abc import AbstractIncomingMessage
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import ChannelClosedByBroker, UnroutableError
from pika.spec import Basic, BasicProperties

from qha.test.integration.brokerprocess import BrokerTestCase, waitUntil
from qha.test.integration.test_e2e_aiopika import EVENT_TIMEOUT, AioPikaTestCase
from qha.test.integration.test_ha_failover import ALL, FailoverTestCase

REPLY_QUEUE = "amq.rabbitmq.reply-to"


class PikaRPCTests(BrokerTestCase):
    """
    An RPC round trip with pika's blocking client, as in RabbitMQ's sixth
    tutorial with direct reply-to.
    """

    def serve(self, requests: str) -> BlockingChannel:
        """
        An RPC server on a connection of its own: a channel that consumes
        C{requests} and answers each with its body upper-cased, to its
        C{reply_to}, with its correlation id.
        """
        channel = self.channel()

        def answer(
            channel: BlockingChannel, deliver: Basic.Deliver, props: BasicProperties, body: bytes
        ) -> None:
            channel.basic_publish(
                "",
                props.reply_to,
                body.upper(),
                BasicProperties(correlation_id=props.correlation_id),
            )
            channel.basic_ack(deliver.delivery_tag)

        channel.basic_consume(requests, answer)
        return channel

    def test_roundTrip(self) -> None:
        """
        The client consumes from C{amq.rabbitmq.reply-to} without declaring
        it, publishes requests with that C{reply_to}; the server, on another
        connection, sees a generated address and publishes its replies
        there; the client gets each reply, with its correlation id, on its
        reply consumer.
        """
        requests = self.uniqueName("requests")
        client = self.connect()
        channel = client.channel()
        channel.queue_declare(requests, exclusive=False, auto_delete=True)
        replies: list[tuple[str, str, str, bytes]] = []

        def onReply(
            channel: BlockingChannel, deliver: Basic.Deliver, props: BasicProperties, body: bytes
        ) -> None:
            replies.append((deliver.consumer_tag, deliver.routing_key, props.correlation_id, body))

        tag = channel.basic_consume(REPLY_QUEUE, onReply, auto_ack=True)
        server = self.serve(requests)
        for number in range(3):
            channel.basic_publish(
                "",
                requests,
                f"request {number}".encode(),
                BasicProperties(reply_to=REPLY_QUEUE, correlation_id=f"c{number}"),
            )
        self.waitFor(
            client,
            lambda: (server.connection.process_data_events(time_limit=0), len(replies) == 3)[1],
            what="three replies",
        )
        self.assertEqual([(t, c, b) for t, _, c, b in replies], [
            (tag, "c0", b"REQUEST 0"),
            (tag, "c1", b"REQUEST 1"),
            (tag, "c2", b"REQUEST 2"),
        ])
        [address] = {address for _, address, _, _ in replies}
        self.assertTrue(address.startswith(REPLY_QUEUE + "."), address)

    def test_requesterGone(self) -> None:
        """
        A server may check that its client is still there by declaring the
        reply address passively; once the client has closed its channel the
        declare is 404, and a reply published with mandatory and confirms
        comes back unroutable. A reply to a live client, mandatory too, is
        confirmed and not returned.
        """
        requests = self.uniqueName("requests")
        client = self.connect()
        channel = client.channel()
        channel.queue_declare(requests, auto_delete=True)
        got: list[bytes] = []
        channel.basic_consume(REPLY_QUEUE, lambda c, d, p, body: got.append(body), auto_ack=True)
        channel.basic_publish("", requests, b"ping", BasicProperties(reply_to=REPLY_QUEUE))
        server = self.channel()
        server.confirm_delivery()
        [method, props, _] = self.waitFor(
            server.connection,
            lambda: (lambda got: got if got[0] is not None else None)(server.basic_get(requests, auto_ack=True)),
            what="the request",
        )
        address = props.reply_to
        check = self.channel()
        self.assertEqual(check.queue_declare(address, passive=True).method.consumer_count, 1)
        server.basic_publish("", address, b"pong", mandatory=True)
        self.waitFor(client, lambda: got == [b"pong"], what="the reply")

        channel.close()
        with self.assertRaises(ChannelClosedByBroker) as caught:
            check.queue_declare(address, passive=True)
        self.assertEqual(caught.exception.reply_code, 404)
        with self.assertRaises(UnroutableError):
            server.basic_publish("", address, b"pong", mandatory=True)

    def test_consumeWithAcks(self) -> None:
        """
        Consuming the pseudo-queue with acknowledgements is refused with
        RabbitMQ's 406 and text.
        """
        channel = self.channel()
        with self.assertRaises(ChannelClosedByBroker) as caught:
            channel.basic_consume(REPLY_QUEUE, lambda *args: None, auto_ack=False)
        self.assertEqual(
            (caught.exception.reply_code, caught.exception.reply_text),
            (406, "PRECONDITION_FAILED - reply consumer cannot acknowledge"),
        )

    def test_capability(self) -> None:
        """
        The broker announces C{direct_reply_to}.
        """
        connection = self.connect()
        self.assertTrue(connection._impl.server_capabilities["direct_reply_to"])


class AioPikaRPCTests(AioPikaTestCase):
    """
    Direct reply-to with aio-pika: the pseudo-queue is declared passively
    (as aio-pika's users do to get a queue object) and consumed with
    C{no_ack}; publisher confirms are on, aio-pika's default.
    """

    def test_roundTrip(self) -> None:
        """
        Requests on one connection, an RPC server on another: each reply
        comes back to the future waiting for its correlation id.
        """
        requests = self.uniqueName("requests")

        async def test() -> None:
            async with await self.aioConnect() as serverConnection, await self.aioConnect() as clientConnection:
                serverChannel = await serverConnection.channel()
                queue = await serverChannel.declare_queue(requests, auto_delete=True)

                async def answer(message: AbstractIncomingMessage) -> None:
                    async with message.process():
                        assert message.reply_to is not None
                        await serverChannel.default_exchange.publish(
                            aio_pika.Message(message.body[::-1], correlation_id=message.correlation_id),
                            message.reply_to,
                        )

                await queue.consume(answer)

                channel = await clientConnection.channel()
                replyQueue = await channel.declare_queue(REPLY_QUEUE, passive=True)
                waiting: dict[str, asyncio.Future[bytes]] = {}

                async def onReply(message: AbstractIncomingMessage) -> None:
                    assert message.correlation_id is not None
                    waiting.pop(message.correlation_id).set_result(message.body)

                await replyQueue.consume(onReply, no_ack=True)
                loop = asyncio.get_running_loop()
                for number in range(5):
                    waiting[str(number)] = loop.create_future()
                futures = dict(waiting)
                for number in range(5):
                    await channel.default_exchange.publish(
                        aio_pika.Message(
                            f"call {number}".encode(), correlation_id=str(number), reply_to=REPLY_QUEUE
                        ),
                        requests,
                    )
                results: Any = await asyncio.wait_for(
                    asyncio.gather(*(futures[str(n)] for n in range(5))), EVENT_TIMEOUT
                )
                self.assertEqual(results, [f"call {n}".encode()[::-1] for n in range(5)])
                self.assertEqual(waiting, {})

        self.runAsync(test)


class FailoverTests(FailoverTestCase):
    """
    Direct reply-to in a cluster: a request on a replicated queue survives
    failover with its reply address, but the address dies with the old
    primary, as the client's channel did.
    """

    def test_addressDiesWithPrimary(self) -> None:
        """
        A request queued (and replicated) on the primary carries its reply
        address; after the primary is killed and the backup promoted, a
        server that takes the request from the new primary finds the
        address gone (passive declare 404; a mandatory reply is returned
        unroutable), and a client that consumes again on the new primary
        gets its replies there.
        """
        cluster = self.startCluster(2)
        requests = "replyto-requests"
        old = cluster.connect()
        self.addCleanup(BrokerTestCase._closeQuietly, old)
        channel = old.channel()
        channel.confirm_delivery()
        channel.queue_declare(requests, arguments=ALL)
        channel.basic_consume(REPLY_QUEUE, lambda *args: None, auto_ack=True)
        channel.basic_publish("", requests, b"request", BasicProperties(reply_to=REPLY_QUEUE))

        cluster.kill(0)
        cluster.waitFor(1, lambda state: state["role"] != "ready", what="primary lost")
        cluster.promote(1)
        cluster.waitForRole(1, "active")
        cluster.waitForAMQP(1)
        connection = cluster.connect()
        self.addCleanup(connection.close)
        server = connection.channel()
        server.confirm_delivery()
        method, props, body = server.basic_get(requests, auto_ack=True)
        self.assertEqual(body, b"request")
        address = props.reply_to
        self.assertTrue(address.startswith(REPLY_QUEUE + "."), address)
        with self.assertRaises(ChannelClosedByBroker) as caught:
            connection.channel().queue_declare(address, passive=True)
        self.assertEqual(caught.exception.reply_code, 404)
        with self.assertRaises(UnroutableError):
            server.basic_publish("", address, b"reply", mandatory=True)

        client = connection.channel()
        got: list[bytes] = []
        client.basic_consume(REPLY_QUEUE, lambda c, d, p, body: got.append(body), auto_ack=True)
        client.basic_publish("", requests, b"again", BasicProperties(reply_to=REPLY_QUEUE))

        def pump(left: float) -> None:
            connection.process_data_events(time_limit=left)

        request = waitUntil(lambda: server.basic_get(requests, auto_ack=True)[1], pump, EVENT_TIMEOUT, "the request")
        self.assertNotEqual(request.reply_to, address)
        server.basic_publish("", request.reply_to, b"reply", mandatory=True)
        waitUntil(lambda: got, pump, EVENT_TIMEOUT, "the reply")
        self.assertEqual(got, [b"reply"])


__all__ = ["PikaRPCTests", "AioPikaRPCTests", "FailoverTests"]
