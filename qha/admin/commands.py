"""
The admin commands C{qha-admin} sends to a broker's AMP port.

A broker answers them in every role; those that change the broker's state
(promote, add, delete) say why when they refuse.
"""

from __future__ import annotations

from twisted.protocols import amp

from ..ha.commands import ERRORS, Authenticate, Challenge, ChunkedBytes, Refused

__all__ = [
    "AddObject",
    "Authenticate",
    "Challenge",
    "DeleteObject",
    "ListObjects",
    "Ping",
    "Promote",
    "Query",
    "Refused",
    "Replicate",
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

    arguments = [(b"kind", amp.Unicode())]
    response = [(b"objects", ChunkedBytes())]
    errors = ERRORS


class AddObject(amp.Command):
    """
    Declare a queue or an exchange (JSON description).
    """

    arguments = [(b"kind", amp.Unicode()), (b"description", amp.Unicode())]
    response = list[tuple[bytes, amp.Argument]]()
    errors = ERRORS


class DeleteObject(amp.Command):
    """
    Delete a queue or an exchange.
    """

    arguments = [(b"kind", amp.Unicode()), (b"name", amp.Unicode())]
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
