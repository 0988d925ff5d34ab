"""
Every replication input a peer sends is bounded and checked before it costs
anything (issue 12): the holdings of a L{Subscribe}, the events of a
replication box, the JSON and the field tables inside them, and the tables
of an AMQP client that the stream would carry on.

The range bombs are caught by counting, not by timing: C{range} in the
module under test is replaced by one that refuses to count past a bound,
so that code that walks the ids a peer names (rather than the entries a
queue holds) fails at once instead of running for minutes.
"""

from __future__ import annotations

import json
import struct
from types import ModuleType
from typing import Any

from pamqp import commands
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

import qha.broker.queue
import qha.ha.primary
from qha.broker.message import MAX_TABLE_DEPTH, checkNesting, checkTableDepth, decodeTable, encodeTable
from qha.broker.queue import Queue
from qha.broker.vhost import VirtualHost
from qha.changes import events as ev
from qha.changes.replay import Replicator, holdingsOf
from qha.ha.commands import BadHoldings, MalformedBox
from qha.ha.primary import MAX_HELD_RANGES, HeldIds, checkHoldings, parseHoldings
from qha.ha.role import JOINING, READY
from qha.test import support
from qha.test.support import ALL, InMemoryCluster, ProtocolTestCase, message, rawFrame
from qha.test.support import queueContents as contents
from qha.testing import RecordingObserver

BIG = 2**62
"""
An id far beyond anything a queue holds: a loop over the ids up to it
would not end.
"""

EXPLICIT = 1000
"""
How many ids the code under test may count through one by one: more than
any queue in these tests holds, far fewer than the ranges the peers claim.
"""


def boundRange(case: SynchronousTestCase, module: ModuleType, limit: int = EXPLICIT) -> None:
    """
    Make C{range} in C{module} fail the test when asked to count through
    more than C{limit} numbers, until C{case} ends.
    """

    def bounded(*arguments: int) -> range:
        """
        C{range}, refusing to be wider than C{limit}.
        """
        numbers = range(*arguments)
        width = max(0, (numbers.stop - numbers.start) // (numbers.step or 1))
        if width > limit:
            raise AssertionError(f"{module.__name__} counts through {width} numbers a peer named")
        return numbers

    setattr(module, "range", bounded)
    case.addCleanup(delattr, module, "range")


def nestedTable(depth: int) -> bytes:
    """
    An encoded field table (its length first) with tables nested C{depth}
    deep, built without recursion.
    """
    table = struct.pack(">I", 0)
    for _ in range(depth - 1):
        inner = b"\x01aF" + table
        table = struct.pack(">I", len(inner)) + inner
    return table


def nestedValue(depth: int) -> dict[str, Any]:
    """
    A decoded table with tables nested C{depth} deep.
    """
    table: dict[str, Any] = {}
    for _ in range(depth - 1):
        table = {"a": table}
    return table


def shortName(name: str) -> bytes:
    """
    A name as events carry it: a 2-byte length, then UTF-8.
    """
    raw = name.encode("utf-8")
    return struct.pack(">H", len(raw)) + raw


def rangeEvent(kind: bytes, queue: str, first: int, last: int) -> bytes:
    """
    One encoded range event of C{queue}.
    """
    return kind + shortName(queue) + struct.pack(">qq", first, last)


def replicaWith(bodies: list[bytes], priorities: int = 0, replica: bool = True) -> tuple[VirtualHost, Queue, Replicator]:
    """
    A replica's virtual host with queue C{q} holding C{bodies} as ids 1, 2,
    ... (on a serving broker if not C{replica}: single-queue replication),
    and the L{Replicator} that applies to it.
    """
    vhost = VirtualHost(clock=Clock())
    vhost.replica = replica
    arguments = {"x-max-priority": priorities} if priorities else {}
    queue = vhost.declareQueue("q", arguments=arguments, replica=True)
    for id, body in enumerate(bodies, 1):
        queue.replicaEnqueue(message(body, "q"), id)
    return vhost, queue, Replicator(vhost, lambda: None)


class HoldingsTests(SynchronousTestCase):
    """
    The holdings of a L{Subscribe} are checked before use, and the
    primary's catch-up costs what its queues hold, whatever ranges the
    backup claims.
    """

    def setUp(self) -> None:
        """
        A primary with queue C{q} of three messages, and a backup.
        """
        self.cluster = InMemoryCluster(self)
        self.primary = self.cluster.primary()
        self.backup = self.cluster.node()
        self.queue = self.primary.vhost.declareQueue("q", arguments=ALL)
        for body in (b"1", b"2", b"3"):
            self.primary.vhost.publish("", "q", message(body, "q"))

    def subscribeClaiming(self, holdings: Any) -> support.Link:
        """
        Connect the backup to the primary with C{holdings} (any JSON value)
        as what it says it holds.
        """
        self.patch(support, "holdingsOf", lambda vhost: holdings)
        return self.cluster.connect(self.primary, self.backup)

    def test_rangeBomb(self) -> None:
        """
        Holdings that claim ids 0 to 30,000,000 of a queue with three
        entries: the primary counts through none of them, and tells the
        backup to drop the ids it claims and the primary lacks in two
        events (not one per id); it sends nothing the backup claims.
        """
        boundRange(self, qha.ha.primary)
        boundRange(self, qha.broker.queue)
        link = self.subscribeClaiming({"q": {"uuid": self.queue.uuid, "ids": [[0, 30000000]]}})
        self.assertEqual(link.subscribed, [{"epoch": 1}])
        self.assertEqual(self.backup.role.name, READY)
        events = [event for box in link.boxes for event in box]
        self.assertLessEqual(len(events), 10)
        self.assertEqual(
            link.events(ev.DEQUEUED) + link.events(ev.DEQUEUED_RANGE),
            [(ev.DEQUEUED, "q", 0), (ev.DEQUEUED_RANGE, "q", 4, 30000000)],
        )
        self.assertEqual(link.events(ev.ENQUEUED), [])
        self.cluster.finish()

    def test_widestRanges(self) -> None:
        """
        Ranges up to the largest id there is, with gaps: the entries in a
        gap are sent, those in a range are not, and every held id the
        primary lacks is dropped by a run.
        """
        boundRange(self, qha.ha.primary)
        boundRange(self, qha.broker.queue)
        top = 2**63 - 1
        link = self.subscribeClaiming(
            {"q": {"uuid": self.queue.uuid, "ids": [[0, 1], [3, BIG], [BIG + 2, top]]}}
        )
        self.assertEqual(link.subscribed, [{"epoch": 1}])
        self.assertEqual([event[2] for event in link.events(ev.ENQUEUED)], [2])
        self.assertEqual(
            link.events(ev.DEQUEUED) + link.events(ev.DEQUEUED_RANGE),
            [(ev.DEQUEUED, "q", 0), (ev.DEQUEUED_RANGE, "q", 4, BIG), (ev.DEQUEUED_RANGE, "q", BIG + 2, top)],
        )
        self.cluster.finish()

    def test_honestHoldings(self) -> None:
        """
        What a real backup sends still works: a backup that holds ids 1 and
        2 of the queue (and 7, which the primary lost) gets id 3 and a drop
        of id 7.
        """
        link = self.cluster.connect(self.primary, self.backup)
        link.cut()
        replica = self.backup.vhost.queues["q"]
        replica.replicaDequeue(3)
        replica.replicaEnqueue(message(b"7", "q"), 7)
        self.assertEqual(holdingsOf(self.backup.vhost)["q"]["ids"], [[1, 2], [7, 7]])
        link = self.cluster.connect(self.primary, self.backup)
        self.assertEqual([event[2] for event in link.events(ev.ENQUEUED)], [3])
        self.assertEqual(link.events(ev.DEQUEUED), [(ev.DEQUEUED, "q", 7)])
        self.assertEqual([id for id, _, _ in contents(self.backup.vhost.queues["q"])], [1, 2, 3])
        self.cluster.finish()

    def test_refusedOverAMP(self) -> None:
        """
        Invalid holdings refuse the subscription with C{BAD_HOLDINGS}
        naming what is wrong; the primary starts no stream for it.
        """
        link = self.subscribeClaiming({"q": {"uuid": self.queue.uuid, "ids": [[5, 2]]}})
        [failure] = link.subscribed
        self.assertIsInstance(failure, Failure)
        failure.trap(BadHoldings)
        self.assertIn("holdings of queue 'q': range 0 [5, 2]", failure.getErrorMessage())
        self.assertEqual(self.primary.sources, {})
        self.assertEqual(link.boxes, [])
        self.cluster.finish()

    def test_notJSON(self) -> None:
        """
        Holdings that are not JSON, or JSON nested past the decoder's
        limit, are refused as such.
        """
        for data in (b"{", b"\xff", b"[" * 100000 + b"]" * 100000):
            error = self.assertRaises(BadHoldings, parseHoldings, data)
            self.assertIn("holdings are not JSON", str(error))
        self.assertEqual(parseHoldings(b""), {})

    def test_invalidStructure(self) -> None:
        """
        Each way holdings can be wrong is refused with a message that says
        which queue and what.
        """
        uuid = "u" * 32
        cases: list[tuple[Any, str]] = [
            ([], "must be a JSON object of queue names, not a list"),
            ({"q": 5}, "holdings of queue 'q': not an object"),
            ({"n" * 256: {"uuid": uuid, "ids": []}}, "a queue of more than 255 bytes"),
            ({"\u00e9" * 128: {"uuid": uuid, "ids": []}}, "a queue of more than 255 bytes"),
            ({"q": {"ids": []}}, "the uuid is not a string"),
            ({"q": {"uuid": 7, "ids": []}}, "the uuid is not a string"),
            ({"q": {"uuid": "u" * 256, "ids": []}}, "the uuid is not a string"),
            ({"q": {"uuid": uuid, "ids": {"0": 1}}}, "ids is not a list"),
            ({"q": {"uuid": uuid, "ids": [[1]]}}, "range 0 is not a pair of integers"),
            ({"q": {"uuid": uuid, "ids": [[1, 2, 3]]}}, "range 0 is not a pair of integers"),
            ({"q": {"uuid": uuid, "ids": [5]}}, "range 0 is not a pair of integers"),
            ({"q": {"uuid": uuid, "ids": [[1.0, 2]]}}, "range 0 is not a pair of integers"),
            ({"q": {"uuid": uuid, "ids": [[True, 2]]}}, "range 0 is not a pair of integers"),
            ({"q": {"uuid": uuid, "ids": [["1", 2]]}}, "range 0 is not a pair of integers"),
            ({"q": {"uuid": uuid, "ids": [[-1, 2]]}}, "range 0 [-1, 2] is not 0 <= start <= end < 2**63"),
            ({"q": {"uuid": uuid, "ids": [[2, 1]]}}, "range 0 [2, 1] is not 0 <= start <= end"),
            ({"q": {"uuid": uuid, "ids": [[0, 2**63]]}}, "is not 0 <= start <= end < 2**63"),
            ({"q": {"uuid": uuid, "ids": [[5, 9], [9, 12]]}}, "range 1 [9, 12] does not follow the one before it"),
            ({"q": {"uuid": uuid, "ids": [[5, 9], [1, 2]]}}, "range 1 [1, 2] does not follow"),
        ]
        for holdings, expected in cases:
            error = self.assertRaises(BadHoldings, parseHoldings, json.dumps(holdings).encode("utf-8"))
            self.assertIn(expected, str(error), holdings)

    def test_rangeCount(self) -> None:
        """
        Holdings with more ranges in all than any backup holds are refused
        before their ranges are looked at.
        """
        self.patch(qha.ha.primary, "MAX_HELD_RANGES", 4)
        holdings = {
            "a": {"uuid": "u", "ids": [[1, 1], [3, 3]]},
            "b": {"uuid": "u", "ids": [[1, 1], [3, 3], [5, 5]]},
        }
        error = self.assertRaises(BadHoldings, checkHoldings, holdings)
        self.assertIn("more than 4 id ranges", str(error))
        self.assertEqual(MAX_HELD_RANGES, 1 << 24)

    def test_valid(self) -> None:
        """
        Valid holdings become L{HeldIds} that answer membership by
        bisection and name the runs of held ids missing from a list.
        """
        held = checkHoldings({"q": {"uuid": "u", "ids": [[1, 3], [4, 4], [10, BIG]], "extra": 1}})["q"]
        self.assertIsInstance(held, HeldIds)
        self.assertEqual(held.uuid, "u")
        self.assertEqual([id in held for id in (0, 1, 3, 4, 5, 9, 10, BIG, BIG + 1)],
                         [False, True, True, True, False, False, True, True, False])
        self.assertEqual(list(held.without([2, 11, 12])), [(1, 1), (3, 3), (4, 4), (10, 10), (13, BIG)])
        self.assertEqual(list(held.without([])), [(1, 3), (4, 4), (10, BIG)])

    def test_uncheckedHoldingsAtStart(self) -> None:
        """
        Holdings handed to a source unchecked (as the JSON decoder gives
        them) are checked when it starts: a source given invalid ones drops
        its backup rather than failing in the catch-up.
        """
        link = self.cluster.connect(self.primary, self.backup)
        [source] = self.primary.sources.values()
        source.stop()
        dropped: list[str] = []
        self.patch(source, "drop", dropped.append)
        source.start({"q": {"uuid": self.queue.uuid, "ids": [[3, 1]]}})
        self.assertEqual(len(dropped), 1)
        self.assertIn("range 0 [3, 1]", dropped[0])
        link.cut()
        self.cluster.finish()


class ReplicaRangeTests(SynchronousTestCase):
    """
    A range event costs a replica what its queue holds, never the width of
    the range.
    """

    def setUp(self) -> None:
        """
        Count through no range a peer names.
        """
        boundRange(self, qha.broker.queue)

    def assertIds(self, queue: Queue, expected: list[int]) -> None:
        """
        C{queue} holds the entries C{expected}, ready (held ones included).
        """
        self.assertEqual([id for id, _, _ in contents(queue)], expected)

    def test_dequeueBomb(self) -> None:
        """
        "Dequeue ids 0 to 2**62" empties a queue of three entries at once.
        """
        vhost, queue, replicator = replicaWith([b"1", b"2", b"3"])
        observer = RecordingObserver()
        vhost.observers.append(observer)
        replicator.apply(rangeEvent(ev.DEQUEUED_RANGE, "q", 0, BIG))
        self.assertIds(queue, [])
        self.assertEqual(queue.messageCount, 0)
        self.assertEqual(vhost.resources.used, 0)
        self.assertEqual(observer.events, [("dequeued", "q", 1), ("dequeued", "q", 2), ("dequeued", "q", 3)])

    def test_dequeueTail(self) -> None:
        """
        A range that starts within the queue and runs far past it takes the
        entries from its start on, and leaves the ones before.
        """
        for priorities in (0, 3):
            _, queue, replicator = replicaWith([b"%d" % n for n in range(1, 11)], priorities)
            replicator.apply(rangeEvent(ev.DEQUEUED_RANGE, "q", 4, BIG))
            self.assertIds(queue, [1, 2, 3])
            replicator.apply(rangeEvent(ev.DEQUEUED_RANGE, "q", 2, 2))
            self.assertIds(queue, [1, 3])
            self.assertEqual(queue.messageCount, 2)

    def test_dequeueMiddle(self) -> None:
        """
        A range in the middle of a queue takes just its entries, with the
        held marks of the ids in it.
        """
        for priorities in (0, 3):
            vhost, queue, replicator = replicaWith([b"%d" % n for n in range(1, 11)], priorities)
            replicator.apply(rangeEvent(ev.ACQUIRED_RANGE, "q", 2, 8))
            self.assertEqual(sorted(queue.held), [2, 3, 4, 5, 6, 7, 8])
            replicator.apply(rangeEvent(ev.DEQUEUED_RANGE, "q", 4, 6))
            self.assertIds(queue, [1, 2, 3, 7, 8, 9, 10])
            self.assertEqual(sorted(queue.held), [2, 3, 7, 8])
            self.assertEqual(queue.messageCount, 7)

    def test_dequeueHeldBomb(self) -> None:
        """
        The held marks of a huge range go by the marks there are.
        """
        _, queue, replicator = replicaWith([b"1", b"2", b"3"])
        replicator.apply(rangeEvent(ev.ACQUIRED_RANGE, "q", 0, BIG))
        self.assertEqual(sorted(queue.held), [1, 2, 3])
        replicator.apply(rangeEvent(ev.DEQUEUED_RANGE, "q", 2, BIG))
        self.assertEqual(sorted(queue.held), [1])
        self.assertIds(queue, [1])

    def test_acquireBomb(self) -> None:
        """
        "Acquire ids 0 to 2**62" marks the queue's entries held, on a
        backup and on a serving broker (single-queue replication), with and
        without priorities.
        """
        for replica in (True, False):
            for priorities in (0, 3):
                _, queue, replicator = replicaWith([b"1", b"2", b"3"], priorities, replica)
                replicator.apply(rangeEvent(ev.ACQUIRED_RANGE, "q", 2, BIG))
                self.assertEqual(sorted(queue.held), [2, 3])
                self.assertTrue(all(entry.redelivered for entry in queue.held.values()))
                replicator.apply(rangeEvent(ev.DEQUEUED_RANGE, "q", 0, BIG))
                self.assertIds(queue, [])

    def test_observersTold(self) -> None:
        """
        The entries a range takes from a queue with priorities are told to
        the observers (a store, a backup of this broker) as dequeued, in
        id order.
        """
        vhost, queue, replicator = replicaWith([b"1", b"2", b"3", b"4"], 3)
        observer = RecordingObserver()
        vhost.observers.append(observer)
        replicator.apply(rangeEvent(ev.DEQUEUED_RANGE, "q", 2, BIG))
        self.assertEqual(observer.events, [("dequeued", "q", 2), ("dequeued", "q", 3), ("dequeued", "q", 4)])


class EventFieldTests(SynchronousTestCase):
    """
    Each field of each event is checked as it is decoded; a bad one is
    refused with L{ev.MalformedEvents} naming the event and the field.
    """

    def assertMalformed(self, data: bytes, *expected: str) -> ev.MalformedEvents:
        """
        Decoding C{data} is refused with a message that holds each of
        C{expected}.
        """
        error = self.assertRaises(ev.MalformedEvents, list, ev.readEvents(data))
        for text in expected:
            self.assertIn(text, str(error))
        return error

    def test_names(self) -> None:
        """
        A name of more than 255 bytes is refused, in the hot events and in
        the others; 255 bytes pass.
        """
        long = "n" * 256
        self.assertMalformed(ev.DEQUEUED + shortName(long) + struct.pack(">q", 1), "dequeued event at offset 0", "queue name of 256 bytes")
        self.assertMalformed(ev.PURGED + shortName("ok") + ev.PURGED + shortName(long), "purged event at offset 5", "queue of 256 bytes")
        writer = ev.EventWriter()
        writer.event(ev.QUEUE_DELETED, "q", "u" * 256)
        self.assertMalformed(writer.take(), "queue-deleted", "uuid of 256 bytes")
        writer.event(ev.BOUND, "x", b"q", "q", "k" * 256, {})
        self.assertMalformed(writer.take(), "bound", "routing key of 256 bytes")
        writer.event(ev.PURGED, "n" * 255)
        self.assertEqual(list(ev.readEvents(writer.take())), [(ev.PURGED, "n" * 255)])

    def test_badUTF8(self) -> None:
        """
        A name that is not UTF-8 is refused, saying which event.
        """
        self.assertMalformed(ev.PURGED + b"\x00\x01\xff", "purged event at offset 0", "not UTF-8")

    def test_ids(self) -> None:
        """
        Negative ids are refused, in every entry event and range.
        """
        for kind in (ev.DEQUEUED, ev.ACQUIRED, ev.RELEASED):
            self.assertMalformed(kind + shortName("q") + struct.pack(">q", -1), ev.EVENT_NAMES[kind], "id -1 is negative")
        writer = ev.EventWriter()
        writer.entryRange(ev.DEQUEUED, "q", 1, 2)
        good = writer.take()
        self.assertMalformed(good + rangeEvent(ev.DEQUEUED_RANGE, "q", -5, 3), f"dequeued-range event at offset {len(good)}", "first id -5 is negative")
        self.assertMalformed(rangeEvent(ev.ACQUIRED_RANGE, "q", 3, -1), "acquired-range", "last id -1 is negative")
        self.assertMalformed(rangeEvent(ev.ACQUIRED_RANGE, "q", 9, 3), "acquired-range", "first id 9 is after last id 3")
        self.assertEqual(list(ev.readEvents(rangeEvent(ev.DEQUEUED_RANGE, "q", 0, 2**63 - 1))), [(ev.DEQUEUED_RANGE, "q", 0, 2**63 - 1)])

    def enqueued(self, id: int = 1, flags: int = 0, deadline: int = 0) -> bytes:
        """
        An encoded enqueue event with these fields.
        """
        return (
            ev.ENQUEUED + shortName("q") + struct.pack(">qBqI", id, flags, deadline, 3) + b"\x00\x01q"
            + struct.pack(">I", 0) + struct.pack(">I", 1) + b"x"
        )

    def test_enqueued(self) -> None:
        """
        An enqueue event's id, flags and deadline are checked.
        """
        self.assertEqual(len(list(ev.readEvents(self.enqueued(flags=3, deadline=5)))), 1)
        self.assertMalformed(self.enqueued(id=-3), "enqueued event at offset 0", "id -3 is negative")
        self.assertMalformed(self.enqueued(flags=4), "enqueued", "flags 0x04")
        self.assertMalformed(self.enqueued(deadline=-1), "enqueued", "deadline -1 is negative")
        self.assertMalformed(self.enqueued()[:-1], "enqueued", "runs past the end of the box")

    def test_flags(self) -> None:
        """
        A boolean field is 0 or 1.
        """
        writer = ev.EventWriter()
        writer.event(ev.QUEUE_DECLARED, "q", "u", True, False, False, False, {})
        data = bytearray(writer.take())
        # The table ({}: its length alone), and before it ever-consumed,
        # then auto-delete.
        data[len(data) - 6] = 2
        self.assertMalformed(bytes(data), "queue-declared", "auto-delete is 0x02, not a boolean")

    def test_destinationKind(self) -> None:
        """
        A binding event's destination is a queue (C{q}) or an exchange
        (C{x}).
        """
        writer = ev.EventWriter()
        writer.event(ev.BOUND, "x", b"z", "q", "k", {})
        self.assertMalformed(writer.take(), "bound", "destination kind b'z'")

    def test_unnamedQueue(self) -> None:
        """
        A queue declared without a name is refused (the replica would make
        up one).
        """
        writer = ev.EventWriter()
        writer.event(ev.QUEUE_DECLARED, "", "u", True, False, False, False, {})
        self.assertMalformed(writer.take(), "queue-declared", "no name")

    def test_tableLength(self) -> None:
        """
        A table whose length runs past the box is refused.
        """
        writer = ev.EventWriter()
        writer.event(ev.PURGED, "q")
        data = ev.EXCHANGE_DELETED + shortName("x") + ev.UNBOUND + shortName("x") + struct.pack(">I", 1) + b"q" + shortName("q") + shortName("") + struct.pack(">I", 100)
        self.assertMalformed(data, "unbound event at offset 4", "arguments")

    def test_unknownTableType(self) -> None:
        """
        A table with a value of a type AMQP does not define is refused.
        """
        table = struct.pack(">I", 3) + b"\x01a?"
        data = ev.BOUND + shortName("x") + struct.pack(">I", 1) + b"q" + shortName("q") + shortName("") + table
        self.assertMalformed(data, "bound event at offset 0", "arguments")


class MalformedInputTests(SynchronousTestCase):
    """
    Bad JSON and tables nested too deep raise L{ev.MalformedEvents} (and a
    backup's link drops with one log line), never another error.
    """

    def test_deepArguments(self) -> None:
        """
        A queue declared with arguments nested 5,000 deep is refused at
        decoding, without recursion; 64 levels pass, 65 do not.
        """
        for depth in (5000, MAX_TABLE_DEPTH + 1):
            data = ev.QUEUE_DECLARED + shortName("q") + shortName("u") + b"\x00" * 4 + nestedTable(depth)
            error = self.assertRaises(ev.MalformedEvents, list, ev.readEvents(data))
            self.assertIn("queue-declared event at offset 0: arguments: tables nest deeper than 64", str(error))
        writer = ev.EventWriter()
        writer.event(ev.QUEUE_DECLARED, "q", "u", False, False, False, False, nestedValue(MAX_TABLE_DEPTH))
        [event] = ev.readEvents(writer.take())
        self.assertEqual(event[-1], nestedValue(MAX_TABLE_DEPTH))

    def test_deepArrays(self) -> None:
        """
        Arrays count as levels too.
        """
        # The table and 63 arrays in it: 64 levels.
        value: Any = []
        for _ in range(MAX_TABLE_DEPTH - 2):
            value = [value]
        checkTableDepth(encodeTable({"a": value}))
        checkNesting({"a": value})
        self.assertEqual(decodeTable(encodeTable({"a": value}))[1], {"a": value})
        self.assertRaises(ValueError, checkTableDepth, encodeTable({"a": [value]}))
        self.assertRaises(ValueError, checkNesting, {"a": [value]})

    def test_deepHeadersApplied(self) -> None:
        """
        A replicated message whose headers nest 5,000 deep is held as it
        came (the backup does not look inside it), and reading its headers
        gives none rather than an error.
        """
        header = b"\x00\x3c\x00\x00" + struct.pack(">Q", 1) + b"\x20\x00" + nestedTable(5000)
        vhost, queue, replicator = replicaWith([])
        data = ev.ENQUEUED + shortName("q") + struct.pack(">qBqI", 1, 0, 0, 3) + b"\x00\x01q"
        data += struct.pack(">I", len(header)) + header + struct.pack(">I", 1) + b"x"
        replicator.apply(data)
        [entry] = queue.entries
        self.assertEqual(entry.message.headers, {})

    def test_badJSON(self) -> None:
        """
        A snapshot or members event that is not JSON, or JSON of the wrong
        shape, raises L{ev.MalformedEvents} saying what is wrong.
        """
        vhost, queue, replicator = replicaWith([b"1"])
        cases = [
            (ev.SNAPSHOT, b"{", "malformed snapshot event: not JSON"),
            (ev.SNAPSHOT, b"[" * 100000, "malformed snapshot event: not JSON"),
            (ev.SNAPSHOT, b"[]", "a JSON list, not an object"),
            (ev.SNAPSHOT, b'{"queues": 5, "exchanges": []}', "'queues' is not an object"),
            (ev.SNAPSHOT, b'{"queues": {"q": 5}, "exchanges": []}', "queue 'q': its name or uuid"),
            (ev.SNAPSHOT, b'{"queues": {}}', "'exchanges' is not a list"),
            (ev.SNAPSHOT, b'{"queues": {}, "exchanges": [7]}', "exchange '7' is not a name"),
            (ev.MEMBERS, b"\xff", "malformed members event: not JSON"),
            (ev.MEMBERS, b"{}", "a JSON dict, not a list"),
            (ev.MEMBERS, b"[5]", "member 0 is not an object with an id"),
            (ev.MEMBERS, b'[{"id": "a"}, {"role": "primary"}]', "member 1 is not an object with an id"),
            (ev.MEMBERS, b'[{"id": "a", "address": 5}]', "member 0: field 'address'"),
            (ev.MEMBERS, json.dumps([{"id": "a"}] * 1025).encode(), "1025 members"),
        ]
        for kind, payload, expected in cases:
            data = kind + struct.pack(">I", len(payload)) + payload
            error = self.assertRaises(ev.MalformedEvents, replicator.apply, data)
            self.assertIn(expected, str(error), payload[:40])
        # Nothing was applied of the bad snapshots.
        self.assertEqual(list(vhost.queues), ["q"])
        self.assertEqual(replicator.members, [])
        replicator.apply(ev.MEMBERS + struct.pack(">I", 2) + b"[]")

    def test_linkDropped(self) -> None:
        """
        A backup that gets a snapshot that is not JSON refuses the box
        (C{MALFORMED_BOX}), logs it, drops the link and looks for the
        primary again: no traceback, no critical log.
        """
        cluster = InMemoryCluster(self)
        primary = cluster.primary()
        backup = cluster.node()
        link = cluster.connect(primary, backup)
        logged = EventLoggingObserver()
        globalLogPublisher.addObserver(logged)
        self.addCleanup(globalLogPublisher.removeObserver, logged)
        bad = ev.SNAPSHOT + struct.pack(">I", 1) + b"{"
        error = self.assertRaises(MalformedBox, link.link.received, primary.epoch, link.link.lastSeq + 1, bad)
        self.assertIn("malformed snapshot event: not JSON", str(error))
        cluster.clock.advance(0)
        cluster.flush()
        self.assertEqual(backup.role.name, JOINING)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual([event for event in logged if event["log_level"] >= LogLevel.critical], [])
        self.assertEqual(
            len([event for event in logged if "malformed" in str(event.get("log_format", ""))]), 1
        )
        cluster.finish()


class AMQPTableDepthTests(ProtocolTestCase):
    """
    A client's tables nested too deep are refused with a clear connection
    error (502), before the broker holds them or would replicate them.
    """

    def setUp(self) -> None:
        """
        A connected client with channel 1 open.
        """
        super().setUp()
        self.client = self.openClient()

    def test_deepHeaders(self) -> None:
        """
        A publish whose headers nest 5,000 deep (or 65) closes the
        connection with 502, saying why.
        """
        for depth in (5000, MAX_TABLE_DEPTH + 1):
            client = self.openClient()
            header = b"\x00\x3c\x00\x00" + struct.pack(">Q", 1) + b"\x20\x00" + nestedTable(depth)
            publish = rawFrame(1, 1, struct.pack(">HHH", 60, 40, 0) + b"\x00\x01q\x00")
            client.send(publish + rawFrame(2, 1, header) + rawFrame(3, 1, b"x"))
            close = self.assertConnectionClosed(client, client.received(), 502)
            self.assertIn("tables nest deeper than 64", close.reply_text)
            self.finishClose(client)
        self.assertEqual(self.vhost.queues, {})

    def test_deepArguments(self) -> None:
        """
        A queue.declare whose arguments nest 65 deep closes the connection
        with 502, saying why; no queue is declared.
        """
        payload = struct.pack(">HHH", 50, 10, 0) + b"\x01q\x00" + nestedTable(MAX_TABLE_DEPTH + 1)
        self.client.send(rawFrame(1, 1, payload))
        close = self.assertConnectionClosed(self.client, self.client.received(), 502)
        self.assertIn("Queue.Declare", close.reply_text)
        self.assertIn("tables nest deeper than 64", close.reply_text)
        self.finishClose(self.client)
        self.assertNotIn("q", self.vhost.queues)

    def test_nestedArgumentsAccepted(self) -> None:
        """
        Arguments nested 64 deep are accepted.
        """
        payload = struct.pack(">HHH", 50, 10, 0) + b"\x01q\x00" + nestedTable(MAX_TABLE_DEPTH)
        self.client.send(rawFrame(1, 1, payload))
        [(channel, ok)] = self.client.received()
        self.assertIsInstance(ok, commands.Queue.DeclareOk)
        self.assertIn("q", self.vhost.queues)
