"""
The broker's objects as RabbitMQ's management API shows them: the same JSON
field names where a field means the same (C{messages}, C{messages_ready},
C{auto_delete}, C{destination_type}, ...). Pure functions of the model: no
I/O, no request.
"""

from __future__ import annotations

import base64
from typing import Any

from ..amqp.protocol import AMQPServer
from ..broker.exchange import Exchange
from ..broker.message import Message
from ..broker.queue import Queue
from ..broker.vhost import VirtualHost
from ..ha.primary import cachedLevel
from ..management.views import (
    allBindings,
    bindingView,
    channelDetails,
    connectionName,
    connectionView,
    consumerViews,
    dumps,
    hostPort,
    jsonValue,
    propertiesKey,
)

DEFAULT_EXCHANGE_ALIAS = "amq.default"
"""
The name of the default exchange in URLs (its real name is empty).
"""


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
        "qha_replicate": cachedLevel(queue, replicateDefault),
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
        "qha_replicate": cachedLevel(exchange, replicateDefault),
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
            "connection_details": {"name": name, "peer_host": hostPort(connection.peer)[0],
                                   "peer_port": hostPort(connection.peer)[1]},
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
