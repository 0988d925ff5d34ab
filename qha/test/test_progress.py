"""
Tests for L{qha.progress}: the pace and the numbers of the progress lines of
a store's recovery and of a catch-up.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from qha.progress import PROGRESS_INTERVAL, ProgressPace, percent


class ProgressPaceTests(SynchronousTestCase):
    """
    L{ProgressPace} says a line is due once an interval has passed since
    the last one, counted from the start at first.
    """

    def test_due(self) -> None:
        """
        No line is due before the interval has passed since the start; one
        is at the interval, and the next is counted from when it was due.
        """
        pace = ProgressPace(10.0, 5.0)
        self.assertFalse(pace.due(10.0))
        self.assertFalse(pace.due(14.9))
        self.assertTrue(pace.due(15.0))
        self.assertFalse(pace.due(15.0))
        self.assertFalse(pace.due(19.9))
        self.assertTrue(pace.due(21.0))
        self.assertEqual(pace.loggedAt, 21.0)

    def test_defaultInterval(self) -> None:
        """
        Without an interval the pace is L{PROGRESS_INTERVAL}, 5 seconds as
        doc/operations.md says.
        """
        self.assertEqual(PROGRESS_INTERVAL, 5.0)
        self.assertEqual(ProgressPace(0.0).interval, PROGRESS_INTERVAL)

    def test_numbers(self) -> None:
        """
        The time taken and the rate are counted from the start; at the
        start itself the rate does not divide by zero.
        """
        pace = ProgressPace(100.0)
        self.assertEqual(pace.elapsed(104.0), 4.0)
        self.assertEqual(pace.rate(200, 104.0), 50.0)
        self.assertGreater(pace.rate(1, 100.0), 0.0)

    def test_percent(self) -> None:
        """
        L{percent} is C{done} of C{total} in percent, and 0 of nothing is 0.
        """
        self.assertEqual(percent(256, 1000), 25.6)
        self.assertEqual(percent(0, 0), 0.0)
