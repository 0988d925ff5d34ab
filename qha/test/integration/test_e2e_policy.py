"""
End-to-end tests of the queue policies of issue 3: one real C{twistd qha}
process, driven by pika's blocking client (and aio-pika for a few), one test
per row of the issue's table, under the Qpid and the RabbitMQ argument names.

TTLs are small (tens of milliseconds), and every wait is for an event with a
deadline: a dead-letter queue's consumer receiving the message, or a queue
disappearing. Nothing sleeps.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from typing import Any

import aio_pika
from aio_pika.exceptions import DeliveryError
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.exceptions import ChannelClosedByBroker, NackError
from pika.spec import BasicProperties

from qha.test.integration.brokerprocess import BrokerTestCase, quietLoggers
from qha.test.integration.clients import Deliveries, drain

EVENT_TIMEOUT = 5.0
"""
The most seconds a test waits for one event.
"""


class PolicyTestCase(BrokerTestCase):
    """
    Helpers for the policy tests: a dead-letter exchange with a queue and a
    consumer on it, and waiting for what it receives.
    """

    def deadLetterConsumer(
        self, connection: BlockingConnection, channel: BlockingChannel
    ) -> tuple[str, Deliveries]:
        """
        Declare a fanout dead-letter exchange (auto-delete) with an
        exclusive queue bound to it, and consume from that queue.

        @return: the exchange name and what the consumer receives.
        """
        exchange = self.uniqueName("dlx")
        channel.exchange_declare(exchange, "fanout", auto_delete=True)
        queue = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(queue, exchange)
        deliveries = Deliveries()
        channel.basic_consume(queue, deliveries, auto_ack=True)
        return exchange, deliveries

    def waitForCount(
        self, connection: BlockingConnection, deliveries: Deliveries, count: int
    ) -> list[tuple[Any, BasicProperties, bytes]]:
        """
        Process C{connection}'s events until C{deliveries} holds C{count}
        messages, for at most L{EVENT_TIMEOUT} seconds.
        """
        self.waitFor(
            connection,
            lambda: len(deliveries.received) >= count,
            EVENT_TIMEOUT,
            f"{count} dead-lettered messages",
        )
        return deliveries.received

    def assertDeath(
        self,
        properties: BasicProperties,
        reason: str,
        queue: str,
        exchange: str = "",
        routingKeys: list[str] | None = None,
        count: int = 1,
    ) -> dict[str, Any]:
        """
        C{properties} carry one x-death entry as RabbitMQ writes it, and the
        x-first-death headers; return the entry.
        """
        headers = properties.headers
        self.assertIsNotNone(headers)
        self.assertEqual(len(headers["x-death"]), 1)
        death: dict[str, Any] = headers["x-death"][0]
        self.assertEqual(death["count"], count)
        self.assertEqual(death["reason"], reason)
        self.assertEqual(death["queue"], queue)
        self.assertEqual(death["exchange"], exchange)
        self.assertEqual(death["routing-keys"], routingKeys or [queue])
        self.assertIsInstance(death["time"], datetime.datetime)
        self.assertEqual(headers["x-first-death-reason"], reason)
        self.assertEqual(headers["x-first-death-queue"], queue)
        self.assertEqual(headers["x-first-death-exchange"], exchange)
        self.assertIsNone(properties.expiration)
        return death


class LastValueQueueTests(PolicyTestCase):
    """
    C{qpid.last_value_queue_key}: a new message replaces the queued one
    with the same key value.
    """

    def test_lastValue(self) -> None:
        """
        Of three updates to two keys, the last of each is left; a message
        without the key is kept.
        """
        channel = self.channel()
        queue = channel.queue_declare(
            "", exclusive=True, arguments={"qpid.last_value_queue_key": "symbol"}
        ).method.queue
        for body, symbol in [(b"IBM 1", "IBM"), (b"ACME 1", "ACME"), (b"IBM 2", "IBM")]:
            channel.basic_publish(
                "", queue, body, BasicProperties(headers={"symbol": symbol})
            )
        channel.basic_publish("", queue, b"no key")
        self.assertEqual(
            channel.queue_declare(queue, passive=True).method.message_count, 3
        )
        self.assertEqual(drain(channel, queue), [b"ACME 1", b"IBM 2", b"no key"])


class RingTests(PolicyTestCase):
    """
    Ring queues: the oldest message is dropped when the queue is full.
    """

    def assertRing(self, arguments: dict[str, Any]) -> None:
        """
        A queue declared with C{arguments} (a limit of 3) keeps the last
        three of five messages.
        """
        channel = self.channel()
        queue = channel.queue_declare("", exclusive=True, arguments=arguments).method.queue
        for index in range(5):
            channel.basic_publish("", queue, b"%d" % index)
        self.assertEqual(drain(channel, queue), [b"2", b"3", b"4"])

    def test_rabbitNames(self) -> None:
        """
        C{x-max-length} (drop-head by default).
        """
        self.assertRing({"x-max-length": 3})

    def test_rabbitOverflow(self) -> None:
        """
        C{x-max-length} with C{x-overflow=drop-head}.
        """
        self.assertRing({"x-max-length": 3, "x-overflow": "drop-head"})

    def test_qpidNames(self) -> None:
        """
        C{qpid.max_count} with C{qpid.policy_type=ring}.
        """
        self.assertRing({"qpid.max_count": 3, "qpid.policy_type": "ring"})

    def test_bytes(self) -> None:
        """
        C{x-max-length-bytes} drops by body size.
        """
        channel = self.channel()
        queue = channel.queue_declare(
            "", exclusive=True, arguments={"x-max-length-bytes": 10}
        ).method.queue
        for body in [b"aaaa", b"bbbb", b"cccccc"]:
            channel.basic_publish("", queue, body)
        self.assertEqual(drain(channel, queue), [b"bbbb", b"cccccc"])


class RejectTests(PolicyTestCase):
    """
    Reject queues: a publish to a full queue is refused.
    """

    def test_confirmPublisherGetsNack(self) -> None:
        """
        A confirm-mode publisher gets basic.nack for the refused message
        (pika raises L{NackError}), and its channel stays open.
        """
        channel = self.channel()
        channel.confirm_delivery()
        queue = channel.queue_declare(
            "", exclusive=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
        ).method.queue
        channel.basic_publish("", queue, b"fits")
        with self.assertRaises(NackError):
            channel.basic_publish("", queue, b"refused")
        self.assertTrue(channel.is_open)
        self.assertEqual(drain(channel, queue), [b"fits"])
        channel.basic_publish("", queue, b"fits again")
        self.assertEqual(drain(channel, queue), [b"fits again"])

    def test_qpidReject(self) -> None:
        """
        C{qpid.policy_type=reject} with C{qpid.max_count} refuses the same
        way.
        """
        channel = self.channel()
        channel.confirm_delivery()
        queue = channel.queue_declare(
            "", exclusive=True, arguments={"qpid.max_count": 2, "qpid.policy_type": "reject"}
        ).method.queue
        channel.basic_publish("", queue, b"1")
        channel.basic_publish("", queue, b"2")
        with self.assertRaises(NackError):
            channel.basic_publish("", queue, b"3")
        self.assertEqual(drain(channel, queue), [b"1", b"2"])

    def test_plainPublisherGetsChannelError(self) -> None:
        """
        A publisher not in confirm mode gets a 406 PRECONDITION_FAILED
        channel error naming the queue; the connection survives.
        """
        connection = self.connect()
        setup = connection.channel()
        queue = setup.queue_declare(
            "", exclusive=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
        ).method.queue
        channel = connection.channel()
        channel.basic_publish("", queue, b"fits")
        channel.basic_publish("", queue, b"refused")
        with self.assertRaises(ChannelClosedByBroker) as caught:
            channel.queue_declare(queue, passive=True)
        self.assertEqual(caught.exception.reply_code, 406)
        self.assertIn(queue, caught.exception.reply_text)
        self.assertTrue(connection.is_open)
        self.assertEqual(drain(setup, queue), [b"fits"])
        self.assertConnectionWorks(connection)

    def test_rejectPublishDeadLetter(self) -> None:
        """
        With C{x-overflow=reject-publish-dlx} the refused message is nacked
        and dead-lettered with reason C{maxlen}.
        """
        connection = self.connect()
        channel = connection.channel()
        dlx, dead = self.deadLetterConsumer(connection, channel)
        publisher = connection.channel()
        publisher.confirm_delivery()
        queue = publisher.queue_declare(
            "",
            exclusive=True,
            arguments={
                "x-max-length": 1,
                "x-overflow": "reject-publish-dlx",
                "x-dead-letter-exchange": dlx,
            },
        ).method.queue
        publisher.basic_publish("", queue, b"kept")
        with self.assertRaises(NackError):
            publisher.basic_publish("", queue, b"refused")
        [(_, properties, body)] = self.waitForCount(connection, dead, 1)
        self.assertEqual(body, b"refused")
        self.assertDeath(properties, "maxlen", queue)


class PriorityTests(PolicyTestCase):
    """
    Priority queues: higher priority first, FIFO within a priority.
    """

    def assertPriorityOrder(self, arguments: dict[str, Any]) -> None:
        """
        Messages published to a queue declared with C{arguments} (10
        priorities or more) come out highest first, in publish order within
        a priority, to a consumer that starts after they were published.
        """
        connection = self.connect()
        channel = connection.channel()
        queue = channel.queue_declare("", exclusive=True, arguments=arguments).method.queue
        for body, priority in [(b"a1", 1), (b"b5", 5), (b"c9", 9), (b"d5", 5), (b"e0", 0)]:
            channel.basic_publish("", queue, body, BasicProperties(priority=priority))
        deliveries = Deliveries()
        channel.basic_consume(queue, deliveries, auto_ack=True)
        self.waitFor(connection, lambda: len(deliveries.received) == 5)
        self.assertEqual(deliveries.bodies, [b"c9", b"b5", b"d5", b"a1", b"e0"])

    def test_rabbitNames(self) -> None:
        """
        C{x-max-priority}.
        """
        self.assertPriorityOrder({"x-max-priority": 9})

    def test_qpidNames(self) -> None:
        """
        C{qpid.priorities}.
        """
        self.assertPriorityOrder({"qpid.priorities": 10})

    def test_invalid(self) -> None:
        """
        A priority above 255 is refused with 406 naming the argument; the
        connection survives.
        """
        connection = self.connect()
        channel = connection.channel()
        with self.assertRaises(ChannelClosedByBroker) as caught:
            channel.queue_declare("", exclusive=True, arguments={"x-max-priority": 256})
        self.assertEqual(caught.exception.reply_code, 406)
        self.assertIn("x-max-priority", caught.exception.reply_text)
        self.assertConnectionWorks(connection)

    def test_conflictingRedeclare(self) -> None:
        """
        Declaring a priority queue again with the same arguments succeeds,
        with different ones fails with 406 naming the argument.
        """
        connection = self.connect()
        channel = connection.channel()
        queue = self.uniqueName("priority")
        channel.queue_declare(queue, exclusive=True, arguments={"x-max-priority": 5})
        channel.queue_declare(queue, exclusive=True, arguments={"x-max-priority": 5})
        with self.assertRaises(ChannelClosedByBroker) as caught:
            channel.queue_declare(queue, exclusive=True, arguments={"x-max-priority": 6})
        self.assertEqual(caught.exception.reply_code, 406)
        self.assertIn("inequivalent arg 'x-max-priority'", caught.exception.reply_text)


class FairshareTests(PolicyTestCase):
    """
    Qpid's fairshare: at most N messages of a priority in a row before
    lower ones get a turn.
    """

    def test_fairshare(self) -> None:
        """
        With C{qpid.fairshare-1: 2}, two high messages, then a low one.
        """
        channel = self.channel()
        queue = channel.queue_declare(
            "",
            exclusive=True,
            arguments={"qpid.priorities": 2, "qpid.fairshare-1": 2},
        ).method.queue
        for index in range(1, 6):
            channel.basic_publish("", queue, b"H%d" % index, BasicProperties(priority=9))
        for index in range(1, 3):
            channel.basic_publish("", queue, b"L%d" % index, BasicProperties(priority=0))
        self.assertEqual(
            drain(channel, queue), [b"H1", b"H2", b"L1", b"H3", b"H4", b"L2", b"H5"]
        )


class MessageTtlTests(PolicyTestCase):
    """
    Message TTL: expired messages are never delivered, and are
    dead-lettered when the queue says where.
    """

    def test_queueTtl(self) -> None:
        """
        With C{x-message-ttl} 50 ms, an unconsumed message is dead-lettered
        with reason C{expired}, and the queue is empty.
        """
        connection = self.connect()
        channel = connection.channel()
        dlx, dead = self.deadLetterConsumer(connection, channel)
        queue = channel.queue_declare(
            "",
            exclusive=True,
            arguments={"x-message-ttl": 50, "x-dead-letter-exchange": dlx},
        ).method.queue
        channel.basic_publish("", queue, b"short-lived")
        [(method, properties, body)] = self.waitForCount(connection, dead, 1)
        self.assertEqual(body, b"short-lived")
        self.assertEqual((method.exchange, method.routing_key), (dlx, queue))
        death = self.assertDeath(properties, "expired", queue)
        self.assertNotIn("original-expiration", death)
        self.assertIsNone(channel.basic_get(queue, auto_ack=True)[0])

    def test_perMessageExpiration(self) -> None:
        """
        The C{expiration} property alone makes a message expire; the
        dead-lettered copy keeps it as C{original-expiration} and has no
        expiration of its own. A message without one stays.
        """
        connection = self.connect()
        channel = connection.channel()
        dlx, dead = self.deadLetterConsumer(connection, channel)
        queue = channel.queue_declare(
            "", exclusive=True, arguments={"x-dead-letter-exchange": dlx}
        ).method.queue
        channel.basic_publish("", queue, b"stays")
        channel.basic_publish("", queue, b"expires", BasicProperties(expiration="50"))
        # The expired message is behind one that does not expire: it goes
        # when it reaches the head, and is never delivered.
        self.assertEqual(channel.basic_get(queue, auto_ack=True)[2], b"stays")
        self.waitForCount(connection, dead, 1)
        self.assertEqual(dead.bodies, [b"expires"])
        death = self.assertDeath(dead.received[0][1], "expired", queue)
        self.assertEqual(death["original-expiration"], "50")

    def test_perMessageExpirationPlainQueue(self) -> None:
        """
        A queue declared with no arguments honours a per-message expiration
        too: the message leaves the queue (its count, read with passive
        declares, drops to zero) and is never delivered.
        """
        connection = self.connect()
        channel = connection.channel()
        channel.confirm_delivery()
        queue = channel.queue_declare("", exclusive=True).method.queue
        # Confirmed: the message is in the queue before it is counted.
        channel.basic_publish("", queue, b"expires", BasicProperties(expiration="50"))
        self.waitFor(
            connection,
            lambda: channel.queue_declare(queue, passive=True).method.message_count == 0,
            EVENT_TIMEOUT,
            "the message to expire",
        )
        self.assertIsNone(channel.basic_get(queue, auto_ack=True)[0])

    def test_smallerTtlWins(self) -> None:
        """
        A per-message expiration shorter than the queue's TTL applies: the
        message with 50 ms expires long before the queue's 60 s.
        """
        connection = self.connect()
        channel = connection.channel()
        dlx, dead = self.deadLetterConsumer(connection, channel)
        queue = channel.queue_declare(
            "",
            exclusive=True,
            arguments={"x-message-ttl": 60000, "x-dead-letter-exchange": dlx},
        ).method.queue
        channel.basic_publish("", queue, b"quick", BasicProperties(expiration="50"))
        self.waitForCount(connection, dead, 1)
        self.assertEqual(dead.bodies, [b"quick"])

    def test_zeroTtl(self) -> None:
        """
        A message with TTL 0 goes to a consumer that can take it now, and
        expires at once when there is none.
        """
        connection = self.connect()
        channel = connection.channel()
        dlx, dead = self.deadLetterConsumer(connection, channel)
        queue = channel.queue_declare(
            "", exclusive=True, arguments={"x-message-ttl": 0, "x-dead-letter-exchange": dlx}
        ).method.queue
        channel.basic_publish("", queue, b"nobody")
        self.waitForCount(connection, dead, 1)
        consumed = Deliveries()
        channel.basic_consume(queue, consumed, auto_ack=True)
        channel.basic_publish("", queue, b"someone")
        self.waitFor(connection, lambda: consumed.received)
        self.assertEqual(consumed.bodies, [b"someone"])
        self.assertEqual(dead.bodies, [b"nobody"])

    def test_invalidExpiration(self) -> None:
        """
        An expiration property that is not a whole number of milliseconds
        closes the channel with 406; the connection survives.
        """
        connection = self.connect()
        channel = connection.channel()
        queue = channel.queue_declare("", exclusive=True).method.queue
        publisher = connection.channel()
        publisher.basic_publish("", queue, b"m", BasicProperties(expiration="soon"))
        with self.assertRaises(ChannelClosedByBroker) as caught:
            publisher.queue_declare(queue, passive=True)
        self.assertEqual(caught.exception.reply_code, 406)
        self.assertIn("expiration", caught.exception.reply_text)
        self.assertConnectionWorks(connection)


class QueueExpiryTests(PolicyTestCase):
    """
    C{x-expires}: an unused queue is deleted.
    """

    def waitUntilGone(self, connection: BlockingConnection, queue: str, interval: float) -> None:
        """
        Check with a passive declare every C{interval} seconds until
        C{queue} is gone (404), for at most L{EVENT_TIMEOUT} seconds.

        Every queue.declare, passive too, renews the queue's lease (as in
        RabbitMQ), so C{interval} must be longer than its C{x-expires}.
        """
        deadline = time.monotonic() + EVENT_TIMEOUT
        channel = connection.channel()
        while True:
            connection.process_data_events(time_limit=interval)
            try:
                channel.queue_declare(queue, passive=True)
            except ChannelClosedByBroker as error:
                self.assertEqual(error.reply_code, 404)
                return
            if time.monotonic() > deadline:
                self.fail(f"queue {queue} still exists after {EVENT_TIMEOUT} s")

    def test_unusedQueueDeleted(self) -> None:
        """
        A queue with C{x-expires} 50 ms and no consumer is deleted, with its
        messages.
        """
        connection = self.connect()
        channel = connection.channel()
        queue = self.uniqueName("expiring")
        channel.queue_declare(queue, arguments={"x-expires": 50})
        channel.basic_publish("", queue, b"lost with the queue")
        self.waitUntilGone(connection, queue, 0.1)

    def test_consumerKeepsAlive(self) -> None:
        """
        A consumer keeps the queue alive past its C{x-expires}; once it is
        cancelled the queue goes.
        """
        connection = self.connect()
        channel = connection.channel()
        queue = self.uniqueName("kept")
        channel.queue_declare(queue, arguments={"x-expires": 50})
        tag = channel.basic_consume(queue, Deliveries())
        connection.process_data_events(time_limit=0.2)
        self.assertEqual(
            channel.queue_declare(queue, passive=True).method.consumer_count, 1
        )
        channel.basic_cancel(tag)
        self.waitUntilGone(connection, queue, 0.1)


class DeadLetterTests(PolicyTestCase):
    """
    Dead-lettering: rejected, expired and dropped messages are routed on
    with an C{x-death} header as RabbitMQ writes it.
    """

    def test_rejected(self) -> None:
        """
        A message rejected without requeue goes to the dead-letter exchange
        with C{x-dead-letter-routing-key}, and x-death names the original
        exchange and routing key.
        """
        connection = self.connect()
        channel = connection.channel()
        dlx = self.uniqueName("dlx")
        channel.exchange_declare(dlx, "direct", auto_delete=True)
        dlq = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(dlq, dlx, "dead")
        source = self.uniqueName("in")
        channel.exchange_declare(source, "direct", auto_delete=True)
        queue = channel.queue_declare(
            "",
            exclusive=True,
            arguments={"x-dead-letter-exchange": dlx, "x-dead-letter-routing-key": "dead"},
        ).method.queue
        channel.queue_bind(queue, source, "work")
        channel.basic_publish(
            source, "work", b"bad job", BasicProperties(headers={"mine": "kept"})
        )
        method, _, _ = channel.basic_get(queue)
        channel.basic_reject(method.delivery_tag, requeue=False)
        dead = Deliveries()
        channel.basic_consume(dlq, dead, auto_ack=True)
        [(method, properties, body)] = self.waitForCount(connection, dead, 1)
        self.assertEqual(body, b"bad job")
        self.assertEqual((method.exchange, method.routing_key), (dlx, "dead"))
        self.assertEqual(properties.headers["mine"], "kept")
        self.assertDeath(properties, "rejected", queue, source, ["work"])

    def test_nackedFromConsumer(self) -> None:
        """
        basic.nack without requeue from a consumer dead-letters too; with
        requeue it does not.
        """
        connection = self.connect()
        channel = connection.channel()
        dlx, dead = self.deadLetterConsumer(connection, channel)
        queue = channel.queue_declare(
            "", exclusive=True, arguments={"x-dead-letter-exchange": dlx}
        ).method.queue
        channel.basic_publish("", queue, b"m")
        seen = Deliveries()
        channel.basic_consume(queue, seen)
        self.waitFor(connection, lambda: seen.received)
        channel.basic_nack(seen.received[0][0].delivery_tag, requeue=True)
        self.waitFor(connection, lambda: len(seen.received) == 2)
        self.assertTrue(seen.received[1][0].redelivered)
        self.assertEqual(dead.received, [])
        channel.basic_nack(seen.received[1][0].delivery_tag, requeue=False)
        [(_, properties, _)] = self.waitForCount(connection, dead, 1)
        self.assertDeath(properties, "rejected", queue)

    def test_expired(self) -> None:
        """
        An expired message is dead-lettered with reason C{expired}.
        """
        connection = self.connect()
        channel = connection.channel()
        dlx, dead = self.deadLetterConsumer(connection, channel)
        queue = channel.queue_declare(
            "", exclusive=True, arguments={"x-message-ttl": 20, "x-dead-letter-exchange": dlx}
        ).method.queue
        channel.basic_publish("", queue, b"late", BasicProperties(expiration="10000"))
        [(_, properties, _)] = self.waitForCount(connection, dead, 1)
        death = self.assertDeath(properties, "expired", queue)
        self.assertEqual(death["original-expiration"], "10000")

    def test_maxlen(self) -> None:
        """
        A message dropped by a full ring queue is dead-lettered with reason
        C{maxlen}, under Qpid's name for the dead-letter exchange
        (C{alternate-exchange} on the queue).
        """
        connection = self.connect()
        channel = connection.channel()
        dlx, dead = self.deadLetterConsumer(connection, channel)
        queue = channel.queue_declare(
            "",
            exclusive=True,
            arguments={"qpid.max_count": 1, "qpid.policy_type": "ring", "alternate-exchange": dlx},
        ).method.queue
        channel.basic_publish("", queue, b"oldest")
        channel.basic_publish("", queue, b"newest")
        [(_, properties, body)] = self.waitForCount(connection, dead, 1)
        self.assertEqual(body, b"oldest")
        self.assertDeath(properties, "maxlen", queue)
        self.assertEqual(drain(channel, queue), [b"newest"])

    def test_deathCount(self) -> None:
        """
        A message rejected into a retry queue whose TTL sends it back dies
        again in the same queues: each x-death entry's count goes up.
        """
        connection = self.connect()
        channel = connection.channel()
        toRetry = self.uniqueName("to-retry")
        back = self.uniqueName("back")
        channel.exchange_declare(toRetry, "fanout", auto_delete=True)
        channel.exchange_declare(back, "fanout", auto_delete=True)
        work = channel.queue_declare(
            "", exclusive=True, arguments={"x-dead-letter-exchange": toRetry}
        ).method.queue
        retry = channel.queue_declare(
            "", exclusive=True, arguments={"x-message-ttl": 20, "x-dead-letter-exchange": back}
        ).method.queue
        channel.queue_bind(retry, toRetry)
        channel.queue_bind(work, back)
        channel.basic_publish("", work, b"flaky")
        seen = Deliveries()
        channel.basic_consume(work, seen)
        for attempt in range(1, 4):
            self.waitFor(connection, lambda: len(seen.received) == attempt)
            channel.basic_reject(seen.received[-1][0].delivery_tag, requeue=False)
        headers = seen.received[-1][1].headers
        self.assertEqual(
            [(d["queue"], d["reason"], d["count"]) for d in headers["x-death"]],
            [(retry, "expired", 2), (work, "rejected", 2)],
        )
        self.assertEqual(headers["x-first-death-reason"], "rejected")


class AlternateExchangeTests(PolicyTestCase):
    """
    C{alternate-exchange} on an exchange: unroutable messages go there.
    """

    def test_unroutable(self) -> None:
        """
        A message that matches no binding goes to the alternate exchange's
        queue (a mandatory publish is not returned), one that matches does
        not.
        """
        channel = self.channel()
        channel.confirm_delivery()
        alternate = self.uniqueName("ae")
        channel.exchange_declare(alternate, "fanout", auto_delete=True)
        caught = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(caught, alternate)
        exchange = self.uniqueName("x")
        channel.exchange_declare(
            exchange, "direct", auto_delete=True, arguments={"alternate-exchange": alternate}
        )
        normal = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(normal, exchange, "known")
        channel.basic_publish(exchange, "known", b"routed", mandatory=True)
        channel.basic_publish(exchange, "unknown", b"unroutable", mandatory=True)
        self.assertEqual(drain(channel, normal), [b"routed"])
        method, _, body = channel.basic_get(caught, auto_ack=True)
        self.assertEqual(body, b"unroutable")
        self.assertEqual((method.exchange, method.routing_key), (exchange, "unknown"))

    def test_chainAndLoop(self) -> None:
        """
        Alternate exchanges chain on; a loop of them ends, and the message
        is dropped.
        """
        channel = self.channel()
        last, middle, first = (self.uniqueName(label) for label in ("last", "middle", "first"))
        channel.exchange_declare(last, "fanout", auto_delete=True)
        caught = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(caught, last)
        channel.exchange_declare(middle, "direct", arguments={"alternate-exchange": last})
        channel.exchange_declare(first, "topic", arguments={"alternate-exchange": middle})
        channel.basic_publish(first, "a.b", b"chained")
        self.assertEqual(drain(channel, caught), [b"chained"])
        one, two = self.uniqueName("one"), self.uniqueName("two")
        channel.exchange_declare(one, "direct", arguments={"alternate-exchange": two})
        channel.exchange_declare(two, "direct", arguments={"alternate-exchange": one})
        channel.basic_publish(one, "k", b"dropped")
        self.assertConnectionWorks(channel.connection)
        for name in (middle, first, one, two):
            channel.exchange_delete(name)


class ExclusiveAutoDeleteTests(PolicyTestCase):
    """
    Exclusive and auto-delete queues, with RabbitMQ's semantics.
    """

    def test_exclusiveLocked(self) -> None:
        """
        Another connection gets 405 RESOURCE_LOCKED for declaring or
        consuming from an exclusive queue; its connection survives.
        """
        owner = self.channel()
        queue = self.uniqueName("locked")
        owner.queue_declare(queue, exclusive=True)
        connection = self.connect()
        for attempt in [
            lambda channel: channel.queue_declare(queue, exclusive=True),
            lambda channel: channel.queue_declare(queue, passive=True),
            lambda channel: channel.basic_consume(queue, Deliveries()),
            lambda channel: channel.basic_get(queue),
        ]:
            channel = connection.channel()
            with self.assertRaises(ChannelClosedByBroker) as caught:
                attempt(channel)
            self.assertEqual(caught.exception.reply_code, 405)
            self.assertIn("RESOURCE_LOCKED", caught.exception.reply_text)
        self.assertConnectionWorks(connection)

    def test_exclusiveGoesWithConnection(self) -> None:
        """
        An exclusive queue is deleted when its connection closes.
        """
        connection = self.connect()
        queue = connection.channel().queue_declare("", exclusive=True).method.queue
        connection.close()
        channel = self.channel()
        with self.assertRaises(ChannelClosedByBroker) as caught:
            channel.queue_declare(queue, passive=True)
        self.assertEqual(caught.exception.reply_code, 404)

    def test_autoDelete(self) -> None:
        """
        An auto-delete queue lives until its last consumer is cancelled.
        """
        connection = self.connect()
        channel = connection.channel()
        queue = self.uniqueName("auto")
        channel.queue_declare(queue, auto_delete=True)
        first = channel.basic_consume(queue, Deliveries())
        second = channel.basic_consume(queue, Deliveries())
        channel.basic_cancel(first)
        self.assertEqual(
            channel.queue_declare(queue, passive=True).method.consumer_count, 1
        )
        channel.basic_cancel(second)
        with self.assertRaises(ChannelClosedByBroker) as caught:
            channel.queue_declare(queue, passive=True)
        self.assertEqual(caught.exception.reply_code, 404)


class AioPikaPolicyTests(PolicyTestCase):
    """
    A few policies through aio-pika, the asyncio client.
    """

    def setUp(self) -> None:
        """
        Start (or reuse) the broker, and quiet aio-pika's and aiormq's
        warnings about the refusals these tests cause on purpose.
        """
        super().setUp()
        quietLoggers(self, "aiormq", "aio_pika")

    def runAsync(self, test: Any) -> Any:
        """
        Run coroutine function C{test} in a new event loop, for at most 15
        seconds.
        """

        async def bounded() -> Any:
            return await asyncio.wait_for(test(), 15)

        return asyncio.run(bounded())

    async def aioConnect(self) -> aio_pika.abc.AbstractConnection:
        """
        An aio-pika connection to the broker as guest.
        """
        url = f"amqp://guest:guest@{self.broker.host}:{self.broker.port}/"
        return await asyncio.wait_for(aio_pika.connect(url), EVENT_TIMEOUT)

    def test_priority(self) -> None:
        """
        An aio-pika consumer of an C{x-max-priority} queue gets the highest
        priority first.
        """

        async def test() -> None:
            async with await self.aioConnect() as connection:
                channel = await connection.channel()
                queue = await channel.declare_queue(
                    exclusive=True, arguments={"x-max-priority": 5}
                )
                for body, priority in [(b"low", 1), (b"high", 5), (b"mid", 3)]:
                    await channel.default_exchange.publish(
                        aio_pika.Message(body, priority=priority), queue.name
                    )
                got = []
                async with queue.iterator() as iterator:
                    async for message in iterator:
                        await message.ack()
                        got.append(message.body)
                        if len(got) == 3:
                            break
                self.assertEqual(got, [b"high", b"mid", b"low"])

        self.runAsync(test)

    def test_rejectNack(self) -> None:
        """
        aio-pika's confirmed publish to a full reject-publish queue raises
        L{DeliveryError} (basic.nack), and the channel carries on.
        """

        async def test() -> None:
            async with await self.aioConnect() as connection:
                channel = await connection.channel()
                queue = await channel.declare_queue(
                    exclusive=True,
                    arguments={"x-max-length": 1, "x-overflow": "reject-publish"},
                )
                exchange = channel.default_exchange
                await exchange.publish(aio_pika.Message(b"fits"), queue.name)
                with self.assertRaises(DeliveryError):
                    await exchange.publish(aio_pika.Message(b"refused"), queue.name)
                message = await queue.get(no_ack=True)
                self.assertEqual(message.body, b"fits")
                await exchange.publish(aio_pika.Message(b"fits now"), queue.name)

        self.runAsync(test)

    def test_ttlDeadLetter(self) -> None:
        """
        A message with a 50 ms expiration reaches an aio-pika consumer of
        the dead-letter queue, with its x-death header.
        """

        async def test() -> None:
            async with await self.aioConnect() as connection:
                channel = await connection.channel()
                dlx = await channel.declare_exchange(
                    self.uniqueName("dlx"), aio_pika.ExchangeType.FANOUT, auto_delete=True
                )
                dlq = await channel.declare_queue(exclusive=True)
                await dlq.bind(dlx)
                queue = await channel.declare_queue(
                    exclusive=True, arguments={"x-dead-letter-exchange": dlx.name}
                )
                await channel.default_exchange.publish(
                    aio_pika.Message(b"soon dead", expiration=0.05), queue.name
                )
                async with dlq.iterator() as iterator:
                    message = await asyncio.wait_for(iterator.__anext__(), EVENT_TIMEOUT)
                    await message.ack()
                self.assertEqual(message.body, b"soon dead")
                headers: Any = message.headers
                [death] = headers["x-death"]
                self.assertEqual(
                    (death["reason"], death["queue"], death["original-expiration"]),
                    ("expired", queue.name, "50"),
                )
                self.assertIsNone(message.expiration)

        self.runAsync(test)
