"""
What the HTTP API (L{qha.web}) and C{qha-admin} (L{qha.admin}) both show
and do to the broker's objects: RabbitMQ's views of them (L{views}) and
its definitions documents (L{definitions}). Above the model and the
replication, below both front ends, which never import each other.
"""

__all__ = ["definitions", "views"]
