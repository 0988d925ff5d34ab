"""
Tests for L{qha_bench.pubalone}: the in-process measurement of publishing
alone, run small.
"""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout

from twisted.trial.unittest import SynchronousTestCase

from qha.changes.events import ENQUEUED
from qha_bench import pubalone


class PubaloneTests(SynchronousTestCase):
    """
    Each variant confirms every window (the measurement checks it), and
    the one without events sends boxes that carry none.
    """

    def test_variants(self) -> None:
        """
        C{--without-events} adds a third variant; every figure is a
        positive time a message.
        """
        out = io.StringIO()
        with redirect_stdout(out):
            pubalone.main(["--windows", "3", "--window", "10", "--rounds", "1", "--without-events", "--json"])
        figures = json.loads(out.getvalue())
        self.assertEqual(
            sorted(figures), ["ratio", "replicated", "standalone", "without-events"]
        )
        for name in ("replicated", "without-events"):
            self.assertEqual(sorted(figures[name]), ["answer", "box", "read", "total"])
            self.assertGreater(figures[name]["total"], 0)

    def test_withoutEvents(self) -> None:
        """
        Without events, the windows' boxes carry no enqueue event; with
        them, each carries its window's.
        """
        sent: list[bytes] = []

        class Recording(pubalone._FakeBackup):
            @pubalone.Events.responder
            def recorded(self, epoch: int, seq: int, events: bytes, **kw: object) -> dict[str, object]:
                sent.append(events)
                self.boxes += 1
                return {}

        self.patch(pubalone, "_FakeBackup", Recording)
        pubalone.replicated(2, 5, 100, events=False)
        enqueue = ENQUEUED + b"\x00\x04perf"
        # The last two boxes are the two windows' (after the declarations).
        self.assertEqual([enqueue in box for box in sent[-2:]], [False, False])
        del sent[:]
        pubalone.replicated(2, 5, 100)
        self.assertEqual([box.count(enqueue) for box in sent[-2:]], [5, 5])
