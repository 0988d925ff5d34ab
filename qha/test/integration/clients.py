"""
Clients that the process-level tests share: what a pika consumer
received (L{Deliveries}), emptying a queue (L{drain}), and two publishers
with publisher confirms. L{ThreadedPublisher} publishes with pika in a
thread of its own, so that a test can wait for a confirm that may be held
with a bound; L{WindowedPublisher} speaks raw AMQP frames and keeps a
window of publishes unconfirmed, so that a kill always finds some in
flight.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Sequence

import pika
from pamqp import body as pamqpBody, commands, header as pamqpHeader
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import BasicProperties

from qha.test.integration.brokerprocess import RawConnection, methodFrame
from qha.test.integration.cluster import HOST

__all__ = ["Deliveries", "ThreadedPublisher", "WindowedPublisher", "drain"]

Delivery = tuple[Any, BasicProperties, bytes]


class Deliveries:
    """
    Collects what a pika consumer receives.
    """

    def __init__(self) -> None:
        """
        Nothing received yet.
        """
        self.received: list[Delivery] = []

    def __call__(
        self, channel: BlockingChannel, method: Any, properties: BasicProperties, body: bytes
    ) -> None:
        """
        pika's on_message_callback.
        """
        self.received.append((method, properties, body))

    @property
    def bodies(self) -> list[bytes]:
        """
        The bodies received, in order.
        """
        return [body for _, _, body in self.received]


def drain(channel: BlockingChannel, queue: str) -> list[bytes]:
    """
    Get every ready message of C{queue} with basic.get and no-ack.
    """
    bodies: list[bytes] = []
    while True:
        method, _, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return bodies
        bodies.append(body)


class ThreadedPublisher(threading.Thread):
    """
    Publishes with publisher confirms on a pika connection of its own, in
    its own thread, so that a test can wait for a confirm that may be held
    with a bound.

    It connects (to every broker's address in turn) as soon as it starts,
    then waits for L{go} before publishing, so that a test can open the
    connection before it pauses a broker and publish after.

    @ivar connected: set once the connection and channel are open.
    @ivar port: the AMQP port of the broker it connected to.
    @ivar confirmedAt: for each body confirmed, when (monotonic seconds).
    @ivar error: what went wrong, if something did.
    @ivar finished: set when the thread is done.
    """

    def __init__(
        self,
        parameters: Sequence[pika.ConnectionParameters],
        queue: str,
        bodies: Sequence[bytes],
        waitForGo: bool = False,
    ) -> None:
        """
        @param parameters: every broker's connection parameters.
        @param queue: where to publish (through the default exchange).
        @param bodies: what to publish, in order.
        @param waitForGo: whether to wait for L{go} once connected.
        """
        super().__init__(name="qha confirmed publisher", daemon=True)
        self.parameters = list(parameters)
        self.queue = queue
        self.bodies = list(bodies)
        self.connected = threading.Event()
        self.go = threading.Event()
        if not waitForGo:
            self.go.set()
        self.finished = threading.Event()
        self.port: int | None = None
        self.confirmedAt: list[float] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        """
        Connect, wait for the go, publish every body and wait for each
        confirm.
        """
        connection = None
        try:
            connection = pika.BlockingConnection(self.parameters)
            self.port = connection._impl.params.port
            channel = connection.channel()
            channel.confirm_delivery()
            self.connected.set()
            self.go.wait(30)
            for body in self.bodies:
                channel.basic_publish("", self.queue, body)
                self.confirmedAt.append(time.monotonic())
        except BaseException as error:
            self.error = error
        finally:
            self.connected.set()
            if connection is not None and connection.is_open:
                try:
                    connection.close()
                except Exception:
                    pass
            self.finished.set()


class WindowedPublisher:
    """
    A raw AMQP publisher with publisher confirms that keeps up to
    C{window} publishes unconfirmed, so that a kill always finds some in
    flight.

    @ivar sent: the bodies sent, in order (delivery tag = index + 1).
    @ivar confirmed: how many of the first sent are confirmed (the broker
        confirms in order on one queue; a C{multiple} ack covers all
        before it).
    """

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        """
        Connect to the broker on C{port}, open channel 1 and select
        confirms.
        """
        self.connection = RawConnection(port, HOST, timeout=timeout)
        self.connection.handshake()
        self.connection.openChannel(1)
        self.connection.sendMethod(1, commands.Confirm.Select())
        _, selectOk = self.connection.readMethod()
        assert isinstance(selectOk, commands.Confirm.SelectOk), selectOk
        self.sent: list[bytes] = []
        self.confirmed = 0

    def close(self) -> None:
        """
        Close the socket (the broker may be gone).
        """
        self.connection.close()

    def _frames(self, queue: str, body: bytes) -> bytes:
        """
        The frames of one persistent publish to C{queue} through the
        default exchange.
        """
        properties = commands.Basic.Properties(delivery_mode=2)
        return (
            methodFrame(1, commands.Basic.Publish(exchange="", routing_key=queue))
            + methodFrame(1, pamqpHeader.ContentHeader(0, len(body), properties))
            + methodFrame(1, pamqpBody.ContentBody(body))
        )

    def publish(
        self,
        queue: str,
        prefix: str,
        until: int,
        window: int = 200,
        then: Callable[[], None] | None = None,
        size: int = 0,
    ) -> None:
        """
        Publish C{prefix-N} bodies, keeping C{window} unconfirmed, until
        C{until} are confirmed; then send one more window's worth and, at
        once, call C{then} (the kill) with those in flight.

        @param size: pad each body with dots to this many bytes.
        """
        while self.confirmed < until:
            burst = []
            while len(self.sent) - self.confirmed < window:
                body = f"{prefix}-{len(self.sent)}".ljust(size, ".").encode("ascii")
                self.sent.append(body)
                burst.append(self._frames(queue, body))
            if burst:
                self.connection.send(b"".join(burst))
            _, method = self.connection.readMethod()
            if isinstance(method, commands.Basic.Ack):
                tag = method.delivery_tag
                if method.multiple or tag == self.confirmed + 1:
                    self.confirmed = max(self.confirmed, tag)
            else:
                raise AssertionError(f"the publisher got {method!r}")
        if then is not None:
            burst = []
            for _ in range(window):
                body = f"{prefix}-{len(self.sent)}".ljust(size, ".").encode("ascii")
                self.sent.append(body)
                burst.append(self._frames(queue, body))
            self.connection.send(b"".join(burst))
            then()
