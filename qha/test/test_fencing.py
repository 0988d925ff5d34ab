"""
Tests of fencing by epoch (L{qha.ha.fencing}, L{qha.ha.node}) and of
C{--ha-min-backups}: a backup never applies an older epoch's stream, a
primary that hears of a newer epoch steps down, and an isolated primary
confirms nothing it must not.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import succeed
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from qha.amqp.holders import Completion
from qha.ha.commands import Heartbeat, Hello, StaleEpoch
from qha.ha.connection import NodeAMPFactory
from qha.ha.identity import PersistentState
from qha.ha.role import ACTIVE, JOINING, RECOVERING
from qha.test.support import ALL, InMemoryCluster, message, queueContents


class NewerPrimary(amp.CommandLocator):
    """
    Answers L{Hello} as the active primary C{other} of an epoch.
    """

    def __init__(self, epoch: int) -> None:
        """
        @param epoch: the primary's epoch.
        """
        super().__init__()
        self.epoch = epoch

    @Hello.responder
    def hello(self, brokerId: str, epoch: int, role: str) -> dict[str, Any]:
        """
        Who this primary is.
        """
        return {"brokerId": "other", "epoch": self.epoch, "role": ACTIVE}


class FencingTests(SynchronousTestCase):
    """
    Epochs: a backup never applies an older epoch's stream, and a primary
    that hears of a newer epoch steps down at once.
    """

    def setUp(self) -> None:
        """
        A cluster in memory with an active primary at epoch 1, a joining
        backup, and a replicated queue C{q}.
        """
        self.cluster = InMemoryCluster(self)
        self.primary = self.cluster.primary()
        self.backup = self.cluster.node()
        self.queue = self.primary.vhost.declareQueue("q", arguments=ALL)

    def publish(self, body: bytes) -> Completion | None:
        """
        Publish C{body} to C{q} on the primary as a channel does.
        """
        queues = self.primary.vhost.publish("", "q", message(body, "q"))
        return self.primary.gate.hold(queues)

    def assertSteppedDown(self) -> None:
        """
        The primary is joining again, refuses AMQP clients, and streams to
        nobody.
        """
        self.assertEqual(self.primary.role.name, JOINING)
        self.assertFalse(self.primary.amqp.listening)  # type: ignore[attr-defined]
        self.assertEqual(
            self.primary.amqp.stopped, ["this broker stepped down: a newer primary exists"]  # type: ignore[attr-defined]
        )
        self.assertEqual(self.primary.sources, {})
        self.assertTrue(self.primary.vhost.replica)

    def test_backupAdoptsEpoch(self) -> None:
        """
        A backup following a primary of a newer epoch records that epoch
        durably.
        """
        self.cluster.connect(self.primary, self.backup)
        self.assertEqual(self.backup.epoch, 1)
        self.assertEqual(PersistentState(self.backup.options.dataDir).epoch, 1)
        self.cluster.finish()

    def test_staleStreamRefused(self) -> None:
        """
        A backup that learned of a newer epoch refuses the old primary's
        boxes (L{StaleEpoch}) and applies nothing of them; the old primary
        drops it.
        """
        link = self.cluster.connect(self.primary, self.backup)
        self.backup.state.setEpoch(2)
        self.assertRaises(StaleEpoch, link.link.received, 1, link.link.lastSeq + 1, b"")
        completion = self.publish(b"stale")
        link.flush()
        self.assertEqual(queueContents(self.backup.vhost.queues["q"]), [])
        self.assertEqual(self.primary.sources, {})
        self.assertEqual(self.backup.role.name, JOINING)
        # The old primary's confirm is not held for a backup that refused.
        assert completion is not None
        self.assertTrue(completion.done)
        self.cluster.finish()

    def test_subscribeWithNewerEpoch(self) -> None:
        """
        A backup of a newer epoch subscribing to the old primary is refused
        (L{StaleEpoch}), and the old primary steps down.
        """
        self.backup.state.setEpoch(3)
        # The primary checks the claim (issue 12): a primary of epoch 3 is
        # among its brokers.
        self.primary.options.brokers.append("newer:5673")
        self.patch(
            self.primary, "ask", lambda address: succeed({"brokerId": "newer", "epoch": 3, "role": ACTIVE})
        )
        link = self.cluster.connect(self.primary, self.backup)
        [failure] = link.subscribed
        self.assertIsInstance(failure, Failure)
        failure.trap(StaleEpoch)
        self.assertSteppedDown()
        self.cluster.finish()

    def talk(self, command: type[amp.Command], **arguments: Any) -> list[Any]:
        """
        Send C{command} to the primary over a fresh AMP connection, as
        another broker would (the primary of C{epoch}, answering the
        primary's check of that claim: issue 12); return what came back.
        """
        newer = NewerPrimary(arguments["epoch"])
        client, server, pump = iosim.connectedServerAndClient(
            lambda: NodeAMPFactory(None, [self.primary.replicationLocator]).buildProtocol(None),  # type: ignore[arg-type]
            lambda: amp.AMP(locator=newer),
            clock=self.cluster.clock,
        )
        answers: list[Any] = []
        client.callRemote(command, **arguments).addBoth(answers.append)
        pump.flush()
        assert client.transport is not None
        client.transport.loseConnection()
        pump.flush()
        return answers

    def test_helloSameEpoch(self) -> None:
        """
        A broker saying hello with the primary's own epoch or an older one
        changes nothing.
        """
        for epoch in (0, 1):
            [answer] = self.talk(Hello, brokerId="other", epoch=epoch, role=ACTIVE)
            self.assertEqual(
                {key: answer[key] for key in ("brokerId", "epoch", "role")},
                {"brokerId": self.primary.brokerId, "epoch": 1, "role": ACTIVE},
            )
        self.assertEqual(self.primary.role.name, ACTIVE)
        self.cluster.finish()

    def test_helloNewerEpoch(self) -> None:
        """
        A primary that hears of a newer epoch (a probe's hello from the new
        primary) steps down at once.
        """
        [answer] = self.talk(Hello, brokerId="other", epoch=2, role=ACTIVE)
        self.assertEqual(answer["role"], JOINING)
        self.assertSteppedDown()
        self.cluster.finish()

    def test_heartbeatNewerEpoch(self) -> None:
        """
        A heartbeat carrying a newer epoch makes the primary step down too.
        """
        self.talk(Heartbeat, epoch=2)
        self.assertSteppedDown()
        self.cluster.finish()

    def test_recoveringStepsDown(self) -> None:
        """
        A primary still recovering steps down as well, and what it held
        stays held.
        """
        node = self.cluster.node()
        node.members = [{"id": "gone", "address": "gone:5673"}]
        self.cluster.promote(node)
        self.assertEqual(node.role.name, RECOVERING)
        queue = node.vhost.declareQueue("r", arguments=ALL)
        node.vhost.publish("", "r", message(b"m", "r"))
        completion = node.gate.hold([queue])
        assert completion is not None
        node.heardEpoch(node.epoch + 1, ACTIVE, "other")
        self.assertEqual(node.role.name, JOINING)
        self.assertFalse(completion.done)
        self.assertIsNone(node.role.recovery)
        self.cluster.finish()

    def test_steppedDownConfirmsNothing(self) -> None:
        """
        Publishes that waited for a backup when the primary stepped down are
        never confirmed: no backup of the new primary's cluster has them.
        """
        link = self.cluster.connect(self.primary, self.backup)
        completion = self.publish(b"unconfirmed")
        assert completion is not None
        self.primary.heardEpoch(2, ACTIVE, "newer")
        link.flush()
        self.assertSteppedDown()
        self.assertFalse(completion.done)
        self.cluster.finish()


class MinBackupsTests(SynchronousTestCase):
    """
    C{--ha-min-backups}: a primary confirms only what enough backups hold.
    """

    def test_heldWithoutBackup(self) -> None:
        """
        With C{--ha-min-backups 1}, a publish with no backup connected is
        held; a backup that catches up (and so holds it) completes it.
        """
        cluster = InMemoryCluster(self, minBackups=1)
        primary = cluster.primary()
        queue = primary.vhost.declareQueue("q", arguments=ALL)
        primary.vhost.publish("", "q", message(b"m", "q"))
        completion = primary.gate.hold([queue])
        assert completion is not None
        cluster.clock.advance(60)
        self.assertFalse(completion.done)
        backup = cluster.node()
        cluster.connect(primary, backup)
        self.assertTrue(completion.done)
        self.assertEqual(len(queueContents(backup.vhost.queues["q"])), 1)
        cluster.finish()

    def test_backupLostBeforeAck(self) -> None:
        """
        With C{--ha-min-backups 1}, a publish whose only backup went away
        before acknowledging stays held: an isolated primary confirms
        nothing.
        """
        cluster = InMemoryCluster(self, minBackups=1)
        primary = cluster.primary()
        queue = primary.vhost.declareQueue("q", arguments=ALL)
        link = cluster.connect(primary, cluster.node())
        primary.vhost.publish("", "q", message(b"m", "q"))
        completion = primary.gate.hold([queue])
        assert completion is not None
        cluster.clock.advance(0)  # the box is written, never delivered
        link.cut()
        self.assertFalse(completion.done)
        self.assertIn(completion, primary.gate.waiting)
        cluster.finish()
