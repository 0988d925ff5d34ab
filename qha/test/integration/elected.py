"""
Brokers that etcd coordinates, for the tests of automatic failover
(test_autofailover, test_haproxy, test_soak_coordinated): each test built
the same L{Cluster} with the same coordinator options, asked each broker
its role the same way and waited for an active primary the same way.

Every wait is bounded and polls a state, waiting for a broker to log
something between two looks; nothing sleeps.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.trial.unittest import SynchronousTestCase

from .brokerprocess import waitUntil
from .cluster import Cluster, RemoteAMPError

__all__ = ["TTL", "WAIT", "ElectedCluster"]

TTL = 2
"""
C{--ha-lease-ttl} of every broker: etcd's smallest lease.
"""

WAIT = 20.0
"""
Seconds any one wait of these tests may take before it fails.
"""


class ElectedCluster:
    """
    Brokers started with C{--ha-coordinator} on one etcd and
    C{--ha-lease-ttl} L{TTL}, replicating everything, with a backup
    timeout of one second: etcd's election picks the primary, nobody
    promotes. Not started yet; the test's cleanup stops them.

    @ivar case: the test.
    @ivar cluster: the brokers.
    """

    def __init__(
        self, case: SynchronousTestCase, etcdURL: str, name: str | None = None, size: int = 3
    ) -> None:
        """
        @param case: the test.
        @param etcdURL: the client URL of the etcd that coordinates them.
        @param name: the cluster's name in etcd (C{--ha-cluster-name}),
            for tests that share one etcd; the broker's default otherwise.
        @param size: how many brokers.
        """
        arguments = ["--ha-coordinator", f"etcd:{etcdURL}"]
        if name is not None:
            arguments += ["--ha-cluster-name", name]
        arguments += [
            "--ha-lease-ttl",
            str(TTL),
            "--ha-replicate",
            "all",
            "--ha-backup-timeout",
            "1",
        ]
        self.case = case
        self.cluster = Cluster(size, arguments=arguments)
        case.addCleanup(self.cluster.stop)

    def roles(self, indexes: list[int] | None = None) -> dict[int, str]:
        """
        The role of each running broker of C{indexes} (every one by
        default; C{"?"} when it does not answer within half a second).
        """
        found = {}
        for index in range(len(self.cluster)) if indexes is None else indexes:
            try:
                found[index] = self.cluster.role(index, timeout=0.5)
            except (OSError, RemoteAMPError):
                found[index] = "?"
        return found

    def active(self, among: list[int] | None = None) -> int | None:
        """
        The broker of C{among} (every one by default) that is the active
        primary, if one is; the others are not asked once one answers.
        """
        for index in range(len(self.cluster)) if among is None else among:
            if self.roles([index])[index] == "active":
                return index
        return None

    def explain(self) -> str:
        """
        What to add to the message of a wait that timed out, to explain
        it: nothing here.
        """
        return ""

    def waitUntil(self, check: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
        """
        Call C{check} until it answers something true, waiting for a broker
        to log something between two calls.

        @raise AssertionError: after C{timeout} seconds, with L{explain}.
        """
        return waitUntil(
            check, self.cluster.brokers[0].waitForOutput, timeout, what, step=0.05, explain=self.explain
        )

    def waitForPrimary(self, among: list[int] | None = None, timeout: float = WAIT) -> int:
        """
        Wait until one of C{among} (every broker by default) is the active
        primary, and return its index.
        """

        def found() -> int | None:
            index = self.active(among)
            return None if index is None else index + 1

        return int(self.waitUntil(found, "an active primary", timeout)) - 1
