"""
What a publish's confirm waits for, and who makes it wait.

A channel in confirm mode (or committing a transaction) confirms a publish
once every I{holder} has it: the replication gate once the backups hold it,
the store once its record is on disk. A channel knows neither; it asks each
of its factory's L{IConfirmHolder}s to L{hold <IConfirmHolder.hold>} the
publish, and waits for the L{Completion}s they answer with (several at once
through L{Waits}).

A replicating primary also paces its publishing connections so that the
backups work on one box while the primary reads the next: the connection
asks its factory's L{IReplicationPacer} when to batch a read, when to stop
and when to send. This is the hot path: the pacer's members are plain
attributes and methods, read or called once per read or per body frame.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Union

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from ..broker.message import Message
    from ..broker.queue import Queue

__all__ = ["Completion", "Waits", "IConfirmHolder", "IReplicationPacer", "Held"]


class Completion:
    """
    A publish (or a transaction) waiting before it is confirmed.

    It is done when every party it waits for (a backup) acknowledged it and
    at least C{needed} parties hold it (C{--ha-min-backups}), and no other
    hold (a recovering primary, a store's flush not yet on disk) remains.

    @ivar parties: who must still acknowledge.
    @ivar acked: how many parties acknowledged.
    @ivar needed: how many acknowledgements it needs at least.
    @ivar holds: other holds; each is taken off with C{holds -= 1} and a
        L{check}.
    @ivar done: whether the callbacks ran.
    @ivar replicated: whether it waits for backups (the gate keeps one of
        each kind per box).
    """

    __slots__ = ("parties", "acked", "needed", "holds", "callbacks", "done", "replicated")

    def __init__(self, needed: int) -> None:
        """
        @param needed: the least number of parties that must acknowledge.
        """
        self.parties: set[Any] = set()
        self.acked = 0
        self.needed = needed
        self.holds = 0
        self.callbacks: list[Callable[[], None]] = []
        self.done = False
        self.replicated = True

    def addCallback(self, callback: Callable[[], None]) -> None:
        """
        Call C{callback} once done (at once if it is).
        """
        if self.done:
            callback()
        else:
            self.callbacks.append(callback)

    def acknowledged(self, party: Any) -> None:
        """
        C{party} holds the message.
        """
        if party in self.parties:
            self.parties.discard(party)
            self.acked += 1
            self.check()

    def lost(self, party: Any) -> None:
        """
        C{party} went away before acknowledging.
        """
        if party in self.parties:
            self.parties.discard(party)
            self.check()

    def check(self) -> None:
        """
        Fire the callbacks if nothing is outstanding.
        """
        if self.done or self.parties or self.holds or self.acked < self.needed:
            return
        self.done = True
        callbacks, self.callbacks = self.callbacks, []
        for callback in callbacks:
            callback()


class Waits:
    """
    What a publish's confirm waits for when more than one holder holds it
    (the backups and the disk): done when every part is.

    @ivar parts: the completions, in the order of the holders.
    """

    __slots__ = ("parts",)

    def __init__(self, first: "Held", second: Completion) -> None:
        """
        @param first: the completion (or the L{Waits}) of the holders
            before; a L{Waits} is flattened into this one.
        @param second: the next holder's completion.
        """
        if isinstance(first, Waits):
            self.parts: tuple[Completion, ...] = first.parts + (second,)
        else:
            self.parts = (first, second)

    @property
    def done(self) -> bool:
        """
        Whether every part is done.
        """
        for part in self.parts:
            if not part.done:
                return False
        return True

    def addCallback(self, callback: Callable[[], None]) -> None:
        """
        Call C{callback} as each part is done.
        """
        for part in self.parts:
            part.addCallback(callback)


Held = Union[Completion, Waits]


class IConfirmHolder(Interface):
    """
    Something that must have a publish before its confirm goes out: the
    replication gate (the backups must hold it), the store (it must be on
    disk).
    """

    def hold(queues: list["Queue"], message: "Message") -> Completion | None:
        """
        C{message} was enqueued on C{queues} (each accepted it): hold its
        confirm until this holder has it.

        Publishes of one reactor turn may share a completion (they travel
        in the same box or record); the caller must not assume a new one.

        @return: the completion the confirm waits for, or L{None} if it
            need not wait for this holder.
        """


class IReplicationPacer(Interface):
    """
    How a replicating primary paces its publishing connections: the events
    of one read travel in one box, sent before the read's messages are
    delivered, and a connection that filled a box waits for it to go out.

    Read once per read (L{sources}) or per body frame (L{full}); keep them
    plain attributes.
    """

    sources = Attribute(
        "The ready backups: a collection, empty when there is nothing to pace"
        " (a connection then neither batches nor waits)."
    )
    full = Attribute(
        "Whether the box being gathered holds as many publishes as it should:"
        " publishing connections should wait for it to go out."
    )

    def shouldWait(buffered: int) -> bool:
        """
        Whether a connection that filled the box, and still has C{buffered}
        bytes read and not handled, should wait for the box to go out.
        """

    def whenSent(resume: Callable[[], None]) -> None:
        """
        Call C{resume} once the box being gathered has been written.
        """

    def sendNow() -> None:
        """
        Send the box being gathered to every ready backup, written to the
        socket at once (a read was handled: its box goes before its
        messages are delivered).
        """
