"""What a fee rule or a limit may be: the domain's checks that SetFeeSchedule and CreateLimit
answer INVALID_ARGUMENT with (domain/fees.py rule_problem, domain/limits.py limit_problem)."""

from __future__ import annotations

import pytest

from authswitch.domain.fees import rule_problem
from authswitch.domain.limits import Period, limit_problem
from authswitch.domain.money import AMOUNT_MAX_MINOR

GOOD: dict[str, object] = {
    "flat_minor": 25, "bps": 150, "min_minor": 0, "max_minor": None, "above_minor": None,
    "free_uses": 0, "free_period": "",
}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({}, None),
        ({"free_uses": 3, "free_period": "MONTH"}, None),
        ({"bps": 10_000, "max_minor": 0, "above_minor": 0}, None),
        ({"free_uses": 3}, "free_uses and free_period go together (a day or a month)"),
        ({"free_period": "DAY"}, "free_uses and free_period go together (a day or a month)"),
        ({"flat_minor": -1}, "fee amounts must not be negative and bps must be 0..10000"),
        ({"bps": 10_001}, "fee amounts must not be negative and bps must be 0..10000"),
        ({"min_minor": AMOUNT_MAX_MINOR + 1}, "fee amounts are too large"),
        ({"max_minor": -1}, "max_minor and above_minor must not be negative"),
        ({"above_minor": -1}, "max_minor and above_minor must not be negative"),
    ],
)
def test_a_fee_rule_problem(change: dict[str, object], problem: str | None) -> None:
    assert rule_problem(**{**GOOD, **change}) == problem  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("period", "amount_max", "count_max", "problem"),
    [
        (Period.DAY, 10_000, None, None),
        (Period.MONTH, None, 5, None),
        (Period.TRANSACTION, 0, None, None),
        (Period.DAY, None, None, "a limit caps an amount, a count, or both"),
        (Period.DAY, -1, None, "limit maxima must not be negative"),
        (Period.DAY, None, -1, "limit maxima must not be negative"),
        (Period.TRANSACTION, 100, 1, "a per-transaction limit caps the amount only"),
    ],
)
def test_a_limit_problem(
    period: Period, amount_max: int | None, count_max: int | None, problem: str | None
) -> None:
    assert limit_problem(period, amount_max, count_max) == problem
