"""
Tests of the replication protocol between a primary
(L{qha.ha.primary.ReplicationSource}) and a backup
(L{qha.ha.link.BackupLink}), two in-memory nodes of an L{InMemoryCluster}
that talk AMP over L{twisted.test.iosim}.

Nothing here opens a socket or sleeps; each test that uses time ends with
no timer left.
"""

from __future__ import annotations

from typing import Any

from pamqp import commands
from twisted.trial.unittest import SynchronousTestCase

from qha.amqp.holders import Completion
from qha.amqp.protocol import BrokerFactory
from qha.broker.queue import Consumer, Queue
from qha.changes import events as ev
from qha.ha.role import READY
from qha.testing import RecordingTarget
from qha.test.support import ALL, bodies, Client, fastUsers, InMemoryCluster, Link, message, publishBytes, queueContents, snapshotOf


class ReplicationTests(SynchronousTestCase):
    """
    The replication protocol between a primary and a backup node over AMP.
    """

    def setUp(self) -> None:
        """
        A cluster in memory with an active primary and a joining backup.
        """
        self.cluster = InMemoryCluster(self)
        self.primary = self.cluster.primary()
        self.backup = self.cluster.node()

    def publish(self, queue: str, *bodies: bytes) -> Completion | None:
        """
        Publish C{bodies} to C{queue} on the primary as a channel does: route
        and enqueue, then ask the gate what the confirm waits for.
        """
        completion = None
        for body in bodies:
            queues = self.primary.vhost.publish("", queue, message(body, queue))
            completion = self.primary.gate.hold(queues) or completion
        return completion

    def assertReplicated(self) -> None:
        """
        The backup holds what the primary holds, for every replicated
        object.
        """
        self.assertEqual(snapshotOf(self.backup.vhost), snapshotOf(self.primary.vhost))

    def test_catchUp(self) -> None:
        """
        A backup that joins gets every replicated queue, exchange, binding
        and message the primary had, with the same ids, and becomes ready;
        queues with C{configuration} come without messages, and those
        with C{none} not at all.
        """
        vhost = self.primary.vhost
        vhost.declareQueue("all", arguments=ALL)
        vhost.declareQueue("config", arguments={"qpid.replicate": "configuration"})
        vhost.declareQueue("none")
        vhost.declareExchange("events", "topic", arguments=ALL)
        vhost.bindQueue("all", "events", "a.#", {})
        vhost.bindQueue("none", "events", "n.#", {})
        self.publish("all", b"one", b"two", b"three")
        self.publish("config", b"c")
        link = self.cluster.connect(self.primary, self.backup)
        self.assertEqual(link.subscribed, [{"epoch": 1}])
        self.assertEqual(self.backup.role.name, READY)
        self.assertEqual(self.backup.epoch, 1)
        self.assertEqual(sorted(self.backup.vhost.queues), ["all", "config"])
        backupAll = self.backup.vhost.queues["all"]
        self.assertEqual(queueContents(backupAll), [(1, b"one", False), (2, b"two", False), (3, b"three", False)])
        self.assertEqual(backupAll.uuid, vhost.queues["all"].uuid)
        self.assertEqual(queueContents(self.backup.vhost.queues["config"]), [])
        self.assertEqual(snapshotOf(self.backup.vhost)["bindings"], [("events", "all", "a.#")])
        self.assertEqual([source.ready for source in self.primary.sources.values()], [True])
        self.cluster.finish()

    def test_liveStream(self) -> None:
        """
        Once ready, the backup follows declares, publishes, acquisitions
        (marked redelivered on the backup), releases, acknowledgements,
        purges and deletes as they happen.
        """
        link = self.cluster.connect(self.primary, self.backup)
        vhost = self.primary.vhost
        queue = vhost.declareQueue("q", arguments=ALL)
        self.publish("q", b"1", b"2", b"3", b"4", b"5")
        link.flush()
        self.assertReplicated()
        first = queue.get()
        second = queue.get()
        assert first is not None and second is not None
        link.flush()
        replica = self.backup.vhost.queues["q"]
        self.assertEqual(sorted(replica.held), [1, 2])
        self.assertEqual(
            queueContents(replica),
            [(1, b"1", True), (2, b"2", True), (3, b"3", False), (4, b"4", False), (5, b"5", False)],
        )
        queue.settle(first)
        queue.release([second])
        link.flush()
        self.assertEqual(sorted(replica.held), [])
        self.assertEqual([id for id, _, _ in queueContents(replica)], [2, 3, 4, 5])
        self.assertReplicated()
        held = queue.get()
        assert held is not None
        self.assertEqual(held.id, 2)
        vhost.purgeQueue("q")
        link.flush()
        # The purge leaves the message a consumer holds.
        self.assertEqual(queueContents(replica), [(2, b"2", True)])
        self.assertReplicated()
        vhost.deleteQueue("q")
        link.flush()
        self.assertEqual(self.backup.vhost.queues, {})
        self.cluster.finish()

    def test_consumers(self) -> None:
        """
        Messages a consumer holds unacknowledged stay on the backup, marked
        redelivered; those it acknowledges go.
        """
        link = self.cluster.connect(self.primary, self.backup)
        queue = self.primary.vhost.declareQueue("q", arguments=ALL)
        target = RecordingTarget(credit=2)
        queue.addConsumer(Consumer(queue, "c", target))
        self.publish("q", b"a", b"b", b"c")
        link.flush()
        replica = self.backup.vhost.queues["q"]
        self.assertEqual(queueContents(replica), [(1, b"a", True), (2, b"b", True), (3, b"c", False)])
        (_, entry), _ = target.deliveries
        queue.settle(entry)
        link.flush()
        self.assertEqual([id for id, _, _ in queueContents(replica)], [2, 3])
        self.cluster.finish()

    def test_confirmWaitsForBackup(self) -> None:
        """
        A publish to a replicated queue completes only once the backup
        applied the box that carries it; one to an unreplicated queue at
        once.
        """
        link = self.cluster.connect(self.primary, self.backup)
        self.primary.vhost.declareQueue("q", arguments=ALL)
        self.primary.vhost.declareQueue("plain")
        self.assertIsNone(self.publish("plain", b"p"))
        completion = self.publish("q", b"m")
        assert completion is not None
        self.assertFalse(completion.done)
        link.flush()
        self.assertTrue(completion.done)
        self.assertEqual([id for id, _, _ in queueContents(self.backup.vhost.queues["q"])], [1])
        self.cluster.finish()

    def publishingClient(self, boxPublishes: int) -> tuple[Client, Link, Queue]:
        """
        An AMQP client of the primary in confirm mode on channel 1, the
        queue C{q} it publishes to, and the replication link to the backup;
        the primary's boxes carry C{boxPublishes} publishes at most before
        publishers wait.
        """
        link = self.cluster.connect(self.primary, self.backup)
        queue = self.primary.vhost.declareQueue("q", arguments=ALL)
        link.flush()
        self.primary.gate.boxPublishes = boxPublishes
        gate = self.primary.gate
        factory = BrokerFactory(
            self.primary.vhost, fastUsers(), self.cluster.clock, holders=[gate], pacer=gate
        )
        client = Client(factory)
        client.handshake()
        client.openChannel(1)
        client.call(1, commands.Confirm.Select())
        return client, link, queue

    def test_publisherWaitsForFullBox(self) -> None:
        """
        A connection that published a box's worth of replicated messages in
        one read stops there until that box has gone out, then goes on with
        the rest of the read and with what it read meanwhile, in order: the
        backup applies one box while the primary reads the next.
        """
        client, link, queue = self.publishingClient(4)
        before = len(link.boxes)
        client.send(b"".join(publishBytes(1, "", "q", b"%d" % i) for i in range(10)))
        self.assertEqual(queue.messageCount, 4)
        client.send(publishBytes(1, "", "q", b"late"))
        self.assertEqual(queue.messageCount, 4)
        self.assertEqual(client.received(), [])
        link.flush()
        self.assertEqual([len(box) for box in link.boxes[before:]], [4, 4, 3])
        expected = [b"%d" % i for i in range(10)] + [b"late"]
        self.assertEqual([body for _, body, _ in queueContents(queue)], expected)
        self.assertEqual(
            [body for _, body, _ in queueContents(self.backup.vhost.queues["q"])], expected
        )
        acks = [frame for _, frame in client.received()]
        self.assertTrue(all(isinstance(ack, commands.Basic.Ack) for ack in acks))
        self.assertEqual(acks[-1].delivery_tag, 11)
        client.disconnect()
        self.cluster.finish()

    def test_boxBeforeDeliveries(self) -> None:
        """
        The messages of one read reach their consumer only after their box
        has been sent, written to the backup's socket at once; the acquires
        of the delivery then travel as one run in the next box. Without a
        ready backup, messages are delivered as they are enqueued.
        """
        client, link, queue = self.publishingClient(64)
        factory = client.server.factory
        consumer = Client(factory)
        consumer.handshake()
        consumer.openChannel(1)
        consumer.call(1, commands.Basic.Consume(queue="q", consumer_tag="c"))
        written: list[int] = []
        deliveriesAtBox: list[int] = []
        # A socket's transport (iosim's moves bytes only when pumped).
        transport: Any = link.primarySide.transport
        transport.connected = True
        transport.doWrite = lambda: written.append(1)
        send = link.primarySide.callRemoteString

        def callRemoteString(command: bytes, requiresAnswer: bool = True, **strings: bytes) -> Any:
            """
            Note how many frames the consumer had when a box went out.
            """
            deliveriesAtBox.append(len(consumer.transport.value()))
            return send(command, requiresAnswer, **strings)

        link.primarySide.callRemoteString = callRemoteString  # type: ignore[method-assign]
        before = len(link.boxes)
        client.send(b"".join(publishBytes(1, "", "q", b"%d" % i) for i in range(3)))
        self.assertEqual((deliveriesAtBox, written), ([0], [1]))
        self.assertEqual(bodies(consumer.received()), [b"0", b"1", b"2"])
        link.flush()
        self.assertEqual(
            [
                [event[:2] + event[8:] if event[0] == ev.ENQUEUED else event for event in box]
                for box in link.boxes[before:]
            ],
            [[(ev.ENQUEUED, "q", False)] * 3, [(ev.ACQUIRED_RANGE, "q", 1, 3)]],
        )
        self.assertIsNone(self.primary.vhost.undispatched)
        link.cut()
        client.send(publishBytes(1, "", "q", b"alone"))
        self.assertEqual(bodies(consumer.received()), [b"alone"])
        client.disconnect()
        consumer.disconnect()
        self.cluster.finish()

    def test_deliveredWhenReadFails(self) -> None:
        """
        A read that ends in a connection error still sends the box of what
        it enqueued, and still delivers those messages to other
        connections' consumers.
        """
        client, link, queue = self.publishingClient(64)
        consumer = Client(client.server.factory)
        consumer.handshake()
        consumer.openChannel(1)
        consumer.call(1, commands.Basic.Consume(queue="q", consumer_tag="c"))
        before = len(link.boxes)
        garbage = b"\x01\x00\x01\x00\x00\x00\x04abcd\x00"
        client.send(b"".join(publishBytes(1, "", "q", b"%d" % i) for i in range(2)) + garbage)
        self.assertTrue(client.transport.disconnecting)
        self.assertEqual(bodies(consumer.received()), [b"0", b"1"])
        self.assertIsNone(self.primary.vhost.undispatched)
        link.flush()
        self.assertEqual([event[0] for event in link.boxes[before]], [ev.ENQUEUED] * 2)
        consumer.disconnect()
        self.cluster.finish()

    def test_publisherFarAheadFillsLargerBox(self) -> None:
        """
        A connection that has read far more than a box's worth goes on
        until the box holds C{largestBox} publishes, then waits.
        """
        client, link, queue = self.publishingClient(4)
        self.primary.gate.largestBox = 8
        self.primary.gate.farAhead = 0
        client.send(b"".join(publishBytes(1, "", "q", b"%d" % i) for i in range(20)))
        self.assertEqual(queue.messageCount, 8)
        link.flush()
        self.assertEqual(queue.messageCount, 20)
        client.disconnect()
        self.cluster.finish()

    def test_waitingPublisherStopsReading(self) -> None:
        """
        A connection waiting for a box keeps what it reads meanwhile, but
        stops reading once that passes a bound (the box may wait for a
        stalled backup until it is dropped), and reads again once the box
        went out.
        """
        client, link, queue = self.publishingClient(2)
        client.send(b"".join(publishBytes(1, "", "q", b"%d" % i) for i in range(3)))
        self.assertEqual(queue.messageCount, 2)
        self.assertEqual(client.transport.producerState, "producing")
        big = b"".join(publishBytes(1, "", "q", b"x" * 1000) for _ in range(300))
        client.send(big)
        self.assertEqual(client.transport.producerState, "paused")
        self.assertEqual(queue.messageCount, 2)
        link.flush()
        self.assertEqual(client.transport.producerState, "producing")
        self.assertEqual(queue.messageCount, 303)
        client.disconnect()
        self.cluster.finish()

    def test_publisherGoesOnWhenBackupLost(self) -> None:
        """
        A connection waiting for a box goes on when the backup goes away
        (no box will go out to it); its publishes are then confirmed
        without it.
        """
        client, link, queue = self.publishingClient(2)
        client.send(b"".join(publishBytes(1, "", "q", b"%d" % i) for i in range(5)))
        self.assertEqual(queue.messageCount, 2)
        self.cluster.kill(self.backup)
        self.cluster.clock.advance(0)
        self.assertEqual(queue.messageCount, 5)
        acks = [frame for _, frame in client.received()]
        self.assertEqual(acks[-1].delivery_tag, 5)
        client.disconnect()
        self.cluster.finish()

    def test_confirmRuns(self) -> None:
        """
        Publishes to a replicated and an unreplicated queue, mixed in one
        read, are confirmed in order: those after the first replicated one
        wait with it.
        """
        client, link, queue = self.publishingClient(100)
        self.primary.vhost.declareQueue("plain")
        client.send(
            publishBytes(1, "", "plain", b"p1")
            + publishBytes(1, "", "q", b"r1")
            + publishBytes(1, "", "plain", b"p2")
            + publishBytes(1, "", "q", b"r2")
        )
        [(_, ack)] = client.received()
        self.assertEqual((ack.delivery_tag, ack.multiple), (1, False))
        link.flush()
        [(_, ack)] = client.received()
        self.assertEqual((ack.delivery_tag, ack.multiple), (4, True))
        client.disconnect()
        self.cluster.finish()

    def test_batched(self) -> None:
        """
        A thousand publishes of one reactor turn travel in one box; a
        thousand gets and their acknowledgements, in order, in two events.
        """
        link = self.cluster.connect(self.primary, self.backup)
        queue = self.primary.vhost.declareQueue("q", arguments=ALL)
        link.flush()
        before = len(link.boxes)
        completion = self.publish("q", *[b"%d" % i for i in range(1000)])
        link.flush()
        self.assertEqual(len(link.boxes), before + 1)
        self.assertEqual(len(link.boxes[-1]), 1000)
        assert completion is not None
        self.assertTrue(completion.done)
        entries = [queue.get() for _ in range(1000)]
        for entry in entries:
            assert entry is not None
            queue.settle(entry)
        link.flush()
        self.assertEqual(len(link.boxes), before + 2)
        self.assertEqual(
            link.boxes[-1], [(ev.ACQUIRED_RANGE, "q", 1, 1000), (ev.DEQUEUED_RANGE, "q", 1, 1000)]
        )
        self.assertEqual(self.backup.vhost.queues["q"].messageCount, 0)
        self.cluster.finish()

    def test_largeMessage(self) -> None:
        """
        A body of a megabyte, far over an AMP value's 64 KiB, is
        replicated whole.
        """
        link = self.cluster.connect(self.primary, self.backup)
        self.primary.vhost.declareQueue("q", arguments=ALL)
        body = bytes(range(256)) * 4096
        completion = self.publish("q", body)
        link.flush()
        assert completion is not None
        self.assertTrue(completion.done)
        self.assertEqual(queueContents(self.backup.vhost.queues["q"]), [(1, body, False)])
        self.cluster.finish()
