"""
The broker's log formats: twistd's text lines, or one JSON object a line
(C{--log-format json}) for log shippers (journald, Loki, Elasticsearch).

twistd starts logging after it made the service, with the observer its own
C{--logger} option names; C{--log-format json} sets that option (see
L{qha.tap.Options.postOptions}) to L{jsonObserver}, which writes Twisted's
own JSON (L{twisted.logger.jsonFileLogObserver}: every event field kept, the
message's text in C{log_format}) where twistd would have written text:
standard output under C{-n}, else C{--logfile}.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import IO

from twisted.logger import ILogObserver, LogEvent, formatEvent, jsonFileLogObserver
from twisted.python.logfile import LogFile
from zope.interface import implementer

FORMATS = ("text", "json")
"""
The values of C{--log-format}.
"""


@dataclass
class Destination:
    """
    Where twistd was told to log: L{configure} sets it from twistd's options
    before twistd calls L{jsonObserver}.
    """

    logfile: str | None = None
    nodaemon: bool = True


destination = Destination()
"""
The one destination of this process (twistd runs one application).
"""


def configure(logfile: str | None, nodaemon: bool) -> None:
    """
    Remember twistd's C{--logfile} and C{-n}, for L{jsonObserver}.
    """
    destination.logfile = logfile
    destination.nodaemon = nodaemon


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
    twistd's C{--logger} factory for C{--log-format json}.
    """
    return jsonLinesObserver(openDestination())


__all__ = ["FORMATS", "configure", "jsonLinesObserver", "jsonObserver"]
