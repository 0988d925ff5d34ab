"""
Queue policies read from declare arguments, under the Qpid names and the
RabbitMQ names.

A L{QueuePolicy} is parsed and checked once, when a queue is declared; an
invalid argument is refused with 406 PRECONDITION_FAILED and a text naming it.

| policy | Qpid | RabbitMQ |
|---|---|---|
| last-value | C{qpid.last_value_queue_key} | (the same key) |
| length limit | C{qpid.max_count}, C{qpid.max_size}, C{qpid.policy_type} | C{x-max-length}, C{x-max-length-bytes}, C{x-overflow} |
| priority | C{qpid.priorities} | C{x-max-priority} |
| fairshare | C{qpid.fairshare}, C{qpid.fairshare-N} | |
| message TTL | | C{x-message-ttl} |
| queue expiry | | C{x-expires} |
| dead-lettering | C{alternate-exchange} | C{x-dead-letter-exchange}, C{x-dead-letter-routing-key} |
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import PreconditionFailed

DROP_HEAD = "drop-head"
REJECT_PUBLISH = "reject-publish"
REJECT_PUBLISH_DLX = "reject-publish-dlx"
OVERFLOW_MODES = (DROP_HEAD, REJECT_PUBLISH, REJECT_PUBLISH_DLX)
QPID_POLICY_TYPES = {"ring": DROP_HEAD, "reject": REJECT_PUBLISH}


def _text(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return value


def _describe(value: Any) -> str:
    value = _text(value)
    return f"'{value}'" if isinstance(value, str) else repr(value)


@dataclass
class QueuePolicy:
    """
    The behaviour a queue's arguments ask for.

    @ivar lvqKey: the header whose value identifies a last value.
    @ivar maxCount: the most ready messages the queue keeps (messages
        consumers hold do not count, as in RabbitMQ).
    @ivar maxBytes: the most body bytes of ready messages the queue keeps.
    @ivar overflow: what a full queue does: drop its oldest (lowest
        priority first) or refuse the publish.
    @ivar priorities: the number of priority levels (0: no priorities).
    @ivar fairshare: for each level, the most messages delivered in a row
        before lower levels get a turn (0: no limit).
    @ivar messageTtl: milliseconds a message may wait before it expires.
    @ivar expires: milliseconds an unused queue lives.
    @ivar deadLetterExchange: where dropped, expired and rejected messages go.
    @ivar deadLetterRoutingKey: their routing key there (L{None}: their own).
    """

    lvqKey: str | None = None
    maxCount: int | None = None
    maxBytes: int | None = None
    overflow: str = DROP_HEAD
    priorities: int = 0
    fairshare: dict[int, int] = field(default_factory=dict)
    messageTtl: int | None = None
    expires: int | None = None
    deadLetterExchange: str | None = None
    deadLetterRoutingKey: str | None = None

    @property
    def limited(self) -> bool:
        """
        Whether the queue has a length limit.
        """
        return self.maxCount is not None or self.maxBytes is not None

    @property
    def plain(self) -> bool:
        """
        Whether the queue is a plain FIFO with no policy at all.
        """
        return self == _PLAIN


_PLAIN = QueuePolicy()


def _integer(
    arguments: dict[str, Any], name: str, queue: str, low: int, high: int | None = None
) -> int | None:
    if name not in arguments:
        return None
    value = arguments[name]
    if isinstance(value, (bytes, str)):
        try:
            value = int(_text(value))
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int):
        raise PreconditionFailed(
            f"invalid arg '{name}' for queue '{queue}': {_describe(value)} is not"
            " an integer"
        )
    if value < low or (high is not None and value > high):
        upper = f" and at most {high}" if high is not None else ""
        raise PreconditionFailed(
            f"invalid arg '{name}' for queue '{queue}': {value} must be at least"
            f" {low}{upper}"
        )
    return value


def _string(arguments: dict[str, Any], name: str, queue: str) -> str | None:
    if name not in arguments:
        return None
    value = _text(arguments[name])
    if not isinstance(value, str):
        raise PreconditionFailed(
            f"invalid arg '{name}' for queue '{queue}': {_describe(value)} is not"
            " a string"
        )
    return value


def parsePolicy(arguments: dict[str, Any], queue: str) -> QueuePolicy:
    """
    Read the policy of queue C{queue} from its declare C{arguments}.

    @raise PreconditionFailed: naming the first invalid argument.
    """
    policy = QueuePolicy()
    if not arguments:
        return policy
    policy.lvqKey = _string(arguments, "qpid.last_value_queue_key", queue)
    for name in ("x-max-length", "qpid.max_count"):
        value = _integer(arguments, name, queue, 0)
        if value is not None:
            policy.maxCount = value
    for name in ("x-max-length-bytes", "qpid.max_size"):
        value = _integer(arguments, name, queue, 0)
        if value is not None:
            policy.maxBytes = value
    policyType = _string(arguments, "qpid.policy_type", queue)
    if policyType is not None:
        if policyType not in QPID_POLICY_TYPES:
            raise PreconditionFailed(
                f"invalid arg 'qpid.policy_type' for queue '{queue}':"
                f" {_describe(policyType)}; valid values are ring, reject"
            )
        policy.overflow = QPID_POLICY_TYPES[policyType]
    overflow = _string(arguments, "x-overflow", queue)
    if overflow is not None:
        if overflow not in OVERFLOW_MODES:
            raise PreconditionFailed(
                f"invalid arg 'x-overflow' for queue '{queue}': {_describe(overflow)};"
                f" valid values are {', '.join(OVERFLOW_MODES)}"
            )
        policy.overflow = overflow
    for name in ("x-max-priority", "qpid.priorities"):
        value = _integer(arguments, name, queue, 0, 255)
        if value is not None:
            policy.priorities = value + 1 if name == "x-max-priority" else value
    if policy.priorities == 1:
        policy.priorities = 0
    default = _integer(arguments, "qpid.fairshare", queue, 0)
    for key in arguments:
        if key.startswith("qpid.fairshare-"):
            suffix = key[len("qpid.fairshare-") :]
            if not suffix.isdigit():
                raise PreconditionFailed(
                    f"invalid arg '{key}' for queue '{queue}': the level after"
                    " 'qpid.fairshare-' must be a number"
                )
            value = _integer(arguments, key, queue, 0)
            assert value is not None
            policy.fairshare[int(suffix)] = value
    if default:
        for level in range(max(policy.priorities, 1)):
            policy.fairshare.setdefault(level, default)
    policy.messageTtl = _integer(arguments, "x-message-ttl", queue, 0)
    policy.expires = _integer(arguments, "x-expires", queue, 1)
    dlx = _string(arguments, "x-dead-letter-exchange", queue)
    if dlx is None:
        dlx = _string(arguments, "alternate-exchange", queue)
    policy.deadLetterExchange = dlx
    policy.deadLetterRoutingKey = _string(arguments, "x-dead-letter-routing-key", queue)
    if policy.deadLetterRoutingKey is not None and dlx is None:
        raise PreconditionFailed(
            f"invalid arg 'x-dead-letter-routing-key' for queue '{queue}': it needs"
            " x-dead-letter-exchange as well"
        )
    return policy
