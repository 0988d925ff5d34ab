"""
A real HAProxy in front of a cluster's brokers, for the tests of issue 16:
one AMQP address that follows the primary, chosen by the brokers' health
checks (C{GET /health/primary}).

L{haproxyConfig} writes the configuration that doc/clients.md shows (a test
checks that the two agree), so the configuration the documentation gives is
the one the integration test runs. L{HAProxy} starts C{haproxy} in the
foreground on a free loopback port with a stats socket, reads its servers'
states through that socket, and is killed at cleanup (and, like the
brokers, when the test process dies).

The binary is the one named by the C{HAPROXY} environment variable, else
C{haproxy} on the C{PATH} (Debian's C{/usr/sbin/haproxy}); tests skip,
saying so, when there is none.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from typing import Sequence

from twisted.trial.unittest import SkipTest

from .brokerprocess import StoppedAtExit, _dieWithParent
from .cluster import HOST, freePort

__all__ = ["HAProxy", "haproxyBinary", "haproxyConfig", "requireHAProxy"]

START_TIMEOUT = 10.0
"""
Seconds HAProxy may take to listen.
"""

STOP_TIMEOUT = 10.0
"""
Seconds HAProxy may take to go after SIGKILL.
"""


def haproxyBinary() -> str | None:
    """
    The C{haproxy} to run, or L{None} when there is none.
    """
    named = os.environ.get("HAPROXY")
    if named:
        return named
    return shutil.which("haproxy") or next(
        (path for path in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(path, os.X_OK)),
        None,
    )


def requireHAProxy() -> str:
    """
    The C{haproxy} binary.

    @raise SkipTest: when there is none, saying how to get one.
    """
    binary = haproxyBinary()
    if binary is None:
        raise SkipTest(
            "haproxy is not installed (not on PATH, nor in /usr/sbin): on Debian"
            " `apt-get install haproxy`, or name the binary in $HAPROXY"
        )
    return binary


def haproxyConfig(
    listen: str,
    servers: Sequence[tuple[str, str, int, int]],
    statsSocket: str | None = None,
) -> str:
    """
    An HAProxy configuration that sends every AMQP connection to the broker
    whose C{/health/primary} answers 200, and cuts the connections of a
    broker as soon as its check fails.

    @param listen: the address:port clients connect to.
    @param servers: each broker as (name, host, AMQP port, HTTP port).
    @param statsSocket: a Unix socket for C{show stat}, or L{None}.
    @return: the configuration file's text.
    """
    lines = ["global"]
    if statsSocket is not None:
        lines.append(f"    stats socket {statsSocket} mode 600 level admin")
    lines += [
        "    maxconn 4096",
        "",
        "defaults",
        "    mode tcp",
        "    timeout connect 1s",
        "    timeout check 1s",
        # Longer than any AMQP heartbeat interval: idle clients stay.
        "    timeout client 3h",
        "    timeout server 3h",
        # A connection HAProxy could not make goes to another server.
        "    retries 2",
        "    option redispatch",
        "",
        "frontend amqp",
        f"    bind {listen}",
        "    default_backend qha-primary",
        "",
        "backend qha-primary",
        "    option httpchk GET /health/primary",
        "    http-check expect status 200",
        "    default-server inter 250ms fall 1 rise 1 on-marked-down shutdown-sessions",
    ]
    for name, host, amqpPort, httpPort in servers:
        lines.append(f"    server {name} {host}:{amqpPort} check port {httpPort}")
    return "\n".join(lines) + "\n"


class HAProxy:
    """
    One C{haproxy -db} process in front of some brokers.

    @ivar port: the loopback port clients connect to.
    @ivar config: the configuration it runs.
    """

    def __init__(self, servers: Sequence[tuple[str, str, int, int]]) -> None:
        """
        Pick the port and write the configuration; start nothing yet.

        @param servers: each broker as (name, host, AMQP port, HTTP port).
        @raise SkipTest: when haproxy is not installed.
        """
        self.binary = requireHAProxy()
        self.port = freePort()
        self._root = tempfile.mkdtemp(prefix="qha-haproxy-")
        self.statsSocket = os.path.join(self._root, "stats.sock")
        self.config = haproxyConfig(f"{HOST}:{self.port}", servers, self.statsSocket)
        self.configFile = os.path.join(self._root, "haproxy.cfg")
        with open(self.configFile, "w") as f:
            f.write(self.config)
        self.process: subprocess.Popen[bytes] | None = None
        self._output: list[str] = []
        self._reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        """
        The one AMQP URL of the cluster, through HAProxy.
        """
        return f"amqp://guest:guest@{HOST}:{self.port}/"

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """
        Start HAProxy in the foreground and wait until it listens.

        @raise RuntimeError: if it exits first or does not listen in time;
            the message holds its output.
        """
        self.process = subprocess.Popen(
            [self.binary, "-db", "-f", self.configFile],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=_dieWithParent,
        )
        _running.add(self)
        self._reader = threading.Thread(target=self._read, name="haproxy output", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection((HOST, self.port), timeout=1.0):
                    return
            except OSError:
                pass
            left = deadline - time.monotonic()
            try:
                self.process.wait(timeout=max(0.0, min(left, 0.05)))
            except subprocess.TimeoutExpired:
                if left > 0:
                    continue
            output = self.output()
            self.stop()
            raise RuntimeError(f"haproxy did not listen on {self.port} within {timeout} s:\n{output}")

    def _read(self) -> None:
        """
        In the reader thread: keep HAProxy's output (warnings, alerts).
        """
        assert self.process is not None and self.process.stdout is not None
        for raw in iter(self.process.stdout.readline, b""):
            self._output.append(raw.decode("utf-8", "replace").rstrip("\n"))
        self.process.stdout.close()

    def output(self) -> str:
        """
        What HAProxy said so far.
        """
        return "\n".join(self._output)

    def serverStates(self) -> dict[str, str]:
        """
        Each server's state as HAProxy sees it (C{UP}, C{DOWN}, ...), read
        with C{show stat} on the stats socket.
        """
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2.0)
            s.connect(self.statsSocket)
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        lines = data.decode("utf-8", "replace").splitlines()
        header = lines[0].lstrip("# ").split(",")
        name, status = header.index("svname"), header.index("status")
        states = {}
        for line in lines[1:]:
            fields = line.split(",")
            if len(fields) > status and fields[name] not in ("FRONTEND", "BACKEND"):
                states[fields[name]] = fields[status]
        return states

    def running(self) -> bool:
        """
        Whether the process is alive.
        """
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """
        Kill HAProxy and remove its files. Safe to call more than once.
        """
        process = self.process
        if process is not None:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=STOP_TIMEOUT)
            if self._reader is not None:
                self._reader.join(timeout=STOP_TIMEOUT)
        _running.discard(self)
        shutil.rmtree(self._root, ignore_errors=True)


_running: StoppedAtExit[HAProxy] = StoppedAtExit()
"""
Every HAProxy a test started and did not stop, killed at exit.
"""
