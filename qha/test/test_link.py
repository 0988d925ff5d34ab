"""
Tests for L{qha.ha.link.BackupLink}, the backup's end of the replication
stream: boxes lost, repeated, out of order or malformed, links that drop,
a backup that comes back holding what the primary no longer has, and when
the backup acknowledges a box (early for transient messages).
"""

from __future__ import annotations

import json
from typing import Any

from pamqp import commands
from twisted.trial.unittest import SynchronousTestCase

from qha.admin.locator import AdminLocator
from qha.amqp.holders import Completion
from qha.broker.message import Message
from qha.broker.vhost import VirtualHost
from qha.changes import events as ev
from qha.changes.replay import Replicator
from qha.ha.connection import Session
from qha.ha.node import HANode
from qha.ha.role import ACTIVE, JOINING, READY, RECOVERING
from qha.test.support import ALL, BoxInterceptor, InMemoryCluster, message, queueContents, snapshotOf, writeEnqueued


def ids(events: list[tuple[Any, ...]]) -> list[int]:
    """
    The ids that entry events name, ranges spelled out.
    """
    found: list[int] = []
    for event in events:
        if event[0] in (ev.DEQUEUED_RANGE, ev.ACQUIRED_RANGE):
            found.extend(range(event[2], event[3] + 1))
        else:
            found.append(event[2])
    return found


class StreamFaultTests(SynchronousTestCase):
    """
    Boxes lost, repeated or out of order, links that drop, and backups
    that come back holding things the primary no longer has.
    """

    def setUp(self) -> None:
        """
        A cluster in memory with an active primary, a joining backup, and a
        replicated queue C{q} on the primary.
        """
        self.cluster = InMemoryCluster(self)
        self.primary = self.cluster.primary()
        self.backup = self.cluster.node()
        self.queue = self.primary.vhost.declareQueue("q", arguments=ALL)

    def publish(self, *bodies: bytes, node: HANode | None = None) -> Completion | None:
        """
        Publish C{bodies} to C{q} on C{node} (the primary by default) as a
        channel does.
        """
        node = node or self.primary
        completion = None
        for body in bodies:
            queues = node.vhost.publish("", "q", message(body, "q"))
            completion = node.gate.hold(queues) or completion
        return completion

    def take(self, count: int) -> None:
        """
        A consumer on the primary takes and acknowledges the first
        C{count} messages of C{q}.
        """
        for _ in range(count):
            entry = self.queue.get()
            assert entry is not None
            self.queue.settle(entry)

    def replica(self, node: HANode | None = None) -> list[tuple[int, bytes, bool]]:
        """
        What the backup (or C{node}) holds of C{q}.
        """
        return queueContents((node or self.backup).vhost.queues["q"])

    def assertReplicated(self, backup: HANode | None = None, primary: HANode | None = None) -> None:
        """
        C{backup} holds what C{primary} holds.
        """
        self.assertEqual(
            snapshotOf((backup or self.backup).vhost), snapshotOf((primary or self.primary).vhost)
        )

    def test_replicatorDuplicates(self) -> None:
        """
        Applying a box twice, directly, is harmless while it describes the
        present: an enqueue of an id the replica holds is ignored, and so is
        a dequeue or an acquire of an id it does not hold.
        """
        vhost = VirtualHost()
        replicator = Replicator(vhost, lambda: None)
        writer = ev.EventWriter()
        writer.event(ev.QUEUE_DECLARED, "r", "uuid", False, False, False, False, {})
        writeEnqueued(writer, "r", 1, False, b"", b"", b"one")
        writeEnqueued(writer, "r", 2, False, b"", b"", b"two")
        box = writer.take()
        replicator.apply(box)
        replicator.apply(box)
        self.assertEqual(queueContents(vhost.queues["r"]), [(1, b"one", False), (2, b"two", False)])
        writer.entryEvent(ev.DEQUEUED, "r", 1)
        writer.entryEvent(ev.ACQUIRED, "r", 7)
        writer.entryEvent(ev.RELEASED, "r", 8)
        writer.entryEvent(ev.DEQUEUED, "absent", 1)
        box = writer.take()
        replicator.apply(box)
        replicator.apply(box)
        self.assertEqual(queueContents(vhost.queues["r"]), [(2, b"two", False)])
        self.assertEqual(vhost.queues["r"].held, {})

    def test_repeatedBoxIgnored(self) -> None:
        """
        A box that arrives again after later boxes (a resend) must not bring
        back a message that was dequeued since: the backup ignores a box it
        already applied.
        """
        link = self.cluster.connect(self.primary, self.backup)
        interceptor = BoxInterceptor(link.primarySide, "copy")
        self.publish(b"a", b"b")
        link.flush()
        self.take(1)
        link.flush()
        self.assertEqual([id for id, _, _ in self.replica()], [2])
        interceptor.release()
        link.flush()
        self.assertEqual(interceptor.failures, [])
        self.assertEqual([id for id, _, _ in self.replica()], [2])
        self.assertReplicated()
        self.assertEqual(self.backup.role.name, READY)
        self.cluster.finish()

    def test_reorderedBoxes(self) -> None:
        """
        A box that overtakes an earlier one is refused, and the backup
        catches up again from what it holds, instead of applying a dequeue
        before its enqueue (which would leave it a message the primary no
        longer has).
        """
        link = self.cluster.connect(self.primary, self.backup)
        interceptor = BoxInterceptor(link.primarySide, "hold")
        self.publish(b"a", b"b")
        link.flush()
        self.take(1)
        link.flush()
        interceptor.release()
        link.flush()
        self.assertEqual(self.backup.role.name, JOINING)
        self.assertEqual(self.primary.sources, {})
        # The backup resubscribes, as its discovery would.
        again = self.cluster.connect(self.primary, self.backup)
        self.assertEqual(self.backup.role.name, READY)
        self.assertReplicated()
        self.assertEqual([id for id, _, _ in self.replica()], [2])
        self.assertEqual(ids(again.events(ev.ENQUEUED)), [id for id, _, _ in self.replica()])
        self.cluster.finish()

    def test_lostBoxInTransit(self) -> None:
        """
        A box lost on the way (the next one arrives with a gap in the
        sequence) makes the backup resynchronise instead of silently
        missing the messages it carried.
        """
        link = self.cluster.connect(self.primary, self.backup)
        BoxInterceptor(link.primarySide, "lose")
        self.publish(b"a")
        link.flush()
        self.publish(b"b")
        link.flush()
        self.assertEqual(self.backup.role.name, JOINING)
        self.cluster.connect(self.primary, self.backup)
        self.assertEqual(self.backup.role.name, READY)
        self.assertEqual([id for id, _, _ in self.replica()], [1, 2])
        self.assertReplicated()
        self.cluster.finish()

    def test_rejoinSendsOnlyWhatIsMissing(self) -> None:
        """
        A backup whose link dropped resubscribes with what it holds: the
        primary tells it to drop what was dequeued meanwhile and sends only
        the messages it lacks.
        """
        link = self.cluster.connect(self.primary, self.backup)
        self.publish(b"1", b"2", b"3", b"4", b"5")
        link.flush()
        link.cut()
        self.assertEqual(self.backup.role.name, JOINING)
        self.take(2)
        self.publish(b"6", b"7")
        again = self.cluster.connect(self.primary, self.backup)
        self.assertEqual(ids(again.events(ev.ENQUEUED)), [6, 7])
        self.assertEqual(
            ids(again.events(ev.DEQUEUED) + again.events(ev.DEQUEUED_RANGE)), [1, 2]
        )
        self.assertEqual([id for id, _, _ in self.replica()], [3, 4, 5, 6, 7])
        self.assertReplicated()
        self.cluster.finish()

    def test_rejoinHeldMessages(self) -> None:
        """
        Messages a consumer on the primary holds while the backup was away
        are marked acquired (so redelivered after a failover) when it comes
        back, without being sent again.
        """
        link = self.cluster.connect(self.primary, self.backup)
        self.publish(b"1", b"2")
        link.flush()
        link.cut()
        held = self.queue.get()
        assert held is not None
        again = self.cluster.connect(self.primary, self.backup)
        self.assertEqual(again.events(ev.ENQUEUED), [])
        self.assertEqual(ids(again.events(ev.ACQUIRED)), [1])
        self.assertEqual(self.replica(), [(1, b"1", True), (2, b"2", False)])
        self.cluster.finish()

    def test_newPrimaryBehindBackup(self) -> None:
        """
        A backup that holds messages the new primary never got (it fell
        behind before the old primary died) drops them when it follows the
        new primary, and new ids never collide with them.
        """
        other = self.cluster.node()
        behind = self.cluster.connect(self.primary, self.backup)
        ahead = self.cluster.connect(self.primary, other)
        self.publish(b"1", b"2", b"3")
        self.cluster.flush()
        behind.cut()
        self.publish(b"4", b"5")
        ahead.flush()
        self.assertEqual([id for id, _, _ in self.replica(other)], [1, 2, 3, 4, 5])
        ahead.cut()
        # The old primary is gone; the backup that is behind is promoted.
        self.cluster.promote(self.backup)
        self.assertEqual(self.backup.role.name, RECOVERING)
        self.assertEqual(self.backup.epoch, 2)
        rejoined = self.cluster.connect(self.backup, other)
        self.assertEqual(ids(rejoined.events(ev.DEQUEUED) + rejoined.events(ev.DEQUEUED_RANGE)), [4, 5])
        self.assertEqual(rejoined.events(ev.ENQUEUED), [])
        self.assertEqual(self.replica(other), [(1, b"1", False), (2, b"2", False), (3, b"3", False)])
        self.assertEqual(self.backup.role.name, ACTIVE)
        self.publish(b"new", node=self.backup)
        rejoined.flush()
        newId = self.replica(self.backup)[-1][0]
        self.assertGreater(newId, 5)
        self.assertEqual(self.replica(other), self.replica(self.backup))
        self.assertReplicated(other, self.backup)
        self.cluster.finish()

    def test_queueRecreatedWhileAway(self) -> None:
        """
        A queue deleted and declared again under the same name while the
        backup was away has another uuid: the backup discards the old
        queue's messages, even those whose ids the new queue reuses.
        """
        link = self.cluster.connect(self.primary, self.backup)
        self.publish(b"old1", b"old2", b"old3")
        link.flush()
        oldUuid = self.queue.uuid
        link.cut()
        self.primary.vhost.deleteQueue("q")
        self.queue = self.primary.vhost.declareQueue("q", arguments=ALL)
        self.assertNotEqual(self.queue.uuid, oldUuid)
        self.publish(b"new1")
        self.cluster.connect(self.primary, self.backup)
        self.assertEqual(self.replica(), [(1, b"new1", False)])
        self.assertEqual(self.backup.vhost.queues["q"].uuid, self.queue.uuid)
        self.assertReplicated()
        self.cluster.finish()

    def test_objectsGoneWhileAway(self) -> None:
        """
        Queues and exchanges deleted on the primary while the backup was
        away are removed from the backup when it comes back.
        """
        vhost = self.primary.vhost
        vhost.declareQueue("gone", arguments=ALL)
        vhost.declareExchange("x", "fanout", arguments=ALL)
        link = self.cluster.connect(self.primary, self.backup)
        self.assertIn("gone", self.backup.vhost.queues)
        self.assertIn("x", self.backup.vhost.exchanges)
        link.cut()
        vhost.deleteQueue("gone")
        vhost.deleteExchange("x")
        self.cluster.connect(self.primary, self.backup)
        self.assertNotIn("gone", self.backup.vhost.queues)
        self.assertNotIn("x", self.backup.vhost.exchanges)
        self.assertReplicated()
        self.cluster.finish()

    def test_corruptBox(self) -> None:
        """
        A box with garbage after its events is refused as malformed (the
        events before the garbage are applied); the primary drops the
        backup, which catches up again and holds what the primary holds.
        """
        link = self.cluster.connect(self.primary, self.backup)
        BoxInterceptor(link.primarySide, "corrupt")
        self.publish(b"a", b"b")
        link.flush()
        # The backup declares the refusal (MALFORMED_BOX) instead of
        # logging an unhandled error.
        self.assertEqual(self.flushLoggedErrors(ev.MalformedEvents), [])
        self.assertEqual(self.backup.role.name, JOINING)
        self.assertEqual(self.primary.sources, {})
        self.cluster.connect(self.primary, self.backup)
        self.assertEqual([id for id, _, _ in self.replica()], [1, 2])
        self.assertReplicated()
        self.cluster.finish()


class EarlyAcknowledgementTests(SynchronousTestCase):
    """
    A backup acknowledges a box of transient message events on arrival and
    applies it right after; any other box it applies (and stores) first.
    """

    def setUp(self) -> None:
        """
        An active primary and a ready backup, with a replicated queue C{q}
        and a durable replicated queue C{d}.
        """
        self.cluster = InMemoryCluster(self)
        self.primary = self.cluster.primary()
        self.backup = self.cluster.node()
        self.primary.vhost.declareQueue("q", arguments=ALL)
        self.primary.vhost.declareQueue("d", durable=True, arguments=ALL)
        self.link = self.cluster.connect(self.primary, self.backup)
        self.assertEqual(self.backup.role.name, READY)

    def publish(self, queue: str, persistent: bool = False) -> Completion:
        """
        Publish one message to C{queue} as a channel does, and send the box
        that carries it (without moving it).
        """
        properties = commands.Basic.Properties(delivery_mode=2 if persistent else 1)
        queues = self.primary.vhost.publish(
            "", queue, Message.build("", queue, b"m", properties)
        )
        completion = self.primary.gate.hold(queues)
        assert completion is not None
        self.cluster.clock.advance(0)
        return completion

    def deliver(self) -> None:
        """
        Move the bytes between primary and backup, without running timers.
        """
        while self.link.pump.pump(advanceClock=False):
            pass

    def held(self, queue: str) -> int:
        """
        How many messages the backup holds on C{queue}.
        """
        return self.backup.vhost.queues[queue].messageCount

    def test_transientAnsweredFirst(self) -> None:
        """
        A box of transient messages is acknowledged before the backup
        applies it, so the confirm does not wait for the applying; the
        backup applies it once the answer is written.
        """
        completion = self.publish("q")
        self.deliver()
        self.assertTrue(completion.done)
        self.assertEqual(self.held("q"), 0)
        self.cluster.clock.advance(0)
        self.assertEqual(self.held("q"), 1)
        self.cluster.finish()

    def test_persistentAppliedFirst(self) -> None:
        """
        A box with a persistent message for a durable queue is applied
        before it is acknowledged (a backup with a store writes it first).
        """
        completion = self.publish("d", persistent=True)
        self.deliver()
        self.assertTrue(completion.done)
        self.assertEqual(self.held("d"), 1)
        self.cluster.finish()

    def test_inOrder(self) -> None:
        """
        A box applied first applies every box acknowledged before it, in
        order.
        """
        self.publish("q")
        self.publish("d", persistent=True)
        self.deliver()
        self.assertEqual((self.held("q"), self.held("d")), (1, 1))
        self.cluster.finish()

    def test_appliedWhenLinkLost(self) -> None:
        """
        A backup whose link drops keeps what it acknowledged.
        """
        completion = self.publish("q")
        self.deliver()
        self.assertTrue(completion.done)
        self.link.link.lost()
        self.assertEqual(self.held("q"), 1)
        self.cluster.finish()

    def test_appliedBeforeListing(self) -> None:
        """
        qha-admin's listings of a backup count what it acknowledged.
        """
        self.publish("q")
        self.deliver()
        listing = AdminLocator(self.backup, Session(None)).listObjects("queues")
        [queue] = [q for q in json.loads(listing["objects"]) if q["name"] == "q"]
        self.assertEqual(queue["messages"], 1)
        self.cluster.finish()

    def test_malformedClosesLink(self) -> None:
        """
        A transient box that turns out malformed when applied drops the
        link, so that the primary stops counting on this backup and it
        catches up again.
        """
        link = self.link.link
        self.assertIsNone(
            link.received(self.primary.epoch, link.lastSeq + 1, b"E\xff", None, True)
        )
        self.assertFalse(link.closed)
        self.cluster.clock.advance(0)
        self.assertTrue(link.closed)
        self.cluster.finish()
