"""
The broker's objects and client connections as RabbitMQ shows them: the
same JSON field names where a field means the same (C{auto_delete},
C{destination_type}, C{consumer_tag}, ...). Pure functions of the model,
shared by the HTTP API (L{qha.web}) and C{qha-admin} (L{qha.admin}).
"""

from __future__ import annotations

import base64
import datetime
import decimal
import hashlib
import json
from typing import Any, Iterable

from ..amqp.protocol import AMQPServer
from ..broker.exchange import Binding
from ..broker.queue import Queue
from ..broker.vhost import VirtualHost


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


def hostPort(address: str) -> tuple[str, int | None]:
    """
    The host and port of C{HOST:PORT} (no port: L{None}).
    """
    host, _, port = address.rpartition(":")
    return host, int(port) if port.isdigit() else None


def connectionView(connection: AMQPServer, node: str) -> dict[str, Any]:
    """
    A client connection as C{GET /api/connections} shows it.
    """
    from twisted.internet.interfaces import ISSLTransport

    transport = connection.transport
    local = transport.getHost() if transport is not None else None
    peerHost, peerPort = hostPort(connection.peer)
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
    peerHost, peerPort = hostPort(connection.peer)
    return {
        "name": f"{name} ({number})",
        "number": number,
        "connection_name": name,
        "peer_host": peerHost,
        "peer_port": peerPort,
        "user": connection.user,
    }


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


__all__ = [
    "allBindings",
    "bindingView",
    "channelDetails",
    "connectionName",
    "connectionView",
    "consumerViews",
    "dumps",
    "hostPort",
    "jsonValue",
    "propertiesKey",
]
