"""
Tests for the metrics of issue 14 in L{qha.web.metrics}: queue metrics of
every virtual host, the store sync latency histogram, and each backup's
lag in seconds; each C{/metrics} answer parsed by prometheus_client's own
parser.
"""

from __future__ import annotations

from typing import Any

from pamqp import commands
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from qha.amqp.users import SynchronousVerifier
from qha.broker.message import Message
from qha.broker.vhost import VirtualHost
from qha.broker.vhosts import VirtualHosts
from qha.store.journal import MemoryJournal, Store
from qha.ha.primary import ReplicationSource
from qha.test.support import ALL, InMemoryCluster, message
from qha.test.test_web import FakeNode, WebTestCase
from qha.test.test_web_metrics import PrimaryWithBackupTestCase, samples, scrapeNode
from qha.web.broker import ManagedBroker
from qha.web.metrics import SyncLatency, syncLatencyOf
from qha.web.site import managementRoot


class VirtualHostMetricsTests(WebTestCase):
    """
    Queue metrics cover every virtual host, labelled with it.
    """

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """
        C{/metrics}, parsed.
        """
        request = self.call("GET", "/metrics", user=None)
        return samples(b"".join(request.written).decode("utf-8"))

    def test_everyVhost(self) -> None:
        """
        A queue of the same name in two virtual hosts gives two series told
        apart by C{vhost}; the totals count both.
        """
        other = VirtualHosts.of(self.vhost).add("staging")
        self.vhost.declareQueue("jobs").enqueue(self.message(b"a"))
        queue = other.declareQueue("jobs")
        queue.enqueue(self.message(b"b"))
        queue.enqueue(self.message(b"c"))
        found = self.scrape()
        self.assertEqual(found["rabbitmq_queue_messages_ready", (("queue", "jobs"), ("vhost", "/"))], 1)
        self.assertEqual(found["rabbitmq_queue_messages_ready", (("queue", "jobs"), ("vhost", "staging"))], 2)
        self.assertEqual(found["rabbitmq_queues", ()], 2)
        self.assertEqual(found["qha_vhosts", ()], 2)
        self.assertEqual(
            found["rabbitmq_exchanges", ()], len(self.vhost.exchanges) + len(other.exchanges)
        )

    def test_storeHistogram(self) -> None:
        """
        A node with a store shows C{qha_store_sync_seconds}, a histogram
        counting the store's syncs since the HTTP port was made.
        """
        store = Store(MemoryJournal(), self.clock)
        store.attach(self.vhost)
        self.node = StoreNode(store)
        self.broker = ManagedBroker(
            node=self.node, factory=self.factory, users=self.users,
            verifier=SynchronousVerifier(), clock=self.clock,
        )
        self.root = managementRoot(self.broker)
        queue = self.vhost.declareQueue("durable", durable=True)
        for body in (b"a", b"b"):
            queue.enqueue(Message.build("", "durable", body, commands.Basic.Properties(delivery_mode=2)))
            store.flush()
        request = self.call("GET", "/metrics", user=None)
        text = b"".join(request.written).decode("utf-8")
        types = {family.name: family.type for family in text_string_to_metric_families(text)}
        self.assertEqual(types["qha_store_sync_seconds"], "histogram")
        found = samples(text)
        self.assertEqual(found["qha_store_sync_seconds_count", ()], 2)
        self.assertEqual(found["qha_store_sync_seconds_bucket", (("le", "+Inf"),)], 2)
        self.assertIn("qha_store_sync_seconds_average", types)

    def message(self, body: bytes) -> Any:
        """
        A message for the default exchange.
        """
        return Message.build("", "jobs", body, commands.Basic.Properties())


class StoreNode(FakeNode):
    """
    A standalone node with a store and no replication
    (L{qha.web.metrics.ReplicatingNode}).
    """

    def __init__(self, store: Store) -> None:
        """
        @param store: the node's store.
        """
        super().__init__()
        self.store = store
        self.sources: dict[str, Any] = {}
        self.link = None
        self.gate = None
        self.position = 0


class SyncLatencyTests(SynchronousTestCase):
    """
    L{SyncLatency} and the store's sync observers.
    """

    def test_buckets(self) -> None:
        """
        Observations land in cumulative buckets, with their sum and count,
        as prometheus_client's parser reads them.
        """
        latency = SyncLatency((0.001, 0.01))
        for seconds in (0.0005, 0.001, 0.005, 0.5):
            latency.observe(seconds)
        from prometheus_client.core import CollectorRegistry
        from prometheus_client import generate_latest

        registry = CollectorRegistry(auto_describe=False)

        class One:
            def collect(self) -> Any:
                yield latency.family()

        registry.register(One())  # type: ignore[arg-type]
        found = samples(generate_latest(registry).decode("utf-8"))
        self.assertEqual(found["qha_store_sync_seconds_bucket", (("le", "0.001"),)], 2)
        self.assertEqual(found["qha_store_sync_seconds_bucket", (("le", "0.01"),)], 3)
        self.assertEqual(found["qha_store_sync_seconds_bucket", (("le", "+Inf"),)], 4)
        self.assertEqual(found["qha_store_sync_seconds_count", ()], 4)
        self.assertAlmostEqual(found["qha_store_sync_seconds_sum", ()], 0.5065)

    def storeWithQueue(self) -> tuple[Store, Any]:
        """
        A store over a memory journal, observing a vhost with a durable queue.
        """
        clock = Clock()
        vhost = VirtualHost(clock=clock)
        store = Store(MemoryJournal(), clock)
        store.attach(vhost)
        return store, vhost.declareQueue("q", durable=True)

    def test_reactorThreadSyncs(self) -> None:
        """
        Each flush done in the reactor thread is one observation; a store's
        histogram is made once, however many ask.
        """
        store, _ = self.storeWithQueue()
        latency = syncLatencyOf(store)
        self.assertIs(syncLatencyOf(store), latency)
        assert latency is not None
        store.flush()
        self.assertEqual(sum(latency.counts), 1)
        self.assertEqual(len(store.syncObservers), 1)
        self.assertIsNone(syncLatencyOf(object()))

    def test_threadSyncs(self) -> None:
        """
        A group commit in the store's thread is one observation, told in
        the reactor thread once the thread is done.
        """
        store, queue = self.storeWithQueue()
        latency = syncLatencyOf(store)
        assert latency is not None
        pending: list[tuple[Any, Deferred[Any]]] = []

        def syncInThread(write: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            pending.append((write, d))
            return d

        store.syncInThread = syncInThread
        queue.enqueue(Message.build("", "q", b"x", commands.Basic.Properties(delivery_mode=2)))
        store.flush()
        self.assertEqual(sum(latency.counts), 0)
        write, d = pending.pop()
        write()
        d.callback(None)
        self.assertEqual(sum(latency.counts), 1)


class LagSecondsTests(PrimaryWithBackupTestCase):
    """
    C{qha_backup_lag_seconds}: the age of the oldest box a backup has not
    acknowledged, on a primary and a backup of an L{InMemoryCluster}
    (as in L{qha.test.test_web_metrics.ReplicationMetricsTests}).
    """

    def test_lagSeconds(self) -> None:
        """
        Zero while the backup is caught up; the age of the oldest box in
        flight while it is not; zero again once it answers.
        """
        self.primary.vhost.declareQueue("jobs", arguments={"qpid.replicate": "all"})
        self.cluster.flush()
        (source,) = self.primary.sources.values()
        labels = (("address", source.address), ("backup", source.backupId))
        self.assertEqual(self.scrape(self.primary)["qha_backup_lag_seconds", labels], 0)
        self.primary.vhost.declareQueue("more", arguments={"qpid.replicate": "all"})
        self.cluster.clock.advance(0)  # the box goes out; nothing pumped yet
        self.cluster.clock.advance(1.5)
        self.assertEqual(self.scrape(self.primary)["qha_backup_lag_seconds", labels], 1.5)
        self.cluster.flush()
        self.assertEqual(self.scrape(self.primary)["qha_backup_lag_seconds", labels], 0)


class CatchUpMetricsTests(SynchronousTestCase):
    """
    The batched catch-up's progress in C{/metrics}, on the primary (per
    backup) and on the backup.
    """

    def test_progress(self) -> None:
        """
        After a catch-up of 35 messages in batches of 10, the primary shows
        35 sent and acknowledged and done for the backup, and the backup 35
        of 35 received and done; without a batched catch-up the families
        have no sample.
        """
        self.patch(ReplicationSource, "batchMessages", 10)
        cluster = InMemoryCluster(self)
        self.addCleanup(cluster.finish)
        primary = cluster.primary()
        backup = cluster.node()
        before = scrapeNode(primary, cluster.clock)
        self.assertFalse([key for key in before if key[0].startswith("qha_backup_catchup")])
        primary.vhost.declareQueue("q", arguments=ALL)
        for index in range(35):
            primary.vhost.publish("", "q", message(b"%d" % index + b"x" * 10, "q"))
        cluster.connect(primary, backup)
        [source] = primary.sources.values()
        labels = (("address", source.address), ("backup", source.backupId))
        onPrimary = scrapeNode(primary, cluster.clock)
        self.assertEqual(onPrimary[("qha_backup_catchup_sent_messages", labels)], 35)
        self.assertEqual(onPrimary[("qha_backup_catchup_acknowledged_messages", labels)], 35)
        self.assertGreater(onPrimary[("qha_backup_catchup_acknowledged_bytes", labels)], 350)
        self.assertEqual(onPrimary[("qha_backup_catchup_done", labels)], 1)
        onBackup = scrapeNode(backup, cluster.clock)
        self.assertEqual(onBackup[("qha_catchup_messages", ())], 35)
        self.assertEqual(onBackup[("qha_catchup_received_messages", ())], 35)
        self.assertEqual(
            onBackup[("qha_catchup_received_bytes", ())],
            onPrimary[("qha_backup_catchup_acknowledged_bytes", labels)],
        )
        self.assertEqual(onBackup[("qha_catchup_done", ())], 1)
