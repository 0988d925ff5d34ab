"""
Tests for L{qha.web.metrics}: C{/metrics} in Prometheus' text format,
parsed back with prometheus_client's own parser, over a model broker and
over real nodes of an L{InMemoryCluster}.
"""

from __future__ import annotations

from typing import Any

from pamqp import commands
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from qha.amqp.users import SynchronousVerifier
from qha.ha.node import HANode
from qha.test.support import InMemoryCluster
from qha.test.test_web import WebTestCase
from qha.web.broker import ManagedBroker
from qha.web.site import managementRoot


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """
    The samples of C{text}, parsed by prometheus_client, by name and sorted
    labels.
    """
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrapeNode(node: HANode, clock: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """
    C{/metrics} of a real node (of an L{InMemoryCluster}), parsed with
    L{samples}.
    """
    from twisted.web.resource import getChildForRequest
    from twisted.web.test.requesthelper import DummyRequest

    from qha.amqp.protocol import BrokerFactory
    from qha.amqp.users import UserDatabase

    broker = ManagedBroker(
        node=node,
        factory=BrokerFactory(node.vhost, UserDatabase({}), clock),
        users=UserDatabase({}),
        verifier=SynchronousVerifier(),
        clock=clock,
    )
    request = DummyRequest([b"metrics"])
    body: Any = getChildForRequest(managementRoot(broker), request).render(request)
    return samples(body.decode("utf-8"))


class MetricsTests(WebTestCase):
    """
    C{/metrics} of a standalone model broker.
    """

    def scrape(self) -> str:
        """
        GET C{/metrics} without credentials, as Prometheus does.
        """
        request = self.call("GET", "/metrics", user=None)
        self.assertIn(request.responseCode, (None, 200))  # None: DummyRequest's 200
        contentType = request.responseHeaders.getRawHeaders(b"content-type", [b""])[0]
        self.assertTrue(contentType.startswith(b"text/plain; version="), contentType)
        return b"".join(request.written).decode("utf-8")

    def test_queues(self) -> None:
        """
        Each queue has RabbitMQ's C{rabbitmq_queue_messages_ready},
        C{_unacked}, C{rabbitmq_queue_messages} and C{_consumers}, labelled
        with its vhost and name; totals have RabbitMQ's names too.
        """
        queue = self.vhost.declareQueue("jobs")
        for body in ("a", "b", "c"):
            self.ok(
                "POST",
                "/api/exchanges/%2F/amq.default/publish",
                {"routing_key": "jobs", "payload": body, "payload_encoding": "string", "properties": {}},
            )
        queue.get()
        found = samples(self.scrape())
        labels = (("queue", "jobs"), ("vhost", "/"))
        self.assertEqual(found["rabbitmq_queue_messages_ready", labels], 2)
        self.assertEqual(found["rabbitmq_queue_messages_unacked", labels], 1)
        self.assertEqual(found["rabbitmq_queue_messages", labels], 3)
        self.assertEqual(found["rabbitmq_queue_consumers", labels], 0)
        self.assertEqual(found["rabbitmq_queues", ()], 1)
        self.assertEqual(found["rabbitmq_connections", ()], 0)
        self.assertEqual(found["rabbitmq_alarms_memory_used_watermark", ()], 0)

    def test_connectionsAndChannels(self) -> None:
        """
        Connections, channels and consumers are counted.
        """
        from qha.test.support import Client

        self.vhost.declareQueue("q")
        client = Client(self.factory)
        client.handshake(response="\0admin\0adminpw")
        client.openChannel(1)
        client.openChannel(2)
        client.call(1, commands.Basic.Consume(queue="q", consumer_tag="c1"))
        self.addCleanup(client.disconnect)
        found = samples(self.scrape())
        self.assertEqual(found["rabbitmq_connections", ()], 1)
        self.assertEqual(found["rabbitmq_channels", ()], 2)
        self.assertEqual(found["rabbitmq_consumers", ()], 1)
        self.assertEqual(found["rabbitmq_queue_consumers", (("queue", "q"), ("vhost", "/"))], 1)

    def test_roleAndIdentity(self) -> None:
        """
        C{qha_role} has one series per role, 1 for this broker's; the epoch,
        the version and the node's name are there.
        """
        found = samples(self.scrape())
        self.assertEqual(found["qha_role", (("role", "standalone"),)], 1)
        self.assertEqual(found["qha_role", (("role", "active"),)], 0)
        self.assertEqual(found["qha_epoch", ()], 3)
        self.assertEqual(found["qha_may_confirm", ()], 1)
        self.assertEqual(found["rabbitmq_identity_info", (("rabbitmq_cluster", "qha"), ("rabbitmq_node", "qha@b1"))], 1)
        from qha import __version__

        self.assertEqual(found["qha_build_info", (("version", __version__),)], 1)

    def test_processMetrics(self) -> None:
        """
        The process's own metrics (prometheus_client's process collector)
        are there on Linux.
        """
        text = self.scrape()
        import os

        if os.path.exists("/proc/self/stat"):
            self.assertIn("process_resident_memory_bytes", text)

    def test_nothingOnTheHotPath(self) -> None:
        """
        The collector holds no state of its own: two scrapes with nothing in
        between answer the same broker counts, and publishing touches no
        metric object (there is none to touch until a scrape).
        """
        first = samples(self.scrape())
        second = samples(self.scrape())
        self.assertEqual(first["rabbitmq_queues", ()], second["rabbitmq_queues", ()])


class PrimaryWithBackupTestCase(SynchronousTestCase):
    """
    The base of the tests of a primary and one backup of an
    L{InMemoryCluster}, connected and caught up, and their C{/metrics}.

    @ivar cluster: the cluster.
    @ivar primary: the primary node.
    @ivar backup: the backup node.
    @ivar link: the link between them.
    """

    def setUp(self) -> None:
        """
        A primary and one backup, connected and caught up.
        """
        self.cluster = InMemoryCluster(self)
        self.addCleanup(self.cluster.finish)
        self.primary = self.cluster.primary()
        self.backup = self.cluster.node()
        self.link = self.cluster.connect(self.primary, self.backup)

    def scrape(self, node: HANode) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """
        C{/metrics} of C{node}, parsed.
        """
        return scrapeNode(node, self.cluster.clock)


class ReplicationMetricsTests(PrimaryWithBackupTestCase):
    """
    The replication metrics of real nodes (an L{InMemoryCluster}): a
    primary with a backup, and the backup.
    """

    def test_primary(self) -> None:
        """
        A primary shows its role, its epoch, and each backup: ready, boxes
        sent and acknowledged, lag, and when it last answered.
        """
        self.primary.vhost.declareQueue("jobs", arguments={"qpid.replicate": "all"})
        self.cluster.flush()
        found = self.scrape(self.primary)
        self.assertEqual(found["qha_role", (("role", "active"),)], 1)
        self.assertEqual(found["qha_epoch", ()], self.primary.epoch)
        self.assertEqual(found["qha_backups", ()], 1)
        (source,) = self.primary.sources.values()
        labels = (("address", source.address), ("backup", source.backupId))
        self.assertEqual(found["qha_backup_ready", labels], 1)
        self.assertEqual(found["qha_backup_boxes_sent_total", labels], source.seq)
        self.assertEqual(found["qha_backup_boxes_acknowledged_total", labels], source.seq)
        self.assertEqual(found["qha_backup_lag_boxes", labels], 0)
        self.assertEqual(found["qha_backup_lag_bytes", labels], 0)
        self.assertEqual(found["qha_confirms_held", ()], 0)
        self.assertEqual(found["qha_primary_connected", ()], 0)

    def test_lag(self) -> None:
        """
        Events sent and not yet answered show as lag, in boxes and bytes,
        until the backup answers.
        """
        self.primary.vhost.declareQueue("jobs", arguments={"qpid.replicate": "all"})
        self.cluster.flush()
        self.primary.vhost.declareQueue("more", arguments={"qpid.replicate": "all"})
        self.cluster.clock.advance(0)  # the box goes out; nothing pumped yet
        (source,) = self.primary.sources.values()
        labels = (("address", source.address), ("backup", source.backupId))
        found = self.scrape(self.primary)
        self.assertEqual(found["qha_backup_lag_boxes", labels], 1)
        self.assertGreater(found["qha_backup_lag_bytes", labels], 0)
        self.cluster.flush()
        self.assertEqual(self.scrape(self.primary)["qha_backup_lag_boxes", labels], 0)

    def test_backup(self) -> None:
        """
        A backup shows its role, its link to the primary and how long ago
        the primary spoke.
        """
        self.cluster.clock.advance(2)
        found = self.scrape(self.backup)
        self.assertEqual(found["qha_role", (("role", "ready"),)], 1)
        self.assertEqual(found["qha_primary_connected", ()], 1)
        self.assertEqual(found["qha_primary_last_heard_age_seconds", ()], 2)
        self.assertGreaterEqual(found["qha_primary_boxes_received_total", ()], 1)
        self.assertEqual(found["qha_backups", ()], 0)
