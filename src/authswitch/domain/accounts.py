"""Accounts as services read them (pure values): an account and whose it is, and the
changes of its balances. ``adapters/postgres/ledger.py`` keeps them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

__all__ = ["AccountDetails", "AccountRow", "HistoryRow"]


@dataclass(frozen=True, slots=True)
class AccountRow:
    """An account as it is kept."""

    id: str
    program_id: str
    product_id: str | None
    kind: str
    account_type: str


@dataclass(frozen=True, slots=True)
class AccountDetails:
    """An account with whose it is: its client, programme and product ("" for none)."""

    account_id: str
    client_id: str
    program_id: str
    product_id: str
    kind: str
    account_type: str
    name: str
    reference: str
    profile_id: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """A balance change of an account: a hold event or a posting."""

    at: datetime
    kind: str
    asset: str | None
    actual_delta: int
    authorized_delta: int
    reference: str
    description: str | None
    source: str
    message_id: str
