"""
The store: a journal of the broker's durable state, written with the same
events the replication stream carries.

What is kept: durable exchanges, durable (non-exclusive) queues, bindings
whose ends are durable (or built in), and persistent (delivery mode 2)
messages on durable queues, with their acknowledgements, acquisitions (so a
message delivered before a crash comes back marked redelivered) and purges.
Transient state is not written and does not survive a restart.

The events of one reactor turn form one record: C{[length][crc32][epoch]
[position][events]}, appended and flushed to disk (fsync) before the
confirms waiting on them complete, so many confirms share one flush. A
record torn by a crash (the last one, cut short or with a bad checksum) was
never confirmed and is dropped on recovery; damage anywhere else is
reported with the file and the byte, and the broker refuses to start on it
unless told to keep a copy and go on (C{--store-recover}).

When the journal has grown well past the state it holds, it is rewritten as
one snapshot record (compaction).

Two implementations of the journal share this store: L{FileJournal} (the
embedded default) and L{MemoryJournal} (for tests and for brokers that want
no disk).
"""

from __future__ import annotations

import gc
import os
import shutil
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol, Sequence

from collections import deque

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from ..amqp.holders import Completion, IConfirmHolder
from ..datadir import makeDirectory, openPrivate
from ..progress import PROGRESS_INTERVAL, ProgressPace, percent
from ..broker.exchange import Binding, Exchange
from ..broker.message import Message
from ..broker.queue import Entry, Queue
from ..broker.vhost import VirtualHost
from ..broker.vhosts import VirtualHosts
from ..amqp.accounts import AccountChange, Accounts
from ..changes.settings import RuntimeSettings
from ..changes import events as ev
from ..changes.cursor import entriesAfter, entrySize, lastId
from ..changes.replay import Replicator
from ..changes.scoped import observe, unobserve

MAGIC = b"QHA-JOURNAL-1\n"
_record = struct.Struct(">II")
_meta = struct.Struct(">qq")


class StoreCorrupt(Exception):
    """
    The store is damaged somewhere other than a torn last record.

    @ivar path: the file.
    @ivar offset: the byte where the damage starts.
    @ivar reason: what is wrong.
    """

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"{path}: {reason} at byte {offset}")
        self.path = path
        self.offset = offset
        self.reason = reason


@dataclass
class Record:
    """
    One record of the journal: the epoch and stream position when it was
    written, and its events.
    """

    epoch: int
    position: int
    events: bytes
    offset: int = 0


def recordParts(epoch: int, position: int, events: Sequence[bytes | memoryview]) -> list[bytes | memoryview]:
    """
    A record whose events are the concatenation of C{events}, as the
    pieces written to the journal one after the other: its length and
    checksum, its epoch and position, then the pieces as they are.

    The store's thread calls this: a record of a catch-up batch is
    megabytes, whose checksum C{zlib.crc32} computes without holding the
    interpreter's lock (so the reactor thread goes on meanwhile), and
    which is never joined into one buffer (each copy of a fresh buffer of
    megabytes is a page fault per 4 KiB).
    """
    meta = _meta.pack(epoch, position)
    crc = zlib.crc32(meta)
    length = len(meta)
    for piece in events:
        crc = zlib.crc32(piece, crc)
        length += len(piece)
    return [_record.pack(length, crc), meta, *events]


def encodeRecord(epoch: int, position: int, events: bytes) -> bytes:
    """
    A record as it is written to the journal.
    """
    return b"".join(recordParts(epoch, position, (events,)))


def scanRecords(data: bytes, path: str, start: int = 0) -> tuple[list[Record], int]:
    """
    The valid records in C{data} from C{start}, and where the valid part
    ends (a torn last record is left out).

    @raise StoreCorrupt: for damage before the last record.
    """
    records: list[Record] = []
    offset = start
    end = len(data)
    while offset < end:
        if end - offset < _record.size:
            break
        length, crc = _record.unpack_from(data, offset)
        bodyStart = offset + _record.size
        bodyEnd = bodyStart + length
        if bodyEnd > end:
            # Cut short by a crash while writing: never confirmed. Unless a
            # whole record follows: then its length field is what is damaged.
            following = _findRecord(data, bodyStart, end)
            if following is not None:
                raise StoreCorrupt(
                    path,
                    offset,
                    f"record {len(records) + 1} claims {length} bytes, past the end of"
                    f" the file, but a whole record follows it at byte {following}",
                )
            break
        body = data[bodyStart:bodyEnd]
        if zlib.crc32(body) != crc or length < _meta.size:
            if bodyEnd == end:
                break
            raise StoreCorrupt(
                path,
                offset,
                f"record {len(records) + 1} fails its checksum ({length} bytes,"
                f" {end - bodyEnd} bytes of records after it)",
            )
        epoch, position = _meta.unpack_from(body)
        records.append(Record(epoch, position, body[_meta.size :], offset))
        offset = bodyEnd
    return records, offset


SEARCH_LIMIT = 4 * 1024 * 1024
"""
How far past a record that seems cut short L{scanRecords} looks for a whole
record (which would mean damage, not a torn write): a few seconds at most.
"""


def _findRecord(data: bytes, start: int, end: int) -> int | None:
    """
    Where the first whole, valid record starts in C{data[start:end]}
    (looking at most L{SEARCH_LIMIT} bytes in), or L{None}.
    """
    unpack = _record.unpack_from
    crc32 = zlib.crc32
    last = min(end - _record.size - _meta.size, start + SEARCH_LIMIT)
    for offset in range(start, last + 1):
        length, crc = unpack(data, offset)
        if _meta.size <= length <= end - offset - _record.size:
            bodyStart = offset + _record.size
            if crc32(data[bodyStart : bodyStart + length]) == crc:
                return offset
    return None


class Journal(Protocol):
    """
    Where the store's records go.
    """

    def load(self) -> list[Record]:
        """
        Read and check every record.

        @raise StoreCorrupt: if the journal is damaged.
        """

    def append(self, record: bytes, sync: bool = True) -> None:
        """
        Write C{record}, and with C{sync} make it durable before returning.
        """

    def appendParts(self, parts: Sequence[bytes | memoryview], sync: bool = True) -> None:
        """
        Write one record given as the pieces of its bytes (L{recordParts}),
        exactly as L{append} writes them joined. May run in another thread.
        """

    def rewrite(self, record: bytes) -> None:
        """
        Replace the whole journal with C{record} (compaction), atomically.
        """

    def size(self) -> int:
        """
        The journal's size in bytes.
        """

    def close(self) -> None:
        """
        Release the journal.
        """

    def beginRewrite(self) -> None:
        """
        Start writing the journal that replaces this one (an incremental
        compaction); appends go on to this one meanwhile. May run in
        another thread.
        """

    def writeRewrite(self, data: bytes) -> None:
        """
        Append C{data} (records) to the journal being written. May run in
        another thread.
        """

    def copyTail(self, start: int, end: int) -> None:
        """
        Append this journal's bytes C{start} to C{end} (whole records,
        appended since the compaction started) to the one being written.
        May run in another thread, while appends go on past C{end}.
        """

    def endRewrite(self) -> None:
        """
        Make the journal being written durable and put it in this one's
        place, atomically; appends go to it from now on. Runs while
        nothing is appended (the store holds its flushes back).
        """

    def abortRewrite(self) -> None:
        """
        Drop the journal being written (the store is closing).
        """


class MemoryJournal:
    """
    A journal in memory: it survives a broker restart within one process
    (tests reuse the object), not a process restart.
    """

    def __init__(self) -> None:
        self.records: list[bytes] = []
        self.syncs = 0
        self._size = 0

    def load(self) -> list[Record]:
        records, _ = scanRecords(b"".join(self.records), "<memory>")
        return records

    def append(self, record: bytes, sync: bool = True) -> None:
        self.records.append(record)
        self._size += len(record)
        if sync:
            self.syncs += 1

    def appendParts(self, parts: Sequence[bytes | memoryview], sync: bool = True) -> None:
        self.append(b"".join(parts), sync)

    def rewrite(self, record: bytes) -> None:
        self.records = [record]
        self._size = len(record)

    def size(self) -> int:
        return self._size

    def close(self) -> None:
        pass

    def beginRewrite(self) -> None:
        self._rewriting: list[bytes] = []

    def writeRewrite(self, data: bytes) -> None:
        self._rewriting.append(data)

    def copyTail(self, start: int, end: int) -> None:
        self._rewriting.append(b"".join(self.records)[start:end])

    def endRewrite(self) -> None:
        self.records = [record for record in self._rewriting if record]
        self._size = sum(len(record) for record in self.records)
        del self._rewriting

    def abortRewrite(self) -> None:
        self.__dict__.pop("_rewriting", None)


class FileJournal:
    """
    The embedded journal: one append-only file, flushed with fsync.

    @ivar recover: on damage, keep a copy of the file and go on from the
        last good record instead of refusing.
    """

    log = Logger()

    def __init__(self, path: str, recover: bool = False) -> None:
        self.path = path
        self.recover = recover
        self.file: Any = None
        self.syncs = 0
        # Held while a record's pieces are written (in the store's
        # thread): the size the reactor reads (a compaction copies the
        # records up to it) always ends at a whole record.
        self._writing = threading.Lock()

    def load(self) -> list[Record]:
        directory = os.path.dirname(self.path) or "."
        makeDirectory(directory)
        if not os.path.exists(self.path):
            with openPrivate(self.path, "wb") as f:
                f.write(MAGIC)
                f.flush()
                os.fsync(f.fileno())
            _syncDirectory(directory)
        with open(self.path, "rb") as f:
            data = f.read()
        # A header cut short by a crash during the first start is a new
        # journal; a wrong one is damage. Either way the header is written
        # again below.
        rewriteHeader = not data.startswith(MAGIC)
        if rewriteHeader:
            if len(data) < len(MAGIC) and MAGIC.startswith(data):
                data = MAGIC
            else:
                self._damaged(0, "the file does not start with the qha journal header")
                data = MAGIC
        try:
            records, valid = scanRecords(data, self.path, len(MAGIC))
        except StoreCorrupt as corrupt:
            if not self.recover:
                raise
            self._damaged(corrupt.offset, corrupt.reason)
            records, valid = self._salvage(data, corrupt.offset)
            data = data[:valid]
        self.file = openPrivate(self.path, "r+b")
        if valid < len(data):
            self.log.warn(
                "{path}: dropping a torn last record ({bytes} bytes) that was never confirmed",
                path=self.path,
                bytes=len(data) - valid,
            )
        if rewriteHeader:
            self.file.seek(0)
            self.file.write(MAGIC)
        self.file.truncate(valid)
        self.file.seek(0, os.SEEK_END)
        self.file.flush()
        os.fsync(self.file.fileno())
        return records

    def _damaged(self, offset: int, reason: str) -> None:
        if not self.recover:
            raise StoreCorrupt(self.path, offset, reason)
        copy = f"{self.path}.damaged-{time.strftime('%Y%m%dT%H%M%S')}"
        with open(self.path, "rb") as damaged, openPrivate(copy, "wb") as kept:
            shutil.copyfileobj(damaged, kept)
        self.log.warn(
            "{path}: {reason} at byte {offset}; kept a copy as {copy} and going on"
            " from the last good record (--store-recover)",
            path=self.path,
            reason=reason,
            offset=offset,
            copy=copy,
        )

    def _salvage(self, data: bytes, offset: int) -> tuple[list[Record], int]:
        records, valid = scanRecords(data[:offset], self.path, len(MAGIC))
        return records, valid

    def append(self, record: bytes, sync: bool = True) -> None:
        with self._writing:
            self.file.write(record)
            self.file.flush()
        if sync:
            os.fdatasync(self.file.fileno())
            self.syncs += 1

    def appendParts(self, parts: Sequence[bytes | memoryview], sync: bool = True) -> None:
        # A piece larger than the file's buffer is written directly, not
        # copied into it.
        with self._writing:
            write = self.file.write
            for part in parts:
                write(part)
            self.file.flush()
        if sync:
            os.fdatasync(self.file.fileno())
            self.syncs += 1

    def rewrite(self, record: bytes) -> None:
        temporary = self.path + ".compacting"
        with openPrivate(temporary, "wb") as f:
            f.write(MAGIC + record)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, self.path)
        _syncDirectory(os.path.dirname(self.path) or ".")
        self.file.close()
        self.file = openPrivate(self.path, "r+b")
        self.file.seek(0, os.SEEK_END)

    def size(self) -> int:
        with self._writing:
            return self.file.tell() if self.file is not None else 0

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def beginRewrite(self) -> None:
        self._rewriting = openPrivate(self.path + ".compacting", "wb")
        self._rewriting.write(MAGIC)

    def writeRewrite(self, data: bytes) -> None:
        self._rewriting.write(data)

    def copyTail(self, start: int, end: int) -> None:
        with open(self.path, "rb") as journal:
            journal.seek(start)
            left = end - start
            while left > 0:
                chunk = journal.read(min(left, 1 << 20))
                if not chunk:
                    raise OSError(f"{self.path}: {left} bytes short of byte {end}")
                self._rewriting.write(chunk)
                left -= len(chunk)

    def endRewrite(self) -> None:
        temporary = self._rewriting
        temporary.flush()
        os.fsync(temporary.fileno())
        temporary.close()
        del self._rewriting
        os.replace(self.path + ".compacting", self.path)
        _syncDirectory(os.path.dirname(self.path) or ".")
        self.file.close()
        self.file = openPrivate(self.path, "r+b")
        self.file.seek(0, os.SEEK_END)

    def abortRewrite(self) -> None:
        temporary = self.__dict__.pop("_rewriting", None)
        if temporary is not None:
            temporary.close()
            try:
                os.remove(self.path + ".compacting")
            except OSError:
                pass


def _syncDirectory(directory: str) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _builtin(exchange: Exchange) -> bool:
    return exchange.name == "" or exchange.name.startswith("amq.")


def durableQueue(queue: Queue) -> bool:
    """
    Whether C{queue} is kept: durable and not exclusive.
    """
    return queue.durable and not queue.exclusive


class _Walk:
    """
    Where a compaction's live walk of one queue is (see
    L{Compaction._walkStep}).

    @ivar after: every entry up to this id is written (or gone).
    @ivar last: the walk ends at this id: entries enqueued after the
        compaction began are in the records copied after it.
    @ivar done: whether it reached C{last}.
    """

    __slots__ = ("after", "last", "done")

    def __init__(self, last: int) -> None:
        self.after = 0
        self.last = last
        self.done = last <= 0


class Compaction:
    """
    One compaction of a store's journal, spread over many reactor turns so
    the broker never stops for it: the reactor writes the durable state a
    bounded step at a time (at most C{step} messages, about C{recordBytes}
    bytes, one record each), another thread writes those records to the
    new file, and then copies after them every record the store appended
    to the old journal since the compaction began; for the last few of
    those the store holds its flushes back, so none is missed, and the new
    file takes the old one's place.

    Why nothing is lost: the new journal is a snapshot written from the
    state at the compaction's start or later, followed by every record
    written since the start. Replay applies events by id and uuid, and
    applying an event to a state that already shows it changes nothing (an
    enqueue of an id present is ignored, a dequeue of an id absent too, a
    delete names the queue's uuid). So whatever part of the snapshot was
    taken after an event, replaying the event again after it leaves the
    state the event left. See doc/store.md.

    @ivar start: the old journal's size when the compaction began: the
        records after it are copied.
    """

    log = Logger()
    step = 2000
    recordBytes = 1 << 19

    def __init__(
        self,
        store: "Store",
        inThread: Callable[[Callable[[], Any]], Deferred[Any]] | None,
    ) -> None:
        """
        @param store: the store compacted.
        @param inThread: runs a write in another thread (L{None}: here).
        """
        self.store = store
        self.journal = store.journal
        self.inThread = inThread
        self.clock = store.clock
        self.start = self.journal.size()
        self.before = self.start
        self.recordsAtStart = store.records
        self.epoch, self.position = store.epoch, store.position
        self.started = time.monotonic()
        self.written = 0
        self.records = 0
        self.cancelled = False
        self.done = False
        self.longest = 0.0
        self._queues: deque[tuple[Queue, list[Entry] | _Walk]] = deque()
        self._call: IDelayedCall | None = None
        self._writer = ev.EventWriter()

    def _run(self, work: Callable[[], Any]) -> Deferred[Any]:
        """
        Run C{work} in the compaction's thread, or here.
        """
        if self.inThread is not None:
            return self.inThread(work)
        try:
            return succeed(work())
        except BaseException:
            return fail()

    def begin(self) -> None:
        """
        Write the configuration (as it is now) and start walking the
        queues' messages.
        """
        assert self.store.vhosts is not None
        writer = ev.EventWriter()
        for vhost in self.store.vhosts:
            if vhost is not self.store.vhosts.default:
                writer.vhostAdded(vhost.name)
            writer.scope(vhost.name)
            for exchange in vhost.exchanges.values():
                if exchange.durable and not _builtin(exchange):
                    writer.exchangeDeclared(exchange)
            for queue in vhost.queues.values():
                if durableQueue(queue):
                    writer.queueDeclared(queue)
                    if queue.hasTail:
                        # Its paged segments cannot be copied: walked live,
                        # by id, up to its last entry now (see _walkStep).
                        self._queues.append((queue, _Walk(lastId(queue))))
                        continue
                    # The entries as they are now: references, copied at C
                    # speed; a step writes them as they are then (what
                    # happened to them since is in the records copied
                    # after the snapshot).
                    for level in queue.levels:
                        if level:
                            self._queues.append((queue, list(level)))
                    if queue.held:
                        held = sorted(queue.held.values(), key=lambda entry: entry.id)
                        self._queues.append((queue, held))
            for exchange in vhost.exchanges.values():
                if exchange is vhost.defaultExchange:
                    continue
                for binding in exchange.bindings.values():
                    if self.store._keptBinding(binding):
                        writer.binding(ev.BOUND, binding)
        # The first step's messages go in the same record.
        self._writer = writer
        self._run(self.journal.beginRewrite).addCallbacks(self._next, self._failed)

    def _next(self, _: Any = None) -> None:
        """
        Take the next step in the reactor's next turn.
        """
        if self.cancelled:
            self._run(self.journal.abortRewrite)
            return
        self._call = self.clock.callLater(0, self._step)

    def _step(self) -> None:
        """
        Write up to C{step} messages of the queues, as one record.
        """
        self._call = None
        if self.cancelled:
            self._run(self.journal.abortRewrite)
            return
        began = time.monotonic()
        writer, self._writer = self._writer, ev.EventWriter()
        budget = self.step
        room = self.recordBytes
        while self._queues and budget > 0 and room > 0:
            queue, entries = self._queues[0]
            if queue.deleted:
                self._queues.popleft()
                continue
            writer.scope(queue.vhost.name)
            if isinstance(entries, _Walk):
                budget, room = self._walkStep(writer, queue, entries, budget, room)
                if entries.done:
                    self._queues.popleft()
                    continue
                break
            held = queue.held
            taken = 0
            for entry in entries:
                if budget <= 0 or room <= 0:
                    break
                taken += 1
                if entry.message.persistent:
                    writer.entry(queue, entry)
                    if entry.id in held:
                        writer.entryEvent(ev.ACQUIRED, queue.name, entry.id)
                budget -= 1
                room -= entrySize(entry)
            if taken < len(entries):
                del entries[:taken]
                break
            self._queues.popleft()
        if not self._queues and not writer.count:
            self.longest = max(self.longest, time.monotonic() - began)
            self._tail()
            return
        record = encodeRecord(self.epoch, self.position, writer.take())
        self.records += 1
        self.written += len(record)
        self.longest = max(self.longest, time.monotonic() - began)
        self._run(lambda: self.journal.writeRewrite(record)).addCallbacks(self._next, self._failed)

    def _walkStep(
        self, writer: ev.EventWriter, queue: Queue, walk: "_Walk", budget: int, room: int
    ) -> tuple[int, int]:
        """
        Write the next entries of a queue walked live (one with a paged
        tail), as much of them as C{budget} entries and C{room} bytes let
        this step take, each as it is now: its tail's are read back as
        copies (the queue's segments stay paged), and an entry that left
        the queue since the compaction began is not found (its dequeue is
        in the records copied after the snapshot, and replaying it then
        changes nothing). An entry a replica holds is in its ready entries
        too: written once.

        @return: the budget and room left.
        """
        if budget <= 0 or room <= 0:
            return budget, room
        entries, walk.after, walk.done = entriesAfter(queue, walk.after, walk.last, budget, room)
        held = queue.held
        previous = -1
        for entry in entries:
            if entry.id == previous:
                continue
            previous = entry.id
            budget -= 1
            room -= entrySize(entry)
            if entry.message.persistent:
                writer.entry(queue, entry)
                if entry.id in held:
                    writer.entryEvent(ev.ACQUIRED, queue.name, entry.id)
        return budget, room

    def _tail(self) -> None:
        """
        Copy the records appended since the start while appends go on,
        then hold the store's flushes back and copy the rest.
        """
        end = self.journal.size()
        start, self.start = self.start, end
        self.copied = end - start
        self._run(lambda: self.journal.copyTail(start, end)).addCallbacks(
            lambda _: self.store._holdFlushes(self._finish), self._failed
        )

    def _finish(self) -> None:
        """
        The store flushes nothing now: copy what it appended last, and put
        the new journal in the old one's place.
        """
        start, end = self.start, self.journal.size()
        self.copied += end - start

        def replace() -> None:
            self.journal.copyTail(start, end)
            self.journal.endRewrite()

        self._run(replace).addCallbacks(self._replaced, self._failed)

    def _replaced(self, _: Any) -> None:
        store = self.store
        self.done = True
        appended = store.records - self.recordsAtStart
        store.records = self.records + appended
        store._compacted(self)
        self.log.info(
            "compacted the store from {before} to {after} bytes in {seconds:.2f}s"
            " (the longest step {longest:.1f} ms; {copied} bytes written meanwhile kept)",
            before=self.before,
            after=self.journal.size(),
            seconds=time.monotonic() - self.started,
            longest=self.longest * 1000,
            copied=self.copied,
        )

    def _failed(self, failure: Any) -> None:
        """
        The compaction failed: the old journal is still whole and in
        use; drop the new one.
        """
        self.done = True
        self.log.failure("compacting the store failed; the journal is kept as it is", failure)
        try:
            self.journal.abortRewrite()
        except Exception:
            pass
        self.store._compacted(self)

    def cancel(self) -> None:
        """
        Stop (the store is closing); the old journal stays.
        """
        self.cancelled = True
        if self._call is not None and self._call.active():
            self._call.cancel()
            self._call = None
            self.journal.abortRewrite()


LARGE_STORE = 64 * 1024 * 1024
"""
A journal past this many bytes gets a line when its reading starts: reading
and checking it takes a second or more.
"""


def _timed(write: Callable[[], object], timing: list[float]) -> None:
    """
    Run C{write} (in the store's thread) and append the seconds it took to
    C{timing}.
    """
    started = time.monotonic()
    write()
    timing.append(time.monotonic() - started)


@implementer(IConfirmHolder)
class Store:
    """
    Keeps the durable part of a virtual host in a journal.

    It observes the virtual host; the events of one reactor turn are one
    record, flushed (fsync) at the end of the turn, and the publishes
    waiting on them are confirmed after that.

    @ivar epoch: the cluster epoch the store last recorded.
    @ivar position: the position in the primary's stream of the last event
        recorded (for telling which of several stores is newest).
    """

    log = Logger()
    monotonic: Callable[[], float] = staticmethod(time.monotonic)  # type: ignore[assignment]
    compactAt = 64 * 1024 * 1024
    slowSync = 0.002

    def __init__(self, journal: Journal, clock: IReactorTime) -> None:
        self.journal = journal
        self.clock = clock
        self.writer = ev.EventWriter()
        self.epoch = 0
        self.position = 0
        self.current: Completion | None = None
        self.liveBytes = 0
        self._recount = False
        self.records = 0
        self._flushCall: IDelayedCall | None = None
        self.vhost: VirtualHost | None = None
        self.vhosts: VirtualHosts | None = None
        # Where a serving broker's epoch and stream position come from (a
        # backup's come with the boxes it applies).
        self.positionSource: Callable[[], tuple[int, int]] | None = None
        self._positionDirty = False
        # Runs a write (and its fsync) off the reactor thread and returns a
        # Deferred for it; None: write in the reactor thread.
        self.syncInThread: Callable[[Callable[[], None]], Deferred[Any]] | None = None
        # The thread to move flushes to once they prove slow (see _timeSync).
        self.threadSync: Callable[[Callable[[], None]], Deferred[Any]] | None = None
        self.syncAverage = 0.0
        # Told the seconds of each flush-and-fsync (the metrics' histogram).
        self.syncObservers: list[Callable[[float], None]] = []
        self._syncing = False
        self._syncWaiters: list[Deferred[None]] = []
        # The compaction under way, and whether it holds flushes back
        # (its last step), with what to run once none is in flight.
        self.compaction: Compaction | None = None
        self._held = False
        self._whenHeld: Callable[[], None] | None = None
        # Events of the next record taken from the writer already, and
        # runs of events a backup applied encoded as they came (see
        # appliedEncoded), in order: how many events, and the last run's
        # box and range while it is the last piece (the next run of the
        # same box extends it).
        self._pieces: list[bytes | memoryview] = []
        self._piecesCount = 0
        self._lastRun: tuple[bytes, int, int] | None = None

    # Recovery

    def recover(self, vhost: VirtualHost) -> dict[str, Any]:
        """
        Replay the journal into C{vhost} (which must be empty), the
        broker's default virtual host, and into the others it finds there,
        and start observing them all.

        @return: what was recovered.
        @raise StoreCorrupt: if the journal is damaged.
        """
        started = self.monotonic()
        path = getattr(self.journal, "path", "<memory>")
        try:
            # A file journal is opened by its load: ask the file system.
            size = os.path.getsize(path)
        except OSError:
            size = self.journal.size()
        if size > LARGE_STORE:
            self.log.info("reading the store {path} ({mb:.1f} MB)", path=path, mb=size / 1e6)
        records = self.journal.load()
        progress = RecoveryProgress(self.log, path, len(records), self.journal.size(), self.monotonic)
        epoch, position = replay(records, vhost, path, progress)
        self.epoch = max(self.epoch, epoch)
        self.position = position if records else self.position
        self.records = len(records)
        messages = 0
        vhosts = VirtualHosts.of(vhost)
        for each in vhosts:
            for queue in each.queues.values():
                # Counted without reading a paged tail back.
                messages += queue.messageCount
                self.liveBytes += queue.persistentBytes()
        self.attach(vhost)
        return {
            "records": len(records),
            "vhosts": len(vhosts),
            "queues": sum(len(each.queues) for each in vhosts),
            "messages": messages,
            "epoch": self.epoch,
            "position": self.position,
            "seconds": self.monotonic() - started,
        }

    def attach(self, vhost: VirtualHost) -> None:
        """
        Observe C{vhost} (the broker's default virtual host) and the
        broker's other virtual hosts from now on.
        """
        self.vhost = vhost
        self.vhosts = VirtualHosts.of(vhost)
        for each in self.vhosts:
            observe(each, self, first=True)
        if self not in self.vhosts.observers:
            self.vhosts.observers.insert(0, self)
        accounts = Accounts.of(self.vhosts)
        if self not in accounts.observers:
            accounts.observers.insert(0, self)
        settings = RuntimeSettings.of(self.vhosts)
        if self not in settings.observers:
            settings.observers.insert(0, self)

    # Writing

    def _dirty(self) -> None:
        if self._flushCall is None:
            self._flushCall = self.clock.callLater(0, self.flush)

    def flush(self) -> None:
        """
        Write this turn's events as one record, fsync, and complete the
        confirms that waited for them.
        """
        if self._flushCall is not None and self._flushCall.active():
            self._flushCall.cancel()
        self._flushCall = None
        if self._held:
            # A compaction puts its journal in place: this turn's events
            # wait for it, and so do the confirms.
            return
        if self.positionSource is not None:
            self.epoch, self.position = self.positionSource()
        if self.syncInThread is not None:
            self._flushInThread()
            return
        if self._hasEvents():
            started = time.monotonic()
            self.journal.appendParts(recordParts(self.epoch, self.position, self._takeEvents()))
            self._timeSync(time.monotonic() - started)
            self.records += 1
            self._positionDirty = False
        elif self._positionDirty:
            self.journal.append(encodeRecord(self.epoch, self.position, b""), sync=False)
            self.records += 1
            self._positionDirty = False
        current, self.current = self.current, None
        if current is not None:
            current.holds -= 1
            current.check()
        self._maybeCompact()

    def _hasEvents(self) -> bool:
        """
        Whether events wait for the next record.
        """
        return bool(self.writer.count or self._piecesCount)

    def _takeEvents(self) -> list[bytes | memoryview]:
        """
        The events of the next record, as pieces to write one after the
        other (never joined: see L{recordParts}); the store starts the
        next record empty.
        """
        pieces = self._pieces
        if not pieces:
            return [self.writer.take()]
        rest = self.writer.take()
        if rest:
            pieces.append(rest)
        self._pieces = []
        self._piecesCount = 0
        self._lastRun = None
        return pieces

    def _countLiveBytes(self) -> int:
        """
        The body bytes of the persistent messages on kept queues.
        """
        if self.vhosts is None:
            return 0
        return sum(
            queue.persistentBytes()
            for vhost in self.vhosts
            for queue in vhost.queues.values()
            if durableQueue(queue)
        )

    def _timeSync(self, seconds: float) -> None:
        """
        A flush in the reactor thread took C{seconds}: when flushes are slow
        (a disk slower than this machine's 0.2 ms), move them to the store's
        thread, so the reactor goes on serving while the disk syncs. Fast
        ones are cheaper done here than handed over.
        """
        self.syncAverage = 0.9 * self.syncAverage + 0.1 * seconds
        for observe in self.syncObservers:
            observe(seconds)
        if self.threadSync is not None and self.syncAverage > self.slowSync:
            self.log.info(
                "store flushes take {ms:.1f} ms: syncing in the store's thread from now on",
                ms=self.syncAverage * 1000,
            )
            self.syncInThread = self.threadSync

    def _flushInThread(self) -> None:
        """
        Hand this turn's record to the store's thread, so the reactor goes
        on serving while the disk syncs; the turns that arrive meanwhile
        are written together when it is done (group commit).
        """
        if self._syncing:
            return
        sync = True
        if self._hasEvents():
            events = self._takeEvents()
        elif self._positionDirty:
            # A position alone needs no fsync, so no trip to the thread
            # (a backup answers each box after this).
            self.journal.append(encodeRecord(self.epoch, self.position, b""), sync=False)
            self._positionDirty = False
            self.records += 1
            self._synced(None)
            return
        else:
            current, self.current = self.current, None
            if current is not None:
                current.holds -= 1
                current.check()
            self._synced(None)
            return
        self._positionDirty = False
        self.records += 1
        current, self.current = self.current, None
        self._syncing = True
        assert self.syncInThread is not None
        timing: list[float] = []
        epoch, position, journal = self.epoch, self.position, self.journal
        # The checksum and the writes in the store's thread, the record
        # never joined (see recordParts).
        d = self.syncInThread(
            lambda: _timed(
                lambda: journal.appendParts(recordParts(epoch, position, events), sync=sync), timing
            )
        )

        def written(result: Any) -> None:
            self._syncing = False
            if self._whenHeld is not None:
                whenHeld, self._whenHeld = self._whenHeld, None
                whenHeld()
            for seconds in timing:
                for observe in self.syncObservers:
                    observe(seconds)
            if current is not None:
                current.holds -= 1
                current.check()
            if self._hasEvents() or self._positionDirty or self.current is not None:
                self.flush()
            else:
                self._synced(None)
                self._maybeCompact()

        def failed(failure: Any) -> None:
            self._syncing = False
            # Nothing it held is confirmed: the publishers will resend.
            self.log.failure("writing the store failed; confirms are withheld", failure)

        d.addCallbacks(written, failed)

    def _synced(self, result: Any) -> None:
        waiters, self._syncWaiters = self._syncWaiters, []
        for waiter in waiters:
            waiter.callback(None)

    def whenSynced(self) -> Deferred[None] | None:
        """
        A L{Deferred} that fires once everything written so far is on disk,
        or L{None} if it is already.
        """
        if self._held:
            held: Deferred[None] = Deferred()
            self._syncWaiters.append(held)
            return held
        if self.syncInThread is None or (
            not self._syncing and not self._hasEvents() and not self._positionDirty
        ):
            return None
        waiter: Deferred[None] = Deferred()
        self._syncWaiters.append(waiter)
        if not self._syncing:
            self.flush()
        return waiter

    def _holdFlushes(self, then: Callable[[], None]) -> None:
        """
        Hold flushes back (a compaction's last step) and call C{then} once
        no write is in flight.
        """
        self._held = True
        if self._syncing:
            self._whenHeld = then
        else:
            then()

    def _compacted(self, compaction: Compaction) -> None:
        """
        C{compaction} is over (done or failed): flushes go on, to the new
        journal if it is in place.
        """
        if self.compaction is compaction:
            self.compaction = None
        if self._held:
            self._held = False
            self.flush()
            if self.syncInThread is None:
                self._synced(None)

    def _maybeCompact(self) -> None:
        if self.compaction is not None:
            return
        if self.journal.size() > self.compactAt:
            if self._recount:
                # A purge or a queue deletion dropped messages whose sizes
                # were not counted off one by one.
                self._recount = False
                self.liveBytes = self._countLiveBytes()
            if self.journal.size() > 4 * self.liveBytes:
                self.startCompaction()

    def hold(self, queues: list[Queue], message: Message) -> Completion | None:
        """
        The completion a publish to C{queues} waits for: the flush of this
        turn's record, if the message was written (L{IConfirmHolder}).
        """
        for queue in queues:
            if queue.durable and not queue.exclusive:
                break
        else:
            return None
        if not message.persistent:
            return None
        if self.current is None:
            self.current = Completion(0)
            self.current.holds = 1
            self._dirty()
        return self.current

    def setPosition(self, epoch: int, position: int) -> None:
        """
        The broker applied the stream up to C{position} of C{epoch}.
        """
        # Written at the next flush; a box that changed no durable state
        # needs no fsync, so the position alone is written without one.
        if (epoch, position) != (self.epoch, self.position):
            self.epoch, self.position = epoch, position
            self._positionDirty = True

    def startCompaction(self) -> Compaction | None:
        """
        Start rewriting the journal as a snapshot of the durable state, in
        bounded steps (see L{Compaction}), writing in the store's thread if
        it has one; the broker goes on meanwhile.
        """
        if self.vhosts is None or self.compaction is not None:
            return None
        compaction = self.compaction = Compaction(self, self.threadSync)
        compaction.begin()
        return compaction

    def compact(self) -> None:
        """
        Rewrite the journal as one snapshot of the durable state, now.
        """
        if self.vhosts is None:
            return
        writer = ev.EventWriter()
        for vhost in self.vhosts:
            if vhost is not self.vhosts.default:
                writer.vhostAdded(vhost.name)
            writer.scope(vhost.name)
            self._compactVhost(vhost, writer)
        accounts = Accounts.of(self.vhosts)
        if not accounts.empty:
            writer.accountChange(accounts.stateChange())
        settings = RuntimeSettings.of(self.vhosts)
        if not settings.empty:
            # After the objects: its pins give them their levels.
            writer.event(ev.SETTINGS, settings.state())
        before = self.journal.size()
        self.journal.rewrite(encodeRecord(self.epoch, self.position, writer.take()))
        self.records = 1
        self.log.info(
            "compacted the store from {before} to {after} bytes",
            before=before,
            after=self.journal.size(),
        )

    def _compactVhost(self, vhost: VirtualHost, writer: ev.EventWriter) -> None:
        """
        Write the durable state of C{vhost} with C{writer} (see
        L{compact}).
        """
        for exchange in vhost.exchanges.values():
            if exchange.durable and not _builtin(exchange):
                writer.exchangeDeclared(exchange)
        for queue in vhost.queues.values():
            if not durableQueue(queue):
                continue
            writer.queueDeclared(queue)
            entries = sorted(
                list(queue.readyEntries()) + list(queue.held.values()), key=lambda e: e.id
            )
            for entry in entries:
                if entry.message.persistent:
                    writer.entry(queue, entry)
                    if entry.id in queue.held:
                        writer.entryEvent(ev.ACQUIRED, queue.name, entry.id)
        for exchange in vhost.exchanges.values():
            if exchange is vhost.defaultExchange:
                continue
            for binding in exchange.bindings.values():
                if self._keptBinding(binding):
                    writer.binding(ev.BOUND, binding)

    def close(self) -> Deferred[None] | None:
        """
        Flush what is pending and close the journal (once the store's
        thread finished writing, if it is busy).
        """
        if self._syncing or self._held:
            waiter: Deferred[None] = Deferred()
            self._syncWaiters.append(waiter)
            waiter.addCallback(lambda _: self.close())
            return waiter
        if self.compaction is not None:
            self.compaction.cancel()
            self.compaction = None
        self.syncInThread = None
        self.flush()
        self.journal.close()
        return None

    # AccountsObserver

    def accountChanged(self, change: AccountChange) -> None:
        """
        Users or permissions changed at run time: recorded.
        """
        self.writer.accountChange(change)
        self._dirty()

    # SettingsObserver

    def settingsChanged(self, state: bytes) -> None:
        """
        Options were set at run time: recorded, so that they win over the
        configured ones after a restart.
        """
        self.writer.event(ev.SETTINGS, state)
        self._dirty()

    # VirtualHostsObserver

    def vhostAdded(self, vhost: VirtualHost) -> None:
        """
        A virtual host was added: recorded, and observed.
        """
        self.writer.vhostAdded(vhost.name)
        observe(vhost, self, first=True)
        self._dirty()

    def vhostDeleted(self, vhost: VirtualHost) -> None:
        """
        A virtual host was deleted (its objects' deletions were recorded
        first).
        """
        unobserve(vhost, self)
        self.writer.vhostDeleted(vhost.name)
        self._recount = True
        self._dirty()

    # BrokerObserver

    def _keptBinding(self, binding: Binding) -> bool:
        source = binding.source
        destination = binding.destination
        if source.name == "":
            return False
        if not (_builtin(source) or source.durable):
            return False
        if isinstance(destination, Queue):
            return durableQueue(destination)
        return _builtin(destination) or destination.durable

    def queueDeclared(self, queue: Queue) -> None:
        if durableQueue(queue):
            self.writer.queueDeclared(queue)
            self._dirty()

    def queueDeleted(self, queue: Queue) -> None:
        if durableQueue(queue):
            self.writer.event(ev.QUEUE_DELETED, queue.name, queue.uuid)
            self._recount = True
            self._dirty()

    def exchangeDeclared(self, exchange: Exchange) -> None:
        if exchange.durable and not _builtin(exchange):
            self.writer.exchangeDeclared(exchange)
            self._dirty()

    def exchangeDeleted(self, exchange: Exchange) -> None:
        if exchange.durable and not _builtin(exchange):
            self.writer.event(ev.EXCHANGE_DELETED, exchange.name)
            self._dirty()

    def bound(self, binding: Binding) -> None:
        if self._keptBinding(binding):
            self.writer.binding(ev.BOUND, binding)
            self._dirty()

    def unbound(self, binding: Binding) -> None:
        if self._keptBinding(binding):
            self.writer.binding(ev.UNBOUND, binding)
            self._dirty()

    def enqueued(self, queue: Queue, entry: Entry) -> None:
        if queue.durable and not queue.exclusive and entry.message.persistent:
            self.writer.entry(queue, entry)
            self.liveBytes += entry.message.size
            self._dirty()

    def appliedEncoded(self, events: bytes, start: int, end: int, count: int, bodyBytes: int) -> None:
        """
        C{count} events a backup applied while this store did not observe
        them, C{events[start:end]}, encoded already as it would have
        encoded them (a catch-up batch's run of enqueues,
        L{qha.changes.replay.Verbatim}), with C{bodyBytes} of persistent
        bodies: written as they are, in their place among this store's
        events, at the next flush (the backup flushes once the batch is
        applied).
        """
        if not count:
            return
        # In their place: after what this store encoded so far (which ends
        # in the default virtual host, where a box's events start), taken
        # now; the run itself is not copied (a whole batch taken in steps
        # is one piece, the box itself, or a view of it).
        writer = self.writer
        writer.scope(ev.DEFAULT_VHOST)
        before = writer.count
        encoded = writer.take()
        pieces = self._pieces
        last = self._lastRun
        if encoded:
            pieces.append(encoded)
        elif last is not None and last[0] is events and last[2] == start:
            start = last[1]
            pieces.pop()
        self._lastRun = (events, start, end)
        pieces.append(events if start == 0 and end == len(events) else memoryview(events)[start:end])
        self._piecesCount += before + count
        self.liveBytes += bodyBytes

    def acquired(self, queue: Queue, entries: Sequence[Entry]) -> None:
        if queue.durable and not queue.exclusive:
            for entry in entries:
                if entry.message.persistent:
                    self.writer.entryEvent(ev.ACQUIRED, queue.name, entry.id)
                    self._dirty()

    def released(self, queue: Queue, entry: Entry) -> None:
        pass

    def dequeued(self, queue: Queue, entries: Sequence[Entry]) -> None:
        if queue.durable and not queue.exclusive:
            for entry in entries:
                if entry.message.persistent:
                    self.writer.entryEvent(ev.DEQUEUED, queue.name, entry.id)
                    self.liveBytes -= entry.message.size
                    self._dirty()

    def purged(self, queue: Queue, count: int) -> None:
        if durableQueue(queue):
            self.writer.event(ev.PURGED, queue.name)
            self._recount = True
            self._dirty()


class RecoveryProgress:
    """
    Logs a line every L{PROGRESS_INTERVAL} seconds while a store's records
    are replayed: how many of how many, the bytes, the rate, so that a long
    recovery is seen to move.

    @ivar pace: when a line is due, and the rate (L{ProgressPace}).
    @ivar lines: how many lines were logged.
    """

    def __init__(
        self,
        log: Logger,
        path: str,
        records: int,
        size: int,
        monotonic: Callable[[], float] = time.monotonic,
        interval: float = PROGRESS_INTERVAL,
    ) -> None:
        """
        @param log: where the lines go.
        @param path: the journal's path, named in each line.
        @param records: how many records there are to replay.
        @param size: the journal's size in bytes.
        @param monotonic: the clock.
        @param interval: seconds between two lines.
        """
        self.log = log
        self.path = path
        self.records = records
        self.size = size
        self.monotonic = monotonic
        self.interval = interval
        self.pace = ProgressPace(monotonic(), interval)
        self.lines = 0

    def __call__(self, done: int, offset: int) -> None:
        """
        C{done} records are replayed, up to byte C{offset}: log a line if
        one is due.
        """
        now = self.monotonic()
        if not self.pace.due(now):
            return
        self.lines += 1
        self.log.info(
            "recovering the store {path}: record {done} of {records} ({percent:.0f}%),"
            " {mb:.1f} of {totalMB:.1f} MB, {rate:.0f} records/s",
            path=self.path,
            done=done,
            records=self.records,
            percent=percent(done, self.records),
            mb=offset / 1e6,
            totalMB=self.size / 1e6,
            rate=self.pace.rate(done, now),
        )


PROGRESS_EVERY = 256
"""
Records replayed between two looks at the clock for a progress line.
"""


def replay(
    records: list[Record],
    vhost: VirtualHost,
    path: str,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[int, int]:
    """
    Apply C{records} to C{vhost} as a replica (no timers, no policies of
    its own); return the highest epoch and the last position they carry.

    @param progress: told, every L{PROGRESS_EVERY} records, how many are
        replayed and up to which byte (L{RecoveryProgress}).
    @raise StoreCorrupt: for a record that passes its checksum but cannot be
        decoded.
    """
    replica = vhost.replica
    vhost.replica = True
    replicator = Replicator(vhost, lambda: None)
    epoch = position = 0
    # Replay makes millions of objects that all live on: the cyclic garbage
    # collector would scan them again and again for nothing (a third of the
    # time of recovering a million messages).
    collecting = gc.isenabled()
    gc.disable()
    try:
        for index, record in enumerate(records):
            try:
                replicator.apply(record.events)
            except ev.MalformedEvents as error:
                raise StoreCorrupt(
                    path,
                    record.offset,
                    f"record {index + 1} passes its checksum but cannot be decoded: {error}",
                ) from None
            epoch = max(epoch, record.epoch)
            position = record.position
            if progress is not None and index % PROGRESS_EVERY == PROGRESS_EVERY - 1:
                progress(index + 1, record.offset)
    finally:
        if collecting:
            gc.enable()
        vhost.replica = replica
    return epoch, position


def storeInfo(path: str) -> dict[str, Any]:
    """
    What a journal holds, read without a broker (for C{qha-admin
    store-info}): its epoch and stream position, and its queues and
    messages.

    @raise StoreCorrupt: if it is damaged.
    """
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(MAGIC):
        raise StoreCorrupt(path, 0, "the file does not start with the qha journal header")
    records, valid = scanRecords(data, path, len(MAGIC))
    vhost = VirtualHost()
    epoch, position = replay(records, vhost, path)
    return {
        "path": path,
        "bytes": len(data),
        "records": len(records),
        "tornBytes": len(data) - valid,
        "epoch": epoch,
        "position": position,
        "queues": {
            name: {"messages": queue.messageCount, "durable": queue.durable}
            for name, queue in vhost.queues.items()
        },
        "exchanges": sorted(
            name for name in vhost.exchanges if name and not name.startswith("amq.")
        ),
        # Every virtual host's (the keys above are the default one's).
        "vhosts": {
            each.name: {
                "queues": {
                    name: {"messages": queue.messageCount, "durable": queue.durable}
                    for name, queue in each.queues.items()
                },
                "exchanges": sorted(
                    name for name in each.exchanges if name and not name.startswith("amq.")
                ),
            }
            for each in VirtualHosts.of(vhost)
        },
    }


def readAll(journal: Journal) -> Iterator[Record]:
    """
    Every record of C{journal}, for tests.
    """
    yield from journal.load()
