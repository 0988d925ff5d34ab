"""
Tests of the store's incremental compaction (L{qha.store.journal.
Compaction}): it writes the state a bounded step per reactor turn, its
writes run in another thread (here a fake one the test runs by hand), and
the records the store appends meanwhile survive recovery, on a file journal
and in memory.
"""

from __future__ import annotations

import math

import os
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from qha.broker.queue import Queue
from qha.broker.vhost import VirtualHost
from qha.store.journal import Compaction, FileJournal, Journal, MemoryJournal, Store
from qha.test.support import persistentMessage as message


class FakeThread:
    """
    A store thread the test runs by hand: each write waits in C{pending}
    until L{runOne}.
    """

    def __init__(self) -> None:
        self.pending: list[tuple[Callable[[], Any], Deferred[Any]]] = []

    def __call__(self, work: Callable[[], Any]) -> Deferred[Any]:
        """
        Queue C{work}; its result fires the returned L{Deferred} when run.
        """
        d: Deferred[Any] = Deferred()
        self.pending.append((work, d))
        return d

    def runOne(self) -> bool:
        """
        Run the oldest queued write; whether there was one.
        """
        if not self.pending:
            return False
        work, d = self.pending.pop(0)
        d.callback(work())
        return True


def bodies(queue: Queue) -> list[bytes]:
    """
    The bodies of C{queue}'s ready entries, in order.
    """
    return [entry.message.body for entry in queue.readyEntries()]


class CompactionMixin:
    """
    Compaction with appends during it, for any journal.
    """

    clock: Clock
    vhost: VirtualHost
    store: Store
    thread: FakeThread
    assertEqual: Any
    assertTrue: Any
    assertFalse: Any
    assertIsNone: Any
    assertIsNotNone: Any
    assertLess: Any
    assertLessEqual: Any
    addCleanup: Any

    def openJournal(self) -> Journal:
        """
        The journal, opened anew.
        """
        raise NotImplementedError()

    def start(self) -> None:
        """
        A broker process on the journal, with the fake store thread.
        """
        self.clock = Clock()
        self.vhost = VirtualHost(clock=self.clock)
        self.store = Store(self.openJournal(), self.clock)
        self.store.recover(self.vhost)
        for queue in list(self.vhost.queues.values()):
            queue.promoted(self.store.epoch)
        self.thread = FakeThread()
        self.store.threadSync = self.thread
        # The fake thread is for the compaction's writes: flushes stay in
        # the reactor thread however slow the real disk proves (under load
        # they could average over slowSync, move to the fake thread, and
        # wait there: the test then restarted without them).
        self.store.slowSync = math.inf

    def restart(self) -> None:
        """
        End the turn, let the process die, start another on the journal.
        """
        self.clock.advance(0)
        self.store.journal.close()
        self.start()

    def runCompaction(self, between: Callable[[int], None] = lambda step: None) -> int:
        """
        Run the compaction under way to its end, a thread write at a time,
        calling C{between(step)} after each; return the steps.
        """
        steps = 0
        while self.store.compaction is not None:
            self.clock.advance(0)
            if not self.thread.runOne():
                self.clock.advance(0)
                if self.store.compaction is not None and not self.thread.pending:
                    raise AssertionError("the compaction is stuck")
                continue
            steps += 1
            between(steps)
        self.clock.advance(0)
        return steps

    def fill(self, count: int) -> Queue:
        """
        A durable queue with C{count} persistent messages, flushed.
        """
        queue = self.vhost.declareQueue("q", durable=True)
        for index in range(count):
            self.vhost.publish("", "q", message(b"m%04d" % index, "q"))
        self.clock.advance(0)
        return queue

    def test_stepsAreBounded(self) -> None:
        """
        Each step writes at most C{Compaction.step} messages as one record;
        the state comes back whole.
        """
        self.patch(Compaction, "step", 100)  # type: ignore[attr-defined]
        queue = self.fill(1000)
        for _ in range(500):
            entry = queue.get()
            assert entry is not None
            queue.settle(entry)
        self.clock.advance(0)
        compaction = self.store.startCompaction()
        assert compaction is not None
        steps = self.runCompaction()
        self.assertTrue(steps >= 5)
        self.assertEqual(self.store.records, 5)
        self.restart()
        self.assertEqual(bodies(self.vhost.queues["q"]), [b"m%04d" % index for index in range(500, 1000)])

    def test_appendsDuringCompactionSurvive(self) -> None:
        """
        Messages published, consumed and held while the compaction runs,
        in every phase of it, are as they were after recovery: the records
        written meanwhile survive the rename.
        """
        self.patch(Compaction, "step", 50)  # type: ignore[attr-defined]
        queue = self.fill(400)
        self.store.startCompaction()
        published = []

        def between(step: int) -> None:
            # A new message, and the oldest consumed, at every step.
            body = b"new%03d" % step
            self.vhost.publish("", "q", message(body, "q"))
            published.append(body)
            entry = queue.get()
            assert entry is not None
            queue.settle(entry)
            self.clock.advance(0)

        steps = self.runCompaction(between)
        self.assertTrue(steps > 8)
        # And after it, on the new journal.
        self.vhost.publish("", "q", message(b"after", "q"))
        self.restart()
        expected = [b"m%04d" % index for index in range(steps, 400)] + published + [b"after"]
        self.assertEqual(bodies(self.vhost.queues["q"]), expected)

    def test_flushHeldDuringRename(self) -> None:
        """
        A turn that ends while the new journal is put in place waits for
        it (its confirm too), then goes to the new journal.
        """
        queue = self.fill(10)
        self.store.startCompaction()
        # Run everything but the last write (the copy and the rename).
        while True:
            self.clock.advance(0)
            if len(self.thread.pending) == 1 and self.store._held:  # type: ignore[attr-defined]
                break
            self.assertTrue(self.thread.runOne())
        queues = self.vhost.publish("", "q", message(b"late", "q"))
        completion = self.store.hold(queues, message(b"late", "q"))
        assert completion is not None
        synced = self.store.whenSynced()
        self.assertIsNotNone(synced)
        self.clock.advance(0)
        self.assertFalse(completion.done)
        self.assertTrue(self.thread.runOne())
        self.clock.advance(0)
        self.assertIsNone(self.store.compaction)
        self.assertTrue(completion.done)
        fired: list[Any] = []
        assert synced is not None
        synced.addCallback(fired.append)
        self.assertEqual(fired, [None])
        self.restart()
        self.assertEqual(bodies(self.vhost.queues["q"]), [b"m%04d" % index for index in range(10)] + [b"late"])
        self.assertEqual(len(queue.held), 0)

    def test_queueDeletedDuringCompaction(self) -> None:
        """
        A queue deleted while its messages are being written stays deleted.
        """
        self.patch(Compaction, "step", 10)  # type: ignore[attr-defined]
        self.fill(100)
        self.store.startCompaction()

        def between(step: int) -> None:
            if step == 3:
                self.vhost.deleteQueue("q")
                self.vhost.declareQueue("q", durable=True)
                self.vhost.publish("", "q", message(b"second", "q"))
                self.clock.advance(0)

        self.runCompaction(between)
        self.restart()
        self.assertEqual(bodies(self.vhost.queues["q"]), [b"second"])

    def test_closeDuringCompaction(self) -> None:
        """
        A store closed during a compaction keeps the old journal, whole.
        """
        self.fill(20)
        self.store.startCompaction()
        self.clock.advance(0)
        self.store.close()
        while self.thread.runOne():
            self.clock.advance(0)
        self.clock.advance(0)
        self.start()
        self.assertEqual(bodies(self.vhost.queues["q"]), [b"m%04d" % index for index in range(20)])
        self.store.threadSync = None


class MemoryCompactionTests(CompactionMixin, SynchronousTestCase):
    """
    Compaction of a L{MemoryJournal}.
    """

    def setUp(self) -> None:
        """
        One memory for every process.
        """
        self.memory = MemoryJournal()
        self.start()

    def openJournal(self) -> Journal:
        """
        The same memory.
        """
        return self.memory


class FileCompactionTests(CompactionMixin, SynchronousTestCase):
    """
    Compaction of a L{FileJournal}: the file is replaced, nothing left
    beside it.
    """

    def setUp(self) -> None:
        """
        A journal in a directory of its own.
        """
        self.directory = self.mktemp()
        self.path = os.path.join(self.directory, "journal")
        self.start()

    def openJournal(self) -> Journal:
        """
        The file.
        """
        return FileJournal(self.path)

    def test_nothingLeft(self) -> None:
        """
        After a compaction only the journal is in the directory, and it is
        smaller.
        """
        queue = self.fill(200)
        for _ in range(190):
            entry = queue.get()
            assert entry is not None
            queue.settle(entry)
        self.clock.advance(0)
        before = os.path.getsize(self.path)
        self.store.startCompaction()
        self.runCompaction()
        self.assertEqual(os.listdir(self.directory), ["journal"])
        self.assertLess(os.path.getsize(self.path), before // 5)
