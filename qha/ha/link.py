"""
A backup's subscription to the primary (or, for single-queue replication,
to a remote queue's broker) over one AMP connection: it applies the boxes of
the stream in order, acknowledges them, and watches the primary's
heartbeat.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from ..changes.replay import Replicator
from .commands import Heartbeat, MalformedBox, OutOfSequence, StaleEpoch
from .catchup import CatchUpReceiver
from .config import PEER_TIMEOUT
from .connection import NodeAMP
from ..changes.events import MalformedEvents

if TYPE_CHECKING:
    from .node import HANode


class BackupLink:
    """
    A backup's subscription to the primary over one AMP connection.
    """

    log = Logger()

    def __init__(self, node: "HANode", connection: NodeAMP, primaryId: str, address: str) -> None:
        """
        @param node: the backup.
        @param connection: the connection to the primary.
        @param primaryId: the primary's broker id.
        @param address: the primary's AMP address.
        """
        self.node = node
        self.connection = connection
        self.primaryId = primaryId
        self.address = address
        self.lastHeard = node.clock.seconds()
        self.closed = False
        self.lastSeq = 0
        self._watch: IDelayedCall | None = None
        self.replicator = Replicator(node.vhost, self.caughtUp)
        # Boxes acknowledged on arrival, to apply: (seq, data, epoch, position).
        self._unapplied: list[tuple[int, bytes, int, int | None]] = []
        self._applyCall: IDelayedCall | None = None
        self.catchup = CatchUpReceiver(node.clock, address)
        self._caughtUp = False

    def start(self) -> None:
        """
        Start watching the primary's heartbeat.
        """
        self._scheduleWatch()

    def _scheduleWatch(self) -> None:
        """
        Check on the primary after one heartbeat interval.
        """
        if self.node.options.heartbeat and not self.closed:
            self._watch = self.node.clock.callLater(self.node.options.heartbeat, self._check)

    def _check(self) -> None:
        """
        Leave a primary silent for two heartbeats; otherwise send ours.
        """
        self._watch = None
        if self.closed:
            return
        silent = self.node.clock.seconds() - self.lastHeard
        if silent >= 2 * self.node.options.heartbeat:
            self.log.warn(
                "primary {primary} silent for {silent:.1f}s: looking for the primary again",
                primary=self.address,
                silent=silent,
            )
            self.close()
            return
        d = self.connection.callRemote(Heartbeat, epoch=self.node.epoch)
        d.addTimeout(PEER_TIMEOUT, self.node.clock)
        d.addCallbacks(lambda _: self.heard(), lambda _: None)
        self._scheduleWatch()

    def heard(self) -> None:
        """
        The primary spoke.
        """
        self.lastHeard = self.node.clock.seconds()

    def received(
        self,
        epoch: int,
        seq: int,
        data: bytes,
        position: int | None = None,
        transient: bool = False,
    ) -> Deferred[Any] | None:
        """
        A box of events from the primary, up to C{position} of its stream.

        A C{transient} box (only events of messages no store keeps) is
        acknowledged at once and applied right after the answer is written,
        so the primary's confirms do not wait for the applying. This backup
        holds the box in memory either way; only a box found malformed when
        applied was answered for nothing (the link then drops, so the primary
        stops counting on this backup). Any other box is applied first, with
        every box before it.

        @return: what the answer must wait for (this backup's store writing
            the box to disk), or L{None}.
        """
        node = self.node
        self.checkEpoch(epoch)
        self.heard()
        if seq <= self.lastSeq:
            # Sent again: applying it twice could bring back a message that
            # a later box dequeued.
            self.log.info("replication box {seq} was applied already: ignored", seq=seq)
            return None
        if seq != self.lastSeq + 1:
            # A box is missing (or this one overtook it): applying this one
            # could dequeue before enqueueing. Catch up again instead.
            self.log.warn(
                "replication box {seq} arrived after box {last}: catching up again",
                seq=seq,
                last=self.lastSeq,
            )
            node.clock.callLater(0, self.close)
            raise OutOfSequence(f"replication box {seq} refused: box {self.lastSeq + 1} is missing")
        self.lastSeq = seq
        if transient:
            self._unapplied.append((seq, data, epoch, position))
            if self._applyCall is None:
                self._applyCall = node.clock.callLater(0, self._applyAfterWrite)
            return None
        self.applyPending()
        if self.closed:
            raise MalformedBox(f"replication box {seq} refused: an earlier box was malformed")
        try:
            self.replicator.apply(data)
        except MalformedEvents as error:
            self.log.error("malformed replication box {seq}: {error}", seq=seq, error=str(error))
            node.clock.callLater(0, self.close)
            raise MalformedBox(f"replication box {seq} refused: {error}") from None
        return self._record(epoch, position, True)

    def receivedBatch(
        self,
        epoch: int,
        seq: int,
        data: bytes,
        position: int | None,
        messages: int,
        total: int,
        last: bool,
    ) -> Deferred[Any] | None:
        """
        A batch of the catch-up (L{qha.ha.commands.CatchUp}): its numbers
        are checked first, then it is applied as a durable box in its place
        in the sequence, and checked against what it carried.

        @return: what the answer waits for (the store writing it).
        """
        if seq <= self.lastSeq:
            # Sent again: ignored, as any box.
            return self.received(epoch, seq, data, position)
        try:
            self.catchup.check(seq, len(data), messages, total, last)
        except MalformedBox as error:
            self.log.error("{error}", error=str(error))
            self.node.clock.callLater(0, self.close)
            raise
        before = self.replicator.enqueues
        self._caughtUp = False
        synced = self.received(epoch, seq, data, position)
        try:
            self.catchup.applied(
                seq, len(data), messages, self.replicator.enqueues - before, total, last, self._caughtUp
            )
        except MalformedBox as error:
            self.log.error("{error}", error=str(error))
            self.node.clock.callLater(0, self.close)
            raise
        return synced

    def _applyAfterWrite(self) -> None:
        """
        Apply the acknowledged boxes once their answers are written.
        """
        # This runs among the reactor's timed calls, before its next round
        # of writes; a call scheduled now runs after that round, once the
        # answers are written.
        self._applyCall = self.node.clock.callLater(0, self.applyPending)

    def applyPending(self) -> None:
        """
        Apply the boxes acknowledged on arrival and not yet applied.
        """
        if self._applyCall is not None and self._applyCall.active():
            self._applyCall.cancel()
        self._applyCall = None
        boxes, self._unapplied = self._unapplied, []
        for seq, data, epoch, position in boxes:
            try:
                self.replicator.apply(data)
            except MalformedEvents as error:
                # Acknowledged already: the primary must drop this backup,
                # which catches up again.
                self.log.error(
                    "malformed replication box {seq}: {error}", seq=seq, error=str(error)
                )
                self.close()
                return
        if boxes:
            self._record(epoch, position, False)

    def _record(self, epoch: int, position: int | None, wait: bool) -> Deferred[Any] | None:
        """
        Have this backup's store (if it has one) write what was applied and
        the primary's position; return when it is on disk if C{wait}.
        """
        store = self.node.store
        if store is None or self is not self.node.link:
            return None
        if position is not None:
            store.setPosition(max(epoch, self.node.epoch), position)
        store.flush()
        return store.whenSynced() if wait else None

    def checkEpoch(self, epoch: int) -> None:
        """
        Refuse a stream of an older epoch; adopt a newer one.
        """
        node = self.node
        if epoch < node.epoch:
            raise StaleEpoch(
                f"replication stream of epoch {epoch} refused: this backup knows epoch {node.epoch}"
            )
        if epoch > node.epoch:
            node.adoptEpoch(epoch)

    def caughtUp(self) -> None:
        """
        The snapshot is applied: the backup is ready.
        """
        self._caughtUp = True
        self.log.info("caught up with the primary at {address}", address=self.address)
        self.node.caughtUp()

    def close(self) -> None:
        """
        Drop the link (and its connection).
        """
        if not self.closed:
            transport = self.connection.transport
            self.lost()
            if transport is not None:
                transport.abortConnection()  # type: ignore[attr-defined]

    def lost(self) -> None:
        """
        The connection went: keep what was acknowledged, stop watching.
        """
        if self.closed:
            return
        self.closed = True
        self.log.warn("link to the primary at {address} ({primary}) lost", primary=self.primaryId, address=self.address)
        # What was acknowledged is this backup's to keep.
        self.applyPending()
        if self._watch is not None and self._watch.active():
            self._watch.cancel()
        self._watch = None
        self.linkLost()

    def linkLost(self) -> None:
        """
        The link is gone: a backup looks for the primary again.
        """
        self.node.linkLost(self)


__all__ = ["BackupLink"]
