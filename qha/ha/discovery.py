"""
Discovery: a joining broker looks for the primary among C{--ha-brokers}
and subscribes to it; when the link goes, it looks again.

The retry loop is Twisted's L{ClientService} with L{backoffPolicy}: its
endpoint, L{PrimaryEndpoint}, tries the brokers in turn and "connects" once
it subscribed to the primary; the connection it hands the service stands
for that subscription, so the service notices when the link goes, waits a
little and looks again. The waits start small and stay short (0.1 s, 0.2 s,
0.4 s, then every 0.5 s as before): a promoted broker holds its confirms
until its backups are back.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from ..changes.replay import holdingsOf
from .commands import Subscribe
from .connection import NodeAMP
from .link import BackupLink
from .role import PRIMARY_ROLES

if TYPE_CHECKING:
    from .node import HANode

_backoff = backoffPolicy(initialDelay=0.1, factor=2.0, maxDelay=0.5, jitter=lambda: 0.0)


def retryPolicy(attempt: int) -> float:
    """
    Seconds before attempt C{attempt + 1} to find the primary (or a remote
    queue's broker): 0.1, 0.2, 0.4, then 0.5 s.
    """
    return _backoff(attempt - 1)


class NoPrimary(Exception):
    """
    None of the brokers is a primary this broker may follow (yet).
    """


class Subscription(Protocol):
    """
    What L{ClientService} holds while a link is up: it stands for the
    subscription, on the link's transport, and is told when the link's
    connection goes.
    """


@implementer(IStreamClientEndpoint)
class PrimaryEndpoint:
    """
    An endpoint whose connections are subscriptions: C{find} tries the
    brokers in turn and returns the connection it subscribed on.
    """

    def __init__(self, find: Callable[[], Awaitable[NodeAMP | None]], what: str) -> None:
        """
        @param find: subscribes, returning the subscribed connection or
            L{None}.
        @param what: what is looked for, for the message of L{NoPrimary}.
        """
        self.find = find
        self.what = what

    def __repr__(self) -> str:
        """
        What is looked for.
        """
        return f"<PrimaryEndpoint {self.what}>"

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        Find and subscribe; the connection stands for the subscription.
        """
        return ensureDeferred(self._connect(protocolFactory))

    async def _connect(self, protocolFactory: IProtocolFactory) -> IProtocol:
        protocol = await self.find()
        if protocol is None:
            raise NoPrimary(f"no {self.what} found")
        transport = protocol.transport
        if transport is None:
            raise ConnectionLost("the link went before it was up")
        subscription = protocolFactory.buildProtocol(transport.getPeer())
        assert subscription is not None
        subscription.makeConnection(transport)
        protocol.whenLost(subscription.connectionLost)
        return subscription


class Search:
    """
    A L{ClientService} keeping one subscription up: started by the state
    that wants it, stopped when that state is left.
    """

    log = Logger()

    def __init__(
        self, reactor: Any, find: Callable[[], Awaitable[NodeAMP | None]], what: str
    ) -> None:
        """
        @param reactor: the clock of the retries.
        @param find: subscribes, see L{PrimaryEndpoint}.
        @param what: what is looked for.
        """
        factory = Factory.forProtocol(Subscription)
        factory.noisy = False
        self.service = ClientService(
            PrimaryEndpoint(find, what), factory, retryPolicy=retryPolicy, clock=reactor
        )
        self._stopped = False
        self._restarting = False

    def start(self) -> "Search":
        """
        Start looking.
        """
        self.service.startService()
        return self

    def stop(self) -> Deferred[None]:
        """
        Stop looking, and drop the subscription.
        """
        self._stopped = True
        return self.service.stopService()  # type: ignore[return-value]

    def restart(self) -> None:
        """
        Give up the attempt under way (or the wait before the next one) and
        look again now: the primary moved (etcd names another), and an
        attempt at the old address may hang until its deadline (a paused
        broker's kernel accepts the connection; nobody answers).

        Only for a search that is not subscribed: stopping the service
        drops its subscription.
        """
        if self._stopped or self._restarting:
            return
        self._restarting = True
        stopped: Deferred[None] = self.service.stopService()  # type: ignore[assignment]

        def again(_: object) -> None:
            self._restarting = False
            if not self._stopped:
                self.service.startService()

        stopped.addBoth(again)


async def findPrimary(node: "HANode") -> NodeAMP | None:
    """
    Try every broker of C{node}'s cluster; subscribe to the first that is a
    primary of this broker's epoch or newer.

    @return: the connection subscribed on, or L{None}.
    """
    for address in node.candidates():
        try:
            protocol = await node.peers.connect(address)
        except CancelledError:
            raise
        except Exception:
            continue
        try:
            answer = await node.peers.hello(protocol)
            node.knownEpochs[address] = answer["epoch"]
            if (
                answer["brokerId"] == node.brokerId
                or answer["role"] not in PRIMARY_ROLES
                or answer["epoch"] < node.epoch
                or not node.role.isJoining
            ):
                node.peers.close(protocol)
                continue
            link = BackupLink(node, protocol, answer["brokerId"], address)
            node.followLink(link)
            await node.peers.call(
                protocol,
                Subscribe,
                brokerId=node.brokerId,
                epoch=node.epoch,
                address=node.options.extra.get("haAddress", ""),
                holdings=json.dumps(holdingsOf(node.vhost)).encode("utf-8"),
            )
            link.start()
            node.log.info("following the primary at {address}", address=address)
            return protocol
        except BaseException as error:
            if not isinstance(error, CancelledError):
                node.log.info("{address}: {error}", address=address, error=str(error))
            if node.link is not None and node.link.connection is protocol:
                node.link.close()
            else:
                node.peers.close(protocol)
            if isinstance(error, CancelledError):
                raise
    return None


__all__ = ["NoPrimary", "PrimaryEndpoint", "Search", "Subscription", "findPrimary", "retryPolicy"]
