"""
Crash tests of the durable store (issue 5) with real C{twistd qha}
processes: SIGKILL during confirmed persistent publishing, then a restart
on the same data directory, standalone and in a cluster (a failover, then a
total shutdown); and a damaged journal that the broker refuses, then
starts on with C{--store-recover}.

The publisher is a raw AMQP client (L{WindowedPublisher}) that keeps a
window of unconfirmed publishes in flight, so the kill always lands on
publishes that were sent and not confirmed, and many confirms share each
flush. What must hold after the restart: every confirmed message is there,
in order; what is there of the unconfirmed ones is the next part of the
stream (never a gap, never a duplicate); nothing acknowledged before the
kill comes back, and the messages held unacknowledged at the kill come
back first, marked redelivered.

Every wait is bounded and nothing sleeps: reads have timeouts, and a
watchdog kills the brokers if a test runs too long.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any

import pika
from twisted.trial.unittest import SynchronousTestCase

from qha.ha.commands import Hello
from qha.store.journal import MAGIC
from qha.test.integration.brokerprocess import CHECKOUT, armWatchdog, failOnTraceback, quietLoggers, runBroker
from qha.test.integration.clients import WindowedPublisher
from qha.test.integration.cluster import HOST, Cluster, ClusterBroker, RemoteAMPError, freePort, startCluster

PERSISTENT = pika.BasicProperties(delivery_mode=2)
"""
The properties of a persistent message.
"""

_RECOVERED = re.compile(r"recovered (\d+) queues and (\d+) messages from (\S+) in ([0-9.]+)s")


class CrashTestCase(SynchronousTestCase):
    """
    The base of the crash tests: a watchdog, quiet client loggers, brokers
    that are always stopped, and the checks on what came back.

    @cvar watchdogTimeout: the most seconds one test may take.
    """

    watchdogTimeout = 45.0

    def setUp(self) -> None:
        """
        Arm the watchdog and quiet pika.
        """
        self.brokers: list[ClusterBroker] = []
        self.clusters: list[Cluster] = []
        armWatchdog(self, self.watchdogTimeout, self._watchdog, lambda: "the watchdog killed the brokers")
        quietLoggers(self, "pika")

    def _watchdog(self) -> None:
        """
        In the watchdog's thread: the test took too long; kill every broker
        so that every blocked call fails.
        """
        for broker in self.brokers:
            broker.kill()
        for cluster in self.clusters:
            cluster.stop()

    def dataDirectory(self) -> str:
        """
        A data directory for this test, removed at the end.
        """
        directory = tempfile.mkdtemp(prefix="qha-store-crash-")
        self.addCleanup(shutil.rmtree, directory, True)
        return directory

    def standalone(self, directory: str, *arguments: str) -> ClusterBroker:
        """
        A standalone broker on fixed free ports with C{directory} as its
        data directory, so that it can be restarted on the same store;
        killed at the end of the test.
        """
        ampPort = freePort()
        broker = ClusterBroker(
            freePort(),
            ampPort,
            directory,
            ["--ha-port", f"tcp:{ampPort}:interface={HOST}", "--data-dir", directory, *arguments],
        )
        self.brokers.append(broker)
        self.addCleanup(broker.kill)
        return broker

    def startStandalone(self, broker: ClusterBroker) -> None:
        """
        Start C{broker} and wait until it listens for AMQP clients.
        """
        broker.start()
        deadline = time.monotonic() + 20
        while not broker.amqpListening:
            left = deadline - time.monotonic()
            if left <= 0:
                self.fail(f"the broker did not listen for AMQP:\n{broker.output(40)}")
            broker.waitForOutput(left)
        failOnTraceback(self, broker)

    def recoveredLine(self, broker: ClusterBroker) -> tuple[int, int, float]:
        """
        The queues, messages and seconds of the broker's last C{recovered
        ...} line.
        """
        for line in reversed(broker.output(5000).splitlines()):
            match = _RECOVERED.search(line)
            if match is not None:
                return int(match.group(1)), int(match.group(2)), float(match.group(4))
        self.fail(f"no recovery line:\n{broker.output(40)}")

    def connect(self, port: int) -> pika.BlockingConnection:
        """
        A pika connection to C{port}, closed at the end of the test.
        """
        connection = pika.BlockingConnection(
            pika.ConnectionParameters(
                HOST, port, connection_attempts=1, socket_timeout=5, stack_timeout=10
            )
        )
        self.addCleanup(self._closeQuietly, connection)
        return connection

    @staticmethod
    def _closeQuietly(connection: pika.BlockingConnection) -> None:
        """
        Close C{connection} if it is open and its broker still there.
        """
        if connection.is_open:
            try:
                connection.close()
            except pika.exceptions.AMQPError:
                pass

    def drain(self, port: int, queue: str, ack: bool = True) -> list[tuple[bytes, bool]]:
        """
        Every ready message of C{queue}, with its redelivered flag, taken
        with basic.get; acknowledged, or (C{ack} false) given back when the
        connection closes.
        """
        connection = self.connect(port)
        channel = connection.channel()
        taken: list[tuple[bytes, bool]] = []
        while True:
            method, _, body = channel.basic_get(queue, auto_ack=ack)
            if method is None:
                break
            taken.append((body, bool(method.redelivered)))
        connection.close()
        return taken

    def assertStream(self, got: list[bytes], publisher: WindowedPublisher, what: str) -> int:
        """
        C{got} is the start of what C{publisher} sent, at least every
        confirmed message: in order, no gap, no duplicate. Return how many.
        """
        self.assertGreater(publisher.confirmed, 0)
        self.assertGreaterEqual(
            len(got), publisher.confirmed, f"{what}: confirmed messages are missing"
        )
        self.assertEqual(got, publisher.sent[: len(got)], f"{what}: not the stream in order")
        return len(got)


class StandaloneCrashTests(CrashTestCase):
    """
    One broker, killed during confirmed persistent publishing and started
    again on the same data directory.
    """

    def test_killDuringConfirmedPublishing(self) -> None:
        """
        SIGKILL while a publisher keeps 200 persistent publishes in flight:
        after the restart every confirmed message is there in order,
        nothing acknowledged before the kill came back, the messages held
        unacknowledged came back first and redelivered, and transient
        messages and queues are gone.
        """
        directory = self.dataDirectory()
        broker = self.standalone(directory)
        self.startStandalone(broker)
        connection = self.connect(broker.port)
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare("crash", durable=True)
        channel.queue_declare("transient")
        before = [b"a-%d" % index for index in range(100)]
        for body in before:
            channel.basic_publish("", "crash", body, PERSISTENT)
        for index in range(10):
            channel.basic_publish("", "crash", b"transient", pika.BasicProperties(delivery_mode=1))
            channel.basic_publish("", "transient", b"persistent on transient", PERSISTENT)
        consumer = self.connect(broker.port).channel()
        taken = [consumer.basic_get("crash", auto_ack=False) for _ in range(40)]
        self.assertEqual([body for _, _, body in taken], before[:40])
        # Acknowledge the first 30 and hold the next 10 unacknowledged; a
        # round trip after the acks makes sure the broker has them.
        for method, _, _ in taken[:30]:
            consumer.basic_ack(method.delivery_tag)
        consumer.queue_declare("crash", passive=True)
        publisher = WindowedPublisher(broker.port)
        self.addCleanup(publisher.close)
        publisher.publish("crash", "b", until=3000, then=broker.kill)
        self.assertGreater(len(publisher.sent), publisher.confirmed)

        self.startStandalone(broker)
        queues, messages, seconds = self.recoveredLine(broker)
        self.assertEqual(queues, 1)
        got = self.drain(broker.port, "crash")
        self.assertEqual(messages, len(got))
        self.assertEqual(got[:10], [(body, True) for body in before[30:40]])
        self.assertEqual(got[10:70], [(body, False) for body in before[40:]])
        stream = got[70:]
        self.assertEqual({flag for _, flag in stream}, {False})
        self.assertStream([body for body, _ in stream], publisher, "after the restart")
        channel = self.connect(broker.port).channel()
        with self.assertRaises(pika.exceptions.ChannelClosedByBroker):
            channel.queue_declare("transient", passive=True)


class SegmentBacklogCrashTests(CrashTestCase):
    """
    A durable queue's backlog paged in segments (issue 15), killed during
    confirmed persistent publishing: the journal has every message, the
    page files are scratch.
    """

    def test_killWithSegmentBacklog(self) -> None:
        """
        With C{--memory-budget 1MiB}, 12,000 confirmed persistent messages
        of 512 bytes to a durable queue go to segments in the page files; SIGKILL with
        200 more in flight; after the restart the backlog is paged again,
        and every confirmed message is there, in order.
        """
        directory = self.dataDirectory()
        broker = self.standalone(directory, "--memory-budget", "1MiB")
        self.startStandalone(broker)
        channel = self.connect(broker.port).channel()
        channel.queue_declare("paged", durable=True)
        publisher = WindowedPublisher(broker.port)
        self.addCleanup(publisher.close)
        pages = os.path.join(directory, "paging")

        def kill() -> None:
            # The backlog is in the page files when the broker dies.
            self.assertGreater(_bytesIn(pages), 0)
            broker.kill()

        publisher.publish("paged", "p", until=12000, size=512, then=kill)
        self.startStandalone(broker)
        queues, messages, _ = self.recoveredLine(broker)
        self.assertEqual(queues, 1)
        self.assertGreaterEqual(messages, 12000)
        # Recovery paged the backlog again, segments and all.
        self.assertGreater(_bytesIn(pages), 0)
        got = self.drain(broker.port, "paged")
        self.assertEqual(len(got), messages)
        self.assertEqual({flag for _, flag in got}, {False})
        self.assertStream([body for body, _ in got], publisher, "after the restart")


def _bytesIn(directory: str) -> int:
    """
    The bytes of the files in C{directory} (none if it is not there).
    """
    if not os.path.isdir(directory):
        return 0
    return sum(os.path.getsize(os.path.join(directory, name)) for name in os.listdir(directory))


class DamagedStoreTests(CrashTestCase):
    """
    A journal damaged before its last record: the broker refuses to start,
    in one line; with C{--store-recover} it starts and keeps a copy.
    """

    def test_refuseThenRecover(self) -> None:
        """
        The broker exits with status 1 and one line that names the file and
        the byte and suggests C{--store-recover}; the file is unchanged.
        With C{--store-recover} it starts from the last good record and
        keeps the damaged file as C{journal.damaged-TIME}.
        """
        directory = self.dataDirectory()
        broker = self.standalone(directory)
        self.startStandalone(broker)
        connection = self.connect(broker.port)
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare("kept", durable=True)
        for index in range(5):
            # One confirm at a time: one record each.
            channel.basic_publish("", "kept", b"m%d" % index, PERSISTENT)
        connection.close()
        broker.kill()
        path = os.path.join(directory, "journal")
        with open(path, "rb") as f:
            data = bytearray(f.read())
        offsets = []
        offset = len(MAGIC)
        while offset < len(data):
            (length,) = struct.unpack_from(">I", data, offset)
            offsets.append((offset, offset + 8 + length))
            offset += 8 + length
        self.assertGreaterEqual(len(offsets), 6)
        # Damage the record of the third message (the queue's is first).
        start, end = offsets[3]
        data[end - 1] ^= 0xFF
        with open(path, "wb") as f:
            f.write(data)

        refused = runBroker(f"tcp:{broker.port}:interface={HOST}", broker.arguments, timeout=20)
        self.assertEqual(refused.returncode, 1, refused)
        errors = [line for line in refused.stderr.decode().splitlines() if "error" in line]
        self.assertEqual(len(errors), 1, refused.stderr)
        self.assertIn(path, errors[0])
        self.assertIn(f"at byte {start}", errors[0])
        self.assertIn("--store-recover", errors[0])
        with open(path, "rb") as f:
            self.assertEqual(f.read(), bytes(data))

        recovering = self.standalone(directory, "--store-recover")
        self.startStandalone(recovering)
        copies = [name for name in os.listdir(directory) if name.startswith("journal.damaged-")]
        self.assertEqual(len(copies), 1)
        with open(os.path.join(directory, copies[0]), "rb") as f:
            self.assertEqual(f.read(), bytes(data))
        self.assertEqual(self.drain(recovering.port, "kept"), [(b"m0", False), (b"m1", False)])


class ClusterCrashTests(CrashTestCase):
    """
    Three brokers with a store each and C{--ha-replicate all}: the primary
    killed during confirmed publishing, a backup promoted; then every
    broker killed and the newest store's broker promoted.
    """

    watchdogTimeout = 60.0

    def hello(self, cluster: Cluster, index: int) -> tuple[int, int]:
        """
        The store epoch and position broker C{index} answers C{Hello} with.
        """
        answer = cluster.call(index, Hello, brokerId="store-crash-test", epoch=0, role="admin")
        return answer["storeEpoch"], answer["storePosition"]

    def storeInfo(self, cluster: Cluster) -> dict[str, Any]:
        """
        C{qha-admin store-info --json} over every broker's data directory,
        run as a command.
        """
        command = [sys.executable, "-m", "qha.admin.cli", "store-info", "--json"]
        for broker in cluster.brokers:
            command += ["--data-dir", broker.dataDirectory]
        done = subprocess.run(
            command,
            cwd=CHECKOUT,
            env=dict(os.environ, PYTHONPATH=CHECKOUT),
            capture_output=True,
            timeout=20,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        answer: dict[str, Any] = json.loads(done.stdout)
        return answer

    def test_failoverThenTotalShutdown(self) -> None:
        """
        Kill the primary during confirmed publishing; the backup with the
        newest store is promoted and has every confirmed message. The old
        primary rejoins with its store. Then one backup goes, more is
        published, and the rest are killed during publishing: store-info
        and the brokers' Hello answers agree on the newest store, promoting
        the older one is refused, and the newest has every confirmed
        message of both rounds, in order.
        """
        cluster = startCluster(
            self, 3, ["--ha-replicate", "all", "--ha-backup-timeout", "3"], heartbeat=0.5
        )
        self.clusters.append(cluster)
        for broker in cluster.brokers:
            failOnTraceback(self, broker)
        connection = self.connect(cluster.brokers[0].port)
        connection.channel().queue_declare("crash", durable=True)
        connection.close()

        first = WindowedPublisher(cluster.brokers[0].port)
        self.addCleanup(first.close)
        first.publish("crash", "b", until=1500, then=lambda: cluster.kill(0))
        for backup in (1, 2):
            cluster.waitFor(backup, lambda state: state["role"] != "ready", what="primary lost")
        positions = {index: self.hello(cluster, index) for index in (1, 2)}
        newest = max(positions, key=lambda index: positions[index])
        other = 3 - newest
        cluster.promote(newest)
        cluster.waitForRole(newest, "active")
        cluster.waitForAMQP(newest)
        got = [body for body, _ in self.drain(cluster.brokers[newest].port, "crash", ack=False)]
        self.assertStream(got, first, "after the failover")

        # The old primary comes back as a backup, keeping its store.
        cluster.startBroker(0)
        cluster.waitForRole(0, "ready")
        cluster.waitForRole(other, "ready")
        cluster.waitForBackups(newest, 2)
        # One backup goes: its store falls behind.
        cluster.kill(other)
        second = WindowedPublisher(cluster.brokers[newest].port)
        self.addCleanup(second.close)

        def totalShutdown() -> None:
            """
            Kill the primary and its one backup, publishes in flight.
            """
            cluster.kill(newest)
            cluster.kill(0)

        second.publish("crash", "c", until=1000, then=totalShutdown)
        info = self.storeInfo(cluster)
        byDirectory = {store["dataDir"]: store for store in info["stores"]}
        places = [
            (byDirectory[broker.dataDirectory]["epoch"], byDirectory[broker.dataDirectory]["position"])
            for broker in cluster.brokers
        ]
        self.assertNotIn(cluster.brokers[other].dataDirectory, info["newest"])
        best = cluster.brokers.index(
            next(broker for broker in cluster.brokers if broker.dataDirectory in info["newest"])
        )
        self.assertLess(places[other], places[best])

        cluster.start()
        self.assertEqual([self.hello(cluster, index) for index in range(3)], places)
        with self.assertRaises(RemoteAMPError) as refusal:
            cluster.promote(other)
        self.assertIn("newer", refusal.exception.description)
        cluster.promote(best)
        cluster.waitForRole(best, "active")
        cluster.waitForAMQP(best)
        got = [body for body, _ in self.drain(cluster.brokers[best].port, "crash")]
        firstRound = [body for body in got if body.startswith(b"b-")]
        secondRound = [body for body in got if body.startswith(b"c-")]
        self.assertEqual(got, firstRound + secondRound)
        self.assertStream(firstRound, first, "first round after the total shutdown")
        self.assertStream(secondRound, second, "second round after the total shutdown")
