"""
Process-level tests of qha: real C{twistd qha} brokers (and a real etcd)
on free loopback ports, driven by real clients (pika, aio-pika, raw
sockets), and the harnesses that start them: L{brokerprocess}, L{cluster},
L{etcdprocess}, L{elected} (brokers that etcd coordinates), L{clients},
L{loadclients}, and the L{loginflood} load script.

Every process a test starts is stopped at its end, every wait is bounded.
The synchronous unit tests are in L{qha.test}.
"""

__all__: list[str] = []
