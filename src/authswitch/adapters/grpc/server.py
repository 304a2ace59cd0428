"""The gRPC server: servicers, health, reflection, limits."""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from authswitch.adapters.grpc.interceptors import MetricsInterceptor
from authswitch.adapters.grpc.servicers import AuthorizationServicer, LedgerAdminServicer
from authswitch.config import Settings
from authswitch.v1 import (
    authorization_pb2,
    authorization_pb2_grpc,
    ledger_admin_pb2,
    ledger_admin_pb2_grpc,
)

__all__ = ["SERVICE_NAMES", "HealthServicer", "build_server"]

# grpcio-health-checking's asyncio servicer (its stubs do not declare the ``aio`` module).
HealthServicer: Any = health.aio.HealthServicer  # type: ignore[attr-defined]

SERVICE_NAMES = (
    authorization_pb2.DESCRIPTOR.services_by_name["AuthorizationService"].full_name,
    ledger_admin_pb2.DESCRIPTOR.services_by_name["LedgerAdminService"].full_name,
)


def server_options(settings: Settings) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", settings.grpc_max_message_bytes),
        ("grpc.max_send_message_length", settings.grpc_max_message_bytes),
        ("grpc.max_concurrent_streams", settings.grpc_max_concurrent_streams),
        # grpcio sets SO_REUSEPORT by default, which lets a second server silently share
        # the port with a forgotten first one. Off: a taken port fails loudly.
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        # Gateways hold connections for long: ending them every few minutes (after a grace
        # for calls in flight) spreads load over replicas added since.
        ("grpc.max_connection_age_ms", 300_000),
        ("grpc.max_connection_age_grace_ms", 30_000),
    ]


def build_server(
    settings: Settings,
    authorization: AuthorizationServicer,
    admin: LedgerAdminServicer,
    health_servicer: Any,
) -> tuple[grpc.aio.Server, int]:
    """A server with every service added and its port bound; returns it and the port."""
    server = grpc.aio.server(
        interceptors=[MetricsInterceptor()],
        options=server_options(settings),
        maximum_concurrent_rpcs=settings.grpc_max_concurrent_streams,
    )
    authorization_pb2_grpc.add_AuthorizationServiceServicer_to_server(authorization, server)
    ledger_admin_pb2_grpc.add_LedgerAdminServiceServicer_to_server(admin, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME),
        server,
    )  # fmt: skip
    port = server.add_insecure_port(settings.grpc_listen)
    if port == 0:
        raise OSError(f"cannot listen on {settings.grpc_listen}")
    return server, port
