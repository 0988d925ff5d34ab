"""
The AMQP 0-9-1 server protocol: frames off the socket, the connection
handshake, heartbeats, flow control, and channels.

The hot path (basic.publish, its content frames, basic.ack, basic.deliver)
is decoded and encoded here with C{struct}; every other method goes through
pamqp.
"""

from __future__ import annotations

import platform
import struct
from typing import Any, Callable, Iterable

from pamqp import commands
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IAddress, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .. import __version__
from ..tls import peerCommonName
from ..broker.errors import (
    AMQPError,
    ChannelError,
    ChannelStateError,
    CommandInvalid,
    ConnectionAccessRefused,
    ConnectionError,
    FrameError,
    InternalError,
    NotAllowed,
    NotImplemented_,
    SyntaxError,
    UnexpectedFrame,
)
from ..broker.message import checkNesting
from ..broker.vhost import VirtualHost
from ..broker.vhosts import VirtualHosts
from . import wire
from .accounts import Accounts
from .access import vhostRefused
from .channel import Channel
from .holders import IConfirmHolder, IReplicationPacer
from .limits import ConnectionLimits
from .replyto import DirectReplies
from .users import (
    GUEST,
    AuthenticationFailed,
    FailedLogins,
    IPasswordVerifier,
    SynchronousVerifier,
    UserDatabase,
)

_unpackFrameHeader = struct.Struct(">BHI").unpack_from
_unpackMethodId = struct.Struct(">I").unpack_from
_unpackAck = struct.Struct(">QB").unpack_from

PUBLISH = (60 << 16) | 40
ACK = (60 << 16) | 80
# How much a connection keeps read while it waits for a replication box to go
# out before it stops reading.
YIELDED_BUFFER = 256 * 1024

# Connection states
AWAITING_HEADER = "awaiting protocol header"
AWAITING_START_OK = "awaiting connection.start-ok"
AUTHENTICATING = "checking the password"
AWAITING_TUNE_OK = "awaiting connection.tune-ok"
AWAITING_OPEN = "awaiting connection.open"
OPEN = "open"
CLOSING = "closing"
CLOSED = "closed"


class BrokerFactory(ServerFactory):
    """
    Makes an L{AMQPServer} per client connection, all sharing one virtual
    host.

    @ivar connections: the open connections.
    @ivar acceptingClients: when false (a backup in a cluster), clients are
        refused at connection.open with C{refusalText}.
    @ivar holders: what a publish's confirm waits for, in order (the
        replication gate, the store): each L{IConfirmHolder} holds it until
        it has the message.
    @ivar pacer: how publishing connections wait for the replication
        boxes (L{None}: not replicating).
    @ivar verifier: checks passwords (in the broker, off the reactor
        thread).
    @ivar failedLogins: slows down and logs refused logins per source
        address; without it each is answered at once and logged.
    @ivar mayConfirm: asked before any confirm or commit completes; when it
        answers false (a primary whose etcd lease may have expired), nothing
        is confirmed. L{None}: always.
    @ivar limits: the connection and header-table limits, with the
        connections they count.
    @ivar replies: the direct reply-to consumers of every connection
        (L{qha.amqp.replyto}): a reply may come from any connection.
    """

    log = Logger()

    def __init__(
        self,
        vhost: VirtualHost,
        users: UserDatabase,
        clock: IReactorTime,
        heartbeat: int = 60,
        frameMax: int = 131072,
        channelMax: int = 2047,
        maxMessageSize: int = 128 * 1024 * 1024,
        handshakeTimeout: float = 10.0,
        holders: Iterable[IConfirmHolder] = (),
        pacer: IReplicationPacer | None = None,
        verifier: IPasswordVerifier | None = None,
        failedLogins: FailedLogins | None = None,
        mayConfirm: Callable[[], bool] | None = None,
        limits: ConnectionLimits | None = None,
    ) -> None:
        """
        @param holders: the L{IConfirmHolder}s a publish's confirm waits
            for (a cluster's replication gate, the store), in order.
        @param pacer: the replication gate, when replicating.
        @param limits: the connection limits (by default only the cap on
            header tables).
        """
        self.vhost = vhost
        self.verifier: IPasswordVerifier = verifier or SynchronousVerifier()
        self.failedLogins = failedLogins
        self.users = users
        self.clock = clock
        self.heartbeat = heartbeat
        self.frameMax = frameMax
        self.channelMax = channelMax
        self.maxMessageSize = maxMessageSize
        self.handshakeTimeout = handshakeTimeout
        self.limits = limits if limits is not None else ConnectionLimits()
        self.connections: set[AMQPServer] = set()
        self.acceptingClients = True
        self.refusalText = ""
        # A tuple: the channels loop over it for every publish.
        self.holders: tuple[IConfirmHolder, ...] = tuple(holders)
        self.pacer = pacer
        self.mayConfirm = mayConfirm
        # Users who may not log in over AMQP (the brokers' own HA user).
        self.refusedUsers: set[str] = set()
        # Direct reply-to's consumers (amq.rabbitmq.reply-to), any vhost.
        self.replies = DirectReplies()
        vhost.resources.listeners.append(self._memoryAlarm)
        # The broker's virtual hosts: connection.open picks one by name.
        self.vhosts = VirtualHosts.of(vhost)
        self.vhosts.replies = self.replies
        self.vhosts.observers.append(self)
        # Users and permissions changed at run time lie over the users file;
        # a user who loses access has its connections closed.
        users.attachAccounts(Accounts.of(self.vhosts))
        users.observers.add(self)

    def accessRevoked(self, user: str, vhost: str | None, text: str) -> None:
        """
        C{user} was deleted, had its password changed (C{vhost} L{None}),
        or lost its permissions in C{vhost}: its connections (to C{vhost})
        are closed with 320 CONNECTION_FORCED and C{text}, as RabbitMQ
        closes them.
        """
        for connection in [
            c for c in self.connections
            if c.user == user and (vhost is None or c.vhost.name == vhost)
        ]:
            connection.connectionError(ConnectionForcedRefusal(text))

    def vhostAdded(self, vhost: VirtualHost) -> None:
        """
        A virtual host was added: clients may open it.
        """

    def vhostDeleted(self, vhost: VirtualHost) -> None:
        """
        A virtual host was deleted: its connections are closed with 320
        CONNECTION_FORCED, as RabbitMQ closes them.
        """
        closing = [c for c in self.connections if c.vhost is vhost]
        if closing:
            self.log.info(
                "closing {count} connections of vhost {vhost!r}: it is deleted",
                count=len(closing),
                vhost=vhost.name,
            )
        for connection in closing:
            connection.connectionError(ConnectionForcedRefusal(f"vhost '{vhost.name}' is deleted"))

    def buildProtocol(self, addr: IAddress | None) -> "AMQPServer":  # type: ignore[override]
        protocol = AMQPServer(self)
        protocol.factory = self
        return protocol

    def disconnectAll(self, text: str) -> None:
        """
        Close every client connection with 320 CONNECTION_FORCED and C{text}
        (the broker stepped down or is stopping).
        """
        for connection in list(self.connections):
            connection.connectionError(ConnectionForcedRefusal(text))

    def _memoryAlarm(self, blocked: bool) -> None:
        if blocked:
            self.log.warn(
                "memory high watermark passed ({used} bytes held, {held} of them outside"
                " the queues): blocking publishers",
                used=self.vhost.resources.used,
                held=self.vhost.resources.held,
            )
        else:
            self.log.info("memory use fell below the high watermark: unblocking")
        for connection in list(self.connections):
            connection.memoryAlarm(blocked)


@implementer(IPushProducer)
class AMQPServer(Protocol):
    """
    One client connection.

    @ivar writable: false while the socket's send buffer is full, so that
        consumers stop taking messages and the queues hold them instead.
    """

    log = Logger()
    factory: BrokerFactory

    def __init__(self, factory: BrokerFactory) -> None:
        self.factory = factory
        self.vhost = factory.vhost
        self.clock = factory.clock
        self.state = AWAITING_HEADER
        self.channels: dict[int, Channel] = {}
        self.closingChannels: set[int] = set()
        self.frameMax = factory.frameMax
        self.channelMax = factory.channelMax
        self.heartbeat = 0
        self.clientProperties: dict[str, Any] = {}
        self.clientCapabilities: dict[str, Any] = {}
        self.user: str | None = None
        self.writable = True
        self._pending = b""
        self._yielded = False
        self._confirming: set[Channel] = set()
        self._lastReceived = 0.0
        self._heartbeatLoop: LoopingCall | None = None
        self._timeout: Any = None
        self._blockedSent = False
        self._pausedForMemory = False
        self._readPauses: set[str] = set()
        self._released = False
        self._loginRefusal: Any = None
        self._counted = False
        # The method (class << 16 | method) whose connection error closes
        # the connection; 0 for errors that no method caused.
        self._failedMethod = 0
        self.peer = "?"
        # When the client connected (the clock's seconds), for listings.
        self.connectedAt = 0.0

    # Connection lifetime

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        self.peer = f"{getattr(peer, 'host', peer)}:{getattr(peer, 'port', '')}"
        self.connectedAt = self.clock.seconds()
        self.factory.connections.add(self)
        # Confirms and deliveries are small frames that someone waits for.
        setNoDelay = getattr(self.transport, "setTcpNoDelay", None)
        if setNoDelay is not None:
            setNoDelay(True)
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self._lastReceived = self.clock.seconds()
        self._timeout = self.clock.callLater(
            self.factory.handshakeTimeout, self._handshakeTimedOut
        )

    def _handshakeTimedOut(self) -> None:
        self._timeout = None
        self.log.info("{peer} did not finish the AMQP handshake in time", peer=self.peer)
        self.transport.abortConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:
        """
        Release everything the connection held; safe to call twice (the
        broker calls it when it closes, the transport when the socket goes).
        """
        if self._released:
            return
        self._released = True
        self.state = CLOSED
        self.factory.connections.discard(self)
        if self._counted:
            self.log.info("connection closed: {peer}, user {user!r}, vhost {vhost!r}", peer=self.peer, user=self.user, vhost=self.vhost.name)
            self._counted = False
            self.factory.limits.closed(self.user or "")
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None
        if self._loginRefusal is not None and self._loginRefusal.active():
            self._loginRefusal.cancel()
        self._loginRefusal = None
        if self._heartbeatLoop is not None and self._heartbeatLoop.running:
            self._heartbeatLoop.stop()
        self._heartbeatLoop = None  # it holds a bound method of this protocol: no cycle
        for channel in list(self.channels.values()):
            channel.cleanUp()
        self.channels.clear()
        self.vhost.connectionClosed(self)

    def write(self, data: bytes) -> None:
        """
        Send C{data} unless the connection is going away.
        """
        if self.state is not CLOSED:
            self.transport.write(data)  # type: ignore[union-attr]

    # IPushProducer: the transport tells us when its send buffer is full.

    def pauseProducing(self) -> None:
        """
        The socket's send buffer is full: deliver nothing more to this
        client, and read nothing more from it (so a client that never reads
        its confirms or returns cannot make them pile up here).
        """
        self.writable = False
        self._pauseReading("write")

    def resumeProducing(self) -> None:
        """
        The send buffer drained: deliver and read again.
        """
        self.writable = True
        self._resumeReading("write")
        queues = {
            consumer.queue
            for channel in self.channels.values()
            for consumer in channel.consumers.values()
        }
        for queue in queues:
            queue.dispatch()

    def stopProducing(self) -> None:
        self.writable = False

    def _pauseReading(self, reason: str) -> None:
        if not self._readPauses and self.state is not CLOSED:
            self.transport.pauseProducing()  # type: ignore[union-attr]
        self._readPauses.add(reason)

    def _resumeReading(self, reason: str) -> None:
        if reason in self._readPauses:
            self._readPauses.discard(reason)
            if not self._readPauses and self.state is not CLOSED:
                self._lastReceived = self.clock.seconds()
                self.transport.resumeProducing()  # type: ignore[union-attr]

    # Frames

    def dataReceived(self, data: bytes) -> None:
        """
        Decode every whole frame in C{data} and keep the rest.
        """
        if self.state is AUTHENTICATING:
            # Reading is paused until the password is checked; keep what
            # was read already for then.
            self._pending += data
            return
        if self._yielded:
            # Waiting for a replication box to go out: keep it for then, and
            # stop reading if much piles up (a box can wait for a stalled
            # backup until it is dropped).
            self._pending += data
            self._lastReceived = self.clock.seconds()
            if len(self._pending) > YIELDED_BUFFER:
                self._pauseReading("replication")
            return
        if self._pending:
            data = self._pending + data
            self._pending = b""
        self._lastReceived = self.clock.seconds()
        if self.state is AWAITING_HEADER:
            if len(data) < 8:
                if wire.PROTOCOL_HEADER.startswith(data):
                    self._pending = data
                    return
                data = data + b"\x00" * 8
            if data[:8] != wire.PROTOCOL_HEADER:
                self.log.info(
                    "{peer} sent a bad protocol header {header!r}",
                    peer=self.peer,
                    header=data[:8],
                )
                self.transport.write(wire.PROTOCOL_HEADER)  # type: ignore[union-attr]
                self.transport.loseConnection()  # type: ignore[union-attr]
                self.state = CLOSED
                return
            self._sendStart()
            data = data[8:]
        offset = 0
        size = len(data)
        frameLimit = self.frameMax
        pacer = self.factory.pacer
        vhost = self.vhost
        # Replicating, the messages of this read reach their consumers only
        # once their box has gone to the backups (see the finally clause).
        batching = pacer is not None and pacer.sources and vhost.undispatched is None
        if batching:
            vhost.undispatched = set()
        try:
            while size - offset >= 8:
                frameType, number, length = _unpackFrameHeader(data, offset)
                if length > frameLimit:
                    raise FrameError(
                        f"frame of {length} bytes on channel {number} is larger"
                        f" than frame_max {frameLimit}"
                    )
                end = offset + 7 + length
                if end >= size:
                    break
                if data[end] != 0xCE:
                    raise FrameError(
                        f"frame on channel {number} does not end with 0xCE"
                        " (malformed or wrong length)"
                    )
                start = offset + 7
                offset = end + 1
                if frameType == 1:
                    self._methodFrame(number, data, start, end)
                elif frameType == 3:
                    self._bodyFrame(number, data[start:end])
                    if pacer is not None and pacer.full and pacer.shouldWait(size - offset):
                        # The replication box is full: let it go out before
                        # going on (see IReplicationPacer).
                        self._yielded = True
                        pacer.whenSent(self._boxSent)
                        break
                elif frameType == 2:
                    self._headerFrame(number, data[start:end])
                elif frameType == 8:
                    if number != 0:
                        raise FrameError("heartbeat frame on a channel other than 0")
                else:
                    raise FrameError(f"unknown frame type {frameType}")
                if self.state is CLOSED:
                    return
                if self.state is AUTHENTICATING:
                    break
        except ConnectionError as error:
            self.connectionError(
                error, malformed=isinstance(error, FrameError), index=self._failedMethod
            )
            return
        except ChannelError as error:
            # Raised outside a channel call: treat as fatal for the connection.
            self.connectionError(InternalError(error.replyText))
            return
        except Exception:
            self.log.failure("internal error handling data from {peer}", peer=self.peer)
            self.connectionError(
                InternalError("the broker failed handling this connection's data; see its log")
            )
            return
        finally:
            if batching:
                # Send the box first, written at once, then deliver: the
                # backups' round trip runs while the primary delivers, and
                # their acquires travel as one run in the next box.
                undispatched = vhost.undispatched
                vhost.undispatched = None
                if undispatched and pacer is not None:
                    pacer.sendNow()
                    for queue in undispatched:
                        queue.dispatch()
        if offset < size:
            self._pending = data[offset:]
        if self._confirming:
            for channel in self._confirming:
                channel.flushConfirms()
            self._confirming.clear()
        if self._pausedForMemory:
            self._pauseReading("memory")

    def _boxSent(self) -> None:
        """
        The replication box this connection waited for went out: go on
        with what was read meanwhile.
        """
        self._yielded = False
        if self.state is CLOSED:
            return
        self._resumeReading("replication")
        if self._pending:
            self.dataReceived(b"")

    def _methodFrame(self, number: int, data: bytes, start: int, end: int) -> None:
        if end - start < 4:
            raise FrameError(f"method frame on channel {number} is too short")
        index = _unpackMethodId(data, start)[0]
        if number:
            channel = self.channels.get(number)
            if channel is not None and not channel.closing:
                if index == PUBLISH:
                    try:
                        self._publish(channel, data, start + 4, end, number)
                    except ConnectionError:
                        self._failedMethod = index
                        raise
                    return
                if index == ACK and end - start == 13 and not channel.expectingContent:
                    deliveryTag, flags = _unpackAck(data, start + 4)
                    self._channelCall(number, index, channel.ack, deliveryTag, bool(flags & 1))
                    return
        try:
            frame = self._decode(index, data[start + 4 : end], number)
            if number == 0:
                self._connectionMethod(frame, index)
            else:
                self._channelMethod(number, frame, index)
        except ConnectionError:
            # The connection.close names the method that failed, as the
            # specification and RabbitMQ have it.
            self._failedMethod = index
            raise

    def _decode(self, index: int, payload: bytes, number: int) -> Any:
        cls = commands.INDEX_MAPPING.get(index)
        if cls is None:
            raise NotImplemented_(
                f"unknown method class {index >> 16} method {index & 0xFFFF}"
                f" on channel {number}"
            )
        frame = cls()
        try:
            frame.unmarshal(payload)
            # Tables nested deeper than the replication stream takes are refused.
            table = getattr(frame, "arguments", None) or getattr(frame, "client_properties", None)
            if table:
                checkNesting(table)
                self.factory.limits.checkTable(table, "the arguments table")
        except Exception as error:
            raise SyntaxError(
                f"could not decode the arguments of {getattr(cls, 'name', cls)} on channel"
                f" {number}: {error}"
            ) from None
        return frame

    def _publish(self, channel: Channel, data: bytes, start: int, end: int, number: int) -> None:
        """
        basic.publish without pamqp: reserved short, exchange, routing key,
        flags.
        """
        if self.state is not OPEN:
            return
        try:
            exchangeLength = data[start + 2]
            keyStart = start + 3 + exchangeLength
            keyLength = data[keyStart]
            flagsAt = keyStart + 1 + keyLength
            if flagsAt >= end:
                raise IndexError()
            flags = data[flagsAt]
            exchangeName = data[start + 3 : keyStart].decode("utf-8")
            routingKey = data[keyStart + 1 : flagsAt].decode("utf-8")
        except (IndexError, UnicodeDecodeError):
            raise SyntaxError(
                f"could not decode the arguments of Basic.Publish on channel {number}"
            ) from None
        if channel.expectingContent:
            raise UnexpectedFrame(
                f"basic.publish on channel {number} while the content of the"
                " previous message was expected"
            )
        self._channelCall(
            number,
            PUBLISH,
            channel.publish,
            exchangeName,
            routingKey,
            data[start + 2 : flagsAt],
            bool(flags & 1),
            bool(flags & 2),
        )
        if self.factory.vhost.resources.blocked:
            self._pausedForMemory = True

    def _channelCall(self, number: int, index: int, call: Any, *args: Any) -> None:
        try:
            call(*args)
        except ChannelError as error:
            self.channelError(number, error, index)

    def _headerFrame(self, number: int, payload: bytes) -> None:
        channel = self.channels.get(number)
        if channel is None:
            if number in self.closingChannels:
                return
            raise ChannelStateError(f"content header frame on channel {number} that is not open")
        if channel.closing:
            return
        # A refused message closes its channel naming basic.publish, as in
        # RabbitMQ.
        self._channelCall(number, PUBLISH, channel.contentHeader, payload)
        if self.factory.vhost.resources.blocked and channel.holdsContent:
            self._pausedForMemory = True

    def _bodyFrame(self, number: int, payload: bytes) -> None:
        channel = self.channels.get(number)
        if channel is None:
            if number in self.closingChannels:
                return
            raise ChannelStateError(f"content body frame on channel {number} that is not open")
        if channel.closing:
            return
        self._channelCall(number, PUBLISH, channel.contentBody, payload)
        if self.factory.vhost.resources.blocked and channel.holdsContent:
            # Content held while memory is high (an unfinished body counts
            # against the watermark): read no more from this publisher.
            self._pausedForMemory = True

    # Connection methods

    def _connectionMethod(self, frame: Any, index: int) -> None:
        if isinstance(frame, commands.Connection.Close):
            self.write(wire.connectionCloseOk())
            self.transport.loseConnection()  # type: ignore[union-attr]
            self.state = CLOSED
            self.connectionLost()
            return
        if isinstance(frame, commands.Connection.CloseOk):
            if self.state is CLOSING:
                self.transport.loseConnection()  # type: ignore[union-attr]
                self.state = CLOSED
                self.connectionLost()
                return
            raise CommandInvalid("connection.close-ok without a connection.close")
        if self.state is CLOSING:
            return
        if self.state is AWAITING_START_OK and isinstance(frame, commands.Connection.StartOk):
            self._startOk(frame)
        elif self.state is AWAITING_TUNE_OK and isinstance(frame, commands.Connection.TuneOk):
            self._tuneOk(frame)
        elif self.state is AWAITING_OPEN and isinstance(frame, commands.Connection.Open):
            self._open(frame)
        elif self.state is OPEN and isinstance(
            frame, (commands.Connection.Blocked, commands.Connection.Unblocked)
        ):
            return
        elif self.state is OPEN and isinstance(frame, commands.Connection.UpdateSecret):
            self._updateSecret(frame)
        else:
            raise CommandInvalid(
                f"{frame.name} is not expected on channel 0 while {self.state}"
            )

    def _sendStart(self) -> None:
        properties = {
            "product": "qha",
            "version": __version__,
            "platform": f"Python {platform.python_version()} / Twisted",
            "information": "qha: AMQP 0-9-1 on Twisted, https://example.invalid/qha",
            "copyright": "qha authors",
            "cluster_name": "qha",
            "capabilities": {
                "publisher_confirms": True,
                "basic.nack": True,
                "consumer_cancel_notify": True,
                "exchange_exchange_bindings": True,
                "per_consumer_qos": True,
                "authentication_failure_close": True,
                "connection.blocked": True,
                "consumer_priorities": False,
                "direct_reply_to": True,
            },
        }
        mechanisms = list(self.factory.users.mechanisms())
        if peerCommonName(self.transport) is not None:
            # RabbitMQ's rabbitmq_auth_mechanism_ssl: offered only to a client
            # that presented a certificate the listener checked.
            mechanisms.append("EXTERNAL")
        self.write(wire.connectionStart(properties, " ".join(mechanisms)))
        self.state = AWAITING_START_OK

    def _startOk(self, frame: commands.Connection.StartOk) -> None:
        self.clientProperties = frame.client_properties or {}
        capabilities = self.clientProperties.get("capabilities") or {}
        self.clientCapabilities = capabilities if isinstance(capabilities, dict) else {}
        response: bytes
        if isinstance(frame.response, str):
            response = frame.response.encode("utf-8")
        else:
            response = frame.response or b""
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        host = str(getattr(peer, "host", ""))
        loopback = host in ("127.0.0.1", "::1") or host.startswith("127.")
        # The password is checked off the reactor thread: read nothing more
        # from this client until the answer (the Deferred may also have
        # fired already).
        self.state = AUTHENTICATING
        if frame.mechanism == "EXTERNAL":
            checked = self._external(loopback)
        else:
            checked = self.factory.users.login(
                str(frame.mechanism), response or b"", loopback, self.factory.verifier
            )
        checked.addCallbacks(self._loggedIn, self._loginFailed, errbackArgs=(host,))
        checked.addErrback(self._loginBroke)
        if self.state is AUTHENTICATING:
            self._pauseReading("login")

    def _external(self, loopback: bool) -> Deferred[str]:
        """
        SASL EXTERNAL, as RabbitMQ's C{rabbitmq_auth_mechanism_ssl}: the user
        is the common name of the client's certificate (checked against the
        listener's C{--tls-client-ca} by the TLS handshake), and must be a
        user of the broker; no password.
        """
        user = peerCommonName(self.transport)
        if user is None:
            return fail(
                AuthenticationFailed(
                    "login refused: mechanism EXTERNAL needs a client certificate"
                    " (a TLS port with --tls-client-ca)",
                    mechanism="EXTERNAL",
                )
            )
        reason = None
        if user not in self.factory.users.users():
            reason = "the certificate's common name is not a user of this broker"
        elif user == GUEST and not loopback:
            reason = "user 'guest' may only connect from a loopback address"
        if reason is not None:
            return fail(
                AuthenticationFailed(
                    f"login refused for user '{user}' with mechanism EXTERNAL: {reason}",
                    user=user,
                    mechanism="EXTERNAL",
                    logReason=reason,
                )
            )
        return succeed(user)

    def _loggedIn(self, user: str) -> None:
        """
        The password was right: tune the connection, and go on with what
        the client sent meanwhile.
        """
        if self.state is not AUTHENTICATING:
            return
        if user in self.factory.refusedUsers:
            self.connectionError(
                ConnectionAccessRefused(
                    f"user '{user}' is the brokers' replication user and may not"
                    " connect as a client"
                )
            )
            return
        self.user = user
        self.write(
            wire.connectionTune(
                self.factory.channelMax, self.factory.frameMax, self.factory.heartbeat
            )
        )
        self.state = AWAITING_TUNE_OK
        if "login" in self._readPauses:
            self._resumeReading("login")
            if self._pending:
                self.dataReceived(b"")

    def _loginFailed(self, failure: Failure, host: str) -> None:
        """
        The login was refused: count it against the client's address (also
        if the client is gone already), and tell the client, after the
        delay that address has earned.
        """
        failure.trap(AuthenticationFailed)
        error = failure.value
        assert isinstance(error, AuthenticationFailed)
        delay = 0.0
        if self.factory.failedLogins is not None:
            delay = self.factory.failedLogins.failed(host, error)
        else:
            self.log.info("{peer}: {failure}", peer=self.peer, failure=str(error))
        if self.state is not AUTHENTICATING:
            return
        if delay > 0:
            self._loginRefusal = self.clock.callLater(delay, self._refuseLogin, error)
        else:
            self._refuseLogin(error)

    def _refuseLogin(self, error: AuthenticationFailed) -> None:
        """
        Close the connection with 403 ACCESS_REFUSED (logged by
        L{FailedLogins}, not here: a flood must not write a line each).
        """
        self._loginRefusal = None
        if self.state is not AUTHENTICATING:
            return
        self._pending = b""
        # Connection.StartOk (10, 11) is the method refused, as in RabbitMQ.
        self.write(wire.connectionClose(error.replyCode, error.replyText, 10, 11))
        self.state = CLOSING
        self.transport.loseConnection()  # type: ignore[union-attr]

    def _loginBroke(self, failure: Failure) -> None:
        """
        Checking the login failed for another reason than a refusal.
        """
        self.log.failure("checking the login of {peer} failed", failure, peer=self.peer)
        if self.state is AUTHENTICATING:
            self.connectionError(
                InternalError("the broker failed checking this login; see its log")
            )

    def _tuneOk(self, frame: commands.Connection.TuneOk) -> None:
        serverFrameMax = self.factory.frameMax
        if frame.frame_max and not 4096 <= frame.frame_max <= serverFrameMax:
            raise NotAllowed(
                f"frame_max={frame.frame_max} is outside the allowed range"
                f" 4096..{serverFrameMax}"
            )
        self.frameMax = frame.frame_max or serverFrameMax
        serverChannelMax = self.factory.channelMax
        if frame.channel_max and frame.channel_max > serverChannelMax:
            raise NotAllowed(
                f"channel_max={frame.channel_max} is more than the server's"
                f" {serverChannelMax}"
            )
        self.channelMax = frame.channel_max or serverChannelMax
        self.heartbeat = frame.heartbeat
        if self.heartbeat:
            self._heartbeatLoop = LoopingCall(self._heartbeatTick)
            self._heartbeatLoop.clock = self.clock
            self._heartbeatLoop.start(self.heartbeat / 2.0, now=False)
        self.state = AWAITING_OPEN

    def _heartbeatTick(self) -> None:
        """
        Send a heartbeat; drop a peer silent for two heartbeat intervals.
        """
        # While reading is paused the peer's heartbeats wait unread, so its
        # silence says nothing (RabbitMQ pauses its monitor when blocking).
        silent = self.clock.seconds() - self._lastReceived
        if not self._readPauses and silent >= 2 * self.heartbeat:
            self.log.info(
                "{peer} sent nothing for {seconds}s (two heartbeat intervals):"
                " closing the connection",
                peer=self.peer,
                seconds=2 * self.heartbeat,
            )
            if self._heartbeatLoop is not None and self._heartbeatLoop.running:
                self._heartbeatLoop.stop()
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        self.write(wire.HEARTBEAT_FRAME)

    def _open(self, frame: commands.Connection.Open) -> None:
        vhost = frame.virtual_host
        if isinstance(vhost, bytes):
            vhost = vhost.decode("utf-8", "replace")
        found = self.factory.vhosts.get(vhost)
        if found is None:
            # RabbitMQ: 530 NOT_ALLOWED "vhost x not found" (rabbit_reader).
            raise NotAllowed(f"vhost '{vhost}' not found")
        if self.factory.users.permissions(self.user, vhost) is None:
            raise vhostRefused(vhost, self.user)
        self.vhost = found
        if not self.factory.acceptingClients:
            raise ConnectionForcedRefusal(self.factory.refusalText)
        self.factory.limits.open(self.user or "")
        self._counted = True
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None
        self.write(wire.connectionOpenOk())
        self.state = OPEN
        self.log.info("connection opened: {peer}, user {user!r}, vhost {vhost!r}", peer=self.peer, user=self.user, vhost=self.vhost.name)
        if self.vhost.resources.blocked:
            self.memoryAlarm(True)

    def _updateSecret(self, frame: commands.Connection.UpdateSecret) -> None:
        """
        connection.update-secret, which clients send to renew an expiring
        credential (an OAuth 2 token) on an open connection.

        Like RabbitMQ 3.10, whose internal (password) backend keeps no
        state that can expire and so accepts any new secret
        (C{rabbit_access_control:update_state}), qha's password users have
        nothing to renew: the secret is accepted and answered with
        update-secret-ok, and the connection stays logged in as its user.
        """
        reason = frame.reason
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        self.log.info(
            "{peer}: user '{user}' updated secret, reason: {reason}",
            peer=self.peer,
            user=self.user,
            reason=reason,
        )
        self.write(wire.simple(0, 10, 71))

    # Channels

    def _channelMethod(self, number: int, frame: Any, index: int) -> None:
        if self.state is CLOSING:
            return
        if self.state is not OPEN:
            raise ChannelStateError(
                f"{frame.name} on channel {number} before the connection was open"
            )
        channel = self.channels.get(number)
        if isinstance(frame, commands.Channel.Open):
            if channel is not None or number in self.closingChannels:
                raise ChannelStateError(f"second 'channel.open' seen on channel {number}")
            if number > self.channelMax:
                opened = len(self.channels) + len(self.closingChannels)
                if opened >= self.channelMax:
                    # RabbitMQ's words, and like RabbitMQ no method ids:
                    # the limit, not channel.open, is what failed.
                    self.connectionError(
                        NotAllowed(
                            f"number of channels opened ({opened}) has"
                            f" reached the negotiated channel_max ({self.channelMax})"
                        )
                    )
                    return
                # RabbitMQ counts channels only; the specification makes
                # channel_max the highest channel number, as here.
                raise NotAllowed(
                    f"channel {number} is above the negotiated channel_max"
                    f" {self.channelMax}"
                )
            self.channels[number] = Channel(self, number)
            self.write(wire.channelOpenOk(number))
            return
        if channel is None:
            if number in self.closingChannels:
                if isinstance(frame, (commands.Channel.CloseOk, commands.Channel.Close)):
                    self.closingChannels.discard(number)
                    if isinstance(frame, commands.Channel.Close):
                        self.write(wire.channelCloseOk(number))
                return
            raise ChannelStateError(
                f"expected 'channel.open' on channel {number}, got {frame.name}"
            )
        if isinstance(frame, commands.Channel.Close):
            channel.cleanUp()
            del self.channels[number]
            self.write(wire.channelCloseOk(number))
            return
        if isinstance(frame, commands.Channel.CloseOk):
            raise ChannelStateError(
                f"channel.close-ok on channel {number} without a channel.close"
            )
        if channel.expectingContent:
            raise UnexpectedFrame(
                f"{frame.name} on channel {number} while the content of a"
                " message was expected"
            )
        self._channelCall(number, index, channel.handleMethod, frame)

    def confirmReady(self, channel: Channel) -> None:
        """
        C{channel} has publishes to confirm at the end of this read.
        """
        self._confirming.add(channel)

    def channelError(self, number: int, error: ChannelError, index: int) -> None:
        """
        Close channel C{number} with C{error}'s code and text.
        """
        channel = self.channels.pop(number, None)
        if channel is None:
            return
        self.log.info(
            "{peer} channel {channel}: {text}",
            peer=self.peer,
            channel=number,
            text=error.replyText,
        )
        channel.cleanUp()
        self._confirming.discard(channel)
        self.closingChannels.add(number)
        self.write(
            wire.channelClose(
                number, error.replyCode, error.replyText, index >> 16, index & 0xFFFF
            )
        )

    def connectionError(self, error: AMQPError, malformed: bool = False, index: int = 0) -> None:
        """
        Close the connection with C{error}'s code and text. After a malformed
        frame nothing more can be read, so the socket closes at once.
        """
        if self.state in (CLOSED, CLOSING):
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        self.log.info("{peer}: closing connection: {text}", peer=self.peer, text=error.replyText)
        handshaking = self.state is not OPEN
        self.write(wire.connectionClose(error.replyCode, error.replyText, index >> 16, index & 0xFFFF))
        for channel in list(self.channels.values()):
            channel.cleanUp()
        self._confirming.clear()
        self.state = CLOSING
        if malformed or handshaking:
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        self._timeout = self.clock.callLater(3.0, self._closeTimedOut)

    def _closeTimedOut(self) -> None:
        self._timeout = None
        self.transport.abortConnection()  # type: ignore[union-attr]

    def memoryAlarm(self, blocked: bool) -> None:
        """
        The broker's memory use crossed the high watermark.
        """
        if self.state is not OPEN:
            return
        if self.clientCapabilities.get("connection.blocked"):
            if blocked and not self._blockedSent:
                self._blockedSent = True
                self.write(wire.connectionBlocked("low on memory"))
            elif not blocked and self._blockedSent:
                self._blockedSent = False
                self.write(wire.connectionUnblocked())
        if not blocked:
            self._pausedForMemory = False
            self._resumeReading("memory")


class ConnectionForcedRefusal(ConnectionError):
    """
    A backup refuses clients: 320 CONNECTION_FORCED tells a client library
    to try the next address at once.
    """

    replyCode = 320
    replyName = "CONNECTION_FORCED"


__all__ = ["AMQPServer", "BrokerFactory", "InternalError"]
