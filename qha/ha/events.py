"""
The replication stream's events and their binary encoding.

A primary sends each backup a stream of events in the order they happened
on the primary; many events travel in one AMP box. Each event is a type
byte followed by its fields; strings carry a 2-byte length, byte strings and
tables a 4-byte one, integers are 8 bytes.
"""

from __future__ import annotations

import struct
from typing import Any, Iterator

from pamqp import decode

from ..broker.message import encodeTable

# Configuration
QUEUE_DECLARED = b"Q"
QUEUE_DELETED = b"q"
EXCHANGE_DECLARED = b"X"
EXCHANGE_DELETED = b"x"
BOUND = b"B"
UNBOUND = b"b"
PURGED = b"P"
# Messages
ENQUEUED = b"E"
DEQUEUED = b"D"
ACQUIRED = b"A"
RELEASED = b"L"
# Stream control
SNAPSHOT = b"S"
CAUGHT_UP = b"R"
MEMBERS = b"M"

_q = struct.Struct(">q")
_I = struct.Struct(">I")
_H = struct.Struct(">H")


class EventWriter:
    """
    Accumulates encoded events.
    """

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.count = 0
        self.size = 0

    def __len__(self) -> int:
        return self.count

    def _add(self, data: bytes) -> None:
        self.parts.append(data)
        self.size += len(data)

    def event(self, kind: bytes, *fields: Any) -> None:
        """
        Append one event of type C{kind} with C{fields}: L{str}, L{bytes},
        L{int}, L{bool} or L{dict} (a field table).
        """
        self.count += 1
        out = [kind]
        for value in fields:
            if isinstance(value, bool):
                out.append(b"\x01" if value else b"\x00")
            elif isinstance(value, int):
                out.append(_q.pack(value))
            elif isinstance(value, str):
                raw = value.encode("utf-8")
                out.append(_H.pack(len(raw)) + raw)
            elif isinstance(value, (bytes, bytearray, memoryview)):
                raw = bytes(value)
                out.append(_I.pack(len(raw)) + raw)
            elif isinstance(value, dict):
                out.append(encodeTable(value))
            else:
                raise TypeError(f"cannot encode {type(value).__name__} in an event")
        self._add(b"".join(out))

    def enqueued(self, queue: str, id: int, redelivered: bool, addressing: bytes, header: bytes, body: bytes) -> None:
        """
        The hot event, encoded without the generic loop.
        """
        self.count += 1
        raw = queue.encode("utf-8")
        self._add(
            b"".join(
                (
                    b"E",
                    _H.pack(len(raw)),
                    raw,
                    _q.pack(id),
                    b"\x01" if redelivered else b"\x00",
                    _I.pack(len(addressing)),
                    addressing,
                    _I.pack(len(header)),
                    header,
                    _I.pack(len(body)),
                    body,
                )
            )
        )

    def take(self) -> bytes:
        """
        The encoded events so far; the writer starts empty again.
        """
        data = b"".join(self.parts)
        self.parts = []
        self.count = 0
        self.size = 0
        return data


# Field layouts, by event type: s str, b bytes, i int, f bool, t table.
LAYOUTS: dict[bytes, str] = {
    QUEUE_DECLARED: "ssfffft",
    QUEUE_DELETED: "ss",
    EXCHANGE_DECLARED: "sssffft",
    EXCHANGE_DELETED: "s",
    BOUND: "sbsst",
    UNBOUND: "sbsst",
    PURGED: "s",
    ENQUEUED: "sifbbb",
    DEQUEUED: "si",
    ACQUIRED: "si",
    RELEASED: "si",
    SNAPSHOT: "b",
    CAUGHT_UP: "",
    MEMBERS: "b",
}


class MalformedEvents(ValueError):
    """
    A replication box could not be decoded.
    """


def readEvents(data: bytes) -> Iterator[tuple[Any, ...]]:
    """
    Decode the events in C{data}: tuples of the type byte and its fields.

    @raise MalformedEvents: if C{data} is not a valid encoding.
    """
    offset = 0
    end = len(data)
    view = memoryview(data)
    try:
        while offset < end:
            kind = data[offset : offset + 1]
            offset += 1
            layout = LAYOUTS.get(kind)
            if layout is None:
                raise MalformedEvents(f"unknown event type {kind!r} at offset {offset - 1}")
            fields: list[Any] = [kind]
            for code in layout:
                if code == "s":
                    length = _H.unpack_from(data, offset)[0]
                    offset += 2
                    fields.append(str(view[offset : offset + length], "utf-8"))
                    offset += length
                elif code == "b":
                    length = _I.unpack_from(data, offset)[0]
                    offset += 4
                    fields.append(data[offset : offset + length])
                    offset += length
                elif code == "i":
                    fields.append(_q.unpack_from(data, offset)[0])
                    offset += 8
                elif code == "f":
                    fields.append(data[offset] == 1)
                    offset += 1
                else:
                    length = _I.unpack_from(data, offset)[0]
                    _, table = decode.field_table(data[offset : offset + 4 + length])
                    fields.append(table)
                    offset += 4 + length
            if offset > end:
                raise MalformedEvents("event runs past the end of the box")
            yield tuple(fields)
    except (struct.error, IndexError, UnicodeDecodeError, ValueError) as error:
        if isinstance(error, MalformedEvents):
            raise
        raise MalformedEvents(f"undecodable event at offset {offset}: {error}") from None
