"""
Tests for L{qha_bench.topicbench}: it runs, and says what it measured.
"""

from __future__ import annotations

import io
from contextlib import redirect_stdout

from twisted.trial.unittest import SynchronousTestCase

from qha_bench import topicbench


class TopicBenchTests(SynchronousTestCase):
    """
    The topic routing benchmark, run small.
    """

    def test_runs(self) -> None:
        """
        One line per binding count, with routes per second for the trie and
        the old matcher.
        """
        out = io.StringIO()
        with redirect_stdout(out):
            topicbench.main(["--bindings", "3", "30", "--messages", "20", "--reference"])
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        self.assertIn("30 bindings: trie", lines[1])
        self.assertIn("old matcher", lines[1])
