"""
The broker's virtual hosts: L{VirtualHosts} holds them by name, the default
one (C{/}) always, and adds and deletes others at run time. Each is isolated
from the others: its own exchanges, queues and bindings. They share the
broker's memory accounting and clock.

The registry is found from the default virtual host (L{VirtualHosts.of}),
so that every part built around the broker's one L{VirtualHost} (the AMQP
factory, the replication, the store) shares it without being handed it.
"""

from __future__ import annotations

from typing import Iterator, Protocol

from .errors import NotAllowed, NotFound, PreconditionFailed
from .vhost import DirectReplyTarget, VirtualHost

DEFAULT_VHOST = "/"
# The longest vhost name: an AMQP short string, like the events' names.
MAX_VHOST_NAME = 255


class VirtualHostsObserver(Protocol):
    """
    Told when a virtual host is added or deleted (the replication stream,
    the store, the AMQP factory that closes a deleted vhost's connections).
    """

    def vhostAdded(self, vhost: VirtualHost) -> None:
        """
        C{vhost} was added (empty but for its built-in exchanges).
        """

    def vhostDeleted(self, vhost: VirtualHost) -> None:
        """
        C{vhost} was deleted, after its queues and exchanges (whose
        deletions its own observers were told of).
        """


def checkVhostName(name: object) -> str:
    """
    The name of a virtual host, checked: a non-empty string of at most
    L{MAX_VHOST_NAME} bytes of UTF-8, without control characters.

    @raise PreconditionFailed: saying what is wrong.
    """
    if not isinstance(name, str) or not name:
        raise PreconditionFailed("a vhost name must be a non-empty string")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_VHOST_NAME:
        raise PreconditionFailed(f"vhost name of more than {MAX_VHOST_NAME} bytes")
    if any(ord(character) < 32 or ord(character) == 127 for character in name):
        raise PreconditionFailed(f"vhost name {name!r} contains a control character")
    return name


class VirtualHosts:
    """
    The broker's virtual hosts, by name.

    @ivar default: the default virtual host, C{/}; it cannot be deleted.
    @ivar observers: told of every vhost added or deleted, in order.
    @ivar retired: the changes of deleted virtual hosts and the additions
        and deletions themselves, so that L{changes} never goes back.
    @ivar replies: the broker's direct reply-to consumers, to which a
        message dead-lettered to a reply address goes (set by the AMQP
        factory; L{None}: there are none).
    """

    def __init__(self, default: VirtualHost | None = None) -> None:
        """
        @param default: the default virtual host; a new C{/} if L{None}.
        """
        if default is None:
            default = VirtualHost(DEFAULT_VHOST)
        self.default = default
        self.hosts: dict[str, VirtualHost] = {default.name: default}
        self.observers: list[VirtualHostsObserver] = []
        self.retired = 0
        self.replies: DirectReplyTarget | None = None
        default.registry = self

    @classmethod
    def of(cls, vhost: VirtualHost) -> "VirtualHosts":
        """
        The registry C{vhost} belongs to; a new one with C{vhost} as its
        default if it belongs to none yet.
        """
        registry = vhost.registry
        if registry is None:
            registry = cls(vhost)
        assert isinstance(registry, VirtualHosts)
        return registry

    def __iter__(self) -> Iterator[VirtualHost]:
        """
        The virtual hosts: the default one first, then the others in the
        order they were added.
        """
        return iter(list(self.hosts.values()))

    def __len__(self) -> int:
        return len(self.hosts)

    def __contains__(self, name: object) -> bool:
        return name in self.hosts

    def get(self, name: str) -> VirtualHost | None:
        """
        The virtual host called C{name}, or L{None}.
        """
        return self.hosts.get(name)

    def names(self) -> list[str]:
        """
        The names of the virtual hosts, sorted.
        """
        return sorted(self.hosts)

    @property
    def changes(self) -> int:
        """
        How many changes every virtual host, present or deleted, reported,
        and how many were added or deleted: a primary's position.
        """
        return self.retired + sum(vhost.changes for vhost in self.hosts.values())

    @changes.setter
    def changes(self, position: int) -> None:
        """
        Go on counting from C{position} (a broker restarted from its store,
        or a backup told the primary's position): the default virtual host
        takes up the difference.
        """
        self.default.changes += position - self.changes

    def add(self, name: str) -> VirtualHost:
        """
        Add a virtual host called C{name}.

        @raise PreconditionFailed: if the name is not valid or one exists.
        """
        checkVhostName(name)
        if name in self.hosts:
            raise PreconditionFailed(f"vhost '{name}' already exists")
        return self._add(name)

    def ensure(self, name: str) -> VirtualHost:
        """
        The virtual host called C{name}, added if there is none (a replica
        following its primary, a store replaying its journal).
        """
        existing = self.hosts.get(name)
        if existing is not None:
            return existing
        checkVhostName(name)
        return self._add(name)

    def _add(self, name: str) -> VirtualHost:
        default = self.default
        vhost = VirtualHost(name, default.resources, clock=default.clock)
        vhost.defaultReplicate = default.defaultReplicate
        vhost.registry = self
        self.hosts[name] = vhost
        self.retired += 1
        for observer in list(self.observers):
            observer.vhostAdded(vhost)
        return vhost

    def delete(self, name: str) -> VirtualHost:
        """
        Delete the virtual host called C{name} with its queues (their
        consumers are cancelled) and exchanges; the observers hear of each
        deletion, then of the virtual host's.

        @raise NotFound: if there is none.
        @raise NotAllowed: for the default virtual host.
        """
        vhost = self.hosts.get(name)
        if vhost is None:
            raise NotFound(f"vhost '{name}' not found")
        if vhost is self.default:
            raise NotAllowed(f"the default vhost '{name}' cannot be deleted")
        for queue in list(vhost.queues.values()):
            vhost.deleteQueue(queue.name, owner=queue.owner)
        for exchangeName in list(vhost.exchanges):
            if exchangeName and not exchangeName.startswith("amq."):
                vhost.deleteExchange(exchangeName)
        del self.hosts[name]
        self.retired += vhost.changes + 1
        for observer in list(self.observers):
            observer.vhostDeleted(vhost)
        return vhost


__all__ = [
    "DEFAULT_VHOST",
    "MAX_VHOST_NAME",
    "VirtualHosts",
    "VirtualHostsObserver",
    "checkVhostName",
]
