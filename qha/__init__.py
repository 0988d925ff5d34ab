"""
qha: an AMQP 0-9-1 message broker on Twisted, with active-passive replication.
"""

__all__: list[str] = []
__version__ = "0.1.0"
