"""
The broker model: virtual host, exchanges, queues, consumers, delivery and acks.

Pure Python, no I/O and no reactor: the AMQP protocol in L{qha.amqp} translates
methods into calls here, and observers (a replicator, a store) see every queue
event in order.
"""

__all__: list[str] = []
