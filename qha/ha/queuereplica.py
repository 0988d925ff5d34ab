"""
Single-queue replication outside a cluster (Qpid's C{--ha-queue-replication}):
C{qha-admin -b B replicate REMOTE QUEUE} makes QUEUE on B a live replica of
QUEUE on REMOTE, and keeps following it when REMOTE is a cluster whose
primary changes.

The remote is trusted with that one queue and nothing else: its stream is
applied by a L{QueueReplicator}, which refuses a box naming any other queue
or any exchange (the link drops), and applies a snapshot to that queue
alone.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError
from twisted.logger import Logger

from ..broker.errors import AMQPError
from ..changes import events as ev
from ..changes.events import MalformedEvents
from ..changes.replay import Replicator, holdingsOf
from .commands import Subscribe
from .connection import NodeAMP
from .discovery import Search
from .link import BackupLink
from .locator import ReplicationLocator
from .role import PRIMARY_ROLES, STANDALONE

if TYPE_CHECKING:
    from .node import HANode


class QueueReplica:
    """
    Follows one queue of a remote broker (or of whichever broker of a
    remote cluster is primary), through a L{Search} that looks again when
    the link goes.

    @ivar remote: the remote brokers' AMP addresses.
    @ivar link: the live subscription, if any.
    """

    log = Logger()

    def __init__(self, node: "HANode", remote: list[str], queue: str) -> None:
        """
        @param node: this broker.
        @param remote: the remote brokers' AMP addresses.
        @param queue: the queue replicated.
        """
        self.node = node
        self.remote = remote
        self.queue = queue
        self.link: BackupLink | None = None
        self.stopped = False
        self.following: str | None = None
        self.search: Search | None = None

    def start(self) -> None:
        """
        Find the remote queue's broker and subscribe, and again whenever the
        link goes.
        """
        if self.stopped or self.search is not None:
            return
        self.search = Search(self.node.reactor, self._connect, f"broker with queue {self.queue!r}")
        self.search.start()

    async def _connect(self) -> NodeAMP | None:
        """
        Subscribe to the queue on the first remote broker that serves it.

        @return: the connection subscribed on, or L{None}.
        """
        node = self.node
        peers = node.peers
        for address in self.remote:
            try:
                protocol = await peers.connect(address)
            except CancelledError:
                raise
            except Exception:
                continue
            try:
                answer = await peers.hello(protocol)
                if answer["role"] not in PRIMARY_ROLES + (STANDALONE,):
                    peers.close(protocol)
                    continue
                link = QueueReplicaLink(node, protocol, answer["brokerId"], address, self)
                for locator in protocol.locator.locators:  # type: ignore[attr-defined]
                    if isinstance(locator, ReplicationLocator):
                        locator.link = link
                self.link = link
                holdings = {
                    name: value
                    for name, value in holdingsOf(node.vhost).items()
                    if name == self.queue
                }
                await peers.call(
                    protocol,
                    Subscribe,
                    brokerId=node.brokerId,
                    epoch=0,
                    address="",
                    holdings=json.dumps(holdings).encode("utf-8"),
                    queue=self.queue,
                )
                link.start()
                self.following = address
                self.log.info(
                    "queue {queue} replicates {queue} on {address}",
                    queue=self.queue,
                    address=address,
                )
                return protocol
            except BaseException as error:
                if not isinstance(error, CancelledError):
                    self.log.info(
                        "replicating queue {queue} from {address}: {error}",
                        queue=self.queue,
                        address=address,
                        error=str(error),
                    )
                if self.link is not None:
                    self.link.close()
                else:
                    peers.close(protocol)
                if isinstance(error, CancelledError):
                    raise
        return None

    def linkLost(self) -> None:
        """
        The remote went away: the search looks again (a cluster may have a
        new primary).
        """
        self.link = None
        self.following = None

    def stop(self) -> None:
        """
        Stop following.
        """
        self.stopped = True
        if self.search is not None:
            self.search.stop()
            self.search = None
        if self.link is not None:
            self.link.close()

    def describe(self) -> dict[str, Any]:
        """
        For C{qha-admin query}.
        """
        return {
            "queue": self.queue,
            "remote": ",".join(self.remote),
            "following": self.following,
        }


_QUEUE_EVENTS = frozenset(
    (
        ev.QUEUE_DECLARED,
        ev.QUEUE_DELETED,
        ev.PURGED,
        ev.ENQUEUED,
        ev.DEQUEUED,
        ev.ACQUIRED,
        ev.RELEASED,
        ev.DEQUEUED_RANGE,
        ev.ACQUIRED_RANGE,
    )
)
"""
The events that name a queue as their first field.
"""

_METHODS = {
    ev.QUEUE_DECLARED: "queueDeclared",
    ev.QUEUE_DELETED: "queueDeleted",
    ev.BOUND: "bound",
    ev.UNBOUND: "unbound",
    ev.PURGED: "purged",
    ev.DEQUEUED: "dequeued",
    ev.ACQUIRED: "acquired",
    ev.RELEASED: "released",
    ev.DEQUEUED_RANGE: "dequeuedRange",
    ev.ACQUIRED_RANGE: "acquiredRange",
    ev.CAUGHT_UP: "caughtUpMarker",
}
"""
The L{Replicator} method applying each event a single-queue stream may
carry (besides the snapshot and the enqueue, applied here).
"""


class QueueReplicator(Replicator):
    """
    Applies a remote's stream of one queue: every event must be of that
    queue (a binding of it to a built-in exchange at most), or the whole
    box is refused before anything of it is applied; a snapshot replaces
    that queue only. The stream's members (the remote's backups) are not
    this broker's business and are ignored.
    """

    def __init__(self, vhost: Any, queue: str, caughtUp: Any) -> None:
        """
        @param queue: the one queue replicated.
        """
        super().__init__(vhost, caughtUp)
        self.queue = queue

    def _refusal(self, event: tuple[Any, ...]) -> str | None:
        """
        Why C{event} has no place in this queue's stream, if it has none.
        """
        kind = event[0]
        if kind in _QUEUE_EVENTS:
            if event[1] != self.queue:
                return f"an event of queue {event[1][:64]!r}"
            return None
        if kind in (ev.BOUND, ev.UNBOUND):
            source, destinationKind, destination = event[1], event[2], event[3]
            if destinationKind != b"q" or destination != self.queue:
                return f"a binding to {destination[:64]!r}"
            if not source.startswith("amq."):
                return f"a binding from exchange {source[:64]!r}"
            return None
        if kind in (ev.SNAPSHOT, ev.CAUGHT_UP, ev.MEMBERS):
            return None
        if kind in (ev.EXCHANGE_DECLARED, ev.EXCHANGE_DELETED):
            return f"an event of exchange {event[1][:64]!r}"
        return f"an event of type {kind!r}"

    def apply(self, data: bytes) -> None:
        """
        Check every event of the box, then apply them in order.

        @raise MalformedEvents: if the box cannot be decoded, or names
            anything but this queue.
        """
        events = list(ev.readEvents(data))
        for event in events:
            refusal = self._refusal(event)
            if refusal is not None:
                raise MalformedEvents(
                    f"{refusal} in the replication stream of queue {self.queue!r}"
                )
        queues = self.vhost.queues
        for event in events:
            self.applied += 1
            kind = event[0]
            try:
                if kind == ev.ENQUEUED:
                    self.applyEnqueued(queues, event)
                elif kind == ev.SNAPSHOT:
                    self.queueSnapshot(event[1])
                elif kind != ev.MEMBERS:
                    getattr(self, _METHODS[kind])(*event[1:])
            except AMQPError as error:
                self.log.warn(
                    "could not apply {event}: {error}", event=event[0], error=error.replyText
                )

    def queueSnapshot(self, data: bytes) -> None:
        """
        The remote's snapshot, for this queue only: it goes if the remote
        no longer has it (or has another queue of its name); nothing else
        of this broker changes.

        @raise MalformedEvents: if the snapshot is not a JSON object with
            an object of queues.
        """
        try:
            present = json.loads(data)
        except (ValueError, RecursionError) as error:
            raise MalformedEvents(f"malformed snapshot event: {error}") from None
        queues = present.get("queues") if isinstance(present, dict) else None
        if not isinstance(queues, dict):
            raise MalformedEvents("malformed snapshot event: no object of queues")
        queue = self.vhost.queues.get(self.queue)
        if queue is not None and queues.get(self.queue) != queue.uuid:
            self.vhost.deleteQueue(self.queue, owner=queue.owner)


class QueueReplicaLink(BackupLink):
    """
    A subscription to one remote queue: catching up changes no role, and
    losing it means looking for the remote again.
    """

    def __init__(
        self, node: "HANode", connection: Any, primaryId: str, address: str, replica: QueueReplica
    ) -> None:
        """
        @param replica: the replica this link serves.
        """
        super().__init__(node, connection, primaryId, address)
        self.replica = replica
        self.replicator = QueueReplicator(node.vhost, replica.queue, self.caughtUp)

    def checkEpoch(self, epoch: int) -> None:
        """
        A remote standalone broker's or another cluster's epochs are not
        ours: they are not checked.
        """

    def caughtUp(self) -> None:
        """
        The queue caught up with the remote's.
        """
        self._caughtUp = True
        self.log.info(
            "queue {queue} caught up with {address}",
            queue=self.replica.queue,
            address=self.address,
        )

    def linkLost(self) -> None:
        """
        The remote went away: look for it (or its cluster's new primary).
        """
        self.replica.linkLost()
