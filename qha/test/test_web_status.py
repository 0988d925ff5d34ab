"""
Tests for L{qha.web.status}: the status page at C{/} asks for the API's
login and answers one HTML page whose script reads the API.
"""

from __future__ import annotations

from qha.test.test_web import WebTestCase


class StatusPageTests(WebTestCase):
    """
    C{GET /} through the resource tree.
    """

    def test_page(self) -> None:
        """
        A reader gets the HTML page, which reads the API endpoints it shows
        and may not be framed.
        """
        request = self.call("GET", "/")
        self.assertIn(request.responseCode, (None, 200))
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"), [b"text/html; charset=utf-8"])
        self.assertEqual(request.responseHeaders.getRawHeaders(b"x-frame-options"), [b"DENY"])
        page = b"".join(request.written).decode("utf-8")
        for path in ("api/ha", "api/overview", "api/queues", "api/connections"):
            self.assertIn(f'"{path}"', page)

    def test_login(self) -> None:
        """
        Without credentials, or as a user who may not read the API, the
        answer is 401 with a Basic challenge, so the browser asks.
        """
        for user in (None, ("plain", "plainpw"), ("guest", "wrong")):
            request = self.call("GET", "/", user=user)
            self.assertEqual(request.responseCode, 401, user)
            self.assertTrue(request.responseHeaders.getRawHeaders(b"www-authenticate", [b""])[0].startswith(b"Basic"))

    def test_otherPaths(self) -> None:
        """
        Only C{/} is the page: other paths at the root are not found.
        """
        request = self.call("GET", "/nothing-here")
        self.assertEqual(request.responseCode, 404)

    def test_queuesOfEveryVhost(self) -> None:
        """
        The data the page shows comes from C{/api/queues}, which holds the
        queues of every virtual host, each with its own: the page has a
        column for it.
        """
        from qha.broker.vhosts import VirtualHosts

        VirtualHosts.of(self.vhost).add("vh2").declareQueue("tenant-q")
        self.vhost.declareQueue("root-q")
        rows = self.ok("GET", "/api/queues")
        self.assertEqual([(q["vhost"], q["name"]) for q in rows], [("/", "root-q"), ("vh2", "tenant-q")])
        page = b"".join(self.call("GET", "/").written).decode("utf-8")
        self.assertIn("<th>vhost</th>", page)
        self.assertIn("cell(q.vhost)", page)
