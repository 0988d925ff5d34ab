"""
The users file with a real C{twistd qha} (issue 13 and issue 12's "Admin
is not replication"): C{SIGHUP} reloads it while a pika client stays
connected, and logs that it did (or, for a bad file, that it kept the old
users); a user with the C{administrator} tag runs the real C{qha-admin}
with its own password, a user without it is refused; permissions and the
C{user_id} check as a pika client meets them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import pika
import pika.exceptions
from twisted.trial.unittest import SynchronousTestCase

from qha.amqp.users import hashPassword
from qha.test.integration.brokerprocess import CHECKOUT
from qha.test.integration.cluster import HOST, ClusterBroker, freePort

WAIT = 15.0
"""
The most seconds a test waits for something the broker does.
"""


def _users(extra: str = "") -> str:
    """
    A users file's text: C{alice} (password C{wonder}, administrator),
    C{bob} (password C{builder}) and C{extra}. Cheap hashes: the test's
    time goes to processes, not scrypt.
    """
    return (
        f"alice:{hashPassword('wonder', n=2**10)}\n"
        f"bob:{hashPassword('builder', n=2**10)}\n"
        "tags alice administrator\n"
        f"{extra}"
    )


class UsersFileTests(SynchronousTestCase):
    """
    One standalone broker started with C{--users}.
    """

    def setUp(self) -> None:
        """
        Write the users file and start the broker; it is killed at the end.
        """
        self.directory = tempfile.mkdtemp(prefix="qha-users-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.usersPath = f"{self.directory}/users"
        self.writeUsers(_users())
        ampPort = freePort()
        self.broker = ClusterBroker(
            freePort(),
            ampPort,
            f"{self.directory}/data",
            [
                "--ha-port", f"tcp:{ampPort}:interface={HOST}",
                "--data-dir", f"{self.directory}/data",
                "--users", self.usersPath,
            ],
        )
        self.addCleanup(self.broker.kill)
        self.broker.start()
        self.waitForLine("qha AMQP listening on")

    def writeUsers(self, text: str) -> None:
        """
        Replace the users file with C{text}.
        """
        with open(self.usersPath, "w", encoding="utf-8") as f:
            f.write(text)

    def waitForLine(self, text: str, after: int = 0) -> str:
        """
        Wait until the broker logs a line holding C{text} (after its first
        C{after} lines), waking whenever it logs something.
        """
        deadline = time.monotonic() + WAIT
        while True:
            for line in self.broker.linesSince(after):
                if text in line:
                    return line
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"the broker did not log {text!r}:\n{self.broker.output(60)}")
            self.broker.waitForOutput(min(left, 0.2))

    def connect(self, user: str, password: str) -> pika.BlockingConnection:
        """
        A pika connection as C{user}, closed at the end.
        """
        connection = pika.BlockingConnection(
            pika.ConnectionParameters(
                HOST, self.broker.port, credentials=pika.PlainCredentials(user, password)
            )
        )
        self.addCleanup(lambda: connection.is_open and connection.close())
        return connection

    def test_sighupReloads(self) -> None:
        """
        C{SIGHUP} reloads the file: the broker says so, a connected client
        stays connected, and the new permissions apply to it at once; a bad
        file is logged and the old users kept; the broker lives on.
        """
        connection = self.connect("bob", "builder")
        channel = connection.channel()
        channel.queue_declare("bob-queue")
        self.writeUsers(_users("permissions bob / '^bob-' '.*' '.*'\npermissions alice / .* .* .*\n"))
        mark = self.broker.linesLogged
        self.broker.signal(signal.SIGHUP)
        self.assertIn("2 users", self.waitForLine("Reloaded users file", mark))
        channel.basic_publish("", "bob-queue", b"still here")
        self.assertEqual(channel.basic_get("bob-queue", auto_ack=True)[2], b"still here")
        with self.assertRaises(pika.exceptions.ChannelClosedByBroker) as refused:
            channel.queue_declare("other")
        self.assertEqual(refused.exception.reply_code, 403)
        self.assertEqual(
            refused.exception.reply_text,
            "ACCESS_REFUSED - access to queue 'other' in vhost '/' refused for user 'bob'",
        )
        self.assertTrue(connection.is_open)
        mark = self.broker.linesLogged
        self.writeUsers("this is not a users file\n")
        self.broker.signal(signal.SIGHUP)
        self.assertIn("keeping the 2 users", self.waitForLine("Not reloading the users file", mark))
        self.assertTrue(self.broker.running())
        channel = connection.channel()
        channel.queue_declare("bob-2")
        self.connect("alice", "wonder").channel().queue_declare("alice-queue")

    def test_userId(self) -> None:
        """
        Publishing with another user's C{user_id} closes the channel with
        406 and RabbitMQ's text.
        """
        channel = self.connect("bob", "builder").channel()
        channel.queue_declare("q")
        channel.basic_publish("", "q", b"m", pika.BasicProperties(user_id="bob"))
        channel.basic_publish("", "q", b"m", pika.BasicProperties(user_id="root-admin"))
        with self.assertRaises(pika.exceptions.ChannelClosedByBroker) as refused:
            channel.basic_get("q")
        self.assertEqual(
            (refused.exception.reply_code, refused.exception.reply_text),
            (
                406,
                "PRECONDITION_FAILED - user_id property set to 'root-admin' but"
                " authenticated user was 'bob'",
            ),
        )

    def admin(self, user: str, password: str, *argv: str) -> Any:
        """
        Run the real C{qha-admin} against the broker as C{user}, the
        password in a file.
        """
        path = f"{self.directory}/{user}-password"
        with open(path, "w", encoding="utf-8") as f:
            f.write(password + "\n")
        environment = {
            key: value
            for key, value in os.environ.items()
            if key not in ("QHA_SECRET_FILE", "QHA_PASSWORD")
        }
        environment["PYTHONPATH"] = CHECKOUT + os.pathsep + environment.get("PYTHONPATH", "")
        return subprocess.run(
            [
                sys.executable, "-m", "qha.admin.cli",
                "-b", f"{HOST}:{self.broker.ampPort}",
                "--username", user, "--password-file", path, *argv,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            env=environment,
            cwd=self.directory,
        )

    def test_administratorRunsAdmin(self) -> None:
        """
        C{alice} (administrator) runs C{qha-admin}; C{bob} is refused with
        one line saying why; the broker logs who asked for an action.
        """
        self.connect("bob", "builder").channel().queue_declare("doomed")
        result = self.admin("alice", "wonder", "status")
        self.assertEqual((result.returncode, result.stdout), (0, "standalone\n"), result.stderr)
        mark = self.broker.linesLogged
        result = self.admin("alice", "wonder", "del", "queue", "doomed")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("alice", self.waitForLine("admin del queue 'doomed' asked by", mark))
        result = self.admin("bob", "builder", "status")
        self.assertEqual(result.returncode, 1)
        self.assertIn("user 'bob' may not administer this broker", result.stderr)
        self.assertEqual(result.stderr.count("\n"), 1, result.stderr)
