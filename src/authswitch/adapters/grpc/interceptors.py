"""The server interceptor: per-caller authorisation, the request id of log lines, and the
conventional ``grpc_server_*`` Prometheus series."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from authswitch import metrics
from authswitch.adapters.grpc.access import CALLER, AccessPolicy
from authswitch.logs import REQUEST_ID

__all__ = ["CallInterceptor"]

log = logging.getLogger(__name__)

# Each RPC runs in its own task, so context variables set inside a call do not leak into
# other calls.


class CallInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Wraps every unary RPC: checks the caller holds the role of the service (when access
    control is on), sets the request id and the caller for the call's logs and audit, and
    counts started and handled RPCs and their latency, labelled by service, method and
    status code (bounded sets)."""

    def __init__(self, policy: AccessPolicy) -> None:
        self.policy = policy
        self._series: dict[str, tuple[Any, Any, str, str]] = {}

    def _labels(self, full_method: str) -> tuple[Any, Any, str, str]:
        found = self._series.get(full_method)
        if found is None:
            service, _, method = full_method.lstrip("/").rpartition("/")
            found = (
                metrics.GRPC_STARTED.labels("unary", service, method),
                metrics.GRPC_HANDLING_SECONDS.labels("unary", service, method),
                service,
                method,
            )
            self._series[full_method] = found
        return found

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler  # streaming (health Watch, reflection): open, not counted
        started, seconds, service, method = self._labels(handler_call_details.method)
        role = self.policy.role_for(service) if self.policy.enabled else None
        behaviour: Callable[[Any, Any], Awaitable[Any]] = handler.unary_unary
        policy = self.policy

        async def observed(request: Any, context: Any) -> Any:
            started.inc()
            begun = time.perf_counter()
            metadata = context.invocation_metadata() or ()
            given = next((v for k, v in metadata if k == "x-request-id"), "")
            REQUEST_ID.set(str(given)[:64] if given else uuid.uuid4().hex[:16])
            code: Any = grpc.StatusCode.OK
            try:
                if role is not None:
                    caller = policy.caller(role, metadata, context.auth_context())
                    if caller is None:
                        log.warning("call refused", extra={"rpc": method, "role": role})
                        await context.abort(
                            grpc.StatusCode.PERMISSION_DENIED, f"the {role} role is needed"
                        )
                    CALLER.set(str(caller))
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
