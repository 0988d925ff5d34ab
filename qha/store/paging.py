"""
The page files: where queues put the message bodies they page out
(L{qha.broker.paging.IBodyStore}), as append-only segment files in
C{DATA-DIR/paging}.

Each body is one record, C{[length: 4 bytes] [crc32 of the body: 4 bytes]
[body]} (big-endian), appended to the current segment; its location is the
segment's number and the record's byte, in one integer. A segment goes once
every body in it was read back or dropped (the current one is cut back to
nothing instead), so a backlog that drains gives its disk back as it goes.

Nothing here is kept across a restart: transient messages do not survive
one, and persistent ones are in the journal, which is what recovery reads
(and a recovered backlog is paged anew by the same budget). So the page
files are never flushed to the disk, and a broker that starts removes those
it finds.

A broker that pages means to bound its memory, so opening the page files
also fixes the C library's threshold for large allocations (L{fixMmapThreshold}):
without it, glibc raises the threshold each time a large buffer is freed
(a replication box, a socket's write buffer), later ones come from the heap in its
place, and the heap fragments. A primary paging a 20 MiB backlog to a
ready backup then kept 18-24 MiB of freed heap it could not give back.
"""

from __future__ import annotations

import ctypes
import os
import struct
import zlib
from typing import Sequence

from twisted.application.service import Service
from twisted.logger import Logger
from zope.interface import implementer

from ..broker.paging import IBodyStore, PageError

__all__ = ["PageFiles", "PageFilesService", "SEGMENT_SIZE", "fixMmapThreshold"]

SEGMENT_SIZE = 64 * 1024 * 1024
"""
The size past which a new segment is started.
"""

BUFFER_SIZE = 1024 * 1024
"""
How many bytes of new records are gathered before they are written.
"""

_SEGMENT_BITS = 40
_OFFSET_MASK = (1 << _SEGMENT_BITS) - 1
_HEADER = struct.Struct(">II")
_PREFIX = "segment-"
# Records apart by at most this many bytes are read in one pread.
_GAP = 64 * 1024
_SPAN = 8 * 1024 * 1024

MMAP_THRESHOLD = 128 * 1024
"""
Allocations this large or larger get their own mapping, given back to the
system as soon as they are freed (glibc's default starting threshold).
"""

# mallopt's parameters for the trim and mmap thresholds (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Whether the threshold was fixed already (None: not tried yet).
_thresholdFixed: bool | None = None


def fixMmapThreshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """
    Fix the C library's mmap threshold, and its trim threshold, at
    C{threshold} bytes, once per process, where the C library has
    C{mallopt} (glibc): large transient buffers are then mapped and
    unmapped each time instead of growing and fragmenting the heap, and
    free memory at the top of the heap goes back to the system (setting
    them turns off glibc's dynamic raising of both). A threshold chosen in
    the environment (C{MALLOC_MMAP_THRESHOLD_}) is left as it is.

    @return: whether the threshold is fixed now.
    """
    global _thresholdFixed
    if _thresholdFixed is not None:
        return _thresholdFixed
    _thresholdFixed = False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # Each raise of the mmap threshold also raised the trim threshold (to
    # twice as much): the free top of the heap would go on being kept.
    _thresholdFixed = bool(mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, threshold)
    )
    return _thresholdFixed


class _Segment:
    """
    One segment file: its descriptor and how many of its bodies are live.
    """

    __slots__ = ("number", "path", "fd", "live")

    def __init__(self, number: int, path: str, fd: int) -> None:
        self.number = number
        self.path = path
        self.fd = fd
        self.live = 0


@implementer(IBodyStore)
class PageFiles:
    """
    Paged bodies in append-only segment files in one directory.

    @ivar directory: where the segments are.
    @ivar records: how many bodies are paged out now.
    @ivar size: their bytes.
    @ivar segments: the segment files now open, by number.
    """

    log = Logger()

    def __init__(
        self,
        directory: str,
        segmentSize: int = SEGMENT_SIZE,
        bufferSize: int = BUFFER_SIZE,
    ) -> None:
        """
        Open the directory (made if missing), removing the segments a
        previous run left: they hold nothing anyone needs.
        """
        self.directory = directory
        self.segmentSize = segmentSize
        self.bufferSize = bufferSize
        self.records = 0
        self.size = 0
        self.segments: dict[int, _Segment] = {}
        self._active: _Segment | None = None
        self._number = 0
        # The bytes of the active segment not yet written, which start at
        # its byte _flushed; _end is where the next record goes.
        self._buffer = bytearray()
        self._flushed = 0
        self._end = 0
        # A broker that may page means to bound its memory: keep its heap
        # from growing with freed buffers, from the start (see the module).
        fixMmapThreshold()
        os.makedirs(directory, mode=0o700, exist_ok=True)
        left = [name for name in os.listdir(directory) if name.startswith(_PREFIX)]
        for name in left:
            os.remove(os.path.join(directory, name))
        if left:
            self.log.info(
                "removed {count} page files of a previous run from {directory}",
                count=len(left),
                directory=directory,
            )

    def __repr__(self) -> str:
        return f"<PageFiles {self.directory!r} records={self.records} bytes={self.size}>"

    # Writing

    def write(self, body: bytes) -> int:
        """
        Append C{body} as a record of the active segment.
        """
        active = self._active
        length = len(body)
        if active is None or (self._end and self._end + 8 + length > self.segmentSize):
            active = self._rotate()
        offset = self._end
        buffer = self._buffer
        buffer += _HEADER.pack(length, zlib.crc32(body))
        buffer += body
        self._end = offset + 8 + length
        active.live += 1
        self.records += 1
        self.size += length
        if len(buffer) >= self.bufferSize:
            self._flush()
        return (active.number << _SEGMENT_BITS) | offset

    def _flush(self) -> None:
        """
        Write the gathered records to the active segment.
        """
        active = self._active
        if active is None or not self._buffer:
            return
        view = memoryview(self._buffer)
        written = 0
        while written < len(view):
            written += os.pwrite(active.fd, view[written:], self._flushed + written)
        view.release()
        self._flushed += written
        self._buffer = bytearray()

    def _rotate(self) -> _Segment:
        """
        Start a new active segment; the old one stays while it has live
        bodies.
        """
        old = self._active
        if old is not None:
            self._flush()
            if not old.live:
                self._remove(old)
        self._number += 1
        path = os.path.join(self.directory, f"{_PREFIX}{self._number:08d}")
        fd = os.open(
            path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o600
        )
        segment = self._active = self.segments[self._number] = _Segment(self._number, path, fd)
        self._buffer = bytearray()
        self._flushed = self._end = 0
        return segment

    def _remove(self, segment: _Segment) -> None:
        """
        Close and delete C{segment}.
        """
        del self.segments[segment.number]
        os.close(segment.fd)
        try:
            os.remove(segment.path)
        except FileNotFoundError:
            pass

    # Freeing

    def free(self, location: int, size: int) -> None:
        """
        The body at C{location} of C{size} bytes is no longer needed: a
        segment whose bodies are all gone is deleted (the active one is cut
        back to nothing and written again from its start).
        """
        segment = self.segments.get(location >> _SEGMENT_BITS)
        if segment is None:
            return
        segment.live -= 1
        self.records -= 1
        self.size -= size
        if segment.live > 0:
            return
        if segment is self._active:
            self._buffer = bytearray()
            if self._flushed:
                os.ftruncate(segment.fd, 0)
            self._flushed = self._end = 0
        else:
            self._remove(segment)

    # Reading

    def read(self, pages: Sequence[tuple[int, int]]) -> list[bytes]:
        """
        Read bodies back: records that lie close together in one segment
        are read with one C{pread}, and each is checked against its length
        and checksum.

        @raise PageError: naming the file and the byte, if a segment is
            missing or cut short, or a record is not the one expected.
        """
        result: list[bytes] = [b""] * len(pages)
        order = sorted(range(len(pages)), key=lambda index: pages[index][0])
        start = 0
        while start < len(order):
            location, size = pages[order[start]]
            number = location >> _SEGMENT_BITS
            first = location & _OFFSET_MASK
            stop = start + 1
            end = first + 8 + size
            while stop < len(order):
                nextLocation, nextSize = pages[order[stop]]
                nextOffset = nextLocation & _OFFSET_MASK
                if (
                    nextLocation >> _SEGMENT_BITS != number
                    or nextOffset - end > _GAP
                    or nextOffset + 8 + nextSize - first > _SPAN
                ):
                    break
                end = max(end, nextOffset + 8 + nextSize)
                stop += 1
            data = self._span(number, first, end)
            for index in order[start:stop]:
                location, size = pages[index]
                offset = location & _OFFSET_MASK
                result[index] = self._record(number, data, offset - first, offset, size)
            start = stop
        return result

    def _span(self, number: int, first: int, end: int) -> bytes:
        """
        The bytes C{first} to C{end} of segment C{number}, from the file or
        from the records not written yet.
        """
        segment = self.segments.get(number)
        if segment is None:
            raise PageError(
                f"{os.path.join(self.directory, f'{_PREFIX}{number:08d}')}: the page"
                f" file is gone (a body at byte {first} was still wanted)"
            )
        if segment is self._active and end > self._flushed:
            if first >= self._flushed:
                return bytes(self._buffer[first - self._flushed : end - self._flushed])
            self._flush()
        data = os.pread(segment.fd, end - first, first)
        if len(data) < end - first:
            raise PageError(
                f"{segment.path}: the page file is cut short: it ends at byte"
                f" {first + len(data)}, but records to byte {end} were written there"
            )
        return data

    def _record(self, number: int, data: bytes, at: int, offset: int, size: int) -> bytes:
        """
        The body of the record at C{at} of C{data} (byte C{offset} of
        segment C{number}), checked.
        """
        length, crc = _HEADER.unpack_from(data, at)
        body = data[at + 8 : at + 8 + size]
        if length != size or zlib.crc32(body) != crc:
            path = self.segments[number].path
            what = (
                f"its length says {length} bytes where {size} were written"
                if length != size
                else "it fails its checksum"
            )
            raise PageError(f"{path}: the paged body at byte {offset} is damaged: {what}")
        return body

    def close(self) -> None:
        """
        Close and delete every segment (the broker is stopping: nothing in
        them is needed again).
        """
        for segment in list(self.segments.values()):
            self._remove(segment)
        self._active = None
        self._buffer = bytearray()
        self._flushed = self._end = 0
        self.records = self.size = 0


class PageFilesService(Service):
    """
    Removes the page files when the broker stops.
    """

    def __init__(self, pages: PageFiles) -> None:
        self.pages = pages

    def stopService(self) -> None:
        """
        Close and delete the segments.
        """
        Service.stopService(self)
        self.pages.close()
