"""
The real C{qha-admin} management commands (L{qha.admin.manage}) in child
processes against two real standalone C{twistd qha} brokers, with pika as
the client: connections, consumers, purge, bind and unbind, close a
connection (pika sees 320 and the reason), definitions exported from one
broker and imported into the other, and C{--vhost} on a second vhost. The
unit tests are in L{qha.test.test_admin_manage}.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pika
from pika.adapters.blocking_connection import BlockingConnection
from pika.exceptions import ConnectionClosedByBroker
from twisted.trial.unittest import SynchronousTestCase

from qha.amqp.users import hashPassword
from qha.test.integration.brokerprocess import CHECKOUT, BrokerProcess
from qha.test.integration.cluster import freePort


class ManageEndToEndTests(SynchronousTestCase):
    """
    C{qha-admin} against real brokers, pika declaring and consuming.
    """

    def setUp(self) -> None:
        """
        Two standalone brokers (C{A}, C{B}), each with its AMP port on a
        free port, and a users file that lets guest into C{/} and C{a}.
        """
        directory = tempfile.mkdtemp(prefix="qha-admin-manage-")
        self.addCleanup(shutil.rmtree, directory, True)
        self.directory = directory
        users = os.path.join(directory, "users")
        with open(users, "w", encoding="utf-8") as f:
            f.write(
                f"guest:{hashPassword('guest', n=2**10)}\n"
                "permissions guest / .* .* .*\n"
                "permissions guest a .* .* .*\n"
            )
        self.brokers: list[tuple[BrokerProcess, str]] = []
        for _ in range(2):
            haPort = freePort()
            broker = BrokerProcess(
                ["--users", users, "--ha-port", f"tcp:{haPort}:interface=127.0.0.1"]
            )
            self.addCleanup(broker.stop)
            broker.start()
            self.brokers.append((broker, f"127.0.0.1:{haPort}"))

    def qhaAdmin(self, index: int, *argv: str) -> subprocess.CompletedProcess[str]:
        """
        Run C{python -m qha.admin.cli -b BROKER argv} against broker
        C{index}, for at most 30 seconds.
        """
        broker, address = self.brokers[index]
        environment = dict(os.environ)
        environment["PYTHONPATH"] = CHECKOUT + os.pathsep + environment.get("PYTHONPATH", "")
        environment["QHA_SECRET_FILE"] = broker.secretFile
        return subprocess.run(
            [sys.executable, "-m", "qha.admin.cli", "-b", address, *argv],
            capture_output=True,
            text=True,
            timeout=30,
            env=environment,
            cwd=CHECKOUT,
        )

    def ok(self, index: int, *argv: str) -> str:
        """
        Run C{qha-admin}, which must succeed; its output.
        """
        done = self.qhaAdmin(index, *argv)
        self.assertEqual((done.returncode, done.stderr), (0, ""), argv)
        return done.stdout

    def connect(self, index: int = 0, vhost: str = "/") -> BlockingConnection:
        """
        A pika connection to broker C{index}'s C{vhost} as guest.
        """
        broker, _ = self.brokers[index]
        connection = pika.BlockingConnection(
            pika.ConnectionParameters(
                "127.0.0.1", broker.port, virtual_host=vhost,
                credentials=pika.PlainCredentials("guest", "guest"),
            )
        )
        self.addCleanup(lambda: connection.close() if connection.is_open else None)
        return connection

    def depth(self, connection: BlockingConnection, queue: str) -> int:
        """
        How many ready messages C{queue} holds (passive declare).
        """
        channel = connection.channel()
        count = channel.queue_declare(queue, passive=True).method.message_count
        channel.close()
        return int(count)

    def test_manage(self) -> None:
        """
        pika declares and consumes on A; C{qha-admin} lists its connection
        and consumer, purges, binds and unbinds (pika's publishes route
        accordingly), works in vhost C{a} with C{--vhost}, exports A's
        definitions and imports them into B (B then exports the same), and
        closes pika's connection with 320 and the reason.
        """
        connection = self.connect()
        channel = connection.channel()
        channel.exchange_declare("orders", "topic", durable=True)
        channel.queue_declare("eu", durable=True, arguments={"x-max-length": 100})
        channel.queue_declare("work", durable=True)
        channel.confirm_delivery()
        for body in (b"1", b"2", b"3"):
            channel.basic_publish("", "eu", body)
        consumer = connection.channel()
        consumer.basic_qos(prefetch_count=5)
        consumer.basic_consume("work", lambda *a: None, consumer_tag="worker")

        (row,) = json.loads(self.ok(0, "connections", "--json"))
        self.assertEqual((row["user"], row["vhost"], row["channels"], row["ssl"]), ("guest", "/", 2, False))
        table = self.ok(0, "connections")
        self.assertIn(row["name"], table)
        self.assertIn(time.strftime("%Y-%m-%d", time.gmtime()), table)
        (consumerRow,) = json.loads(self.ok(0, "consumers", "--json"))
        self.assertEqual(
            (consumerRow["queue"]["name"], consumerRow["consumer_tag"], consumerRow["ack_required"],
             consumerRow["prefetch_count"], consumerRow["channel_details"]["connection_name"]),
            ("work", "worker", True, 5, row["name"]),
        )

        self.assertEqual(self.ok(0, "purge", "eu"), "queue 'eu' purged: 3 messages dropped\n")
        self.assertEqual(self.depth(connection, "eu"), 0)
        self.ok(0, "bind", "orders", "eu", "--key", "eu.#")
        channel.basic_publish("orders", "eu.paris", b"routed")
        self.assertEqual(self.depth(connection, "eu"), 1)
        self.ok(0, "unbind", "orders", "eu", "--key", "eu.#")
        channel.basic_publish("orders", "eu.paris", b"not routed")
        self.assertEqual(self.depth(connection, "eu"), 1)
        self.ok(0, "bind", "orders", "eu", "--key", "eu.#")

        self.ok(0, "vhost", "add", "a")
        self.ok(0, "add", "queue", "tenant", "--vhost", "a", "--durable")
        self.ok(0, "bind", "amq.direct", "tenant", "--key", "t", "--vhost", "a")
        tenant = self.connect(vhost="a")
        tenantChannel = tenant.channel()
        tenantChannel.confirm_delivery()
        tenantChannel.basic_publish("amq.direct", "t", b"in a")
        self.assertEqual(
            self.ok(0, "purge", "tenant", "--vhost", "a"),
            "queue 'tenant' in vhost 'a' purged: 1 message dropped\n",
        )
        self.assertEqual([q["name"] for q in json.loads(self.ok(0, "queues", "--vhost", "a", "--json"))], ["tenant"])
        done = self.qhaAdmin(0, "queues", "--vhost", "nope")
        self.assertEqual(
            (done.returncode, done.stderr),
            (1, f"qha-admin: {self.brokers[0][1]} refused: NOT_FOUND - vhost 'nope' not found\n"),
        )

        exported = os.path.join(self.directory, "a.json")
        self.ok(0, "definitions", "export", exported)
        self.assertIn("1 vhost added", self.ok(1, "definitions", "import", exported))
        again = os.path.join(self.directory, "b.json")
        self.ok(1, "definitions", "export", again)
        with open(exported) as first, open(again) as second:
            self.assertEqual(json.load(first), json.load(second))
        copy = self.connect(1)
        copyChannel = copy.channel()
        copyChannel.confirm_delivery()
        copyChannel.basic_publish("orders", "eu.rome", b"copied binding")
        self.assertEqual(self.depth(copy, "eu"), 1)

        self.assertEqual(
            self.ok(0, "close-connection", row["name"], "--reason", "maintenance"),
            f"connection '{row['name']}' closed: maintenance\n",
        )
        deadline = time.monotonic() + 10
        with self.assertRaises(ConnectionClosedByBroker) as raised:
            while time.monotonic() < deadline:
                connection.process_data_events(time_limit=0.5)
        self.assertEqual(
            (raised.exception.reply_code, raised.exception.reply_text),
            (320, "CONNECTION_FORCED - maintenance"),
        )
        self.assertEqual(len(json.loads(self.ok(0, "connections", "--json"))), 1)


class SettingsFailoverTests(SynchronousTestCase):
    """
    C{qha-admin set} on real brokers: a value set at run time on the
    primary reaches its backup, which uses it once promoted after the
    primary was killed (-9), and still after it restarts itself, over the
    value its command line gives.
    """

    def test_failoverAndRestart(self) -> None:
        """
        Set the backup timeout and the public URL on the primary; the
        backup shows them as set at run time; kill -9 the primary and
        promote the backup: it has them; restart it: it still has them,
        and its log says which value overrides which.
        """
        from qha.admin.commands import SetOptions
        from qha.test.integration.cluster import Cluster

        cluster = Cluster(2, ["--ha-backup-timeout", "9"])
        self.addCleanup(cluster.stop)
        cluster.start()
        cluster.startPrimary(0)
        cluster.waitForRole(1, "ready")
        answer = json.loads(
            cluster.call(0, SetOptions, backupTimeout=4.0, publicBrokers="10.9.9.9:5672")["settings"]
        )
        self.assertEqual((answer["backupTimeout"], answer["sources"]["backupTimeout"]), (4.0, "run time"))
        cluster.waitFor(
            1, lambda state: state.get("publicBrokers") == "10.9.9.9:5672", what="the settings on the backup"
        )
        onBackup = json.loads(cluster.call(1, SetOptions)["settings"])
        self.assertEqual(
            (onBackup["backupTimeout"], onBackup["sources"]["backupTimeout"], onBackup["configured"]["backupTimeout"]),
            (4.0, "run time", 9.0),
        )

        cluster.kill(0)
        cluster.waitFor(1, lambda state: state["role"] != "ready", what="primary lost")
        cluster.promote(1)
        cluster.waitForRole(1, "active")
        promoted = json.loads(cluster.call(1, SetOptions)["settings"])
        self.assertEqual((promoted["backupTimeout"], promoted["publicBrokers"]), (4.0, "10.9.9.9:5672"))

        cluster.restart(1)
        cluster.waitFor(1, lambda state: "role" in state, what="the restarted broker")
        restarted = json.loads(cluster.call(1, SetOptions)["settings"])
        self.assertEqual(
            (restarted["backupTimeout"], restarted["sources"]["backupTimeout"], restarted["publicBrokers"]),
            (4.0, "run time", "10.9.9.9:5672"),
        )
        self.assertIn(
            "backup-timeout 4 s set at run time overrides the configured 9 s",
            cluster.brokers[1].output(),
        )
