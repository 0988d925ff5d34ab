"""
The status page at C{/} of the HTTP port: one HTML page, with a little
JavaScript and no build step, that reads the management API (C{/api/ha},
C{/api/overview}, C{/api/queues}, C{/api/connections}) with the browser's
credentials and refreshes itself every few seconds. The queues are those
of every virtual host the user may see, each with its virtual host.

The page asks for the same login as the API (a user who may read it): the
browser asks once, then sends the credentials with the page's own
requests, which are in the same place (C{/}) of the same origin.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from .auth import REALM, BasicAuthenticator, Caller
from .broker import ManagedBroker

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>qha</title>
<style>
 body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
 h1 { font-size: 1.4em; margin: 0 0 .2em; }
 h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
 table { border-collapse: collapse; min-width: 30em; }
 th, td { text-align: left; padding: .25em .8em .25em 0; border-bottom: 1px solid #ddd; }
 td.n, th.n { text-align: right; }
 .role { font-weight: bold; padding: .1em .4em; border-radius: .3em; background: #eee; }
 .active, .standalone { background: #cfc; } .ready { background: #cce5ff; }
 .recovering, .catchup, .joining { background: #ffe8a8; }
 #error { color: #a00; } .muted { color: #777; }
</style>
</head>
<body>
<h1>qha <span id="node"></span> <span id="role" class="role"></span></h1>
<div class="muted">cluster <span id="cluster"></span>, epoch <span id="epoch"></span>,
 version <span id="version"></span>; updated <span id="updated">never</span>
 <span id="error"></span></div>

<h2>Cluster</h2>
<table id="members"><thead><tr><th>broker</th><th>address</th><th>role</th>
<th class="n">sent</th><th class="n">acknowledged</th><th class="n">lag (boxes)</th></tr></thead>
<tbody></tbody></table>

<h2>Queues</h2>
<table id="queues"><thead><tr><th>name</th><th class="n">ready</th><th class="n">unacked</th>
<th class="n">consumers</th><th class="n">publish/s</th><th class="n">deliver/s</th><th>replicate</th>
<th>vhost</th></tr></thead>
<tbody></tbody></table>

<h2>Connections</h2>
<table id="connections"><thead><tr><th>name</th><th>user</th><th>vhost</th>
<th class="n">channels</th></tr></thead>
<tbody></tbody></table>

<script>
"use strict";
const interval = Number(new URLSearchParams(location.search).get("interval")) || 5;

function cell(text, numeric) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (numeric) td.className = "n";
  return td;
}

function fill(id, rows) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren(...rows.map(cells => {
    const tr = document.createElement("tr");
    tr.append(...cells);
    return tr;
  }));
}

async function get(path) {
  // From the origin: a page opened as http://user:password@host/ has a
  // base URL that fetch refuses; the browser sends the login it holds.
  const answer = await fetch(new URL(path, location.origin + "/"), {credentials: "same-origin", cache: "no-store"});
  if (!answer.ok) throw new Error(path + ": " + answer.status + " " + answer.statusText);
  return answer.json();
}

function rate(stats, key) {
  const details = stats && stats[key + "_details"];
  return details ? details.rate.toFixed(1) : "";
}

async function refresh() {
  try {
    const [ha, overview, queues, connections] = await Promise.all(
      ["api/ha", "api/overview", "api/queues", "api/connections"].map(get));
    document.getElementById("node").textContent = overview.node;
    const role = document.getElementById("role");
    role.textContent = ha.role;
    role.className = "role " + ha.role;
    document.getElementById("cluster").textContent = overview.cluster_name;
    document.getElementById("epoch").textContent = ha.epoch;
    document.getElementById("version").textContent = overview.product_version;
    const members = [[cell(ha.brokerId + " (this broker)"), cell(ha.amqp), cell(ha.role),
                      cell("", true), cell("", true), cell("", true)]];
    if (ha.primary) {
      members.push([cell("primary"), cell(ha.primary), cell("active"),
                    cell("", true), cell("", true), cell("", true)]);
    }
    for (const b of ha.backups || []) {
      members.push([cell(b.id), cell(b.address), cell(b.ready ? "ready" : "catchup"),
                    cell(b.sent, true), cell(b.acknowledged, true), cell(b.sent - b.acknowledged, true)]);
    }
    fill("members", members);
    fill("queues", queues.map(q => [
      cell(q.name), cell(q.messages_ready, true), cell(q.messages_unacknowledged, true),
      cell(q.consumers, true), cell(rate(q.message_stats, "publish"), true),
      cell(rate(q.message_stats, "deliver_get"), true), cell(q.qha_replicate), cell(q.vhost)]));
    fill("connections", connections.map(c => [
      cell(c.name), cell(c.user), cell(c.vhost), cell(c.channels, true)]));
    document.getElementById("updated").textContent = new Date().toLocaleTimeString();
    document.getElementById("error").textContent = "";
  } catch (error) {
    document.getElementById("error").textContent = String(error);
  }
}

refresh();
setInterval(refresh, interval * 1000);
</script>
</body>
</html>
"""


class StatusPage(Resource):
    """
    C{/}: the status page, for users who may read the API.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, broker: ManagedBroker) -> None:
        """
        @param broker: whose users may see the page.
        """
        super().__init__()
        self.authenticator = BasicAuthenticator(
            broker.users, broker.verifier, broker.clock, broker.failedLogins
        )

    def render_GET(self, request: IRequest) -> Any:
        """
        The page, once the caller logged in (the password is checked in a
        thread: answered later).
        """
        answering = self.authenticator.authenticate(request).addCallback(self._answer, request)
        answering.addErrback(self._failed, request).addCallback(self._write, request)
        return NOT_DONE_YET

    def _failed(self, failure: Failure, request: IRequest) -> bytes:
        """
        The login could not be checked: 500, logged.
        """
        self.log.failure("checking a login for the status page", failure)
        request.setResponseCode(500)
        return b""

    def _answer(self, caller: Caller | None, request: IRequest) -> bytes:
        """
        The page for a reader; 401 with a login request for anyone else.
        """
        if caller is None or not caller.mayRead:
            request.setResponseCode(401)
            request.setHeader(b"www-authenticate", f'Basic realm="{REALM}"'.encode("ascii"))
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"Log in as a user who may read the management API.\n"
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-frame-options", b"DENY")
        request.setHeader(
            b"content-security-policy",
            b"default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline';"
            b" connect-src 'self'; frame-ancestors 'none'",
        )
        return PAGE.encode("utf-8")

    def _write(self, body: bytes, request: IRequest) -> None:
        """
        Write C{body} and finish, unless the client went away.
        """
        if getattr(request, "_disconnected", False):
            return
        request.write(body)
        request.finish()


__all__ = ["PAGE", "StatusPage"]
