"""
The broker's user database: who may log in, checked with SASL PLAIN or
AMQPLAIN, their tags and permissions, and the C{qha-users} command that
edits a users file.

A users file is UTF-8 text with one user per line, and optional lines of
tags and permissions (the arguments of C{rabbitmqctl set_user_tags} and
C{set_permissions}, quoted as in a shell)::

    # comments and blank lines are ignored
    bob:scrypt$16384$8$1$<salt base64>$<hash base64>
    tags bob administrator
    permissions bob / '^bob-.*' '.*' '.*'

A file without any C{permissions} line is a file of before permissions
existed: every user may do everything in the virtual host C{/}, as before.
Once the file has one, a user may use only the virtual hosts it names for
them (see L{qha.amqp.access}).

Passwords are stored as scrypt hashes; the scrypt cost parameters are part of
each line, so they can be raised later without breaking existing entries.

Without a users file the broker knows the single user C{guest} with the
password C{guest}. As in RabbitMQ (its C{loopback_users} default), C{guest}
may only log in over a loopback connection, whether it is the built-in user
or one defined in a users file.

A password check costs one scrypt computation (tens of milliseconds), so the
broker runs it off the reactor thread (L{ThreadPoolVerifier}), and
L{FailedLogins} answers wrong passwords after a delay that grows per source
address and logs them one line per source and interval.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import os
import re
import shlex
import signal
import stat
import struct
import sys
import tempfile
from dataclasses import dataclass
from getpass import getpass
from typing import TYPE_CHECKING, Any, Mapping, NoReturn, Sequence
from weakref import WeakSet

from pamqp import decode
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import Interface, implementer

from qha.broker.errors import ConnectionAccessRefused

from .access import Permissions

if TYPE_CHECKING:
    from .accounts import Accounts

__all__ = [
    "AuthenticationFailed",
    "DEFAULT_VHOST",
    "FailedLogins",
    "IPasswordVerifier",
    "ReloadOnSignal",
    "ScryptHash",
    "SynchronousVerifier",
    "ThreadPoolVerifier",
    "UserDatabase",
    "hashPassword",
    "main",
]

GUEST = "guest"
"""
The user that exists when there is no users file, and that may only log in
from a loopback address.
"""

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_LENGTH = 16
HASH_LENGTH = 32

_MAX_SCRYPT_MEMORY = 256 * 1024 * 1024
"""
The most memory one password check may use (scrypt needs about 128 * r * N
bytes); a users file asking for more is refused when it is loaded, instead of
every login failing later.
"""

_MAX_SCRYPT_P = 16

_MAX_NAME_IN_MESSAGE = 32
"""
How much of a client-chosen user name or mechanism goes into an error text:
the text travels back in connection.close, whose reply-text is a short string
of at most 255 bytes.
"""

_FILE_FORMAT = "NAME:scrypt$N$r$p$SALT$HASH"

_TAGS_FORMAT = "tags USER [TAG ...]"

_PERMISSIONS_FORMAT = "permissions USER VHOST CONFIGURE WRITE READ"

_TAG = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")
"""
What a tag may look like.
"""

DEFAULT_VHOST = "/"
"""
The virtual host every user of a file without permissions may use.
"""

_NEW_FILE_HEADER = (
    "# qha users file, one user per line: " + _FILE_FORMAT + "\n"
    "# Edit with: qha-users FILE add|remove|list\n"
)


class AuthenticationFailed(ConnectionAccessRefused):
    """
    A login was refused.

    The broker answers with connection.close 403 ACCESS_REFUSED; C{str()} of
    the exception is the explanation, L{replyText} the same with the
    C{ACCESS_REFUSED - } prefix the client sees, e.g.::

        ACCESS_REFUSED - login refused for user 'bob' with mechanism PLAIN:
        bad username or password

    The text never says whether a user exists; L{logReason} says it for
    the broker's log.

    @ivar user: the user name the client sent, if it got that far.
    @ivar mechanism: the mechanism the client chose.
    @ivar logReason: what the log says; it may say more than the client is
        told, e.g. whether the user exists.
    """

    def __init__(
        self,
        text: str,
        user: str | None = None,
        mechanism: str = "",
        logReason: str | None = None,
    ) -> None:
        """
        @param text: what the client is told.
        @param user: the user name the client sent.
        @param mechanism: the mechanism the client chose.
        @param logReason: what the log says (by default C{text}).
        """
        super().__init__(text)
        self.user = user
        self.mechanism = mechanism
        self.logReason = text if logReason is None else logReason


def _quote(text: str) -> str:
    """
    Quote a client-chosen name for an error text: shortened, and with
    unprintable characters escaped by C{repr}.

    @param text: the name as the client sent it.
    @return: a quoted, bounded form of C{text}.
    """
    if len(text) > _MAX_NAME_IN_MESSAGE:
        return repr(text[:_MAX_NAME_IN_MESSAGE]) + "..."
    return repr(text)


def _userNameProblem(name: str) -> str | None:
    """
    Check that C{name} can be a user name in a users file.

    @param name: the proposed user name.
    @return: what is wrong with it, or L{None} if it is fine.
    """
    if not name:
        return "user name is empty"
    if ":" in name or any(c.isspace() or not c.isprintable() for c in name):
        return (
            f"user name {_quote(name)} may not contain ':', whitespace "
            "or control characters"
        )
    if name.startswith("#"):
        return f"user name {_quote(name)} may not start with '#'"
    return None


def _scryptMemory(n: int, r: int, p: int) -> int:
    """
    The C{maxmem} to give L{hashlib.scrypt} for these parameters: what
    OpenSSL needs (128 * r * (N + 2 + p) bytes) and some room.

    @param n: the scrypt CPU/memory cost.
    @param r: the scrypt block size.
    @param p: the scrypt parallelization.
    @return: a memory limit in bytes.
    """
    return 128 * r * (n + 2 + p) + 1024 * 1024


def _decodeBase64(text: str, what: str) -> bytes:
    """
    Decode standard base64, strictly.

    @param text: the base64 text.
    @param what: what is being decoded, for the error message.
    @return: the decoded bytes.
    @raise ValueError: if C{text} is not valid base64 or decodes to nothing.
    """
    try:
        value = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise ValueError(f"the {what} is not valid base64") from None
    if not value:
        raise ValueError(f"the {what} is empty")
    return value


@dataclass(frozen=True)
class ScryptHash:
    """
    A password stored as an scrypt hash, with its parameters and salt.

    @ivar n: the scrypt CPU/memory cost, a power of two.
    @ivar r: the scrypt block size.
    @ivar p: the scrypt parallelization.
    @ivar salt: the random salt.
    @ivar digest: scrypt(password, salt, n, r, p).
    """

    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    @classmethod
    def fromPassword(
        cls,
        password: str,
        n: int = SCRYPT_N,
        r: int = SCRYPT_R,
        p: int = SCRYPT_P,
    ) -> ScryptHash:
        """
        Hash a password with a fresh random salt.

        @param password: the password.
        @param n: the scrypt CPU/memory cost, a power of two; tests use a
            small one to run fast.
        @param r: the scrypt block size.
        @param p: the scrypt parallelization.
        @return: the hash.
        """
        _checkParameters(n, r, p)
        salt = os.urandom(SALT_LENGTH)
        digest = hashlib.scrypt(
            password.encode("utf-8"),
            salt=salt,
            n=n,
            r=r,
            p=p,
            dklen=HASH_LENGTH,
            maxmem=_scryptMemory(n, r, p),
        )
        return cls(n=n, r=r, p=p, salt=salt, digest=digest)

    @classmethod
    def fromString(cls, text: str) -> ScryptHash:
        """
        Parse the C{scrypt$N$r$p$SALT$HASH} form written by L{asString}.

        @param text: the hash as found in a users file.
        @return: the hash.
        @raise ValueError: with a one-line explanation if C{text} is not a
            usable scrypt hash.
        """
        parts = text.split("$")
        if len(parts) != 6 or parts[0] != "scrypt":
            raise ValueError("the password hash is not scrypt$N$r$p$SALT$HASH")
        try:
            n, r, p = (int(part, 10) for part in parts[1:4])
        except ValueError:
            raise ValueError("the scrypt N, r and p must be numbers") from None
        _checkParameters(n, r, p)
        salt = _decodeBase64(parts[4], "salt")
        digest = _decodeBase64(parts[5], "hash")
        if len(digest) < 16:
            raise ValueError("the hash is shorter than 16 bytes")
        return cls(n=n, r=r, p=p, salt=salt, digest=digest)

    def asString(self) -> str:
        """
        The form stored in a users file after C{NAME:}.

        @return: C{scrypt$N$r$p$SALT$HASH} with base64 salt and hash.
        """
        salt = base64.b64encode(self.salt).decode("ascii")
        digest = base64.b64encode(self.digest).decode("ascii")
        return f"scrypt${self.n}${self.r}${self.p}${salt}${digest}"

    def verify(self, password: str) -> bool:
        """
        Check a password against this hash, in constant time.

        This costs one scrypt computation (some 25-50 ms with the default
        parameters).

        @param password: the password the client sent.
        @return: whether it is the password that was hashed.
        """
        try:
            candidate = self.derive(password)
        except (ValueError, MemoryError, UnicodeEncodeError):
            return False
        return hmac.compare_digest(candidate, self.digest)

    def derive(self, password: str) -> bytes:
        """
        scrypt of C{password} with this hash's salt and parameters, as long
        as its digest: what a client of the AMP port derives its key from
        (see L{qha.ha.auth}).

        @param password: the password.
        @return: the digest C{password} would have.
        """
        return hashlib.scrypt(
            password.encode("utf-8"),
            salt=self.salt,
            n=self.n,
            r=self.r,
            p=self.p,
            dklen=len(self.digest),
            maxmem=_scryptMemory(self.n, self.r, self.p),
        )


def _checkParameters(n: int, r: int, p: int) -> None:
    """
    Check scrypt parameters before they are used.

    @param n: the scrypt CPU/memory cost.
    @param r: the scrypt block size.
    @param p: the scrypt parallelization.
    @raise ValueError: if scrypt would refuse them, or they would need more
        memory or time than a login may take.
    """
    if n < 2 or n & (n - 1):
        raise ValueError("the scrypt N must be a power of two greater than 1")
    if r < 1 or not 1 <= p <= _MAX_SCRYPT_P:
        raise ValueError(
            f"the scrypt r must be at least 1 and p between 1 and {_MAX_SCRYPT_P}"
        )
    if 128 * r * n > _MAX_SCRYPT_MEMORY:
        raise ValueError(
            f"the scrypt N and r need more than "
            f"{_MAX_SCRYPT_MEMORY // (1024 * 1024)} MiB per login"
        )


def hashPassword(
    password: str, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P
) -> str:
    """
    Hash a password for a users file.

    @param password: the password.
    @param n: the scrypt CPU/memory cost, a power of two; the default costs
        some 25-50 ms per check, tests pass a small one.
    @param r: the scrypt block size.
    @param p: the scrypt parallelization.
    @return: C{scrypt$N$r$p$SALT$HASH}, the part of a users file line after
        C{NAME:}.
    """
    return ScryptHash.fromPassword(password, n=n, r=r, p=p).asString()


_UNKNOWN_USER_HASH = ScryptHash(
    n=SCRYPT_N,
    r=SCRYPT_R,
    p=SCRYPT_P,
    salt=b"\0" * SALT_LENGTH,
    digest=b"\0" * HASH_LENGTH,
)
"""
Checked instead of a real hash when the user does not exist, so that an
unknown user takes as long to refuse as a wrong password.
"""


@dataclass(frozen=True)
class _UsersFileLine:
    """
    One line of a users file, kept as text so that C{qha-users} can rewrite
    the file without losing comments.

    @ivar text: the line without its line ending.
    @ivar user: the user it defines, or L{None} for any other line.
    @ivar passwordHash: that user's password hash, or L{None}.
    @ivar about: the user a C{tags} or C{permissions} line is about.
    @ivar tags: the tags of a C{tags} line.
    @ivar vhost: the virtual host of a C{permissions} line.
    @ivar permissions: the permissions of a C{permissions} line.
    @ivar number: the line number, for errors found after reading.
    """

    text: str
    user: str | None = None
    passwordHash: ScryptHash | None = None
    about: str | None = None
    tags: frozenset[str] | None = None
    vhost: str | None = None
    permissions: Permissions | None = None
    number: int = 0


def _directive(text: str, stripped: str, where: str, number: int) -> _UsersFileLine:
    """
    Parse a C{tags} or C{permissions} line.

    @param text: the line as written.
    @param stripped: the line, stripped.
    @param where: the file and line, for errors.
    @param number: the line number.
    @return: the parsed line.
    @raise ValueError: if it is malformed.
    """
    try:
        words = shlex.split(stripped, posix=True)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    keyword, arguments = words[0], words[1:]
    if keyword == "tags":
        if not arguments:
            raise ValueError(f"{where}: expected {_TAGS_FORMAT}")
        user, tags = arguments[0], arguments[1:]
        for tag in tags:
            if not _TAG.match(tag):
                raise ValueError(
                    f"{where}: tag {_quote(tag)} may hold only letters, digits,"
                    " '_', '.' and '-'"
                )
        return _UsersFileLine(text, about=user, tags=frozenset(tags), number=number)
    if len(arguments) != 5:
        raise ValueError(
            f"{where}: expected {_PERMISSIONS_FORMAT} (5 arguments, not"
            f" {len(arguments)}; quote patterns with spaces)"
        )
    user, vhost, configure, write, read = arguments
    if not vhost:
        raise ValueError(f"{where}: the virtual host is empty")
    try:
        permissions = Permissions(configure, write, read)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    return _UsersFileLine(
        text, about=user, vhost=vhost, permissions=permissions, number=number
    )


def _readUsersFile(path: str) -> list[_UsersFileLine]:
    """
    Read and check a users file.

    @param path: the file.
    @return: its lines, in order.
    @raise ValueError: with a one-line message naming the file (and the line
        number, if the problem is on a line) if the file cannot be read or
        is malformed.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(
            f"cannot read users file {path!r}: {e.strerror or e}"
        ) from None
    lines: list[_UsersFileLine] = []
    definedOn: dict[str, int] = {}
    taggedOn: dict[str, int] = {}
    grantedOn: dict[tuple[str, str], int] = {}
    for number, raw in enumerate(data.splitlines(), start=1):
        where = f"users file {path!r}, line {number}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{where}: not valid UTF-8") from None
        if number == 1:
            text = text.removeprefix("\ufeff")
        stripped = text.strip()
        if not stripped or stripped.startswith("#"):
            lines.append(_UsersFileLine(text))
            continue
        first = stripped.split(None, 1)[0]
        if first in ("tags", "permissions") and ":" not in first:
            line = _directive(text, stripped, where, number)
            assert line.about is not None
            if line.tags is not None:
                if line.about in taggedOn:
                    raise ValueError(
                        f"{where}: the tags of user {_quote(line.about)} are already"
                        f" given on line {taggedOn[line.about]}"
                    )
                taggedOn[line.about] = number
            else:
                assert line.vhost is not None
                key = (line.about, line.vhost)
                if key in grantedOn:
                    raise ValueError(
                        f"{where}: the permissions of user {_quote(line.about)} in"
                        f" vhost {_quote(line.vhost)} are already given on line"
                        f" {grantedOn[key]}"
                    )
                grantedOn[key] = number
            lines.append(line)
            continue
        name, colon, hashText = stripped.partition(":")
        if not colon:
            raise ValueError(f"{where}: expected {_FILE_FORMAT}, found no ':'")
        problem = _userNameProblem(name)
        if problem is not None:
            raise ValueError(f"{where}: {problem}")
        if name in definedOn:
            raise ValueError(
                f"{where}: user {_quote(name)} is already defined on line "
                f"{definedOn[name]}"
            )
        try:
            passwordHash = ScryptHash.fromString(hashText)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        definedOn[name] = number
        lines.append(_UsersFileLine(text, name, passwordHash, number=number))
    for line in lines:
        if line.about is not None and line.about not in definedOn:
            raise ValueError(
                f"users file {path!r}, line {line.number}: there is no user"
                f" {_quote(line.about)} in this file"
            )
    return lines


@dataclass(frozen=True)
class _Loaded:
    """
    What a users file says.

    @ivar users: the password hash of each user.
    @ivar tags: the tags of each user that has some.
    @ivar permissions: user to virtual host to permissions, or L{None} if
        the file has no C{permissions} line.
    """

    users: dict[str, ScryptHash]
    tags: dict[str, frozenset[str]]
    permissions: dict[str, dict[str, Permissions]] | None


_View = tuple[ScryptHash | None, dict[str, Permissions]]
"""
What a user may do, to compare before and after a change: its password
hash (L{None}: no such user) and its permissions by virtual host.
"""


class UserDatabase:
    """
    The users that may log in, the SASL mechanisms they log in with, their
    tags and their permissions.

    Successful password checks are remembered (by user and SHA-256 of the
    password, never the password itself) so that a storm of reconnecting
    clients does not cost one scrypt computation per connection; L{reload}
    forgets them.

    Over the users file lies the run-time layer (L{attachAccounts}, see
    L{qha.amqp.accounts} for the rule): a user that a run-time change named
    is entirely what that layer says.

    @ivar path: the users file this database was loaded from, or L{None}.
    @ivar accounts: the run-time layer, if attached.
    @ivar observers: told when a user loses access, to close its
        connections (the AMQP factory): C{accessRevoked(user, vhost, text)}
        with C{vhost} L{None} for every virtual host.
    """

    log = Logger()

    def __init__(
        self,
        users: Mapping[str, ScryptHash],
        path: str | None = None,
        tags: Mapping[str, frozenset[str]] | None = None,
        permissions: Mapping[str, Mapping[str, Permissions]] | None = None,
    ) -> None:
        """
        @param users: the password hash of each user, by name.
        @param path: the users file they come from, for L{reload}.
        @param tags: the tags of each user (none by default).
        @param permissions: by user, then by virtual host; L{None} (the
            default, and a file without C{permissions} lines) lets every
            user who logged in do everything in L{DEFAULT_VHOST}.
        """
        self.path = path
        self._users: dict[str, ScryptHash] = dict(users)
        self._verified: dict[tuple[str, bytes], ScryptHash] = {}
        self._set(tags, permissions)
        self.accounts: Accounts | None = None
        self.observers: WeakSet[Any] = WeakSet()

    def attachAccounts(self, accounts: Accounts) -> None:
        """
        Lay the run-time layer C{accounts} over the users file.
        """
        self.accounts = accounts
        accounts.database = self

    def _runtime(self, user: str) -> tuple[bool, Any]:
        """
        Whether the run-time layer decides about C{user}, and its record
        there (L{None} for a deleted user).
        """
        accounts = self.accounts
        if accounts is None or user not in accounts.users:
            return False, None
        return True, accounts.users[user]

    def fileView(
        self, user: str
    ) -> tuple[ScryptHash, frozenset[str], dict[str, Permissions]] | None:
        """
        What the users file alone says of C{user}: its password hash, tags
        and permissions by virtual host (everything in L{DEFAULT_VHOST} for
        a file without permissions), or L{None} if it has no such user.
        """
        passwordHash = self._users.get(user)
        if passwordHash is None:
            return None
        if self._permissions is None:
            granted = {DEFAULT_VHOST: self._everything}
        else:
            granted = dict(self._permissions.get(user, {}))
        return passwordHash, self._tags.get(user, frozenset()), granted

    def view(self, user: str) -> _View:
        """
        What C{user} may do now, the run-time layer over the file.
        """
        managed, record = self._runtime(user)
        if managed:
            if record is None:
                return None, {}
            assert self.accounts is not None
            return record.passwordHash, dict(self.accounts.permissions.get(user, {}))
        found = self.fileView(user)
        if found is None:
            return None, {}
        return found[0], found[2]

    def accountsChanged(self, before: Mapping[str, _View], passwords: bool = True) -> None:
        """
        Users changed (their views C{before} the change): forget their
        remembered password checks and close the connections that lost
        their access, as RabbitMQ does: every connection of a user deleted
        or (if C{passwords}) whose password hash changed, those to a
        virtual host whose permissions were cleared.

        @param passwords: whether a new hash closes connections. Not for a
            reload of the file: C{qha-users} writes every hash with a new
            salt, so a new hash need not be a new password, and a reload
            keeps connections open.
        """
        for user, (hashBefore, grantedBefore) in before.items():
            hashAfter, grantedAfter = self.view(user)
            if hashAfter is not hashBefore:
                self._verified = {
                    key: value for key, value in self._verified.items() if key[0] != user
                }
            if hashBefore is None:
                continue
            if hashAfter is None:
                self._revoke(user, None, f"user '{user}' is deleted")
            elif passwords and hashAfter != hashBefore:
                self._revoke(user, None, f"user '{user}' had its password changed")
            else:
                for vhost in sorted(set(grantedBefore) - set(grantedAfter)):
                    self._revoke(
                        user,
                        vhost,
                        f"user '{user}' lost its permissions in vhost '{vhost}'",
                    )

    def _revoke(self, user: str, vhost: str | None, text: str) -> None:
        """
        Tell the observers that C{user} lost access (to C{vhost}, or to
        all).
        """
        self.log.info(
            "closing the connections of user {user!r}{where}: {text}",
            user=user,
            where="" if vhost is None else f" in vhost {vhost!r}",
            vhost=vhost,
            text=text,
        )
        for observer in list(self.observers):
            observer.accessRevoked(user, vhost, text)

    def _set(
        self,
        tags: Mapping[str, frozenset[str]] | None,
        permissions: Mapping[str, Mapping[str, Permissions]] | None,
    ) -> None:
        """
        Replace the tags and permissions.
        """
        self._tags: dict[str, frozenset[str]] = dict(tags or {})
        self._everything = Permissions.everything()
        self._permissions: dict[str, dict[str, Permissions]] | None = (
            None
            if permissions is None
            else {user: dict(byVhost) for user, byVhost in permissions.items()}
        )

    @classmethod
    def default(cls) -> UserDatabase:
        """
        The database used without a users file: the single user C{guest}
        with the password C{guest}, which may only log in from loopback.

        @return: the database.
        """
        return cls({GUEST: ScryptHash.fromPassword(GUEST)})

    @classmethod
    def fromFile(cls, path: str) -> UserDatabase:
        """
        Load a users file.

        @param path: the file.
        @return: the database.
        @raise ValueError: with a one-line message naming the file and line
            if it cannot be read or is malformed.
        """
        loaded = cls._load(path)
        return cls(loaded.users, path, loaded.tags, loaded.permissions)

    @staticmethod
    def _load(path: str) -> _Loaded:
        """
        Read the users, tags and permissions of a users file.

        @param path: the file.
        @return: what it says.
        @raise ValueError: see L{fromFile}.
        """
        users: dict[str, ScryptHash] = {}
        tags: dict[str, frozenset[str]] = {}
        permissions: dict[str, dict[str, Permissions]] | None = None
        for line in _readUsersFile(path):
            if line.user is not None and line.passwordHash is not None:
                users[line.user] = line.passwordHash
            elif line.about is not None and line.tags is not None:
                tags[line.about] = line.tags
            elif line.about is not None and line.permissions is not None:
                assert line.vhost is not None
                if permissions is None:
                    permissions = {}
                permissions.setdefault(line.about, {})[line.vhost] = line.permissions
        return _Loaded(users, tags, permissions)

    def reload(self) -> None:
        """
        Read the users file again (users, tags and permissions) and forget
        remembered password checks. Open connections keep going; what they
        do next is checked against the new permissions.

        On error the database is left as it was.

        @raise ValueError: see L{fromFile}; also if this database has no
            file.
        """
        if self.path is None:
            raise ValueError("this user database was not loaded from a file")
        loaded = self._load(self.path)
        before = {
            user: self.view(user)
            for user in set(self._users) | set(loaded.users)
            if not self._runtime(user)[0]
        }
        self._users = loaded.users
        self._set(loaded.tags, loaded.permissions)
        self._verified.clear()
        managed = 0 if self.accounts is None else len(self.accounts.users)
        self.log.info(
            "Reloaded users file {path}: {count} users"
            "{kept}",
            path=self.path,
            count=len(loaded.users),
            kept="" if not managed else
            f" ({managed} users changed at run time keep what the store says)",
        )
        self.accountsChanged(before, passwords=False)

    def users(self) -> list[str]:
        """
        The names of all users.

        @return: the names, sorted.
        """
        accounts = self.accounts
        if accounts is None:
            return sorted(self._users)
        names = {name for name in self._users if name not in accounts.users}
        names.update(name for name, record in accounts.users.items() if record is not None)
        return sorted(names)

    def tags(self, user: str) -> frozenset[str]:
        """
        The tags of C{user}.

        @param user: the user name.
        @return: its tags; none for an unknown user.
        """
        managed, record = self._runtime(user)
        if managed:
            return frozenset() if record is None else frozenset(record.tags)
        return self._tags.get(user, frozenset())

    def passwordHash(self, user: str) -> ScryptHash | None:
        """
        The stored password hash of C{user}.

        @param user: the user name.
        @return: the hash, or L{None} for an unknown user.
        """
        managed, record = self._runtime(user)
        if managed:
            return None if record is None else record.passwordHash
        return self._users.get(user)

    def permissions(self, user: str | None, vhost: str) -> Permissions | None:
        """
        What C{user} may do in C{vhost}.

        @param user: a user who logged in (L{None}: nobody, who may do
            nothing).
        @param vhost: the virtual host.
        @return: the permissions, or L{None} if the user may not use the
            virtual host at all.
        """
        if user is None:
            return None
        managed, record = self._runtime(user)
        if managed:
            if record is None:
                return None
            assert self.accounts is not None
            return self.accounts.permissions.get(user, {}).get(vhost)
        permissions = self._permissions
        if permissions is None:
            return self._everything if vhost == DEFAULT_VHOST else None
        byVhost = permissions.get(user)
        return None if byVhost is None else byVhost.get(vhost)

    @property
    def grantsPermissions(self) -> bool:
        """
        Whether permissions are given explicitly (the users file has
        C{permissions} lines); if not, every user of the file that no
        run-time change named may do everything in L{DEFAULT_VHOST}.
        """
        return self._permissions is not None

    def mechanisms(self) -> list[str]:
        """
        The SASL mechanisms offered in connection.start, best first.

        @return: the mechanism names.
        """
        return ["PLAIN", "AMQPLAIN"]

    def authenticate(
        self, mechanism: str, response: bytes, peerIsLoopback: bool
    ) -> str:
        """
        Check the response of a connection.start-ok on this thread (for
        tools and tests; the broker uses L{login}).

        @param mechanism: the mechanism the client chose.
        @param response: the client's SASL response. For PLAIN
            C{authzid NUL authcid NUL password}, where authzid is empty or
            the same as authcid; for AMQPLAIN the content of an AMQP field
            table (without its length) holding LOGIN and PASSWORD.
        @param peerIsLoopback: whether the client connected from a loopback
            address; C{guest} may log in only then.
        @return: the name of the user that logged in.
        @raise AuthenticationFailed: for an unknown mechanism, a malformed
            response, an unknown user or a wrong password, or C{guest} from
            elsewhere than loopback.
        """
        results: list[Any] = []
        self.login(mechanism, response, peerIsLoopback, SynchronousVerifier()).addBoth(
            results.append
        )
        (result,) = results
        if isinstance(result, Failure):
            result.raiseException()
        return str(result)

    def login(
        self,
        mechanism: str,
        response: bytes,
        peerIsLoopback: bool,
        verifier: IPasswordVerifier,
    ) -> Deferred[str]:
        """
        Check the response of a connection.start-ok, with the password
        itself checked by C{verifier} (off the reactor thread, in the
        broker). Parsing the response and every refusal that needs no
        password check happen at once.

        @param mechanism: see L{authenticate}.
        @param response: see L{authenticate}.
        @param peerIsLoopback: see L{authenticate}.
        @param verifier: what checks a password against its hash.
        @return: a L{Deferred} that fires with the name of the user that
            logged in, or fails with L{AuthenticationFailed} (see
            L{authenticate}).
        """
        try:
            if mechanism == "PLAIN":
                user, password = _parsePlain(response)
            elif mechanism == "AMQPLAIN":
                user, password = _parseAMQPlain(response)
            else:
                raise AuthenticationFailed(
                    f"login refused: unknown authentication mechanism "
                    f"{_quote(mechanism)}; supported: {' '.join(self.mechanisms())}",
                    mechanism=mechanism,
                    logReason=f"unknown mechanism {_quote(mechanism)}",
                )
            if user == GUEST and not peerIsLoopback:
                # Checked first, and whether guest exists or not, so that
                # guest's password cannot be probed from the network at all.
                _refuse(
                    mechanism,
                    user,
                    "user 'guest' may only connect from a loopback address; "
                    "add another user with qha-users",
                    "guest from a non-loopback address",
                )
        except AuthenticationFailed:
            return fail()
        stored = self.passwordHash(user)
        key = (user, hashlib.sha256(password.encode("utf-8")).digest())
        if stored is not None and self._verified.get(key) is stored:
            return succeed(user)

        def checked(matches: bool) -> str:
            if stored is None:
                _refuse(mechanism, user, "bad username or password", "unknown user")
            if not matches:
                _refuse(mechanism, user, "bad username or password", "wrong password")
            if self.passwordHash(user) is stored:
                # Not if the file was reloaded while the check ran.
                self._verified[key] = stored
            return user

        # An unknown user costs a check as well, so that the time taken does
        # not tell whether a user exists.
        return verifier.verify(
            _UNKNOWN_USER_HASH if stored is None else stored, password
        ).addCallback(checked)


def _refuse(mechanism: str, user: str, reason: str, logReason: str) -> NoReturn:
    """
    Refuse a login.

    @param mechanism: the mechanism used.
    @param user: the user name the client sent.
    @param reason: what the client is told.
    @param logReason: what the log says; it may say more than the client is
        told, e.g. whether the user exists.
    @raise AuthenticationFailed: always.
    """
    raise AuthenticationFailed(
        f"login refused for user {_quote(user)} with mechanism {mechanism}: {reason}",
        user=user,
        mechanism=mechanism,
        logReason=logReason,
    )


class IPasswordVerifier(Interface):
    """
    Checks a password against its stored hash, where that costs nothing to
    the caller's thread.
    """

    def verify(passwordHash: ScryptHash, password: str) -> Deferred[bool]:
        """
        Check C{password} against C{passwordHash}.

        @return: a L{Deferred} that fires with whether it matches.
        """


@implementer(IPasswordVerifier)
class SynchronousVerifier:
    """
    Checks passwords on the calling thread at once: for tools, tests, and
    a broker factory that was given no thread pool.
    """

    def verify(self, passwordHash: ScryptHash, password: str) -> Deferred[bool]:
        """
        Check at once; see L{IPasswordVerifier.verify}.
        """
        return succeed(passwordHash.verify(password))


@implementer(IPasswordVerifier)
class ThreadPoolVerifier(Service):
    """
    Checks passwords in a small thread pool, so that the tens of
    milliseconds of each scrypt computation never hold up the reactor (and
    with it every other client); scrypt releases the GIL.

    A service: the pool's threads start with the broker and stop with it,
    so a broker that refuses to start leaves no thread behind. Checks asked
    for before it starts wait for it.

    @ivar pool: the threads.
    """

    def __init__(self, reactor: Any, threads: int = 2) -> None:
        """
        @param reactor: the reactor that gets the answers
            (L{IReactorFromThreads}).
        @param threads: how many checks may run at once.
        """
        self.reactor = reactor
        self.pool = ThreadPool(minthreads=0, maxthreads=threads, name="qha-passwords")

    def startService(self) -> None:
        """
        Start the threads.
        """
        super().startService()
        self.pool.start()

    def stopService(self) -> None:
        """
        Stop the threads (a check running now finishes first).
        """
        super().stopService()
        self.pool.stop()

    def verify(self, passwordHash: ScryptHash, password: str) -> Deferred[bool]:
        """
        Check in the pool; see L{IPasswordVerifier.verify}.
        """
        return deferToThreadPool(self.reactor, self.pool, passwordHash.verify, password)


class ReloadOnSignal(Service):
    """
    Reloads the users file on C{SIGHUP}, the way twistd's own log rotation
    answers C{SIGUSR1}: the signal handler only asks the reactor (with
    C{callFromThread}, which is safe from a signal handler and wakes it) to
    call L{reload} on its thread.

    Connections stay open; a file that cannot be read or is malformed is
    logged and the users loaded before are kept. Without this service
    C{SIGHUP} ends the process (its default action) with no log line.

    @ivar database: the users to reload.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        database: UserDatabase,
        signalNumber: int = signal.SIGHUP,
        installHandler: Any = signal.signal,
    ) -> None:
        """
        @param reactor: where L{reload} runs (C{IReactorFromThreads}).
        @param database: the users to reload.
        @param signalNumber: the signal.
        @param installHandler: C{signal.signal}, or a fake in tests.
        """
        self.reactor = reactor
        self.database = database
        self.signalNumber = signalNumber
        self._installHandler = installHandler
        self._previous: Any = None

    def startService(self) -> None:
        """
        Install the handler.
        """
        super().startService()
        self._previous = self._installHandler(self.signalNumber, self._received)

    def stopService(self) -> None:
        """
        Put back the handler there was before.
        """
        super().stopService()
        self._installHandler(self.signalNumber, self._previous)
        self._previous = None

    def _received(self, number: int, frame: Any) -> None:
        """
        The signal arrived: have the reactor reload.
        """
        self.reactor.callFromThread(self.reload)

    def reload(self) -> bool:
        """
        Reload the users file now, and log what happened.

        @return: whether the new file was taken.
        """
        if self.database.path is None:
            self.log.info("SIGHUP: there is no users file (--users) to reload")
            return False
        try:
            self.database.reload()
        except ValueError as error:
            self.log.error(
                "Not reloading the users file (keeping the {count} users loaded"
                " before): {error}",
                count=len(self.database.users()),
                error=str(error),
            )
            return False
        return True


@dataclass
class _Source:
    """
    What L{FailedLogins} keeps about one source address.

    @ivar failures: failed logins since it was last forgotten, for the
        delay.
    @ivar last: when the last one happened.
    @ivar windowStart: when its last log line was written.
    @ivar unlogged: failures since that line.
    @ivar lastFailure: the last of them, for the next line.
    """

    failures: int
    last: float
    windowStart: float
    unlogged: int = 0
    lastFailure: AuthenticationFailed | None = None


class FailedLogins(Service):
    """
    Slows down and logs failed logins, per source address.

    Each refusal is answered after a delay that starts at L{firstDelay} and
    doubles with each failure from the same address, up to L{maxDelay}; an
    address without failures for L{forgetAfter} seconds starts again. The
    first failure from an address is logged at once; later ones within
    L{interval} seconds are counted and logged as one line at its end, so
    a flood writes one line per address and interval.

    At most L{maxSources} addresses are remembered (the least recent go
    first), so a flood from many addresses costs bounded memory.

    A service only so that the last counts are logged when the broker
    stops.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        firstDelay: float = 0.1,
        maxDelay: float = 2.0,
        interval: float = 10.0,
        forgetAfter: float = 60.0,
        maxSources: int = 10000,
    ) -> None:
        """
        @param clock: for the delays and the log intervals.
        @param firstDelay: seconds before answering the first failure.
        @param maxDelay: the most seconds before answering any.
        @param interval: seconds between the log lines of one address.
        @param forgetAfter: seconds without failures after which an
            address starts again from L{firstDelay}.
        @param maxSources: the most addresses remembered.
        """
        self.clock = clock
        self.firstDelay = firstDelay
        self.maxDelay = maxDelay
        self.interval = interval
        self.forgetAfter = forgetAfter
        self.maxSources = maxSources
        self._sources: dict[str, _Source] = {}
        self._flush: IDelayedCall | None = None

    def failed(self, source: str, failure: AuthenticationFailed) -> float:
        """
        A login from C{source} was refused: log it (or count it for the
        next line).

        @param source: the client's address, without its port.
        @param failure: why.
        @return: the seconds to wait before telling the client.
        """
        now = self.clock.seconds()
        known = self._sources.pop(source, None)
        if known is not None and now - known.last >= self.forgetAfter:
            self._logUnlogged(source, known, now)
            known = None
        if known is None:
            known = _Source(failures=0, last=now, windowStart=now - self.interval)
        self._sources[source] = known
        delay = min(self.maxDelay, self.firstDelay * 2 ** min(known.failures, 32))
        known.failures += 1
        known.last = now
        if now - known.windowStart >= self.interval and not known.unlogged:
            known.windowStart = now
            self.log.warn(
                "login refused from {source} for user {user!r} with mechanism"
                " {mechanism}: {reason}",
                source=source,
                user=failure.user,
                mechanism=failure.mechanism,
                reason=failure.logReason,
            )
        else:
            known.unlogged += 1
            known.lastFailure = failure
            if self._flush is None:
                self._flush = self.clock.callLater(
                    max(0.0, known.windowStart + self.interval - now), self.flush
                )
        while len(self._sources) > self.maxSources:
            oldest = next(iter(self._sources))
            self._logUnlogged(oldest, self._sources.pop(oldest), now)
        return delay

    def _logUnlogged(self, source: str, known: _Source, now: float) -> None:
        """
        Log the failures from C{source} not logged yet, if any.
        """
        if not known.unlogged:
            return
        failure = known.lastFailure
        self.log.warn(
            "{count} more logins refused from {source} in the last {seconds:.0f}s"
            " (the last for user {user!r} with mechanism {mechanism}: {reason})",
            count=known.unlogged,
            source=source,
            seconds=now - known.windowStart,
            user=failure.user if failure is not None else None,
            mechanism=failure.mechanism if failure is not None else "",
            reason=failure.logReason if failure is not None else "",
        )
        known.unlogged = 0
        known.lastFailure = None
        known.windowStart = now

    def flush(self) -> None:
        """
        Log the counted failures of every address whose interval is over,
        and forget the addresses with no failures for L{forgetAfter}
        seconds.
        """
        self._flush = None
        now = self.clock.seconds()
        pending: float | None = None
        for source, known in list(self._sources.items()):
            if known.unlogged:
                due = known.windowStart + self.interval
                if due <= now:
                    self._logUnlogged(source, known, now)
                else:
                    pending = due if pending is None else min(pending, due)
            elif now - known.last >= self.forgetAfter:
                del self._sources[source]
        if pending is not None:
            self._flush = self.clock.callLater(pending - now, self.flush)

    def stopService(self) -> None:
        """
        Log what is still counted, and leave no timer behind.
        """
        super().stopService()
        if self._flush is not None and self._flush.active():
            self._flush.cancel()
        self._flush = None
        now = self.clock.seconds()
        for source, known in list(self._sources.items()):
            self._logUnlogged(source, known, now)


def _malformed(mechanism: str, problem: str) -> AuthenticationFailed:
    """
    The error for a response that cannot be parsed.

    @param mechanism: the mechanism.
    @param problem: what is wrong with the response.
    @return: the exception to raise.
    """
    return AuthenticationFailed(
        f"login refused with mechanism {mechanism}: malformed response: "
        f"{problem}"
    )


def _parsePlain(response: bytes) -> tuple[str, str]:
    """
    Parse a SASL PLAIN response (RFC 4616).

    @param response: C{authzid NUL authcid NUL password}.
    @return: the user name (authcid) and the password.
    @raise AuthenticationFailed: if the response is malformed, or asks to
        act as another user (authzid not empty and not authcid).
    """
    expected = "expected authzid NUL user NUL password"
    if not response:
        raise _malformed("PLAIN", f"empty; {expected}")
    parts = response.split(b"\0")
    if len(parts) != 3:
        raise _malformed(
            "PLAIN", f"{len(parts) - 1} NUL bytes instead of 2; {expected}"
        )
    try:
        authzid, user, password = (part.decode("utf-8") for part in parts)
    except UnicodeDecodeError:
        raise _malformed("PLAIN", "not valid UTF-8") from None
    if not user:
        raise _malformed("PLAIN", "empty user name")
    if authzid and authzid != user:
        raise AuthenticationFailed(
            f"login refused for user {_quote(user)} with mechanism PLAIN: "
            f"cannot act as another user ({_quote(authzid)})"
        )
    return user, password


def _parseAMQPlain(response: bytes) -> tuple[str, str]:
    """
    Parse an AMQPLAIN response.

    @param response: an AMQP field table without its 4-byte length, as
        pika and py-amqp send it, with the long strings LOGIN and PASSWORD.
    @return: the user name and the password.
    @raise AuthenticationFailed: if the response is malformed.
    """
    expected = "expected a field table with LOGIN and PASSWORD"
    if not response:
        raise _malformed("AMQPLAIN", f"empty; {expected}")
    try:
        table = decode.field_table(struct.pack(">I", len(response)) + response)[1]
    except Exception:
        # pamqp raises ValueError for most bad input, but a crafted table can
        # reach others (e.g. RecursionError from deeply nested tables); none
        # of them may escape as anything but a refused login.
        raise _malformed("AMQPLAIN", f"not a field table; {expected}") from None
    user = table.get("LOGIN")
    password = table.get("PASSWORD")
    if not isinstance(user, str) or not isinstance(password, str):
        raise _malformed(
            "AMQPLAIN", "LOGIN and PASSWORD must be UTF-8 long strings"
        )
    if not user:
        raise _malformed("AMQPLAIN", "empty user name")
    return user, password


class _CommandLineError(Exception):
    """
    An error that C{qha-users} reports in one line before exiting with 1.
    """


class _ArgumentParser(argparse.ArgumentParser):
    """
    An argument parser whose usage errors are one-line L{_CommandLineError}s
    instead of a usage text and exit status 2.
    """

    def error(self, message: str) -> NoReturn:
        """
        Report a usage error.

        @param message: what is wrong.
        @raise _CommandLineError: always.
        """
        raise _CommandLineError(f"{message} (see {self.prog} --help)")


def _readPassword(name: str, fromStandardInput: bool) -> str:
    """
    Get a new password: one line from standard input, or typed twice.

    @param name: the user, for the prompt.
    @param fromStandardInput: read one line from standard input instead of
        prompting.
    @return: the password.
    @raise _CommandLineError: if there is none, or the two differ.
    """
    if fromStandardInput:
        line = sys.stdin.readline()
        if not line:
            raise _CommandLineError("no password on standard input")
        password = line.rstrip("\r\n")
    else:
        try:
            password = getpass(f"Password for {name!r}: ")
            again = getpass("Password again: ")
        except EOFError:
            raise _CommandLineError("no password given") from None
        if password != again:
            raise _CommandLineError("the passwords do not match")
    if not password:
        raise _CommandLineError("the password is empty")
    if "\0" in password:
        raise _CommandLineError("the password may not contain NUL characters")
    return password


def _readForEditing(path: str) -> list[_UsersFileLine]:
    """
    Read a users file for C{qha-users}.

    @param path: the file.
    @return: its lines.
    @raise _CommandLineError: if it cannot be read or is malformed.
    """
    try:
        return _readUsersFile(path)
    except ValueError as e:
        raise _CommandLineError(str(e)) from None


def _writeAtomically(path: str, lines: Sequence[_UsersFileLine]) -> None:
    """
    Replace a users file: write a temporary file next to it, then rename it
    over the old one, so that the broker never reads half a file.

    A new file gets mode 0600; an existing one keeps its mode. A symbolic
    link is followed and its target replaced.

    @param path: the file.
    @param lines: its new content.
    @raise _CommandLineError: if it cannot be written.
    """
    target = os.path.realpath(path)
    directory, base = os.path.split(target)
    try:
        mode: int | None = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = None
    except OSError as e:
        raise _CommandLineError(f"cannot write {path!r}: {e.strerror or e}")
    content = "".join(line.text + "\n" for line in lines).encode("utf-8")
    try:
        # mkstemp creates the file with mode 0600.
        fd, temporary = tempfile.mkstemp(
            prefix=f".{base}.", suffix=".tmp", dir=directory
        )
    except OSError as e:
        raise _CommandLineError(f"cannot write {path!r}: {e.strerror or e}")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(temporary, target)
    except OSError as e:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise _CommandLineError(f"cannot write {path!r}: {e.strerror or e}")


def _addUser(path: str, name: str, passwordFromStandardInput: bool) -> str:
    """
    Add a user to a users file, or give an existing one a new password.

    @param path: the users file; created if it does not exist.
    @param name: the user.
    @param passwordFromStandardInput: see L{_readPassword}.
    @return: what was done, for the person running the command.
    @raise _CommandLineError: on any error; the file is then unchanged.
    """
    problem = _userNameProblem(name)
    if problem is not None:
        raise _CommandLineError(problem)
    if os.path.lexists(path):
        lines = _readForEditing(path)
    else:
        lines = [_UsersFileLine(text) for text in _NEW_FILE_HEADER.splitlines()]
    password = _readPassword(name, passwordFromStandardInput)
    passwordHash = ScryptHash.fromPassword(password)
    entry = _UsersFileLine(f"{name}:{passwordHash.asString()}", name, passwordHash)
    for index, line in enumerate(lines):
        if line.user == name:
            lines[index] = entry
            done = f"changed the password of user {name!r} in {path}"
            break
    else:
        lines.append(entry)
        done = f"added user {name!r} to {path}"
    _writeAtomically(path, lines)
    return done


def _removeUser(path: str, name: str) -> str:
    """
    Remove a user from a users file.

    @param path: the users file.
    @param name: the user.
    @return: what was done, for the person running the command.
    @raise _CommandLineError: if the file cannot be read or written or has
        no such user.
    """
    lines = _readForEditing(path)
    if not any(line.user == name for line in lines):
        raise _CommandLineError(f"there is no user {name!r} in {path!r}")
    # Its tags and permissions go with it.
    kept = [line for line in lines if name not in (line.user, line.about)]
    if len(kept) == len(lines):
        raise _CommandLineError(f"there is no user {name!r} in {path!r}")
    _writeAtomically(path, kept)
    return f"removed user {name!r} from {path}"


def _listUsers(path: str) -> str:
    """
    List the users of a users file.

    @param path: the users file.
    @return: their names, one per line, in file order.
    @raise _CommandLineError: if the file cannot be read.
    """
    return "".join(
        line.user + "\n" for line in _readForEditing(path) if line.user is not None
    )


def _argumentParser() -> _ArgumentParser:
    """
    The command line of C{qha-users}.

    @return: a parser.
    """
    parser = _ArgumentParser(
        prog="qha-users",
        description="Edit a qha users file (for twistd qha --users FILE).",
    )
    parser.add_argument("file", metavar="FILE", help="the users file")
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True
    )
    add = commands.add_parser(
        "add", help="add a user, or set the password of an existing one"
    )
    add.add_argument("name", metavar="NAME")
    add.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from one line of standard input "
        "instead of asking for it twice",
    )
    remove = commands.add_parser("remove", help="remove a user")
    remove.add_argument("name", metavar="NAME")
    commands.add_parser("list", help="list the users")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run C{qha-users FILE add NAME [--password-stdin]}, C{qha-users FILE
    remove NAME} or C{qha-users FILE list}.

    This command does no networking, so it does not run a reactor.

    @param argv: the arguments without the program name; L{sys.argv} if
        L{None}.
    @return: the exit status: 0 on success, 1 on any error (reported as one
        line on standard error).
    """
    parser = _argumentParser()
    try:
        arguments = parser.parse_args(argv)
        if arguments.command == "add":
            done = _addUser(arguments.file, arguments.name, arguments.password_stdin)
            print(done)
        elif arguments.command == "remove":
            print(_removeUser(arguments.file, arguments.name))
        else:
            sys.stdout.write(_listUsers(arguments.file))
    except _CommandLineError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    except SystemExit as e:
        # --help prints its text and exits with 0.
        return e.code if isinstance(e.code, int) else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
