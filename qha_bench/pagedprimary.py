"""
The resident memory a primary and its backup grow by with a paged backlog
(issue 15): two real C{twistd qha} brokers with C{--memory-budget 1MiB}
(the integration tests' cluster harness), a replicated queue with no
consumer, C{--messages} confirmed publishes of C{--size} bytes; prints each
broker's VmRSS growth.

    PYTHONPATH=. python -m qha_bench.pagedprimary --messages 5000 --size 4096 [--json]
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Callable

from qha.test.integration.cluster import startCluster
from qha.test.integration.test_ha_failover import ALL
from qha.test.integration.test_paging import numbered, publishAll, residentBytes

MiB = 1024 * 1024


class _Cleanups:
    """
    What L{startCluster} wants of a test: somewhere to put its clean-ups.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def addCleanup(self, call: Callable[..., Any], *arguments: Any) -> None:
        """
        Run C{call} at the end.
        """
        self.calls.append((call, arguments))

    def run(self) -> None:
        """
        Run the clean-ups, the last first.
        """
        for call, arguments in reversed(self.calls):
            call(*arguments)


def measure(messages: int, size: int) -> dict[str, Any]:
    """
    Start the cluster, publish the backlog, and measure both brokers.
    """
    cleanups = _Cleanups()
    try:
        cluster = startCluster(cleanups, 2, ["--memory-budget", "1MiB"])
        pids = []
        for broker in cluster.brokers:
            assert broker.process is not None
            pids.append(broker.process.pid)
        before = [residentBytes(pid) for pid in pids]
        connection = cluster.connect()
        connection.channel().queue_declare("paged", arguments=ALL)
        publishAll(connection, "paged", numbered(messages, size), confirm=True)
        connection.close()
        grown = [residentBytes(pid) - start for pid, start in zip(pids, before)]
        return {
            "messages": messages,
            "size": size,
            "primaryGrownMiB": round(grown[0] / MiB, 1),
            "backupGrownMiB": round(grown[1] / MiB, 1),
        }
    finally:
        cleanups.run()


def main(argv: list[str] | None = None) -> None:
    """
    Parse the options, measure, print.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args(argv)
    result = measure(options.messages, options.size)
    if options.json:
        print(json.dumps(result))
        return
    print(
        f"{result['messages']} confirmed messages of {result['size']} bytes, paged:"
        f" the primary grew by {result['primaryGrownMiB']} MiB,"
        f" the backup by {result['backupGrownMiB']} MiB"
    )


if __name__ == "__main__":
    main()
