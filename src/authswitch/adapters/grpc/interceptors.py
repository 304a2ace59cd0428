"""Server interceptors: the conventional ``grpc_server_*`` Prometheus series."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from authswitch import metrics
from authswitch.logs import REQUEST_ID

__all__ = ["MetricsInterceptor"]

# Each RPC runs in its own task, so setting the context variable inside the call does not
# leak into other calls.


class MetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Counts started and handled unary RPCs and their latency, labelled by service, method
    and status code (all bounded sets)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler  # streaming (health Watch, reflection): not counted
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        started = metrics.GRPC_STARTED.labels("unary", service, method)
        seconds = metrics.GRPC_HANDLING_SECONDS.labels("unary", service, method)
        behaviour: Callable[[Any, Any], Awaitable[Any]] = handler.unary_unary

        async def observed(request: Any, context: Any) -> Any:
            started.inc()
            begun = time.perf_counter()
            # The request id of every log line of this call: the caller's, or a new one.
            given = dict(context.invocation_metadata() or ()).get("x-request-id", "")
            REQUEST_ID.set(str(given)[:64] if given else uuid.uuid4().hex[:16])
            code: Any = grpc.StatusCode.OK
            try:
                return await behaviour(request, context)
            except BaseException:
                code = context.code()
                raise
            finally:
                seconds.observe(time.perf_counter() - begun)
                metrics.GRPC_HANDLED.labels("unary", service, method, _code_name(code)).inc()

        return grpc.unary_unary_rpc_method_handler(
            observed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _code_name(code: object) -> str:
    if isinstance(code, grpc.StatusCode):
        return code.name
    return "UNKNOWN"
