"""
RabbitMQ's direct reply-to: the pseudo-queue C{amq.rabbitmq.reply-to}.

An RPC client consumes from C{amq.rabbitmq.reply-to} (no-ack; the "queue" is
never declared) and publishes its requests, on the same channel, with the
C{reply_to} property C{amq.rabbitmq.reply-to}. The broker rewrites that
property to C{amq.rabbitmq.reply-to.TOKEN}, an address that names the
channel; the server publishes its reply to the default exchange with that
address as the routing key, and the broker hands the reply straight to the
client's consumer. No queue is involved: a reply is never stored, never
replicated, never paged; it lives and dies with the requesting channel.

What RabbitMQ 3.10 does, and qha with it (compared with 3.10.8 driven by
pika, and read in C{rabbit_channel.erl} and C{rabbit_direct_reply_to.erl}):

  - basic.consume of C{amq.rabbitmq.reply-to} with acknowledgements is 406
    C{reply consumer cannot acknowledge}; a second one on the channel 406
    C{reply consumer already set}; basic.cancel of its tag ends it.
  - queue.declare of C{amq.rabbitmq.reply-to}, passive or not, is
    declare-ok with 0 messages and 1 consumer; of a reply address, the same
    while its consumer is there and 404 otherwise; of any other name that
    starts with C{amq.rabbitmq.reply-to}, 404.
  - A publish whose C{reply_to} is C{amq.rabbitmq.reply-to}, to any
    exchange, on a channel without the consumer is 406 C{fast reply consumer
    does not exist}.
  - A reply (default exchange, routing key a reply address) is delivered
    with exchange C{""}, the address as its routing key and redelivered
    false; its confirm completes at once.
  - A message dead-lettered to a reply address (the default exchange as
    its dead-letter exchange, the address as its routing key) is delivered
    as a reply is (RabbitMQ's dead-lettering routes through
    C{rabbit_exchange:route}, which hands reply addresses to
    C{rabbit_channel:deliver_reply}); see L{DirectReplies.deliver}.

Where qha differs, on purpose: RabbitMQ 3.10 answers every reply published
with C{mandatory} with basic.return 312 NO_ROUTE, the delivered ones too (its
documentation says so; RabbitMQ 4.2 counts a reply as routed). Here a
delivered reply is routed, as the specification has it and as RabbitMQ 4.2
does; a reply that reaches nobody (its consumer cancelled, its channel or
connection closed, the address forged or from another broker) is unroutable:
dropped, or returned 312 NO_ROUTE when mandatory, as in RabbitMQ 3.10 (4.2
drops a reply to a well-formed address without a return). A made-up address
declared is 404 (RabbitMQ 3.10 answers some with 541 INTERNAL_ERROR), and the
reply consumer's tag is not taken again for a queue consumer on the channel
(530, as for any tag in use; RabbitMQ accepts it). A reply takes the channel's
next delivery tag (RabbitMQ gives it that tag without taking it, so that the
next delivery has the same one).

The token is client input, so it is checked, never trusted: it carries the
number of one reply consumer of this broker and an HMAC-SHA256 tag over that
number and the virtual host's name, with a key each broker draws at random
when it starts. A token that fails the check (altered, made up, from another
broker or an earlier run, for another virtual host) or whose consumer is gone
reaches no channel. The tokens have one length and one alphabet, so that
nothing of them is parsed before the check.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import itertools
import os
import struct
from hashlib import sha256
from typing import TYPE_CHECKING, Any, Callable
from weakref import WeakKeyDictionary

from pamqp import commands
from twisted.logger import Logger

from ..broker.errors import NotAllowed, NotFound, PreconditionFailed
from ..broker.message import Message, scanProperties
from ..broker.vhost import DIRECT_REPLY_PREFIX, VirtualHost
from . import wire

if TYPE_CHECKING:
    from .channel import Channel

REPLY_QUEUE = "amq.rabbitmq.reply-to"
"""
The pseudo-queue a client consumes its replies from, and the C{reply_to} it
gives its requests.
"""

REPLY_PREFIX = DIRECT_REPLY_PREFIX
"""
How every reply address starts; the token follows.
"""

_REPLY_TO = REPLY_QUEUE.encode("ascii")
REPLY_MARK = bytes((len(_REPLY_TO),)) + _REPLY_TO
"""
C{amq.rabbitmq.reply-to} as a short string: a content header whose
C{reply_to} is the pseudo-queue holds these bytes (a cheap test, in C, that
rules out every other header).
"""
_MARK_LENGTH = len(REPLY_MARK)
_IDENT = struct.Struct(">Q")
_TAG_BYTES = 16
_TOKEN_LENGTH = 32
"""
Characters of a token: base64 of the 8-byte number and the 16-byte tag.
"""

_packTag = struct.Struct(">Q").pack


class ReplyConsumer:
    """
    One channel's consumer of C{amq.rabbitmq.reply-to}.

    @ivar tag: its consumer tag.
    @ivar channel: the channel that consumes, and that the replies go to.
    @ivar ident: its number among the broker's reply consumers (never
        reused while the broker runs).
    @ivar replyTo: its reply address, C{amq.rabbitmq.reply-to.TOKEN}, as the
        shortstr that replaces the requests' C{reply_to}.
    @ivar deliverPrefix: the start of its basic.deliver payload.
    """

    __slots__ = ("tag", "channel", "ident", "replyTo", "deliverPrefix")

    def __init__(self, tag: str, channel: "Channel", ident: int, replyTo: str) -> None:
        self.tag = tag
        self.channel = channel
        self.ident = ident
        self.replyTo = wire.shortstr(replyTo)
        self.deliverPrefix = wire.deliverPrefix(tag)

    def __repr__(self) -> str:
        return f"<ReplyConsumer {self.tag!r} {self.channel!r}>"


class DirectReplies:
    """
    A broker's direct reply-to consumers, at most one a channel, found by
    the token of their reply address. Nothing here is stored or replicated:
    the consumers are the channels' and go with them.

    @ivar consumers: each live reply consumer by its number.
    @ivar maxBacklog: the most bytes of replies written to a connection
        while its send buffer is full (it reads nothing), before further
        replies to it are dropped: a responder cannot fill the broker's
        memory through a requester that does not read.
    """

    log = Logger()
    maxBacklog = 1024 * 1024

    def __init__(self, key: bytes | None = None, randomBytes: Callable[[int], bytes] = os.urandom) -> None:
        """
        @param key: the key of the tokens' HMAC (by default 32 random bytes:
            a token from another broker or an earlier run fails the check).
        @param randomBytes: where server-generated consumer tags come from.
        """
        self._key = key if key is not None else os.urandom(32)
        self._randomBytes = randomBytes
        self._idents = itertools.count(1)
        self.consumers: dict[int, ReplyConsumer] = {}
        # Bytes of replies written to each connection since its send buffer
        # filled up; forgotten when it drains (or the connection goes).
        self._backlog: WeakKeyDictionary[Any, int] = WeakKeyDictionary()

    def _sign(self, ident: bytes, vhost: str) -> bytes:
        """
        The tag of consumer number C{ident} (packed) in C{vhost}.
        """
        return hmac.new(self._key, ident + vhost.encode("utf-8"), sha256).digest()[:_TAG_BYTES]

    def address(self, ident: int, vhost: str) -> str:
        """
        The reply address of consumer number C{ident} in C{vhost}.
        """
        packed = _IDENT.pack(ident)
        token = base64.urlsafe_b64encode(packed + self._sign(packed, vhost)).decode("ascii")
        return REPLY_PREFIX + token

    def find(self, address: str, vhost: str) -> ReplyConsumer | None:
        """
        The live consumer that reply address C{address} names in C{vhost},
        or L{None}: the address is not one this broker made for C{vhost}, or
        its consumer is gone.
        """
        token = address[len(REPLY_PREFIX) :]
        if len(token) != _TOKEN_LENGTH or not address.startswith(REPLY_PREFIX):
            return None
        try:
            encoded = token.encode("ascii")
            raw = base64.urlsafe_b64decode(encoded)
        except (UnicodeEncodeError, binascii.Error, ValueError):
            return None
        if base64.urlsafe_b64encode(raw) != encoded:
            # Only the one spelling this broker wrote.
            return None
        packed, tag = raw[: _IDENT.size], raw[_IDENT.size :]
        if not hmac.compare_digest(tag, self._sign(packed, vhost)):
            return None
        return self.consumers.get(_IDENT.unpack(packed)[0])

    # What the channel hooks call

    def consume(self, channel: "Channel", frame: commands.Basic.Consume) -> None:
        """
        basic.consume of C{amq.rabbitmq.reply-to} on C{channel}.

        @raise PreconditionFailed: with acknowledgements, or if the channel
            consumes from it already (RabbitMQ's texts).
        @raise NotAllowed: if the consumer tag is in use on the channel.
        """
        tag = frame.consumer_tag
        if isinstance(tag, bytes):
            tag = tag.decode("utf-8", "replace")
        # In RabbitMQ's order: the tag, the acknowledgements, the one consumer.
        if tag in channel.consumers:
            raise NotAllowed(f"attempt to reuse consumer tag '{tag}'")
        if not frame.no_ack:
            raise PreconditionFailed("reply consumer cannot acknowledge")
        if channel.replyConsumer is not None:
            raise PreconditionFailed("reply consumer already set")
        if not tag:
            tag = "amq.ctag-" + base64.urlsafe_b64encode(self._randomBytes(16)).decode(
                "ascii"
            ).rstrip("=")
        ident = next(self._idents)
        consumer = ReplyConsumer(tag, channel, ident, self.address(ident, channel.vhost.name))
        self.consumers[ident] = consumer
        channel.replyConsumer = consumer
        if not frame.nowait:
            channel.connection.write(wire.basicConsumeOk(channel.number, tag))

    def cancel(self, channel: "Channel", tag: str, nowait: bool) -> bool:
        """
        basic.cancel of C{tag} on C{channel}: if C{tag} is the channel's reply
        consumer, end it, answer, and return C{True}.
        """
        consumer = channel.replyConsumer
        if consumer is None or consumer.tag != tag:
            return False
        self.closed(channel)
        if not nowait:
            channel.connection.write(wire.basicCancelOk(channel.number, tag))
        return True

    def closed(self, channel: "Channel") -> None:
        """
        C{channel}'s reply consumer is cancelled or its channel closes:
        replies to its address reach nobody from now on.
        """
        consumer = channel.replyConsumer
        if consumer is not None:
            channel.replyConsumer = None
            self.consumers.pop(consumer.ident, None)

    def request(self, channel: "Channel", header: bytes) -> bytes:
        """
        The content header of a message published on C{channel} with a
        C{reply_to} property (the caller checked its flag, and that
        L{REPLY_MARK} is in the header somewhere): unchanged,
        unless C{reply_to} is C{amq.rabbitmq.reply-to}, which becomes the
        channel's reply address.

        @raise PreconditionFailed: if it is, and the channel has no reply
            consumer (RabbitMQ's text).
        """
        try:
            offset = scanProperties(header, True)[3]
        except (ValueError, IndexError, struct.error):
            # The channel checked the properties (checkProperties); should
            # a malformed header come here all the same, it is no request.
            return header
        end = offset + _MARK_LENGTH
        if offset < 0 or header[offset:end] != REPLY_MARK:
            # No reply_to, or one other than the pseudo-queue (the mark is
            # its length byte and its text).
            return header
        consumer = channel.replyConsumer
        if consumer is None:
            raise PreconditionFailed("fast reply consumer does not exist")
        return header[:offset] + consumer.replyTo + header[end:]

    def reply(self, channel: "Channel", routingKey: str, message: Message) -> bool:
        """
        C{message}, published on C{channel} to the default exchange with
        C{routingKey}, which starts with C{amq.rabbitmq.reply-to.}, and
        routed to no queue: the channel's virtual host delivers it and
        counts it (L{VirtualHost.publishReply}, which comes back to
        L{deliver}), as it does the HTTP API's. Return whether it reached
        its consumer (routed); otherwise it is unroutable (dropped, or
        returned when mandatory).
        """
        return channel.vhost.publishReply(routingKey, message)

    def deliver(self, vhost: VirtualHost, address: str, message: Message) -> bool:
        """
        If C{address} is the reply address of a live consumer in C{vhost},
        deliver C{message} to it and return C{True} (routed); otherwise
        C{False}. A reply published to the address comes here, and so does a
        message dead-lettered to it (L{VirtualHost.deadLetter}, through
        L{qha.broker.vhost.DirectReplyTarget}), as RabbitMQ's default
        exchange hands both to the requester.

        A reply to a channel whose client paused its deliveries
        (channel.flow active=false) is dropped. Replies to a connection
        whose send buffer is full wait in it up to
        L{maxBacklog} bytes; past that they are dropped, routed all the
        same (direct reply-to is at most once, and RabbitMQ 4.2 drops too
        when a requester cannot keep up).
        """
        consumer = self.find(address, vhost.name)
        if consumer is None:
            return False
        target = consumer.channel
        if not target.flowActive:
            # The client paused the channel's deliveries (channel.flow); a
            # reply cannot wait for it.
            return True
        connection = target.connection
        if connection.writable:
            self._backlog.pop(connection, None)
        else:
            # Its socket's send buffer is full (it reads nothing); a reply
            # has no queue to wait in, so past the backlog it is dropped.
            if self._backlog.get(connection, 0) >= self.maxBacklog:
                return True
        tag = target.nextDeliveryTag
        target.nextDeliveryTag = tag + 1
        payload = consumer.deliverPrefix + _packTag(tag) + b"\x00" + message.addressing
        data = (
            wire.packFrameHeader(wire.FRAME_METHOD, target.number, len(payload))
            + payload
            + wire.FRAME_END
            + wire.content(target.number, message.header, message.body, connection.frameMax)
        )
        if not connection.writable:
            backlog = self._backlog[connection] = self._backlog.get(connection, 0) + len(data)
            if backlog >= self.maxBacklog:
                self.log.info(
                    "{peer} reads nothing and {bytes} bytes of direct replies wait"
                    " for it: further replies are dropped until it reads",
                    peer=connection.peer,
                    bytes=backlog,
                )
        connection.write(data)
        return True

    def declare(self, channel: "Channel", frame: commands.Queue.Declare, name: str) -> None:
        """
        queue.declare of C{name}, which starts with C{amq.rabbitmq.reply-to}:
        the pseudo-queue and a live reply address exist (0 messages, 1
        consumer), whether or not the declaration is passive; nothing else
        of that name can.

        @raise NotFound: for any other such name (RabbitMQ's text).
        """
        if name != REPLY_QUEUE and self.find(name, channel.vhost.name) is None:
            raise NotFound(f"no queue '{name}' in vhost '{channel.vhost.name}'")
        channel.lastQueue = name
        if not frame.nowait:
            channel.connection.write(wire.queueDeclareOk(channel.number, name, 0, 1))


__all__ = ["DirectReplies", "ReplyConsumer", "REPLY_MARK", "REPLY_PREFIX", "REPLY_QUEUE"]
