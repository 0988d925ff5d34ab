"""
Users and permissions changed at run time (C{qha-admin user ...} and
C{qha-admin permissions ...}): L{Accounts}, the layer over the users file
that the store keeps and the replication carries to the backups, as
RabbitMQ keeps its users in its internal database.

The rule that combines it with the users file (C{--users}): the file is the
seed, and once a run-time change names a user, the run-time record is the
whole truth about that user (password hash, tags, and permissions in every
virtual host). The first such change copies what the file says of the user
at that moment into the record, so that changing a password keeps its
permissions. From then on the file's lines about that user are ignored, so
a C{SIGHUP} reload never undoes a run-time change; a deleted user stays
deleted (a tombstone), even if the file still has it. Users that no
run-time change named come from the file, as before.

Every change is an L{AccountChange}: the primary makes them (checked
first), its observers (the store, each backup's replication source) write
them as events, and a backup or a store replaying its journal applies them
with L{Accounts.apply}, which checks every field again, so a bad change from
a peer is refused, never applied.

The registry of one broker is found from its virtual hosts
(L{Accounts.of}), as L{qha.broker.vhosts.VirtualHosts} is found from its
default virtual host, so that the store, the replication and the AMQP
factory share it without being handed it.

Passwords never reach the broker: C{qha-admin} hashes them (scrypt, as
C{qha-users} writes the users file) and sends the hash.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Protocol
from weakref import WeakKeyDictionary

from twisted.logger import Logger

from ..broker.errors import AMQPError
from ..broker.vhost import VirtualHost
from ..broker.vhosts import VirtualHosts, checkVhostName
from .access import Permissions
from .users import _TAG, ScryptHash, _userNameProblem

if TYPE_CHECKING:
    from .users import UserDatabase

__all__ = [
    "ACCOUNTS_STATE",
    "AccountChange",
    "AccountError",
    "Accounts",
    "AccountsObserver",
    "MAX_FIELD",
    "MAX_USERS",
    "PERMISSIONS_CLEARED",
    "PERMISSIONS_SET",
    "RuntimeUser",
    "USER_DELETED",
    "USER_SET",
    "changeProblem",
    "checkHash",
    "checkPattern",
    "checkTags",
    "checkUserName",
]

USER_SET = "user-set"
"""
A user's whole record: name, password hash, tags (comma-separated).
"""

USER_DELETED = "user-deleted"
"""
A user deleted, with its run-time permissions: name.
"""

PERMISSIONS_SET = "permissions-set"
"""
A user's permissions in one virtual host: user, vhost, configure, write,
read.
"""

PERMISSIONS_CLEARED = "permissions-cleared"
"""
A user's permissions in one virtual host removed: user, vhost.
"""

ACCOUNTS_STATE = "accounts"
"""
The whole run-time layer, as JSON (a backup's snapshot, a compacted
journal): it replaces what the receiver had.
"""

MAX_FIELD = 255
"""
The most bytes of UTF-8 of a user name, a password hash, the tags
(comma-separated), a vhost name or a permission pattern: what one string
field of an event carries.
"""

MAX_USERS = 1 << 16
"""
The most users (and tombstones) a run-time state may hold.
"""

_FIELDS = {
    USER_SET: 3,
    USER_DELETED: 1,
    PERMISSIONS_SET: 5,
    PERMISSIONS_CLEARED: 2,
    ACCOUNTS_STATE: 1,
}


class AccountError(ValueError):
    """
    A run-time change refused: C{str()} says why, in words a person can act
    on (the text C{qha-admin} prints).
    """


def _bounded(value: object, what: str) -> str:
    """
    C{value}, checked to be a string of at most L{MAX_FIELD} bytes of UTF-8.

    @raise AccountError: if it is not.
    """
    if not isinstance(value, str):
        raise AccountError(f"the {what} is not a string")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise AccountError(f"the {what} is not valid UTF-8") from None
    if size > MAX_FIELD:
        raise AccountError(f"the {what} is {size} bytes long (at most {MAX_FIELD})")
    return value


def checkUserName(name: object) -> str:
    """
    A user name, checked: non-empty, at most L{MAX_FIELD} bytes of UTF-8, no
    C{':'}, whitespace or control character (what a users file line allows).

    @raise AccountError: saying what is wrong.
    """
    name = _bounded(name, "user name")
    problem = _userNameProblem(name)
    if problem is not None:
        raise AccountError(problem)
    return name


def checkTags(tags: Iterable[object]) -> frozenset[str]:
    """
    User tags, checked: each of letters, digits, C{_ . -} (at most 64), all
    of them at most L{MAX_FIELD} bytes once joined with commas.

    @raise AccountError: saying what is wrong.
    """
    checked: set[str] = set()
    for tag in tags:
        if not isinstance(tag, str) or not _TAG.match(tag):
            raise AccountError(
                f"tag {str(tag)[:64]!r} may hold only letters, digits, '_', '.' and '-'"
                " (at most 64)"
            )
        checked.add(tag)
    _bounded(",".join(sorted(checked)), "list of tags")
    return frozenset(checked)


def parseTags(text: str) -> frozenset[str]:
    """
    Tags written as C{a,b} (or with spaces), checked by L{checkTags}.
    """
    return checkTags(t for t in text.replace(" ", ",").split(",") if t)


def checkPattern(pattern: object, what: str = "pattern") -> str:
    """
    A permission pattern, checked: at most L{MAX_FIELD} bytes of UTF-8, and
    a regular expression that compiles.

    @raise AccountError: saying what is wrong.
    """
    pattern = _bounded(pattern, f"{what} pattern")
    try:
        Permissions(pattern, "", "")
    except ValueError as error:
        raise AccountError(f"{what}: {error}") from None
    return pattern


def checkHash(text: object) -> ScryptHash:
    """
    A password hash as a users file holds it (C{scrypt$N$r$p$SALT$HASH}),
    checked, with scrypt parameters a login can afford.

    @raise AccountError: saying what is wrong.
    """
    text = _bounded(text, "password hash")
    try:
        return ScryptHash.fromString(text)
    except ValueError as error:
        raise AccountError(str(error)) from None


def checkVhost(name: object) -> str:
    """
    A virtual host's name, checked as L{checkVhostName} does.

    @raise AccountError: saying what is wrong.
    """
    try:
        return checkVhostName(_bounded(name, "vhost name"))
    except AMQPError as error:
        raise AccountError(error.replyText.split(" - ", 1)[-1]) from None


def changeProblem(kind: str, fields: tuple[Any, ...]) -> str | None:
    """
    What is wrong with the fields of a change of C{kind} (other than
    L{ACCOUNTS_STATE}, whose JSON L{Accounts.apply} checks), or L{None}:
    what the event decoder asks of an account event from a peer.
    """
    try:
        _checkFields(kind, fields)
    except AccountError as error:
        return str(error)
    return None


def _checkFields(kind: str, fields: tuple[Any, ...]) -> None:
    """
    Check the fields of a change.

    @raise AccountError: saying what is wrong.
    """
    expected = _FIELDS.get(kind)
    if expected is None:
        raise AccountError(f"unknown account change {kind!r}")
    if len(fields) != expected:
        raise AccountError(f"{kind}: {len(fields)} fields, not {expected}")
    if kind == ACCOUNTS_STATE:
        return
    checkUserName(fields[0])
    if kind == USER_SET:
        checkHash(fields[1])
        tags = _bounded(fields[2], "list of tags")
        checkTags(t for t in tags.split(",") if t)
    elif kind in (PERMISSIONS_SET, PERMISSIONS_CLEARED):
        checkVhost(fields[1])
        if kind == PERMISSIONS_SET:
            for pattern, what in zip(fields[2:], ("configure", "write", "read")):
                checkPattern(pattern, what)


@dataclass(frozen=True)
class AccountChange:
    """
    One run-time change, as it travels in the event stream.

    @ivar kind: L{USER_SET}, L{USER_DELETED}, L{PERMISSIONS_SET},
        L{PERMISSIONS_CLEARED} or L{ACCOUNTS_STATE}.
    @ivar fields: its string fields (bytes for L{ACCOUNTS_STATE}).
    """

    kind: str
    fields: tuple[Any, ...]


@dataclass(frozen=True)
class RuntimeUser:
    """
    A user as the run-time layer holds it.

    @ivar passwordHash: its password's scrypt hash.
    @ivar tags: its tags.
    """

    passwordHash: ScryptHash
    tags: frozenset[str]


class AccountsObserver(Protocol):
    """
    Told of every run-time change, in order (the store, a replication
    source), to write it as an event.
    """

    def accountChanged(self, change: AccountChange) -> None:
        """
        C{change} was applied.
        """


_registries: "WeakKeyDictionary[VirtualHosts, Accounts]" = WeakKeyDictionary()


class Accounts:
    """
    The run-time users and permissions of one broker.

    @ivar users: the users run-time changes named: each one's record, or
        L{None} for a deleted one (it hides the users file's user).
    @ivar permissions: by user (of L{users}), by virtual host.
    @ivar observers: told of each change (see L{AccountsObserver}).
    @ivar database: the users file's database this layer is over, if one
        was attached (L{qha.amqp.users.UserDatabase.attachAccounts}).
    @ivar vhosts: the broker's virtual hosts, for the checks of
        C{permissions set/clear}.
    """

    log = Logger()

    def __init__(self, vhosts: VirtualHosts | None = None) -> None:
        self.vhosts = vhosts
        self.users: dict[str, RuntimeUser | None] = {}
        self.permissions: dict[str, dict[str, Permissions]] = {}
        self.observers: list[AccountsObserver] = []
        self.database: UserDatabase | None = None

    @classmethod
    def of(cls, vhosts: VirtualHosts) -> "Accounts":
        """
        The run-time accounts of the broker whose virtual hosts are
        C{vhosts}; made empty on first use.
        """
        accounts = _registries.get(vhosts)
        if accounts is None:
            accounts = _registries[vhosts] = cls(vhosts)
            vhosts.observers.append(accounts)
        return accounts

    # VirtualHostsObserver

    def vhostAdded(self, vhost: VirtualHost) -> None:
        """
        Nothing: a new virtual host starts with nobody's permissions.
        """

    def vhostDeleted(self, vhost: VirtualHost) -> None:
        """
        The permissions in a deleted virtual host go with it, as in
        RabbitMQ: a virtual host made again under the same name starts
        with nobody's. Every broker does this as it applies the deletion
        (from a client, the stream or its store), so no event of its own
        is written; the deletion closed the connections to it already.
        """
        for user in list(self.permissions):
            granted = self.permissions[user]
            if granted.pop(vhost.name, None) is not None and not granted:
                del self.permissions[user]

    @property
    def empty(self) -> bool:
        """
        Whether no run-time change was ever made.
        """
        return not self.users and not self.permissions

    # Reading (the combination with the file is UserDatabase's)

    def exists(self, user: str) -> bool:
        """
        Whether C{user} exists, in this layer or else in the users file.
        """
        if user in self.users:
            return self.users[user] is not None
        return self.database is not None and self.database.fileView(user) is not None

    # Changes asked for on the primary: checked, then made

    def addUser(self, name: str, passwordHash: str, tags: Iterable[str] = ()) -> None:
        """
        C{rabbitmqctl add_user}: a new user, with no permissions.

        @raise AccountError: if a field is not valid or the user exists.
        """
        checkUserName(name)
        checkHash(passwordHash)
        joined = ",".join(sorted(checkTags(tags)))
        if self.exists(name):
            raise AccountError(f"user '{name}' already exists")
        self._make(USER_SET, name, passwordHash, joined)

    def deleteUser(self, name: str) -> None:
        """
        C{rabbitmqctl delete_user}: the user goes, with its permissions;
        its connections are closed.

        @raise AccountError: if there is no such user.
        """
        checkUserName(name)
        self._existing(name)
        self._make(USER_DELETED, name)

    def changePassword(self, name: str, passwordHash: str) -> None:
        """
        C{rabbitmqctl change_password}; the user's connections are closed.

        @raise AccountError: if the hash is not valid or there is no such
            user.
        """
        checkUserName(name)
        checkHash(passwordHash)
        record = self._managed(name)
        self._make(USER_SET, name, passwordHash, ",".join(sorted(record.tags)))

    def setTags(self, name: str, tags: Iterable[str]) -> None:
        """
        C{rabbitmqctl set_user_tags}: replace the user's tags.

        @raise AccountError: if a tag is not valid or there is no such
            user.
        """
        checkUserName(name)
        joined = ",".join(sorted(checkTags(tags)))
        record = self._managed(name)
        self._make(USER_SET, name, record.passwordHash.asString(), joined)

    def setPermissions(
        self, user: str, vhost: str, configure: str, write: str, read: str
    ) -> None:
        """
        C{rabbitmqctl set_permissions}.

        @raise AccountError: if a pattern is not valid, or there is no such
            user or vhost.
        """
        checkUserName(user)
        checkVhost(vhost)
        for pattern, what in ((configure, "configure"), (write, "write"), (read, "read")):
            checkPattern(pattern, what)
        self._existing(user)
        self._existingVhost(vhost)
        self._managed(user)
        self._make(PERMISSIONS_SET, user, vhost, configure, write, read)

    def clearPermissions(self, user: str, vhost: str) -> None:
        """
        C{rabbitmqctl clear_permissions}: the user's connections to C{vhost}
        are closed. Clearing none is no error (as RabbitMQ).

        @raise AccountError: if there is no such user or vhost.
        """
        checkUserName(user)
        checkVhost(vhost)
        self._existing(user)
        self._existingVhost(vhost)
        self._managed(user)
        if vhost in self.permissions.get(user, {}):
            self._make(PERMISSIONS_CLEARED, user, vhost)

    def _existing(self, name: str) -> None:
        """
        @raise AccountError: if there is no user C{name}.
        """
        if not self.exists(name):
            raise AccountError(f"user '{name}' does not exist")

    def _existingVhost(self, name: str) -> None:
        """
        @raise AccountError: if there is no virtual host C{name}.
        """
        if self.vhosts is not None and name not in self.vhosts:
            raise AccountError(f"vhost '{name}' does not exist")

    def _managed(self, name: str) -> RuntimeUser:
        """
        The record of user C{name}, made from what the users file says of
        it (password, tags, permissions) if no run-time change named it
        yet: the changes that copy it go first.

        @raise AccountError: if there is no such user.
        """
        self._existing(name)
        record = self.users.get(name)
        if record is not None:
            return record
        assert self.database is not None
        view = self.database.fileView(name)
        assert view is not None
        passwordHash, tags, permissions = view
        # One copy: its changes, taken together, take no access away.
        before = self._views({name})
        self.apply(
            AccountChange(USER_SET, (name, passwordHash.asString(), ",".join(sorted(tags)))),
            revoke=False,
        )
        for vhost, granted in sorted(permissions.items()):
            self.apply(
                AccountChange(
                    PERMISSIONS_SET,
                    (name, vhost, granted.configure, granted.write, granted.read),
                ),
                revoke=False,
            )
        if self.database is not None:
            self.database.accountsChanged(before)
        record = self.users[name]
        assert record is not None
        return record

    def _make(self, kind: str, *fields: Any) -> None:
        """
        Apply a change made here, checked already.
        """
        self.apply(AccountChange(kind, tuple(fields)))

    # Applying (every change, made here or received)

    def apply(self, change: AccountChange, revoke: bool = True) -> None:
        """
        Apply C{change}, tell the observers, and have the database close
        the connections that lost their access (if C{revoke}).

        @raise AccountError: if the change is not valid; nothing is
            applied then.
        """
        kind, fields = change.kind, change.fields
        if kind == ACCOUNTS_STATE:
            users, permissions = parseState(fields[0] if len(fields) == 1 else None)
            touched = set(self.users) | set(users)
            before = self._views(touched)
            self.users, self.permissions = users, permissions
        else:
            _checkFields(kind, fields)
            name = fields[0]
            touched = {name}
            before = self._views(touched)
            if kind == USER_SET:
                self.users[name] = RuntimeUser(
                    ScryptHash.fromString(fields[1]),
                    frozenset(t for t in fields[2].split(",") if t),
                )
            elif kind == USER_DELETED:
                self.users[name] = None
                self.permissions.pop(name, None)
            elif kind == PERMISSIONS_SET:
                self.permissions.setdefault(name, {})[fields[1]] = Permissions(*fields[2:])
            else:
                granted = self.permissions.get(name, {})
                granted.pop(fields[1], None)
                if not granted:
                    self.permissions.pop(name, None)
        for observer in list(self.observers):
            observer.accountChanged(change)
        if revoke and self.database is not None:
            self.database.accountsChanged(before)

    def _views(self, users: Iterable[str]) -> dict[str, Any]:
        """
        What each of C{users} may do now (for the database to compare).
        """
        database = self.database
        if database is None:
            return {}
        return {user: database.view(user) for user in users}

    def state(self) -> bytes:
        """
        The whole layer as the JSON of an L{ACCOUNTS_STATE} change.
        """
        return json.dumps(
            {
                "users": {
                    name: None
                    if record is None
                    else {"hash": record.passwordHash.asString(), "tags": sorted(record.tags)}
                    for name, record in sorted(self.users.items())
                },
                "permissions": {
                    user: {
                        vhost: [p.configure, p.write, p.read]
                        for vhost, p in sorted(byVhost.items())
                    }
                    for user, byVhost in sorted(self.permissions.items())
                },
            },
            sort_keys=True,
        ).encode("utf-8")

    def stateChange(self) -> AccountChange:
        """
        The L{ACCOUNTS_STATE} change that makes another layer like this one.
        """
        return AccountChange(ACCOUNTS_STATE, (self.state(),))


def parseState(
    data: object,
) -> tuple[dict[str, RuntimeUser | None], dict[str, dict[str, Permissions]]]:
    """
    The users and permissions of an L{ACCOUNTS_STATE} change, every field
    checked as a single change's are.

    @raise AccountError: saying what is wrong.
    """
    if not isinstance(data, bytes):
        raise AccountError("the accounts state is not bytes")
    try:
        state = json.loads(data)
    except (ValueError, RecursionError) as error:
        raise AccountError(f"the accounts state is not JSON ({error})") from None
    if not isinstance(state, dict):
        raise AccountError("the accounts state is not a JSON object")
    rawUsers = state.get("users")
    rawPermissions = state.get("permissions")
    if not isinstance(rawUsers, dict) or not isinstance(rawPermissions, dict):
        raise AccountError("the accounts state lacks 'users' or 'permissions' objects")
    if len(rawUsers) > MAX_USERS or len(rawPermissions) > MAX_USERS:
        raise AccountError(f"the accounts state has more than {MAX_USERS} users")
    users: dict[str, RuntimeUser | None] = {}
    for name, record in rawUsers.items():
        checkUserName(name)
        if record is None:
            users[name] = None
            continue
        if not isinstance(record, dict) or not isinstance(record.get("tags"), list):
            raise AccountError(f"user {name[:64]!r}: not an object with a hash and tags")
        users[name] = RuntimeUser(checkHash(record.get("hash")), checkTags(record["tags"]))
    permissions: dict[str, dict[str, Permissions]] = {}
    for user, byVhost in rawPermissions.items():
        checkUserName(user)
        if users.get(user) is None:
            raise AccountError(f"permissions of user {user[:64]!r}, who has no record")
        if not isinstance(byVhost, dict) or len(byVhost) > MAX_USERS:
            raise AccountError(f"permissions of user {user[:64]!r}: not an object")
        for vhost, patterns in byVhost.items():
            checkVhost(vhost)
            if not isinstance(patterns, list) or len(patterns) != 3:
                raise AccountError(
                    f"permissions of user {user[:64]!r} in vhost {vhost[:64]!r}:"
                    " not three patterns"
                )
            for pattern, what in zip(patterns, ("configure", "write", "read")):
                checkPattern(pattern, what)
            permissions.setdefault(user, {})[vhost] = Permissions(*patterns)
    return users, permissions
