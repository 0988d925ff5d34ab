"""
The ordered stream of broker events that both replication and the store
consume: L{events} encodes and decodes it (the writer and the reader), and
L{replay} applies it to a virtual host, exactly and with no policy of its
own (a backup following its primary, a store recovering from its journal).

It builds on L{qha.broker} only: L{qha.ha} and L{qha.store} both depend on
it, and not on each other.
"""

__all__ = ["events", "replay"]
