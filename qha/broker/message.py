"""
Messages as the broker holds them: the raw bytes a publisher sent, decoded only
when something needs to look inside.

The AMQP layer forwards the content header and body bytes to consumers as they
arrived, which is many times cheaper than decoding and re-encoding them; the
broker model decodes properties lazily (for the headers exchange, persistence,
expiry).
"""

from __future__ import annotations

import calendar
import datetime
import decimal
import struct
import sys
from typing import TYPE_CHECKING, Any

from pamqp import commands, decode
from pamqp.header import ContentHeader

if TYPE_CHECKING:
    from .paging import IBodyStore

_unpackShort = struct.Struct(">H").unpack_from
_unpackLong = struct.Struct(">I").unpack_from

# Basic property flags, in wire order.
_PROPERTIES = [
    ("content_type", 0x8000, "shortstr"),
    ("content_encoding", 0x4000, "shortstr"),
    ("headers", 0x2000, "table"),
    ("delivery_mode", 0x1000, "octet"),
    ("priority", 0x0800, "octet"),
    ("correlation_id", 0x0400, "shortstr"),
    ("reply_to", 0x0200, "shortstr"),
    ("expiration", 0x0100, "shortstr"),
    ("message_id", 0x0080, "shortstr"),
    ("timestamp", 0x0040, "timestamp"),
    ("type", 0x0020, "shortstr"),
    ("user_id", 0x0010, "shortstr"),
    ("app_id", 0x0008, "shortstr"),
    ("cluster_id", 0x0004, "shortstr"),
]


# Property flags of variable-size properties (short strings and the table).
_VARIABLE = 0xFFFC & ~(0x1000 | 0x0800 | 0x0040)

# How deep tables and arrays may nest in one field table. pamqp decodes them
# recursively, two Python frames a level: an input nested a few hundred
# deep ends in RecursionError, and one a little less deep fails later in a
# deeper stack. 64 is far beyond what any client sends (rabbitmq-c stops at
# 100 for the same reason).
MAX_TABLE_DEPTH = 64

# The size of each fixed-size field value, by its type byte.
_FIXED_VALUES = {
    ord(code): size
    for code, size in (
        ("t", 1), ("b", 1), ("B", 1), ("s", 2), ("u", 2), ("I", 4), ("i", 4), ("l", 8),
        ("L", 8), ("f", 4), ("d", 8), ("D", 5), ("T", 8), ("V", 0), ("\x00", 0),
    )
}
_LONG_VALUES = frozenset(b"Sx")
_TABLE, _ARRAY = ord("F"), ord("A")


def _walkTable(data: bytes, offset: int, depth: int, most: int) -> int:
    """
    Walk the field table at C{offset} of C{data} (its 4-byte length first)
    in one pass over its bytes, without recursion, counting its field
    values, nested ones included: the one walk of L{checkTableDepth} and
    L{countTableFields}. A malformed table is walked as far as it goes;
    the decoder finds what is wrong with it.

    @param depth: how deep tables and arrays may nest.
    @param most: stop counting once the count passes it.
    @return: the count (at most C{most + 1}).
    @raise ValueError: if tables nest deeper than C{depth} before the
        count passes C{most}.
    """
    count = 0
    try:
        length = _unpackLong(data, offset)[0]
        offset += 4
        # Each level: whether it is a table (keys before values), and its end.
        stack = [(True, offset + length)]
        while stack:
            isTable, stop = stack[-1]
            if offset >= stop:
                stack.pop()
                continue
            if isTable:
                offset += 1 + data[offset]
            code = data[offset]
            offset += 1
            count += 1
            if count > most:
                return count
            size = _FIXED_VALUES.get(code)
            if size is not None:
                offset += size
            elif code in _LONG_VALUES:
                offset += 4 + _unpackLong(data, offset)[0]
            elif code == _TABLE or code == _ARRAY:
                if len(stack) >= depth:
                    # Malformed rather than large: said as the decoder would.
                    raise ValueError(f"tables nest deeper than {depth} levels")
                length = _unpackLong(data, offset)[0]
                offset += 4
                stack.append((code == _TABLE, offset + length))
            else:
                return count
    except (IndexError, struct.error):
        return count
    return count


def checkTableDepth(data: bytes, offset: int = 0, limit: int = MAX_TABLE_DEPTH) -> None:
    """
    Check that the field table at C{offset} of C{data} (its 4-byte length
    first) nests tables and arrays at most C{limit} deep, without
    recursion: one pass over its bytes. Anything else wrong with it is left
    for the decoder to find.

    @raise ValueError: if it nests deeper.
    """
    _walkTable(data, offset, limit, sys.maxsize)


class TableTooLarge(ValueError):
    """
    A headers table has more fields than the broker takes (a limit, not a
    malformed table: the channel is closed with 406, not the connection).
    """


def countTableFields(data: bytes, offset: int, limit: int) -> int:
    """
    The number of field values in the table at C{offset} of C{data} (its
    4-byte length first), nested ones included, counted in one pass over
    its bytes and only up to just past C{limit}, so a huge table costs no
    more than one of C{limit} fields. A malformed table is counted as far
    as it goes; the decoder finds what is wrong with it.

    @raise ValueError: if tables nest deeper than L{MAX_TABLE_DEPTH} before
        the count passes C{limit}.
    """
    return _walkTable(data, offset, MAX_TABLE_DEPTH, limit)


def checkNesting(table: Any, limit: int = MAX_TABLE_DEPTH) -> None:
    """
    Check that a decoded field table (or array) nests tables and arrays at
    most C{limit} deep, without recursion: what L{checkTableDepth} checks
    of the bytes, for a table a decoder gave already (the arguments of a
    method frame), so that the broker never holds one that its replication
    stream or its store would refuse.

    @raise ValueError: if it nests deeper.
    """
    level: list[Any] = [table]
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            raise ValueError(f"tables nest deeper than {limit} levels")
        nested: list[Any] = []
        for value in level:
            for item in value.values() if isinstance(value, dict) else value:
                if isinstance(item, (dict, list, tuple)):
                    nested.append(item)
        level = nested


def decodeTable(data: bytes, offset: int = 0) -> tuple[int, dict[str, Any]]:
    """
    Decode the field table at C{offset} of C{data} (its 4-byte length
    first), nested at most L{MAX_TABLE_DEPTH} deep.

    @return: the offset after it, and the table.
    @raise ValueError: saying what is wrong, whatever is wrong with it.
    """
    try:
        length = _unpackLong(data, offset)[0]
        end = offset + 4 + length
        if end > len(data):
            raise ValueError(f"the table claims {length} bytes but {len(data) - offset - 4} are left")
        if data.find(b"F", offset + 4, end) >= 0 or data.find(b"A", offset + 4, end) >= 0:
            # Without those type bytes nothing can nest: most tables skip
            # the scan.
            checkTableDepth(data, offset)
        consumed, table = decode.field_table(data[offset:end])
    except ValueError:
        raise
    except (RecursionError, struct.error, IndexError, KeyError, TypeError, UnicodeDecodeError) as error:
        raise ValueError(f"undecodable table: {error}") from None
    return offset + consumed, table


def checkProperties(header: bytes, maxFields: int = 0) -> None:
    """
    Check that the properties of a content header payload are well formed,
    so that a bad publisher cannot hand other clients a message their
    libraries cannot decode. Cheap when there is no headers table; a table
    is decoded to check it.

    @param maxFields: the most fields the headers table may have, nested
        ones included (0: any number); counted before the table is decoded.
    @raise TableTooLarge: if the headers table has more.
    @raise ValueError: saying what is wrong.
    """
    end = len(header)
    flags = _unpackShort(header, 12)[0]
    if flags & 0x0003:
        raise ValueError(f"property flags 0x{flags:04x} set reserved or continuation bits")
    if not flags & _VARIABLE:
        # Only fixed-size properties (delivery mode, priority, timestamp),
        # as most messages have: the length says it all.
        expected = 14 + bool(flags & 0x1000) + bool(flags & 0x0800) + 8 * bool(flags & 0x0040)
        if end == expected:
            return
    offset = 14
    for name, flag, kind in _PROPERTIES:
        if not flags & flag:
            continue
        if offset >= end:
            raise ValueError(f"property {name} is missing (header ends at byte {end})")
        if kind == "shortstr":
            offset += 1 + header[offset]
        elif kind == "octet":
            offset += 1
        elif kind == "timestamp":
            offset += 8
        else:
            if offset + 4 > end:
                raise ValueError("the headers table's length is cut off")
            length = _unpackLong(header, offset)[0]
            if offset + 4 + length > end:
                raise ValueError(
                    f"the headers table claims {length} bytes but the header has"
                    f" {end - offset - 4} left"
                )
            if maxFields and countTableFields(header, offset, maxFields) > maxFields:
                raise TableTooLarge(
                    f"the headers table has more than {maxFields} fields (the"
                    " broker's --max-header-fields)"
                )
            try:
                decodeTable(header, offset)
            except Exception as error:
                raise ValueError(f"the headers table cannot be decoded: {error}") from None
            offset += 4 + length
        if offset > end:
            raise ValueError(f"property {name} runs past the end of the header")
    if offset != end:
        raise ValueError(f"{end - offset} bytes follow the last property")


def encodeValue(value: Any) -> bytes:
    """
    One AMQP field value, as RabbitMQ reads it. Unlike pamqp 4, floats are
    encoded as doubles, so a header survives a round trip unchanged.
    """
    if value is None:
        return b"V"
    if isinstance(value, bool):
        return b"t" + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        if -(2**31) <= value < 2**31:
            return b"I" + struct.pack(">i", value)
        return b"l" + struct.pack(">q", value)
    if isinstance(value, float):
        return b"d" + struct.pack(">d", value)
    if isinstance(value, str):
        raw = value.encode("utf-8")
        return b"S" + struct.pack(">I", len(raw)) + raw
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        return b"x" + struct.pack(">I", len(raw)) + raw
    if isinstance(value, dict):
        return b"F" + encodeTable(value)
    if isinstance(value, (list, tuple)):
        items = b"".join(encodeValue(item) for item in value)
        return b"A" + struct.pack(">I", len(items)) + items
    if isinstance(value, datetime.datetime):
        return b"T" + struct.pack(">Q", calendar.timegm(value.utctimetuple()))
    if isinstance(value, decimal.Decimal):
        sign, digits, exponent = value.as_tuple()
        places = max(0, -int(exponent))
        unscaled = int(value.scaleb(places))
        return b"D" + struct.pack(">Bi", places, unscaled)
    raise TypeError(f"cannot encode {type(value).__name__} in an AMQP table")


def encodeTable(table: dict[str, Any]) -> bytes:
    """
    An AMQP field table.
    """
    items = b"".join(encodeShortString(key) + encodeValue(value) for key, value in table.items())
    return struct.pack(">I", len(items)) + items


def encodeProperties(properties: dict[str, Any]) -> bytes:
    """
    Property flags and values for a content header.
    """
    flags = 0
    parts = []
    for name, flag, kind in _PROPERTIES:
        value = properties.get(name)
        if value is None:
            continue
        flags |= flag
        if kind == "shortstr":
            parts.append(encodeShortString(value))
        elif kind == "octet":
            parts.append(bytes((value,)))
        elif kind == "table":
            parts.append(encodeTable(value))
        else:
            if isinstance(value, datetime.datetime):
                value = calendar.timegm(value.utctimetuple())
            parts.append(struct.pack(">Q", value))
    return struct.pack(">H", flags) + b"".join(parts)


def encodeShortString(value: str) -> bytes:
    """
    Encode C{value} as an AMQP short string (one length byte, then UTF-8).

    @raise ValueError: if the UTF-8 form is longer than 255 bytes.
    """
    raw = value.encode("utf-8")
    if len(raw) > 255:
        raise ValueError(f"short string too long ({len(raw)} bytes, at most 255)")
    return bytes((len(raw),)) + raw


def decodeAddressing(addressing: bytes) -> tuple[str, str]:
    """
    Decode the exchange and routing key short strings of C{addressing}.
    """
    exchangeLength = addressing[0]
    exchange = addressing[1 : 1 + exchangeLength].decode("utf-8", "replace")
    keyStart = 1 + exchangeLength
    keyLength = addressing[keyStart]
    routingKey = addressing[keyStart + 1 : keyStart + 1 + keyLength].decode(
        "utf-8", "replace"
    )
    return exchange, routingKey


Scan = tuple[int, int, str | None, int]
"""
What L{scanProperties} reads of a content header: C{(deliveryMode,
priority, expiration, replyTo)}.
"""


def scanProperties(header: bytes, replyToOnly: bool = False) -> Scan:
    """
    Read a content header payload's delivery mode, priority and expiration,
    and find its C{reply_to}, straight off the property bytes without
    decoding the rest: the one walk of the properties that a message's
    policy (L{Message.priority}, L{Message.persistent},
    L{Message.expiration}) and direct reply-to's rewrite of C{reply_to}
    (L{qha.amqp.replyto}) both make, on every publish that needs them.

    @param replyToOnly: stop at C{reply_to} when there is one (the
        expiration, which follows it, is then not read: L{None}).
    @return: C{(deliveryMode, priority, expiration, replyTo)}: the delivery
        mode and priority (0 when absent), the expiration text (L{None} when
        absent), and the offset of C{reply_to}'s length byte in C{header}
        (-1 when absent).
    @raise ValueError: if the flags say that a second flag word follows.
    @raise IndexError: if the header is cut short.
    @raise struct.error: if it ends before its property flags.
    @raise UnicodeDecodeError: if the expiration is not UTF-8.
    """
    flags = _unpackShort(header, 12)[0]
    if not flags & 0xE701:
        # Nothing of variable length before the expiration, and none:
        # delivery mode and priority stand at fixed places (most messages).
        if flags & 0x1000:
            return (header[14], header[15] if flags & 0x0800 else 0, None, -1)
        return (0, header[14] if flags & 0x0800 else 0, None, -1)
    if flags & 1:
        raise ValueError("more than one flag word")
    offset = 14
    deliveryMode = priority = 0
    replyTo = -1
    expiration = None
    if flags & 0x8000:
        offset += 1 + header[offset]
    if flags & 0x4000:
        offset += 1 + header[offset]
    if flags & 0x2000:
        offset += 4 + _unpackLong(header, offset)[0]
    if flags & 0x1000:
        deliveryMode = header[offset]
        offset += 1
    if flags & 0x0800:
        priority = header[offset]
        offset += 1
    if flags & 0x0400:
        offset += 1 + header[offset]
    if flags & 0x0200:
        if replyToOnly:
            return (deliveryMode, priority, None, offset)
        replyTo = offset
        offset += 1 + header[offset]
    if flags & 0x0100:
        length = header[offset]
        expiration = header[offset + 1 : offset + 1 + length].decode("utf-8")
    return (deliveryMode, priority, expiration, replyTo)


class Message:
    """
    One published message.

    A message routed to several queues is one object shared by all of them;
    each queue keeps its own L{qha.broker.queue.Entry} for it.

    @ivar addressing: the exchange and routing key it was published with, as
        two AMQP short strings back to back, exactly as they appear in
        basic.deliver, basic.get-ok and basic.return.
    @ivar header: the content header frame payload (class, weight, body size,
        property flags and properties) as the publisher sent it.
    @ivar body: the body, all frames joined.
    """

    __slots__ = ("addressing", "header", "body", "_properties", "_scan")

    paged = False
    """
    Whether the body is paged out to disk (see L{PagedMessage}).
    """

    def __init__(self, addressing: bytes, header: bytes, body: bytes) -> None:
        self.addressing = addressing
        self.header = header
        self.body = body
        self._properties: commands.Basic.Properties | None = None
        self._scan: Scan | None = None

    def _scanned(self) -> Scan:
        """
        Delivery mode, priority and expiration read straight off the header
        bytes (L{scanProperties}), without decoding the rest (a policy queue
        needs them for every message); from the decoded properties should
        the header not scan.
        """
        scan = self._scan
        if scan is not None:
            return scan
        try:
            scan = scanProperties(self.header)
        except (ValueError, IndexError, struct.error, UnicodeDecodeError):
            properties = self.properties
            scan = (
                properties.delivery_mode or 0,
                properties.priority or 0,
                properties.expiration,
                -1,
            )
        self._scan = scan
        return scan

    @property
    def priority(self) -> int:
        """
        The message's priority property (0 if it has none).
        """
        scan = self._scan
        return (scan if scan is not None else self._scanned())[1]

    @property
    def persistent(self) -> bool:
        """
        Whether the message asks to be kept on disk (delivery mode 2).
        """
        scan = self._scan
        return (scan if scan is not None else self._scanned())[0] == 2

    @property
    def expiration(self) -> int | None:
        """
        The per-message TTL in milliseconds from the expiration property, or
        L{None}. An invalid value counts as none (the AMQP layer refuses it
        on publish).
        """
        scan = self._scan
        text = (scan if scan is not None else self._scanned())[2]
        if text is None:
            return None
        try:
            value = int(text)
        except ValueError:
            return None
        return value if value >= 0 else None

    def rebuilt(
        self,
        exchange: str,
        routingKey: str,
        headers: dict[str, Any],
        dropExpiration: bool = False,
    ) -> "Message":
        """
        A copy addressed anew, with C{headers} as its headers table (for
        dead-lettering). The body is shared.
        """
        # Only the properties the header carries (pamqp reports an absent
        # cluster_id as ''), under pamqp's names (type is message_type).
        flags = struct.unpack_from(">H", self.header, 12)[0] if len(self.header) >= 14 else 0
        properties = {
            name: getattr(self.properties, "message_type" if name == "type" else name, None)
            if flags & flag
            else None
            for name, flag, _ in _PROPERTIES
        }
        properties["headers"] = headers
        if dropExpiration:
            properties["expiration"] = None
        header = self.header[:12] + encodeProperties(properties)
        return Message(
            encodeShortString(exchange) + encodeShortString(routingKey), header, self.body
        )

    @classmethod
    def build(
        cls,
        exchange: str,
        routingKey: str,
        body: bytes,
        properties: commands.Basic.Properties | None = None,
    ) -> "Message":
        """
        Build a message from its parts (for tests and for messages the
        broker itself makes).
        """
        header = ContentHeader(0, len(body), properties).marshal()
        return cls(
            encodeShortString(exchange) + encodeShortString(routingKey), header, body
        )

    @property
    def exchange(self) -> str:
        """
        The name of the exchange the message was published to.
        """
        return decodeAddressing(self.addressing)[0]

    @property
    def routingKey(self) -> str:
        """
        The routing key the message was published with.
        """
        return decodeAddressing(self.addressing)[1]

    @property
    def properties(self) -> commands.Basic.Properties:
        """
        The decoded basic properties, decoded on first use.

        Properties that do not decode (a publisher sent garbage) count as
        none: they are decoded lazily, in whatever connection or timer
        first needs them (another client's reject that dead-letters the
        message, a TTL expiry), and must not make the broker fail there.
        """
        if self._properties is None:
            content = ContentHeader()
            try:
                content.unmarshal(self.header)
            except Exception:
                self._properties = commands.Basic.Properties()
            else:
                self._properties = content.properties
        return self._properties

    @property
    def headers(self) -> dict[str, Any]:
        """
        The application headers table, empty if there is none (read off the
        property flags without decoding anything).
        """
        header = self.header
        if self._properties is None and len(header) > 12 and not header[12] & 0x20:
            return {}
        return self.properties.headers or {}

    @property
    def size(self) -> int:
        """
        The body size in bytes.
        """
        return len(self.body)

    @property
    def resident(self) -> int:
        """
        The body bytes this message holds in memory: its size, or 0 once
        paged out.
        """
        return len(self.body)

    def __repr__(self) -> str:
        return (
            f"<Message exchange={self.exchange!r} routingKey={self.routingKey!r}"
            f" size={len(self.body)}>"
        )


# How many bits of a paged message's packed page hold the body's size (the
# location takes the bits above them).
_SIZE_BITS = 40
_SIZE_MASK = (1 << _SIZE_BITS) - 1

# The scans (L{scanProperties}) of paged messages, one tuple for each value
# seen (a handful): a paged message keeps a shared one. The reply_to offset
# served the publish only, so a paged message's scan forgets it (-1).
_SCANS: dict[Scan, Scan] = {}


class PagedMessage(Message):
    """
    A message whose body was paged out to an L{IBodyStore}: what the broker
    needs to route, order and account for it (addressing, content header,
    size) stays in memory, the body is read back when asked for.

    A queue reads its paged bodies back, a window at a time, before it
    delivers them (L{qha.broker.queue.Queue}); reading L{body} here is the
    slow path for anything else that needs one (a catch-up snapshot, the
    management API's get), one read each.

    A backlog of millions of these is what stays in memory of a paged
    queue, so each is kept small: the body's location and size packed in
    one integer, what was scanned of the header shared with the others
    that have the same (and the queue shares the addressing and header
    bytes of consecutive messages that have the same, see
    L{qha.broker.queue.Queue}).

    @ivar bodies: the store that holds the body.
    """

    __slots__ = ("_page", "bodies")

    paged = True

    def __init__(
        self,
        addressing: bytes,
        header: bytes,
        size: int,
        location: int,
        bodies: "IBodyStore",
    ) -> None:
        self.addressing = addressing
        self.header = header
        self._page = (location << _SIZE_BITS) | size
        self.bodies = bodies
        self._properties = None
        self._scan = None

    @classmethod
    def pageOut(
        cls,
        message: Message,
        bodies: "IBodyStore",
        addressing: bytes | None = None,
        header: bytes | None = None,
    ) -> "PagedMessage":
        """
        Write the body of C{message} to C{bodies}; return the paged form,
        which keeps what C{message} already decoded of its header.

        @param addressing: bytes equal to C{message}'s addressing, to keep
            instead of its own (shared with other paged messages).
        @param header: the same, for its content header.
        """
        body = message.body
        paged = cls(
            message.addressing if addressing is None else addressing,
            message.header if header is None else header,
            len(body),
            bodies.write(body),
            bodies,
        )
        paged._properties = message._properties
        scan = message._scan
        if scan is not None:
            if scan[3] >= 0:
                scan = (scan[0], scan[1], scan[2], -1)
            if len(_SCANS) < 1024:
                scan = _SCANS.setdefault(scan, scan)
            paged._scan = scan
        return paged

    @property
    def location(self) -> int:
        """
        Where the body is, in L{bodies}.
        """
        return self._page >> _SIZE_BITS

    def pageIn(self, body: bytes) -> Message:
        """
        The message again with C{body} (read back) in memory.
        """
        message = Message(self.addressing, self.header, body)
        message._properties = self._properties
        message._scan = self._scan
        return message

    @property  # type: ignore[override]
    def body(self) -> bytes:  # type: ignore[override]
        """
        The body, read back from the store (one read).
        """
        page = self._page
        return self.bodies.read([(page >> _SIZE_BITS, page & _SIZE_MASK)])[0]

    @property
    def size(self) -> int:
        """
        The body size in bytes, known without reading it back.
        """
        return self._page & _SIZE_MASK

    @property
    def resident(self) -> int:
        """
        Nothing of the body is in memory.
        """
        return 0

    def __repr__(self) -> str:
        return (
            f"<PagedMessage exchange={self.exchange!r} routingKey={self.routingKey!r}"
            f" size={self.size} location={self.location}>"
        )
