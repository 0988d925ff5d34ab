"""
Tests for L{qha_bench.bench}: the parts that need no network (URL and option
parsing, frame encoding and parsing, and the statistics).
"""

from __future__ import annotations

import io
import json
import math
import struct
import sys
from typing import cast

from pamqp import body, commands, frame, header, heartbeat
from twisted.trial.unittest import SynchronousTestCase

from qha_bench.bench import (
    STAMP,
    AMQPConnection,
    AMQPURL,
    BenchOptions,
    ConfirmTracker,
    Consumer,
    ConsumerResult,
    FrameError,
    FrameReader,
    LatencyHistogram,
    OptionsError,
    ProgressPrinter,
    PublishBatch,
    PublisherResult,
    ServerClosedError,
    buildPublishTemplate,
    decodeMethod,
    encodeAck,
    encodeMethod,
    formatTable,
    main,
    parseArguments,
    parseURL,
    summarize,
)


def unmarshalAll(data: bytes) -> list[tuple[int, object]]:
    """
    Decode a byte string of whole frames with pamqp.

    @return: (channel, pamqp frame) pairs, in order.
    """
    decoded: list[tuple[int, object]] = []
    while data:
        consumed, channel, value = frame.unmarshal(data)
        decoded.append((channel, value))
        data = data[consumed:]
    return decoded


class ParseURLTests(SynchronousTestCase):
    """
    L{parseURL} reads AMQP URLs the way RabbitMQ documents them.
    """

    def test_full(self) -> None:
        """
        Every part of the URL is used.
        """
        self.assertEqual(
            parseURL("amqp://alice:secret@broker.example:5673/prod"),
            AMQPURL("broker.example", 5673, "alice", "secret", "prod"),
        )

    def test_defaults(self) -> None:
        """
        User and password default to guest, the port to 5672 and the vhost to
        C{/}, whether the path is empty or C{/}.
        """
        expected = AMQPURL("127.0.0.1", 5672, "guest", "guest", "/")
        self.assertEqual(parseURL("amqp://127.0.0.1"), expected)
        self.assertEqual(parseURL("amqp://127.0.0.1/"), expected)

    def test_percentEncodedVhost(self) -> None:
        """
        C{%2F} is the vhost C{/}; other escapes are decoded too.
        """
        self.assertEqual(parseURL("amqp://h/%2F").vhost, "/")
        self.assertEqual(parseURL("amqp://h/a%2Fb%20c").vhost, "a/b c")

    def test_percentEncodedCredentials(self) -> None:
        """
        User name and password are percent-decoded.
        """
        url = parseURL("amqp://al%40ice:p%3Ass@h/")
        self.assertEqual((url.username, url.password), ("al@ice", "p:ss"))

    def test_ipv6(self) -> None:
        """
        A bracketed IPv6 address is the host, without brackets.
        """
        url = parseURL("amqp://[::1]:5673/")
        self.assertEqual((url.host, url.port), ("::1", 5673))
        self.assertEqual(url.redacted(), "amqp://guest@[::1]:5673/%2F")

    def test_amqps(self) -> None:
        """
        C{amqps://} speaks TLS, on 5671 by default, with RabbitMQ's
        C{cacertfile} query parameter naming the CA; the redacted URL keeps
        the scheme.
        """
        url = parseURL("amqps://bob:pw@h/v?cacertfile=/etc/ca.pem")
        self.assertEqual(
            url, AMQPURL("h", 5671, "bob", "pw", "v", tls=True, caFile="/etc/ca.pem")
        )
        self.assertEqual(url.redacted(), "amqps://bob@h:5671/v")
        self.assertEqual(parseURL("amqps://h:5000/").caFile, None)
        self.assertEqual(parseURL("amqps://h:5000/").port, 5000)

    def test_redacted(self) -> None:
        """
        L{AMQPURL.redacted} leaves the password out.
        """
        url = parseURL("amqp://bob:hunter2@h:1/v")
        self.assertEqual(url.redacted(), "amqp://bob@h:1/v")

    def test_errors(self) -> None:
        """
        URLs the tool cannot use are refused with a message saying why.
        """
        for text, words in [
            ("http://h/", "amqp://"),
            ("amqps://h/?verify=verify_none", "cacertfile"),
            ("amqps://h/?cacertfile=", "cacertfile"),
            ("amqps://h/?cacertfile=a&cacertfile=b", "cacertfile"),
            ("amqp://h:notaport/", "bad URL"),
            ("amqp://h/a/b", "%2F"),
            ("amqp://h/?heartbeat=10", "query"),
        ]:
            with self.assertRaises(ValueError) as raised:
                parseURL(text)
            self.assertIn(words, str(raised.exception), text)


class ParseArgumentsTests(SynchronousTestCase):
    """
    L{parseArguments} validates the command line, naming the bad option.
    """

    def assertOptionError(self, argv: list[str], *words: str) -> None:
        """
        Parsing C{argv} fails with a one-line message containing C{words}.
        """
        with self.assertRaises(OptionsError) as raised:
            parseArguments(argv)
        message = str(raised.exception)
        self.assertNotIn("\n", message)
        for word in words:
            self.assertIn(word, message)

    def test_defaults(self) -> None:
        """
        With no arguments: one publisher and one consumer for 10 s, 100-byte
        bodies, no confirms, prefetch 1000 and acks every 500 deliveries.
        """
        options = parseArguments([])
        self.assertEqual(
            options,
            BenchOptions(url=parseURL("amqp://guest:guest@127.0.0.1:5672/")),
        )
        self.assertEqual(options.duration, 10.0)
        self.assertIsNone(options.messages)
        self.assertEqual(options.ackEvery, 500)

    def test_everything(self) -> None:
        """
        Every option lands in L{BenchOptions}.
        """
        options = parseArguments(
            [
                "--url", "amqp://u:p@h:1/v", "--publishers", "3",
                "--consumers", "0", "--size", "16", "--confirm", "50",
                "--messages", "1000", "--queue", "q", "--queue-arg",
                "x-max-length=10", "--queue-arg", "x-queue-type=quorum",
                "--queue-arg", "x-single-active-consumer=true", "--durable",
                "--persistent", "--prefetch", "1", "--json", "--keep-queue",
                "--drain-timeout", "2.5",
            ]
        )
        self.assertEqual(
            options,
            BenchOptions(
                url=AMQPURL("h", 1, "u", "p", "v"),
                publishers=3,
                consumers=0,
                size=16,
                confirm=50,
                duration=None,
                messages=1000,
                queue="q",
                queueArguments={
                    "x-max-length": 10,
                    "x-queue-type": "quorum",
                    "x-single-active-consumer": True,
                },
                durable=True,
                persistent=True,
                prefetch=1,
                json=True,
                keepQueue=True,
                drainTimeout=2.5,
            ),
        )
        self.assertEqual(options.ackEvery, 1)

    def test_badValues(self) -> None:
        """
        Each bad value is refused with the option's name and the reason.
        """
        cases: list[tuple[list[str], tuple[str, ...]]] = [
            (["--size", "15"], ("--size", "at least 16", "15")),
            (["--size", "big"], ("--size", "integer", "big")),
            (["--publishers", "0"], ("--publishers", "at least 1")),
            (["--consumers", "-1"], ("--consumers", "at least 0")),
            (["--confirm", "-5"], ("--confirm", "at least 0")),
            (["--duration", "0"], ("--duration", "more than 0")),
            (["--duration", "nan"], ("--duration", "more than 0")),
            (["--duration", "soon"], ("--duration", "seconds")),
            (["--messages", "0"], ("--messages", "at least 1")),
            (["--prefetch", "0"], ("--prefetch", "at least 1")),
            (["--prefetch", "65536"], ("--prefetch", "at most 65535")),
            (["--queue", ""], ("--queue", "empty")),
            (["--queue", "q" * 256], ("--queue", "255 bytes")),
            (["--queue-arg", "x-max-length"], ("--queue-arg", "KEY=VALUE")),
            (["--queue-arg", "=1"], ("--queue-arg", "KEY=VALUE")),
            (["--url", "ftp://h/"], ("--url", "amqps://")),
            (["--progress", "-1"], ("--progress", "0 or more")),
            (["--duration", "1", "--messages", "1"], ("not allowed",)),
            (["--bogus"], ("unrecognized", "--bogus")),
        ]
        for argv, words in cases:
            self.assertOptionError(argv, *words)

    def test_mainPrintsOneLine(self) -> None:
        """
        L{main} prints a bad option as one line on standard error and
        returns 2, without touching the network.
        """
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        self.assertEqual(main(["--size", "1"]), 2)
        self.assertEqual(
            stderr.getvalue(),
            "qha-bench: error: argument --size: must be at least 16 (got 1)\n",
        )


class PublishEncodingTests(SynchronousTestCase):
    """
    The publish encoded once with pamqp and stamped per message decodes back
    with pamqp to the intended method, header and body.
    """

    def assertPublish(
        self,
        decoded: list[tuple[int, object]],
        queue: str,
        size: int,
        stamp: tuple[int, int],
        deliveryMode: int | None,
        frameMax: int,
    ) -> None:
        """
        C{decoded} is exactly one publish of C{size} bytes to C{queue}, with
        bodies no bigger than C{frameMax} allows and C{stamp} at the start.
        """
        channels = {channel for channel, _ in decoded}
        self.assertEqual(channels, {1})
        method, contentHeader, *bodies = [value for _, value in decoded]
        assert isinstance(method, commands.Basic.Publish)
        self.assertEqual(
            (method.exchange, method.routing_key, method.mandatory),
            ("", queue, True),
        )
        assert isinstance(contentHeader, header.ContentHeader)
        self.assertEqual(contentHeader.body_size, size)
        self.assertEqual(contentHeader.properties.delivery_mode, deliveryMode)
        content = b""
        for each in bodies:
            assert isinstance(each, body.ContentBody)
            self.assertLessEqual(len(each.value), frameMax - 8)
            content += each.value
        self.assertEqual(len(content), size)
        self.assertEqual(STAMP.unpack_from(content), stamp)
        self.assertEqual(content[STAMP.size:], bytes(size - STAMP.size))

    def test_small(self) -> None:
        """
        A small body is one body frame.
        """
        template = buildPublishTemplate("qha-bench", 100, 131072)
        decoded = unmarshalAll(template.stamp(123456789, 42))
        self.assertEqual(len(decoded), 3)
        self.assertPublish(decoded, "qha-bench", 100, (123456789, 42), None, 131072)

    def test_persistent(self) -> None:
        """
        C{persistent} sets delivery_mode 2.
        """
        template = buildPublishTemplate("q", 16, 4096, persistent=True)
        self.assertPublish(unmarshalAll(template.stamp(1, 2)), "q", 16, (1, 2), 2, 4096)

    def test_splitBody(self) -> None:
        """
        A body longer than frame_max - 8 is split into as many body frames as
        needed, each within frame_max.
        """
        for size in (4088, 4089, 10000, 3 * 4088):
            template = buildPublishTemplate("q", size, 4096)
            decoded = unmarshalAll(template.stamp(7, 8))
            self.assertEqual(len(decoded), 2 + -(-size // 4088), size)
            self.assertPublish(decoded, "q", size, (7, 8), None, 4096)

    def test_batch(self) -> None:
        """
        L{PublishBatch.stamp} yields that many publishes, stamped with
        increasing times and consecutive sequence numbers.
        """
        template = buildPublishTemplate("q", 20, 4096)
        batch = PublishBatch(template, 5)
        data = bytes(batch.stamp(3, 100))
        decoded = unmarshalAll(data)
        self.assertEqual(len(decoded), 9)
        stamps = []
        for index in range(3):
            message = decoded[3 * index:3 * index + 3]
            content = cast(body.ContentBody, message[2][1]).value
            stamps.append(STAMP.unpack_from(content))
            self.assertPublish(message, "q", 20, stamps[-1], None, 4096)
        self.assertEqual([sequence for _, sequence in stamps], [100, 101, 102])
        times = [sent for sent, _ in stamps]
        self.assertEqual(times, sorted(times))

    def test_tooSmall(self) -> None:
        """
        Bodies too small for the stamp are refused.
        """
        self.assertRaises(ValueError, buildPublishTemplate, "q", 15, 4096)

    def test_ack(self) -> None:
        """
        L{encodeAck} makes the same frame as pamqp.
        """
        for tag, multiple in [(1, False), (2**63 - 1, True)]:
            self.assertEqual(
                encodeAck(tag, multiple),
                frame.marshal(commands.Basic.Ack(tag, multiple), 1),
            )

    def test_decodeMethod(self) -> None:
        """
        L{decodeMethod} decodes a method frame's payload with pamqp.
        """
        encoded = encodeMethod(commands.Connection.Close(320, "bye", 0, 0), 0)
        method = decodeMethod(0, encoded[7:-1])
        assert isinstance(method, commands.Connection.Close)
        self.assertEqual((method.reply_code, method.reply_text), (320, "bye"))
        self.assertRaises(FrameError, decodeMethod, 0, b"\xff\xff\xff\xff")


class FrameReaderTests(SynchronousTestCase):
    """
    L{FrameReader} cuts a byte stream into frames whatever the chunking.
    """

    def stream(self) -> tuple[bytes, list[tuple[int, int, bytes]]]:
        """
        @return: a stream of assorted frames and what it should parse to.
        """
        pieces = [
            frame.marshal(commands.Basic.Deliver("ctag", 1, False, "", "q"), 1),
            frame.marshal(header.ContentHeader(0, 5000), 1),
            frame.marshal(body.ContentBody(b"x" * 4088), 1),
            frame.marshal(body.ContentBody(b"y" * 912), 1),
            frame.marshal(heartbeat.Heartbeat(), 0),
            frame.marshal(commands.Basic.Ack(9, True), 2),
            frame.marshal(body.ContentBody(b"z"), 3),
        ]
        expected = [
            (piece[0], struct.unpack(">H", piece[1:3])[0], piece[7:-1])
            for piece in pieces
        ]
        return b"".join(pieces), expected

    def parse(self, chunks: list[bytes]) -> list[tuple[int, int, bytes]]:
        """
        @return: what a fresh reader makes of C{chunks}, payloads as bytes.
        """
        reader = FrameReader()
        return [
            (frameType, channel, bytes(payload))
            for chunk in chunks
            for frameType, channel, payload in reader.feed(chunk)
        ]

    def test_whole(self) -> None:
        """
        The stream in one piece gives every frame.
        """
        data, expected = self.stream()
        self.assertEqual(self.parse([data]), expected)

    def test_splitAtEveryOffset(self) -> None:
        """
        Split in two at any offset, including 0 and the end, the stream gives
        the same frames.
        """
        data, expected = self.stream()
        for offset in range(len(data) + 1):
            self.assertEqual(
                self.parse([data[:offset], data[offset:]]), expected, offset
            )

    def test_splitInThreeAroundHeaders(self) -> None:
        """
        Split in three, with the second cut anywhere within the following 12
        bytes (the next frame header), the stream gives the same frames.
        """
        data, expected = self.stream()
        for first in range(len(data) + 1):
            for second in range(first, min(first + 12, len(data)) + 1):
                chunks = [data[:first], data[first:second], data[second:]]
                self.assertEqual(self.parse(chunks), expected, (first, second))

    def test_byteByByte(self) -> None:
        """
        One byte at a time, the stream gives the same frames.
        """
        data, expected = self.stream()
        self.assertEqual(
            self.parse([data[i:i + 1] for i in range(len(data))]), expected
        )

    def test_partialFrameWaits(self) -> None:
        """
        Nothing comes out until the end octet of a frame is in.
        """
        whole = frame.marshal(body.ContentBody(b"abc"), 1)
        reader = FrameReader()
        self.assertEqual(reader.feed(whole[:-1]), [])
        frames = reader.feed(whole[-1:])
        self.assertEqual(
            [(t, c, bytes(p)) for t, c, p in frames], [(3, 1, b"abc")]
        )

    def test_badFrameEnd(self) -> None:
        """
        A frame that does not end with 0xCE is an error.
        """
        whole = frame.marshal(body.ContentBody(b"abc"), 1)
        self.assertRaises(FrameError, FrameReader().feed, whole[:-1] + b"\x00")

    def test_unknownType(self) -> None:
        """
        An unknown frame type is an error, caught from the header alone.
        """
        self.assertRaises(
            FrameError, FrameReader().feed, b"\x09\x00\x01\x00\x00\x00\x00"
        )

    def test_oversized(self) -> None:
        """
        A frame larger than frame_max is an error, caught from the header.
        """
        reader = FrameReader(frameMax=4096)
        self.assertRaises(FrameError, reader.feed, struct.pack(">BHI", 3, 1, 4089))


class LatencyHistogramTests(SynchronousTestCase):
    """
    L{LatencyHistogram} keeps latencies in bounded memory and gives
    nearest-rank percentiles within 0.2%.
    """

    def test_empty(self) -> None:
        """
        An empty histogram has no percentiles.
        """
        histogram = LatencyHistogram()
        self.assertIsNone(histogram.percentile(50))
        self.assertEqual(histogram.count, 0)

    def test_exactSmallValues(self) -> None:
        """
        Below 1024 every value has its own bucket, so nearest-rank
        percentiles are exact: p50 of 1..100 is 50, p99 is 99, p100 100.
        """
        histogram = LatencyHistogram()
        for value in range(100, 0, -1):
            histogram.record(value)
        self.assertEqual(histogram.count, 100)
        self.assertEqual(histogram.percentile(50), 50)
        self.assertEqual(histogram.percentile(99), 99)
        self.assertEqual(histogram.percentile(100), 100)
        self.assertEqual(histogram.percentile(0), 1)
        self.assertEqual(histogram.maximum, 100)

    def test_nearestRank(self) -> None:
        """
        The percentile is the least value with at least that share of values
        at or below it: with 999 values of 1 and one of 2, p99.9 is 1 and
        p99.91 is 2.
        """
        histogram = LatencyHistogram()
        for _ in range(999):
            histogram.record(1)
        histogram.record(2)
        self.assertEqual(histogram.percentile(99.9), 1)
        self.assertEqual(histogram.percentile(99.91), 2)

    def test_negative(self) -> None:
        """
        A negative latency counts as 0.
        """
        histogram = LatencyHistogram()
        histogram.record(-5)
        self.assertEqual(histogram.percentile(50), 0)

    def test_buckets(self) -> None:
        """
        Buckets tile the integers without gaps or overlaps, and each is
        within 0.2% of its values.
        """
        previousHigh = -1
        for index in range(LatencyHistogram.SIZE):
            low, high = LatencyHistogram.bucketRange(index)
            self.assertEqual(low, previousHigh + 1, index)
            self.assertLessEqual(high - low, low / 512 + 1e-9)
            self.assertEqual(LatencyHistogram.bucketOf(low), index)
            self.assertEqual(LatencyHistogram.bucketOf(high), index)
            previousHigh = high
        self.assertGreaterEqual(previousHigh, 2**63 - 1)

    def test_largeValues(self) -> None:
        """
        Percentiles of large values are the bucket's upper edge, at most 0.2%
        above the true value, and never above the maximum.
        """
        histogram = LatencyHistogram()
        values = [1_000_000 + 997 * i for i in range(1000)]
        for value in values:
            histogram.record(value)
        for percent, exact in [(50, values[499]), (99, values[989])]:
            reported = histogram.percentile(percent)
            assert reported is not None
            self.assertGreaterEqual(reported, exact)
            self.assertLessEqual(reported, exact * 1.002)
        self.assertEqual(histogram.percentile(100), values[-1])
        self.assertEqual(histogram.maximum, values[-1])

    def test_mergeAndSparse(self) -> None:
        """
        Histograms sent as sparse buckets and merged give the percentiles of
        all the values together.
        """
        first, second = LatencyHistogram(), LatencyHistogram()
        for value in range(1, 51):
            first.record(value)
        for value in range(51, 101):
            second.record(value)
        merged = LatencyHistogram()
        for each in (first, second):
            merged.merge(LatencyHistogram.fromSparse(each.toSparse(), each.maximum))
        self.assertEqual(merged.count, 100)
        self.assertEqual(merged.percentile(50), 50)
        self.assertEqual(merged.percentile(99), 99)
        self.assertEqual(merged.maximum, 100)


class ConfirmTrackerTests(SynchronousTestCase):
    """
    L{ConfirmTracker} counts confirms however the broker groups them.
    """

    def test_single(self) -> None:
        """
        Single acks in order settle one tag each.
        """
        tracker = ConfirmTracker()
        for tag in (1, 2, 3):
            tracker.settle(tag, False, True)
        self.assertEqual(
            (tracker.acked, tracker.nacked, tracker.settledUpTo), (3, 0, 3)
        )

    def test_multiple(self) -> None:
        """
        A multiple ack or nack settles every tag up to it not yet settled.
        """
        tracker = ConfirmTracker()
        tracker.settle(5, True, True)
        tracker.settle(8, True, False)
        self.assertEqual((tracker.acked, tracker.nacked), (5, 3))
        self.assertEqual(tracker.settled, 8)

    def test_outOfOrder(self) -> None:
        """
        Singles out of order, then a multiple covering them, count each tag
        once; a duplicate or stale confirm counts nothing.
        """
        tracker = ConfirmTracker()
        tracker.settle(3, False, True)
        tracker.settle(5, False, False)
        self.assertEqual(tracker.settledUpTo, 0)
        tracker.settle(1, False, True)
        self.assertEqual(tracker.settledUpTo, 1)
        tracker.settle(3, False, True)
        tracker.settle(6, True, True)
        self.assertEqual((tracker.acked, tracker.nacked), (5, 1))
        self.assertEqual(tracker.settledUpTo, 6)
        tracker.settle(4, True, True)
        tracker.settle(2, False, False)
        self.assertEqual(tracker.settled, 6)

    def test_gapClosed(self) -> None:
        """
        A single ack that fills the gap below earlier singles moves
        C{settledUpTo} past them.
        """
        tracker = ConfirmTracker()
        tracker.settle(2, False, True)
        tracker.settle(3, False, True)
        tracker.settle(1, False, True)
        self.assertEqual(tracker.settledUpTo, 3)


class FakeConnection:
    """
    Stands in for L{AMQPConnection} in L{Consumer.handleFrames}: records
    what is sent and decodes rare frames like the real one.
    """

    def __init__(self) -> None:
        """
        Nothing sent yet.
        """
        self.sent: list[bytes] = []

    def sendAll(self, data: bytes) -> None:
        """
        Record C{data}.
        """
        self.sent.append(bytes(data))

    def handleRareFrame(
        self, frameType: int, channel: int, payload: memoryview
    ) -> object:
        """
        Decode like L{AMQPConnection.handleRareFrame}, raising on close.
        """
        method = decodeMethod(channel, payload)
        if isinstance(method, commands.Channel.Close):
            raise ServerClosedError(
                "channel", method.reply_code or 0, method.reply_text or ""
            )
        return method


class ConsumerTests(SynchronousTestCase):
    """
    L{Consumer.handleFrames} counts deliveries, reads their send times and
    acks in groups.
    """

    def delivery(
        self, tag: int, sentNs: int, size: int, redelivered: bool = False
    ) -> bytes:
        """
        @return: a delivery as the broker would frame it, with 4 KiB frames.
        """
        template = buildPublishTemplate("q", size, 4096)
        published = unmarshalAll(template.stamp(sentNs, tag))
        parts = [
            frame.marshal(
                commands.Basic.Deliver("ctag", tag, redelivered, "", "q"), 1
            )
        ]
        for _, value in published[1:]:
            assert isinstance(value, (header.ContentHeader, body.ContentBody))
            parts.append(frame.marshal(value, 1))
        return b"".join(parts)

    def test_deliveries(self) -> None:
        """
        Deliveries fed in arbitrary chunks are counted with their latency
        from the body's timestamp, and acked with multiple every prefetch/2.
        """
        fake = FakeConnection()
        options = BenchOptions(url=parseURL("amqp://h/"), prefetch=4)
        consumer = Consumer(cast(AMQPConnection, fake), options, 0, None)
        stream = b"".join(
            self.delivery(tag, 1000 * tag, 5000 if tag % 2 else 16, tag == 3)
            for tag in range(1, 6)
        )
        reader = FrameReader()
        for start in range(0, len(stream), 777):
            chunk = stream[start:start + 777]
            consumer.handleFrames(reader.feed(chunk), 10_000 + start)
        self.assertEqual(consumer.consumed, 5)
        self.assertEqual(consumer.redelivered, 1)
        self.assertEqual(consumer.histogram.count, 5)
        self.assertEqual(fake.sent, [encodeAck(2, True), encodeAck(4, True)])
        consumer.ackAll()
        self.assertEqual(fake.sent[-1], encodeAck(5, True))
        self.assertEqual(consumer.unacked, 0)
        lastByteOfFirst = len(self.delivery(1, 1000, 5000)) - 1
        self.assertEqual(consumer.firstNs, 10_000 + lastByteOfFirst // 777 * 777)

    def test_channelClose(self) -> None:
        """
        A Channel.Close among deliveries raises L{ServerClosedError}.
        """
        consumer = Consumer(
            cast(AMQPConnection, FakeConnection()),
            BenchOptions(url=parseURL("amqp://h/")),
            0,
            None,
        )
        data = frame.marshal(
            commands.Channel.Close(404, "NOT_FOUND - no queue", 60, 20), 1
        )
        error = self.assertRaises(
            ServerClosedError, consumer.handleFrames, FrameReader().feed(data), 0
        )
        self.assertEqual(
            str(error), "server closed the channel: 404 NOT_FOUND - no queue"
        )


class SummarizeTests(SynchronousTestCase):
    """
    L{summarize} adds up the processes' results into rates and counts.
    """

    def test_rates(self) -> None:
        """
        Rates run from the earliest publisher start to the last send, confirm
        or delivery; lost is published minus consumed.
        """
        options = BenchOptions(
            url=parseURL("amqp://h/"), publishers=2, consumers=1, confirm=10
        )
        second = 1_000_000_000
        publishers = [
            PublisherResult(published=100, confirmed=98, nacked=2, startNs=second,
                            lastSendNs=2 * second, lastConfirmNs=3 * second),
            PublisherResult(published=100, confirmed=100, returned=1,
                            startNs=second + 5, lastSendNs=2 * second,
                            lastConfirmNs=2 * second),
        ]
        histogram = LatencyHistogram()
        for value in range(1, 101):
            histogram.record(value * 1_000_000)
        consumers = [
            ConsumerResult(consumed=190, lastNs=5 * second,
                           latencies=histogram.toSparse(),
                           maximumNs=histogram.maximum)
        ]
        report = summarize(options, publishers, consumers)
        self.assertEqual(report.publishedRate, 200.0)
        self.assertEqual(report.confirmedRate, 99.0)
        self.assertEqual(report.consumedRate, 47.5)
        self.assertEqual(
            (report.published, report.confirmed, report.nacked,
             report.consumed, report.lost, report.returned),
            (200, 198, 2, 190, 10, 1),
        )
        assert report.latencyP50 is not None and report.latencyP99 is not None
        self.assertApproximates(report.latencyP50, 50, 0.1)
        self.assertApproximates(report.latencyP99, 99, 0.2)
        self.assertEqual(report.latencyMax, 100.0)
        table = formatTable(report)
        self.assertIn("p50 50.", table)
        self.assertIn("lost 10", table)

    def test_noConsumersNoConfirms(self) -> None:
        """
        Without consumers or confirms those figures are absent, not zero.
        """
        options = BenchOptions(url=parseURL("amqp://h/"), consumers=0)
        report = summarize(
            options, [PublisherResult(published=10, startNs=0, lastSendNs=10**9)], []
        )
        self.assertEqual(report.publishedRate, 10.0)
        self.assertIsNone(report.confirmedRate)
        self.assertIsNone(report.consumedRate)
        self.assertIsNone(report.lost)
        self.assertIsNone(report.latencyP50)
        self.assertIn("nothing consumed", formatTable(report))
        json.dumps(report.__dict__)


class ProgressPrinterTests(SynchronousTestCase):
    """
    L{ProgressPrinter} prints a line every interval while a run goes on.
    """

    def test_lines(self) -> None:
        """
        A line is printed once its time has come, with totals and the rates
        since the line before; a tick before the next is due prints nothing.
        """
        out = io.StringIO()
        printer = ProgressPrinter(5.0, out)
        self.assertEqual(printer.due(100.0), 105.0)
        printer.tick(4.9, 100, 90, 80)
        self.assertEqual(out.getvalue(), "")
        printer.tick(5.0, 50_000, 49_000, 40_000)
        printer.tick(7.0, 60_000, 59_000, 50_000)
        printer.tick(10.5, 100_000, 99_000, 90_000)
        self.assertEqual(
            out.getvalue().splitlines(),
            [
                "qha-bench: 5.0 s: published 50,000 (10,000/s), confirmed 49,000,"
                " consumed 40,000 (8,000/s)",
                "qha-bench: 10.5 s: published 100,000 (9,091/s), confirmed 99,000,"
                " consumed 90,000 (9,091/s)",
            ],
        )
        self.assertEqual(printer.due(100.0), 115.0)

    def test_off(self) -> None:
        """
        C{--progress 0}: no line, and no wake-up is due.
        """
        out = io.StringIO()
        printer = ProgressPrinter(0.0, out)
        printer.tick(100.0, 1, 1, 1)
        self.assertEqual(out.getvalue(), "")
        self.assertEqual(printer.due(0.0), math.inf)
