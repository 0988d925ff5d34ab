"""
The backup's side of a batched catch-up: the numbers of each L{CatchUp}
batch checked before they are used, and the progress shown by
C{qha-admin query} and C{/api/ha} and logged during a long catch-up.

The batches themselves are applied by the link in sequence with the live
boxes between them, a bounded step per reactor turn, written to the store
and answered once all of each is on disk; see
L{qha.ha.link.BackupLink.receivedBatch}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ..progress import PROGRESS_INTERVAL, ProgressPace
from .commands import MAX_BATCH_BYTES, MAX_BATCH_MESSAGES, MAX_CATCHUP_MESSAGES, MalformedBox


class CatchUpReceiver:
    """
    What a backup has received of its catch-up, and the checks of each
    batch's numbers.

    @ivar total: the messages the primary announced at most (L{None}
        before the first batch).
    @ivar messages: messages applied from batches.
    @ivar bytes: bytes of batches applied.
    @ivar batches: batches applied.
    @ivar done: whether the last batch was applied.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, primary: str) -> None:
        """
        @param clock: for the progress log's pace and the time taken.
        @param primary: the primary's address, for the log.
        """
        self.clock = clock
        self.primary = primary
        self.total: int | None = None
        self.messages = 0
        self.bytes = 0
        self.batches = 0
        self.done = False
        self.started: float | None = None
        self.finished: float | None = None
        self._pace = ProgressPace(0.0, PROGRESS_INTERVAL)

    def check(self, seq: int, size: int, messages: int, total: int, last: bool) -> None:
        """
        Check a batch's numbers before anything of it is applied: its size
        (at most L{MAX_BATCH_BYTES} unless it carries one message alone),
        its message count (at most L{MAX_BATCH_MESSAGES}), the total (the
        same in every batch, and never passed by the messages received),
        and that no batch comes after the last.

        @raise MalformedBox: saying which number is out of bounds.
        """
        where = f"catch-up batch {seq} refused"
        if self.done:
            raise MalformedBox(f"{where}: the catch-up ended with an earlier batch")
        if not 0 <= messages <= MAX_BATCH_MESSAGES:
            raise MalformedBox(f"{where}: {messages} messages (at most {MAX_BATCH_MESSAGES})")
        if size > MAX_BATCH_BYTES and messages > 1:
            raise MalformedBox(
                f"{where}: {size} bytes of events (at most {MAX_BATCH_BYTES} unless one"
                " message alone)"
            )
        if not 0 <= total <= MAX_CATCHUP_MESSAGES:
            raise MalformedBox(f"{where}: a total of {total} messages is out of bounds")
        if self.total is not None and total != self.total:
            raise MalformedBox(
                f"{where}: its total of {total} messages is not the catch-up's {self.total}"
            )
        if self.messages + messages > total:
            raise MalformedBox(
                f"{where}: {self.messages + messages} messages would pass the total of {total}"
            )

    def applied(self, seq: int, size: int, messages: int, enqueues: int, total: int, last: bool, caughtUp: bool) -> None:
        """
        Batch C{seq} was applied, with C{enqueues} enqueue events found in
        it; count it, and log the progress every L{PROGRESS_INTERVAL}.

        @param caughtUp: whether the caught-up marker was among its events.
        @raise MalformedBox: if the batch did not carry what it said (the
            link then catches up again).
        """
        if enqueues != messages:
            raise MalformedBox(
                f"catch-up batch {seq} refused: it said {messages} messages and carried {enqueues}"
            )
        if last != caughtUp:
            raise MalformedBox(
                f"catch-up batch {seq} refused: {'no' if last else 'a'} caught-up marker in"
                f" {'the last' if last else 'a batch before the last'}"
            )
        now = self.clock.seconds()
        if self.started is None:
            self.started = now
            self._pace = ProgressPace(now, PROGRESS_INTERVAL)
            self.log.info(
                "catching up with the primary at {primary}: at most {total} messages in batches",
                primary=self.primary,
                total=total,
            )
        self.total = total
        self.messages += messages
        self.bytes += size
        self.batches += 1
        # The fields both lines name: what came so far, and the time taken.
        sofar = {
            "primary": self.primary,
            "messages": self.messages,
            "bytes": self.bytes,
            "batches": self.batches,
            "seconds": self._pace.elapsed(now),
        }
        if last:
            self.done = True
            self.finished = now
            self.log.info(
                "catch-up from {primary} applied: {messages} messages ({bytes} bytes) in"
                " {batches} batches, {seconds:.1f}s",
                **sofar,
            )
        elif self._pace.due(now):
            self.log.info(
                "catching up with the primary at {primary}: {messages} of at most {total}"
                " messages applied ({bytes} bytes, {batches} batches), {seconds:.1f}s",
                total=total,
                **sofar,
            )

    def describe(self) -> dict[str, Any] | None:
        """
        The progress for C{qha-admin query} and C{/api/ha}, or L{None} if
        no batch came (a catch-up small enough for one box).
        """
        if self.started is None:
            return None
        end = self.finished if self.finished is not None else self.clock.seconds()
        return {
            "messages": self.total,
            "receivedMessages": self.messages,
            "receivedBytes": self.bytes,
            "batches": self.batches,
            "done": self.done,
            "seconds": round(end - self.started, 3),
        }


__all__ = ["CatchUpReceiver", "PROGRESS_INTERVAL"]
