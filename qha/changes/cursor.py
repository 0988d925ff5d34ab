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
after a cursor are found by bisection, with no walk from the start; those of
a paged tail are read back a segment at a time (L{Queue.segmentEntries}).
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import islice
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
    chosen: list[Entry] = []
    total = 0
    for entry in candidates:
        if len(chosen) >= count:
            break
        cost = entrySize(entry)
        if chosen and total + cost > size:
            break
        chosen.append(entry)
        total += cost
    if len(chosen) == len(candidates) and not cut:
        return chosen, last, True
    return chosen, chosen[-1].id, False


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


__all__ = ["entriesAfter", "entrySize", "lastId", "sizeOf"]
