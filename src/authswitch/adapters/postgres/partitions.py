"""Monthly partitions of the journal, holds and outbox (migration 0007): made ahead of time,
and dropped once older than the retention, when nothing in them is still needed.

Three families of partitions, each dropped whole, month by month (UTC months of
``created_at``):

* ``holds`` (``holds_pYYYYMM``): kept while any hold in it is OPEN; when dropped, its holds'
  keys leave ``hold_keys`` too (a later message under one of them finds its decision);
* ``journal`` (``journal_entries_pYYYYMM`` with ``postings_pYYYYMM``): kept while a daily
  sponsor-bank file (transactions, subledger, chargebacks, settlement) that may cover a day
  of the month is not delivered, or a daily schedule made before the month ended has not yet
  delivered a file due after it; when dropped, what its postings summed to per account and asset is
  added to ``posting_archive_totals``, so balances still equal their postings;
* ``outbox`` (``notifications_pYYYYMM`` with ``notification_deliveries_pYYYYMM``): kept while
  any delivery in it is not DELIVERED (pending, or dead-lettered and waiting for a re-drive).

Every change to a partitioned table's set of partitions takes an ACCESS EXCLUSIVE lock on the
table. Those locks are asked for with NOWAIT and retried a few times, so that maintenance
never waits in the lock queue in front of the hot path; when the tables stay busy it gives up
until its next run. The slow parts of dropping a month (summing its postings, removing its
hold keys) run before, under locks of the month's own partitions only.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import asyncpg

from authswitch.adapters.postgres.errors import translated_methods
from authswitch.adapters.postgres.pool import Connection

__all__ = [
    "FAMILIES",
    "PARTITIONED_TABLES",
    "Partition",
    "PartitionStore",
    "RetentionOutcome",
    "add_months",
    "month_of",
]

log = logging.getLogger(__name__)

# In the order the group committer writes them: locks are always taken in this order.
PARTITIONED_TABLES = (
    "holds",
    "journal_entries",
    "postings",
    "notifications",
    "notification_deliveries",
)
# The tables dropped together, referenced tables first (they are detached last).
FAMILIES: dict[str, tuple[str, ...]] = {
    "holds": ("holds",),
    "journal": ("journal_entries", "postings"),
    "outbox": ("notifications", "notification_deliveries"),
}
# The daily files that read the journal (domain/files.py FileKind.daily).
_DAILY_FILE_KINDS = ["transactions", "subledger", "chargebacks", "settlement", "subledger_sync"]
_NAME = re.compile(r"^([a-z_]+)_p(\d{4})(\d{2})$")
LOCK_ATTEMPTS_MAX = 40
LOCK_PAUSE_S = 0.05
# A maintenance statement may read a whole month (summing its postings, moving its rows out
# of a default partition): it gets this long, not the pool's statement timeout.
STATEMENT_TIMEOUT_S = 600.0


def month_of(at: datetime) -> date:
    """The first day of ``at``'s month, in UTC (partitions are UTC months)."""
    utc = at.astimezone(UTC)
    return date(utc.year, utc.month, 1)


def add_months(month: date, count: int) -> date:
    index = month.year * 12 + month.month - 1 + count
    return date(index // 12, index % 12 + 1, 1)


def partition_name(table: str, month: date) -> str:
    assert table in PARTITIONED_TABLES
    return f"{table}_p{month:%Y%m}"


@dataclass(frozen=True, slots=True)
class Partition:
    table: str
    name: str
    month: date


@dataclass(frozen=True, slots=True)
class RetentionOutcome:
    family: str
    month: date
    dropped: bool
    reason: str = ""  # why it was kept


class _Kept(Exception):
    """A month of a family that must stay (its reason is the message)."""


@translated_methods
class PartitionStore:
    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        *,
        lock_attempts_max: int = LOCK_ATTEMPTS_MAX,
        lock_pause_s: float = LOCK_PAUSE_S,
    ) -> None:
        assert lock_attempts_max > 0
        self.pool = pool
        self.lock_attempts_max = lock_attempts_max
        self.lock_pause_s = lock_pause_s
        self.statement_timeout_s = STATEMENT_TIMEOUT_S

    async def partitions(self) -> list[Partition]:
        """The monthly partitions (not the default ones), oldest first."""
        rows = await self.pool.fetch(
            """SELECT parent.relname, child.relname
               FROM pg_inherits i
               JOIN pg_class child ON child.oid = i.inhrelid
               JOIN pg_class parent ON parent.oid = i.inhparent
               WHERE parent.relname = ANY($1::text[])
                 AND parent.relnamespace = current_schema()::regnamespace""",
            list(PARTITIONED_TABLES),
        )
        found = []
        for table, name in rows:
            match = _NAME.match(name)
            if match and match[1] == table:
                found.append(Partition(table, name, date(int(match[2]), int(match[3]), 1)))
        return sorted(found, key=lambda p: (p.month, PARTITIONED_TABLES.index(p.table)))

    async def ensure(self, months: Sequence[date]) -> int:
        """Create the partitions of ``months`` that are missing (moving their rows out of the
        default partitions); returns how many tables were created, 0 as well when the tables
        were too busy to lock (the next run tries again)."""
        present = {(p.table, p.month) for p in await self.partitions()}
        missing = sorted({m for m in months for t in PARTITIONED_TABLES if (t, m) not in present})
        if not missing:
            return 0
        async with self.pool.acquire() as conn, conn.transaction():
            await self._long_statements(conn)
            if not await self._lock(conn, PARTITIONED_TABLES):
                log.info("partitions: tables busy, creating them at the next run")
                return 0
            created = 0
            for month in missing:
                created += int(
                    await conn.fetchval(
                        "SELECT authswitch_ensure_partitions($1)",
                        month,
                        timeout=self.statement_timeout_s,
                    )
                )
        log.info("partitions created", extra={"count": created, "months": len(missing)})
        return created

    async def retire(self, before: date) -> list[RetentionOutcome]:
        """Drop every family's months before ``before`` whose data is no longer needed (the
        module docstring has the rules); returns what was dropped and what kept, and why."""
        by_month: dict[date, set[str]] = {}
        for partition in await self.partitions():
            if partition.month < before:
                by_month.setdefault(partition.month, set()).add(partition.table)
        outcomes: list[RetentionOutcome] = []
        for month in sorted(by_month):
            for family, tables in FAMILIES.items():
                if not set(tables) <= by_month[month]:
                    continue
                try:
                    async with self.pool.acquire() as conn, conn.transaction():
                        await self._long_statements(conn)
                        await getattr(self, f"_retire_{family}")(conn, month)
                except _Kept as kept:
                    outcomes.append(RetentionOutcome(family, month, False, str(kept)))
                    log.info(
                        "retention: month kept",
                        extra={"family": family, "month": f"{month:%Y-%m}", "reason": str(kept)},
                    )
                else:
                    outcomes.append(RetentionOutcome(family, month, True))
                    log.info(
                        "retention: month dropped",
                        extra={"family": family, "month": f"{month:%Y-%m}"},
                    )
        return outcomes

    # -- one family's month, inside the caller's transaction -------------------------------

    async def _retire_holds(self, conn: Connection, month: date) -> None:
        holds = _quote(partition_name("holds", month))
        open_holds = f"SELECT EXISTS (SELECT 1 FROM {holds} WHERE status = 'OPEN')"  # noqa: S608
        if await conn.fetchval(open_holds):
            raise _Kept("a hold in it is still open")
        await conn.execute(
            f"""DELETE FROM hold_keys k USING {holds} h
                WHERE k.source = h.source AND k.message_id = h.message_id
                  AND k.hold_id = h.id""",  # noqa: S608 - a partition name, quoted
            timeout=self.statement_timeout_s,
        )
        await self._lock_or_keep(conn, ("holds",))
        if await conn.fetchval(open_holds):  # opened since the first look (a back-dated hold)
            raise _Kept("a hold in it is still open")
        await self._drop(conn, ("holds",), month)

    async def _retire_journal(self, conn: Connection, month: date) -> None:
        entries = _quote(partition_name("journal_entries", month))
        postings = _quote(partition_name("postings", month))
        # No back-dated row may arrive while the month is summed up.
        await conn.execute(f"LOCK TABLE {entries}, {postings} IN SHARE MODE")
        pending = await conn.fetchval(
            """SELECT EXISTS (
                   SELECT 1 FROM file_deliveries f JOIN file_schedules s ON s.id = f.schedule_id
                   WHERE s.kind = ANY($1::text[]) AND f.delivered_at IS NULL
                     AND f.due_at >= $2::timestamptz
                     AND f.due_at < $3::timestamptz + interval '2 days')
               OR EXISTS (
                   SELECT 1 FROM file_schedules s
                   WHERE s.enabled AND s.kind = ANY($1::text[]) AND s.created_at < $3::timestamptz
                     AND NOT EXISTS (
                         SELECT 1 FROM file_deliveries f
                         WHERE f.schedule_id = s.id AND f.delivered_at IS NOT NULL
                           AND f.due_at >= $3))""",
            _DAILY_FILE_KINDS,
            _start(month),
            _start(add_months(month, 1)),
        )
        if pending:
            raise _Kept("a daily file that may cover one of its days is not delivered yet")
        await conn.execute(
            f"""INSERT INTO posting_archive_totals AS t (account_id, asset, amount_minor)
                SELECT account_id, asset, sum(amount_minor) FROM {postings}
                GROUP BY account_id, asset
                ON CONFLICT (account_id, asset) DO UPDATE
                    SET amount_minor = t.amount_minor + EXCLUDED.amount_minor""",  # noqa: S608
            timeout=self.statement_timeout_s,
        )
        await self._lock_or_keep(conn, ("journal_entries", "postings"))
        await self._drop(conn, ("postings", "journal_entries"), month)

    async def _retire_outbox(self, conn: Connection, month: date) -> None:
        deliveries = _quote(partition_name("notification_deliveries", month))
        undelivered = f"SELECT EXISTS (SELECT 1 FROM {deliveries} WHERE status <> 'DELIVERED')"  # noqa: S608
        if await conn.fetchval(undelivered):
            raise _Kept("a notification in it is not delivered yet")
        await self._lock_or_keep(conn, ("notifications", "notification_deliveries"))
        if await conn.fetchval(undelivered):
            raise _Kept("a notification in it is not delivered yet")
        await self._drop(conn, ("notification_deliveries", "notifications"), month)

    async def _drop(self, conn: Connection, tables: Sequence[str], month: date) -> None:
        """Detach and drop one month of ``tables``, referencing tables first."""
        for table in tables:
            name = _quote(partition_name(table, month))
            await conn.execute(f"ALTER TABLE {_quote(table)} DETACH PARTITION {name}")
            await conn.execute(f"DROP TABLE {name}")

    async def _long_statements(self, conn: Connection) -> None:
        ms = int(self.statement_timeout_s * 1000)
        await conn.execute(
            f"SET LOCAL statement_timeout = {ms}; "
            f"SET LOCAL idle_in_transaction_session_timeout = {ms}"
        )

    # -- locks -------------------------------------------------------------------------------

    async def _lock(self, conn: Connection, tables: Sequence[str]) -> bool:
        """ACCESS EXCLUSIVE locks on ``tables`` (in PARTITIONED_TABLES order), never waiting
        in the queue: each try is NOWAIT, in a savepoint, a pause apart. False: still busy."""
        ordered = sorted(tables, key=PARTITIONED_TABLES.index)
        statement = (
            f"LOCK TABLE {', '.join(_quote(t) for t in ordered)} IN ACCESS EXCLUSIVE MODE NOWAIT"
        )
        for attempt in range(self.lock_attempts_max):
            try:
                async with conn.transaction():  # a savepoint: a refused lock leaves the rest
                    await conn.execute(statement)
            except asyncpg.LockNotAvailableError:
                if attempt + 1 < self.lock_attempts_max:
                    await asyncio.sleep(self.lock_pause_s)
            else:
                return True
        return False

    async def _lock_or_keep(self, conn: Connection, tables: Sequence[str]) -> None:
        if not await self._lock(conn, tables):
            raise _Kept("its tables stayed busy; the next run tries again")


def _start(month: date) -> datetime:
    return datetime(month.year, month.month, 1, tzinfo=UTC)


def _quote(name: str) -> str:
    """A table name of this module (checked, so that it can be formatted into DDL)."""
    assert name in PARTITIONED_TABLES or (
        (match := _NAME.match(name)) is not None and match[1] in PARTITIONED_TABLES
    ), name
    return f'"{name}"'
