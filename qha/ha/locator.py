"""
The replication commands a node answers on an AMP connection: L{Hello} from
any broker, L{Subscribe} from a backup (or a single-queue replica), and on a
backup's link to the primary L{Events} and L{Heartbeat}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.protocols import amp

from .commands import CatchUp, Events, Heartbeat, Hello, NotPrimary, Refused, StaleEpoch, Subscribe
from .connection import Session
from .fencing import checkClaim, checkEpoch
from .primary import ReplicationSource, parseHoldings

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

    def _claimed(self, epoch: int, brokerId: str) -> Deferred[None]:
        """
        The peer speaks of C{epoch}: if it is newer than this primary's,
        check whether a primary of it exists (asking the peer on this
        connection and the other brokers) before stepping down.
        """
        return checkClaim(self.node, epoch, brokerId, self.session.connection)

    def _clusterLink(self) -> bool:
        """
        Whether this connection is of this broker's cluster: not a
        single-queue replication (whose remote counts epochs of its own).
        """
        if self.source is not None and self.source.only is not None:
            return False
        return self.link is None or self.link is self.node.link

    @Hello.responder
    def hello(self, brokerId: str, epoch: int, role: str) -> dict[str, Any] | Deferred[dict[str, Any]]:
        """
        Who this broker is, and how far its store goes; answered after the
        check of a newer epoch the peer speaks of.
        """
        self.session.check()
        checkEpoch(epoch, self.node.epoch)
        if epoch > self.node.epoch and self.node.role.isPrimary:
            return self._claimed(epoch, brokerId).addCallback(lambda _: self._whoAmI())
        return self._whoAmI()

    def _whoAmI(self) -> dict[str, Any]:
        """
        The answer to L{Hello}.
        """
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
    ) -> dict[str, Any] | Deferred[dict[str, Any]]:
        """
        Stream this primary (or one queue) to the subscriber.
        """
        self.session.check()
        node = self.node
        if queue is not None:
            return self._subscribeQueue(brokerId, holdings, queue)
        checkEpoch(epoch, node.epoch)
        if epoch > node.epoch:
            ours = node.epoch

            def refuse(_: object) -> dict[str, Any]:
                raise StaleEpoch(f"this broker's epoch {ours} is older than {epoch}")

            return self._claimed(epoch, brokerId).addCallback(refuse)
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
        if not (node.options.queueReplication or not node.standalone):
            raise Refused(
                "single-queue replication is off: start the broker with"
                " --ha-queue-replication yes"
            )
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

    @CatchUp.responder
    def catchUp(
        self,
        epoch: int,
        seq: int,
        events: bytes,
        messages: int,
        total: int,
        last: bool,
        position: int | None = None,
    ) -> dict[str, Any] | Deferred[dict[str, Any]]:
        """
        A batch of the catch-up, on this backup's link (see
        L{BackupLink.receivedBatch}).
        """
        self.session.check()
        if self.link is None:
            raise NotPrimary("this connection is not a replication link")
        synced = self.link.receivedBatch(epoch, seq, events, position, messages, total, last)
        if synced is not None:
            return synced.addCallback(lambda _: {})
        return {}

    @Heartbeat.responder
    def heartbeat(self, epoch: int) -> dict[str, Any] | Deferred[dict[str, Any]]:
        """
        The other end is alive, and speaks of C{epoch} (checked, if newer,
        on a link of this broker's cluster).
        """
        self.session.check()
        if self.link is not None:
            self.link.heard()
        if not self._clusterLink():
            return {"epoch": self.node.epoch}
        checkEpoch(epoch, self.node.epoch)
        if epoch > self.node.epoch and self.node.role.isPrimary:
            return self._claimed(epoch, "").addCallback(lambda _: {"epoch": self.node.epoch})
        return {"epoch": self.node.epoch}


__all__ = ["ReplicationLocator"]
