"""
The admin commands a broker answers on its AMP port, for C{qha-admin}:
L{AdminLocator}, composed by C{qha.tap} with the replication locator on the
one port, behind the same login. They need an identity with the admin role
(L{qha.ha.auth.ADMIN}: the cluster secret, the HA credentials); every
action that changes something is logged with who asked.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.protocols import amp

from ..broker.errors import AMQPError
from ..broker.vhost import VirtualHost
from ..broker.vhosts import VirtualHosts
from ..ha.auth import ADMIN
from ..ha.commands import Refused
from ..ha.connection import Session
from .commands import (
    AddObject,
    DeleteObject,
    ListObjects,
    Ping,
    Promote,
    Query,
    Replicate,
    VhostAdd,
    VhostDelete,
    VhostList,
)
from .objects import addObject, deleteObject, listObjects
# Users and permissions managed at run time (issue 13).
from ..amqp.accounts import AccountError, Accounts, parseTags
from .commands import (
    PermissionsClear,
    PermissionsList,
    PermissionsSet,
    UserAdd,
    UserDelete,
    UserList,
    UserPassword,
    UserTags,
)


class RoleView(Protocol):
    """
    What an admin reads of a broker's role.
    """

    @property
    def name(self) -> str:
        "The role's name."

    @property
    def servesClients(self) -> bool:
        "Whether objects may be added and deleted here (primary, standalone)."


class AdministeredNode(Protocol):
    """
    What the admin commands need of a broker (L{qha.ha.node.HANode}).
    """

    @property
    def vhost(self) -> VirtualHost:
        "The virtual host administered."

    @property
    def role(self) -> RoleView:
        "The broker's role."

    @property
    def replicateDefault(self) -> str:
        "C{--ha-replicate}."

    def describe(self) -> dict[str, Any]:
        "The broker's HA state."

    async def promote(self, force: bool) -> dict[str, Any]:
        "Become the primary."

    def replicateQueue(self, remote: str, queue: str) -> None:
        "Replicate C{queue} of C{remote} here."

    def applyPending(self) -> None:
        "Apply what a backup acknowledged and did not apply yet."


class AdminLocator(amp.CommandLocator):
    """
    The admin commands on one AMP connection, answered once the
    connection's session logged in as an identity that may administer.
    """

    log = Logger()

    def __init__(self, node: AdministeredNode, session: Session) -> None:
        """
        @param node: the broker.
        @param session: the connection's authentication, shared with
            replication.
        """
        super().__init__()
        self.node = node
        self.session = session

    @Ping.responder
    def ping(self) -> dict[str, Any]:
        """
        The broker's role.
        """
        self.session.check(ADMIN)
        return {"role": self.node.role.name}

    @Query.responder
    def query(self) -> dict[str, Any]:
        """
        The broker's HA state, as JSON.
        """
        self.session.check(ADMIN)
        return {"state": json.dumps(self.node.describe())}

    @Promote.responder
    def promote(self, force: bool) -> Deferred[dict[str, Any]]:
        """
        Make the broker the primary.
        """
        self.session.check(ADMIN)
        self._logAction("promote", "force" if force else "")
        return ensureDeferred(self.node.promote(force))

    @Replicate.responder
    def replicate(self, remote: str, queue: str) -> dict[str, Any]:
        """
        Replicate a remote queue here.
        """
        self.session.check(ADMIN)
        self._logAction("replicate", f"queue {queue!r} of {remote}")
        self.node.replicateQueue(remote, queue)
        return {}

    @ListObjects.responder
    def listObjects(self, kind: str) -> dict[str, Any]:
        """
        Queues, exchanges or bindings, as JSON.
        """
        self.session.check(ADMIN)
        self.node.applyPending()
        objects = listObjects(self.node.vhost, kind, self.node.replicateDefault)
        return {"objects": json.dumps(objects).encode("utf-8")}

    @AddObject.responder
    def addObject(self, kind: str, description: str) -> dict[str, Any]:
        """
        Declare a queue or an exchange, on the primary (or a standalone
        broker).
        """
        self.session.check(ADMIN)
        self._mayChange("add queues and exchanges")
        parsed = json.loads(description)
        name = parsed.get("name") if isinstance(parsed, dict) else None
        self._logAction("add", f"{kind} {name!r}")
        addObject(self.node.vhost, kind, parsed)
        return {}

    @DeleteObject.responder
    def deleteObject(self, kind: str, name: str) -> dict[str, Any]:
        """
        Delete a queue or an exchange, on the primary (or a standalone
        broker).
        """
        self.session.check(ADMIN)
        self._mayChange("delete queues and exchanges")
        self._logAction("del", f"{kind} {name!r}")
        deleteObject(self.node.vhost, kind, name)
        return {}

    @VhostList.responder
    def vhostList(self) -> dict[str, Any]:
        """
        The virtual hosts, each with its queue, exchange and message counts,
        as JSON.
        """
        self.session.check(ADMIN)
        self.node.applyPending()
        vhosts = [
            {
                "name": vhost.name,
                "queues": len(vhost.queues),
                "exchanges": len(vhost.exchanges),
                "messages": sum(queue.messageCount for queue in vhost.queues.values()),
            }
            for vhost in sorted(VirtualHosts.of(self.node.vhost), key=lambda v: v.name)
        ]
        return {"vhosts": json.dumps(vhosts).encode("utf-8")}

    @VhostAdd.responder
    def vhostAdd(self, name: str) -> dict[str, Any]:
        """
        Add a virtual host, on the primary (or a standalone broker): the
        backups and the store hear of it through the event stream.
        """
        self.session.check(ADMIN)
        self._mayChange("add vhosts")
        self._logAction("vhost add", repr(name))
        try:
            VirtualHosts.of(self.node.vhost).add(name)
        except AMQPError as error:
            raise Refused(error.replyText) from None
        return {}

    @VhostDelete.responder
    def vhostDelete(self, name: str) -> dict[str, Any]:
        """
        Delete a virtual host with all in it, on the primary (or a
        standalone broker); its connections are closed.
        """
        self.session.check(ADMIN)
        self._mayChange("delete vhosts")
        self._logAction("vhost del", repr(name))
        try:
            VirtualHosts.of(self.node.vhost).delete(name)
        except AMQPError as error:
            raise Refused(error.replyText) from None
        return {}

    def _logAction(self, action: str, what: str) -> None:
        """
        Log an admin action that changes the broker, with who asked.
        """
        self.log.info(
            "admin {request} asked by {who}",
            request=f"{action} {what}" if what else action,
            action=action,
            what=what,
            who=self.session.who,
            identity=self.session.identity.name if self.session.identity else None,
            peer=self.session.peer,
        )

    def _mayChange(self, what: str) -> None:
        """
        @raise Refused: on a backup, saying where to C{what}.
        """
        role = self.node.role
        if not role.servesClients:
            raise Refused(f"this broker is {role.name}: {what} on the primary")

    # Users and permissions managed at run time (issue 13): the changes are
    # made on the primary, kept by its store and sent to the backups as
    # events (see qha.amqp.accounts).

    def _accounts(self) -> Accounts:
        """
        The broker's run-time users and permissions.
        """
        return Accounts.of(VirtualHosts.of(self.node.vhost))

    def _changeAccounts(self, what: str, action: str, detail: str, change: Any) -> dict[str, Any]:
        """
        Make a run-time change of users or permissions, on the primary (or
        a standalone broker), logged with who asked.

        @param what: what is refused on a backup ("add users").
        @param action: the action for the log ("user add").
        @param detail: what it is about, for the log (never a password).
        @param change: makes the change; raises L{AccountError} to refuse.
        @raise Refused: on a backup, or saying why the change is refused.
        """
        self.session.check(ADMIN)
        self._mayChange(what)
        try:
            change()
        except AccountError as error:
            self.log.info(
                "admin {request} asked by {who} refused: {error}",
                request=f"{action} {detail}",
                who=self.session.who,
                error=str(error),
            )
            raise Refused(str(error)) from None
        self._logAction(action, detail)
        return {}

    @UserList.responder
    def userList(self) -> dict[str, Any]:
        """
        The users with their tags, as JSON.
        """
        self.session.check(ADMIN)
        self.node.applyPending()
        accounts = self._accounts()
        database = accounts.database
        if database is not None:
            users = [{"name": name, "tags": sorted(database.tags(name))} for name in database.users()]
        else:
            users = [
                {"name": name, "tags": sorted(record.tags)}
                for name, record in sorted(accounts.users.items())
                if record is not None
            ]
        return {"users": json.dumps(users).encode("utf-8")}

    @UserAdd.responder
    def userAdd(self, name: str, hash: str, tags: str) -> dict[str, Any]:
        """
        Add a user with the scrypt hash of its password.
        """
        accounts = self._accounts()
        return self._changeAccounts(
            "add users", "user add", f"{name!r} tags {tags!r}",
            lambda: accounts.addUser(name, hash, parseTags(tags)),
        )

    @UserDelete.responder
    def userDelete(self, name: str) -> dict[str, Any]:
        """
        Delete a user; its connections are closed.
        """
        accounts = self._accounts()
        return self._changeAccounts(
            "delete users", "user del", repr(name), lambda: accounts.deleteUser(name)
        )

    @UserPassword.responder
    def userPassword(self, name: str, hash: str) -> dict[str, Any]:
        """
        Change a user's password hash; its connections are closed.
        """
        accounts = self._accounts()
        return self._changeAccounts(
            "change passwords", "user passwd", repr(name),
            lambda: accounts.changePassword(name, hash),
        )

    @UserTags.responder
    def userTags(self, name: str, tags: str) -> dict[str, Any]:
        """
        Replace a user's tags.
        """
        accounts = self._accounts()
        return self._changeAccounts(
            "set tags", "user tags", f"{name!r} {tags!r}",
            lambda: accounts.setTags(name, parseTags(tags)),
        )

    @PermissionsList.responder
    def permissionsList(self, vhost: str) -> dict[str, Any]:
        """
        Every user's permissions in C{vhost}, as JSON.
        """
        self.session.check(ADMIN)
        self.node.applyPending()
        accounts = self._accounts()
        if vhost not in VirtualHosts.of(self.node.vhost):
            raise Refused(f"vhost '{vhost}' does not exist")
        database = accounts.database
        names = database.users() if database is not None else sorted(accounts.permissions)
        rows = []
        for name in names:
            granted = (
                database.permissions(name, vhost)
                if database is not None
                else accounts.permissions.get(name, {}).get(vhost)
            )
            if granted is not None:
                rows.append(
                    {
                        "user": name,
                        "vhost": vhost,
                        "configure": granted.configure,
                        "write": granted.write,
                        "read": granted.read,
                    }
                )
        return {"permissions": json.dumps(rows).encode("utf-8")}

    @PermissionsSet.responder
    def permissionsSet(
        self, user: str, vhost: str, configure: str, write: str, read: str
    ) -> dict[str, Any]:
        """
        Set a user's permissions in a virtual host.
        """
        accounts = self._accounts()
        return self._changeAccounts(
            "set permissions", "permissions set",
            f"{user!r} vhost {vhost!r} {configure!r} {write!r} {read!r}",
            lambda: accounts.setPermissions(user, vhost, configure, write, read),
        )

    @PermissionsClear.responder
    def permissionsClear(self, user: str, vhost: str) -> dict[str, Any]:
        """
        Clear a user's permissions in a virtual host; its connections there
        are closed.
        """
        accounts = self._accounts()
        return self._changeAccounts(
            "clear permissions", "permissions clear", f"{user!r} vhost {vhost!r}",
            lambda: accounts.clearPermissions(user, vhost),
        )


def adminLocator(node: AdministeredNode) -> Any:
    """
    The admin locator factory for C{node}'s connections (see
    L{qha.ha.connection.NodeAMPFactory}).
    """
    return lambda session: AdminLocator(node, session)


__all__ = ["AdminLocator", "AdministeredNode", "adminLocator"]
