"""
The overhead of the HTTP port and its metrics on the hot path: one series
of C{qha-bench} runs (the headline shape by default) against a broker with
C{--http-port none}, then with the HTTP port on and nobody scraping, then
on and scraped (C{/metrics} and C{/api/overview} once a second, as a
Prometheus and a dashboard would), repeated in rounds (each round starting
with the next mode); each broker is started fresh for its run, one at a
time.

    python -m qha_bench.overhead --rounds 3 --duration 8

prints each run and, per round, the ratio of each mode to C{none} (the
ratios within a round are what to quote: the machine's load drifts between
rounds). See doc/performance.md.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Sequence, TextIO

from qha_bench.procfs import cpuSeconds

MODES = ("none", "idle", "scraped")
"""
C{none}: C{--http-port none}; C{idle}: the HTTP port on, nobody asking;
C{scraped}: on, C{/metrics} and C{/api/overview} asked once a second.
"""


def freePort() -> int:
    """
    A loopback port nobody listens on now.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def waitForPort(port: int, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """
    Return once C{port} accepts a connection.

    @raise RuntimeError: if the broker exits or C{timeout} passes first.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the broker exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the broker did not listen on {port} within {timeout} s")


@dataclass
class Scraper:
    """
    Asks the HTTP port for C{/metrics} and C{/api/overview} every
    C{interval} seconds in a thread, as a monitoring system would.
    """

    port: int
    interval: float = 1.0
    scrapes: int = 0
    failures: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        """
        Start asking.
        """
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        """
        Ask once an interval until stopped.
        """
        token = base64.b64encode(b"guest:guest").decode("ascii")
        while not self._stop.is_set():
            for path, auth in (("/metrics", False), ("/api/overview", True)):
                request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}")
                if auth:
                    request.add_header("Authorization", f"Basic {token}")
                try:
                    with urllib.request.urlopen(request, timeout=5) as answer:
                        answer.read()
                    self.scrapes += 1
                except OSError:
                    self.failures += 1
            self._stop.wait(self.interval)

    def stop(self) -> None:
        """
        Stop asking and wait for the thread.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


def runOnce(mode: str, benchArguments: Sequence[str], root: str) -> dict[str, object]:
    """
    Start a broker in C{mode}, run C{qha-bench} against it, stop it; the
    bench's JSON report with the mode and the scrapes made.
    """
    amqp, amp, http = freePort(), freePort(), freePort()
    data = tempfile.mkdtemp(prefix=f"qha-overhead-{mode}-", dir=root)
    command = [
        os.path.join(os.path.dirname(sys.executable), "twistd"),
        "-n",
        "--pidfile=",
        f"--logfile={os.path.join(data, 'qha.log')}",
        "qha",
        "--port", f"tcp:{amqp}:interface=127.0.0.1",
        "--ha-port", f"tcp:{amp}:interface=127.0.0.1",
        "--http-port", "none" if mode == "none" else f"tcp:{http}:interface=127.0.0.1",
        "--data-dir", os.path.join(data, "data"),
    ]
    broker = subprocess.Popen(command)
    scraper = None
    try:
        waitForPort(amqp, broker)
        if mode == "scraped":
            waitForPort(http, broker)
            scraper = Scraper(http)
            scraper.start()
        before = cpuSeconds(broker.pid)
        done = subprocess.run(
            [sys.executable, "-m", "qha_bench.bench", "--url", f"amqp://guest:guest@127.0.0.1:{amqp}/%2F",
             "--json", *benchArguments],
            stdout=subprocess.PIPE,
            check=True,
            timeout=600,
        )
        used = cpuSeconds(broker.pid) - before
        report: dict[str, object] = json.loads(done.stdout.decode("utf-8").strip().splitlines()[-1])
        consumed = report.get("consumed") or report.get("published") or 0
        report["brokerCpuMicrosPerMessage"] = used / float(consumed) * 1e6 if consumed else None  # type: ignore[arg-type]
    finally:
        if scraper is not None:
            scraper.stop()
        broker.terminate()
        try:
            broker.wait(30)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait()
        shutil.rmtree(data, ignore_errors=True)
    report["mode"] = mode
    report["scrapes"] = 0 if scraper is None else scraper.scrapes
    report["scrapeFailures"] = 0 if scraper is None else scraper.failures
    return report


def rateOf(report: dict[str, object]) -> float:
    """
    The figure quoted: messages consumed per second (confirmed per second
    without consumers).
    """
    value = report.get("consumedRate") or report.get("confirmedRate") or report.get("publishedRate")
    return float(value)  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """
    Run the series and print it.
    """
    output = out or sys.stdout
    parser = argparse.ArgumentParser(prog="python -m qha_bench.overhead", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of none, idle, scraped (default 3)")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds each bench publishes (default 8)")
    parser.add_argument("--confirm", type=int, default=100, help="confirm window (default 100: the headline)")
    parser.add_argument("--json", action="store_true", help="one JSON object a run as well")
    options = parser.parse_args(argv)
    benchArguments = ["--confirm", str(options.confirm), "--duration", str(options.duration), "--queue", "overhead"]
    root = tempfile.mkdtemp(prefix="qha-overhead-")
    ratios: dict[str, list[float]] = {mode: [] for mode in MODES[1:]}
    cpuRatios: dict[str, list[float]] = {mode: [] for mode in MODES[1:]}
    try:
        for round_ in range(1, options.rounds + 1):
            rates: dict[str, float] = {}
            cpu: dict[str, float] = {}
            # Each round starts with another mode, so a drift in the
            # machine's load does not favour one mode.
            shift = (round_ - 1) % len(MODES)
            for mode in MODES[shift:] + MODES[:shift]:
                report = runOnce(mode, benchArguments, root)
                rates[mode] = rateOf(report)
                cpu[mode] = float(report["brokerCpuMicrosPerMessage"] or 0.0)  # type: ignore[arg-type]
                if options.json:
                    print(json.dumps({"round": round_, **report}), file=output)
                print(
                    f"round {round_} {mode:8} {rates[mode]:>10,.0f} msgs/s"
                    f"  lost {report.get('lost', 0)}  scrapes {report['scrapes']}"
                    f" (failed {report['scrapeFailures']})  broker CPU {cpu[mode]:.2f} us/msg",
                    file=output,
                    flush=True,
                )
            for mode in MODES[1:]:
                ratios[mode].append(rates[mode] / rates["none"])
                if cpu["none"]:
                    cpuRatios[mode].append(cpu[mode] / cpu["none"])
            print(
                f"round {round_} msgs/s ratios: idle/none {ratios['idle'][-1]:.3f},"
                f" scraped/none {ratios['scraped'][-1]:.3f}"
                + (
                    f"; CPU/msg ratios: idle/none {cpuRatios['idle'][-1]:.3f},"
                    f" scraped/none {cpuRatios['scraped'][-1]:.3f}"
                    if cpu["none"]
                    else ""
                ),
                file=output,
                flush=True,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for name, series in (("msgs/s", ratios), ("broker CPU per message", cpuRatios)):
        for mode in MODES[1:]:
            if series[mode]:
                print(
                    f"{name} {mode}/none: {', '.join(f'{r:.3f}' for r in series[mode])}; median"
                    f" {statistics.median(series[mode]):.3f}",
                    file=output,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
