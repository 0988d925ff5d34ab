"""
RabbitMQ's management API (C{/api/...}) for the part tools use
(C{rabbitmqadmin}, pyrabbit, monitoring scripts), and qha's own C{/api/ha}.

One leaf resource routes by method and path (L{ROUTES}); every request
logs in first (L{BasicAuthenticator}). Changes go through the virtual
host's methods, the ones AMQP clients reach, so they are replicated to
the backups and written to the store like any other; on a backup they
are refused with 503 (change objects on the primary).

Every route serves every virtual host: one named in the URL (decoded,
C{%2F} is C{/}; RabbitMQ's 404 C{Not Found} if it does not exist, 401
C{not_authorised} if the caller may not see it), or, for a listing
without one, every virtual host the caller may see.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import quote

from pamqp import commands
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from .. import __version__
from ..amqp.protocol import AMQPServer
from ..broker.errors import AccessRefused, AMQPError, ConnectionForced, NotFound, ResourceLocked
from ..broker.exchange import Binding
from ..broker.message import Message
from ..broker.queue import Queue
from ..broker.vhost import PublishRefused, VirtualHost
from ..broker.vhosts import VirtualHosts
from ..management.definitions import (
    MANAGEMENT_VERSION,
    DefinitionsRefused,
    exportDefinitions,
    flag,
    importInto,
    permissionViews,
    table,
    userView,
    vhostsOf,
)
from .auth import REALM, BasicAuthenticator, Caller
from .broker import ManagedBroker
from .rates import messageStats
from .views import (
    DEFAULT_EXCHANGE_ALIAS,
    allBindings,
    bindingView,
    channelViews,
    connectionName,
    connectionView,
    consumerViews,
    dumps,
    exchangeView,
    messageView,
    propertiesKey,
    queueView,
)

READ = "read"
ADMIN_READ = "admin-read"
WRITE = "write"

_REPLIES_KEY = "direct-reply-to "
"""
The rates' key of a virtual host's direct replies (then its name): no
queue's (those are queue ids).
"""

_PROPERTY_NAMES = {
    "content_type", "content_encoding", "headers", "delivery_mode", "priority",
    "correlation_id", "reply_to", "expiration", "message_id", "timestamp",
    "type", "user_id", "app_id", "cluster_id",
}


class HTTPError(Exception):
    """
    An answer other than success, as RabbitMQ's API gives it:
    C{{"error": ..., "reason": ...}}.
    """

    def __init__(self, status: int, error: str, reason: str) -> None:
        """
        @param status: the HTTP status.
        @param error: RabbitMQ's short error name (C{bad_request}, ...).
        @param reason: what a person reads.
        """
        super().__init__(reason)
        self.status = status
        self.error = error
        self.reason = reason


def notFound(reason: str = "Not Found") -> HTTPError:
    """
    RabbitMQ's 404 answer.
    """
    return HTTPError(404, "Object Not Found", reason)


@dataclass
class Reply:
    """
    A success answer with a status other than 200 (or headers).
    """

    status: int
    body: Any = None
    headers: dict[bytes, bytes] = field(default_factory=dict)


def amqpStatus(error: AMQPError) -> HTTPError:
    """
    The HTTP answer to a refusal of the broker model.
    """
    if isinstance(error, NotFound):
        return notFound(error.replyText)
    if isinstance(error, AccessRefused):
        return HTTPError(403, "access_refused", error.replyText)
    if isinstance(error, ResourceLocked):
        return HTTPError(405, "resource_locked", error.replyText)
    return HTTPError(400, "bad_request", error.replyText)


@dataclass(frozen=True)
class Route:
    """
    One endpoint: a method, a path pattern (literal segments and
    C{{name}} parameters), the L{ManagementAPI} method that answers, and
    who may call it (L{READ}: any management user; L{ADMIN_READ} and
    L{WRITE}: administrators, writes only where objects may change).
    """

    method: bytes
    pattern: tuple[str, ...]
    handler: str
    level: str = READ

    def match(self, segments: list[str]) -> dict[str, str] | None:
        """
        The parameters of C{segments} if they fit the pattern.
        """
        if len(segments) != len(self.pattern):
            return None
        parameters = {}
        for part, segment in zip(self.pattern, segments):
            if part.startswith("{"):
                parameters[part[1:-1]] = segment
            elif part != segment:
                return None
        return parameters


def _routes(*table: tuple[str, str, str, str]) -> list[Route]:
    return [
        Route(method.encode("ascii"), tuple(path.split("/")) if path else (), handler, level)
        for method, path, handler, level in table
    ]


ROUTES = _routes(
    ("GET", "overview", "overview", READ),
    ("GET", "cluster-name", "clusterName", READ),
    ("GET", "nodes", "nodes", READ),
    ("GET", "nodes/{node}", "node", READ),
    ("GET", "vhosts", "vhosts", READ),
    ("GET", "vhosts/{vhost}", "vhostOne", READ),
    ("PUT", "vhosts/{vhost}", "addVhost", WRITE),
    ("DELETE", "vhosts/{vhost}", "deleteVhost", WRITE),
    ("GET", "whoami", "whoami", READ),
    ("GET", "queues", "queues", READ),
    ("GET", "queues/{vhost}", "queues", READ),
    ("GET", "queues/{vhost}/{name}", "queue", READ),
    ("PUT", "queues/{vhost}/{name}", "declareQueue", WRITE),
    ("DELETE", "queues/{vhost}/{name}", "deleteQueue", WRITE),
    ("GET", "queues/{vhost}/{name}/bindings", "queueBindings", READ),
    ("DELETE", "queues/{vhost}/{name}/contents", "purgeQueue", WRITE),
    ("POST", "queues/{vhost}/{name}/get", "getMessages", WRITE),
    ("GET", "exchanges", "exchanges", READ),
    ("GET", "exchanges/{vhost}", "exchanges", READ),
    ("GET", "exchanges/{vhost}/{name}", "exchange", READ),
    ("PUT", "exchanges/{vhost}/{name}", "declareExchange", WRITE),
    ("DELETE", "exchanges/{vhost}/{name}", "deleteExchange", WRITE),
    ("GET", "exchanges/{vhost}/{name}/bindings/source", "sourceBindings", READ),
    ("GET", "exchanges/{vhost}/{name}/bindings/destination", "destinationBindings", READ),
    ("POST", "exchanges/{vhost}/{name}/publish", "publish", WRITE),
    ("GET", "bindings", "bindings", READ),
    ("GET", "bindings/{vhost}", "bindings", READ),
    ("GET", "bindings/{vhost}/e/{source}/{kind}/{destination}", "bindingsBetween", READ),
    ("POST", "bindings/{vhost}/e/{source}/{kind}/{destination}", "bind", WRITE),
    ("GET", "bindings/{vhost}/e/{source}/{kind}/{destination}/{props}", "binding", READ),
    ("DELETE", "bindings/{vhost}/e/{source}/{kind}/{destination}/{props}", "unbind", WRITE),
    ("GET", "connections", "connections", READ),
    ("GET", "connections/{name}", "connection", READ),
    ("DELETE", "connections/{name}", "closeConnection", WRITE),
    ("GET", "channels", "channels", READ),
    ("GET", "consumers", "consumers", READ),
    ("GET", "consumers/{vhost}", "consumers", READ),
    ("GET", "users", "users", ADMIN_READ),
    ("GET", "users/{name}", "user", ADMIN_READ),
    ("GET", "permissions", "permissions", ADMIN_READ),
    ("GET", "definitions", "definitions", ADMIN_READ),
    ("POST", "definitions", "importDefinitions", WRITE),
    ("GET", "definitions/{vhost}", "definitions", ADMIN_READ),
    ("POST", "definitions/{vhost}", "importDefinitions", WRITE),
    ("GET", "health/checks/alarms", "alarms", READ),
    ("GET", "aliveness-test/{vhost}", "aliveness", WRITE),
    ("GET", "ha", "ha", READ),
)


_flag = flag


def _table(body: dict[str, Any], name: str = "arguments") -> dict[str, Any]:
    """
    An arguments table of a request body.
    """
    try:
        return table(body, name)
    except DefinitionsRefused as refused:
        raise HTTPError(400, "bad_request", str(refused)) from None


class ManagementAPI(Resource):
    """
    C{/api}: every endpoint of L{ROUTES}, behind HTTP basic authentication.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, broker: ManagedBroker) -> None:
        """
        @param broker: the broker managed.
        """
        super().__init__()
        self.broker = broker
        self.authenticator = BasicAuthenticator(
            broker.users, broker.verifier, broker.clock, broker.failedLogins
        )

    # Request handling

    def render(self, request: IRequest) -> Any:
        """
        Log the caller in, then answer (later: the password is checked in
        a thread).
        """
        checking = self.authenticator.authenticate(request)
        checking.addCallback(self._answer, request)
        checking.addErrback(self._failed, request)
        checking.addCallback(self._write, request)
        return NOT_DONE_YET

    def _answer(self, caller: Caller | None, request: IRequest) -> Deferred[Any]:
        """
        Route the request of C{caller}.
        """
        if caller is None:
            request.setHeader(b"www-authenticate", f'Basic realm="{REALM}"'.encode("ascii"))
            raise HTTPError(401, "not_authorised", "Login failed")
        if not caller.mayRead:
            request.setHeader(b"www-authenticate", f'Basic realm="{REALM}"'.encode("ascii"))
            raise HTTPError(401, "not_authorised", "Not management user")
        segments = [segment.decode("utf-8", "replace") for segment in request.postpath]
        while segments and segments[-1] == "":
            segments.pop()
        allowed = []
        for route in ROUTES:
            parameters = route.match(segments)
            if parameters is None:
                continue
            allowed.append(route.method)
            if route.method == request.method or (
                request.method == b"HEAD" and route.method == b"GET"
            ):
                break
        else:
            if allowed:
                request.setHeader(b"allow", b", ".join(allowed))
                raise HTTPError(405, "method_not_allowed", "Method Not Allowed")
            raise notFound()
        if route.level in (WRITE, ADMIN_READ) and not caller.mayWrite:
            raise HTTPError(401, "not_authorised", "Not administrator user")
        if route.level == WRITE:
            role = self.broker.node.role
            if not role.servesClients:
                raise HTTPError(
                    503,
                    "unavailable",
                    f"this broker is {role.name}: change objects on the primary",
                )
        handler: Callable[..., Any] = getattr(self, route.handler)
        if route.level == WRITE:
            self.log.info(
                "HTTP {method} /api/{path} asked by {who} from {peer}",
                method=request.method.decode("ascii", "replace"),
                path="/".join(quote(segment, safe="") for segment in segments),
                who=caller.name,
                peer=getattr(request.getClientAddress(), "host", "?"),
            )
        return maybeDeferred(handler, caller, request, **parameters)

    def _failed(self, failure: Failure, request: IRequest) -> Reply:
        """
        An error answer: RabbitMQ's C{{"error", "reason"}}.
        """
        if failure.check(AMQPError):
            error = amqpStatus(failure.value)  # type: ignore[arg-type]
        elif failure.check(HTTPError):
            error = failure.value  # type: ignore[assignment]
        else:
            self.log.failure("HTTP API {uri} failed", failure, uri=request.uri)
            error = HTTPError(500, "internal_error", "the broker failed; see its log")
        return Reply(error.status, {"error": error.error, "reason": error.reason})

    def _write(self, result: Any, request: IRequest) -> None:
        """
        Write the answer as JSON; nothing for 204, nor for a 201 with no
        body (a declare or a binding made: RabbitMQ answers those with an
        empty body).
        """
        reply = result if isinstance(result, Reply) else Reply(200, result)
        if getattr(request, "_disconnected", False):
            return
        request.setResponseCode(reply.status)
        for name, value in reply.headers.items():
            request.setHeader(name, value)
        request.setHeader(b"cache-control", b"no-cache")
        if reply.status != 204 and not (reply.status == 201 and reply.body is None):
            request.setHeader(b"content-type", b"application/json")
            request.write(dumps(reply.body))
        request.finish()

    # Helpers

    @property
    def vhost(self) -> VirtualHost:
        """
        The broker's default virtual host (C{/}).
        """
        return self.broker.vhost

    @property
    def registry(self) -> VirtualHosts:
        """
        The broker's virtual hosts.
        """
        return VirtualHosts.of(self.broker.vhost)

    def _body(self, request: IRequest) -> dict[str, Any]:
        """
        The request's JSON object (empty if there is no body).
        """
        content = request.content.read() if request.content is not None else b""
        if not content.strip():
            return {}
        try:
            body = json.loads(content)
        except ValueError as error:
            raise HTTPError(400, "bad_request", f"the body is not JSON: {error}") from None
        if not isinstance(body, dict):
            raise HTTPError(400, "bad_request", "the body must be a JSON object")
        return body

    def _visible(self, caller: Caller, vhost: str) -> bool:
        """
        Whether C{caller} sees C{vhost}'s objects: administrators and
        monitoring users see every virtual host, management users those
        they have permissions in.
        """
        return caller.seesEverything or self.broker.users.permissions(caller.name, vhost) is not None

    def _checkVhost(self, caller: Caller, name: str) -> VirtualHost:
        """
        The virtual host a URL names (decoded: C{%2F} is C{/}).

        @raise HTTPError: RabbitMQ's 404 (C{Not Found}) if there is none;
            401 C{not_authorised} if C{caller} may not see it.
        """
        vhost = self.registry.get(name)
        if vhost is None:
            raise notFound()
        if not self._visible(caller, name):
            raise HTTPError(401, "not_authorised", "Access refused.")
        return vhost

    def _vhostsOf(self, caller: Caller, name: str | None) -> list[VirtualHost]:
        """
        The virtual hosts a listing covers: the one a URL names (see
        L{_checkVhost}), or (L{None}) every one C{caller} may see, by
        name.
        """
        if name is not None:
            return [self._checkVhost(caller, name)]
        return [
            vhost
            for vhost in sorted(self.registry, key=lambda each: each.name)
            if self._visible(caller, vhost.name)
        ]

    @staticmethod
    def _queue(vhost: VirtualHost, name: str) -> Queue:
        """
        The queue called C{name} in C{vhost}.
        """
        queue = vhost.queues.get(name)
        if queue is None:
            raise notFound(f"no queue '{name}' in vhost '{vhost.name}'")
        return queue

    @staticmethod
    def _exchangeName(name: str) -> str:
        """
        The real name of an exchange of a URL (the default one is
        C{amq.default} there).
        """
        return "" if name == DEFAULT_EXCHANGE_ALIAS else name

    def _queueViews(self, vhosts: list[VirtualHost]) -> list[dict[str, Any]]:
        """
        The queues of C{vhosts} as C{GET /api/queues} shows them, by
        virtual host, then by name.
        """
        self.broker.node.applyPending()
        default = self.broker.node.replicateDefault
        rates = self._rates()
        return [
            self._withStats(queueView(queue, vhost, self.broker.nodeName, default), queue, rates)
            for vhost in vhosts
            for queue in sorted(vhost.queues.values(), key=lambda q: q.name)
        ]

    def _rates(self) -> dict[str, tuple[float, float]]:
        """
        Every queue's publish and deliver rates now (see L{MessageRates}),
        in every virtual host (the readings are kept for all of them, so
        that a listing of one does not forget the others').
        """
        counts = {
            queue.uuid: (queue.published, queue.delivered)
            for vhost in self.registry
            for queue in vhost.queues.values()
        }
        for vhost in self.registry:
            counts[_REPLIES_KEY + vhost.name] = (vhost.repliesPublished, 0)
        return self.broker.rates.rates(self.broker.clock.seconds(), counts)

    def _messageStats(self, vhosts: list[VirtualHost], queues: list[dict[str, Any]]) -> dict[str, Any]:
        """
        The C{message_stats} of C{vhosts}, whose queues' views are
        C{queues}: the queues' summed, and the direct replies published in
        them (publishes that enter no queue; L{VirtualHost.repliesPublished}).
        """
        rates = self._rates()
        return messageStats(
            sum(q["message_stats"]["publish"] for q in queues)
            + sum(vhost.repliesPublished for vhost in vhosts),
            sum(q["message_stats"]["deliver_get"] for q in queues),
            (
                sum(q["message_stats"]["publish_details"]["rate"] for q in queues)
                + sum(rates.get(_REPLIES_KEY + vhost.name, (0.0, 0.0))[0] for vhost in vhosts),
                sum(q["message_stats"]["deliver_get_details"]["rate"] for q in queues),
            ),
        )

    @staticmethod
    def _withStats(view: dict[str, Any], queue: Queue, rates: dict[str, tuple[float, float]]) -> dict[str, Any]:
        """
        C{view} with the queue's C{message_stats}.
        """
        view["message_stats"] = messageStats(queue.published, queue.delivered, rates.get(queue.uuid, (0.0, 0.0)))
        return view

    def _connections(self, caller: Caller) -> list[AMQPServer]:
        """
        The client connections C{caller} may see (its own only, for a
        management user), oldest first where the factory keeps order.
        """
        return [
            connection
            for connection in self.broker.factory.connections
            if connection.user is not None
            and (caller.seesEverything or connection.user == caller.name)
        ]

    # Overview

    def overview(self, caller: Caller, request: IRequest) -> dict[str, Any]:
        """
        C{GET /api/overview}: versions, totals, listeners.
        """
        vhosts = self._vhostsOf(caller, None)
        queues = self._queueViews(vhosts)
        connections = self._connections(caller)
        return {
            "management_version": MANAGEMENT_VERSION,
            "rabbitmq_version": __version__,
            "product_name": "qha",
            "product_version": __version__,
            "erlang_version": None,
            "cluster_name": self.broker.clusterName,
            "node": self.broker.nodeName,
            "statistics_db_event_queue": 0,
            "object_totals": {
                "connections": len(connections),
                "channels": sum(len(c.channels) for c in connections),
                "exchanges": sum(len(vhost.exchanges) for vhost in vhosts),
                "queues": len(queues),
                "consumers": sum(q["consumers"] for q in queues),
            },
            "queue_totals": {
                "messages": sum(q["messages"] for q in queues),
                "messages_ready": sum(q["messages_ready"] for q in queues),
                "messages_unacknowledged": sum(q["messages_unacknowledged"] for q in queues),
            },
            # Messages entering and leaving queues (a publish routed to
            # two queues counts twice), and direct replies; see doc/http.md.
            "message_stats": self._messageStats(vhosts, queues),
            "listeners": self.broker.listeners,
            "contexts": [],
            "qha_role": self.broker.node.role.name,
        }

    def clusterName(self, caller: Caller, request: IRequest) -> dict[str, Any]:
        """
        C{GET /api/cluster-name}.
        """
        return {"name": self.broker.clusterName}

    def _nodeView(self) -> dict[str, Any]:
        return {
            "name": self.broker.nodeName,
            "type": "disc",
            "running": True,
            "uptime": int((self.broker.clock.seconds() - self.broker.started) * 1000),
            "mem_used": self.vhost.resources.used,
            "mem_limit": self.vhost.resources.highWatermark,
            "mem_alarm": self.vhost.resources.blocked,
            "disk_free_alarm": False,
            "qha_role": self.broker.node.role.name,
            "qha_epoch": self.broker.node.epoch,
        }

    def nodes(self, caller: Caller, request: IRequest) -> list[dict[str, Any]]:
        """
        C{GET /api/nodes}: this broker (the others of its cluster are in
        C{/api/ha}).
        """
        return [self._nodeView()]

    def node(self, caller: Caller, request: IRequest, node: str) -> dict[str, Any]:
        """
        C{GET /api/nodes/NAME}.
        """
        if node != self.broker.nodeName:
            raise notFound(f"no node '{node}'")
        return self._nodeView()

    def _vhostView(self, vhost: VirtualHost) -> dict[str, Any]:
        """
        C{vhost} as C{GET /api/vhosts} shows it.
        """
        queues = self._queueViews([vhost])
        return {
            "name": vhost.name,
            "description": "",
            "tags": [],
            "tracing": False,
            "messages": sum(q["messages"] for q in queues),
            "messages_ready": sum(q["messages_ready"] for q in queues),
            "messages_unacknowledged": sum(q["messages_unacknowledged"] for q in queues),
            "message_stats": self._messageStats([vhost], queues),
        }

    def vhosts(self, caller: Caller, request: IRequest) -> list[dict[str, Any]]:
        """
        C{GET /api/vhosts}: the virtual hosts C{caller} may see.
        """
        return [self._vhostView(vhost) for vhost in self._vhostsOf(caller, None)]

    def vhostOne(self, caller: Caller, request: IRequest, vhost: str) -> dict[str, Any]:
        """
        C{GET /api/vhosts/VHOST}.
        """
        return self._vhostView(self._checkVhost(caller, vhost))

    def addVhost(self, caller: Caller, request: IRequest, vhost: str) -> Reply:
        """
        C{PUT /api/vhosts/VHOST}: add a virtual host (201), or nothing if
        it exists (204), as RabbitMQ; the backups and the store hear of it
        through the event stream, as of C{qha-admin vhost add}.
        """
        if vhost in self.registry:
            return Reply(204)
        self.registry.add(vhost)
        return Reply(201)

    def deleteVhost(self, caller: Caller, request: IRequest, vhost: str) -> Reply:
        """
        C{DELETE /api/vhosts/VHOST}: delete a virtual host with all in it
        (404 if there is none; the default one cannot be deleted).
        """
        if vhost not in self.registry:
            raise notFound()
        self.registry.delete(vhost)
        return Reply(204)

    def whoami(self, caller: Caller, request: IRequest) -> dict[str, Any]:
        """
        C{GET /api/whoami}.
        """
        return {"name": caller.name, "tags": sorted(caller.tags)}

    # Queues

    def queues(self, caller: Caller, request: IRequest, vhost: str | None = None) -> list[dict[str, Any]]:
        """
        C{GET /api/queues[/VHOST]}: the queues of one virtual host, or of
        every one C{caller} may see.
        """
        return self._queueViews(self._vhostsOf(caller, vhost))

    def queue(self, caller: Caller, request: IRequest, vhost: str, name: str) -> dict[str, Any]:
        """
        C{GET /api/queues/VHOST/NAME}.
        """
        where = self._checkVhost(caller, vhost)
        self.broker.node.applyPending()
        queue = self._queue(where, name)
        return self._withStats(
            queueView(queue, where, self.broker.nodeName, self.broker.node.replicateDefault),
            queue,
            self._rates(),
        )

    def declareQueue(self, caller: Caller, request: IRequest, vhost: str, name: str) -> Reply:
        """
        C{PUT /api/queues/VHOST/NAME}: declare (201), or check an equivalent
        one exists (204).
        """
        where = self._checkVhost(caller, vhost)
        body = self._body(request)
        existed = name in where.queues
        if not name:
            raise HTTPError(400, "bad_request", "a queue needs a name")
        where.declareQueue(
            name,
            durable=_flag(body, "durable", True),
            autoDelete=_flag(body, "auto_delete"),
            arguments=_table(body),
        )
        return Reply(204 if existed else 201)

    def deleteQueue(self, caller: Caller, request: IRequest, vhost: str, name: str) -> Reply:
        """
        C{DELETE /api/queues/VHOST/NAME[?if-unused=true&if-empty=true]}.
        """
        where = self._checkVhost(caller, vhost)
        queue = self._queue(where, name)
        args = request.args or {}
        where.deleteQueue(
            name,
            ifUnused=args.get(b"if-unused", [b""])[0] == b"true",
            ifEmpty=args.get(b"if-empty", [b""])[0] == b"true",
            owner=queue.owner,
        )
        return Reply(204)

    def queueBindings(self, caller: Caller, request: IRequest, vhost: str, name: str) -> list[dict[str, Any]]:
        """
        C{GET /api/queues/VHOST/NAME/bindings}: the bindings to the queue.
        """
        where = self._checkVhost(caller, vhost)
        queue = self._queue(where, name)
        return [
            bindingView(binding, where)
            for binding in allBindings(where)
            if binding.destination is queue
        ]

    def purgeQueue(self, caller: Caller, request: IRequest, vhost: str, name: str) -> Reply:
        """
        C{DELETE /api/queues/VHOST/NAME/contents}: drop its ready messages.
        """
        where = self._checkVhost(caller, vhost)
        queue = self._queue(where, name)
        where.purgeQueue(name, owner=queue.owner)
        return Reply(204)

    def getMessages(self, caller: Caller, request: IRequest, vhost: str, name: str) -> list[dict[str, Any]]:
        """
        C{POST /api/queues/VHOST/NAME/get}: take up to C{count} messages
        as basic.get does, then give them back (C{ackmode}
        C{ack_requeue_true}, C{reject_requeue_true}: redelivered next
        time) or settle them (C{ack_requeue_false}; C{reject_requeue_false}
        dead-letters them where the queue says).
        """
        where = self._checkVhost(caller, vhost)
        body = self._body(request)
        queue = self._queue(where, name)
        try:
            count = int(body.get("count", 1))
        except (TypeError, ValueError):
            raise HTTPError(400, "bad_request", "count must be a whole number") from None
        ackmode = body.get("ackmode")
        if ackmode is None:
            ackmode = "ack_requeue_true" if _flag(body, "requeue") else "ack_requeue_false"
        if ackmode not in (
            "ack_requeue_true", "ack_requeue_false", "reject_requeue_true", "reject_requeue_false"
        ):
            raise HTTPError(400, "bad_request", f"unknown ackmode {ackmode!r}")
        encoding = body.get("encoding", "auto")
        if encoding not in ("auto", "base64"):
            raise HTTPError(400, "bad_request", "encoding must be auto or base64")
        truncate = body.get("truncate")
        if truncate is not None and not isinstance(truncate, int):
            raise HTTPError(400, "bad_request", "truncate must be a whole number")
        where.queue(name, owner=queue.owner)
        taken = []
        views = []
        for _ in range(max(count, 0)):
            entry = queue.get()
            if entry is None:
                break
            taken.append(entry)
            views.append(
                messageView(entry.message, entry.redelivered, queue.messageCount, encoding, truncate)
            )
        if taken:
            if ackmode.endswith("requeue_true"):
                queue.release(taken, redelivered=True)
            elif ackmode == "reject_requeue_false":
                queue.reject(taken)
            else:
                queue.settleAll(taken)
        return views

    # Exchanges

    def exchanges(self, caller: Caller, request: IRequest, vhost: str | None = None) -> list[dict[str, Any]]:
        """
        C{GET /api/exchanges[/VHOST]}: the exchanges of one virtual host,
        or of every one C{caller} may see.
        """
        vhosts = self._vhostsOf(caller, vhost)
        self.broker.node.applyPending()
        default = self.broker.node.replicateDefault
        return [
            exchangeView(exchange, where, default)
            for where in vhosts
            for exchange in sorted(where.exchanges.values(), key=lambda x: x.name)
        ]

    def _exchange(self, vhost: VirtualHost, name: str) -> Any:
        """
        The exchange called C{name} in C{vhost} (C{amq.default}: the
        default one).
        """
        exchange = vhost.exchanges.get(self._exchangeName(name))
        if exchange is None:
            raise notFound(f"no exchange '{name}' in vhost '{vhost.name}'")
        return exchange

    def exchange(self, caller: Caller, request: IRequest, vhost: str, name: str) -> dict[str, Any]:
        """
        C{GET /api/exchanges/VHOST/NAME}.
        """
        where = self._checkVhost(caller, vhost)
        self.broker.node.applyPending()
        return exchangeView(self._exchange(where, name), where, self.broker.node.replicateDefault)

    def declareExchange(self, caller: Caller, request: IRequest, vhost: str, name: str) -> Reply:
        """
        C{PUT /api/exchanges/VHOST/NAME}: declare (201), or check an
        equivalent one exists (204).
        """
        where = self._checkVhost(caller, vhost)
        body = self._body(request)
        existed = name in where.exchanges
        kind = body.get("type")
        if not isinstance(kind, str):
            raise HTTPError(400, "bad_request", "an exchange needs a type (direct, fanout, topic, headers)")
        where.declareExchange(
            self._exchangeName(name),
            kind,
            durable=_flag(body, "durable", True),
            autoDelete=_flag(body, "auto_delete"),
            internal=_flag(body, "internal"),
            arguments=_table(body),
        )
        return Reply(204 if existed else 201)

    def deleteExchange(self, caller: Caller, request: IRequest, vhost: str, name: str) -> Reply:
        """
        C{DELETE /api/exchanges/VHOST/NAME[?if-unused=true]}.
        """
        where = self._checkVhost(caller, vhost)
        self._exchange(where, name)
        args = request.args or {}
        where.deleteExchange(
            self._exchangeName(name), ifUnused=args.get(b"if-unused", [b""])[0] == b"true"
        )
        return Reply(204)

    def sourceBindings(self, caller: Caller, request: IRequest, vhost: str, name: str) -> list[dict[str, Any]]:
        """
        C{GET /api/exchanges/VHOST/NAME/bindings/source}.
        """
        where = self._checkVhost(caller, vhost)
        exchange = self._exchange(where, name)
        return [bindingView(b, where) for b in exchange.bindings.values()]

    def destinationBindings(self, caller: Caller, request: IRequest, vhost: str, name: str) -> list[dict[str, Any]]:
        """
        C{GET /api/exchanges/VHOST/NAME/bindings/destination}.
        """
        where = self._checkVhost(caller, vhost)
        exchange = self._exchange(where, name)
        return [bindingView(b, where) for b in exchange.inbound]

    def publish(self, caller: Caller, request: IRequest, vhost: str, name: str) -> dict[str, Any]:
        """
        C{POST /api/exchanges/VHOST/NAME/publish}: publish one message
        (C{routing_key}, C{payload}, C{payload_encoding} C{string} or
        C{base64}, C{properties}); C{{"routed": ...}} says whether a queue
        took it. Like an unconfirmed AMQP publish: answered once routed.
        """
        where = self._checkVhost(caller, vhost)
        body = self._body(request)
        routingKey = body.get("routing_key", "")
        payload = body.get("payload", "")
        if not isinstance(routingKey, str) or not isinstance(payload, str):
            raise HTTPError(400, "bad_request", "routing_key and payload must be strings")
        encoding = body.get("payload_encoding", "string")
        if encoding == "string":
            data = payload.encode("utf-8")
        elif encoding == "base64":
            try:
                data = base64.b64decode(payload, validate=True)
            except binascii.Error:
                raise HTTPError(400, "bad_request", "payload is not base64") from None
        else:
            raise HTTPError(400, "bad_request", "payload_encoding must be string or base64")
        if len(data) > self.broker.factory.maxMessageSize:
            raise HTTPError(
                400,
                "bad_request",
                f"message size {len(data)} is larger than the most allowed"
                f" ({self.broker.factory.maxMessageSize})",
            )
        properties = _table(body, "properties")
        unknown = sorted(set(properties) - _PROPERTY_NAMES)
        if unknown:
            raise HTTPError(400, "bad_request", f"unknown properties: {', '.join(unknown)}")
        if "type" in properties:
            properties["message_type"] = properties.pop("type")
        if properties.get("user_id") not in (None, caller.name):
            raise HTTPError(
                400, "bad_request", f"user_id property set to '{properties['user_id']}'"
                f" but the user is '{caller.name}'"
            )
        try:
            message = Message.build(
                self._exchangeName(name), routingKey, data, commands.Basic.Properties(**properties)
            )
        except (TypeError, ValueError) as error:
            raise HTTPError(400, "bad_request", f"bad properties: {error}") from None
        exchange = self._exchangeName(name)
        try:
            accepted = where.publish(exchange, routingKey, message)
        except PublishRefused as refused:
            accepted = refused.accepted
        if not accepted and exchange == "":
            # A direct reply-to address, as RabbitMQ's default exchange
            # takes it from its management API too.
            return {"routed": where.publishReply(routingKey, message)}
        return {"routed": bool(accepted)}

    # Bindings

    def bindings(self, caller: Caller, request: IRequest, vhost: str | None = None) -> list[dict[str, Any]]:
        """
        C{GET /api/bindings[/VHOST]}: the bindings of one virtual host, or
        of every one C{caller} may see.
        """
        vhosts = self._vhostsOf(caller, vhost)
        self.broker.node.applyPending()
        return [
            bindingView(binding, where) for where in vhosts for binding in allBindings(where)
        ]

    def _between(self, vhost: VirtualHost, source: str, kind: str, destination: str) -> list[Binding]:
        """
        The bindings of C{vhost} from exchange C{source} to queue (C{kind}
        C{q}) or exchange (C{e}) C{destination}.
        """
        if kind not in ("q", "e"):
            raise notFound()
        exchange = self._exchange(vhost, source)
        target = (
            self._queue(vhost, destination) if kind == "q" else self._exchange(vhost, destination)
        )
        return [b for b in exchange.bindings.values() if b.destination is target]

    def bindingsBetween(
        self, caller: Caller, request: IRequest, vhost: str, source: str, kind: str, destination: str
    ) -> list[dict[str, Any]]:
        """
        C{GET /api/bindings/VHOST/e/SOURCE/q/QUEUE} (or C{.../e/EXCHANGE}).
        """
        where = self._checkVhost(caller, vhost)
        return [bindingView(b, where) for b in self._between(where, source, kind, destination)]

    def bind(
        self, caller: Caller, request: IRequest, vhost: str, source: str, kind: str, destination: str
    ) -> Reply:
        """
        C{POST /api/bindings/VHOST/e/SOURCE/q/QUEUE}: bind (C{routing_key},
        C{arguments}); 201 with the new binding's URL in C{Location}.
        """
        where = self._checkVhost(caller, vhost)
        body = self._body(request)
        self._between(where, source, kind, destination)
        routingKey = body.get("routing_key", "")
        if not isinstance(routingKey, str):
            raise HTTPError(400, "bad_request", "routing_key must be a string")
        arguments = _table(body)
        if kind == "q":
            queue = self._queue(where, destination)
            where.bindQueue(
                destination, self._exchangeName(source), routingKey, arguments, owner=queue.owner
            )
        else:
            where.bindExchange(
                self._exchangeName(destination), self._exchangeName(source), routingKey, arguments
            )
        props = quote(propertiesKey(routingKey, arguments), safe="")
        return Reply(201, None, {b"location": props.encode("ascii")})

    def _binding(
        self, vhost: VirtualHost, source: str, kind: str, destination: str, props: str
    ) -> Binding:
        """
        The binding of C{vhost} whose C{properties_key} is C{props}.
        """
        for binding in self._between(vhost, source, kind, destination):
            if propertiesKey(binding.routingKey, binding.arguments) == props:
                return binding
        raise notFound(f"no binding '{props}'")

    def binding(
        self, caller: Caller, request: IRequest, vhost: str, source: str, kind: str,
        destination: str, props: str,
    ) -> dict[str, Any]:
        """
        C{GET /api/bindings/VHOST/e/SOURCE/q/QUEUE/PROPS}.
        """
        where = self._checkVhost(caller, vhost)
        return bindingView(self._binding(where, source, kind, destination, props), where)

    def unbind(
        self, caller: Caller, request: IRequest, vhost: str, source: str, kind: str,
        destination: str, props: str,
    ) -> Reply:
        """
        C{DELETE /api/bindings/VHOST/e/SOURCE/q/QUEUE/PROPS}.
        """
        where = self._checkVhost(caller, vhost)
        binding = self._binding(where, source, kind, destination, props)
        if kind == "q":
            queue = self._queue(where, destination)
            where.unbindQueue(
                destination, binding.source.name, binding.routingKey, binding.arguments,
                owner=queue.owner,
            )
        else:
            where.unbindExchange(
                binding.destination.name, binding.source.name, binding.routingKey,
                binding.arguments,
            )
        return Reply(204)

    # Connections, channels, consumers

    def connections(self, caller: Caller, request: IRequest) -> list[dict[str, Any]]:
        """
        C{GET /api/connections}.
        """
        node = self.broker.nodeName
        return sorted(
            (connectionView(c, node) for c in self._connections(caller)),
            key=lambda view: view["name"],
        )

    def _connection(self, caller: Caller, name: str) -> AMQPServer:
        for connection in self._connections(caller):
            if connectionName(connection) == name:
                return connection
        raise notFound(f"no connection '{name}'")

    def connection(self, caller: Caller, request: IRequest, name: str) -> dict[str, Any]:
        """
        C{GET /api/connections/NAME}.
        """
        return connectionView(self._connection(caller, name), self.broker.nodeName)

    def closeConnection(self, caller: Caller, request: IRequest, name: str) -> Reply:
        """
        C{DELETE /api/connections/NAME}: close it with 320
        CONNECTION_FORCED (the reason of an C{X-Reason} header, as in
        RabbitMQ).
        """
        connection = self._connection(caller, name)
        reason = request.getHeader(b"x-reason")
        text = (
            reason.decode("utf-8", "replace")
            if reason
            else f"Closed via management API by {caller.name}"
        )
        connection.connectionError(ConnectionForced(text))
        return Reply(204)

    def channels(self, caller: Caller, request: IRequest) -> list[dict[str, Any]]:
        """
        C{GET /api/channels}.
        """
        node = self.broker.nodeName
        return [view for c in self._connections(caller) for view in channelViews(c, node)]

    def consumers(self, caller: Caller, request: IRequest, vhost: str | None = None) -> list[dict[str, Any]]:
        """
        C{GET /api/consumers[/VHOST]}: the consumers of the connections
        C{caller} may see, in one virtual host or in every one it may see.
        """
        names = {where.name for where in self._vhostsOf(caller, vhost)}
        return [
            view
            for c in self._connections(caller)
            if c.vhost.name in names
            for view in consumerViews(c, c.vhost)
        ]

    # Users and permissions (read only: they live in the users file)

    def _userView(self, name: str) -> dict[str, Any]:
        return userView(self.broker.users, name)

    def users(self, caller: Caller, request: IRequest) -> list[dict[str, Any]]:
        """
        C{GET /api/users}: the users of the users file (no password hashes).
        """
        return [self._userView(name) for name in self.broker.users.users()]

    def user(self, caller: Caller, request: IRequest, name: str) -> dict[str, Any]:
        """
        C{GET /api/users/NAME}.
        """
        if name not in self.broker.users.users():
            raise notFound(f"no user '{name}'")
        return self._userView(name)

    def _permissionViews(self) -> list[dict[str, Any]]:
        return permissionViews(self.broker.users, self.registry.names())

    def permissions(self, caller: Caller, request: IRequest) -> list[dict[str, Any]]:
        """
        C{GET /api/permissions}.
        """
        return self._permissionViews()

    # Definitions

    def definitions(self, caller: Caller, request: IRequest, vhost: str | None = None) -> dict[str, Any]:
        """
        C{GET /api/definitions}: the queues, exchanges and bindings (not
        exclusive queues, not built-in exchanges) of every virtual host,
        the virtual hosts, and the users (without password hashes) and
        their permissions; C{GET /api/definitions/VHOST}: the same of one
        virtual host (404 for one that does not exist).
        """
        self.broker.node.applyPending()
        try:
            vhosts = vhostsOf(self.vhost, vhost)
        except NotFound:
            raise notFound() from None
        return exportDefinitions(vhosts, self.broker.users)

    def importDefinitions(self, caller: Caller, request: IRequest, vhost: str | None = None) -> Reply:
        """
        C{POST /api/definitions}: declare the exchanges, queues and
        bindings of a definitions document, each in the virtual host it
        names (C{/} when it names none), after adding the virtual hosts of
        the document's C{vhosts} section that do not exist; a document with
        objects of a virtual host that neither exists nor is in its
        C{vhosts} changes nothing (400). C{POST /api/definitions/VHOST}:
        everything into virtual host C{VHOST}, whatever the objects say
        (404 if it does not exist). Users and permissions live in the users
        file and are not imported. Stops at the first refusal, with what
        came before it declared.
        """
        body = self._body(request)
        if vhost is not None and vhost not in VirtualHosts.of(self.vhost):
            raise notFound()
        try:
            importInto(self.vhost, body, vhost)
        except DefinitionsRefused as refused:
            raise HTTPError(400, "bad_request", str(refused)) from None
        return Reply(204)

    # Health and HA

    def alarms(self, caller: Caller, request: IRequest) -> Reply:
        """
        C{GET /api/health/checks/alarms}: 200 without a memory alarm, 503
        with one.
        """
        if self.vhost.resources.blocked:
            return Reply(
                503,
                {
                    "status": "failed",
                    "reason": "resource alarm(s) in effect in the cluster",
                    "alarms": [{"node": self.broker.nodeName, "resource": "memory"}],
                },
            )
        return Reply(200, {"status": "ok"})

    def aliveness(self, caller: Caller, request: IRequest, vhost: str) -> dict[str, Any]:
        """
        C{GET /api/aliveness-test/VHOST}: declare the queue
        C{aliveness-test} in C{VHOST}, publish a message to it and get it
        back.
        """
        where = self._checkVhost(caller, vhost)
        name = "aliveness-test"
        where.declareQueue(name)
        queue = where.queues[name]
        queue.purge()
        where.publish("", name, Message.build("", name, b"test_message"))
        entry = queue.get()
        if entry is None or entry.message.body != b"test_message":
            return {"status": "failed", "reason": "the test message did not come back"}
        queue.settle(entry)
        return {"status": "ok"}

    def ha(self, caller: Caller, request: IRequest) -> dict[str, Any]:
        """
        C{GET /api/ha}: the broker's HA state as C{qha-admin query} shows
        it (role, epoch, broker id, the backups and how far each is, the
        coordinator's view), and whether it may confirm now.
        """
        state = dict(self.broker.node.describe())
        state["mayConfirm"] = self.broker.node.mayConfirm()
        return state


__all__ = ["HTTPError", "MANAGEMENT_VERSION", "ManagementAPI", "ROUTES", "Reply", "Route"]
