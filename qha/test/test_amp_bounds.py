"""
Tests of the bounds on what a peer sends over the cluster port (issue 12):
every AMP box bounded as it is parsed, malformed boxes refused with one log
line instead of a traceback, idle unauthenticated connections closed,
epoch claims checked before a primary steps down, and single-queue
replication confined to its queue.

Each test fails on the code before issue 12.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from twisted.internet.defer import succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from qha.admin.locator import adminLocator
from qha.broker.vhost import VirtualHost
from qha.changes import events as ev
from qha.changes.events import MalformedEvents
from qha.ha import connection
from qha.ha.commands import BadEpoch, Heartbeat, Hello, MalformedBox, Refused, Subscribe
from qha.ha.config import HAOptions
from qha.ha.connection import LOGIN_TIMEOUT, NodeAMP, NodeAMPFactory, RefusalLog, nodeConnection
from qha.ha.identity import PersistentState
from qha.ha.locator import ReplicationLocator
from qha.ha.node import HANode
from qha.ha.queuereplica import QueueReplica, QueueReplicaLink, QueueReplicator
from qha.ha.role import ACTIVE, JOINING, READY
from qha.test.support import ALL, FakeAMQP, InMemoryCluster, message
from qha.test.support import queueContents as contents


def serialize(box: dict[bytes, bytes]) -> bytes:
    """
    C{box} as AMP puts it on the wire.
    """
    return amp.AmpBox(box).serialize()


def keyValue(key: bytes, value: bytes) -> bytes:
    """
    One key and its value, as in a box on the wire (without the box's end).
    """
    return struct.pack(">H", len(key)) + key + struct.pack(">H", len(value)) + value


class LoggingCase(SynchronousTestCase):
    """
    A test that records what is logged.
    """

    def setUp(self) -> None:
        """
        Record every log event.
        """
        self.logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]

    def warnings(self) -> list[str]:
        """
        The warnings logged, formatted.
        """
        from twisted.logger import formatEvent

        return [formatEvent(event) for event in self.logged if event["log_level"] >= LogLevel.warn]


class NodeCase(LoggingCase):
    """
    A standalone node with HA credentials whose AMP connections are made by
    its L{NodeAMPFactory} over L{StringTransport}s, on a L{Clock}.
    """

    credentials = ("qha-cluster", "s3cret")

    def setUp(self) -> None:
        """
        The node and its factory.
        """
        super().setUp()
        self.clock = Clock()
        options = HAOptions(brokers=[], heartbeat=0, dataDir=self.mktemp())
        options.username, options.password = self.credentials
        self.node = HANode(
            options, VirtualHost(clock=self.clock), self.clock, FakeAMQP(),
            PersistentState(options.dataDir), standalone=True,
        )
        self.factory = NodeAMPFactory(
            options.credentials, [self.node.replicationLocator, adminLocator(self.node)],
            clock=self.clock,
        )

    def connect(self, loggedIn: bool = False) -> tuple[NodeAMP, StringTransport]:
        """
        A new AMP connection to the node, from 10.0.0.7:4000; C{loggedIn},
        as if the peer had logged in.
        """
        protocol = self.factory.buildProtocol(None)  # type: ignore[arg-type]
        transport = StringTransport(peerAddress=_Address("10.0.0.7", 4000))
        protocol.makeConnection(transport)
        if loggedIn:
            assert protocol.session is not None
            protocol.session.authenticated = True
        self.addCleanup(self.disconnect, protocol)
        return protocol, transport

    def disconnect(self, protocol: NodeAMP) -> None:
        """
        Lose C{protocol}'s connection, if it was not lost.
        """
        if protocol.transport is not None:
            protocol.connectionLost(Failure(ConnectionDone()))

    def assertRefused(self, transport: StringTransport, what: str) -> None:
        """
        The connection was closed, with one warning naming the peer and
        C{what}, and no traceback.
        """
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.flushLoggedErrors(), [])
        [warning] = self.warnings()
        self.assertIn("10.0.0.7:4000", warning)
        self.assertIn(what, warning)


class _Address:
    """
    A peer's address, as a transport's C{getPeer} gives it.
    """

    def __init__(self, host: str, port: int) -> None:
        """
        @param host: the host.
        @param port: the port.
        """
        self.host = host
        self.port = port


class BoxBoundTests(NodeCase):
    """
    Every box is bounded as it is parsed.
    """

    def test_endlessBoxBeforeLogin(self) -> None:
        """
        A peer that has not logged in and streams 64 KiB values under new
        keys without ending the box is cut off within the first 128 KiB.
        """
        protocol, transport = self.connect()
        sent = 0
        for index in range(128):
            if transport.disconnecting:
                break
            data = keyValue(b"k%d" % index, b"v" * 65535)
            protocol.dataReceived(data)
            sent += len(data)
        self.assertLessEqual(sent, 2 * 65540)
        self.assertRefused(transport, "bytes before logging in")

    def test_manyKeysBeforeLogin(self) -> None:
        """
        Before a login a box may have a dozen keys, not more.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(b"".join(keyValue(b"k%d" % index, b"v") for index in range(13)))
        self.assertRefused(transport, "a box of more than 12 keys before logging in")

    def test_largeBoxAfterLogin(self) -> None:
        """
        Once logged in, a box as large as a replication box of a large
        message (several 64 KiB chunks) is answered.
        """
        protocol, transport = self.connect(loggedIn=True)
        box = {b"_command": b"Ping", b"_ask": b"1"}
        for index in range(8):
            box[b"chunk.%d" % index] = b"x" * 65535
        protocol.dataReceived(serialize(box))
        self.assertFalse(transport.disconnecting)
        self.assertIn(b"_answer", transport.value())

    def test_boundAfterLogin(self) -> None:
        """
        A logged-in peer's box is bounded too (by L{connection.BOX_BYTES},
        made small here).
        """
        self.patch(connection, "BOX_BYTES", 200_000)
        protocol, transport = self.connect(loggedIn=True)
        for index in range(8):
            if transport.disconnecting:
                break
            protocol.dataReceived(keyValue(b"k%d" % index, b"v" * 65535))
        self.assertRefused(transport, "a box of more than 200000 bytes")

    def test_boundsPerBox(self) -> None:
        """
        The bound is per box: many small boxes in a row are fine.
        """
        protocol, transport = self.connect(loggedIn=True)
        for index in range(50):
            protocol.dataReceived(serialize({b"_command": b"Ping", b"_ask": b"%d" % index}))
        self.assertFalse(transport.disconnecting)
        self.assertEqual(transport.value().count(b"_answer"), 50)


class MalformedBoxTests(NodeCase):
    """
    Boxes that AMP raises on, or logs a traceback for, close the link with
    one line naming the peer.
    """

    def test_unknownAnswer(self) -> None:
        """
        An answer to a question never asked.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(serialize({b"_answer": b"1"}))
        self.assertRefused(transport, "an answer to a question never asked")

    def test_unknownError(self) -> None:
        """
        An error answering a question never asked.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(serialize({b"_error": b"7"}))
        self.assertRefused(transport, "an answer to a question never asked")

    def test_emptyBox(self) -> None:
        """
        An empty box (C{00 00}).
        """
        protocol, transport = self.connect()
        protocol.dataReceived(b"\x00\x00")
        self.assertRefused(transport, "an empty box")

    def test_neither(self) -> None:
        """
        A box that is neither a command nor an answer.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(serialize({b"epoch": b"1"}))
        self.assertRefused(transport, "neither a command nor an answer")

    def test_unaskedBeforeLogin(self) -> None:
        """
        A command wanting no answer, before a login: refused, once, however
        many follow in the same read.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(serialize({b"_command": b"Ping"}) * 100)
        self.assertRefused(transport, "wanting no answer before logging in")

    def test_badArgumentBeforeLogin(self) -> None:
        """
        A command whose argument does not parse, or is missing, before a
        login.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(
            serialize({b"_command": b"Hello", b"_ask": b"1", b"brokerId": b"b", b"epoch": b"x", b"role": b"r"})
        )
        self.assertRefused(transport, "with arguments that do not parse")
        self.assertEqual(transport.value(), b"")

    def test_missingArgumentBeforeLogin(self) -> None:
        """
        A login without its arguments.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(serialize({b"_command": b"Challenge", b"_ask": b"1"}))
        self.assertRefused(transport, "with arguments that do not parse")

    def test_badArgumentAfterLogin(self) -> None:
        """
        After a login, a command whose argument does not parse is answered
        with C{BAD_ARGUMENT} and the link stays; one line is logged, no
        traceback.
        """
        protocol, transport = self.connect(loggedIn=True)
        protocol.dataReceived(
            serialize({b"_command": b"Hello", b"_ask": b"1", b"brokerId": b"b", b"epoch": b"x", b"role": b"r"})
        )
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.flushLoggedErrors(), [])
        answer = amp.AmpBox()
        answer.update(dict(_parse(transport.value())))
        self.assertEqual(answer[b"_error_code"], b"BAD_ARGUMENT")
        [warning] = self.warnings()
        self.assertIn("10.0.0.7:4000", warning)

    def test_keyTooLong(self) -> None:
        """
        A key length past AMP's 255 bytes.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(b"\x01\x00" + b"k" * 256)
        self.assertRefused(transport, "a key of 256 bytes")


def _parse(data: bytes) -> list[tuple[bytes, bytes]]:
    """
    The keys and values of the one box in C{data}.
    """
    pairs: list[tuple[bytes, bytes]] = []
    offset = 0
    while True:
        (length,) = struct.unpack_from(">H", data, offset)
        offset += 2
        if not length:
            return pairs
        key = data[offset : offset + length]
        offset += length
        (length,) = struct.unpack_from(">H", data, offset)
        pairs.append((key, data[offset + 2 : offset + 2 + length]))
        offset += 2 + length


class RefusalLogTests(SynchronousTestCase):
    """
    Refusals are logged at most C{burst} a period.
    """

    def test_rateLimited(self) -> None:
        """
        Past the burst, refusals are counted, not logged; the next line
        allowed says how many were left out.
        """
        clock = Clock()
        refusals = RefusalLog(clock, burst=3, period=10)
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]
        self.assertEqual(
            [refusals.refused("p:1", "x") for _ in range(5)], [True, True, True, False, False]
        )
        clock.advance(10)
        self.assertTrue(refusals.refused("p:1", "x"))
        self.assertEqual(len(logged), 4)
        self.assertIn("(2 more refusals not logged)", logged[-1]["log_format"].format(**logged[-1]))

    def test_manyConnections(self) -> None:
        """
        Thirty connections refused at once log ten lines.
        """
        case = NodeCase()
        case.setUp()
        try:
            for _ in range(30):
                protocol, transport = case.connect()
                protocol.dataReceived(b"\x00\x00")
                self.assertTrue(transport.disconnecting)
            self.assertEqual(len(case.warnings()), 10)
        finally:
            case.doCleanups()


class IdleTests(NodeCase):
    """
    A connection that does not log in is closed after L{LOGIN_TIMEOUT}.
    """

    def test_idleClosed(self) -> None:
        """
        Closed after ten seconds, with one line.
        """
        protocol, transport = self.connect()
        self.clock.advance(LOGIN_TIMEOUT - 0.1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertRefused(transport, "did not log in within 10 seconds")

    def test_loggedInStays(self) -> None:
        """
        A connection that logged in stays.
        """
        protocol, transport = self.connect(loggedIn=True)
        self.clock.advance(60)
        self.assertFalse(transport.disconnecting)

    def test_lostCancels(self) -> None:
        """
        A connection lost before its deadline leaves no timer.
        """
        protocol, transport = self.connect()
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_outboundNotTimed(self) -> None:
        """
        A connection this broker makes to a peer (authenticated at once)
        has no deadline.
        """
        protocol = nodeConnection(None, [self.node.replicationLocator], authenticated=True)
        protocol.makeConnection(StringTransport())
        self.assertEqual(self.clock.getDelayedCalls(), [])


class Silent(amp.CommandLocator):
    """
    A peer that answers nothing it is asked (no responder at all).
    """


class EpochClaimTests(LoggingCase):
    """
    A primary steps down only for a primary of a newer epoch that answers
    it; epochs no broker can have are refused.
    """

    def setUp(self) -> None:
        """
        An active primary at epoch 1 in memory.
        """
        super().setUp()
        self.cluster = InMemoryCluster(self)
        self.primary = self.cluster.primary()
        self.addCleanup(self.cluster.finish)

    def talk(self, command: type[amp.Command], locator: amp.CommandLocator, **arguments: Any) -> list[Any]:
        """
        Send C{command} to the primary from a peer answering with
        C{locator}; what came back.
        """
        client, server, pump = iosim.connectedServerAndClient(
            lambda: NodeAMPFactory(None, [self.primary.replicationLocator], clock=self.cluster.clock).buildProtocol(None),  # type: ignore[arg-type]
            lambda: amp.AMP(locator=locator),
            clock=self.cluster.clock,
        )
        answers: list[Any] = []
        client.callRemote(command, **arguments).addBoth(answers.append)
        pump.flush()
        for _ in range(20):
            if answers:
                break
            self.cluster.clock.advance(0.5)
            pump.flush()
        assert client.transport is not None
        client.transport.loseConnection()
        pump.flush()
        return answers

    def test_rogueHello(self) -> None:
        """
        A Hello claiming C{epoch=1000000, role=active} from a peer that
        cannot be asked back, with no other broker answering as that
        primary: the primary stays, and says why.
        """
        [answer] = self.talk(Hello, Silent(), brokerId="rogue", epoch=1000000, role=ACTIVE)
        self.assertEqual(answer["role"], ACTIVE)
        self.assertEqual(self.primary.role.name, ACTIVE)
        self.assertTrue(any("staying the primary" in line for line in self.warnings()))

    def test_rogueHeartbeat(self) -> None:
        """
        A Heartbeat speaking of a newer epoch, unconfirmed: the primary
        stays.
        """
        [answer] = self.talk(Heartbeat, Silent(), epoch=7)
        self.assertEqual(answer["epoch"], 1)
        self.assertEqual(self.primary.role.name, ACTIVE)

    def test_outOfRange(self) -> None:
        """
        Epochs no broker can have are refused with C{BAD_EPOCH}: negative,
        past 64 bits, or more than 2**32 ahead.
        """
        for epoch in (-1, 2**63, 2**32 + 2):
            [failure] = self.talk(Hello, Silent(), brokerId="x", epoch=epoch, role=ACTIVE)
            self.assertIsInstance(failure, Failure)
            failure.trap(BadEpoch)
            [failure] = self.talk(Heartbeat, Silent(), epoch=epoch)
            failure.trap(BadEpoch)
        self.assertEqual(self.primary.role.name, ACTIVE)

    def test_confirmedByBroker(self) -> None:
        """
        A claim the claimant cannot confirm, but a broker of
        C{--ha-brokers} answers as the primary of a newer epoch: the
        primary steps down.
        """
        self.primary.options.brokers.append("newer:5673")
        self.patch(
            self.primary, "ask", lambda address: succeed({"brokerId": "newer", "epoch": 2, "role": ACTIVE})
        )
        [answer] = self.talk(Heartbeat, Silent(), epoch=2)
        self.assertEqual(self.primary.role.name, JOINING)

    def test_brokerNotPrimary(self) -> None:
        """
        A broker of C{--ha-brokers} that knows the newer epoch but is no
        primary (a backup) does not confirm it.
        """
        self.primary.options.brokers.append("backup:5673")
        self.patch(
            self.primary, "ask", lambda address: succeed({"brokerId": "b", "epoch": 2, "role": READY})
        )
        self.talk(Heartbeat, Silent(), epoch=2)
        self.assertEqual(self.primary.role.name, ACTIVE)

    def test_heardFromBackup(self) -> None:
        """
        A backup's word (a heartbeat answer, role unknown) is checked too.
        """
        self.primary.heardEpoch(5, "", "backup")
        self.assertEqual(self.primary.role.name, ACTIVE)

    def test_heardOutOfRange(self) -> None:
        """
        Even a primary's answer of an epoch no broker can have is ignored.
        """
        self.primary.heardEpoch(2**63, ACTIVE, "impostor")
        self.assertEqual(self.primary.role.name, ACTIVE)


class QueueReplicatorTests(SynchronousTestCase):
    """
    L{QueueReplicator} applies one queue's events and nothing else.
    """

    def setUp(self) -> None:
        """
        A broker with the replicated queue C{q} (one message), another
        queue C{other} (one message), and an exchange C{x}.
        """
        self.vhost = VirtualHost(clock=Clock())
        self.q = self.vhost.declareQueue("q", durable=True, replica=True, uuid="uuid-q")
        self.q.replicaEnqueue(message(b"m1", "q"), 1)
        self.other = self.vhost.declareQueue("other", durable=True)
        self.vhost.publish("", "other", message(b"o1", "other"))
        self.vhost.declareExchange("x", "direct")
        self.replicator = QueueReplicator(self.vhost, "q", lambda: None)

    def box(self, *events: tuple[Any, ...]) -> bytes:
        """
        A box of C{events} (each the arguments of L{ev.EventWriter.event}).
        """
        writer = ev.EventWriter()
        for event in events:
            writer.event(*event)
        return writer.take()

    def assertUntouched(self) -> None:
        """
        The other queue and the exchange are as they were.
        """
        self.assertIn("other", self.vhost.queues)
        self.assertEqual([body for _, body, _ in contents(self.vhost.queues["other"])], [b"o1"])
        self.assertIn("x", self.vhost.exchanges)

    def test_otherQueueRefused(self) -> None:
        """
        A box naming another queue is refused whole: not even its events
        of C{q} are applied.
        """
        box = self.box((ev.PURGED, "q"), (ev.PURGED, "other"))
        self.assertRaises(MalformedEvents, self.replicator.apply, box)
        self.assertEqual([body for _, body, _ in contents(self.q)], [b"m1"])
        self.assertUntouched()

    def test_foreignEvents(self) -> None:
        """
        Every kind of event outside C{q} is refused: other queues'
        declarations, deletions, entries; exchanges; bindings to other
        queues or from exchanges of this broker.
        """
        foreign: list[tuple[Any, ...]] = [
            (ev.QUEUE_DELETED, "other", self.other.uuid),
            (ev.QUEUE_DECLARED, "new", "u", True, False, False, False, {}),
            (ev.DEQUEUED_RANGE, "other", 1, 1),
            (ev.EXCHANGE_DELETED, "x"),
            (ev.EXCHANGE_DECLARED, "y", "direct", "", False, False, False, {}),
            (ev.BOUND, "x", b"q", "q", "k", {}),
            (ev.BOUND, "amq.direct", b"q", "other", "k", {}),
            (ev.UNBOUND, "amq.direct", b"x", "q", "k", {}),
        ]
        for event in foreign:
            self.assertRaises(MalformedEvents, self.replicator.apply, self.box(event))
        self.assertUntouched()

    def test_enqueueElsewhereRefused(self) -> None:
        """
        A message injected into another queue is refused.
        """
        writer = ev.EventWriter()
        queue = type("Q", (), {"name": "other", "durable": True})()
        from qha.broker.queue import Entry

        writer.entry(queue, Entry(message(b"injected", "other"), 99, False, 0, None))
        self.assertRaises(MalformedEvents, self.replicator.apply, writer.take())
        self.assertUntouched()

    def test_snapshotOnlyItsQueue(self) -> None:
        """
        A snapshot naming nothing deletes C{q} (the remote has no such
        queue) and nothing else.
        """
        self.replicator.apply(self.box((ev.SNAPSHOT, json.dumps({"queues": {}, "exchanges": []}).encode())))
        self.assertNotIn("q", self.vhost.queues)
        self.assertUntouched()

    def test_snapshotKeepsSameQueue(self) -> None:
        """
        A snapshot naming C{q} with its uuid keeps it.
        """
        payload = json.dumps({"queues": {"q": "uuid-q"}, "exchanges": []}).encode()
        self.replicator.apply(self.box((ev.SNAPSHOT, payload)))
        self.assertEqual([body for _, body, _ in contents(self.q)], [b"m1"])
        self.assertUntouched()

    def test_badSnapshot(self) -> None:
        """
        A snapshot that is not JSON of the right shape is malformed.
        """
        for payload in [b"{", b"[]", b'{"queues": []}']:
            self.assertRaises(MalformedEvents, self.replicator.apply, self.box((ev.SNAPSHOT, payload)))
        self.assertUntouched()

    def test_ownEventsApplied(self) -> None:
        """
        C{q}'s own events apply: a binding from a built-in exchange, a
        dequeue, the caught-up marker; members are ignored.
        """
        caught: list[None] = []
        self.replicator.caughtUp = lambda: caught.append(None)
        self.replicator.apply(
            self.box(
                (ev.BOUND, "amq.direct", b"q", "q", "k", {}),
                (ev.DEQUEUED_RANGE, "q", 1, 1),
                (ev.MEMBERS, b"[]"),
                (ev.CAUGHT_UP,),
            )
        )
        self.assertEqual(contents(self.q), [])
        self.assertEqual(len(self.vhost.exchanges["amq.direct"].bindings), 1)
        self.assertEqual(caught, [None])
        self.assertUntouched()


class QueueReplicationTests(LoggingCase):
    """
    Single-queue replication between two standalone brokers in memory.
    """

    def node(self, queueReplication: bool) -> HANode:
        """
        A standalone broker on the test's clock.
        """
        options = HAOptions(brokers=[], heartbeat=0, dataDir=self.mktemp(), queueReplication=queueReplication)
        return HANode(
            options, VirtualHost(clock=self.clock), self.clock, FakeAMQP(),
            PersistentState(options.dataDir), standalone=True,
        )

    def setUp(self) -> None:
        """
        A remote broker with queues C{q} and C{secret}, and a local one.
        """
        super().setUp()
        self.clock = Clock()
        self.remote = self.node(queueReplication=True)
        self.local = self.node(queueReplication=True)
        self.remote.vhost.declareQueue("q", durable=True, arguments=ALL)
        self.remote.vhost.declareQueue("secret", durable=True)
        self.remote.vhost.publish("", "q", message(b"m1", "q"))
        self.remote.vhost.publish("", "secret", message(b"s1", "secret"))
        self.local.vhost.declareQueue("mine", durable=True)

    def subscribe(self) -> tuple[QueueReplicaLink, iosim.IOPump, list[Any]]:
        """
        Subscribe the local broker to C{q} of the remote, as
        L{QueueReplica} does once it reached it.
        """
        remoteSide = NodeAMPFactory(None, [self.remote.replicationLocator], clock=self.clock).buildProtocol(None)  # type: ignore[arg-type]
        localSide = nodeConnection(None, [self.local.replicationLocator], authenticated=True)
        pump = iosim.connect(
            remoteSide, iosim.makeFakeServer(remoteSide), localSide, iosim.makeFakeClient(localSide),
            clock=self.clock,
        )
        replica = QueueReplica(self.local, ["remote:5673"], "q")
        link = QueueReplicaLink(self.local, localSide, self.remote.brokerId, "remote:5673", replica)
        for locator in localSide.locator.locators:  # type: ignore[attr-defined]
            if isinstance(locator, ReplicationLocator):
                locator.link = link
        answers: list[Any] = []
        localSide.callRemote(
            Subscribe, brokerId=self.local.brokerId, epoch=0, address="", holdings=b"{}", queue="q"
        ).addBoth(answers.append)
        self.addCleanup(self.closeLink, link, pump)
        pump.flush()
        self.clock.advance(0)
        pump.flush()
        return link, pump, answers

    def closeLink(self, link: QueueReplicaLink, pump: iosim.IOPump) -> None:
        """
        Close C{link} and let what follows run.
        """
        link.close()
        pump.flush()
        self.clock.advance(1)

    def test_replicates(self) -> None:
        """
        The queue replicates, live too; nothing else of the remote comes,
        and the local broker's own queue stays.
        """
        link, pump, answers = self.subscribe()
        self.assertEqual(answers, [{"epoch": 0}])
        self.assertEqual([body for _, body, _ in contents(self.local.vhost.queues["q"])], [b"m1"])
        self.remote.vhost.publish("", "q", message(b"m2", "q"))
        self.clock.advance(0)
        pump.flush()
        self.assertEqual(
            [body for _, body, _ in contents(self.local.vhost.queues["q"])], [b"m1", b"m2"]
        )
        self.assertNotIn("secret", self.local.vhost.queues)
        self.assertIn("mine", self.local.vhost.queues)
        self.assertFalse(link.closed)

    def test_foreignBoxDropsLink(self) -> None:
        """
        A box naming another queue drops the link with one line; the local
        broker's other queues are untouched.
        """
        link, pump, answers = self.subscribe()
        writer = ev.EventWriter()
        writer.event(ev.QUEUE_DELETED, "mine", self.local.vhost.queues["mine"].uuid)
        self.assertRaises(MalformedBox, link.received, 0, link.lastSeq + 1, writer.take())
        self.clock.advance(0)
        self.assertTrue(link.closed)
        self.assertIn("mine", self.local.vhost.queues)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_subscribeRefusedWhenOff(self) -> None:
        """
        A broker without C{--ha-queue-replication yes} refuses to stream a
        queue.
        """
        self.remote.options.queueReplication = False
        link, pump, answers = self.subscribe()
        [failure] = answers
        failure.trap(Refused)
        self.assertNotIn("q", self.local.vhost.queues)
