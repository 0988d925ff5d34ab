"""
systemd's readiness protocol (C{Type=notify}, see sd_notify(3)) in a few
lines of the socket module: C{READY=1} once the broker serves clients (a
standalone broker or an active primary) or is a ready backup, C{STATUS=}
with its role whenever the role changes, C{STOPPING=1} when it stops.

Without C{$NOTIFY_SOCKET} (not started by systemd) nothing is sent. The
role is read once a second (one attribute read, off the hot path).
"""

from __future__ import annotations

import os
import socket
from typing import Callable

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from .ha.role import ACTIVE, READY, STANDALONE

SERVING = (STANDALONE, ACTIVE, READY)
"""
The roles in which the broker is ready: it serves clients, or it holds a
live copy and may be promoted.
"""


def datagramSender(address: str) -> Callable[[bytes], None]:
    """
    A function that sends one datagram to systemd's socket at C{address}
    (a path, or C{@name} in the abstract namespace).
    """
    target = "\0" + address[1:] if address.startswith("@") else address

    def send(message: bytes) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, target)

    return send


class SystemdNotifier(Service):
    """
    Tells systemd when the broker is ready, and its role.

    @ivar ready: whether C{READY=1} was sent.
    @ivar status: the last C{STATUS=} sent.
    """

    log = Logger()
    interval = 1.0

    def __init__(
        self,
        role: Callable[[], str],
        epoch: Callable[[], int],
        clock: IReactorTime,
        send: Callable[[bytes], None],
    ) -> None:
        """
        @param role: the broker's role now.
        @param epoch: the broker's epoch now.
        @param clock: for the checks once a second.
        @param send: sends one message to systemd (L{datagramSender}).
        """
        self.role = role
        self.epoch = epoch
        self.clock = clock
        self.send = send
        self.ready = False
        self.status = ""
        self._loop: LoopingCall | None = None
        self._first: IDelayedCall | None = None
        self._failed = False

    @classmethod
    def fromEnvironment(
        cls, role: Callable[[], str], epoch: Callable[[], int], clock: IReactorTime
    ) -> "SystemdNotifier | None":
        """
        A notifier to C{$NOTIFY_SOCKET}, or L{None} when systemd did not set it.
        """
        address = os.environ.get("NOTIFY_SOCKET")
        if not address:
            return None
        return cls(role, epoch, clock, datagramSender(address))

    def _send(self, message: str) -> None:
        """
        Send C{message}; a failure is logged once and ends nothing.
        """
        try:
            self.send(message.encode("utf-8"))
        except OSError as error:
            if not self._failed:
                self._failed = True
                self.log.warn("cannot notify systemd: {error}", error=error)

    def check(self) -> None:
        """
        Send C{STATUS=} if the role changed, and C{READY=1} the first time
        the role is one of L{SERVING}.
        """
        role = self.role()
        status = f"role {role}, epoch {self.epoch()}"
        lines = []
        if status != self.status:
            self.status = status
            lines.append(f"STATUS={status}")
        if not self.ready and role in SERVING:
            self.ready = True
            lines.append("READY=1")
        if lines:
            self._send("\n".join(lines))

    def startService(self) -> None:
        """
        Check at the reactor's first turn and then once a second. Not at
        once: twistd starts services before the reactor installs its signal
        handlers, and a SIGTERM from systemd right after READY=1 would end
        the process without a clean stop.
        """
        super().startService()
        self._loop = LoopingCall(self.check)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)
        self._first = self.clock.callLater(0, self.check)

    def stopService(self) -> None:
        """
        Tell systemd the broker is stopping; stop checking.
        """
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._first is not None and self._first.active():
            self._first.cancel()
        self._first = None
        self._send("STOPPING=1")


__all__ = ["SERVING", "SystemdNotifier", "datagramSender"]
