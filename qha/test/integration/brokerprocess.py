"""
A real C{twistd qha} broker in a child process, for the end-to-end tests.

L{BrokerProcess} starts C{twistd -n --pidfile= qha --port
tcp:0:interface=127.0.0.1} with the Python that runs the tests, reads its
log until the line C{qha AMQP listening on 127.0.0.1:PORT} (for at most
L{STARTUP_TIMEOUT} seconds, with a reader thread and a bounded queue wait,
never a sleep), and stops it with SIGTERM, then SIGKILL if it does not go.
Its replication port is a free port too and its state directory a fresh
temporary one, so that brokers of concurrent test runs never collide.

L{sharedBroker} gives the tests of one class one broker: trial does not run
C{setUpClass}, and trial runs the tests of a class one after another, so the
broker of a class is stopped as soon as a test of another class asks for
its own, and the last one when the test process exits. On Linux the child
also gets C{PR_SET_PDEATHSIG}, so that even a test process killed with
SIGKILL leaves no broker behind.

It also holds what the other harnesses of this package (L{cluster},
L{etcdprocess}, L{haproxyprocess}) and the test bases share, written once:
L{freePort}; L{endProcess} and L{StoppedAtExit}, the clean-up of the
processes tests start; L{runBroker} for a broker that must refuse to
start; L{guestParameters}; and for the tests L{waitUntil},
L{armWatchdog}, L{failOnTraceback} and L{quietLoggers}.
"""

from __future__ import annotations

import atexit
import collections
import ctypes
import logging
import os
import queue
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from typing import IO, Any, Callable, Generic, Hashable, Protocol, Sequence, TypeVar, cast

import pika
from pamqp import commands, frame as pamqpFrame
from pamqp.exceptions import UnmarshalingException
from pamqp.heartbeat import Heartbeat
from pika import data as pikaData
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from twisted.trial.unittest import SynchronousTestCase

import qha

STARTUP_TIMEOUT = 20.0
"""
Seconds a broker may take to say which port it listens on.
"""

STOP_TIMEOUT = 10.0
"""
Seconds a broker may take to exit after SIGTERM before it gets SIGKILL.
"""

_LISTENING = re.compile(r"qha AMQP listening on ([0-9.]+):(\d+)")

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(qha.__file__)))
"""
The checkout that holds the C{qha} package under test and
C{twisted/plugins/qha_plugin.py}: the child's working directory and
C{PYTHONPATH}, so that its C{twistd} finds the same code.
"""


class BrokerStartError(Exception):
    """
    The broker process exited or said nothing useful before it listened.
    """


def _findPrctl() -> Any:
    """
    Linux's C{prctl}, looked up once in the parent (looking it up in the
    child after C{fork} could deadlock), or L{None} elsewhere.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_prctl = _findPrctl()
_PR_SET_PDEATHSIG = 1


def _dieWithParent() -> None:
    """
    In the child, before exec: ask Linux to SIGKILL this process when the
    test process dies, however it dies. Elsewhere this does nothing.
    """
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def twistdCommand() -> list[str]:
    """
    The command that runs C{twistd} with the Python running the tests: the
    C{twistd} script next to C{sys.executable} if there is one, else the
    same entry point through C{-c}.
    """
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(script):
        return [sys.executable, script]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def _brokerEnvironment() -> dict[str, str]:
    """
    The environment of a C{twistd qha} child: the test's, with the checkout
    first on C{PYTHONPATH} and unbuffered output.
    """
    environment = dict(os.environ)
    pythonPath = environment.get("PYTHONPATH")
    environment["PYTHONPATH"] = (
        CHECKOUT if not pythonPath else CHECKOUT + os.pathsep + pythonPath
    )
    environment["PYTHONUNBUFFERED"] = "1"
    return environment


def _brokerCommand(port: str, arguments: Sequence[str]) -> list[str]:
    """
    C{twistd -n --pidfile= qha --port PORT ARGUMENTS}.
    """
    return twistdCommand() + ["-n", "--pidfile=", "qha", "--port", port, *arguments]


def runBroker(
    port: str, arguments: Sequence[str], timeout: float = 30.0
) -> "subprocess.CompletedProcess[bytes]":
    """
    Run C{twistd -n qha --port PORT ARGUMENTS} from the checkout to its
    end, for the tests of a broker that refuses to start: its standard
    output and error kept apart.

    @param timeout: the most seconds it may take (C{subprocess.run}'s bound).
    """
    return subprocess.run(
        _brokerCommand(port, arguments),
        cwd=CHECKOUT,
        env=_brokerEnvironment(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
    )


def spawnBroker(port: str, arguments: Sequence[str]) -> "subprocess.Popen[bytes]":
    """
    Start C{twistd -n qha --port PORT ARGUMENTS} from the checkout, with its
    output on a pipe, dying with the test process.
    """
    return subprocess.Popen(
        _brokerCommand(port, arguments),
        cwd=CHECKOUT,
        env=_brokerEnvironment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=_dieWithParent,
    )


def endProcess(process: "subprocess.Popen[bytes]", timeout: float = STOP_TIMEOUT) -> None:
    """
    End a child process that a harness started, and wait for it: SIGTERM,
    then SIGKILL if it has not exited within C{timeout} seconds. Does
    nothing to a process that has exited already.
    """
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)


class HarnessProcess(Protocol):
    """
    A process a harness starts (a broker, etcd, HAProxy): it says whether
    it runs, and stops, more than once if need be.
    """

    def running(self) -> bool:
        """
        Whether the process is alive.
        """

    def stop(self) -> None:
        """
        Stop the process and clean up after it; safe to call again.
        """


_Process = TypeVar("_Process", bound=HarnessProcess)


class StoppedAtExit(Generic[_Process]):
    """
    The harness's processes of one kind that are running, each stopped when
    the test process exits (should a test leave one behind), and the one
    the tests of a class share.

    @ivar running: the processes started and not yet stopped; a process
        adds itself when it starts and discards itself when it stops.
    """

    def __init__(self) -> None:
        """
        Nothing runs yet; stop whatever does at exit.
        """
        self.running: set[_Process] = set()
        self._shared: dict[Hashable, _Process] = {}
        atexit.register(self.stopAll)

    def add(self, process: _Process) -> None:
        """
        C{process} started.
        """
        self.running.add(process)

    def discard(self, process: _Process) -> None:
        """
        C{process} stopped (or never started).
        """
        self.running.discard(process)

    def stopAll(self) -> None:
        """
        At exit: stop every process still running.
        """
        self._shared.clear()
        for process in list(self.running):
            process.stop()

    def shared(self, key: Hashable, start: Callable[[], _Process]) -> _Process:
        """
        The process the tests under C{key} (their class, and what else
        tells their processes apart) share: the one kept, if it still
        runs, else a new one from C{start}. The processes kept under other
        keys are stopped first, since trial runs the tests of a class one
        after another and has finished with theirs.

        @param key: the test class, with anything else the process depends on.
        @param start: starts a new process and returns it, running.
        """
        for other in [k for k in self._shared if k != key]:
            self._shared.pop(other).stop()
        process = self._shared.get(key)
        if process is not None and process.running():
            return process
        if process is not None:
            process.stop()
        process = start()
        self._shared[key] = process
        return process


_handedOut: set[int] = set()
"""
The ports L{freePort} gave in this process: never given twice.
"""


def freePort(host: str = "127.0.0.1") -> int:
    """
    A TCP port that nothing listens on right now and that this process was
    not given before: bind port 0, read the port, close. The kernel may give
    a port just closed again, so two calls before either port is taken (a
    cluster broker's AMQP and AMP ports) could return the same one; the
    ports handed out are remembered and skipped. Another process could still
    take it before the broker (or etcd, or HAProxy) does, but on loopback in
    a test run that does not happen in practice. The one definition the
    harnesses share (L{cluster} and L{etcdprocess} export it too).
    """
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
            port: int = probe.getsockname()[1]
        if port not in _handedOut:
            _handedOut.add(port)
            return port
    raise RuntimeError("no loopback port that was not handed out before")


class BrokerProcess:
    """
    One C{twistd qha} process on a free loopback port.

    @ivar arguments: the options given after C{qha} besides C{--port}.
    @ivar port: the TCP port it listens on, once started.
    @ivar process: the child process, once started.
    """

    def __init__(self, arguments: Sequence[str] = ()) -> None:
        """
        @param arguments: extra C{twistd qha} options, such as
            C{["--memory-high-watermark", "200000"]}.
        """
        self.arguments = list(arguments)
        self.port = 0
        self.host = "127.0.0.1"
        self.process: subprocess.Popen[bytes] | None = None
        self._lines: collections.deque[str] = collections.deque(maxlen=5000)
        self.linesLogged = 0
        self._dataDirectory: str | None = None
        self._ports: queue.Queue[int | None] = queue.Queue()
        self._reader: threading.Thread | None = None

    def __repr__(self) -> str:
        """
        The port and arguments, for test failure messages.
        """
        return f"<BrokerProcess port={self.port} arguments={self.arguments!r}>"

    def start(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """
        Start the broker and wait until it listens.

        @param timeout: the most seconds to wait for the listening line.
        @raise BrokerStartError: if it exits first or takes longer; the
            process is stopped and the message holds its output.
        """
        try:
            self.process = spawnBroker(
                "tcp:0:interface=127.0.0.1", [*self._isolation(), *self.arguments]
            )
        except BaseException:
            self.stop()
            raise
        self._readOutput("qha broker output")
        try:
            port = self._ports.get(timeout=timeout)
        except queue.Empty:
            self.stop()
            raise BrokerStartError(
                f"twistd qha did not listen within {timeout} s:\n{self.output()}"
            ) from None
        if port is None:
            self.stop()
            raise BrokerStartError(
                f"twistd qha exited before it listened:\n{self.output()}"
            )
        self.port = port

    def _readOutput(self, name: str) -> None:
        """
        The process just started: count it among the running ones and
        start the thread that reads its output (see L{_read}).

        @param name: the thread's name, before the process id.
        """
        assert self.process is not None and self.process.stdout is not None
        _running.add(self)
        self._reader = threading.Thread(
            target=self._read,
            args=(self.process.stdout,),
            name=f"{name} {self.process.pid}",
            daemon=True,
        )
        self._reader.start()

    def _isolation(self) -> list[str]:
        """
        Options that keep this broker apart from every other one on the
        machine, for those of them that C{twistd qha} has: its replication
        (AMP) port on a free port too, and its state in a directory of its
        own, removed when it stops.
        """
        from qha.tap import Options

        parameters = cast(list[list[Any]], Options.optParameters)
        names = {parameter[0] for parameter in parameters}
        arguments = []
        if "ha-port" in names and not self._gives("--ha-port"):
            arguments += ["--ha-port", "tcp:0:interface=127.0.0.1"]
        if "http-port" in names and not self._gives("--http-port"):
            arguments += ["--http-port", "tcp:0:interface=127.0.0.1"]
        if "data-dir" in names and not self._gives("--data-dir"):
            self._dataDirectory = tempfile.mkdtemp(prefix="qha-e2e-")
            arguments += ["--data-dir", self._dataDirectory]
        return arguments

    def _option(self, option: str) -> str | None:
        """
        The value the caller's arguments give C{option} (the last one), if
        any.
        """
        value = None
        for index, argument in enumerate(self.arguments):
            if argument == option and index + 1 < len(self.arguments):
                value = self.arguments[index + 1]
            elif argument.startswith(option + "="):
                value = argument[len(option) + 1 :]
        return value

    @property
    def secretFile(self) -> str:
        """
        The broker's cluster secret: its C{--ha-secret-file}, else the
        file in its data directory (made when it starts), for
        C{qha-admin --secret-file}.
        """
        named = self._option("--ha-secret-file")
        if named is not None:
            return named
        directory = self._option("--data-dir") or self._dataDirectory
        assert directory is not None, "the broker has no data directory (not started?)"
        return os.path.join(directory, "cluster-secret")

    def _gives(self, option: str) -> bool:
        """
        Whether the caller's arguments set C{option}.
        """
        return any(a == option or a.startswith(option + "=") for a in self.arguments)

    def _read(self, stream: IO[bytes]) -> None:
        """
        In the reader thread: keep every line of the broker's output (so
        that its pipe never fills), and report the port it listens on.
        """
        announced = False
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self._lines.append(line)
            self.linesLogged += 1
            if not announced:
                match = _LISTENING.search(line)
                if match is not None:
                    announced = True
                    self._ports.put(int(match.group(2)))
        stream.close()
        if not announced:
            self._ports.put(None)

    def output(self, lines: int = 200) -> str:
        """
        The last C{lines} lines the broker logged, to explain a failure.
        """
        return "\n".join(list(self._lines)[-lines:])

    def linesSince(self, mark: int) -> list[str]:
        """
        The lines logged after the first C{mark} lines (as many of them as
        are still kept).

        @param mark: a value of L{linesLogged} read earlier.
        """
        lines = list(self._lines)
        count = min(self.linesLogged - mark, len(lines))
        return lines[len(lines) - count :] if count > 0 else []

    def running(self) -> bool:
        """
        Whether the process is still alive.
        """
        return self.process is not None and self.process.poll() is None

    def signal(self, number: int) -> None:
        """
        Send the process signal C{number}, if it is running (without
        waiting: the watchdog's thread kills with it).
        """
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(number)

    def stop(self) -> None:
        """
        Stop the broker: SIGTERM, then SIGKILL if it has not exited within
        L{STOP_TIMEOUT} seconds. Safe to call more than once.
        """
        process = self.process
        try:
            if process is None:
                return
            endProcess(process)
        finally:
            _running.discard(self)
            if self._reader is not None:
                self._reader.join(timeout=STOP_TIMEOUT)
                self._reader = None
            if self._dataDirectory is not None:
                shutil.rmtree(self._dataDirectory, ignore_errors=True)
                self._dataDirectory = None


_running: StoppedAtExit[BrokerProcess] = StoppedAtExit()


def sharedBroker(testClass: type, arguments: Sequence[str] = ()) -> BrokerProcess:
    """
    The broker the tests of C{testClass} share, started on first use (and
    again if a test killed it); the brokers of other classes are stopped
    first, since trial has finished with their tests.

    @param testClass: the test case class.
    @param arguments: extra C{twistd qha} options.
    """

    def start() -> BrokerProcess:
        broker = BrokerProcess(arguments)
        broker.start()
        return broker

    return _running.shared((testClass, tuple(arguments)), start)


def waitUntil(
    condition: Callable[[], Any],
    pump: Callable[[float], None],
    timeout: float = 5.0,
    what: str = "the expected event",
    step: float = 0.25,
    explain: Callable[[], str] = lambda: "",
) -> Any:
    """
    Call C{pump} with the time left (e.g. a pika connection's
    C{process_data_events}, or a broker's C{waitForOutput}) until
    C{condition()} is true: the one poll loop of the harnesses.

    @param condition: what to wait for; its true result is returned.
    @param pump: processes I/O (or waits for a broker to log something)
        for at most the seconds it is given.
    @param timeout: the most seconds to wait.
    @param what: named in the error if the time runs out.
    @param step: the most seconds one call of C{pump} is given.
    @param explain: what to add to the error (a broker's output...).
    @raise AssertionError: if C{condition} is still false after C{timeout}.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{explain()}")
        pump(min(left, step))


PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
"""
The AMQP 0-9-1 protocol header.
"""


def rawFrame(frameType: int, channel: int, payload: bytes, end: bytes = b"\xce") -> bytes:
    """
    One frame built by hand, so that a test can make it wrong on purpose.

    @param frameType: 1 method, 2 content header, 3 content body, 8
        heartbeat, or anything else.
    @param channel: the channel number.
    @param payload: the frame's payload.
    @param end: the frame-end octet (C{0xCE} in a correct frame).
    """
    return struct.pack(">BHI", frameType, channel, len(payload)) + payload + end


def methodFrame(channel: int, method: Any) -> bytes:
    """
    A correct method frame for a pamqp method object.
    """
    return pamqpFrame.marshal(method, channel)


class RawConnection:
    """
    A client on a plain socket that speaks as much AMQP as a test needs, so
    that it can send what no client library would: garbage, truncated,
    oversized and out-of-order frames.

    Every read is bounded by C{timeout}; nothing sleeps.
    """

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> None:
        """
        @param port: the broker's port.
        @param host: the broker's address.
        @param timeout: the most seconds any one read waits.
        """
        self.timeout = timeout
        self.socket = socket.create_connection((host, port), timeout=timeout)
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        self.tune: Any = None
        self.start: Any = None

    def close(self) -> None:
        """
        Close the socket.
        """
        self.socket.close()

    def send(self, data: bytes) -> None:
        """
        Send C{data} as it is.
        """
        self.socket.sendall(data)

    def sendMethod(self, channel: int, method: Any) -> None:
        """
        Send one pamqp method on C{channel}.
        """
        self.send(methodFrame(channel, method))

    def _fill(self, deadline: float) -> bool:
        """
        Read what the socket has, waiting until C{deadline} at most.

        @return: false at end of file.
        @raise TimeoutError: if nothing came in time.
        """
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the broker sent nothing in time")
        readable, _, _ = select.select([self.socket], [], [], left)
        if not readable:
            raise TimeoutError("the broker sent nothing in time")
        try:
            data = self.socket.recv(65536)
        except ConnectionResetError:
            return False
        if not data:
            return False
        self.buffer += data
        return True

    def readBytes(self, count: int, timeout: float | None = None) -> bytes:
        """
        Read exactly C{count} bytes (or fewer if the broker closes first).
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while len(self.buffer) < count:
            if not self._fill(deadline):
                break
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def readFrame(self, timeout: float | None = None) -> tuple[int, Any]:
        """
        Read one frame and decode it with pamqp.

        @return: the channel number and the frame (a method, content
            header or body, or heartbeat).
        @raise EOFError: if the broker closed the socket first.
        @raise TimeoutError: if no whole frame came in time.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            if len(self.buffer) >= 7:
                try:
                    consumed, channel, value = pamqpFrame.unmarshal(self.buffer)
                except UnmarshalingException:
                    pass
                else:
                    self.buffer = self.buffer[consumed:]
                    return channel, value
            if not self._fill(deadline):
                raise EOFError(f"the broker closed the socket; unread: {self.buffer!r}")

    def readRawFrame(self, timeout: float | None = None) -> tuple[int, int, bytes]:
        """
        Read one frame without decoding its payload (which may be what a
        test sent on purpose malformed).

        @return: the frame type, channel number and payload.
        @raise EOFError: if the broker closed the socket first.
        """
        header = self.readBytes(7, timeout)
        if len(header) < 7:
            raise EOFError("the broker closed the socket")
        frameType, channel, size = struct.unpack(">BHI", header)
        rest = self.readBytes(size + 1, timeout)
        if len(rest) < size + 1:
            raise EOFError("the broker closed the socket")
        return frameType, channel, rest[:size]

    def readMethod(self, timeout: float | None = None) -> tuple[int, Any]:
        """
        Read frames until a method comes (skipping heartbeats).
        """
        while True:
            channel, value = self.readFrame(timeout)
            if not isinstance(value, Heartbeat):
                return channel, value

    def handshake(
        self,
        channelMax: int | None = None,
        frameMax: int | None = None,
        heartbeat: int = 0,
        user: str = "guest",
        password: str = "guest",
        expectOpenOk: bool = True,
    ) -> None:
        """
        Do the whole connection handshake, with PLAIN, up to
        connection.open-ok.

        @param channelMax: the channel_max of tune-ok; the broker's by default.
        @param frameMax: the frame_max of tune-ok; the broker's by default.
        @param heartbeat: the heartbeat of tune-ok; none by default.
        @param expectOpenOk: if false, return after sending connection.open,
            for a test that expects the broker to refuse.
        """
        self.send(PROTOCOL_HEADER)
        _, self.start = self.readMethod()
        assert isinstance(self.start, commands.Connection.Start), self.start
        self.sendMethod(
            0,
            commands.Connection.StartOk(
                client_properties={"product": "qha raw test client"},
                mechanism="PLAIN",
                response=f"\0{user}\0{password}",
                locale="en_US",
            ),
        )
        _, self.tune = self.readMethod()
        assert isinstance(self.tune, commands.Connection.Tune), self.tune
        self.sendMethod(
            0,
            commands.Connection.TuneOk(
                self.tune.channel_max if channelMax is None else channelMax,
                self.tune.frame_max if frameMax is None else frameMax,
                heartbeat,
            ),
        )
        self.sendMethod(0, commands.Connection.Open("/"))
        if not expectOpenOk:
            return
        _, openOk = self.readMethod()
        assert isinstance(openOk, commands.Connection.OpenOk), openOk

    def openChannel(self, channel: int) -> None:
        """
        Open C{channel} and wait for channel.open-ok.
        """
        self.sendMethod(channel, commands.Channel.Open())
        number, openOk = self.readMethod()
        assert (number, type(openOk)) == (channel, commands.Channel.OpenOk), openOk

    def expectConnectionClose(self, timeout: float | None = None) -> Any:
        """
        Read until connection.close, answer it with close-ok, and check that
        the broker then closes the socket.

        @return: the connection.close method.
        @raise AssertionError: if something else happened.
        """
        while True:
            channel, value = self.readMethod(timeout)
            if isinstance(value, commands.Connection.Close):
                break
        try:
            self.sendMethod(0, commands.Connection.CloseOk())
        except OSError:
            pass
        self.expectEndOfFile(timeout)
        return value

    def expectEndOfFile(self, timeout: float | None = None) -> bytes:
        """
        Read until the broker closes the socket; return what came first.

        @raise TimeoutError: if it stays open.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while self._fill(deadline):
            pass
        data, self.buffer = self.buffer, b""
        return data


class AMQPlainCredentials(pika.PlainCredentials):
    """
    pika credentials that log in with the AMQPLAIN mechanism (an AMQP field
    table of LOGIN and PASSWORD) instead of PLAIN; pika itself offers only
    PLAIN and EXTERNAL.
    """

    TYPE = "AMQPLAIN"

    def response_for(self, start: Any) -> tuple[str | None, bytes | None]:
        """
        The AMQPLAIN response, if the broker offers AMQPLAIN.
        """
        mechanisms = start.mechanisms
        if isinstance(mechanisms, bytes):
            mechanisms = mechanisms.decode("ascii")
        if self.TYPE not in mechanisms.split():
            return None, None
        pieces: list[bytes] = []
        pikaData.encode_table(
            pieces, {"LOGIN": self.username, "PASSWORD": self.password}
        )
        return self.TYPE, b"".join(pieces)[4:]


def guestParameters(host: str, port: int, **overrides: Any) -> pika.ConnectionParameters:
    """
    pika connection parameters for the broker on C{host}:C{port}: guest,
    one attempt, and socket and handshake timeouts so that nothing waits
    for ever; C{overrides} change any of them.
    """
    settings: dict[str, Any] = dict(
        host=host,
        port=port,
        credentials=pika.PlainCredentials("guest", "guest"),
        connection_attempts=1,
        socket_timeout=5,
        stack_timeout=10,
        blocked_connection_timeout=None,
    )
    settings.update(overrides)
    return pika.ConnectionParameters(**settings)


def armWatchdog(
    case: SynchronousTestCase, timeout: float, bite: Callable[[], None], bitten: Callable[[], str]
) -> None:
    """
    Arm a watchdog for one test: pika's blocking calls have no timeout of
    their own, so a broker that never answers would hang the test run.
    After C{timeout} seconds the watchdog's thread calls C{bite}, which
    kills the test's brokers so that every blocked call fails; at the
    test's cleanup the watchdog is cancelled, and the test fails if it
    fired.

    @param case: the test.
    @param timeout: the most seconds the test may take.
    @param bite: kills the test's brokers (in the watchdog's thread).
    @param bitten: what the failure says happened, after the time.
    """
    fired = threading.Event()

    def fire() -> None:
        fired.set()
        bite()

    watchdog = threading.Timer(timeout, fire)
    watchdog.daemon = True
    watchdog.start()

    def disarm() -> None:
        watchdog.cancel()
        if fired.is_set():
            case.fail(f"the test took more than {timeout} s: {bitten()}")

    case.addCleanup(disarm)


def quietLoggers(case: SynchronousTestCase, *names: str) -> None:
    """
    Silence the standard-library loggers C{names} (pika, aio-pika, aiormq)
    for one test, whose errors it causes on purpose; each gets its level
    back at the test's cleanup.
    """
    for name in names:
        logger = logging.getLogger(name)
        case.addCleanup(logger.setLevel, logger.level)
        logger.setLevel(logging.CRITICAL)


def failOnTraceback(
    case: SynchronousTestCase, broker: BrokerProcess, expected: Callable[[], bool] = lambda: False
) -> None:
    """
    Fail the test at its cleanup if C{broker} logs a traceback from now on
    (an exception the broker did not expect), unless C{expected()} then
    says the test expects one.

    @param case: the test.
    @param broker: the broker whose log to check.
    @param expected: whether the test expects a traceback, asked at cleanup.
    """
    mark = broker.linesLogged

    def check() -> None:
        if expected():
            return
        lines = broker.linesSince(mark)
        if any("Traceback" in line for line in lines):
            case.fail(f"broker {broker!r} logged a traceback:\n" + "\n".join(lines[-150:]))

    case.addCleanup(check)


class BrokerTestCase(SynchronousTestCase):
    """
    The base of the end-to-end tests: the tests of a class share one
    broker (see L{sharedBroker}), started with L{brokerArguments}, and talk
    to it with pika's blocking client, which is fine here because trial's
    reactor does not run during a L{SynchronousTestCase}.

    @cvar brokerArguments: extra C{twistd qha} options for this class.
    @cvar watchdogTimeout: the most seconds one test may take.
    @ivar brokerMayFail: whether the test expects the broker to log a
        traceback; otherwise one fails the test.
    @ivar broker: the class's broker.
    """

    brokerArguments: Sequence[str] = ()
    watchdogTimeout = 60.0
    brokerMayFail = False

    def setUp(self) -> None:
        """
        Get the class's broker, starting it if need be, and arm a watchdog:
        pika's blocking calls have no timeout of their own, so a broker that
        never answers would hang the test run. After L{watchdogTimeout}
        seconds the watchdog kills the broker, which makes every blocked
        call fail, and the test is reported as failed.
        """
        self.broker = sharedBroker(type(self), self.brokerArguments)
        self._names = 0
        failOnTraceback(self, self.broker, lambda: self.brokerMayFail)
        armWatchdog(
            self,
            self.watchdogTimeout,
            lambda: self.broker.signal(signal.SIGKILL),
            lambda: f"its broker was killed. Its output:\n{self.broker.output()}",
        )

    def uniqueName(self, label: str = "") -> str:
        """
        A queue or exchange name no other test uses.
        """
        self._names += 1
        method = self.id().rsplit(".", 1)[-1]
        return f"{type(self).__name__}.{method}.{label}{self._names}"

    def parameters(self, **overrides: Any) -> pika.ConnectionParameters:
        """
        pika connection parameters for the broker: guest, one attempt, and
        socket and handshake timeouts so that nothing waits for ever.
        """
        return guestParameters(self.broker.host, self.broker.port, **overrides)

    def connect(self, **overrides: Any) -> BlockingConnection:
        """
        A pika blocking connection, closed at the end of the test.
        """
        connection = BlockingConnection(self.parameters(**overrides))
        self.addCleanup(self._closeQuietly, connection)
        return connection

    def channel(self, connection: BlockingConnection | None = None) -> BlockingChannel:
        """
        A channel on C{connection}, or on a new connection.
        """
        if connection is None:
            connection = self.connect()
        return connection.channel()

    @staticmethod
    def _closeQuietly(connection: BlockingConnection) -> None:
        """
        Close C{connection} if the test left it open.
        """
        if connection.is_open:
            try:
                connection.close()
            except pika.exceptions.AMQPError:
                pass

    def waitFor(
        self,
        connection: BlockingConnection,
        condition: Callable[[], Any],
        timeout: float = 5.0,
        what: str = "the expected event",
    ) -> Any:
        """
        Process C{connection}'s events until C{condition()} is true, for at
        most C{timeout} seconds.
        """
        return waitUntil(
            condition,
            lambda left: connection.process_data_events(time_limit=left),
            timeout,
            what,
        )

    def raw(self) -> "RawConnection":
        """
        A raw socket client to the broker, closed at the end of the test.
        """
        connection = RawConnection(self.broker.port, self.broker.host)
        self.addCleanup(connection.close)
        return connection

    def assertConnectionWorks(self, connection: BlockingConnection) -> None:
        """
        Check that C{connection} still does a round trip: declare a
        queue, publish to it, get the message back.
        """
        self.assertTrue(connection.is_open)
        channel = connection.channel()
        queue = channel.queue_declare("", exclusive=True).method.queue
        channel.basic_publish("", queue, b"still working")
        method, _, body = channel.basic_get(queue, auto_ack=True)
        self.assertIsNotNone(method)
        self.assertEqual(body, b"still working")
        channel.close()


__all__ = [
    "AMQPlainCredentials",
    "BrokerTestCase",
    "PROTOCOL_HEADER",
    "RawConnection",
    "methodFrame",
    "rawFrame",
    "BrokerStartError",
    "CHECKOUT",
    "endProcess",
    "freePort",
    "HarnessProcess",
    "StoppedAtExit",
    "guestParameters",
    "armWatchdog",
    "failOnTraceback",
    "quietLoggers",
    "runBroker",
    "sharedBroker",
    "twistdCommand",
    "waitUntil",
]
