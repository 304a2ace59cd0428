"""The writes of operators' calls that move money or change a card (service/admin.py,
service/accounts.py): an adjustment's movement, the decision an admin call's movement is
written with (keyed by its idempotency key under ``ADMIN_SOURCE``), and the notifications of
a card's status changed or expired.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from authswitch.domain import postings
from authswitch.domain.authorization import CardStatus
from authswitch.domain.catalog import ProgramRow
from authswitch.domain.codes import Reason
from authswitch.domain.postings import Origin
from authswitch.domain.records import DecisionRecord, LedgerWrite, Notification
from authswitch.domain.tokens import TokenStatus
from authswitch.domain.writes.common import decision

__all__ = [
    "ADMIN_SOURCE",
    "adjustment",
    "admin_write",
    "card_expired",
    "card_status_changed",
    "token_status_changed",
]

# Admin adjustments share the decisions table; their idempotency keys live under this source.
ADMIN_SOURCE = "admin"


def adjustment(
    *, account_id: str, program: ProgramRow, asset: str, amount_minor: int, credit: bool,
    purpose: str, description: str, key: str, entry_id: str, at: datetime,
    allow_negative: bool,
) -> postings.Movement:  # fmt: skip
    """An operator's credit or debit of a customer account, against the programme's
    clearing account (or, for a FEE, its fee income account); a debit must not take
    available below zero unless ``allow_negative``."""
    counter = program.fee_account_id if purpose == "FEE" else program.clearing_account_id
    return postings.adjustment(
        account_id, asset, amount_minor if credit else -amount_minor, counter, purpose,
        Origin(entry_id, program.id, at, ADMIN_SOURCE, key, description),
        requires_funds=not credit and not allow_negative,
    )  # fmt: skip


def admin_write(
    *, movement: postings.Movement, decision_id: str, key: str, kind: str,
    fingerprint: bytes, account_id: str, asset: str, amount_minor: int, at: datetime,
    response: bytes,
) -> LedgerWrite:  # fmt: skip
    """An admin call that moves money on ``account_id`` (an adjustment, a transfer): the
    movement with the call's decision, keyed (ADMIN_SOURCE, its idempotency key) and
    answered ``response``; refused (recorded INSUFFICIENT_FUNDS, with no reply) if Postgres
    finds the funds short."""

    def record(reason: Reason, reply: bytes) -> DecisionRecord:
        return decision(
            kind=kind, source=ADMIN_SOURCE, message_id=key, fingerprint=fingerprint,
            response=reply, decision_id=decision_id, now=at, account_id=account_id,
            asset=asset, amount_minor=amount_minor, reason=reason,
        )  # fmt: skip

    return LedgerWrite(
        decision=record(Reason.APPROVED, response),
        balance_changes=movement.changes,
        entries=movement.entries,
        refusal=lambda: record(Reason.INSUFFICIENT_FUNDS, b""),
    )


def card_status_changed(
    *, notification_id: str, program_id: str, account_id: str, card_id: str,
    previous: CardStatus, status: CardStatus, reason: str, at: datetime,
    sinks: tuple[str, ...], details: Mapping[str, object] | None = None,
) -> Notification:  # fmt: skip
    """A card's status changed (by an operator, or a velocity rule: ``details`` names it)."""
    return Notification(
        id=notification_id,
        program_id=program_id,
        kind="CARD_STATUS_CHANGED",
        payload={"from": previous.name, "to": status.name, "reason": reason, **(details or {})},
        created_at=at,
        account_id=account_id,
        card_id=card_id,
        sinks=sinks,
    )


def card_expired(
    *, notification_id: str, program_id: str, account_id: str, card_id: str, month: str,
    at: datetime, sinks: tuple[str, ...],
) -> Notification:  # fmt: skip
    """A card set EXPIRED past its expiry ``month`` (YYMM)."""
    return Notification(
        id=notification_id,
        program_id=program_id,
        kind="CARD_EXPIRED",
        payload={"month": month},
        created_at=at,
        account_id=account_id,
        card_id=card_id,
        sinks=sinks,
    )


def token_status_changed(
    *, notification_id: str, program_id: str, account_id: str, card_id: str, token_id: str,
    previous: TokenStatus, status: TokenStatus, reason: str, at: datetime,
    sinks: tuple[str, ...],
) -> Notification:  # fmt: skip
    """An operator changed a network token's status."""
    return Notification(
        id=notification_id,
        program_id=program_id,
        kind="TOKEN_STATUS_CHANGED",
        payload={"token_id": token_id, "from": previous.name, "to": status.name, "reason": reason},
        created_at=at,
        account_id=account_id,
        card_id=card_id,
        sinks=sinks,
    )
