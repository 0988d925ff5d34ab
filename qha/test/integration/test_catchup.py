"""
A backup's catch-up in several batches, on real processes: a primary holds
20,000 persistent messages (about 5 MB), a backup with an empty data
directory joins, catches up in batches, answers C{qha-admin query} while it
does, and holds every message when ready.
"""

from __future__ import annotations

import time

import pika
from twisted.trial.unittest import SynchronousTestCase

from qha.test.integration.cluster import Cluster

MESSAGES = 20_000


class CatchUpTests(SynchronousTestCase):
    """
    The batched catch-up between two brokers.
    """

    def setUp(self) -> None:
        """
        A two-broker cluster; only the primary started, and filled.
        """
        self.cluster = Cluster(2, heartbeat=1.0)
        self.addCleanup(self.cluster.stop)
        self.cluster.start([0])
        self.cluster.startPrimary(0)
        connection = pika.BlockingConnection(
            pika.ConnectionParameters("127.0.0.1", self.cluster.brokers[0].port)
        )
        self.addCleanup(connection.close)
        channel = connection.channel()
        channel.queue_declare("backlog", durable=True, arguments={"qpid.replicate": "all"})
        properties = pika.BasicProperties(delivery_mode=2)
        for _ in range(MESSAGES):
            channel.basic_publish("", "backlog", b"x" * 250, properties)
        self.cluster.waitFor(
            0,
            lambda state: self.count(0) == MESSAGES,
            timeout=60,
            what=f"{MESSAGES} messages on the primary",
        )

    def count(self, index: int) -> int | None:
        """
        The messages of queue C{backlog} on broker C{index}.
        """
        for queue in self.cluster.listObjects(index, "queues"):
            if queue["name"] == "backlog":
                return int(queue["messages"])
        return None

    def test_batches(self) -> None:
        """
        The backup catches up in several batches, with no flap, answers
        queries during it, and then holds every message; both sides show
        the catch-up's figures.
        """
        began = time.monotonic()
        self.cluster.startBroker(1)
        state = self.cluster.waitForRole(1, "ready", timeout=30)
        self.assertLess(time.monotonic() - began, 30)
        catchup = state["catchup"]
        self.assertEqual(catchup["receivedMessages"], MESSAGES)
        self.assertTrue(catchup["done"])
        self.assertGreater(catchup["batches"], 2)
        self.assertEqual(self.count(1), MESSAGES)
        [backup] = self.cluster.waitForBackups(0, 1, timeout=10)["backups"]
        self.assertEqual(backup["catchup"]["acknowledgedMessages"], MESSAGES)
        self.assertEqual(backup["catchup"]["batches"], catchup["batches"])
        self.assertNotIn("dropping backup", self.cluster.brokers[0].output(100000))
        self.assertNotIn("silent for", self.cluster.brokers[1].output(100000))
