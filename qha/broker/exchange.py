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

    replicationLevel: str | None = None
    """
    The replication level a cluster worked out for it (its C{qpid.replicate}
    argument, or the broker's default when it was first seen), kept here by
    L{qha.ha.primary.cachedLevel} so that it does not change under it;
    L{None} until then.
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
        # Bindings to exchanges, counted so that binding stays O(1) with
        # many bindings.
        self._exchangeBindings = 0
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
        self._refresh(binding, 1)
        return True

    def unbind(self, binding: Binding) -> Binding | None:
        """
        Remove the binding equal to C{binding}; return it, or L{None}.
        """
        existing = self.bindings.pop(binding.key, None)
        if existing is not None:
            self._indexRemove(existing)
            self._refresh(existing, -1)
        return existing

    def _refresh(self, binding: Binding, change: int) -> None:
        """
        Keep L{hasExchangeDestinations} up to date as C{binding} comes
        (C{change} 1) or goes (-1).
        """
        if isinstance(binding.destination, Exchange):
            self._exchangeBindings += change
            self.hasExchangeDestinations = self._exchangeBindings > 0

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
    C{*} stands for one word and C{#} for zero or more. One pattern at a
    time: the topic exchange routes through its L{TopicTrie} instead.
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


def canonicalPattern(words: list[str]) -> list[str]:
    """
    The words of a binding pattern in a canonical form that matches exactly
    the same keys: in each run of wildcards, the C{*}s come first and the
    C{#}s become one (C{#.#} is C{#}; C{#.*} and C{*.#} both mean "one word
    or more"). Patterns that mean the same share one path of the trie, and
    no path has two C{#} in a row for the matcher to try both ways.
    """
    result: list[str] = []
    stars = 0
    hashes = False
    for word in words:
        if word == "*":
            stars += 1
        elif word == "#":
            hashes = True
        else:
            result.extend("*" * stars)
            if hashes:
                result.append("#")
            stars, hashes = 0, False
            result.append(word)
    result.extend("*" * stars)
    if hashes:
        result.append("#")
    return result


class _TopicNode:
    """
    One node of a topic exchange's trie: the pattern prefix spelled by the
    words on the path to it.

    @ivar children: the next node by word (C{*} and C{#} are edges too).
    @ivar destinations: where the patterns that end here route, with how
        many bindings each (L{None} until one does).
    @ivar hash: whether the edge into this node is C{#}: the node then
        stays where it is for any word.
    """

    __slots__ = ("children", "destinations", "hash")

    def __init__(self, hash: bool = False) -> None:
        self.children: dict[str, _TopicNode] = {}
        self.destinations: dict[Destination, int] | None = None
        self.hash = hash


class TopicTrie:
    """
    The binding patterns of a topic exchange as a trie of words, matched
    like a nondeterministic automaton: each word of a routing key moves the
    set of nodes reached so far along their word, C{*} and C{#} edges, and
    each node is in that set at most once per word. A match costs (words of
    the key) x (nodes whose pattern prefix the key can match), whatever the
    number of bindings: C{#} patterns do not backtrack.

    @ivar visits: how many (node, word) steps matching took so far, for
        tests and benchmarks to tell the work done.
    """

    def __init__(self) -> None:
        self.root = _TopicNode()
        self.visits = 0

    def add(self, pattern: str, destination: Destination) -> None:
        """
        One more binding of C{destination} with C{pattern}.
        """
        node = self.root
        for word in canonicalPattern(topicWords(pattern)):
            child = node.children.get(word)
            if child is None:
                child = node.children[word] = _TopicNode(hash=word == "#")
            node = child
        if node.destinations is None:
            node.destinations = {}
        node.destinations[destination] = node.destinations.get(destination, 0) + 1

    def remove(self, pattern: str, destination: Destination) -> None:
        """
        One binding of C{destination} with C{pattern} fewer; nodes left with
        neither destinations nor children go.
        """
        path = [self.root]
        words = canonicalPattern(topicWords(pattern))
        for word in words:
            child = path[-1].children.get(word)
            if child is None:
                return
            path.append(child)
        node = path[-1]
        if node.destinations is None or destination not in node.destinations:
            return
        count = node.destinations[destination] - 1
        if count > 0:
            node.destinations[destination] = count
            return
        del node.destinations[destination]
        if not node.destinations:
            node.destinations = None
        for index in range(len(words), 0, -1):
            node = path[index]
            if node.children or node.destinations is not None:
                break
            del path[index - 1].children[words[index - 1]]

    def _closure(self, nodes: dict[_TopicNode, None]) -> dict[_TopicNode, None]:
        """
        C{nodes} and the C{#} nodes reachable from them without a word (a
        C{#} that matches no word).
        """
        pending = [node for node in nodes]
        while pending:
            node = pending.pop()
            child = node.children.get("#")
            if child is not None and child not in nodes:
                nodes[child] = None
                pending.append(child)
        return nodes

    def match(self, words: list[str]) -> list[Destination]:
        """
        The destinations of the patterns that the routing key C{words}
        match, each once, in a stable order.
        """
        current = self._closure({self.root: None})
        visits = 0
        for word in words:
            following: dict[_TopicNode, None] = {}
            for node in current:
                visits += 1
                children = node.children
                if children:
                    # A key's own "*" or "#" is a plain word: looking it up
                    # finds the wildcard child, which the lines below add
                    # anyway.
                    child = children.get(word)
                    if child is not None:
                        following[child] = None
                    child = children.get("*")
                    if child is not None:
                        following[child] = None
                if node.hash:
                    following[node] = None
            if not following:
                self.visits += visits
                return []
            current = self._closure(following)
        visits += len(current)
        self.visits += visits
        found: dict[Destination, None] = {}
        for node in current:
            if node.destinations is not None:
                for destination in node.destinations:
                    found[destination] = None
        return list(found)


class TopicExchange(Exchange):
    """
    Routes by dotted-word patterns: C{*} matches one word, C{#} any number.

    The patterns are kept in a L{TopicTrie}, so that routing costs grow with
    the routing key, not with the number of bindings; results are also
    cached per routing key until the bindings change.
    """

    type = "topic"
    cacheSize = 4096

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.trie = TopicTrie()
        self._cache: dict[str, list[Destination]] = {}

    def _indexAdd(self, binding: Binding) -> None:
        self.trie.add(binding.routingKey, binding.destination)
        self._cache.clear()

    def _indexRemove(self, binding: Binding) -> None:
        self.trie.remove(binding.routingKey, binding.destination)
        self._cache.clear()

    def match(self, routingKey: str, message: Message) -> Iterable[Destination]:
        cached = self._cache.get(routingKey)
        if cached is not None:
            return cached
        result = self.trie.match(topicWords(routingKey))
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
        # RabbitMQ's words exactly: clients match on them.
        raise CommandInvalid(f"unknown exchange type '{name}'") from None
