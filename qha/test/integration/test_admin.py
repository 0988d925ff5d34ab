"""
The real C{qha-admin} (L{qha.admin.cli}) in a child process against a real
standalone C{twistd qha}. The unit tests, against in-memory nodes, are in
L{qha.test.test_admin}.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from qha.test.integration.brokerprocess import CHECKOUT, sharedBroker
from qha.test.integration.cluster import freePort


class EndToEndTests(SynchronousTestCase):
    """
    The real C{qha-admin} in a child process against a real standalone
    C{twistd qha}.
    """

    haPort: int = 0

    def setUp(self) -> None:
        """
        Start (or reuse) the class's broker, with its AMP port on a free
        port chosen once for the class.
        """
        cls = type(self)
        if not cls.haPort:
            cls.haPort = freePort()
        self.broker = sharedBroker(
            cls, ["--ha-port", f"tcp:{cls.haPort}:interface=127.0.0.1"]
        )
        self.address = f"127.0.0.1:{cls.haPort}"

    def qhaAdmin(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """
        Run C{python -m qha.admin.cli argv}, for at most 30 seconds.
        """
        environment = dict(os.environ)
        environment["PYTHONPATH"] = CHECKOUT + os.pathsep + environment.get("PYTHONPATH", "")
        # The broker's secret, as an admin on its host gives it.
        environment["QHA_SECRET_FILE"] = self.broker.secretFile
        return subprocess.run(
            [sys.executable, "-m", "qha.admin.cli", *argv],
            capture_output=True,
            text=True,
            timeout=30,
            env=environment,
            cwd=CHECKOUT,
        )

    def test_statusAndQuery(self) -> None:
        """
        C{ping}, C{status} and C{query --json} answer with exit 0;
        C{status --expect active} exits 1 with the reason on stderr.
        """
        done = self.qhaAdmin("-b", self.address, "ping")
        self.assertEqual((done.returncode, done.stdout, done.stderr), (0, f"{self.address} is alive (standalone)\n", ""))
        done = self.qhaAdmin("-b", self.address, "--json", "query")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(json.loads(done.stdout)["role"], "standalone")
        done = self.qhaAdmin("-b", self.address, "status", "--expect", "active")
        self.assertEqual(
            (done.returncode, done.stdout, done.stderr),
            (1, "standalone\n", f"qha-admin: {self.address} is standalone, not active\n"),
        )

    def test_addListDelete(self) -> None:
        """
        C{add queue}, C{queues}, C{del queue}; C{promote} on a standalone
        broker exits 1 with the broker's reason.
        """
        done = self.qhaAdmin("-b", self.address, "add", "queue", "e2e-admin", "--argument", "x-max-length=3")
        self.assertEqual((done.returncode, done.stderr), (0, ""))
        done = self.qhaAdmin("-b", self.address, "--json", "queues")
        queues = {q["name"]: q for q in json.loads(done.stdout)}
        self.assertEqual(queues["e2e-admin"]["messages"], 0)
        done = self.qhaAdmin("-b", self.address, "del", "queue", "e2e-admin")
        self.assertEqual((done.returncode, done.stdout), (0, "queue 'e2e-admin' deleted\n"))
        done = self.qhaAdmin("-b", self.address, "promote")
        self.assertEqual(done.returncode, 1)
        self.assertIn("refused: cannot promote this broker: it is standalone", done.stderr)

    def test_failures(self) -> None:
        """
        Nothing listening: exit 1 and the address in the message; the
        broker's AMQP port is not its AMP port; a bad command line exits 2.
        """
        port = freePort()
        done = self.qhaAdmin("-b", f"127.0.0.1:{port}", "ping")
        self.assertEqual(done.returncode, 1)
        self.assertEqual(
            done.stderr,
            f"qha-admin: cannot connect to 127.0.0.1:{port}: connection refused"
            " (is a qha broker's --ha-port there?)\n",
        )
        done = self.qhaAdmin("-b", f"127.0.0.1:{self.broker.port}", "ping")
        self.assertEqual(done.returncode, 1)
        self.assertIn("does not speak AMP", done.stderr)
        done = self.qhaAdmin("-b", self.address, "status", "--expect", "primary")
        self.assertEqual(done.returncode, 2)
        self.assertIn("invalid choice", done.stderr)
