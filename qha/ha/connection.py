"""
The AMP connection of a node, either way (accepted on C{--ha-port} or made to
a peer): one L{Session} per connection holds its authentication, and the
locators composed on it (replication, and admin when C{tap.py} adds it)
answer the commands once the peer logged in.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from twisted.internet.interfaces import IAddress, ITransport
from twisted.internet.protocol import ServerFactory
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from .commands import Login, NotAuthenticated


class Session:
    """
    The authentication of one AMP connection, shared by every locator on it.

    @ivar credentials: the username and password a peer must log in with,
        or L{None} when any peer may talk at once.
    @ivar authenticated: whether the peer logged in (or needs not).
    @ivar connection: the connection's protocol, once built.
    """

    def __init__(self, credentials: tuple[str, str] | None, authenticated: bool = False) -> None:
        """
        @param authenticated: trust the peer at once (a connection this
            broker made itself to a peer it logged in to).
        """
        self.credentials = credentials
        self.authenticated = authenticated or credentials is None
        self.connection: NodeAMP | None = None

    def check(self) -> None:
        """
        @raise NotAuthenticated: if the peer has not logged in.
        """
        if not self.authenticated:
            raise NotAuthenticated("log in first with the HA (or admin) credentials")

    def login(self, username: str, password: str) -> None:
        """
        Authenticate the connection.

        @raise NotAuthenticated: for a wrong username or password.
        """
        if self.credentials is not None and (username, password) != self.credentials:
            raise NotAuthenticated(f"bad HA username or password for {username!r}")
        self.authenticated = True


class LoginLocator(amp.CommandLocator):
    """
    Answers L{Login} for a L{Session}.
    """

    def __init__(self, session: Session) -> None:
        """
        @param session: the connection's authentication.
        """
        super().__init__()
        self.session = session

    @Login.responder
    def login(self, username: str, password: str) -> dict[str, Any]:
        """
        Log the connection in.
        """
        self.session.login(username, password)
        return {}


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
    credentials: tuple[str, str] | None,
    locators: Sequence[LocatorFactory],
    authenticated: bool = False,
) -> NodeAMP:
    """
    A connection whose session checks C{credentials}, answering L{Login}
    and then the commands of C{locators}.
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
        self, credentials: tuple[str, str] | None, locators: Sequence[LocatorFactory]
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
    "nodeConnection",
]
