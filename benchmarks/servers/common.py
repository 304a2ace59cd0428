"""What the comparison servers share with ``authswitch serve``: grpc.aio on uvloop, the
project's server options (SO_REUSEPORT off, limits, keepalive), its acceptors (Authorize
calls taken from gRPC's core several at a time), the generated protobuf classes,
grpc.health.v1, and draining on SIGTERM. Not the real server's call interceptor
(metrics, access control, request ids) nor its servicer layer: those are part of what
``authswitch serve`` costs per call.

A comparison server implements AuthorizationService.Authorize only (registered by name, so
the service may grow methods without touching these servers); others answer UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from authswitch.v1 import authorization_pb2 as pb

__all__ = ["AuthorizeHandler", "Closer", "Context", "run_server"]

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

SERVICE = pb.DESCRIPTOR.services_by_name["AuthorizationService"].full_name

Context = grpc.aio.ServicerContext[Any, Any]
AuthorizeHandler = Callable[[pb.AuthorizeRequest, Context], Awaitable[pb.AuthorizeResponse]]
Closer = Callable[[], Awaitable[None]]
# Builds the Authorize handler once the event loop runs; returns it and a close function.
HandlerFactory = Callable[[], Awaitable[tuple[AuthorizeHandler, Closer]]]


# authswitch's server options as of this writing, used only if they cannot be imported
# (the project's tree mid-edit): 64 KiB messages, 1,000 streams, SO_REUSEPORT off...
_FALLBACK_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", 64 * 1024),
    ("grpc.max_send_message_length", 64 * 1024),
    ("grpc.max_concurrent_streams", 1_000),
    ("grpc.so_reuseport", 0),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.max_connection_age_ms", 300_000),
    ("grpc.max_connection_age_grace_ms", 30_000),
]


def _server_options() -> list[tuple[str, Any]]:
    """The real server's options (the same stack), imported at run time."""
    try:
        from authswitch.adapters.grpc.server import server_options
        from authswitch.config import Settings
    except ImportError as exc:
        print(f"authswitch's server options unavailable ({exc}): using a copy", file=sys.stderr)
        return _FALLBACK_OPTIONS
    return server_options(Settings())


def _acceptors() -> Any:
    """The real server's acceptors of Authorize calls (the same stack), or None."""
    try:
        from authswitch.adapters.grpc.server import acceptors_for
        from authswitch.config import Settings
    except ImportError as exc:
        print(f"authswitch's acceptors unavailable ({exc}): grpc.aio's one", file=sys.stderr)
        return None
    return acceptors_for(Settings())


async def _serve(listen: str, factory: HandlerFactory) -> None:
    authorize, close = await factory()
    options = [(k, v) for k, v in _server_options() if k != "grpc.so_reuseport"]
    # SO_REUSEPORT off whatever the project says: a taken port must fail loudly.
    options.append(("grpc.so_reuseport", 0))
    streams = dict(options).get("grpc.max_concurrent_streams", 1_000)
    server = grpc.aio.server(options=options, maximum_concurrent_rpcs=streams)
    method = grpc.unary_unary_rpc_method_handler(
        authorize,
        request_deserializer=pb.AuthorizeRequest.FromString,
        response_serializer=pb.AuthorizeResponse.SerializeToString,
    )
    acceptors = _acceptors()
    if acceptors is None or not acceptors.register(server, SERVICE, {"Authorize": method}):
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"Authorize": method}),)
        )
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if server.add_insecure_port(listen) == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    if acceptors is not None:
        acceptors.start(server)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    print(f"serving on {listen}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(2.0)
    if acceptors is not None:
        await acceptors.closed()
    await close()


def run_server(listen: str, factory: HandlerFactory) -> None:
    uvloop.run(_serve(listen, factory))
