"""
Durable state: durable exchanges and queues, their bindings and the
persistent messages on durable queues, behind one interface, with an
embedded journal that needs no server and an in-memory implementation.
"""

__all__: list[str] = []
