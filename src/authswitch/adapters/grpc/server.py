"""The gRPC server: servicers, health, reflection, limits."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection

from authswitch.adapters.grpc.acceptors import Acceptors
from authswitch.adapters.grpc.access import AccessPolicy, server_credentials
from authswitch.adapters.grpc.bounded import bounded
from authswitch.adapters.grpc.calls import Behaviour, observed
from authswitch.adapters.grpc.servicers import AuthorizationServicer, LedgerAdminServicer
from authswitch.config import Settings
from authswitch.v1 import authorization_pb2, ledger_admin_pb2

__all__ = [
    "SERVICE_NAMES",
    "HealthServicer",
    "acceptors_for",
    "add_health",
    "add_service",
    "build_server",
]

# grpcio-health-checking's asyncio servicer (its stubs do not declare the ``aio`` module).
HealthServicer: Any = health.aio.HealthServicer  # type: ignore[attr-defined]

SERVICE_NAMES = (
    authorization_pb2.DESCRIPTOR.services_by_name["AuthorizationService"].full_name,
    ledger_admin_pb2.DESCRIPTOR.services_by_name["LedgerAdminService"].full_name,
)


def server_options(settings: Settings) -> list[tuple[str, Any]]:
    return [
        # The handlers refuse (and count) a message over the limit; only far over it does gRPC
        # core refuse it without a handler (CORE_MESSAGE_BYTES_FACTOR).
        (
            "grpc.max_receive_message_length",
            settings.grpc_max_message_bytes * CORE_MESSAGE_BYTES_FACTOR,
        ),
        ("grpc.max_send_message_length", settings.grpc_max_message_bytes),
        ("grpc.max_concurrent_streams", settings.grpc_max_concurrent_streams),
        # Calls not yet taken by the event loop wait in gRPC's core: bounded, so that under
        # overload a call is refused there at once rather than queued for seconds. The same
        # bound for gRPC core's random early refusals and its hard limit: random refusals
        # below it would refuse calls of a gateway that keeps no more than that many in
        # flight. The caller then sees CANCELLED, and nothing was decided.
        ("grpc.server.max_pending_requests", settings.grpc_pending_calls_max),
        ("grpc.server.max_pending_requests_hard_limit", settings.grpc_pending_calls_max),
        # grpcio sets SO_REUSEPORT by default, which lets a second server silently share
        # the port with a forgotten first one. Off (unless AUTHSWITCH_GRPC_REUSEPORT asks for
        # several processes on one port): a taken port fails loudly.
        ("grpc.so_reuseport", 1 if settings.grpc_reuseport else 0),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        # Gateways hold connections for long: ending them every few minutes (after a grace
        # for calls in flight) spreads load over replicas added since.
        ("grpc.max_connection_age_ms", 300_000),
        ("grpc.max_connection_age_grace_ms", 30_000),
    ]


# gRPC core refuses a message over this many times the limit itself (uncounted, unseen by the
# handlers); between the limit and this, the handlers refuse it, counted like any call.
CORE_MESSAGE_BYTES_FACTOR = 4


class Malformed:
    """A request whose bytes did not parse (bad wire format, invalid UTF-8 in a string)."""

    __slots__ = ()


class Oversize:
    """A request over AUTHSWITCH_GRPC_MAX_MESSAGE_BYTES."""

    __slots__ = ()


MALFORMED = Malformed()
OVERSIZE = Oversize()


def _lenient(parse: Callable[[bytes], Any], size_max: int) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        if len(data) > size_max:
            return OVERSIZE
        try:
            return parse(data)
        except DecodeError:
            return MALFORMED

    return deserialize


def _refusing_malformed(behaviour: Callable[[Any, Any], Awaitable[Any]], size_max: int) -> Any:
    async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if request is MALFORMED:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the request does not parse")
        if request is OVERSIZE or (isinstance(request, bytes) and len(request) > size_max):
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"the request is over {size_max} bytes"
            )
        return await behaviour(request, context)

    return handle


def add_service(
    server: grpc.aio.Server,
    servicer: object,
    descriptor: ServiceDescriptor,
    policy: AccessPolicy,
    *,
    size_max: int,
    raw: dict[str, Behaviour] | None = None,
    acceptors: Acceptors | None = None,
) -> None:
    """Register ``servicer`` for ``descriptor``'s unary methods, each :func:`observed`, and
    answering INVALID_ARGUMENT to a request that does not parse (grpcio's generated
    registration would say INTERNAL). Methods named in ``raw`` take the request's bytes and
    return the response's bytes themselves (the decision path parses once and serialises
    once), and check their strings' bounds themselves (the others are refused here, by
    adapters/grpc/bounded.py, when a string is over its maximum); with ``acceptors``, their
    calls are taken from gRPC's core several at a time (adapters/grpc/acceptors.py)."""
    handlers = {}
    hot = {}
    for method in descriptor.methods:
        full_method = f"/{descriptor.full_name}/{method.name}"
        if raw and method.name in raw:
            hot[method.name] = grpc.unary_unary_rpc_method_handler(
                observed(_refusing_malformed(raw[method.name], size_max), full_method, policy)
            )
            continue
        request_type = GetMessageClass(method.input_type)
        response_type = GetMessageClass(method.output_type)
        behaviour = getattr(servicer, method.name)
        behaviour = bounded(behaviour, response_type)  # over-long strings: 30 / INVALID
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            observed(_refusing_malformed(behaviour, size_max), full_method, policy),
            request_deserializer=_lenient(request_type.FromString, size_max),
            response_serializer=_serializer(response_type),
        )
    if not (
        hot and acceptors is not None and acceptors.register(server, descriptor.full_name, hot)
    ):
        handlers |= hot
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(descriptor.full_name, handlers),)
    )


def _serializer(response_type: Any) -> Callable[[Any], bytes]:
    """A reply's bytes: a servicer returns either its message or the bytes already
    encoded, as stored with a decision (sent as they are, never parsed back)."""
    serialize = response_type.SerializeToString

    def serialized(response: Any) -> bytes:
        if type(response) is bytes:
            return response
        return cast(bytes, serialize(response))

    return serialized


def add_health(server: grpc.aio.Server, servicer: Any, policy: AccessPolicy) -> None:
    """grpc.health.v1 with its unary Check counted like every other RPC."""
    service = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
    handlers = {
        "Check": grpc.unary_unary_rpc_method_handler(
            observed(servicer.Check, f"/{service}/Check", policy),
            request_deserializer=health_pb2.HealthCheckRequest.FromString,
            response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
        ),
        "Watch": grpc.unary_stream_rpc_method_handler(
            servicer.Watch,
            request_deserializer=health_pb2.HealthCheckRequest.FromString,
            response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))


def acceptors_for(settings: Settings) -> Acceptors:
    """The acceptors of Authorize calls the settings ask for (the benchmarks' comparison
    servers take the same)."""
    return Acceptors(settings.grpc_acceptors, settings.grpc_acceptors_surge)


def build_server(
    settings: Settings,
    authorization: AuthorizationServicer,
    admin: LedgerAdminServicer,
    health_servicer: Any,
    policy: AccessPolicy | None = None,
) -> tuple[grpc.aio.Server, int, Acceptors]:
    """A server with every service added and its port bound; returns it, the port, and the
    acceptors of its Authorize calls (start them once the server has started)."""
    policy = policy or AccessPolicy()
    acceptors = acceptors_for(settings)
    server = grpc.aio.server(
        options=server_options(settings),
        maximum_concurrent_rpcs=settings.grpc_max_concurrent_streams,
    )
    add_service(
        server,
        authorization,
        authorization_pb2.DESCRIPTOR.services_by_name["AuthorizationService"],
        policy,
        size_max=settings.grpc_max_message_bytes,
        raw={"Authorize": authorization.authorize_wire},
        acceptors=acceptors,
    )
    add_service(
        server,
        admin,
        ledger_admin_pb2.DESCRIPTOR.services_by_name["LedgerAdminService"],
        policy,
        size_max=settings.grpc_max_message_bytes,
    )
    add_health(server, health_servicer, policy)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME),
        server,
    )  # fmt: skip
    credentials = server_credentials(settings)
    if credentials is None:
        port = server.add_insecure_port(settings.grpc_listen)
    else:
        port = server.add_secure_port(settings.grpc_listen, credentials)
    if port == 0:
        raise OSError(f"cannot listen on {settings.grpc_listen}")
    return server, port, acceptors
