"""
The garbage collector's policy for a broker: what lives long is set aside.

A broker's heap is mostly its queues' messages, each a few tracked objects
that live until consumed. CPython's cyclic collector scans every tracked
object in each full collection, and runs one whenever the survivors grew by
a quarter: a backlog of a million messages costs a full scan of two
million objects (about 240 ms, the broker frozen meanwhile), repeated as
the backlog grows, and about 5 scans of every message in all.

L{CollectorPolicy} moves the survivors of each full collection to the
permanent generation (C{gc.freeze}), where later collections do not look:
each object is scanned by a full collection at most about once, and the
longest collection no longer grows with the backlog (1M messages
published into one queue in-process: 1.60 against 2.30 us a message, the
longest collection 14 against 209 ms).

What it costs: a cycle of objects that were set aside and then dropped is
not freed until they are looked at again (objects without cycles, such as
messages, are freed as ever when the last reference goes). The broker makes
few such cycles: a client connection leaves none, whether it closes, drops
or is reset (C{python -m qha_bench.cycles --connections 200 --rounds 3}
printed 0.00 unreachable objects per connection in every mode and round;
12.00 before a connection let go of its heartbeat loop when it ended), and
every C{reclaimInterval}
the policy looks again at everything set aside, if that scan is short
(at most C{reclaimLimit} objects); a larger heap is not scanned, as the
stall it would cost (seconds for ten million objects) may outlast the
primary's lease and heartbeats, and what is left is far smaller than the
heap.
"""

from __future__ import annotations

import gc
import time
from typing import Any, Callable, Protocol

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger


class Collector(Protocol):
    """
    The part of the C{gc} module the policy uses.
    """

    callbacks: list[Callable[[str, dict[str, Any]], None]]

    def freeze(self) -> None: ...

    def unfreeze(self) -> None: ...

    def collect(self, generation: int = 2) -> int: ...

    def get_freeze_count(self) -> int: ...


class CollectorPolicy(Service):
    """
    Sets aside what survives a full collection, and looks at it again now
    and then while it is small enough (see the module's docstring).

    @ivar frozen: how many full collections were followed by a freeze.
    @ivar reclaimed: how many times what was set aside was looked at again.
    @ivar skipped: how many of those were skipped as too large.
    """

    log = Logger()
    reclaimInterval = 3600.0
    reclaimLimit = 2_000_000

    def __init__(
        self,
        clock: IReactorTime,
        collector: Collector = gc,  # type: ignore[assignment]
        monotonic: Callable[[], float] = time.monotonic,
        size: Callable[[], int] | None = None,
    ) -> None:
        """
        @param clock: for the reclaim timer.
        @param collector: the C{gc} module, or a fake in tests.
        @param monotonic: for timing a reclaim.
        @param size: about how many objects are set aside, cheaply (the
            broker counts two a message in memory); without it the
            collector counts them, which walks them all (50 ms for two
            million).
        """
        self.clock = clock
        self.collector = collector
        self.monotonic = monotonic
        self.size = size if size is not None else collector.get_freeze_count
        self.frozen = 0
        self.reclaimed = 0
        self.skipped = 0
        self._reclaiming = False
        self._call: IDelayedCall | None = None

    def startService(self) -> None:
        """
        Set aside what lives now (the broker as built, and what the store
        recovered, which recovery made with the collector off), and freeze
        after every full collection from now on.
        """
        super().startService()
        self.collector.freeze()
        self.collector.callbacks.append(self._collected)
        self._schedule()

    def stopService(self) -> None:
        """
        Stop freezing (what is set aside stays so) and cancel the timer.
        """
        super().stopService()
        if self._collected in self.collector.callbacks:
            self.collector.callbacks.remove(self._collected)
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        return None

    def _collected(self, phase: str, info: dict[str, Any]) -> None:
        """
        The collector's callback: after a full collection, set its
        survivors aside.
        """
        if phase == "stop" and info.get("generation") == 2 and not self._reclaiming:
            self.collector.freeze()
            self.frozen += 1

    def _schedule(self) -> None:
        self._call = self.clock.callLater(self.reclaimInterval, self.reclaim)

    def reclaim(self) -> None:
        """
        Look at everything set aside again (one full collection), if it is
        at most C{reclaimLimit} objects, and set the survivors aside again.
        """
        self._call = None
        count = self.size()
        if count > self.reclaimLimit:
            self.skipped += 1
            self.log.debug(
                "not scanning the {count} objects set aside from garbage collection:"
                " the scan would stall the broker",
                count=count,
            )
        else:
            self._reclaiming = True
            started = self.monotonic()
            try:
                self.collector.unfreeze()
                found = self.collector.collect()
                self.collector.freeze()
            finally:
                self._reclaiming = False
            self.reclaimed += 1
            self.log.debug(
                "scanned {count} objects set aside from garbage collection in"
                " {ms:.0f} ms: {found} unreachable",
                count=count,
                ms=(self.monotonic() - started) * 1000,
                found=found,
            )
        if self.running:
            self._schedule()


__all__ = ["CollectorPolicy"]
