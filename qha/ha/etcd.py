"""
A small etcd v3 client over etcd's JSON gateway, for the coordinator.

qha needs only a handful of etcd's calls (leases, range, put, delete, one
kind of transaction and a watch), so it speaks the gateway's JSON over HTTP
with treq from the reactor instead of pulling in gRPC and a thread: a broker
whose reactor is stalled must fail to keep its lease alive, which is the
point of the lease.

What the gateway really answers (etcd 3.4 and 3.5, checked against a running
etcd), which this module hides from its callers:

  - keys and values are base64 in both directions;
  - 64-bit numbers (revisions, lease ids, TTLs, counts) come back as strings,
    and fields equal to their zero value are left out (a range that found
    nothing has no C{kvs}, a failed transaction has no C{succeeded}, a PUT
    event has no C{type});
  - the streaming calls (C{/v3/lease/keepalive}, C{/v3/watch}) wrap each
    answer in C{{"result": ...}}; a keepalive of a lease that expired answers
    without C{TTL} (or with C{"TTL": "0"}), not with an error; the watch
    answers one JSON object a line, first one with C{created}, then one per
    batch of events, and a watch the server cancels (its start revision was
    compacted) says C{canceled} and leaves the HTTP stream open;
  - errors answer a non-200 status with C{{"error", "code", "message"}},
    C{code} being the gRPC status (5: not found, 14: unavailable).

Several endpoints may be given; a call that cannot connect to one tries the
next. A call that connected but got no answer in time is not tried again
elsewhere (it may have been applied), but the next call starts with the next
endpoint. Every call has a deadline.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence
from urllib.parse import urlsplit

from twisted.internet import error as netError
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import (
    Certificate,
    PrivateCertificate,
    optionsForClientTLS,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed
from twisted.web.iweb import IPolicyForHTTPS, IResponse
from zope.interface import Interface, implementer

__all__ = [
    "Compare",
    "Delete",
    "EtcdClient",
    "EtcdError",
    "EtcdUnavailable",
    "Event",
    "Get",
    "IEtcd",
    "IWatch",
    "KeyValue",
    "Lease",
    "LeaseLost",
    "Put",
    "RangeResult",
    "TLSFiles",
    "TxnResult",
    "WatchCanceled",
    "parseCoordinator",
    "prefixEnd",
]


class EtcdUnavailable(Exception):
    """
    No endpoint answered: none accepted the connection, or the one that did
    gave no answer before the deadline, or etcd itself said it cannot serve
    (no leader, request timed out). The call may or may not have been
    applied.
    """


class EtcdError(Exception):
    """
    etcd answered, with an error.

    @ivar code: the gRPC status code the gateway gave (5: not found, 3:
        invalid argument, ...), or 0 when the answer was not understood.
    @ivar message: the gateway's message.
    """

    def __init__(self, code: int, message: str) -> None:
        """
        @param code: the gRPC status code.
        @param message: the gateway's message.
        """
        super().__init__(f"etcd error {code}: {message}")
        self.code = code
        self.message = message


class LeaseLost(EtcdError):
    """
    The lease is gone: it expired or was revoked, so every key on it is gone
    too.
    """


class WatchCanceled(EtcdError):
    """
    etcd cancelled a watch, most often because its start revision was
    compacted away.

    @ivar compactRevision: the oldest revision etcd still has, or 0.
    """

    def __init__(self, message: str, compactRevision: int = 0) -> None:
        """
        @param message: why, as etcd said it.
        @param compactRevision: the compaction revision etcd gave.
        """
        super().__init__(1, message)
        self.compactRevision = compactRevision


# gRPC codes the gateway answers with that mean "try again later": 4
# DEADLINE_EXCEEDED, 14 UNAVAILABLE.
_UNAVAILABLE_CODES = (4, 14)
_NOT_FOUND = 5


@dataclass(frozen=True)
class Lease:
    """
    A lease etcd granted.

    @ivar id: its id.
    @ivar ttl: the TTL etcd granted, in seconds (etcd may raise a smaller
        request to its minimum, 2 s with default settings).
    """

    id: int
    ttl: int


@dataclass(frozen=True)
class KeyValue:
    """
    One key as etcd stores it.

    @ivar key: the key.
    @ivar value: its value (empty in a DELETE event).
    @ivar createRevision: the revision that created it (0: absent).
    @ivar modRevision: the revision of its last change.
    @ivar version: how many times it was written since it was created.
    @ivar lease: the lease it is attached to, 0 for none.
    """

    key: bytes
    value: bytes = b""
    createRevision: int = 0
    modRevision: int = 0
    version: int = 0
    lease: int = 0


@dataclass(frozen=True)
class RangeResult:
    """
    The answer to a range.

    @ivar revision: the store's revision when it answered.
    @ivar kvs: the keys found, in key order.
    """

    revision: int
    kvs: list[KeyValue]


@dataclass(frozen=True)
class Event:
    """
    One change a watch saw.

    @ivar type: C{"PUT"} or C{"DELETE"}.
    @ivar kv: the key after the change (for a DELETE: the key and the
        revision of the deletion in C{modRevision}).
    """

    type: Literal["PUT", "DELETE"]
    kv: KeyValue


CompareTarget = Literal["VALUE", "VERSION", "CREATE", "MOD", "LEASE"]
CompareResult = Literal["EQUAL", "NOT_EQUAL", "GREATER", "LESS"]


@dataclass(frozen=True)
class Compare:
    """
    One condition of a transaction: C{target} of C{key} compared (C{result})
    with C{operand}.

    @ivar key: the key.
    @ivar target: what of the key is compared: C{VALUE} (bytes), C{VERSION},
        C{CREATE} (create revision), C{MOD} (mod revision), C{LEASE}.
    @ivar result: the comparison.
    @ivar operand: bytes for C{VALUE}, an int for the others. An absent key
        has version, create and mod revision 0.
    """

    key: bytes
    target: CompareTarget
    result: CompareResult
    operand: bytes | int

    def toJSON(self) -> dict[str, Any]:
        """
        The gateway's form of the condition.
        """
        fieldName = {
            "VALUE": "value",
            "VERSION": "version",
            "CREATE": "create_revision",
            "MOD": "mod_revision",
            "LEASE": "lease",
        }[self.target]
        if self.target == "VALUE":
            assert isinstance(self.operand, bytes)
            operand: str = _b64(self.operand)
        else:
            operand = str(int(self.operand))
        return {
            "key": _b64(self.key),
            "target": self.target,
            "result": self.result,
            fieldName: operand,
        }


@dataclass(frozen=True)
class Put:
    """
    A put in a transaction.

    @ivar key: the key.
    @ivar value: the value.
    @ivar lease: the lease to attach it to, 0 for none.
    """

    key: bytes
    value: bytes
    lease: int = 0

    def toJSON(self) -> dict[str, Any]:
        """
        The gateway's form of the operation.
        """
        request: dict[str, Any] = {"key": _b64(self.key), "value": _b64(self.value)}
        if self.lease:
            request["lease"] = str(self.lease)
        return {"request_put": request}


@dataclass(frozen=True)
class Delete:
    """
    A delete in a transaction.

    @ivar key: the key, or the prefix when C{prefix}.
    @ivar prefix: delete every key that starts with C{key}.
    """

    key: bytes
    prefix: bool = False

    def toJSON(self) -> dict[str, Any]:
        """
        The gateway's form of the operation.
        """
        return {"request_delete_range": _rangeRequest(self.key, self.prefix)}


@dataclass(frozen=True)
class Get:
    """
    A range in a transaction.

    @ivar key: the key, or the prefix when C{prefix}.
    @ivar prefix: every key that starts with C{key}.
    """

    key: bytes
    prefix: bool = False

    def toJSON(self) -> dict[str, Any]:
        """
        The gateway's form of the operation.
        """
        return {"request_range": _rangeRequest(self.key, self.prefix)}


Operation = Put | Delete | Get


@dataclass(frozen=True)
class TxnResult:
    """
    The answer to a transaction.

    @ivar succeeded: whether every comparison held (the success branch ran).
    @ivar revision: the store's revision after it.
    @ivar ranges: the keys each L{Get} of the branch that ran found, in the
        order of the L{Get}s.
    """

    succeeded: bool
    revision: int
    ranges: list[list[KeyValue]] = field(default_factory=list)


class IWatch(Interface):
    """
    A running watch.
    """

    def cancel() -> None:
        """
        Stop watching; the callback is not called again and C{ended} fires
        with L{None}.
        """

    started: Deferred[None]  # type: ignore[misc]
    ended: Deferred[None]  # type: ignore[misc]


class IEtcd(Interface):
    """
    The part of etcd v3 the coordinator uses. Every call answers with a
    L{Deferred} that fails with L{EtcdUnavailable} when etcd cannot be
    reached in time and with L{EtcdError} when etcd refused the call.
    """

    def grant(ttl: int) -> Deferred[Lease]:
        """
        Ask for a lease of C{ttl} seconds.
        """

    def keepalive(leaseId: int) -> Deferred[int]:
        """
        Renew lease C{leaseId} once; fire with its TTL again, or fail with
        L{LeaseLost} when it expired or was revoked.
        """

    def revoke(leaseId: int) -> Deferred[None]:
        """
        Revoke lease C{leaseId}, deleting its keys; a lease already gone
        fails with L{LeaseLost}.
        """

    def range(key: bytes, prefix: bool = False) -> Deferred[RangeResult]:
        """
        Read C{key}, or every key that starts with it when C{prefix}.
        """

    def put(key: bytes, value: bytes, lease: int = 0) -> Deferred[int]:
        """
        Write C{key}, attached to C{lease} unless 0; fire with the new
        revision. A lease that is gone fails with L{LeaseLost}.
        """

    def delete(key: bytes, prefix: bool = False) -> Deferred[int]:
        """
        Delete C{key} (or every key under the prefix); fire with how many
        keys were deleted.
        """

    def txn(
        compare: Sequence[Compare],
        success: Sequence[Operation],
        failure: Sequence[Operation],
    ) -> Deferred[TxnResult]:
        """
        If every condition of C{compare} holds, apply C{success}, else
        C{failure}, as one step.
        """

    def watch(
        key: bytes,
        prefix: bool,
        fromRevision: int,
        callback: Callable[[list[Event], int], None],
    ) -> IWatch:
        """
        Call C{callback(events, revision)} for every change of C{key} (or
        under the prefix) from revision C{fromRevision} on (0: from now).
        The watch's C{started} fires once etcd has created it; its C{ended}
        fires with L{None} when it is cancelled and fails when the stream
        stops for any other reason (L{EtcdUnavailable}, L{WatchCanceled}).
        """


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def prefixEnd(prefix: bytes) -> bytes:
    """
    The smallest key greater than every key that starts with C{prefix} (etcd's
    C{range_end} for a prefix): the prefix with its last byte below 0xff
    raised by one, or C{b"\\0"} (every key) when there is none.
    """
    data = bytearray(prefix)
    while data:
        if data[-1] < 0xFF:
            data[-1] += 1
            return bytes(data)
        data.pop()
    return b"\0"


def _rangeRequest(key: bytes, prefix: bool) -> dict[str, Any]:
    request = {"key": _b64(key)}
    if prefix:
        request["range_end"] = _b64(prefixEnd(key))
    return request


def _keyValue(data: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=_unb64(data.get("key")),
        value=_unb64(data.get("value")),
        createRevision=int(data.get("create_revision", 0)),
        modRevision=int(data.get("mod_revision", 0)),
        version=int(data.get("version", 0)),
        lease=int(data.get("lease", 0)),
    )


def _revision(answer: dict[str, Any]) -> int:
    return int(answer.get("header", {}).get("revision", 0))


def _errorFrom(answer: Any, status: int) -> EtcdError | EtcdUnavailable:
    """
    The exception for an error answer of the gateway.
    """
    if isinstance(answer, dict):
        code = int(answer.get("code", 0) or 0)
        message = str(answer.get("message") or answer.get("error") or f"HTTP {status}")
    else:
        code, message = 0, f"HTTP {status}"
    if code in _UNAVAILABLE_CODES:
        return EtcdUnavailable(message)
    if code == _NOT_FOUND and "lease not found" in message:
        return LeaseLost(code, message)
    return EtcdError(code, message)


@dataclass(frozen=True)
class TLSFiles:
    """
    The PEM files for an C{https://} etcd.

    @ivar ca: the CA that signed the etcd servers' certificates.
    @ivar cert: this client's certificate, or L{None}.
    @ivar key: its private key, or L{None}.
    """

    ca: str
    cert: str | None = None
    key: str | None = None


@implementer(IPolicyForHTTPS)
class _EtcdTLSPolicy:
    """
    Trust only the given CA, and present the client certificate if any.
    """

    def __init__(self, files: TLSFiles) -> None:
        """
        @param files: the PEM files; read once, here.
        """
        with open(files.ca, "rb") as f:
            self._trustRoot = Certificate.loadPEM(f.read())
        self._client: PrivateCertificate | None = None
        if files.cert:
            with open(files.cert, "rb") as f:
                pem = f.read()
            if files.key:
                with open(files.key, "rb") as f:
                    pem += b"\n" + f.read()
            self._client = PrivateCertificate.loadPEM(pem)

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        """
        The TLS options for one etcd endpoint.
        """
        return optionsForClientTLS(
            hostname.decode("ascii"),
            trustRoot=self._trustRoot,
            clientCertificate=self._client,
        )


def parseCoordinator(description: str) -> list[str]:
    """
    The etcd endpoints of a C{--ha-coordinator} value.

    @param description: C{etcd:URL[,URL...]} with each URL
        C{http://HOST:PORT} or C{https://HOST:PORT} (the port defaults to
        2379).
    @return: the base URLs, in the order given.
    @raise ValueError: with what is wrong, for a person to act on.
    """
    kind, colon, rest = description.partition(":")
    if not colon or kind != "etcd":
        raise ValueError(
            f"coordinator {description!r}: expected etcd:http://HOST:PORT[,http://HOST:PORT...]"
        )
    urls = []
    for part in rest.split(","):
        part = part.strip()
        if not part:
            raise ValueError(f"coordinator {description!r}: an empty etcd endpoint")
        try:
            split = urlsplit(part)
            port = split.port
        except ValueError as e:
            raise ValueError(f"coordinator {description!r}: bad endpoint {part!r} ({e})") from None
        if split.scheme not in ("http", "https"):
            raise ValueError(
                f"coordinator {description!r}: endpoint {part!r} must start with"
                " http:// or https://"
            )
        if not split.hostname:
            raise ValueError(f"coordinator {description!r}: endpoint {part!r} has no host")
        if split.path not in ("", "/") or split.query or split.fragment:
            raise ValueError(
                f"coordinator {description!r}: endpoint {part!r} must be only"
                " scheme://host:port"
            )
        host = split.hostname
        if ":" in host:
            host = f"[{host}]"
        urls.append(f"{split.scheme}://{host}:{port or 2379}")
    return urls


class _LineStream(Protocol):
    """
    Read a streaming gateway answer: one JSON object a line, possibly split
    over chunks or several to a chunk.
    """

    def __init__(self, onObject: Callable[[Any], None], done: Deferred[None]) -> None:
        """
        @param onObject: called with each object, in order.
        @param done: fires when the stream ends (with the reason's failure
            unless it ended cleanly).
        """
        self._onObject = onObject
        self._done = done
        self._buffer = b""
        self.stopped = False

    def dataReceived(self, data: bytes) -> None:
        """
        Split into lines; decode and hand over each whole one.
        """
        self._buffer += data
        while not self.stopped:
            line, newline, rest = self._buffer.partition(b"\n")
            if not newline:
                break
            self._buffer = rest
            if line.strip():
                try:
                    decoded = json.loads(line)
                except ValueError:
                    self.stop(Failure(EtcdError(0, f"not JSON from the gateway: {line[:200]!r}")))
                    return
                self._onObject(decoded)

    def stop(self, reason: Failure | None = None) -> None:
        """
        Close the stream now; C{done} fires with C{reason} (L{None}: clean).
        """
        if self.stopped:
            return
        self.stopped = True
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]
        done, self._done = self._done, Deferred()
        if reason is None:
            done.callback(None)
        else:
            done.errback(reason)

    def connectionLost(self, reason: Failure = Failure(CancelledError())) -> None:  # noqa: B008
        """
        The answer ended: the server closed it, or we did.
        """
        if not self.stopped:
            self.stop(Failure(EtcdUnavailable(f"watch stream ended: {reason.getErrorMessage()}")))


@implementer(IWatch)
class _Watch:
    """
    One watch over the gateway's C{/v3/watch} stream.
    """

    def __init__(self, callback: Callable[[list[Event], int], None]) -> None:
        """
        @param callback: called with each batch of events and its revision.
        """
        self._callback = callback
        self.started: Deferred[None] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self._stream: _LineStream | None = None
        self._request: Deferred[Any] | None = None
        self._cancelled = False

    def cancel(self) -> None:
        """
        Stop watching: close the stream (or drop the request not yet
        answered).
        """
        if self._cancelled:
            return
        self._cancelled = True
        if self._stream is not None:
            self._stream.stop()
        elif self._request is not None:
            self._request.cancel()

    def _fail(self, failure: Failure) -> None:
        if not self.started.called:
            self.started.errback(failure)
            self.started.addErrback(lambda _: None)
        if not self.ended.called:
            if self._cancelled:
                self.ended.callback(None)
            else:
                self.ended.errback(failure)

    def _object(self, answer: Any) -> None:
        result = answer.get("result") if isinstance(answer, dict) else None
        if result is None:
            error = _errorFrom(answer.get("error", answer) if isinstance(answer, dict) else answer, 200)
            assert self._stream is not None
            self._stream.stop(Failure(error))
            return
        if result.get("canceled"):
            assert self._stream is not None
            self._stream.stop(
                Failure(
                    WatchCanceled(
                        result.get("cancel_reason") or "watch cancelled by etcd",
                        int(result.get("compact_revision", 0)),
                    )
                )
            )
            return
        if result.get("created") and not self.started.called:
            self.started.callback(None)
        events = [
            Event("DELETE" if e.get("type") == "DELETE" else "PUT", _keyValue(e.get("kv", {})))
            for e in result.get("events", ())
        ]
        if events and not self._cancelled:
            self._callback(events, _revision(result))

    def _streamEnded(self, result: Failure | None) -> None:
        if isinstance(result, Failure):
            self._fail(result)
        elif not self.ended.called:
            self.ended.callback(None)


@implementer(IEtcd)
class EtcdClient:
    """
    L{IEtcd} over etcd's JSON gateway, with treq.

    @ivar endpoints: the base URLs, tried in turn.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        endpoints: Sequence[str],
        timeout: float = 5.0,
        tls: TLSFiles | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        """
        @param reactor: the reactor to connect with.
        @param endpoints: base URLs as L{parseCoordinator} gives them.
        @param timeout: the deadline of each call, in seconds (for a watch:
            until etcd created it).
        @param tls: the CA and client certificate for C{https://} endpoints.
        @param clock: the clock of the deadlines; the reactor by default.
        """
        import treq.client

        if not endpoints:
            raise ValueError("no etcd endpoint")
        self.endpoints = list(endpoints)
        self._timeout = timeout
        self._clock: IReactorTime = clock if clock is not None else reactor
        self._current = 0
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 4
        self._pool = pool
        if tls is not None:
            agent = Agent(reactor, contextFactory=_EtcdTLSPolicy(tls), pool=pool)
        else:
            agent = Agent(reactor, pool=pool)
        self._http = treq.client.HTTPClient(agent)

    def close(self) -> Deferred[None]:
        """
        Close the idle connections kept for reuse.
        """
        return self._pool.closeCachedConnections()

    # -- requests -----------------------------------------------------------

    async def _send(self, path: str, body: dict[str, Any], stream: bool = False) -> IResponse:
        """
        POST C{body} to C{path} on the first endpoint that connects, within
        the deadline; return the response (whose status is not checked).
        """
        data = json.dumps(body).encode("utf-8")
        count = len(self.endpoints)
        reasons = []
        for attempt in range(count):
            index = (self._current + attempt) % count
            url = self.endpoints[index] + path
            request: Deferred[Any] = self._http.post(
                url,
                data=data,
                headers=Headers({b"Content-Type": [b"application/json"]}),
                unbuffered=True,
            )
            request.addTimeout(self._timeout, self._clock)
            try:
                response = await request
            except TimeoutError:
                # It may have been applied: no retry; the next call starts
                # with the next endpoint.
                self._current = (index + 1) % count
                raise EtcdUnavailable(f"{url}: no answer within {self._timeout} s") from None
            except (netError.ConnectError, netError.DNSLookupError, ResponseFailed) as e:
                if isinstance(e, ResponseFailed) and not _beforeSending(e):
                    self._current = (index + 1) % count
                    raise EtcdUnavailable(f"{url}: connection lost: {e}") from None
                reasons.append(f"{url}: {e}")
                self.log.debug("etcd endpoint {url} failed: {reason}", url=url, reason=str(e))
                continue
            self._current = index
            return response
        raise EtcdUnavailable("no etcd endpoint answered: " + "; ".join(reasons))

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """
        One unary call: the decoded answer, or the typed error.
        """
        import treq

        response = await self._send(path, body)
        reading: Deferred[bytes] = treq.content(response)
        reading.addTimeout(self._timeout, self._clock)
        try:
            raw = await reading
        except TimeoutError:
            raise EtcdUnavailable(f"{path}: answer not read within {self._timeout} s") from None
        except ResponseFailed as e:
            raise EtcdUnavailable(f"{path}: connection lost: {e}") from None
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        if response.code != 200:
            raise _errorFrom(answer, response.code)
        if not isinstance(answer, dict):
            raise EtcdError(0, f"{path}: not a JSON object: {raw[:200]!r}")
        if "error" in answer and "header" not in answer and "result" not in answer:
            raise _errorFrom(answer.get("error"), response.code)
        return answer

    def _deferred(self, coroutine: Any) -> Deferred[Any]:
        return Deferred.fromCoroutine(coroutine)

    # -- IEtcd ----------------------------------------------------------------

    def grant(self, ttl: int) -> Deferred[Lease]:
        """
        See L{IEtcd.grant}.
        """

        async def grant() -> Lease:
            answer = await self._call("/v3/lease/grant", {"TTL": str(int(ttl))})
            if answer.get("error"):
                raise EtcdError(0, str(answer["error"]))
            return Lease(int(answer["ID"]), int(answer.get("TTL", 0)))

        return self._deferred(grant())

    def keepalive(self, leaseId: int) -> Deferred[int]:
        """
        See L{IEtcd.keepalive}: one request on the streaming endpoint, whose
        answer for a lease that is gone has no C{TTL}.
        """

        async def keepalive() -> int:
            answer = await self._call("/v3/lease/keepalive", {"ID": str(leaseId)})
            result = answer.get("result")
            if not isinstance(result, dict):
                raise _errorFrom(answer.get("error", answer), 200)
            ttl = int(result.get("TTL", 0))
            if ttl <= 0:
                raise LeaseLost(_NOT_FOUND, f"lease {leaseId:x} expired or was revoked")
            return ttl

        return self._deferred(keepalive())

    def revoke(self, leaseId: int) -> Deferred[None]:
        """
        See L{IEtcd.revoke}.
        """

        async def revoke() -> None:
            await self._call("/v3/lease/revoke", {"ID": str(leaseId)})

        return self._deferred(revoke())

    def range(self, key: bytes, prefix: bool = False) -> Deferred[RangeResult]:
        """
        See L{IEtcd.range}.
        """

        async def range_() -> RangeResult:
            answer = await self._call("/v3/kv/range", _rangeRequest(key, prefix))
            return RangeResult(_revision(answer), [_keyValue(kv) for kv in answer.get("kvs", ())])

        return self._deferred(range_())

    def put(self, key: bytes, value: bytes, lease: int = 0) -> Deferred[int]:
        """
        See L{IEtcd.put}.
        """

        async def put() -> int:
            answer = await self._call("/v3/kv/put", Put(key, value, lease).toJSON()["request_put"])
            return _revision(answer)

        return self._deferred(put())

    def delete(self, key: bytes, prefix: bool = False) -> Deferred[int]:
        """
        See L{IEtcd.delete}.
        """

        async def delete() -> int:
            answer = await self._call("/v3/kv/deleterange", _rangeRequest(key, prefix))
            return int(answer.get("deleted", 0))

        return self._deferred(delete())

    def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[Operation],
        failure: Sequence[Operation],
    ) -> Deferred[TxnResult]:
        """
        See L{IEtcd.txn}.
        """
        body = {
            "compare": [c.toJSON() for c in compare],
            "success": [o.toJSON() for o in success],
            "failure": [o.toJSON() for o in failure],
        }

        async def txn() -> TxnResult:
            answer = await self._call("/v3/kv/txn", body)
            ranges = [
                [_keyValue(kv) for kv in r["response_range"].get("kvs", ())]
                for r in answer.get("responses", ())
                if "response_range" in r
            ]
            return TxnResult(bool(answer.get("succeeded", False)), _revision(answer), ranges)

        return self._deferred(txn())

    def watch(
        self,
        key: bytes,
        prefix: bool,
        fromRevision: int,
        callback: Callable[[list[Event], int], None],
    ) -> IWatch:
        """
        See L{IEtcd.watch}: one HTTP request whose answer streams, one JSON
        object a line.
        """
        watch = _Watch(callback)
        request = _rangeRequest(key, prefix)
        if fromRevision:
            request["start_revision"] = str(fromRevision)
        created: Deferred[None] = watch.started
        timer: IDelayedCall = self._clock.callLater(
            self._timeout,
            lambda: watch._stream.stop(  # type: ignore[union-attr]
                Failure(EtcdUnavailable(f"watch not created within {self._timeout} s"))
            )
            if watch._stream is not None
            else None,
        )

        def stopTimer(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        created.addBoth(stopTimer)

        async def run() -> None:
            response = await self._send("/v3/watch", {"create_request": request})
            if response.code != 200:
                import treq

                raw = await treq.content(response)
                try:
                    answer = json.loads(raw)
                except ValueError:
                    answer = None
                raise _errorFrom(answer, response.code)
            done: Deferred[None] = Deferred()
            done.addBoth(watch._streamEnded)
            stream = _LineStream(watch._object, done)
            watch._stream = stream
            response.deliverBody(stream)
            if watch._cancelled:
                stream.stop()

        running = Deferred.fromCoroutine(run())
        watch._request = running

        def failed(failure: Failure) -> None:
            watch._request = None
            if failure.check(CancelledError):
                failure = Failure(EtcdUnavailable("watch cancelled before it started"))
            stopTimer(None)
            watch._fail(failure)

        def sent(_: None) -> None:
            watch._request = None

        running.addCallbacks(sent, failed)
        return watch


def _beforeSending(failure: ResponseFailed) -> bool:
    """
    Whether a L{ResponseFailed} came before the request could reach the
    server. The pool's reused connection may have been closed by the
    server while idle; treq reports that as a L{ResponseFailed} whose
    reasons are a closed connection and nothing was answered. We only retry
    when every reason is a connection-refused or -done kind.
    """
    return all(
        reason.check(netError.ConnectionRefusedError, netError.ConnectError) for reason in failure.reasons
    )
