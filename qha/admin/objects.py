"""
The broker's objects as C{qha-admin list}, C{add} and C{del} see them:
queues, exchanges and bindings of a virtual host; and what C{purge},
C{bind}, C{unbind}, C{connections}, C{consumers}, C{close-connection} and
C{definitions} do, each argument checked against its bound before use
(L{Refused} with a text a person can act on).
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from ..amqp.protocol import AMQPServer
from ..amqp.users import UserDatabase
from ..broker.errors import AMQPError, ConnectionForced, NotFound
from ..broker.exchange import Binding
from ..broker.queue import Queue
from ..broker.vhost import REPLICATE_ARGUMENT, VirtualHost
from ..broker.vhosts import DEFAULT_VHOST, MAX_VHOST_NAME, VirtualHosts
from ..ha.commands import Refused
from ..ha.config import parseBrokers
from ..changes.settings import (
    BACKUP_TIMEOUT,
    MAX_BACKUP_TIMEOUT,
    MAX_BROKERS_TEXT,
    PUBLIC_BROKERS,
    REPLICATE,
    RuntimeSettings,
    SettingsError,
    checkValue,
)
from ..ha.primary import cachedLevel
from .settings import OptionsFollower
from ..management.definitions import (
    SECTIONS,
    DefinitionsRefused,
    UnknownVhost,
    exportDefinitions,
    importInto,
)
from ..management.views import connectionName, connectionView, consumerViews, jsonValue

MAX_NAME = 255
"""
The most bytes of UTF-8 in a queue's or an exchange's name, a routing key
or a close reason: an AMQP short string.
"""

MAX_CONNECTION_NAME = 1024
"""
The most characters in a connection's name (C{PEER -> HOST:PORT}).
"""

MAX_ARGUMENTS = 64
"""
The most entries in the arguments of a binding made with C{qha-admin}.
"""

MAX_ARGUMENTS_JSON = 16 * 1024
"""
The most characters of the JSON of those arguments.
"""

MAX_DEFINITIONS_BYTES = 64 * 1024 * 1024
"""
The largest definitions document C{qha-admin definitions import} sends.
"""

MAX_DEFINITION_ITEMS = 100_000
"""
The most queues, exchanges, bindings and vhosts in one definitions document.
"""

# MAX_BACKUP_TIMEOUT (the longest --ha-backup-timeout set takes, in
# seconds) and MAX_BROKERS_TEXT (the most characters of set --public-url)
# are qha.changes.settings', which checks every state a peer sends.


def listObjects(vhost: VirtualHost, kind: str, default: str) -> list[dict[str, Any]]:
    """
    Queues, exchanges or bindings with their counts, like qpid-stat.
    """
    if kind == "queues":
        return [
            {
                "name": q.name,
                "durable": q.durable,
                "autoDelete": q.autoDelete,
                "exclusive": q.exclusive,
                "messages": q.messageCount,
                "unacked": q.unacked,
                "consumers": q.consumerCount,
                "replicate": cachedLevel(q, default),
            }
            for q in vhost.queues.values()
        ]
    if kind == "exchanges":
        return [
            {
                "name": x.name,
                "type": x.type,
                "durable": x.durable,
                "autoDelete": x.autoDelete,
                "internal": x.internal,
                "bindings": len(x.bindings),
                "replicate": cachedLevel(x, default),
            }
            for x in vhost.exchanges.values()
        ]
    if kind == "bindings":
        rows = []
        for exchange in vhost.exchanges.values():
            if exchange is vhost.defaultExchange:
                continue
            for binding in exchange.bindings.values():
                rows.append(
                    {
                        "source": exchange.name,
                        "destination": binding.destination.name,
                        "destinationKind": "queue" if isinstance(binding.destination, Queue) else "exchange",
                        "routingKey": binding.routingKey,
                        "arguments": {k: str(v) for k, v in binding.arguments.items()},
                    }
                )
        return rows
    raise Refused(f"unknown kind {kind!r}: use queues, exchanges or bindings")


def addObject(vhost: VirtualHost, kind: str, description: dict[str, Any]) -> None:
    """
    Declare a queue or an exchange for C{qha-admin add}.
    """
    arguments = dict(description.get("arguments") or {})
    if description.get("replicate"):
        arguments[REPLICATE_ARGUMENT] = description["replicate"]
    try:
        if kind == "queue":
            vhost.declareQueue(
                description["name"],
                durable=bool(description.get("durable")),
                autoDelete=bool(description.get("autoDelete")),
                arguments=arguments,
            )
        elif kind == "exchange":
            vhost.declareExchange(
                description["name"],
                description.get("type", "direct"),
                durable=bool(description.get("durable")),
                autoDelete=bool(description.get("autoDelete")),
                arguments=arguments,
            )
        else:
            raise Refused(f"unknown kind {kind!r}: use queue or exchange")
    except AMQPError as error:
        raise Refused(error.replyText) from None


def deleteObject(vhost: VirtualHost, kind: str, name: str) -> None:
    """
    Delete a queue or an exchange for C{qha-admin del}.
    """
    try:
        if kind == "queue":
            if name not in vhost.queues:
                raise Refused(f"no queue '{name}'")
            queue = vhost.queues[name]
            vhost.deleteQueue(name, owner=queue.owner)
        elif kind == "exchange":
            if name not in vhost.exchanges:
                raise Refused(f"no exchange '{name}'")
            vhost.deleteExchange(name)
        else:
            raise Refused(f"unknown kind {kind!r}: use queue or exchange")
    except AMQPError as error:
        raise Refused(error.replyText) from None


# Bounds and lookups


def checkText(what: str, value: str, limit: int = MAX_NAME) -> str:
    """
    C{value}, if its UTF-8 is at most C{limit} bytes.

    @param what: what it is, for the refusal (C{"a queue name"}).
    @raise Refused: saying which bound it passes.
    """
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise Refused(f"{what} of {size} bytes: at most {limit} bytes are allowed")
    return value


def findVhost(default: VirtualHost, name: str | None) -> VirtualHost:
    """
    The virtual host called C{name} (L{None}: C{/}), of the broker whose
    default virtual host is C{default}.

    @raise Refused: C{NOT_FOUND - vhost 'x' not found} (RabbitMQ's text)
        for one that does not exist.
    """
    if name is None:
        name = DEFAULT_VHOST
    checkText("a vhost name", name, MAX_VHOST_NAME)
    vhost = VirtualHosts.of(default).get(name)
    if vhost is None:
        raise Refused(NotFound(f"vhost '{name}' not found").replyText)
    return vhost


def parseBindArguments(text: str) -> dict[str, Any]:
    """
    The arguments of a binding, from JSON: an object of at most
    L{MAX_ARGUMENTS} entries, whose values are strings, integers, booleans
    or nothing, within L{MAX_ARGUMENTS_JSON} characters.

    @raise Refused: saying what is wrong.
    """
    if len(text) > MAX_ARGUMENTS_JSON:
        raise Refused(f"binding arguments of more than {MAX_ARGUMENTS_JSON} characters of JSON")
    try:
        arguments = json.loads(text) if text else {}
    except (ValueError, RecursionError) as error:
        raise Refused(f"binding arguments are not JSON: {error}") from None
    if not isinstance(arguments, dict):
        raise Refused("binding arguments must be a JSON object of KEY: VALUE")
    if len(arguments) > MAX_ARGUMENTS:
        raise Refused(f"{len(arguments)} binding arguments: at most {MAX_ARGUMENTS} are allowed")
    for key, value in arguments.items():
        checkText("a binding argument's name", key)
        if value is not None and not isinstance(value, (str, int, bool)):
            raise Refused(
                f"binding argument {key!r} is a {type(value).__name__}: give a string,"
                " an integer or a boolean"
            )
        if isinstance(value, str):
            checkText(f"binding argument {key!r}", value, MAX_ARGUMENTS_JSON)
    return arguments


def _refusal(error: AMQPError) -> Refused:
    """
    The refusal of the broker model's C{error}, with its RabbitMQ text.
    """
    return Refused(error.replyText)


# purge, bind, unbind


def purgeQueue(vhost: VirtualHost, name: str) -> int:
    """
    Drop the ready messages of queue C{name} (exclusive ones too, as an
    administrator may), the way C{queue.purge} does, so that the backups
    and the store hear of it.

    @return: how many were dropped.
    """
    checkText("a queue name", name)
    queue = vhost.queues.get(name)
    try:
        return vhost.purgeQueue(name, owner=queue.owner if queue is not None else None)
    except AMQPError as error:
        raise _refusal(error) from None


def _checkBinding(
    source: str, destination: str, destinationType: str, routingKey: str
) -> None:
    """
    The bounds of a binding's names and its kind of destination.
    """
    checkText("an exchange name", source)
    checkText(f"a{'n' if destinationType == 'exchange' else ''} {destinationType} name", destination)
    checkText("a routing key", routingKey)
    if destinationType not in ("queue", "exchange"):
        raise Refused(f"unknown destination type {destinationType!r}: use queue or exchange")


def bind(
    vhost: VirtualHost,
    source: str,
    destination: str,
    destinationType: str,
    routingKey: str,
    arguments: dict[str, Any],
) -> None:
    """
    Bind queue (or exchange) C{destination} to exchange C{source}, the way
    C{queue.bind} (C{exchange.bind}) does.
    """
    _checkBinding(source, destination, destinationType, routingKey)
    try:
        if destinationType == "queue":
            queue = vhost.queues.get(destination)
            vhost.bindQueue(
                destination, source, routingKey, arguments,
                owner=queue.owner if queue is not None else None,
            )
        else:
            vhost.bindExchange(destination, source, routingKey, arguments)
    except AMQPError as error:
        raise _refusal(error) from None


def _findBinding(
    vhost: VirtualHost, source: str, destination: str, destinationType: str,
    routingKey: str, arguments: dict[str, Any],
) -> Binding | None:
    """
    The binding of exactly these, if there is one.
    """
    exchange = vhost.exchanges.get(source)
    target = (vhost.queues if destinationType == "queue" else vhost.exchanges).get(destination)
    if exchange is None or target is None:
        return None
    for binding in exchange.bindings.values():
        if (
            binding.destination is target
            and binding.routingKey == routingKey
            and binding.arguments == arguments
        ):
            return binding
    return None


def unbind(
    vhost: VirtualHost,
    source: str,
    destination: str,
    destinationType: str,
    routingKey: str,
    arguments: dict[str, Any],
) -> None:
    """
    Remove the binding of exactly these, the way C{queue.unbind}
    (C{exchange.unbind}) does.

    @raise Refused: when there is no such binding (AMQP says nothing then;
        a person wants to know).
    """
    _checkBinding(source, destination, destinationType, routingKey)
    try:
        vhost.exchange(source)
        if destinationType == "exchange":
            vhost.exchange(destination)
        elif destination not in vhost.queues:
            vhost.queue(destination)
    except AMQPError as error:
        raise _refusal(error) from None
    binding = _findBinding(vhost, source, destination, destinationType, routingKey, arguments)
    if binding is None:
        with_ = f" and arguments {json.dumps(arguments, sort_keys=True)}" if arguments else ""
        raise Refused(
            f"NOT_FOUND - no binding from exchange '{source}' to {destinationType}"
            f" '{destination}' with routing key '{routingKey}'{with_} in vhost '{vhost.name}'"
        )
    try:
        if destinationType == "queue":
            queue = vhost.queues[destination]
            vhost.unbindQueue(destination, source, routingKey, binding.arguments, owner=queue.owner)
        else:
            vhost.unbindExchange(destination, source, routingKey, binding.arguments)
    except AMQPError as error:
        raise _refusal(error) from None


# Connections and consumers


def clientConnections(connections: Iterable[AMQPServer], vhost: VirtualHost | None = None) -> list[AMQPServer]:
    """
    The client connections that opened a virtual host (C{vhost}'s, or any),
    by name.
    """
    return sorted(
        (
            c for c in connections
            if c.user is not None and (vhost is None or c.vhost is vhost)
        ),
        key=connectionName,
    )


def connectionRows(connections: Iterable[AMQPServer], node: str, vhost: VirtualHost | None = None) -> list[dict[str, Any]]:
    """
    The client connections as C{qha-admin connections} lists them: the
    fields of RabbitMQ's C{/api/connections}, with C{connected_at}
    (milliseconds since the epoch, as RabbitMQ gives it).
    """
    rows = []
    for connection in clientConnections(connections, vhost):
        view = connectionView(connection, node)
        view["connected_at"] = int(connection.connectedAt * 1000)
        rows.append(view)
    return rows


def consumerRows(connections: Iterable[AMQPServer], vhost: VirtualHost) -> list[dict[str, Any]]:
    """
    The consumers of C{vhost}'s queues as C{qha-admin consumers} lists
    them: the fields of RabbitMQ's C{/api/consumers}.
    """
    return [
        view
        for connection in clientConnections(connections, vhost)
        for view in consumerViews(connection, vhost)
    ]


def closeConnection(connections: Iterable[AMQPServer], name: str, reason: str) -> AMQPServer:
    """
    Close the client connection called C{name} with 320
    CONNECTION_FORCED and C{reason}, as RabbitMQ's C{close_connection}.

    @return: the connection.
    @raise Refused: when there is none of that name.
    """
    checkText("a connection name", name, MAX_CONNECTION_NAME)
    checkText("a reason", reason)
    for connection in clientConnections(connections):
        if connectionName(connection) == name:
            connection.connectionError(ConnectionForced(reason))
            return connection
    raise Refused(
        f"NOT_FOUND - no connection '{name}' (qha-admin connections lists their names)"
    )


# Definitions


def exportDocument(
    default: VirtualHost, vhost: str | None, users: UserDatabase | None
) -> dict[str, Any]:
    """
    The definitions document of virtual host C{vhost}, or of every one
    (L{None}), as the HTTP API exports it.
    """
    if vhost is None:
        vhosts = sorted(VirtualHosts.of(default), key=lambda v: v.name)
    else:
        vhosts = [findVhost(default, vhost)]
    return dict(jsonValue(exportDefinitions(vhosts, users)))


def _vhostNames(document: dict[str, Any]) -> list[str]:
    """
    The names in a document's C{vhosts} section, checked.
    """
    listed = document.get("vhosts") or []
    if not isinstance(listed, list):
        raise Refused("definitions: vhosts must be a JSON list")
    names = []
    for item in listed:
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name:
            raise Refused("definitions: every item of vhosts needs a name (a string)")
        names.append(checkText("a vhost name", name, MAX_VHOST_NAME))
    return names


def parseDocument(data: bytes) -> dict[str, Any]:
    """
    A definitions document from its JSON, within L{MAX_DEFINITIONS_BYTES}
    and L{MAX_DEFINITION_ITEMS}.

    @raise Refused: saying what is wrong.
    """
    if len(data) > MAX_DEFINITIONS_BYTES:
        raise Refused(
            f"a definitions document of {len(data)} bytes: at most"
            f" {MAX_DEFINITIONS_BYTES} are allowed (import it in parts)"
        )
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as error:
        raise Refused(f"the definitions are not JSON: {error}") from None
    if not isinstance(document, dict):
        raise Refused("the definitions must be a JSON object (RabbitMQ's definitions format)")
    items = 0
    for section in SECTIONS + ("vhosts",):
        value = document.get(section)
        if value is None:
            continue
        if not isinstance(value, list):
            raise Refused(f"definitions: {section} must be a JSON list")
        items += len(value)
    if items > MAX_DEFINITION_ITEMS:
        raise Refused(
            f"definitions of {items} objects: at most {MAX_DEFINITION_ITEMS} are allowed"
            " (import it in parts)"
        )
    return document


def importDocument(
    default: VirtualHost, document: dict[str, Any], vhost: str | None
) -> dict[str, int]:
    """
    Declare what a definitions document holds, through the virtual hosts'
    methods (replicated and stored like any declaration): into virtual
    host C{vhost} whatever the objects say (RabbitMQ's
    C{POST /api/definitions/VHOST}), or (L{None}) each object into its own
    C{vhost} (C{/} when it names none), adding the vhosts of the
    document's C{vhosts} section that do not exist. A document naming a
    vhost that neither exists nor is in its C{vhosts} section changes
    nothing.

    @return: how many vhosts were added, and exchanges, queues and
        bindings declared.
    @raise Refused: saying what is wrong.
    """
    if vhost is not None:
        findVhost(default, vhost)
    else:
        _vhostNames(document)
    try:
        return importInto(default, document, vhost)
    except UnknownVhost as unknown:
        raise Refused(
            f"{NotFound(f'vhost {unknown.name!r} not found').replyText} (it is not in"
            " the definitions' vhosts either: add it with qha-admin vhost add)"
        ) from None
    except DefinitionsRefused as refused:
        raise Refused(f"definitions: {refused}") from None
    except AMQPError as error:
        raise _refusal(error) from None


# qpid-ha set


def setOptions(
    settings: RuntimeSettings,
    follower: OptionsFollower,
    backupTimeout: float | None = None,
    publicBrokers: str | None = None,
    brokers: str | None = None,
    replicate: str | None = None,
    reset: bool = False,
) -> dict[str, Any]:
    """
    Change the options that can change at run time (Qpid's C{qpid-ha
    set}): the backup timeout a promoted broker waits for its backups,
    the client addresses shown as the public URL, and the default
    replication level (C{--ha-replicate}) of the queues and exchanges
    declared from now on (those there are keep the level they have, see
    L{qha.ha.primary.pinLevels}). The values are recorded in C{settings}:
    the store keeps them and the backups apply them, and they win over
    the configured ones after a restart or a failover; C{reset} forgets
    every value set at run time first (the configured ones come back).
    The others are refused, naming the option to restart with. Nothing
    changes unless everything asked can.

    @return: the settings now, where each came from (see
        L{OptionsFollower.show}).
    @raise Refused: saying why, and what to do instead.
    """
    if brokers is not None:
        raise Refused(
            "--brokers-url cannot change at run time (discovery and the coordinator"
            " are built from it at start): restart the broker with --ha-brokers"
        )
    asked: dict[str, Any] = {}
    for key, value in ((BACKUP_TIMEOUT, backupTimeout), (PUBLIC_BROKERS, publicBrokers), (REPLICATE, replicate)):
        if value is None:
            continue
        try:
            asked[key] = checkValue(key, value)
        except SettingsError as error:
            raise Refused(str(error)) from None
    if PUBLIC_BROKERS in asked:
        try:
            asked[PUBLIC_BROKERS] = ",".join(parseBrokers(asked[PUBLIC_BROKERS]))
        except ValueError as error:
            raise Refused(f"--public-url: {error}") from None
    if reset:
        settings.reset()
    if asked:
        settings.set(asked)
    return follower.show(settings)


__all__ = [
    "MAX_ARGUMENTS",
    "MAX_ARGUMENTS_JSON",
    "MAX_BACKUP_TIMEOUT",
    "MAX_BROKERS_TEXT",
    "MAX_CONNECTION_NAME",
    "MAX_DEFINITIONS_BYTES",
    "MAX_DEFINITION_ITEMS",
    "MAX_NAME",
    "addObject",
    "bind",
    "checkText",
    "closeConnection",
    "connectionRows",
    "consumerRows",
    "deleteObject",
    "exportDocument",
    "findVhost",
    "importDocument",
    "listObjects",
    "parseBindArguments",
    "parseDocument",
    "purgeQueue",
    "setOptions",
    "unbind",
]
