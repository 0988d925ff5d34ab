"""
The broker's log formats: twistd's text lines, or one JSON object a line
(C{--log-format json}) for log shippers (journald, Loki, Elasticsearch);
and the least level logged (C{--log-level}, C{info} by default) for both.

twistd starts logging after it made the service, with the observer its own
C{--logger} option names; C{--log-format json} sets that option (see
L{qha.tap.Options.postOptions}) to L{jsonObserver}, which writes Twisted's
own JSON (L{twisted.logger.jsonFileLogObserver}: every event field kept, the
message's text in C{log_format}) where twistd would have written text:
standard output under C{-n}, else C{--logfile}.

C{--log-level} needs an observer of its own for the text format too: twistd's
text observer writes every level. Under C{--log-format text} the option names
L{textObserver}, which makes the observer twistd would have made (standard
output, C{--logfile} rotated on SIGUSR1, C{--syslog}, or twistd's own
C{--logger}) and puts the level filter in front of it.

Text lines are lines: under C{--log-format text} the values of an event's
fields (a queue name, a reply text, an HTTP path: text a client chose) are
written with their control characters escaped (L{escapeControl}: C{\\n},
C{\\x1b}, C{\\u2028}), so no value can end a line and start a forged one, or
drive a terminal. The message's format (the code's own text) and a logged
failure's traceback (multi-line by design) are written as they are. The JSON
format needs none of this: JSON strings escape every control character.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import IO, Any, Callable

from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LegacyLogObserverWrapper,
    LogEvent,
    LogLevel,
    PredicateResult,
    formatEvent,
    jsonFileLogObserver,
    textFileLogObserver,
)
from twisted.python.logfile import LogFile
from zope.interface import implementer, provider

FORMATS = ("text", "json")
"""
The values of C{--log-format}.
"""

LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}
"""
The values of C{--log-level}, least first.
"""


@dataclass
class Destination:
    """
    Where twistd was told to log: L{configure} sets it from twistd's options
    before twistd calls L{jsonObserver} or L{textObserver}.

    @ivar syslog: twistd's C{--syslog}, with C{prefix} its C{--prefix}.
    @ivar logger: twistd's own C{--logger}, if it had one (text only).
    """

    logfile: str | None = None
    nodaemon: bool = True
    syslog: bool = False
    prefix: str = "twisted"
    logger: str | None = None


@dataclass
class Threshold:
    """
    The least level logged (C{--log-level}); L{setLevel} sets it.
    """

    level: LogLevel = LogLevel.info


threshold = Threshold()
"""
The one threshold of this process.
"""


def setLevel(name: str) -> None:
    """
    Log C{name} (one of L{LEVELS}) and above from now on.
    """
    threshold.level = LEVELS[name]


@provider(ILogFilterPredicate)
def atThreshold(event: LogEvent) -> PredicateResult:
    """
    C{no} for an event of a level below L{threshold}; every other event
    (one without a level too) passes.
    """
    level = event.get("log_level")
    if isinstance(level, type(LogLevel.info)) and level < threshold.level:
        return PredicateResult.no
    return PredicateResult.maybe


def filtered(observer: ILogObserver) -> ILogObserver:
    """
    C{observer} behind the C{--log-level} filter (read at each event, so a
    level set later applies).
    """
    return FilteringLogObserver(observer, [atThreshold])  # type: ignore[list-item]


def _escapes() -> dict[int, str]:
    """
    The table of L{escapeControl}: each C0 control character (tab, carriage
    return and line feed included), DEL and each C1 control character (NEL,
    U+0085, and the terminal's 8-bit CSI among them), and the Unicode line
    and paragraph separators, to the escape Python's C{repr} writes for it.
    """
    table = {code: repr(chr(code))[1:-1] for code in (*range(0x20), *range(0x7F, 0xA0))}
    table.update({0x2028: "\\u2028", 0x2029: "\\u2029"})
    return table


_ESCAPES = _escapes()


def escapeControl(text: str) -> str:
    """
    C{text} with every control character and line separator written as its
    escape (C{"a\\nb"} becomes C{"a\\\\nb"}), the rest unchanged: one line,
    whatever C{text} holds.
    """
    return text.translate(_ESCAPES)


class _Escaped:
    """
    A field value other than text, seen by the formatter with the control
    characters of whatever it turns into escaped: its C{format}, C{str} and
    C{repr} (for C{{name!r}}), and what the format reaches through it
    (C{{name.attribute}}, C{{name[key]}}, C{{name()}}).
    """

    __slots__ = ("_value",)

    def __init__(self, value: object) -> None:
        """
        Wrap C{value}.
        """
        self._value = value

    def __format__(self, spec: str) -> str:
        """
        C{value}'s own formatting, escaped.
        """
        return escapeControl(format(self._value, spec))

    def __str__(self) -> str:
        """
        C{str(value)}, escaped.
        """
        return escapeControl(str(self._value))

    def __repr__(self) -> str:
        """
        C{repr(value)}, escaped (a class's own C{__repr__} need not escape).
        """
        return escapeControl(repr(self._value))

    def __getattr__(self, name: str) -> object:
        """
        C{value}'s attribute, escaped in turn.
        """
        return escapedValue(getattr(self._value, name))

    def __getitem__(self, key: object) -> object:
        """
        C{value[key]}, escaped in turn.
        """
        return escapedValue(self._value[key])  # type: ignore[index]

    def __call__(self) -> object:
        """
        C{value()} (Twisted's C{{name()}}), escaped in turn.
        """
        return escapedValue(self._value())  # type: ignore[operator]


def escapedValue(value: object) -> object:
    """
    C{value} as the text format should see it: text with its control
    characters escaped, numbers and C{None} as they are, anything else
    wrapped so that what it formats to is escaped.
    """
    if isinstance(value, str):
        return escapeControl(value)
    if value is None or isinstance(value, (int, float)):
        return value
    return _Escaped(value)


UNESCAPED = frozenset(
    {
        "log_format",
        "log_failure",
        "log_text",
        "log_level",
        "log_time",
        "log_namespace",
        "log_logger",
        "log_trace",
        "log_flattened",
    }
)
"""
The fields L{escaping} passes as they are: the message's format (the code's
own text), the failure (its traceback is multi-line by design), the text of
an old-style C{twisted.python.log} event (Twisted's own, tracebacks
included), and Twisted's bookkeeping. C{log_flattened} (an event read back
from JSON) has its values escaped in place of the fields.
"""


def escapedEvent(event: LogEvent) -> LogEvent:
    """
    A copy of C{event} whose field values (all but L{UNESCAPED}) are
    L{escapedValue}s.
    """
    copy = {key: value if key in UNESCAPED else escapedValue(value) for key, value in event.items()}
    flattened = event.get("log_flattened")
    if isinstance(flattened, dict):
        copy["log_flattened"] = {key: escapedValue(value) for key, value in flattened.items()}
    return copy


def escaping(observer: ILogObserver) -> ILogObserver:
    """
    C{observer}, given each event as L{escapedEvent}: what it writes of a
    field's value is one line.
    """
    write: Callable[[LogEvent], None] = observer

    @implementer(ILogObserver)
    def observe(event: LogEvent) -> None:
        write(escapedEvent(event))

    return observe  # type: ignore[return-value]


destination = Destination()
"""
The one destination of this process (twistd runs one application).
"""


def configure(
    logfile: str | None,
    nodaemon: bool,
    syslog: bool = False,
    prefix: str = "twisted",
    logger: str | None = None,
) -> None:
    """
    Remember twistd's C{--logfile}, C{-n}, C{--syslog}, C{--prefix} and
    C{--logger}, for L{jsonObserver} and L{textObserver}.
    """
    destination.logfile = logfile
    destination.nodaemon = nodaemon
    destination.syslog = syslog
    destination.prefix = prefix
    destination.logger = logger


def openDestination() -> IO[str]:
    """
    The stream twistd's text observer would have written to: standard
    output under C{-n} without C{--logfile} (or with C{--logfile -}), else
    the log file (C{twistd.log} by default), appended to.
    """
    logfile = destination.logfile
    if logfile == "-" or (destination.nodaemon and not logfile):
        return sys.stdout
    return LogFile.fromFullPath(logfile or "twistd.log")  # type: ignore[return-value]


def jsonLinesObserver(stream: IO[str]) -> ILogObserver:
    """
    One JSON object a line on C{stream} (no RFC 7464 record separator, so
    C{jq} and shippers read it as JSON lines), each with the formatted
    message in C{text} beside Twisted's fields.
    """
    write = jsonFileLogObserver(stream, recordSeparator="")

    @implementer(ILogObserver)
    def observe(event: LogEvent) -> None:
        write({**event, "text": formatEvent(event)})

    return observe  # type: ignore[return-value]


def jsonObserver() -> ILogObserver:
    """
    twistd's C{--logger} factory for C{--log-format json}, at
    C{--log-level}.
    """
    return filtered(jsonLinesObserver(openDestination()))


def _rotateOnSignal(logFile: LogFile) -> None:
    """
    Rotate C{logFile} on SIGUSR1, as twistd does for its own log file
    (unless something else took the signal).
    """
    import signal

    if signal.getsignal(signal.SIGUSR1) in (None, signal.SIG_DFL, 0):

        def rotate(number: int, frame: object) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(logFile.rotate)  # type: ignore[attr-defined]

        signal.signal(signal.SIGUSR1, rotate)


def textObserver() -> ILogObserver:
    """
    twistd's C{--logger} factory for C{--log-format text}: the observer
    twistd would have made (its C{--logger}, C{--syslog}, standard output
    or the log file), at C{--log-level}; the values written to syslog, the
    file or standard output are L{escaping}. A C{twistd --logger} of the
    user's own gets the events as they are (it formats them its own way).
    """
    from twisted.python.reflect import namedAny

    observer: ILogObserver
    if destination.logger is not None:
        made = namedAny(destination.logger)()
        observer = made if ILogObserver.providedBy(made) else LegacyLogObserverWrapper(made)
    elif destination.syslog:
        from twisted.python import syslog

        emit: Any = syslog.SyslogObserver(destination.prefix).emit
        observer = escaping(LegacyLogObserverWrapper(emit))
    else:
        stream = openDestination()
        if isinstance(stream, LogFile):
            _rotateOnSignal(stream)
        observer = escaping(textFileLogObserver(stream))
    return filtered(observer)


__all__ = [
    "FORMATS",
    "LEVELS",
    "configure",
    "escapeControl",
    "escaping",
    "filtered",
    "jsonLinesObserver",
    "jsonObserver",
    "setLevel",
    "textObserver",
]
