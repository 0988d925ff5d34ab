"""
The replication stream's events and their binary encoding.

A primary sends each backup a stream of events in the order they happened
on the primary; many events travel in one AMP box. Each event is a type
byte followed by its fields; strings carry a 2-byte length, byte strings and
tables a 4-byte one, integers are 8 bytes.

An L{ENQUEUED} event's flags byte says whether the entry was redelivered
(1) and whether it was acquired as it was enqueued (2): a consumer that was
waiting takes a message at once, and one event then stands for two. It
decodes to the type, queue, id, redelivered, addressing, header, body,
deadline and acquired.

Virtual hosts: a box (or a journal record) starts in the default virtual
host, C{/}; a L{VHOST} event says that the events after it, up to the next
one or the end of the box, are of the virtual host it names. A stream of a
broker with one virtual host never carries one, so that journals written
before there were several read as they always did. L{VHOST_ADDED} and
L{VHOST_DELETED} add and delete one (with everything in it).

Users and permissions changed at run time (L{qha.amqp.accounts}) travel as
L{USER_SET}, L{USER_DELETED}, L{PERMISSIONS_SET}, L{PERMISSIONS_CLEARED}
and, for a snapshot or a compacted journal, L{ACCOUNTS}; they belong to no
virtual host (a L{VHOST} event does not scope them). Their fields are
checked as they are decoded (names, tags, that a pattern compiles, that a
hash is a usable scrypt hash), so a bad one from a peer is refused before
anything applies it.

Options set at run time (C{qha-admin set}, L{qha.changes.settings}) travel
as one L{SETTINGS} event holding their whole state, checked when applied;
it belongs to no virtual host either.
"""

from __future__ import annotations

import struct
from typing import Any, Iterator, Sequence

from ..amqp import accounts as _accounts
from ..broker.message import decodeTable, encodeTable
from ..broker.queue import Queue

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
# Runs of consecutive ids: a consumer takes and acknowledges messages in
# order, so one event stands for many.
DEQUEUED_RANGE = b"d"
ACQUIRED_RANGE = b"a"
# Virtual hosts: the scope of the events that follow, one added, one deleted
VHOST = b"V"
VHOST_ADDED = b"H"
VHOST_DELETED = b"h"
DEFAULT_VHOST = "/"
# Users and permissions changed at run time (see qha.amqp.accounts)
USER_SET = b"U"
USER_DELETED = b"u"
PERMISSIONS_SET = b"G"
PERMISSIONS_CLEARED = b"g"
ACCOUNTS = b"K"
# Options set at run time, the whole state (see qha.changes.settings)
SETTINGS = b"O"
# Stream control
SNAPSHOT = b"S"
CAUGHT_UP = b"R"
MEMBERS = b"M"

_q = struct.Struct(">q")
_I = struct.Struct(">I")
_H = struct.Struct(">H")
_qBqIs = struct.Struct(">qBqI")
_qBqI = _qBqIs.pack


class EventWriter:
    """
    Accumulates encoded events.
    """

    def __init__(self) -> None:
        self.parts: list[bytes | memoryview] = []
        self.count = 0
        self._run: list[Any] | None = None
        # Whether every event so far is of a message no store keeps.
        self.transient = True
        # The start of the hot event of each queue: its type and the
        # queue's name with its length.
        self._names: dict[str, bytes] = {}
        # The entry of the last event if it is an ENQUEUED event (its parts
        # are the last seven), and its queue's name: when the next event
        # acquires it (a consumer was waiting), the flags byte says so and
        # the two travel as one (see entryEvent).
        self.held: Any = None
        self._heldName = ""
        # The virtual host the events written now are of (see scope).
        self.vhost = DEFAULT_VHOST
        # The last piece of encoded events added (see encoded): its data,
        # where it starts and ends there, and its index in the parts.
        self._encoded: tuple[bytes, int, int, int] | None = None

    def __len__(self) -> int:
        return self.count

    def _add(self, data: bytes) -> None:
        self.held = None
        if self._run is not None:
            self._endRun()
        self.parts.append(data)

    def _endRun(self) -> None:
        kind, queue, first, last = self._run  # type: ignore[misc]
        self._run = None
        raw = queue.encode("utf-8")
        if first == last:
            data = kind + _H.pack(len(raw)) + raw + _q.pack(first)
        else:
            data = _RANGES[kind] + _H.pack(len(raw)) + raw + _q.pack(first) + _q.pack(last)
        self.parts.append(data)

    def scope(self, vhost: str) -> None:
        """
        The events written from now on are of virtual host C{vhost}: a
        L{VHOST} event, if that is not the one they are of already. It is
        no event of its own (it does not count, and leaves the box
        transient).
        """
        if vhost != self.vhost:
            self.vhost = vhost
            raw = vhost.encode("utf-8")
            self._add(VHOST + _H.pack(len(raw)) + raw)

    def vhostAdded(self, vhost: str) -> None:
        """
        A L{VHOST_ADDED} event.
        """
        self.event(VHOST_ADDED, vhost)

    def vhostDeleted(self, vhost: str) -> None:
        """
        A L{VHOST_DELETED} event; if the events were of C{vhost}, they are
        of the default virtual host after it (as a reader takes them).
        """
        self.event(VHOST_DELETED, vhost)
        if self.vhost == vhost:
            self.vhost = DEFAULT_VHOST

    def accountChange(self, change: Any) -> None:
        """
        An event of a run-time change of users or permissions (an
        L{qha.amqp.accounts.AccountChange}).
        """
        self.event(ACCOUNT_KINDS[change.kind], *change.fields)

    def event(self, kind: bytes, *fields: Any) -> None:
        """
        Append one event of type C{kind} with C{fields}: L{str}, L{bytes},
        L{int}, L{bool} or L{dict} (a field table).
        """
        self.count += 1
        self.transient = False
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

    def entryEvent(self, kind: bytes, queue: str, id: int) -> None:
        """
        A dequeue, acquire or release: the type, the queue, the id.
        """
        self.count += 1
        held = self.held
        if held is not None:
            self.held = None
            if kind == ACQUIRED and held.id == id and self._heldName == queue:
                self._acquiredHeld()
                return
        if kind in _RANGES:
            self._extendRun(kind, queue, id, id)
            return
        if self._run is not None:
            self._endRun()
        raw = queue.encode("utf-8")
        data = kind + _H.pack(len(raw)) + raw + _q.pack(id)
        self.parts.append(data)

    def entryEvents(self, kind: bytes, queue: str, entries: Sequence[Any]) -> None:
        """
        L{entryEvent} for each of C{entries} of C{queue}, in order.
        Consecutive ids (a dispatch or a multiple acknowledgement of a queue
        without a policy) extend or start one run at once.
        """
        count = len(entries)
        if not count:
            return
        first = entries[0].id
        if (
            count > 1
            and kind in _RANGES
            and self.held is None
            and [entry.id for entry in entries] == list(range(first, first + count))
        ):
            self.count += count
            self._extendRun(kind, queue, first, first + count - 1)
            return
        for entry in entries:
            self.entryEvent(kind, queue, entry.id)

    def entryRange(self, kind: bytes, queue: str, first: int, last: int) -> None:
        """
        The entries C{first} to C{last} of C{queue}, dequeued or acquired
        (C{kind} L{DEQUEUED} or L{ACQUIRED}), as one event whatever the
        width of the range (it extends the open run if it follows it). It
        counts as one event: the ids need not be entries this broker has
        (a catch-up tells a backup to drop what it holds and the primary
        no longer has).
        """
        self.count += 1
        self.held = None
        self._extendRun(kind, queue, first, last)

    def _extendRun(self, kind: bytes, queue: str, first: int, last: int) -> None:
        """
        Ids C{first} to C{last} of a run kind: added to the open run if they
        follow it, else the start of a new one.
        """
        run = self._run
        if run is not None:
            if run[3] + 1 == first and run[0] == kind and run[1] == queue:
                run[3] = last
                return
            self._endRun()
        self._run = [kind, queue, first, last]

    def queueDeclared(self, queue: Any, everConsumed: bool = False) -> None:
        """
        A queue's declaration, with its uuid (and whether it ever had a
        consumer, which an auto-delete queue's replica needs).
        """
        self.event(
            QUEUE_DECLARED,
            queue.name,
            queue.uuid,
            queue.durable,
            False,
            queue.autoDelete,
            everConsumed,
            queue.arguments,
        )

    def exchangeDeclared(self, exchange: Any) -> None:
        """
        An exchange's declaration.
        """
        self.event(
            EXCHANGE_DECLARED,
            exchange.name,
            exchange.type,
            "",
            exchange.durable,
            exchange.autoDelete,
            exchange.internal,
            exchange.arguments,
        )

    def binding(self, kind: bytes, binding: Any) -> None:
        """
        A binding made (L{BOUND}) or removed (L{UNBOUND}).
        """
        destination = binding.destination
        self.event(
            kind,
            binding.source.name,
            b"q" if isinstance(destination, Queue) else b"x",
            destination.name,
            binding.routingKey,
            binding.arguments,
        )

    def entry(self, queue: Any, entry: Any) -> None:
        """
        An entry of a queue (an L{ENQUEUED} event): its message, id,
        redelivered mark and deadline, and whether it was acquired at once.

        This is the hot event: encoded here in one go, added to the parts
        as they are, with each queue's name encoded once. If the next event
        acquires the entry, its flags byte is set then (L{entryEvent}), so
        that the two travel as one.
        """
        if self._run is not None:
            self._endRun()
        self.count += 1
        message = entry.message
        if queue.durable and message.persistent:
            self.transient = False
        queueName = queue.name
        prefix = self._names.get(queueName)
        if prefix is None:
            if len(self._names) > 1000:
                self._names.clear()
            raw = queueName.encode("utf-8")
            prefix = self._names[queueName] = ENQUEUED + _H.pack(len(raw)) + raw
        addressing = message.addressing
        header = message.header
        body = message.body
        expiresAt = entry.expiresAt
        self.held = entry
        self._heldName = queueName
        self.parts += (
            prefix,
            _qBqI(
                entry.id,
                1 if entry.redelivered else 0,
                0 if expiresAt is None else int(expiresAt * 1000),
                len(addressing),
            ),
            addressing,
            _I.pack(len(header)),
            header,
            _I.pack(len(body)),
            body,
        )

    def _acquiredHeld(self) -> None:
        """
        The entry of the last L{ENQUEUED} event was acquired as it was
        enqueued: set flag 2 of its flags byte (the byte after the id).
        """
        # Every other event clears the held entry first, so its seven parts
        # are the last ones: the packed fields are the sixth from the end.
        packed = bytes(self.parts[-6])
        self.parts[-6] = packed[:8] + bytes((packed[8] | 2,)) + packed[9:]

    def encoded(self, data: bytes, start: int, end: int, count: int) -> None:
        """
        C{count} events encoded already, C{data[start:end]}, of the default
        virtual host (as a box's are from its start), added as they are: a
        backup's store takes a catch-up batch's run of enqueues so (see
        L{qha.changes.replay.Verbatim}). They are not transient.

        They are not copied before the events are taken, and a piece that
        follows the last one in C{data} extends it: a whole batch taken in
        pieces (a step at a time) and nothing else is C{data} itself.
        """
        if not count:
            return
        self.scope(DEFAULT_VHOST)
        self.held = None
        if self._run is not None:
            self._endRun()
        last = self._encoded
        if last is not None and last[0] is data and last[2] == start and len(self.parts) == last[3] + 1:
            start = last[1]
            self.parts.pop()
        self._encoded = (data, start, end, len(self.parts))
        self.parts.append(data if start == 0 and end == len(data) else memoryview(data)[start:end])
        self.count += count
        self.transient = False

    def take(self) -> bytes:
        """
        The encoded events so far; the writer starts empty again.
        """
        self.held = None
        if self._run is not None:
            self._endRun()
        data = b"".join(self.parts)
        self.parts = []
        self._encoded = None
        self.count = 0
        self.transient = True
        self.vhost = DEFAULT_VHOST
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
    ENQUEUED: "sifibbb",  # and the deadline and acquired flag; see readEvents
    DEQUEUED: "si",
    ACQUIRED: "si",
    RELEASED: "si",
    DEQUEUED_RANGE: "sii",
    ACQUIRED_RANGE: "sii",
    VHOST: "s",
    VHOST_ADDED: "s",
    VHOST_DELETED: "s",
    USER_SET: "sss",
    USER_DELETED: "s",
    PERMISSIONS_SET: "sssss",
    PERMISSIONS_CLEARED: "ss",
    ACCOUNTS: "b",
    SETTINGS: "b",
    SNAPSHOT: "b",
    CAUGHT_UP: "",
    MEMBERS: "b",
}

# What each event and its fields are called, for saying which is wrong.
EVENT_NAMES: dict[bytes, str] = {
    QUEUE_DECLARED: "queue-declared",
    QUEUE_DELETED: "queue-deleted",
    EXCHANGE_DECLARED: "exchange-declared",
    EXCHANGE_DELETED: "exchange-deleted",
    BOUND: "bound",
    UNBOUND: "unbound",
    PURGED: "purged",
    ENQUEUED: "enqueued",
    DEQUEUED: "dequeued",
    ACQUIRED: "acquired",
    RELEASED: "released",
    DEQUEUED_RANGE: "dequeued-range",
    ACQUIRED_RANGE: "acquired-range",
    VHOST: "vhost",
    VHOST_ADDED: "vhost-added",
    VHOST_DELETED: "vhost-deleted",
    USER_SET: "user-set",
    USER_DELETED: "user-deleted",
    PERMISSIONS_SET: "permissions-set",
    PERMISSIONS_CLEARED: "permissions-cleared",
    ACCOUNTS: "accounts",
    SETTINGS: "settings",
    SNAPSHOT: "snapshot",
    CAUGHT_UP: "caught-up",
    MEMBERS: "members",
}
FIELD_NAMES: dict[bytes, tuple[str, ...]] = {
    QUEUE_DECLARED: ("queue", "uuid", "durable", "exclusive", "auto-delete", "ever-consumed", "arguments"),
    QUEUE_DELETED: ("queue", "uuid"),
    EXCHANGE_DECLARED: ("exchange", "type", "unused", "durable", "auto-delete", "internal", "arguments"),
    EXCHANGE_DELETED: ("exchange",),
    BOUND: ("source", "destination kind", "destination", "routing key", "arguments"),
    UNBOUND: ("source", "destination kind", "destination", "routing key", "arguments"),
    PURGED: ("queue",),
    DEQUEUED_RANGE: ("queue", "first id", "last id"),
    ACQUIRED_RANGE: ("queue", "first id", "last id"),
    VHOST: ("vhost",),
    VHOST_ADDED: ("vhost",),
    VHOST_DELETED: ("vhost",),
    USER_SET: ("user", "password hash", "tags"),
    USER_DELETED: ("user",),
    PERMISSIONS_SET: ("user", "vhost", "configure", "write", "read"),
    PERMISSIONS_CLEARED: ("user", "vhost"),
    ACCOUNTS: ("state",),
    SETTINGS: ("state",),
    SNAPSHOT: ("state",),
    CAUGHT_UP: (),
    MEMBERS: ("members",),
}

# The longest name (of a queue, an exchange, a type, a routing key, a uuid)
# an event may carry: AMQP's short string.
MAX_NAME = 255
# Ids are 63-bit: 0 <= id < 2**63 (an 8-byte signed field is never more).
# Destination kinds of a binding event.
_DESTINATIONS = (b"q", b"x")
# Flags of an ENQUEUED event: redelivered (1) and acquired (2).
_ENQUEUED_FLAGS = 3


_ENTRY_EVENTS = frozenset((ENQUEUED, DEQUEUED, ACQUIRED, RELEASED))
_VHOST_EVENTS = frozenset((VHOST, VHOST_ADDED, VHOST_DELETED))
# The events of run-time account changes, by the change's kind, and back.
ACCOUNT_KINDS: dict[str, bytes] = {
    _accounts.USER_SET: USER_SET,
    _accounts.USER_DELETED: USER_DELETED,
    _accounts.PERMISSIONS_SET: PERMISSIONS_SET,
    _accounts.PERMISSIONS_CLEARED: PERMISSIONS_CLEARED,
    _accounts.ACCOUNTS_STATE: ACCOUNTS,
}
ACCOUNT_CHANGES: dict[bytes, str] = {kind: name for name, kind in ACCOUNT_KINDS.items()}
_CHECKED_ACCOUNT_EVENTS = frozenset((USER_SET, USER_DELETED, PERMISSIONS_SET, PERMISSIONS_CLEARED))


def vhostNameProblem(name: str) -> str | None:
    """
    What is wrong with C{name} as the name of a virtual host in an event
    (empty, or with a control character; its length is checked as every
    name's is), or L{None}.
    """
    if not name:
        return "the vhost has no name"
    if any(ord(character) < 32 or ord(character) == 127 for character in name):
        return f"vhost name {name[:64]!r} contains a control character"
    return None
_RANGES = {DEQUEUED: DEQUEUED_RANGE, ACQUIRED: ACQUIRED_RANGE}


class MalformedEvents(ValueError):
    """
    A replication box (or a journal record) could not be decoded, or one of
    its events carries a value no primary sends; the message names the
    event, where it starts and the field.
    """


def _malformed(kind: bytes, start: int, what: str) -> MalformedEvents:
    """
    The error for event C{kind} starting at offset C{start}: C{what} is
    wrong with it.
    """
    return MalformedEvents(f"malformed {EVENT_NAMES[kind]} event at offset {start}: {what}")


def readEvents(data: bytes, start: int = 0) -> Iterator[tuple[Any, ...]]:
    """
    Decode the events in C{data} (from offset C{start}, where an event
    starts): tuples of the type byte and its fields.

    Every field is checked as it is decoded, so that what the events cost
    to apply depends on what a queue holds, never on the numbers in them:
    names are at most L{MAX_NAME} bytes of UTF-8, ids are 0 to 2**63 - 1
    and a range's first id is not after its last, flags are flags, lengths
    stay within the box, and tables nest at most
    L{qha.broker.message.MAX_TABLE_DEPTH} deep. (The checks of the hot
    events are a few comparisons each.)

    @raise MalformedEvents: if C{data} is not a valid encoding, naming the
        event and the field.
    """
    offset = start
    end = len(data)
    view = memoryview(data)
    unpackH = _H.unpack_from
    unpackI = _I.unpack_from
    unpackq = _q.unpack_from
    unpackqBqI = _qBqIs.unpack_from
    kind = b""
    # The previous entry event's queue name (as encoded and decoded), and
    # the previous enqueue's addressing and header.
    lastName = b""
    name = ""
    addressing = header = b""
    try:
        while offset < end:
            start = offset
            kind = data[offset : offset + 1]
            offset += 1
            if kind in _ENTRY_EVENTS:
                # The hot events, decoded without the generic loop. Runs of
                # them name the same queue, and a catch-up's messages mostly
                # share their addressing and header: those equal to the
                # previous event's are not decoded or copied again (the
                # messages share the bytes).
                length = unpackH(data, offset)[0]
                offset += 2
                if length != len(lastName) or not data.startswith(lastName, offset):
                    if length > MAX_NAME:
                        raise _malformed(kind, start, f"queue name of {length} bytes (at most {MAX_NAME})")
                    name = str(view[offset : offset + length], "utf-8")
                    lastName = data[offset : offset + length]
                offset += length
                if kind == ENQUEUED:
                    id, flags, expiresAt, length = unpackqBqI(data, offset)
                    offset += 21
                    if id < 0:
                        raise _malformed(kind, start, f"id {id} is negative")
                    if flags > _ENQUEUED_FLAGS or expiresAt < 0:
                        raise _malformed(
                            kind,
                            start,
                            f"flags 0x{flags:02x}" if flags > _ENQUEUED_FLAGS
                            else f"deadline {expiresAt} is negative",
                        )
                    if length == len(addressing) and data.startswith(addressing, offset):
                        offset += length
                    else:
                        addressing = data[offset : offset + length]
                        offset += length
                    length = unpackI(data, offset)[0]
                    offset += 4
                    if length == len(header) and data.startswith(header, offset):
                        offset += length
                    else:
                        header = data[offset : offset + length]
                        offset += length
                    length = unpackI(data, offset)[0]
                    body = data[offset + 4 : offset + 4 + length]
                    offset += 4 + length
                    if offset > end:
                        raise _malformed(kind, start, "it runs past the end of the box")
                    yield (
                        kind,
                        name,
                        id,
                        flags & 1 == 1,
                        addressing,
                        header,
                        body,
                        expiresAt / 1000.0 if expiresAt else None,
                        flags & 2 == 2,
                    )
                else:
                    id = unpackq(data, offset)[0]
                    offset += 8
                    if id < 0:
                        raise _malformed(kind, start, f"id {id} is negative")
                    if offset > end:
                        raise _malformed(kind, start, "it runs past the end of the box")
                    yield (kind, name, id)
                continue
            layout = LAYOUTS.get(kind)
            if layout is None:
                raise MalformedEvents(f"unknown event type {kind!r} at offset {start}")
            fields: list[Any] = [kind]
            for index, code in enumerate(layout):
                if code == "s":
                    length = _H.unpack_from(data, offset)[0]
                    offset += 2
                    if length > MAX_NAME:
                        raise _malformed(
                            kind,
                            start,
                            f"{FIELD_NAMES[kind][index]} of {length} bytes (at most {MAX_NAME})",
                        )
                    fields.append(str(view[offset : offset + length], "utf-8"))
                    offset += length
                elif code == "b":
                    length = _I.unpack_from(data, offset)[0]
                    offset += 4
                    fields.append(data[offset : offset + length])
                    offset += length
                elif code == "i":
                    value = _q.unpack_from(data, offset)[0]
                    if value < 0:
                        raise _malformed(kind, start, f"{FIELD_NAMES[kind][index]} {value} is negative")
                    fields.append(value)
                    offset += 8
                elif code == "f":
                    flag = data[offset]
                    if flag > 1:
                        raise _malformed(
                            kind, start, f"{FIELD_NAMES[kind][index]} is 0x{flag:02x}, not a boolean"
                        )
                    fields.append(flag == 1)
                    offset += 1
                else:
                    try:
                        offset, table = decodeTable(data, offset)
                    except ValueError as error:
                        raise _malformed(kind, start, f"{FIELD_NAMES[kind][index]}: {error}") from None
                    fields.append(table)
            if offset > end:
                raise _malformed(kind, start, "it runs past the end of the box")
            if kind in (DEQUEUED_RANGE, ACQUIRED_RANGE) and fields[2] > fields[3]:
                raise _malformed(kind, start, f"first id {fields[2]} is after last id {fields[3]}")
            elif kind in (BOUND, UNBOUND) and fields[2] not in _DESTINATIONS:
                raise _malformed(kind, start, f"destination kind {fields[2]!r} is neither b'q' nor b'x'")
            elif kind == QUEUE_DECLARED and not fields[1]:
                raise _malformed(kind, start, "the queue has no name")
            elif kind in _VHOST_EVENTS:
                problem = vhostNameProblem(fields[1])
                if problem is not None:
                    raise _malformed(kind, start, problem)
            elif kind in _CHECKED_ACCOUNT_EVENTS:
                problem = _accounts.changeProblem(ACCOUNT_CHANGES[kind], tuple(fields[1:]))
                if problem is not None:
                    raise _malformed(kind, start, problem)
            yield tuple(fields)
    except MalformedEvents:
        raise
    except UnicodeDecodeError as error:
        raise _malformed(kind, start, f"a name is not UTF-8 ({error.reason})") from None
    except (struct.error, IndexError, ValueError, KeyError, TypeError, RecursionError) as error:
        raise MalformedEvents(f"undecodable event at offset {start}: {error}") from None
