"""The shapes of the files authswitch produces (pure): the daily account balance report of
seed 003, and seed 002's subledger net-change file and pooled FBO balance file.

Seed 003's example has typos (curly quotes, another file name); its field table decides.
Where the table and the example differ, the table wins, and the example shows the format
of values: ``actual_balance`` and ``available_balance`` are signed ("+100.00", "-40.00"),
``debit_reservation`` is not ("30.00"), and ``total_number_of_records`` is a string.

The rows the files are written from, as ``adapters/postgres/reports.py`` reads them, are
plain values here too (their programs, net changes, transaction lines, chargeback events,
message and posting counts, subscriptions and sync windows).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from authswitch.domain.money import format_signed, format_unsigned

__all__ = [
    "BalanceRow",
    "ChargebackEvent",
    "MessageCount",
    "NetChange",
    "PostingCount",
    "ReportProgram",
    "ReportSubscription",
    "SettlementProgram",
    "SyncWindow",
    "TransactionLine",
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


@dataclass(frozen=True, slots=True)
class ReportProgram:
    name: str
    time_zone: str


@dataclass(frozen=True, slots=True)
class SettlementProgram:
    time_zone: str
    ledger_kept: bool  # on-ledger, or shadowed by stand-in: authswitch keeps its ledger
    clearing_account_id: str | None
    fee_account_id: str | None


@dataclass(frozen=True, slots=True)
class NetChange:
    """The net change of one customer account in one asset."""

    account_id: str
    account_reference: str
    asset: str
    exponent: int
    net_minor: int


@dataclass(frozen=True, slots=True)
class SyncWindow:
    """The end of a subledger sync's file and the snapshot it was written from."""

    window_end: datetime
    snapshot: str


@dataclass(frozen=True, slots=True)
class TransactionLine:
    """One posting of a journal entry, as the daily transaction file shows it."""

    entry_id: str
    created_at: datetime
    entry_kind: str
    account_id: str
    account_kind: str
    account_reference: str
    card_last_four: str
    asset: str
    exponent: int
    amount_minor: int
    source: str
    message_id: str
    network_reference: str
    description: str
    # A converted message's billing amount and rate (docs/fx.md); "" and None otherwise.
    billing_asset: str
    billing_exponent: int | None
    billing_minor: int | None
    fx_rate: str


@dataclass(frozen=True, slots=True)
class ChargebackEvent:
    """One step of a dispute, as the daily chargeback file shows it."""

    event_id: int
    created_at: datetime
    dispute_id: str
    step: str
    from_status: str
    to_status: str
    reason_code: str
    exponent: int
    amount_minor: int
    asset: str
    account_id: str
    card_last_four: str
    clearing_source: str
    clearing_message_id: str
    network_reference: str
    entry_id: str
    source: str
    message_id: str


@dataclass(frozen=True, slots=True)
class MessageCount:
    """Messages of one network, asset and kind in a day: how many, and their amounts."""

    network: str
    asset: str
    kind: str
    count: int
    amount_minor: int


@dataclass(frozen=True, slots=True)
class PostingCount:
    """One account's postings of a day by the entry's kind or source (``key``) and asset."""

    key: str
    asset: str
    count: int
    amount_minor: int


@dataclass(frozen=True, slots=True)
class ReportSubscription:
    client_id: str
    prefix: str
