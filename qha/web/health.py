"""
Health checks for load balancers (HAProxy's C{option httpchk}, keepalived),
open to everyone and answering nothing but a status line:

  - C{/health/primary}: 200 only on a primary that may confirm now (active
    and, with a coordinator, within its lease); 503 on a recovering
    primary, a backup, a fenced primary, one past its lease deadline, and
    one whose deadline is near because its keepalives stopped succeeding
    (L{qha.ha.coordinator.Coordinator.lookAhead}): red before it stops
    confirming, so a load balancer drains it first.
  - C{/health/replica}: 200 on a backup that is ready to take over.
  - C{/health/live}: 200 while the process serves.
"""

from __future__ import annotations

from typing import Callable

from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

from ..ha.role import ACTIVE, READY, STANDALONE
from .broker import ManagedNode


def primaryStatus(node: ManagedNode) -> tuple[bool, str]:
    """
    Whether C{node} is a primary clients should be sent to, and why.
    """
    role = node.role.name
    if role not in (ACTIVE, STANDALONE):
        return False, f"not the primary: {role}"
    if not node.mayConfirm():
        return False, f"not the primary: {role} but may not confirm (fenced or past its lease)"
    if not node.mayConfirmAhead():
        return False, f"not the primary: {role} and its lease runs out (keepalives failing)"
    return True, f"primary: {role}"


def replicaStatus(node: ManagedNode) -> tuple[bool, str]:
    """
    Whether C{node} is a ready backup, and why.
    """
    role = node.role.name
    if role != READY:
        return False, f"not a ready backup: {role}"
    return True, f"replica: {role}"


class StatusLine(Resource):
    """
    One check: 200 or 503, with a one-line plain-text body.
    """

    isLeaf = True

    def __init__(self, check: Callable[[], tuple[bool, str]]) -> None:
        """
        @param check: says whether the check passes, and the line to answer.
        """
        super().__init__()
        self.check = check

    def render_GET(self, request: IRequest) -> bytes:
        """
        Answer the check's status line.
        """
        ok, line = self.check()
        request.setResponseCode(200 if ok else 503)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return (line + "\n").encode("utf-8")


def healthResource(node: ManagedNode) -> Resource:
    """
    C{/health}, with its three checks.
    """
    health = Resource()
    health.putChild(b"primary", StatusLine(lambda: primaryStatus(node)))
    health.putChild(b"replica", StatusLine(lambda: replicaStatus(node)))
    health.putChild(b"live", StatusLine(lambda: (True, f"live: {node.role.name}")))
    return health


__all__ = ["StatusLine", "healthResource", "primaryStatus", "replicaStatus"]
