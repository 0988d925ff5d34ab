"""
Authorisation with RabbitMQ's model: user tags, and per user and virtual
host three regular expressions (configure, write, read) matched against the
names of the exchanges and queues an AMQP operation touches.

Which operation needs which permission on what, as in RabbitMQ's
access-control guide (its table, row by row)::

    operation                          configure    write            read
    exchange.declare (passive=false)   exchange
    exchange.declare (passive=true)
    exchange.declare (new, with AE)    exchange     exchange (AE)    exchange
    exchange.delete                    exchange
    queue.declare (passive=false)      queue
    queue.declare (passive=true)
    queue.declare (new, with DLX)      queue        exchange (DLX)   queue
    queue.delete                       queue
    exchange.bind / exchange.unbind                 destination      source
    queue.bind / queue.unbind                       queue            exchange
    basic.publish                                   exchange
    basic.get, basic.consume,                                        queue
    queue.purge

The default exchange (named C{""} on the wire) is checked as
C{amq.default}, and an empty pattern means C{^$} (nothing), as in RabbitMQ.
Patterns are Python regular expressions searched anywhere in the name
(RabbitMQ's C{re:run}), so C{.*} allows every name and C{^app\\.} names
that start with C{app.}. Topic permissions (on routing keys) are not
implemented yet (issue 13).

The model is one L{Permissions} per user and virtual host, so that run-time
virtual hosts and C{qha-admin permissions set/clear} can add and remove
entries later without another data model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..broker.errors import AccessRefused, NotAllowed

__all__ = [
    "ADMINISTRATOR",
    "CONFIGURE",
    "DEFAULT_EXCHANGE",
    "IMPERSONATOR",
    "KNOWN_TAGS",
    "MANAGEMENT",
    "MONITORING",
    "POLICYMAKER",
    "READ",
    "WRITE",
    "Permissions",
    "accessRefused",
    "userIdRefused",
    "vhostRefused",
]

CONFIGURE = 0
"""
The permission to create, delete or change an exchange or a queue.
"""

WRITE = 1
"""
The permission to put messages into an exchange or a queue (publish, bind
to it).
"""

READ = 2
"""
The permission to take messages out of a queue or an exchange (consume,
get, purge, bind from it).
"""

ADMINISTRATOR = "administrator"
"""
The tag of a user who may run C{qha-admin} on the AMP port (with its users
file password).
"""

MONITORING = "monitoring"
"""
RabbitMQ's tag for monitoring users; kept for the management API to come.
"""

MANAGEMENT = "management"
"""
RabbitMQ's tag for management UI users; kept for the management API to
come.
"""

POLICYMAKER = "policymaker"
"""
RabbitMQ's tag for users who may set policies; kept for later.
"""

IMPERSONATOR = "impersonator"
"""
The tag of a user who may publish with a C{user_id} property naming another
user (RabbitMQ's, for shovels and the like).
"""

KNOWN_TAGS = frozenset({ADMINISTRATOR, MONITORING, MANAGEMENT, POLICYMAKER, IMPERSONATOR})
"""
The tags qha knows; a users file may give others, which are kept.
"""

DEFAULT_EXCHANGE = "amq.default"
"""
The name the default exchange (C{""}) is checked under.
"""

_CACHE_SIZE = 4096
"""
How many decisions one L{Permissions} remembers before it forgets them all.
"""


def _compile(pattern: str) -> re.Pattern[str]:
    """
    Compile one permission pattern; an empty one allows nothing.

    @param pattern: the regular expression as written in the users file.
    @return: the compiled expression.
    @raise ValueError: if it is not a valid regular expression.
    """
    try:
        return re.compile(pattern or "^$")
    except re.error as error:
        raise ValueError(f"invalid regular expression {pattern!r}: {error}") from None


@dataclass(frozen=True)
class Permissions:
    """
    What one user may do in one virtual host: RabbitMQ's three patterns.

    @ivar configure: the pattern of names the user may declare and delete.
    @ivar write: the pattern of names the user may publish to and bind to.
    @ivar read: the pattern of names the user may consume from and bind from.
    """

    configure: str
    write: str
    read: str
    _patterns: tuple[re.Pattern[str], ...] = field(
        init=False, repr=False, compare=False
    )
    _everything: bool = field(init=False, repr=False, compare=False)
    _cache: dict[tuple[int, str], bool] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        """
        Compile the patterns.

        @raise ValueError: if one is not a valid regular expression.
        """
        patterns = tuple(_compile(p) for p in (self.configure, self.write, self.read))
        object.__setattr__(self, "_patterns", patterns)
        object.__setattr__(
            self, "_everything", all(p == ".*" for p in (self.configure, self.write, self.read))
        )
        object.__setattr__(self, "_cache", {})

    @classmethod
    def everything(cls) -> Permissions:
        """
        C{.*} three times: every operation on every name.

        @return: the permissions.
        """
        return cls(".*", ".*", ".*")

    def allows(self, permission: int, name: str) -> bool:
        """
        Whether C{permission} is granted on the exchange or queue C{name}.

        Decisions are remembered (a publisher checks the same exchange on
        every publish), up to a bound.

        @param permission: L{CONFIGURE}, L{WRITE} or L{READ}.
        @param name: the name as checked (L{DEFAULT_EXCHANGE} for C{""}).
        @return: whether it is allowed.
        """
        if self._everything:
            return True
        key = (permission, name)
        cache = self._cache
        allowed = cache.get(key)
        if allowed is None:
            if len(cache) >= _CACHE_SIZE:
                cache.clear()
            allowed = cache[key] = self._patterns[permission].search(name) is not None
        return allowed


def accessRefused(kind: str, name: str, vhost: str, user: str | None) -> AccessRefused:
    """
    The channel error of a refused operation, in RabbitMQ's words.

    @param kind: C{"exchange"} or C{"queue"}.
    @param name: the name as checked.
    @param vhost: the virtual host.
    @param user: the user.
    @return: a 403 ACCESS_REFUSED to raise.
    """
    return AccessRefused(
        f"access to {kind} '{name}' in vhost '{vhost}' refused for user '{user}'"
    )


def vhostRefused(vhost: str, user: str | None) -> NotAllowed:
    """
    The connection error of a connection.open to a virtual host the user
    has no permissions in, in RabbitMQ's words.

    @param vhost: the virtual host asked for.
    @param user: the user.
    @return: a 530 NOT_ALLOWED to raise.
    """
    return NotAllowed(f"access to vhost '{vhost}' refused for user '{user}'")


def userIdRefused(userId: str, user: str | None) -> str:
    """
    The text of the 406 PRECONDITION_FAILED for a publish whose C{user_id}
    property is not the user's, in RabbitMQ's words.

    @param userId: the property as published.
    @param user: the logged-in user.
    @return: the text.
    """
    return f"user_id property set to '{userId}' but authenticated user was '{user}'"
