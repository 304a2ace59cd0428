"""Currency conversion's arithmetic and rate choice (domain/fx.py): exact across exponents."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authswitch.domain.fx import (
    FxRate,
    ProductFx,
    RateProblem,
    by_pair,
    convert,
    convert_billing,
    convert_with_markup,
    converted_into,
    parse_rate,
    rate_in_force,
    share_of,
)
from authswitch.domain.money import AMOUNT_MAX_MINOR, Asset, AssetCategory

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
ASSETS = {
    "GBP": Asset("GBP", AssetCategory.FIAT, 2, "826"),
    "JPY": Asset("JPY", AssetCategory.FIAT, 0, "392"),
    "BTC": Asset("BTC", AssetCategory.CRYPTO, 8),
    "XAU": Asset("XAU", AssetCategory.COMMODITY, 4),
}


def rate(text: str, at: datetime = T0, *, base: str = "GBP", quote: str = "BTC") -> FxRate:
    return FxRate(base, quote, text, at, 3_600)


def test_rates_parse_exactly_and_refuse_what_is_not_a_plain_positive_decimal() -> None:
    assert parse_rate("0.0000125") == Fraction(1, 80_000)
    assert parse_rate("1.1643") == Fraction(11_643, 10_000)
    assert parse_rate("150") == 150
    for bad in ("0", "0.000", "-1", "+1", "1e5", "1.", ".5", " 1", "1,5", "NaN", "Infinity", ""):
        with pytest.raises(ValueError):
            parse_rate(bad)
    with pytest.raises(ValueError):
        parse_rate("1." + "1" * 30)  # 31 significant digits


def test_conversion_across_exponents_is_exact_and_rounds_half_up() -> None:
    # 40.00 GBP at 0.0000125 BTC per GBP: 50,000 satoshi.
    assert convert(4_000, Fraction(1, 80_000), from_exponent=2, to_exponent=8) == 50_000
    # 1,000 JPY at 0.0053 GBP per JPY: 5.30 GBP.
    assert convert(1_000, Fraction(53, 10_000), from_exponent=0, to_exponent=2) == 530
    # 0.01 GBP at 0.5 into JPY (exponent 0): half a yen rounds up to 1; 0.4 rounds down.
    assert convert(1, Fraction(50), from_exponent=2, to_exponent=0) == 1
    assert convert(1, Fraction(40), from_exponent=2, to_exponent=0) == 0
    # 12.34 GBP of gold at 0.0004 oz per GBP, exponent 4: 0.0049 (0.004936 rounded).
    assert convert(1_234, Fraction(4, 10_000), from_exponent=2, to_exponent=4) == 49


@given(
    st.integers(0, 10**12),
    st.integers(1, 10**9),
    st.integers(1, 10**9),
    st.integers(0, 18),
    st.integers(0, 18),
)
def test_conversion_is_within_half_a_minor_unit_of_the_exact_value(
    amount: int, numerator: int, denominator: int, from_exponent: int, to_exponent: int
) -> None:
    exact = (
        amount * Fraction(numerator, denominator) * Fraction(10) ** (to_exponent - from_exponent)
    )
    converted = convert(
        amount, Fraction(numerator, denominator),
        from_exponent=from_exponent, to_exponent=to_exponent,
    )  # fmt: skip
    assert -Fraction(1, 2) < converted - exact <= Fraction(1, 2)


@given(st.integers(0, 10**15), st.integers(1, 10**6), st.data())
def test_shares_of_a_hold_add_up_to_it_and_the_whole_is_all_of_it(
    total: int, whole: int, data: st.DataObject
) -> None:
    part = data.draw(st.integers(0, whole))
    share = share_of(total, part, whole)
    assert 0 <= share <= total
    assert share_of(total, whole, whole) == total
    assert abs(Fraction(share) - Fraction(total * part, whole)) <= Fraction(1, 2)


def test_the_markup_is_a_percentage_of_the_converted_amount() -> None:
    conversion = convert_with_markup(
        4_000, rate("0.0000125"), ProductFx(200), from_exponent=2, to_exponent=8
    )
    assert (conversion.account_minor, conversion.markup_minor, conversion.total_minor) == (
        50_000,
        1_000,
        51_000,
    )
    assert (conversion.billing_asset, conversion.account_asset, conversion.rate_text) == (
        "GBP",
        "BTC",
        "0.0000125",
    )
    with pytest.raises(ValueError):
        ProductFx(10_001)


def test_the_rate_in_force_is_the_latest_begun_and_never_a_stale_one() -> None:
    rates = by_pair(
        [
            rate("0.1", T0 - timedelta(hours=2)),
            rate("0.2", T0 - timedelta(minutes=10)),
            rate("0.3", T0 + timedelta(minutes=10)),  # not yet
        ]
    )
    chosen = rate_in_force(rates, "GBP", "BTC", T0)
    assert isinstance(chosen, FxRate)
    assert chosen.rate_text == "0.2"
    later = rate_in_force(rates, "GBP", "BTC", T0 + timedelta(minutes=11))
    assert isinstance(later, FxRate)
    assert later.rate_text == "0.3"
    stale = rate_in_force(rates, "GBP", "BTC", T0 + timedelta(hours=1, minutes=11))
    assert isinstance(stale, RateProblem)
    assert "older than its maximum age" in stale.detail
    missing = rate_in_force(rates, "BTC", "GBP", T0)  # a pair is one direction
    assert isinstance(missing, RateProblem)
    assert "no BTC to GBP rate" in missing.detail


def test_rates_refuse_a_pair_of_one_asset_and_ages_out_of_range() -> None:
    with pytest.raises(ValueError):
        FxRate("GBP", "GBP", "1", T0, 60)
    for age in (0, 31 * 86_400 + 1):
        with pytest.raises(ValueError):
            FxRate("GBP", "BTC", "1", T0, age)


def test_what_converts_into_what() -> None:
    # The account holds the billing asset: nothing converts.
    assert converted_into(("GBP", "BTC"), ("GBP",), "GBP") is None
    # An account without balances: nothing to convert into.
    assert converted_into(("BTC",), (), "GBP") is None
    # The first of the product's assets the account holds.
    assert converted_into(("XAU", "BTC"), ("BTC", "XAU"), "GBP") == "XAU"
    assert converted_into(("EUR",), ("BTC",), "GBP") == "BTC"


def test_a_converted_amount_out_of_range_is_a_problem_not_an_overflow() -> None:
    rates = by_pair([FxRate("JPY", "BTC", "1000000", T0, 60)])
    problem = convert_billing(
        "JPY", AMOUNT_MAX_MINOR, "BTC", rates=rates, markup=ProductFx(0), assets=ASSETS, at=T0
    )
    assert isinstance(problem, RateProblem)
    assert "out of range" in problem.detail
    fine = convert_billing("JPY", 1, "BTC", rates=rates, markup=ProductFx(0), assets=ASSETS, at=T0)
    assert not isinstance(fine, RateProblem)
    assert fine.account_minor == 100_000_000_000_000
