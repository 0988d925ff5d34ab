"""
The broker's objects as C{qha-admin list}, C{add} and C{del} see them:
queues, exchanges and bindings of the virtual host.
"""

from __future__ import annotations

from typing import Any

from ..broker.errors import AMQPError
from ..broker.queue import Queue
from ..broker.vhost import REPLICATE_ARGUMENT, VirtualHost
from ..ha.commands import Refused
from ..ha.primary import replicateLevel


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
                "replicate": replicateLevel(q, default),
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
                "replicate": replicateLevel(x, default),
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


__all__ = ["addObject", "deleteObject", "listObjects"]
