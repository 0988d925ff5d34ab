"""
The primary's side of replication: one L{ReplicationSource} per backup,
turning broker events into the stream, and the L{ReplicationGate} that holds
publisher confirms until the backups have the message.

A source observes the virtual host. Events of one read of a publishing
connection (or of 128 publishes, see L{ReplicationGate}) travel in one AMP
box, sent before the read's messages are delivered; the backup's answer to
the box says it holds every event in it, and completes the confirms waiting
on it. A box of transient messages only is marked so: the backup may answer
it before applying it.
"""

from __future__ import annotations

import gc
import json
from collections import deque
from bisect import bisect_left, bisect_right
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.protocols import amp
from zope.interface import implementer

from ..amqp.holders import Completion, IConfirmHolder, IReplicationPacer
from ..broker.exchange import Binding, Exchange
from ..broker.message import Message
from ..broker.queue import QUORUM, Entry, Queue, queueType
from ..broker.vhost import REPLICATE_ARGUMENT, VirtualHost
from ..broker.vhosts import VirtualHosts
from ..amqp.accounts import AccountChange, Accounts
from ..changes.settings import RuntimeSettings
from ..changes import events as ev
from ..changes.replay import heldKey
from ..changes.scoped import ScopedObserver, observe, unobserve
from ..changes.cursor import CopiedWalk, entrySize, lastId, sizeOf
from ..progress import PROGRESS_INTERVAL, ProgressPace
from .commands import (
    MAX_BATCH_BYTES,
    MAX_BATCH_MESSAGES,
    CHUNK,
    BadHoldings,
    CatchUp,
    Events,
    Heartbeat,
    eventsArguments,
)

if TYPE_CHECKING:
    from .node import HANode



class SourceNode(Protocol):
    """
    What a L{ReplicationSource} needs of its broker.
    """

    @property
    def vhost(self) -> VirtualHost:
        "The virtual host streamed."

    @property
    def gate(self) -> "ReplicationGate":
        "The gate of the confirms (replaced when a primary steps down)."

    @property
    def epoch(self) -> int:
        "The primary's epoch, sent with every box."

    @property
    def position(self) -> int:
        "The position in the primary's stream, sent with every box."

    @property
    def heartbeat(self) -> float:
        "Seconds between heartbeats (0: none)."

    @property
    def replicateDefault(self) -> str:
        "C{--ha-replicate}."

    def backupReady(self, source: "ReplicationSource") -> None:
        "The backup caught up."

    def backupLost(self, source: "ReplicationSource") -> None:
        "The backup went."

    def heardEpoch(self, epoch: int, role: str, brokerId: str) -> None:
        "The backup spoke of C{epoch}."


NONE = "none"
CONFIGURATION = "configuration"
ALL = "all"


def replicateLevel(obj: Queue | Exchange, default: str) -> str:
    """
    The replication level of a queue or exchange: its C{qpid.replicate}
    argument, or the broker's default. Built-in exchanges and exclusive
    queues (which die with their connection) are never replicated.
    """
    if isinstance(obj, Exchange) and (obj.name == "" or obj.name.startswith("amq.")):
        return NONE
    if isinstance(obj, Queue) and obj.exclusive:
        return NONE
    if isinstance(obj, Queue) and queueType(obj.arguments) == QUORUM:
        # A RabbitMQ quorum queue is replicated in full unless it says otherwise.
        default = ALL
    value = obj.arguments.get(REPLICATE_ARGUMENT, default)
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    return value if value in (NONE, CONFIGURATION, ALL) else default


def cachedLevel(obj: Queue | Exchange, default: str) -> str:
    """
    L{replicateLevel}, worked out once per object (its arguments do not
    change) and kept: the level the object was first replicated, listed or
    pinned with. The stream, the catch-up snapshot and the listings all
    read it, so a backup that joins later sees what the stream showed.
    """
    level = obj.replicationLevel
    if level is None:
        level = obj.replicationLevel = replicateLevel(obj, default)
    return level


def setLevel(obj: Queue | Exchange, level: str) -> None:
    """
    Pin the level of C{obj} to C{level} (the level it had on the broker
    that wrote a settings state, L{qha.changes.settings}), as if it had
    been worked out under the default of its declaration.
    """
    obj.replicationLevel = level


def pinLevels(vhosts: Iterable[VirtualHost], default: str) -> None:
    """
    Keep the level every queue and exchange of C{vhosts} has under
    C{default}, the broker's default until now: called before the default
    changes at run time (C{qha-admin set --replicate}), so the objects
    declared before the change keep the level they were (or would have
    been) replicated with and only the ones declared afterwards take the
    new default, as in Qpid's C{qpid-ha set --replicate}.

    An object not pinned yet has never had its level worked out, so it
    could only ever have had C{default}'s: pinning it now changes nothing
    it showed.
    """
    for vhost in vhosts:
        for queue in vhost.queues.values():
            cachedLevel(queue, default)
        for exchange in vhost.exchanges.values():
            cachedLevel(exchange, default)


def catchUpArguments(
    epoch: int, seq: int, events: bytes, position: int, messages: int, total: int, last: bool
) -> dict[str, bytes | memoryview]:
    """
    The wire strings of a L{CatchUp} batch, made directly (they decode as
    its arguments; send them with C{callRemoteString}): the events' 64 KiB
    pieces are views of them, not copies (a batch is megabytes, and AMP
    joins the pieces into the box it writes anyway).
    """
    view = memoryview(events)
    strings: dict[str, bytes | memoryview] = {
        "epoch": b"%d" % epoch,
        "seq": b"%d" % seq,
        "position": b"%d" % position,
        "messages": b"%d" % messages,
        "total": b"%d" % total,
        "last": b"True" if last else b"False",
        "events": view[:CHUNK],
    }
    for index, start in enumerate(range(CHUNK, len(events), CHUNK), 1):
        strings[f"events.{index}"] = view[start : start + CHUNK]
    return strings


def writeNow(transport: Any) -> None:
    """
    Write what C{transport} holds to its socket now rather than at the
    reactor's next round of writes, if it is a connected socket (Twisted's
    C{FileDescriptor.doWrite}, which the reactor calls when the socket is
    writable; what the socket cannot take yet stays for the reactor, and so
    does a failure to write, which the reactor's next call reports).
    """
    doWrite = getattr(transport, "doWrite", None)
    if doWrite is not None and transport.connected and not transport.disconnecting:
        doWrite()


def _builtin(exchange: Exchange) -> bool:
    return exchange.name == "" or exchange.name.startswith("amq.")


# Bounds of a Subscribe's holdings: the ids are 63-bit, and no backup holds
# more queues or id ranges than these (a range is two numbers of JSON; the
# AMP box that carries them bounds them first).
MAX_ID = 2**63 - 1
MAX_HELD_QUEUES = 1 << 20
MAX_HELD_RANGES = 1 << 24
MAX_HELD_NAME = 255


class HeldIds:
    """
    What a backup holds of one queue: the queue's uuid and its entry ids as
    sorted, disjoint ranges. Membership is a bisection, so that a range as
    wide as a peer cares to claim costs what its two numbers cost.

    @ivar uuid: the uuid of the queue the backup holds.
    @ivar starts: the first id of each range, increasing.
    @ivar ends: the last id of each range (C{ends[i] < starts[i + 1]}).
    """

    __slots__ = ("uuid", "starts", "ends")

    def __init__(self, uuid: str, starts: list[int], ends: list[int]) -> None:
        self.uuid = uuid
        self.starts = starts
        self.ends = ends

    def __contains__(self, id: int) -> bool:
        index = bisect_right(self.starts, id) - 1
        return index >= 0 and id <= self.ends[index]

    def __repr__(self) -> str:
        return f"<HeldIds {self.uuid} {list(zip(self.starts, self.ends))}>"

    def within(self, first: int, last: int) -> Iterator[tuple[int, int]]:
        """
        The held ranges cut to C{first}..C{last}: found by bisection, so the
        work is that of the ranges inside, not of all of them.
        """
        index = max(bisect_right(self.starts, first) - 1, 0)
        for start, end in zip(self.starts[index:], self.ends[index:]):
            if start > last:
                break
            if end >= first:
                yield max(start, first), min(end, last)

    def without(self, ids: Sequence[int]) -> Iterator[tuple[int, int]]:
        """
        The runs of held ids that are not among C{ids} (sorted): as many as
        there are ranges and ids, however many ids the ranges span.
        """
        count = len(ids)
        index = 0
        for start, end in zip(self.starts, self.ends):
            index = bisect_left(ids, start, index)
            next = start
            while index < count and ids[index] <= end:
                if ids[index] > next:
                    yield next, ids[index] - 1
                next = ids[index] + 1
                index += 1
            if next <= end:
                yield next, end


Holdings = Mapping[str, HeldIds]


def checkHoldings(value: Any) -> dict[str, HeldIds]:
    """
    The holdings of a L{Subscribe}, checked: an object of queue names (at
    most L{MAX_HELD_NAME} bytes) to C{{"uuid": str, "ids": [[start, end],
    ...]}}, the ranges increasing and disjoint with C{0 <= start <= end <
    2**63}, at most L{MAX_HELD_QUEUES} queues and L{MAX_HELD_RANGES}
    ranges in all. Other keys of a queue's object are ignored.

    @raise BadHoldings: naming the queue and what is wrong.
    """
    if not isinstance(value, dict):
        raise BadHoldings(
            f"holdings must be a JSON object of queue names, not a {type(value).__name__}"
        )
    if len(value) > MAX_HELD_QUEUES:
        raise BadHoldings(f"holdings name {len(value)} queues (at most {MAX_HELD_QUEUES})")
    checked: dict[str, HeldIds] = {}
    ranges = 0
    for name, held in value.items():
        if len(name) > MAX_HELD_NAME or len(name.encode("utf-8", "replace")) > MAX_HELD_NAME:
            raise BadHoldings(f"holdings name a queue of more than {MAX_HELD_NAME} bytes")
        where = f"holdings of queue {name!r}"
        if not isinstance(held, dict):
            raise BadHoldings(f"{where}: not an object with a uuid and ids")
        uuid = held.get("uuid")
        if not isinstance(uuid, str) or len(uuid) > MAX_HELD_NAME:
            raise BadHoldings(f"{where}: the uuid is not a string of at most {MAX_HELD_NAME}")
        ids = held.get("ids", [])
        if not isinstance(ids, list):
            raise BadHoldings(f"{where}: ids is not a list of [start, end] ranges")
        ranges += len(ids)
        if ranges > MAX_HELD_RANGES:
            raise BadHoldings(f"holdings hold more than {MAX_HELD_RANGES} id ranges")
        starts: list[int] = []
        ends: list[int] = []
        last = -1
        for index, pair in enumerate(ids):
            if (
                not isinstance(pair, list)
                or len(pair) != 2
                or type(pair[0]) is not int
                or type(pair[1]) is not int
            ):
                raise BadHoldings(f"{where}: range {index} is not a pair of integers")
            start, end = pair
            if not 0 <= start <= end <= MAX_ID:
                raise BadHoldings(
                    f"{where}: range {index} [{start}, {end}] is not 0 <= start <= end < 2**63"
                )
            if start <= last:
                raise BadHoldings(
                    f"{where}: range {index} [{start}, {end}] does not follow the one before it"
                )
            starts.append(start)
            ends.append(end)
            last = end
        checked[name] = HeldIds(uuid, starts, ends)
    return checked


def parseHoldings(data: bytes) -> dict[str, HeldIds]:
    """
    The holdings a L{Subscribe} carries (JSON; empty: none), checked by
    L{checkHoldings} before anything is done with them.

    @raise BadHoldings: if they are not JSON or not valid holdings.
    """
    if not data:
        return {}
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as error:
        raise BadHoldings(f"holdings are not JSON: {error}") from None
    return checkHoldings(value)


class GateOptions(Protocol):
    """
    What a L{ReplicationGate} reads of the broker's options, each time it
    needs it.
    """

    @property
    def replicateDefault(self) -> str:
        """
        The replication level of queues without C{qpid.replicate}
        (C{--ha-replicate}).
        """

    @property
    def minBackups(self) -> int:
        """
        How many backups must hold a replicated publish before its confirm
        (C{--ha-min-backups}).
        """


@implementer(IConfirmHolder, IReplicationPacer)
class ReplicationGate:
    """
    Decides which publishes must wait for backups, and tracks them.

    It also paces publishers: once the box being gathered carries
    C{boxPublishes} replicated publishes, the connections publishing them
    stop (L{full}) until the box has gone out. The backup then works on one
    box while the primary reads the next, instead of the two taking turns
    over one large box per read. A connection that has read much more than
    it handled (C{farAhead} bytes: a publisher with many confirms in flight,
    which the round trip does not hold up) goes on up to C{largestBox}
    publishes, as fewer, larger boxes cost the primary less. (A box of a
    read that holds fewer is sent when the read is handled, see
    L{sendNow}: 128 lets a publisher with 100 confirms in flight send one
    box a window; 64 measured 0.67-0.71x of a standalone broker there,
    against 0.69-0.76x.)

    @ivar sources: the ready backups' sources.
    @ivar waiting: completions not yet done.
    @ivar gathered: replicated publishes attached to the box being gathered.
    @ivar full: whether publishing connections should wait for that box to
        go out.
    """

    boxPublishes = 128
    farAhead = 16384
    largestBox = 256

    def __init__(self, options: GateOptions, clock: IReactorTime) -> None:
        """
        @param options: where C{--ha-replicate} and C{--ha-min-backups}
            come from (read at each publish).
        @param clock: for letting paused connections go on at the next
            turn.
        """
        self.options = options
        self.clock = clock
        self.sources: set[ReplicationSource] = set()
        self.waiting: set[Completion] = set()
        self.recovering = False
        self.current: Completion | None = None
        self.gathered = 0
        self.full = False
        self._paused: list[Callable[[], None]] = []
        self._releaseCall: IDelayedCall | None = None

    def shouldWait(self, buffered: int) -> bool:
        """
        Whether a connection that filled the box, and still has C{buffered}
        bytes read and not handled, should wait for the box to go out.
        """
        return buffered < self.farAhead or self.gathered >= self.largestBox

    def sendNow(self) -> None:
        """
        Send the box being gathered to every ready backup, written to the
        socket at once: a connection that handled a read sends its box
        before it delivers the read's messages, so that the backups' round
        trip runs while the primary delivers.
        """
        for source in list(self.sources):
            source.flush(now=True)

    def whenSent(self, resume: Callable[[], None]) -> None:
        """
        Call C{resume} once the box being gathered has been written (after
        the reactor's next write, so the backup has it before the primary
        reads on).
        """
        self._paused.append(resume)

    def release(self) -> None:
        """
        Let paused connections go on, after the reactor's next turn (also
        when this gate is being replaced).
        """
        if self._paused and self._releaseCall is None:
            self._releaseCall = self.clock.callLater(0, self._resumeAll)

    def _resumeAll(self) -> None:
        self._releaseCall = None
        paused, self._paused = self._paused, []
        for resume in paused:
            resume()

    def hold(self, queues: list[Queue], message: Message | None = None) -> Completion | None:
        """
        A message was enqueued on C{queues}: the completion its confirm waits
        for, or L{None} if it needs none (L{IConfirmHolder}; which queues
        it went to decides, not the message).
        """
        replicated = False
        for queue in queues:
            # The level each queue was first replicated with (cachedLevel),
            # read as it is once known: this runs for every publish.
            level = queue.replicationLevel
            if level is None:
                level = cachedLevel(queue, self.options.replicateDefault)
            if level == ALL:
                replicated = True
                break
        if not replicated and not self.recovering:
            return None
        current = self.current
        if current is not None and not current.done and current.replicated == replicated:
            # One completion serves every publish of a reactor turn: they
            # travel in the same boxes (and _gather, inlined).
            if replicated and current.parties:
                gathered = self.gathered = self.gathered + 1
                if gathered >= self.boxPublishes:
                    self.full = True
            return current
        completion = Completion(self.options.minBackups if replicated else 0)
        completion.replicated = replicated
        if replicated:
            for source in self.sources:
                completion.parties.add(source)
                source.attach(completion)
        if self.recovering:
            completion.holds += 1
        if completion.parties or completion.holds or completion.acked < completion.needed:
            self.waiting.add(completion)
            completion.addCallback(lambda: self.waiting.discard(completion))
            self.current = completion
            if replicated and completion.parties:
                self._gather()
            return completion
        return None

    def _gather(self) -> None:
        """
        One more replicated publish travels in the box being gathered.
        """
        self.gathered += 1
        if self.gathered >= self.boxPublishes:
            self.full = True

    def sealed(self) -> None:
        """
        A source sent its box: later publishes need a new completion, and
        the connections that waited for the box may read on.
        """
        self.current = None
        self.gathered = 0
        self.full = False
        self.release()

    def backupReady(self, source: "ReplicationSource") -> None:
        """
        A backup caught up: it holds every message now queued, so it counts
        for the completions short of C{minBackups}.
        """
        self.sources.add(source)
        for completion in list(self.waiting):
            if completion.acked < completion.needed and source not in completion.parties:
                completion.acked += 1
                completion.check()

    def backupLost(self, source: "ReplicationSource") -> None:
        """
        A backup went away: stop waiting for it.
        """
        self.sources.discard(source)
        self.gathered = 0
        self.full = False
        self.release()
        for completion in list(self.waiting):
            completion.lost(source)

    def recovered(self) -> None:
        """
        The primary became active: release what recovery held.
        """
        self.recovering = False
        for completion in list(self.waiting):
            if completion.holds:
                completion.holds -= 1
                completion.check()

    def reset(self) -> None:
        """
        The primary stepped down: forget every completion held, without
        completing it (no backup of the new primary's cluster has those
        messages, so losing this primary's backups must not confirm them),
        and start again as a gate with no backups. Connections that waited
        for a box read on, after the reactor's next turn.
        """
        self.sources = set()
        self.waiting = set()
        self.recovering = False
        self.current = None
        self.gathered = 0
        self.full = False
        self.release()


class QueueWalk:
    """
    What a catch-up still has to send of one queue's entries: those with
    ids after C{after} up to C{last} (the highest id when the catch-up
    started), taken from the queue as it is when each batch is made.

    The backup has (or is being sent) entry C{id} when L{has} says so;
    live events of the queue are sent for those entries only, and the
    others wait for the batch that reaches them (which sends their state
    as it is then). See doc/architecture.md, "Catching up".

    The entries are taken from references copied when the walk starts
    (L{CopiedWalk}): the live events of the queue tell it which of them
    leave before it reaches them (L{gone}, L{purged}).

    @ivar queue: the queue walked.
    @ivar held: what the backup held of it when it subscribed.
    @ivar after: every entry up to this id has been sent.
    @ivar last: the walk ends at this id.
    @ivar cursor: the entries still to walk.
    """

    __slots__ = ("queue", "held", "after", "last", "cursor")

    def __init__(self, queue: Queue, held: HeldIds | None, last: int) -> None:
        self.queue = queue
        self.held = held
        self.after = 0
        self.last = last
        self.cursor = CopiedWalk(queue, last)

    def gone(self, entries: Sequence[Entry]) -> None:
        """
        C{entries} left the queue: those the walk has not reached are not
        sent (their live events were not either).
        """
        self.cursor.gone(entries)

    def purged(self) -> None:
        """
        The queue's ready entries were dropped: those the walk has not
        reached are not sent.
        """
        self.cursor.purged()

    def has(self, id: int) -> bool:
        """
        Whether the backup has entry C{id} (or the live stream alone brings
        it): at or below the cursor, past the walk's end (enqueued after the
        catch-up started), or held before it subscribed.
        """
        return id <= self.after or id > self.last or (self.held is not None and id in self.held)


class CatchUpProgress:
    """
    How far a catch-up is, as the primary sees it (C{qha-admin query},
    C{/api/ha}, and its log lines).

    @ivar messages: the entries the catch-up's queues held when it started
        (an upper bound of what it sends: those the backup held already
        and those consumed meanwhile are not sent).
    @ivar walked: entries looked at so far (sent, or held already).
    @ivar sentMessages: messages sent in batches.
    @ivar sentBytes: bytes of batches sent.
    @ivar ackedMessages: messages in batches the backup answered.
    @ivar ackedBytes: bytes of batches the backup answered.
    @ivar batches: batches sent.
    @ivar ackedBatches: batches answered.
    @ivar started: when it started (the clock's seconds).
    @ivar finished: when the backup answered its last batch, or L{None}.
    @ivar pace: when the next progress line is due (L{ProgressPace}).
    """

    def __init__(self, started: float) -> None:
        self.messages = 0
        self.walked = 0
        self.sentMessages = 0
        self.sentBytes = 0
        self.ackedMessages = 0
        self.ackedBytes = 0
        self.batches = 0
        self.ackedBatches = 0
        self.started = started
        self.finished: float | None = None
        self.pace = ProgressPace(started, PROGRESS_INTERVAL)

    def describe(self, now: float) -> dict[str, Any]:
        """
        The fields C{qha-admin query} and C{/api/ha} show.
        """
        return {
            "messages": self.messages,
            "sentMessages": self.sentMessages,
            "sentBytes": self.sentBytes,
            "acknowledgedMessages": self.ackedMessages,
            "acknowledgedBytes": self.ackedBytes,
            "batches": self.batches,
            "acknowledgedBatches": self.ackedBatches,
            "done": self.finished is not None,
            "seconds": round((self.finished if self.finished is not None else now) - self.started, 3),
        }


class SourceObserver(ScopedObserver):
    """
    A L{ReplicationSource}'s observer of one virtual host: the enqueue
    event, one a publish, is written here rather than through
    L{ReplicationSource.enqueued} (one call a message less; the same
    steps).
    """

    __slots__ = ()

    def enqueued(self, queue: Queue, entry: Entry) -> None:
        """
        The steps of L{ScopedObserver.enqueued} and then of
        L{ReplicationSource.enqueued}, in one call (keep them alike).
        """
        source: ReplicationSource = self.owner
        writer = source.writer
        if writer.vhost != self.name:
            writer.scope(self.name)
        follows = source._following.get(queue)
        if follows or (follows is None and source._follows(queue)):
            if source._walking and not source._has(queue, entry.id):
                return
            writer.entry(queue, entry)
            if source._flushCall is None:
                source._scheduleFlush()


class ReplicationSource:
    """
    The stream to one backup, over its AMP connection.

    A catch-up too large for one box is sent as a stream of L{CatchUp}
    batches, each at most C{batchMessages} entries and about C{batchBytes}
    bytes, at most C{catchupWindow} of them unanswered; live boxes and
    heartbeats go between them.

    @ivar ready: whether the backup finished catching up.
    @ivar acked: the sequence number of the last box the backup answered
        (it holds it).
    @ivar catchup: the progress of the batched catch-up, if there was one.
    """

    log = Logger()
    window = 64
    batchBytes = MAX_BATCH_BYTES // 2
    batchMessages = MAX_BATCH_MESSAGES // 2
    catchupWindow = 4

    def __init__(
        self,
        node: SourceNode,
        connection: amp.AMP,
        backupId: str,
        address: str,
        clock: IReactorTime,
        only: str | None = None,
    ) -> None:
        """
        @param only: replicate just this queue (single-queue replication,
            C{qha-admin replicate}), not the whole broker.
        """
        self.node = node
        self.only = only
        self.vhost: VirtualHost = node.vhost
        self.vhosts = VirtualHosts.of(node.vhost)
        self.connection = connection
        self.backupId = backupId
        self.address = address
        self.clock = clock
        self.writer = ev.EventWriter()
        self.waiters: list[Completion] = []
        self.inFlight: dict[int, list[Completion]] = {}
        # Bytes of each box sent and not yet answered, counted against the
        # memory high watermark (issue 13: unconfirmed replication).
        self.inFlightBytes: dict[int, int] = {}
        # When each box in flight was sent (the lag in seconds, issue 14).
        self.sentAt: dict[int, float] = {}
        self.seq = 0
        self.acked = 0
        self.caughtUpAt: int | None = None
        self.ready = False
        self.closed = False
        self.lastHeard = clock.seconds()
        self._flushCall: IDelayedCall | None = None
        self._heartbeatCall: IDelayedCall | None = None
        self._following: dict[Queue, bool] = {}
        # The batched catch-up: the queues still to walk (in order), the
        # same by queue for the live filter, and the batches unanswered.
        self._stream = False
        self._walks: deque[QueueWalk] = deque()
        self._walking: dict[Queue, QueueWalk] = {}
        self._catchupOut = 0
        self._pumpCall: IDelayedCall | None = None
        self._catchupDone = True
        self.catchup: CatchUpProgress | None = None

    def __repr__(self) -> str:
        return f"<ReplicationSource to {self.backupId} ready={self.ready}>"

    # Lifetime

    def start(self, holdings: Mapping[str, Any]) -> None:
        """
        Send the snapshot (only what the backup lacks), then follow the
        live stream.

        @param holdings: what the backup holds, from L{parseHoldings};
            holdings not checked yet are checked here, and the backup is
            dropped if they are not valid.
        """
        if not all(isinstance(held, HeldIds) for held in holdings.values()):
            try:
                holdings = checkHoldings(holdings)
            except BadHoldings as error:
                self.drop(str(error))
                return
        self._stream = self._large()
        if self._stream:
            self.catchup = CatchUpProgress(self.clock.seconds())
        if self.only is not None:
            self.snapshotQueue(holdings)
        else:
            self.snapshot(holdings)
        if not self._walks:
            self._stream = False
        else:
            self._promoteYoung()
        if not self._stream:
            # Small enough for one box: the snapshot and the marker go
            # together, as they always did.
            self.writer.event(ev.CAUGHT_UP)
            self.caughtUpAt = self.seq + 1
            if self.catchup is not None:
                self.catchup.finished = self.catchup.started
        else:
            self._catchupDone = False
            assert self.catchup is not None
            self.log.info(
                "catching up backup {backup} at {address}: {messages} messages in {queues} queues,"
                " sent in batches of at most {count} messages or {size} bytes",
                backup=self.backupId,
                address=self.address,
                messages=self.catchup.messages,
                queues=len(self._walks),
                count=self.batchMessages,
                size=self.batchBytes,
            )
        if self.only is None:
            for vhost in self.vhosts:
                observe(vhost, self, kind=SourceObserver)
            self.vhosts.observers.append(self)
            Accounts.of(self.vhosts).observers.append(self)
            RuntimeSettings.of(self.vhosts).observers.append(self)
        else:
            observe(self.vhost, self, kind=SourceObserver)
        self.flush()
        self._scheduleHeartbeat()
        if not self._catchupDone:
            # The first batch in a turn of its own: this one walked the
            # configuration and copied the queues' entries.
            self._pumpCall = self.clock.callLater(0, self._pump)

    def _promoteYoung(self) -> None:
        """
        Set every object the cyclic garbage collector tracks aside
        (C{gc.freeze}), traversing none: the walks' copies (a reference per
        entry, a million for a million messages) are young, and the next
        collections of the young generations would each traverse them (some
        30 ms each, twice, with the reactor stopped). A broker sets aside
        what lives anyway (L{qha.collector.CollectorPolicy}); a list of
        references has no cycle, so it is freed as ever when the walk ends.
        (Nothing here counts the frozen objects: C{gc.get_freeze_count}
        walks them all, 50 ms for two million.)
        """
        gc.freeze()

    def _large(self) -> bool:
        """
        Whether the queues whose messages the backup gets hold more than
        one batch: then the catch-up goes in batches.
        """
        default = self.node.replicateDefault
        count = size = 0
        if self.only is not None:
            queue = self.vhost.queues.get(self.only)
            queues = [queue] if queue is not None else []
        else:
            queues = [
                queue
                for vhost in self.vhosts
                for queue in vhost.queues.values()
                if cachedLevel(queue, default) == ALL
            ]
        for queue in queues:
            entries, bytes = sizeOf(queue)
            count += entries
            size += bytes
        return count > self.batchMessages or size > self.batchBytes

    # The batched catch-up

    def _pump(self) -> None:
        """
        Send a catch-up batch if fewer than C{catchupWindow} are
        unanswered, and the next in the next reactor turn if there is room
        for it still: making a batch of a few thousand messages takes some
        milliseconds, and the live publishers' turns come between two.
        """
        self._pumpCall = None
        if self.closed or self._catchupDone or self._catchupOut >= self.catchupWindow:
            return
        self._sendBatch()
        if not self._catchupDone and self._catchupOut < self.catchupWindow:
            self._pumpCall = self.clock.callLater(0, self._pump)

    def _sendBatch(self) -> None:
        """
        Send the next batch: the live events gathered so far go first (in
        their own box), so that the stream keeps the order things happened
        in; then up to C{batchMessages} entries or about C{batchBytes} bytes
        of the queues still to walk, and the marker after the last.
        """
        self.flush()
        progress = self.catchup
        assert progress is not None
        writer = ev.EventWriter()
        budget = self.batchMessages
        room = self.batchBytes
        messages = 0
        while self._walks and budget > 0 and room > 0:
            walk = self._walks[0]
            queue = walk.queue
            if queue.deleted or self._walking.get(queue) is not walk:
                self._walks.popleft()
                self._walking.pop(queue, None)
                continue
            writer.scope(queue.vhost.name)
            entries, after, done = walk.cursor.take(budget, room)
            # Paged bodies come back in one read for the batch.
            entries = queue.withBodies(entries)
            if walk.held is not None:
                ranges = list(walk.held.within(walk.after + 1, after))
                if ranges:
                    piece = HeldIds("", [first for first, _ in ranges], [end for _, end in ranges])
                    for first, end in piece.without([entry.id for entry in entries]):
                        writer.entryRange(ev.DEQUEUED, queue.name, first, end)
                        budget -= 1
            for entry in entries:
                if walk.held is None or entry.id not in walk.held:
                    writer.entry(queue, entry)
                    messages += 1
                if entry.id in queue.held:
                    writer.entryEvent(ev.ACQUIRED, queue.name, entry.id)
                budget -= 1
                room -= entrySize(entry)
            walk.after = after
            progress.walked += len(entries)
            if not done:
                # Cut by the bounds: the batch is full.
                break
            self._walks.popleft()
            del self._walking[queue]
        last = not self._walks
        if last:
            writer.event(ev.CAUGHT_UP)
            self._catchupDone = True
        data = writer.take()
        self.seq += 1
        seq = self.seq
        if last:
            self.caughtUpAt = seq
        self.inFlight[seq] = []
        self.inFlightBytes[seq] = len(data)
        self.vhost.resources.hold(len(data))
        self._catchupOut += 1
        progress.batches += 1
        progress.sentMessages += messages
        progress.sentBytes += len(data)
        d = self.connection.callRemoteString(
            CatchUp.commandName,
            True,
            **catchUpArguments(
                self.node.epoch, seq, data, self.node.position, messages, progress.messages, last
            ),
        )
        size = len(data)
        d.addCallbacks(lambda _: self._batchApplied(seq, messages, size), self._failed)

    def _batchApplied(self, seq: int, messages: int, size: int) -> None:
        """
        The backup holds batch C{seq}: count it, and send the next.
        """
        progress = self.catchup
        if self.closed or progress is None:
            return
        self._catchupOut -= 1
        progress.ackedBatches += 1
        progress.ackedMessages += messages
        progress.ackedBytes += size
        now = self.clock.seconds()
        # The fields both lines name: which backup, and the time taken.
        which = {"backup": self.backupId, "address": self.address, "seconds": progress.pace.elapsed(now)}
        if self.caughtUpAt is not None and seq >= self.caughtUpAt:
            progress.finished = now
            self.log.info(
                "catch-up of backup {backup} at {address} done: {messages} messages ({bytes} bytes) in"
                " {batches} batches, {seconds:.1f}s",
                messages=progress.ackedMessages,
                bytes=progress.ackedBytes,
                batches=progress.ackedBatches,
                **which,
            )
        elif progress.pace.due(now):
            self.log.info(
                "catching up backup {backup} at {address}: {sent} of at most {total} messages sent"
                " ({sentBytes} bytes), {acked} acknowledged ({ackedBytes} bytes), {seconds:.1f}s",
                sent=progress.sentMessages,
                total=progress.messages,
                sentBytes=progress.sentBytes,
                acked=progress.ackedMessages,
                ackedBytes=progress.ackedBytes,
                **which,
            )
        self._applied(seq)
        if self._pumpCall is None:
            self._pump()

    def _has(self, queue: Queue, id: int) -> bool:
        """
        Whether the backup has entry C{id} of C{queue} (or gets it from the
        live stream), so that a live event of it is sent; see
        L{QueueWalk.has}.
        """
        walk = self._walking.get(queue)
        return walk is None or walk.has(id)

    def stop(self) -> None:
        """
        The backup went away (or was dropped): stop observing and release
        the confirms waiting for it.
        """
        if self.closed:
            return
        self.closed = True
        self._following.clear()
        self._walks.clear()
        self._walking.clear()
        self._catchupDone = True
        for vhost in self.vhosts:
            unobserve(vhost, self)
        if self in self.vhosts.observers:
            self.vhosts.observers.remove(self)
        accounts = Accounts.of(self.vhosts)
        if self in accounts.observers:
            accounts.observers.remove(self)
        settings = RuntimeSettings.of(self.vhosts)
        if self in settings.observers:
            settings.observers.remove(self)
        for call in (self._flushCall, self._heartbeatCall, self._pumpCall):
            if call is not None and call.active():
                call.cancel()
        self._flushCall = self._heartbeatCall = self._pumpCall = None
        self.node.gate.backupLost(self)
        self.inFlight.clear()
        self.vhost.resources.release(sum(self.inFlightBytes.values()))
        self.inFlightBytes.clear()
        self.sentAt.clear()
        self.waiters = []
        if self.only is None:
            self.node.backupLost(self)

    def drop(self, why: str) -> None:
        """
        Cut the backup off; it must catch up again.
        """
        self.log.warn(
            "dropping backup {backup} at {address}: {why}", backup=self.backupId, address=self.address, why=why
        )
        transport = self.connection.transport
        self.stop()
        if transport is not None:
            transport.abortConnection()  # type: ignore[attr-defined]

    # The stream

    def attach(self, completion: Completion) -> None:
        """
        C{completion} waits for the box that carries the current events.
        """
        self.waiters.append(completion)
        self._scheduleFlush()

    def _scheduleFlush(self) -> None:
        if self._flushCall is None and not self.closed:
            self._flushCall = self.clock.callLater(0, self.flush)

    def flush(self, now: bool = False) -> None:
        """
        Send the events of this turn in one box; C{now}, write it to the
        socket at once rather than at the reactor's next turn.
        """
        if now and self._flushCall is not None:
            self._flushCall.cancel()
        self._flushCall = None
        if self.closed or (not self.writer.count and not self.waiters):
            return
        if self.seq - self.acked >= self.window and self.ready:
            # Too many boxes unanswered: keep gathering; an answer flushes.
            return
        self.seq += 1
        seq = self.seq
        transient = self.writer.transient
        data = self.writer.take()
        waiters, self.waiters = self.waiters, []
        self.inFlight[seq] = waiters
        self.inFlightBytes[seq] = len(data)
        self.sentAt[seq] = self.clock.seconds()
        self.vhost.resources.hold(len(data))
        self.node.gate.sealed()
        d = self.connection.callRemoteString(
            Events.commandName,
            True,
            **eventsArguments(self.node.epoch, seq, data, self.node.position, transient),
        )
        d.addCallbacks(lambda _: self._applied(seq), self._failed)
        if now:
            writeNow(self.connection.transport)

    def _applied(self, seq: int) -> None:
        self.lastHeard = self.clock.seconds()
        self.acked = max(self.acked, seq)
        size = self.inFlightBytes.pop(seq, 0)
        self.sentAt.pop(seq, None)
        if size:
            self.vhost.resources.release(size)
        for completion in self.inFlight.pop(seq, []):
            completion.acknowledged(self)
        if not self.ready and self.caughtUpAt is not None and seq >= self.caughtUpAt:
            self.ready = True
            self.log.info(
                "backup {backup} at {address} is ready{what}",
                backup=self.backupId,
                address=self.address,
                what=f" (replica of queue {self.only!r})" if self.only else "",
            )
            if self.only is None:
                self.node.backupReady(self)
        if self.writer.count or self.waiters:
            self._scheduleFlush()

    def _failed(self, failure: Any) -> None:
        if not self.closed:
            self.log.info(
                "replication to backup {backup} at {address} failed: {error}",
                backup=self.backupId,
                address=self.address,
                error=failure.getErrorMessage(),
            )
            self.drop("its replication box failed")

    def _scheduleHeartbeat(self) -> None:
        interval = self.node.heartbeat
        if interval and not self.closed:
            self._heartbeatCall = self.clock.callLater(interval, self._heartbeat)

    def _heartbeat(self) -> None:
        self._heartbeatCall = None
        if self.closed:
            return
        silent = self.clock.seconds() - self.lastHeard
        if silent >= 2 * self.node.heartbeat:
            self.drop(f"silent for {silent:.1f}s (two heartbeats)")
            return
        d = self.connection.callRemote(Heartbeat, epoch=self.node.epoch)
        d.addCallbacks(self._heard, lambda failure: None)
        self._scheduleHeartbeat()

    def _heard(self, response: dict[str, Any]) -> None:
        self.lastHeard = self.clock.seconds()
        # A backup that follows a newer primary fences this one.
        self.node.heardEpoch(response.get("epoch", 0), "", self.backupId)

    def sendMembers(self, members: list[dict[str, str]]) -> None:
        """
        Tell the backup which backups the primary has (for recovery).
        """
        self.writer.event(ev.MEMBERS, json.dumps(members).encode("utf-8"))
        self._scheduleFlush()

    # Snapshot

    def snapshotQueue(self, holdings: Holdings) -> None:
        """
        The snapshot of single-queue replication: the one queue and what
        the replica lacks of it.
        """
        queue = self.vhost.queues.get(self.only or "")
        if queue is not None:
            self._declare(queue)
            self._entries(queue, holdings)

    def _entries(self, queue: Queue, holdings: Holdings) -> None:
        """
        The entries of C{queue} the backup lacks, drops for those it holds
        that are gone, and acquire marks for those consumers hold.

        The work and the events are bounded by the entries the queue holds
        and the number of ranges the backup sent, never by the ids the
        ranges span: membership is a bisection, and the held ids that are
        gone are dropped a run at a time.
        """
        held = holdings.get(heldKey(queue))
        if held is not None and held.uuid != queue.uuid:
            held = None
        if self._stream:
            # In batches: what the backup holds past the walk's end (a new
            # primary that is behind it) goes now; the rest as it is walked.
            walk = QueueWalk(queue, held, lastId(queue))
            if held is not None:
                for first, last in held.within(walk.last + 1, MAX_ID):
                    self.writer.entryRange(ev.DEQUEUED, queue.name, first, last)
            self._walks.append(walk)
            self._walking[queue] = walk
            assert self.catchup is not None
            self.catchup.messages += sizeOf(queue)[0]
            return
        entries = sorted(
            list(queue.readyEntries()) + list(queue.held.values()),
            key=lambda entry: entry.id,
        )
        if held is not None:
            for first, last in held.without([entry.id for entry in entries]):
                self.writer.entryRange(ev.DEQUEUED, queue.name, first, last)
        for entry in queue.withBodies(entries):
            if held is None or entry.id not in held:
                self.enqueued(queue, entry)
            if entry.id in queue.held:
                self.writer.entryEvent(ev.ACQUIRED, queue.name, entry.id)

    def snapshot(self, holdings: Holdings) -> None:
        """
        Write the state the backup needs: every replicated object, and of
        each message-replicated queue the entries the backup lacks, and
        drops for the ids it holds that the primary no longer has; the
        default virtual host first (its snapshot lists the others when
        there are others), then each other one; first the users and
        permissions changed at run time, last the settings changed at run
        time (both even when there are none, so that a backup holds the
        primary's, never leftovers of its own).
        """
        # Always, even empty: a backup that kept run-time users or settings
        # from an earlier life must end up with the primary's, not its own.
        self.writer.accountChange(Accounts.of(self.vhosts).stateChange())
        for vhost in self.vhosts:
            self.writer.scope(vhost.name)
            self._snapshotVhost(vhost, holdings)
        self.writer.scope(self.vhost.name)
        # After the objects: its pins give them their levels.
        self.writer.event(ev.SETTINGS, RuntimeSettings.of(self.vhosts).state())

    def _snapshotVhost(self, vhost: VirtualHost, holdings: Holdings) -> None:
        """
        The snapshot of one virtual host (see L{snapshot}).
        """
        default = self.node.replicateDefault
        exchanges = [
            x for x in vhost.exchanges.values()
            if not _builtin(x) and cachedLevel(x, default) != NONE
        ]
        queues = [q for q in vhost.queues.values() if cachedLevel(q, default) != NONE]
        present: dict[str, Any] = {
            "exchanges": [x.name for x in exchanges],
            "queues": {q.name: q.uuid for q in queues},
        }
        if vhost is self.vhosts.default:
            # The other virtual hosts: the backup deletes those it has and
            # the primary no longer has.
            present["vhosts"] = [each.name for each in self.vhosts if each is not vhost]
        self.writer.event(ev.SNAPSHOT, json.dumps(present).encode("utf-8"))
        for exchange in exchanges:
            self.exchangeDeclared(exchange)
        for queue in queues:
            self._declare(queue)
            if cachedLevel(queue, default) != ALL:
                continue
            self._entries(queue, holdings)
        for exchange in [vhost.defaultExchange] + list(vhost.exchanges.values()):
            if exchange is vhost.defaultExchange:
                continue
            for binding in exchange.bindings.values():
                self.bound(binding)

    # SettingsObserver

    def settingsChanged(self, state: bytes) -> None:
        """
        Options were set at run time: the backup applies the same state,
        so that it uses them once promoted.
        """
        self.writer.event(ev.SETTINGS, state)
        self._scheduleFlush()

    # AccountsObserver

    def accountChanged(self, change: AccountChange) -> None:
        """
        Users or permissions changed at run time: the backup applies the
        same change.
        """
        self.writer.accountChange(change)
        self._scheduleFlush()

    # VirtualHostsObserver

    def vhostAdded(self, vhost: VirtualHost) -> None:
        """
        A virtual host was added: the backup adds it, and its changes
        follow.
        """
        self.writer.vhostAdded(vhost.name)
        observe(vhost, self, kind=SourceObserver)
        self._scheduleFlush()

    def vhostDeleted(self, vhost: VirtualHost) -> None:
        """
        A virtual host was deleted (its objects' deletions were written
        first): the backup deletes it.
        """
        unobserve(vhost, self)
        self._following = {
            queue: follows for queue, follows in self._following.items() if queue.vhost is not vhost
        }
        self.writer.vhostDeleted(vhost.name)
        self._scheduleFlush()

    # BrokerObserver

    def _declare(self, queue: Queue) -> None:
        self.writer.queueDeclared(queue, queue.everConsumed)

    def _replicated(self, obj: Queue | Exchange, level: str = CONFIGURATION) -> bool:
        if self.only is not None:
            return isinstance(obj, Queue) and obj.name == self.only
        actual = cachedLevel(obj, self.node.replicateDefault)
        return actual == ALL or (actual == CONFIGURATION and level == CONFIGURATION)

    def queueDeclared(self, queue: Queue) -> None:
        if self._replicated(queue):
            self._declare(queue)
            self._scheduleFlush()

    def queueDeleted(self, queue: Queue) -> None:
        self._following.pop(queue, None)
        self._walking.pop(queue, None)
        if self._replicated(queue):
            self.writer.event(ev.QUEUE_DELETED, queue.name, queue.uuid)
            self._scheduleFlush()

    def exchangeDeclared(self, exchange: Exchange) -> None:
        if self._replicated(exchange):
            self.writer.exchangeDeclared(exchange)
            self._scheduleFlush()

    def exchangeDeleted(self, exchange: Exchange) -> None:
        if self._replicated(exchange):
            self.writer.event(ev.EXCHANGE_DELETED, exchange.name)
            self._scheduleFlush()

    def _bindingEvent(self, kind: bytes, binding: Binding) -> None:
        source = binding.source
        destination = binding.destination
        if source.name == "":
            return
        if not (_builtin(source) or self._replicated(source)):
            return
        if isinstance(destination, Queue):
            if not self._replicated(destination):
                return
        elif not (_builtin(destination) or self._replicated(destination)):
            return
        self.writer.binding(kind, binding)
        self._scheduleFlush()

    def bound(self, binding: Binding) -> None:
        self._bindingEvent(ev.BOUND, binding)

    def unbound(self, binding: Binding) -> None:
        self._bindingEvent(ev.UNBOUND, binding)

    # The message events are the hot path: each looks up once per queue
    # whether this backup copies its messages (_follows), and schedules the
    # flush only when none is scheduled.

    def _follows(self, queue: Queue) -> bool:
        follows = self._following[queue] = self._replicated(queue, ALL)
        return follows

    def enqueued(self, queue: Queue, entry: Entry) -> None:
        """
        C{entry} joined C{queue}: its enqueue event, if this backup copies
        the queue's messages and has (or is sent) the entry. The snapshot
        comes through here; the live stream through L{SourceObserver},
        which does the same.
        """
        follows = self._following.get(queue)
        if follows or (follows is None and self._follows(queue)):
            if self._walking and not self._has(queue, entry.id):
                return
            self.writer.entry(queue, entry)
            if self._flushCall is None:
                self._scheduleFlush()

    def _entryEvents(self, kind: bytes, queue: Queue, entries: Sequence[Entry]) -> None:
        follows = self._following.get(queue)
        if follows or (follows is None and self._follows(queue)):
            if self._walking:
                walk = self._walking.get(queue)
                if walk is not None:
                    if kind == ev.DEQUEUED:
                        walk.gone(entries)
                    entries = [entry for entry in entries if walk.has(entry.id)]
                    if not entries:
                        return
            self.writer.entryEvents(kind, queue.name, entries)
            if self._flushCall is None:
                self._scheduleFlush()

    def acquired(self, queue: Queue, entries: Sequence[Entry]) -> None:
        self._entryEvents(ev.ACQUIRED, queue, entries)

    def released(self, queue: Queue, entry: Entry) -> None:
        self._entryEvents(ev.RELEASED, queue, (entry,))

    def dequeued(self, queue: Queue, entries: Sequence[Entry]) -> None:
        self._entryEvents(ev.DEQUEUED, queue, entries)

    def purged(self, queue: Queue, count: int) -> None:
        walk = self._walking.get(queue)
        if walk is not None:
            walk.purged()
        if self._replicated(queue, ALL):
            self.writer.event(ev.PURGED, queue.name)
            self._scheduleFlush()
