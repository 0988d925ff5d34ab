"""
Cluster timings: how fast a backup catches up and a promoted broker serves.

C{python -m qha_bench.habench [--messages N]} starts real brokers on loopback
ports and prints:

  - join: a new, empty backup joining a primary that holds N 100-byte
    messages, from start to ready;
  - rejoin: a backup that holds them already (its link was cut: SIGSTOP past
    two heartbeats, then SIGCONT), from resuming to ready again;
  - promote: from C{promote} of a ready backup (after SIGKILL of the primary)
    to the first publish confirmed by the new primary.
"""

from __future__ import annotations

import argparse
import sys
import time

import pika

from qha.test.integration.cluster import Cluster


def _publish(cluster: Cluster, index: int, count: int, size: int) -> None:
    connection = cluster.connect(index)
    channel = connection.channel()
    channel.queue_declare("habench", arguments={"qpid.replicate": "all"})
    body = b"x" * size
    for sent in range(count):
        channel.basic_publish("", "habench", body)
        if sent % 20000 == 19999:
            channel.queue_declare("habench", passive=True)
    held = channel.queue_declare("habench", passive=True).method.message_count
    connection.close()
    if held != count:
        raise RuntimeError(f"the primary holds {held} messages, not {count}")


def _waitReady(cluster: Cluster, primary: int, backup: int, timeout: float = 60.0) -> float:
    """
    Seconds until the primary reports C{backup} ready (polled every 10 ms).
    """
    started = time.monotonic()
    backupId = cluster.query(backup)["brokerId"]
    while time.monotonic() - started < timeout:
        state = cluster.query(primary)
        if any(b["id"] == backupId and b["ready"] for b in state["backups"]):
            return time.monotonic() - started
        cluster.brokers[primary].waitForOutput(0.01)
    raise RuntimeError(f"backup {backup} was not ready within {timeout} s")


def main(argv: list[str] | None = None) -> int:
    """
    Run the three timings and print them.
    """
    parser = argparse.ArgumentParser(prog="python -m qha_bench.habench", description=__doc__)
    parser.add_argument("--messages", type=int, default=100000)
    parser.add_argument("--size", type=int, default=100)
    options = parser.parse_args(argv)
    cluster = Cluster(2, arguments=["--ha-backup-timeout", "1"], heartbeat=0.5)
    try:
        cluster.start([0])
        cluster.startPrimary(0)
        _publish(cluster, 0, options.messages, options.size)
        started = time.monotonic()
        cluster.start([1])
        _waitReady(cluster, 0, 1)
        joinSeconds = time.monotonic() - started
        # Cut the backup's link without losing its state: pause it past
        # two heartbeats, so the primary drops it, then resume it.
        cluster.pause(1)
        deadline = time.monotonic() + 10
        while any(b["ready"] for b in cluster.query(0)["backups"]):
            if time.monotonic() > deadline:
                raise RuntimeError("the primary did not drop the paused backup")
            cluster.brokers[0].waitForOutput(0.05)
        cluster.resume(1)
        rejoinSeconds = _waitReady(cluster, 0, 1)
        cluster.kill(0)
        started = time.monotonic()
        cluster.promote(1)
        connection = pika.BlockingConnection(
            cluster.amqpParameters(1, connection_attempts=50, retry_delay=0.01)
        )
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish("", "habench", b"first after promotion")
        promoteSeconds = time.monotonic() - started
        held = channel.queue_declare("habench", passive=True).method.message_count
        connection.close()
        print(f"messages held by the primary: {options.messages} x {options.size} bytes")
        print(f"join:    new backup ready in {joinSeconds:.2f} s (goal < 3 s)")
        print(f"rejoin:  backup holding them ready again in {rejoinSeconds:.2f} s (goal < 0.5 s)")
        print(f"promote: first confirmed publish {promoteSeconds:.2f} s after promote (goal < 1 s)")
        print(f"the new primary holds {held} messages")
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
