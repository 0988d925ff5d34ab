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
L{passwordKey} of C{--ha-username} and C{--ha-password}, or, for a user of
the broker's users file (C{--users}) with the C{administrator} tag,
L{userKey}. Each key belongs to an L{Identity} with roles: L{BROKER}
(replication) and L{ADMIN} (the admin commands). The cluster secret and the
HA credentials hold both; an admin-only identity (L{ADMIN_ROLES}, such as
an administrator of the users file) may run C{qha-admin} and never
replicate.

A users file holds no passwords, only C{D = scrypt(password, salt, N, r,
p)}. So for its users the key is derived from C{D}, as SCRAM derives its
keys from the salted password::

    K = HMAC-SHA256(D, "qha-amp-user:" | username)

and the broker's answer to L{Challenge} names the derivation (C{kdf} =
C{scrypt$N$r$p$SALT$LENGTH}, the public part of the stored hash, as SCRAM
sends its salt and iteration count). C{qha-admin} computes C{D} from the
password it was given (one scrypt, on its side), the broker only HMACs:
no scrypt runs on the broker's reactor for an AMP login, and nothing
password-like travels. An unknown username gets a made-up derivation
(a salt derived from the name and a random key of this process), so the
answer does not tell whether the user exists. C{D} is password-equivalent
for this login (not for AMQP's PLAIN, which needs the password): keep the
users file private (0600), as for the cluster secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.protocols import amp

from ..amqp.access import ADMINISTRATOR
from ..amqp.users import (
    HASH_LENGTH,
    SALT_LENGTH,
    SCRYPT_N,
    SCRYPT_P,
    SCRYPT_R,
    AuthenticationFailed,
    FailedLogins,
    ScryptHash,
    UserDatabase,
)
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
    "userKey",
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


def userKey(digest: bytes, username: str) -> bytes:
    """
    The key of a user of the users file: HMAC-SHA256(D, "qha-amp-user:" +
    username), where D is the scrypt digest the file stores.
    """
    return hmac.new(digest, b"qha-amp-user:" + username.encode("utf-8"), hashlib.sha256).digest()


def keyDerivation(stored: ScryptHash) -> str:
    """
    The public part of a stored hash, sent in L{Challenge}'s answer:
    C{scrypt$N$r$p$SALT$LENGTH}.
    """
    salt = base64.b64encode(stored.salt).decode("ascii")
    return f"scrypt${stored.n}${stored.r}${stored.p}${salt}${len(stored.digest)}"


def derivedKey(kdf: str, username: str, password: str) -> bytes:
    """
    The key a client derives from its password and the broker's C{kdf}.

    @raise UnprovenPeer: if C{kdf} is malformed or asks for more than a
        login may cost (a broker never sends that; an impostor might).
    """
    parts = kdf.split("$")
    try:
        if len(parts) != 6 or not parts[5].isdigit():
            raise ValueError("it is not scrypt$N$r$p$SALT$LENGTH")
        length = int(parts[5], 10)
        if not 16 <= length <= 64:
            raise ValueError("the key length is out of bounds")
        # Parsed (and its cost bounded) as a stored hash of that length.
        zeros = base64.b64encode(b"\0" * length).decode("ascii")
        stored = ScryptHash.fromString("$".join(parts[:5] + [zeros]))
    except ValueError as error:
        raise UnprovenPeer(f"the peer's key derivation is unusable: {error}") from None
    return userKey(stored.derive(password), username)


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
    @ivar password: the password of a username (so that a user of the
        broker's users file can derive its key, L{keyFor}); never sent.
    """

    username: str
    key: bytes
    description: str
    password: str | None = field(default=None, repr=False, compare=False)

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
        return cls(
            username, passwordKey(username, password), f"user {username!r}", password
        )

    def keyFor(self, kdf: str | None) -> bytes:
        """
        The key to prove with, once the broker said how it derives it:
        L{key} unless the broker named a derivation (C{kdf}) for a user of
        its users file.

        @raise UnprovenPeer: for an unusable derivation.
        """
        if kdf is None or self.password is None:
            return self.key
        return derivedKey(kdf, self.username, self.password)

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
        users: UserDatabase | None = None,
    ) -> None:
        """
        @param credentials: this broker's own; accepted as a broker identity.
        @param identities: more identities by username, each with its key
            (admin-only ones).
        @param clock: for the delay of a failed login (none without it).
        @param failedLogins: logs and slows failed logins; without it each
            is logged as it comes.
        @param users: the broker's users file: its users with the
            C{administrator} tag may run the admin commands (looked up at
            each login, so a reload applies at once).
        """
        self.users = users
        self._unknownSalts = os.urandom(32)
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
        The identity and key of C{username}, if it is known. A user of the
        users file without the C{administrator} tag has no roles.
        """
        known = self.identities.get(username)
        if known is not None or self.users is None:
            return known
        stored = self.users.passwordHash(username)
        if stored is None:
            return None
        roles = ADMIN_ROLES if ADMINISTRATOR in self.users.tags(username) else frozenset()
        return Identity(username, roles), userKey(stored.digest, username)

    def keyDerivation(self, username: str) -> str | None:
        """
        What the answer to L{Challenge} tells C{username} about deriving its
        key: L{None} for the identities of this broker's options, the
        stored hash's public part for a user of the users file, and a
        made-up one for an unknown user (when there is a users file), so
        that the answer does not tell whether the user exists.
        """
        if username in self.identities or self.users is None:
            return None
        stored = self.users.passwordHash(username)
        if stored is None:
            # Shaped like the file's own users (their parameters), with a
            # salt that is the same for the same name every time.
            salt = hmac.new(
                self._unknownSalts, username.encode("utf-8"), hashlib.sha256
            ).digest()[:SALT_LENGTH]
            names = self.users.users()
            like = self.users.passwordHash(names[0]) if names else None
            if like is None:
                stored = ScryptHash(SCRYPT_N, SCRYPT_R, SCRYPT_P, salt, b"\0" * HASH_LENGTH)
            else:
                stored = ScryptHash(like.n, like.r, like.p, salt, like.digest)
        return keyDerivation(stored)

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
    key = credentials.keyFor(answer.get("kdf"))
    mine = proof(key, b"client", credentials.username, clientNonce, serverNonce)
    answer = await call(Authenticate, proof=mine)
    expected = proof(key, b"server", credentials.username, clientNonce, serverNonce)
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
