"""
End-to-end tests: a real C{twistd qha} process on a free loopback port,
driven with pika's blocking client through every feature of AMQP 0-9-1 that
the broker offers.

Each class shares one broker (see L{qha.test.integration.brokerprocess.sharedBroker});
each test uses names of its own. Nothing sleeps: every wait is for an event,
with a deadline.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from typing import Any

import pika
from pamqp import body as pamqpBody, commands, frame as pamqpFrame, header as pamqpHeader
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import (
    AMQPConnectionError,
    ChannelClosedByBroker,
    ConnectionClosedByBroker,
    NoFreeChannels,
    ProbableAccessDeniedError,
    ProbableAuthenticationError,
    UnroutableError,
)
from pika.spec import Basic, BasicProperties

from qha.amqp.users import hashPassword
from qha.broker.vhost import Resources
from qha.test.integration.brokerprocess import (
    AMQPlainCredentials,
    BrokerTestCase,
    methodFrame,
    waitUntil,
)
from qha.test.integration.clients import Deliveries, drain


def messageCount(channel: BlockingChannel, queue: str) -> int:
    """
    How many ready messages C{queue} holds, from a passive declare.
    """
    return channel.queue_declare(queue, passive=True).method.message_count


class ConnectionTests(BrokerTestCase):
    """
    Logging in with PLAIN and AMQPLAIN, refusals, and the capabilities the
    broker announces.
    """

    def test_plainLogin(self) -> None:
        """
        guest/guest logs in with PLAIN from loopback, and the broker
        announces the capabilities clients look for.
        """
        connection = self.connect()
        self.assertTrue(connection.is_open)
        self.assertTrue(connection.publisher_confirms_supported)
        self.assertTrue(connection.basic_nack_supported)
        self.assertTrue(connection.consumer_cancel_notify_supported)
        self.assertTrue(connection.exchange_exchange_bindings_supported)
        self.assertConnectionWorks(connection)

    def test_amqplainLogin(self) -> None:
        """
        guest/guest logs in with AMQPLAIN too.
        """
        connection = self.connect(credentials=AMQPlainCredentials("guest", "guest"))
        self.assertConnectionWorks(connection)

    def assertRefused(self, credentials: pika.PlainCredentials, mechanism: str) -> None:
        """
        Logging in with C{credentials} fails with 403 ACCESS_REFUSED, which
        pika reports as a probable authentication error carrying the reply.
        """
        with self.assertRaises(ProbableAuthenticationError) as caught:
            self.connect(credentials=credentials)
        self.assertIsInstance(caught.exception, AMQPConnectionError)
        reply = str(caught.exception)
        self.assertIn("(403)", reply)
        self.assertIn("ACCESS_REFUSED", reply)
        self.assertIn(mechanism, reply)

    def test_badPasswordPlain(self) -> None:
        """
        A wrong password with PLAIN is refused with 403 ACCESS_REFUSED.
        """
        self.assertRefused(pika.PlainCredentials("guest", "wrong"), "PLAIN")

    def test_badPasswordAMQPlain(self) -> None:
        """
        A wrong password with AMQPLAIN is refused with 403 ACCESS_REFUSED.
        """
        self.assertRefused(AMQPlainCredentials("guest", "wrong"), "AMQPLAIN")

    def test_unknownUser(self) -> None:
        """
        An unknown user is refused like a wrong password.
        """
        self.assertRefused(pika.PlainCredentials("nobody", "guest"), "PLAIN")

    def test_unknownVirtualHost(self) -> None:
        """
        connection.open to a virtual host the broker does not have is
        refused with 530 NOT_ALLOWED, which pika reports as a probable
        access denial.
        """
        with self.assertRaises(ProbableAccessDeniedError) as caught:
            self.connect(virtual_host="no-such-vhost")
        reply = str(caught.exception)
        self.assertIn("(530)", reply)
        self.assertIn("no-such-vhost", reply)

    def test_refusalLeavesBrokerServing(self) -> None:
        """
        After refused logins the broker still serves others.
        """
        with self.assertRaises(ProbableAuthenticationError):
            self.connect(credentials=pika.PlainCredentials("guest", "wrong"))
        self.assertConnectionWorks(self.connect())


class UsersFileTests(BrokerTestCase):
    """
    A broker started with C{--users FILE}: its users log in with PLAIN and
    AMQPLAIN, anyone else is refused, guest included.
    """

    usersFile: str | None = None

    def setUp(self) -> None:
        """
        Write the users file (once, with a cheap scrypt cost) and start the
        broker with it.
        """
        if UsersFileTests.usersFile is None:
            directory = tempfile.mkdtemp(prefix="qha-e2e-users-")
            atexit.register(shutil.rmtree, directory, True)
            path = os.path.join(directory, "users")
            with open(path, "w") as f:
                f.write(f"alice:{hashPassword('wonderland', n=2**4)}\n")
            UsersFileTests.usersFile = path
        self.brokerArguments = ["--users", UsersFileTests.usersFile]
        super().setUp()

    def test_userLogsIn(self) -> None:
        """
        A user of the file logs in with PLAIN and with AMQPLAIN.
        """
        for credentials in [
            pika.PlainCredentials("alice", "wonderland"),
            AMQPlainCredentials("alice", "wonderland"),
        ]:
            self.assertConnectionWorks(self.connect(credentials=credentials))

    def test_othersRefused(self) -> None:
        """
        A wrong password, and guest (who is not in the file), are refused
        with 403.
        """
        for credentials in [
            pika.PlainCredentials("alice", "looking-glass"),
            pika.PlainCredentials("guest", "guest"),
        ]:
            with self.assertRaises(ProbableAuthenticationError) as caught:
                self.connect(credentials=credentials)
            self.assertIn("(403)", str(caught.exception))


class HeartbeatTests(BrokerTestCase):
    """
    Heartbeat negotiation with a broker started with C{--heartbeat 7}.
    """

    brokerArguments = ["--heartbeat", "7"]

    def test_brokerProposesItsHeartbeat(self) -> None:
        """
        connection.tune carries the C{--heartbeat} value, and a client that
        accepts it keeps a working connection.
        """
        proposals: list[int] = []

        def negotiate(connection: Any, proposed: int) -> int:
            proposals.append(proposed)
            return proposed

        connection = self.connect(heartbeat=negotiate)
        self.assertEqual(proposals, [7])
        self.assertConnectionWorks(connection)

    def test_clientHeartbeatIsUsed(self) -> None:
        """
        A client that asks for a 1 second heartbeat in tune-ok gets heartbeat
        frames from the broker at that rate, not at the broker's 7 seconds.
        """
        raw = self.raw()
        raw.handshake(heartbeat=1)
        self.assertEqual(raw.tune.heartbeat, 7)
        channel, frame = raw.readFrame(timeout=3)
        self.assertEqual((channel, type(frame).__name__), (0, "Heartbeat"))

    def test_silentPeerDropped(self) -> None:
        """
        A client that negotiated a 1 second heartbeat and then sends nothing
        is disconnected after two intervals.
        """
        raw = self.raw()
        raw.handshake(heartbeat=1)
        raw.expectEndOfFile(timeout=5)

    def test_heartbeatsOff(self) -> None:
        """
        A client may turn heartbeats off by answering 0.
        """
        connection = self.connect(heartbeat=0)
        self.assertConnectionWorks(connection)


class ChannelMaxTests(BrokerTestCase):
    """
    C{--channel-max 4}: the limit is negotiated and enforced.
    """

    brokerArguments = ["--channel-max", "4"]

    def test_negotiatedLimit(self) -> None:
        """
        pika negotiates the broker's channel_max: four channels open, a
        fifth is refused by pika itself.
        """
        connection = self.connect()
        channels = [connection.channel() for _ in range(4)]
        self.assertEqual([c.channel_number for c in channels], [1, 2, 3, 4])
        with self.assertRaises(NoFreeChannels):
            connection.channel()

    def test_channelAboveLimitRefused(self) -> None:
        """
        Opening a channel above channel_max closes the connection with 530
        NOT_ALLOWED; other connections carry on.
        """
        connection = self.connect()
        with self.assertRaises(ConnectionClosedByBroker) as caught:
            connection.channel(channel_number=5)
        self.assertEqual(caught.exception.reply_code, 530)
        self.assertIn("channel_max", caught.exception.reply_text)
        self.assertFalse(connection.is_open)
        self.assertConnectionWorks(self.connect())

    def test_tuneOkAboveLimitRefused(self) -> None:
        """
        A tune-ok asking for more channels than the broker offered is
        refused with 530 NOT_ALLOWED.
        """
        raw = self.raw()
        raw.handshake(channelMax=100, expectOpenOk=False)
        close = raw.expectConnectionClose()
        self.assertEqual(close.reply_code, 530)
        self.assertIn("channel_max", close.reply_text)


class ChannelTests(BrokerTestCase):
    """
    Many channels on one connection, and channel.flow.
    """

    def test_manyChannels(self) -> None:
        """
        A connection opens 200 channels; each declares, publishes and gets
        on its own; closing half of them leaves the others working.
        """
        connection = self.connect()
        channels = [connection.channel() for _ in range(200)]
        queues = []
        for index, channel in enumerate(channels):
            queue = channel.queue_declare("", exclusive=True).method.queue
            channel.basic_publish("", queue, b"%d" % index)
            queues.append(queue)
        for index, channel in enumerate(channels):
            _, _, body = channel.basic_get(queues[index], auto_ack=True)
            self.assertEqual(body, b"%d" % index)
        for channel in channels[::2]:
            channel.close()
        for index in range(1, 200, 2):
            channels[index].basic_publish("", queues[index], b"again")
            _, _, body = channels[index].basic_get(queues[index], auto_ack=True)
            self.assertEqual(body, b"again")

    def test_flow(self) -> None:
        """
        channel.flow(active=false) stops deliveries to the channel's
        consumers; messages stay in the queue until flow is active again.
        """
        connection = self.connect()
        channel = connection.channel()
        queue = self.uniqueName("q")
        channel.queue_declare(queue, auto_delete=True)
        deliveries = Deliveries()
        self.assertFalse(channel.flow(False))
        channel.basic_consume(queue, deliveries, auto_ack=True)
        publisher = self.channel(connection)
        publisher.confirm_delivery()
        publisher.basic_publish("", queue, b"held")
        self.assertEqual(messageCount(publisher, queue), 1)
        connection.process_data_events(time_limit=0)
        self.assertEqual(deliveries.bodies, [])
        self.assertTrue(channel.flow(True))
        self.waitFor(connection, lambda: deliveries.bodies, what="delivery after flow")
        self.assertEqual(deliveries.bodies, [b"held"])


class ExchangeTests(BrokerTestCase):
    """
    The built-in exchanges and their routing, and exchange declare, delete
    and bind.
    """

    def boundQueue(
        self, channel: BlockingChannel, exchange: str, key: str = "", arguments: Any = None
    ) -> str:
        """
        A new exclusive queue bound to C{exchange} with C{key}.
        """
        queue = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(queue, exchange, key, arguments=arguments)
        return queue

    def test_defaultExchange(self) -> None:
        """
        The default exchange routes by queue name.
        """
        channel = self.channel()
        queue = self.uniqueName("q")
        channel.queue_declare(queue, exclusive=True)
        channel.basic_publish("", queue, b"by name")
        channel.basic_publish("", queue + ".other", b"nowhere")
        self.assertEqual(drain(channel, queue), [b"by name"])

    def test_direct(self) -> None:
        """
        amq.direct routes by exact key.
        """
        channel = self.channel()
        queue = self.boundQueue(channel, "amq.direct", "a.b")
        for key in ["a.b", "a", "a.b.c", "A.B"]:
            channel.basic_publish("amq.direct", key, key.encode())
        self.assertEqual(drain(channel, queue), [b"a.b"])

    def test_fanout(self) -> None:
        """
        amq.fanout routes to every bound queue, whatever the key.
        """
        channel = self.channel()
        queues = [self.boundQueue(channel, "amq.fanout", str(i)) for i in range(3)]
        channel.basic_publish("amq.fanout", "anything", b"all")
        for queue in queues:
            self.assertEqual(drain(channel, queue), [b"all"])

    def test_topic(self) -> None:
        """
        amq.topic: C{*} matches exactly one word, C{#} zero or more.
        """
        channel = self.channel()
        patterns = ["stock.*", "stock.#", "#.nyse", "*.*.nyse", "#", "stock"]
        queues = {p: self.boundQueue(channel, "amq.topic", p) for p in patterns}
        keys = ["stock", "stock.ibm", "stock.ibm.nyse", "bond.nyse", ""]
        for key in keys:
            channel.basic_publish("amq.topic", key, key.encode() or b"(empty)")
        got = {p: drain(channel, q) for p, q in queues.items()}
        self.assertEqual(
            got,
            {
                "stock.*": [b"stock.ibm"],
                "stock.#": [b"stock", b"stock.ibm", b"stock.ibm.nyse"],
                "#.nyse": [b"stock.ibm.nyse", b"bond.nyse"],
                "*.*.nyse": [b"stock.ibm.nyse"],
                "#": [b"stock", b"stock.ibm", b"stock.ibm.nyse", b"bond.nyse", b"(empty)"],
                "stock": [b"stock"],
            },
        )

    def assertHeadersRouting(self, exchange: str) -> None:
        """
        C{exchange} (a headers exchange) routes on x-match all and any.
        """
        channel = self.channel()
        allQueue = self.boundQueue(
            channel, exchange, "", {"x-match": "all", "format": "pdf", "type": "report"}
        )
        anyQueue = self.boundQueue(
            channel, exchange, "", {"x-match": "any", "format": "pdf", "type": "log"}
        )
        for name, headers in [
            ("both", {"format": "pdf", "type": "report"}),
            ("format", {"format": "pdf"}),
            ("log", {"type": "log", "format": "zip"}),
            ("none", {"format": "zip"}),
            ("empty", {}),
        ]:
            channel.basic_publish(
                exchange, "ignored", name.encode(), BasicProperties(headers=headers)
            )
        self.assertEqual(drain(channel, allQueue), [b"both"])
        self.assertEqual(drain(channel, anyQueue), [b"both", b"format", b"log"])

    def test_headers(self) -> None:
        """
        amq.headers matches on headers with x-match all and any.
        """
        self.assertHeadersRouting("amq.headers")

    def test_match(self) -> None:
        """
        amq.match is a headers exchange too.
        """
        self.assertHeadersRouting("amq.match")

    def test_declarePassive(self) -> None:
        """
        A passive declare succeeds for an existing exchange (whatever type
        it names) and closes the channel with 404 for a missing one.
        """
        connection = self.connect()
        channel = connection.channel()
        name = self.uniqueName("x")
        channel.exchange_declare(name, "topic", auto_delete=False)
        channel.exchange_declare(name, "direct", passive=True)
        channel.exchange_declare("amq.topic", passive=True)
        with self.assertRaises(ChannelClosedByBroker) as caught:
            channel.exchange_declare(self.uniqueName("missing"), passive=True)
        self.assertEqual(caught.exception.reply_code, 404)
        self.assertFalse(channel.is_open)
        self.assertConnectionWorks(connection)
        self.channel(connection).exchange_delete(name)

    def test_redeclareMustMatch(self) -> None:
        """
        Declaring an exchange again with the same properties succeeds; with a
        different type or durability it fails with 406.
        """
        connection = self.connect()
        name = self.uniqueName("x")
        channel = connection.channel()
        channel.exchange_declare(name, "fanout", durable=True)
        channel.exchange_declare(name, "fanout", durable=True)
        changes: list[dict[str, Any]] = [
            {"exchange_type": "direct", "durable": True},
            {"exchange_type": "fanout"},
        ]
        for change in changes:
            with self.assertRaises(ChannelClosedByBroker) as caught:
                connection.channel().exchange_declare(name, **change)
            self.assertEqual(caught.exception.reply_code, 406)
        connection.channel().exchange_delete(name)

    def test_autoDelete(self) -> None:
        """
        An auto-delete exchange goes when its last binding is removed.
        """
        connection = self.connect()
        channel = connection.channel()
        name = self.uniqueName("x")
        channel.exchange_declare(name, "direct", auto_delete=True)
        queue = self.boundQueue(channel, name, "k")
        channel.exchange_declare(name, "direct", passive=True)
        channel.queue_unbind(queue, name, "k")
        with self.assertRaises(ChannelClosedByBroker) as caught:
            channel.exchange_declare(name, "direct", passive=True)
        self.assertEqual(caught.exception.reply_code, 404)

    def test_internal(self) -> None:
        """
        Publishing to an internal exchange closes the channel with 403, but
        messages reach it through an exchange-to-exchange binding.
        """
        connection = self.connect()
        channel = connection.channel()
        internal = self.uniqueName("internal")
        public = self.uniqueName("public")
        channel.exchange_declare(internal, "fanout", internal=True, auto_delete=True)
        channel.exchange_declare(public, "direct", auto_delete=True)
        channel.exchange_bind(internal, public, "k")
        queue = self.boundQueue(channel, internal)
        channel.basic_publish(public, "k", b"through")
        self.assertEqual(drain(channel, queue), [b"through"])
        channel.basic_publish(internal, "", b"direct")
        with self.assertRaises(ChannelClosedByBroker) as caught:
            channel.basic_get(queue)
        self.assertEqual(caught.exception.reply_code, 403)
        self.assertConnectionWorks(connection)

    def test_deleteIfUnused(self) -> None:
        """
        exchange.delete if-unused fails with 406 while a queue is bound, and
        succeeds once it is not.
        """
        connection = self.connect()
        channel = connection.channel()
        name = self.uniqueName("x")
        channel.exchange_declare(name, "direct")
        queue = self.boundQueue(channel, name, "k")
        with self.assertRaises(ChannelClosedByBroker) as caught:
            channel.exchange_delete(name, if_unused=True)
        self.assertEqual(caught.exception.reply_code, 406)
        channel = connection.channel()
        channel.queue_unbind(queue, name, "k")
        channel.exchange_delete(name, if_unused=True)
        with self.assertRaises(ChannelClosedByBroker) as caught:
            channel.exchange_declare(name, passive=True)
        self.assertEqual(caught.exception.reply_code, 404)

    def test_deleteRemovesBindings(self) -> None:
        """
        Deleting an exchange removes its bindings: publishing to a new
        exchange of the same name reaches nothing.
        """
        channel = self.channel()
        name = self.uniqueName("x")
        channel.exchange_declare(name, "fanout")
        queue = self.boundQueue(channel, name)
        channel.exchange_delete(name)
        channel.exchange_declare(name, "fanout")
        channel.basic_publish(name, "", b"lost")
        self.assertEqual(drain(channel, queue), [])
        channel.exchange_delete(name)

    def test_exchangeToExchange(self) -> None:
        """
        exchange.bind makes a source exchange route into a destination
        exchange (and on to its queues); exchange.unbind stops it.
        """
        channel = self.channel()
        source = self.uniqueName("source")
        destination = self.uniqueName("destination")
        channel.exchange_declare(source, "topic")
        channel.exchange_declare(destination, "fanout")
        channel.exchange_bind(destination, source, "orders.#")
        queue = self.boundQueue(channel, destination)
        channel.basic_publish(source, "orders.new", b"routed")
        channel.basic_publish(source, "invoices.new", b"not routed")
        self.assertEqual(drain(channel, queue), [b"routed"])
        channel.exchange_unbind(destination, source, "orders.#")
        channel.basic_publish(source, "orders.new", b"after unbind")
        self.assertEqual(drain(channel, queue), [])
        channel.exchange_delete(source)
        channel.exchange_delete(destination)

    def test_reservedNames(self) -> None:
        """
        Declaring an exchange named amq.* that does not exist is refused
        with 403.
        """
        with self.assertRaises(ChannelClosedByBroker) as caught:
            self.channel().exchange_declare("amq.mine", "direct")
        self.assertEqual(caught.exception.reply_code, 403)


class QueueTests(BrokerTestCase):
    """
    queue.declare in all its forms, bind, unbind, purge and delete.
    """

    def test_serverNamed(self) -> None:
        """
        A queue declared without a name gets a unique amq.gen- name.
        """
        channel = self.channel()
        first = channel.queue_declare("", exclusive=True).method.queue
        second = channel.queue_declare("", exclusive=True).method.queue
        self.assertTrue(first.startswith("amq.gen-"), first)
        self.assertNotEqual(first, second)

    def test_passive(self) -> None:
        """
        A passive declare reports an existing queue and closes the channel
        with 404 for a missing one.
        """
        connection = self.connect()
        channel = connection.channel()
        queue = self.uniqueName("q")
        channel.queue_declare(queue, auto_delete=True)
        channel.basic_publish("", queue, b"1")
        self.assertEqual(messageCount(channel, queue), 1)
        with self.assertRaises(ChannelClosedByBroker) as caught:
            channel.queue_declare(self.uniqueName("missing"), passive=True)
        self.assertEqual(caught.exception.reply_code, 404)
        self.assertConnectionWorks(connection)
        connection.channel().queue_delete(queue)

    def test_declareOkCounts(self) -> None:
        """
        queue.declare-ok counts the ready messages and the consumers.
        """
        connection = self.connect()
        channel = connection.channel()
        queue = self.uniqueName("q")
        ok = channel.queue_declare(queue, exclusive=True).method
        self.assertEqual((ok.queue, ok.message_count, ok.consumer_count), (queue, 0, 0))
        for index in range(5):
            channel.basic_publish("", queue, b"%d" % index)
        ok = channel.queue_declare(queue, exclusive=True).method
        self.assertEqual((ok.message_count, ok.consumer_count), (5, 0))
        consumer = connection.channel()
        consumer.basic_qos(prefetch_count=1)
        deliveries = Deliveries()
        consumer.basic_consume(queue, deliveries)
        consumer.basic_consume(queue, deliveries)
        ok = channel.queue_declare(queue, exclusive=True).method
        self.assertEqual((ok.message_count, ok.consumer_count), (3, 2))

    def test_durableMustMatch(self) -> None:
        """
        Declaring a queue again with another durability fails with 406.
        """
        connection = self.connect()
        queue = self.uniqueName("q")
        channel = connection.channel()
        channel.queue_declare(queue, durable=True)
        channel.queue_declare(queue, durable=True)
        with self.assertRaises(ChannelClosedByBroker) as caught:
            connection.channel().queue_declare(queue, durable=False)
        self.assertEqual(caught.exception.reply_code, 406)
        self.assertIn("durable", caught.exception.reply_text)
        connection.channel().queue_delete(queue)

    def test_exclusive(self) -> None:
        """
        An exclusive queue is refused to other connections with 405
        RESOURCE_LOCKED and goes away with its connection.
        """
        owner = self.connect()
        queue = self.uniqueName("q")
        owner.channel().queue_declare(queue, exclusive=True)
        other = self.connect()
        for attempt in [
            lambda c: c.queue_declare(queue, passive=True),
            lambda c: c.queue_declare(queue, exclusive=True),
            lambda c: c.basic_consume(queue, Deliveries()),
            lambda c: c.basic_get(queue),
            lambda c: c.queue_purge(queue),
            lambda c: c.queue_delete(queue),
        ]:
            with self.assertRaises(ChannelClosedByBroker) as caught:
                attempt(other.channel())
            self.assertEqual(caught.exception.reply_code, 405)
        self.assertConnectionWorks(other)
        owner.close()
        with self.assertRaises(ChannelClosedByBroker) as caught:
            other.channel().queue_declare(queue, passive=True)
        self.assertEqual(caught.exception.reply_code, 404)

    def test_autoDelete(self) -> None:
        """
        An auto-delete queue goes when its last consumer is cancelled (and
        not before it had one).
        """
        connection = self.connect()
        channel = connection.channel()
        queue = self.uniqueName("q")
        channel.queue_declare(queue, auto_delete=True)
        channel.queue_declare(queue, passive=True)
        first = channel.basic_consume(queue, Deliveries())
        second = channel.basic_consume(queue, Deliveries())
        channel.basic_cancel(first)
        self.assertEqual(channel.queue_declare(queue, passive=True).method.consumer_count, 1)
        channel.basic_cancel(second)
        with self.assertRaises(ChannelClosedByBroker) as caught:
            channel.queue_declare(queue, passive=True)
        self.assertEqual(caught.exception.reply_code, 404)

    def test_bindUnbind(self) -> None:
        """
        queue.bind adds a route, queue.unbind removes it; unbinding what
        is not bound succeeds.
        """
        channel = self.channel()
        queue = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(queue, "amq.direct", "k1")
        channel.queue_bind(queue, "amq.direct", "k2")
        channel.basic_publish("amq.direct", "k1", b"1")
        channel.basic_publish("amq.direct", "k2", b"2")
        channel.queue_unbind(queue, "amq.direct", "k1")
        channel.queue_unbind(queue, "amq.direct", "never-bound")
        channel.basic_publish("amq.direct", "k1", b"3")
        channel.basic_publish("amq.direct", "k2", b"4")
        self.assertEqual(drain(channel, queue), [b"1", b"2", b"4"])

    def test_bindToMissingExchange(self) -> None:
        """
        Binding to an exchange that does not exist fails with 404.
        """
        channel = self.channel()
        queue = channel.queue_declare("", exclusive=True).method.queue
        with self.assertRaises(ChannelClosedByBroker) as caught:
            channel.queue_bind(queue, self.uniqueName("missing"), "k")
        self.assertEqual(caught.exception.reply_code, 404)

    def test_purge(self) -> None:
        """
        queue.purge drops the ready messages and says how many; a message a
        consumer holds stays and comes back when it is rejected.
        """
        connection = self.connect()
        channel = connection.channel()
        queue = channel.queue_declare("", exclusive=True).method.queue
        for index in range(4):
            channel.basic_publish("", queue, b"%d" % index)
        method, _, _ = channel.basic_get(queue)
        self.assertEqual(channel.queue_purge(queue).method.message_count, 3)
        self.assertEqual(messageCount(channel, queue), 0)
        channel.basic_reject(method.delivery_tag, requeue=True)
        self.assertEqual(drain(channel, queue), [b"0"])
        self.assertEqual(channel.queue_purge(queue).method.message_count, 0)

    def test_deleteIfUnused(self) -> None:
        """
        queue.delete if-unused fails with 406 while the queue has a
        consumer.
        """
        connection = self.connect()
        channel = connection.channel()
        queue = self.uniqueName("q")
        channel.queue_declare(queue)
        tag = channel.basic_consume(queue, Deliveries())
        with self.assertRaises(ChannelClosedByBroker) as caught:
            connection.channel().queue_delete(queue, if_unused=True)
        self.assertEqual(caught.exception.reply_code, 406)
        channel.basic_cancel(tag)
        self.assertEqual(channel.queue_delete(queue, if_unused=True).method.message_count, 0)

    def test_deleteIfEmpty(self) -> None:
        """
        queue.delete if-empty fails with 406 while the queue holds
        messages; a plain delete says how many it dropped.
        """
        connection = self.connect()
        channel = connection.channel()
        queue = self.uniqueName("q")
        channel.queue_declare(queue)
        channel.basic_publish("", queue, b"1")
        channel.basic_publish("", queue, b"2")
        with self.assertRaises(ChannelClosedByBroker) as caught:
            connection.channel().queue_delete(queue, if_empty=True)
        self.assertEqual(caught.exception.reply_code, 406)
        self.assertEqual(channel.queue_delete(queue).method.message_count, 2)
        with self.assertRaises(ChannelClosedByBroker) as caught:
            channel.queue_declare(queue, passive=True)
        self.assertEqual(caught.exception.reply_code, 404)


class BasicTests(BrokerTestCase):
    """
    Publishing, consuming, getting, acknowledging, prefetch, publisher
    confirms and transactions.
    """

    def queue(self, channel: BlockingChannel, *bodies: bytes) -> str:
        """
        A new exclusive queue holding C{bodies}.
        """
        queue = channel.queue_declare("", exclusive=True).method.queue
        for body in bodies:
            channel.basic_publish("", queue, body)
        return queue

    def test_mandatoryReturned(self) -> None:
        """
        A mandatory message that reaches no queue comes back in basic.return
        with 312 NO_ROUTE, body and properties intact; a routable one does
        not.
        """
        connection = self.connect()
        channel = connection.channel()
        returned: list[tuple[Any, BasicProperties, bytes]] = []
        channel.add_on_return_callback(
            lambda ch, method, properties, body: returned.append((method, properties, body))
        )
        queue = self.queue(channel)
        channel.basic_publish("", queue, b"routed", mandatory=True)
        channel.basic_publish(
            "amq.direct",
            "nobody",
            b"unroutable",
            BasicProperties(content_type="text/plain", headers={"h": 1}),
            mandatory=True,
        )
        channel.basic_publish("amq.direct", "nobody", b"dropped", mandatory=False)
        self.waitFor(connection, lambda: returned, what="basic.return")
        connection.process_data_events(time_limit=0)
        self.assertEqual(len(returned), 1)
        method, properties, body = returned[0]
        self.assertEqual(
            (method.reply_code, method.reply_text, method.exchange, method.routing_key),
            (312, "NO_ROUTE", "amq.direct", "nobody"),
        )
        self.assertEqual(body, b"unroutable")
        self.assertEqual(properties.content_type, "text/plain")
        self.assertEqual(properties.headers, {"h": 1})
        self.assertEqual(drain(channel, queue), [b"routed"])

    def test_mandatoryWithConfirms(self) -> None:
        """
        With publisher confirms on, pika reports the basic.return that comes
        before the basic.ack as an unroutable message.
        """
        channel = self.channel()
        channel.confirm_delivery()
        with self.assertRaises(UnroutableError):
            channel.basic_publish("amq.direct", "nobody", b"x", mandatory=True)

    def test_consumeAck(self) -> None:
        """
        A consumer gets every message in order with increasing delivery tags
        and the properties they were published with.
        """
        connection = self.connect()
        channel = connection.channel()
        queue = self.queue(channel)
        deliveries = Deliveries()
        channel.basic_consume(queue, deliveries)
        properties = BasicProperties(
            content_type="application/json",
            delivery_mode=2,
            priority=3,
            correlation_id="c1",
            reply_to="r",
            message_id="m1",
            timestamp=1700000000,
            type="t",
            app_id="a",
            headers={"k": "v", "n": 5, "nested": {"x": [1, 2]}},
        )
        for index in range(10):
            channel.basic_publish("", queue, b"%d" % index, properties)
        self.waitFor(connection, lambda: len(deliveries.received) == 10, what="10 deliveries")
        self.assertEqual(deliveries.bodies, [b"%d" % i for i in range(10)])
        tags = [method.delivery_tag for method, _, _ in deliveries.received]
        self.assertEqual(tags, list(range(1, 11)))
        got = deliveries.received[0][1]
        for field in [
            "content_type", "delivery_mode", "priority", "correlation_id", "reply_to",
            "message_id", "timestamp", "type", "app_id", "headers",
        ]:
            self.assertEqual(getattr(got, field), getattr(properties, field), field)
        channel.basic_ack(10, multiple=True)
        self.assertEqual(messageCount(channel, queue), 0)

    def test_largeMessage(self) -> None:
        """
        A message bigger than a frame is split into body frames and comes
        back whole, to a consumer and to basic.get.
        """
        connection = self.connect()
        channel = connection.channel()
        body = bytes(range(256)) * 2000
        queue = self.queue(channel, body, body)
        _, _, got = channel.basic_get(queue, auto_ack=True)
        self.assertEqual(got, body)
        deliveries = Deliveries()
        channel.basic_consume(queue, deliveries, auto_ack=True)
        self.waitFor(connection, lambda: deliveries.bodies, what="large delivery")
        self.assertEqual(deliveries.bodies, [body])

    def test_consumeNoAck(self) -> None:
        """
        With no-ack, delivered messages are gone at once: closing the
        channel puts nothing back.
        """
        connection = self.connect()
        channel = connection.channel()
        queue = self.queue(channel, b"1", b"2")
        consumer = connection.channel()
        deliveries = Deliveries()
        consumer.basic_consume(queue, deliveries, auto_ack=True)
        self.waitFor(connection, lambda: len(deliveries.received) == 2, what="deliveries")
        consumer.close()
        self.assertEqual(messageCount(channel, queue), 0)

    def test_unackedRequeuedOnClose(self) -> None:
        """
        Messages a consumer did not acknowledge go back, marked redelivered,
        when its channel closes.
        """
        connection = self.connect()
        channel = connection.channel()
        queue = self.queue(channel, b"1", b"2")
        consumer = connection.channel()
        deliveries = Deliveries()
        consumer.basic_consume(queue, deliveries)
        self.waitFor(connection, lambda: len(deliveries.received) == 2, what="deliveries")
        self.assertFalse(deliveries.received[0][0].redelivered)
        consumer.close()
        method, _, body = channel.basic_get(queue, auto_ack=True)
        self.assertEqual((body, method.redelivered), (b"1", True))

    def test_exclusiveConsumer(self) -> None:
        """
        An exclusive consumer keeps others off the queue (403), and one
        cannot consume exclusively from a queue that has consumers (403).
        """
        connection = self.connect()
        channel = connection.channel()
        queue = self.uniqueName("q")
        channel.queue_declare(queue, auto_delete=True)
        channel.basic_consume(queue, Deliveries(), exclusive=True)
        with self.assertRaises(ChannelClosedByBroker) as caught:
            connection.channel().basic_consume(queue, Deliveries())
        self.assertEqual(caught.exception.reply_code, 403)
        other = self.uniqueName("q")
        channel.queue_declare(other, auto_delete=True)
        channel.basic_consume(other, Deliveries())
        with self.assertRaises(ChannelClosedByBroker) as caught:
            connection.channel().basic_consume(other, Deliveries(), exclusive=True)
        self.assertEqual(caught.exception.reply_code, 403)
        self.assertConnectionWorks(connection)

    def test_serverConsumerTag(self) -> None:
        """
        basic.consume with an empty tag gets a unique amq.ctag- tag from the
        broker. (pika and aio-pika always make their own tags, so this
        speaks AMQP on a socket.)
        """
        raw = self.raw()
        raw.handshake()
        raw.openChannel(1)
        raw.sendMethod(1, commands.Queue.Declare(queue="", exclusive=True))
        _, declareOk = raw.readMethod()
        tags = []
        for _ in range(2):
            raw.sendMethod(1, commands.Basic.Consume(queue=declareOk.queue, consumer_tag=""))
            _, consumeOk = raw.readMethod()
            self.assertIsInstance(consumeOk, commands.Basic.ConsumeOk)
            tags.append(consumeOk.consumer_tag)
        self.assertTrue(all(tag.startswith("amq.ctag-") for tag in tags), tags)
        self.assertNotEqual(tags[0], tags[1])

    def test_cancel(self) -> None:
        """
        After basic.cancel-ok a consumer gets nothing more; the queue keeps
        what is published later.
        """
        connection = self.connect()
        channel = connection.channel()
        queue = self.queue(channel)
        deliveries = Deliveries()
        tag = channel.basic_consume(queue, deliveries, auto_ack=True)
        channel.basic_publish("", queue, b"before")
        self.waitFor(connection, lambda: deliveries.bodies, what="delivery")
        channel.basic_cancel(tag)
        self.assertEqual(channel.consumer_tags, [])
        channel.basic_publish("", queue, b"after")
        self.assertEqual(drain(channel, queue), [b"after"])
        self.assertEqual(deliveries.bodies, [b"before"])

    def test_brokerCancelsConsumerOfDeletedQueue(self) -> None:
        """
        When the queue a consumer consumes from is deleted, the broker sends
        basic.cancel, which pika passes to the on_cancel callback.
        """
        connection = self.connect()
        channel = connection.channel()
        queue = self.uniqueName("q")
        channel.queue_declare(queue)
        cancelled: list[Any] = []
        channel.add_on_cancel_callback(cancelled.append)
        tag = channel.basic_consume(queue, Deliveries())
        connection.channel().queue_delete(queue)
        self.waitFor(connection, lambda: cancelled, what="basic.cancel from the broker")
        self.assertIsInstance(cancelled[0].method, Basic.Cancel)
        self.assertEqual(cancelled[0].method.consumer_tag, tag)
        self.assertEqual(channel.consumer_tags, [])
        self.assertTrue(channel.is_open)

    def test_get(self) -> None:
        """
        basic.get returns the first message and how many remain, then
        get-empty.
        """
        channel = self.channel()
        queue = self.queue(channel, b"1", b"2")
        method, properties, body = channel.basic_get(queue)
        self.assertIsInstance(method, Basic.GetOk)
        self.assertEqual((body, method.message_count, method.redelivered), (b"1", 1, False))
        self.assertEqual((method.exchange, method.routing_key), ("", queue))
        channel.basic_ack(method.delivery_tag)
        method, _, body = channel.basic_get(queue, auto_ack=True)
        self.assertEqual((body, method.message_count), (b"2", 0))
        self.assertEqual(channel.basic_get(queue), (None, None, None))

    def test_ackMultiple(self) -> None:
        """
        basic.ack multiple settles every delivery up to the tag.
        """
        channel = self.channel()
        queue = self.queue(channel, b"1", b"2", b"3")
        tags = [channel.basic_get(queue)[0].delivery_tag for _ in range(3)]
        channel.basic_ack(tags[1], multiple=True)
        channel.basic_recover(requeue=True)
        method, _, body = channel.basic_get(queue, auto_ack=True)
        self.assertEqual((body, method.redelivered), (b"3", True))
        self.assertEqual(channel.basic_get(queue), (None, None, None))

    def test_nackRequeue(self) -> None:
        """
        basic.nack multiple with requeue puts the messages back in order,
        marked redelivered.
        """
        channel = self.channel()
        queue = self.queue(channel, b"1", b"2", b"3")
        tags = [channel.basic_get(queue)[0].delivery_tag for _ in range(3)]
        channel.basic_nack(tags[2], multiple=True, requeue=True)
        got = [channel.basic_get(queue, auto_ack=True) for _ in range(3)]
        self.assertEqual([body for _, _, body in got], [b"1", b"2", b"3"])
        self.assertTrue(all(method.redelivered for method, _, _ in got))

    def test_nackDiscard(self) -> None:
        """
        basic.nack without requeue drops the message; a single nack leaves
        other deliveries alone.
        """
        channel = self.channel()
        queue = self.queue(channel, b"1", b"2")
        first = channel.basic_get(queue)[0].delivery_tag
        second = channel.basic_get(queue)[0].delivery_tag
        channel.basic_nack(first, multiple=False, requeue=False)
        channel.basic_nack(second, multiple=False, requeue=True)
        self.assertEqual(drain(channel, queue), [b"2"])

    def test_reject(self) -> None:
        """
        basic.reject with requeue gives the message back (redelivered);
        without requeue it is dropped.
        """
        connection = self.connect()
        channel = connection.channel()
        queue = self.queue(channel, b"1")
        deliveries = Deliveries()
        channel.basic_consume(queue, deliveries)
        self.waitFor(connection, lambda: len(deliveries.received) == 1, what="delivery")
        channel.basic_reject(deliveries.received[0][0].delivery_tag, requeue=True)
        self.waitFor(connection, lambda: len(deliveries.received) == 2, what="redelivery")
        method = deliveries.received[1][0]
        self.assertEqual((deliveries.bodies[1], method.redelivered), (b"1", True))
        channel.basic_reject(method.delivery_tag, requeue=False)
        self.assertEqual(messageCount(channel, queue), 0)

    def test_recover(self) -> None:
        """
        basic.recover(requeue=true) redelivers every unacknowledged message,
        marked redelivered.
        """
        connection = self.connect()
        channel = connection.channel()
        queue = self.queue(channel, b"1", b"2")
        deliveries = Deliveries()
        channel.basic_consume(queue, deliveries)
        self.waitFor(connection, lambda: len(deliveries.received) == 2, what="deliveries")
        channel.basic_recover(requeue=True)
        self.waitFor(connection, lambda: len(deliveries.received) == 4, what="redeliveries")
        self.assertEqual(deliveries.bodies, [b"1", b"2", b"1", b"2"])
        self.assertEqual(
            [method.redelivered for method, _, _ in deliveries.received],
            [False, False, True, True],
        )

    def test_prefetchPerConsumer(self) -> None:
        """
        basic.qos prefetch_count limits how many unacknowledged messages
        each consumer holds; an ack lets the next one through.
        """
        connection = self.connect()
        channel = connection.channel()
        queue = self.queue(channel, *[b"%d" % i for i in range(5)])
        consumer = connection.channel()
        consumer.basic_qos(prefetch_count=2)
        deliveries = Deliveries()
        consumer.basic_consume(queue, deliveries)
        self.assertEqual(messageCount(channel, queue), 3)
        self.waitFor(connection, lambda: len(deliveries.received) == 2, what="2 deliveries")
        consumer.basic_ack(deliveries.received[0][0].delivery_tag)
        self.waitFor(connection, lambda: len(deliveries.received) == 3, what="3rd delivery")
        self.assertEqual(messageCount(channel, queue), 2)
        self.assertEqual(deliveries.bodies, [b"0", b"1", b"2"])

    def test_prefetchGlobal(self) -> None:
        """
        basic.qos global=true limits the unacknowledged messages of the
        whole channel, across its consumers.
        """
        connection = self.connect()
        channel = connection.channel()
        first = self.queue(channel, *[b"a%d" % i for i in range(5)])
        second = self.queue(channel, *[b"b%d" % i for i in range(5)])
        consumer = connection.channel()
        consumer.basic_qos(prefetch_count=3, global_qos=True)
        deliveries = Deliveries()
        consumer.basic_consume(first, deliveries)
        consumer.basic_consume(second, deliveries)
        self.assertEqual(messageCount(channel, first) + messageCount(channel, second), 7)
        self.waitFor(connection, lambda: len(deliveries.received) == 3, what="3 deliveries")
        consumer.basic_ack(0, multiple=True)
        self.waitFor(connection, lambda: len(deliveries.received) == 6, what="6 deliveries")
        self.assertEqual(messageCount(channel, first) + messageCount(channel, second), 4)

    def test_confirms(self) -> None:
        """
        After confirm.select every publish is acknowledged, routed or not.
        """
        channel = self.channel()
        channel.confirm_delivery()
        queue = self.queue(channel)
        for index in range(50):
            channel.basic_publish("", queue, b"%d" % index)
        channel.basic_publish("amq.direct", "nobody", b"unrouted")
        self.assertEqual(messageCount(channel, queue), 50)

    def test_confirmsCountAcrossMethods(self) -> None:
        """
        Publisher confirms, read on a socket: delivery tags count the
        publishes of the channel from 1, and the broker may confirm several
        at once with multiple=true.
        """
        raw = self.raw()
        raw.handshake()
        raw.openChannel(1)
        raw.sendMethod(1, commands.Confirm.Select())
        _, selectOk = raw.readMethod()
        self.assertIsInstance(selectOk, commands.Confirm.SelectOk)
        data = b""
        for index in range(5):
            data += methodFrame(1, commands.Basic.Publish(exchange="amq.direct", routing_key="x"))
            data += pamqpFrame.marshal(pamqpHeader.ContentHeader(0, 1), 1)
            data += pamqpFrame.marshal(pamqpBody.ContentBody(b"%d" % index), 1)
        raw.send(data)
        confirmed = 0
        while confirmed < 5:
            _, ack = raw.readMethod()
            self.assertIsInstance(ack, commands.Basic.Ack)
            self.assertGreater(ack.delivery_tag, confirmed)
            self.assertEqual(ack.multiple, ack.delivery_tag - confirmed > 1)
            confirmed = ack.delivery_tag
        self.assertEqual(confirmed, 5)

    def test_txCommit(self) -> None:
        """
        In a transaction, publishes and acks take effect at tx.commit.
        """
        connection = self.connect()
        channel = connection.channel()
        observer = connection.channel()
        queue = self.queue(observer, b"held")
        channel.tx_select()
        method, _, _ = channel.basic_get(queue)
        channel.basic_publish("", queue, b"1")
        channel.basic_publish("", queue, b"2")
        channel.basic_ack(method.delivery_tag)
        self.assertEqual(messageCount(observer, queue), 0)
        channel.tx_commit()
        self.assertEqual(messageCount(observer, queue), 2)
        channel.basic_recover(requeue=True)
        self.assertEqual(drain(observer, queue), [b"1", b"2"])

    def test_txRollback(self) -> None:
        """
        tx.rollback discards the transaction's publishes and acks; the
        channel stays transactional.
        """
        connection = self.connect()
        channel = connection.channel()
        observer = connection.channel()
        queue = self.queue(observer, b"held")
        channel.tx_select()
        method, _, _ = channel.basic_get(queue)
        channel.basic_publish("", queue, b"discarded")
        channel.basic_ack(method.delivery_tag)
        channel.tx_rollback()
        self.assertEqual(messageCount(observer, queue), 0)
        channel.basic_recover(requeue=True)
        self.assertEqual(drain(observer, queue), [b"held"])
        channel.basic_publish("", queue, b"committed")
        channel.tx_commit()
        self.assertEqual(drain(observer, queue), [b"committed"])

    def test_txAndConfirmExclusive(self) -> None:
        """
        A channel cannot be both transactional and in confirm mode: 406.
        """
        connection = self.connect()
        channel = connection.channel()
        channel.tx_select()
        with self.assertRaises(ChannelClosedByBroker) as caught:
            channel.confirm_delivery()
        self.assertEqual(caught.exception.reply_code, 406)
        channel = connection.channel()
        channel.confirm_delivery()
        with self.assertRaises(ChannelClosedByBroker) as caught:
            channel.tx_select()
        self.assertEqual(caught.exception.reply_code, 406)


class ReplicateArgumentTests(BrokerTestCase):
    """
    The C{qpid.replicate} argument of queue and exchange declares.
    """

    def test_validLevels(self) -> None:
        """
        none, configuration and all are accepted on queues and exchanges.
        """
        channel = self.channel()
        for level in ["none", "configuration", "all"]:
            queue = self.uniqueName(level)
            channel.queue_declare(queue, auto_delete=True, arguments={"qpid.replicate": level})
            channel.queue_declare(queue, passive=True)
            exchange = self.uniqueName(level)
            channel.exchange_declare(exchange, "direct", arguments={"qpid.replicate": level})
            channel.exchange_delete(exchange)

    def test_invalidLevel(self) -> None:
        """
        Any other value closes the channel with 406 and a text that names
        the valid values; the connection carries on.
        """
        connection = self.connect()
        for declare in [
            lambda c, n: c.queue_declare(n, arguments={"qpid.replicate": "everything"}),
            lambda c, n: c.exchange_declare(n, "direct", arguments={"qpid.replicate": "some"}),
            lambda c, n: c.queue_declare(n, arguments={"qpid.replicate": 1}),
        ]:
            name = self.uniqueName()
            with self.assertRaises(ChannelClosedByBroker) as caught:
                declare(connection.channel(), name)
            self.assertEqual(caught.exception.reply_code, 406)
            text = caught.exception.reply_text
            self.assertIn("qpid.replicate", text)
            self.assertIn("none, configuration, all", text)
            self.assertIn(name, text)
        self.assertConnectionWorks(connection)

    def test_levelMustMatchOnRedeclare(self) -> None:
        """
        Declaring a queue again with another replication level fails with
        406, like any other inequivalent argument.
        """
        connection = self.connect()
        queue = self.uniqueName("q")
        connection.channel().queue_declare(queue, arguments={"qpid.replicate": "all"})
        with self.assertRaises(ChannelClosedByBroker) as caught:
            connection.channel().queue_declare(queue, arguments={"qpid.replicate": "none"})
        self.assertEqual(caught.exception.reply_code, 406)
        connection.channel().queue_delete(queue)


class MemoryWatermarkTests(BrokerTestCase):
    """
    A broker with a 200000 byte memory high watermark blocks publishers
    (connection.blocked) and unblocks them once consumers drain it.
    """

    brokerArguments = ["--memory-high-watermark", "200000"]

    def test_blockedAndUnblocked(self) -> None:
        """
        Publishing past the watermark brings connection.blocked; consuming
        the queue brings connection.unblocked, and every message published
        arrives, including one sent after the broker unblocked.
        """
        # With confirms, each publish waits for its basic.ack, which the
        # broker sends after connection.blocked: the publisher stops at the
        # message that crossed the watermark and has nothing more in flight.
        # blocked_connection_timeout turns a broker that never unblocks into
        # a failure instead of a hang.
        publisher = self.connect(blocked_connection_timeout=20)
        events: list[str] = []
        publisher.add_on_connection_blocked_callback(lambda c, m: events.append("blocked"))
        publisher.add_on_connection_unblocked_callback(lambda c, m: events.append("unblocked"))
        channel = publisher.channel()
        channel.confirm_delivery()
        queue = self.uniqueName("q")
        channel.queue_declare(queue, auto_delete=True)
        body = b"m" * 10000
        published = 0
        while not events:
            self.assertLess(published, 200, "no connection.blocked after 2 MB")
            channel.basic_publish("", queue, body)
            published += 1
            publisher.process_data_events(time_limit=0)
        self.assertEqual(events, ["blocked"])
        self.assertEqual(published, 200000 // (len(body) + Resources.overhead) + 1)

        consumerConnection = self.connect()
        consumer = consumerConnection.channel()
        deliveries = Deliveries()
        consumer.basic_consume(queue, deliveries, auto_ack=True)

        def pumpBoth(left: float) -> None:
            consumerConnection.process_data_events(time_limit=min(left, 0.05))
            publisher.process_data_events(time_limit=0)

        waitUntil(
            lambda: len(deliveries.received) == published and events[-1] == "unblocked",
            pumpBoth,
            10,
            "the queue to drain and connection.unblocked",
        )
        self.assertEqual(events, ["blocked", "unblocked"])
        channel.basic_publish("", queue, b"after")
        waitUntil(
            lambda: len(deliveries.received) == published + 1, pumpBoth, 10,
            "every message, the one after unblocking too",
        )
        self.assertEqual(deliveries.bodies[-1], b"after")
        self.assertEqual(deliveries.bodies[:-1], [body] * published)
