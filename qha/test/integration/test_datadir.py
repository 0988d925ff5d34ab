"""
The data directory lock of L{qha.datadir} between two real C{twistd qha}
processes: the second broker on a held C{--data-dir} refuses to start, and
the first goes on serving. The unit tests are in L{qha.test.test_datadir}.
"""

from __future__ import annotations

import shutil
import tempfile

import pika
from twisted.trial.unittest import SynchronousTestCase

from qha.test.integration.brokerprocess import BrokerProcess, runBroker


class SharedDirectoryTests(SynchronousTestCase):
    """
    Two real brokers on one C{--data-dir}: the second refuses to start, and
    the first goes on serving.
    """

    def test_secondBrokerRefused(self) -> None:
        """
        The second C{twistd qha} on a held data directory exits with status
        1 and one line naming the directory and the first broker's process
        id, without a traceback; the first still confirms publishes.
        """
        directory = tempfile.mkdtemp(prefix="qha-shared-")
        self.addCleanup(shutil.rmtree, directory, True)
        first = BrokerProcess(["--data-dir", directory])
        self.addCleanup(first.stop)
        first.start()
        assert first.process is not None
        second = runBroker(
            "tcp:0:interface=127.0.0.1",
            ["--ha-port", "tcp:0:interface=127.0.0.1", "--data-dir", directory],
        )
        self.assertEqual(second.returncode, 1, second)
        self.assertEqual(
            second.stderr.decode().splitlines(),
            [
                f"qha: {directory} is in use by another broker (pid {first.process.pid});"
                " each broker needs its own --data-dir"
            ],
        )
        self.assertNotIn(b"Traceback", second.stdout + second.stderr)
        self.assertTrue(first.running())
        connection = pika.BlockingConnection(
            pika.ConnectionParameters("127.0.0.1", first.port, blocked_connection_timeout=10)
        )
        self.addCleanup(connection.close)
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare("still-serving", durable=True)
        channel.basic_publish(
            "", "still-serving", b"m", pika.BasicProperties(delivery_mode=2), mandatory=True
        )
        self.assertEqual(channel.queue_declare("still-serving", passive=True).method.message_count, 1)
