"""
Failover with real C{twistd qha} processes (issue 4), after Qpid's
C{ha_tests.py}: failover_python, heartbeat_python, queue_hold,
expected_backup_timeout, join_ready_cluster, stalled_backup, fencing by
epoch (with and without C{--ha-min-backups}), and aio-pika's robust
connection.

Brokers are killed (SIGKILL), paused (SIGSTOP) and resumed (SIGCONT)
through L{qha.test.integration.cluster}. Every wait is bounded: a publish whose confirm
may be held runs in a thread joined with a timeout, and a watchdog kills
the brokers (which fails every blocked client call) if a test runs too
long.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Sequence

import aio_pika
import pika
from pika.exceptions import AMQPConnectionError, AMQPError
from twisted.trial.unittest import SynchronousTestCase

from qha.test.integration.brokerprocess import armWatchdog, failOnTraceback, quietLoggers, waitUntil
from qha.test.integration.clients import ThreadedPublisher, drain
from qha.test.integration.cluster import Cluster, RemoteAMPError, startCluster

ALL = {"qpid.replicate": "all"}
"""
The declare arguments of a queue whose messages are replicated.
"""

HEARTBEAT = 0.5
"""
The brokers' C{--ha-heartbeat}: a stalled peer is dropped after two.
"""


class FailoverTestCase(SynchronousTestCase):
    """
    The base of the failover tests: clusters stopped at the end of the
    test, a watchdog, and a check that no broker logged a traceback.

    @cvar watchdogTimeout: the most seconds one test may take.
    """

    watchdogTimeout = 40.0

    def setUp(self) -> None:
        """
        Arm the watchdog and quiet the clients' loggers.
        """
        self.clusters: list[Cluster] = []
        armWatchdog(self, self.watchdogTimeout, self._watchdog, lambda: "the watchdog killed the brokers")
        quietLoggers(self, "pika", "aiormq", "aio_pika")

    def _watchdog(self) -> None:
        """
        In the watchdog's thread: the test took too long; kill the brokers
        so that every blocked call fails.
        """
        for cluster in self.clusters:
            cluster.stop()

    def startCluster(
        self, size: int, arguments: Sequence[str] = (), primary: int | None = 0, **keywords: Any
    ) -> Cluster:
        """
        A cluster for this test (see L{startCluster}) with a fast heartbeat,
        whose brokers' logs are checked for tracebacks at the end.
        """
        keywords.setdefault("heartbeat", HEARTBEAT)
        cluster = startCluster(self, size, arguments, primary, **keywords)
        self.watch(cluster)
        return cluster

    def watch(self, cluster: Cluster) -> None:
        """
        Let the watchdog stop C{cluster}, and fail the test if one of its
        brokers logs a traceback from now on.
        """
        self.clusters.append(cluster)
        for broker in cluster.brokers:
            failOnTraceback(self, broker)

    def declare(self, cluster: Cluster, queue: str, bodies: Sequence[bytes] = ()) -> None:
        """
        Declare the replicated queue C{queue} on the primary and publish
        C{bodies} to it, each confirmed.
        """
        connection = cluster.connect()
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            channel.queue_declare(queue, arguments=ALL)
            for body in bodies:
                channel.basic_publish("", queue, body)
        finally:
            connection.close()

    def drain(self, connection: pika.BlockingConnection, queue: str) -> list[bytes]:
        """
        Take every ready message of C{queue} with basic.get and no-ack.
        """
        return drain(connection.channel(), queue)

    def messages(self, cluster: Cluster, index: int, queue: str) -> int | None:
        """
        How many ready messages broker C{index} (any role) holds on
        C{queue}, or L{None} if it has no such queue.
        """
        for row in cluster.listObjects(index, "queues"):
            if row["name"] == queue:
                return int(row["messages"])
        return None

    def waitUntil(self, cluster: Cluster, index: int, check: Any, what: str, timeout: float = 10.0) -> None:
        """
        Wait until C{check()} is true, for at most C{timeout} seconds,
        waiting for broker C{index} to log something between two tries.
        """
        broker = cluster.brokers[index]
        waitUntil(
            check, broker.waitForOutput, timeout, what, step=0.1, explain=lambda: f":\n{broker.output(40)}"
        )

    def assertRefusesAMQP(self, cluster: Cluster, index: int) -> float:
        """
        Broker C{index} refuses an AMQP client; return how long that took.
        """
        started = time.monotonic()
        with self.assertRaises(AMQPConnectionError):
            cluster.connect(index)
        return time.monotonic() - started


class FailoverTests(FailoverTestCase):
    """
    Clients find the primary by the address list, and find the new one
    after a failover.
    """

    def test_failoverPython(self) -> None:
        """
        Qpid's failover_python: a client given every broker's address lands
        on the primary (backups refuse it at once, admins are still
        answered); after the primary is killed and a backup promoted, the
        same address list lands on the new primary, which holds every
        confirmed message.
        """
        cluster = self.startCluster(3)
        for backup in (1, 2):
            self.assertLess(self.assertRefusesAMQP(cluster, backup), 1.0)
            self.assertEqual(cluster.ping(backup), "ready")
        connection = cluster.connect()
        self.assertEqual(connection._impl.params.port, cluster.brokers[0].port)
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare("failover", arguments=ALL)
        bodies = [b"message %d" % i for i in range(20)]
        for body in bodies:
            channel.basic_publish("", "failover", body)
        connection.close()

        cluster.kill(0)
        # The backups see the primary go and look for a new one.
        for backup in (1, 2):
            cluster.waitFor(backup, lambda state: state["role"] != "ready", what="primary lost")
        self.assertEqual(cluster.promote(1)["role"], "recovering")
        cluster.waitForRole(1, "active")
        cluster.waitForAMQP(1)
        connection = cluster.connect()
        self.addCleanup(connection.close)
        self.assertEqual(connection._impl.params.port, cluster.brokers[1].port)
        self.assertEqual(self.drain(connection, "failover"), bodies)
        cluster.waitForRole(2, "ready")
        self.assertLess(self.assertRefusesAMQP(cluster, 2), 1.0)

    def test_heartbeatPython(self) -> None:
        """
        Qpid's heartbeat_python: a client with a one-second heartbeat finds
        out that its broker stopped answering (SIGSTOP) instead of hanging:
        aio-pika (aiormq) closes the connection once nothing came for three
        heartbeat intervals (of two seconds each, heartbeat plus one).
        """
        cluster = self.startCluster(1)
        url = f"amqp://guest:guest@127.0.0.1:{cluster.brokers[0].port}/?heartbeat=1"

        async def run() -> float:
            """
            Connect, pause the broker, and time how long the client takes
            to notice.
            """
            connection = await aio_pika.connect(url, timeout=5)
            closed = asyncio.Event()
            connection.close_callbacks.add(lambda *args: closed.set())
            await connection.channel()
            cluster.pause(0)
            started = time.monotonic()
            await asyncio.wait_for(closed.wait(), 12)
            return time.monotonic() - started

        elapsed = asyncio.run(asyncio.wait_for(run(), 20))
        self.assertLess(elapsed, 9)


class RecoveryTests(FailoverTestCase):
    """
    A promoted broker recovers: it holds publisher confirms until the
    backups it knew are back, or until C{--ha-backup-timeout}.
    """

    def failOver(self, backupTimeout: float) -> Cluster:
        """
        A three-broker cluster whose primary (0) is killed, then backup 2
        (the dead primary cannot tell anyone that 2 went), and backup 1
        promoted: it recovers, waiting for 2.
        """
        cluster = self.startCluster(3, ["--ha-backup-timeout", str(backupTimeout)])
        self.declare(cluster, "hold", [b"before"])
        cluster.kill(0)
        cluster.kill(2)
        cluster.waitFor(1, lambda state: state["role"] == "joining", what="primary lost")
        self.assertEqual(cluster.promote(1)["role"], "recovering")
        cluster.waitForAMQP(1)
        return cluster

    def test_queueHold(self) -> None:
        """
        Qpid's queue_hold: the promoted broker accepts the publish but
        confirms it only once its expected backup is back (restarted, with
        its broker id) and caught up.
        """
        cluster = self.failOver(backupTimeout=30)
        publisher = ThreadedPublisher(cluster.amqpParams(), "hold", [b"held"])
        publisher.start()
        self.assertTrue(publisher.connected.wait(10))
        self.assertEqual(publisher.port, cluster.brokers[1].port)
        self.assertFalse(publisher.finished.wait(1.5), "the confirm was not held")
        self.assertEqual(cluster.role(1), "recovering")
        restarted = time.monotonic()
        cluster.restart(2)
        self.assertTrue(publisher.finished.wait(10), "the confirm never came")
        self.assertIsNone(publisher.error)
        [confirmed] = publisher.confirmedAt
        self.assertGreaterEqual(confirmed, restarted)
        self.assertEqual(cluster.role(1), "active")
        cluster.waitForRole(2, "ready")
        self.assertEqual(self.messages(cluster, 2, "hold"), 2)

    def test_expectedBackupTimeout(self) -> None:
        """
        Qpid's expected_backup_timeout: when the expected backup never
        comes back, the held confirm completes after
        C{--ha-backup-timeout} and the broker is active.
        """
        cluster = self.failOver(backupTimeout=2)
        promoted = time.monotonic()
        publisher = ThreadedPublisher(cluster.amqpParams(), "hold", [b"held"])
        publisher.start()
        self.assertTrue(publisher.finished.wait(10), "the confirm never came")
        self.assertIsNone(publisher.error)
        [confirmed] = publisher.confirmedAt
        self.assertGreaterEqual(confirmed - promoted, 1.0)
        self.assertEqual(cluster.role(1), "active")


class PromotionTests(FailoverTestCase):
    """
    Who may be promoted.
    """

    def test_joinReadyCluster(self) -> None:
        """
        Qpid's join_ready_cluster: a broker that joins while the primary is
        unresponsive (paused) and a backup is still ready refuses promotion,
        naming that backup; C{promote --force} promotes it anyway.
        """
        cluster = Cluster(3, heartbeat=5.0)
        self.addCleanup(cluster.stop)
        self.watch(cluster)
        cluster.start([0, 1])
        cluster.startPrimary(0)
        cluster.waitForRole(1, "ready")
        self.declare(cluster, "join", [b"m"])
        cluster.pause(0)
        cluster.startBroker(2)
        self.assertEqual(cluster.role(2), "joining")
        with self.assertRaises(RemoteAMPError) as refused:
            cluster.promote(2)
        self.assertEqual(refused.exception.code, "REFUSED")
        self.assertIn(f"127.0.0.1:{cluster.brokers[1].ampPort}", refused.exception.description)
        self.assertEqual(cluster.role(2), "joining")
        self.assertEqual(cluster.promote(2, force=True)["role"], "recovering")


class StalledBackupTests(FailoverTestCase):
    """
    Qpid's stalled_backup.
    """

    def test_stalledBackup(self) -> None:
        """
        A backup that stops (SIGSTOP) holds the primary's confirms for no
        more than about two heartbeats, then is dropped; once it runs again
        it catches up, including what it missed.
        """
        cluster = self.startCluster(2)
        self.declare(cluster, "stalled", [b"before"])
        cluster.pause(1)
        started = time.monotonic()
        publisher = ThreadedPublisher(cluster.amqpParams(), "stalled", [b"during"])
        publisher.start()
        self.assertTrue(publisher.finished.wait(10), "the confirm never came")
        self.assertIsNone(publisher.error)
        self.assertLess(publisher.confirmedAt[0] - started, 4 * HEARTBEAT + 1.0)
        state = cluster.query(0)
        self.assertEqual([backup for backup in state["backups"] if backup["ready"]], [])
        cluster.resume(1)
        cluster.waitForBackups(0, 1)
        cluster.waitForRole(1, "ready")
        self.assertEqual(self.messages(cluster, 1, "stalled"), 2)
        # And it holds confirms again.
        self.declare(cluster, "stalled", [b"after"])
        self.assertEqual(self.messages(cluster, 1, "stalled"), 3)


class FencingTests(FailoverTestCase):
    """
    An old primary that was paused while another was promoted cannot go on
    as a primary once it runs again.
    """

    def replace(self, cluster: Cluster) -> None:
        """
        Pause the primary (0), wait until both backups gave up on it,
        promote backup 1 and wait until 2 follows it.
        """
        cluster.pause(0)
        for backup in (1, 2):
            cluster.waitFor(backup, lambda state: state["role"] == "joining", what="primary lost")
        self.assertEqual(cluster.promote(1), {"role": "recovering", "epoch": 2})
        cluster.waitForRole(1, "active")
        cluster.waitForRole(2, "ready")

    def test_oldPrimaryStepsDown(self) -> None:
        """
        Resumed, the old primary learns of the newer epoch, steps down (it
        stops taking AMQP clients) and follows the new primary as a backup,
        dropping what the new primary does not have.
        """
        cluster = self.startCluster(3)
        self.declare(cluster, "fenced", [b"one"])
        self.replace(cluster)
        cluster.resume(0)
        state = cluster.waitFor(0, lambda state: state["role"] not in ("active", "recovering"), timeout=10, what="step down")
        self.assertIn(state["role"], ("joining", "catchup", "ready"))
        self.assertLess(self.assertRefusesAMQP(cluster, 0), 1.0)
        state = cluster.waitForRole(0, "ready")
        self.assertEqual((state["epoch"], state["primary"]), (2, f"127.0.0.1:{cluster.brokers[1].ampPort}"))
        connection = cluster.connect()
        self.addCleanup(connection.close)
        self.assertEqual(connection._impl.params.port, cluster.brokers[1].port)

    def test_minBackupsFencesOldPrimary(self) -> None:
        """
        With C{--ha-min-backups 1} in a three-broker cluster, a client that
        was connected to the old primary before it was paused publishes
        when it runs again: the old primary has no backup any more (they
        follow the new primary), so it never confirms; it steps down and
        closes the connection instead.
        """
        cluster = self.startCluster(3, ["--ha-min-backups", "1"])
        self.declare(cluster, "fenced", [b"confirmed"])
        parameters = [cluster.amqpParameters(0, heartbeat=0)]
        publisher = ThreadedPublisher(parameters, "fenced", [b"unconfirmable"], waitForGo=True)
        publisher.start()
        self.assertTrue(publisher.connected.wait(10))
        self.assertIsNone(publisher.error)
        self.replace(cluster)
        publisher.go.set()
        cluster.resume(0)
        cluster.waitFor(0, lambda state: state["role"] not in ("active", "recovering"), timeout=10, what="step down")
        self.assertTrue(publisher.finished.wait(10), "the publisher was never told")
        self.assertEqual(publisher.confirmedAt, [])
        self.assertIsInstance(publisher.error, AMQPError)
        self.assertEqual(self.messages(cluster, 1, "fenced"), 1)
        cluster.waitForRole(0, "ready")
        self.assertEqual(self.messages(cluster, 0, "fenced"), 1)


class AioPikaTests(FailoverTestCase):
    """
    aio-pika's C{connect_robust} takes one URL: it reconnects to that
    address only. It cannot move to another broker by itself; it recovers
    when its own address is the primary again.
    """

    def test_robustSameAddress(self) -> None:
        """
        A robust connection to the primary keeps retrying its one address
        while another broker is primary (it does not move there), and
        reconnects, with its channel and queue restored and no confirmed
        message lost, when that address is the primary again.
        """
        cluster = self.startCluster(2)
        url = f"amqp://guest:guest@127.0.0.1:{cluster.brokers[0].port}/"

        async def run() -> None:
            """
            The client's side, with the cluster driven from threads.
            """
            connection = await aio_pika.connect_robust(url, reconnect_interval=0.2, timeout=5)
            reconnected = asyncio.Event()
            connection.reconnect_callbacks.add(lambda *args: reconnected.set())
            try:
                channel = await connection.channel(publisher_confirms=True)
                queue = await channel.declare_queue("robust", arguments=ALL)
                await channel.default_exchange.publish(aio_pika.Message(b"confirmed"), "robust")
                await asyncio.to_thread(cluster.kill, 0)
                await asyncio.to_thread(cluster.waitForRole, 1, "joining")
                await asyncio.to_thread(cluster.promote, 1)
                await asyncio.to_thread(cluster.waitForRole, 1, "active")
                # Broker 1 serves clients now, but the connection only
                # knows broker 0's address.
                with self.assertRaises(asyncio.TimeoutError):
                    await asyncio.wait_for(reconnected.wait(), 1.5)
                # Broker 0 comes back, follows 1, and is made the primary
                # again when 1 dies.
                await asyncio.to_thread(cluster.restart, 0)
                await asyncio.to_thread(cluster.waitForRole, 0, "ready")
                await asyncio.to_thread(cluster.kill, 1)
                await asyncio.to_thread(cluster.waitForRole, 0, "joining")
                await asyncio.to_thread(cluster.promote, 0)
                await asyncio.wait_for(reconnected.wait(), 10)
                message = await queue.get(no_ack=True, timeout=5)
                self.assertEqual(message.body, b"confirmed")
                await channel.default_exchange.publish(aio_pika.Message(b"again"), "robust")
                message = await queue.get(no_ack=True, timeout=5)
                self.assertEqual(message.body, b"again")
            finally:
                await asyncio.wait_for(connection.close(), 5)

        asyncio.run(asyncio.wait_for(run(), 30))
