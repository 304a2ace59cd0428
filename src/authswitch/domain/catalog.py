"""The catalogue as services read it (pure values): clients, programs and products, and
the admin API's listings of clients and programs. ``adapters/postgres/catalog.py`` keeps
them; ``service/catalog.py`` caches them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from authswitch.domain.authorization import ProductRules
from authswitch.domain.fx import ProductFx
from authswitch.domain.offledger import ClientRouting

__all__ = ["ClientRow", "ProductRow", "ProgramRow", "ProgramSummary"]


@dataclass(frozen=True, slots=True)
class ClientRow:
    """A client as the admin API lists it."""

    client_id: str
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ProgramSummary:
    """A programme as the admin API lists it."""

    program_id: str
    client_id: str
    name: str
    mode: str
    time_zone: str
    country: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ProgramRow:
    """A program as services decide with it."""

    id: str
    client_id: str
    name: str
    mode: str
    time_zone: str
    clearing_account_id: str
    fee_account_id: str
    country: str = ""
    # The other side of dispute steps (created with the program; see domain/disputes.py).
    dispute_account_id: str = ""
    # Where the program's notifications go ("client", "webhook").
    sinks: tuple[str, ...] = ()
    routing: ClientRouting | None = None
    webhook_url: str = ""
    webhook_secret: str = ""
    # Subscribed to MOVEMENT notifications (on-ledger; service/movements.py).
    movements: bool = False


@dataclass(frozen=True, slots=True)
class ProductRow:
    """A product as services decide with it: its rules, hold validity and conversion."""

    id: str
    program_id: str
    name: str
    account_types: tuple[str, ...]
    assets: tuple[str, ...]
    rules: ProductRules
    hold_validity_days: int
    hold_validity_by_mcc: dict[str, int]
    # Currency conversion of a billing asset its cards' accounts do not hold (docs/fx.md):
    # None when the product does not convert.
    fx: ProductFx | None = None
