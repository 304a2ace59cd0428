"""Disputes' requests and the network's answers, as plain values: an operator opens and
resolves a dispute (the admin API), the network moves it with a chargeback or a
representment (the gateway API)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from authswitch.domain.disputes import DisputeStatus

__all__ = [
    "DisputeNetworkStep",
    "DisputeOutcome",
    "NetworkStepAnswer",
    "OpenDispute",
    "ResolveDispute",
]


class DisputeOutcome(Enum):
    """How an operator resolves a dispute."""

    CARDHOLDER_WON = "CARDHOLDER_WON"
    MERCHANT_WON = "MERCHANT_WON"


@dataclass(frozen=True, slots=True)
class OpenDispute:
    """An operator's OpenDisputeRequest. ``amount_minor`` None: no amount was sent."""

    clearing_source: str
    clearing_message_id: str
    reason_code: str
    amount_minor: int | None
    asset: str
    provisional_credit: bool
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class ResolveDispute:
    """An operator's ResolveDisputeRequest. ``outcome`` None: none that is known."""

    dispute_id: str
    outcome: DisputeOutcome | None
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class DisputeNetworkStep:
    """The network's ChargebackRequest or RepresentRequest (the same fields).
    ``amount_minor`` None: no amount was sent."""

    source: str
    message_id: str
    dispute_id: str
    network_reference: str
    amount_minor: int | None
    asset: str
    reason_code: str


@dataclass(frozen=True, slots=True)
class NetworkStepAnswer:
    """The answer to a chargeback or a representment. ``status`` None: the dispute's
    status is not shown (a format error, no such dispute)."""

    response_code: str
    status: DisputeStatus | None = None
    entry_id: str = ""
    decision_id: str = ""
