"""
Tests for L{qha.ha.coordinated}: brokers whose primary etcd decides, in
memory.

Every broker is a real L{HANode} with a L{CoordinatedNode} (built from the
C{etcd=} argument, as C{makeService} does), on one L{Clock}, talking to one
L{FakeEtcd} through a view of its own that a test can cut (a broker killed,
or cut off from etcd). Discovery is the real one: a node's L{Peers} connect
to the other nodes over L{twisted.test.iosim} connections instead of
sockets, so a backup finds the primary that etcd names and follows it by
itself. Nothing opens a socket or sleeps; each test ends with no timer left.
"""

from __future__ import annotations

from typing import Any, Callable

from pamqp import commands
from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from ..amqp.protocol import BrokerFactory
from ..broker.vhost import VirtualHost
from ..ha.commands import Refused
from ..ha.config import PEER_TIMEOUT, HAOptions
from ..ha.connection import NodeAMP, NodeAMPFactory, nodeConnection
from ..ha.etcd import EtcdError, EtcdUnavailable, IWatch
from ..ha.identity import PersistentState
from ..ha.node import HANode
from ..ha.peers import Peers
from ..ha.role import ACTIVE, CATCHUP, JOINING, READY
from ..store.journal import MemoryJournal, Store
from ..testing import FakeEtcd
from .support import ALL, BoxInterceptor, Client, FakeAMQP, fastUsers, publishBytes

TTL = 3
"""
C{--ha-lease-ttl} of the brokers: keepalives every second, a deadline 2 s
after the last keepalive was sent.
"""

BACKUP_TIMEOUT = 2.0
"""
C{--ha-backup-timeout}: how long a fresh broker waits for the others to
register before it may take over.
"""


class EtcdView:
    """
    One broker's way to the shared L{FakeEtcd}: it passes every call on,
    unless the test cut it (the broker was killed, or cannot reach etcd),
    then every call fails with L{EtcdUnavailable} as when no endpoint
    answers.

    @ivar reachable: whether calls go through.
    @ivar keepaliveError: when set, what every keepalive fails with.
    @ivar txnUnanswered: when set, every transaction (a campaign) fails as
        unanswered.
    """

    def __init__(self, etcd: FakeEtcd) -> None:
        """
        @param etcd: the shared etcd.
        """
        self.etcd = etcd
        self.reachable = True
        self.keepaliveError: Exception | None = None
        self.txnUnanswered = False

    def _call(self, name: str, *arguments: Any, **keywords: Any) -> Deferred[Any]:
        if not self.reachable:
            return fail(EtcdUnavailable(f"{name}: etcd is cut off from this broker"))
        method: Callable[..., Deferred[Any]] = getattr(self.etcd, name)
        return method(*arguments, **keywords)

    def grant(self, ttl: int) -> Deferred[Any]:
        """
        See L{IEtcd.grant}.
        """
        return self._call("grant", ttl)

    def keepalive(self, leaseId: int) -> Deferred[Any]:
        """
        See L{IEtcd.keepalive}; fails with C{keepaliveError} if set.
        """
        if self.reachable and self.keepaliveError is not None:
            return fail(self.keepaliveError)
        return self._call("keepalive", leaseId)

    def revoke(self, leaseId: int) -> Deferred[Any]:
        """
        See L{IEtcd.revoke}.
        """
        return self._call("revoke", leaseId)

    def range(self, key: bytes, prefix: bool = False) -> Deferred[Any]:
        """
        See L{IEtcd.range}.
        """
        return self._call("range", key, prefix)

    def put(self, key: bytes, value: bytes, lease: int = 0) -> Deferred[Any]:
        """
        See L{IEtcd.put}.
        """
        return self._call("put", key, value, lease)

    def delete(self, key: bytes, prefix: bool = False) -> Deferred[Any]:
        """
        See L{IEtcd.delete}.
        """
        return self._call("delete", key, prefix)

    def txn(self, compare: Any, success: Any, failure: Any) -> Deferred[Any]:
        """
        See L{IEtcd.txn}.
        """
        if self.txnUnanswered:
            return fail(EtcdUnavailable("txn: not answered"))
        return self._call("txn", compare, success, failure)

    def watch(self, key: bytes, prefix: bool, startRevision: int, callback: Any) -> IWatch:
        """
        See L{IEtcd.watch}: a watch of the shared etcd (a cut view ends its
        watches through L{FakeEtcd.setAvailable} in the tests that need it).
        """
        return self.etcd.watch(key, prefix, startRevision, callback)


class MemoryPeers(Peers):
    """
    L{Peers} whose connections are iosim connections to the other nodes of
    a L{CoordinatedCluster}, found by their AMP address.
    """

    def __init__(self, cluster: CoordinatedCluster, node: HANode) -> None:
        """
        @param cluster: where the other nodes are.
        @param node: the node these are the peers of.
        """
        super().__init__(node.clock, None, node._identity, [node.replicationLocator])
        self.cluster = cluster
        self.node = node

    def connect(self, address: str) -> Deferred[NodeAMP]:
        """
        An iosim connection to the running node at C{address}; refused when
        there is none (it was killed) or the cluster's C{unreachable} holds
        the pair.
        """
        return self.cluster.dial(self.node, address, self.locators)


class CoordinatedCluster:
    """
    Brokers with a coordinator on one L{Clock} and one L{FakeEtcd}.

    @ivar stall: seconds the brokers' monotonic clock is ahead of the
        L{Clock}: a reactor that stalled (its timers have not run yet)
        while time went on.
    @ivar unreachable: pairs of nodes that cannot connect to each other.
    @ivar hanging: nodes whose address accepts connections that nobody
        answers (a paused process: its kernel accepts): a connection
        attempt fails only at its deadline.
    """

    def __init__(self, case: SynchronousTestCase, minBackups: int = 0) -> None:
        """
        @param case: the test, for temporary directories and the cleanup
            (which stops every node and checks that no timer is left).
        @param minBackups: C{--ha-min-backups} of every node.
        """
        self.case = case
        self.clock = Clock()
        self.etcd = FakeEtcd(self.clock)
        self.minBackups = minBackups
        self.stall = 0.0
        self.nodes: list[HANode] = []
        self.views: dict[HANode, EtcdView] = {}
        self.pumps: list[tuple[HANode, HANode, iosim.IOPump]] = []
        self.unreachable: set[frozenset[HANode]] = set()
        self.hanging: set[HANode] = set()
        self.interceptors: dict[HANode, BoxInterceptor] = {}
        self.journals: dict[str, MemoryJournal] = {}
        self.holdBoxesTo: set[HANode] = set()
        case.addCleanup(self.finish)

    def monotonic(self) -> float:
        """
        The brokers' monotonic clock.
        """
        return self.clock.seconds() + self.stall

    def node(self, dataDir: str | None = None) -> HANode:
        """
        A broker with a coordinator, not started; its AMP address is
        C{nodeN:5673}. Its store (a journal in memory, one per data
        directory) holds the position the coordinator compares, as in
        C{makeService}; a broker made again on the same data directory
        recovers from it, as after a restart.

        @param dataDir: its data directory (a new one by default).
        """
        index = len(self.nodes)
        dataDir = dataDir or self.case.mktemp()
        journal = self.journals.setdefault(dataDir, MemoryJournal())
        vhost = VirtualHost(clock=self.clock)
        store = Store(journal, self.clock)
        store.recover(vhost)
        options = HAOptions(
            brokers=[],
            heartbeat=0.0,
            minBackups=self.minBackups,
            backupTimeout=BACKUP_TIMEOUT,
            dataDir=dataDir,
            coordinator=["http://etcd.invalid:2379"],
            clusterName="test",
            leaseTTL=TTL,
            amqpAddress=f"node{index}:5672",
        )
        options.extra["haAddress"] = f"node{index}:5673"
        state = PersistentState(options.dataDir)
        view = EtcdView(self.etcd)
        node = HANode(
            options,
            vhost,
            self.clock,
            FakeAMQP(),
            state,
            store=store,
            etcd=view,  # type: ignore[arg-type]
            monotonic=self.monotonic,
        )
        node.peers = MemoryPeers(self, node)
        self.nodes.append(node)
        self.views[node] = view
        return node

    def start(self, count: int) -> list[HANode]:
        """
        C{count} new brokers, started.
        """
        made = [self.node() for _ in range(count)]
        for node in made:
            node.startService()
        return made

    def dial(self, caller: HANode, address: str, locators: Any) -> Deferred[NodeAMP]:
        """
        Connect C{caller} to the running node at AMP address C{address}.
        """
        for target in self.nodes:
            if target.options.extra["haAddress"] == address and target in self.hanging:
                attempt: Deferred[NodeAMP] = Deferred()
                attempt.addTimeout(PEER_TIMEOUT, self.clock)
                return attempt
        for target in self.nodes:
            if target.options.extra["haAddress"] == address and target.running:
                break
        else:
            return fail(ConnectionRefusedError(address))
        if frozenset((caller, target)) in self.unreachable:
            return fail(ConnectionRefusedError(address))
        server = NodeAMPFactory(None, [target.replicationLocator]).buildProtocol(None)  # type: ignore[arg-type]
        client = nodeConnection(None, locators, authenticated=True)
        pump = iosim.connect(
            server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client), clock=self.clock
        )
        if caller in self.holdBoxesTo:
            self.interceptors[caller] = BoxInterceptor(server, *["hold"] * 1000)
        self.pumps.append((caller, target, pump))
        return succeed(client)

    def flush(self) -> None:
        """
        Move every byte on every connection until none moves.
        """
        for _ in range(1000):
            if not any(pump.pump() for _, _, pump in list(self.pumps)):
                return

    def run(self, seconds: float, step: float = 0.05) -> None:
        """
        Let C{seconds} pass in steps, moving every byte after each.
        """
        end = self.clock.seconds() + seconds
        self.flush()
        while self.clock.seconds() < end:
            self.clock.advance(min(step, end - self.clock.seconds()))
            self.flush()

    def runUntil(self, check: Callable[[], Any], most: float, what: str) -> float:
        """
        Let time pass until C{check()} holds, for at most C{most} seconds.

        @return: how long it took.
        """
        start = self.clock.seconds()
        self.flush()
        while not check():
            if self.clock.seconds() - start >= most:
                self.case.fail(f"{what}: not within {most} s; roles {self.roles()}")
            self.clock.advance(0.05)
            self.flush()
        return self.clock.seconds() - start

    def epochKey(self) -> bytes:
        """
        The value of the cluster's C{epoch} key in etcd.
        """
        found: list[Any] = []
        self.etcd.range(b"/qha/test/epoch").addCallback(found.append)
        [result] = found
        return bytes(result.kvs[0].value)

    def roles(self) -> list[str]:
        """
        Every node's role, in order (C{"dead"} for a stopped one).
        """
        return [node.role.name if node.running else "dead" for node in self.nodes]

    def primaries(self) -> list[HANode]:
        """
        The running nodes that are primaries.
        """
        return [node for node in self.nodes if node.running and node.role.isPrimary]

    def formed(self, size: int) -> bool:
        """
        Whether one running node is active and C{size - 1} are ready.
        """
        roles = [node.role.name for node in self.nodes if node.running]
        return sorted(roles) == sorted([ACTIVE] + [READY] * (size - 1))

    def cutConnections(self, node: HANode) -> None:
        """
        Drop every connection of C{node}, as when its process dies: what it
        had not sent yet never leaves.
        """
        for one, other, pump in self.pumps:
            if node in (one, other):
                for io in (pump.clientIO, pump.serverIO):
                    if node is (one if io is pump.clientIO else other):
                        io.stream = []
                    io.loseConnection()
        self.flush()
        self.pumps = [(a, b, p) for a, b, p in self.pumps if node not in (a, b)]

    def kill(self, node: HANode) -> None:
        """
        C{node} dies at once, as with SIGKILL: it cannot revoke its lease
        (etcd expires it after the TTL), its connections drop.
        """
        self.views[node].reachable = False
        self.cutConnections(node)
        node.stopService()
        self.flush()

    def pause(self, node: HANode) -> None:
        """
        C{node} stops answering, as with SIGSTOP: it keeps no lease (etcd
        expires it after the TTL), its links go silent and drop, and a
        connection to its address hangs until the caller's deadline.
        """
        self.hanging.add(node)
        self.kill(node)

    def finish(self) -> None:
        """
        Stop every node, let every lease go, and check that no timer is
        left behind.
        """
        self.etcd.setAvailable(True)
        self.hanging.clear()
        for node in self.nodes:
            if node.running:
                node.stopService()
        for node in self.nodes:
            self.cutConnections(node)
        self.run(1)
        for lease in self.etcd.leases():
            self.etcd.expire(lease)
        self.case.assertEqual(self.clock.getDelayedCalls(), [])


class AMQPClient:
    """
    A confirming AMQP client of a primary, through the AMQP factory as
    C{makeService} builds it: C{mayConfirm} is the node's.
    """

    def __init__(self, node: HANode) -> None:
        """
        Connect to C{node}, select confirms on channel 1, declare C{q}
        (replicated, durable: its persistent messages reach the store, with
        the position).
        """
        factory = BrokerFactory(
            node.vhost,
            fastUsers(),
            node.clock,
            holders=[node.gate] if node.store is None else [node.gate, node.store],  # type: ignore[list-item]
            pacer=node.gate,
            mayConfirm=node.mayConfirm,
        )
        self.client = Client(factory)
        self.client.handshake()
        self.client.openChannel(1)
        self.client.call(1, commands.Confirm.Select())
        declare = commands.Queue.Declare(queue="q", durable=True, arguments=ALL)  # type: ignore[arg-type]
        self.client.call(1, declare)
        self.published = 0
        self._acked: list[int] = []

    def publish(self) -> int:
        """
        Publish one message to C{q}; its delivery tag.
        """
        self.published += 1
        persistent = commands.Basic.Properties(delivery_mode=2)
        self.client.send(publishBytes(1, "", "q", b"m%d" % self.published, properties=persistent))
        return self.published

    def acked(self) -> list[int]:
        """
        The delivery tags acknowledged so far (as C{multiple} acks say).
        """
        for _, frame in self.client.received():
            if isinstance(frame, commands.Basic.Ack):
                self._acked.append(frame.delivery_tag)
        return list(self._acked)


class ElectionTests(SynchronousTestCase):
    """
    A cluster forms by itself, and elects again when its primary goes.
    """

    def setUp(self) -> None:
        """
        A cluster in memory.
        """
        self.cluster = CoordinatedCluster(self)

    def test_freshThree(self) -> None:
        """
        Three fresh brokers elect one primary in epoch 1, after
        C{--ha-backup-timeout} (so that every one could register); the two
        others follow it and are ready.
        """
        nodes = self.cluster.start(3)
        took = self.cluster.runUntil(lambda: self.cluster.formed(3), 10, "a cluster of three")
        self.assertLess(took, BACKUP_TIMEOUT + 1.5)
        [primary] = self.cluster.primaries()
        self.assertEqual([node.epoch for node in nodes], [1, 1, 1])
        self.assertTrue(primary.mayConfirm())
        for node in nodes:
            if node is not primary:
                self.assertFalse(node.mayConfirm())
                assert node.link is not None
                self.assertEqual(node.link.primaryId, primary.brokerId)
            assert node.coordinated is not None
            leader = node.coordinated.leader
            assert leader is not None
            self.assertEqual(leader.id, primary.brokerId)
        # However many campaigned, one took epoch 1.
        self.assertEqual(self.cluster.epochKey(), b"1")

    def test_freshTwo(self) -> None:
        """
        Two fresh brokers: one primary, one ready backup.
        """
        self.cluster.start(2)
        self.cluster.runUntil(lambda: self.cluster.formed(2), 10, "a cluster of two")

    def test_primaryKilled(self) -> None:
        """
        kill -9 of the primary: etcd expires its lease after the TTL, and
        one ready backup takes over in the next epoch; the other follows.
        """
        self.cluster.start(3)
        self.cluster.runUntil(lambda: self.cluster.formed(3), 10, "a cluster of three")
        [old] = self.cluster.primaries()
        self.cluster.kill(old)
        took = self.cluster.runUntil(lambda: self.cluster.formed(2), 10, "a new primary")
        self.assertLessEqual(took, TTL + 1)
        [new] = self.cluster.primaries()
        self.assertEqual(new.epoch, 2)

    def test_searchMovesToNewLeader(self) -> None:
        """
        Backups whose search hangs on the old primary's address (it is
        paused: its kernel accepts, nobody answers) look at the new
        leader's address as soon as etcd names it, rather than at the end
        of the attempt under way: the one that did not win follows the
        winner at once.
        """
        self.cluster.start(3)
        self.cluster.runUntil(lambda: self.cluster.formed(3), 10, "a cluster of three")
        [old] = self.cluster.primaries()
        self.cluster.pause(old)
        self.cluster.runUntil(lambda: self.cluster.primaries(), 10, "a new primary")
        [new] = self.cluster.primaries()
        [other] = [n for n in self.cluster.nodes if n not in (old, new)]
        took = self.cluster.runUntil(lambda: other.role.name == READY, PEER_TIMEOUT, "the other to follow")
        self.assertLess(took, 0.5)
        assert other.link is not None
        self.assertEqual(other.link.primaryId, new.brokerId)

    def test_readyBackupsRace(self) -> None:
        """
        Two ready backups at the same position both campaign when the
        leader goes: exactly one wins, and the epoch rises by one.
        """
        self.cluster.start(3)
        self.cluster.runUntil(lambda: self.cluster.formed(3), 10, "a cluster of three")
        [old] = self.cluster.primaries()
        txns = self.cluster.etcd.calls.count("txn")
        self.cluster.kill(old)
        self.cluster.runUntil(lambda: self.cluster.formed(2), 10, "a new primary")
        self.assertEqual(len(self.cluster.primaries()), 1)
        campaigns = self.cluster.etcd.calls.count("txn") - txns
        self.assertGreaterEqual(campaigns, 1)
        self.assertEqual(self.cluster.epochKey(), b"2")
        self.cluster.run(TTL * 3)
        self.assertEqual(len(self.cluster.primaries()), 1)

    def test_cannotRecordEpoch(self) -> None:
        """
        A backup that wins the election but cannot write its epoch to its
        data directory leaves the election: it stays a backup looking for
        no primary (it serves nothing, confirms nothing, and is never
        promoted), its keys leave etcd, and the other backup leads in the
        epoch after; C{qha-admin status} shows why it is out.
        """
        self.cluster.start(3)
        self.cluster.runUntil(lambda: self.cluster.formed(3), 10, "a cluster of three")
        [old] = self.cluster.primaries()
        failing, other = [node for node in self.cluster.nodes if node is not old]

        def diskFull(epoch: int) -> None:
            raise OSError(28, "No space left on device")

        failing.state.setEpoch = diskFull  # type: ignore[method-assign]
        # The other backup's campaigns go unanswered until the failing one
        # took epoch 2 and left.
        self.cluster.views[other].txnUnanswered = True
        self.cluster.kill(old)
        assert failing.coordinated is not None
        coordinator = failing.coordinated.coordinator
        self.cluster.runUntil(lambda: coordinator.whyNot() != "there is a leader", TTL + 1, "a take")
        why = "left the election: could not record epoch 2: [Errno 28] No space left on device"
        self.assertEqual(coordinator.whyNot(), why)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual((failing.epoch, failing.role.name), (1, JOINING))
        self.assertFalse(failing.amqp.listening)  # type: ignore[attr-defined]
        self.assertFalse(failing.mayConfirm())
        found: list[Any] = []
        self.cluster.etcd.range(b"/qha/test/members/" + failing.brokerId.encode()).addCallback(found.append)
        self.assertEqual(found[0].kvs, [])
        self.cluster.views[other].txnUnanswered = False
        self.cluster.runUntil(lambda: other.role.name == ACTIVE, 10, "the other backup to lead")
        self.assertEqual((other.epoch, self.cluster.epochKey()), (3, b"3"))
        self.cluster.run(TTL * 3)
        self.assertEqual(self.cluster.primaries(), [other])
        self.assertEqual((failing.epoch, failing.role.name), (1, JOINING))
        self.assertEqual(failing.describe()["coordinator"]["whyNotCampaigning"], why)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_totalRestartNewestStore(self) -> None:
        """
        After a total restart, the broker whose copy went furthest takes
        over, whichever starts first.
        """
        first, second = self.cluster.start(2)
        self.cluster.runUntil(lambda: self.cluster.formed(2), 10, "a cluster of two")
        [primary] = self.cluster.primaries()
        client = AMQPClient(primary)
        # The backup goes away; the primary goes on alone.
        backup = second if primary is first else first
        self.cluster.kill(backup)
        client.publish()
        self.cluster.run(0.1)
        self.assertEqual(client.acked(), [1])
        assert primary.store is not None and backup.store is not None
        primary.store.flush()
        self.assertGreater(primary.store.position, backup.store.position)
        self.cluster.kill(primary)
        self.cluster.run(TTL + 1)
        # Restart both from their data directories, the stale one first.
        stale = self.cluster.node(backup.options.dataDir)
        fresh = self.cluster.node(primary.options.dataDir)
        stale.startService()
        self.cluster.run(0.5)
        fresh.startService()
        self.cluster.runUntil(lambda: self.cluster.formed(2), 10, "a restarted cluster")
        self.assertEqual(self.cluster.primaries(), [fresh])
        self.assertEqual(fresh.vhost.queues["q"].messageCount, 1)


class FencingTests(SynchronousTestCase):
    """
    A primary that may have lost its lease confirms nothing and steps down.
    """

    def setUp(self) -> None:
        """
        A cluster of two, formed, with a confirming client on the primary
        that got one confirm.
        """
        self.cluster = CoordinatedCluster(self)
        self.cluster.start(2)
        self.cluster.runUntil(lambda: self.cluster.formed(2), 10, "a cluster of two")
        [self.primary] = self.cluster.primaries()
        [self.backup] = [n for n in self.cluster.nodes if n is not self.primary]
        self.client = AMQPClient(self.primary)
        self.client.publish()
        self.cluster.run(0.1)
        self.assertEqual(self.client.acked(), [1])

    def assertFenced(self) -> None:
        """
        The old primary confirmed nothing more, stepped down, and the backup
        took over.
        """
        self.assertFalse(self.primary.mayConfirm())
        self.cluster.run(0.1)
        self.assertEqual(self.client.acked(), [1])
        self.assertFalse(self.primary.role.isPrimary)
        self.cluster.runUntil(lambda: self.backup.role.name == ACTIVE, 10, "the backup to take over")
        self.assertEqual(self.client.acked(), [1])

    def test_pastDeadline(self) -> None:
        """
        A primary whose reactor stalls past its deadline confirms nothing,
        even before its deadline timer runs: the channel asks
        L{HANode.mayConfirm}, which reads the monotonic clock.
        """
        assert self.primary.coordinated is not None
        deadline = self.primary.coordinated.coordinator.deadline
        assert deadline is not None
        self.cluster.stall = deadline - self.cluster.clock.seconds()
        self.assertFalse(self.primary.mayConfirm())
        self.client.publish()
        self.assertEqual(self.client.acked(), [1])
        # The reactor wakes: time catches up, the deadline timer runs.
        self.cluster.views[self.primary].reachable = False
        self.cluster.clock.advance(self.cluster.stall)
        self.cluster.stall = 0.0
        self.assertFenced()

    def test_healthRedFirst(self) -> None:
        """
        While keepalives succeed, the health check's question
        (L{HANode.mayConfirmAhead}) stays true at every step; once etcd
        stops answering it turns false L{Coordinator.lookAhead} seconds
        before the primary stops confirming, so a load balancer drains the
        primary before its confirms stop.
        """
        assert self.primary.coordinated is not None
        coordinator = self.primary.coordinated.coordinator
        end = self.cluster.clock.seconds() + 3 * TTL
        while self.cluster.clock.seconds() < end:
            self.cluster.run(0.01, step=0.01)
            self.assertTrue(self.primary.mayConfirmAhead())
        self.cluster.etcd.setAvailable(False)
        self.cluster.views[self.primary].reachable = False
        red: float | None = None
        while self.primary.mayConfirm():
            if red is None and not self.primary.mayConfirmAhead():
                red = self.cluster.clock.seconds()
            self.assertLess(self.cluster.clock.seconds() - end, TTL, "confirms never stopped")
            self.cluster.run(0.01, step=0.01)
        stopped = self.cluster.clock.seconds()
        self.assertIsNotNone(red, "the health check never turned red before confirms stopped")
        assert red is not None
        self.assertAlmostEqual(stopped - red, coordinator.lookAhead, delta=0.015)
        self.assertFalse(self.primary.mayConfirmAhead())

    def test_keepaliveFails(self) -> None:
        """
        A keepalive that etcd refuses demotes the primary at once, before
        its deadline.
        """
        assert self.primary.coordinated is not None
        deadline = self.primary.coordinated.coordinator.deadline
        assert deadline is not None
        self.cluster.views[self.primary].keepaliveError = EtcdError(9, "keepalive refused")
        self.cluster.runUntil(
            lambda: not self.primary.role.isPrimary, TTL / 3 + 0.1, "the primary to step down"
        )
        self.assertLess(self.cluster.clock.seconds(), deadline)
        self.assertFalse(self.primary.mayConfirm())
        self.cluster.views[self.primary].keepaliveError = None
        self.client.publish()
        self.assertFenced()

    def test_leaseExpired(self) -> None:
        """
        A lease that etcd expired (the leader key goes with it) demotes the
        primary at once.
        """
        assert self.primary.coordinated is not None
        lease = self.primary.coordinated.coordinator.lease
        assert lease is not None
        self.cluster.etcd.expire(lease)
        self.cluster.flush()
        self.assertFalse(self.primary.mayConfirm())
        self.client.publish()
        self.assertFenced()

    def test_etcdUnreachable(self) -> None:
        """
        etcd unreachable for everyone: the primary confirms until its
        deadline, then stops; the backup does not campaign meanwhile. Once
        etcd is back, a primary is elected again.
        """
        assert self.primary.coordinated is not None
        self.cluster.etcd.setAvailable(False)
        for view in self.cluster.views.values():
            view.reachable = False
        deadline = self.primary.coordinated.coordinator.deadline
        assert deadline is not None
        self.cluster.run(deadline - self.cluster.clock.seconds() - 0.1)
        self.client.publish()
        self.cluster.run(0.05)
        self.assertEqual(self.client.acked(), [1, 2])
        self.cluster.run(0.1)
        self.assertFalse(self.primary.mayConfirm())
        self.assertEqual(self.primary.role.name, JOINING)
        self.client.publish()
        self.cluster.run(TTL * 3)
        self.assertEqual(self.client.acked(), [1, 2])
        self.assertEqual(self.cluster.primaries(), [])
        txns = self.cluster.etcd.calls.count("txn")
        self.assertEqual(self.cluster.etcd.calls.count("txn"), txns)
        self.cluster.etcd.setAvailable(True)
        for view in self.cluster.views.values():
            view.reachable = True
        self.cluster.runUntil(lambda: self.cluster.formed(2), 15, "a primary again")


class CampaignRuleTests(SynchronousTestCase):
    """
    Who may campaign when the primary goes.
    """

    def setUp(self) -> None:
        """
        A cluster in memory.
        """
        self.cluster = CoordinatedCluster(self)

    def test_catchingUpNeverCampaigns(self) -> None:
        """
        A backup still catching up when its primary dies never takes over:
        it does not hold every confirmed message.
        """
        first = self.cluster.node()
        first.startService()
        self.cluster.runUntil(lambda: self.cluster.formed(1), 10, "a primary")
        late = self.cluster.node()
        # The primary's boxes to the late broker are held back: it stays
        # in catchup.
        self.cluster.holdBoxesTo.add(late)
        late.startService()
        self.cluster.runUntil(lambda: late.role.name == CATCHUP, 10, "catchup")
        self.cluster.kill(first)
        self.cluster.run(TTL * 4)
        self.assertEqual(self.cluster.primaries(), [])
        self.assertEqual(late.role.name, JOINING)
        assert late.coordinated is not None
        self.assertEqual(late.coordinated.coordinator.whyNot(), "the broker is not ready")

    def test_staleNeverCampaigns(self) -> None:
        """
        A backup that fell behind (it lost its link while the primary went
        on) does not campaign while a more advanced member is registered:
        the one that is ahead takes over.
        """
        nodes = self.cluster.start(3)
        self.cluster.runUntil(lambda: self.cluster.formed(3), 10, "a cluster of three")
        [primary] = self.cluster.primaries()
        stale, ahead = [node for node in nodes if node is not primary]
        client = AMQPClient(primary)
        self.cluster.run(0.1)
        # The stale backup loses the primary and cannot reach it again.
        self.cluster.unreachable.add(frozenset((stale, primary)))
        for one, other, pump in self.cluster.pumps:
            if {one, other} == {stale, primary}:
                pump.clientIO.loseConnection()
        self.cluster.run(0.1)
        self.assertEqual(stale.role.name, JOINING)
        client.publish()
        self.cluster.run(TTL / 3 + 0.1)
        self.assertEqual(client.acked(), [1])
        assert ahead.coordinated is not None and stale.coordinated is not None
        self.assertGreater(ahead.coordinated.position(), stale.coordinated.position())
        # The one ahead cannot win (its campaigns go unanswered), but it is
        # registered: the stale one never campaigns.
        self.cluster.views[ahead].txnUnanswered = True
        self.cluster.kill(primary)
        self.cluster.run(TTL * 3)
        self.assertEqual(self.cluster.primaries(), [])
        assert stale.coordinated is not None
        self.assertIn("is ahead", stale.coordinated.coordinator.whyNot() or "")
        self.cluster.views[ahead].txnUnanswered = False
        self.cluster.runUntil(lambda: self.cluster.primaries(), 10, "a new primary")
        self.assertEqual(self.cluster.primaries(), [ahead])
        self.assertIn("q", ahead.vhost.queues)
        self.assertEqual(ahead.vhost.queues["q"].messageCount, 1)


class SwitchoverTests(SynchronousTestCase):
    """
    C{promote} with a coordinator: a switchover through etcd.
    """

    def setUp(self) -> None:
        """
        A cluster of three, formed.
        """
        self.cluster = CoordinatedCluster(self)
        self.nodes = self.cluster.start(3)
        self.cluster.runUntil(lambda: self.cluster.formed(3), 10, "a cluster of three")
        [self.primary] = self.cluster.primaries()

    def promote(self, node: HANode, force: bool = False) -> list[Any]:
        """
        Call C{node.promote(force)}; its result (or failure) once it comes.
        """
        results: list[Any] = []
        ensureDeferred(node.promote(force)).addBoth(results.append)
        return results

    def test_readyBackup(self) -> None:
        """
        C{promote} on a ready backup: the primary steps down first, the
        backup takes the next epoch, the old primary follows it.
        """
        target = next(node for node in self.nodes if node is not self.primary)
        client = AMQPClient(self.primary)
        client.publish()
        self.cluster.run(0.1)
        self.assertEqual(client.acked(), [1])
        results = self.promote(target)
        self.cluster.runUntil(lambda: results, 10, "the promotion's answer")
        [answer] = results
        self.assertNotIsInstance(answer, Failure)
        self.assertEqual(answer["epoch"], 2)
        self.cluster.runUntil(lambda: self.cluster.formed(3), 10, "the cluster to form again")
        self.assertEqual(self.cluster.primaries(), [target])
        self.assertEqual(target.vhost.queues["q"].messageCount, 1)

    def test_forceRefused(self) -> None:
        """
        C{promote --force} is refused: etcd decides the primary.
        """
        target = next(node for node in self.nodes if node is not self.primary)
        results = self.promote(target, force=True)
        self.cluster.flush()
        [failure] = results
        self.assertIsInstance(failure, Failure)
        failure.trap(Refused)
        self.assertEqual(self.cluster.primaries(), [self.primary])
