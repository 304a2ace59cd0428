"""Disputes' messages: the operators' OpenDispute, ResolveDispute and GetDispute (admin
API), the network's Chargeback and Represent (gateway API)."""

from __future__ import annotations

from authswitch.adapters.grpc.codec.common import balance_or_none, money_message
from authswitch.domain.disputes import DisputeEventRow, DisputeRow, DisputeStatus
from authswitch.domain.ledger import Balance
from authswitch.domain.messages.disputes import (
    DisputeNetworkStep,
    DisputeOutcome,
    NetworkStepAnswer,
    OpenDispute,
    ResolveDispute,
)
from authswitch.v1 import authorization_pb2 as pb
from authswitch.v1 import common_pb2, ledger_admin_pb2

__all__ = [
    "DisputeReplyEncoder",
    "dispute_history_message",
    "dispute_message",
    "keyless_bytes",
    "network_step_of",
    "open_dispute_of",
    "resolve_dispute_of",
]

_STATUS = {s: common_pb2.DisputeStatus.Value(f"DISPUTE_STATUS_{s.value}") for s in DisputeStatus}
_OUTCOME = {
    ledger_admin_pb2.DISPUTE_OUTCOME_CARDHOLDER_WON: DisputeOutcome.CARDHOLDER_WON,
    ledger_admin_pb2.DISPUTE_OUTCOME_MERCHANT_WON: DisputeOutcome.MERCHANT_WON,
}


# -- requests ---------------------------------------------------------------------------------


def keyless_bytes(
    request: ledger_admin_pb2.OpenDisputeRequest | ledger_admin_pb2.ResolveDisputeRequest,
) -> bytes:
    """The request without its idempotency key, for the fingerprint."""
    copy = type(request).FromString(request.SerializeToString(deterministic=True))
    copy.idempotency_key = ""
    return copy.SerializeToString(deterministic=True)


def open_dispute_of(request: ledger_admin_pb2.OpenDisputeRequest) -> OpenDispute:
    return OpenDispute(
        clearing_source=request.clearing_source,
        clearing_message_id=request.clearing_message_id,
        reason_code=request.reason_code,
        amount_minor=request.amount.amount_minor if request.HasField("amount") else None,
        asset=request.amount.asset,
        provisional_credit=request.provisional_credit,
        idempotency_key=request.idempotency_key,
    )


def resolve_dispute_of(request: ledger_admin_pb2.ResolveDisputeRequest) -> ResolveDispute:
    return ResolveDispute(
        dispute_id=request.dispute_id,
        outcome=_OUTCOME.get(request.outcome),
        idempotency_key=request.idempotency_key,
    )


def network_step_of(request: pb.ChargebackRequest | pb.RepresentRequest) -> DisputeNetworkStep:
    return DisputeNetworkStep(
        source=request.source,
        message_id=request.message_id,
        dispute_id=request.dispute_id,
        network_reference=request.network_reference,
        amount_minor=request.amount.amount_minor if request.HasField("amount") else None,
        asset=request.amount.asset,
        reason_code=request.reason_code,
    )


# -- replies ----------------------------------------------------------------------------------


def dispute_message(row: DisputeRow) -> ledger_admin_pb2.Dispute:
    message = ledger_admin_pb2.Dispute(
        dispute_id=row.id,
        program_id=row.program_id,
        account_id=row.account_id,
        card_id=row.card_id or "",
        clearing_source=row.clearing_source,
        clearing_message_id=row.clearing_message_id,
        network_reference=row.network_reference,
        amount=money_message(row.amount_minor, row.asset),
        reason_code=row.reason_code,
        status=_STATUS[DisputeStatus(row.status)],
        provisional_credit=money_message(row.provisional_minor, row.asset),
    )
    message.created_at.FromDatetime(row.created_at)
    message.updated_at.FromDatetime(row.updated_at)
    return message


def dispute_history_message(
    dispute: DisputeRow, events: list[DisputeEventRow]
) -> ledger_admin_pb2.GetDisputeResponse:
    response = ledger_admin_pb2.GetDisputeResponse(dispute=dispute_message(dispute))
    for event in events:
        message = response.events.add(
            step=event.step,
            from_status=(_STATUS[DisputeStatus(event.from_status)] if event.from_status else 0),
            to_status=_STATUS[DisputeStatus(event.to_status)],
            amount=money_message(event.amount_minor, dispute.asset),
            entry_id=event.entry_id or "",
            source=event.source,
            message_id=event.message_id,
        )
        message.created_at.FromDatetime(event.created_at)
    return response


class DisputeReplyEncoder:
    """The replies stored with dispute steps' decisions, as bytes
    (``authswitch.service.disputes.DisputeReplies``)."""

    def opened(self, dispute: DisputeRow, balance: Balance | None) -> bytes:
        return ledger_admin_pb2.OpenDisputeResponse(
            dispute=dispute_message(dispute), balance=balance_or_none(dispute.asset, balance)
        ).SerializeToString()

    def resolved(self, dispute: DisputeRow, balance: Balance | None) -> bytes:
        return ledger_admin_pb2.ResolveDisputeResponse(
            dispute=dispute_message(dispute), balance=balance_or_none(dispute.asset, balance)
        ).SerializeToString()

    def chargeback(self, answer: NetworkStepAnswer) -> bytes:
        return pb.ChargebackResponse(
            response_code=answer.response_code, status=_status(answer.status),
            entry_id=answer.entry_id, decision_id=answer.decision_id,
        ).SerializeToString()  # fmt: skip

    def represent(self, answer: NetworkStepAnswer) -> bytes:
        return pb.RepresentResponse(
            response_code=answer.response_code, status=_status(answer.status),
            entry_id=answer.entry_id, decision_id=answer.decision_id,
        ).SerializeToString()  # fmt: skip


def _status(status: DisputeStatus | None) -> common_pb2.DisputeStatus.ValueType:
    return _STATUS[status] if status is not None else common_pb2.DISPUTE_STATUS_UNSPECIFIED
