"""
A broker's life in a cluster: what its role's states start and stop
(following the primary, serving, recovering, probing), promotion, the
backups of a primary, fencing by epoch, and single-queue replication.

The parts live beside it: options in L{qha.ha.config}, identity and epoch in
L{qha.ha.identity}, the AMP connection in L{qha.ha.connection}, the
replication commands in L{qha.ha.locator}, the backup's link in
L{qha.ha.link}, the other brokers in L{qha.ha.peers}, discovery in
L{qha.ha.discovery}, the promotion rules and the probe in L{qha.ha.fencing}.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ..broker.vhost import VirtualHost
from ..broker.vhosts import VirtualHosts
from .commands import Refused
from .config import HAOptions, parseBrokers
from .connection import Session
from .coordinated import CoordinatedNode
from .coordinator import SwitchoverRefused
from .etcd import IEtcd
from .discovery import Search, findPrimary
from .fencing import Probe, checkClaim, epochRefusal, promotionRefusal
from .identity import PersistentState
from .link import BackupLink
from .locator import ReplicationLocator
from .peers import Peers
from .primary import ReplicationGate, ReplicationSource
from .queuereplica import QueueReplica
from .role import (
    ACTIVE,
    JOINING,
    PRIMARY_ROLES,
    RECOVERING,
    Nothing,
    Role,
    RoleRefused,
    StandaloneRole,
    Stoppable,
)


class ClientListener(Protocol):
    """
    What a node needs of the AMQP side: a cluster broker listens for clients
    only while it is the primary.
    """

    def startListening(self) -> object:
        "Accept clients."

    def stopListening(self, reason: str = "the broker is stopping") -> object:
        "Refuse clients, and close those connected with C{reason}."


class NodeStore(Protocol):
    """
    What a node needs of its store.
    """

    epoch: int
    position: int
    positionSource: Any

    def setPosition(self, epoch: int, position: int) -> None:
        "Record the primary's stream position this store holds."

    def flush(self) -> None:
        "Write what was applied."

    def whenSynced(self) -> Deferred[None] | None:
        "Fires once what was written is on disk."

    def appliedEncoded(self, events: bytes, start: int, end: int, count: int, bodyBytes: int) -> None:
        "Write events applied unobserved, encoded as this store encodes them."


class HANode(Service):
    """
    The cluster side of one broker.

    @ivar sources: the primary's replication sources, by backup id.
    @ivar link: a backup's subscription to the primary.
    @ivar peers: the other brokers.
    """

    log = Logger()

    def __init__(
        self,
        options: HAOptions,
        vhost: VirtualHost,
        clock: IReactorTime,
        amqp: ClientListener,
        state: PersistentState,
        standalone: bool = False,
        store: NodeStore | None = None,
        gate: ReplicationGate | None = None,
        etcd: IEtcd | None = None,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        """
        @param options: the cluster options.
        @param vhost: the broker's virtual host.
        @param clock: the reactor: it keeps time and connects to peers.
        @param amqp: the AMQP listener.
        @param state: the broker's identity and epoch.
        @param standalone: outside any cluster (C{--ha-cluster no}).
        @param store: the broker's store, if it keeps one.
        @param gate: the replication gate the AMQP factory holds confirms
            with (one of its holders); a new one if not given.
        @param etcd: etcd, when it decides the primary (C{--ha-coordinator}).
        @param monotonic: the clock of the lease deadline (tests give their
            L{task.Clock}'s C{seconds}); L{time.monotonic} by default.
        """
        self.options = options
        self.standalone = standalone
        self.vhost = vhost
        self.vhosts = VirtualHosts.of(vhost)
        self.clock = clock
        self.reactor: Any = clock
        self.amqp = amqp
        self.state = state
        self.brokerId = state.brokerId
        self.role: Role | StandaloneRole = StandaloneRole() if standalone else Role(self)
        self.gate = gate if gate is not None else ReplicationGate(options, clock)
        self.sources: dict[str, ReplicationSource] = {}
        self.link: BackupLink | None = None
        self.members: list[dict[str, str]] = []
        self.knownEpochs: dict[str, int] = {}
        self.queueReplicas: dict[str, QueueReplica] = {}
        self.store = store
        self.peers = Peers(
            clock, options.credentials, self._identity, [self.replicationLocator], tls=options.tls
        )
        if store is not None:
            self.position = store.position
        self._promotions: list[Deferred[None]] = []
        self._search: Search | None = None
        self.coordinated: CoordinatedNode | None = None
        if not standalone:
            vhost.replica = True
            if etcd is not None:
                self.coordinated = CoordinatedNode(self, etcd, monotonic)

    def replicationLocator(self, session: Session) -> ReplicationLocator:
        """
        The replication commands of this node on a connection.
        """
        return ReplicationLocator(self, session)

    def _identity(self) -> tuple[str, int, str]:
        """
        What this broker says of itself in L{Hello}.
        """
        return (self.brokerId, self.epoch, self.role.name)

    # Properties the replication code reads

    @property
    def epoch(self) -> int:
        """
        The broker's epoch.
        """
        return self.state.epoch

    @property
    def position(self) -> int:
        """
        The position in this primary's stream: every change its virtual
        hosts report counts (and each one added or deleted).
        """
        return self.vhosts.changes

    @position.setter
    def position(self, position: int) -> None:
        # A broker restarted from its store goes on from the stored position.
        self.vhosts.changes = position

    @property
    def replicateDefault(self) -> str:
        """
        C{--ha-replicate}.
        """
        return self.options.replicateDefault

    @property
    def minBackups(self) -> int:
        """
        C{--ha-min-backups}.
        """
        return self.options.minBackups

    @property
    def heartbeat(self) -> float:
        """
        C{--ha-heartbeat}.
        """
        return self.options.heartbeat

    @property
    def expected(self) -> set[str]:
        """
        The backups a recovering primary still waits for.
        """
        recovery = self.role.recovery
        return recovery.expected if recovery is not None else set()

    # Service

    def startService(self) -> None:
        """
        Join the cluster: look for the primary.
        """
        super().startService()
        if self.standalone:
            return
        self.log.info(
            "qha broker {id} joining the cluster {brokers} at epoch {epoch}",
            id=self.brokerId,
            brokers=",".join(self.options.brokers),
            epoch=self.epoch,
        )
        self.role.start()
        if self.coordinated is not None:
            self.coordinated.start()

    def stopService(self) -> Any:
        """
        Stop what the role started, drop the links and the backups; leave
        the election (the lease is revoked, so another broker takes over
        at once).
        """
        super().stopService()
        if self.link is not None:
            self.link.close()
        self.role.stop()
        for source in list(self.sources.values()):
            source.drop("the broker is stopping")
        for replica in self.queueReplicas.values():
            replica.stop()
        if self.coordinated is not None:
            return self.coordinated.stop()
        return None

    def mayConfirm(self) -> bool:
        """
        Whether a confirm or a commit may complete now: always without a
        coordinator; with one, only while this broker holds the leadership
        and its lease deadline has not passed.
        """
        return self.coordinated is None or self.coordinated.mayConfirm()

    def mayConfirmAhead(self) -> bool:
        """
        What a health check asks: L{mayConfirm}, and with a coordinator,
        for a little longer too (L{Coordinator.canConfirmAhead}), so that
        a primary whose lease is running out turns its check red before it
        stops confirming.
        """
        return self.coordinated is None or self.coordinated.mayConfirmAhead()

    def candidates(self) -> list[str]:
        """
        Where discovery looks for the primary: the leader etcd names (with
        a coordinator, no other broker is followed), else C{--ha-brokers}.
        """
        if self.coordinated is not None:
            return self.coordinated.addresses()
        return self.options.brokers

    # What the role's states start (RoleEffects)

    def changed(self, old: str, new: str) -> None:
        """
        The role changed: serve clients as a primary, stop as a backup.
        """
        self.log.info("role {old} -> {new} (epoch {epoch})", old=old, new=new, epoch=self.epoch)
        if new == JOINING and old in PRIMARY_ROLES:
            self._stopServing()
        elif new == RECOVERING:
            self._startServing()
        elif new == ACTIVE:
            self.gate.recovered()
            self.log.info("qha broker {id} is the active primary", id=self.brokerId)
        if new == RECOVERING:
            promotions, self._promotions = self._promotions, []
            for promotion in promotions:
                promotion.callback(None)
        if self.coordinated is not None:
            self.coordinated.changed(old, new)

    def follow(self) -> Stoppable:
        """
        Look for the primary among C{--ha-brokers} and follow it, while the
        node runs.
        """
        if not self.running:
            return Nothing()
        self._search = Search(self.reactor, lambda: findPrimary(self), "primary").start()
        return self._search

    def lookAgain(self) -> None:
        """
        The primary moved (etcd names another): a broker that looks for the
        primary and follows none gives up the attempt under way, which may
        hang on the old primary's address, and looks again now.
        """
        search = self._search
        if search is not None and self.role.isJoining and self.link is None:
            search.restart()

    def probe(self) -> Stoppable:
        """
        Ask the others, every heartbeat, whether a newer primary exists.
        """
        return Probe(self).start()

    def expectedBackups(self) -> tuple[set[str], float, IReactorTime]:
        """
        The backups a promoted broker waits for: those its primary had.
        """
        expected = {
            member["id"]
            for member in self.members
            if member.get("id") != self.brokerId and member.get("role") != "primary"
        }
        return expected, self.options.backupTimeout, self.clock

    # Role inputs from the links

    def _input(self, input: Any, *arguments: Any) -> None:
        """
        Feed C{input}; a refusal is logged (the link raced a role change).
        """
        try:
            input(*arguments)
        except RoleRefused as refusal:
            self.log.info("{refusal}", refusal=str(refusal))

    def demote(self) -> None:
        """
        Step down as the primary and rejoin as a backup.
        """
        self._input(self.role.demote)

    def caughtUp(self) -> None:
        """
        The link to the primary caught up.
        """
        self._input(self.role.caughtUp)

    def _startServing(self) -> None:
        """
        Promoted: the virtual host is the primary's, clients may connect,
        and confirms wait for the recovery.
        """
        vhost = self.vhost
        vhost.replica = False
        if self.store is not None:
            self.store.positionSource = lambda: (self.epoch, self.position)
        for queue in [q for each in self.vhosts for q in each.queues.values()]:
            queue.promoted(self.epoch)
        self.gate.recovering = True
        self.amqp.startListening()

    def _stopServing(self) -> None:
        """
        Fenced: refuse clients, confirm nothing more, drop the backups.
        """
        self.log.warn("stepping down: refusing clients and confirming nothing more")
        self.amqp.stopListening("this broker stepped down: a newer primary exists")
        # The gate forgets what it held before the backups go: losing them
        # must not release (confirm) those publishes, which no backup of
        # the new primary has. Connections that waited for its box read on
        # (and are closed by stopListening).
        self.gate.reset()
        for source in list(self.sources.values()):
            source.drop("this broker stepped down")
        self.vhost.replica = True
        if self.store is not None:
            self.store.positionSource = None

    # A primary's backups

    def backupReady(self, source: ReplicationSource) -> None:
        """
        A backup caught up: count it, tell the others, end a recovery that
        waited for it.
        """
        self.gate.backupReady(source)
        self._announceMembers()
        self.role.backupReturned(source.backupId)

    def backupLost(self, source: ReplicationSource) -> None:
        """
        A backup went.
        """
        if self.sources.get(source.backupId) is source:
            del self.sources[source.backupId]
        self._announceMembers()

    def _announceMembers(self) -> None:
        """
        Tell every backup which backups this primary has (for recovery).
        """
        members = [
            {"id": s.backupId, "address": s.address} for s in self.sources.values() if s.ready
        ]
        members.append({"id": self.brokerId, "address": "", "role": "primary"})
        for source in self.sources.values():
            source.sendMembers(members)

    # Epochs and fencing

    def adoptEpoch(self, epoch: int) -> None:
        """
        A backup follows a primary of a newer epoch: remember it durably.
        """
        if epoch > self.state.epoch:
            self.state.setEpoch(epoch)

    def heardEpoch(self, epoch: int, role: str, brokerId: str) -> None:
        """
        Another broker spoke of C{epoch}. A primary that hears it from the
        primary of a newer epoch itself (C{role} a primary's: an answer to
        its own question) steps down at once; any other mention of a newer
        epoch is a claim, checked first (L{checkClaim}). An epoch no broker
        can have is ignored.
        """
        if epoch > self.epoch and self.role.isPrimary:
            refusal = epochRefusal(epoch, self.epoch)
            if refusal is not None:
                self.log.warn(
                    "broker {other}: {refusal}: ignored", other=brokerId or "?", refusal=str(refusal)
                )
                return
            if role not in PRIMARY_ROLES:
                checkClaim(self, epoch, brokerId)
                return
            self.log.warn(
                "broker {other} speaks of epoch {epoch}, newer than ours ({ours})",
                other=brokerId or "?",
                epoch=epoch,
                ours=self.epoch,
            )
            self._input(self.role.demote)

    async def ask(self, address: str) -> dict[str, Any] | None:
        """
        Hello to C{address}; L{None} if it does not answer.
        """
        answer = await self.peers.ask(address)
        if answer is not None:
            self.knownEpochs[address] = answer["epoch"]
        return answer

    # Discovery: joining -> catchup

    def followLink(self, link: BackupLink) -> None:
        """
        Discovery subscribes to the primary on C{link}: it is this backup's
        link, and the broker catches up.
        """
        locator = link.connection.locator  # type: ignore[attr-defined]
        for each in getattr(locator, "locators", [locator]):
            if isinstance(each, ReplicationLocator):
                each.link = link
        self.link = link
        self.vhost.replica = True
        self._input(self.role.primaryFound)

    def linkLost(self, link: BackupLink) -> None:
        """
        The link to the primary went: look for the primary again.
        """
        if self.link is link:
            self.link = None
            self.members = link.replicator.members or self.members
            if self.role.hasPrimary:
                self._input(self.role.primaryLost)

    # Promotion

    async def promote(self, force: bool) -> dict[str, Any]:
        """
        Become the primary, if the rules allow (or C{force}).
        """
        role = self.role.name
        if self.standalone:
            raise Refused("cannot promote this broker: it is standalone (--ha-cluster no)")
        if self.role.isPrimary:
            return {"role": role, "epoch": self.epoch}
        if self.coordinated is not None:
            return await self._switchover(force)
        others = []
        for address in self.options.brokers:
            answer = await self.ask(address)
            if answer is not None and answer["brokerId"] != self.brokerId:
                others.append((address, answer))
        if not force:
            store = (self.store.epoch, self.store.position) if self.store is not None else None
            refusal = promotionRefusal(role, self.epoch, others, store)
            if refusal is not None:
                raise refusal
        epochs = [self.epoch] + [answer["epoch"] for _, answer in others] + list(
            self.knownEpochs.values()
        )
        try:
            self.takeOver(max(epochs) + 1)
        except RoleRefused as refusal:
            raise Refused(str(refusal)) from None
        return {"role": self.role.name, "epoch": self.epoch}

    def takeOver(self, epoch: int) -> None:
        """
        Leave the primary followed so far, record C{epoch} durably, then
        recover and serve in it.

        @raise RoleRefused: when the role does not allow a promotion.
        """
        if self.link is not None:
            self.members = self.link.replicator.members or self.members
            self.link.close()
        if self.role.catchingUp:
            self._input(self.role.primaryLost)
        self.state.setEpoch(epoch)
        self.role.promote()

    async def _switchover(self, force: bool) -> dict[str, Any]:
        """
        With a coordinator, C{promote} asks etcd for a switchover to this
        broker: the primary steps down first, then this broker takes the
        next epoch; returns once it is the primary (or refuses).
        """
        assert self.coordinated is not None
        if force:
            raise Refused(
                "cannot force a promotion with --ha-coordinator: etcd decides the primary;"
                " promote without --force (a switchover), or stop the primary"
            )
        if not self.role.hasPrimary or self.role.catchingUp:
            raise Refused(
                f"cannot promote this broker: it is {self.role.name}; a switchover goes to a"
                " ready backup"
            )
        promoted: Deferred[None] = Deferred()
        self._promotions.append(promoted)
        try:
            await self.coordinated.coordinator.handOver(self.brokerId)
        except SwitchoverRefused as refusal:
            self._promotions.remove(promoted)
            raise Refused(f"cannot promote this broker: {refusal}") from None
        promoted.addTimeout(3 * self.options.leaseTTL + 5, self.clock)
        try:
            await promoted
        except defer.TimeoutError:
            raise Refused(
                "the switchover to this broker did not complete in time: see"
                " qha-admin status --all"
            ) from None
        finally:
            if promoted in self._promotions:
                self._promotions.remove(promoted)
        return {"role": self.role.name, "epoch": self.epoch}

    # Single-queue replication

    def replicateQueue(self, remote: str, queue: str) -> None:
        """
        Make C{queue} here a live replica of C{queue} on C{remote} (a broker,
        or a cluster's brokers, as AMP addresses).
        """
        if not (self.options.queueReplication or not self.standalone):
            raise Refused(
                "single-queue replication is off: start the broker with"
                " --ha-queue-replication yes"
            )
        if not self.role.servesClients:
            raise Refused(
                f"this broker is {self.role.name}: replicate queues onto the primary"
            )
        try:
            addresses = parseBrokers(remote)
        except ValueError as error:
            raise Refused(f"REMOTE: {error}") from None
        existing = self.queueReplicas.get(queue)
        if existing is not None:
            existing.stop()
        replica = QueueReplica(self, addresses, queue)
        self.queueReplicas[queue] = replica
        replica.start()

    # What an admin sees

    def describe(self) -> dict[str, Any]:
        """
        The broker's HA state for C{qha-admin query}.
        """
        return {
            "role": self.role.name,
            "brokerId": self.brokerId,
            "epoch": self.epoch,
            "amqp": self.options.amqpAddress,
            "brokers": ",".join(self.options.brokers),
            "publicBrokers": self.options.publicBrokers,
            "replicateDefault": self.options.replicateDefault,
            "minBackups": self.options.minBackups,
            "primary": self.link.address if self.link is not None else None,
            "catchup": self.link.catchup.describe() if self.link is not None else None,
            "queueReplicas": [replica.describe() for replica in self.queueReplicas.values()],
            "coordinator": None if self.coordinated is None else self.coordinated.describe(),
            "backups": [
                {
                    "id": source.backupId,
                    "address": source.address,
                    "ready": source.ready,
                    "sent": source.seq,
                    "acknowledged": source.acked,
                    "catchup": (
                        None
                        if source.catchup is None
                        else source.catchup.describe(self.clock.seconds())
                    ),
                }
                for source in self.sources.values()
            ],
        }

    def applyPending(self) -> None:
        """
        Apply what the link acknowledged and has not applied yet, so that
        a listing shows it.
        """
        if self.link is not None:
            self.link.applyPending()


__all__ = ["ClientListener", "HANode", "NodeStore"]
