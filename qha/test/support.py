"""
The harnesses that qha's unit tests share: one place, so that no test
module imports another.

The AMQP side (from the tests of L{qha.amqp.protocol}): L{Client}, a test
client that speaks to an L{AMQPServer} over a L{StringTransport} with
frames encoded and decoded by pamqp; L{ProtocolTestCase}, the base of the
tests that drive one; and small helpers (L{fastUsers}, L{publishBytes},
L{names}, L{contents}).

The cluster side (from the tests of L{qha.ha}): L{InMemoryCluster}, brokers
on one L{Clock} joined by L{twisted.test.iosim} connections, each
replication connection a L{Link}; L{Network}, brokers on one
L{MemoryReactorClock} that find each other through their own discovery
over fake TCP; L{BoxInterceptor}, which loses, holds back, repeats or
corrupts a primary's L{Events} boxes; L{FakeAMQP}, the AMQP listener as a
node drives it; L{FakeNode} and L{FakeSource}, what a
L{qha.ha.primary.ReplicationGate} sees of its node and of a backup; and
helpers on messages and queues (L{message}, L{persistentMessage},
L{queueContents}, L{snapshotOf}, L{writeEnqueued}).

The contract of L{qha.ha.etcd.IEtcd}, L{EtcdContractMixin}, runs against
the fake etcd of L{qha.testing} and against a real one.

Fakes that users of qha could share too are in L{qha.testing}.
"""

from __future__ import annotations

import functools
import json
import struct
from types import SimpleNamespace
from typing import Any, Awaitable, Callable, Iterator, Sequence

from pamqp import commands
from pamqp import frame as pamqpFrame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from qha.amqp import wire
from qha.amqp.holders import Completion
from qha.amqp.protocol import AMQPServer, BrokerFactory
from qha.amqp.users import ScryptHash, UserDatabase
from qha.broker.message import Message
from qha.broker.paging import Pager
from qha.broker.queue import Consumer, Entry, Queue
from qha.broker.vhost import Resources, VirtualHost
from qha.changes import events as ev
from qha.changes.replay import holdingsOf
from qha.ha.commands import Events, Subscribe
from qha.ha.config import HAOptions
from qha.ha.connection import NodeAMP, NodeAMPFactory, nodeConnection
from qha.ha.etcd import Compare, Delete, Event, Get, IEtcd, IWatch, LeaseLost, Put
from qha.ha.identity import PersistentState
from qha.ha.link import BackupLink
from qha.ha.locator import ReplicationLocator
from qha.ha.node import HANode
from qha.ha.role import ACTIVE
from qha.testing import MemoryBodyStore, RecordingObserver, RecordingTarget


LOOPBACK = IPv4Address("TCP", "127.0.0.1", 1234)
REMOTE = IPv4Address("TCP", "192.0.2.7", 4321)

FAST_N = 2**4
"""
A scrypt cost that makes a password check take microseconds.
"""

CHANNEL_CLOSE = commands.Channel.Close(
    reply_code=200, reply_text="bye", class_id=0, method_id=0
)
CONNECTION_CLOSE = commands.Connection.Close(
    reply_code=200, reply_text="bye", class_id=0, method_id=0
)

Received = tuple[int, Any]
"""
A frame the server sent: its channel and the pamqp frame object.
"""


def fastUsers() -> UserDatabase:
    """
    A user database with C{guest}/C{guest} and C{bob}/C{secret}, hashed
    cheaply so that tests log in fast.
    """
    return UserDatabase(
        {
            "guest": ScryptHash.fromPassword("guest", n=FAST_N),
            "bob": ScryptHash.fromPassword("secret", n=FAST_N),
        }
    )


def decodeFrames(data: bytes) -> list[Received]:
    """
    Decode every frame in C{data} with pamqp.
    """
    frames: list[Received] = []
    while data:
        consumed, channel, value = pamqpFrame.unmarshal(data)
        frames.append((channel, value))
        data = data[consumed:]
    return frames


def names(frames: Sequence[Received]) -> list[tuple[int, str]]:
    """
    The channel and pamqp name of each frame, e.g. C{(1, "Basic.Deliver")}.
    """
    return [(channel, value.name) for channel, value in frames]


def encode(channel: int, *values: Any) -> bytes:
    """
    Encode C{values} (methods, content headers and bodies, heartbeats) as
    frames on C{channel}.
    """
    return b"".join(pamqpFrame.marshal(value, channel) for value in values)


def rawFrame(frameType: int, channel: int, payload: bytes, end: bytes = b"\xce") -> bytes:
    """
    A frame built by hand, so that it can be wrong.
    """
    return struct.pack(">BHI", frameType, channel, len(payload)) + payload + end


def publishBytes(
    channel: int,
    exchange: str,
    routingKey: str,
    body: bytes,
    mandatory: bool = False,
    chunk: int = 0,
    properties: commands.Basic.Properties | None = None,
) -> bytes:
    """
    The frames of one basic.publish with its content, the body split into
    frames of C{chunk} bytes (0: one frame).
    """
    parts = [
        commands.Basic.Publish(
            exchange=exchange, routing_key=routingKey, mandatory=mandatory
        ),
        ContentHeader(0, len(body), properties or commands.Basic.Properties()),
    ]
    step = chunk or len(body) or 1
    parts += [ContentBody(body[i : i + step]) for i in range(0, len(body), step)]
    return encode(channel, *parts)


def contents(frames: Sequence[Received]) -> list[tuple[Any, bytes]]:
    """
    Group frames into messages: each basic.deliver, basic.get-ok or
    basic.return with the body of the content frames that follow it.
    Other frames are left out.
    """
    result: list[tuple[Any, bytes]] = []
    for _, value in frames:
        if isinstance(
            value, (commands.Basic.Deliver, commands.Basic.GetOk, commands.Basic.Return)
        ):
            result.append((value, b""))
        elif isinstance(value, ContentBody) and result:
            method, body = result[-1]
            result[-1] = (method, body + value.value)
    return result


class Client:
    """
    A test AMQP client connected to an L{AMQPServer} through a
    L{StringTransport}.

    @ivar server: the server protocol.
    @ivar transport: what the server writes to.
    """

    def __init__(self, factory: BrokerFactory, peer: IPv4Address = LOOPBACK) -> None:
        """
        Connect a new server protocol of C{factory} to a transport whose
        peer is C{peer}.
        """
        self.transport = StringTransport(peerAddress=peer)
        self.server: AMQPServer = factory.buildProtocol(peer)
        self.server.makeConnection(self.transport)
        self.lost = False

    def send(self, data: bytes) -> None:
        """
        Deliver C{data} to the server as one read.
        """
        self.server.dataReceived(data)

    def sendFrames(self, channel: int, *values: Any) -> None:
        """
        Encode C{values} on C{channel} and deliver them as one read.
        """
        self.send(encode(channel, *values))

    def received(self) -> list[Received]:
        """
        Decode and forget what the server wrote since the last call.
        """
        data = self.transport.value()
        self.transport.clear()
        return decodeFrames(data)

    def call(self, channel: int, *values: Any) -> list[Received]:
        """
        Send C{values} on C{channel} and return what the server answered.
        """
        self.sendFrames(channel, *values)
        return self.received()

    def handshake(
        self,
        mechanism: str = "PLAIN",
        response: str = "\0guest\0guest",
        frameMax: int = 0,
        channelMax: int = 0,
        heartbeat: int = 0,
        capabilities: dict[str, Any] | None = None,
        vhost: str = "/",
    ) -> list[Received]:
        """
        Run the connection handshake up to connection.open and return every
        frame the server sent.
        """
        self.send(wire.PROTOCOL_HEADER)
        properties: dict[str, Any] = {"product": "qha tests"}
        if capabilities is not None:
            properties["capabilities"] = capabilities
        self.sendFrames(
            0,
            commands.Connection.StartOk(
                client_properties=properties, mechanism=mechanism, response=response
            ),
        )
        if self.transport.disconnecting:
            return self.received()
        self.sendFrames(
            0,
            commands.Connection.TuneOk(
                channel_max=channelMax, frame_max=frameMax, heartbeat=heartbeat
            ),
        )
        self.sendFrames(0, commands.Connection.Open(virtual_host=vhost))
        return self.received()

    def openChannel(self, number: int) -> list[Received]:
        """
        Open channel C{number}.
        """
        return self.call(number, commands.Channel.Open())

    def disconnect(self) -> None:
        """
        Tell the server its connection is gone (once).
        """
        if not self.lost:
            self.lost = True
            self.server.connectionLost(Failure(ConnectionDone()))


class ProtocolTestCase(SynchronousTestCase):
    """
    A base for protocol tests: a virtual host, a clock, a factory and a way
    to connect clients that are disconnected at cleanup, after which no
    timer may be left.
    """

    users: UserDatabase | None = None

    def setUp(self) -> None:
        """
        Make the broker.
        """
        self.clock = Clock()
        self.vhost = VirtualHost()
        self.factory = self.makeFactory()
        self.addCleanup(self.assertNoDelayedCalls)

    def makeFactory(self, **kwargs: Any) -> BrokerFactory:
        """
        A factory for C{self.vhost} with fast users and C{self.clock}.
        """
        return BrokerFactory(self.vhost, self.users or fastUsers(), self.clock, **kwargs)

    def assertNoDelayedCalls(self) -> None:
        """
        Every connection is gone, so no timer may be left.
        """
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def connect(
        self, peer: IPv4Address = LOOPBACK, factory: BrokerFactory | None = None
    ) -> Client:
        """
        Connect a client; it is disconnected at cleanup.
        """
        client = Client(factory or self.factory, peer)
        self.addCleanup(client.disconnect)
        return client

    def openClient(self, channels: Sequence[int] = (1,), **kwargs: Any) -> Client:
        """
        Connect a client, run the handshake and open C{channels}.
        """
        client = self.connect()
        frames = client.handshake(**kwargs)
        self.assertEqual(names(frames)[-1], (0, "Connection.OpenOk"))
        for number in channels:
            self.assertEqual(
                names(client.openChannel(number)), [(number, "Channel.OpenOk")]
            )
        return client

    def assertConnectionClosed(
        self, client: Client, frames: Sequence[Received], code: int, dropped: bool = False
    ) -> commands.Connection.Close:
        """
        The last frame is a connection.close with C{code}; with C{dropped}
        the server also dropped the socket at once.
        """
        self.assertTrue(frames, "the server sent nothing")
        channel, close = frames[-1]
        self.assertEqual(channel, 0)
        self.assertIsInstance(close, commands.Connection.Close)
        self.assertEqual(close.reply_code, code, close.reply_text)
        self.assertEqual(client.transport.disconnecting, dropped)
        return close

    def assertChannelClosed(
        self, frames: Sequence[Received], number: int, code: int
    ) -> commands.Channel.Close:
        """
        The last frame is a channel.close on C{number} with C{code}.
        """
        self.assertTrue(frames, "the server sent nothing")
        channel, close = frames[-1]
        self.assertEqual(channel, number)
        self.assertIsInstance(close, commands.Channel.Close)
        self.assertEqual(close.reply_code, code, close.reply_text)
        return close

    def finishClose(self, client: Client) -> None:
        """
        Answer the server's connection.close with close-ok: the server drops
        the socket.
        """
        self.assertEqual(client.call(0, commands.Connection.CloseOk()), [])
        self.assertTrue(client.transport.disconnecting)


ALL = {"qpid.replicate": "all"}
"""
The declare arguments of a queue whose messages are replicated.
"""


def message(body: bytes, routingKey: str = "", headers: dict[str, Any] | None = None) -> Message:
    """
    A message for the default exchange, with C{headers} if given.
    """
    properties = commands.Basic.Properties(headers=headers) if headers else None
    return Message.build("", routingKey, body, properties)


def persistentMessage(
    body: bytes,
    routingKey: str = "",
    exchange: str = "",
    persistent: bool = True,
    **properties: Any,
) -> Message:
    """
    A message with delivery mode 2 (persistent) or 1, and C{properties}:
    what the store keeps.
    """
    return Message.build(
        exchange,
        routingKey,
        body,
        commands.Basic.Properties(delivery_mode=2 if persistent else 1, **properties),
    )


def writeEnqueued(
    writer: ev.EventWriter,
    queue: str,
    id: int,
    redelivered: bool,
    addressing: bytes,
    header: bytes,
    body: bytes,
) -> None:
    """
    Write an enqueue event of C{queue} (a name) from its raw parts.
    """
    queueLike = SimpleNamespace(name=queue, durable=False)
    message = Message(addressing, header, body)
    writer.entry(queueLike, Entry(message, id, redelivered, 0, None))


def bodies(frames: list[Any]) -> list[bytes]:
    """
    The message bodies among decoded frames.
    """
    return [frame.value for _, frame in frames if isinstance(frame, ContentBody)]


def queueContents(queue: Queue) -> list[tuple[int, bytes, bool]]:
    """
    What a queue holds, ready or held by a consumer, in id order: each
    entry's id, body and redelivered mark.
    """
    entries: dict[int, Entry] = {}
    for level in queue.levels:
        for entry in level:
            entries[entry.id] = entry
    entries.update(queue.held)
    return [(entry.id, entry.message.body, entry.redelivered) for _, entry in sorted(entries.items())]


class PagingTestCase(SynchronousTestCase):
    """
    A virtual host whose resources page to a L{MemoryBodyStore}, with a
    read-ahead window of 4 and no broker-wide budget, and the steps of a
    paging test: publish numbered bodies, consume, acknowledge, check that
    nothing is left.

    @cvar pagerOptions: further keyword arguments of the L{Pager} (segments
        and their size, for a queue that pages segments).
    """

    pagerOptions: dict[str, Any] = {}

    def setUp(self) -> None:
        """
        The virtual host, its pager and resources, and an observer of it.
        """
        self.clock = Clock()
        self.bodies = MemoryBodyStore()
        self.pager = Pager(self.bodies, budget=0, window=4, **self.pagerOptions)
        self.resources = Resources(pager=self.pager)
        self.vhost = VirtualHost(resources=self.resources, clock=self.clock)
        self.observer = RecordingObserver()
        self.vhost.observers.append(self.observer)

    def publishAll(self, queue: str, count: int, size: int = 10, **properties: Any) -> list[bytes]:
        """
        Publish C{count} numbered bodies of C{size} bytes to C{queue}.
        """
        bodies = [(b"%06d" % n).ljust(size, b".") for n in range(count)]
        for body in bodies:
            self.vhost.publish(
                "", queue, Message.build("", queue, body, commands.Basic.Properties(**properties))
            )
        return bodies

    def consume(self, queue: Queue, credit: int | None = None) -> tuple[Consumer, RecordingTarget]:
        """
        Subscribe a L{RecordingTarget} with C{credit}.
        """
        target = RecordingTarget(credit)
        consumer = Consumer(queue, "ctag", target)
        queue.addConsumer(consumer)
        return consumer, target

    def ack(self, queue: Queue, consumer: Consumer, target: RecordingTarget) -> None:
        """
        Acknowledge everything C{target} was given, as a channel does.
        """
        entries = [entry for _, entry in target.deliveries if entry.id in queue.held]
        queue.settleAll(entries)
        queue.consumerSettled(consumer, len(entries))

    def drain(self, queue: Queue, expected: list[bytes]) -> None:
        """
        Consume C{queue}: its consumer is given the bodies C{expected}, in
        order, and acknowledges them.
        """
        consumer, target = self.consume(queue)
        self.assertEqual(target.bodies(), expected)
        self.ack(queue, consumer, target)

    def giveBack(self, queue: Queue, consumer: Consumer, target: RecordingTarget, taken: list[Entry]) -> None:
        """
        Give C{taken}, which C{consumer} holds, back to C{queue}, as a
        channel does on basic.recover or a nack, and let C{target} take
        everything again without a credit limit.
        """
        queue.release(taken)
        queue.consumerSettled(consumer, len(taken))
        target.deliveries.clear()
        target.credit = None
        queue.dispatch()

    def assertEmpty(self, queue: Queue | None = None) -> None:
        """
        Nothing is held: no memory counted, no page left, and (for
        C{queue}) no count left and no paged tail.
        """
        self.assertEqual(self.resources.used, 0)
        self.assertEqual(self.bodies.pages, {})
        self.assertEqual((self.bodies.records, self.bodies.size), (0, 0))
        if queue is not None:
            self.assertEqual(
                (queue.messageCount, queue.readyBytes, queue.pagedCount, queue.pagedBytes),
                (0, 0, 0, 0),
            )
            self.assertFalse(queue.hasTail)


class FakeNode:
    """
    What a L{ReplicationGate} reads of its node.
    """

    def __init__(self, minBackups: int = 0, replicateDefault: str = "none") -> None:
        """
        @param minBackups: C{--ha-min-backups}.
        @param replicateDefault: C{--ha-replicate}.
        """
        self.minBackups = minBackups
        self.replicateDefault = replicateDefault


class FakeSource:
    """
    A backup's replication source, as the gate sees it: the completions
    attached to it.
    """

    def __init__(self, name: str) -> None:
        """
        @param name: for messages.
        """
        self.name = name
        self.attached: list[Completion] = []

    def __repr__(self) -> str:
        """
        The name.
        """
        return f"<FakeSource {self.name}>"

    def attach(self, completion: Completion) -> None:
        """
        Record C{completion}.
        """
        self.attached.append(completion)


class FakeBrokerFactory:
    """
    The AMQP factory as the node sees it: where the gate goes.
    """

    gate: Any = None


class FakeAMQP:
    """
    The AMQP listener of a broker, as the node drives it.

    @ivar listening: whether clients could connect.
    @ivar stopped: every reason given for stopping.
    """

    def __init__(self) -> None:
        """
        Not listening yet.
        """
        self.factory = FakeBrokerFactory()
        self.listening = False
        self.stopped: list[str] = []

    def startListening(self) -> None:
        """
        Accept clients.
        """
        self.listening = True

    def stopListening(self, reason: str = "the broker is stopping") -> None:
        """
        Refuse clients, recording C{reason}.
        """
        self.listening = False
        self.stopped.append(reason)


class Link:
    """
    One replication connection between two in-memory nodes.

    @ivar primarySide: the primary's AMP protocol (with a L{ReplicationLocator}).
    @ivar backupSide: the backup's AMP protocol, whose locator has C{link}.
    @ivar pump: moves the bytes.
    @ivar boxes: every box the backup applied, decoded, in order.
    @ivar subscribed: the result of the L{Subscribe} call, once answered.
    """

    def __init__(self, primarySide: NodeAMP, backupSide: NodeAMP, pump: iosim.IOPump, link: BackupLink) -> None:
        """
        Record the parts.
        """
        self.primarySide = primarySide
        self.backupSide = backupSide
        self.pump = pump
        self.link = link
        self.boxes: list[list[tuple[Any, ...]]] = []
        self.subscribed: list[Any] = []

    def flush(self) -> None:
        """
        Move every byte either way, and run what is due now.
        """
        self.pump.flush()

    def cut(self) -> None:
        """
        The connection drops.
        """
        transport = self.backupSide.transport
        if transport is not None:
            transport.loseConnection()
        self.pump.flush()

    def events(self, kind: bytes) -> list[tuple[Any, ...]]:
        """
        Every event of type C{kind} the backup applied on this link.
        """
        return [event for box in self.boxes for event in box if event[0] == kind]


class InMemoryCluster:
    """
    Brokers on one L{Clock}, joined by iosim connections instead of sockets.
    """

    def __init__(
        self,
        case: SynchronousTestCase,
        heartbeat: float = 0.0,
        minBackups: int = 0,
        backupTimeout: float = 10.0,
    ) -> None:
        """
        @param case: the test, for temporary directories.
        @param heartbeat: C{--ha-heartbeat} of every node (0: none).
        @param minBackups: C{--ha-min-backups} of every node.
        @param backupTimeout: C{--ha-backup-timeout} of every node.
        """
        self.case = case
        self.clock = Clock()
        self.heartbeat = heartbeat
        self.minBackups = minBackups
        self.backupTimeout = backupTimeout
        self.links: list[Link] = []
        self.nodes: list[HANode] = []

    def node(self) -> HANode:
        """
        A broker in a cluster, joining, that knows no address (so it never
        looks for a primary by itself: the test connects it).
        """
        options = HAOptions(
            brokers=[],
            heartbeat=self.heartbeat,
            minBackups=self.minBackups,
            backupTimeout=self.backupTimeout,
            dataDir=self.case.mktemp(),
        )
        state = PersistentState(options.dataDir)
        node = HANode(options, VirtualHost(clock=self.clock), self.clock, FakeAMQP(), state)
        self.nodes.append(node)
        return node

    def promote(self, node: HANode, force: bool = True) -> dict[str, Any]:
        """
        Promote C{node} (it asks no other broker: it knows none) and run
        what follows at once.
        """
        results: list[Any] = []
        ensureDeferred(node.promote(force)).addBoth(results.append)
        self.clock.advance(0)
        [result] = results
        if isinstance(result, Failure):
            result.raiseException()
        return dict(result)

    def primary(self) -> HANode:
        """
        A node promoted to active primary.
        """
        node = self.node()
        self.promote(node)
        self.case.assertEqual(node.role.name, ACTIVE)
        return node

    def connect(self, primary: HANode, backup: HANode, flush: bool = True) -> Link:
        """
        Subscribe C{backup} to C{primary} the way discovery does once it
        found the primary: a L{BackupLink} on the backup's connection, then
        L{Subscribe} with what the backup holds.
        """
        primarySide = NodeAMPFactory(None, [primary.replicationLocator]).buildProtocol(None)  # type: ignore[arg-type]
        backupSide = nodeConnection(None, [backup.replicationLocator], authenticated=True)
        pump = iosim.connect(
            primarySide,
            iosim.makeFakeServer(primarySide),
            backupSide,
            iosim.makeFakeClient(backupSide),
            clock=self.clock,
        )
        link = BackupLink(backup, backupSide, primary.brokerId, "primary:5673")
        connection = Link(primarySide, backupSide, pump, link)
        steps = link.replicator.steps

        def recordingSteps(data: bytes, every: int, verbatim: Any = None) -> Iterator[None]:
            """
            Record the box, then apply it (a step at a time, or at once:
            L{Replicator.apply} goes through here too).
            """
            connection.boxes.append(list(ev.readEvents(data)))
            return steps(data, every, verbatim)

        link.replicator.steps = recordingSteps  # type: ignore[method-assign]
        backup.followLink(link)
        backupSide.callRemote(
            Subscribe,
            brokerId=backup.brokerId,
            epoch=backup.epoch,
            address=f"backup-{backup.brokerId[:8]}:5673",
            holdings=json.dumps(holdingsOf(backup.vhost)).encode("utf-8"),
        ).addBoth(connection.subscribed.append)
        link.start()
        self.links.append(connection)
        if flush:
            connection.flush()
        return connection

    def kill(self, node: HANode) -> None:
        """
        C{node} dies at once, as with SIGKILL: nothing it had not sent yet
        leaves it, its connections drop, its timers stop.
        """
        for link in self.links:
            if link.link.primaryId == node.brokerId:
                transport = link.pump.serverIO
                transport.stream = []
                transport.disconnecting = True
        node.stopService()
        self.flush()

    def flush(self) -> None:
        """
        Flush every connection until none moves a byte.
        """
        while any(link.pump.pump() for link in self.links):
            pass

    def finish(self) -> None:
        """
        Stop every node, cut every connection, and check that no timer is
        left behind.
        """
        for node in self.nodes:
            node.stopService()
        for link in self.links:
            link.cut()
        self.clock.advance(1)
        self.case.assertEqual(self.clock.getDelayedCalls(), [])


def snapshotOf(vhost: VirtualHost) -> dict[str, Any]:
    """
    What a backup must match of a primary: every queue with its uuid and
    its messages (id, body) ready or held; every exchange but the built-in
    ones with its type; every binding of a non-default exchange.
    """
    return {
        "queues": {
            name: (queue.uuid, [(id, body) for id, body, _ in queueContents(queue)])
            for name, queue in vhost.queues.items()
        },
        "exchanges": {
            name: exchange.type
            for name, exchange in vhost.exchanges.items()
            if name and not name.startswith("amq.")
        },
        "bindings": sorted(
            (exchange.name, binding.destination.name, binding.routingKey)
            for exchange in vhost.exchanges.values()
            if exchange is not vhost.defaultExchange
            for binding in exchange.bindings.values()
        ),
    }


class BoxInterceptor:
    """
    Stands between a primary's replication source and the wire: it can
    lose, hold back or repeat the L{Events} boxes the primary sends.

    @ivar plan: what to do with each next box: C{"pass"}, C{"lose"},
        C{"hold"} (send later, with L{release}), C{"copy"} (send, and
        keep a copy to send again with L{release}) or C{"corrupt"} (send
        with a byte of garbage after its events). Boxes beyond the plan
        pass.
    @ivar sent: the sequence numbers of the boxes put on the wire, in order.
    """

    def __init__(self, protocol: NodeAMP, *plan: str) -> None:
        """
        Intercept the L{Events} calls of C{protocol}.
        """
        self.protocol = protocol
        self.original = protocol.callRemote
        self.plan = list(plan)
        self.kept: list[dict[str, Any]] = []
        self.sent: list[int] = []
        self.failures: list[Failure] = []
        protocol.callRemote = self.callRemote  # type: ignore[method-assign,assignment]
        self.originalString = protocol.callRemoteString
        protocol.callRemoteString = self.callRemoteString  # type: ignore[method-assign]

    def callRemoteString(self, command: bytes, requiresAnswer: bool = True, **strings: bytes) -> Any:
        """
        The primary sends L{Events} boxes as strings: decode them and treat
        them as L{callRemote} does.
        """
        if command != Events.commandName:
            return self.originalString(command, requiresAnswer, **strings)
        box = amp.AmpBox({key.encode("ascii"): value for key, value in strings.items()})
        return self.callRemote(Events, **Events.parseArguments(box, self.protocol))

    def callRemote(self, command: type[amp.Command], **arguments: Any) -> Deferred[Any]:
        """
        Send C{command}, or do to an L{Events} box what the plan says.
        """
        if command is not Events or not self.plan:
            if command is Events:
                self.sent.append(arguments["seq"])
            return self.original(command, **arguments)
        action = self.plan.pop(0)
        if action == "lose":
            return Deferred()
        if action == "hold":
            self.kept.append(arguments)
            return Deferred()
        if action == "copy":
            self.kept.append(arguments)
        if action == "corrupt":
            arguments = dict(arguments, events=arguments["events"] + b"Z")
        self.sent.append(arguments["seq"])
        return self.original(command, **arguments)

    def release(self) -> None:
        """
        Send the boxes held back or copied, in the order they came.
        """
        kept, self.kept = self.kept, []
        for arguments in kept:
            self.sent.append(arguments["seq"])
            self.original(Events, **arguments).addErrback(self.failures.append)


class Network:
    """
    Brokers on one L{MemoryReactorClock}: each listens on a fake port, and
    their own code (discovery, promotion, probes) connects to the others
    through fake TCP, completed by L{settle}.

    @ivar paused: ports whose broker is paused (SIGSTOP): connections to
        it are accepted, but no byte moves on them.
    """

    def __init__(self, case: SynchronousTestCase, heartbeat: float = 0.0) -> None:
        """
        @param case: the test, for temporary directories.
        @param heartbeat: C{--ha-heartbeat} of every node.
        """
        self.case = case
        self.reactor = MemoryReactorClock()
        self.completer = iosim.ConnectionCompleter(self.reactor)
        self.heartbeat = heartbeat
        self.pumps: list[iosim.IOPump] = []
        self.nodes: dict[int, HANode] = {}
        self.ports = [5001, 5002, 5003]
        self.paused: set[int] = set()

    def node(self, port: int) -> HANode:
        """
        The broker whose AMP port is C{port}, listening, knowing every
        broker's address; not started.
        """
        options = HAOptions(
            brokers=[f"127.0.0.1:{other}" for other in self.ports],
            heartbeat=self.heartbeat,
            dataDir=self.case.mktemp(),
        )
        options.extra["haAddress"] = f"127.0.0.1:{port}"
        node = HANode(
            options,
            VirtualHost(clock=self.reactor),
            self.reactor,
            FakeAMQP(),
            PersistentState(options.dataDir),
        )
        self.reactor.listenTCP(port, NodeAMPFactory(None, [node.replicationLocator]))
        self.nodes[port] = node
        return node

    def settle(self) -> None:
        """
        Run what is due now, complete every connection attempt (refusing
        those to ports nobody listens on), and move bytes until nothing
        happens any more.
        """
        listening = {entry[0] for entry in self.reactor.tcpServers}
        for _ in range(1000):
            self.reactor.advance(0)
            moved = False
            for index, attempt in enumerate(self.reactor.tcpClients):
                if attempt[1] not in listening:
                    self.reactor.tcpClients.pop(index)
                    connector = self.reactor.connectors.pop(index)
                    attempt[2].clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
                    moved = True
                    break
            if not moved:
                # A paused broker's kernel still accepts connections.
                pump = self.completer.succeedOnce(greet=False)
                if pump is not None:
                    self.pumps.append(pump)
                    moved = True
            for pump in self.pumps:
                if not self.isPaused(pump) and pump.flush():
                    moved = True
            if not moved:
                return
        raise AssertionError("the network never settled")

    def isPaused(self, pump: iosim.IOPump) -> bool:
        """
        Whether either end of C{pump} is a paused broker.
        """
        for protocol in (pump.client, pump.server):
            locators = getattr(getattr(protocol, "locator", None), "locators", [])
            node = next(
                (each.node for each in locators if isinstance(each, ReplicationLocator)), None
            )
            for port in self.paused:
                if self.nodes.get(port) is node:
                    return True
        return False

    def advance(self, seconds: float, step: float = 0.25) -> None:
        """
        Let C{seconds} pass in steps, settling the network at each.
        """
        steps = int(round(seconds / step))
        for _ in range(steps):
            self.reactor.advance(step)
            self.settle()

    def promote(self, node: HANode, force: bool = False) -> Any:
        """
        Ask C{node} to promote itself; the result, or the failure. Time
        passes while it waits for brokers that do not answer (at most ten
        seconds).
        """
        results: list[Any] = []
        ensureDeferred(node.promote(force)).addBoth(results.append)
        self.settle()
        for _ in range(40):
            if results:
                break
            self.advance(0.25)
        [result] = results
        return result

    def finish(self) -> None:
        """
        Stop every broker, let their links close, and check no timer is
        left.
        """
        self.paused.clear()
        for node in self.nodes.values():
            node.stopService()
        self.settle()
        self.reactor.advance(1)
        self.settle()
        self.case.assertEqual(self.reactor.getDelayedCalls(), [])


def asDeferred(method: Callable[..., Awaitable[None]]) -> Callable[..., Deferred[None]]:
    """
    Let trial run an C{async def} test method: it waits for the L{Deferred}.
    """

    @functools.wraps(method)
    def run(*args: Any) -> Deferred[None]:
        return Deferred.fromCoroutine(method(*args))  # type: ignore[arg-type]

    return run


class EtcdContractMixin:
    """
    What every L{IEtcd} must do. A subclass gives L{makeEtcd} and L{within}.
    """

    etcd: IEtcd

    async def makeEtcd(self) -> IEtcd:
        """
        A new, empty etcd to test.
        """
        raise NotImplementedError()

    async def within(self, seconds: float, event: Deferred[Any]) -> Any:
        """
        Wait for C{event} for at most C{seconds} (of the etcd's time).
        """
        raise NotImplementedError()

    def assertEqual(self, first: Any, second: Any, msg: str | None = None) -> None:
        "Provided by the test case."

    def assertTrue(self, value: Any, msg: str | None = None) -> None:
        "Provided by the test case."

    def assertFalse(self, value: Any, msg: str | None = None) -> None:
        "Provided by the test case."

    def assertIsInstance(self, value: Any, kind: Any, msg: str | None = None) -> None:
        "Provided by the test case."

    @asDeferred
    async def test_interface(self) -> None:
        """
        It provides L{IEtcd}, and its watches L{IWatch}.
        """
        etcd = await self.makeEtcd()
        self.assertTrue(verifyObject(IEtcd, etcd))
        watch = etcd.watch(b"/k", False, 0, lambda events, revision: None)
        self.assertTrue(verifyObject(IWatch, watch))
        await self.within(5, watch.started)
        watch.cancel()
        self.assertEqual(await self.within(5, watch.ended), None)

    @asDeferred
    async def test_putRangeDelete(self) -> None:
        """
        Writes raise the revision; a key keeps its create revision and counts
        its versions; a prefix range finds the keys under it in order and
        nothing else; a delete removes them.
        """
        etcd = await self.makeEtcd()
        first = await etcd.put(b"/a/1", b"one")
        second = await etcd.put(b"/a/1", b"uno")
        self.assertEqual(second, first + 1)
        await etcd.put(b"/a/2", b"two")
        await etcd.put(b"/b", b"other")
        found = await etcd.range(b"/a/1")
        [kv] = found.kvs
        self.assertEqual(
            (kv.key, kv.value, kv.createRevision, kv.modRevision, kv.version),
            (b"/a/1", b"uno", first, second, 2),
        )
        prefixed = await etcd.range(b"/a/", prefix=True)
        self.assertEqual([kv.key for kv in prefixed.kvs], [b"/a/1", b"/a/2"])
        self.assertEqual((await etcd.range(b"/none")).kvs, [])
        self.assertEqual(await etcd.delete(b"/a/", prefix=True), 2)
        self.assertEqual((await etcd.range(b"/a/", prefix=True)).kvs, [])
        self.assertEqual(len((await etcd.range(b"/b")).kvs), 1)

    @asDeferred
    async def test_txn(self) -> None:
        """
        A transaction applies its success branch when every comparison
        holds (create revision 0: the key is absent) and its failure branch
        otherwise, whose L{Get}s answer; value, version and mod revision
        comparisons hold as etcd's do.
        """
        etcd = await self.makeEtcd()
        absent = Compare(b"/leader", "CREATE", "EQUAL", 0)
        won = await etcd.txn([absent], [Put(b"/leader", b"me"), Put(b"/epoch", b"1")], [Get(b"/leader")])
        self.assertTrue(won.succeeded)
        self.assertEqual(won.ranges, [])
        lost = await etcd.txn([absent], [Put(b"/leader", b"you")], [Get(b"/leader")])
        self.assertFalse(lost.succeeded)
        [[leader]] = lost.ranges
        self.assertEqual(leader.value, b"me")
        self.assertEqual(leader.modRevision, won.revision)
        both = await etcd.txn(
            [
                Compare(b"/leader", "VALUE", "EQUAL", b"me"),
                Compare(b"/epoch", "MOD", "EQUAL", won.revision),
                Compare(b"/epoch", "VERSION", "EQUAL", 1),
            ],
            [Put(b"/epoch", b"2"), Delete(b"/leader")],
            [],
        )
        self.assertTrue(both.succeeded)
        self.assertEqual(both.revision, won.revision + 1)
        self.assertEqual((await etcd.range(b"/leader")).kvs, [])
        self.assertEqual((await etcd.range(b"/epoch")).kvs[0].value, b"2")
        stale = await etcd.txn([Compare(b"/epoch", "MOD", "EQUAL", won.revision)], [Put(b"/epoch", b"9")], [])
        self.assertFalse(stale.succeeded)
        self.assertEqual((await etcd.range(b"/epoch")).kvs[0].value, b"2")

    @asDeferred
    async def test_leaseKeepaliveRevoke(self) -> None:
        """
        A granted lease answers keepalives with its TTL; revoked, its keys
        are gone, and a keepalive or a put on it says L{LeaseLost}.
        """
        etcd = await self.makeEtcd()
        lease = await etcd.grant(2)
        self.assertEqual(lease.ttl, 2)
        self.assertEqual(await etcd.keepalive(lease.id), 2)
        await etcd.put(b"/member", b"x", lease.id)
        self.assertEqual((await etcd.range(b"/member")).kvs[0].lease, lease.id)
        await etcd.revoke(lease.id)
        self.assertEqual((await etcd.range(b"/member")).kvs, [])
        for call in (lambda: etcd.keepalive(lease.id), lambda: etcd.put(b"/m", b"", lease.id)):
            try:
                await call()
            except LeaseLost:
                pass
            else:
                raise AssertionError("no LeaseLost")

    @asDeferred
    async def test_leaseExpires(self) -> None:
        """
        A lease nobody keeps alive expires after its TTL (2 s, etcd's
        smallest): a watch sees its key deleted, and a keepalive then says
        L{LeaseLost}.
        """
        etcd = await self.makeEtcd()
        lease = await etcd.grant(2)
        await etcd.put(b"/leader", b"me", lease.id)
        deleted: Deferred[Event] = Deferred()

        def seen(events: list[Event], revision: int) -> None:
            for event in events:
                if event.type == "DELETE" and not deleted.called:
                    deleted.callback(event)

        watch = etcd.watch(b"/leader", False, 0, seen)
        await self.within(5, watch.started)
        event = await self.within(10, deleted)
        self.assertEqual(event.kv.key, b"/leader")
        try:
            await etcd.keepalive(lease.id)
        except LeaseLost:
            pass
        else:
            raise AssertionError("no LeaseLost")
        watch.cancel()

    @asDeferred
    async def test_watchEvents(self) -> None:
        """
        A prefix watch sees puts and deletes under the prefix, not beside
        it, with their revisions; one started from an earlier revision sees
        the changes since then first.
        """
        etcd = await self.makeEtcd()
        before = await etcd.put(b"/w/early", b"0")
        seen: list[tuple[str, bytes, bytes, int]] = []
        enough: Deferred[None] = Deferred()

        def record(events: list[Event], revision: int) -> None:
            for e in events:
                seen.append((e.type, e.kv.key, e.kv.value, e.kv.modRevision))
            if len(seen) >= 4 and not enough.called:
                enough.callback(None)

        watch = etcd.watch(b"/w/", True, before, record)
        await self.within(5, watch.started)
        put = await etcd.put(b"/w/a", b"1")
        await etcd.put(b"/x", b"beside")
        await etcd.put(b"/w/b", b"2")
        await etcd.delete(b"/w/a")
        await self.within(5, enough)
        self.assertEqual(
            seen,
            [
                ("PUT", b"/w/early", b"0", before),
                ("PUT", b"/w/a", b"1", put),
                ("PUT", b"/w/b", b"2", put + 2),
                ("DELETE", b"/w/a", b"", put + 3),
            ],
        )
        watch.cancel()
        await self.within(5, watch.ended)
