"""
Tests of virtual hosts (issue 13): the registry (L{qha.broker.vhosts}),
their isolation, connection.open choosing one, their events in the stream
and the journal, their replication to a backup and recovery from the store,
and C{qha-admin vhost}.
"""

from __future__ import annotations

import json
from typing import Any, cast

from pamqp import commands
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from qha.admin.cli import formatStore
from qha.amqp.access import Permissions
from qha.amqp.users import ScryptHash, UserDatabase
from qha.broker.errors import NotAllowed, NotFound, PreconditionFailed
from qha.broker.queue import Consumer
from qha.broker.vhost import VirtualHost
from qha.broker.vhosts import VirtualHosts, checkVhostName
from qha.changes import events as ev
from qha.changes.replay import Replicator, holdingsOf
from qha.store.journal import MemoryJournal, Store, encodeRecord, storeInfo
from qha.test.support import (
    ALL,
    FAST_N,
    InMemoryCluster,
    ProtocolTestCase,
    message,
    names,
    persistentMessage,
    queueContents,
    snapshotOf,
)
from qha.test.test_admin import AdminTestCase
from qha.testing import RecordingTarget


class RegistryTests(SynchronousTestCase):
    """
    L{VirtualHosts}: the default vhost always, others added and deleted,
    each isolated from the others.
    """

    def setUp(self) -> None:
        """
        A registry around a default vhost.
        """
        self.default = VirtualHost()
        self.vhosts = VirtualHosts.of(self.default)

    def test_defaultAlways(self) -> None:
        """
        The registry of a vhost holds it as C{/}; asking again gives the
        same registry; the default vhost cannot be deleted.
        """
        self.assertIs(VirtualHosts.of(self.default), self.vhosts)
        self.assertEqual(self.vhosts.names(), ["/"])
        self.assertIs(self.vhosts.get("/"), self.default)
        self.assertRaises(NotAllowed, self.vhosts.delete, "/")

    def test_isolation(self) -> None:
        """
        A queue called C{q} in two vhosts is two queues: a publish to one
        reaches only it, and deleting one leaves the other; an exchange of
        one is unknown in the other.
        """
        other = self.vhosts.add("a")
        here = self.default.declareQueue("q")
        there = other.declareQueue("q")
        self.assertIsNot(here, there)
        self.default.publish("", "q", message(b"to /", "q"))
        other.publish("", "q", message(b"to a", "q"))
        self.assertEqual([body for _, body, _ in queueContents(here)], [b"to /"])
        self.assertEqual([body for _, body, _ in queueContents(there)], [b"to a"])
        other.declareExchange("events", "topic")
        self.assertRaises(NotFound, self.default.exchange, "events")
        error = self.assertRaises(NotFound, other.queue, "missing")
        self.assertIn("in vhost 'a'", error.replyText)
        other.deleteQueue("q")
        self.assertIn("q", self.default.queues)

    def test_sharedResourcesAndReplica(self) -> None:
        """
        A vhost shares the default's memory accounting, clock and default
        replication level, and is a replica when the default one is.
        """
        self.default.defaultReplicate = "all"
        other = self.vhosts.add("a")
        self.assertIs(other.resources, self.default.resources)
        self.assertIs(other.clock, self.default.clock)
        self.assertEqual(other.defaultReplicate, "all")
        self.default.replica = True
        self.assertTrue(other.replica)
        self.default.replica = False
        self.assertFalse(other.replica)

    def test_addTwiceAndBadNames(self) -> None:
        """
        Adding a vhost that exists, or with an empty, too long or control
        character name, is refused saying why.
        """
        self.vhosts.add("a")
        error = self.assertRaises(PreconditionFailed, self.vhosts.add, "a")
        self.assertEqual(error.replyText, "PRECONDITION_FAILED - vhost 'a' already exists")
        for bad in ["", "x" * 256, "a\nb"]:
            self.assertRaises(PreconditionFailed, checkVhostName, bad)
        self.assertEqual(checkVhostName("t\u00e9nant/1"), "t\u00e9nant/1")

    def test_deleteDeletesContents(self) -> None:
        """
        Deleting a vhost deletes its queues (cancelling their consumers)
        and exchanges, telling its observers, then the registry's.
        """
        other = self.vhosts.add("a")
        queue = other.declareQueue("q")
        other.declareExchange("x", "fanout")
        target = RecordingTarget()
        consumer = Consumer(queue, "ctag", target)
        queue.addConsumer(consumer)
        told: list[tuple[str, str]] = []

        class Observer:
            """
            Records vhosts added and deleted.
            """

            def vhostAdded(self, vhost: VirtualHost) -> None:
                told.append(("added", vhost.name))

            def vhostDeleted(self, vhost: VirtualHost) -> None:
                told.append(("deleted", vhost.name))
                self.contents = (dict(vhost.queues), sorted(vhost.exchanges))

        observer = Observer()
        self.vhosts.observers.append(observer)
        self.vhosts.delete("a")
        self.assertEqual(told, [("deleted", "a")])
        self.assertEqual(observer.contents[0], {})
        self.assertNotIn("x", observer.contents[1])
        self.assertTrue(queue.deleted)
        self.assertEqual(target.cancelled, [consumer])
        self.assertRaises(NotFound, self.vhosts.delete, "a")

    def test_changesNeverGoBack(self) -> None:
        """
        The registry's change count (a primary's position) counts every
        vhost's changes and their additions and deletions, and does not go
        back when a vhost is deleted.
        """
        start = self.vhosts.changes
        other = self.vhosts.add("a")
        other.declareQueue("q")
        afterDeclare = self.vhosts.changes
        self.assertEqual(afterDeclare, start + 2)
        self.vhosts.delete("a")
        self.assertGreater(self.vhosts.changes, afterDeclare)
        self.vhosts.changes = 100
        self.assertEqual(self.vhosts.changes, 100)


class CodecTests(SynchronousTestCase):
    """
    The vhost events of L{ev.EventWriter} and L{ev.readEvents}, and their
    replay; records written before there were vhosts replay as they did.
    """

    def test_scopeOnlyWhenChanged(self) -> None:
        """
        A writer marks the vhost only when the events change vhost, and a
        box starts again in C{/}; a writer that never leaves C{/} writes
        the bytes it always wrote.
        """
        writer = ev.EventWriter()
        writer.scope("/")
        writer.event(ev.PURGED, "q")
        plain = ev.EventWriter()
        plain.event(ev.PURGED, "q")
        self.assertEqual(writer.take(), plain.take())
        writer.scope("a")
        writer.event(ev.PURGED, "q")
        writer.scope("a")
        writer.event(ev.PURGED, "r")
        self.assertEqual(len(writer), 2)
        self.assertEqual(
            list(ev.readEvents(writer.take())),
            [(ev.VHOST, "a"), (ev.PURGED, "q"), (ev.PURGED, "r")],
        )
        self.assertEqual(writer.vhost, "/")

    def test_heldEntryBeforeScope(self) -> None:
        """
        An entry held for its acquire is written before a vhost change, so
        that it stays in its own vhost.
        """
        vhost = VirtualHost()
        queue = vhost.declareQueue("q")
        entry = queue.enqueue(message(b"m", "q"))
        writer = ev.EventWriter()
        writer.entry(queue, entry)
        writer.scope("a")
        writer.event(ev.PURGED, "q")
        events = list(ev.readEvents(writer.take()))
        self.assertEqual([event[0] for event in events], [ev.ENQUEUED, ev.VHOST, ev.PURGED])

    def test_vhostDeletedLeavesScope(self) -> None:
        """
        After the deletion of the vhost its events were of, the writer is
        back in C{/}, as the reader is.
        """
        writer = ev.EventWriter()
        writer.scope("a")
        writer.vhostDeleted("a")
        self.assertEqual(writer.vhost, "/")

    def test_malformedVhostNames(self) -> None:
        """
        A vhost event with an empty name, or a control character in it, is
        refused naming the event.
        """
        for kind in (ev.VHOST, ev.VHOST_ADDED, ev.VHOST_DELETED):
            for name, why in [("", "the vhost has no name"), ("a\x00", "control character")]:
                writer = ev.EventWriter()
                writer.event(kind, name)
                error = self.assertRaises(
                    ev.MalformedEvents, list, ev.readEvents(writer.take())
                )
                self.assertIn(ev.EVENT_NAMES[kind], str(error))
                self.assertIn(why, str(error))

    def test_replayScoped(self) -> None:
        """
        The replicator applies each event to its vhost, adding and deleting
        vhosts, and starts each box in C{/}.
        """
        vhost = VirtualHost()
        replicator = Replicator(vhost, lambda: None)
        source = VirtualHost()
        queue = source.declareQueue("q", uuid="uuid-q")
        writer = ev.EventWriter()
        writer.vhostAdded("a")
        writer.scope("a")
        writer.queueDeclared(queue)
        writer.scope("/")
        writer.queueDeclared(source.declareQueue("only-root", uuid="uuid-r"))
        replicator.apply(writer.take())
        vhosts = VirtualHosts.of(vhost)
        self.assertEqual(vhosts.names(), ["/", "a"])
        a = vhosts.get("a")
        assert a is not None
        self.assertEqual(sorted(a.queues), ["q"])
        self.assertEqual(sorted(vhost.queues), ["only-root"])
        writer.scope("a")
        writer.vhostDeleted("a")
        writer.event(ev.PURGED, "only-root")
        replicator.apply(writer.take())
        self.assertEqual(vhosts.names(), ["/"])

    def test_oldRecords(self) -> None:
        """
        A journal of records written before there were vhosts (no vhost
        events) recovers into C{/}.
        """
        queue = VirtualHost().declareQueue("q", durable=True, uuid="uuid-q")
        writer = ev.EventWriter()
        writer.queueDeclared(queue)
        old = writer.take()
        self.assertNotIn(ev.VHOST, {event[0] for event in ev.readEvents(old)})
        journal = MemoryJournal()
        journal.append(encodeRecord(1, 1, old))
        vhost = VirtualHost()
        Store(journal, Clock()).recover(vhost)
        self.assertEqual(sorted(vhost.queues), ["q"])
        self.assertEqual(VirtualHosts.of(vhost).names(), ["/"])

    def test_holdingsOfOtherVhosts(self) -> None:
        """
        The holdings of a backup key the queues of other vhosts by their
        uuid, so a queue named alike in two vhosts is held twice.
        """
        vhost = VirtualHost()
        vhost.declareQueue("q", uuid="uuid-root")
        VirtualHosts.of(vhost).add("a").declareQueue("q", uuid="uuid-a")
        holdings = holdingsOf(vhost)
        self.assertEqual(holdings["q"]["uuid"], "uuid-root")
        self.assertEqual(holdings["uuid-a"]["uuid"], "uuid-a")


class StoreTests(SynchronousTestCase):
    """
    The store keeps every vhost, their additions and deletions.
    """

    def setUp(self) -> None:
        """
        A broker's vhosts, observed by a store on a journal in memory.
        """
        self.clock = Clock()
        self.journal = MemoryJournal()
        self.vhost = VirtualHost(clock=self.clock)
        self.store = Store(self.journal, self.clock)
        self.store.recover(self.vhost)
        self.vhosts = VirtualHosts.of(self.vhost)

    def recovered(self) -> VirtualHosts:
        """
        Flush, and recover a fresh broker from the same journal.
        """
        self.store.flush()
        vhost = VirtualHost(clock=self.clock)
        Store(self.journal, self.clock).recover(vhost)
        return VirtualHosts.of(vhost)

    def fill(self) -> None:
        """
        A durable queue C{q} in C{/} and in C{a}, each with its own
        persistent message, and a durable exchange bound in C{a}.
        """
        a = self.vhosts.add("a")
        self.vhost.declareQueue("q", durable=True)
        a.declareQueue("q", durable=True)
        a.declareExchange("x", "fanout", durable=True)
        a.bindQueue("q", "x", "")
        self.vhost.publish("", "q", persistentMessage(b"in /", "q"))
        a.publish("x", "", persistentMessage(b"in a", "x"))

    def assertFilled(self, vhosts: VirtualHosts) -> None:
        """
        C{vhosts} hold what L{fill} made.
        """
        self.assertEqual(vhosts.names(), ["/", "a"])
        a = vhosts.get("a")
        assert a is not None
        self.assertEqual(
            [body for _, body, _ in queueContents(vhosts.default.queues["q"])], [b"in /"]
        )
        self.assertEqual([body for _, body, _ in queueContents(a.queues["q"])], [b"in a"])
        self.assertEqual(snapshotOf(a)["bindings"], [("x", "q", "")])

    def test_recoverTwoVhosts(self) -> None:
        """
        Two vhosts with a queue of the same name recover each with its own
        messages and bindings.
        """
        self.fill()
        self.assertFilled(self.recovered())

    def test_compaction(self) -> None:
        """
        A compacted journal keeps every vhost.
        """
        self.fill()
        self.store.flush()
        self.store.compact()
        self.assertEqual(len(self.journal.records), 1)
        self.assertFilled(self.recovered())

    def test_deletedVhostStaysDeleted(self) -> None:
        """
        A deleted vhost does not come back on recovery, and its queue's
        name is free again in a new vhost of the same name.
        """
        self.fill()
        self.store.flush()
        self.vhosts.delete("a")
        self.vhosts.add("a")
        vhosts = self.recovered()
        a = vhosts.get("a")
        assert a is not None
        self.assertEqual(a.queues, {})

    def test_storeInfo(self) -> None:
        """
        C{store-info} lists every vhost's queues.
        """
        path = self.mktemp()
        self.fill()
        self.store.flush()
        with open(path, "wb") as f:
            from qha.store.journal import MAGIC

            f.write(MAGIC + b"".join(self.journal.records))
        info = storeInfo(path)
        self.assertEqual(sorted(info["vhosts"]), ["/", "a"])
        self.assertEqual(info["vhosts"]["a"]["queues"]["q"]["messages"], 1)
        # The text form names each queue's vhost, / first.
        lines = formatStore({**info, "dataDir": "d"}).splitlines()
        self.assertIn("exchanges   x (vhost a)", lines)
        table = lines[lines.index("") + 1 :]
        self.assertEqual([line.split() for line in table[2:]], [["/", "q", "1"], ["a", "q", "1"]])
        self.assertEqual(table[0].split(), ["vhost", "queue", "messages"])


class ReplicationTests(SynchronousTestCase):
    """
    Vhosts and their contents replicate to a backup, live and at catch-up.
    """

    def setUp(self) -> None:
        """
        An active primary and a joining backup in memory.
        """
        self.cluster = InMemoryCluster(self)
        self.primary = self.cluster.primary()
        self.backup = self.cluster.node()
        self.addCleanup(self.cluster.finish)

    def test_live(self) -> None:
        """
        A vhost added on the primary is added on a ready backup; its queue
        and messages follow into that vhost, not C{/}; deleting it deletes
        it there.
        """
        link = self.cluster.connect(self.primary, self.backup)
        a = self.primary.vhosts.add("a")
        a.declareQueue("q", arguments=ALL)
        a.publish("", "q", message(b"in a", "q"))
        self.primary.vhost.declareQueue("q", arguments=ALL)
        self.primary.vhost.publish("", "q", message(b"in /", "q"))
        link.flush()
        backupA = self.backup.vhosts.get("a")
        assert backupA is not None
        self.assertEqual(snapshotOf(backupA), snapshotOf(a))
        self.assertEqual(snapshotOf(self.backup.vhost), snapshotOf(self.primary.vhost))
        self.primary.vhosts.delete("a")
        link.flush()
        self.assertEqual(self.backup.vhosts.names(), ["/"])

    def test_catchUp(self) -> None:
        """
        A backup that joins gets every vhost and what each holds; one that
        rejoins drops a vhost deleted while it was away and what was
        consumed meanwhile in another.
        """
        a = self.primary.vhosts.add("a")
        a.declareQueue("q", arguments=ALL)
        a.publish("", "q", message(b"one", "q"))
        a.publish("", "q", message(b"two", "q"))
        self.primary.vhosts.add("gone")
        link = self.cluster.connect(self.primary, self.backup)
        self.assertEqual(self.backup.vhosts.names(), ["/", "a", "gone"])
        backupA = self.backup.vhosts.get("a")
        assert backupA is not None
        self.assertEqual(snapshotOf(backupA), snapshotOf(a))
        link.cut()
        self.primary.vhosts.delete("gone")
        queue = a.queues["q"]
        entry = queue.get()
        assert entry is not None
        queue.settle(entry)
        self.cluster.connect(self.primary, self.backup)
        self.assertEqual(self.backup.vhosts.names(), ["/", "a"])
        self.assertEqual(snapshotOf(backupA), snapshotOf(a))
        self.assertEqual([body for _, body, _ in queueContents(backupA.queues["q"])], [b"two"])

    def test_failover(self) -> None:
        """
        After a failover the promoted backup serves the message in its
        vhost, not in C{/}.
        """
        link = self.cluster.connect(self.primary, self.backup)
        a = self.primary.vhosts.add("a")
        a.declareQueue("q", durable=True, arguments=ALL)
        a.publish("", "q", message(b"kept", "q"))
        link.flush()
        self.cluster.kill(self.primary)
        self.cluster.promote(self.backup)
        backupA = self.backup.vhosts.get("a")
        assert backupA is not None
        self.assertEqual([body for _, body, _ in queueContents(backupA.queues["q"])], [b"kept"])
        self.assertNotIn("q", self.backup.vhost.queues)


def permittedUsers() -> UserDatabase:
    """
    C{guest}/C{guest} with every permission in C{/} and C{a} (not in
    C{b}).
    """
    return UserDatabase(
        {"guest": ScryptHash.fromPassword("guest", n=FAST_N)},
        permissions={"guest": {"/": Permissions.everything(), "a": Permissions.everything()}},
    )


class ConnectionTests(ProtocolTestCase):
    """
    connection.open picks the vhost; deleting a vhost closes its
    connections.
    """

    users = permittedUsers()

    def setUp(self) -> None:
        """
        A broker with vhosts C{/}, C{a} and C{b}.
        """
        super().setUp()
        self.vhosts = VirtualHosts.of(self.vhost)
        self.a = self.vhosts.add("a")
        self.vhosts.add("b")

    def test_missing(self) -> None:
        """
        A vhost that does not exist: 530 NOT_ALLOWED, as RabbitMQ.
        """
        client = self.connect()
        close = self.assertConnectionClosed(client, client.handshake(vhost="nope"), 530, dropped=True)
        self.assertEqual(close.reply_text, "NOT_ALLOWED - vhost 'nope' not found")

    def test_refused(self) -> None:
        """
        A vhost that exists and the user has no permissions in: refused.
        """
        client = self.connect()
        close = self.assertConnectionClosed(client, client.handshake(vhost="b"), 530, dropped=True)
        self.assertIn("access to vhost 'b' refused for user 'guest'", close.reply_text)

    def test_declareInVhost(self) -> None:
        """
        A client of vhost C{a} declares and publishes there, not in C{/}.
        """
        client = self.openClient(vhost="a")
        frames = client.call(1, commands.Queue.Declare(queue="q"))
        self.assertEqual(names(frames), [(1, "Queue.DeclareOk")])
        self.assertIn("q", self.a.queues)
        self.assertNotIn("q", self.vhost.queues)

    def test_deleteClosesConnections(self) -> None:
        """
        Deleting a vhost closes its connections with 320
        CONNECTION_FORCED, as RabbitMQ does, and leaves the others open.
        """
        inA = self.openClient(vhost="a")
        inRoot = self.openClient()
        inA.received()
        self.vhosts.delete("a")
        frames = inA.received()
        self.assertEqual(names(frames)[-1], (0, "Connection.Close"))
        self.assertEqual(frames[-1][1].reply_code, 320)
        self.assertEqual(frames[-1][1].reply_text, "CONNECTION_FORCED - vhost 'a' is deleted")
        self.finishClose(inA)
        self.assertEqual(inRoot.received(), [])


class AdminTests(AdminTestCase):
    """
    C{qha-admin vhost add/del/list} against a standalone broker.
    """

    def setUp(self) -> None:
        """
        A standalone broker at the default address, and the log.
        """
        super().setUp()
        self.node = self.addNode()
        self.logged: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.logged.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def test_addListDelete(self) -> None:
        """
        C{vhost add} adds one, C{vhost list} lists it with its counts,
        C{vhost del} deletes it; each change is logged with who asked.
        """
        self.assertEqual(self.admin("vhost", "add", "a"), (0, "vhost 'a' added\n", ""))
        a = self.node.vhosts.get("a")
        assert a is not None
        a.declareQueue("q")
        code, out, _ = self.admin("vhost", "list")
        self.assertEqual(code, 0)
        lines = out.splitlines()
        self.assertEqual(lines[0].split(), ["vhost", "queues", "exchanges", "messages"])
        self.assertEqual(lines[2].split(), ["/", "0", "6", "0"])
        self.assertEqual(lines[3].split(), ["a", "1", "6", "0"])
        code, out, _ = self.admin("--json", "vhost", "list")
        self.assertEqual([v["name"] for v in json.loads(out)], ["/", "a"])
        self.assertEqual(self.admin("vhost", "del", "a"), (0, "vhost 'a' deleted\n", ""))
        self.assertEqual(self.node.vhosts.names(), ["/"])
        requests = [e.get("request") for e in self.logged if e.get("log_level") == LogLevel.info]
        self.assertIn("vhost add 'a'", requests)
        self.assertIn("vhost del 'a'", requests)
        self.assertTrue(all(e.get("who") for e in self.logged if e.get("action") == "vhost add"))

    def test_refusals(self) -> None:
        """
        Adding one that exists, deleting one that does not, or C{/}: exit
        1 with the broker's reason.
        """
        self.admin("vhost", "add", "a")
        code, _, err = self.admin("vhost", "add", "a")
        self.assertEqual((code, err.strip()), (1, "qha-admin: 127.0.0.1:5673 refused: PRECONDITION_FAILED - vhost 'a' already exists"))
        code, _, err = self.admin("vhost", "del", "nope")
        self.assertEqual((code, err.strip()), (1, "qha-admin: 127.0.0.1:5673 refused: NOT_FOUND - vhost 'nope' not found"))
        code, _, err = self.admin("vhost", "del", "/")
        self.assertEqual(code, 1)
        self.assertIn("cannot be deleted", err)
