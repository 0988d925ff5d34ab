"""
Limits on what clients may make the broker hold: how many connections
(in all and per user), and how many fields a message's headers table (or a
method's arguments table) may have.

The other limits live where they are enforced: C{--max-message-size} and
C{--frame-max} in the channel and the frame reader, the memory high
watermark in L{qha.broker.vhost.Resources}, C{--handshake-timeout} in the
connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..broker.errors import NotAllowed

__all__ = ["ConnectionLimits", "DEFAULT_MAX_HEADER_FIELDS", "countFields"]

DEFAULT_MAX_HEADER_FIELDS = 1000
"""
The most fields a headers table may have, nested ones included, unless
C{--max-header-fields} says otherwise. Clients send tens (kombu and celery
about 20, a message dead-lettered many times a few hundred); the issue that
asked for a cap measured 37-67 ms of broker CPU per publish with 9,000.
"""


def countFields(table: Any, limit: int) -> int:
    """
    The number of values in a decoded table or array, nested ones included,
    counted up to just past C{limit} (so that a huge table costs no more
    than a table of C{limit} fields).
    """
    count = 0
    pending = [table]
    while pending:
        value = pending.pop()
        items = value.values() if isinstance(value, dict) else value
        for item in items:
            count += 1
            if count > limit:
                return count
            if isinstance(item, (dict, list, tuple)):
                pending.append(item)
    return count


@dataclass
class ConnectionLimits:
    """
    The connection limits of one broker, and the connections they count.

    A connection counts from connection.open-ok until it is gone, as in
    RabbitMQ (which checks its limits at connection.open); connections
    still in their handshake are bounded by C{--handshake-timeout}.

    @ivar maxConnections: the most open client connections (0: no limit),
        C{--max-connections}.
    @ivar maxConnectionsPerUser: the most open connections of one user (0:
        no limit), C{--max-connections-per-user}.
    @ivar maxHeaderFields: the most fields in a message's headers table or
        a method's arguments, nested ones included (0: no limit),
        C{--max-header-fields}.
    @ivar opened: how many connections are open.
    @ivar perUser: how many connections each user has open.
    """

    maxConnections: int = 0
    maxConnectionsPerUser: int = 0
    maxHeaderFields: int = DEFAULT_MAX_HEADER_FIELDS
    opened: int = 0
    perUser: dict[str, int] = field(default_factory=dict)

    def open(self, user: str) -> None:
        """
        A connection of C{user} asks to open: count it, or refuse it with
        530 NOT_ALLOWED and RabbitMQ's text.

        @raise NotAllowed: if a limit is reached.
        """
        if self.maxConnections and self.opened >= self.maxConnections:
            raise NotAllowed(
                f"connection refused: node connection limit ({self.maxConnections})"
                " is reached"
            )
        count = self.perUser.get(user, 0)
        if self.maxConnectionsPerUser and count >= self.maxConnectionsPerUser:
            raise NotAllowed(
                f"connection refused for user '{user}': user connection limit"
                f" ({self.maxConnectionsPerUser}) is reached"
            )
        self.opened += 1
        self.perUser[user] = count + 1

    def closed(self, user: str) -> None:
        """
        An open connection of C{user} is gone.
        """
        self.opened -= 1
        count = self.perUser.get(user, 0) - 1
        if count > 0:
            self.perUser[user] = count
        else:
            self.perUser.pop(user, None)

    def checkTable(self, table: Any, what: str) -> None:
        """
        Refuse a decoded table with more than L{maxHeaderFields} fields.

        @param what: what the table is, for the message.
        @raise ValueError: saying so.
        """
        limit = self.maxHeaderFields
        if limit and countFields(table, limit) > limit:
            raise ValueError(
                f"{what} has more than {limit} fields (the broker's"
                " --max-header-fields)"
            )
