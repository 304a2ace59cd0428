"""What writes of every kind are built with: a decision record answered with a reply's bytes,
and a notification to a programme's sinks."""

from __future__ import annotations

from datetime import datetime

from authswitch.domain.authorization import CardFacts
from authswitch.domain.catalog import ProgramRow
from authswitch.domain.codes import Reason, outcome
from authswitch.domain.records import DecisionRecord, Notification

__all__ = ["decision", "to_program"]


def to_program(
    note_id: str, program: ProgramRow, kind: str, payload: dict[str, object],
    created_at: datetime, account_id: str | None, card_id: str | None,
) -> Notification:  # fmt: skip
    """A ``kind`` notification of ``program``, delivered to each of its sinks."""
    return Notification(
        id=note_id,
        program_id=program.id,
        kind=kind,
        payload=payload,
        created_at=created_at,
        account_id=account_id,
        card_id=card_id,
        sinks=program.sinks,
    )


def decision(
    *, kind: str, source: str, message_id: str, fingerprint: bytes, response: bytes,
    decision_id: str, now: datetime, card: CardFacts | None = None,
    account_id: str | None = None, asset: str | None = None, amount_minor: int = 0,
    reason: Reason = Reason.APPROVED,
) -> DecisionRecord:  # fmt: skip
    """The decision of a message answered with ``response``, its reply's bytes, for
    ``reason`` (its response code is the reason's; what it approved, all of ``amount_minor``
    or nothing)."""
    return DecisionRecord(
        id=decision_id,
        source=source,
        message_id=message_id,
        kind=kind,
        fingerprint=fingerprint,
        card_id=card.card_id if card else None,
        account_id=account_id or (card.account_id if card else None),
        asset=asset,
        amount_minor=amount_minor,
        approved_minor=amount_minor if reason is Reason.APPROVED else 0,
        fee_minor=0,
        response_code=outcome(reason).response_code,
        reason=int(reason),
        response=response,
        created_at=now,
    )
