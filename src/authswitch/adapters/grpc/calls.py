"""What every unary RPC gets around it: per-caller authorisation, the request id of its log
lines, and the conventional ``grpc_server_*`` Prometheus series.

Applied once per method when the server is built (:func:`observed`), not by a server
interceptor: an interceptor runs for every call before the method is even known (an await,
a handler looked up and a new one built per call), which is a measurable share of a
millisecond decision. The series' children are bound here once per method; a call only
increments them.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from authswitch import metrics
from authswitch.adapters.grpc.access import CALLER, AccessPolicy
from authswitch.logs import REQUEST_ID

__all__ = ["Behaviour", "observed"]

log = logging.getLogger(__name__)

Behaviour = Callable[[Any, Any], Awaitable[Any]]

# A call that names no x-request-id gets one: this process's prefix and a counter.
_PREFIX = os.urandom(3).hex()
_SEQUENCE = itertools.count(1)
_REQUEST_ID_LEN_MAX = 64


def observed(behaviour: Behaviour, full_method: str, policy: AccessPolicy) -> Behaviour:
    """``behaviour`` with the caller checked (when access control is on), the request id set
    for its logs, and counted in the grpc_server_* series under its service and method."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    started = metrics.HotCounter(metrics.GRPC_STARTED.labels("unary", service, method))
    seconds = metrics.HotHistogram(metrics.GRPC_HANDLING_SECONDS.labels("unary", service, method))
    handled: dict[Any, metrics.HotCounter] = {}

    def handled_child(code: Any) -> metrics.HotCounter:
        child = handled.get(code)
        if child is None:
            name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
            child = handled[code] = metrics.HotCounter(
                metrics.GRPC_HANDLED.labels("unary", service, method, name)
            )
        return child

    ok = handled_child(grpc.StatusCode.OK)
    role = policy.role_for(service) if policy.enabled else None
    perf_counter = time.perf_counter

    async def call(request: Any, context: Any) -> Any:
        started.inc()
        begun = perf_counter()
        metadata = context.invocation_metadata()
        given = ""
        if metadata:
            for key, value in metadata:
                if key == "x-request-id":
                    given = str(value)[:_REQUEST_ID_LEN_MAX]
                    break
        REQUEST_ID.set(given or f"{_PREFIX}-{next(_SEQUENCE):x}")
        try:
            if role is not None:
                caller = policy.caller(role, metadata, context.auth_context())
                if caller is None:
                    log.warning("call refused", extra={"rpc": method, "role": role})
                    await context.abort(
                        grpc.StatusCode.PERMISSION_DENIED, f"the {role} role is needed"
                    )
                CALLER.set(str(caller))
            response = await behaviour(request, context)
        except BaseException:
            seconds.observe(perf_counter() - begun)
            handled_child(context.code()).inc()
            raise
        seconds.observe(perf_counter() - begun)
        ok.inc()
        return response

    return call
