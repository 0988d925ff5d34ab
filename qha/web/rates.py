"""
Message rates for the management API's C{message_stats}, from the counters
each queue keeps (L{qha.broker.queue.Queue.published} and C{delivered}).

No timer and no observer: a listing hands the counters it read to
L{MessageRates.rates}, which keeps a few of those readings and answers the
rate since one at least L{MessageRates.window} seconds old (RabbitMQ
samples every 5 seconds too). The first listing after a long quiet answers
the average over the quiet; the status page, which asks every few seconds,
sees current rates.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Mapping

Counts = tuple[int, int]
"""
C{(published, delivered)} of one queue.
"""


@dataclass
class MessageRates:
    """
    Readings of the queues' counters and the rates between them.

    @ivar window: the rate is taken over at least this many seconds.
    @ivar samples: readings, oldest first: (time, counts by queue).
    """

    window: float = 5.0
    samples: deque[tuple[float, dict[str, Counts]]] = field(default_factory=deque)

    def rates(self, now: float, counts: Mapping[str, Counts]) -> dict[str, tuple[float, float]]:
        """
        The publish and deliver rates (per second) of each queue in
        C{counts}, read at C{now}; remembers the reading (at most one a
        second). A queue not in the base reading has rate 0 until the next.
        """
        samples = self.samples
        # The newest reading at least a window old is the base; older
        # ones are no longer needed.
        while len(samples) > 1 and now - samples[1][0] >= self.window:
            samples.popleft()
        base = samples[0] if samples else None
        result: dict[str, tuple[float, float]] = {}
        for key, (published, delivered) in counts.items():
            if base is None or now <= base[0]:
                result[key] = (0.0, 0.0)
                continue
            elapsed = now - base[0]
            before = base[1].get(key, (published, delivered))
            result[key] = (
                max(0, published - before[0]) / elapsed,
                max(0, delivered - before[1]) / elapsed,
            )
        if not samples or now - samples[-1][0] >= 1.0:
            samples.append((now, dict(counts)))
        return result


def messageStats(published: int, delivered: int, rates: tuple[float, float]) -> dict[str, Any]:
    """
    RabbitMQ's C{message_stats}: counts and C{..._details.rate}.
    """
    publishRate, deliverRate = rates
    return {
        "publish": published,
        "publish_details": {"rate": publishRate},
        "deliver_get": delivered,
        "deliver_get_details": {"rate": deliverRate},
    }


__all__ = ["MessageRates", "messageStats"]
