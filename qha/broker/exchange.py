"""
Exchanges and the bindings that route messages through them.

An exchange matches a message to its destinations: queues, or other exchanges
(exchange-to-exchange bindings). The virtual host follows exchange
destinations on to their queues.
"""

from __future__ import annotations

from typing import Any, Iterable, Union

from .errors import CommandInvalid
from .message import Message
from .queue import Queue

Destination = Union[Queue, "Exchange"]


def _freeze(value: Any) -> Any:
    """
    A hashable form of a field table value, for telling bindings apart.
    """
    if isinstance(value, dict):
        return tuple(sorted((key, _freeze(item)) for key, item in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(item) for item in value)
    if isinstance(value, bytearray):
        return bytes(value)
    return value


class Binding:
    """
    A binding from an exchange to a destination, with a key and arguments.
    """

    __slots__ = ("source", "destination", "routingKey", "arguments", "key")

    def __init__(
        self,
        source: "Exchange",
        destination: Destination,
        routingKey: str,
        arguments: dict[str, Any],
    ) -> None:
        self.source = source
        self.destination = destination
        self.routingKey = routingKey
        self.arguments = arguments
        self.key = (id(destination), routingKey, _freeze(arguments))

    def __repr__(self) -> str:
        return (
            f"<Binding {self.source.name!r} -> {self.destination.name!r}"
            f" key={self.routingKey!r}>"
        )


class Exchange:
    """
    The base of every exchange type: binding bookkeeping.

    @cvar type: the AMQP exchange type name.
    """

    type = ""

    def __init__(
        self,
        name: str,
        durable: bool = False,
        autoDelete: bool = False,
        internal: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.durable = durable
        self.autoDelete = autoDelete
        self.internal = internal
        self.arguments = arguments or {}
        self.bindings: dict[Any, Binding] = {}
        self.inbound: set[Binding] = set()
        self.hasExchangeDestinations = False
        self.deleted = False
        alternate = self.arguments.get("alternate-exchange")
        if isinstance(alternate, (bytes, bytearray)):
            alternate = bytes(alternate).decode("utf-8", "replace")
        self.alternate: str | None = alternate if isinstance(alternate, str) else None

    def __repr__(self) -> str:
        return f"<{self.__class__.__name__} {self.name!r}>"

    def bind(self, binding: Binding) -> bool:
        """
        Add C{binding}; return whether it is new.
        """
        if binding.key in self.bindings:
            return False
        self.bindings[binding.key] = binding
        self._indexAdd(binding)
        self._refresh()
        return True

    def unbind(self, binding: Binding) -> Binding | None:
        """
        Remove the binding equal to C{binding}; return it, or L{None}.
        """
        existing = self.bindings.pop(binding.key, None)
        if existing is not None:
            self._indexRemove(existing)
            self._refresh()
        return existing

    def _refresh(self) -> None:
        self.hasExchangeDestinations = any(
            isinstance(binding.destination, Exchange)
            for binding in self.bindings.values()
        )

    def _indexAdd(self, binding: Binding) -> None:
        """
        Add C{binding} to the type's routing index.
        """

    def _indexRemove(self, binding: Binding) -> None:
        """
        Remove C{binding} from the type's routing index.
        """

    def match(self, routingKey: str, message: Message) -> Iterable[Destination]:
        """
        The destinations of a message published with C{routingKey}.
        """
        raise NotImplementedError()


class _KeyIndex:
    """
    Destinations by key with a count, so two bindings of one destination
    under one key (different arguments) route to it once.
    """

    def __init__(self) -> None:
        self.byKey: dict[str, dict[Destination, int]] = {}

    def add(self, key: str, destination: Destination) -> None:
        destinations = self.byKey.setdefault(key, {})
        destinations[destination] = destinations.get(destination, 0) + 1

    def remove(self, key: str, destination: Destination) -> None:
        destinations = self.byKey.get(key)
        if destinations is None:
            return
        count = destinations.get(destination, 0) - 1
        if count > 0:
            destinations[destination] = count
        else:
            destinations.pop(destination, None)
            if not destinations:
                del self.byKey[key]


class DirectExchange(Exchange):
    """
    Routes to the destinations bound with exactly the routing key.
    """

    type = "direct"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._index = _KeyIndex()

    def _indexAdd(self, binding: Binding) -> None:
        self._index.add(binding.routingKey, binding.destination)

    def _indexRemove(self, binding: Binding) -> None:
        self._index.remove(binding.routingKey, binding.destination)

    def match(self, routingKey: str, message: Message) -> Iterable[Destination]:
        return self._index.byKey.get(routingKey, ())


class FanoutExchange(Exchange):
    """
    Routes to every destination, whatever the key.
    """

    type = "fanout"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._index = _KeyIndex()

    def _indexAdd(self, binding: Binding) -> None:
        self._index.add("", binding.destination)

    def _indexRemove(self, binding: Binding) -> None:
        self._index.remove("", binding.destination)

    def match(self, routingKey: str, message: Message) -> Iterable[Destination]:
        return self._index.byKey.get("", ())


def topicWords(key: str) -> list[str]:
    """
    The words of a routing key or binding pattern. The empty key has no
    words (as in RabbitMQ), so C{#} matches it and C{*} does not.
    """
    return key.split(".") if key else []


def topicMatches(pattern: list[str], words: list[str]) -> bool:
    """
    Whether the routing key C{words} match the binding C{pattern}, where
    C{*} stands for one word and C{#} for zero or more.
    """
    # Iterative matching with backtracking to the most recent '#'.
    p = w = 0
    starP = starW = -1
    while w < len(words):
        if p < len(pattern) and pattern[p] == "#":
            starP, starW = p, w
            p += 1
        elif p < len(pattern) and (pattern[p] == "*" or pattern[p] == words[w]):
            p += 1
            w += 1
        elif starP != -1:
            p = starP + 1
            starW += 1
            w = starW
        else:
            return False
    while p < len(pattern) and pattern[p] == "#":
        p += 1
    return p == len(pattern)


class TopicExchange(Exchange):
    """
    Routes by dotted-word patterns: C{*} matches one word, C{#} any number.

    Results are cached per routing key until the bindings change.
    """

    type = "topic"
    cacheSize = 4096

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._index = _KeyIndex()
        self._patterns: dict[str, list[str]] = {}
        self._cache: dict[str, list[Destination]] = {}

    def _indexAdd(self, binding: Binding) -> None:
        self._index.add(binding.routingKey, binding.destination)
        self._patterns[binding.routingKey] = topicWords(binding.routingKey)
        self._cache.clear()

    def _indexRemove(self, binding: Binding) -> None:
        self._index.remove(binding.routingKey, binding.destination)
        if binding.routingKey not in self._index.byKey:
            self._patterns.pop(binding.routingKey, None)
        self._cache.clear()

    def match(self, routingKey: str, message: Message) -> Iterable[Destination]:
        cached = self._cache.get(routingKey)
        if cached is not None:
            return cached
        words = topicWords(routingKey)
        found: dict[Destination, None] = {}
        for key, pattern in self._patterns.items():
            if topicMatches(pattern, words):
                for destination in self._index.byKey[key]:
                    found[destination] = None
        result = list(found)
        if len(self._cache) >= self.cacheSize:
            self._cache.clear()
        self._cache[routingKey] = result
        return result


class HeadersExchange(Exchange):
    """
    Routes by the message's headers table against each binding's arguments:
    C{x-match} C{all} (the default) needs every argument to match, C{any}
    one of them. Arguments starting with C{x-} are not matched.
    """

    type = "headers"

    def bind(self, binding: Binding) -> bool:
        mode = binding.arguments.get("x-match", "all")
        if isinstance(mode, bytes):
            mode = mode.decode("utf-8", "replace")
        if mode not in ("all", "any"):
            from .errors import PreconditionFailed

            raise PreconditionFailed(
                f"invalid x-match field value {mode!r}; expected one of"
                " ['all', 'any']"
            )
        return super().bind(binding)

    def match(self, routingKey: str, message: Message) -> Iterable[Destination]:
        headers = message.headers
        found: dict[Destination, None] = {}
        for binding in self.bindings.values():
            if binding.destination in found:
                continue
            if _headersMatch(binding.arguments, headers):
                found[binding.destination] = None
        return found


def _headersMatch(arguments: dict[str, Any], headers: dict[str, Any]) -> bool:
    """
    Whether C{headers} satisfy the binding C{arguments} of a headers exchange.
    """
    mode = arguments.get("x-match", "all")
    if isinstance(mode, bytes):
        mode = mode.decode("utf-8", "replace")
    wanted = [(k, v) for k, v in arguments.items() if not k.startswith("x-")]
    if mode == "any":
        return any(k in headers and (v is None or headers[k] == v) for k, v in wanted)
    return all(k in headers and (v is None or headers[k] == v) for k, v in wanted)


exchangeTypes: dict[str, type[Exchange]] = {
    cls.type: cls
    for cls in (DirectExchange, FanoutExchange, TopicExchange, HeadersExchange)
}


def exchangeType(name: str) -> type[Exchange]:
    """
    The exchange class for type C{name}.

    @raise CommandInvalid: for an unknown type (a connection error, as
        RabbitMQ has it).
    """
    try:
        return exchangeTypes[name]
    except KeyError:
        raise CommandInvalid(
            f"unknown exchange type '{name}'; known types are"
            f" {', '.join(sorted(exchangeTypes))}"
        ) from None
