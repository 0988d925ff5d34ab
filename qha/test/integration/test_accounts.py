"""
Users and permissions managed at run time, with real C{twistd qha}
processes and the real C{qha-admin} (issue 13): users and permissions
added on the primary; the permission matrix of RabbitMQ's access-control
guide checked with pika in two vhosts; then the primary is killed, a backup
promoted, and the same matrix holds there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from typing import Callable

import pika
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import ChannelClosedByBroker

from qha.amqp.users import hashPassword
from qha.test.integration.cluster import HOST, Cluster
from qha.test.integration.loadclients import adminCommand
from qha.test.integration.test_ha_failover import FailoverTestCase

VHOSTS = ("/", "a")

# alice may configure names starting c-, write to w-, read from r-.
CONFIGURE, WRITE, READ = "^c-", "^w-", "^r-"


class AccountsFailoverTests(FailoverTestCase):
    """
    The permission matrix on a primary, and after a failover.
    """

    def setUp(self) -> None:
        """
        A directory for the users file and the passwords.
        """
        super().setUp()
        self.directory = tempfile.mkdtemp(prefix="qha-accounts-")
        self.addCleanup(shutil.rmtree, self.directory, True)

    def path(self, name: str, text: str) -> str:
        """
        A file C{name} holding C{text}.
        """
        path = os.path.join(self.directory, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def admin(self, cluster: Cluster, index: int, *argv: str) -> subprocess.CompletedProcess[str]:
        """
        Run the real C{qha-admin} against broker C{index}; it must succeed.
        """
        assert cluster.secretFile is not None
        done = subprocess.run(
            [*adminCommand(), "-b", f"{HOST}:{cluster.brokers[index].ampPort}",
             "--secret-file", cluster.secretFile, *argv],
            capture_output=True, text=True, timeout=20,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        return done

    def connect(self, cluster: Cluster, index: int, user: str, vhost: str) -> pika.BlockingConnection:
        """
        A pika connection of C{user} (password C{user}-pw) to C{vhost}.
        """
        connection = cluster.connect(
            index,
            virtual_host=vhost,
            credentials=pika.PlainCredentials(user, f"{user}-pw"),
        )
        self.addCleanup(lambda: connection.is_open and connection.close())
        return connection

    def prepare(self, cluster: Cluster, index: int, vhost: str) -> None:
        """
        As C{boss} (every permission), make the objects the matrix uses.
        """
        connection = self.connect(cluster, index, "boss", vhost)
        channel = connection.channel()
        for exchange in ("w-x", "r-x", "n-x", "c-gone-x"):
            channel.exchange_declare(exchange, "fanout")
        for queue in ("w-q", "r-q", "n-q", "c-gone-q", "c-x-q"):
            channel.queue_declare(queue)
        connection.close()

    def matrix(self, cluster: Cluster, index: int, vhost: str) -> None:
        """
        Each operation of RabbitMQ's access-control table, as C{alice},
        allowed where her patterns match and refused (403, RabbitMQ's text)
        where they do not.
        """
        self.prepare(cluster, index, vhost)
        connection = self.connect(cluster, index, "alice", vhost)

        def check(what: str, operation: Callable[[BlockingChannel], object],
                  refusedKind: str | None = None, refusedName: str = "") -> None:
            channel = connection.channel()
            channel.confirm_delivery()
            if refusedKind is None:
                operation(channel)
                channel.close()
                return
            with self.assertRaises(ChannelClosedByBroker, msg=f"{what} in {vhost!r}") as raised:
                operation(channel)
                channel.basic_qos(prefetch_count=1)  # a round trip after a publish
            self.assertEqual(raised.exception.reply_code, 403, what)
            self.assertEqual(
                raised.exception.reply_text,
                f"ACCESS_REFUSED - access to {refusedKind} '{refusedName}' in vhost"
                f" '{vhost}' refused for user 'alice'",
                what,
            )

        # configure: queue.declare/delete, exchange.declare/delete
        check("queue.declare", lambda c: c.queue_declare("c-q"))
        check("queue.declare refused", lambda c: c.queue_declare("w-new"), "queue", "w-new")
        check("queue.delete", lambda c: c.queue_delete("c-gone-q"))
        check("queue.delete refused", lambda c: c.queue_delete("n-q"), "queue", "n-q")
        check("exchange.declare", lambda c: c.exchange_declare("c-x", "fanout"))
        check("exchange.declare refused", lambda c: c.exchange_declare("r-new", "fanout"),
              "exchange", "r-new")
        check("exchange.delete", lambda c: c.exchange_delete("c-gone-x"))
        check("exchange.delete refused", lambda c: c.exchange_delete("w-x"), "exchange", "w-x")
        # write: basic.publish
        check("basic.publish", lambda c: c.basic_publish("w-x", "", b"m"))
        check("basic.publish refused", lambda c: c.basic_publish("r-x", "", b"m"),
              "exchange", "r-x")
        # queue.bind: write on the queue, read on the exchange
        check("queue.bind", lambda c: c.queue_bind("w-q", "r-x"))
        check("queue.bind refused (write on queue)", lambda c: c.queue_bind("n-q", "r-x"),
              "queue", "n-q")
        check("queue.bind refused (read on exchange)", lambda c: c.queue_bind("w-q", "n-x"),
              "exchange", "n-x")
        # read: basic.get, basic.consume, queue.purge
        check("basic.get", lambda c: c.basic_get("r-q"))
        check("basic.get refused", lambda c: c.basic_get("w-q"), "queue", "w-q")
        check("basic.consume", lambda c: c.basic_consume("r-q", lambda *a: None))
        check("basic.consume refused", lambda c: c.basic_consume("n-q", lambda *a: None),
              "queue", "n-q")
        check("queue.purge", lambda c: c.queue_purge("r-q"))
        check("queue.purge refused", lambda c: c.queue_purge("c-x-q"), "queue", "c-x-q")
        connection.close()
        # Clean up what alice made, so that the matrix can run again.
        boss = self.connect(cluster, index, "boss", vhost)
        channel = boss.channel()
        channel.queue_delete("c-q")
        channel.exchange_delete("c-x")
        boss.close()

    def test_matrixAndFailover(self) -> None:
        """
        Users and permissions added with C{qha-admin} on the primary give
        the matrix in two vhosts; after a kill -9 of the primary and the
        promotion of the backup, the new primary gives the same matrix.
        """
        users = self.path("users", f"guest:{hashPassword('guest', n=2**10)}\n")
        cluster = self.startCluster(2, ["--users", users])
        self.admin(cluster, 0, "vhost", "add", "a")
        for user, tags in (("alice", ""), ("boss", "administrator")):
            self.admin(cluster, 0, "user", "add", user, "--tags", tags,
                       "--password-file", self.path(user, f"{user}-pw\n"))
        for vhost in VHOSTS:
            self.admin(cluster, 0, "permissions", "set", "--vhost", vhost, "alice",
                       CONFIGURE, WRITE, READ)
            self.admin(cluster, 0, "permissions", "set", "--vhost", vhost, "boss",
                       ".*", ".*", ".*")
        listed = self.admin(cluster, 0, "permissions", "list", "--vhost", "a").stdout
        self.assertIn("alice", listed)
        for vhost in VHOSTS:
            self.matrix(cluster, 0, vhost)

        cluster.kill(0)
        cluster.waitFor(1, lambda state: state["role"] != "ready", what="primary lost")
        self.assertEqual(cluster.promote(1)["role"], "recovering")
        cluster.waitForRole(1, "active")
        cluster.waitForAMQP(1)
        users = self.admin(cluster, 1, "user", "list").stdout
        self.assertEqual(
            [line.split()[0] for line in users.splitlines()[1:]], ["alice", "boss", "guest"]
        )
        for vhost in VHOSTS:
            self.matrix(cluster, 1, vhost)
