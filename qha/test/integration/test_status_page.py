"""
The status page of a real C{twistd qha}, rendered by headless Chromium
(Debian's C{chromium}; skipped with the reason where it is not installed):
a queue declared and filled with pika appears with its depth once the
page's JavaScript has read the API.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from qha.test.integration.cluster import freePort
from qha.test.integration.test_http import HTTPBroker

CHROMIUM_TIMEOUT = 90.0
"""
Seconds one Chromium run may take (its start is slow on a loaded machine).
"""


def chromium() -> str:
    """
    The Chromium binary, or skip.
    """
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path is not None:
            return path
    raise SkipTest("no headless browser: apt-get install chromium to run the status page test")


def runChromium(*arguments: str) -> str:
    """
    Run headless Chromium with C{arguments} and return its standard output.
    """
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",  # tests run as root here, where the sandbox refuses
        "--disable-gpu",
        "--no-first-run",
        "--disable-dev-shm-usage",
        # Run the page's timers and fetches for up to 5 s of virtual time
        # before dumping: the tables are filled by then.
        "--virtual-time-budget=5000",
        *arguments,
    ]
    done = subprocess.run(
        command, capture_output=True, timeout=CHROMIUM_TIMEOUT, env={**os.environ, "HOME": "/tmp"}
    )
    if done.returncode != 0:
        raise AssertionError(f"chromium exited {done.returncode}: {done.stderr.decode(errors='replace')[-2000:]}")
    return done.stdout.decode("utf-8", "replace")


class StatusPageTests(SynchronousTestCase):
    """
    One standalone broker and the page at C{/} of its HTTP port.
    """

    def setUp(self) -> None:
        """
        Skip without Chromium; start the broker; declare C{status-q} and
        publish three messages to it with pika.
        """
        chromium()
        import pika

        self.httpPort = freePort()
        self.broker = HTTPBroker(
            ["--store", "memory", "--http-port", f"tcp:{self.httpPort}:interface=127.0.0.1"]
        )
        self.broker.start()
        self.addCleanup(self.broker.stop)
        connection = pika.BlockingConnection(
            pika.ConnectionParameters("127.0.0.1", self.broker.port, blocked_connection_timeout=10)
        )
        self.addCleanup(connection.close)
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare("status-q")
        for number in range(3):
            channel.basic_publish("", "status-q", f"m{number}".encode())
        self.url = f"http://guest:guest@127.0.0.1:{self.httpPort}/?interval=1"

    def test_queueAndDepth(self) -> None:
        """
        After the page's script ran, the DOM holds a row for C{status-q}
        with 3 messages ready, the broker's role and the pika connection.
        """
        dom = runChromium("--dump-dom", self.url)
        rows = re.findall(r"<tr>(.*?)</tr>", dom, re.S)
        cells = [[html.unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)] for row in rows]
        queueRows = [row for row in cells if row and row[0] == "status-q"]
        self.assertEqual(len(queueRows), 1, dom)
        self.assertEqual(queueRows[0][1:4], ["3", "0", "0"], dom)
        self.assertIn(">standalone<", dom)
        self.assertTrue(any(row and row[1] == "guest" for row in cells), dom)
        self.assertNotIn('id="error">Error', dom)

    def test_screenshot(self) -> None:
        """
        A screenshot of the page is a PNG image (what a person sees; the
        DOM test checks its content).
        """
        path = os.path.abspath(self.mktemp() + ".png")
        runChromium(f"--screenshot={path}", "--window-size=1000,700", self.url)
        with open(path, "rb") as image:
            self.assertEqual(image.read(8), b"\x89PNG\r\n\x1a\n")
        self.screenshot = path

    def test_loginNeeded(self) -> None:
        """
        Without credentials, the page asks for them (401, Basic).
        """
        from qha.test.integration.test_http import status

        code, _ = status(self.httpPort, "/")
        self.assertEqual(code, 401)
