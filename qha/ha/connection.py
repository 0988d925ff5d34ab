"""
The AMP connection of a node, either way (accepted on C{--ha-port} or made to
a peer): one L{Session} per connection holds its authentication (the
challenge-response of L{qha.ha.auth}, answered by L{LoginLocator}), and the
locators composed on it (replication, and admin when C{tap.py} adds it)
answer the commands once the peer logged in as an identity allowed to use
them.
"""

from __future__ import annotations

import hmac
import os
from typing import Any, Callable, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, ITransport
from twisted.internet.protocol import ServerFactory
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
from .commands import Authenticate, Challenge, NotAuthenticated

SessionCredentials = Authority | Credentials | None
"""
What a connection's session checks logins against: an L{Authority} (the
broker's AMP port), L{Credentials} alone (an L{Authority} of them, with no
delay on failures), or L{None}: the port asks for no login (in-memory unit
tests only; C{qha.tap} always gives an L{Authority}).
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
        return {"nonce": self.session.challenge(username, nonce)}

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


class NodeAMP(amp.AMP):
    """
    An AMP connection of the node, either way; tells its locators when it
    goes, and whoever asked with L{whenLost}. It does not log every
    connection (probes come every heartbeat).
    """

    def __init__(self, locator: amp.IResponderLocator, session: Session | None = None) -> None:
        """
        @param locator: answers the peer's commands.
        @param session: the connection's authentication.
        """
        super().__init__(locator=locator)
        self.session = session
        self._lostCallbacks: list[Callable[[Failure], None]] = []

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
        amp.BinaryBoxProtocol.makeConnection(self, transport)

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
    standalone broker's admin commands.
    """

    noisy = False

    def __init__(
        self, credentials: SessionCredentials, locators: Sequence[LocatorFactory]
    ) -> None:
        """
        @param credentials: what a peer must log in with (L{None}: nothing).
        @param locators: make each connection's locators for its session.
        """
        self.credentials = credentials
        self.locators = list(locators)

    def buildProtocol(self, addr: IAddress) -> NodeAMP:  # type: ignore[override]
        """
        A connection with a session of its own.
        """
        return nodeConnection(self.credentials, self.locators)


__all__ = [
    "LocatorFactory",
    "Locators",
    "LoginLocator",
    "NodeAMP",
    "NodeAMPFactory",
    "Session",
    "SessionCredentials",
    "nodeConnection",
]
