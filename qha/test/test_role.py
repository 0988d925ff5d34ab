"""
Tests of L{qha.ha.role}: the role machine's transitions, its refusals with a
reason, and what its states own (the recovering state's timer and the
backups it waits for, the search for the primary, the probe), stopped when
the state is left.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from qha.ha.role import (
    ACTIVE,
    CATCHUP,
    JOINING,
    READY,
    RECOVERING,
    STANDALONE,
    Role,
    RoleRefused,
    StandaloneRole,
    Stoppable,
    mermaid,
    transitions,
)


class RoleMachineTests(SynchronousTestCase):
    """
    L{Role}: Qpid's transitions, and a reason for every refusal.
    """

    def setUp(self) -> None:
        """
        A role that records every change it reports.
        """
        self.changes: list[tuple[str, str]] = []
        self.role = Role(lambda old, new: self.changes.append((old, new)))

    def walk(self, *inputs: Callable[[Role], None]) -> None:
        """
        Feed C{inputs} (L{Role} methods) in order.
        """
        for input in inputs:
            input(self.role)

    def test_startsJoining(self) -> None:
        """
        A broker in a cluster starts out joining, with no change reported.
        """
        self.assertEqual(self.role.name, JOINING)
        self.assertEqual(self.changes, [])

    def test_backupLife(self) -> None:
        """
        Joining finds the primary (catchup), catches up (ready), loses the
        primary (joining), and can do it all again.
        """
        self.walk(Role.primaryFound, Role.caughtUp, Role.primaryLost, Role.primaryFound, Role.caughtUp)
        self.assertEqual(
            self.changes,
            [
                (JOINING, CATCHUP),
                (CATCHUP, READY),
                (READY, JOINING),
                (JOINING, CATCHUP),
                (CATCHUP, READY),
            ],
        )

    def test_catchupLosesPrimary(self) -> None:
        """
        A backup losing the primary while catching up goes back to joining.
        """
        self.walk(Role.primaryFound, Role.primaryLost)
        self.assertEqual(self.role.name, JOINING)

    def test_joiningLosesPrimary(self) -> None:
        """
        A joining broker that loses a link stays joining; the change is still
        reported, so the broker looks for the primary again.
        """
        self.walk(Role.primaryLost)
        self.assertEqual(self.changes, [(JOINING, JOINING)])

    def test_promoteReady(self) -> None:
        """
        A ready backup promoted recovers, then becomes active.
        """
        self.walk(Role.primaryFound, Role.caughtUp, Role.promote, Role.recovered)
        self.assertEqual(self.changes[-2:], [(READY, RECOVERING), (RECOVERING, ACTIVE)])
        self.assertEqual(self.role.name, ACTIVE)

    def test_promoteJoining(self) -> None:
        """
        A joining broker may be promoted (the node checks that no other one
        is ready).
        """
        self.walk(Role.promote)
        self.assertEqual(self.changes, [(JOINING, RECOVERING)])

    def test_promotePrimaryIsNoOp(self) -> None:
        """
        Promoting a recovering or an active primary changes nothing.
        """
        self.walk(Role.promote, Role.promote)
        self.assertEqual(self.role.name, RECOVERING)
        self.walk(Role.recovered, Role.promote)
        self.assertEqual(self.role.name, ACTIVE)
        self.assertEqual(self.changes, [(JOINING, RECOVERING), (RECOVERING, ACTIVE)])

    def test_demote(self) -> None:
        """
        A recovering or active primary that learns of a newer epoch goes back
        to joining.
        """
        self.walk(Role.promote, Role.demote)
        self.assertEqual(self.changes[-1], (RECOVERING, JOINING))
        self.walk(Role.promote, Role.recovered, Role.demote)
        self.assertEqual(self.changes[-1], (ACTIVE, JOINING))

    def test_promoteCatchupRefused(self) -> None:
        """
        A backup still catching up refuses promotion, saying so, and stays
        where it is.
        """
        self.walk(Role.primaryFound)
        error = self.assertRaises(RoleRefused, self.role.promote)
        self.assertEqual(
            str(error), "cannot promote this broker: it is still catching up with the primary"
        )
        self.assertEqual(self.role.name, CATCHUP)

    def test_refusals(self) -> None:
        """
        Every input a role does not allow is refused with the role named,
        and leaves the role unchanged.
        """
        paths: dict[str, tuple[Callable[[Role], None], ...]] = {
            JOINING: (),
            CATCHUP: (Role.primaryFound,),
            READY: (Role.primaryFound, Role.caughtUp),
            RECOVERING: (Role.promote,),
            ACTIVE: (Role.promote, Role.recovered),
        }
        refused = {
            JOINING: [Role.caughtUp, Role.recovered, Role.demote],
            CATCHUP: [Role.primaryFound, Role.recovered, Role.demote],
            READY: [Role.primaryFound, Role.caughtUp, Role.recovered, Role.demote],
            RECOVERING: [Role.primaryFound, Role.caughtUp, Role.primaryLost],
            ACTIVE: [Role.primaryFound, Role.caughtUp, Role.primaryLost, Role.recovered],
        }
        for state, inputs in refused.items():
            for input in inputs:
                role = Role(lambda old, new: None)
                for step in paths[state]:
                    step(role)
                error = self.assertRaises(RoleRefused, input, role)
                self.assertEqual(str(error), f"cannot {input.__name__} this broker: it is {state}")
                self.assertEqual(role.name, state)

    def test_history(self) -> None:
        """
        The core keeps every role entered, for diagnosis.
        """
        self.walk(Role.primaryFound, Role.caughtUp, Role.promote)
        self.assertEqual(self.role.core.history, [CATCHUP, READY, RECOVERING])


class Started:
    """
    A L{Stoppable} that records whether it was stopped.
    """

    def __init__(self, what: str) -> None:
        """
        @param what: what it stands for.
        """
        self.what = what
        self.stopped = False

    def stop(self) -> None:
        """
        Record the stop.
        """
        self.stopped = True


class RecordingEffects:
    """
    L{qha.ha.role.RoleEffects} that record what the states start.
    """

    def __init__(self, expected: set[str], timeout: float = 10.0) -> None:
        """
        @param expected: the backups a promoted broker waits for.
        @param timeout: how long.
        """
        self.clock = Clock()
        self.expected = expected
        self.timeout = timeout
        self.changes: list[tuple[str, str]] = []
        self.searches: list[Started] = []
        self.probes: list[Started] = []

    def changed(self, old: str, new: str) -> None:
        """
        Record the change.
        """
        self.changes.append((old, new))

    def follow(self) -> Stoppable:
        """
        A new search for the primary.
        """
        self.searches.append(Started("search"))
        return self.searches[-1]

    def probe(self) -> Stoppable:
        """
        A new probe.
        """
        self.probes.append(Started("probe"))
        return self.probes[-1]

    def expectedBackups(self) -> tuple[set[str], float, Clock]:
        """
        The backups to wait for.
        """
        return set(self.expected), self.timeout, self.clock


class StateDataTests(SynchronousTestCase):
    """
    What the states own, and that leaving them stops it.
    """

    def test_searchSpansBackupStates(self) -> None:
        """
        Starting starts one search for the primary, kept through catchup,
        ready and back to joining; promotion stops it.
        """
        effects = RecordingEffects(set())
        role = Role(effects)
        self.assertEqual(effects.searches, [])
        role.start()
        role.primaryFound()
        role.caughtUp()
        role.primaryLost()
        self.assertEqual(len(effects.searches), 1)
        self.assertFalse(effects.searches[0].stopped)
        role.promote()
        self.assertTrue(effects.searches[0].stopped)

    def test_recoveringOwnsItsTimer(self) -> None:
        """
        A promoted broker waits for its backups; the last one back ends
        the wait, and the timer is cancelled.
        """
        effects = RecordingEffects({"b1", "b2"})
        role = Role(effects)
        role.promote()
        recovery = role.recovery
        assert recovery is not None
        self.assertEqual(recovery.expected, {"b1", "b2"})
        self.assertEqual(len(effects.clock.getDelayedCalls()), 1)
        role.backupReturned("b1")
        role.backupReturned("unknown")
        self.assertEqual((role.name, recovery.expected), (RECOVERING, {"b2"}))
        role.backupReturned("b2")
        self.assertEqual(role.name, ACTIVE)
        self.assertIsNone(role.recovery)
        self.assertEqual(effects.clock.getDelayedCalls(), [])

    def test_recoveryTimesOut(self) -> None:
        """
        When the backups do not return, the timer makes the broker active.
        """
        effects = RecordingEffects({"b1"}, timeout=5.0)
        role = Role(effects)
        role.promote()
        effects.clock.advance(4.9)
        self.assertEqual(role.name, RECOVERING)
        effects.clock.advance(0.1)
        self.assertEqual(role.name, ACTIVE)

    def test_nothingExpected(self) -> None:
        """
        A promoted broker that knew no backup goes active on the next turn.
        """
        effects = RecordingEffects(set())
        role = Role(effects)
        role.promote()
        self.assertEqual(role.name, RECOVERING)
        effects.clock.advance(0)
        self.assertEqual(role.name, ACTIVE)

    def test_demoteCancelsTimerAndProbe(self) -> None:
        """
        A recovering broker that learns of a newer primary stops waiting
        and probing, and looks for the primary.
        """
        effects = RecordingEffects({"b1"})
        role = Role(effects)
        role.promote()
        self.assertEqual(len(effects.probes), 1)
        role.demote()
        self.assertEqual(role.name, JOINING)
        self.assertEqual(effects.clock.getDelayedCalls(), [])
        self.assertTrue(effects.probes[0].stopped)
        self.assertEqual(len(effects.searches), 1)
        self.assertFalse(effects.searches[0].stopped)

    def test_probeSpansPrimaryStates(self) -> None:
        """
        One probe runs through recovering and active; stepping down from
        active stops it.
        """
        effects = RecordingEffects(set())
        role = Role(effects)
        role.promote()
        effects.clock.advance(0)
        self.assertEqual((role.name, len(effects.probes)), (ACTIVE, 1))
        role.demote()
        self.assertTrue(effects.probes[0].stopped)

    def test_stopStopsEverything(self) -> None:
        """
        Stopping the broker cancels the recovery's timer and stops the
        probe; a stopped role refuses everything but stop.
        """
        effects = RecordingEffects({"b1"})
        role = Role(effects)
        role.promote()
        role.stop()
        self.assertEqual(effects.clock.getDelayedCalls(), [])
        self.assertTrue(effects.probes[0].stopped)
        self.assertRaises(RoleRefused, role.promote)
        role.stop()

    def test_stopWhileFollowing(self) -> None:
        """
        Stopping a joining broker stops its search.
        """
        effects = RecordingEffects(set())
        role = Role(effects)
        role.start()
        role.stop()
        self.assertTrue(effects.searches[0].stopped)


class StandaloneRoleTests(SynchronousTestCase):
    """
    L{StandaloneRole}: it never changes, and says so.
    """

    def test_refusesEverything(self) -> None:
        """
        Every input that would change a role is refused, naming the
        standalone role.
        """
        role = StandaloneRole()
        for input in (
            role.primaryFound,
            role.caughtUp,
            role.primaryLost,
            role.promote,
            role.recovered,
            role.demote,
        ):
            error = self.assertRaises(RoleRefused, input)
            self.assertEqual(str(error), f"cannot {input.__name__} this broker: it is standalone")
        role.start()
        role.backupReturned("b")
        role.stop()
        self.assertEqual(role.name, STANDALONE)
        self.assertTrue(role.servesClients)


class DrawingTests(SynchronousTestCase):
    """
    The drawing in C{doc/roles.mmd} is the machine's.
    """

    def test_transitionsFromTheMachine(self) -> None:
        """
        The transitions are read from the built machine.
        """
        rows = transitions()
        self.assertIn(("ready", "promote", "recovering"), rows)
        self.assertIn(("recovering", "recovered", "active"), rows)

    def test_drawingIsCurrent(self) -> None:
        """
        C{doc/roles.mmd} is what C{python -m qha.ha.role} writes now.
        """
        import os

        import qha

        path = os.path.join(os.path.dirname(os.path.dirname(qha.__file__)), "doc", "roles.mmd")
        if not os.path.exists(path):
            raise self.skipTest("no doc/ next to the package (installed elsewhere)")
        with open(path) as f:
            self.assertEqual(f.read(), mermaid())
