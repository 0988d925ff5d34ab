"""
Promotion and fencing: the rules a broker checks before it becomes the
primary, and the probe by which a primary learns of a newer one (and steps
down).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import LoopingCall

from .commands import Refused
from .role import CATCHUP, JOINING, PRIMARY_ROLES, READY

if TYPE_CHECKING:
    from .node import HANode


def promotionRefusal(
    role: str,
    epoch: int,
    others: list[tuple[str, dict[str, Any]]],
    store: tuple[int, int] | None,
) -> Refused | None:
    """
    Why a broker may not be promoted without C{--force}, if it may not.

    @param role: the broker's role.
    @param epoch: its epoch.
    @param others: the other brokers that answered, with their answers to
        L{Hello}.
    @param store: its store's epoch and position, if it has a store.
    """
    if role == CATCHUP:
        return Refused("cannot promote this broker: it is still catching up with the primary")
    for address, answer in others:
        if answer["role"] in PRIMARY_ROLES and answer["epoch"] >= epoch:
            return Refused(
                f"cannot promote this broker: {address} is already the primary"
                f" ({answer['role']}, epoch {answer['epoch']})"
            )
    if role == JOINING:
        for address, answer in others:
            if answer["role"] == READY:
                return Refused(
                    f"cannot promote this broker: it is joining and {address} is"
                    " ready; promote that one"
                )
    if store is not None:
        for address, answer in others:
            theirs = (answer.get("storeEpoch"), answer.get("storePosition"))
            if theirs[0] is not None and theirs[1] is not None and theirs > store:
                return Refused(
                    f"cannot promote this broker: the store of {address} is newer"
                    f" (epoch {theirs[0]}, position {theirs[1]}) than this one's"
                    f" (epoch {store[0]}, position {store[1]}); promote that one, or"
                    " use --force"
                )
    return None


class Probe:
    """
    A primary asks the other brokers who they are, every heartbeat, to learn
    of a newer epoch; started by the primary states, stopped when they are
    left.
    """

    def __init__(self, node: "HANode") -> None:
        """
        @param node: the primary.
        """
        self.node = node
        self.loop = LoopingCall(self.probe)
        self.loop.clock = node.clock

    def start(self) -> "Probe":
        """
        Probe every C{--ha-heartbeat} seconds (never, if 0).
        """
        if self.node.options.heartbeat:
            self.loop.start(self.node.options.heartbeat, now=False).addErrback(lambda _: None)
        return self

    def stop(self) -> None:
        """
        Stop probing.
        """
        if self.loop.running:
            self.loop.stop()

    def probe(self) -> Deferred[None]:
        """
        One round: ask every broker; a primary of a newer epoch fences this
        one.
        """
        return ensureDeferred(self._probe()).addErrback(lambda _: None)

    async def _probe(self) -> None:
        node = self.node
        for address in node.options.brokers:
            answer = await node.ask(address)
            if answer is not None and answer["brokerId"] != node.brokerId:
                if answer["role"] in PRIMARY_ROLES:
                    node.heardEpoch(answer["epoch"], answer["role"], answer["brokerId"])


__all__ = ["Probe", "promotionRefusal"]
