"""
Tests for L{qha.logs} and C{--log-format}, C{--version} of L{qha.tap.Options}.
"""

from __future__ import annotations

import io
import json
from typing import Any

from twisted.logger import Logger, LogPublisher
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from qha import __version__, logs
from qha.tap import Options


class JSONLinesTests(SynchronousTestCase):
    """
    L{logs.jsonLinesObserver}.
    """

    def test_oneObjectALine(self) -> None:
        """
        Each event is one line of JSON with its fields, its level and the
        formatted text; control characters in fields stay escaped.
        """
        stream = io.StringIO()
        publisher = LogPublisher(logs.jsonLinesObserver(stream))
        log = Logger(namespace="qha.test", observer=publisher)
        log.info("connection opened: {peer}, user {user!r}", peer="127.0.0.1:5", user="a\nb")
        log.warn("second")
        lines = stream.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        first = json.loads(lines[0])
        self.assertEqual(first["peer"], "127.0.0.1:5")
        self.assertEqual(first["text"], "connection opened: 127.0.0.1:5, user 'a\\nb'")
        self.assertEqual(first["log_level"]["name"], "info")
        self.assertEqual(first["log_namespace"], "qha.test")
        self.assertEqual(json.loads(lines[1])["log_level"]["name"], "warn")


class OptionsTests(SynchronousTestCase):
    """
    C{--log-format} and C{--version} of C{twistd qha}.
    """

    def parse(self, parent: dict[str, Any] | None, *arguments: str) -> Options:
        """
        Parse C{arguments} as twistd does for its subcommand (C{parent}:
        twistd's own options, or none).
        """
        options = Options()
        options.exitOnError = False
        self.addCleanup(logs.configure, None, True)
        self.addCleanup(logs.setLevel, "info")
        if parent is not None:
            options.parent = parent  # type: ignore[assignment]
        options.parseOptions(["--data-dir", self.mktemp(), *arguments])
        return options

    def test_textByDefault(self) -> None:
        """
        Without C{--log-format}, the lines are twistd's text, written where
        twistd would have, through L{logs.textObserver} (twistd's own text
        observer writes every level; C{--log-level} needs a filter in front).
        """
        parent: dict[str, Any] = {"logger": None, "logfile": None, "nodaemon": True}
        self.assertEqual(self.parse(parent)["log-format"], "text")
        self.assertEqual(parent["logger"], "qha.logs.textObserver")
        self.assertEqual(logs.destination, logs.Destination(None, True))

    def test_json(self) -> None:
        """
        C{--log-format json} names L{logs.jsonObserver} as twistd's
        C{--logger}, writing where twistd would have.
        """
        self.addCleanup(logs.configure, None, True)
        parent: dict[str, Any] = {"logger": None, "logfile": "/var/log/qha.log", "nodaemon": False}
        self.parse(parent, "--log-format", "json")
        self.assertEqual(parent["logger"], "qha.logs.jsonObserver")
        self.assertEqual(logs.destination, logs.Destination("/var/log/qha.log", False))

    def test_jsonToStandardOutput(self) -> None:
        """
        Under C{-n} without C{--logfile}, JSON goes to standard output.
        """
        import sys

        self.addCleanup(logs.configure, None, True)
        self.parse({"logger": None, "logfile": None, "nodaemon": True}, "--log-format", "json")
        self.assertIs(logs.openDestination(), sys.stdout)

    def test_refused(self) -> None:
        """
        An unknown format, or json with twistd's own --logger or --syslog,
        is a usage error.
        """
        self.assertRaises(usage.UsageError, self.parse, None, "--log-format", "xml")
        self.assertRaises(
            usage.UsageError, self.parse, {"logger": "my.observer", "nodaemon": True}, "--log-format", "json"
        )
        self.assertRaises(
            usage.UsageError, self.parse, {"logger": None, "syslog": True, "nodaemon": True}, "--log-format", "json"
        )

    def test_version(self) -> None:
        """
        C{twistd qha --version} prints qha's version.
        """
        import contextlib

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            self.assertRaises(SystemExit, self.parse, None, "--version")
        self.assertEqual(out.getvalue(), f"qha {__version__}\n")


class LogLevelTests(SynchronousTestCase):
    """
    C{--log-level}: the least level logged, in both formats.
    """

    def setUp(self) -> None:
        """
        Put the process's log destination and level back afterwards.
        """
        self.addCleanup(logs.configure, None, True)
        self.addCleanup(logs.setLevel, "info")

    def parse(self, parent: dict[str, Any], *arguments: str) -> Options:
        """
        Parse C{arguments} under twistd's options C{parent}.
        """
        options = Options()
        options.exitOnError = False
        options.parent = parent  # type: ignore[assignment]
        options.parseOptions(["--data-dir", self.mktemp(), *arguments])
        return options

    def emitAll(self, observer: Any) -> None:
        """
        One event of each level, and one without a level (as an old-style
        C{log.msg} bridged without one), into C{observer}.
        """
        log = Logger(namespace="qha.test", observer=LogPublisher(observer))
        log.debug("at debug")
        log.info("at info")
        log.warn("at warn")
        log.error("at error")
        log.critical("at critical")
        observer({"log_format": "no level", "log_time": 0.0})

    def logged(self, path: str) -> list[str]:
        """
        The messages written to the file at C{path}, in order.
        """
        with open(path, encoding="utf-8") as file:
            text = file.read()
        return [m for m in ("no level", "at debug", "at info", "at warn", "at error", "at critical") if m in text]

    def test_defaultInfo(self) -> None:
        """
        By default the text format drops debug lines and keeps the rest.
        """
        path = self.mktemp()
        self.parse({"logger": None, "logfile": path, "nodaemon": False})
        observer = logs.textObserver()
        self.emitAll(observer)
        self.assertEqual(self.logged(path), ["no level", "at info", "at warn", "at error", "at critical"])

    def test_textLevels(self) -> None:
        """
        C{--log-level error} keeps error and critical lines of the text
        format; C{debug} keeps all.
        """
        path = self.mktemp()
        self.parse({"logger": None, "logfile": path, "nodaemon": False}, "--log-level", "error")
        self.emitAll(logs.textObserver())
        self.assertEqual(self.logged(path), ["no level", "at error", "at critical"])
        other = self.mktemp()
        self.parse({"logger": None, "logfile": other, "nodaemon": False}, "--log-level", "debug")
        self.emitAll(logs.textObserver())
        self.assertEqual(len(self.logged(other)), 6)

    def test_jsonLevels(self) -> None:
        """
        C{--log-level warn} filters the JSON format as well.
        """
        path = self.mktemp()
        parent: dict[str, Any] = {"logger": None, "logfile": path, "nodaemon": False}
        self.parse(parent, "--log-format", "json", "--log-level", "warn")
        self.assertEqual(parent["logger"], "qha.logs.jsonObserver")
        self.emitAll(logs.jsonObserver())
        with open(path, encoding="utf-8") as file:
            texts = [json.loads(line)["text"] for line in file]
        self.assertEqual(texts, ["at warn", "at error", "at critical", "no level"])

    def test_wrapsTwistdLogger(self) -> None:
        """
        A C{twistd --logger} of the user's own is kept, behind the filter.
        """
        parent: dict[str, Any] = {"logger": "qha.test.test_logs.collectingObserver", "nodaemon": True}
        self.parse(parent, "--log-level", "critical")
        self.assertEqual(parent["logger"], "qha.logs.textObserver")
        collected.clear()
        self.emitAll(logs.textObserver())
        self.assertEqual([e.get("log_format") for e in collected], ["at critical", "no level"])

    def test_refused(self) -> None:
        """
        An unknown level is a usage error that lists the levels.
        """
        error = self.assertRaises(
            usage.UsageError, self.parse, {"logger": None, "nodaemon": True}, "--log-level", "verbose"
        )
        self.assertIn("debug, info, warn, error, critical", str(error))


collected: list[dict[str, Any]] = []
"""
What L{collectingObserver}'s observers saw.
"""


def collectingObserver() -> Any:
    """
    A C{twistd --logger} factory for L{LogLevelTests.test_wrapsTwistdLogger}.
    """
    from twisted.logger import ILogObserver
    from zope.interface import provider

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        collected.append(event)

    return observe


class ConnectionLinesTests(SynchronousTestCase):
    """
    A client connection's open and close lines name the peer, the user
    and the vhost.
    """

    def test_openAndClose(self) -> None:
        """
        Logging in and disconnecting each log one line.
        """
        from twisted.internet.task import Clock
        from twisted.internet.testing import EventLoggingObserver
        from twisted.logger import formatEvent, globalLogPublisher

        from qha.amqp.protocol import BrokerFactory
        from qha.broker.vhost import VirtualHost
        from qha.test.support import Client, fastUsers

        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]
        clock = Clock()
        client = Client(BrokerFactory(VirtualHost(clock=clock), fastUsers(), clock))
        client.handshake()
        client.disconnect()
        lines = [formatEvent(event) for event in events if "connection " in formatEvent(event)]
        self.assertEqual(
            [line.split(":")[0] for line in lines], ["connection opened", "connection closed"], lines
        )
        self.assertIn("user 'guest', vhost '/'", lines[0])
        self.assertIn("user 'guest', vhost '/'", lines[1])
