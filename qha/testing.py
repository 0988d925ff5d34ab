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

L{RecordingVerifier} is an L{IPasswordVerifier} that answers only when the
test says so.

L{FakeEtcd} is an in-memory etcd for tests of code that uses
L{qha.ha.etcd.IEtcd}, driven by a L{twisted.internet.task.Clock}. It keeps
etcd's rules that the coordinator relies on: one revision counter raised by
every write (a transaction by one, however many keys it writes); keys with
create/mod revisions and versions; leases that expire when the clock passes
their TTL without a keepalive, deleting their keys; watches that see every
change from their start revision on; transactions that compare and write as
one step. Every call answers at once (its L{Deferred} has fired). Faults for
tests: set C{available} to C{False} and every call fails with
L{EtcdUnavailable} (running watches end that way too), as when no endpoint
answers; L{FakeEtcd.expire} ends a lease at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from .amqp.holders import Completion, IConfirmHolder, IReplicationPacer
from .amqp.users import IPasswordVerifier, ScryptHash
from .broker.exchange import Binding, Exchange
from .broker.message import Message
from .broker.paging import IBodyStore, PageError
from .broker.queue import Consumer, DeliveryTarget, Entry, Queue
from .broker.vhost import BrokerObserver
from .ha.etcd import (
    Compare,
    Delete,
    EtcdUnavailable,
    Event,
    Get,
    IEtcd,
    IWatch,
    KeyValue,
    Lease,
    LeaseLost,
    Operation,
    Put,
    RangeResult,
    TxnResult,
    WatchCanceled,
    prefixEnd,
)

__all__ = [
    "FakeConfirmHolder",
    "FakeEtcd",
    "FakeReplicationPacer",
    "MemoryBodyStore",
    "RecordingObserver",
    "RecordingTarget",
    "RecordingVerifier",
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


@implementer(IPasswordVerifier)
class RecordingVerifier:
    """
    An L{IPasswordVerifier} that answers only when the test says so.

    @ivar calls: the hash, password and unfired L{Deferred} of each check.
    """

    def __init__(self) -> None:
        """
        No checks yet.
        """
        self.calls: list[tuple[ScryptHash, str, Deferred[bool]]] = []

    def verify(self, passwordHash: ScryptHash, password: str) -> Deferred[bool]:
        """
        Record the check; see L{IPasswordVerifier.verify}.
        """
        d: Deferred[bool] = Deferred()
        self.calls.append((passwordHash, password, d))
        return d


# etcd's smallest lease with its default election timeout.
MINIMUM_TTL = 2


@dataclass
class _Lease:
    """
    A lease of the fake: its TTL and the timer that ends it.
    """

    id: int
    ttl: int
    expiry: IDelayedCall | None = None
    keys: set[bytes] = field(default_factory=set)


@implementer(IWatch)
class _FakeWatch:
    """
    A watch of the fake.
    """

    def __init__(
        self,
        etcd: FakeEtcd,
        key: bytes,
        prefix: bool,
        callback: Callable[[list[Event], int], None],
    ) -> None:
        """
        @param etcd: the fake it watches.
        @param key: the key or prefix.
        @param prefix: whether C{key} is a prefix.
        @param callback: called with each batch of events.
        """
        self._etcd = etcd
        self._key = key
        self._end = prefixEnd(key) if prefix else None
        self._callback = callback
        self.started: Deferred[None] = succeed(None)
        self.ended: Deferred[None] = Deferred()

    def matches(self, key: bytes) -> bool:
        """
        Whether this watch sees C{key}.
        """
        if self._end is None:
            return key == self._key
        return self._key <= key < self._end

    def deliver(self, events: list[Event], revision: int) -> None:
        """
        Hand over the events this watch sees.
        """
        mine = [e for e in events if self.matches(e.kv.key)]
        if mine and not self.ended.called:
            self._callback(mine, revision)

    def cancel(self) -> None:
        """
        See L{IWatch.cancel}.
        """
        self._end_(None)

    def _end_(self, failure: Failure | None) -> None:
        if self in self._etcd._watches:
            self._etcd._watches.remove(self)
        if not self.ended.called:
            if failure is None:
                self.ended.callback(None)
            else:
                self.ended.errback(failure)


@implementer(IEtcd)
class FakeEtcd:
    """
    L{IEtcd} in memory.

    @ivar available: when C{False}, every call fails with
        L{EtcdUnavailable}.
    @ivar revision: the store's revision (1 when empty, as etcd).
    @ivar calls: the name of every call made, in order (for tests that
        check what was asked, e.g. that a keepalive was sent).
    """

    def __init__(self, clock: Clock) -> None:
        """
        @param clock: the clock that ends leases.
        """
        self._clock = clock
        self._data: dict[bytes, KeyValue] = {}
        self._history: list[tuple[int, list[Event]]] = []
        self._leases: dict[int, _Lease] = {}
        self._nextLease = 0x1000
        self._watches: list[_FakeWatch] = []
        self._pending: list[tuple[list[Event], int]] = []
        self._delivering = False
        self.revision = 1
        self.available = True
        self.calls: list[str] = []

    # -- faults -------------------------------------------------------------

    def setAvailable(self, available: bool) -> None:
        """
        Make etcd reachable or not; going unreachable ends every watch with
        L{EtcdUnavailable}, as a lost stream would. Leases keep counting
        down meanwhile (etcd itself is still there).
        """
        self.available = available
        if not available:
            for watch in list(self._watches):
                watch._end_(Failure(EtcdUnavailable("fake etcd is unavailable")))

    def expire(self, leaseId: int) -> None:
        """
        End lease C{leaseId} now, as etcd does when its TTL passes.
        """
        lease = self._leases.get(leaseId)
        if lease is not None:
            if lease.expiry is not None and lease.expiry.active():
                lease.expiry.cancel()
            self._dropLease(lease)

    def leases(self) -> list[int]:
        """
        The ids of the leases alive.
        """
        return sorted(self._leases)

    # -- internals --------------------------------------------------------------

    def _check(self, name: str) -> None:
        self.calls.append(name)
        if not self.available:
            raise EtcdUnavailable("fake etcd is unavailable")

    def _dropLease(self, lease: _Lease) -> None:
        del self._leases[lease.id]
        if lease.keys:
            self._commit([Delete(key) for key in sorted(lease.keys)])

    def _expireLater(self, lease: _Lease) -> None:
        lease.expiry = self._clock.callLater(lease.ttl, self._dropLease, lease)

    def _inRange(self, key: bytes, prefix: bool) -> list[bytes]:
        if not prefix:
            return [key] if key in self._data else []
        end = prefixEnd(key)
        return sorted(k for k in self._data if key <= k < end)

    def _commit(self, operations: Sequence[Operation]) -> tuple[int, list[list[KeyValue]]]:
        """
        Apply C{operations} as one revision; tell the watches.
        """
        events: list[Event] = []
        ranges: list[list[KeyValue]] = []
        revision = self.revision + 1
        for operation in operations:
            if isinstance(operation, Get):
                ranges.append([self._data[k] for k in self._inRange(operation.key, operation.prefix)])
            elif isinstance(operation, Put):
                if operation.lease and operation.lease not in self._leases:
                    raise LeaseLost(5, "etcdserver: requested lease not found")
                old = self._data.get(operation.key)
                if old is not None and old.lease in self._leases:
                    self._leases[old.lease].keys.discard(operation.key)
                kv = KeyValue(
                    key=operation.key,
                    value=operation.value,
                    createRevision=old.createRevision if old else revision,
                    modRevision=revision,
                    version=(old.version if old else 0) + 1,
                    lease=operation.lease,
                )
                self._data[operation.key] = kv
                if operation.lease:
                    self._leases[operation.lease].keys.add(operation.key)
                events.append(Event("PUT", kv))
            else:
                for key in self._inRange(operation.key, operation.prefix):
                    old = self._data.pop(key)
                    if old.lease in self._leases:
                        self._leases[old.lease].keys.discard(key)
                    events.append(Event("DELETE", KeyValue(key=key, modRevision=revision)))
        if events:
            self.revision = revision
            self._history.append((revision, events))
            self._deliver(events, revision)
        return self.revision, ranges

    def _deliver(self, events: list[Event], revision: int) -> None:
        """
        Tell the watches, in revision order even when a watch callback
        writes (its events wait until the current ones are delivered).
        """
        self._pending.append((events, revision))
        if self._delivering:
            return
        self._delivering = True
        try:
            while self._pending:
                batch, batchRevision = self._pending.pop(0)
                for watch in list(self._watches):
                    watch.deliver(batch, batchRevision)
        finally:
            self._delivering = False

    def _holds(self, compare: Compare) -> bool:
        kv = self._data.get(compare.key, KeyValue(key=compare.key))
        targets: dict[str, bytes | int] = {
            "VALUE": kv.value,
            "VERSION": kv.version,
            "CREATE": kv.createRevision,
            "MOD": kv.modRevision,
            "LEASE": kv.lease,
        }
        actual = targets[compare.target]
        operand = compare.operand
        if compare.target == "VALUE" and compare.key not in self._data:
            # etcd: a value comparison with an absent key is false.
            return False
        if compare.result == "EQUAL":
            return actual == operand
        if compare.result == "NOT_EQUAL":
            return actual != operand
        if compare.result == "GREATER":
            return actual > operand  # type: ignore[operator]
        return actual < operand  # type: ignore[operator]

    # -- IEtcd ------------------------------------------------------------------

    def grant(self, ttl: int) -> Deferred[Lease]:
        """
        See L{IEtcd.grant}.
        """
        try:
            self._check("grant")
        except EtcdUnavailable as e:
            return fail(e)
        ttl = max(ttl, MINIMUM_TTL)
        self._nextLease += 1
        lease = _Lease(self._nextLease, ttl)
        self._expireLater(lease)
        self._leases[lease.id] = lease
        return succeed(Lease(lease.id, ttl))

    def keepalive(self, leaseId: int) -> Deferred[int]:
        """
        See L{IEtcd.keepalive}.
        """
        try:
            self._check("keepalive")
        except EtcdUnavailable as e:
            return fail(e)
        lease = self._leases.get(leaseId)
        if lease is None:
            return fail(LeaseLost(5, f"lease {leaseId:x} expired or was revoked"))
        if lease.expiry is not None and lease.expiry.active():
            lease.expiry.cancel()
        self._expireLater(lease)
        return succeed(lease.ttl)

    def revoke(self, leaseId: int) -> Deferred[None]:
        """
        See L{IEtcd.revoke}.
        """
        try:
            self._check("revoke")
        except EtcdUnavailable as e:
            return fail(e)
        if leaseId not in self._leases:
            return fail(LeaseLost(5, "etcdserver: requested lease not found"))
        self.expire(leaseId)
        return succeed(None)

    def range(self, key: bytes, prefix: bool = False) -> Deferred[RangeResult]:
        """
        See L{IEtcd.range}.
        """
        try:
            self._check("range")
        except EtcdUnavailable as e:
            return fail(e)
        return succeed(RangeResult(self.revision, [self._data[k] for k in self._inRange(key, prefix)]))

    def put(self, key: bytes, value: bytes, lease: int = 0) -> Deferred[int]:
        """
        See L{IEtcd.put}.
        """
        try:
            self._check("put")
            revision, _ = self._commit([Put(key, value, lease)])
        except (EtcdUnavailable, LeaseLost) as e:
            return fail(e)
        return succeed(revision)

    def delete(self, key: bytes, prefix: bool = False) -> Deferred[int]:
        """
        See L{IEtcd.delete}.
        """
        try:
            self._check("delete")
        except EtcdUnavailable as e:
            return fail(e)
        count = len(self._inRange(key, prefix))
        self._commit([Delete(key, prefix)])
        return succeed(count)

    def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[Operation],
        failure: Sequence[Operation],
    ) -> Deferred[TxnResult]:
        """
        See L{IEtcd.txn}.
        """
        try:
            self._check("txn")
        except EtcdUnavailable as e:
            return fail(e)
        # Encoded as the real client encodes them, so that what it could
        # not send (a compare on a lease of None) fails here too.
        for item in (*compare, *success, *failure):
            item.toJSON()
        succeeded = all(self._holds(c) for c in compare)
        operations = success if succeeded else failure
        for operation in operations:
            if isinstance(operation, Put) and operation.lease and operation.lease not in self._leases:
                return fail(LeaseLost(5, "etcdserver: requested lease not found"))
        revision, ranges = self._commit(operations)
        return succeed(TxnResult(succeeded, revision, ranges))

    def watch(
        self,
        key: bytes,
        prefix: bool,
        fromRevision: int,
        callback: Callable[[list[Event], int], None],
    ) -> IWatch:
        """
        See L{IEtcd.watch}: events from C{fromRevision} on are replayed at
        once.
        """
        watch = _FakeWatch(self, key, prefix, callback)
        try:
            self._check("watch")
        except EtcdUnavailable as e:
            watch.started = fail(e)
            watch.started.addErrback(lambda _: None)
            watch._end_(Failure(e))
            return watch
        if fromRevision and self._history and fromRevision < self._history[0][0]:
            watch._end_(Failure(WatchCanceled("compacted", self._history[0][0])))
            return watch
        self._watches.append(watch)
        if fromRevision:
            for revision, events in self._history:
                if revision >= fromRevision:
                    watch.deliver(events, revision)
        return watch

    def compact(self, revision: int) -> None:
        """
        Forget the history before C{revision}, as etcd's compaction does.
        """
        self._history = [(r, e) for r, e in self._history if r >= revision]


if TYPE_CHECKING:
    # mypy checks that the fakes provide the interfaces they stand in for.
    _target: DeliveryTarget = RecordingTarget()
    _observer: BrokerObserver = RecordingObserver()


@implementer(IBodyStore)
class MemoryBodyStore:
    """
    An L{IBodyStore} that keeps paged bodies in a dictionary, for tests of
    the paging model without files, and that records what it was asked.

    @ivar pages: the bodies paged out now, by location.
    @ivar reads: each call to L{read}, as the list of locations it asked for.
    @ivar freed: every location freed, in order.
    """

    def __init__(self) -> None:
        self.pages: dict[int, bytes] = {}
        self.reads: list[list[int]] = []
        self.freed: list[int] = []
        self._next = 0
        self.records = 0
        self.size = 0

    def write(self, body: bytes) -> int:
        """
        Keep C{body} under the next location.
        """
        location = self._next
        self._next += 1
        self.pages[location] = body
        self.records += 1
        self.size += len(body)
        return location

    def read(self, pages: Sequence[tuple[int, int]]) -> list[bytes]:
        """
        The bodies at the locations of C{pages}.

        @raise PageError: for one that was freed or never written.
        """
        self.reads.append([location for location, _ in pages])
        try:
            return [self.pages[location] for location, _ in pages]
        except KeyError as missing:
            raise PageError(f"no paged body at location {missing}") from None

    def free(self, location: int, size: int) -> None:
        """
        Forget the body at C{location}.
        """
        self.freed.append(location)
        if self.pages.pop(location, None) is not None:
            self.records -= 1
            self.size -= size
