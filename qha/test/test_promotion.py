"""
Tests of promotion and recovery (L{qha.ha.node.HANode.promote}) in an
L{InMemoryCluster}: a promoted backup holds publishes until the backups it
knew are back, or until the backup timeout passes.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from qha.amqp.holders import Completion
from qha.ha.node import HANode
from qha.ha.role import ACTIVE, CATCHUP, JOINING, RECOVERING
from qha.test.support import ALL, InMemoryCluster, message, queueContents


class FailoverTests(SynchronousTestCase):
    """
    Promotion and recovery in memory: a promoted backup holds publishes
    until the backups it knew are back (or the timeout passes).
    """

    def setUp(self) -> None:
        """
        A primary with two ready backups, all holding two messages of the
        replicated queue C{q}; then the primary dies.
        """
        self.cluster = InMemoryCluster(self, backupTimeout=10.0)
        self.old = self.cluster.primary()
        self.old.vhost.declareQueue("q", arguments=ALL)
        self.first = self.cluster.node()
        self.second = self.cluster.node()
        for node in (self.first, self.second):
            self.cluster.connect(self.old, node)
        for body in (b"1", b"2"):
            self.old.vhost.publish("", "q", message(body, "q"))
        self.cluster.flush()
        self.cluster.kill(self.old)
        self.assertEqual([node.role.name for node in (self.first, self.second)], [JOINING] * 2)

    def publish(self, node: HANode, queue: str = "q") -> Completion | None:
        """
        Publish one message to C{queue} on C{node} as a channel does.
        """
        return node.gate.hold(node.vhost.publish("", queue, message(b"new", queue)))

    def test_membersKnown(self) -> None:
        """
        Each backup learned from the primary which backups were ready.
        """
        for node in (self.first, self.second):
            self.assertEqual(
                sorted(member["id"] for member in node.members if member.get("role") != "primary"),
                sorted([self.first.brokerId, self.second.brokerId]),
            )
        self.cluster.finish()

    def test_recoveringHoldsUntilBackupReturns(self) -> None:
        """
        A promoted backup serves clients at once but holds every confirm,
        replicated or not, until the other backup it knew caught up with it;
        then it is active and the confirms go.
        """
        self.assertEqual(self.cluster.promote(self.first), {"role": RECOVERING, "epoch": 2})
        self.assertTrue(self.first.amqp.listening)  # type: ignore[attr-defined]
        self.assertEqual(self.first.expected, {self.second.brokerId})
        self.first.vhost.declareQueue("plain")
        replicated = self.publish(self.first)
        plain = self.publish(self.first, "plain")
        assert replicated is not None and plain is not None
        self.cluster.clock.advance(9)
        self.assertEqual((replicated.done, plain.done), (False, False))
        link = self.cluster.connect(self.first, self.second)
        self.assertEqual(self.first.role.name, ACTIVE)
        self.assertEqual((replicated.done, plain.done), (True, True))
        self.assertEqual(
            [id for id, _, _ in queueContents(self.second.vhost.queues["q"])],
            [id for id, _, _ in queueContents(self.first.vhost.queues["q"])],
        )
        self.assertEqual(len(queueContents(self.second.vhost.queues["q"])), 3)
        self.assertEqual(self.second.epoch, 2)
        link.flush()
        self.cluster.finish()

    def test_recoveryTimesOut(self) -> None:
        """
        When the expected backup never returns, the promoted broker goes
        active after C{--ha-backup-timeout} and completes what it held.
        """
        self.cluster.promote(self.first)
        completion = self.publish(self.first)
        assert completion is not None
        self.cluster.clock.advance(9.9)
        self.assertFalse(completion.done)
        self.cluster.clock.advance(0.1)
        self.assertEqual(self.first.role.name, ACTIVE)
        self.assertTrue(completion.done)
        self.assertEqual(self.first.expected, set())
        self.cluster.finish()

    def test_promotedRedeliversHeld(self) -> None:
        """
        Messages a consumer held unacknowledged on the old primary are
        delivered again by the new one, marked redelivered, in their
        places.
        """
        cluster = InMemoryCluster(self)
        old = cluster.primary()
        queue = old.vhost.declareQueue("q", arguments=ALL)
        backup = cluster.node()
        link = cluster.connect(old, backup)
        for body in (b"1", b"2", b"3"):
            old.vhost.publish("", "q", message(body, "q"))
        held = queue.get()
        assert held is not None
        link.flush()
        link.cut()
        cluster.promote(backup)
        replica = backup.vhost.queues["q"]
        entry = replica.get()
        assert entry is not None
        self.assertEqual((entry.id, entry.message.body, entry.redelivered), (1, b"1", True))
        second = replica.get()
        assert second is not None
        self.assertEqual((second.id, second.redelivered), (2, False))
        cluster.finish()
        self.cluster.finish()

    def test_promoteCatchupRefused(self) -> None:
        """
        A backup still catching up refuses promotion with a reason, unless
        forced.
        """
        cluster = InMemoryCluster(self)
        primary = cluster.primary()
        backup = cluster.node()
        cluster.connect(primary, backup, flush=False)
        self.assertEqual(backup.role.name, CATCHUP)
        error = self.assertRaises(Exception, cluster.promote, backup, False)
        self.assertEqual(
            str(error), "cannot promote this broker: it is still catching up with the primary"
        )
        self.assertEqual(cluster.promote(backup, True)["role"], RECOVERING)
        cluster.finish()
        self.cluster.finish()

    def test_promotePrimaryAgain(self) -> None:
        """
        Promoting the primary again changes nothing, not even its epoch.
        """
        primary = self.cluster.primary()
        self.assertEqual(self.cluster.promote(primary), {"role": ACTIVE, "epoch": 1})
        self.cluster.finish()
