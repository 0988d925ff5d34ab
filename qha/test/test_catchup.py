"""
Tests of the batched catch-up (L{qha.ha.primary.ReplicationSource} sends a
backup's catch-up as L{qha.ha.commands.CatchUp} batches, L{qha.ha.link.
BackupLink.receivedBatch} and L{qha.ha.catchup.CatchUpReceiver} take them):
bounds, flow control, live events between batches, a connection lost half
way, the progress both sides show, and the backup's store records.

Two in-memory nodes of an L{InMemoryCluster} talk AMP over iosim on one
Clock: nothing opens a socket or sleeps.
"""

from __future__ import annotations

import gc
import json
from typing import Any, Callable

from twisted.protocols import amp
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from qha.admin.commands import Query
from qha.admin.locator import adminLocator

from qha.changes import events as ev
from qha.broker.queue import Entry, Queue
from qha.changes.cursor import CopiedWalk, entriesAfter
from qha.ha.commands import MAX_BATCH_BYTES, MAX_BATCH_MESSAGES, MalformedBox
from qha.ha.connection import nodeConnection
from qha.ha.link import BackupLink
from qha.ha.primary import ReplicationSource
from qha.ha.role import READY
from qha.broker.message import Message
from qha.store.journal import MemoryJournal, Store, scanRecords
from qha.test.support import (
    ALL,
    InMemoryCluster,
    Link,
    message,
    persistentMessage,
    queueContents,
    snapshotOf,
    writeEnqueued,
)
from qha.testing import MemoryBodyStore, RecordingObserver


promoteYoung = ReplicationSource._promoteYoung
"""
The primary's promotion of young objects, as defined (L{recordFreezes}
replaces it).
"""


def recordFreezes(case: SynchronousTestCase) -> list[None]:
    """
    Record the calls of C{gc.freeze} during C{case} instead of freezing
    the test run's objects (so that later tests' garbage is collected as
    ever).
    """
    freezes: list[None] = []
    case.patch(gc, "freeze", lambda: freezes.append(None))
    # The primary's promotion of its walks' copies (tested on its own).
    case.patch(ReplicationSource, "_promoteYoung", lambda source: None)
    return freezes


class CatchUpTests(SynchronousTestCase):
    """
    A catch-up larger than one batch, between a primary and a backup node.
    """

    def setUp(self) -> None:
        """
        A cluster in memory with an active primary and a joining backup;
        batches of at most 10 messages, 2 unanswered at a time.
        """
        self.patch(ReplicationSource, "batchMessages", 10)
        self.patch(ReplicationSource, "catchupWindow", 2)
        self.freezes = recordFreezes(self)
        self.cluster = InMemoryCluster(self)
        self.primary = self.cluster.primary()
        self.backup = self.cluster.node()

    def publish(self, queue: str, count: int, size: int = 10) -> None:
        """
        Publish C{count} messages of C{size} bytes to C{queue} on the
        primary.
        """
        for index in range(count):
            self.primary.vhost.publish("", queue, message(b"%d" % index + b"x" * size, queue))

    def assertReplicated(self) -> None:
        """
        The backup holds what the primary holds.
        """
        self.assertEqual(snapshotOf(self.backup.vhost), snapshotOf(self.primary.vhost))

    def source(self) -> ReplicationSource:
        """
        The primary's one source.
        """
        [source] = self.primary.sources.values()
        return source

    def pumpUntil(self, link: Link, done: Any, bound: int = 10000) -> None:
        """
        Move bytes one round at a time until C{done()}, at most C{bound}
        rounds.
        """
        for _ in range(bound):
            if done():
                return
            link.pump.pump()
        self.fail("not done within the bound")

    def test_batches(self) -> None:
        """
        A catch-up of 95 messages in batches of 10 comes as 10 batches after
        the configuration box, never more than 2 of them unanswered; the
        backup is ready only after the last, and holds the same queue.
        """
        self.primary.vhost.declareQueue("q", arguments=ALL)
        self.publish("q", 95)
        link = self.cluster.connect(self.primary, self.backup, flush=False)
        outstanding = []
        ready = []
        for _ in range(1000):
            moved = link.pump.pump()
            if self.primary.sources:
                outstanding.append(self.source()._catchupOut)
                ready.append((self.backup.role.name == READY, self.backup.vhost.queues.get("q")))
            if not moved:
                break
        self.assertLessEqual(max(outstanding), 2)
        self.assertEqual(self.backup.role.name, READY)
        # Ready only once every message was there.
        for isReady, queue in ready:
            if isReady:
                assert queue is not None
                self.assertEqual(queue.messageCount, 95)
        enqueues = [sum(1 for event in box if event[0] == ev.ENQUEUED) for box in link.boxes]
        self.assertEqual(sum(enqueues), 95)
        self.assertLessEqual(max(enqueues), 10)
        self.assertEqual(len([count for count in enqueues if count]), 10)
        self.assertEqual(link.events(ev.CAUGHT_UP), [(ev.CAUGHT_UP,)])
        # The marker ends the last batch: no message after it.
        caughtUp = [index for index, box in enumerate(link.boxes) if (ev.CAUGHT_UP,) in box][0]
        self.assertEqual(link.boxes[caughtUp][-1], (ev.CAUGHT_UP,))
        self.assertEqual(sum(enqueues[caughtUp + 1 :]), 0)
        self.assertReplicated()
        self.assertTrue(self.source().ready)
        self.cluster.finish()

    def test_oneBatchPerTurn(self) -> None:
        """
        The primary makes one batch per reactor turn (a timed call of its
        own), even when the window has room for more (at the start, or when
        answers come together), and none in the turn it starts: the other
        connections' turns come between two.
        """
        self.primary.vhost.declareQueue("q", arguments=ALL)
        self.publish("q", 95)
        atStart: list[tuple[int, bool]] = []
        perCall: list[int] = []
        start = ReplicationSource.start
        pump = ReplicationSource._pump

        def started(source: ReplicationSource, holdings: Any) -> None:
            start(source, holdings)
            assert source.catchup is not None
            atStart.append((source.catchup.batches, source._pumpCall is not None))

        def pumped(source: ReplicationSource) -> None:
            assert source.catchup is not None
            before = source.catchup.batches
            pump(source)
            perCall.append(source.catchup.batches - before)

        self.patch(ReplicationSource, "start", started)
        self.patch(ReplicationSource, "_pump", pumped)
        self.cluster.connect(self.primary, self.backup)
        self.assertEqual(atStart, [(0, True)])
        self.assertEqual(max(perCall), 1)
        self.assertEqual(sum(perCall), 10)
        self.assertEqual(self.backup.role.name, READY)
        self.assertReplicated()
        self.cluster.finish()

    def test_copiesPromoted(self) -> None:
        """
        A catch-up in batches sets the young objects (its walks' copies
        among them) aside at its start, freezing once, without counting
        what is frozen already (that walks every frozen object) and
        without unfreezing anything; a catch-up in one box does not.
        """
        calls: list[str] = []
        self.patch(ReplicationSource, "_promoteYoung", promoteYoung)
        self.patch(gc, "freeze", lambda: calls.append("freeze"))
        self.patch(gc, "unfreeze", lambda: calls.append("unfreeze"))
        def count() -> int:
            calls.append("count")
            return 10

        self.patch(gc, "get_freeze_count", count)
        self.patch(BackupLink, "freezeCaughtUp", False)
        self.primary.vhost.declareQueue("q", arguments=ALL)
        self.publish("q", 95)
        self.cluster.connect(self.primary, self.backup)
        self.assertEqual(self.backup.role.name, READY)
        self.assertEqual(calls, ["freeze"])
        self.cluster.finish()

    def test_smallCatchUpNotPromoted(self) -> None:
        """
        A catch-up in one box copies nothing: nothing is moved.
        """
        calls: list[str] = []
        self.patch(ReplicationSource, "_promoteYoung", promoteYoung)
        self.patch(gc, "freeze", lambda: calls.append("freeze"))
        self.patch(gc, "unfreeze", lambda: calls.append("unfreeze"))
        self.patch(gc, "get_freeze_count", lambda: 0)
        self.primary.vhost.declareQueue("q", arguments=ALL)
        self.publish("q", 5)
        self.cluster.connect(self.primary, self.backup)
        self.assertEqual(self.backup.role.name, READY)
        self.assertEqual(calls, [])
        self.cluster.finish()

    def test_bytesBound(self) -> None:
        """
        Batches stay within the bytes bound: messages of 1,000 bytes with a
        bound of 4,000 come at most 3 a batch (the next would pass it); one
        message larger than the bound travels alone.
        """
        self.patch(ReplicationSource, "batchBytes", 4000)
        self.primary.vhost.declareQueue("q", arguments=ALL)
        self.publish("q", 20, 1000)
        self.primary.vhost.publish("", "q", message(b"y" * 10000, "q"))
        self.publish("q", 2, 1000)
        link = self.cluster.connect(self.primary, self.backup)
        enqueues = [[event for event in box if event[0] == ev.ENQUEUED] for box in link.boxes]
        sizes = [sum(len(event[6]) for event in box) for box in enqueues if box]
        self.assertLessEqual(max(len(box) for box in enqueues), 3)
        self.assertIn(10000, sizes)
        self.assertLess(sorted(sizes)[-2], 4000)
        self.assertEqual(self.backup.role.name, READY)
        self.assertReplicated()
        self.cluster.finish()

    def test_liveEventsBetweenBatches(self) -> None:
        """
        While the backup catches up, the primary goes on: messages are
        published (they come in live boxes between the batches), consumed
        among those already sent (live) and among those not sent yet
        (their batch no longer has them), held by a consumer, given back
        and purged in another queue. At the end the backup holds exactly
        what the primary holds.
        """
        vhost = self.primary.vhost
        queue = vhost.declareQueue("q", arguments=ALL)
        other = vhost.declareQueue("other", arguments=ALL)
        self.publish("q", 60)
        self.publish("other", 30)
        link = self.cluster.connect(self.primary, self.backup, flush=False)
        source: list[ReplicationSource] = []

        def started() -> bool:
            if self.primary.sources and self.source().catchup is not None:
                source.append(self.source())
                return self.source().catchup.ackedBatches >= 2  # type: ignore[union-attr]
            return False

        self.pumpUntil(link, started)
        self.assertFalse(source[0].ready)
        after = source[0]._walking[queue].after
        self.assertGreater(after, 0)
        self.assertLess(after, 60)
        # New messages: live.
        self.publish("q", 5)
        # The oldest (sent already) and one far ahead (not sent yet) go.
        first = queue.get()
        assert first is not None
        queue.settle(first)
        ahead = [entry for entry in queue.readyEntries() if entry.id == 50][0]
        queue._unlink(ahead)  # type: ignore[attr-defined]
        queue._forget(ahead)  # type: ignore[attr-defined]
        queue._removed(ahead)  # type: ignore[attr-defined]
        # Held by a consumer: one sent, one not yet; one given back.
        held = [queue.get() for _ in range(3)]
        assert None not in held
        queue.release([held[2]])  # type: ignore[list-item]
        other.purge()
        self.publish("other", 3)
        link.flush()
        self.assertEqual(self.backup.role.name, READY)
        self.assertReplicated()
        backupQueue = self.backup.vhost.queues["q"]
        self.assertNotIn(50, [id for id, _, _ in queueContents(backupQueue)])
        self.assertEqual(sorted(backupQueue.held), sorted(entry.id for entry in held[:2]))  # type: ignore[union-attr]
        # The live boxes came between the batches, before the last.
        caughtUp = [index for index, box in enumerate(link.boxes) if (ev.CAUGHT_UP,) in box][0]
        live = [
            index
            for index, box in enumerate(link.boxes)
            if any(event[0] == ev.ENQUEUED and event[1] == "q" and event[2] > 60 for event in box)
        ]
        self.assertTrue(live)
        self.assertLess(live[0], caughtUp)
        self.cluster.finish()

    def test_purgedDuringCatchUp(self) -> None:
        """
        The queue being walked is purged half way: the batches after it
        send none of its ready entries the walk had not reached (only the
        held ones), and the backup ends with what the primary holds.
        """
        vhost = self.primary.vhost
        queue = vhost.declareQueue("q", arguments=ALL)
        self.publish("q", 100)
        link = self.cluster.connect(self.primary, self.backup, flush=False)
        self.pumpUntil(
            link,
            lambda: bool(self.primary.sources)
            and self.source().catchup is not None
            and self.source().catchup.ackedBatches >= 2,  # type: ignore[union-attr]
        )
        after = self.source()._walking[queue].after
        self.assertLess(after, 80)
        held = [queue.get() for _ in range(after + 5)]
        assert None not in held
        queue.purge()
        link.flush()
        self.assertEqual(self.backup.role.name, READY)
        self.assertReplicated()
        backupQueue = self.backup.vhost.queues["q"]
        self.assertEqual(
            [id for id, _, _ in queueContents(backupQueue)], list(range(1, after + 6))
        )
        self.assertEqual(sorted(backupQueue.held), list(range(1, after + 6)))
        self.cluster.finish()

    def test_queueDeletedDuringCatchUp(self) -> None:
        """
        A queue deleted half way through its catch-up is deleted on the
        backup too, and the catch-up goes on with the next.
        """
        vhost = self.primary.vhost
        vhost.declareQueue("q", arguments=ALL)
        vhost.declareQueue("r", arguments=ALL)
        self.publish("q", 40)
        self.publish("r", 40)
        link = self.cluster.connect(self.primary, self.backup, flush=False)
        self.pumpUntil(
            link,
            lambda: bool(self.primary.sources)
            and self.source().catchup is not None
            and self.source().catchup.ackedBatches >= 1,  # type: ignore[union-attr]
        )
        vhost.deleteQueue("q")
        link.flush()
        self.assertEqual(self.backup.role.name, READY)
        self.assertEqual(sorted(self.backup.vhost.queues), ["r"])
        self.assertReplicated()
        self.cluster.finish()

    def test_connectionLostAndStartedAgain(self) -> None:
        """
        A connection lost half way through a catch-up leaves the backup with
        what it applied; subscribed again, it is sent only the rest.
        """
        self.primary.vhost.declareQueue("q", arguments=ALL)
        self.publish("q", 80)
        link = self.cluster.connect(self.primary, self.backup, flush=False)
        self.pumpUntil(
            link,
            lambda: bool(self.primary.sources)
            and self.source().catchup is not None
            and self.source().catchup.ackedBatches >= 3,  # type: ignore[union-attr]
        )
        link.cut()
        self.assertEqual(self.primary.sources, {})
        have = self.backup.vhost.queues["q"].messageCount
        self.assertGreater(have, 0)
        self.assertLess(have, 80)
        self.assertNotEqual(self.backup.role.name, READY)
        again = self.cluster.connect(self.primary, self.backup)
        self.assertEqual(self.backup.role.name, READY)
        sent = [event for box in again.boxes for event in box if event[0] == ev.ENQUEUED]
        self.assertEqual(len(sent), 80 - have)
        self.assertReplicated()
        self.cluster.finish()

    def test_progress(self) -> None:
        """
        Both sides show the catch-up's progress in C{describe} (what
        C{qha-admin query} and C{/api/ha} show): messages and bytes sent,
        acknowledged and received.
        """
        self.primary.vhost.declareQueue("q", arguments=ALL)
        self.publish("q", 35)
        self.cluster.connect(self.primary, self.backup)
        [backup] = self.primary.describe()["backups"]
        progress = backup["catchup"]
        self.assertEqual(progress["messages"], 35)
        self.assertEqual(progress["sentMessages"], 35)
        self.assertEqual(progress["acknowledgedMessages"], 35)
        self.assertEqual(progress["batches"], 4)
        self.assertEqual(progress["acknowledgedBatches"], 4)
        self.assertEqual(progress["sentBytes"], progress["acknowledgedBytes"])
        self.assertGreater(progress["sentBytes"], 35 * 10)
        self.assertTrue(progress["done"])
        received = self.backup.describe()["catchup"]
        self.assertEqual(
            (received["messages"], received["receivedMessages"], received["batches"], received["done"]),
            (35, 35, 4, True),
        )
        self.assertEqual(received["receivedBytes"], progress["sentBytes"])
        self.cluster.finish()

    def test_smallCatchUpInOneBox(self) -> None:
        """
        A catch-up that fits one batch goes in one box with the marker, as
        before, and shows no batch progress.
        """
        self.primary.vhost.declareQueue("q", arguments=ALL)
        self.publish("q", 5)
        link = self.cluster.connect(self.primary, self.backup)
        first = link.boxes[0]
        self.assertEqual(len([event for event in first if event[0] == ev.ENQUEUED]), 5)
        self.assertEqual(first[-1], (ev.CAUGHT_UP,))
        self.assertEqual(self.primary.describe()["backups"][0]["catchup"], None)
        self.assertEqual(self.backup.describe()["catchup"], None)
        self.cluster.finish()

    def test_storeRecordsBounded(self) -> None:
        """
        A backup with a store writes the catch-up as one record per batch,
        none larger than a batch, and recovers the whole queue from them.
        """
        self.patch(ReplicationSource, "batchMessages", 1000)
        self.patch(ReplicationSource, "batchBytes", 20000)
        journal = MemoryJournal()
        store = Store(journal, self.cluster.clock)
        store.attach(self.backup.vhost)
        self.backup.store = store
        self.primary.vhost.declareQueue("q", durable=True, arguments=ALL)
        for index in range(300):
            self.primary.vhost.publish(
                "", "q", persistentMessage(b"%05d" % index + b"z" * 200, "q")
            )
        self.cluster.connect(self.primary, self.backup)
        self.assertEqual(self.backup.role.name, READY)
        records, _ = scanRecords(b"".join(journal.records), "<memory>")
        self.assertGreater(len(records), 3)
        self.assertLessEqual(max(len(record) for record in journal.records), 20000 + 4096)
        self.cluster.finish()


class BatchBoundsTests(SynchronousTestCase):
    """
    A backup checks every number of a batch before it uses it.
    """

    def setUp(self) -> None:
        """
        A backup following a primary (an in-memory cluster), caught up.
        """
        self.freezes = recordFreezes(self)
        self.cluster = InMemoryCluster(self)
        self.primary = self.cluster.primary()
        self.backup = self.cluster.node()
        self.connection = self.cluster.connect(self.primary, self.backup)
        self.link = self.connection.link

    def batch(self, messages: int, data: bytes = b"", total: int = 100, last: bool = False, seq: int | None = None) -> Any:
        """
        Hand the link a batch with these numbers.
        """
        if seq is None:
            seq = self.link.lastSeq + 1
        return self.link.receivedBatch(self.primary.epoch, seq, data, None, messages, total, last)

    def enqueues(self, count: int, size: int = 10) -> bytes:
        """
        The events of C{count} enqueues to a queue the backup lacks.
        """
        writer = ev.EventWriter()
        for index in range(count):
            m = message(b"b" * size, "nowhere")
            writeEnqueued(writer, "nowhere", index + 1, False, m.addressing, m.header, m.body)
        return writer.take()

    def assertRefused(self, why: str, *args: Any, **kwargs: Any) -> None:
        """
        The batch is refused with C{why} in the error, nothing of it is
        applied (the sequence stays), and the link closes.
        """
        seq = self.link.lastSeq
        error = self.assertRaises(MalformedBox, self.batch, *args, **kwargs)
        self.assertIn(why, str(error))
        self.cluster.clock.advance(0)
        self.assertTrue(self.link.closed)

    def tearDown(self) -> None:
        """
        Stop everything.
        """
        self.cluster.finish()

    def test_tooManyMessages(self) -> None:
        """
        More messages than L{MAX_BATCH_MESSAGES}, or fewer than none.
        """
        self.assertRefused("messages (at most", MAX_BATCH_MESSAGES + 1)

    def test_negativeMessages(self) -> None:
        """
        A negative count.
        """
        self.assertRefused("messages (at most", -1)

    def test_tooLarge(self) -> None:
        """
        More than L{MAX_BATCH_BYTES} with more than one message.
        """
        self.assertRefused("bytes of events", 2, b"x" * (MAX_BATCH_BYTES + 1))

    def test_oneLargeMessage(self) -> None:
        """
        One message larger than a batch travels alone: accepted.
        """
        data = self.enqueues(1, MAX_BATCH_BYTES + 1)
        self.batch(1, data, total=1)
        self.assertEqual(self.link.catchup.messages, 1)

    def test_totalOutOfBounds(self) -> None:
        """
        A negative total.
        """
        self.assertRefused("out of bounds", 0, total=-1)

    def test_totalChanges(self) -> None:
        """
        The total is the same in every batch of a catch-up.
        """
        self.batch(2, self.enqueues(2), total=10)
        self.assertRefused("not the catch-up's 10", 1, self.enqueues(1), total=11)

    def test_pastTotal(self) -> None:
        """
        The messages received never pass the total.
        """
        self.batch(2, self.enqueues(2), total=3)
        self.assertRefused("would pass the total", 2, self.enqueues(2), total=3)

    def test_countIsWhatItCarries(self) -> None:
        """
        A batch that says 3 messages and carries 2 is refused (after it
        was applied, so the link catches up again).
        """
        self.assertRefused("said 3 messages and carried 2", 3, self.enqueues(2))

    def test_lastCarriesMarker(self) -> None:
        """
        The last batch carries the caught-up marker, and no other does.
        """
        self.assertRefused("no caught-up marker in the last", 0, last=True)

    def test_afterLast(self) -> None:
        """
        Nothing comes after the last batch.
        """
        writer = ev.EventWriter()
        writer.event(ev.CAUGHT_UP)
        self.batch(0, writer.take(), last=True)
        self.assertRefused("ended with an earlier batch", 0)

    def test_outOfSequence(self) -> None:
        """
        A batch after a gap is refused as any box is.
        """
        from qha.ha.commands import OutOfSequence

        self.assertRaises(OutOfSequence, self.batch, 0, seq=self.link.lastSeq + 2)


def sizedQueue() -> Queue:
    """
    A queue of four transient messages (ids 1 to 4) of 100, 100, 5000 and
    100 bytes.
    """
    from qha.broker.vhost import VirtualHost

    vhost = VirtualHost()
    queue = vhost.declareQueue("q")
    for size in (100, 100, 5000, 100):
        vhost.publish("", "q", message(b"x" * size, "q"))
    return queue


def assertSizeBound(
    case: SynchronousTestCase, take: Callable[[int, int], tuple[list[Entry], int, bool]]
) -> None:
    """
    C{take(count, size)}, a walk of L{sizedQueue} up to id 4 a piece at a
    time, stops each piece of at most 1000 bytes before the entry that
    would pass that bound, unless it is the first: ids 1 and 2, then 3
    alone (5000 bytes), then 4, and the walk is done.
    """
    for expected in (([1, 2], 2, False), ([3], 3, False), ([4], 4, True)):
        entries, after, done = take(100, 1000)
        case.assertEqual(([entry.id for entry in entries], after, done), expected)


class CursorTests(SynchronousTestCase):
    """
    L{entriesAfter} walks a live queue in id order, a bounded piece at a
    time.
    """

    def test_walk(self) -> None:
        """
        Pieces of at most C{count} entries, in id order across priority
        levels and held entries, cover the queue up to C{last} once.
        """
        from qha.broker.vhost import VirtualHost

        vhost = VirtualHost()
        queue = vhost.declareQueue("q", arguments={"x-max-priority": 3})
        for index in range(30):
            vhost.publish("", "q", persistentMessage(b"m", "q", persistent=False, priority=index % 3))
        held = [queue.get() for _ in range(4)]
        assert None not in held
        seen: list[int] = []
        after = 0
        done = False
        while not done:
            entries, after, done = entriesAfter(queue, after, 28, 7, 10**9)
            self.assertLessEqual(len(entries), 7)
            seen += [entry.id for entry in entries]
        self.assertEqual(seen, list(range(1, 29)))
        self.assertEqual(after, 28)

    def test_sizeBound(self) -> None:
        """
        The size bound stops a piece before the entry that would pass it,
        unless it is the first (L{assertSizeBound}).
        """
        queue = sizedQueue()
        cursor = [0]

        def take(count: int, size: int) -> tuple[list[Entry], int, bool]:
            entries, cursor[0], done = entriesAfter(queue, cursor[0], 4, count, size)
            return entries, cursor[0], done

        assertSizeBound(self, take)


class CopiedWalkTests(SynchronousTestCase):
    """
    L{CopiedWalk} walks a queue's entries as they were when it started, in
    id order, a bounded piece at a time, passing over those it is told
    left the queue.
    """

    def queue(self, count: int, **arguments: Any) -> Any:
        """
        A queue holding C{count} transient messages (priorities 0 to 2 in
        turn if C{arguments} give it priorities).
        """
        from qha.broker.vhost import VirtualHost

        vhost = VirtualHost()
        queue = vhost.declareQueue("q", arguments=arguments or None)
        for index in range(count):
            vhost.publish("", "q", persistentMessage(b"m", "q", persistent=False, priority=index % 3))
        return queue

    def walk(self, walk: CopiedWalk, count: int) -> list[int]:
        """
        Walk C{walk} to its end in pieces of at most C{count} entries.
        """
        seen: list[int] = []
        done = False
        while not done:
            entries, after, done = walk.take(count, 10**9)
            self.assertLessEqual(len(entries), count)
            self.assertEqual(after, walk.after)
            seen += [entry.id for entry in entries]
        return seen

    def test_walk(self) -> None:
        """
        Pieces of at most C{count} entries, in id order across priority
        levels and held entries, cover the queue up to C{last} once.
        """
        queue = self.queue(30, **{"x-max-priority": 3})
        held = [queue.get() for _ in range(4)]
        assert None not in held
        walk = CopiedWalk(queue, 28)
        self.assertEqual(self.walk(walk, 7), list(range(1, 29)))
        self.assertEqual(walk.after, 28)

    def test_sizeBound(self) -> None:
        """
        The size bound stops a piece before the entry that would pass it,
        unless it is the first (L{assertSizeBound}).
        """
        assertSizeBound(self, CopiedWalk(sizedQueue(), 4).take)

    def test_changesAfterStart(self) -> None:
        """
        The queue changes after the walk started: entries consumed or
        dropped before the walk reaches them (as the walker is told) are
        passed over; one taken and given back is walked once, as it is
        then (redelivered); those enqueued later are not part of it.
        """
        queue = self.queue(20)
        walk = CopiedWalk(queue, 20)
        entries, after, done = walk.take(5, 10**9)
        self.assertEqual([entry.id for entry in entries], [1, 2, 3, 4, 5])
        taken = [queue.get() for _ in range(8)]
        assert None not in taken
        # 6 and 7 consumed, 8 given back, the rest held.
        queue.settleAll(taken[5:7])  # type: ignore[arg-type]
        walk.gone(taken[:7])  # type: ignore[arg-type]
        queue.release([taken[7]])  # type: ignore[list-item]
        queue.vhost.publish("", "q", message(b"late", "q"))
        self.assertEqual(self.walk(walk, 4), [8] + list(range(9, 21)))
        released = [entry for entry in queue.readyEntries() if entry.id == 8][0]
        self.assertTrue(released.redelivered)

    def test_purged(self) -> None:
        """
        After a purge, the walk passes over the ready entries it has not
        reached, and goes on over the held ones.
        """
        queue = self.queue(20)
        walk = CopiedWalk(queue, 20)
        walk.take(5, 10**9)
        taken = [queue.get() for _ in range(7)]
        assert None not in taken
        # 7 given back and taken again with the next seven: 1 to 14 held.
        queue.release([taken[6]])  # type: ignore[list-item]
        self.assertNotIn(None, [queue.get() for _ in range(8)])
        self.assertEqual(sorted(queue.held), list(range(1, 15)))
        queue.purge()
        walk.purged()
        self.assertEqual(self.walk(walk, 4), list(range(6, 15)))

    def test_startIsOneCopy(self) -> None:
        """
        The walk reads the queue's levels once, when it starts: taking a
        piece reads none of the queue's deques (indexing a deque walks it
        from the nearer end, so a bisection per piece made a catch-up of a
        large queue quadratic).
        """
        queue = self.queue(50)

        class Counting(list):  # type: ignore[type-arg]
            """
            A level that counts the reads of it.
            """

            reads = 0

            def __getitem__(self, index: Any) -> Any:
                Counting.reads += 1
                return super().__getitem__(index)

            def __iter__(self) -> Any:
                Counting.reads += 1
                return super().__iter__()

        queue.levels[0] = Counting(queue.levels[0])
        walk = CopiedWalk(queue, 50)
        started = Counting.reads
        self.assertEqual(self.walk(walk, 7), list(range(1, 51)))
        self.assertEqual(Counting.reads, started)


class VerbatimStoreTests(SynchronousTestCase):
    """
    A backup's store takes a catch-up batch's leading run of enqueues of
    persistent messages on durable queues as the bytes came
    (L{BackupLink.verbatimCatchUp}, L{Verbatim}): its journal says what
    it would have said had it observed and encoded each enqueue.
    """

    def catchUp(self, verbatim: bool) -> tuple[list[tuple[Any, ...]], int, dict[str, Any]]:
        """
        Catch a backup with a store up (in batches of 40) on a primary
        holding a durable queue of persistent messages with transient ones
        and messages held by a consumer among them, a durable queue in
        another virtual host, and a non-durable queue.

        @param verbatim: L{BackupLink.verbatimCatchUp}.
        @return: the events of the backup's journal, its count of live
            bytes, and what the journal recovers (queue to contents).
        """
        from qha.broker.vhost import VirtualHost
        from qha.broker.vhosts import VirtualHosts

        self.patch(ReplicationSource, "batchMessages", 40)
        self.patch(BackupLink, "verbatimCatchUp", verbatim)
        recordFreezes(self)
        cluster = InMemoryCluster(self)
        primary = cluster.primary()
        backup = cluster.node()
        journal = MemoryJournal()
        store = Store(journal, cluster.clock)
        store.attach(backup.vhost)
        backup.store = store
        taken: list[int] = []
        appliedEncoded = store.appliedEncoded

        def counting(events: bytes, start: int, end: int, count: int, bodyBytes: int) -> None:
            taken.append(count)
            appliedEncoded(events, start, end, count, bodyBytes)

        self.patch(store, "appliedEncoded", counting)
        vhost = primary.vhost
        durable = vhost.declareQueue("d", durable=True, arguments=ALL)
        vhost.declareQueue("t", arguments=ALL)
        other = VirtualHosts.of(vhost).ensure("other")
        other.declareQueue("o", durable=True, arguments=ALL)
        for index in range(150):
            vhost.publish(
                "", "d", persistentMessage(b"d%d" % index, "d", persistent=index % 37 != 5)
            )
        for index in range(30):
            vhost.publish("", "t", persistentMessage(b"t%d" % index, "t"))
            other.publish("", "o", persistentMessage(b"o%d" % index, "o"))
        for _ in range(3):
            self.assertIsNotNone(durable.get())
        cluster.connect(primary, backup)
        self.assertEqual(backup.role.name, READY)
        cluster.finish()
        # The leading runs of batches 2 to 4 (41-42, 81-116, 121-150) were
        # taken as they came, or none.
        self.assertEqual(sum(taken), 68) if verbatim else self.assertEqual(taken, [])
        records, _ = scanRecords(b"".join(journal.records), "<memory>")
        # The message events and their scopes (the declarations carry
        # uuids, new each run).
        kinds = (ev.ENQUEUED, ev.DEQUEUED, ev.ACQUIRED, ev.DEQUEUED_RANGE, ev.ACQUIRED_RANGE, ev.VHOST)
        events = [
            event for record in records for event in ev.readEvents(record.events) if event[0] in kinds
        ]
        recovered = VirtualHost()
        copy = MemoryJournal()
        for record in journal.records:
            copy.append(record)
        Store(copy, cluster.clock).recover(recovered)
        contents = {
            f"{each.name} {queue.name}": queueContents(queue)
            for each in VirtualHosts.of(recovered)
            for queue in each.queues.values()
        }
        return events, store.liveBytes, contents

    def test_sameJournal(self) -> None:
        """
        The journal holds the same message events either way, the store
        counts the same live bytes, and it recovers the same queues: the
        transient messages and the messages of the non-durable queue are
        not in it.
        """
        verbatim = self.catchUp(True)
        encoded = self.catchUp(False)
        self.assertEqual(verbatim[0], encoded[0])
        self.assertEqual(verbatim[1], encoded[1])
        self.assertEqual(verbatim[2], encoded[2])
        kept = [id for id, _, _ in verbatim[2]["/ d"]]
        self.assertEqual(len(kept), 146)
        self.assertNotIn(6, kept)
        self.assertNotIn("/ t", verbatim[2])
        self.assertEqual(len(verbatim[2]["other o"]), 30)

    def test_runs(self) -> None:
        """
        L{Verbatim} counts the leading run of new persistent enqueues on a
        durable queue, and ends it (before applying it) at the first other
        event: a transient message, one acquired at once, one the queue had
        already, one of a queue not kept, the caught-up marker.
        """
        from qha.broker.vhost import VirtualHost
        from qha.changes.replay import Replicator, Verbatim

        vhost = VirtualHost()
        vhost.replica = True
        vhost.declareQueue("d", durable=True, replica=True)
        vhost.declareQueue("t", replica=True)
        replicator = Replicator(vhost, lambda: None)
        persistent = persistentMessage(b"p", "d")
        transient = persistentMessage(b"t", "d", persistent=False)

        def run(data: bytes) -> Verbatim:
            """
            Apply C{data} with a L{Verbatim}; it, and how often it closed.
            """
            closed: list[int] = []
            verbatim = Verbatim(lambda: closed.append(verbatim.end))
            for _ in replicator.steps(data, 0, verbatim):
                pass
            self.assertLessEqual(len(closed), 1)
            return verbatim

        def encoded(*entries: tuple[str, int, Any, bool]) -> bytes:
            """
            The events of C{entries} (queue, id, message, acquired at
            once), encoded.
            """
            writer = ev.EventWriter()
            for queue, id, message, acquired in entries:
                writeEnqueued(writer, queue, id, False, message.addressing, message.header, message.body)
                if acquired:
                    writer.entryEvent(ev.ACQUIRED, queue, id)
            return writer.take()

        whole = encoded(("d", 1, persistent, False), ("d", 2, persistent, False))
        verbatim = run(whole)
        self.assertEqual((verbatim.end, verbatim.count, verbatim.bytes, verbatim.open), (len(whole), 2, 2, True))
        cases = [
            ("transient", ("d", 11, transient, False)),
            ("acquired", ("d", 12, persistent, True)),
            ("had it", ("d", 2, persistent, False)),
            ("not kept", ("t", 13, persistent, False)),
        ]
        for index, (why, ending) in enumerate(cases):
            lead = encoded(("d", 20 + 2 * index, persistent, False))
            data = encoded(("d", 20 + 2 * index, persistent, False), ending, ("d", 21 + 2 * index, persistent, False))
            verbatim = run(data)
            self.assertEqual((verbatim.end, verbatim.count, verbatim.open), (len(lead), 1, False), why)
        # A malformed enqueue within the run: the run ends before it, and
        # it is refused with the reason readEvents gives.
        lead = encoded(("d", 30, persistent, False))
        bad = bytearray(encoded(("d", 31, persistent, False)))
        bad[4:12] = (-1).to_bytes(8, "big", signed=True)
        closed: list[int] = []
        verbatim = Verbatim(lambda: closed.append(verbatim.end))
        error = self.assertRaises(
            ev.MalformedEvents, list, replicator.steps(lead + bytes(bad), 0, verbatim)
        )
        self.assertIn("id -1 is negative", str(error))
        self.assertEqual((verbatim.end, verbatim.count, closed), (len(lead), 1, [len(lead)]))
        # The run pauses as the steps do, with its count so far.
        data = encoded(*[("d", id, persistent, False) for id in range(50, 55)])
        verbatim = Verbatim()
        paused = []
        for _ in replicator.steps(data, 2, verbatim):
            paused.append((verbatim.end, verbatim.count))
        self.assertEqual(paused, [(len(data) * 2 // 5, 2), (len(data) * 4 // 5, 4)])
        self.assertEqual((verbatim.end, verbatim.count, verbatim.open), (len(data), 5, True))
        writer = ev.EventWriter()
        writeEnqueued(writer, "d", 40, False, persistent.addressing, persistent.header, persistent.body)
        lead = writer.take()
        writeEnqueued(writer, "d", 40 + 1, False, persistent.addressing, persistent.header, persistent.body)
        writer.event(ev.CAUGHT_UP)
        verbatim = run(lead + writer.take())
        self.assertEqual((verbatim.end, verbatim.count, verbatim.open), (len(lead) * 2, 2, False))
        # No run on a broker that is not a replica (a waiting consumer may
        # take an enqueue at once there).
        vhost.replica = False
        verbatim = run(encoded(("d", 60, persistent, False)))
        self.assertEqual((verbatim.end, verbatim.count, verbatim.open), (0, 0, False))
        self.assertIn(60, vhost.queues["d"].ids())


class SteppedApplyTests(SynchronousTestCase):
    """
    A backup applies a catch-up batch L{BackupLink.catchupStep} events per
    reactor turn: other connections are served between the steps, boxes
    that come meanwhile wait their turn, and the batch is answered only
    once all of it is applied.
    """

    def setUp(self) -> None:
        """
        A cluster in memory with an active primary and a joining backup;
        batches of at most 40 messages, applied 10 events a turn.
        """
        self.patch(ReplicationSource, "batchMessages", 40)
        self.patch(ReplicationSource, "catchupWindow", 2)
        self.patch(BackupLink, "catchupStep", 10)
        self.freezes = recordFreezes(self)
        self.cluster = InMemoryCluster(self)
        self.primary = self.cluster.primary()
        self.backup = self.cluster.node()
        self.primary.vhost.declareQueue("q", arguments=ALL)
        for index in range(100):
            self.primary.vhost.publish("", "q", message(b"%d" % index, "q"))

    def midBatch(self) -> Link:
        """
        Connect the backup and move bytes one round at a time until it has
        applied part of a catch-up batch and not the rest.
        """
        link = self.cluster.connect(self.primary, self.backup, flush=False)
        for _ in range(1000):
            if link.link._batch is not None and link.link._batch.call is not None:
                return link
            link.pump.pump()
        self.fail("no batch applied in steps within the bound")

    def test_queryBetweenSteps(self) -> None:
        """
        Half way through a batch the backup's reactor is free: a
        C{qha-admin query} on another connection is answered at once (no
        step is run for it), showing the catch-up under way; the batch's
        answer goes out only after its last step.
        """
        link = self.midBatch()
        queue = self.backup.vhost.queues["q"]
        partial = queue.messageCount
        self.assertNotEqual(partial % 40, 0)
        source = self.source()
        assert source.catchup is not None
        acknowledged = source.catchup.ackedMessages
        self.assertLess(acknowledged, partial)
        client, _, pump = connectedServerAndClient(
            lambda: nodeConnection(None, [adminLocator(self.backup)], authenticated=True),  # type: ignore[arg-type]
            amp.AMP,
        )
        answers: list[Any] = []
        client.callRemote(Query).addBoth(answers.append)
        for _ in range(3):
            pump.pump(advanceClock=False)
        [answer] = answers
        state = json.loads(answer["state"])
        self.assertEqual(state["role"], "catchup")
        self.assertEqual(queue.messageCount, partial)
        # The rest of the batch, and only then its answer.
        link.flush()
        self.assertEqual(self.backup.role.name, READY)
        self.assertEqual(queue.messageCount, 100)
        self.assertEqual(source.catchup.ackedMessages, 100)
        self.assertEqual(snapshotOf(self.backup.vhost), snapshotOf(self.primary.vhost))
        self.cluster.finish()

    def test_stepsAreBounded(self) -> None:
        """
        Each step (a timed call of its own, so the reactor serves its other
        connections between two) applies at most C{catchupStep} messages.
        """
        counts = []
        step = BackupLink._step

        def countingStep(link: BackupLink) -> None:
            """
            Count the messages one step applies.
            """
            queue = self.backup.vhost.queues.get("q")
            before = queue.messageCount if queue is not None else 0
            step(link)
            counts.append(self.backup.vhost.queues["q"].messageCount - before)

        self.patch(BackupLink, "_step", countingStep)
        self.cluster.connect(self.primary, self.backup)
        self.assertEqual(self.backup.role.name, READY)
        self.assertEqual(sum(counts), 100)
        self.assertEqual(max(counts), 10)
        # 40 + 40 + 20 messages and the marker: 4 + 4 + 3 steps.
        self.assertEqual(len(counts), 11)
        self.cluster.finish()

    def test_freezeAfterBatches(self) -> None:
        """
        The objects of each batch applied are moved out of the collector's
        sight (C{gc.freeze}), once a batch; not with C{freezeCaughtUp} off.
        """
        self.cluster.connect(self.primary, self.backup)
        self.assertEqual(self.backup.role.name, READY)
        self.assertEqual(len(self.freezes), 3)
        self.cluster.finish()

    def test_noFreeze(self) -> None:
        """
        With C{freezeCaughtUp} off nothing is frozen.
        """
        self.patch(BackupLink, "freezeCaughtUp", False)
        self.cluster.connect(self.primary, self.backup)
        self.assertEqual(self.backup.role.name, READY)
        self.assertEqual(self.freezes, [])
        self.cluster.finish()

    def source(self) -> ReplicationSource:
        """
        The primary's one source.
        """
        [source] = self.primary.sources.values()
        return source

    def test_connectionLostMidBatch(self) -> None:
        """
        A connection lost half way through a batch: the rest of what was
        received is applied at once, in order, no step is left scheduled,
        the backup is not ready, and subscribed again it is sent only what
        it lacks.
        """
        link = self.midBatch()
        backupLink = link.link
        transport = link.backupSide.transport
        assert transport is not None
        transport.loseConnection()
        for _ in range(100):
            if backupLink.closed:
                break
            link.pump.pump(advanceClock=False)
        self.assertTrue(backupLink.closed)
        self.assertIsNone(backupLink._batch)
        self.assertEqual(backupLink._backlog, [])
        have = self.backup.vhost.queues["q"].messageCount
        self.assertEqual(have % 40, 0)
        self.assertNotEqual(self.backup.role.name, READY)
        link.flush()
        again = self.cluster.connect(self.primary, self.backup)
        self.assertEqual(self.backup.role.name, READY)
        sent = [event for box in again.boxes for event in box if event[0] == ev.ENQUEUED]
        self.assertEqual(len(sent), 100 - have)
        self.assertEqual(snapshotOf(self.backup.vhost), snapshotOf(self.primary.vhost))
        self.cluster.finish()



class SteppedBatchOrderTests(SynchronousTestCase):
    """
    Boxes that come while a batch is applied in steps wait for it.
    """

    def setUp(self) -> None:
        """
        A backup following a primary (an in-memory cluster), caught up in
        one box; batches applied 10 events a turn.
        """
        self.patch(BackupLink, "catchupStep", 10)
        self.freezes = recordFreezes(self)
        self.cluster = InMemoryCluster(self)
        self.primary = self.cluster.primary()
        self.backup = self.cluster.node()
        self.cluster.connect(self.primary, self.backup)

    def test_liveBoxWaitsForBatch(self) -> None:
        """
        A box that comes while a batch is applied in steps is applied after
        all of it (its dequeue finds the entry the batch brings), and
        answered only then; a transient box is answered at once and applied
        after it too.
        """
        backupLink = self.backup.link
        assert backupLink is not None
        self.backup.vhost.declareQueue("w", arguments=ALL)
        writer = ev.EventWriter()
        for index in range(25):
            writeEnqueued(writer, "w", index + 1, False, b"", b"", b"m%d" % index)
        epoch = self.primary.epoch
        seq = backupLink.lastSeq
        batch = backupLink.receivedBatch(epoch, seq + 1, writer.take(), None, 25, 100, False)
        assert batch is not None
        self.assertNoResult(batch)
        writer.entryEvent(ev.DEQUEUED, "w", 25)
        durable = backupLink.received(epoch, seq + 2, writer.take())
        writer.entryEvent(ev.DEQUEUED, "w", 24)
        transient = backupLink.received(epoch, seq + 3, writer.take(), transient=True)
        self.assertIsNone(transient)
        assert durable is not None
        self.assertNoResult(durable)
        queue = self.backup.vhost.queues["w"]
        self.assertEqual(queue.messageCount, 10)
        # The Clock runs every step now due, the ones they schedule too.
        self.cluster.clock.advance(0)
        self.successResultOf(batch)
        self.successResultOf(durable)
        self.assertEqual([entry[0] for entry in queueContents(queue)], list(range(1, 24)))
        self.cluster.finish()

    def test_resentWhileApplying(self) -> None:
        """
        A batch sent again while it is still being applied is answered
        only once it is applied (not at once, as a box already applied is).
        """
        backupLink = self.backup.link
        assert backupLink is not None
        self.backup.vhost.declareQueue("w", arguments=ALL)
        writer = ev.EventWriter()
        for index in range(25):
            writeEnqueued(writer, "w", index + 1, False, b"", b"", b"m%d" % index)
        data = writer.take()
        epoch = self.primary.epoch
        seq = backupLink.lastSeq + 1
        batch = backupLink.receivedBatch(epoch, seq, data, None, 25, 100, False)
        again = backupLink.receivedBatch(epoch, seq, data, None, 25, 100, False)
        assert batch is not None and again is not None
        self.assertNoResult(again)
        self.cluster.clock.advance(0)
        self.successResultOf(batch)
        self.successResultOf(again)
        self.assertEqual(self.backup.vhost.queues["w"].messageCount, 25)
        self.assertIsNone(backupLink.receivedBatch(epoch, seq, data, None, 25, 100, False))
        self.cluster.finish()


class ReplicaAppendTests(SynchronousTestCase):
    """
    L{Queue.replicaAppend} adds a run of the primary's new entries at once
    exactly as L{Queue.replicaEnqueue} adds them one by one, or, when that
    is not simple, adds nothing and says so.
    """

    def replica(self, pager: Any = None, **arguments: Any) -> Any:
        """
        A durable queue C{d} of a replica virtual host (with C{pager}),
        declared with C{arguments}.
        """
        from qha.broker.vhost import Resources, VirtualHost

        vhost = VirtualHost(resources=Resources(highWatermark=3000, pager=pager))
        vhost.replica = True
        return vhost.declareQueue("d", durable=True, replica=True, arguments=arguments or None)

    def entries(self, ids: list[int], expiresAt: float | None = None) -> list[Any]:
        """
        New entries with C{ids}, bodies of 100 bytes, each redelivered if
        its id is odd.
        """
        from qha.broker.queue import Entry

        return [
            Entry(persistentMessage(b"%d" % id + b"." * (100 - len(b"%d" % id)), "d"), id, id % 2 == 1, 0, expiresAt)
            for id in ids
        ]

    def state(self, queue: Any) -> tuple[Any, ...]:
        """
        What the queue and its broker's resources say after the entries
        were added.
        """
        resources = queue.vhost.resources
        return (
            queueContents(queue),
            queue.messageCount,
            queue.readyCount,
            queue.readyBytes,
            queue.nextId,
            queue.pagedCount,
            sorted(queue._byId or {}),
            resources.used,
            resources.blocked,
        )

    def test_sameAsOneByOne(self) -> None:
        """
        Entries added at once leave the queue and the broker's resources as
        adding them one by one does (the watermark crossed on the way
        blocks publishers just the same), and their ids past the last.
        """
        ids = [3, 4, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31]
        at = self.replica()
        oneByOne = self.replica()
        for queue in (at, oneByOne):
            queue.replicaEnqueue(persistentMessage(b"first", "d"), 1)
        entries = self.entries(ids)
        self.assertTrue(at.replicaAppend(entries, 100 * len(ids), False))
        for entry in self.entries(ids):
            oneByOne.replicaEnqueue(entry.message, entry.id, entry.redelivered, None, False)
        self.assertEqual(self.state(at), self.state(oneByOne))
        self.assertTrue(at.vhost.resources.blocked)
        self.assertEqual(at.nextId, 32)
        self.assertIs(at._byId[7], entries[2])  # type: ignore[index]

    def test_refused(self) -> None:
        """
        Entries whose first id is not past the queue's last (one may be
        there already), one of which a consumer on the primary holds, with
        deadlines on a queue on its fast path, or on a queue with priority
        levels, a last-value key or observers: nothing is added.
        """
        queue = self.replica()
        queue.replicaEnqueue(persistentMessage(b"five", "d"), 5)
        before = self.state(queue)
        self.assertFalse(queue.replicaAppend(self.entries([5, 6]), 200, False))
        self.assertFalse(queue.replicaAppend(self.entries([4]), 100, False))
        queue.held[7] = self.entries([7])[0]
        self.assertFalse(queue.replicaAppend(self.entries([6, 7]), 200, False))
        del queue.held[7]
        self.assertTrue(queue.plain)
        self.assertFalse(queue.replicaAppend(self.entries([6], expiresAt=50.0), 100, True))
        self.assertEqual(self.state(queue), before)
        for arguments in ({"x-max-priority": 5}, {"qpid.last_value_queue_key": "k"}):
            other = self.replica(**arguments)
            self.assertFalse(other.replicaAppend(self.entries([1]), 100, False))
            self.assertEqual(other.messageCount, 0)
        observed = self.replica()
        observed.vhost.observers.append(RecordingObserver())
        self.assertFalse(observed.replicaAppend(self.entries([1]), 100, False))
        self.assertEqual(observed.messageCount, 0)

    def test_budget(self) -> None:
        """
        With a pager, entries are added at once only if the queue stays
        within its budget with all of them; past it, nothing is added (one
        by one, the last ones would be paged).
        """
        from qha.broker.paging import Pager

        queue = self.replica(Pager(MemoryBodyStore(), budget=2000, window=4))
        queue._leavePlain()
        self.assertTrue(queue.replicaAppend(self.entries([1, 2, 3, 4]), 400, False))
        self.assertEqual(queue.pagedCount, 0)
        before = self.state(queue)
        self.assertFalse(queue.replicaAppend(self.entries(list(range(5, 30))), 2500, False))
        self.assertEqual(self.state(queue), before)
        limited = self.replica(Pager(MemoryBodyStore()), **{"x-max-in-memory-length": 3})
        self.assertFalse(limited.replicaAppend(self.entries([1, 2, 3, 4]), 400, False))
        self.assertTrue(limited.replicaAppend(self.entries([1, 2, 3]), 300, False))


class LeadingRunTests(SynchronousTestCase):
    """
    L{Replicator.steps} applies a box's leading run of new persistent
    enqueues (L{Verbatim}) as the events say whatever the queue makes of
    them at once: entries it takes together, entries it takes one by one
    (paged, already there), and addressing, header and queue changing
    within the run.
    """

    def apply(self, data: bytes, every: int, pager: Any = None) -> tuple[Any, Any]:
        """
        Apply C{data} with a L{Verbatim} to a replica with durable queues
        C{d} and C{e} (whose resources page with C{pager}), pausing every
        C{every} events.

        @return: the verbatim and the replica's virtual host.
        """
        from qha.broker.vhost import Resources, VirtualHost
        from qha.changes.replay import Replicator, Verbatim

        vhost = VirtualHost(resources=Resources(pager=pager))
        vhost.replica = True
        for name in ("d", "e"):
            vhost.declareQueue(name, durable=True, replica=True)
        replicator = Replicator(vhost, lambda: None)
        replicator.apply(self.encoded([("d", 1, persistentMessage(b"first", "d"))]))
        verbatim = Verbatim()
        for _ in replicator.steps(data, every, verbatim):
            pass
        return verbatim, vhost

    def encoded(self, entries: list[tuple[str, int, Message]]) -> bytes:
        """
        The enqueue events of C{entries} (queue name, id, message).
        """
        writer = ev.EventWriter()
        for queue, id, each in entries:
            writeEnqueued(writer, queue, id, False, each.addressing, each.header, each.body)
        return writer.take()

    def test_shapesAndQueues(self) -> None:
        """
        A run whose queue, addressing and header change within it (and
        back) is applied whole, each message with its own addressing and
        header, in steps or not.
        """
        kinds = [
            persistentMessage(b"a", "d"),
            persistentMessage(b"b", "other-key"),
            persistentMessage(b"c", "d", priority=3),
        ]
        entries = [("d" if id % 7 else "e", id, kinds[id // 5 % 3]) for id in range(2, 60)]
        data = self.encoded(entries)
        for every in (0, 1, 4, 512):
            verbatim, vhost = self.apply(data, every)
            self.assertEqual((verbatim.end, verbatim.count, verbatim.open), (len(data), 58, True), every)
            held = {
                id: each for name in ("d", "e") for id, each in
                ((entry.id, entry.message) for entry in vhost.queues[name].levels[0])
            }
            for queue, id, each in entries:
                self.assertEqual(
                    (held[id].addressing, held[id].header, held[id].body),
                    (each.addressing, each.header, each.body),
                )
            self.assertEqual(vhost.queues["e"].ids(), [id for id in range(2, 60) if id % 7 == 0])

    def test_oneByOne(self) -> None:
        """
        Entries the queue does not take at once are applied one by one in
        the run, as they always were: past the paging budget, up to the
        first one paged, where the run ends (as ever: the store then
        observes it and those after it, which L{Replicator.steps} applies
        as usual); after an entry the queue had already or an id out of
        order, up to the one it had.
        """
        from qha.broker.paging import Pager

        each = persistentMessage(b"x" * 100, "d")
        entry = self.encoded([("d", 2, each)])
        data = self.encoded([("d", id, each) for id in range(2, 40)])
        for every in (0, 7):
            verbatim, vhost = self.apply(data, every, Pager(MemoryBodyStore(), budget=1000, window=4))
            queue = vhost.queues["d"]
            self.assertEqual((verbatim.end, verbatim.count, verbatim.open), (15 * len(entry), 15, False))
            self.assertEqual(queue.ids(), list(range(1, 40)))
            self.assertEqual(queue.pagedCount, 23)
        # Ids 2-4 and 6-7 go at once, 5 one by one; 1 is there already
        # (the steps then apply it, a change of nothing, and 8).
        lead = self.encoded([("d", id, each) for id in (2, 3, 4, 6, 7, 5)])
        data = lead + self.encoded([("d", id, each) for id in (1, 8)])
        verbatim, vhost = self.apply(data, 0)
        self.assertEqual((verbatim.end, verbatim.count, verbatim.open), (len(lead), 6, False))
        self.assertEqual(vhost.queues["d"].ids(), list(range(1, 9)))
