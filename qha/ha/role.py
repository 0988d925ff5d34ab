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

The states carry what they started, as the states of Twisted's
C{ClientService} do: the backup states (joining, catchup, ready) the search
for and link to the primary (L{Following}), recovering its timer and the
backups it still waits for (L{Recovering}), the primary states the probe for
a newer primary (L{Serving}). Leaving a state stops what it started. A broker
not started yet is I{idle}: it reports itself joining, but looks for nothing.
C{doc/roles.md} draws the machine (C{python -m qha.ha.role} writes it).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from automat import NoTransition, TypeMachineBuilder
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

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


class Stoppable(Protocol):
    """
    Something a state started and stops when it is left (a search for the
    primary, a probe).
    """

    def stop(self) -> Any:
        "Stop it."


class Nothing:
    """
    A L{Stoppable} that does nothing: what a role started when the broker
    needs nothing done (the machine alone, in tests).
    """

    def stop(self) -> None:
        """
        Nothing to stop.
        """


class RoleEffects(Protocol):
    """
    What the role asks of the broker as states are entered.
    """

    def changed(self, old: str, new: str) -> None:
        "The role changed from C{old} to C{new} (also joining to joining)."

    def follow(self) -> Stoppable:
        "Look for the primary and follow it, until stopped."

    def probe(self) -> Stoppable:
        "Ask the other brokers, periodically, whether a newer primary exists."

    def expectedBackups(self) -> tuple[set[str], float, IReactorTime]:
        "The backups a promoted broker waits for, how long, and the clock."


class RoleInputs(Protocol):
    """
    What can happen to a broker's role.
    """

    def start(self) -> None:
        "The broker starts: a joining broker looks for the primary."

    def primaryFound(self) -> None:
        "A joining broker connected to the primary and subscribed."

    def caughtUp(self) -> None:
        "The catch-up finished: the backup holds the primary's state."

    def primaryLost(self) -> None:
        "The link to the primary went away."

    def promote(self) -> None:
        "Become the primary."

    def backupReturned(self, backupId: str) -> None:
        "A backup caught up with this primary."

    def recovered(self) -> None:
        "The expected backups are back (or the wait timed out)."

    def demote(self) -> None:
        "A newer primary exists: stop serving and rejoin."

    def stop(self) -> None:
        "The broker stops: stop what the role started."


@dataclass
class RoleCore:
    """
    What the machine tells the broker.

    @ivar role: the current role's name.
    @ivar history: every role entered, for diagnosis.
    @ivar current: the current state's data, if it carries any.
    @ivar following: the search for (and link to) the primary, shared by
        the backup states while it runs.
    @ivar probing: the probe, shared by the primary states while it runs.
    """

    effects: RoleEffects
    role: str = JOINING
    history: list[str] = field(default_factory=list)
    current: object = None
    following: Stoppable | None = None
    probing: Stoppable | None = None

    def enter(self, role: str) -> None:
        """
        Report the change to C{role}.
        """
        old, self.role = self.role, role
        self.history.append(role)
        self.effects.changed(old, role)

    def follow(self) -> Stoppable:
        """
        The running search for the primary, started if none runs.
        """
        if self.following is None:
            self.following = self.effects.follow()
        return self.following

    def stopFollowing(self) -> None:
        """
        Stop looking for (and following) the primary.
        """
        following, self.following = self.following, None
        if following is not None:
            following.stop()

    def probe(self) -> Stoppable:
        """
        The running probe, started if none runs.
        """
        if self.probing is None:
            self.probing = self.effects.probe()
        return self.probing

    def stopProbing(self) -> None:
        """
        Stop probing.
        """
        probing, self.probing = self.probing, None
        if probing is not None:
            probing.stop()


@dataclass
class Following:
    """
    The data of the backup states: the search for and link to the primary.
    """

    following: Stoppable


@dataclass
class Recovering:
    """
    The data of a promoted broker that waits for its backups.

    @ivar expected: the backups it still waits for.
    @ivar timer: the end of the wait, while it runs.
    @ivar probing: the probe for a newer primary.
    """

    expected: set[str]
    timer: IDelayedCall | None
    probing: Stoppable

    def cancel(self) -> None:
        """
        Stop waiting.
        """
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None


@dataclass
class Serving:
    """
    The data of the active primary: the probe for a newer primary.
    """

    probing: Stoppable


log = Logger()


def _newFollowing(inputs: RoleInputs, core: RoleCore) -> Following:
    following = Following(core.follow())
    core.current = following
    return following


def _newRecovering(inputs: RoleInputs, core: RoleCore) -> Recovering:
    expected, timeout, clock = core.effects.expectedBackups()
    recovery = Recovering(set(expected), None, core.probe())

    def timedOut() -> None:
        recovery.timer = None
        log.warn(
            "backups {missing} did not return within {timeout}s: going active without them",
            missing=sorted(recovery.expected),
            timeout=timeout,
        )
        recovery.expected.clear()
        inputs.recovered()

    if expected:
        log.info(
            "recovering: waiting up to {timeout}s for backups {expected}",
            timeout=timeout,
            expected=sorted(expected),
        )
        recovery.timer = clock.callLater(timeout, timedOut)
    else:
        recovery.timer = clock.callLater(0, inputs.recovered)
    core.current = recovery
    return recovery


def _newServing(inputs: RoleInputs, core: RoleCore) -> Serving:
    serving = Serving(core.probe())
    core.current = serving
    return serving


_builder = TypeMachineBuilder(RoleInputs, RoleCore)
_idle = _builder.state("idle")
_joining = _builder.state(JOINING, _newFollowing)
_catchup = _builder.state(CATCHUP, _newFollowing)
_ready = _builder.state(READY, _newFollowing)
_recovering = _builder.state(RECOVERING, _newRecovering)
_active = _builder.state(ACTIVE, _newServing)
_stopped = _builder.state("stopped")


def _to(role: str) -> Callable[..., None]:
    """
    An output that reports the change to C{role}.
    """

    def enter(inputs: RoleInputs, core: RoleCore, *data: object) -> None:
        core.enter(role)

    enter.__name__ = f"enter_{role}"
    return enter


def _lead(inputs: RoleInputs, core: RoleCore, *data: object) -> None:
    """
    A backup promoted: stop following, then report the change.
    """
    core.stopFollowing()
    core.enter(RECOVERING)


def _recovered(inputs: RoleInputs, core: RoleCore, recovery: Recovering) -> None:
    """
    The wait is over: cancel its timer, then report the change.
    """
    recovery.cancel()
    core.enter(ACTIVE)


def _stepDownRecovering(inputs: RoleInputs, core: RoleCore, recovery: Recovering) -> None:
    """
    A newer primary exists while recovering: stop the wait, then step down.
    """
    recovery.cancel()
    _stepDown(inputs, core)


def _stepDown(inputs: RoleInputs, core: RoleCore, *data: object) -> None:
    """
    A newer primary exists: stop the probe, then report.
    """
    core.stopProbing()
    core.enter(JOINING)


def _returned(inputs: RoleInputs, core: RoleCore, recovery: Recovering, backupId: str) -> None:
    """
    One backup the promoted broker waited for is back; the last one ends
    the wait.
    """
    if backupId in recovery.expected:
        recovery.expected.discard(backupId)
        if not recovery.expected:
            recovery.cancel()
            inputs.recovered()


def _ignored(inputs: RoleInputs, core: RoleCore, *args: object) -> None:
    """
    Nothing to do in this state.
    """


def _halt(inputs: RoleInputs, core: RoleCore, *data: object) -> None:
    """
    The broker stops: stop everything a state started.
    """
    for item in data:
        if isinstance(item, Recovering):
            item.cancel()
    core.stopFollowing()
    core.stopProbing()
    core.current = None


_idle.upon(RoleInputs.start).to(_joining)(_ignored)
_idle.upon(RoleInputs.primaryFound).to(_catchup)(_to(CATCHUP))
_idle.upon(RoleInputs.promote).to(_recovering)(_to(RECOVERING))
_idle.upon(RoleInputs.primaryLost).loop()(_to(JOINING))
_joining.upon(RoleInputs.start).loop()(_ignored)
_joining.upon(RoleInputs.primaryFound).to(_catchup)(_to(CATCHUP))
_joining.upon(RoleInputs.promote).to(_recovering)(_lead)
_joining.upon(RoleInputs.primaryLost).loop()(_to(JOINING))
_catchup.upon(RoleInputs.caughtUp).to(_ready)(_to(READY))
_catchup.upon(RoleInputs.primaryLost).to(_joining)(_to(JOINING))
_ready.upon(RoleInputs.primaryLost).to(_joining)(_to(JOINING))
_ready.upon(RoleInputs.promote).to(_recovering)(_lead)
_recovering.upon(RoleInputs.recovered).to(_active)(_recovered)
_recovering.upon(RoleInputs.backupReturned).loop()(_returned)
_recovering.upon(RoleInputs.demote).to(_joining)(_stepDownRecovering)
_recovering.upon(RoleInputs.promote).loop()(_ignored)
_active.upon(RoleInputs.demote).to(_joining)(_stepDown)
_active.upon(RoleInputs.promote).loop()(_ignored)
_active.upon(RoleInputs.backupReturned).loop()(_ignored)  # type: ignore[arg-type]
_state: Any
for _state in (_idle, _joining, _catchup, _ready):
    _state.upon(RoleInputs.backupReturned).loop()(_ignored)
for _state in (_catchup, _ready, _recovering, _active):
    _state.upon(RoleInputs.start).loop()(_ignored)
for _state in (_idle, _joining, _catchup, _ready, _recovering, _active, _stopped):
    _state.upon(RoleInputs.stop).to(_stopped)(_halt)

RoleMachine = _builder.build()

_REFUSALS = {
    (CATCHUP, "promote"): "it is still catching up with the primary",
}


class Role:
    """
    A broker's role: the automat machine, with typed inputs that raise
    L{RoleRefused} (with a reason) where the role does not allow them.
    """

    def __init__(self, effects: RoleEffects | Callable[[str, str], None]) -> None:
        """
        @param effects: what the broker does as states are entered; a bare
            C{changed(old, new)} callable for the machine alone.
        """
        if not hasattr(effects, "changed"):
            effects = _Reporting(effects)  # type: ignore[arg-type]
        self.core = RoleCore(effects)  # type: ignore[arg-type]
        self.machine = RoleMachine(self.core)

    @property
    def name(self) -> str:
        """
        The current role.
        """
        return self.core.role

    @property
    def isPrimary(self) -> bool:
        """
        Whether this broker is the primary (recovering or active).
        """
        return self.core.role in PRIMARY_ROLES

    @property
    def servesClients(self) -> bool:
        """
        Whether clients and admins may change this broker's objects.
        """
        return self.isPrimary

    @property
    def isBackup(self) -> bool:
        """
        Whether this broker follows (or looks for) a primary.
        """
        return self.core.role in BACKUP_ROLES

    @property
    def isJoining(self) -> bool:
        """
        Whether this broker looks for the primary (and follows none yet).
        """
        return self.core.role == JOINING

    @property
    def hasPrimary(self) -> bool:
        """
        Whether this broker follows a primary (catching up, or ready).
        """
        return self.core.role in (CATCHUP, READY)

    @property
    def catchingUp(self) -> bool:
        """
        Whether this broker is still catching up with its primary.
        """
        return self.core.role == CATCHUP

    @property
    def recovery(self) -> Recovering | None:
        """
        The promoted broker's wait for its backups, while it recovers.
        """
        current = self.core.current
        return current if isinstance(current, Recovering) else None

    def _feed(self, name: str, input: Callable[[], object]) -> None:
        role = self.core.role
        try:
            input()
        except NoTransition:
            reason = _REFUSALS.get((role, name), f"it is {role}")
            raise RoleRefused(f"cannot {name} this broker: {reason}") from None

    def start(self) -> None:
        """
        The broker starts.
        """
        self._feed("start", self.machine.start)

    def primaryFound(self) -> None:
        """
        Connected and subscribed to the primary.

        @raise RoleRefused: unless joining.
        """
        self._feed("primaryFound", self.machine.primaryFound)

    def caughtUp(self) -> None:
        """
        Caught up with the primary.

        @raise RoleRefused: unless catching up.
        """
        self._feed("caughtUp", self.machine.caughtUp)

    def primaryLost(self) -> None:
        """
        The link to the primary went.

        @raise RoleRefused: in a primary role.
        """
        self._feed("primaryLost", self.machine.primaryLost)

    def promote(self) -> None:
        """
        Become the primary.

        @raise RoleRefused: while catching up.
        """
        self._feed("promote", self.machine.promote)

    def backupReturned(self, backupId: str) -> None:
        """
        Backup C{backupId} caught up with this broker; ends a recovery that
        waited for it last.
        """
        self._feed("backupReturned", lambda: self.machine.backupReturned(backupId))

    def recovered(self) -> None:
        """
        Go active.

        @raise RoleRefused: unless recovering.
        """
        self._feed("recovered", self.machine.recovered)

    def demote(self) -> None:
        """
        A newer primary exists.

        @raise RoleRefused: unless a primary.
        """
        self._feed("demote", self.machine.demote)

    def stop(self) -> None:
        """
        The broker stops: stop what the current state started.
        """
        self.machine.stop()


@dataclass
class _Reporting:
    """
    L{RoleEffects} of the machine alone: report changes, start nothing.
    """

    changed: Callable[[str, str], None]
    clock: Any = None

    def follow(self) -> Stoppable:
        return Nothing()

    def probe(self) -> Stoppable:
        return Nothing()

    def expectedBackups(self) -> tuple[set[str], float, IReactorTime]:
        from twisted.internet.task import Clock

        if self.clock is None:
            self.clock = Clock()
        return set(), 0.0, self.clock


class StandaloneRole:
    """
    The role of a broker outside any cluster: it never changes.
    """

    name = STANDALONE
    isPrimary = False
    servesClients = True
    isBackup = False
    isJoining = False
    hasPrimary = False
    catchingUp = False
    recovery = None

    def _refuse(self, input: str) -> None:
        raise RoleRefused(f"cannot {input} this broker: it is standalone")

    def start(self) -> None:
        """
        Nothing to start.
        """

    def stop(self) -> None:
        """
        Nothing to stop.
        """

    def backupReturned(self, backupId: str) -> None:
        """
        Standalone brokers wait for no backup.
        """

    def primaryFound(self) -> None:
        """
        @raise RoleRefused: always.
        """
        self._refuse("primaryFound")

    def caughtUp(self) -> None:
        """
        @raise RoleRefused: always.
        """
        self._refuse("caughtUp")

    def primaryLost(self) -> None:
        """
        @raise RoleRefused: always.
        """
        self._refuse("primaryLost")

    def promote(self) -> None:
        """
        @raise RoleRefused: always.
        """
        self._refuse("promote")

    def recovered(self) -> None:
        """
        @raise RoleRefused: always.
        """
        self._refuse("recovered")

    def demote(self) -> None:
        """
        @raise RoleRefused: always.
        """
        self._refuse("demote")


def transitions() -> list[tuple[str, str, str]]:
    """
    The machine's transitions as (state, input, next state), read from the
    built machine, for the drawing in C{doc/roles.md}.
    """
    automaton = RoleMachine.__automat_automaton__  # type: ignore[attr-defined]
    rows = []
    for old, input, new, _ in automaton.allTransitions():
        rows.append((old.name, input, new.name))
    return sorted(set(rows))


def mermaid() -> str:
    """
    The machine as a mermaid state diagram.
    """
    lines = [
        "stateDiagram-v2",
        "    [*] --> idle",
        "    note right of idle: not started; reports itself joining",
        "    idle --> joining: start",
    ]
    for old, input, new in transitions():
        if input in ("start", "stop") or (input == "backupReturned" and old != RECOVERING):
            continue
        lines.append(f"    {old} --> {new}: {input}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(mermaid())
