"""Where money moves (domain/postings.py): each event's balance changes and journal entries,
DESIGN.md §3 row by row, and the invariant that keeps balances derivable from the journal:
every entry balances, and each account's actual change is the sum of its postings."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authswitch.domain import postings
from authswitch.domain.ledger import Balance, BalanceChange
from authswitch.domain.postings import Movement, Origin

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
CUSTOMER, OTHER, CLEARING, FEES, DISPUTES = "cust", "pot", "clearing", "fees", "disputes"
AMOUNTS = st.integers(1, 10**15)


def origin(entry_id: str = "e1") -> Origin:
    return Origin(entry_id, "prog", T0, "visa", "m1", "shop", "ref", "card")


def derivable(movement: Movement) -> None:
    """Each change's actual delta is what the entries post to its account and asset."""
    posted: dict[tuple[str, str], int] = defaultdict(int)
    for entry in movement.entries:
        totals: dict[str, int] = defaultdict(int)
        for posting in entry.postings:
            posted[(posting.account_id, posting.asset)] += posting.amount_minor
            totals[posting.asset] += posting.amount_minor
        assert not any(totals.values()), "an entry that does not balance"
    for change in movement.changes:
        assert posted.pop(change.key, 0) == change.actual_delta_minor
    customer_accounts = {c.account_id for c in movement.changes}
    assert not [k for k in posted if k[0] in customer_accounts and posted[k]]


def apply(balance: Balance, change: BalanceChange) -> Balance:
    return Balance(
        balance.actual_minor + change.actual_delta_minor,
        balance.authorized_minor + change.authorized_delta_minor,
    )


def test_seed_001_spend_then_matched_clearing_of_more() -> None:
    # Available 100.00; spend 40.00: available 60.00, actual 100.00; a 45.00 clearing
    # matched to the hold: actual 55.00, available 55.00 (DESIGN.md §3, seed 001).
    balance = Balance(10_000, 0)
    balance = apply(balance, postings.hold(CUSTOMER, "GBP", 4_000, requires_funds=True))
    assert (balance.actual_minor, balance.available_minor) == (10_000, 6_000)
    cleared = postings.clearing(CUSTOMER, "GBP", 4_500, 4_000, CLEARING, origin())
    derivable(cleared)
    balance = apply(balance, cleared.change)
    assert (balance.actual_minor, balance.available_minor, balance.authorized_minor) == (
        5_500,
        5_500,
        0,
    )


def test_seed_001_unmatched_clearing_double_debit_then_age_off() -> None:
    balance = apply(Balance(10_000, 0), postings.hold(CUSTOMER, "GBP", 4_000))
    balance = apply(
        balance, postings.clearing(CUSTOMER, "GBP", 4_000, 0, CLEARING, origin()).change
    )
    assert balance.available_minor == 2_000  # the "double debit"
    balance = apply(balance, postings.release(CUSTOMER, "GBP", 4_000))  # aged off
    assert (balance.actual_minor, balance.available_minor) == (6_000, 6_000)


def test_a_hold_requires_funds_only_when_asked() -> None:
    assert postings.hold(CUSTOMER, "GBP", 1, requires_funds=True).requires_funds
    assert not postings.hold(CUSTOMER, "GBP", -5).requires_funds  # an advice lowering a hold
    assert postings.release(CUSTOMER, "GBP", 7).authorized_delta_minor == -7


@given(AMOUNTS, st.integers(0, 10**15), st.lists(st.integers(0, 10**9), max_size=3))
def test_a_clearing_posts_its_amount_and_every_fee_line(
    amount: int, released: int, fees: list[int]
) -> None:
    lines = [(f, FEES, origin(f"fee{i}")) for i, f in enumerate(fees)]
    movement = postings.clearing(CUSTOMER, "GBP", amount, released, CLEARING, origin(), lines)
    derivable(movement)
    assert movement.change.actual_delta_minor == -(amount + sum(fees))
    assert movement.change.authorized_delta_minor == -released
    assert [e.kind for e in movement.entries] == ["CLEARING"] + ["FEE"] * sum(1 for f in fees if f)
    assert not movement.change.requires_funds  # the network approved it already


@given(AMOUNTS)
def test_refunds_and_credits_come_from_the_clearing_account(amount: int) -> None:
    for kind in ("REFUND", "CREDIT"):
        movement = postings.credit(CUSTOMER, "GBP", amount, CLEARING, kind, origin())
        derivable(movement)
        assert movement.change.actual_delta_minor == amount
        assert {(p.account_id, p.amount_minor) for p in movement.entries[0].postings} == {
            (CUSTOMER, amount),
            (CLEARING, -amount),
        }


@given(AMOUNTS)
def test_a_fee_goes_to_fee_income(amount: int) -> None:
    movement = postings.fee(CUSTOMER, "GBP", amount, FEES, origin())
    derivable(movement)
    assert movement.change.actual_delta_minor == -amount
    assert movement.entries[0].kind == "FEE"


@given(st.integers(-(10**15), 10**15).filter(bool), st.booleans())
def test_an_adjustment_moves_against_its_counter_account(signed: int, funded: bool) -> None:
    movement = postings.adjustment(
        CUSTOMER, "GBP", signed, CLEARING, "LOAD", origin(), requires_funds=funded
    )
    derivable(movement)
    assert movement.change.actual_delta_minor == signed
    assert movement.change.requires_funds is funded


@given(AMOUNTS)
def test_a_transfer_is_one_entry_the_source_funded(amount: int) -> None:
    movement = postings.transfer(CUSTOMER, OTHER, "GBP", amount, "TRANSFER", origin())
    derivable(movement)
    debit, credit = movement.changes
    assert (debit.account_id, debit.actual_delta_minor, debit.requires_funds) == (
        CUSTOMER,
        -amount,
        True,
    )
    assert (credit.account_id, credit.actual_delta_minor, credit.requires_funds) == (
        OTHER,
        amount,
        False,
    )
    assert len(movement.entries) == 1


@given(AMOUNTS, st.sampled_from(["customer", "provisional", "none"]))
def test_a_dispute_step_moves_the_customer_by_its_leg(amount: int, shape: str) -> None:
    legs = {
        "customer": ((CUSTOMER, amount), (CLEARING, -amount), (DISPUTES, 0)),
        "provisional": ((CUSTOMER, amount), (CLEARING, 0), (DISPUTES, -amount)),
        "none": ((CUSTOMER, 0), (CLEARING, amount), (DISPUTES, -amount)),
    }[shape]
    customer = legs[0][1]
    movement = postings.dispute_step(
        CUSTOMER, "GBP", "DISPUTE_CHARGEBACK", origin(), legs, customer_minor=customer
    )
    derivable(movement)
    assert [c.actual_delta_minor for c in movement.changes] == ([customer] if customer else [])
    assert len(movement.entries[0].postings) == 2
