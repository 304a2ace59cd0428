"""Balance arithmetic: every row of DESIGN.md §3, seed 001's worked examples, and the
invariant available = actual - authorised after any sequence."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from authswitch.domain.ledger import Balance, BalanceChange, admit_in_order


def test_seed_001_authorisation_then_matched_clearing() -> None:
    balance = Balance(10_000, 0)
    balance = balance.hold(4_000)
    assert (balance.actual_minor, balance.available_minor) == (10_000, 6_000)
    balance = balance.clear_matched(hold_minor=4_000, clearing_minor=4_500)
    assert (balance.actual_minor, balance.available_minor) == (5_500, 5_500)


def test_seed_001_unmatched_clearing_double_debit_then_age_off() -> None:
    balance = Balance(10_000, 0).hold(4_000)
    balance = balance.clear_unmatched(4_000)
    assert balance.available_minor == 2_000  # the "double debit"
    balance = balance.release(4_000)  # the stale hold ages off
    assert balance.available_minor == 6_000
    assert balance.actual_minor == 6_000


def test_each_row_of_the_table() -> None:
    start = Balance(10_000, 1_000)
    assert start.credit(500) == Balance(10_500, 1_000)
    assert start.debit(500) == Balance(9_500, 1_000)
    assert start.hold(300) == Balance(10_000, 1_300)
    assert start.release(300) == Balance(10_000, 700)
    assert start.clear_matched(1_000, 900, 50) == Balance(9_050, 0)
    assert start.clear_unmatched(900, 50) == Balance(9_050, 1_000)


events = st.one_of(
    st.tuples(st.just("credit"), st.integers(0, 10**9)),
    st.tuples(st.just("debit"), st.integers(0, 10**9)),
    st.tuples(st.just("hold"), st.integers(0, 10**9)),
    st.tuples(st.just("release"), st.integers(0, 10**9)),
)


@given(st.lists(events, max_size=50))
def test_available_is_actual_minus_authorised(sequence: list[tuple[str, int]]) -> None:
    balance = Balance()
    held: list[int] = []
    for kind, amount in sequence:
        if kind == "release":
            if not held:
                continue
            balance = balance.release(held.pop())
        elif kind == "hold":
            balance = balance.hold(amount)
            held.append(amount)
        else:
            balance = getattr(balance, kind)(amount)
        assert balance.available_minor == balance.actual_minor - balance.authorized_minor
        assert balance.authorized_minor == sum(held)


def _hold(amount: int, *, funds: bool = True) -> tuple[BalanceChange, ...]:
    return (BalanceChange("a", "GBP", authorized_delta_minor=amount, requires_funds=funds),)


def test_admission_refuses_what_does_not_fit_in_order() -> None:
    balances = {("a", "GBP"): Balance(1_000, 0)}
    writes = [(1, _hold(600)), (2, _hold(600)), (3, _hold(400)), (4, _hold(1, funds=False))]
    refused, after = admit_in_order(balances, writes)
    assert refused == {2}
    assert after[("a", "GBP")] == Balance(1_000, 1_001)


@given(
    st.integers(0, 10_000),
    st.lists(st.tuples(st.integers(0, 5_000), st.booleans()), max_size=40),
)
def test_admission_decides_each_write_at_its_turn(
    start: int, holds: list[tuple[int, bool]]
) -> None:
    """A funded write is admitted exactly when it fits at its turn; unfunded ones always are."""
    balances = {("a", "GBP"): Balance(start, 0)}
    writes = [(i, _hold(amount, funds=funds)) for i, (amount, funds) in enumerate(holds)]
    refused, after = admit_in_order(balances, writes)
    available = start
    for index, (amount, funds) in enumerate(holds):
        fits = available - amount >= 0 or amount == 0
        if funds and not fits:
            assert index in refused
            continue
        assert index not in refused
        available -= amount
    assert after[("a", "GBP")].available_minor == available
