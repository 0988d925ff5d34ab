"""
The pace and the numbers of a long task's progress lines: a store's recovery
(L{qha.store.journal.RecoveryProgress}) and a backup's catch-up, on both
sides (L{qha.ha.primary.ReplicationSource}, L{qha.ha.catchup.CatchUpReceiver}).

Each of them logs a line at most every L{PROGRESS_INTERVAL} seconds, counted
from the last line (the first from the task's start), so that a long task is
seen to move and a short one logs none. L{ProgressPace} says when a line is
due and computes the time taken, the rate and the percentage the same way for
all of them; the lines' words stay with the code that logs them.
"""

from __future__ import annotations

__all__ = ["PROGRESS_INTERVAL", "ProgressPace", "percent"]

PROGRESS_INTERVAL = 5.0
"""
Seconds between two progress lines of a long task.
"""


def percent(done: int, total: int) -> float:
    """
    C{done} of C{total} in percent (0 of 0 is 0, not a division by zero).
    """
    return 100.0 * done / max(total, 1)


class ProgressPace:
    """
    When a progress line is due, and the numbers that go in it, on the
    caller's clock (any function's seconds: a reactor's, C{time.monotonic}).

    @ivar started: when the task started.
    @ivar loggedAt: when the last line was due (at first, L{started}).
    @ivar interval: seconds between two lines.
    """

    def __init__(self, started: float, interval: float = PROGRESS_INTERVAL) -> None:
        """
        @param started: when the task started, on the caller's clock.
        @param interval: seconds between two lines.
        """
        self.started = started
        self.loggedAt = started
        self.interval = interval

    def due(self, now: float) -> bool:
        """
        Whether a line is due at C{now}: L{interval} seconds or more passed
        since the last one (or the start). If so, the next one is counted
        from C{now}.
        """
        if now - self.loggedAt < self.interval:
            return False
        self.loggedAt = now
        return True

    def elapsed(self, now: float) -> float:
        """
        Seconds from the start to C{now}.
        """
        return now - self.started

    def rate(self, done: int, now: float) -> float:
        """
        C{done} things per second from the start to C{now} (never a
        division by zero).
        """
        return done / max(now - self.started, 1e-9)
