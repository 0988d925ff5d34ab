"""
The options changed at run time (C{qha-admin set}, Qpid's C{qpid-ha set}):
L{RuntimeSettings}, which the store keeps and the replication carries to
the backups as one L{qha.changes.events.SETTINGS} event, the way the users
and permissions changed at run time travel (L{qha.amqp.accounts}).

The rule is the users file's: the configuration (C{--config} file, command
line) gives the start values; a value set at run time is recorded and wins
over the start value, after a restart (the store replays it) and after a
failover (the backups applied it, in the stream's order). What the values
do to the broker (its L{qha.ha.config.HAOptions}, the replication level of
the queues and exchanges) is the business of the L{SettingsEffect}
attached (L{qha.admin.settings.OptionsFollower}); this module only keeps,
checks and hands on the values.

Every event carries the whole state, as JSON: the values set at run time
and the I{pins}, the replication levels of the queues and exchanges that
differ from what the current default gives them (those declared before a
C{set --replicate}, see L{qha.ha.primary.pinLevels}). With the pins the
state stands alone: a catch-up snapshot or a compacted journal, which
declare the objects first and the state after, give each object the level
it had on the broker that wrote them.

The registry of one broker is found from its virtual hosts
(L{RuntimeSettings.of}), as L{qha.amqp.accounts.Accounts} is.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Protocol
from weakref import WeakKeyDictionary

from ..broker.vhost import REPLICATE_LEVELS
from ..broker.vhosts import MAX_VHOST_NAME, VirtualHosts

BACKUP_TIMEOUT = "backupTimeout"
"""
Seconds a promoted broker waits for its backups (C{--ha-backup-timeout}).
"""

PUBLIC_BROKERS = "publicBrokers"
"""
The client addresses shown as the public URL (C{--ha-public-brokers}).
"""

REPLICATE = "replicate"
"""
The default replication level of new queues and exchanges
(C{--ha-replicate}).
"""

KEYS = (BACKUP_TIMEOUT, PUBLIC_BROKERS, REPLICATE)
"""
What may be set at run time, in the order C{qha-admin set} shows it.
"""

MAX_BACKUP_TIMEOUT = 24 * 3600.0
"""
The longest backup timeout C{set} takes, in seconds.
"""

MAX_BROKERS_TEXT = 4096
"""
The most characters of C{set --public-url}.
"""

MAX_PINS = 1 << 20
"""
The most pinned queues and exchanges one state may hold.
"""

MAX_NAME = 255
"""
The most bytes of UTF-8 of a pinned object's name (an AMQP short string).
"""

Pins = dict[str, dict[str, dict[str, str]]]
"""
Replication levels by virtual host, then C{queues} or C{exchanges}, then
name.
"""

PIN_KINDS = ("queues", "exchanges")


class SettingsError(ValueError):
    """
    A state or a value refused: C{str()} says why.
    """


def checkValue(key: str, value: object) -> Any:
    """
    A value of C{key}, checked: a backup timeout of 0 to
    L{MAX_BACKUP_TIMEOUT} seconds, a public URL of at most
    L{MAX_BROKERS_TEXT} characters, a replication level.

    @raise SettingsError: saying what is wrong.
    """
    if key == BACKUP_TIMEOUT:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SettingsError("the backup timeout is not a number")
        if not (math.isfinite(value) and 0 <= value <= MAX_BACKUP_TIMEOUT):
            raise SettingsError(
                f"a backup timeout of {value:g} seconds: give 0 to {MAX_BACKUP_TIMEOUT:g}"
            )
        return float(value)
    if key == PUBLIC_BROKERS:
        if not isinstance(value, str):
            raise SettingsError("the public URL is not a string")
        if len(value) > MAX_BROKERS_TEXT:
            raise SettingsError(f"a public URL of more than {MAX_BROKERS_TEXT} characters")
        return value
    if key == REPLICATE:
        if value not in REPLICATE_LEVELS:
            raise SettingsError(
                f"unknown replicate level {str(value)[:64]!r}: use {', '.join(REPLICATE_LEVELS)}"
            )
        return value
    raise SettingsError(f"unknown setting {str(key)[:64]!r}")


def _name(value: object, what: str, limit: int = MAX_NAME) -> str:
    """
    A name of the pins, checked: a string of at most C{limit} bytes.

    @raise SettingsError: if it is not.
    """
    if not isinstance(value, str):
        raise SettingsError(f"{what} is not a string")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise SettingsError(f"{what} is not valid UTF-8") from None
    if size > limit:
        raise SettingsError(f"{what} of {size} bytes (at most {limit})")
    return value


def checkPins(raw: object) -> Pins:
    """
    The pins of a state, checked: virtual host names, object names and
    levels, at most L{MAX_PINS} in all.

    @raise SettingsError: saying what is wrong.
    """
    if not isinstance(raw, dict):
        raise SettingsError("the pins are not a JSON object")
    pins: Pins = {}
    count = 0
    for vhost, kinds in raw.items():
        _name(vhost, "a pinned object's vhost", MAX_VHOST_NAME)
        if not isinstance(kinds, dict) or set(kinds) - set(PIN_KINDS):
            raise SettingsError(f"the pins of vhost {vhost[:64]!r} are not queues and exchanges")
        for kind, levels in kinds.items():
            if not isinstance(levels, dict):
                raise SettingsError(f"the pinned {kind} of vhost {vhost[:64]!r} are not an object")
            count += len(levels)
            if count > MAX_PINS:
                raise SettingsError(f"more than {MAX_PINS} pinned queues and exchanges")
            for name, level in levels.items():
                _name(name, f"a pinned {kind[:-1]}'s name")
                if level not in REPLICATE_LEVELS:
                    raise SettingsError(f"pinned level {str(level)[:64]!r} of {name[:64]!r}")
                pins.setdefault(vhost, {}).setdefault(kind, {})[name] = level
    return pins


def parseState(data: object) -> tuple[dict[str, Any], Pins]:
    """
    The values and pins of a L{SETTINGS} event's state, every field
    checked.

    @raise SettingsError: saying what is wrong.
    """
    if not isinstance(data, bytes):
        raise SettingsError("the settings state is not bytes")
    try:
        state = json.loads(data)
    except (ValueError, RecursionError) as error:
        raise SettingsError(f"the settings state is not JSON ({error})") from None
    if not isinstance(state, dict) or not isinstance(state.get("values"), dict):
        raise SettingsError("the settings state lacks its 'values' object")
    values = {key: checkValue(key, value) for key, value in state["values"].items()}
    return values, checkPins(state.get("pins", {}))


class SettingsEffect(Protocol):
    """
    What makes the values take effect (the broker's options, the levels of
    its objects): told first of every change, before the observers write
    it, and asked for the pins when a state is written.
    """

    def settingsApplied(self, values: dict[str, Any], pins: Pins | None) -> None:
        """
        The run-time values are now C{values} (those not in it: the start
        values); C{pins}, if given (a state received), are the levels of
        the objects that differ from the new default's.
        """

    def pins(self) -> Pins:
        """
        The levels of the objects that differ from what the current
        default gives them, now.
        """


class SettingsObserver(Protocol):
    """
    Told of every change, in order (the store, a replication source), to
    write it as an event.
    """

    def settingsChanged(self, state: bytes) -> None:
        """
        The state is now C{state} (see L{RuntimeSettings.state}).
        """


_registries: "WeakKeyDictionary[VirtualHosts, RuntimeSettings]" = WeakKeyDictionary()


class RuntimeSettings:
    """
    The values set at run time on one broker.

    @ivar values: the values set at run time, by key (of L{KEYS}).
    @ivar effect: makes them take effect, if attached.
    @ivar observers: told of each change.
    @ivar received: the pins of the last state applied, written again
        when no effect is attached to compute them.
    """

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.effect: SettingsEffect | None = None
        self.observers: list[SettingsObserver] = []
        self.received: Pins = {}

    @classmethod
    def of(cls, vhosts: VirtualHosts) -> "RuntimeSettings":
        """
        The run-time settings of the broker whose virtual hosts are
        C{vhosts}; made empty on first use.
        """
        settings = _registries.get(vhosts)
        if settings is None:
            settings = _registries[vhosts] = cls()
        return settings

    @property
    def empty(self) -> bool:
        """
        Whether nothing was set at run time.
        """
        return not self.values

    def set(self, values: dict[str, Any]) -> None:
        """
        Set C{values} at run time (on top of those set before): they take
        effect, then the observers record them.

        @raise SettingsError: if one is not valid; nothing changes then.
        """
        merged = dict(self.values)
        for key, value in values.items():
            merged[key] = checkValue(key, value)
        self._change(merged, None)

    def reset(self) -> None:
        """
        Forget every value set at run time: the start values take effect
        again, recorded as a state without values.
        """
        self._change({}, None)

    def apply(self, data: bytes) -> None:
        """
        Apply a state received (from the primary, or from the journal).

        @raise SettingsError: if it is not valid; nothing changes then.
        """
        values, pins = parseState(data)
        self._change(values, pins)

    def _change(self, values: dict[str, Any], pins: Pins | None) -> None:
        """
        Make C{values} the run-time values: the effect first, then the
        observers.
        """
        self.values = values
        if pins is not None:
            self.received = pins
        if self.effect is not None:
            self.effect.settingsApplied(dict(values), pins)
        if self.observers:
            state = self.state()
            for observer in list(self.observers):
                observer.settingsChanged(state)

    def state(self) -> bytes:
        """
        The whole state as the JSON of a L{SETTINGS} event: the values and
        the pins as they are now.
        """
        pins = self.effect.pins() if self.effect is not None else self.received
        return json.dumps({"values": self.values, "pins": pins}, sort_keys=True).encode("utf-8")


__all__ = [
    "BACKUP_TIMEOUT",
    "KEYS",
    "MAX_BACKUP_TIMEOUT",
    "MAX_BROKERS_TEXT",
    "MAX_PINS",
    "PIN_KINDS",
    "PUBLIC_BROKERS",
    "Pins",
    "REPLICATE",
    "RuntimeSettings",
    "SettingsEffect",
    "SettingsError",
    "SettingsObserver",
    "checkPins",
    "checkValue",
    "parseState",
]
