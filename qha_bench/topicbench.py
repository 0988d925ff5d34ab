"""
Measure topic routing with few and with many bindings.

C{python -m qha_bench.topicbench [--bindings 10 10000] [--messages N]}
binds that many queues to a topic exchange of a broker model, each with a
long pattern full of C{#} (the kind that made the old matcher backtrack),
and publishes N messages, each with a routing key not seen before (so the
per-key cache does not answer), through the model as the AMQP layer does.
It prints routes per second for each binding count, and, with
C{--reference}, the same for the matcher the trie replaced (one pattern at a
time).
"""

from __future__ import annotations

import argparse
import time

from qha.broker.exchange import topicMatches, topicWords
from qha.broker.message import Message
from qha.broker.vhost import VirtualHost


def pattern(index: int) -> str:
    """
    The binding pattern of queue C{index}: a word of its own between runs
    of C{#}, as in the issue that found the old matcher quadratic.
    """
    return ".".join(["#"] * 8 + [f"w{index}", "#", "*", "#"] + ["#"] * 8)


def build(bindings: int) -> VirtualHost:
    """
    A virtual host with C{bindings} queues bound to topic exchange C{t}.
    """
    vhost = VirtualHost()
    vhost.declareExchange("t", "topic")
    for index in range(bindings):
        name = f"q{index}"
        vhost.declareQueue(name)
        vhost.bindQueue(name, "t", pattern(index))
    return vhost


def key(number: int, bindings: int) -> str:
    """
    The routing key of message C{number}: 12 words, routed to one queue.
    """
    return ".".join([f"w{number % bindings}", f"n{number}"] + ["x"] * 10)


def routesPerSecond(bindings: int, messages: int) -> float:
    """
    Routes per second through the trie with C{bindings} bindings (the
    messages are routed, not enqueued, so queue costs stay out).
    """
    vhost = build(bindings)
    exchange = vhost.exchange("t")
    message = Message.build("t", "", b"x")
    keys = [key(number, bindings) for number in range(messages)]
    started = time.perf_counter()
    for routingKey in keys:
        if not vhost.route(exchange, routingKey, message):
            raise AssertionError(f"{routingKey} routed nowhere")
    return messages / (time.perf_counter() - started)


def referencePerSecond(bindings: int, messages: int) -> float:
    """
    Routes per second for the matcher the trie replaced: every pattern
    tried against every key.
    """
    patterns = [topicWords(pattern(index)) for index in range(bindings)]
    keys = [topicWords(key(number, bindings)) for number in range(messages)]
    started = time.perf_counter()
    for words in keys:
        # As the old exchange did: every pattern, for every key.
        if not [each for each in patterns if topicMatches(each, words)]:
            raise AssertionError(f"{words} matched nothing")
    return messages / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    """
    Print routes per second for each binding count.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bindings", type=int, nargs="+", default=[10, 10000])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument(
        "--reference", action="store_true", help="also time the old one-pattern-at-a-time matcher"
    )
    options = parser.parse_args(argv)
    for bindings in options.bindings:
        rate = routesPerSecond(bindings, options.messages)
        line = f"{bindings:>6} bindings: trie {rate:,.0f} routes/s"
        if options.reference:
            # The old matcher is slow with many bindings: fewer messages.
            count = max(5, options.messages * 10 // max(bindings, 10))
            line += f", old matcher {referencePerSecond(bindings, count):,.1f} routes/s"
        print(line)


if __name__ == "__main__":
    main()
