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


FORGED = "a\n2026-12-05T00:00:00+0000 [forged#info] all is well\x1b[2J\r\u2028\x85"
"""
A queue name a client chose to forge a log line (and clear the terminal).
"""


class EscapingTests(SynchronousTestCase):
    """
    Under C{--log-format text} the values of an event's fields are written
    with their control characters escaped, so a client's text cannot forge
    a line; the code's own format and a failure's traceback are kept.
    """

    def setUp(self) -> None:
        """
        Log to a file of this test, and put the process's destination back
        afterwards.
        """
        self.path = self.mktemp()
        logs.configure(self.path, False)
        self.addCleanup(logs.configure, None, True)

    def written(self) -> str:
        """
        What the observer wrote to the file.
        """
        with open(self.path, encoding="utf-8", newline="") as file:
            return file.read()

    def test_escapeControl(self) -> None:
        """
        C0 controls (tab included), DEL, C1 controls and the Unicode line
        and paragraph separators are written as Python's escapes; other
        text, non-ASCII letters included, is kept.
        """
        self.assertEqual(
            logs.escapeControl("a\nb\r\t\x00\x1b\x7f\x85\x9b\u2028\u2029é €"),
            "a\\nb\\r\\t\\x00\\x1b\\x7f\\x85\\x9b\\u2028\\u2029é €",
        )

    def test_forgedQueueName(self) -> None:
        """
        A passive declare of a queue named to forge a line closes the
        channel with a reply text naming the queue; the text observer
        writes that event, through the real AMQP path, as one line with the
        name's controls escaped.
        """
        from pamqp import commands
        from twisted.logger import globalLogPublisher

        from qha.test.support import ProtocolTestCase, encode

        observer = logs.textObserver()
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

        case = ProtocolTestCase()
        case.setUp()
        client = case.openClient(channels=(1,))
        forged = FORGED.encode("utf-8")
        placeholder = b"Q" * len(forged)
        client.send(
            encode(1, commands.Queue.Declare(queue=placeholder.decode(), passive=True)).replace(
                placeholder, forged
            )
        )
        self.assertEqual(client.received()[0][1].reply_code, 404)
        client.disconnect()
        case.assertNoDelayedCalls()

        lines = self.written().split("\n")
        self.assertEqual(lines[-1], "")
        lines = lines[:-1]
        self.assertEqual(len(lines), 3, lines)
        for line in lines:
            self.assertNotIn("\r", line)
            self.assertNotIn("\x1b", line)
            self.assertNotIn("\u2028", line)
            self.assertNotIn("\x85", line)
        self.assertIn(
            "channel 1: NOT_FOUND - no queue 'a\\n2026-12-05T00:00:00+0000 [forged#info] all is well"
            "\\x1b[2J\\r\\u2028\\x85' in vhost '/'",
            lines[1],
        )
        self.assertFalse(any(line.startswith("2026-12-05T00:00:00+0000") for line in lines))

    def test_everyWayOfFormatting(self) -> None:
        """
        A field that is not text (an object with a C{__repr__} of its own),
        formatted with C{!r}, through an attribute, an index or a call, or
        with a format spec, is escaped as well; numbers are formatted as
        they are.
        """

        class Named:
            """
            An object whose C{repr} and attribute hold a line feed.
            """

            name = "x\ny"

            def __repr__(self) -> str:
                """
                Not escaped by itself.
                """
                return "<\n>"

        observer = logs.textObserver()
        log = Logger(namespace="qha.test", observer=LogPublisher(observer))
        log.info(
            "{a!r} {a.name} {b[0]} {c()} {d:>4} {e:.1f}",
            a=Named(),
            b=["p\rq"],
            c=lambda: "k\x1bl",
            d="\n",
            e=2.25,
        )
        lines = self.written().split("\n")
        self.assertEqual(len(lines), 2, lines)
        self.assertTrue(lines[0].endswith(" <\\n> x\\ny p\\rq k\\x1bl   \\n 2.2"), lines[0])

    def test_formatAndTracebackKept(self) -> None:
        """
        The code's own format is written as it is, and a logged failure's
        traceback keeps its lines (Twisted indents them with a tab), while
        the fields of the same event are escaped.
        """
        observer = logs.textObserver()
        log = Logger(namespace="qha.test", observer=LogPublisher(observer))
        try:
            raise ValueError("boom")
        except ValueError:
            log.failure("failed for {name}", name="n\nm")
        text = self.written()
        self.assertIn("failed for n\\nm\n\tTraceback", text)
        self.assertIn("\tbuiltins.ValueError: boom\n", text)

    def test_ownLoggerUnchanged(self) -> None:
        """
        A C{twistd --logger} of the user's own gets the events as they are:
        it formats them its own way.
        """
        logs.configure(None, True, logger="qha.test.test_logs.collectingObserver")
        collected.clear()
        observer = logs.textObserver()
        observer({"log_format": "{name}", "name": "a\nb", "log_time": 0.0})
        self.assertEqual([e["name"] for e in collected], ["a\nb"])

    def test_syslogEscaped(self) -> None:
        """
        Under C{--syslog} the text sent to syslog is escaped too (Twisted's
        syslog observer would have sent each line of a value as a message
        of its own).
        """
        from twisted.python import syslog

        sent: list[tuple[int, str]] = []
        self.patch(syslog.SyslogObserver, "openlog", lambda *arguments: None)
        self.patch(
            syslog.SyslogObserver, "syslog", staticmethod(lambda priority, text: sent.append((priority, text)))
        )
        logs.configure(None, True, syslog=True, prefix="qha")
        observer = logs.textObserver()
        from twisted.logger import LogLevel

        observer({"log_format": "queue {name}", "name": "a\nb", "log_time": 0.0, "log_system": "s", "log_level": LogLevel.info})
        self.assertEqual([text for _, text in sent], ["[s] queue a\\nb"])
