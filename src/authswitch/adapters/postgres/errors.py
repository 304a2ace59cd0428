"""Postgres's failures in the project's error tree: what cannot reach or talk to Postgres
leaves this adapter as :class:`~authswitch.errors.StoreUnavailable`, its cause chained, so
the gRPC boundary maps project errors only (``adapters/grpc/errors.py``).

The server's refusals that mean something to a caller are translated where they are caught
(a unique violation becomes ``AlreadyExists`` in ``catalog.py`` and ``cards.py``); any other
server error goes through unchanged and is an internal fault.

Two ways to translate, one cost each:

* :func:`translated` wraps a coroutine function, and :func:`translated_methods` each public
  coroutine method of a store class: a frame a call, which is nothing beside a round trip
  off the authorisation path;
* a method that runs per decision catches :data:`UNREACHABLE` in its own body instead (a
  ``try`` costs nothing until it catches) and is marked :func:`translates_inline`, so that
  :func:`translated_methods` leaves it as it is.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Awaitable, Callable
from typing import Final, ParamSpec, TypeVar

import asyncpg

from authswitch.errors import StoreUnavailable

__all__ = [
    "UNREACHABLE",
    "translated",
    "translated_methods",
    "translates_inline",
    "unavailable",
]

# Postgres cannot be reached or the connection cannot be used: refused, reset, timed out,
# closed, the pool closing, or the server shutting the connection (SQLSTATE class 08).
UNREACHABLE: Final[tuple[type[BaseException], ...]] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)

_P = ParamSpec("_P")
_R = TypeVar("_R")
_Class = TypeVar("_Class", bound=type)
_Function = TypeVar("_Function", bound=Callable[..., object])

_INLINE = "_authswitch_translates_inline"


def unavailable(cause: BaseException) -> StoreUnavailable:
    """The error to raise ``from cause`` for a Postgres that cannot be used; its message
    names the failure's kind, never a statement or a value."""
    return StoreUnavailable(f"Postgres unavailable: {type(cause).__name__}")


def translated(function: Callable[_P, Awaitable[_R]]) -> Callable[_P, Awaitable[_R]]:
    """``function``, raising :class:`StoreUnavailable` where Postgres cannot be used."""

    @functools.wraps(function)
    async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return await function(*args, **kwargs)
        except UNREACHABLE as exc:
            raise unavailable(exc) from exc

    return wrapper


def translates_inline(method: _Function) -> _Function:
    """Mark a method that catches :data:`UNREACHABLE` itself (it runs per decision)."""
    setattr(method, _INLINE, True)
    return method


def translated_methods(cls: _Class) -> _Class:
    """``cls`` with each public coroutine method :func:`translated`, but those marked
    :func:`translates_inline`."""
    for name, member in list(vars(cls).items()):
        if (
            name.startswith("_")
            or not isinstance(member, types.FunctionType)
            or not inspect.iscoroutinefunction(member)
            or getattr(member, _INLINE, False)
        ):
            continue
        setattr(cls, name, translated(member))
    return cls
