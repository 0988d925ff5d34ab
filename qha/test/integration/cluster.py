"""
A cluster of real C{twistd qha} brokers on loopback, for the HA end-to-end
tests.

L{Cluster} picks every broker's AMQP and AMP port up front (bind port 0,
close), so that each broker can be given C{--ha-brokers} with all the AMP
addresses, and a restarted broker comes back on the same ports with the
same C{--data-dir}. It builds on L{qha.test.integration.brokerprocess}: the same
C{twistd} command, the same output reader thread, the same die-with-parent
and the same cleanup at exit.

The brokers share one cluster secret, a file the harness makes before it
starts them (L{Cluster.secretFile}), unless they are given HA credentials;
the admin calls log in with it.

The admin calls (L{Cluster.promote}, L{Cluster.query}, ...) speak AMP over a
plain blocking socket (L{BlockingAMP}), so that a L{SynchronousTestCase},
during which the reactor does not run, can use them. Every wait is bounded
by a deadline; between two polls the harness waits for the broker to log
something (a condition variable with a short timeout), never sleeps.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import tempfile
import threading
import time
from typing import IO, Any, Sequence

import pika
from twisted.protocols import amp

from qha.admin.commands import AddObject, DeleteObject, ListObjects, Ping, Promote, Query
from qha.datadir import SECRET_NAME, readOrCreateSecret
from qha.ha.auth import Credentials, logIn
from qha.test.integration.brokerprocess import (
    STARTUP_TIMEOUT,
    STOP_TIMEOUT,
    BrokerProcess,
    BrokerStartError,
    _running,
    guestParameters,
    freePort,
    spawnBroker,
)

HOST = "127.0.0.1"

AMP_TIMEOUT = 5.0
"""
Seconds one admin call over AMP may take before it fails.
"""

ROLE_TIMEOUT = 15.0
"""
Seconds L{Cluster.waitForRole} waits by default.
"""

_AMP_LISTENING = re.compile(r"qha AMP listening on ([0-9.]+):(\d+)")
_AMQP_LISTENING = re.compile(r"qha AMQP listening on ([0-9.]+):(\d+)")


class RemoteAMPError(Exception):
    """
    The broker answered an AMP command with an error.

    @ivar code: the error code (C{REFUSED}, C{NOT_AUTHENTICATED}, ...).
    @ivar description: the broker's message.
    """

    def __init__(self, code: str, description: str) -> None:
        """
        @param code: the C{_error_code} of the answer.
        @param description: its C{_error_description}.
        """
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description


def _parseBox(buffer: bytes) -> tuple[dict[bytes, bytes] | None, bytes]:
    """
    Take one whole AMP box off the front of C{buffer}.

    @return: the box (or L{None} if C{buffer} does not hold a whole one yet)
        and what follows it.
    """
    box: dict[bytes, bytes] = {}
    offset = 0
    while True:
        if len(buffer) < offset + 2:
            return None, buffer
        (keyLength,) = struct.unpack("!H", buffer[offset : offset + 2])
        offset += 2
        if keyLength == 0:
            return box, buffer[offset:]
        if len(buffer) < offset + keyLength + 2:
            return None, buffer
        key = buffer[offset : offset + keyLength]
        offset += keyLength
        (valueLength,) = struct.unpack("!H", buffer[offset : offset + 2])
        offset += 2
        if len(buffer) < offset + valueLength:
            return None, buffer
        box[key] = buffer[offset : offset + valueLength]
        offset += valueLength


class BlockingAMP:
    """
    An AMP client on a blocking socket, for tests that run without a
    reactor: it serializes a command's box with the command's own schema,
    sends it and reads the answer, each read bounded by C{timeout}.
    """

    def __init__(
        self,
        port: int,
        host: str = HOST,
        timeout: float = AMP_TIMEOUT,
        context: ssl.SSLContext | None = None,
    ) -> None:
        """
        Connect to a broker's AMP port.

        @param port: the AMP port.
        @param host: its address.
        @param timeout: the most seconds one call may take.
        @param context: TLS for a broker with C{--ha-tls-ca}, or L{None}.
        @raise OSError: if the connection fails.
        """
        self.timeout = timeout
        self.socket = socket.create_connection((host, port), timeout=timeout)
        if context is not None:
            self.socket = context.wrap_socket(self.socket, server_hostname=host)
        self.buffer = b""
        self.tag = 0

    def close(self) -> None:
        """
        Close the connection.
        """
        self.socket.close()

    def __enter__(self) -> BlockingAMP:
        """
        Use as a context manager that closes the connection.
        """
        return self

    def __exit__(self, *exception: object) -> None:
        """
        Close the connection.
        """
        self.close()

    def login(self, credentials: Credentials) -> None:
        """
        Log in with C{credentials} (the challenge-response of
        L{qha.ha.auth}), and check that the broker proved itself.

        @raise RemoteAMPError: if the broker refused the login.
        @raise qha.ha.auth.UnprovenPeer: if the broker did not prove it holds the key.
        """
        from twisted.internet.defer import ensureDeferred, succeed

        def call(command: type[amp.Command], **arguments: Any) -> Any:
            """
            One blocking call, as the L{Deferred} L{logIn} awaits.
            """
            return succeed(self.call(command, **arguments))

        d = ensureDeferred(logIn(call, credentials))
        failures: list[Any] = []
        d.addErrback(failures.append)
        if failures:
            failures[0].raiseException()

    def call(self, command: type[amp.Command], **arguments: Any) -> dict[str, Any]:
        """
        Call C{command} and wait for its answer.

        @return: the answer, parsed with the command's response schema.
        @raise RemoteAMPError: if the broker answered with an error.
        @raise OSError: if the connection fails or the time runs out.
        """
        self.tag += 1
        tag = str(self.tag).encode("ascii")
        box = command.makeArguments(arguments, None)
        box[b"_command"] = command.commandName  # type: ignore[index]
        box[b"_ask"] = tag  # type: ignore[index]
        self.socket.sendall(box.serialize())
        deadline = time.monotonic() + self.timeout
        while True:
            answer, self.buffer = _parseBox(self.buffer)
            if answer is not None:
                if answer.get(b"_answer") == tag:
                    return dict(command.parseResponse(answer, None))
                if answer.get(b"_error") == tag:
                    raise RemoteAMPError(
                        answer.get(b"_error_code", b"").decode("utf-8", "replace"),
                        answer.get(b"_error_description", b"").decode("utf-8", "replace"),
                    )
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer to {command.__name__} within {self.timeout} s")
            self.socket.settimeout(left)
            data = self.socket.recv(65536)
            if not data:
                raise ConnectionError(f"the broker closed the AMP connection during {command.__name__}")
            self.buffer += data


def callAMP(
    port: int,
    command: type[amp.Command],
    timeout: float = AMP_TIMEOUT,
    username: str | None = None,
    password: str | None = None,
    credentials: Credentials | None = None,
    context: ssl.SSLContext | None = None,
    **arguments: Any,
) -> dict[str, Any]:
    """
    One AMP command on a connection of its own, after a login with
    C{username} and C{password} if C{username} is given, else with
    C{credentials} if given.

    @param port: the broker's AMP port.
    @param command: the command class.
    @param timeout: the most seconds for each call.
    @return: the parsed answer.
    """
    with BlockingAMP(port, timeout=timeout, context=context) as client:
        if username is not None:
            credentials = Credentials.fromPassword(username, password or "")
        if credentials is not None:
            client.login(credentials)
        return client.call(command, **arguments)


class ClusterBroker(BrokerProcess):
    """
    One broker of a L{Cluster}: fixed AMQP and AMP ports and data directory,
    so that it can be restarted as the same broker. It is ready once it
    logs its AMP listening line (a broker in a cluster listens for AMQP
    only while it is the primary).

    @ivar ampPort: its AMP port.
    @ivar dataDirectory: its C{--data-dir}, kept across restarts.
    """

    def __init__(
        self, port: int, ampPort: int, dataDirectory: str, arguments: Sequence[str]
    ) -> None:
        """
        @param port: the AMQP port.
        @param ampPort: the AMP port.
        @param dataDirectory: the data directory.
        @param arguments: every C{twistd qha} option besides C{--port}.
        """
        if not any(a == "--http-port" or a.startswith("--http-port=") for a in arguments):
            # Not the default 15672 that every broker would want.
            arguments = [*arguments, "--http-port", f"tcp:0:interface={HOST}"]
        super().__init__(arguments)
        self.port = port
        self.ampPort = ampPort
        self.dataDirectory = dataDirectory
        self._changed = threading.Condition()
        self._ampListening = False
        self._exited = False
        self.amqpListening = False

    def __repr__(self) -> str:
        """
        The ports, for test failure messages.
        """
        return f"<ClusterBroker amqp={self.port} amp={self.ampPort}>"

    def start(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """
        Start the broker and wait until it listens for AMP.

        @param timeout: the most seconds to wait.
        @raise BrokerStartError: if it exits first or takes longer; the
            process is killed and the message holds its output.
        """
        self.launch()
        self.waitUntilListening(timeout)

    def launch(self) -> None:
        """
        Start the broker process, without waiting for it (see
        L{waitUntilListening}).
        """
        with self._changed:
            self._ampListening = False
            self._exited = False
            self.amqpListening = False
        self.process = spawnBroker(f"tcp:{self.port}:interface={HOST}", self.arguments)
        self._readOutput("qha cluster broker output")

    def waitUntilListening(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """
        Wait until the launched broker logs that it listens for AMP.

        @param timeout: the most seconds to wait.
        @raise BrokerStartError: if it exits first or takes longer; the
            process is killed and the message holds its output.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self._ampListening and not self._exited:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            listening, exited = self._ampListening, self._exited
        if not listening:
            self.kill()
            why = "exited before it listened" if exited else f"did not listen within {timeout} s"
            raise BrokerStartError(f"twistd qha {why}:\n{self.output()}")

    def _read(self, stream: IO[bytes]) -> None:
        """
        In the reader thread: keep every line of the broker's output (so
        that its pipe never fills), note when it listens, and wake whoever
        waits for the broker to say something.
        """
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._changed:
                self._lines.append(line)
                self.linesLogged += 1
                if _AMP_LISTENING.search(line):
                    self._ampListening = True
                if _AMQP_LISTENING.search(line):
                    self.amqpListening = True
                self._changed.notify_all()
        stream.close()
        with self._changed:
            self._exited = True
            self._changed.notify_all()

    def waitForOutput(self, timeout: float) -> None:
        """
        Wait until the broker logs another line (or exits), for at most
        C{timeout} seconds: what a poll loop does between two polls instead
        of sleeping.
        """
        with self._changed:
            if self._exited:
                return
            mark = self.linesLogged
            self._changed.wait_for(lambda: self.linesLogged != mark or self._exited, timeout)

    def kill(self) -> None:
        """
        SIGKILL the process and wait for it to go. Safe to call more than
        once.
        """
        process = self.process
        if process is None:
            return
        try:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT)
        finally:
            _running.discard(self)
            if self._reader is not None:
                self._reader.join(timeout=STOP_TIMEOUT)
                self._reader = None

    def stop(self) -> None:
        """
        Stop the broker at once (SIGKILL): the harness's brokers hold nothing
        worth a clean shutdown. Used by the cleanup at exit too.
        """
        self.kill()


class Cluster:
    """
    N brokers of one cluster on loopback.

    @ivar brokers: the brokers, by index.
    @ivar username: the C{--ha-username} the brokers were given, used for
        the admin calls too; L{None} if none.
    @ivar secretFile: the cluster secret's file every broker is given
        (C{--ha-secret-file}) when they have no C{--ha-username}, made
        before any starts; L{None} with a username.
    @ivar credentials: what the admin calls log in with.
    """

    def __init__(
        self,
        size: int,
        arguments: Sequence[str] = (),
        brokerArguments: Sequence[Sequence[str]] | None = None,
        heartbeat: float = 0.5,
        username: str | None = None,
        password: str | None = None,
        ampContext: ssl.SSLContext | None = None,
    ) -> None:
        """
        Pick the ports and directories; start nothing yet.

        @param size: how many brokers.
        @param arguments: extra C{twistd qha} options for every broker.
        @param brokerArguments: extra options per broker, by index.
        @param heartbeat: C{--ha-heartbeat}.
        @param username: C{--ha-username} (and C{--ha-password}
            C{password}) for every broker, if given.
        @param ampContext: TLS for the admin calls, for brokers with C{--ha-tls-ca}.
        """
        self.username = username
        self.password = password
        self.ampContext = ampContext
        self._root = tempfile.mkdtemp(prefix="qha-cluster-")
        self.secretFile: str | None = None
        if username is None:
            self.secretFile = os.path.join(self._root, SECRET_NAME)
            secret, _ = readOrCreateSecret(self.secretFile)
            self.credentials = Credentials.fromSecret(secret)
        else:
            self.credentials = Credentials.fromPassword(username, password or "")
        ports = [(freePort(), freePort()) for _ in range(size)]
        # Every broker's HTTP port (the management API, the health checks).
        self.httpPorts = [freePort() for _ in range(size)]
        addresses = ",".join(f"{HOST}:{ampPort}" for _, ampPort in ports)
        self.brokers: list[ClusterBroker] = []
        for index, (port, ampPort) in enumerate(ports):
            dataDirectory = os.path.join(self._root, f"broker{index}")
            os.mkdir(dataDirectory)
            options = [
                "--ha-cluster",
                "yes",
                "--ha-brokers",
                addresses,
                "--ha-port",
                f"tcp:{ampPort}:interface={HOST}",
                "--http-port",
                f"tcp:{self.httpPorts[index]}:interface={HOST}",
                "--data-dir",
                dataDirectory,
                "--ha-heartbeat",
                str(heartbeat),
            ]
            if username is not None:
                options += ["--ha-username", username, "--ha-password", password or ""]
            else:
                options += ["--ha-secret-file", self.secretFile]  # type: ignore[list-item]
            options += list(arguments)
            if brokerArguments is not None and index < len(brokerArguments):
                options += list(brokerArguments[index])
            self.brokers.append(ClusterBroker(port, ampPort, dataDirectory, options))

    def __len__(self) -> int:
        """
        The number of brokers.
        """
        return len(self.brokers)

    def start(self, indexes: Sequence[int] | None = None) -> None:
        """
        Start the brokers (all of them by default), all at once, and wait
        for each to listen for AMP.

        @param indexes: which brokers to start.
        """
        if indexes is None:
            indexes = range(len(self.brokers))
        chosen = [self.brokers[index] for index in indexes]
        for broker in chosen:
            broker.launch()
        try:
            for broker in chosen:
                broker.waitUntilListening()
        except BrokerStartError:
            for broker in chosen:
                broker.kill()
            raise

    def startBroker(self, index: int) -> ClusterBroker:
        """
        Start one broker (again) and wait for it to listen for AMP.
        """
        broker = self.brokers[index]
        broker.start()
        return broker

    def restart(self, index: int) -> ClusterBroker:
        """
        Kill broker C{index} if it runs, and start it again on the same
        ports with the same data directory.
        """
        broker = self.brokers[index]
        broker.kill()
        broker.start()
        return broker

    def kill(self, index: int) -> None:
        """
        SIGKILL broker C{index} and wait for it to be gone.
        """
        self.brokers[index].kill()

    def pause(self, index: int) -> None:
        """
        SIGSTOP broker C{index}: it keeps its sockets but answers nothing.
        """
        self.brokers[index].signal(signal.SIGSTOP)

    def resume(self, index: int) -> None:
        """
        SIGCONT broker C{index}.
        """
        self.brokers[index].signal(signal.SIGCONT)

    def stop(self) -> None:
        """
        Kill every broker and remove their data directories. Safe to call
        more than once; meant for C{addCleanup}.
        """
        for broker in self.brokers:
            broker.signal(signal.SIGCONT)
            broker.kill()
        shutil.rmtree(self._root, ignore_errors=True)

    # Admin over AMP

    def call(
        self, index: int, command: type[amp.Command], timeout: float = AMP_TIMEOUT, **arguments: Any
    ) -> dict[str, Any]:
        """
        Call an AMP command on broker C{index}, logged in with the cluster's
        secret (or HA credentials).
        """
        return callAMP(
            self.brokers[index].ampPort,
            command,
            timeout,
            credentials=self.credentials,
            context=self.ampContext,
            **arguments,
        )

    def promote(self, index: int, force: bool = False, timeout: float = 10.0) -> dict[str, Any]:
        """
        Promote broker C{index} (what a cluster manager does).

        @return: its answer: C{role} and C{epoch}.
        @raise RemoteAMPError: if it refuses.
        """
        return self.call(index, Promote, timeout, force=force)

    def query(self, index: int, timeout: float = AMP_TIMEOUT) -> dict[str, Any]:
        """
        Broker C{index}'s HA state (role, epoch, brokers, backups...).
        """
        state: dict[str, Any] = json.loads(self.call(index, Query, timeout)["state"])
        return state

    def role(self, index: int, timeout: float = AMP_TIMEOUT) -> str:
        """
        Broker C{index}'s role.
        """
        return str(self.query(index, timeout)["role"])

    def ping(self, index: int) -> str:
        """
        Ping broker C{index}; its role.
        """
        return str(self.call(index, Ping)["role"])

    def listObjects(self, index: int, kind: str) -> list[dict[str, Any]]:
        """
        Broker C{index}'s queues, exchanges or bindings (any role).
        """
        objects: list[dict[str, Any]] = json.loads(self.call(index, ListObjects, kind=kind)["objects"])
        return objects

    def addObject(self, index: int, kind: str, description: dict[str, Any]) -> None:
        """
        Declare a queue or exchange on broker C{index} over AMP.
        """
        self.call(index, AddObject, kind=kind, description=json.dumps(description))

    def deleteObject(self, index: int, kind: str, name: str) -> None:
        """
        Delete a queue or exchange on broker C{index} over AMP.
        """
        self.call(index, DeleteObject, kind=kind, name=name)

    def waitFor(
        self,
        index: int,
        check: Any,
        timeout: float = ROLE_TIMEOUT,
        what: str = "the expected state",
    ) -> dict[str, Any]:
        """
        Query broker C{index} until C{check(state)} is true, waiting for the
        broker to log something between two queries.

        @return: the state that passed.
        @raise AssertionError: after C{timeout} seconds, with the last state
            and the broker's output.
        """
        broker = self.brokers[index]
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            left = deadline - time.monotonic()
            try:
                last = self.query(index, timeout=max(0.2, min(left, 1.0)))
            except (OSError, RemoteAMPError) as error:
                last = error
            else:
                if check(last):
                    return dict(last)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"broker {index} {broker!r}: timed out after {timeout} s waiting for"
                    f" {what}; last answer {last!r}; its output:\n{broker.output(60)}"
                )
            broker.waitForOutput(min(left, 0.1))

    def waitForRole(self, index: int, role: str, timeout: float = ROLE_TIMEOUT) -> dict[str, Any]:
        """
        Wait until broker C{index} is in C{role}.

        @return: its state then.
        """
        return self.waitFor(index, lambda state: state["role"] == role, timeout, f"role {role}")

    def waitForBackups(self, index: int, count: int, timeout: float = ROLE_TIMEOUT) -> dict[str, Any]:
        """
        Wait until the primary C{index} counts C{count} ready backups.
        """
        return self.waitFor(
            index,
            lambda state: sum(1 for backup in state["backups"] if backup["ready"]) >= count,
            timeout,
            f"{count} ready backups",
        )

    def startPrimary(self, index: int = 0, timeout: float = ROLE_TIMEOUT) -> None:
        """
        Promote broker C{index} and wait until it is active and listens
        for AMQP.
        """
        self.promote(index)
        self.waitForRole(index, "active", timeout)
        self.waitForAMQP(index, timeout)

    def waitForAMQP(self, index: int, timeout: float = ROLE_TIMEOUT) -> None:
        """
        Wait until broker C{index} has logged that it listens for AMQP.
        """
        broker = self.brokers[index]
        deadline = time.monotonic() + timeout
        while not broker.amqpListening:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"broker {index} {broker!r} did not listen for AMQP within {timeout} s:"
                    f"\n{broker.output(60)}"
                )
            broker.waitForOutput(left)

    # AMQP clients

    def amqpParameters(self, index: int, **overrides: Any) -> pika.ConnectionParameters:
        """
        pika parameters for broker C{index}: guest, one attempt, bounded
        socket and handshake timeouts.
        """
        return guestParameters(HOST, self.brokers[index].port, **overrides)

    def amqpParams(self, **overrides: Any) -> list[pika.ConnectionParameters]:
        """
        pika parameters for every broker, in order: what a client gives
        C{pika.BlockingConnection} to land on whichever is the primary.
        """
        return [self.amqpParameters(index, **overrides) for index in range(len(self.brokers))]

    def connect(self, index: int | None = None, **overrides: Any) -> pika.BlockingConnection:
        """
        A pika blocking connection to broker C{index}, or to whichever
        broker takes it when C{index} is L{None}. The caller closes it.
        """
        if index is None:
            return pika.BlockingConnection(self.amqpParams(**overrides))
        return pika.BlockingConnection(self.amqpParameters(index, **overrides))


def startCluster(
    testCase: Any,
    size: int,
    arguments: Sequence[str] = (),
    primary: int | None = 0,
    **keywords: Any,
) -> Cluster:
    """
    A cluster for one test: started, stopped by C{testCase.addCleanup}, and
    (unless C{primary} is L{None}) with broker C{primary} promoted and
    active and every other broker ready.

    @param testCase: the test; its C{addCleanup} stops the cluster.
    @param size: how many brokers.
    @param arguments: extra C{twistd qha} options for every broker.
    @param primary: the broker to promote, or L{None} to leave every
        broker joining.
    @param keywords: passed on to L{Cluster}.
    """
    cluster = Cluster(size, arguments, **keywords)
    testCase.addCleanup(cluster.stop)
    cluster.start()
    if primary is not None:
        cluster.startPrimary(primary)
        for index in range(size):
            if index != primary:
                cluster.waitForRole(index, "ready")
        cluster.waitForBackups(primary, size - 1)
    return cluster


__all__ = [
    "AMP_TIMEOUT",
    "BlockingAMP",
    "Cluster",
    "ClusterBroker",
    "RemoteAMPError",
    "ROLE_TIMEOUT",
    "callAMP",
    "freePort",
    "startCluster",
]
