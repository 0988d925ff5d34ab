"""
The real C{twistd qha} at start-up: a port it cannot have stops it with one
line and exit status 1 (it used to hang, its store thread keeping the
process alive after the failed start).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from qha.test.integration.brokerprocess import runBroker


class PortInUseTests(SynchronousTestCase):
    """
    A broker started on a port another process holds.
    """

    def test_exitsWithOneLine(self) -> None:
        """
        The broker exits 1 (within the bound of C{subprocess.run}) with one
        line on standard error naming the port, and no traceback.
        """
        directory = tempfile.mkdtemp(prefix="qha-port-")
        self.addCleanup(shutil.rmtree, directory, True)
        holder = socket.socket()
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = runBroker(
            f"tcp:{port}:interface=127.0.0.1",
            ["--ha-port", "tcp:0:interface=127.0.0.1", "--data-dir", os.path.join(directory, "data")],
        )
        self.assertEqual(result.returncode, 1, result)
        lines = [line for line in result.stdout.decode().splitlines() if "error" in line]
        self.assertEqual(len(lines), 1, result.stdout.decode())
        self.assertIn(f"cannot listen for AMQP on tcp:{port}:interface=127.0.0.1", lines[0])
        self.assertNotIn(b"Traceback", result.stdout + result.stderr)
