"""
Tests for the limits of issue 13, each reached and held: the memory high
watermark counting what clients make the broker hold outside its queues
(unfinished bodies, uncommitted transactions), C{--max-connections} and
C{--max-connections-per-user}, C{--handshake-timeout}, and the cap on
header tables. Synchronous, over L{StringTransport} with a L{Clock}, and
over an in-memory cluster for the replication boxes a backup has not yet
answered.
"""

from __future__ import annotations

from typing import Any

from pamqp import commands
from pamqp.body import ContentBody
from pamqp.header import ContentHeader
from twisted.trial.unittest import SynchronousTestCase

from qha.amqp.limits import ConnectionLimits, countFields
from qha.broker.message import TableTooLarge, checkProperties, countTableFields, encodeTable
from qha.broker.vhost import Resources
from qha.tap import Options
from qha.test.support import (
    ALL,
    Client,
    InMemoryCluster,
    ProtocolTestCase,
    message,
    names,
    publishBytes,
)

KiB = 1024
MiB = 1024 * KiB


def startPublish(client: Client, channel: int, size: int, sent: int) -> None:
    """
    Publish a message of C{size} bytes on C{channel} to queue C{q}, sending
    only the first C{sent} bytes of its body (in 4 KiB frames).
    """
    client.sendFrames(
        channel,
        commands.Basic.Publish(exchange="", routing_key="q"),
        ContentHeader(0, size, commands.Basic.Properties()),
    )
    sendBody(client, channel, sent)


def sendBody(client: Client, channel: int, size: int) -> None:
    """
    Send C{size} more body bytes on C{channel}, a 4 KiB frame a read,
    while the broker reads (as a socket would).
    """
    step = 4 * KiB - 8
    while size > 0 and client.transport.producerState == "producing":
        part = min(step, size)
        client.sendFrames(channel, ContentBody(b"x" * part))
        size -= part


class MemoryWatermarkTests(ProtocolTestCase):
    """
    The issue's cases, scaled down 1024 times (KiB for MiB, so that the
    tests hold little memory): with a 64 KiB watermark, ten channels each
    holding a 30 KiB unfinished body, or 300 KiB in an uncommitted
    transaction, block the publisher with connection.blocked and stop
    reading from it, and the broker holds no more than the watermark and
    one read.
    """

    def setUp(self) -> None:
        """
        A 64 KiB watermark; frames of 4 KiB.
        """
        super().setUp()
        self.resources = self.vhost.resources
        self.resources.highWatermark = 64 * KiB
        self.vhost.declareQueue("q")

    def publisher(self, channels: int) -> Client:
        """
        A client with C{channels} channels that announces connection.blocked.
        """
        return self.openClient(
            channels=range(1, channels + 1),
            frameMax=4 * KiB,
            capabilities={"connection.blocked": True},
        )

    def test_unfinishedBodiesBlock(self) -> None:
        """
        Ten channels each sending a 30 KiB body, none finished: once the
        unfinished bodies pass the watermark, the client gets
        connection.blocked and is no longer read; what the broker holds
        stays within a frame of the watermark. It is held until the client
        goes (its channel.close would not be read either), which frees it
        and unblocks the others.
        """
        client = self.publisher(10)
        for channel in range(1, 11):
            if client.transport.producerState == "paused":
                break
            startPublish(client, channel, 31 * KiB, 30 * KiB)
        self.assertTrue(self.resources.blocked)
        self.assertEqual(client.transport.producerState, "paused")
        self.assertEqual(names(client.received()), [(0, "Connection.Blocked")])
        self.assertLessEqual(self.resources.used, 64 * KiB + 4 * KiB)
        self.assertEqual(self.resources.held, self.resources.used)
        self.assertEqual(self.vhost.queue("q").messageCount, 0)
        other = self.connect()
        frames = other.handshake(capabilities={"connection.blocked": True})
        self.assertEqual(names(frames)[-1], (0, "Connection.Blocked"))
        client.disconnect()
        self.assertEqual((self.resources.used, self.resources.blocked), (0, False))
        self.assertEqual(names(other.received()), [(0, "Connection.Unblocked")])

    def test_finishedBodyMovesToQueue(self) -> None:
        """
        A body held unfinished is counted once: when it completes, the
        queue counts it instead.
        """
        client = self.publisher(1)
        startPublish(client, 1, 10 * KiB, 6 * KiB)
        self.assertEqual(self.resources.held, 6 * KiB)
        sendBody(client, 1, 4 * KiB)
        self.assertEqual(self.resources.held, 0)
        self.assertEqual(self.resources.used, 10 * KiB + Resources.overhead)

    def test_uncommittedTransactionBlocks(self) -> None:
        """
        300 KiB published in a transaction not yet committed: once it passes
        the watermark the publisher is blocked and no longer read; a
        rollback frees it and unblocks.
        """
        client = self.publisher(1)
        client.call(1, commands.Tx.Select())
        sent = 0
        while sent < 300 * KiB and client.transport.producerState == "producing":
            client.send(publishBytes(1, "", "q", b"x" * (10 * KiB), chunk=4 * KiB - 8))
            sent += 10 * KiB
        self.assertTrue(self.resources.blocked)
        self.assertEqual(client.transport.producerState, "paused")
        self.assertLess(sent, 300 * KiB)
        self.assertLessEqual(self.resources.used, 64 * KiB + 11 * KiB)
        self.assertEqual(self.vhost.queue("q").messageCount, 0)
        self.assertEqual(names(client.received()), [(0, "Connection.Blocked")])
        client.call(1, commands.Tx.Rollback())
        self.assertEqual((self.resources.used, self.resources.blocked), (0, False))
        self.assertEqual(client.transport.producerState, "producing")

    def test_commitMovesToQueues(self) -> None:
        """
        A commit hands the held messages to the queues, which count them
        from then on; nothing stays held.
        """
        client = self.publisher(1)
        client.call(1, commands.Tx.Select())
        client.send(publishBytes(1, "", "q", b"x" * 1000))
        self.assertGreater(self.resources.held, 1000)
        self.assertEqual(names(client.call(1, commands.Tx.Commit())), [(1, "Tx.CommitOk")])
        self.assertEqual(self.resources.held, 0)
        self.assertEqual(self.resources.used, 1000 + Resources.overhead)

    def test_disconnectReleases(self) -> None:
        """
        A publisher that goes away with an unfinished body and an open
        transaction holds nothing any more.
        """
        client = self.publisher(2)
        startPublish(client, 1, 20 * KiB, 8 * KiB)
        client.call(2, commands.Tx.Select())
        client.send(publishBytes(2, "", "q", b"x" * 1000))
        self.assertGreater(self.resources.held, 9 * KiB)
        client.disconnect()
        self.assertEqual((self.resources.held, self.resources.used), (0, 0))


class ConnectionLimitTests(ProtocolTestCase):
    """
    C{--max-connections} and C{--max-connections-per-user}: connections
    past them are refused at connection.open with 530 NOT_ALLOWED and
    RabbitMQ's text; one that closes makes room.
    """

    def setUp(self) -> None:
        """
        At most two connections, one per user.
        """
        super().setUp()
        self.factory = self.makeFactory(
            limits=ConnectionLimits(maxConnections=2, maxConnectionsPerUser=1)
        )

    def refused(self, response: str) -> commands.Connection.Close:
        """
        A connection that logs in with C{response} and is refused.
        """
        client = self.connect()
        frames = client.handshake(response=response)
        close = self.assertConnectionClosed(client, frames, 530, dropped=True)
        return close

    def test_total(self) -> None:
        """
        Past C{--max-connections}, refused; once one closes, the next is
        let in, and the limit holds again.
        """
        first = self.openClient(channels=())
        self.openClient(channels=(), response="\0bob\0secret")
        close = self.refused("\0bob\0secret")
        self.assertEqual(
            close.reply_text, "NOT_ALLOWED - connection refused: node connection limit (2) is reached"
        )
        self.assertEqual(self.factory.limits.opened, 2)
        first.disconnect()
        self.assertEqual(self.factory.limits.opened, 1)
        self.openClient(channels=())
        self.refused("\0guest\0guest")

    def test_perUser(self) -> None:
        """
        Past C{--max-connections-per-user}, that user is refused; other
        users are not.
        """
        self.factory.limits.maxConnections = 0
        self.openClient(channels=())
        close = self.refused("\0guest\0guest")
        self.assertEqual(
            close.reply_text,
            "NOT_ALLOWED - connection refused for user 'guest': user connection limit (1)"
            " is reached",
        )
        self.openClient(channels=(), response="\0bob\0secret")
        self.assertEqual(self.factory.limits.perUser, {"guest": 1, "bob": 1})

    def test_handshakingNotCounted(self) -> None:
        """
        Connections still in their handshake (bounded by the handshake
        timeout) do not count; a refused one does not either.
        """
        waiting = self.connect()
        waiting.send(b"AMQP\x00\x00\x09\x01")
        self.openClient(channels=())
        self.openClient(channels=(), response="\0bob\0secret")
        self.refused("\0bob\0secret")
        self.assertEqual(self.factory.limits.opened, 2)


class HandshakeTimeoutTests(ProtocolTestCase):
    """
    C{--handshake-timeout} replaces the fixed 10 seconds.
    """

    def test_configured(self) -> None:
        """
        A client that has not opened its connection after the configured
        time is dropped; not a moment before.
        """
        self.factory = self.makeFactory(handshakeTimeout=2.5)
        client = self.connect()
        client.send(b"AMQP\x00\x00\x09\x01")
        self.clock.advance(2.4)
        self.assertFalse(client.transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(client.transport.disconnecting)

    def test_option(self) -> None:
        """
        The option defaults to RabbitMQ's 10 seconds and must be positive.
        """
        options = Options()
        options.exitOnError = False
        options.parseOptions(["--handshake-timeout", "3"])
        self.assertEqual(options["handshake-timeout"], 3.0)
        options = Options()
        options.exitOnError = False
        options.parseOptions([])
        self.assertEqual(options["handshake-timeout"], 10.0)
        options = Options()
        options.exitOnError = False
        from twisted.python.usage import UsageError

        error = self.assertRaises(UsageError, options.parseOptions, ["--handshake-timeout", "0"])
        self.assertIn("--handshake-timeout must be more than 0", str(error))


def headersHeader(fields: int, nested: bool = False) -> bytes:
    """
    A content header payload whose headers table has C{fields} fields (with
    C{nested}, half of them inside one nested table).
    """
    headers: dict[str, Any]
    if nested:
        half = fields // 2
        headers = {f"h{index}": index for index in range(fields - half - 1)}
        headers["inner"] = {f"i{index}": index for index in range(half)}
    else:
        headers = {f"h{index}": index for index in range(fields)}
    return ContentHeader(0, 1, commands.Basic.Properties(headers=headers)).marshal()


class HeaderTableCapTests(ProtocolTestCase):
    """
    The cap on header tables (C{--max-header-fields}): counted before the
    table is decoded, so a 9,000-field table costs no more than the cap.
    """

    def test_count(self) -> None:
        """
        Fields are counted nested ones included, only up to past the limit,
        the same from the bytes and from a decoded table.
        """
        table = {"a": 1, "b": {"c": [1, 2, {"d": 3}]}}
        encoded = encodeTable(table)
        self.assertEqual(countTableFields(encoded, 0, 100), 7)
        self.assertEqual(countFields(table, 100), 7)
        self.assertEqual(countTableFields(encoded, 0, 3), 4)
        self.assertEqual(countFields(table, 3), 4)

    def test_checkProperties(self) -> None:
        """
        A headers table over the cap is refused with L{TableTooLarge}; at
        the cap, or with no cap, it is checked as before.
        """
        checkProperties(headersHeader(1000), maxFields=1000)
        checkProperties(headersHeader(1000, nested=True), maxFields=1000)
        checkProperties(headersHeader(1001))
        self.assertRaises(TableTooLarge, checkProperties, headersHeader(1001), maxFields=1000)
        self.assertRaises(
            TableTooLarge, checkProperties, headersHeader(1001, nested=True), maxFields=1000
        )

    def test_publishRefused(self) -> None:
        """
        A publish whose headers table has 9,000 fields closes its channel
        with 406 PRECONDITION_FAILED saying why; the connection and its
        other channels carry on.
        """
        client = self.openClient(channels=(1, 2))
        client.call(1, commands.Queue.Declare(queue="q"))
        headers: dict[str, Any] = {f"h{index}": index for index in range(9000)}
        properties = commands.Basic.Properties(headers=headers)
        client.send(publishBytes(1, "", "q", b"x", properties=properties))
        close = self.assertChannelClosed(client.received(), 1, 406)
        self.assertIn("more than 1000 fields", close.reply_text)
        self.assertIn("--max-header-fields", close.reply_text)
        client.send(publishBytes(2, "", "q", b"y"))
        self.assertEqual(self.vhost.queue("q").messageCount, 1)
        self.assertFalse(client.transport.disconnecting)

    def test_argumentsRefused(self) -> None:
        """
        A method whose arguments table is over the cap (a headers-exchange
        binding that every publish would match against) closes the
        connection with 502 SYNTAX_ERROR saying why.
        """
        self.factory.limits.maxHeaderFields = 10
        client = self.openClient(channels=(1,))
        arguments: dict[str, Any] = {f"a{index}": index for index in range(11)}
        frames = client.call(1, commands.Queue.Declare(queue="q", arguments=arguments))
        close = self.assertConnectionClosed(client, frames, 502)
        self.assertIn("more than 10 fields", close.reply_text)


class LimitOptionTests(SynchronousTestCase):
    """
    The limit options and their defaults.
    """

    def test_defaults(self) -> None:
        """
        No connection limits, 1000 header fields, RabbitMQ's 128 MiB for a
        message.
        """
        options = Options()
        options.exitOnError = False
        options.parseOptions([])
        self.assertEqual(
            (
                options["max-connections"],
                options["max-connections-per-user"],
                options["max-header-fields"],
                options["max-message-size"],
            ),
            (0, 0, 1000, 128 * MiB),
        )

    def test_given(self) -> None:
        """
        Each option takes a whole number.
        """
        options = Options()
        options.exitOnError = False
        options.parseOptions(
            ["--max-connections", "5", "--max-connections-per-user", "2", "--max-header-fields", "50"]
        )
        self.assertEqual(
            (options["max-connections"], options["max-connections-per-user"], options["max-header-fields"]),
            (5, 2, 50),
        )


class UnconfirmedReplicationTests(SynchronousTestCase):
    """
    Replication boxes sent to a backup and not yet answered count against
    the memory high watermark, until the backup answers or goes.
    """

    def setUp(self) -> None:
        """
        A primary with a ready backup and a replicated queue.
        """
        self.cluster = InMemoryCluster(self)
        self.primary = self.cluster.primary()
        self.backup = self.cluster.node()
        self.link = self.cluster.connect(self.primary, self.backup)
        self.primary.vhost.declareQueue("q", arguments=ALL)
        self.link.flush()
        self.resources = self.primary.vhost.resources
        self.assertEqual(self.resources.held, 0)
        [self.source] = self.primary.sources.values()

    def publishAndSend(self, size: int) -> None:
        """
        Publish a replicated message of C{size} bytes and send its box,
        without letting the backup answer.
        """
        queues = self.primary.vhost.publish("", "q", message(b"x" * size, "q"))
        self.primary.gate.hold(queues)
        self.source.flush()

    def test_heldUntilAnswered(self) -> None:
        """
        A box sent counts until the backup answers it, then no more.
        """
        self.publishAndSend(50 * KiB)
        self.assertGreaterEqual(self.resources.held, 50 * KiB)
        self.link.flush()
        self.assertEqual(self.resources.held, 0)
        self.cluster.finish()

    def test_blocksAndReleasedWhenLost(self) -> None:
        """
        Unanswered boxes past the watermark block publishers; a backup that
        goes releases them.
        """
        self.resources.highWatermark = 64 * KiB
        # The queue holds each message too: 25 KiB queued and 25 sent.
        self.publishAndSend(25 * KiB)
        self.assertFalse(self.resources.blocked)
        self.publishAndSend(25 * KiB)
        self.assertTrue(self.resources.blocked)
        self.publishAndSend(25 * KiB)
        # Consumed: 75 KiB are still on their way to the backup.
        self.primary.vhost.purgeQueue("q")
        self.assertTrue(self.resources.blocked)
        self.link.cut()
        self.assertEqual((self.resources.held, self.resources.blocked), (0, False))
        self.cluster.finish()
