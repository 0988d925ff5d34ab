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

A plain FIFO queue, durable or not (no priorities, no last-value key, no
queue TTL; see L{Pager.segments}), pages its metadata too: past its
budget, its new messages go, whole (id, delivery state, addressing, content
header and body), into I{segments} of consecutive messages, each written as
one record (L{encodeSegment}) and kept in memory as one small L{Segment}
(where the record is, how many messages and body bytes, the first and last
id). A paged backlog then costs a few bytes a message in memory instead of
a L{qha.broker.message.PagedMessage} and an entry each.
"""

from __future__ import annotations

import struct
from array import array
from typing import Any, Sequence

from zope.interface import Attribute, Interface

__all__ = [
    "IBodyStore",
    "PageError",
    "Pager",
    "DEFAULT_WINDOW",
    "DEFAULT_WINDOW_BYTES",
    "SEGMENT_MESSAGES",
    "SEGMENT_BYTES",
    "Segment",
    "encodeSegment",
    "decodeSegment",
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


SEGMENT_MESSAGES = 4096
"""
The most messages one segment holds (see L{Segment}).
"""

SEGMENT_BYTES = 1024 * 1024
"""
The body bytes past which a segment is written (it holds at least one
message).
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
    @ivar segments: whether the queues that can (plain FIFO queues,
        durable or not) page whole messages in segments (L{Segment})
        rather than bodies one by one.
    @ivar segmentMessages: the most messages in one segment.
    @ivar segmentBytes: the body bytes past which a segment is written.
    """

    def __init__(
        self,
        bodies: IBodyStore,
        budget: int = 0,
        window: int = DEFAULT_WINDOW,
        windowBytes: int = DEFAULT_WINDOW_BYTES,
        segments: bool = False,
        segmentMessages: int = SEGMENT_MESSAGES,
        segmentBytes: int = SEGMENT_BYTES,
    ) -> None:
        self.bodies = bodies
        self.budget = budget
        self.window = window
        self.windowBytes = windowBytes
        self.segments = segments
        self.segmentMessages = segmentMessages
        self.segmentBytes = segmentBytes

    def __repr__(self) -> str:
        return f"<Pager budget={self.budget} window={self.window} paged={self.bodies.records}>"


# A segment record: a version byte and the message count, then for each
# message its id, flags, expiry (NaN: none) and the lengths of its
# addressing, header and body, followed by those bytes (the addressing or
# header left out when the flags say it is the previous message's).
_SEGMENT_HEAD = struct.Struct(">BI")
_SEGMENT_ENTRY = struct.Struct(">QBdIII")
_SEGMENT_VERSION = 1
_REDELIVERED = 0x01
_SAME_ADDRESSING = 0x02
_SAME_HEADER = 0x04
_NO_EXPIRY = float("nan")


class Segment:
    """
    Consecutive messages of one queue, paged out whole as one record of an
    L{IBodyStore}: all that stays in memory of them.

    @ivar location: the record's location in the store.
    @ivar size: the record's size in bytes.
    @ivar count: how many messages it holds.
    @ivar bodyBytes: their body bytes (what the queue's byte counts and
        length limits count).
    @ivar firstId: the id of the first.
    @ivar lastId: the id of the last.
    @ivar ids: every id, in order, when they are not C{firstId} to
        C{lastId} one after the other (a replica's ids may skip); else
        L{None}.
    @ivar expiring: whether any of them has an expiry time.
    """

    __slots__ = ("location", "size", "count", "bodyBytes", "firstId", "lastId", "ids", "expiring")

    def __init__(
        self,
        location: int,
        size: int,
        count: int,
        bodyBytes: int,
        firstId: int,
        lastId: int,
        ids: "array[int] | None" = None,
        expiring: bool = False,
    ) -> None:
        self.location = location
        self.size = size
        self.count = count
        self.bodyBytes = bodyBytes
        self.firstId = firstId
        self.lastId = lastId
        self.ids = ids
        self.expiring = expiring

    def __repr__(self) -> str:
        return (
            f"<Segment ids {self.firstId}-{self.lastId} count={self.count}"
            f" bytes={self.bodyBytes} location={self.location}>"
        )

    def idList(self) -> Sequence[int]:
        """
        The ids of its messages, in order.
        """
        if self.ids is not None:
            return self.ids
        return range(self.firstId, self.lastId + 1)


def encodeSegment(entries: Sequence[Any]) -> tuple[bytes, int, "array[int] | None", bool]:
    """
    The record of a segment of C{entries} (L{qha.broker.queue.Entry}
    objects with their bodies in memory, in id order).

    @return: the record, the body bytes, the ids if they are not
        consecutive (else L{None}), and whether any entry expires.
    """
    parts = [_SEGMENT_HEAD.pack(_SEGMENT_VERSION, len(entries))]
    append = parts.append
    pack = _SEGMENT_ENTRY.pack
    lastAddressing = lastHeader = None
    total = 0
    expiring = False
    first = entries[0].id
    consecutive = entries[-1].id - first == len(entries) - 1
    for entry in entries:
        message = entry.message
        addressing = message.addressing
        header = message.header
        body = message.body
        flags = _REDELIVERED if entry.redelivered else 0
        expiresAt = entry.expiresAt
        if expiresAt is None:
            expiresAt = _NO_EXPIRY
        else:
            expiring = True
        sameAddressing = addressing == lastAddressing
        sameHeader = header == lastHeader
        if sameAddressing:
            flags |= _SAME_ADDRESSING
        if sameHeader:
            flags |= _SAME_HEADER
        append(pack(entry.id, flags, expiresAt, len(addressing), len(header), len(body)))
        if not sameAddressing:
            append(addressing)
            lastAddressing = addressing
        if not sameHeader:
            append(header)
            lastHeader = header
        append(body)
        total += len(body)
    ids = None if consecutive else array("Q", [entry.id for entry in entries])
    return b"".join(parts), total, ids, expiring


def decodeSegment(
    data: bytes,
) -> list[tuple[int, bool, float | None, bytes, bytes, bytes]]:
    """
    The messages of a segment record, in order: each one's id, whether it
    was delivered before, its expiry time (or L{None}), addressing, header
    and body. Consecutive messages with the same addressing or header share
    one bytes object.

    @raise PageError: if the record is not a segment this version wrote.
    """
    try:
        version, count = _SEGMENT_HEAD.unpack_from(data, 0)
        if version != _SEGMENT_VERSION:
            raise PageError(f"a paged segment has version {version}, not {_SEGMENT_VERSION}")
        view = memoryview(data)
        offset = _SEGMENT_HEAD.size
        unpack = _SEGMENT_ENTRY.unpack_from
        entrySize = _SEGMENT_ENTRY.size
        addressing = header = b""
        result = []
        for _ in range(count):
            id, flags, expiresAt, aLength, hLength, bLength = unpack(data, offset)
            offset += entrySize
            if not flags & _SAME_ADDRESSING:
                addressing = bytes(view[offset : offset + aLength])
                offset += aLength
            if not flags & _SAME_HEADER:
                header = bytes(view[offset : offset + hLength])
                offset += hLength
            body = bytes(view[offset : offset + bLength])
            offset += bLength
            result.append(
                (
                    id,
                    bool(flags & _REDELIVERED),
                    None if expiresAt != expiresAt else expiresAt,
                    addressing,
                    header,
                    body,
                )
            )
        view.release()
    except struct.error as error:
        raise PageError(f"a paged segment is cut short: {error}") from None
    if offset != len(data):
        raise PageError(f"a paged segment has {len(data) - offset} bytes past its last message")
    return result
