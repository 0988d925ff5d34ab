"""
Tests for the options set at run time (C{qha-admin set}):
L{qha.changes.settings} (the values, their checks, the event) and
L{qha.admin.settings} (their effect, their precedence over the
configuration, where each came from), recorded by the store and replayed
at a restart, and carried to the backups so that a promoted one uses them.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from qha.admin.settings import (
    COMMAND_LINE,
    CONFIG_FILE,
    DEFAULT,
    OptionsFollower,
    configuredSources,
    followSettings,
)
from qha.amqp.accounts import Accounts
from qha.amqp.users import hashPassword
from qha.broker.vhost import VirtualHost
from qha.broker.vhosts import VirtualHosts
from qha.changes import events as ev
from qha.changes.replay import Replicator
from qha.changes.settings import (
    BACKUP_TIMEOUT,
    PUBLIC_BROKERS,
    REPLICATE,
    RuntimeSettings,
    SettingsError,
    parseState,
)
from qha.ha.config import HAOptions
from qha.ha.primary import cachedLevel
from qha.store.journal import FileJournal, Store
from qha.test.support import InMemoryCluster


class RecordingSettingsObserver:
    """
    Records every state it is told of.
    """

    def __init__(self) -> None:
        self.states: list[bytes] = []

    def settingsChanged(self, state: bytes) -> None:
        """
        Record C{state}.
        """
        self.states.append(state)


def broker(backupTimeout: float = 10.0, replicate: str = "none") -> tuple[VirtualHost, HAOptions, OptionsFollower]:
    """
    A default virtual host, options as the configuration gives them, and
    the follower of its run-time settings.
    """
    vhost = VirtualHost(clock=Clock())
    vhost.defaultReplicate = replicate
    options = HAOptions(brokers=[], backupTimeout=backupTimeout, replicateDefault=replicate)
    return vhost, options, followSettings(options, vhost)


def settingsOf(vhost: VirtualHost) -> RuntimeSettings:
    """
    The run-time settings of the broker of C{vhost}.
    """
    return RuntimeSettings.of(VirtualHosts.of(vhost))


class RuntimeSettingsTests(SynchronousTestCase):
    """
    L{RuntimeSettings}: the values, checked, and the state observers
    record.
    """

    def test_setTellsObservers(self) -> None:
        """
        C{set} merges the values with those set before and tells the
        observers the whole state.
        """
        settings = RuntimeSettings()
        observer = RecordingSettingsObserver()
        settings.observers.append(observer)
        settings.set({BACKUP_TIMEOUT: 5})
        settings.set({PUBLIC_BROKERS: "a:1"})
        self.assertEqual(settings.values, {BACKUP_TIMEOUT: 5.0, PUBLIC_BROKERS: "a:1"})
        self.assertEqual(
            [parseState(state)[0] for state in observer.states],
            [{BACKUP_TIMEOUT: 5.0}, {BACKUP_TIMEOUT: 5.0, PUBLIC_BROKERS: "a:1"}],
        )
        settings.reset()
        self.assertTrue(settings.empty)
        self.assertEqual(parseState(observer.states[-1]), ({}, {}))

    def test_refused(self) -> None:
        """
        A value out of bounds, an unknown setting or a bad state is
        refused, and nothing changes.
        """
        settings = RuntimeSettings()
        settings.set({REPLICATE: "all"})
        for values in (
            {BACKUP_TIMEOUT: -1},
            {BACKUP_TIMEOUT: float("inf")},
            {BACKUP_TIMEOUT: True},
            {PUBLIC_BROKERS: "x" * 5000},
            {REPLICATE: "some"},
            {"brokers": "a:1"},
        ):
            self.assertRaises(SettingsError, settings.set, values)
        for state in (
            b"[]",
            b"{",
            b'{"values": []}',
            b'{"values": {}, "pins": {"/": {"queues": {"q": "most"}}}}',
            b'{"values": {}, "pins": {"/": {"bindings": {}}}}',
            json.dumps({"values": {}, "pins": {"/": {"queues": {"q" * 300: "all"}}}}).encode(),
        ):
            self.assertRaises(SettingsError, settings.apply, state)
        self.assertEqual(settings.values, {REPLICATE: "all"})

    def test_malformedEvent(self) -> None:
        """
        A settings event whose state is refused is a malformed event: a
        backup or a store replaying it stops there, and nothing applies.
        """
        vhost, options, _ = broker()
        writer = ev.EventWriter()
        writer.event(ev.SETTINGS, b'{"values": {"backupTimeout": -3}}')
        self.assertRaises(ev.MalformedEvents, Replicator(vhost, lambda: None).apply, writer.take())
        self.assertEqual(options.backupTimeout, 10.0)


class PrecedenceTests(SynchronousTestCase):
    """
    A value set at run time wins over the configured one, until reset;
    the log says so.
    """

    def test_runTimeWins(self) -> None:
        """
        Set values take effect on the options and the virtual hosts;
        C{reset} brings the configured ones back.
        """
        vhost, options, follower = broker()
        other = VirtualHosts.of(vhost).add("other")
        settings = settingsOf(vhost)
        settings.set({BACKUP_TIMEOUT: 3, PUBLIC_BROKERS: "a:5672", REPLICATE: "all"})
        self.assertEqual(
            (options.backupTimeout, options.publicBrokers, options.replicateDefault),
            (3.0, "a:5672", "all"),
        )
        self.assertEqual((vhost.defaultReplicate, other.defaultReplicate), ("all", "all"))
        shown = follower.show(settings)
        self.assertEqual(shown["sources"][BACKUP_TIMEOUT], "run time")
        self.assertEqual(shown["configured"], {BACKUP_TIMEOUT: 10.0, PUBLIC_BROKERS: "", REPLICATE: "none"})
        settings.reset()
        self.assertEqual(
            (options.backupTimeout, options.publicBrokers, options.replicateDefault),
            (10.0, "", "none"),
        )
        self.assertEqual(follower.show(settings)["sources"][BACKUP_TIMEOUT], "configured")

    def test_logged(self) -> None:
        """
        Each value that takes effect is logged with the configured one it
        overrides; going back to the configured one is logged too.
        """
        vhost, options, _ = broker()
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]
        settingsOf(vhost).set({BACKUP_TIMEOUT: 5})
        settingsOf(vhost).set({BACKUP_TIMEOUT: 5})
        settingsOf(vhost).reset()
        self.assertEqual(
            [formatEvent(event) for event in logged if event.get("setting")],
            [
                "backup-timeout 5 s set at run time overrides the configured 10 s",
                "backup-timeout back to the configured 10 s",
            ],
        )

    def test_replicatePins(self) -> None:
        """
        A new default replication level leaves the objects there are at
        their level; the state written names them (its pins).
        """
        vhost, options, follower = broker()
        vhost.declareQueue("before")
        observer = RecordingSettingsObserver()
        settingsOf(vhost).observers.append(observer)
        settingsOf(vhost).set({REPLICATE: "all"})
        vhost.declareQueue("after")
        self.assertEqual(cachedLevel(vhost.queues["before"], options.replicateDefault), "none")
        self.assertEqual(cachedLevel(vhost.queues["after"], options.replicateDefault), "all")
        _, pins = parseState(observer.states[-1])
        self.assertEqual(pins, {"/": {"queues": {"before": "none"}}})
        self.assertEqual(follower.pins(), pins)

    def test_followerAttachedLate(self) -> None:
        """
        A follower attached after values were applied (a node built without
        C{qha.tap}) takes them at once; attaching again gives the same one.
        """
        vhost = VirtualHost(clock=Clock())
        settingsOf(vhost).apply(b'{"values": {"backupTimeout": 7}, "pins": {}}')
        options = HAOptions(brokers=[])
        follower = followSettings(options, vhost)
        self.assertEqual(options.backupTimeout, 7.0)
        self.assertIs(followSettings(HAOptions(brokers=[]), vhost), follower)

    def test_configuredSources(self) -> None:
        """
        A value is the config file's if the file gave it and the command
        line did not change it; the command line's if it differs from the
        file's or the default; else the default.
        """

        class Config(dict[str, Any]):
            """
            C{qha.tap.Options} as L{configuredSources} reads it.
            """

            defaults = {"ha-backup-timeout": 10.0, "ha-replicate": "none", "ha-public-brokers": None, "ha-brokers": None}
            configFileValues = {"ha-backup-timeout": 4.0, "ha-replicate": "all"}

        config = Config({"ha-backup-timeout": 4.0, "ha-replicate": "configuration", "ha-public-brokers": "a:1", "ha-brokers": None})
        self.assertEqual(
            configuredSources(config),
            {BACKUP_TIMEOUT: CONFIG_FILE, REPLICATE: COMMAND_LINE, PUBLIC_BROKERS: COMMAND_LINE, "brokers": DEFAULT},
        )


class StoredSettingsTests(SynchronousTestCase):
    """
    The store records the values set at run time; a broker restarted on
    its journal uses them instead of its configured ones, before and after
    a compaction, with each object at its level.
    """

    def setUp(self) -> None:
        """
        A journal path.
        """
        self.path = os.path.join(self.mktemp(), "journal")
        os.makedirs(os.path.dirname(self.path))

    def start(self, backupTimeout: float = 10.0) -> tuple[VirtualHost, HAOptions, Store]:
        """
        A broker on the journal, its follower attached before the store
        recovers (as C{qha.tap} does).
        """
        vhost, options, _ = broker(backupTimeout)
        clock = vhost.clock
        store = Store(FileJournal(self.path), clock)
        store.recover(vhost)
        self.addCleanup(store.close)
        return vhost, options, store

    def test_restart(self) -> None:
        """
        Values set at run time, and the queues' levels, survive a restart
        with the journal as written, and after a compaction; the start
        logs the override.
        """
        vhost, options, store = self.start()
        vhost.declareQueue("before", durable=True)
        settingsOf(vhost).set({BACKUP_TIMEOUT: 5, REPLICATE: "all"})
        vhost.declareQueue("after", durable=True)
        vhost.deleteQueue("before")
        vhost.declareQueue("before", durable=True)
        settingsOf(vhost).set({REPLICATE: "configuration"})
        store.flush()
        store.close()

        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]
        vhost, options, store = self.start()
        self.assertEqual((options.backupTimeout, options.replicateDefault), (5.0, "configuration"))
        levels = {name: cachedLevel(q, options.replicateDefault) for name, q in vhost.queues.items()}
        self.assertEqual(levels, {"after": "all", "before": "all"})
        self.assertIn(
            "backup-timeout 5 s set at run time overrides the configured 10 s",
            [formatEvent(event) for event in logged],
        )

        store.compact()
        store.close()
        vhost, options, store = self.start()
        self.assertEqual((options.backupTimeout, options.replicateDefault), (5.0, "configuration"))
        levels = {name: cachedLevel(q, options.replicateDefault) for name, q in vhost.queues.items()}
        self.assertEqual(levels, {"after": "all", "before": "all"})

    def test_configuredChangesWithoutRunTime(self) -> None:
        """
        Without a value set at run time, a new configured value is used
        after a restart; a reset is recorded too.
        """
        vhost, options, store = self.start()
        settingsOf(vhost).set({BACKUP_TIMEOUT: 5})
        settingsOf(vhost).reset()
        store.flush()
        store.close()
        vhost, options, store = self.start(backupTimeout=20.0)
        self.assertEqual(options.backupTimeout, 20.0)
        self.assertTrue(settingsOf(vhost).empty)


class ReplicatedSettingsTests(SynchronousTestCase):
    """
    A primary's values go to its backups, in the stream and in a later
    backup's catch-up, so that a promoted backup uses them.
    """

    def setUp(self) -> None:
        """
        An in-memory cluster on one clock.
        """
        self.cluster = InMemoryCluster(self)
        self.addCleanup(self.cluster.finish)

    def follow(self, node: Any) -> OptionsFollower:
        """
        Attach the follower of C{node}'s settings.
        """
        return followSettings(node.options, node.vhost)

    def test_streamAndCatchUp(self) -> None:
        """
        A backup following the primary applies its values as they are
        set; one that joins later gets them in its catch-up, with the
        pinned levels; promoted, it uses them.
        """
        primary = self.cluster.primary()
        self.follow(primary)
        following = self.cluster.node()
        self.follow(following)
        self.cluster.connect(primary, following)
        primary.vhost.declareQueue("before", arguments={"qpid.replicate": "all"})
        primary.vhost.declareQueue("plain-before")
        settingsOf(primary.vhost).set({BACKUP_TIMEOUT: 2.5, REPLICATE: "all"})
        primary.vhost.declareQueue("after")
        self.cluster.flush()
        self.assertEqual((following.options.backupTimeout, following.options.replicateDefault), (2.5, "all"))
        self.assertEqual(sorted(following.vhost.queues), ["after", "before"])

        settingsOf(primary.vhost).set({REPLICATE: "none"})
        joining = self.cluster.node()
        self.follow(joining)
        self.cluster.connect(primary, joining)
        self.cluster.flush()
        for backup in (following, joining):
            self.assertEqual(
                (backup.options.backupTimeout, backup.options.replicateDefault), (2.5, "none")
            )
            levels = {
                name: cachedLevel(q, backup.options.replicateDefault)
                for name, q in backup.vhost.queues.items()
            }
            self.assertEqual(levels, {"after": "all", "before": "all"})

        self.cluster.kill(primary)
        self.cluster.promote(joining)
        self.assertEqual(joining.expectedBackups()[1], 2.5)
        self.assertEqual(cachedLevel(joining.vhost.queues["after"], joining.replicateDefault), "all")

    def test_leftoversReplaced(self) -> None:
        """
        A backup that kept run-time settings and users of its own (from an
        earlier life) and joins a primary that has none ends up with none:
        the catch-up always carries the primary's, even empty.
        """
        primary = self.cluster.primary()
        self.follow(primary)
        joining = self.cluster.node()
        self.follow(joining)
        settingsOf(joining.vhost).set({BACKUP_TIMEOUT: 2.5})
        accounts = Accounts.of(VirtualHosts.of(joining.vhost))
        accounts.addUser("stale", hashPassword("secret", n=2))
        self.assertFalse(accounts.empty)
        self.cluster.connect(primary, joining)
        self.cluster.flush()
        self.assertTrue(settingsOf(joining.vhost).empty)
        self.assertEqual(joining.options.backupTimeout, primary.options.backupTimeout)
        self.assertTrue(accounts.empty, accounts.state())
