"""The pure lifecycle plans (domain/lifecycle.py): hold validity, reversals, clearings
matched to holds, reductions by advice (seed 001, DESIGN.md §3)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authswitch.domain.lifecycle import (
    EXTENDED_VALIDITY_DAYS,
    HoldEnd,
    OpenHold,
    hold_validity_days,
    plan_clearing,
    plan_reduction,
    plan_reversal,
)

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def _holds(amounts: list[int]) -> list[OpenHold]:
    """Holds created one minute apart, oldest first, with ids that do not sort by age."""
    return [
        OpenHold(f"h{len(amounts) - i:03d}", amount, T0 + timedelta(minutes=i))
        for i, amount in enumerate(amounts)
    ]


holds_st = st.lists(st.integers(1, 10_000), min_size=0, max_size=6).map(_holds)


@pytest.mark.parametrize(
    ("mcc", "by_mcc", "expected"),
    [
        ("5411", {}, 7),  # a grocery: the product's default
        ("7011", {}, EXTENDED_VALIDITY_DAYS),  # lodging
        ("3400", {}, EXTENDED_VALIDITY_DAYS),  # a car rental chain
        ("3600", {}, EXTENDED_VALIDITY_DAYS),  # a hotel chain
        ("3350", {}, 7),  # just below the car rental range
        ("7011", {"7011": 3}, 3),  # the product's own setting wins
        ("5411", {"5411": 10}, 10),
    ],
)
def test_hold_validity(mcc: str, by_mcc: dict[str, int], expected: int) -> None:
    assert hold_validity_days(7, by_mcc, mcc) == expected


def test_an_extended_category_never_shortens_a_longer_default() -> None:
    assert hold_validity_days(45, {}, "7011") == 45


def test_a_reversal_of_zero_releases_all_and_more_releases_only_what_is_held() -> None:
    hold = OpenHold("h", 5_000, T0)
    assert plan_reversal(hold, 0).release_minor == 5_000
    assert plan_reversal(hold, 0).ends
    assert plan_reversal(hold, 9_000).release_minor == 5_000
    partial = plan_reversal(hold, 1_200)
    assert (partial.release_minor, partial.ends, partial.end) == (1_200, False, HoldEnd.REVERSED)


def test_seed_001_partial_clearings_release_oldest_first_and_a_final_releases_the_rest() -> None:
    holds = _holds([4_000, 1_000])  # an authorisation and an incremental one
    first = plan_clearing(holds, 2_500, final=False)
    assert [(r.hold_id, r.release_minor, r.ends) for r in first.releases] == [
        (holds[0].id, 2_500, False)
    ]
    assert first.posted_minor == 2_500
    final = plan_clearing(holds, 100, final=True)
    assert [(r.hold_id, r.release_minor) for r in final.releases] == [
        (holds[0].id, 4_000),
        (holds[1].id, 1_000),
    ]
    assert all(r.ends and r.end is HoldEnd.CLEARED for r in final.releases)
    assert final.posted_minor == 100  # what is cleared is posted, whatever was held


def test_an_unmatched_clearing_releases_nothing_and_still_posts() -> None:
    plan = plan_clearing([], 4_000, final=True)
    assert (plan.matched, plan.released_minor, plan.posted_minor) == (False, 0, 4_000)


@given(holds_st, st.integers(0, 70_000), st.booleans())
def test_a_clearing_releases_what_its_rule_says_and_never_more_than_held(
    holds: list[OpenHold], clearing: int, final: bool
) -> None:
    plan = plan_clearing(holds, clearing, final=final)
    held = sum(h.amount_minor for h in holds)
    assert plan.posted_minor == clearing
    assert len({r.hold_id for r in plan.releases}) == len(plan.releases)  # each hold once
    if final:
        assert plan.released_minor == held
        assert len(plan.releases) == len(holds)
    else:
        assert plan.released_minor == min(clearing, held)
        # Oldest first: every hold before the last one touched is released whole.
        by_id = {h.id: h for h in holds}
        touched = [by_id[r.hold_id] for r in plan.releases]
        assert touched == sorted(touched, key=lambda h: h.created_at)
        assert all(r.ends for r in plan.releases[:-1])


@given(holds_st, st.data())
def test_a_reduction_takes_the_newest_holds_first_and_exactly_its_amount(
    holds: list[OpenHold], data: st.DataObject
) -> None:
    held = sum(h.amount_minor for h in holds)
    reduce = data.draw(st.integers(0, held))
    plans = plan_reduction(holds, reduce)
    assert sum(p.release_minor for p in plans) == reduce
    assert all(p.end is HoldEnd.REVERSED and p.release_minor > 0 for p in plans)
    by_id = {h.id: h for h in holds}
    touched = [by_id[p.hold_id] for p in plans]
    assert touched == sorted(touched, key=lambda h: h.created_at, reverse=True)
    assert all(p.ends for p in plans[:-1])


def test_a_reduction_beyond_what_is_held_is_refused() -> None:
    with pytest.raises(AssertionError):
        plan_reduction(_holds([1_000]), 1_001)
