"""
The AMQP 0-9-1 server protocol: frames in and out (through pamqp), methods
translated into calls on the broker model in L{qha.broker}.
"""

__all__: list[str] = []
