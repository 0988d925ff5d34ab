"""
Tests for L{qha.ha.discovery} and the node's promotion checks and probes
(L{qha.ha.fencing}), over the fake TCP of a L{Network}: brokers find the
primary, refuse to promote beside a live one, and leave no timer behind.
"""

from __future__ import annotations

from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from qha.ha.commands import Refused
from qha.ha.role import ACTIVE, JOINING, READY, RECOVERING
from qha.test.support import ALL, message, Network, queueContents


class DiscoveryTests(SynchronousTestCase):
    """
    The node's own discovery, promotion checks and probes, over fake TCP.
    """

    def test_findsPrimary(self) -> None:
        """
        A started broker tries every address (the first refuses), finds
        the primary among them and catches up.
        """
        network = Network(self)
        network.ports = [5009, 5001, 5002]
        primary = network.node(5001)
        backup = network.node(5002)
        primary.startService()
        self.assertEqual(network.promote(primary)["role"], RECOVERING)
        network.settle()
        self.assertEqual(primary.role.name, ACTIVE)
        primary.vhost.declareQueue("q", arguments=ALL)
        primary.vhost.publish("", "q", message(b"m", "q"))
        backup.startService()
        network.settle()
        self.assertEqual(backup.role.name, READY)
        self.assertEqual(queueContents(backup.vhost.queues["q"]), [(1, b"m", False)])
        self.assertEqual(
            [(s.address, s.ready) for s in primary.sources.values()], [("127.0.0.1:5002", True)]
        )
        network.finish()

    def test_rejoinsByItself(self) -> None:
        """
        A backup whose link drops looks for the primary again, resubscribes
        with what it holds and catches up with what it missed.
        """
        network = Network(self)
        primary = network.node(5001)
        backup = network.node(5002)
        primary.startService()
        network.promote(primary)
        queue = primary.vhost.declareQueue("q", arguments=ALL)
        backup.startService()
        network.settle()
        for body in (b"1", b"2", b"3"):
            primary.vhost.publish("", "q", message(body, "q"))
        network.settle()
        link = backup.link
        assert link is not None
        link.close()
        entry = queue.get()
        assert entry is not None
        queue.settle(entry)
        primary.vhost.publish("", "q", message(b"4", "q"))
        network.settle()
        # The search for the primary looks again after its first, short
        # wait (discovery.retryPolicy).
        network.advance(0.25)
        self.assertIsNot(backup.link, link)
        self.assertEqual(backup.role.name, READY)
        self.assertEqual([id for id, _, _ in queueContents(backup.vhost.queues["q"])], [2, 3, 4])
        network.finish()

    def test_joiningRefusedWhileReady(self) -> None:
        """
        A joining broker refuses promotion while a ready backup exists
        (its primary is paused, so it is still ready), naming it; with
        C{force} it is promoted at a higher epoch than any it heard of.
        """
        network = Network(self)
        primary = network.node(5001)
        ready = network.node(5002)
        joining = network.node(5003)
        primary.startService()
        network.promote(primary)
        ready.startService()
        network.settle()
        self.assertEqual(ready.role.name, READY)
        network.paused.add(5001)
        failure = network.promote(joining)
        self.assertIsInstance(failure, Failure)
        failure.trap(Refused)
        self.assertEqual(
            failure.getErrorMessage(),
            "cannot promote this broker: it is joining and 127.0.0.1:5002 is ready; promote that one",
        )
        self.assertEqual(joining.role.name, JOINING)
        self.assertEqual(network.promote(joining, force=True), {"role": RECOVERING, "epoch": 2})
        network.finish()

    def test_primaryRefusesSecondPrimary(self) -> None:
        """
        Promoting a backup while the primary answers is refused, naming the
        primary.
        """
        network = Network(self)
        primary = network.node(5001)
        backup = network.node(5002)
        primary.startService()
        network.promote(primary)
        backup.startService()
        network.settle()
        failure = network.promote(backup)
        failure.trap(Refused)
        self.assertEqual(
            failure.getErrorMessage(),
            "cannot promote this broker: 127.0.0.1:5001 is already the primary (active, epoch 1)",
        )
        network.finish()

    def test_pausedPrimaryStepsDown(self) -> None:
        """
        A primary paused while a backup was promoted in its place learns of
        the newer epoch from its probes when it runs again, stops serving
        clients and follows the new primary as a backup.
        """
        network = Network(self, heartbeat=1.0)
        old = network.node(5001)
        backup = network.node(5002)
        old.startService()
        network.promote(old)
        old.vhost.declareQueue("q", arguments=ALL)
        backup.startService()
        network.settle()
        self.assertEqual(backup.role.name, READY)
        network.paused.add(5001)
        network.advance(2.5)
        self.assertEqual(backup.role.name, JOINING)
        self.assertEqual(network.promote(backup), {"role": RECOVERING, "epoch": 2})
        network.settle()
        self.assertEqual(backup.role.name, ACTIVE)
        backup.vhost.publish("", "q", message(b"after", "q"))
        network.paused.clear()
        network.advance(2)
        self.assertEqual(old.role.name, READY)
        self.assertFalse(old.amqp.listening)  # type: ignore[attr-defined]
        self.assertEqual(old.epoch, 2)
        self.assertEqual([body for _, body, _ in queueContents(old.vhost.queues["q"])], [b"after"])
        network.finish()
