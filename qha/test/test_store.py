"""
Tests for L{qha.store.journal}, the durable store, and for C{qha-admin
store-info}, which reads a store with no broker running.

One shared mixin (L{StoreTestsMixin}) runs against both journals, the
embedded L{FileJournal} and the L{MemoryJournal}. A "restart" is what a
broker process does when it starts: a new L{VirtualHost} and a new L{Store}
on the same journal, recovered, then every queue promoted as a standalone
broker does (see L{qha.tap.makeService}). The old process is abandoned as a
crash would leave it: nothing is flushed or closed on its behalf beyond
what it already wrote (its file is closed, which writes nothing, since
every append is flushed).

Everything is synchronous: time is a L{Clock}, one C{clock.advance(0)} is
one reactor turn (the store's flush), and no timer is left at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import struct
import zlib
from typing import Any

from pamqp import commands
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import Logger, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase


from qha.admin.cli import parseArguments, run
from qha.broker.message import Message
from qha.broker.queue import Consumer, Queue, QueueFull
from qha.broker.vhost import VirtualHost
from qha.changes import events as ev
from qha.store.journal import (
    PROGRESS_EVERY,
    MAGIC,
    FileJournal,
    Journal,
    MemoryJournal,
    Store,
    StoreCorrupt,
    encodeRecord,
    recordParts,
    storeInfo,
)
from qha.changes.scoped import observe, unobserve
from qha.test.support import persistentMessage as message, writeEnqueued
from qha.testing import RecordingTarget


def bodies(queue: Queue) -> list[bytes]:
    """
    The bodies of the ready entries of C{queue}, in delivery order.
    """
    return [entry.message.body for entry in queue.readyEntries()]


def recordOffsets(data: bytes) -> list[tuple[int, int]]:
    """
    Where each record of a journal file starts and ends, read from its
    length fields (the records are not checked).
    """
    offsets = []
    offset = len(MAGIC)
    while offset + 8 <= len(data):
        (length,) = struct.unpack_from(">I", data, offset)
        end = offset + 8 + length
        offsets.append((offset, end))
        offset = end
    return offsets


class StoreTestsMixin:
    """
    The behaviour every journal gives the store. A subclass says how to
    open the journal (L{openJournal}); the same journal (the same file, or
    the same memory) is opened again at each restart.

    @ivar clock: the current broker process's reactor.
    @ivar vhost: the current broker process's virtual host.
    @ivar store: the current broker process's store.
    @ivar recovered: what the last recovery reported.
    """

    clock: Clock
    vhost: VirtualHost
    store: Store
    recovered: dict[str, Any]

    # Provided by SynchronousTestCase.
    addCleanup: Any
    assertEqual: Any
    assertIn: Any
    assertNotIn: Any
    assertIs: Any
    assertIsNone: Any
    assertIsNot: Any
    assertTrue: Any
    assertFalse: Any
    assertLess: Any
    assertGreater: Any

    def openJournal(self) -> Journal:
        """
        The journal under test, opened anew (a new broker process).
        """
        raise NotImplementedError()

    def setUp(self) -> None:
        """
        Start the first broker process on an empty journal; at the end,
        its store is closed and no timer may be left on its clock.
        """
        self.clock = Clock()
        self.start()
        self.addCleanup(self._finish)

    def _finish(self) -> None:
        """
        Close the last store and check that nothing is left scheduled.
        """
        self.store.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def start(self) -> None:
        """
        Start a broker process: a virtual host on C{self.clock}, a store
        on the journal, recovered, and every queue promoted as a
        standalone broker does.
        """
        self.vhost = VirtualHost(clock=self.clock)
        self.store = Store(self.openJournal(), self.clock)
        self.recovered = self.store.recover(self.vhost)
        for queue in list(self.vhost.queues.values()):
            queue.promoted(self.store.epoch)

    def restart(self, elapsed: float = 0.0) -> None:
        """
        End this turn (the store flushes, as a broker does before it
        confirms), let the process die without a clean stop, and start a
        new one C{elapsed} seconds later.
        """
        self.clock.advance(0)
        self.crash(elapsed)

    def crash(self, elapsed: float = 0.0) -> None:
        """
        Abandon the current process as SIGKILL would, whatever its store
        has not flushed yet, and start a new one C{elapsed} seconds later.
        Its timers die with it.
        """
        self.store.journal.close()
        now = self.clock.seconds()
        self.clock = Clock()
        self.clock.advance(now + elapsed)
        self.start()

    def consume(self, queue: Queue, credit: int | None = None) -> RecordingTarget:
        """
        Subscribe a consumer that acknowledges nothing by itself and takes
        at most C{credit} messages.
        """
        target = RecordingTarget(credit)
        queue.addConsumer(Consumer(queue, "ctag", target))
        return target

    # What is kept

    def test_durableStateSurvives(self) -> None:
        """
        A durable exchange, a durable queue, the binding between them and
        persistent messages on the queue come back after a restart, the
        messages in order and the binding still routing.
        """
        self.vhost.declareExchange("orders", "direct", durable=True)
        self.vhost.declareExchange("audit", "fanout", durable=True)
        self.vhost.declareQueue("work", durable=True, arguments={"x-custom": "kept"})
        self.vhost.bindQueue("work", "orders", "new")
        self.vhost.bindQueue("work", "amq.topic", "work.#")
        self.vhost.bindExchange("audit", "orders", "new")
        for index in range(3):
            self.vhost.publish("orders", "new", message(b"m%d" % index, "new", "orders"))
        self.restart()
        self.assertEqual(self.recovered["queues"], 1)
        self.assertEqual(self.recovered["messages"], 3)
        orders = self.vhost.exchanges["orders"]
        self.assertTrue(orders.durable)
        self.assertEqual(orders.type, "direct")
        self.assertEqual(self.vhost.exchanges["audit"].type, "fanout")
        queue = self.vhost.queues["work"]
        self.assertTrue(queue.durable)
        self.assertEqual(queue.arguments, {"x-custom": "kept"})
        self.assertEqual(bodies(queue), [b"m0", b"m1", b"m2"])
        self.assertEqual(
            [entry.redelivered for entry in queue.readyEntries()], [False, False, False]
        )
        self.assertEqual(
            [q.name for q in self.vhost.publish("orders", "new", message(b"m3", "new"))],
            ["work"],
        )
        self.assertEqual(
            [q.name for q in self.vhost.publish("amq.topic", "work.x", message(b"m4"))],
            ["work"],
        )
        self.assertEqual(
            sorted(b.source.name for b in self.vhost.exchanges["audit"].inbound), ["orders"]
        )
        self.restart()
        self.assertEqual(bodies(self.vhost.queues["work"]), [b"m0", b"m1", b"m2", b"m3", b"m4"])

    def test_newMessagesAfterRecovery(self) -> None:
        """
        Messages published after a recovery take ids after the recovered
        ones, so that they come back after them, in order, at the next
        restart.
        """
        self.vhost.declareQueue("q", durable=True)
        self.vhost.publish("", "q", message(b"before", "q"))
        self.restart()
        self.vhost.publish("", "q", message(b"after", "q"))
        self.restart()
        self.assertEqual(bodies(self.vhost.queues["q"]), [b"before", b"after"])

    def test_transientStateIsNotKept(self) -> None:
        """
        A transient queue, a transient message on a durable queue, a
        persistent message on a transient queue, an exclusive durable queue,
        a transient exchange and the bindings of transient things do not
        come back; nothing of them is even written.
        """
        self.vhost.declareQueue("durable", durable=True)
        self.vhost.declareQueue("transient")
        self.vhost.declareQueue("exclusive", durable=True, exclusive=True, owner=object())
        self.vhost.declareExchange("fleeting", "fanout")
        self.vhost.bindQueue("durable", "fleeting", "")
        self.vhost.bindQueue("transient", "amq.direct", "t")
        self.vhost.publish("", "durable", message(b"transient message", "durable", persistent=False))
        self.vhost.publish("", "durable", message(b"persistent message", "durable"))
        self.vhost.publish("", "transient", message(b"persistent on transient", "transient"))
        exclusive = self.vhost.queues["exclusive"]
        exclusive.enqueue(message(b"on exclusive", "exclusive"))
        self.restart()
        self.assertEqual(sorted(self.vhost.queues), ["durable"])
        self.assertNotIn("fleeting", self.vhost.exchanges)
        self.assertEqual(bodies(self.vhost.queues["durable"]), [b"persistent message"])
        self.assertEqual(self.vhost.exchanges["amq.direct"].bindings, {})

    def test_transientPublishesDoNotWrite(self) -> None:
        """
        Publishing transient messages, or persistent ones to transient
        queues, writes no record and no flush.
        """
        self.vhost.declareQueue("durable", durable=True)
        self.vhost.declareQueue("transient")
        self.clock.advance(0)
        syncs = self.store.journal.syncs  # type: ignore[attr-defined]
        for index in range(10):
            self.vhost.publish("", "durable", message(b"t", "durable", persistent=False))
            self.vhost.publish("", "transient", message(b"p", "transient"))
        self.clock.advance(0)
        self.assertEqual(self.store.journal.syncs, syncs)  # type: ignore[attr-defined]

    # Acknowledgements

    def test_acknowledgedDoNotComeBack(self) -> None:
        """
        Messages acknowledged (by basic.get, by a consumer's ack, by a
        no-ack delivery) or rejected do not come back after a restart.
        """
        queue = self.vhost.declareQueue("q", durable=True)
        for index in range(8):
            self.vhost.publish("", "q", message(b"m%d" % index, "q"))
        self.clock.advance(0)
        for _ in range(2):
            entry = queue.get()
            assert entry is not None
            queue.settle(entry)
        target = self.consume(queue, credit=2)
        for consumer, entry in list(target.deliveries):
            target.ack(consumer, entry)
        consumer = queue.consumers[0]
        queue.removeConsumer(consumer)
        noAck = Consumer(queue, "noack", RecordingTarget(1), noAck=True)
        queue.addConsumer(noAck)
        queue.removeConsumer(noAck)
        rejected = queue.get()
        assert rejected is not None
        queue.reject([rejected])
        self.restart()
        self.assertEqual(bodies(self.vhost.queues["q"]), [b"m6", b"m7"])
        self.assertEqual(self.recovered["messages"], 2)

    def test_heldComeBackRedelivered(self) -> None:
        """
        A message delivered and not acknowledged before the crash comes
        back in its place, marked redelivered; the others do not carry the
        mark.
        """
        queue = self.vhost.declareQueue("q", durable=True)
        for index in range(4):
            self.vhost.publish("", "q", message(b"m%d" % index, "q"))
        target = self.consume(queue, credit=3)
        consumer, first = target.deliveries[0]
        target.ack(consumer, first)
        self.assertEqual(target.bodies(), [b"m0", b"m1", b"m2"])
        self.restart()
        queue = self.vhost.queues["q"]
        self.assertEqual(
            [(entry.message.body, entry.redelivered) for entry in queue.readyEntries()],
            [(b"m1", True), (b"m2", True), (b"m3", False)],
        )
        self.assertEqual(queue.held, {})
        target = self.consume(queue)
        self.assertEqual(target.bodies(), [b"m1", b"m2", b"m3"])
        queue.removeConsumer(queue.consumers[0])

    def test_releasedComeBackInPlace(self) -> None:
        """
        A message delivered and given back (basic.nack with requeue) before
        the crash comes back in its place, marked redelivered.
        """
        queue = self.vhost.declareQueue("q", durable=True)
        for index in range(3):
            self.vhost.publish("", "q", message(b"m%d" % index, "q"))
        entry = queue.get()
        assert entry is not None
        queue.release([entry])
        self.restart()
        self.assertEqual(
            [(e.message.body, e.redelivered) for e in self.vhost.queues["q"].readyEntries()],
            [(b"m0", True), (b"m1", False), (b"m2", False)],
        )

    # Purge and delete

    def test_purge(self) -> None:
        """
        A purge is kept: the purged messages do not come back, a message a
        consumer held during the purge does (redelivered), and so do
        messages published after it.
        """
        queue = self.vhost.declareQueue("q", durable=True)
        for index in range(3):
            self.vhost.publish("", "q", message(b"m%d" % index, "q"))
        held = queue.get()
        assert held is not None
        self.assertEqual(queue.purge(), 2)
        self.vhost.publish("", "q", message(b"after", "q"))
        self.restart()
        self.assertEqual(
            [(e.message.body, e.redelivered) for e in self.vhost.queues["q"].readyEntries()],
            [(b"m0", True), (b"after", False)],
        )

    def test_deleteQueue(self) -> None:
        """
        A deleted queue does not come back; one declared again under the
        same name comes back as the new one, with only its own messages and
        arguments.
        """
        self.vhost.declareQueue("gone", durable=True)
        self.vhost.publish("", "gone", message(b"old", "gone"))
        self.vhost.declareQueue("again", durable=True, arguments={"x-max-length": 10})
        self.vhost.publish("", "again", message(b"old", "again"))
        self.vhost.deleteQueue("gone")
        self.vhost.deleteQueue("again")
        self.vhost.declareQueue("again", durable=True)
        self.vhost.publish("", "again", message(b"new", "again"))
        self.restart()
        self.assertEqual(sorted(self.vhost.queues), ["again"])
        self.assertEqual(self.vhost.queues["again"].arguments, {})
        self.assertEqual(bodies(self.vhost.queues["again"]), [b"new"])

    def test_deleteExchangeAndUnbind(self) -> None:
        """
        A deleted exchange and a removed binding do not come back.
        """
        self.vhost.declareQueue("q", durable=True)
        self.vhost.declareExchange("gone", "fanout", durable=True)
        self.vhost.declareExchange("kept", "direct", durable=True)
        self.vhost.bindQueue("q", "gone", "")
        self.vhost.bindQueue("q", "kept", "a")
        self.vhost.bindQueue("q", "kept", "b")
        self.vhost.unbindQueue("q", "kept", "a")
        self.vhost.deleteExchange("gone")
        self.restart()
        self.assertNotIn("gone", self.vhost.exchanges)
        self.assertEqual(
            sorted(b.routingKey for b in self.vhost.exchanges["kept"].bindings.values()), ["b"]
        )

    # Policies

    def test_priorities(self) -> None:
        """
        A priority queue's messages come back in their priority order.
        """
        self.vhost.declareQueue("p", durable=True, arguments={"x-max-priority": 5})
        for body, priority in [(b"low", 1), (b"high", 5), (b"mid", 3), (b"high2", 5)]:
            self.vhost.publish("", "p", message(body, "p", priority=priority))
        self.restart()
        queue = self.vhost.queues["p"]
        self.assertEqual(bodies(queue), [b"high", b"high2", b"mid", b"low"])
        target = self.consume(queue)
        self.assertEqual(target.bodies(), [b"high", b"high2", b"mid", b"low"])
        queue.removeConsumer(queue.consumers[0])

    def test_lastValue(self) -> None:
        """
        A last-value queue comes back with the last value of each key, and
        goes on replacing them: its keys are kept.
        """
        self.vhost.declareQueue(
            "lvq", durable=True, arguments={"qpid.last_value_queue_key": "key"}
        )
        for body, key in [(b"a1", "a"), (b"b1", "b"), (b"a2", "a")]:
            self.vhost.publish("", "lvq", message(body, "lvq", headers={"key": key}))
        self.restart()
        queue = self.vhost.queues["lvq"]
        self.assertEqual(bodies(queue), [b"b1", b"a2"])
        self.vhost.publish("", "lvq", message(b"b2", "lvq", headers={"key": "b"}))
        self.assertEqual(bodies(queue), [b"a2", b"b2"])
        self.restart()
        self.assertEqual(bodies(self.vhost.queues["lvq"]), [b"a2", b"b2"])

    def test_ttlDeadlineKept(self) -> None:
        """
        A message with a TTL keeps its deadline across a restart: it
        expires at the time it would have without the restart, not a full
        TTL after recovery.
        """
        self.vhost.declareQueue("ttl", durable=True, arguments={"x-message-ttl": 10000})
        self.clock.advance(1)
        self.vhost.publish("", "ttl", message(b"expires at 11", "ttl"))
        self.clock.advance(2)
        self.vhost.publish("", "ttl", message(b"expires at 13", "ttl"))
        self.restart(elapsed=6)
        self.assertEqual(self.clock.seconds(), 9)
        queue = self.vhost.queues["ttl"]
        self.assertEqual(bodies(queue), [b"expires at 11", b"expires at 13"])
        self.clock.advance(1.9)
        self.assertEqual(bodies(queue), [b"expires at 11", b"expires at 13"])
        self.clock.advance(0.1)
        self.assertEqual(bodies(queue), [b"expires at 13"])
        self.clock.advance(2)
        self.assertEqual(bodies(queue), [])
        self.restart()
        self.assertEqual(bodies(self.vhost.queues["ttl"]), [])

    def test_ttlExpiredWhileDown(self) -> None:
        """
        A message whose deadline passed while the broker was down expires
        as the broker recovers, and its expiry is kept.
        """
        self.vhost.declareQueue("ttl", durable=True, arguments={"x-message-ttl": 5000})
        self.vhost.publish("", "ttl", message(b"m", "ttl"))
        self.vhost.publish("", "ttl", message(b"per-message", "ttl", expiration="60000"))
        self.restart(elapsed=30)
        self.assertEqual(bodies(self.vhost.queues["ttl"]), [])
        self.restart()
        self.assertEqual(bodies(self.vhost.queues["ttl"]), [])

    def test_perMessageExpiration(self) -> None:
        """
        A per-message expiration on a queue without TTL keeps its deadline
        too.
        """
        self.vhost.declareQueue("q", durable=True)
        self.vhost.publish("", "q", message(b"short", "q", expiration="4000"))
        self.vhost.publish("", "q", message(b"forever", "q"))
        self.restart(elapsed=3)
        queue = self.vhost.queues["q"]
        self.assertEqual(bodies(queue), [b"short", b"forever"])
        self.clock.advance(1)
        self.assertEqual(bodies(queue), [b"forever"])

    def test_ringLimit(self) -> None:
        """
        A ring queue comes back with the messages it kept, and goes on
        dropping its oldest at its limit.
        """
        self.vhost.declareQueue("ring", durable=True, arguments={"x-max-length": 3})
        for index in range(5):
            self.vhost.publish("", "ring", message(b"m%d" % index, "ring"))
        self.restart()
        queue = self.vhost.queues["ring"]
        self.assertEqual(bodies(queue), [b"m2", b"m3", b"m4"])
        self.vhost.publish("", "ring", message(b"m5", "ring"))
        self.assertEqual(bodies(queue), [b"m3", b"m4", b"m5"])
        self.restart()
        self.assertEqual(bodies(self.vhost.queues["ring"]), [b"m3", b"m4", b"m5"])

    def test_rejectPublishLimit(self) -> None:
        """
        A queue that refuses publishes when full is still full after a
        restart.
        """
        self.vhost.declareQueue(
            "full", durable=True, arguments={"x-max-length": 2, "x-overflow": "reject-publish"}
        )
        for index in range(2):
            self.vhost.publish("", "full", message(b"m%d" % index, "full"))
        self.restart()
        exception = None
        try:
            self.vhost.publish("", "full", message(b"refused", "full"))
        except QueueFull as error:
            exception = error
        self.assertIsNot(exception, None)
        self.assertEqual(bodies(self.vhost.queues["full"]), [b"m0", b"m1"])

    # Writing: group commit and confirms

    def test_groupCommit(self) -> None:
        """
        Every persistent publish of one reactor turn goes into one record,
        appended and flushed once.
        """
        queue = self.vhost.declareQueue("q", durable=True)
        self.clock.advance(0)
        journal: Any = self.store.journal
        syncs = journal.syncs
        records = self.store.records
        for index in range(500):
            self.vhost.publish("", "q", message(b"m%d" % index, "q"))
        self.assertEqual(journal.syncs, syncs)
        self.clock.advance(0)
        self.assertEqual(journal.syncs, syncs + 1)
        self.assertEqual(self.store.records, records + 1)
        for _ in range(500):
            entry = queue.get()
            assert entry is not None
            queue.settle(entry)
        self.clock.advance(0)
        self.assertEqual(journal.syncs, syncs + 2)
        self.clock.advance(0)
        self.assertEqual(journal.syncs, syncs + 2)

    def test_confirmWaitsForFlush(self) -> None:
        """
        The completion L{Store.hold} gives a persistent publish to a durable
        queue is done only once the turn's record is flushed, and every
        publish of the turn shares it.
        """
        queue = self.vhost.declareQueue("q", durable=True)
        self.clock.advance(0)
        journal: Any = self.store.journal
        syncs = journal.syncs
        first = message(b"first", "q")
        self.vhost.publish("", "q", first)
        completion = self.store.hold([queue], first)
        assert completion is not None
        confirmed: list[str] = []
        completion.addCallback(lambda: confirmed.append("first"))
        second = message(b"second", "q")
        self.vhost.publish("", "q", second)
        self.assertIs(self.store.hold([queue], second), completion)
        self.assertFalse(completion.done)
        self.assertEqual(confirmed, [])
        self.assertEqual(journal.syncs, syncs)
        self.clock.advance(0)
        self.assertEqual(journal.syncs, syncs + 1)
        self.assertTrue(completion.done)
        self.assertEqual(confirmed, ["first"])
        third = message(b"third", "q")
        self.vhost.publish("", "q", third)
        later = self.store.hold([queue], third)
        self.assertIsNot(later, completion)
        self.clock.advance(0)

    def test_noWaitForTransient(self) -> None:
        """
        A transient message, or a persistent one that reached no durable
        queue, waits for no flush.
        """
        durable = self.vhost.declareQueue("d", durable=True)
        transient = self.vhost.declareQueue("t")
        exclusive = self.vhost.declareQueue("x", durable=True, exclusive=True, owner=object())
        self.assertIsNone(self.store.hold([durable], message(b"m", persistent=False)))
        self.assertIsNone(self.store.hold([transient, exclusive], message(b"m")))
        self.assertIsNone(self.store.hold([], message(b"m")))
        self.assertIsNot(self.store.hold([transient, durable], message(b"m")), None)
        self.clock.advance(0)

    def test_unflushedTurnIsLost(self) -> None:
        """
        What a crash interrupts before the turn's flush was never
        confirmed, and is not there after the restart; what was flushed is.
        """
        self.vhost.declareQueue("q", durable=True)
        self.vhost.publish("", "q", message(b"flushed", "q"))
        self.clock.advance(0)
        self.vhost.publish("", "q", message(b"lost", "q"))
        self.crash()
        self.assertEqual(bodies(self.vhost.queues["q"]), [b"flushed"])

    # Compaction

    def test_compaction(self) -> None:
        """
        Once the journal is past L{Store.compactAt} and mostly dead, it is
        rewritten as one snapshot: smaller, and recovering the same state
        (configuration, ready and held messages, redelivered flags).
        """
        self.store.compactAt = 4096
        self.vhost.declareExchange("x", "topic", durable=True)
        queue = self.vhost.declareQueue("q", durable=True, arguments={"x-max-priority": 2})
        self.vhost.bindQueue("q", "x", "#")
        other = self.vhost.declareQueue("other", durable=True)
        self.clock.advance(0)
        for index in range(100):
            self.vhost.publish("x", "k", message(b"x" * 100, "k", "x"))
            self.clock.advance(0)
        sizeBefore = self.store.journal.size()
        self.assertGreater(sizeBefore, 100 * 100)
        for _ in range(96):
            entry = queue.get()
            assert entry is not None
            queue.settle(entry)
        self.vhost.publish("", "other", message(b"other", "other", priority=1))
        held = queue.get()
        assert held is not None
        self.clock.advance(0)
        self.assertEqual(self.store.records, 1)
        self.assertLess(self.store.journal.size(), 4096)
        self.assertLess(self.store.journal.size(), sizeBefore)
        # Writing goes on after the rewrite.
        self.vhost.publish("x", "k", message(b"after", "k", "x"))
        self.restart()
        queue = self.vhost.queues["q"]
        self.assertEqual(
            [(e.message.body, e.redelivered) for e in queue.readyEntries()],
            [(b"x" * 100, True)] + [(b"x" * 100, False)] * 3 + [(b"after", False)],
        )
        self.assertEqual(queue.arguments, {"x-max-priority": 2})
        self.assertEqual(bodies(self.vhost.queues["other"]), [b"other"])
        self.assertEqual(
            [b.destination.name for b in self.vhost.exchanges["x"].bindings.values()], ["q"]
        )
        self.assertIsNot(other, self.vhost.queues["other"])

    def test_compactionAfterPurgeAndDelete(self) -> None:
        """
        Messages dropped by a purge or with their queue count as dead for
        compaction too.
        """
        self.store.compactAt = 4096
        self.vhost.declareQueue("purged", durable=True)
        self.vhost.declareQueue("deleted", durable=True)
        self.vhost.declareQueue("kept", durable=True)
        self.vhost.publish("", "kept", message(b"kept", "kept"))
        for index in range(40):
            self.vhost.publish("", "purged", message(b"p" * 100, "purged"))
            self.vhost.publish("", "deleted", message(b"d" * 100, "deleted"))
            self.clock.advance(0)
        self.vhost.purgeQueue("purged")
        self.vhost.deleteQueue("deleted")
        self.clock.advance(0)
        self.assertEqual(self.store.records, 1)
        self.assertLess(self.store.journal.size(), 4096)
        self.restart()
        self.assertEqual(sorted(self.vhost.queues), ["kept", "purged"])
        self.assertEqual(bodies(self.vhost.queues["kept"]), [b"kept"])
        self.assertEqual(bodies(self.vhost.queues["purged"]), [])

    # Where the stream was

    def test_positionKept(self) -> None:
        """
        The epoch and stream position the broker gives the store are
        written with the records and come back with recovery.
        """
        self.vhost.declareQueue("q", durable=True)
        self.store.positionSource = lambda: (3, 41)
        self.vhost.publish("", "q", message(b"m", "q"))
        self.restart()
        self.assertEqual((self.store.epoch, self.store.position), (3, 41))
        self.assertEqual((self.recovered["epoch"], self.recovered["position"]), (3, 41))

    def test_setPosition(self) -> None:
        """
        A backup's position is written even when the box it applied held
        nothing durable.
        """
        self.store.setPosition(2, 7)
        self.store.flush()
        self.restart()
        self.assertEqual((self.store.epoch, self.store.position), (2, 7))


class MemoryJournalStoreTests(StoreTestsMixin, SynchronousTestCase):
    """
    The store on a L{MemoryJournal}.
    """

    def openJournal(self) -> Journal:
        """
        The same memory at each restart.
        """
        if not hasattr(self, "memory"):
            self.memory = MemoryJournal()
        return self.memory


class FileJournalStoreTests(StoreTestsMixin, SynchronousTestCase):
    """
    The store on a L{FileJournal}, and what only a file can suffer: torn
    and damaged records, a wrong header.
    """

    def setUp(self) -> None:
        """
        A journal in a directory of its own, which does not exist yet.
        """
        self.directory = self.mktemp()
        self.path = os.path.join(self.directory, "journal")
        self.recover = False
        self.logged = EventLoggingObserver()
        globalLogPublisher.addObserver(self.logged)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged)
        super().setUp()

    def openJournal(self) -> Journal:
        """
        The file, opened anew.
        """
        return FileJournal(self.path, recover=self.recover)

    def read(self) -> bytes:
        """
        The journal file's bytes.
        """
        with open(self.path, "rb") as f:
            return f.read()

    def write(self, data: bytes) -> None:
        """
        Replace the journal file's bytes.
        """
        with open(self.path, "wb") as f:
            f.write(data)

    def threeRecords(self) -> bytes:
        """
        Write a journal of three records (the queue, then one message per
        record), leave the broker as a crash would, and return the file.
        """
        self.vhost.declareQueue("q", durable=True)
        self.clock.advance(0)
        self.vhost.publish("", "q", message(b"one", "q"))
        self.clock.advance(0)
        self.vhost.publish("", "q", message(b"two", "q"))
        self.clock.advance(0)
        self.store.journal.close()
        data = self.read()
        self.assertEqual(len(recordOffsets(data)), 3)
        return data

    def refusedAtRestart(self) -> StoreCorrupt:
        """
        Restart on the file (see L{restartOnly}), which the store must
        refuse.

        @return: why it refused.
        """
        return self.assertRaises(StoreCorrupt, self.restartOnly)

    def restartOnly(self) -> None:
        """
        Start a new broker process on the journal as it is now.
        """
        self.start()

    def test_createsDirectoryAndHeader(self) -> None:
        """
        The first start makes the data directory and a journal that holds
        only its header.
        """
        self.assertEqual(self.read(), MAGIC)
        self.assertEqual(self.recovered["records"], 0)

    def test_fsyncPerTurn(self) -> None:
        """
        The file gets exactly what the turn's record holds, flushed.
        """
        self.vhost.declareQueue("q", durable=True)
        self.clock.advance(0)
        data = self.read()
        self.assertEqual(len(recordOffsets(data)), 1)
        self.assertEqual(self.store.journal.syncs, 1)  # type: ignore[attr-defined]

    def test_tornLastRecordCutShort(self) -> None:
        """
        A last record cut short (the crash came during its write) was never
        confirmed: recovery keeps everything before it, drops it, says so,
        and cuts the file back so that new records follow the good ones.
        """
        data = self.threeRecords()
        start, end = recordOffsets(data)[-1]
        self.write(data[: start + (end - start) // 2])
        self.restartOnly()
        self.assertEqual(bodies(self.vhost.queues["q"]), [b"one"])
        self.assertEqual(self.read(), data[:start])
        self.assertTrue(
            any("torn last record" in str(event.get("log_format")) for event in self.logged)
        )
        self.vhost.publish("", "q", message(b"three", "q"))
        self.restart()
        self.assertEqual(bodies(self.vhost.queues["q"]), [b"one", b"three"])

    def test_tornLengthField(self) -> None:
        """
        A last record cut inside its length field is dropped too.
        """
        data = self.threeRecords()
        start, _ = recordOffsets(data)[-1]
        self.write(data[: start + 3])
        self.restartOnly()
        self.assertEqual(bodies(self.vhost.queues["q"]), [b"one"])

    def test_tornLastRecordBadChecksum(self) -> None:
        """
        A last record whose checksum fails (its sectors half written) is
        dropped the same way.
        """
        data = bytearray(self.threeRecords())
        data[-2] ^= 0xFF
        self.write(bytes(data))
        self.restartOnly()
        self.assertEqual(bodies(self.vhost.queues["q"]), [b"one"])

    def test_damageInTheMiddle(self) -> None:
        """
        A record that fails its checksum with good records after it is
        damage, not a torn write: the broker refuses to start, naming the
        file and the byte, and changes nothing.
        """
        data = bytearray(self.threeRecords())
        start, end = recordOffsets(bytes(data))[1]
        data[end - 2] ^= 0xFF
        self.write(bytes(data))
        error = self.refusedAtRestart()
        self.assertEqual((error.path, error.offset), (self.path, start))
        self.assertIn(self.path, str(error))
        self.assertIn(f"byte {start}", str(error))
        self.assertIn("checksum", str(error))
        self.assertEqual(self.read(), bytes(data))
        self.assertEqual(
            [name for name in os.listdir(self.directory) if "damaged" in name], []
        )
        # The cleanup closes a store: give it an empty one.
        self.store = Store(MemoryJournal(), self.clock)

    def test_damagedLengthInTheMiddle(self) -> None:
        """
        A length field damaged so that its record ends inside a later one
        is reported.
        """
        data = bytearray(self.threeRecords())
        start, end = recordOffsets(bytes(data))[0]
        struct.pack_into(">I", data, start, end - start - 8 + 3)
        self.write(bytes(data))
        error = self.refusedAtRestart()
        self.assertEqual(error.offset, start)
        self.store = Store(MemoryJournal(), self.clock)

    def test_damagedLengthPastTheEnd(self) -> None:
        """
        A length field damaged so that its record seems to run past the end
        of the file is not taken for a torn last record when whole records
        follow it: the broker refuses, naming the byte.
        """
        data = bytearray(self.threeRecords())
        start, _ = recordOffsets(bytes(data))[0]
        struct.pack_into(">I", data, start, 0x7FFFFF00)
        self.write(bytes(data))
        error = self.refusedAtRestart()
        self.assertEqual(error.offset, start)
        self.assertIn("past the end", str(error))
        self.assertEqual(self.read(), bytes(data))
        self.assertRaises(StoreCorrupt, storeInfo, self.path)  # type: ignore[attr-defined]
        self.store = Store(MemoryJournal(), self.clock)

    def test_recoverKeepsCopy(self) -> None:
        """
        With C{recover} (C{--store-recover}) the broker keeps a copy of the
        damaged file (C{journal.damaged-TIME}), goes on from the last good
        record, and writes on after it; the next start is clean.
        """
        data = bytearray(self.threeRecords())
        start, end = recordOffsets(bytes(data))[1]
        data[end - 2] ^= 0xFF
        self.write(bytes(data))
        self.recover = True
        self.restartOnly()
        copies = [name for name in os.listdir(self.directory) if name.startswith("journal.damaged-")]
        self.assertEqual(len(copies), 1)
        with open(os.path.join(self.directory, copies[0]), "rb") as f:
            self.assertEqual(f.read(), bytes(data))
        self.assertEqual(bodies(self.vhost.queues["q"]), [])
        self.assertEqual(self.read(), bytes(data[:start]))
        self.assertTrue(
            any("--store-recover" in str(event.get("log_format")) for event in self.logged)
        )
        self.vhost.publish("", "q", message(b"after", "q"))
        self.recover = False
        self.restart()
        self.assertEqual(bodies(self.vhost.queues["q"]), [b"after"])

    def test_wrongHeader(self) -> None:
        """
        A file that is not a qha journal is refused at byte 0 and left as
        it is; with C{recover} it is kept as a copy and the store starts
        empty.
        """
        self.store.journal.close()
        self.write(b"SQLite format 3\x00" + b"\x00" * 100)
        error = self.refusedAtRestart()
        self.assertEqual(error.offset, 0)
        self.assertIn("header", error.reason)
        self.assertEqual(self.read()[:6], b"SQLite")
        self.recover = True
        self.restartOnly()
        self.assertEqual(self.read(), MAGIC)
        self.assertEqual(
            len([name for name in os.listdir(self.directory) if "damaged" in name]), 1
        )

    def test_partialHeader(self) -> None:
        """
        A header cut short (the crash came as the first start wrote it) is
        a new, empty journal.
        """
        self.store.journal.close()
        self.write(MAGIC[:5])
        self.restartOnly()
        self.assertEqual(self.read(), MAGIC)
        self.vhost.declareQueue("q", durable=True)
        self.restart()
        self.assertIn("q", self.vhost.queues)

    def test_checksumGoodButUndecodable(self) -> None:
        """
        A record that passes its checksum but holds no valid events (a bug,
        or a journal from another version) is reported, not skipped.
        """
        self.store.journal.close()
        self.write(MAGIC + encodeRecord(1, 1, b"\xffnonsense"))
        error = self.refusedAtRestart()
        self.assertIn("record 1", str(error))
        self.assertEqual((error.path, error.offset), (self.path, len(MAGIC)))
        self.assertTrue(gc.isenabled())
        self.assertRaises(StoreCorrupt, storeInfo, self.path)  # type: ignore[attr-defined]
        self.store = Store(MemoryJournal(), self.clock)

    def test_compactionReplacesFile(self) -> None:
        """
        Compaction replaces the file atomically: no temporary file is left
        and the file shrinks.
        """
        self.store.compactAt = 2048
        queue = self.vhost.declareQueue("q", durable=True)
        for index in range(50):
            self.vhost.publish("", "q", message(b"y" * 100, "q"))
            self.clock.advance(0)
        before = os.path.getsize(self.path)
        for _ in range(50):
            entry = queue.get()
            assert entry is not None
            queue.settle(entry)
        self.clock.advance(0)
        self.assertLess(os.path.getsize(self.path), before // 10)
        self.assertEqual(os.listdir(self.directory), ["journal"])
        self.restart()
        self.assertEqual(bodies(self.vhost.queues["q"]), [])

    # storeInfo

    def test_storeInfo(self) -> None:
        """
        L{storeInfo} reads a journal without a broker: epoch, position,
        records, bytes, torn bytes, and queues with their message counts
        (held messages count: they come back).
        """
        self.vhost.declareQueue("a", durable=True)
        self.vhost.declareQueue("b", durable=True)
        self.vhost.declareExchange("x", "fanout", durable=True)
        self.store.positionSource = lambda: (2, 99)
        for index in range(3):
            self.vhost.publish("", "a", message(b"m", "a"))
        self.vhost.queues["a"].get()
        self.clock.advance(0)
        info = storeInfo(self.path)
        size = os.path.getsize(self.path)
        self.assertEqual(
            {key: info[key] for key in ("epoch", "position", "records", "bytes", "tornBytes")},
            {"epoch": 2, "position": 99, "records": 1, "bytes": size, "tornBytes": 0},
        )
        self.assertEqual(info["queues"]["a"]["messages"], 3)
        self.assertEqual(info["queues"]["b"]["messages"], 0)
        self.assertEqual(info["exchanges"], ["x"])

    def test_storeInfoTorn(self) -> None:
        """
        L{storeInfo} counts a torn last record's bytes and leaves the file
        as it is.
        """
        data = self.threeRecords()
        self.write(data[:-4])
        info = storeInfo(self.path)
        self.assertEqual(info["records"], 2)
        self.assertEqual(info["tornBytes"], len(data) - 4 - recordOffsets(data)[-1][0])
        self.assertEqual(info["queues"]["q"]["messages"], 1)
        self.assertEqual(self.read(), data[:-4])

    def test_storeInfoCorrupt(self) -> None:
        """
        L{storeInfo} raises L{StoreCorrupt} on damage before the last
        record and on a wrong header.
        """
        data = bytearray(self.threeRecords())
        start, end = recordOffsets(bytes(data))[0]
        data[end - 1] ^= 0xFF
        self.write(bytes(data))
        self.assertRaises(StoreCorrupt, storeInfo, self.path)  # type: ignore[attr-defined]
        self.write(b"garbage")
        self.assertRaises(StoreCorrupt, storeInfo, self.path)  # type: ignore[attr-defined]


class StoreInfoCommandTests(SynchronousTestCase):
    """
    C{qha-admin store-info --data-dir DIR ...}: reads stores offline and
    says which is newest.
    """

    def setUp(self) -> None:
        """
        No stores yet.
        """
        self.root = self.mktemp()
        os.makedirs(self.root)

    def makeStore(self, name: str, epoch: int, position: int, messages: int) -> str:
        """
        A data directory whose store holds a durable queue C{q} with
        C{messages} messages, written at C{(epoch, position)}.
        """
        directory = os.path.join(self.root, name)
        clock = Clock()
        store = Store(FileJournal(os.path.join(directory, "journal")), clock)
        vhost = VirtualHost(clock=clock)
        store.recover(vhost)
        store.positionSource = lambda: (epoch, position)
        vhost.declareQueue("q", durable=True)
        for index in range(messages):
            vhost.publish("", "q", message(b"m", "q"))
        store.close()
        self.assertEqual(clock.getDelayedCalls(), [])
        return directory

    def runCommand(self, *argv: str) -> tuple[int, str, str]:
        """
        Run C{qha-admin} with C{argv}; its exit status, output and error
        output.
        """
        arguments: argparse.Namespace = parseArguments(list(argv))
        out, err = io.StringIO(), io.StringIO()
        clock = Clock()
        results: list[Any] = []
        run(clock, arguments, self.noConnections, out, err).addBoth(results.append)
        self.assertEqual(len(results), 1)
        self.assertNotIsInstance(results[0], Failure)
        self.assertEqual(clock.getDelayedCalls(), [])
        return results[0], out.getvalue(), err.getvalue()

    async def noConnections(self, address: str) -> Any:
        """
        store-info connects to no broker.
        """
        raise AssertionError(f"store-info connected to {address}")

    def test_one(self) -> None:
        """
        One store: its epoch, position, records, bytes, torn bytes and
        queues with message counts.
        """
        directory = self.makeStore("a", 3, 120, 5)
        code, out, err = self.runCommand("store-info", "--data-dir", directory)
        self.assertEqual((code, err), (0, ""))
        fields = {}
        for line in out.splitlines():
            name, _, value = line.rpartition("  ")
            fields[name.strip()] = value.strip()
        size = os.path.getsize(os.path.join(directory, "journal"))
        self.assertEqual(
            {name: fields[name] for name in ("epoch", "position", "records", "bytes", "torn bytes")},
            {"epoch": "3", "position": "120", "records": "1", "bytes": str(size), "torn bytes": "0"},
        )
        self.assertEqual(fields["data dir"], directory)
        self.assertEqual(
            [line.split() for line in out.splitlines() if line.startswith("q ")], [["q", "5"]]
        )
        self.assertNotIn("newest", out)

    def test_newest(self) -> None:
        """
        With several stores it says which is newest: the highest epoch,
        then the highest position.
        """
        old = self.makeStore("old", 2, 900, 1)
        newest = self.makeStore("newest", 3, 10, 2)
        behind = self.makeStore("behind", 3, 9, 3)
        code, out, err = self.runCommand(
            "store-info", "--data-dir", old, "--data-dir", newest, "--data-dir", behind
        )
        self.assertEqual((code, err), (0, ""))
        self.assertIn(f"newest: {newest} (epoch 3, position 10)", out)

    def test_tie(self) -> None:
        """
        Stores at the same place are all named as newest.
        """
        one = self.makeStore("one", 1, 5, 1)
        two = self.makeStore("two", 1, 5, 1)
        code, out, _ = self.runCommand("store-info", "--data-dir", one, "--data-dir", two)
        self.assertEqual(code, 0)
        self.assertIn(f"newest: {one}, {two} (epoch 1, position 5)", out)

    def test_json(self) -> None:
        """
        With --json: one object with every store and the newest.
        """
        one = self.makeStore("one", 1, 5, 2)
        two = self.makeStore("two", 1, 6, 0)
        code, out, _ = self.runCommand(
            "store-info", "--json", "--data-dir", one, "--data-dir", two
        )
        self.assertEqual(code, 0)
        answer = json.loads(out)
        self.assertEqual(answer["newest"], [two])
        first = answer["stores"][0]
        self.assertEqual(
            {key: first[key] for key in ("dataDir", "epoch", "position", "records", "tornBytes")},
            {"dataDir": one, "epoch": 1, "position": 5, "records": 1, "tornBytes": 0},
        )
        self.assertEqual(first["queues"], {"q": {"messages": 2}})

    def test_missing(self) -> None:
        """
        A directory with no store: exit 1 and one line that says so.
        """
        missing = os.path.join(self.root, "nothing")
        code, out, err = self.runCommand("store-info", "--data-dir", missing)
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(len(err.splitlines()), 1)
        self.assertIn(missing, err)
        self.assertIn("no store", err)

    def test_damaged(self) -> None:
        """
        A damaged store: exit 1 and one line naming the file and the byte;
        the readable stores are still shown.
        """
        good = self.makeStore("good", 1, 1, 1)
        bad = self.makeStore("bad", 1, 2, 1)
        path = os.path.join(bad, "journal")
        with open(path, "r+b") as f:
            f.seek(len(MAGIC) + 12)
            f.write(b"\xff")
            f.seek(0, os.SEEK_END)
            f.write(encodeRecord(1, 3, b""))
        code, out, err = self.runCommand("store-info", "--data-dir", good, "--data-dir", bad)
        self.assertEqual(code, 1)
        self.assertIn(good, out)
        self.assertEqual(len(err.splitlines()), 1)
        self.assertIn(path, err)
        self.assertIn(f"byte {len(MAGIC)}", err)
        self.assertIn("--store-recover", err)

    def test_needsDataDir(self) -> None:
        """
        store-info without --data-dir is a bad command line (exit 2).
        """
        error = None
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            try:
                parseArguments(["store-info"])
            except SystemExit as exit:
                error = exit
        assert error is not None
        self.assertEqual(error.code, 2)
        self.assertIn("--data-dir", stderr.getvalue())


class BackupStoreTests(SynchronousTestCase):
    """
    The store of a backup (in memory, over L{InMemoryCluster} from the
    cluster tests): it records what the backup applies before the backup
    acknowledges it, with the primary's epoch and stream position; and a
    backup restarted on its store keeps what it holds and fetches only what
    it lacks.
    """

    def setUp(self) -> None:
        """
        An active primary and a backup with a store; the primary has a
        replicated durable queue.
        """
        from qha.test.support import InMemoryCluster

        self.cluster = InMemoryCluster(self)
        self.clock = self.cluster.clock
        self.primary = self.cluster.primary()
        self.journal = MemoryJournal()
        self.backup = self.backupNode(self.cluster.node())
        self.queue = self.primary.vhost.declareQueue(
            "q", durable=True, arguments={"qpid.replicate": "all"}
        )

    def backupNode(self, node: Any) -> Any:
        """
        Give C{node} a store on the backup's journal, recovered, as
        L{qha.tap.makeService} does (the store recovers before the node
        makes the virtual host a replica).
        """
        from qha.ha.node import HANode, PersistentState
        from qha.test.support import FakeAMQP

        vhost = VirtualHost(clock=self.clock)
        store = Store(self.journal, self.clock)
        store.recover(vhost)
        options = node.options
        if node in self.cluster.nodes:
            self.cluster.nodes.remove(node)
        fresh = HANode(options, vhost, self.clock, FakeAMQP(), PersistentState(options.dataDir))
        fresh.store = store
        fresh.position = store.position
        self.cluster.nodes.append(fresh)
        return fresh

    def publish(self, *bodies: bytes) -> None:
        """
        Publish persistent C{bodies} to C{q} on the primary.
        """
        for body in bodies:
            self.primary.vhost.publish("", "q", message(body, "q"))

    def test_backupRecordsBeforeAcknowledging(self) -> None:
        """
        Each box the backup applies is on its store (one flush) by the time
        it answers, with the primary's epoch and stream position.
        """
        link = self.cluster.connect(self.primary, self.backup)
        syncs = self.journal.syncs
        self.publish(b"one", b"two")
        self.clock.advance(0)
        link.flush()
        self.assertGreater(self.journal.syncs, syncs)
        store = self.backup.store
        self.assertEqual((store.epoch, store.position), (self.primary.epoch, self.primary.position))
        info = {name: len(list(queue.readyEntries())) for name, queue in self.replayed().queues.items()}
        self.assertEqual(info, {"q": 2})
        self.cluster.finish()

    def replayed(self) -> VirtualHost:
        """
        A virtual host recovered from the backup's journal as it is now.
        """
        vhost = VirtualHost(clock=Clock())
        Store(self.journal, Clock()).recover(vhost)
        return vhost

    def test_restartedBackupFetchesOnlyWhatItLacks(self) -> None:
        """
        A backup restarted on its store sends what it holds; the primary
        sends only the messages it lacks and tells it which are gone, and
        the backup ends up with exactly the primary's messages, on its
        store too.
        """
        link = self.cluster.connect(self.primary, self.backup)
        self.publish(*[b"m%d" % index for index in range(10)])
        self.clock.advance(0)
        link.flush()
        link.cut()
        self.backup.stopService()
        # While the backup is away: three consumed, four more published.
        for _ in range(3):
            entry = self.queue.get()
            assert entry is not None
            self.queue.settle(entry)
        self.publish(*[b"n%d" % index for index in range(4)])
        self.clock.advance(0)
        backup = self.backupNode(self.backup)
        self.assertEqual(len(list(backup.vhost.queues["q"].readyEntries())), 10)
        link = self.cluster.connect(self.primary, backup)
        sent = [event[2] for event in link.events(ev.ENQUEUED)]
        self.assertEqual(sent, [entry.id for entry in self.queue.readyEntries()][-4:])
        self.assertEqual(bodies(backup.vhost.queues["q"]), bodies(self.queue))
        self.assertEqual(bodies(self.replayed().queues["q"]), bodies(self.queue))
        self.assertEqual(bodies(self.queue), [b"m%d" % i for i in range(3, 10)] + [b"n%d" % i for i in range(4)])
        self.cluster.finish()

    def test_backupKeepsQueueIdentity(self) -> None:
        """
        A backup's store keeps the primary's identity (uuid) of each queue:
        a queue deleted on the primary is deleted from the backup's store
        too, and a kept one is recognised when the backup comes back.
        """
        link = self.cluster.connect(self.primary, self.backup)
        self.primary.vhost.declareQueue("gone", durable=True, arguments={"qpid.replicate": "all"})
        self.clock.advance(0)
        link.flush()
        self.primary.vhost.deleteQueue("gone")
        self.clock.advance(0)
        link.flush()
        replayed = self.replayed()
        self.assertEqual(sorted(replayed.queues), ["q"])
        self.assertEqual(replayed.queues["q"].uuid, self.queue.uuid)
        self.cluster.finish()


class RecordFormatTests(SynchronousTestCase):
    """
    The record layout that C{doc/store.md} documents.
    """

    def test_recordFormat(self) -> None:
        """
        The checksum of a record is the CRC-32 of its body, as
        C{doc/store.md} says.
        """
        record = encodeRecord(1, 2, b"events")
        length, crc = struct.unpack_from(">II", record)
        self.assertEqual(length, len(record) - 8)
        self.assertEqual(crc, zlib.crc32(record[8:]))
        self.assertEqual(struct.unpack_from(">qq", record, 8), (1, 2))


class RecordPiecesTests(SynchronousTestCase):
    """
    A record handed to the journal as pieces (L{recordParts},
    L{Journal.appendParts}: a catch-up batch's events are never joined into
    one buffer) is the record L{encodeRecord} makes of the pieces joined.
    """

    def test_recordParts(self) -> None:
        """
        The pieces, joined, are the record of their events joined; views
        are taken as their bytes.
        """
        events = b"0123456789" * 1000
        pieces: list[bytes | memoryview] = [events[:10], memoryview(events)[10:7000], b"", events[7000:]]
        self.assertEqual(b"".join(recordParts(3, 4, pieces)), encodeRecord(3, 4, events))

    def test_fileJournal(self) -> None:
        """
        L{FileJournal.appendParts} writes the record's bytes in place, and
        the journal reads it back.
        """
        path = os.path.join(self.mktemp(), "journal")
        journal = FileJournal(path)
        journal.load()
        journal.append(encodeRecord(1, 1, b"first"))
        events = os.urandom(300000)
        journal.appendParts(recordParts(1, 2, [events[:5], memoryview(events)[5:200000], events[200000:]]))
        self.assertEqual(journal.size(), len(MAGIC) + len(encodeRecord(1, 1, b"first")) + len(encodeRecord(1, 2, events)))
        journal.close()
        with open(path, "rb") as f:
            self.assertEqual(f.read(), MAGIC + encodeRecord(1, 1, b"first") + encodeRecord(1, 2, events))
        records = FileJournal(path).load()
        self.assertEqual([record.events for record in records], [b"first", events])

    def journalOf(self, verbatim: bool, threaded: bool) -> list[bytes]:
        """
        The records of a backup's store that observes an enqueue in
        another virtual host, then takes two runs of one box and one of
        another as they came (L{Store.appliedEncoded}), with observed
        events before, between and after them, over three flushes.

        @param verbatim: take the runs as they came; else observe their
            enqueues and encode them (as a store without a backup's link).
        @param threaded: flush through a store's thread (run here).
        """
        from qha.broker.vhosts import VirtualHosts

        clock = Clock()
        journal = MemoryJournal()
        store = Store(journal, clock)
        vhost = VirtualHost(clock=clock)
        vhost.replica = True
        other = VirtualHosts.of(vhost).ensure("other")
        other.replica = True
        store.attach(vhost)
        if threaded:

            def syncInThread(write: Any) -> Any:
                from twisted.internet.defer import succeed

                write()
                return succeed(None)

            store.syncInThread = syncInThread
        # (Their uuids the same in every journal.)
        queue = vhost.declareQueue("d", durable=True, replica=True, uuid="d" * 32)
        elsewhere = other.declareQueue("o", durable=True, replica=True, uuid="o" * 32)
        body = message(b"x" * 40, "d")

        def box(ids: range) -> bytes:
            """
            The enqueue events of C{ids}, as a primary encodes them.
            """
            writer = ev.EventWriter()
            for id in ids:
                writeEnqueued(writer, "d", id, False, body.addressing, body.header, body.body)
            return writer.take()

        def run(data: bytes, start: int, end: int, ids: range) -> None:
            """
            Apply the events C{data[start:end]} (of C{ids}) unobserved and
            hand them to the store as they came, or apply them observed.
            """
            if not verbatim:
                for id in ids:
                    queue.replicaEnqueue(body, id)
                return
            unobserve(vhost, store)
            for id in ids:
                queue.replicaEnqueue(body, id)
            observe(vhost, store, first=True)
            store.appliedEncoded(data, start, end, len(ids), 40 * len(ids))

        first = box(range(10, 20))
        half = len(box(range(10, 15)))
        second = box(range(30, 33))
        elsewhere.replicaEnqueue(message(b"o", "o"), 1)
        run(first, 0, half, range(10, 15))
        run(first, half, len(first), range(15, 20))
        store.flush()
        run(second, 0, len(second), range(30, 33))
        store.flush()
        queue.replicaDequeue(10)
        run(second + second, len(second), len(second), range(0))
        elsewhere.replicaEnqueue(message(b"p", "o"), 2)
        run(box(range(40, 42)), 0, len(box(range(40, 42))), range(40, 42))
        queue.replicaDequeue(11)
        store.flush()
        self.assertEqual(store.whenSynced(), None)
        return journal.records

    def test_sameRecords(self) -> None:
        """
        A backup's store writes byte for byte the same records whether it
        takes runs of enqueues as they came or encodes each enqueue it
        observes, flushing in the reactor's thread or its own.
        """
        encoded = self.journalOf(False, False)
        self.assertEqual(len(encoded), 3)
        for verbatim, threaded in ((True, False), (True, True), (False, True)):
            self.assertEqual(self.journalOf(verbatim, threaded), encoded, (verbatim, threaded))


class ThreadedSyncTests(SynchronousTestCase):
    """
    With C{syncInThread}, the store hands each record to another thread and
    the reactor goes on; a fake thread here runs the writes when told.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.journal = MemoryJournal()
        self.vhost = VirtualHost(clock=self.clock)
        self.store = Store(self.journal, self.clock)
        self.store.attach(self.vhost)
        self.pending: list[tuple[Any, Any]] = []

        def syncInThread(write: Any) -> Any:
            from twisted.internet.defer import Deferred

            d: Any = Deferred()
            self.pending.append((write, d))
            return d

        self.store.syncInThread = syncInThread
        self.queue = self.vhost.declareQueue("q", durable=True)

    def runThread(self) -> None:
        """
        Run the writes handed to the fake thread, as it would, in order.
        """
        while self.pending:
            write, d = self.pending.pop(0)
            write()
            d.callback(None)

    def publish(self, body: bytes) -> Any:
        """
        Enqueue a persistent message and return what its confirm waits for.
        """
        message = Message.build("", "q", body, commands.Basic.Properties(delivery_mode=2))
        self.queue.enqueue(message)
        return self.store.hold([self.queue], message)

    def test_confirmWaitsForTheThread(self) -> None:
        """
        A confirm completes only once the thread wrote and synced its record.
        """
        completion = self.publish(b"one")
        self.clock.advance(0)
        self.assertEqual(len(self.pending), 1)
        self.assertFalse(completion.done)
        self.runThread()
        self.assertTrue(completion.done)
        self.assertEqual(len(self.journal.records), 1)

    def test_groupedWhileSyncing(self) -> None:
        """
        Turns that arrive while the thread syncs are written together as one
        record when it is done.
        """
        first = self.publish(b"one")
        self.clock.advance(0)
        second = self.publish(b"two")
        self.clock.advance(0)
        third = self.publish(b"three")
        self.clock.advance(0)
        self.assertEqual(len(self.pending), 1)
        write, d = self.pending.pop(0)
        write()
        d.callback(None)
        self.assertTrue(first.done)
        self.assertFalse(second.done)
        self.assertIs(second, third)
        self.assertEqual(len(self.pending), 1)
        self.runThread()
        self.assertTrue(third.done)
        # The declare and "one" made one record; "two" and "three" another.
        self.assertEqual(self.journal.syncs, 2)

    def test_whenSyncedAndClose(self) -> None:
        """
        L{Store.whenSynced} fires once what was written is on disk, and
        L{Store.close} waits for the thread before closing.
        """
        self.publish(b"one")
        synced = self.store.whenSynced()
        assert synced is not None
        fired: list[object] = []
        synced.addCallback(fired.append)
        closed = self.store.close()
        assert closed is not None
        self.assertEqual(fired, [])
        self.runThread()
        self.assertEqual(fired, [None])
        self.assertIsNone(self.successResultOf(closed))
        recovered = VirtualHost(clock=self.clock)
        Store(self.journal, self.clock).recover(recovered)
        self.assertEqual(recovered.queues["q"].messageCount, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class AdaptiveSyncTests(SynchronousTestCase):
    """
    Flushes start in the reactor thread and move to the store's thread
    once they prove slow.
    """

    def test_slowFlushesMoveToTheThread(self) -> None:
        """
        Fast flushes stay in the reactor thread; when the average flush
        takes longer than C{slowSync}, the store uses C{threadSync}.
        """
        store = Store(MemoryJournal(), Clock())

        def threadSync(write: Any) -> Any:
            raise AssertionError("not called here")

        store.threadSync = threadSync
        for _ in range(50):
            store._timeSync(0.0002)
        self.assertIsNone(store.syncInThread)
        for _ in range(50):
            store._timeSync(0.010)
        self.assertIs(store.syncInThread, threadSync)

    def test_noThreadNoSwitch(self) -> None:
        """
        Without a thread (tests, C{--store memory}) nothing switches.
        """
        store = Store(MemoryJournal(), Clock())
        for _ in range(50):
            store._timeSync(0.010)
        self.assertIsNone(store.syncInThread)


class RecoveryProgressTests(SynchronousTestCase):
    """
    A long recovery logs progress lines (L{RecoveryProgress}) while it
    replays the journal.
    """

    def test_lines(self) -> None:
        """
        With the clock moving 10 s between two looks, a line comes every
        L{PROGRESS_EVERY} records, saying how many of how many, the bytes
        and the rate; a short recovery (the clock still) logs none.
        """
        journal = MemoryJournal()
        for position in range(1, 1001):
            journal.append(encodeRecord(1, position, b""))
        for step, expected in [(10.0, 3), (0.0, 0)]:
            store = Store(journal, Clock())
            now = [0.0]

            def monotonic() -> float:
                now[0] += step
                return now[0]

            store.monotonic = monotonic  # type: ignore[method-assign]
            events: list[dict[str, Any]] = []
            store.log = Logger(observer=events.append)  # type: ignore[arg-type]
            recovered = store.recover(VirtualHost(clock=Clock()))
            self.assertEqual(recovered["records"], 1000)
            lines = [formatEvent(e) for e in events if "recovering the store" in formatEvent(e)]
            self.assertEqual(len(lines), expected, lines)
            if expected:
                self.assertEqual(PROGRESS_EVERY, 256)
                self.assertTrue(
                    lines[0].startswith("recovering the store <memory>: record 256 of 1000 (26%), 0.0 of 0.0 MB,"),
                    lines[0],
                )
                self.assertIn("record 768 of 1000 (77%)", lines[2])
                self.assertTrue(lines[0].endswith(" records/s"), lines[0])
            store.close()
