"""
Tests for paging message bodies out of memory (issue 15): the page files
(L{qha.store.paging.PageFiles}) and the in-memory store
(L{qha.testing.MemoryBodyStore}) through one shared set of tests, and the
queue that pages past its budget (L{qha.broker.queue.Queue} with a
L{qha.broker.paging.Pager}): order across memory and disk, acknowledgements,
requeues, C{basic.get}, purge and delete, TTL and length limits,
dead-lettering, priorities, lazy mode, the broker-wide budget and the
watermark, replicas, and the journal of paged persistent messages.

Everything is synchronous: the page files are real files in a temporary
directory, time is a L{Clock}.
"""

from __future__ import annotations

import os
from typing import Any

from pamqp import commands
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from qha.broker.errors import PreconditionFailed
from qha.broker.message import Message, PagedMessage
from qha.broker.paging import IBodyStore, PageError, Pager
from qha.broker.queue import Queue
from qha.broker.vhost import Resources, VirtualHost
from qha.store.journal import MemoryJournal, Store
from qha.ha.primary import ReplicationSource
from qha.ha.role import READY
from qha.store.paging import PageFiles, PageFilesService, fixMmapThreshold
from qha.test.support import ALL, InMemoryCluster, PagingTestCase, queueContents
from qha.testing import MemoryBodyStore, RecordingObserver


class BodyStoreTestsMixin:
    """
    What every L{IBodyStore} does: bodies come back as written, in the
    order asked for, and are counted until freed.
    """

    def makeStore(self) -> Any:
        """
        The store under test.
        """
        raise NotImplementedError()

    def test_interface(self) -> None:
        """
        The store provides L{IBodyStore}.
        """
        self.assertTrue(verifyObject(IBodyStore, self.makeStore()))  # type: ignore[attr-defined]

    def test_readBack(self) -> None:
        """
        Bodies written are read back intact, in the order the read asks
        for them, however it mixes them.
        """
        store = self.makeStore()
        bodies = [bytes([n]) * (n * 37) for n in range(1, 20)]
        pages = [(store.write(body), len(body)) for body in bodies]
        self.assertEqual(store.read(pages), bodies)  # type: ignore[attr-defined]
        mixed = [pages[5], pages[0], pages[18], pages[3]]
        self.assertEqual(  # type: ignore[attr-defined]
            store.read(mixed), [bodies[5], bodies[0], bodies[18], bodies[3]]
        )
        self.assertEqual(store.read([]), [])  # type: ignore[attr-defined]

    def test_counts(self) -> None:
        """
        C{records} and C{size} count what is paged out until it is freed;
        an empty body is a body.
        """
        store = self.makeStore()
        first = store.write(b"abc")
        second = store.write(b"")
        self.assertEqual((store.records, store.size), (2, 3))  # type: ignore[attr-defined]
        self.assertEqual(store.read([(second, 0)]), [b""])  # type: ignore[attr-defined]
        store.free(first, 3)
        store.free(second, 0)
        self.assertEqual((store.records, store.size), (0, 0))  # type: ignore[attr-defined]


class MemoryBodyStoreTests(BodyStoreTestsMixin, SynchronousTestCase):
    """
    The in-memory fake behaves as the page files do.
    """

    def makeStore(self) -> MemoryBodyStore:
        """
        A fresh fake.
        """
        return MemoryBodyStore()

    def test_freedIsGone(self) -> None:
        """
        A freed body cannot be read back.
        """
        store = self.makeStore()
        location = store.write(b"x")
        store.free(location, 1)
        self.assertRaises(PageError, store.read, [(location, 1)])


class PageFilesTests(BodyStoreTestsMixin, SynchronousTestCase):
    """
    L{PageFiles}: append-only segments in a directory, removed when all
    their bodies are gone, checked when read.
    """

    def makeStore(self, segmentSize: int = 1024, bufferSize: int = 100) -> PageFiles:
        """
        Page files with small segments and a small write buffer, so that
        tests cross both.
        """
        self.directory = self.mktemp()
        return PageFiles(self.directory, segmentSize=segmentSize, bufferSize=bufferSize)

    def segmentFiles(self) -> list[str]:
        """
        The segment files in the directory, sorted.
        """
        return sorted(name for name in os.listdir(self.directory) if name.startswith("segment-"))

    def test_segmentsRotateAndGo(self) -> None:
        """
        Past its size a new segment starts; a segment whose bodies were all
        freed is deleted; the active one is cut back to nothing.
        """
        store = self.makeStore()
        pages = [(store.write(bytes([n]) * 200), 200) for n in range(12)]
        files = self.segmentFiles()
        self.assertEqual(len(files), 3)
        self.assertEqual(store.read(pages), [bytes([n]) * 200 for n in range(12)])
        for location, size in pages[:5]:
            store.free(location, size)
        self.assertEqual(self.segmentFiles(), files[1:])
        for location, size in pages[5:]:
            store.free(location, size)
        [active] = self.segmentFiles()
        self.assertEqual(os.path.getsize(os.path.join(self.directory, active)), 0)
        self.assertEqual((store.records, store.size), (0, 0))
        # And it is written again from its start.
        location = store.write(b"again")
        self.assertEqual(store.read([(location, 5)]), [b"again"])

    def test_unwrittenRecordsRead(self) -> None:
        """
        Records still in the write buffer are read back from it; records
        half in the file and half in the buffer too.
        """
        store = self.makeStore(bufferSize=10000)
        first = store.write(b"one")
        self.assertEqual(store.read([(first, 3)]), [b"one"])
        [name] = self.segmentFiles()
        self.assertEqual(os.path.getsize(os.path.join(self.directory, name)), 0)
        store.bufferSize = 20
        second = store.write(b"two" * 10)
        third = store.write(b"three")
        self.assertEqual(
            store.read([(first, 3), (second, 30), (third, 5)]), [b"one", b"two" * 10, b"three"]
        )

    def test_leftoversRemoved(self) -> None:
        """
        Segments a previous run left are removed when the store opens;
        other files are left alone.
        """
        store = self.makeStore()
        store.write(b"x" * 300)
        store._flush()
        with open(os.path.join(self.directory, "other"), "w") as other:
            other.write("kept")
        PageFiles(self.directory)
        self.assertEqual(self.segmentFiles(), [])
        self.assertEqual(os.listdir(self.directory), ["other"])

    def test_damagedRecord(self) -> None:
        """
        A body whose bytes changed on disk fails its checksum: the error
        names the file and the byte.
        """
        store = self.makeStore()
        store.write(b"a" * 150)
        location = store.write(b"b" * 150)
        [name] = self.segmentFiles()
        path = os.path.join(self.directory, name)
        with open(path, "r+b") as segment:
            segment.seek(158 + 8 + 20)
            segment.write(b"X")
        error = self.assertRaises(PageError, store.read, [(location, 150)])
        self.assertEqual(
            str(error), f"{path}: the paged body at byte 158 is damaged: it fails its checksum"
        )

    def test_wrongLength(self) -> None:
        """
        A record whose length is not the one written says so.
        """
        store = self.makeStore()
        location = store.write(b"a" * 150)
        store._flush()
        [name] = self.segmentFiles()
        path = os.path.join(self.directory, name)
        with open(path, "r+b") as segment:
            segment.write(b"\x00\x00\x00\x07")
        error = self.assertRaises(PageError, store.read, [(location, 150)])
        self.assertIn("its length says 7 bytes where 150 were written", str(error))

    def test_truncated(self) -> None:
        """
        A segment cut short gives an error that says where it ends and how
        far records were written.
        """
        store = self.makeStore()
        location = store.write(b"a" * 150)
        store._flush()
        [name] = self.segmentFiles()
        path = os.path.join(self.directory, name)
        os.truncate(path, 100)
        error = self.assertRaises(PageError, store.read, [(location, 150)])
        self.assertEqual(
            str(error),
            f"{path}: the page file is cut short: it ends at byte 100, but records to"
            " byte 158 were written there",
        )

    def test_gone(self) -> None:
        """
        A body of a segment that was deleted gives an error naming it.
        """
        store = self.makeStore()
        old = store.write(b"a" * 900)
        store.write(b"b" * 900)
        store.free(old, 900)
        error = self.assertRaises(PageError, store.read, [(old, 900)])
        self.assertIn("segment-00000001: the page file is gone", str(error))

    def test_oneReadForNeighbours(self) -> None:
        """
        Bodies that lie together are read with one C{pread}.
        """
        store = self.makeStore(segmentSize=1 << 20, bufferSize=1)
        pages = [(store.write(b"%d" % n * 50), len(b"%d" % n * 50)) for n in range(10)]
        calls = []
        original = os.pread

        def pread(fd: int, size: int, offset: int) -> bytes:
            calls.append((size, offset))
            return original(fd, size, offset)

        self.patch(os, "pread", pread)
        self.assertEqual(len(store.read(pages)), 10)
        self.assertEqual(len(calls), 1)

    def test_mmapThresholdFixed(self) -> None:
        """
        Opening page files fixes the C library's mmap threshold once for
        the process (where the C library has C{mallopt}): asking again
        answers the same without calling it again.
        """
        PageFiles(self.mktemp())
        fixed = fixMmapThreshold()
        self.assertIsInstance(fixed, bool)
        self.assertEqual(fixMmapThreshold(), fixed)

    def test_closeRemoves(self) -> None:
        """
        Closing (the broker stops) deletes the segments; the service does
        it when it stops.
        """
        store = self.makeStore()
        store.write(b"a" * 900)
        store.write(b"b" * 900)
        service = PageFilesService(store)
        service.startService()
        service.stopService()
        self.assertEqual(self.segmentFiles(), [])
        self.assertEqual(store.segments, {})


def message(body: bytes, routingKey: str = "q", **properties: Any) -> Message:
    """
    A message for the default exchange with C{properties}.
    """
    return Message.build("", routingKey, body, commands.Basic.Properties(**properties))


class PagingQueueTests(PagingTestCase):
    """
    A queue with a budget pages its backlog out and reads it back ahead of
    its consumers, and nothing else about it changes (the virtual host and
    the steps: L{PagingTestCase}).
    """

    def paged(self, queue: Queue) -> list[bool]:
        """
        Whether each ready entry of C{queue} is paged, in delivery order.
        """
        return [entry.message.paged for entry in queue.readyEntries()]

    def test_declareArguments(self) -> None:
        """
        The in-memory limits are whole numbers of at least 0; lazy mode
        pages at once (a length of 0).
        """
        for value in (-1, "many", 1.5):
            self.assertRaises(
                PreconditionFailed,
                self.vhost.declareQueue,
                "bad",
                arguments={"x-max-in-memory-length": value},
            )
        self.assertRaises(
            PreconditionFailed,
            self.vhost.declareQueue,
            "bad",
            arguments={"x-max-in-memory-bytes": -5},
        )
        lazy = self.vhost.declareQueue("lazy", arguments={"x-queue-mode": "lazy"})
        self.assertEqual((lazy.maxInMemoryLength, lazy.maxInMemoryBytes), (0, None))
        limited = self.vhost.declareQueue(
            "limited", arguments={"x-max-in-memory-length": 3, "x-max-in-memory-bytes": 100}
        )
        self.assertEqual((limited.maxInMemoryLength, limited.maxInMemoryBytes), (3, 100))
        self.assertFalse(limited.plain)

    def test_lengthBudgetKeepsOrder(self) -> None:
        """
        Past C{x-max-in-memory-length} new bodies are paged; a consumer
        gets every message in order, read back a window at a time; the
        watermark counts only what is in memory.
        """
        queue = self.vhost.declareQueue("q", arguments={"x-max-in-memory-length": 2})
        sent = self.publishAll("q", 20, size=100)
        self.assertEqual(self.paged(queue), [False, False] + [True] * 18)
        self.assertEqual((queue.pagedCount, queue.pagedBytes), (18, 1800))
        self.assertEqual(self.bodies.size, 1800)
        self.assertEqual(self.resources.used, 20 * self.resources.overhead + 200)
        self.assertEqual(queue.messageCount, 20)
        consumer, target = self.consume(queue)
        self.assertEqual(target.bodies(), sent)
        self.assertEqual([len(read) for read in self.bodies.reads], [4, 4, 4, 4, 2])
        self.ack(queue, consumer, target)
        self.assertEqual(queue.pagedCount, 0)
        self.assertEqual(queue.pagedBytes, 0)
        self.assertEmpty()

    def test_bytesBudget(self) -> None:
        """
        Past C{x-max-in-memory-bytes} new bodies are paged.
        """
        queue = self.vhost.declareQueue("q", arguments={"x-max-in-memory-bytes": 250})
        self.publishAll("q", 5, size=100)
        self.assertEqual(self.paged(queue), [False, False, True, True, True])

    def test_lazyPagesAtOnce(self) -> None:
        """
        A lazy queue pages every message that no consumer takes as it
        arrives; one a consumer is waiting for is delivered, not paged.
        """
        queue = self.vhost.declareQueue("q", arguments={"x-queue-mode": "lazy"})
        self.publishAll("q", 3)
        self.assertEqual(self.paged(queue), [True, True, True])
        consumer, target = self.consume(queue)
        self.ack(queue, consumer, target)
        reads = len(self.bodies.reads)
        self.publishAll("q", 2)
        self.assertEqual(len(target.deliveries), 5)
        self.assertEqual(len(self.bodies.reads), reads)
        self.assertEqual(self.bodies.records, 0)
        self.ack(queue, consumer, target)
        self.assertEmpty()

    def test_requeueAndRedelivery(self) -> None:
        """
        Paged messages delivered, then given back, return to their places
        marked redelivered, and come out in order again.
        """
        queue = self.vhost.declareQueue("q", arguments={"x-max-in-memory-length": 1})
        sent = self.publishAll("q", 12)
        consumer, target = self.consume(queue, credit=6)
        taken = [entry for _, entry in target.deliveries]
        self.assertEqual([entry.message.body for entry in taken], sent[:6])
        self.assertFalse(any(entry.message.paged for entry in taken))
        self.giveBack(queue, consumer, target, taken)
        self.assertEqual(target.bodies(), sent)
        self.assertEqual(
            [entry.redelivered for _, entry in target.deliveries], [True] * 6 + [False] * 6
        )
        self.ack(queue, consumer, target)
        self.assertEmpty()

    def test_get(self) -> None:
        """
        C{basic.get} reads paged messages back, in order.
        """
        queue = self.vhost.declareQueue("q", arguments={"x-queue-mode": "lazy"})
        sent = self.publishAll("q", 7)
        got = []
        while (entry := queue.get()) is not None:
            self.assertFalse(entry.message.paged)
            got.append(entry.message.body)
            queue.settle(entry)
        self.assertEqual(got, sent)
        self.assertEmpty()

    def test_purgeAndDeleteFreePages(self) -> None:
        """
        Purging and deleting a queue free its pages and its memory; held
        messages stay with their consumer.
        """
        queue = self.vhost.declareQueue("q", arguments={"x-queue-mode": "lazy"})
        self.publishAll("q", 10)
        consumer, target = self.consume(queue, credit=2)
        self.assertEqual(self.vhost.purgeQueue("q"), 8)
        self.assertEqual(self.bodies.records, 0)
        self.assertEqual(queue.pagedCount, 0)
        self.ack(queue, consumer, target)
        self.assertEmpty()
        other = self.vhost.declareQueue("other", arguments={"x-queue-mode": "lazy"})
        self.publishAll("other", 10)
        self.assertEqual(self.bodies.records, 10)
        self.assertEqual(self.vhost.deleteQueue("other"), 10)
        self.assertTrue(other.deleted)
        self.assertEmpty()

    def test_ttlExpiresPaged(self) -> None:
        """
        Paged messages expire on time and are dead-lettered with their
        bodies; their pages are freed.
        """
        self.vhost.declareExchange("dlx", "fanout")
        dlq = self.vhost.declareQueue("dlq")
        self.vhost.bindQueue("dlq", "dlx", "")
        queue = self.vhost.declareQueue(
            "q",
            arguments={"x-queue-mode": "lazy", "x-message-ttl": 1000, "x-dead-letter-exchange": "dlx"},
        )
        sent = self.publishAll("q", 5)
        self.assertEqual(queue.pagedCount, 5)
        self.clock.advance(1)
        self.assertEqual(queue.messageCount, 0)
        self.assertEqual([entry.message.body for entry in dlq.readyEntries()], sent)
        self.assertEqual(self.bodies.records, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.vhost.purgeQueue("dlq")
        self.assertEmpty()

    def test_maxLengthDropsPaged(self) -> None:
        """
        A length limit drops the oldest messages, paged ones included, and
        dead-letters them with their bodies.
        """
        self.vhost.declareExchange("dlx", "fanout")
        dlq = self.vhost.declareQueue("dlq")
        self.vhost.bindQueue("dlq", "dlx", "")
        queue = self.vhost.declareQueue(
            "q",
            arguments={"x-queue-mode": "lazy", "x-max-length": 3, "x-dead-letter-exchange": "dlx"},
        )
        sent = self.publishAll("q", 8)
        self.assertEqual([entry.message.body for entry in dlq.readyEntries()], sent[:5])
        self.assertEqual(queue.messageCount, 3)
        self.assertEqual(self.bodies.records, 3)
        self.drain(queue, sent[5:])
        self.vhost.purgeQueue("dlq")
        self.assertEmpty()

    def test_maxLengthBytesCountsPaged(self) -> None:
        """
        C{x-max-length-bytes} counts the bodies on disk too.
        """
        queue = self.vhost.declareQueue(
            "q", arguments={"x-queue-mode": "lazy", "x-max-length-bytes": 250}
        )
        sent = self.publishAll("q", 5, size=100)
        self.assertEqual(queue.readyBytes, 200)
        self.assertEqual(queue.pagedBytes, 200)
        self.assertEqual([queue.get().message.body for _ in range(2)], sent[3:])  # type: ignore[union-attr]

    def test_priorities(self) -> None:
        """
        A priority queue pages and still delivers by priority, FIFO within
        a level.
        """
        queue = self.vhost.declareQueue(
            "q", arguments={"x-queue-mode": "lazy", "x-max-priority": 5}
        )
        for n in range(6):
            self.vhost.publish("", "q", message(b"%d" % n, priority=n % 3))
        self.assertEqual(queue.pagedCount, 6)
        self.drain(queue, [b"2", b"5", b"1", b"4", b"0", b"3"])
        self.assertEmpty()

    def test_lastValue(self) -> None:
        """
        A last-value queue replaces paged messages and frees their pages.
        """
        queue = self.vhost.declareQueue(
            "q", arguments={"x-queue-mode": "lazy", "qpid.last_value_queue_key": "k"}
        )
        for n in range(4):
            self.vhost.publish("", "q", message(b"%d" % n, headers={"k": n % 2}))
        self.assertEqual(queue.messageCount, 2)
        self.assertEqual(self.bodies.records, 2)
        self.drain(queue, [b"2", b"3"])
        self.assertEmpty()

    def test_brokerBudget(self) -> None:
        """
        Past the broker-wide budget, a queue without arguments keeps a
        little more than the read-ahead window in memory and pages the
        rest; a consumer that
        keeps up causes no paging.
        """
        self.pager.budget = 2000
        queue = self.vhost.declareQueue("q")
        self.assertTrue(queue.plain)
        sent = self.publishAll("q", 40, size=100)
        self.assertFalse(queue.plain)
        # A queue without policies takes the counting path once its backlog
        # passes 16 messages; from then on it pages past the window.
        self.assertEqual(self.paged(queue), [False] * 16 + [True] * 24)
        consumer, target = self.consume(queue)
        self.assertEqual(target.bodies(), sent)
        self.ack(queue, consumer, target)
        self.assertEmpty()
        writes = self.bodies._next
        self.publishAll("q", 50, size=100)
        self.assertEqual(self.bodies._next, writes)
        self.ack(queue, consumer, target)
        self.assertEmpty()

    def test_watermarkCountsMemory(self) -> None:
        """
        A paged backlog does not block publishers: the watermark counts
        only the bodies in memory. Without paging the same backlog blocks.
        """
        self.resources.highWatermark = 100_000
        self.pager.budget = 20_000
        self.vhost.declareQueue("q")
        self.publishAll("q", 100, size=1000)
        self.assertFalse(self.resources.blocked)
        self.assertLess(self.resources.used, 100 * self.resources.overhead + 20_000)
        plain = VirtualHost(resources=Resources(highWatermark=100_000), clock=self.clock)
        plain.declareQueue("q")
        for n in range(100):
            plain.publish("", "q", message(b"x" * 1000))
        self.assertTrue(plain.resources.blocked)

    def test_sharedMessage(self) -> None:
        """
        A message routed to a paging queue and to one in memory: the other
        queue's copy is untouched.
        """
        self.vhost.declareExchange("fan", "fanout")
        lazy = self.vhost.declareQueue("lazy", arguments={"x-queue-mode": "lazy"})
        memory = self.vhost.declareQueue("memory")
        self.vhost.bindQueue("lazy", "fan", "")
        self.vhost.bindQueue("memory", "fan", "")
        self.vhost.publish("fan", "", message(b"shared"))
        self.assertEqual(self.paged(lazy), [True])
        self.assertEqual(self.paged(memory), [False])
        self.assertEqual(self.vhost.purgeQueue("lazy") + self.vhost.purgeQueue("memory"), 2)
        self.assertEmpty()

    def test_slowPathBody(self) -> None:
        """
        Reading the body of a paged message outside the queue (a catch-up,
        the management API) reads it back without changing the queue.
        """
        queue = self.vhost.declareQueue("q", arguments={"x-queue-mode": "lazy"})
        self.publishAll("q", 1)
        [entry] = queue.readyEntries()
        self.assertIsInstance(entry.message, PagedMessage)
        self.assertEqual(entry.message.body, b"000000....")
        self.assertEqual(entry.message.size, 10)
        self.assertTrue(entry.message.paged)

    def test_noPagerNoPaging(self) -> None:
        """
        Without a pager (the model on its own), a lazy queue keeps its
        messages in memory, as before.
        """
        vhost = VirtualHost()
        queue = vhost.declareQueue("q", arguments={"x-queue-mode": "lazy"})
        vhost.publish("", "q", message(b"kept"))
        self.assertEqual(self.paged(queue), [False])

    def test_replicaPages(self) -> None:
        """
        A backup's copy pages by the same budget; the primary's dequeues
        free its pages; once promoted it delivers in order.
        """
        self.vhost.replica = True
        queue = self.vhost.declareQueue("q", arguments={"x-max-in-memory-length": 2}, replica=True)
        sent = [b"%d" % n for n in range(10)]
        for n, body in enumerate(sent, 1):
            queue.replicaEnqueue(message(body), n)
        self.assertEqual(queue.pagedCount, 8)
        queue.replicaDequeue(5)
        queue.replicaDequeueRange(1, 2)
        self.assertEqual(self.bodies.records, 7)
        queue.replicaAcquire(6)
        self.vhost.replica = False
        queue.promoted(1)
        consumer, target = self.consume(queue)
        expected = [sent[2], sent[3]] + sent[5:]
        self.assertEqual(target.bodies(), expected)
        self.assertEqual(target.deliveries[2][1].redelivered, True)
        self.ack(queue, consumer, target)
        self.assertEmpty()

    def test_replicaPurge(self) -> None:
        """
        A replica's purge frees the pages of what it drops.
        """
        self.vhost.replica = True
        queue = self.vhost.declareQueue("q", arguments={"x-queue-mode": "lazy"}, replica=True)
        for n in range(1, 6):
            queue.replicaEnqueue(message(b"x"), n)
        queue.replicaPurge()
        self.assertEqual(queue.messageCount, 0)
        self.assertEmpty()

    def test_observersSeeBodies(self) -> None:
        """
        The observers (replication, the store) are told of the enqueue
        before the body is paged, with the body.
        """
        seen = []

        class BodyObserver(RecordingObserver):
            """
            Records the body each enqueue carries, as the observers read it.
            """

            def enqueued(self, queue: Queue, entry: Any) -> None:
                seen.append((entry.message.paged, entry.message.body))

        self.vhost.observers.append(BodyObserver())
        queue = self.vhost.declareQueue("q", arguments={"x-queue-mode": "lazy"})
        self.publishAll("q", 1)
        self.assertEqual(seen, [(False, b"000000....")])
        self.assertEqual(self.paged(queue), [True])

    def test_pagedMessageIsSmall(self) -> None:
        """
        A paged message packs its body's location and size in one integer
        (a location past 2**40 and a size past 2**32 come back whole), and
        consecutive paged messages with equal addressing and header bytes
        share one copy of each, and one tuple of what was scanned of the
        header.
        """
        paged = PagedMessage(b"\x00\x01q", b"h" * 14, 2**33 + 5, (7 << 40) | 123, self.bodies)
        self.assertEqual((paged.location, paged.size), ((7 << 40) | 123, 2**33 + 5))
        self.assertFalse(hasattr(paged, "__dict__"))
        queue = self.vhost.declareQueue("q", arguments={"x-queue-mode": "lazy"})
        for n in range(3):
            sent = message(b"%d" % n, "q", delivery_mode=2)
            sent.persistent
            self.vhost.publish("", "q", sent)
        first, second, third = [entry.message for entry in queue.readyEntries()]
        self.assertTrue(first.paged and second.paged and third.paged)
        self.assertIs(second.addressing, first.addressing)
        self.assertIs(third.header, first.header)
        self.assertIs(third._scan, first._scan)
        self.assertEqual(
            [entry.message.body for entry in queue.readyEntries()], [b"0", b"1", b"2"]
        )

    def test_withBodies(self) -> None:
        """
        L{Queue.withBodies} reads the paged bodies of the entries it is
        given in one read, and gives copies that hold them, while the
        queue's own entries stay paged.
        """
        queue = self.vhost.declareQueue("q", arguments={"x-max-in-memory-length": 1})
        self.publishAll("q", 4)
        entries = list(queue.readyEntries())
        read = queue.withBodies(entries)
        self.assertEqual(len(self.bodies.reads), 1)
        self.assertEqual(len(self.bodies.reads[0]), 3)
        self.assertIs(read[0], entries[0])
        self.assertEqual([entry.message.paged for entry in read], [False] * 4)
        self.assertEqual([entry.id for entry in read], [entry.id for entry in entries])
        self.assertEqual([entry.message.body for entry in read][1], b"000001....")
        self.assertEqual(self.paged(queue), [False, True, True, True])
        self.assertEqual(queue.pagedCount, 3)

    def test_pageFiles(self) -> None:
        """
        The same with the real page files: a backlog goes to disk and comes
        back in order, and the segments go as it drains.
        """
        directory = self.mktemp()
        pages = PageFiles(directory, segmentSize=4096, bufferSize=512)
        vhost = VirtualHost(resources=Resources(pager=Pager(pages, window=8)), clock=self.clock)
        queue = vhost.declareQueue("q", arguments={"x-queue-mode": "lazy"})
        sent = [(b"%06d" % n) * 50 for n in range(100)]
        for body in sent:
            vhost.publish("", "q", message(body))
        self.assertEqual(pages.records, 100)
        self.assertGreater(len(os.listdir(directory)), 5)
        self.drain(queue, sent)
        self.assertEqual(len(os.listdir(directory)), 1)
        self.assertEqual(vhost.resources.used, 0)


class PagedJournalTests(SynchronousTestCase):
    """
    Persistent messages on a paging durable queue are written to the
    journal with their bodies and come back after a restart, paged again.
    """

    def test_recovered(self) -> None:
        """
        Publish persistent messages to a lazy durable queue, restart from
        the journal into a broker that pages: every body is back.
        """
        clock = Clock()
        journal = MemoryJournal()
        vhost = VirtualHost(resources=Resources(pager=Pager(MemoryBodyStore())), clock=clock)
        store = Store(journal, clock)
        store.attach(vhost)
        vhost.declareQueue("q", durable=True, arguments={"x-queue-mode": "lazy"})
        sent = [b"body %d" % n for n in range(10)]
        for body in sent:
            vhost.publish("", "q", message(body, delivery_mode=2))
        store.flush()
        bodies = MemoryBodyStore()
        again = VirtualHost(resources=Resources(pager=Pager(bodies)), clock=clock)
        Store(journal, clock).recover(again)
        queue = again.queues["q"]
        self.assertEqual(queue.pagedCount, 10)
        self.assertEqual([entry.message.body for entry in queue.readyEntries()], sent)


class PagedCatchUpTests(SynchronousTestCase):
    """
    A backup that joins a primary whose replicated backlog is already paged
    gets every message: the catch-up reads the paged bodies back, a batch
    at a time, and leaves them paged on the primary.
    """

    def setUp(self) -> None:
        """
        An in-memory cluster whose primary pages to a L{MemoryBodyStore},
        catch-up batches of at most 10 messages, and a joining backup.
        """
        self.patch(ReplicationSource, "batchMessages", 10)
        self.cluster = InMemoryCluster(self)
        self.addCleanup(self.cluster.finish)
        self.primary = self.cluster.primary()
        self.bodies = MemoryBodyStore()
        self.primary.vhost.resources.pager = Pager(self.bodies, window=4)
        self.backup = self.cluster.node()

    def catchUp(self, count: int) -> list[bytes]:
        """
        Publish C{count} messages to a lazy replicated queue of the primary
        (all paged), then let the backup catch up.

        @return: the bodies sent.
        """
        queue = self.primary.vhost.declareQueue("q", arguments={**ALL, "x-queue-mode": "lazy"})
        sent = [b"%04d" % n + b"." * 20 for n in range(count)]
        for body in sent:
            self.primary.vhost.publish("", "q", message(body))
        self.assertEqual(queue.pagedCount, count)
        self.cluster.connect(self.primary, self.backup)
        self.cluster.flush()
        self.assertEqual(self.backup.role.name, READY)
        return sent

    def test_batchedCatchUp(self) -> None:
        """
        95 paged messages, caught up in batches of 10: the backup holds
        every one, in order; each batch read its paged bodies in one read;
        the primary's backlog is still paged, whole.
        """
        sent = self.catchUp(95)
        replica = self.backup.vhost.queues["q"]
        self.assertEqual([body for _, body, _ in queueContents(replica)], sent)
        self.assertEqual([len(read) for read in self.bodies.reads], [10] * 9 + [5])
        queue = self.primary.vhost.queues["q"]
        self.assertEqual(queue.pagedCount, 95)
        self.assertEqual(self.bodies.records, 95)

    def test_smallCatchUp(self) -> None:
        """
        A paged backlog small enough for one box is read back in one read
        too, and the backup holds all of it.
        """
        sent = self.catchUp(6)
        replica = self.backup.vhost.queues["q"]
        self.assertEqual([body for _, body, _ in queueContents(replica)], sent)
        self.assertEqual([len(read) for read in self.bodies.reads], [6])
        self.assertEqual(self.bodies.records, 6)
