"""
The C{qha-admin} command line: look at and steer a qha broker over its AMP
port (C{--ha-port}).

    qha-admin -b HOST:PORT [--json] [--timeout S] [--secret-file FILE] COMMAND
    qha-admin -b HOST:PORT [--username U --password-file FILE] COMMAND

It logs in (see L{qha.ha.auth}) with the cluster secret of C{--secret-file},
of C{$QHA_SECRET_FILE}, or of C{./qha-data/cluster-secret} if that exists
(the default data directory of a broker started in the same directory), or
with C{--username} and a password (C{--password}, C{--password-file} or
C{$QHA_PASSWORD}): the broker's C{--ha-username}. It checks that the broker
proves it holds the same secret before it sends any command.

It asks one broker (or, with C{--all}, every broker of its cluster), prints
a human-readable answer (a table, or JSON with C{--json}) and exits with 0
when all went well, 1 when the broker refused or could not be reached or
answered too late (one line on standard error says why), and 2 for a bad
command line. C{store-info} alone talks to no broker: it reads the stores
in brokers' data directories, to tell which is newest after a total
shutdown.

The command functions (L{COMMANDS}) take a L{Session}, which connects
through a L{Connector}: C{main} gives it TCP, tests give it in-memory AMP
connections. The whole command is bounded by C{--timeout}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Awaitable, Callable, Coroutine, Mapping, NoReturn, Sequence, TextIO

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    TimeoutError as DeferredTimeoutError,
    ensureDeferred,
)
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.error import (
    ConnectError,
    ConnectionClosed,
    ConnectionRefusedError,
    DNSLookupError,
    TCPTimedOutError,
    TimeoutError as ConnectTimeoutError,
)
from twisted.internet.interfaces import IReactorTime
from twisted.protocols import amp

from ..broker.vhost import REPLICATE_LEVELS
from . import accounts
from ..datadir import SECRET_NAME, SecretFileError, readSecret
from ..ha.auth import Credentials, UnprovenPeer, callerOf, logIn
from ..ha.commands import NotAuthenticated, NotPrimary, StaleEpoch
from ..ha.config import parseBrokers
from ..ha.coordinator import LeaderInfo, clusterPrefix
from ..ha.etcd import EtcdClient, EtcdError, EtcdUnavailable, IEtcd, parseCoordinator
from ..ha.role import ACTIVE, CATCHUP, JOINING, PRIMARY_ROLES, READY, RECOVERING, STANDALONE
from ..store.journal import StoreCorrupt, storeInfo as readStoreInfo
from ..tls import MutualTLS, describeFailure, isTLSFailure, withTLS
from .manage import COMMANDS as MANAGE_COMMANDS, addCommands, objectArgument as _objectArgument, vhostOption
from .output import AdminError, cell as _cell, formatTable
from .commands import (
    AddObject,
    DeleteObject,
    ListObjects,
    Ping,
    Promote,
    Query,
    Refused,
    Replicate,
    VhostAdd,
    VhostDelete,
    VhostList,
)

__all__ = [
    "AdminError",
    "COMMANDS",
    "Connector",
    "Session",
    "buildParser",
    "formatBindings",
    "formatExchanges",
    "formatQuery",
    "formatQueues",
    "formatStore",
    "formatTable",
    "main",
    "parseArguments",
    "run",
    "tcpConnector",
    "useDefaultSecret",
]

PROGRAM = "qha-admin"

ROLES = (STANDALONE, JOINING, CATCHUP, READY, RECOVERING, ACTIVE)
"""
Every role a broker can report, for C{status --expect}.
"""

DEFAULT_BROKER = "127.0.0.1:5673"
"""
The broker asked when C{-b} is not given: the default C{--ha-port}.
"""

SECRET_VARIABLE = "QHA_SECRET_FILE"
"""
The environment variable that may name the cluster secret's file.
"""

PASSWORD_VARIABLE = "QHA_PASSWORD"
"""
The environment variable that may hold the password for C{--username}.
"""

DEFAULT_SECRET_FILE = os.path.join("qha-data", SECRET_NAME)
"""
The secret file used when no other is named and it exists: that of a broker
started with the default C{--data-dir} in the current directory.
"""

DEFAULT_TIMEOUT = 10.0
"""
Seconds the whole command may take, unless C{--timeout} says otherwise.
"""

ALL_SHARE = 0.9
"""
With C{--all}, each broker may take this share of the time left, so that
one broker that does not answer is reported as such while the others'
answers are still printed.
"""

Connector = Callable[[str], Awaitable[amp.AMP]]
"""
Opens an AMP connection to a broker's C{host:port}.
"""

Command = Callable[["Session"], Coroutine[Any, Any, int]]
"""
A command: runs with a L{Session}, returns the exit status.
"""


# Command line


def _address(text: str) -> str:
    """
    An argparse type for C{HOST:PORT}.

    @return: the address, normalised (C{[::1]:5673} becomes C{::1:5673}).
    """
    try:
        addresses = parseBrokers(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not HOST:PORT (e.g. node1:5673)"
        ) from None
    if len(addresses) != 1:
        raise argparse.ArgumentTypeError(f"{text!r} names more than one broker")
    return addresses[0]


def _seconds(text: str) -> float:
    """
    An argparse type for C{--timeout}: a number of seconds above 0.
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, not {text!r}")
    return value


def _globalOptions(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """
    Add the options every command takes. They go before the command; the
    commands accept them after it too (C{qha-admin status --json}), where
    C{suppress} keeps an option that is not given from hiding one that was
    given before the command.
    """

    def default(value: Any) -> Any:
        """
        C{value}, or nothing at all after the command.
        """
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "-b",
        "--broker",
        type=_address,
        default=default(DEFAULT_BROKER),
        metavar="HOST:PORT",
        help=f"the broker's AMP address, its --ha-port (default {DEFAULT_BROKER})",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print JSON instead of tables",
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=default(DEFAULT_TIMEOUT),
        metavar="S",
        help=f"seconds the whole command may take (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--secret-file",
        dest="secret_file",
        default=default(None),
        metavar="FILE",
        help=f"log in with the cluster secret in FILE (a copy of the broker's"
        f" --ha-secret-file; default ${SECRET_VARIABLE}, else ./{DEFAULT_SECRET_FILE}"
        " if it exists)",
    )
    parser.add_argument(
        "--username",
        default=default(None),
        metavar="U",
        help="log in with the broker's --ha-username instead",
    )
    parser.add_argument(
        "--password",
        default=default(None),
        metavar="P",
        help=f"the password for --username (visible in ps: prefer --password-file or"
        f" ${PASSWORD_VARIABLE})",
    )
    parser.add_argument(
        "--password-file",
        dest="password_file",
        default=default(None),
        metavar="FILE",
        help="a file whose first line is the password for --username",
    )
    parser.add_argument(
        "--tls-ca",
        dest="tls_ca",
        default=default(None),
        metavar="FILE",
        help="connect over mutual TLS: the cluster's CA certificate (the brokers' --ha-tls-ca)",
    )
    parser.add_argument(
        "--tls-cert",
        dest="tls_cert",
        default=default(None),
        metavar="FILE",
        help="qha-admin's certificate (PEM) of that CA, for --tls-ca",
    )
    parser.add_argument(
        "--tls-key",
        dest="tls_key",
        default=default(None),
        metavar="FILE",
        help="the private key (PEM) of --tls-cert (default: in the --tls-cert file)",
    )
    parser.add_argument(
        "--tls-name",
        dest="tls_name",
        default=default(None),
        metavar="NAME",
        help="the name the broker's certificate must carry (default: the host of -b),"
        " as the brokers' --ha-tls-peer-name",
    )


def buildParser() -> argparse.ArgumentParser:
    """
    The parser for C{qha-admin}'s command line.
    """
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Look at and steer a qha broker over its AMP port (--ha-port).",
        epilog="Exit status: 0 ok, 1 refused or failed (the reason on standard"
        " error), 2 bad command line.",
    )
    _globalOptions(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _globalOptions(common, suppress=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        """
        Add the parser of one command, which takes the common options too.
        """
        return commands.add_parser(name, help=help, description=help, parents=[common])

    command("ping", "is the broker alive? (exit 0 when it answers)")

    status = command("status", "print the broker's role")
    checks = status.add_mutually_exclusive_group()
    checks.add_argument(
        "--expect",
        choices=ROLES,
        metavar="STATE",
        help=f"exit 1 unless the role is STATE ({', '.join(ROLES)})",
    )
    checks.add_argument(
        "--is-primary",
        action="store_true",
        help="exit 0 only if the broker is the primary (recovering or active)",
    )
    status.add_argument(
        "--all", action="store_true", help="ask every broker of the cluster, one line each"
    )

    primary = command(
        "primary",
        "print the current primary's AMQP address (host:port), from etcd with"
        " --coordinator, else from the cluster of the broker given with -b",
    )
    primary.add_argument(
        "--coordinator",
        metavar="URL",
        help="read the leader from etcd: etcd:http://HOST:PORT[,http://HOST:PORT...]",
    )
    primary.add_argument(
        "--cluster-name",
        default="qha",
        metavar="NAME",
        help="the cluster's --ha-cluster-name (default qha)",
    )

    query = command("query", "the broker's cluster state: role, epoch, brokers, backups")
    query.add_argument("--all", action="store_true", help="ask every broker of the cluster")

    promote = command("promote", "make the broker the primary (what a cluster manager does)")
    promote.add_argument(
        "--force",
        action="store_true",
        help="promote even when the rules say no (another primary, or a ready backup)",
    )

    replicate = command(
        "replicate", "make QUEUE on the broker a live replica of QUEUE on REMOTE"
    )
    replicate.add_argument(
        "remote",
        metavar="REMOTE",
        help="the other broker's AMP address HOST:PORT, or a cluster's HOST:PORT,HOST:PORT",
    )
    replicate.add_argument("queue", metavar="QUEUE")

    vhostOption(command("queues", "queues with their message, unacked and consumer counts"))
    vhostOption(command("exchanges", "exchanges with their binding counts"))
    vhostOption(command("bindings", "bindings of every exchange but the default one"))

    add = command("add", "declare a queue or an exchange")
    addKinds = add.add_subparsers(dest="kind", metavar="KIND", required=True)
    addQueue = addKinds.add_parser("queue", help="add queue NAME", parents=[common])
    addExchange = addKinds.add_parser(
        "exchange", help="add exchange TYPE NAME", parents=[common]
    )
    addExchange.add_argument("type", metavar="TYPE", help="direct, fanout, topic or headers")
    for sub in (addQueue, addExchange):
        sub.add_argument("name", metavar="NAME")
        vhostOption(sub)
        sub.add_argument(
            "--replicate",
            choices=REPLICATE_LEVELS,
            metavar="LEVEL",
            help=f"qpid.replicate: {', '.join(REPLICATE_LEVELS)}"
            " (default: the broker's --ha-replicate)",
        )
        sub.add_argument("--durable", action="store_true", help="survive a broker restart")
        sub.add_argument(
            "--auto-delete", action="store_true", help="deleted when its last user goes"
        )
        sub.add_argument(
            "--argument",
            type=_objectArgument,
            action="append",
            default=[],
            metavar="K=V",
            help="a declare argument (repeatable); integer-looking values become integers",
        )

    storeInfo = command(
        "store-info",
        "read brokers' stores with no broker running: where each stopped, what it"
        " holds, and which is newest (the one to promote after a total shutdown)",
    )
    storeInfo.add_argument(
        "--data-dir",
        dest="data_dirs",
        action="append",
        required=True,
        metavar="DIR",
        help="a broker's --data-dir (repeatable, one per broker)",
    )

    vhost = command("vhost", "add, delete or list virtual hosts")
    vhostActions = vhost.add_subparsers(dest="action", metavar="ACTION", required=True)
    vhostActions.add_parser(
        "add", help="vhost add NAME: add a virtual host", parents=[common]
    ).add_argument("name", metavar="NAME")
    vhostActions.add_parser(
        "del",
        help="vhost del NAME: delete a virtual host, its queues and exchanges,"
        " and close its connections",
        parents=[common],
    ).add_argument("name", metavar="NAME")
    vhostActions.add_parser("list", help="the virtual hosts and their counts", parents=[common])
    # qha-admin user ... and permissions ... (issue 13)
    accounts.addParsers(command, lambda parser: _globalOptions(parser, suppress=True))

    delete = command("del", "delete a queue or an exchange")
    deleteKinds = delete.add_subparsers(dest="kind", metavar="KIND", required=True)
    for kind in ("queue", "exchange"):
        deleteKind = deleteKinds.add_parser(kind, help=f"del {kind} NAME", parents=[common])
        deleteKind.add_argument("name", metavar="NAME")
        vhostOption(deleteKind)

    addCommands(command, common)
    return parser


def parseArguments(
    argv: Sequence[str], environ: Mapping[str, str] | None = None
) -> argparse.Namespace:
    """
    Parse C{qha-admin}'s arguments (without the program name).

    @param environ: where C{QHA_PASSWORD} and C{QHA_SECRET_FILE} are looked
        up; nowhere by default (C{main} gives C{os.environ}).
    @raise SystemExit: with status 2 and a message on standard error for a
        bad command line (argparse's way), or 0 after C{--help}.
    """
    environ = {} if environ is None else environ
    parser = buildParser()
    arguments = parser.parse_args(argv)
    if arguments.password is not None and arguments.password_file is not None:
        parser.error("give --password or --password-file, not both")
    if arguments.password_file is not None:
        try:
            with open(arguments.password_file, encoding="utf-8") as file:
                arguments.password = file.readline().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as error:
            parser.error(f"cannot read --password-file {arguments.password_file}: {error}")
    elif (
        arguments.username is not None
        and arguments.password is None
        and PASSWORD_VARIABLE in environ
    ):
        arguments.password = environ[PASSWORD_VARIABLE]
    if (arguments.username is None) != (arguments.password is None):
        parser.error(
            f"--username and --password go together (or --password-file, or"
            f" ${PASSWORD_VARIABLE})"
        )
    if arguments.username is not None and arguments.secret_file is not None:
        parser.error("give --secret-file or --username, not both")
    if arguments.username is None and arguments.secret_file is None:
        arguments.secret_file = environ.get(SECRET_VARIABLE) or None
    arguments.tls = None
    given = [n for n in ("tls_ca", "tls_cert", "tls_key", "tls_name") if getattr(arguments, n)]
    if given:
        if arguments.tls_ca is None or arguments.tls_cert is None:
            parser.error(
                f"--{given[0].replace('_', '-')} needs --tls-ca and --tls-cert (and --tls-key"
                " unless the key is in the --tls-cert file)"
            )
        try:
            arguments.tls = MutualTLS.fromFiles(
                arguments.tls_ca,
                arguments.tls_cert,
                arguments.tls_key,
                arguments.tls_name,
                options="--tls-ca/--tls-cert/--tls-key",
            )
        except ValueError as error:
            parser.error(str(error))
    if arguments.command == "status" and arguments.all and arguments.is_primary:
        parser.error("status --is-primary asks about one broker: leave out --all")
    if arguments.command == "replicate":
        try:
            arguments.remote = ",".join(parseBrokers(arguments.remote))
        except ValueError as error:
            parser.error(f"replicate: REMOTE: {error}")
    return arguments


# Output


def formatQueues(queues: Sequence[dict[str, Any]]) -> str:
    """
    The C{queues} table, like C{qpid-stat -q}, sorted by name.
    """
    return formatTable(
        ["queue", "messages", "unacked", "consumers", "durable", "auto-delete", "exclusive", "replicate"],
        [
            [
                q["name"],
                q["messages"],
                q["unacked"],
                q["consumers"],
                q["durable"],
                q["autoDelete"],
                q["exclusive"],
                q["replicate"],
            ]
            for q in sorted(queues, key=lambda q: q["name"])
        ],
    )


def formatExchanges(exchanges: Sequence[dict[str, Any]]) -> str:
    """
    The C{exchanges} table, like C{qpid-stat -e}, sorted by name; the
    default exchange shows as C{(default)}.
    """
    return formatTable(
        ["exchange", "type", "bindings", "durable", "auto-delete", "internal", "replicate"],
        [
            [
                x["name"] or "(default)",
                x["type"],
                x["bindings"],
                x["durable"],
                x["autoDelete"],
                x["internal"],
                x["replicate"],
            ]
            for x in sorted(exchanges, key=lambda x: x["name"])
        ],
    )


def formatVhosts(vhosts: Sequence[dict[str, Any]]) -> str:
    """
    The C{vhost list} table, sorted by name.
    """
    return formatTable(
        ["vhost", "queues", "exchanges", "messages"],
        [
            [v["name"], v["queues"], v["exchanges"], v["messages"]]
            for v in sorted(vhosts, key=lambda v: v["name"])
        ],
    )


def formatBindings(bindings: Sequence[dict[str, Any]]) -> str:
    """
    The C{bindings} table: source exchange, destination, routing key and
    arguments (C{k=v} pairs).
    """
    return formatTable(
        ["exchange", "destination", "kind", "routing key", "arguments"],
        [
            [
                b["source"],
                b["destination"],
                b["destinationKind"],
                b["routingKey"],
                ",".join(f"{k}={v}" for k, v in sorted(b["arguments"].items())),
            ]
            for b in sorted(
                bindings, key=lambda b: (b["source"], b["destination"], b["routingKey"])
            )
        ],
    )


def clusterAddresses(address: str, state: dict[str, Any]) -> list[str]:
    """
    The AMP addresses of a broker's cluster, from its C{query} state: its
    C{--ha-brokers}, then the members registered in etcd (with
    C{--ha-coordinator}); the broker alone when it knows no other.
    """
    addresses = parseBrokers(state["brokers"]) if state.get("brokers") else []
    coordinator = state.get("coordinator") or {}
    for member in coordinator.get("members") or []:
        amp = member.get("amp")
        if amp and amp not in addresses:
            addresses.append(amp)
    if not addresses:
        addresses = [address]
    return addresses


def formatQuery(address: str, state: dict[str, Any]) -> str:
    """
    The C{query} answer of one broker: its settings one per line, then a
    table of its backups and their progress (replication boxes sent to and
    acknowledged by each), then its single-queue replicas if it has any.
    """
    fields = [
        ("broker", address),
        ("role", state.get("role")),
        ("broker id", state.get("brokerId")),
        ("epoch", state.get("epoch")),
        ("brokers URL", state.get("brokers")),
        ("public URL", state.get("publicBrokers")),
        ("replicate default", state.get("replicateDefault")),
        ("min backups", state.get("minBackups")),
        ("primary", state.get("primary")),
    ]
    catchup = state.get("catchup")
    if catchup:
        fields.append(
            (
                "catch-up",
                f"{catchup['receivedMessages']} of at most {catchup['messages']} messages,"
                f" {catchup['receivedBytes']} bytes in {catchup['batches']} batches,"
                f" {catchup['seconds']}s{' (done)' if catchup['done'] else ''}",
            )
        )
    coordinator = state.get("coordinator")
    if coordinator is not None:
        leader = coordinator.get("leader")
        fields += [
            (
                "etcd leader",
                None if leader is None else f"{leader['id']} (epoch {leader['epoch']}, AMQP {leader['amqp']})",
            ),
            ("etcd members", len(coordinator.get("members") or [])),
            ("lease TTL", coordinator.get("leaseTTL")),
            ("not campaigning", coordinator.get("whyNotCampaigning")),
        ]
    width = max(len(name) for name, _ in fields)
    text = "".join(f"{name.ljust(width)}  {_cell(value)}\n" for name, value in fields)
    backups = state.get("backups") or []
    if not backups:
        text += f"{'backups'.ljust(width)}  none\n"
    else:
        text += f"{'backups'.ljust(width)}  {len(backups)}\n\n"
        catchups = [
            f"{b['id']}: {c['acknowledgedMessages']}/{c['sentMessages']} of at most"
            f" {c['messages']} messages acknowledged/sent, {c['acknowledgedBytes']}/"
            f"{c['sentBytes']} bytes, {c['seconds']}s{' (done)' if c['done'] else ''}"
            for b in backups
            for c in [b.get("catchup")]
            if c
        ]
        text += formatTable(
            ["backup id", "address", "ready", "sent", "acknowledged", "behind"],
            [
                [
                    b["id"],
                    b["address"],
                    b["ready"],
                    b["sent"],
                    b["acknowledged"],
                    b["sent"] - b["acknowledged"],
                ]
                for b in backups
            ],
        )
        if catchups:
            text += "\ncatch-up\n" + "".join(f"  {line}\n" for line in catchups)
    replicas = state.get("queueReplicas") or []
    if replicas:
        text += f"\n{'queue replicas'.ljust(width)}  {len(replicas)}\n\n"
        text += formatTable(
            ["queue", "remote", "following"],
            [[r["queue"], r["remote"], r["following"]] for r in replicas],
        )
    return text


def describeError(error: BaseException, address: str, loggedIn: bool = False) -> str:
    """
    The one line that says why talking to C{address} failed.

    @param loggedIn: whether credentials were given, to advise giving them
        when the broker wants them.
    """
    if isTLSFailure(error):
        return (
            f"{address} failed the TLS handshake: {describeFailure(error)} (give --tls-ca,"
            " --tls-cert and --tls-key of the cluster's CA if its --ha-port uses TLS)"
        )
    if isinstance(error, ConnectionRefusedError):
        return (
            f"cannot connect to {address}: connection refused (is a qha broker's"
            " --ha-port there?)"
        )
    if isinstance(error, DNSLookupError):
        return f"cannot connect to {address}: cannot resolve the host name"
    if isinstance(error, (ConnectTimeoutError, TCPTimedOutError)):
        return f"cannot connect to {address}: timed out"
    if isinstance(error, ConnectError):
        return f"cannot connect to {address}: {error}"
    if isinstance(error, Refused):
        return f"{address} refused: {error}"
    if isinstance(error, NotAuthenticated):
        if loggedIn:
            return f"{address} refused the login: {error}"
        if "cluster secret" in str(error):
            return (
                f"{address} refused: {error} (give --secret-file with a copy of the"
                f" broker's DATA-DIR/{SECRET_NAME}, or set ${SECRET_VARIABLE})"
            )
        return f"{address} refused: {error} (give --username and --password)"
    if isinstance(error, UnprovenPeer):
        return f"{address} is not the broker meant: {error}"
    if isinstance(error, SecretFileError):
        return str(error)
    if isinstance(error, (NotPrimary, StaleEpoch)):
        return f"{address} refused: {error}"
    if isinstance(error, amp.UnhandledCommand):
        return f"{address} does not know this command (is it a qha broker of another version?)"
    if isinstance(error, amp.UnknownRemoteError):
        return f"{address} failed while answering ({error.description}; see the broker's log)"
    if isinstance(error, amp.RemoteAmpError):
        return f"{address} refused: {error.description}"
    if isinstance(error, (amp.TooLong, amp.MalformedAmpBox, amp.NoEmptyBoxes)):
        return f"{address} does not speak AMP (is it the broker's AMQP port, not its --ha-port?)"
    if isinstance(error, ConnectionClosed):
        return (
            f"{address} closed the connection before answering (is it a qha broker's"
            " --ha-port? does that use TLS: give --tls-ca)"
        )
    return f"{address}: {type(error).__name__}: {error}"


# Talking to brokers


def tcpConnector(
    reactor: Any, timeout: float = DEFAULT_TIMEOUT, tls: MutualTLS | None = None
) -> Connector:
    """
    A L{Connector} over TCP.

    @param reactor: provides C{IReactorTCP} and C{IReactorTime}.
    @param timeout: seconds a connection attempt may take.
    @param tls: mutual TLS on top (C{--tls-ca/--tls-cert/--tls-key}), or L{None}.
    """

    async def connect(address: str) -> amp.AMP:
        """
        Connect to C{host:port} (a name, an IPv4 or an IPv6 address).
        """
        host, _, port = address.rpartition(":")
        endpoint = withTLS(tls, host, HostnameEndpoint(reactor, host, int(port), timeout=timeout))
        return await connectProtocol(endpoint, amp.AMP())

    return connect


class Session:
    """
    One run of C{qha-admin}: its arguments, its output, and its connections
    to brokers (opened once per address, logged in if credentials were
    given, closed by L{close}).

    @ivar waiting: the address of the broker last asked, for the message
        when the time runs out.
    """

    def __init__(
        self,
        arguments: argparse.Namespace,
        connector: Connector,
        clock: IReactorTime,
        out: TextIO,
        err: TextIO,
        etcd: Callable[[list[str]], IEtcd] | None = None,
    ) -> None:
        """
        @param arguments: the parsed command line.
        @param connector: opens AMP connections.
        @param clock: bounds the time of C{--all} queries.
        @param out: where answers go.
        @param err: where the reasons for failures go.
        @param etcd: makes an etcd client for C{--coordinator} endpoints.
        """
        self.etcd = etcd or (lambda endpoints: EtcdClient(clock, endpoints))
        self.arguments = arguments
        self.connector = connector
        self.clock = clock
        self.out = out
        self.err = err
        self.address: str = arguments.broker
        self.waiting = self.address
        self.deadline = clock.seconds() + arguments.timeout
        self.connections: dict[str, amp.AMP] = {}

    async def _connection(self, address: str) -> amp.AMP:
        """
        The connection to C{address}, opened (and logged in) on first use.
        """
        connection = self.connections.get(address)
        if connection is None:
            credentials = self.credentials()
            connection = await self.connector(address)
            self.connections[address] = connection
            if credentials is not None:
                # Bounded by the command's --timeout, like every call.
                await logIn(callerOf(connection, lambda d: d), credentials)
        return connection

    def credentials(self) -> Credentials | None:
        """
        What this run logs in with: C{--username} and its password, or the
        cluster secret of C{--secret-file}; L{None} for neither.

        @raise SecretFileError: if the secret file cannot be read.
        """
        arguments = self.arguments
        if arguments.username is not None:
            return Credentials.fromPassword(arguments.username, arguments.password or "")
        if arguments.secret_file is not None:
            try:
                return Credentials.fromSecret(readSecret(arguments.secret_file))
            except FileNotFoundError:
                raise SecretFileError(
                    f"the cluster secret {arguments.secret_file} does not exist"
                ) from None
        return None

    @property
    def loggingIn(self) -> bool:
        """
        Whether this run logs in.
        """
        return self.arguments.username is not None or self.arguments.secret_file is not None

    async def call(self, address: str, command: type[amp.Command], **kwargs: Any) -> dict[str, Any]:
        """
        Send C{command} to C{address}.

        @raise AdminError: saying why, if it fails.
        """
        self.waiting = address
        try:
            connection = await self._connection(address)
            return dict(await connection.callRemote(command, **kwargs))
        except CancelledError:
            raise
        except Exception as error:
            raise AdminError(
                describeError(error, address, self.loggingIn)
            ) from None

    async def everyBroker(
        self, ask: Callable[[str], Coroutine[Any, Any, Any]]
    ) -> list[tuple[str, Any, str | None]]:
        """
        Ask every broker of the cluster (the C{brokers} list of the broker
        given with C{-b}, or that broker alone when it has none) at the same
        time, each within L{ALL_SHARE} of the time left.

        @param ask: gets one broker's answer.
        @return: C{(address, answer, None)} or C{(address, None, reason)}
            per broker, in the order of the list.
        """
        state = json.loads((await self.call(self.address, Query))["state"])
        addresses = clusterAddresses(self.address, state)
        limit = max(0.0, self.deadline - self.clock.seconds()) * ALL_SHARE

        def one(address: str) -> Deferred[Any]:
            """
            Ask C{address}, within the time it is given.
            """
            d: Deferred[Any] = ensureDeferred(ask(address))
            d.addTimeout(limit, self.clock)
            return d

        results = await DeferredList([one(address) for address in addresses], consumeErrors=True)
        answers: list[tuple[str, Any, str | None]] = []
        for address, (succeeded, result) in zip(addresses, results):
            if succeeded:
                answers.append((address, result, None))
            elif result.check(AdminError):
                answers.append((address, None, str(result.value)))
            elif result.check(DeferredTimeoutError):
                answers.append((address, None, f"{address} did not answer within {round(limit, 1):g} s"))
            else:
                answers.append((address, None, describeError(result.value, address)))
        return answers

    def write(self, text: str) -> None:
        """
        Write an answer.
        """
        self.out.write(text)

    def writeJSON(self, value: Any) -> None:
        """
        Write an answer as JSON.
        """
        self.out.write(json.dumps(value, indent=2, sort_keys=True) + "\n")

    def complain(self, message: str) -> None:
        """
        Write one line on standard error.
        """
        self.err.write(f"{PROGRAM}: {message}\n")

    def close(self) -> None:
        """
        Close every connection.
        """
        for connection in self.connections.values():
            if connection.transport is not None:
                connection.transport.loseConnection()
        self.connections.clear()


# Commands: each takes the session and returns the exit status.


async def ping(session: Session) -> int:
    """
    C{ping}: 0 when the broker answers.
    """
    role = (await session.call(session.address, Ping))["role"]
    if session.arguments.json:
        session.writeJSON({"broker": session.address, "alive": True, "role": role})
    else:
        session.write(f"{session.address} is alive ({role})\n")
    return 0


async def status(session: Session) -> int:
    """
    C{status}: print the role; with C{--expect} or C{--is-primary}, exit 1
    when the role is not the one wanted.
    """
    arguments = session.arguments
    if not arguments.all:
        role = (await session.call(session.address, Ping))["role"]
        if arguments.json:
            session.writeJSON({"broker": session.address, "role": role})
        else:
            session.write(role + "\n")
        if arguments.expect is not None and role != arguments.expect:
            session.complain(f"{session.address} is {role}, not {arguments.expect}")
            return 1
        if arguments.is_primary and role not in PRIMARY_ROLES:
            session.complain(f"{session.address} is {role}, not the primary")
            return 1
        return 0

    async def askRole(address: str) -> str:
        """
        The role of the broker at C{address}.
        """
        return str((await session.call(address, Ping))["role"])

    answers = await session.everyBroker(askRole)
    if arguments.json:
        session.writeJSON(
            [
                {"broker": address, "role": answer}
                if reason is None
                else {"broker": address, "error": reason}
                for address, answer, reason in answers
            ]
        )
    else:
        width = max(len(address) for address, _, _ in answers)
        for address, answer, reason in answers:
            session.write(f"{address.ljust(width)}  {answer if reason is None else 'unreachable'}\n")
    code = 0
    for address, answer, reason in answers:
        if reason is not None:
            session.complain(reason)
            code = 1
        elif arguments.expect is not None and answer != arguments.expect:
            session.complain(f"{address} is {answer}, not {arguments.expect}")
            code = 1
    return code


async def query(session: Session) -> int:
    """
    C{query}: the broker's cluster state (or every broker's, with
    C{--all}).
    """

    async def state(address: str) -> dict[str, Any]:
        """
        The state of the broker at C{address}, with that address.
        """
        answer = json.loads((await session.call(address, Query))["state"])
        return {"broker": address, **answer}

    if not session.arguments.all:
        answer = await state(session.address)
        if session.arguments.json:
            session.writeJSON(answer)
        else:
            session.write(formatQuery(session.address, answer))
        return 0
    answers = await session.everyBroker(state)
    if session.arguments.json:
        session.writeJSON(
            [
                answer if reason is None else {"broker": address, "error": reason}
                for address, answer, reason in answers
            ]
        )
    else:
        blocks = [
            formatQuery(address, answer)
            if reason is None
            else f"broker  {address}\nrole    unreachable\n"
            for address, answer, reason in answers
        ]
        session.write("\n".join(blocks))
    code = 0
    for _, _, reason in answers:
        if reason is not None:
            session.complain(reason)
            code = 1
    return code


async def primary(session: Session) -> int:
    """
    C{primary}: the current primary's AMQP address, for scripts, load
    balancers and DNS updaters; exit 1 when there is none.
    """
    arguments = session.arguments
    if arguments.coordinator is not None:
        found = await _leaderFromEtcd(session)
    else:
        found = None
        state = json.loads((await session.call(session.address, Query))["state"])
        leader = (state.get("coordinator") or {}).get("leader")
        if leader is not None:
            found = {"id": leader["id"], "epoch": leader["epoch"], "amqp": leader["amqp"]}
        else:

            async def describe(address: str) -> dict[str, Any]:
                return dict(json.loads((await session.call(address, Query))["state"]))

            for address, answer, _ in await session.everyBroker(describe):
                if answer is not None and answer.get("role") in PRIMARY_ROLES + (STANDALONE,):
                    found = {
                        "id": answer.get("brokerId"),
                        "epoch": answer.get("epoch"),
                        "amqp": answer.get("amqp") or "",
                    }
                    break
    if found is None:
        session.complain("no primary: the cluster has no leader now")
        return 1
    if arguments.json:
        session.writeJSON(found)
    else:
        session.write(f"{found['amqp']}\n")
    return 0


async def _leaderFromEtcd(session: Session) -> dict[str, Any] | None:
    """
    The C{leader} key of C{--cluster-name} in the etcd of C{--coordinator}.
    """
    arguments = session.arguments
    try:
        endpoints = parseCoordinator(arguments.coordinator)
        key = clusterPrefix(arguments.cluster_name) + b"leader"
    except ValueError as error:
        raise AdminError(str(error)) from None
    etcd = session.etcd(endpoints)
    session.waiting = arguments.coordinator
    try:
        kvs = (await etcd.range(key)).kvs
    except (EtcdUnavailable, EtcdError) as error:
        raise AdminError(f"etcd {arguments.coordinator}: {error}") from None
    if not kvs:
        return None
    try:
        leader = LeaderInfo.fromJSON(kvs[0].value)
    except ValueError as error:
        raise AdminError(f"etcd {arguments.coordinator}: {error}") from None
    return {"id": leader.id, "epoch": leader.epoch, "amqp": leader.amqp}


async def promote(session: Session) -> int:
    """
    C{promote}: make the broker the primary; the broker's refusal, with
    its reason, exits 1.
    """
    before = (await session.call(session.address, Ping))["role"]
    answer = await session.call(session.address, Promote, force=session.arguments.force)
    if session.arguments.json:
        session.writeJSON(
            {"broker": session.address, "role": answer["role"], "epoch": answer["epoch"],
             "promoted": before not in PRIMARY_ROLES}
        )
    elif before in PRIMARY_ROLES:
        session.write(
            f"{session.address} is already the primary ({answer['role']}, epoch {answer['epoch']})\n"
        )
    else:
        session.write(
            f"{session.address} promoted: {answer['role']}, epoch {answer['epoch']}\n"
        )
    return 0


async def replicate(session: Session) -> int:
    """
    C{replicate REMOTE QUEUE}: make QUEUE a live replica of QUEUE on
    REMOTE (one broker, or a cluster's brokers). The broker starts
    following at once; C{query} shows whether it has found REMOTE.
    """
    arguments = session.arguments
    await session.call(session.address, Replicate, remote=arguments.remote, queue=arguments.queue)
    if arguments.json:
        session.writeJSON(
            {"broker": session.address, "remote": arguments.remote, "queue": arguments.queue,
             "replicating": True}
        )
    else:
        session.write(
            f"queue {arguments.queue!r} on {session.address} replicates"
            f" {arguments.queue!r} on {arguments.remote} from now on\n"
        )
    return 0


def _lister(kind: str, format: Callable[[list[dict[str, Any]]], str]) -> Command:
    """
    The command that lists C{kind} (queues, exchanges or bindings).
    """

    async def listObjects(session: Session) -> int:
        """
        Print the broker's objects of this kind: a table, or JSON.
        """
        answer = await session.call(
            session.address, ListObjects, kind=kind, vhost=session.arguments.vhost
        )
        objects = json.loads(answer["objects"])
        if session.arguments.json:
            session.writeJSON(objects)
        else:
            session.write(format(objects))
        return 0

    return listObjects


async def add(session: Session) -> int:
    """
    C{add queue NAME} or C{add exchange TYPE NAME}: declare it.
    """
    arguments = session.arguments
    description: dict[str, Any] = {
        "name": arguments.name,
        "durable": arguments.durable,
        "autoDelete": arguments.auto_delete,
        "arguments": dict(arguments.argument),
    }
    if arguments.replicate is not None:
        description["replicate"] = arguments.replicate
    if arguments.kind == "exchange":
        description["type"] = arguments.type
    await session.call(
        session.address,
        AddObject,
        kind=arguments.kind,
        description=json.dumps(description),
        vhost=arguments.vhost,
    )
    if arguments.json:
        session.writeJSON(
            {"broker": session.address, "kind": arguments.kind, "name": arguments.name,
             "added": True}
        )
    else:
        session.write(f"{arguments.kind} {arguments.name!r} added\n")
    return 0


async def delete(session: Session) -> int:
    """
    C{del queue NAME} or C{del exchange NAME}.
    """
    arguments = session.arguments
    await session.call(
        session.address, DeleteObject, kind=arguments.kind, name=arguments.name,
        vhost=arguments.vhost,
    )
    if arguments.json:
        session.writeJSON(
            {"broker": session.address, "kind": arguments.kind, "name": arguments.name,
             "deleted": True}
        )
    else:
        session.write(f"{arguments.kind} {arguments.name!r} deleted\n")
    return 0


async def vhost(session: Session) -> int:
    """
    C{vhost add NAME}, C{vhost del NAME} or C{vhost list}.
    """
    arguments = session.arguments
    if arguments.action == "list":
        answer = await session.call(session.address, VhostList)
        vhosts = json.loads(answer["vhosts"])
        if arguments.json:
            session.writeJSON(vhosts)
        else:
            session.write(formatVhosts(vhosts))
        return 0
    adding = arguments.action == "add"
    await session.call(session.address, VhostAdd if adding else VhostDelete, name=arguments.name)
    if arguments.json:
        session.writeJSON(
            {"broker": session.address, "vhost": arguments.name,
             "added" if adding else "deleted": True}
        )
    else:
        session.write(f"vhost {arguments.name!r} {'added' if adding else 'deleted'}\n")
    return 0


def _readStore(directory: str) -> dict[str, Any]:
    """
    What the store in C{directory} (a broker's C{--data-dir}, or its journal
    file itself) holds.

    @raise AdminError: with one line, if there is no store or it is damaged.
    """
    path = directory if os.path.isfile(directory) else os.path.join(directory, "journal")
    try:
        info = readStoreInfo(path)
    except FileNotFoundError:
        raise AdminError(f"store-info: no store in {directory} (no file {path})") from None
    except StoreCorrupt as corrupt:
        raise AdminError(
            f"store-info: {corrupt}; a broker refuses to start on it (--store-recover"
            " starts it from the last good record, keeping a copy)"
        ) from None
    except OSError as error:
        raise AdminError(f"store-info: cannot read {path}: {error.strerror}") from None
    info["dataDir"] = directory
    info["queues"] = {
        name: {"messages": queue["messages"]} for name, queue in info["queues"].items()
    }
    return info


def formatStore(info: dict[str, Any]) -> str:
    """
    One store as C{store-info} prints it: where it stopped and what it
    holds, then its queues with their message counts. A store with other
    virtual hosts than C{/} names each exchange's and queue's (C{/}'s
    first).
    """
    vhosts = info.get("vhosts") or {"/": {"queues": info["queues"], "exchanges": info["exchanges"]}}
    order = sorted(vhosts, key=lambda name: (name != "/", name))
    several = order != ["/"]
    exchanges = [
        name if not several else f"{name} (vhost {vhost})"
        for vhost in order
        for name in vhosts[vhost]["exchanges"]
    ]
    fields = [
        ("data dir", info["dataDir"]),
        ("journal", info["path"]),
        ("epoch", info["epoch"]),
        ("position", info["position"]),
        ("records", info["records"]),
        ("bytes", info["bytes"]),
        ("torn bytes", info["tornBytes"]),
        ("exchanges", ", ".join(exchanges) or "none"),
    ]
    width = max(len(name) for name, _ in fields)
    text = "".join(f"{name.ljust(width)}  {_cell(value)}\n" for name, value in fields)
    rows = [
        [vhost, name, queues[name]["messages"]]
        for vhost in order
        for queues in [vhosts[vhost]["queues"]]
        for name in sorted(queues)
    ]
    if not rows:
        return text + f"{'queues'.ljust(width)}  none\n"
    if not several:
        return text + "\n" + formatTable(["queue", "messages"], [row[1:] for row in rows])
    return text + "\n" + formatTable(["vhost", "queue", "messages"], rows)


async def storeInfo(session: Session) -> int:
    """
    C{store-info --data-dir DIR ...}: read each store (no broker needed),
    print where it stopped (epoch, stream position) and what it holds, and
    with several say which is newest: the highest C{(epoch, position)}.
    A missing or damaged store is one line on standard error and exit 1.
    """
    stores: list[dict[str, Any]] = []
    failed = False
    for directory in session.arguments.data_dirs:
        try:
            stores.append(_readStore(directory))
        except AdminError as error:
            session.complain(str(error))
            failed = True
    newest: list[str] = []
    if stores:
        top = max((info["epoch"], info["position"]) for info in stores)
        newest = [info["dataDir"] for info in stores if (info["epoch"], info["position"]) == top]
    if session.arguments.json:
        session.writeJSON({"stores": stores, "newest": newest, "complete": not failed})
    else:
        session.write("\n".join(formatStore(info) for info in stores))
        if len(session.arguments.data_dirs) > 1 and newest:
            best = stores[[info["dataDir"] for info in stores].index(newest[0])]
            qualifier = " of those read" if failed else ""
            session.write(
                f"\nnewest{qualifier}: {', '.join(newest)}"
                f" (epoch {best['epoch']}, position {best['position']})\n"
            )
    return 1 if failed else 0


COMMANDS: dict[str, Command] = {
    "ping": ping,
    "status": status,
    "query": query,
    "primary": primary,
    "promote": promote,
    "replicate": replicate,
    "queues": _lister("queues", formatQueues),
    "exchanges": _lister("exchanges", formatExchanges),
    "bindings": _lister("bindings", formatBindings),
    "add": add,
    "del": delete,
    "vhost": vhost,
    "store-info": storeInfo,
    **MANAGE_COMMANDS,
    # Users and permissions managed at run time (issue 13).
    "user": accounts.user,
    "permissions": accounts.permissions,
}
"""
Every command, by name, as a function of the session to the exit status.
"""


def run(
    clock: IReactorTime,
    arguments: argparse.Namespace,
    connector: Connector,
    out: TextIO,
    err: TextIO,
    etcd: Callable[[list[str]], IEtcd] | None = None,
) -> Deferred[int]:
    """
    Run the command of C{arguments} within C{arguments.timeout} seconds.

    @param clock: measures the timeout (the reactor, which also connects
        to etcd unless C{etcd} is given).
    @param connector: opens AMP connections to brokers.
    @param out: where the answer goes.
    @param err: where the one line that says why it failed goes.
    @param etcd: makes an etcd client for C{primary --coordinator}.
    @return: fires with the exit status (0 or 1); never fails.
    """
    session = Session(arguments, connector, clock, out, err, etcd)
    d: Deferred[int] = ensureDeferred(COMMANDS[arguments.command](session))
    d.addTimeout(arguments.timeout, clock)

    def failed(failure: Any) -> int:
        """
        Say why the command failed: exit status 1.
        """
        if failure.check(AdminError):
            session.complain(str(failure.value))
        elif failure.check(DeferredTimeoutError):
            session.complain(
                f"timed out after {arguments.timeout:g} s waiting for {session.waiting}"
            )
        else:
            session.complain(describeError(failure.value, session.waiting))
        return 1

    def finished(code: int) -> int:
        """
        Close the connections, keep the exit status.
        """
        session.close()
        return code

    d.addErrback(failed)
    d.addCallback(finished)
    return d


async def _main(reactor: Any, arguments: argparse.Namespace) -> NoReturn:
    """
    The C{task.react} main function: run the command, exit with its status.
    """
    code = await run(
        reactor, arguments, tcpConnector(reactor, arguments.timeout, arguments.tls), sys.stdout, sys.stderr
    )
    raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """
    The C{qha-admin} command.

    @param argv: the arguments without the program name; C{sys.argv[1:]}
        by default.
    @raise SystemExit: always, with the exit status.
    """
    from twisted.internet import task

    arguments = parseArguments(sys.argv[1:] if argv is None else list(argv), os.environ)
    useDefaultSecret(arguments)
    task.react(_main, (arguments,))


def useDefaultSecret(
    arguments: argparse.Namespace, exists: Callable[[str], bool] = os.path.exists
) -> None:
    """
    Log in with L{DEFAULT_SECRET_FILE} when the command line and the
    environment name nothing to log in with and that file exists (a broker
    started here with the default C{--data-dir}).

    @param exists: tells whether a file exists.
    """
    if (
        arguments.username is None
        and arguments.secret_file is None
        and exists(DEFAULT_SECRET_FILE)
    ):
        arguments.secret_file = DEFAULT_SECRET_FILE


if __name__ == "__main__":
    main()
