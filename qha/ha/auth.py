"""
Authentication on the AMP port: a mutual HMAC-SHA256 challenge-response, so
that no secret ever travels on the wire and each side proves to the other
that it holds the same key.

The exchange (commands in L{qha.ha.commands})::

    client -> Challenge(username, nonce=Nc)       server -> (nonce=Ns)
    client -> Authenticate(proof=Pc)              server checks Pc, -> (proof=Ps)
    client checks Ps before it sends anything else

    Pc = HMAC-SHA256(key, "client" | username | Nc | Ns)
    Ps = HMAC-SHA256(key, "server" | username | Nc | Ns)

The nonces are 32 bytes from C{os.urandom}, chosen fresh by each side, so a
proof seen once is worth nothing later. Both proofs are compared with
C{hmac.compare_digest}. The client proves itself first (as in SCRAM and
Erlang's distribution handshake), so that whoever merely reaches the AMP
port gets no proof made with the key to try passwords against offline; a
client that reached an impostor (on a peer's address) learns that before it
sends L{qha.ha.commands.Hello} or anything else, because the impostor cannot
make C{Ps}.

The key is L{secretKey} of the cluster secret (C{--ha-secret-file}), or
L{passwordKey} of C{--ha-username} and C{--ha-password}. Each key belongs to
an L{Identity} with roles: L{BROKER} (replication) and L{ADMIN} (the admin
commands). The cluster secret and the HA credentials hold both; an
admin-only identity (L{ADMIN_ROLES}) may run C{qha-admin} and never
replicate.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.protocols import amp

from ..amqp.users import AuthenticationFailed, FailedLogins
from .commands import Authenticate, Challenge, NotAuthenticated

__all__ = [
    "ADMIN",
    "ADMIN_ROLES",
    "BROKER",
    "BROKER_ROLES",
    "MAX_USERNAME",
    "NONCE_SIZE",
    "Authority",
    "Credentials",
    "Identity",
    "SECRET_USERNAME",
    "TRUSTED",
    "UnprovenPeer",
    "callerOf",
    "logIn",
    "passwordKey",
    "proof",
    "secretKey",
]

BROKER = "broker"
"""
The role of an identity that may replicate (L{qha.ha.commands.Hello},
C{Subscribe}, C{Events}, C{Heartbeat}).
"""

ADMIN = "admin"
"""
The role of an identity that may run the admin commands (C{qha-admin}).
"""

BROKER_ROLES = frozenset({BROKER, ADMIN})
"""
The roles of the cluster secret and of the HA credentials.
"""

ADMIN_ROLES = frozenset({ADMIN})
"""
The roles of an identity that administers and never replicates.
"""

NONCE_SIZE = 32
"""
Bytes of each side's nonce.
"""

PROOF_SIZE = hashlib.sha256().digest_size
"""
Bytes of a proof (an HMAC-SHA256).
"""

MAX_USERNAME = 255
"""
The longest username a L{Challenge} may name.
"""

SECRET_USERNAME = ""
"""
The username of a login with the cluster secret: the secret is the whole
identity.
"""


def secretKey(secret: bytes) -> bytes:
    """
    The key of the cluster secret (the contents of the secret file, without
    surrounding white space).
    """
    return hmac.new(secret, b"qha-amp-secret", hashlib.sha256).digest()


def passwordKey(username: str, password: str) -> bytes:
    """
    The key of C{--ha-username} and C{--ha-password}: HMAC-SHA256(password,
    "qha-amp:" + username).
    """
    return hmac.new(
        password.encode("utf-8"), b"qha-amp:" + username.encode("utf-8"), hashlib.sha256
    ).digest()


def proof(key: bytes, side: bytes, username: str, clientNonce: bytes, serverNonce: bytes) -> bytes:
    """
    The proof one side (C{b"client"} or C{b"server"}) gives that it holds
    C{key}, bound to this login's username and both nonces (each of fixed
    size, so the message cannot be read two ways).
    """
    message = side + b"\0" + username.encode("utf-8") + b"\0" + clientNonce + serverNonce
    return hmac.new(key, message, hashlib.sha256).digest()


@dataclass(frozen=True)
class Credentials:
    """
    What one side logs in (and proves itself) with.

    @ivar username: sent in L{Challenge}; L{SECRET_USERNAME} for the
        cluster secret.
    @ivar key: the HMAC key; never sent.
    @ivar description: what a log line or an error calls it.
    """

    username: str
    key: bytes
    description: str

    @classmethod
    def fromSecret(cls, secret: bytes) -> Credentials:
        """
        The cluster secret's credentials.
        """
        return cls(SECRET_USERNAME, secretKey(secret), "the cluster secret")

    @classmethod
    def fromPassword(cls, username: str, password: str) -> Credentials:
        """
        The credentials of a username and password (C{--ha-username}).
        """
        return cls(username, passwordKey(username, password), f"user {username!r}")

    def __repr__(self) -> str:
        """
        Never the key.
        """
        return f"<Credentials {self.description}>"


@dataclass(frozen=True)
class Identity:
    """
    Who a peer proved to be, and what it may do.

    @ivar name: for the logs (C{"cluster secret"}, a username).
    @ivar roles: L{BROKER}, L{ADMIN}.
    """

    name: str
    roles: frozenset[str]


TRUSTED = Identity("this broker's own connection", BROKER_ROLES)
"""
The identity of the peer on a connection this broker made itself and on
which the peer proved itself (or of every peer on a port that asks for no
login, in unit tests).
"""


class UnprovenPeer(Exception):
    """
    The peer answered the login without proving that it holds the key:
    it is not the broker that was meant (an impostor on its address), or
    it has another secret.
    """


class Authority:
    """
    The identities a broker's AMP port accepts, and what happens to a
    failed login: it is logged (rate-limited per source, by
    L{FailedLogins}) and answered only after a delay that grows per source.

    @ivar credentials: what this broker itself logs in to its peers with.
    """

    log = Logger()

    def __init__(
        self,
        credentials: Credentials,
        identities: Mapping[str, tuple[Identity, bytes]] | None = None,
        clock: IReactorTime | None = None,
        failedLogins: FailedLogins | None = None,
    ) -> None:
        """
        @param credentials: this broker's own; accepted as a broker identity.
        @param identities: more identities by username, each with its key
            (admin-only ones).
        @param clock: for the delay of a failed login (none without it).
        @param failedLogins: logs and slows failed logins; without it each
            is logged as it comes.
        """
        self.credentials = credentials
        self.identities: dict[str, tuple[Identity, bytes]] = dict(identities or {})
        name = "cluster secret" if credentials.username == SECRET_USERNAME else credentials.username
        self.identities[credentials.username] = (Identity(name, BROKER_ROLES), credentials.key)
        self.clock = clock
        self.failedLogins = failedLogins

    @classmethod
    def of(cls, credentials: Authority | Credentials | None) -> Authority | None:
        """
        C{credentials} as an L{Authority} (one that accepts only them, with
        neither delay nor rate limit), or L{None}.
        """
        if credentials is None or isinstance(credentials, Authority):
            return credentials
        return cls(credentials)

    def lookUp(self, username: str) -> tuple[Identity, bytes] | None:
        """
        The identity and key of C{username}, if it is known.
        """
        return self.identities.get(username)

    @property
    def wanted(self) -> str:
        """
        What a peer must log in with, for the error before a login.
        """
        if self.credentials.username == SECRET_USERNAME:
            return "the cluster secret"
        return "the HA credentials"

    def refuse(self, source: str, username: str, reason: str) -> Deferred[Any]:
        """
        A login from C{source} failed: log it, and fail with
        L{NotAuthenticated} after the delay for that source.
        """
        user = username if username != SECRET_USERNAME else "(cluster secret)"
        failure = AuthenticationFailed(reason, user=user, mechanism="AMP-HMAC-SHA256")
        delay = 0.0
        if self.failedLogins is not None:
            delay = self.failedLogins.failed(source, failure)
        else:
            self.log.warn(
                "AMP login refused from {source} for {user!r}: {reason}",
                source=source,
                user=user,
                reason=reason,
            )
        d: Deferred[Any] = Deferred()
        error = NotAuthenticated(reason)
        if self.clock is None or delay <= 0:
            d.errback(error)
        else:
            self.clock.callLater(delay, d.errback, error)
        return d


async def logIn(
    call: Callable[..., Deferred[Any]], credentials: Credentials
) -> None:
    """
    Log in on a connection with C{credentials}, and check that the peer
    holds the same key.

    @param call: sends a command on the connection, within a deadline
        (C{call(Challenge, username=..., nonce=...)}).
    @raise NotAuthenticated: if the peer refused the login.
    @raise UnprovenPeer: if the peer did not prove that it holds the key;
        nothing else may then be sent on the connection.
    """
    clientNonce = os.urandom(NONCE_SIZE)
    answer = await call(Challenge, username=credentials.username, nonce=clientNonce)
    serverNonce = answer["nonce"]
    if len(serverNonce) != NONCE_SIZE:
        raise UnprovenPeer(f"the peer's nonce has {len(serverNonce)} bytes, not {NONCE_SIZE}")
    mine = proof(credentials.key, b"client", credentials.username, clientNonce, serverNonce)
    answer = await call(Authenticate, proof=mine)
    expected = proof(credentials.key, b"server", credentials.username, clientNonce, serverNonce)
    if not hmac.compare_digest(answer["proof"], expected):
        raise UnprovenPeer(
            f"the peer accepted the login without proving that it knows"
            f" {credentials.description}: it is not a broker of this cluster"
        )


def callerOf(protocol: amp.AMP, deadline: Callable[[Deferred[Any]], Deferred[Any]]) -> Callable[..., Deferred[Any]]:
    """
    A C{call} for L{logIn}: C{protocol.callRemote}, each bounded by
    C{deadline} (which adds a timeout to a L{Deferred}).
    """

    def call(command: type[amp.Command], **arguments: Any) -> Deferred[Any]:
        """
        Send C{command}, within the deadline.
        """
        return deadline(protocol.callRemote(command, **arguments))

    return call
