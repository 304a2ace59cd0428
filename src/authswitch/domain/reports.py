"""The shapes of the files authswitch produces (pure): the daily account balance report of
seed 003, and seed 002's subledger net-change file and pooled FBO balance file.

Seed 003's example has typos (curly quotes, another file name); its field table decides.
Where the table and the example differ, the table wins, and the example shows the format
of values: ``actual_balance`` and ``available_balance`` are signed ("+100.00", "-40.00"),
``debit_reservation`` is not ("30.00"), and ``total_number_of_records`` is a string.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from authswitch.domain.money import format_signed, format_unsigned

__all__ = [
    "BalanceRow",
    "balance_record",
    "balance_report_name",
    "file_date_and_time",
    "valid_prefix",
]

_PREFIX = re.compile(r"^[A-Za-z0-9_]{1,15}$")


def valid_prefix(prefix: str) -> bool:
    """Seed 003: alphanumeric, up to 15 characters, underscore allowed."""
    return bool(_PREFIX.match(prefix))


def balance_report_name(prefix: str, client: str, at: datetime) -> str:
    """``<Prefix>-accountbalance-<Client>-YYYYMMDD-hhmmss.json``, in UTC."""
    assert valid_prefix(prefix)
    assert at.tzinfo is not None
    stamp = at.astimezone(UTC).strftime("%Y%m%d-%H%M%S")
    return f"{prefix}-accountbalance-{client}-{stamp}.json"


def file_date_and_time(at: datetime) -> str:
    """Seed 003's ``file_date_and_time``: "YYYY-MM-DD hhmmss"."""
    return at.astimezone(UTC).strftime("%Y-%m-%d %H%M%S")


@dataclass(frozen=True, slots=True)
class BalanceRow:
    client_id: str
    program_id: str
    product_id: str
    account_profile_id: str
    account_id: str
    account_type: str  # SINGLE or MULTI_CURRENCY
    account_name: str
    account_reference: str
    asset: str
    numeric_code: str
    category: str  # FIAT, CRYPTO, COMMODITY
    exponent: int
    hosted_internally: bool  # on-ledger program: authswitch holds the balance
    is_base: bool
    actual_minor: int
    authorized_minor: int


def balance_record(row: BalanceRow) -> dict[str, object]:
    """One record of the account balance report, field by field as seed 003's table."""
    available = row.actual_minor - row.authorized_minor
    return {
        "asset_types": {
            # ISO 4217 numeric for fiat; the asset's own code otherwise (BTC, ETH).
            "asset_type": row.numeric_code or row.asset,
            "category": row.category,
            "hosted": "Internal" if row.hosted_internally else "External",
            "is_base": row.is_base,
        },
        "client_id": row.client_id,
        "program_id": row.program_id,
        "product_id": row.product_id,
        "account_profile_id": row.account_profile_id,
        "account_id": row.account_id,
        "account_type": "Multi-Currency" if row.account_type == "MULTI_CURRENCY" else "Single",
        "account_name": row.account_name,
        "account_reference": row.account_reference,
        "actual_balance": format_signed(row.actual_minor, row.exponent),
        "available_balance": format_signed(available, row.exponent),
        "debit_reservation": format_unsigned(row.authorized_minor, row.exponent),
    }
