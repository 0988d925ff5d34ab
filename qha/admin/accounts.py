"""
C{qha-admin user ...} and C{qha-admin permissions ...}: users and
permissions managed at run time, as C{rabbitmqctl add_user},
C{delete_user}, C{change_password}, C{set_user_tags}, C{list_users},
C{set_permissions}, C{clear_permissions} and C{list_permissions} manage
RabbitMQ's::

    qha-admin user add NAME [--password-file F] [--tags a,b]
    qha-admin user del NAME
    qha-admin user passwd NAME [--password-file F]
    qha-admin user tags NAME [TAG ...]
    qha-admin user list
    qha-admin permissions set [--vhost V] USER CONF WRITE READ
    qha-admin permissions clear [--vhost V] USER
    qha-admin permissions list [--vhost V]

A new password is read from the first line of C{--password-file}, else
from C{$QHA_PASSWORD}, else asked for twice on the terminal. It is hashed
here (scrypt, as C{qha-users} writes a users file) and only the hash is
sent: the password never leaves this process.

The broker (the primary, or a standalone one) checks every change again and
refuses with the reason (user exists, no such user, no such vhost, a
pattern that is not a regular expression): one line on standard error and
exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
from getpass import getpass
from typing import Any, Callable, Mapping

from ..amqp.accounts import AccountError, checkPattern, checkUserName, parseTags
from ..amqp.users import hashPassword
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

__all__ = ["addParsers", "permissions", "user"]

PASSWORD_VARIABLE = "QHA_PASSWORD"
"""
The environment variable that may hold a new user's password.
"""

DEFAULT_VHOST = "/"


class _Failed(Exception):
    """
    The command cannot go on; C{str()} says why.
    """


def addParsers(
    command: Callable[[str, str], argparse.ArgumentParser],
    commonOptions: Callable[[argparse.ArgumentParser], None],
) -> None:
    """
    Add the C{user} and C{permissions} commands to C{qha-admin}'s parser.

    @param command: adds one command's parser (with the common options).
    @param commonOptions: adds the options every command takes after it
        to a parser (their own copies, not a shared parent's, so that an
        action's own option of the same name can take their place).
    """

    def action(actions: Any, name: str, help: str) -> argparse.ArgumentParser:
        """
        One action's parser; its own C{--vhost} and C{--password-file}
        take the place of any common option of that name.
        """
        parser: argparse.ArgumentParser = actions.add_parser(
            name, help=help, description=help, conflict_handler="resolve"
        )
        commonOptions(parser)
        return parser

    def newPassword(parser: argparse.ArgumentParser) -> None:
        """
        The options that give a new password.
        """
        parser.add_argument(
            "--password-file",
            dest="new_password_file",
            metavar="FILE",
            help=f"read the new password from the first line of FILE (else ${PASSWORD_VARIABLE},"
            " else it is asked for twice)",
        )

    user = command("user", "add, delete, list users, change their passwords and tags")
    users = user.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = action(users, "add", "user add NAME: add a user (with no permissions)")
    add.add_argument("name", metavar="NAME")
    newPassword(add)
    add.add_argument("--tags", default="", metavar="TAGS", help="its tags, comma-separated")
    action(users, "del", "user del NAME: delete a user and close its connections").add_argument(
        "name", metavar="NAME"
    )
    passwd = action(
        users, "passwd", "user passwd NAME: change a user's password and close its connections"
    )
    passwd.add_argument("name", metavar="NAME")
    newPassword(passwd)
    tags = action(users, "tags", "user tags NAME [TAG ...]: replace a user's tags (none: clear)")
    tags.add_argument("name", metavar="NAME")
    tags.add_argument("tags", nargs="*", metavar="TAG")
    action(users, "list", "the users and their tags")

    granted = command("permissions", "set, clear or list users' permissions in a vhost")
    actions = granted.add_subparsers(dest="action", metavar="ACTION", required=True)

    def vhostOption(parser: argparse.ArgumentParser) -> None:
        """
        C{--vhost V}, C{/} by default.
        """
        parser.add_argument(
            "--vhost", "-p", default=DEFAULT_VHOST, metavar="VHOST",
            help=f"the virtual host (default {DEFAULT_VHOST})",
        )

    setParser = action(
        actions, "set", "permissions set USER CONF WRITE READ: a user's three regular expressions"
    )
    vhostOption(setParser)
    for name in ("user", "configure", "write", "read"):
        setParser.add_argument(name, metavar=name.upper())
    clear = action(
        actions, "clear", "permissions clear USER: remove a user's permissions (closes its"
        " connections to the vhost)"
    )
    vhostOption(clear)
    clear.add_argument("user", metavar="USER")
    vhostOption(action(actions, "list", "every user's permissions in the vhost"))


def readNewPassword(
    arguments: argparse.Namespace,
    environ: Mapping[str, str] = os.environ,
    ask: Callable[[str], str] = getpass,
) -> str:
    """
    The new password: the first line of C{--password-file}, else
    C{$QHA_PASSWORD}, else typed twice.

    @raise _Failed: if there is none, it cannot be read, or the two differ.
    """
    path = getattr(arguments, "new_password_file", None)
    if path is not None:
        try:
            with open(path, encoding="utf-8") as file:
                password = file.readline().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as error:
            raise _Failed(f"cannot read --password-file {path}: {error}") from None
    elif PASSWORD_VARIABLE in environ:
        password = environ[PASSWORD_VARIABLE]
    else:
        try:
            password = ask(f"Password for {arguments.name!r}: ")
            if ask("Password again: ") != password:
                raise _Failed("the passwords do not match")
        except EOFError:
            raise _Failed("no password given") from None
    if not password:
        raise _Failed("the password is empty")
    if "\0" in password:
        raise _Failed("the password may not contain NUL characters")
    return password


def _checked(check: Callable[[], Any]) -> Any:
    """
    Run a local check of what is sent, so that a bad value fails before
    any connection.

    @raise _Failed: saying what is wrong.
    """
    try:
        return check()
    except AccountError as error:
        raise _Failed(str(error)) from None


async def user(session: Any) -> int:
    """
    C{user add|del|passwd|tags|list}.
    """
    arguments = session.arguments
    try:
        return await _user(session, arguments)
    except _Failed as error:
        session.complain(f"user {arguments.action}: {error}")
        return 1


async def _user(session: Any, arguments: argparse.Namespace) -> int:
    """
    C{user ...}, refusals raised as L{_Failed}.
    """
    if arguments.action == "list":
        answer = await session.call(session.address, UserList)
        users = json.loads(answer["users"])
        if arguments.json:
            session.writeJSON(users)
        else:
            session.write(formatUsers(users))
        return 0
    name = _checked(lambda: checkUserName(arguments.name))
    if arguments.action == "add":
        tags = _checked(lambda: parseTags(arguments.tags))
        passwordHash = hashPassword(readNewPassword(arguments))
        await session.call(
            session.address, UserAdd, name=name, hash=passwordHash, tags=",".join(sorted(tags))
        )
        done = f"user {name!r} added"
    elif arguments.action == "del":
        await session.call(session.address, UserDelete, name=name)
        done = f"user {name!r} deleted"
    elif arguments.action == "passwd":
        passwordHash = hashPassword(readNewPassword(arguments))
        await session.call(session.address, UserPassword, name=name, hash=passwordHash)
        done = f"password of user {name!r} changed"
    else:
        tags = _checked(lambda: parseTags(",".join(arguments.tags)))
        await session.call(session.address, UserTags, name=name, tags=",".join(sorted(tags)))
        done = f"tags of user {name!r} set to [{', '.join(sorted(tags))}]"
    if arguments.json:
        session.writeJSON({"broker": session.address, "user": name, "done": arguments.action})
    else:
        session.write(done + "\n")
    return 0


async def permissions(session: Any) -> int:
    """
    C{permissions set|clear|list}.
    """
    arguments = session.arguments
    try:
        return await _permissions(session, arguments)
    except _Failed as error:
        session.complain(f"permissions {arguments.action}: {error}")
        return 1


async def _permissions(session: Any, arguments: argparse.Namespace) -> int:
    """
    C{permissions ...}, refusals raised as L{_Failed}.
    """
    vhost = arguments.vhost
    if arguments.action == "list":
        answer = await session.call(session.address, PermissionsList, vhost=vhost)
        rows = json.loads(answer["permissions"])
        if arguments.json:
            session.writeJSON(rows)
        else:
            session.write(formatPermissions(rows))
        return 0
    name = _checked(lambda: checkUserName(arguments.user))
    if arguments.action == "set":
        for what in ("configure", "write", "read"):
            _checked(lambda: checkPattern(getattr(arguments, what), what))
        await session.call(
            session.address,
            PermissionsSet,
            user=name,
            vhost=vhost,
            configure=arguments.configure,
            write=arguments.write,
            read=arguments.read,
        )
        done = f"permissions of user {name!r} in vhost {vhost!r} set"
    else:
        await session.call(session.address, PermissionsClear, user=name, vhost=vhost)
        done = f"permissions of user {name!r} in vhost {vhost!r} cleared"
    if arguments.json:
        session.writeJSON(
            {"broker": session.address, "user": name, "vhost": vhost, "done": arguments.action}
        )
    else:
        session.write(done + "\n")
    return 0


def _table(header: list[str], rows: list[list[str]]) -> str:
    """
    Columns padded to their widest cell.
    """
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    return "".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() + "\n"
        for row in [header, *rows]
    )


def formatUsers(users: list[dict[str, Any]]) -> str:
    """
    The C{user list} table (as C{rabbitmqctl list_users}).
    """
    return _table(
        ["user", "tags"], [[u["name"], "[" + ", ".join(u["tags"]) + "]"] for u in users]
    )


def formatPermissions(rows: list[dict[str, Any]]) -> str:
    """
    The C{permissions list} table (as C{rabbitmqctl list_permissions}); an
    empty pattern (nothing) shows as C{''}.
    """
    return _table(
        ["user", "configure", "write", "read"],
        [[r["user"]] + [r[k] or "''" for k in ("configure", "write", "read")] for r in rows],
    )
