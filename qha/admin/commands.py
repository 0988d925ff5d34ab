"""
The admin commands C{qha-admin} sends to a broker's AMP port.

A broker answers them in every role; those that change the broker's state
(promote, add, delete) say why when they refuse.

The commands on a virtual host's objects take its name as C{vhost}
(optional: C{/} when not given, so an older C{qha-admin} still works).
"""

from __future__ import annotations

from twisted.protocols import amp

from ..ha.commands import ERRORS, Authenticate, Challenge, ChunkedBytes, Refused

__all__ = [
    "AddObject",
    "Authenticate",
    "Bind",
    "Challenge",
    "CloseConnection",
    "DeleteObject",
    "ExportDefinitions",
    "ImportDefinitions",
    "ListConnections",
    "ListConsumers",
    "ListObjects",
    "Ping",
    "Promote",
    "Purge",
    "Query",
    "Refused",
    "Replicate",
    "SetOptions",
    "Unbind",
    "VhostAdd",
    "VhostDelete",
    "VhostList",
]


class Ping(amp.Command):
    """
    Is the broker alive?
    """

    arguments = list[tuple[bytes, amp.Argument]]()
    response = [(b"role", amp.Unicode())]
    errors = ERRORS


class Query(amp.Command):
    """
    The broker's HA state, as JSON.
    """

    arguments = list[tuple[bytes, amp.Argument]]()
    response = [(b"state", amp.Unicode())]
    errors = ERRORS


class Promote(amp.Command):
    """
    Make this broker the primary (what a cluster manager does).
    """

    arguments = [(b"force", amp.Boolean())]
    response = [(b"role", amp.Unicode()), (b"epoch", amp.Integer())]
    errors = ERRORS


class Replicate(amp.Command):
    """
    Make a local queue a live replica of a queue on another broker.
    """

    arguments = [(b"remote", amp.Unicode()), (b"queue", amp.Unicode())]
    response = list[tuple[bytes, amp.Argument]]()
    errors = ERRORS


class ListObjects(amp.Command):
    """
    Queues, exchanges or bindings with their counts, as JSON.
    """

    arguments = [(b"kind", amp.Unicode()), (b"vhost", amp.Unicode(optional=True))]
    response = [(b"objects", ChunkedBytes())]
    errors = ERRORS


class AddObject(amp.Command):
    """
    Declare a queue or an exchange (JSON description).
    """

    arguments = [
        (b"kind", amp.Unicode()),
        (b"description", amp.Unicode()),
        (b"vhost", amp.Unicode(optional=True)),
    ]
    response = list[tuple[bytes, amp.Argument]]()
    errors = ERRORS


class DeleteObject(amp.Command):
    """
    Delete a queue or an exchange.
    """

    arguments = [
        (b"kind", amp.Unicode()),
        (b"name", amp.Unicode()),
        (b"vhost", amp.Unicode(optional=True)),
    ]
    response = list[tuple[bytes, amp.Argument]]()
    errors = ERRORS


class VhostList(amp.Command):
    """
    The broker's virtual hosts with their counts, as JSON.
    """

    arguments = list[tuple[bytes, amp.Argument]]()
    response = [(b"vhosts", ChunkedBytes())]
    errors = ERRORS


class VhostAdd(amp.Command):
    """
    Add a virtual host.
    """

    arguments = [(b"name", amp.Unicode())]
    response = list[tuple[bytes, amp.Argument]]()
    errors = ERRORS


class VhostDelete(amp.Command):
    """
    Delete a virtual host with its queues and exchanges, closing its
    connections.
    """

    arguments = [(b"name", amp.Unicode())]
    response = list[tuple[bytes, amp.Argument]]()
    errors = ERRORS


# Managing objects and clients (qha-admin purge, bind, unbind, connections,
# consumers, close-connection, definitions, set).


class Purge(amp.Command):
    """
    Drop the ready messages of a queue; answers how many.
    """

    arguments = [(b"queue", amp.Unicode()), (b"vhost", amp.Unicode(optional=True))]
    response = [(b"messages", amp.Integer())]
    errors = ERRORS


class Bind(amp.Command):
    """
    Bind a queue (or, with C{destinationType} C{exchange}, an exchange) to
    an exchange; C{arguments} is a JSON object.
    """

    arguments = [
        (b"source", amp.Unicode()),
        (b"destination", amp.Unicode()),
        (b"destinationType", amp.Unicode()),
        (b"routingKey", amp.Unicode()),
        (b"arguments", amp.Unicode()),
        (b"vhost", amp.Unicode(optional=True)),
    ]
    response = list[tuple[bytes, amp.Argument]]()
    errors = ERRORS


class Unbind(amp.Command):
    """
    Remove a binding (the arguments of L{Bind}).
    """

    arguments = Bind.arguments
    response = list[tuple[bytes, amp.Argument]]()
    errors = ERRORS


class ListConnections(amp.Command):
    """
    The client connections (of one virtual host, or all), as JSON.
    """

    arguments = [(b"vhost", amp.Unicode(optional=True))]
    response = [(b"connections", ChunkedBytes())]
    errors = ERRORS


class ListConsumers(amp.Command):
    """
    The consumers of a virtual host's queues, as JSON.
    """

    arguments = [(b"vhost", amp.Unicode(optional=True))]
    response = [(b"consumers", ChunkedBytes())]
    errors = ERRORS


class CloseConnection(amp.Command):
    """
    Close a client connection, by its name, with 320 CONNECTION_FORCED and
    C{reason}.
    """

    arguments = [(b"name", amp.Unicode()), (b"reason", amp.Unicode())]
    response = list[tuple[bytes, amp.Argument]]()
    errors = ERRORS


class ExportDefinitions(amp.Command):
    """
    RabbitMQ's definitions document of one virtual host, or of all.
    """

    arguments = [(b"vhost", amp.Unicode(optional=True))]
    response = [(b"definitions", ChunkedBytes())]
    errors = ERRORS


class ImportDefinitions(amp.Command):
    """
    Declare what a definitions document holds (into one virtual host, or
    each object into its own); answers how many of each, as JSON.
    """

    arguments = [(b"definitions", ChunkedBytes()), (b"vhost", amp.Unicode(optional=True))]
    response = [(b"imported", amp.Unicode())]
    errors = ERRORS


class SetOptions(amp.Command):
    """
    Change options at run time (Qpid's C{qpid-ha set}), recorded so that
    they win over the configured ones after a restart or a failover;
    answers the settings now, where each came from, as JSON.
    """

    arguments = [
        (b"backupTimeout", amp.Float(optional=True)),
        (b"publicBrokers", amp.Unicode(optional=True)),
        (b"brokers", amp.Unicode(optional=True)),
        (b"replicate", amp.Unicode(optional=True)),
        # Forget the values set at run time first (the configured ones
        # come back); an older broker refuses the unknown argument.
        (b"reset", amp.Boolean(optional=True)),
    ]
    response = [(b"settings", amp.Unicode())]
    errors = ERRORS


# Users and permissions managed at run time (issue 13). A password travels
# only as its scrypt hash, made by qha-admin.


class UserList(amp.Command):
    """
    The users and their tags, as JSON.
    """

    arguments = list[tuple[bytes, amp.Argument]]()
    response = [(b"users", ChunkedBytes())]
    errors = ERRORS


class UserAdd(amp.Command):
    """
    Add a user (C{rabbitmqctl add_user}): its password's scrypt hash and
    its tags (comma-separated).
    """

    arguments = [(b"name", amp.Unicode()), (b"hash", amp.Unicode()), (b"tags", amp.Unicode())]
    response = list[tuple[bytes, amp.Argument]]()
    errors = ERRORS


class UserDelete(amp.Command):
    """
    Delete a user, closing its connections.
    """

    arguments = [(b"name", amp.Unicode())]
    response = list[tuple[bytes, amp.Argument]]()
    errors = ERRORS


class UserPassword(amp.Command):
    """
    Change a user's password (its new scrypt hash), closing its
    connections.
    """

    arguments = [(b"name", amp.Unicode()), (b"hash", amp.Unicode())]
    response = list[tuple[bytes, amp.Argument]]()
    errors = ERRORS


class UserTags(amp.Command):
    """
    Replace a user's tags (comma-separated).
    """

    arguments = [(b"name", amp.Unicode()), (b"tags", amp.Unicode())]
    response = list[tuple[bytes, amp.Argument]]()
    errors = ERRORS


class PermissionsList(amp.Command):
    """
    The permissions in one virtual host, as JSON.
    """

    arguments = [(b"vhost", amp.Unicode())]
    response = [(b"permissions", ChunkedBytes())]
    errors = ERRORS


class PermissionsSet(amp.Command):
    """
    Set a user's permissions in a virtual host.
    """

    arguments = [
        (b"user", amp.Unicode()),
        (b"vhost", amp.Unicode()),
        (b"configure", amp.Unicode()),
        (b"write", amp.Unicode()),
        (b"read", amp.Unicode()),
    ]
    response = list[tuple[bytes, amp.Argument]]()
    errors = ERRORS


class PermissionsClear(amp.Command):
    """
    Clear a user's permissions in a virtual host, closing its connections
    there.
    """

    arguments = [(b"user", amp.Unicode()), (b"vhost", amp.Unicode())]
    response = list[tuple[bytes, amp.Argument]]()
    errors = ERRORS


__all__ += [
    "PermissionsClear",
    "PermissionsList",
    "PermissionsSet",
    "UserAdd",
    "UserDelete",
    "UserList",
    "UserPassword",
    "UserTags",
]
