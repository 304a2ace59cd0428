"""The asyncpg pool and its connection settings.

Postgres is reached one of two ways (docs/scaling.md, "Postgres in production"):

* **directly** (the default): each pooled connection is a server session of its own, so the
  session settings travel as startup parameters and asyncpg caches prepared statements;
* **through pgbouncer in transaction pooling mode** (``AUTHSWITCH_POSTGRES_PGBOUNCER=true``):
  a connection has a server session only for the length of one transaction, and the next
  transaction may run on another. Nothing may then rely on the session: asyncpg's prepared
  statement cache is off (statements are unnamed, parsed and run in one exchange), pgbouncer
  refuses session settings as startup parameters so they are sent as ``SET LOCAL`` with each
  ``BEGIN`` (in the same message: no extra round trip), and a connection given back to the
  pool runs no reset query (there is no session state to reset, and the default one's
  ``RESET ALL`` and ``pg_advisory_unlock_all()`` would act on a server session other clients
  use). Session advisory locks are not used in this mode (adapters/postgres/locks.py: leases).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

__all__ = ["Connection", "PgbouncerConnection", "create_pool", "session_settings"]

# What a function that runs statements accepts: a plain connection or a pooled one. (The
# stubs make both generic; at run time they are not, hence the string alias.)
if TYPE_CHECKING:
    Connection: TypeAlias = asyncpg.Connection[Any] | PoolConnectionProxy[Any]
    _ConnectionBase: TypeAlias = asyncpg.Connection[asyncpg.Record]
else:
    Connection = asyncpg.Connection | PoolConnectionProxy
    _ConnectionBase = asyncpg.Connection


class PgbouncerConnection(_ConnectionBase):
    """A connection behind pgbouncer in transaction mode (see the module docstring)."""

    # "SET LOCAL ...;" statements run with every BEGIN; set by create_pool's init.
    begin_settings = ""

    async def execute(
        self,
        query: str,
        *args: object,
        timeout: float | None = None,  # noqa: ASYNC109 - asyncpg's own signature
    ) -> str:
        # asyncpg's Transaction starts with execute("BEGIN ...;"), in the simple protocol,
        # which takes several statements in one message.
        if self.begin_settings and not args and query.startswith("BEGIN"):
            query = f"{query} {self.begin_settings}"
        return await super().execute(query, *args, timeout=timeout)

    def get_reset_query(self) -> str:
        return ""


def session_settings(statement_timeout_ms: int, *, read_only: bool) -> dict[str, str]:
    """The server settings of a connection: statements time out and a transaction is never
    left idle."""
    settings = {
        "statement_timeout": str(statement_timeout_ms),
        "idle_in_transaction_session_timeout": str(max(statement_timeout_ms * 2, 10_000)),
        # Plans of these short statements are cheap; JIT compilation is not.
        "jit": "off",
    }
    if read_only:
        settings["default_transaction_read_only"] = "on"
    return settings


async def create_pool(
    dsn: str,
    *,
    min_size: int,
    max_size: int,
    statement_timeout_ms: int,
    pgbouncer: bool = False,
    application_name: str = "authswitch",
    read_only: bool = False,
) -> asyncpg.Pool[Any]:
    """A pool whose connections time out statements and never hold a transaction idle.

    ``pgbouncer``: the DSN is a pgbouncer in transaction pooling mode (module docstring).
    ``read_only``: the pool only reads (a reports replica); its transactions are read-only.
    """
    settings = session_settings(statement_timeout_ms, read_only=read_only)
    command_timeout_s = statement_timeout_ms / 1000 + 1
    if not pgbouncer:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            server_settings={**settings, "application_name": application_name},
            command_timeout=command_timeout_s,
        )
        assert pool is not None
        return pool

    settings.pop("default_transaction_read_only", None)
    begin = " ".join(f"SET LOCAL {name} = '{value}';" for name, value in settings.items())
    if read_only:
        begin += " SET LOCAL transaction_read_only = on;"

    async def init(conn: asyncpg.Connection[Any]) -> None:
        assert isinstance(conn, PgbouncerConnection)
        conn.begin_settings = begin

    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        # pgbouncer passes application_name on (and refuses other startup parameters).
        server_settings={"application_name": application_name},
        command_timeout=command_timeout_s,
        statement_cache_size=0,
        connection_class=PgbouncerConnection,
        init=init,
    )
    assert pool is not None
    return pool


# A write whose commit follows, in the WAL, every commit visible when it starts: once it
# returns, a synchronous standby has confirmed all of them. A commit waiting for its standby
# is already visible on the primary, so what was read there is only safe from a failover
# after this (migration 0013).
REPLICATION_BARRIER = "UPDATE replication_barrier SET touched_at = clock_timestamp()"
