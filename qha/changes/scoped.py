"""
Writing the changes of several virtual hosts into one stream: a
L{ScopedObserver} observes one virtual host for a writer of events (the
replication source, the store) and marks the stream with the virtual host
(L{qha.changes.events.EventWriter.scope}) before passing each change on.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..broker.exchange import Binding, Exchange
from ..broker.queue import Entry, Queue
from ..broker.vhost import VirtualHost


class ScopedObserver:
    """
    A L{qha.broker.vhost.BrokerObserver} of one virtual host that scopes
    its owner's C{writer} to that virtual host, then tells the owner.

    @ivar owner: the observer that writes the events; it has a C{writer}
        (an L{qha.changes.events.EventWriter}).
    @ivar name: the virtual host's name.
    """

    __slots__ = ("owner", "name")

    def __init__(self, owner: Any, name: str) -> None:
        self.owner = owner
        self.name = name

    def __repr__(self) -> str:
        return f"<ScopedObserver of {self.name!r} for {self.owner!r}>"

    def _scope(self) -> Any:
        owner = self.owner
        writer = owner.writer
        if writer.vhost != self.name:
            writer.scope(self.name)
        return owner

    def queueDeclared(self, queue: Queue) -> None:
        self._scope().queueDeclared(queue)

    def queueDeleted(self, queue: Queue) -> None:
        self._scope().queueDeleted(queue)

    def exchangeDeclared(self, exchange: Exchange) -> None:
        self._scope().exchangeDeclared(exchange)

    def exchangeDeleted(self, exchange: Exchange) -> None:
        self._scope().exchangeDeleted(exchange)

    def bound(self, binding: Binding) -> None:
        self._scope().bound(binding)

    def unbound(self, binding: Binding) -> None:
        self._scope().unbound(binding)

    def enqueued(self, queue: Queue, entry: Entry) -> None:
        # The hot event: scoped here rather than through _scope.
        owner = self.owner
        writer = owner.writer
        if writer.vhost != self.name:
            writer.scope(self.name)
        owner.enqueued(queue, entry)

    def acquired(self, queue: Queue, entries: Sequence[Entry]) -> None:
        self._scope().acquired(queue, entries)

    def released(self, queue: Queue, entry: Entry) -> None:
        self._scope().released(queue, entry)

    def dequeued(self, queue: Queue, entries: Sequence[Entry]) -> None:
        self._scope().dequeued(queue, entries)

    def purged(self, queue: Queue, count: int) -> None:
        self._scope().purged(queue, count)


def observe(
    vhost: VirtualHost,
    owner: Any,
    first: bool = False,
    kind: type[ScopedObserver] = ScopedObserver,
) -> ScopedObserver:
    """
    Make C{owner} observe C{vhost} through a L{ScopedObserver}.

    @param first: before the other observers (the store: a journal record
        is written before the replication box that carries it is
        answered).
    @param kind: the class of the observer: a L{ScopedObserver}, or a
        subclass that does an owner's hot events itself (one call a
        message less).
    @return: the observer added.
    """
    for observer in vhost.observers:
        if isinstance(observer, ScopedObserver) and observer.owner is owner:
            return observer
    scoped = kind(owner, vhost.name)
    if first:
        vhost.observers.insert(0, scoped)
    else:
        vhost.observers.append(scoped)
    return scoped


def unobserve(vhost: VirtualHost, owner: Any) -> None:
    """
    C{owner} stops observing C{vhost}.
    """
    vhost.observers[:] = [
        observer
        for observer in vhost.observers
        if not (isinstance(observer, ScopedObserver) and observer.owner is owner)
        and observer is not owner
    ]


__all__ = ["ScopedObserver", "observe", "unobserve"]
