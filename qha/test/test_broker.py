"""
Tests for the broker model in L{qha.broker}: exchanges, queues, bindings,
routing, dispatch to consumers, observer events and memory accounting.

Everything here is synchronous and does no I/O: consumers deliver to a
L{RecordingTarget} and observers are L{RecordingObserver}s.
"""

from __future__ import annotations

from typing import Any

from pamqp import commands
from twisted.trial.unittest import SynchronousTestCase

from qha.broker.errors import (
    AccessRefused,
    AMQPError,
    CommandInvalid,
    NotFound,
    PreconditionFailed,
    ResourceLocked,
)
from qha.broker.exchange import (
    DirectExchange,
    FanoutExchange,
    HeadersExchange,
    TopicExchange,
    topicMatches,
    topicWords,
)
from qha.broker.message import Message
from qha.broker.queue import Consumer, Entry, Queue
from qha.broker.vhost import Resources, VirtualHost
from qha.testing import RecordingObserver, RecordingTarget


def message(
    body: bytes = b"body",
    exchange: str = "",
    routingKey: str = "",
    headers: dict[str, Any] | None = None,
) -> Message:
    """
    Build a message, with an application headers table if C{headers} is
    given.
    """
    properties = commands.Basic.Properties(headers=headers) if headers else None
    return Message.build(exchange, routingKey, body, properties)


def routedNames(vhost: VirtualHost, exchange: str, routingKey: str, **kw: Any) -> list[str]:
    """
    The names, sorted, of the queues a message published to C{exchange}
    with C{routingKey} reaches (without enqueueing it).
    """
    msg = message(routingKey=routingKey, **kw)
    return sorted(
        queue.name for queue in vhost.route(vhost.exchange(exchange), routingKey, msg)
    )


def consume(
    queue: Queue,
    target: RecordingTarget,
    tag: str = "ctag",
    noAck: bool = False,
    prefetch: int = 0,
) -> Consumer:
    """
    Subscribe C{target} to C{queue} as consumer C{tag}.
    """
    consumer = Consumer(queue, tag, target, noAck=noAck, prefetch=prefetch)
    queue.addConsumer(consumer)
    return consumer


class ExchangeDeclareTests(SynchronousTestCase):
    """
    Tests for L{VirtualHost.declareExchange} and
    L{VirtualHost.deleteExchange}.
    """

    def setUp(self) -> None:
        """
        A fresh virtual host with an observer.
        """
        self.vhost = VirtualHost()
        self.observer = RecordingObserver()
        self.vhost.observers.append(self.observer)

    def test_builtInExchanges(self) -> None:
        """
        A new virtual host has the default exchange and the C{amq.*}
        exchanges of the specification, each of its type and durable.
        """
        expected = {
            "": DirectExchange,
            "amq.direct": DirectExchange,
            "amq.fanout": FanoutExchange,
            "amq.topic": TopicExchange,
            "amq.headers": HeadersExchange,
            "amq.match": HeadersExchange,
        }
        self.assertEqual(
            {name: type(x) for name, x in self.vhost.exchanges.items()}, expected
        )
        self.assertTrue(all(x.durable for x in self.vhost.exchanges.values()))
        self.assertIs(self.vhost.defaultExchange, self.vhost.exchanges[""])

    def test_declare(self) -> None:
        """
        Declaring a new exchange creates it with the given properties and
        tells the observers once.
        """
        exchange = self.vhost.declareExchange(
            "x", "topic", durable=True, autoDelete=False, internal=True,
            arguments={"alternate-exchange": "ae"},
        )
        self.assertIsInstance(exchange, TopicExchange)
        self.assertEqual(
            (exchange.name, exchange.durable, exchange.internal, exchange.arguments),
            ("x", True, True, {"alternate-exchange": "ae"}),
        )
        self.assertIs(self.vhost.exchange("x"), exchange)
        self.assertEqual(self.observer.events, [("exchangeDeclared", "x")])

    def test_redeclareEquivalent(self) -> None:
        """
        Declaring an exchange again with the same properties returns the same
        exchange and tells the observers nothing more. Arguments that do not
        change behaviour may differ.
        """
        first = self.vhost.declareExchange("x", "direct", arguments={"note": 1})
        second = self.vhost.declareExchange("x", "direct", arguments={"note": 2})
        self.assertIs(first, second)
        self.assertEqual(self.observer.events, [("exchangeDeclared", "x")])

    def test_redeclareInequivalent(self) -> None:
        """
        Declaring an exchange again with another type, durability,
        auto-delete, internal flag or significant argument fails with 406
        PRECONDITION_FAILED naming the field.
        """
        self.vhost.declareExchange(
            "x", "direct", arguments={"alternate-exchange": "ae"}
        )
        cases: list[tuple[str, dict[str, Any]]] = [
            ("type", {"type": "fanout"}),
            ("durable", {"durable": True}),
            ("auto_delete", {"autoDelete": True}),
            ("internal", {"internal": True}),
            ("alternate-exchange", {"arguments": {}}),
        ]
        for field, overrides in cases:
            kwargs: dict[str, Any] = {
                "type": "direct",
                "arguments": {"alternate-exchange": "ae"},
            }
            kwargs.update(overrides)
            error = self.assertRaises(
                PreconditionFailed, self.vhost.declareExchange, "x", **kwargs
            )
            self.assertEqual(error.replyCode, 406)
            self.assertIn(f"inequivalent arg '{field}' for exchange 'x'", error.replyText)

    def test_passive(self) -> None:
        """
        A passive declare returns an existing exchange whatever its type, and
        fails with 404 NOT_FOUND for a missing one, declaring nothing.
        """
        existing = self.vhost.declareExchange("x", "fanout")
        self.assertIs(self.vhost.declareExchange("x", "direct", passive=True), existing)
        error = self.assertRaises(
            NotFound, self.vhost.declareExchange, "y", "direct", passive=True
        )
        self.assertEqual(error.replyCode, 404)
        self.assertNotIn("y", self.vhost.exchanges)

    def test_unknownType(self) -> None:
        """
        An unknown exchange type is refused with the connection error 503
        COMMAND_INVALID with RabbitMQ 3.10's text exactly (issue 15: clients
        match on it; it used to list the known types after it).
        """
        error = self.assertRaises(
            CommandInvalid, self.vhost.declareExchange, "x", "x-nonsense"
        )
        self.assertEqual(error.replyCode, 503)
        self.assertEqual(error.replyText, "COMMAND_INVALID - unknown exchange type 'x-nonsense'")

    def test_reservedPrefix(self) -> None:
        """
        A new exchange named C{amq.*} is refused with 403 ACCESS_REFUSED; the
        built-in ones may be declared again with their own properties but
        not with others.
        """
        error = self.assertRaises(
            AccessRefused, self.vhost.declareExchange, "amq.mine", "direct"
        )
        self.assertEqual(error.replyCode, 403)
        self.assertIs(
            self.vhost.declareExchange("amq.direct", "direct", durable=True),
            self.vhost.exchanges["amq.direct"],
        )
        self.assertRaises(
            PreconditionFailed,
            self.vhost.declareExchange, "amq.direct", "fanout", durable=True,
        )
        self.assertEqual(self.observer.events, [])

    def test_defaultExchangeRefused(self) -> None:
        """
        The default exchange cannot be declared (even passively), deleted,
        or bound to or from.
        """
        self.vhost.declareQueue("q")
        self.vhost.declareExchange("x", "direct")
        self.assertRaises(AccessRefused, self.vhost.declareExchange, "", "direct")
        self.assertRaises(
            AccessRefused, self.vhost.declareExchange, "", "direct", passive=True
        )
        self.assertRaises(AccessRefused, self.vhost.deleteExchange, "")
        self.assertRaises(AccessRefused, self.vhost.bindQueue, "q", "", "q")
        self.assertRaises(AccessRefused, self.vhost.unbindQueue, "q", "", "q")
        self.assertRaises(AccessRefused, self.vhost.bindExchange, "x", "", "k")
        self.assertRaises(AccessRefused, self.vhost.bindExchange, "", "x", "k")
        self.assertIn("", self.vhost.exchanges)

    def test_deleteBuiltIn(self) -> None:
        """
        The built-in C{amq.*} exchanges cannot be deleted.
        """
        error = self.assertRaises(AccessRefused, self.vhost.deleteExchange, "amq.topic")
        self.assertEqual(error.replyCode, 403)
        self.assertIn("amq.topic", self.vhost.exchanges)

    def test_deleteMissing(self) -> None:
        """
        Deleting an exchange that does not exist succeeds, as in RabbitMQ.
        """
        self.vhost.deleteExchange("nothing")
        self.vhost.deleteExchange("nothing", ifUnused=True)
        self.assertEqual(self.observer.events, [])

    def test_delete(self) -> None:
        """
        Deleting an exchange removes it and every binding from and to it,
        telling the observers of each unbinding and then of the deletion.
        """
        self.vhost.declareExchange("x", "direct")
        self.vhost.declareExchange("up", "fanout")
        self.vhost.declareQueue("q")
        self.vhost.bindQueue("q", "x", "k")
        self.vhost.bindExchange("x", "up", "")
        self.observer.clear()
        exchange = self.vhost.exchange("x")
        self.vhost.deleteExchange("x")
        self.assertTrue(exchange.deleted)
        self.assertNotIn("x", self.vhost.exchanges)
        self.assertEqual(self.vhost.queues["q"].bindings, set())
        self.assertEqual(self.vhost.exchange("up").bindings, {})
        self.assertEqual(
            self.observer.events,
            [
                ("unbound", "x", "q", "k"),
                ("unbound", "up", "x", ""),
                ("exchangeDeleted", "x"),
            ],
        )
        self.assertRaises(NotFound, self.vhost.exchange, "x")

    def test_deleteIfUnused(self) -> None:
        """
        With if-unused, an exchange that routes to a queue is not deleted
        (406); once unbound it is.
        """
        self.vhost.declareExchange("x", "direct")
        self.vhost.declareQueue("q")
        self.vhost.bindQueue("q", "x", "k")
        error = self.assertRaises(
            PreconditionFailed, self.vhost.deleteExchange, "x", ifUnused=True
        )
        self.assertIn("in use", error.replyText)
        self.assertIn("x", self.vhost.exchanges)
        self.vhost.unbindQueue("q", "x", "k")
        self.vhost.deleteExchange("x", ifUnused=True)
        self.assertNotIn("x", self.vhost.exchanges)

    def test_deleteIfUnusedDestinationOnly(self) -> None:
        """
        With if-unused, an exchange that is only the destination of an
        exchange-to-exchange binding is unused (it routes nowhere), as in
        RabbitMQ, and is deleted with that binding.
        """
        self.vhost.declareExchange("src", "fanout")
        self.vhost.declareExchange("dst", "fanout")
        self.vhost.bindExchange("dst", "src", "")
        self.assertRaises(
            PreconditionFailed, self.vhost.deleteExchange, "src", ifUnused=True
        )
        self.vhost.deleteExchange("dst", ifUnused=True)
        self.assertNotIn("dst", self.vhost.exchanges)
        self.assertEqual(self.vhost.exchange("src").bindings, {})

    def test_autoDeleteOnLastUnbind(self) -> None:
        """
        An auto-delete exchange is deleted when its last binding goes, not
        before it had one.
        """
        self.vhost.declareExchange("x", "direct", autoDelete=True)
        self.vhost.declareQueue("q")
        self.vhost.bindQueue("q", "x", "a")
        self.vhost.bindQueue("q", "x", "b")
        self.vhost.unbindQueue("q", "x", "a")
        self.assertIn("x", self.vhost.exchanges)
        self.observer.clear()
        self.vhost.unbindQueue("q", "x", "b")
        self.assertNotIn("x", self.vhost.exchanges)
        self.assertEqual(
            self.observer.events, [("unbound", "x", "q", "b"), ("exchangeDeleted", "x")]
        )

    def test_autoDeleteWhenQueueDeleted(self) -> None:
        """
        Deleting the last queue bound to an auto-delete exchange deletes the
        exchange too.
        """
        self.vhost.declareExchange("x", "fanout", autoDelete=True)
        self.vhost.declareQueue("q")
        self.vhost.bindQueue("q", "x", "")
        self.vhost.deleteQueue("q")
        self.assertNotIn("x", self.vhost.exchanges)
        self.assertEqual(
            self.observer.events[-3:],
            [("unbound", "x", "q", ""), ("exchangeDeleted", "x"), ("queueDeleted", "q")],
        )

    def test_autoDeleteExchangeToExchange(self) -> None:
        """
        An auto-delete exchange whose last binding is to another exchange is
        deleted when that exchange is deleted.
        """
        self.vhost.declareExchange("src", "fanout", autoDelete=True)
        self.vhost.declareExchange("dst", "fanout")
        self.vhost.bindExchange("dst", "src", "")
        self.vhost.deleteExchange("dst")
        self.assertNotIn("src", self.vhost.exchanges)


class QueueDeclareTests(SynchronousTestCase):
    """
    Tests for L{VirtualHost.declareQueue}, L{VirtualHost.deleteQueue},
    L{VirtualHost.purgeQueue} and exclusive queues.
    """

    def setUp(self) -> None:
        """
        A fresh virtual host with an observer.
        """
        self.vhost = VirtualHost()
        self.observer = RecordingObserver()
        self.vhost.observers.append(self.observer)

    def test_declare(self) -> None:
        """
        Declaring a queue creates it, binds it to the default exchange by
        its name (without a bound event) and tells the observers.
        """
        queue = self.vhost.declareQueue(
            "q", durable=True, arguments={"x-max-length": 10}
        )
        self.assertEqual(
            (queue.name, queue.durable, queue.exclusive, queue.autoDelete, queue.arguments),
            ("q", True, False, False, {"x-max-length": 10}),
        )
        self.assertIs(self.vhost.queue("q"), queue)
        self.assertEqual(routedNames(self.vhost, "", "q"), ["q"])
        self.assertEqual(self.observer.events, [("queueDeclared", "q")])

    def test_serverNamed(self) -> None:
        """
        A queue declared with an empty name gets a fresh C{amq.gen-} name,
        even though clients may not use that prefix themselves.
        """
        first = self.vhost.declareQueue("")
        second = self.vhost.declareQueue("")
        self.assertTrue(first.name.startswith("amq.gen-"), first.name)
        self.assertNotEqual(first.name, second.name)
        self.assertIs(self.vhost.queue(first.name), first)

    def test_reservedPrefix(self) -> None:
        """
        A client may not name a new queue C{amq.*}.
        """
        error = self.assertRaises(AccessRefused, self.vhost.declareQueue, "amq.q")
        self.assertEqual(error.replyCode, 403)
        self.assertNotIn("amq.q", self.vhost.queues)

    def test_redeclareEquivalent(self) -> None:
        """
        Declaring a queue again with equivalent properties returns it and
        tells the observers nothing; insignificant arguments may differ.
        """
        first = self.vhost.declareQueue("q", arguments={"x-max-length": 1, "note": "a"})
        second = self.vhost.declareQueue("q", arguments={"x-max-length": 1, "note": "b"})
        self.assertIs(first, second)
        self.assertEqual(self.observer.events, [("queueDeclared", "q")])

    def test_redeclareInequivalent(self) -> None:
        """
        Declaring a queue again with other durability, auto-delete or
        significant arguments fails with 406 naming the field.
        """
        self.vhost.declareQueue("q", arguments={"x-max-length": 1})
        cases: list[tuple[str, dict[str, Any]]] = [
            ("durable", {"durable": True, "arguments": {"x-max-length": 1}}),
            ("auto_delete", {"autoDelete": True, "arguments": {"x-max-length": 1}}),
            ("x-max-length", {"arguments": {"x-max-length": 2}}),
            ("x-max-length", {}),
            ("x-expires", {"arguments": {"x-max-length": 1, "x-expires": 5}}),
        ]
        for field, kwargs in cases:
            error = self.assertRaises(
                PreconditionFailed, self.vhost.declareQueue, "q", **kwargs
            )
            self.assertEqual(error.replyCode, 406)
            self.assertIn(f"inequivalent arg '{field}' for queue 'q'", error.replyText)

    def test_passive(self) -> None:
        """
        A passive declare returns an existing queue without checking
        equivalence, and fails with 404 for a missing one or an empty name.
        """
        queue = self.vhost.declareQueue("q", durable=True)
        self.assertIs(self.vhost.declareQueue("q", passive=True), queue)
        self.assertRaises(NotFound, self.vhost.declareQueue, "nothing", passive=True)
        self.assertRaises(NotFound, self.vhost.declareQueue, "", passive=True)
        self.assertEqual(list(self.vhost.queues), ["q"])

    def test_exclusiveOwner(self) -> None:
        """
        An exclusive queue belongs to the connection that declared it: any
        other gets 405 RESOURCE_LOCKED for every use; the owner may use it.
        """
        owner, other = object(), object()
        queue = self.vhost.declareQueue("q", exclusive=True, owner=owner)
        self.assertIs(queue.owner, owner)
        self.assertIs(self.vhost.declareQueue("q", exclusive=True, owner=owner), queue)
        for call in [
            lambda: self.vhost.declareQueue("q", exclusive=True, owner=other),
            lambda: self.vhost.declareQueue("q", owner=other),
            lambda: self.vhost.declareQueue("q", passive=True, owner=other),
            lambda: self.vhost.queue("q", other),
            lambda: self.vhost.deleteQueue("q", owner=other),
            lambda: self.vhost.purgeQueue("q", owner=other),
            lambda: self.vhost.bindQueue("q", "amq.direct", "k", owner=other),
        ]:
            error = self.assertRaises(ResourceLocked, call)
            self.assertEqual(error.replyCode, 405)
        self.assertIn("q", self.vhost.queues)

    def test_exclusiveGoesWithConnection(self) -> None:
        """
        When the owning connection closes, its exclusive queues are deleted
        and other queues stay.
        """
        owner = object()
        self.vhost.declareQueue("mine", exclusive=True, owner=owner)
        self.vhost.declareQueue("shared", owner=owner)
        self.vhost.connectionClosed(owner)
        self.assertEqual(list(self.vhost.queues), ["shared"])

    def test_nonExclusiveHasNoOwner(self) -> None:
        """
        A queue that is not exclusive has no owner: any connection may use
        it.
        """
        queue = self.vhost.declareQueue("q", owner=object())
        self.assertIsNone(queue.owner)
        self.assertIs(self.vhost.queue("q", object()), queue)

    def test_deleteMissing(self) -> None:
        """
        Deleting a queue that does not exist succeeds and counts nothing.
        """
        self.assertEqual(self.vhost.deleteQueue("nothing"), 0)

    def test_delete(self) -> None:
        """
        Deleting a queue returns how many ready messages it held, removes it
        from every exchange (the default one included) and cancels its
        consumers through their targets.
        """
        queue = self.vhost.declareQueue("q")
        self.vhost.bindQueue("q", "amq.direct", "k")
        self.vhost.publish("", "q", message())
        self.vhost.publish("", "q", message())
        target = RecordingTarget(credit=0)
        consumer = consume(queue, target)
        self.observer.clear()
        self.assertEqual(self.vhost.deleteQueue("q"), 2)
        self.assertTrue(queue.deleted)
        self.assertEqual(target.cancelled, [consumer])
        self.assertEqual(queue.consumers, type(queue.consumers)())
        self.assertEqual(routedNames(self.vhost, "", "q"), [])
        self.assertEqual(routedNames(self.vhost, "amq.direct", "k"), [])
        self.assertEqual(
            self.observer.events,
            [("unbound", "amq.direct", "q", "k"), ("queueDeleted", "q")],
        )
        self.assertEqual(self.vhost.resources.used, 0)

    def test_deleteIfUnused(self) -> None:
        """
        With if-unused, a queue with a consumer is not deleted (406).
        """
        queue = self.vhost.declareQueue("q")
        consumer = consume(queue, RecordingTarget())
        error = self.assertRaises(
            PreconditionFailed, self.vhost.deleteQueue, "q", ifUnused=True
        )
        self.assertEqual(error.replyCode, 406)
        self.assertIn("in use", error.replyText)
        queue.removeConsumer(consumer)
        self.vhost.deleteQueue("q", ifUnused=True)
        self.assertNotIn("q", self.vhost.queues)

    def test_deleteIfEmpty(self) -> None:
        """
        With if-empty, a queue holding messages is not deleted (406).
        """
        self.vhost.declareQueue("q")
        self.vhost.publish("", "q", message())
        error = self.assertRaises(
            PreconditionFailed, self.vhost.deleteQueue, "q", ifEmpty=True
        )
        self.assertIn("not empty", error.replyText)
        self.vhost.purgeQueue("q")
        self.assertEqual(self.vhost.deleteQueue("q", ifEmpty=True), 0)
        self.assertNotIn("q", self.vhost.queues)

    def test_purge(self) -> None:
        """
        Purging drops the ready messages, returns how many and tells the
        observers; messages a consumer holds stay with it.
        """
        queue = self.vhost.declareQueue("q")
        target = RecordingTarget(credit=1)
        consume(queue, target)
        for body in [b"1", b"2", b"3"]:
            self.vhost.publish("", "q", message(body))
        self.observer.clear()
        self.assertEqual(self.vhost.purgeQueue("q"), 2)
        self.assertEqual(queue.messageCount, 0)
        self.assertEqual(queue.unacked, 1)
        self.assertEqual(target.bodies(), [b"1"])
        self.assertEqual(self.observer.events, [("purged", "q", 2)])
        self.assertEqual(self.vhost.resources.used, 1 + Resources.overhead)
        self.assertEqual(self.vhost.purgeQueue("q"), 0)

    def test_purgeMissing(self) -> None:
        """
        Purging a queue that does not exist fails with 404.
        """
        self.assertRaises(NotFound, self.vhost.purgeQueue, "nothing")

    def test_autoDeleteWithLastConsumer(self) -> None:
        """
        An auto-delete queue stays until it had a consumer, and is deleted
        when its last consumer goes.
        """
        queue = self.vhost.declareQueue("q", autoDelete=True)
        first = consume(queue, RecordingTarget(), "a")
        second = consume(queue, RecordingTarget(), "b")
        queue.removeConsumer(first)
        self.assertIn("q", self.vhost.queues)
        queue.removeConsumer(second)
        self.assertNotIn("q", self.vhost.queues)
        self.assertTrue(queue.deleted)
        self.assertEqual(self.observer.events[-1], ("queueDeleted", "q"))

    def test_removeUnknownConsumer(self) -> None:
        """
        Removing a consumer twice does nothing the second time.
        """
        queue = self.vhost.declareQueue("q", autoDelete=True)
        consumer = consume(queue, RecordingTarget())
        queue.removeConsumer(consumer)
        queue.removeConsumer(consumer)
        self.assertEqual(
            [event for event in self.observer.events if event[0] == "queueDeleted"],
            [("queueDeleted", "q")],
        )


class ReplicateArgumentTests(SynchronousTestCase):
    """
    Tests for the C{qpid.replicate} argument of queues and exchanges.
    """

    def setUp(self) -> None:
        """
        A fresh virtual host.
        """
        self.vhost = VirtualHost()

    def test_validLevels(self) -> None:
        """
        C{none}, C{configuration} and C{all} are accepted, as text or bytes,
        on queues and exchanges.
        """
        for number, value in enumerate(
            ["none", "configuration", "all", b"none", b"configuration", b"all"]
        ):
            arguments = {"qpid.replicate": value}
            queue = self.vhost.declareQueue(f"q{number}", arguments=arguments)
            self.assertEqual(queue.arguments, arguments)
            exchange = self.vhost.declareExchange(
                f"x{number}", "direct", arguments=arguments
            )
            self.assertEqual(exchange.arguments, arguments)

    def test_invalidLevels(self) -> None:
        """
        Any other value is refused with 406 PRECONDITION_FAILED whose text
        names the argument, the bad value and the valid values; nothing is
        declared.
        """
        for value in ["everything", b"All", "", 1, None]:
            for declare in [
                lambda: self.vhost.declareQueue("q", arguments={"qpid.replicate": value}),
                lambda: self.vhost.declareExchange(
                    "x", "fanout", arguments={"qpid.replicate": value}
                ),
            ]:
                error = self.assertRaises(PreconditionFailed, declare)
                self.assertEqual(error.replyCode, 406)
                self.assertIn("qpid.replicate", error.replyText)
                self.assertIn("none, configuration, all", error.replyText)
        error = self.assertRaises(
            PreconditionFailed,
            self.vhost.declareQueue, "q", arguments={"qpid.replicate": b"bogus"},
        )
        self.assertIn("'bogus'", error.replyText)
        self.assertNotIn("q", self.vhost.queues)
        self.assertNotIn("x", self.vhost.exchanges)

    def test_redeclareOtherLevel(self) -> None:
        """
        C{qpid.replicate} is significant: declaring a queue again with
        another level is inequivalent.
        """
        self.vhost.declareQueue("q", arguments={"qpid.replicate": "all"})
        error = self.assertRaises(
            PreconditionFailed,
            self.vhost.declareQueue, "q", arguments={"qpid.replicate": "none"},
        )
        self.assertIn("inequivalent arg 'qpid.replicate'", error.replyText)


class TopicMatchesTests(SynchronousTestCase):
    """
    Tests for L{topicMatches} and L{topicWords}.
    """

    def matches(self, pattern: str, key: str) -> bool:
        """
        Whether routing key C{key} matches binding C{pattern}.
        """
        return topicMatches(topicWords(pattern), topicWords(key))

    def test_words(self) -> None:
        """
        Keys split on dots; the empty key has no words, while a key with
        empty parts keeps them.
        """
        self.assertEqual(topicWords(""), [])
        self.assertEqual(topicWords("a"), ["a"])
        self.assertEqual(topicWords("a.b"), ["a", "b"])
        self.assertEqual(topicWords("a..b"), ["a", "", "b"])
        self.assertEqual(topicWords("."), ["", ""])

    def test_exact(self) -> None:
        """
        A pattern without wildcards matches only the same words.
        """
        self.assertTrue(self.matches("a.b", "a.b"))
        self.assertFalse(self.matches("a.b", "a.b.c"))
        self.assertFalse(self.matches("a.b", "a"))
        self.assertFalse(self.matches("a.b", "a.c"))
        self.assertTrue(self.matches("", ""))
        self.assertFalse(self.matches("", "a"))

    def test_star(self) -> None:
        """
        C{*} matches exactly one word, which may be empty.
        """
        self.assertTrue(self.matches("*", "a"))
        self.assertFalse(self.matches("*", "a.b"))
        self.assertTrue(self.matches("a.*", "a.b"))
        self.assertFalse(self.matches("a.*", "a"))
        self.assertFalse(self.matches("a.*", "a.b.c"))
        self.assertTrue(self.matches("*.b.*", "a.b.c"))
        self.assertTrue(self.matches("a.*.c", "a..c"))
        self.assertTrue(self.matches("*.*", "."))

    def test_hashAlone(self) -> None:
        """
        C{#} alone matches every key, the empty one included.
        """
        for key in ["", "a", "a.b.c", ".", "a..b"]:
            self.assertTrue(self.matches("#", key), key)

    def test_emptyKey(self) -> None:
        """
        The empty routing key has no words: C{#} and the empty pattern match
        it, C{*} and anything needing a word do not (as in RabbitMQ).
        """
        self.assertTrue(self.matches("#", ""))
        self.assertTrue(self.matches("#.#", ""))
        self.assertFalse(self.matches("*", ""))
        self.assertFalse(self.matches("#.*", ""))
        self.assertFalse(self.matches("a", ""))

    def test_hash(self) -> None:
        """
        C{#} matches zero or more words wherever it stands.
        """
        self.assertTrue(self.matches("a.#", "a"))
        self.assertTrue(self.matches("a.#", "a.b"))
        self.assertTrue(self.matches("a.#", "a.b.c"))
        self.assertFalse(self.matches("a.#", "b.a"))
        self.assertTrue(self.matches("#.z", "z"))
        self.assertTrue(self.matches("#.z", "a.b.z"))
        self.assertFalse(self.matches("#.z", "a.z.b"))
        self.assertTrue(self.matches("a.#.b", "a.b"))
        self.assertTrue(self.matches("a.#.b", "a.x.b"))
        self.assertTrue(self.matches("a.#.b", "a.x.y.z.b"))
        self.assertTrue(self.matches("a.#.b", "a.b.b"))
        self.assertFalse(self.matches("a.#.b", "a.x.y.c"))
        self.assertFalse(self.matches("a.#.b", "a"))
        self.assertTrue(self.matches("#.a.#", "x.a.y"))
        self.assertTrue(self.matches("#.#", "a.b"))

    def test_hashAndStar(self) -> None:
        """
        C{#} and C{*} together: C{*} still needs exactly its one word.
        """
        self.assertTrue(self.matches("*.#", "a"))
        self.assertTrue(self.matches("#.*", "a.b.c"))
        self.assertFalse(self.matches("a.*.#", "a"))
        self.assertTrue(self.matches("a.*.#", "a.b"))
        self.assertTrue(self.matches("a.*.#", "a.b.c.d"))
        self.assertTrue(self.matches("#.*.b", "a.b"))
        self.assertFalse(self.matches("#.*.b", "b"))
        self.assertTrue(self.matches("*.#.*", "a.b"))
        self.assertFalse(self.matches("*.#.*", "a"))

    def test_manyWords(self) -> None:
        """
        Long keys and patterns with several C{#} that force backtracking
        match correctly (and quickly).
        """
        key = ".".join(["w"] * 500 + ["end"])
        self.assertTrue(self.matches("#.end", key))
        self.assertTrue(self.matches("w.#.w.#.end", key))
        self.assertFalse(self.matches("#.w", key))
        pattern = ".".join(["#", "a"] * 20)
        self.assertTrue(self.matches(pattern, ".".join(["a", "b"] * 30 + ["a"])))
        self.assertFalse(self.matches(pattern, ".".join(["a", "b"] * 30)))
        self.assertFalse(self.matches(pattern, ".".join(["a", "b"] * 18 + ["a"])))
        self.assertTrue(self.matches(".".join(["*"] * 100), ".".join(["x"] * 100)))
        self.assertFalse(self.matches(".".join(["*"] * 100), ".".join(["x"] * 99)))


class RoutingTests(SynchronousTestCase):
    """
    Tests for L{VirtualHost.route} and L{VirtualHost.publish} through each
    exchange type, exchange-to-exchange bindings and unbinding.
    """

    def setUp(self) -> None:
        """
        A fresh virtual host with queues C{q1}, C{q2} and C{q3}.
        """
        self.vhost = VirtualHost()
        for name in ["q1", "q2", "q3"]:
            self.vhost.declareQueue(name)

    def test_defaultExchange(self) -> None:
        """
        The default exchange routes to the queue named by the routing key.
        """
        self.assertEqual(routedNames(self.vhost, "", "q2"), ["q2"])
        self.assertEqual(routedNames(self.vhost, "", "nothing"), [])
        queues = self.vhost.publish("", "q1", message(b"hello"))
        self.assertEqual([q.name for q in queues], ["q1"])
        self.assertEqual(self.vhost.queue("q1").messageCount, 1)

    def test_publishToMissingOrInternal(self) -> None:
        """
        Publishing to a missing exchange fails with 404, to an internal one
        with 403.
        """
        self.assertRaises(NotFound, self.vhost.publish, "nothing", "k", message())
        self.vhost.declareExchange("inside", "fanout", internal=True)
        error = self.assertRaises(
            AccessRefused, self.vhost.publish, "inside", "k", message()
        )
        self.assertIn("internal", error.replyText)

    def test_direct(self) -> None:
        """
        A direct exchange routes to the queues bound with exactly the key;
        a queue bound twice under that key (with different arguments) gets
        the message once.
        """
        self.vhost.bindQueue("q1", "amq.direct", "k")
        self.vhost.bindQueue("q2", "amq.direct", "k")
        self.vhost.bindQueue("q2", "amq.direct", "k", {"other": 1})
        self.vhost.bindQueue("q3", "amq.direct", "j")
        self.assertEqual(routedNames(self.vhost, "amq.direct", "k"), ["q1", "q2"])
        self.assertEqual(routedNames(self.vhost, "amq.direct", "j"), ["q3"])
        self.assertEqual(routedNames(self.vhost, "amq.direct", "K"), [])
        self.assertEqual(routedNames(self.vhost, "amq.direct", ""), [])
        self.vhost.publish("amq.direct", "k", message())
        self.assertEqual(self.vhost.queue("q2").messageCount, 1)

    def test_bindTwice(self) -> None:
        """
        Binding the same queue, key and arguments twice makes one binding
        and returns it both times.
        """
        first = self.vhost.bindQueue("q1", "amq.direct", "k")
        second = self.vhost.bindQueue("q1", "amq.direct", "k")
        self.assertIs(first, second)
        self.assertEqual(len(self.vhost.exchange("amq.direct").bindings), 1)

    def test_bindMissing(self) -> None:
        """
        Binding a missing queue or to a missing exchange fails with 404.
        """
        self.assertRaises(NotFound, self.vhost.bindQueue, "nothing", "amq.direct", "k")
        self.assertRaises(NotFound, self.vhost.bindQueue, "q1", "nothing", "k")
        self.assertRaises(NotFound, self.vhost.bindExchange, "nothing", "amq.direct", "k")
        self.assertRaises(NotFound, self.vhost.bindExchange, "amq.direct", "nothing", "k")

    def test_fanout(self) -> None:
        """
        A fanout exchange routes to every bound queue whatever the key.
        """
        self.vhost.bindQueue("q1", "amq.fanout", "ignored")
        self.vhost.bindQueue("q2", "amq.fanout", "")
        for key in ["", "anything", "a.b"]:
            self.assertEqual(routedNames(self.vhost, "amq.fanout", key), ["q1", "q2"])

    def test_topic(self) -> None:
        """
        A topic exchange routes by pattern, each queue once even when
        several of its patterns match.
        """
        self.vhost.bindQueue("q1", "amq.topic", "stock.*.nyse")
        self.vhost.bindQueue("q1", "amq.topic", "stock.#")
        self.vhost.bindQueue("q2", "amq.topic", "#")
        self.vhost.bindQueue("q3", "amq.topic", "*")
        self.assertEqual(
            routedNames(self.vhost, "amq.topic", "stock.ibm.nyse"), ["q1", "q2"]
        )
        self.assertEqual(routedNames(self.vhost, "amq.topic", "stock"), ["q1", "q2", "q3"])
        self.assertEqual(routedNames(self.vhost, "amq.topic", ""), ["q2"])
        self.assertEqual(routedNames(self.vhost, "amq.topic", "bond.x"), ["q2"])
        queues = self.vhost.publish("amq.topic", "stock.ibm.nyse", message())
        self.assertEqual(sorted(q.name for q in queues), ["q1", "q2"])
        self.assertEqual(self.vhost.queue("q1").messageCount, 1)

    def test_topicCacheFollowsBindings(self) -> None:
        """
        The topic exchange's per-key cache is dropped when the bindings
        change, so routing follows binds and unbinds at once.
        """
        self.assertEqual(routedNames(self.vhost, "amq.topic", "a.b"), [])
        self.vhost.bindQueue("q1", "amq.topic", "a.*")
        self.assertEqual(routedNames(self.vhost, "amq.topic", "a.b"), ["q1"])
        self.vhost.bindQueue("q2", "amq.topic", "a.*")
        self.assertEqual(routedNames(self.vhost, "amq.topic", "a.b"), ["q1", "q2"])
        self.vhost.unbindQueue("q1", "amq.topic", "a.*")
        self.assertEqual(routedNames(self.vhost, "amq.topic", "a.b"), ["q2"])
        self.vhost.unbindQueue("q2", "amq.topic", "a.*")
        self.assertEqual(routedNames(self.vhost, "amq.topic", "a.b"), [])

    def test_headersAll(self) -> None:
        """
        With C{x-match} C{all} (the default), every binding argument must be
        in the headers with the same value; C{x-} arguments are not matched.
        """
        self.vhost.bindQueue("q1", "amq.headers", "", {"a": 1, "b": "two"})
        self.vhost.bindQueue(
            "q2", "amq.headers", "", {"x-match": "all", "a": 1, "x-other": "z"}
        )
        self.assertEqual(
            routedNames(self.vhost, "amq.headers", "", headers={"a": 1, "b": "two", "c": 3}),
            ["q1", "q2"],
        )
        self.assertEqual(
            routedNames(self.vhost, "amq.headers", "", headers={"a": 1}), ["q2"]
        )
        self.assertEqual(
            routedNames(self.vhost, "amq.headers", "", headers={"a": 2, "b": "two"}), []
        )
        self.assertEqual(routedNames(self.vhost, "amq.headers", ""), [])

    def test_headersAny(self) -> None:
        """
        With C{x-match} C{any} (text or bytes), one matching argument is
        enough; a binding with no arguments to match matches nothing.
        """
        self.vhost.bindQueue("q1", "amq.headers", "", {"x-match": "any", "a": 1, "b": 2})
        self.vhost.bindQueue("q2", "amq.headers", "", {"x-match": b"any", "c": 3})
        self.vhost.bindQueue("q3", "amq.headers", "", {"x-match": "any"})
        self.assertEqual(
            routedNames(self.vhost, "amq.headers", "", headers={"b": 2}), ["q1"]
        )
        self.assertEqual(
            routedNames(self.vhost, "amq.headers", "", headers={"a": 1, "c": 3}),
            ["q1", "q2"],
        )
        self.assertEqual(
            routedNames(self.vhost, "amq.headers", "", headers={"a": 9, "c": 9}), []
        )

    def test_headersBadMatch(self) -> None:
        """
        A binding with an C{x-match} other than C{all} or C{any} is refused
        with 406, and nothing is bound.
        """
        error = self.assertRaises(
            PreconditionFailed,
            self.vhost.bindQueue, "q1", "amq.headers", "", {"x-match": "some"},
        )
        self.assertEqual(error.replyCode, 406)
        self.assertIn("x-match", error.replyText)
        self.assertEqual(self.vhost.exchange("amq.headers").bindings, {})
        self.assertEqual(self.vhost.queue("q1").bindings, set())

    def test_exchangeToExchange(self) -> None:
        """
        A message reaches the queues of the exchanges bound to the one it
        was published to, matched there by the same routing key.
        """
        self.vhost.declareExchange("front", "topic")
        self.vhost.declareExchange("back", "direct")
        self.vhost.bindExchange("back", "front", "orders.#")
        self.vhost.bindQueue("q1", "back", "orders.new")
        self.vhost.bindQueue("q2", "back", "orders.old")
        self.vhost.bindQueue("q3", "front", "#")
        self.assertEqual(routedNames(self.vhost, "front", "orders.new"), ["q1", "q3"])
        self.assertEqual(routedNames(self.vhost, "front", "other"), ["q3"])
        self.assertEqual(routedNames(self.vhost, "back", "orders.old"), ["q2"])

    def test_exchangeToExchangeOnce(self) -> None:
        """
        A queue reached along several paths gets the message once.
        """
        self.vhost.declareExchange("a", "fanout")
        self.vhost.declareExchange("b", "fanout")
        self.vhost.declareExchange("c", "fanout")
        self.vhost.bindExchange("b", "a", "")
        self.vhost.bindExchange("c", "a", "")
        self.vhost.bindExchange("c", "b", "")
        for source in ["a", "b", "c"]:
            self.vhost.bindQueue("q1", source, "")
        self.vhost.publish("a", "", message())
        self.assertEqual(self.vhost.queue("q1").messageCount, 1)

    def test_exchangeCycle(self) -> None:
        """
        Exchanges bound in a cycle (even to themselves) route each message
        once to each queue and terminate.
        """
        self.vhost.declareExchange("a", "fanout")
        self.vhost.declareExchange("b", "fanout")
        self.vhost.bindExchange("b", "a", "")
        self.vhost.bindExchange("a", "b", "")
        self.vhost.bindExchange("a", "a", "")
        self.vhost.bindQueue("q1", "a", "")
        self.vhost.bindQueue("q2", "b", "")
        self.assertEqual(routedNames(self.vhost, "a", "k"), ["q1", "q2"])
        self.assertEqual(routedNames(self.vhost, "b", "k"), ["q1", "q2"])

    def test_unbindQueue(self) -> None:
        """
        An unbound queue no longer gets messages; unbinding what is not bound
        succeeds; the arguments are part of the binding.
        """
        self.vhost.bindQueue("q1", "amq.headers", "", {"a": 1})
        self.vhost.unbindQueue("q1", "amq.headers", "", {"a": 2})
        self.assertEqual(
            routedNames(self.vhost, "amq.headers", "", headers={"a": 1}), ["q1"]
        )
        self.vhost.unbindQueue("q1", "amq.headers", "", {"a": 1})
        self.assertEqual(
            routedNames(self.vhost, "amq.headers", "", headers={"a": 1}), []
        )
        self.assertEqual(self.vhost.queue("q1").bindings, set())
        self.vhost.unbindQueue("q1", "amq.headers", "", {"a": 1})

    def test_unbindOneOfTwoKeys(self) -> None:
        """
        A queue bound under two keys keeps the other binding when one goes.
        """
        self.vhost.bindQueue("q1", "amq.direct", "a")
        self.vhost.bindQueue("q1", "amq.direct", "b")
        self.vhost.unbindQueue("q1", "amq.direct", "a")
        self.assertEqual(routedNames(self.vhost, "amq.direct", "a"), [])
        self.assertEqual(routedNames(self.vhost, "amq.direct", "b"), ["q1"])

    def test_unbindSameKeyOtherArguments(self) -> None:
        """
        Two bindings of a queue under one key differ by their arguments;
        removing one keeps the queue routed by the other.
        """
        self.vhost.bindQueue("q1", "amq.direct", "k", {"n": 1})
        self.vhost.bindQueue("q1", "amq.direct", "k", {"n": 2})
        self.vhost.unbindQueue("q1", "amq.direct", "k", {"n": 1})
        self.assertEqual(routedNames(self.vhost, "amq.direct", "k"), ["q1"])
        self.vhost.unbindQueue("q1", "amq.direct", "k", {"n": 2})
        self.assertEqual(routedNames(self.vhost, "amq.direct", "k"), [])

    def test_unbindExchange(self) -> None:
        """
        Removing an exchange-to-exchange binding stops routing through it;
        removing one that is not there succeeds.
        """
        self.vhost.declareExchange("a", "fanout")
        self.vhost.declareExchange("b", "fanout")
        self.vhost.bindExchange("b", "a", "")
        self.vhost.bindQueue("q1", "b", "")
        self.assertEqual(routedNames(self.vhost, "a", ""), ["q1"])
        self.vhost.unbindExchange("b", "a", "")
        self.assertEqual(routedNames(self.vhost, "a", ""), [])
        self.assertFalse(self.vhost.exchange("a").hasExchangeDestinations)
        self.assertEqual(self.vhost.exchange("b").inbound, set())
        self.vhost.unbindExchange("b", "a", "")


class DispatchTests(SynchronousTestCase):
    """
    Tests for delivery from a L{Queue} to its consumers: round-robin,
    credit, prefetch, acknowledgement and release.
    """

    def setUp(self) -> None:
        """
        A fresh virtual host with an observer and queue C{q}.
        """
        self.vhost = VirtualHost()
        self.observer = RecordingObserver()
        self.vhost.observers.append(self.observer)
        self.queue = self.vhost.declareQueue("q")

    def publish(self, *bodies: bytes) -> None:
        """
        Publish one message per body to C{q} through the default exchange.
        """
        for body in bodies:
            self.vhost.publish("", "q", message(body))

    def test_roundRobin(self) -> None:
        """
        Consumers take messages in turn.
        """
        target = RecordingTarget()
        consume(self.queue, target, "a")
        consume(self.queue, target, "b")
        consume(self.queue, target, "c")
        self.publish(b"1", b"2", b"3", b"4", b"5")
        self.assertEqual(target.tags(), ["a", "b", "c", "a", "b"])
        self.assertEqual(target.bodies(), [b"1", b"2", b"3", b"4", b"5"])
        self.assertEqual(self.queue.unacked, 5)
        self.assertEqual(self.queue.messageCount, 0)

    def test_roundRobinSkipsFull(self) -> None:
        """
        A consumer without credit is skipped; the others share the messages.
        """
        full = RecordingTarget(credit=0)
        open_ = RecordingTarget()
        consume(self.queue, full, "full")
        consume(self.queue, open_, "a")
        consume(self.queue, open_, "b")
        self.publish(b"1", b"2", b"3")
        self.assertEqual(full.deliveries, [])
        self.assertEqual(open_.tags(), ["a", "b", "a"])

    def test_backlogOnSubscribe(self) -> None:
        """
        Messages published before any consumer wait, in order, and go to the
        first consumer as soon as it subscribes.
        """
        self.publish(b"1", b"2")
        self.assertEqual(self.queue.messageCount, 2)
        target = RecordingTarget()
        consume(self.queue, target)
        self.assertEqual(target.bodies(), [b"1", b"2"])

    def test_credit(self) -> None:
        """
        A target takes only as many messages as it has credit for; the rest
        wait until it gets more and the queue dispatches.
        """
        target = RecordingTarget(credit=2)
        consume(self.queue, target)
        self.publish(b"1", b"2", b"3", b"4")
        self.assertEqual(target.bodies(), [b"1", b"2"])
        self.assertEqual(self.queue.messageCount, 2)
        target.grant(1)
        self.queue.dispatch()
        self.assertEqual(target.bodies(), [b"1", b"2", b"3"])
        self.assertEqual(self.queue.messageCount, 1)

    def test_prefetch(self) -> None:
        """
        A consumer with a prefetch holds at most that many unacknowledged
        messages; each ack lets one more through.
        """
        target = RecordingTarget()
        consumer = consume(self.queue, target, prefetch=2)
        self.publish(b"1", b"2", b"3", b"4")
        self.assertEqual(target.bodies(), [b"1", b"2"])
        self.assertEqual(consumer.unacked, 2)
        target.ack(consumer, target.deliveries[0][1])
        self.assertEqual(target.bodies(), [b"1", b"2", b"3"])
        self.assertEqual((consumer.unacked, self.queue.unacked), (2, 2))

    def test_ackAll(self) -> None:
        """
        Acknowledging every delivery empties the queue, frees the memory and
        tells the observers of each dequeue.
        """
        target = RecordingTarget()
        consumer = consume(self.queue, target)
        self.publish(b"1", b"2")
        for _, entry in list(target.deliveries):
            target.ack(consumer, entry)
        self.assertEqual((self.queue.unacked, self.queue.messageCount), (0, 0))
        self.assertEqual(self.vhost.resources.used, 0)
        self.assertEqual(
            [e for e in self.observer.events if e[0] == "dequeued"],
            [("dequeued", "q", 1), ("dequeued", "q", 2)],
        )

    def test_noAck(self) -> None:
        """
        A no-ack consumer's messages are settled as they are delivered, and
        it is never limited by unacknowledged messages.
        """
        target = RecordingTarget()
        consumer = consume(self.queue, target, noAck=True, prefetch=1)
        self.observer.clear()
        self.publish(b"1", b"2", b"3")
        self.assertEqual(target.bodies(), [b"1", b"2", b"3"])
        self.assertEqual((consumer.unacked, self.queue.unacked), (0, 0))
        self.assertEqual(self.vhost.resources.used, 0)
        self.assertEqual(
            self.observer.events[:3],
            [("enqueued", "q", 1), ("acquired", "q", 1), ("dequeued", "q", 1)],
        )

    def test_entryIds(self) -> None:
        """
        Each entry of a queue gets the next id; a message routed to several
        queues is one object with an entry (and id) in each.
        """
        other = self.vhost.declareQueue("other")
        self.vhost.bindQueue("q", "amq.fanout", "")
        self.vhost.bindQueue("other", "amq.fanout", "")
        self.publish(b"only q")
        shared = message(b"both")
        self.vhost.publish("amq.fanout", "", shared)
        self.assertEqual([e.id for e in self.queue.entries], [1, 2])
        self.assertEqual([e.id for e in other.entries], [1])
        self.assertIs(self.queue.entries[1].message, other.entries[0].message)

    def test_releaseOriginalOrder(self) -> None:
        """
        Entries given back return to their original places by id, in
        whatever order they are released, marked redelivered; entries that
        were never delivered are not.
        """
        target = RecordingTarget(credit=3)
        consumer = consume(self.queue, target)
        self.publish(b"1", b"2", b"3", b"4", b"5")
        held = {entry.message.body: entry for _, entry in target.deliveries}
        self.assertEqual(sorted(held), [b"1", b"2", b"3"])
        self.observer.clear()
        self.queue.consumerSettled(consumer, 2)
        self.queue.release([held[b"3"], held[b"1"]])
        self.assertEqual(
            [(e.message.body, e.redelivered) for e in self.queue.entries],
            [(b"1", True), (b"3", True), (b"4", False), (b"5", False)],
        )
        self.assertEqual(
            self.observer.events, [("released", "q", 3), ("released", "q", 1)]
        )
        target.grant(10)
        self.queue.dispatch()
        self.assertEqual(
            [(e.message.body, e.redelivered) for _, e in target.deliveries[3:]],
            [(b"1", True), (b"3", True), (b"4", False), (b"5", False)],
        )

    def test_releaseBetween(self) -> None:
        """
        An entry released between ready entries goes between them.
        """
        target = RecordingTarget(credit=0)
        consumer = consume(self.queue, target)
        self.publish(b"1", b"2", b"3")
        taken = self.queue.get()
        assert taken is not None
        middle = self.queue.entries[0]
        self.queue.entries.remove(middle)
        self.queue.release([middle], redelivered=False)
        self.queue.release([taken])
        self.assertEqual(
            [(e.id, e.redelivered) for e in self.queue.entries],
            [(1, True), (2, False), (3, False)],
        )
        self.assertEqual(consumer.unacked, 0)

    def test_releaseToDeletedQueue(self) -> None:
        """
        Entries released to a queue deleted in the meantime are dropped and
        their memory is freed.
        """
        target = RecordingTarget()
        consumer = consume(self.queue, target)
        self.publish(b"12345")
        self.vhost.deleteQueue("q")
        self.assertEqual(self.vhost.resources.used, 5 + Resources.overhead)
        self.queue.consumerSettled(consumer)
        self.queue.release([entry for _, entry in target.deliveries])
        self.assertEqual(self.vhost.resources.used, 0)
        self.assertEqual(self.queue.messageCount, 0)

    def test_releaseDispatches(self) -> None:
        """
        Released entries go to consumers that can take them at once.
        """
        first = RecordingTarget(credit=1)
        a = consume(self.queue, first, "a")
        self.publish(b"1")
        second = RecordingTarget()
        consume(self.queue, second, "b")
        entry = first.deliveries[0][1]
        self.queue.removeConsumer(a)
        self.queue.consumerSettled(a)
        self.queue.release([entry])
        self.assertEqual(second.deliveries, [(second.deliveries[0][0], entry)])
        self.assertTrue(entry.redelivered)

    def test_get(self) -> None:
        """
        L{Queue.get} takes the first ready entry (telling the observers), or
        returns L{None} when there is none.
        """
        self.assertIsNone(self.queue.get())
        self.publish(b"1", b"2")
        self.observer.clear()
        entry = self.queue.get()
        assert entry is not None
        self.assertEqual(entry.message.body, b"1")
        self.assertEqual(self.queue.messageCount, 1)
        self.assertEqual(self.observer.events, [("acquired", "q", 1)])

    def test_deliveryReentrance(self) -> None:
        """
        A target that publishes from within C{deliver} (as a consumer on the
        same connection may) does not recurse into dispatch; the message it
        published is delivered in the same dispatch loop.
        """
        vhost = self.vhost
        depth: list[int] = []

        class Republisher(RecordingTarget):
            """
            A target that publishes one more message on its first delivery.
            """

            def deliver(self, consumer: Consumer, entry: Entry) -> None:
                """
                Record, and publish again the first time.
                """
                depth.append(len(depth))
                super().deliver(consumer, entry)
                if len(self.deliveries) == 1:
                    vhost.publish("", "q", message(b"again"))

        target = Republisher()
        consume(self.queue, target)
        self.publish(b"first")
        self.assertEqual(target.bodies(), [b"first", b"again"])


class ObserverTests(SynchronousTestCase):
    """
    Tests that every operation tells the observers of its events, in order.
    """

    def setUp(self) -> None:
        """
        A fresh virtual host with two observers.
        """
        self.vhost = VirtualHost()
        self.observer = RecordingObserver()
        self.second = RecordingObserver()
        self.vhost.observers.extend([self.observer, self.second])

    def test_lifecycle(self) -> None:
        """
        A whole lifecycle (declare, bind, publish, deliver, release,
        redeliver, ack, purge, unbind, delete) produces its events in order,
        and every observer sees the same.
        """
        vhost = self.vhost
        vhost.declareExchange("x", "direct")
        queue = vhost.declareQueue("q")
        vhost.bindQueue("q", "x", "k")
        vhost.bindQueue("q", "x", "k")
        vhost.publish("x", "k", message(b"1"))
        target = RecordingTarget(credit=1)
        consumer = consume(queue, target)
        vhost.publish("x", "k", message(b"2"))
        queue.consumerSettled(consumer)
        target.grant(1)
        queue.release([target.deliveries[0][1]])
        target.ack(consumer, target.deliveries[1][1])
        vhost.purgeQueue("q")
        vhost.unbindQueue("q", "x", "k")
        vhost.deleteQueue("q")
        vhost.deleteExchange("x")
        expected = [
            ("exchangeDeclared", "x"),
            ("queueDeclared", "q"),
            ("bound", "x", "q", "k"),
            ("enqueued", "q", 1),
            ("acquired", "q", 1),
            ("enqueued", "q", 2),
            ("released", "q", 1),
            ("acquired", "q", 1),
            ("dequeued", "q", 1),
            ("purged", "q", 1),
            ("unbound", "x", "q", "k"),
            ("queueDeleted", "q"),
            ("exchangeDeleted", "x"),
        ]
        self.assertEqual(self.observer.events, expected)
        self.assertEqual(self.second.events, expected)

    def test_settleAllTellsOnce(self) -> None:
        """
        L{Queue.settleAll} (a multiple acknowledgement) tells each observer
        of every entry in one call, in order, and gives back their memory.
        """
        queue = self.vhost.declareQueue("q")
        used = self.vhost.resources.used
        target = RecordingTarget(credit=3)
        consume(queue, target)
        for body in (b"1", b"22", b"333"):
            self.vhost.publish("", "q", message(body))
        entries = [entry for _, entry in target.deliveries]
        calls: list[tuple[Queue, list[int]]] = []

        class Observer(RecordingObserver):
            def dequeued(self, queue: Queue, entries: Any) -> None:
                calls.append((queue, [entry.id for entry in entries]))

        self.vhost.observers.append(Observer())
        changes = self.vhost.changes
        queue.settleAll(entries)
        self.assertEqual(calls, [(queue, [1, 2, 3])])
        self.assertEqual(self.observer.events[-3:], [("dequeued", "q", id) for id in (1, 2, 3)])
        self.assertEqual(self.vhost.changes, changes + 3)
        self.assertEqual((queue.held, self.vhost.resources.used), ({}, used))

    def test_exchangeBindingEvents(self) -> None:
        """
        Exchange-to-exchange bindings are reported like queue bindings.
        """
        self.vhost.declareExchange("a", "fanout")
        self.vhost.declareExchange("b", "fanout")
        self.observer.clear()
        binding = self.vhost.bindExchange("b", "a", "k")
        self.vhost.unbindExchange("b", "a", "k")
        self.assertEqual(
            self.observer.events, [("bound", "a", "b", "k"), ("unbound", "a", "b", "k")]
        )
        self.assertEqual(
            self.observer.calls, [("bound", binding), ("unbound", binding)]
        )

    def test_failedOperationsTellNothing(self) -> None:
        """
        Operations refused with an error change nothing and tell the
        observers nothing.
        """
        self.vhost.declareQueue("q")
        self.vhost.publish("", "q", message())
        self.observer.clear()
        calls = [
            lambda: self.vhost.declareExchange("amq.x", "direct"),
            lambda: self.vhost.declareQueue("q", durable=True),
            lambda: self.vhost.declareQueue("bad", arguments={"qpid.replicate": "x"}),
            lambda: self.vhost.deleteQueue("q", ifEmpty=True),
            lambda: self.vhost.bindQueue("q", "amq.headers", "", {"x-match": "no"}),
            lambda: self.vhost.publish("nothing", "k", message()),
        ]
        for call in calls:
            self.assertRaises(AMQPError, call)
        self.assertEqual(self.observer.events, [])

    def test_unroutable(self) -> None:
        """
        An unroutable message produces no event.
        """
        self.assertEqual(self.vhost.publish("amq.direct", "nowhere", message()), [])
        self.assertEqual(self.observer.events, [])


class ResourcesTests(SynchronousTestCase):
    """
    Tests for L{Resources}: memory accounting and the high watermark.
    """

    def setUp(self) -> None:
        """
        A virtual host whose watermark is passed by the third 100-byte
        message (each costs 100 bytes plus the per-message overhead).
        """
        self.perMessage = 100 + Resources.overhead
        self.resources = Resources(highWatermark=2 * self.perMessage)
        self.changes: list[bool] = []
        self.resources.listeners.append(self.changes.append)
        self.vhost = VirtualHost(resources=self.resources)
        self.queue = self.vhost.declareQueue("q")

    def publish(self, count: int) -> None:
        """
        Publish C{count} 100-byte messages to C{q}.
        """
        for _ in range(count):
            self.vhost.publish("", "q", message(b"x" * 100))

    def test_accounting(self) -> None:
        """
        Enqueued messages count their body and overhead; acked, purged and
        deleted ones no longer count.
        """
        self.publish(2)
        self.assertEqual(self.resources.used, 2 * self.perMessage)
        entry = self.queue.get()
        assert entry is not None
        self.queue.settle(entry)
        self.assertEqual(self.resources.used, self.perMessage)
        self.vhost.purgeQueue("q")
        self.assertEqual(self.resources.used, 0)
        self.publish(2)
        self.vhost.deleteQueue("q")
        self.assertEqual(self.resources.used, 0)

    def test_crossingUp(self) -> None:
        """
        Passing the watermark calls the listeners once with C{True}; staying
        above does not call them again.
        """
        self.publish(2)
        self.assertEqual((self.changes, self.resources.blocked), ([], False))
        self.publish(1)
        self.assertEqual((self.changes, self.resources.blocked), ([True], True))
        self.publish(2)
        self.assertEqual(self.changes, [True])

    def test_crossingDown(self) -> None:
        """
        Falling back to the watermark or below calls the listeners once with
        C{False}; going up again calls them with C{True} again.
        """
        self.publish(4)
        for _ in range(2):
            entry = self.queue.get()
            assert entry is not None
            self.queue.settle(entry)
        self.assertEqual(self.changes, [True, False])
        self.assertFalse(self.resources.blocked)
        self.publish(1)
        self.assertEqual(self.changes, [True, False, True])
        self.vhost.purgeQueue("q")
        self.assertEqual(self.changes, [True, False, True, False])

    def test_noWatermark(self) -> None:
        """
        Without a watermark (0) nothing is ever blocked.
        """
        resources = Resources()
        changes: list[bool] = []
        resources.listeners.append(changes.append)
        resources.add(10**12)
        resources.remove(10**12)
        self.assertEqual((changes, resources.blocked), ([], False))

    def test_listenerRemovesItself(self) -> None:
        """
        A listener may remove itself while being called; the others are
        still called.
        """
        calls: list[str] = []

        def once(blocked: bool) -> None:
            """
            Record a call and unsubscribe.
            """
            calls.append("once")
            self.resources.listeners.remove(once)

        self.resources.listeners.insert(0, once)
        self.publish(3)
        self.assertEqual((calls, self.changes), (["once"], [True]))
        self.assertEqual(self.resources.listeners, [self.changes.append])
