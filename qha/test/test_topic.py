"""
Tests for the topic exchange's trie (L{qha.broker.exchange.TopicTrie}):
the same answers as a plain matcher written from the definition, and work
that grows with the routing key, not with the number of bindings.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from qha.broker.exchange import (
    TopicTrie,
    canonicalPattern,
    topicMatches,
    topicWords,
)
from qha.broker.vhost import VirtualHost
from qha.test.test_broker import message, routedNames


def referenceMatches(pattern: list[str], words: list[str]) -> bool:
    """
    Whether C{words} match C{pattern}, straight from the definition: C{*}
    is one word, C{#} zero or more, anything else itself.
    """
    if not pattern:
        return not words
    first, rest = pattern[0], pattern[1:]
    if first == "#":
        return referenceMatches(rest, words) or (
            bool(words) and referenceMatches(pattern, words[1:])
        )
    if not words:
        return False
    return (first == "*" or first == words[0]) and referenceMatches(rest, words[1:])


_words = st.sampled_from(["a", "b", "", "*", "#"])
_keys = st.lists(_words, max_size=6).map(".".join)


class Destination:
    """
    A stand-in destination: the trie only needs something hashable.
    """

    def __init__(self, name: str) -> None:
        """
        @param name: what the tests call it.
        """
        self.name = name

    def __repr__(self) -> str:
        return f"<Destination {self.name}>"


class TrieAgainstReferenceTests(SynchronousTestCase):
    """
    The trie routes exactly as the reference matcher says, for patterns
    made of words, empty words, C{*} and C{#} in every arrangement.
    """

    @settings(max_examples=300, deadline=None, derandomize=True, database=None)
    @given(patterns=st.lists(_keys, max_size=8), keys=st.lists(_keys, min_size=1, max_size=8))
    def test_sameAsReference(self, patterns: list[str], keys: list[str]) -> None:
        """
        For every key, the destinations the trie answers are those of the
        patterns the reference matcher accepts; the old one-pattern matcher
        agrees too.
        """
        trie = TopicTrie()
        destinations: list[Any] = [Destination(pattern) for pattern in patterns]
        for pattern, destination in zip(patterns, destinations):
            trie.add(pattern, destination)
        for key in keys:
            words = topicWords(key)
            expected = {
                destination
                for pattern, destination in zip(patterns, destinations)
                if referenceMatches(topicWords(pattern), words)
            }
            self.assertEqual(set(trie.match(words)), expected, (patterns, key))
            for pattern in patterns:
                self.assertEqual(
                    topicMatches(topicWords(pattern), words),
                    referenceMatches(topicWords(pattern), words),
                    (pattern, key),
                )

    @settings(max_examples=200, deadline=None, derandomize=True, database=None)
    @given(pattern=_keys, key=_keys)
    def test_canonicalMeansTheSame(self, pattern: str, key: str) -> None:
        """
        The canonical form of a pattern matches the same keys as the
        pattern.
        """
        words = topicWords(key)
        self.assertEqual(
            referenceMatches(canonicalPattern(topicWords(pattern)), words),
            referenceMatches(topicWords(pattern), words),
        )

    @settings(max_examples=200, deadline=None, derandomize=True, database=None)
    @given(patterns=st.lists(_keys, min_size=1, max_size=8), data=st.data())
    def test_removeUndoesAdd(self, patterns: list[str], data: Any) -> None:
        """
        Removing some bindings routes as if only the others had been added,
        and removing all of them leaves an empty trie.
        """
        trie = TopicTrie()
        destinations: list[Any] = [Destination(str(index)) for index in range(len(patterns))]
        for pattern, destination in zip(patterns, destinations):
            trie.add(pattern, destination)
        removed = data.draw(st.sets(st.integers(0, len(patterns) - 1)))
        for index in removed:
            trie.remove(patterns[index], destinations[index])
        key = data.draw(_keys)
        words = topicWords(key)
        expected = {
            destinations[index]
            for index, pattern in enumerate(patterns)
            if index not in removed and referenceMatches(topicWords(pattern), words)
        }
        self.assertEqual(set(trie.match(words)), expected)
        for index, pattern in enumerate(patterns):
            if index not in removed:
                trie.remove(pattern, destinations[index])
        self.assertEqual((trie.root.children, trie.root.destinations), ({}, None))


class TrieEdgeCaseTests(SynchronousTestCase):
    """
    RabbitMQ's answers for the edge cases, through the exchange.
    """

    def setUp(self) -> None:
        """
        A virtual host with a queue per pattern, bound to C{amq.topic}.
        """
        self.vhost = VirtualHost()
        self.patterns = ["#.#", "a.#.b", "a.#.#.b", "#.*", "*.#.*", "", "a..b", "a.*.#"]
        for pattern in self.patterns:
            self.vhost.declareQueue(pattern or "(empty)")
            self.vhost.bindQueue(pattern or "(empty)", "amq.topic", pattern)

    def routed(self, key: str) -> list[str]:
        """
        The patterns whose queues a message with C{key} reaches.
        """
        return routedNames(self.vhost, "amq.topic", key)

    def test_edges(self) -> None:
        """
        C{#.#} is C{#}; C{a.#.b} takes zero or more words between; C{#.*}
        needs a word; the empty pattern matches the empty key only; empty
        words are words.
        """
        self.assertEqual(self.routed(""), ["#.#", "(empty)"])
        self.assertEqual(self.routed("a.b"), ["#.#", "#.*", "*.#.*", "a.#.#.b", "a.#.b", "a.*.#"])
        self.assertEqual(self.routed("a"), ["#.#", "#.*"])
        self.assertEqual(
            self.routed("a..b"),
            ["#.#", "#.*", "*.#.*", "a.#.#.b", "a.#.b", "a.*.#", "a..b"],
        )
        self.assertEqual(self.routed("a.x.y.b"), ["#.#", "#.*", "*.#.*", "a.#.#.b", "a.#.b", "a.*.#"])
        self.assertEqual(self.routed("."), ["#.#", "#.*", "*.#.*"])
        self.assertEqual(self.routed("b.a"), ["#.#", "#.*", "*.#.*"])

    def test_unbindKeepsEquivalentPattern(self) -> None:
        """
        Two patterns with one canonical form (C{a.#.b} and C{a.#.#.b}) share
        a trie node: unbinding one leaves the other routing.
        """
        self.vhost.bindQueue("a.#.b", "amq.topic", "a.#.#.b")
        self.vhost.unbindQueue("a.#.b", "amq.topic", "a.#.b")
        self.assertIn("a.#.b", self.routed("a.c.b"))
        self.vhost.unbindQueue("a.#.b", "amq.topic", "a.#.#.b")
        self.assertNotIn("a.#.b", self.routed("a.c.b"))


class TrieWorkTests(SynchronousTestCase):
    """
    Routing work grows with the routing key, not with the bindings: the
    issue's case of many long C{#} patterns that stalled other clients.
    """

    def visitsFor(self, bindings: int, key: str) -> tuple[int, list[str]]:
        """
        Bind C{bindings} queues with long C{#} patterns to a topic exchange,
        publish one message with C{key}, and count the trie's steps.

        @return: the steps, and the queues the message reached.
        """
        vhost = VirtualHost()
        vhost.declareExchange("t", "topic")
        for index in range(bindings):
            name = f"q{index}"
            vhost.declareQueue(name)
            # Long patterns full of '#', each ending in its own word: the
            # old matcher backtracked through each for every key.
            pattern = ".".join(["#"] * 20 + [f"w{index}", "#", "*", "#"] + ["#"] * 20)
            vhost.bindQueue(name, "t", pattern)
        exchange = vhost.exchange("t")
        trie = exchange.trie  # type: ignore[attr-defined]
        before = trie.visits
        queues = vhost.publish("t", key, message(routingKey=key))
        return trie.visits - before, sorted(queue.name for queue in queues)

    def test_tenThousandBindings(self) -> None:
        """
        With 10,000 bindings a publish of a 100-word key visits no more trie
        nodes than with 10 bindings: a few per word of the key.
        """
        key = ".".join(["w3", "x"] + ["y"] * 98)
        few, fewQueues = self.visitsFor(10, key)
        many, manyQueues = self.visitsFor(10_000, key)
        self.assertEqual((fewQueues, manyQueues), (["q3"], ["q3"]))
        self.assertEqual(few, many)
        self.assertLessEqual(many, 4 * (len(topicWords(key)) + 1))

    def test_proportionalToKey(self) -> None:
        """
        Twice the words, about twice the steps (with 1,000 bindings).
        """
        short, _ = self.visitsFor(1000, ".".join(["w1"] + ["z"] * 49))
        long, _ = self.visitsFor(1000, ".".join(["w1"] + ["z"] * 99))
        self.assertLessEqual(long, 2 * short + 4)
