"""
Queues, their entries and their consumers, and the queue policies.

A queue holds L{Entry} objects in order. Each entry has a per-queue id that
only grows (the replication id of the cluster work), so a message that a
consumer held and gave back returns to its old place. Every change to a queue
is reported, in order, to the virtual host's observers: a message dropped by a
length limit, replaced in a last-value queue or expired is a dequeue like an
acknowledged one, so a replica that applies the same events holds the same
messages.

The policies (see L{qha.broker.policy}) are priority levels with fairshare,
a length limit in messages or bytes that drops the oldest (lowest priority
first) or refuses the publish, last-value replacement, message TTL, queue
expiry and dead-lettering. A queue with none of them takes a fast path.

RabbitMQ's queue arguments that are not policies are checked here too
(L{checkDeclaration}): C{x-queue-type} (classic, or quorum: a durable queue
that a cluster replicates in full), C{x-queue-mode} and
C{x-single-active-consumer}, with which only the oldest consumer of the
queue gets messages.

Paging (see L{qha.broker.paging}): a queue whose ready bodies pass its
budget (C{x-max-in-memory-length}, C{x-max-in-memory-bytes},
C{x-queue-mode=lazy}, or the broker-wide budget of its L{Pager}) pages the
bodies of its new messages out, and reads them back a window at a time
ahead of its consumers; delivery order, acknowledgements, requeues and the
policies are those of messages in memory.

A plain FIFO queue (no priorities, no last-value key, no queue TTL; durable
or not) pages whole messages instead when its pager says so
(L{Pager.segments}): its ready entries are then an in-memory I{head}
(L{Queue.levels}), followed by a paged I{tail} of L{Segment}s, followed by
the I{forming} entries of the next segment, still in memory. New entries go
to the forming ones while there is a tail; a full forming segment is written
as one record; when the head runs out, the first segment is read back into
it. Every operation that names an entry of the tail by id (a replica's
events) reads the tail back up to it first; purge and delete drop the
segments unread.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import deque
from itertools import islice
from uuid import uuid4
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Protocol, Sequence, cast

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from .errors import NotImplemented_, PreconditionFailed
from .message import Message, PagedMessage
from .paging import Pager, Segment, decodeSegment, encodeSegment
from .policy import DROP_HEAD, REJECT_PUBLISH_DLX, QueuePolicy, _integer, parsePolicy

if TYPE_CHECKING:
    from .vhost import VirtualHost


QUEUE_TYPE = "x-queue-type"
CLASSIC = "classic"
QUORUM = "quorum"
SINGLE_ACTIVE_CONSUMER = "x-single-active-consumer"
QUEUE_MODES = ("default", "lazy")
MAX_IN_MEMORY_LENGTH = "x-max-in-memory-length"
# A queue without policies with more ready messages than this, over the
# broker's memory budget, takes the policy path, which counts bytes.
_PLAIN_BACKLOG = 16
MAX_IN_MEMORY_BYTES = "x-max-in-memory-bytes"

_AMQP_TYPES = {
    str: "longstr",
    bytes: "longstr",
    int: "long",
    float: "double",
    dict: "table",
    list: "array",
    type(None): "void",
}


def _text(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return value


def inMemoryLimits(arguments: dict[str, Any], name: str) -> tuple[int | None, int | None]:
    """
    The most ready messages, and body bytes, that a queue declared with
    C{arguments} keeps in memory before it pages new ones out:
    C{x-max-in-memory-length} and C{x-max-in-memory-bytes} (RabbitMQ's
    quorum-queue arguments, here for any queue), and C{x-queue-mode=lazy},
    which pages at once (a length of 0). L{None}: no limit of its own.

    @raise PreconditionFailed: if one is not a whole number of at least 0.
    """
    if not arguments:
        return None, None
    length = _integer(arguments, MAX_IN_MEMORY_LENGTH, name, 0)
    size = _integer(arguments, MAX_IN_MEMORY_BYTES, name, 0)
    if _text(arguments.get("x-queue-mode")) == "lazy":
        length = 0
    return length, size


def queueType(arguments: dict[str, Any]) -> str:
    """
    The RabbitMQ queue type that C{arguments} ask for: their
    C{x-queue-type}, C{classic} if none.
    """
    return str(_text(arguments.get(QUEUE_TYPE, CLASSIC)))


def checkDeclaration(
    name: str,
    vhostName: str,
    durable: bool,
    exclusive: bool,
    autoDelete: bool,
    arguments: dict[str, Any],
    serverNamed: bool = False,
) -> None:
    """
    Check the declaration of a new queue against RabbitMQ 3.10's rules for
    C{x-queue-type}, C{x-queue-mode} and C{x-single-active-consumer}, with
    RabbitMQ's codes and texts (clients match on them).

    A quorum queue is accepted as a durable queue that is not exclusive,
    not auto-delete and not server-named, which a cluster replicates as
    C{qpid.replicate=all}; a stream is refused, as qha has none.

    @raise PreconditionFailed: for an invalid argument or a quorum queue
        that breaks a rule (406).
    @raise NotImplemented_: for a stream (540).
    """
    where = f"for queue '{name}' in vhost '{vhostName}'"
    kind = queueType(arguments)
    if kind not in (CLASSIC, QUORUM, "stream"):
        raise PreconditionFailed(
            f"invalid arg '{QUEUE_TYPE}' {where}: \"unsupported queue type '{kind}'\""
        )
    mode = _text(arguments.get("x-queue-mode", "default"))
    if mode not in QUEUE_MODES:
        raise PreconditionFailed(
            f"invalid arg 'x-queue-mode' {where}: \"unsupported queue mode '{mode}'\""
        )
    single = arguments.get(SINGLE_ACTIVE_CONSUMER, False)
    if not isinstance(single, bool):
        typeName = _AMQP_TYPES.get(type(single), type(single).__name__)
        raise PreconditionFailed(
            f"invalid arg '{SINGLE_ACTIVE_CONSUMER}' {where}: {{unacceptable_type,{typeName}}}"
        )
    if kind == "stream":
        raise NotImplemented_(
            f"queue '{name}' in vhost '{vhostName}': x-queue-type 'stream' is not"
            " supported; qha has no streams (declare a classic or a quorum queue)"
        )
    if kind == QUORUM:
        if serverNamed:
            raise PreconditionFailed(
                "Cannot declare a server-named queue for type rabbit_quorum_queue"
            )
        for broken, property in [
            (autoDelete, "auto-delete"),
            (exclusive, "exclusive-owner"),
            (not durable, "non-durable"),
        ]:
            if broken:
                raise PreconditionFailed(
                    f"invalid property '{property}' for queue '{name}' in vhost"
                    f" '{vhostName}'"
                )


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


class QueueFull(PreconditionFailed):
    """
    A publish was refused by a full queue whose overflow mode is
    C{reject-publish}: confirm-mode publishers get basic.nack, others this
    channel error.
    """

    def __init__(self, queue: "Queue") -> None:
        policy = queue.policy
        limits = []
        if policy.maxCount is not None:
            limits.append(f"at most {policy.maxCount} messages")
        if policy.maxBytes is not None:
            limits.append(f"at most {policy.maxBytes} bytes")
        super().__init__(
            f"queue '{queue.name}' in vhost '{queue.vhost.name}' is full"
            f" ({' and '.join(limits)}, overflow {policy.overflow}): message refused"
        )
        self.queue = queue


class Entry:
    """
    A message's place in one queue.

    @ivar id: the per-queue id, increasing in enqueue order.
    @ivar redelivered: whether the message was delivered before.
    @ivar level: its priority level (0 in a queue without priorities).
    @ivar expiresAt: when it expires (clock seconds), or L{None}.
    @ivar deliveryCount: how many times it was delivered.
    """

    __slots__ = ("message", "id", "redelivered", "level", "expiresAt")

    def __init__(
        self,
        message: Message,
        id: int,
        redelivered: bool = False,
        level: int = 0,
        expiresAt: float | None = None,
    ) -> None:
        self.message = message
        self.id = id
        self.redelivered = redelivered
        self.level = level
        self.expiresAt = expiresAt

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
    A queue: entries in order (by priority level, then id), consumers served
    in turn.

    @ivar owner: for an exclusive queue, the connection that owns it.
    @ivar everConsumed: whether a consumer ever subscribed (an auto-delete
        queue is deleted when its last consumer goes, not before it had one).
    @ivar unacked: how many entries consumers hold unacknowledged.
    @ivar policy: the policies its arguments asked for.
    @ivar levels: the ready entries of each priority level, oldest first
        (of a queue that pages segments, those of its head: its tail
        follows them).
    @ivar readyBytes: the body bytes of the ready entries (paged ones
        included).
    @ivar pagedCount: how many ready messages are paged out (bodies paged
        one by one, or whole in segments).
    @ivar pagedBytes: their body bytes.
    @ivar droppedPaged: how many paged messages the last L{clearReady}
        dropped unread (they are not among the entries it returned).
    @ivar published: messages enqueued here by publishers (not replicated
        ones), for the management API's rates and C{/metrics}: a counter on
        the queue, not an observer, so the stream's position is untouched.
    @ivar delivered: entries handed to consumers and C{basic.get}.
    """

    replicationLevel: str | None = None
    """
    The replication level a cluster worked out for it (its C{qpid.replicate}
    argument, or the broker's default when it was first seen), kept here by
    L{qha.ha.primary.cachedLevel} so that it does not change under it;
    L{None} until then.
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
        policy: QueuePolicy | None = None,
    ) -> None:
        self.vhost = vhost
        self.name = name
        self.durable = durable
        self.exclusive = exclusive
        self.autoDelete = autoDelete
        self.arguments = arguments or {}
        self.owner = owner
        self.policy = policy if policy is not None else parsePolicy(self.arguments, name)
        # Only the oldest consumer gets messages (x-single-active-consumer):
        # the consumers are never rotated, so that one is consumers[0].
        self.singleActive = self.arguments.get(SINGLE_ACTIVE_CONSUMER) is True
        self.plain = self.policy.plain
        self._limited = self.policy.limited
        # Paging: the queue's own limits on what it keeps in memory, the
        # broker's pager, and the ready entries whose bodies are paged out.
        self.maxInMemoryLength, self.maxInMemoryBytes = inMemoryLimits(self.arguments, name)
        if self.maxInMemoryLength is not None or self.maxInMemoryBytes is not None:
            # The policy path counts ready bytes, which the limits need.
            self.plain = False
        self._pager: Pager | None = vhost.resources.pager
        self.pagedCount = 0
        self.pagedBytes = 0
        self._everPaged = False
        # The addressing and header bytes of the last message paged: the
        # next with equal ones keeps these (a backlog's messages mostly
        # share them, and each copy costs about 50 bytes a message).
        self._pagedAddressing = b""
        self._pagedHeader = b""
        # Segment paging (see the module): whether this queue pages whole
        # messages in segments, its paged segments, and the entries of the
        # next one, in memory until it is written.
        pager = self._pager
        self._segmentable = (
            pager is not None
            and pager.segments
            and self.policy.priorities == 0
            and self.policy.lvqKey is None
            and self.policy.messageTtl is None
        )
        self._segments: deque[Segment] = deque()
        self._forming: list[Entry] = []
        self._formingBytes = 0
        self._formingExpiring = False
        # The last segment decoded for a reader that leaves it paged (a
        # catch-up walks a segment a batch at a time): it and its entries.
        self._decoded: tuple[Segment, list[Entry]] | None = None
        # How many paged messages the last clearReady dropped unread.
        self.droppedPaged = 0
        # No level above this one has entries (a priority queue starts
        # its search for the next entry here).
        self._topHint = max(self.policy.priorities, 1) - 1
        self.levels: list[deque[Entry]] = [
            deque() for _ in range(max(self.policy.priorities, 1))
        ]
        self._first = self.levels[0]
        self.readyCount = 0
        self.readyBytes = 0
        self.consumers: deque[Consumer] = deque()
        self.bindings: set[Any] = set()
        self.nextId = 1
        self.unacked = 0
        self.published = 0
        self.delivered = 0
        self.everConsumed = False
        self.deleted = False
        self._dispatching = False
        self._lastValues: dict[Any, Entry] = {}
        # The id of the newest message of each key value ever enqueued, so
        # that an older value given back by a consumer is dropped even when
        # the newer one is held or was consumed.
        self._newestValueIds: dict[Any, int] = {}
        self._streakLevel = -1
        self._streak = 0
        self._expiryCall: IDelayedCall | None = None
        self._idleCall: IDelayedCall | None = None
        self.held: dict[int, Entry] = {}
        # On a replica, every ready entry by id (the primary's events name
        # entries by id); None on a serving broker.
        self._byId: dict[int, Entry] | None = None
        self.uuid = uuid4().hex
        self.touch()

    def __repr__(self) -> str:
        return f"<Queue {self.name!r} ready={self.messageCount} unacked={self.unacked}>"

    @property
    def clock(self) -> IReactorTime:
        """
        The virtual host's clock, for TTL and expiry.
        """
        return self.vhost.clock

    @property
    def entries(self) -> deque[Entry]:
        """
        The ready entries in delivery order (highest priority first). For a
        queue without priorities this is the live deque itself (of a queue
        that pages segments, its head: L{readyEntries} includes the tail).
        """
        if len(self.levels) == 1:
            return self._first
        return deque(entry for level in reversed(self.levels) for entry in level)

    @property
    def messageCount(self) -> int:
        """
        How many messages are ready for delivery (not held by a consumer).
        """
        if self.plain:
            return len(self._first)
        return self.readyCount

    @property
    def consumerCount(self) -> int:
        """
        How many consumers the queue has.
        """
        return len(self.consumers)

    def _notify(self, event: str, *args: Any) -> None:
        vhost = self.vhost
        vhost.changes += 1
        for observer in vhost.observers:
            getattr(observer, event)(self, *args)

    # Enqueueing

    def enqueue(self, message: Message) -> Entry:
        """
        Append C{message} and deliver what can be delivered.

        @raise QueueFull: when a full queue refuses publishes.
        """
        if not self.plain:
            return self._enqueuePolicy(message)
        if message.header[12] & 0x01 and message.expiration is not None:
            # A per-message expiration (property flag 0x0100) needs the
            # policy path, from now on.
            self._leavePlain()
            return self._enqueuePolicy(message)
        entry = Entry(message, self.nextId)
        self.nextId += 1
        self.published += 1
        self._first.append(entry)
        vhost = self.vhost
        self._added(entry)
        if self.consumers:
            undispatched = vhost.undispatched
            if undispatched is None:
                self.dispatch()
            else:
                undispatched.add(self)
        if self._pager is not None:
            self._maybePageOut(entry)
        return entry

    def _added(self, entry: Entry) -> None:
        """
        C{entry} joined the queue: account for its memory and tell the
        observers.
        """
        vhost = self.vhost
        vhost.resources.add(len(entry.message.body))
        if vhost.observers:
            vhost.changes += 1
            for observer in vhost.observers:
                observer.enqueued(self, entry)

    def _leavePlain(self) -> None:
        """
        Take the policy path from now on, for a queue with no policy that
        got a message with an expiration: count its ready entries the way
        that path does.
        """
        self.plain = False
        self.readyCount = len(self._first)
        self.readyBytes = sum(entry.message.size for entry in self._first)

    def _enqueuePolicy(self, message: Message) -> Entry:
        policy = self.policy
        size = len(message.body)
        limited = self._limited
        if limited and policy.overflow != DROP_HEAD and self._wouldOverflow(size):
            if policy.overflow == REJECT_PUBLISH_DLX:
                self.vhost.deadLetter(self, [message], "maxlen")
            raise QueueFull(self)
        level = 0
        if policy.priorities and message.header[12] & 0x08:
            # The priority property's flag (0x0800): without it, level 0.
            level = min(message.priority, policy.priorities - 1)
        expiresAt = None
        ttl = policy.messageTtl
        # The expiration property's flag (0x0100) is bit 0 of the first
        # flag byte: most messages have none, and need no scan.
        if message.header[12] & 0x01:
            expiration = message.expiration
            if expiration is not None and (ttl is None or expiration < ttl):
                ttl = expiration
        if ttl is not None:
            expiresAt = self.vhost.clock.seconds() + ttl / 1000.0
        entry = Entry(message, self.nextId, False, level, expiresAt)
        self.nextId += 1
        self.published += 1
        if policy.lvqKey is not None:
            value = message.headers.get(policy.lvqKey)
            if value is not None:
                value = _hashable(value)
                previous = self._lastValues.get(value)
                if previous is not None:
                    self._unlink(previous)
                    self._removed(previous)
                self._lastValues[value] = entry
                self._newestValueIds[value] = entry.id
        self._added(entry)
        if self._segments or self._forming:
            self._toForming(entry)
        else:
            self._link(entry)
        if limited:
            while self._overLimit():
                dropped = self._dropOldest()
                if dropped is None:
                    break
                if dropped.message.paged and policy.deadLetterExchange is not None:
                    self._readBack([dropped])
                self._removed(dropped)
                self.vhost.deadLetter(self, [dropped.message], "maxlen")
        if ttl == 0:
            # A message with no time to live may go to a waiting consumer,
            # and otherwise expires at once, as in RabbitMQ. It must not
            # count as expired while this dispatch runs (the clock moved
            # since its expiresAt was computed), but does if it comes back.
            if self.consumers:
                entry.expiresAt = None
                try:
                    self.dispatch()
                finally:
                    entry.expiresAt = expiresAt
            self.expireDue()
        elif self.consumers:
            self.dispatch()
        if expiresAt is not None and self.readyCount:
            # (Delivered at once: nothing to expire.)
            call = self._expiryCall
            if call is None or not call.active() or call.getTime() > expiresAt:
                self._scheduleExpiry()
        if self._pager is not None:
            self._maybePageOut(entry)
        return entry

    def _wouldOverflow(self, size: int) -> bool:
        policy = self.policy
        return (policy.maxCount is not None and self.readyCount + 1 > policy.maxCount) or (
            policy.maxBytes is not None and self.readyBytes + size > policy.maxBytes
        )

    def _overLimit(self) -> bool:
        policy = self.policy
        return (policy.maxCount is not None and self.readyCount > policy.maxCount) or (
            policy.maxBytes is not None and self.readyBytes > policy.maxBytes
        )

    def _link(self, entry: Entry) -> None:
        """
        Add C{entry} to the end of its level.
        """
        level = entry.level
        self.levels[level].append(entry)
        if level > self._topHint:
            self._topHint = level
        self.readyCount += 1
        self.readyBytes += entry.message.size

    def _unlink(self, entry: Entry) -> None:
        """
        Take C{entry} out of the middle of its level.
        """
        self.levels[entry.level].remove(entry)
        self._forget(entry)

    def _forget(self, entry: Entry) -> None:
        """
        C{entry} is no longer ready: update the counts and the last values.
        """
        message = entry.message
        size = message.size
        self.readyCount -= 1
        self.readyBytes -= size
        if self.pagedCount and message.paged:
            self.pagedCount -= 1
            self.pagedBytes -= size
        if self._byId is not None:
            self._byId.pop(entry.id, None)
        if self._lastValues:
            value = self.policy.lvqKey and entry.message.headers.get(self.policy.lvqKey)
            if value is not None:
                value = _hashable(value)
                if self._lastValues.get(value) is entry:
                    del self._lastValues[value]

    def _removed(self, entry: Entry) -> None:
        """
        C{entry} left the queue without being delivered (replaced, dropped,
        expired): account for it and tell the observers.
        """
        self._removedAll((entry,))

    def _removedAll(self, entries: Sequence[Entry]) -> None:
        """
        L{_removed} for many entries, with their memory accounted at once.
        """
        vhost = self.vhost
        if self._everPaged:
            vhost.resources.remove(sum(entry.message.resident for entry in entries), len(entries))
        else:
            vhost.resources.remove(sum(len(entry.message.body) for entry in entries), len(entries))
        if vhost.observers and not self.deleted:
            vhost.changes += len(entries)
            for observer in vhost.observers:
                observer.dequeued(self, entries)
        if self._everPaged:
            self._freePages(entries)

    def _dropOldest(self) -> Entry | None:
        """
        Remove the oldest entry of the lowest non-empty priority level.
        """
        if not self._first and (self._segments or self._forming):
            self._refill()
        for level in self.levels:
            if level:
                entry = level.popleft()
                self._forget(entry)
                if level and level[0].expiresAt is not None:
                    self._scheduleExpiry()
                return entry
        return None

    # Paging

    def _maybePageOut(self, entry: Entry) -> None:
        """
        C{entry} was just enqueued: page its body out if it is still ready
        (no consumer took it) at the end of its level and the queue is
        over its budget. Only new messages are paged, so the head of the
        queue, which its consumers take next, stays in memory.
        """
        if self._segmentable:
            self._maybeSegment(entry)
            return
        if entry.message.paged:
            return
        level = self.levels[entry.level]
        if not level or level[-1] is not entry:
            return
        if self._overBudget():
            self._pageOut(entry)

    def _overBudget(self) -> bool:
        """
        Whether the queue is past its budget, so that a new entry at the
        end of its head should be paged (a plain queue with a backlog past
        the broker's budget leaves its fast path first).
        """
        used = self.vhost.resources.used
        past = self._pastBudget(0, 0, used)
        if past is None:
            self._leavePlain()
            past = self._pastBudget(0, 0, used)
        return bool(past)

    def _pastBudget(self, count: int, bodyBytes: int, used: int) -> bool | None:
        """
        Whether the queue would be past its paging budget with C{count}
        more ready entries of C{bodyBytes}, the broker using C{used} bytes
        then; L{None} for a plain queue with a backlog past the broker's
        budget (it would leave its fast path, and then be judged again).
        Changes nothing.
        """
        resident = self.messageCount + count - self.pagedCount
        length = self.maxInMemoryLength
        if length is not None and resident > length:
            return True
        inMemory = self.readyBytes + bodyBytes - self.pagedBytes
        size = self.maxInMemoryBytes
        if size is not None and inMemory > size:
            return True
        pager = self._pager
        if pager is None or not pager.budget or used <= pager.budget:
            return False
        # Over the broker's budget: a queue with a backlog keeps the read-
        # ahead window's worth in memory and pages its new messages.
        if self.plain:
            # Consumers keep up: stay on the fast path.
            return False if resident <= _PLAIN_BACKLOG else None
        return resident > pager.window or inMemory > pager.windowBytes

    # Segment paging (see the module)

    def _maybeSegment(self, entry: Entry) -> None:
        """
        C{entry} was just enqueued on a queue that pages segments: with a
        tail, it went to the forming segment, which is written once full;
        without one, a queue past its budget starts one with it (if no
        consumer took it).
        """
        if not (self._segments or self._forming):
            level = self._first
            if (
                not level
                or level[-1] is not entry
                or entry.id in self.held
                or not self._overBudget()
            ):
                # (A replica's entry that a consumer on the primary holds
                # stays in memory, as it does there.)
                return
            if self.plain:
                self._leavePlain()
            level.pop()
            if self._byId is not None:
                self._byId.pop(entry.id, None)
            self._forming.append(entry)
            self._formingBytes += entry.message.size
            self._formingExpiring = entry.expiresAt is not None
        pager = self._pager
        assert pager is not None
        if len(self._forming) >= pager.segmentMessages or self._formingBytes >= pager.segmentBytes:
            self._writeSegment()

    def _toForming(self, entry: Entry) -> None:
        """
        Add new ready C{entry} behind the tail, to the forming segment.
        """
        self._forming.append(entry)
        size = entry.message.size
        self._formingBytes += size
        if entry.expiresAt is not None:
            self._formingExpiring = True
        self.readyCount += 1
        self.readyBytes += size

    def _writeSegment(self) -> None:
        """
        Write the forming entries as one segment and keep only its
        L{Segment}.
        """
        pager = self._pager
        assert pager is not None
        entries = self._forming
        if not entries:
            return
        record, total, ids, expiring = encodeSegment(entries)
        location = pager.bodies.write(record)
        count = len(entries)
        self._segments.append(
            Segment(location, len(record), count, total, entries[0].id, entries[-1].id, ids, expiring)
        )
        self._forming = []
        self._formingBytes = 0
        self._formingExpiring = False
        self.pagedCount += count
        self.pagedBytes += total
        # (_everPaged stays false: no entry's message is ever a
        # PagedMessage, and every entry that leaves has its body.)
        resources = self.vhost.resources
        # Nothing of them is in memory now, their metadata included.
        resources.pagedOut(total + count * resources.overhead)

    @property
    def hasTail(self) -> bool:
        """
        Whether ready entries follow the in-memory head: paged segments, or
        the forming entries of the next.
        """
        return bool(self._segments or self._forming)

    def _tailFirstId(self) -> int:
        """
        The id of the first entry of the tail (there is one).
        """
        if self._segments:
            return self._segments[0].firstId
        return self._forming[0].id

    def _tailLastId(self) -> int:
        """
        The id of the last entry of the tail (there is one).
        """
        if self._forming:
            return self._forming[-1].id
        return self._segments[-1].lastId

    def _readSegment(self, segment: Segment) -> list[Entry]:
        """
        The entries of C{segment}, read back (new objects with their
        bodies; the segment stays paged).
        """
        decoded = self._decoded
        if decoded is not None and decoded[0] is segment:
            return decoded[1]
        pager = self._pager
        assert pager is not None
        data = pager.bodies.read([(segment.location, segment.size)])[0]
        return [
            Entry(Message(addressing, header, body), id, redelivered, 0, expiresAt)
            for id, redelivered, expiresAt, addressing, header, body in decodeSegment(data)
        ]

    def _refill(self) -> None:
        """
        Move the first segment of the tail (read back and freed), or if none
        is paged the forming entries, to the end of the head.
        """
        pager = self._pager
        assert pager is not None
        if self._segments:
            segment = self._segments.popleft()
            entries = self._readSegment(segment)
            self._decoded = None
            pager.bodies.free(segment.location, segment.size)
            self.pagedCount -= segment.count
            self.pagedBytes -= segment.bodyBytes
            resources = self.vhost.resources
            resources.pagedIn(segment.bodyBytes + segment.count * resources.overhead)
        else:
            entries = self._forming
            self._forming = []
            self._formingBytes = 0
            self._formingExpiring = False
        self._first.extend(entries)
        if self._byId is not None:
            byId = self._byId
            for entry in entries:
                byId[entry.id] = entry

    def _readBackThrough(self, id: int) -> None:
        """
        Read the tail back into the head as far as entry C{id} (an event
        names it): every segment that starts at or before it.
        """
        while (self._segments or self._forming) and self._tailFirstId() <= id:
            self._refill()

    def _tailExpiring(self) -> bool:
        """
        Whether the first entries of the tail (its first segment, or the
        forming ones) include one with an expiry time.
        """
        if self._segments:
            return self._segments[0].expiring
        return self._formingExpiring

    def _dropTail(self) -> tuple[list[Entry], int]:
        """
        Drop the whole tail: free the segments unread, and take the
        forming entries out of the counts.

        @return: the forming entries (in memory: the caller accounts for
            them), and how many paged messages went unread.
        """
        pager = self._pager
        segments = self._segments
        forming = self._forming
        count = total = 0
        if segments:
            assert pager is not None
            free = pager.bodies.free
            for segment in segments:
                free(segment.location, segment.size)
                count += segment.count
                total += segment.bodyBytes
        self._segments = deque()
        self._forming = []
        self._decoded = None
        self.readyCount -= count + len(forming)
        self.readyBytes -= total + self._formingBytes
        self.pagedCount -= count
        self.pagedBytes -= total
        self._formingBytes = 0
        self._formingExpiring = False
        return forming, count

    def segmentEntries(self, after: int, last: int, count: int) -> tuple[list[Entry], bool]:
        """
        The entries of the tail with C{after < id <= last}, in id order, at
        most C{count}, read back as copies that hold their bodies (the
        tail stays paged), for a reader that walks the queue by id (a
        backup's catch-up, L{qha.changes.cursor.entriesAfter}).

        @return: the entries, and whether more of the tail lie in the
            range past them.
        """
        result: list[Entry] = []
        segments = self._segments
        start = bisect_right(segments, after, key=_lastId) if segments else 0
        for segment in islice(segments, start, None):
            if segment.firstId > last:
                return result, False
            entries = self._readSegment(segment)
            self._decoded = (segment, entries)
            for entry in entries:
                if entry.id <= after:
                    continue
                if entry.id > last:
                    return result, False
                if len(result) >= count:
                    return result, True
                result.append(entry)
        for entry in self._forming:
            if entry.id <= after:
                continue
            if entry.id > last:
                break
            if len(result) >= count:
                return result, True
            result.append(entry)
        return result, False

    def _pageOut(self, entry: Entry) -> None:
        """
        Write the body of ready C{entry} to the pager's store and keep only
        what routing and ordering need.
        """
        pager = self._pager
        assert pager is not None
        if self.plain:
            self._leavePlain()
        message = entry.message
        addressing = message.addressing
        if addressing == self._pagedAddressing:
            addressing = self._pagedAddressing
        else:
            self._pagedAddressing = addressing
        header = message.header
        if header == self._pagedHeader:
            header = self._pagedHeader
        else:
            self._pagedHeader = header
        entry.message = PagedMessage.pageOut(message, pager.bodies, addressing, header)
        size = len(message.body)
        self.pagedCount += 1
        self.pagedBytes += size
        self._everPaged = True
        self.vhost.resources.pagedOut(size)

    def _readAhead(self, level: deque[Entry]) -> None:
        """
        The next entry of C{level} to deliver is paged: read back the paged
        ones among its next entries, up to the pager's window, in one go,
        so that consumers do not wait on the disk for each message.
        """
        pager = self._pager
        assert pager is not None
        window: list[Entry] = []
        total = 0
        for entry in islice(level, pager.window):
            message = entry.message
            if message.paged:
                window.append(entry)
                total += message.size
                if total >= pager.windowBytes:
                    break
        self.pagedCount -= len(window)
        self.pagedBytes -= total
        self._readBack(window)

    def _readBack(self, entries: Sequence[Entry]) -> None:
        """
        Read the paged bodies of C{entries} back into memory and free their
        pages (the caller counts them out of L{pagedCount} if they were
        ready).
        """
        pager = self._pager
        assert pager is not None
        bodies = pager.bodies
        pages = [cast(PagedMessage, entry.message) for entry in entries]
        read = bodies.read([(page.location, page.size) for page in pages])
        total = 0
        for entry, page, body in zip(entries, pages, read):
            bodies.free(page.location, page.size)
            entry.message = page.pageIn(body)
            total += len(body)
        self.vhost.resources.pagedIn(total)

    def withBodies(self, entries: Sequence[Entry]) -> list[Entry]:
        """
        C{entries} of this queue with their bodies in memory, for a reader
        that needs every body and changes nothing (a backup's catch-up): the
        paged ones are read back in one read, as a read-ahead does, and
        given as copies that hold the body, while the queue's own entries
        stay paged.
        """
        pager = self._pager
        if pager is None or not self._everPaged:
            return list(entries)
        paged = [index for index, entry in enumerate(entries) if entry.message.paged]
        if not paged:
            return list(entries)
        result = list(entries)
        pages = [cast(PagedMessage, entries[index].message) for index in paged]
        read = pager.bodies.read([(page.location, page.size) for page in pages])
        for index, page, body in zip(paged, pages, read):
            entry = entries[index]
            result[index] = Entry(
                page.pageIn(body), entry.id, entry.redelivered, entry.level, entry.expiresAt
            )
        return result

    def _freePages(self, entries: Iterable[Entry]) -> None:
        """
        C{entries} left the queue: free the pages of those that were paged.
        """
        pager = self._pager
        if pager is None:
            return
        free = pager.bodies.free
        for entry in entries:
            message = entry.message
            if message.paged:
                free(cast(PagedMessage, message).location, message.size)

    # Delivery

    def _nextLevel(self) -> deque[Entry] | None:
        """
        The level to deliver from next: the highest with entries, unless it
        used up its fairshare and a lower one is waiting.
        """
        levels = self.levels
        top = len(levels) - 1
        if not top:
            first = levels[0]
            return first if first else None
        # Levels above the hint are empty: start there, not at the top.
        top = min(top, self._topHint)
        while top >= 0 and not levels[top]:
            top -= 1
        if top < 0:
            self._topHint = 0
            return None
        self._topHint = top
        fairshare = self.policy.fairshare
        if not fairshare:
            return levels[top]
        if top == self._streakLevel:
            limit = fairshare.get(top, 0)
            if limit and self._streak >= limit:
                lower = top - 1
                while lower >= 0 and not levels[lower]:
                    lower -= 1
                if lower >= 0:
                    top = lower
        if top == self._streakLevel:
            self._streak += 1
        else:
            self._streakLevel = top
            self._streak = 1
        return levels[top]

    def _take(self) -> Entry | None:
        """
        Remove and return the next entry to deliver, expiring (and
        dead-lettering) any that ran out of time on the way.
        """
        if self.plain:
            return self._first.popleft() if self._first else None
        now: float | None = None
        expired = False
        single = len(self.levels) == 1
        while True:
            if single:
                level = self._first
                if not level:
                    if not (self._segments or self._forming):
                        return None
                    self._refill()
            else:
                next = self._nextLevel()
                if next is None:
                    return None
                level = next
            if self.pagedCount and level[0].message.paged:
                self._readAhead(level)
            entry = level.popleft()
            self._forget(entry)
            if entry.expiresAt is not None:
                if now is None:
                    now = self.clock.seconds()
                if entry.expiresAt <= now:
                    self._expire(entry)
                    expired = True
                    continue
            if expired or (level and level[0].expiresAt is not None):
                # A new head with a time to live (a per-message expiration
                # behind one without) needs a timer, as in RabbitMQ; one
                # set for an older head fires first and looks again.
                call = self._expiryCall
                if (
                    expired
                    or call is None
                    or not call.active()
                    or call.getTime() > level[0].expiresAt  # type: ignore[operator]
                ):
                    self._scheduleExpiry()
            return entry

    def _expire(self, entry: Entry) -> None:
        if entry.message.paged and self.policy.deadLetterExchange is not None:
            self._readBack([entry])
        self._removed(entry)
        self.vhost.deadLetter(self, [entry.message], "expired")

    def _hasReady(self) -> bool:
        if self.plain:
            return bool(self._first)
        return self.readyCount > 0

    def dispatch(self) -> None:
        """
        Deliver ready entries to consumers that can take them, in turn.
        """
        if self._dispatching:
            return
        self._dispatching = True
        # The entries held by consumers, told to the observers in one call.
        acquired: list[Entry] = []
        try:
            consumers = self.consumers
            held = self.held
            single = self.singleActive
            while consumers and self._hasReady():
                for _ in range(1 if single else len(consumers)):
                    consumer = consumers[0]
                    if not single:
                        consumers.rotate(-1)
                    if consumer.target.canDeliver(consumer):
                        entry = self._take()
                        if entry is None:
                            return
                        self.delivered += 1
                        if consumer.noAck:
                            # Settled at once: its acquire comes before its
                            # dequeue.
                            acquired.append(entry)
                            self._acquired(acquired)
                            acquired = []
                            consumer.target.deliver(consumer, entry)
                            self.settle(entry)
                        else:
                            acquired.append(entry)
                            consumer.unacked += 1
                            self.unacked += 1
                            held[entry.id] = entry
                            consumer.target.deliver(consumer, entry)
                        break
                else:
                    return
        finally:
            self._dispatching = False
            if acquired:
                self._acquired(acquired)

    def _acquired(self, entries: Sequence[Entry]) -> None:
        """
        Tell the observers consumers took C{entries}.
        """
        vhost = self.vhost
        if vhost.observers:
            vhost.changes += len(entries)
            for observer in vhost.observers:
                observer.acquired(self, entries)

    def get(self) -> Entry | None:
        """
        Take the first ready entry for basic.get, or L{None} if there is none.

        The caller settles or releases it.
        """
        self.touch()
        entry = self._take()
        if entry is None:
            return None
        self.delivered += 1
        self.held[entry.id] = entry
        self._acquired((entry,))
        return entry

    def settle(self, entry: Entry) -> None:
        """
        C{entry} was acknowledged (or delivered with no-ack): it is gone.
        """
        self.held.pop(entry.id, None)
        self._removedAll((entry,))

    def settleAll(self, entries: Sequence[Entry]) -> None:
        """
        L{settle} for many entries (a multiple acknowledgement), with the
        observers told once.
        """
        held = self.held
        for entry in entries:
            held.pop(entry.id, None)
        self._removedAll(entries)

    def reject(self, entries: list[Entry]) -> None:
        """
        C{entries} were rejected without requeue: gone, and dead-lettered if
        the queue says where.
        """
        self.settleAll(entries)
        self.vhost.deadLetter(self, [entry.message for entry in entries], "rejected")

    def release(self, entries: Iterable[Entry], redelivered: bool = True) -> None:
        """
        Put C{entries} back in their places (by id), marked redelivered.
        """
        if self.deleted:
            for entry in entries:
                self.held.pop(entry.id, None)
                self.vhost.resources.remove(entry.message.resident)
            return
        vhost = self.vhost
        lastValues = self.policy.lvqKey is not None
        for entry in sorted(entries, key=lambda e: e.id, reverse=True):
            self.held.pop(entry.id, None)
            entry.redelivered = entry.redelivered or redelivered
            if lastValues and self._supersededValue(entry):
                # A newer message with the same key arrived while this one
                # was held: the newer value wins.
                self._removed(entry)
                continue
            self._insert(entry)
            if lastValues:
                value = entry.message.headers.get(self.policy.lvqKey)  # type: ignore[arg-type]
                if value is not None:
                    self._lastValues[_hashable(value)] = entry
            if vhost.observers:
                vhost.changes += 1
                for observer in vhost.observers:
                    observer.released(self, entry)
        if self.consumers:
            self.dispatch()
        if not self.plain:
            # Per-message expirations count too: an entry that expired while
            # held must not wait for a later timer.
            self._scheduleExpiry()

    def _insert(self, entry: Entry) -> None:
        """
        Put C{entry} in its level at the place its id gives it.
        """
        if self._byId is not None:
            self._byId[entry.id] = entry
        if entry.level > self._topHint:
            self._topHint = entry.level
        ready = self.levels[entry.level]
        if not ready or entry.id < ready[0].id:
            ready.appendleft(entry)
        elif entry.id > ready[-1].id:
            ready.append(entry)
        else:
            ready.insert(bisect_left(ready, entry.id, key=_entryId), entry)
        self.readyCount += 1
        self.readyBytes += entry.message.size

    def _find(self, id: int) -> Entry | None:
        """
        The ready entry with C{id}, or L{None}; one in the tail is read
        back first, with the tail before it.
        """
        if (self._segments or self._forming) and self._tailFirstId() <= id:
            self._readBackThrough(id)
        if self._byId is not None:
            return self._byId.get(id)
        for ready in self.levels:
            if ready and ready[0].id == id:
                return ready[0]
            if ready and ready[0].id <= id <= ready[-1].id:
                index = bisect_left(ready, id, key=_entryId)
                if index < len(ready) and ready[index].id == id:
                    return ready[index]
        return None

    # Replicas: a backup applies the primary's events exactly, running no
    # policy of its own (the primary's drops, replacements and expiries
    # arrive as dequeues).

    def replicaEnqueue(
        self,
        message: Message,
        id: int,
        redelivered: bool = False,
        expiresAt: float | None = None,
        acquired: bool = False,
    ) -> Entry:
        """
        Add the primary's entry C{id} in its place.

        @param expiresAt: when it expires on the primary's clock (the
            primary's TTL deadline is kept, not restarted); L{None} if it
            does not.
        @param acquired: whether a consumer on the primary took it as it
            was enqueued (see L{replicaAcquire}).
        """
        if self._byId is None and self.vhost.replica:
            self._byId = {e.id: e for level in self.levels for e in level}
        if (self._segments or self._forming) and (acquired or id <= self._tailLastId()):
            # A consumer on the primary took it at once (so it holds every
            # older one), or it goes among the tail's: read the tail back.
            self._readBackThrough(self._tailLastId() if acquired else id)
        tail = bool(self._segments or self._forming)
        last = self._tailLastId() if tail else self._first[-1].id if self._first else 0
        if len(self.levels) > 1 or id <= last:
            # Only an id at or below the newest can be a duplicate.
            existing = self._find(id)
            if existing is not None:
                if acquired:
                    self.replicaAcquire(id)
                return existing
        policy = self.policy
        level = min(message.priority, policy.priorities - 1) if policy.priorities else 0
        # The primary worked out the deadline (None: the message does not
        # expire); the replica keeps it rather than restarting the TTL.
        entry = Entry(message, id, redelivered, level, expiresAt)
        if id >= self.nextId:
            self.nextId = id + 1
        if self.plain and expiresAt is not None:
            # As on the primary: once promoted, it must expire this one.
            self._leavePlain()
        if tail and id > last:
            self._toForming(entry)
        else:
            self._insert(entry)
        if policy.lvqKey is not None:
            value = message.headers.get(policy.lvqKey)
            if value is not None:
                self._lastValues[_hashable(value)] = entry
        vhost = self.vhost
        self._added(entry)
        if vhost.replica:
            if acquired:
                # replicaAcquire, for the entry at hand.
                entry.redelivered = True
                self.held[id] = entry
        else:
            # A single-queue replica on a serving broker feeds its consumers.
            if self.consumers:
                self.dispatch()
            if acquired:
                self.replicaAcquire(id)
        if self._pager is not None:
            # A backup pages what it holds by the same budget as the primary.
            self._maybePageOut(entry)
        return entry

    def replicaAppend(self, entries: list[Entry], bodyBytes: int, expiring: bool) -> bool:
        """
        Add the primary's new ready C{entries} at the end of the queue at
        once, exactly as L{replicaEnqueue} would add them one by one, if
        that is simple: a catch-up batch is thousands of them in a row, and
        the checks of each one (its place, whether it is there already,
        the paging budget) are then the same for all.

        It is simple when this is a replica with one level, no tail, no
        last-value key and no observers of its virtual host (a backup's
        store does not observe the run it takes as it came; see
        L{qha.changes.replay.Verbatim}), the first id is past the queue's
        last one (so none is a duplicate), none is held, no deadline makes
        a plain queue leave its fast path, and the queue stays within its
        paging budget with all of them (then it is within it after each
        one, as every count only grows). Otherwise nothing is added, and
        the caller adds them one by one.

        @param entries: new entries, ids in increasing order (the caller
            checked), level 0, not acquired.
        @param bodyBytes: the sum of their bodies' lengths.
        @param expiring: whether any of them has a deadline.
        @return: whether they were added.
        """
        vhost = self.vhost
        if (
            not entries
            or not vhost.replica
            or vhost.observers
            or self._segments
            or self._forming
            or len(self.levels) > 1
            or self.policy.lvqKey is not None
            or (expiring and self.plain)
        ):
            return False
        level = self._first
        if level and entries[0].id <= level[-1].id:
            return False
        held = self.held
        if held and any(entry.id in held for entry in entries):
            return False
        count = len(entries)
        resources = vhost.resources
        if self._pager is not None and self._pastBudget(
            count, bodyBytes, resources.used + bodyBytes + count * resources.overhead
        ) is not False:
            # (A plain queue that would leave its fast path is not simple.)
            return False
        byId = self._byId
        if byId is None:
            byId = self._byId = {e.id: e for each in self.levels for e in each}
        byId.update(zip(map(_entryId, entries), entries))
        level.extend(entries)
        last = entries[-1].id
        if last >= self.nextId:
            self.nextId = last + 1
        self.readyCount += count
        self.readyBytes += bodyBytes
        # As many additions as entries (the watermark checked once, at the
        # end: the use only grows meanwhile).
        resources.used += bodyBytes + (count - 1) * resources.overhead
        resources.add(0)
        return True

    def replicaDequeue(self, id: int) -> None:
        """
        The primary's entry C{id} is gone.
        """
        self.held.pop(id, None)
        entry = self._find(id)
        if entry is None:
            return
        ready = self.levels[entry.level]
        if ready[0] is entry:
            ready.popleft()
            self._forget(entry)
        else:
            self._unlink(entry)
        self._removed(entry)

    def replicaDequeueRange(self, first: int, last: int) -> None:
        """
        The primary's entries C{first} to C{last} are gone.

        The work is bounded by what the queue holds, however wide the
        range: the ids are those of the entries, never counted through. A
        range that reaches into the tail reads it back a segment at a time,
        each dropping what the range covers before the next is read.
        """
        self._dequeueRange(first, last)
        while (self._segments or self._forming) and self._tailFirstId() <= last:
            self._refill()
            self._dequeueRange(first, last)

    def _dequeueRange(self, first: int, last: int) -> None:
        """
        L{replicaDequeueRange} of the head.
        """
        held = self.held
        if len(self.levels) == 1:
            ready = self._first
            # The common case: a consumer acknowledged the oldest entries.
            gone = []
            while ready and first <= ready[0].id <= last:
                entry = ready.popleft()
                held.pop(entry.id, None)
                self._forget(entry)
                gone.append(entry)
            if gone:
                self._removedAll(gone)
            if not ready or ready[0].id > last:
                # Entries are in id order: the rest of the range is gone.
                self._releaseHeld(first, last)
                return
        self._releaseHeld(first, last)
        gone = self._takeReady(first, last)
        if gone:
            self._removedAll(gone)

    def _releaseHeld(self, first: int, last: int) -> None:
        """
        Forget that consumers hold the ids C{first} to C{last}: by id when
        the range is narrower than what they hold, else by what they hold.
        """
        held = self.held
        if not held:
            return
        if last - first < len(held):
            for id in range(first, last + 1):
                held.pop(id, None)
        else:
            for id in [id for id in held if first <= id <= last]:
                del held[id]

    def _readyIn(self, first: int, last: int) -> Iterator[tuple[deque[Entry], int, int]]:
        """
        The ready entries with ids C{first} to C{last}: for each level that
        has some, the level and the index of the first and one past the
        last (found by bisection: a replica's levels are in id order).
        """
        for ready in self.levels:
            if not ready or ready[0].id > last or ready[-1].id < first:
                continue
            start = 0 if ready[0].id >= first else bisect_left(ready, first, key=_entryId)
            stop = len(ready) if ready[-1].id <= last else bisect_right(ready, last, key=_entryId)
            if start < stop:
                yield ready, start, stop

    def _takeReady(self, first: int, last: int) -> list[Entry]:
        """
        Take the ready entries with ids C{first} to C{last} out of their
        levels; return them in id order.
        """
        gone: list[Entry] = []
        for ready, start, stop in list(self._readyIn(first, last)):
            ready.rotate(-start)
            for _ in range(stop - start):
                entry = ready.popleft()
                self._forget(entry)
                gone.append(entry)
            ready.rotate(start)
        if len(self.levels) > 1:
            gone.sort(key=_entryId)
        return gone

    def replicaAcquire(self, id: int) -> None:
        """
        A consumer on the primary holds entry C{id}: after a failover it is
        delivered again, marked redelivered.
        """
        entry = self._find(id)
        if entry is not None:
            entry.redelivered = True
            self.held[id] = entry

    def replicaAcquireRange(self, first: int, last: int) -> None:
        """
        A consumer on the primary holds entries C{first} to C{last}.

        By id when the range is narrower than the queue (the common case,
        a consumer taking the next few), else by the entries in it: never
        more work than the queue holds.
        """
        # Held entries are in the head (the primary holds them in memory).
        self._readBackThrough(last)
        byId = self._byId
        held = self.held
        if byId is not None and last - first < len(byId):
            find = byId.get
            for id in range(first, last + 1):
                entry = find(id)
                if entry is not None:
                    entry.redelivered = True
                    held[id] = entry
            return
        for ready, start, stop in self._readyIn(first, last):
            for entry in islice(ready, start, stop):
                entry.redelivered = True
                held[entry.id] = entry

    def replicaRelease(self, id: int) -> None:
        """
        The primary's consumer gave entry C{id} back.
        """
        self.held.pop(id, None)

    def replicaPurge(self) -> None:
        """
        The primary purged: drop every entry no consumer there holds.

        Held entries are never in the tail (an acquire reads the tail back
        to them): it goes whole. On a backup its paged segments are dropped
        unread and not told to the observers one by one; if the queue is
        durable, they are told of the purge once, after the entries the
        primary's consumers hold, as acquired (its store writes both, and
        replays them after a restart, keeping those: a tail read back to
        tell each message could be gigabytes read in one turn). A
        single-queue replica on a
        serving broker, whose own backups follow its events, reads them
        back a segment at a time and tells each dequeue, as for the head.
        """
        self._purgeHead()
        if not (self._segments or self._forming):
            return
        vhost = self.vhost
        if vhost.replica or not vhost.observers:
            forming, count = self._dropTail()
            if forming:
                self._removedAll(forming)
            if count and self.durable and not self.exclusive:
                held = [self.held[id] for id in sorted(self.held)]
                for observer in vhost.observers:
                    if held:
                        observer.acquired(self, held)
                    observer.purged(self, count)
            return
        while self._segments or self._forming:
            self._refill()
            self._purgeHead()

    def _purgeHead(self) -> None:
        """
        L{replicaPurge} of the ready entries in memory (the head).
        """
        held = self.held
        for ready in self.levels:
            kept = [entry for entry in ready if entry.id in held]
            if len(kept) == len(ready):
                continue
            gone = [entry for entry in ready if entry.id not in held]
            ready.clear()
            ready.extend(kept)
            for entry in gone:
                self._forget(entry)
                self._removed(entry)

    def ids(self) -> list[int]:
        """
        The ids of every entry the queue holds, ready or held, sorted.
        """
        ids = [entry.id for level in self.levels for entry in level]
        ids.extend(self.held)
        for segment in self._segments:
            ids.extend(segment.idList())
        ids.extend(entry.id for entry in self._forming)
        return sorted(set(ids))

    def idRanges(self) -> list[list[int]]:
        """
        The ids of every entry the queue holds, ready or held, as sorted
        C{[first, last]} runs of consecutive ids: what L{ids} lists, without
        an integer for each id of a paged segment.
        """
        pieces: list[tuple[int, int]] = [(id, id) for id in self._inMemoryIds()]
        for segment in self._segments:
            if segment.ids is None:
                pieces.append((segment.firstId, segment.lastId))
            else:
                pieces.extend((id, id) for id in segment.ids)
        pieces.sort()
        ranges: list[list[int]] = []
        for first, last in pieces:
            if ranges and first <= ranges[-1][1] + 1:
                if last > ranges[-1][1]:
                    ranges[-1][1] = last
            else:
                ranges.append([first, last])
        return ranges

    def _inMemoryIds(self) -> set[int]:
        """
        The ids of the entries in memory: the head's, the held ones and the
        forming ones.
        """
        ids = {entry.id for level in self.levels for entry in level}
        ids.update(self.held)
        ids.update(entry.id for entry in self._forming)
        return ids

    def promoted(self, epoch: int) -> None:
        """
        This replica's broker became the primary: new ids start in the new
        epoch's range (so they never collide with ids an old primary gave
        out), and TTL and expiry timers start.
        """
        self.held.clear()
        self._byId = None
        self.nextId = max(self.nextId, epoch << 40)
        if self.autoDelete and self.everConsumed and not self.consumers:
            # Its consumers were on the failed primary and are gone, as
            # when their connections close: an auto-delete queue goes.
            self.vhost.deleteQueue(self.name, owner=self.owner)
            return
        self.touch()
        self.expireDue()

    def _supersededValue(self, entry: Entry) -> bool:
        value = entry.message.headers.get(self.policy.lvqKey)  # type: ignore[arg-type]
        if value is None:
            return False
        value = _hashable(value)
        newer = self._lastValues.get(value)
        if newer is not None and newer.id > entry.id:
            return True
        return self._newestValueIds.get(value, 0) > entry.id

    def consumerSettled(self, consumer: Consumer | None, count: int = 1) -> None:
        """
        C{count} entries that C{consumer} held were acked or given back: it
        has credit again.
        """
        self.unacked -= count
        if consumer is not None:
            consumer.unacked -= count

    # Consumers

    def addConsumer(self, consumer: Consumer) -> None:
        """
        Subscribe C{consumer} and deliver what it can take.
        """
        self.consumers.append(consumer)
        if not self.everConsumed:
            self.everConsumed = True
            if self.autoDelete:
                # Replicas learn that it is in use (declared again, now
                # with everConsumed set).
                self._notify("queueDeclared")
        self._cancelIdle()
        self.dispatch()

    def removeConsumer(self, consumer: Consumer) -> None:
        """
        Unsubscribe C{consumer}; an auto-delete queue goes with its last one.
        """
        consumers = self.consumers
        active = self.singleActive and consumers and consumers[0] is consumer
        try:
            consumers.remove(consumer)
        except ValueError:
            return
        if self.autoDelete and not consumers and not self.deleted:
            self.vhost.deleteQueue(self.name, owner=self.owner)
        elif not consumers:
            self.touch()
        elif active:
            # The next oldest consumer takes over, as in RabbitMQ.
            self.dispatch()

    def hasExclusiveConsumer(self) -> bool:
        """
        Whether a consumer holds this queue exclusively.
        """
        return any(consumer.exclusive for consumer in self.consumers)

    # Removing

    def purge(self) -> int:
        """
        Drop every ready entry; entries held by consumers stay.
        """
        removed = self.clearReady()
        count = len(removed)
        if count:
            self.vhost.resources.remove(sum(entry.message.resident for entry in removed), count)
        # Paged segments went unread: they no longer counted in memory.
        count += self.droppedPaged
        self.vhost.changes += 1
        for observer in self.vhost.observers:
            observer.purged(self, count)
        return count

    def clearReady(self) -> list[Entry]:
        """
        Remove and return every ready entry in memory, with no events; the
        paged segments are freed unread, and L{droppedPaged} says how many
        messages they held.
        """
        removed = [entry for level in self.levels for entry in level]
        forming, self.droppedPaged = self._dropTail()
        removed.extend(forming)
        for level in self.levels:
            level.clear()
        self.readyCount = 0
        self.readyBytes = 0
        if self.pagedCount:
            self._freePages(removed)
            self.pagedCount = 0
            self.pagedBytes = 0
        self._lastValues.clear()
        if self._byId is not None:
            self._byId.clear()
        return removed

    def deleted_(self) -> None:
        """
        The queue was deleted: stop its timers.
        """
        self.deleted = True
        for call in (self._expiryCall, self._idleCall):
            if call is not None and call.active():
                call.cancel()
        self._expiryCall = self._idleCall = None

    # Time: message TTL and queue expiry

    def _scheduleExpiry(self) -> None:
        """
        Make sure a timer fires when the earliest head of a level expires.
        """
        if self.deleted or self.vhost.replica:
            return
        if not self._first and (self._segments or self._forming) and self._tailExpiring():
            # The tail's next entries are the head's now.
            self._refill()
        earliest: float | None = None
        for level in self.levels:
            if level and level[0].expiresAt is not None:
                at = level[0].expiresAt
                if earliest is None or at < earliest:
                    earliest = at
        if earliest is None:
            return
        call = self._expiryCall
        if call is not None and call.active():
            if call.getTime() <= earliest:
                return
            call.cancel()
        delay = max(0.0, earliest - self.clock.seconds())
        self._expiryCall = self.clock.callLater(delay, self._expiryFired)

    def _expiryFired(self) -> None:
        self._expiryCall = None
        self.expireDue()

    def expireDue(self) -> int:
        """
        Expire (and dead-letter) the entries at the heads of the levels whose
        time is up; return how many.
        """
        if self.vhost.replica:
            return 0
        now = self.clock.seconds()
        count = 0
        for level in self.levels:
            while True:
                while level and level[0].expiresAt is not None and level[0].expiresAt <= now:
                    entry = level.popleft()
                    self._forget(entry)
                    self._expire(entry)
                    count += 1
                if level or not (self._segments or self._forming) or not self._tailExpiring():
                    break
                self._refill()
        self._scheduleExpiry()
        return count

    def touch(self) -> None:
        """
        The queue was used (declared, consumed from, read with get): restart
        its C{x-expires} countdown if it has one and no consumers.
        """
        expires = self.policy.expires
        if expires is None or self.consumers or self.deleted or self.vhost.replica:
            return
        self._cancelIdle()
        self._idleCall = self.clock.callLater(expires / 1000.0, self._idleExpired)

    def _cancelIdle(self) -> None:
        if self._idleCall is not None and self._idleCall.active():
            self._idleCall.cancel()
        self._idleCall = None

    def _idleExpired(self) -> None:
        self._idleCall = None
        if not self.deleted and not self.consumers:
            self.vhost.deleteQueue(self.name, owner=self.owner)

    def persistentBytes(self) -> int:
        """
        About the body bytes of the queue's persistent messages, ready or
        held, without reading its paged tail back: a paged segment's
        bodies count whole, as a segment does not say which of its
        messages are persistent (a store's estimate of what it keeps).
        """
        total = 0
        for entries in (*self.levels, self._forming, self.held.values()):
            for entry in entries:
                message = entry.message
                if message.persistent:
                    total += message.size
        for segment in self._segments:
            total += segment.bodyBytes
        return total

    def readyEntries(self) -> Iterator[Entry]:
        """
        Every ready entry, in delivery order; those of paged segments are
        read back a segment at a time, as copies (the segments stay paged).
        """
        for level in reversed(self.levels):
            yield from level
        if self._segments:
            for segment in list(self._segments):
                yield from self._readSegment(segment)
        yield from list(self._forming)


def _entryId(entry: Entry) -> int:
    return entry.id


def _lastId(segment: Segment) -> int:
    return segment.lastId


def _hashable(value: Any) -> Any:
    if isinstance(value, (dict, list, bytearray)):
        return repr(value)
    return value
