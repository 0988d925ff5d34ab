"""
Walking a live queue's entries in id order, a bounded step at a time.

A backup's catch-up (L{qha.ha.primary.ReplicationSource}) and the store's
compaction (L{qha.store.journal.Store}) both write a queue's entries in
bounded pieces spread over many reactor turns, while the queue changes
between the pieces. Neither keeps a copy of the queue: each piece takes the
entries after a cursor (an id) from the queue as it is at that moment, so a
message consumed meanwhile is simply not found, and one given back is found
where its id puts it.

A queue keeps its ready entries in id order within each priority level
(L{qha.broker.queue.Queue._insert}) and its held ones by id, so the entries
after a cursor are found by bisection (L{entriesAfter}); those of a paged
tail are read back a segment at a time (L{Queue.segmentEntries}). But a level is a
C{deque}, whose items are reached by walking its blocks from the nearer
end: a bisection of a deque of a million entries, and the slice after it,
cost a walk to the middle each time, and a catch-up that walks a whole
queue that way does quadratic work (61% of a primary's CPU when it was
measured catching a backup up on a million messages). L{CopiedWalk}
copies the references once instead, and learns from the queue's events
which of them left meanwhile. A queue with a paged tail when the walk starts
is walked with L{entriesAfter} instead: its tail is not in memory to be
copied (and its head, which the memory budget bounds, is short).
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from itertools import chain, islice
from typing import Iterable, Iterator
from ..broker.queue import Entry, Queue


def _entryId(entry: Entry) -> int:
    return entry.id


def entrySize(entry: Entry) -> int:
    """
    About the bytes C{entry} takes as an enqueue event: its body, header
    and addressing, and the event's fixed fields (a paged body is not
    read back to be counted).
    """
    message = entry.message
    return message.size + len(message.header) + len(message.addressing) + 40


def entriesAfter(
    queue: Queue, after: int, last: int, count: int, size: int
) -> tuple[list[Entry], int, bool]:
    """
    The next entries of C{queue} (ready or held) with C{after < id <= last},
    in id order: at most C{count} of them, and no more than C{size} bytes
    (by L{entrySize}) unless the first alone is larger.

    The work is that of the entries returned plus a bisection per priority
    level, and a look at each held entry: never a walk of the queue.

    @return: the entries, the id up to which every entry of the queue is
        among them (the next cursor), and whether that is C{last} (the
        walk is done).
    """
    count = max(count, 1)
    candidates: list[Entry] = []
    cut = False
    for level in queue.levels:
        if not level or level[-1].id <= after or level[0].id > last:
            continue
        start = 0 if level[0].id > after else bisect_right(level, after, key=_entryId)
        taken = [entry for entry in islice(level, start, start + count) if entry.id <= last]
        if len(taken) == count and start + count < len(level) and level[start + count].id <= last:
            cut = True
        candidates.extend(taken)
    if queue.hasTail:
        # Entries of a paged tail, read back as copies (it stays paged).
        paged, more = queue.segmentEntries(after, last, count)
        cut = cut or more
        candidates.extend(paged)
    held = [entry for id, entry in queue.held.items() if after < id <= last]
    if len(held) > count:
        held.sort(key=_entryId)
        del held[count:]
        cut = True
    candidates.extend(held)
    candidates.sort(key=_entryId)
    chosen, stopped, _ = _select(candidates, count, size, _NONE_GONE, after)
    if stopped is None and not cut:
        return chosen, last, True
    return chosen, chosen[-1].id, False


_NONE_GONE: set[int] = set()
"""
No entry passed over (L{entriesAfter} finds only the entries there are).
"""


def _select(
    entries: Iterable[Entry], count: int, size: int, gone: set[int], reached: int
) -> tuple[list[Entry], Entry | None, int]:
    """
    Take C{entries} in their order: at most C{count} of them (at least
    1), and no more than C{size} bytes (by L{entrySize}) unless the first
    alone is larger, passing over (and forgetting) those whose ids are in
    C{gone}. The one selection of a piece of a walk, live
    (L{entriesAfter}) or copied (L{CopiedWalk.take}).

    @param reached: the id up to which every entry was taken before.
    @return: the entries taken, the first entry not taken (L{None}: the
        entries ran out), and the id up to which every entry has now been
        taken or passed over.
    """
    chosen: list[Entry] = []
    total = 0
    stopped: Entry | None = None
    for entry in entries:
        if gone:
            id = entry.id
            if id in gone:
                gone.discard(id)
                reached = id
                continue
        if len(chosen) >= count:
            stopped = entry
            break
        cost = entrySize(entry)
        if chosen and total + cost > size:
            stopped = entry
            break
        chosen.append(entry)
        total += cost
    if chosen:
        # Ids increase: the last taken is past those passed over before it.
        reached = max(reached, chosen[-1].id)
    return chosen, stopped, reached


def _copies(queue: Queue, after: int, last: int, ready: bool = True) -> Iterator[Entry]:
    """
    The entries of C{queue} with C{after < id <= last} as they are now, in
    id order: references to its ready ones (if C{ready}) and its held
    ones, copied (the levels' copies are merged lazily).
    """
    lists: list[list[Entry]] = []
    if ready:
        for level in queue.levels:
            if not level or level[-1].id <= after or level[0].id > last:
                continue
            if level[0].id > after and level[-1].id <= last:
                # The whole level (a walk's start): one C-level copy.
                lists.append(list(level))
            else:
                lists.append([entry for entry in level if after < entry.id <= last])
    held = [entry for id, entry in queue.held.items() if after < id <= last]
    if held:
        held.sort(key=_entryId)
        lists.append(held)
    if not lists:
        return iter(())
    if len(lists) == 1:
        return iter(lists[0])
    return heapq.merge(*lists, key=_entryId)


class CopiedWalk:
    """
    A walk of one queue's entries up to id C{last} in id order, a bounded
    piece at a time, over references copied once when it starts (one pass
    over the queue), rather than a bisection of the live queue for each
    piece (see the module's docstring).

    The queue changes between the pieces, and the walker tells this walk
    what it must know of that: an entry not reached yet that left the queue
    (L{gone}; it is then passed over), or the queue purged (L{purged}: the
    ready entries not reached are passed over). Everything else an entry
    may do keeps the same L{Entry} object (taken by a consumer, given
    back, marked redelivered, its body paged), and the walk reads the
    entry as it is when the piece is made. Entries enqueued after the walk
    started have ids after C{last} and are never part of it.

    @ivar after: every entry up to this id has been taken (or passed over).
    @ivar last: the walk ends at this id.
    """

    __slots__ = ("queue", "after", "last", "_entries", "_next", "_gone", "_live")

    def __init__(self, queue: Queue, last: int) -> None:
        """
        @param queue: the queue walked, whose entries are copied now.
        @param last: the highest id of the walk (see L{lastId}).
        """
        self.queue = queue
        self.after = 0
        self.last = last
        # A paged tail (segments on disk) cannot be copied: such a queue is
        # walked live, by bisection and segment reads (entriesAfter). Only a
        # tail there now matters: entries paged later have ids after last.
        self._live = queue.hasTail
        self._entries = iter(()) if self._live else _copies(queue, 0, last)
        self._next: Entry | None = None
        self._gone: set[int] = set()

    def gone(self, entries: Iterable[Entry]) -> None:
        """
        C{entries} left the queue: those not reached yet are passed over.
        """
        if self._live:
            # The live queue is read at each piece: what left is not found.
            return
        after = self.after
        last = self.last
        self._gone.update(entry.id for entry in entries if after < entry.id <= last)

    def purged(self) -> None:
        """
        The queue's ready entries were dropped: the walk goes on over the
        held ones not reached yet, copied again now.
        """
        if self._live:
            return
        self._next = None
        self._entries = _copies(self.queue, self.after, self.last, ready=False)

    def take(self, count: int, size: int) -> tuple[list[Entry], int, bool]:
        """
        The next entries: at most C{count} of them, and no more than
        C{size} bytes (by L{entrySize}) unless the first alone is larger.
        The work is that of the entries returned (and of those passed
        over).

        @return: the entries, the id up to which every entry has been
            taken (the next cursor, also kept as L{after}), and whether the
            walk is done.
        """
        if self._live:
            chosen, self.after, done = entriesAfter(self.queue, self.after, self.last, count, size)
            return chosen, self.after, done
        entries: Iterator[Entry] = self._entries
        pending = self._next
        if pending is not None:
            # The entry the last piece stopped at comes first.
            entries = chain((pending,), entries)
        chosen, self._next, self.after = _select(entries, max(count, 1), size, self._gone, self.after)
        if self._next is None:
            self.after = self.last
            self._gone = set()
            return chosen, self.last, True
        return chosen, self.after, False


def lastId(queue: Queue) -> int:
    """
    The highest id C{queue} has given an entry so far: a walk that starts
    now ends there, and every entry enqueued later has a higher id.
    """
    return queue.nextId - 1


def sizeOf(queue: Queue) -> tuple[int, int]:
    """
    The entries C{queue} holds (ready and held) and about their bytes as
    enqueue events, without a walk: a queue with policies counts its ready
    bytes; a plain one does not, and its first and last entries stand for
    the others.
    """
    ready = queue.messageCount
    count = ready + len(queue.held)
    if not count:
        return 0, 0
    if not queue.plain:
        readyBytes = queue.readyBytes
    else:
        first = queue.levels[0]
        samples = [first[0], first[-1]] if first else []
        readyBytes = sum(entrySize(entry) for entry in samples) * ready // max(len(samples), 1)
    average = readyBytes // ready if ready else 0
    return count, readyBytes + len(queue.held) * average + count * 64


__all__ = ["CopiedWalk", "entriesAfter", "entrySize", "lastId", "sizeOf"]
