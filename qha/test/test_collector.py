"""
Tests for L{qha.collector}: what survives a full collection is set aside,
and looked at again now and then while that is cheap.
"""

from __future__ import annotations

import gc
from typing import Any, Callable

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from qha.collector import CollectorPolicy


class FakeCollector:
    """
    The part of the C{gc} module the policy uses, recording its calls.

    @ivar calls: the names of the calls made, in order.
    @ivar count: what C{get_freeze_count} answers.
    """

    def __init__(self) -> None:
        self.callbacks: list[Callable[[str, dict[str, Any]], None]] = []
        self.calls: list[str] = []
        self.count = 0

    def freeze(self) -> None:
        self.calls.append("freeze")

    def unfreeze(self) -> None:
        self.calls.append("unfreeze")

    def collect(self, generation: int = 2) -> int:
        """
        A full collection: the callbacks hear of it, as from C{gc}.
        """
        self.calls.append("collect")
        self.run(2)
        return 3

    def get_freeze_count(self) -> int:
        return self.count

    def run(self, generation: int) -> None:
        """
        Tell the callbacks of a collection of C{generation}.
        """
        for callback in list(self.callbacks):
            callback("start", {"generation": generation})
            callback("stop", {"generation": generation, "collected": 0, "uncollectable": 0})


class CollectorPolicyTests(SynchronousTestCase):
    """
    Tests for L{CollectorPolicy}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.collector = FakeCollector()
        self.policy = CollectorPolicy(self.clock, self.collector)
        self.policy.startService()
        self.addCleanup(self.stop)
        # What lived at the start was set aside.
        self.assertEqual(self.collector.calls, ["freeze"])
        self.collector.calls.clear()

    def stop(self) -> None:
        """
        Stop the policy (if a test did not), leaving no timer.
        """
        if self.policy.running:
            self.policy.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_freezeAfterFullCollection(self) -> None:
        """
        A full collection is followed by a freeze; younger ones are not.
        """
        self.collector.run(0)
        self.collector.run(1)
        self.assertEqual(self.collector.calls, [])
        self.collector.run(2)
        self.assertEqual(self.collector.calls, ["freeze"])
        self.assertEqual(self.policy.frozen, 1)

    def test_stopRemovesCallback(self) -> None:
        """
        Once stopped, the policy no longer listens to the collector, and
        cancels its timer.
        """
        self.policy.stopService()
        self.assertEqual(self.collector.callbacks, [])
        self.collector.run(2)
        self.assertEqual(self.collector.calls, [])

    def test_reclaimSmall(self) -> None:
        """
        Every C{reclaimInterval}, what was set aside is looked at again
        (unfrozen, collected, frozen again) when it is at most
        C{reclaimLimit} objects; the collection it runs is not followed by
        a second freeze.
        """
        self.collector.count = self.policy.reclaimLimit
        self.clock.advance(self.policy.reclaimInterval - 1)
        self.assertEqual(self.collector.calls, [])
        self.clock.advance(1)
        self.assertEqual(self.collector.calls, ["unfreeze", "collect", "freeze"])
        self.assertEqual((self.policy.reclaimed, self.policy.frozen), (1, 0))
        self.clock.advance(self.policy.reclaimInterval)
        self.assertEqual(self.policy.reclaimed, 2)

    def test_reclaimSkippedWhenLarge(self) -> None:
        """
        A frozen heap larger than C{reclaimLimit} is not scanned (the scan
        would stall the broker); the timer goes on.
        """
        self.collector.count = self.policy.reclaimLimit + 1
        self.clock.advance(self.policy.reclaimInterval)
        self.assertEqual(self.collector.calls, [])
        self.assertEqual(self.policy.skipped, 1)
        self.collector.count = 10
        self.clock.advance(self.policy.reclaimInterval)
        self.assertEqual(self.policy.reclaimed, 1)

    def test_realCollector(self) -> None:
        """
        With the real C{gc} module, a full collection leaves its survivors
        frozen, and stopping the policy leaves C{gc.callbacks} as it was.
        """
        policy = CollectorPolicy(self.clock)
        before = list(gc.callbacks)
        policy.startService()
        self.addCleanup(gc.unfreeze)
        try:
            gc.collect()
            self.assertGreater(gc.get_freeze_count(), 0)
            self.assertEqual(policy.frozen, 1)
        finally:
            policy.stopService()
        self.assertEqual(gc.callbacks, before)

    def test_sizeEstimate(self) -> None:
        """
        Given an estimate of the objects set aside, the policy decides on
        it and never counts them (counting walks every frozen object).
        """
        self.policy.stopService()
        self.collector.calls.clear()
        sizes = [CollectorPolicy.reclaimLimit + 1, 5]

        def size() -> int:
            return sizes.pop(0)

        def count() -> int:
            raise AssertionError("counted the frozen objects")

        self.collector.get_freeze_count = count  # type: ignore[method-assign]
        self.policy = CollectorPolicy(self.clock, self.collector, size=size)
        self.policy.startService()
        self.clock.advance(self.policy.reclaimInterval)
        self.assertEqual(self.policy.skipped, 1)
        self.clock.advance(self.policy.reclaimInterval)
        self.assertEqual(self.policy.reclaimed, 1)
        self.assertEqual(self.collector.calls, ["freeze", "unfreeze", "collect", "freeze"])
