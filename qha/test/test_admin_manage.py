"""
Tests for the C{qha-admin} commands of L{qha.admin.manage} (purge, bind,
unbind, connections, consumers, close-connection, definitions, set), their
responders in L{qha.admin.locator} and their bounds in L{qha.admin.objects},
and C{--vhost} on every object command.

Like L{qha.test.test_admin}, the command line is parsed for real and the
commands run against real L{HANode}s connected in memory; here each node
also has a real AMQP factory, whose client connections are in memory too
(L{qha.test.support.Client}).
"""

from __future__ import annotations

import json
from typing import Any

from pamqp import commands
from twisted.internet.defer import ensureDeferred
from twisted.protocols import amp
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from qha.admin.cli import parseArguments
from qha.admin.commands import (
    Bind,
    CloseConnection,
    ImportDefinitions,
    ListConsumers,
    Purge,
    Refused,
    SetOptions,
)
from qha.admin.locator import adminLocator
from qha.admin.manage import formatConnections, formatConsumers
from qha.admin.objects import (
    MAX_ARGUMENTS,
    MAX_DEFINITION_ITEMS,
    parseBindArguments,
    parseDocument,
)
from qha.amqp.protocol import BrokerFactory
from qha.broker.message import Message
from qha.broker.vhosts import VirtualHosts
from qha.ha.connection import NodeAMPFactory
from qha.ha.node import HANode
from qha.test.support import Client, names
from qha.test.test_vhosts import permittedUsers
from qha.test.test_admin import AdminTestCase


class ManageTestCase(AdminTestCase):
    """
    L{AdminTestCase} with an AMQP factory per broker, so that the admin
    commands see client connections.

    @ivar factories: each node's AMQP factory, by address.
    """

    def setUp(self) -> None:
        """
        No brokers yet.
        """
        super().setUp()
        self.factories: dict[str, BrokerFactory] = {}

    def addNode(self, address: str = "127.0.0.1:5673", **kwargs: Any) -> HANode:  # type: ignore[override]
        """
        A broker at C{address} with its AMQP factory.
        """
        node = super().addNode(address, **kwargs)
        self.factories[address] = BrokerFactory(node.vhost, permittedUsers(), self.clock)
        return node

    async def connect(self, address: str) -> amp.AMP:
        """
        An in-memory AMP connection to the node at C{address}, whose admin
        locator has the node's AMQP factory (as C{qha.tap} builds it).
        """
        node = self.nodes[address]
        clients = self.factories[address]

        def server() -> Any:
            """
            The broker's end of the connection.
            """
            factory = NodeAMPFactory(
                node.options.credentials, [node.replicationLocator, adminLocator(node, clients)]
            )
            return factory.buildProtocol(None)  # type: ignore[arg-type]

        client, _, pump = connectedServerAndClient(server, amp.AMP)
        self.pumps.append(pump)
        return client

    def client(self, address: str = "127.0.0.1:5673", vhost: str = "/") -> Client:
        """
        An AMQP client of the broker at C{address}, logged in as guest to
        C{vhost} (C{/} or C{a}: guest may use those) with channel 1 open;
        disconnected at cleanup.
        """
        client = Client(self.factories[address])
        self.addCleanup(client.disconnect)
        self.assertEqual(names(client.handshake(vhost=vhost))[-1], (0, "Connection.OpenOk"))
        client.openChannel(1)
        return client

    def refusal(self, command: type[amp.Command], address: str = "127.0.0.1:5673", **kwargs: Any) -> str:
        """
        Send C{command} straight to the broker's AMP port (past the
        command line's own checks), which must refuse it.

        @return: the text of the refusal.
        """
        connection = self.successResultOf(ensureDeferred(self.connect(address)))
        refusals: list[Any] = []
        connection.callRemote(command, **kwargs).addErrback(refusals.append)
        self.flush()
        if connection.transport is not None:
            connection.transport.loseConnection()
            self.flush()
        self.assertEqual(len(refusals), 1, f"{command.__name__} was not refused")
        refusals[0].trap(Refused)
        return str(refusals[0].value)


class ArgumentTests(SynchronousTestCase):
    """
    The command line of the new commands.
    """

    def test_purge(self) -> None:
        """
        C{purge QUEUE} with C{--vhost} (default C{/}).
        """
        arguments = parseArguments(["purge", "jobs"])
        self.assertEqual((arguments.command, arguments.queue, arguments.vhost), ("purge", "jobs", "/"))
        self.assertEqual(parseArguments(["purge", "jobs", "--vhost", "b"]).vhost, "b")

    def test_bind(self) -> None:
        """
        C{bind SOURCE DESTINATION} with its key, its arguments (integers
        parsed) and its kind of destination.
        """
        arguments = parseArguments(
            ["bind", "amq.headers", "q", "--key", "k", "--argument", "x-match=all",
             "--argument", "n=3", "--destination-type", "exchange"]
        )
        self.assertEqual(
            (arguments.source, arguments.destination, arguments.key, dict(arguments.argument),
             arguments.destination_type),
            ("amq.headers", "q", "k", {"x-match": "all", "n": 3}, "exchange"),
        )
        unbind = parseArguments(["unbind", "x", "q"])
        self.assertEqual((unbind.key, unbind.argument, unbind.destination_type), ("", [], "queue"))

    def test_vhostDefaults(self) -> None:
        """
        C{connections} and C{definitions} cover every vhost unless
        C{--vhost} is given; C{consumers} and the object commands C{/}.
        """
        self.assertIsNone(parseArguments(["connections"]).vhost)
        self.assertIsNone(parseArguments(["definitions", "export"]).vhost)
        self.assertIsNone(parseArguments(["definitions", "import", "f.json"]).vhost)
        for argv in (["consumers"], ["queues"], ["exchanges"], ["bindings"],
                     ["add", "queue", "q"], ["del", "exchange", "x"]):
            self.assertEqual(parseArguments(argv).vhost, "/", argv)
        self.assertEqual(parseArguments(["add", "queue", "q", "--vhost", "b"]).vhost, "b")

    def test_definitionsExportFile(self) -> None:
        """
        C{definitions export} writes to standard output unless given a file.
        """
        self.assertEqual(parseArguments(["definitions", "export"]).file, "-")
        self.assertEqual(parseArguments(["definitions", "export", "d.json"]).file, "d.json")

    def test_closeConnection(self) -> None:
        """
        C{close-connection NAME}, with a reason by default.
        """
        arguments = parseArguments(["close-connection", "a -> b"])
        self.assertEqual((arguments.name, arguments.reason), ("a -> b", "Closed via qha-admin"))

    def test_set(self) -> None:
        """
        C{set} takes Qpid's options.
        """
        arguments = parseArguments(
            ["set", "--backup-timeout", "2.5", "--public-url", "a:1", "--replicate", "all"]
        )
        self.assertEqual(
            (arguments.backup_timeout, arguments.public_url, arguments.replicate),
            (2.5, "a:1", "all"),
        )

    def test_bad(self) -> None:
        """
        Empty or long vhost names, long queue names, keys and reasons, a
        negative timeout, an unknown level, and C{K} without C{=V} are bad
        command lines (exit 2).
        """
        for argv in (
            ["purge", "q", "--vhost", ""],
            ["queues", "--vhost", "v" * 256],
            ["purge", "q" * 256],
            ["bind", "x", "q", "--key", "k" * 256],
            ["bind", "x", "q", "--argument", "novalue"],
            ["close-connection", "c", "--reason", "r" * 256],
            ["set", "--backup-timeout", "-1"],
            ["set", "--replicate", "some"],
            ["definitions"],
        ):
            with self.assertRaises(SystemExit) as raised:
                parseArguments(argv)
            self.assertEqual(raised.exception.code, 2, argv)


class FormatTests(SynchronousTestCase):
    """
    The tables of C{connections} and C{consumers}.
    """

    def test_connections(self) -> None:
        """
        One line per connection: peer as host:port, TLS yes/no, the time it
        connected in UTC.
        """
        self.assertEqual(
            formatConnections(
                [{"name": "10.0.0.9:4000 -> 10.0.0.1:5672", "user": "guest", "peer_host": "10.0.0.9",
                  "peer_port": 4000, "vhost": "/", "channels": 2, "ssl": True,
                  "connected_at": 86_400_000}]
            ),
            "name                            user   peer           vhost  channels  tls"
            "  connected since (UTC)\n"
            "------------------------------  -----  -------------  -----  --------  ---"
            "  ---------------------\n"
            "10.0.0.9:4000 -> 10.0.0.1:5672  guest  10.0.0.9:4000  /             2  yes"
            "  1970-01-02 00:00:00\n",
        )

    def test_consumers(self) -> None:
        """
        One line per consumer, by queue and tag: C{manual} when the client
        acknowledges, C{auto} for no-ack.
        """
        rows = [
            {"queue": {"name": name}, "consumer_tag": tag, "ack_required": ack, "prefetch_count": 5,
             "channel_details": {"connection_name": "c", "number": 1}}
            for name, tag, ack in (("q2", "t", True), ("q1", "t", False))
        ]
        self.assertEqual(
            formatConsumers(rows).splitlines()[2:],
            ["q1     t    c                 1  auto             5",
             "q2     t    c                 1  manual           5"],
        )


class BoundTests(SynchronousTestCase):
    """
    The bounds of L{qha.admin.objects}, checked before use.
    """

    def test_bindArguments(self) -> None:
        """
        Binding arguments are a JSON object of few entries of simple
        values.
        """
        self.assertEqual(parseBindArguments('{"x-match": "any", "n": 1}'), {"x-match": "any", "n": 1})
        self.assertEqual(parseBindArguments(""), {})
        for text, message in (
            ("[1]", "binding arguments must be a JSON object of KEY: VALUE"),
            ("{", "binding arguments are not JSON"),
            ('{"a": [1]}', "binding argument 'a' is a list: give a string, an integer or a boolean"),
            (json.dumps({str(i): i for i in range(MAX_ARGUMENTS + 1)}),
             f"{MAX_ARGUMENTS + 1} binding arguments: at most {MAX_ARGUMENTS} are allowed"),
            ("[" * 100_000, "binding arguments of more than"),
        ):
            with self.assertRaises(Refused) as raised:
                parseBindArguments(text)
            self.assertIn(message, str(raised.exception))

    def test_document(self) -> None:
        """
        A definitions document is a JSON object whose sections are lists,
        with at most L{MAX_DEFINITION_ITEMS} objects in all.
        """
        self.assertEqual(parseDocument(b'{"queues": []}'), {"queues": []})
        for data, message in (
            (b"[]", "the definitions must be a JSON object"),
            (b"{", "the definitions are not JSON"),
            (b'{"queues": {}}', "definitions: queues must be a JSON list"),
            (json.dumps({"queues": [{}] * (MAX_DEFINITION_ITEMS + 1)}).encode(),
             f"definitions of {MAX_DEFINITION_ITEMS + 1} objects"),
        ):
            with self.assertRaises(Refused) as raised:
                parseDocument(data)
            self.assertIn(message, str(raised.exception))


class ObjectCommandTests(ManageTestCase):
    """
    C{purge}, C{bind}, C{unbind} and C{--vhost}, against a standalone
    broker.
    """

    def setUp(self) -> None:
        """
        One standalone broker at the default address.
        """
        super().setUp()
        self.node = self.addNode()
        self.vhost = self.node.vhost

    def test_purge(self) -> None:
        """
        C{purge} drops the ready messages and says how many.
        """
        self.vhost.declareQueue("jobs")
        for body in (b"a", b"b"):
            self.vhost.publish("", "jobs", Message.build("", "jobs", body))
        self.assertEqual(
            self.admin("purge", "jobs"), (0, "queue 'jobs' purged: 2 messages dropped\n", "")
        )
        self.assertEqual(self.vhost.queues["jobs"].messageCount, 0)
        code, out, _ = self.admin("purge", "jobs", "--json")
        self.assertEqual(json.loads(out), {"broker": "127.0.0.1:5673", "vhost": "/", "queue": "jobs", "purged": 0})

    def test_purgeUnknown(self) -> None:
        """
        An unknown queue: RabbitMQ's NOT_FOUND text.
        """
        self.assertEqual(
            self.admin("purge", "nope"),
            (1, "", "qha-admin: 127.0.0.1:5673 refused: NOT_FOUND - no queue 'nope' in vhost '/'\n"),
        )

    def test_unknownVhost(self) -> None:
        """
        Every object command refuses a vhost that does not exist with
        RabbitMQ's text.
        """
        refusal = "qha-admin: 127.0.0.1:5673 refused: NOT_FOUND - vhost 'nope' not found\n"
        for argv in (
            ["queues"], ["exchanges"], ["bindings"], ["add", "queue", "q"], ["del", "queue", "q"],
            ["purge", "q"], ["bind", "amq.direct", "q"], ["unbind", "amq.direct", "q"],
            ["consumers"], ["connections"], ["definitions", "export"],
        ):
            self.assertEqual(self.admin(*argv, "--vhost", "nope"), (1, "", refusal), argv)

    def test_secondVhost(self) -> None:
        """
        C{--vhost} adds, lists, binds, purges and deletes in that vhost
        only.
        """
        other = VirtualHosts.of(self.vhost).add("b")
        self.assertEqual(self.admin("add", "queue", "q", "--vhost", "b")[0], 0)
        self.assertIn("q", other.queues)
        self.assertNotIn("q", self.vhost.queues)
        code, out, _ = self.admin("queues", "--vhost", "b", "--json")
        self.assertEqual([q["name"] for q in json.loads(out)], ["q"])
        self.assertEqual(json.loads(self.admin("queues", "--json")[1]), [])
        self.assertEqual(
            self.admin("bind", "amq.topic", "q", "--key", "a.#", "--vhost", "b"),
            (0, "queue 'q' bound to exchange 'amq.topic' with key 'a.#' in vhost 'b'\n", ""),
        )
        self.assertEqual(len(other.exchanges["amq.topic"].bindings), 1)
        self.assertEqual(len(self.vhost.exchanges["amq.topic"].bindings), 0)
        other.publish("amq.topic", "a.b", Message.build("amq.topic", "a.b", b"x"))
        self.assertEqual(
            self.admin("purge", "q", "--vhost", "b")[1],
            "queue 'q' in vhost 'b' purged: 1 message dropped\n",
        )
        self.assertEqual(self.admin("del", "queue", "q", "--vhost", "b")[0], 0)
        self.assertNotIn("q", other.queues)

    def test_bindUnbind(self) -> None:
        """
        C{bind} binds as C{queue.bind} does (messages then route); C{unbind}
        removes exactly that binding; a second C{unbind} says there is none.
        """
        self.vhost.declareQueue("q")
        self.assertEqual(
            self.admin("bind", "amq.direct", "q", "--key", "k"),
            (0, "queue 'q' bound to exchange 'amq.direct' with key 'k'\n", ""),
        )
        self.vhost.publish("amq.direct", "k", Message.build("amq.direct", "k", b"x"))
        self.assertEqual(self.vhost.queues["q"].messageCount, 1)
        code, out, _ = self.admin("bindings", "--json")
        self.assertEqual([(b["source"], b["routingKey"]) for b in json.loads(out)], [("amq.direct", "k")])
        self.assertEqual(
            self.admin("unbind", "amq.direct", "q", "--key", "k"),
            (0, "queue 'q' unbound from exchange 'amq.direct' with key 'k'\n", ""),
        )
        self.assertEqual(self.vhost.exchanges["amq.direct"].bindings, {})
        self.assertEqual(
            self.admin("unbind", "amq.direct", "q", "--key", "k")[2],
            "qha-admin: 127.0.0.1:5673 refused: NOT_FOUND - no binding from exchange"
            " 'amq.direct' to queue 'q' with routing key 'k' in vhost '/'\n",
        )

    def test_bindArguments(self) -> None:
        """
        Binding arguments (a headers exchange's) are kept; C{unbind} needs
        the same ones.
        """
        self.vhost.declareQueue("q")
        self.assertEqual(
            self.admin("bind", "amq.headers", "q", "--argument", "x-match=all", "--argument", "n=1")[0], 0
        )
        (binding,) = self.vhost.exchanges["amq.headers"].bindings.values()
        self.assertEqual(binding.arguments, {"x-match": "all", "n": 1})
        self.assertEqual(self.admin("unbind", "amq.headers", "q", "--argument", "x-match=all")[0], 1)
        self.assertEqual(
            self.admin("unbind", "amq.headers", "q", "--argument", "x-match=all", "--argument", "n=1")[0], 0
        )

    def test_bindExchange(self) -> None:
        """
        C{--destination-type exchange} binds exchanges.
        """
        self.vhost.declareExchange("x", "fanout")
        self.assertEqual(
            self.admin("bind", "amq.direct", "x", "--destination-type", "exchange")[1],
            "exchange 'x' bound to exchange 'amq.direct' with key ''\n",
        )
        self.assertEqual(len(self.vhost.exchanges["x"].inbound), 1)
        self.assertEqual(self.admin("unbind", "amq.direct", "x", "--destination-type", "exchange")[0], 0)
        self.assertEqual(len(self.vhost.exchanges["x"].inbound), 0)

    def test_bindRefused(self) -> None:
        """
        The broker's refusals come back with RabbitMQ's texts.
        """
        self.vhost.declareQueue("q")
        self.assertEqual(
            self.admin("bind", "nope", "q")[2],
            "qha-admin: 127.0.0.1:5673 refused: NOT_FOUND - no exchange 'nope' in vhost '/'\n",
        )
        self.assertEqual(
            self.admin("bind", "", "q")[2],
            "qha-admin: 127.0.0.1:5673 refused: ACCESS_REFUSED - operation not permitted on"
            " the default exchange\n",
        )

    def test_backupRefuses(self) -> None:
        """
        A backup refuses every change, naming the primary, as C{vhost add}
        does.
        """
        self.addNode("10.0.0.1:5673", standalone=False)
        for argv, what in (
            (["purge", "q"], "purge queues"),
            (["bind", "amq.direct", "q"], "add bindings"),
            (["unbind", "amq.direct", "q"], "remove bindings"),
        ):
            self.assertEqual(
                self.admin("-b", "10.0.0.1:5673", *argv)[2],
                f"qha-admin: 10.0.0.1:5673 refused: this broker is joining: {what} on the primary\n",
            )

    def test_bounds(self) -> None:
        """
        Arguments past their bounds are refused by the broker itself (a
        client other than C{qha-admin} may send them).
        """
        for command, kwargs, message in (
            (Purge, {"queue": "q" * 256}, "a queue name of 256 bytes: at most 255 bytes are allowed"),
            (Purge, {"queue": "q", "vhost": "v" * 300}, "a vhost name of 300 bytes"),
            (Bind, {"source": "amq.direct", "destination": "q", "destinationType": "queue",
                    "routingKey": "k" * 300, "arguments": "{}"}, "a routing key of 300 bytes"),
            (Bind, {"source": "amq.direct", "destination": "q", "destinationType": "table",
                    "routingKey": "", "arguments": "{}"}, "unknown destination type 'table'"),
            (Bind, {"source": "amq.direct", "destination": "q", "destinationType": "queue",
                    "routingKey": "", "arguments": "[]"}, "binding arguments must be a JSON object"),
            (CloseConnection, {"name": "c", "reason": "r" * 300}, "a reason of 300 bytes"),
            (CloseConnection, {"name": "c" * 2000, "reason": "r"}, "a connection name of 2000 bytes"),
            (ImportDefinitions, {"definitions": b"not json"}, "the definitions are not JSON"),
            (SetOptions, {"backupTimeout": float("nan")}, "a backup timeout of nan seconds"),
            (SetOptions, {"backupTimeout": 1e9}, "give 0 to 86400"),
            (SetOptions, {"publicBrokers": "x" * 5000}, "a public URL of more than 4096 characters"),
            (ListConsumers, {"vhost": ""}, "vhost '' not found"),
        ):
            self.assertIn(message, self.refusal(command, **kwargs), command)


class ClientCommandTests(ManageTestCase):
    """
    C{connections}, C{consumers} and C{close-connection}.
    """

    def setUp(self) -> None:
        """
        One standalone broker at the default address, its clock at a
        known time.
        """
        super().setUp()
        self.node = self.addNode()
        self.clock.advance(86_400)

    def test_connections(self) -> None:
        """
        Each client connection: its name, user, peer, vhost, channels,
        TLS and when it connected; C{--vhost} shows one vhost's.
        """
        VirtualHosts.of(self.node.vhost).add("a")
        self.client()
        self.client(vhost="a")
        code, out, err = self.admin("connections")
        self.assertEqual((code, err), (0, ""))
        lines = out.splitlines()
        self.assertEqual(lines[0].split("  ")[0:1], ["name"])
        self.assertEqual(len(lines), 4)
        self.assertIn("guest  127.0.0.1:1234  /             1  no   1970-01-02 00:00:00", out)
        code, out, _ = self.admin("connections", "--vhost", "a", "--json")
        (row,) = json.loads(out)
        self.assertEqual(
            {k: row[k] for k in ("user", "vhost", "peer_host", "peer_port", "channels", "ssl", "connected_at")},
            {"user": "guest", "vhost": "a", "peer_host": "127.0.0.1", "peer_port": 1234,
             "channels": 1, "ssl": False, "connected_at": 86_400_000},
        )

    def test_consumers(self) -> None:
        """
        Each consumer of the vhost's queues: queue, tag, connection, ack
        mode, prefetch.
        """
        self.node.vhost.declareQueue("q")
        client = self.client()
        client.call(1, commands.Basic.Qos(prefetch_count=7))
        client.call(1, commands.Basic.Consume(queue="q", consumer_tag="c1"))
        client.call(1, commands.Basic.Consume(queue="q", consumer_tag="c2", no_ack=True))
        code, out, _ = self.admin("consumers", "--json")
        rows = json.loads(out)
        self.assertEqual(
            [(r["queue"]["name"], r["consumer_tag"], r["ack_required"], r["prefetch_count"]) for r in rows],
            [("q", "c1", True, 7), ("q", "c2", False, 7)],
        )
        out = self.admin("consumers")[1]
        self.assertIn("manual", out)
        self.assertIn("auto", out)
        VirtualHosts.of(self.node.vhost).add("b")
        self.assertEqual(json.loads(self.admin("consumers", "--vhost", "b", "--json")[1]), [])

    def test_closeConnection(self) -> None:
        """
        C{close-connection NAME --reason TEXT} closes it with 320
        CONNECTION_FORCED and the reason, as RabbitMQ does.
        """
        client = self.client()
        client.received()
        (row,) = json.loads(self.admin("connections", "--json")[1])
        self.assertEqual(
            self.admin("close-connection", row["name"], "--reason", "maintenance"),
            (0, f"connection '{row['name']}' closed: maintenance\n", ""),
        )
        channel, close = client.received()[-1]
        self.assertIsInstance(close, commands.Connection.Close)
        self.assertEqual((close.reply_code, close.reply_text), (320, "CONNECTION_FORCED - maintenance"))

    def test_closeUnknown(self) -> None:
        """
        A name no connection has: refused, saying where names are listed.
        """
        self.assertEqual(
            self.admin("close-connection", "nope"),
            (1, "", "qha-admin: 127.0.0.1:5673 refused: NOT_FOUND - no connection 'nope'"
                " (qha-admin connections lists their names)\n"),
        )


class DefinitionsTests(ManageTestCase):
    """
    C{definitions export} and C{definitions import}.
    """

    def setUp(self) -> None:
        """
        Two standalone brokers; the first holds objects in two vhosts.
        """
        super().setUp()
        self.source = self.addNode("10.0.0.1:5673")
        self.target = self.addNode("10.0.0.2:5673")
        vhost = self.source.vhost
        vhost.declareExchange("orders", "topic", durable=True)
        vhost.declareQueue("eu", durable=True, arguments={"x-max-length": 10})
        vhost.bindQueue("eu", "orders", "eu.#")
        other = VirtualHosts.of(vhost).add("b")
        other.declareQueue("bq", durable=True)

    def export(self, address: str, *extra: str) -> dict[str, Any]:
        """
        The definitions C{definitions export} writes to a file.
        """
        path = self.mktemp()
        code, out, err = self.admin("-b", address, "definitions", "export", path, *extra)
        self.assertEqual((code, err), (0, ""))
        with open(path) as file:
            return dict(json.load(file))

    def test_roundTrip(self) -> None:
        """
        The definitions of one broker, imported into another, make the
        same objects in the same vhosts (the missing vhost added).
        """
        exported = self.export("10.0.0.1:5673")
        self.assertEqual(sorted(v["name"] for v in exported["vhosts"]), ["/", "b"])
        path = self.mktemp()
        with open(path, "w") as file:
            json.dump(exported, file)
        self.assertEqual(
            self.admin("-b", "10.0.0.2:5673", "definitions", "import", path),
            (0, f"definitions of {path} imported into 10.0.0.2:5673: 1 exchange, 2 queues,"
                " 1 binding (1 vhost added)\n", ""),
        )
        self.assertEqual(self.export("10.0.0.2:5673"), exported)
        self.assertEqual(self.target.vhost.queues["eu"].arguments, {"x-max-length": 10})

    def test_stdout(self) -> None:
        """
        Without a file, the definitions go to standard output.
        """
        code, out, _ = self.admin("-b", "10.0.0.1:5673", "definitions", "export", "--vhost", "b")
        document = json.loads(out)
        self.assertEqual(([q["name"] for q in document["queues"]], document["vhosts"]), (["bq"], [{"name": "b"}]))

    def test_intoVhost(self) -> None:
        """
        With C{--vhost}, everything goes into that vhost, whatever the
        objects say.
        """
        exported = self.export("10.0.0.1:5673", "--vhost", "/")
        VirtualHosts.of(self.target.vhost).add("copy")
        path = self.mktemp()
        with open(path, "w") as file:
            json.dump(exported, file)
        self.assertEqual(self.admin("-b", "10.0.0.2:5673", "definitions", "import", path, "--vhost", "copy")[0], 0)
        copy = VirtualHosts.of(self.target.vhost).get("copy")
        assert copy is not None
        self.assertIn("eu", copy.queues)
        self.assertNotIn("eu", self.target.vhost.queues)

    def test_unknownVhost(self) -> None:
        """
        Objects of a vhost that neither exists nor is in the document:
        refused, and nothing is declared.
        """
        path = self.mktemp()
        with open(path, "w") as file:
            json.dump({"queues": [{"name": "a"}, {"name": "z", "vhost": "nope"}]}, file)
        code, _, err = self.admin("-b", "10.0.0.2:5673", "definitions", "import", path)
        self.assertEqual(code, 1)
        self.assertIn("NOT_FOUND - vhost 'nope' not found", err)
        self.assertNotIn("a", self.target.vhost.queues)

    def test_badFile(self) -> None:
        """
        A missing file or one that is not JSON: one line, nothing sent.
        """
        path = self.mktemp()
        self.assertEqual(
            self.admin("-b", "10.0.0.2:5673", "definitions", "import", path),
            (1, "", f"qha-admin: cannot read {path}: No such file or directory\n"),
        )
        with open(path, "w") as file:
            file.write("{")
        self.assertIn("is not JSON", self.admin("-b", "10.0.0.2:5673", "definitions", "import", path)[2])
        self.assertEqual(self.pumps, [])

    def test_backup(self) -> None:
        """
        A backup exports what it holds and refuses imports.
        """
        self.addNode("10.0.0.3:5673", standalone=False)
        self.assertEqual(self.export("10.0.0.3:5673")["queues"], [])
        path = self.mktemp()
        with open(path, "w") as file:
            file.write("{}")
        self.assertEqual(
            self.admin("-b", "10.0.0.3:5673", "definitions", "import", path)[2],
            "qha-admin: 10.0.0.3:5673 refused: this broker is joining: import definitions"
            " on the primary\n",
        )


class SetTests(ManageTestCase):
    """
    C{set}: Qpid's run-time options.
    """

    def setUp(self) -> None:
        """
        A broker of a cluster (a backup: C{set} works in every role).
        """
        super().setUp()
        self.node = self.addNode(brokers=["10.0.0.1:5673", "10.0.0.2:5673"], standalone=False)

    def test_show(self) -> None:
        """
        C{set} alone shows the settings.
        """
        self.assertEqual(
            self.admin("set"),
            (0, "backup timeout     10 s  (configured)\npublic URL         -  (configured)\n"
                "brokers URL        10.0.0.1:5673,10.0.0.2:5673  (configured)\n"
                "replicate default  none  (configured)\n", ""),
        )

    def test_backupTimeoutAndPublicURL(self) -> None:
        """
        The backup timeout and the public URL change at run time.
        """
        code, out, _ = self.admin("set", "--backup-timeout", "3", "--public-url", "amqp:tcp:a:5672,tcp:b:5672", "--json")
        self.assertEqual(code, 0)
        self.assertEqual(json.loads(out)["backupTimeout"], 3.0)
        self.assertEqual(self.node.options.backupTimeout, 3.0)
        self.assertEqual(self.node.options.publicBrokers, "a:5672,b:5672")
        self.assertEqual(self.node.expectedBackups()[1], 3.0)
        self.assertEqual(self.node.describe()["publicBrokers"], "a:5672,b:5672")

    def test_reset(self) -> None:
        """
        C{set --reset} forgets what was set at run time: the configured
        values come back, and C{set} says where each came from.
        """
        self.admin("set", "--backup-timeout", "3")
        self.assertIn("backup timeout     3 s  (set at run time; configured: 10 s)\n", self.admin("set")[1])
        code, out, _ = self.admin("set", "--reset", "--public-url", "a:5672")
        self.assertEqual(code, 0)
        self.assertEqual(self.node.options.backupTimeout, 10.0)
        self.assertEqual(self.node.options.publicBrokers, "a:5672")
        self.assertIn("backup timeout     10 s  (configured)\n", out)
        self.assertIn("public URL         a:5672  (set at run time; configured: -)\n", out)
        shown = json.loads(self.admin("set", "--json")[1])
        self.assertEqual(shown["sources"]["publicBrokers"], "run time")
        self.assertEqual(shown["configured"]["publicBrokers"], "")

    def test_refused(self) -> None:
        """
        The brokers URL cannot change at run time: the refusal names the
        option to restart with; nothing asked with it changes (the
        replicate default and the backup timeout included).
        """
        code, _, err = self.admin("set", "--replicate", "all", "--backup-timeout", "1", "--brokers-url", "a:1")
        self.assertEqual(code, 1)
        self.assertIn("restart the broker with --ha-brokers", err)
        self.assertEqual(self.node.options.backupTimeout, 10.0)
        self.assertEqual(self.node.options.replicateDefault, "none")
        self.assertIn("restart the broker with --ha-brokers", self.admin("set", "--brokers-url", "a:1")[2])
        self.assertIn("--public-url: 'x'", self.admin("set", "--public-url", "x")[2])

    def test_replicateOnBackup(self) -> None:
        """
        C{--replicate} changes a backup's own default (the one it
        replicates with once promoted); what it holds keeps its level.
        """
        self.node.vhost.declareQueue("held")
        code, out, _ = self.admin("set", "--replicate", "configuration")
        self.assertEqual(code, 0)
        self.assertIn("replicate default  configuration  (set at run time; configured: none)\n", out)
        self.assertEqual(self.node.replicateDefault, "configuration")
        rows = json.loads(self.admin("queues", "--json")[1])
        self.assertEqual([(row["name"], row["replicate"]) for row in rows], [("held", "none")])


class ReplicateAtRunTimeTests(ManageTestCase):
    """
    C{set --replicate LEVEL} on the primary: the queues and exchanges
    declared before keep their level, the ones declared after take the new
    default, and the stream, a later backup's catch-up and the listings
    agree (as Qpid's C{qpid-ha set --replicate}).
    """

    def setUp(self) -> None:
        """
        A primary (default level C{none}) of an in-memory cluster on this
        test's clock, reachable by C{qha-admin} and by AMQP clients.
        """
        from qha.test.support import InMemoryCluster

        super().setUp()
        self.cluster = InMemoryCluster(self)
        self.cluster.clock = self.clock
        self.primary = self.cluster.primary()
        self.nodes["10.0.0.1:5673"] = self.primary
        self.factories["10.0.0.1:5673"] = BrokerFactory(self.primary.vhost, permittedUsers(), self.clock)
        self.addCleanup(self.cluster.finish)

    def declare(self, client: Client, name: str) -> None:
        """
        Declare queue C{name} and publish one message to it.
        """
        from qha.test.support import publishBytes

        self.assertEqual(
            names(client.call(1, commands.Queue.Declare(queue=name))), [(1, "Queue.DeclareOk")]
        )
        client.send(publishBytes(1, "", name, name.encode()))

    def test_backupJoiningAfterChange(self) -> None:
        """
        A queue declared under C{none} before C{set --replicate all} (while
        no backup saw it) stays unreplicated; one declared after is
        replicated with its messages. A backup that joins after the change
        (catch-up) and one that was following (stream) hold the same, and
        the listings say the same.
        """
        from qha.changes import events as ev

        client = self.client("10.0.0.1:5673")
        self.declare(client, "before")
        code, out, err = self.admin("-b", "10.0.0.1:5673", "set", "--replicate", "all")
        self.assertEqual((code, err), (0, ""))
        self.assertIn("replicate default  all  (set at run time; configured: none)\n", out)
        self.declare(client, "after")

        following = self.cluster.node()
        stream = self.cluster.connect(self.primary, following)
        self.declare(client, "later")
        self.cluster.flush()
        joining = self.cluster.node()
        catchup = self.cluster.connect(self.primary, joining)
        self.cluster.flush()

        for backup in (following, joining):
            self.assertEqual(sorted(backup.vhost.queues), ["after", "later"])
            for name in ("after", "later"):
                self.assertEqual(
                    [entry.message.body for entry in backup.vhost.queues[name].readyEntries()],
                    [name.encode()],
                )
        self.assertEqual([event[1] for event in stream.events(ev.QUEUE_DECLARED)], ["after", "later"])
        [snapshot] = catchup.events(ev.SNAPSHOT)
        self.assertEqual(sorted(json.loads(snapshot[1])["queues"]), ["after", "later"])

        rows = json.loads(self.admin("-b", "10.0.0.1:5673", "queues", "--json")[1])
        self.assertEqual(
            sorted((row["name"], row["replicate"]) for row in rows),
            [("after", "all"), ("before", "none"), ("later", "all")],
        )

