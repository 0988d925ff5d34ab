"""
A broker's life in a cluster: its identity and epoch, its role, the AMP
port where backups subscribe and admins connect, discovery of the primary,
promotion, recovery and fencing.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, ServerFactory
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from ..admin.commands import AddObject, DeleteObject, ListObjects, Ping, Promote, Query, Replicate
from ..broker.errors import AMQPError
from ..broker.queue import Queue
from ..broker.vhost import REPLICATE_ARGUMENT, VirtualHost
from ..changes.replay import Replicator, holdingsOf
from .commands import (
    MalformedBox,
    Events,
    Heartbeat,
    Hello,
    Login,
    NotAuthenticated,
    NotPrimary,
    OutOfSequence,
    Refused,
    StaleEpoch,
    Subscribe,
)
from ..changes.events import MalformedEvents
from .primary import ReplicationGate, ReplicationSource, parseHoldings, replicateLevel
from .role import (
    ACTIVE,
    CATCHUP,
    JOINING,
    PRIMARY_ROLES,
    READY,
    RECOVERING,
    STANDALONE,
    Role,
    RoleRefused,
)


def parseBrokers(value: str) -> list[str]:
    """
    Parse C{--ha-brokers}: C{host:port,host:port} or Qpid's
    C{amqp:tcp:host:port,tcp:host:port}; return C{host:port} strings.

    @raise ValueError: naming the part that is wrong.
    """
    text = value.strip()
    if text.startswith("amqp:"):
        text = text[len("amqp:") :]
    brokers = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if part.startswith("tcp:"):
            part = part[len("tcp:") :]
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(
                f"{part!r} in {value!r} is not host:port (e.g. node1:5673 or"
                " amqp:tcp:node1:5673,tcp:node2:5673)"
            )
        brokers.append(f"{host.strip('[]')}:{int(port)}")
    if not brokers:
        raise ValueError(f"{value!r} names no broker")
    return brokers


HELLO_TIMEOUT = 2.0
"""
Seconds a broker waits for another's answer to L{Hello}.
"""


def clientEndpoint(address: str) -> str:
    """
    The client endpoint string for C{host:port}.
    """
    host, _, port = address.rpartition(":")
    return f"tcp:host={host}:port={port}:timeout=2"


class PersistentState:
    """
    The broker's identity and epoch, kept in C{--data-dir}.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        idPath = os.path.join(directory, "broker-id")
        if os.path.exists(idPath):
            with open(idPath) as f:
                self.brokerId = f.read().strip()
        else:
            self.brokerId = str(uuid.uuid4())
            self._write("broker-id", self.brokerId)
        epochPath = os.path.join(directory, "epoch")
        self.epoch = 0
        if os.path.exists(epochPath):
            with open(epochPath) as f:
                text = f.read().strip()
            try:
                self.epoch = int(text)
            except ValueError:
                raise ValueError(f"{epochPath}: {text!r} is not an epoch number") from None

    def _write(self, name: str, text: str) -> None:
        path = os.path.join(self.directory, name)
        temporary = path + ".tmp"
        with open(temporary, "w") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def setEpoch(self, epoch: int) -> None:
        """
        Record C{epoch} durably before acting on it.
        """
        self._write("epoch", str(epoch))
        self.epoch = epoch


@dataclass
class HAOptions:
    """
    The cluster options of C{twistd qha}.
    """

    brokers: list[str]
    publicBrokers: str = ""
    username: str | None = None
    password: str | None = None
    replicateDefault: str = "none"
    backupTimeout: float = 10.0
    heartbeat: float = 2.0
    minBackups: int = 0
    queueReplication: bool = False
    dataDir: str = "qha-data"
    extra: dict[str, Any] = field(default_factory=dict)


class NodeAMP(amp.AMP):
    """
    An AMP connection of the node, either way; tells its locator when it
    goes. It does not log every connection (probes come every heartbeat).
    """

    def makeConnection(self, transport: Any) -> None:
        self._transportPeer = transport.getPeer()
        self._transportHost = transport.getHost()
        # A box's answer is what a publisher's confirm waits for.
        setNoDelay = getattr(transport, "setTcpNoDelay", None)
        if setNoDelay is not None:
            setNoDelay(True)
        amp.BinaryBoxProtocol.makeConnection(self, transport)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        amp.BinaryBoxProtocol.connectionLost(self, reason)
        self.transport = None
        locator = self.locator  # type: ignore[attr-defined]
        if isinstance(locator, NodeLocator):
            locator.lost()


class NodeLocator(amp.CommandLocator):
    """
    The commands a node answers on one AMP connection: replication (for
    brokers) and admin (for qha-admin).
    """

    def __init__(self, node: "HANode") -> None:
        super().__init__()
        self.node = node
        self.connection: NodeAMP | None = None
        self.authenticated = node.options.username is None
        self.source: ReplicationSource | None = None
        self.link: "BackupLink | None" = None

    def lost(self) -> None:
        if self.source is not None:
            self.source.stop()
            self.source = None
        if self.link is not None:
            self.link.lost()

    def _check(self) -> None:
        if not self.authenticated:
            raise NotAuthenticated("log in first with the HA (or admin) credentials")

    @Login.responder
    def login(self, username: str, password: str) -> dict[str, Any]:
        options = self.node.options
        if options.username is not None and (
            username != options.username or password != options.password
        ):
            raise NotAuthenticated(f"bad HA username or password for {username!r}")
        self.authenticated = True
        return {}

    @Hello.responder
    def hello(self, brokerId: str, epoch: int, role: str) -> dict[str, Any]:
        self._check()
        self.node.heardEpoch(epoch, role, brokerId)
        answer: dict[str, Any] = {
            "brokerId": self.node.brokerId,
            "epoch": self.node.epoch,
            "role": self.node.role.name,
        }
        store = self.node.store
        if store is not None:
            answer["storeEpoch"] = store.epoch
            answer["storePosition"] = store.position
        return answer

    @Subscribe.responder
    def subscribe(
        self, brokerId: str, epoch: int, address: str, holdings: bytes, queue: str | None = None
    ) -> dict[str, Any]:
        self._check()
        node = self.node
        if queue is not None:
            return self._subscribeQueue(brokerId, holdings, queue)
        if epoch > node.epoch:
            node.heardEpoch(epoch, JOINING, brokerId)
            raise StaleEpoch(f"this broker's epoch {node.epoch} is older than {epoch}")
        if node.role.name not in PRIMARY_ROLES:
            raise NotPrimary(f"this broker is {node.role.name}, not the primary")
        assert self.connection is not None
        held = parseHoldings(holdings)
        source = ReplicationSource(node, self.connection, brokerId, address, node.clock)
        self.source = source
        node.sources[brokerId] = source
        node.clock.callLater(0, source.start, held)
        return {"epoch": node.epoch}

    def _subscribeQueue(self, brokerId: str, holdings: bytes, queue: str) -> dict[str, Any]:
        """
        Single-queue replication: stream one queue to another broker.
        """
        node = self.node
        if node.role.name not in PRIMARY_ROLES + (STANDALONE,):
            raise NotPrimary(f"this broker is {node.role.name}, not the primary")
        if queue not in node.vhost.queues:
            raise Refused(f"no queue '{queue}' on this broker to replicate")
        assert self.connection is not None
        held = parseHoldings(holdings)
        source = ReplicationSource(node, self.connection, brokerId, "", node.clock, only=queue)
        self.source = source
        node.clock.callLater(0, source.start, held)
        return {"epoch": node.epoch}

    @Events.responder
    def events(
        self,
        epoch: int,
        seq: int,
        events: bytes,
        position: int | None = None,
        transient: bool = False,
    ) -> dict[str, Any] | Deferred[dict[str, Any]]:
        self._check()
        if self.link is None:
            raise NotPrimary("this connection is not a replication link")
        synced = self.link.received(epoch, seq, events, position, transient)
        if synced is not None:
            # A backup with a store acknowledges only what is on its disk.
            return synced.addCallback(lambda _: {})
        return {}

    @Heartbeat.responder
    def heartbeat(self, epoch: int) -> dict[str, Any]:
        self._check()
        if self.link is not None:
            self.link.heard()
        self.node.heardEpoch(epoch, "", "")
        return {"epoch": self.node.epoch}

    # Admin

    @Ping.responder
    def ping(self) -> dict[str, Any]:
        self._check()
        return {"role": self.node.role.name}

    @Query.responder
    def query(self) -> dict[str, Any]:
        self._check()
        return {"state": json.dumps(self.node.describe())}

    @Promote.responder
    def promote(self, force: bool) -> Deferred[dict[str, Any]]:
        self._check()
        return ensureDeferred(self.node.promote(force))

    @Replicate.responder
    def replicate(self, remote: str, queue: str) -> dict[str, Any]:
        self._check()
        self.node.replicateQueue(remote, queue)
        return {}

    @ListObjects.responder
    def listObjects(self, kind: str) -> dict[str, Any]:
        self._check()
        return {"objects": json.dumps(self.node.listObjects(kind)).encode("utf-8")}

    @AddObject.responder
    def addObject(self, kind: str, description: str) -> dict[str, Any]:
        self._check()
        self.node.addObject(kind, json.loads(description))
        return {}

    @DeleteObject.responder
    def deleteObject(self, kind: str, name: str) -> dict[str, Any]:
        self._check()
        self.node.deleteObject(kind, name)
        return {}


class BackupLink:
    """
    A backup's subscription to the primary over one AMP connection.
    """

    log = Logger()

    def __init__(self, node: "HANode", connection: NodeAMP, primaryId: str, address: str) -> None:
        self.node = node
        self.connection = connection
        self.primaryId = primaryId
        self.address = address
        self.lastHeard = node.clock.seconds()
        self.closed = False
        self.lastSeq = 0
        self._watch: IDelayedCall | None = None
        self.replicator = Replicator(node.vhost, self.caughtUp)
        # Boxes acknowledged on arrival, to apply: (seq, data, epoch, position).
        self._unapplied: list[tuple[int, bytes, int, int | None]] = []
        self._applyCall: IDelayedCall | None = None

    def start(self) -> None:
        self._scheduleWatch()

    def _scheduleWatch(self) -> None:
        if self.node.options.heartbeat and not self.closed:
            self._watch = self.node.clock.callLater(self.node.options.heartbeat, self._check)

    def _check(self) -> None:
        self._watch = None
        if self.closed:
            return
        silent = self.node.clock.seconds() - self.lastHeard
        if silent >= 2 * self.node.options.heartbeat:
            self.log.warn(
                "primary {primary} silent for {silent:.1f}s: looking for the primary again",
                primary=self.address,
                silent=silent,
            )
            self.close()
            return
        d = self.connection.callRemote(Heartbeat, epoch=self.node.epoch)
        d.addCallbacks(lambda _: self.heard(), lambda _: None)
        self._scheduleWatch()

    def heard(self) -> None:
        self.lastHeard = self.node.clock.seconds()

    def received(
        self,
        epoch: int,
        seq: int,
        data: bytes,
        position: int | None = None,
        transient: bool = False,
    ) -> Deferred[Any] | None:
        """
        A box of events from the primary, up to C{position} of its stream.

        A C{transient} box (only events of messages no store keeps) is
        acknowledged at once and applied right after the answer is written,
        so the primary's confirms do not wait for the applying. This backup
        holds the box in memory either way; only a box found malformed when
        applied was answered for nothing (the link then drops, so the primary
        stops counting on this backup). Any other box is applied first, with
        every box before it.

        @return: what the answer must wait for (this backup's store writing
            the box to disk), or L{None}.
        """
        node = self.node
        self.checkEpoch(epoch)
        self.heard()
        if seq <= self.lastSeq:
            # Sent again: applying it twice could bring back a message that
            # a later box dequeued.
            self.log.info("replication box {seq} was applied already: ignored", seq=seq)
            return None
        if seq != self.lastSeq + 1:
            # A box is missing (or this one overtook it): applying this one
            # could dequeue before enqueueing. Catch up again instead.
            self.log.warn(
                "replication box {seq} arrived after box {last}: catching up again",
                seq=seq,
                last=self.lastSeq,
            )
            node.clock.callLater(0, self.close)
            raise OutOfSequence(f"replication box {seq} refused: box {self.lastSeq + 1} is missing")
        self.lastSeq = seq
        if transient:
            self._unapplied.append((seq, data, epoch, position))
            if self._applyCall is None:
                self._applyCall = node.clock.callLater(0, self._applyAfterWrite)
            return None
        self.applyPending()
        if self.closed:
            raise MalformedBox(f"replication box {seq} refused: an earlier box was malformed")
        try:
            self.replicator.apply(data)
        except MalformedEvents as error:
            self.log.error("malformed replication box {seq}: {error}", seq=seq, error=str(error))
            node.clock.callLater(0, self.close)
            raise MalformedBox(f"replication box {seq} refused: {error}") from None
        return self._record(epoch, position, True)

    def _applyAfterWrite(self) -> None:
        # This runs among the reactor's timed calls, before its next round
        # of writes; a call scheduled now runs after that round, once the
        # answers are written.
        self._applyCall = self.node.clock.callLater(0, self.applyPending)

    def applyPending(self) -> None:
        """
        Apply the boxes acknowledged on arrival and not yet applied.
        """
        if self._applyCall is not None and self._applyCall.active():
            self._applyCall.cancel()
        self._applyCall = None
        boxes, self._unapplied = self._unapplied, []
        for seq, data, epoch, position in boxes:
            try:
                self.replicator.apply(data)
            except MalformedEvents as error:
                # Acknowledged already: the primary must drop this backup,
                # which catches up again.
                self.log.error(
                    "malformed replication box {seq}: {error}", seq=seq, error=str(error)
                )
                self.close()
                return
        if boxes:
            self._record(epoch, position, False)

    def _record(self, epoch: int, position: int | None, wait: bool) -> Deferred[Any] | None:
        """
        Have this backup's store (if it has one) write what was applied and
        the primary's position; return when it is on disk if C{wait}.
        """
        store = self.node.store
        if store is None or self is not self.node.link:
            return None
        if position is not None:
            store.setPosition(max(epoch, self.node.epoch), position)
        store.flush()
        return store.whenSynced() if wait else None

    def checkEpoch(self, epoch: int) -> None:
        """
        Refuse a stream of an older epoch; adopt a newer one.
        """
        node = self.node
        if epoch < node.epoch:
            raise StaleEpoch(
                f"replication stream of epoch {epoch} refused: this backup knows epoch {node.epoch}"
            )
        if epoch > node.epoch:
            node.adoptEpoch(epoch)

    def caughtUp(self) -> None:
        self.log.info("caught up with the primary at {address}", address=self.address)
        self.node.roleInput("caughtUp")

    def close(self) -> None:
        if not self.closed:
            transport = self.connection.transport
            self.lost()
            if transport is not None:
                transport.abortConnection()  # type: ignore[attr-defined]

    def lost(self) -> None:
        if self.closed:
            return
        self.closed = True
        # What was acknowledged is this backup's to keep.
        self.applyPending()
        if self._watch is not None and self._watch.active():
            self._watch.cancel()
        self._watch = None
        self.linkLost()

    def linkLost(self) -> None:
        """
        The link is gone: a backup looks for the primary again.
        """
        self.node.linkLost(self)


class StandaloneRole:
    """
    The role of a broker outside any cluster: it never changes.
    """

    name = STANDALONE

    def apply(self, input: str) -> None:
        raise RoleRefused(f"cannot {input} this broker: it is standalone")


class HANode(Service):
    """
    The cluster side of one broker.

    @ivar sources: the primary's replication sources, by backup id.
    @ivar link: a backup's subscription to the primary.
    """

    log = Logger()

    def __init__(
        self,
        options: HAOptions,
        vhost: VirtualHost,
        clock: Any,
        amqp: Any,
        state: PersistentState,
        standalone: bool = False,
        gate: ReplicationGate | None = None,
    ) -> None:
        """
        @param gate: the replication gate the AMQP factory holds confirms
            with (one of its holders); a new one if not given.
        """
        self.options = options
        self.standalone = standalone
        self.vhost = vhost
        self.clock: IReactorTime = clock
        self.reactor = clock
        self.amqp = amqp
        self.state = state
        self.brokerId = state.brokerId
        self.role: Role | StandaloneRole = (
            StandaloneRole() if standalone else Role(self._roleChanged)
        )
        self.gate = gate if gate is not None else ReplicationGate(options, clock)
        self.sources: dict[str, ReplicationSource] = {}
        self.link: BackupLink | None = None
        self.members: list[dict[str, str]] = []
        self.expected: set[str] = set()
        self.knownEpochs: dict[str, int] = {}
        self.queueReplicas: dict[str, Any] = {}
        self.store: Any = None
        self._discoveryCall: IDelayedCall | None = None
        self._recoveryCall: IDelayedCall | None = None
        self._probeCall: IDelayedCall | None = None
        self._discovering = False
        if not standalone:
            vhost.replica = True

    # Properties the replication code reads

    @property
    def epoch(self) -> int:
        return self.state.epoch

    @property
    def position(self) -> int:
        """
        The position in this primary's stream: every change its virtual
        host reports counts.
        """
        return self.vhost.changes

    @position.setter
    def position(self, position: int) -> None:
        # A broker restarted from its store goes on from the stored position.
        self.vhost.changes = position

    @property
    def replicateDefault(self) -> str:
        return self.options.replicateDefault

    @property
    def minBackups(self) -> int:
        return self.options.minBackups

    @property
    def heartbeat(self) -> float:
        return self.options.heartbeat

    # Service

    def startService(self) -> None:
        super().startService()
        if self.standalone:
            return
        self.log.info(
            "qha broker {id} joining the cluster {brokers} at epoch {epoch}",
            id=self.brokerId,
            brokers=",".join(self.options.brokers),
            epoch=self.epoch,
        )
        self._scheduleDiscovery(0)

    def stopService(self) -> Any:
        super().stopService()
        for call in (self._discoveryCall, self._recoveryCall, self._probeCall):
            if call is not None and call.active():
                call.cancel()
        if self.link is not None:
            self.link.close()
        for source in list(self.sources.values()):
            source.drop("the broker is stopping")
        for replica in self.queueReplicas.values():
            replica.stop()
        return None

    # Roles

    def roleInput(self, input: str) -> None:
        try:
            self.role.apply(input)
        except RoleRefused as refusal:
            self.log.info("{refusal}", refusal=str(refusal))

    def _roleChanged(self, old: str, new: str) -> None:
        self.log.info("role {old} -> {new} (epoch {epoch})", old=old, new=new, epoch=self.epoch)
        if new == JOINING:
            if old in PRIMARY_ROLES:
                self._stopServing()
            self._scheduleDiscovery(0)
        elif new == RECOVERING:
            self._startServing()
        elif new == ACTIVE:
            self.gate.recovered()
            self.log.info("qha broker {id} is the active primary", id=self.brokerId)

    def _startServing(self) -> None:
        vhost = self.vhost
        vhost.replica = False
        if self.store is not None:
            self.store.positionSource = lambda: (self.epoch, self.position)
        for queue in list(vhost.queues.values()):
            queue.promoted(self.epoch)
        self.gate.recovering = True
        self.amqp.startListening()
        self.expected = {
            member["id"]
            for member in self.members
            if member.get("id") != self.brokerId and member.get("role") != "primary"
        }
        if self.expected:
            self.log.info(
                "recovering: waiting up to {timeout}s for backups {expected}",
                timeout=self.options.backupTimeout,
                expected=sorted(self.expected),
            )
            self._recoveryCall = self.clock.callLater(self.options.backupTimeout, self._recoveryTimedOut)
        else:
            self.clock.callLater(0, self.roleInput, "recovered")
        self._scheduleProbe()

    def _recoveryTimedOut(self) -> None:
        self._recoveryCall = None
        if self.role.name == RECOVERING:
            self.log.warn(
                "backups {missing} did not return within {timeout}s: going active without them",
                missing=sorted(self.expected),
                timeout=self.options.backupTimeout,
            )
            self.expected.clear()
            self.roleInput("recovered")

    def _stopServing(self) -> None:
        self.log.warn("stepping down: a newer primary exists")
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
        if self._recoveryCall is not None and self._recoveryCall.active():
            self._recoveryCall.cancel()
        self._recoveryCall = None

    def backupReady(self, source: ReplicationSource) -> None:
        self.gate.backupReady(source)
        self._announceMembers()
        if source.backupId in self.expected:
            self.expected.discard(source.backupId)
            if not self.expected and self.role.name == RECOVERING:
                if self._recoveryCall is not None and self._recoveryCall.active():
                    self._recoveryCall.cancel()
                self._recoveryCall = None
                self.roleInput("recovered")

    def backupLost(self, source: ReplicationSource) -> None:
        if self.sources.get(source.backupId) is source:
            del self.sources[source.backupId]
        self._announceMembers()

    def _announceMembers(self) -> None:
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
        Another broker spoke of C{epoch}: a primary that hears of a newer
        one steps down at once.
        """
        if epoch > self.epoch and self.role.name in PRIMARY_ROLES:
            self.log.warn(
                "broker {other} speaks of epoch {epoch}, newer than ours ({ours})",
                other=brokerId or "?",
                epoch=epoch,
                ours=self.epoch,
            )
            self.roleInput("demote")

    def _scheduleProbe(self) -> None:
        if self.options.heartbeat and self.role.name in PRIMARY_ROLES:
            self._probeCall = self.clock.callLater(self.options.heartbeat, self._probe)

    def _probe(self) -> None:
        """
        A primary asks the others who they are, to learn of a newer epoch.
        """
        self._probeCall = None
        if self.role.name not in PRIMARY_ROLES:
            return

        async def probeAll() -> None:
            for address in self.options.brokers:
                answer = await self._ask(address)
                if answer is not None and answer["brokerId"] != self.brokerId:
                    if answer["role"] in PRIMARY_ROLES:
                        self.heardEpoch(answer["epoch"], answer["role"], answer["brokerId"])

        d = ensureDeferred(probeAll())
        d.addErrback(lambda failure: None)
        d.addBoth(lambda _: self._scheduleProbe())

    async def _connect(self, address: str) -> NodeAMP:
        endpoint = clientFromString(self.reactor, clientEndpoint(address))
        locator = NodeLocator(self)
        locator.authenticated = True
        protocol = NodeAMP(locator=locator)
        locator.connection = protocol
        factory = Factory.forProtocol(lambda: protocol)
        factory.noisy = False
        await endpoint.connect(factory)
        if self.options.username is not None:
            await protocol.callRemote(
                Login, username=self.options.username, password=self.options.password or ""
            )
        return protocol

    def _hello(self, protocol: NodeAMP) -> "Deferred[Any]":
        """
        Hello on C{protocol}, given up after C{HELLO_TIMEOUT} seconds: a
        paused broker (SIGSTOP) still accepts connections but never answers,
        and must not hold up discovery, probing or promotion for ever.
        """
        d: Deferred[Any] = protocol.callRemote(
            Hello, brokerId=self.brokerId, epoch=self.epoch, role=self.role.name
        )
        d.addTimeout(HELLO_TIMEOUT, self.clock)
        return d

    async def _ask(self, address: str) -> dict[str, Any] | None:
        """
        Hello to C{address}; L{None} if it does not answer.
        """
        try:
            protocol = await self._connect(address)
        except Exception:
            return None
        try:
            answer = await self._hello(protocol)
            self.knownEpochs[address] = answer["epoch"]
            return dict(answer)
        except Exception:
            return None
        finally:
            if protocol.transport is not None:
                protocol.transport.loseConnection()

    # Discovery: joining -> catchup

    def _scheduleDiscovery(self, delay: float) -> None:
        if self._discoveryCall is not None and self._discoveryCall.active():
            return
        self._discoveryCall = self.clock.callLater(delay, self._discover)

    def _discover(self) -> None:
        self._discoveryCall = None
        if self.role.name != JOINING or self._discovering or not self.running:
            return
        self._discovering = True

        def done(found: bool) -> None:
            self._discovering = False
            if not found and self.role.name == JOINING and self.running:
                self._scheduleDiscovery(0.5)

        def failed(failure: Failure) -> None:
            self.log.failure("discovery failed", failure)
            done(False)

        d = ensureDeferred(self._findPrimary())
        d.addCallbacks(done, failed)

    async def _findPrimary(self) -> bool:
        for address in self.options.brokers:
            if self.role.name != JOINING:
                return True
            try:
                protocol = await self._connect(address)
            except Exception:
                continue
            try:
                answer = await self._hello(protocol)
                self.knownEpochs[address] = answer["epoch"]
                if (
                    answer["brokerId"] == self.brokerId
                    or answer["role"] not in PRIMARY_ROLES
                    or answer["epoch"] < self.epoch
                    or self.role.name != JOINING
                ):
                    protocol.transport.loseConnection()  # type: ignore[union-attr]
                    continue
                link = BackupLink(self, protocol, answer["brokerId"], address)
                locator = protocol.locator  # type: ignore[attr-defined]
                locator.link = link
                self.link = link
                self.vhost.replica = True
                self.roleInput("primaryFound")
                await protocol.callRemote(
                    Subscribe,
                    brokerId=self.brokerId,
                    epoch=self.epoch,
                    address=self.options.extra.get("haAddress", ""),
                    holdings=json.dumps(holdingsOf(self.vhost)).encode("utf-8"),
                )
                link.start()
                self.log.info("following the primary at {address}", address=address)
                return True
            except Exception as error:
                self.log.info("{address}: {error}", address=address, error=str(error))
                if self.link is not None and self.link.connection is protocol:
                    self.link.close()
                elif protocol.transport is not None:
                    protocol.transport.loseConnection()
        return False

    def linkLost(self, link: BackupLink) -> None:
        if self.link is link:
            self.link = None
            self.members = link.replicator.members or self.members
            if self.role.name in (CATCHUP, READY):
                self.roleInput("primaryLost")
            elif self.role.name == JOINING:
                self._scheduleDiscovery(0.5)

    # Promotion

    async def promote(self, force: bool) -> dict[str, Any]:
        """
        Become the primary, if the rules allow (or C{force}).
        """
        role = self.role.name
        if self.standalone:
            raise Refused("cannot promote this broker: it is standalone (--ha-cluster no)")
        if role in PRIMARY_ROLES:
            return {"role": role, "epoch": self.epoch}
        others = []
        for address in self.options.brokers:
            answer = await self._ask(address)
            if answer is not None and answer["brokerId"] != self.brokerId:
                others.append((address, answer))
        if not force:
            if role == CATCHUP:
                raise Refused("cannot promote this broker: it is still catching up with the primary")
            for address, answer in others:
                if answer["role"] in PRIMARY_ROLES and answer["epoch"] >= self.epoch:
                    raise Refused(
                        f"cannot promote this broker: {address} is already the primary"
                        f" ({answer['role']}, epoch {answer['epoch']})"
                    )
            if role == JOINING:
                for address, answer in others:
                    if answer["role"] == READY:
                        raise Refused(
                            f"cannot promote this broker: it is joining and {address} is"
                            " ready; promote that one"
                        )
        if not force and self.store is not None:
            mine = (self.store.epoch, self.store.position)
            for address, answer in others:
                theirs = (answer.get("storeEpoch"), answer.get("storePosition"))
                if theirs[0] is not None and theirs[1] is not None and theirs > mine:
                    raise Refused(
                        f"cannot promote this broker: the store of {address} is newer"
                        f" (epoch {theirs[0]}, position {theirs[1]}) than this one's"
                        f" (epoch {mine[0]}, position {mine[1]}); promote that one, or"
                        " use --force"
                    )
        epochs = [self.epoch] + [answer["epoch"] for _, answer in others] + list(
            self.knownEpochs.values()
        )
        if self.link is not None:
            self.members = self.link.replicator.members or self.members
            self.link.close()
        if self.role.name == CATCHUP:
            self.roleInput("primaryLost")
        self.state.setEpoch(max(epochs) + 1)
        try:
            self.role.apply("promote")
        except RoleRefused as refusal:
            raise Refused(str(refusal)) from None
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
        if self.role.name not in PRIMARY_ROLES + (STANDALONE,):
            raise Refused(
                f"this broker is {self.role.name}: replicate queues onto the primary"
            )
        try:
            addresses = parseBrokers(remote)
        except ValueError as error:
            raise Refused(f"REMOTE: {error}") from None
        from .queuereplica import QueueReplica

        existing = self.queueReplicas.get(queue)
        if existing is not None:
            existing.stop()
        replica = QueueReplica(self, addresses, queue)
        self.queueReplicas[queue] = replica
        replica.start()

    # Admin views

    def describe(self) -> dict[str, Any]:
        """
        The broker's HA state for C{qha-admin query}.
        """
        return {
            "role": self.role.name,
            "brokerId": self.brokerId,
            "epoch": self.epoch,
            "brokers": ",".join(self.options.brokers),
            "publicBrokers": self.options.publicBrokers,
            "replicateDefault": self.options.replicateDefault,
            "minBackups": self.options.minBackups,
            "primary": self.link.address if self.link is not None else None,
            "queueReplicas": [replica.describe() for replica in self.queueReplicas.values()],
            "backups": [
                {
                    "id": source.backupId,
                    "address": source.address,
                    "ready": source.ready,
                    "sent": source.seq,
                    "acknowledged": source.acked,
                }
                for source in self.sources.values()
            ],
        }

    def listObjects(self, kind: str) -> list[dict[str, Any]]:
        if self.link is not None:
            self.link.applyPending()
        return listObjects(self.vhost, kind, self.options.replicateDefault)

    def addObject(self, kind: str, description: dict[str, Any]) -> None:
        if self.role.name not in PRIMARY_ROLES + (STANDALONE,):
            raise Refused(
                f"this broker is {self.role.name}: add queues and exchanges on the primary"
            )
        addObject(self.vhost, kind, description)

    def deleteObject(self, kind: str, name: str) -> None:
        if self.role.name not in PRIMARY_ROLES + (STANDALONE,):
            raise Refused(
                f"this broker is {self.role.name}: delete queues and exchanges on the primary"
            )
        deleteObject(self.vhost, kind, name)


def listObjects(vhost: VirtualHost, kind: str, default: str) -> list[dict[str, Any]]:
    """
    Queues, exchanges or bindings with their counts, like qpid-stat.
    """
    if kind == "queues":
        return [
            {
                "name": q.name,
                "durable": q.durable,
                "autoDelete": q.autoDelete,
                "exclusive": q.exclusive,
                "messages": q.messageCount,
                "unacked": q.unacked,
                "consumers": q.consumerCount,
                "replicate": replicateLevel(q, default),
            }
            for q in vhost.queues.values()
        ]
    if kind == "exchanges":
        return [
            {
                "name": x.name,
                "type": x.type,
                "durable": x.durable,
                "autoDelete": x.autoDelete,
                "internal": x.internal,
                "bindings": len(x.bindings),
                "replicate": replicateLevel(x, default),
            }
            for x in vhost.exchanges.values()
        ]
    if kind == "bindings":
        rows = []
        for exchange in vhost.exchanges.values():
            if exchange is vhost.defaultExchange:
                continue
            for binding in exchange.bindings.values():
                rows.append(
                    {
                        "source": exchange.name,
                        "destination": binding.destination.name,
                        "destinationKind": "queue" if isinstance(binding.destination, Queue) else "exchange",
                        "routingKey": binding.routingKey,
                        "arguments": {k: str(v) for k, v in binding.arguments.items()},
                    }
                )
        return rows
    raise Refused(f"unknown kind {kind!r}: use queues, exchanges or bindings")


def addObject(vhost: VirtualHost, kind: str, description: dict[str, Any]) -> None:
    """
    Declare a queue or an exchange for C{qha-admin add}.
    """
    arguments = dict(description.get("arguments") or {})
    if description.get("replicate"):
        arguments[REPLICATE_ARGUMENT] = description["replicate"]
    try:
        if kind == "queue":
            vhost.declareQueue(
                description["name"],
                durable=bool(description.get("durable")),
                autoDelete=bool(description.get("autoDelete")),
                arguments=arguments,
            )
        elif kind == "exchange":
            vhost.declareExchange(
                description["name"],
                description.get("type", "direct"),
                durable=bool(description.get("durable")),
                autoDelete=bool(description.get("autoDelete")),
                arguments=arguments,
            )
        else:
            raise Refused(f"unknown kind {kind!r}: use queue or exchange")
    except AMQPError as error:
        raise Refused(error.replyText) from None


def deleteObject(vhost: VirtualHost, kind: str, name: str) -> None:
    """
    Delete a queue or an exchange for C{qha-admin del}.
    """
    try:
        if kind == "queue":
            if name not in vhost.queues:
                raise Refused(f"no queue '{name}'")
            queue = vhost.queues[name]
            vhost.deleteQueue(name, owner=queue.owner)
        elif kind == "exchange":
            if name not in vhost.exchanges:
                raise Refused(f"no exchange '{name}'")
            vhost.deleteExchange(name)
        else:
            raise Refused(f"unknown kind {kind!r}: use queue or exchange")
    except AMQPError as error:
        raise Refused(error.replyText) from None


class NodeAMPFactory(ServerFactory):
    """
    Accepts AMP connections for a node (backups, admins), or for a
    standalone broker's admin commands.
    """

    noisy = False

    def __init__(self, locatorFactory: Callable[[], NodeLocator]) -> None:
        self.locatorFactory = locatorFactory

    def buildProtocol(self, addr: Any) -> NodeAMP:  # type: ignore[override]
        locator = self.locatorFactory()
        protocol = NodeAMP(locator=locator)
        locator.connection = protocol
        return protocol


__all__ = [
    "HANode",
    "HAOptions",
    "NodeAMPFactory",
    "NodeLocator",
    "PersistentState",
    "parseBrokers",
    "Factory",
]
