"""
A node whose primary etcd decides (C{--ha-coordinator}): what the
L{Coordinator} asks of the broker and tells it, in the node's terms.

The coordinator keeps the lease, the member record and the campaign; this
adapter answers its questions (role, epoch, position, whether the broker may
take over) and acts on what it decides (become primary in an epoch, step
down, follow another leader). The node asks it whether it may confirm
(L{CoordinatedNode.mayConfirm}): a primary past its lease deadline confirms
nothing, whatever the reactor was doing while the deadline passed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from .coordinator import Coordinator, LeaderInfo
from .etcd import EtcdClient, IEtcd, TLSFiles
from .role import CATCHUP, JOINING, PRIMARY_ROLES, READY, RoleRefused

if TYPE_CHECKING:
    from .node import HANode


class CoordinatedNode:
    """
    The L{CoordinatedBroker} of one L{HANode}.

    @ivar leader: the leader as etcd last named it (L{None}: none).
    @ivar coordinator: the election this node takes part in.
    """

    log = Logger()

    def __init__(self, node: HANode, etcd: IEtcd, monotonic: Any = None) -> None:
        """
        @param node: the node it speaks for.
        @param etcd: etcd.
        @param monotonic: the clock of the lease deadline (tests give the
            L{task.Clock}'s C{seconds}); L{time.monotonic} by default.
        """
        options = node.options
        self.node = node
        self.leader: LeaderInfo | None = None
        self._joinedAt: float | None = None
        # The epoch in which this broker last was a ready backup (it lost
        # its primary since, and is joining): it holds every confirmed
        # message of that epoch, so it may take over.
        self._readyIn: int | None = None
        # Whether it followed a primary since it started: a broker that
        # did, and was not ready, is behind; it never takes over.
        self._followed = False
        self._waitCall: IDelayedCall | None = None
        self.coordinator = Coordinator(
            etcd,
            node.clock,
            self,
            node.brokerId,
            amp=options.extra.get("haAddress", ""),
            amqp=options.amqpAddress,
            cluster=options.clusterName,
            ttl=options.leaseTTL,
            minBackups=options.minBackups,
            monotonic=monotonic,
        )

    # What the node does with it

    def start(self) -> None:
        """
        Register in etcd and take part in the election.
        """
        self._joinedAt = self.node.clock.seconds()
        # A joining broker may take over after --ha-backup-timeout when no
        # broker is ready (a fresh cluster, a total restart): look again then.
        self._waitCall = self.node.clock.callLater(
            self.node.options.backupTimeout, self._waited
        )
        self.coordinator.start()

    def stop(self) -> Deferred[None]:
        """
        Leave: revoke the lease, so that another broker takes over at once.
        """
        if self._waitCall is not None and self._waitCall.active():
            self._waitCall.cancel()
        self._waitCall = None
        return self.coordinator.stop()

    def _waited(self) -> None:
        self._waitCall = None
        self.coordinator.update()

    def changed(self, old: str, new: str) -> None:
        """
        The node's role changed from C{old} to C{new}: tell etcd, campaign
        if due.
        """
        if new == READY:
            self._readyIn = self.node.epoch
        elif new == CATCHUP:
            self._followed = True
            self._readyIn = None
        elif new in PRIMARY_ROLES:
            self._readyIn = None
        self.coordinator.update()

    def mayConfirm(self) -> bool:
        """
        Whether the node may complete a confirm or a commit now: it holds
        the leadership and its lease deadline has not passed.
        """
        return self.coordinator.canConfirm()

    def mayConfirmAhead(self) -> bool:
        """
        Whether the node may confirm now and for the coordinator's
        look-ahead more (L{Coordinator.canConfirmAhead}).
        """
        return self.coordinator.canConfirmAhead()

    # CoordinatedBroker

    def role(self) -> str:
        """
        The node's role.
        """
        return self.node.role.name

    def epoch(self) -> int:
        """
        The node's durable epoch.
        """
        return self.node.epoch

    def position(self) -> int:
        """
        How far this broker's copy goes in its epoch's stream: what its
        store recorded of the primary's position (a backup), or the
        primary's own position.
        """
        node = self.node
        if node.role.isPrimary or node.store is None:
            return node.position
        return node.store.position

    def ready(self) -> bool:
        """
        Whether this broker may take over: a ready backup, or one that was
        ready in this epoch until its primary went; or, when etcd names no
        leader and this broker followed none since it started (a fresh
        cluster, a total restart), once C{--ha-backup-timeout} passed, so
        that the others could register and the newest store wins. A broker
        that was still catching up when its primary went never is.
        """
        role = self.node.role.name
        if role == READY:
            return True
        if role != JOINING:
            return False
        if self._readyIn is not None:
            return self._readyIn == self.node.epoch
        if self._followed or self.leader is not None or self._joinedAt is None:
            return False
        waited = self.node.clock.seconds() - self._joinedAt
        return waited >= self.node.options.backupTimeout

    def recordEpoch(self, epoch: int) -> None:
        """
        Won C{epoch}: leave the primary followed so far and record the
        epoch durably, serving nothing yet.
        """
        node = self.node
        if node.link is not None:
            node.members = node.link.replicator.members or node.members
            node.link.close()
        node.adoptEpoch(epoch)

    def becomePrimary(self, epoch: int) -> None:
        """
        The epoch C{epoch} it won is recorded: recover and serve.
        """
        node = self.node
        self.log.info("etcd made this broker the primary in epoch {epoch}", epoch=epoch)
        try:
            node.takeOver(epoch)
        except RoleRefused as refusal:
            self.log.warn("could not take over: {refusal}", refusal=str(refusal))

    def stepDown(self, reason: str) -> Deferred[None] | None:
        """
        Stop confirming and serving now, and rejoin as a backup.
        """
        node = self.node
        if node.role.isPrimary:
            self.log.warn("stepping down: {reason}", reason=reason)
            node.demote()
        return None

    def leaderChanged(self, leader: LeaderInfo | None) -> None:
        """
        etcd names C{leader}: a backup following another broker drops that
        link and looks for the new one; a broker looking for the primary
        gives up the attempt under way (it may hang until its deadline on
        the old primary's address, when that broker is paused: its kernel
        accepts, nobody answers) and looks at the new leader's address now.
        """
        previous, self.leader = self.leader, leader
        node = self.node
        if leader is None or leader.id == node.brokerId:
            return
        if previous is None or previous.id != leader.id or previous.epoch != leader.epoch:
            node.lookAgain()
        link = node.link
        if link is not None and link.primaryId != leader.id:
            self.log.info(
                "etcd names {leader} the primary: leaving {old}",
                leader=leader.id,
                old=link.primaryId,
            )
            link.close()

    def addresses(self) -> list[str]:
        """
        Where to look for the primary first: the leader's AMP address.
        """
        leader = self.leader
        if leader is None or leader.id == self.node.brokerId or not leader.amp:
            return []
        return [leader.amp]

    def describe(self) -> dict[str, Any]:
        """
        The election as this broker sees it, for C{qha-admin query}.
        """
        coordinator = self.coordinator
        leader = self.leader
        return {
            "leader": None
            if leader is None
            else {"id": leader.id, "epoch": leader.epoch, "amp": leader.amp, "amqp": leader.amqp},
            "members": [
                {
                    "id": member.id,
                    "role": member.role,
                    "epoch": member.epoch,
                    "position": member.position,
                    "amp": member.amp,
                    "amqp": member.amqp,
                }
                for member in coordinator.members.values()
            ],
            "leaseTTL": coordinator.ttl,
            "whyNotCampaigning": coordinator.whyNot(),
        }


def etcdFor(reactor: Any, options: Any) -> IEtcd:
    """
    The etcd client of C{--ha-coordinator}, with the TLS files given; every
    call's deadline a third of the lease TTL (at least a second), so that a
    keepalive that hangs does not outlive the lease.
    """
    tls = None
    if options.coordinatorCA is not None:
        tls = TLSFiles(options.coordinatorCA, options.coordinatorCert, options.coordinatorKey)
    timeout = max(1.0, options.leaseTTL / 3)
    return EtcdClient(reactor, options.coordinator, timeout=timeout, tls=tls)


__all__ = ["CoordinatedNode", "etcdFor"]
