"""The audit log: who changed what. Every store writes its changes' entries with
:func:`audit` in the change's own transaction; :class:`AuditStore` writes one on its own,
after a change that was committed elsewhere (a posting through the group committer)."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from authswitch.adapters.postgres.errors import translated, translated_methods
from authswitch.adapters.postgres.pool import Connection

__all__ = ["AuditStore", "audit"]


@translated
async def audit(
    conn: Connection, actor: str, action: str, subject_id: str, detail: dict[str, Any]
) -> None:
    await conn.execute(
        "INSERT INTO audit_log (actor, action, subject_id, detail) VALUES ($1, $2, $3, $4)",
        actor,
        action,
        subject_id,
        json.dumps(detail, sort_keys=True),
    )


@translated_methods
class AuditStore:
    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self.pool = pool

    async def record(
        self, actor: str, action: str, subject_id: str, detail: dict[str, Any]
    ) -> None:
        async with self.pool.acquire() as conn:
            await audit(conn, actor, action, subject_id, detail)
