"""
Tests for segment paging (issue 15): a plain FIFO queue, durable or not,
pages whole messages, metadata and all, in segments
(L{qha.broker.paging.Segment}), so that a paged backlog costs a few bytes a
message in memory. Order, acknowledgements, requeues, C{basic.get}, purge,
delete, length limits, dead-lettering, per-message expiry, the memory
accounting, a replica's events by id, and the catch-up's walk by id all
work as they do for messages in memory.

Everything is synchronous: bodies go to a L{MemoryBodyStore} (or real page
files in a temporary directory), time is a L{Clock}.
"""

from __future__ import annotations

from typing import Any

from pamqp import commands
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from qha.broker.message import Message
from qha.broker.paging import PageError, Pager, Segment, decodeSegment, encodeSegment
from qha.broker.queue import Consumer, Entry, Queue
from qha.broker.vhost import Resources, VirtualHost
from qha.changes.cursor import entriesAfter
from qha.ha.primary import ReplicationSource
from qha.ha.role import READY
from qha.store.journal import Compaction, MemoryJournal, Store
from qha.store.paging import PageFiles
from qha.test.support import ALL, InMemoryCluster, PagingTestCase
from qha.testing import MemoryBodyStore, RecordingObserver, RecordingTarget


def message(body: bytes, routingKey: str = "q", **properties: Any) -> Message:
    """
    A message for the default exchange with C{properties}.
    """
    return Message.build("", routingKey, body, commands.Basic.Properties(**properties))


def contents(queue: Queue) -> list[tuple[int, bytes, bool]]:
    """
    What C{queue} holds, ready (paged segments included) or held, in id
    order: each entry's id, body and redelivered mark.
    """
    entries: dict[int, Entry] = {entry.id: entry for entry in queue.readyEntries()}
    entries.update(queue.held)
    return [(entry.id, entry.message.body, entry.redelivered) for _, entry in sorted(entries.items())]


class SegmentCodingTests(SynchronousTestCase):
    """
    L{encodeSegment} and L{decodeSegment}.
    """

    def test_roundTrip(self) -> None:
        """
        A segment's messages come back as they were written: ids, delivery
        state, expiry, addressing, header and body; the same addressing and
        header are written once and shared when read back.
        """
        entries = [
            Entry(message(b"one"), 7),
            Entry(message(b"two"), 8, redelivered=True, expiresAt=12.5),
            Entry(message(b"three", "other", content_type="text/plain"), 10),
        ]
        record, total, ids, expiring = encodeSegment(entries)
        self.assertEqual(total, 11)
        self.assertEqual(list(ids or []), [7, 8, 10])
        self.assertTrue(expiring)
        decoded = decodeSegment(record)
        self.assertEqual(
            [(id, redelivered, expiresAt, body) for id, redelivered, expiresAt, _, _, body in decoded],
            [(7, False, None, b"one"), (8, True, 12.5, b"two"), (10, False, None, b"three")],
        )
        for (_, _, _, addressing, header, _), entry in zip(decoded, entries):
            self.assertEqual((addressing, header), (entry.message.addressing, entry.message.header))
        self.assertIs(decoded[0][3], decoded[1][3])
        self.assertIs(decoded[0][4], decoded[1][4])
        _, _, consecutive, expiring = encodeSegment(entries[:1])
        self.assertIsNone(consecutive)
        self.assertFalse(expiring)

    def test_damaged(self) -> None:
        """
        A record cut short, of another version or with bytes past its last
        message is refused with L{PageError}.
        """
        record, _, _, _ = encodeSegment([Entry(message(b"body"), 1)])
        self.assertRaises(PageError, decodeSegment, record[:-3] + b"")
        self.assertRaises(PageError, decodeSegment, record[:10])
        self.assertRaises(PageError, decodeSegment, b"\x09" + record[1:])
        self.assertRaises(PageError, decodeSegment, record + b"extra")

    def test_segmentIds(self) -> None:
        """
        A L{Segment} lists its ids from its range, or from the ids it keeps
        when they skip.
        """
        self.assertEqual(list(Segment(0, 10, 3, 30, 5, 7).idList()), [5, 6, 7])
        record, _, ids, _ = encodeSegment([Entry(message(b"a"), 1), Entry(message(b"b"), 4)])
        self.assertEqual(list(Segment(0, len(record), 2, 2, 1, 4, ids).idList()), [1, 4])


class SegmentQueueTests(PagingTestCase):
    """
    A plain queue that pages segments keeps only an in-memory head and
    small segment objects, and behaves as a queue in memory (the virtual
    host, whose pager writes segments of 4 messages, and the steps:
    L{PagingTestCase}).
    """

    pagerOptions = {"segments": True, "segmentMessages": 4}

    def test_lazyPagesSegments(self) -> None:
        """
        A lazy queue pages its messages 4 at a time, one record each; only
        the forming segment stays in memory, and the watermark counts only
        it; a consumer gets every message in order, a segment read back at
        a time; everything is freed after.
        """
        queue = self.vhost.declareQueue("q", arguments={"x-queue-mode": "lazy"})
        sent = self.publishAll("q", 10, size=100)
        self.assertEqual(len(queue._segments), 2)
        self.assertEqual(len(queue._forming), 2)
        self.assertEqual(len(queue.levels[0]), 0)
        self.assertEqual(self.bodies.records, 2)
        self.assertEqual((queue.pagedCount, queue.pagedBytes), (8, 800))
        self.assertEqual((queue.messageCount, queue.readyBytes), (10, 1000))
        self.assertEqual(self.resources.used, 2 * (100 + self.resources.overhead))
        self.assertEqual([body for _, body, _ in contents(queue)], sent)
        consumer, target = self.consume(queue)
        self.assertEqual(target.bodies(), sent)
        self.assertEqual(len(self.bodies.reads), 2 + 2)
        self.ack(queue, consumer, target)
        self.assertEmpty(queue)

    def test_brokerBudget(self) -> None:
        """
        Past the broker-wide budget, a queue with a backlog keeps its head
        in memory and pages its new messages in segments.
        """
        self.pager.budget = 1
        queue = self.vhost.declareQueue("q")
        sent = self.publishAll("q", 40)
        self.assertTrue(queue.hasTail)
        self.assertEqual(len(queue.levels[0]), 16)
        self.assertEqual(queue.pagedCount, 24)
        self.assertEqual(queue.messageCount, 40)
        self.drain(queue, sent)
        self.assertEmpty(queue)

    def test_newMessagesFollowTheTail(self) -> None:
        """
        A message published while a consumer drains a paged backlog comes
        after it.
        """
        queue = self.vhost.declareQueue("q", arguments={"x-queue-mode": "lazy"})
        sent = self.publishAll("q", 9)
        consumer, target = self.consume(queue, credit=3)
        sent += self.publishAll("q", 2)
        target.credit = None
        queue.dispatch()
        self.assertEqual(target.bodies(), sent)
        self.ack(queue, consumer, target)
        self.assertEmpty(queue)

    def test_requeue(self) -> None:
        """
        Messages read back, delivered and given back return to their
        places, before the rest of the tail, marked redelivered.
        """
        queue = self.vhost.declareQueue("q", arguments={"x-queue-mode": "lazy"})
        sent = self.publishAll("q", 12)
        consumer, target = self.consume(queue, credit=6)
        taken = [entry for _, entry in target.deliveries]
        self.assertEqual([entry.message.body for entry in taken], sent[:6])
        self.giveBack(queue, consumer, target, taken)
        self.assertEqual(target.bodies(), sent)
        self.assertEqual(
            [entry.redelivered for _, entry in target.deliveries], [True] * 6 + [False] * 6
        )
        self.ack(queue, consumer, target)
        self.assertEmpty(queue)

    def test_get(self) -> None:
        """
        C{basic.get} reads the segments back, in order.
        """
        queue = self.vhost.declareQueue("q", arguments={"x-queue-mode": "lazy"})
        sent = self.publishAll("q", 7)
        got = []
        while (entry := queue.get()) is not None:
            got.append(entry.message.body)
            queue.settle(entry)
        self.assertEqual(got, sent)
        self.assertEmpty(queue)

    def test_purgeAndDelete(self) -> None:
        """
        Purge and delete count the paged messages, free the segments
        unread, and leave held messages with their consumer.
        """
        queue = self.vhost.declareQueue("q", arguments={"x-queue-mode": "lazy"})
        self.publishAll("q", 10)
        consumer, target = self.consume(queue, credit=2)
        reads = len(self.bodies.reads)
        self.assertEqual(self.vhost.purgeQueue("q"), 8)
        self.assertEqual(len(self.bodies.reads), reads)
        self.assertEqual(self.observer.events[-1], ("purged", "q", 8))
        self.ack(queue, consumer, target)
        self.assertEmpty(queue)
        self.vhost.declareQueue("other", arguments={"x-queue-mode": "lazy"})
        self.publishAll("other", 10)
        self.assertEqual(self.vhost.deleteQueue("other"), 10)
        self.assertEmpty()

    def test_maxLengthDeadLettersFromSegment(self) -> None:
        """
        A length limit drops the oldest messages, reading their segment
        back, and dead-letters them with their bodies.
        """
        self.vhost.declareExchange("dlx", "fanout")
        dlq = self.vhost.declareQueue("dlq")
        self.vhost.bindQueue("dlq", "dlx", "")
        queue = self.vhost.declareQueue(
            "q",
            arguments={"x-queue-mode": "lazy", "x-max-length": 6, "x-dead-letter-exchange": "dlx"},
        )
        sent = self.publishAll("q", 14)
        self.assertEqual([body for _, body, _ in contents(dlq)], sent[:8])
        self.assertEqual(queue.messageCount, 6)
        self.drain(queue, sent[8:])
        self.vhost.purgeQueue("dlq")
        self.assertEmpty(queue)

    def test_rejectPublishCountsTail(self) -> None:
        """
        C{reject-publish} counts the paged messages.
        """
        queue = self.vhost.declareQueue(
            "q",
            arguments={
                "x-queue-mode": "lazy",
                "x-max-length": 9,
                "x-overflow": "reject-publish",
            },
        )
        self.publishAll("q", 9)
        self.assertEqual(queue.pagedCount, 8)
        self.assertRaises(Exception, self.vhost.publish, "", "q", message(b"one too many"))
        self.assertEqual(queue.messageCount, 9)

    def test_expirationInSegment(self) -> None:
        """
        A message with a per-message expiration paged in a segment expires
        once its segment is the head's, and is dead-lettered with its body.
        """
        self.vhost.declareExchange("dlx", "fanout")
        dlq = self.vhost.declareQueue("dlq")
        self.vhost.bindQueue("dlq", "dlx", "")
        queue = self.vhost.declareQueue(
            "q", arguments={"x-queue-mode": "lazy", "x-dead-letter-exchange": "dlx"}
        )
        sent = self.publishAll("q", 4, expiration="1000")
        sent += self.publishAll("q", 4)
        self.assertTrue(queue._segments[0].expiring)
        self.assertFalse(queue._segments[-1].expiring)
        self.clock.advance(1)
        self.assertEqual([body for _, body, _ in contents(dlq)], sent[:4])
        self.drain(queue, sent[4:])
        self.vhost.purgeQueue("dlq")
        self.assertEmpty(queue)

    def test_notSegmented(self) -> None:
        """
        Priority, last-value and TTL queues (durable or not) page bodies
        one by one, as before; so does every queue of a pager without
        segments.
        """
        cases: list[tuple[str, dict[str, Any], bool]] = [
            ("priority", {"x-max-priority": 3}, True),
            ("lvq", {"qpid.last_value_queue_key": "k"}, False),
            ("ttl", {"x-message-ttl": 60000}, False),
        ]
        for name, arguments, durable in cases:
            queue = self.vhost.declareQueue(
                name, durable=durable, arguments={"x-queue-mode": "lazy", **arguments}
            )
            self.publishAll(name, 5)
            self.assertFalse(queue.hasTail, name)
            self.assertEqual(queue.pagedCount, 5, name)
            self.assertTrue(all(entry.message.paged for entry in queue.readyEntries()), name)
            self.vhost.deleteQueue(name)
        self.pager.segments = False
        queue = self.vhost.declareQueue("plain", arguments={"x-queue-mode": "lazy"})
        self.publishAll("plain", 5)
        self.assertFalse(queue.hasTail)
        self.assertEqual(queue.pagedCount, 5)

    def test_smallInMemory(self) -> None:
        """
        A backlog of 1000 messages in segments of 100 keeps ten
        L{Segment}s and the forming entries, and no entry for the rest.
        """
        self.pager.segmentMessages = 100
        queue = self.vhost.declareQueue("q", arguments={"x-queue-mode": "lazy"})
        self.publishAll("q", 1050)
        self.assertEqual(len(queue._segments), 10)
        self.assertEqual(len(queue._forming), 50)
        self.assertEqual(len(queue.levels[0]), 0)
        self.assertEqual(self.bodies.records, 10)

    def test_segmentBytes(self) -> None:
        """
        A segment is also written once its bodies pass the pager's
        C{segmentBytes}.
        """
        self.pager.segmentBytes = 250
        queue = self.vhost.declareQueue("q", arguments={"x-queue-mode": "lazy"})
        self.publishAll("q", 3, size=100)
        self.assertEqual([segment.count for segment in queue._segments], [3])

    def test_pageFiles(self) -> None:
        """
        Segments go to real page files and come back intact.
        """
        pages = PageFiles(self.mktemp())
        self.addCleanup(pages.close)
        self.pager.bodies = pages
        self.pager.segmentMessages = 50
        queue = self.vhost.declareQueue("q", arguments={"x-queue-mode": "lazy"})
        sent = self.publishAll("q", 230, size=500)
        self.assertEqual(pages.records, 4)
        self.drain(queue, sent)
        self.assertEqual(pages.records, 0)
        self.assertEqual(self.resources.used, 0)

    def test_catchUpWalk(self) -> None:
        """
        L{entriesAfter}, a backup's catch-up walk by id, finds the entries
        of the tail in batches, copies with their bodies, and leaves the
        tail paged; a segment walked a batch at a time is read once.
        """
        queue = self.vhost.declareQueue("q", arguments={"x-queue-mode": "lazy"})
        sent = self.publishAll("q", 11)
        walked: list[bytes] = []
        after = 0
        done = False
        while not done:
            entries, after, done = entriesAfter(queue, after, 11, 3, 1 << 20)
            walked.extend(entry.message.body for entry in entries)
        self.assertEqual(walked, sent)
        self.assertEqual(len(self.bodies.reads), 2)
        self.assertEqual(queue.pagedCount, 8)
        self.assertEqual(queue.ids(), list(range(1, 12)))


class SegmentReplicaTests(SynchronousTestCase):
    """
    A replica pages segments by its own budget; the primary's events that
    name an entry of its tail read the tail back to it.
    """

    def setUp(self) -> None:
        """
        A replica virtual host whose pager writes segments of 4 messages,
        and a lazy queue on it holding ids 1 to 14 (two in the head's
        place: a lazy queue pages them all, 12 in segments, 2 forming).
        """
        self.bodies = MemoryBodyStore()
        self.pager = Pager(self.bodies, budget=0, window=4, segments=True, segmentMessages=4)
        self.resources = Resources(pager=self.pager)
        self.vhost = VirtualHost(resources=self.resources, clock=Clock())
        self.vhost.replica = True
        self.queue = self.vhost.declareQueue("q", arguments={"x-queue-mode": "lazy"}, replica=True)
        self.sent = [b"%d" % n for n in range(1, 15)]
        for n, body in enumerate(self.sent, 1):
            self.queue.replicaEnqueue(message(body), n)

    def test_pages(self) -> None:
        """
        The replica's messages are in segments, and all there.
        """
        self.assertEqual(self.queue.pagedCount, 12)
        self.assertEqual(len(self.queue._forming), 2)
        self.assertEqual([body for _, body, _ in contents(self.queue)], self.sent)
        self.assertEqual(self.queue.messageCount, 14)

    def test_dequeueInOrder(self) -> None:
        """
        Dequeues from the front read one segment back at a time.
        """
        for id in range(1, 6):
            self.queue.replicaDequeue(id)
        self.assertEqual(len(self.bodies.reads), 2)
        self.assertEqual(self.queue.pagedCount, 4)
        self.assertEqual([id for id, _, _ in contents(self.queue)], list(range(6, 15)))
        self.assertEqual(self.queue.messageCount, 9)

    def test_dequeueRange(self) -> None:
        """
        A range across segments drops what it covers and keeps the rest,
        in order, with the counts right.
        """
        self.queue.replicaDequeueRange(3, 10)
        self.assertEqual([id for id, _, _ in contents(self.queue)], [1, 2, 11, 12, 13, 14])
        self.assertEqual(self.queue.messageCount, 6)
        self.queue.replicaDequeueRange(1, 100)
        self.assertEqual(contents(self.queue), [])
        self.assertEqual(self.queue.messageCount, 0)
        self.assertEqual(self.resources.used, 0)
        self.assertEqual(self.bodies.pages, {})

    def test_acquireAndPromote(self) -> None:
        """
        An acquire of an id in the tail reads the tail back to it and marks
        it held; once promoted, the queue delivers everything in order,
        that one redelivered.
        """
        self.queue.replicaAcquire(6)
        self.assertIn(6, self.queue.held)
        self.queue.replicaAcquireRange(7, 8)
        self.assertEqual(set(self.queue.held), {6, 7, 8})
        self.queue.replicaDequeue(7)
        self.vhost.replica = False
        self.queue.promoted(1)
        target = RecordingTarget()
        consumer = Consumer(self.queue, "ctag", target)
        self.queue.addConsumer(consumer)
        self.assertEqual(target.bodies(), self.sent[:6] + self.sent[7:])
        self.assertEqual(
            [entry.id for _, entry in target.deliveries if entry.redelivered], [6, 8]
        )

    def test_enqueueAcquired(self) -> None:
        """
        A message a consumer on the primary took as it arrived reads the
        tail back (the primary holds every older one) and is held.
        """
        self.queue.replicaEnqueue(message(b"15"), 15, acquired=True)
        self.assertFalse(self.queue.hasTail)
        self.assertIn(15, self.queue.held)
        self.assertEqual([id for id, _, _ in contents(self.queue)], list(range(1, 16)))

    def test_enqueueAmongTail(self) -> None:
        """
        An id lower than the tail's last (a catch-up filling a gap) goes in
        its place, and a duplicate is not added twice.
        """
        self.queue.replicaDequeue(9)
        self.queue.replicaEnqueue(message(b"9 again"), 9)
        self.queue.replicaEnqueue(message(b"duplicate"), 12)
        ids = [id for id, _, _ in contents(self.queue)]
        self.assertEqual(ids, list(range(1, 15)))
        self.assertEqual(self.queue.messageCount, 14)

    def test_purge(self) -> None:
        """
        A purge drops the tail unread.
        """
        reads = len(self.bodies.reads)
        self.queue.replicaPurge()
        self.assertEqual(len(self.bodies.reads), reads)
        self.assertEqual(self.queue.messageCount, 0)
        self.assertEqual(self.resources.used, 0)
        self.assertEqual(self.bodies.pages, {})

    def test_purgeServingTellsObservers(self) -> None:
        """
        On a serving broker (a single-queue replica), whose observers
        replicate it further, a purge tells every dequeue, the tail's
        included, and keeps what the remote's consumers hold.
        """
        self.queue.replicaAcquire(2)
        self.vhost.replica = False
        observer = RecordingObserver()
        self.vhost.observers.append(observer)
        self.queue.replicaPurge()
        dequeued = [event[2] for event in observer.events if event[0] == "dequeued"]
        self.assertEqual(sorted(dequeued), [1] + list(range(3, 15)))
        self.assertEqual([id for id, _, _ in contents(self.queue)], [2])
        self.assertFalse(self.queue.hasTail)
        self.assertEqual(self.bodies.pages, {})

    def test_ids(self) -> None:
        """
        The holdings a backup sends list the ids of its tail.
        """
        self.queue.replicaEnqueue(message(b"20"), 20)
        self.assertEqual(self.queue.ids(), list(range(1, 15)) + [20])
        self.assertEqual(self.queue.idRanges(), [[1, 14], [20, 20]])
        self.queue.replicaDequeue(2)
        self.assertEqual(self.queue.idRanges(), [[1, 1], [3, 14], [20, 20]])


class SegmentCatchUpTests(SynchronousTestCase):
    """
    A backup joining a primary whose backlog is paged in segments gets
    every message; the primary's segments stay paged; the backup pages
    them in segments too, and delivers them in order once promoted.
    """

    def test_catchUp(self) -> None:
        """
        95 messages in segments of 8, caught up in batches of 10.
        """
        self.patch(ReplicationSource, "batchMessages", 10)
        cluster = InMemoryCluster(self)
        self.addCleanup(cluster.finish)
        primary = cluster.primary()
        bodies = MemoryBodyStore()
        primary.vhost.resources.pager = Pager(bodies, window=4, segments=True, segmentMessages=8)
        backup = cluster.node()
        backupBodies = MemoryBodyStore()
        backup.vhost.resources.pager = Pager(
            backupBodies, window=4, segments=True, segmentMessages=8
        )
        queue = primary.vhost.declareQueue("q", arguments={**ALL, "x-queue-mode": "lazy"})
        sent = [b"%04d" % n + b"." * 20 for n in range(95)]
        for body in sent:
            primary.vhost.publish("", "q", message(body))
        self.assertEqual(queue.pagedCount, 88)
        cluster.connect(primary, backup)
        cluster.flush()
        self.assertEqual(backup.role.name, READY)
        replica = backup.vhost.queues["q"]
        self.assertEqual([body for _, body, _ in contents(replica)], sent)
        self.assertEqual(replica.pagedCount, 88)
        self.assertEqual(queue.pagedCount, 88)
        self.assertEqual(bodies.records, 11)


class DurableSegmentTests(SynchronousTestCase):
    """
    A durable queue pages its messages in segments too. Its persistent
    messages are in the journal as ever: they come back after a restart
    (paged again), a compaction keeps every message of the tail while
    consumers drain it, a backup's purge of its tail reaches its store, and
    the store counts what it keeps without reading the tail back.
    """

    def setUp(self) -> None:
        """
        A virtual host whose pager writes segments of 10 messages, a store
        on an in-memory journal that observes it, and a durable lazy queue.
        """
        self.clock = Clock()
        self.journal = MemoryJournal()
        self.bodies = MemoryBodyStore()
        self.vhost = self.pagingVhost(self.bodies)
        self.store = Store(self.journal, self.clock)
        self.store.attach(self.vhost)
        self.queue = self.vhost.declareQueue("q", durable=True, arguments={"x-queue-mode": "lazy"})

    def pagingVhost(self, bodies: MemoryBodyStore) -> VirtualHost:
        """
        A virtual host that pages to C{bodies} in segments of 10.
        """
        pager = Pager(bodies, budget=0, window=4, segments=True, segmentMessages=10)
        return VirtualHost(resources=Resources(pager=pager), clock=self.clock)

    def publish(self, first: int, count: int) -> list[bytes]:
        """
        Publish C{count} numbered persistent bodies from C{first}.
        """
        bodies = [b"%06d" % n for n in range(first, first + count)]
        for body in bodies:
            self.vhost.publish("", "q", message(body, delivery_mode=2))
        return bodies

    def take(self, count: int) -> list[bytes]:
        """
        Consume and acknowledge the next C{count} messages of the queue.
        """
        target = RecordingTarget(count)
        consumer = Consumer(self.queue, "ctag", target)
        self.queue.addConsumer(consumer)
        entries = [entry for _, entry in target.deliveries]
        self.queue.settleAll(entries)
        self.queue.consumerSettled(consumer, len(entries))
        self.queue.removeConsumer(consumer)
        return target.bodies()

    def recovered(self) -> Queue:
        """
        The queue as a restart recovers it from the journal, into a broker
        that pages the same way.
        """
        self.store.flush()
        vhost = self.pagingVhost(MemoryBodyStore())
        Store(self.journal, self.clock).recover(vhost)
        return vhost.queues["q"]

    def test_pagesSegments(self) -> None:
        """
        A durable lazy queue's persistent messages go to segments, not one
        by one; a restart brings every one back, in order, paged again.
        """
        sent = self.publish(0, 35)
        self.assertEqual((len(self.queue._segments), len(self.queue._forming)), (3, 5))
        self.assertFalse(any(entry.message.paged for level in self.queue.levels for entry in level))
        queue = self.recovered()
        self.assertTrue(queue.hasTail)
        self.assertEqual(queue.messageCount, 35)
        self.assertEqual([entry.message.body for entry in queue.readyEntries()], sent)

    def test_consumedStayConsumed(self) -> None:
        """
        Messages consumed from a segment read back are acknowledged in
        the journal: the restart brings back only the rest.
        """
        sent = self.publish(0, 35)
        self.assertEqual(self.take(12), sent[:12])
        queue = self.recovered()
        self.assertEqual([entry.message.body for entry in queue.readyEntries()], sent[12:])

    def test_compactionKeepsTail(self) -> None:
        """
        A compaction walks a queue with a paged tail by id, a step at a
        time, while a consumer drains segments (read back and freed) and
        new messages arrive between the steps: the compacted journal holds
        exactly the messages the queue holds, in order.
        """
        sent = self.publish(0, 95)
        self.patch(Compaction, "step", 7)
        original = Compaction._step
        steps: list[int] = []
        taken: list[bytes] = []

        def step(compaction: Compaction) -> None:
            steps.append(len(steps))
            if len(steps) % 3 == 1:
                taken.extend(self.take(9))
                sent.extend(self.publish(1000 + len(steps), 2))
            original(compaction)

        self.patch(Compaction, "_step", step)
        compaction = self.store.startCompaction()
        assert compaction is not None
        self.clock.advance(0)
        self.assertTrue(compaction.done)
        self.assertGreater(len(steps), 10)
        self.assertEqual(taken, sent[: len(taken)])
        self.assertGreater(compaction.records, 10)
        queue = self.recovered()
        self.assertEqual(
            [entry.message.body for entry in queue.readyEntries()], sent[len(taken) :]
        )

    def test_purgeAndDelete(self) -> None:
        """
        A purge of a durable queue with a paged tail frees its segments
        unread and its store writes it: the restart brings back only what
        was published after; a deleted queue does not come back.
        """
        self.publish(0, 35)
        reads = len(self.bodies.reads)
        self.vhost.purgeQueue("q")
        self.assertEqual(len(self.bodies.reads), reads)
        self.assertEqual(self.bodies.pages, {})
        after = self.publish(100, 3)
        self.assertEqual([entry.message.body for entry in self.recovered().readyEntries()], after)
        self.publish(200, 25)
        self.vhost.deleteQueue("q")
        self.store.flush()
        vhost = self.pagingVhost(MemoryBodyStore())
        Store(self.journal, self.clock).recover(vhost)
        self.assertNotIn("q", vhost.queues)

    def test_backupPurgeReachesStore(self) -> None:
        """
        A backup's purge of a durable queue with a paged tail drops the
        tail unread and tells its store of the purge: after a restart the
        queue holds only what the primary's consumers held (the tail is not
        resurrected).
        """
        self.vhost.replica = True
        replica = self.vhost.declareQueue("r", durable=True, arguments={"x-queue-mode": "lazy"}, replica=True)
        for id in range(1, 26):
            replica.replicaEnqueue(message(b"%d" % id, "r", delivery_mode=2), id)
        self.assertTrue(replica.hasTail)
        replica.replicaAcquire(3)
        reads = len(self.bodies.reads)
        replica.replicaPurge()
        self.assertEqual(len(self.bodies.reads), reads)
        self.assertFalse(replica.hasTail)
        self.assertEqual(self.bodies.pages, {})
        self.store.flush()
        vhost = self.pagingVhost(MemoryBodyStore())
        Store(self.journal, self.clock).recover(vhost)
        self.assertEqual([entry.id for entry in vhost.queues["r"].readyEntries()], [3])

    def test_liveBytesWithoutReadBack(self) -> None:
        """
        The store counts the bytes it keeps without reading a paged tail
        back (a paged segment's bodies count whole).
        """
        self.publish(0, 35)
        reads = len(self.bodies.reads)
        self.assertEqual(self.store._countLiveBytes(), 35 * 6)
        self.assertEqual(len(self.bodies.reads), reads)
