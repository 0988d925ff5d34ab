"""
Virtual hosts with real C{twistd qha} processes (issue 13): a pika client
of vhost C{a} on a two-broker cluster keeps its confirmed message across a
failover, in C{a} and not in C{/}.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import pika
from pika.exceptions import ChannelClosedByBroker

from qha.admin.commands import VhostAdd, VhostList
from qha.amqp.users import hashPassword
from qha.test.integration.test_ha_failover import ALL, FailoverTestCase


class VhostFailoverTests(FailoverTestCase):
    """
    A vhost, its queue and its messages survive the loss of the primary.
    """

    def usersFile(self) -> str:
        """
        A users file: C{guest}/C{guest} with every permission in C{/} and
        C{a} (cheap hash: the test's time goes to processes).
        """
        directory = tempfile.mkdtemp(prefix="qha-vhosts-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "users")
        with open(path, "w", encoding="utf-8") as f:
            f.write(
                f"guest:{hashPassword('guest', n=2**10)}\n"
                "permissions guest / .* .* .*\n"
                "permissions guest a .* .* .*\n"
            )
        return path

    def test_failoverKeepsVhost(self) -> None:
        """
        A vhost added over AMP on the primary; pika connects to it,
        declares a replicated queue and publishes with confirms; the
        primary is killed and the backup promoted: the new primary has the
        vhost and the message in it, and no such queue in C{/}.
        """
        cluster = self.startCluster(2, ["--users", self.usersFile()])
        cluster.call(0, VhostAdd, name="a")
        connection = cluster.connect(virtual_host="a")
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare("tenant", arguments=ALL)
        channel.basic_publish("", "tenant", b"in a")
        connection.close()

        cluster.kill(0)
        cluster.waitFor(1, lambda state: state["role"] != "ready", what="primary lost")
        self.assertEqual(cluster.promote(1)["role"], "recovering")
        cluster.waitForRole(1, "active")
        cluster.waitForAMQP(1)
        names = [v["name"] for v in json.loads(cluster.call(1, VhostList)["vhosts"])]
        self.assertEqual(names, ["/", "a"])
        connection = cluster.connect(1, virtual_host="a")
        self.addCleanup(connection.close)
        self.assertEqual(self.drain(connection, "tenant"), [b"in a"])
        root = cluster.connect(1)
        self.addCleanup(root.close)
        rootChannel = root.channel()
        with self.assertRaises(ChannelClosedByBroker) as raised:
            rootChannel.queue_declare("tenant", passive=True)
        self.assertEqual(raised.exception.reply_code, 404)
        self.assertIsInstance(connection, pika.BlockingConnection)
