"""
Queues, their entries and their consumers.

A queue holds L{Entry} objects in order. Each entry has a per-queue id that
only grows (the replication id of the cluster work), so a message that a
consumer held and gave back returns to its old place. Every change to a queue
is reported, in order, to the virtual host's observers.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Iterable, Protocol

from .message import Message

if TYPE_CHECKING:
    from .vhost import VirtualHost


class DeliveryTarget(Protocol):
    """
    What a consumer delivers to: in practice an AMQP channel.
    """

    def canDeliver(self, consumer: "Consumer") -> bool:
        """
        Whether C{consumer} may take another message now (credit, flow, a
        writable socket).
        """

    def deliver(self, consumer: "Consumer", entry: "Entry") -> None:
        """
        Send C{entry} to the client of C{consumer}.
        """

    def consumerCancelled(self, consumer: "Consumer") -> None:
        """
        The broker cancelled C{consumer} (its queue was deleted).
        """


class Entry:
    """
    A message's place in one queue.

    @ivar id: the per-queue id, increasing in enqueue order.
    @ivar redelivered: whether the message was delivered before.
    """

    __slots__ = ("message", "id", "redelivered")

    def __init__(self, message: Message, id: int, redelivered: bool = False) -> None:
        self.message = message
        self.id = id
        self.redelivered = redelivered

    def __repr__(self) -> str:
        return f"<Entry {self.id} redelivered={self.redelivered} {self.message!r}>"


class Consumer:
    """
    A subscription of a delivery target to a queue.

    @ivar unacked: how many messages this consumer holds unacknowledged.
    @ivar prefetch: the most it may hold (0: no limit).
    """

    __slots__ = (
        "queue",
        "tag",
        "noAck",
        "exclusive",
        "target",
        "prefetch",
        "unacked",
        "arguments",
        "deliverPrefix",
    )

    def __init__(
        self,
        queue: "Queue",
        tag: str,
        target: DeliveryTarget,
        noAck: bool = False,
        exclusive: bool = False,
        prefetch: int = 0,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        self.queue = queue
        self.tag = tag
        self.target = target
        self.noAck = noAck
        self.exclusive = exclusive
        self.prefetch = prefetch
        self.unacked = 0
        self.arguments = arguments or {}
        self.deliverPrefix = b""

    def __repr__(self) -> str:
        return f"<Consumer {self.tag!r} on {self.queue.name!r}>"


class Queue:
    """
    A queue: entries in order, consumers served in turn.

    @ivar owner: for an exclusive queue, the connection that owns it.
    @ivar everConsumed: whether a consumer ever subscribed (an auto-delete
        queue is deleted when its last consumer goes, not before it had one).
    @ivar unacked: how many entries consumers hold unacknowledged.
    """

    def __init__(
        self,
        vhost: "VirtualHost",
        name: str,
        durable: bool = False,
        exclusive: bool = False,
        autoDelete: bool = False,
        arguments: dict[str, Any] | None = None,
        owner: object = None,
    ) -> None:
        self.vhost = vhost
        self.name = name
        self.durable = durable
        self.exclusive = exclusive
        self.autoDelete = autoDelete
        self.arguments = arguments or {}
        self.owner = owner
        self.entries: deque[Entry] = deque()
        self.consumers: deque[Consumer] = deque()
        self.bindings: set[Any] = set()
        self.nextId = 1
        self.unacked = 0
        self.everConsumed = False
        self.deleted = False
        self._dispatching = False

    def __repr__(self) -> str:
        return f"<Queue {self.name!r} ready={len(self.entries)} unacked={self.unacked}>"

    @property
    def messageCount(self) -> int:
        """
        How many messages are ready for delivery (not held by a consumer).
        """
        return len(self.entries)

    @property
    def consumerCount(self) -> int:
        """
        How many consumers the queue has.
        """
        return len(self.consumers)

    def enqueue(self, message: Message) -> Entry:
        """
        Append C{message} and deliver what can be delivered.
        """
        entry = Entry(message, self.nextId)
        self.nextId += 1
        self.entries.append(entry)
        vhost = self.vhost
        vhost.resources.add(len(message.body))
        if vhost.observers:
            for observer in vhost.observers:
                observer.enqueued(self, entry)
        if self.consumers:
            self.dispatch()
        return entry

    def dispatch(self) -> None:
        """
        Deliver ready entries to consumers that can take them, in turn.
        """
        if self._dispatching:
            return
        self._dispatching = True
        try:
            entries = self.entries
            consumers = self.consumers
            while entries and consumers:
                for _ in range(len(consumers)):
                    consumer = consumers[0]
                    consumers.rotate(-1)
                    if consumer.target.canDeliver(consumer):
                        entry = entries.popleft()
                        self._delivered(consumer, entry)
                        break
                else:
                    return
        finally:
            self._dispatching = False

    def _delivered(self, consumer: Consumer, entry: Entry) -> None:
        """
        Hand C{entry} to C{consumer}; with no-ack it is settled at once.
        """
        vhost = self.vhost
        if vhost.observers:
            for observer in vhost.observers:
                observer.acquired(self, entry)
        if consumer.noAck:
            consumer.target.deliver(consumer, entry)
            self.settle(entry)
        else:
            consumer.unacked += 1
            self.unacked += 1
            consumer.target.deliver(consumer, entry)

    def get(self) -> Entry | None:
        """
        Take the first ready entry for basic.get, or L{None} if there is none.

        The caller settles or releases it.
        """
        if not self.entries:
            return None
        entry = self.entries.popleft()
        vhost = self.vhost
        if vhost.observers:
            for observer in vhost.observers:
                observer.acquired(self, entry)
        return entry

    def settle(self, entry: Entry) -> None:
        """
        C{entry} was acknowledged (or delivered with no-ack): it is gone.
        """
        vhost = self.vhost
        vhost.resources.remove(len(entry.message.body))
        if vhost.observers and not self.deleted:
            for observer in vhost.observers:
                observer.dequeued(self, entry)

    def release(self, entries: Iterable[Entry], redelivered: bool = True) -> None:
        """
        Put C{entries} back in their places (by id), marked redelivered.
        """
        if self.deleted:
            for entry in entries:
                self.vhost.resources.remove(len(entry.message.body))
            return
        ready = self.entries
        vhost = self.vhost
        for entry in sorted(entries, key=lambda e: e.id, reverse=True):
            entry.redelivered = entry.redelivered or redelivered
            if not ready or entry.id < ready[0].id:
                ready.appendleft(entry)
            else:
                position = 0
                for position, other in enumerate(ready):
                    if other.id > entry.id:
                        break
                else:
                    position = len(ready)
                ready.insert(position, entry)
            if vhost.observers:
                for observer in vhost.observers:
                    observer.released(self, entry)
        if self.consumers:
            self.dispatch()

    def consumerSettled(self, consumer: Consumer | None, count: int = 1) -> None:
        """
        C{count} entries that C{consumer} held were acked or given back: it
        has credit again.
        """
        self.unacked -= count
        if consumer is not None:
            consumer.unacked -= count

    def addConsumer(self, consumer: Consumer) -> None:
        """
        Subscribe C{consumer} and deliver what it can take.
        """
        self.consumers.append(consumer)
        self.everConsumed = True
        self.dispatch()

    def removeConsumer(self, consumer: Consumer) -> None:
        """
        Unsubscribe C{consumer}; an auto-delete queue goes with its last one.
        """
        try:
            self.consumers.remove(consumer)
        except ValueError:
            return
        if self.autoDelete and not self.consumers and not self.deleted:
            self.vhost.deleteQueue(self.name, owner=self.owner)

    def purge(self) -> int:
        """
        Drop every ready entry; entries held by consumers stay.
        """
        count = len(self.entries)
        size = sum(len(entry.message.body) for entry in self.entries)
        self.entries.clear()
        if count:
            self.vhost.resources.remove(size, count)
        for observer in self.vhost.observers:
            observer.purged(self, count)
        return count

    def hasExclusiveConsumer(self) -> bool:
        """
        Whether a consumer holds this queue exclusively.
        """
        return any(consumer.exclusive for consumer in self.consumers)
