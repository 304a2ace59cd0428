"""Card number and expiry rules (pure), and a card as the admin API shows it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

__all__ = [
    "CardDetails",
    "bin_of",
    "expiry_valid_format",
    "is_expired",
    "last_four",
    "luhn_valid",
    "pan_valid",
    "pin_valid_format",
]

_PAN = re.compile(r"^\d{12,19}$")
_EXPIRY = re.compile(r"^\d{2}(0[1-9]|1[0-2])$")
_PIN = re.compile(r"^\d{4,12}$")


# Each digit of the doubled positions, replaced by the digit sum of its double.
_DOUBLED = str.maketrans("0123456789", "0246813579")


def luhn_valid(digits: str) -> bool:
    """ISO/IEC 7812 check digit (``digits`` all decimal digits)."""
    kept = sum(map(int, digits[-1::-2]))
    doubled = sum(map(int, digits[-2::-2].translate(_DOUBLED)))
    return (kept + doubled) % 10 == 0


def pan_valid(pan: str) -> bool:
    """12 to 19 digits with a valid Luhn check digit."""
    return bool(_PAN.match(pan)) and luhn_valid(pan)


def bin_of(pan: str) -> str:
    """The issuer identification number: the first eight digits (six for PANs under 16)."""
    return pan[:8] if len(pan) >= 16 else pan[:6]


def last_four(pan: str) -> str:
    return pan[-4:]


def expiry_valid_format(expiry_yymm: str) -> bool:
    return bool(_EXPIRY.match(expiry_yymm))


def pin_valid_format(pin: str) -> bool:
    return bool(_PIN.match(pin))


def is_expired(expiry_yymm: str, today: date) -> bool:
    """A card is valid through the last day of its expiry month."""
    year = 2000 + int(expiry_yymm[:2])
    month = int(expiry_yymm[2:])
    return (today.year, today.month) > (year, month)


@dataclass(frozen=True, slots=True)
class CardDetails:
    """A card with whose it is, the account it spends from and those linked to it."""

    card_id: str
    bin: str
    last_four: str
    expiry_yymm: str
    status: str
    account_id: str
    pin_tries: int
    linked: tuple[str, ...]
    client_id: str
    program_id: str
    product_id: str
