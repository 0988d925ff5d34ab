"""
The other brokers, as one broker reaches them: connect, log in, say hello,
ask. Every call has a deadline: a paused broker (SIGSTOP) accepts
connections and never answers, and must hold up neither discovery, nor
probing, nor promotion.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.internet.protocol import Factory
from twisted.protocols import amp

from .commands import Hello, Login
from .config import HELLO_TIMEOUT, PEER_TIMEOUT, clientEndpoint
from .connection import LocatorFactory, NodeAMP, nodeConnection


class Peers:
    """
    Connections to the other brokers of the cluster (or to a remote broker,
    for single-queue replication).
    """

    def __init__(
        self,
        reactor: Any,
        credentials: tuple[str, str] | None,
        identity: Callable[[], tuple[str, int, str]],
        locators: Sequence[LocatorFactory],
        timeout: float = PEER_TIMEOUT,
    ) -> None:
        """
        @param reactor: connects (L{IReactorTCP}) and keeps time
            (L{IReactorTime}).
        @param credentials: what this broker logs in to a peer with.
        @param identity: this broker's id, epoch and role, said in L{Hello}.
        @param locators: what this broker answers on a connection it made
            (the primary streams to a backup on the backup's connection).
        @param timeout: the deadline of a connection, a login and a call.
        """
        self.reactor = reactor
        self.clock: IReactorTime = reactor
        self.credentials = credentials
        self.identity = identity
        self.locators = list(locators)
        self.timeout = timeout

    def connect(self, address: str) -> Deferred[NodeAMP]:
        """
        A connection to C{address}, logged in.

        @raise twisted.internet.defer.TimeoutError: (in the L{Deferred}) if
            the peer does not accept or answer the login in time.
        """
        return ensureDeferred(self._connect(address))

    async def _connect(self, address: str) -> NodeAMP:
        endpoint = clientFromString(self.reactor, clientEndpoint(address))
        protocol = nodeConnection(self.credentials, self.locators, authenticated=True)
        factory = Factory.forProtocol(lambda: protocol)
        factory.noisy = False
        connecting: Deferred[Any] = endpoint.connect(factory)
        connecting.addTimeout(self.timeout, self.clock)
        await connecting
        if self.credentials is not None:
            username, password = self.credentials
            try:
                await self.call(protocol, Login, username=username, password=password)
            except BaseException:
                self.close(protocol)
                raise
        return protocol

    def call(self, protocol: amp.AMP, command: type[amp.Command], **arguments: Any) -> Deferred[Any]:
        """
        C{command} on C{protocol}, given up after the deadline.
        """
        d: Deferred[Any] = protocol.callRemote(command, **arguments)
        d.addTimeout(self.timeout, self.clock)
        return d

    def hello(self, protocol: amp.AMP) -> Deferred[Any]:
        """
        L{Hello} on C{protocol}, given up after C{HELLO_TIMEOUT} seconds.
        """
        brokerId, epoch, role = self.identity()
        d: Deferred[Any] = protocol.callRemote(Hello, brokerId=brokerId, epoch=epoch, role=role)
        d.addTimeout(HELLO_TIMEOUT, self.clock)
        return d

    def ask(self, address: str) -> Deferred[dict[str, Any] | None]:
        """
        Hello to C{address} on a connection of its own; L{None} if it does
        not answer.
        """
        return ensureDeferred(self._ask(address))

    async def _ask(self, address: str) -> dict[str, Any] | None:
        try:
            protocol = await self.connect(address)
        except Exception:
            return None
        try:
            return dict(await self.hello(protocol))
        except Exception:
            return None
        finally:
            self.close(protocol)

    @staticmethod
    def close(protocol: amp.AMP) -> None:
        """
        Close C{protocol}'s connection, if it is open.
        """
        if protocol.transport is not None:
            protocol.transport.loseConnection()


__all__ = ["Peers"]
