"""
Tests for L{qha.web.rates} and the management API's C{message_stats}: the
counters each queue keeps and the rates taken from readings of them.
"""

from __future__ import annotations

from pamqp import commands
from twisted.trial.unittest import SynchronousTestCase

from qha.amqp.replyto import REPLY_QUEUE
from qha.test.support import Client, contents, publishBytes
from qha.test.test_web import WebTestCase
from qha.test.test_web_metrics import samples
from qha.web.rates import MessageRates


class MessageRatesTests(SynchronousTestCase):
    """
    L{MessageRates} on readings given by the test.
    """

    def test_firstReading(self) -> None:
        """
        The first reading has nothing to compare with: rate 0.
        """
        self.assertEqual(MessageRates().rates(0.0, {"q": (10, 5)}), {"q": (0.0, 0.0)})

    def test_overTheWindow(self) -> None:
        """
        The rate is taken since the newest reading at least a window old.
        """
        rates = MessageRates(window=5.0)
        rates.rates(0.0, {"q": (0, 0)})
        rates.rates(3.0, {"q": (30, 0)})
        self.assertEqual(rates.rates(5.0, {"q": (50, 25)}), {"q": (10.0, 5.0)})
        # Now the base is the reading at 3 (t=8 is 5 s later).
        self.assertEqual(rates.rates(8.0, {"q": (80, 25)}), {"q": (10.0, 5.0)})
        self.assertEqual(len(rates.samples), 3)

    def test_newQueue(self) -> None:
        """
        A queue missing from the base reading has rate 0 until it is in one.
        """
        rates = MessageRates(window=1.0)
        rates.rates(0.0, {})
        self.assertEqual(rates.rates(1.0, {"new": (5, 0)}), {"new": (0.0, 0.0)})
        self.assertEqual(rates.rates(2.0, {"new": (7, 0)}), {"new": (2.0, 0.0)})

    def test_oneReadingASecond(self) -> None:
        """
        Listings more often than once a second keep one reading.
        """
        rates = MessageRates()
        for tenth in range(10):
            rates.rates(tenth / 10, {"q": (tenth, 0)})
        self.assertEqual(len(rates.samples), 1)


class MessageStatsTests(WebTestCase):
    """
    C{message_stats} of C{/api/queues} and C{/api/overview}.
    """

    def publish(self, count: int) -> None:
        """
        Publish C{count} messages to C{jobs} through the API.
        """
        for _ in range(count):
            self.ok(
                "POST",
                "/api/exchanges/%2F/amq.default/publish",
                {"routing_key": "jobs", "payload": "x", "payload_encoding": "string", "properties": {}},
            )

    def test_counts(self) -> None:
        """
        Publishes into a queue and deliveries from it (consumers and
        basic.get) are counted on the queue, and the rates follow.
        """
        self.vhost.declareQueue("jobs")
        self.ok("GET", "/api/queues/%2F/jobs")  # the first reading, at 0
        self.publish(4)  # each call advances the clock 60 s
        self.ok("POST", "/api/queues/%2F/jobs/get", {"count": 1, "ackmode": "ack_requeue_false", "encoding": "auto"})
        client = Client(self.factory)
        client.handshake(response="\0admin\0adminpw")
        client.openChannel(1)
        self.addCleanup(client.disconnect)
        client.call(1, commands.Basic.Consume(queue="jobs", consumer_tag="c1", no_ack=True))
        stats = self.ok("GET", "/api/queues/%2F/jobs")["message_stats"]
        self.assertEqual((stats["publish"], stats["deliver_get"]), (4, 4))
        self.assertGreater(stats["publish_details"]["rate"], 0)
        overview = self.ok("GET", "/api/overview")["message_stats"]
        self.assertEqual((overview["publish"], overview["deliver_get"]), (4, 4))
        self.assertIn("rate", overview["deliver_get_details"])

    def test_listing(self) -> None:
        """
        Every queue of a listing has C{message_stats}.
        """
        self.vhost.declareQueue("jobs")
        self.publish(2)
        (queue,) = self.ok("GET", "/api/queues")
        self.assertEqual(queue["message_stats"]["publish"], 2)

    def test_positionUntouched(self) -> None:
        """
        Counting changes nothing in the stream of changes that replication
        and the store count (C{vhost.changes}): the counters are on the
        queue, not an observer.
        """
        from qha.testing import RecordingObserver

        self.vhost.declareQueue("jobs")
        observer = RecordingObserver()
        self.vhost.observers.append(observer)
        before = self.vhost.changes
        self.publish(1)
        self.ok("GET", "/api/overview")
        self.assertEqual(self.vhost.changes - before, 1)  # the enqueue, nothing more

    def replyConsumer(self) -> tuple[Client, str]:
        """
        A client consuming direct replies on channel 1, and its address.
        """
        requester = Client(self.factory)
        requester.handshake(response="\0admin\0adminpw")
        requester.openChannel(1)
        self.addCleanup(requester.disconnect)
        requester.call(1, commands.Basic.Consume(queue=REPLY_QUEUE, consumer_tag="r", no_ack=True))
        [ident] = self.factory.replies.consumers
        return requester, self.factory.replies.address(ident, "/")

    def test_directReplies(self) -> None:
        """
        Direct replies, which enter no queue, count as publishes of their
        virtual host: in the overview's and the virtual host's
        C{message_stats}, with a rate.
        """
        self.vhost.declareQueue("jobs")
        self.ok("GET", "/api/overview")  # the first reading, at 0
        requester, address = self.replyConsumer()
        self.publish(1)  # into jobs; advances the clock
        requester.send(publishBytes(1, "", address, b"reply"))
        requester.send(publishBytes(1, "", address, b"reply"))
        self.assertEqual(len(contents(requester.received())), 2)
        overview = self.ok("GET", "/api/overview")["message_stats"]
        self.assertEqual(overview["publish"], 3)
        self.assertGreater(overview["publish_details"]["rate"], 0)
        vhost = self.ok("GET", "/api/vhosts/%2F")["message_stats"]
        self.assertEqual((vhost["publish"], vhost["deliver_get"]), (3, 0))
        (queue,) = self.ok("GET", "/api/queues")
        self.assertEqual(queue["message_stats"]["publish"], 1)

    def test_directRepliesInMetrics(self) -> None:
        """
        C{/metrics} counts the direct replies that reached their consumer
        per virtual host (C{qha_direct_replies_published_total}): they
        enter no queue, so no queue's counter has them.
        """
        requester, address = self.replyConsumer()
        path = "/api/exchanges/%2F/amq.default/publish"
        for _ in range(2):
            self.ok("POST", path, {"routing_key": address, "payload": "reply", "properties": {}})
        self.assertEqual(len(contents(requester.received())), 2)
        request = self.call("GET", "/metrics", user=None)
        found = samples(b"".join(request.written).decode("utf-8"))
        self.assertEqual(found["qha_direct_replies_published_total", (("vhost", "/"),)], 2)

    def test_directReplyOverHTTP(self) -> None:
        """
        C{POST /api/exchanges/VHOST/amq.default/publish} to a direct
        reply-to address reaches the requester and counts as a publish of
        the virtual host, as RabbitMQ's default exchange takes it from any
        publisher; an address nobody consumes is unroutable, uncounted.
        """
        requester, address = self.replyConsumer()
        path = "/api/exchanges/%2F/amq.default/publish"
        answer = self.ok("POST", path, {"routing_key": address, "payload": "reply", "properties": {}})
        self.assertEqual(answer, {"routed": True})
        [(deliver, body)] = contents(requester.received())
        self.assertEqual((deliver.routing_key, body), (address, b"reply"))
        self.assertEqual(self.vhost.repliesPublished, 1)
        forged = address[:-2] + ("AA" if not address.endswith("AA") else "BB")
        answer = self.ok("POST", path, {"routing_key": forged, "payload": "x", "properties": {}})
        self.assertEqual(answer, {"routed": False})
        self.assertEqual((requester.received(), self.vhost.repliesPublished), ([], 1))
