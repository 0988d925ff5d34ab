"""
A backup catching up on a large backlog, on real processes: starts a
primary (the integration harness, L{qha.test.integration.cluster}), fills
one durable, replicated queue with N persistent messages, then, RUNS times,
starts a backup with an empty data directory and, until it is ready,
queries it (C{qha-admin query}'s AMP command) in a loop, timing each
answer (and, on a connection logged in once, the Query alone, which
measures the backup's reactor turns rather than connecting and logging in
on a busy machine). Meanwhile a live publisher publishes persistent messages to
another replicated queue on the primary, one at a time with publisher
confirms, and times each confirm. Prints per run the time to ready, the
longest answer, the live publisher's confirm p50/p99/longest, and the flaps
(the primary dropping the backup, or the backup leaving a silent primary,
from their logs), the CPU seconds each broker spent from the backup's start
to its ready (the machine may be shared: wall time alone says little), the
load average, and, with C{--turns}, each broker's longest reactor turn then
(L{qha_bench.turnwatch}, loaded into the brokers for the bench only).

    PYTHONPATH=. .venv/bin/python -m qha_bench.catchupbench \\
        [--messages 300000] [--size 250] [--runs 3] [--heartbeat 2] [--turns] \\
        [--profile DIRECTORY [--idle]]

C{--profile} samples both brokers with C{py-spy} (if installed) from the
backup's start to its ready, into C{DIRECTORY/primary-RUN.txt} and
C{backup-RUN.txt} (C{py-spy}'s raw format: one stack and its samples a
line); with C{--idle}, the waits too (a reactor waiting for its sockets,
the store's thread for its disk), each stack under its thread.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import pika

from qha.admin.commands import Query
from qha.test.integration.cluster import BlockingAMP, Cluster

from . import turnwatch


def cpuSeconds(pid: int) -> float:
    """
    The CPU seconds (user and system) process C{pid} has used so far.
    """
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loadAverage() -> str:
    """
    The machine's load averages over 1, 5 and 15 minutes, in words.
    """
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def fill(port: int, queue: str, messages: int, size: int) -> None:
    """
    Publish C{messages} persistent messages of C{size} bytes to C{queue}.
    """
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    channel = connection.channel()
    channel.queue_declare(queue, durable=True, arguments={"qpid.replicate": "all"})
    body = b"x" * size
    properties = pika.BasicProperties(delivery_mode=2)
    for index in range(messages):
        channel.basic_publish("", queue, body, properties, mandatory=False)
    connection.close()


class LivePublisher(threading.Thread):
    """
    Publishes persistent messages to a replicated queue one at a time with
    publisher confirms until stopped, timing each confirm.

    @ivar confirms: the seconds each confirm took.
    """

    def __init__(self, port: int, queue: str, size: int) -> None:
        """
        @param port: the primary's AMQP port.
        @param queue: the queue (declared durable and replicated).
        @param size: the body size.
        """
        super().__init__(daemon=True)
        self.port = port
        self.queue = queue
        self.size = size
        self.confirms: list[float] = []
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        """
        Publish until told to stop.
        """
        try:
            connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", self.port))
            channel = connection.channel()
            channel.queue_declare(self.queue, durable=True, arguments={"qpid.replicate": "all"})
            channel.confirm_delivery()
            body = b"l" * self.size
            properties = pika.BasicProperties(delivery_mode=2)
            while not self.stopping.is_set():
                started = time.monotonic()
                channel.basic_publish("", self.queue, body, properties)
                self.confirms.append(time.monotonic() - started)
                self.stopping.wait(0.005)
            channel.queue_purge(self.queue)
            connection.close()
        except BaseException as error:  # reported by the main thread
            self.error = error

    def stop(self) -> str:
        """
        Stop publishing; the confirm times, said in words.
        """
        self.stopping.set()
        self.join(30)
        if self.error is not None:
            return f"live publisher failed: {self.error!r}"
        times = sorted(self.confirms)
        if not times:
            return "no live confirms"

        def at(fraction: float) -> float:
            return times[min(len(times) - 1, int(fraction * len(times)))] * 1000

        return (
            f"live publisher: {len(times)} confirms, p50 {at(0.5):.1f} ms,"
            f" p99 {at(0.99):.1f} ms, longest {times[-1] * 1000:.0f} ms"
        )


def main() -> None:
    """
    The command line.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--size", type=int, default=250)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--heartbeat", type=float, default=2.0)
    parser.add_argument(
        "--turns", action="store_true", help="watch each broker's reactor turns (bench only)"
    )
    parser.add_argument("--profile", metavar="DIRECTORY", help="sample both brokers with py-spy")
    parser.add_argument(
        "--idle",
        action="store_true",
        help="with --profile, sample idle threads too, each stack under its thread",
    )
    options = parser.parse_args()
    watch: str | None = None
    if options.turns:
        watch = tempfile.mkdtemp(prefix="qha-turns-")
        with open(os.path.join(watch, "sitecustomize.py"), "w") as module:
            module.write(turnwatch.SITECUSTOMIZE)
        os.environ["QHA_TURNWATCH"] = watch
        path = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = watch if not path else path + os.pathsep + watch
    cluster = Cluster(2, heartbeat=options.heartbeat)
    try:
        cluster.start([0])
        cluster.startPrimary(0)
        started = time.monotonic()
        fill(cluster.brokers[0].port, "backlog", options.messages, options.size)
        cluster.waitFor(
            0,
            lambda state: any(
                queue.get("messages") == options.messages
                for queue in cluster.listObjects(0, "queues")
                if queue.get("name") == "backlog"
            ),
            timeout=300,
            what=f"{options.messages} messages on the primary",
        )
        print(
            f"published {options.messages} messages of {options.size} bytes in"
            f" {time.monotonic() - started:.1f}s"
        )
        backup = cluster.brokers[1]
        for run in range(1, options.runs + 1):
            backup.kill()
            for name in os.listdir(backup.dataDirectory):
                if name not in ("cluster-secret",):
                    path = os.path.join(backup.dataDirectory, name)
                    if os.path.isdir(path):
                        shutil.rmtree(path)
                    else:
                        os.remove(path)
            # The primary drops the backup just killed (its boxes in flight
            # fail): not a flap of this run.
            for _ in range(100):
                if not cluster.query(0).get("backups"):
                    break
                time.sleep(0.05)
            dropsBefore = cluster.brokers[0].output(100000).count("dropping backup")
            live = LivePublisher(cluster.brokers[0].port, "live", options.size)
            live.start()
            began = time.monotonic()
            beganAt = time.time()
            loadBefore = loadAverage()
            assert cluster.brokers[0].process is not None
            primaryPid = cluster.brokers[0].process.pid
            primaryCPU = cpuSeconds(primaryPid)
            cluster.startBroker(1)
            assert backup.process is not None
            backupPid = backup.process.pid
            samplers = []
            if options.profile:
                os.makedirs(options.profile, exist_ok=True)
                for name, pid in (("primary", primaryPid), ("backup", backupPid)):
                    samplers.append(
                        subprocess.Popen(
                            ["py-spy", "record", "--pid", str(pid), "--format", "raw", "--rate", "200", "--nonblocking",
                             *(["--idle", "--threads"] if options.idle else []),
                             "--output", os.path.join(options.profile, f"{name}-{run}.txt")],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        )
                    )
            # (seconds the answer took, seconds since the start, role)
            answers: list[tuple[float, float, str]] = []
            queries: list[float] = []
            state: dict = {}
            # A connection logged in once, for the Query alone (a reactor
            # turn of the backup) besides qha-admin's connect, login, query.
            session: BlockingAMP | None = None
            while True:
                asked = time.monotonic()
                try:
                    state = cluster.query(1, timeout=30)
                except Exception as error:  # a refused login while starting
                    state = {"role": f"error {error}"}
                took = time.monotonic() - asked
                answers.append((took, asked - began, str(state.get("role"))))
                if state.get("role") == "ready":
                    break
                if state.get("role") == "catchup":
                    if session is None:
                        session = BlockingAMP(backup.ampPort, timeout=30)
                        session.login(cluster.credentials)
                    asked = time.monotonic()
                    session.call(Query)
                    queries.append(time.monotonic() - asked)
                if time.monotonic() - began > 600:
                    raise SystemExit(f"run {run}: not ready after 600 s: {state}")
                time.sleep(0.05)
            ready = time.monotonic() - began
            readyAt = time.time()
            for sampler in samplers:
                sampler.send_signal(signal.SIGINT)
            for sampler in samplers:
                sampler.wait(60)
            cpu = (
                f"CPU {cpuSeconds(primaryPid) - primaryCPU:.1f}s primary,"
                f" {cpuSeconds(backupPid):.1f}s backup; load average {loadBefore} before,"
                f" {loadAverage()} at ready"
            )
            turns = ""
            if watch is not None:
                words = []
                for name, pid in (("primary", primaryPid), ("backup", backupPid)):
                    turn = turnwatch.longestTurn(watch, pid, beganAt, readyAt)
                    if turn is not None:
                        words.append(
                            f"{name} {turn[0]:.0f} ms ({turn[1]:.0f} ms CPU; the most CPU in one"
                            f" turn {turn[3]:.0f} ms; longest full collection {turn[2]:.0f} ms)"
                        )
                turns = f" longest reactor turn: {', '.join(words) or 'none seen'};"
            if session is not None:
                session.close()
            confirms = live.stop()
            answers.sort(reverse=True)
            longest = answers[0][0]
            worst = ", ".join(
                f"{took * 1000:.0f} ms at {at:.1f}s ({role})" for took, at, role in answers[:3]
            )
            queries.sort()
            alone = (
                f"Query alone on a logged-in connection: {len(queries)}, p50"
                f" {queries[len(queries) // 2] * 1000:.1f} ms, longest {queries[-1] * 1000:.0f} ms"
                if queries
                else "no Query alone"
            )
            primaryLog = cluster.brokers[0].output(100000)
            drops = primaryLog.count("dropping backup") - dropsBefore
            for line in [line for line in primaryLog.splitlines() if "dropping backup" in line][-drops:] if drops > 0 else []:
                print(f"run {run}: the primary: {line}")
            silent = backup.output(100000).count("silent for")
            catchup = state.get("catchup") or {}
            print(
                f"run {run}: ready after {ready:.1f}s (catch-up {catchup.get('seconds')}s,"
                f" {catchup.get('receivedMessages')} messages,"
                f" {catchup.get('receivedBytes')} bytes, {catchup.get('batches')} batches);"
                f" {len(answers)} queries (connect, log in, query), the longest answer"
                f" {longest * 1000:.0f} ms (longest three: {worst}); {alone};"
                f" {confirms}; {cpu};{turns}"
                f" flaps: {drops} drops by the primary, {silent} silent-primary warnings"
            )
    finally:
        cluster.stop()
        if watch is not None:
            shutil.rmtree(watch, ignore_errors=True)


if __name__ == "__main__":
    main()
