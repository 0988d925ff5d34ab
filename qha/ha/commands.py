"""
The AMP commands brokers speak to each other, and that C{qha-admin} speaks
to a broker.

AMP caps a value at 64 KiB, so the replication payload travels as
L{ChunkedBytes}: one logical value spread over as many keys as it needs.
"""

from __future__ import annotations

from typing import Any, Iterator

from twisted.protocols import amp

CHUNK = 65535


def chunks(name: str, value: bytes) -> Iterator[tuple[str, bytes]]:
    """
    The keys and values that carry C{value} as C{name}, C{name.1},
    C{name.2} ..., each at most 64 KiB (L{ChunkedBytes}' wire form).
    """
    yield name, value[:CHUNK]
    for index, start in enumerate(range(CHUNK, len(value), CHUNK), 1):
        yield f"{name}.{index}", value[start : start + CHUNK]


class ChunkedBytes(amp.Argument):
    """
    A byte string of any length, sent as C{name}, C{name.1}, C{name.2} ...
    each at most 64 KiB.
    """

    def toBox(self, name: bytes, strings: dict[bytes, bytes], objects: dict[str, Any], proto: Any) -> None:  # type: ignore[override]
        key = name.decode("ascii")
        for chunkKey, chunk in chunks(key, objects[key]):
            strings[chunkKey.encode("ascii")] = chunk

    def fromBox(self, name: bytes, strings: dict[bytes, bytes], objects: dict[str, Any], proto: Any) -> None:  # type: ignore[override]
        parts = [strings[name]]
        index = 1
        while True:
            key = name + b"." + str(index).encode("ascii")
            if key not in strings:
                break
            parts.append(strings[key])
            index += 1
        objects[name.decode("ascii")] = b"".join(parts)


class NotAuthenticated(Exception):
    """
    The peer did not log in (with the cluster secret or the HA credentials),
    its login failed, or the identity it logged in as may not do this.
    """


class StaleEpoch(Exception):
    """
    The peer's epoch is older than ours: it must not lead us.
    """


class NotPrimary(Exception):
    """
    A backup was asked for something only the primary does.
    """


class Refused(Exception):
    """
    An admin request was refused; the message says why.
    """


class MalformedBox(Exception):
    """
    A replication box could not be decoded; the backup catches up again.
    """


class BadHoldings(Exception):
    """
    The holdings of a L{Subscribe} are not what a backup sends (a JSON
    object of queue names to a uuid and sorted id ranges within bounds);
    the message says what is wrong. The subscription is refused.
    """


class BadEpoch(Exception):
    """
    A peer named an epoch that no broker of a cluster can have: negative,
    past 64 bits, or further ahead of ours than promotions could take it.
    """


class OutOfSequence(Exception):
    """
    A replication box arrived after a gap (a box before it is missing): the
    backup applied none of it and must catch up again.
    """


ERRORS: dict[type[Exception], bytes] = {
    NotAuthenticated: b"NOT_AUTHENTICATED",
    StaleEpoch: b"STALE_EPOCH",
    NotPrimary: b"NOT_PRIMARY",
    Refused: b"REFUSED",
    OutOfSequence: b"OUT_OF_SEQUENCE",
    MalformedBox: b"MALFORMED_BOX",
    BadHoldings: b"BAD_HOLDINGS",
    BadEpoch: b"BAD_EPOCH",
}
"""
The error codes of every command of the AMP port, replication and admin: an
exception of these types raised by a responder reaches the caller as
itself.
"""


class Challenge(amp.Command):
    """
    The first step of a login (see L{qha.ha.auth}): the client names the
    identity it logs in as (empty for the cluster secret) and sends its
    nonce; the broker answers with its own, and, for a user of its users
    file, how to derive the key from the password (C{kdf}, see
    L{qha.ha.auth}). Nothing but this and L{Authenticate} is answered
    before a login.
    """

    arguments = [(b"username", amp.Unicode()), (b"nonce", amp.String())]
    response = [(b"nonce", amp.String()), (b"kdf", amp.Unicode(optional=True))]
    errors = ERRORS


class Authenticate(amp.Command):
    """
    The second step of a login: the client's proof that it holds the key;
    the broker answers with its own proof, which the client checks before
    it sends anything else.
    """

    arguments = [(b"proof", amp.String())]
    response = [(b"proof", amp.String())]
    errors = ERRORS


class Hello(amp.Command):
    """
    Who are you? Asked by a joining broker of every address it knows, and by
    a primary probing for a newer primary.
    """

    arguments = [
        (b"brokerId", amp.Unicode()),
        (b"epoch", amp.Integer()),
        (b"role", amp.Unicode()),
    ]
    response = [
        (b"brokerId", amp.Unicode()),
        (b"epoch", amp.Integer()),
        (b"role", amp.Unicode()),
        (b"storeEpoch", amp.Integer(optional=True)),
        (b"storePosition", amp.Integer(optional=True)),
    ]
    errors = ERRORS


class Subscribe(amp.Command):
    """
    A backup asks the primary for the replication stream, saying what it
    holds already (JSON: queue name to uuid and id ranges).
    """

    arguments = [
        (b"brokerId", amp.Unicode()),
        (b"epoch", amp.Integer()),
        (b"address", amp.Unicode()),
        (b"holdings", ChunkedBytes()),
        (b"queue", amp.Unicode(optional=True)),
    ]
    response = [(b"epoch", amp.Integer())]
    errors = ERRORS


class Events(amp.Command):
    """
    The primary sends a batch of events; the answer acknowledges that the
    backup holds them. A C{transient} box (only events of messages no store
    keeps) may be acknowledged before it is applied; any other box is
    applied first, and written to the backup's store if it has one.
    """

    arguments = [
        (b"epoch", amp.Integer()),
        (b"seq", amp.Integer()),
        (b"events", ChunkedBytes()),
        (b"position", amp.Integer(optional=True)),
        (b"transient", amp.Boolean(optional=True)),
    ]
    response = list[tuple[bytes, amp.Argument]]()
    errors = ERRORS


def eventsArguments(
    epoch: int, seq: int, events: bytes, position: int, transient: bool
) -> dict[str, bytes]:
    """
    The wire strings of an L{Events} box, made directly: the primary sends
    one box per batch of events, and AMP's generic argument handling costs
    more than the rest of sending it. Send them with C{callRemoteString};
    they decode as L{Events}' arguments.
    """
    strings = {
        "epoch": b"%d" % epoch,
        "seq": b"%d" % seq,
        "position": b"%d" % position,
        "transient": b"True" if transient else b"False",
    }
    strings.update(chunks("events", events))
    return strings


MAX_BATCH_BYTES = 4 * 1024 * 1024
"""
The most bytes of events a backup takes in one L{CatchUp} batch that
carries more than one message (a primary aims at half of it; one
message larger than a batch travels alone).
"""

MAX_BATCH_MESSAGES = 8192
"""
The most messages one L{CatchUp} batch may carry (a primary sends at most
half of it).
"""

MAX_CATCHUP_MESSAGES = 2**62
"""
The most messages a catch-up may announce.
"""


class CatchUp(amp.Command):
    """
    One batch of a backup's catch-up: the entries of the queues the
    primary walks, a bounded piece at a time (see
    L{qha.ha.primary.ReplicationSource}); numbered in the same sequence as
    the L{Events} boxes it is interleaved with, and answered, like a durable
    box, once the backup applied it and its store has it.

    C{messages} is how many messages the batch carries, C{total} how many
    the catch-up announced at most (the same in every batch of one
    catch-up), and C{last} says that the batch ends the catch-up (it
    carries the caught-up marker). The backup checks each against its
    bounds and against the events before it trusts it.
    """

    arguments = [
        (b"epoch", amp.Integer()),
        (b"seq", amp.Integer()),
        (b"events", ChunkedBytes()),
        (b"position", amp.Integer(optional=True)),
        (b"messages", amp.Integer()),
        (b"total", amp.Integer()),
        (b"last", amp.Boolean()),
    ]
    response = list[tuple[bytes, amp.Argument]]()
    errors = ERRORS


class Heartbeat(amp.Command):
    """
    Sent both ways on a replication link; a link silent for two intervals is
    dead.
    """

    arguments = [(b"epoch", amp.Integer())]
    response = [(b"epoch", amp.Integer())]
    errors = ERRORS
    requiresAnswer = True
