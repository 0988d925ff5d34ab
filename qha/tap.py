"""
The twistd plugin's options and service: C{twistd -n qha --help}.
"""

from __future__ import annotations

import functools
import os
import threading
import re
import sys
from typing import Any, Callable, Iterable

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python import usage

from .amqp.limits import DEFAULT_MAX_HEADER_FIELDS, ConnectionLimits
from .amqp.protocol import BrokerFactory
from .amqp.users import FailedLogins, ReloadOnSignal, ThreadPoolVerifier, UserDatabase
from .broker.vhost import REPLICATE_LEVELS, Resources, VirtualHost
from .broker.vhosts import VirtualHosts
from .datadir import SECRET_NAME, SecretFileError, claimOrExit, readOrCreateSecret
from .store.journal import FileJournal, MemoryJournal, Store, StoreCorrupt
from .store.paging import PageFiles
from .broker.paging import Pager
from .tls import MutualTLS, amqpServerEndpoint
from .admin.locator import adminLocator
from .admin.settings import configuredSources, followSettings
from .ha.config import HAOptions, parseBrokers
from .ha.coordinated import etcdFor
from .ha.coordinator import clusterPrefix
from .ha.etcd import parseCoordinator
from .ha.auth import Authority
from .ha.connection import NodeAMPFactory
from .ha.identity import PersistentState
from .ha.node import HANode
from .ha.primary import ReplicationGate
from .notify import SystemdNotifier
from .collector import CollectorPolicy

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "ki": 1024, "kib": 1024,
    "m": 1000**2, "mb": 1000**2, "mi": 1024**2, "mib": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gi": 1024**3, "gib": 1024**3,
    "t": 1000**4, "tb": 1000**4, "ti": 1024**4, "tib": 1024**4,
}


def physicalMemory() -> int:
    """
    The machine's physical memory in bytes (1 GiB if it cannot be told).
    """
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1024**3


def parseWatermark(value: str) -> int:
    """
    A memory high watermark: a fraction of physical memory (C{0.4}) or a
    size (C{512MiB}, C{2GB}, C{1000000}).

    @raise ValueError: with a message saying what is accepted.
    """
    return _fractionOrSize(
        value,
        physicalMemory,
        f"--memory-high-watermark: {value!r} is neither a fraction of memory"
        " between 0 and 1 (0.4) nor a size (512MiB, 2GB, 100000000)",
    )


def _fractionOrSize(value: str, whole: Callable[[], int], error: str) -> int:
    """
    C{value} as a fraction (strictly between 0 and 1) of C{whole()}, or as
    a size (C{1GiB}, C{512MB}, C{1000000}).

    @raise ValueError: with C{error} when it is neither.
    """
    text = value.strip()
    try:
        fraction = float(text)
    except ValueError:
        pass
    else:
        if 0 < fraction < 1:
            return int(whole() * fraction)
    match = _SIZE.match(text)
    if match is None or (match.group(2) or "").lower() not in _UNITS:
        raise ValueError(error)
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower()])


def parseMemoryBudget(value: str, watermark: int) -> int:
    """
    The broker-wide paging budget of C{--memory-budget}: a fraction of the
    memory high watermark (C{0.5}, the default, as RabbitMQ's paging
    ratio), a size (C{1GiB}), or C{0} for none (queues then page only by
    their own arguments).

    @raise ValueError: with a message saying what is accepted.
    """
    return _fractionOrSize(
        value,
        lambda: watermark,
        f"--memory-budget: {value!r} is neither a fraction of the memory high"
        " watermark between 0 and 1 (0.5) nor a size (1GiB, 512MB, 0 for none)",
    )


PASSWORD_VARIABLE = "QHA_HA_PASSWORD"
"""
The environment variable that may hold the password for C{--ha-username}.
"""


def readPasswordFile(path: str) -> str:
    """
    The password in the first line of C{path} (without its line end).

    @raise usage.UsageError: if the file cannot be read.
    """
    try:
        with open(path, encoding="utf-8") as file:
            return file.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as error:
        raise usage.UsageError(f"cannot read --ha-password-file {path}: {error}") from None


def clusterSecret(config: "Options") -> bytes:
    """
    The cluster secret of C{--ha-secret-file} (by default
    C{DATA-DIR/cluster-secret}), made on first start; a file that cannot be
    read or made ends the program with status 1 and one line.
    """
    log = Logger()
    path = config["ha-secret-file"] or os.path.join(config["data-dir"], SECRET_NAME)
    try:
        secret, created = readOrCreateSecret(path)
    except SecretFileError as error:
        sys.stderr.write(f"twistd qha: error: {error}\n")
        raise SystemExit(1) from None
    if created:
        log.info(
            "created the cluster secret {path}: copy it to every broker of the cluster"
            " (--ha-secret-file) and give it to qha-admin (--secret-file)",
            path=path,
        )
    else:
        log.info("the AMP port accepts the cluster secret of {path}", path=path)
    return secret


def _positiveInt(name: str, low: int, high: int) -> Any:
    def coerce(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"--{name} must be a whole number, not {value!r}") from None
        if not low <= number <= high:
            raise ValueError(f"--{name} must be between {low} and {high}, not {number}")
        return number

    coerce.coerceDoc = f"A whole number from {low} to {high}."  # type: ignore[attr-defined]
    return coerce


class Options(usage.Options):
    """
    Options of C{twistd qha}. A bad option or value ends the program with one
    line that says what is wrong.
    """

    synopsis = "[options]"
    longdesc = (
        "qha is an AMQP 0-9-1 message broker. Run it in the foreground with"
        " `twistd -n qha`; every RabbitMQ client library (pika, aio-pika, kombu)"
        " connects to it unchanged."
    )

    optParameters = [
        # The config file and the log level (issue 14): see qha.config and qha.logs.
        [
            "config",
            None,
            None,
            "TOML file of options, one key per long option (port = \"tcp:5672\"); options"
            " on the command line win. KEY-file/KEY-env take a value from a file or the"
            " environment. See doc/configuration.md.",
        ],
        [
            "log-level",
            None,
            "info",
            "Least level of the lines logged: debug, info, warn, error or critical"
            " (both --log-format text and json).",
        ],
        [
            "log-format",
            None,
            "text",
            "text: twistd's log lines; json: one JSON object a line (Twisted's"
            " jsonFileLogObserver), to the same place (standard output under -n, else"
            " --logfile).",
        ],
        [
            "port",
            "p",
            "tcp:5672:interface=127.0.0.1",
            "Endpoint to listen on for AMQP clients (tcp:PORT:interface=ADDR, or TLS:"
            " ssl:5671:privateKey=KEY.pem:certKey=CERT.pem).",
        ],
        [
            "http-port",
            None,
            "tcp:15672:interface=127.0.0.1",
            "Endpoint of the HTTP port: the management API (RabbitMQ's /api) and the"
            " health checks (/health/primary); TLS: ssl:15671:privateKey=KEY.pem:certKey=CERT.pem;"
            " none: no HTTP port.",
        ],
        [
            "tls-client-ca",
            None,
            None,
            "CA certificate (PEM) of client certificates: an ssl: --port asks each client for"
            " one and checks it; such clients may log in with SASL EXTERNAL as the"
            " certificate's CN.",
        ],
        [
            "tls-require-client-cert",
            None,
            "no",
            "yes: refuse TLS clients without a certificate of --tls-client-ca.",
        ],
        [
            "users",
            "u",
            None,
            "File of users with scrypt-hashed passwords (see `qha-users`)."
            " Without it, guest/guest may log in from loopback only.",
        ],
        [
            "heartbeat",
            None,
            60,
            "Heartbeat interval (seconds) the broker proposes; 0 turns heartbeats off."
            " A peer silent for two intervals is dropped.",
            _positiveInt("heartbeat", 0, 65535),
        ],
        [
            "frame-max",
            None,
            131072,
            "Largest frame (bytes) the broker accepts and proposes.",
            _positiveInt("frame-max", 4096, 1048576),
        ],
        [
            "channel-max",
            None,
            2047,
            "Most channels a connection may open.",
            _positiveInt("channel-max", 1, 65535),
        ],
        [
            "max-message-size",
            None,
            128 * 1024 * 1024,
            "Largest message body (bytes) a publisher may send; larger ones get"
            " 406 PRECONDITION_FAILED.",
            _positiveInt("max-message-size", 1, 512 * 1024 * 1024),
        ],
        [
            "memory-high-watermark",
            None,
            "0.4",
            "Memory past which publishers are blocked (queued messages, unfinished"
            " bodies, uncommitted transactions, unanswered replication): a fraction"
            " of physical memory (0.4) or a size (512MiB, 2GB).",
        ],
        # Paging (issue 15): past this, queues with a backlog page new bodies
        # to DATA-DIR/paging.
        [
            "memory-budget",
            None,
            "0.5",
            "Memory past which queues with a backlog page message bodies to disk"
            " (DATA-DIR/paging): a fraction of the high watermark (0.5) or a size"
            " (1GiB); 0 for none (lazy queues and x-max-in-memory-* still page).",
        ],
        # Limits (issue 13): connections, handshakes, header tables.
        [
            "handshake-timeout",
            None,
            10.0,
            "Seconds a client has from connecting to connection.open-ok; slower ones"
            " are dropped.",
            float,
        ],
        [
            "max-connections",
            None,
            0,
            "Most open client connections; more are refused with 530 NOT_ALLOWED."
            " 0: no limit.",
            _positiveInt("max-connections", 0, 10_000_000),
        ],
        [
            "max-connections-per-user",
            None,
            0,
            "Most open client connections of any one user; more are refused with"
            " 530 NOT_ALLOWED. 0: no limit.",
            _positiveInt("max-connections-per-user", 0, 10_000_000),
        ],
        [
            "max-header-fields",
            None,
            DEFAULT_MAX_HEADER_FIELDS,
            "Most fields (nested ones included) in a message's headers table (406"
            " PRECONDITION_FAILED) or a method's arguments (502 SYNTAX_ERROR). 0: no limit.",
            _positiveInt("max-header-fields", 0, 10_000_000),
        ],
        [
            "ha-replicate",
            None,
            "none",
            "Default qpid.replicate level for declares that do not give one:"
            " none, configuration or all.",
        ],
        ["ha-cluster", None, "no", "yes: join a cluster (--ha-brokers); no: run standalone."],
        [
            "ha-port",
            None,
            "tcp:5673:interface=127.0.0.1",
            "Endpoint of the AMP port for replication and qha-admin.",
        ],
        [
            "ha-tls-ca",
            None,
            None,
            "CA certificate (PEM) of the cluster: with it the AMP port, the links between"
            " brokers and qha-admin use mutual TLS, each side's certificate checked against it.",
        ],
        ["ha-tls-cert", None, None, "This broker's certificate (PEM) for --ha-tls-ca."],
        [
            "ha-tls-key",
            None,
            None,
            "Private key (PEM) of --ha-tls-cert (default: in the --ha-tls-cert file).",
        ],
        [
            "ha-tls-peer-name",
            None,
            None,
            "Name (DNS or IP) every broker's certificate must carry, checked when connecting"
            " to it; default: the host of its --ha-brokers address.",
        ],
        [
            "ha-brokers",
            None,
            None,
            "Every broker's AMP address: host:port,host:port (or Qpid's"
            " amqp:tcp:host:port,tcp:host:port).",
        ],
        [
            "ha-public-brokers",
            None,
            None,
            "Client (AMQP) addresses to advertise, host:port,host:port.",
        ],
        [
            "ha-secret-file",
            None,
            None,
            "File of the cluster secret the brokers (and qha-admin) prove themselves with;"
            " made (0600) on first start if missing. Default: DATA-DIR/cluster-secret."
            " Copy it to every broker of the cluster.",
        ],
        [
            "ha-username",
            None,
            None,
            "User brokers authenticate to each other with, instead of the cluster secret;"
            " clients cannot use it.",
        ],
        [
            "ha-password",
            None,
            None,
            "Password for --ha-username (visible in ps: prefer --ha-password-file or"
            " the QHA_HA_PASSWORD environment variable).",
        ],
        ["ha-password-file", None, None, "File whose first line is the password for --ha-username."],
        ["ha-mechanism", None, "PLAIN", "Mechanism for --ha-username (PLAIN)."],
        [
            "ha-backup-timeout",
            None,
            10.0,
            "Seconds a promoted broker waits for the backups it knew before going active.",
            float,
        ],
        [
            "ha-heartbeat",
            None,
            2.0,
            "Seconds between heartbeats on replication links; a link silent for two is dropped.",
            float,
        ],
        [
            "ha-min-backups",
            None,
            0,
            "Confirm a publish to a replicated queue only when at least this many backups hold it.",
            _positiveInt("ha-min-backups", 0, 1000),
        ],
        [
            "ha-queue-replication",
            None,
            "no",
            "yes: allow single-queue replication (qha-admin replicate) outside a cluster.",
        ],
        [
            "ha-coordinator",
            None,
            None,
            "etcd:http://HOST:PORT[,http://HOST:PORT...]: etcd decides the primary and its"
            " epoch, and fails over by itself (without it: promote with qha-admin).",
        ],
        ["ha-coordinator-ca", None, None, "CA certificate (PEM) of https:// etcd endpoints."],
        ["ha-coordinator-cert", None, None, "Client certificate (PEM) for https:// etcd."],
        ["ha-coordinator-key", None, None, "Private key (PEM) of --ha-coordinator-cert."],
        [
            "ha-cluster-name",
            None,
            "qha",
            "The cluster's name in etcd (keys under /qha/NAME/), so clusters share one etcd.",
        ],
        [
            "ha-lease-ttl",
            None,
            10,
            "Seconds a silent primary keeps its etcd lease (at least 2); failover takes about this long.",
            int,
        ],
        [
            "data-dir",
            None,
            "qha-data",
            "Directory where the broker keeps its store (journal), identity and epoch.",
        ],
        [
            "store",
            None,
            "journal",
            "journal: keep durable queues, exchanges, bindings and persistent messages"
            " in DATA-DIR/journal; memory: keep nothing across restarts.",
        ],
    ]

    optFlags = [
        [
            "store-recover",
            None,
            "Start even on a damaged store: keep a copy of it (journal.damaged-TIME)"
            " and go on from the last good record.",
        ],
    ]

    exitOnError = True

    environ: Any = os.environ
    """
    Where C{QHA_HA_PASSWORD} is looked up (tests give a dict).
    """

    def parseOptions(self, options: Any = None) -> None:
        """
        Parse, and on a usage error print one line and exit with status 1
        (twistd would print the whole help first, burying the reason).
        """
        try:
            self.readConfigFile(sys.argv[1:] if options is None else options)
            super().parseOptions(options)
        except usage.UsageError as error:
            if not self.exitOnError:
                raise
            sys.stderr.write(f"twistd qha: error: {error} (see `twistd qha --help`)\n")
            raise SystemExit(1) from None

    def readConfigFile(self, arguments: list[str]) -> None:
        """
        With C{--config FILE} among C{arguments}, take the file's options as
        the defaults the command line then overrides (see L{qha.config}).

        @raise usage.UsageError: naming the file and the key, if the file
            cannot be read, or a key is unknown or of the wrong type.
        """
        from .config import ConfigError, findConfigPath, optionSpecs, readConfig

        path = findConfigPath(arguments, self.shortOpt, self.longOpt)
        if path is None:
            return
        specs = optionSpecs(type(self))
        try:
            values = readConfig(path, specs, self.environ)
            for name, value in values.items():
                coerce = specs[name].coerce
                if specs[name].kind is bool:
                    value = 1 if value else 0
                elif coerce is not None:
                    try:
                        value = coerce(str(value))
                    except ValueError as error:
                        raise ConfigError(f"config file {path}: {name}: {error}") from None
                self[name] = value
            self.configFileValues = {name: self[name] for name in values}
        except ConfigError as error:
            raise usage.UsageError(str(error)) from None

    def opt_version(self) -> None:
        """
        Print qha's version and exit (C{twistd --version} prints Twisted's).
        """
        from . import __version__

        print(f"qha {__version__}")
        raise SystemExit(0)

    def chooseLogFormat(self) -> None:
        """
        C{--log-format json}: name L{qha.logs.jsonObserver} as twistd's
        C{--logger} (twistd starts logging after making the service, with
        that factory), unless twistd was given a logger of its own;
        C{--log-format text}: name L{qha.logs.textObserver}, twistd's own
        observer behind the C{--log-level} filter.
        """
        from .logs import FORMATS, LEVELS, configure, setLevel

        if self["log-format"] not in FORMATS:
            raise usage.UsageError(f"--log-format must be one of {', '.join(FORMATS)}")
        if self["log-level"] not in LEVELS:
            raise usage.UsageError(
                f"--log-level must be one of {', '.join(LEVELS)}, not {self['log-level']!r}"
            )
        parent = getattr(self, "parent", None)
        if parent is None:
            return
        setLevel(self["log-level"])
        if self["log-format"] != "json":
            # --log-level: twistd's own text observer writes every level, so
            # the one twistd would have made goes behind the level filter.
            configure(
                parent.get("logfile"),
                bool(parent.get("nodaemon")),
                syslog=bool(parent.get("syslog")),
                prefix=parent.get("prefix") or "twisted",
                logger=parent.get("logger"),
            )
            parent["logger"] = "qha.logs.textObserver"
            return
        if parent.get("logger") is not None:
            raise usage.UsageError("--log-format json and twistd's --logger cannot be used together")
        if parent.get("syslog"):
            raise usage.UsageError("--log-format json and twistd's --syslog cannot be used together")
        configure(parent.get("logfile"), bool(parent.get("nodaemon")))
        parent["logger"] = "qha.logs.jsonObserver"

    def postOptions(self) -> None:
        """
        Check values that depend on each other and load the users file.
        """
        self.chooseLogFormat()
        try:
            self["memory-high-watermark"] = parseWatermark(
                str(self["memory-high-watermark"])
            )
        except ValueError as error:
            raise usage.UsageError(str(error)) from None
        try:
            self["memory-budget"] = parseMemoryBudget(
                str(self["memory-budget"]), self["memory-high-watermark"]
            )
        except ValueError as error:
            raise usage.UsageError(str(error)) from None
        if self["ha-replicate"] not in REPLICATE_LEVELS:
            raise usage.UsageError(
                f"--ha-replicate must be one of {', '.join(REPLICATE_LEVELS)},"
                f" not {self['ha-replicate']!r}"
            )
        if self["store"] not in ("journal", "memory"):
            raise usage.UsageError(f"--store must be journal or memory, not {self['store']!r}")
        for name in ("ha-cluster", "ha-queue-replication"):
            if self[name] not in ("yes", "no"):
                raise usage.UsageError(f"--{name} must be yes or no, not {self[name]!r}")
        if self["ha-mechanism"] != "PLAIN":
            raise usage.UsageError(
                f"--ha-mechanism {self['ha-mechanism']!r} is not supported; use PLAIN"
            )
        self["ha-password-source"] = None
        if self["ha-password"] is not None and self["ha-password-file"] is not None:
            raise usage.UsageError("give --ha-password or --ha-password-file, not both")
        if self["ha-password-file"] is not None:
            self["ha-password"] = readPasswordFile(self["ha-password-file"])
            self["ha-password-source"] = "file"
        elif self["ha-password"] is not None:
            self["ha-password-source"] = "command line"
        elif self["ha-username"] is not None and PASSWORD_VARIABLE in self.environ:
            self["ha-password"] = self.environ[PASSWORD_VARIABLE]
            self["ha-password-source"] = "environment"
        if (self["ha-username"] is None) != (self["ha-password"] is None):
            raise usage.UsageError("--ha-username and --ha-password go together")
        if self["ha-username"] is not None and self["ha-secret-file"] is not None:
            raise usage.UsageError("give --ha-secret-file or --ha-username, not both")
        if not 0 < self["handshake-timeout"] <= 3600:
            raise usage.UsageError(
                f"--handshake-timeout must be more than 0 and at most 3600 seconds,"
                f" not {self['handshake-timeout']}"
            )
        for name in ("ha-backup-timeout", "ha-heartbeat"):
            if self[name] < 0:
                raise usage.UsageError(f"--{name} must be 0 or more, not {self[name]}")
        self["brokers"] = []
        self["coordinator"] = []
        if self["ha-coordinator"] is not None:
            if self["ha-cluster"] != "yes":
                raise usage.UsageError("--ha-coordinator needs --ha-cluster yes")
            try:
                self["coordinator"] = parseCoordinator(self["ha-coordinator"])
                clusterPrefix(self["ha-cluster-name"])
            except ValueError as error:
                raise usage.UsageError(str(error)) from None
            if self["ha-lease-ttl"] < 2:
                raise usage.UsageError(
                    f"--ha-lease-ttl must be at least 2 (etcd's smallest lease), not"
                    f" {self['ha-lease-ttl']}"
                )
            if (self["ha-coordinator-cert"] is None) != (self["ha-coordinator-key"] is None):
                raise usage.UsageError("--ha-coordinator-cert and --ha-coordinator-key go together")
            secure = any(url.startswith("https://") for url in self["coordinator"])
            if secure and self["ha-coordinator-ca"] is None:
                raise usage.UsageError("https:// etcd endpoints need --ha-coordinator-ca")
        if self["ha-cluster"] == "yes":
            if not self["ha-brokers"] and not self["coordinator"]:
                raise usage.UsageError(
                    "--ha-cluster yes needs --ha-brokers, every broker's AMP address"
                    " (host:port,host:port), or --ha-coordinator"
                )
            if self["ha-brokers"]:
                try:
                    self["brokers"] = parseBrokers(self["ha-brokers"])
                except ValueError as error:
                    raise usage.UsageError(f"--ha-brokers: {error}") from None
        if self["users"] is not None:
            try:
                self["userDatabase"] = UserDatabase.fromFile(self["users"])
            except ValueError as error:
                raise usage.UsageError(str(error)) from None
        else:
            self["userDatabase"] = UserDatabase.default()
        self._checkTLS()
        if self["http-port"] != "none":
            try:
                from twisted.internet import reactor as checking

                serverFromString(checking, self["http-port"])
            except Exception as error:
                raise usage.UsageError(
                    f"--http-port: {self['http-port']!r} is not a valid endpoint ({error});"
                    " use e.g. tcp:15672:interface=127.0.0.1, or none"
                ) from None
        try:
            from twisted.internet import reactor

            amqpServerEndpoint(
                reactor,
                self["port"],
                self["tls-client-ca"],
                self["tls-require-client-cert"] == "yes",
            )
        except Exception as error:
            raise usage.UsageError(
                f"--port: {self['port']!r} is not a valid endpoint ({error});"
                " use e.g. tcp:5672:interface=127.0.0.1"
            ) from None


    def _checkTLS(self) -> None:
        """
        Check and load the TLS options: C{--ha-tls-*} into C{self["haTLS"]}.
        """
        for name in ("tls-require-client-cert",):
            if self[name] not in ("yes", "no"):
                raise usage.UsageError(f"--{name} must be yes or no, not {self[name]!r}")
        if self["tls-require-client-cert"] == "yes" and self["tls-client-ca"] is None:
            raise usage.UsageError("--tls-require-client-cert yes needs --tls-client-ca")
        self["haTLS"] = None
        given = [n for n in ("ha-tls-ca", "ha-tls-cert", "ha-tls-key", "ha-tls-peer-name") if self[n]]
        if not given:
            return
        if self["ha-tls-ca"] is None or self["ha-tls-cert"] is None:
            raise usage.UsageError(
                f"--{given[0]} needs --ha-tls-ca and --ha-tls-cert (and --ha-tls-key unless"
                " the key is in the --ha-tls-cert file)"
            )
        if not self["ha-port"].startswith("tcp"):
            raise usage.UsageError(
                "with --ha-tls-ca, give --ha-port as tcp:PORT:interface=ADDR: qha puts TLS on it"
            )
        try:
            self["haTLS"] = MutualTLS.fromFiles(
                self["ha-tls-ca"],
                self["ha-tls-cert"],
                self["ha-tls-key"],
                self["ha-tls-peer-name"],
            )
        except ValueError as error:
            raise usage.UsageError(str(error)) from None


class ListenService(StreamServerEndpointService):
    """
    Listens on an endpoint for the broker's whole life, and logs the address
    it got (a process started on port 0 says which port it has). A port it
    cannot have at start-up stops the start with one line that says which
    and why (twistd then exits with status 1).
    """

    log = Logger()
    _raiseSynchronously = True

    def __init__(
        self, endpoint: IStreamServerEndpoint, factory: IProtocolFactory, description: str, what: str
    ) -> None:
        """
        @param endpoint: where to listen.
        @param factory: makes the connections' protocols.
        @param description: the endpoint string, for messages.
        @param what: what listens (C{AMQP}, C{AMP}), for messages.
        """
        super().__init__(endpoint, factory)
        self.description = description
        self.what = what

    def privilegedStartService(self) -> None:
        """
        Nothing yet: twistd calls this before C{startService}, outside the
        reporting below, and a failure here would end in a traceback and a
        process that never exits. The port is taken in L{startService}.
        """

    def startService(self) -> None:
        """
        Listen.

        @raise SystemExit: if the port cannot be had.
        """
        try:
            super().privilegedStartService()
            super().startService()
        except Exception as error:
            sys.stderr.write(
                f"twistd qha: error: cannot listen for {self.what} on {self.description}:"
                f" {error}\n"
            )
            raise SystemExit(1) from None
        waiting = self._waitingForPort
        if waiting is not None:
            waiting.addCallback(self._listening)

    def _listening(self, port: IListeningPort) -> IListeningPort:
        """
        Say where it listens.
        """
        address = port.getHost()
        self.log.info(
            "qha {what} listening on {host}:{port}",
            what=self.what,
            host=getattr(address, "host", "?"),
            port=getattr(address, "port", "?"),
        )
        return port


def amqpEndpoint(reactor: Any, config: Options) -> IStreamServerEndpoint:
    """
    The AMQP listener of C{--port} (with C{--tls-client-ca}, see
    L{qha.tls.amqpServerEndpoint}).
    """
    return amqpServerEndpoint(
        reactor,
        config["port"],
        config["tls-client-ca"],
        config["tls-require-client-cert"] == "yes",
    )


class ClientPort(Service):
    """
    The AMQP port of a broker in a cluster: it listens for clients only
    while the broker is the primary (see L{qha.ha.node.ClientListener}), so
    a client's list of addresses lands on the primary; backups refuse
    clients at once (connection refused).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        description: str,
        factory: BrokerFactory,
        endpoint: Callable[[], IStreamServerEndpoint] | None = None,
    ) -> None:
        """
        @param reactor: listens, and keeps time for retries.
        @param description: the endpoint string.
        @param factory: the AMQP factory.
        @param endpoint: makes the endpoint (by default from C{description}).
        """
        self.endpoint = endpoint or (lambda: serverFromString(reactor, description))
        self.reactor = reactor
        self.description = description
        self.factory = factory
        self.port: IListeningPort | None = None
        self._listening: Any = None
        self._retry: Any = None
        self.wanted = False

    def startListening(self) -> None:
        """
        Listen, unless already listening.
        """
        self.wanted = True
        if self.port is not None or self._listening is not None or self._retry is not None:
            return
        self._listening = d = self.endpoint().listen(self.factory)

        def listening(port: IListeningPort) -> None:
            self._listening = None
            if not self.wanted:
                port.stopListening()
                return
            self.port = port
            address = port.getHost()
            self.log.info(
                "qha AMQP listening on {host}:{port}",
                host=getattr(address, "host", "?"),
                port=getattr(address, "port", "?"),
            )

        def failed(failure: Any) -> None:
            # A promoted broker whose address is still held (an old
            # primary that has not let go yet): keep trying.
            self._listening = None
            self.log.warn(
                "qha cannot listen on {description} yet ({error}); trying again in 1s",
                description=self.description,
                error=failure.getErrorMessage(),
            )
            self._retry = self.reactor.callLater(1.0, self._retried)

        d.addCallbacks(listening, failed)

    def _retried(self) -> None:
        """
        Try listening again, if still wanted.
        """
        self._retry = None
        if self.wanted:
            self.startListening()

    def stopListening(self, reason: str = "the broker is stopping") -> Any:
        """
        Stop listening and close the clients' connections with C{reason}.
        """
        self.wanted = False
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self.factory.disconnectAll(reason)
        if self.port is not None:
            port, self.port = self.port, None
            self.log.info("qha AMQP stopped listening: {reason}", reason=reason)
            return port.stopListening()
        return None

    def stopService(self) -> Any:
        """
        Stop listening.
        """
        super().stopService()
        return self.stopListening()


def advertisedAddress(endpoint: str) -> str:
    """
    The C{host:port} other brokers know this one by, from its C{--ha-port}
    endpoint (the interface, or the host name when it listens on all).
    """
    parts = endpoint.split(":")
    port = next((part for part in parts[1:] if part.isdigit()), "")
    for part in parts:
        if part.startswith("port="):
            port = part[len("port="):]
    host = ""
    for part in parts:
        if part.startswith("interface="):
            host = part[len("interface="):]
    if host in ("", "0.0.0.0", "::"):
        import socket

        host = socket.gethostname()
    return f"{host}:{port}"


class StoreService(Service):
    """
    Flushes and closes the store when the broker stops.
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    def stopService(self) -> Any:
        super().stopService()
        return self.store.close()


def storeThread(reactor: Any) -> Any:
    """
    A one-thread pool for the store's writes and fsyncs, started when the
    reactor runs and stopped with it; returns the function that runs a
    write there (writes handed over before it starts wait for it).

    The thread must not start here: C{makeService} runs before twistd
    forks to daemonize, and a thread does not survive a fork. A pool
    started here kept, in the daemon, a worker that no longer existed, and
    every write handed to it (every persistent confirm, once flushes had
    proved slow) waited forever.
    """
    from twisted.internet.threads import deferToThreadPool
    from twisted.python.threadpool import ThreadPool

    pool = ThreadPool(minthreads=1, maxthreads=1, name="qha-store")
    # Stopped (and joined) at the reactor's shutdown; a daemon so that a
    # broker stopping in an unusual way still exits.
    pool.threadFactory = functools.partial(threading.Thread, daemon=True)  # type: ignore[assignment]
    reactor.callWhenRunning(pool.start)
    reactor.addSystemEventTrigger("after", "shutdown", pool.stop)
    return lambda write: deferToThreadPool(reactor, pool, write)


def openStore(config: Options, vhost: VirtualHost, reactor: Any) -> Store:
    """
    Open the store and recover the virtual host from it. A damaged store
    stops the broker with one line that says where, and how to start anyway.
    """
    log = Logger()
    if config["store"] == "memory":
        store = Store(MemoryJournal(), reactor)
        store.attach(vhost)
        return store
    path = os.path.join(config["data-dir"], "journal")
    store = Store(FileJournal(path, recover=config["store-recover"]), reactor)
    try:
        recovered = store.recover(vhost)
    except StoreCorrupt as corrupt:
        sys.stderr.write(
            f"twistd qha: error: the store is damaged: {corrupt}. Nothing was changed."
            " To start anyway from the last good record, keeping a copy of the damaged"
            " file, add --store-recover.\n"
        )
        raise SystemExit(1) from None
    except OSError as error:
        sys.stderr.write(f"twistd qha: error: cannot open the store {path}: {error}\n")
        raise SystemExit(1) from None
    if hasattr(reactor, "callFromThread"):
        # Only now: a thread would keep a broker that refuses to start alive.
        # Flushes start in the reactor thread and move there if slow.
        store.threadSync = storeThread(reactor)
    log.info(
        "recovered {queues} queues and {messages} messages from {path} in {seconds:.2f}s"
        " (epoch {epoch}, position {position})",
        path=path,
        **recovered,
    )
    return store


def httpService(
    config: Options,
    reactor: Any,
    node: HANode,
    factory: BrokerFactory,
    verifier: ThreadPoolVerifier,
    failedLogins: FailedLogins,
) -> ListenService:
    """
    The HTTP port of C{--http-port}: the management API and the health
    checks (see L{qha.web}).
    """
    from .web.broker import ManagedBroker
    from .web.site import managementSite

    broker = ManagedBroker(
        node=node,
        factory=factory,
        users=config["userDatabase"],
        verifier=verifier,
        clock=reactor,
        failedLogins=failedLogins,
        listeners=[
            {"protocol": "amqp", "endpoint": config["port"]},
            {"protocol": "clustering", "endpoint": config["ha-port"]},
            {"protocol": "http", "endpoint": config["http-port"]},
        ],
        clusterName=config["ha-cluster-name"],
        started=reactor.seconds(),
    )
    return ListenService(
        serverFromString(reactor, config["http-port"]),
        managementSite(broker),
        config["http-port"],
        "HTTP",
    )


def messagesHeld(vhosts: Iterable[VirtualHost]) -> int:
    """
    The messages the queues of C{vhosts} hold, ready or unacknowledged
    (paged ones too): each is about two objects the garbage collector
    tracks, an estimate that costs a look per queue (see
    L{CollectorPolicy}'s C{size}; paged in segments, they are fewer, and
    the estimate errs on the side of not scanning).
    """
    return sum(
        queue.messageCount + len(queue.held) for vhost in vhosts for queue in vhost.queues.values()
    )


def makeService(config: Options, reactor: Any = None) -> MultiService:
    """
    The broker's services for twistd: the AMQP listener, and the AMP port
    for admins and (in a cluster) the other brokers.
    """
    if reactor is None:
        from twisted.internet import reactor as globalReactor

        reactor = globalReactor
    # Nothing in the data directory is read before this broker holds it.
    dataDirectory = claimOrExit(config["data-dir"])
    # Paging (issue 15): bodies past the budget go to DATA-DIR/paging; what a
    # previous run paged there is discarded (the journal keeps what lasts).
    pages = PageFiles(os.path.join(config["data-dir"], "paging"))
    resources = Resources(
        highWatermark=config["memory-high-watermark"],
        pager=Pager(pages, budget=config["memory-budget"], segments=True),
    )
    # The page files go when the broker stops (after its services did).
    reactor.addSystemEventTrigger("after", "shutdown", pages.close)
    vhost = VirtualHost("/", resources, clock=reactor)
    vhost.defaultReplicate = config["ha-replicate"]
    cluster = config["ha-cluster"] == "yes"
    state = PersistentState(config["data-dir"])
    options = HAOptions(
        brokers=config["brokers"],
        publicBrokers=config["ha-public-brokers"] or "",
        username=config["ha-username"],
        password=config["ha-password"],
        secret=clusterSecret(config) if config["ha-username"] is None else None,
        replicateDefault=config["ha-replicate"],
        backupTimeout=config["ha-backup-timeout"],
        heartbeat=config["ha-heartbeat"],
        minBackups=config["ha-min-backups"],
        queueReplication=config["ha-queue-replication"] == "yes",
        dataDir=config["data-dir"],
        coordinator=config["coordinator"],
        coordinatorCA=config["ha-coordinator-ca"],
        coordinatorCert=config["ha-coordinator-cert"],
        coordinatorKey=config["ha-coordinator-key"],
        clusterName=config["ha-cluster-name"],
        leaseTTL=config["ha-lease-ttl"],
        amqpAddress=advertisedAddress(config["port"]),
        tls=config.get("haTLS"),
    )
    # Options set at run time win over these (qha-admin set): the journal's
    # apply as the store recovers, in their place among the declarations.
    followSettings(options, vhost, configuredSources(config))
    store = openStore(config, vhost, reactor)
    # A publish's confirm waits for the backups (in a cluster), then the disk.
    gate = ReplicationGate(options, reactor) if cluster else None
    passwords, failedLogins = ThreadPoolVerifier(reactor), FailedLogins(reactor)
    factory = BrokerFactory(
        vhost,
        config["userDatabase"],
        reactor,
        heartbeat=config["heartbeat"],
        frameMax=config["frame-max"],
        channelMax=config["channel-max"],
        maxMessageSize=config["max-message-size"],
        handshakeTimeout=config["handshake-timeout"],
        limits=ConnectionLimits(
            maxConnections=config["max-connections"],
            maxConnectionsPerUser=config["max-connections-per-user"],
            maxHeaderFields=config["max-header-fields"],
        ),
        holders=[gate, store] if gate is not None else [store],
        pacer=gate,
        verifier=passwords,
        failedLogins=failedLogins,
        # With a coordinator, a primary confirms only within its lease (the
        # node is made below; the factory asks it when it confirms).
        mayConfirm=(lambda: node.mayConfirm()) if options.coordinator else None,
    )
    if config["ha-username"] is not None:
        factory.refusedUsers.add(config["ha-username"])
    service = MultiService()
    dataDirectory.setServiceParent(service)
    failedLogins.setServiceParent(service)
    clientPort = ClientPort(
        reactor, config["port"], factory, lambda: amqpEndpoint(reactor, config)
    )
    if cluster:
        clientPort.setServiceParent(service)
    else:
        ListenService(
            amqpEndpoint(reactor, config), factory, config["port"], "AMQP"
        ).setServiceParent(service)
    options.extra["haAddress"] = advertisedAddress(config["ha-port"])
    etcd = etcdFor(reactor, options) if cluster and options.coordinator else None
    node = HANode(
        options,
        vhost,
        reactor,
        clientPort,
        state,
        standalone=not cluster,
        store=store,
        gate=gate,
        etcd=etcd,
    )
    if not cluster:
        for queue in [q for each in VirtualHosts.of(vhost) for q in each.queues.values()]:
            queue.promoted(store.epoch)
        store.positionSource = lambda: (node.epoch, node.position)
    StoreService(store).setServiceParent(service)
    node.setServiceParent(service)
    # One AMP port, one login: replication and admin answer behind it, and
    # nothing but the login before it.
    credentials = options.credentials
    assert credentials is not None
    if config.get("ha-password-source") == "command line":
        Logger().warn(
            "--ha-password is visible to every user of this machine (ps):"
            " prefer --ha-password-file or {variable}",
            variable=PASSWORD_VARIABLE,
        )
    authority = Authority(
        credentials,
        clock=reactor,
        failedLogins=failedLogins,
        users=config["userDatabase"] if config["users"] is not None else None,
    )
    amp = NodeAMPFactory(
        authority, [node.replicationLocator, adminLocator(node, factory)], clock=reactor
    )
    haTLS = config.get("haTLS")
    ListenService(
        serverFromString(reactor, config["ha-port"]),
        amp if haTLS is None else haTLS.wrapServerFactory(amp, clock=reactor),
        config["ha-port"],
        "AMP",
    ).setServiceParent(service)
    if config["http-port"] != "none":
        httpService(config, reactor, node, factory, passwords, failedLogins).setServiceParent(
            service
        )
    # Its threads start last: a port that cannot be had stops the start
    # (twistd exits 1) before any thread exists that would keep the process.
    passwords.setServiceParent(service)
    # SIGHUP reloads the users file (users, tags, permissions).
    ReloadOnSignal(reactor, config["userDatabase"]).setServiceParent(service)
    # What survives a full garbage collection (mostly queued messages) is
    # set aside from later ones (see qha.collector).
    CollectorPolicy(reactor, size=lambda: 2 * messagesHeld(node.vhosts)).setServiceParent(service)
    # Last: READY=1 to systemd (Type=notify) once serving or a ready backup.
    notifier = SystemdNotifier.fromEnvironment(lambda: node.role.name, lambda: node.epoch, reactor)
    if notifier is not None:
        notifier.setServiceParent(service)
    return service
