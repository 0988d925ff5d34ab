"""
Tests for L{qha.web}: the management API's routing, authentication and
endpoints, and the health checks, through the resource tree with
twisted.web's L{DummyRequest} (no sockets).
"""

from __future__ import annotations

import base64
import json
from io import BytesIO
from typing import Any
from urllib.parse import unquote

from pamqp import commands
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource, getChildForRequest
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from qha.amqp.access import Permissions
from qha.amqp.protocol import BrokerFactory
from qha.amqp.users import FailedLogins, ScryptHash, SynchronousVerifier, UserDatabase
from qha.broker.vhost import VirtualHost
from qha.test.support import FAST_N, Client
from qha.testing import RecordingObserver
from qha.web.broker import ManagedBroker
from qha.web.site import managementRoot, managementSite


class FakeRole:
    """
    A role with a name, serving clients or not.
    """

    def __init__(self, name: str, servesClients: bool) -> None:
        """
        @param name: the role's name.
        @param servesClients: whether objects may change here.
        """
        self.name = name
        self.servesClients = servesClients


class FakeNode:
    """
    The node the HTTP port reads (L{qha.web.broker.ManagedNode}).
    """

    brokerId = "b1"
    epoch = 3
    replicateDefault = "none"

    def __init__(self, role: str = "standalone", servesClients: bool = True) -> None:
        """
        @param role: the role's name.
        @param servesClients: whether objects may change here.
        """
        self.role = FakeRole(role, servesClients)
        self.confirming = True
        self.confirmingAhead = True
        self.applied = 0

    def mayConfirm(self) -> bool:
        """
        Whether confirms may complete (C{confirming}).
        """
        return self.confirming

    def mayConfirmAhead(self) -> bool:
        """
        Whether confirms may complete for a while more (C{confirming} and
        C{confirmingAhead}).
        """
        return self.confirming and self.confirmingAhead

    def describe(self) -> dict[str, Any]:
        """
        A short HA state.
        """
        return {"role": self.role.name, "brokerId": self.brokerId, "epoch": self.epoch, "backups": []}

    def applyPending(self) -> None:
        """
        Count the calls.
        """
        self.applied += 1


def users(more: dict[str, dict[str, Permissions]] | None = None) -> UserDatabase:
    """
    guest (no tags: an administrator), an administrator, a monitoring user,
    a management user without permissions and a user without tags.

    @param more: permissions in other virtual hosts than C{/}, by user.
    """
    permissions: dict[str, dict[str, Permissions]] = {
        name: {"/": Permissions(".*", ".*", ".*")} for name in ["guest", "admin", "watcher", "owner"]
    }
    for name, byVhost in (more or {}).items():
        permissions.setdefault(name, {}).update(byVhost)
    names = ["guest", "admin", "watcher", "manager", "owner", "plain"]
    return UserDatabase(
        {name: ScryptHash.fromPassword(name + "pw" if name != "guest" else "guest", n=FAST_N) for name in names},
        tags={
            "admin": frozenset({"administrator"}),
            "watcher": frozenset({"monitoring"}),
            "manager": frozenset({"management"}),
            "owner": frozenset({"management"}),
        },
        permissions=permissions,
    )


class WebTestCase(SynchronousTestCase):
    """
    A broker model, its AMQP factory and the HTTP port's resource tree.
    """

    def setUp(self) -> None:
        """
        Make the broker and the resource tree.
        """
        self.clock = Clock()
        self.vhost = VirtualHost(clock=self.clock)
        self.users = self.makeUsers()
        self.factory = BrokerFactory(self.vhost, self.users, self.clock)
        self.node = FakeNode()
        self.failedLogins = FailedLogins(self.clock)
        self.broker = ManagedBroker(
            node=self.node,
            factory=self.factory,
            users=self.users,
            verifier=SynchronousVerifier(),
            clock=self.clock,
            failedLogins=self.failedLogins,
        )
        self.root: Resource = managementRoot(self.broker)

    def makeUsers(self) -> UserDatabase:
        """
        The broker's users: L{users}.
        """
        return users()

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        user: tuple[str, str] | None = ("guest", "guest"),
        host: str = "127.0.0.1",
        headers: dict[bytes, bytes] | None = None,
    ) -> DummyRequest:
        """
        Send a request through the resource tree and return it, answered.
        """
        path, _, query = path.partition("?")
        request = DummyRequest([unquote(s).encode("utf-8") for s in path.lstrip("/").split("/")])
        request.method = method.encode("ascii")
        request.client = IPv4Address("TCP", host, 40000)
        for pair in filter(None, query.split("&")):
            key, _, text = pair.partition("=")
            request.args[key.encode()] = [text.encode()]
        if user is not None:
            token = base64.b64encode(f"{user[0]}:{user[1]}".encode())
            request.requestHeaders.setRawHeaders(b"authorization", [b"Basic " + token])
        for header, value in (headers or {}).items():
            request.requestHeaders.setRawHeaders(header, [value])
        content = b"" if body is None else json.dumps(body).encode()
        request.content = BytesIO(content)  # type: ignore[attr-defined]
        resource = getChildForRequest(self.root, request)
        result = resource.render(request)
        if result is not NOT_DONE_YET:
            request.write(result)
            request.finish()
        self.clock.advance(60)
        self.assertEqual(request.finished, 1, f"{method} {path} not answered")
        return request

    def json(self, request: DummyRequest) -> Any:
        """
        The JSON body of an answer.
        """
        return json.loads(b"".join(request.written))

    def ok(self, method: str, path: str, body: Any = None, code: int = 200, **kwargs: Any) -> Any:
        """
        Call, check the status, and return the JSON body (if any).
        """
        request = self.call(method, path, body, **kwargs)
        self.assertEqual(request.responseCode, code, b"".join(request.written))
        return self.json(request) if request.written else None


class RoutingTests(WebTestCase):
    """
    Which resource answers which path and method.
    """

    def test_unknownPath(self) -> None:
        """
        An unknown API path is 404 with RabbitMQ's error body.
        """
        answer = self.ok("GET", "/api/nothing/here", code=404)
        self.assertEqual(answer["error"], "Object Not Found")

    def test_wrongMethod(self) -> None:
        """
        A known path with a method it does not take is 405 with C{Allow}.
        """
        request = self.call("POST", "/api/overview")
        self.assertEqual(request.responseCode, 405)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"allow"), [b"GET"])

    def test_trailingSlash(self) -> None:
        """
        A trailing slash names the same resource.
        """
        self.assertEqual(self.ok("GET", "/api/queues/"), [])

    def test_rootIsExtensible(self) -> None:
        """
        The root holds C{api} and C{health}; other children (C{metrics}, the
        status page) are added beside them.
        """
        self.assertLessEqual({b"api", b"health"}, set(self.root.children))
        site = managementSite(self.broker)
        self.assertIsInstance(site.resource, type(self.root))


class AuthenticationTests(WebTestCase):
    """
    HTTP basic authentication with the broker's users and tags.
    """

    def test_noCredentials(self) -> None:
        """
        Without credentials: 401 with C{WWW-Authenticate: Basic}.
        """
        request = self.call("GET", "/api/overview", user=None)
        self.assertEqual(request.responseCode, 401)
        (challenge,) = request.responseHeaders.getRawHeaders(b"www-authenticate") or []
        self.assertTrue(challenge.startswith(b"Basic realm="))

    def test_wrongPassword(self) -> None:
        """
        A wrong password is 401, logged by the shared L{FailedLogins}, and
        answered after its delay.
        """
        request = self.call("GET", "/api/overview", user=("admin", "nope"))
        self.assertEqual(request.responseCode, 401)
        self.assertEqual(self.json(request)["reason"], "Login failed")

    def test_guestIsAdministrator(self) -> None:
        """
        guest without tags is an administrator (as in RabbitMQ), from loopback.
        """
        self.assertEqual(self.ok("GET", "/api/whoami"), {"name": "guest", "tags": ["administrator"]})

    def test_guestNotFromLoopback(self) -> None:
        """
        guest from elsewhere than loopback is refused, as on the AMQP port.
        """
        request = self.call("GET", "/api/whoami", host="192.0.2.7")
        self.assertEqual(request.responseCode, 401)

    def test_noTags(self) -> None:
        """
        A user without a management tag may not use the API.
        """
        answer = self.ok("GET", "/api/overview", user=("plain", "plainpw"), code=401)
        self.assertEqual(answer["reason"], "Not management user")

    def test_monitoringReadsOnly(self) -> None:
        """
        A monitoring user reads everything and changes nothing.
        """
        self.ok("GET", "/api/queues", user=("watcher", "watcherpw"))
        self.ok("PUT", "/api/queues/%2F/q", {}, user=("watcher", "watcherpw"), code=401)
        self.ok("GET", "/api/users", user=("watcher", "watcherpw"), code=401)
        self.assertNotIn("q", self.vhost.queues)

    def test_managementWithoutPermissions(self) -> None:
        """
        A management user sees the virtual hosts it has permissions in
        (here none).
        """
        self.assertEqual(self.ok("GET", "/api/queues", user=("manager", "managerpw")), [])
        self.assertEqual(self.ok("GET", "/api/vhosts", user=("manager", "managerpw")), [])
        self.ok("GET", "/api/queues/%2F", user=("manager", "managerpw"), code=401)

    def test_administratorWrites(self) -> None:
        """
        An administrator may change objects.
        """
        self.ok("PUT", "/api/queues/%2F/q", {}, user=("admin", "adminpw"), code=201)
        self.assertIn("q", self.vhost.queues)


class QueueTests(WebTestCase):
    """
    C{/api/queues}: list, declare, delete, purge, get.
    """

    def test_declareListDelete(self) -> None:
        """
        PUT declares (201, then 204 when equivalent), GET shows RabbitMQ's
        fields, DELETE deletes.
        """
        created = self.call("PUT", "/api/queues/%2F/jobs", {"durable": False, "arguments": {"x-max-length": 5}})
        # RabbitMQ's 201 has an empty body, not JSON's null.
        self.assertEqual((created.responseCode, b"".join(created.written)), (201, b""))
        self.ok("PUT", "/api/queues/%2F/jobs", {"durable": False, "arguments": {"x-max-length": 5}}, code=204)
        (queue,) = self.ok("GET", "/api/queues/%2F")
        self.assertEqual(
            {k: queue[k] for k in ["name", "vhost", "durable", "auto_delete", "messages", "messages_ready", "messages_unacknowledged", "consumers", "arguments"]},
            {"name": "jobs", "vhost": "/", "durable": False, "auto_delete": False, "messages": 0, "messages_ready": 0, "messages_unacknowledged": 0, "consumers": 0, "arguments": {"x-max-length": 5}},
        )
        self.assertEqual(self.ok("GET", "/api/queues/%2F/jobs")["name"], "jobs")
        self.ok("DELETE", "/api/queues/%2F/jobs", code=204)
        self.assertNotIn("jobs", self.vhost.queues)
        self.ok("GET", "/api/queues/%2F/jobs", code=404)

    def test_inequivalent(self) -> None:
        """
        A declare that differs from the queue there is 400 with the
        broker's reason.
        """
        self.ok("PUT", "/api/queues/%2F/q", {"durable": True}, code=201)
        answer = self.ok("PUT", "/api/queues/%2F/q", {"durable": False}, code=400)
        self.assertIn("inequivalent arg 'durable'", answer["reason"])

    def test_otherVhost(self) -> None:
        """
        A virtual host that does not exist is 404 (the others are in
        L{SecondVhostTests}).
        """
        self.ok("GET", "/api/queues/other", code=404)

    def test_changesReachObservers(self) -> None:
        """
        Changes go through the virtual host's methods, so the store and the
        replication stream (its observers) see them.
        """
        observer = RecordingObserver()
        self.vhost.observers.append(observer)
        self.ok("PUT", "/api/queues/%2F/q", {}, code=201)
        self.ok("POST", "/api/exchanges/%2F/amq.default/publish", {"routing_key": "q", "payload": "x", "payload_encoding": "string", "properties": {}})
        self.ok("DELETE", "/api/queues/%2F/q", code=204)
        self.assertEqual([event[0] for event in observer.events], ["queueDeclared", "enqueued", "queueDeleted"])

    def test_publishGetRequeue(self) -> None:
        """
        Published messages are got back with their properties; with
        C{ack_requeue_true} they stay, redelivered; with
        C{ack_requeue_false} they go.
        """
        self.ok("PUT", "/api/queues/%2F/q", {}, code=201)
        routed = self.ok(
            "POST", "/api/exchanges/%2F/amq.default/publish",
            {"routing_key": "q", "payload": "aGk=", "payload_encoding": "base64",
             "properties": {"delivery_mode": 2, "headers": {"h": "v"}, "type": "t"}},
        )
        self.assertEqual(routed, {"routed": True})
        (first,) = self.ok("POST", "/api/queues/%2F/q/get", {"count": 5, "ackmode": "ack_requeue_true", "encoding": "auto"})
        self.assertEqual(
            (first["payload"], first["payload_encoding"], first["redelivered"], first["routing_key"], first["properties"]),
            ("hi", "string", False, "q", {"delivery_mode": 2, "headers": {"h": "v"}, "type": "t"}),
        )
        (again,) = self.ok("POST", "/api/queues/%2F/q/get", {"count": 1, "ackmode": "ack_requeue_false", "encoding": "base64"})
        self.assertEqual((again["payload"], again["payload_encoding"], again["redelivered"]), ("aGk=", "base64", True))
        self.assertEqual(self.vhost.queues["q"].messageCount, 0)
        self.assertEqual(self.ok("POST", "/api/queues/%2F/q/get", {"count": 1, "ackmode": "ack_requeue_false"}), [])

    def test_unrouted(self) -> None:
        """
        A publish no queue takes answers C{routed: false}.
        """
        self.assertEqual(
            self.ok("POST", "/api/exchanges/%2F/amq.direct/publish", {"routing_key": "none", "payload": "x", "payload_encoding": "string", "properties": {}}),
            {"routed": False},
        )

    def test_purge(self) -> None:
        """
        DELETE .../contents drops the ready messages.
        """
        self.ok("PUT", "/api/queues/%2F/q", {}, code=201)
        for _ in range(3):
            self.ok("POST", "/api/exchanges/%2F/amq.default/publish", {"routing_key": "q", "payload": "x", "payload_encoding": "string", "properties": {}})
        self.assertEqual(self.ok("GET", "/api/queues/%2F/q")["messages"], 3)
        self.ok("DELETE", "/api/queues/%2F/q/contents", code=204)
        self.assertEqual(self.ok("GET", "/api/queues/%2F/q")["messages"], 0)

    def test_deleteIfEmpty(self) -> None:
        """
        C{if-empty=true} refuses to delete a queue with messages.
        """
        self.ok("PUT", "/api/queues/%2F/q", {}, code=201)
        self.ok("POST", "/api/exchanges/%2F/amq.default/publish", {"routing_key": "q", "payload": "x", "payload_encoding": "string", "properties": {}})
        self.ok("DELETE", "/api/queues/%2F/q?if-empty=true", code=400)
        self.assertIn("q", self.vhost.queues)

    def test_badBody(self) -> None:
        """
        A body that is not JSON is 400.
        """
        request = DummyRequest([b"api", b"queues", b"/", b"q"])
        request.method = b"PUT"
        request.client = IPv4Address("TCP", "127.0.0.1", 1)
        request.requestHeaders.setRawHeaders(b"authorization", [b"Basic " + base64.b64encode(b"guest:guest")])
        request.content = BytesIO(b"{nope")  # type: ignore[attr-defined]
        getChildForRequest(self.root, request).render(request)
        self.assertEqual(request.responseCode, 400)

    def test_writeOnBackup(self) -> None:
        """
        On a backup, changes are refused with 503 (make them on the
        primary); reads work and apply what the link holds first.
        """
        self.node.role = FakeRole("ready", False)
        answer = self.ok("PUT", "/api/queues/%2F/q", {}, code=503)
        self.assertIn("on the primary", answer["reason"])
        self.ok("GET", "/api/queues")
        self.assertGreater(self.node.applied, 0)


class ExchangeAndBindingTests(WebTestCase):
    """
    C{/api/exchanges} and C{/api/bindings}.
    """

    def test_exchanges(self) -> None:
        """
        PUT declares, GET lists (the default exchange by its empty name),
        DELETE deletes; built-in exchanges cannot be deleted.
        """
        self.ok("PUT", "/api/exchanges/%2F/logs", {"type": "fanout", "durable": True}, code=201)
        names = [x["name"] for x in self.ok("GET", "/api/exchanges")]
        self.assertEqual(names, ["", "amq.direct", "amq.fanout", "amq.headers", "amq.match", "amq.topic", "logs"])
        self.assertEqual(self.ok("GET", "/api/exchanges/%2F/logs")["type"], "fanout")
        self.assertEqual(self.ok("GET", "/api/exchanges/%2F/amq.default")["name"], "")
        self.ok("DELETE", "/api/exchanges/%2F/logs", code=204)
        self.ok("DELETE", "/api/exchanges/%2F/amq.direct", code=403)
        self.ok("PUT", "/api/exchanges/%2F/x", {}, code=400)

    def test_bindings(self) -> None:
        """
        POST binds (201, C{Location} the binding's properties key), GET
        lists, DELETE of the properties key unbinds.
        """
        self.ok("PUT", "/api/queues/%2F/q", {}, code=201)
        request = self.call("POST", "/api/bindings/%2F/e/amq.topic/q/q", {"routing_key": "a.#", "arguments": {}})
        self.assertEqual((request.responseCode, b"".join(request.written)), (201, b""))
        self.assertEqual(request.responseHeaders.getRawHeaders(b"location"), [b"a.%23"])
        (binding,) = self.ok("GET", "/api/bindings/%2F/e/amq.topic/q/q")
        self.assertEqual(
            binding,
            {"source": "amq.topic", "vhost": "/", "destination": "q", "destination_type": "queue", "routing_key": "a.#", "arguments": {}, "properties_key": "a.#"},
        )
        self.assertEqual(len(self.ok("GET", "/api/bindings")), 2)
        self.assertEqual(len(self.ok("GET", "/api/queues/%2F/q/bindings")), 2)
        self.assertEqual(len(self.ok("GET", "/api/exchanges/%2F/amq.topic/bindings/source")), 1)
        self.ok("DELETE", "/api/bindings/%2F/e/amq.topic/q/q/a.%23", code=204)
        self.assertEqual(self.ok("GET", "/api/bindings/%2F/e/amq.topic/q/q"), [])

    def test_bindingWithArguments(self) -> None:
        """
        A binding with arguments has a properties key of its own.
        """
        self.ok("PUT", "/api/queues/%2F/q", {}, code=201)
        self.ok("POST", "/api/bindings/%2F/e/amq.headers/q/q", {"routing_key": "", "arguments": {"x-match": "all", "a": "1"}}, code=201)
        (binding,) = self.ok("GET", "/api/bindings/%2F/e/amq.headers/q/q")
        self.assertTrue(binding["properties_key"].startswith("~"))
        self.ok("DELETE", "/api/bindings/%2F/e/amq.headers/q/q/" + binding["properties_key"], code=204)
        self.assertEqual(self.vhost.exchanges["amq.headers"].bindings, {})

    def test_exchangeToExchange(self) -> None:
        """
        C{.../e/SOURCE/e/DESTINATION} binds exchanges.
        """
        self.ok("PUT", "/api/exchanges/%2F/x", {"type": "fanout"}, code=201)
        self.ok("POST", "/api/bindings/%2F/e/amq.direct/e/x", {"routing_key": "k"}, code=201)
        self.assertEqual(len(self.ok("GET", "/api/exchanges/%2F/x/bindings/destination")), 1)


class ConnectionTests(WebTestCase):
    """
    C{/api/connections}, C{/api/channels}, C{/api/consumers}.
    """

    def connect(self) -> Client:
        """
        An AMQP client logged in as admin, with channel 1 open.
        """
        client = Client(self.factory)
        client.handshake(response="\0admin\0adminpw")
        client.openChannel(1)
        self.addCleanup(client.disconnect)
        return client

    def test_listAndClose(self) -> None:
        """
        A connection, its channel and its consumer are listed with
        RabbitMQ's fields; DELETE closes the connection with 320.
        """
        self.vhost.declareQueue("q")
        client = self.connect()
        client.call(1, commands.Basic.Consume(queue="q", consumer_tag="c1"))
        (connection,) = self.ok("GET", "/api/connections")
        self.assertEqual((connection["user"], connection["vhost"], connection["channels"]), ("admin", "/", 1))
        (channel,) = self.ok("GET", "/api/channels")
        self.assertEqual((channel["number"], channel["consumer_count"]), (1, 1))
        (consumer,) = self.ok("GET", "/api/consumers")
        self.assertEqual((consumer["consumer_tag"], consumer["queue"]), ("c1", {"name": "q", "vhost": "/"}))
        self.assertEqual(self.ok("GET", "/api/overview")["object_totals"]["consumers"], 1)
        from urllib.parse import quote

        self.ok("DELETE", "/api/connections/" + quote(connection["name"], safe=""), code=204)
        self.assertIn(b"CONNECTION_FORCED", client.transport.value())

    def test_managementSeesOwnOnly(self) -> None:
        """
        A management user sees only its own connections.
        """
        self.connect()
        self.assertEqual(self.ok("GET", "/api/connections", user=("owner", "ownerpw")), [])
        self.assertEqual(len(self.ok("GET", "/api/connections", user=("admin", "adminpw"))), 1)


class OtherEndpointTests(WebTestCase):
    """
    Overview, nodes, users, permissions, definitions, alarms, aliveness,
    C{/api/ha}.
    """

    def test_overview(self) -> None:
        """
        The overview says what qha is, and its totals.
        """
        self.vhost.declareQueue("q")
        overview = self.ok("GET", "/api/overview")
        self.assertEqual(overview["product_name"], "qha")
        self.assertEqual(overview["object_totals"]["queues"], 1)
        self.assertEqual(overview["queue_totals"]["messages"], 0)
        self.assertEqual(self.ok("GET", "/api/nodes")[0]["name"], "qha@b1")
        self.assertEqual(self.ok("GET", "/api/vhosts")[0]["name"], "/")

    def test_usersAndPermissions(self) -> None:
        """
        The users of the users file (no hashes) and their permissions.
        """
        names = {u["name"]: u["tags"] for u in self.ok("GET", "/api/users")}
        self.assertEqual(names["admin"], ["administrator"])
        self.assertEqual(names["guest"], ["administrator"])
        self.assertEqual(self.ok("GET", "/api/users/admin")["password_hash"], "")
        permissions = self.ok("GET", "/api/permissions")
        self.assertIn({"user": "admin", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}, permissions)

    def test_definitionsRoundTrip(self) -> None:
        """
        The exported definitions, imported into an empty broker, make the
        same queues, exchanges and bindings.
        """
        self.ok("PUT", "/api/exchanges/%2F/x", {"type": "topic"}, code=201)
        self.ok("PUT", "/api/queues/%2F/q", {"arguments": {"x-max-length": 2}}, code=201)
        self.ok("POST", "/api/bindings/%2F/e/x/q/q", {"routing_key": "k"}, code=201)
        exported = self.ok("GET", "/api/definitions")
        self.assertEqual([q["name"] for q in exported["queues"]], ["q"])
        self.assertEqual([x["name"] for x in exported["exchanges"]], ["x"])
        self.assertEqual([(b["source"], b["destination"]) for b in exported["bindings"]], [("x", "q")])
        self.setUp()
        self.ok("POST", "/api/definitions", exported, code=204)
        self.assertEqual(self.vhost.queues["q"].arguments, {"x-max-length": 2})
        self.assertEqual(self.vhost.exchanges["x"].type, "topic")
        self.assertEqual(len(self.vhost.exchanges["x"].bindings), 1)

    def addVhosts(self, *names: str) -> dict[str, VirtualHost]:
        """
        Add virtual hosts C{names} to the broker, each with a queue named
        after it (C{q-NAME}).
        """
        from qha.broker.vhosts import VirtualHosts

        registry = VirtualHosts.of(self.vhost)
        added = {}
        for name in names:
            added[name] = registry.add(name)
            added[name].declareQueue(f"q-{name}")
        return added

    def test_definitionsEveryVhost(self) -> None:
        """
        C{GET /api/definitions} exports every virtual host (RabbitMQ's
        export): the objects, each with its vhost, the vhosts, and the
        permissions in all of them; C{GET /api/definitions/VHOST} one; an
        unknown one is 404.
        """
        self.vhost.declareQueue("q-root")
        self.addVhosts("b", "a")
        exported = self.ok("GET", "/api/definitions")
        self.assertEqual([v["name"] for v in exported["vhosts"]], ["/", "a", "b"])
        self.assertEqual(
            sorted((q["vhost"], q["name"]) for q in exported["queues"]),
            [("/", "q-root"), ("a", "q-a"), ("b", "q-b")],
        )
        from qha.management.definitions import permissionViews

        self.assertEqual(exported["permissions"], permissionViews(self.users, ["/", "a", "b"]))
        self.assertIn({"user": "admin", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}, exported["permissions"])
        one = self.ok("GET", "/api/definitions/a")
        self.assertEqual([v["name"] for v in one["vhosts"]], ["a"])
        self.assertEqual([(q["vhost"], q["name"]) for q in one["queues"]], [("a", "q-a")])
        self.assertEqual([q["name"] for q in self.ok("GET", "/api/definitions/%2F")["queues"]], ["q-root"])
        self.assertEqual(self.ok("GET", "/api/definitions/nope", code=404)["reason"], "Not Found")

    def test_importEveryVhost(self) -> None:
        """
        The export of several virtual hosts, imported into an empty broker
        with C{POST /api/definitions}, adds the virtual hosts and declares
        each object in its own.
        """
        from qha.broker.vhosts import VirtualHosts

        added = self.addVhosts("a", "b")
        added["a"].declareExchange("xa", "fanout")
        added["a"].bindQueue("q-a", "xa", "")
        exported = self.ok("GET", "/api/definitions")
        self.setUp()
        self.ok("POST", "/api/definitions", exported, code=204)
        registry = VirtualHosts.of(self.vhost)
        self.assertEqual(sorted(registry.names()), ["/", "a", "b"])
        self.assertEqual(list(registry.get("a").queues), ["q-a"])  # type: ignore[union-attr]
        self.assertEqual(list(registry.get("b").queues), ["q-b"])  # type: ignore[union-attr]
        self.assertEqual(len(registry.get("a").exchanges["xa"].bindings), 1)  # type: ignore[union-attr]
        self.assertEqual(list(self.vhost.queues), [])

    def test_importIntoOneVhost(self) -> None:
        """
        C{POST /api/definitions/VHOST} declares everything in C{VHOST},
        whatever vhost the objects name; an unknown C{VHOST} is 404 and
        declares nothing.
        """
        added = self.addVhosts("a", "b")
        document = {"queues": [{"name": "moved", "vhost": "a"}, {"name": "plain"}]}
        self.ok("POST", "/api/definitions/b", document, code=204)
        self.assertEqual(sorted(added["b"].queues), ["moved", "plain", "q-b"])
        self.assertEqual(list(added["a"].queues), ["q-a"])
        self.assertEqual(self.ok("POST", "/api/definitions/nope", document, code=404)["reason"], "Not Found")
        self.assertEqual(list(self.vhost.queues), [])

    def test_importUnknownVhost(self) -> None:
        """
        A document with objects of a virtual host that neither exists nor
        is in its C{vhosts} section is refused (400) and declares nothing,
        not even the objects of the virtual hosts that exist.
        """
        document = {"queues": [{"name": "fine", "vhost": "/"}, {"name": "lost", "vhost": "nope"}]}
        answer = self.ok("POST", "/api/definitions", document, code=400)
        self.assertIn("vhost 'nope' not found", answer["reason"])
        self.assertEqual(list(self.vhost.queues), [])
        document["vhosts"] = [{"name": "nope"}]
        self.ok("POST", "/api/definitions", document, code=204)
        self.assertEqual(list(self.vhost.queues), ["fine"])

    def test_alarms(self) -> None:
        """
        No alarm: 200 ok; a memory alarm: 503.
        """
        self.assertEqual(self.ok("GET", "/api/health/checks/alarms"), {"status": "ok"})
        self.vhost.resources.blocked = True
        self.assertEqual(self.ok("GET", "/api/health/checks/alarms", code=503)["status"], "failed")

    def test_aliveness(self) -> None:
        """
        The aliveness test publishes and gets a message.
        """
        self.assertEqual(self.ok("GET", "/api/aliveness-test/%2F"), {"status": "ok"})
        self.assertEqual(self.vhost.queues["aliveness-test"].messageCount, 0)

    def test_ha(self) -> None:
        """
        C{/api/ha} is the node's description and whether it may confirm.
        """
        self.assertEqual(
            self.ok("GET", "/api/ha"),
            {"role": "standalone", "brokerId": "b1", "epoch": 3, "backups": [], "mayConfirm": True},
        )


NOT_FOUND = {"error": "Object Not Found", "reason": "Not Found"}
"""
RabbitMQ's answer for a virtual host that does not exist.
"""


class SecondVhostTests(WebTestCase):
    """
    Every route family in a virtual host other than C{/} (C{vh2}, or
    C{vh/2} whose name arrives URL-encoded): the objects are that virtual
    host's, never C{/}'s; a virtual host that does not exist is RabbitMQ's
    404; a management user sees only the virtual hosts it has permissions
    in.
    """

    def makeUsers(self) -> UserDatabase:
        """
        L{users}, with C{admin}'s permissions in C{vh2} too (C{owner}, a
        management user with permissions in C{/}, has none there).
        """
        return users({"admin": {"vh2": Permissions(".*", "", ".*")}})

    def setUp(self) -> None:
        """
        Add C{vh2} and C{vh/2}.
        """
        super().setUp()
        from qha.broker.vhosts import VirtualHosts

        self.registry = VirtualHosts.of(self.vhost)
        self.vh2 = self.registry.add("vh2")
        self.slashed = self.registry.add("vh/2")

    def test_queues(self) -> None:
        """
        PUT, GET, the listings, bindings, purge, get and DELETE of a queue
        of C{vh2} act on C{vh2} alone.
        """
        self.ok("PUT", "/api/queues/vh2/jobs", {"durable": False}, code=201)
        self.ok("PUT", "/api/queues/vh2/jobs", {"durable": False}, code=204)
        self.assertIn("jobs", self.vh2.queues)
        self.assertNotIn("jobs", self.vhost.queues)
        self.vhost.declareQueue("root-q")
        everything = self.ok("GET", "/api/queues")
        self.assertEqual(
            [(q["vhost"], q["name"]) for q in everything], [("/", "root-q"), ("vh2", "jobs")]
        )
        self.assertEqual([q["name"] for q in self.ok("GET", "/api/queues/vh2")], ["jobs"])
        self.assertEqual([q["name"] for q in self.ok("GET", "/api/queues/%2F")], ["root-q"])
        self.assertEqual(self.ok("GET", "/api/queues/vh2/jobs")["vhost"], "vh2")
        self.ok("GET", "/api/queues/%2F/jobs", code=404)
        (binding,) = self.ok("GET", "/api/queues/vh2/jobs/bindings")
        self.assertEqual((binding["vhost"], binding["source"]), ("vh2", ""))
        self.vh2.publish("", "jobs", _message("jobs", b"one"))
        self.vh2.publish("", "jobs", _message("jobs", b"two"))
        (got,) = self.ok("POST", "/api/queues/vh2/jobs/get", {"count": 1, "ackmode": "ack_requeue_false", "encoding": "auto"})
        self.assertEqual(got["payload"], "one")
        self.ok("DELETE", "/api/queues/vh2/jobs/contents", code=204)
        self.assertEqual(self.vh2.queues["jobs"].messageCount, 0)
        self.ok("DELETE", "/api/queues/vh2/jobs", code=204)
        self.assertNotIn("jobs", self.vh2.queues)
        self.assertIn("root-q", self.vhost.queues)

    def test_encodedName(self) -> None:
        """
        A virtual host whose name holds C{/} arrives URL-encoded
        (C{vh%2F2}).
        """
        self.ok("PUT", "/api/queues/vh%2F2/q", {}, code=201)
        self.assertIn("q", self.slashed.queues)
        self.assertEqual(self.ok("GET", "/api/queues/vh%2F2/q")["vhost"], "vh/2")

    def test_exchangesAndPublish(self) -> None:
        """
        PUT, GET, the listings, the bindings of an exchange, publishing
        to it and DELETE, in C{vh2}.
        """
        self.ok("PUT", "/api/exchanges/vh2/events", {"type": "fanout"}, code=201)
        self.assertIn("events", self.vh2.exchanges)
        self.assertNotIn("events", self.vhost.exchanges)
        self.ok("GET", "/api/exchanges/%2F/events", code=404)
        self.assertEqual(self.ok("GET", "/api/exchanges/vh2/events")["vhost"], "vh2")
        names = [(x["vhost"], x["name"]) for x in self.ok("GET", "/api/exchanges")]
        self.assertIn(("vh2", "events"), names)
        self.assertIn(("/", "amq.topic"), names)
        self.assertEqual({x["vhost"] for x in self.ok("GET", "/api/exchanges/vh2")}, {"vh2"})
        self.vh2.declareQueue("sink")
        self.ok("POST", "/api/bindings/vh2/e/events/q/sink", {"routing_key": ""}, code=201)
        self.assertEqual([b["destination"] for b in self.ok("GET", "/api/exchanges/vh2/events/bindings/source")], ["sink"])
        self.assertEqual(self.ok("GET", "/api/exchanges/vh2/events/bindings/destination"), [])
        answer = self.ok("POST", "/api/exchanges/vh2/events/publish", {"routing_key": "", "payload": "hi", "payload_encoding": "string", "properties": {}})
        self.assertEqual(answer, {"routed": True})
        self.assertEqual(self.vh2.queues["sink"].messageCount, 1)
        self.ok("DELETE", "/api/exchanges/vh2/events", code=204)
        self.assertNotIn("events", self.vh2.exchanges)

    def test_bindings(self) -> None:
        """
        The binding routes (to a queue and to an exchange, listed, one by
        its properties key, deleted) act on C{vh2}'s objects.
        """
        self.vh2.declareQueue("q")
        self.vh2.declareExchange("x", "direct")
        self.vhost.declareQueue("q")
        self.ok("POST", "/api/bindings/vh2/e/amq.direct/q/q", {"routing_key": "k"}, code=201)
        self.ok("POST", "/api/bindings/vh2/e/amq.direct/e/x", {"routing_key": "k2"}, code=201)
        self.assertEqual(self.vhost.exchanges["amq.direct"].bindings, {})
        (toQueue,) = self.ok("GET", "/api/bindings/vh2/e/amq.direct/q/q")
        self.assertEqual((toQueue["vhost"], toQueue["routing_key"]), ("vh2", "k"))
        (toExchange,) = self.ok("GET", "/api/bindings/vh2/e/amq.direct/e/x")
        self.assertEqual(toExchange["destination_type"], "exchange")
        self.assertEqual(self.ok("GET", "/api/bindings/vh2/e/amq.direct/q/q/k")["vhost"], "vh2")
        listed = [(b["vhost"], b["source"], b["destination"]) for b in self.ok("GET", "/api/bindings/vh2")]
        self.assertEqual(sorted(listed), [("vh2", "", "q"), ("vh2", "amq.direct", "q"), ("vh2", "amq.direct", "x")])
        everywhere = {b["vhost"] for b in self.ok("GET", "/api/bindings")}
        self.assertEqual(everywhere, {"/", "vh2"})
        self.ok("GET", "/api/bindings/%2F/e/amq.direct/q/q/k", code=404)
        self.ok("DELETE", "/api/bindings/vh2/e/amq.direct/q/q/k", code=204)
        self.ok("DELETE", "/api/bindings/vh2/e/amq.direct/e/x/k2", code=204)
        self.assertEqual(self.vh2.exchanges["amq.direct"].bindings, {})

    def test_aliveness(self) -> None:
        """
        The aliveness test of C{vh2} runs in C{vh2}.
        """
        self.assertEqual(self.ok("GET", "/api/aliveness-test/vh2"), {"status": "ok"})
        self.assertIn("aliveness-test", self.vh2.queues)
        self.assertNotIn("aliveness-test", self.vhost.queues)

    def test_vhosts(self) -> None:
        """
        C{/api/vhosts} lists every virtual host; one is read by its name;
        PUT adds one (201, then 204) and DELETE deletes it, through the
        registry whose observers (the store, the replication) hear of it.
        """
        self.assertEqual([v["name"] for v in self.ok("GET", "/api/vhosts")], ["/", "vh/2", "vh2"])
        self.vh2.declareQueue("q")
        self.vh2.publish("", "q", _message("q", b"x"))
        self.assertEqual(self.ok("GET", "/api/vhosts/vh2")["messages"], 1)
        self.ok("PUT", "/api/vhosts/vh3", code=201)
        self.ok("PUT", "/api/vhosts/vh3", code=204)
        self.assertIn("vh3", self.registry)
        self.ok("DELETE", "/api/vhosts/vh3", code=204)
        self.assertNotIn("vh3", self.registry)
        self.assertEqual(self.ok("DELETE", "/api/vhosts/vh3", code=404), NOT_FOUND)
        self.ok("DELETE", "/api/vhosts/%2F", code=400)
        self.ok("PUT", "/api/vhosts/vh4", user=("watcher", "watcherpw"), code=401)

    def test_unknownVhost(self) -> None:
        """
        A virtual host that does not exist is RabbitMQ's 404 on every route
        family, and nothing is made.
        """
        calls = [
            ("GET", "/api/queues/nope"),
            ("GET", "/api/queues/nope/q"),
            ("PUT", "/api/queues/nope/q"),
            ("DELETE", "/api/queues/nope/q"),
            ("GET", "/api/queues/nope/q/bindings"),
            ("DELETE", "/api/queues/nope/q/contents"),
            ("POST", "/api/queues/nope/q/get"),
            ("GET", "/api/exchanges/nope"),
            ("GET", "/api/exchanges/nope/x"),
            ("PUT", "/api/exchanges/nope/x"),
            ("DELETE", "/api/exchanges/nope/x"),
            ("GET", "/api/exchanges/nope/x/bindings/source"),
            ("POST", "/api/exchanges/nope/amq.default/publish"),
            ("GET", "/api/bindings/nope"),
            ("GET", "/api/bindings/nope/e/amq.direct/q/q"),
            ("POST", "/api/bindings/nope/e/amq.direct/q/q"),
            ("GET", "/api/bindings/nope/e/amq.direct/q/q/k"),
            ("DELETE", "/api/bindings/nope/e/amq.direct/q/q/k"),
            ("GET", "/api/consumers/nope"),
            ("GET", "/api/vhosts/nope"),
            ("GET", "/api/aliveness-test/nope"),
        ]
        for method, path in calls:
            body = {"type": "direct"} if "exchanges" in path and method == "PUT" else {}
            self.assertEqual(self.ok(method, path, body, code=404), NOT_FOUND, f"{method} {path}")
        self.assertNotIn("nope", self.registry)

    def test_permissionsPerVhost(self) -> None:
        """
        A management user with permissions in C{/} only sees C{/}'s
        objects in the listings, and is refused (401 C{not_authorised})
        C{vh2}'s; an administrator and a monitoring user see both.
        """
        self.vh2.declareQueue("secret")
        self.vhost.declareQueue("open")
        owner = ("owner", "ownerpw")
        self.assertEqual([q["name"] for q in self.ok("GET", "/api/queues", user=owner)], ["open"])
        self.assertEqual([v["name"] for v in self.ok("GET", "/api/vhosts", user=owner)], ["/"])
        self.assertEqual({x["vhost"] for x in self.ok("GET", "/api/exchanges", user=owner)}, {"/"})
        self.assertEqual({b["vhost"] for b in self.ok("GET", "/api/bindings", user=owner)}, {"/"})
        for path in ["/api/queues/vh2", "/api/queues/vh2/secret", "/api/exchanges/vh2",
                     "/api/bindings/vh2", "/api/vhosts/vh2", "/api/consumers/vh2"]:
            answer = self.ok("GET", path, user=owner, code=401)
            self.assertEqual(answer["error"], "not_authorised", path)
        self.assertEqual(self.ok("GET", "/api/overview", user=owner)["object_totals"]["queues"], 1)
        for user in [("admin", "adminpw"), ("watcher", "watcherpw")]:
            self.assertEqual(len(self.ok("GET", "/api/queues", user=user)), 2)
        self.assertEqual(self.ok("GET", "/api/overview")["object_totals"]["queues"], 2)

    def test_permissionsListing(self) -> None:
        """
        C{/api/permissions} lists the permissions in every virtual host.
        """
        rows = self.ok("GET", "/api/permissions")
        self.assertIn({"user": "admin", "vhost": "vh2", "configure": ".*", "write": "", "read": ".*"}, rows)

    def test_changesReachObservers(self) -> None:
        """
        Changes in C{vh2} go through C{vh2}'s methods, the ones AMQP
        clients of C{vh2} reach: its observers (the store, the
        replication stream) see them, C{/}'s see nothing.
        """
        observer = RecordingObserver()
        rootObserver = RecordingObserver()
        self.vh2.observers.append(observer)
        self.vhost.observers.append(rootObserver)
        self.ok("PUT", "/api/queues/vh2/q", {}, code=201)
        self.ok("POST", "/api/exchanges/vh2/amq.default/publish", {"routing_key": "q", "payload": "x", "payload_encoding": "string", "properties": {}})
        self.ok("POST", "/api/bindings/vh2/e/amq.fanout/q/q", {}, code=201)
        self.ok("DELETE", "/api/queues/vh2/q", code=204)
        self.assertEqual(
            [event[0] for event in observer.events],
            ["queueDeclared", "enqueued", "bound", "unbound", "queueDeleted"],
        )
        self.assertEqual(rootObserver.events, [])

    def test_consumersOfVhost(self) -> None:
        """
        C{/api/consumers/VHOST} lists the consumers of the connections to
        that virtual host, each with its queue's virtual host.
        """
        self.vh2.declareQueue("q")
        client = Client(self.factory)
        client.handshake(response="\0admin\0adminpw", vhost="vh2")
        client.openChannel(1)
        self.addCleanup(client.disconnect)
        client.call(1, commands.Basic.Consume(queue="q", consumer_tag="c2"))
        (consumer,) = self.ok("GET", "/api/consumers/vh2")
        self.assertEqual(consumer["queue"], {"name": "q", "vhost": "vh2"})
        self.assertEqual(self.ok("GET", "/api/consumers/%2F"), [])
        self.assertEqual(len(self.ok("GET", "/api/consumers")), 1)


def _message(routingKey: str, body: bytes) -> Any:
    """
    A message for the default exchange, as a client publishes it.
    """
    from qha.broker.message import Message

    return Message.build("", routingKey, body)


class HealthTests(WebTestCase):
    """
    C{/health/*}: no credentials, one status line.
    """

    def status(self, path: str) -> tuple[int, bytes]:
        """
        The status and body of a health check, asked without credentials.
        """
        request = self.call("GET", path, user=None)
        return request.responseCode or 200, b"".join(request.written)

    def test_standalone(self) -> None:
        """
        A standalone broker is a primary, and live; not a replica.
        """
        self.assertEqual(self.status("/health/primary"), (200, b"primary: standalone\n"))
        self.assertEqual(self.status("/health/live")[0], 200)
        self.assertEqual(self.status("/health/replica")[0], 503)

    def test_activePrimary(self) -> None:
        """
        An active primary that may confirm is 200; one that may not (fenced,
        past its lease) is 503.
        """
        self.node.role = FakeRole("active", True)
        self.assertEqual(self.status("/health/primary")[0], 200)
        self.node.confirming = False
        code, line = self.status("/health/primary")
        self.assertEqual(code, 503)
        self.assertIn(b"may not confirm", line)

    def test_leaseRunningOut(self) -> None:
        """
        An active primary that may confirm now but whose lease runs out
        soon (keepalives failing) is already 503, so that a load balancer
        drains it before it stops confirming.
        """
        self.node.role = FakeRole("active", True)
        self.node.confirmingAhead = False
        code, line = self.status("/health/primary")
        self.assertEqual(code, 503)
        self.assertIn(b"lease runs out", line)

    def test_recoveringAndBackups(self) -> None:
        """
        A recovering primary and every backup role are 503 on
        C{/health/primary}; only a ready backup is 200 on C{/health/replica}.
        """
        for role, replica in [("recovering", 503), ("joining", 503), ("catchup", 503), ("ready", 200)]:
            self.node.role = FakeRole(role, role == "recovering")
            self.assertEqual(self.status("/health/primary"), (503, f"not the primary: {role}\n".encode()))
            self.assertEqual(self.status("/health/replica")[0], replica)
