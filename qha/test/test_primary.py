"""
Tests for the L{ReplicationGate} of L{qha.ha.primary} and its
L{Completion}s: which publishes wait for backups, and for which ones.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from qha.amqp.holders import Completion
from qha.broker.message import Message
from qha.broker.vhost import VirtualHost
from qha.broker.vhosts import VirtualHosts
from qha.changes import events as ev
from qha.changes.scoped import ScopedObserver, observe
from qha.ha.commands import Events
from qha.ha.primary import ReplicationGate, ReplicationSource, SourceObserver
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

    def test_levelKept(self) -> None:
        """
        A queue's level is worked out under the default at its first
        publish and kept: a later change of the default does not change
        whether its publishes wait, and a level pinned before is used as
        it is.
        """
        node = FakeNode()
        gate = ReplicationGate(node, Clock())
        gate.sources.add(FakeSource("b"))  # type: ignore[arg-type]
        before = self.vhost.declareQueue("before")
        self.assertIsNone(gate.hold([before]))
        node.replicateDefault = "all"
        self.assertIsNone(gate.hold([before]))
        self.assertIsNotNone(gate.hold([self.vhost.declareQueue("after")]))
        pinned = self.vhost.declareQueue("pinned")
        pinned.replicationLevel = "none"
        self.assertIsNone(gate.hold([pinned]))

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


class _Connection:
    """
    A backup's connection as a source sends on it: every box kept,
    none answered.

    @ivar boxes: the events of each L{Events} box sent.
    """

    transport = None

    def __init__(self) -> None:
        """
        No box yet.
        """
        self.boxes: list[bytes] = []

    def callRemoteString(self, command: bytes, requiresAnswer: bool = True, **strings: Any) -> Deferred[Any]:
        """
        Keep an L{Events} box's events; the answer never comes.
        """
        if command == Events.commandName:
            self.boxes.append(b"".join(bytes(strings[key]) for key in sorted(strings) if key.startswith("events")))
        return Deferred()


class _SourceNode:
    """
    What a L{ReplicationSource} reads of its broker.
    """

    epoch = 1
    position = 0
    heartbeat = 0.0
    replicateDefault = "none"

    def __init__(self, vhost: VirtualHost, clock: Clock) -> None:
        """
        @param vhost: the virtual host streamed.
        @param clock: the gate's clock.
        """
        self.vhost = vhost
        self.gate = ReplicationGate(FakeNode(), clock)

    def backupReady(self, source: ReplicationSource) -> None:
        """
        Not in these tests.
        """

    def backupLost(self, source: ReplicationSource) -> None:
        """
        Not in these tests.
        """

    def heardEpoch(self, epoch: int, role: str, brokerId: str) -> None:
        """
        Not in these tests.
        """


class SourceObserverTests(SynchronousTestCase):
    """
    A L{ReplicationSource} observes each virtual host through a
    L{SourceObserver}, which writes the enqueue events itself.
    """

    def test_enqueuesScopedAndFollowed(self) -> None:
        """
        A source observes every virtual host once, through a
        L{SourceObserver}; the enqueues of queues replicated with C{all}
        travel, each virtual host's after a scope event naming it, and
        those of other queues do not.
        """
        clock = Clock()
        vhost = VirtualHost(clock=clock)
        other = VirtualHosts.of(vhost).add("other")
        replicated = vhost.declareQueue("r", arguments=ALL)
        elsewhere = other.declareQueue("r2", arguments=ALL)
        plain = vhost.declareQueue("p")
        connection = _Connection()
        source = ReplicationSource(_SourceNode(vhost, clock), connection, "b", "b:1", clock)  # type: ignore[arg-type]
        source.start({})
        clock.advance(0)
        observers = [o for each in (vhost, other) for o in each.observers if isinstance(o, ScopedObserver)]
        self.assertEqual([type(o) for o in observers], [SourceObserver, SourceObserver])
        self.assertIs(observe(vhost, source, kind=SourceObserver), observers[0])
        connection.boxes.clear()
        replicated.enqueue(Message.build("", "r", b"1"))
        plain.enqueue(Message.build("", "p", b"2"))
        elsewhere.enqueue(Message.build("", "r2", b"3"))
        replicated.enqueue(Message.build("", "r", b"4"))
        clock.advance(0)
        [box] = connection.boxes
        self.assertEqual(
            [(event[0], event[1]) + ((event[6],) if event[0] == ev.ENQUEUED else ()) for event in ev.readEvents(box)],
            [
                (ev.ENQUEUED, "r", b"1"),
                (ev.VHOST, "other"),
                (ev.ENQUEUED, "r2", b"3"),
                (ev.VHOST, "/"),
                (ev.ENQUEUED, "r", b"4"),
            ],
        )
        source.stop()
        self.assertEqual([o for o in vhost.observers if isinstance(o, ScopedObserver)], [])
        self.assertEqual(clock.getDelayedCalls(), [])
