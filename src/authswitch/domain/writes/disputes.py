"""The writes of dispute steps (service/disputes.py plans and guards them): a step's journal
entry and balance change (:func:`~authswitch.domain.postings.dispute_step`), its DISPUTE
notification, its row and history change, and its decision keyed by the message that asked
for it; and the record of a network step refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from authswitch.domain import postings
from authswitch.domain.catalog import ProgramRow
from authswitch.domain.codes import Code, Reason
from authswitch.domain.disputes import DisputeRow, DisputeStatus, DisputeStep, StepPlan
from authswitch.domain.records import (
    DecisionRecord,
    DisputeChange,
    DisputeOpening,
    LedgerWrite,
    Notification,
)
from authswitch.domain.writes.authorization import NewId

__all__ = [
    "KIND_DISPUTE",
    "PlannedStep",
    "dispute_decision",
    "refused_step",
    "step_movement",
    "step_write",
]

KIND_DISPUTE = "DISPUTE"

# The reason recorded with a dispute step's decision, by its response code: each code a step
# is answered with has a reason of that code (codes.py).
_REASONS = {
    Code.APPROVED: Reason.APPROVED,
    Code.INVALID_TRANSACTION: Reason.INVALID_TRANSACTION,
    Code.INVALID_AMOUNT: Reason.INVALID_AMOUNT,
    Code.NO_RECORD: Reason.NO_RECORD,
}


@dataclass(frozen=True, slots=True)
class PlannedStep:
    """A step about to be written: what it is, who asked, and how it is answered."""

    dispute: DisputeRow  # as it will be after the step
    step: DisputeStep
    from_status: DisputeStatus | None
    plan: StepPlan
    source: str
    message_id: str
    fingerprint: bytes
    detail: dict[str, object]
    opening: DisputeOpening | None = None


def step_movement(*, step: PlannedStep, program: ProgramRow, new_id: NewId) -> postings.Movement:
    """What a step moves on the ledger (its entry's id drawn from ``new_id``): nothing
    off-ledger or when it moves no money."""
    dispute, plan = step.dispute, step.plan
    if not (dispute.on_ledger and plan.moves_money):
        return postings.Movement(())
    return postings.dispute_step(
        dispute.account_id, dispute.asset, f"DISPUTE_{step.step.value}",
        postings.Origin(
            new_id(), program.id, dispute.updated_at, step.source, step.message_id,
            f"dispute {dispute.id} {step.step.value.lower().replace('_', ' ')}",
            dispute.network_reference, dispute.card_id,
        ),
        (
            (dispute.account_id, plan.customer_minor),
            (program.clearing_account_id, plan.clearing_minor),
            (program.dispute_account_id, plan.disputes_minor),
        ),
        customer_minor=plan.customer_minor,
    )  # fmt: skip


def step_write(
    *, step: PlannedStep, program: ProgramRow, movement: postings.Movement, decision_id: str,
    notification_id: str, response: bytes,
) -> LedgerWrite:  # fmt: skip
    """One step (``movement``: :func:`step_movement`'s) with its decision (``response``: the
    reply's bytes), DISPUTE notification and dispute change, as one write."""
    dispute = step.dispute
    entry_id = movement.entries[0].id if movement.entries else None
    note = Notification(
        id=notification_id, program_id=program.id, kind="DISPUTE",
        payload=_step_payload(step, entry_id), created_at=dispute.updated_at,
        account_id=dispute.account_id, card_id=dispute.card_id, sinks=program.sinks,
    )  # fmt: skip
    record = dispute_decision(
        source=step.source, message_id=step.message_id, fingerprint=step.fingerprint,
        response=response, decision_id=decision_id, at=dispute.updated_at, dispute=dispute,
        amount_minor=dispute.amount_minor,
    )  # fmt: skip
    return LedgerWrite(
        decision=record,
        entries=movement.entries,
        balance_changes=movement.changes,
        notifications=(note,),
        disputes=(_step_change(step, entry_id),),
    )


def refused_step(
    *, source: str, message_id: str, fingerprint: bytes, response: bytes, decision_id: str,
    at: datetime, dispute: DisputeRow | None, amount_minor: int, response_code: str,
) -> LedgerWrite:  # fmt: skip
    """A refused network step, recorded so that its retries get the same answer."""
    return LedgerWrite(
        decision=dispute_decision(
            source=source, message_id=message_id, fingerprint=fingerprint, response=response,
            decision_id=decision_id, at=at, dispute=dispute, amount_minor=amount_minor,
            response_code=response_code,
        )
    )  # fmt: skip


def dispute_decision(
    *, source: str, message_id: str, fingerprint: bytes, response: bytes, decision_id: str,
    at: datetime, dispute: DisputeRow | None, amount_minor: int,
    response_code: str = Code.APPROVED,
) -> DecisionRecord:  # fmt: skip
    approved = response_code == Code.APPROVED
    reason = _REASONS.get(response_code)
    if reason is None:
        raise ValueError(f"a dispute step is not answered {response_code!r}")
    return DecisionRecord(
        id=decision_id, source=source, message_id=message_id, kind=KIND_DISPUTE,
        fingerprint=fingerprint, card_id=dispute.card_id if dispute else None,
        account_id=dispute.account_id if dispute else None,
        asset=dispute.asset if dispute else None, amount_minor=amount_minor,
        approved_minor=amount_minor if approved else 0, fee_minor=0,
        response_code=response_code,
        reason=int(reason),
        response=response, created_at=at,
    )  # fmt: skip


def _step_payload(step: PlannedStep, entry_id: str | None) -> dict[str, object]:
    """The DISPUTE notification of a step."""
    dispute = step.dispute
    return {
        "dispute_id": dispute.id, "step": step.step.value,
        "from_status": step.from_status.value if step.from_status else "",
        "to_status": dispute.status, "amount_minor": dispute.amount_minor,
        "asset": dispute.asset, "provisional_minor": dispute.provisional_minor,
        # What the step does to the cardholder's balance, wherever that is kept: an
        # off-ledger client applies it to its own ledger (docs/client-contract.md).
        "customer_minor": step.plan.customer_minor,
        "reason_code": dispute.reason_code, "network_reference": dispute.network_reference,
        "clearing_source": dispute.clearing_source,
        "clearing_message_id": dispute.clearing_message_id, "entry_id": entry_id or "",
    }  # fmt: skip


def _step_change(step: PlannedStep, entry_id: str | None) -> DisputeChange:
    """The dispute's row and history change of a step."""
    dispute = step.dispute
    return DisputeChange(
        dispute_id=dispute.id, step=step.step.value,
        from_status=step.from_status.value if step.from_status else None,
        to_status=dispute.status, amount_minor=dispute.amount_minor,
        provisional_minor=dispute.provisional_minor, source=step.source,
        message_id=step.message_id, at=dispute.updated_at, entry_id=entry_id,
        detail=step.detail, opening=step.opening,
    )  # fmt: skip
