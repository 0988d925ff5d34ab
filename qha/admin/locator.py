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

from ..amqp.protocol import AMQPServer
from ..amqp.users import UserDatabase
from ..amqp.accounts import AccountError, Accounts, parseTags
from ..broker.errors import AMQPError
from ..broker.vhost import VirtualHost
from ..broker.vhosts import DEFAULT_VHOST, VirtualHosts
from ..changes.settings import RuntimeSettings
from ..ha.auth import ADMIN
from ..ha.commands import Refused
from ..ha.config import HAOptions
from ..ha.connection import Session
from .commands import (
    AddObject,
    Bind,
    CloseConnection,
    DeleteObject,
    ExportDefinitions,
    ImportDefinitions,
    ListConnections,
    ListConsumers,
    ListObjects,
    PermissionsClear,
    PermissionsList,
    PermissionsSet,
    Ping,
    Promote,
    Purge,
    Query,
    Replicate,
    SetOptions,
    Unbind,
    UserAdd,
    UserDelete,
    UserList,
    UserPassword,
    UserTags,
    VhostAdd,
    VhostDelete,
    VhostList,
)
from .objects import (
    addObject,
    bind,
    checkText,
    closeConnection,
    connectionRows,
    consumerRows,
    deleteObject,
    exportDocument,
    findVhost,
    importDocument,
    listObjects,
    parseBindArguments,
    parseDocument,
    purgeQueue,
    setOptions,
    unbind,
)
from .settings import followSettings


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

    @property
    def options(self) -> HAOptions:
        "The cluster options (C{set} changes some at run time)."

    @property
    def brokerId(self) -> str:
        "The broker's identity."

    def describe(self) -> dict[str, Any]:
        "The broker's HA state."

    async def promote(self, force: bool) -> dict[str, Any]:
        "Become the primary."

    def replicateQueue(self, remote: str, queue: str) -> None:
        "Replicate C{queue} of C{remote} here."

    def applyPending(self) -> None:
        "Apply what a backup acknowledged and did not apply yet."


class Clients(Protocol):
    """
    What the admin commands need of the broker's AMQP side
    (L{qha.amqp.protocol.BrokerFactory}).
    """

    @property
    def connections(self) -> set[AMQPServer]:
        "The open client connections."

    @property
    def users(self) -> UserDatabase:
        "The users who may log in, for the definitions."


class AdminLocator(amp.CommandLocator):
    """
    The admin commands on one AMP connection, answered once the
    connection's session logged in as an identity that may administer.
    """

    log = Logger()

    def __init__(
        self, node: AdministeredNode, session: Session, clients: Clients | None = None
    ) -> None:
        """
        @param node: the broker.
        @param session: the connection's authentication, shared with
            replication.
        @param clients: the broker's AMQP side, for C{connections},
            C{consumers}, C{close-connection} and the users of
            C{definitions export}; L{None}: none (no client connections).
        """
        super().__init__()
        self.node = node
        self.session = session
        self.clients = clients

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
    def listObjects(self, kind: str, vhost: str | None = None) -> dict[str, Any]:
        """
        Queues, exchanges or bindings of a virtual host, as JSON.
        """
        self.session.check(ADMIN)
        self.node.applyPending()
        objects = listObjects(self._vhost(vhost), kind, self.node.replicateDefault)
        return {"objects": json.dumps(objects).encode("utf-8")}

    @AddObject.responder
    def addObject(self, kind: str, description: str, vhost: str | None = None) -> dict[str, Any]:
        """
        Declare a queue or an exchange, on the primary (or a standalone
        broker).
        """
        self.session.check(ADMIN)
        self._mayChange("add queues and exchanges")
        target = self._vhost(vhost)
        parsed = json.loads(description)
        name = parsed.get("name") if isinstance(parsed, dict) else None
        self._logAction("add", f"{kind} {name!r}{self._in(target)}")
        addObject(target, kind, parsed)
        return {}

    @DeleteObject.responder
    def deleteObject(self, kind: str, name: str, vhost: str | None = None) -> dict[str, Any]:
        """
        Delete a queue or an exchange, on the primary (or a standalone
        broker).
        """
        self.session.check(ADMIN)
        self._mayChange("delete queues and exchanges")
        target = self._vhost(vhost)
        self._logAction("del", f"{kind} {name!r}{self._in(target)}")
        deleteObject(target, kind, name)
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

    # Managing objects and clients: purge, bind, unbind, connections,
    # consumers, close-connection, definitions, set.

    def _vhost(self, name: str | None) -> VirtualHost:
        """
        The virtual host called C{name} (L{None}: C{/}).

        @raise Refused: C{NOT_FOUND - vhost 'x' not found}.
        """
        return findVhost(self.node.vhost, name)

    @staticmethod
    def _in(vhost: VirtualHost) -> str:
        """
        Where an action happens, for the log: nothing for C{/}.
        """
        return "" if vhost.name == DEFAULT_VHOST else f" in vhost {vhost.name!r}"

    def _connections(self) -> set[AMQPServer]:
        """
        The broker's client connections (none without an AMQP side).
        """
        return set() if self.clients is None else self.clients.connections

    @Purge.responder
    def purge(self, queue: str, vhost: str | None = None) -> dict[str, Any]:
        """
        Drop a queue's ready messages, on the primary (or a standalone
        broker), as C{queue.purge} does.
        """
        self.session.check(ADMIN)
        self._mayChange("purge queues")
        target = self._vhost(vhost)
        checkText("a queue name", queue)
        self._logAction("purge", f"queue {queue!r}{self._in(target)}")
        return {"messages": purgeQueue(target, queue)}

    def _binding(
        self,
        action: str,
        source: str,
        destination: str,
        destinationType: str,
        routingKey: str,
        arguments: str,
        vhost: str | None,
    ) -> tuple[VirtualHost, dict[str, Any]]:
        """
        The checks and the log line of C{bind} and C{unbind}.

        @return: the virtual host and the parsed arguments.
        """
        self.session.check(ADMIN)
        self._mayChange("add bindings" if action == "bind" else "remove bindings")
        target = self._vhost(vhost)
        parsed = parseBindArguments(arguments)
        checkText("an exchange name", source)
        checkText("a destination name", destination)
        checkText("a routing key", routingKey)
        self._logAction(
            action,
            f"{destinationType} {destination!r} to exchange {source!r} key {routingKey!r}"
            f"{self._in(target)}",
        )
        return target, parsed

    @Bind.responder
    def bind(
        self,
        source: str,
        destination: str,
        destinationType: str,
        routingKey: str,
        arguments: str,
        vhost: str | None = None,
    ) -> dict[str, Any]:
        """
        Bind a queue (or an exchange) to an exchange, on the primary, as
        C{queue.bind} does.
        """
        target, parsed = self._binding(
            "bind", source, destination, destinationType, routingKey, arguments, vhost
        )
        bind(target, source, destination, destinationType, routingKey, parsed)
        return {}

    @Unbind.responder
    def unbind(
        self,
        source: str,
        destination: str,
        destinationType: str,
        routingKey: str,
        arguments: str,
        vhost: str | None = None,
    ) -> dict[str, Any]:
        """
        Remove a binding, on the primary, as C{queue.unbind} does.
        """
        target, parsed = self._binding(
            "unbind", source, destination, destinationType, routingKey, arguments, vhost
        )
        unbind(target, source, destination, destinationType, routingKey, parsed)
        return {}

    @ListConnections.responder
    def listConnections(self, vhost: str | None = None) -> dict[str, Any]:
        """
        The client connections (of one virtual host, or all), as JSON.
        """
        self.session.check(ADMIN)
        target = None if vhost is None else self._vhost(vhost)
        rows = connectionRows(self._connections(), f"qha@{self.node.brokerId}", target)
        return {"connections": json.dumps(rows).encode("utf-8")}

    @ListConsumers.responder
    def listConsumers(self, vhost: str | None = None) -> dict[str, Any]:
        """
        The consumers of a virtual host's queues, as JSON.
        """
        self.session.check(ADMIN)
        rows = consumerRows(self._connections(), self._vhost(vhost))
        return {"consumers": json.dumps(rows).encode("utf-8")}

    @CloseConnection.responder
    def closeConnection(self, name: str, reason: str) -> dict[str, Any]:
        """
        Close a client connection with 320 CONNECTION_FORCED and C{reason}.
        """
        self.session.check(ADMIN)
        checkText("a reason", reason)
        self._logAction("close-connection", f"{name!r} ({reason})")
        closeConnection(self._connections(), name, reason)
        return {}

    @ExportDefinitions.responder
    def exportDefinitions(self, vhost: str | None = None) -> dict[str, Any]:
        """
        RabbitMQ's definitions document of one virtual host or all (any
        role: a backup exports what it holds).
        """
        self.session.check(ADMIN)
        self.node.applyPending()
        users = None if self.clients is None else self.clients.users
        document = exportDocument(self.node.vhost, vhost, users)
        return {"definitions": json.dumps(document).encode("utf-8")}

    @ImportDefinitions.responder
    def importDefinitions(self, definitions: bytes, vhost: str | None = None) -> dict[str, Any]:
        """
        Declare what a definitions document holds, on the primary (or a
        standalone broker): replicated and stored like any declaration.
        """
        self.session.check(ADMIN)
        self._mayChange("import definitions")
        if vhost is not None:
            self._vhost(vhost)
        document = parseDocument(definitions)
        self._logAction(
            "definitions import",
            f"of {len(definitions)} bytes" + ("" if vhost is None else f" into vhost {vhost!r}"),
        )
        counts = importDocument(self.node.vhost, document, vhost)
        return {"imported": json.dumps(counts)}

    @SetOptions.responder
    def setOptions(
        self,
        backupTimeout: float | None = None,
        publicBrokers: str | None = None,
        brokers: str | None = None,
        replicate: str | None = None,
        reset: bool | None = False,
    ) -> dict[str, Any]:
        """
        Change options at run time (Qpid's C{qpid-ha set}), in any role.
        The values are recorded (L{qha.changes.settings}): the store keeps
        them, so they win over the configured ones after a restart, and a
        primary's go to its backups, which use them once promoted. A
        backup's own C{set} holds until the primary's settings next reach
        it (the primary sets some, or the backup catches up again).
        """
        self.session.check(ADMIN)
        asked = {
            name: value
            for name, value in (
                ("reset", True if reset else None),
                ("backup-timeout", backupTimeout),
                ("public-url", publicBrokers),
                ("brokers-url", brokers),
                ("replicate", replicate),
            )
            if value is not None
        }
        vhosts = VirtualHosts.of(self.node.vhost)
        settings = setOptions(
            RuntimeSettings.of(vhosts),
            followSettings(self.node.options, self.node.vhost),
            backupTimeout,
            publicBrokers,
            brokers,
            replicate,
            reset=bool(reset),
        )
        if asked:
            self._logAction(
                "set",
                " ".join(f"--{k}" if v is True else f"--{k} {v}" for k, v in asked.items()),
            )
        return {"settings": json.dumps(settings)}

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

def adminLocator(node: AdministeredNode, clients: Clients | None = None) -> Any:
    """
    The admin locator factory for C{node}'s connections (see
    L{qha.ha.connection.NodeAMPFactory}).

    @param clients: the broker's AMQP side (its connections and users).
    """
    return lambda session: AdminLocator(node, session, clients)


__all__ = ["AdminLocator", "AdministeredNode", "Clients", "adminLocator"]
