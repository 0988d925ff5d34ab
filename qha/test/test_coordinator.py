"""
Tests for L{qha.ha.coordinator}: the election rules, on L{FakeEtcd} and a
L{Clock}, with brokers that record what they are told.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from ..ha.coordinator import (
    Coordinator,
    LeaderInfo,
    SwitchoverRefused,
    requestSwitchover,
)
from ..ha.etcd import EtcdError, EtcdUnavailable, Lease, LeaseLost, Put, TxnResult
from ..testing import FakeEtcd

TTL = 6


class RecordingBroker:
    """
    A L{qha.ha.coordinator.CoordinatedBroker} whose state the test sets and
    which records what it is told.

    @ivar promoted: every epoch it was made primary in.
    @ivar steppedDown: every reason it was told to step down for.
    @ivar leaders: every leader it was told of.
    @ivar settling: when set, what L{stepDown} answers (in-flight confirms
        still settling).
    @ivar recorded: every epoch it recorded durably.
    @ivar recordFails: when set, what L{recordEpoch} raises (its data
        directory cannot be written: the disk is full, an I/O error).
    @ivar recordAttempts: every epoch it was asked to record, recorded or
        not.
    @ivar primaryFails: when set, what L{becomePrimary} raises.
    """

    def __init__(self, epoch: int = 0, position: int = 0, ready: bool = True) -> None:
        """
        @param epoch: its epoch.
        @param position: its position.
        @param ready: whether it may take over.
        """
        self._epoch = epoch
        self._position = position
        self._ready = ready
        self.primary = False
        self.promoted: list[int] = []
        self.steppedDown: list[str] = []
        self.leaders: list[LeaderInfo | None] = []
        self.settling: Deferred[None] | None = None
        self.recorded: list[int] = []
        self.recordFails: Exception | None = None
        self.recordAttempts: list[int] = []
        self.primaryFails: Exception | None = None

    def role(self) -> str:
        """
        C{active} or C{ready}/C{catchup}.
        """
        if self.primary:
            return "active"
        return "ready" if self._ready else "catchup"

    def epoch(self) -> int:
        """
        Its epoch.
        """
        return self._epoch

    def position(self) -> int:
        """
        Its position.
        """
        return self._position

    def ready(self) -> bool:
        """
        Whether it may take over.
        """
        return self._ready

    def recordEpoch(self, epoch: int) -> None:
        """
        Record the epoch, as the broker does durably; or raise
        C{recordFails}, as a broker whose data directory cannot be written.
        """
        self.recordAttempts.append(epoch)
        if self.recordFails is not None:
            raise self.recordFails
        self._epoch = epoch
        self.recorded.append(epoch)

    def becomePrimary(self, epoch: int) -> None:
        """
        Serve in the epoch recorded; or raise C{primaryFails} (once
        primary), as a broker whose recovery failed.
        """
        self.primary = True
        self.promoted.append(epoch)
        if self.primaryFails is not None:
            raise self.primaryFails

    def stepDown(self, reason: str) -> Deferred[None] | None:
        """
        Record the reason.
        """
        self.primary = False
        self.steppedDown.append(reason)
        return self.settling

    def leaderChanged(self, leader: LeaderInfo | None) -> None:
        """
        Record the leader.
        """
        self.leaders.append(leader)


class StallingEtcd(FakeEtcd):
    """
    L{FakeEtcd} whose running watches can be made to stall: connected,
    never ended, and silent, as a watch stream whose HTTP connection is up
    while nothing comes through it.
    """

    def __init__(self, clock: Clock) -> None:
        """
        @param clock: the clock that ends leases.
        """
        super().__init__(clock)
        self._silenced: list[list[bool]] = []

    def stallWatches(self) -> None:
        """
        Every watch running now shows nothing more; watches started later
        work.
        """
        for silent in self._silenced:
            silent[0] = True

    def watch(self, key: bytes, prefix: bool, fromRevision: int, callback: Any) -> Any:
        """
        See L{FakeEtcd.watch}; the events go through unless stalled.
        """
        silent = [False]
        self._silenced.append(silent)

        def deliver(events: Any, revision: int) -> None:
            if not silent[0]:
                callback(events, revision)

        return super().watch(key, prefix, fromRevision, deliver)


class CoordinatorTests(SynchronousTestCase):
    """
    The election rules.
    """

    def setUp(self) -> None:
        """
        One fake etcd on one clock; coordinators are stopped at cleanup and
        no timer may be left.
        """
        self.clock = Clock()
        self.etcd = StallingEtcd(self.clock)
        self.coordinators: list[Coordinator] = []

        def cleanUp() -> None:
            for coordinator in self.coordinators:
                coordinator.stop()
            for lease in self.etcd.leases():
                self.etcd.expire(lease)
            self.assertEqual(self.clock.getDelayedCalls(), [])

        self.addCleanup(cleanUp)

    def coordinator(self, brokerId: str, broker: RecordingBroker, **kwargs: Any) -> Coordinator:
        """
        A started coordinator for C{broker}.
        """
        kwargs.setdefault("ttl", TTL)
        coordinator = Coordinator(
            self.etcd,
            self.clock,
            broker,
            brokerId,
            amp=f"tcp:{brokerId}:5673",
            amqp=f"tcp:{brokerId}:5672",
            monotonic=self.clock.seconds,
            **kwargs,
        )
        self.coordinators.append(coordinator)
        coordinator.start()
        return coordinator

    def value(self, key: bytes) -> bytes | None:
        """
        The value of C{key} in the fake, or L{None}.
        """
        kvs = self.successResultOf(self.etcd.range(b"/qha/qha/" + key)).kvs
        return kvs[0].value if kvs else None

    def advance(self, seconds: float, step: float = 0.5) -> None:
        """
        Let C{seconds} pass, in steps.
        """
        for _ in range(int(seconds / step)):
            self.clock.advance(step)

    def test_firstReadyBrokerLeads(self) -> None:
        """
        On an empty cluster a ready broker takes the leadership and epoch 1
        in one step; its keys say so; a second broker follows it.
        """
        a = RecordingBroker()
        ca = self.coordinator("a", a)
        self.assertEqual(a.promoted, [1])
        self.assertTrue(ca.primary)
        self.assertTrue(ca.canConfirm())
        self.assertEqual(self.value(b"epoch"), b"1")
        leader = json.loads(self.value(b"leader") or b"")
        self.assertEqual(leader, {"id": "a", "epoch": 1, "amp": "tcp:a:5673", "amqp": "tcp:a:5672"})
        self.assertEqual(json.loads(self.value(b"members/a") or b"")["role"], "active")
        b = RecordingBroker(epoch=1)
        cb = self.coordinator("b", b)
        self.assertEqual(b.promoted, [])
        self.assertEqual(cb.whyNot(), "there is a leader")
        self.assertEqual(b.leaders, [LeaderInfo("a", 1, "tcp:a:5673", "tcp:a:5672")])
        self.advance(3 * TTL)
        self.assertEqual((a.promoted, a.steppedDown, b.promoted), ([1], [], []))

    def test_staleBackupNeverCampaigns(self) -> None:
        """
        A backup whose epoch is behind the cluster's never campaigns, even
        with no leader for a long time.
        """
        self.successResultOf(self.etcd.put(b"/qha/qha/epoch", b"3"))
        stale = RecordingBroker(epoch=2, position=1000)
        coordinator = self.coordinator("s", stale)
        self.advance(5 * TTL)
        self.assertEqual(stale.promoted, [])
        self.assertEqual(coordinator.whyNot(), "its epoch 2 is not the cluster's 3")

    def test_catchingUpNeverCampaigns(self) -> None:
        """
        A backup that is not ready (catching up) never campaigns; once
        ready, it does.
        """
        catching = RecordingBroker(ready=False)
        coordinator = self.coordinator("c", catching)
        self.advance(5 * TTL)
        self.assertEqual(catching.promoted, [])
        self.assertEqual(coordinator.whyNot(), "the broker is not ready")
        catching._ready = True
        coordinator.update()
        self.assertEqual(catching.promoted, [1])

    def leaderThatDies(self) -> int:
        """
        A leader C{x} in epoch 1 on a lease nobody keeps alive; its lease
        id.
        """
        lease = self.successResultOf(self.etcd.grant(TTL)).id
        self.successResultOf(self.etcd.put(b"/qha/qha/epoch", b"1"))
        self.successResultOf(self.etcd.put(b"/qha/qha/recorded", b"1"))
        info = LeaderInfo("x", 1, "tcp:x:5673", "tcp:x:5672")
        self.successResultOf(self.etcd.put(b"/qha/qha/leader", info.toJSON(), lease))
        return lease

    def test_memberAheadWins(self) -> None:
        """
        When the leader goes, a ready backup that another member is ahead
        of does not campaign; the one ahead does.
        """
        self.leaderThatDies()
        behind = RecordingBroker(epoch=1, position=10)
        ahead = RecordingBroker(epoch=1, position=20)
        cBehind = self.coordinator("behind", behind)
        self.coordinator("ahead", ahead)
        self.advance(TTL + 2 * TTL / 3)
        self.assertEqual((behind.promoted, ahead.promoted), ([], [2]))
        self.assertEqual(cBehind.whyNot(), "there is a leader")
        self.assertEqual(behind.leaders[-1], LeaderInfo("ahead", 2, "tcp:ahead:5673", "tcp:ahead:5672"))

    def test_waitsForAnswers(self) -> None:
        """
        A candidate waits for the members' answers to the leader's
        disappearance, up to C{settle}; with C{minBackups} it needs answers
        from B-k+1 members whatever the time.
        """
        self.leaderThatDies()
        one = RecordingBroker(epoch=1, position=5)
        two = RecordingBroker(epoch=1, position=5, ready=False)
        cOne = self.coordinator("one", one, minBackups=1, settle=1.0)
        cTwo = self.coordinator("two", two)
        # A third member that stopped answering: its record stays until
        # its lease expires.
        silent = self.successResultOf(self.etcd.grant(3 * TTL)).id
        record = json.dumps(
            {"id": "three", "role": "ready", "epoch": 1, "position": 1, "ready": True, "amp": "", "amqp": ""}
        )
        self.successResultOf(self.etcd.put(b"/qha/qha/members/three", record.encode(), silent))
        # The leader's lease expires: "two" answers, "three" does not. B is
        # 3, k is 1: 3 answers needed, 2 given.
        self.advance(TTL + 2)
        self.assertEqual(one.promoted, [])
        self.assertEqual(cOne.whyNot(), "2 members answered, 3 needed")
        # Once "three" is gone, B is 2 and 2 answered.
        self.etcd.expire(silent)
        self.assertEqual(one.promoted, [2])
        self.assertEqual(cTwo.whyNot(), "there is a leader")

    def silentMember(self, memberId: str, position: int) -> int:
        """
        Register member C{memberId} in epoch 1 at C{position}, ready, on a
        long lease nobody keeps alive: it has stopped answering, but its
        record stays for now. Its lease id.
        """
        silent = self.successResultOf(self.etcd.grant(5 * TTL)).id
        record = json.dumps(
            {"id": memberId, "role": "ready", "epoch": 1, "position": position, "ready": True, "amp": "", "amqp": ""}
        )
        self.successResultOf(self.etcd.put(b"/qha/qha/members/" + memberId.encode(), record.encode(), silent))
        return silent

    def test_minBackupsAnswersNeeded(self) -> None:
        """
        With C{--ha-min-backups} k and B backups registered (the candidate
        among them) a candidate needs answers from B-k+1 of them: one of
        those holds every confirmed message. Here B is 4 and k 2: with two
        members silent, 2 answers are short of 3 however long it waits;
        once one of them answers, 3 are enough (after the settle time, as
        the last one may still answer).
        """
        self.leaderThatDies()
        one = RecordingBroker(epoch=1, position=5)
        two = RecordingBroker(epoch=1, position=5, ready=False)
        cOne = self.coordinator("one", one, minBackups=2, settle=1.0)
        self.coordinator("two", two)
        self.silentMember("three", 1)
        four = self.silentMember("four", 1)
        self.advance(TTL + 2)
        self.assertEqual(one.promoted, [])
        self.assertEqual(cOne.whyNot(), "2 members answered, 3 needed")
        self.advance(2 * TTL)
        self.assertEqual(cOne.whyNot(), "2 members answered, 3 needed")
        # "four" comes back and answers: 3 of 4 answered.
        record = json.dumps(
            {"id": "four", "role": "ready", "epoch": 1, "position": 1, "ready": True, "amp": "", "amqp": ""}
        )
        self.successResultOf(self.etcd.put(b"/qha/qha/members/four", record.encode(), four))
        self.assertEqual(one.promoted, [2])

    def stopWhileKeepaliveOut(self, answer: Any) -> None:
        """
        Stop a leading coordinator while its keepalive is out, then answer
        the keepalive with C{answer} (L{None}, or an exception): the
        stopped coordinator sets no deadline and steps nothing down.
        """
        a = RecordingBroker()
        ca = self.coordinator("a", a)
        self.advance(TTL + 2)
        self.assertEqual(a.promoted, [1])
        held: list[Deferred[None]] = []

        def holdKeepalive(lease: int) -> Deferred[None]:
            d: Deferred[None] = Deferred()
            held.append(d)
            return d

        self.patch(self.etcd, "keepalive", holdKeepalive)
        self.advance(TTL)
        self.assertTrue(held)
        self.successResultOf(ca.stop())
        steppedDown = list(a.steppedDown)
        for d in held:
            if answer is None:
                d.callback(None)
            else:
                d.errback(answer)
        self.assertIsNone(ca._deadlineCall)
        self.assertEqual(a.steppedDown, steppedDown)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopWhileKeepaliveOut(self) -> None:
        """
        A keepalive answered after its coordinator stopped sets no
        deadline: a stopped coordinator leaves no timer behind.
        """
        self.stopWhileKeepaliveOut(None)

    def test_stopWhileKeepaliveOutLost(self) -> None:
        """
        A keepalive that says the lease is gone after its coordinator
        stopped steps nothing down.
        """
        self.stopWhileKeepaliveOut(LeaseLost(5, "lease 1000 expired or was revoked"))

    def test_raceOneWins(self) -> None:
        """
        Two candidates whose transactions cross: exactly one wins; the
        loser follows it. When the winner later dies, the other takes the
        next epoch: two primaries never share an epoch.
        """
        self.leaderThatDies()
        held: list[tuple[Deferred[TxnResult], tuple[Any, ...]]] = []
        realTxn = self.etcd.txn

        def holdTxn(*args: Any) -> Deferred[TxnResult]:
            d: Deferred[TxnResult] = Deferred()
            held.append((d, args))
            return d

        self.etcd.txn = holdTxn  # type: ignore[method-assign, assignment]
        a = RecordingBroker(epoch=1, position=7)
        b = RecordingBroker(epoch=1, position=7)
        ca = self.coordinator("a", a)
        cb = self.coordinator("b", b)
        self.advance(TTL + 2)
        self.assertEqual(len(held), 2)
        self.etcd.txn = realTxn  # type: ignore[method-assign]
        results = []
        for d, args in held:
            result = self.successResultOf(realTxn(*args))
            results.append(result.succeeded)
            d.callback(result)
        self.assertEqual(sorted(results), [False, True])
        self.assertEqual(len(a.promoted) + len(b.promoted), 1)
        winner, wc, loser, lc = (a, ca, b, cb) if a.promoted else (b, cb, a, ca)
        self.assertEqual(winner.promoted, [2])
        self.assertFalse(lc.primary)
        self.assertEqual(lc.whyNot(), "there is a leader")
        # The loser follows the winner, so it is in epoch 2 too.
        loser._epoch = 2
        lc.update()
        # The winner's reactor stalls: no more keepalives.
        assert wc.lease is not None
        lease = wc.lease
        wc._stopped = True
        if wc._tickCall is not None:
            wc._tickCall.cancel()
        self.advance(TTL + 2)
        self.assertIn("deadline", winner.steppedDown[0])
        self.assertNotIn(lease, self.etcd.leases())
        self.assertEqual(loser.promoted, [3])
        wc._stopped = False

    def crash(self, coordinator: Coordinator) -> None:
        """
        C{coordinator}'s process dies: no more keepalives, nothing revoked;
        etcd expires its lease after the TTL.
        """
        coordinator._stopped = True
        for call in (coordinator._tickCall, coordinator._deadlineCall, coordinator._settleCall):
            if call is not None and call.active():
                call.cancel()
        if coordinator._watch is not None:
            coordinator._watch.cancel()
        self.coordinators.remove(coordinator)

    def crashAfterTake(self, brokerId: str) -> None:
        """
        The coordinator of C{brokerId} dies (L{crash}) the moment etcd
        applied its winning take, before its campaign can go on: the
        process is gone between its take and its record, so it records
        nothing, here or in etcd.
        """
        realTxn = self.etcd.txn

        def txn(compare: Any, success: Any, failure: Any) -> Deferred[TxnResult]:
            d = realTxn(compare, success, failure)
            result = self.successResultOf(d)
            takes = [
                op
                for op in success
                if isinstance(op, Put)
                and op.key == b"/qha/qha/leader"
                and LeaderInfo.fromJSON(op.value).id == brokerId
            ]
            if result.succeeded and takes:
                [winner] = [c for c in self.coordinators if c.brokerId == brokerId]
                self.crash(winner)
                del self.etcd.txn
            return succeed(result)

        self.etcd.txn = txn  # type: ignore[method-assign]

    def test_winnerDiesBeforeRecording(self) -> None:
        """
        A winner that dies after its take but before it recorded the epoch
        leaves C{epoch} one ahead of every member and C{recorded} behind
        it: nobody served in that epoch, so once its lease expired the
        members one epoch behind campaign by the usual rules and the
        cluster elects again, in the epoch after.
        """
        self.leaderThatDies()
        a = RecordingBroker(epoch=1, position=7)
        b = RecordingBroker(epoch=1, position=5)
        self.coordinator("a", a)
        cb = self.coordinator("b", b)
        self.crashAfterTake("a")
        self.advance(TTL + 2)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual((a.recordAttempts, a.recorded, a.promoted), ([], [], []))
        self.assertEqual((self.value(b"epoch"), self.value(b"recorded")), (b"2", b"1"))
        self.assertEqual(cb.whyNot(), "there is a leader")
        self.advance(TTL + 1)
        self.assertEqual((b.recorded, b.promoted), ([3], [3]))
        self.assertEqual((self.value(b"epoch"), self.value(b"recorded")), (b"3", b"3"))
        # The dead winner restarts at its durable epoch, 1: it follows.
        again = RecordingBroker(epoch=1, position=7)
        cAgain = self.coordinator("a", again)
        self.assertEqual((again.promoted, cAgain.whyNot()), ([], "there is a leader"))

    def logged(self) -> EventLoggingObserver:
        """
        Every event logged from now on, until the test ends.
        """
        logged = EventLoggingObserver()
        globalLogPublisher.addObserver(logged)
        self.addCleanup(globalLogPublisher.removeObserver, logged)
        return logged

    def test_cannotRecordLeavesElection(self) -> None:
        """
        A winner that cannot record its epoch (its data directory cannot be
        written) leaves the election for good: it revokes its lease, so
        its leader key and its member key go at once, not at the TTL, and
        the member behind it, which no longer waits for it, leads in the
        next epoch. It logs an error that says what to do, never campaigns
        again, and L{Coordinator.whyNot} says why.
        """
        logged = self.logged()
        self.leaderThatDies()
        a = RecordingBroker(epoch=1, position=7)
        a.recordFails = OSError(28, "No space left on device")
        b = RecordingBroker(epoch=1, position=5)
        ca = self.coordinator("a", a)
        cb = self.coordinator("b", b)
        lease = ca.lease
        # x's lease expires at TTL; a takes epoch 2 then, and fails to
        # record it. Its own lease, kept alive until then, would last
        # until 2 * TTL.
        self.advance(TTL + 1)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual((a.recordAttempts, a.recorded, a.promoted), ([2], [], []))
        self.assertFalse(ca.primary)
        self.assertIsNone(ca.lease)
        self.assertNotIn(lease, self.etcd.leases())
        self.assertIsNone(self.value(b"members/a"))
        self.assertEqual((b.recorded, b.promoted), ([3], [3]))
        self.assertEqual(LeaderInfo.fromJSON(self.value(b"leader") or b"").id, "b")
        self.assertEqual((self.value(b"epoch"), self.value(b"recorded")), (b"3", b"3"))
        why = "left the election: could not record epoch 2: [Errno 28] No space left on device"
        self.assertEqual(ca.whyNot(), why)
        [event] = [e for e in logged if "log_failure" in e]
        text = formatEvent(event)
        self.assertEqual(event["log_level"], LogLevel.error)
        for words in (why, "takes part in no election", "Fix its data directory", "restart the broker"):
            self.assertIn(words, text)
        # Never again: not when b goes, nor when a is asked to look again
        # (update) or started again (only a new process rejoins).
        assert cb.lease is not None
        self.etcd.expire(cb.lease)
        ca.update()
        ca.start()
        self.advance(3 * TTL)
        self.assertEqual(a.recordAttempts, [2])
        self.assertIsNone(self.value(b"members/a"))
        self.assertEqual(b.promoted, [3, 4])
        self.assertEqual(ca.whyNot(), why)
        self.failureResultOf(ca.handOver("a"), SwitchoverRefused)

    def test_failureAfterTakeLeavesElection(self) -> None:
        """
        Any other failure after the take (here the broker fails while it
        becomes primary) takes the same way out: the broker is told to step
        down, the lease is revoked, another member leads, and the campaign
        does not stay under way for ever.
        """
        logged = self.logged()
        a = RecordingBroker()
        a.primaryFails = RuntimeError("recovery failed")
        ca = self.coordinator("a", a)
        b = RecordingBroker(epoch=1)
        self.coordinator("b", b)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        [event] = [e for e in logged if "log_failure" in e]
        self.assertIn("then restart the broker", formatEvent(event))
        why = "left the election: failed after taking epoch 1: RuntimeError: recovery failed"
        self.assertEqual(ca.whyNot(), why)
        self.assertEqual((a.promoted, a.steppedDown, a.primary), ([1], [why], False))
        self.assertFalse(ca.primary)
        self.assertFalse(ca.canConfirm())
        self.assertIsNone(self.value(b"members/a"))
        self.assertEqual(b.promoted, [2])

    def test_failureBeforeTake(self) -> None:
        """
        A campaign that fails unexpectedly before its take (not an answer
        of etcd) ends, logged: the broker campaigns again at the next tick.
        """
        realTxn = self.etcd.txn
        calls: list[Any] = []

        def failFirst(*args: Any) -> Deferred[TxnResult]:
            calls.append(args)
            if len(calls) == 1:
                raise RuntimeError("a bug")
            return realTxn(*args)

        self.etcd.txn = failFirst  # type: ignore[method-assign, assignment]
        a = RecordingBroker()
        ca = self.coordinator("a", a)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual((a.promoted, ca.whyNot()), ([], None))
        self.clock.advance(TTL / 3)
        self.assertEqual(a.promoted, [1])
        del self.etcd.txn

    def test_leaseLostWhileRecording(self) -> None:
        """
        A winner whose lease is lost between its take and its record (etcd
        expired it while the take was answered; its keepalive loop then
        dropped it): the record's check is made against the lease the
        campaign ran on, fails, and the broker does not serve. Its
        campaign ends cleanly, so once it holds a new lease it campaigns
        again and leads in the next epoch: a campaign that failed must
        never leave the broker out of every election.
        """
        a = RecordingBroker()
        record = a.recordEpoch

        def loseLease(epoch: int) -> None:
            # The campaign runs within start(): the coordinator is the last.
            campaigner = self.coordinators[-1]
            assert campaigner.lease is not None
            self.etcd.expire(campaigner.lease)
            campaigner.lease = None
            a.recordEpoch = record  # type: ignore[method-assign]
            record(epoch)

        a.recordEpoch = loseLease  # type: ignore[method-assign]
        ca = self.coordinator("a", a)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual((a.recorded, a.promoted, ca.primary), ([1], [], False))
        self.assertEqual((self.value(b"epoch"), self.value(b"leader")), (b"1", None))
        self.advance(TTL)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual((a.recorded, a.promoted), ([1, 2], [2]))
        self.assertTrue(ca.primary)
        self.assertEqual((self.value(b"epoch"), self.value(b"recorded")), (b"2", b"2"))

    def test_unrecordedEpochNotRelaxedForItsMembers(self) -> None:
        """
        A winner that recorded the epoch durably but could not write
        C{recorded} serves nothing and gives the leader key up; it is
        registered in the cluster's epoch, so the members one epoch behind
        do not campaign, and it takes the next epoch itself.
        """
        self.leaderThatDies()
        a = RecordingBroker(epoch=1, position=7)
        b = RecordingBroker(epoch=1, position=5)
        realTxn = self.etcd.txn
        calls = []

        def failSecond(*args: Any) -> Deferred[TxnResult]:
            calls.append(args)
            if len(calls) == 2:
                return fail(EtcdUnavailable("not answered"))
            return realTxn(*args)

        self.etcd.txn = failSecond  # type: ignore[method-assign, assignment]
        self.coordinator("a", a)
        cb = self.coordinator("b", b)
        self.advance(TTL + 2)
        self.assertEqual((a.recorded, a.promoted), ([2, 3], [3]))
        self.assertEqual(b.promoted, [])
        self.assertEqual((self.value(b"epoch"), self.value(b"recorded")), (b"3", b"3"))
        self.assertEqual(cb.whyNot(), "there is a leader")
        self.etcd.txn = realTxn  # type: ignore[method-assign]

    def test_stalledWatch(self) -> None:
        """
        A backup whose watch stream stalls (connected and silent) still
        learns that the leader went: each tick reads C{leader}, and the
        same difference from the watch at two ticks in a row starts the
        watch again from a fresh read; it then campaigns, within the lease
        expiry plus two ticks and the settle time.
        """
        a = RecordingBroker()
        ca = self.coordinator("a", a)
        b = RecordingBroker(epoch=1)
        cb = self.coordinator("b", b)
        self.etcd.stallWatches()
        self.crash(ca)
        self.advance(TTL)
        self.assertEqual(self.value(b"leader"), None)
        self.assertEqual(cb.whyNot(), "there is a leader")
        self.advance(2 * TTL / 3 + cb.settle)
        self.assertEqual(b.promoted, [2])
        self.assertEqual(cb.whyNot(), "already primary")

    def test_pastDeadlineConfirmsNothing(self) -> None:
        """
        With etcd unreachable the primary serves until its deadline (the
        time its last successful keepalive was sent plus TTL minus the
        margin), then confirms nothing and steps down; a backup does not
        campaign meanwhile.
        """
        a = RecordingBroker()
        ca = self.coordinator("a", a)
        b = RecordingBroker(epoch=1)
        cb = self.coordinator("b", b)
        self.clock.advance(TTL / 3)  # a keepalive at 2.0
        sent = self.clock.seconds()
        self.assertEqual(ca.deadline, sent + TTL - TTL / 3)
        self.etcd.setAvailable(False)
        self.clock.advance(TTL / 3)
        self.assertTrue(ca.canConfirm())
        self.assertEqual(a.steppedDown, [])
        deadline = ca.deadline
        assert deadline is not None
        self.assertTrue(ca.canConfirm(deadline - 0.01))
        self.assertFalse(ca.canConfirm(deadline))
        self.clock.advance(deadline - self.clock.seconds())
        self.assertFalse(ca.canConfirm())
        self.assertEqual(len(a.steppedDown), 1)
        self.assertIn("deadline", a.steppedDown[0])
        self.advance(3 * TTL)
        self.assertEqual(b.promoted, [])
        self.assertEqual(cb.whyNot(), "not connected to etcd")
        # etcd is back: a's and b's leases expired meanwhile; the cluster
        # elects again, in a new epoch.
        self.etcd.setAvailable(True)
        self.advance(TTL)
        self.assertEqual(sorted(a.promoted + b.promoted), [1, 2])

    def test_lostLeaseDemotes(self) -> None:
        """
        A primary whose lease etcd ended steps down at once (the leader key
        went with it), gets a new lease and may lead again in a new epoch.
        """
        a = RecordingBroker()
        ca = self.coordinator("a", a)
        assert ca.lease is not None
        self.etcd.expire(ca.lease)
        self.assertEqual(len(a.steppedDown), 1)
        self.assertFalse(ca.canConfirm())
        self.clock.advance(TTL / 3)
        self.assertEqual(a.promoted, [1, 2])

    def test_keepaliveLeaseLostDemotes(self) -> None:
        """
        A primary told by a keepalive that its lease is gone steps down
        even when its watch did not show it (the watch was down).
        """
        a = RecordingBroker()
        ca = self.coordinator("a", a)
        assert ca._watch is not None
        ca._watch.cancel()
        lease = ca.lease
        assert lease is not None
        self.etcd.expire(lease)
        self.assertEqual(a.steppedDown, [])
        self.clock.advance(TTL / 3)
        self.assertEqual(a.steppedDown, ["the etcd lease was lost"])

    def test_keepaliveErrorDemotes(self) -> None:
        """
        A keepalive that etcd answers with an error steps the primary down
        at once.
        """
        a = RecordingBroker()
        self.coordinator("a", a)

        def refuse(leaseId: int) -> Deferred[int]:
            from twisted.internet.defer import fail

            return fail(EtcdError(9, "something else"))

        self.etcd.keepalive = refuse  # type: ignore[method-assign]
        self.clock.advance(TTL / 3)
        self.assertEqual(len(a.steppedDown), 1)
        self.assertIn("keepalive failed", a.steppedDown[0])
        del self.etcd.keepalive

    def test_otherLeaderDemotes(self) -> None:
        """
        A primary that sees C{leader} name another broker steps down.
        """
        a = RecordingBroker()
        self.coordinator("a", a)
        info = LeaderInfo("z", 9, "", "")
        self.successResultOf(self.etcd.put(b"/qha/qha/leader", info.toJSON()))
        self.assertEqual(a.steppedDown, ["etcd names z leader in epoch 9"])

    def test_ownLeftoverAtStartup(self) -> None:
        """
        A broker that finds C{leader} naming itself on the lease of an
        earlier run revokes that lease at once rather than wait for its TTL,
        then campaigns.
        """
        old = self.successResultOf(self.etcd.grant(TTL)).id
        self.successResultOf(self.etcd.put(b"/qha/qha/epoch", b"4"))
        info = LeaderInfo("a", 4, "tcp:a:5673", "tcp:a:5672")
        self.successResultOf(self.etcd.put(b"/qha/qha/leader", info.toJSON(), old))
        a = RecordingBroker(epoch=4)
        self.coordinator("a", a)
        self.assertNotIn(old, self.etcd.leases())
        self.assertEqual(a.promoted, [5])

    def test_expiredLeaseAtStartup(self) -> None:
        """
        A broker whose earlier run led finds, at start-up, C{leader} on
        that run's lease, which etcd expires before the broker revokes it
        (the revoke answers that the lease is gone): it campaigns in the
        next epoch at once, not at the end of some TTL.
        """
        old = self.successResultOf(self.etcd.grant(TTL)).id
        self.successResultOf(self.etcd.put(b"/qha/qha/epoch", b"4"))
        self.successResultOf(self.etcd.put(b"/qha/qha/recorded", b"4"))
        info = LeaderInfo("a", 4, "tcp:a:5673", "tcp:a:5672")
        self.successResultOf(self.etcd.put(b"/qha/qha/leader", info.toJSON(), old))
        realRevoke = self.etcd.revoke

        def expiredFirst(leaseId: int) -> Deferred[None]:
            self.etcd.expire(leaseId)
            return realRevoke(leaseId)

        self.etcd.revoke = expiredFirst  # type: ignore[method-assign]
        a = RecordingBroker(epoch=4)
        self.coordinator("a", a)
        del self.etcd.revoke
        self.assertNotIn(old, self.etcd.leases())
        self.assertEqual(a.promoted, [5])

    def test_ownLeaseExpiredAtStartup(self) -> None:
        """
        A broker whose first lease expired before it used it (the reactor
        stalled right after the grant) finds it gone at its first write: it
        takes a new lease at the next tick, then registers and campaigns.
        """
        realGrant = self.etcd.grant
        granted: list[int] = []

        def expiresAtOnce(ttl: int) -> Deferred[Any]:
            d = realGrant(ttl)
            lease = self.successResultOf(d).id
            granted.append(lease)
            if len(granted) == 1:
                self.etcd.expire(lease)
            return succeed(Lease(lease, ttl))

        self.etcd.grant = expiresAtOnce  # type: ignore[method-assign]
        a = RecordingBroker()
        ca = self.coordinator("a", a)
        self.assertEqual((a.promoted, ca.lease, ca.whyNot()), ([], None, "not connected to etcd"))
        self.clock.advance(TTL / 3)
        del self.etcd.grant
        self.assertEqual(len(granted), 2)
        self.assertEqual(ca.lease, granted[1])
        self.assertEqual(a.promoted, [1])
        self.assertIsNotNone(self.value(b"members/a"))

    def test_deadLeaderAtStartup(self) -> None:
        """
        A broker that starts while C{leader} names a broker that is gone
        waits for that lease to expire, then campaigns.
        """
        self.leaderThatDies()
        b = RecordingBroker(epoch=1)
        cb = self.coordinator("b", b)
        self.advance(TTL - 1)
        self.assertEqual((b.promoted, cb.whyNot()), ([], "there is a leader"))
        self.advance(2)
        self.assertEqual(b.promoted, [2])

    def test_switchover(self) -> None:
        """
        A switchover to a ready member: the leader steps down, deletes
        C{leader} once its in-flight confirms settled, and the named member
        takes the next epoch, even though another member is ahead of it.
        """
        a = RecordingBroker()
        ca = self.coordinator("a", a)
        b = RecordingBroker(epoch=1, position=3)
        self.coordinator("b", b)
        c = RecordingBroker(epoch=1, position=9)
        self.coordinator("c", c)
        a.settling = Deferred()
        self.successResultOf(Deferred.fromCoroutine(requestSwitchover(self.etcd, "qha", "b")))
        self.assertEqual(a.steppedDown, ["switchover to b"])
        self.assertFalse(ca.canConfirm())
        self.assertIsNotNone(self.value(b"leader"))
        a.settling.callback(None)
        self.assertEqual((b.promoted, c.promoted), ([2], []))
        self.assertIsNone(self.value(b"switchover"))

    def test_switchoverRefused(self) -> None:
        """
        A switchover to a member that is not registered is refused.
        """
        self.coordinator("a", RecordingBroker())
        self.failureResultOf(
            Deferred.fromCoroutine(requestSwitchover(self.etcd, "qha", "nobody")), SwitchoverRefused
        )

    def test_stopRevokes(self) -> None:
        """
        Stopping revokes the lease, so the leadership goes at once.
        """
        a = RecordingBroker()
        ca = self.coordinator("a", a)
        b = RecordingBroker(epoch=1)
        self.coordinator("b", b)
        self.successResultOf(ca.stop())
        self.assertIsNone(self.value(b"members/a"))
        self.clock.advance(TTL / 3)
        self.assertEqual(b.promoted, [2])

    def test_arguments(self) -> None:
        """
        A TTL under 2 s, or an id or cluster name with a slash, is refused;
        the margin is at least TTL/3.
        """
        broker = RecordingBroker()
        with self.assertRaises(ValueError):
            Coordinator(self.etcd, self.clock, broker, "a", "", "", ttl=1)
        with self.assertRaises(ValueError):
            Coordinator(self.etcd, self.clock, broker, "a/b", "", "")
        with self.assertRaises(ValueError):
            Coordinator(self.etcd, self.clock, broker, "a", "", "", cluster="x/y")
        self.assertEqual(Coordinator(self.etcd, self.clock, broker, "a", "", "", ttl=9, margin=1).margin, 3)
