"""
qha_bench: load generators and measurements for qha, kept out of the broker.

  - L{qha_bench.bench} (C{qha-bench}): an AMQP 0-9-1 load generator for any
    broker; it imports nothing of qha.
  - L{qha_bench.habench} (C{python -m qha_bench.habench}): cluster timings
    (join, rejoin, promote) on real brokers started by L{qha.test.integration.cluster};
    needs pika, from the C{test} extra.
  - L{qha_bench.memorybench} (C{python -m qha_bench.memorybench}): the memory
    a queued message costs in qha's broker model or in a running broker.

Imports go one way: qha_bench may import qha, qha never imports qha_bench.
"""

__all__: list[str] = []
