"""
The AMP port's authentication with real C{twistd qha} processes and the
real C{qha-admin} (issue 12): nothing but the login answers before a
login; a wrong secret is refused and logged once; brokers started together
on one secret file share the secret it gets; brokers with different
secrets do not form a cluster; C{qha-admin} finds the secret of a broker
started in its directory; and a paused primary (SIGSTOP) with
authentication on does not hold up the promotion of a backup.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from typing import Any

from twisted.protocols import amp
from twisted.trial.unittest import SynchronousTestCase

from qha.admin.commands import DeleteObject, Query
from qha.datadir import SECRET_NAME, readSecret
from qha.ha.auth import Credentials
from qha.ha.commands import Heartbeat, Hello, Subscribe
from qha.test.integration.brokerprocess import CHECKOUT, BrokerProcess
from qha.test.integration.cluster import (
    HOST,
    BlockingAMP,
    Cluster,
    ClusterBroker,
    RemoteAMPError,
    callAMP,
    freePort,
    startCluster,
)

WAIT = 15.0
"""
The most seconds a test waits for something a broker does.
"""


def qhaAdmin(
    argv: list[str], cwd: str = CHECKOUT, environ: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """
    Run C{python -m qha.admin.cli argv} in C{cwd}, for at most C{timeout}
    seconds, without C{QHA_SECRET_FILE} unless C{environ} gives it.
    """
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in ("QHA_SECRET_FILE", "QHA_PASSWORD")
    }
    environment["PYTHONPATH"] = CHECKOUT + os.pathsep + environment.get("PYTHONPATH", "")
    environment.update(environ or {})
    return subprocess.run(
        [sys.executable, "-m", "qha.admin.cli", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
        cwd=cwd,
    )


def waitForLine(broker: ClusterBroker, text: str, timeout: float = WAIT) -> str:
    """
    Wait until C{broker} has logged a line holding C{text}, waking up
    whenever it logs something.

    @return: the line.
    @raise AssertionError: after C{timeout} seconds, with its output.
    """
    deadline = time.monotonic() + timeout
    while True:
        for line in broker.output(5000).splitlines():
            if text in line:
                return line
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{broker!r} did not log {text!r}:\n{broker.output(60)}")
        broker.waitForOutput(min(left, 0.2))


class AuthenticationTests(SynchronousTestCase):
    """
    A cluster's AMP port with the default, a cluster secret.
    """

    def directory(self) -> str:
        """
        A temporary directory, removed at the end of the test.
        """
        directory = tempfile.mkdtemp(prefix="qha-auth-")
        self.addCleanup(shutil.rmtree, directory, True)
        return directory

    def test_unauthenticated(self) -> None:
        """
        Before a login the admin and replication commands are refused,
        a rogue L{Hello} claiming a huge epoch changes nothing; a wrong
        secret is refused, and logged once for two tries.
        """
        cluster = startCluster(self, 1)
        port = cluster.brokers[0].ampPort
        commands: list[tuple[type[amp.Command], dict[str, Any]]] = [
            (Query, {}),
            (DeleteObject, {"kind": "queue", "name": "q"}),
            (Subscribe, {"brokerId": "x", "epoch": 0, "address": "", "holdings": b"{}"}),
            (Hello, {"brokerId": "rogue", "epoch": 1000000, "role": "active"}),
            (Heartbeat, {"epoch": 1000000}),
        ]
        with BlockingAMP(port) as client:
            for command, arguments in commands:
                with self.assertRaises(RemoteAMPError) as caught:
                    client.call(command, **arguments)
                self.assertEqual(caught.exception.code, "NOT_AUTHENTICATED")
            for _ in range(2):
                with self.assertRaises(RemoteAMPError) as caught:
                    client.login(Credentials.fromSecret(b"not the secret of this cluster"))
                self.assertIn("wrong cluster secret", caught.exception.description)
        state = cluster.query(0)
        self.assertEqual((state["role"], state["epoch"]), ("active", 1))
        waitForLine(cluster.brokers[0], "login refused from 127.0.0.1")
        lines = cluster.brokers[0].output(5000)
        self.assertEqual(lines.count("login refused from 127.0.0.1"), 1)

    def test_sharedSecretFile(self) -> None:
        """
        Two brokers started at once on one secret file that does not exist
        yet: it is made once, mode 0600, and both accept its secret.
        """
        root = self.directory()
        secretFile = os.path.join(root, "shared-secret")
        brokers = []
        for index in range(2):
            dataDirectory = os.path.join(root, f"broker{index}")
            ampPort = freePort()
            broker = ClusterBroker(
                freePort(),
                ampPort,
                dataDirectory,
                ["--ha-port", f"tcp:{ampPort}:interface={HOST}", "--data-dir", dataDirectory,
                 "--ha-secret-file", secretFile],
            )
            self.addCleanup(broker.kill)
            brokers.append(broker)
        for broker in brokers:
            broker.launch()
        for broker in brokers:
            broker.waitUntilListening()
        self.assertEqual(stat.S_IMODE(os.stat(secretFile).st_mode), 0o600)
        self.assertEqual(sorted(os.listdir(root)), ["broker0", "broker1", "shared-secret"])
        credentials = Credentials.fromSecret(readSecret(secretFile))
        for broker in brokers:
            self.assertEqual(callAMP(broker.ampPort, Query, credentials=credentials)["state"][:1], "{")
            self.assertFalse(os.path.exists(os.path.join(broker.dataDirectory, SECRET_NAME)))

    def test_differentSecrets(self) -> None:
        """
        A broker with another secret does not join the cluster: it stays
        joining and says why in one line; the primary logs the refusals.
        """
        other = os.path.join(self.directory(), "other-secret")
        cluster = Cluster(2, brokerArguments=[[], ["--ha-secret-file", other]])
        self.addCleanup(cluster.stop)
        cluster.start()
        cluster.startPrimary(0)
        line = waitForLine(cluster.brokers[1], "refused this broker's login")
        self.assertIn(f"127.0.0.1:{cluster.brokers[0].ampPort}", line)
        self.assertIn("share one cluster secret", line)
        waitForLine(cluster.brokers[0], "wrong cluster secret")
        credentials = Credentials.fromSecret(readSecret(other))
        state = callAMP(cluster.brokers[1].ampPort, Query, credentials=credentials)
        self.assertIn('"role": "joining"', state["state"])
        self.assertEqual(cluster.query(0)["backups"], [])

    def test_adminFindsTheSecret(self) -> None:
        """
        C{qha-admin} run in the directory where a broker was started with
        the default C{--data-dir} finds its secret; elsewhere it says in
        one line what to give.
        """
        root = self.directory()
        ampPort = freePort()
        broker = BrokerProcess(
            ["--ha-port", f"tcp:{ampPort}:interface={HOST}",
             "--data-dir", os.path.join(root, "qha-data")]
        )
        self.addCleanup(broker.stop)
        broker.start()
        address = f"{HOST}:{ampPort}"
        done = qhaAdmin(["-b", address, "ping"], cwd=root)
        self.assertEqual((done.returncode, done.stdout, done.stderr), (0, f"{address} is alive (standalone)\n", ""))
        done = qhaAdmin(["-b", address, "ping"], cwd=self.directory())
        self.assertEqual(
            (done.returncode, done.stderr),
            (
                1,
                f"qha-admin: {address} refused: log in first with the cluster secret (give"
                " --secret-file with a copy of the broker's DATA-DIR/cluster-secret, or set"
                " $QHA_SECRET_FILE)\n",
            ),
        )


class PausedPrimaryTests(SynchronousTestCase):
    """
    Issue 12's finding: with authentication on, a paused primary blocked
    every promotion (the login had no deadline).
    """

    def test_promoteBesidePausedPrimary(self) -> None:
        """
        Three brokers, the primary SIGSTOPped: C{qha-admin promote} on a
        backup succeeds within a bound, and the old primary, once resumed,
        is no longer active.
        """
        cluster = startCluster(self, 3, ["--ha-heartbeat", "0.5"])
        cluster.pause(0)
        self.addCleanup(cluster.resume, 0)
        started = time.monotonic()
        done = qhaAdmin(
            ["-b", f"{HOST}:{cluster.brokers[1].ampPort}", "--secret-file",
             str(cluster.secretFile), "--timeout", "20", "promote"]
        )
        elapsed = time.monotonic() - started
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("promoted", done.stdout)
        self.assertLess(elapsed, 15)
        cluster.waitForRole(1, "active", WAIT)
        cluster.resume(0)
        cluster.waitFor(0, lambda state: state["role"] != "active", WAIT, "the old primary to step down")
