"""The notification outbox's rows: claiming due deliveries, reading a notification, recording
each attempt's outcome, and the depth per sink (service/outbox.py delivers them); a
program's deliveries as an operator lists them, and re-driving its dead ones.

Deliveries are partitioned by their notification's created_at (migration 0007): every
statement on one names it, so that it reads one partition rather than probe them all.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import asyncpg

from authswitch.adapters.postgres.audit import audit
from authswitch.adapters.postgres.errors import translated_methods
from authswitch.adapters.postgres.ids import uuid_or_not_found
from authswitch.domain.outbox import Claim, DeliveryRow, QueuedNotification, SinkDepth
from authswitch.errors import NotFound

__all__ = ["OutboxStore"]

_CLAIM = """
    WITH heads AS (
        SELECT DISTINCT ON (sink, ordering_key) notification_id, sink, next_attempt_at, seq,
               created_at
        FROM notification_deliveries
        WHERE status = 'PENDING'
        ORDER BY sink, ordering_key, seq
    ), due AS (
        SELECT notification_id, sink, created_at FROM heads
        WHERE next_attempt_at <= $1
        ORDER BY seq
        LIMIT $2
    )
    UPDATE notification_deliveries d
    SET next_attempt_at = $3, attempts = d.attempts + 1
    FROM due
    WHERE d.notification_id = due.notification_id AND d.sink = due.sink
      AND d.created_at = due.created_at
      AND d.status = 'PENDING' AND d.next_attempt_at <= $1
    RETURNING d.notification_id::text, d.sink, d.attempts, d.seq, d.created_at
"""


@translated_methods
class OutboxStore:
    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self.pool = pool

    async def claim(self, now: datetime, limit: int, lease_until: datetime) -> list[Claim]:
        """The due deliveries, at most ``limit``, each the earliest pending one of its (sink,
        account): claimed by moving their next attempt to ``lease_until`` in one UPDATE that
        only one replica wins."""
        rows = await self.pool.fetch(_CLAIM, now, limit, lease_until)
        return [Claim(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    async def notification(self, claim: Claim) -> QueuedNotification:
        row = await self.pool.fetchrow(
            """SELECT id::text, program_id::text, coalesce(account_id::text, '') AS account_id,
                      coalesce(card_id::text, '') AS card_id, kind, payload, created_at, seq
               FROM notifications WHERE id = $1 AND created_at = $2""",
            claim.notification_id,
            claim.created_at,
        )
        assert row is not None, "a delivery without its notification"
        return QueuedNotification(
            row["id"], row["program_id"], row["account_id"], row["card_id"], row["kind"],
            json.loads(row["payload"]), row["created_at"], row["seq"],
        )  # fmt: skip

    async def delivered(self, claim: Claim, at: datetime) -> None:
        await self.pool.execute(
            """UPDATE notification_deliveries
               SET status = 'DELIVERED', delivered_at = $3, last_error = ''
               WHERE notification_id = $1 AND sink = $2 AND created_at = $4""",
            claim.notification_id,
            claim.sink,
            at,
            claim.created_at,
        )

    async def dead(self, claim: Claim, error: str) -> None:
        """No more attempts: an operator re-drives it."""
        await self.pool.execute(
            """UPDATE notification_deliveries SET status = 'DEAD', last_error = $3
               WHERE notification_id = $1 AND sink = $2 AND created_at = $4""",
            claim.notification_id,
            claim.sink,
            error,
            claim.created_at,
        )

    async def retry_at(self, claim: Claim, at: datetime, error: str) -> None:
        await self.pool.execute(
            """UPDATE notification_deliveries SET next_attempt_at = $3, last_error = $4
               WHERE notification_id = $1 AND sink = $2 AND created_at = $5""",
            claim.notification_id,
            claim.sink,
            at,
            error,
            claim.created_at,
        )

    async def depths(self) -> list[SinkDepth]:
        """Pending and dead deliveries per sink, and the oldest pending one's time."""
        rows = await self.pool.fetch(
            """SELECT d.sink, count(*) FILTER (WHERE d.status = 'PENDING') AS pending,
                      count(*) FILTER (WHERE d.status = 'DEAD') AS dead,
                      min(d.created_at) FILTER (WHERE d.status = 'PENDING') AS oldest
               FROM notification_deliveries d
               WHERE d.status <> 'DELIVERED'
               GROUP BY d.sink"""
        )
        return [SinkDepth(r["sink"], r["pending"], r["dead"], r["oldest"]) for r in rows]

    async def notification_deliveries(
        self,
        program_id: str,
        status: str | None,
        limit: int,
        before: tuple[int, str] | None = None,
    ) -> list[DeliveryRow]:
        """Newest first; ``before`` is the (seq, sink) of the last delivery of the previous
        page."""
        if not await self.pool.fetchval(
            "SELECT true FROM programs WHERE id = $1", uuid_or_not_found(program_id, "program")
        ):
            raise NotFound(f"program {program_id} does not exist")
        cursor_seq, cursor_sink = before or (None, None)
        rows = await self.pool.fetch(
            """SELECT d.notification_id::text, n.kind,
                      coalesce(n.account_id::text, '') AS account_id, d.seq, d.sink,
                      d.status, d.attempts, d.last_error, n.created_at
               FROM notification_deliveries d
               JOIN notifications n ON n.id = d.notification_id AND n.created_at = d.created_at
               WHERE d.program_id = $1 AND ($2::text IS NULL OR d.status = $2)
                 AND ($4::bigint IS NULL OR (d.seq, d.sink) < ($4, $5::text))
               ORDER BY d.seq DESC, d.sink DESC LIMIT $3""",
            program_id,
            status,
            limit,
            cursor_seq,
            cursor_sink,
        )
        return [DeliveryRow(**dict(r)) for r in rows]

    async def redrive(self, program_id: str, now: datetime, actor: str) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            status = await conn.execute(
                """UPDATE notification_deliveries
                   SET status = 'PENDING', attempts = 0, next_attempt_at = $2, last_error = ''
                   WHERE program_id = $1 AND status = 'DEAD'""",
                uuid_or_not_found(program_id, "program"),
                now,
            )
            count = int(status.split()[-1])
            await audit(conn, actor, "redrive_notifications", program_id, {"count": count})
        return count
