from __future__ import annotations

import re
from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authswitch.domain.cards import bin_of, is_expired, last_four, luhn_valid, pan_valid
from authswitch.domain.money import Asset, AssetCategory, format_signed, format_unsigned


@pytest.mark.parametrize(
    ("minor", "exponent", "text"),
    [
        (10_000, 2, "+100.00"),
        (-4_000, 2, "-40.00"),
        (0, 2, "+0.00"),
        (5, 2, "+0.05"),
        (-5, 2, "-0.05"),
        (1234, 0, "+1234"),
        (1, 8, "+0.00000001"),
        (123_456_789, 3, "+123456.789"),
    ],
)
def test_signed_decimal_strings(minor: int, exponent: int, text: str) -> None:
    assert format_signed(minor, exponent) == text


@given(st.integers(-(10**15), 10**15), st.integers(0, 18))
def test_formatting_round_trips(minor: int, exponent: int) -> None:
    from decimal import Decimal

    text = format_unsigned(minor, exponent)
    assert Decimal(text).scaleb(exponent) == minor


def test_asset_validation() -> None:
    Asset("GBP", AssetCategory.FIAT, 2, "826")
    with pytest.raises(ValueError, match="numeric"):
        Asset("GBP", AssetCategory.FIAT, 2)
    with pytest.raises(ValueError, match="exponent"):
        Asset("BTC", AssetCategory.CRYPTO, 19)
    with pytest.raises(ValueError, match="code"):
        Asset("gbp", AssetCategory.FIAT, 2, "826")


def test_luhn() -> None:
    assert luhn_valid("4111111111111111")
    assert not luhn_valid("4111111111111112")
    assert pan_valid("4111111111111111")
    assert not pan_valid("41111111111")  # too short
    assert not pan_valid("4111 1111 1111 1111")


@given(st.text(alphabet="0123456789", min_size=11, max_size=18))
def test_exactly_one_check_digit_fits(body: str) -> None:
    assert sum(luhn_valid(body + d) for d in "0123456789") == 1


def test_bin_and_last_four() -> None:
    assert bin_of("4111111111111111") == "41111111"
    assert bin_of("411111111111") == "411111"
    assert last_four("4111111111111234") == "1234"


def test_card_valid_through_end_of_expiry_month() -> None:
    assert not is_expired("2612", date(2026, 12, 31))
    assert is_expired("2612", date(2027, 1, 1))
    assert not is_expired("2701", date(2026, 11, 23))


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=30))
def test_identifiers_are_printable_ascii_without_spaces(value: str) -> None:
    from authswitch.domain.authorization import identifier_ok

    expected = bool(re.fullmatch(r"[\x21-\x7e]+", value)) and len(value) <= 20
    assert identifier_ok(value, 20, required=True) is expected


@given(st.text(alphabet="0123456789", min_size=1, max_size=19))
def test_luhn_agrees_with_the_textbook_loop(digits: str) -> None:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char) * (2 if index % 2 else 1)
        total += value - 9 if value > 9 else value
    assert luhn_valid(digits) is (total % 10 == 0)
