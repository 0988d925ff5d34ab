"""
Tests for L{qha.broker.message.scanProperties}: the one walk of a content
header's property bytes that a message's policy reads and direct reply-to's
rewrite of C{reply_to} share.
"""

from __future__ import annotations

import datetime
import itertools
import struct
from typing import Any

from pamqp import commands
from pamqp.header import ContentHeader
from twisted.trial.unittest import SynchronousTestCase

from qha.broker.message import Message, PagedMessage, scanProperties
from qha.testing import MemoryBodyStore

_SAMPLES: dict[str, Any] = {
    "content_type": "application/json",
    "content_encoding": "utf-8",
    "headers": {"x": 1, "reply_to": "amq.rabbitmq.reply-to"},
    "delivery_mode": 2,
    "priority": 7,
    "correlation_id": "c-1",
    "reply_to": "amq.rabbitmq.reply-to",
    "expiration": "60000",
    "message_id": "m-1",
    "timestamp": datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc),
    "app_id": "app",
}


def header(**properties: Any) -> bytes:
    """
    A content header payload with C{properties}.
    """
    return ContentHeader(0, 5, commands.Basic.Properties(**properties)).marshal()


class ScanPropertiesTests(SynchronousTestCase):
    """
    L{scanProperties} reads what pamqp decodes, and finds C{reply_to}.
    """

    def test_everyCombination(self) -> None:
        """
        For every combination of the properties up to the expiration (and
        two after it), the delivery mode, priority and expiration are what
        pamqp decodes, and the C{reply_to} offset is where its short string
        starts (-1 without one).
        """
        names = list(_SAMPLES)
        for count in range(len(names) + 1):
            for chosen in itertools.combinations(names, count):
                values = {name: _SAMPLES[name] for name in chosen}
                raw = header(**values)
                deliveryMode, priority, expiration, replyTo = scanProperties(raw)
                self.assertEqual(
                    (deliveryMode, priority, expiration),
                    (values.get("delivery_mode", 0), values.get("priority", 0), values.get("expiration")),
                    chosen,
                )
                if "reply_to" in values:
                    self.assertEqual(raw[replyTo : replyTo + 22], b"\x15amq.rabbitmq.reply-to", chosen)
                else:
                    self.assertEqual(replyTo, -1, chosen)

    def test_replyToOnly(self) -> None:
        """
        With C{replyToOnly}, the scan stops at C{reply_to}: its offset is
        the same, the expiration after it is not read. Without a
        C{reply_to} it reads everything as usual.
        """
        raw = header(delivery_mode=2, correlation_id="c", reply_to="r", expiration="5")
        full = scanProperties(raw)
        self.assertEqual(full[:3], (2, 0, "5"))
        self.assertEqual(scanProperties(raw, True), (2, 0, None, full[3]))
        raw = header(priority=3, expiration="5")
        self.assertEqual(scanProperties(raw, True), (0, 3, "5", -1))

    def test_malformed(self) -> None:
        """
        A header cut short or with the continuation bit set raises
        (L{IndexError}, L{struct.error}, L{ValueError}); a message's reads
        then fall back to the decoded properties.
        """
        raw = header(content_type="text/plain", delivery_mode=2)
        self.assertRaises(IndexError, scanProperties, raw[:-3])
        self.assertRaises(IndexError, scanProperties, header(delivery_mode=2)[:14])
        self.assertRaises(struct.error, scanProperties, raw[:13])
        flagged = raw[:13] + bytes((raw[13] | 1,)) + raw[14:]
        self.assertRaises(ValueError, scanProperties, flagged)
        notUtf8 = header(expiration="5")[:-1] + b"\xff"
        self.assertRaises(UnicodeDecodeError, scanProperties, notUtf8)

    def test_messageReads(self) -> None:
        """
        L{Message.priority}, L{Message.persistent} and
        L{Message.expiration} come from the scan, which the message keeps.
        """
        message = Message(b"\x00\x01k", header(delivery_mode=2, priority=4, reply_to="r", expiration="10"), b"x")
        self.assertEqual((message.priority, message.persistent, message.expiration), (4, True, 10))
        self.assertEqual(message._scan, scanProperties(message.header))

    def test_pagedForgetsReplyTo(self) -> None:
        """
        A paged message's scan does not keep the C{reply_to} offset, which
        served the publish only, so that paged messages that differ only in
        it share one scan.
        """
        bodies = MemoryBodyStore()
        first = Message(b"\x00\x01k", header(delivery_mode=2, reply_to="a"), b"x")
        second = Message(b"\x00\x01k", header(delivery_mode=2, correlation_id="c", reply_to="a"), b"y")
        first.persistent, second.persistent
        self.assertNotEqual(first._scan, second._scan)
        pagedFirst = PagedMessage.pageOut(first, bodies)
        pagedSecond = PagedMessage.pageOut(second, bodies)
        self.assertEqual(pagedFirst._scan, (2, 0, None, -1))
        self.assertIs(pagedSecond._scan, pagedFirst._scan)
        self.assertTrue(pagedSecond.persistent)
