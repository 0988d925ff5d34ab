"""
Tests for the RabbitMQ 3.10 behaviours that client libraries rely on (issue
15), each as RabbitMQ 3.10.8 answered it when driven by pika: the reply
codes, texts and the class and method ids of every close, idempotent
unbinding, connection.update-secret, the channel_max limit, exclusive
queues of other connections, C{x-queue-type}, C{x-queue-mode} and
C{x-single-active-consumer}.

Each test drives an L{AMQPServer} synchronously through the test client
of L{qha.test.support}; no sockets, no reactor, no sleeps.
"""

from __future__ import annotations

from typing import Any

from pamqp import commands
from twisted.trial.unittest import SynchronousTestCase

from qha.broker.errors import NotImplemented_, PreconditionFailed
from qha.broker.queue import checkDeclaration
from qha.broker.vhost import VirtualHost
from qha.ha.primary import ALL, CONFIGURATION, NONE, replicateLevel
from qha.test.support import Client, ProtocolTestCase, contents, names, publishBytes

LOCKED = (
    "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'mine' in vhost"
    " '/'. It could be originally declared on another connection or the exclusive"
    " property value does not match that of the original declaration."
)
"""
RabbitMQ's text for another connection's exclusive queue.
"""


def ids(close: Any) -> tuple[int, int]:
    """
    The class and method ids a channel.close or connection.close names.
    """
    return (close.class_id, close.method_id)


class UpdateSecretTests(ProtocolTestCase):
    """
    connection.update-secret, with which pika and aiormq renew OAuth tokens.
    """

    def test_accepted(self) -> None:
        """
        An open connection's update-secret is answered with update-secret-ok
        and the connection and its channels carry on: like RabbitMQ's
        internal backend, whose state cannot expire, a password user has
        nothing to renew, so any secret is accepted (RabbitMQ 3.10 answers
        update-secret-ok to guest sending "not-the-password").
        """
        client = self.openClient(channels=(1,))
        frames = client.call(
            0, commands.Connection.UpdateSecret(new_secret="not-the-password", reason="rotate")
        )
        self.assertEqual(names(frames), [(0, "Connection.UpdateSecretOk")])
        self.assertFalse(client.transport.disconnecting)
        self.assertEqual(self.factory.connections, {client.server})
        frames = client.call(1, commands.Queue.Declare(queue="q"))
        self.assertEqual(names(frames), [(1, "Queue.DeclareOk")])
        self.assertEqual(client.server.user, "guest")

    def test_onAChannel(self) -> None:
        """
        update-secret belongs to channel 0: on another channel it is a
        connection error (540, as for every connection method sent on a
        channel) naming the method (10, 70).
        """
        client = self.openClient(channels=(1,))
        frames = client.call(1, commands.Connection.UpdateSecret(new_secret="s", reason="r"))
        close = self.assertConnectionClosed(client, frames, 540)
        self.assertEqual(ids(close), (10, 70))
        self.finishClose(client)


class UnbindTests(ProtocolTestCase):
    """
    Unbinding is idempotent in RabbitMQ 3.10 (aio-pika's RPC pattern and
    test clean-ups unbind queues that are already gone).
    """

    def setUp(self) -> None:
        """
        A client with channel 1, queue C{q} and exchange C{x}.
        """
        super().setUp()
        self.client = self.openClient(channels=(1,))
        self.client.call(
            1,
            commands.Queue.Declare(queue="q"),
            commands.Exchange.Declare(exchange="x", exchange_type="direct"),
        )

    def unbind(self, queue: str, exchange: str) -> list[Any]:
        """
        Send queue.unbind of C{queue} from C{exchange} with key C{k}.
        """
        return self.client.call(
            1, commands.Queue.Unbind(queue=queue, exchange=exchange, routing_key="k")
        )

    def test_missingBinding(self) -> None:
        """
        Unbinding a binding that is not there is unbind-ok.
        """
        self.assertEqual(names(self.unbind("q", "x")), [(1, "Queue.UnbindOk")])

    def test_missingQueue(self) -> None:
        """
        Unbinding a queue that does not exist is unbind-ok, not 404.
        """
        self.assertEqual(names(self.unbind("gone", "x")), [(1, "Queue.UnbindOk")])

    def test_missingExchange(self) -> None:
        """
        Unbinding from an exchange that does not exist is unbind-ok, and so
        is unbinding with neither there.
        """
        self.assertEqual(names(self.unbind("q", "gone")), [(1, "Queue.UnbindOk")])
        self.assertEqual(names(self.unbind("gone", "gone")), [(1, "Queue.UnbindOk")])

    def test_bindingRemoved(self) -> None:
        """
        A binding that is there is removed.
        """
        self.client.call(1, commands.Queue.Bind(queue="q", exchange="x", routing_key="k"))
        self.assertEqual(len(self.vhost.exchange("x").bindings), 1)
        self.assertEqual(names(self.unbind("q", "x")), [(1, "Queue.UnbindOk")])
        self.assertEqual(self.vhost.exchange("x").bindings, {})

    def test_defaultExchange(self) -> None:
        """
        The default exchange's bindings cannot be removed: 403, naming
        queue.unbind (50, 50).
        """
        close = self.assertChannelClosed(self.unbind("q", ""), 1, 403)
        self.assertEqual(
            close.reply_text, "ACCESS_REFUSED - operation not permitted on the default exchange"
        )
        self.assertEqual(ids(close), (50, 50))

    def test_exchangeUnbindMissing(self) -> None:
        """
        exchange.unbind of a missing binding, source or destination is
        unbind-ok.
        """
        for destination, source in [("x", "amq.direct"), ("gone", "x"), ("x", "gone")]:
            frames = self.client.call(
                1,
                commands.Exchange.Unbind(
                    destination=destination, source=source, routing_key="k"
                ),
            )
            self.assertEqual(names(frames), [(1, "Exchange.UnbindOk")])


class ExclusiveQueueTests(ProtocolTestCase):
    """
    Another connection's exclusive queue: 405 RESOURCE_LOCKED with
    RabbitMQ's text and the method's ids, for every method that names it.
    """

    def setUp(self) -> None:
        """
        C{owner} declares the exclusive queue C{mine}; C{other} has channel
        1 open.
        """
        super().setUp()
        self.owner = self.openClient(channels=(1,))
        self.owner.call(1, commands.Queue.Declare(queue="mine", exclusive=True))
        self.other = self.openClient(channels=(1,))

    def assertLocked(self, method: Any, expected: tuple[int, int]) -> None:
        """
        C{method} from the other connection closes its channel with 405,
        RabbitMQ's text and the ids C{expected}.
        """
        frames = self.other.call(1, method)
        close = self.assertChannelClosed(frames, 1, 405)
        self.assertEqual(close.reply_text, LOCKED)
        self.assertEqual(ids(close), expected)
        self.other.call(1, commands.Channel.CloseOk())
        self.other.openChannel(1)

    def test_everyMethod(self) -> None:
        """
        declare (exclusive or not, passive or not), consume, get, purge,
        delete and bind are refused.
        """
        for method, expected in [
            (commands.Queue.Declare(queue="mine"), (50, 10)),
            (commands.Queue.Declare(queue="mine", exclusive=True), (50, 10)),
            (commands.Queue.Declare(queue="mine", passive=True), (50, 10)),
            (commands.Basic.Consume(queue="mine"), (60, 20)),
            (commands.Basic.Get(queue="mine"), (60, 70)),
            (commands.Queue.Purge(queue="mine"), (50, 30)),
            (commands.Queue.Delete(queue="mine"), (50, 40)),
            (commands.Queue.Bind(queue="mine", exchange="amq.direct", routing_key="k"), (50, 20)),
        ]:
            self.assertLocked(method, expected)
        self.assertIn("mine", self.vhost.queues)

    def test_unbind(self) -> None:
        """
        Unbinding a binding of the queue that is not there is unbind-ok, as
        in RabbitMQ; one that is there is refused.
        """
        unbind = commands.Queue.Unbind(queue="mine", exchange="amq.direct", routing_key="k")
        self.assertEqual(names(self.other.call(1, unbind)), [(1, "Queue.UnbindOk")])
        self.owner.call(1, commands.Queue.Bind(queue="mine", exchange="amq.direct", routing_key="k"))
        self.assertLocked(unbind, (50, 50))
        self.assertEqual(len(self.vhost.exchange("amq.direct").bindings), 1)


class ExclusiveFlagTests(ProtocolTestCase):
    """
    A re-declare on the owning connection whose exclusive flag differs from
    the queue's: RabbitMQ 3.10 answers 405 RESOURCE_LOCKED (its
    check_exclusive_access, strict), not 406 inequivalent arg, and checks
    it before durable and auto_delete. aiormq's test_exclusive_queue_locked
    expects the 405.
    """

    def assertLocked(self, client: Client, method: Any, name: str = "mine") -> None:
        """
        C{method} closes channel 2 of C{client} with 405, RabbitMQ's text
        for queue C{name} and queue.declare's ids.
        """
        frames = client.call(2, method)
        close = self.assertChannelClosed(frames, 2, 405)
        self.assertEqual(close.reply_text, LOCKED.replace("'mine'", f"'{name}'"))
        self.assertEqual(ids(close), (50, 10))
        client.call(2, commands.Channel.CloseOk())

    def test_exclusiveDeclaredNot(self) -> None:
        """
        The owner re-declaring its exclusive queue as not exclusive (also
        with another durable flag, which is not looked at first) is
        refused with 405; the queue stays.
        """
        client = self.openClient(channels=(1, 2))
        client.call(1, commands.Queue.Declare(queue="mine", exclusive=True))
        self.assertLocked(client, commands.Queue.Declare(queue="mine"))
        client.openChannel(2)
        self.assertLocked(client, commands.Queue.Declare(queue="mine", durable=True))
        self.assertIn("mine", self.vhost.queues)

    def test_sharedDeclaredExclusive(self) -> None:
        """
        A queue that is not exclusive, re-declared exclusive (with another
        durable flag), is refused with 405 too.
        """
        client = self.openClient(channels=(1, 2))
        client.call(1, commands.Queue.Declare(queue="shared", durable=True))
        self.assertLocked(client, commands.Queue.Declare(queue="shared", exclusive=True), "shared")
        self.assertFalse(self.vhost.queues["shared"].exclusive)

    def test_exclusiveIsTransient(self) -> None:
        """
        An exclusive queue is never durable, as in RabbitMQ: one declared
        durable is transient, and re-declaring it with either durable flag
        is declare-ok.
        """
        client = self.openClient(channels=(1,))
        frames = client.call(1, commands.Queue.Declare(queue="mine", exclusive=True, durable=True))
        self.assertEqual(names(frames), [(1, "Queue.DeclareOk")])
        self.assertFalse(self.vhost.queues["mine"].durable)
        for durable in (False, True):
            frames = client.call(1, commands.Queue.Declare(queue="mine", exclusive=True, durable=durable))
            self.assertEqual(names(frames), [(1, "Queue.DeclareOk")])


class ChannelMaxTests(ProtocolTestCase):
    """
    The channel_max limit.
    """

    def test_countReached(self) -> None:
        """
        A channel.open once channel_max channels are open closes the
        connection with RabbitMQ's 530 and text, with no method ids, as
        RabbitMQ sends them.
        """
        client = self.openClient(channels=(1, 2, 3), channelMax=3)
        frames = client.openChannel(4)
        close = self.assertConnectionClosed(client, frames, 530)
        self.assertEqual(
            close.reply_text,
            "NOT_ALLOWED - number of channels opened (3) has reached the negotiated"
            " channel_max (3)",
        )
        self.assertEqual(ids(close), (0, 0))
        self.finishClose(client)

    def test_numberAbove(self) -> None:
        """
        A channel number above channel_max, with fewer channels open, is
        refused with 530 naming channel.open: the specification makes
        channel_max the highest channel number (RabbitMQ counts channels
        only, and opens it; see doc/guide.md).
        """
        client = self.openClient(channels=(1,), channelMax=3)
        frames = client.openChannel(9)
        close = self.assertConnectionClosed(client, frames, 530)
        self.assertEqual(
            close.reply_text, "NOT_ALLOWED - channel 9 is above the negotiated channel_max 3"
        )
        self.assertEqual(ids(close), (20, 10))
        self.finishClose(client)


class FailedMethodTests(ProtocolTestCase):
    """
    Every close names the method that failed (the specification's
    class-id and method-id), as RabbitMQ does; py-amqp's errors say which
    call failed from them.
    """

    def test_unknownExchangeType(self) -> None:
        """
        exchange.declare of an unknown type: 503 COMMAND_INVALID with
        RabbitMQ's text, naming exchange.declare (40, 10).
        """
        client = self.openClient(channels=(1,))
        frames = client.call(1, commands.Exchange.Declare(exchange="e", exchange_type="x-nonsense"))
        close = self.assertConnectionClosed(client, frames, 503)
        self.assertEqual(close.reply_text, "COMMAND_INVALID - unknown exchange type 'x-nonsense'")
        self.assertEqual(ids(close), (40, 10))
        self.finishClose(client)

    def assertPublishClosed(self, data: bytes, code: int, text: str) -> None:
        """
        Publishing C{data} on channel 1 closes it with C{code} and C{text},
        naming basic.publish (60, 40), and the connection stays open.
        """
        client = self.openClient(channels=(1,))
        client.send(data)
        close = self.assertChannelClosed(client.received(), 1, code)
        self.assertEqual(close.reply_text, text)
        self.assertEqual(ids(close), (60, 40))
        self.assertFalse(client.transport.disconnecting)

    def test_publishMissingExchange(self) -> None:
        """
        A publish to a missing exchange: 404 naming basic.publish.
        """
        self.assertPublishClosed(
            publishBytes(1, "nothing", "k", b"x"),
            404,
            "NOT_FOUND - no exchange 'nothing' in vhost '/'",
        )

    def test_publishRefusedByItsHeader(self) -> None:
        """
        A message refused for its properties (found in the content header,
        after the method) closes the channel naming basic.publish too, not
        0, 0.
        """
        self.assertPublishClosed(
            publishBytes(1, "", "k", b"x", properties=commands.Basic.Properties(user_id="mallory")),
            406,
            "PRECONDITION_FAILED - user_id property set to 'mallory' but authenticated"
            " user was 'guest'",
        )

    def test_publishRefusedOnCompletion(self) -> None:
        """
        An invalid expiration (checked once the body is complete) names
        basic.publish.
        """
        client = self.openClient(channels=(1,))
        client.send(
            publishBytes(1, "", "k", b"x", properties=commands.Basic.Properties(expiration="abc"))
        )
        close = self.assertChannelClosed(client.received(), 1, 406)
        self.assertEqual(ids(close), (60, 40))

    def test_connectionErrorOnAChannel(self) -> None:
        """
        A connection error caused by a channel's method names that method:
        a second channel.open (20, 10).
        """
        client = self.openClient(channels=(1,))
        frames = client.openChannel(1)
        close = self.assertConnectionClosed(client, frames, 504)
        self.assertEqual(ids(close), (20, 10))
        self.finishClose(client)

    def test_connectionMethod(self) -> None:
        """
        A refused method on channel 0 is named too: connection.open of an
        unknown vhost (10, 40).
        """
        client = self.connect()
        frames = client.handshake(vhost="elsewhere")
        close = self.assertConnectionClosed(client, frames, 530, dropped=True)
        self.assertEqual(ids(close), (10, 40))

    def test_badLogin(self) -> None:
        """
        A refused login names connection.start-ok (10, 11), as RabbitMQ.
        """
        client = self.connect()
        frames = client.handshake(response="\0guest\0wrong")
        close = self.assertConnectionClosed(client, frames, 403, dropped=True)
        self.assertEqual(ids(close), (10, 11))


class QueueTypeTests(ProtocolTestCase):
    """
    C{x-queue-type}, C{x-queue-mode} and C{x-single-active-consumer} on
    queue.declare, with RabbitMQ 3.10's codes and texts.
    """

    def setUp(self) -> None:
        """
        A client with channel 1 open.
        """
        super().setUp()
        self.client = self.openClient(channels=(1,))

    def declare(self, name: str = "q", **kwargs: Any) -> list[Any]:
        """
        Send queue.declare of C{name} with C{kwargs}.
        """
        return self.client.call(1, commands.Queue.Declare(queue=name, **kwargs))

    def assertRefused(self, text: str, **kwargs: Any) -> None:
        """
        Declaring C{q} with C{kwargs} closes channel 1 with 406 and
        C{text}, naming queue.declare, and creates nothing.
        """
        close = self.assertChannelClosed(self.declare(**kwargs), 1, 406)
        self.assertEqual(close.reply_text, "PRECONDITION_FAILED - " + text)
        self.assertEqual(ids(close), (50, 10))
        self.assertNotIn("q", self.vhost.queues)
        self.client.call(1, commands.Channel.CloseOk())
        self.client.openChannel(1)

    def test_classic(self) -> None:
        """
        C{classic} is accepted, and equivalent to naming no type, either
        way round.
        """
        classic = {"x-queue-type": "classic"}
        self.assertEqual(names(self.declare(arguments=classic)), [(1, "Queue.DeclareOk")])
        self.assertEqual(names(self.declare()), [(1, "Queue.DeclareOk")])
        self.assertEqual(names(self.declare("p")), [(1, "Queue.DeclareOk")])
        self.assertEqual(names(self.declare("p", arguments=classic)), [(1, "Queue.DeclareOk")])

    def test_quorum(self) -> None:
        """
        A durable quorum queue is accepted; re-declaring it without the
        type is inequivalent, as in RabbitMQ.
        """
        quorum = {"x-queue-type": "quorum"}
        frames = self.declare(durable=True, arguments=quorum)
        self.assertEqual(names(frames), [(1, "Queue.DeclareOk")])
        self.assertTrue(self.vhost.queue("q").durable)
        close = self.assertChannelClosed(self.declare(durable=True), 1, 406)
        self.assertIn("inequivalent arg 'x-queue-type'", close.reply_text)

    def test_quorumRules(self) -> None:
        """
        A quorum queue that is not durable, exclusive, auto-delete or
        server-named is refused with RabbitMQ's texts.
        """
        quorum = {"x-queue-type": "quorum"}
        self.assertRefused(
            "invalid property 'non-durable' for queue 'q' in vhost '/'", arguments=quorum
        )
        self.assertRefused(
            "invalid property 'exclusive-owner' for queue 'q' in vhost '/'",
            durable=True,
            exclusive=True,
            arguments=quorum,
        )
        self.assertRefused(
            "invalid property 'auto-delete' for queue 'q' in vhost '/'",
            durable=True,
            auto_delete=True,
            arguments=quorum,
        )
        close = self.assertChannelClosed(self.declare("", durable=True, arguments=quorum), 1, 406)
        self.assertEqual(
            close.reply_text,
            "PRECONDITION_FAILED - Cannot declare a server-named queue for type"
            " rabbit_quorum_queue",
        )

    def test_stream(self) -> None:
        """
        A stream is refused with the connection error 540 NOT_IMPLEMENTED
        and a text that says qha has no streams.
        """
        frames = self.declare(durable=True, arguments={"x-queue-type": "stream"})
        close = self.assertConnectionClosed(self.client, frames, 540)
        self.assertIn("qha has no streams", close.reply_text)
        self.assertEqual(ids(close), (50, 10))
        self.assertNotIn("q", self.vhost.queues)
        self.finishClose(self.client)

    def test_unknownType(self) -> None:
        """
        An unknown type gets RabbitMQ's 406 and text.
        """
        self.assertRefused(
            "invalid arg 'x-queue-type' for queue 'q' in vhost '/': \"unsupported queue"
            " type 'foo'\"",
            arguments={"x-queue-type": "foo"},
        )

    def test_queueMode(self) -> None:
        """
        C{x-queue-mode} C{lazy} (and C{default}) is accepted; anything else
        gets RabbitMQ's 406.
        """
        self.assertEqual(
            names(self.declare("lazy", arguments={"x-queue-mode": "lazy"})),
            [(1, "Queue.DeclareOk")],
        )
        self.assertRefused(
            "invalid arg 'x-queue-mode' for queue 'q' in vhost '/': \"unsupported queue"
            " mode 'foo'\"",
            arguments={"x-queue-mode": "foo"},
        )

    def test_singleActiveConsumerType(self) -> None:
        """
        C{x-single-active-consumer} must be a boolean, as RabbitMQ says.
        """
        self.assertRefused(
            "invalid arg 'x-single-active-consumer' for queue 'q' in vhost '/':"
            " {unacceptable_type,longstr}",
            arguments={"x-single-active-consumer": "yes"},
        )

    def test_checkDeclaration(self) -> None:
        """
        L{checkDeclaration} raises the model's errors: a stream is a
        connection error (540), the rest channel errors (406).
        """
        self.assertRaises(
            NotImplemented_,
            checkDeclaration,
            "s",
            "/",
            True,
            False,
            False,
            {"x-queue-type": b"stream"},
        )
        self.assertRaises(
            PreconditionFailed, checkDeclaration, "s", "/", False, False, False, {"x-queue-type": "quorum"}
        )
        checkDeclaration("s", "/", True, False, False, {"x-queue-type": "quorum"})


class QuorumReplicationTests(SynchronousTestCase):
    """
    A quorum queue is replicated as C{qpid.replicate=all}.
    """

    def test_level(self) -> None:
        """
        A quorum queue's replication level is C{all} whatever the broker's
        default, unless its own C{qpid.replicate} says otherwise; a classic
        queue keeps the default.
        """
        vhost = VirtualHost()
        quorum = vhost.declareQueue("q", durable=True, arguments={"x-queue-type": "quorum"})
        classic = vhost.declareQueue("c", durable=True, arguments={"x-queue-type": "classic"})
        told = vhost.declareQueue(
            "t",
            durable=True,
            arguments={"x-queue-type": "quorum", "qpid.replicate": "configuration"},
        )
        self.assertEqual(replicateLevel(quorum, NONE), ALL)
        self.assertEqual(replicateLevel(classic, NONE), NONE)
        self.assertEqual(replicateLevel(told, NONE), CONFIGURATION)


class SingleActiveConsumerTests(ProtocolTestCase):
    """
    C{x-single-active-consumer}: the oldest consumer gets every message;
    the next takes over when it is cancelled or its channel or connection
    goes, and the messages it held come back to the new one.
    """

    def setUp(self) -> None:
        """
        Two clients; the first declares queue C{q} with a single active
        consumer and consumes as C{first}, the second as C{second}.
        """
        super().setUp()
        self.one = self.openClient(channels=(1,))
        self.two = self.openClient(channels=(1,))
        self.one.call(
            1, commands.Queue.Declare(queue="q", arguments={"x-single-active-consumer": True})
        )
        self.one.call(1, commands.Basic.Consume(queue="q", consumer_tag="first"))
        self.two.call(1, commands.Basic.Consume(queue="q", consumer_tag="second"))

    def publish(self, client: Client, *bodies: bytes) -> None:
        """
        Publish C{bodies} to C{q} through C{client}'s channel 1.
        """
        client.send(b"".join(publishBytes(1, "", "q", body) for body in bodies))

    def delivered(self, client: Client) -> list[tuple[str, bytes, bool]]:
        """
        The consumer tag, body and redelivered flag of what C{client} got.
        """
        return [
            (method.consumer_tag, body, method.redelivered)
            for method, body in contents(client.received())
        ]

    def test_firstConsumerGetsAll(self) -> None:
        """
        Every message goes to the first consumer, in order, not in turn.
        """
        self.publish(self.two, b"0", b"1", b"2", b"3")
        self.assertEqual(
            self.delivered(self.one),
            [("first", body, False) for body in (b"0", b"1", b"2", b"3")],
        )
        self.assertEqual(self.delivered(self.two), [])
        self.assertEqual(self.vhost.queue("q").consumerCount, 2)

    def test_cancelHandsOver(self) -> None:
        """
        Once the active consumer is cancelled the next one gets new
        messages; what the cancelled one holds stays with its channel until
        acknowledged or the channel goes, as in RabbitMQ.
        """
        self.publish(self.two, b"0")
        self.assertEqual(self.delivered(self.one), [("first", b"0", False)])
        self.one.call(1, commands.Basic.Cancel(consumer_tag="first"))
        self.publish(self.two, b"1")
        self.assertEqual(self.delivered(self.two), [("second", b"1", False)])
        self.assertEqual(self.vhost.queue("q").unacked, 2)

    def test_prefetchFullWaits(self) -> None:
        """
        While the active consumer may take no more (its prefetch is full),
        the messages wait: they do not go to the next consumer.
        """
        self.one.call(1, commands.Basic.Cancel(consumer_tag="first"))
        self.one.received()
        self.one.call(1, commands.Basic.Qos(prefetch_count=1))
        self.two.call(1, commands.Basic.Cancel(consumer_tag="second"))
        self.one.call(1, commands.Basic.Consume(queue="q", consumer_tag="first"))
        self.two.call(1, commands.Basic.Consume(queue="q", consumer_tag="second"))
        self.two.received()
        self.publish(self.two, b"0", b"1")
        self.assertEqual(self.delivered(self.one), [("first", b"0", False)])
        self.assertEqual(self.delivered(self.two), [])
        self.assertEqual(self.vhost.queue("q").messageCount, 1)
        self.one.sendFrames(1, commands.Basic.Ack(delivery_tag=1))
        self.assertEqual(self.delivered(self.one), [("first", b"1", False)])

    def test_connectionLossRequeues(self) -> None:
        """
        When the active consumer's connection goes, its unacknowledged
        messages come back and go, redelivered and in order, to the next
        consumer with the rest.
        """
        self.publish(self.two, b"0", b"1", b"2")
        self.assertEqual(len(self.delivered(self.one)), 3)
        self.one.disconnect()
        self.assertEqual(
            self.delivered(self.two),
            [("second", body, True) for body in (b"0", b"1", b"2")],
        )
        self.publish(self.two, b"3")
        self.assertEqual(self.delivered(self.two), [("second", b"3", False)])

    def test_channelCloseRequeues(self) -> None:
        """
        Closing the active consumer's channel hands over the same way.
        """
        self.publish(self.two, b"0")
        self.delivered(self.one)
        self.one.call(1, commands.Channel.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0))
        self.assertEqual(self.delivered(self.two), [("second", b"0", True)])

    def test_replicatedArgument(self) -> None:
        """
        The argument is part of the queue's declaration (what the
        replication stream and the store carry), so a backup's copy is a
        single-active-consumer queue too.
        """
        vhost = VirtualHost()
        queue = self.vhost.queue("q")
        copy = vhost.declareQueue("q", arguments=dict(queue.arguments), replica=True)
        self.assertTrue(copy.singleActive)
        self.assertFalse(vhost.declareQueue("plain").singleActive)


class DeadLetterPropertiesTests(ProtocolTestCase):
    """
    A dead-lettered message keeps its basic properties, as in RabbitMQ.
    aio-pika's RPC tells a call that expired (dead-lettered back to the
    caller) by its C{type} "call"; its test_timed_out failed on qha, where
    the rebuilt message had lost C{type} and gained an empty C{cluster_id}.
    """

    def test_propertiesKept(self) -> None:
        """
        A rejected message reaches the dead-letter queue with the
        properties it was published with, C{type} included, and no
        C{cluster_id} it did not have.
        """
        from pamqp.header import ContentHeader

        client = self.openClient(channels=(1,))
        client.call(1, commands.Queue.Declare(queue="res"))
        client.call(1, commands.Queue.Bind(queue="res", exchange="amq.fanout"))
        client.call(
            1,
            commands.Queue.Declare(
                queue="src", arguments={"x-dead-letter-exchange": "amq.fanout"}
            ),
        )
        sent = commands.Basic.Properties(
            message_type="call",
            correlation_id="c1",
            reply_to="res",
            app_id="a",
            headers={"From": "res"},
        )
        client.send(publishBytes(1, "", "src", b"x", properties=sent))
        [(got, _)] = contents(client.call(1, commands.Basic.Get(queue="src")))
        client.call(1, commands.Basic.Reject(delivery_tag=got.delivery_tag, requeue=False))
        [entry] = [entry for level in self.vhost.queues["res"].levels for entry in level]
        # The property flags (after class, weight and body size): no
        # cluster_id (0x0004).
        self.assertEqual(entry.message.header[13] & 0x04, 0)
        frames = client.call(1, commands.Basic.Get(queue="res", no_ack=True))
        [header] = [value for _, value in frames if isinstance(value, ContentHeader)]
        received = header.properties
        self.assertEqual(
            (received.message_type, received.correlation_id, received.reply_to, received.app_id),
            ("call", "c1", "res", "a"),
        )
        headers = received.headers or {}
        self.assertEqual(headers["From"], "res")
        self.assertEqual(headers["x-first-death-reason"], "rejected")


class RecoverAsyncTests(ProtocolTestCase):
    """
    basic.recover-async, the deprecated form of basic.recover that aiormq
    sends for C{basic_recover(nowait=True)}: RabbitMQ 3.10 requeues the
    channel's unacknowledged messages and answers nothing (its
    basic.recover is recover-async plus recover-ok). aiormq's
    test_basic_recover_nowait[True] failed on qha, which closed the
    connection with 540.
    """

    def test_requeuesWithoutReply(self) -> None:
        """
        recover-async with requeue=true puts the unacknowledged message back,
        redelivered, sends no frame and leaves the channel open.
        """
        client = self.openClient(channels=(1,))
        client.call(1, commands.Queue.Declare(queue="q"))
        client.send(publishBytes(1, "", "q", b"x"))
        [(got, _)] = contents(client.call(1, commands.Basic.Get(queue="q")))
        self.assertFalse(got.redelivered)
        self.assertEqual(client.call(1, commands.Basic.RecoverAsync(requeue=True)), [])
        [(again, body)] = contents(client.call(1, commands.Basic.Get(queue="q", no_ack=True)))
        self.assertEqual(body, b"x")
        self.assertTrue(again.redelivered)
        frames = client.call(1, commands.Basic.Qos(prefetch_count=1))
        self.assertEqual(names(frames), [(1, "Basic.QosOk")])

    def test_noRequeue(self) -> None:
        """
        recover-async with requeue=false is not implemented, as in RabbitMQ
        (540), and the close names basic.recover-async (60, 100).
        """
        client = self.openClient(channels=(1,))
        frames = client.call(1, commands.Basic.RecoverAsync(requeue=False))
        close = self.assertConnectionClosed(client, frames, 540)
        self.assertEqual(ids(close), (60, 100))
        self.finishClose(client)
