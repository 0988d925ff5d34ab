"""
Tests of the heartbeats on the replication link (L{qha.ha.commands.Heartbeat}):
a stalled backup holds confirms no longer than two heartbeats, and a silent
primary is left.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from qha.ha.role import JOINING, READY
from qha.test.support import ALL, InMemoryCluster, message, queueContents


class HeartbeatTests(SynchronousTestCase):
    """
    Heartbeats on the replication link: a stalled backup holds confirms no
    longer than two heartbeats; a silent primary is left.
    """

    def setUp(self) -> None:
        """
        A primary and a ready backup with a one-second heartbeat.
        """
        self.cluster = InMemoryCluster(self, heartbeat=1.0)
        self.primary = self.cluster.primary()
        self.queue = self.primary.vhost.declareQueue("q", arguments=ALL)
        self.backup = self.cluster.node()
        self.link = self.cluster.connect(self.primary, self.backup)

    def test_quietLinkStaysUp(self) -> None:
        """
        A link with no traffic but heartbeats stays up for a long time.
        """
        for _ in range(30):
            self.cluster.clock.advance(0.5)
            self.link.flush()
        self.assertEqual(self.backup.role.name, READY)
        self.assertEqual(len(self.primary.sources), 1)
        self.cluster.finish()

    def test_stalledBackup(self) -> None:
        """
        A backup that stops answering (nothing reaches it) is dropped after
        two heartbeats, which releases the confirm waiting for it; once it
        runs again it catches up.
        """
        self.primary.vhost.publish("", "q", message(b"m", "q"))
        completion = self.primary.gate.hold([self.queue])
        assert completion is not None
        self.cluster.clock.advance(1)
        self.assertFalse(completion.done)
        self.cluster.clock.advance(1)
        self.assertTrue(completion.done)
        self.assertEqual(self.primary.sources, {})
        # The backup runs again: it sees its link gone and rejoins.
        self.link.flush()
        self.assertEqual(self.backup.role.name, JOINING)
        self.cluster.connect(self.primary, self.backup)
        self.assertEqual(self.backup.role.name, READY)
        self.assertEqual(len(queueContents(self.backup.vhost.queues["q"])), 1)
        self.cluster.finish()

    def test_silentPrimary(self) -> None:
        """
        A backup whose primary says nothing for two heartbeats leaves it and
        looks for the primary again.
        """
        self.cluster.clock.advance(1)
        self.assertEqual(self.backup.role.name, READY)
        self.cluster.clock.advance(1)
        self.assertEqual(self.backup.role.name, JOINING)
        self.assertIsNone(self.backup.link)
        self.cluster.finish()
