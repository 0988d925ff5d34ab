"""
The contract of L{qha.ha.etcd.IEtcd} (L{EtcdContractMixin}) against a real
etcd started for each test, through L{EtcdClient}: so that the in-memory
L{qha.testing.FakeEtcd} that the unit tests (L{qha.test.test_etcd}) run the
same contract on behaves as etcd does.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor as globalReactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from qha.ha.etcd import EtcdClient, EtcdUnavailable, IEtcd
from qha.test.integration.etcdprocess import EtcdProcess, freePort
from qha.test.support import EtcdContractMixin, asDeferred

reactor: Any = globalReactor


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
