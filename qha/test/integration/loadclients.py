"""
The clients the failover tests and soaks run against a cluster of real
brokers: confirmed publishers (L{Publisher}, and L{TimedPublisher} that
reconnects sooner; each records when and from which broker each confirm
came, as every L{ConfirmedPublisher} does) and a consumer
(L{Consumer}), each a thread that reconnects through every broker's address
after a failover; the load of a soak (L{SoakLoad}); the count every
failover test makes at its end (L{Tally}) and the figures it prints
(L{failoverFigures}); and the C{qha-admin} command of the running Python.
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, NamedTuple, Sequence

import pika
from pika.exceptions import AMQPError
from twisted.trial.unittest import SynchronousTestCase

from qha.test.integration.cluster import Cluster, ClusterBroker

__all__ = [
    "QUEUE",
    "Confirm",
    "ConfirmedPublisher",
    "Consumer",
    "Publisher",
    "SoakLoad",
    "Tally",
    "TimedPublisher",
    "adminCommand",
    "failoverFigures",
]

QUEUE = "soak"
"""
The queue the clients publish to and consume from.
"""


class Confirm(NamedTuple):
    """
    One confirmed publish.
    """

    sent: float
    """
    The monotonic time the publish was sent.
    """

    at: float
    """
    The monotonic time its confirm came.
    """

    port: int | None
    """
    The AMQP port of the broker that confirmed it, where the publisher
    knows it (L{None} behind a proxy).
    """


class ConfirmedPublisher(threading.Thread):
    """
    What every confirmed publisher of the failover tests keeps, however it
    publishes (pika here, aio-pika through HAProxy in test_haproxy): the
    ids it tried, the ids confirmed, when each confirm came and from which
    broker, and the longest wait between two confirms. A subclass publishes
    in L{publish}, taking each id from L{attempt} and reporting each confirm
    to L{confirm}.

    @ivar stopping: set to stop it.
    @ivar attempted: ids it tried to publish.
    @ivar confirmed: ids the broker confirmed.
    @ivar confirms: every confirm, in order.
    @ivar longestGap: the longest time between two confirms (the first
        measured from the start), in seconds.
    """

    def __init__(self, name: str, stop: threading.Event) -> None:
        """
        @param name: the prefix of its message ids, and the thread's name.
        @param stop: set to stop it.
        """
        super().__init__(name=name, daemon=True)
        self.stopping = stop
        self.attempted: set[str] = set()
        self.confirmed: set[str] = set()
        self.confirms: list[Confirm] = []
        self.longestGap = 0.0
        self._sequence = 0
        self._lastConfirm = time.monotonic()

    def run(self) -> None:
        """
        Publish until stopped, the gaps between confirms measured from now.
        """
        self._lastConfirm = time.monotonic()
        self.publish()

    def publish(self) -> None:
        """
        Publish numbered messages with confirms until L{stopping} is set.
        """
        raise NotImplementedError()

    def attempt(self) -> str:
        """
        The id of the next message, noted as attempted.
        """
        self._sequence += 1
        id = f"{self.name}-{self._sequence}"
        self.attempted.add(id)
        return id

    def confirm(self, id: str, sent: float, port: int | None = None) -> None:
        """
        The message C{id}, sent at monotonic time C{sent}, was confirmed
        just now (by the broker on AMQP port C{port}, if known).
        """
        now = time.monotonic()
        self.confirmed.add(id)
        self.confirms.append(Confirm(sent, now, port))
        self.longestGap = max(self.longestGap, now - self._lastConfirm)
        self._lastConfirm = now

    def confirmedSince(
        self, moment: float, port: int | None = None, sentAfter: float | None = None
    ) -> list[float]:
        """
        The times of the confirms after C{moment} (from broker C{port}
        only, if given; of publishes sent after C{sentAfter} only, if
        given).
        """
        return [
            confirm.at
            for confirm in list(self.confirms)
            if confirm.at > moment
            and (port is None or confirm.port == port)
            and (sentAfter is None or confirm.sent > sentAfter)
        ]

    def firstConfirmSentAfter(self, moment: float) -> float | None:
        """
        When the first publish sent after C{moment} was confirmed, if one was.
        """
        for confirm in list(self.confirms):
            if confirm.sent > moment:
                return confirm.at
        return None


class Publisher(ConfirmedPublisher):
    """
    Publishes numbered messages with confirms (pika), reconnecting through
    every broker's address after each failover.

    @cvar connectionAttempts: how many times one reconnection tries the
        addresses (pika's C{connection_attempts}).
    @cvar retryDelay: seconds between two of those tries.
    @ivar errors: connections lost or refused.
    """

    connectionAttempts = 20
    retryDelay = 0.25

    def __init__(self, name: str, cluster: Cluster, stop: threading.Event) -> None:
        """
        @param name: the prefix of its message ids, and the thread's name.
        @param cluster: where it publishes.
        @param stop: set to stop it.
        """
        super().__init__(name, stop)
        self.cluster = cluster
        self.errors = 0

    def publish(self) -> None:
        """
        Publish numbered messages with confirms until stopped, reconnecting
        through every broker's address whenever the connection fails.
        """
        while not self.stopping.is_set():
            try:
                connection = pika.BlockingConnection(
                    self.cluster.amqpParams(
                        connection_attempts=self.connectionAttempts, retry_delay=self.retryDelay
                    )
                )
            except AMQPError:
                self.errors += 1
                continue
            port = connection._impl.params.port
            try:
                channel = connection.channel()
                channel.confirm_delivery()
                while not self.stopping.is_set():
                    id = self.attempt()
                    sent = time.monotonic()
                    channel.basic_publish("", QUEUE, id.encode("ascii"))
                    self.confirm(id, sent, port)
            except AMQPError:
                self.errors += 1
            finally:
                try:
                    connection.close()
                except Exception:
                    pass


class Consumer(threading.Thread):
    """
    Consumes and acknowledges, reconnecting after each failover.

    @ivar received: every body delivered, duplicates included.
    """

    def __init__(self, name: str, cluster: Cluster, stop: threading.Event) -> None:
        """
        @param name: the thread's name.
        @param cluster: where it consumes.
        @param stop: set to stop it.
        """
        super().__init__(name=name, daemon=True)
        self.cluster = cluster
        self.stopping = stop
        self.received: list[str] = []
        self.lastDelivery = time.monotonic()

    def run(self) -> None:
        """
        Consume and acknowledge until stopped.
        """
        while not self.stopping.is_set():
            try:
                connection = pika.BlockingConnection(
                    self.cluster.amqpParams(connection_attempts=20, retry_delay=0.25)
                )
            except AMQPError:
                continue
            try:
                channel = connection.channel()
                channel.basic_qos(prefetch_count=200)
                for method, properties, body in channel.consume(
                    QUEUE, inactivity_timeout=0.2
                ):
                    if self.stopping.is_set():
                        break
                    if method is None:
                        continue
                    self.received.append(body.decode("ascii"))
                    self.lastDelivery = time.monotonic()
                    channel.basic_ack(method.delivery_tag)
            except AMQPError:
                pass
            finally:
                try:
                    connection.close()
                except Exception:
                    pass


class TimedPublisher(Publisher):
    """
    L{Publisher} that reconnects sooner (40 tries 0.1 s apart), for the
    tests that measure when, and from which broker, confirms came back
    after a failover (L{ConfirmedPublisher.confirmedSince}).
    """

    connectionAttempts = 40
    retryDelay = 0.1


@dataclass(frozen=True)
class Tally:
    """
    What the consumers of a failover test received against what its
    publishers sent: the count every such test prints and asserts on.

    @ivar confirmed: how many messages were confirmed.
    @ivar delivered: how many distinct messages were delivered.
    @ivar lost: the ids confirmed and never delivered (must be none).
    @ivar unexpected: the ids delivered and never published (must be none).
    @ivar duplicated: how many messages were delivered more than once
        (allowed: delivery is at-least-once).
    """

    confirmed: int
    delivered: int
    lost: set[str]
    unexpected: set[str]
    duplicated: int

    @classmethod
    def of(cls, confirmed: set[str], attempted: set[str], received: Iterable[str]) -> Tally:
        """
        Count.

        @param confirmed: the ids the publishers had confirmed.
        @param attempted: the ids the publishers tried to publish.
        @param received: every id delivered, duplicates included.
        """
        counts = Counter(received)
        delivered = set(counts)
        return cls(
            confirmed=len(confirmed),
            delivered=len(delivered),
            lost=confirmed - delivered,
            unexpected=delivered - attempted,
            duplicated=sum(1 for count in counts.values() if count > 1),
        )

    def summary(self) -> str:
        """
        The count in words, for a test's report.
        """
        return (
            f"{self.confirmed} confirmed, {self.delivered} delivered:"
            f" lost {len(self.lost)}, unexpected {len(self.unexpected)},"
            f" duplicated {self.duplicated}"
        )


def failoverFigures(failovers: Sequence[float]) -> str:
    """
    The failover times of a run in words: median, worst and each one.

    @param failovers: seconds from each kill to the first confirm after it.
    """
    return (
        f"median {statistics.median(failovers):.2f} s, worst {max(failovers):.2f} s,"
        f" each {' '.join(f'{f:.2f}' for f in failovers)}"
    )


class SoakLoad:
    """
    The load of a failover soak: confirmed publishers and consumers running
    against a cluster through every failover, drained and counted at the
    end.

    @ivar publishers: the publishers (C{p0}, C{p1}, ...).
    @ivar consumers: the consumers (C{c0}, C{c1}, ...).
    """

    def __init__(
        self,
        cluster: Cluster,
        publisher: type[Publisher] = Publisher,
        publishers: int = 3,
        consumers: int = 2,
    ) -> None:
        """
        @param cluster: where they publish and consume.
        @param publisher: the kind of publisher.
        @param publishers: how many publishers.
        @param consumers: how many consumers.
        """
        self._stopPublishing = threading.Event()
        self._stopConsuming = threading.Event()
        self.publishers = [publisher(f"p{i}", cluster, self._stopPublishing) for i in range(publishers)]
        self.consumers = [Consumer(f"c{i}", cluster, self._stopConsuming) for i in range(consumers)]

    def start(self) -> None:
        """
        Start every publisher and consumer.
        """
        for thread in [*self.publishers, *self.consumers]:
            thread.start()

    def confirmedCount(self) -> int:
        """
        How many messages the publishers had confirmed so far.
        """
        return sum(len(p.confirmed) for p in self.publishers)

    def waitForProgress(
        self, case: SynchronousTestCase, broker: ClusterBroker, count: int = 300, timeout: float = 10.0
    ) -> None:
        """
        Wait until the publishers have C{count} more confirms, waiting for
        C{broker} to log something between two looks.

        @raise AssertionError: (C{case}'s) after C{timeout} seconds.
        """
        before = self.confirmedCount()
        deadline = time.monotonic() + timeout
        while self.confirmedCount() < before + count:
            case.assertLess(time.monotonic(), deadline, "publishers made no progress")
            broker.waitForOutput(0.1)

    def longestGap(self) -> float:
        """
        The longest time any publisher waited between two confirms.
        """
        return max(p.longestGap for p in self.publishers)

    def drain(self, broker: ClusterBroker, timeout: float = 60.0) -> Tally:
        """
        Stop publishing, let the consumers take every confirmed message (for
        at most C{timeout} seconds, waiting for C{broker}, the primary, to
        log something between two looks), stop them and count.
        """
        self._stopPublishing.set()
        for publisher in self.publishers:
            publisher.join(timeout=30)
        confirmed = set().union(*(p.confirmed for p in self.publishers))
        attempted = set().union(*(p.attempted for p in self.publishers))
        deadline = time.monotonic() + timeout
        while True:
            received = set().union(*(set(c.received) for c in self.consumers))
            if confirmed <= received or time.monotonic() > deadline:
                break
            broker.waitForOutput(0.2)
        self._stopConsuming.set()
        for consumer in self.consumers:
            consumer.join(timeout=30)
        return Tally.of(confirmed, attempted, (id for c in self.consumers for id in c.received))


def adminCommand() -> list[str]:
    """
    The C{qha-admin} command of the Python running the tests.
    """
    script = os.path.join(os.path.dirname(sys.executable), "qha-admin")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-c", "from qha.admin.cli import main; main()"]
