"""
The broker's objects as RabbitMQ's management API shows them: the same JSON
field names where a field means the same (C{messages}, C{messages_ready},
C{auto_delete}, C{destination_type}, ...). Pure functions of the model: no
I/O, no request.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import hashlib
import json
from typing import Any, Iterable

from ..amqp.protocol import AMQPServer
from ..broker.exchange import Binding, Exchange
from ..broker.message import Message
from ..broker.queue import Queue
from ..broker.vhost import VirtualHost
from ..ha.primary import replicateLevel

DEFAULT_EXCHANGE_ALIAS = "amq.default"
"""
The name of the default exchange in URLs (its real name is empty).
"""


def jsonValue(value: Any) -> Any:
    """
    C{value} (from an AMQP field table or properties) as something
    L{json.dumps} takes: bytes as text, decimals and times as numbers or
    text.
    """
    if isinstance(value, dict):
        return {str(k): jsonValue(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonValue(v) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, datetime.datetime):
        return int(value.replace(tzinfo=datetime.timezone.utc).timestamp())
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def dumps(data: Any) -> bytes:
    """
    C{data} as UTF-8 JSON.
    """
    return json.dumps(jsonValue(data), separators=(",", ":")).encode("utf-8")


def queueView(queue: Queue, vhost: VirtualHost, node: str, replicateDefault: str) -> dict[str, Any]:
    """
    A queue as C{GET /api/queues/...} shows it.
    """
    ready = queue.messageCount
    unacked = queue.unacked
    # A plain queue does not keep its byte count (its hot path stays
    # lean): counted here, once per listing.
    readyBytes = (
        sum(len(entry.message.body) for entry in queue.entries) if queue.plain else queue.readyBytes
    )
    unackedBytes = sum(len(entry.message.body) for entry in queue.held.values())
    return {
        "name": queue.name,
        "vhost": vhost.name,
        "durable": queue.durable,
        "auto_delete": queue.autoDelete,
        "exclusive": queue.exclusive,
        "arguments": jsonValue(queue.arguments),
        "node": node,
        "state": "running",
        "type": "classic",
        "policy": None,
        "messages": ready + unacked,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
        "message_bytes": readyBytes + unackedBytes,
        "message_bytes_ready": readyBytes,
        "message_bytes_unacknowledged": unackedBytes,
        "consumers": queue.consumerCount,
        "exclusive_consumer_tag": None,
        "qha_replicate": replicateLevel(queue, replicateDefault),
    }


def exchangeView(exchange: Exchange, vhost: VirtualHost, replicateDefault: str) -> dict[str, Any]:
    """
    An exchange as C{GET /api/exchanges/...} shows it.
    """
    return {
        "name": exchange.name,
        "vhost": vhost.name,
        "type": exchange.type,
        "durable": exchange.durable,
        "auto_delete": exchange.autoDelete,
        "internal": exchange.internal,
        "arguments": jsonValue(exchange.arguments),
        "user_who_performed_action": "",
        "qha_replicate": replicateLevel(exchange, replicateDefault),
    }


def propertiesKey(routingKey: str, arguments: dict[str, Any]) -> str:
    """
    The name of a binding in URLs (RabbitMQ's C{properties_key}): its
    routing key, with a digest of its arguments when it has some (RabbitMQ
    makes it the same way, C{KEY~DIGEST}).
    """
    if not arguments:
        return routingKey
    digest = hashlib.sha256(dumps(sorted(jsonValue(arguments).items()))).digest()
    return routingKey + "~" + base64.urlsafe_b64encode(digest[:9]).decode("ascii")


def bindingView(binding: Binding, vhost: VirtualHost) -> dict[str, Any]:
    """
    A binding as C{GET /api/bindings/...} shows it.
    """
    return {
        "source": binding.source.name,
        "vhost": vhost.name,
        "destination": binding.destination.name,
        "destination_type": "queue" if isinstance(binding.destination, Queue) else "exchange",
        "routing_key": binding.routingKey,
        "arguments": jsonValue(binding.arguments),
        "properties_key": propertiesKey(binding.routingKey, binding.arguments),
    }


def allBindings(vhost: VirtualHost) -> Iterable[Binding]:
    """
    Every binding of C{vhost}: the default exchange's (one per queue) first,
    as RabbitMQ lists them.
    """
    for exchange in vhost.exchanges.values():
        yield from exchange.bindings.values()


def connectionName(connection: AMQPServer) -> str:
    """
    A connection's name, as RabbitMQ makes it: C{PEER -> BROKER}.
    """
    transport = connection.transport
    host = transport.getHost() if transport is not None else None
    local = f"{getattr(host, 'host', '?')}:{getattr(host, 'port', '?')}"
    return f"{connection.peer} -> {local}"


def _hostPort(address: str) -> tuple[str, int | None]:
    host, _, port = address.rpartition(":")
    return host, int(port) if port.isdigit() else None


def connectionView(connection: AMQPServer, node: str) -> dict[str, Any]:
    """
    A client connection as C{GET /api/connections} shows it.
    """
    from twisted.internet.interfaces import ISSLTransport

    transport = connection.transport
    local = transport.getHost() if transport is not None else None
    peerHost, peerPort = _hostPort(connection.peer)
    return {
        "name": connectionName(connection),
        "node": node,
        "user": connection.user,
        "vhost": connection.vhost.name,
        "peer_host": peerHost,
        "peer_port": peerPort,
        "host": getattr(local, "host", None),
        "port": getattr(local, "port", None),
        "protocol": "AMQP 0-9-1",
        "type": "network",
        "state": "running" if connection.state == "open" else connection.state,
        "ssl": ISSLTransport.providedBy(transport),
        "channels": len(connection.channels),
        "channel_max": connection.channelMax,
        "frame_max": connection.frameMax,
        "timeout": connection.heartbeat,
        "client_properties": jsonValue(connection.clientProperties),
    }


def channelDetails(connection: AMQPServer, number: int) -> dict[str, Any]:
    """
    The C{channel_details} of a consumer (RabbitMQ's fields).
    """
    name = connectionName(connection)
    peerHost, peerPort = _hostPort(connection.peer)
    return {
        "name": f"{name} ({number})",
        "number": number,
        "connection_name": name,
        "peer_host": peerHost,
        "peer_port": peerPort,
        "user": connection.user,
    }


def channelViews(connection: AMQPServer, node: str) -> list[dict[str, Any]]:
    """
    A connection's channels as C{GET /api/channels} shows them.
    """
    name = connectionName(connection)
    return [
        {
            "name": f"{name} ({number})",
            "number": number,
            "node": node,
            "user": connection.user,
            "vhost": connection.vhost.name,
            "connection_details": {"name": name, "peer_host": _hostPort(connection.peer)[0],
                                   "peer_port": _hostPort(connection.peer)[1]},
            "consumer_count": len(channel.consumers),
            "messages_unacknowledged": len(channel.unacked),
            "prefetch_count": channel.prefetchCount,
            "global_prefetch_count": channel.globalPrefetch,
            "confirm": channel.confirming,
            "transactional": channel.transaction is not None,
            "state": "closing" if channel.closing else "running",
        }
        for number, channel in sorted(connection.channels.items())
    ]


def consumerViews(connection: AMQPServer, vhost: VirtualHost) -> list[dict[str, Any]]:
    """
    A connection's consumers as C{GET /api/consumers} shows them.
    """
    return [
        {
            "consumer_tag": tag,
            "channel_details": channelDetails(connection, number),
            "queue": {"name": consumer.queue.name, "vhost": vhost.name},
            "ack_required": not consumer.noAck,
            "exclusive": consumer.exclusive,
            "prefetch_count": consumer.prefetch,
            "active": True,
            "arguments": jsonValue(consumer.arguments),
        }
        for number, channel in sorted(connection.channels.items())
        for tag, consumer in channel.consumers.items()
    ]


def messageView(message: Message, redelivered: bool, left: int, encoding: str, truncate: int | None) -> dict[str, Any]:
    """
    A message as C{POST /api/queues/.../get} returns it: the payload as
    text where it is UTF-8 and C{encoding} is C{auto}, else base64.
    """
    body = message.body
    if truncate is not None:
        body = body[:truncate]
    payload: str
    payloadEncoding = "string"
    try:
        if encoding != "auto":
            raise UnicodeDecodeError("utf-8", b"", 0, 1, "base64 asked for")
        payload = body.decode("utf-8")
    except UnicodeDecodeError:
        payload = base64.b64encode(body).decode("ascii")
        payloadEncoding = "base64"
    decoded = message.properties
    properties = {}
    for name in decoded.attributes():
        value = getattr(decoded, name, None)
        if value is not None and value != "":
            properties["type" if name == "message_type" else name] = jsonValue(value)
    return {
        "payload_bytes": len(message.body),
        "redelivered": redelivered,
        "exchange": message.exchange,
        "routing_key": message.routingKey,
        "message_count": left,
        "properties": properties,
        "payload": payload,
        "payload_encoding": payloadEncoding,
    }


__all__ = [
    "DEFAULT_EXCHANGE_ALIAS",
    "allBindings",
    "bindingView",
    "channelViews",
    "connectionName",
    "connectionView",
    "consumerViews",
    "dumps",
    "exchangeView",
    "jsonValue",
    "messageView",
    "propertiesKey",
    "queueView",
]
