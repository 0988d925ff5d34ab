"""
The AMP connection of a node, either way (accepted on C{--ha-port} or made to
a peer): one L{Session} per connection holds its authentication (the
challenge-response of L{qha.ha.auth}, answered by L{LoginLocator}), and the
locators composed on it (replication, and admin when C{tap.py} adds it)
answer the commands once the peer logged in as an identity allowed to use
them.

Every box a peer sends is bounded while it is parsed, before it costs
anything (L{NodeAMP}): a peer that has not logged in may send only small
boxes of a few keys, and must log in within L{LOGIN_TIMEOUT} seconds; a
malformed box (an empty one, an answer to nothing asked, a command whose
arguments do not parse) closes the link with one log line naming the peer
and what was wrong, never a traceback.
"""

from __future__ import annotations

import hmac
import os
import time
from typing import Any, Callable, Sequence

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime, ITransport
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from .auth import (
    BROKER,
    MAX_USERNAME,
    NONCE_SIZE,
    TRUSTED,
    Authority,
    Credentials,
    Identity,
    proof,
)
from .commands import CHUNK, Authenticate, Challenge, NotAuthenticated

SessionCredentials = Authority | Credentials | None
"""
What a connection's session checks logins against: an L{Authority} (the
broker's AMP port), L{Credentials} alone (an L{Authority} of them, with no
delay on failures), or L{None}: the port asks for no login (in-memory unit
tests only; C{qha.tap} always gives an L{Authority}).
"""

LOGIN_TIMEOUT = 10.0
"""
Seconds an accepted connection may stay without logging in.
"""

LOGIN_BOX_BYTES = 64 * 1024
"""
The most bytes of keys and values one box may carry before the peer logged
in: a login is a few short strings.
"""

LOGIN_BOX_KEYS = 12
"""
The most keys one box may carry before the peer logged in.
"""

BOX_BYTES = 2**31
"""
The most bytes of keys and values one box may carry once the peer logged
in. The largest box a broker sends is an L{qha.ha.commands.Events} box:
one message of the largest C{--max-message-size} (512 MiB) in the live
stream, or a backup's whole catch-up (a snapshot of the queues' contents,
sent as one box) spread over 64 KiB chunks; 2 GiB leaves a margin over the
first and is the bound on the second.
"""

BOX_KEYS = BOX_BYTES // CHUNK + 64
"""
The most keys one box may carry once the peer logged in: the chunks of
the largest box, and the few other arguments.
"""

KEY_COST = 64
"""
Bytes a key is counted for beyond its length and its value's (what a
dictionary entry and two byte strings cost), so that a box of many tiny
keys is bounded by L{BOX_BYTES} too.
"""


class Session:
    """
    The authentication of one AMP connection, shared by every locator on it
    (see L{qha.ha.auth} for the exchange).

    @ivar authority: the identities a peer may log in as, or L{None} when
        any peer may talk at once.
    @ivar identity: who the peer proved to be, or L{None} before it did.
    @ivar connection: the connection's protocol, once built.
    """

    def __init__(self, credentials: SessionCredentials, authenticated: bool = False) -> None:
        """
        @param credentials: what a peer logs in with.
        @param authenticated: trust the peer at once (a connection this
            broker made itself, to a peer that proved itself).
        """
        self.authority = Authority.of(credentials)
        self.identity: Identity | None = None
        if authenticated or self.authority is None:
            self.identity = TRUSTED
        self.connection: NodeAMP | None = None
        self._challenge: tuple[str, bytes, bytes] | None = None

    @property
    def authenticated(self) -> bool:
        """
        Whether the peer logged in (or needs not).
        """
        return self.identity is not None

    @authenticated.setter
    def authenticated(self, value: bool) -> None:
        """
        Trust the peer as a broker (C{True}), or forget its login.
        """
        self.identity = TRUSTED if value else None

    def check(self, role: str = BROKER) -> None:
        """
        @param role: what the command needs: L{qha.ha.auth.BROKER}
            (replication, by default) or L{qha.ha.auth.ADMIN}.
        @raise NotAuthenticated: if the peer has not logged in, or its
            identity lacks C{role}.
        """
        if self.identity is None:
            wanted = self.authority.wanted if self.authority is not None else "a login"
            raise NotAuthenticated(f"log in first with {wanted}")
        if role not in self.identity.roles:
            raise NotAuthenticated(
                f"{self.identity.name!r} may use the admin commands only, not replication"
                if role == BROKER
                else f"{self.identity.name!r} may not use the admin commands"
            )

    @property
    def peer(self) -> str:
        """
        The peer's address (C{host:port}), for the logs.
        """
        connection = self.connection
        transport = connection.transport if connection is not None else None
        if transport is None:
            return "?"
        address = transport.getPeer()
        host, port = getattr(address, "host", None), getattr(address, "port", None)
        return f"{host}:{port}" if host is not None else str(address)

    @property
    def who(self) -> str:
        """
        Who is on this connection, for the log of an admin action.
        """
        name = self.identity.name if self.identity is not None else "nobody"
        return f"{name} from {self.peer}"

    def challenge(self, username: str, nonce: bytes) -> bytes:
        """
        The first step of a login: remember the client's nonce and answer
        with this side's.

        @raise NotAuthenticated: for a nonce or username out of bounds.
        """
        if self.authority is None:
            raise NotAuthenticated("this broker asks for no login")
        if len(nonce) != NONCE_SIZE:
            raise NotAuthenticated(f"the nonce must have {NONCE_SIZE} bytes, not {len(nonce)}")
        if len(username) > MAX_USERNAME:
            raise NotAuthenticated(f"a username has at most {MAX_USERNAME} characters")
        serverNonce = os.urandom(NONCE_SIZE)
        self.identity = None
        self._challenge = (username, nonce, serverNonce)
        return serverNonce

    def authenticate(self, clientProof: bytes) -> bytes | Deferred[Any]:
        """
        The second step: check the client's proof (in constant time) and
        answer with this side's; one proof per challenge.

        @return: this side's proof, or a L{Deferred} that fails with
            L{NotAuthenticated} after the delay of a failed login.
        """
        authority, challenge, self._challenge = self.authority, self._challenge, None
        if authority is None or challenge is None:
            raise NotAuthenticated("send Challenge before Authenticate")
        username, clientNonce, serverNonce = challenge
        known = authority.lookUp(username)
        # An unknown user is checked against a random key: same work, same answer.
        identity, key = known if known is not None else (None, os.urandom(32))
        expected = proof(key, b"client", username, clientNonce, serverNonce)
        if not hmac.compare_digest(clientProof, expected) or identity is None:
            source = self.peer.rpartition(":")[0] or self.peer
            return authority.refuse(source, username, self._refusal(authority, username))
        if not identity.roles:
            # A user of the users file who is not an administrator: the
            # password was right, so saying why costs nothing.
            source = self.peer.rpartition(":")[0] or self.peer
            return authority.refuse(
                source,
                username,
                f"user {username!r} may not administer this broker: it has no"
                " administrator tag in the users file",
            )
        self.identity = identity
        return proof(key, b"server", username, clientNonce, serverNonce)

    @staticmethod
    def _refusal(authority: Authority, username: str) -> str:
        """
        What a refused login is told (never whether the user exists).
        """
        if username == "" and authority.wanted == "the cluster secret":
            return (
                "wrong cluster secret (every broker of a cluster, and qha-admin,"
                " needs a copy of the same --ha-secret-file)"
            )
        return f"bad HA username or password for {username!r}"


class LoginLocator(amp.CommandLocator):
    """
    Answers L{Challenge} and L{Authenticate} for a L{Session}.
    """

    def __init__(self, session: Session) -> None:
        """
        @param session: the connection's authentication.
        """
        super().__init__()
        self.session = session

    @Challenge.responder
    def challenge(self, username: str, nonce: bytes) -> dict[str, Any]:
        """
        Start a login.
        """
        answer: dict[str, Any] = {"nonce": self.session.challenge(username, nonce)}
        authority = self.session.authority
        kdf = authority.keyDerivation(username) if authority is not None else None
        if kdf is not None:
            answer["kdf"] = kdf
        return answer

    @Authenticate.responder
    def authenticate(self, proof: bytes) -> dict[str, Any] | Deferred[dict[str, Any]]:
        """
        Finish a login.
        """
        answer = self.session.authenticate(proof)
        if isinstance(answer, Deferred):
            return answer
        return {"proof": answer}


@implementer(amp.IResponderLocator)
class Locators:
    """
    Several locators answering on one connection: the first that knows a
    command answers it. C{tap.py} composes replication and admin this way on
    the one AMP port.
    """

    def __init__(self, locators: Sequence[amp.IResponderLocator]) -> None:
        """
        @param locators: asked in order.
        """
        self.locators = list(locators)

    def locateResponder(self, name: bytes) -> Callable[[amp.AmpBox], Any] | None:
        """
        The responder of the first locator that knows C{name}.
        """
        for locator in self.locators:
            responder = locator.locateResponder(name)
            if responder is not None:
                return responder  # type: ignore[no-any-return]
        return None

    def lost(self) -> None:
        """
        The connection went away: tell every locator that cares.
        """
        for locator in self.locators:
            lost = getattr(locator, "lost", None)
            if lost is not None:
                lost()


LocatorFactory = Callable[[Session], amp.IResponderLocator]
"""
Makes a connection's locator for its session.
"""


class RefusalLog:
    """
    Logs why links were refused, at most C{burst} lines every C{period}
    seconds, so that a peer opening link after link cannot fill the log;
    the next line allowed says how many were left out.
    """

    log = Logger()

    def __init__(
        self, clock: IReactorTime | None = None, burst: int = 10, period: float = 10.0
    ) -> None:
        """
        @param clock: keeps time (L{None}: the monotonic clock).
        @param burst: lines allowed in one period.
        @param period: seconds.
        """
        self.seconds: Callable[[], float] = clock.seconds if clock is not None else time.monotonic
        self.burst = burst
        self.period = period
        self.periodStart = -float("inf")
        self.logged = 0
        self.suppressed = 0

    def refused(self, peer: str, what: str, closed: bool = True) -> bool:
        """
        Log that the link of C{peer} was closed because of C{what} (or,
        not C{closed}, that its command was refused), unless too many were
        logged lately.

        @return: whether a line was logged.
        """
        now = self.seconds()
        if now - self.periodStart >= self.period:
            self.periodStart = now
            self.logged = 0
        if self.logged >= self.burst:
            self.suppressed += 1
            return False
        self.logged += 1
        suppressed, self.suppressed = self.suppressed, 0
        self.log.warn(
            "closing the AMP link of {peer}: {what}{more}"
            if closed
            else "refused a command of {peer}: {what}{more}",
            peer=peer,
            what=what,
            more=f" ({suppressed} more refusals not logged)" if suppressed else "",
        )
        return True


_refusals = RefusalLog()
"""
The refusals of links made without a factory's (to peers).
"""


class BadArgument(amp.RemoteAmpError):
    """
    A command's arguments did not parse: answered with C{BAD_ARGUMENT} to a
    peer that logged in (one that did not is dropped).
    """

    def __init__(self, description: str) -> None:
        """
        @param description: what was wrong.
        """
        super().__init__(b"BAD_ARGUMENT", description)


def _peerName(address: IAddress | None) -> str:
    """
    C{host:port} of an address, or what it says of itself.
    """
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None and port is not None:
        return f"{host}:{port}"
    return str(address)


def _shown(value: bytes, limit: int = 40) -> str:
    """
    The start of a byte string a peer sent, for a log line.
    """
    return repr(value[:limit]) + ("..." if len(value) > limit else "")


class NodeAMP(amp.AMP):
    """
    An AMP connection of the node, either way; tells its locators when it
    goes, and whoever asked with L{whenLost}. It does not log every
    connection (probes come every heartbeat).

    Each box is bounded as it is parsed: before the peer logged in to at
    most L{LOGIN_BOX_BYTES} and L{LOGIN_BOX_KEYS}, after at most
    L{BOX_BYTES} and L{BOX_KEYS}. A box past its bound, or malformed, closes
    the link (see L{refuse}).

    @ivar refused: why the link was closed, once it was refused.
    """

    refusals = _refusals

    def __init__(self, locator: amp.IResponderLocator, session: Session | None = None) -> None:
        """
        @param locator: answers the peer's commands.
        @param session: the connection's authentication.
        """
        super().__init__(locator=locator)
        self.session = session
        self._lostCallbacks: list[Callable[[Failure], None]] = []
        self.refused: str | None = None
        self._boxBytes = 0
        self._boxKeys = 0
        self._loginDeadline: tuple[IReactorTime, float] | None = None
        self._loginTimer: IDelayedCall | None = None
        self._transportPeer: IAddress | None = None

    def closeUnlessLoggedIn(
        self, clock: IReactorTime, timeout: float, refusals: RefusalLog | None = None
    ) -> None:
        """
        Close the connection if the peer has not logged in C{timeout}
        seconds after it connected (an accepted connection).

        @param refusals: where refusals are logged (a factory's, shared by
            its connections).
        """
        self._loginDeadline = (clock, timeout)
        if refusals is not None:
            self.refusals = refusals

    def makeConnection(self, transport: ITransport) -> None:  # type: ignore[override]
        """
        Start the connection; a box's answer is what a publisher's confirm
        waits for, so Nagle is off.
        """
        self._transportPeer = transport.getPeer()
        self._transportHost = transport.getHost()
        setNoDelay = getattr(transport, "setTcpNoDelay", None)
        if setNoDelay is not None:
            setNoDelay(True)
        if self._loginDeadline is not None and not self.authenticated:
            clock, timeout = self._loginDeadline
            self._loginTimer = clock.callLater(timeout, self._loginTimedOut, timeout)
        amp.BinaryBoxProtocol.makeConnection(self, transport)

    @property
    def authenticated(self) -> bool:
        """
        Whether the peer logged in (or needs not).
        """
        return self.session is None or self.session.authenticated

    @property
    def peer(self) -> str:
        """
        The peer's address, for log lines.
        """
        return _peerName(self._transportPeer)

    def _loginTimedOut(self, timeout: float) -> None:
        """
        The peer had C{timeout} seconds to log in: close the link unless it
        did.
        """
        self._loginTimer = None
        if not self.authenticated:
            self.refuse(f"it did not log in within {timeout:g} seconds")

    def refuse(self, what: str) -> None:
        """
        Close the link because of C{what} (the peer's fault), logging one
        line naming the peer (rate limited); read nothing more from it.
        """
        if self.refused is not None:
            return
        self.refused = what
        # Stop the string parser's loop over what this read holds.
        self.paused = True
        self._unprocessed = b""
        self._currentBox = None
        self.refusals.refused(self.peer, what)
        if self.transport is not None:
            abort = getattr(self.transport, "abortConnection", None)
            if abort is not None:
                abort()
            else:
                self.transport.loseConnection()

    # Parsing, bounded

    def dataReceived(self, data: bytes) -> None:
        """
        Parse boxes, unless the link was refused.
        """
        if self.refused is None:
            amp.AMP.dataReceived(self, data)

    def _count(self, size: int, keys: int) -> bool:
        """
        Count C{size} bytes and C{keys} keys into the box being parsed.

        @return: whether the box is still within its bounds (if not, the
            link was refused).
        """
        self._boxBytes += size
        self._boxKeys += keys
        if self.authenticated:
            maxBytes, maxKeys, when = BOX_BYTES, BOX_KEYS, ""
        else:
            maxBytes, maxKeys, when = LOGIN_BOX_BYTES, LOGIN_BOX_KEYS, " before logging in"
        if self._boxBytes > maxBytes:
            self.refuse(f"a box of more than {maxBytes} bytes{when}")
            return False
        if self._boxKeys > maxKeys:
            self.refuse(f"a box of more than {maxKeys} keys{when}")
            return False
        return True

    def proto_init(self, string: bytes) -> str:
        """
        The first key of a box: start counting.
        """
        self._boxBytes = 0
        self._boxKeys = 0
        return amp.AMP.proto_init(self, string)  # type: ignore[no-any-return]

    def proto_key(self, string: bytes) -> str:
        """
        A key, counted; or the end of the box.
        """
        if string and not self._count(len(string) + KEY_COST, 1):
            return "init"
        return amp.AMP.proto_key(self, string)  # type: ignore[no-any-return]

    def proto_value(self, string: bytes) -> str:
        """
        A value, counted.
        """
        if not self._count(len(string), 0):
            return "init"
        return amp.AMP.proto_value(self, string)  # type: ignore[no-any-return]

    def lengthLimitExceeded(self, length: int) -> None:
        """
        A key longer than AMP allows.
        """
        self.refuse(f"a key of {length} bytes (AMP allows 255)")

    # Boxes, validated

    def ampBoxReceived(self, box: amp.AmpBox) -> None:
        """
        Dispatch a whole box, refusing those AMP would raise on or log as a
        traceback: empty ones, answers to nothing asked, errors without a
        code, commands wanting no answer from a peer not logged in.
        """
        if self.refused is not None:
            return
        if amp.ANSWER in box or amp.ERROR in box:
            tag = box[amp.ANSWER] if amp.ANSWER in box else box[amp.ERROR]
            if tag not in (self._outstandingRequests or {}):
                self.refuse(f"an answer to a question never asked ({_shown(tag)})")
                return
            if amp.ANSWER not in box and (
                amp.ERROR_CODE not in box or amp.ERROR_DESCRIPTION not in box
            ):
                self.refuse("an error without its code or description")
                return
        elif amp.COMMAND in box:
            if amp.ASK not in box and not self.authenticated:
                self.refuse(
                    f"a command ({_shown(box[amp.COMMAND])}) wanting no answer before logging in"
                )
                return
        else:
            self.refuse(
                "an empty box" if not box else "a box that is neither a command nor an answer"
            )
            return
        amp.AMP.ampBoxReceived(self, box)

    def dispatchCommand(self, box: amp.AmpBox) -> Deferred[Any]:
        """
        Call the command's responder; arguments that do not parse close the
        link of a peer not logged in, and are answered with C{BAD_ARGUMENT}
        (without a traceback) to one that did.
        """
        name = box[amp.COMMAND]
        responder = self.locator.locateResponder(name)
        if responder is None:
            return amp.AMP.dispatchCommand(self, box)  # type: ignore[no-any-return]
        try:
            # Twisted's responder parses the arguments before it calls the
            # method inside maybeDeferred: what it raises here is the box's.
            result = responder(box)
        except Exception as error:
            what = f"command {_shown(name)} with arguments that do not parse ({error!r:.80})"
            if not self.authenticated:
                self.refuse(what)
                return Deferred()
            self.refusals.refused(self.peer, what, closed=False)
            return fail(BadArgument(what))
        if isinstance(result, Deferred):
            return result
        return succeed(result)

    def whenLost(self, callback: Callable[[Failure], None]) -> None:
        """
        Call C{callback} with the reason when the connection goes.
        """
        self._lostCallbacks.append(callback)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        """
        Fail what waits for an answer, then tell the locators and the
        callbacks.
        """
        if self._loginTimer is not None and self._loginTimer.active():
            self._loginTimer.cancel()
        self._loginTimer = None
        amp.BinaryBoxProtocol.connectionLost(self, reason)
        self.transport = None
        lost = getattr(self.locator, "lost", None)  # type: ignore[attr-defined]
        if lost is not None:
            lost()
        callbacks, self._lostCallbacks = self._lostCallbacks, []
        for callback in callbacks:
            callback(reason)


def nodeConnection(
    credentials: SessionCredentials,
    locators: Sequence[LocatorFactory],
    authenticated: bool = False,
) -> NodeAMP:
    """
    A connection whose session checks logins against C{credentials},
    answering L{Challenge} and L{Authenticate}, and then the commands of
    C{locators}.
    """
    session = Session(credentials, authenticated)
    locator = Locators([LoginLocator(session)] + [make(session) for make in locators])
    protocol = NodeAMP(locator, session)
    session.connection = protocol
    return protocol


class NodeAMPFactory(ServerFactory):
    """
    Accepts AMP connections for a node (backups, admins), or for a
    standalone broker's admin commands; a connection that has not logged
    in after C{loginTimeout} seconds is closed.
    """

    noisy = False

    def __init__(
        self,
        credentials: SessionCredentials,
        locators: Sequence[LocatorFactory],
        clock: IReactorTime | None = None,
        loginTimeout: float = LOGIN_TIMEOUT,
    ) -> None:
        """
        @param credentials: what a peer must log in with (L{None}: nothing).
        @param locators: make each connection's locators for its session.
        @param clock: times the logins (L{None}: the global reactor, the
            default of an endpoint's factory).
        @param loginTimeout: seconds a peer has to log in.
        """
        self.credentials = credentials
        self.locators = list(locators)
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[assignment]
        self.clock: IReactorTime = clock  # type: ignore[assignment]
        self.loginTimeout = loginTimeout
        self.refusals = RefusalLog(self.clock)

    def buildProtocol(self, addr: IAddress) -> NodeAMP:  # type: ignore[override]
        """
        A connection with a session of its own, closed unless it logs in in
        time.
        """
        protocol = nodeConnection(self.credentials, self.locators)
        protocol.closeUnlessLoggedIn(self.clock, self.loginTimeout, self.refusals)
        return protocol


__all__ = [
    "BOX_BYTES",
    "BOX_KEYS",
    "BadArgument",
    "LOGIN_BOX_BYTES",
    "LOGIN_BOX_KEYS",
    "LOGIN_TIMEOUT",
    "LocatorFactory",
    "Locators",
    "LoginLocator",
    "NodeAMP",
    "NodeAMPFactory",
    "RefusalLog",
    "Session",
    "SessionCredentials",
    "nodeConnection",
]
