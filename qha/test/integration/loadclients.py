"""
The clients the failover tests and soaks run against a cluster of real
brokers: confirmed publishers (L{Publisher}, and L{TimedPublisher} that
also records when and from which broker each confirm came) and a consumer
(L{Consumer}), each a thread that reconnects through every broker's address
after a failover; and the C{qha-admin} command of the running Python.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import pika
from pika.exceptions import AMQPError

from qha.test.integration.cluster import Cluster

__all__ = ["QUEUE", "Consumer", "Publisher", "TimedPublisher", "adminCommand"]

QUEUE = "soak"
"""
The queue the clients publish to and consume from.
"""


class Publisher(threading.Thread):
    """
    Publishes numbered messages with confirms, reconnecting through every
    broker's address after each failover.

    @ivar attempted: ids it tried to publish.
    @ivar confirmed: ids the broker confirmed.
    @ivar longestGap: the longest time between two confirms, in seconds.
    """

    def __init__(self, name: str, cluster: Cluster, stop: threading.Event) -> None:
        """
        @param name: the prefix of its message ids, and the thread's name.
        @param cluster: where it publishes.
        @param stop: set to stop it.
        """
        super().__init__(name=name, daemon=True)
        self.cluster = cluster
        self.stopping = stop
        self.attempted: set[str] = set()
        self.confirmed: set[str] = set()
        self.longestGap = 0.0
        self.errors = 0

    def run(self) -> None:
        """
        Publish numbered messages with confirms until stopped.
        """
        sequence = 0
        lastConfirm = time.monotonic()
        while not self.stopping.is_set():
            try:
                connection = pika.BlockingConnection(
                    self.cluster.amqpParams(connection_attempts=20, retry_delay=0.25)
                )
            except AMQPError:
                self.errors += 1
                continue
            try:
                channel = connection.channel()
                channel.confirm_delivery()
                while not self.stopping.is_set():
                    sequence += 1
                    id = f"{self.name}-{sequence}"
                    self.attempted.add(id)
                    channel.basic_publish("", QUEUE, id.encode("ascii"))
                    self.confirmed.add(id)
                    now = time.monotonic()
                    self.longestGap = max(self.longestGap, now - lastConfirm)
                    lastConfirm = now
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
    L{Publisher} that also records when each confirm arrived and from which
    broker, so that a test can say which broker confirmed what, and when.

    @ivar confirms: (monotonic time, AMQP port) of every confirm, in order.
    @ivar sentAt: the monotonic time each confirmed publish was sent, in
        the order of C{confirms}.
    """

    def __init__(self, name: str, cluster: Cluster, stop: threading.Event) -> None:
        """
        @param name: the prefix of its message ids.
        @param cluster: where it publishes.
        @param stop: set to stop it.
        """
        super().__init__(name, cluster, stop)
        self.confirms: list[tuple[float, int]] = []
        self.sentAt: list[float] = []

    def run(self) -> None:
        """
        Publish numbered messages with confirms until stopped, reconnecting
        through every broker's address whenever the connection fails.
        """
        sequence = 0
        lastConfirm = time.monotonic()
        while not self.stopping.is_set():
            try:
                connection = pika.BlockingConnection(
                    self.cluster.amqpParams(connection_attempts=40, retry_delay=0.1)
                )
            except AMQPError:
                self.errors += 1
                continue
            port = connection._impl.params.port
            try:
                channel = connection.channel()
                channel.confirm_delivery()
                while not self.stopping.is_set():
                    sequence += 1
                    id = f"{self.name}-{sequence}"
                    self.attempted.add(id)
                    sent = time.monotonic()
                    channel.basic_publish("", QUEUE, id.encode("ascii"))
                    now = time.monotonic()
                    self.confirmed.add(id)
                    self.sentAt.append(sent)
                    self.confirms.append((now, port))
                    self.longestGap = max(self.longestGap, now - lastConfirm)
                    lastConfirm = now
            except AMQPError:
                self.errors += 1
            finally:
                try:
                    connection.close()
                except Exception:
                    pass

    def confirmedSince(
        self, moment: float, port: int | None = None, sentAfter: float | None = None
    ) -> list[float]:
        """
        The times of the confirms after C{moment} (from broker C{port}
        only, if given; of publishes sent after C{sentAfter} only, if
        given).
        """
        confirms, sentAt = list(self.confirms), list(self.sentAt)
        return [
            t
            for (t, p), sent in zip(confirms, sentAt)
            if t > moment
            and (port is None or p == port)
            and (sentAfter is None or sent > sentAfter)
        ]


def adminCommand() -> list[str]:
    """
    The C{qha-admin} command of the Python running the tests.
    """
    script = os.path.join(os.path.dirname(sys.executable), "qha-admin")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-c", "from qha.admin.cli import main; main()"]
