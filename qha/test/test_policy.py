"""
Tests for the queue policies of issue 3 in the broker model: parsing the
declare arguments under the Qpid and the RabbitMQ names, last-value queues,
ring and reject length limits, priority levels with fairshare, message TTL,
queue expiry, dead-lettering with C{x-death}, alternate exchanges, exclusive
and auto-delete queues, and the combinations the issue names.

Everything is synchronous: time is a L{Clock} given to the virtual host,
consumers deliver to a L{RecordingTarget}, and a L{RecordingObserver} sees
every event in the order a replica would apply it. Each test that uses time
ends with no timer left, and each ends with the memory accounting back at
zero once every message is gone.
"""

from __future__ import annotations

import datetime
from typing import Any

from pamqp import commands
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from qha.broker.errors import PreconditionFailed, ResourceLocked
from qha.broker.message import Message
from qha.broker.policy import (
    DROP_HEAD,
    REJECT_PUBLISH,
    REJECT_PUBLISH_DLX,
    QueuePolicy,
    parsePolicy,
)
from qha.broker.queue import Consumer, Entry, Queue, QueueFull
from qha.broker.vhost import PublishRefused, VirtualHost
from qha.testing import RecordingObserver, RecordingTarget


def message(
    body: bytes = b"body",
    routingKey: str = "",
    exchange: str = "",
    headers: dict[str, Any] | None = None,
    priority: int | None = None,
    expiration: str | None = None,
) -> Message:
    """
    Build a message with the given properties (none that are L{None}).
    """
    properties = commands.Basic.Properties(
        headers=headers, priority=priority, expiration=expiration
    )
    return Message.build(exchange, routingKey, body, properties)


def bodies(entries: list[Entry]) -> list[bytes]:
    """
    The bodies of C{entries}, in order.
    """
    return [entry.message.body for entry in entries]


class PolicyTestCase(SynchronousTestCase):
    """
    A virtual host on a L{Clock}, with an observer, and the checks every
    policy test ends with.

    @ivar clock: the virtual host's time.
    @ivar vhost: the virtual host.
    @ivar observer: records every event.
    """

    def setUp(self) -> None:
        """
        Make the clock, the virtual host and its observer.
        """
        self.clock = Clock()
        self.vhost = VirtualHost(clock=self.clock)
        self.observer = RecordingObserver()
        self.vhost.observers.append(self.observer)

    def declareWith(self, name: str, arguments: dict[str, Any], **kw: Any) -> Queue:
        """
        Declare queue C{name} with the declare C{arguments}.
        """
        return self.vhost.declareQueue(name, arguments=arguments, **kw)

    def publish(self, queue: str, body: bytes, **properties: Any) -> list[Queue]:
        """
        Publish C{body} to C{queue} through the default exchange.
        """
        return self.vhost.publish("", queue, message(body, routingKey=queue, **properties))

    def consume(
        self, queue: Queue, credit: int | None = None, tag: str = "ctag", noAck: bool = False
    ) -> tuple[Consumer, RecordingTarget]:
        """
        Subscribe a new L{RecordingTarget} with C{credit} to C{queue}.
        """
        target = RecordingTarget(credit)
        consumer = Consumer(queue, tag, target, noAck=noAck)
        queue.addConsumer(consumer)
        return consumer, target

    def getAll(self, queue: Queue) -> list[bytes]:
        """
        Take and settle every ready message of C{queue}, as basic.get with
        no-ack does, and return their bodies.
        """
        taken: list[bytes] = []
        while True:
            entry = queue.get()
            if entry is None:
                return taken
            queue.settle(entry)
            taken.append(entry.message.body)

    def deadLetterQueue(self, name: str = "dlq", exchange: str = "dlx") -> Queue:
        """
        A fanout exchange C{exchange} and a queue C{name} bound to it, to
        catch dead-lettered messages.
        """
        self.vhost.declareExchange(exchange, "fanout")
        queue = self.vhost.declareQueue(name)
        self.vhost.bindQueue(name, exchange, "")
        return queue

    def assertNoTimers(self) -> None:
        """
        No timer is left on the clock.
        """
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def assertNoMemory(self) -> None:
        """
        The memory accounting is back to zero: no message is held.
        """
        self.assertEqual(self.vhost.resources.used, 0)

    def eventsOf(self, kind: str) -> list[tuple[Any, ...]]:
        """
        The recorded events named C{kind}, in order.
        """
        return [event for event in self.observer.events if event[0] == kind]

    def queueEvents(self) -> list[tuple[Any, ...]]:
        """
        The recorded message events (enqueued, acquired, released,
        dequeued), in order.
        """
        kinds = {"enqueued", "acquired", "released", "dequeued"}
        return [event for event in self.observer.events if event[0] in kinds]


class ParsePolicyTests(SynchronousTestCase):
    """
    L{parsePolicy} reads the same policies from the Qpid names and from the
    RabbitMQ names.
    """

    def test_noArguments(self) -> None:
        """
        No arguments (or only ones that are no policy) make a plain queue.
        """
        self.assertTrue(parsePolicy({}, "q").plain)
        self.assertTrue(parsePolicy({"note": "mine"}, "q").plain)

    def test_lastValue(self) -> None:
        """
        C{qpid.last_value_queue_key} names the key header.
        """
        policy = parsePolicy({"qpid.last_value_queue_key": "symbol"}, "q")
        self.assertEqual(policy.lvqKey, "symbol")
        self.assertFalse(policy.plain)

    def test_lengthLimitRabbitNames(self) -> None:
        """
        C{x-max-length} and C{x-max-length-bytes} set the limits, drop-head
        by default, and C{x-overflow} picks each of its three modes.
        """
        policy = parsePolicy({"x-max-length": 5, "x-max-length-bytes": 100}, "q")
        self.assertEqual((policy.maxCount, policy.maxBytes), (5, 100))
        self.assertEqual(policy.overflow, DROP_HEAD)
        self.assertTrue(policy.limited)
        for mode in (DROP_HEAD, REJECT_PUBLISH, REJECT_PUBLISH_DLX):
            policy = parsePolicy({"x-max-length": 5, "x-overflow": mode}, "q")
            self.assertEqual(policy.overflow, mode)

    def test_lengthLimitQpidNames(self) -> None:
        """
        C{qpid.max_count} and C{qpid.max_size} set the same limits, and
        C{qpid.policy_type} ring and reject map to drop-head and
        reject-publish.
        """
        policy = parsePolicy(
            {"qpid.max_count": 5, "qpid.max_size": 100, "qpid.policy_type": "ring"}, "q"
        )
        self.assertEqual(
            (policy.maxCount, policy.maxBytes, policy.overflow), (5, 100, DROP_HEAD)
        )
        policy = parsePolicy({"qpid.max_count": 5, "qpid.policy_type": "reject"}, "q")
        self.assertEqual(policy.overflow, REJECT_PUBLISH)

    def test_bytesAndStrings(self) -> None:
        """
        String arguments may arrive as bytes, and Qpid clients often send
        numbers as strings: both are read.
        """
        policy = parsePolicy(
            {"qpid.max_count": "7", "qpid.policy_type": b"ring", "qpid.last_value_queue_key": b"k"},
            "q",
        )
        self.assertEqual((policy.maxCount, policy.overflow, policy.lvqKey), (7, DROP_HEAD, "k"))

    def test_priorities(self) -> None:
        """
        C{x-max-priority} N means priorities 0 to N (N + 1 levels);
        C{qpid.priorities} N means N levels. One level is no priority.
        """
        self.assertEqual(parsePolicy({"x-max-priority": 10}, "q").priorities, 11)
        self.assertEqual(parsePolicy({"qpid.priorities": 10}, "q").priorities, 10)
        self.assertEqual(parsePolicy({"x-max-priority": 255}, "q").priorities, 256)
        self.assertTrue(parsePolicy({"x-max-priority": 0}, "q").plain)
        self.assertTrue(parsePolicy({"qpid.priorities": 1}, "q").plain)

    def test_fairshare(self) -> None:
        """
        C{qpid.fairshare} sets a default for every level and
        C{qpid.fairshare-N} the limit of level N.
        """
        policy = parsePolicy(
            {"qpid.priorities": 3, "qpid.fairshare": 2, "qpid.fairshare-2": 5}, "q"
        )
        self.assertEqual(policy.fairshare, {0: 2, 1: 2, 2: 5})

    def test_timeAndDeadLetterRabbitNames(self) -> None:
        """
        C{x-message-ttl}, C{x-expires}, C{x-dead-letter-exchange} and
        C{x-dead-letter-routing-key}.
        """
        policy = parsePolicy(
            {
                "x-message-ttl": 0,
                "x-expires": 1000,
                "x-dead-letter-exchange": "dlx",
                "x-dead-letter-routing-key": "dead",
            },
            "q",
        )
        self.assertEqual(
            (
                policy.messageTtl,
                policy.expires,
                policy.deadLetterExchange,
                policy.deadLetterRoutingKey,
            ),
            (0, 1000, "dlx", "dead"),
        )

    def test_deadLetterQpidName(self) -> None:
        """
        Qpid's C{alternate-exchange} on a queue is its dead-letter exchange;
        the dead-letter routing key defaults to the message's own.
        """
        policy = parsePolicy({"alternate-exchange": "ae"}, "q")
        self.assertEqual((policy.deadLetterExchange, policy.deadLetterRoutingKey), ("ae", None))

    def test_defaultDeadLetterExchange(self) -> None:
        """
        The default exchange (the empty name) is a valid dead-letter
        exchange, as in RabbitMQ.
        """
        policy = parsePolicy(
            {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dlq"}, "q"
        )
        self.assertEqual(policy.deadLetterExchange, "")

    def test_invalid(self) -> None:
        """
        A wrong type, a negative limit, an unknown overflow mode or policy
        type, a priority above 255, a zero expiry and a dead-letter routing
        key without an exchange are refused with 406 PRECONDITION_FAILED and
        a text naming the argument and the queue.
        """
        cases: list[tuple[str, dict[str, Any]]] = [
            ("x-max-length", {"x-max-length": "ten"}),
            ("x-max-length", {"x-max-length": -1}),
            ("x-max-length", {"x-max-length": 1.5}),
            ("x-max-length", {"x-max-length": True}),
            ("x-max-length", {"x-max-length": [1]}),
            ("x-max-length-bytes", {"x-max-length-bytes": -1}),
            ("qpid.max_count", {"qpid.max_count": -5}),
            ("qpid.max_size", {"qpid.max_size": "big"}),
            ("x-overflow", {"x-overflow": "drop-tail"}),
            ("x-overflow", {"x-overflow": 1}),
            ("qpid.policy_type", {"qpid.policy_type": "flow_to_disk"}),
            ("x-max-priority", {"x-max-priority": 256}),
            ("x-max-priority", {"x-max-priority": -1}),
            ("x-max-priority", {"x-max-priority": "high"}),
            ("qpid.priorities", {"qpid.priorities": 256}),
            ("qpid.fairshare", {"qpid.fairshare": -1}),
            ("qpid.fairshare-x", {"qpid.fairshare-x": 1}),
            ("qpid.fairshare-2", {"qpid.fairshare-2": -3}),
            ("x-message-ttl", {"x-message-ttl": -1}),
            ("x-message-ttl", {"x-message-ttl": "soon"}),
            ("x-expires", {"x-expires": 0}),
            ("x-expires", {"x-expires": -100}),
            ("x-dead-letter-exchange", {"x-dead-letter-exchange": 5}),
            ("x-dead-letter-routing-key", {"x-dead-letter-routing-key": "k"}),
            ("qpid.last_value_queue_key", {"qpid.last_value_queue_key": 3}),
        ]
        for name, arguments in cases:
            with self.assertRaises(PreconditionFailed, msg=repr(arguments)) as caught:
                parsePolicy(arguments, "orders")
            error = caught.exception
            self.assertEqual(error.replyCode, 406)
            self.assertTrue(
                error.replyText.startswith("PRECONDITION_FAILED - "), error.replyText
            )
            self.assertIn(f"'{name}'", error.replyText)
            self.assertIn("'orders'", error.replyText)


class DeclareTests(PolicyTestCase):
    """
    Declaring a queue with policy arguments: refusals, equivalent and
    conflicting re-declares.
    """

    def test_invalidRefused(self) -> None:
        """
        A declare with an invalid argument is refused with 406, and no
        queue is made (no event either).
        """
        with self.assertRaises(PreconditionFailed) as caught:
            self.declareWith("q", {"x-overflow": "sometimes", "x-max-length": 1})
        self.assertIn("'x-overflow'", caught.exception.replyText)
        self.assertNotIn("q", self.vhost.queues)
        self.assertEqual(self.observer.events, [])

    def test_policyOfDeclaredQueue(self) -> None:
        """
        The queue carries the policy its arguments asked for.
        """
        queue = self.declareWith("q", {"qpid.max_count": 3, "qpid.policy_type": "reject"})
        self.assertEqual(
            queue.policy, QueuePolicy(maxCount=3, overflow=REJECT_PUBLISH)
        )

    def test_equivalentRedeclare(self) -> None:
        """
        Declaring again with the same policy arguments (and other,
        insignificant ones that differ) gives the same queue, with no new
        event.
        """
        arguments = {
            "x-max-length": 10,
            "x-overflow": "reject-publish",
            "x-max-priority": 5,
            "x-message-ttl": 1000,
            "x-dead-letter-exchange": "dlx",
            "qpid.last_value_queue_key": "k",
        }
        first = self.declareWith("q", dict(arguments, note="a"))
        self.observer.clear()
        second = self.declareWith("q", dict(arguments, note="b"))
        self.assertIs(first, second)
        self.assertEqual(self.observer.events, [])

    def test_conflictingRedeclare(self) -> None:
        """
        Declaring again with a different policy argument, or without one
        the queue has, fails with 406 naming the argument, and the queue
        keeps its policy.
        """
        queue = self.declareWith("q", {"x-max-length": 10, "x-message-ttl": 1000})
        for name, arguments in [
            ("x-max-length", {"x-max-length": 11, "x-message-ttl": 1000}),
            ("x-message-ttl", {"x-max-length": 10}),
            ("x-max-priority", {"x-max-length": 10, "x-message-ttl": 1000, "x-max-priority": 3}),
            ("qpid.max_count", {"qpid.max_count": 10, "x-max-length": 10, "x-message-ttl": 1000}),
        ]:
            with self.assertRaises(PreconditionFailed) as caught:
                self.declareWith("q", arguments)
            self.assertIn(f"inequivalent arg '{name}'", caught.exception.replyText)
        self.assertEqual((queue.policy.maxCount, queue.policy.messageTtl), (10, 1000))


class RingTests(PolicyTestCase):
    """
    A length limit that drops the oldest message (x-overflow drop-head,
    Qpid's ring policy).
    """

    def test_dropOldestByCount(self) -> None:
        """
        Past C{x-max-length}, the oldest message goes; each drop is a
        dequeue the observers see right after the enqueue that caused it.
        """
        queue = self.declareWith("q", {"x-max-length": 2})
        self.observer.clear()
        for body in [b"1", b"2", b"3", b"4"]:
            self.publish("q", body)
        self.assertEqual(queue.messageCount, 2)
        self.assertEqual(
            self.queueEvents(),
            [
                ("enqueued", "q", 1),
                ("enqueued", "q", 2),
                ("enqueued", "q", 3),
                ("dequeued", "q", 1),
                ("enqueued", "q", 4),
                ("dequeued", "q", 2),
            ],
        )
        self.assertEqual(self.getAll(queue), [b"3", b"4"])
        self.assertNoMemory()

    def test_dropOldestByBytes(self) -> None:
        """
        Past C{x-max-length-bytes}, the oldest messages go until the bodies
        fit.
        """
        queue = self.declareWith("q", {"x-max-length-bytes": 10})
        for body in [b"aaaa", b"bbbb", b"cccccc"]:
            self.publish("q", body)
        self.assertEqual(queue.readyBytes, 10)
        self.assertEqual(self.getAll(queue), [b"bbbb", b"cccccc"])
        self.assertNoMemory()

    def test_qpidRing(self) -> None:
        """
        C{qpid.policy_type=ring} with C{qpid.max_count} behaves the same.
        """
        queue = self.declareWith("q", {"qpid.max_count": 3, "qpid.policy_type": "ring"})
        for index in range(10):
            self.publish("q", b"%d" % index)
        self.assertEqual(self.getAll(queue), [b"7", b"8", b"9"])
        self.assertNoMemory()

    def test_heldMessagesDoNotCount(self) -> None:
        """
        As in RabbitMQ, only ready messages count towards the limit: a
        message a consumer holds is not dropped, and does not make room
        for one fewer.
        """
        queue = self.declareWith("q", {"x-max-length": 2})
        consumer, target = self.consume(queue, credit=1)
        for body in [b"held", b"a", b"b", b"c"]:
            self.publish("q", body)
        self.assertEqual(target.bodies(), [b"held"])
        self.assertEqual(queue.messageCount, 2)
        target.ack(consumer, target.deliveries[0][1])
        queue.removeConsumer(consumer)
        self.assertEqual(self.getAll(queue), [b"b", b"c"])
        self.assertNoMemory()

    def test_dropToDeadLetter(self) -> None:
        """
        A dropped message is dead-lettered with reason C{maxlen}.
        """
        dlq = self.deadLetterQueue()
        queue = self.declareWith("q", {"x-max-length": 1, "x-dead-letter-exchange": "dlx"})
        self.publish("q", b"old")
        self.publish("q", b"new")
        self.assertEqual(bodies(list(queue.entries)), [b"new"])
        [dead] = list(dlq.entries)
        self.assertEqual(dead.message.body, b"old")
        self.assertEqual(dead.message.headers["x-death"][0]["reason"], "maxlen")
        self.getAll(queue)
        self.getAll(dlq)
        self.assertNoMemory()


class RejectTests(PolicyTestCase):
    """
    A length limit that refuses the publish (x-overflow reject-publish and
    reject-publish-dlx, Qpid's reject policy).
    """

    def test_rejectPublish(self) -> None:
        """
        A publish to a full queue raises L{QueueFull} (406, naming the
        queue and its limit) and changes nothing; once a message is
        consumed there is room again.
        """
        queue = self.declareWith("q", {"x-max-length": 2, "x-overflow": "reject-publish"})
        self.publish("q", b"1")
        self.publish("q", b"2")
        self.observer.clear()
        with self.assertRaises(QueueFull) as caught:
            self.publish("q", b"3")
        self.assertEqual(caught.exception.replyCode, 406)
        self.assertIn("'q'", caught.exception.replyText)
        self.assertIn("at most 2 messages", caught.exception.replyText)
        self.assertIs(caught.exception.queue, queue)
        self.assertEqual(self.observer.events, [])
        self.assertEqual(queue.messageCount, 2)
        entry = queue.get()
        assert entry is not None
        queue.settle(entry)
        self.publish("q", b"3")
        self.assertEqual(self.getAll(queue), [b"2", b"3"])
        self.assertNoMemory()

    def test_rejectPublishOthersTakeIt(self) -> None:
        """
        A message routed to a full queue and to others is refused by the
        full one only: every other queue takes it (whichever the routing
        reaches first), and the L{PublishRefused} names the full queue and
        those that took it, as a confirm-mode publisher's basic.nack follows
        the enqueues on the others.
        """
        self.vhost.declareExchange("fan", "fanout")
        before = self.declareWith("a", {})
        full = self.declareWith("full", {"x-max-length": 0, "x-overflow": "reject-publish"})
        after = self.declareWith("z", {})
        for name in ("a", "full", "z"):
            self.vhost.bindQueue(name, "fan", "")
        with self.assertRaises(PublishRefused) as caught:
            self.vhost.publish("fan", "", message(b"m", exchange="fan"))
        self.assertIs(caught.exception.queue, full)
        self.assertEqual(
            sorted(queue.name for queue in caught.exception.accepted), ["a", "z"]
        )
        self.assertEqual((before.messageCount, full.messageCount, after.messageCount), (1, 0, 1))
        self.getAll(before)
        self.getAll(after)
        self.assertNoMemory()

    def test_rejectPublishAllRefuse(self) -> None:
        """
        A message every queue refuses raises L{PublishRefused} (a
        L{QueueFull}) with no queue that took it.
        """
        self.vhost.declareExchange("fan", "fanout")
        for name in ("f1", "f2"):
            self.declareWith(name, {"x-max-length": 0, "x-overflow": "reject-publish"})
            self.vhost.bindQueue(name, "fan", "")
        with self.assertRaises(PublishRefused) as caught:
            self.vhost.publish("fan", "", message(b"m", exchange="fan"))
        self.assertEqual(caught.exception.accepted, [])
        self.assertNoMemory()

    def test_qpidReject(self) -> None:
        """
        C{qpid.policy_type=reject} with C{qpid.max_size} refuses a message
        whose body does not fit.
        """
        queue = self.declareWith("q", {"qpid.max_size": 5, "qpid.policy_type": "reject"})
        self.publish("q", b"abc")
        with self.assertRaises(QueueFull) as caught:
            self.publish("q", b"def")
        self.assertIn("at most 5 bytes", caught.exception.replyText)
        self.publish("q", b"de")
        self.assertEqual(self.getAll(queue), [b"abc", b"de"])
        self.assertNoMemory()

    def test_rejectPublishDoesNotDeadLetter(self) -> None:
        """
        With reject-publish, a refused message is not dead-lettered.
        """
        dlq = self.deadLetterQueue()
        self.declareWith(
            "q",
            {"x-max-length": 0, "x-overflow": "reject-publish", "x-dead-letter-exchange": "dlx"},
        )
        self.assertRaises(QueueFull, self.publish, "q", b"refused")
        self.assertEqual(dlq.messageCount, 0)
        self.assertNoMemory()

    def test_rejectPublishDeadLetter(self) -> None:
        """
        With reject-publish-dlx, the refused message is dead-lettered with
        reason C{maxlen}, and the publish is still refused.
        """
        dlq = self.deadLetterQueue()
        queue = self.declareWith(
            "q",
            {
                "x-max-length": 1,
                "x-overflow": "reject-publish-dlx",
                "x-dead-letter-exchange": "dlx",
            },
        )
        self.publish("q", b"kept")
        self.assertRaises(QueueFull, self.publish, "q", b"refused")
        self.assertEqual(bodies(list(queue.entries)), [b"kept"])
        [dead] = list(dlq.entries)
        self.assertEqual(dead.message.body, b"refused")
        death = dead.message.headers["x-death"][0]
        self.assertEqual((death["reason"], death["queue"]), ("maxlen", "q"))
        self.getAll(queue)
        self.getAll(dlq)
        self.assertNoMemory()

    def test_fullDeadLetterTargetDrops(self) -> None:
        """
        A dead-lettered message that a full reject-publish queue refuses is
        dropped, and the death that caused it goes on.
        """
        self.vhost.declareExchange("dlx", "fanout")
        full = self.declareWith("full", {"x-max-length": 0, "x-overflow": "reject-publish"})
        self.vhost.bindQueue("full", "dlx", "")
        queue = self.declareWith("q", {"x-dead-letter-exchange": "dlx"})
        self.publish("q", b"m")
        entry = queue.get()
        assert entry is not None
        queue.reject([entry])
        self.assertEqual((queue.messageCount, full.messageCount), (0, 0))
        self.assertNoMemory()


class PriorityTests(PolicyTestCase):
    """
    Priority levels: higher first, FIFO within a level.
    """

    def test_rabbitPriorities(self) -> None:
        """
        With C{x-max-priority}, higher priorities are delivered first, in
        publish order within a priority; priorities above the maximum count
        as the maximum, and no priority as 0.
        """
        queue = self.declareWith("q", {"x-max-priority": 3})
        for body, priority in [
            (b"a0", None),
            (b"b2", 2),
            (b"c9", 9),
            (b"d3", 3),
            (b"e2", 2),
            (b"f0", 0),
        ]:
            self.publish("q", body, priority=priority)
        self.assertEqual(self.getAll(queue), [b"c9", b"d3", b"b2", b"e2", b"a0", b"f0"])
        self.assertNoMemory()

    def test_qpidPriorities(self) -> None:
        """
        C{qpid.priorities} makes levels the same way.
        """
        queue = self.declareWith("q", {"qpid.priorities": 10})
        for priority in [1, 5, 9, 5, 1]:
            self.publish("q", b"%d" % priority, priority=priority)
        self.assertEqual(self.getAll(queue), [b"9", b"5", b"5", b"1", b"1"])
        self.assertNoMemory()

    def test_consumerOrder(self) -> None:
        """
        A consumer given credit later gets the highest priority first.
        """
        queue = self.declareWith("q", {"x-max-priority": 9})
        consumer, target = self.consume(queue, credit=0)
        for priority in [0, 4, 8, 4]:
            self.publish("q", b"%d" % priority, priority=priority)
        target.grant(10)
        queue.dispatch()
        self.assertEqual(target.bodies(), [b"8", b"4", b"4", b"0"])
        for _, entry in list(target.deliveries):
            target.ack(consumer, entry)
        self.assertNoMemory()

    def test_requeueKeepsOrderWithinLevels(self) -> None:
        """
        Messages a consumer held and gave back (in any order) return to
        their places: delivered again, they come in the same order as the
        first time, marked redelivered.
        """
        queue = self.declareWith("q", {"x-max-priority": 2})
        consumer, target = self.consume(queue, credit=4)
        for body, priority in [(b"l1", 0), (b"h1", 2), (b"l2", 0), (b"h2", 2), (b"m1", 1), (b"l3", 0)]:
            self.publish("q", body, priority=priority)
        first = target.bodies()
        self.assertEqual(first, [b"l1", b"h1", b"l2", b"h2"])
        held = [entry for _, entry in target.deliveries]
        queue.removeConsumer(consumer)
        queue.consumerSettled(consumer, len(held))
        queue.release(list(reversed(held)))
        self.assertEqual(
            bodies(list(queue.entries)), [b"h1", b"h2", b"m1", b"l1", b"l2", b"l3"]
        )
        entries = list(queue.entries)
        self.assertEqual(
            [entry.redelivered for entry in entries], [True, True, False, True, True, False]
        )
        self.assertEqual(self.getAll(queue), [b"h1", b"h2", b"m1", b"l1", b"l2", b"l3"])
        self.assertNoMemory()

    def test_priorityAndRing(self) -> None:
        """
        A full priority queue with a length limit drops the oldest message
        of the lowest priority first, and only then higher ones.
        """
        queue = self.declareWith("q", {"x-max-priority": 2, "x-max-length": 3})
        self.publish("q", b"h1", priority=2)
        self.publish("q", b"l1", priority=0)
        self.publish("q", b"m1", priority=1)
        self.publish("q", b"l2", priority=0)
        self.assertEqual(bodies(list(queue.entries)), [b"h1", b"m1", b"l2"])
        self.publish("q", b"h2", priority=2)
        self.assertEqual(bodies(list(queue.entries)), [b"h1", b"h2", b"m1"])
        self.publish("q", b"h3", priority=2)
        self.publish("q", b"h4", priority=2)
        self.assertEqual(bodies(list(queue.entries)), [b"h2", b"h3", b"h4"])
        self.assertEqual(self.getAll(queue), [b"h2", b"h3", b"h4"])
        self.assertNoMemory()

    def test_priorityAndReject(self) -> None:
        """
        A full priority queue that refuses publishes refuses a high
        priority message too (it does not drop a lower one for it).
        """
        queue = self.declareWith(
            "q", {"x-max-priority": 2, "x-max-length": 1, "x-overflow": "reject-publish"}
        )
        self.publish("q", b"low", priority=0)
        self.assertRaises(QueueFull, self.publish, "q", b"high", priority=2)
        self.assertEqual(self.getAll(queue), [b"low"])
        self.assertNoMemory()


class FairshareTests(PolicyTestCase):
    """
    Qpid's fairshare: at most N messages of a level in a row before lower
    levels get a turn.
    """

    def test_fairshareOrder(self) -> None:
        """
        With C{qpid.fairshare-2: 2}, two high messages go, then one of the
        next lower level, and so on; with no lower message waiting, high
        ones carry on.
        """
        queue = self.declareWith("q", {"qpid.priorities": 3, "qpid.fairshare-2": 2})
        for index in range(1, 6):
            self.publish("q", b"H%d" % index, priority=2)
        for index in range(1, 4):
            self.publish("q", b"L%d" % index, priority=0)
        self.assertEqual(
            self.getAll(queue),
            [b"H1", b"H2", b"L1", b"H3", b"H4", b"L2", b"H5", b"L3"],
        )
        self.assertNoMemory()

    def test_fairshareDefault(self) -> None:
        """
        C{qpid.fairshare} applies to every level: a middle level gets its
        turn after the top one's share, and the bottom one after the middle
        one's.
        """
        queue = self.declareWith("q", {"qpid.priorities": 3, "qpid.fairshare": 1})
        for body, priority in [(b"H1", 2), (b"H2", 2), (b"H3", 2), (b"M1", 1), (b"M2", 1), (b"L1", 0)]:
            self.publish("q", body, priority=priority)
        self.assertEqual(
            self.getAll(queue), [b"H1", b"M1", b"H2", b"M2", b"H3", b"L1"]
        )
        self.assertNoMemory()

    def test_fairshareToConsumer(self) -> None:
        """
        The same order reaches a consumer.
        """
        queue = self.declareWith("q", {"x-max-priority": 1, "qpid.fairshare-1": 3})
        consumer, target = self.consume(queue, credit=0)
        for index in range(1, 5):
            self.publish("q", b"H%d" % index, priority=1)
        self.publish("q", b"L1", priority=0)
        target.grant(5)
        queue.dispatch()
        self.assertEqual(target.bodies(), [b"H1", b"H2", b"H3", b"L1", b"H4"])
        for _, entry in list(target.deliveries):
            target.ack(consumer, entry)
        self.assertNoMemory()


class LastValueTests(PolicyTestCase):
    """
    Last-value queues: a new message replaces the queued one with the same
    key value.
    """

    def lvq(self, **extra: Any) -> Queue:
        """
        Declare last-value queue C{q} keyed on header C{k}.
        """
        return self.declareWith("q", dict({"qpid.last_value_queue_key": "k"}, **extra))

    def test_replace(self) -> None:
        """
        A message with a key value already queued replaces it (the new one
        is queued last); messages without the key are kept as in any
        queue. The replacement is a dequeue of the old message, seen before
        the enqueue of the new one.
        """
        queue = self.lvq()
        self.observer.clear()
        self.publish("q", b"a1", headers={"k": "a"})
        self.publish("q", b"b1", headers={"k": "b"})
        self.publish("q", b"none1")
        self.publish("q", b"a2", headers={"k": "a"})
        self.publish("q", b"none2")
        self.assertEqual(bodies(list(queue.entries)), [b"b1", b"none1", b"a2", b"none2"])
        self.assertEqual(
            self.queueEvents(),
            [
                ("enqueued", "q", 1),
                ("enqueued", "q", 2),
                ("enqueued", "q", 3),
                ("dequeued", "q", 1),
                ("enqueued", "q", 4),
                ("enqueued", "q", 5),
            ],
        )
        self.assertEqual(queue.messageCount, 4)
        self.getAll(queue)
        self.assertNoMemory()

    def test_keyTypes(self) -> None:
        """
        Key values of other types (numbers, bytes) are compared by value.
        """
        queue = self.lvq()
        self.publish("q", b"1a", headers={"k": 1})
        self.publish("q", b"2", headers={"k": 2})
        self.publish("q", b"1b", headers={"k": 1})
        self.assertEqual(self.getAll(queue), [b"2", b"1b"])
        self.assertNoMemory()

    def test_heldReplacedThenReleased(self) -> None:
        """
        A message a consumer holds is not replaced, but when it is given
        back after a newer value arrived, it is dropped (a dequeue), and the
        newer value is the one left.
        """
        queue = self.lvq()
        consumer, target = self.consume(queue, credit=1)
        self.publish("q", b"v1", headers={"k": "x"})
        [(_, held)] = target.deliveries
        self.publish("q", b"v2", headers={"k": "x"})
        self.assertEqual(bodies(list(queue.entries)), [b"v2"])
        queue.removeConsumer(consumer)
        self.observer.clear()
        queue.consumerSettled(consumer)
        queue.release([held])
        self.assertEqual(self.queueEvents(), [("dequeued", "q", held.id)])
        self.assertEqual(bodies(list(queue.entries)), [b"v2"])
        self.assertEqual(self.getAll(queue), [b"v2"])
        self.assertNoMemory()

    def test_heldReleasedWhileNewerHeld(self) -> None:
        """
        An old value given back while a newer value of its key is held by
        another consumer does not come back either: when the newer one is
        given back too, only it is ready.
        """
        queue = self.lvq()
        first, firstTarget = self.consume(queue, credit=1, tag="first")
        self.publish("q", b"v1", headers={"k": "x"})
        second, secondTarget = self.consume(queue, credit=1, tag="second")
        self.publish("q", b"v2", headers={"k": "x"})
        [(_, old)] = firstTarget.deliveries
        [(_, new)] = secondTarget.deliveries
        queue.removeConsumer(first)
        queue.removeConsumer(second)
        queue.consumerSettled(first)
        queue.release([old])
        queue.consumerSettled(second)
        queue.release([new])
        self.assertEqual(bodies(list(queue.entries)), [b"v2"])
        self.assertEqual(self.getAll(queue), [b"v2"])
        self.assertNoMemory()

    def test_heldReleasedAfterNewerConsumed(self) -> None:
        """
        An old value given back after a newer value of its key was
        consumed does not come back: it is stale.
        """
        queue = self.lvq()
        consumer, target = self.consume(queue, credit=1)
        self.publish("q", b"v1", headers={"k": "x"})
        [(_, old)] = target.deliveries
        self.publish("q", b"v2", headers={"k": "x"})
        self.assertEqual(self.getAll(queue), [b"v2"])
        queue.removeConsumer(consumer)
        queue.consumerSettled(consumer)
        queue.release([old])
        self.assertEqual(queue.messageCount, 0)
        self.assertNoMemory()

    def test_releasedValueBack(self) -> None:
        """
        A value given back with no newer one takes its place again and can
        itself be replaced.
        """
        queue = self.lvq()
        self.publish("q", b"v1", headers={"k": "x"})
        entry = queue.get()
        assert entry is not None
        queue.release([entry])
        self.publish("q", b"v2", headers={"k": "x"})
        self.assertEqual(self.getAll(queue), [b"v2"])
        self.assertNoMemory()

    def test_lastValueAndPriority(self) -> None:
        """
        In a last-value queue with priorities, a replacement takes the
        level of the new message, and the old one leaves its own level.
        """
        queue = self.lvq(**{"x-max-priority": 5})
        self.publish("q", b"a-low", headers={"k": "a"}, priority=1)
        self.publish("q", b"b-mid", headers={"k": "b"}, priority=3)
        self.publish("q", b"a-high", headers={"k": "a"}, priority=5)
        self.assertEqual(bodies(list(queue.entries)), [b"a-high", b"b-mid"])
        self.publish("q", b"a-low2", headers={"k": "a"}, priority=0)
        self.assertEqual(bodies(list(queue.entries)), [b"b-mid", b"a-low2"])
        self.assertEqual(queue.messageCount, 2)
        self.assertEqual(self.getAll(queue), [b"b-mid", b"a-low2"])
        self.assertNoMemory()

    def test_lastValueAndRing(self) -> None:
        """
        A replacement does not count as one more message for the length
        limit; a new key does, and drops the oldest.
        """
        queue = self.lvq(**{"x-max-length": 2})
        self.publish("q", b"a1", headers={"k": "a"})
        self.publish("q", b"b1", headers={"k": "b"})
        self.publish("q", b"a2", headers={"k": "a"})
        self.assertEqual(bodies(list(queue.entries)), [b"b1", b"a2"])
        self.publish("q", b"c1", headers={"k": "c"})
        self.assertEqual(bodies(list(queue.entries)), [b"a2", b"c1"])
        self.publish("q", b"b2", headers={"k": "b"})
        self.assertEqual(bodies(list(queue.entries)), [b"c1", b"b2"])
        self.getAll(queue)
        self.assertNoMemory()


class MessageTtlTests(PolicyTestCase):
    """
    Message TTL from C{x-message-ttl} and the per-message C{expiration}:
    expired messages are never delivered.
    """

    def test_queueTtl(self) -> None:
        """
        A message is removed when its queue's TTL is up, by a timer: a
        dequeue the observers see; the timer goes with the last message.
        """
        queue = self.declareWith("q", {"x-message-ttl": 1000})
        self.publish("q", b"m1")
        self.clock.advance(0.5)
        self.publish("q", b"m2")
        self.observer.clear()
        self.clock.advance(0.5)
        self.assertEqual(self.queueEvents(), [("dequeued", "q", 1)])
        self.assertEqual(bodies(list(queue.entries)), [b"m2"])
        self.clock.advance(0.5)
        self.assertEqual(queue.messageCount, 0)
        self.assertEqual(self.queueEvents(), [("dequeued", "q", 1), ("dequeued", "q", 2)])
        self.assertNoTimers()
        self.assertNoMemory()

    def test_notDeliveredAfterExpiry(self) -> None:
        """
        A consumer that gets credit only after a message expired never
        receives it.
        """
        queue = self.declareWith("q", {"x-message-ttl": 100})
        consumer, target = self.consume(queue, credit=0)
        self.publish("q", b"late")
        self.clock.advance(0.1)
        target.grant(1)
        queue.dispatch()
        self.assertEqual(target.deliveries, [])
        self.assertNoTimers()
        self.assertNoMemory()

    def test_deliveredBeforeExpiry(self) -> None:
        """
        A message taken in time is delivered, and a held message does not
        expire.
        """
        queue = self.declareWith("q", {"x-message-ttl": 100})
        consumer, target = self.consume(queue, credit=1)
        self.publish("q", b"quick")
        self.clock.advance(1)
        self.assertEqual(target.bodies(), [b"quick"])
        target.ack(consumer, target.deliveries[0][1])
        self.assertNoTimers()
        self.assertNoMemory()

    def test_perMessageExpiration(self) -> None:
        """
        The C{expiration} property alone gives a message its TTL.
        """
        queue = self.declareWith("q", {"x-max-priority": 1})
        self.publish("q", b"short", expiration="200")
        self.publish("q", b"forever")
        self.clock.advance(0.2)
        self.assertEqual(self.getAll(queue), [b"forever"])
        self.assertNoTimers()
        self.assertNoMemory()

    def test_perMessageExpirationPlainQueue(self) -> None:
        """
        A queue declared without any policy honours a per-message
        expiration too (the commonest use of TTL), and keeps its order and
        counts when the first such message arrives.
        """
        queue = self.vhost.declareQueue("q")
        self.publish("q", b"first")
        self.publish("q", b"short", expiration="100")
        self.publish("q", b"last")
        self.assertEqual(queue.messageCount, 3)
        entry = queue.get()
        assert entry is not None
        queue.settle(entry)
        self.clock.advance(0.1)
        self.assertEqual(queue.messageCount, 1)
        self.assertEqual(self.getAll(queue), [b"last"])
        self.assertNoTimers()
        self.assertNoMemory()

    def test_smallerTtlWins(self) -> None:
        """
        With both a queue TTL and a per-message expiration, the smaller
        one applies.
        """
        queue = self.declareWith("q", {"x-message-ttl": 500})
        self.publish("q", b"message-100", expiration="100")
        self.publish("q", b"message-900", expiration="900")
        self.clock.advance(0.1)
        self.assertEqual(bodies(list(queue.entries)), [b"message-900"])
        self.clock.advance(0.399)
        self.assertEqual(bodies(list(queue.entries)), [b"message-900"])
        self.clock.advance(0.001)
        self.assertEqual(queue.messageCount, 0)
        self.assertNoTimers()
        self.assertNoMemory()

    def test_expiredBehindHeadNotDelivered(self) -> None:
        """
        A message with a short expiration behind one with a long one stays
        counted until it reaches the head (as in RabbitMQ), but it is never
        delivered.
        """
        dlq = self.deadLetterQueue()
        queue = self.declareWith("q", {"x-dead-letter-exchange": "dlx"})
        self.publish("q", b"long", expiration="10000")
        self.publish("q", b"short", expiration="100")
        self.clock.advance(0.2)
        self.assertEqual(queue.messageCount, 2)
        self.assertEqual(self.getAll(queue), [b"long"])
        self.assertEqual(self.getAll(dlq), [b"short"])
        self.clock.advance(10)
        self.assertNoTimers()
        self.assertNoMemory()

    def test_newHeadGetsTimer(self) -> None:
        """
        A message with an expiration behind one without expires on time
        once it becomes the head (taken by basic.get or a consumer), as in
        RabbitMQ: it does not wait for the queue to be used again.
        """
        dlq = self.deadLetterQueue()
        queue = self.declareWith("q", {"x-dead-letter-exchange": "dlx"})
        self.publish("q", b"stays")
        self.publish("q", b"expires", expiration="100")
        entry = queue.get()
        assert entry is not None
        queue.settle(entry)
        self.clock.advance(0.1)
        self.assertEqual(queue.messageCount, 0)
        self.assertEqual(self.getAll(dlq), [b"expires"])
        self.publish("q", b"stays")
        self.publish("q", b"expires", expiration="100")
        consumer, target = self.consume(queue, credit=1)
        self.assertEqual(target.bodies(), [b"stays"])
        self.clock.advance(0.1)
        self.assertEqual(queue.messageCount, 0)
        self.assertEqual(self.getAll(dlq), [b"expires"])
        target.ack(consumer, target.deliveries[0][1])
        self.assertNoTimers()
        self.assertNoMemory()

    def test_newHeadAfterDropGetsTimer(self) -> None:
        """
        The same when the head goes because a ring dropped it.
        """
        queue = self.declareWith("q", {"x-max-length": 2})
        self.publish("q", b"stays")
        self.publish("q", b"expires", expiration="100")
        self.publish("q", b"pushes")
        self.assertEqual(bodies(list(queue.entries)), [b"expires", b"pushes"])
        self.clock.advance(0.1)
        self.assertEqual(bodies(list(queue.entries)), [b"pushes"])
        self.getAll(queue)
        self.assertNoTimers()
        self.assertNoMemory()

    def test_zeroTtlToWaitingConsumer(self) -> None:
        """
        A message with TTL 0 is delivered if a consumer can take it now.
        """
        queue = self.declareWith("q", {"x-message-ttl": 0})
        consumer, target = self.consume(queue, credit=1)
        self.publish("q", b"now")
        self.assertEqual(target.bodies(), [b"now"])
        target.ack(consumer, target.deliveries[0][1])
        self.assertNoTimers()
        self.assertNoMemory()

    def test_zeroTtlExpiresAtOnce(self) -> None:
        """
        A message with TTL 0 (queue TTL or expiration "0") that no consumer
        can take now expires at once, and is dead-lettered.
        """
        dlq = self.deadLetterQueue()
        queue = self.declareWith("q", {"x-message-ttl": 0, "x-dead-letter-exchange": "dlx"})
        other = self.declareWith("other", {"x-dead-letter-exchange": "dlx"})
        consumer, target = self.consume(queue, credit=0)
        self.publish("q", b"q-ttl")
        self.publish("other", b"expiration", expiration="0")
        self.assertEqual((queue.messageCount, other.messageCount), (0, 0))
        self.assertEqual(target.deliveries, [])
        self.assertEqual(self.getAll(dlq), [b"q-ttl", b"expiration"])
        self.assertNoTimers()
        self.assertNoMemory()

    def test_expiredWhileHeldThenReleased(self) -> None:
        """
        A message whose time ran out while a consumer held it is not
        delivered again when given back: it expires (and is dead-lettered)
        instead.
        """
        dlq = self.deadLetterQueue()
        queue = self.declareWith("q", {"x-dead-letter-exchange": "dlx"})
        consumer, target = self.consume(queue, credit=1)
        self.publish("q", b"slow", expiration="100")
        [(_, held)] = target.deliveries
        self.clock.advance(1)
        queue.removeConsumer(consumer)
        queue.consumerSettled(consumer)
        queue.release([held])
        self.clock.advance(0)
        self.assertEqual(queue.messageCount, 0)
        self.assertEqual(self.getAll(dlq), [b"slow"])
        self.assertNoTimers()
        self.assertNoMemory()

    def test_expiredWhileHeldQueueTtl(self) -> None:
        """
        The same with a queue TTL, and a consumer that can take the message
        when it comes back does not get it.
        """
        queue = self.declareWith("q", {"x-message-ttl": 100})
        consumer, target = self.consume(queue, credit=1)
        self.publish("q", b"slow")
        [(_, held)] = target.deliveries
        self.clock.advance(1)
        target.grant(1)
        queue.consumerSettled(consumer)
        queue.release([held])
        self.clock.advance(0)
        self.assertEqual(target.bodies(), [b"slow"])
        self.assertEqual(queue.messageCount, 0)
        self.assertNoTimers()
        self.assertNoMemory()

    def test_ttlWithPriorities(self) -> None:
        """
        Each priority level's head expires on time.
        """
        queue = self.declareWith("q", {"x-max-priority": 2})
        self.publish("q", b"high", priority=2, expiration="300")
        self.publish("q", b"low", priority=0, expiration="100")
        self.clock.advance(0.1)
        self.assertEqual(bodies(list(queue.entries)), [b"high"])
        self.clock.advance(0.2)
        self.assertEqual(queue.messageCount, 0)
        self.assertNoTimers()
        self.assertNoMemory()

    def test_expiryEventsInOrder(self) -> None:
        """
        Expiries are dequeues, seen in the order the messages expired.
        """
        self.declareWith("q", {"x-message-ttl": 100})
        self.observer.clear()
        self.publish("q", b"1")
        self.publish("q", b"2", expiration="50")
        self.publish("q", b"3")
        self.clock.advance(0.1)
        self.assertEqual(
            self.queueEvents(),
            [
                ("enqueued", "q", 1),
                ("enqueued", "q", 2),
                ("enqueued", "q", 3),
                ("dequeued", "q", 1),
                ("dequeued", "q", 2),
                ("dequeued", "q", 3),
            ],
        )
        self.assertNoTimers()
        self.assertNoMemory()

    def test_deletedQueueStopsTimer(self) -> None:
        """
        Deleting a queue with messages waiting to expire cancels its timer
        and gives their memory back.
        """
        self.declareWith("q", {"x-message-ttl": 1000})
        self.publish("q", b"m")
        self.vhost.deleteQueue("q")
        self.assertNoTimers()
        self.assertNoMemory()


class QueueExpiryTests(PolicyTestCase):
    """
    C{x-expires}: a queue unused for that long is deleted.
    """

    def test_unusedDeleted(self) -> None:
        """
        A queue nobody uses is deleted after C{x-expires} milliseconds, with
        its messages (which are not dead-lettered, as in RabbitMQ).
        """
        dlq = self.deadLetterQueue()
        self.declareWith("q", {"x-expires": 1000, "x-dead-letter-exchange": "dlx"})
        self.publish("q", b"m")
        self.clock.advance(0.999)
        self.assertIn("q", self.vhost.queues)
        self.clock.advance(0.001)
        self.assertNotIn("q", self.vhost.queues)
        self.assertIn(("queueDeleted", "q"), self.observer.events)
        self.assertEqual(dlq.messageCount, 0)
        self.assertNoTimers()
        self.assertNoMemory()

    def test_consumerKeepsAlive(self) -> None:
        """
        A queue with a consumer does not expire; the countdown starts again
        when its last consumer goes.
        """
        queue = self.declareWith("q", {"x-expires": 1000})
        consumer, _ = self.consume(queue)
        self.clock.advance(5)
        self.assertIn("q", self.vhost.queues)
        queue.removeConsumer(consumer)
        self.clock.advance(0.9)
        self.assertIn("q", self.vhost.queues)
        self.clock.advance(0.1)
        self.assertNotIn("q", self.vhost.queues)
        self.assertNoTimers()

    def test_getRestarts(self) -> None:
        """
        basic.get (even on an empty queue) restarts the countdown.
        """
        queue = self.declareWith("q", {"x-expires": 1000})
        self.clock.advance(0.9)
        self.assertIsNone(queue.get())
        self.clock.advance(0.9)
        self.assertIn("q", self.vhost.queues)
        self.clock.advance(0.1)
        self.assertNotIn("q", self.vhost.queues)
        self.assertNoTimers()

    def test_redeclareRestarts(self) -> None:
        """
        Declaring the queue again restarts the countdown.
        """
        self.declareWith("q", {"x-expires": 1000})
        self.clock.advance(0.9)
        self.declareWith("q", {"x-expires": 1000})
        self.clock.advance(0.9)
        self.assertIn("q", self.vhost.queues)
        self.clock.advance(0.1)
        self.assertNotIn("q", self.vhost.queues)
        self.assertNoTimers()

    def test_passiveDeclareRestarts(self) -> None:
        """
        A passive declare restarts the countdown too, as in RabbitMQ 3.10
        (which renews the lease on every queue.declare).
        """
        self.declareWith("q", {"x-expires": 1000})
        self.clock.advance(0.9)
        self.vhost.declareQueue("q", passive=True)
        self.clock.advance(0.9)
        self.assertIn("q", self.vhost.queues)
        self.clock.advance(0.1)
        self.assertNotIn("q", self.vhost.queues)
        self.assertNoTimers()

    def test_deleteStopsCountdown(self) -> None:
        """
        A queue deleted before it expires leaves no timer.
        """
        self.declareWith("q", {"x-expires": 1000})
        self.vhost.deleteQueue("q")
        self.assertNoTimers()

    def test_exclusiveExpires(self) -> None:
        """
        An exclusive queue expires like any other, through its owner.
        """
        owner = object()
        self.declareWith("q", {"x-expires": 10}, exclusive=True, owner=owner)
        self.clock.advance(0.01)
        self.assertNotIn("q", self.vhost.queues)
        self.assertNoTimers()


class DeadLetterTests(PolicyTestCase):
    """
    Dead-lettering: rejected, expired and dropped messages are routed on,
    with an C{x-death} header as RabbitMQ 3.10 writes it.
    """

    def rejectOne(self, queue: Queue) -> Entry:
        """
        Take the first message of C{queue} with basic.get and reject it
        without requeue.
        """
        entry = queue.get()
        assert entry is not None
        queue.reject([entry])
        return entry

    def test_rejected(self) -> None:
        """
        A message rejected without requeue goes to the dead-letter exchange
        with its own routing key, its exchange becomes the dead-letter
        exchange, and it carries one x-death entry and the x-first-death
        headers; its other headers are kept.
        """
        self.clock.advance(1_700_000_000)
        self.vhost.declareExchange("dlx", "direct")
        dlq = self.vhost.declareQueue("dlq")
        self.vhost.bindQueue("dlq", "dlx", "work")
        self.vhost.declareExchange("in", "direct")
        queue = self.declareWith("q", {"x-dead-letter-exchange": "dlx"})
        self.vhost.bindQueue("q", "in", "work")
        self.vhost.publish("in", "work", message(b"job", "work", "in", headers={"mine": 1}))
        self.rejectOne(queue)
        [dead] = list(dlq.entries)
        deadMessage = dead.message
        self.assertEqual((deadMessage.exchange, deadMessage.routingKey), ("dlx", "work"))
        headers = deadMessage.headers
        self.assertEqual(headers["mine"], 1)
        self.assertEqual(
            headers["x-death"],
            [
                {
                    "count": 1,
                    "reason": "rejected",
                    "queue": "q",
                    "time": datetime.datetime.fromtimestamp(
                        1_700_000_000, datetime.timezone.utc
                    ),
                    "exchange": "in",
                    "routing-keys": ["work"],
                }
            ],
        )
        self.assertEqual(headers["x-first-death-reason"], "rejected")
        self.assertEqual(headers["x-first-death-queue"], "q")
        self.assertEqual(headers["x-first-death-exchange"], "in")
        self.getAll(dlq)
        self.assertNoMemory()

    def test_routingKeyOverride(self) -> None:
        """
        C{x-dead-letter-routing-key} replaces the routing key; x-death keeps
        the original one.
        """
        self.vhost.declareExchange("dlx", "direct")
        dlq = self.vhost.declareQueue("dlq")
        self.vhost.bindQueue("dlq", "dlx", "dead")
        queue = self.declareWith(
            "q", {"x-dead-letter-exchange": "dlx", "x-dead-letter-routing-key": "dead"}
        )
        self.publish("q", b"m")
        self.rejectOne(queue)
        [dead] = list(dlq.entries)
        self.assertEqual(dead.message.routingKey, "dead")
        self.assertEqual(dead.message.headers["x-death"][0]["routing-keys"], ["q"])
        self.getAll(dlq)
        self.assertNoMemory()

    def test_defaultExchange(self) -> None:
        """
        The default exchange may be the dead-letter exchange, with a
        routing key naming the queue.
        """
        dlq = self.vhost.declareQueue("dlq")
        queue = self.declareWith(
            "q", {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dlq"}
        )
        self.publish("q", b"m")
        self.rejectOne(queue)
        self.assertEqual(self.getAll(dlq), [b"m"])
        self.assertNoMemory()

    def test_qpidAlternateExchangeOnQueue(self) -> None:
        """
        Qpid's C{alternate-exchange} on a queue dead-letters the same way.
        """
        dlq = self.deadLetterQueue(exchange="ae")
        queue = self.declareWith("q", {"alternate-exchange": "ae"})
        self.publish("q", b"m")
        self.rejectOne(queue)
        self.assertEqual(self.getAll(dlq), [b"m"])
        self.assertNoMemory()

    def test_expired(self) -> None:
        """
        An expired message is dead-lettered with reason C{expired}, its
        per-message expiration kept as C{original-expiration}, and without
        an expiration property of its own (so it does not expire again).
        """
        dlq = self.deadLetterQueue()
        self.declareWith("q", {"x-dead-letter-exchange": "dlx"})
        self.publish("q", b"m", expiration="100", headers={"mine": "x"})
        self.clock.advance(0.1)
        [dead] = list(dlq.entries)
        self.assertIsNone(dead.message.properties.expiration)
        self.assertIsNone(dead.message.expiration)
        self.assertIsNone(dead.expiresAt)
        death = dead.message.headers["x-death"][0]
        self.assertEqual(death["reason"], "expired")
        self.assertEqual(death["original-expiration"], "100")
        self.assertEqual(dead.message.headers["mine"], "x")
        self.getAll(dlq)
        self.assertNoTimers()
        self.assertNoMemory()

    def test_queueTtlNoOriginalExpiration(self) -> None:
        """
        A message that expired by the queue's TTL has no
        C{original-expiration}.
        """
        dlq = self.deadLetterQueue()
        self.declareWith("q", {"x-message-ttl": 10, "x-dead-letter-exchange": "dlx"})
        self.publish("q", b"m")
        self.clock.advance(0.01)
        [dead] = list(dlq.entries)
        self.assertNotIn("original-expiration", dead.message.headers["x-death"][0])
        self.getAll(dlq)
        self.assertNoTimers()
        self.assertNoMemory()

    def test_propertiesKept(self) -> None:
        """
        A dead-lettered message keeps its other properties and body.
        """
        dlq = self.deadLetterQueue()
        queue = self.declareWith("q", {"x-dead-letter-exchange": "dlx"})
        properties = commands.Basic.Properties(
            content_type="text/plain",
            correlation_id="c",
            delivery_mode=2,
            priority=4,
            message_id="m1",
        )
        self.vhost.publish("", "q", Message.build("", "q", b"payload", properties))
        self.rejectOne(queue)
        [dead] = list(dlq.entries)
        got = dead.message.properties
        self.assertEqual(
            (got.content_type, got.correlation_id, got.delivery_mode, got.priority, got.message_id),
            ("text/plain", "c", 2, 4, "m1"),
        )
        self.assertTrue(dead.message.persistent)
        self.assertEqual(dead.message.body, b"payload")
        self.getAll(dlq)
        self.assertNoMemory()

    def test_repeatedDeathCounts(self) -> None:
        """
        A message that dies again in the same queue for the same reason
        has that x-death entry's count raised and moved first; a death in
        another queue adds an entry; the x-first-death headers stay those
        of the first death.

        Here C{q} dead-letters rejected messages to C{retry}, whose TTL
        sends them back to C{q}: a rejection in the loop, so no cycle.
        """
        self.vhost.declareExchange("to-retry", "fanout")
        self.vhost.declareExchange("back", "fanout")
        queue = self.declareWith("q", {"x-dead-letter-exchange": "to-retry"})
        retry = self.declareWith("retry", {"x-message-ttl": 10, "x-dead-letter-exchange": "back"})
        self.vhost.bindQueue("retry", "to-retry", "")
        self.vhost.bindQueue("q", "back", "")
        self.publish("q", b"m")
        self.rejectOne(queue)
        self.assertEqual(retry.messageCount, 1)
        self.clock.advance(0.01)
        self.rejectOne(queue)
        self.clock.advance(0.01)
        [entry] = list(queue.entries)
        headers = entry.message.headers
        self.assertEqual(
            [(death["reason"], death["queue"], death["count"]) for death in headers["x-death"]],
            [("expired", "retry", 2), ("rejected", "q", 2)],
        )
        self.assertEqual(headers["x-first-death-reason"], "rejected")
        self.assertEqual(headers["x-first-death-queue"], "q")
        self.assertEqual(headers["x-first-death-exchange"], "")
        self.getAll(queue)
        self.assertNoTimers()
        self.assertNoMemory()

    def test_publishersXDeath(self) -> None:
        """
        An x-death header a publisher sent is read as RabbitMQ reads it: an
        array is carried on (and counted in), anything else is replaced,
        and a count that is not a number counts as one; none of it stops
        the dead-lettering.
        """
        dlq = self.deadLetterQueue()
        queue = self.declareWith("q", {"x-dead-letter-exchange": "dlx"})
        cases: list[tuple[Any, list[tuple[Any, Any]]]] = [
            (5, [("q", 1)]),
            ("text", [("q", 1)]),
            ({"queue": "q"}, [("q", 1)]),
            ([{"queue": "q", "reason": "rejected", "count": "many"}], [("q", 2)]),
            ([{"queue": "other", "reason": "expired", "count": 4}], [("q", 1), ("other", 4)]),
        ]
        for xDeath, expected in cases:
            self.publish("q", b"m", headers={"x-death": xDeath})
            self.rejectOne(queue)
            [dead] = list(dlq.entries)
            deaths = dead.message.headers["x-death"]
            self.assertEqual(
                [(death["queue"], death["count"]) for death in deaths], expected, repr(xDeath)
            )
            self.getAll(dlq)
        self.assertNoMemory()

    def test_missingExchangeDrops(self) -> None:
        """
        A dead-letter exchange that does not exist drops the message.
        """
        queue = self.declareWith("q", {"x-dead-letter-exchange": "nowhere"})
        self.publish("q", b"m")
        self.rejectOne(queue)
        self.assertNoMemory()

    def test_noDeadLetterExchangeDrops(self) -> None:
        """
        Without a dead-letter exchange, a rejected message is gone.
        """
        queue = self.declareWith("q", {})
        self.publish("q", b"m")
        self.rejectOne(queue)
        self.assertEqual(queue.messageCount, 0)
        self.assertNoMemory()

    def test_selfExpiryCycleDropped(self) -> None:
        """
        A message that expires back into its own queue is dropped the
        second time round (a cycle with no rejection, as RabbitMQ does).
        """
        self.vhost.declareExchange("dlx", "fanout")
        queue = self.declareWith("q", {"x-message-ttl": 10, "x-dead-letter-exchange": "dlx"})
        self.vhost.bindQueue("q", "dlx", "")
        self.publish("q", b"m")
        self.clock.advance(0.01)
        self.clock.advance(0.01)
        self.clock.advance(0.01)
        self.assertEqual(queue.messageCount, 0)
        self.assertNoTimers()
        self.assertNoMemory()

    def test_twoQueueCycleDropped(self) -> None:
        """
        Two queues that dead-letter into each other on expiry (or on
        overflow) do not pass a message back and forth for ever: it is
        dropped when it would return to a queue it died in without a
        rejection on the way.
        """
        self.vhost.declareExchange("to-a", "fanout")
        self.vhost.declareExchange("to-b", "fanout")
        a = self.declareWith("a", {"x-message-ttl": 0, "x-dead-letter-exchange": "to-b"})
        b = self.declareWith("b", {"x-max-length": 0, "x-dead-letter-exchange": "to-a"})
        self.vhost.bindQueue("a", "to-a", "")
        self.vhost.bindQueue("b", "to-b", "")
        watcher = self.vhost.declareQueue("watcher")
        self.vhost.bindQueue("watcher", "to-a", "")
        self.publish("a", b"m")
        self.assertEqual((a.messageCount, b.messageCount), (0, 0))
        [seen] = list(watcher.entries)
        self.assertEqual(
            [(d["queue"], d["reason"]) for d in seen.message.headers["x-death"]],
            [("b", "maxlen"), ("a", "expired")],
        )
        self.getAll(watcher)
        self.assertNoTimers()
        self.assertNoMemory()

    def test_rejectedCycleAllowed(self) -> None:
        """
        A message rejected back into its own queue is not a cycle: it comes
        back, each time with its count raised.
        """
        self.vhost.declareExchange("dlx", "fanout")
        queue = self.declareWith("q", {"x-dead-letter-exchange": "dlx"})
        self.vhost.bindQueue("q", "dlx", "")
        self.publish("q", b"m")
        for _ in range(3):
            self.rejectOne(queue)
        [entry] = list(queue.entries)
        self.assertEqual(entry.message.headers["x-death"][0]["count"], 3)
        self.getAll(queue)
        self.assertNoMemory()

    def test_ttlDeadLetterRing(self) -> None:
        """
        TTL, dead-lettering and a ring together: a drop is dead-lettered
        with reason C{maxlen} at once, the others with reason C{expired}
        when their time is up, in order; nothing is left behind.
        """
        dlq = self.deadLetterQueue()
        queue = self.declareWith(
            "q",
            {"x-message-ttl": 1000, "x-max-length": 2, "x-dead-letter-exchange": "dlx"},
        )
        for body in [b"1", b"2", b"3"]:
            self.publish("q", body)
            self.clock.advance(0.1)
        self.assertEqual(bodies(list(queue.entries)), [b"2", b"3"])
        self.assertEqual(bodies(list(dlq.entries)), [b"1"])
        self.clock.advance(1)
        self.assertEqual(queue.messageCount, 0)
        entries = list(dlq.entries)
        self.assertEqual(bodies(entries), [b"1", b"2", b"3"])
        self.assertEqual(
            [entry.message.headers["x-death"][0]["reason"] for entry in entries],
            ["maxlen", "expired", "expired"],
        )
        self.getAll(dlq)
        self.assertNoTimers()
        self.assertNoMemory()

    def test_dropAndExpiryEventsInOrder(self) -> None:
        """
        The observers see a drop, an expiry and the dead-lettered copies'
        enqueues in the order they happen.
        """
        self.deadLetterQueue()
        self.declareWith(
            "q", {"x-message-ttl": 100, "x-max-length": 1, "x-dead-letter-exchange": "dlx"}
        )
        self.observer.clear()
        self.publish("q", b"1")
        self.publish("q", b"2")
        self.clock.advance(0.1)
        self.assertEqual(
            self.queueEvents(),
            [
                ("enqueued", "q", 1),
                ("enqueued", "q", 2),
                ("dequeued", "q", 1),
                ("enqueued", "dlq", 1),
                ("dequeued", "q", 2),
                ("enqueued", "dlq", 2),
            ],
        )
        self.getAll(self.vhost.queues["dlq"])
        self.assertNoTimers()
        self.assertNoMemory()


class AlternateExchangeTests(PolicyTestCase):
    """
    C{alternate-exchange} on an exchange: unroutable messages go there.
    """

    def test_unroutable(self) -> None:
        """
        A message that no binding matches goes to the alternate exchange's
        queues; one that matches does not.
        """
        self.vhost.declareExchange("ae", "fanout")
        caught = self.vhost.declareQueue("caught")
        self.vhost.bindQueue("caught", "ae", "")
        self.vhost.declareExchange("x", "direct", arguments={"alternate-exchange": "ae"})
        normal = self.vhost.declareQueue("normal")
        self.vhost.bindQueue("normal", "x", "known")
        self.vhost.publish("x", "known", message(b"routed", "known", "x"))
        self.vhost.publish("x", "other", message(b"unroutable", "other", "x"))
        self.assertEqual(self.getAll(normal), [b"routed"])
        [entry] = list(caught.entries)
        self.assertEqual(entry.message.body, b"unroutable")
        self.assertEqual(
            (entry.message.exchange, entry.message.routingKey), ("x", "other")
        )
        self.getAll(caught)
        self.assertNoMemory()

    def test_chain(self) -> None:
        """
        An alternate exchange that cannot route either hands on to its own
        alternate exchange.
        """
        self.vhost.declareExchange("last", "fanout")
        caught = self.vhost.declareQueue("caught")
        self.vhost.bindQueue("caught", "last", "")
        self.vhost.declareExchange("middle", "direct", arguments={"alternate-exchange": "last"})
        self.vhost.declareExchange("x", "topic", arguments={"alternate-exchange": "middle"})
        queues = self.vhost.publish("x", "a.b", message(b"m", "a.b", "x"))
        self.assertEqual(queues, [caught])
        self.assertEqual(self.getAll(caught), [b"m"])
        self.assertNoMemory()

    def test_loop(self) -> None:
        """
        Alternate exchanges that name each other stop after one round: the
        message is dropped.
        """
        self.vhost.declareExchange("x", "direct", arguments={"alternate-exchange": "y"})
        self.vhost.declareExchange("y", "direct", arguments={"alternate-exchange": "x"})
        self.vhost.declareExchange("z", "direct", arguments={"alternate-exchange": "z"})
        self.assertEqual(self.vhost.publish("x", "k", message(b"m", "k", "x")), [])
        self.assertEqual(self.vhost.publish("z", "k", message(b"m", "k", "z")), [])
        self.assertNoMemory()

    def test_loopThroughExchangeBinding(self) -> None:
        """
        A loop through an exchange-to-exchange binding of the alternate
        exchange ends too.
        """
        self.vhost.declareExchange("x", "direct", arguments={"alternate-exchange": "ae"})
        self.vhost.declareExchange("ae", "fanout")
        self.vhost.bindExchange("x", "ae", "")
        self.assertEqual(self.vhost.publish("x", "k", message(b"m", "k", "x")), [])

    def test_throughExchangeBinding(self) -> None:
        """
        An alternate exchange's exchange-to-exchange bindings are followed.
        """
        self.vhost.declareExchange("inner", "fanout")
        caught = self.vhost.declareQueue("caught")
        self.vhost.bindQueue("caught", "inner", "")
        self.vhost.declareExchange("ae", "fanout")
        self.vhost.bindExchange("inner", "ae", "")
        self.vhost.declareExchange("x", "direct", arguments={"alternate-exchange": "ae"})
        self.assertEqual(self.vhost.publish("x", "k", message(b"m", "k", "x")), [caught])
        self.getAll(caught)
        self.assertNoMemory()

    def test_missing(self) -> None:
        """
        An alternate exchange that does not exist drops the message.
        """
        self.vhost.declareExchange("x", "direct", arguments={"alternate-exchange": "gone"})
        self.assertEqual(self.vhost.publish("x", "k", message(b"m", "k", "x")), [])

    def test_withQueuePolicies(self) -> None:
        """
        A message reaching a queue through an alternate exchange gets that
        queue's policies (here a ring).
        """
        self.vhost.declareExchange("ae", "fanout")
        caught = self.declareWith("caught", {"x-max-length": 1})
        self.vhost.bindQueue("caught", "ae", "")
        self.vhost.declareExchange("x", "direct", arguments={"alternate-exchange": "ae"})
        for body in [b"1", b"2"]:
            self.vhost.publish("x", "k", message(body, "k", "x"))
        self.assertEqual(self.getAll(caught), [b"2"])
        self.assertNoMemory()


class ExclusiveAutoDeleteTests(PolicyTestCase):
    """
    Exclusive and auto-delete queues, with RabbitMQ's semantics.
    """

    def test_exclusiveLocked(self) -> None:
        """
        Another connection cannot declare, use, bind, purge or delete an
        exclusive queue: 405 RESOURCE_LOCKED.
        """
        owner, other = object(), object()
        self.vhost.declareQueue("q", exclusive=True, owner=owner)
        self.vhost.declareExchange("x", "direct")
        for attempt in [
            lambda: self.vhost.declareQueue("q", exclusive=True, owner=other),
            lambda: self.vhost.declareQueue("q", passive=True, owner=other),
            lambda: self.vhost.queue("q", owner=other),
            lambda: self.vhost.bindQueue("q", "x", "k", owner=other),
            lambda: self.vhost.purgeQueue("q", owner=other),
            lambda: self.vhost.deleteQueue("q", owner=other),
        ]:
            with self.assertRaises(ResourceLocked) as caught:
                attempt()
            self.assertEqual(caught.exception.replyCode, 405)
            self.assertIn("RESOURCE_LOCKED", caught.exception.replyText)
        self.assertIs(self.vhost.queue("q", owner=owner).owner, owner)

    def test_exclusiveGoesWithConnection(self) -> None:
        """
        An exclusive queue is deleted, with its messages, when its owner's
        connection closes.
        """
        owner = object()
        self.vhost.declareQueue("q", exclusive=True, owner=owner)
        self.publish("q", b"m")
        self.vhost.connectionClosed(owner)
        self.assertNotIn("q", self.vhost.queues)
        self.assertNoMemory()

    def test_autoDelete(self) -> None:
        """
        An auto-delete queue stays until it had a consumer, and goes when
        its last consumer does; the messages consumers held are freed when
        they are given back.
        """
        queue = self.vhost.declareQueue("q", autoDelete=True)
        self.publish("q", b"m1")
        self.publish("q", b"m2")
        first, firstTarget = self.consume(queue, credit=1, tag="a")
        second, _ = self.consume(queue, credit=0, tag="b")
        queue.removeConsumer(first)
        self.assertIn("q", self.vhost.queues)
        queue.removeConsumer(second)
        self.assertNotIn("q", self.vhost.queues)
        queue.consumerSettled(first)
        queue.release([entry for _, entry in firstTarget.deliveries])
        self.assertNoMemory()


class MemoryTests(PolicyTestCase):
    """
    The memory accounting returns to zero however messages leave: consumed,
    dropped, replaced, expired, refused, purged or deleted.
    """

    def test_everyWayOut(self) -> None:
        """
        Fill queues with every policy and empty them every way.
        """
        self.deadLetterQueue()
        self.declareWith("ring", {"x-max-length": 1, "x-dead-letter-exchange": "dlx"})
        self.declareWith("lvq", {"qpid.last_value_queue_key": "k"})
        self.declareWith("ttl", {"x-message-ttl": 50, "x-dead-letter-exchange": "dlx"})
        self.declareWith("reject", {"x-max-length": 1, "x-overflow": "reject-publish"})
        self.declareWith("prio", {"x-max-priority": 3})
        for index in range(5):
            body = b"x" * (index + 1)
            self.publish("ring", body)
            self.publish("lvq", body, headers={"k": "same"})
            self.publish("ttl", body)
            try:
                self.publish("reject", body)
            except QueueFull:
                pass
            self.publish("prio", body, priority=index)
        self.assertTrue(self.vhost.resources.used > 0)
        self.clock.advance(0.05)
        self.vhost.purgeQueue("prio")
        self.vhost.deleteQueue("reject")
        lvq = self.vhost.queues["lvq"]
        self.assertEqual(self.getAll(lvq), [b"xxxxx"])
        self.vhost.deleteQueue("ring")
        self.assertEqual(self.vhost.queues["dlq"].messageCount, 9)
        self.vhost.deleteQueue("dlq")
        self.assertNoTimers()
        self.assertNoMemory()
