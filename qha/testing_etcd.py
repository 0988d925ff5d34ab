"""
An in-memory etcd for tests of code that uses L{qha.ha.etcd.IEtcd}, driven
by a L{twisted.internet.task.Clock}.

(To be folded into L{qha.testing} once the layout work there has landed.)

It keeps etcd's rules that the coordinator relies on: one revision counter
raised by every write (a transaction by one, however many keys it writes);
keys with create/mod revisions and versions; leases that expire when the
clock passes their TTL without a keepalive, deleting their keys; watches that
see every change from their start revision on; transactions that compare and
write as one step. Every call answers at once (its L{Deferred} has fired).

Faults for tests: set C{available} to C{False} and every call fails with
L{EtcdUnavailable} (running watches end that way too), as when no endpoint
answers; L{FakeEtcd.expire} ends a lease at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

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

__all__ = ["FakeEtcd"]

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

