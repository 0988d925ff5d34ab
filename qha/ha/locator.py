"""
The replication commands a node answers on an AMP connection: L{Hello} from
any broker, L{Subscribe} from a backup (or a single-queue replica), and on a
backup's link to the primary L{Events} and L{Heartbeat}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.protocols import amp

from .commands import Events, Heartbeat, Hello, NotPrimary, Refused, StaleEpoch, Subscribe
from .connection import Session
from .primary import ReplicationSource, parseHoldings
from .role import JOINING

if TYPE_CHECKING:
    from .link import BackupLink
    from .node import HANode


class ReplicationLocator(amp.CommandLocator):
    """
    Replication on one AMP connection of a node.

    @ivar source: the stream this connection's subscriber follows, if any.
    @ivar link: this broker's subscription on this connection, if any.
    """

    def __init__(self, node: "HANode", session: Session) -> None:
        """
        @param node: the broker.
        @param session: the connection's authentication.
        """
        super().__init__()
        self.node = node
        self.session = session
        self.source: ReplicationSource | None = None
        self.link: "BackupLink | None" = None

    def lost(self) -> None:
        """
        The connection went: stop its stream, or lose its link.
        """
        if self.source is not None:
            self.source.stop()
            self.source = None
        if self.link is not None:
            self.link.lost()

    @Hello.responder
    def hello(self, brokerId: str, epoch: int, role: str) -> dict[str, Any]:
        """
        Who this broker is, and how far its store goes.
        """
        self.session.check()
        self.node.heardEpoch(epoch, role, brokerId)
        answer: dict[str, Any] = {
            "brokerId": self.node.brokerId,
            "epoch": self.node.epoch,
            "role": self.node.role.name,
        }
        store = self.node.store
        if store is not None:
            answer["storeEpoch"] = store.epoch
            answer["storePosition"] = store.position
        return answer

    @Subscribe.responder
    def subscribe(
        self, brokerId: str, epoch: int, address: str, holdings: bytes, queue: str | None = None
    ) -> dict[str, Any]:
        """
        Stream this primary (or one queue) to the subscriber.
        """
        self.session.check()
        node = self.node
        if queue is not None:
            return self._subscribeQueue(brokerId, holdings, queue)
        if epoch > node.epoch:
            node.heardEpoch(epoch, JOINING, brokerId)
            raise StaleEpoch(f"this broker's epoch {node.epoch} is older than {epoch}")
        if not node.role.isPrimary:
            raise NotPrimary(f"this broker is {node.role.name}, not the primary")
        assert self.session.connection is not None
        held = parseHoldings(holdings)
        source = ReplicationSource(node, self.session.connection, brokerId, address, node.clock)
        self.source = source
        node.sources[brokerId] = source
        node.clock.callLater(0, source.start, held)
        return {"epoch": node.epoch}

    def _subscribeQueue(self, brokerId: str, holdings: bytes, queue: str) -> dict[str, Any]:
        """
        Single-queue replication: stream one queue to another broker.
        """
        node = self.node
        if not node.role.servesClients:
            raise NotPrimary(f"this broker is {node.role.name}, not the primary")
        if queue not in node.vhost.queues:
            raise Refused(f"no queue '{queue}' on this broker to replicate")
        assert self.session.connection is not None
        held = parseHoldings(holdings)
        source = ReplicationSource(
            node, self.session.connection, brokerId, "", node.clock, only=queue
        )
        self.source = source
        node.clock.callLater(0, source.start, held)
        return {"epoch": node.epoch}

    @Events.responder
    def events(
        self,
        epoch: int,
        seq: int,
        events: bytes,
        position: int | None = None,
        transient: bool = False,
    ) -> dict[str, Any] | Deferred[dict[str, Any]]:
        """
        A box of the primary's stream, on this backup's link.
        """
        self.session.check()
        if self.link is None:
            raise NotPrimary("this connection is not a replication link")
        synced = self.link.received(epoch, seq, events, position, transient)
        if synced is not None:
            # A backup with a store acknowledges only what is on its disk.
            return synced.addCallback(lambda _: {})
        return {}

    @Heartbeat.responder
    def heartbeat(self, epoch: int) -> dict[str, Any]:
        """
        The other end is alive, and speaks of C{epoch}.
        """
        self.session.check()
        if self.link is not None:
            self.link.heard()
        self.node.heardEpoch(epoch, "", "")
        return {"epoch": self.node.epoch}


__all__ = ["ReplicationLocator"]
