"""
RabbitMQ's definitions document (C{GET /api/definitions},
C{rabbitmqctl export_definitions}): the exchanges, queues and bindings of
virtual hosts, with the users (without password hashes) and their
permissions. The HTTP API and C{qha-admin definitions} export and import
it through these functions, so a file from one is read by the other.

Imports declare through the virtual host's methods, the ones AMQP clients
reach: the declarations are replicated and stored like any other.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from .. import __version__
from ..amqp.users import GUEST, UserDatabase
from ..broker.errors import NotFound
from ..broker.queue import Queue
from ..broker.vhost import VirtualHost
from ..broker.vhosts import DEFAULT_VHOST, VirtualHosts
from .views import allBindings, bindingView

MANAGEMENT_VERSION = "3.10.0"
"""
The version of RabbitMQ's management API (and definitions format) followed.
"""

ADMINISTRATOR = "administrator"
"""
RabbitMQ's tag of users who may do everything.
"""

SECTIONS = ("queues", "exchanges", "bindings")
"""
The sections of a definitions document an import declares.
"""


class DefinitionsRefused(ValueError):
    """
    A definitions document that cannot be imported: the message says what
    is wrong with it.
    """


class UnknownVhost(DefinitionsRefused):
    """
    A definitions document with objects of a virtual host that neither
    exists nor is in the document's C{vhosts} section.

    @ivar name: that virtual host.
    """

    def __init__(self, name: str) -> None:
        """
        @param name: the virtual host the document names.
        """
        super().__init__(f"vhost {name!r} not found (it is not in the definitions' vhosts either)")
        self.name = name


def effectiveTags(users: UserDatabase, name: str) -> frozenset[str]:
    """
    The tags of user C{name}: those of the users file, or C{administrator}
    for the built-in C{guest} without tags (RabbitMQ's guest is an
    administrator; it logs in from loopback only).
    """
    tags = users.tags(name)
    if not tags and name == GUEST:
        return frozenset({ADMINISTRATOR})
    return tags


def flag(body: dict[str, Any], name: str, default: bool = False) -> bool:
    """
    A boolean field of a JSON object (RabbitMQ's tools send C{true} or
    C{"true"}).
    """
    value = body.get(name, default)
    if isinstance(value, str):
        return value.lower() == "true"
    return bool(value)


def table(body: dict[str, Any], name: str = "arguments") -> dict[str, Any]:
    """
    An arguments table of a JSON object.

    @raise DefinitionsRefused: if it is not a JSON object.
    """
    value = body.get(name) or {}
    if not isinstance(value, dict):
        raise DefinitionsRefused(f"{name} must be a JSON object")
    return dict(value)


def userView(users: UserDatabase, name: str) -> dict[str, Any]:
    """
    A user as RabbitMQ lists it, without its password hash.
    """
    return {
        "name": name,
        "tags": sorted(effectiveTags(users, name)),
        "password_hash": "",
        "hashing_algorithm": "scrypt",
    }


def permissionViews(users: UserDatabase, vhosts: Iterable[str]) -> list[dict[str, Any]]:
    """
    The permissions of every user in each of C{vhosts}, as RabbitMQ lists
    them.
    """
    rows = []
    for vhost in vhosts:
        for name in users.users():
            permissions = users.permissions(name, vhost)
            if permissions is not None:
                rows.append(
                    {
                        "user": name,
                        "vhost": vhost,
                        "configure": permissions.configure,
                        "write": permissions.write,
                        "read": permissions.read,
                    }
                )
    return rows


def exportDefinitions(vhosts: Iterable[VirtualHost], users: UserDatabase | None) -> dict[str, Any]:
    """
    The definitions document of C{vhosts}: their queues, exchanges and
    bindings (not exclusive queues, not built-in exchanges), and the users
    (without password hashes) and their permissions in them.

    @param users: the broker's users; L{None} leaves the users and
        permissions out.
    """
    vhosts = list(vhosts)
    queues = []
    exchanges = []
    bindings = []
    for vhost in vhosts:
        queues += [
            {
                "name": q.name,
                "vhost": vhost.name,
                "durable": q.durable,
                "auto_delete": q.autoDelete,
                "arguments": q.arguments,
            }
            for q in vhost.queues.values()
            if not q.exclusive
        ]
        exchanges += [
            {
                "name": x.name,
                "vhost": vhost.name,
                "type": x.type,
                "durable": x.durable,
                "auto_delete": x.autoDelete,
                "internal": x.internal,
                "arguments": x.arguments,
            }
            for x in vhost.exchanges.values()
            if x.name and not x.name.startswith("amq.")
        ]
        for binding in allBindings(vhost):
            destination = binding.destination
            if binding.source is vhost.defaultExchange:
                continue
            if isinstance(destination, Queue) and destination.exclusive:
                continue
            view = bindingView(binding, vhost)
            del view["properties_key"]
            bindings.append(view)
    return {
        "rabbit_version": MANAGEMENT_VERSION,
        "rabbitmq_version": MANAGEMENT_VERSION,
        "product_name": "qha",
        "product_version": __version__,
        "users": [] if users is None else [userView(users, name) for name in users.users()],
        "vhosts": [{"name": vhost.name} for vhost in vhosts],
        "permissions": [] if users is None else permissionViews(users, [v.name for v in vhosts]),
        "topic_permissions": [],
        "parameters": [],
        "global_parameters": [],
        "policies": [],
        "queues": queues,
        "exchanges": exchanges,
        "bindings": bindings,
    }


VhostOf = Callable[[str, Any], VirtualHost]
"""
Where an imported object goes: called with its section and its C{vhost}
field (L{None} when it has none), returns the virtual host, or raises to
refuse the document.
"""


def importDefinitions(document: dict[str, Any], vhostOf: VhostOf) -> dict[str, int]:
    """
    Declare the exchanges, queues and bindings of a definitions document
    (users and permissions are not imported). Every object's virtual host
    is found first, so that a document naming one that cannot be had
    changes nothing; after that it stops at the first refusal of the
    broker, with what came before it declared.

    @param vhostOf: finds each object's virtual host (see L{VhostOf}).
    @return: how many exchanges, queues and bindings were declared.
    @raise DefinitionsRefused: for a document that is not one.
    @raise qha.broker.errors.AMQPError: the broker refused a declaration.
    """
    found: dict[str, list[tuple[dict[str, Any], VirtualHost]]] = {}
    for section in SECTIONS:
        items = document.get(section) or []
        if not isinstance(items, list):
            raise DefinitionsRefused(f"{section} must be a JSON list")
        found[section] = []
        for item in items:
            if not isinstance(item, dict):
                raise DefinitionsRefused(f"{section}: every item must be a JSON object")
            found[section].append((item, vhostOf(section, item.get("vhost"))))
    for section, fields in (
        ("exchanges", ("name",)), ("queues", ("name",)), ("bindings", ("source", "destination"))
    ):
        for item, _ in found[section]:
            for name in fields:
                if not isinstance(item.get(name), str):
                    raise DefinitionsRefused(f"{section}: an item without a {name} (a string)")
            if section == "bindings" and not isinstance(item.get("routing_key", ""), str):
                raise DefinitionsRefused("bindings: a routing_key must be a string")
    for item, vhost in found["exchanges"]:
        vhost.declareExchange(
            item["name"], item.get("type", "direct"),
            durable=flag(item, "durable", True), autoDelete=flag(item, "auto_delete"),
            internal=flag(item, "internal"), arguments=table(item),
        )
    for item, vhost in found["queues"]:
        vhost.declareQueue(
            item["name"], durable=flag(item, "durable", True),
            autoDelete=flag(item, "auto_delete"), arguments=table(item),
        )
    for item, vhost in found["bindings"]:
        if item.get("destination_type", "queue") == "queue":
            vhost.bindQueue(
                item["destination"], item["source"], item.get("routing_key", ""), table(item),
            )
        else:
            vhost.bindExchange(
                item["destination"], item["source"], item.get("routing_key", ""), table(item),
            )
    return {section: len(found[section]) for section in SECTIONS}


def vhostsOf(default: VirtualHost, name: str | None) -> list[VirtualHost]:
    """
    The virtual hosts a definitions export covers: every one of the broker
    whose default virtual host is C{default}, by name (L{None}), or the one
    called C{name}.

    @raise NotFound: RabbitMQ's C{vhost 'x' not found} for one that does
        not exist.
    """
    registry = VirtualHosts.of(default)
    if name is None:
        return sorted(registry, key=lambda vhost: vhost.name)
    vhost = registry.get(name)
    if vhost is None:
        raise NotFound(f"vhost {name!r} not found")
    return [vhost]


def listedVhosts(document: dict[str, Any]) -> list[str]:
    """
    The names in a definitions document's C{vhosts} section.

    @raise DefinitionsRefused: for a section that is not a list of objects
        with a name.
    """
    listed = document.get("vhosts") or []
    if not isinstance(listed, list):
        raise DefinitionsRefused("vhosts must be a JSON list")
    names = []
    for item in listed:
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name:
            raise DefinitionsRefused("every item of vhosts needs a name (a string)")
        names.append(name)
    return names


def importInto(default: VirtualHost, document: dict[str, Any], vhost: str | None) -> dict[str, int]:
    """
    Declare what a definitions document holds in the virtual hosts of the
    broker whose default virtual host is C{default}, through their
    methods (replicated and stored like any declaration): into virtual
    host C{vhost} whatever the objects say (RabbitMQ's
    C{POST /api/definitions/VHOST}), or (L{None}, C{POST /api/definitions})
    each object into its own C{vhost} (C{/} when it names none), adding
    first the vhosts of the document's C{vhosts} section that do not exist.
    A document naming a vhost that neither exists nor is in its C{vhosts}
    section changes nothing.

    @return: how many vhosts were added, and exchanges, queues and
        bindings declared.
    @raise NotFound: C{vhost} does not exist.
    @raise UnknownVhost: an object's vhost does not exist and is not in
        the document's C{vhosts}.
    @raise DefinitionsRefused: for a document that is not one.
    @raise qha.broker.errors.AMQPError: the broker refused a vhost or a
        declaration (what came before it stays).
    """
    registry = VirtualHosts.of(default)
    added: list[str] = []
    if vhost is not None:
        [target] = vhostsOf(default, vhost)

        def vhostOf(section: str, name: Any) -> VirtualHost:
            """
            The one virtual host everything goes into.
            """
            return target

    else:
        listed = listedVhosts(document)
        known = set(registry.names()) | set(listed)
        for section in SECTIONS:
            items = document.get(section) or []
            if not isinstance(items, list):
                raise DefinitionsRefused(f"{section} must be a JSON list")
            for item in items:
                name = item.get("vhost", DEFAULT_VHOST) if isinstance(item, dict) else DEFAULT_VHOST
                if not isinstance(name, str):
                    raise DefinitionsRefused(f"{section}: a vhost must be a string")
                if name not in known:
                    raise UnknownVhost(name)
        for name in listed:
            if name not in registry:
                registry.add(name)
                added.append(name)

        def vhostOf(section: str, name: Any) -> VirtualHost:
            """
            The virtual host the object names (C{/} if none).
            """
            found = registry.get(DEFAULT_VHOST if name is None else name)
            if found is None:
                raise UnknownVhost(name)
            return found

    counts = importDefinitions(document, vhostOf)
    return {"vhosts": len(added), **counts}


__all__ = [
    "ADMINISTRATOR",
    "DefinitionsRefused",
    "MANAGEMENT_VERSION",
    "SECTIONS",
    "UnknownVhost",
    "VhostOf",
    "effectiveTags",
    "exportDefinitions",
    "flag",
    "importDefinitions",
    "importInto",
    "listedVhosts",
    "permissionViews",
    "table",
    "userView",
    "vhostsOf",
]
