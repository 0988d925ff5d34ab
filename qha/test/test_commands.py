"""
Tests for L{qha.ha.commands}: L{ChunkedBytes}, an AMP argument of any
size, and the hand-made L{Events} arguments of the primary.
"""

from __future__ import annotations

from typing import Any

from twisted.protocols import amp
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from qha.ha.commands import CHUNK, ChunkedBytes, Events, eventsArguments


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
