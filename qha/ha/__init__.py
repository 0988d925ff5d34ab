"""
Replication: the AMP commands brokers speak to each other, the role state
machine, the primary's replication source for each backup, the backup's
replicator, and fencing by epoch.
"""

__all__: list[str] = []
