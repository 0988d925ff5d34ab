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
        if parent is not None:
            options.parent = parent  # type: ignore[assignment]
        options.parseOptions(["--data-dir", self.mktemp(), *arguments])
        return options

    def test_textByDefault(self) -> None:
        """
        Without C{--log-format}, twistd's logger is left alone.
        """
        parent: dict[str, Any] = {"logger": None, "logfile": None, "nodaemon": True}
        self.assertEqual(self.parse(parent)["log-format"], "text")
        self.assertIsNone(parent["logger"])

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
