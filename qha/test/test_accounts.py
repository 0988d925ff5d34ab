"""
Tests of users and permissions managed at run time (issue 13): the
L{qha.amqp.accounts} layer over the users file, its events, the store,
the replication to a backup, the connections it closes, and C{qha-admin
user ...} / C{permissions ...}.
"""

from __future__ import annotations

import json
import os
from typing import Any, cast

from pamqp import commands
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from qha.amqp.access import Permissions
from qha.amqp.accounts import (
    ACCOUNTS_STATE,
    USER_SET,
    AccountChange,
    AccountError,
    Accounts,
)
from qha.amqp.users import (
    AuthenticationFailed,
    ReloadOnSignal,
    ScryptHash,
    UserDatabase,
    hashPassword,
)
from qha.broker.vhost import VirtualHost
from qha.broker.vhosts import VirtualHosts
from qha.changes import events as ev
from qha.changes.replay import Replicator
from qha.store.journal import MemoryJournal, Store
from qha.test.support import FAST_N, InMemoryCluster, ProtocolTestCase, names
from qha.test.test_admin import AdminTestCase

HASH = hashPassword("secret", n=FAST_N)
OTHER_HASH = hashPassword("other", n=FAST_N)


def usersFile(path: str, text: str) -> str:
    """
    Write a users file at C{path}; return C{path}.
    """
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def fileLine(name: str, password: str) -> str:
    """
    The users file line of C{name} with C{password}.
    """
    return f"{name}:{hashPassword(password, n=FAST_N)}\n"


def layered(database: UserDatabase) -> tuple[Accounts, VirtualHosts]:
    """
    A fresh broker's run-time accounts (vhosts C{/} and C{a}) over
    C{database}.
    """
    vhosts = VirtualHosts.of(VirtualHost(clock=Clock()))
    vhosts.add("a")
    accounts = Accounts.of(vhosts)
    database.attachAccounts(accounts)
    return accounts, vhosts


class LayerTests(SynchronousTestCase):
    """
    The run-time layer and how it combines with the users file.
    """

    def setUp(self) -> None:
        """
        A users file with C{bob} (permissions in C{/}) and C{carol}.
        """
        self.path = usersFile(
            self.mktemp(),
            fileLine("bob", "bobpw") + fileLine("carol", "carolpw")
            + "tags bob monitoring\npermissions bob / '.*' '.*' '.*'\n",
        )
        self.database = UserDatabase.fromFile(self.path)
        self.accounts, self.vhosts = layered(self.database)

    def test_addDeleteRefusals(self) -> None:
        """
        C{add} makes a user with no permissions; adding one that exists (in
        the file or at run time), deleting or changing one that does not,
        a missing vhost and a bad pattern are refused with RabbitMQ's reasons.
        """
        self.accounts.addUser("dave", HASH, ["administrator"])
        self.assertEqual(self.database.users(), ["bob", "carol", "dave"])
        self.assertEqual(self.database.tags("dave"), {"administrator"})
        self.assertIsNone(self.database.permissions("dave", "/"))
        self.assertTrue(self.database.authenticate("PLAIN", b"\0dave\0secret", True))
        for call, text in [
            (lambda: self.accounts.addUser("dave", HASH), "user 'dave' already exists"),
            (lambda: self.accounts.addUser("bob", HASH), "user 'bob' already exists"),
            (lambda: self.accounts.deleteUser("nobody"), "user 'nobody' does not exist"),
            (lambda: self.accounts.changePassword("nobody", HASH), "user 'nobody' does not exist"),
            (lambda: self.accounts.setPermissions("dave", "nope", ".*", ".*", ".*"),
             "vhost 'nope' does not exist"),
            (lambda: self.accounts.setPermissions("nobody", "/", ".*", ".*", ".*"),
             "user 'nobody' does not exist"),
            (lambda: self.accounts.clearPermissions("dave", "nope"), "vhost 'nope' does not exist"),
        ]:
            self.assertEqual(str(self.assertRaises(AccountError, call)), text)
        error = self.assertRaises(
            AccountError, self.accounts.setPermissions, "dave", "/", "(", ".*", ".*"
        )
        self.assertIn("configure: invalid regular expression '('", str(error))
        for bad in ["", "a:b", "a b", "x" * 256, "\ud800"]:
            self.assertRaises(AccountError, self.accounts.addUser, bad, HASH)
        self.assertRaises(AccountError, self.accounts.addUser, "eve", "not a hash")
        self.assertRaises(AccountError, self.accounts.addUser, "eve", HASH, ["bad tag"])
        self.assertRaises(AccountError, self.accounts.setPermissions, "dave", "/", "x" * 256, "", "")
        self.accounts.deleteUser("dave")
        self.assertEqual(self.database.users(), ["bob", "carol"])
        self.assertRaises(AuthenticationFailed, self.database.authenticate, "PLAIN", b"\0dave\0secret", True)

    def test_vhostDeletedTakesPermissions(self) -> None:
        """
        Deleting a virtual host deletes the permissions in it, as RabbitMQ
        does: made again under the same name, it grants nobody anything;
        permissions in other virtual hosts stay.
        """
        self.vhosts.add("b")
        self.accounts.addUser("dave", HASH)
        self.accounts.setPermissions("dave", "a", ".*", ".*", ".*")
        self.accounts.setPermissions("dave", "b", ".*", "", "")
        self.vhosts.delete("a")
        self.vhosts.add("a")
        self.assertIsNone(self.database.permissions("dave", "a"))
        self.assertIsNotNone(self.database.permissions("dave", "b"))
        self.vhosts.delete("b")
        self.assertNotIn("dave", self.accounts.permissions)

    def test_fileUserCopiedOnFirstChange(self) -> None:
        """
        Changing a file user's password keeps its tags and permissions (the
        file's are copied into the run-time record first); the old password
        no longer works.
        """
        self.accounts.changePassword("bob", HASH)
        self.assertEqual(self.database.tags("bob"), {"monitoring"})
        self.assertEqual(self.database.permissions("bob", "/"), Permissions.everything())
        self.assertEqual(self.database.authenticate("PLAIN", b"\0bob\0secret", True), "bob")
        self.assertRaises(AuthenticationFailed, self.database.authenticate, "PLAIN", b"\0bob\0bobpw", True)

    def test_reloadKeepsRuntimeChanges(self) -> None:
        """
        A reload of the file (SIGHUP) does not undo run-time changes: a
        deleted file user stays deleted, run-time permissions stay, and the
        users no change named follow the new file.
        """
        self.accounts.deleteUser("carol")
        self.accounts.setPermissions("bob", "a", "^a", "^w", "^r")
        usersFile(
            self.path,
            fileLine("bob", "bobpw") + fileLine("carol", "carolpw") + fileLine("erin", "e")
            + "permissions bob / '' '' ''\n",
        )
        self.assertTrue(ReloadOnSignal(None, self.database, installHandler=lambda *a: None).reload())
        self.assertEqual(self.database.users(), ["bob", "erin"])
        self.assertEqual(self.database.permissions("bob", "a"), Permissions("^a", "^w", "^r"))
        self.assertEqual(self.database.permissions("bob", "/"), Permissions.everything())
        self.assertIsNone(self.database.permissions("erin", "/"))

    def test_legacyFileUserKeepsSlash(self) -> None:
        """
        A user of a file without permissions (everything in C{/}) keeps
        that when permissions in another vhost are set at run time.
        """
        path = usersFile(self.mktemp(), fileLine("old", "pw"))
        database = UserDatabase.fromFile(path)
        accounts, _ = layered(database)
        accounts.setPermissions("old", "a", ".*", "", "")
        self.assertEqual(database.permissions("old", "/"), Permissions.everything())
        self.assertEqual(database.permissions("old", "a"), Permissions(".*", "", ""))

    def test_badChangeNeverApplied(self) -> None:
        """
        A change with a bad field, or a state that is not valid, is refused
        whole: nothing of it is applied.
        """
        self.accounts.addUser("dave", HASH)
        before = self.accounts.state()
        for change in [
            AccountChange(USER_SET, ("dave", "scrypt$1$1$1$AA==$AA==", "")),
            AccountChange(ACCOUNTS_STATE, (b"[]",)),
            AccountChange(ACCOUNTS_STATE, (b'{"users": {"x": null}, "permissions": {"x": {}}}',)),
            AccountChange(
                ACCOUNTS_STATE,
                (json.dumps({"users": {"z": {"hash": HASH, "tags": []}},
                             "permissions": {"z": {"/": ["(", "", ""]}}}).encode(),),
            ),
        ]:
            self.assertRaises(AccountError, self.accounts.apply, change)
        self.assertEqual(self.accounts.state(), before)


class EventTests(SynchronousTestCase):
    """
    The account events: their encoding, their checks on decoding, and their
    replay.
    """

    def test_replayOnAnotherBroker(self) -> None:
        """
        The events the primary's changes write, replayed on another broker,
        give it the same users and permissions.
        """
        accounts, _ = layered(UserDatabase({}))
        writer = ev.EventWriter()

        class Writing:
            def accountChanged(self, change: AccountChange) -> None:
                writer.accountChange(change)

        accounts.observers.append(Writing())
        accounts.addUser("dave", HASH, ["monitoring"])
        accounts.setPermissions("dave", "a", "^q", "^x", ".*")
        accounts.addUser("gone", HASH)
        accounts.deleteUser("gone")
        other = VirtualHost(clock=Clock())
        database = UserDatabase({})
        Replicator(other, lambda: None).apply(writer.take())
        replayed = Accounts.of(VirtualHosts.of(other))
        database.attachAccounts(replayed)
        self.assertEqual(replayed.state(), accounts.state())
        self.assertEqual(database.users(), ["dave"])
        self.assertEqual(database.permissions("dave", "a"), Permissions("^q", "^x", ".*"))

    def test_malformedRefused(self) -> None:
        """
        A peer's event with a pattern that does not compile, a hash that is
        not one, or a bad name is refused by the decoder, naming it.
        """
        for kind, fields, text in [
            (ev.PERMISSIONS_SET, ("bob", "/", "(", "", ""), "invalid regular expression"),
            (ev.USER_SET, ("bob", "plain-password", ""), "scrypt$N$r$p$SALT$HASH"),
            (ev.USER_SET, ("bob", HASH, "a b"), "tag"),
            (ev.USER_DELETED, ("a:b",), "may not contain"),
            (ev.PERMISSIONS_CLEARED, ("bob", "\x01"), "control character"),
        ]:
            writer = ev.EventWriter()
            writer.event(kind, *fields)
            error = self.assertRaises(ev.MalformedEvents, list, ev.readEvents(writer.take()))
            self.assertIn(text, str(error))
            self.assertIn(ev.EVENT_NAMES[kind], str(error))
        vhost = VirtualHost(clock=Clock())
        writer = ev.EventWriter()
        writer.event(ev.ACCOUNTS, b'{"users": 1}')
        self.assertRaises(ev.MalformedEvents, Replicator(vhost, lambda: None).apply, writer.take())
        self.assertTrue(Accounts.of(VirtualHosts.of(vhost)).empty)


class StoreTests(SynchronousTestCase):
    """
    The store keeps run-time users and permissions across a restart and a
    compaction.
    """

    def test_roundTrip(self) -> None:
        """
        Users and permissions changed at run time are recovered from the
        journal, and from a compacted one.
        """
        clock = Clock()
        journal = MemoryJournal()
        vhost = VirtualHost(clock=clock)
        store = Store(journal, clock)
        store.recover(vhost)
        vhosts = VirtualHosts.of(vhost)
        vhosts.add("a")
        accounts = Accounts.of(vhosts)
        database = UserDatabase({"bob": ScryptHash.fromString(HASH)})
        database.attachAccounts(accounts)
        accounts.addUser("dave", HASH, ["administrator"])
        accounts.setPermissions("dave", "a", ".*", "", "^r")
        accounts.deleteUser("bob")
        store.flush()
        expected = accounts.state()

        def recovered() -> bytes:
            other = VirtualHost(clock=clock)
            Store(journal, clock).recover(other)
            return Accounts.of(VirtualHosts.of(other)).state()

        self.assertEqual(recovered(), expected)
        store.compact()
        self.assertEqual(len(journal.records), 1)
        self.assertEqual(recovered(), expected)
        # A vhost deleted after its permissions were set: they are gone
        # after a recovery too, from the journal and from a compacted one.
        vhosts.delete("a")
        store.flush()
        self.assertNotIn("a", json.loads(accounts.state())["permissions"].get("dave", {}))
        expected = accounts.state()
        self.assertEqual(recovered(), expected)
        store.compact()
        self.assertEqual(recovered(), expected)


class ReplicationTests(SynchronousTestCase):
    """
    Run-time users and permissions reach the backups, live and at catch-up,
    and survive a failover.
    """

    def setUp(self) -> None:
        """
        An active primary and a backup in memory.
        """
        self.cluster = InMemoryCluster(self)
        self.primary = self.cluster.primary()
        self.backup = self.cluster.node()
        self.addCleanup(self.cluster.finish)
        self.primaryAccounts = Accounts.of(self.primary.vhosts)
        self.backupAccounts = Accounts.of(self.backup.vhosts)

    def test_liveCatchUpFailover(self) -> None:
        """
        A change on the primary reaches a ready backup; one made while the
        backup was away reaches it in the snapshot; after a failover the
        promoted backup has them.
        """
        self.primary.vhosts.add("a")
        link = self.cluster.connect(self.primary, self.backup)
        self.primaryAccounts.addUser("dave", HASH)
        self.primaryAccounts.setPermissions("dave", "a", ".*", ".*", ".*")
        link.flush()
        self.assertEqual(self.backupAccounts.state(), self.primaryAccounts.state())
        link.cut()
        self.primaryAccounts.addUser("erin", HASH, ["monitoring"])
        self.primaryAccounts.clearPermissions("dave", "a")
        link = self.cluster.connect(self.primary, self.backup)
        self.assertEqual(self.backupAccounts.state(), self.primaryAccounts.state())
        self.primaryAccounts.setPermissions("erin", "a", ".*", ".*", ".*")
        self.primary.vhosts.delete("a")
        link.flush()
        self.assertEqual(self.backupAccounts.state(), self.primaryAccounts.state())
        self.assertNotIn("erin", self.backupAccounts.permissions)
        expected = self.primaryAccounts.state()
        self.cluster.kill(self.primary)
        self.cluster.promote(self.backup)
        self.assertEqual(self.backupAccounts.state(), expected)


def runtimeUsers() -> UserDatabase:
    """
    C{guest}/C{guest}, a file user with every permission in C{/} and C{a}.
    """
    return UserDatabase(
        {"guest": ScryptHash.fromPassword("guest", n=FAST_N)},
        permissions={"guest": {"/": Permissions.everything(), "a": Permissions.everything()}},
    )


class ConnectionTests(ProtocolTestCase):
    """
    A user who loses access has its connections closed with 320
    CONNECTION_FORCED, as RabbitMQ closes them.
    """

    def setUp(self) -> None:
        """
        A broker with vhosts C{/} and C{a}.
        """
        self.users = runtimeUsers()
        super().setUp()
        self.vhosts = VirtualHosts.of(self.vhost)
        self.vhosts.add("a")
        self.accounts = Accounts.of(self.vhosts)

    def assertForced(self, client: Any, text: str) -> None:
        """
        C{client} was sent connection.close 320 with C{text}.
        """
        frames = client.received()
        self.assertEqual(names(frames)[-1], (0, "Connection.Close"))
        self.assertEqual(frames[-1][1].reply_code, 320)
        self.assertEqual(frames[-1][1].reply_text, f"CONNECTION_FORCED - {text}")
        self.finishClose(client)

    def test_deleteClosesEveryConnection(self) -> None:
        """
        Deleting a user closes its connections in every vhost.
        """
        inRoot, inA = self.openClient(), self.openClient(vhost="a")
        self.accounts.deleteUser("guest")
        self.assertForced(inRoot, "user 'guest' is deleted")
        self.assertForced(inA, "user 'guest' is deleted")

    def test_clearClosesThatVhost(self) -> None:
        """
        Clearing a user's permissions in C{a} closes its connection to
        C{a}, not the one to C{/}; its next declare in C{/} is checked
        against the permissions set now (403 with RabbitMQ's text).
        """
        inRoot, inA = self.openClient(), self.openClient(vhost="a")
        self.accounts.clearPermissions("guest", "a")
        self.assertForced(inA, "user 'guest' lost its permissions in vhost 'a'")
        self.assertEqual(inRoot.received(), [])
        self.accounts.setPermissions("guest", "/", "^mine", ".*", ".*")
        frames = inRoot.call(1, commands.Queue.Declare(queue="other"))
        self.assertEqual(frames[-1][1].reply_code, 403)
        self.assertEqual(
            frames[-1][1].reply_text,
            "ACCESS_REFUSED - access to queue 'other' in vhost '/' refused for user 'guest'",
        )

    def test_passwordChangeCloses(self) -> None:
        """
        A new password closes the user's connections.
        """
        client = self.openClient()
        self.accounts.changePassword("guest", HASH)
        self.assertForced(client, "user 'guest' had its password changed")


class ReloadConnectionTests(ProtocolTestCase):
    """
    A reload of the users file (SIGHUP) closes the connections of a user
    it removes, and keeps those of a user whose line was rewritten.
    """

    def setUp(self) -> None:
        """
        A broker whose users file has C{guest} and C{bob}.
        """
        self.path = self.mktemp()
        usersFile(self.path, fileLine("guest", "guest") + fileLine("bob", "bob"))
        self.database = UserDatabase.fromFile(self.path)
        self.users = self.database
        super().setUp()

    def test_reload(self) -> None:
        """
        C{bob} removed: 320 C{user 'bob' is deleted}; C{guest} rewritten
        with a new salt: still connected.
        """
        guest = self.openClient()
        bob = self.openClient(response="\0bob\0bob")
        usersFile(self.path, fileLine("guest", "guest"))
        self.assertTrue(ReloadOnSignal(None, self.database, installHandler=lambda *a: None).reload())
        frames = bob.received()
        self.assertEqual(frames[-1][1].reply_text, "CONNECTION_FORCED - user 'bob' is deleted")
        self.finishClose(bob)
        self.assertEqual(guest.received(), [])


class AdminTests(AdminTestCase):
    """
    C{qha-admin user ...} and C{permissions ...} against a standalone
    broker, and a backup's refusal.
    """

    def setUp(self) -> None:
        """
        A standalone broker with the file user C{bob}, a new password in a
        file, and the log.
        """
        super().setUp()
        self.node = self.addNode()
        self.node.vhosts.add("a")
        self.database = UserDatabase({"bob": ScryptHash.fromString(HASH)})
        self.accounts = Accounts.of(self.node.vhosts)
        self.database.attachAccounts(self.accounts)
        self.passwordFile = self.mktemp()
        with open(self.passwordFile, "w") as f:
            f.write("n3w-pass\n")
        self.logged: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.logged.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def test_users(self) -> None:
        """
        C{user add/tags/passwd/list/del} do what they say; the password
        reaches the broker only as a hash; each change is logged with who
        asked.
        """
        self.assertEqual(
            self.admin("user", "add", "dave", "--password-file", self.passwordFile,
                       "--tags", "monitoring,management"),
            (0, "user 'dave' added\n", ""),
        )
        self.assertEqual(self.database.authenticate("PLAIN", b"\0dave\0n3w-pass", True), "dave")
        self.assertNotIn("n3w-pass", json.dumps([str(e) for e in self.logged]))
        self.assertEqual(self.admin("user", "tags", "dave", "administrator")[0], 0)
        self.assertEqual(self.database.tags("dave"), {"administrator"})
        code, out, _ = self.admin("user", "list")
        self.assertEqual(code, 0)
        self.assertEqual([line.split()[0] for line in out.splitlines()], ["user", "bob", "dave"])
        self.assertIn("[administrator]", out)
        os.environ["QHA_PASSWORD"] = "from-env"
        self.addCleanup(os.environ.pop, "QHA_PASSWORD", None)
        self.assertEqual(self.admin("user", "passwd", "bob")[0], 0)
        self.assertEqual(self.database.authenticate("PLAIN", b"\0bob\0from-env", True), "bob")
        self.assertEqual(self.admin("user", "del", "dave"), (0, "user 'dave' deleted\n", ""))
        self.assertEqual(self.database.users(), ["bob"])
        requests = [e.get("request") for e in self.logged if e.get("action")]
        self.assertIn("user add 'dave' tags 'management,monitoring'", requests)
        self.assertIn("user del 'dave'", requests)

    def test_permissions(self) -> None:
        """
        C{permissions set/list/clear} in a vhost.
        """
        self.assertEqual(
            self.admin("permissions", "set", "--vhost", "a", "bob", "^c", "^w", ""),
            (0, "permissions of user 'bob' in vhost 'a' set\n", ""),
        )
        self.assertEqual(self.database.permissions("bob", "a"), Permissions("^c", "^w", ""))
        code, out, _ = self.admin("--json", "permissions", "list", "--vhost", "a")
        self.assertEqual(
            json.loads(out),
            [{"user": "bob", "vhost": "a", "configure": "^c", "write": "^w", "read": ""}],
        )
        code, out, _ = self.admin("permissions", "list", "-p", "a")
        self.assertEqual(out.splitlines()[1].split(), ["bob", "^c", "^w", "''"])
        self.assertEqual(self.admin("permissions", "clear", "-p", "a", "bob")[0], 0)
        self.assertIsNone(self.database.permissions("bob", "a"))

    def test_refusals(self) -> None:
        """
        The refusals of rabbitmqctl: exit 1 and the reason on standard
        error; a bad pattern is refused before anything is sent.
        """
        address = "qha-admin: 127.0.0.1:5673 refused:"
        for argv, text in [
            (("user", "add", "bob", "--password-file", self.passwordFile),
             f"{address} user 'bob' already exists"),
            (("user", "del", "nobody"), f"{address} user 'nobody' does not exist"),
            (("permissions", "set", "-p", "nope", "bob", ".*", ".*", ".*"),
             f"{address} vhost 'nope' does not exist"),
            (("permissions", "clear", "nobody"), f"{address} user 'nobody' does not exist"),
            (("permissions", "list", "-p", "nope"), f"{address} vhost 'nope' does not exist"),
        ]:
            code, _, err = self.admin(*argv)
            self.assertEqual((code, err.strip()), (1, text))
        code, _, err = self.admin("permissions", "set", "bob", "(", ".*", ".*")
        self.assertEqual(code, 1)
        self.assertIn("permissions set: configure: invalid regular expression '('", err)

    def test_backupRefuses(self) -> None:
        """
        A backup refuses changes, saying to make them on the primary.
        """
        backup = self.addNode("127.0.0.1:5674", standalone=False)
        code, _, err = self.admin("-b", "127.0.0.1:5674", "user", "del", "bob")
        self.assertEqual(code, 1)
        self.assertIn(f"this broker is {backup.role.name}: delete users on the primary", err)
