"""
Who is primary, in which epoch: the election through etcd.

The coordinator does its I/O only through L{IEtcd} and a clock, and talks to
its broker through L{CoordinatedBroker}, so it knows neither the node nor
the network. Keys, under C{/qha/NAME/}:

    leader      on the leader's lease: {"id", "epoch", "amp", "amqp"}
    epoch       the cluster's epoch, a decimal, no lease
    recorded    the newest epoch whose winner recorded it durably before it
                served, a decimal, no lease (created with C{epoch})
    members/ID  on each member's lease: {"id", "role", "epoch", "position",
                "ready", "amp", "amqp"}, rewritten at every keepalive
    switchover  on the requester's lease: {"target": ID}

Rules (Patroni's and Artemis's lessons):

  - The lease is kept alive from the reactor every TTL/3, no thread: a
    stalled reactor loses it. The I{deadline} is the monotonic time the last
    successful keepalive was I{sent} plus the TTL minus a margin (at least
    TTL/3); a primary confirms nothing at or past it (L{canConfirm}) and
    steps down when it passes. etcd counts the TTL from when it I{received}
    that keepalive, which is later, so the primary stops before etcd can
    expire its lease and let another broker take over.
  - A primary steps down at once when etcd answers that its lease is gone
    or the keepalive failed, or when C{leader} names another broker or
    disappears. When etcd does not answer at all it keeps serving until its
    deadline (the lease may still be alive), then steps down; backups do not
    campaign while they cannot reach etcd.
  - A broker campaigns when C{leader} is absent (it watches, it does not
    poll; but a watch stream can stall, connected and silent, so every
    tick also reads C{leader} and, when etcd disagrees with the watch at
    two ticks in a row, the watch is started again from a fresh read), only if its broker is ready, its epoch equals the C{epoch} key,
    and no member registered in etcd is ahead of it in (epoch, position).
    Members answer a leader's disappearance by rewriting their record; a
    candidate waits for every member's answer or C{settle} seconds, and with
    C{minBackups} k and B registered members it needs answers from B-k+1 of
    them (itself included), so that one of them holds every confirmed
    message.
  - The take is one transaction: C{leader} absent (create revision 0) and
    C{epoch} unchanged (its mod revision), then C{leader} on the
    candidate's lease and C{epoch}+1. Two candidates cannot both win, and
    two primaries cannot share an epoch.
  - The winner records the epoch durably, then writes C{recorded} (while
    C{leader} is still on its lease), and only then recovers and serves.
    So a C{recorded} below C{epoch} says that the winner of C{epoch} never
    served: it crashed between its take and its record, and nothing was
    confirmed in that epoch. Then, with no leader and no registered member
    in that epoch, the members one epoch behind may campaign as if the
    take had not happened (by the same rules: the newest position, the
    answers); without this the cluster could never elect again, since
    nobody would be in the cluster's epoch. When the winner did record
    the epoch and comes back, it is registered in that epoch and ahead of
    every member: it campaigns, they do not.
  - A winner that cannot record the epoch (its data directory cannot be
    written), or fails otherwise after its take, leaves the election for
    good: it stops as at shutdown (no keepalive, no campaign, its lease
    revoked, so that its leader and member keys go at once) and says why
    in its log and in L{Coordinator.whyNot}. Standing aside for a while
    would not do: still the member furthest ahead, it would be waited for
    and fail again. The members behind it campaign as after a winner that
    died before recording; only a restart brings it back.
  - Switchover: a C{switchover} key names the member to take over. The
    leader steps down (its broker answers once in-flight confirms are
    settled) and deletes C{leader}; only the named member campaigns while
    the key is there, and its take deletes the key. The key lives on the
    requester's lease, so a switchover nobody completes goes away.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Protocol

from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from .etcd import (
    Compare,
    Delete,
    EtcdError,
    EtcdUnavailable,
    Event,
    IEtcd,
    IWatch,
    KeyValue,
    LeaseLost,
    Put,
)

__all__ = [
    "CoordinatedBroker",
    "Coordinator",
    "LeaderInfo",
    "MemberInfo",
    "SwitchoverRefused",
    "clusterPrefix",
    "requestSwitchover",
]


def clusterPrefix(cluster: str) -> bytes:
    """
    The key prefix of cluster C{cluster}: C{/qha/NAME/}.
    """
    if not cluster or "/" in cluster:
        raise ValueError(f"cluster name {cluster!r}: must be non-empty and without '/'")
    return f"/qha/{cluster}/".encode("utf-8")


@dataclass(frozen=True)
class LeaderInfo:
    """
    What the C{leader} key says.

    @ivar id: the leader's broker id.
    @ivar epoch: the epoch it took.
    @ivar amp: its AMP (replication and admin) address.
    @ivar amqp: its AMQP address, for clients.
    """

    id: str
    epoch: int
    amp: str
    amqp: str

    def toJSON(self) -> bytes:
        """
        The key's value.
        """
        return json.dumps(asdict(self), sort_keys=True).encode("utf-8")

    @classmethod
    def fromJSON(cls, data: bytes) -> LeaderInfo:
        """
        Read the key's value.

        @raise ValueError: when it is not a leader record.
        """
        try:
            d = json.loads(data)
            return cls(str(d["id"]), int(d["epoch"]), str(d["amp"]), str(d["amqp"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a leader record: {data[:200]!r} ({e})") from None


@dataclass(frozen=True)
class MemberInfo:
    """
    What a C{members/ID} key says.

    @ivar id: the member's broker id.
    @ivar role: its role (C{ready}, C{active}...).
    @ivar epoch: the epoch it is in.
    @ivar position: its position in that epoch's stream.
    @ivar ready: whether it may take over.
    @ivar amp: its AMP address.
    @ivar amqp: its AMQP address.
    @ivar modRevision: the revision of the record (not in the value).
    """

    id: str
    role: str
    epoch: int
    position: int
    ready: bool
    amp: str
    amqp: str
    modRevision: int = 0

    def toJSON(self) -> bytes:
        """
        The key's value.
        """
        d = asdict(self)
        del d["modRevision"]
        return json.dumps(d, sort_keys=True).encode("utf-8")

    @classmethod
    def fromKeyValue(cls, kv: KeyValue) -> MemberInfo:
        """
        Read a member record.

        @raise ValueError: when it is not one.
        """
        try:
            d = json.loads(kv.value)
            return cls(
                str(d["id"]),
                str(d["role"]),
                int(d["epoch"]),
                int(d["position"]),
                bool(d["ready"]),
                str(d["amp"]),
                str(d["amqp"]),
                kv.modRevision,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a member record: {kv.value[:200]!r} ({e})") from None

    def ahead(self) -> tuple[int, int]:
        """
        What is compared to judge who is ahead.
        """
        return (self.epoch, self.position)


class CoordinatedBroker(Protocol):
    """
    What the coordinator asks of its broker, and tells it.
    """

    def role(self) -> str:
        "The broker's role now."

    def epoch(self) -> int:
        "The epoch the broker is in (as it recorded it durably)."

    def position(self) -> int:
        "Its position in that epoch's stream (what store-info compares)."

    def ready(self) -> bool:
        "Whether it may take over: a ready backup, or the newest store after a total restart."

    def recordEpoch(self, epoch: int) -> None:
        "It won epoch C{epoch}: record the epoch durably; serve nothing yet. Raising makes it leave the election."

    def becomePrimary(self, epoch: int) -> None:
        "The epoch C{epoch} it won is recorded, here and in etcd: recover and serve."

    def stepDown(self, reason: str) -> Deferred[None] | None:
        "Stop confirming and serving now and rejoin as a backup; fire once in-flight confirms are settled."

    def leaderChanged(self, leader: LeaderInfo | None) -> None:
        "The leader is now C{leader} (L{None}: there is none)."


class SwitchoverRefused(Exception):
    """
    A switchover cannot be asked for: no leader, or no such member.
    """


async def requestSwitchover(etcd: IEtcd, cluster: str, target: str, ttl: int = 30) -> None:
    """
    Ask the leader of C{cluster} to hand over to member C{target}
    (C{qha-admin promote} with a coordinator).

    The key is written only while there is a leader and C{target} is a
    registered member, on a lease of C{ttl} seconds so that a switchover
    nobody completes goes away.

    @raise SwitchoverRefused: when there is no leader or no such member.
    """
    prefix = clusterPrefix(cluster)
    lease = await etcd.grant(ttl)
    result = await etcd.txn(
        [
            Compare(prefix + b"leader", "CREATE", "GREATER", 0),
            Compare(prefix + b"members/" + target.encode("utf-8"), "CREATE", "GREATER", 0),
        ],
        [Put(prefix + b"switchover", json.dumps({"target": target}).encode("utf-8"), lease.id)],
        [],
    )
    if not result.succeeded:
        await etcd.revoke(lease.id)
        raise SwitchoverRefused(
            f"switchover to {target}: cluster {cluster} has no leader or no member {target}"
        )


class Coordinator:
    """
    One broker's part in the election.

    @ivar primary: whether this broker holds C{leader} and has not stepped
        down since.
    @ivar lease: the id of this member's lease, or L{None} while it has none.
    @ivar leader: the leader as last seen in etcd.
    @ivar members: the members registered in etcd, by id.
    """

    log = Logger()

    _leftHow = (
        "left the election: {reason}. This broker takes part in no election"
        " from now on and does not serve as the primary; it gave up its etcd"
        " lease, so that its leader and member keys go and another member"
        " leads. {remedy}"
    )

    def __init__(
        self,
        etcd: IEtcd,
        clock: IReactorTime,
        broker: CoordinatedBroker,
        brokerId: str,
        amp: str,
        amqp: str,
        cluster: str = "qha",
        ttl: int = 10,
        minBackups: int = 0,
        margin: float | None = None,
        settle: float | None = None,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        """
        @param etcd: etcd.
        @param clock: schedules keepalives and timers.
        @param broker: the broker it campaigns for.
        @param brokerId: the broker's id, unique in the cluster.
        @param amp: the broker's AMP address, published in etcd.
        @param amqp: the broker's AMQP address, published in etcd.
        @param cluster: the cluster name (key prefix C{/qha/NAME/}).
        @param ttl: the lease TTL in seconds, at least 2.
        @param minBackups: C{--ha-min-backups}: answers needed to campaign.
        @param margin: how long before the lease could expire the primary
            stops; at least TTL/3 (the default).
        @param settle: how long a candidate waits for every member's answer
            after C{leader} went away; TTL/3 by default.
        @param monotonic: the monotonic time of the deadline;
            L{time.monotonic} by default (tests give the clock's
            C{seconds}).
        """
        if ttl < 2:
            raise ValueError(f"lease TTL {ttl}: at least 2 seconds (etcd's smallest lease)")
        if not brokerId or "/" in brokerId:
            raise ValueError(f"broker id {brokerId!r}: must be non-empty and without '/'")
        self._etcd = etcd
        self._clock = clock
        self._broker = broker
        self.brokerId = brokerId
        self._amp = amp
        self._amqp = amqp
        self.ttl = ttl
        self.minBackups = minBackups
        self.margin = max(margin or 0.0, ttl / 3)
        self.settle = ttl / 3 if settle is None else settle
        self._monotonic = monotonic if monotonic is not None else time.monotonic
        prefix = clusterPrefix(cluster)
        self._cluster = cluster
        self._prefix = prefix
        self._leaderKey = prefix + b"leader"
        self._epochKey = prefix + b"epoch"
        self._recordedKey = prefix + b"recorded"
        self._membersPrefix = prefix + b"members/"
        self._switchoverKey = prefix + b"switchover"

        self.primary = False
        self.lease: int | None = None
        self.leader: LeaderInfo | None = None
        self._leaderKV: KeyValue | None = None
        self.members: dict[str, MemberInfo] = {}
        self._etcdEpoch = 0
        self._epochRevision = 0
        # None: no recorded key (a cluster made before it existed: never
        # relax the epoch rule for it).
        self._recorded: int | None = None
        self._switchover: str | None = None
        # The revision at which C{leader} was found absent, and when.
        self._leaderGone: int | None = None
        self._leaderGoneAt = 0.0
        self._deadline: float | None = None
        self._watch: IWatch | None = None
        # The leader key as a range read it while the watch said otherwise.
        self._watchDoubt: tuple[int, int] | None = None
        self._campaigning = False
        # Why this broker left the election for good (L{_leave}), or None.
        self._left: str | None = None
        self._ticking = False
        self._stopped = True
        self._tickCall: IDelayedCall | None = None
        self._deadlineCall: IDelayedCall | None = None
        self._settleCall: IDelayedCall | None = None

    # -- what the node asks -------------------------------------------------------

    @property
    def deadline(self) -> float | None:
        """
        The monotonic time after which this broker must not confirm, or
        L{None} before its first keepalive.
        """
        return self._deadline

    @property
    def lookAhead(self) -> float:
        """
        How long before its deadline a primary stops calling itself
        healthy (L{canConfirmAhead}): TTL/6, half the keepalive interval.

        A keepalive goes out every TTL/3 and moves the deadline to TTL
        minus the margin (at least TTL/3) after it was sent, so while every
        keepalive succeeds the deadline is at least TTL/3 away, less the
        keepalive's round trip and the tick's lateness. It comes within
        TTL/6 only when a keepalive is late by TTL/6 or failed.
        """
        return self.ttl / 6

    def canConfirm(self, now: float | None = None, within: float = 0.0) -> bool:
        """
        Whether this broker may complete a confirm or a commit now: it is
        primary and before its deadline.

        @param within: ask instead whether it still may C{within} seconds
            from now, should no keepalive succeed meanwhile.
        """
        if not self.primary or self._deadline is None:
            return False
        if now is None:
            now = self._monotonic()
        return now + within < self._deadline

    def canConfirmAhead(self) -> bool:
        """
        Whether this broker may confirm now and for L{lookAhead} seconds
        more without another keepalive: what a health check asks, so that a
        primary whose keepalives stopped succeeding turns its check red
        before it stops confirming, and a load balancer drains it first.
        """
        return self.canConfirm(within=self.lookAhead)

    def start(self) -> None:
        """
        Register, read the cluster's keys, watch them, and keep the lease
        alive from now on; unless this broker left the election (L{_leave}),
        which only a restart of its process undoes.
        """
        if self._left is not None:
            self.log.warn("not started: {why}", why=self.whyNot())
            return
        self._stopped = False
        self._tick()

    def stop(self) -> Deferred[None]:
        """
        Stop: no more keepalives or campaigns; revoke the lease, so that
        this broker's keys (its leadership too) go at once rather than at
        the end of the TTL.
        """
        self._stopped = True
        self.primary = False
        for call in (self._tickCall, self._deadlineCall, self._settleCall):
            if call is not None and call.active():
                call.cancel()
        self._tickCall = self._deadlineCall = self._settleCall = None
        if self._watch is not None:
            watch, self._watch = self._watch, None
            watch.cancel()
        lease, self.lease = self.lease, None
        if lease is None:
            return Deferred.fromCoroutine(_nothing())
        d = self._etcd.revoke(lease)
        d.addErrback(lambda f: self.log.info("lease not revoked at stop: {why}", why=f.getErrorMessage()))
        return d

    def update(self) -> None:
        """
        The broker's state changed (it became ready, its position moved):
        publish it and see whether to campaign.
        """
        self._publish()
        self._evaluate()

    def handOver(self, target: str, ttl: int | None = None) -> Deferred[None]:
        """
        Ask for a switchover to member C{target}, as L{requestSwitchover};
        refused for this broker when it left the election.
        """
        if self._left is not None and target == self.brokerId:
            return fail(SwitchoverRefused(f"switchover to {target}: this broker {self.whyNot()}"))
        return Deferred.fromCoroutine(
            requestSwitchover(self._etcd, self._cluster, target, ttl or 3 * self.ttl)
        )

    # -- the lease -----------------------------------------------------------------

    def _tick(self) -> None:
        """
        Every TTL/3: keep the lease alive (or get one), publish this
        member, make sure the watch runs, and tidy a leadership left over.
        """
        if self._stopped:
            return
        self._tickCall = self._clock.callLater(self.ttl / 3, self._tick)
        if self._ticking:
            return
        self._ticking = True
        d = Deferred.fromCoroutine(self._keep())

        def done(result: Any) -> None:
            self._ticking = False

        d.addErrback(lambda f: self.log.failure("coordinator tick failed", f))
        d.addBoth(done)

    async def _keep(self) -> None:
        if self.lease is not None:
            sentAt = self._monotonic()
            try:
                await self._etcd.keepalive(self.lease)
                if self._stopped:
                    # Stopped while the keepalive was out: no deadline to
                    # watch, nothing to step down from.
                    return
            except LeaseLost:
                if self._stopped:
                    return
                self.log.warn("etcd lease {lease:x} is gone", lease=self.lease)
                self.lease = None
                self._stepDown("the etcd lease was lost")
            except EtcdUnavailable as e:
                self.log.warn("etcd keepalive not answered: {why}", why=str(e))
                return
            except EtcdError as e:
                self._stepDown(f"the etcd keepalive failed: {e}")
                return
            else:
                self._kept(sentAt)
        if self._stopped:
            return
        if self.lease is None:
            sentAt = self._monotonic()
            try:
                lease = await self._etcd.grant(self.ttl)
            except (EtcdUnavailable, EtcdError) as e:
                self.log.warn("no etcd lease: {why}", why=str(e))
                return
            if self._stopped:
                await self._etcd.revoke(lease.id)
                return
            self.lease = lease.id
            self._kept(sentAt)
            self.log.info("etcd lease {lease:x} granted, TTL {ttl}", lease=lease.id, ttl=lease.ttl)
        await self._publishNow()
        if self._watch is None:
            await self._load()
        else:
            await self._checkWatch()
        await self._tidyLeader()
        self._evaluate()

    def _kept(self, sentAt: float) -> None:
        """
        A keepalive sent at C{sentAt} succeeded: move the deadline.
        """
        self._deadline = sentAt + self.ttl - self.margin
        if self._deadlineCall is not None and self._deadlineCall.active():
            self._deadlineCall.cancel()
        delay = max(0.0, self._deadline - self._monotonic())
        self._deadlineCall = self._clock.callLater(delay, self._deadlinePassed)

    def _deadlinePassed(self) -> None:
        self._deadlineCall = None
        if self.primary:
            self._stepDown("no keepalive answered by etcd before the deadline")

    # -- publishing ----------------------------------------------------------------

    def _record(self) -> MemberInfo:
        broker = self._broker
        return MemberInfo(
            self.brokerId,
            broker.role(),
            broker.epoch(),
            broker.position(),
            broker.ready(),
            self._amp,
            self._amqp,
        )

    def _publish(self) -> None:
        d = Deferred.fromCoroutine(self._publishNow())
        d.addErrback(lambda f: self.log.failure("member record not written", f))

    async def _publishNow(self) -> None:
        if self.lease is None or self._stopped:
            return
        try:
            await self._etcd.put(
                self._membersPrefix + self.brokerId.encode("utf-8"), self._record().toJSON(), self.lease
            )
        except LeaseLost:
            self.lease = None
            self._stepDown("the etcd lease was lost")
        except (EtcdUnavailable, EtcdError) as e:
            self.log.info("member record not written: {why}", why=str(e))

    # -- reading etcd --------------------------------------------------------------

    async def _load(self) -> None:
        """
        Read every key of the cluster, then watch from the next revision.
        """
        try:
            found = await self._etcd.range(self._prefix, prefix=True)
        except (EtcdUnavailable, EtcdError) as e:
            self.log.info("cluster keys not read: {why}", why=str(e))
            return
        if self._stopped or self._watch is not None:
            return
        self.leader = None
        self._leaderKV = None
        self.members = {}
        self._etcdEpoch = 0
        self._epochRevision = 0
        self._recorded = None
        self._switchover = None
        for kv in found.kvs:
            self._apply(Event("PUT", kv), initial=True)
        if self.leader is None:
            self._leaderGone = found.revision
            self._leaderGoneAt = self._monotonic()
            self._armSettle()
        self._broker.leaderChanged(self.leader)
        if self.primary and not self._isMine(self._leaderKV):
            self._stepDown("etcd names another leader" if self.leader else "etcd has no leader")
        watch = self._etcd.watch(self._prefix, True, found.revision + 1, self._changed)
        self._watch = watch
        watch.ended.addErrback(lambda f: self._watchEnded(watch, f.getErrorMessage()))
        watch.ended.addCallback(lambda _: self._watchEnded(watch, "cancelled"))

    async def _checkWatch(self) -> None:
        """
        Read C{leader} and compare it with what the watch said. A change
        the watch has not shown yet may be on its way; the same difference
        at the next tick (TTL/3 later) is not: the stream stalled
        (connected, silent), so it is cancelled, and C{leader} and the rest
        are read again and watched from there.
        """
        watch = self._watch
        try:
            found = await self._etcd.range(self._leaderKey)
        except (EtcdUnavailable, EtcdError) as e:
            self.log.info("leader key not read: {why}", why=str(e))
            return
        if self._stopped or watch is None or self._watch is not watch:
            return
        kv = found.kvs[0] if found.kvs else None
        seen = self._leaderKV
        inEtcd = (kv.createRevision, kv.modRevision) if kv is not None else (0, 0)
        watched = (seen.createRevision, seen.modRevision) if seen is not None else (0, 0)
        if inEtcd == watched:
            self._watchDoubt = None
            return
        if self._watchDoubt != inEtcd:
            self._watchDoubt = inEtcd
            return
        self._watchDoubt = None
        self.log.warn(
            "the etcd watch did not show a change of the leader key (revision {revision}):"
            " watching again",
            revision=inEtcd[1] or found.revision,
        )
        self._watch = None
        watch.cancel()
        await self._load()

    def _watchEnded(self, watch: IWatch, why: str) -> None:
        if self._watch is watch:
            self._watch = None
            if not self._stopped:
                self.log.info("etcd watch ended ({why}); reading again at the next tick", why=why)

    def _isMine(self, kv: KeyValue | None) -> bool:
        return (
            kv is not None
            and self.leader is not None
            and self.leader.id == self.brokerId
            and self.lease is not None
            and kv.lease == self.lease
        )

    def _changed(self, events: list[Event], revision: int) -> None:
        """
        The watch saw C{events}.
        """
        for event in events:
            self._apply(event, initial=False)
        self._evaluate()

    def _apply(self, event: Event, initial: bool) -> None:
        kv = event.kv
        if kv.key == self._leaderKey:
            if event.type == "PUT":
                try:
                    self.leader = LeaderInfo.fromJSON(kv.value)
                except ValueError as e:
                    self.log.error("ignoring the leader key: {why}", why=str(e))
                    return
                self._leaderKV = kv
                self._leaderGone = None
                if not initial:
                    if self.primary and not self._isMine(kv):
                        self._stepDown(f"etcd names {self.leader.id} leader in epoch {self.leader.epoch}")
                    self._broker.leaderChanged(self.leader)
            else:
                self.leader = None
                self._leaderKV = None
                self._leaderGone = kv.modRevision
                self._leaderGoneAt = self._monotonic()
                if not initial:
                    if self.primary:
                        self._stepDown("the leader key is gone from etcd")
                    self._broker.leaderChanged(None)
                    # Answer: every member rewrites its record, so that a
                    # candidate sees fresh positions.
                    self._publish()
                    self._armSettle()
        elif kv.key == self._epochKey:
            if event.type == "PUT":
                try:
                    self._etcdEpoch = int(kv.value)
                except ValueError:
                    self.log.error("ignoring the epoch key {value!r}", value=kv.value)
                    return
                self._epochRevision = kv.modRevision
            else:
                self._etcdEpoch, self._epochRevision = 0, 0
        elif kv.key == self._recordedKey:
            if event.type == "PUT":
                try:
                    self._recorded = int(kv.value)
                except ValueError:
                    self.log.error("ignoring the recorded key {value!r}", value=kv.value)
            else:
                self._recorded = None
        elif kv.key == self._switchoverKey:
            if event.type == "PUT":
                try:
                    self._switchover = str(json.loads(kv.value)["target"])
                except (KeyError, TypeError, ValueError):
                    self.log.error("ignoring the switchover key {value!r}", value=kv.value)
                    return
                if self.primary and self._switchover != self.brokerId:
                    self._handOver(self._switchover)
            else:
                self._switchover = None
        elif kv.key.startswith(self._membersPrefix):
            memberId = kv.key[len(self._membersPrefix) :].decode("utf-8", "replace")
            if event.type == "PUT":
                try:
                    self.members[memberId] = MemberInfo.fromKeyValue(kv)
                except ValueError as e:
                    self.log.error("ignoring member {member}: {why}", member=memberId, why=str(e))
            else:
                self.members.pop(memberId, None)

    # -- stepping down ---------------------------------------------------------

    def _stepDown(self, reason: str) -> Deferred[None]:
        """
        Stop being primary now; once the broker has settled, give up the
        leader key if it is still ours.
        """
        if not self.primary:
            return Deferred.fromCoroutine(_nothing())
        self.primary = False
        self.log.warn("stepping down: {reason}", reason=reason)
        d: Deferred[Any] = maybeDeferred(self._broker.stepDown, reason)
        d.addErrback(lambda f: self.log.failure("broker step-down failed", f))

        def resign(_: Any) -> Deferred[None]:
            return Deferred.fromCoroutine(self._tidyLeader())

        d.addCallback(resign)
        return d

    def _handOver(self, target: str) -> None:
        member = self.members.get(target)
        if member is None or not member.ready:
            self.log.warn("switchover to {target} ignored: not a ready member", target=target)
            return
        self._stepDown(f"switchover to {target}")

    async def _tidyLeader(self) -> None:
        """
        A leader key naming this broker while it is not primary is left
        over (it stepped down, or an earlier run of it held it): delete it,
        so that a new leader can be chosen now rather than at the TTL.
        """
        kv = self._leaderKV
        if self.primary or self._campaigning or kv is None or self.leader is None:
            return
        if self.leader.id != self.brokerId:
            return
        try:
            if kv.lease and kv.lease != self.lease:
                self.log.info("revoking lease {lease:x} of an earlier leadership", lease=kv.lease)
                await self._etcd.revoke(kv.lease)
            else:
                await self._etcd.txn(
                    [Compare(self._leaderKey, "MOD", "EQUAL", kv.modRevision)],
                    [Delete(self._leaderKey)],
                    [],
                )
        except LeaseLost:
            pass
        except (EtcdUnavailable, EtcdError) as e:
            self.log.info("left-over leader key not deleted yet: {why}", why=str(e))

    # -- campaigning ---------------------------------------------------------------

    def _armSettle(self) -> None:
        if self._settleCall is not None and self._settleCall.active():
            self._settleCall.cancel()
        if self._stopped:
            return
        self._settleCall = self._clock.callLater(self.settle, self._settled)

    def _settled(self) -> None:
        self._settleCall = None
        self._evaluate()

    def whyNot(self) -> str | None:
        """
        Why this broker does not campaign now, or L{None} when it may.
        """
        if self._left is not None:
            return f"left the election: {self._left}"
        if self._stopped:
            return "stopped"
        if self.primary:
            return "already primary"
        if self._campaigning:
            return "campaigning"
        if self.lease is None or self._watch is None:
            return "not connected to etcd"
        if self._deadline is None or self._monotonic() >= self._deadline:
            return "its lease may have expired"
        if self.leader is not None or self._leaderGone is None:
            return "there is a leader"
        if not self._broker.ready():
            return "the broker is not ready"
        epoch = self._broker.epoch()
        if epoch != self._etcdEpoch and not self._unrecordedEpoch(epoch):
            return f"its epoch {epoch} is not the cluster's {self._etcdEpoch}"
        if self._switchover is not None:
            if self._switchover != self.brokerId:
                return f"a switchover to {self._switchover} is under way"
            return None
        mine = (epoch, self._broker.position())
        others = [m for m in self.members.values() if m.id != self.brokerId]
        for member in others:
            if member.ahead() > mine:
                return f"member {member.id} is ahead ({member.ahead()} > {mine})"
        answered = 1 + sum(1 for m in others if m.modRevision > self._leaderGone)
        if self.minBackups > 0:
            needed = len(others) + 1 - self.minBackups + 1
            if answered < needed:
                return f"{answered} members answered, {needed} needed"
        if answered < len(others) + 1 and self._monotonic() < self._leaderGoneAt + self.settle:
            return "waiting for the members to answer"
        return None

    def _unrecordedEpoch(self, epoch: int) -> bool:
        """
        Whether a broker in C{epoch} may campaign although the cluster's
        epoch is the next one: the winner of the cluster's epoch never
        wrote C{recorded} (it never served, so nothing was confirmed in
        that epoch) and no registered member is in it.
        """
        cluster = self._etcdEpoch
        return (
            epoch == cluster - 1
            and self._recorded is not None
            and self._recorded < cluster
            and all(m.epoch < cluster for m in self.members.values())
        )

    def _evaluate(self) -> None:
        why = self.whyNot()
        if why is None:
            self._campaigning = True
            d = Deferred.fromCoroutine(self._campaign())
            # _campaign handles its own failures; this is the last resort.
            d.addErrback(lambda f: self.log.failure("campaign failed", f))

    async def _campaign(self) -> None:
        """
        Take the leadership in one transaction, or learn that another did;
        having taken it, record the epoch and serve.

        A campaign always ends with C{_campaigning} cleared: left set, this
        broker would never campaign again and, holding the leader key on a
        lease it keeps alive, let nobody else lead. A failure before the
        take ends this campaign only; one after it (the broker could not
        record the epoch) makes the broker leave the election (L{_leave}).
        """
        try:
            taken = await self._take()
        except Exception:
            # If the take was applied after all, the watch shows a leader
            # naming this broker while it is not primary: the next tick
            # resigns it.
            self._campaigning = False
            self.log.failure("campaign failed before its take")
            return
        if taken is None:
            return
        lease, epoch = taken
        # Record the epoch here, then in etcd, before serving: see
        # _unrecordedEpoch for what a winner that stops in between leaves.
        try:
            self._broker.recordEpoch(epoch)
        except Exception as e:
            self._leave(
                f"could not record epoch {epoch}: {e}",
                "Fix its data directory (space, permissions, the disk), then restart the broker.",
                Failure(),
            )
            return
        try:
            await self._serve(lease, epoch)
        except Exception as e:
            self._leave(
                f"failed after taking epoch {epoch}: {type(e).__name__}: {e}",
                "Find the cause in the traceback below, then restart the broker.",
                Failure(),
            )

    async def _take(self) -> tuple[int, int] | None:
        """
        The transaction that takes C{leader} and the next epoch.

        @return: the lease it ran on and the epoch taken, or L{None} (with
            C{_campaigning} cleared) when it was not.
        """
        # The lease this campaign runs on: the one in hand may be lost, or
        # replaced, while a transaction is out (and is None then).
        lease = self.lease
        assert lease is not None
        epoch = self._etcdEpoch + 1
        info = LeaderInfo(self.brokerId, epoch, self._amp, self._amqp)
        epochUnchanged = (
            Compare(self._epochKey, "MOD", "EQUAL", self._epochRevision)
            if self._epochRevision
            else Compare(self._epochKey, "CREATE", "EQUAL", 0)
        )
        take: list[Put | Delete] = [
            Put(self._leaderKey, info.toJSON(), lease),
            Put(self._epochKey, str(epoch).encode("ascii")),
            Delete(self._switchoverKey),
        ]
        if not self._epochRevision:
            # The first take of a cluster creates the recorded key too, so
            # that every cluster made since has it.
            take.append(Put(self._recordedKey, b"0"))
        try:
            result = await self._etcd.txn(
                [Compare(self._leaderKey, "CREATE", "EQUAL", 0), epochUnchanged],
                take,
                [],
            )
        except (EtcdUnavailable, EtcdError) as e:
            # If it was applied after all, the watch shows a leader naming
            # this broker while it is not primary: the next tick resigns it.
            self.log.warn("campaign for epoch {epoch} not answered: {why}", epoch=epoch, why=str(e))
            self._campaigning = False
            return None
        if not result.succeeded:
            self._campaigning = False
            self.log.info("another broker took epoch {epoch}", epoch=epoch)
            return None
        if self._stopped:
            self._campaigning = False
            return None
        return lease, epoch

    async def _serve(self, lease: int, epoch: int) -> None:
        """
        The broker recorded C{epoch}, taken on C{lease}: write C{recorded}
        while C{leader} is still on that lease, and only then serve.
        """
        try:
            recorded = await self._etcd.txn(
                [Compare(self._leaderKey, "LEASE", "EQUAL", lease)],
                [Put(self._recordedKey, str(epoch).encode("ascii"))],
                [],
            )
        except (EtcdUnavailable, EtcdError) as e:
            self.log.warn("epoch {epoch} not recorded in etcd: {why}", epoch=epoch, why=str(e))
            recorded = None
        self._campaigning = False
        if recorded is None or not recorded.succeeded or self._stopped:
            # Not serving; the next tick deletes the leader key if it is
            # still ours, and this broker (now in the cluster's epoch, and
            # registered in it) may campaign again.
            if recorded is not None:
                self.log.warn("lost the leader key before recording epoch {epoch}", epoch=epoch)
            self._publish()
            return
        self.primary = True
        self.log.info("leader in epoch {epoch}", epoch=epoch)
        self._broker.becomePrimary(epoch)
        self._publish()

    def _leave(self, reason: str, remedy: str, failure: Failure) -> None:
        """
        Leave the election for good: this broker won a take but cannot go
        on (it could not record the epoch durably, or something else
        failed after the take).

        Backing off would not do: it would still be the member furthest
        ahead, the others would wait for it, and it would fail again. So it
        stops as at shutdown (L{stop}): no more keepalives or campaigns,
        its lease revoked, so that its leader key and its member key go at
        once (if the revoke fails, the lease expires within the TTL, as
        nothing keeps it alive) and the members behind it campaign. A
        broker already told to serve is told to step down. L{whyNot} says
        why from now on.

        @param reason: what failed, for the log and L{whyNot}.
        @param remedy: what the operator does, for the log.
        @param failure: the failure, whose traceback is logged.
        """
        self._left = reason
        self._campaigning = False
        wasPrimary = self.primary
        self.log.failure(self._leftHow, failure, level=LogLevel.error, reason=reason, remedy=remedy)
        self.stop()
        if wasPrimary:
            d: Deferred[Any] = maybeDeferred(self._broker.stepDown, f"left the election: {reason}")
            d.addErrback(lambda f: self.log.failure("broker step-down failed", f))


async def _nothing() -> None:
    return None
