"""What authswitch asks an off-ledger client's DecisionService and what the client answers
(decision.proto), and the notifications it delivers there, as plain values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from authswitch.domain.networkdata import NetworkData

__all__ = ["ClientReply", "DecideAsk", "Notice"]


@dataclass(frozen=True, slots=True)
class DecideAsk:
    """One DecideRequest: the authorisation, with the core checks passed and the fee."""

    decision_id: str
    source: str
    message_id: str
    network_reference: str
    program_id: str
    card_id: str
    account_id: str
    pan_last_four: str  # the card's own PAN, also when the network sent a token
    transaction_type: int
    partial_allowed: bool
    channel: int
    core_checks: tuple[str, ...]  # the names of the checks passed
    time_left_ms: int
    incremental: bool
    original_message_id: str
    billing_minor: int
    billing_asset: str
    transaction_minor: int
    transaction_asset: str  # empty: the network sent no transaction amount
    fee_minor: int
    mcc: str
    merchant_country: str
    merchant_id: str
    network: NetworkData | None
    received_at: datetime


@dataclass(frozen=True, slots=True)
class ClientReply:
    """A client's DecideResponse as it came (checked by domain/offledger.check_answer)."""

    decision: int  # ClientDecision number
    decision_name: str  # its name, "" for a number the protocol does not know
    approved_minor: int
    approved_asset: str
    response_code: str
    authorization_code: str
    reason: str


@dataclass(frozen=True, slots=True)
class Notice:
    """One NotifyRequest: a notification delivered to the client."""

    notification_id: str
    kind: str
    program_id: str
    account_id: str
    card_id: str
    sequence: int
    attempt: int
    payload: Mapping[str, object]
    created_at: datetime
