"""
The HTTP port of a real C{twistd qha}, called by real clients of RabbitMQ's
management API: pyrabbit2 always, Debian's C{rabbitmqadmin} where it is
installed; and the health checks of a two-broker cluster.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
from typing import IO, Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from qha.test.integration.brokerprocess import BrokerProcess
from qha.test.integration.cluster import freePort, startCluster

TIMEOUT = 10.0
"""
Seconds one HTTP call or one rabbitmqadmin run may take.
"""


def status(port: int, path: str) -> tuple[int, str]:
    """
    The status and body of C{GET path} on C{port}, without credentials.
    """
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=TIMEOUT) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def api(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """
    The status and JSON body (L{None} if empty) of an API call on C{port}
    as C{guest}.
    """
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={
            "Authorization": "Basic " + base64.b64encode(b"guest:guest").decode(),
            "Content-Type": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
            content = answer.read()
            return answer.status, json.loads(content) if content else None
    except urllib.error.HTTPError as error:
        content = error.read()
        return error.code, json.loads(content) if content else None


class _Watched:
    """
    A broker's output stream that sets an event when the broker says it
    listens for HTTP.
    """

    def __init__(self, stream: IO[bytes], listening: threading.Event) -> None:
        """
        @param stream: the broker's output.
        @param listening: set at the HTTP listening line.
        """
        self.stream = stream
        self.listening = listening

    def readline(self) -> bytes:
        """
        The next line, noting the HTTP listening line.
        """
        line = self.stream.readline()
        if b"qha HTTP listening" in line:
            self.listening.set()
        return line

    def close(self) -> None:
        """
        Close the stream.
        """
        self.stream.close()


class HTTPBroker(BrokerProcess):
    """
    A broker process whose start waits for its HTTP port too (it listens
    just after the AMQP port, whose line ends L{BrokerProcess.start}).
    """

    def __init__(self, arguments: Any) -> None:
        """
        @param arguments: see L{BrokerProcess}.
        """
        super().__init__(arguments)
        self.httpListening = threading.Event()

    def _read(self, stream: IO[bytes]) -> None:
        """
        Read as L{BrokerProcess} does, watching for the HTTP line.
        """
        super()._read(_Watched(stream, self.httpListening))  # type: ignore[arg-type]

    def start(self, timeout: float = TIMEOUT) -> None:
        """
        Start, and wait until the HTTP port listens.
        """
        super().start()
        if not self.httpListening.wait(timeout):
            output = self.output()
            self.stop()
            raise AssertionError(f"the broker did not listen for HTTP:\n{output}")


class StandaloneHTTPTests(SynchronousTestCase):
    """
    One standalone broker with its HTTP port on a free port.
    """

    def setUp(self) -> None:
        """
        Start the broker.
        """
        self.httpPort = freePort()
        self.broker = HTTPBroker(
            ["--store", "memory", "--http-port", f"tcp:{self.httpPort}:interface=127.0.0.1"]
        )
        self.broker.start()
        self.addCleanup(self.broker.stop)

    def test_pyrabbit(self) -> None:
        """
        pyrabbit2 declares, lists, publishes to, gets from and deletes a
        queue.
        """
        from pyrabbit2.api import Client

        client = Client(f"127.0.0.1:{self.httpPort}", "guest", "guest", timeout=TIMEOUT)
        self.assertTrue(client.is_alive())
        client.create_queue("/", "pyrabbit-q", durable=False)
        self.assertIn("pyrabbit-q", [q["name"] for q in client.get_queues()])
        self.assertTrue(client.publish("/", "amq.default", "pyrabbit-q", "hello"))
        self.assertFalse(client.publish("/", "amq.direct", "nowhere", "lost"))
        (message,) = client.get_messages("/", "pyrabbit-q", count=1, requeue=False)
        self.assertEqual(message["payload"], "hello")
        self.assertEqual(client.get_queue_depth("/", "pyrabbit-q"), 0)
        self.assertEqual(client.get_overview()["product_name"], "qha")
        client.delete_queue("/", "pyrabbit-q")
        self.assertNotIn("pyrabbit-q", [q["name"] for q in client.get_queues()])

    def test_pyrabbitSecondVhost(self) -> None:
        """
        pyrabbit2 adds a virtual host, declares a queue in it, publishes
        to it and reads its depth; the queue is in that virtual host only.
        """
        from pyrabbit2.api import Client

        client = Client(f"127.0.0.1:{self.httpPort}", "guest", "guest", timeout=TIMEOUT)
        client.create_vhost("vh2")
        self.assertIn("vh2", client.get_vhost_names())
        client.create_queue("vh2", "pyrabbit-vh2", durable=False)
        self.assertEqual([q["name"] for q in client.get_queues("vh2")], ["pyrabbit-vh2"])
        self.assertEqual(client.get_queues("/"), [])
        self.assertTrue(client.publish("vh2", "amq.default", "pyrabbit-vh2", "in vh2"))
        self.assertEqual(client.get_queue_depth("vh2", "pyrabbit-vh2"), 1)
        self.assertEqual(
            [(q["vhost"], q["name"]) for q in client.get_queues()], [("vh2", "pyrabbit-vh2")]
        )

    def test_rabbitmqadmin(self) -> None:
        """
        Debian's rabbitmqadmin, unchanged: list queues, declare and delete a
        queue, publish, get, export definitions.
        """
        command = shutil.which("rabbitmqadmin")
        if command is None:
            raise SkipTest(
                "rabbitmqadmin is not installed (Debian: apt-get install rabbitmq-server)"
            )
        probe = subprocess.run([command, "--version"], capture_output=True, text=True, timeout=TIMEOUT)
        if probe.returncode != 0:
            raise SkipTest(f"rabbitmqadmin does not run here: {probe.stderr.strip().splitlines()[-1:]}")

        def run(*arguments: str) -> str:
            done = subprocess.run(
                [command, "-H", "127.0.0.1", "-P", str(self.httpPort), "-u", "guest",
                 "-p", "guest", "-f", "raw_json", *arguments],
                capture_output=True, text=True, timeout=TIMEOUT,
            )
            self.assertEqual(done.returncode, 0, done.stderr + done.stdout)
            return done.stdout

        run("declare", "queue", "name=admin-q", "durable=false")
        self.assertIn("admin-q", [q["name"] for q in json.loads(run("list", "queues"))])
        run("publish", "routing_key=admin-q", "payload=hi")
        (message,) = json.loads(run("get", "queue=admin-q", "ackmode=ack_requeue_false"))
        self.assertEqual(message["payload"], "hi")
        self.assertEqual(json.loads(run("list", "exchanges"))[0]["name"], "")
        run("delete", "queue", "name=admin-q")
        self.assertEqual(json.loads(run("list", "queues")), [])

        # A second virtual host: -V names it.
        run("declare", "vhost", "name=vh2")
        run("-V", "vh2", "declare", "queue", "name=vh2-q", "durable=false")
        listed = json.loads(run("list", "queues", "-V", "vh2"))
        self.assertEqual([(q["vhost"], q["name"]) for q in listed], [("vh2", "vh2-q")])
        self.assertEqual(json.loads(run("list", "queues", "-V", "/")), [])
        run("-V", "vh2", "publish", "routing_key=vh2-q", "payload=there")
        (message,) = json.loads(run("-V", "vh2", "get", "queue=vh2-q", "ackmode=ack_requeue_false"))
        self.assertEqual(message["payload"], "there")

    def test_health(self) -> None:
        """
        A standalone broker is the primary, and live.
        """
        self.assertEqual(status(self.httpPort, "/health/primary"), (200, "primary: standalone\n"))
        self.assertEqual(status(self.httpPort, "/health/live")[0], 200)
        self.assertEqual(status(self.httpPort, "/api/overview")[0], 401)


class ClusterHealthTests(SynchronousTestCase):
    """
    The health checks of a primary and its backup.
    """

    def test_primaryAndBackup(self) -> None:
        """
        The primary is 200 on C{/health/primary}; the ready backup is 503
        there and 200 on C{/health/replica}.
        """
        cluster = startCluster(self, 2, ["--store", "memory"])
        primary, backup = cluster.httpPorts
        self.assertEqual(status(primary, "/health/primary"), (200, "primary: active\n"))
        self.assertEqual(status(primary, "/health/replica")[0], 503)
        self.assertEqual(status(backup, "/health/primary"), (503, "not the primary: ready\n"))
        self.assertEqual(status(backup, "/health/replica"), (200, "replica: ready\n"))

    def test_secondVhostReplicated(self) -> None:
        """
        A virtual host, a replicated queue and a message in it, made with
        the HTTP API on the primary, reach the backup (the API changes a
        second virtual host through the methods its AMQP clients use, which
        the replication observes); the backup refuses changes (503).
        """
        cluster = startCluster(self, 2, ["--store", "memory"])
        primary, backup = cluster.httpPorts
        self.assertEqual(api(primary, "PUT", "/api/vhosts/vh2")[0], 201)
        declared = api(primary, "PUT", "/api/queues/vh2/replicated", {"arguments": {"qpid.replicate": "all"}})
        self.assertEqual(declared[0], 201, declared)
        published = api(
            primary, "POST", "/api/exchanges/vh2/amq.default/publish",
            {"routing_key": "replicated", "payload": "to the backup", "payload_encoding": "string", "properties": {}},
        )
        self.assertEqual(published, (200, {"routed": True}))

        def onBackup(state: Any) -> bool:
            code, queues = api(backup, "GET", "/api/queues/vh2")
            return code == 200 and [(q["name"], q["messages"]) for q in queues] == [("replicated", 1)]

        cluster.waitFor(1, onBackup, what="vh2's queue and message on the backup")
        self.assertEqual(api(backup, "GET", "/api/queues/%2F"), (200, []))
        self.assertEqual(api(backup, "PUT", "/api/queues/vh2/other", {})[0], 503)
