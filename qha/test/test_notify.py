"""
Tests for L{qha.notify}: what the broker tells systemd, on a L{Clock} with
the messages recorded; and one datagram through a real socket.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from qha.notify import SystemdNotifier, datagramSender


class SystemdNotifierTests(SynchronousTestCase):
    """
    L{SystemdNotifier} with a role the test changes.
    """

    def setUp(self) -> None:
        """
        A notifier whose role and epoch the test sets, and whose messages it
        records.
        """
        self.clock = Clock()
        self.role = "joining"
        self.epoch = 0
        self.sent: list[bytes] = []
        self.notifier = SystemdNotifier(lambda: self.role, lambda: self.epoch, self.clock, self.sent.append)

    def tearDown(self) -> None:
        """
        No timer is left.
        """
        if self.notifier.running:
            self.notifier.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_standaloneReadyAtOnce(self) -> None:
        """
        A standalone broker is ready when it starts: STATUS and READY=1 in
        one message.
        """
        self.role = "standalone"
        self.notifier.startService()
        self.assertEqual(self.sent, [])  # not before the reactor runs
        self.clock.advance(0)
        self.assertEqual(self.sent, [b"STATUS=role standalone, epoch 0\nREADY=1"])

    def test_backupReadyWhenCaughtUp(self) -> None:
        """
        A backup is ready once its role is C{ready}; READY=1 is sent once,
        STATUS at every change of role or epoch, STOPPING=1 at the end.
        """
        self.notifier.startService()
        self.clock.advance(0)
        self.role = "catchup"
        self.clock.advance(1)
        self.role = "ready"
        self.clock.advance(1)
        self.clock.advance(1)
        self.role, self.epoch = "active", 1
        self.clock.advance(1)
        self.notifier.stopService()
        self.assertEqual(
            self.sent,
            [
                b"STATUS=role joining, epoch 0",
                b"STATUS=role catchup, epoch 0",
                b"STATUS=role ready, epoch 0\nREADY=1",
                b"STATUS=role active, epoch 1",
                b"STOPPING=1",
            ],
        )

    def test_sendFails(self) -> None:
        """
        A socket error is logged once and stops nothing.
        """

        def refuse(message: bytes) -> None:
            raise ConnectionRefusedError(111, "refused")

        self.notifier.send = refuse
        self.role = "standalone"
        self.notifier.startService()
        self.clock.advance(0)
        self.assertEqual(len(self.flushLoggedErrors()), 0)
        self.assertTrue(self.notifier.ready)

    def test_fromEnvironment(self) -> None:
        """
        Without C{$NOTIFY_SOCKET} there is no notifier.
        """
        saved = os.environ.pop("NOTIFY_SOCKET", None)
        if saved is not None:
            self.addCleanup(os.environ.__setitem__, "NOTIFY_SOCKET", saved)
        self.assertIsNone(SystemdNotifier.fromEnvironment(lambda: "", lambda: 0, self.clock))


class DatagramTests(SynchronousTestCase):
    """
    L{datagramSender} through a real unix datagram socket.
    """

    def test_pathAndAbstract(self) -> None:
        """
        A path and an abstract name (C{@name}) both receive the message.
        """
        # Short: a unix socket's path holds at most 107 bytes.
        directory = tempfile.mkdtemp(prefix="qha-notify-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "notify")
        for address, bound in ((path, path), (f"@qha-test-{os.getpid()}", f"\0qha-test-{os.getpid()}")):
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
                receiver.bind(bound)
                receiver.settimeout(5)
                datagramSender(address)(b"READY=1")
                self.assertEqual(receiver.recv(4096), b"READY=1")
