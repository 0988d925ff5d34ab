"""
Public fakes for testing code that uses the broker model, shared by qha's own
tests and by anyone building on L{qha.broker}.

L{RecordingTarget} stands in for an AMQP channel as a consumer's
L{DeliveryTarget}: it records what it is given and takes only as many
messages as it has credit for. L{RecordingObserver} records every
L{BrokerObserver} event, in order, in a form that is easy to compare.

L{FakeConfirmHolder} and L{FakeReplicationPacer} stand in for the
replication gate and the store where an AMQP channel or connection meets
them, through L{IConfirmHolder} and L{IReplicationPacer}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

from zope.interface import implementer

from .amqp.holders import Completion, IConfirmHolder, IReplicationPacer
from .broker.exchange import Binding, Exchange
from .broker.message import Message
from .broker.queue import Consumer, DeliveryTarget, Entry, Queue
from .broker.vhost import BrokerObserver

__all__ = [
    "FakeConfirmHolder",
    "FakeReplicationPacer",
    "RecordingObserver",
    "RecordingTarget",
]


class RecordingTarget:
    """
    A L{DeliveryTarget} that records deliveries and cancellations.

    It takes a message when it has credit left (L{None}: unlimited) and the
    consumer is under its own prefetch limit, as a channel would.

    @ivar credit: how many more messages it will take, or L{None} for no
        limit; each delivery uses one.
    @ivar deliveries: every C{(consumer, entry)} delivered, in order.
    @ivar cancelled: every consumer the broker cancelled, in order.
    """

    def __init__(self, credit: int | None = None) -> None:
        """
        @param credit: the initial credit, L{None} for no limit.
        """
        self.credit = credit
        self.deliveries: list[tuple[Consumer, Entry]] = []
        self.cancelled: list[Consumer] = []

    def canDeliver(self, consumer: Consumer) -> bool:
        """
        Whether there is credit left and C{consumer} is under its prefetch.
        """
        if self.credit is not None and self.credit <= 0:
            return False
        return consumer.prefetch == 0 or consumer.unacked < consumer.prefetch

    def deliver(self, consumer: Consumer, entry: Entry) -> None:
        """
        Record the delivery and use one credit.
        """
        self.deliveries.append((consumer, entry))
        if self.credit is not None:
            self.credit -= 1

    def consumerCancelled(self, consumer: Consumer) -> None:
        """
        Record that the broker cancelled C{consumer}.
        """
        self.cancelled.append(consumer)

    def grant(self, credit: int) -> None:
        """
        Allow C{credit} more deliveries (from no limit, to exactly that many).

        The caller asks the queues to dispatch again, as a channel does when
        the client acknowledges or raises its prefetch.
        """
        self.credit = (self.credit or 0) + credit

    def bodies(self) -> list[bytes]:
        """
        The bodies of the messages delivered, in order.
        """
        return [entry.message.body for _, entry in self.deliveries]

    def tags(self) -> list[str]:
        """
        The tags of the consumers that received each delivery, in order.
        """
        return [consumer.tag for consumer, _ in self.deliveries]

    def ack(self, consumer: Consumer, entry: Entry) -> None:
        """
        Acknowledge a delivery, as a channel does on basic.ack: the consumer
        gets its credit back, the entry is settled and the queue dispatches.
        """
        queue = consumer.queue
        queue.consumerSettled(consumer)
        queue.settle(entry)
        queue.dispatch()


def _bindingDescription(binding: Binding) -> tuple[str, str, str]:
    """
    A binding as C{(source, destination, routing key)} names.
    """
    return (binding.source.name, binding.destination.name, binding.routingKey)


class RecordingObserver:
    """
    A L{BrokerObserver} that records every event, in order.

    @ivar events: one tuple per event: its name, then the names and ids that
        identify what it is about, e.g. C{("enqueued", "q", 1)} or
        C{("bound", "amq.direct", "q", "key")}.
    @ivar calls: one tuple per event: its name, then the objects it was
        called with.
    """

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.calls: list[tuple[Any, ...]] = []

    def clear(self) -> None:
        """
        Forget the events recorded so far.
        """
        del self.events[:]
        del self.calls[:]

    def queueDeclared(self, queue: Queue) -> None:
        """
        Record a declared queue.
        """
        self.events.append(("queueDeclared", queue.name))
        self.calls.append(("queueDeclared", queue))

    def queueDeleted(self, queue: Queue) -> None:
        """
        Record a deleted queue.
        """
        self.events.append(("queueDeleted", queue.name))
        self.calls.append(("queueDeleted", queue))

    def exchangeDeclared(self, exchange: Exchange) -> None:
        """
        Record a declared exchange.
        """
        self.events.append(("exchangeDeclared", exchange.name))
        self.calls.append(("exchangeDeclared", exchange))

    def exchangeDeleted(self, exchange: Exchange) -> None:
        """
        Record a deleted exchange.
        """
        self.events.append(("exchangeDeleted", exchange.name))
        self.calls.append(("exchangeDeleted", exchange))

    def bound(self, binding: Binding) -> None:
        """
        Record a new binding.
        """
        self.events.append(("bound",) + _bindingDescription(binding))
        self.calls.append(("bound", binding))

    def unbound(self, binding: Binding) -> None:
        """
        Record a removed binding.
        """
        self.events.append(("unbound",) + _bindingDescription(binding))
        self.calls.append(("unbound", binding))

    def enqueued(self, queue: Queue, entry: Entry) -> None:
        """
        Record a message added to a queue.
        """
        self.events.append(("enqueued", queue.name, entry.id))
        self.calls.append(("enqueued", queue, entry))

    def acquired(self, queue: Queue, entries: Sequence[Entry]) -> None:
        """
        Record messages taken by consumers or basic.get, one event each.
        """
        for entry in entries:
            self.events.append(("acquired", queue.name, entry.id))
            self.calls.append(("acquired", queue, entry))

    def released(self, queue: Queue, entry: Entry) -> None:
        """
        Record a message given back to its queue.
        """
        self.events.append(("released", queue.name, entry.id))
        self.calls.append(("released", queue, entry))

    def dequeued(self, queue: Queue, entries: Sequence[Entry]) -> None:
        """
        Record messages gone for good (acknowledged, or dropped), one event
        each.
        """
        for entry in entries:
            self.events.append(("dequeued", queue.name, entry.id))
            self.calls.append(("dequeued", queue, entry))

    def purged(self, queue: Queue, count: int) -> None:
        """
        Record a purge of C{count} messages.
        """
        self.events.append(("purged", queue.name, count))
        self.calls.append(("purged", queue, count))



@implementer(IConfirmHolder)
class FakeConfirmHolder:
    """
    An L{IConfirmHolder} that holds publishes until told to let them go.

    Like the real holders, the publishes it holds between two L{release}s
    share one completion.

    @ivar holding: whether it holds publishes (else it answers L{None}).
    @ivar held: every C{(queue names, message)} it was asked to hold, in
        order.
    @ivar current: the completion publishes are held on now, if any.
    """

    def __init__(self, holding: bool = True) -> None:
        """
        @param holding: whether it holds publishes at first.
        """
        self.holding = holding
        self.held: list[tuple[list[str], Message]] = []
        self.current: Completion | None = None

    def hold(self, queues: list[Queue], message: Message) -> Completion | None:
        """
        Record the publish; hold it on the current completion if holding.
        """
        self.held.append(([queue.name for queue in queues], message))
        if not self.holding:
            return None
        if self.current is None:
            self.current = Completion(0)
            self.current.holds = 1
        return self.current

    def release(self) -> None:
        """
        Let every publish held so far be confirmed; later ones wait on a new
        completion.
        """
        current, self.current = self.current, None
        if current is not None:
            current.holds -= 1
            current.check()


@implementer(IReplicationPacer)
class FakeReplicationPacer:
    """
    An L{IReplicationPacer} driven by hand: it paces while it has
    C{sources}, says the box is L{full} when told, and records the calls.

    @ivar sources: stand-ins for ready backups (one by default).
    @ivar full: whether connections should wait for the box.
    @ivar wait: what L{shouldWait} answers.
    @ivar asked: every C{buffered} L{shouldWait} was asked about.
    @ivar waiting: the C{resume} callables of the connections that wait.
    @ivar sent: how many times L{sendNow} was called.
    """

    def __init__(self) -> None:
        """
        Pacing (one source), box not full.
        """
        self.sources: set[Any] = {"backup"}
        self.full = False
        self.wait = True
        self.asked: list[int] = []
        self.waiting: list[Callable[[], None]] = []
        self.sent = 0

    def shouldWait(self, buffered: int) -> bool:
        """
        Record C{buffered}; answer L{wait}.
        """
        self.asked.append(buffered)
        return self.wait

    def whenSent(self, resume: Callable[[], None]) -> None:
        """
        Keep C{resume} until L{boxSent}.
        """
        self.waiting.append(resume)

    def sendNow(self) -> None:
        """
        Count the call.
        """
        self.sent += 1

    def boxSent(self) -> None:
        """
        The box went out: not full any more, and the waiting connections go
        on.
        """
        self.full = False
        waiting, self.waiting = self.waiting, []
        for resume in waiting:
            resume()


if TYPE_CHECKING:
    # mypy checks that the fakes provide the interfaces they stand in for.
    _target: DeliveryTarget = RecordingTarget()
    _observer: BrokerObserver = RecordingObserver()
