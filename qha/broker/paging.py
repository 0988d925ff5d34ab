"""
Paging message bodies out of memory: the seam between the broker model,
which decides what to page and when, and the place bodies go.

A queue whose ready bodies pass a budget (its own C{x-max-in-memory-length}
or C{x-max-in-memory-bytes}, C{x-queue-mode=lazy}, or the broker-wide
C{--memory-budget}) writes the bodies of new messages to an L{IBodyStore}
and keeps only what it needs to route and order them (addressing, content
header, size, position, delivery state: a L{qha.broker.message.PagedMessage}
in the entry). It reads them back, a bounded window at a time, ahead of its
consumers. This is RabbitMQ's classic queue v2 idea; the model does no I/O
of its own: the file implementation is L{qha.store.paging}.
"""

from __future__ import annotations

from typing import Sequence

from zope.interface import Attribute, Interface

__all__ = [
    "IBodyStore",
    "PageError",
    "Pager",
    "DEFAULT_WINDOW",
    "DEFAULT_WINDOW_BYTES",
]

DEFAULT_WINDOW = 256
"""
How many paged entries a queue reads back at once, ahead of its consumers,
when the next one to deliver is paged; also how many ready entries a queue
keeps in memory before the broker-wide budget pages its new ones.
"""

DEFAULT_WINDOW_BYTES = 4 * 1024 * 1024
"""
The most body bytes one read-ahead brings back (at least one message).
"""


class PageError(Exception):
    """
    A paged body cannot be read back: its page file is missing, cut short
    or damaged. The message names the file and the byte.
    """


class IBodyStore(Interface):
    """
    Where paged message bodies go, and come back from.

    Bodies are written in the order queues page them and identified by an
    integer location; each is read back (or dropped) once and then freed.
    Nothing here survives a restart: persistent messages are kept by the
    journal, and a broker that starts discards what was paged before.
    """

    records = Attribute("How many bodies are paged out now (written, not freed).")
    size = Attribute("The body bytes paged out now.")

    def write(body: bytes) -> int:
        """
        Page C{body} out.

        @return: its location, for L{read} and L{free}.
        """

    def read(pages: Sequence[tuple[int, int]]) -> list[bytes]:
        """
        Read bodies back, in one pass where they lie together.

        @param pages: each body's location and size in bytes.
        @return: the bodies, in the order of C{pages}.
        @raise PageError: if one cannot be read back whole and intact.
        """

    def free(location: int, size: int) -> None:
        """
        The body at C{location}, of C{size} bytes, is no longer needed
        (read back, or its message is gone); its space may be reclaimed.
        """


class Pager:
    """
    The broker-wide paging settings the queues share, and the body store.

    @ivar bodies: where paged bodies go.
    @ivar budget: page the new messages of a queue with a backlog while the
        broker holds more than this many bytes (the memory the high
        watermark counts); 0: no broker-wide budget (queues still page by
        their own arguments).
    @ivar window: how many entries one read-ahead brings back, and how many
        ready entries a queue keeps in memory under the broker-wide budget.
    @ivar windowBytes: the most body bytes one read-ahead brings back.
    """

    def __init__(
        self,
        bodies: IBodyStore,
        budget: int = 0,
        window: int = DEFAULT_WINDOW,
        windowBytes: int = DEFAULT_WINDOW_BYTES,
    ) -> None:
        self.bodies = bodies
        self.budget = budget
        self.window = window
        self.windowBytes = windowBytes

    def __repr__(self) -> str:
        return f"<Pager budget={self.budget} window={self.window} paged={self.bodies.records}>"
