"""
The HTTP port's resource tree and site: C{/api} (L{ManagementAPI}),
C{/health} (L{healthResource}), C{/metrics} (L{MetricsResource}) and the
status page at C{/} (L{StatusPage}) under one root (see L{managementRoot}).
"""

from __future__ import annotations

from twisted.web.resource import Resource
from twisted.web.server import Site

from .api import ManagementAPI
from .broker import ManagedBroker
from .health import healthResource
from .metrics import MetricsResource, metricsRegistry
from .status import StatusPage


class Root(Resource):
    """
    The root of the HTTP port: C{/api}, C{/health}, C{/metrics}, and the
    status page at C{/} itself (L{qha.web.status}).
    """


def managementRoot(broker: ManagedBroker) -> Resource:
    """
    The resource tree of the HTTP port for C{broker}.
    """
    root = Root()
    root.putChild(b"api", ManagementAPI(broker))
    root.putChild(b"health", healthResource(broker.node))
    root.putChild(b"metrics", MetricsResource(metricsRegistry(broker)))
    root.putChild(b"", StatusPage(broker))
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
