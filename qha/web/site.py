"""
The HTTP port's resource tree and site: C{/api} (L{ManagementAPI}) and
C{/health} (L{healthResource}) under one root, to which C{/metrics} and
the status page at C{/} can be added as children (see L{managementRoot}).
"""

from __future__ import annotations

from twisted.web.resource import Resource
from twisted.web.server import Site

from .api import ManagementAPI
from .broker import ManagedBroker
from .health import healthResource
from .metrics import MetricsResource, metricsRegistry


class Root(Resource):
    """
    The root of the HTTP port: C{/api}, C{/health} and C{/metrics}; C{/}
    itself answers 404 until a status page is added (L{Resource.putChild}
    with C{b""}).
    """


def managementRoot(broker: ManagedBroker) -> Resource:
    """
    The resource tree of the HTTP port for C{broker}.
    """
    root = Root()
    root.putChild(b"api", ManagementAPI(broker))
    root.putChild(b"health", healthResource(broker.node))
    root.putChild(b"metrics", MetricsResource(metricsRegistry(broker)))
    return root


def managementSite(broker: ManagedBroker) -> Site:
    """
    The HTTP port's site (without access log: the API's changes log who
    asked, and health checks every second would drown the log).
    """
    site = Site(managementRoot(broker))
    site.log = lambda request: None  # type: ignore[method-assign]
    site.displayTracebacks = False
    return site


__all__ = ["Root", "managementRoot", "managementSite"]
