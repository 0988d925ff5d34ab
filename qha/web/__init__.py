"""
The HTTP port (C{--http-port}): RabbitMQ's management API for the part tools
use, qha's own C{/api/ha}, and the health checks load balancers poll
(C{/health/primary}, C{/health/replica}, C{/health/live}). See doc/http.md.
"""

__all__: list[str] = []
