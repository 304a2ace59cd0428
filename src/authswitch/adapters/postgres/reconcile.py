"""The reads of reconciliation (service/reconcile.py): the ledger's invariants checked in
Postgres, each query returning only what breaks one, so that the run's memory does not grow
with the ledger; and the balances the Redis cache is compared with.

The ledger is read in one snapshot (``snapshot_pool``, which may be a read replica's); the
cache is compared with the primary (``pool``), which is what Redis follows. Months of
postings dropped by retention count through ``posting_archive_totals``, what they summed to.
Every query takes an optional program ($1, None: all of them).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg

from authswitch.adapters.postgres.errors import translated_methods
from authswitch.adapters.postgres.ownership import OwnerBalance, owner_balances
from authswitch.adapters.postgres.pool import Connection

__all__ = [
    "BalanceDrift",
    "EntryImbalance",
    "LedgerSnapshot",
    "ProgramTotal",
    "ReconciliationStore",
    "StoredBalance",
]


@dataclass(frozen=True, slots=True)
class EntryImbalance:
    """A journal entry whose postings of one asset do not sum to zero."""

    entry_id: str
    asset: str
    total_minor: int


@dataclass(frozen=True, slots=True)
class BalanceDrift:
    """A balance figure that is not what it derives from (its postings, its open holds)."""

    account_id: str
    asset: str
    derived_minor: int
    stored_minor: int


@dataclass(frozen=True, slots=True)
class ProgramTotal:
    """All postings of one program and asset, and those of its customer accounts."""

    program_id: str
    asset: str
    customers_minor: int
    total_minor: int


@dataclass(frozen=True, slots=True)
class StoredBalance:
    asset: str
    actual_minor: int
    authorized_minor: int


@translated_methods
class LedgerSnapshot:
    """The ledger's checks, on one connection in a repeatable-read, read-only transaction."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def unbalanced_entries(self, program_id: str | None) -> list[EntryImbalance]:
        rows = await self.conn.fetch(
            """SELECT e.id::text, p.asset, sum(p.amount_minor) AS total
               FROM journal_entries e JOIN postings p ON p.entry_id = e.id
               WHERE $1::uuid IS NULL OR e.program_id = $1
               GROUP BY e.id, p.asset HAVING sum(p.amount_minor) <> 0""",
            program_id,
        )
        return [EntryImbalance(r[0], r[1], int(r["total"])) for r in rows]

    async def count_entries(self, program_id: str | None) -> int:
        return int(
            await self.conn.fetchval(
                "SELECT count(*) FROM journal_entries WHERE $1::uuid IS NULL OR program_id = $1",
                program_id,
            )
        )

    async def balances_off_postings(self, program_id: str | None) -> list[BalanceDrift]:
        """The balances whose actual figure is not the sum of their postings."""
        rows = await self.conn.fetch(
            """SELECT b.account_id::text, b.asset, b.actual_minor,
                      coalesce(s.total, 0) AS posted
               FROM balances b JOIN accounts a ON a.id = b.account_id
               LEFT JOIN (SELECT account_id, asset, sum(amount_minor) AS total
                          FROM (SELECT account_id, asset, amount_minor FROM postings
                                UNION ALL
                                SELECT account_id, asset, amount_minor
                                FROM posting_archive_totals) kept_and_dropped
                          GROUP BY account_id, asset) s
                 ON s.account_id = b.account_id AND s.asset = b.asset
               WHERE ($1::uuid IS NULL OR a.program_id = $1)
                 AND b.actual_minor <> coalesce(s.total, 0)""",
            program_id,
        )
        return [BalanceDrift(r[0], r[1], int(r["posted"]), int(r["actual_minor"])) for r in rows]

    async def balances_off_holds(self, program_id: str | None) -> list[BalanceDrift]:
        """The balances whose authorised figure is not the sum of their open holds."""
        rows = await self.conn.fetch(
            """SELECT b.account_id::text, b.asset, b.authorized_minor,
                      coalesce(h.total, 0) AS held
               FROM balances b JOIN accounts a ON a.id = b.account_id
               LEFT JOIN (SELECT account_id, asset, sum(amount_minor) AS total FROM holds
                          WHERE status = 'OPEN' GROUP BY account_id, asset) h
                 ON h.account_id = b.account_id AND h.asset = b.asset
               WHERE ($1::uuid IS NULL OR a.program_id = $1)
                 AND b.authorized_minor <> coalesce(h.total, 0)""",
            program_id,
        )
        return [BalanceDrift(r[0], r[1], int(r["held"]), int(r["authorized_minor"])) for r in rows]

    async def count_balances(self, program_id: str | None) -> int:
        return int(
            await self.conn.fetchval(
                """SELECT count(*) FROM balances b JOIN accounts a ON a.id = b.account_id
                   WHERE $1::uuid IS NULL OR a.program_id = $1""",
                program_id,
            )
        )

    async def program_totals(self, program_id: str | None) -> list[ProgramTotal]:
        """Every program and asset, broken or not (the caller counts them)."""
        rows = await self.conn.fetch(
            """SELECT a.program_id::text, p.asset,
                      sum(p.amount_minor) FILTER (WHERE a.kind = 'CUSTOMER') AS customers,
                      sum(p.amount_minor) AS total
               FROM (SELECT account_id, asset, amount_minor FROM postings
                     UNION ALL
                     SELECT account_id, asset, amount_minor FROM posting_archive_totals) p
               JOIN accounts a ON a.id = p.account_id
               WHERE $1::uuid IS NULL OR a.program_id = $1
               GROUP BY a.program_id, p.asset""",
            program_id,
        )
        return [ProgramTotal(r[0], r[1], int(r["customers"] or 0), int(r["total"])) for r in rows]

    def owner_balances(self, program_id: str) -> AsyncIterator[OwnerBalance]:
        """Each beneficial owner's share of every account they hold, as the FBO file has it."""
        return owner_balances(self.conn, program_id)


@translated_methods
class ReconciliationStore:
    """``pool`` is the primary; ``snapshot_pool`` (default: the same) where the ledger's
    snapshot is read."""

    def __init__(
        self, pool: asyncpg.Pool[Any], *, snapshot_pool: asyncpg.Pool[Any] | None = None
    ) -> None:
        self.pool = pool
        self.snapshot_pool = snapshot_pool or pool

    @contextlib.asynccontextmanager
    async def snapshot(self) -> AsyncIterator[LedgerSnapshot]:
        async with (
            self.snapshot_pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            yield LedgerSnapshot(conn)

    async def exponents(self) -> dict[str, int]:
        """Every asset's exponent."""
        return {r[0]: r[1] for r in await self.pool.fetch("SELECT code, exponent FROM assets")}

    async def customer_account_ids(self, program_id: str | None) -> list[str]:
        rows = await self.pool.fetch(
            """SELECT id::text FROM accounts
               WHERE kind = 'CUSTOMER' AND ($1::uuid IS NULL OR program_id = $1)""",
            program_id,
        )
        return [r[0] for r in rows]

    async def balances(self, account_id: str) -> list[StoredBalance]:
        rows = await self.pool.fetch(
            "SELECT asset, actual_minor, authorized_minor FROM balances WHERE account_id = $1",
            account_id,
        )
        return [
            StoredBalance(r["asset"], int(r["actual_minor"]), int(r["authorized_minor"]))
            for r in rows
        ]
