"""A plaintext port serving ``grpc.health.v1`` only (``AUTHSWITCH_HEALTH_LISTEN``).

Kubernetes' native gRPC probes cannot speak TLS: with TLS on the main port they would never
see SERVING. This second port answers the same health service (the same statuses, from the
same servicer) and nothing else, so no card data or admin call is ever reachable without
TLS. Off (empty) by default; the Helm chart turns it on.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc

from authswitch.config import parse_listen
from authswitch.errors import ConfigError

__all__ = ["start_health_port"]

# Health checks are tiny: a small message limit and a few streams are plenty.
_MESSAGE_BYTES_MAX = 4 * 1024
_STREAMS_MAX = 16


async def start_health_port(listen: str, health_servicer: Any) -> grpc.aio.Server | None:
    """Start the health-only server on ``listen`` (host:port); None when ``listen`` is empty.
    The caller stops it after the main server (so probes see the drain)."""
    if not listen:
        return None
    try:
        parse_listen(listen)
    except ConfigError as exc:
        raise ConfigError(f"AUTHSWITCH_HEALTH_LISTEN: {exc}") from None
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", _MESSAGE_BYTES_MAX),
            ("grpc.max_send_message_length", _MESSAGE_BYTES_MAX),
            ("grpc.max_concurrent_streams", _STREAMS_MAX),
            ("grpc.so_reuseport", 0),  # a taken port fails loudly
        ],
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        bound = server.add_insecure_port(listen)
    except RuntimeError:  # grpcio's "Failed to bind" (the port is taken)
        bound = 0
    if bound == 0:
        raise OSError(f"health port: cannot listen on {listen} (AUTHSWITCH_HEALTH_LISTEN)")
    await server.start()
    return server
