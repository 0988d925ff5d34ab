"""
A backup's subscription to the primary (or, for single-queue replication,
to a remote queue's broker) over one AMP connection: it applies the boxes of
the stream in order, acknowledges them, and watches the primary's
heartbeat.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from ..changes.replay import Replicator, Verbatim
from ..changes.scoped import ScopedObserver, observe, unobserve
from .commands import Heartbeat, MalformedBox, OutOfSequence, StaleEpoch
from .catchup import CatchUpReceiver
from .config import PEER_TIMEOUT
from .connection import NodeAMP
from ..changes.events import MalformedEvents

if TYPE_CHECKING:
    from .node import HANode


@dataclass
class _Batch:
    """
    A catch-up batch being applied a step at a time, with the numbers its
    box came with (see L{qha.ha.commands.CatchUp}).

    @ivar size: the bytes of its events.
    @ivar steps: the replicator's steps through its events.
    @ivar done: fires when it is applied and on disk (its answer).
    @ivar call: the next step, scheduled.
    @ivar error: why it was refused, if it was.
    @ivar enqueues: the replicator's enqueue count before the batch.
    @ivar data: its events.
    @ivar verbatim: its leading run of events this backup's store takes
        as they came (L{None} without a store).
    @ivar written: the bytes of that run given to the store so far.
    @ivar writtenCount: the events among them.
    @ivar writtenBytes: the bodies' bytes among them.
    @ivar muted: whether the store is kept from observing the default
        virtual host now (while the steps apply that run).
    """

    epoch: int
    seq: int
    size: int
    position: int | None
    messages: int
    total: int
    last: bool
    steps: Iterator[None]
    done: Deferred[Any]
    enqueues: int
    data: bytes = b""
    verbatim: Verbatim | None = None
    written: int = 0
    writtenCount: int = 0
    writtenBytes: int = 0
    muted: bool = False
    call: IDelayedCall | None = None
    error: MalformedBox | None = None


class BackupLink:
    """
    A backup's subscription to the primary over one AMP connection.
    """

    log = Logger()

    catchupStep = 512
    """
    The most events of a catch-up batch applied in one reactor turn: a
    batch of 4,096 messages (about 1 MiB) takes some 60 ms to apply and
    observe for the store, too long for the other connections (C{qha-admin
    query}, heartbeats) to wait.
    """

    freezeCaughtUp = True
    """
    Whether the objects a catch-up batch made are moved out of the cyclic
    garbage collector's sight (C{gc.freeze}) once it is applied. A catch-up
    makes some two tracked objects per message, and they live on (they are
    the queues' contents): each full collection, which comes every time
    the tracked objects grow by a quarter, would scan all of them again,
    280 ms at 300,000 messages, with the reactor stopped. They are freed
    by their reference counts as ever when consumed; only a cycle among
    objects alive at a batch's end is never collected (as with the
    recovery's, which runs with the collector off; see
    L{qha.store.journal.replay}).
    """

    verbatimCatchUp = True
    """
    Whether this backup's store takes a catch-up batch's leading run of
    enqueues of persistent messages on durable queues as the bytes came
    (L{qha.changes.replay.Verbatim}) rather than observing each enqueue
    and encoding it again: the same record, without a fifth of the
    backup's work.
    """

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
        # The catch-up batch being applied over several turns, and the
        # boxes that arrived meanwhile, to take in order after it: how to
        # take each, and the answer that waits for it (None: answered).
        self._batch: _Batch | None = None
        self._backlog: list[tuple[Callable[[], Deferred[Any] | None], Deferred[Any] | None]] = []
        # Set when the link is lost: what was received is applied at once.
        self._hurry = False
        # Set when a box proved malformed: nothing after it is applied.
        self._broken = False

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

        While a catch-up batch is being applied (over several turns), a box
        waits for it: a transient one is answered at once as ever and
        applied after the batch, any other is answered once applied after
        it and on disk.

        @return: what the answer must wait for (this backup's store writing
            the box to disk), or L{None}.
        """
        if not self._admit(epoch, seq):
            return self._resent()
        if self._batch is not None or self._backlog:
            if transient:
                self._backlog.append((lambda: self._hold(seq, data, epoch, position), None))
                return None
            return self._later(lambda: self._applyDurable(seq, data, epoch, position))
        if transient:
            return self._hold(seq, data, epoch, position)
        return self._applyDurable(seq, data, epoch, position)

    def _admit(self, epoch: int, seq: int) -> bool:
        """
        Check a box's epoch and sequence number on arrival: whether it is
        the next box (L{False} for one sent again, ignored).

        @raise OutOfSequence: for a box after a gap (the link closes).
        """
        node = self.node
        self.checkEpoch(epoch)
        self.heard()
        if seq <= self.lastSeq:
            # Sent again: applying it twice could bring back a message that
            # a later box dequeued.
            self.log.info("replication box {seq} was applied already: ignored", seq=seq)
            return False
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
        return True

    def _resent(self) -> Deferred[Any] | None:
        """
        The answer to a box sent again: at once, unless it may still wait
        to be applied (after a batch being applied): then once every box
        received before is applied and on disk.
        """
        if self._batch is None and not self._backlog:
            return None
        return self._later(self._whenSynced)

    def _whenSynced(self) -> Deferred[Any] | None:
        """
        When this backup's store (if any) has what was written so far.
        """
        store = self.node.store
        if store is None:
            return None
        store.flush()
        return store.whenSynced()

    def _later(self, take: Callable[[], Deferred[Any] | None]) -> Deferred[Any]:
        """
        Take a box once the batch being applied (and the boxes before it)
        are: C{take} runs then, and the answer waits for what it returns.
        """
        answer: Deferred[Any] = Deferred()
        self._backlog.append((take, answer))
        return answer

    def _hold(self, seq: int, data: bytes, epoch: int, position: int | None) -> Deferred[Any] | None:
        """
        Keep a transient box, answered already, to apply once its answer is
        written.

        @return: L{None}: its answer waits for nothing.
        """
        self._unapplied.append((seq, data, epoch, position))
        if self._applyCall is None and not self._hurry:
            self._applyCall = self.node.clock.callLater(0, self._applyAfterWrite)
        return None

    def _applyDurable(self, seq: int, data: bytes, epoch: int, position: int | None) -> Deferred[Any] | None:
        """
        Apply a box (after every box before it), and have the store write
        it.

        @return: what the answer waits for (the store writing it).
        """
        self.applyPending()
        if self._broken:
            raise MalformedBox(f"replication box {seq} refused: an earlier box was malformed")
        try:
            self.replicator.apply(data)
        except MalformedEvents as error:
            self._malformed("malformed replication box {seq}: {error}", seq=seq, error=str(error))
            raise MalformedBox(f"replication box {seq} refused: {error}") from None
        return self._record(epoch, position, True)

    def _malformed(self, format: str, **fields: Any) -> None:
        """
        A box proved malformed: log it (C{format} with C{fields}), apply
        nothing after it, and drop the link (this backup then catches up
        again).
        """
        self.log.error(format, **fields)
        self._broken = True
        for _, answer in self._backlog:
            if answer is not None:
                answer.errback(MalformedBox("refused: an earlier box was malformed"))
        self._backlog = []
        if self.closed:
            return
        self.node.clock.callLater(0, self.close)

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
        A batch of the catch-up (L{qha.ha.commands.CatchUp}), in its place
        in the sequence (after the batch being applied, if one is): its
        numbers are checked first, then it is applied L{catchupStep}
        events per reactor turn (no other box is applied meanwhile),
        checked against what it carried, and written to the store.

        @return: what the answer waits for: the whole batch applied and on
            disk.
        """
        if not self._admit(epoch, seq):
            # Sent again: ignored, as any box.
            return self._resent()
        if self._batch is not None or self._backlog:
            return self._later(
                lambda: self._startBatch(epoch, seq, data, position, messages, total, last, False)
            )
        return self._startBatch(epoch, seq, data, position, messages, total, last)

    def _startBatch(
        self,
        epoch: int,
        seq: int,
        data: bytes,
        position: int | None,
        messages: int,
        total: int,
        last: bool,
        now: bool = True,
    ) -> Deferred[Any]:
        """
        Check a batch's numbers and apply its first step now (or, if not
        C{now}, in the next turn: the turn that finished the batch before
        it did a step's work already), the others in the next turns.

        @return: the batch's answer.
        @raise MalformedBox: for numbers out of bounds (nothing applied).
        """
        try:
            self.catchup.check(seq, len(data), messages, total, last)
        except MalformedBox as error:
            self._malformed("{error}", error=str(error))
            raise
        self.applyPending()
        if self._broken:
            raise MalformedBox(f"catch-up batch {seq} refused: an earlier box was malformed")
        self._caughtUp = False
        verbatim = None
        if self.verbatimCatchUp and self._storeObserves():
            verbatim = Verbatim(lambda: self._unmute(batch))
        batch = self._batch = _Batch(
            epoch,
            seq,
            len(data),
            position,
            messages,
            total,
            last,
            self.replicator.steps(data, self.catchupStep, verbatim),
            Deferred(),
            self.replicator.enqueues,
            data,
            verbatim,
        )
        if not now and not self._hurry:
            batch.call = self.node.clock.callLater(0, self._step)
            return batch.done
        self._step()
        if batch.error is not None and now:
            # Refused within the turn it came in: said so at once.
            batch.done.addErrback(lambda _: None)
            raise batch.error
        return batch.done

    def _step(self) -> None:
        """
        Apply the next step of the batch (all of it if the link is lost),
        then schedule the next, or finish the batch.
        """
        batch = self._batch
        assert batch is not None
        batch.call = None
        try:
            self._mute(batch)
            try:
                next(batch.steps)
                while self._hurry:
                    next(batch.steps)
            finally:
                self._unmute(batch)
        except StopIteration:
            self._batchApplied(batch)
            return
        except MalformedEvents as error:
            self._batch = None
            if batch.written and self.node.store is not None:
                # What was applied before the fault is the store's to write.
                self.node.store.flush()
            self._malformed("malformed catch-up batch {seq}: {error}", seq=batch.seq, error=str(error))
            batch.error = MalformedBox(f"catch-up batch {batch.seq} refused: {error}")
            batch.done.errback(batch.error)
            return
        batch.call = self.node.clock.callLater(0, self._step)

    def _storeObserves(self) -> bool:
        """
        Whether this backup has a store that observes its default virtual
        host (what it writes of a batch's leading run is then the same
        taken as it came).
        """
        store = self.node.store
        return store is not None and any(
            isinstance(observer, ScopedObserver) and observer.owner is store
            for observer in self.node.vhost.observers
        )

    def _mute(self, batch: _Batch) -> None:
        """
        Before a step of C{batch}: while its leading run of events goes on,
        keep this backup's store from observing the default virtual host
        (it takes the run's bytes as they came instead; see L{_unmute}).
        """
        store = self.node.store
        if batch.verbatim is not None and batch.verbatim.open and store is not None:
            unobserve(self.node.vhost, store)
            batch.muted = True

    def _unmute(self, batch: _Batch) -> None:
        """
        After a step of C{batch}, or when its leading run ends within one:
        give the store the run's bytes applied since the last time, in
        their place among its events, and have it observe the default
        virtual host again.
        """
        store = self.node.store
        verbatim = batch.verbatim
        if store is None or verbatim is None:
            return
        if verbatim.end > batch.written:
            store.appliedEncoded(
                batch.data,
                batch.written,
                verbatim.end,
                verbatim.count - batch.writtenCount,
                verbatim.bytes - batch.writtenBytes,
            )
            batch.written = verbatim.end
            batch.writtenCount = verbatim.count
            batch.writtenBytes = verbatim.bytes
        if batch.muted:
            batch.muted = False
            observe(self.node.vhost, store, first=True)

    def _batchApplied(self, batch: _Batch) -> None:
        """
        Every event of C{batch} is applied: check it carried what it said,
        have the store write it (its answer waits for that), and take the
        boxes that came meanwhile.
        """
        self._batch = None
        try:
            self.catchup.applied(
                batch.seq,
                batch.size,
                batch.messages,
                self.replicator.enqueues - batch.enqueues,
                batch.total,
                batch.last,
                self._caughtUp,
            )
        except MalformedBox as error:
            self._malformed("{error}", error=str(error))
            batch.error = error
            batch.done.errback(error)
            return
        if self.freezeCaughtUp:
            gc.freeze()
        synced = self._record(batch.epoch, batch.position, True)
        if synced is None:
            batch.done.callback(None)
        else:
            synced.chainDeferred(batch.done)
        self._takeBacklog()

    def _takeBacklog(self) -> None:
        """
        Take the boxes that waited for a batch, in order, until one of them
        is a batch applied over several turns again.
        """
        while self._backlog and self._batch is None:
            take, answer = self._backlog.pop(0)
            try:
                result = take()
            except Exception as error:
                if answer is None:
                    raise
                answer.errback(error)
                continue
            if answer is None:
                continue
            if result is None:
                answer.callback(None)
            else:
                result.chainDeferred(answer)

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
        if self._batch is not None:
            # These came after the batch being applied: they wait for it.
            return
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
                self._broken = True
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
        # What was acknowledged is this backup's to keep; what was received
        # is applied as it would have been, at once.
        self._hurry = True
        if self._batch is not None:
            if self._batch.call is not None and self._batch.call.active():
                self._batch.call.cancel()
            self._step()
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
