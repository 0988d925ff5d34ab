"""
The C{qha-admin} commands that manage a broker's objects and clients, as
C{rabbitmqctl} and C{rabbitmqadmin} do, and Qpid's C{qpid-ha set}:

    qha-admin purge QUEUE [--vhost V]
    qha-admin bind SOURCE DESTINATION [--key K] [--argument K=V]... [--vhost V]
    qha-admin unbind SOURCE DESTINATION [--key K] [--argument K=V]... [--vhost V]
    qha-admin connections [--vhost V]
    qha-admin consumers [--vhost V]
    qha-admin close-connection NAME [--reason TEXT]
    qha-admin definitions export [FILE] [--vhost V]
    qha-admin definitions import FILE [--vhost V]
    qha-admin set [--reset] [--backup-timeout S] [--public-url URL] [--brokers-url URL] [--replicate LEVEL]

Changes go to the primary (or a standalone broker), which makes them the
way AMQP clients do, so the backups and the store see them; backups refuse
them. L{qha.admin.cli} registers these commands (L{addCommands},
L{COMMANDS}) next to its own.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from typing import TYPE_CHECKING, Any, Callable, Coroutine, Sequence

from ..broker.vhost import REPLICATE_LEVELS
from ..broker.vhosts import DEFAULT_VHOST, MAX_VHOST_NAME
from .commands import (
    Bind,
    CloseConnection,
    ExportDefinitions,
    ImportDefinitions,
    ListConnections,
    ListConsumers,
    Purge,
    SetOptions,
    Unbind,
)
from .objects import MAX_DEFINITIONS_BYTES, MAX_NAME
from .output import AdminError, formatTable

if TYPE_CHECKING:
    from .cli import Session

__all__ = [
    "COMMANDS",
    "DEFAULT_REASON",
    "addCommands",
    "formatConnections",
    "formatConsumers",
    "formatSettings",
    "objectArgument",
    "vhostOption",
]

DEFAULT_REASON = "Closed via qha-admin"
"""
The reason C{close-connection} gives the client when none is given.
"""

Command = Callable[["Session"], Coroutine[Any, Any, int]]


# Command line


def objectArgument(text: str) -> tuple[str, Any]:
    """
    An argparse type for C{--argument K=V}: a value that looks like an
    integer becomes one; anything else stays a string.

    @return: the key and the value.
    """
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    try:
        return key, int(value)
    except ValueError:
        return key, value


def _shortString(what: str) -> Callable[[str], str]:
    """
    An argparse type for a name of at most L{MAX_NAME} bytes (an AMQP
    short string).
    """

    def check(text: str) -> str:
        """
        C{text}, if it fits.
        """
        if len(text.encode("utf-8", "surrogatepass")) > MAX_NAME:
            raise argparse.ArgumentTypeError(f"{what} has at most {MAX_NAME} bytes")
        return text

    return check


def _vhostName(text: str) -> str:
    """
    An argparse type for C{--vhost}: a name of 1 to 255 bytes.
    """
    if not text:
        raise argparse.ArgumentTypeError("a vhost name cannot be empty (the default one is /)")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_VHOST_NAME:
        raise argparse.ArgumentTypeError(f"a vhost name has at most {MAX_VHOST_NAME} bytes")
    return text


def _timeout(text: str) -> float:
    """
    An argparse type for C{set --backup-timeout}: seconds, 0 or more.
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 seconds or more, not {text!r}")
    return value


def vhostOption(parser: argparse.ArgumentParser, default: str | None = DEFAULT_VHOST) -> None:
    """
    Add C{--vhost V} to a command's parser.

    @param default: the virtual host when the option is not given;
        L{None} for every one.
    """
    parser.add_argument(
        "--vhost",
        "-p",
        type=_vhostName,
        default=default,
        metavar="V",
        help="the virtual host"
        + (f" (default {default})" if default is not None else " (default: every one)"),
    )


def addCommands(
    command: Callable[[str, str], argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    """
    Add the parsers of this module's commands.

    @param command: adds the parser of one command by name and help text
        (it takes the common options).
    @param common: the parser of the common options, for sub-commands.
    """
    purge = command("purge", "drop the ready messages of QUEUE (on the primary)")
    purge.add_argument("queue", metavar="QUEUE", type=_shortString("a queue name"))
    vhostOption(purge)

    for name, help in (
        ("bind", "bind queue DESTINATION to exchange SOURCE (on the primary)"),
        ("unbind", "remove the binding of queue DESTINATION to exchange SOURCE (on the primary)"),
    ):
        parser = command(name, help)
        parser.add_argument("source", metavar="SOURCE", type=_shortString("an exchange name"))
        parser.add_argument(
            "destination", metavar="DESTINATION", type=_shortString("a destination name")
        )
        parser.add_argument(
            "--key", default="", metavar="K", type=_shortString("a routing key"),
            help="the routing key (default: none)",
        )
        parser.add_argument(
            "--argument",
            type=objectArgument,
            action="append",
            default=[],
            metavar="K=V",
            help="a binding argument (repeatable; x-match=all for headers exchanges);"
            " integer-looking values become integers",
        )
        parser.add_argument(
            "--destination-type",
            dest="destination_type",
            choices=("queue", "exchange"),
            default="queue",
            help="DESTINATION is a queue (default) or an exchange",
        )
        vhostOption(parser)

    connections = command(
        "connections",
        "client connections: name, user, peer, vhost, channels, TLS, connected since",
    )
    vhostOption(connections, default=None)

    consumers = command(
        "consumers", "consumers: queue, tag, connection, ack mode, prefetch"
    )
    vhostOption(consumers)

    close = command(
        "close-connection",
        "close the client connection NAME (as connections lists it) with 320"
        " CONNECTION_FORCED",
    )
    close.add_argument("name", metavar="NAME")
    close.add_argument(
        "--reason",
        default=DEFAULT_REASON,
        type=_shortString("a reason"),
        metavar="TEXT",
        help=f"what the client is told (default {DEFAULT_REASON!r})",
    )

    definitions = command(
        "definitions",
        "export or import RabbitMQ's definitions (queues, exchanges, bindings)",
    )
    actions = definitions.add_subparsers(dest="action", metavar="ACTION", required=True)
    export = actions.add_parser(
        "export",
        help="definitions export [FILE]: write them to FILE (default: standard output)",
        parents=[common],
    )
    export.add_argument("file", metavar="FILE", nargs="?", default="-")
    vhostOption(export, default=None)
    load = actions.add_parser(
        "import",
        help="definitions import FILE: declare what FILE holds (- for standard input)",
        parents=[common],
    )
    load.add_argument("file", metavar="FILE")
    vhostOption(load, default=None)

    settings = command(
        "set",
        "change options at run time, as qpid-ha set, kept across restarts and failovers"
        " (no option: show them and where each came from)",
    )
    settings.add_argument(
        "--reset",
        action="store_true",
        help="forget the values set at run time (the configured ones come back), then set the others given",
    )
    settings.add_argument(
        "--backup-timeout",
        dest="backup_timeout",
        type=_timeout,
        metavar="S",
        help="seconds a promoted broker waits for its backups (--ha-backup-timeout)",
    )
    settings.add_argument(
        "--public-url",
        dest="public_url",
        metavar="URL",
        help="the client addresses shown as the public URL (--ha-public-brokers)",
    )
    settings.add_argument(
        "--brokers-url",
        dest="brokers_url",
        metavar="URL",
        help="--ha-brokers (refused: it is read at start)",
    )
    settings.add_argument(
        "--replicate",
        choices=REPLICATE_LEVELS,
        metavar="LEVEL",
        help="--ha-replicate: the default level of the queues and exchanges declared from now on (those declared before keep theirs)",
    )


# Output


def _since(milliseconds: int) -> str:
    """
    A time in milliseconds since the epoch, as UTC.
    """
    moment = datetime.datetime.fromtimestamp(milliseconds / 1000, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def formatConnections(connections: Sequence[dict[str, Any]]) -> str:
    """
    The C{connections} table, by name.
    """
    return formatTable(
        ["name", "user", "peer", "vhost", "channels", "tls", "connected since (UTC)"],
        [
            [
                c["name"],
                c["user"],
                f"{c['peer_host']}:{c['peer_port']}",
                c["vhost"],
                c["channels"],
                c["ssl"],
                _since(c["connected_at"]),
            ]
            for c in sorted(connections, key=lambda c: c["name"])
        ],
    )


def formatConsumers(consumers: Sequence[dict[str, Any]]) -> str:
    """
    The C{consumers} table, by queue and tag; the ack mode is C{manual}
    (the client acknowledges) or C{auto} (C{no-ack}); a prefetch of 0 has
    no limit.
    """
    return formatTable(
        ["queue", "tag", "connection", "channel", "ack mode", "prefetch"],
        [
            [
                c["queue"]["name"],
                c["consumer_tag"],
                c["channel_details"]["connection_name"],
                c["channel_details"]["number"],
                "manual" if c["ack_required"] else "auto",
                c["prefetch_count"],
            ]
            for c in sorted(consumers, key=lambda c: (c["queue"]["name"], c["consumer_tag"]))
        ],
    )


def formatSettings(settings: dict[str, Any]) -> str:
    """
    The settings C{set} shows, one per line, each with where it came from
    (C{run time}, with the configured value it overrides; C{config file},
    C{command line}, C{default}), when the broker says.
    """
    sources = settings.get("sources") or {}
    configured = settings.get("configured") or {}
    fields = [
        ("backup timeout", "backupTimeout", lambda v: f"{v:g} s"),
        ("public URL", "publicBrokers", lambda v: v or "-"),
        ("brokers URL", "brokers", lambda v: v or "-"),
        ("replicate default", "replicate", lambda v: v),
    ]
    width = max(len(name) for name, _, _ in fields)
    lines = []
    for name, key, show in fields:
        line = f"{name.ljust(width)}  {show(settings[key])}"
        source = sources.get(key)
        if source == "run time" and key in configured:
            line += f"  (set at run time; configured: {show(configured[key])})"
        elif source is not None:
            line += f"  ({source})"
        lines.append(line + "\n")
    return "".join(lines)


def _where(vhost: str | None) -> str:
    """
    Where a change happened, for its line: nothing for C{/}.
    """
    return "" if vhost in (None, DEFAULT_VHOST) else f" in vhost {vhost!r}"


# Commands: each takes the session and returns the exit status.


async def purge(session: Session) -> int:
    """
    C{purge QUEUE}: drop its ready messages; says how many.
    """
    arguments = session.arguments
    answer = await session.call(
        session.address, Purge, queue=arguments.queue, vhost=arguments.vhost
    )
    if arguments.json:
        session.writeJSON(
            {"broker": session.address, "vhost": arguments.vhost, "queue": arguments.queue,
             "purged": answer["messages"]}
        )
    else:
        count = answer["messages"]
        session.write(
            f"queue {arguments.queue!r}{_where(arguments.vhost)} purged:"
            f" {count} message{'' if count == 1 else 's'} dropped\n"
        )
    return 0


async def _binding(session: Session) -> int:
    """
    C{bind} or C{unbind} SOURCE DESTINATION.
    """
    arguments = session.arguments
    binding = arguments.command == "bind"
    await session.call(
        session.address,
        Bind if binding else Unbind,
        source=arguments.source,
        destination=arguments.destination,
        destinationType=arguments.destination_type,
        routingKey=arguments.key,
        arguments=json.dumps(dict(arguments.argument)),
        vhost=arguments.vhost,
    )
    if arguments.json:
        session.writeJSON(
            {"broker": session.address, "vhost": arguments.vhost, "source": arguments.source,
             "destination": arguments.destination,
             "destination_type": arguments.destination_type, "routing_key": arguments.key,
             "arguments": dict(arguments.argument), "bound" if binding else "unbound": True}
        )
    else:
        session.write(
            f"{arguments.destination_type} {arguments.destination!r}"
            f" {'bound to' if binding else 'unbound from'} exchange {arguments.source!r}"
            f" with key {arguments.key!r}{_where(arguments.vhost)}\n"
        )
    return 0


async def connections(session: Session) -> int:
    """
    C{connections}: the client connections (of C{--vhost}, or all).
    """
    arguments = session.arguments
    kwargs = {} if arguments.vhost is None else {"vhost": arguments.vhost}
    answer = await session.call(session.address, ListConnections, **kwargs)
    rows = json.loads(answer["connections"])
    if arguments.json:
        session.writeJSON(rows)
    else:
        session.write(formatConnections(rows))
    return 0


async def consumers(session: Session) -> int:
    """
    C{consumers}: the consumers of C{--vhost}'s queues.
    """
    arguments = session.arguments
    answer = await session.call(session.address, ListConsumers, vhost=arguments.vhost)
    rows = json.loads(answer["consumers"])
    if arguments.json:
        session.writeJSON(rows)
    else:
        session.write(formatConsumers(rows))
    return 0


async def closeConnection(session: Session) -> int:
    """
    C{close-connection NAME}: close it with 320 CONNECTION_FORCED.
    """
    arguments = session.arguments
    await session.call(
        session.address, CloseConnection, name=arguments.name, reason=arguments.reason
    )
    if arguments.json:
        session.writeJSON(
            {"broker": session.address, "connection": arguments.name, "closed": True,
             "reason": arguments.reason}
        )
    else:
        session.write(f"connection {arguments.name!r} closed: {arguments.reason}\n")
    return 0


def _counts(counts: dict[str, int]) -> str:
    """
    How many of each, in words.
    """
    return ", ".join(
        f"{counts.get(kind, 0)} {kind if counts.get(kind, 0) != 1 else kind[:-1]}"
        for kind in ("exchanges", "queues", "bindings")
    )


async def definitions(session: Session) -> int:
    """
    C{definitions export [FILE]} or C{definitions import FILE}.
    """
    arguments = session.arguments
    kwargs = {} if arguments.vhost is None else {"vhost": arguments.vhost}
    if arguments.action == "export":
        answer = await session.call(session.address, ExportDefinitions, **kwargs)
        document = json.loads(answer["definitions"])
        text = json.dumps(document, indent=2, sort_keys=True) + "\n"
        if arguments.file == "-":
            session.write(text)
            return 0
        try:
            with open(arguments.file, "w", encoding="utf-8") as file:
                file.write(text)
        except OSError as error:
            raise AdminError(f"cannot write {arguments.file}: {error.strerror}") from None
        counts = {kind: len(document.get(kind) or []) for kind in ("exchanges", "queues", "bindings")}
        if arguments.json:
            session.writeJSON({"broker": session.address, "file": arguments.file, **counts})
        else:
            session.write(f"definitions of {session.address} written to {arguments.file}: {_counts(counts)}\n")
        return 0
    data = _readDefinitions(arguments.file)
    answer = await session.call(session.address, ImportDefinitions, definitions=data, **kwargs)
    imported = json.loads(answer["imported"])
    if arguments.json:
        session.writeJSON({"broker": session.address, "file": arguments.file, **imported})
    else:
        added = imported.get("vhosts", 0)
        session.write(
            f"definitions of {arguments.file} imported into {session.address}"
            f"{_where(arguments.vhost)}: {_counts(imported)}"
            + (f" ({added} vhost{'' if added == 1 else 's'} added)" if added else "")
            + "\n"
        )
    return 0


def _readDefinitions(path: str) -> bytes:
    """
    The definitions file C{path} (C{-}: standard input), at most
    L{MAX_DEFINITIONS_BYTES}, and JSON.

    @raise AdminError: saying what is wrong.
    """
    try:
        if path == "-":
            data = sys.stdin.buffer.read(MAX_DEFINITIONS_BYTES + 1)
        else:
            with open(path, "rb") as file:
                data = file.read(MAX_DEFINITIONS_BYTES + 1)
    except OSError as error:
        raise AdminError(f"cannot read {path}: {error.strerror}") from None
    if len(data) > MAX_DEFINITIONS_BYTES:
        raise AdminError(
            f"{path} has more than {MAX_DEFINITIONS_BYTES} bytes: import it in parts"
        )
    try:
        json.loads(data)
    except (ValueError, RecursionError) as error:
        raise AdminError(f"{path} is not JSON: {error}") from None
    return data


async def setOptions(session: Session) -> int:
    """
    C{set}: change what can change at run time and print the settings
    (with no option: only print them).
    """
    arguments = session.arguments
    kwargs = {
        key: value
        for key, value in (
            ("backupTimeout", arguments.backup_timeout),
            ("publicBrokers", arguments.public_url),
            ("brokers", arguments.brokers_url),
            ("replicate", arguments.replicate),
        )
        if value is not None
    }
    if arguments.reset:
        kwargs["reset"] = True
    answer = await session.call(session.address, SetOptions, **kwargs)
    settings = json.loads(answer["settings"])
    if arguments.json:
        session.writeJSON({"broker": session.address, **settings})
    else:
        session.write(formatSettings(settings))
    return 0


COMMANDS: dict[str, Command] = {
    "purge": purge,
    "bind": _binding,
    "unbind": _binding,
    "connections": connections,
    "consumers": consumers,
    "close-connection": closeConnection,
    "definitions": definitions,
    "set": setOptions,
}
"""
This module's commands, by name.
"""
