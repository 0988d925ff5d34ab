"""
End-to-end tests of the active-passive cluster's replication, ported from
Apache Qpid's C{src/tests/ha_tests.py}: real C{twistd qha} processes on
loopback (L{qha.test.integration.cluster}), driven with pika.

A backup refuses AMQP clients, so what a backup holds is checked in two
ways: its queues, exchanges and bindings with their message counts through
the admin command C{ListObjects} over AMP (the way Qpid's tests waited for an
address on a backup), and the messages themselves by killing the primary
(SIGKILL), promoting the backup and consuming from it. Every wait is bounded
and waits on an event (an answer, a line of the broker's log), never a
sleep.

The tests of one class share one cluster where that is safe: each test uses
queue names of its own, and a test that kills brokers leaves the cluster to
the next test's C{setUp}, which restarts what is down and waits until there
is one active primary and every other broker is ready (or builds a new
cluster if that fails).
"""

from __future__ import annotations

import atexit
import signal
import time
from typing import Any, Callable, Sequence

import pika
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.exceptions import AMQPError, ChannelClosedByBroker, NackError
from pika.spec import BasicProperties
from twisted.trial.unittest import SynchronousTestCase

from qha.admin.commands import Query
from qha.ha.auth import Credentials
from qha.test.integration.brokerprocess import BrokerProcess, armWatchdog, failOnTraceback, waitUntil
from qha.test.integration.cluster import (
    BlockingAMP,
    Cluster,
    RemoteAMPError,
    callAMP,
)

WAIT = 10.0
"""
The most seconds a test waits for a backup to reach a state.
"""

REPLICATE = "qpid.replicate"

Message = tuple[bytes, bool, BasicProperties]
"""
What a test reads back: the body, the redelivered flag, the properties.
"""


_shared: dict[tuple[type, int, tuple[str, ...]], Cluster] = {}


def _stopShared() -> None:
    """
    At exit: stop every shared cluster (their processes die with the test
    process anyway; this also removes their directories).
    """
    for cluster in _shared.values():
        cluster.stop()
    _shared.clear()


atexit.register(_stopShared)


def _activeAndReady(cluster: Cluster, timeout: float = WAIT) -> int | None:
    """
    Bring a shared cluster back to one active primary with every other
    broker ready: start the brokers that are down, then wait.

    @return: the primary's index, or L{None} if the cluster cannot be
        brought back (the caller builds a new one).
    """
    try:
        for broker in cluster.brokers:
            if not broker.running():
                broker.start()
        roles = [cluster.role(index) for index in range(len(cluster))]
        active = [index for index, role in enumerate(roles) if role == "active"]
        if len(active) != 1:
            return None
        for index in range(len(cluster)):
            if index != active[0]:
                cluster.waitForRole(index, "ready", timeout)
        cluster.waitForBackups(active[0], len(cluster) - 1, timeout)
        return active[0]
    except Exception:
        return None


def _newCluster(size: int, arguments: Sequence[str], **keywords: Any) -> Cluster:
    """
    Start a cluster of C{size} brokers, promote broker 0 and wait until
    every other broker is ready.
    """
    cluster = Cluster(size, arguments, **keywords)
    try:
        cluster.start()
        cluster.startPrimary(0)
        for index in range(1, size):
            cluster.waitForRole(index, "ready", WAIT)
        cluster.waitForBackups(0, size - 1, WAIT)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def sharedCluster(testClass: type, size: int, arguments: Sequence[str]) -> tuple[Cluster, int]:
    """
    The cluster the tests of C{testClass} share, healed or rebuilt as
    needed; the clusters of other classes are stopped first.

    @return: the cluster and its primary's index.
    """
    key = (testClass, size, tuple(arguments))
    for other in [k for k in _shared if k != key]:
        _shared.pop(other).stop()
    cluster = _shared.get(key)
    if cluster is not None:
        primary = _activeAndReady(cluster)
        if primary is not None:
            return cluster, primary
        _shared.pop(key).stop()
    cluster = _newCluster(size, arguments)
    _shared[key] = cluster
    return cluster, 0


def bodies(messages: Sequence[Message]) -> list[bytes]:
    """
    The bodies of C{messages}.
    """
    return [body for body, _, _ in messages]


class ClusterTestCase(SynchronousTestCase):
    """
    The base of the replication tests: a cluster (shared by the class
    unless L{shareCluster} is false), pika connections to its primary, and
    the helpers that look at a backup.

    @cvar size: how many brokers.
    @cvar arguments: extra C{twistd qha} options for every broker; Qpid's
        tests ran with C{--ha-replicate=all}, so these do too.
    @cvar shareCluster: whether the tests of the class share one cluster.
    @cvar watchdogTimeout: the most seconds one test may take.
    @ivar cluster: the cluster.
    @ivar primary: the index of its primary.
    """

    size = 2
    arguments: Sequence[str] = ("--ha-replicate", "all", "--ha-backup-timeout", "2")
    shareCluster = True
    watchdogTimeout = 60.0
    brokerMayFail = False

    def setUp(self) -> None:
        """
        Get the cluster, arm a watchdog (pika's blocking calls have no
        timeout of their own: after L{watchdogTimeout} seconds the watchdog
        kills the brokers, which makes every blocked call fail), and check
        the brokers' logs for tracebacks at the end.
        """
        if self.shareCluster:
            self.cluster, self.primary = sharedCluster(type(self), self.size, self.arguments)
        else:
            self.cluster = self.newCluster(self.size, self.arguments)
            self.primary = 0
        self._names = 0
        for broker in self.cluster.brokers:
            self.checkLog(broker)
        self.armWatchdog()

    def armWatchdog(self) -> None:
        """
        Start the watchdog thread, disarmed at the end of the test; when it
        fires it kills the brokers of the test's cluster.
        """
        armWatchdog(self, self.watchdogTimeout, self._killBrokers, lambda: "its brokers were killed")

    def newCluster(self, size: int, arguments: Sequence[str] = (), **keywords: Any) -> Cluster:
        """
        A cluster of this test's own, started with broker 0 promoted and
        the others ready, and stopped at the end of the test.
        """
        cluster = _newCluster(size, arguments, **keywords)
        self.addCleanup(cluster.stop)
        return cluster

    def newStoppedCluster(self, size: int, arguments: Sequence[str] = (), **keywords: Any) -> Cluster:
        """
        A cluster of this test's own whose brokers are not started yet,
        stopped at the end of the test.
        """
        cluster = Cluster(size, arguments, **keywords)
        self.addCleanup(cluster.stop)
        return cluster

    def checkLog(self, broker: BrokerProcess) -> None:
        """
        Fail the test if C{broker} logs a traceback from now on, unless
        the test sets L{brokerMayFail}.
        """
        failOnTraceback(self, broker, lambda: self.brokerMayFail)

    def _killBrokers(self) -> None:
        """
        In the watchdog's thread: the test took too long; kill the brokers.
        """
        for broker in self.cluster.brokers:
            broker.signal(signal.SIGKILL)

    # Names and connections

    def name(self, label: str) -> str:
        """
        A queue or exchange name of this test's own.
        """
        method = self.id().rsplit(".", 1)[-1]
        return f"{method}.{label}"

    @property
    def backups(self) -> list[int]:
        """
        The indexes of the brokers that are not the primary.
        """
        return [index for index in range(len(self.cluster)) if index != self.primary]

    def connect(self, cluster: Cluster | None = None, **overrides: Any) -> BlockingConnection:
        """
        A pika connection given every broker's address, so that it lands on
        the primary (the backups refuse it); closed at the end of the test.
        """
        cluster = self.cluster if cluster is None else cluster
        connection = pika.BlockingConnection(cluster.amqpParams(**overrides))
        self.addCleanup(self._closeQuietly, connection)
        return connection

    def channel(self, confirm: bool = True, cluster: Cluster | None = None) -> BlockingChannel:
        """
        A channel on a new connection to the primary, in confirm mode unless
        told otherwise.
        """
        channel = self.connect(cluster).channel()
        if confirm:
            channel.confirm_delivery()
        return channel

    @staticmethod
    def _closeQuietly(connection: BlockingConnection) -> None:
        """
        Close C{connection} if it is still open (its broker may be dead).
        """
        try:
            if connection.is_open:
                connection.close()
        except (AMQPError, OSError):
            pass

    # Declaring and publishing

    @staticmethod
    def declare(
        channel: BlockingChannel,
        name: str,
        replicate: str | None = None,
        arguments: dict[str, Any] | None = None,
        **keywords: Any,
    ) -> str:
        """
        Declare queue C{name}, with C{qpid.replicate} if given.
        """
        table = dict(arguments or {})
        if replicate is not None:
            table[REPLICATE] = replicate
        return str(channel.queue_declare(name, arguments=table, **keywords).method.queue)

    @staticmethod
    def declareExchange(
        channel: BlockingChannel,
        name: str,
        type: str = "fanout",
        replicate: str | None = None,
        arguments: dict[str, Any] | None = None,
    ) -> str:
        """
        Declare exchange C{name}, with C{qpid.replicate} if given.
        """
        table = dict(arguments or {})
        if replicate is not None:
            table[REPLICATE] = replicate
        channel.exchange_declare(name, type, arguments=table)
        return name

    @staticmethod
    def publish(
        channel: BlockingChannel,
        routingKey: str,
        body: bytes | str,
        exchange: str = "",
        **properties: Any,
    ) -> None:
        """
        Publish one message (confirmed if the channel is in confirm mode).
        """
        if isinstance(body, str):
            body = body.encode("utf-8")
        channel.basic_publish(
            exchange, routingKey, body, BasicProperties(**properties) if properties else None
        )

    @staticmethod
    def drain(channel: BlockingChannel, queue: str, ack: bool = True) -> list[Message]:
        """
        Take every message of C{queue} with basic.get; acknowledge them
        unless C{ack} is false (then they stay held by the channel, and go
        back to the queue, redelivered, when it closes: a browse).
        """
        messages: list[Message] = []
        while True:
            method, properties, body = channel.basic_get(queue, auto_ack=False)
            if method is None:
                break
            messages.append((body, bool(method.redelivered), properties))
            if ack:
                channel.basic_ack(method.delivery_tag)
        return messages

    def browse(self, queue: str) -> list[Message]:
        """
        Read every message of C{queue} on the primary and give them back.
        """
        connection = self.connect()
        channel = connection.channel()
        messages = self.drain(channel, queue, ack=False)
        channel.close()
        return messages

    def exists(self, kind: str, name: str, connection: BlockingConnection | None = None) -> bool:
        """
        Whether the primary has queue (or exchange) C{name}: a passive
        declare on a channel of its own.
        """
        if connection is None:
            connection = self.connect()
        channel = connection.channel()
        try:
            if kind == "queue":
                channel.queue_declare(name, passive=True)
            else:
                channel.exchange_declare(name, passive=True)
        except ChannelClosedByBroker as error:
            self.assertEqual(error.reply_code, 404, error)
            return False
        channel.close()
        return True

    # What a backup holds, over AMP

    def objects(self, index: int, kind: str) -> dict[str, dict[str, Any]]:
        """
        Broker C{index}'s queues or exchanges by name.
        """
        return {row["name"]: row for row in self.cluster.listObjects(index, kind)}

    def bindings(self, index: int) -> list[tuple[str, str, str]]:
        """
        Broker C{index}'s bindings as (exchange, destination, key).
        """
        return sorted(
            (row["source"], row["destination"], row["routingKey"])
            for row in self.cluster.listObjects(index, "bindings")
        )

    def waitUntil(self, index: int, condition: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
        """
        Evaluate C{condition} until it is true, waiting for broker C{index}
        to log something in between.

        @raise AssertionError: after C{timeout} seconds.
        """
        broker = self.cluster.brokers[index]
        return waitUntil(
            condition,
            broker.waitForOutput,
            timeout,
            f"{what} on broker {index}",
            step=0.05,
            explain=lambda: f"; its output:\n{broker.output(40)}",
        )

    def waitForQueue(self, index: int, name: str, messages: int | None = None) -> dict[str, Any]:
        """
        Wait until broker C{index} has queue C{name} (with C{messages}
        messages, if given).
        """

        def present() -> dict[str, Any] | None:
            """
            The queue's row if it is there as expected.
            """
            row = self.objects(index, "queues").get(name)
            if row is None or (messages is not None and row["messages"] != messages):
                return None
            return row

        return dict(
            self.waitUntil(index, present, f"queue {name!r} with {messages} messages")
        )

    def waitNoQueue(self, index: int, name: str) -> None:
        """
        Wait until broker C{index} no longer has queue C{name}.
        """
        self.waitUntil(
            index, lambda: name not in self.objects(index, "queues"), f"no queue {name!r}"
        )

    def waitForExchange(self, index: int, name: str) -> dict[str, Any]:
        """
        Wait until broker C{index} has exchange C{name}.
        """
        return dict(
            self.waitUntil(
                index, lambda: self.objects(index, "exchanges").get(name), f"exchange {name!r}"
            )
        )

    def sync(self, channel: BlockingChannel, backups: Sequence[int] | None = None) -> None:
        """
        Wait until the backups applied everything the primary did on
        C{channel} so far: declare a marker queue after it (the declare's
        answer says the primary handled what came before on the channel) and
        wait for the marker on each backup, since a backup applies the
        stream in order.
        """
        self._names += 1
        marker = self.declare(channel, self.name(f"marker{self._names}"), "configuration")
        for index in self.backups if backups is None else backups:
            self.waitForQueue(index, marker)

    # Failover

    def failover(self, to: int | None = None, restart: bool = True) -> int:
        """
        Kill the primary (SIGKILL), promote broker C{to} (the first backup
        by default) and wait until it is active and listens for AMQP; then,
        if C{restart}, start the old primary again and wait until it is a
        ready backup of the new one.

        @return: the new primary's index.
        """
        old = self.primary
        new = self.backups[0] if to is None else to
        self.cluster.kill(old)
        self.cluster.promote(new)
        self.cluster.waitForRole(new, "active", WAIT)
        self.cluster.waitForAMQP(new, WAIT)
        self.primary = new
        if restart:
            self.cluster.startBroker(old)
            self.cluster.waitForRole(old, "ready", WAIT)
        return new


class ReplicationTests(ClusterTestCase):
    """
    Replication between a primary and one backup.
    """

    def setupObjects(self, channel: BlockingChannel, prefix: str) -> None:
        """
        Qpid's C{test_replication} setup: queues at each replication level,
        exchanges with bindings, an unbind, a dequeue, deletes.
        """
        q1 = self.declare(channel, self.name(prefix + "q1"), "all")
        for body in ["a", "b", "1"]:
            self.publish(channel, q1, body)
        method, _, body = channel.basic_get(q1)
        self.assertEqual(body, b"a")
        channel.basic_ack(method.delivery_tag)

        q2 = self.declare(channel, self.name(prefix + "q2"), "configuration")
        self.publish(channel, q2, "2")
        q3 = self.declare(channel, self.name(prefix + "q3"), "none")
        self.publish(channel, q3, "3")

        e1 = self.declareExchange(channel, self.name(prefix + "e1"), "direct", "all")
        channel.queue_bind(q1, e1, "key1")
        self.publish(channel, "key1", "4", exchange=e1)
        e2 = self.declareExchange(channel, self.name(prefix + "e2"), "direct", "configuration")
        channel.queue_bind(q2, e2, "key2")
        self.publish(channel, "key2", "5", exchange=e2)

        q4 = self.declare(channel, self.name(prefix + "q4"), "all")
        self.publish(channel, q4, "6")
        e4 = self.declareExchange(channel, self.name(prefix + "e4"), "direct", "all")
        channel.queue_bind(q4, e4, "key4")
        self.publish(channel, "key4", "7", exchange=e4)
        channel.queue_unbind(q4, e4, "key4")
        self.publish(channel, "key4", "drop1", exchange=e4)

        dq = self.declare(channel, self.name(prefix + "dq"), "all")
        de = self.declareExchange(channel, self.name(prefix + "de"), "direct", "all")
        channel.queue_bind(dq, de, "")
        channel.queue_delete(dq)
        channel.exchange_delete(de)

    def checkBackup(self, backup: int, prefix: str) -> None:
        """
        What the backup holds after L{setupObjects}, seen over AMP.
        """
        queues = self.objects(backup, "queues")
        exchanges = self.objects(backup, "exchanges")
        self.assertEqual(queues[self.name(prefix + "q1")]["messages"], 3)
        self.assertEqual(queues[self.name(prefix + "q2")]["messages"], 0)
        self.assertNotIn(self.name(prefix + "q3"), queues)
        self.assertEqual(queues[self.name(prefix + "q4")]["messages"], 2)
        self.assertNotIn(self.name(prefix + "dq"), queues)
        self.assertIn(self.name(prefix + "e1"), exchanges)
        self.assertIn(self.name(prefix + "e2"), exchanges)
        self.assertNotIn(self.name(prefix + "de"), exchanges)
        self.assertIn(
            (self.name(prefix + "e1"), self.name(prefix + "q1"), "key1"), self.bindings(backup)
        )
        self.assertIn(
            (self.name(prefix + "e2"), self.name(prefix + "q2"), "key2"), self.bindings(backup)
        )
        self.assertNotIn(
            (self.name(prefix + "e4"), self.name(prefix + "q4"), "key4"), self.bindings(backup)
        )

    def verify(self, channel: BlockingChannel, prefix: str) -> None:
        """
        On the promoted backup: the messages, bindings, unbind and deletes
        of L{setupObjects}, after the primary's consumer took C{b}.
        """
        q1, q2, q4 = (self.name(prefix + n) for n in ("q1", "q2", "q4"))
        self.publish(channel, "key1", prefix + "e1", exchange=self.name(prefix + "e1"))
        self.assertEqual(bodies(self.drain(channel, q1)), [b"1", b"4", (prefix + "e1").encode()])
        self.publish(channel, "key2", prefix + "e2", exchange=self.name(prefix + "e2"))
        self.assertEqual(bodies(self.drain(channel, q2)), [(prefix + "e2").encode()])
        self.publish(channel, "key4", "drop2", exchange=self.name(prefix + "e4"))
        self.assertEqual(bodies(self.drain(channel, q4)), [b"6", b"7"])
        self.assertFalse(self.exists("queue", self.name(prefix + "q3")))
        self.assertFalse(self.exists("queue", self.name(prefix + "dq")))
        self.assertFalse(self.exists("exchange", self.name(prefix + "de")))

    def test_replication(self) -> None:
        """
        Qpid's test_replication: configuration and messages at every
        replication level, bindings, unbinds, deletes and dequeues reach a
        backup both by catch-up (the backup started after the data) and in
        steady state; then enqueues and dequeues in series.
        """
        [backup] = self.backups
        self.cluster.kill(backup)
        channel = self.channel()
        self.setupObjects(channel, "1.")
        self.cluster.startBroker(backup)
        self.cluster.waitForRole(backup, "ready", WAIT)
        self.setupObjects(channel, "2.")
        self.sync(channel)
        for prefix in ["1.", "2."]:
            self.checkBackup(backup, prefix)
            method, _, body = channel.basic_get(self.name(prefix + "q1"))
            self.assertEqual(body, b"b")
            channel.basic_ack(method.delivery_tag)
        for prefix in ["1.", "2."]:
            self.waitForQueue(backup, self.name(prefix + "q1"), 2)

        # A series of messages: enqueue all, then dequeue all.
        foo = self.declare(channel, self.name("foo"))
        messages = [str(i).encode() for i in range(10)]
        for body in messages:
            self.publish(channel, foo, body)
        self.waitForQueue(backup, foo, 10)
        self.assertEqual(bodies(self.drain(channel, foo)), messages)
        self.waitForQueue(backup, foo, 0)
        # Again, checking each dequeue.
        for body in messages:
            self.publish(channel, foo, body)
        self.waitForQueue(backup, foo, 10)
        for index, body in enumerate(messages):
            method, _, got = channel.basic_get(foo)
            self.assertEqual(got, body)
            channel.basic_ack(method.delivery_tag)
            self.waitForQueue(backup, foo, 9 - index)
        for body in messages[:3]:
            self.publish(channel, foo, body)

        self.failover()
        channel = self.channel()
        self.verify(channel, "1.")
        self.verify(channel, "2.")
        self.assertEqual(bodies(self.drain(channel, foo)), messages[:3])

    def test_qpidConfigReplication(self) -> None:
        """
        Qpid's test_qpid_config_replication: a queue declared with the admin
        command (qpid-config there, AddObject over AMP here) with replicate
        all is on the backup with its message.
        """
        [backup] = self.backups
        queue = self.name("q")
        self.cluster.addObject(self.primary, "queue", {"name": queue, "replicate": "all"})
        self.publish(self.channel(), queue, "foo")
        self.assertEqual(self.waitForQueue(backup, queue, 1)["replicate"], "all")
        self.failover()
        self.assertEqual(bodies(self.drain(self.channel(), queue)), [b"foo"])

    def test_lvq(self) -> None:
        """
        Qpid's test_lvq: the backup of a last-value queue holds the last
        value of each key, in the primary's order.
        """
        [backup] = self.backups
        channel = self.channel()
        queue = self.declare(
            channel, self.name("lvq"), arguments={"qpid.last_value_queue_key": "lvq-key"}
        )
        steps = [
            ("a", "a-1", 1), ("b", "b-1", 2), ("a", "a-2", 2), ("a", "a-3", 2),
            ("c", "c-1", 3), ("c", "c-2", 3), ("b", "b-2", 3), ("c", "c-3", 3),
            ("d", "d-1", 4),
        ]  # fmt: skip
        for key, value, count in steps:
            self.publish(channel, queue, value, headers={"lvq-key": key})
            self.waitForQueue(backup, queue, count)
        self.failover()
        self.assertEqual(
            bodies(self.drain(self.channel(), queue)), [b"a-3", b"b-2", b"c-3", b"d-1"]
        )

    def test_ring(self) -> None:
        """
        Qpid's test_ring: the backup of a ring queue of 5 holds the last 5.
        """
        [backup] = self.backups
        channel = self.channel()
        queue = self.declare(
            channel, self.name("ring"), arguments={"qpid.policy_type": "ring", "qpid.max_count": 5}
        )
        for i in range(10):
            self.publish(channel, queue, str(i))
        self.waitForQueue(backup, queue, 5)
        self.failover()
        self.assertEqual(
            bodies(self.drain(self.channel(), queue)), [str(i).encode() for i in range(5, 10)]
        )

    def test_reject(self) -> None:
        """
        Qpid's test_reject: a reject queue of 5 refuses the rest (nacked);
        the backup holds the first 5 and, once promoted, still refuses.
        """
        [backup] = self.backups
        channel = self.channel()
        arguments = {"qpid.policy_type": "reject", "qpid.max_count": 5}
        queue = self.declare(channel, self.name("reject"), arguments=arguments)
        refused = 0
        for i in range(10):
            try:
                self.publish(channel, queue, str(i))
            except NackError:
                refused += 1
        self.assertEqual(refused, 5)
        self.waitForQueue(backup, queue, 5)
        self.failover()
        channel = self.channel()
        with self.assertRaises(NackError):
            self.publish(channel, queue, "10")
        self.assertEqual(
            bodies(self.drain(channel, queue)), [str(i).encode() for i in range(5)]
        )
        self.publish(channel, queue, "fits again")
        self.assertEqual(bodies(self.drain(channel, queue)), [b"fits again"])

    priorities = [8, 9, 5, 1, 2, 2, 3, 4, 9, 7, 8, 9, 9, 2]

    def test_priority(self) -> None:
        """
        Qpid's test_priority: the promoted backup of a priority queue
        delivers in priority order.
        """
        [backup] = self.backups
        channel = self.channel()
        queue = self.declare(channel, self.name("priority"), arguments={"qpid.priorities": 10})
        for priority in self.priorities:
            self.publish(channel, queue, str(priority), priority=priority)
        self.waitForQueue(backup, queue, len(self.priorities))
        self.failover()
        received = [properties.priority for _, _, properties in self.drain(self.channel(), queue)]
        self.assertEqual(received, sorted(self.priorities, reverse=True))

    def test_priorityFairshare(self) -> None:
        """
        Qpid's test_priority_fairshare: the promoted backup of a fairshare
        priority queue delivers in the same order as the primary does (a
        twin queue with replicate none, drained on the primary first).
        """
        [backup] = self.backups
        channel = self.channel()
        priorities = [
            4, 5, 3, 7, 8, 8, 2, 8, 2, 8, 8, 16, 6, 6, 6, 6, 6, 6, 8, 3, 5, 8, 3, 5, 5, 3, 3,
            8, 8, 3, 7, 3, 7, 7, 7, 8, 8, 8, 2, 3,
        ]  # fmt: skip
        limits = {7: 0, 6: 4, 5: 3, 4: 2, 3: 2, 2: 2, 1: 2}
        arguments: dict[str, Any] = {"qpid.priorities": 8, "qpid.fairshare": 5}
        arguments.update({f"qpid.fairshare-{level}": limit for level, limit in limits.items()})
        queue = self.declare(channel, self.name("fairshare"), arguments=arguments)
        twin = self.declare(channel, self.name("twin"), "none", arguments=arguments)
        for index, priority in enumerate(priorities):
            for target in (queue, twin):
                self.publish(channel, target, f"{index}:{priority}", priority=min(priority, 255))
        expected = bodies(self.drain(channel, twin))
        self.assertNotEqual(
            expected,
            sorted(expected, key=lambda body: -min(int(body.split(b":")[1]), 7)),
            "the fairshare limits changed nothing: the test proves nothing",
        )
        self.waitForQueue(backup, queue, len(priorities))
        self.failover()
        self.assertEqual(bodies(self.drain(self.channel(), queue)), expected)

    def test_priorityRing(self) -> None:
        """
        Qpid's test_priority_ring: a ring of 5 with priorities keeps the 5
        highest on the primary and on the backup.
        """
        [backup] = self.backups
        channel = self.channel()
        arguments = {"qpid.policy_type": "ring", "qpid.max_count": 5, "qpid.priorities": 10}
        queue = self.declare(channel, self.name("ring"), arguments=arguments)
        twin = self.declare(channel, self.name("twin"), "none", arguments=arguments)
        for priority in self.priorities:
            for target in (queue, twin):
                self.publish(channel, target, str(priority), priority=priority)
        expected = sorted(self.priorities, reverse=True)[:5]
        self.assertEqual(
            [properties.priority for _, _, properties in self.drain(channel, twin)], expected
        )
        self.waitForQueue(backup, queue, 5)
        self.failover()
        received = [properties.priority for _, _, properties in self.drain(self.channel(), queue)]
        self.assertEqual(received, expected)

    def test_replicateBinding(self) -> None:
        """
        Qpid's test_replicate_binding: a binding to a queue that is not
        replicated is not replicated either, so after failover a publish
        to the exchange reaches only the replicated queue.
        """
        [backup] = self.backups
        channel = self.channel()
        exchange = self.declareExchange(channel, self.name("ex"), "fanout", "all")
        kept = self.declare(channel, self.name("kept"), "all")
        local = self.declare(channel, self.name("local"), "none")
        channel.queue_bind(kept, exchange, "")
        channel.queue_bind(local, exchange, "")
        self.sync(channel)
        bindings = self.bindings(backup)
        self.assertIn((exchange, kept, ""), bindings)
        self.assertNotIn((exchange, local, ""), bindings)
        self.assertNotIn(local, self.objects(backup, "queues"))
        self.failover()
        channel = self.channel()
        self.publish(channel, "", "msg", exchange=exchange)
        self.assertEqual(bodies(self.drain(channel, kept)), [b"msg"])
        self.assertFalse(self.exists("queue", local))

    def test_invalidReplication(self) -> None:
        """
        Qpid's test_invalid_replication: an invalid C{qpid.replicate} is
        refused with 406 PRECONDITION_FAILED, on queues and exchanges, and
        by the admin command.
        """
        connection = self.connect()
        for declare in (
            lambda channel: self.declare(channel, self.name("q"), "XXinvalidXX"),
            lambda channel: self.declareExchange(channel, self.name("x"), "fanout", "XXinvalidXX"),
        ):
            with self.assertRaises(ChannelClosedByBroker) as caught:
                declare(connection.channel())
            self.assertEqual(caught.exception.reply_code, 406)
            self.assertIn("XXinvalidXX", caught.exception.reply_text)
        self.assertFalse(self.exists("queue", self.name("q"), connection))
        with self.assertRaises(RemoteAMPError) as refused:
            self.cluster.addObject(
                self.primary, "queue", {"name": self.name("q"), "replicate": "XXinvalidXX"}
            )
        self.assertEqual(refused.exception.code, "REFUSED")

    def test_exclusiveQueue(self) -> None:
        """
        Qpid's test_exclusive_queue, in AMQP 0-9-1 terms. A queue with an
        exclusive consumer is replicated like any other (a second consumer
        is refused; the message the exclusive consumer holds is on the
        backup and comes back redelivered after failover). A queue declared
        exclusive dies with its connection, so it is not replicated at all.
        """
        [backup] = self.backups
        connection = self.connect()
        channel = connection.channel()
        channel.basic_qos(prefetch_count=10)
        queue = self.declare(channel, self.name("exclusiveConsumer"))
        held: list[bytes] = []
        channel.basic_consume(queue, lambda c, m, p, body: held.append(body), exclusive=True)
        with self.assertRaises(ChannelClosedByBroker) as caught:
            self.connect().channel().basic_consume(queue, lambda *a: None)
        self.assertEqual(caught.exception.reply_code, 403)
        publisher = self.channel()
        self.publish(publisher, queue, queue)
        deadline = time.monotonic() + WAIT
        while not held and time.monotonic() < deadline:
            connection.process_data_events(time_limit=0.1)
        self.assertEqual(held, [queue.encode()])
        exclusive = self.declare(publisher, self.name("exclusiveQueue"), exclusive=True)
        self.sync(publisher)
        self.assertNotIn(exclusive, self.objects(backup, "queues"))
        self.waitForQueue(backup, queue, 1)
        self.failover()
        [(body, redelivered, _)] = self.drain(self.channel(), queue)
        self.assertEqual((body, redelivered), (queue.encode(), True))
        self.assertFalse(self.exists("queue", exclusive))

    def test_autoDeleteExclusive(self) -> None:
        """
        Qpid's test_auto_delete_exclusive: exclusive queues (auto-delete or
        not; in AMQP 0-9-1 both die with their connection) are not
        replicated; auto-delete and plain queues are; and replication does
        not keep an auto-delete queue alive: when its consumer goes, it
        goes from the backup too.
        """
        [backup] = self.backups
        connection = self.connect()
        channel = connection.channel()
        exad = self.declare(channel, self.name("exad"), exclusive=True, auto_delete=True)
        ex = self.declare(channel, self.name("ex"), exclusive=True)
        ad = self.declare(channel, self.name("ad"), auto_delete=True)
        tag = channel.basic_consume(ad, lambda *a: None)
        plain = self.declare(channel, self.name("q"))
        self.waitForQueue(backup, plain)
        queues = self.objects(backup, "queues")
        self.assertNotIn(exad, queues)
        self.assertNotIn(ex, queues)
        self.assertIn(ad, queues)
        channel.basic_cancel(tag)
        self.assertFalse(self.exists("queue", ad, connection))
        self.waitNoQueue(backup, ad)

    def test_alternateExchange(self) -> None:
        """
        Qpid's test_alternate_exchange: an exchange's alternate exchange and
        a queue's (dead-lettering of rejected messages) work on the primary,
        on the promoted backup, and on a broker that joined later and was
        promoted in turn.
        """
        channel = self.channel()
        altex = self.declareExchange(channel, self.name("altex"), "fanout")
        altq = self.declare(channel, self.name("altq"))
        channel.queue_bind(altq, altex)
        ex = self.declareExchange(channel, self.name("ex"), "direct", arguments={"alternate-exchange": altex})
        queue = self.declare(channel, self.name("q"), arguments={"alternate-exchange": altex})
        many = [self.name(f"ex.{i}") for i in range(200)]
        for name in many:
            self.declareExchange(channel, name, "topic")

        def verify() -> None:
            """
            Both alternate exchanges work on the current primary.
            """
            channel = self.channel()
            self.publish(channel, "unmatched", "foo", exchange=ex)
            self.assertEqual(bodies(self.drain(channel, altq)), [b"foo"])
            self.publish(channel, queue, "bar")
            method, _, body = channel.basic_get(queue)
            self.assertEqual(body, b"bar")
            channel.basic_reject(method.delivery_tag, requeue=False)
            self.assertEqual(bodies(self.drain(channel, altq)), [b"bar"])

        verify()
        [backup] = self.backups
        self.sync(channel)
        self.failover()
        verify()
        # The old primary came back empty and caught up: promote it.
        [backup] = self.backups
        exchanges = self.objects(backup, "exchanges")
        self.assertTrue(set(many + [ex, altex]) <= set(exchanges))
        self.failover()
        verify()

    def test_autoDeleteClose(self) -> None:
        """
        Qpid's test_auto_delete_close: an auto-delete queue deleted on the
        primary when its consumer goes is deleted on the backup, and the
        messages its consumer rejected to the alternate exchange are on the
        backup's alternate queue.
        """
        [backup] = self.backups
        channel = self.channel()
        altex = self.declareExchange(channel, self.name("altex"), "fanout")
        altq = self.declare(channel, self.name("altq"))
        channel.queue_bind(altq, altex)
        connection = self.connect()
        consumerChannel = connection.channel()
        adq = self.declare(
            consumerChannel, self.name("adq1"), auto_delete=True,
            arguments={"alternate-exchange": altex},
        )  # fmt: skip
        received: list[Any] = []
        consumerChannel.basic_consume(adq, lambda c, method, p, body: received.append(method))
        for body in ["aa", "bb", "cc"]:
            self.publish(channel, adq, body)
        deadline = time.monotonic() + WAIT
        while len(received) < 3 and time.monotonic() < deadline:
            connection.process_data_events(time_limit=0.1)
        self.assertEqual(len(received), 3)
        self.waitForQueue(backup, adq, 3)
        for method in received:
            consumerChannel.basic_reject(method.delivery_tag, requeue=False)
        consumerChannel.close()
        self.assertFalse(self.exists("queue", adq))
        self.waitNoQueue(backup, adq)
        self.waitForQueue(backup, altq, 3)
        self.failover()
        self.assertEqual(bodies(self.drain(self.channel(), altq)), [b"aa", b"bb", b"cc"])

    def test_expired(self) -> None:
        """
        Qpid's test_expired: messages with a time to live, expiring while a
        backup catches up, break nothing; and none is delivered after a
        failover once it has expired, whether the primary expired it first
        or the promoted backup must.
        """
        [backup] = self.backups
        channel = self.channel()
        race = self.declare(channel, self.name("race"))
        for i in range(100):
            self.publish(channel, race, str(i), expiration="1")
        self.cluster.kill(backup)
        self.cluster.startBroker(backup)
        for i in range(100):
            self.publish(channel, race, str(i), expiration="1")
        self.cluster.waitForRole(backup, "ready", WAIT)

        queue = self.declare(channel, self.name("ttl"))
        for i in range(5):
            self.publish(channel, queue, f"long{i}", expiration="1500")
        longPublished = time.monotonic()
        for i in range(5):
            self.publish(channel, queue, f"short{i}", expiration="500")
            self.publish(channel, queue, f"keep{i}")
        # The short ones must expire before the last long one does.
        self.assertLess(
            time.monotonic() - longPublished, 0.8, "publishing took too long for the test"
        )
        # Confirmed: the backup has them (unless the primary expired some).
        self.failover(restart=False)
        channel = self.channel()

        def count() -> int:
            """
            The queue's message count on the new primary.
            """
            return int(channel.queue_declare(queue, passive=True).method.message_count)

        # The new primary expires the long ones at the head, then the first
        # short one behind them (a queue expires its heads only): once they
        # are gone, every short one has expired.
        self.waitUntil(self.primary, lambda: count() == 9, "the long TTL messages to expire", 10)
        self.assertEqual(
            bodies(self.drain(channel, queue)), [f"keep{i}".encode() for i in range(5)]
        )
        self.assertEqual(self.drain(channel, race), [])


class CatchupTests(ClusterTestCase):
    """
    Tests with three brokers: backups that start late, follow a new
    primary, or hold messages a consumer has acquired.
    """

    size = 3

    def test_sync(self) -> None:
        """
        Qpid's test_sync: backups started while messages are being
        published get every message.
        """
        first, second = self.backups
        self.cluster.kill(first)
        self.cluster.kill(second)
        channel = self.channel()
        queue = self.declare(channel, self.name("q"))
        sent = 0

        def send(count: int) -> None:
            """
            Publish C{count} more numbered messages.
            """
            nonlocal sent
            for _ in range(count):
                self.publish(channel, queue, str(sent))
                sent += 1

        send(10)
        for backup in (first, second):
            self.cluster.startBroker(backup)
            # Keep publishing while it joins and catches up.
            while self.cluster.role(backup) != "ready":
                send(20)
                if sent > 20000:
                    self.fail(f"broker {backup} never became ready")
            send(10)
        expected = [str(i).encode() for i in range(sent)]
        self.waitForQueue(first, queue, sent)
        self.waitForQueue(second, queue, sent)
        self.failover(first, restart=False)
        self.assertEqual(bodies(self.browse(queue)), expected)
        self.cluster.waitForBackups(first, 1, WAIT)
        self.failover(second, restart=False)
        self.assertEqual(bodies(self.drain(self.channel(), queue)), expected)

    def test_sendReceive(self) -> None:
        """
        Qpid's test_send_receive: 1000 numbered messages sent, 990 received;
        both backups hold exactly the last 10.
        """
        first, second = self.backups
        channel = self.channel()
        queue = self.declare(channel, self.name("q"))
        for sn in range(1, 1001):
            self.publish(channel, queue, "x", headers={"sn": sn})
        received: list[int] = []

        def take(c: BlockingChannel, method: Any, properties: BasicProperties, body: bytes) -> None:
            """
            pika's on_message_callback: record the number, acknowledge, stop at 990.
            """
            received.append(properties.headers["sn"])
            c.basic_ack(method.delivery_tag)
            if len(received) == 990:
                c.stop_consuming()

        channel.basic_qos(prefetch_count=1)
        channel.basic_consume(queue, take)
        channel.start_consuming()
        self.assertEqual(received, list(range(1, 991)))
        channel.close()
        expected = list(range(991, 1001))
        self.waitForQueue(first, queue, 10)
        self.waitForQueue(second, queue, 10)

        def numbers(messages: list[Message]) -> list[int]:
            """
            The C{sn} headers of C{messages}.
            """
            return [properties.headers["sn"] for _, _, properties in messages]

        self.failover(first, restart=False)
        self.assertEqual(numbers(self.browse(queue)), expected)
        self.cluster.waitForBackups(first, 1, WAIT)
        self.failover(second, restart=False)
        self.assertEqual(numbers(self.drain(self.channel(), queue)), expected)

    def test_backupFailover(self) -> None:
        """
        Qpid's test_backup_failover: after a failover the other backup
        follows the new primary, including its dequeues.
        """
        first, second = self.backups
        channel = self.channel()
        queue = self.declare(channel, self.name("q"))
        self.publish(channel, queue, "a")
        self.failover(first, restart=False)
        self.cluster.waitForRole(second, "ready", WAIT)
        channel = self.channel()
        self.publish(channel, queue, "b")
        self.waitForQueue(second, queue, 2)
        method, _, body = channel.basic_get(queue)
        self.assertEqual(body, b"a")
        channel.basic_ack(method.delivery_tag)
        self.waitForQueue(second, queue, 1)
        self.failover(second, restart=False)
        self.assertEqual(bodies(self.drain(self.channel(), queue)), [b"b"])

    def test_backupAcquired(self) -> None:
        """
        Qpid's test_backup_acquired: a message a consumer holds unacknowledged
        is on the backups, for plain, ring, priority, fairshare and LVQ
        queues, also on a backup that caught up after it was acquired; after
        a failover it is delivered again, marked redelivered.
        """
        first, late = self.backups
        self.cluster.kill(late)
        tests: list[tuple[str, dict[str, Any], list[int]]] = [
            ("plain", {}, list(range(10))),
            ("ring", {"qpid.policy_type": "ring", "qpid.max_count": 5}, list(range(5, 10))),
            ("priority", {"qpid.priorities": 10}, list(range(10))),
            ("fairshare", {"qpid.priorities": 10, "qpid.fairshare": 5}, list(range(10))),
            ("lvq", {"qpid.last_value_queue_key": "lvq-key"}, [9]),
        ]
        connection = self.connect()
        channel = connection.channel()
        channel.confirm_delivery()
        for label, arguments, _ in tests:
            queue = self.declare(channel, self.name(label), arguments=arguments)
            for i in range(10):
                self.publish(channel, queue, str(i), headers={"lvq-key": "k"})
            method, _, body = channel.basic_get(queue)
            self.assertIsNotNone(method)
        self.cluster.startBroker(late)
        self.cluster.waitForRole(late, "ready", WAIT)
        for label, _, expected in tests:
            for backup in (first, late):
                self.waitForQueue(backup, self.name(label), len(expected))

        def check(messages: list[Message], expected: list[int], label: str) -> None:
            """
            C{messages} are C{expected}, only the first redelivered.
            """
            self.assertEqual(bodies(messages), [str(i).encode() for i in expected], label)
            self.assertEqual(
                [redelivered for _, redelivered, _ in messages],
                [True] + [False] * (len(expected) - 1),
                label,
            )

        self.failover(first, restart=False)
        for label, _, expected in tests:
            check(self.browse(self.name(label)), expected, label)
        self.cluster.waitForBackups(first, 1, WAIT)
        self.failover(late, restart=False)
        channel = self.channel()
        for label, _, expected in tests:
            messages = self.drain(channel, self.name(label))
            self.assertEqual(bodies(messages), [str(i).encode() for i in expected], label)
            self.assertTrue(all(redelivered for _, redelivered, _ in messages[:1]), label)

    def test_brokerInfo(self) -> None:
        """
        Qpid's test_broker_info: every broker's Query agrees on the brokers
        list and the epoch; the ids are distinct, the primary lists every
        backup as ready, each backup names the primary; a restarted backup
        keeps its id and is listed again.
        """
        states = [self.cluster.query(index) for index in range(len(self.cluster))]
        self.assertEqual(len({state["brokers"] for state in states}), 1)
        self.assertEqual(len({state["epoch"] for state in states}), 1)
        ids = [state["brokerId"] for state in states]
        self.assertEqual(len(set(ids)), 3)
        primary = states[self.primary]
        self.assertEqual(primary["role"], "active")
        self.assertEqual(
            sorted(backup["id"] for backup in primary["backups"] if backup["ready"]),
            sorted(ids[index] for index in self.backups),
        )
        for index in self.backups:
            self.assertEqual(states[index]["role"], "ready")
            self.assertTrue(states[index]["primary"])
        restarted = self.backups[0]
        self.cluster.restart(restarted)
        self.cluster.waitForRole(restarted, "ready", WAIT)
        self.assertEqual(self.cluster.query(restarted)["brokerId"], ids[restarted])
        self.cluster.waitForBackups(self.primary, 2, WAIT)

    def test_missedRecreate(self) -> None:
        """
        Qpid's test_missed_recreate: a queue and an exchange deleted and
        recreated under the same names while a backup was cut off: when it
        catches up again, it drops the old queue's messages and the old
        exchange's binding. (The backup is paused with SIGSTOP until the
        primary drops it, not restarted: a restarted broker holds nothing,
        there being no store yet.)
        """
        first, late = self.backups
        lateId = self.cluster.query(late)["brokerId"]
        channel = self.channel()
        queue = self.declare(channel, self.name("qq"))
        for i in range(3):
            self.publish(channel, queue, str(i))
        exchange = self.declareExchange(channel, self.name("xx"), "fanout")
        bound = self.declare(channel, self.name("xxq"))
        channel.queue_bind(bound, exchange, "xxq")
        self.waitForQueue(late, queue, 3)
        self.waitForQueue(late, bound)
        self.assertIn((exchange, bound, "xxq"), self.bindings(late))

        def backupIds() -> set[str]:
            """
            The ids of the backups the primary has now.
            """
            return {backup["id"] for backup in self.cluster.query(self.primary)["backups"]}

        self.cluster.pause(late)
        try:
            self.waitUntil(self.primary, lambda: lateId not in backupIds(), "the paused backup dropped")
            channel.queue_delete(queue)
            self.declare(channel, queue)
            self.publish(channel, queue, "foo")
            channel.exchange_delete(exchange)
            self.declareExchange(channel, exchange, "fanout")
        finally:
            self.cluster.resume(late)
        self.cluster.waitForBackups(self.primary, 2, WAIT)
        self.sync(channel)
        self.assertEqual(self.objects(late, "queues")[queue]["messages"], 1)
        self.assertEqual(self.objects(late, "exchanges")[exchange]["bindings"], 0)
        self.assertNotIn((exchange, bound, "xxq"), self.bindings(late))
        self.failover(late, restart=False)
        self.assertEqual(bodies(self.drain(self.channel(), queue)), [b"foo"])
        channel = self.channel()
        self.publish(channel, "", "new", exchange=exchange)
        self.assertEqual(self.drain(channel, bound), [])

    def test_autoDeleteFailover(self) -> None:
        """
        Qpid's test_auto_delete_failover, in AMQP 0-9-1 terms: an
        auto-delete queue deleted on the primary goes from the backups; one
        whose consumers were on the failed primary is deleted by the new
        primary (its consumers will never come back); one that never had a
        consumer stays until a consumer comes and goes.
        """
        connection = self.connect()
        channel = connection.channel()
        queues = [self.name(f"q{i}") for i in range(1, 6)]
        channels: list[BlockingChannel] = []
        for queue in queues:
            self.declare(channel, queue, auto_delete=True)
        for queue in queues[:4]:
            consumer = connection.channel()
            consumer.basic_consume(queue, lambda *a: None)
            channels.append(consumer)
        channels[3].close()
        self.assertFalse(self.exists("queue", queues[3]))
        for backup in self.backups:
            self.waitNoQueue(backup, queues[3])
            self.waitForQueue(backup, queues[2])
        newPrimary = self.backups[1]
        self.failover(newPrimary)
        for index in range(len(self.cluster)):
            for queue in queues[:4]:
                self.waitNoQueue(index, queue)
            self.waitForQueue(index, queues[4])
        channel = self.channel()
        tag = channel.basic_consume(queues[4], lambda *a: None)
        channel.basic_cancel(tag)
        self.assertFalse(self.exists("queue", queues[4]))


class OwnClusterTests(ClusterTestCase):
    """
    Tests that need a cluster of their own: an empty one, one set up in a
    particular way, or one with other options.
    """

    shareCluster = False
    size = 0

    def setUp(self) -> None:
        """
        Start nothing: each test builds its own cluster.
        """
        self.cluster = Cluster(0)
        self.addCleanup(self.cluster.stop)
        self.primary = 0
        self._names = 0
        self.armWatchdog()

    def use(self, cluster: Cluster, primary: int = 0) -> None:
        """
        Make C{cluster} the test's cluster (for the helpers) and check its
        brokers' logs at the end.
        """
        self.cluster = cluster
        self.primary = primary
        for broker in cluster.brokers:
            self.checkLog(broker)

    def test_emptyBackupFailover(self) -> None:
        """
        Qpid's test_empty_backup_failover: a new primary with no queues at
        all becomes active, and the other backup follows it.
        """
        self.use(self.newCluster(3, ["--ha-backup-timeout", "5"]))
        self.failover(1, restart=False)
        self.cluster.waitForRole(2, "ready", WAIT)
        self.assertEqual(self.cluster.query(1)["role"], "active")

    def test_deleteMissingResponse(self) -> None:
        """
        Qpid's test_delete_missing_response: a backup deletes the queues and
        exchanges it holds that the primary does not have, and the messages
        the primary lacks. Broker 1 is cut off (paused until the primary
        drops it) while broker 0 declares q2 and e2 and publishes to q1;
        then broker 0 dies and broker 1, which is behind, is promoted (it
        refuses unless forced): broker 2 must drop q2, e2 and the newer
        message of q1.
        """
        cluster = self.newCluster(3, ["--ha-replicate", "all", "--ha-backup-timeout", "2"])
        self.use(cluster)
        behindId = cluster.query(1)["brokerId"]
        channel = self.channel()
        q1 = self.declare(channel, self.name("q1"))
        self.publish(channel, q1, "old")
        e1 = self.declareExchange(channel, self.name("e1"), "fanout")
        channel.queue_bind(q1, e1, "")
        self.sync(channel)

        def backupIds() -> set[str]:
            """
            The ids of the backups the primary has now.
            """
            return {backup["id"] for backup in cluster.query(0)["backups"]}

        cluster.pause(1)
        try:
            self.waitUntil(0, lambda: behindId not in backupIds(), "broker 1 dropped")
            q2 = self.declare(channel, self.name("q2"))
            self.publish(channel, q2, "lost")
            e2 = self.declareExchange(channel, self.name("e2"), "fanout")
            channel.queue_bind(q2, e2, "")
            channel.queue_bind(q2, e1, "")
            self.publish(channel, q1, "new")
            self.sync(channel, [2])
            self.assertEqual(self.objects(2, "queues")[q1]["messages"], 2)
            cluster.kill(0)
        finally:
            cluster.resume(1)
        cluster.waitForRole(1, "joining", WAIT)
        # Broker 2 is ahead, so a promotion of broker 1 must be forced.
        with self.assertRaises(RemoteAMPError):
            cluster.promote(1)
        cluster.promote(1, force=True)
        self.primary = 1
        cluster.waitForRole(1, "active", WAIT)
        cluster.waitForRole(2, "ready", WAIT)
        cluster.waitForAMQP(1, WAIT)
        self.sync(self.channel(), [2])
        queues = self.objects(2, "queues")
        exchanges = self.objects(2, "exchanges")
        self.assertEqual(queues[q1]["messages"], 1)
        self.assertNotIn(q2, queues)
        self.assertIn(e1, exchanges)
        self.assertNotIn(e2, exchanges)
        self.assertEqual(self.bindings(2), [(e1, q1, "")])
        self.failover(2, restart=False)
        channel = self.channel()
        self.assertEqual(bodies(self.drain(channel, q1)), [b"old"])
        self.assertFalse(self.exists("queue", q2))
        self.assertFalse(self.exists("exchange", e2))

    def test_replicateDefault(self) -> None:
        """
        Qpid's test_replicate_default: without C{--ha-replicate}, or with
        C{--ha-replicate none}, a queue declared without C{qpid.replicate}
        is not replicated; with C{all} it is.
        """
        for arguments, replicated in [([], False), (["--ha-replicate", "none"], False),
                                      (["--ha-replicate", "all"], True)]:  # fmt: skip
            cluster = self.newCluster(2, arguments)
            self.use(cluster)
            self.assertEqual(
                cluster.query(1)["replicateDefault"], "all" if replicated else "none"
            )
            channel = self.channel()
            queue = self.declare(channel, self.name("q"))
            self.sync(channel)
            self.assertEqual(queue in self.objects(1, "queues"), replicated, arguments)
            cluster.stop()

    def test_auth(self) -> None:
        """
        Qpid's test_auth: with C{--ha-username/--ha-password} the brokers
        still replicate to each other; that user cannot log in over AMQP;
        the AMP port refuses commands before a login with those
        credentials, and a login with others.
        """
        cluster = self.newCluster(
            2, ["--ha-replicate", "all"], username="zag", password="zagpass"
        )
        self.use(cluster)
        channel = self.channel()
        queue = self.declare(channel, self.name("q"))
        exchange = self.declareExchange(channel, self.name("ex"), "fanout")
        channel.queue_bind(queue, exchange)
        self.publish(channel, "", "foo", exchange=exchange)
        self.waitForQueue(1, queue, 1)

        with self.assertRaises(AMQPError):
            pika.BlockingConnection(
                cluster.amqpParameters(0, credentials=pika.PlainCredentials("zag", "zagpass"))
            )
        for index in (0, 1):
            with self.assertRaises(RemoteAMPError) as caught:
                callAMP(cluster.brokers[index].ampPort, Query)
            self.assertEqual(caught.exception.code, "NOT_AUTHENTICATED")
            with BlockingAMP(cluster.brokers[index].ampPort) as client:
                with self.assertRaises(RemoteAMPError) as caught:
                    client.login(Credentials.fromPassword("zag", "wrong"))
                self.assertEqual(caught.exception.code, "NOT_AUTHENTICATED")
                with self.assertRaises(RemoteAMPError):
                    client.call(Query)

        self.failover(1)
        channel = self.channel()
        self.publish(channel, "", "bar", exchange=exchange)
        self.assertEqual(bodies(self.drain(channel, queue)), [b"foo", b"bar"])
