"""
One AMQP channel: methods in, calls on the broker model, replies out.

A channel owns its consumers, the messages it delivered and that wait for an
acknowledgement, its publisher-confirm counter and its transaction. A
L{ChannelError} raised while handling a method closes this channel only.
"""

from __future__ import annotations

import base64
import os
import struct
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any, Callable

from pamqp import commands
from twisted.logger import Logger

from ..broker.errors import (
    ChannelError,
    NotAllowed,
    NotFound,
    NotImplemented_,
    PreconditionFailed,
    AccessRefused,
    ResourceLocked,
    UnexpectedFrame,
    SyntaxError,
)
from ..broker.exchange import Binding, Exchange
from ..broker.message import Message, TableTooLarge, checkProperties
from ..broker.queue import CLASSIC, QUEUE_TYPE, Consumer, Entry, Queue, checkDeclaration, queueType
from ..broker.vhost import PublishRefused, serverQueueName
from . import wire
from .access import CONFIGURE, DEFAULT_EXCHANGE, IMPERSONATOR, READ, WRITE, accessRefused, userIdRefused
from .holders import Held, Waits
from .replyto import REPLY_MARK, REPLY_PREFIX, REPLY_QUEUE, ReplyConsumer

if TYPE_CHECKING:
    from .protocol import AMQPServer

_unpackBodySize = struct.Struct(">Q").unpack_from
_packDeliverHeader = struct.Struct(">BHI").pack
_packTag = struct.Struct(">Q").pack

Unacked = tuple[Consumer | None, Queue, Entry]


def _str(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else str(value)


class Channel:
    """
    The state of one open channel of an L{AMQPServer} connection.

    @ivar unacked: delivery tag to (consumer, queue, entry) of every message
        delivered and not yet acknowledged, in delivery order.
    @ivar consumers: consumer tag to consumer.
    @ivar confirming: whether confirm.select was seen.
    @ivar transaction: the operations of the open transaction, or L{None}
        if the channel is not transactional.
    """

    log = Logger()

    def __init__(self, connection: "AMQPServer", number: int) -> None:
        self.connection = connection
        self.number = number
        self.vhost = connection.vhost
        self.closing = False
        self.flowActive = True
        self.unacked: OrderedDict[int, Unacked] = OrderedDict()
        self.consumers: dict[str, Consumer] = {}
        # Its consumer of amq.rabbitmq.reply-to (qha.amqp.replyto).
        self.replyConsumer: ReplyConsumer | None = None
        self.nextDeliveryTag = 1
        self.prefetchCount = 0
        self.globalPrefetch = 0
        self.confirming = False
        self.publishSeq = 0
        self.confirmedUpTo = 0
        self.nacked: list[int] = []
        # Runs of publishes waiting for one completion (publishes of one
        # reactor turn share it): [completion, first seq, last seq].
        self.pendingConfirms: deque[list[Any]] = deque()
        self._waits: Waits | None = None
        self.transaction: list[Callable[[], Any]] | None = None
        self.lastQueue: str | None = None
        # The publish being assembled from its method, header and body frames.
        self._publishExchange: Exchange | None = None
        self._publishRoutingKey = ""
        self._publishAddressing = b""
        self._publishMandatory = False
        self._header: bytes | None = None
        self._bodySize = 0
        self._bodyParts: list[bytes] = []
        self._bodyReceived = 0
        self.expectingContent = False
        # Bytes this channel makes the broker hold outside its queues (an
        # unfinished body, an uncommitted transaction), counted against the
        # memory high watermark.
        self._heldBody = 0
        self._heldTransaction = 0

    def __repr__(self) -> str:
        return f"<Channel {self.number}>"

    @property
    def holdsContent(self) -> bool:
        """
        Whether the broker holds messages for this channel outside the
        queues: a body being received (its header came, not all of the
        body), or the messages of an uncommitted transaction.
        """
        return self._header is not None or self._heldTransaction > 0

    # Frames from the connection

    def handleMethod(self, frame: Any) -> None:
        """
        Handle one decoded method (anything but basic.publish and basic.ack,
        which come through their fast paths).
        """
        handler = _handlers.get(type(frame))
        if handler is None:
            raise NotImplemented_(
                f"method {frame.name} is not supported on a channel"
            )
        handler(self, frame)

    def publish(
        self, exchangeName: str, routingKey: str, addressing: bytes, mandatory: bool, immediate: bool
    ) -> None:
        """
        basic.publish: the start of a message; its content frames follow.
        """
        if immediate:
            raise NotImplemented_("immediate=true is not supported (as in RabbitMQ)")
        self._allow(WRITE, "exchange", exchangeName)
        # A missing exchange closes the channel now, as in RabbitMQ; the
        # content frames that follow are ignored by the closing channel.
        self._publishExchange = self.vhost.exchanges.get(exchangeName)
        if self._publishExchange is None or self._publishExchange.internal:
            self.vhost.publishTarget(exchangeName)
        self._publishRoutingKey = routingKey
        self._publishAddressing = addressing
        self._publishMandatory = mandatory
        self._header = None
        self.expectingContent = True

    def contentHeader(self, payload: bytes) -> None:
        """
        The content header frame of the message being published.
        """
        if not self.expectingContent or self._header is not None:
            raise UnexpectedFrame(
                f"content header frame on channel {self.number} without a"
                " basic.publish before it"
            )
        if len(payload) < 14:
            raise UnexpectedFrame(
                f"content header frame on channel {self.number} is too short"
                f" ({len(payload)} bytes)"
            )
        if payload[0] != 0 or payload[1] != 60:
            raise UnexpectedFrame(
                f"content header frame on channel {self.number} is for class"
                f" {payload[0] << 8 | payload[1]}, not basic (60)"
            )
        if payload[12] or payload[13]:
            try:
                checkProperties(
                    payload, maxFields=self.connection.factory.limits.maxHeaderFields
                )
            except TableTooLarge as error:
                self.expectingContent = False
                raise PreconditionFailed(
                    f"message on channel {self.number} refused: {error}"
                ) from None
            except ValueError as error:
                raise SyntaxError(
                    f"malformed message properties in the content header on"
                    f" channel {self.number}: {error}"
                ) from None
        bodySize = _unpackBodySize(payload, 4)[0]
        limit = self.connection.factory.maxMessageSize
        if bodySize > limit:
            self.expectingContent = False
            raise PreconditionFailed(
                f"message size {bodySize} is larger than the configured"
                f" max size {limit}"
            )
        self._header = payload
        self._bodySize = bodySize
        self._bodyParts = []
        self._bodyReceived = 0
        if bodySize == 0:
            self._complete(b"")

    def contentBody(self, payload: bytes) -> None:
        """
        A content body frame of the message being published.
        """
        if self._header is None:
            raise UnexpectedFrame(
                f"content body frame on channel {self.number} without a"
                " content header before it"
            )
        received = self._bodyReceived + len(payload)
        if received > self._bodySize:
            raise UnexpectedFrame(
                f"content body on channel {self.number} is longer than the"
                f" {self._bodySize} bytes its header announced"
            )
        if received == self._bodySize:
            if self._bodyParts:
                self._bodyParts.append(payload)
                body = b"".join(self._bodyParts)
                self._bodyParts = []
            else:
                body = payload
            if self._heldBody:
                # The queues (or the transaction) count the message instead:
                # moved without a moment below or above the watermark in
                # between, so that publishers are not unblocked for a moment.
                resources = self.vhost.resources
                resources.release(self._heldBody, check=False)
                self._heldBody = 0
                try:
                    self._complete(body)
                finally:
                    resources.check()
            else:
                self._complete(body)
        else:
            self._bodyParts.append(payload)
            self._bodyReceived = received
            # An unfinished body is memory a client makes the broker hold.
            self._heldBody += len(payload)
            self.vhost.resources.hold(len(payload))

    def _releaseBody(self) -> None:
        """
        The unfinished body is complete or dropped: no longer held.
        """
        self.vhost.resources.release(self._heldBody)
        self._heldBody = 0

    def _releaseTransaction(self) -> None:
        """
        The transaction's messages were committed (the queues count them
        now) or dropped: no longer held.
        """
        self.vhost.resources.release(self._heldTransaction)
        self._heldTransaction = 0

    def _complete(self, body: bytes) -> None:
        """
        A whole message arrived: route it (or keep it for the transaction).
        """
        self.expectingContent = False
        header = self._header
        assert header is not None
        self._header = None
        if header[12] & 0x02 and header.find(REPLY_MARK) >= 0:
            # A reply_to property (flag 0x0200), maybe direct reply-to's
            # pseudo-queue: rewritten to the channel's reply address.
            header = self.connection.factory.replies.request(self, header)
        message = Message(self._publishAddressing, header, body)
        exchange = self._publishExchange
        routingKey = self._publishRoutingKey
        mandatory = self._publishMandatory
        if exchange is None or exchange.deleted:
            exchange = self.vhost.publishTarget(message.exchange)
        if header[13] & 0x10:
            self._checkUserId(message.properties.user_id)
        if header[12] & 0x01 or header[13] & 0x01:
            # An expiration property (flag 0x0100) must be a whole number
            # of milliseconds, as RabbitMQ checks.
            expiration = message.properties.expiration if header[12] & 0x01 else None
            if expiration is not None and not (
                expiration.isdigit() and expiration.isascii()
            ):
                raise PreconditionFailed(
                    f"invalid expiration '{expiration}': it must be a whole"
                    " number of milliseconds, 0 or more"
                )
        if self.transaction is not None:
            self.transaction.append(
                lambda: self._route(exchange, routingKey, message, mandatory)
            )
            # Held until commit: counted against the memory high watermark.
            size = len(body) + len(header) + self.vhost.resources.overhead
            self._heldTransaction += size
            self.vhost.resources.hold(size)
            return
        if self.confirming:
            self.publishSeq += 1
            self.connection.confirmReady(self)
            completion = self._route(exchange, routingKey, message, mandatory)
            if completion is not None:
                pending = self.pendingConfirms
                if pending and pending[-1][0] is completion:
                    pending[-1][2] = self.publishSeq
                else:
                    pending.append([completion, self.publishSeq, self.publishSeq])
                    completion.addCallback(self.flushConfirms)
        else:
            self._route(exchange, routingKey, message, mandatory)

    def _route(
        self, exchange: Exchange, routingKey: str, message: Message, mandatory: bool
    ) -> Held | None:
        """
        Enqueue C{message} where it routes; return what its confirm must
        wait for (the completion of the one holder that holds it, or
        L{Waits} for several), or L{None}.
        """
        try:
            accepted = self.vhost.publishTo(exchange, routingKey, message)
        except PublishRefused as refused:
            # A full queue refused it: a confirm-mode publisher gets
            # basic.nack (once the queues that took it hold it), others a
            # channel error.
            if not self.confirming:
                raise
            self.nacked.append(self.publishSeq)
            accepted = refused.accepted
            if not accepted:
                return None
        if accepted:
            held: Held | None = None
            for holder in self.connection.factory.holders:
                completion = holder.hold(accepted, message)
                if completion is None:
                    continue
                if held is None:
                    held = completion
                    continue
                # Held by two (the backups and the disk): publishes of one
                # turn share their completions, and so one Waits.
                waits = self._waits
                if waits is not None and waits.parts[0] is held and waits.parts[1] is completion:
                    held = waits
                elif held.__class__ is Waits:
                    # By a third holder as well: not shared.
                    held = Waits(held, completion)
                else:
                    held = self._waits = Waits(held, completion)
            return held
        if (
            routingKey.startswith(REPLY_PREFIX)
            and exchange is self.vhost.defaultExchange
            and self.connection.factory.replies.reply(self, routingKey, message)
        ):
            # A direct reply-to reply, handed to its consumer.
            return None
        if mandatory:
            self.connection.write(
                wire.basicReturn(self.number, 312, "NO_ROUTE", message.addressing)
                + wire.content(
                    self.number, message.header, message.body, self.connection.frameMax
                )
            )
        return None

    def flushConfirms(self) -> None:
        """
        Acknowledge, in one basic.ack, every publish confirmed since the last
        flush, up to the first that still waits for backups.
        """
        upTo = self.publishSeq
        pending = self.pendingConfirms
        while pending:
            run = pending[0]
            if not run[0].done:
                upTo = run[1] - 1
                break
            pending.popleft()
        if upTo <= self.confirmedUpTo or self.closing:
            return
        mayConfirm = self.connection.factory.mayConfirm
        if mayConfirm is not None and not mayConfirm():
            # Fenced: the broker steps down and closes this connection.
            return
        write = self.connection.write
        if self.nacked:
            # A refused publish gets basic.nack; the acks around it must not
            # cover it with 'multiple'.
            later = []
            for seq in self.nacked:
                if seq > upTo:
                    later.append(seq)
                    continue
                if seq - 1 > self.confirmedUpTo:
                    write(
                        wire.basicAck(
                            self.number, seq - 1, seq - 1 - self.confirmedUpTo > 1
                        )
                    )
                write(wire.basicNack(self.number, seq, False))
                self.confirmedUpTo = seq
            self.nacked = later
            if upTo <= self.confirmedUpTo:
                return
        multiple = upTo - self.confirmedUpTo > 1
        self.confirmedUpTo = upTo
        write(wire.basicAck(self.number, upTo, multiple))

    # Delivery (the broker's DeliveryTarget)

    def canDeliver(self, consumer: Consumer) -> bool:
        """
        Whether C{consumer} may be sent another message now.
        """
        return (
            self.flowActive
            and self.connection.writable
            and not self.closing
            and (consumer.prefetch == 0 or consumer.unacked < consumer.prefetch)
            and (self.globalPrefetch == 0 or len(self.unacked) < self.globalPrefetch)
        )

    def deliver(self, consumer: Consumer, entry: Entry) -> None:
        """
        Send basic.deliver and the content of C{entry} to the client.
        """
        tag = self.nextDeliveryTag
        self.nextDeliveryTag = tag + 1
        message = entry.message
        payload = (
            consumer.deliverPrefix
            + _packTag(tag)
            + (b"\x01" if entry.redelivered else b"\x00")
            + message.addressing
        )
        connection = self.connection
        body = message.body
        header = message.header
        number = self.number
        if len(body) <= connection.frameMax - 8:
            data = b"".join(
                (
                    _packDeliverHeader(1, number, len(payload)),
                    payload,
                    b"\xce\x02",
                    struct.pack(">HI", number, len(header)),
                    header,
                    b"\xce\x03",
                    struct.pack(">HI", number, len(body)),
                    body,
                    b"\xce",
                )
                if body
                else (
                    _packDeliverHeader(1, number, len(payload)),
                    payload,
                    b"\xce\x02",
                    struct.pack(">HI", number, len(header)),
                    header,
                    b"\xce",
                )
            )
        else:
            data = (
                _packDeliverHeader(1, number, len(payload))
                + payload
                + b"\xce"
                + wire.content(number, header, body, connection.frameMax)
            )
        if not consumer.noAck:
            self.unacked[tag] = (consumer, consumer.queue, entry)
        connection.write(data)

    def consumerCancelled(self, consumer: Consumer) -> None:
        """
        The broker cancelled C{consumer}: its queue was deleted.
        """
        if self.consumers.pop(consumer.tag, None) is None:
            return
        if self.connection.clientCapabilities.get("consumer_cancel_notify"):
            self.connection.write(wire.basicCancel(self.number, consumer.tag))

    # Acknowledgements

    def ack(self, deliveryTag: int, multiple: bool) -> None:
        """
        basic.ack from a consumer.
        """
        if self.transaction is not None:
            self._checkTag(deliveryTag, multiple)
            self.transaction.append(lambda: self._settle(deliveryTag, multiple, None))
            return
        self._settle(deliveryTag, multiple, None)

    def _checkTag(self, deliveryTag: int, multiple: bool) -> None:
        if deliveryTag in self.unacked or (multiple and deliveryTag == 0):
            return
        if multiple and self.unacked and next(iter(self.unacked)) <= deliveryTag:
            return
        raise PreconditionFailed(f"unknown delivery tag {deliveryTag}")

    def _take(self, deliveryTag: int, multiple: bool) -> list[Unacked]:
        """
        Remove and return the unacknowledged deliveries a tag names.
        """
        unacked = self.unacked
        if not multiple:
            try:
                return [unacked.pop(deliveryTag)]
            except KeyError:
                raise PreconditionFailed(
                    f"unknown delivery tag {deliveryTag}"
                ) from None
        if deliveryTag == 0:
            taken = list(unacked.values())
            unacked.clear()
            return taken
        if deliveryTag not in unacked and not (
            unacked and next(iter(unacked)) <= deliveryTag
        ):
            raise PreconditionFailed(f"unknown delivery tag {deliveryTag}")
        taken = []
        while unacked:
            tag = next(iter(unacked))
            if tag > deliveryTag:
                break
            taken.append(unacked.popitem(last=False)[1])
        return taken

    def _settle(self, deliveryTag: int, multiple: bool, requeue: bool | None) -> None:
        """
        Ack (C{requeue} L{None}), or nack/reject with or without requeue.
        """
        taken = self._take(deliveryTag, multiple)
        self._finish(taken, requeue)

    def _finish(self, taken: list[Unacked], requeue: bool | None) -> None:
        touched: dict[Queue, list[Entry]] = {}
        for consumer, queue, entry in taken:
            queue.consumerSettled(consumer)
            entries = touched.get(queue)
            if entries is None:
                touched[queue] = [entry]
            else:
                entries.append(entry)
        for queue, entries in touched.items():
            if requeue is None:
                queue.settleAll(entries)
                if queue.consumers:
                    queue.dispatch()
            elif requeue:
                queue.release(entries)
            else:
                queue.reject(entries)
                if queue.consumers:
                    queue.dispatch()
        if self.globalPrefetch and taken and not self.closing:
            # Global prefetch credit is the channel's: consumers of other
            # queues may be waiting for it too.
            self._dispatchAll()

    def nack(self, deliveryTag: int, multiple: bool, requeue: bool) -> None:
        """
        basic.nack or basic.reject from a consumer.
        """
        if self.transaction is not None:
            self._checkTag(deliveryTag, multiple)
            self.transaction.append(
                lambda: self._settle(deliveryTag, multiple, requeue)
            )
            return
        self._settle(deliveryTag, multiple, requeue)

    # Closing

    def cleanUp(self) -> None:
        """
        The channel closes: cancel its consumers and requeue what it held.
        """
        self.closing = True
        self.expectingContent = False
        self._bodyParts = []
        self._header = None
        if self._heldBody:
            self._releaseBody()
        if self._heldTransaction:
            self._releaseTransaction()
        for consumer in list(self.consumers.values()):
            consumer.queue.removeConsumer(consumer)
        self.consumers.clear()
        if self.replyConsumer is not None:
            self.connection.factory.replies.closed(self)
        taken = list(self.unacked.values())
        self.unacked.clear()
        self._finish(taken, True)

    # Permissions

    def _allow(self, permission: int, kind: str, name: str) -> None:
        """
        Check that the connection's user has C{permission} on the exchange
        or queue C{name} in this channel's virtual host (see
        L{qha.amqp.access} for which operation needs which).

        @raise AccessRefused: if not (403, which closes the channel).
        """
        connection = self.connection
        if kind == "exchange" and not name:
            name = DEFAULT_EXCHANGE
        permissions = connection.factory.users.permissions(connection.user, self.vhost.name)
        if permissions is None or not permissions.allows(permission, name):
            raise accessRefused(kind, name, self.vhost.name, connection.user)

    def _checkUserId(self, userId: Any) -> None:
        """
        A published message's C{user_id} property must name the user who
        logged in, unless that user has the C{impersonator} tag (as in
        RabbitMQ).

        @raise PreconditionFailed: if it names another (406).
        """
        connection = self.connection
        userId = _str(userId)
        if userId != connection.user and IMPERSONATOR not in connection.factory.users.tags(
            connection.user or ""
        ):
            raise PreconditionFailed(userIdRefused(userId, connection.user))

    # Method handlers

    def _queueName(self, name: str) -> str:
        """
        An empty queue name means the queue this channel declared last.
        """
        if name:
            return name
        if self.lastQueue is None:
            raise NotFound("no previously declared queue on this channel")
        return self.lastQueue

    def _reply(self, nowait: bool, data: bytes) -> None:
        if not nowait:
            self.connection.write(data)

    def channelFlow(self, frame: commands.Channel.Flow) -> None:
        self.flowActive = bool(frame.active)
        self.connection.write(wire.channelFlowOk(self.number, self.flowActive))
        if self.flowActive:
            self._dispatchAll()

    def _dispatchAll(self) -> None:
        for queue in {consumer.queue for consumer in self.consumers.values()}:
            queue.dispatch()

    def exchangeDeclare(self, frame: commands.Exchange.Declare) -> None:
        name = _str(frame.exchange)
        if not frame.passive and name:
            self._allow(CONFIGURE, "exchange", name)
            alternate = (frame.arguments or {}).get("alternate-exchange")
            if alternate is not None and name not in self.vhost.exchanges:
                self._allow(READ, "exchange", name)
                self._allow(WRITE, "exchange", _str(alternate))
        self.vhost.declareExchange(
            name,
            _str(frame.exchange_type),
            passive=frame.passive,
            durable=frame.durable,
            autoDelete=frame.auto_delete,
            internal=frame.internal,
            arguments=frame.arguments or {},
        )
        self._reply(frame.nowait, wire.simple(self.number, 40, 11))

    def exchangeDelete(self, frame: commands.Exchange.Delete) -> None:
        name = _str(frame.exchange)
        if name:
            self._allow(CONFIGURE, "exchange", name)
        self.vhost.deleteExchange(name, ifUnused=frame.if_unused)
        self._reply(frame.nowait, wire.simple(self.number, 40, 21))

    def exchangeBind(self, frame: commands.Exchange.Bind) -> None:
        self._allow(WRITE, "exchange", _str(frame.destination))
        self._allow(READ, "exchange", _str(frame.source))
        self.vhost.bindExchange(
            _str(frame.destination),
            _str(frame.source),
            _str(frame.routing_key),
            frame.arguments or {},
        )
        self._reply(frame.nowait, wire.simple(self.number, 40, 31))

    def exchangeUnbind(self, frame: commands.Exchange.Unbind) -> None:
        """
        exchange.unbind; like RabbitMQ 3.10, unbinding is idempotent: a
        binding, source or destination that is not there is unbind-ok.
        """
        self._allow(WRITE, "exchange", _str(frame.destination))
        self._allow(READ, "exchange", _str(frame.source))
        try:
            self.vhost.unbindExchange(
                _str(frame.destination),
                _str(frame.source),
                _str(frame.routing_key),
                frame.arguments or {},
            )
        except NotFound:
            pass
        self._reply(frame.nowait, wire.simple(self.number, 40, 51))

    def queueDeclare(self, frame: commands.Queue.Declare) -> None:
        name = _str(frame.queue)
        if name.startswith(REPLY_QUEUE):
            self.connection.factory.replies.declare(self, frame, name)
            return
        generated = False
        if not frame.passive:
            if not name:
                # Checked under the name it will have, as in RabbitMQ.
                name, generated = serverQueueName(), True
            self._allow(CONFIGURE, "queue", name)
            arguments = frame.arguments or {}
            deadLetters = arguments.get("x-dead-letter-exchange", arguments.get("alternate-exchange"))
            if deadLetters is not None and name not in self.vhost.queues:
                self._allow(READ, "queue", name)
                self._allow(WRITE, "exchange", _str(deadLetters))
            self._checkQueueType(name, frame, generated)
        queue = self.vhost.declareQueue(
            name,
            generated=generated,
            passive=frame.passive,
            durable=frame.durable,
            exclusive=frame.exclusive,
            autoDelete=frame.auto_delete,
            arguments=frame.arguments or {},
            owner=self.connection,
        )
        self.lastQueue = queue.name
        self._reply(
            frame.nowait,
            wire.queueDeclareOk(
                self.number, queue.name, queue.messageCount, queue.consumerCount
            ),
        )

    def _checkQueueType(self, name: str, frame: commands.Queue.Declare, generated: bool) -> None:
        """
        RabbitMQ's rules for C{x-queue-type}, C{x-queue-mode} and
        C{x-single-active-consumer} (see L{checkDeclaration}) for a new
        queue. For an existing one, a classic queue is equivalent whether
        or not either declaration names the type C{classic}, as in
        RabbitMQ, where that is the default type.
        """
        arguments = frame.arguments or {}
        existing = self.vhost.queues.get(name)
        if existing is None:
            checkDeclaration(
                name,
                self.vhost.name,
                bool(frame.durable),
                bool(frame.exclusive),
                bool(frame.auto_delete),
                arguments,
                serverNamed=generated,
            )
            return
        received, current = QUEUE_TYPE in arguments, QUEUE_TYPE in existing.arguments
        if received != current and queueType(arguments) == queueType(existing.arguments) == CLASSIC:
            arguments = dict(arguments)
            if current:
                arguments[QUEUE_TYPE] = existing.arguments[QUEUE_TYPE]
            else:
                del arguments[QUEUE_TYPE]
            frame.arguments = arguments

    def queueBind(self, frame: commands.Queue.Bind) -> None:
        name = self._queueName(_str(frame.queue))
        self._allow(WRITE, "queue", name)
        self._allow(READ, "exchange", _str(frame.exchange))
        self.vhost.bindQueue(
            name,
            _str(frame.exchange),
            _str(frame.routing_key),
            frame.arguments or {},
            owner=self.connection,
        )
        self._reply(frame.nowait, wire.simple(self.number, 50, 21))

    def queueUnbind(self, frame: commands.Queue.Unbind) -> None:
        """
        queue.unbind. Like RabbitMQ 3.10, unbinding is idempotent: a
        binding, queue or exchange that is not there is unbind-ok (clients
        unbind in their clean-up, after the queue may be gone); another
        connection's exclusive queue is refused only when the binding is
        there to remove.
        """
        name = self._queueName(_str(frame.queue))
        exchangeName = _str(frame.exchange)
        routingKey = _str(frame.routing_key)
        arguments = frame.arguments or {}
        self._allow(WRITE, "queue", name)
        self._allow(READ, "exchange", exchangeName)
        try:
            self.vhost.unbindQueue(
                name, exchangeName, routingKey, arguments, owner=self.connection
            )
        except NotFound:
            pass
        except ResourceLocked:
            exchange = self.vhost.exchanges.get(exchangeName)
            queue = self.vhost.queues[name]
            if exchange is not None and (
                Binding(exchange, queue, routingKey, arguments).key in exchange.bindings
            ):
                raise
        self.connection.write(wire.simple(self.number, 50, 51))

    def queuePurge(self, frame: commands.Queue.Purge) -> None:
        name = self._queueName(_str(frame.queue))
        self._allow(READ, "queue", name)
        count = self.vhost.purgeQueue(name, owner=self.connection)
        self._reply(frame.nowait, wire.queueMessageCountOk(self.number, 31, count))

    def queueDelete(self, frame: commands.Queue.Delete) -> None:
        name = self._queueName(_str(frame.queue))
        self._allow(CONFIGURE, "queue", name)
        count = self.vhost.deleteQueue(
            name,
            ifUnused=frame.if_unused,
            ifEmpty=frame.if_empty,
            owner=self.connection,
        )
        self._reply(frame.nowait, wire.queueMessageCountOk(self.number, 41, count))

    def basicQos(self, frame: commands.Basic.Qos) -> None:
        if frame.prefetch_size:
            raise NotImplemented_(
                f"prefetch_size!={frame.prefetch_size}: only prefetch_count is"
                " supported (as in RabbitMQ)"
            )
        if frame.global_:
            self.globalPrefetch = frame.prefetch_count
        else:
            self.prefetchCount = frame.prefetch_count
        self.connection.write(wire.simple(self.number, 60, 11))
        self._dispatchAll()

    def basicConsume(self, frame: commands.Basic.Consume) -> None:
        name = self._queueName(_str(frame.queue))
        if name == REPLY_QUEUE:
            self.connection.factory.replies.consume(self, frame)
            return
        self._allow(READ, "queue", name)
        queue = self.vhost.queue(name, owner=self.connection)
        tag = _str(frame.consumer_tag)
        if not tag:
            tag = "amq.ctag-" + base64.urlsafe_b64encode(os.urandom(16)).decode(
                "ascii"
            ).rstrip("=")
        elif tag in self.consumers or (
            self.replyConsumer is not None and tag == self.replyConsumer.tag
        ):
            raise NotAllowed(f"attempt to reuse consumer tag '{tag}'")
        if queue.hasExclusiveConsumer() or (frame.exclusive and queue.consumers):
            raise AccessRefused(
                f"queue '{queue.name}' in vhost '{self.vhost.name}' in exclusive use"
            )
        consumer = Consumer(
            queue,
            tag,
            self,
            noAck=frame.no_ack,
            exclusive=frame.exclusive,
            prefetch=self.prefetchCount,
            arguments=frame.arguments or {},
        )
        consumer.deliverPrefix = wire.deliverPrefix(tag)
        self.consumers[tag] = consumer
        self._reply(frame.nowait, wire.basicConsumeOk(self.number, tag))
        queue.addConsumer(consumer)

    def basicCancel(self, frame: commands.Basic.Cancel) -> None:
        tag = _str(frame.consumer_tag)
        consumer = self.consumers.pop(tag, None)
        if consumer is None and self.replyConsumer is not None:
            if self.connection.factory.replies.cancel(self, tag, frame.nowait):
                return
        self._reply(frame.nowait, wire.basicCancelOk(self.number, tag))
        if consumer is not None:
            consumer.queue.removeConsumer(consumer)

    def basicGet(self, frame: commands.Basic.Get) -> None:
        name = self._queueName(_str(frame.queue))
        self._allow(READ, "queue", name)
        queue = self.vhost.queue(name, owner=self.connection)
        entry = queue.get()
        if entry is None:
            self.connection.write(wire.basicGetEmpty(self.number))
            return
        tag = self.nextDeliveryTag
        self.nextDeliveryTag = tag + 1
        message = entry.message
        self.connection.write(
            wire.basicGetOk(
                self.number, tag, entry.redelivered, message.addressing, queue.messageCount
            )
            + wire.content(self.number, message.header, message.body, self.connection.frameMax)
        )
        if frame.no_ack:
            queue.settle(entry)
        else:
            queue.unacked += 1
            self.unacked[tag] = (None, queue, entry)

    def basicAckFrame(self, frame: commands.Basic.Ack) -> None:
        self.ack(frame.delivery_tag, frame.multiple)

    def basicNack(self, frame: commands.Basic.Nack) -> None:
        self.nack(frame.delivery_tag, frame.multiple, frame.requeue)

    def basicReject(self, frame: commands.Basic.Reject) -> None:
        self.nack(frame.delivery_tag or 0, False, frame.requeue)

    def basicRecover(self, frame: commands.Basic.Recover) -> None:
        self._recover(frame.requeue)
        self.connection.write(wire.simple(self.number, 60, 111))

    def basicRecoverAsync(self, frame: commands.Basic.RecoverAsync) -> None:
        """
        basic.recover-async, which the specification deprecates in favour of
        basic.recover but which clients still send for a no-wait recover
        (aiormq's C{basic_recover(nowait=True)}): requeue as basic.recover
        does, with no reply, as RabbitMQ does.
        """
        self._recover(frame.requeue)

    def _recover(self, requeue: bool) -> None:
        """
        Requeue every message this channel holds unacknowledged.

        @param requeue: the method's requeue flag; only C{True} is supported,
            as in RabbitMQ (540 otherwise).
        """
        if not requeue:
            raise NotImplemented_("basic.recover with requeue=false is not supported")
        taken = list(self.unacked.values())
        self.unacked.clear()
        self._finish(taken, True)

    def confirmSelect(self, frame: commands.Confirm.Select) -> None:
        if self.transaction is not None:
            raise PreconditionFailed("cannot switch from tx to confirm mode")
        self.confirming = True
        self._reply(frame.nowait, wire.simple(self.number, 85, 11))

    def txSelect(self, frame: commands.Tx.Select) -> None:
        if self.confirming:
            raise PreconditionFailed("cannot switch from confirm to tx mode")
        if self.transaction is None:
            self.transaction = []
        self.connection.write(wire.simple(self.number, 90, 11))

    def txCommit(self, frame: commands.Tx.Commit) -> None:
        if self.transaction is None:
            raise PreconditionFailed("channel is not transactional")
        operations, self.transaction = self.transaction, []
        waits = [
            completion
            for wait in (operation() for operation in operations)
            if wait is not None
            for completion in (wait.parts if isinstance(wait, Waits) else (wait,))
        ]
        # Released once the queues count the messages, so that a commit
        # does not unblock publishers for a moment.
        if self._heldTransaction:
            self._releaseTransaction()
        commitOk = wire.simple(self.number, 90, 21)
        mayConfirm = self.connection.factory.mayConfirm
        if not waits:
            if mayConfirm is None or mayConfirm():
                self.connection.write(commitOk)
            return
        # The commit completes once the backups hold its messages.
        remaining = [len(waits)]

        def one() -> None:
            remaining[0] -= 1
            if remaining[0] == 0 and not self.closing:
                if mayConfirm is None or mayConfirm():
                    self.connection.write(commitOk)

        for wait in waits:
            wait.addCallback(one)

    def txRollback(self, frame: commands.Tx.Rollback) -> None:
        if self.transaction is None:
            raise PreconditionFailed("channel is not transactional")
        self.transaction = []
        if self._heldTransaction:
            self._releaseTransaction()
        self.connection.write(wire.simple(self.number, 90, 31))


_handlers: dict[type, Callable[[Channel, Any], None]] = {
    commands.Channel.Flow: Channel.channelFlow,
    commands.Exchange.Declare: Channel.exchangeDeclare,
    commands.Exchange.Delete: Channel.exchangeDelete,
    commands.Exchange.Bind: Channel.exchangeBind,
    commands.Exchange.Unbind: Channel.exchangeUnbind,
    commands.Queue.Declare: Channel.queueDeclare,
    commands.Queue.Bind: Channel.queueBind,
    commands.Queue.Unbind: Channel.queueUnbind,
    commands.Queue.Purge: Channel.queuePurge,
    commands.Queue.Delete: Channel.queueDelete,
    commands.Basic.Qos: Channel.basicQos,
    commands.Basic.Consume: Channel.basicConsume,
    commands.Basic.Cancel: Channel.basicCancel,
    commands.Basic.Get: Channel.basicGet,
    commands.Basic.Ack: Channel.basicAckFrame,
    commands.Basic.Nack: Channel.basicNack,
    commands.Basic.Reject: Channel.basicReject,
    commands.Basic.Recover: Channel.basicRecover,
    commands.Basic.RecoverAsync: Channel.basicRecoverAsync,
    commands.Confirm.Select: Channel.confirmSelect,
    commands.Tx.Select: Channel.txSelect,
    commands.Tx.Commit: Channel.txCommit,
    commands.Tx.Rollback: Channel.txRollback,
}

__all__ = ["Channel", "ChannelError"]
