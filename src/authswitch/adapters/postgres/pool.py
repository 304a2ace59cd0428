"""The asyncpg pool and its connection settings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

__all__ = ["Connection", "create_pool"]

# What a function that runs statements accepts: a plain connection or a pooled one. (The
# stubs make both generic; at run time they are not, hence the string alias.)
if TYPE_CHECKING:
    Connection: TypeAlias = asyncpg.Connection[Any] | PoolConnectionProxy[Any]
else:
    Connection = asyncpg.Connection | PoolConnectionProxy


async def create_pool(
    dsn: str, *, min_size: int, max_size: int, statement_timeout_ms: int
) -> asyncpg.Pool[Any]:
    """A pool whose connections time out statements and never hold a transaction idle.

    Prepared statements are cached per connection (asyncpg's default); behind pgbouncer in
    transaction mode set ``statement_cache_size=0`` (see docs/scaling.md).
    """
    settings = {
        "statement_timeout": str(statement_timeout_ms),
        "idle_in_transaction_session_timeout": str(max(statement_timeout_ms * 2, 10_000)),
        "application_name": "authswitch",
        # Plans of these short statements are cheap; JIT compilation is not.
        "jit": "off",
    }
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        server_settings=settings,
        command_timeout=statement_timeout_ms / 1000 + 1,
    )
    assert pool is not None
    return pool
