"""The lifecycle's messages: the network's Advise, Reverse, Clear, Refund and Credit
(gateway API) and the operators' ReleaseHold (admin API)."""

from __future__ import annotations

from typing import TypedDict

from authswitch.adapters.grpc.codec.common import (
    balance_message,
    balance_or_none,
    fx_or_none,
    money_message,
    money_or_none,
)
from authswitch.domain.messages.lifecycle import (
    Advice,
    AdviceAnswer,
    Clearing,
    ClearingAnswer,
    CreditAnswer,
    HoldReleaseAnswer,
    LifecycleAnswer,
    OriginalCredit,
    Refund,
    RefundAnswer,
    Reversal,
    ReversalAnswer,
)
from authswitch.v1 import authorization_pb2 as pb
from authswitch.v1 import common_pb2, ledger_admin_pb2

__all__ = [
    "LifecycleReplyEncoder",
    "advice_message",
    "advice_of",
    "clearing_message",
    "clearing_of",
    "credit_message",
    "hold_release_message",
    "original_credit_of",
    "refund_message",
    "refund_of",
    "reversal_message",
    "reversal_of",
]


# -- requests ---------------------------------------------------------------------------------


class _Billed(TypedDict):
    source: str
    message_id: str
    pan: str
    amount_minor: int
    asset: str


def _billed(request: pb.AdviseRequest | pb.RefundRequest | pb.CreditRequest) -> _Billed:
    """What an advice, a refund and an original credit begin with (``BilledMessage``): an
    absent billing amount is 0 and ""."""
    return _Billed(
        source=request.source,
        message_id=request.message_id,
        pan=request.pan,
        amount_minor=request.billing_amount.amount_minor,
        asset=request.billing_amount.asset,
    )


def advice_of(request: pb.AdviseRequest) -> Advice:
    return Advice(
        **_billed(request),
        network_reference=request.network_reference,
        original_message_id=request.original_message_id,
        authorization_code=request.authorization_code,
        mcc=request.merchant.mcc,
    )


def reversal_of(request: pb.ReverseRequest) -> Reversal:
    return Reversal(
        source=request.source,
        message_id=request.message_id,
        original_message_id=request.original_message_id,
        amount_minor=request.amount.amount_minor if request.HasField("amount") else None,
        asset=request.amount.asset,
        network_reference=request.network_reference,
        pan=request.pan,
    )


def clearing_of(request: pb.ClearRequest) -> Clearing:
    sent = request.HasField("billing_amount")
    return Clearing(
        source=request.source,
        message_id=request.message_id,
        pan=request.pan,
        amount_minor=request.billing_amount.amount_minor if sent else None,
        asset=request.billing_amount.asset,
        network_reference=request.network_reference,
        final=request.final,
        transaction_type=request.transaction_type,
        channel=request.channel,
        mcc=request.merchant.mcc,
        merchant_country=request.merchant.country,
        merchant_name=request.merchant.name,
    )


def refund_of(request: pb.RefundRequest) -> Refund:
    return Refund(
        **_billed(request),
        network_reference=request.network_reference,
        merchant_name=request.merchant.name,
    )


def original_credit_of(request: pb.CreditRequest) -> OriginalCredit:
    return OriginalCredit(
        **_billed(request),
        credit_type=request.credit_type,
        network_reference=request.network_reference,
        sender_name=request.sender_name,
        originator_name=request.merchant.name,
    )


# -- replies ----------------------------------------------------------------------------------


class _Common(TypedDict):
    response_code: str
    decision_id: str
    balance: common_pb2.Balance | None


def _common(answer: LifecycleAnswer) -> _Common:
    """The fields every reply to the network's lifecycle messages has (the balance absent
    when the answer shows none)."""
    return _Common(
        response_code=answer.response_code,
        decision_id=answer.decision_id,
        balance=balance_or_none(answer.asset, answer.balance),
    )


def advice_message(answer: AdviceAnswer) -> pb.AdviseResponse:
    return pb.AdviseResponse(
        **_common(answer),
        result=int(answer.result),  # type: ignore[arg-type]
        held=money_or_none(answer.held_minor, answer.asset),
        fx=fx_or_none(answer.fx),
    )


def reversal_message(answer: ReversalAnswer) -> pb.ReverseResponse:
    return pb.ReverseResponse(
        **_common(answer),
        result=int(answer.result),  # type: ignore[arg-type]
        released=money_or_none(answer.released_minor, answer.asset),
        fx=fx_or_none(answer.fx),
    )


def clearing_message(answer: ClearingAnswer) -> pb.ClearResponse:
    return pb.ClearResponse(
        **_common(answer),
        matched=answer.matched,
        released=money_or_none(answer.released_minor, answer.asset),
        posted=money_or_none(answer.posted_minor, answer.asset),
        entry_id=answer.entry_id,
        fee=money_or_none(answer.fee_minor, answer.asset),
        fx=fx_or_none(answer.fx),
    )


def refund_message(answer: RefundAnswer) -> pb.RefundResponse:
    return pb.RefundResponse(
        **_common(answer),
        credited=money_or_none(answer.credited_minor, answer.asset),
        entry_id=answer.entry_id,
        fx=fx_or_none(answer.fx),
    )


def credit_message(answer: CreditAnswer) -> pb.CreditResponse:
    return pb.CreditResponse(
        **_common(answer),
        reason=int(answer.reason or 0),  # type: ignore[arg-type]
        credited=money_or_none(answer.credited_minor, answer.asset),
        entry_id=answer.entry_id,
        detail=answer.detail,
    )


def hold_release_message(answer: HoldReleaseAnswer) -> ledger_admin_pb2.ReleaseHoldResponse:
    return ledger_admin_pb2.ReleaseHoldResponse(
        released=money_message(answer.released_minor, answer.asset),
        balance=balance_message(answer.asset, answer.balance),
    )


class LifecycleReplyEncoder:
    """The lifecycle's replies as bytes, the form stored with their decisions
    (``authswitch.service.lifecycle.LifecycleReplies``)."""

    def advise(self, answer: AdviceAnswer) -> bytes:
        return advice_message(answer).SerializeToString()

    def reverse(self, answer: ReversalAnswer) -> bytes:
        return reversal_message(answer).SerializeToString()

    def clear(self, answer: ClearingAnswer) -> bytes:
        return clearing_message(answer).SerializeToString()

    def refund(self, answer: RefundAnswer) -> bytes:
        return refund_message(answer).SerializeToString()

    def credit(self, answer: CreditAnswer) -> bytes:
        return credit_message(answer).SerializeToString()

    def release_hold(self, answer: HoldReleaseAnswer) -> bytes:
        return hold_release_message(answer).SerializeToString()
