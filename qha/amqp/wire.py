"""
AMQP 0-9-1 frames the server sends, encoded with C{struct}.

pamqp 4 validates exchange and queue names when a method object is built, so
a name a client may legally use could make building a reply fail; and its
generic marshalling costs several microseconds a message. The server's own
methods are few and fixed, so they are encoded here; pamqp decodes what
clients send.
"""

from __future__ import annotations

import struct
from typing import Any

from pamqp import encode

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END = b"\xce"
FRAME_END_BYTE = 0xCE

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"

_frameHeader = struct.Struct(">BHI")
_methodHeader = struct.Struct(">BHIHH")
_longlong = struct.Struct(">Q")
_short = struct.Struct(">H")
_long = struct.Struct(">I")

packFrameHeader = _frameHeader.pack
packMethodHeader = _methodHeader.pack
packLongLong = _longlong.pack


def shortstr(value: str) -> bytes:
    """
    An AMQP short string; longer values are cut at 255 bytes.
    """
    raw = value.encode("utf-8")[:255]
    return bytes((len(raw),)) + raw


def longstr(value: bytes) -> bytes:
    """
    An AMQP long string.
    """
    return _long.pack(len(value)) + value


def table(value: dict[str, Any]) -> bytes:
    """
    An AMQP field table.
    """
    return encode.field_table(value)


def bits(*flags: bool) -> bytes:
    """
    Up to eight bit fields packed into one octet.
    """
    octet = 0
    for position, flag in enumerate(flags):
        if flag:
            octet |= 1 << position
    return bytes((octet,))


def method(channel: int, classId: int, methodId: int, payload: bytes = b"") -> bytes:
    """
    One method frame.
    """
    return (
        _methodHeader.pack(FRAME_METHOD, channel, len(payload) + 4, classId, methodId)
        + payload
        + FRAME_END
    )


def content(channel: int, header: bytes, body: bytes, frameMax: int) -> bytes:
    """
    The content header frame and as many body frames as C{frameMax} needs.
    """
    parts = [_frameHeader.pack(FRAME_HEADER, channel, len(header)), header, FRAME_END]
    limit = frameMax - 8 if frameMax else len(body) or 1
    if len(body) <= limit:
        if body:
            parts += [_frameHeader.pack(FRAME_BODY, channel, len(body)), body, FRAME_END]
    else:
        view = memoryview(body)
        for start in range(0, len(body), limit):
            chunk = bytes(view[start : start + limit])
            parts += [_frameHeader.pack(FRAME_BODY, channel, len(chunk)), chunk, FRAME_END]
    return b"".join(parts)


# Connection class (10)


def connectionStart(serverProperties: dict[str, Any], mechanisms: str) -> bytes:
    return method(
        0,
        10,
        10,
        b"\x00\x09"
        + table(serverProperties)
        + longstr(mechanisms.encode())
        + longstr(b"en_US"),
    )


def connectionTune(channelMax: int, frameMax: int, heartbeat: int) -> bytes:
    return method(0, 10, 30, struct.pack(">HIH", channelMax, frameMax, heartbeat))


def connectionOpenOk() -> bytes:
    return method(0, 10, 41, shortstr(""))


def connectionClose(code: int, text: str, classId: int = 0, methodId: int = 0) -> bytes:
    return method(
        0, 10, 50, _short.pack(code) + shortstr(text) + struct.pack(">HH", classId, methodId)
    )


def connectionCloseOk() -> bytes:
    return method(0, 10, 51)


def connectionBlocked(reason: str) -> bytes:
    return method(0, 10, 60, shortstr(reason))


def connectionUnblocked() -> bytes:
    return method(0, 10, 61)


# Channel class (20)


def channelOpenOk(channel: int) -> bytes:
    return method(channel, 20, 11, longstr(b""))


def channelFlow(channel: int, active: bool) -> bytes:
    return method(channel, 20, 20, bits(active))


def channelFlowOk(channel: int, active: bool) -> bytes:
    return method(channel, 20, 21, bits(active))


def channelClose(
    channel: int, code: int, text: str, classId: int = 0, methodId: int = 0
) -> bytes:
    return method(
        channel,
        20,
        40,
        _short.pack(code) + shortstr(text) + struct.pack(">HH", classId, methodId),
    )


def channelCloseOk(channel: int) -> bytes:
    return method(channel, 20, 41)


# Exchange (40), queue (50), basic (60), confirm (85), tx (90)


def simple(channel: int, classId: int, methodId: int) -> bytes:
    """
    A method with no arguments (declare-ok, bind-ok and the like).
    """
    return method(channel, classId, methodId)


def queueDeclareOk(channel: int, name: str, messages: int, consumers: int) -> bytes:
    return method(channel, 50, 11, shortstr(name) + struct.pack(">II", messages, consumers))


def queueMessageCountOk(channel: int, methodId: int, messages: int) -> bytes:
    """
    queue.purge-ok (31) or queue.delete-ok (41).
    """
    return method(channel, 50, methodId, _long.pack(messages))


def basicConsumeOk(channel: int, tag: str) -> bytes:
    return method(channel, 60, 21, shortstr(tag))


def basicCancel(channel: int, tag: str) -> bytes:
    return method(channel, 60, 30, shortstr(tag) + b"\x00")


def basicCancelOk(channel: int, tag: str) -> bytes:
    return method(channel, 60, 31, shortstr(tag))


def basicReturn(channel: int, code: int, text: str, addressing: bytes) -> bytes:
    return method(channel, 60, 50, _short.pack(code) + shortstr(text) + addressing)


def basicGetOk(
    channel: int, tag: int, redelivered: bool, addressing: bytes, messageCount: int
) -> bytes:
    return method(
        channel,
        60,
        71,
        _longlong.pack(tag)
        + (b"\x01" if redelivered else b"\x00")
        + addressing
        + _long.pack(messageCount),
    )


def basicGetEmpty(channel: int) -> bytes:
    return method(channel, 60, 72, shortstr(""))


def basicAck(channel: int, tag: int, multiple: bool) -> bytes:
    return method(channel, 60, 80, _longlong.pack(tag) + (b"\x01" if multiple else b"\x00"))


def basicNack(channel: int, tag: int, multiple: bool, requeue: bool = False) -> bytes:
    return method(channel, 60, 120, _longlong.pack(tag) + bits(multiple, requeue))


def deliverPrefix(tag: str) -> bytes:
    """
    The start of a basic.deliver payload for consumer C{tag}: class, method
    and consumer tag, the same for every delivery.
    """
    return b"\x00\x3c\x00\x3c" + shortstr(tag)
