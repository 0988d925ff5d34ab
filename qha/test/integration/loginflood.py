"""
How wrong-password logins affect other clients (issue 12), against a
broker this script starts itself (C{twistd qha} from this checkout)::

    PYTHONPATH=. .venv/bin/python -m qha.test.integration.loginflood --seconds 10

It prints one client's publish confirm latency (p50, p99, max) while the
broker is quiet, then while C{--flooders} connections flood it with wrong
passwords; or against a running one with C{--port 5672} (and C{--pid} for
its CPU). The measurement is L{qha_bench.loginflood}'s, run as a command,
since qha imports nothing of qha_bench. Not a test: it prints figures for
C{doc/performance.md}.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from typing import Sequence

from qha.test.integration.brokerprocess import BrokerProcess


def floodCommand(port: int, pid: int, seconds: float, flooders: int) -> list[str]:
    """
    The command that measures broker C{pid} on AMQP port C{port}: a quiet
    step, then one with C{flooders} wrong logins in flight, C{seconds}
    each.
    """
    return [
        sys.executable,
        "-m",
        "qha_bench.loginflood",
        "--port",
        str(port),
        "--pid",
        str(pid),
        "--seconds",
        str(seconds),
        "--steps",
        f"0,{flooders}",
    ]


def main(argv: Sequence[str] | None = None) -> None:
    """
    Measure quiet, then flooded, against the broker of C{--port} or one
    started for the run (and stopped after it).
    """
    parser = argparse.ArgumentParser(description=(__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="a running broker (default: start one)")
    parser.add_argument("--pid", type=int, default=0, help="the running broker's pid, for its CPU")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--flooders", type=int, default=4)
    options = parser.parse_args(argv)
    broker = None
    port, pid = options.port, options.pid
    if not port:
        broker = BrokerProcess()
        broker.start()
        assert broker.process is not None
        port, pid = broker.port, broker.process.pid
    try:
        subprocess.run(floodCommand(port, pid, options.seconds, options.flooders), check=True)
    finally:
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    main()
