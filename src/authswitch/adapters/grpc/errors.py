"""The one place where errors become gRPC statuses.

Business declines never reach here: they are response codes in normal replies. A bad
request (:class:`~authswitch.errors.RequestError`) becomes INVALID_ARGUMENT, NOT_FOUND,
ALREADY_EXISTS or FAILED_PRECONDITION with its message; an internal fault becomes UNAVAILABLE
(stores down, retry) or RESOURCE_EXHAUSTED (queue full), or INTERNAL with a message that says
nothing of the fault, which is logged here with its traceback.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from authswitch import errors

__all__ = ["grpc_errors", "status_for"]

log = logging.getLogger(__name__)

_REQUEST_CODES: tuple[tuple[type[errors.RequestError], grpc.StatusCode], ...] = (
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.PreconditionFailed, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.RequestError, grpc.StatusCode.INVALID_ARGUMENT),
)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status and the caller-safe message for ``exc``."""
    if isinstance(exc, errors.RequestError):
        for kind, code in _REQUEST_CODES:
            if isinstance(exc, kind):
                return code, str(exc)
    if isinstance(exc, errors.Expired):
        return grpc.StatusCode.DEADLINE_EXCEEDED, str(exc)
    if isinstance(exc, errors.Overloaded):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, "overloaded, retry later"
    # The stores' adapters raise StoreUnavailable where Postgres or Redis cannot be used
    # (adapters/postgres/errors.py, adapters/redis/errors.py); an OSError or a timeout here
    # comes from I/O no store owns (files, sftp, sinks) and is unavailable too.
    if isinstance(exc, errors.StoreUnavailable | OSError | TimeoutError):
        return grpc.StatusCode.UNAVAILABLE, "a store is unavailable, retry later"
    return grpc.StatusCode.INTERNAL, "internal error"


_Servicer = TypeVar("_Servicer")
_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


def grpc_errors(
    method: Callable[
        [_Servicer, _Request, grpc.aio.ServicerContext[Any, Any]], Awaitable[_Response]
    ],
) -> Callable[[_Servicer, _Request, grpc.aio.ServicerContext[Any, Any]], Awaitable[_Response]]:
    """Wrap a servicer method: map exceptions to statuses, log internal faults."""

    @functools.wraps(method)
    async def wrapper(
        self: _Servicer, request: _Request, context: grpc.aio.ServicerContext[Any, Any]
    ) -> _Response:
        try:
            return await method(self, request, context)
        except errors.RequestError as exc:
            code, message = status_for(exc)
            await context.abort(code, message)
        except Exception as exc:
            code, message = status_for(exc)
            log.error(
                "request failed",
                extra={"rpc": method.__name__, "error": type(exc).__name__},
                exc_info=code is grpc.StatusCode.INTERNAL,
            )
            await context.abort(code, message)
        raise AssertionError("unreachable: abort raises")

    return wrapper
