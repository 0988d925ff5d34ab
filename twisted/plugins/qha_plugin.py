"""
The twistd plugin for qha: C{twistd qha --help} lists its options.
"""

from twisted.application.service import ServiceMaker

qha = ServiceMaker(
    "qha", "qha.tap", "An AMQP 0-9-1 broker with active-passive replication.", "qha"
)
