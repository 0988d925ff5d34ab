"""
Synchronous unit tests of the cluster core (issue 4): the
replication event codec, L{ChunkedBytes}, the L{ReplicationGate} and its
L{Completion}s, and the replication protocol between two in-memory nodes.

Nothing here opens a socket or sleeps. Time is a L{Clock}; two nodes talk
AMP over L{twisted.test.iosim} fake transports, and C{pump.flush()} moves
their bytes. Each test that uses time ends with no timer left.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from pamqp import commands
from pamqp.body import ContentBody
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from qha.amqp.protocol import BrokerFactory
from qha.broker.message import Message
from qha.broker.queue import Consumer, Entry, Queue
from qha.broker.vhost import VirtualHost
from qha.changes import events as ev
from qha.changes.replay import Replicator, holdingsOf
from qha.ha.commands import CHUNK, ChunkedBytes, Events, eventsArguments, Heartbeat, Hello, Refused, StaleEpoch, Subscribe
from qha.ha.config import HAOptions
from qha.admin.locator import AdminLocator
from qha.ha.connection import NodeAMP, NodeAMPFactory, Session, nodeConnection
from qha.ha.identity import PersistentState
from qha.ha.link import BackupLink
from qha.ha.locator import ReplicationLocator
from qha.ha.node import HANode
from qha.amqp.holders import Completion
from qha.ha.primary import ReplicationGate
from qha.ha.role import ACTIVE, CATCHUP, JOINING, READY, RECOVERING
from qha.test.test_protocol import Client, fastUsers, publishBytes
from qha.testing import RecordingTarget

ALL = {"qpid.replicate": "all"}
"""
The declare arguments of a queue whose messages are replicated.
"""


def message(body: bytes, routingKey: str = "", headers: dict[str, Any] | None = None) -> Message:
    """
    A message for the default exchange, with C{headers} if given.
    """
    properties = commands.Basic.Properties(headers=headers) if headers else None
    return Message.build("", routingKey, body, properties)


def writeEnqueued(
    writer: ev.EventWriter,
    queue: str,
    id: int,
    redelivered: bool,
    addressing: bytes,
    header: bytes,
    body: bytes,
) -> None:
    """
    Write an enqueue event of C{queue} (a name) from its raw parts.
    """
    queueLike = SimpleNamespace(name=queue, durable=False)
    message = Message(addressing, header, body)
    writer.entry(queueLike, Entry(message, id, redelivered, 0, None))


def bodies(frames: list[Any]) -> list[bytes]:
    """
    The message bodies among decoded frames.
    """
    return [frame.value for _, frame in frames if isinstance(frame, ContentBody)]


def contents(queue: Queue) -> list[tuple[int, bytes, bool]]:
    """
    What a queue holds, ready or held by a consumer, in id order: each
    entry's id, body and redelivered mark.
    """
    entries: dict[int, Entry] = {}
    for level in queue.levels:
        for entry in level:
            entries[entry.id] = entry
    entries.update(queue.held)
    return [(entry.id, entry.message.body, entry.redelivered) for _, entry in sorted(entries.items())]


# The event codec


class EventCodecTests(SynchronousTestCase):
    """
    L{ev.EventWriter} and L{ev.readEvents}: every event type survives the
    round trip, and bad input is refused with L{ev.MalformedEvents} only.
    """

    table = {"x-max-length": 5, "qpid.replicate": "all", "nested": {"a": True}}

    def test_transient(self) -> None:
        """
        A writer's events are transient while they are only of messages no
        store keeps: transient messages, persistent ones of non-durable
        queues, acquires and dequeues. A persistent message of a durable
        queue or any other event makes them not; taking them starts over.
        """
        vhost = VirtualHost()
        plain = vhost.declareQueue("plain")
        durable = vhost.declareQueue("durable", durable=True)
        persistent = commands.Basic.Properties(delivery_mode=2)
        writer = ev.EventWriter()
        writer.entry(plain, plain.enqueue(Message.build("", "plain", b"1", persistent)))
        writer.entry(durable, durable.enqueue(Message.build("", "durable", b"2")))
        writer.entryEvent(ev.DEQUEUED, "durable", 1)
        self.assertTrue(writer.transient)
        writer.entry(durable, durable.enqueue(Message.build("", "durable", b"3", persistent)))
        self.assertFalse(writer.transient)
        writer.take()
        self.assertTrue(writer.transient)
        writer.event(ev.PURGED, "plain")
        self.assertFalse(writer.transient)

    def everyEvent(self) -> tuple[bytes, list[tuple[Any, ...]]]:
        """
        One event of every type, encoded; and the tuples that decoding
        must give back.
        """
        writer = ev.EventWriter()
        expected: list[tuple[Any, ...]] = []

        def add(kind: bytes, *fields: Any) -> None:
            """
            Write one event and expect it back as written.
            """
            writer.event(kind, *fields)
            expected.append((kind,) + fields)

        add(ev.SNAPSHOT, b'{"queues": {}}')
        add(ev.QUEUE_DECLARED, "q\u00e9", "uuid-1", True, False, True, False, self.table)
        add(ev.QUEUE_DELETED, "q\u00e9", "uuid-1")
        add(ev.EXCHANGE_DECLARED, "x", "topic", "", True, False, True, {})
        add(ev.EXCHANGE_DELETED, "x")
        add(ev.BOUND, "x", b"q", "q", "a.#", {"x-match": "all"})
        add(ev.UNBOUND, "x", b"x", "y", "", {})
        add(ev.PURGED, "q")
        writeEnqueued(writer, "q", 7, True, b"\x00\x01q", b"header", b"body")
        expected.append((ev.ENQUEUED, "q", 7, True, b"\x00\x01q", b"header", b"body", None, False))
        writer.entryEvent(ev.RELEASED, "q", 7)
        expected.append((ev.RELEASED, "q", 7))
        writer.entryEvent(ev.ACQUIRED, "q", 7)
        expected.append((ev.ACQUIRED, "q", 7))
        writer.entryEvent(ev.DEQUEUED, "q", 7)
        expected.append((ev.DEQUEUED, "q", 7))
        for id in (8, 9, 10):
            writer.entryEvent(ev.ACQUIRED, "q", id)
        expected.append((ev.ACQUIRED_RANGE, "q", 8, 10))
        for id in (8, 9, 10):
            writer.entryEvent(ev.DEQUEUED, "q", id)
        expected.append((ev.DEQUEUED_RANGE, "q", 8, 10))
        add(ev.MEMBERS, b"[]")
        add(ev.CAUGHT_UP)
        return writer.take(), expected

    def test_roundTrip(self) -> None:
        """
        Every event type decodes to what was written, in order.
        """
        data, expected = self.everyEvent()
        self.assertEqual(list(ev.readEvents(data)), expected)
        kinds = {event[0] for event in expected}
        self.assertEqual(kinds, set(ev.LAYOUTS))

    def test_counts(self) -> None:
        """
        The writer counts every event it was given, a run of ids included,
        and starts empty again after L{ev.EventWriter.take}.
        """
        writer = ev.EventWriter()
        for id in range(1, 101):
            writer.entryEvent(ev.DEQUEUED, "q", id)
        self.assertEqual(len(writer), 100)
        data = writer.take()
        self.assertEqual(list(ev.readEvents(data)), [(ev.DEQUEUED_RANGE, "q", 1, 100)])
        self.assertEqual((len(writer), writer.take()), (0, b""))

    def test_runsBreak(self) -> None:
        """
        A run of ids ends at a gap, at another queue, at another kind and at
        any other event; releases never form runs.
        """
        writer = ev.EventWriter()
        writer.entryEvent(ev.DEQUEUED, "q", 1)
        writer.entryEvent(ev.DEQUEUED, "q", 2)
        writer.entryEvent(ev.DEQUEUED, "q", 4)
        writer.entryEvent(ev.DEQUEUED, "r", 5)
        writer.entryEvent(ev.ACQUIRED, "r", 6)
        writer.event(ev.PURGED, "r")
        writer.entryEvent(ev.RELEASED, "r", 7)
        writer.entryEvent(ev.RELEASED, "r", 8)
        self.assertEqual(
            list(ev.readEvents(writer.take())),
            [
                (ev.DEQUEUED_RANGE, "q", 1, 2),
                (ev.DEQUEUED, "q", 4),
                (ev.DEQUEUED, "r", 5),
                (ev.ACQUIRED, "r", 6),
                (ev.PURGED, "r"),
                (ev.RELEASED, "r", 7),
                (ev.RELEASED, "r", 8),
            ],
        )

    def test_acquiredWithEnqueue(self) -> None:
        """
        An entry acquired right after it was written (a consumer was
        waiting) travels as one enqueue event, flagged acquired. An acquire
        of any other entry is an event of its own, and so is an acquire
        after another event.
        """
        vhost = VirtualHost()
        queue = vhost.declareQueue("q")
        first, second, third = (
            queue.enqueue(Message.build("", "q", body)) for body in (b"1", b"2", b"3")
        )
        alone = ev.EventWriter()
        alone.entry(queue, first)
        writer = ev.EventWriter()
        writer.entry(queue, first)
        writer.entryEvents(ev.ACQUIRED, "q", [first])
        self.assertEqual(len(alone.take()), len(writer.take()))
        writer.entry(queue, first)
        writer.entryEvent(ev.ACQUIRED, "q", 1)
        writer.entry(queue, second)
        writer.entryEvent(ev.RELEASED, "q", 1)
        writer.entryEvent(ev.ACQUIRED, "q", 2)
        writer.entry(queue, third)
        writer.entryEvents(ev.ACQUIRED, "q", [first, third])
        self.assertEqual(len(writer), 8)
        decoded = [
            event[:3] + event[8:] if event[0] == ev.ENQUEUED else event
            for event in ev.readEvents(writer.take())
        ]
        self.assertEqual(
            decoded,
            [
                (ev.ENQUEUED, "q", 1, True),
                (ev.ENQUEUED, "q", 2, False),
                (ev.RELEASED, "q", 1),
                (ev.ACQUIRED, "q", 2),
                (ev.ENQUEUED, "q", 3, False),
                (ev.ACQUIRED, "q", 1),
                (ev.ACQUIRED, "q", 3),
            ],
        )

    def test_replicaAcquiredWithEnqueue(self) -> None:
        """
        A backup applies an enqueue flagged acquired as the enqueue and the
        acquire: the entry is held, and marked redelivered for a failover.
        """
        vhost = VirtualHost()
        vhost.replica = True
        replicator = Replicator(vhost, lambda: None)
        writer = ev.EventWriter()
        writer.event(ev.QUEUE_DECLARED, "q", "uuid", False, False, False, False, {})
        writeEnqueued(writer, "q", 1, False, b"\x00\x01q", b"header", b"1")
        writeEnqueued(writer, "q", 2, False, b"\x00\x01q", b"header", b"2")
        writer.entryEvent(ev.ACQUIRED, "q", 2)
        replicator.apply(writer.take())
        queue = vhost.queues["q"]
        self.assertEqual(contents(queue), [(1, b"1", False), (2, b"2", True)])
        self.assertEqual(list(queue.held), [2])

    def test_entryEventsRuns(self) -> None:
        """
        L{ev.EventWriter.entryEvents} writes entries as runs of consecutive
        ids, going on from a run already begun, whether the entries are
        consecutive themselves or not; releases never form runs.
        """
        entries = [Entry(message(b""), id) for id in (2, 3, 4, 6, 7, 9, 8)]
        writer = ev.EventWriter()
        writer.entryEvent(ev.DEQUEUED, "q", 1)
        writer.entryEvents(ev.DEQUEUED, "q", entries[:3])
        writer.entryEvents(ev.DEQUEUED, "q", entries[3:])
        writer.entryEvents(ev.DEQUEUED, "r", entries[:1])
        writer.entryEvents(ev.DEQUEUED, "r", [])
        writer.entryEvents(ev.ACQUIRED, "r", entries[1:3])
        writer.entryEvents(ev.RELEASED, "r", entries[1:3])
        self.assertEqual(len(writer), 13)
        self.assertEqual(
            list(ev.readEvents(writer.take())),
            [
                (ev.DEQUEUED_RANGE, "q", 1, 4),
                (ev.DEQUEUED_RANGE, "q", 6, 7),
                (ev.DEQUEUED, "q", 9),
                (ev.DEQUEUED, "q", 8),
                (ev.DEQUEUED, "r", 2),
                (ev.ACQUIRED_RANGE, "r", 3, 4),
                (ev.RELEASED, "r", 3),
                (ev.RELEASED, "r", 4),
            ],
        )

    def test_largeBodies(self) -> None:
        """
        Bodies far over the 64 KiB of an AMP value, and empty ones, travel
        whole.
        """
        writer = ev.EventWriter()
        big = bytes(range(256)) * 4096 * 3
        writeEnqueued(writer, "q", 1, False, b"", b"h", big)
        writeEnqueued(writer, "q", 2, False, b"", b"", b"")
        writer.event(ev.SNAPSHOT, big)
        events = list(ev.readEvents(writer.take()))
        self.assertEqual(events[0], (ev.ENQUEUED, "q", 1, False, b"", b"h", big, None, False))
        self.assertEqual(events[1], (ev.ENQUEUED, "q", 2, False, b"", b"", b"", None, False))
        self.assertEqual(events[2], (ev.SNAPSHOT, big))

    def test_unencodable(self) -> None:
        """
        A field of a type the codec does not know is refused when written.
        """
        writer = ev.EventWriter()
        self.assertRaises(TypeError, writer.event, ev.PURGED, 1.5)

    def test_unknownType(self) -> None:
        """
        An unknown event type is malformed, and the message says where.
        """
        error = self.assertRaises(ev.MalformedEvents, list, ev.readEvents(b"Z"))
        self.assertIn("unknown event type b'Z' at offset 0", str(error))

    def test_truncated(self) -> None:
        """
        A box cut anywhere either decodes to a prefix of its events (cut
        between two events) or is refused as malformed: no other error.
        """
        data, expected = self.everyEvent()
        for end in range(len(data)):
            try:
                events = list(ev.readEvents(data[:end]))
            except ev.MalformedEvents:
                continue
            self.assertEqual(events, expected[: len(events)], f"cut at {end}")

    def test_corrupted(self) -> None:
        """
        A box with any one byte changed decodes to something or is refused
        as malformed: no other error escapes.
        """
        data, _ = self.everyEvent()
        for index in range(len(data)):
            for value in (0x00, 0xFF, 0x80):
                corrupt = data[:index] + bytes([value]) + data[index + 1 :]
                try:
                    list(ev.readEvents(corrupt))
                except ev.MalformedEvents:
                    pass

    def test_badUTF8(self) -> None:
        """
        A queue name that is not UTF-8 is malformed.
        """
        data = ev.DEQUEUED + b"\x00\x01\xff" + b"\x00" * 8
        self.assertRaises(ev.MalformedEvents, list, ev.readEvents(data))


# ChunkedBytes


class Echo(amp.Command):
    """
    A command that sends a L{ChunkedBytes} value and gets it back.
    """

    arguments = [(b"value", ChunkedBytes()), (b"tag", amp.Integer())]
    response = [(b"value", ChunkedBytes()), (b"tag", amp.Integer())]


class EchoLocator(amp.CommandLocator):
    """
    Answers L{Echo} with what it was given, and records the box's keys.
    """

    def __init__(self) -> None:
        """
        Nothing received yet.
        """
        super().__init__()
        self.values: list[bytes] = []

    @Echo.responder
    def echo(self, value: bytes, tag: int) -> dict[str, Any]:
        """
        Give C{value} back.
        """
        self.values.append(value)
        return {"value": value, "tag": tag}


class ChunkedBytesTests(SynchronousTestCase):
    """
    L{ChunkedBytes}: a value of any size through a real AMP box.
    """

    def test_eventsArguments(self) -> None:
        """
        The primary's hand-made L{Events} strings decode as L{Events}'
        arguments, large event data included, and match what AMP's own
        encoding gives.
        """
        data = bytes(range(256)) * 600
        for transient in (True, False):
            strings = eventsArguments(3, 7, data, 1234, transient)
            box = amp.AmpBox({key.encode("ascii"): value for key, value in strings.items()})
            self.assertEqual(
                Events.parseArguments(box, None),
                {"epoch": 3, "seq": 7, "events": data, "position": 1234, "transient": transient},
            )
            self.assertEqual(
                box,
                Events.makeArguments(
                    {"epoch": 3, "seq": 7, "events": data, "position": 1234, "transient": transient},
                    None,
                ),
            )

    def test_keys(self) -> None:
        """
        A value is spread over C{name}, C{name.1} ... each at most 64 KiB
        minus one byte, and read back whole.
        """
        argument = ChunkedBytes()
        value = b"a" * CHUNK + b"b" * CHUNK + b"c"
        strings: dict[bytes, bytes] = {}
        argument.toBox(b"events", strings, {"events": value}, None)
        self.assertEqual(sorted(strings), [b"events", b"events.1", b"events.2"])
        self.assertEqual([len(strings[key]) for key in sorted(strings)], [CHUNK, CHUNK, 1])
        objects: dict[str, Any] = {}
        argument.fromBox(b"events", strings, objects, None)
        self.assertEqual(objects, {"events": value})

    def test_boundaries(self) -> None:
        """
        An empty value, one of exactly one chunk and one a byte over, all in
        one serialized AMP box, come back as they were.
        """
        argument = ChunkedBytes()
        for size in (0, 1, CHUNK, CHUNK + 1, 3 * CHUNK):
            value = bytes(i % 251 for i in range(size))
            strings: dict[bytes, bytes] = {}
            argument.toBox(b"v", strings, {"v": value}, None)
            box = amp.AmpBox(strings)
            parsed = amp.parseString(box.serialize())[0]
            objects: dict[str, Any] = {}
            argument.fromBox(b"v", parsed, objects, None)
            self.assertEqual(objects["v"], value, f"size {size}")

    def test_overAMP(self) -> None:
        """
        Values over 64 KiB go both ways through two connected AMP protocols.
        """
        locator = EchoLocator()
        client, server, pump = iosim.connectedServerAndClient(
            lambda: amp.AMP(locator=locator), amp.AMP
        )
        big = bytes(range(256)) * 1024  # 256 KiB
        results: list[dict[str, Any]] = []
        client.callRemote(Echo, value=big, tag=1).addCallback(results.append)
        client.callRemote(Echo, value=b"", tag=2).addCallback(results.append)
        pump.flush()
        self.assertEqual(locator.values, [big, b""])
        self.assertEqual(results, [{"value": big, "tag": 1}, {"value": b"", "tag": 2}])

    def test_plainBytesRefuseBig(self) -> None:
        """
        The reason for the type: AMP's own L{amp.String} cannot carry it.
        """
        box = amp.AmpBox({b"v": b"x" * (CHUNK + 1)})
        self.assertRaises(amp.TooLong, box.serialize)


# The replication gate


class FakeNode:
    """
    What a L{ReplicationGate} reads of its node.
    """

    def __init__(self, minBackups: int = 0, replicateDefault: str = "none") -> None:
        """
        @param minBackups: C{--ha-min-backups}.
        @param replicateDefault: C{--ha-replicate}.
        """
        self.minBackups = minBackups
        self.replicateDefault = replicateDefault


class FakeSource:
    """
    A backup's replication source, as the gate sees it: the completions
    attached to it.
    """

    def __init__(self, name: str) -> None:
        """
        @param name: for messages.
        """
        self.name = name
        self.attached: list[Completion] = []

    def __repr__(self) -> str:
        """
        The name.
        """
        return f"<FakeSource {self.name}>"

    def attach(self, completion: Completion) -> None:
        """
        Record C{completion}.
        """
        self.attached.append(completion)


class GateTests(SynchronousTestCase):
    """
    L{ReplicationGate} and L{Completion}: which publishes wait, and for
    whom.
    """

    def setUp(self) -> None:
        """
        A virtual host with a replicated queue and a plain one.
        """
        self.vhost = VirtualHost()
        self.replicated = self.vhost.declareQueue("r", arguments=ALL)
        self.plain = self.vhost.declareQueue("p")

    def gate(self, minBackups: int = 0, sources: int = 0) -> tuple[ReplicationGate, list[FakeSource]]:
        """
        A gate with C{sources} ready backups.
        """
        gate = ReplicationGate(FakeNode(minBackups), Clock())
        made = [FakeSource(f"b{i}") for i in range(sources)]
        gate.sources.update(made)  # type: ignore[arg-type]
        return gate, made

    def confirmed(self, completion: Completion) -> list[bool]:
        """
        A list that gets C{True} once C{completion} fires.
        """
        fired: list[bool] = []
        completion.addCallback(lambda: fired.append(True))
        return fired

    def test_unreplicatedNeedsNothing(self) -> None:
        """
        A publish to queues that are not replicated with C{all} is
        confirmed at once, even with backups.
        """
        gate, _ = self.gate(sources=2)
        self.assertIsNone(gate.hold([self.plain]))
        config = self.vhost.declareQueue("c", arguments={"qpid.replicate": "configuration"})
        self.assertIsNone(gate.hold([config]))

    def test_noBackupsNoWait(self) -> None:
        """
        With no backup and no minimum, a replicated publish is not held.
        """
        gate, _ = self.gate()
        self.assertIsNone(gate.hold([self.replicated]))

    def test_waitsForEveryBackup(self) -> None:
        """
        A replicated publish waits for every ready backup's
        acknowledgement.
        """
        gate, (one, two) = self.gate(sources=2)
        completion = gate.hold([self.plain, self.replicated])
        assert completion is not None
        self.assertEqual(one.attached, [completion])
        self.assertEqual(two.attached, [completion])
        fired = self.confirmed(completion)
        completion.acknowledged(one)
        self.assertEqual(fired, [])
        completion.acknowledged(one)
        self.assertEqual(fired, [])
        completion.acknowledged(two)
        self.assertEqual(fired, [True])
        self.assertEqual(gate.waiting, set())

    def test_oneCompletionPerTurn(self) -> None:
        """
        Publishes of one turn share a completion; once a source sealed its
        box, the next publish gets a new one.
        """
        gate, (one,) = self.gate(sources=1)
        first = gate.hold([self.replicated])
        self.assertIs(gate.hold([self.replicated]), first)
        gate.sealed()
        second = gate.hold([self.replicated])
        self.assertIsNot(second, first)
        self.assertEqual(one.attached, [first, second])

    def test_backupLost(self) -> None:
        """
        A backup that goes away is no longer waited for, by the publishes
        already waiting or by later ones.
        """
        gate, (one, two) = self.gate(sources=2)
        completion = gate.hold([self.replicated])
        assert completion is not None
        fired = self.confirmed(completion)
        completion.acknowledged(one)
        gate.backupLost(two)  # type: ignore[arg-type]
        self.assertEqual(fired, [True])
        self.assertNotIn(two, gate.sources)
        gate.sealed()
        later = gate.hold([self.replicated])
        assert later is not None
        self.assertEqual(later.parties, {one})

    def test_minBackupsHolds(self) -> None:
        """
        With C{--ha-min-backups 1} and no backup, a replicated publish is
        held; a backup becoming ready (it holds everything queued) counts
        toward the shortfall and completes it.
        """
        gate, _ = self.gate(minBackups=1)
        completion = gate.hold([self.replicated])
        assert completion is not None
        fired = self.confirmed(completion)
        self.assertEqual(fired, [])
        source = FakeSource("late")
        gate.backupReady(source)  # type: ignore[arg-type]
        self.assertEqual(fired, [True])
        self.assertEqual(gate.waiting, set())

    def test_minBackupsAfterLoss(self) -> None:
        """
        With C{--ha-min-backups 1}, losing the only backup before it
        acknowledged leaves the publish held: nobody else holds it.
        """
        gate, (one,) = self.gate(minBackups=1, sources=1)
        completion = gate.hold([self.replicated])
        assert completion is not None
        fired = self.confirmed(completion)
        gate.backupLost(one)  # type: ignore[arg-type]
        self.assertEqual(fired, [])
        self.assertIn(completion, gate.waiting)

    def test_minBackupsCountsAcks(self) -> None:
        """
        With C{--ha-min-backups 2} and two backups, a publish completes
        once both acknowledged; with only one backup acknowledging it needs
        another backup to become ready.
        """
        gate, (one, two) = self.gate(minBackups=2, sources=2)
        completion = gate.hold([self.replicated])
        assert completion is not None
        fired = self.confirmed(completion)
        completion.acknowledged(one)
        gate.backupLost(two)  # type: ignore[arg-type]
        self.assertEqual(fired, [])
        gate.backupReady(FakeSource("three"))  # type: ignore[arg-type]
        self.assertEqual(fired, [True])

    def test_readyBackupNotCountedTwice(self) -> None:
        """
        A backup that is already a party to a completion does not count
        toward the minimum by becoming ready again; its acknowledgement
        does.
        """
        gate, (one,) = self.gate(minBackups=1, sources=1)
        completion = gate.hold([self.replicated])
        assert completion is not None
        fired = self.confirmed(completion)
        gate.backupReady(one)  # type: ignore[arg-type]
        self.assertEqual(fired, [])
        completion.acknowledged(one)
        self.assertEqual(fired, [True])

    def test_recoveryHolds(self) -> None:
        """
        A recovering primary holds every publish, replicated or not, until
        it is active.
        """
        gate, _ = self.gate()
        gate.recovering = True
        plain = gate.hold([self.plain])
        replicated = gate.hold([self.replicated])
        assert plain is not None and replicated is not None
        self.assertIsNot(plain, replicated)
        fired = self.confirmed(plain)
        firedReplicated = self.confirmed(replicated)
        self.assertEqual((fired, firedReplicated), ([], []))
        gate.recovered()
        self.assertTrue(plain.done)
        self.assertEqual(firedReplicated, [True])
        self.assertIsNone(gate.hold([self.plain]))

    def test_recoveryAndBackups(self) -> None:
        """
        A recovering primary's replicated publish needs both: recovery to
        end and the backups to acknowledge.
        """
        gate, (one,) = self.gate(sources=1)
        gate.recovering = True
        completion = gate.hold([self.replicated])
        assert completion is not None
        fired = self.confirmed(completion)
        completion.acknowledged(one)
        self.assertEqual(fired, [])
        gate.recovered()
        self.assertEqual(fired, [True])

    def test_doneCompletionCallsAtOnce(self) -> None:
        """
        A callback added to a completion that already fired is called at
        once.
        """
        completion = Completion(0)
        completion.check()
        fired = self.confirmed(completion)
        self.assertEqual(fired, [True])


# Two nodes in memory


class FakeBrokerFactory:
    """
    The AMQP factory as the node sees it: where the gate goes.
    """

    gate: Any = None


class FakeAMQP:
    """
    The AMQP listener of a broker, as the node drives it.

    @ivar listening: whether clients could connect.
    @ivar stopped: every reason given for stopping.
    """

    def __init__(self) -> None:
        """
        Not listening yet.
        """
        self.factory = FakeBrokerFactory()
        self.listening = False
        self.stopped: list[str] = []

    def startListening(self) -> None:
        """
        Accept clients.
        """
        self.listening = True

    def stopListening(self, reason: str = "the broker is stopping") -> None:
        """
        Refuse clients, recording C{reason}.
        """
        self.listening = False
        self.stopped.append(reason)


class Link:
    """
    One replication connection between two in-memory nodes.

    @ivar primarySide: the primary's AMP protocol (with a L{ReplicationLocator}).
    @ivar backupSide: the backup's AMP protocol, whose locator has C{link}.
    @ivar pump: moves the bytes.
    @ivar boxes: every box the backup applied, decoded, in order.
    @ivar subscribed: the result of the L{Subscribe} call, once answered.
    """

    def __init__(self, primarySide: NodeAMP, backupSide: NodeAMP, pump: iosim.IOPump, link: BackupLink) -> None:
        """
        Record the parts.
        """
        self.primarySide = primarySide
        self.backupSide = backupSide
        self.pump = pump
        self.link = link
        self.boxes: list[list[tuple[Any, ...]]] = []
        self.subscribed: list[Any] = []

    def flush(self) -> None:
        """
        Move every byte either way, and run what is due now.
        """
        self.pump.flush()

    def cut(self) -> None:
        """
        The connection drops.
        """
        transport = self.backupSide.transport
        if transport is not None:
            transport.loseConnection()
        self.pump.flush()

    def events(self, kind: bytes) -> list[tuple[Any, ...]]:
        """
        Every event of type C{kind} the backup applied on this link.
        """
        return [event for box in self.boxes for event in box if event[0] == kind]


class InMemoryCluster:
    """
    Brokers on one L{Clock}, joined by iosim connections instead of sockets.
    """

    def __init__(
        self,
        case: SynchronousTestCase,
        heartbeat: float = 0.0,
        minBackups: int = 0,
        backupTimeout: float = 10.0,
    ) -> None:
        """
        @param case: the test, for temporary directories.
        @param heartbeat: C{--ha-heartbeat} of every node (0: none).
        @param minBackups: C{--ha-min-backups} of every node.
        @param backupTimeout: C{--ha-backup-timeout} of every node.
        """
        self.case = case
        self.clock = Clock()
        self.heartbeat = heartbeat
        self.minBackups = minBackups
        self.backupTimeout = backupTimeout
        self.links: list[Link] = []
        self.nodes: list[HANode] = []

    def node(self) -> HANode:
        """
        A broker in a cluster, joining, that knows no address (so it never
        looks for a primary by itself: the test connects it).
        """
        options = HAOptions(
            brokers=[],
            heartbeat=self.heartbeat,
            minBackups=self.minBackups,
            backupTimeout=self.backupTimeout,
            dataDir=self.case.mktemp(),
        )
        state = PersistentState(options.dataDir)
        node = HANode(options, VirtualHost(clock=self.clock), self.clock, FakeAMQP(), state)
        self.nodes.append(node)
        return node

    def promote(self, node: HANode, force: bool = True) -> dict[str, Any]:
        """
        Promote C{node} (it asks no other broker: it knows none) and run
        what follows at once.
        """
        results: list[Any] = []
        ensureDeferred(node.promote(force)).addBoth(results.append)
        self.clock.advance(0)
        [result] = results
        if isinstance(result, Failure):
            result.raiseException()
        return dict(result)

    def primary(self) -> HANode:
        """
        A node promoted to active primary.
        """
        node = self.node()
        self.promote(node)
        self.case.assertEqual(node.role.name, ACTIVE)
        return node

    def connect(self, primary: HANode, backup: HANode, flush: bool = True) -> Link:
        """
        Subscribe C{backup} to C{primary} the way discovery does once it
        found the primary: a L{BackupLink} on the backup's connection, then
        L{Subscribe} with what the backup holds.
        """
        primarySide = NodeAMPFactory(None, [primary.replicationLocator]).buildProtocol(None)  # type: ignore[arg-type]
        backupSide = nodeConnection(None, [backup.replicationLocator], authenticated=True)
        pump = iosim.connect(
            primarySide,
            iosim.makeFakeServer(primarySide),
            backupSide,
            iosim.makeFakeClient(backupSide),
            clock=self.clock,
        )
        link = BackupLink(backup, backupSide, primary.brokerId, "primary:5673")
        connection = Link(primarySide, backupSide, pump, link)
        apply = link.replicator.apply

        def recordingApply(data: bytes) -> None:
            """
            Record the box, then apply it.
            """
            connection.boxes.append(list(ev.readEvents(data)))
            apply(data)

        link.replicator.apply = recordingApply  # type: ignore[method-assign]
        backup.followLink(link)
        backupSide.callRemote(
            Subscribe,
            brokerId=backup.brokerId,
            epoch=backup.epoch,
            address=f"backup-{backup.brokerId[:8]}:5673",
            holdings=json.dumps(holdingsOf(backup.vhost)).encode("utf-8"),
        ).addBoth(connection.subscribed.append)
        link.start()
        self.links.append(connection)
        if flush:
            connection.flush()
        return connection

    def kill(self, node: HANode) -> None:
        """
        C{node} dies at once, as with SIGKILL: nothing it had not sent yet
        leaves it, its connections drop, its timers stop.
        """
        for link in self.links:
            if link.link.primaryId == node.brokerId:
                transport = link.pump.serverIO
                transport.stream = []
                transport.disconnecting = True
        node.stopService()
        self.flush()

    def flush(self) -> None:
        """
        Flush every connection until none moves a byte.
        """
        while any(link.pump.pump() for link in self.links):
            pass

    def finish(self) -> None:
        """
        Stop every node, cut every connection, and check that no timer is
        left behind.
        """
        for node in self.nodes:
            node.stopService()
        for link in self.links:
            link.cut()
        self.clock.advance(1)
        self.case.assertEqual(self.clock.getDelayedCalls(), [])


def snapshotOf(vhost: VirtualHost) -> dict[str, Any]:
    """
    What a backup must match of a primary: every queue with its uuid and
    its messages (id, body) ready or held; every exchange but the built-in
    ones with its type; every binding of a non-default exchange.
    """
    return {
        "queues": {
            name: (queue.uuid, [(id, body) for id, body, _ in contents(queue)])
            for name, queue in vhost.queues.items()
        },
        "exchanges": {
            name: exchange.type
            for name, exchange in vhost.exchanges.items()
            if name and not name.startswith("amq.")
        },
        "bindings": sorted(
            (exchange.name, binding.destination.name, binding.routingKey)
            for exchange in vhost.exchanges.values()
            if exchange is not vhost.defaultExchange
            for binding in exchange.bindings.values()
        ),
    }


class ReplicationTests(SynchronousTestCase):
    """
    The replication protocol between a primary and a backup node over AMP.
    """

    def setUp(self) -> None:
        """
        A cluster in memory with an active primary and a joining backup.
        """
        self.cluster = InMemoryCluster(self)
        self.primary = self.cluster.primary()
        self.backup = self.cluster.node()

    def publish(self, queue: str, *bodies: bytes) -> Completion | None:
        """
        Publish C{bodies} to C{queue} on the primary as a channel does: route
        and enqueue, then ask the gate what the confirm waits for.
        """
        completion = None
        for body in bodies:
            queues = self.primary.vhost.publish("", queue, message(body, queue))
            completion = self.primary.gate.hold(queues) or completion
        return completion

    def assertReplicated(self) -> None:
        """
        The backup holds what the primary holds, for every replicated
        object.
        """
        self.assertEqual(snapshotOf(self.backup.vhost), snapshotOf(self.primary.vhost))

    def test_catchUp(self) -> None:
        """
        A backup that joins gets every replicated queue, exchange, binding
        and message the primary had, with the same ids, and becomes ready;
        queues with C{configuration} come without messages, and those
        with C{none} not at all.
        """
        vhost = self.primary.vhost
        vhost.declareQueue("all", arguments=ALL)
        vhost.declareQueue("config", arguments={"qpid.replicate": "configuration"})
        vhost.declareQueue("none")
        vhost.declareExchange("events", "topic", arguments=ALL)
        vhost.bindQueue("all", "events", "a.#", {})
        vhost.bindQueue("none", "events", "n.#", {})
        self.publish("all", b"one", b"two", b"three")
        self.publish("config", b"c")
        link = self.cluster.connect(self.primary, self.backup)
        self.assertEqual(link.subscribed, [{"epoch": 1}])
        self.assertEqual(self.backup.role.name, READY)
        self.assertEqual(self.backup.epoch, 1)
        self.assertEqual(sorted(self.backup.vhost.queues), ["all", "config"])
        backupAll = self.backup.vhost.queues["all"]
        self.assertEqual(contents(backupAll), [(1, b"one", False), (2, b"two", False), (3, b"three", False)])
        self.assertEqual(backupAll.uuid, vhost.queues["all"].uuid)
        self.assertEqual(contents(self.backup.vhost.queues["config"]), [])
        self.assertEqual(snapshotOf(self.backup.vhost)["bindings"], [("events", "all", "a.#")])
        self.assertEqual([source.ready for source in self.primary.sources.values()], [True])
        self.cluster.finish()

    def test_liveStream(self) -> None:
        """
        Once ready, the backup follows declares, publishes, acquisitions
        (marked redelivered on the backup), releases, acknowledgements,
        purges and deletes as they happen.
        """
        link = self.cluster.connect(self.primary, self.backup)
        vhost = self.primary.vhost
        queue = vhost.declareQueue("q", arguments=ALL)
        self.publish("q", b"1", b"2", b"3", b"4", b"5")
        link.flush()
        self.assertReplicated()
        first = queue.get()
        second = queue.get()
        assert first is not None and second is not None
        link.flush()
        replica = self.backup.vhost.queues["q"]
        self.assertEqual(sorted(replica.held), [1, 2])
        self.assertEqual(
            contents(replica),
            [(1, b"1", True), (2, b"2", True), (3, b"3", False), (4, b"4", False), (5, b"5", False)],
        )
        queue.settle(first)
        queue.release([second])
        link.flush()
        self.assertEqual(sorted(replica.held), [])
        self.assertEqual([id for id, _, _ in contents(replica)], [2, 3, 4, 5])
        self.assertReplicated()
        held = queue.get()
        assert held is not None
        self.assertEqual(held.id, 2)
        vhost.purgeQueue("q")
        link.flush()
        # The purge leaves the message a consumer holds.
        self.assertEqual(contents(replica), [(2, b"2", True)])
        self.assertReplicated()
        vhost.deleteQueue("q")
        link.flush()
        self.assertEqual(self.backup.vhost.queues, {})
        self.cluster.finish()

    def test_consumers(self) -> None:
        """
        Messages a consumer holds unacknowledged stay on the backup, marked
        redelivered; those it acknowledges go.
        """
        link = self.cluster.connect(self.primary, self.backup)
        queue = self.primary.vhost.declareQueue("q", arguments=ALL)
        target = RecordingTarget(credit=2)
        queue.addConsumer(Consumer(queue, "c", target))
        self.publish("q", b"a", b"b", b"c")
        link.flush()
        replica = self.backup.vhost.queues["q"]
        self.assertEqual(contents(replica), [(1, b"a", True), (2, b"b", True), (3, b"c", False)])
        (_, entry), _ = target.deliveries
        queue.settle(entry)
        link.flush()
        self.assertEqual([id for id, _, _ in contents(replica)], [2, 3])
        self.cluster.finish()

    def test_confirmWaitsForBackup(self) -> None:
        """
        A publish to a replicated queue completes only once the backup
        applied the box that carries it; one to an unreplicated queue at
        once.
        """
        link = self.cluster.connect(self.primary, self.backup)
        self.primary.vhost.declareQueue("q", arguments=ALL)
        self.primary.vhost.declareQueue("plain")
        self.assertIsNone(self.publish("plain", b"p"))
        completion = self.publish("q", b"m")
        assert completion is not None
        self.assertFalse(completion.done)
        link.flush()
        self.assertTrue(completion.done)
        self.assertEqual([id for id, _, _ in contents(self.backup.vhost.queues["q"])], [1])
        self.cluster.finish()

    def publishingClient(self, boxPublishes: int) -> tuple[Client, Link, Queue]:
        """
        An AMQP client of the primary in confirm mode on channel 1, the
        queue C{q} it publishes to, and the replication link to the backup;
        the primary's boxes carry C{boxPublishes} publishes at most before
        publishers wait.
        """
        link = self.cluster.connect(self.primary, self.backup)
        queue = self.primary.vhost.declareQueue("q", arguments=ALL)
        link.flush()
        self.primary.gate.boxPublishes = boxPublishes
        gate = self.primary.gate
        factory = BrokerFactory(
            self.primary.vhost, fastUsers(), self.cluster.clock, holders=[gate], pacer=gate
        )
        client = Client(factory)
        client.handshake()
        client.openChannel(1)
        client.call(1, commands.Confirm.Select())
        return client, link, queue

    def test_publisherWaitsForFullBox(self) -> None:
        """
        A connection that published a box's worth of replicated messages in
        one read stops there until that box has gone out, then goes on with
        the rest of the read and with what it read meanwhile, in order: the
        backup applies one box while the primary reads the next.
        """
        client, link, queue = self.publishingClient(4)
        before = len(link.boxes)
        client.send(b"".join(publishBytes(1, "", "q", b"%d" % i) for i in range(10)))
        self.assertEqual(queue.messageCount, 4)
        client.send(publishBytes(1, "", "q", b"late"))
        self.assertEqual(queue.messageCount, 4)
        self.assertEqual(client.received(), [])
        link.flush()
        self.assertEqual([len(box) for box in link.boxes[before:]], [4, 4, 3])
        expected = [b"%d" % i for i in range(10)] + [b"late"]
        self.assertEqual([body for _, body, _ in contents(queue)], expected)
        self.assertEqual(
            [body for _, body, _ in contents(self.backup.vhost.queues["q"])], expected
        )
        acks = [frame for _, frame in client.received()]
        self.assertTrue(all(isinstance(ack, commands.Basic.Ack) for ack in acks))
        self.assertEqual(acks[-1].delivery_tag, 11)
        client.disconnect()
        self.cluster.finish()

    def test_boxBeforeDeliveries(self) -> None:
        """
        The messages of one read reach their consumer only after their box
        has been sent, written to the backup's socket at once; the acquires
        of the delivery then travel as one run in the next box. Without a
        ready backup, messages are delivered as they are enqueued.
        """
        client, link, queue = self.publishingClient(64)
        factory = client.server.factory
        consumer = Client(factory)
        consumer.handshake()
        consumer.openChannel(1)
        consumer.call(1, commands.Basic.Consume(queue="q", consumer_tag="c"))
        written: list[int] = []
        deliveriesAtBox: list[int] = []
        # A socket's transport (iosim's moves bytes only when pumped).
        transport: Any = link.primarySide.transport
        transport.connected = True
        transport.doWrite = lambda: written.append(1)
        send = link.primarySide.callRemoteString

        def callRemoteString(command: bytes, requiresAnswer: bool = True, **strings: bytes) -> Any:
            """
            Note how many frames the consumer had when a box went out.
            """
            deliveriesAtBox.append(len(consumer.transport.value()))
            return send(command, requiresAnswer, **strings)

        link.primarySide.callRemoteString = callRemoteString  # type: ignore[method-assign]
        before = len(link.boxes)
        client.send(b"".join(publishBytes(1, "", "q", b"%d" % i) for i in range(3)))
        self.assertEqual((deliveriesAtBox, written), ([0], [1]))
        self.assertEqual(bodies(consumer.received()), [b"0", b"1", b"2"])
        link.flush()
        self.assertEqual(
            [
                [event[:2] + event[8:] if event[0] == ev.ENQUEUED else event for event in box]
                for box in link.boxes[before:]
            ],
            [[(ev.ENQUEUED, "q", False)] * 3, [(ev.ACQUIRED_RANGE, "q", 1, 3)]],
        )
        self.assertIsNone(self.primary.vhost.undispatched)
        link.cut()
        client.send(publishBytes(1, "", "q", b"alone"))
        self.assertEqual(bodies(consumer.received()), [b"alone"])
        client.disconnect()
        consumer.disconnect()
        self.cluster.finish()

    def test_deliveredWhenReadFails(self) -> None:
        """
        A read that ends in a connection error still sends the box of what
        it enqueued, and still delivers those messages to other
        connections' consumers.
        """
        client, link, queue = self.publishingClient(64)
        consumer = Client(client.server.factory)
        consumer.handshake()
        consumer.openChannel(1)
        consumer.call(1, commands.Basic.Consume(queue="q", consumer_tag="c"))
        before = len(link.boxes)
        garbage = b"\x01\x00\x01\x00\x00\x00\x04abcd\x00"
        client.send(b"".join(publishBytes(1, "", "q", b"%d" % i) for i in range(2)) + garbage)
        self.assertTrue(client.transport.disconnecting)
        self.assertEqual(bodies(consumer.received()), [b"0", b"1"])
        self.assertIsNone(self.primary.vhost.undispatched)
        link.flush()
        self.assertEqual([event[0] for event in link.boxes[before]], [ev.ENQUEUED] * 2)
        consumer.disconnect()
        self.cluster.finish()

    def test_publisherFarAheadFillsLargerBox(self) -> None:
        """
        A connection that has read far more than a box's worth goes on
        until the box holds C{largestBox} publishes, then waits.
        """
        client, link, queue = self.publishingClient(4)
        self.primary.gate.largestBox = 8
        self.primary.gate.farAhead = 0
        client.send(b"".join(publishBytes(1, "", "q", b"%d" % i) for i in range(20)))
        self.assertEqual(queue.messageCount, 8)
        link.flush()
        self.assertEqual(queue.messageCount, 20)
        client.disconnect()
        self.cluster.finish()

    def test_waitingPublisherStopsReading(self) -> None:
        """
        A connection waiting for a box keeps what it reads meanwhile, but
        stops reading once that passes a bound (the box may wait for a
        stalled backup until it is dropped), and reads again once the box
        went out.
        """
        client, link, queue = self.publishingClient(2)
        client.send(b"".join(publishBytes(1, "", "q", b"%d" % i) for i in range(3)))
        self.assertEqual(queue.messageCount, 2)
        self.assertEqual(client.transport.producerState, "producing")
        big = b"".join(publishBytes(1, "", "q", b"x" * 1000) for _ in range(300))
        client.send(big)
        self.assertEqual(client.transport.producerState, "paused")
        self.assertEqual(queue.messageCount, 2)
        link.flush()
        self.assertEqual(client.transport.producerState, "producing")
        self.assertEqual(queue.messageCount, 303)
        client.disconnect()
        self.cluster.finish()

    def test_publisherGoesOnWhenBackupLost(self) -> None:
        """
        A connection waiting for a box goes on when the backup goes away
        (no box will go out to it); its publishes are then confirmed
        without it.
        """
        client, link, queue = self.publishingClient(2)
        client.send(b"".join(publishBytes(1, "", "q", b"%d" % i) for i in range(5)))
        self.assertEqual(queue.messageCount, 2)
        self.cluster.kill(self.backup)
        self.cluster.clock.advance(0)
        self.assertEqual(queue.messageCount, 5)
        acks = [frame for _, frame in client.received()]
        self.assertEqual(acks[-1].delivery_tag, 5)
        client.disconnect()
        self.cluster.finish()

    def test_confirmRuns(self) -> None:
        """
        Publishes to a replicated and an unreplicated queue, mixed in one
        read, are confirmed in order: those after the first replicated one
        wait with it.
        """
        client, link, queue = self.publishingClient(100)
        self.primary.vhost.declareQueue("plain")
        client.send(
            publishBytes(1, "", "plain", b"p1")
            + publishBytes(1, "", "q", b"r1")
            + publishBytes(1, "", "plain", b"p2")
            + publishBytes(1, "", "q", b"r2")
        )
        [(_, ack)] = client.received()
        self.assertEqual((ack.delivery_tag, ack.multiple), (1, False))
        link.flush()
        [(_, ack)] = client.received()
        self.assertEqual((ack.delivery_tag, ack.multiple), (4, True))
        client.disconnect()
        self.cluster.finish()

    def test_batched(self) -> None:
        """
        A thousand publishes of one reactor turn travel in one box; a
        thousand gets and their acknowledgements, in order, in two events.
        """
        link = self.cluster.connect(self.primary, self.backup)
        queue = self.primary.vhost.declareQueue("q", arguments=ALL)
        link.flush()
        before = len(link.boxes)
        completion = self.publish("q", *[b"%d" % i for i in range(1000)])
        link.flush()
        self.assertEqual(len(link.boxes), before + 1)
        self.assertEqual(len(link.boxes[-1]), 1000)
        assert completion is not None
        self.assertTrue(completion.done)
        entries = [queue.get() for _ in range(1000)]
        for entry in entries:
            assert entry is not None
            queue.settle(entry)
        link.flush()
        self.assertEqual(len(link.boxes), before + 2)
        self.assertEqual(
            link.boxes[-1], [(ev.ACQUIRED_RANGE, "q", 1, 1000), (ev.DEQUEUED_RANGE, "q", 1, 1000)]
        )
        self.assertEqual(self.backup.vhost.queues["q"].messageCount, 0)
        self.cluster.finish()

    def test_largeMessage(self) -> None:
        """
        A body of a megabyte, far over an AMP value's 64 KiB, is
        replicated whole.
        """
        link = self.cluster.connect(self.primary, self.backup)
        self.primary.vhost.declareQueue("q", arguments=ALL)
        body = bytes(range(256)) * 4096
        completion = self.publish("q", body)
        link.flush()
        assert completion is not None
        self.assertTrue(completion.done)
        self.assertEqual(contents(self.backup.vhost.queues["q"]), [(1, body, False)])
        self.cluster.finish()


class BoxInterceptor:
    """
    Stands between a primary's replication source and the wire: it can
    lose, hold back or repeat the L{Events} boxes the primary sends.

    @ivar plan: what to do with each next box: C{"pass"}, C{"lose"},
        C{"hold"} (send later, with L{release}), C{"copy"} (send, and
        keep a copy to send again with L{release}) or C{"corrupt"} (send
        with a byte of garbage after its events). Boxes beyond the plan
        pass.
    @ivar sent: the sequence numbers of the boxes put on the wire, in order.
    """

    def __init__(self, protocol: NodeAMP, *plan: str) -> None:
        """
        Intercept the L{Events} calls of C{protocol}.
        """
        self.protocol = protocol
        self.original = protocol.callRemote
        self.plan = list(plan)
        self.kept: list[dict[str, Any]] = []
        self.sent: list[int] = []
        self.failures: list[Failure] = []
        protocol.callRemote = self.callRemote  # type: ignore[method-assign,assignment]
        self.originalString = protocol.callRemoteString
        protocol.callRemoteString = self.callRemoteString  # type: ignore[method-assign]

    def callRemoteString(self, command: bytes, requiresAnswer: bool = True, **strings: bytes) -> Any:
        """
        The primary sends L{Events} boxes as strings: decode them and treat
        them as L{callRemote} does.
        """
        if command != Events.commandName:
            return self.originalString(command, requiresAnswer, **strings)
        box = amp.AmpBox({key.encode("ascii"): value for key, value in strings.items()})
        return self.callRemote(Events, **Events.parseArguments(box, self.protocol))

    def callRemote(self, command: type[amp.Command], **arguments: Any) -> Deferred[Any]:
        """
        Send C{command}, or do to an L{Events} box what the plan says.
        """
        if command is not Events or not self.plan:
            if command is Events:
                self.sent.append(arguments["seq"])
            return self.original(command, **arguments)
        action = self.plan.pop(0)
        if action == "lose":
            return Deferred()
        if action == "hold":
            self.kept.append(arguments)
            return Deferred()
        if action == "copy":
            self.kept.append(arguments)
        if action == "corrupt":
            arguments = dict(arguments, events=arguments["events"] + b"Z")
        self.sent.append(arguments["seq"])
        return self.original(command, **arguments)

    def release(self) -> None:
        """
        Send the boxes held back or copied, in the order they came.
        """
        kept, self.kept = self.kept, []
        for arguments in kept:
            self.sent.append(arguments["seq"])
            self.original(Events, **arguments).addErrback(self.failures.append)


def ids(events: list[tuple[Any, ...]]) -> list[int]:
    """
    The ids that entry events name, ranges spelled out.
    """
    found: list[int] = []
    for event in events:
        if event[0] in (ev.DEQUEUED_RANGE, ev.ACQUIRED_RANGE):
            found.extend(range(event[2], event[3] + 1))
        else:
            found.append(event[2])
    return found


class StreamFaultTests(SynchronousTestCase):
    """
    Boxes lost, repeated or out of order, links that drop, and backups
    that come back holding things the primary no longer has.
    """

    def setUp(self) -> None:
        """
        A cluster in memory with an active primary, a joining backup, and a
        replicated queue C{q} on the primary.
        """
        self.cluster = InMemoryCluster(self)
        self.primary = self.cluster.primary()
        self.backup = self.cluster.node()
        self.queue = self.primary.vhost.declareQueue("q", arguments=ALL)

    def publish(self, *bodies: bytes, node: HANode | None = None) -> Completion | None:
        """
        Publish C{bodies} to C{q} on C{node} (the primary by default) as a
        channel does.
        """
        node = node or self.primary
        completion = None
        for body in bodies:
            queues = node.vhost.publish("", "q", message(body, "q"))
            completion = node.gate.hold(queues) or completion
        return completion

    def take(self, count: int) -> None:
        """
        A consumer on the primary takes and acknowledges the first
        C{count} messages of C{q}.
        """
        for _ in range(count):
            entry = self.queue.get()
            assert entry is not None
            self.queue.settle(entry)

    def replica(self, node: HANode | None = None) -> list[tuple[int, bytes, bool]]:
        """
        What the backup (or C{node}) holds of C{q}.
        """
        return contents((node or self.backup).vhost.queues["q"])

    def assertReplicated(self, backup: HANode | None = None, primary: HANode | None = None) -> None:
        """
        C{backup} holds what C{primary} holds.
        """
        self.assertEqual(
            snapshotOf((backup or self.backup).vhost), snapshotOf((primary or self.primary).vhost)
        )

    def test_replicatorDuplicates(self) -> None:
        """
        Applying a box twice, directly, is harmless while it describes the
        present: an enqueue of an id the replica holds is ignored, and so is
        a dequeue or an acquire of an id it does not hold.
        """
        vhost = VirtualHost()
        replicator = Replicator(vhost, lambda: None)
        writer = ev.EventWriter()
        writer.event(ev.QUEUE_DECLARED, "r", "uuid", False, False, False, False, {})
        writeEnqueued(writer, "r", 1, False, b"", b"", b"one")
        writeEnqueued(writer, "r", 2, False, b"", b"", b"two")
        box = writer.take()
        replicator.apply(box)
        replicator.apply(box)
        self.assertEqual(contents(vhost.queues["r"]), [(1, b"one", False), (2, b"two", False)])
        writer.entryEvent(ev.DEQUEUED, "r", 1)
        writer.entryEvent(ev.ACQUIRED, "r", 7)
        writer.entryEvent(ev.RELEASED, "r", 8)
        writer.entryEvent(ev.DEQUEUED, "absent", 1)
        box = writer.take()
        replicator.apply(box)
        replicator.apply(box)
        self.assertEqual(contents(vhost.queues["r"]), [(2, b"two", False)])
        self.assertEqual(vhost.queues["r"].held, {})

    def test_repeatedBoxIgnored(self) -> None:
        """
        A box that arrives again after later boxes (a resend) must not bring
        back a message that was dequeued since: the backup ignores a box it
        already applied.
        """
        link = self.cluster.connect(self.primary, self.backup)
        interceptor = BoxInterceptor(link.primarySide, "copy")
        self.publish(b"a", b"b")
        link.flush()
        self.take(1)
        link.flush()
        self.assertEqual([id for id, _, _ in self.replica()], [2])
        interceptor.release()
        link.flush()
        self.assertEqual(interceptor.failures, [])
        self.assertEqual([id for id, _, _ in self.replica()], [2])
        self.assertReplicated()
        self.assertEqual(self.backup.role.name, READY)
        self.cluster.finish()

    def test_reorderedBoxes(self) -> None:
        """
        A box that overtakes an earlier one is refused, and the backup
        catches up again from what it holds, instead of applying a dequeue
        before its enqueue (which would leave it a message the primary no
        longer has).
        """
        link = self.cluster.connect(self.primary, self.backup)
        interceptor = BoxInterceptor(link.primarySide, "hold")
        self.publish(b"a", b"b")
        link.flush()
        self.take(1)
        link.flush()
        interceptor.release()
        link.flush()
        self.assertEqual(self.backup.role.name, JOINING)
        self.assertEqual(self.primary.sources, {})
        # The backup resubscribes, as its discovery would.
        again = self.cluster.connect(self.primary, self.backup)
        self.assertEqual(self.backup.role.name, READY)
        self.assertReplicated()
        self.assertEqual([id for id, _, _ in self.replica()], [2])
        self.assertEqual(ids(again.events(ev.ENQUEUED)), [id for id, _, _ in self.replica()])
        self.cluster.finish()

    def test_lostBoxInTransit(self) -> None:
        """
        A box lost on the way (the next one arrives with a gap in the
        sequence) makes the backup resynchronise instead of silently
        missing the messages it carried.
        """
        link = self.cluster.connect(self.primary, self.backup)
        BoxInterceptor(link.primarySide, "lose")
        self.publish(b"a")
        link.flush()
        self.publish(b"b")
        link.flush()
        self.assertEqual(self.backup.role.name, JOINING)
        self.cluster.connect(self.primary, self.backup)
        self.assertEqual(self.backup.role.name, READY)
        self.assertEqual([id for id, _, _ in self.replica()], [1, 2])
        self.assertReplicated()
        self.cluster.finish()

    def test_rejoinSendsOnlyWhatIsMissing(self) -> None:
        """
        A backup whose link dropped resubscribes with what it holds: the
        primary tells it to drop what was dequeued meanwhile and sends only
        the messages it lacks.
        """
        link = self.cluster.connect(self.primary, self.backup)
        self.publish(b"1", b"2", b"3", b"4", b"5")
        link.flush()
        link.cut()
        self.assertEqual(self.backup.role.name, JOINING)
        self.take(2)
        self.publish(b"6", b"7")
        again = self.cluster.connect(self.primary, self.backup)
        self.assertEqual(ids(again.events(ev.ENQUEUED)), [6, 7])
        self.assertEqual(
            ids(again.events(ev.DEQUEUED) + again.events(ev.DEQUEUED_RANGE)), [1, 2]
        )
        self.assertEqual([id for id, _, _ in self.replica()], [3, 4, 5, 6, 7])
        self.assertReplicated()
        self.cluster.finish()

    def test_rejoinHeldMessages(self) -> None:
        """
        Messages a consumer on the primary holds while the backup was away
        are marked acquired (so redelivered after a failover) when it comes
        back, without being sent again.
        """
        link = self.cluster.connect(self.primary, self.backup)
        self.publish(b"1", b"2")
        link.flush()
        link.cut()
        held = self.queue.get()
        assert held is not None
        again = self.cluster.connect(self.primary, self.backup)
        self.assertEqual(again.events(ev.ENQUEUED), [])
        self.assertEqual(ids(again.events(ev.ACQUIRED)), [1])
        self.assertEqual(self.replica(), [(1, b"1", True), (2, b"2", False)])
        self.cluster.finish()

    def test_newPrimaryBehindBackup(self) -> None:
        """
        A backup that holds messages the new primary never got (it fell
        behind before the old primary died) drops them when it follows the
        new primary, and new ids never collide with them.
        """
        other = self.cluster.node()
        behind = self.cluster.connect(self.primary, self.backup)
        ahead = self.cluster.connect(self.primary, other)
        self.publish(b"1", b"2", b"3")
        self.cluster.flush()
        behind.cut()
        self.publish(b"4", b"5")
        ahead.flush()
        self.assertEqual([id for id, _, _ in self.replica(other)], [1, 2, 3, 4, 5])
        ahead.cut()
        # The old primary is gone; the backup that is behind is promoted.
        self.cluster.promote(self.backup)
        self.assertEqual(self.backup.role.name, RECOVERING)
        self.assertEqual(self.backup.epoch, 2)
        rejoined = self.cluster.connect(self.backup, other)
        self.assertEqual(ids(rejoined.events(ev.DEQUEUED) + rejoined.events(ev.DEQUEUED_RANGE)), [4, 5])
        self.assertEqual(rejoined.events(ev.ENQUEUED), [])
        self.assertEqual(self.replica(other), [(1, b"1", False), (2, b"2", False), (3, b"3", False)])
        self.assertEqual(self.backup.role.name, ACTIVE)
        self.publish(b"new", node=self.backup)
        rejoined.flush()
        newId = self.replica(self.backup)[-1][0]
        self.assertGreater(newId, 5)
        self.assertEqual(self.replica(other), self.replica(self.backup))
        self.assertReplicated(other, self.backup)
        self.cluster.finish()

    def test_queueRecreatedWhileAway(self) -> None:
        """
        A queue deleted and declared again under the same name while the
        backup was away has another uuid: the backup discards the old
        queue's messages, even those whose ids the new queue reuses.
        """
        link = self.cluster.connect(self.primary, self.backup)
        self.publish(b"old1", b"old2", b"old3")
        link.flush()
        oldUuid = self.queue.uuid
        link.cut()
        self.primary.vhost.deleteQueue("q")
        self.queue = self.primary.vhost.declareQueue("q", arguments=ALL)
        self.assertNotEqual(self.queue.uuid, oldUuid)
        self.publish(b"new1")
        self.cluster.connect(self.primary, self.backup)
        self.assertEqual(self.replica(), [(1, b"new1", False)])
        self.assertEqual(self.backup.vhost.queues["q"].uuid, self.queue.uuid)
        self.assertReplicated()
        self.cluster.finish()

    def test_objectsGoneWhileAway(self) -> None:
        """
        Queues and exchanges deleted on the primary while the backup was
        away are removed from the backup when it comes back.
        """
        vhost = self.primary.vhost
        vhost.declareQueue("gone", arguments=ALL)
        vhost.declareExchange("x", "fanout", arguments=ALL)
        link = self.cluster.connect(self.primary, self.backup)
        self.assertIn("gone", self.backup.vhost.queues)
        self.assertIn("x", self.backup.vhost.exchanges)
        link.cut()
        vhost.deleteQueue("gone")
        vhost.deleteExchange("x")
        self.cluster.connect(self.primary, self.backup)
        self.assertNotIn("gone", self.backup.vhost.queues)
        self.assertNotIn("x", self.backup.vhost.exchanges)
        self.assertReplicated()
        self.cluster.finish()

    def test_corruptBox(self) -> None:
        """
        A box with garbage after its events is refused as malformed (the
        events before the garbage are applied); the primary drops the
        backup, which catches up again and holds what the primary holds.
        """
        link = self.cluster.connect(self.primary, self.backup)
        BoxInterceptor(link.primarySide, "corrupt")
        self.publish(b"a", b"b")
        link.flush()
        # The backup declares the refusal (MALFORMED_BOX) instead of
        # logging an unhandled error.
        self.assertEqual(self.flushLoggedErrors(ev.MalformedEvents), [])
        self.assertEqual(self.backup.role.name, JOINING)
        self.assertEqual(self.primary.sources, {})
        self.cluster.connect(self.primary, self.backup)
        self.assertEqual([id for id, _, _ in self.replica()], [1, 2])
        self.assertReplicated()
        self.cluster.finish()


class EarlyAcknowledgementTests(SynchronousTestCase):
    """
    A backup acknowledges a box of transient message events on arrival and
    applies it right after; any other box it applies (and stores) first.
    """

    def setUp(self) -> None:
        """
        An active primary and a ready backup, with a replicated queue C{q}
        and a durable replicated queue C{d}.
        """
        self.cluster = InMemoryCluster(self)
        self.primary = self.cluster.primary()
        self.backup = self.cluster.node()
        self.primary.vhost.declareQueue("q", arguments=ALL)
        self.primary.vhost.declareQueue("d", durable=True, arguments=ALL)
        self.link = self.cluster.connect(self.primary, self.backup)
        self.assertEqual(self.backup.role.name, READY)

    def publish(self, queue: str, persistent: bool = False) -> Completion:
        """
        Publish one message to C{queue} as a channel does, and send the box
        that carries it (without moving it).
        """
        properties = commands.Basic.Properties(delivery_mode=2 if persistent else 1)
        queues = self.primary.vhost.publish(
            "", queue, Message.build("", queue, b"m", properties)
        )
        completion = self.primary.gate.hold(queues)
        assert completion is not None
        self.cluster.clock.advance(0)
        return completion

    def deliver(self) -> None:
        """
        Move the bytes between primary and backup, without running timers.
        """
        while self.link.pump.pump(advanceClock=False):
            pass

    def held(self, queue: str) -> int:
        """
        How many messages the backup holds on C{queue}.
        """
        return self.backup.vhost.queues[queue].messageCount

    def test_transientAnsweredFirst(self) -> None:
        """
        A box of transient messages is acknowledged before the backup
        applies it, so the confirm does not wait for the applying; the
        backup applies it once the answer is written.
        """
        completion = self.publish("q")
        self.deliver()
        self.assertTrue(completion.done)
        self.assertEqual(self.held("q"), 0)
        self.cluster.clock.advance(0)
        self.assertEqual(self.held("q"), 1)
        self.cluster.finish()

    def test_persistentAppliedFirst(self) -> None:
        """
        A box with a persistent message for a durable queue is applied
        before it is acknowledged (a backup with a store writes it first).
        """
        completion = self.publish("d", persistent=True)
        self.deliver()
        self.assertTrue(completion.done)
        self.assertEqual(self.held("d"), 1)
        self.cluster.finish()

    def test_inOrder(self) -> None:
        """
        A box applied first applies every box acknowledged before it, in
        order.
        """
        self.publish("q")
        self.publish("d", persistent=True)
        self.deliver()
        self.assertEqual((self.held("q"), self.held("d")), (1, 1))
        self.cluster.finish()

    def test_appliedWhenLinkLost(self) -> None:
        """
        A backup whose link drops keeps what it acknowledged.
        """
        completion = self.publish("q")
        self.deliver()
        self.assertTrue(completion.done)
        self.link.link.lost()
        self.assertEqual(self.held("q"), 1)
        self.cluster.finish()

    def test_appliedBeforeListing(self) -> None:
        """
        qha-admin's listings of a backup count what it acknowledged.
        """
        self.publish("q")
        self.deliver()
        listing = AdminLocator(self.backup, Session(None)).listObjects("queues")
        [queue] = [q for q in json.loads(listing["objects"]) if q["name"] == "q"]
        self.assertEqual(queue["messages"], 1)
        self.cluster.finish()

    def test_malformedClosesLink(self) -> None:
        """
        A transient box that turns out malformed when applied drops the
        link, so that the primary stops counting on this backup and it
        catches up again.
        """
        link = self.link.link
        self.assertIsNone(
            link.received(self.primary.epoch, link.lastSeq + 1, b"E\xff", None, True)
        )
        self.assertFalse(link.closed)
        self.cluster.clock.advance(0)
        self.assertTrue(link.closed)
        self.cluster.finish()


class NewerPrimary(amp.CommandLocator):
    """
    Answers L{Hello} as the active primary C{other} of an epoch.
    """

    def __init__(self, epoch: int) -> None:
        """
        @param epoch: the primary's epoch.
        """
        super().__init__()
        self.epoch = epoch

    @Hello.responder
    def hello(self, brokerId: str, epoch: int, role: str) -> dict[str, Any]:
        """
        Who this primary is.
        """
        return {"brokerId": "other", "epoch": self.epoch, "role": ACTIVE}


class FencingTests(SynchronousTestCase):
    """
    Epochs: a backup never applies an older epoch's stream, and a primary
    that hears of a newer epoch steps down at once.
    """

    def setUp(self) -> None:
        """
        A cluster in memory with an active primary at epoch 1, a joining
        backup, and a replicated queue C{q}.
        """
        self.cluster = InMemoryCluster(self)
        self.primary = self.cluster.primary()
        self.backup = self.cluster.node()
        self.queue = self.primary.vhost.declareQueue("q", arguments=ALL)

    def publish(self, body: bytes) -> Completion | None:
        """
        Publish C{body} to C{q} on the primary as a channel does.
        """
        queues = self.primary.vhost.publish("", "q", message(body, "q"))
        return self.primary.gate.hold(queues)

    def assertSteppedDown(self) -> None:
        """
        The primary is joining again, refuses AMQP clients, and streams to
        nobody.
        """
        self.assertEqual(self.primary.role.name, JOINING)
        self.assertFalse(self.primary.amqp.listening)  # type: ignore[attr-defined]
        self.assertEqual(
            self.primary.amqp.stopped, ["this broker stepped down: a newer primary exists"]  # type: ignore[attr-defined]
        )
        self.assertEqual(self.primary.sources, {})
        self.assertTrue(self.primary.vhost.replica)

    def test_backupAdoptsEpoch(self) -> None:
        """
        A backup following a primary of a newer epoch records that epoch
        durably.
        """
        self.cluster.connect(self.primary, self.backup)
        self.assertEqual(self.backup.epoch, 1)
        self.assertEqual(PersistentState(self.backup.options.dataDir).epoch, 1)
        self.cluster.finish()

    def test_staleStreamRefused(self) -> None:
        """
        A backup that learned of a newer epoch refuses the old primary's
        boxes (L{StaleEpoch}) and applies nothing of them; the old primary
        drops it.
        """
        link = self.cluster.connect(self.primary, self.backup)
        self.backup.state.setEpoch(2)
        self.assertRaises(StaleEpoch, link.link.received, 1, link.link.lastSeq + 1, b"")
        completion = self.publish(b"stale")
        link.flush()
        self.assertEqual(contents(self.backup.vhost.queues["q"]), [])
        self.assertEqual(self.primary.sources, {})
        self.assertEqual(self.backup.role.name, JOINING)
        # The old primary's confirm is not held for a backup that refused.
        assert completion is not None
        self.assertTrue(completion.done)
        self.cluster.finish()

    def test_subscribeWithNewerEpoch(self) -> None:
        """
        A backup of a newer epoch subscribing to the old primary is refused
        (L{StaleEpoch}), and the old primary steps down.
        """
        self.backup.state.setEpoch(3)
        # The primary checks the claim (issue 12): a primary of epoch 3 is
        # among its brokers.
        self.primary.options.brokers.append("newer:5673")
        self.patch(
            self.primary, "ask", lambda address: succeed({"brokerId": "newer", "epoch": 3, "role": ACTIVE})
        )
        link = self.cluster.connect(self.primary, self.backup)
        [failure] = link.subscribed
        self.assertIsInstance(failure, Failure)
        failure.trap(StaleEpoch)
        self.assertSteppedDown()
        self.cluster.finish()

    def talk(self, command: type[amp.Command], **arguments: Any) -> list[Any]:
        """
        Send C{command} to the primary over a fresh AMP connection, as
        another broker would (the primary of C{epoch}, answering the
        primary's check of that claim: issue 12); return what came back.
        """
        newer = NewerPrimary(arguments["epoch"])
        client, server, pump = iosim.connectedServerAndClient(
            lambda: NodeAMPFactory(None, [self.primary.replicationLocator]).buildProtocol(None),  # type: ignore[arg-type]
            lambda: amp.AMP(locator=newer),
            clock=self.cluster.clock,
        )
        answers: list[Any] = []
        client.callRemote(command, **arguments).addBoth(answers.append)
        pump.flush()
        assert client.transport is not None
        client.transport.loseConnection()
        pump.flush()
        return answers

    def test_helloSameEpoch(self) -> None:
        """
        A broker saying hello with the primary's own epoch or an older one
        changes nothing.
        """
        for epoch in (0, 1):
            [answer] = self.talk(Hello, brokerId="other", epoch=epoch, role=ACTIVE)
            self.assertEqual(
                {key: answer[key] for key in ("brokerId", "epoch", "role")},
                {"brokerId": self.primary.brokerId, "epoch": 1, "role": ACTIVE},
            )
        self.assertEqual(self.primary.role.name, ACTIVE)
        self.cluster.finish()

    def test_helloNewerEpoch(self) -> None:
        """
        A primary that hears of a newer epoch (a probe's hello from the new
        primary) steps down at once.
        """
        [answer] = self.talk(Hello, brokerId="other", epoch=2, role=ACTIVE)
        self.assertEqual(answer["role"], JOINING)
        self.assertSteppedDown()
        self.cluster.finish()

    def test_heartbeatNewerEpoch(self) -> None:
        """
        A heartbeat carrying a newer epoch makes the primary step down too.
        """
        self.talk(Heartbeat, epoch=2)
        self.assertSteppedDown()
        self.cluster.finish()

    def test_recoveringStepsDown(self) -> None:
        """
        A primary still recovering steps down as well, and what it held
        stays held.
        """
        node = self.cluster.node()
        node.members = [{"id": "gone", "address": "gone:5673"}]
        self.cluster.promote(node)
        self.assertEqual(node.role.name, RECOVERING)
        queue = node.vhost.declareQueue("r", arguments=ALL)
        node.vhost.publish("", "r", message(b"m", "r"))
        completion = node.gate.hold([queue])
        assert completion is not None
        node.heardEpoch(node.epoch + 1, ACTIVE, "other")
        self.assertEqual(node.role.name, JOINING)
        self.assertFalse(completion.done)
        self.assertIsNone(node.role.recovery)
        self.cluster.finish()

    def test_steppedDownConfirmsNothing(self) -> None:
        """
        Publishes that waited for a backup when the primary stepped down are
        never confirmed: no backup of the new primary's cluster has them.
        """
        link = self.cluster.connect(self.primary, self.backup)
        completion = self.publish(b"unconfirmed")
        assert completion is not None
        self.primary.heardEpoch(2, ACTIVE, "newer")
        link.flush()
        self.assertSteppedDown()
        self.assertFalse(completion.done)
        self.cluster.finish()


class FailoverTests(SynchronousTestCase):
    """
    Promotion and recovery in memory: a promoted backup holds publishes
    until the backups it knew are back (or the timeout passes).
    """

    def setUp(self) -> None:
        """
        A primary with two ready backups, all holding two messages of the
        replicated queue C{q}; then the primary dies.
        """
        self.cluster = InMemoryCluster(self, backupTimeout=10.0)
        self.old = self.cluster.primary()
        self.old.vhost.declareQueue("q", arguments=ALL)
        self.first = self.cluster.node()
        self.second = self.cluster.node()
        for node in (self.first, self.second):
            self.cluster.connect(self.old, node)
        for body in (b"1", b"2"):
            self.old.vhost.publish("", "q", message(body, "q"))
        self.cluster.flush()
        self.cluster.kill(self.old)
        self.assertEqual([node.role.name for node in (self.first, self.second)], [JOINING] * 2)

    def publish(self, node: HANode, queue: str = "q") -> Completion | None:
        """
        Publish one message to C{queue} on C{node} as a channel does.
        """
        return node.gate.hold(node.vhost.publish("", queue, message(b"new", queue)))

    def test_membersKnown(self) -> None:
        """
        Each backup learned from the primary which backups were ready.
        """
        for node in (self.first, self.second):
            self.assertEqual(
                sorted(member["id"] for member in node.members if member.get("role") != "primary"),
                sorted([self.first.brokerId, self.second.brokerId]),
            )
        self.cluster.finish()

    def test_recoveringHoldsUntilBackupReturns(self) -> None:
        """
        A promoted backup serves clients at once but holds every confirm,
        replicated or not, until the other backup it knew caught up with it;
        then it is active and the confirms go.
        """
        self.assertEqual(self.cluster.promote(self.first), {"role": RECOVERING, "epoch": 2})
        self.assertTrue(self.first.amqp.listening)  # type: ignore[attr-defined]
        self.assertEqual(self.first.expected, {self.second.brokerId})
        self.first.vhost.declareQueue("plain")
        replicated = self.publish(self.first)
        plain = self.publish(self.first, "plain")
        assert replicated is not None and plain is not None
        self.cluster.clock.advance(9)
        self.assertEqual((replicated.done, plain.done), (False, False))
        link = self.cluster.connect(self.first, self.second)
        self.assertEqual(self.first.role.name, ACTIVE)
        self.assertEqual((replicated.done, plain.done), (True, True))
        self.assertEqual(
            [id for id, _, _ in contents(self.second.vhost.queues["q"])],
            [id for id, _, _ in contents(self.first.vhost.queues["q"])],
        )
        self.assertEqual(len(contents(self.second.vhost.queues["q"])), 3)
        self.assertEqual(self.second.epoch, 2)
        link.flush()
        self.cluster.finish()

    def test_recoveryTimesOut(self) -> None:
        """
        When the expected backup never returns, the promoted broker goes
        active after C{--ha-backup-timeout} and completes what it held.
        """
        self.cluster.promote(self.first)
        completion = self.publish(self.first)
        assert completion is not None
        self.cluster.clock.advance(9.9)
        self.assertFalse(completion.done)
        self.cluster.clock.advance(0.1)
        self.assertEqual(self.first.role.name, ACTIVE)
        self.assertTrue(completion.done)
        self.assertEqual(self.first.expected, set())
        self.cluster.finish()

    def test_promotedRedeliversHeld(self) -> None:
        """
        Messages a consumer held unacknowledged on the old primary are
        delivered again by the new one, marked redelivered, in their
        places.
        """
        cluster = InMemoryCluster(self)
        old = cluster.primary()
        queue = old.vhost.declareQueue("q", arguments=ALL)
        backup = cluster.node()
        link = cluster.connect(old, backup)
        for body in (b"1", b"2", b"3"):
            old.vhost.publish("", "q", message(body, "q"))
        held = queue.get()
        assert held is not None
        link.flush()
        link.cut()
        cluster.promote(backup)
        replica = backup.vhost.queues["q"]
        entry = replica.get()
        assert entry is not None
        self.assertEqual((entry.id, entry.message.body, entry.redelivered), (1, b"1", True))
        second = replica.get()
        assert second is not None
        self.assertEqual((second.id, second.redelivered), (2, False))
        cluster.finish()
        self.cluster.finish()

    def test_promoteCatchupRefused(self) -> None:
        """
        A backup still catching up refuses promotion with a reason, unless
        forced.
        """
        cluster = InMemoryCluster(self)
        primary = cluster.primary()
        backup = cluster.node()
        cluster.connect(primary, backup, flush=False)
        self.assertEqual(backup.role.name, CATCHUP)
        error = self.assertRaises(Exception, cluster.promote, backup, False)
        self.assertEqual(
            str(error), "cannot promote this broker: it is still catching up with the primary"
        )
        self.assertEqual(cluster.promote(backup, True)["role"], RECOVERING)
        cluster.finish()
        self.cluster.finish()

    def test_promotePrimaryAgain(self) -> None:
        """
        Promoting the primary again changes nothing, not even its epoch.
        """
        primary = self.cluster.primary()
        self.assertEqual(self.cluster.promote(primary), {"role": ACTIVE, "epoch": 1})
        self.cluster.finish()


class MinBackupsTests(SynchronousTestCase):
    """
    C{--ha-min-backups}: a primary confirms only what enough backups hold.
    """

    def test_heldWithoutBackup(self) -> None:
        """
        With C{--ha-min-backups 1}, a publish with no backup connected is
        held; a backup that catches up (and so holds it) completes it.
        """
        cluster = InMemoryCluster(self, minBackups=1)
        primary = cluster.primary()
        queue = primary.vhost.declareQueue("q", arguments=ALL)
        primary.vhost.publish("", "q", message(b"m", "q"))
        completion = primary.gate.hold([queue])
        assert completion is not None
        cluster.clock.advance(60)
        self.assertFalse(completion.done)
        backup = cluster.node()
        cluster.connect(primary, backup)
        self.assertTrue(completion.done)
        self.assertEqual(len(contents(backup.vhost.queues["q"])), 1)
        cluster.finish()

    def test_backupLostBeforeAck(self) -> None:
        """
        With C{--ha-min-backups 1}, a publish whose only backup went away
        before acknowledging stays held: an isolated primary confirms
        nothing.
        """
        cluster = InMemoryCluster(self, minBackups=1)
        primary = cluster.primary()
        queue = primary.vhost.declareQueue("q", arguments=ALL)
        link = cluster.connect(primary, cluster.node())
        primary.vhost.publish("", "q", message(b"m", "q"))
        completion = primary.gate.hold([queue])
        assert completion is not None
        cluster.clock.advance(0)  # the box is written, never delivered
        link.cut()
        self.assertFalse(completion.done)
        self.assertIn(completion, primary.gate.waiting)
        cluster.finish()


class HeartbeatTests(SynchronousTestCase):
    """
    Heartbeats on the replication link: a stalled backup holds confirms no
    longer than two heartbeats; a silent primary is left.
    """

    def setUp(self) -> None:
        """
        A primary and a ready backup with a one-second heartbeat.
        """
        self.cluster = InMemoryCluster(self, heartbeat=1.0)
        self.primary = self.cluster.primary()
        self.queue = self.primary.vhost.declareQueue("q", arguments=ALL)
        self.backup = self.cluster.node()
        self.link = self.cluster.connect(self.primary, self.backup)

    def test_quietLinkStaysUp(self) -> None:
        """
        A link with no traffic but heartbeats stays up for a long time.
        """
        for _ in range(30):
            self.cluster.clock.advance(0.5)
            self.link.flush()
        self.assertEqual(self.backup.role.name, READY)
        self.assertEqual(len(self.primary.sources), 1)
        self.cluster.finish()

    def test_stalledBackup(self) -> None:
        """
        A backup that stops answering (nothing reaches it) is dropped after
        two heartbeats, which releases the confirm waiting for it; once it
        runs again it catches up.
        """
        self.primary.vhost.publish("", "q", message(b"m", "q"))
        completion = self.primary.gate.hold([self.queue])
        assert completion is not None
        self.cluster.clock.advance(1)
        self.assertFalse(completion.done)
        self.cluster.clock.advance(1)
        self.assertTrue(completion.done)
        self.assertEqual(self.primary.sources, {})
        # The backup runs again: it sees its link gone and rejoins.
        self.link.flush()
        self.assertEqual(self.backup.role.name, JOINING)
        self.cluster.connect(self.primary, self.backup)
        self.assertEqual(self.backup.role.name, READY)
        self.assertEqual(len(contents(self.backup.vhost.queues["q"])), 1)
        self.cluster.finish()

    def test_silentPrimary(self) -> None:
        """
        A backup whose primary says nothing for two heartbeats leaves it and
        looks for the primary again.
        """
        self.cluster.clock.advance(1)
        self.assertEqual(self.backup.role.name, READY)
        self.cluster.clock.advance(1)
        self.assertEqual(self.backup.role.name, JOINING)
        self.assertIsNone(self.backup.link)
        self.cluster.finish()


class Network:
    """
    Brokers on one L{MemoryReactorClock}: each listens on a fake port, and
    their own code (discovery, promotion, probes) connects to the others
    through fake TCP, completed by L{settle}.

    @ivar paused: ports whose broker is paused (SIGSTOP): connections to
        it are accepted, but no byte moves on them.
    """

    def __init__(self, case: SynchronousTestCase, heartbeat: float = 0.0) -> None:
        """
        @param case: the test, for temporary directories.
        @param heartbeat: C{--ha-heartbeat} of every node.
        """
        self.case = case
        self.reactor = MemoryReactorClock()
        self.completer = iosim.ConnectionCompleter(self.reactor)
        self.heartbeat = heartbeat
        self.pumps: list[iosim.IOPump] = []
        self.nodes: dict[int, HANode] = {}
        self.ports = [5001, 5002, 5003]
        self.paused: set[int] = set()

    def node(self, port: int) -> HANode:
        """
        The broker whose AMP port is C{port}, listening, knowing every
        broker's address; not started.
        """
        options = HAOptions(
            brokers=[f"127.0.0.1:{other}" for other in self.ports],
            heartbeat=self.heartbeat,
            dataDir=self.case.mktemp(),
        )
        options.extra["haAddress"] = f"127.0.0.1:{port}"
        node = HANode(
            options,
            VirtualHost(clock=self.reactor),
            self.reactor,
            FakeAMQP(),
            PersistentState(options.dataDir),
        )
        self.reactor.listenTCP(port, NodeAMPFactory(None, [node.replicationLocator]))
        self.nodes[port] = node
        return node

    def settle(self) -> None:
        """
        Run what is due now, complete every connection attempt (refusing
        those to ports nobody listens on), and move bytes until nothing
        happens any more.
        """
        listening = {entry[0] for entry in self.reactor.tcpServers}
        for _ in range(1000):
            self.reactor.advance(0)
            moved = False
            for index, attempt in enumerate(self.reactor.tcpClients):
                if attempt[1] not in listening:
                    self.reactor.tcpClients.pop(index)
                    connector = self.reactor.connectors.pop(index)
                    attempt[2].clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
                    moved = True
                    break
            if not moved:
                # A paused broker's kernel still accepts connections.
                pump = self.completer.succeedOnce(greet=False)
                if pump is not None:
                    self.pumps.append(pump)
                    moved = True
            for pump in self.pumps:
                if not self.isPaused(pump) and pump.flush():
                    moved = True
            if not moved:
                return
        raise AssertionError("the network never settled")

    def isPaused(self, pump: iosim.IOPump) -> bool:
        """
        Whether either end of C{pump} is a paused broker.
        """
        for protocol in (pump.client, pump.server):
            locators = getattr(getattr(protocol, "locator", None), "locators", [])
            node = next(
                (each.node for each in locators if isinstance(each, ReplicationLocator)), None
            )
            for port in self.paused:
                if self.nodes.get(port) is node:
                    return True
        return False

    def advance(self, seconds: float, step: float = 0.25) -> None:
        """
        Let C{seconds} pass in steps, settling the network at each.
        """
        steps = int(round(seconds / step))
        for _ in range(steps):
            self.reactor.advance(step)
            self.settle()

    def promote(self, node: HANode, force: bool = False) -> Any:
        """
        Ask C{node} to promote itself; the result, or the failure. Time
        passes while it waits for brokers that do not answer (at most ten
        seconds).
        """
        results: list[Any] = []
        ensureDeferred(node.promote(force)).addBoth(results.append)
        self.settle()
        for _ in range(40):
            if results:
                break
            self.advance(0.25)
        [result] = results
        return result

    def finish(self) -> None:
        """
        Stop every broker, let their links close, and check no timer is
        left.
        """
        self.paused.clear()
        for node in self.nodes.values():
            node.stopService()
        self.settle()
        self.reactor.advance(1)
        self.settle()
        self.case.assertEqual(self.reactor.getDelayedCalls(), [])


class DiscoveryTests(SynchronousTestCase):
    """
    The node's own discovery, promotion checks and probes, over fake TCP.
    """

    def test_findsPrimary(self) -> None:
        """
        A started broker tries every address (the first refuses), finds
        the primary among them and catches up.
        """
        network = Network(self)
        network.ports = [5009, 5001, 5002]
        primary = network.node(5001)
        backup = network.node(5002)
        primary.startService()
        self.assertEqual(network.promote(primary)["role"], RECOVERING)
        network.settle()
        self.assertEqual(primary.role.name, ACTIVE)
        primary.vhost.declareQueue("q", arguments=ALL)
        primary.vhost.publish("", "q", message(b"m", "q"))
        backup.startService()
        network.settle()
        self.assertEqual(backup.role.name, READY)
        self.assertEqual(contents(backup.vhost.queues["q"]), [(1, b"m", False)])
        self.assertEqual(
            [(s.address, s.ready) for s in primary.sources.values()], [("127.0.0.1:5002", True)]
        )
        network.finish()

    def test_rejoinsByItself(self) -> None:
        """
        A backup whose link drops looks for the primary again, resubscribes
        with what it holds and catches up with what it missed.
        """
        network = Network(self)
        primary = network.node(5001)
        backup = network.node(5002)
        primary.startService()
        network.promote(primary)
        queue = primary.vhost.declareQueue("q", arguments=ALL)
        backup.startService()
        network.settle()
        for body in (b"1", b"2", b"3"):
            primary.vhost.publish("", "q", message(body, "q"))
        network.settle()
        link = backup.link
        assert link is not None
        link.close()
        entry = queue.get()
        assert entry is not None
        queue.settle(entry)
        primary.vhost.publish("", "q", message(b"4", "q"))
        network.settle()
        # The search for the primary looks again after its first, short
        # wait (discovery.retryPolicy).
        network.advance(0.25)
        self.assertIsNot(backup.link, link)
        self.assertEqual(backup.role.name, READY)
        self.assertEqual([id for id, _, _ in contents(backup.vhost.queues["q"])], [2, 3, 4])
        network.finish()

    def test_joiningRefusedWhileReady(self) -> None:
        """
        A joining broker refuses promotion while a ready backup exists
        (its primary is paused, so it is still ready), naming it; with
        C{force} it is promoted at a higher epoch than any it heard of.
        """
        network = Network(self)
        primary = network.node(5001)
        ready = network.node(5002)
        joining = network.node(5003)
        primary.startService()
        network.promote(primary)
        ready.startService()
        network.settle()
        self.assertEqual(ready.role.name, READY)
        network.paused.add(5001)
        failure = network.promote(joining)
        self.assertIsInstance(failure, Failure)
        failure.trap(Refused)
        self.assertEqual(
            failure.getErrorMessage(),
            "cannot promote this broker: it is joining and 127.0.0.1:5002 is ready; promote that one",
        )
        self.assertEqual(joining.role.name, JOINING)
        self.assertEqual(network.promote(joining, force=True), {"role": RECOVERING, "epoch": 2})
        network.finish()

    def test_primaryRefusesSecondPrimary(self) -> None:
        """
        Promoting a backup while the primary answers is refused, naming the
        primary.
        """
        network = Network(self)
        primary = network.node(5001)
        backup = network.node(5002)
        primary.startService()
        network.promote(primary)
        backup.startService()
        network.settle()
        failure = network.promote(backup)
        failure.trap(Refused)
        self.assertEqual(
            failure.getErrorMessage(),
            "cannot promote this broker: 127.0.0.1:5001 is already the primary (active, epoch 1)",
        )
        network.finish()

    def test_pausedPrimaryStepsDown(self) -> None:
        """
        A primary paused while a backup was promoted in its place learns of
        the newer epoch from its probes when it runs again, stops serving
        clients and follows the new primary as a backup.
        """
        network = Network(self, heartbeat=1.0)
        old = network.node(5001)
        backup = network.node(5002)
        old.startService()
        network.promote(old)
        old.vhost.declareQueue("q", arguments=ALL)
        backup.startService()
        network.settle()
        self.assertEqual(backup.role.name, READY)
        network.paused.add(5001)
        network.advance(2.5)
        self.assertEqual(backup.role.name, JOINING)
        self.assertEqual(network.promote(backup), {"role": RECOVERING, "epoch": 2})
        network.settle()
        self.assertEqual(backup.role.name, ACTIVE)
        backup.vhost.publish("", "q", message(b"after", "q"))
        network.paused.clear()
        network.advance(2)
        self.assertEqual(old.role.name, READY)
        self.assertFalse(old.amqp.listening)  # type: ignore[attr-defined]
        self.assertEqual(old.epoch, 2)
        self.assertEqual([body for _, body, _ in contents(old.vhost.queues["q"])], [b"after"])
        network.finish()
