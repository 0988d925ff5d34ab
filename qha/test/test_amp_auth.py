"""
Tests for the AMP port's authentication (L{qha.ha.auth}, the L{Session} and
L{LoginLocator} of L{qha.ha.connection}, L{qha.ha.peers.Peers}' login, the
cluster secret file of L{qha.datadir}, and C{qha-admin}'s login), with
in-memory connections and a L{Clock}: issue 12's unauthenticated admin and
subscribe, the rogue C{Hello}, the impostor on a peer's address, wrong
secrets logged once and slowed, admin-only identities, and a promotion
beside a paused primary with authentication on.
"""

from __future__ import annotations

import io
import json
import os
import stat
from typing import Any, cast

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test.iosim import IOPump, connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from qha.admin.cli import DEFAULT_SECRET_FILE, parseArguments, run, useDefaultSecret
from qha.admin.commands import AddObject, DeleteObject, Ping, Promote, Query, Replicate
from qha.admin.locator import AdminLocator, adminLocator
from qha.amqp.users import FailedLogins, UserDatabase, hashPassword
from qha.broker.vhost import VirtualHost
from qha.datadir import SECRET_NAME, SecretFileError, readOrCreateSecret, readSecret
from qha.ha.auth import (
    ADMIN_ROLES,
    NONCE_SIZE,
    Authority,
    Credentials,
    Identity,
    UnprovenPeer,
    callerOf,
    keyDerivation,
    logIn,
    passwordKey,
    proof,
    userKey,
)
from qha.ha.commands import (
    Authenticate,
    Challenge,
    Heartbeat,
    Hello,
    NotAuthenticated,
    Subscribe,
)
from qha.ha.config import HAOptions
from qha.ha.connection import LOGIN_TIMEOUT, NodeAMP, NodeAMPFactory
from qha.ha.identity import PersistentState
from qha.ha.node import HANode
from qha.ha.peers import Peers
from qha.ha.role import ACTIVE, JOINING, READY, RECOVERING
from qha.tap import Options, clusterSecret
from qha.test.support import ALL, FAST_N, FakeAMQP, Network

SECRET = b"0123456789abcdef0123456789abcdef"
OTHER_SECRET = b"fedcba9876543210fedcba9876543210"


def collectLogs(case: SynchronousTestCase, cls: type) -> list[dict[str, Any]]:
    """
    Send what C{cls.log} logs during the test to a list.
    """
    events: list[dict[str, Any]] = []
    case.patch(cls, "log", Logger(observer=cast(ILogObserver, events.append)))
    return events


class ProofTests(SynchronousTestCase):
    """
    Tests for the keys and proofs of L{qha.ha.auth}.
    """

    def test_proofsDiffer(self) -> None:
        """
        A proof depends on the side, the username, both nonces and the key,
        so neither side's proof serves as the other's, nor in another login.
        """
        client, server = b"c" * NONCE_SIZE, b"s" * NONCE_SIZE
        base = proof(b"k", b"client", "", client, server)
        others = {
            proof(b"k", b"server", "", client, server),
            proof(b"k", b"client", "u", client, server),
            proof(b"k", b"client", "", b"x" * NONCE_SIZE, server),
            proof(b"k", b"client", "", client, b"x" * NONCE_SIZE),
            proof(b"j", b"client", "", client, server),
        }
        self.assertNotIn(base, others)
        self.assertEqual(len(others), 5)
        self.assertEqual(len(base), 32)

    def test_passwordKey(self) -> None:
        """
        The key of a password depends on the username too.
        """
        self.assertNotEqual(passwordKey("a", "pw"), passwordKey("b", "pw"))
        self.assertEqual(passwordKey("a", "pw"), passwordKey("a", "pw"))

    def test_credentialsHideTheKey(self) -> None:
        """
        C{repr} of credentials never shows the key.
        """
        credentials = Credentials.fromSecret(SECRET)
        self.assertNotIn(repr(credentials.key), repr(credentials))
        self.assertEqual(repr(credentials), "<Credentials the cluster secret>")


class RecordingAMP(amp.AMP):
    """
    An AMP client that keeps every box it sends, as bytes.

    @ivar sent: the serialized boxes.
    """

    def __init__(self) -> None:
        """
        Nothing sent yet.
        """
        super().__init__()
        self.sent: list[bytes] = []

    def sendBox(self, box: amp.AmpBox) -> None:  # type: ignore[override]
        """
        Keep C{box}, then send it.
        """
        self.sent.append(box.serialize())
        super().sendBox(box)


class StandaloneNodeCase(SynchronousTestCase):
    """
    A standalone node behind an AMP port that accepts the cluster secret,
    as C{qha.tap} builds it; C{qha-admin}-like clients connect in memory.
    """

    def setUp(self) -> None:
        """
        The node, its authority (slowing failures with L{FailedLogins} on
        a clock) and its port's factory.
        """
        self.clock = Clock()
        self.failedLogs = collectLogs(self, FailedLogins)
        self.adminLogs = collectLogs(self, AdminLocator)
        options = HAOptions(brokers=[], heartbeat=0, dataDir=self.mktemp(), secret=SECRET)
        self.node = HANode(
            options,
            VirtualHost(clock=self.clock),
            self.clock,
            FakeAMQP(),
            PersistentState(options.dataDir),
            standalone=True,
        )
        self.node.vhost.declareQueue("kept", durable=True)
        self.failedLogins = FailedLogins(self.clock)
        assert options.credentials is not None
        self.authority = Authority(
            options.credentials, clock=self.clock, failedLogins=self.failedLogins
        )
        self.factory = NodeAMPFactory(
            self.authority, [self.node.replicationLocator, adminLocator(self.node)],
            clock=self.clock,
            # The failed logins' delays are advanced past; the deadline of
            # a login is test_amp_bounds'.
            loginTimeout=3600,
        )
        self.connections: list[tuple[amp.AMP, IOPump]] = []
        self.addCleanup(self.finish)

    def finish(self) -> None:
        """
        Stop the node and the failure log; nothing left on the clock.
        """
        for client, pump in self.connections:
            if client.transport is not None:
                client.transport.loseConnection()
                pump.flush()
        self.failedLogins.stopService()
        self.node.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def connect(self, clientClass: type[amp.AMP] = amp.AMP) -> tuple[amp.AMP, NodeAMP, IOPump]:
        """
        A client (of C{clientClass}) connected in memory to the node's AMP
        port.
        """
        client, server, pump = connectedServerAndClient(
            lambda: self.factory.buildProtocol(None),  # type: ignore[arg-type]
            clientClass,
        )
        self.connections.append((client, pump))
        return client, server, pump

    def call(self, client: amp.AMP, pump: IOPump, command: type[amp.Command], **arguments: Any) -> Any:
        """
        C{command} on C{client}: its answer, or its failure.
        """
        results: list[Any] = []
        client.callRemote(command, **arguments).addBoth(results.append)
        pump.flush()
        [result] = results
        return result

    def logIn(self, client: amp.AMP, pump: IOPump, credentials: Credentials) -> Deferred[None]:
        """
        Log C{client} in with C{credentials}; the result's L{Deferred}.
        """
        d: Deferred[None] = ensureDeferred(logIn(callerOf(client, lambda d: d), credentials))
        pump.flush()
        return d

    def assertRefused(self, result: Any, text: str = "") -> None:
        """
        C{result} is a L{NotAuthenticated} failure whose message holds
        C{text}.
        """
        self.assertIsInstance(result, Failure)
        result.trap(NotAuthenticated)
        self.assertIn(text, result.getErrorMessage())


class SessionTests(StandaloneNodeCase):
    """
    The port answers nothing but the login before a login, checks the
    proofs, and slows and logs failures.
    """

    def test_login(self) -> None:
        """
        With the cluster secret a client logs in, the broker proves itself,
        and the admin commands answer.
        """
        client, server, pump = self.connect()
        self.assertIsNone(self.successResultOf(self.logIn(client, pump, Credentials.fromSecret(SECRET))))
        self.assertEqual(self.call(client, pump, Ping), {"role": "standalone"})
        assert server.session is not None and server.session.identity is not None
        self.assertEqual(server.session.identity.name, "cluster secret")

    def test_noSecretOnTheWire(self) -> None:
        """
        Neither the secret nor its key crosses the connection.
        """
        client, server, pump = self.connect(RecordingAMP)
        self.successResultOf(self.logIn(client, pump, Credentials.fromSecret(SECRET)))
        wire = b"".join(client.sent)  # type: ignore[attr-defined]
        self.assertIn(b"Authenticate", wire)
        self.assertNotIn(SECRET, wire)
        self.assertNotIn(Credentials.fromSecret(SECRET).key, wire)

    def test_unauthenticatedAdmin(self) -> None:
        """
        Before a login every admin command is refused with
        NOT_AUTHENTICATED saying what to log in with, and nothing changes:
        issue 12's C{qha-admin del queue} by anyone.
        """
        client, _, pump = self.connect()
        commands: list[tuple[type[amp.Command], dict[str, Any]]] = [
            (Ping, {}),
            (Query, {}),
            (Promote, {"force": True}),
            (DeleteObject, {"kind": "queue", "name": "kept"}),
            (AddObject, {"kind": "queue", "description": json.dumps({"name": "new"})}),
            (Replicate, {"remote": "127.0.0.1:1", "queue": "kept"}),
        ]
        for command, arguments in commands:
            self.assertRefused(
                self.call(client, pump, command, **arguments), "log in first with the cluster secret"
            )
        self.assertEqual(sorted(self.node.vhost.queues), ["kept"])
        self.assertEqual(self.node.role.name, "standalone")

    def test_unauthenticatedSubscribe(self) -> None:
        """
        Before a login the replication commands are refused: nobody reads
        a queue's messages by subscribing.
        """
        client, server, pump = self.connect()
        self.assertRefused(
            self.call(
                client, pump, Subscribe, brokerId="x", epoch=0, address="", holdings=b"{}", queue="kept"
            ),
            "log in first",
        )
        self.assertRefused(self.call(client, pump, Heartbeat, epoch=5), "log in first")
        self.assertRefused(
            self.call(client, pump, Hello, brokerId="x", epoch=5, role="active"), "log in first"
        )
        self.assertEqual(self.node.epoch, 0)

    def test_wrongSecret(self) -> None:
        """
        A wrong secret is refused only after a delay (which grows per
        source), and logged once: later failures from the same source
        within the interval are counted into one line.
        """
        client, _, pump = self.connect()
        d = self.logIn(client, pump, Credentials.fromSecret(OTHER_SECRET))
        self.assertNoResult(d)
        self.clock.advance(0.1)
        pump.flush()
        failure = self.failureResultOf(d, NotAuthenticated)
        self.assertIn("wrong cluster secret", failure.getErrorMessage())
        d = self.logIn(client, pump, Credentials.fromSecret(OTHER_SECRET))
        self.clock.advance(0.1)
        pump.flush()
        self.assertNoResult(d)
        self.clock.advance(0.1)
        pump.flush()
        self.failureResultOf(d, NotAuthenticated)
        self.assertEqual(
            [(e["user"], e["mechanism"], e["reason"][:20]) for e in self.failedLogs],
            [("(cluster secret)", "AMP-HMAC-SHA256", "wrong cluster secret")],
        )
        # The right secret still works on the same connection.
        self.successResultOf(self.logIn(client, pump, Credentials.fromSecret(SECRET)))

    def test_authenticateFirst(self) -> None:
        """
        L{Authenticate} without a L{Challenge}, a nonce of the wrong size,
        and a second proof for one challenge are refused.
        """
        client, _, pump = self.connect()
        self.assertRefused(self.call(client, pump, Authenticate, proof=b"p" * 32), "send Challenge")
        self.assertRefused(
            self.call(client, pump, Challenge, username="", nonce=b"short"), "the nonce must have"
        )
        self.assertRefused(
            self.call(client, pump, Challenge, username="u" * 256, nonce=b"n" * NONCE_SIZE),
            "at most 255",
        )
        nonce = b"n" * NONCE_SIZE
        serverNonce = self.call(client, pump, Challenge, username="", nonce=nonce)["nonce"]
        refused: list[Any] = []
        client.callRemote(Authenticate, proof=b"wrong").addBoth(refused.append)
        pump.flush()
        self.clock.advance(10)
        pump.flush()
        self.assertRefused(refused[0], "wrong cluster secret")
        right = proof(Credentials.fromSecret(SECRET).key, b"client", "", nonce, serverNonce)
        self.assertRefused(self.call(client, pump, Authenticate, proof=right), "send Challenge")
        self.assertRefused(self.call(client, pump, Ping))

    def test_unknownUser(self) -> None:
        """
        A username the broker does not know is refused like a wrong
        password.
        """
        client, _, pump = self.connect()
        d = self.logIn(client, pump, Credentials.fromPassword("nobody", "x"))
        self.clock.advance(0.1)
        pump.flush()
        self.assertIn(
            "bad HA username or password for 'nobody'",
            self.failureResultOf(d, NotAuthenticated).getErrorMessage(),
        )

    def test_adminActionsLogged(self) -> None:
        """
        Every admin action that changes the broker is logged with who
        asked: the identity and the peer's address.
        """
        client, server, pump = self.connect()
        self.successResultOf(self.logIn(client, pump, Credentials.fromSecret(SECRET)))
        self.call(client, pump, AddObject, kind="queue", description=json.dumps({"name": "new"}))
        self.call(client, pump, DeleteObject, kind="queue", name="new")
        assert server.session is not None
        peer = server.session.peer
        self.assertNotEqual(peer, "?")
        self.assertEqual(
            [(e["action"], e["what"], e["identity"], e["peer"]) for e in self.adminLogs],
            [
                ("add", "queue 'new'", "cluster secret", peer),
                ("del", "queue 'new'", "cluster secret", peer),
            ],
        )
        self.assertIn("cluster secret from", self.adminLogs[0]["who"])


class AdminOnlyTests(StandaloneNodeCase):
    """
    An identity with the admin role only may administer and never
    replicate.
    """

    def setUp(self) -> None:
        """
        The node's authority also knows C{ops}, admin only.
        """
        super().setUp()
        self.authority.identities["ops"] = (Identity("ops", ADMIN_ROLES), passwordKey("ops", "pw"))

    def test_adminOnlyCannotReplicate(self) -> None:
        """
        C{ops} runs admin commands; L{Subscribe}, L{Hello} and L{Heartbeat}
        are refused with a message that says why.
        """
        client, _, pump = self.connect()
        self.successResultOf(self.logIn(client, pump, Credentials.fromPassword("ops", "pw")))
        self.assertEqual(self.call(client, pump, Ping), {"role": "standalone"})
        commands: list[tuple[type[amp.Command], dict[str, Any]]] = [
            (Subscribe, {"brokerId": "x", "epoch": 0, "address": "", "holdings": b"{}", "queue": "kept"}),
            (Hello, {"brokerId": "x", "epoch": 9, "role": "active"}),
            (Heartbeat, {"epoch": 9}),
        ]
        for command, arguments in commands:
            self.assertRefused(
                self.call(client, pump, command, **arguments),
                "'ops' may use the admin commands only, not replication",
            )
        self.assertEqual(self.node.epoch, 0)


class SecureNetwork(Network):
    """
    A L{Network} whose brokers log in to each other with a cluster secret,
    on ports built as C{qha.tap} builds them.

    @ivar factories: each port's factory.
    """

    def __init__(self, case: SynchronousTestCase, heartbeat: float = 0.0) -> None:
        """
        @param case: the test.
        @param heartbeat: every node's C{--ha-heartbeat}.
        """
        super().__init__(case, heartbeat)
        self.failedLogins = FailedLogins(self.reactor)
        self.factories: dict[int, NodeAMPFactory] = {}

    def node(self, port: int, secret: bytes = SECRET) -> HANode:  # type: ignore[override]
        """
        The broker on C{port} with cluster secret C{secret}; not started.
        """
        options = HAOptions(
            brokers=[f"127.0.0.1:{other}" for other in self.ports],
            heartbeat=self.heartbeat,
            dataDir=self.case.mktemp(),
            secret=secret,
        )
        options.extra["haAddress"] = f"127.0.0.1:{port}"
        node = HANode(
            options, VirtualHost(clock=self.reactor), self.reactor, FakeAMQP(), PersistentState(options.dataDir)
        )
        assert options.credentials is not None
        authority = Authority(options.credentials, clock=self.reactor, failedLogins=self.failedLogins)
        factory = NodeAMPFactory(
            authority, [node.replicationLocator, adminLocator(node)], clock=self.reactor
        )
        self.reactor.listenTCP(port, factory)
        self.factories[port] = factory
        self.nodes[port] = node
        return node

    def finish(self) -> None:
        """
        Stop the failure log too, and let the login deadline close what
        never logged in.
        """
        self.failedLogins.stopService()
        self.reactor.advance(LOGIN_TIMEOUT)
        self.settle()
        super().finish()


class Impostor(amp.AMP):
    """
    A server on a broker's address that does not hold the cluster's key: it
    accepts any login and answers with a proof it cannot make, and records
    every command it receives.
    """

    received: list[str] = []

    @Challenge.responder
    def challenge(self, username: str, nonce: bytes) -> dict[str, Any]:
        """
        Answer with a nonce.
        """
        self.received.append("Challenge")
        return {"nonce": os.urandom(NONCE_SIZE)}

    @Authenticate.responder
    def authenticate(self, proof: bytes) -> dict[str, Any]:
        """
        Accept whatever proof, answer with a made-up one.
        """
        self.received.append("Authenticate")
        return {"proof": os.urandom(32)}

    @Hello.responder
    def hello(self, brokerId: str, epoch: int, role: str) -> dict[str, Any]:
        """
        Claim to be a primary of a huge epoch.
        """
        self.received.append("Hello")
        return {"brokerId": "impostor", "epoch": 1000000, "role": ACTIVE}


class PeerTests(SynchronousTestCase):
    """
    Brokers log in to each other over the fake TCP of a L{SecureNetwork}.
    """

    def setUp(self) -> None:
        """
        Collect what L{Peers} and L{FailedLogins} log.
        """
        self.peerLogs = collectLogs(self, Peers)
        self.failedLogs = collectLogs(self, FailedLogins)

    def test_sameSecretFormsCluster(self) -> None:
        """
        Two brokers with the same secret form a cluster: the backup catches
        up and is ready.
        """
        network = SecureNetwork(self)
        primary, backup = network.node(5001), network.node(5002)
        primary.startService()
        self.assertEqual(network.promote(primary)["role"], RECOVERING)
        primary.vhost.declareQueue("q", arguments=ALL)
        backup.startService()
        network.settle()
        self.assertEqual(backup.role.name, READY)
        self.assertIn("q", backup.vhost.queues)
        self.assertEqual(self.peerLogs + self.failedLogs, [])
        network.finish()

    def test_differentSecrets(self) -> None:
        """
        A broker with another secret does not join: it stays joining, and
        says why once in its log (however often it tries), as does the
        primary of the stranger's refusals of its probes; the refused
        logins are logged by the one that refused (rate-limited per source
        address: see L{SessionTests.test_wrongSecret}, as the fake TCP
        gives each connection an address of its own).
        """
        network = SecureNetwork(self)
        primary = network.node(5001)
        stranger = network.node(5002, secret=OTHER_SECRET)
        primary.startService()
        network.promote(primary)
        stranger.startService()
        network.settle()
        network.advance(5)
        self.assertEqual(stranger.role.name, JOINING)
        self.assertEqual(primary.sources, {})
        refusals = [e for e in self.peerLogs if "refused this broker's login" in e["log_format"]]
        self.assertEqual(
            sorted(e["address"] for e in refusals), ["127.0.0.1:5001", "127.0.0.1:5002"]
        )
        self.assertIn("wrong cluster secret", refusals[0]["reason"])
        self.assertEqual(self.failedLogs[0]["reason"][:20], "wrong cluster secret")
        network.finish()

    def test_impostorDetected(self) -> None:
        """
        A server on a peer's address that does not hold the key is found
        out by the connecting broker before it sends L{Hello} or anything
        but the login; it is logged once.
        """
        network = SecureNetwork(self)
        Impostor.received = []
        network.reactor.listenTCP(5002, Factory.forProtocol(Impostor))
        node = network.node(5001)
        results: list[Any] = []
        node.peers.connect("127.0.0.1:5002").addBoth(results.append)
        network.settle()
        [failure] = results
        failure.trap(UnprovenPeer)
        self.assertEqual(Impostor.received, ["Challenge", "Authenticate"])
        asked: list[Any] = []
        node.peers.ask("127.0.0.1:5002").addBoth(asked.append)
        network.settle()
        self.assertEqual(asked, [None])
        self.assertNotIn("Hello", Impostor.received)
        self.assertEqual(
            [e["address"] for e in self.peerLogs], ["127.0.0.1:5002"]
        )
        self.assertIn("is not a broker of this cluster", self.peerLogs[0]["log_format"])
        network.finish()

    def test_impostorCannotLead(self) -> None:
        """
        A primary that hears of the impostor's huge epoch? It never does:
        its probes end at the impostor's missing proof, and it stays the
        primary with its own epoch.
        """
        network = SecureNetwork(self, heartbeat=1.0)
        Impostor.received = []
        network.reactor.listenTCP(5002, Factory.forProtocol(Impostor))
        primary = network.node(5001)
        primary.startService()
        network.promote(primary)
        network.advance(5)
        self.assertEqual((primary.role.name, primary.epoch), (ACTIVE, 1))
        self.assertNotIn("Hello", Impostor.received)
        network.finish()

    def test_rogueHello(self) -> None:
        """
        An unauthenticated L{Hello} claiming epoch 1000000 and role active
        is refused, and the primary stays the primary (issue 12: it used to
        step down).
        """
        network = SecureNetwork(self)
        primary = network.node(5001)
        primary.startService()
        network.promote(primary)
        network.settle()
        client, _, pump = connectedServerAndClient(
            lambda: network.factories[5001].buildProtocol(None), amp.AMP  # type: ignore[arg-type]
        )
        results: list[Any] = []
        client.callRemote(Hello, brokerId="rogue", epoch=1000000, role=ACTIVE).addBoth(results.append)
        pump.flush()
        [failure] = results
        failure.trap(NotAuthenticated)
        network.advance(2)
        self.assertEqual((primary.role.name, primary.epoch), (ACTIVE, 1))
        network.finish()

    def test_pausedPrimaryPromotion(self) -> None:
        """
        With authentication on, a paused primary (it accepts connections
        and answers nothing, not even the login) does not hold up the
        promotion of a ready backup: every step of the login has a
        deadline.
        """
        network = SecureNetwork(self, heartbeat=1.0)
        old, backup, other = network.node(5001), network.node(5002), network.node(5003)
        old.startService()
        network.promote(old)
        old.vhost.declareQueue("q", arguments=ALL)
        backup.startService()
        other.startService()
        network.settle()
        self.assertEqual((backup.role.name, other.role.name), (READY, READY))
        network.paused.add(5001)
        started = network.reactor.seconds()
        result = network.promote(backup)
        self.assertEqual(result, {"role": RECOVERING, "epoch": 2})
        self.assertLess(network.reactor.seconds() - started, 8)
        network.paused.clear()
        network.advance(3)
        self.assertEqual(backup.role.name, ACTIVE)
        self.assertNotEqual(old.role.name, ACTIVE)
        network.finish()


class SecretFileTests(SynchronousTestCase):
    """
    Tests for the cluster secret's file.
    """

    def test_createdOnce(self) -> None:
        """
        The first call makes the file, mode 0600, with 32 random bytes in
        hex; later calls read the same secret.
        """
        directory = self.mktemp()
        os.mkdir(directory)
        path = os.path.join(directory, SECRET_NAME)
        secret, created = readOrCreateSecret(path)
        self.assertTrue(created)
        self.assertEqual(len(secret), 64)
        int(secret, 16)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(readOrCreateSecret(path), (secret, False))
        self.assertEqual(os.listdir(directory), [SECRET_NAME])

    def test_firstWins(self) -> None:
        """
        When another broker made the file between the look and the link,
        its secret is the one used (the link of the loser fails).
        """
        directory = self.mktemp()
        os.mkdir(directory)
        path = os.path.join(directory, SECRET_NAME)
        looks: list[str] = []

        def late(where: str) -> bytes:
            looks.append(where)
            if len(looks) == 1:
                with open(path, "wb") as file:
                    file.write(b"the winner's secret, long enough\n")
                raise FileNotFoundError(where)
            return readSecret(where)

        self.patch(__import__("qha.datadir").datadir, "readSecret", late)
        self.assertEqual(readOrCreateSecret(path), (b"the winner's secret, long enough", False))
        self.assertEqual(os.listdir(directory), [SECRET_NAME])

    def test_badFiles(self) -> None:
        """
        A secret too short is refused with a message that names the file; a
        file others may read is used with a warning.
        """
        path = self.mktemp()
        with open(path, "wb") as file:
            file.write(b"short\n")
        with self.assertRaises(SecretFileError) as raised:
            readSecret(path)
        self.assertIn(path, str(raised.exception))
        with open(path, "wb") as file:
            file.write(b"long enough to be a secret\n")
        os.chmod(path, 0o644)
        import qha.datadir

        events: list[dict[str, Any]] = []
        self.patch(qha.datadir, "log", Logger(observer=cast(ILogObserver, events.append)))
        self.assertEqual(readSecret(path), b"long enough to be a secret")
        self.assertIn("chmod 600", events[0]["log_format"])

    def test_tapMakesTheSecret(self) -> None:
        """
        C{twistd qha} without C{--ha-username} makes the secret in its data
        directory, or uses C{--ha-secret-file}.
        """
        directory = self.mktemp()
        os.mkdir(directory)
        config = Options()
        config.parseOptions(["--data-dir", directory])
        secret = clusterSecret(config)
        self.assertEqual(readSecret(os.path.join(directory, SECRET_NAME)), secret)
        shared = os.path.join(directory, "shared")
        config.parseOptions(["--data-dir", directory, "--ha-secret-file", shared])
        secret = clusterSecret(config)
        self.assertEqual(readSecret(shared), secret)


class PasswordOptionTests(SynchronousTestCase):
    """
    C{--ha-password} may come from a file or the environment.
    """

    def parse(self, argv: list[str], environ: dict[str, str] | None = None) -> Options:
        """
        Parse C{twistd qha} options with C{environ} as the environment.
        """
        config = Options()
        config.exitOnError = False
        config.environ = environ or {}
        config.parseOptions(argv)
        return config

    def test_passwordFile(self) -> None:
        """
        C{--ha-password-file}: its first line, without the line end.
        """
        path = self.mktemp()
        with open(path, "w") as file:
            file.write("s3cret\r\nignored\n")
        config = self.parse(["--ha-username", "u", "--ha-password-file", path])
        self.assertEqual(config["ha-password"], "s3cret")

    def test_environment(self) -> None:
        """
        C{QHA_HA_PASSWORD} serves a C{--ha-username} without a password.
        """
        config = self.parse(["--ha-username", "u"], {"QHA_HA_PASSWORD": "env"})
        self.assertEqual(config["ha-password"], "env")

    def test_conflicts(self) -> None:
        """
        Both password options, or a secret file with a username, are usage
        errors.
        """
        from twisted.python import usage

        with self.assertRaises(usage.UsageError):
            self.parse(["--ha-username", "u", "--ha-password", "p", "--ha-password-file", "f"])
        with self.assertRaises(usage.UsageError):
            self.parse(["--ha-username", "u", "--ha-password", "p", "--ha-secret-file", "f"])


class AdminLoginTests(StandaloneNodeCase):
    """
    C{qha-admin} logs in with the cluster secret it is given or finds.
    """

    def runAdmin(self, argv: list[str], environ: dict[str, str] | None = None) -> tuple[int, str, str]:
        """
        Run C{qha-admin argv} against the node to the end.
        """
        pumps: list[IOPump] = []

        async def connect(address: str) -> amp.AMP:
            client, _, pump = self.connect()
            pumps.append(pump)
            return client

        out, err = io.StringIO(), io.StringIO()
        d = run(self.clock, parseArguments(argv, environ), connect, out, err)
        for _ in range(50):
            for pump in pumps:
                pump.flush()
            if d.called:
                break
            self.clock.advance(0.1)
        return self.successResultOf(d), out.getvalue(), err.getvalue()

    def secretFile(self, secret: bytes) -> str:
        """
        A file holding C{secret}.
        """
        path = self.mktemp()
        with open(path, "wb") as file:
            file.write(secret + b"\n")
        return path

    def test_secretFile(self) -> None:
        """
        C{--secret-file} or C{QHA_SECRET_FILE}: the commands answer.
        """
        path = self.secretFile(SECRET)
        self.assertEqual(self.runAdmin(["--secret-file", path, "status"])[:2], (0, "standalone\n"))
        self.assertEqual(
            self.runAdmin(["status"], {"QHA_SECRET_FILE": path})[:2], (0, "standalone\n")
        )

    def test_wrongSecret(self) -> None:
        """
        A wrong secret: the broker's reason, on one line.
        """
        code, _, err = self.runAdmin(["--secret-file", self.secretFile(OTHER_SECRET), "ping"])
        self.assertEqual(code, 1)
        self.assertTrue(err.startswith("qha-admin: 127.0.0.1:5673 refused the login: wrong cluster secret"), err)
        self.assertEqual(err.count("\n"), 1)

    def test_nothingToLogInWith(self) -> None:
        """
        Without a secret: one line that says what to give.
        """
        code, _, err = self.runAdmin(["ping"])
        self.assertEqual(code, 1)
        self.assertEqual(
            err,
            "qha-admin: 127.0.0.1:5673 refused: log in first with the cluster secret (give"
            " --secret-file with a copy of the broker's DATA-DIR/cluster-secret, or set"
            " $QHA_SECRET_FILE)\n",
        )

    def test_missingSecretFile(self) -> None:
        """
        A secret file that does not exist: one line naming it.
        """
        code, _, err = self.runAdmin(["--secret-file", "/nonexistent/secret", "ping"])
        self.assertEqual(
            (code, err), (1, "qha-admin: the cluster secret /nonexistent/secret does not exist\n")
        )

    def test_defaultSecret(self) -> None:
        """
        With nothing named, C{./qha-data/cluster-secret} is used if it
        exists; not when a username or a secret file is given.
        """
        arguments = parseArguments(["ping"])
        useDefaultSecret(arguments, lambda path: path == DEFAULT_SECRET_FILE)
        self.assertEqual(arguments.secret_file, os.path.join("qha-data", "cluster-secret"))
        arguments = parseArguments(["ping"])
        useDefaultSecret(arguments, lambda path: False)
        self.assertIsNone(arguments.secret_file)
        arguments = parseArguments(["--username", "u", "--password", "p", "ping"])
        useDefaultSecret(arguments, lambda path: True)
        self.assertIsNone(arguments.secret_file)

    def test_passwordSources(self) -> None:
        """
        C{--password-file} and C{QHA_PASSWORD} serve C{--username}.
        """
        path = self.mktemp()
        with open(path, "w") as file:
            file.write("pw\n")
        self.assertEqual(parseArguments(["--username", "u", "--password-file", path, "ping"]).password, "pw")
        self.assertEqual(
            parseArguments(["--username", "u", "ping"], {"QHA_PASSWORD": "env"}).password, "env"
        )


class UsersFileAdminTests(AdminLoginTests):
    """
    A user of the broker's users file with the C{administrator} tag runs
    C{qha-admin} with its own password; other users of the file are
    refused, and no user of the file may replicate (issue 12, "Admin is
    not replication").
    """

    def setUp(self) -> None:
        """
        The node's authority also knows the users file: C{alice}
        (administrator, password C{wonder}) and C{bob} (no tag, password
        C{builder}).
        """
        super().setUp()
        self.usersPath = self.mktemp()
        self.writeUsers("tags alice administrator monitoring\n")
        self.users = UserDatabase.fromFile(self.usersPath)
        self.authority.users = self.users

    def writeUsers(self, extra: str) -> None:
        """
        Write the users file: C{alice}, C{bob} and C{extra}.
        """
        with open(self.usersPath, "w", encoding="utf-8") as f:
            f.write(
                f"alice:{hashPassword('wonder', n=FAST_N)}\n"
                f"bob:{hashPassword('builder', n=FAST_N)}\n{extra}"
            )

    def test_administratorRunsAdmin(self) -> None:
        """
        C{--username alice} with alice's password runs the admin commands,
        and an admin action's log line names alice.
        """
        password = self.mktemp()
        with open(password, "w") as f:
            f.write("wonder\n")
        argv = ["--username", "alice", "--password-file", password]
        self.assertEqual(self.runAdmin(argv + ["status"])[:2], (0, "standalone\n"))
        self.assertEqual(self.runAdmin(argv + ["del", "queue", "kept"])[0], 0)
        self.assertNotIn("kept", self.node.vhost.queues)
        [action] = [e for e in self.adminLogs if e.get("action") == "del"]
        self.assertEqual(action["identity"], "alice")

    def test_notAdministrator(self) -> None:
        """
        A user of the file without the tag is refused, saying why.
        """
        code, _, err = self.runAdmin(["--username", "bob", "--password", "builder", "ping"])
        self.assertEqual(code, 1)
        self.assertIn(
            "user 'bob' may not administer this broker: it has no administrator tag", err
        )
        self.clock.advance(60)

    def test_wrongPassword(self) -> None:
        """
        A wrong password is refused like any wrong login.
        """
        code, _, err = self.runAdmin(["--username", "alice", "--password", "nope", "ping"])
        self.assertEqual(code, 1)
        self.assertIn("refused the login: bad HA username or password for 'alice'", err)
        self.clock.advance(60)

    def test_cannotReplicate(self) -> None:
        """
        An administrator of the users file may administer, never replicate.
        """
        client, _, pump = self.connect()
        self.successResultOf(self.logIn(client, pump, Credentials.fromPassword("alice", "wonder")))
        self.assertEqual(self.call(client, pump, Ping), {"role": "standalone"})
        self.assertRefused(
            self.call(client, pump, Hello, brokerId="x", epoch=9, role="active"),
            "'alice' may use the admin commands only, not replication",
        )
        self.assertEqual(self.node.epoch, 0)

    def test_reloadApplies(self) -> None:
        """
        The users file is looked up at each login: after a reload that
        takes alice's tag away, alice is refused.
        """
        self.writeUsers("")
        self.users.reload()
        code, _, err = self.runAdmin(["--username", "alice", "--password", "wonder", "ping"])
        self.assertEqual(code, 1)
        self.assertIn("no administrator tag", err)
        self.clock.advance(60)

    def test_unknownUserGetsADerivation(self) -> None:
        """
        The answer to L{Challenge} names a key derivation for a user of the
        file and, alike in shape, for an unknown one (the same each time),
        so it does not tell whether a user exists; none for the cluster
        secret.
        """
        client, _, pump = self.connect()
        nonce = b"n" * NONCE_SIZE

        def kdf(username: str) -> Any:
            return self.call(client, pump, Challenge, username=username, nonce=nonce).get("kdf")

        known, unknown = kdf("alice"), kdf("mallory")
        self.assertEqual(known.split("$")[:4], unknown.split("$")[:4])
        self.assertEqual(len(known), len(unknown))
        self.assertEqual(kdf("mallory"), unknown)
        self.assertNotEqual(kdf("trudy"), unknown)
        self.assertIsNone(kdf(""))

    def test_keyFromPassword(self) -> None:
        """
        The client's key from its password and the broker's derivation is
        the key the broker derives from the stored hash alone.
        """
        stored = self.users.passwordHash("alice")
        assert stored is not None
        credentials = Credentials.fromPassword("alice", "wonder")
        self.assertEqual(
            credentials.keyFor(keyDerivation(stored)), userKey(stored.digest, "alice")
        )
        self.assertEqual(credentials.keyFor(None), credentials.key)

    def test_impostorDerivation(self) -> None:
        """
        A derivation no broker sends (malformed, or costing gigabytes) is
        refused before any scrypt runs.
        """
        credentials = Credentials.fromPassword("alice", "wonder")
        for kdf in ["nonsense", "scrypt$1048576$64$1$AAAAAAAAAAAAAAAAAAAAAA==$32", "scrypt$16$8$1$AAAA$9999"]:
            self.assertRaises(UnprovenPeer, credentials.keyFor, kdf)
