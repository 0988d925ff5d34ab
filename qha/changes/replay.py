"""
Replaying the event stream: the L{Replicator} applies events to a virtual
host exactly, running no policy of its own. A backup applies its primary's
stream with it, and a store replays its journal's records with it.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from twisted.logger import Logger

from ..broker.errors import AMQPError
from ..broker.exchange import exchangeType
from ..broker.message import Message
from ..broker.queue import Queue
from ..broker.vhost import VirtualHost
from . import events as ev


def holdingsOf(vhost: VirtualHost) -> dict[str, Any]:
    """
    What the backup holds, for the primary to send only what it lacks: per
    queue its uuid and its entry ids as ranges.
    """
    holdings: dict[str, Any] = {}
    for queue in vhost.queues.values():
        ranges: list[list[int]] = []
        for id in queue.ids():
            if ranges and ranges[-1][1] == id - 1:
                ranges[-1][1] = id
            else:
                ranges.append([id, id])
        holdings[queue.name] = {"uuid": queue.uuid, "ids": ranges}
    return holdings


class Replicator:
    """
    Applies replication events to a backup's virtual host.

    @ivar members: the backups the primary last said it had.
    """

    log = Logger()

    def __init__(self, vhost: VirtualHost, caughtUp: Callable[[], None]) -> None:
        self.vhost = vhost
        self.caughtUp = caughtUp
        self.members: list[dict[str, str]] = []
        self.applied = 0

    def apply(self, data: bytes) -> None:
        """
        Apply every event in one box, in order.

        @raise ev.MalformedEvents: if the box cannot be decoded.
        """
        queues = self.vhost.queues
        for event in ev.readEvents(data):
            self.applied += 1
            kind = event[0]
            try:
                if kind == ev.ENQUEUED:
                    # The hot event, applied without the handler table.
                    queue = queues.get(event[1])
                    if queue is not None:
                        queue.replicaEnqueue(
                            Message(event[4], event[5], event[6]),
                            event[2],
                            event[3],
                            event[7],
                            event[8],
                        )
                    continue
                _handlers[kind](self, *event[1:])
            except AMQPError as error:
                # The primary accepted it; a difference here is a bug, not a
                # reason to stop following.
                self.log.warn(
                    "could not apply {event}: {error}", event=event[0], error=error.replyText
                )

    def _queue(self, name: str) -> Queue | None:
        return self.vhost.queues.get(name)

    def snapshot(self, data: bytes) -> None:
        present = json.loads(data)
        queues = present["queues"]
        for name, queue in list(self.vhost.queues.items()):
            if queues.get(name) != queue.uuid:
                # Gone from the primary, or deleted and recreated while we
                # were away.
                self.vhost.deleteQueue(name, owner=queue.owner)
        exchanges = set(present["exchanges"])
        for name in list(self.vhost.exchanges):
            if name and not name.startswith("amq.") and name not in exchanges:
                self.vhost.deleteExchange(name)
        # The snapshot sends every binding again: drop those held now, so
        # that one removed while this backup was away (or that of an
        # exchange deleted and recreated meanwhile) does not linger.
        for exchange in list(self.vhost.exchanges.values()):
            if exchange is not self.vhost.defaultExchange:
                for binding in list(exchange.bindings.values()):
                    self.vhost._removeBinding(binding, autoDelete=False)

    def queueDeclared(
        self,
        name: str,
        uuid: str,
        durable: bool,
        exclusive: bool,
        autoDelete: bool,
        everConsumed: bool,
        arguments: dict[str, Any],
    ) -> None:
        existing = self.vhost.queues.get(name)
        if existing is not None and existing.uuid != uuid:
            self.vhost.deleteQueue(name, owner=existing.owner)
            existing = None
        if existing is None:
            existing = self.vhost.declareQueue(
                name,
                durable=durable,
                autoDelete=autoDelete,
                arguments=arguments,
                replica=True,
                uuid=uuid,
            )
        # An auto-delete queue that had a consumer on the primary goes when
        # a promoted backup finds it without one (see Queue.promoted).
        existing.everConsumed = existing.everConsumed or everConsumed

    def queueDeleted(self, name: str, uuid: str) -> None:
        queue = self.vhost.queues.get(name)
        if queue is not None and queue.uuid == uuid:
            self.vhost.deleteQueue(name, owner=queue.owner)

    def exchangeDeclared(
        self,
        name: str,
        type: str,
        unused: str,
        durable: bool,
        autoDelete: bool,
        internal: bool,
        arguments: dict[str, Any],
    ) -> None:
        existing = self.vhost.exchanges.get(name)
        if existing is not None and existing.type != type:
            self.vhost.deleteExchange(name)
            existing = None
        if existing is None:
            exchangeType(type)
            self.vhost.declareExchange(
                name, type, durable=durable, autoDelete=autoDelete, internal=internal, arguments=arguments
            )

    def exchangeDeleted(self, name: str) -> None:
        self.vhost.deleteExchange(name)

    def bound(
        self, source: str, kind: bytes, destination: str, key: str, arguments: dict[str, Any]
    ) -> None:
        if kind == b"q":
            if destination in self.vhost.queues and source in self.vhost.exchanges:
                self.vhost.bindQueue(destination, source, key, arguments, replica=True)
        elif destination in self.vhost.exchanges and source in self.vhost.exchanges:
            self.vhost.bindExchange(destination, source, key, arguments)

    def unbound(
        self, source: str, kind: bytes, destination: str, key: str, arguments: dict[str, Any]
    ) -> None:
        if source not in self.vhost.exchanges:
            return
        if kind == b"q":
            if destination in self.vhost.queues:
                self.vhost.unbindQueue(destination, source, key, arguments, replica=True)
        elif destination in self.vhost.exchanges:
            self.vhost.unbindExchange(destination, source, key, arguments)

    def purged(self, name: str) -> None:
        queue = self._queue(name)
        if queue is not None:
            queue.replicaPurge()

    def dequeued(self, name: str, id: int) -> None:
        queue = self._queue(name)
        if queue is not None:
            queue.replicaDequeue(id)

    def acquired(self, name: str, id: int) -> None:
        queue = self._queue(name)
        if queue is not None:
            queue.replicaAcquire(id)

    def released(self, name: str, id: int) -> None:
        queue = self._queue(name)
        if queue is not None:
            queue.replicaRelease(id)

    def dequeuedRange(self, name: str, first: int, last: int) -> None:
        queue = self._queue(name)
        if queue is not None:
            queue.replicaDequeueRange(first, last)

    def acquiredRange(self, name: str, first: int, last: int) -> None:
        queue = self._queue(name)
        if queue is not None:
            queue.replicaAcquireRange(first, last)

    def caughtUpMarker(self) -> None:
        self.caughtUp()

    def membersChanged(self, data: bytes) -> None:
        self.members = json.loads(data)


_handlers: dict[bytes, Callable[..., None]] = {
    ev.SNAPSHOT: Replicator.snapshot,
    ev.QUEUE_DECLARED: Replicator.queueDeclared,
    ev.QUEUE_DELETED: Replicator.queueDeleted,
    ev.EXCHANGE_DECLARED: Replicator.exchangeDeclared,
    ev.EXCHANGE_DELETED: Replicator.exchangeDeleted,
    ev.BOUND: Replicator.bound,
    ev.UNBOUND: Replicator.unbound,
    ev.PURGED: Replicator.purged,
    ev.DEQUEUED: Replicator.dequeued,
    ev.ACQUIRED: Replicator.acquired,
    ev.RELEASED: Replicator.released,
    ev.DEQUEUED_RANGE: Replicator.dequeuedRange,
    ev.ACQUIRED_RANGE: Replicator.acquiredRange,
    ev.CAUGHT_UP: Replicator.caughtUpMarker,
    ev.MEMBERS: Replicator.membersChanged,
}
