"""
Tests for L{qha.changes.events}: the replication event codec
(L{EventWriter} and L{readEvents}) and its replay by L{Replicator}.
"""

from __future__ import annotations

from typing import Any

from pamqp import commands
from twisted.trial.unittest import SynchronousTestCase

from qha.amqp.users import hashPassword
from qha.broker.message import Message
from qha.broker.queue import Entry
from qha.broker.vhost import VirtualHost
from qha.changes import events as ev
from qha.changes.replay import Replicator
from qha.test.support import message, queueContents, writeEnqueued


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

    def test_repeatedPartsShared(self) -> None:
        """
        Consecutive enqueues with the same addressing and header (a
        catch-up's backlog, mostly) decode to messages that share those
        bytes, and the same queue name each time; parts that differ, even
        of the same length, are decoded anew, and a dequeue between them
        changes nothing.
        """
        writer = ev.EventWriter()
        writeEnqueued(writer, "q1", 1, False, b"\x00\x02q1", b"header-A", b"one")
        writeEnqueued(writer, "q1", 2, False, b"\x00\x02q1", b"header-A", b"two")
        writer.entryEvent(ev.DEQUEUED, "q1", 1)
        writeEnqueued(writer, "q1", 3, True, b"\x00\x02q1", b"header-A", b"three")
        writeEnqueued(writer, "q2", 4, False, b"\x00\x02q2", b"header-B", b"four")
        events = list(ev.readEvents(writer.take()))
        self.assertEqual(
            [(event[0], event[1], event[2]) for event in events],
            [(ev.ENQUEUED, "q1", 1), (ev.ENQUEUED, "q1", 2), (ev.DEQUEUED, "q1", 1),
             (ev.ENQUEUED, "q1", 3), (ev.ENQUEUED, "q2", 4)],
        )
        first, second, _, third, fourth = events
        self.assertIs(second[4], first[4])
        self.assertIs(second[5], first[5])
        self.assertIs(third[5], first[5])
        self.assertEqual((third[3], third[6]), (True, b"three"))
        self.assertEqual((fourth[4], fourth[5], fourth[6]), (b"\x00\x02q2", b"header-B", b"four"))

    def test_encoded(self) -> None:
        """
        Events encoded already are added as they are, in their place:
        pieces that follow each other in the same data make one, a whole
        box taken in pieces and nothing else is the box itself (no copy),
        and they count as events of the default virtual host.
        """
        source = ev.EventWriter()
        for id in (1, 2, 3):
            writeEnqueued(source, "q", id, False, b"\x00\x01q", b"header", b"body %d" % id)
        data = source.take()
        events = list(ev.readEvents(data))
        cut = len(data) // 3
        writer = ev.EventWriter()
        writer.encoded(data, 0, cut, 1)
        writer.encoded(data, cut, len(data), 2)
        self.assertEqual((writer.count, writer.transient), (3, False))
        self.assertIs(writer.take(), data)
        # Another event between two pieces, and another virtual host
        # before them.
        writer.scope("other")
        writer.event(ev.PURGED, "elsewhere")
        writer.encoded(data, 0, cut, 1)
        writer.entryEvent(ev.DEQUEUED, "q", 1)
        writer.encoded(data, cut, len(data), 2)
        taken = writer.take()
        self.assertEqual(
            list(ev.readEvents(taken)),
            [(ev.VHOST, "other"), (ev.PURGED, "elsewhere"), (ev.VHOST, "/")]
            + list(ev.readEvents(data[:cut]))
            + [(ev.DEQUEUED, "q", 1)]
            + list(ev.readEvents(data[cut:])),
        )
        self.assertEqual(list(ev.readEvents(data[:cut])) + list(ev.readEvents(data[cut:])), events)

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
        add(ev.VHOST_ADDED, "tenant-\u00e9")
        writer.scope("tenant-\u00e9")
        expected.append((ev.VHOST, "tenant-\u00e9"))
        add(ev.VHOST_DELETED, "tenant-\u00e9")
        add(ev.USER_SET, "b\u00f6b", hashPassword("secret", n=2), "administrator,monitoring")
        add(ev.PERMISSIONS_SET, "b\u00f6b", "/", "^b-", ".*", "")
        add(ev.PERMISSIONS_CLEARED, "b\u00f6b", "/")
        add(ev.USER_DELETED, "b\u00f6b")
        add(ev.ACCOUNTS, b'{"users": {}, "permissions": {}}')
        add(ev.SETTINGS, b'{"values": {"backupTimeout": 5.0}, "pins": {}}')
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

    def test_acquiredKeepsFields(self) -> None:
        """
        An enqueue flagged acquired keeps the entry's other fields: its
        redelivered mark, its deadline and its message, as written.
        """
        vhost = VirtualHost()
        queue = vhost.declareQueue("q")
        entry = queue.enqueue(Message.build("", "q", b"body"))
        entry.redelivered = True
        entry.expiresAt = 12.5
        writer = ev.EventWriter()
        writer.entry(queue, entry)
        writer.entryEvent(ev.ACQUIRED, "q", entry.id)
        [event] = list(ev.readEvents(writer.take()))
        self.assertEqual(event[:4], (ev.ENQUEUED, "q", entry.id, True))
        self.assertEqual(event[6:], (b"body", 12.5, True))

    def test_enqueueEncodedWhenWritten(self) -> None:
        """
        An enqueue event holds the message as it was when the event was
        written, whatever happens to the entry before the events are taken.
        """
        vhost = VirtualHost()
        queue = vhost.declareQueue("q")
        entry = queue.enqueue(Message.build("", "q", b"as published"))
        writer = ev.EventWriter()
        writer.entry(queue, entry)
        entry.message = Message.build("", "q", b"changed")
        entry.redelivered = True
        [event] = list(ev.readEvents(writer.take()))
        self.assertEqual((event[3], event[6]), (False, b"as published"))

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
        self.assertEqual(queueContents(queue), [(1, b"1", False), (2, b"2", True)])
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
