"""The Prometheus endpoint, on its own port (``AUTHSWITCH_METRICS_LISTEN``)."""

from __future__ import annotations

from typing import Any, Protocol

from prometheus_client import REGISTRY, start_http_server

from authswitch.config import parse_listen

__all__ = ["MetricsServer", "start_metrics_server"]


class MetricsServer(Protocol):
    server_port: int

    def shutdown(self) -> None: ...

    def server_close(self) -> None: ...


def start_metrics_server(listen: str, *, registry: Any = REGISTRY) -> MetricsServer:
    """Serve ``/metrics`` of ``registry`` from a daemon thread; ``listen`` may use port 0
    (any free port)."""
    host, port = parse_listen(listen)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
