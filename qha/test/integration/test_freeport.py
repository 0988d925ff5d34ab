"""
Tests for L{qha.test.integration.brokerprocess.freePort}: the harness's free
loopback ports.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from qha.test.integration import brokerprocess


class ReusingSocket:
    """
    A socket whose bind to port 0 gets the ports of C{ports} in turn, as a
    kernel that gives a port just closed again may.
    """

    ports: list[int] = []

    def __init__(self, *args: Any) -> None:
        self.port = 0

    def __enter__(self) -> "ReusingSocket":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def bind(self, address: tuple[str, int]) -> None:
        self.port = self.ports.pop(0)

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


class FreePortTests(SynchronousTestCase):
    """
    Tests for L{brokerprocess.freePort}.
    """

    def test_neverTwice(self) -> None:
        """
        A port given once is not given again, even when the kernel hands
        it out again (a cluster broker's AMQP and AMP ports once got the
        same one).
        """
        self.patch(brokerprocess, "_handedOut", set())
        ReusingSocket.ports = [40249, 40249, 40249, 40250]
        self.patch(brokerprocess.socket, "socket", ReusingSocket)
        self.assertEqual(brokerprocess.freePort(), 40249)
        self.assertEqual(brokerprocess.freePort(), 40250)
        self.assertEqual(ReusingSocket.ports, [])

    def test_real(self) -> None:
        """
        With the real socket module, the ports are distinct and free.
        """
        self.patch(brokerprocess, "_handedOut", set())
        ports = [brokerprocess.freePort() for _ in range(50)]
        self.assertEqual(len(set(ports)), 50)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", ports[-1]))
