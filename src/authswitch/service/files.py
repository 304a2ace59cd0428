"""Scheduled delivery of reports and sponsor-bank files to a directory or an SFTP server.

Each schedule names a file kind, a cron expression in a time zone, and a destination. Every
due time is claimed in ``file_deliveries`` before anything is written: the claim is a lease
(another replica takes over a delivery whose replica died), a failed delivery is retried
with backoff, and a delivered one is never sent again, however often the job runs. The
file is built from one consistent snapshot into a local spool, then handed to the sink,
which makes it appear under its name only when complete.
"""

from __future__ import annotations

import logging
import random
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from authswitch import metrics
from authswitch.adapters.postgres.audit import audit
from authswitch.adapters.postgres.disputes import parse_id
from authswitch.adapters.postgres.errors import translated_methods
from authswitch.adapters.sinks import DirectorySink, FileSink
from authswitch.domain.files import (
    CATCH_UP_MAX,
    FileKind,
    covered_day,
    due_times,
    valid_cron,
    valid_zone,
)
from authswitch.domain.reports import valid_prefix
from authswitch.domain.retry import backoff_ms
from authswitch.errors import NotFound, RequestError
from authswitch.secrets import SecretStore
from authswitch.service.clock import Clock
from authswitch.service.reports import ReportWriter
from authswitch.v1 import ledger_admin_pb2

__all__ = ["DeliverySettings", "FileDeliveries", "FileSchedules", "ScheduleRow"]

log = logging.getLogger(__name__)

_KINDS = {
    ledger_admin_pb2.FILE_KIND_BALANCES: FileKind.BALANCES,
    ledger_admin_pb2.FILE_KIND_TRANSACTIONS: FileKind.TRANSACTIONS,
    ledger_admin_pb2.FILE_KIND_CHARGEBACKS: FileKind.CHARGEBACKS,
    ledger_admin_pb2.FILE_KIND_SUBLEDGER: FileKind.SUBLEDGER,
    ledger_admin_pb2.FILE_KIND_FBO: FileKind.FBO,
    ledger_admin_pb2.FILE_KIND_SETTLEMENT: FileKind.SETTLEMENT,
    ledger_admin_pb2.FILE_KIND_SUBLEDGER_SYNC: FileKind.SUBLEDGER_SYNC,
}
_WIRE_KINDS = {kind: wire for wire, kind in _KINDS.items()}
ERROR_TEXT_MAX = 500


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    id: str
    kind: str
    client_id: str | None
    program_id: str | None
    cron: str
    time_zone: str
    prefix: str
    sink: str
    directory: str
    sftp_host: str
    sftp_port: int
    sftp_user: str
    sftp_key_secret: str
    sftp_known_hosts_secret: str
    remote_dir: str
    enabled: bool
    created_at: datetime

    @property
    def file_kind(self) -> FileKind:
        return FileKind(self.kind)


_SCHEDULE = """SELECT id::text, kind, client_id::text, program_id::text, cron, time_zone, prefix,
                      sink, directory, sftp_host, sftp_port, sftp_user, sftp_key_secret,
                      sftp_known_hosts_secret, remote_dir, enabled, created_at
               FROM file_schedules"""


def schedule_message(row: ScheduleRow) -> ledger_admin_pb2.FileSchedule:
    message = ledger_admin_pb2.FileSchedule(
        schedule_id=row.id,
        kind=_WIRE_KINDS[row.file_kind],
        client_id=row.client_id or "",
        program_id=row.program_id or "",
        cron=row.cron,
        time_zone=row.time_zone,
        prefix=row.prefix,
        enabled=row.enabled,
    )
    if row.sink == "directory":
        message.directory = row.directory
    else:
        message.sftp.CopyFrom(
            ledger_admin_pb2.SftpDestination(
                host=row.sftp_host, port=row.sftp_port, username=row.sftp_user,
                key_secret=row.sftp_key_secret, known_hosts_secret=row.sftp_known_hosts_secret,
                remote_dir=row.remote_dir,
            )
        )  # fmt: skip
    return message


@translated_methods
class FileSchedules:
    """The admin side: create, list, enable and disable schedules."""

    def __init__(self, pool: asyncpg.Pool[Any], clock: Clock) -> None:
        self.pool = pool
        self.clock = clock

    async def create(
        self, schedule: ledger_admin_pb2.FileSchedule, *, actor: str
    ) -> ledger_admin_pb2.FileSchedule:
        kind = _KINDS.get(schedule.kind)
        if kind is None:
            raise RequestError("kind must be a known file kind")
        if not valid_cron(schedule.cron):
            raise RequestError("cron must be five fields: minute hour day month weekday")
        if schedule.time_zone and not valid_zone(schedule.time_zone):
            raise RequestError(f"unknown time zone {schedule.time_zone!r}")
        owner = schedule.client_id if kind.of_client else schedule.program_id
        other = schedule.program_id if kind.of_client else schedule.client_id
        if parse_id(owner) is None or other:
            raise RequestError(
                "a balance report belongs to a client (client_id); every other file to a "
                "program (program_id)"
            )
        if kind.of_client and not valid_prefix(schedule.prefix):
            raise RequestError("prefix must be 1 to 15 letters, digits or underscores")
        if not kind.of_client and schedule.prefix:
            raise RequestError("prefix is for balance reports only")
        destination = schedule.WhichOneof("destination")
        sftp = schedule.sftp
        if destination == "directory":
            if not schedule.directory.startswith("/"):
                raise RequestError("directory must be an absolute path on the server")
        elif destination == "sftp":
            if not sftp.host or not sftp.username:
                raise RequestError("sftp needs a host and a username")
            if not 0 <= sftp.port <= 65535:
                raise RequestError("sftp port must be 1 to 65535")
            if not (
                SecretStore.valid_name(sftp.key_secret)
                and SecretStore.valid_name(sftp.known_hosts_secret)
            ):
                raise RequestError(
                    "sftp needs key_secret and known_hosts_secret: names of secrets holding "
                    "the private key and the server's known_hosts lines"
                )
        else:
            raise RequestError("a schedule needs a destination: directory or sftp")
        schedule_id, created_at = str(uuid.uuid4()), self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            if kind.of_client:
                zone = schedule.time_zone or "UTC"
                if not await conn.fetchval("SELECT true FROM clients WHERE id = $1", owner):
                    raise NotFound(f"client {owner} does not exist")
            else:
                program_zone = await conn.fetchval(
                    "SELECT time_zone FROM programs WHERE id = $1", owner
                )
                if program_zone is None:
                    raise NotFound(f"program {owner} does not exist")
                zone = schedule.time_zone or program_zone
            await conn.execute(
                """INSERT INTO file_schedules (id, kind, client_id, program_id, cron, time_zone,
                       prefix, sink, directory, sftp_host, sftp_port, sftp_user,
                       sftp_key_secret, sftp_known_hosts_secret, remote_dir, enabled,
                       created_at)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
                           true, $16)""",
                schedule_id, kind.value, owner if kind.of_client else None,
                None if kind.of_client else owner, schedule.cron, zone, schedule.prefix,
                destination, schedule.directory, sftp.host, sftp.port or 22, sftp.username,
                sftp.key_secret, sftp.known_hosts_secret, sftp.remote_dir or ".",
                created_at,
            )  # fmt: skip
            if kind.chained:
                # The anchor of the chain: the first file covers what is posted from now on.
                await conn.execute(
                    """INSERT INTO subledger_sync_windows (schedule_id, window_end, snapshot,
                           taken_at)
                       VALUES ($1, $2, pg_current_snapshot(), now())""",
                    schedule_id, created_at,
                )  # fmt: skip
            await audit(
                conn, actor, "create_file_schedule", schedule_id,
                {"kind": kind.value, "cron": schedule.cron, "sink": destination},
            )  # fmt: skip
        return schedule_message(await self.get(schedule_id))

    async def get(self, schedule_id: str) -> ScheduleRow:
        parsed = parse_id(schedule_id)
        row = (
            None
            if parsed is None
            else await self.pool.fetchrow(_SCHEDULE + " WHERE id = $1", parsed)
        )
        if row is None:
            raise NotFound(f"file schedule {schedule_id} does not exist")
        return ScheduleRow(*row)

    async def list(
        self,
        *,
        program_id: str = "",
        client_id: str = "",
        limit: int = 1_000,
        after: tuple[datetime, str] | None = None,
    ) -> list[tuple[ledger_admin_pb2.FileSchedule, datetime]]:
        """Oldest first, each with its creation time; ``after`` is the (created_at, id) of
        the last schedule of the previous page."""
        for value in (program_id, client_id):
            if value and parse_id(value) is None:
                raise RequestError(f"{value!r} is not an id")
        cursor_at, cursor_id = after or (None, None)
        rows = await self.pool.fetch(
            _SCHEDULE
            + """ WHERE ($1::uuid IS NULL OR program_id = $1)
                              AND ($2::uuid IS NULL OR client_id = $2)
                              AND ($3::timestamptz IS NULL
                                   OR (created_at, id) > ($3, $4::uuid))
                            ORDER BY created_at, id LIMIT $5""",
            program_id or None,
            client_id or None,
            cursor_at,
            cursor_id,
            limit,
        )
        listed = [ScheduleRow(*r) for r in rows]
        return [(schedule_message(row), row.created_at) for row in listed]

    async def set_enabled(self, schedule_id: str, enabled: bool, *, actor: str) -> None:
        await self.get(schedule_id)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE file_schedules SET enabled = $2 WHERE id = $1", schedule_id, enabled
            )
            await audit(conn, actor, "set_file_schedule_enabled", schedule_id, {"enabled": enabled})


@dataclass(frozen=True, slots=True)
class DeliverySettings:
    # A claimed delivery is another replica's to take over after this long.
    lease_s: float = 900.0
    # A failed delivery is retried after a backoff growing from the first to the second.
    backoff_initial_ms: int = 60_000
    backoff_max_ms: int = 3_600_000
    # Tries of one delivery attempt against an SFTP server (connection drops, timeouts).
    sftp_attempts: int = 4
    sftp_backoff_initial_ms: int = 1_000
    sftp_backoff_max_ms: int = 30_000


class FileDeliveries:
    """The job: deliver every due file exactly once (at least once on the wire, under one
    name, so a resend after a crash replaces the same file)."""

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        writer: ReportWriter,
        secrets: SecretStore,
        clock: Clock,
        spool: Path,
        settings: DeliverySettings | None = None,
        *,
        sink_for: Callable[[ScheduleRow], FileSink] | None = None,
    ) -> None:
        self.pool = pool
        self.writer = writer
        self.secrets = secrets
        self.clock = clock
        self.spool = spool
        self.settings = settings or DeliverySettings()
        self._sink_for = sink_for or self.sink

    def sink(self, schedule: ScheduleRow) -> FileSink:
        if schedule.sink == "directory":
            return DirectorySink(Path(schedule.directory))
        from authswitch.adapters.sftp import SftpSink  # asyncssh loads only when used

        s = self.settings
        return SftpSink(
            host=schedule.sftp_host, port=schedule.sftp_port, username=schedule.sftp_user,
            client_key=self.secrets.get(schedule.sftp_key_secret),
            known_hosts=self.secrets.get(schedule.sftp_known_hosts_secret),
            remote_dir=schedule.remote_dir, attempts=s.sftp_attempts,
            initial_backoff_ms=s.sftp_backoff_initial_ms, max_backoff_ms=s.sftp_backoff_max_ms,
        )  # fmt: skip

    async def run_due(self, *, schedule_id: str | None = None) -> int:
        """Deliver what is due (of one schedule, or all enabled ones); returns how many
        files were delivered. A failure is recorded and retried later, never raised."""
        now = self.clock.now()
        if schedule_id is not None:
            schedules = [await FileSchedules(self.pool, self.clock).get(schedule_id)]
        else:
            rows = await self.pool.fetch(_SCHEDULE + " WHERE enabled ORDER BY created_at, id")
            schedules = [ScheduleRow(*r) for r in rows]
        delivered = 0
        for schedule in schedules:
            kind = schedule.file_kind
            due = due_times(
                schedule.cron, schedule.time_zone, now=now, since=schedule.created_at,
                limit=CATCH_UP_MAX if kind.daily else 1,
            )  # fmt: skip
            if kind.chained:
                # A chain's files go out in order, each starting where the one before ended:
                # a window still pending (failed, backing off, or being delivered elsewhere)
                # holds back the ones after it, even once past the catch-up horizon.
                pending = await self.pool.fetch(
                    """SELECT due_at FROM file_deliveries
                       WHERE schedule_id = $1 AND delivered_at IS NULL AND due_at <= $2""",
                    schedule.id, now,
                )  # fmt: skip
                due = sorted(set(due) | {r[0] for r in pending})
            if not due:
                continue
            done = {
                r[0]
                for r in await self.pool.fetch(
                    """SELECT due_at FROM file_deliveries
                       WHERE schedule_id = $1 AND due_at >= $2 AND delivered_at IS NOT NULL""",
                    schedule.id,
                    due[0],
                )
            }
            for due_at in due:
                if due_at in done:
                    continue
                if await self._deliver(schedule, due_at, now):
                    delivered += 1
                elif kind.chained:
                    break
        await self._measure()
        return delivered

    async def _deliver(self, schedule: ScheduleRow, due_at: datetime, now: datetime) -> bool:
        attempts = await self.pool.fetchval(
            """INSERT INTO file_deliveries AS f (schedule_id, due_at, attempts, claimed_at,
                   next_attempt_at)
               VALUES ($1, $2, 1, $3, $4)
               ON CONFLICT (schedule_id, due_at) DO UPDATE
                 SET attempts = f.attempts + 1, claimed_at = EXCLUDED.claimed_at,
                     next_attempt_at = EXCLUDED.next_attempt_at
                 WHERE f.delivered_at IS NULL AND f.next_attempt_at <= EXCLUDED.claimed_at
               RETURNING attempts""",
            schedule.id, due_at, now, now + timedelta(seconds=self.settings.lease_s),
        )  # fmt: skip
        if attempts is None:
            return False  # delivered, being delivered elsewhere, or waiting to retry
        kind = schedule.file_kind
        try:
            sink = self._sink_for(schedule)
            self.spool.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=self.spool, prefix="delivery-") as directory:
                spool = DirectorySink(Path(directory))
                name, records = await self._write(schedule, spool, due_at, now)
                await sink.put(Path(directory) / name, name)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:ERROR_TEXT_MAX]
            retry_ms = backoff_ms(
                attempts, initial_ms=self.settings.backoff_initial_ms,
                max_ms=self.settings.backoff_max_ms,
                jitter=random.random(),  # noqa: S311 - spreading retries, not a secret
            )  # fmt: skip
            await self.pool.execute(
                """UPDATE file_deliveries SET last_error = $3, next_attempt_at = $4
                   WHERE schedule_id = $1 AND due_at = $2""",
                schedule.id, due_at, error, now + timedelta(milliseconds=retry_ms),
            )  # fmt: skip
            metrics.FILE_DELIVERIES.labels(kind.value, "failed").inc()
            log.warning(
                "file delivery failed; it will be retried",
                extra={"schedule": schedule.id, "kind": kind.value, "due_at": due_at.isoformat(),
                       "attempt": attempts, "error": type(exc).__name__},
            )  # fmt: skip
            return False
        await self.pool.execute(
            """UPDATE file_deliveries SET delivered_at = $3, file_name = $4, records = $5,
                   destination = $6, last_error = ''
               WHERE schedule_id = $1 AND due_at = $2""",
            schedule.id, due_at, self.clock.now(), name, records, sink.describe(),
        )  # fmt: skip
        metrics.FILE_DELIVERIES.labels(kind.value, "delivered").inc()
        log.info(
            "file delivered",
            extra={"schedule": schedule.id, "kind": kind.value, "file": name,
                   "records": records, "destination": sink.describe()},
        )  # fmt: skip
        return True

    async def _write(
        self, schedule: ScheduleRow, spool: DirectorySink, due_at: datetime, now: datetime
    ) -> tuple[str, int]:
        kind, writer = schedule.file_kind, self.writer
        if kind is FileKind.BALANCES:
            assert schedule.client_id is not None
            return await writer.balance_report(
                spool, client_id=schedule.client_id, prefix=schedule.prefix, at=now
            )
        assert schedule.program_id is not None
        program_id = schedule.program_id
        if kind is FileKind.FBO:
            return await writer.fbo_balances(spool, program_id=program_id, at=now)
        day = covered_day(due_at, schedule.time_zone)
        if kind is FileKind.TRANSACTIONS:
            return await writer.transactions(spool, program_id=program_id, day=day)
        if kind is FileKind.CHARGEBACKS:
            return await writer.chargebacks(spool, program_id=program_id, day=day)
        if kind is FileKind.SETTLEMENT:
            return await writer.settlement(spool, program_id=program_id, day=day)
        if kind is FileKind.SUBLEDGER_SYNC:
            return await writer.subledger_sync(
                spool, schedule_id=schedule.id, program_id=program_id, window_end=due_at
            )
        return await writer.subledger_net_changes(spool, program_id=program_id, day=day)

    async def _measure(self) -> None:
        rows = await self.pool.fetch(
            """SELECT s.kind, count(*) FROM file_deliveries f
               JOIN file_schedules s ON s.id = f.schedule_id
               WHERE f.delivered_at IS NULL GROUP BY s.kind"""
        )
        pending = {r[0]: int(r[1]) for r in rows}
        for kind in FileKind:
            metrics.FILE_DELIVERIES_PENDING.labels(kind.value).set(pending.get(kind.value, 0))
