"""
The role state machine of a broker in a cluster, after Qpid's final HA
module.

    standalone  no cluster; serves clients
    joining     looking for the primary among --ha-brokers
    catchup     connected to the primary, downloading state
    ready       caught up, following the live stream; may be promoted
    recovering  promoted; waits for the backups it knew before completing
                publishes
    active      the primary, serving clients

Transitions that Qpid allowed and qha keeps: joining to catchup, catchup to
ready, ready to recovering (promoted), joining to recovering (promoted when no
broker is ready: the caller checks that), recovering to active; and, on losing
the primary, catchup or ready back to joining; on learning of a newer epoch,
recovering or active back to joining (fencing). Any other input in a state is
refused with a reason (L{RoleRefused}).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

from automat import NoTransition, TypeMachineBuilder

STANDALONE = "standalone"
JOINING = "joining"
CATCHUP = "catchup"
READY = "ready"
RECOVERING = "recovering"
ACTIVE = "active"

PRIMARY_ROLES = (RECOVERING, ACTIVE)
BACKUP_ROLES = (JOINING, CATCHUP, READY)


class RoleRefused(Exception):
    """
    The input is not allowed in the current role; the message says why.
    """


class RoleInputs(Protocol):
    """
    What can happen to a broker's role.
    """

    def primaryFound(self) -> None:
        "A joining broker connected to the primary and subscribed."

    def caughtUp(self) -> None:
        "The catch-up finished: the backup holds the primary's state."

    def primaryLost(self) -> None:
        "The link to the primary went away."

    def promote(self) -> None:
        "Become the primary."

    def recovered(self) -> None:
        "The expected backups are back (or the wait timed out)."

    def demote(self) -> None:
        "A newer primary exists: stop serving and rejoin."


@dataclass
class RoleCore:
    """
    What the machine tells the broker: C{changed(old, new)} after every
    transition.

    @ivar role: the current role's name.
    """

    changed: Callable[[str, str], None]
    role: str = JOINING
    history: list[str] = field(default_factory=list)

    def enter(self, role: str) -> None:
        old, self.role = self.role, role
        self.history.append(role)
        self.changed(old, role)


_builder = TypeMachineBuilder(RoleInputs, RoleCore)
_joining = _builder.state(JOINING)
_catchup = _builder.state(CATCHUP)
_ready = _builder.state(READY)
_recovering = _builder.state(RECOVERING)
_active = _builder.state(ACTIVE)


def _to(role: str) -> Callable[[RoleInputs, RoleCore], None]:
    def enter(inputs: RoleInputs, core: RoleCore) -> None:
        core.enter(role)

    enter.__name__ = f"enter_{role}"
    return enter


_joining.upon(RoleInputs.primaryFound).to(_catchup)(_to(CATCHUP))
_joining.upon(RoleInputs.promote).to(_recovering)(_to(RECOVERING))
_joining.upon(RoleInputs.primaryLost).loop()(_to(JOINING))
_catchup.upon(RoleInputs.caughtUp).to(_ready)(_to(READY))
_catchup.upon(RoleInputs.primaryLost).to(_joining)(_to(JOINING))
_ready.upon(RoleInputs.primaryLost).to(_joining)(_to(JOINING))
_ready.upon(RoleInputs.promote).to(_recovering)(_to(RECOVERING))
_recovering.upon(RoleInputs.recovered).to(_active)(_to(ACTIVE))
_recovering.upon(RoleInputs.demote).to(_joining)(_to(JOINING))
_active.upon(RoleInputs.demote).to(_joining)(_to(JOINING))
_active.upon(RoleInputs.promote).loop()(lambda inputs, core: None)
_recovering.upon(RoleInputs.promote).loop()(lambda inputs, core: None)

RoleMachine = _builder.build()

_REFUSALS = {
    (CATCHUP, "promote"): "it is still catching up with the primary",
}


class Role:
    """
    A broker's role: the automat machine, and a name for the current state.
    """

    def __init__(self, changed: Callable[[str, str], None]) -> None:
        self.core = RoleCore(changed)
        self.machine = RoleMachine(self.core)

    @property
    def name(self) -> str:
        """
        The current role.
        """
        return self.core.role

    def apply(self, input: str) -> None:
        """
        Feed input C{input} (a L{RoleInputs} method name).

        @raise RoleRefused: if the current role does not allow it.
        """
        role = self.core.role
        try:
            getattr(self.machine, input)()
        except NoTransition:
            reason = _REFUSALS.get((role, input), f"it is {role}")
            raise RoleRefused(f"cannot {input} this broker: {reason}") from None
