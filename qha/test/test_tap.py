"""
Tests of L{qha.tap}: every option error says what is wrong in one line
(L{usage.UsageError}), and L{qha.tap.makeService} wires the services a
standalone broker and a cluster broker run, on a memory reactor.
"""

from __future__ import annotations

import threading
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from qha.amqp.protocol import BrokerFactory
from qha.ha.connection import NodeAMPFactory
from qha.ha.node import HANode
from qha.ha.role import JOINING, STANDALONE
from qha.amqp.users import FailedLogins, ReloadOnSignal, ThreadPoolVerifier
from qha.collector import CollectorPolicy
from qha.datadir import DataDirectoryLock
from qha.tap import (
    ClientPort,
    ListenService,
    Options,
    StoreService,
    makeService,
    messagesHeld,
    storeThread,
)


def parse(*argv: str) -> Options:
    """
    Options parsed from C{argv}, raising L{usage.UsageError} rather than
    exiting.
    """
    options = Options()
    options.exitOnError = False
    options.parseOptions(list(argv))
    return options


class OptionErrorTests(SynchronousTestCase):
    """
    Each option error names the option and what it accepts.
    """

    def assertUsageError(self, message: str, *argv: str) -> None:
        """
        Parsing C{argv} fails with C{message}.
        """
        error = self.assertRaises(usage.UsageError, parse, *argv)
        self.assertEqual(str(error), message)

    def test_watermark(self) -> None:
        """
        A watermark that is neither a fraction nor a size.
        """
        self.assertUsageError(
            "--memory-high-watermark: 'lots' is neither a fraction of memory between 0"
            " and 1 (0.4) nor a size (512MiB, 2GB, 100000000)",
            "--memory-high-watermark",
            "lots",
        )

    def test_replicate(self) -> None:
        """
        An unknown replication level.
        """
        self.assertUsageError(
            "--ha-replicate must be one of none, configuration, all, not 'some'",
            "--ha-replicate",
            "some",
        )

    def test_store(self) -> None:
        """
        An unknown store.
        """
        self.assertUsageError(
            "--store must be journal or memory, not 'disk'", "--store", "disk"
        )

    def test_yesNo(self) -> None:
        """
        C{--ha-cluster} and C{--ha-queue-replication} take yes or no.
        """
        self.assertUsageError("--ha-cluster must be yes or no, not 'maybe'", "--ha-cluster", "maybe")
        self.assertUsageError(
            "--ha-queue-replication must be yes or no, not 'on'", "--ha-queue-replication", "on"
        )

    def test_mechanism(self) -> None:
        """
        Only PLAIN.
        """
        self.assertUsageError(
            "--ha-mechanism 'SCRAM' is not supported; use PLAIN", "--ha-mechanism", "SCRAM"
        )

    def test_credentialsTogether(self) -> None:
        """
        A username without a password (or the reverse).
        """
        self.assertUsageError(
            "--ha-username and --ha-password go together", "--ha-username", "qha"
        )
        self.assertUsageError(
            "--ha-username and --ha-password go together", "--ha-password", "secret"
        )

    def test_negativeTimes(self) -> None:
        """
        Negative timeouts and heartbeats.
        """
        self.assertUsageError(
            "--ha-backup-timeout must be 0 or more, not -1.0", "--ha-backup-timeout", "-1"
        )
        self.assertUsageError("--ha-heartbeat must be 0 or more, not -2.0", "--ha-heartbeat", "-2")

    def test_clusterNeedsBrokers(self) -> None:
        """
        A cluster broker must know every broker's address, or etcd.
        """
        self.assertUsageError(
            "--ha-cluster yes needs --ha-brokers, every broker's AMP address"
            " (host:port,host:port), or --ha-coordinator",
            "--ha-cluster",
            "yes",
        )

    def test_coordinatorErrors(self) -> None:
        """
        C{--ha-coordinator} and its companions: each mistake named.
        """
        etcd = ("--ha-cluster", "yes", "--ha-coordinator", "etcd:http://127.0.0.1:2379")
        self.assertUsageError(
            "--ha-coordinator needs --ha-cluster yes",
            "--ha-coordinator",
            "etcd:http://127.0.0.1:2379",
        )
        self.assertUsageError(
            "coordinator 'zk:http://h:1': expected etcd:http://HOST:PORT[,http://HOST:PORT...]",
            "--ha-cluster",
            "yes",
            "--ha-coordinator",
            "zk:http://h:1",
        )
        self.assertUsageError(
            "--ha-lease-ttl must be at least 2 (etcd's smallest lease), not 1",
            *etcd,
            "--ha-lease-ttl",
            "1",
        )
        self.assertUsageError(
            "cluster name 'a/b': must be non-empty and without '/'",
            *etcd,
            "--ha-cluster-name",
            "a/b",
        )
        self.assertUsageError(
            "--ha-coordinator-cert and --ha-coordinator-key go together",
            *etcd,
            "--ha-coordinator-cert",
            "c.pem",
        )
        self.assertUsageError(
            "https:// etcd endpoints need --ha-coordinator-ca",
            "--ha-cluster",
            "yes",
            "--ha-coordinator",
            "etcd:https://127.0.0.1:2379",
        )

    def test_coordinatorWithoutBrokers(self) -> None:
        """
        With a coordinator, C{--ha-brokers} is optional: the members find
        each other through etcd.
        """
        options = Options()
        options.exitOnError = False
        options.parseOptions(
            ["--ha-cluster", "yes", "--ha-coordinator", "etcd:http://127.0.0.1:2379,http://h2"]
        )
        self.assertEqual(options["brokers"], [])
        self.assertEqual(
            options["coordinator"], ["http://127.0.0.1:2379", "http://h2:2379"]
        )

    def test_badBrokers(self) -> None:
        """
        A broker address without a port.
        """
        self.assertUsageError(
            "--ha-brokers: 'node1' in 'node1' is not host:port (e.g. node1:5673 or"
            " amqp:tcp:node1:5673,tcp:node2:5673)",
            "--ha-cluster",
            "yes",
            "--ha-brokers",
            "node1",
        )

    def test_usersFile(self) -> None:
        """
        A users file that cannot be read.
        """
        error = self.assertRaises(usage.UsageError, parse, "--users", self.mktemp())
        self.assertIn("users", str(error))

    def test_port(self) -> None:
        """
        An AMQP endpoint that is not one.
        """
        error = self.assertRaises(usage.UsageError, parse, "--port", "nonsense:1")
        self.assertTrue(str(error).startswith("--port: 'nonsense:1' is not a valid endpoint ("))
        self.assertTrue(str(error).endswith("; use e.g. tcp:5672:interface=127.0.0.1"))

    def test_wholeNumbers(self) -> None:
        """
        Whole-number options refuse words and out-of-range numbers.
        """
        error = self.assertRaises(usage.UsageError, parse, "--heartbeat", "often")
        self.assertIn("--heartbeat must be a whole number, not 'often'", str(error))
        error = self.assertRaises(usage.UsageError, parse, "--frame-max", "10")
        self.assertIn("--frame-max must be between 4096 and 1048576, not 10", str(error))

    def test_exitsWithOneLine(self) -> None:
        """
        As twistd parses them, an error exits with status 1.
        """
        options = Options()
        error = self.assertRaises(SystemExit, options.parseOptions, ["--store", "disk"])
        self.assertEqual(error.code, 1)


class ServiceWiringTests(SynchronousTestCase):
    """
    L{makeService} on a memory reactor: which services, listening where.
    """

    def services(self, *argv: str) -> tuple[MemoryReactorClock, MultiService]:
        """
        The broker's services for C{argv} (with a memory store in a
        temporary directory), started on a memory reactor, and stopped at
        the end of the test.
        """
        reactor = MemoryReactorClock()
        config = parse("--store", "memory", "--data-dir", self.mktemp(), *argv)
        service = makeService(config, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        return reactor, service

    def children(self, service: MultiService) -> list[Any]:
        """
        The child services, in order.
        """
        return [IService(child) for child in service]

    def test_standalone(self) -> None:
        """
        A standalone broker listens for AMQP clients at once, and for AMP
        (admin) on its C{--ha-port}; its node is standalone and has the
        store.
        """
        reactor, service = self.services("--port", "tcp:5999", "--ha-port", "tcp:5998")
        kinds = [type(child) for child in self.children(service)]
        self.assertEqual(
            kinds,
            [DataDirectoryLock, FailedLogins]
            + [ListenService, StoreService, HANode, ListenService, ListenService]
            + [ThreadPoolVerifier, ReloadOnSignal, CollectorPolicy],
        )
        ports = {port: factory for port, factory, _, _ in reactor.tcpServers}
        self.assertIsInstance(ports[5999], BrokerFactory)
        self.assertIsInstance(ports[5998], NodeAMPFactory)
        node = self.children(service)[4]
        self.assertEqual(node.role.name, STANDALONE)
        self.assertIsNotNone(node.store)

    def test_cluster(self) -> None:
        """
        A cluster broker does not listen for AMQP clients until it is the
        primary; it listens for AMP, joins, and looks for the primary at
        the brokers it was given.
        """
        reactor, service = self.services(
            "--port",
            "tcp:5999",
            "--ha-port",
            "tcp:5998",
            "--ha-cluster",
            "yes",
            "--ha-brokers",
            "127.0.0.1:5998,127.0.0.1:5997",
        )
        kinds = [type(child) for child in self.children(service)]
        self.assertEqual(
            kinds,
            [DataDirectoryLock, FailedLogins]
            + [ClientPort, StoreService, HANode, ListenService, ListenService]
            + [ThreadPoolVerifier, ReloadOnSignal, CollectorPolicy],
        )
        self.assertEqual([port for port, _, _, _ in reactor.tcpServers], [5998, 15672])
        node = self.children(service)[4]
        self.assertEqual(node.role.name, JOINING)
        self.assertEqual([(host, port) for host, port, *_ in reactor.tcpClients], [("127.0.0.1", 5998)])
        node.role.promote()
        self.assertEqual([port for port, _, _, _ in reactor.tcpServers], [5998, 15672, 5999])

    def test_httpPort(self) -> None:
        """
        The HTTP port (management API, health checks) listens on
        C{--http-port}, by default 15672 on loopback; C{none} turns it off.
        """
        from twisted.web.server import Site

        reactor, service = self.services("--port", "tcp:5999", "--ha-port", "tcp:5998")
        ports = {port: (factory, interface) for port, factory, _, interface in reactor.tcpServers}
        self.assertIsInstance(ports[15672][0], Site)
        self.assertEqual(ports[15672][1], "127.0.0.1")
        reactor, service = self.services(
            "--port", "tcp:5999", "--ha-port", "tcp:5998", "--http-port", "tcp:8080"
        )
        self.assertIn(8080, [port for port, _, _, _ in reactor.tcpServers])
        reactor, service = self.services(
            "--port", "tcp:5999", "--ha-port", "tcp:5998", "--http-port", "none"
        )
        self.assertEqual(sorted(port for port, _, _, _ in reactor.tcpServers), [5998, 5999])

    def test_badHTTPPort(self) -> None:
        """
        An C{--http-port} that is not an endpoint is a usage error naming it.
        """
        options = Options()
        options.exitOnError = False
        error = self.assertRaises(
            usage.UsageError,
            options.parseOptions,
            ["--data-dir", self.mktemp(), "--http-port", "nonsense:1"],
        )
        self.assertIn("--http-port", str(error))

    def test_portInUse(self) -> None:
        """
        A port that cannot be had at start-up stops the start with status
        1 (and one line on standard error), not a traceback.
        """
        from twisted.internet.error import CannotListenError

        class Refusing(MemoryReactorClock):
            """
            A reactor whose ports are all taken.
            """

            def listenTCP(self, port: int, *args: Any, **kwargs: Any) -> Any:
                """
                Refuse.
                """
                raise CannotListenError("127.0.0.1", port, OSError("address already in use"))

        config = parse("--store", "memory", "--data-dir", self.mktemp(), "--port", "tcp:5999")
        service = makeService(config, Refusing())
        error = self.assertRaises(SystemExit, service.startService)
        self.assertEqual(error.code, 1)
        # twistd exits here: it never stops a service that did not start.


class ThreadRecordingReactor(MemoryReactorClock):
    """
    A memory reactor that also takes calls from threads (kept until the
    test runs them, as the reactor thread would).
    """

    def __init__(self) -> None:
        """
        No call from a thread yet.
        """
        super().__init__()
        self.fromThreads: list[Any] = []
        self.arrived = threading.Event()

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:
        """
        Keep the call for the test, and say one came.
        """
        self.fromThreads.append((f, args, kwargs))
        self.arrived.set()


class StoreThreadTests(SynchronousTestCase):
    """
    L{storeThread}: the store's thread starts when the reactor runs, not
    when the service is made, because twistd forks to daemonize in between
    and a thread does not survive a fork.
    """

    def test_startsWhenRunning(self) -> None:
        """
        Made, the pool has no thread and runs nothing; once the reactor
        runs, a write handed over before runs in the store's thread, and
        its result comes back through C{callFromThread}. The reactor's
        shutdown stops the pool.
        """
        reactor = ThreadRecordingReactor()
        threads = set(threading.enumerate())
        write = storeThread(reactor)
        ran: list[str] = []
        d = write(lambda: ran.append(threading.current_thread().name))
        results: list[Any] = []
        d.addBoth(results.append)
        self.assertEqual(set(threading.enumerate()) - threads, set())
        self.assertEqual(ran, [])
        self.assertEqual(len(reactor.whenRunningHooks), 1)
        [(start, args, kwargs)] = reactor.whenRunningHooks
        start(*args, **kwargs)
        try:
            self.assertTrue(reactor.arrived.wait(10), "the write never ran")
            [(f, args, kwargs)] = reactor.fromThreads
            f(*args, **kwargs)
            self.assertEqual(results, [None])
            self.assertEqual(len(ran), 1)
            self.assertIn("qha-store", ran[0])
        finally:
            for stop, args, kwargs in reactor.triggers["after"]["shutdown"]:
                stop(*args, **kwargs)
        self.assertEqual(
            [t for t in threading.enumerate() if "qha-store" in t.name], []
        )


class MessagesHeldTests(SynchronousTestCase):
    """
    Tests for L{messagesHeld}, the collector policy's estimate.
    """

    def test_readyAndHeld(self) -> None:
        """
        Ready and unacknowledged messages of every vhost's queues count.
        """
        from qha.broker.message import Message
        from qha.broker.vhost import VirtualHost
        from qha.broker.vhosts import VirtualHosts

        vhost = VirtualHost()
        other = VirtualHosts.of(vhost).ensure("other")
        for each in (vhost, other):
            each.declareQueue("q")
            for _ in range(3):
                each.publish("", "q", Message(b"\x00\x01q", b"\x00<\x00\x00" + bytes(10), b""))
        entry = vhost.queues["q"].get()
        self.assertIsNotNone(entry)
        self.assertEqual(messagesHeld(VirtualHosts.of(vhost)), 6)
