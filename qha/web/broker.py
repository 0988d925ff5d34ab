"""
What the HTTP port needs of the broker: L{ManagedBroker}, the parts
C{qha.tap} hands it (the node, the AMQP factory, the users), and
L{ManagedNode}, what it reads of the node (L{qha.ha.node.HANode}).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.interfaces import IReactorTime

from ..amqp.protocol import BrokerFactory
from ..amqp.users import FailedLogins, IPasswordVerifier, UserDatabase
from ..broker.vhost import VirtualHost
from .rates import MessageRates


class RoleView(Protocol):
    """
    What the HTTP port reads of a broker's role.
    """

    @property
    def name(self) -> str:
        "The role's name (C{standalone}, C{active}, C{ready}, ...)."

    @property
    def servesClients(self) -> bool:
        "Whether objects may be changed here (primary, standalone)."


class ManagedNode(Protocol):
    """
    What the HTTP port needs of a broker's node.
    """

    @property
    def brokerId(self) -> str:
        "The broker's identity."

    @property
    def role(self) -> RoleView:
        "The broker's role."

    @property
    def epoch(self) -> int:
        "The broker's epoch."

    @property
    def replicateDefault(self) -> str:
        "C{--ha-replicate}."

    def mayConfirm(self) -> bool:
        "Whether a confirm may complete now (a primary within its lease)."

    def mayConfirmAhead(self) -> bool:
        "L{mayConfirm}, and for the lease's look-ahead more (health checks)."

    def describe(self) -> dict[str, Any]:
        "The HA state C{qha-admin query} shows."

    def applyPending(self) -> None:
        "Apply what a backup acknowledged and did not apply yet."


@dataclass
class ManagedBroker:
    """
    The broker as the HTTP port sees it.

    @ivar node: its node (role, epoch, HA state).
    @ivar factory: the AMQP factory: the virtual host, the connections.
    @ivar users: the users who may log in, with their tags.
    @ivar verifier: checks passwords (the factory's, off the reactor thread).
    @ivar clock: the reactor's time.
    @ivar failedLogins: logs refused logins, shared with AMQP.
    @ivar listeners: what the broker listens on, for C{/api/overview}.
    @ivar clusterName: C{--ha-cluster-name}.
    @ivar rates: the readings the API's message rates are taken from.
    """

    node: ManagedNode
    factory: BrokerFactory
    users: UserDatabase
    verifier: IPasswordVerifier
    clock: IReactorTime
    failedLogins: FailedLogins | None = None
    listeners: list[dict[str, Any]] = field(default_factory=list)
    clusterName: str = "qha"
    started: float = 0.0
    rates: MessageRates = field(default_factory=MessageRates)

    @property
    def vhost(self) -> VirtualHost:
        """
        The broker's (one) virtual host.
        """
        return self.factory.vhost

    @property
    def nodeName(self) -> str:
        """
        The node's name in the API (RabbitMQ's C{rabbit@host}).
        """
        return f"qha@{self.node.brokerId}"


__all__ = ["ManagedBroker", "ManagedNode", "RoleView"]
