"""Joint holders' shares and the split of a balance between them (pure)."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authswitch.domain.holders import ShareError, split_by_shares, valid_shares

pytestmark = pytest.mark.timeout(30)

_owners = st.lists(
    st.tuples(st.uuids().map(str), st.integers(1, 10_000)),
    min_size=1, max_size=8, unique_by=lambda w: w[0],
)  # fmt: skip


@given(amount=st.integers(-(2**62), 2**62), weights=_owners)
def test_the_parts_add_up_and_each_is_within_a_unit_of_its_exact_share(
    amount: int, weights: list[tuple[str, int]]
) -> None:
    parts = split_by_shares(amount, weights)
    assert sum(parts.values()) == amount
    total = sum(w for _, w in weights)
    for owner, weight in weights:
        exact = Fraction(amount * weight, total)
        assert exact - 1 < parts[owner] < exact + 1
    assert split_by_shares(amount, list(reversed(weights))) == parts  # order does not matter


def test_equal_shares_give_the_odd_unit_to_the_lowest_id() -> None:
    assert split_by_shares(10_001, [("b", 1), ("a", 1)]) == {"a": 5_001, "b": 5_000}
    assert split_by_shares(-7, [("b", 1), ("a", 1)]) == {"a": -3, "b": -4}
    assert split_by_shares(100, [("a", 2_000), ("b", 3_000), ("c", 5_000)]) == {
        "a": 20, "b": 30, "c": 50,
    }  # fmt: skip
    assert split_by_shares(1, [("a", 3_333), ("b", 3_333), ("c", 3_334)]) == {
        "a": 0, "b": 0, "c": 1,
    }  # fmt: skip


def test_shares_describe_every_holder_and_sum_to_the_whole() -> None:
    assert valid_shares(["a", "b"], {}) is None
    assert valid_shares(["a", "b"], {"a": 2_500, "b": 7_500}) == {"a": 2_500, "b": 7_500}
    for shares, message in (
        ({"a": 10_000}, "missing b"),
        ({"a": 5_000, "b": 4_000, "c": 1_000}, "not holders: c"),
        ({"a": 5_000, "b": 4_999}, "sum to 9999"),
        ({"a": 10_000, "b": 0}, "1 to 10000"),
    ):
        with pytest.raises(ShareError, match=message):
            valid_shares(["a", "b"], shares)
