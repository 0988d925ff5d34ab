"""
Tests for L{qha_bench.cycles}: it runs against a broker of this checkout and
finds no cyclic garbage left by client connections, however they leave.
"""

from __future__ import annotations

import io
import sys
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from qha_bench import cycles


class CyclesTests(TestCase):
    """
    The measurement, run small: a broker on a loopback port in this
    process, the clients in a child process.
    """

    timeout = 120

    def test_noCyclesPerConnection(self) -> None:
        """
        Connections that close cleanly, drop or reset, with the broker's
        heartbeat, leave no unreachable objects behind (a connection's
        heartbeat loop no longer keeps it in a cycle).
        """

        def check(results: list[dict[str, Any]]) -> None:
            self.assertEqual(sorted(r["mode"] for r in results), sorted(cycles.MODES))
            for result in results:
                self.assertEqual(result["connections"], 3)
                self.assertEqual(result["perConnection"], 0, result)

        return defer.ensureDeferred(cycles.measure(reactor, 3, 1)).addCallback(check)  # type: ignore[return-value]


class OptionsTests(SynchronousTestCase):
    """
    The command line.
    """

    def test_connectionsAtLeastOne(self) -> None:
        """
        C{--connections 0} is refused: there would be nothing to divide by.
        """
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        self.assertRaises(SystemExit, cycles.main, ["--connections", "0"])
        self.assertIn("--connections must be at least 1", stderr.getvalue())
