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
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import IO, Any

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
    or the log file), at C{--log-level}.
    """
    from twisted.python.reflect import namedAny

    observer: ILogObserver
    if destination.logger is not None:
        made = namedAny(destination.logger)()
        observer = made if ILogObserver.providedBy(made) else LegacyLogObserverWrapper(made)
    elif destination.syslog:
        from twisted.python import syslog

        emit: Any = syslog.SyslogObserver(destination.prefix).emit
        observer = LegacyLogObserverWrapper(emit)
    else:
        stream = openDestination()
        if isinstance(stream, LogFile):
            _rotateOnSignal(stream)
        observer = textFileLogObserver(stream)
    return filtered(observer)


__all__ = [
    "FORMATS",
    "LEVELS",
    "configure",
    "filtered",
    "jsonLinesObserver",
    "jsonObserver",
    "setLevel",
    "textObserver",
]
