"""The catalogue's change feed (migration 0042): what each admin change of a cached
catalogue entry adds, and what each process reads to drop its copies
(service/catalog_watch.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from authswitch.adapters.postgres.errors import translated, translated_methods

__all__ = ["CatalogChange", "CatalogChangeStore", "note_change"]


@translated
async def note_change(pool: asyncpg.Pool[Any], kind: str, ident: str) -> None:
    """Record that a catalogue entry changed, for the other processes."""
    await pool.execute("INSERT INTO catalog_changes (kind, ident) VALUES ($1, $2)", kind, ident)


@dataclass(frozen=True, slots=True)
class CatalogChange:
    id: int
    kind: str
    ident: str


@translated_methods
class CatalogChangeStore:
    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self.pool = pool

    async def last_id(self) -> int:
        """The id of the latest change (0: none)."""
        return int(await self.pool.fetchval("SELECT coalesce(max(id), 0) FROM catalog_changes"))

    async def after(self, last_id: int, limit: int) -> list[CatalogChange]:
        """The changes after ``last_id``, oldest first."""
        rows = await self.pool.fetch(
            "SELECT id, kind, ident FROM catalog_changes WHERE id > $1 ORDER BY id LIMIT $2",
            last_id,
            limit,
        )
        return [CatalogChange(r[0], r[1], r[2]) for r in rows]

    async def delete_older_than(self, seconds: int) -> None:
        await self.pool.execute(
            "DELETE FROM catalog_changes WHERE created_at < now() - $1 * interval '1 second'",
            seconds,
        )
