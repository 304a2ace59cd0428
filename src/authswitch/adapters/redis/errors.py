"""Redis's failures in the project's error tree: what cannot reach or talk to Redis leaves
this adapter as :class:`~authswitch.errors.StoreUnavailable`, its cause chained, so the gRPC
boundary maps project errors only (``adapters/grpc/errors.py``).

Translated where a reply is settled (``cache.py``): a ``try`` or a branch taken only on a
failure, nothing added to a call that succeeds. A script's own error (a ``ResponseError``)
goes through unchanged and is an internal fault.
"""

from __future__ import annotations

from typing import Final

import redis.exceptions

from authswitch.errors import StoreUnavailable

__all__ = ["UNREACHABLE", "translated", "unavailable"]

# Redis cannot be reached or the connection cannot be used: refused, reset, timed out, closed.
UNREACHABLE: Final[tuple[type[BaseException], ...]] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OSError,
    TimeoutError,
)


def unavailable(cause: BaseException) -> StoreUnavailable:
    """The error to raise ``from cause`` for a Redis that cannot be used; its message names
    the failure's kind, never a key or a value."""
    return StoreUnavailable(f"Redis unavailable: {type(cause).__name__}")


def translated(error: BaseException) -> BaseException:
    """``error``, or where Redis cannot be used a :class:`StoreUnavailable` caused by it: for
    a future's exception, which is set rather than raised."""
    if not isinstance(error, UNREACHABLE):
        return error
    translation = unavailable(error)
    translation.__cause__ = error
    return translation
