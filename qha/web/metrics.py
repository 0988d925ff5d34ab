"""
Prometheus metrics at C{/metrics} of the HTTP port.

One L{BrokerCollector} reads the live objects (queues of every virtual
host, connections, the node's replication sources, the gate, the store)
when Prometheus scrapes: nothing is counted on the hot path for it but one
step of the store sync histogram (L{SyncLatency}) per fsync, so a broker
nobody scrapes pays next to nothing, and a scrape costs one walk over the
queues and connections.

Names follow RabbitMQ's C{rabbitmq_prometheus} plugin where a metric means
the same (C{rabbitmq_queue_messages_ready}, C{rabbitmq_connections}, ...),
so dashboards and alerts written for RabbitMQ keep working; replication,
which RabbitMQ has not in this form, is under C{qha_}. Like RabbitMQ's
endpoint, C{/metrics} asks for no credentials (the HTTP port listens on
loopback by default).
"""

from __future__ import annotations

import bisect
import weakref
from typing import Any, Iterable, Iterator, Mapping, Protocol, runtime_checkable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

from .. import __version__
from ..broker.vhosts import VirtualHosts
from ..ha.role import ACTIVE, CATCHUP, JOINING, READY, RECOVERING, STANDALONE
from .broker import ManagedBroker

ROLES = (STANDALONE, JOINING, CATCHUP, READY, RECOVERING, ACTIVE)
"""
Every role, so that C{qha_role} has one series per role (1 for the current
one): C{qha_role{role="active"} == 1} alerts without knowing the others.
"""


class SourceView(Protocol):
    """
    What the metrics read of the stream to one backup
    (L{qha.ha.primary.ReplicationSource}).
    """

    backupId: str
    address: str
    seq: int
    acked: int
    ready: bool
    lastHeard: float
    inFlightBytes: dict[int, int]
    sentAt: dict[int, float]


class LinkView(Protocol):
    """
    What the metrics read of a backup's link to its primary
    (L{qha.ha.link.BackupLink}).
    """

    address: str
    lastSeq: int
    lastHeard: float


@runtime_checkable
class ReplicatingNode(Protocol):
    """
    What the metrics read of a node beyond L{qha.web.broker.ManagedNode}:
    its replication (L{qha.ha.node.HANode} has all of it; a node without
    it gets the queue and connection metrics only).
    """

    sources: Mapping[str, Any]
    link: Any
    gate: Any
    store: Any

    @property
    def position(self) -> int:
        "The position of the stream this broker holds."


SYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""
Upper bounds (seconds) of the store sync histogram's buckets: from a fast
SSD's 0.1 ms to a stalled disk.
"""


class SyncLatency:
    """
    A histogram of the store's flush-and-fsync times, one observation per
    group commit (L{qha.store.journal.Store.syncObservers}): counted as the
    syncs happen (one C{bisect} per fsync, nothing per message), read at
    scrape time.
    """

    def __init__(self, bounds: tuple[float, ...] = SYNC_BUCKETS) -> None:
        """
        @param bounds: the buckets' upper bounds, ascending (C{+Inf} added).
        """
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        """
        One sync took C{seconds}.
        """
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def family(self) -> HistogramMetricFamily:
        """
        C{qha_store_sync_seconds}, Prometheus' cumulative buckets.
        """
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip([*map(repr, self.bounds), "+Inf"], self.counts):
            running += count
            buckets.append((bound, running))
        return HistogramMetricFamily(
            "qha_store_sync_seconds",
            "Seconds of each store flush-and-fsync (one group commit: every event of a"
            " reactor turn, or of the turns gathered while the store's thread synced)",
            buckets=buckets,
            sum_value=self.total,
        )


_syncLatencies: "weakref.WeakKeyDictionary[Any, SyncLatency]" = weakref.WeakKeyDictionary()
"""
The histogram of each store, made once whoever asks first.
"""


def syncLatencyOf(store: Any) -> SyncLatency | None:
    """
    The sync histogram of C{store}, observing its syncs from the first call
    on; L{None} for a store that tells no one of its syncs.
    """
    observers = getattr(store, "syncObservers", None)
    if observers is None:
        return None
    latency = _syncLatencies.get(store)
    if latency is None:
        latency = _syncLatencies[store] = SyncLatency()
        observers.append(latency.observe)
    return latency


def _gauge(name: str, documentation: str, value: float | None = None, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    """
    A gauge family, with C{value} when it has no labels.
    """
    labels = list(labels)
    if labels:
        return GaugeMetricFamily(name, documentation, labels=labels)
    return GaugeMetricFamily(name, documentation, value=value)


class BrokerCollector:
    """
    A Prometheus collector (C{collect} yields the families) over a broker,
    read at scrape time.
    """

    def __init__(self, broker: ManagedBroker) -> None:
        """
        @param broker: the broker as the HTTP port sees it.
        """
        self.broker = broker
        # The histogram counts from now (made with the HTTP port, at start).
        self.syncLatency = syncLatencyOf(getattr(broker.node, "store", None))

    def describe(self) -> list[Metric]:
        """
        Nothing: a registry that asks gets no names ahead of a scrape (the
        families depend on what the broker holds then).
        """
        return []

    def collect(self) -> Iterator[Metric]:
        """
        The broker's metrics now.
        """
        yield from self.identity()
        yield from self.objects()
        yield from self.replication()

    def identity(self) -> Iterator[Metric]:
        """
        Which broker, which version (RabbitMQ's C{rabbitmq_identity_info}).
        """
        broker = self.broker
        identity = InfoMetricFamily("rabbitmq_identity", "The node and cluster this broker is")
        identity.add_metric([], {"rabbitmq_node": broker.nodeName, "rabbitmq_cluster": broker.clusterName})
        yield identity
        build = InfoMetricFamily("qha_build", "qha's version")
        build.add_metric([], {"version": __version__})
        yield build

    def objects(self) -> Iterator[Metric]:
        """
        Queues of every virtual host (labelled with it, as RabbitMQ's
        per-object metrics), connections, channels and consumers, with
        RabbitMQ's names; the totals count every virtual host.
        """
        broker = self.broker
        vhost = broker.vhost
        vhosts = list(VirtualHosts.of(vhost))
        ready = _gauge("rabbitmq_queue_messages_ready", "Messages ready to be delivered to consumers", labels=["vhost", "queue"])
        unacked = _gauge(
            "rabbitmq_queue_messages_unacked",
            "Messages delivered to consumers but not yet acknowledged",
            labels=["vhost", "queue"],
        )
        messages = _gauge("rabbitmq_queue_messages", "Messages ready and unacknowledged", labels=["vhost", "queue"])
        consumers = _gauge("rabbitmq_queue_consumers", "Consumers on a queue", labels=["vhost", "queue"])
        published = CounterMetricFamily(
            "rabbitmq_queue_messages_published",
            "Messages published into a queue since it was declared here",
            labels=["vhost", "queue"],
        )
        delivered = CounterMetricFamily(
            "rabbitmq_queue_messages_delivered",
            "Messages delivered from a queue to consumers and basic.get since it was declared here",
            labels=["vhost", "queue"],
        )
        totalConsumers = 0
        for queue, labels in [(q, [each.name, q.name]) for each in vhosts for q in list(each.queues.values())]:
            # Held by consumers and by basic.get alike (RabbitMQ counts both).
            count, held = queue.messageCount, len(queue.held)
            ready.add_metric(labels, count)
            unacked.add_metric(labels, held)
            messages.add_metric(labels, count + held)
            consumers.add_metric(labels, queue.consumerCount)
            totalConsumers += queue.consumerCount
            published.add_metric(labels, queue.published)
            delivered.add_metric(labels, queue.delivered)
        yield from (ready, unacked, messages, consumers, published, delivered)
        replies = CounterMetricFamily(
            "qha_direct_replies_published",
            "Direct replies (amq.rabbitmq.reply-to) that reached their consumer: publishes that enter no queue",
            labels=["vhost"],
        )
        for each in vhosts:
            replies.add_metric([each.name], each.repliesPublished)
        yield replies
        yield _gauge("rabbitmq_queues", "Queues", sum(len(each.queues) for each in vhosts))
        yield _gauge("rabbitmq_exchanges", "Exchanges", sum(len(each.exchanges) for each in vhosts))
        yield _gauge("qha_vhosts", "Virtual hosts", len(vhosts))
        connections = list(broker.factory.connections)
        yield _gauge("rabbitmq_connections", "Client connections open", len(connections))
        yield _gauge("rabbitmq_channels", "Channels open", sum(len(c.channels) for c in connections))
        yield _gauge("rabbitmq_consumers", "Consumers", totalConsumers)
        resources = vhost.resources
        yield _gauge(
            "rabbitmq_alarms_memory_used_watermark",
            "1 while the memory alarm blocks publishers (--memory-high-watermark)",
            1 if resources.blocked else 0,
        )
        yield _gauge("qha_memory_used_bytes", "Bytes of messages and replication held in memory", resources.used)
        yield _gauge(
            "qha_memory_high_watermark_bytes",
            "--memory-high-watermark (0: none)",
            resources.highWatermark,
        )

    def replication(self) -> Iterator[Metric]:
        """
        The role, the epoch and, on a primary, each backup's progress; on a
        backup, its link to the primary; the store's syncs.
        """
        node = self.broker.node
        now = self.broker.clock.seconds()
        role = _gauge("qha_role", "1 for this broker's role, 0 for the others", labels=["role"])
        for name in ROLES:
            role.add_metric([name], 1 if node.role.name == name else 0)
        yield role
        yield _gauge("qha_epoch", "The cluster epoch this broker is in", node.epoch)
        yield _gauge("qha_may_confirm", "1 when a confirm may complete here now", 1 if node.mayConfirm() else 0)
        if not isinstance(node, ReplicatingNode):
            return
        yield _gauge("qha_position", "The position in the primary's event stream this broker holds", node.position)
        gate = node.gate
        if gate is not None:
            yield _gauge(
                "qha_confirms_held",
                "Publishes whose confirm waits for backups or the store",
                len(gate.waiting),
            )
        yield from self.sources(list(node.sources.values()), now)
        link: LinkView | None = node.link
        yield _gauge("qha_primary_connected", "1 on a backup linked to its primary", 0 if link is None else 1)
        if link is not None:
            yield _gauge(
                "qha_primary_last_heard_age_seconds",
                "Seconds since the primary last spoke on the link",
                max(0.0, now - link.lastHeard),
            )
            yield CounterMetricFamily(
                "qha_primary_boxes_received",
                "Replication boxes received from the primary on this link",
                value=link.lastSeq,
            )
            progress = getattr(link, "catchup", None)
            described = progress.describe() if progress is not None else None
            if described is not None:
                yield _gauge(
                    "qha_catchup_messages",
                    "Messages of the primary's queues when this backup's batched catch-up began"
                    " (at most what it receives)",
                    described["messages"],
                )
                yield _gauge(
                    "qha_catchup_received_messages",
                    "Messages received and applied so far in this backup's batched catch-up",
                    described["receivedMessages"],
                )
                yield _gauge(
                    "qha_catchup_received_bytes",
                    "Bytes of catch-up batches received and applied so far",
                    described["receivedBytes"],
                )
                yield _gauge("qha_catchup_done", "1 once the batched catch-up is complete", 1 if described["done"] else 0)
        store = node.store
        if store is not None:
            yield _gauge(
                "qha_store_sync_seconds_average",
                "Moving average (weight 0.1) of the store's flush-and-fsync time",
                getattr(store, "syncAverage", 0.0),
            )
            if self.syncLatency is not None:
                yield self.syncLatency.family()
            journal = getattr(store, "journal", None)
            if journal is not None:
                yield CounterMetricFamily("qha_store_syncs", "fsyncs of the journal", value=journal.syncs)
                yield _gauge("qha_store_journal_bytes", "Size of the journal file", journal.size())

    def sources(self, sources: list[SourceView], now: float) -> Iterator[Metric]:
        """
        Each backup's stream, on a primary.
        """
        labels = ["backup", "address"]
        ready = _gauge("qha_backup_ready", "1 when the backup caught up and follows the live stream", labels=labels)
        sent = CounterMetricFamily("qha_backup_boxes_sent", "Replication boxes sent to the backup", labels=labels)
        acked = CounterMetricFamily(
            "qha_backup_boxes_acknowledged", "Replication boxes the backup acknowledged", labels=labels
        )
        lag = _gauge(
            "qha_backup_lag_boxes",
            "Boxes sent and not yet acknowledged (a box carries one reactor turn's events)",
            labels=labels,
        )
        lagBytes = _gauge(
            "qha_backup_lag_bytes",
            "Bytes sent and not yet acknowledged: during catch-up, the snapshot still on its way",
            labels=labels,
        )
        lagSeconds = _gauge(
            "qha_backup_lag_seconds",
            "Age of the oldest box sent to the backup and not yet acknowledged (0 when it"
            " acknowledged all): how far behind the backup is, in time",
            labels=labels,
        )
        heard = _gauge(
            "qha_backup_last_heard_age_seconds",
            "Seconds since the backup last answered (a box or a heartbeat)",
            labels=labels,
        )
        catchupSent = _gauge(
            "qha_backup_catchup_sent_messages",
            "Messages sent to the backup in its batched catch-up (absent without one)",
            labels=labels,
        )
        catchupAcked = _gauge(
            "qha_backup_catchup_acknowledged_messages",
            "Messages of the backup's catch-up batches it acknowledged",
            labels=labels,
        )
        catchupBytes = _gauge(
            "qha_backup_catchup_acknowledged_bytes",
            "Bytes of the backup's catch-up batches it acknowledged",
            labels=labels,
        )
        catchupDone = _gauge(
            "qha_backup_catchup_done", "1 once the backup acknowledged its last catch-up batch", labels=labels
        )
        for source in sources:
            values = [source.backupId, source.address]
            progress = getattr(source, "catchup", None)
            if progress is not None:
                catchupSent.add_metric(values, progress.sentMessages)
                catchupAcked.add_metric(values, progress.ackedMessages)
                catchupBytes.add_metric(values, progress.ackedBytes)
                catchupDone.add_metric(values, 0 if progress.finished is None else 1)
            ready.add_metric(values, 1 if source.ready else 0)
            sent.add_metric(values, source.seq)
            acked.add_metric(values, source.acked)
            lag.add_metric(values, source.seq - source.acked)
            lagBytes.add_metric(values, sum(source.inFlightBytes.values()))
            heard.add_metric(values, max(0.0, now - source.lastHeard))
            oldest = next(iter(source.sentAt.values()), None)
            lagSeconds.add_metric(values, 0.0 if oldest is None else max(0.0, now - oldest))
        yield _gauge("qha_backups", "Backups connected to this primary", len(sources))
        yield from (ready, sent, acked, lag, lagBytes, lagSeconds, heard)
        yield from (catchupSent, catchupAcked, catchupBytes, catchupDone)


def metricsRegistry(broker: ManagedBroker, process: bool = True) -> CollectorRegistry:
    """
    A registry of its own (not prometheus_client's global one, so that two
    brokers in one process, as in tests, do not collide) with the broker's
    collector and, with C{process}, the process's (memory, CPU, open files).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BrokerCollector(broker))  # type: ignore[arg-type]
    if process:
        ProcessCollector(registry=registry)
    return registry


class MetricsResource(Resource):
    """
    C{/metrics}: the registry in Prometheus' text format, without
    credentials (as RabbitMQ's C{rabbitmq_prometheus}).
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        """
        @param registry: what to expose.
        """
        super().__init__()
        self.registry = registry

    def render_GET(self, request: IRequest) -> bytes:
        """
        Collect now and answer the text.
        """
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return generate_latest(self.registry)


__all__ = [
    "BrokerCollector",
    "MetricsResource",
    "ReplicatingNode",
    "SyncLatency",
    "metricsRegistry",
    "syncLatencyOf",
]
