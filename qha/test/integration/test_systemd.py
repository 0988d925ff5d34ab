"""
A real C{twistd qha} started as systemd starts a C{Type=notify} service:
C{$NOTIFY_SOCKET} names a unix datagram socket the test binds, and the
broker sends C{READY=1} and C{STATUS=} with its role there.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from qha.test.integration.brokerprocess import CHECKOUT, BrokerProcess

TIMEOUT = 20.0
"""
Seconds to wait for one message from the broker.
"""


class NotifySocketTests(SynchronousTestCase):
    """
    READY=1 and STATUS from a standalone broker.
    """

    def test_readyAndStatus(self) -> None:
        """
        The broker sends STATUS with its role and READY=1 once it listens,
        and STOPPING=1 when it stops.
        """
        self.assertNotifies(["--store", "memory", "--http-port", "none"])

    def test_withConfigFile(self) -> None:
        """
        Started as C{contrib/systemd/qha.service} starts it (C{twistd -n
        --pidfile= qha --config FILE}), with its options, JSON logs
        included, from a configuration file: the same messages.
        """
        unit = os.path.join(CHECKOUT, "contrib", "systemd", "qha.service")
        if not os.path.exists(unit):
            raise self.skipTest(f"{unit} is not here (an installed package has no contrib/)")
        with open(unit, encoding="utf-8") as file:
            [execStart] = [line for line in file if line.startswith("ExecStart=")]
        self.assertIn(" -n --pidfile= qha --config /etc/qha/qha.toml ", execStart)
        directory = tempfile.mkdtemp(prefix="qha-config-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "qha.toml")
        with open(path, "w", encoding="utf-8") as file:
            file.write('store = "memory"\nhttp-port = "none"\nlog-format = "json"\nlog-level = "info"\n')
        broker = self.assertNotifies(["--config", path])
        self.assertIn('"text": "qha AMQP listening on', broker.output())

    def assertNotifies(self, arguments: list[str]) -> BrokerProcess:
        """
        A broker started with C{arguments} under C{$NOTIFY_SOCKET} sends
        STATUS with its role and READY=1 once it listens, and STOPPING=1
        when it stops.

        @return: the stopped broker, for its output.
        """
        # Short: a unix socket's path holds at most 107 bytes.
        directory = tempfile.mkdtemp(prefix="qha-notify-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "notify")
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(receiver.close)
        receiver.bind(path)
        receiver.settimeout(TIMEOUT)
        saved = os.environ.get("NOTIFY_SOCKET")
        os.environ["NOTIFY_SOCKET"] = path
        try:
            broker = BrokerProcess(arguments)
            broker.start()
        finally:
            if saved is None:
                del os.environ["NOTIFY_SOCKET"]
            else:
                os.environ["NOTIFY_SOCKET"] = saved
        self.addCleanup(broker.stop)
        try:
            message = receiver.recv(4096).decode("utf-8")
        except TimeoutError:
            self.fail(f"no READY=1 within {TIMEOUT}s:\n{broker.output()}")
        self.assertEqual(message.splitlines(), ["STATUS=role standalone, epoch 0", "READY=1"])
        broker.stop()
        try:
            self.assertEqual(receiver.recv(4096), b"STOPPING=1")
        except TimeoutError:
            self.fail(f"no STOPPING=1 within {TIMEOUT}s:\n{broker.output()}")
        return broker
