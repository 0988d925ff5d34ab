"""
Tests for L{qha.amqp.holders}: the interfaces through which a channel holds
a publish's confirm (L{IConfirmHolder}) and a connection paces its reads
for replication (L{IReplicationPacer}), the implementations and fakes of
both, and the channel and connection that use them knowing neither the
replication gate nor the store.
"""

from __future__ import annotations

from types import SimpleNamespace

from pamqp import commands
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from qha.amqp.holders import Completion, IConfirmHolder, IReplicationPacer, Waits
from qha.amqp.protocol import BrokerFactory
from qha.broker.message import Message
from qha.broker.queue import Consumer, Entry
from qha.broker.vhost import VirtualHost
from qha.ha.primary import ReplicationGate
from qha.store.journal import MemoryJournal, Store
from qha.test.support import Client, fastUsers, names, publishBytes
from qha.testing import FakeConfirmHolder, FakeReplicationPacer


class InterfaceTests(SynchronousTestCase):
    """
    The real holders and pacer, and their fakes, provide the interfaces.
    """

    def test_fakeConfirmHolder(self) -> None:
        """
        L{FakeConfirmHolder} provides L{IConfirmHolder}.
        """
        self.assertTrue(verifyObject(IConfirmHolder, FakeConfirmHolder()))

    def test_fakeReplicationPacer(self) -> None:
        """
        L{FakeReplicationPacer} provides L{IReplicationPacer}.
        """
        self.assertTrue(verifyObject(IReplicationPacer, FakeReplicationPacer()))

    def test_store(self) -> None:
        """
        The store holds confirms until its record is on disk.
        """
        self.assertTrue(verifyObject(IConfirmHolder, Store(MemoryJournal(), Clock())))

    def test_replicationGate(self) -> None:
        """
        The replication gate holds confirms until the backups have the
        message, and paces the publishing connections.
        """
        options = SimpleNamespace(replicateDefault="none", minBackups=0)
        gate = ReplicationGate(options, Clock())
        self.assertTrue(verifyObject(IConfirmHolder, gate))
        self.assertTrue(verifyObject(IReplicationPacer, gate))


class WaitsTests(SynchronousTestCase):
    """
    L{Waits}: done when every completion it joins is.
    """

    def test_doneWhenEveryPartIs(self) -> None:
        """
        The callback runs as each part is done; L{Waits.done} is true only
        once all are.
        """
        first, second = Completion(0), Completion(0)
        first.holds = second.holds = 1
        waits = Waits(first, second)
        called: list[bool] = []
        waits.addCallback(lambda: called.append(waits.done))
        second.holds = 0
        second.check()
        self.assertEqual(called, [False])
        first.holds = 0
        first.check()
        self.assertEqual(called, [False, True])
        self.assertTrue(waits.done)

    def test_flattened(self) -> None:
        """
        A L{Waits} joined with a third completion is one L{Waits} of the
        three.
        """
        parts = [Completion(0) for _ in range(3)]
        waits = Waits(Waits(parts[0], parts[1]), parts[2])
        self.assertEqual(waits.parts, tuple(parts))


class ChannelHoldersTests(SynchronousTestCase):
    """
    A channel in confirm mode or in a transaction waits for every holder of
    its factory, in order, through L{IConfirmHolder} only.
    """

    def setUp(self) -> None:
        """
        A broker with queue C{q} and two fake holders, and a client with
        channel 1 open.
        """
        self.clock = Clock()
        self.vhost = VirtualHost(clock=self.clock)
        self.vhost.declareQueue("q")
        self.first = FakeConfirmHolder()
        self.second = FakeConfirmHolder()
        self.factory = BrokerFactory(
            self.vhost, fastUsers(), self.clock, holders=[self.first, self.second]
        )
        self.client = Client(self.factory)
        self.addCleanup(self.client.disconnect)
        self.client.handshake()
        self.client.openChannel(1)

    def test_confirmWaitsForEveryHolder(self) -> None:
        """
        A publish is confirmed once both holders let it go, whichever goes
        first; each holder was asked with the queues and the message.
        """
        client = self.client
        client.call(1, commands.Confirm.Select())
        client.send(publishBytes(1, "", "q", b"m"))
        self.assertEqual(client.received(), [])
        self.assertEqual([queues for queues, _ in self.first.held], [["q"]])
        self.assertEqual([message.body for _, message in self.second.held], [b"m"])
        self.second.release()
        self.assertEqual(client.received(), [])
        self.first.release()
        [(_, ack)] = client.received()
        self.assertEqual((ack.delivery_tag, ack.multiple), (1, False))

    def test_publishesOfATurnShareTheirWaits(self) -> None:
        """
        The publishes held by the same completions share one L{Waits}, and
        are confirmed by one basic.ack.
        """
        client = self.client
        client.call(1, commands.Confirm.Select())
        client.send(b"".join(publishBytes(1, "", "q", b"%d" % i) for i in range(3)))
        channel = client.server.channels[1]
        self.assertEqual(len(channel.pendingConfirms), 1)
        [(waits, first, last)] = channel.pendingConfirms
        self.assertIsInstance(waits, Waits)
        self.assertEqual((first, last), (1, 3))
        self.first.release()
        self.second.release()
        [(_, ack)] = client.received()
        self.assertEqual((ack.delivery_tag, ack.multiple), (3, True))

    def test_holderThatDoesNotHold(self) -> None:
        """
        A holder that answers L{None} does not delay the confirm; the other
        holder's completion alone is waited for.
        """
        self.first.holding = False
        client = self.client
        client.call(1, commands.Confirm.Select())
        client.send(publishBytes(1, "", "q", b"m"))
        self.assertEqual(client.received(), [])
        self.assertIs(client.server.channels[1].pendingConfirms[0][0], self.second.current)
        self.second.release()
        [(_, ack)] = client.received()
        self.assertEqual(ack.delivery_tag, 1)

    def test_noHolder(self) -> None:
        """
        A factory without holders confirms at once.
        """
        factory = BrokerFactory(self.vhost, fastUsers(), self.clock)
        client = Client(factory)
        self.addCleanup(client.disconnect)
        client.handshake()
        client.openChannel(1)
        client.call(1, commands.Confirm.Select())
        client.send(publishBytes(1, "", "q", b"m"))
        [(_, ack)] = client.received()
        self.assertEqual(ack.delivery_tag, 1)

    def test_commitWaitsForEveryHolder(self) -> None:
        """
        tx.commit-ok goes once every holder let the transaction's publishes
        go.
        """
        client = self.client
        client.call(1, commands.Tx.Select())
        client.send(publishBytes(1, "", "q", b"m"))
        self.assertEqual(client.call(1, commands.Tx.Commit()), [])
        self.first.release()
        self.assertEqual(client.received(), [])
        self.second.release()
        self.assertEqual(names(client.received()), [(1, "Tx.CommitOk")])

    def test_unroutableAsksNoHolder(self) -> None:
        """
        A publish no queue takes is confirmed at once, without asking the
        holders.
        """
        client = self.client
        client.call(1, commands.Confirm.Select())
        client.send(publishBytes(1, "amq.direct", "nowhere", b"lost"))
        [(_, ack)] = client.received()
        self.assertEqual(ack.delivery_tag, 1)
        self.assertEqual((self.first.held, self.second.held), ([], []))


class ConnectionPacerTests(SynchronousTestCase):
    """
    A connection paces its reads through its factory's
    L{IReplicationPacer}: it sends the box before delivering a read's
    messages, and stops at a full box until it has gone out.
    """

    def setUp(self) -> None:
        """
        A broker with queue C{q} and a fake pacer, and a client in confirm
        mode on channel 1.
        """
        self.clock = Clock()
        self.vhost = VirtualHost(clock=self.clock)
        self.queue = self.vhost.declareQueue("q")
        self.pacer = FakeReplicationPacer()
        self.factory = BrokerFactory(self.vhost, fastUsers(), self.clock, pacer=self.pacer)
        self.client = Client(self.factory)
        self.addCleanup(self.client.disconnect)
        self.client.handshake()
        self.client.openChannel(1)
        self.client.call(1, commands.Confirm.Select())

    def test_sendsBeforeDelivering(self) -> None:
        """
        The messages of one read go to a consumer after the pacer was told
        to send the read's box.
        """
        consumer = Client(self.factory)
        self.addCleanup(consumer.disconnect)
        consumer.handshake()
        consumer.openChannel(1)
        consumer.call(1, commands.Basic.Consume(queue="q", consumer_tag="c"))
        sentWhenDelivered: list[int] = []
        channel = consumer.server.channels[1]
        deliver = channel.deliver

        def recordingDeliver(consumer: Consumer, entry: Entry) -> None:
            sentWhenDelivered.append(self.pacer.sent)
            deliver(consumer, entry)

        channel.deliver = recordingDeliver  # type: ignore[method-assign]
        self.client.send(b"".join(publishBytes(1, "", "q", b"%d" % i) for i in range(2)))
        self.assertEqual(sentWhenDelivered, [1, 1])

    def test_noSourcesNoPacing(self) -> None:
        """
        Without sources, the pacer is not asked to send.
        """
        self.pacer.sources.clear()
        self.client.send(publishBytes(1, "", "q", b"m"))
        self.assertEqual(self.pacer.sent, 0)
        self.assertEqual(self.queue.messageCount, 1)

    def test_waitsForFullBox(self) -> None:
        """
        Once the pacer says the box is full, the connection stops after the
        message it just read, and goes on with the rest once the box went
        out.
        """
        self.pacer.full = True
        self.client.send(b"".join(publishBytes(1, "", "q", b"%d" % i) for i in range(3)))
        self.assertEqual(self.queue.messageCount, 1)
        self.assertEqual(len(self.pacer.waiting), 1)
        self.assertTrue(self.pacer.asked[0] > 0)
        self.pacer.boxSent()
        self.assertEqual(self.queue.messageCount, 3)
        acks = [frame for _, frame in self.client.received()]
        self.assertEqual(acks[-1].delivery_tag, 3)


class AttachingSource:
    """
    A ready backup's source as the gate sees it: completions are attached
    to it.
    """

    def attach(self, completion: Completion) -> None:
        """
        Take C{completion} (it waits for this backup).
        """


class GateResetTests(SynchronousTestCase):
    """
    L{ReplicationGate.reset}, for a primary that steps down: what it held is
    never confirmed, and it starts again with no backups.
    """

    def test_forgetsWithoutConfirming(self) -> None:
        """
        A completion held for a backup stays undone after the reset, also
        when that backup is then lost; later publishes wait on a new one.
        """
        vhost = VirtualHost()
        queue = vhost.declareQueue("r", arguments={"qpid.replicate": "all"})
        options = SimpleNamespace(replicateDefault="none", minBackups=0)
        clock = Clock()
        gate = ReplicationGate(options, clock)
        source = AttachingSource()
        gate.sources.add(source)  # type: ignore[arg-type]
        message = Message(b"", b"", b"m")
        held = gate.hold([queue], message)
        assert held is not None
        resumed: list[bool] = []
        gate.whenSent(lambda: resumed.append(True))
        gate.reset()
        gate.backupLost(source)  # type: ignore[arg-type]
        self.assertFalse(held.done)
        self.assertEqual((gate.sources, gate.waiting, gate.full), (set(), set(), False))
        self.assertIsNone(gate.hold([queue], message))
        clock.advance(0)
        self.assertEqual(resumed, [True])
