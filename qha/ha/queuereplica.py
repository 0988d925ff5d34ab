"""
Single-queue replication outside a cluster (Qpid's C{--ha-queue-replication}):
C{qha-admin -b B replicate REMOTE QUEUE} makes QUEUE on B a live replica of
QUEUE on REMOTE, and keeps following it when REMOTE is a cluster whose
primary changes.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError
from twisted.logger import Logger

from ..changes.replay import holdingsOf
from .commands import Subscribe
from .connection import NodeAMP
from .discovery import Search
from .link import BackupLink
from .locator import ReplicationLocator
from .role import PRIMARY_ROLES, STANDALONE

if TYPE_CHECKING:
    from .node import HANode


class QueueReplica:
    """
    Follows one queue of a remote broker (or of whichever broker of a
    remote cluster is primary), through a L{Search} that looks again when
    the link goes.

    @ivar remote: the remote brokers' AMP addresses.
    @ivar link: the live subscription, if any.
    """

    log = Logger()

    def __init__(self, node: "HANode", remote: list[str], queue: str) -> None:
        """
        @param node: this broker.
        @param remote: the remote brokers' AMP addresses.
        @param queue: the queue replicated.
        """
        self.node = node
        self.remote = remote
        self.queue = queue
        self.link: BackupLink | None = None
        self.stopped = False
        self.following: str | None = None
        self.search: Search | None = None

    def start(self) -> None:
        """
        Find the remote queue's broker and subscribe, and again whenever the
        link goes.
        """
        if self.stopped or self.search is not None:
            return
        self.search = Search(self.node.reactor, self._connect, f"broker with queue {self.queue!r}")
        self.search.start()

    async def _connect(self) -> NodeAMP | None:
        """
        Subscribe to the queue on the first remote broker that serves it.

        @return: the connection subscribed on, or L{None}.
        """
        node = self.node
        peers = node.peers
        for address in self.remote:
            try:
                protocol = await peers.connect(address)
            except CancelledError:
                raise
            except Exception:
                continue
            try:
                answer = await peers.hello(protocol)
                if answer["role"] not in PRIMARY_ROLES + (STANDALONE,):
                    peers.close(protocol)
                    continue
                link = QueueReplicaLink(node, protocol, answer["brokerId"], address, self)
                for locator in protocol.locator.locators:  # type: ignore[attr-defined]
                    if isinstance(locator, ReplicationLocator):
                        locator.link = link
                self.link = link
                holdings = {
                    name: value
                    for name, value in holdingsOf(node.vhost).items()
                    if name == self.queue
                }
                await peers.call(
                    protocol,
                    Subscribe,
                    brokerId=node.brokerId,
                    epoch=0,
                    address="",
                    holdings=json.dumps(holdings).encode("utf-8"),
                    queue=self.queue,
                )
                link.start()
                self.following = address
                self.log.info(
                    "queue {queue} replicates {queue} on {address}",
                    queue=self.queue,
                    address=address,
                )
                return protocol
            except BaseException as error:
                if not isinstance(error, CancelledError):
                    self.log.info(
                        "replicating queue {queue} from {address}: {error}",
                        queue=self.queue,
                        address=address,
                        error=str(error),
                    )
                if self.link is not None:
                    self.link.close()
                else:
                    peers.close(protocol)
                if isinstance(error, CancelledError):
                    raise
        return None

    def linkLost(self) -> None:
        """
        The remote went away: the search looks again (a cluster may have a
        new primary).
        """
        self.link = None
        self.following = None

    def stop(self) -> None:
        """
        Stop following.
        """
        self.stopped = True
        if self.search is not None:
            self.search.stop()
            self.search = None
        if self.link is not None:
            self.link.close()

    def describe(self) -> dict[str, Any]:
        """
        For C{qha-admin query}.
        """
        return {
            "queue": self.queue,
            "remote": ",".join(self.remote),
            "following": self.following,
        }


class QueueReplicaLink(BackupLink):
    """
    A subscription to one remote queue: catching up changes no role, and
    losing it means looking for the remote again.
    """

    def __init__(
        self, node: "HANode", connection: Any, primaryId: str, address: str, replica: QueueReplica
    ) -> None:
        """
        @param replica: the replica this link serves.
        """
        super().__init__(node, connection, primaryId, address)
        self.replica = replica

    def checkEpoch(self, epoch: int) -> None:
        """
        A remote standalone broker's or another cluster's epochs are not
        ours: they are not checked.
        """

    def caughtUp(self) -> None:
        """
        The queue caught up with the remote's.
        """
        self.log.info(
            "queue {queue} caught up with {address}",
            queue=self.replica.queue,
            address=self.address,
        )

    def linkLost(self) -> None:
        """
        The remote went away: look for it (or its cluster's new primary).
        """
        self.replica.linkLost()
