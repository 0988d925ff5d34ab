"""
The other brokers, as one broker reaches them: connect, log in (and check
that the peer proves itself, see L{qha.ha.auth}), say hello, ask. Every
call has a deadline, each step of the login included: a paused broker
(SIGSTOP) accepts connections and never answers, and must hold up neither
discovery, nor probing, nor promotion.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import amp

from ..tls import MutualTLS, describeFailure, isTLSFailure
from .auth import Credentials, UnprovenPeer, callerOf, logIn
from .commands import Hello, NotAuthenticated
from .config import HELLO_TIMEOUT, PEER_TIMEOUT, peerEndpoint
from .connection import LocatorFactory, NodeAMP, nodeConnection


class Peers:
    """
    Connections to the other brokers of the cluster (or to a remote broker,
    for single-queue replication).

    A peer that refuses this broker's login, or does not prove that it
    holds the same key, is logged once (until a login to it succeeds
    again): it is not a broker of this cluster, or has another secret.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        credentials: Credentials | None,
        identity: Callable[[], tuple[str, int, str]],
        locators: Sequence[LocatorFactory],
        timeout: float = PEER_TIMEOUT,
        tls: MutualTLS | None = None,
    ) -> None:
        """
        @param reactor: connects (L{IReactorTCP}) and keeps time
            (L{IReactorTime}).
        @param credentials: what this broker logs in to a peer with
            (L{None}: no login, for in-memory unit tests).
        @param identity: this broker's id, epoch and role, said in L{Hello}.
        @param locators: what this broker answers on a connection it made
            (the primary streams to a backup on the backup's connection).
        @param timeout: the deadline of a connection, a login and a call.
        @param tls: mutual TLS with every peer, or L{None} for plain TCP.
        """
        self.reactor = reactor
        self.clock: IReactorTime = reactor
        self.credentials = credentials
        self.identity = identity
        self.locators = list(locators)
        self.timeout = timeout
        self.tls = tls
        self._refusedBy: set[str] = set()

    def connect(self, address: str) -> Deferred[NodeAMP]:
        """
        A connection to C{address}, logged in.

        @raise twisted.internet.defer.TimeoutError: (in the L{Deferred}) if
            the peer does not accept or answer the login in time.
        """
        return ensureDeferred(self._connect(address))

    async def _connect(self, address: str) -> NodeAMP:
        endpoint = peerEndpoint(self.reactor, address, self.tls)
        # The peer's commands on this connection are answered only once it
        # proved itself (at once in unit tests, which log in to nothing).
        protocol = nodeConnection(
            self.credentials, self.locators, authenticated=self.credentials is None
        )
        factory = Factory.forProtocol(lambda: protocol)
        factory.noisy = False
        connecting: Deferred[Any] = endpoint.connect(factory)
        connecting.addTimeout(self.timeout, self.clock)
        await connecting
        if self.credentials is not None:
            try:
                await logIn(callerOf(protocol, self._bounded), self.credentials)
            except (NotAuthenticated, UnprovenPeer) as refused:
                self.close(protocol)
                self._refused(address, refused)
                raise
            except BaseException as error:
                self.close(protocol)
                if isTLSFailure(error):
                    self._refused(address, error)
                raise
            self._refusedBy.discard(address)
            assert protocol.session is not None
            protocol.session.authenticated = True
        return protocol

    def _bounded(self, d: Deferred[Any]) -> Deferred[Any]:
        """
        C{d}, given up after the deadline.
        """
        d.addTimeout(self.timeout, self.clock)
        return d

    def _refused(self, address: str, refused: BaseException) -> None:
        """
        Log, once per peer, that it refused this broker's login or did not
        prove itself.
        """
        if address in self._refusedBy:
            return
        self._refusedBy.add(address)
        assert self.credentials is not None
        if isTLSFailure(refused):
            self.log.error(
                "{address} failed the TLS handshake: {reason}; the brokers of a cluster"
                " need certificates of one CA (--ha-tls-ca, --ha-tls-cert, --ha-tls-key)",
                address=address,
                reason=describeFailure(refused),
            )
        elif isinstance(refused, UnprovenPeer):
            self.log.error(
                "{address} is not a broker of this cluster: {reason}; nothing was sent to it",
                address=address,
                reason=str(refused),
            )
        else:
            self.log.error(
                "{address} refused this broker's login with {credentials}: {reason};"
                " the brokers of a cluster must share one cluster secret"
                " (copy --ha-secret-file) or the same --ha-username/--ha-password",
                address=address,
                credentials=self.credentials.description,
                reason=str(refused),
            )

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
