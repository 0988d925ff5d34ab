"""
How much cyclic garbage a client connection leaves in a broker: the figure
L{qha.collector}'s docstring and doc/performance.md quote (what the
collector policy's set-aside objects may hold that only a full collection
of them frees).

A real broker (L{qha.amqp.protocol.BrokerFactory} on a loopback TCP port)
runs in this process under the reactor; the clients run in a child process
(plain sockets and pamqp, so that their own garbage is not counted here).
Each client connects, logs in as C{guest} (taking the broker's 60 s
heartbeat, as client libraries do), opens a channel, declares an
exclusive server-named queue, consumes from it with acknowledgements,
publishes one message to it and receives it (left unacknowledged), and then
closes cleanly (connection.close, close-ok), drops (closes its socket
without a word) or resets its socket. With the collector off, once the broker has seen
every connection go, C{gc.collect()} says how many unreachable objects it
found; a run of the same child with no connections is subtracted (the
reactor's process plumbing), and the rest divided by the connections::

    python -m qha_bench.cycles --connections 200 --rounds 3 [--types] [--no-heartbeat]

prints, per round and mode, the unreachable objects per connection (and
with C{--types} the commonest types among them). Not a test.
"""

from __future__ import annotations

import argparse
import collections
import gc
import os
import socket
import struct
import sys
from typing import Any, Sequence

from pamqp import commands, frame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

MODES = ("clean", "drop", "reset")
"""
How a client leaves: connection.close and close-ok; its socket closed
without a word (FIN); or reset (RST, as when a client's host goes away or
its process is killed with unread data).
"""


# The client (the child process)


class RawClient:
    """
    A blocking AMQP 0-9-1 client over a plain socket, just enough for the
    measurement.
    """

    def __init__(self, port: int, heartbeat: bool = True) -> None:
        """
        Connect to C{127.0.0.1:port}.

        @param heartbeat: take the broker's heartbeat (else none).
        """
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.buffer = b""
        self.heartbeat = heartbeat

    def send(self, channel: int, *values: Any) -> None:
        """
        Send C{values} (pamqp frames) on C{channel}.
        """
        self.sock.sendall(b"".join(frame.marshal(value, channel) for value in values))

    def receive(self) -> Any:
        """
        The next frame's value (heartbeats passed over).
        """
        while True:
            try:
                used, _, value = frame.unmarshal(self.buffer)
            except Exception:
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("the broker closed the connection")
                self.buffer += data
                continue
            self.buffer = self.buffer[used:]
            if value.name != "Heartbeat":
                return value

    def expect(self, name: str) -> Any:
        """
        The next frame, which must be C{name}.
        """
        value = self.receive()
        if value.name != name:
            raise ConnectionError(f"expected {name}, got {value!r}")
        return value

    def session(self) -> None:
        """
        Log in, open channel 1, declare a queue, consume from it, publish
        one message to it and receive it (not acknowledged).
        """
        self.sock.sendall(b"AMQP\x00\x00\x09\x01")
        self.expect("Connection.Start")
        self.send(
            0,
            commands.Connection.StartOk(
                client_properties={
                    "product": "qha_bench.cycles",
                    "capabilities": {
                        "publisher_confirms": True,
                        "consumer_cancel_notify": True,
                        "connection.blocked": True,
                        "authentication_failure_close": True,
                    },
                },
                mechanism="PLAIN",
                response="\0guest\0guest",
                locale="en_US",
            ),
        )
        tune = self.expect("Connection.Tune")
        # The broker's heartbeat, as client libraries take it.
        heartbeat = tune.heartbeat if self.heartbeat else 0
        self.send(0, commands.Connection.TuneOk(tune.channel_max, tune.frame_max, heartbeat))
        self.send(0, commands.Connection.Open(virtual_host="/"))
        self.expect("Connection.OpenOk")
        self.send(1, commands.Channel.Open())
        self.expect("Channel.OpenOk")
        self.send(1, commands.Queue.Declare(queue="", exclusive=True))
        queue = self.expect("Queue.DeclareOk").queue
        self.send(1, commands.Basic.Consume(queue=queue, consumer_tag="c"))
        self.expect("Basic.ConsumeOk")
        body = b"x" * 100
        self.send(
            1,
            commands.Basic.Publish(exchange="", routing_key=queue),
            ContentHeader(0, len(body), commands.Basic.Properties(delivery_mode=1)),
            ContentBody(body),
        )
        self.expect("Basic.Deliver")
        self.expect("ContentHeader")
        self.expect("ContentBody")

    def leave(self, mode: str) -> None:
        """
        Close cleanly (C{clean}), drop the socket (C{drop}) or reset it
        (C{reset}).
        """
        if mode == "clean":
            self.send(0, commands.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0))
            self.expect("Connection.CloseOk")
        elif mode == "reset":
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def runClients(port: int, connections: int, mode: str, heartbeat: bool = True) -> None:
    """
    Run C{connections} client sessions one after the other, each leaving
    as C{mode} says.
    """
    for _ in range(connections):
        client = RawClient(port, heartbeat)
        client.session()
        client.leave(mode)


# The broker (this process)


def buildFactory(reactor: Any) -> Any:
    """
    A broker factory with one virtual host and the user C{guest}.
    """
    from qha.amqp.protocol import BrokerFactory
    from qha.amqp.users import Permissions, ScryptHash, UserDatabase
    from qha.broker.vhost import VirtualHost

    users = UserDatabase(
        {"guest": ScryptHash.fromPassword("guest", n=2**4)},
        permissions={"guest": {"/": Permissions.everything()}},
    )
    return BrokerFactory(VirtualHost(clock=reactor), users, reactor)


async def unreachable(
    reactor: Any, factory: Any, port: int, connections: int, mode: str, types: bool, heartbeat: bool = True
) -> tuple[int, list[tuple[str, int]]]:
    """
    With the collector off, run the clients in a child process, wait until
    the broker saw every connection go, and return how many unreachable
    objects C{gc.collect()} then finds (and, if C{types}, the commonest
    types among them).
    """
    from twisted.internet import task
    from twisted.internet.utils import getProcessOutputAndValue

    gc.collect()
    gc.disable()
    try:
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            ["-m", "qha_bench.cycles", "--client", str(port), "--connections", str(connections), "--mode", mode]
            + ([] if heartbeat else ["--no-heartbeat"]),
            env=os.environ,
            reactor=reactor,
        )
        if code != 0:
            raise RuntimeError(f"the clients failed ({code}): {err.decode(errors='replace')}")
        for _ in range(1000):
            if not factory.connections:
                break
            await task.deferLater(reactor, 0.01, lambda: None)
        else:
            raise RuntimeError(f"{len(factory.connections)} connections still open")
        # A few turns for whatever the last connection lost scheduled.
        for _ in range(3):
            await task.deferLater(reactor, 0, lambda: None)
        if types:
            gc.set_debug(gc.DEBUG_SAVEALL)
        found = gc.collect()
        common: list[tuple[str, int]] = []
        if types:
            common = collections.Counter(type(o).__qualname__ for o in gc.garbage).most_common(8)
            gc.set_debug(0)
            del gc.garbage[:]
            gc.collect()
        return found, common
    finally:
        gc.enable()


async def measure(
    reactor: Any, connections: int, rounds: int, types: bool = False, heartbeat: bool = True
) -> list[dict[str, Any]]:
    """
    For each round and mode: the unreachable objects C{connections}
    connections left, less those of a run without connections, and per
    connection.
    """
    from twisted.internet.endpoints import TCP4ServerEndpoint

    factory = buildFactory(reactor)
    listening = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    port = listening.getHost().port
    results: list[dict[str, Any]] = []
    try:
        # A first run warms up what is made once (caches, the first queue).
        await unreachable(reactor, factory, port, 2, "clean", False)
        for round in range(1, rounds + 1):
            for mode in MODES if round % 2 else MODES[::-1]:
                baseline, _ = await unreachable(reactor, factory, port, 0, mode, False, heartbeat)
                found, common = await unreachable(reactor, factory, port, connections, mode, types, heartbeat)
                results.append(
                    {
                        "round": round,
                        "mode": mode,
                        "connections": connections,
                        "unreachable": found,
                        "baseline": baseline,
                        "perConnection": (found - baseline) / connections,
                        "types": common,
                    }
                )
    finally:
        await listening.stopListening()
    return results


def main(argv: Sequence[str] | None = None) -> None:
    """
    The command line (see the module's docstring).
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--connections", type=int, default=200, help="connections per mode and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--types", action="store_true", help="print the commonest unreachable types")
    parser.add_argument("--no-heartbeat", action="store_true", help="the clients refuse the broker's heartbeat")
    parser.add_argument("--client", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, default="clean", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.client is not None:
        runClients(options.client, options.connections, options.mode, not options.no_heartbeat)
        return
    if options.connections < 1:
        parser.error("--connections must be at least 1")

    from twisted.internet import defer, task
    from twisted.logger import globalLogBeginner, textFileLogObserver

    # As under twistd: the broker's log events are written out (here to
    # nowhere), not kept.
    globalLogBeginner.beginLoggingTo(
        [textFileLogObserver(open(os.devnull, "w"))], redirectStandardIO=False
    )

    def run(reactor: Any) -> Any:
        return defer.ensureDeferred(
            measure(reactor, options.connections, options.rounds, options.types, not options.no_heartbeat)
        )

    def report(results: list[dict[str, Any]]) -> None:
        print(f"{'round':>5} {'mode':>6} {'connections':>11} {'unreachable':>11} {'baseline':>8} {'per connection':>14}")
        for r in results:
            print(
                f"{r['round']:>5} {r['mode']:>6} {r['connections']:>11} {r['unreachable']:>11}"
                f" {r['baseline']:>8} {r['perConnection']:>14.2f}"
            )
            if r["types"]:
                print("      " + ", ".join(f"{name} {count}" for name, count in r["types"]))

    def go(reactor: Any) -> Any:
        return run(reactor).addCallback(report)

    task.react(go)


if __name__ == "__main__":
    main()


__all__ = ["MODES", "RawClient", "buildFactory", "measure", "main", "runClients"]
