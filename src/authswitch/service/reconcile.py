"""Reconciliation (seed 002, DESIGN.md §5.6 and §7): the ledger proves itself.

Checks, each reporting its breaks:

* ``journal_balanced`` — every journal entry's postings sum to zero per asset;
* ``balance_equals_postings`` — each balance's actual figure is the sum of its postings;
* ``authorized_equals_open_holds`` — its authorised figure is the sum of its open holds, so
  available = actual - open holds;
* ``program_closes`` — per program and asset, customer balances plus the clearing and fee
  income accounts sum to zero (what customers hold is what the clearing subledger owes);
* ``cache_equals_postgres`` — every balance cached in Redis equals Postgres (re-read a few
  times before it counts, as decisions in flight legitimately differ for a moment);
* ``fbo_matches`` — optionally, the partner's daily pooled FBO balance file: every owner's
  balance, and the total, equal authswitch's.

Aggregations run in Postgres and return only the breaks, so the run's memory does not grow
with the ledger (adapters/postgres/reconcile.py). The checks of the ledger read one
snapshot, which may be a read replica's (every invariant holds in every committed state);
the cache is compared with the primary, which is what Redis follows. Months of postings
dropped by retention count through ``posting_archive_totals``, what they summed to.
"""

from __future__ import annotations

import asyncio
import csv
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from authswitch import metrics
from authswitch.adapters.postgres.reconcile import LedgerSnapshot, ReconciliationStore
from authswitch.adapters.redis.cache import LedgerCache
from authswitch.domain.money import parse_decimal
from authswitch.errors import RequestError
from authswitch.service.clock import Clock

__all__ = ["CHECKS", "Break", "Reconciler", "ReconciliationReport", "read_fbo_file"]

CHECKS = (
    "journal_balanced",
    "balance_equals_postings",
    "authorized_equals_open_holds",
    "program_closes",
    "cache_equals_postgres",
    "fbo_matches",
)
CACHE_RECHECKS = 3
CACHE_RECHECK_PAUSE_S = 0.2
FBO_FILE_BYTES_MAX = 512 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Break:
    check: str
    subject: str  # what broke: an entry, account/asset, program/asset, owner/asset
    expected_minor: int
    found_minor: int
    detail: str = ""

    @property
    def drift_minor(self) -> int:
        return abs(self.found_minor - self.expected_minor)


@dataclass
class ReconciliationReport:
    started_at: datetime
    finished_at: datetime | None = None
    breaks: list[Break] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)  # check -> items examined

    @property
    def ok(self) -> bool:
        return not self.breaks

    def to_json(self) -> str:
        return json.dumps(
            {
                "ok": self.ok,
                "started_at": self.started_at.isoformat(),
                "finished_at": self.finished_at.isoformat() if self.finished_at else None,
                "checked": self.checked,
                "breaks": [asdict(b) | {"drift_minor": b.drift_minor} for b in self.breaks],
            },
            indent=2,
        )

    def to_text(self) -> str:
        lines = []
        for check in CHECKS:
            if check not in self.checked:
                continue
            found = [b for b in self.breaks if b.check == check]
            status = "ok" if not found else f"{len(found)} BREAK(S)"
            lines.append(f"{check:<30} {self.checked[check]:>10} checked   {status}")
            for item in found[:20]:
                lines.append(
                    f"    {item.subject}: expected {item.expected_minor}, found "
                    f"{item.found_minor}{' (' + item.detail + ')' if item.detail else ''}"
                )
            if len(found) > 20:
                lines.append(f"    ... and {len(found) - 20} more")
        lines.append("reconciled: no breaks" if self.ok else f"{len(self.breaks)} break(s)")
        return "\n".join(lines)


def read_fbo_file(path: Path, exponents: Mapping[str, int]) -> dict[tuple[str, str], int]:
    """The partner's pooled FBO balance file (customer_id, asset, balance): amounts by
    (owner, asset). Raises RequestError, naming the line, on anything malformed."""
    if not path.is_file():
        raise RequestError(f"FBO balance file {path} does not exist")
    if path.stat().st_size > FBO_FILE_BYTES_MAX:
        raise RequestError(f"FBO balance file {path} is larger than {FBO_FILE_BYTES_MAX} bytes")
    balances: dict[tuple[str, str], int] = {}
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or not {"customer_id", "asset", "balance"} <= set(
                reader.fieldnames
            ):
                raise RequestError("FBO balance file needs columns customer_id, asset, balance")
            for number, row in enumerate(reader, start=2):
                asset = row["asset"] or ""
                if asset not in exponents:
                    raise RequestError(f"line {number}: unknown asset {asset!r}")
                try:
                    amount = parse_decimal(row["balance"] or "", exponents[asset])
                except ValueError as exc:
                    raise RequestError(f"line {number}: {exc}") from None
                key = (row["customer_id"] or "", asset)
                if key in balances:
                    raise RequestError(f"line {number}: {key[0]} {asset} appears twice")
                balances[key] = amount
    except UnicodeDecodeError:
        raise RequestError(f"FBO balance file {path} is not UTF-8 text") from None
    except csv.Error as exc:
        raise RequestError(f"FBO balance file {path}: {exc}") from None
    return balances


class Reconciler:
    def __init__(self, store: ReconciliationStore, cache: LedgerCache | None, clock: Clock) -> None:
        self.store = store
        self.cache = cache
        self.clock = clock

    async def run(
        self,
        *,
        program_id: str | None = None,
        fbo: Mapping[tuple[str, str], int] | None = None,
    ) -> ReconciliationReport:
        report = ReconciliationReport(started_at=self.clock.now())
        async with self.store.snapshot() as ledger:
            await self._journal(ledger, report, program_id)
            await self._balance_figures(ledger, report, program_id)
            await self._programs(ledger, report, program_id)
            if fbo is not None:
                if program_id is None:
                    raise RequestError("an FBO balance file is reconciled against one program")
                await self._fbo(ledger, report, program_id, fbo)
        if self.cache is not None:
            await self._cache(report, program_id)
        report.finished_at = self.clock.now()
        self._metrics(report)
        return report

    async def _journal(
        self, ledger: LedgerSnapshot, report: ReconciliationReport, program_id: str | None
    ) -> None:
        unbalanced = await ledger.unbalanced_entries(program_id)
        report.checked["journal_balanced"] = await ledger.count_entries(program_id)
        for entry in unbalanced:
            report.breaks.append(
                Break("journal_balanced", f"entry {entry.entry_id} {entry.asset}", 0,
                      entry.total_minor)
            )  # fmt: skip

    async def _balance_figures(
        self, ledger: LedgerSnapshot, report: ReconciliationReport, program_id: str | None
    ) -> None:
        """Each balance's two figures against what they derive from: the actual one against
        its postings, the authorised one against its open holds."""
        for check, drifted in (
            ("balance_equals_postings", ledger.balances_off_postings),
            ("authorized_equals_open_holds", ledger.balances_off_holds),
        ):
            drifts = await drifted(program_id)
            report.checked[check] = await ledger.count_balances(program_id)
            for drift in drifts:
                report.breaks.append(
                    Break(check, f"account {drift.account_id} {drift.asset}",
                          drift.derived_minor, drift.stored_minor)
                )  # fmt: skip

    async def _programs(
        self, ledger: LedgerSnapshot, report: ReconciliationReport, program_id: str | None
    ) -> None:
        totals = await ledger.program_totals(program_id)
        report.checked["program_closes"] = len(totals)
        for total in totals:
            if total.total_minor != 0:
                report.breaks.append(
                    Break(
                        "program_closes", f"program {total.program_id} {total.asset}", 0,
                        total.total_minor, f"customers hold {total.customers_minor}",
                    )
                )  # fmt: skip

    async def _fbo(
        self,
        ledger: LedgerSnapshot,
        report: ReconciliationReport,
        program_id: str,
        fbo: Mapping[tuple[str, str], int],
    ) -> None:
        ours: dict[tuple[str, str], int] = {}
        # Each beneficial owner's share of every account they hold, as the FBO file has it.
        async for owned in ledger.owner_balances(program_id):
            ours[(owned.owner, owned.asset)] = owned.balance_minor
        report.checked["fbo_matches"] = len(set(ours) | set(fbo))
        for key in sorted(set(ours) | set(fbo)):
            if ours.get(key, 0) != fbo.get(key, 0):
                report.breaks.append(
                    Break("fbo_matches", f"{key[0]} {key[1]}", ours.get(key, 0), fbo.get(key, 0))
                )
        for asset in sorted({k[1] for k in set(ours) | set(fbo)}):
            expected = sum(v for k, v in ours.items() if k[1] == asset)
            found = sum(v for k, v in fbo.items() if k[1] == asset)
            if expected != found:
                report.breaks.append(
                    Break("fbo_matches", f"total {asset}", expected, found, "FBO total")
                )

    async def _cache(self, report: ReconciliationReport, program_id: str | None) -> None:
        cache = self.cache
        assert cache is not None
        await cache.refresh_generation()
        compared = 0
        suspects: list[str] = []
        account_ids = await self.store.customer_account_ids(program_id)
        for account_id in account_ids:
            if await self._cache_differs(account_id) is not None:
                suspects.append(account_id)
            compared += 1
        for account_id in suspects:  # in flight a moment ago, or really adrift?
            difference: tuple[str, int, int] | None = None
            for _ in range(CACHE_RECHECKS):
                await asyncio.sleep(CACHE_RECHECK_PAUSE_S)
                difference = await self._cache_differs(account_id)
                if difference is None:
                    break
            if difference is not None:
                asset, expected, found = difference
                report.breaks.append(
                    Break(
                        "cache_equals_postgres", f"account {account_id} {asset}", expected,
                        found, "cached available",
                    )
                )  # fmt: skip
        report.checked["cache_equals_postgres"] = compared

    async def _cache_differs(self, account_id: str) -> tuple[str, int, int] | None:
        assert self.cache is not None
        cached = await self.cache.read_balances(account_id)
        if cached is None:
            return None  # not cached: the next decision loads it from Postgres
        for stored in await self.store.balances(account_id):
            balance = cached.get(stored.asset)
            truth = stored.actual_minor - stored.authorized_minor
            if balance is None or balance.available_minor != truth:
                return stored.asset, truth, balance.available_minor if balance else 0
        return None

    def _metrics(self, report: ReconciliationReport) -> None:
        for check in CHECKS:
            found = [b for b in report.breaks if b.check == check]
            metrics.RECONCILIATION_BREAKS.labels(check).set(len(found))
            metrics.RECONCILIATION_DRIFT_MINOR.labels(check).set(sum(b.drift_minor for b in found))
        metrics.RECONCILIATION_LAST_RUN_SECONDS.set(
            (report.finished_at or report.started_at).timestamp()
        )
