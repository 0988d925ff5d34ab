"""
TLS end to end, with real C{twistd qha} processes: pika (and aio-pika) over TLS
checking the broker's certificate, SASL EXTERNAL with a client certificate,
C{qha-admin} over mutual TLS, brokers replicating over mutual TLS, and a broker
with a certificate of another CA refused (both sides say so in their logs).
Certificates are made by C{trustme} when the tests run.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from typing import Any

import pika
import trustme
from twisted.trial.unittest import SynchronousTestCase

from qha.amqp.users import hashPassword
from qha.test.integration.brokerprocess import CHECKOUT
from qha.test.integration.cluster import HOST, ClusterBroker, freePort, startCluster

WAIT = 20.0
"""
Seconds a test waits for a broker to do what it expects.
"""


class Certificates:
    """
    PEM files in a temporary directory: a CA, certificates it issued, and a
    second CA (a stranger's) with one certificate.
    """

    def __init__(self) -> None:
        """
        Make the CAs and certificates: C{broker} (for C{localhost} and
        C{127.0.0.1}), C{admin}, C{alice} (a client, common name C{alice}) and
        C{rogue} (of the other CA, for C{localhost} and C{127.0.0.1}).
        """
        self.directory = tempfile.mkdtemp(prefix="qha-tls-")
        self.ca, self.other = trustme.CA(), trustme.CA()
        self.caFile = self.write("ca.pem", self.ca.cert_pem.bytes())
        self.otherCAFile = self.write("other-ca.pem", self.other.cert_pem.bytes())
        self.files: dict[str, tuple[str, str]] = {}
        for name, authority, identities in [
            ("broker", self.ca, ("localhost", "127.0.0.1")),
            ("admin", self.ca, ("qha-admin",)),
            ("alice", self.ca, ("alice",)),
            ("rogue", self.other, ("localhost", "127.0.0.1")),
        ]:
            issued = authority.issue_cert(*identities, common_name=identities[0])
            self.files[name] = (
                self.write(f"{name}.pem", issued.cert_chain_pems[0].bytes()),
                self.write(f"{name}.key", issued.private_key_pem.bytes()),
            )

    def write(self, name: str, data: bytes) -> str:
        """
        Write C{data} to C{name} in the directory; its path.
        """
        path = os.path.join(self.directory, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def haOptions(self, name: str = "broker", authority: str | None = None) -> list[str]:
        """
        C{--ha-tls-ca/--ha-tls-cert/--ha-tls-key} for certificate C{name}.
        """
        cert, key = self.files[name]
        return ["--ha-tls-ca", authority or self.caFile, "--ha-tls-cert", cert, "--ha-tls-key", key]

    def clientContext(self, name: str | None = None, authority: str | None = None) -> ssl.SSLContext:
        """
        A client's TLS context that checks the broker against C{authority} (the
        cluster's CA by default), with certificate C{name} if given.
        """
        context = ssl.create_default_context(cafile=authority or self.caFile)
        if name is not None:
            context.load_cert_chain(*self.files[name])
        return context


_certificates: Certificates | None = None


def certificates() -> Certificates:
    """
    The certificates every test of this module shares, made on first use.
    """
    global _certificates
    if _certificates is None:
        _certificates = Certificates()
    return _certificates


class StandaloneTLSTests(SynchronousTestCase):
    """
    One broker with TLS on both ports: C{--port ssl:...} with a client CA, and
    mutual TLS on its AMP port.
    """

    def setUp(self) -> None:
        """
        Start a broker for the test (stopped at cleanup).
        """
        self.certs = certificates()
        usersFile = self.certs.write(
            "users", f"alice:{hashPassword('wonderland', n=2**4)}\n".encode()
        )
        cert, key = self.certs.files["broker"]
        self.haPort = freePort()
        self.dataDirectory = tempfile.mkdtemp(prefix="qha-tls-broker-")
        self.addCleanup(shutil.rmtree, self.dataDirectory, True)
        port = freePort()
        self.broker = ClusterBroker(
            port,
            self.haPort,
            self.dataDirectory,
            [
                "--port",
                f"ssl:{port}:interface=127.0.0.1:privateKey={key}:certKey={cert}",
                "--tls-client-ca",
                self.certs.caFile,
                "--users",
                usersFile,
                "--ha-port",
                f"tcp:{self.haPort}:interface=127.0.0.1",
                "--data-dir",
                self.dataDirectory,
                *self.certs.haOptions(),
            ],
        )
        self.addCleanup(self.broker.stop)
        self.broker.start()
        deadline = time.monotonic() + WAIT
        while not self.broker.amqpListening:
            self.assertLess(time.monotonic(), deadline, self.broker.output(40))
            self.broker.waitForOutput(0.5)

    def parameters(self, context: ssl.SSLContext, **overrides: Any) -> pika.ConnectionParameters:
        """
        pika parameters for the broker over TLS, checking its name C{localhost}.
        """
        settings: dict[str, Any] = dict(
            host=HOST,
            port=self.broker.port,
            ssl_options=pika.SSLOptions(context, "localhost"),
            credentials=pika.PlainCredentials("alice", "wonderland"),
            connection_attempts=1,
            socket_timeout=5,
            stack_timeout=10,
        )
        settings.update(overrides)
        return pika.ConnectionParameters(**settings)

    def roundTrip(self, connection: pika.BlockingConnection) -> None:
        """
        Declare a queue, publish to it with confirms, get the message back.
        """
        channel = connection.channel()
        channel.confirm_delivery()
        queue = channel.queue_declare("", exclusive=True).method.queue
        channel.basic_publish("", queue, b"over TLS")
        _, _, body = channel.basic_get(queue, auto_ack=True)
        self.assertEqual(body, b"over TLS")

    def test_pika(self) -> None:
        """
        pika connects over TLS, checking the broker's certificate, and logs in
        with a password.
        """
        connection = pika.BlockingConnection(self.parameters(self.certs.clientContext()))
        self.addCleanup(connection.close)
        self.roundTrip(connection)

    def test_bench(self) -> None:
        """
        C{qha-bench} runs over C{amqps://} with C{cacertfile}: every message
        published is confirmed and consumed. With the other CA it refuses
        the broker's certificate and says so.
        """
        url = f"amqps://alice:wonderland@{HOST}:{self.broker.port}/?cacertfile="
        command = [sys.executable, "-m", "qha_bench.bench", "--messages", "500", "--confirm", "50"]
        done = subprocess.run(
            [*command, "--json", "--url", url + self.certs.caFile],
            capture_output=True, text=True, timeout=60, cwd=CHECKOUT,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        report = json.loads(done.stdout)
        self.assertEqual(
            (report["published"], report["confirmed"], report["consumed"], report["lost"]),
            (500, 500, 500, 0),
        )
        self.assertTrue(report["url"].startswith("amqps://alice@"), report["url"])
        refused = subprocess.run(
            [*command, "--url", url + self.certs.otherCAFile],
            capture_output=True, text=True, timeout=60, cwd=CHECKOUT,
        )
        self.assertEqual(refused.returncode, 1, refused.stderr)
        self.assertIn("CERTIFICATE_VERIFY_FAILED", refused.stderr)

    def test_pikaRefusesOtherCA(self) -> None:
        """
        A client that trusts another CA does not connect: the broker's
        certificate is checked.
        """
        self.assertRaises(
            ssl.SSLCertVerificationError,
            pika.BlockingConnection,
            self.parameters(self.certs.clientContext(authority=self.certs.otherCAFile)),
        )

    def test_external(self) -> None:
        """
        SASL EXTERNAL: a client with a certificate whose common name is a user
        logs in as that user, without a password.
        """
        connection = pika.BlockingConnection(
            self.parameters(
                self.certs.clientContext("alice"),
                credentials=pika.credentials.ExternalCredentials(),
            )
        )
        self.addCleanup(connection.close)
        self.roundTrip(connection)

    def test_externalWithoutUser(self) -> None:
        """
        SASL EXTERNAL with a certificate whose common name is no user is refused.
        """
        self.assertRaises(
            pika.exceptions.ProbableAuthenticationError,
            pika.BlockingConnection,
            self.parameters(
                self.certs.clientContext("admin"),
                credentials=pika.credentials.ExternalCredentials(),
            ),
        )

    def test_aioPika(self) -> None:
        """
        aio-pika connects over TLS (C{amqps://}), checking the broker's certificate.
        """
        import aio_pika

        async def run() -> bytes:
            connection = await asyncio.wait_for(
                aio_pika.connect(
                    f"amqps://alice:wonderland@localhost:{self.broker.port}/",
                    ssl_context=self.certs.clientContext(),
                ),
                10,
            )
            async with connection:
                channel = await connection.channel()
                queue = await channel.declare_queue(exclusive=True)
                await channel.default_exchange.publish(
                    aio_pika.Message(b"aio over TLS"), routing_key=queue.name
                )
                message = await queue.get(timeout=5)
                assert message is not None
                await message.ack()
                return message.body

        self.assertEqual(asyncio.run(run()), b"aio over TLS")

    def qhaAdmin(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """
        Run C{python -m qha.admin.cli -b BROKER argv} with the broker's secret, for
        at most 30 seconds.
        """
        environment = dict(os.environ)
        environment["PYTHONPATH"] = CHECKOUT + os.pathsep + environment.get("PYTHONPATH", "")
        environment["QHA_SECRET_FILE"] = self.broker.secretFile
        return subprocess.run(
            [sys.executable, "-m", "qha.admin.cli", "-b", f"127.0.0.1:{self.haPort}", *argv],
            capture_output=True,
            text=True,
            timeout=30,
            env=environment,
            cwd=CHECKOUT,
        )

    def test_admin(self) -> None:
        """
        C{qha-admin} with a certificate of the cluster's CA is answered; without
        TLS it is refused, says why, and the broker logs the refusal in one line.
        """
        cert, key = self.certs.files["admin"]
        done = self.qhaAdmin("--tls-ca", self.certs.caFile, "--tls-cert", cert, "--tls-key", key, "status")
        self.assertEqual((done.returncode, done.stdout.strip()), (0, "standalone"), done.stderr)
        mark = self.broker.linesLogged
        done = self.qhaAdmin("status")
        self.assertEqual(done.returncode, 1)
        self.assertIn("does that use TLS: give --tls-ca", done.stderr)
        rogue, rogueKey = self.certs.files["rogue"]
        done = self.qhaAdmin(
            "--tls-ca", self.certs.caFile, "--tls-cert", rogue, "--tls-key", rogueKey, "status"
        )
        self.assertEqual(done.returncode, 1)
        self.assertIn("failed the TLS handshake", done.stderr)
        deadline = time.monotonic() + WAIT
        while True:
            refusals = [
                line
                for line in self.broker.linesSince(mark)
                if "refused a TLS connection to the AMP port from 127.0.0.1:" in line
            ]
            if len(refusals) >= 2 or time.monotonic() > deadline:
                break
            self.broker.waitForOutput(0.5)
        self.assertEqual(len(refusals), 2, self.broker.output(30))


class ClusterTLSTests(SynchronousTestCase):
    """
    Brokers that replicate over mutual TLS; a broker with a certificate of
    another CA is refused.
    """

    def test_replicationAndRefusal(self) -> None:
        """
        Two brokers with certificates of one CA replicate a queue's messages; a
        third with a certificate of another CA cannot join: it logs that the
        primary failed its TLS check, and the primary logs that it refused it.
        """
        certs = certificates()
        cluster = startCluster(
            self, 2, certs.haOptions(), ampContext=certs.clientContext("admin")
        )
        cluster.waitForBackups(0, 1, WAIT)
        connection = cluster.connect(0)
        self.addCleanup(connection.close)
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare("tls-q", durable=True, arguments={"qpid.replicate": "all"})
        for index in range(5):
            channel.basic_publish("", "tls-q", f"m{index}".encode())

        def backupHolds() -> bool:
            rows = {row["name"]: row for row in cluster.listObjects(1, "queues")}
            return rows.get("tls-q", {}).get("messages") == 5

        deadline = time.monotonic() + WAIT
        while not backupHolds():
            self.assertLess(time.monotonic(), deadline, cluster.brokers[1].output(40))
            cluster.brokers[1].waitForOutput(0.1)

        # A stranger: its certificate is of another CA, and it trusts that CA.
        primary = cluster.brokers[0]
        mark = primary.linesLogged
        dataDirectory = tempfile.mkdtemp(prefix="qha-rogue-")
        self.addCleanup(shutil.rmtree, dataDirectory, True)
        ampPort = freePort()
        rogue = ClusterBroker(
            freePort(),
            ampPort,
            dataDirectory,
            [
                "--ha-cluster",
                "yes",
                "--ha-brokers",
                f"{HOST}:{primary.ampPort}",
                "--ha-port",
                f"tcp:{ampPort}:interface={HOST}",
                "--data-dir",
                dataDirectory,
                "--ha-secret-file",
                cluster.secretFile or "",
                *certs.haOptions("rogue", certs.otherCAFile),
            ],
        )
        self.addCleanup(rogue.stop)
        rogue.start()
        deadline = time.monotonic() + WAIT
        while True:
            said = [line for line in rogue.linesSince(0) if "failed the TLS handshake" in line]
            heard = [
                line
                for line in primary.linesSince(mark)
                if "refused a TLS connection to the AMP port from" in line
            ]
            if (said and heard) or time.monotonic() > deadline:
                break
            rogue.waitForOutput(0.1)
        self.assertTrue(said, rogue.output(40))
        self.assertIn(f"{HOST}:{primary.ampPort} failed the TLS handshake", said[0])
        self.assertTrue(heard, primary.output(40))
        self.assertEqual(len(said), 1, "logged once per peer")
        self.assertEqual(cluster.role(0), "active")
