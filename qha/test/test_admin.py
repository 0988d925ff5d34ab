"""
Tests for L{qha.admin.cli}, the C{qha-admin} command line (C{primary}
included, against a fake etcd).

Most tests are synchronous: the command line is parsed for real, and the
commands run against real L{HANode}s whose AMP side is connected to the
command's client in memory with L{connectedServerAndClient}; a L{Clock}
stands in for the reactor, so timeouts are tested by moving it. The
end-to-end tests, which run the real C{qha-admin} in a child process
against a real C{twistd qha}, are in L{qha.test.integration.test_admin}.
"""

from __future__ import annotations

import io
import json
import sys

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionRefusedError, DNSLookupError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols import amp
from twisted.test.iosim import IOPump, connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from qha.admin.cli import (
    AdminError,
    clusterAddresses,
    describeError,
    formatBindings,
    formatExchanges,
    formatQuery,
    formatQueues,
    formatTable,
    parseArguments,
    run,
)
from qha.admin.commands import Refused
from qha.broker.message import Message
from qha.broker.queue import Consumer
from qha.broker.vhost import VirtualHost
from qha.ha.commands import NotAuthenticated
from qha.admin.locator import adminLocator
from qha.ha.config import HELLO_TIMEOUT, HAOptions
from qha.ha.connection import NodeAMP, NodeAMPFactory
from qha.ha.identity import PersistentState
from qha.ha.coordinator import LeaderInfo
from qha.ha.node import HANode
from qha.test.support import FakeAMQP
from qha.testing import FakeEtcd, RecordingTarget


class AdminTestCase(SynchronousTestCase):
    """
    Runs C{qha-admin} commands against in-memory brokers.

    @ivar clock: the reactor of the nodes and of the command.
    @ivar nodes: the brokers a command can reach, by address.
    @ivar pumps: the in-memory connections the commands opened.
    @ivar silent: addresses whose broker accepts connections but never
        answers.
    @ivar silentTransports: the transports of the connections to them.
    """

    def setUp(self) -> None:
        """
        No brokers yet; every node is stopped at the end, and nothing may
        be left scheduled on the clock.
        """
        self.clock = Clock()
        self.nodes: dict[str, HANode] = {}
        self.silent: set[str] = set()
        self.silentTransports: list[StringTransport] = []
        self.pumps: list[IOPump] = []
        self.addCleanup(self._checkClock)

    def _checkClock(self) -> None:
        """
        Stop the nodes and check that nothing is left on the clock.
        """
        for node in self.nodes.values():
            node.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def addNode(
        self,
        address: str = "127.0.0.1:5673",
        brokers: list[str] | None = None,
        standalone: bool = True,
        username: str | None = None,
        password: str | None = None,
    ) -> HANode:
        """
        A broker at C{address}, with a state directory of its own.

        @param brokers: its C{--ha-brokers}.
        @param standalone: whether it runs outside a cluster.
        @param username: its C{--ha-username}.
        @param password: its C{--ha-password}.
        """
        options = HAOptions(
            brokers=list(brokers or []),
            username=username,
            password=password,
            dataDir=self.mktemp(),
        )
        node = HANode(
            options,
            VirtualHost("/", clock=self.clock),
            self.clock,
            FakeAMQP(),
            PersistentState(options.dataDir),
            standalone=standalone,
        )
        self.nodes[address] = node
        return node

    async def connect(self, address: str) -> amp.AMP:
        """
        The L{qha.admin.cli.Connector} of the tests: an in-memory AMP
        connection to the node at C{address}, a connection that never
        answers for an address in C{self.silent}, and connection refused
        for any other.
        """
        if address in self.silent:
            transport = StringTransport()
            self.silentTransports.append(transport)
            client = amp.AMP()
            client.makeConnection(transport)
            return client
        node = self.nodes.get(address)
        if node is None:
            raise ConnectionRefusedError(address)

        def server() -> NodeAMP:
            """
            The broker's end: the node's AMP protocol, as its port builds it
            (replication and admin behind one login, as C{qha.tap} composes
            them).
            """
            factory = NodeAMPFactory(
                node.options.credentials, [node.replicationLocator, adminLocator(node)]
            )
            return factory.buildProtocol(None)  # type: ignore[arg-type]

        client, _, pump = connectedServerAndClient(server, amp.AMP)
        self.pumps.append(pump)
        return client

    def flush(self) -> None:
        """
        Move every byte on every in-memory connection until none moves.
        """
        moved = True
        while moved:
            moved = False
            for pump in list(self.pumps):
                if pump.pump():
                    moved = True

    def start(self, *argv: str) -> tuple[Deferred[int], io.StringIO, io.StringIO]:
        """
        Start C{qha-admin argv} and move bytes until it waits for nothing
        but time.

        @return: the exit status's L{Deferred}, standard output and
            standard error.
        """
        out, err = io.StringIO(), io.StringIO()
        arguments = parseArguments(list(argv))
        d = run(self.clock, arguments, self.connect, out, err)
        self.flush()
        return d, out, err

    def admin(self, *argv: str) -> tuple[int, str, str]:
        """
        Run C{qha-admin argv} to the end.

        @return: the exit status, standard output and standard error.
        """
        d, out, err = self.start(*argv)
        return self.successResultOf(d), out.getvalue(), err.getvalue()


class ArgumentTests(SynchronousTestCase):
    """
    The command line: defaults, every command, and usage errors (exit 2).
    """

    def setUp(self) -> None:
        """
        Keep argparse's messages out of the test output.
        """
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)

    def assertUsageError(self, *argv: str) -> str:
        """
        Parsing C{argv} exits with status 2.

        @return: what argparse wrote on standard error.
        """
        with self.assertRaises(SystemExit) as raised:
            parseArguments(list(argv))
        self.assertEqual(raised.exception.code, 2)
        return self.stderr.getvalue()

    def test_defaults(self) -> None:
        """
        Without options: the default AMP port on loopback, tables, 10 s, no
        login.
        """
        arguments = parseArguments(["ping"])
        self.assertEqual(arguments.broker, "127.0.0.1:5673")
        self.assertFalse(arguments.json)
        self.assertEqual(arguments.timeout, 10.0)
        self.assertIsNone(arguments.username)
        self.assertEqual(arguments.command, "ping")

    def test_globalOptions(self) -> None:
        """
        The options before the command are taken.
        """
        arguments = parseArguments(
            ["-b", "node1:5700", "--json", "--timeout", "2.5", "--username", "u",
             "--password", "p", "status"]
        )
        self.assertEqual(
            (arguments.broker, arguments.json, arguments.timeout, arguments.username,
             arguments.password),
            ("node1:5700", True, 2.5, "u", "p"),
        )

    def test_optionsAfterCommand(self) -> None:
        """
        The global options may also follow the command, and an option given
        before the command is not lost.
        """
        arguments = parseArguments(["-b", "node1:5700", "status", "--json"])
        self.assertEqual((arguments.broker, arguments.json), ("node1:5700", True))
        arguments = parseArguments(["add", "queue", "q", "--timeout", "3"])
        self.assertEqual(arguments.timeout, 3.0)

    def test_ipv6Broker(self) -> None:
        """
        C{[::1]:5673} is accepted.
        """
        self.assertEqual(parseArguments(["-b", "[::1]:5673", "ping"]).broker, "::1:5673")

    def test_status(self) -> None:
        """
        C{status --expect STATE} takes a role name; C{--is-primary} and
        C{--all} are flags.
        """
        arguments = parseArguments(["status", "--expect", "ready", "--all"])
        self.assertEqual((arguments.expect, arguments.is_primary, arguments.all), ("ready", False, True))
        self.assertTrue(parseArguments(["status", "--is-primary"]).is_primary)

    def test_addQueue(self) -> None:
        """
        C{add queue}: arguments whose value looks like an integer become
        integers, others stay strings.
        """
        arguments = parseArguments(
            ["add", "queue", "orders", "--replicate", "all", "--durable",
             "--argument", "x-max-length=10", "--argument", "qpid.policy_type=ring",
             "--argument", "x-neg=-3"]
        )
        self.assertEqual((arguments.command, arguments.kind, arguments.name), ("add", "queue", "orders"))
        self.assertEqual(arguments.replicate, "all")
        self.assertTrue(arguments.durable)
        self.assertEqual(
            arguments.argument,
            [("x-max-length", 10), ("qpid.policy_type", "ring"), ("x-neg", -3)],
        )

    def test_addExchange(self) -> None:
        """
        C{add exchange TYPE NAME}.
        """
        arguments = parseArguments(["add", "exchange", "topic", "events", "--replicate", "configuration"])
        self.assertEqual(
            (arguments.kind, arguments.type, arguments.name, arguments.replicate),
            ("exchange", "topic", "events", "configuration"),
        )

    def test_del(self) -> None:
        """
        C{del queue NAME} and C{del exchange NAME}.
        """
        arguments = parseArguments(["del", "exchange", "events"])
        self.assertEqual((arguments.command, arguments.kind, arguments.name), ("del", "exchange", "events"))

    def test_replicate(self) -> None:
        """
        C{replicate REMOTE QUEUE}; REMOTE must be HOST:PORT.
        """
        arguments = parseArguments(["replicate", "other:5673", "orders"])
        self.assertEqual((arguments.remote, arguments.queue), ("other:5673", "orders"))
        self.assertIn("REMOTE: 'other' in 'other' is not host:port", self.assertUsageError("replicate", "other", "q"))

    def test_replicateCluster(self) -> None:
        """
        REMOTE may be a whole cluster, in either of C{--ha-brokers}' forms.
        """
        arguments = parseArguments(["replicate", "amqp:tcp:a:5673,tcp:b:5673", "orders"])
        self.assertEqual(arguments.remote, "a:5673,b:5673")

    def test_noCommand(self) -> None:
        """
        A command is required.
        """
        self.assertIn("required", self.assertUsageError("-b", "node:5673"))

    def test_unknownCommand(self) -> None:
        """
        An unknown command is a usage error.
        """
        self.assertUsageError("fly")

    def test_badBroker(self) -> None:
        """
        C{-b} must be HOST:PORT.
        """
        self.assertIn("'node1' is not HOST:PORT", self.assertUsageError("-b", "node1", "ping"))
        self.assertUsageError("-b", "node1:99999", "ping")

    def test_badTimeout(self) -> None:
        """
        C{--timeout} must be a number above 0.
        """
        self.assertIn("more than 0 seconds", self.assertUsageError("--timeout", "0", "ping"))
        self.assertUsageError("--timeout", "soon", "ping")

    def test_usernameWithoutPassword(self) -> None:
        """
        C{--username} and C{--password} go together.
        """
        self.assertIn("go together", self.assertUsageError("--username", "u", "ping"))

    def test_badExpect(self) -> None:
        """
        C{--expect} takes a role name only.
        """
        self.assertUsageError("status", "--expect", "primary")

    def test_isPrimaryAll(self) -> None:
        """
        C{status --is-primary} asks about one broker.
        """
        self.assertIn("leave out --all", self.assertUsageError("status", "--is-primary", "--all"))

    def test_expectAndIsPrimary(self) -> None:
        """
        C{--expect} and C{--is-primary} are alternatives.
        """
        self.assertUsageError("status", "--expect", "active", "--is-primary")

    def test_badReplicateLevel(self) -> None:
        """
        C{--replicate} takes none, configuration or all.
        """
        self.assertUsageError("add", "queue", "q", "--replicate", "some")

    def test_badObjectArgument(self) -> None:
        """
        C{--argument} must be KEY=VALUE.
        """
        self.assertIn("is not KEY=VALUE", self.assertUsageError("add", "queue", "q", "--argument", "x"))

    def test_addWithoutKind(self) -> None:
        """
        C{add} needs C{queue} or C{exchange}.
        """
        self.assertUsageError("add", "binding", "x")


class FormatTests(SynchronousTestCase):
    """
    The tables, and the one-line messages for failures.
    """

    def test_table(self) -> None:
        """
        Columns are as wide as their widest cell; numbers align right,
        booleans show as yes/no and empty values as C{-}.
        """
        self.assertEqual(
            formatTable(["name", "n", "ok"], [["a", 1, True], ["long name", 100, False], ["", 7, None]]),
            "name         n  ok\n"
            "---------  ---  ---\n"
            "a            1  yes\n"
            "long name  100  no\n"
            "-            7  -\n",
        )

    def test_emptyTable(self) -> None:
        """
        A table with no rows still has its header.
        """
        self.assertEqual(formatTable(["a", "bb"], []), "a  bb\n-  --\n")

    def test_queues(self) -> None:
        """
        The queues table, sorted by name, with counts.
        """
        queue = {
            "durable": True, "autoDelete": False, "exclusive": False, "messages": 12,
            "unacked": 2, "consumers": 1, "replicate": "all",
        }
        text = formatQueues([dict(queue, name="b"), dict(queue, name="a", durable=False)])
        self.assertEqual(
            text.splitlines(),
            [
                "queue  messages  unacked  consumers  durable  auto-delete  exclusive  replicate",
                "-----  --------  -------  ---------  -------  -----------  ---------  ---------",
                "a            12        2          1  no       no           no         all",
                "b            12        2          1  yes      no           no         all",
            ],
        )

    def test_exchanges(self) -> None:
        """
        The exchanges table; the default exchange shows as C{(default)}.
        """
        exchange = {
            "type": "direct", "durable": True, "autoDelete": False, "internal": False,
            "bindings": 3, "replicate": "none",
        }
        lines = formatExchanges([dict(exchange, name="x"), dict(exchange, name="")]).splitlines()
        self.assertEqual(lines[0].split(), ["exchange", "type", "bindings", "durable", "auto-delete", "internal", "replicate"])
        self.assertEqual(lines[2].split(), ["(default)", "direct", "3", "yes", "no", "no", "none"])
        self.assertEqual(lines[3].split()[0], "x")

    def test_bindings(self) -> None:
        """
        The bindings table shows arguments as C{k=v} pairs.
        """
        lines = formatBindings(
            [{"source": "ex", "destination": "q", "destinationKind": "queue", "routingKey": "k",
              "arguments": {"x-match": "all", "a": "1"}}]
        ).splitlines()
        self.assertEqual(lines[2].split(), ["ex", "q", "queue", "k", "a=1,x-match=all"])

    def test_queryWithBackups(self) -> None:
        """
        C{query} shows the settings, then each backup's progress: boxes
        sent, acknowledged, and how many are outstanding.
        """
        state = {
            "role": "active", "brokerId": "id-1", "epoch": 3, "brokers": "a:1,b:1",
            "publicBrokers": "a:5672,b:5672", "replicateDefault": "all", "minBackups": 1,
            "primary": None,
            "backups": [{"id": "id-2", "address": "b:1", "ready": True, "sent": 10, "acknowledged": 8}],
        }
        lines = formatQuery("a:1", state).splitlines()
        self.assertEqual(
            lines[:10],
            [
                "broker             a:1",
                "role               active",
                "broker id          id-1",
                "epoch              3",
                "brokers URL        a:1,b:1",
                "public URL         a:5672,b:5672",
                "replicate default  all",
                "min backups        1",
                "primary            -",
                "backups            1",
            ],
        )
        self.assertEqual(lines[11].split(), ["backup", "id", "address", "ready", "sent", "acknowledged", "behind"])
        self.assertEqual(lines[13].split(), ["id-2", "b:1", "yes", "10", "8", "2"])

    def test_queryBackup(self) -> None:
        """
        A backup shows its primary, and no backups.
        """
        state = {
            "role": "ready", "brokerId": "id-2", "epoch": 3, "brokers": "a:1,b:1",
            "publicBrokers": "", "replicateDefault": "none", "minBackups": 0,
            "primary": "a:1", "backups": [],
        }
        text = formatQuery("b:1", state)
        self.assertIn("primary            a:1\n", text)
        self.assertIn("public URL         -\n", text)
        self.assertTrue(text.endswith("backups            none\n"))

    def test_errors(self) -> None:
        """
        Every kind of failure gets one line that names the broker and says
        what happened.
        """
        address = "node1:5673"
        cases: list[tuple[BaseException, str]] = [
            (ConnectionRefusedError(), "cannot connect to node1:5673: connection refused"),
            (DNSLookupError(), "cannot connect to node1:5673: cannot resolve the host name"),
            (Refused("no way"), "node1:5673 refused: no way"),
            (NotAuthenticated("log in first"), "node1:5673 refused: log in first (give --username and --password)"),
            (amp.RemoteAmpError(b"ODD", "something odd"), "node1:5673 refused: something odd"),
            (amp.UnknownRemoteError("Unknown Error"), "node1:5673 failed while answering (Unknown Error; see the broker's log)"),
            (amp.TooLong(True, False, b"k", 70000), "node1:5673 does not speak AMP"),
            (ConnectionDone(), "node1:5673 closed the connection before answering"),
        ]
        for error, start in cases:
            self.assertTrue(describeError(error, address).startswith(start), (error, describeError(error, address)))
        self.assertEqual(
            describeError(NotAuthenticated("bad password"), address, loggedIn=True),
            "node1:5673 refused the login: bad password",
        )


class CommandTests(AdminTestCase):
    """
    Every command against a standalone broker in memory.
    """

    def setUp(self) -> None:
        """
        One standalone broker at C{127.0.0.1:5673}, the default address.
        """
        super().setUp()
        self.node = self.addNode()

    def test_ping(self) -> None:
        """
        C{ping} says the broker is alive and its role, and exits 0.
        """
        self.assertEqual(self.admin("ping"), (0, "127.0.0.1:5673 is alive (standalone)\n", ""))

    def test_pingJSON(self) -> None:
        """
        C{ping --json}.
        """
        code, out, _ = self.admin("--json", "ping")
        self.assertEqual(json.loads(out), {"broker": "127.0.0.1:5673", "alive": True, "role": "standalone"})

    def test_pingRefused(self) -> None:
        """
        Nothing at the address: exit 1 and one line that names it.
        """
        self.assertEqual(
            self.admin("-b", "127.0.0.1:6000", "ping"),
            (1, "", "qha-admin: cannot connect to 127.0.0.1:6000: connection refused"
                " (is a qha broker's --ha-port there?)\n"),
        )

    def test_connectionClosed(self) -> None:
        """
        Every connection the command opened is closed at the end.
        """
        self.admin("ping")
        self.assertEqual(len(self.pumps), 1)
        self.flush()
        self.assertTrue(self.pumps[0].clientIO.disconnected)

    def test_timeout(self) -> None:
        """
        A broker that does not answer: after C{--timeout} seconds, exit 1
        with a message that says so, and the connection is closed.
        """
        self.silent.add("127.0.0.1:5673")
        d, out, err = self.start("--timeout", "3", "ping")
        self.assertNoResult(d)
        self.clock.advance(3)
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(err.getvalue(), "qha-admin: timed out after 3 s waiting for 127.0.0.1:5673\n")
        self.assertTrue(self.silentTransports[0].disconnecting)

    def test_connectTimeout(self) -> None:
        """
        The timeout covers connecting too.
        """

        def never(address: str) -> Deferred[amp.AMP]:
            """
            A connection attempt that never ends.
            """
            return Deferred()

        self.connect = never  # type: ignore[method-assign, assignment]
        d, _, err = self.start("ping")
        self.clock.advance(10)
        self.assertEqual(self.successResultOf(d), 1)
        self.assertIn("timed out after 10 s", err.getvalue())

    def test_status(self) -> None:
        """
        C{status} prints the role alone.
        """
        self.assertEqual(self.admin("status"), (0, "standalone\n", ""))

    def test_statusJSON(self) -> None:
        """
        C{status --json}.
        """
        code, out, _ = self.admin("status", "--json")
        self.assertEqual((code, json.loads(out)), (0, {"broker": "127.0.0.1:5673", "role": "standalone"}))

    def test_statusExpect(self) -> None:
        """
        C{status --expect}: 0 when the role is the one expected, else 1
        with the role it has.
        """
        self.assertEqual(self.admin("status", "--expect", "standalone")[0], 0)
        self.assertEqual(
            self.admin("status", "--expect", "active"),
            (1, "standalone\n", "qha-admin: 127.0.0.1:5673 is standalone, not active\n"),
        )

    def test_statusIsPrimary(self) -> None:
        """
        C{status --is-primary}: a standalone broker is not a primary.
        """
        self.assertEqual(
            self.admin("status", "--is-primary"),
            (1, "standalone\n", "qha-admin: 127.0.0.1:5673 is standalone, not the primary\n"),
        )

    def test_statusAllStandalone(self) -> None:
        """
        C{status --all} on a broker outside any cluster asks that broker.
        """
        self.assertEqual(self.admin("status", "--all"), (0, "127.0.0.1:5673  standalone\n", ""))

    def test_query(self) -> None:
        """
        C{query} shows the broker's state.
        """
        code, out, err = self.admin("query")
        self.assertEqual((code, err), (0, ""))
        self.assertIn("role               standalone\n", out)
        self.assertIn(f"broker id          {self.node.brokerId}\n", out)
        self.assertIn("epoch              0\n", out)

    def test_queryJSON(self) -> None:
        """
        C{query --json} is the broker's own description, plus the address
        asked.
        """
        code, out, _ = self.admin("--json", "query")
        self.assertEqual(json.loads(out), dict(self.node.describe(), broker="127.0.0.1:5673"))

    def test_promoteStandalone(self) -> None:
        """
        A standalone broker refuses promotion: its reason, exit 1.
        """
        self.assertEqual(
            self.admin("promote"),
            (1, "", "qha-admin: 127.0.0.1:5673 refused: cannot promote this broker:"
                " it is standalone (--ha-cluster no)\n"),
        )

    def test_replicateRefused(self) -> None:
        """
        C{replicate} on a broker without C{--ha-queue-replication yes}: the
        broker's refusal, with its reason, exit 1.
        """
        self.assertEqual(
            self.admin("replicate", "127.0.0.1:6000", "orders"),
            (1, "", "qha-admin: 127.0.0.1:5673 refused: single-queue replication is off:"
                " start the broker with --ha-queue-replication yes\n"),
        )

    def test_replicate(self) -> None:
        """
        C{replicate} on a broker that allows it: exit 0, and C{query} shows
        the replica (not following yet: the remote cannot be reached here).
        """
        self.node.options.queueReplication = True
        self.assertEqual(
            self.admin("replicate", "10.0.0.9:5673,10.0.0.10:5673", "orders"),
            (0, "queue 'orders' on 127.0.0.1:5673 replicates 'orders' on"
                " 10.0.0.9:5673,10.0.0.10:5673 from now on\n", ""),
        )
        code, out, _ = self.admin("query")
        self.assertEqual(
            out.split("\n\n")[-1].splitlines(),
            ["queue   remote                        following",
             "------  ----------------------------  ---------",
             "orders  10.0.0.9:5673,10.0.0.10:5673  -"],
        )

    def test_addQueue(self) -> None:
        """
        C{add queue} declares the queue with its arguments and replication
        level.
        """
        self.assertEqual(
            self.admin("add", "queue", "orders", "--durable", "--replicate", "all",
                       "--argument", "x-max-length=5", "--argument", "x-queue-mode=lazy"),
            (0, "queue 'orders' added\n", ""),
        )
        queue = self.node.vhost.queues["orders"]
        self.assertTrue(queue.durable)
        self.assertEqual(queue.arguments["x-max-length"], 5)
        self.assertEqual(queue.arguments["x-queue-mode"], "lazy")
        self.assertEqual(queue.arguments["qpid.replicate"], "all")

    def test_addQueueInequivalent(self) -> None:
        """
        Adding a queue that exists with other settings is refused with the
        broker's reason.
        """
        self.admin("add", "queue", "orders", "--durable")
        code, _, err = self.admin("add", "queue", "orders")
        self.assertEqual(code, 1)
        self.assertIn("refused: PRECONDITION_FAILED - inequivalent arg 'durable'", err)

    def test_addExchange(self) -> None:
        """
        C{add exchange TYPE NAME}.
        """
        self.assertEqual(self.admin("--json", "add", "exchange", "topic", "events")[0], 0)
        self.assertEqual(self.node.vhost.exchanges["events"].type, "topic")

    def test_addExchangeBadType(self) -> None:
        """
        An unknown exchange type is refused with the broker's reason.
        """
        code, _, err = self.admin("add", "exchange", "round-robin", "events")
        self.assertEqual(code, 1)
        self.assertIn("unknown exchange type 'round-robin'", err)
        self.assertNotIn("events", self.node.vhost.exchanges)

    def test_delete(self) -> None:
        """
        C{del queue} and C{del exchange} delete; deleting again is refused.
        """
        self.admin("add", "queue", "orders")
        self.admin("add", "exchange", "fanout", "events")
        self.assertEqual(self.admin("del", "queue", "orders"), (0, "queue 'orders' deleted\n", ""))
        self.assertEqual(self.admin("del", "exchange", "events"), (0, "exchange 'events' deleted\n", ""))
        self.assertNotIn("orders", self.node.vhost.queues)
        self.assertNotIn("events", self.node.vhost.exchanges)
        self.assertEqual(
            self.admin("del", "queue", "orders"),
            (1, "", "qha-admin: 127.0.0.1:5673 refused: no queue 'orders'\n"),
        )

    def test_queues(self) -> None:
        """
        C{queues} counts ready and unacknowledged messages and consumers.
        """
        vhost = self.node.vhost
        vhost.declareQueue("orders", durable=True)
        for body in (b"1", b"2", b"3"):
            vhost.publish("", "orders", Message.build("", "orders", body, None))
        queue = vhost.queues["orders"]
        queue.addConsumer(Consumer(queue, "c1", RecordingTarget(credit=1)))
        code, out, _ = self.admin("queues")
        self.assertEqual(code, 0)
        self.assertEqual(
            out.splitlines()[2].split(), ["orders", "2", "1", "1", "yes", "no", "no", "none"]
        )
        code, out, _ = self.admin("queues", "--json")
        self.assertEqual(
            json.loads(out),
            [{"name": "orders", "messages": 2, "unacked": 1, "consumers": 1, "durable": True,
              "autoDelete": False, "exclusive": False, "replicate": "none"}],
        )

    def test_exchangesAndBindings(self) -> None:
        """
        C{exchanges} counts bindings; C{bindings} lists them.
        """
        vhost = self.node.vhost
        vhost.declareQueue("orders")
        vhost.declareExchange("events", "topic")
        vhost.bindQueue("orders", "events", "order.*")
        code, out, _ = self.admin("exchanges")
        rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
        self.assertEqual(rows["events"], ["events", "topic", "1", "no", "no", "no", "none"])
        self.assertIn("(default)", rows)
        code, out, _ = self.admin("bindings")
        self.assertEqual(out.splitlines()[2].split(), ["events", "orders", "queue", "order.*", "-"])
        code, out, _ = self.admin("--json", "bindings")
        self.assertEqual(
            json.loads(out),
            [{"source": "events", "destination": "orders", "destinationKind": "queue",
              "routingKey": "order.*", "arguments": {}}],
        )


class LoginTests(AdminTestCase):
    """
    A broker with C{--ha-username} answers only after a login.
    """

    def setUp(self) -> None:
        """
        A standalone broker with credentials.
        """
        super().setUp()
        self.addNode(username="admin", password="secret")

    def test_noCredentials(self) -> None:
        """
        Without credentials the broker refuses, and the message says what
        to give.
        """
        code, _, err = self.admin("ping")
        self.assertEqual(code, 1)
        self.assertIn("refused: log in first", err)
        self.assertIn("(give --username and --password)", err)

    def test_badCredentials(self) -> None:
        """
        Wrong credentials: the broker's reason.
        """
        code, _, err = self.admin("--username", "admin", "--password", "guess", "ping")
        self.assertEqual(code, 1)
        self.assertEqual(
            err, "qha-admin: 127.0.0.1:5673 refused the login: bad HA username or password for 'admin'\n"
        )

    def test_credentials(self) -> None:
        """
        The right credentials: Login first, then the command.
        """
        self.assertEqual(self.admin("--username", "admin", "--password", "secret", "status")[:2], (0, "standalone\n"))


class ClusterTests(AdminTestCase):
    """
    Commands that ask every broker of a cluster, and promotion.
    """

    brokers = ["10.0.0.1:5673", "10.0.0.2:5673", "10.0.0.3:5673"]

    def test_statusAll(self) -> None:
        """
        C{status --all} asks every broker of the C{--ha-brokers} list; one
        that cannot be reached is shown as such, and the command exits 1.
        """
        for address in self.brokers[:2]:
            self.addNode(address, brokers=self.brokers)
        code, out, err = self.admin("-b", self.brokers[0], "status", "--all")
        self.assertEqual(
            out,
            "10.0.0.1:5673  standalone\n10.0.0.2:5673  standalone\n10.0.0.3:5673  unreachable\n",
        )
        self.assertEqual(code, 1)
        self.assertEqual(
            err,
            "qha-admin: cannot connect to 10.0.0.3:5673: connection refused (is a qha broker's"
            " --ha-port there?)\n",
        )

    def test_statusAllExpect(self) -> None:
        """
        C{status --all --expect STATE}: 0 only when every broker is in it.
        """
        for address in self.brokers:
            self.addNode(address, brokers=self.brokers)
        self.assertEqual(self.admin("-b", self.brokers[1], "status", "--all", "--expect", "standalone")[0], 0)
        code, _, err = self.admin("-b", self.brokers[1], "status", "--all", "--expect", "ready")
        self.assertEqual(code, 1)
        self.assertEqual(len(err.splitlines()), 3)

    def test_statusAllSilent(self) -> None:
        """
        A broker that accepts the connection but never answers is reported
        as not answering, and the others' answers are still printed, before
        the whole command's timeout.
        """
        for address in self.brokers[:2]:
            self.addNode(address, brokers=self.brokers)
        self.silent.add(self.brokers[2])
        d, out, err = self.start("-b", self.brokers[0], "--json", "status", "--all")
        self.assertNoResult(d)
        self.clock.advance(9)
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(
            json.loads(out.getvalue()),
            [
                {"broker": self.brokers[0], "role": "standalone"},
                {"broker": self.brokers[1], "role": "standalone"},
                {"broker": self.brokers[2], "error": "10.0.0.3:5673 did not answer within 9 s"},
            ],
        )
        self.assertEqual(err.getvalue(), "qha-admin: 10.0.0.3:5673 did not answer within 9 s\n")

    def test_queryAll(self) -> None:
        """
        C{query --all} shows every broker's state, one block each.
        """
        nodes = [self.addNode(address, brokers=self.brokers) for address in self.brokers]
        code, out, err = self.admin("-b", self.brokers[2], "query", "--all")
        self.assertEqual((code, err), (0, ""))
        blocks = out.split("\n\n")
        self.assertEqual(len(blocks), 3)
        for block, address, node in zip(blocks, self.brokers, nodes):
            self.assertIn(f"broker             {address}\n", block)
            self.assertIn(f"broker id          {node.brokerId}\n", block)
        code, out, err = self.admin("-b", self.brokers[2], "--json", "query", "--all")
        self.assertEqual([state["brokerId"] for state in json.loads(out)], [n.brokerId for n in nodes])

    def test_promote(self) -> None:
        """
        C{promote} makes a lone cluster broker the primary at a new epoch;
        promoting it again says it already is.
        """
        node = self.addNode("10.0.0.1:5673", standalone=False)
        self.assertEqual(
            self.admin("-b", "10.0.0.1:5673", "promote"),
            (0, "10.0.0.1:5673 promoted: recovering, epoch 1\n", ""),
        )
        self.assertTrue(node.amqp.listening)  # type: ignore[attr-defined]
        self.clock.advance(0)
        code, out, _ = self.admin("-b", "10.0.0.1:5673", "--json", "promote")
        self.assertEqual(
            json.loads(out),
            {"broker": "10.0.0.1:5673", "role": "active", "epoch": 1, "promoted": False},
        )
        self.assertEqual(self.admin("-b", "10.0.0.1:5673", "status", "--is-primary"), (0, "active\n", ""))

    def test_promoteWithPausedBroker(self) -> None:
        """
        A broker of the cluster that accepts connections but never answers
        (a paused process, as after SIGSTOP) delays C{promote} by the
        broker's Hello timeout, and does not make it hang.
        """
        reactor = MemoryReactorClock()
        self.clock = reactor
        self.addNode("10.0.0.1:5673", brokers=["10.0.0.2:5673"], standalone=False)
        d, out, err = self.start("-b", "10.0.0.1:5673", "promote")
        host, port, factory, _, _ = reactor.tcpClients[-1]
        self.assertEqual((host, port), ("10.0.0.2", 5673))
        paused = factory.buildProtocol(None)
        assert paused is not None
        paused.makeConnection(StringTransport())
        self.assertNoResult(d)
        reactor.advance(HELLO_TIMEOUT)
        self.flush()
        self.assertEqual(
            (self.successResultOf(d), out.getvalue(), err.getvalue()),
            (0, "10.0.0.1:5673 promoted: recovering, epoch 1\n", ""),
        )
        reactor.advance(0)

    def test_addOnBackup(self) -> None:
        """
        A backup refuses C{add}: queues are added on the primary.
        """
        self.addNode("10.0.0.1:5673", standalone=False)
        code, _, err = self.admin("-b", "10.0.0.1:5673", "add", "queue", "orders")
        self.assertEqual(code, 1)
        self.assertEqual(
            err,
            "qha-admin: 10.0.0.1:5673 refused: this broker is joining: add queues and"
            " exchanges on the primary\n",
        )


class AdminErrorTests(SynchronousTestCase):
    """
    Failures the session turns into messages.
    """

    def test_unexpectedFailure(self) -> None:
        """
        A failure of an unexpected kind still ends the command with 1 and
        one line, and nothing is raised out of L{run}.
        """

        async def broken(address: str) -> amp.AMP:
            """
            A connector that fails in a way nobody planned for.
            """
            raise RuntimeError("the connector is broken")

        out, err = io.StringIO(), io.StringIO()
        d = run(Clock(), parseArguments(["ping"]), broken, out, err)
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(
            err.getvalue(), "qha-admin: 127.0.0.1:5673: RuntimeError: the connector is broken\n"
        )

    def test_adminError(self) -> None:
        """
        L{AdminError} is what commands raise with their message.
        """
        self.assertEqual(str(AdminError("x")), "x")


class PrimaryCommandTests(AdminTestCase):
    """
    C{primary}, against a fake etcd and in-memory brokers.
    """

    def setUp(self) -> None:
        """
        A fake etcd on the test's clock; the endpoints the command asked for.
        """
        super().setUp()
        self.etcd = FakeEtcd(self.clock)
        self.asked: list[list[str]] = []

    def runWithEtcd(self, *argv: str) -> tuple[int, str, str]:
        """
        Run C{qha-admin argv} with the fake etcd.
        """
        out, err = io.StringIO(), io.StringIO()

        def etcd(endpoints: list[str]) -> FakeEtcd:
            self.asked.append(endpoints)
            return self.etcd

        d = run(self.clock, parseArguments(list(argv)), self.connect, out, err, etcd)
        self.flush()
        return self.successResultOf(d), out.getvalue(), err.getvalue()

    def test_fromEtcd(self) -> None:
        """
        With C{--coordinator}, the leader key of C{--cluster-name} gives the
        address, without asking any broker.
        """
        leader = LeaderInfo("b1", 3, "10.0.0.1:5673", "10.0.0.1:5672")
        self.etcd.put(b"/qha/prod/leader", leader.toJSON())
        code, out, err = self.runWithEtcd(
            "primary", "--coordinator", "etcd:http://e1:2379,http://e2:2379", "--cluster-name", "prod"
        )
        self.assertEqual((code, out, err), (0, "10.0.0.1:5672\n", ""))
        self.assertEqual(self.asked, [["http://e1:2379", "http://e2:2379"]])

    def test_fromEtcdJSON(self) -> None:
        """
        C{--json} gives the leader's id and epoch too.
        """
        self.etcd.put(b"/qha/qha/leader", LeaderInfo("b1", 3, "a:1", "a:2").toJSON())
        code, out, _ = self.runWithEtcd("primary", "--coordinator", "etcd:http://e:2379", "--json")
        self.assertEqual(code, 0)
        self.assertEqual(json.loads(out), {"id": "b1", "epoch": 3, "amqp": "a:2"})

    def test_noLeader(self) -> None:
        """
        No leader key: exit 1, saying so.
        """
        code, out, err = self.runWithEtcd("primary", "--coordinator", "etcd:http://e:2379")
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(err, "qha-admin: no primary: the cluster has no leader now\n")

    def test_etcdUnreachable(self) -> None:
        """
        etcd does not answer: exit 1 naming it.
        """
        self.etcd.setAvailable(False)
        code, _, err = self.runWithEtcd("primary", "--coordinator", "etcd:http://e:2379")
        self.assertEqual(code, 1)
        self.assertTrue(err.startswith("qha-admin: etcd etcd:http://e:2379: "), err)

    def test_badCoordinator(self) -> None:
        """
        A coordinator that is not etcd: exit 1 with what is expected.
        """
        code, _, err = self.runWithEtcd("primary", "--coordinator", "zk:http://e:1")
        self.assertEqual(code, 1)
        self.assertIn("expected etcd:http://HOST:PORT", err)

    def test_standaloneBroker(self) -> None:
        """
        Without C{--coordinator}, a standalone broker is its own primary:
        its advertised AMQP address.
        """
        node = self.addNode()
        node.options.amqpAddress = "127.0.0.1:5672"
        code, out, err = self.runWithEtcd("primary")
        self.assertEqual((code, out, err), (0, "127.0.0.1:5672\n", ""))
        self.assertEqual(self.asked, [])


class ClusterAddressesTests(AdminTestCase):
    """
    The brokers C{--all} asks: C{--ha-brokers}, then etcd's members.
    """

    def test_brokersThenMembers(self) -> None:
        """
        Members registered in etcd that are not in C{--ha-brokers} are
        added, in order, once.
        """
        state = {
            "brokers": "h1:5673,h2:5673",
            "coordinator": {"members": [{"amp": "h2:5673"}, {"amp": "h3:5673"}, {"amp": ""}]},
        }
        self.assertEqual(
            clusterAddresses("h1:5673", state), ["h1:5673", "h2:5673", "h3:5673"]
        )

    def test_alone(self) -> None:
        """
        A broker that knows no other is asked alone.
        """
        self.assertEqual(clusterAddresses("h9:5673", {"brokers": ""}), ["h9:5673"])
