"""
What the options set at run time (C{qha-admin set}) do to a broker, and
where each value came from.

The values live in L{qha.changes.settings.RuntimeSettings}: recorded by the
store, carried to the backups. L{OptionsFollower} is its effect: it keeps
the start values (the configuration's, with their source), and whenever
the run-time values change (set here, received from the primary, replayed
from the journal at start) it makes the broker's L{HAOptions} and virtual
hosts use them, a run-time value winning over the start value, as a user
changed at run time wins over the users file. It pins the replication
levels of the objects a new C{--replicate} must not change
(L{qha.ha.primary.pinLevels}) and reports them in every state written, so
that a backup and a restarted broker give each object the level it has
here.

C{qha.tap} attaches it (L{followSettings}) before the store recovers, so
that the journal's settings apply in their place among the declarations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from twisted.logger import Logger

from ..broker.vhost import VirtualHost
from ..broker.vhosts import VirtualHosts
from ..changes.settings import (
    BACKUP_TIMEOUT,
    KEYS,
    PUBLIC_BROKERS,
    REPLICATE,
    Pins,
    RuntimeSettings,
)
from ..ha.config import HAOptions
from ..ha.primary import cachedLevel, pinLevels, replicateLevel, setLevel

DEFAULT = "default"
CONFIG_FILE = "config file"
COMMAND_LINE = "command line"
CONFIGURED = "configured"
RUN_TIME = "run time"
"""
Where a value came from: the option's default, the C{--config} file, the
command line, the configuration (source unknown: a node built without
C{qha.tap}), or C{qha-admin set}.
"""

OPTION_NAMES = {
    BACKUP_TIMEOUT: "ha-backup-timeout",
    PUBLIC_BROKERS: "ha-public-brokers",
    REPLICATE: "ha-replicate",
    "brokers": "ha-brokers",
}
"""
The C{twistd qha} option of each setting (and of the brokers URL, which
only the configuration gives).
"""

SET_NAMES = {
    BACKUP_TIMEOUT: "backup-timeout",
    PUBLIC_BROKERS: "public-url",
    REPLICATE: "replicate",
}
"""
The C{qha-admin set} option of each setting, for the log.
"""


@dataclass(frozen=True)
class Configured:
    """
    A start value and where it came from.
    """

    value: Any
    source: str


def describe(key: str, value: Any) -> str:
    """
    C{value} of setting C{key} as a person reads it.
    """
    if key == BACKUP_TIMEOUT:
        return f"{value:g} s"
    return value or "-"


def configuredSources(config: Mapping[str, Any]) -> dict[str, str]:
    """
    Where the configuration's value of each setting came from: the
    C{--config} file (the options it gave, in C{config.configFileValues}),
    the command line (a value other than the file's or the default), or
    the default.

    @param config: C{qha.tap.Options}, parsed.
    """
    fromFile: Mapping[str, Any] = getattr(config, "configFileValues", {})
    defaults: Mapping[str, Any] = getattr(config, "defaults", {})
    sources = {}
    for key, option in OPTION_NAMES.items():
        value = config.get(option)
        if option in fromFile:
            sources[key] = CONFIG_FILE if fromFile[option] == value else COMMAND_LINE
        elif option in defaults and defaults[option] == value:
            sources[key] = DEFAULT
        else:
            sources[key] = COMMAND_LINE
    return sources


class OptionsFollower:
    """
    The effect of the run-time settings on one broker (a
    L{qha.changes.settings.SettingsEffect}).

    @ivar options: the broker's options, changed in place.
    @ivar vhosts: the broker's virtual hosts.
    @ivar configured: the start values, by setting.
    """

    log = Logger()

    def __init__(
        self,
        options: HAOptions,
        vhosts: VirtualHosts,
        sources: Mapping[str, str] | None = None,
    ) -> None:
        """
        @param options: the broker's options, as the configuration gives
            them (the start values are read from them now).
        @param vhosts: the broker's virtual hosts.
        @param sources: where each start value came from (see
            L{configuredSources}); L{CONFIGURED} for those not given.
        """
        self.options = options
        self.vhosts = vhosts
        sources = sources or {}
        self.configured = {
            BACKUP_TIMEOUT: Configured(options.backupTimeout, sources.get(BACKUP_TIMEOUT, CONFIGURED)),
            PUBLIC_BROKERS: Configured(options.publicBrokers, sources.get(PUBLIC_BROKERS, CONFIGURED)),
            REPLICATE: Configured(options.replicateDefault, sources.get(REPLICATE, CONFIGURED)),
        }
        self.brokersSource = sources.get("brokers", CONFIGURED)

    def current(self) -> dict[str, Any]:
        """
        The values in use, by setting.
        """
        return {
            BACKUP_TIMEOUT: self.options.backupTimeout,
            PUBLIC_BROKERS: self.options.publicBrokers,
            REPLICATE: self.options.replicateDefault,
        }

    # SettingsEffect

    def settingsApplied(self, values: dict[str, Any], pins: Pins | None) -> None:
        """
        Use C{values} where given, the start values elsewhere; log each
        value that changes. A new default replication level pins the
        levels of the objects there are (they keep theirs); a state
        received (C{pins} given) sets every object's level: its pin, or
        what the new default gives it.
        """
        before = self.current()
        for key in KEYS:
            configured = self.configured[key]
            value = values.get(key, configured.value)
            if value == before[key]:
                continue
            if key in values:
                self.log.info(
                    "{setting} {value} set at run time overrides the configured {configured}",
                    setting=SET_NAMES[key],
                    value=describe(key, value),
                    configured=describe(key, configured.value),
                    source=configured.source,
                )
            else:
                self.log.info(
                    "{setting} back to the configured {value}",
                    setting=SET_NAMES[key],
                    value=describe(key, value),
                    source=configured.source,
                )
        self.options.backupTimeout = values.get(BACKUP_TIMEOUT, self.configured[BACKUP_TIMEOUT].value)
        self.options.publicBrokers = values.get(PUBLIC_BROKERS, self.configured[PUBLIC_BROKERS].value)
        replicate = values.get(REPLICATE, self.configured[REPLICATE].value)
        if replicate != self.options.replicateDefault:
            pinLevels(self.vhosts, self.options.replicateDefault)
            self.options.replicateDefault = replicate
        for vhost in self.vhosts:
            # What a vhost added from now on copies (see VirtualHosts).
            vhost.defaultReplicate = replicate
        if pins is not None:
            for vhost in self.vhosts:
                self._pin(vhost, pins.get(vhost.name, {}), replicate)

    @staticmethod
    def _pin(vhost: VirtualHost, pins: dict[str, dict[str, str]], default: str) -> None:
        """
        Give each queue and exchange of C{vhost} its pinned level, or the
        one C{default} gives it.
        """
        queues, exchanges = pins.get("queues", {}), pins.get("exchanges", {})
        for queue in vhost.queues.values():
            setLevel(queue, queues.get(queue.name) or replicateLevel(queue, default))
        for exchange in vhost.exchanges.values():
            setLevel(exchange, exchanges.get(exchange.name) or replicateLevel(exchange, default))

    def pins(self) -> Pins:
        """
        The queues and exchanges whose level differs from what the current
        default gives them (declared before a C{set --replicate}).
        """
        default = self.options.replicateDefault
        pins: Pins = {}
        for vhost in self.vhosts:
            for kind, objects in (("queues", vhost.queues), ("exchanges", vhost.exchanges)):
                for obj in objects.values():
                    level = cachedLevel(obj, default)
                    if level != replicateLevel(obj, default):
                        pins.setdefault(vhost.name, {}).setdefault(kind, {})[obj.name] = level
        return pins

    # What set shows

    def show(self, settings: RuntimeSettings) -> dict[str, Any]:
        """
        The values in use, where each came from (C{sources}: L{RUN_TIME} or
        the start value's source), and the start values (C{configured}).
        """
        current = self.current()
        return {
            "backupTimeout": current[BACKUP_TIMEOUT],
            "publicBrokers": current[PUBLIC_BROKERS],
            "brokers": ",".join(self.options.brokers),
            "replicate": current[REPLICATE],
            "sources": {
                **{
                    key: RUN_TIME if key in settings.values else self.configured[key].source
                    for key in KEYS
                },
                "brokers": self.brokersSource,
            },
            "configured": {key: self.configured[key].value for key in KEYS},
        }


def followSettings(
    options: HAOptions, vhost: VirtualHost, sources: Mapping[str, str] | None = None
) -> OptionsFollower:
    """
    The follower of the run-time settings of the broker whose default
    virtual host is C{vhost}: attached now if none is (C{qha.tap} does it
    before the store recovers, with the sources of the start values).
    """
    vhosts = VirtualHosts.of(vhost)
    settings = RuntimeSettings.of(vhosts)
    effect = settings.effect
    if isinstance(effect, OptionsFollower):
        return effect
    follower = OptionsFollower(options, vhosts, sources)
    settings.effect = follower
    if not settings.empty:
        follower.settingsApplied(dict(settings.values), settings.received)
    return follower


__all__ = [
    "COMMAND_LINE",
    "CONFIGURED",
    "CONFIG_FILE",
    "Configured",
    "DEFAULT",
    "OptionsFollower",
    "RUN_TIME",
    "configuredSources",
    "describe",
    "followSettings",
]
