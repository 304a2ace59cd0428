"""Amount and count limits (DESIGN.md §4), and the counters they and fee free-uses keep, pure.

A limit caps, for one card or one account, the amount (61) or the number (65) of a
product's transactions of some types, per transaction, per day or per month. Days and months
are the program's, in its time zone. Every counter is named by a key that includes its
period, so a new day starts from zero without anyone resetting anything.

Counting (seed 004): an approval adds its amount plus fee and one use; a zero-value request
or a declined one that carries a fee still adds one use (and the fee, when it is applied);
clearing adjusts the amount used to what settled but never reduces a count; a reversal gives
back the amount it releases.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from zoneinfo import ZoneInfo

__all__ = [
    "Counter",
    "Limit",
    "Period",
    "Subject",
    "counter_for_limit",
    "free_use_counter",
    "period_bounds",
]


class Subject(Enum):
    CARD = "CARD"
    ACCOUNT = "ACCOUNT"


class Period(Enum):
    TRANSACTION = "TRANSACTION"
    DAY = "DAY"
    MONTH = "MONTH"


@dataclass(frozen=True, slots=True)
class Limit:
    id: str
    subject: Subject
    period: Period
    asset: str
    amount_max_minor: int | None = None
    count_max: int | None = None
    transaction_types: frozenset[int] = frozenset()  # empty: all

    def __post_init__(self) -> None:
        assert self.amount_max_minor is not None or self.count_max is not None
        assert self.period is not Period.TRANSACTION or self.count_max is None

    def applies(self, transaction_type: int, asset: str) -> bool:
        if asset != self.asset:
            return False
        return not self.transaction_types or transaction_type in self.transaction_types


def limit_problem(
    period: Period, amount_max_minor: int | None, count_max: int | None
) -> str | None:
    """Why a limit with these maxima cannot be set, or None when it can."""
    if amount_max_minor is None and count_max is None:
        return "a limit caps an amount, a count, or both"
    if (amount_max_minor is not None and amount_max_minor < 0) or (
        count_max is not None and count_max < 0
    ):
        return "limit maxima must not be negative"
    if period is Period.TRANSACTION and count_max is not None:
        return "a per-transaction limit caps the amount only"
    return None


@dataclass(frozen=True, slots=True)
class Counter:
    """One counter a decision reads and adds to. ``key`` names it durably; ``previous`` is
    the key of the same counter in the period before (dropped from the cache when this one
    is written). A per-transaction limit has no counter: ``key`` is empty."""

    key: str
    previous: str
    expires_at: datetime
    amount_max_minor: int  # -1: no amount cap
    count_max: int  # -1: no count cap


def period_bounds(period: Period, now: datetime, time_zone: str) -> tuple[str, str, datetime]:
    """(this period's label, the previous period's label, when this period ends) in the
    program's time zone. A day is labelled 20261123, a month 202611."""
    assert now.tzinfo is not None
    local = now.astimezone(ZoneInfo(time_zone))
    if period is Period.DAY:
        start = local.replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + timedelta(days=1)  # wall-clock arithmetic: the next local midnight
        previous = start - timedelta(days=1)
        return start.strftime("%Y%m%d"), previous.strftime("%Y%m%d"), end
    if period is Period.MONTH:
        start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (start + timedelta(days=32)).replace(day=1)
        previous = (start - timedelta(days=1)).replace(day=1)
        return start.strftime("%Y%m"), previous.strftime("%Y%m"), end
    raise ValueError("a per-transaction limit has no period")


def _subject_id(subject: Subject, card_id: str, account_id: str) -> str:
    return card_id if subject is Subject.CARD else account_id


def counter_for_limit(
    limit: Limit, card_id: str, account_id: str, now: datetime, time_zone: str
) -> Counter:
    amount_max = -1 if limit.amount_max_minor is None else limit.amount_max_minor
    count_max = -1 if limit.count_max is None else limit.count_max
    if limit.period is Period.TRANSACTION:
        return Counter("", "", now, amount_max, -1)
    label, previous, ends = period_bounds(limit.period, now, time_zone)
    base = f"L:{limit.id}:{_subject_id(limit.subject, card_id, account_id)}"
    return Counter(f"{base}:{label}", f"{base}:{previous}", ends, amount_max, count_max)


def free_use_counter(
    rule_id: str, free_period: str, card_id: str, now: datetime, time_zone: str
) -> Counter:
    """The counter of a fee rule's free uses, per card."""
    label, previous, ends = period_bounds(Period(free_period), now, time_zone)
    base = f"F:{rule_id}:{card_id}"
    return Counter(f"{base}:{label}", f"{base}:{previous}", ends, -1, -1)
