"""
Tests for L{qha.datadir}: the data directory is private (C{0700}, files
C{0600}) and held by one broker at a time.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import sys
import tempfile

from twisted.application.service import MultiService
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import ILogObserver, Logger
from twisted.trial.unittest import SynchronousTestCase

from qha import datadir
from qha.amqp.protocol import BrokerFactory
from qha.amqp.users import FailedLogins, ThreadPoolVerifier
from qha.broker.vhost import VirtualHost
from qha.datadir import (
    DataDirectoryInUse,
    DataDirectoryLock,
    claim,
    claimOrExit,
    lock,
    makeDirectory,
    openPrivate,
)
from qha.ha.identity import PersistentState
from qha.store.journal import FileJournal, Store
from qha.test.support import persistentMessage


def modeOf(path: str) -> int:
    """
    The permission bits of C{path}.
    """
    return stat.S_IMODE(os.stat(path).st_mode)


class DirectoryTestCase(SynchronousTestCase):
    """
    A base giving each test a fresh parent directory, removed at the end,
    and a umask that would otherwise make files readable by everyone.
    """

    def setUp(self) -> None:
        """
        Make the parent directory and set a permissive umask (restored at
        the end), so that the modes tested are the ones qha asks for.
        """
        self.parent = tempfile.mkdtemp(prefix="qha-datadir-")
        self.addCleanup(shutil.rmtree, self.parent, True)
        self.addCleanup(os.umask, os.umask(0o022))
        self.directory = os.path.join(self.parent, "qha-data")


class LockTests(DirectoryTestCase):
    """
    Tests for L{lock} and L{claim}.
    """

    def test_secondLockFails(self) -> None:
        """
        A second lock on a held directory, even in the same process, fails
        with L{DataDirectoryInUse} naming the directory and the holder's
        process id.
        """
        held = claim(self.directory)
        self.addCleanup(held.release)
        error = self.assertRaises(DataDirectoryInUse, lock, self.directory)
        self.assertEqual((error.directory, error.pid), (self.directory, os.getpid()))
        self.assertEqual(
            str(error),
            f"{self.directory} is in use by another broker (pid {os.getpid()});"
            " each broker needs its own --data-dir",
        )

    def test_releasedOnClose(self) -> None:
        """
        Once released, the directory can be locked again; releasing twice
        is harmless.
        """
        held = claim(self.directory)
        self.assertTrue(held.held)
        held.release()
        held.release()
        self.assertFalse(held.held)
        again = lock(self.directory)
        self.addCleanup(again.release)
        self.assertTrue(again.held)

    def test_lockFileHoldsPid(self) -> None:
        """
        The lock file holds the holder's process id and is C{0600}.
        """
        held = claim(self.directory)
        self.addCleanup(held.release)
        path = os.path.join(self.directory, "lock")
        with open(path) as f:
            self.assertEqual(f.read(), f"{os.getpid()}\n")
        self.assertEqual(modeOf(path), 0o600)

    def test_stalePidReplaced(self) -> None:
        """
        A lock file left by a broker that died (longer text, nobody holding
        it) is taken over and holds only this process's id.
        """
        os.makedirs(self.directory)
        with open(os.path.join(self.directory, "lock"), "w") as f:
            f.write("123456789\n")
        held = lock(self.directory)
        self.addCleanup(held.release)
        with open(os.path.join(self.directory, "lock")) as f:
            self.assertEqual(f.read(), f"{os.getpid()}\n")

    def test_unknownHolder(self) -> None:
        """
        A holder whose process id cannot be read is reported as unknown.
        """
        held = claim(self.directory)
        self.addCleanup(held.release)
        with open(os.path.join(self.directory, "lock"), "w") as f:
            f.write("")
        error = self.assertRaises(DataDirectoryInUse, lock, self.directory)
        self.assertIsNone(error.pid)
        self.assertIn("(pid unknown)", str(error))

    def test_claimOrExit(self) -> None:
        """
        L{claimOrExit} on a held directory exits with status 1 after one
        line on standard error.
        """
        held = claim(self.directory)
        self.addCleanup(held.release)
        errors = io.StringIO()
        self.patch(sys, "stderr", errors)
        exit = self.assertRaises(SystemExit, claimOrExit, self.directory)
        self.assertEqual(exit.code, 1)
        self.assertEqual(
            errors.getvalue(),
            f"qha: {self.directory} is in use by another broker (pid {os.getpid()});"
            " each broker needs its own --data-dir\n",
        )

    def test_claimOrExitUnusable(self) -> None:
        """
        A data directory that cannot be created also ends in one line and
        status 1.
        """
        blocker = os.path.join(self.parent, "file")
        with open(blocker, "w"):
            pass
        errors = io.StringIO()
        self.patch(sys, "stderr", errors)
        exit = self.assertRaises(SystemExit, claimOrExit, os.path.join(blocker, "data"))
        self.assertEqual(exit.code, 1)
        self.assertEqual(len(errors.getvalue().splitlines()), 1)
        self.assertIn("cannot use the data directory", errors.getvalue())


class ModeTests(DirectoryTestCase):
    """
    Tests for the modes of the data directory and its files.
    """

    def test_createdPrivate(self) -> None:
        """
        A new data directory is C{0700}.
        """
        makeDirectory(self.directory)
        self.assertEqual(modeOf(self.directory), 0o700)

    def test_existingLeftAndWarned(self) -> None:
        """
        An existing directory that others may enter is left as it is, with
        a warning that names it and its mode; a private one is not warned
        about.
        """
        events = EventLoggingObserver()
        self.patch(datadir, "log", Logger(observer=ILogObserver(events)))
        os.makedirs(self.directory, mode=0o755)
        os.chmod(self.directory, 0o755)
        makeDirectory(self.directory)
        self.assertEqual(modeOf(self.directory), 0o755)
        self.assertEqual(len(events), 1)
        self.assertEqual((events[0]["directory"], events[0]["mode"]), (self.directory, 0o755))
        os.chmod(self.directory, 0o700)
        makeDirectory(self.directory)
        self.assertEqual(len(events), 1)

    def test_openPrivate(self) -> None:
        """
        L{openPrivate} creates files C{0600}, and makes an existing looser
        file C{0600} too.
        """
        makeDirectory(self.directory)
        path = os.path.join(self.directory, "f")
        with openPrivate(path, "w") as f:
            f.write("x")
        self.assertEqual(modeOf(path), 0o600)
        os.chmod(path, 0o644)
        with openPrivate(path, "r+b") as f:
            self.assertEqual(f.read(), b"x")
        self.assertEqual(modeOf(path), 0o600)

    def test_storeFiles(self) -> None:
        """
        After a store wrote, compacted and the broker's state was kept, the
        directory is C{0700} and every file in it C{0600}: journal,
        broker-id, epoch and lock.
        """
        held = claim(self.directory)
        self.addCleanup(held.release)
        state = PersistentState(self.directory)
        state.setEpoch(3)
        clock = Clock()
        store = Store(FileJournal(os.path.join(self.directory, "journal")), clock)
        vhost = VirtualHost(clock=clock)
        store.recover(vhost)
        store.compactAt = 2048
        queue = vhost.declareQueue("q", durable=True)
        for index in range(30):
            vhost.publish("", "q", persistentMessage(b"y" * 100, "q"))
            clock.advance(0)
        for index in range(30):
            entry = queue.get()
            assert entry is not None
            queue.settle(entry)
        clock.advance(0)
        store.close()
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(modeOf(self.directory), 0o700)
        names = sorted(os.listdir(self.directory))
        self.assertEqual(names, ["broker-id", "epoch", "journal", "lock"])
        self.assertEqual(
            {name: modeOf(os.path.join(self.directory, name)) for name in names},
            {name: 0o600 for name in names},
        )

    def test_oldJournalMadePrivate(self) -> None:
        """
        A journal left C{0644} by an older qha is C{0600} once a store
        opened it.
        """
        path = os.path.join(self.directory, "journal")
        clock = Clock()
        first = Store(FileJournal(path), clock)
        first.recover(VirtualHost(clock=clock))
        first.close()
        os.chmod(path, 0o644)
        store = Store(FileJournal(path), clock)
        store.recover(VirtualHost(clock=clock))
        store.close()
        self.assertEqual(modeOf(path), 0o600)

    def test_damagedCopyPrivate(self) -> None:
        """
        The copy of a damaged journal kept by C{--store-recover} is C{0600}
        too: it holds the same message bodies.
        """
        path = os.path.join(self.directory, "journal")
        makeDirectory(self.directory)
        with open(path, "wb") as f:
            f.write(b"not a journal at all")
        os.chmod(path, 0o644)
        clock = Clock()
        store = Store(FileJournal(path, recover=True), clock)
        store.recover(VirtualHost(clock=clock))
        store.close()
        copies = [name for name in os.listdir(self.directory) if ".damaged-" in name]
        self.assertEqual(len(copies), 1)
        self.assertEqual(modeOf(os.path.join(self.directory, copies[0])), 0o600)


class MakeServiceTests(DirectoryTestCase):
    """
    L{qha.tap.makeService} claims the data directory before it reads it,
    and gives the AMQP factory a thread pool for password checks; both
    are services of the broker.
    """

    def makeService(self) -> MultiService:
        """
        The broker's service for C{self.directory} on a memory reactor,
        not started.
        """
        from qha.tap import Options, makeService

        options = Options()
        options.parseOptions(["--data-dir", self.directory, "--store", "memory"])
        return makeService(options, MemoryReactorClock())

    def test_claimsDirectory(self) -> None:
        """
        The service holds the directory's lock; a second one on the same
        directory exits with status 1.
        """
        service = self.makeService()
        [held] = [child for child in service if isinstance(child, DataDirectoryLock)]
        self.addCleanup(held.release)
        self.assertTrue(held.held)
        self.patch(sys, "stderr", io.StringIO())
        exit = self.assertRaises(SystemExit, self.makeService)
        self.assertEqual(exit.code, 1)

    def test_passwordsInThreadPool(self) -> None:
        """
        The AMQP factory checks passwords with the L{ThreadPoolVerifier}
        and slows down failures with the L{FailedLogins} that are services
        of the broker.
        """
        service = self.makeService()
        children = list(service)
        for child in children:
            if isinstance(child, DataDirectoryLock):
                self.addCleanup(child.release)
        [factory] = [
            child.factory  # type: ignore[attr-defined]
            for child in children
            if isinstance(getattr(child, "factory", None), BrokerFactory)
        ]
        self.assertIsInstance(factory.verifier, ThreadPoolVerifier)
        self.assertIn(factory.verifier, children)
        self.assertIsInstance(factory.failedLogins, FailedLogins)
        self.assertIn(factory.failedLogins, children)
