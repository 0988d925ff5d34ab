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
