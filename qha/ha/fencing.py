"""
Promotion and fencing: the rules a broker checks before it becomes the
primary, the probe by which a primary learns of a newer one (and steps
down), and the check of another broker's claim that a newer epoch exists.

A primary steps down only for a primary of a newer epoch that answered it
itself: a probe's answer, or an answer to the question L{checkClaim} asks
when a peer speaks of a newer epoch (in a L{Hello}, a L{Heartbeat}, a
L{Subscribe}). A claim alone moves nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

from twisted.internet.defer import Deferred, ensureDeferred, gatherResults, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols import amp

from .commands import BadEpoch, Hello, Refused
from .config import HELLO_TIMEOUT
from .role import CATCHUP, JOINING, PRIMARY_ROLES, READY

MAX_EPOCH = 2**63
"""
Epochs are below this (they travel as signed 64-bit integers in the
store).
"""

MAX_EPOCH_LEAP = 2**32
"""
How far ahead of ours another broker's epoch may be: each promotion raises
the epoch by one, so a claim further ahead is nonsense.
"""

log = Logger()


def epochRefusal(epoch: Any, ours: int) -> BadEpoch | None:
    """
    Why a peer's C{epoch} cannot be, if it cannot.

    @param ours: this broker's epoch.
    """
    if not isinstance(epoch, int) or isinstance(epoch, bool):
        return BadEpoch(f"epoch {epoch!r:.40} is not an integer")
    if not 0 <= epoch < MAX_EPOCH:
        return BadEpoch(f"epoch {epoch} is outside 0..2**63-1")
    if epoch - ours > MAX_EPOCH_LEAP:
        return BadEpoch(f"epoch {epoch} is more than 2**32 ahead of this broker's ({ours})")
    return None


def checkEpoch(epoch: int, ours: int) -> None:
    """
    @raise BadEpoch: if a peer's C{epoch} cannot be (see L{epochRefusal}).
    """
    refusal = epochRefusal(epoch, ours)
    if refusal is not None:
        raise refusal

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


_checking: "WeakKeyDictionary[Any, Deferred[None]]" = WeakKeyDictionary()
"""
The claim each node is checking: claims that come while one is checked
wait for that check instead of asking the brokers again.
"""


def checkClaim(
    node: "HANode", epoch: int, brokerId: str, connection: amp.AMP | None = None
) -> Deferred[None]:
    """
    A peer (C{brokerId}, on C{connection} if it may be asked there) speaks
    of C{epoch}, newer than this primary's: ask it, and every broker of
    C{--ha-brokers}, who they are (each call bounded); step down (through
    L{HANode.heardEpoch}) only if one answers as the primary of an epoch
    newer than ours. Fires when the check is done (at once if there is
    nothing to check).
    """
    if not (node.role.isPrimary and epoch > node.epoch):
        return succeed(None)
    pending = _checking.get(node)
    if pending is None:
        pending = ensureDeferred(_check(node, epoch, brokerId, connection))
        _checking[node] = pending

        def done(result: object) -> object:
            _checking.pop(node, None)
            return result

        pending.addBoth(done)
    waiting: Deferred[None] = Deferred()
    pending.addBoth(lambda result: waiting.callback(None))
    return waiting


async def _check(
    node: "HANode", epoch: int, brokerId: str, connection: amp.AMP | None
) -> None:
    """
    The questions of L{checkClaim}.
    """
    asked: list[Deferred[Any]] = []
    if connection is not None and connection.transport is not None:
        ours, ourEpoch, ourRole = node.brokerId, node.epoch, node.role.name
        question: Deferred[Any] = connection.callRemote(
            Hello, brokerId=ours, epoch=ourEpoch, role=ourRole
        )
        question.addTimeout(HELLO_TIMEOUT, node.clock)
        asked.append(question.addErrback(lambda _: None))
    for address in node.options.brokers:
        asked.append(ensureDeferred(node.ask(address)).addErrback(lambda _: None))
    answers = await gatherResults(asked) if asked else []
    for answer in answers:
        if (
            answer is not None
            and answer.get("brokerId") != node.brokerId
            and answer.get("role") in PRIMARY_ROLES
            and epochRefusal(answer.get("epoch"), node.epoch) is None
            and answer["epoch"] > node.epoch
        ):
            node.heardEpoch(answer["epoch"], answer["role"], answer["brokerId"])
            return
    if node.role.isPrimary:
        log.warn(
            "broker {other} speaks of epoch {epoch}, newer than ours ({ours}), but no"
            " broker answers as its primary: staying the primary",
            other=brokerId or "?",
            epoch=epoch,
            ours=node.epoch,
        )


__all__ = ["MAX_EPOCH", "MAX_EPOCH_LEAP", "Probe", "checkClaim", "checkEpoch", "epochRefusal", "promotionRefusal"]
