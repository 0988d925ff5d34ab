"""
Replaying the event stream: the L{Replicator} applies events to a virtual
host exactly, running no policy of its own. A backup applies its primary's
stream with it, and a store replays its journal's records with it.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Callable, Generator, Iterator, Mapping

from twisted.logger import Logger

from ..amqp.accounts import AccountChange, AccountError, Accounts
from .settings import RuntimeSettings, SettingsError
from ..broker.errors import AMQPError
from ..broker.exchange import exchangeType
from ..broker.message import Message
from ..broker.queue import Entry, Queue
from ..broker.vhost import VirtualHost
from ..broker.vhosts import VirtualHosts
from . import events as ev


def holdingsOf(vhost: VirtualHost, everyVhost: bool = True) -> dict[str, Any]:
    """
    What the backup holds, for the primary to send only what it lacks: per
    queue its uuid and its entry ids as ranges.

    @param everyVhost: also (by default) the queues of the broker's other virtual hosts
        (C{vhost} is its default one). Those are keyed by their uuid, not
        their name, so that the holdings keep the shape they always had;
        the primary looks a queue of another vhost up by its uuid (see
        L{heldKey}), and checks the uuid of whatever it finds.
    """
    holdings: dict[str, Any] = {}
    hosts = list(VirtualHosts.of(vhost)) if everyVhost else [vhost]
    for each in hosts:
        for queue in each.queues.values():
            # (Runs of ids: a paged segment's without an integer per id.)
            ranges = queue.idRanges()
            key = queue.name if each is vhost else queue.uuid
            holdings[key] = {"uuid": queue.uuid, "ids": ranges}
    return holdings


def heldKey(queue: Queue) -> str:
    """
    The key of C{queue} in holdings (see L{holdingsOf}): its name in the
    default virtual host, its uuid in another.
    """
    vhost = queue.vhost
    if vhost.registry is None or vhost.registry.default is vhost:
        return queue.name
    return queue.uuid


# The most virtual hosts a snapshot may list.
MAX_VHOSTS = 1 << 16
# The most backups a members event may list, and the longest id, address
# or role it may give one.
MAX_MEMBERS = 1024
MAX_MEMBER_FIELD = 1024


def _loads(kind: bytes, data: bytes) -> Any:
    """
    The JSON value of the C{kind} event's payload.

    @raise ev.MalformedEvents: if it is not JSON (or nests too deep for
        the decoder).
    """
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as error:
        raise ev.MalformedEvents(
            f"malformed {ev.EVENT_NAMES[kind]} event: not JSON ({error})"
        ) from None


def _name(value: Any) -> bool:
    """
    Whether C{value} is a name an event may carry: a string of at most
    L{ev.MAX_NAME} bytes of UTF-8.
    """
    return (
        isinstance(value, str)
        and len(value) <= ev.MAX_NAME
        and len(value.encode("utf-8", "replace")) <= ev.MAX_NAME
    )


def parseSnapshot(data: bytes) -> tuple[dict[str, str], set[str]]:
    """
    The queues (name to uuid) and exchanges a snapshot event says the
    primary has.

    @raise ev.MalformedEvents: naming what is wrong with it.
    """
    present = _loads(ev.SNAPSHOT, data)

    def wrong(what: str) -> ev.MalformedEvents:
        """
        The error saying C{what} is wrong with the snapshot.
        """
        return ev.MalformedEvents(f"malformed snapshot event: {what}")

    if not isinstance(present, dict):
        raise wrong(f"a JSON {type(present).__name__}, not an object")
    vhosts = present.get("vhosts")
    if vhosts is not None:
        if not isinstance(vhosts, list) or len(vhosts) > MAX_VHOSTS:
            raise wrong(f"'vhosts' is not a list of at most {MAX_VHOSTS} vhost names")
        for name in vhosts:
            if not _name(name) or ev.vhostNameProblem(name) is not None:
                raise wrong(f"vhost {str(name)[:64]!r} is not a vhost name")
    queues = present.get("queues")
    if not isinstance(queues, dict):
        raise wrong("'queues' is not an object of queue names to uuids")
    for name, uuid in queues.items():
        if not _name(name) or not _name(uuid):
            raise wrong(f"queue {name[:64]!r}: its name or uuid {str(uuid)[:64]!r} is not a name")
    exchanges = present.get("exchanges")
    if not isinstance(exchanges, list):
        raise wrong("'exchanges' is not a list of exchange names")
    for name in exchanges:
        if not _name(name):
            raise wrong(f"exchange {str(name)[:64]!r} is not a name")
    return queues, set(exchanges)


def snapshotVhosts(data: bytes) -> list[str] | None:
    """
    The virtual hosts a snapshot (of the default vhost) says the primary
    has, or L{None} if it does not say (a primary with one; a snapshot of
    another vhost). Call after L{parseSnapshot} checked it.
    """
    present = _loads(ev.SNAPSHOT, data)
    vhosts = present.get("vhosts")
    return list(vhosts) if vhosts is not None else None


def parseMembers(data: bytes) -> list[dict[str, str]]:
    """
    The backups a members event lists: each an object of strings with an
    C{id}.

    @raise ev.MalformedEvents: naming what is wrong with it.
    """
    members = _loads(ev.MEMBERS, data)

    def wrong(what: str) -> ev.MalformedEvents:
        """
        The error saying C{what} is wrong with the members.
        """
        return ev.MalformedEvents(f"malformed members event: {what}")

    if not isinstance(members, list):
        raise wrong(f"a JSON {type(members).__name__}, not a list")
    if len(members) > MAX_MEMBERS:
        raise wrong(f"{len(members)} members (at most {MAX_MEMBERS})")
    for index, member in enumerate(members):
        if not isinstance(member, dict) or not isinstance(member.get("id"), str):
            raise wrong(f"member {index} is not an object with an id")
        for key, value in member.items():
            if not isinstance(value, str) or len(key) > MAX_MEMBER_FIELD or len(value) > MAX_MEMBER_FIELD:
                raise wrong(
                    f"member {index}: field {key[:64]!r} is not a string of at most"
                    f" {MAX_MEMBER_FIELD}"
                )
    return members


_H = struct.Struct(">H").unpack_from
_I = struct.Struct(">I").unpack_from
# The rest of an enqueue after its queue name, by the length of its
# addressing and header as encoded (see Replicator._leadingRun).
_shapes: dict[int, struct.Struct] = {}


class Verbatim:
    """
    How much of a box, from its start, a store may write as it came
    rather than encode again what applying it did: a backup's catch-up
    batch is a run of enqueues encoded as a store encodes them, and
    encoding a million of them again is a fifth of the backup's work.

    L{Replicator.steps} applies the box's leading run of enqueues of new
    persistent messages, not acquired, on queues a store keeps (durable,
    not exclusive), of the default virtual host, in a loop of its own
    (L{Replicator._leadingRun}), and counts them here: what the store
    would write of them is exactly their bytes. The first other event (or
    a message the queue had already, which changes nothing) ends the run:
    L{close} is called before it is applied, and the store sees it, and
    every event after it, as ever. A run that reaches the box's end is
    not closed.

    @ivar end: the box's bytes up to this offset are such events, applied.
    @ivar count: how many.
    @ivar bytes: their bodies' bytes.
    @ivar open: whether the run goes on.
    """

    def __init__(self, closed: Callable[[], None] = lambda: None) -> None:
        """
        @param closed: called once, when the run ends (before the event
            that ends it is applied).
        """
        self.end = 0
        self.count = 0
        self.bytes = 0
        self.open = True
        self._closed = closed

    def close(self) -> None:
        """
        The run ends here.
        """
        if self.open:
            self.open = False
            self._closed()


class Replicator:
    """
    Applies replication events to a backup's virtual hosts.

    @ivar members: the backups the primary last said it had.
    @ivar default: the default virtual host, where each box starts.
    @ivar vhosts: the broker's virtual hosts.
    @ivar vhost: the virtual host the events being applied are of.
    @ivar applied: events applied so far.
    @ivar enqueues: enqueue events applied so far (a catch-up batch says how
        many it carries, and the backup checks it).
    """

    log = Logger()

    def __init__(self, vhost: VirtualHost, caughtUp: Callable[[], None]) -> None:
        """
        @param vhost: the broker's default virtual host (its others are
            found from it).
        """
        self.default = vhost
        self.vhosts = VirtualHosts.of(vhost)
        self.vhost = vhost
        self.caughtUp = caughtUp
        self.members: list[dict[str, str]] = []
        self.applied = 0
        self.enqueues = 0

    def apply(self, data: bytes) -> None:
        """
        Apply every event in one box, in order.

        @raise ev.MalformedEvents: if the box cannot be decoded.
        """
        for _ in self.steps(data, 0):
            pass

    def steps(self, data: bytes, every: int, verbatim: Verbatim | None = None) -> Iterator[None]:
        """
        Apply the events of one box in order, pausing (yielding) after
        every C{every} events (never if 0), so that a large box can be
        applied over several reactor turns; nothing else may be applied
        until the iterator is exhausted.

        @param verbatim: if given, the box's leading run of events a store
            may write as they came is applied first, and counted in it
            (see L{Verbatim} and L{_leadingRun}).
        @raise ev.MalformedEvents: if the box cannot be decoded (raised by
            the step that meets the fault; the events before it are
            applied).
        """
        self.vhost = self.default
        count = start = 0
        if verbatim is not None:
            start, count = yield from self._leadingRun(data, every, verbatim)
        queues = self.vhost.queues
        for event in ev.readEvents(data, start):
            if every:
                count += 1
                if count > every:
                    count = 1
                    yield None
            self.applied += 1
            kind = event[0]
            try:
                if kind == ev.VHOST:
                    # Not counted as applied: it is no event of its own.
                    self.applied -= 1
                    self.vhost = self.vhosts.ensure(event[1])
                    queues = self.vhost.queues
                    continue
                if kind == ev.VHOST_DELETED:
                    self.vhostDeleted(event[1])
                    queues = self.vhost.queues
                    continue
                if kind == ev.ENQUEUED:
                    # The hot event, applied without the handler table.
                    self.applyEnqueued(queues, event)
                    continue
                _handlers[kind](self, *event[1:])
            except AMQPError as error:
                # The primary accepted it; a difference here is a bug, not a
                # reason to stop following.
                self.log.warn(
                    "could not apply {event}: {error}", event=event[0], error=error.replyText
                )

    def _leadingRun(self, data: bytes, every: int, verbatim: Verbatim) -> Generator[None, None, tuple[int, int]]:
        """
        Apply the box's leading run of enqueues of new persistent messages,
        not acquired, on queues a store keeps, in the default virtual host
        (L{Verbatim}), decoded and applied in one loop (a catch-up batch is
        such a run, thousands of events long), pausing as L{steps} does.

        Anything else ends the run before it is applied: another event, an
        enqueue the run does not take, and an enqueue this loop cannot
        decode (L{ev.readEvents} then decodes it in L{steps}, refusing it
        with its reasons if it is malformed); so is a message the queue had
        already (a change of nothing, applied again by L{steps}). There is
        no run on a broker that is not a replica (single-queue replication
        to a serving broker): there an enqueue may be handed to a waiting
        consumer at once, which the store observes too.

        Consecutive enqueues share what they have in common: their queue
        (the event's type and queue name, checked as one piece of bytes
        against the previous event's) and their addressing and header (the
        bytes from the addressing's length to the header's end, checked as
        one piece too): the messages share those bytes, and the rest of an
        event is unpacked at once. The entries of a queue are gathered and
        added together (L{Queue.replicaAppend}) before each pause, at the
        end of the run and when the queue changes; if the queue cannot
        take them so, they are decoded again and added one by one, as the
        rest of the step's.

        @return: where the run ends in the box (where L{steps} goes on),
            and the events counted towards the current pause.
        """
        if not self.default.replica:
            verbatim.close()
            return 0, 0
        queues = self.default.queues
        end = len(data)
        unpackH = _H
        unpackI = _I
        offset = start = count = taken = size = 0
        # The last event's type and queue name (as encoded) and its queue
        # (a queue the store keeps: any other ends the run), and its
        # addressing and header (persistent: any other ends the run), as
        # encoded from the addressing's length to the header's end, with
        # the struct of the rest of such an event (id, flags, deadline,
        # those bytes skipped, body length) and its size.
        prefix = b""
        queue: Queue | None = None
        shared = b""
        addressing = header = b""
        shape: struct.Struct | None = None
        skip = 0
        # Entries decoded and not yet added: their queue, where the first
        # starts, their bodies' bytes, whether any has a deadline, the
        # last id; whether entries are gathered at all in this step.
        pending: list[Entry] = []
        pendingQueue: Queue | None = None
        pendingStart = pendingBytes = 0
        pendingExpiring = False
        lastId = -1
        gather = True

        def addPending() -> bool:
            """
            Add the gathered entries to their queue at once and count them;
            whether it took them (if not, nothing changed).
            """
            nonlocal taken, size, pendingBytes, pendingExpiring, lastId
            assert pendingQueue is not None
            if not pendingQueue.replicaAppend(pending, pendingBytes, pendingExpiring):
                return False
            added = len(pending)
            self.applied += added
            self.enqueues += added
            taken += added
            size += pendingBytes
            pending.clear()
            pendingBytes = 0
            pendingExpiring = False
            lastId = -1
            return True

        try:
            while True:
                while offset < end:
                    start = offset
                    if queue is None or not data.startswith(prefix, offset):
                        # Another queue (or the first event).
                        if pending and not addPending():
                            break
                        if data[offset] != 69:  # ev.ENQUEUED
                            break
                        length = unpackH(data, offset + 1)[0]
                        if length > ev.MAX_NAME:
                            break
                        name = data[offset + 3 : offset + 3 + length]
                        if len(name) != length:
                            break
                        queue = queues.get(str(name, "utf-8"))
                        if queue is None or not queue.durable or queue.exclusive:
                            # Of a queue not kept.
                            queue = None
                            break
                        prefix = data[offset : offset + 3 + length]
                    offset += len(prefix)
                    if shape is None or not data.startswith(shared, offset + 17):
                        # Another addressing or header.
                        length = unpackI(data, offset + 17)[0]
                        headerAt = offset + 21 + length
                        headerLength = unpackI(data, headerAt)[0]
                        shared = data[offset + 17 : headerAt + 4 + headerLength]
                        addressing = shared[4 : 4 + length]
                        header = shared[8 + length :]
                        if len(shared) != 8 + length + headerLength or not Message(b"", header, b"").persistent:
                            # Cut short, or transient.
                            shape = None
                            break
                        shape = _shapes.get(len(shared))
                        if shape is None:
                            shape = _shapes[len(shared)] = struct.Struct(f">qBq{len(shared)}xI")
                        skip = shape.size
                    id, flags, expiresAt, length = shape.unpack_from(data, offset)
                    if id < 0 or flags > 1 or expiresAt < 0:
                        # Malformed, or acquired at once.
                        break
                    bodyAt = offset + skip
                    offset = bodyAt + length
                    if offset > end:
                        break
                    if every:
                        if count >= every:
                            if pending and not addPending():
                                break
                            count = 0
                            gather = True
                            verbatim.end, verbatim.count, verbatim.bytes = start, taken, size
                            yield None
                            # Other turns ran: look the queue up again.
                            if queues.get(queue.name) is not queue:
                                queue = None
                                break
                        count += 1
                    if gather:
                        if pending and id <= lastId and not addPending():
                            break
                        if not pending:
                            pendingStart = start
                            pendingQueue = queue
                        pending.append(
                            Entry(
                                Message(addressing, header, data[bodyAt:offset]),
                                id,
                                flags == 1,
                                0,
                                expiresAt / 1000.0 if expiresAt else None,
                            )
                        )
                        lastId = id
                        pendingBytes += length
                        if expiresAt:
                            pendingExpiring = True
                        continue
                    message = Message(addressing, header, data[bodyAt:offset])
                    try:
                        entry = queue.replicaEnqueue(
                            message, id, flags == 1, expiresAt / 1000.0 if expiresAt else None, False
                        )
                    except AMQPError:
                        count -= 1
                        break
                    if entry.message is not message:
                        # It had it: nothing changed (applied again by steps).
                        count -= 1
                        break
                    self.applied += 1
                    self.enqueues += 1
                    taken += 1
                    size += length
                else:
                    start = end
                if pending and not addPending():
                    # The queue did not take them at once: decode them
                    # again and add them one by one.
                    offset = pendingStart
                    count -= len(pending)
                    pending.clear()
                    pendingBytes = 0
                    pendingExpiring = False
                    lastId = -1
                    gather = False
                    queue = None
                    continue
                break
        except (struct.error, UnicodeDecodeError, IndexError):
            # Cut short or not UTF-8: the run ends at this event (or, if
            # the gathered entries cannot be added at once, at the first
            # of them), and readEvents says what is wrong with it.
            if pending and not addPending():
                start = pendingStart
                count -= len(pending)
        finally:
            verbatim.end, verbatim.count, verbatim.bytes = start, taken, size
        if start < end:
            verbatim.close()
        return start, count

    def applyEnqueued(self, queues: Mapping[str, Queue], event: tuple[Any, ...]) -> None:
        """
        Apply an enqueue event as L{ev.readEvents} decodes it to its queue
        in C{queues} (nothing if there is no such queue), and count it.
        L{steps} and the single-queue replicator
        (L{qha.ha.queuereplica.QueueReplicator.apply}) call it directly,
        not through the handler table: it is the hot event.

        @raise AMQPError: if the queue refuses the message.
        """
        self.enqueues += 1
        queue = queues.get(event[1])
        if queue is not None:
            queue.replicaEnqueue(
                Message(event[4], event[5], event[6]),
                event[2],
                event[3],
                event[7],
                event[8],
            )

    def _queue(self, name: str) -> Queue | None:
        return self.vhost.queues.get(name)

    def vhostAdded(self, name: str) -> None:
        """
        The primary added virtual host C{name}.
        """
        self.vhosts.ensure(name)

    def vhostDeleted(self, name: str) -> None:
        """
        The primary deleted virtual host C{name} and all in it; the events
        after this one are of the default virtual host if they were of it.
        """
        vhost = self.vhosts.get(name)
        if vhost is None or vhost is self.default:
            return
        self.vhosts.delete(name)
        if self.vhost is vhost:
            self.vhost = self.default

    def snapshot(self, data: bytes) -> None:
        """
        The primary's snapshot: drop what it no longer has (checked
        whole by L{parseSnapshot} before anything is dropped). The
        default virtual host's lists the primary's virtual hosts: those
        this broker has and the primary does not are deleted, those it
        lacks added.
        """
        queues, exchanges = parseSnapshot(data)
        vhosts = snapshotVhosts(data) if self.vhost is self.default else None
        if vhosts is not None:
            listed = set(vhosts)
            for vhost in list(self.vhosts):
                if vhost is not self.default and vhost.name not in listed:
                    self.vhosts.delete(vhost.name)
            for name in vhosts:
                self.vhosts.ensure(name)
        for name, queue in list(self.vhost.queues.items()):
            if queues.get(name) != queue.uuid:
                # Gone from the primary, or deleted and recreated while we
                # were away.
                self.vhost.deleteQueue(name, owner=queue.owner)
        for name in list(self.vhost.exchanges):
            if name and not name.startswith("amq.") and name not in exchanges:
                self.vhost.deleteExchange(name)
        # The snapshot sends every binding again: drop those held now, so
        # that one removed while this backup was away (or that of an
        # exchange deleted and recreated meanwhile) does not linger.
        for exchange in list(self.vhost.exchanges.values()):
            if exchange is not self.vhost.defaultExchange:
                for binding in list(exchange.bindings.values()):
                    self.vhost._removeBinding(binding, autoDelete=False)

    def queueDeclared(
        self,
        name: str,
        uuid: str,
        durable: bool,
        exclusive: bool,
        autoDelete: bool,
        everConsumed: bool,
        arguments: dict[str, Any],
    ) -> None:
        existing = self.vhost.queues.get(name)
        if existing is not None and existing.uuid != uuid:
            self.vhost.deleteQueue(name, owner=existing.owner)
            existing = None
        if existing is None:
            existing = self.vhost.declareQueue(
                name,
                durable=durable,
                autoDelete=autoDelete,
                arguments=arguments,
                replica=True,
                uuid=uuid,
            )
        # An auto-delete queue that had a consumer on the primary goes when
        # a promoted backup finds it without one (see Queue.promoted).
        existing.everConsumed = existing.everConsumed or everConsumed

    def queueDeleted(self, name: str, uuid: str) -> None:
        queue = self.vhost.queues.get(name)
        if queue is not None and queue.uuid == uuid:
            self.vhost.deleteQueue(name, owner=queue.owner)

    def exchangeDeclared(
        self,
        name: str,
        type: str,
        unused: str,
        durable: bool,
        autoDelete: bool,
        internal: bool,
        arguments: dict[str, Any],
    ) -> None:
        existing = self.vhost.exchanges.get(name)
        if existing is not None and existing.type != type:
            self.vhost.deleteExchange(name)
            existing = None
        if existing is None:
            exchangeType(type)
            self.vhost.declareExchange(
                name, type, durable=durable, autoDelete=autoDelete, internal=internal, arguments=arguments
            )

    def exchangeDeleted(self, name: str) -> None:
        self.vhost.deleteExchange(name)

    def bound(
        self, source: str, kind: bytes, destination: str, key: str, arguments: dict[str, Any]
    ) -> None:
        if kind == b"q":
            if destination in self.vhost.queues and source in self.vhost.exchanges:
                self.vhost.bindQueue(destination, source, key, arguments, replica=True)
        elif destination in self.vhost.exchanges and source in self.vhost.exchanges:
            self.vhost.bindExchange(destination, source, key, arguments)

    def unbound(
        self, source: str, kind: bytes, destination: str, key: str, arguments: dict[str, Any]
    ) -> None:
        if source not in self.vhost.exchanges:
            return
        if kind == b"q":
            if destination in self.vhost.queues:
                self.vhost.unbindQueue(destination, source, key, arguments, replica=True)
        elif destination in self.vhost.exchanges:
            self.vhost.unbindExchange(destination, source, key, arguments)

    def purged(self, name: str) -> None:
        queue = self._queue(name)
        if queue is not None:
            queue.replicaPurge()

    def dequeued(self, name: str, id: int) -> None:
        queue = self._queue(name)
        if queue is not None:
            queue.replicaDequeue(id)

    def acquired(self, name: str, id: int) -> None:
        queue = self._queue(name)
        if queue is not None:
            queue.replicaAcquire(id)

    def released(self, name: str, id: int) -> None:
        queue = self._queue(name)
        if queue is not None:
            queue.replicaRelease(id)

    def dequeuedRange(self, name: str, first: int, last: int) -> None:
        queue = self._queue(name)
        if queue is not None:
            queue.replicaDequeueRange(first, last)

    def acquiredRange(self, name: str, first: int, last: int) -> None:
        queue = self._queue(name)
        if queue is not None:
            queue.replicaAcquireRange(first, last)

    def caughtUpMarker(self) -> None:
        self.caughtUp()

    def membersChanged(self, data: bytes) -> None:
        """
        The backups the primary has, checked by L{parseMembers}.
        """
        self.members = parseMembers(data)


def _accountHandler(kind: bytes) -> Callable[..., None]:
    """
    The handler of the account event C{kind}: the change is applied to the
    broker's run-time accounts (L{Accounts.of} its virtual hosts), which
    check it whole first; a change they refuse is a malformed event, never
    applied.
    """
    change = ev.ACCOUNT_CHANGES[kind]

    def handle(self: Replicator, *fields: Any) -> None:
        try:
            Accounts.of(self.vhosts).apply(AccountChange(change, fields))
        except AccountError as error:
            raise ev.MalformedEvents(f"malformed {ev.EVENT_NAMES[kind]} event: {error}") from None

    return handle


def _settingsHandler(self: Replicator, state: bytes) -> None:
    """
    The handler of a L{ev.SETTINGS} event: the state is applied to the
    broker's run-time settings (L{RuntimeSettings.of} its virtual hosts),
    which check it whole first; a state they refuse is a malformed event,
    never applied.
    """
    try:
        RuntimeSettings.of(self.vhosts).apply(state)
    except SettingsError as error:
        raise ev.MalformedEvents(f"malformed settings event: {error}") from None


_handlers: dict[bytes, Callable[..., None]] = {
    ev.SETTINGS: _settingsHandler,
    ev.SNAPSHOT: Replicator.snapshot,
    ev.VHOST_ADDED: Replicator.vhostAdded,
    ev.VHOST_DELETED: Replicator.vhostDeleted,
    ev.QUEUE_DECLARED: Replicator.queueDeclared,
    ev.QUEUE_DELETED: Replicator.queueDeleted,
    ev.EXCHANGE_DECLARED: Replicator.exchangeDeclared,
    ev.EXCHANGE_DELETED: Replicator.exchangeDeleted,
    ev.BOUND: Replicator.bound,
    ev.UNBOUND: Replicator.unbound,
    ev.PURGED: Replicator.purged,
    ev.DEQUEUED: Replicator.dequeued,
    ev.ACQUIRED: Replicator.acquired,
    ev.RELEASED: Replicator.released,
    ev.DEQUEUED_RANGE: Replicator.dequeuedRange,
    ev.ACQUIRED_RANGE: Replicator.acquiredRange,
    ev.CAUGHT_UP: Replicator.caughtUpMarker,
    ev.MEMBERS: Replicator.membersChanged,
    **{kind: _accountHandler(kind) for kind in ev.ACCOUNT_CHANGES},
}
