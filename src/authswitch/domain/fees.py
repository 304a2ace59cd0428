"""Fees (seed 004), pure: which rules apply to a transaction, and how much they charge.

A product's fee schedule is versioned and effective-dated; a transaction uses the version in
force at its time. Every rule that matches a transaction applies, and their fees add up.

Rule kinds:

* **flat**: ``flat_minor`` of the rule's asset;
* **percentage**: ``bps`` basis points of the amount, **rounded half up** to the minor unit
  (12.345 → 12.35; amounts are never negative), then held within ``min_minor`` and
  ``max_minor``; a rule may combine a flat part and a percentage part;
* **threshold**: ``above_minor`` makes a rule apply only to amounts above it; ``free_uses``
  with ``free_period`` makes it apply only after that many uses in the day or month (three
  free ATM withdrawals a month). Uses are counted per card, atomically with the decision.

A rule charges in its own asset and applies only to transactions billed in that asset.
``on_decline`` rules apply to declined requests instead of approved ones (a decline fee).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum

from authswitch.domain.money import AMOUNT_MAX_MINOR

__all__ = [
    "FeeContext",
    "FeeLine",
    "FeeQuote",
    "FeeRule",
    "FeeSchedule",
    "Region",
    "Stage",
    "percent_of",
    "quote",
    "schedule_in_force",
]


class Stage(Enum):
    AUTHORIZATION = "AUTHORIZATION"
    CLEARING = "CLEARING"


class Region(Enum):
    ANY = "ANY"
    DOMESTIC = "DOMESTIC"
    INTERNATIONAL = "INTERNATIONAL"


def percent_of(amount_minor: int, bps: int) -> int:
    """``bps`` basis points of ``amount_minor``, rounded half up."""
    assert amount_minor >= 0
    assert 0 <= bps <= 10_000
    return (amount_minor * bps + 5_000) // 10_000


@dataclass(frozen=True, slots=True)
class FeeRule:
    id: str
    stage: Stage
    asset: str
    flat_minor: int = 0
    bps: int = 0
    min_minor: int = 0
    max_minor: int | None = None
    above_minor: int | None = None
    free_uses: int = 0
    free_period: str = ""  # "", "DAY" or "MONTH"
    on_decline: bool = False
    transaction_types: frozenset[int] = frozenset()  # empty: all
    channels: frozenset[int] = frozenset()  # empty: all
    region: Region = Region.ANY
    mccs: frozenset[str] = frozenset()  # empty: all
    name: str = ""

    def __post_init__(self) -> None:
        assert self.flat_minor >= 0
        assert 0 <= self.bps <= 10_000
        assert (self.free_uses == 0) == (self.free_period == "")

    def charge(self, amount_minor: int) -> int:
        """What the rule charges on ``amount_minor`` (when it applies)."""
        fee = self.flat_minor + percent_of(amount_minor, self.bps)
        fee = max(fee, self.min_minor)
        if self.max_minor is not None:
            fee = min(fee, self.max_minor)
        return fee


def rule_problem(
    *, flat_minor: int, bps: int, min_minor: int, max_minor: int | None,
    above_minor: int | None, free_uses: int, free_period: str,
) -> str | None:  # fmt: skip
    """Why a fee rule with these values cannot be set, or None when it can."""
    if (free_uses > 0) != bool(free_period):
        return "free_uses and free_period go together (a day or a month)"
    if any(n < 0 for n in (flat_minor, min_minor, free_uses)) or not 0 <= bps <= 10_000:
        return "fee amounts must not be negative and bps must be 0..10000"
    if flat_minor > AMOUNT_MAX_MINOR or min_minor > AMOUNT_MAX_MINOR:
        return "fee amounts are too large"
    if (max_minor is not None and max_minor < 0) or (above_minor is not None and above_minor < 0):
        return "max_minor and above_minor must not be negative"
    return None


@dataclass(frozen=True, slots=True)
class FeeSchedule:
    version: int
    effective_from: datetime
    rules: tuple[FeeRule, ...]


def schedule_in_force(schedules: Sequence[FeeSchedule], at: datetime) -> FeeSchedule | None:
    """The version in force at ``at``: the latest effective_from not after it."""
    in_force = [s for s in schedules if s.effective_from <= at]
    return max(in_force, key=lambda s: (s.effective_from, s.version), default=None)


@dataclass(frozen=True, slots=True)
class FeeContext:
    stage: Stage
    transaction_type: int
    channel: int
    mcc: str
    international: bool
    asset: str
    amount_minor: int


@dataclass(frozen=True, slots=True)
class FreeUseFee:
    """A fee that applies only once ``free_uses`` uses of its rule are used up."""

    rule_id: str
    free_uses: int
    free_period: str
    fee_minor: int


@dataclass(frozen=True, slots=True)
class FeeLine:
    """One rule's part of a quote: what a FEE notification names (rule, amount)."""

    rule_id: str
    name: str
    fee_minor: int
    kind: str  # "fixed", "free_uses" (only once the free uses are used up), "on_decline"

    def payload(self) -> dict[str, object]:
        return {"rule_id": self.rule_id, "name": self.name, "fee_minor": self.fee_minor}


@dataclass(frozen=True, slots=True)
class FeeQuote:
    """The fees of one transaction: charged unconditionally, charged after free uses, and
    charged if the request is declined."""

    fixed_minor: int = 0
    after_free_uses: tuple[FreeUseFee, ...] = ()
    on_decline_minor: int = 0
    rule_ids: tuple[str, ...] = field(default=())
    lines: tuple[FeeLine, ...] = field(default=())

    def charged_lines(self, *, declined: bool, free_charged: frozenset[str]) -> list[FeeLine]:
        """The rules a decision charged: the decline fees of a decline; else the fixed ones
        and the free-use ones whose free uses were used up (``free_charged``)."""
        if declined:
            return [line for line in self.lines if line.kind == "on_decline"]
        return [
            line for line in self.lines
            if line.kind == "fixed" or (line.kind == "free_uses" and line.rule_id in free_charged)
        ]  # fmt: skip

    def total_if(self, used: dict[str, int]) -> int:
        """The approval fee given the uses so far of each free-use rule."""
        extra = sum(
            f.fee_minor for f in self.after_free_uses if used.get(f.rule_id, 0) >= f.free_uses
        )
        return self.fixed_minor + extra


def _matches(rule: FeeRule, ctx: FeeContext) -> bool:
    if rule.stage is not ctx.stage or rule.asset != ctx.asset:
        return False
    if rule.transaction_types and ctx.transaction_type not in rule.transaction_types:
        return False
    if rule.channels and ctx.channel not in rule.channels:
        return False
    if rule.mccs and ctx.mcc not in rule.mccs:
        return False
    if rule.region is Region.DOMESTIC and ctx.international:
        return False
    if rule.region is Region.INTERNATIONAL and not ctx.international:
        return False
    return rule.above_minor is None or ctx.amount_minor > rule.above_minor


def quote(schedule: FeeSchedule | None, ctx: FeeContext) -> FeeQuote:
    """The fees ``schedule`` charges on a transaction."""
    if schedule is None:
        return FeeQuote()
    fixed = on_decline = 0
    after: list[FreeUseFee] = []
    applied: list[str] = []
    lines: list[FeeLine] = []
    for rule in schedule.rules:
        if not _matches(rule, ctx):
            continue
        applied.append(rule.id)
        fee = rule.charge(ctx.amount_minor)
        if rule.on_decline:
            on_decline += fee
            kind = "on_decline"
        elif rule.free_uses:
            after.append(FreeUseFee(rule.id, rule.free_uses, rule.free_period, fee))
            kind = "free_uses"
        else:
            fixed += fee
            kind = "fixed"
        lines.append(FeeLine(rule.id, rule.name, fee, kind))
    return FeeQuote(fixed, tuple(after), on_decline, tuple(applied), tuple(lines))
