"""
Tests for L{qha.ha.etcd}: the contract of L{IEtcd}
(L{qha.test.support.EtcdContractMixin}) run against the in-memory
L{FakeEtcd}, and the parsing of C{--ha-coordinator}. The same contract runs
against a real etcd in L{qha.test.integration.test_etcd}, so that the fake
the coordinator's unit tests rely on behaves as etcd does.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from qha.ha.etcd import EtcdUnavailable, IEtcd, parseCoordinator, prefixEnd
from qha.test.support import EtcdContractMixin
from qha.testing import FakeEtcd


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
