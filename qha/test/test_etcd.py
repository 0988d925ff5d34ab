"""
Tests for L{qha.ha.etcd}: the same contract run against the in-memory
L{FakeEtcd} and against a real etcd started for each test, so that the fake
the coordinator's unit tests rely on behaves as etcd does; and the parsing of
C{--ha-coordinator}.
"""

from __future__ import annotations

import functools
from typing import Any, Awaitable, Callable

from twisted.internet import reactor as globalReactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from ..ha.etcd import (
    Compare,
    Delete,
    EtcdClient,
    EtcdUnavailable,
    Event,
    Get,
    IEtcd,
    IWatch,
    LeaseLost,
    Put,
    parseCoordinator,
    prefixEnd,
)
from ..testing import FakeEtcd
from .etcdprocess import EtcdProcess, freePort

reactor: Any = globalReactor


def asDeferred(method: Callable[..., Awaitable[None]]) -> Callable[..., Deferred[None]]:
    """
    Let trial run an C{async def} test method: it waits for the L{Deferred}.
    """

    @functools.wraps(method)
    def run(*args: Any) -> Deferred[None]:
        return Deferred.fromCoroutine(method(*args))  # type: ignore[arg-type]

    return run


class EtcdContractMixin:
    """
    What every L{IEtcd} must do. A subclass gives L{makeEtcd} and L{within}.
    """

    etcd: IEtcd

    async def makeEtcd(self) -> IEtcd:
        """
        A new, empty etcd to test.
        """
        raise NotImplementedError()

    async def within(self, seconds: float, event: Deferred[Any]) -> Any:
        """
        Wait for C{event} for at most C{seconds} (of the etcd's time).
        """
        raise NotImplementedError()

    def assertEqual(self, first: Any, second: Any, msg: str | None = None) -> None:
        "Provided by the test case."

    def assertTrue(self, value: Any, msg: str | None = None) -> None:
        "Provided by the test case."

    def assertFalse(self, value: Any, msg: str | None = None) -> None:
        "Provided by the test case."

    def assertIsInstance(self, value: Any, kind: Any, msg: str | None = None) -> None:
        "Provided by the test case."

    @asDeferred
    async def test_interface(self) -> None:
        """
        It provides L{IEtcd}, and its watches L{IWatch}.
        """
        etcd = await self.makeEtcd()
        self.assertTrue(verifyObject(IEtcd, etcd))
        watch = etcd.watch(b"/k", False, 0, lambda events, revision: None)
        self.assertTrue(verifyObject(IWatch, watch))
        await self.within(5, watch.started)
        watch.cancel()
        self.assertEqual(await self.within(5, watch.ended), None)

    @asDeferred
    async def test_putRangeDelete(self) -> None:
        """
        Writes raise the revision; a key keeps its create revision and counts
        its versions; a prefix range finds the keys under it in order and
        nothing else; a delete removes them.
        """
        etcd = await self.makeEtcd()
        first = await etcd.put(b"/a/1", b"one")
        second = await etcd.put(b"/a/1", b"uno")
        self.assertEqual(second, first + 1)
        await etcd.put(b"/a/2", b"two")
        await etcd.put(b"/b", b"other")
        found = await etcd.range(b"/a/1")
        [kv] = found.kvs
        self.assertEqual(
            (kv.key, kv.value, kv.createRevision, kv.modRevision, kv.version),
            (b"/a/1", b"uno", first, second, 2),
        )
        prefixed = await etcd.range(b"/a/", prefix=True)
        self.assertEqual([kv.key for kv in prefixed.kvs], [b"/a/1", b"/a/2"])
        self.assertEqual((await etcd.range(b"/none")).kvs, [])
        self.assertEqual(await etcd.delete(b"/a/", prefix=True), 2)
        self.assertEqual((await etcd.range(b"/a/", prefix=True)).kvs, [])
        self.assertEqual(len((await etcd.range(b"/b")).kvs), 1)

    @asDeferred
    async def test_txn(self) -> None:
        """
        A transaction applies its success branch when every comparison
        holds (create revision 0: the key is absent) and its failure branch
        otherwise, whose L{Get}s answer; value, version and mod revision
        comparisons hold as etcd's do.
        """
        etcd = await self.makeEtcd()
        absent = Compare(b"/leader", "CREATE", "EQUAL", 0)
        won = await etcd.txn([absent], [Put(b"/leader", b"me"), Put(b"/epoch", b"1")], [Get(b"/leader")])
        self.assertTrue(won.succeeded)
        self.assertEqual(won.ranges, [])
        lost = await etcd.txn([absent], [Put(b"/leader", b"you")], [Get(b"/leader")])
        self.assertFalse(lost.succeeded)
        [[leader]] = lost.ranges
        self.assertEqual(leader.value, b"me")
        self.assertEqual(leader.modRevision, won.revision)
        both = await etcd.txn(
            [
                Compare(b"/leader", "VALUE", "EQUAL", b"me"),
                Compare(b"/epoch", "MOD", "EQUAL", won.revision),
                Compare(b"/epoch", "VERSION", "EQUAL", 1),
            ],
            [Put(b"/epoch", b"2"), Delete(b"/leader")],
            [],
        )
        self.assertTrue(both.succeeded)
        self.assertEqual(both.revision, won.revision + 1)
        self.assertEqual((await etcd.range(b"/leader")).kvs, [])
        self.assertEqual((await etcd.range(b"/epoch")).kvs[0].value, b"2")
        stale = await etcd.txn([Compare(b"/epoch", "MOD", "EQUAL", won.revision)], [Put(b"/epoch", b"9")], [])
        self.assertFalse(stale.succeeded)
        self.assertEqual((await etcd.range(b"/epoch")).kvs[0].value, b"2")

    @asDeferred
    async def test_leaseKeepaliveRevoke(self) -> None:
        """
        A granted lease answers keepalives with its TTL; revoked, its keys
        are gone, and a keepalive or a put on it says L{LeaseLost}.
        """
        etcd = await self.makeEtcd()
        lease = await etcd.grant(2)
        self.assertEqual(lease.ttl, 2)
        self.assertEqual(await etcd.keepalive(lease.id), 2)
        await etcd.put(b"/member", b"x", lease.id)
        self.assertEqual((await etcd.range(b"/member")).kvs[0].lease, lease.id)
        await etcd.revoke(lease.id)
        self.assertEqual((await etcd.range(b"/member")).kvs, [])
        for call in (lambda: etcd.keepalive(lease.id), lambda: etcd.put(b"/m", b"", lease.id)):
            try:
                await call()
            except LeaseLost:
                pass
            else:
                raise AssertionError("no LeaseLost")

    @asDeferred
    async def test_leaseExpires(self) -> None:
        """
        A lease nobody keeps alive expires after its TTL (2 s, etcd's
        smallest): a watch sees its key deleted, and a keepalive then says
        L{LeaseLost}.
        """
        etcd = await self.makeEtcd()
        lease = await etcd.grant(2)
        await etcd.put(b"/leader", b"me", lease.id)
        deleted: Deferred[Event] = Deferred()

        def seen(events: list[Event], revision: int) -> None:
            for event in events:
                if event.type == "DELETE" and not deleted.called:
                    deleted.callback(event)

        watch = etcd.watch(b"/leader", False, 0, seen)
        await self.within(5, watch.started)
        event = await self.within(10, deleted)
        self.assertEqual(event.kv.key, b"/leader")
        try:
            await etcd.keepalive(lease.id)
        except LeaseLost:
            pass
        else:
            raise AssertionError("no LeaseLost")
        watch.cancel()

    @asDeferred
    async def test_watchEvents(self) -> None:
        """
        A prefix watch sees puts and deletes under the prefix, not beside
        it, with their revisions; one started from an earlier revision sees
        the changes since then first.
        """
        etcd = await self.makeEtcd()
        before = await etcd.put(b"/w/early", b"0")
        seen: list[tuple[str, bytes, bytes, int]] = []
        enough: Deferred[None] = Deferred()

        def record(events: list[Event], revision: int) -> None:
            for e in events:
                seen.append((e.type, e.kv.key, e.kv.value, e.kv.modRevision))
            if len(seen) >= 4 and not enough.called:
                enough.callback(None)

        watch = etcd.watch(b"/w/", True, before, record)
        await self.within(5, watch.started)
        put = await etcd.put(b"/w/a", b"1")
        await etcd.put(b"/x", b"beside")
        await etcd.put(b"/w/b", b"2")
        await etcd.delete(b"/w/a")
        await self.within(5, enough)
        self.assertEqual(
            seen,
            [
                ("PUT", b"/w/early", b"0", before),
                ("PUT", b"/w/a", b"1", put),
                ("PUT", b"/w/b", b"2", put + 2),
                ("DELETE", b"/w/a", b"", put + 3),
            ],
        )
        watch.cancel()
        await self.within(5, watch.ended)


class FakeEtcdTests(EtcdContractMixin, TestCase):
    """
    The contract, against L{FakeEtcd} and a L{Clock}.
    """

    async def makeEtcd(self) -> IEtcd:
        """
        A fake with its own clock.
        """
        self.clock = Clock()
        self.fake = FakeEtcd(self.clock)
        return self.fake

    async def within(self, seconds: float, event: Deferred[Any]) -> Any:
        """
        Advance the clock a tenth of a second at a time until C{event}
        fired, at most C{seconds}.
        """
        steps = 0
        while not event.called and steps < seconds * 10:
            self.clock.advance(0.1)
            steps += 1
        self.assertTrue(event.called, f"nothing within {seconds} s")
        return await event

    def test_unavailable(self) -> None:
        """
        An unavailable fake fails every call with L{EtcdUnavailable} and
        ends its watches that way.
        """
        fake = FakeEtcd(Clock())
        watch = fake.watch(b"/k", False, 0, lambda events, revision: None)
        fake.setAvailable(False)
        self.failureResultOf(watch.ended, EtcdUnavailable)
        self.failureResultOf(fake.grant(2), EtcdUnavailable)
        self.failureResultOf(fake.put(b"/k", b""), EtcdUnavailable)
        fake.setAvailable(True)
        self.successResultOf(fake.put(b"/k", b""))


class RealEtcdTests(EtcdContractMixin, TestCase):
    """
    The contract, against a real etcd (skipped, saying why, when there is
    no etcd binary), through L{EtcdClient}.
    """

    timeout = 120

    async def makeEtcd(self) -> IEtcd:
        """
        Start an etcd for this test and a client for it; both go at cleanup.
        """
        process = EtcdProcess(reactor)
        self.addCleanup(lambda: Deferred.fromCoroutine(process.stop()))
        await process.start()
        self.process = process
        client = EtcdClient(reactor, [process.url], timeout=5.0)
        self.addCleanup(client.close)
        return client

    async def within(self, seconds: float, event: Deferred[Any]) -> Any:
        """
        Wait for C{event}, failing after C{seconds}.
        """
        event.addTimeout(seconds, reactor)
        return await event

    @asDeferred
    async def test_deadEndpointFirst(self) -> None:
        """
        With a first endpoint where nothing listens, calls go to the next
        one; with no live endpoint at all, they fail with
        L{EtcdUnavailable}.
        """
        await self.makeEtcd()
        dead = f"http://127.0.0.1:{freePort()}"
        client = EtcdClient(reactor, [dead, self.process.url], timeout=5.0)
        self.addCleanup(client.close)
        lease = await client.grant(2)
        await client.put(b"/k", b"v", lease.id)
        self.assertEqual((await client.range(b"/k")).kvs[0].value, b"v")
        nobody = EtcdClient(reactor, [dead], timeout=5.0)
        try:
            await nobody.range(b"/k")
        except EtcdUnavailable as e:
            self.assertIn(dead, str(e))
        else:
            raise AssertionError("no EtcdUnavailable")


class ParseCoordinatorTests(SynchronousTestCase):
    """
    L{parseCoordinator} reads C{--ha-coordinator} and says what is wrong.
    """

    def test_endpoints(self) -> None:
        """
        Endpoints come back in order, the port defaulting to 2379.
        """
        self.assertEqual(
            parseCoordinator("etcd:http://h1:2379,https://h2,http://[::1]:4001"),
            ["http://h1:2379", "https://h2:2379", "http://[::1]:4001"],
        )

    def test_refused(self) -> None:
        """
        Another kind, another scheme, an empty entry, a path or no host are
        refused with the value in the message.
        """
        for value, words in [
            ("zookeeper:http://h:1", "expected etcd:"),
            ("http://h:2379", "expected etcd:"),
            ("etcd:ftp://h:1", "http:// or https://"),
            ("etcd:http://h:1,", "empty"),
            ("etcd:http://h:1/v3", "scheme://host:port"),
            ("etcd:http://:1", "no host"),
            ("etcd:http://h:port", "bad endpoint"),
        ]:
            with self.assertRaises(ValueError) as raised:
                parseCoordinator(value)
            self.assertIn(words, str(raised.exception))
            self.assertIn(value, str(raised.exception))

    def test_prefixEnd(self) -> None:
        """
        The end of a prefix range is the prefix with its last byte raised,
        trailing 0xff dropped.
        """
        self.assertEqual(prefixEnd(b"/qha/a/"), b"/qha/a0")
        self.assertEqual(prefixEnd(b"a\xff"), b"b")
        self.assertEqual(prefixEnd(b"\xff"), b"\0")
