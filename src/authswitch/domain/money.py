"""Assets and amounts. Money is an int64 count of an asset's minor units, never a float."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

__all__ = [
    "AMOUNT_MAX_MINOR",
    "INT64_MAX",
    "INT64_MIN",
    "Asset",
    "AssetCategory",
    "format_signed",
    "format_unsigned",
    "is_int64",
    "parse_decimal",
]

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
# The largest amount one message may carry. Far below int64 so that sums of many amounts
# (a balance, a day's limit usage) cannot overflow: 10^15 minor units is ten trillion GBP.
AMOUNT_MAX_MINOR = 10**15

_ASSET_CODE = re.compile(r"^[A-Z0-9]{3,12}$")


class AssetCategory(Enum):
    FIAT = "FIAT"
    CRYPTO = "CRYPTO"
    COMMODITY = "COMMODITY"


@dataclass(frozen=True, slots=True)
class Asset:
    """A unit of value an account balance is held in.

    ``exponent`` is the number of decimal places of the minor unit: GBP 2, JPY 0, BTC 8.
    ``numeric_code`` is ISO 4217's numeric code for fiat, empty otherwise.
    """

    code: str
    category: AssetCategory
    exponent: int
    numeric_code: str = ""

    def __post_init__(self) -> None:
        if not _ASSET_CODE.match(self.code):
            raise ValueError(f"asset code must be 3-12 upper-case letters or digits: {self.code!r}")
        if not 0 <= self.exponent <= 18:
            raise ValueError(f"asset exponent must be 0..18, got {self.exponent}")
        if self.category is AssetCategory.FIAT and not re.fullmatch(r"\d{3}", self.numeric_code):
            raise ValueError(f"fiat asset {self.code} needs a 3-digit ISO 4217 numeric code")

    @staticmethod
    def valid_code(code: str) -> bool:
        return bool(_ASSET_CODE.match(code))


def is_int64(value: int) -> bool:
    return INT64_MIN <= value <= INT64_MAX


def format_unsigned(amount_minor: int, exponent: int) -> str:
    """``-4000, 2 -> "-40.00"``; no sign for positive amounts."""
    sign = "-" if amount_minor < 0 else ""
    digits = str(abs(amount_minor))
    if exponent == 0:
        return sign + digits
    digits = digits.rjust(exponent + 1, "0")
    return f"{sign}{digits[:-exponent]}.{digits[-exponent:]}"


def format_signed(amount_minor: int, exponent: int) -> str:
    """Seed 003's signed decimal string: ``10000, 2 -> "+100.00"``, ``-4000, 2 -> "-40.00"``.

    Zero is written with a plus sign.
    """
    text = format_unsigned(amount_minor, exponent)
    return text if text.startswith("-") else "+" + text


_DECIMAL = re.compile(r"^([+-]?)(\d{1,19})(?:\.(\d+))?$")


def parse_decimal(text: str, exponent: int) -> int:
    """``"+100.00", 2 -> 10000``; refuses anything that is not an exact amount of the
    asset (more decimals than its exponent, exponents, spaces, thousands separators)."""
    match = _DECIMAL.match(text.strip())
    if match is None:
        raise ValueError(f"not a decimal amount: {text!r}")
    sign, whole, fraction = match[1], match[2], match[3] or ""
    if len(fraction) > exponent:
        raise ValueError(f"{text!r} has more than {exponent} decimals")
    value: int = int(whole) * 10**exponent + int(fraction.ljust(exponent, "0") or "0")
    value = -value if sign == "-" else value
    if not is_int64(value):
        raise ValueError(f"{text!r} is out of range")
    return value
