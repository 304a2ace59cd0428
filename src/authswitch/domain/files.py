"""When scheduled files are due and what each covers (pure: the caller passes the time).

A schedule is a five-field cron expression read in the schedule's time zone. A day file
(transactions, chargebacks, subledger net changes, settlement position) due at a time
covers the local day before it, so "30 2 * * *" delivers yesterday's file at 02:30 every
day; a missed day is caught up, up to ``CATCH_UP_MAX`` due times back. A subledger sync
file due at a time covers what changed from the previous due time up to it, whatever the
day, so a schedule may run several times a day. A snapshot (balances, FBO balances) is
taken when it is delivered; only the latest due time counts, since a snapshot taken now
cannot stand for an earlier one.

A schedule as it is kept is :class:`ScheduleRow` (read by ``adapters/postgres/files.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import Enum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

__all__ = [
    "CATCH_UP_MAX",
    "FileKind",
    "ScheduleRow",
    "covered_day",
    "due_times",
    "valid_cron",
    "valid_zone",
]

CATCH_UP_MAX = 31


class FileKind(Enum):
    BALANCES = "balances"
    TRANSACTIONS = "transactions"
    CHARGEBACKS = "chargebacks"
    SUBLEDGER = "subledger"
    FBO = "fbo"
    SETTLEMENT = "settlement"
    SUBLEDGER_SYNC = "subledger_sync"

    @property
    def daily(self) -> bool:
        """Covers a past span, a day or a sync window (rather than a snapshot of now)."""
        return self in (
            FileKind.TRANSACTIONS,
            FileKind.CHARGEBACKS,
            FileKind.SUBLEDGER,
            FileKind.SETTLEMENT,
            FileKind.SUBLEDGER_SYNC,
        )

    @property
    def chained(self) -> bool:
        """Each file covers what changed since the previous one of its schedule (rather
        than a day): the files are delivered in order, none skipped."""
        return self is FileKind.SUBLEDGER_SYNC

    @property
    def of_client(self) -> bool:
        return self is FileKind.BALANCES


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    """A file schedule as it is kept."""

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


def valid_cron(expression: str) -> bool:
    """Five fields (minute hour day month weekday), as cron has them."""
    return len(expression.split()) == 5 and croniter.is_valid(expression)


def valid_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def due_times(
    expression: str, zone: str, *, now: datetime, since: datetime, limit: int
) -> list[datetime]:
    """The due times after ``since`` and at or before ``now``, at most the ``limit`` latest,
    oldest first."""
    assert limit > 0
    # get_prev is strictly before its start, and ``now`` itself counts when it is due.
    start = now.astimezone(ZoneInfo(zone)).replace(microsecond=0) + timedelta(seconds=1)
    iterator = croniter(expression, start)
    times: list[datetime] = []
    while len(times) < limit:
        previous = iterator.get_prev(datetime)
        assert isinstance(previous, datetime)
        if previous <= since:
            break
        times.append(previous)
    return sorted(t for t in times if t > since)


def covered_day(due: datetime, zone: str) -> date:
    """The local day a day file due at ``due`` covers: the one before."""
    return due.astimezone(ZoneInfo(zone)).date() - timedelta(days=1)
