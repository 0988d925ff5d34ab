"""
Tests for permissions, user tags and the C{user_id} check
(L{qha.amqp.access}, as L{qha.amqp.channel} and L{qha.amqp.protocol} apply
them), and for the tags and permissions lines of a users file and their
reload on C{SIGHUP} (L{qha.amqp.users}).

The permission matrix drives a real L{qha.amqp.protocol.AMQPServer}
through L{qha.test.support.Client}: for every row of RabbitMQ's
access-control table, a user granted exactly what the row needs may do the
operation, and a user missing any one of those permissions is refused with
RabbitMQ's text.
"""

from __future__ import annotations

import os
import re
import signal
from dataclasses import dataclass
from typing import Any, Callable, cast

from pamqp import commands
from pamqp.body import ContentBody
from pamqp.header import ContentHeader
from twisted.logger import ILogObserver, Logger, LogLevel
from twisted.trial.unittest import SynchronousTestCase

from qha.amqp.access import CONFIGURE, READ, WRITE, Permissions
from qha.amqp.users import ReloadOnSignal, ScryptHash, UserDatabase, hashPassword
from qha.broker.vhost import VirtualHost
from qha.test.support import FAST_N, ProtocolTestCase, Received, names

GUEST_HASH = ScryptHash.fromPassword("guest", n=FAST_N)
ALICE_HASH = ScryptHash.fromPassword("wonder", n=FAST_N)

ALICE = "\0alice\0wonder"
"""
The PLAIN response of C{alice}.
"""

NOTHING = Permissions("", "", "")
"""
Permissions in a virtual host that allow no operation (the virtual host
itself may be opened).
"""

_NAMES = {CONFIGURE: "configure", WRITE: "write", READ: "read"}


@dataclass(frozen=True)
class Row:
    """
    One row of RabbitMQ's table: an operation and what it needs.

    @ivar name: for failure messages.
    @ivar needs: (permission, kind, name) the operation needs, in the order
        the broker checks them.
    @ivar method: the method frames to send (a publish's content too).
    @ivar ok: the name of the frame that says it worked; L{None} for a
        publish, which is answered with nothing.
    """

    name: str
    needs: tuple[tuple[int, str, str], ...]
    method: Callable[[], list[Any]]
    ok: str | None


def _publish(exchange: str, routingKey: str = "q") -> list[Any]:
    """
    A basic.publish with a one-byte body.
    """
    return [
        commands.Basic.Publish(exchange=exchange, routing_key=routingKey),
        ContentHeader(body_size=1),
        ContentBody(b"m"),
    ]


ROWS = [
    Row(
        "exchange.declare",
        ((CONFIGURE, "exchange", "x2"),),
        lambda: [commands.Exchange.Declare(exchange="x2", exchange_type="direct")],
        "Exchange.DeclareOk",
    ),
    Row(
        "exchange.declare of an existing exchange",
        ((CONFIGURE, "exchange", "x"),),
        lambda: [commands.Exchange.Declare(exchange="x", exchange_type="direct")],
        "Exchange.DeclareOk",
    ),
    Row(
        "exchange.declare passive",
        (),
        lambda: [commands.Exchange.Declare(exchange="x", passive=True)],
        "Exchange.DeclareOk",
    ),
    Row(
        "exchange.declare with an alternate exchange",
        ((CONFIGURE, "exchange", "x3"), (READ, "exchange", "x3"), (WRITE, "exchange", "y")),
        lambda: [
            commands.Exchange.Declare(
                exchange="x3", exchange_type="direct", arguments={"alternate-exchange": "y"}
            )
        ],
        "Exchange.DeclareOk",
    ),
    Row(
        "exchange.delete",
        ((CONFIGURE, "exchange", "x"),),
        lambda: [commands.Exchange.Delete(exchange="x")],
        "Exchange.DeleteOk",
    ),
    Row(
        "queue.declare",
        ((CONFIGURE, "queue", "q2"),),
        lambda: [commands.Queue.Declare(queue="q2")],
        "Queue.DeclareOk",
    ),
    Row(
        "queue.declare of an existing queue",
        ((CONFIGURE, "queue", "q"),),
        lambda: [commands.Queue.Declare(queue="q")],
        "Queue.DeclareOk",
    ),
    Row(
        "queue.declare passive",
        (),
        lambda: [commands.Queue.Declare(queue="q", passive=True)],
        "Queue.DeclareOk",
    ),
    Row(
        "queue.declare with a dead-letter exchange",
        ((CONFIGURE, "queue", "q3"), (READ, "queue", "q3"), (WRITE, "exchange", "y")),
        lambda: [
            commands.Queue.Declare(queue="q3", arguments={"x-dead-letter-exchange": "y"})
        ],
        "Queue.DeclareOk",
    ),
    Row(
        "queue.delete",
        ((CONFIGURE, "queue", "q"),),
        lambda: [commands.Queue.Delete(queue="q")],
        "Queue.DeleteOk",
    ),
    Row(
        "exchange.bind",
        ((WRITE, "exchange", "x"), (READ, "exchange", "y")),
        lambda: [commands.Exchange.Bind(destination="x", source="y", routing_key="k")],
        "Exchange.BindOk",
    ),
    Row(
        "exchange.unbind",
        ((WRITE, "exchange", "x"), (READ, "exchange", "y")),
        lambda: [commands.Exchange.Unbind(destination="x", source="y", routing_key="k")],
        "Exchange.UnbindOk",
    ),
    Row(
        "queue.bind",
        ((WRITE, "queue", "q"), (READ, "exchange", "y")),
        lambda: [commands.Queue.Bind(queue="q", exchange="y", routing_key="k")],
        "Queue.BindOk",
    ),
    Row(
        "queue.unbind",
        ((WRITE, "queue", "q"), (READ, "exchange", "x")),
        lambda: [commands.Queue.Unbind(queue="q", exchange="x", routing_key="q")],
        "Queue.UnbindOk",
    ),
    Row(
        "basic.publish",
        ((WRITE, "exchange", "x"),),
        lambda: _publish("x"),
        None,
    ),
    Row(
        "basic.publish to the default exchange",
        ((WRITE, "exchange", "amq.default"),),
        lambda: _publish(""),
        None,
    ),
    Row(
        "basic.get",
        ((READ, "queue", "q"),),
        lambda: [commands.Basic.Get(queue="q")],
        "Basic.GetOk",
    ),
    Row(
        "basic.consume",
        ((READ, "queue", "q"),),
        lambda: [commands.Basic.Consume(queue="q", consumer_tag="c")],
        "Basic.ConsumeOk",
    ),
    Row(
        "queue.purge",
        ((READ, "queue", "q"),),
        lambda: [commands.Queue.Purge(queue="q")],
        "Queue.PurgeOk",
    ),
]


def exactly(needs: tuple[tuple[int, str, str], ...], withhold: int | None = None) -> Permissions:
    """
    Permissions that allow the names in C{needs} and nothing else; the one
    at index C{withhold} gets a pattern that matches another name only.
    """
    patterns: dict[int, list[str]] = {CONFIGURE: [], WRITE: [], READ: []}
    for index, (permission, _, name) in enumerate(needs):
        patterns[permission].append(
            "^other$" if index == withhold else f"^{re.escape(name)}$"
        )
    return Permissions(
        *("|".join(patterns[p]) for p in (CONFIGURE, WRITE, READ))
    )


class PermissionMatrixTests(ProtocolTestCase):
    """
    Every row of RabbitMQ's access-control table, allowed and refused.
    """

    def connectAs(self, permissions: Permissions, vhost: str = "/") -> Any:
        """
        A broker whose C{guest} may do everything and whose C{alice} has
        C{permissions} in C{vhost}, with exchanges C{x} (direct, bound to
        C{q} by C{q}) and C{y} (fanout) and a queue C{q} holding one
        message, made by C{guest}; and C{alice} connected on channel 1.
        Each call makes a new broker.
        """
        self.vhost = VirtualHost()
        self.factory = self.makeFactory()
        self.factory.users = UserDatabase(
            {"guest": GUEST_HASH, "alice": ALICE_HASH},
            permissions={
                "guest": {"/": Permissions.everything()},
                "alice": {vhost: permissions},
            },
        )
        guest = self.openClient()
        frames = guest.call(
            1,
            commands.Exchange.Declare(exchange="x", exchange_type="direct"),
            commands.Exchange.Declare(exchange="y", exchange_type="fanout"),
            commands.Queue.Declare(queue="q"),
            commands.Queue.Bind(queue="q", exchange="x", routing_key="q"),
            *_publish(""),
        )
        self.assertEqual(
            [name for _, name in names(frames)],
            ["Exchange.DeclareOk", "Exchange.DeclareOk", "Queue.DeclareOk", "Queue.BindOk"],
        )
        return self.openClient(response=ALICE)

    def assertRefused(self, frames: list[Received], kind: str, name: str, why: str) -> None:
        """
        The channel was closed with 403 and RabbitMQ's text.
        """
        close = self.assertChannelClosed(frames, 1, 403)
        self.assertEqual(
            close.reply_text,
            f"ACCESS_REFUSED - access to {kind} '{name}' in vhost '/' refused"
            f" for user 'alice'",
            why,
        )

    def test_allowed(self) -> None:
        """
        A user granted exactly what a row needs may do it.
        """
        for row in ROWS:
            with self.subTest(row.name):
                alice = self.connectAs(exactly(row.needs))
                frames = alice.call(1, *row.method())
                if row.ok is None:
                    self.assertEqual(frames, [], row.name)
                    self.assertEqual(self.vhost.queues["q"].messageCount, 2)
                else:
                    self.assertIn(row.ok, [name for _, name in names(frames)], row.name)
                    self.assertNotIn("Channel.Close", [name for _, name in names(frames)])

    def test_refused(self) -> None:
        """
        A user missing any one permission a row needs is refused, with a
        channel close naming what it was refused.
        """
        for row in ROWS:
            for index, (permission, kind, name) in enumerate(row.needs):
                why = f"{row.name} without {_NAMES[permission]} on {kind} {name}"
                with self.subTest(why):
                    alice = self.connectAs(exactly(row.needs, withhold=index))
                    frames = alice.call(1, *row.method())
                    self.assertRefused(frames, kind, name, why)

    def test_refusedChangesNothing(self) -> None:
        """
        A refused delete, purge or publish leaves the broker as it was.
        """
        alice = self.connectAs(NOTHING)
        for method in (
            [commands.Queue.Delete(queue="q")],
            [commands.Queue.Purge(queue="q")],
            [commands.Exchange.Delete(exchange="x")],
            _publish("x"),
        ):
            self.assertChannelClosed(alice.call(1, *method), 1, 403)
            alice.call(1, commands.Channel.CloseOk())
            alice.openChannel(1)
        self.assertIn("x", self.vhost.exchanges)
        self.assertEqual(self.vhost.queues["q"].messageCount, 1)

    def test_serverNamedQueue(self) -> None:
        """
        A server-named queue is checked under the name it gets
        (C{amq.gen-...}), as in RabbitMQ.
        """
        alice = self.connectAs(Permissions(r"^amq\.gen-", "", ""))
        frames = alice.call(1, commands.Queue.Declare(queue="", exclusive=True))
        self.assertEqual(names(frames), [(1, "Queue.DeclareOk")])
        self.assertTrue(frames[0][1].queue.startswith("amq.gen-"))
        alice = self.connectAs(Permissions("^q$", "", ""))
        frames = alice.call(1, commands.Queue.Declare(queue="", exclusive=True))
        close = self.assertChannelClosed(frames, 1, 403)
        self.assertRegex(close.reply_text, r"access to queue 'amq\.gen-[^']+' in vhost '/'")
        self.assertEqual(sorted(self.vhost.queues), ["q"])

    def test_lastQueue(self) -> None:
        """
        An empty queue name (the queue this channel declared last) is
        checked under that queue's name.
        """
        alice = self.connectAs(Permissions("^q$", "", ""))
        self.assertEqual(names(alice.call(1, commands.Queue.Declare(queue="q"))), [(1, "Queue.DeclareOk")])
        frames = alice.call(1, commands.Basic.Get(queue=""))
        self.assertRefused(frames, "queue", "q", "get of the last queue")

    def test_patternsSearch(self) -> None:
        """
        Patterns are searched anywhere in the name (RabbitMQ's C{re:run}),
        so an unanchored one matches inside a name.
        """
        permissions = Permissions("app", "", "")
        self.assertTrue(permissions.allows(CONFIGURE, "my-app-queue"))
        self.assertFalse(permissions.allows(CONFIGURE, "other"))
        self.assertFalse(permissions.allows(WRITE, "my-app-queue"))
        self.assertFalse(Permissions("", "", "").allows(CONFIGURE, "q"))
        self.assertTrue(Permissions.everything().allows(READ, "anything"))

    def test_invalidPattern(self) -> None:
        """
        An invalid regular expression is refused when permissions are made.
        """
        error = self.assertRaises(ValueError, Permissions, "(", ".*", ".*")
        self.assertIn("invalid regular expression '('", str(error))


class VirtualHostAccessTests(ProtocolTestCase):
    """
    connection.open is refused, as in RabbitMQ, to a user without
    permissions in the virtual host.
    """

    def test_noPermissionsInVhost(self) -> None:
        """
        A user whose permissions name other virtual hosts only gets 530
        NOT_ALLOWED at connection.open.
        """
        self.factory.users = UserDatabase(
            {"alice": ALICE_HASH}, permissions={"alice": {"/other": Permissions.everything()}}
        )
        client = self.connect()
        frames = client.handshake(response=ALICE)
        close = self.assertConnectionClosed(client, frames, 530, dropped=True)
        self.assertEqual(
            close.reply_text, "NOT_ALLOWED - access to vhost '/' refused for user 'alice'"
        )

    def test_userWithoutEntry(self) -> None:
        """
        Once a file gives permissions, a user it gives none is refused.
        """
        self.factory.users = UserDatabase(
            {"alice": ALICE_HASH, "guest": GUEST_HASH},
            permissions={"guest": {"/": Permissions.everything()}},
        )
        client = self.connect()
        close = self.assertConnectionClosed(client, client.handshake(response=ALICE), 530, dropped=True)
        self.assertIn("refused for user 'alice'", close.reply_text)
        self.openClient()

    def test_withoutPermissionsEveryoneOnDefault(self) -> None:
        """
        A database without permissions (a users file of before) lets every
        user do everything in C{/}, as before.
        """
        self.factory.users = UserDatabase({"alice": ALICE_HASH})
        alice = self.openClient(response=ALICE)
        frames = alice.call(1, commands.Queue.Declare(queue="anything"))
        self.assertEqual(names(frames), [(1, "Queue.DeclareOk")])

    def test_unknownVhostStillNotFound(self) -> None:
        """
        A virtual host that does not exist is still "not found", whatever
        the permissions.
        """
        client = self.connect()
        close = self.assertConnectionClosed(client, client.handshake(vhost="/nope"), 530, dropped=True)
        self.assertIn("vhost '/nope' not found", close.reply_text)


class UserIdTests(ProtocolTestCase):
    """
    A published message's C{user_id} must be the user who logged in.
    """

    def setUp(self) -> None:
        """
        C{alice} and C{shovel}, who has the C{impersonator} tag, and a queue.
        """
        super().setUp()
        self.factory.users = UserDatabase(
            {"alice": ALICE_HASH, "shovel": GUEST_HASH},
            tags={"shovel": frozenset({"impersonator"})},
        )
        self.vhost.declareQueue("q")

    def publish(self, response: str, userId: str) -> list[Received]:
        """
        Publish to C{q} with C{user_id}, logged in with C{response}.
        """
        client = self.openClient(response=response)
        return client.call(
            1,
            commands.Basic.Publish(exchange="", routing_key="q"),
            ContentHeader(body_size=1, properties=_properties(userId)),
            ContentBody(b"m"),
        )

    def test_own(self) -> None:
        """
        The user's own name is accepted.
        """
        self.assertEqual(self.publish(ALICE, "alice"), [])
        self.assertEqual(self.vhost.queues["q"].messageCount, 1)

    def test_other(self) -> None:
        """
        Another name is refused with 406 and RabbitMQ's text; nothing is
        enqueued.
        """
        frames = self.publish(ALICE, "root-admin")
        close = self.assertChannelClosed(frames, 1, 406)
        self.assertEqual(
            close.reply_text,
            "PRECONDITION_FAILED - user_id property set to 'root-admin' but"
            " authenticated user was 'alice'",
        )
        self.assertEqual(self.vhost.queues["q"].messageCount, 0)

    def test_impersonator(self) -> None:
        """
        A user with the C{impersonator} tag may publish as anyone.
        """
        self.assertEqual(self.publish("\0shovel\0guest", "alice"), [])
        self.assertEqual(self.vhost.queues["q"].messageCount, 1)


def _properties(userId: str) -> Any:
    """
    Basic properties with C{user_id}.
    """
    from pamqp.commands import Basic

    return Basic.Properties(user_id=userId)


class UsersFileTests(SynchronousTestCase):
    """
    The tags and permissions lines of a users file.
    """

    def write(self, text: str) -> str:
        """
        A users file with C{alice} (password C{wonder}) and C{text}.
        """
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"alice:{hashPassword('wonder', n=FAST_N)}\n{text}")
        return path

    def test_tagsAndPermissions(self) -> None:
        """
        Tags and per-vhost permissions are read, patterns quoted as in a
        shell.
        """
        path = self.write(
            "tags alice administrator impersonator custom-tag\n"
            "permissions alice / '^alice\\..*' 'has space' \".*\"\n"
            "permissions alice /other '' '' ''\n"
        )
        database = UserDatabase.fromFile(path)
        self.assertEqual(
            database.tags("alice"), frozenset({"administrator", "impersonator", "custom-tag"})
        )
        self.assertEqual(
            database.permissions("alice", "/"), Permissions(r"^alice\..*", "has space", ".*")
        )
        self.assertEqual(database.permissions("alice", "/other"), NOTHING)
        self.assertIsNone(database.permissions("alice", "/third"))
        self.assertTrue(database.grantsPermissions)

    def test_oldFile(self) -> None:
        """
        A file without permissions lines gives every user everything in
        C{/} and nothing elsewhere.
        """
        database = UserDatabase.fromFile(self.write("tags alice monitoring\n"))
        self.assertFalse(database.grantsPermissions)
        self.assertEqual(database.permissions("alice", "/"), Permissions.everything())
        self.assertIsNone(database.permissions("alice", "/other"))
        self.assertIsNone(database.permissions(None, "/"))

    def assertFileError(self, text: str, message: str) -> None:
        """
        Loading a file with C{text} fails with C{message} (after the file
        name).
        """
        path = self.write(text)
        error = self.assertRaises(ValueError, UserDatabase.fromFile, path)
        self.assertEqual(str(error), f"users file {path!r}, {message}")

    def test_errors(self) -> None:
        """
        Malformed lines are refused naming their line.
        """
        self.assertFileError(
            "tags bob administrator\n", "line 2: there is no user 'bob' in this file"
        )
        self.assertFileError(
            "permissions alice / .* .*\n",
            "line 2: expected permissions USER VHOST CONFIGURE WRITE READ"
            " (5 arguments, not 4; quote patterns with spaces)",
        )
        self.assertFileError(
            "permissions alice / '(' .* .*\n",
            "line 2: invalid regular expression '(': missing ), unterminated"
            " subpattern at position 0",
        )
        self.assertFileError(
            "permissions alice / 'open .* .*\n", "line 2: No closing quotation"
        )
        self.assertFileError(
            "tags alice a\ntags alice b\n",
            "line 3: the tags of user 'alice' are already given on line 2",
        )
        self.assertFileError(
            "permissions alice / .* .* .*\npermissions alice / .* .* .*\n",
            "line 3: the permissions of user 'alice' in vhost '/' are already"
            " given on line 2",
        )
        self.assertFileError(
            "tags alice 'bad tag'\n",
            "line 2: tag 'bad tag' may hold only letters, digits, '_', '.' and '-'",
        )
        self.assertFileError("tags\n", "line 2: expected tags USER [TAG ...]")

    def test_removeUserRemovesLines(self) -> None:
        """
        C{qha-users remove} removes the user's tags and permissions too,
        and C{list} lists users only.
        """
        from qha.amqp.users import main

        path = self.write("tags alice administrator\npermissions alice / .* .* .*\n")
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"bob:{hashPassword('b', n=FAST_N)}\n")
        self.assertEqual(main([path, "remove", "alice"]), 0)
        database = UserDatabase.fromFile(path)
        self.assertEqual(database.users(), ["bob"])
        self.assertEqual(database.tags("alice"), frozenset())


class FakeSignals:
    """
    C{signal.signal} and a reactor's C{callFromThread}, recorded.
    """

    def __init__(self) -> None:
        """
        No handler yet.
        """
        self.handlers: dict[int, Any] = {signal.SIGHUP: signal.SIG_DFL}
        self.calls: list[Callable[[], Any]] = []

    def signal(self, number: int, handler: Any) -> Any:
        """
        Install C{handler}; return the one before.
        """
        previous, self.handlers[number] = self.handlers.get(number), handler
        return previous

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        """
        Remember the call for the test to run.
        """
        self.calls.append(lambda: f(*args))

    def deliver(self) -> None:
        """
        SIGHUP arrives, and the reactor runs what the handler asked for.
        """
        self.handlers[signal.SIGHUP](signal.SIGHUP, None)
        calls, self.calls = self.calls, []
        for call in calls:
            call()


class ReloadOnSignalTests(ProtocolTestCase):
    """
    L{ReloadOnSignal}: SIGHUP reloads the users file, keeps connections,
    and survives a bad file.
    """

    def setUp(self) -> None:
        """
        A users file with C{alice}, loaded, and the service started with a
        fake C{signal.signal}; log events captured.
        """
        super().setUp()
        self.path = self.mktemp()
        self.writeFile("")
        self.factory.users = UserDatabase.fromFile(self.path)
        self.signals = FakeSignals()
        self.service = ReloadOnSignal(
            self.signals, self.factory.users, installHandler=self.signals.signal
        )
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.events: list[dict[str, Any]] = []
        logger = Logger(observer=cast(ILogObserver, self.events.append))
        self.patch(ReloadOnSignal, "log", logger)
        self.patch(UserDatabase, "log", logger)

    def writeFile(self, extra: str) -> None:
        """
        Write the users file: C{alice} and C{extra}.
        """
        with open(self.path, "w", encoding="utf-8") as f:
            f.write(f"alice:{hashPassword('wonder', n=FAST_N)}\n{extra}")

    def test_installsAndRestores(self) -> None:
        """
        The handler is installed on start and the previous one put back on
        stop.
        """
        self.assertNotEqual(self.signals.handlers[signal.SIGHUP], signal.SIG_DFL)
        self.service.stopService()
        self.assertEqual(self.signals.handlers[signal.SIGHUP], signal.SIG_DFL)
        self.service.startService()

    def test_reloadKeepsConnections(self) -> None:
        """
        New permissions apply to an open connection's next operation, and
        the reload is logged; the connection stays open.
        """
        alice = self.openClient(response=ALICE)
        self.assertEqual(names(alice.call(1, commands.Queue.Declare(queue="a"))), [(1, "Queue.DeclareOk")])
        self.writeFile("permissions alice / '^b' '.*' '.*'\n")
        self.signals.deliver()
        self.assertTrue(
            any(
                e["log_format"].startswith("Reloaded users file") and e["count"] == 1
                for e in self.events
            )
        )
        frames = alice.call(1, commands.Queue.Declare(queue="a"))
        self.assertChannelClosed(frames, 1, 403)
        alice.call(1, commands.Channel.CloseOk())
        alice.openChannel(1)
        self.assertEqual(names(alice.call(1, commands.Queue.Declare(queue="b"))), [(1, "Queue.DeclareOk")])
        self.assertFalse(alice.transport.disconnecting)

    def test_badFileKeepsUsers(self) -> None:
        """
        A malformed file is logged as an error and the users loaded before
        stay; the broker goes on.
        """
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("not a user line\n")
        self.signals.deliver()
        errors = [e for e in self.events if e["log_level"] == LogLevel.error]
        self.assertEqual(len(errors), 1)
        self.assertIn("line 2: expected NAME:scrypt", errors[0]["error"])
        self.assertEqual(self.factory.users.users(), ["alice"])
        self.openClient(response=ALICE)

    def test_missingFile(self) -> None:
        """
        A users file that is gone is logged, the users kept.
        """
        os.unlink(self.path)
        self.assertFalse(self.service.reload())
        self.assertEqual(self.factory.users.users(), ["alice"])

    def test_noFile(self) -> None:
        """
        Without a users file, SIGHUP only says there is nothing to reload.
        """
        service = ReloadOnSignal(self.signals, UserDatabase({}), installHandler=self.signals.signal)
        self.assertFalse(service.reload())
        self.assertIn("no users file", self.events[-1]["log_format"])
