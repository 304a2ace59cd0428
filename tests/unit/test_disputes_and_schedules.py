"""The pure rules of disputes (every path, as a property) and of file schedules."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authswitch.domain.disputes import (
    DisputeState,
    DisputeStatus,
    DisputeStep,
    ImpossibleStep,
    plan_open,
    plan_step,
)
from authswitch.domain.files import covered_day, due_times, valid_cron, valid_zone

pytestmark = pytest.mark.timeout(60)

S = DisputeStatus
LATER_STEPS = [s for s in DisputeStep if s is not DisputeStep.OPEN]


@given(
    amount=st.integers(min_value=1, max_value=10**12),
    provisional=st.booleans(),
    steps=st.lists(st.sampled_from(LATER_STEPS), max_size=8),
)
def test_every_path_balances_and_ends_where_it_should(
    amount: int, provisional: bool, steps: list[DisputeStep]
) -> None:
    opened = plan_open(amount, provisional_credit=provisional)
    state = DisputeState(opened.status, amount, opened.provisional_minor)
    customer, clearing, disputes = (
        opened.customer_minor, opened.clearing_minor, opened.disputes_minor,
    )  # fmt: skip
    history = [state.status]
    for step in steps:
        try:
            plan = plan_step(state, step)
        except ImpossibleStep as refused:
            assert refused.status is state.status  # noqa: PT017 - a path, not one call
            continue
        assert not state.status.final  # a closed dispute takes no step
        assert plan.customer_minor + plan.clearing_minor + plan.disputes_minor == 0
        customer += plan.customer_minor
        clearing += plan.clearing_minor
        disputes += plan.disputes_minor
        state = DisputeState(plan.status, amount, plan.provisional_minor)
        history.append(state.status)
        # While it runs, the cardholder holds exactly the provisional credit.
        if not state.status.final:
            assert customer == state.provisional_minor
    assert len(set(history)) == len(history)  # no state is visited twice
    if state.status is S.CARDHOLDER_WON:
        assert customer == amount
        # The network paid back (clearing) unless the issuer gave up before a chargeback.
        assert clearing == (0 if S.CHARGEBACK_SENT not in history else -amount)
    elif state.status is S.MERCHANT_WON:
        assert (customer, clearing, disputes) == (0, 0, 0)
    assert customer + clearing + disputes == 0


@pytest.mark.parametrize(
    ("status", "step"),
    [
        (S.OPEN, DisputeStep.REPRESENTMENT),
        (S.CHARGEBACK_SENT, DisputeStep.CHARGEBACK),
        (S.CHARGEBACK_SENT, DisputeStep.MERCHANT_WON),
        (S.REPRESENTED, DisputeStep.CHARGEBACK),
        (S.CARDHOLDER_WON, DisputeStep.MERCHANT_WON),
        (S.MERCHANT_WON, DisputeStep.CARDHOLDER_WON),
        (S.OPEN, DisputeStep.OPEN),
    ],
)
def test_impossible_steps_say_what_is_allowed(status: DisputeStatus, step: DisputeStep) -> None:
    with pytest.raises(ImpossibleStep) as refused:
        plan_step(DisputeState(status, 100, 0), step)
    text = str(refused.value)
    assert status.value in text
    assert ("closed" in text) == status.final


def test_cron_and_zones() -> None:
    assert valid_cron("30 2 * * *")
    assert valid_cron("0 6 * * 1-5")
    for bad in ("30 2 * *", "0 0 0 * * *", "61 2 * * *", "", "every day"):
        assert not valid_cron(bad), bad
    assert valid_zone("Europe/London")
    assert not valid_zone("Mars/Olympus")
    assert not valid_zone("../etc/passwd")


def test_due_times_in_the_schedules_zone() -> None:
    london = ZoneInfo("Europe/London")
    since = datetime(2026, 3, 26, 12, tzinfo=UTC)
    now = datetime(2026, 3, 30, 3, tzinfo=UTC)
    due = due_times("30 2 * * *", "Europe/London", now=now, since=since, limit=31)
    # 02:30 London: GMT until 29 March, then BST (01:30 UTC).
    assert [d.astimezone(UTC) for d in due] == [
        datetime(2026, 3, 27, 2, 30, tzinfo=UTC),
        datetime(2026, 3, 28, 2, 30, tzinfo=UTC),
        datetime(2026, 3, 29, 1, 30, tzinfo=UTC),
        datetime(2026, 3, 30, 1, 30, tzinfo=UTC),
    ]
    assert [covered_day(d, "Europe/London") for d in due] == [
        date(2026, 3, 26), date(2026, 3, 27), date(2026, 3, 28), date(2026, 3, 29),
    ]  # fmt: skip
    assert due[0].tzinfo is not None
    assert due[0].astimezone(london).hour == 2


def test_due_times_edges() -> None:
    since = datetime(2026, 1, 1, tzinfo=UTC)
    exactly = datetime(2026, 1, 5, 2, 30, tzinfo=UTC)
    due = due_times("30 2 * * *", "UTC", now=exactly, since=since, limit=31)
    assert due[-1] == exactly  # due at this very minute
    assert len(due) == 5  # 1 to 5 January
    assert due_times("30 2 * * *", "UTC", now=exactly, since=since, limit=2) == due[-2:]
    just_before = exactly - timedelta(seconds=1)
    assert due_times("30 2 * * *", "UTC", now=just_before, since=since, limit=31) == due[:-1]
    assert due_times("30 2 * * *", "UTC", now=exactly, since=exactly, limit=31) == []
