"""File schedules and their deliveries (service/files.py): the schedules an admin creates,
lists, enables and disables, each change audited in its own transaction; and the rows of
``file_deliveries``, one per schedule and due time, in which a delivery is claimed (a lease
that only one replica wins), fails with a time to retry, or is recorded as delivered.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from authswitch.adapters.postgres.audit import audit
from authswitch.adapters.postgres.errors import translated_methods
from authswitch.adapters.postgres.pool import Connection
from authswitch.domain.files import ScheduleRow

__all__ = ["FailedDelivery", "FileScheduleStore", "ScheduleChange"]


@dataclass(frozen=True, slots=True)
class FailedDelivery:
    """A due file not delivered yet whose last attempt failed."""

    schedule_id: str
    due_at: datetime
    attempts: int
    last_error: str


_SCHEDULE = """SELECT id::text, kind, client_id::text, program_id::text, cron, time_zone, prefix,
                      sink, directory, sftp_host, sftp_port, sftp_user, sftp_key_secret,
                      sftp_known_hosts_secret, remote_dir, enabled, created_at
               FROM file_schedules"""


class ScheduleChange:
    """A change of the schedules, on one connection in a transaction."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def client_exists(self, client_id: str) -> bool:
        return bool(await self.conn.fetchval("SELECT true FROM clients WHERE id = $1", client_id))

    async def program_time_zone(self, program_id: str) -> str | None:
        """The program's time zone; None when there is no such program."""
        zone = await self.conn.fetchval("SELECT time_zone FROM programs WHERE id = $1", program_id)
        return None if zone is None else str(zone)

    async def insert(self, row: ScheduleRow) -> None:
        await self.conn.execute(
            """INSERT INTO file_schedules (id, kind, client_id, program_id, cron, time_zone,
                   prefix, sink, directory, sftp_host, sftp_port, sftp_user,
                   sftp_key_secret, sftp_known_hosts_secret, remote_dir, enabled,
                   created_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
                       $16, $17)""",
            row.id, row.kind, row.client_id, row.program_id, row.cron, row.time_zone,
            row.prefix, row.sink, row.directory, row.sftp_host, row.sftp_port, row.sftp_user,
            row.sftp_key_secret, row.sftp_known_hosts_secret, row.remote_dir, row.enabled,
            row.created_at,
        )  # fmt: skip

    async def anchor_chain(self, schedule_id: str, at: datetime) -> None:
        """The first window of a subledger sync schedule: it ends at ``at``, with this
        transaction's snapshot, so that the first file covers what is posted after it."""
        await self.conn.execute(
            """INSERT INTO subledger_sync_windows (schedule_id, window_end, snapshot, taken_at)
               VALUES ($1, $2, pg_current_snapshot(), now())""",
            schedule_id, at,
        )  # fmt: skip

    async def set_enabled(self, schedule_id: str, enabled: bool) -> None:
        await self.conn.execute(
            "UPDATE file_schedules SET enabled = $2 WHERE id = $1", schedule_id, enabled
        )

    async def audit(self, actor: str, action: str, subject_id: str, detail: dict[str, Any]) -> None:
        await audit(self.conn, actor, action, subject_id, detail)


@translated_methods
class FileScheduleStore:
    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self.pool = pool

    @contextlib.asynccontextmanager
    async def change(self) -> AsyncIterator[ScheduleChange]:
        """A transaction: every statement of the change, or none of them."""
        async with self.pool.acquire() as conn, conn.transaction():
            yield ScheduleChange(conn)

    async def schedule(self, schedule_id: str) -> ScheduleRow | None:
        row = await self.pool.fetchrow(_SCHEDULE + " WHERE id = $1", schedule_id)
        return None if row is None else ScheduleRow(*row)

    async def schedules(
        self,
        *,
        program_id: str | None,
        client_id: str | None,
        limit: int,
        after: tuple[datetime, str] | None,
    ) -> list[ScheduleRow]:
        """A page of the schedules (of a program, of a client, or all), oldest first, after
        the (created_at, id) of the previous page's last one."""
        cursor_at, cursor_id = after or (None, None)
        rows = await self.pool.fetch(
            _SCHEDULE
            + """ WHERE ($1::uuid IS NULL OR program_id = $1)
                              AND ($2::uuid IS NULL OR client_id = $2)
                              AND ($3::timestamptz IS NULL
                                   OR (created_at, id) > ($3, $4::uuid))
                            ORDER BY created_at, id LIMIT $5""",
            program_id,
            client_id,
            cursor_at,
            cursor_id,
            limit,
        )
        return [ScheduleRow(*r) for r in rows]

    async def enabled_schedules(self) -> list[ScheduleRow]:
        """Every enabled schedule, oldest first."""
        rows = await self.pool.fetch(_SCHEDULE + " WHERE enabled ORDER BY created_at, id")
        return [ScheduleRow(*r) for r in rows]

    async def undelivered_due_times(self, schedule_id: str, until: datetime) -> list[datetime]:
        """The due times up to ``until`` whose file is not delivered yet (failed, backing
        off, or being delivered)."""
        rows = await self.pool.fetch(
            """SELECT due_at FROM file_deliveries
               WHERE schedule_id = $1 AND delivered_at IS NULL AND due_at <= $2""",
            schedule_id, until,
        )  # fmt: skip
        return [r[0] for r in rows]

    async def delivered_due_times(self, schedule_id: str, since: datetime) -> set[datetime]:
        """The due times from ``since`` on whose file was delivered."""
        rows = await self.pool.fetch(
            """SELECT due_at FROM file_deliveries
               WHERE schedule_id = $1 AND due_at >= $2 AND delivered_at IS NOT NULL""",
            schedule_id,
            since,
        )
        return {r[0] for r in rows}

    async def claim_delivery(
        self, schedule_id: str, due_at: datetime, now: datetime, lease_until: datetime
    ) -> int | None:
        """Claim the delivery of a due file until ``lease_until``; returns its attempt, or
        None when it is delivered, claimed by another replica, or waiting to be retried."""
        attempts = await self.pool.fetchval(
            """INSERT INTO file_deliveries AS f (schedule_id, due_at, attempts, claimed_at,
                   next_attempt_at)
               VALUES ($1, $2, 1, $3, $4)
               ON CONFLICT (schedule_id, due_at) DO UPDATE
                 SET attempts = f.attempts + 1, claimed_at = EXCLUDED.claimed_at,
                     next_attempt_at = EXCLUDED.next_attempt_at
                 WHERE f.delivered_at IS NULL AND f.next_attempt_at <= EXCLUDED.claimed_at
               RETURNING attempts""",
            schedule_id, due_at, now, lease_until,
        )  # fmt: skip
        return None if attempts is None else int(attempts)

    async def delivery_failed(
        self, schedule_id: str, due_at: datetime, error: str, retry_at: datetime
    ) -> None:
        await self.pool.execute(
            """UPDATE file_deliveries SET last_error = $3, next_attempt_at = $4
               WHERE schedule_id = $1 AND due_at = $2""",
            schedule_id, due_at, error, retry_at,
        )  # fmt: skip

    async def delivered(
        self,
        schedule_id: str,
        due_at: datetime,
        *,
        at: datetime,
        file_name: str,
        records: int,
        destination: str,
    ) -> None:
        await self.pool.execute(
            """UPDATE file_deliveries SET delivered_at = $3, file_name = $4, records = $5,
                   destination = $6, last_error = ''
               WHERE schedule_id = $1 AND due_at = $2""",
            schedule_id, due_at, at, file_name, records, destination,
        )  # fmt: skip

    async def failed_deliveries(self, schedule_id: str | None) -> list[FailedDelivery]:
        """Due files of one schedule (or all) whose last attempt failed, oldest first."""
        rows = await self.pool.fetch(
            """SELECT f.schedule_id::text, f.due_at, f.attempts, f.last_error
               FROM file_deliveries f
               WHERE f.delivered_at IS NULL AND f.last_error <> ''
                 AND ($1::uuid IS NULL OR f.schedule_id = $1)
               ORDER BY f.due_at""",
            schedule_id,
        )
        return [FailedDelivery(r[0], r[1], r[2], r[3]) for r in rows]

    async def undelivered_by_kind(self) -> dict[str, int]:
        """How many due files of each kind are not delivered yet."""
        rows = await self.pool.fetch(
            """SELECT s.kind, count(*) FROM file_deliveries f
               JOIN file_schedules s ON s.id = f.schedule_id
               WHERE f.delivered_at IS NULL GROUP BY s.kind"""
        )
        return {r[0]: int(r[1]) for r in rows}
