"""
Who calls the HTTP API: HTTP basic authentication against the broker's
users (the users file), with the password checked by the same
L{IPasswordVerifier} as AMQP logins (off the reactor thread), and
RabbitMQ's user tags deciding what the caller may do.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from ..amqp.users import AuthenticationFailed, FailedLogins, IPasswordVerifier, UserDatabase
from ..management.definitions import ADMINISTRATOR, effectiveTags

MONITORING = "monitoring"
MANAGEMENT = "management"
POLICYMAKER = "policymaker"

READ_TAGS = frozenset({ADMINISTRATOR, MONITORING, MANAGEMENT, POLICYMAKER})
"""
Tags that let a user into the API (RabbitMQ's: every management tag).
"""

REALM = "qha management"


@dataclass(frozen=True)
class Caller:
    """
    A user who logged in to the API.

    @ivar name: the user name.
    @ivar tags: the user's tags (for the built-in guest without tags:
        C{administrator}, as RabbitMQ's guest is).
    """

    name: str
    tags: frozenset[str]

    @property
    def mayRead(self) -> bool:
        """
        Whether the API is open to this user at all.
        """
        return bool(self.tags & READ_TAGS)

    @property
    def mayWrite(self) -> bool:
        """
        Whether this user may change the broker through the API: only
        administrators (RabbitMQ lets C{management} users change objects
        in their virtual hosts too; qha keeps writes to administrators).
        """
        return ADMINISTRATOR in self.tags

    @property
    def seesEverything(self) -> bool:
        """
        Whether this user sees every connection, not only its own
        (C{administrator} and C{monitoring}, as in RabbitMQ).
        """
        return bool(self.tags & {ADMINISTRATOR, MONITORING})


def isLoopback(host: str) -> bool:
    """
    Whether C{host} is a loopback address.
    """
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def credentialsOf(request: IRequest) -> tuple[str, str] | None:
    """
    The user and password of the request's C{Authorization: Basic} header,
    or L{None} if it has none (or a malformed one).
    """
    header = request.getHeader(b"authorization")
    if header is None:
        return None
    scheme, _, encoded = header.partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = decoded.partition(":")
    if not colon:
        return None
    return user, password


class BasicAuthenticator:
    """
    Checks the credentials of API requests against the broker's users.
    """

    log = Logger()

    def __init__(
        self,
        users: UserDatabase,
        verifier: IPasswordVerifier,
        clock: IReactorTime,
        failedLogins: FailedLogins | None = None,
    ) -> None:
        """
        @param users: the broker's users (reloaded on SIGHUP: read each time).
        @param verifier: checks a password against its hash (the AMQP
            factory's: a thread pool in the broker).
        @param clock: delays the answer to a refused login.
        @param failedLogins: logs refused logins and says how long to delay
            the answer, shared with AMQP so that guessing passwords costs
            the same on both ports.
        """
        self.users = users
        self.verifier = verifier
        self.clock = clock
        self.failedLogins = failedLogins

    def authenticate(self, request: IRequest) -> Deferred[Caller | None]:
        """
        The caller of C{request}, or L{None} if it gave no credentials or
        wrong ones.
        """
        credentials = credentialsOf(request)
        if credentials is None:
            return succeed(None)
        user, password = credentials
        host = getattr(request.getClientAddress(), "host", "")
        response = b"\0" + user.encode("utf-8") + b"\0" + password.encode("utf-8")
        checking = self.users.login("PLAIN", response, isLoopback(host), self.verifier)

        def loggedIn(name: str) -> Caller:
            return Caller(name, effectiveTags(self.users, name))

        def refused(failure: Failure) -> Any:
            failure.trap(AuthenticationFailed)
            delay = 0.0
            if self.failedLogins is not None:
                error = failure.value
                assert isinstance(error, AuthenticationFailed)
                delay = self.failedLogins.failed(host, error)
            if delay > 0:
                return deferLater(self.clock, delay, lambda: None)
            return None

        return checking.addCallbacks(loggedIn, refused)


__all__ = [
    "ADMINISTRATOR",
    "BasicAuthenticator",
    "Caller",
    "MANAGEMENT",
    "MONITORING",
    "READ_TAGS",
    "credentialsOf",
    "effectiveTags",
    "isLoopback",
]
