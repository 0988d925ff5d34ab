"""
Tests for the L{ReplicationGate} of L{qha.ha.primary} and its
L{Completion}s: which publishes wait for backups, and for which ones.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from qha.amqp.holders import Completion
from qha.broker.vhost import VirtualHost
from qha.ha.primary import ReplicationGate
from qha.test.support import ALL, FakeNode, FakeSource


class GateTests(SynchronousTestCase):
    """
    L{ReplicationGate} and L{Completion}: which publishes wait, and for
    whom.
    """

    def setUp(self) -> None:
        """
        A virtual host with a replicated queue and a plain one.
        """
        self.vhost = VirtualHost()
        self.replicated = self.vhost.declareQueue("r", arguments=ALL)
        self.plain = self.vhost.declareQueue("p")

    def gate(self, minBackups: int = 0, sources: int = 0) -> tuple[ReplicationGate, list[FakeSource]]:
        """
        A gate with C{sources} ready backups.
        """
        gate = ReplicationGate(FakeNode(minBackups), Clock())
        made = [FakeSource(f"b{i}") for i in range(sources)]
        gate.sources.update(made)  # type: ignore[arg-type]
        return gate, made

    def confirmed(self, completion: Completion) -> list[bool]:
        """
        A list that gets C{True} once C{completion} fires.
        """
        fired: list[bool] = []
        completion.addCallback(lambda: fired.append(True))
        return fired

    def test_unreplicatedNeedsNothing(self) -> None:
        """
        A publish to queues that are not replicated with C{all} is
        confirmed at once, even with backups.
        """
        gate, _ = self.gate(sources=2)
        self.assertIsNone(gate.hold([self.plain]))
        config = self.vhost.declareQueue("c", arguments={"qpid.replicate": "configuration"})
        self.assertIsNone(gate.hold([config]))

    def test_noBackupsNoWait(self) -> None:
        """
        With no backup and no minimum, a replicated publish is not held.
        """
        gate, _ = self.gate()
        self.assertIsNone(gate.hold([self.replicated]))

    def test_waitsForEveryBackup(self) -> None:
        """
        A replicated publish waits for every ready backup's
        acknowledgement.
        """
        gate, (one, two) = self.gate(sources=2)
        completion = gate.hold([self.plain, self.replicated])
        assert completion is not None
        self.assertEqual(one.attached, [completion])
        self.assertEqual(two.attached, [completion])
        fired = self.confirmed(completion)
        completion.acknowledged(one)
        self.assertEqual(fired, [])
        completion.acknowledged(one)
        self.assertEqual(fired, [])
        completion.acknowledged(two)
        self.assertEqual(fired, [True])
        self.assertEqual(gate.waiting, set())

    def test_oneCompletionPerTurn(self) -> None:
        """
        Publishes of one turn share a completion; once a source sealed its
        box, the next publish gets a new one.
        """
        gate, (one,) = self.gate(sources=1)
        first = gate.hold([self.replicated])
        self.assertIs(gate.hold([self.replicated]), first)
        gate.sealed()
        second = gate.hold([self.replicated])
        self.assertIsNot(second, first)
        self.assertEqual(one.attached, [first, second])

    def test_backupLost(self) -> None:
        """
        A backup that goes away is no longer waited for, by the publishes
        already waiting or by later ones.
        """
        gate, (one, two) = self.gate(sources=2)
        completion = gate.hold([self.replicated])
        assert completion is not None
        fired = self.confirmed(completion)
        completion.acknowledged(one)
        gate.backupLost(two)  # type: ignore[arg-type]
        self.assertEqual(fired, [True])
        self.assertNotIn(two, gate.sources)
        gate.sealed()
        later = gate.hold([self.replicated])
        assert later is not None
        self.assertEqual(later.parties, {one})

    def test_minBackupsHolds(self) -> None:
        """
        With C{--ha-min-backups 1} and no backup, a replicated publish is
        held; a backup becoming ready (it holds everything queued) counts
        toward the shortfall and completes it.
        """
        gate, _ = self.gate(minBackups=1)
        completion = gate.hold([self.replicated])
        assert completion is not None
        fired = self.confirmed(completion)
        self.assertEqual(fired, [])
        source = FakeSource("late")
        gate.backupReady(source)  # type: ignore[arg-type]
        self.assertEqual(fired, [True])
        self.assertEqual(gate.waiting, set())

    def test_minBackupsAfterLoss(self) -> None:
        """
        With C{--ha-min-backups 1}, losing the only backup before it
        acknowledged leaves the publish held: nobody else holds it.
        """
        gate, (one,) = self.gate(minBackups=1, sources=1)
        completion = gate.hold([self.replicated])
        assert completion is not None
        fired = self.confirmed(completion)
        gate.backupLost(one)  # type: ignore[arg-type]
        self.assertEqual(fired, [])
        self.assertIn(completion, gate.waiting)

    def test_minBackupsCountsAcks(self) -> None:
        """
        With C{--ha-min-backups 2} and two backups, a publish completes
        once both acknowledged; with only one backup acknowledging it needs
        another backup to become ready.
        """
        gate, (one, two) = self.gate(minBackups=2, sources=2)
        completion = gate.hold([self.replicated])
        assert completion is not None
        fired = self.confirmed(completion)
        completion.acknowledged(one)
        gate.backupLost(two)  # type: ignore[arg-type]
        self.assertEqual(fired, [])
        gate.backupReady(FakeSource("three"))  # type: ignore[arg-type]
        self.assertEqual(fired, [True])

    def test_readyBackupNotCountedTwice(self) -> None:
        """
        A backup that is already a party to a completion does not count
        toward the minimum by becoming ready again; its acknowledgement
        does.
        """
        gate, (one,) = self.gate(minBackups=1, sources=1)
        completion = gate.hold([self.replicated])
        assert completion is not None
        fired = self.confirmed(completion)
        gate.backupReady(one)  # type: ignore[arg-type]
        self.assertEqual(fired, [])
        completion.acknowledged(one)
        self.assertEqual(fired, [True])

    def test_recoveryHolds(self) -> None:
        """
        A recovering primary holds every publish, replicated or not, until
        it is active.
        """
        gate, _ = self.gate()
        gate.recovering = True
        plain = gate.hold([self.plain])
        replicated = gate.hold([self.replicated])
        assert plain is not None and replicated is not None
        self.assertIsNot(plain, replicated)
        fired = self.confirmed(plain)
        firedReplicated = self.confirmed(replicated)
        self.assertEqual((fired, firedReplicated), ([], []))
        gate.recovered()
        self.assertTrue(plain.done)
        self.assertEqual(firedReplicated, [True])
        self.assertIsNone(gate.hold([self.plain]))

    def test_recoveryAndBackups(self) -> None:
        """
        A recovering primary's replicated publish needs both: recovery to
        end and the backups to acknowledge.
        """
        gate, (one,) = self.gate(sources=1)
        gate.recovering = True
        completion = gate.hold([self.replicated])
        assert completion is not None
        fired = self.confirmed(completion)
        completion.acknowledged(one)
        self.assertEqual(fired, [])
        gate.recovered()
        self.assertEqual(fired, [True])

    def test_doneCompletionCallsAtOnce(self) -> None:
        """
        A callback added to a completion that already fired is called at
        once.
        """
        completion = Completion(0)
        completion.check()
        fired = self.confirmed(completion)
        self.assertEqual(fired, [True])
