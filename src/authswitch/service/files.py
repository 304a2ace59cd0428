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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from authswitch import metrics
from authswitch.adapters.postgres.disputes import parse_id
from authswitch.adapters.postgres.files import FileScheduleStore, ScheduleChange
from authswitch.adapters.sinks import DirectorySink, FileSink
from authswitch.domain.files import (
    CATCH_UP_MAX,
    FileKind,
    ScheduleRow,
    covered_day,
    due_times,
    valid_cron,
    valid_zone,
)
from authswitch.domain.messages.admin import NewFileSchedule, SftpDestination
from authswitch.domain.reports import valid_prefix
from authswitch.domain.retry import backoff_ms
from authswitch.errors import NotFound, RequestError
from authswitch.secrets import SecretStore
from authswitch.service.clock import Clock
from authswitch.service.ids import new_id
from authswitch.service.reports import ReportWriter

__all__ = ["DeliverySettings", "FileDeliveries", "FileSchedules"]

log = logging.getLogger(__name__)

ERROR_TEXT_MAX = 500


class FileSchedules:
    """The admin side: create, list, enable and disable schedules."""

    def __init__(self, store: FileScheduleStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    async def create(self, schedule: NewFileSchedule, *, actor: str) -> ScheduleRow:
        """The schedule made, as stored."""
        kind, owner = _checked_kind_and_owner(schedule)
        destination = _checked_destination(schedule)
        schedule_id, created_at = new_id(), self.clock.now()
        sftp = schedule.sftp or SftpDestination()
        async with self.store.change() as change:
            zone = await _time_zone(change, kind, owner, schedule.time_zone)
            await change.insert(
                ScheduleRow(
                    schedule_id, kind.value, owner if kind.of_client else None,
                    None if kind.of_client else owner, schedule.cron, zone, schedule.prefix,
                    destination, schedule.directory or "", sftp.host, sftp.port or 22,
                    sftp.username, sftp.key_secret, sftp.known_hosts_secret,
                    sftp.remote_dir or ".", True, created_at,
                )
            )  # fmt: skip
            if kind.chained:
                # The anchor of the chain: the first file covers what is posted from now on.
                await change.anchor_chain(schedule_id, created_at)
            await change.audit(
                actor, "create_file_schedule", schedule_id,
                {"kind": kind.value, "cron": schedule.cron, "sink": destination},
            )  # fmt: skip
        return await self.get(schedule_id)

    async def get(self, schedule_id: str) -> ScheduleRow:
        parsed = parse_id(schedule_id)
        row = None if parsed is None else await self.store.schedule(parsed)
        if row is None:
            raise NotFound(f"file schedule {schedule_id} does not exist")
        return row

    async def list(
        self,
        *,
        program_id: str = "",
        client_id: str = "",
        limit: int = 1_000,
        after: tuple[datetime, str] | None = None,
    ) -> list[ScheduleRow]:
        """Oldest first; ``after`` is the (created_at, id) of the last schedule of the
        previous page."""
        for value in (program_id, client_id):
            if value and parse_id(value) is None:
                raise RequestError(f"{value!r} is not an id")
        return await self.store.schedules(
            program_id=program_id or None, client_id=client_id or None, limit=limit, after=after
        )

    async def set_enabled(self, schedule_id: str, enabled: bool, *, actor: str) -> None:
        await self.get(schedule_id)
        async with self.store.change() as change:
            await change.set_enabled(schedule_id, enabled)
            await change.audit(
                actor, "set_file_schedule_enabled", schedule_id, {"enabled": enabled}
            )


def _checked_kind_and_owner(schedule: NewFileSchedule) -> tuple[FileKind, str]:
    """A new schedule's file kind and its owner's id (a client's for a balance report, a
    program's for every other file), its cron, time zone and prefix checked; RequestError
    on anything amiss."""
    kind = schedule.kind
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
    return kind, owner


def _checked_destination(schedule: NewFileSchedule) -> str:
    """A new schedule's destination, ``directory`` or ``sftp``, checked; RequestError on
    anything amiss."""
    sftp = schedule.sftp
    if schedule.directory is not None:
        destination = "directory"
        if not schedule.directory.startswith("/"):
            raise RequestError("directory must be an absolute path on the server")
    elif sftp is not None:
        destination = "sftp"
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
    return destination


async def _time_zone(change: ScheduleChange, kind: FileKind, owner: str, asked: str) -> str:
    """A new schedule's time zone: ``asked``, else UTC for a client's balance report and
    the program's own for a program's file; NotFound when its owner does not exist."""
    if kind.of_client:
        if not await change.client_exists(owner):
            raise NotFound(f"client {owner} does not exist")
        return asked or "UTC"
    program_zone = await change.program_time_zone(owner)
    if program_zone is None:
        raise NotFound(f"program {owner} does not exist")
    return asked or program_zone


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
        store: FileScheduleStore,
        writer: ReportWriter,
        secrets: SecretStore,
        clock: Clock,
        spool: Path,
        settings: DeliverySettings | None = None,
        *,
        sink_for: Callable[[ScheduleRow], FileSink] | None = None,
    ) -> None:
        self.store = store
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
            schedules = [await FileSchedules(self.store, self.clock).get(schedule_id)]
        else:
            schedules = await self.store.enabled_schedules()
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
                pending = await self.store.undelivered_due_times(schedule.id, now)
                due = sorted(set(due) | set(pending))
            if not due:
                continue
            done = await self.store.delivered_due_times(schedule.id, due[0])
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
        attempts = await self.store.claim_delivery(
            schedule.id, due_at, now, now + timedelta(seconds=self.settings.lease_s)
        )
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
            await self.store.delivery_failed(
                schedule.id, due_at, error, now + timedelta(milliseconds=retry_ms)
            )
            metrics.FILE_DELIVERIES.labels(kind.value, "failed").inc()
            log.warning(
                "file delivery failed; it will be retried",
                extra={"schedule": schedule.id, "kind": kind.value, "due_at": due_at.isoformat(),
                       "attempt": attempts, "error": type(exc).__name__},
            )  # fmt: skip
            return False
        await self.store.delivered(
            schedule.id, due_at, at=self.clock.now(), file_name=name, records=records,
            destination=sink.describe(),
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
        pending = await self.store.undelivered_by_kind()
        for kind in FileKind:
            metrics.FILE_DELIVERIES_PENDING.labels(kind.value).set(pending.get(kind.value, 0))
