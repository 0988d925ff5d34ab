"""
Wrong-password logins per second a broker absorbs, against another client's
publish-confirm latency (issue 12; figures in doc/performance.md).

Flooders run in separate processes (so that they do not share the measuring
client's GIL), each keeping its share of the connections in flight with
asyncio. An AMQP flooder connection sends the protocol header, answers
C{connection.start} with PLAIN C{guest} and a wrong password, and waits for
the broker's C{connection.close}; an AMP one sends a C{Challenge} for the
cluster secret and an C{Authenticate} with a random proof, and waits for the
error. A refusal is counted when it arrives. Meanwhile the main process
publishes one message at a time with confirms (pika) and records each
latency. Each step of C{--steps} is one total of connections in flight::

    python -m qha_bench.loginflood --port 5940 --pid PID --steps 0,4,16,64,256
    python -m qha_bench.loginflood --port 5940 --sources 200 --steps 0,64,0,256
    python -m qha_bench.loginflood --port 5940 --amp-port 5950 --steps 0,16,64,256

C{--sources N} binds the flooders' sockets to N loopback addresses
(127.0.1.1 and up), since the broker delays refusals per source address.
Imports nothing of qha, so it measures any broker. Not a test.
C{python -m qha.test.integration.loginflood} runs it (steps 0 and
C{--flooders}) against a broker of this checkout that it starts itself.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import struct
import time
from multiprocessing.sharedctypes import Synchronized
from typing import Any, Sequence

import pika
from pamqp import commands, frame

from qha_bench.procfs import cpuSeconds


def percentile(values: Sequence[float], fraction: float) -> float:
    """
    The value below which C{fraction} of C{values} lie (nearest rank).
    """
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(fraction * len(ordered) + 0.5)) - 1))
    return ordered[index]


async def readFrame(reader: asyncio.StreamReader) -> Any:
    """
    Read one AMQP frame and return what it carries (a method, mostly).
    """
    header = await reader.readexactly(7)
    _, _, size = struct.unpack(">BHI", header)
    payload = await reader.readexactly(size + 1)
    return frame.unmarshal(header + payload)[2]


async def amqpLogin(port: int, source: str | None) -> bool:
    """
    One AMQP login with a wrong password; whether it was refused (403).
    """
    local = (source, 0) if source else None
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=local)
    try:
        writer.write(b"AMQP\x00\x00\x09\x01")
        start = await readFrame(reader)
        assert isinstance(start, commands.Connection.Start), start
        writer.write(
            frame.marshal(
                commands.Connection.StartOk(
                    client_properties={"product": "qha login flood"},
                    mechanism="PLAIN",
                    response="\0guest\0wrong",
                    locale="en_US",
                ),
                0,
            )
        )
        while True:
            got = await readFrame(reader)
            if isinstance(got, commands.Connection.Close):
                return bool(got.reply_code == 403)
    finally:
        writer.close()


def ampBox(**pairs: str | bytes) -> bytes:
    """
    One AMP box of C{pairs}, encoded.
    """
    out = b""
    for key, value in pairs.items():
        encoded = value if isinstance(value, bytes) else value.encode()
        out += struct.pack(">H", len(key)) + key.encode() + struct.pack(">H", len(encoded)) + encoded
    return out + b"\0\0"


async def readBox(reader: asyncio.StreamReader) -> dict[bytes, bytes]:
    """
    Read one AMP box.
    """
    box: dict[bytes, bytes] = {}
    while True:
        (length,) = struct.unpack(">H", await reader.readexactly(2))
        if length == 0:
            return box
        key = await reader.readexactly(length)
        (length,) = struct.unpack(">H", await reader.readexactly(2))
        box[key] = await reader.readexactly(length)


async def ampLogin(port: int, source: str | None) -> bool:
    """
    One AMP challenge-response login with a wrong secret; whether it was
    refused.
    """
    local = (source, 0) if source else None
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=local)
    try:
        writer.write(ampBox(_command="Challenge", _ask="1", username="", nonce=os.urandom(32)))
        answer = await readBox(reader)
        assert b"nonce" in answer, answer
        writer.write(ampBox(_command="Authenticate", _ask="2", proof=os.urandom(32)))
        return b"_error" in await readBox(reader)
    finally:
        writer.close()


async def flood(
    port: int, amp: bool, connections: int, sources: int, index: int, counter: Synchronized[int], stop: Any
) -> None:
    """
    Keep C{connections} wrong logins in flight until C{stop} is set,
    counting refusals in C{counter}.
    """

    async def one(k: int) -> None:
        source = f"127.0.1.{1 + (index * connections + k) % sources}" if sources else None
        while not stop.is_set():
            try:
                login = ampLogin(port, source) if amp else amqpLogin(port, source)
                if await asyncio.wait_for(login, 30):
                    with counter.get_lock():
                        counter.value += 1
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, AssertionError):
                await asyncio.sleep(0.01)

    await asyncio.gather(*(one(k) for k in range(connections)))


def flooder(
    port: int, amp: bool, connections: int, sources: int, index: int, counter: Synchronized[int], stop: Any
) -> None:
    """
    The body of one flooder process; see L{flood}.
    """
    asyncio.run(flood(port, amp, connections, sources, index, counter, stop))


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


def main(argv: Sequence[str] | None = None) -> None:
    """
    Run each step and print one line of figures for it.
    """
    parser = argparse.ArgumentParser(description=(__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="the broker's AMQP port")
    parser.add_argument("--pid", type=int, default=0, help="the broker's pid, for its CPU")
    parser.add_argument("--amp-port", type=int, default=0, help="flood AMP logins on this port")
    parser.add_argument("--seconds", type=float, default=10.0, help="per step")
    parser.add_argument("--steps", default="0,2,8,32,128", help="connections in flight per step")
    parser.add_argument("--procs", type=int, default=2, help="flooder processes")
    parser.add_argument("--sources", type=int, default=0, help="loopback source addresses")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of flood before measuring")
    options = parser.parse_args(argv)
    floodPort = options.amp_port or options.port
    for total in [int(step) for step in options.steps.split(",")]:
        stop = multiprocessing.Event()
        counter: Synchronized[int] = multiprocessing.Value("q", 0)  # type: ignore[assignment]
        processes = []
        if total:
            count = min(options.procs, total)
            for index in range(count):
                connections = total // count + (1 if index < total % count else 0)
                process = multiprocessing.Process(
                    target=flooder,
                    args=(floodPort, bool(options.amp_port), connections, options.sources, index, counter, stop),
                    daemon=True,
                )
                process.start()
                processes.append(process)
            time.sleep(options.warmup)
        cpu0, refused0, started = cpuSeconds(options.pid), counter.value, time.monotonic()
        latencies = measureConfirms(options.port, options.seconds)
        cpu1, refused1, ended = cpuSeconds(options.pid), counter.value, time.monotonic()
        stop.set()
        for process in processes:
            process.join(5)
            if process.is_alive():
                process.terminate()
                process.join()
        elapsed = ended - started
        print(
            f"in flight {total:5d} (sources {options.sources or 1}):"
            f" refused {refused1 - refused0} = {(refused1 - refused0) / elapsed:7.1f}/s;"
            f" confirms {len(latencies)}, p50 {statistics.median(latencies):.2f} ms,"
            f" p99 {percentile(latencies, 0.99):.2f} ms, max {max(latencies):.2f} ms;"
            f" broker CPU {(cpu1 - cpu0) / elapsed:.2f} cores",
            flush=True,
        )
        # Refusals still delayed or queued for the password pool drain.
        time.sleep(2.5)


if __name__ == "__main__":
    main()
