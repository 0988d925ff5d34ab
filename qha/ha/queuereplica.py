"""
Single-queue replication outside a cluster (Qpid's C{--ha-queue-replication}):
C{qha-admin -b B replicate REMOTE QUEUE} makes QUEUE on B a live replica of
QUEUE on REMOTE, and keeps following it when REMOTE is a cluster whose
primary changes.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from ..changes.replay import holdingsOf
from .commands import Hello, Subscribe
from .node import BackupLink
from .role import PRIMARY_ROLES, STANDALONE

if TYPE_CHECKING:
    from .node import HANode


class QueueReplica:
    """
    Follows one queue of a remote broker (or of whichever broker of a
    remote cluster is primary).

    @ivar remote: the remote brokers' AMP addresses.
    @ivar link: the live subscription, if any.
    """

    log = Logger()
    retryInterval = 1.0

    def __init__(self, node: "HANode", remote: list[str], queue: str) -> None:
        self.node = node
        self.remote = remote
        self.queue = queue
        self.link: BackupLink | None = None
        self.stopped = False
        self.following: str | None = None
        self._retry: IDelayedCall | None = None
        self._connecting = False

    def start(self) -> None:
        """
        Find the remote queue's broker and subscribe.
        """
        if self.stopped or self._connecting or self.link is not None:
            return
        self._connecting = True
        d = ensureDeferred(self._connect())

        def done(found: bool) -> None:
            self._connecting = False
            if not found:
                self._scheduleRetry()

        def failed(failure: Any) -> None:
            self.log.failure("replicating queue {queue}", failure, queue=self.queue)
            done(False)

        d.addCallbacks(done, failed)

    def _scheduleRetry(self) -> None:
        if not self.stopped and (self._retry is None or not self._retry.active()):
            self._retry = self.node.clock.callLater(self.retryInterval, self._retried)

    def _retried(self) -> None:
        self._retry = None
        self.start()

    async def _connect(self) -> bool:
        node = self.node
        for address in self.remote:
            try:
                protocol = await node._connect(address)
            except Exception:
                continue
            try:
                answer = await protocol.callRemote(
                    Hello, brokerId=node.brokerId, epoch=node.epoch, role=node.role.name
                )
                if answer["role"] not in PRIMARY_ROLES + (STANDALONE,):
                    protocol.transport.loseConnection()  # type: ignore[union-attr]
                    continue
                link = QueueReplicaLink(node, protocol, answer["brokerId"], address, self)
                protocol.locator.link = link  # type: ignore[attr-defined]
                self.link = link
                holdings = {
                    name: value
                    for name, value in holdingsOf(node.vhost).items()
                    if name == self.queue
                }
                await protocol.callRemote(
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
                return True
            except Exception as error:
                self.log.info(
                    "replicating queue {queue} from {address}: {error}",
                    queue=self.queue,
                    address=address,
                    error=str(error),
                )
                if self.link is not None:
                    self.link.close()
                elif protocol.transport is not None:
                    protocol.transport.loseConnection()
        return False

    def linkLost(self) -> None:
        """
        The remote went away: look again (a cluster may have a new primary).
        """
        self.link = None
        self.following = None
        self._scheduleRetry()

    def stop(self) -> None:
        """
        Stop following.
        """
        self.stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
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
        super().__init__(node, connection, primaryId, address)
        self.replica = replica

    def checkEpoch(self, epoch: int) -> None:
        """
        A remote standalone broker's or another cluster's epochs are not
        ours: they are not checked.
        """

    def caughtUp(self) -> None:
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
