"""
Tests for L{qha_bench.collectorbench}: it runs, and says what it measured.
"""

from __future__ import annotations

import gc

from twisted.trial.unittest import SynchronousTestCase

from qha_bench import collectorbench


class CollectorBenchTests(SynchronousTestCase):
    """
    The collector benchmark's measurement, run small in this process.
    """

    def test_measure(self) -> None:
        """
        Each mode publishes the messages and reports the collections' cost;
        the policy's mode leaves the collector's callbacks as they were.
        """
        before = list(gc.callbacks)
        self.addCleanup(gc.unfreeze)
        for mode in collectorbench.MODES:
            result = collectorbench.measure(2000, mode)
            self.assertEqual((result["mode"], result["messages"]), (mode, 2000))
            self.assertGreater(result["usPerMessage"], 0)
            self.assertGreaterEqual(result["collectingMs"], result["longestMs"])
        self.assertEqual(gc.callbacks, before)
