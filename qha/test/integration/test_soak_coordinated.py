"""
The coordinated failover soak (issue 11): three brokers and one etcd with
C{--ha-lease-ttl 2}, three confirmed publishers and two consumers; the
primary is killed with SIGKILL ten times and nobody promotes: etcd's
election picks the next primary. The killed broker is restarted each round
and rejoins as a backup.

C{make test} skips it; C{make soak} runs it (C{QHA_SOAK=1}). It prints lost
(confirmed, never delivered), unexpected (delivered, never published),
duplicated, the longest gap in confirmed publishing, and each round's
failover time: from the kill to the first confirm from the new primary.
Lost and unexpected must be zero.
"""

from __future__ import annotations

import os
import time

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from .elected import TTL, ElectedCluster
from .etcdprocess import BlockingEtcd
from .loadclients import QUEUE, SoakLoad, TimedPublisher, failoverFigures

ROUNDS = int(os.environ.get("QHA_SOAK_ROUNDS", "10"))


class CoordinatedSoakTests(SynchronousTestCase):
    """
    Kill the primary ten times under confirmed load, with etcd choosing the
    next; lose nothing.
    """

    def test_soak(self) -> None:
        """
        Confirmed messages all arrive across ten SIGKILL failovers that
        nobody promotes, and nothing arrives that was not published.
        """
        if not os.environ.get("QHA_SOAK"):
            raise SkipTest("the soak test runs with `make soak` (QHA_SOAK=1)")
        etcd = BlockingEtcd()
        etcd.start()
        self.addCleanup(etcd.stop)
        elected = ElectedCluster(self, etcd.url)
        cluster = elected.cluster
        cluster.start()
        deadline = time.monotonic() + 30
        primary = None
        while primary is None:
            self.assertLess(time.monotonic(), deadline, "no primary elected")
            primary = elected.active([0, 1, 2])
            if primary is None:
                cluster.brokers[0].waitForOutput(0.1)
        cluster.waitForBackups(primary, 2, timeout=30)
        setup = cluster.connect(primary)
        setup.channel().queue_declare(QUEUE, durable=True)
        setup.close()

        load = SoakLoad(cluster, TimedPublisher)
        load.start()

        failovers: list[float] = []
        started = time.monotonic()
        for round in range(ROUNDS):
            cluster.waitForBackups(primary, 2, timeout=30)
            load.waitForProgress(self, cluster.brokers[primary])
            cluster.kill(primary)
            killedAt = time.monotonic()
            others = [i for i in range(3) if i != primary]
            ports = {cluster.brokers[i].port for i in others}
            # Nobody promotes: wait for a confirm from another broker.
            deadline = killedAt + 30
            while True:
                firsts = [t for p in load.publishers for port in ports for t in p.confirmedSince(killedAt, port)]
                if firsts:
                    failovers.append(min(firsts) - killedAt)
                    break
                self.assertLess(time.monotonic(), deadline, f"round {round}: no new primary confirmed")
                cluster.brokers[others[0]].waitForOutput(0.05)
            newPrimary = elected.active(others)
            self.assertIsNotNone(newPrimary, f"round {round}: confirms but no active primary")
            assert newPrimary is not None
            print(f"round {round}: broker {primary} killed, broker {newPrimary} confirms"
                  f" after {failovers[-1]:.2f} s")
            cluster.restart(primary)
            primary = newPrimary
        cluster.waitForBackups(primary, 2, timeout=30)

        tally = load.drain(cluster.brokers[primary])
        report = (
            f"coordinated soak: {ROUNDS} failovers in {time.monotonic() - started:.1f} s,"
            f" {tally.summary()}, longest publish gap {load.longestGap():.2f} s;"
            f" failover (kill -9 to first confirm on the new primary, TTL {TTL}):"
            f" {failoverFigures(failovers)}"
        )
        print("\n" + report)
        self.assertEqual(
            (len(tally.lost), len(tally.unexpected)), (0, 0), report + f" lost: {sorted(tally.lost)[:10]}"
        )
