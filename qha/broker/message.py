"""
Messages as the broker holds them: the raw bytes a publisher sent, decoded only
when something needs to look inside.

The AMQP layer forwards the content header and body bytes to consumers as they
arrived, which is many times cheaper than decoding and re-encoding them; the
broker model decodes properties lazily (for the headers exchange, persistence,
expiry).
"""

from __future__ import annotations

import struct
from typing import Any

from pamqp import commands
from pamqp.header import ContentHeader

_unpackShortStrLen = struct.Struct(">B").unpack_from


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

    __slots__ = ("addressing", "header", "body", "_properties")

    def __init__(self, addressing: bytes, header: bytes, body: bytes) -> None:
        self.addressing = addressing
        self.header = header
        self.body = body
        self._properties: commands.Basic.Properties | None = None

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
        """
        if self._properties is None:
            content = ContentHeader()
            content.unmarshal(self.header)
            self._properties = content.properties
        return self._properties

    @property
    def headers(self) -> dict[str, Any]:
        """
        The application headers table, empty if there is none.
        """
        return self.properties.headers or {}

    @property
    def size(self) -> int:
        """
        The body size in bytes.
        """
        return len(self.body)

    def __repr__(self) -> str:
        return (
            f"<Message exchange={self.exchange!r} routingKey={self.routingKey!r}"
            f" size={len(self.body)}>"
        )
