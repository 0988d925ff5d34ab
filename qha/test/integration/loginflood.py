"""
How wrong-password logins affect other clients: one client's publish
confirm latency (p50, p99, max) while the broker is quiet, then while some
connections flood it with wrong passwords (issue 12).

Run against a broker it starts itself (C{twistd qha} from this checkout)::

    PYTHONPATH=. .venv/bin/python -m qha.test.integration.loginflood --seconds 10

or against a running one with C{--port 5672}. Not a test: it prints
figures for C{doc/performance.md}.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import threading
import time
from typing import Sequence

import pika
from pamqp import commands

from qha.test.integration.brokerprocess import BrokerProcess, RawConnection


def percentile(values: Sequence[float], fraction: float) -> float:
    """
    The value below which C{fraction} of C{values} lie (nearest rank).
    """
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(fraction * len(ordered) + 0.5)) - 1))
    return ordered[index]


def measureConfirms(port: int, seconds: float) -> list[float]:
    """
    Publish one transient message at a time with confirms for C{seconds};
    the latency of each, in milliseconds.
    """
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        queue = channel.queue_declare("", exclusive=True).method.queue
        latencies = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.perf_counter()
            channel.basic_publish("", queue, b"x")
            latencies.append((time.perf_counter() - started) * 1000)
            if len(latencies) % 500 == 0:
                channel.queue_purge(queue)
        return latencies
    finally:
        connection.close()


class Flooder(threading.Thread):
    """
    One connection after another, each logging in as guest with a wrong
    password and waiting for the broker's refusal.

    @ivar attempts: refusals received so far.
    """

    def __init__(self, port: int, stop: threading.Event) -> None:
        """
        @param port: the broker's AMQP port.
        @param stop: set to end the flood.
        """
        super().__init__(daemon=True)
        self.port = port
        self.stop = stop
        self.attempts = 0

    def run(self) -> None:
        """
        Flood until told to stop.
        """
        while not self.stop.is_set():
            try:
                raw = RawConnection(self.port, timeout=10.0)
            except OSError:
                continue
            try:
                raw.send(b"AMQP\x00\x00\x09\x01")
                raw.readMethod()
                raw.sendMethod(
                    0,
                    commands.Connection.StartOk(
                        client_properties={"product": "qha login flood"},
                        mechanism="PLAIN",
                        response="\0guest\0wrong",
                        locale="en_US",
                    ),
                )
                raw.expectConnectionClose()
                self.attempts += 1
            except (OSError, AssertionError, TimeoutError, socket.timeout):
                pass
            finally:
                raw.close()


def summary(label: str, latencies: Sequence[float]) -> str:
    """
    One line of figures for C{latencies}.
    """
    return (
        f"{label}: {len(latencies)} confirms, p50 {statistics.median(latencies):.2f} ms,"
        f" p99 {percentile(latencies, 0.99):.2f} ms, max {max(latencies):.2f} ms"
    )


def main(argv: Sequence[str] | None = None) -> None:
    """
    Measure quiet, then flooded, and print both.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--port", type=int, default=0, help="a running broker (default: start one)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--flooders", type=int, default=4)
    options = parser.parse_args(argv)
    broker = None
    port = options.port
    if not port:
        broker = BrokerProcess()
        broker.start()
        port = broker.port
    try:
        print(summary("quiet", measureConfirms(port, options.seconds)))
        stop = threading.Event()
        flooders = [Flooder(port, stop) for _ in range(options.flooders)]
        for flooder in flooders:
            flooder.start()
        started = time.monotonic()
        latencies = measureConfirms(port, options.seconds)
        elapsed = time.monotonic() - started
        stop.set()
        for flooder in flooders:
            flooder.join(timeout=15)
        attempts = sum(flooder.attempts for flooder in flooders)
        print(summary(f"{options.flooders} connections flooding wrong passwords", latencies))
        print(f"wrong-password logins refused: {attempts} ({attempts / elapsed:.1f}/s)")
    finally:
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    main()
