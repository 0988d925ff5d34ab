"""
The cluster options of a broker: what C{twistd qha} was told about the
cluster, how it names the other brokers, and how long it waits for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IStreamClientEndpoint

from ..tls import MutualTLS, withTLS
from .auth import Credentials


def parseBrokers(value: str) -> list[str]:
    """
    Parse C{--ha-brokers}: C{host:port,host:port} or Qpid's
    C{amqp:tcp:host:port,tcp:host:port}; return C{host:port} strings.

    @raise ValueError: naming the part that is wrong.
    """
    text = value.strip()
    if text.startswith("amqp:"):
        text = text[len("amqp:") :]
    brokers = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if part.startswith("tcp:"):
            part = part[len("tcp:") :]
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(
                f"{part!r} in {value!r} is not host:port (e.g. node1:5673 or"
                " amqp:tcp:node1:5673,tcp:node2:5673)"
            )
        brokers.append(f"{host.strip('[]')}:{int(port)}")
    if not brokers:
        raise ValueError(f"{value!r} names no broker")
    return brokers


HELLO_TIMEOUT = 2.0
"""
Seconds a broker waits for another's answer to L{Hello}.
"""

PEER_TIMEOUT = 2.0
"""
Seconds a broker waits for another to accept a connection, to answer
each step of the login, or to answer any other call that has no deadline of its own: a
paused broker (SIGSTOP) accepts connections and never answers, and must not
hold up discovery, probing or promotion for ever.
"""


def clientEndpoint(address: str) -> str:
    """
    The client endpoint string for C{host:port}.
    """
    host, _, port = address.rpartition(":")
    return f"tcp:host={host}:port={port}:timeout={int(PEER_TIMEOUT)}"


def peerEndpoint(reactor: Any, address: str, tls: MutualTLS | None = None) -> IStreamClientEndpoint:
    """
    The endpoint of another broker's AMP port C{host:port}, with mutual TLS when
    C{tls} is given (C{--ha-tls-ca/--ha-tls-cert/--ha-tls-key}): every connection a
    broker makes to another goes through here.
    """
    host, _, _ = address.rpartition(":")
    return withTLS(tls, host, clientFromString(reactor, clientEndpoint(address)))


@dataclass
class HAOptions:
    """
    The cluster options of C{twistd qha}.

    @ivar tls: mutual TLS on the AMP port and the links to other brokers, or
        L{None} for plain TCP.
    @ivar secret: the cluster secret (the contents of C{--ha-secret-file}),
        used when no C{username} is given.
    """

    brokers: list[str]
    publicBrokers: str = ""
    username: str | None = None
    password: str | None = None
    secret: bytes | None = field(default=None, repr=False)
    replicateDefault: str = "none"
    backupTimeout: float = 10.0
    heartbeat: float = 2.0
    minBackups: int = 0
    queueReplication: bool = False
    dataDir: str = "qha-data"
    coordinator: list[str] = field(default_factory=list)
    coordinatorCA: str | None = None
    coordinatorCert: str | None = None
    coordinatorKey: str | None = None
    clusterName: str = "qha"
    leaseTTL: int = 10
    amqpAddress: str = ""
    tls: MutualTLS | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def credentials(self) -> Credentials | None:
        """
        What brokers log in to each other with: C{--ha-username} and
        C{--ha-password} if given, else the cluster secret; L{None} when
        there is neither (in-memory unit tests: C{qha.tap} always reads or
        creates a secret).
        """
        if self.username is not None:
            return Credentials.fromPassword(self.username, self.password or "")
        if self.secret is not None:
            return Credentials.fromSecret(self.secret)
        return None


__all__ = ["HAOptions", "HELLO_TIMEOUT", "PEER_TIMEOUT", "clientEndpoint", "parseBrokers", "peerEndpoint"]
