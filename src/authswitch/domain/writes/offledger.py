"""The writes of off-ledger decisions (DESIGN.md §6): a decline by the core checks or the
product's limits, the client's answer, and a stand-in's (DECLINE or APPROVE policy; a SHADOW
stand-in decides from the shadow ledger and is written by
:func:`~authswitch.domain.writes.authorization.authorization_write`).

Every decision is recorded with, in ``client_calls``, the client's answer or the stand-in and
why; its FEE notification tells the client of the fee (seed 004: "fees are communicated to
you via webhook"). On a SHADOW programme the shadow ledger follows the client: its approval
is held (:func:`mirrored`), its decline fee posted when available covers it.
"""

from __future__ import annotations

from datetime import datetime

from authswitch.domain.authorization import (
    AuthorizationRequest,
    CardFacts,
    PinTriesExceededAction,
)
from authswitch.domain.catalog import ProgramRow
from authswitch.domain.codes import Reason, outcome
from authswitch.domain.messages.authorization import AuthorizeAnswer
from authswitch.domain.messages.decision import ClientReply
from authswitch.domain.offledger import Assessed, ClientAnswer, StandInPolicy, StandInReason
from authswitch.domain.postings import hold
from authswitch.domain.records import ClientCall, LedgerWrite, Notification, UsageChange
from authswitch.domain.writes.authorization import (
    APPROVALS,
    Arrival,
    AuthorizeResult,
    HoldPlan,
    NewId,
    checks_declined,
    hold_record,
    notification,
    stand_in_advice,
    taken_fee,
)

__all__ = [
    "FEE_NOTIFIED",
    "FEE_NOT_APPLIED",
    "FEE_POSTED",
    "client_answered",
    "declined_by_checks",
    "fee_notifications",
    "mirrored",
    "stand_in_call",
    "stand_in_write",
]

# What became of a decision's fee (the FEE notification's ``fee_mode``): the client applies
# it; or, a SHADOW programme's decline fee, the shadow ledger posted it, or could not.
FEE_NOTIFIED, FEE_POSTED, FEE_NOT_APPLIED = "NOTIFIED", "POSTED", "NOT_APPLIED"


def declined_by_checks(
    *, arrival: Arrival, card: CardFacts, program: ProgramRow, checks: AuthorizeResult,
    reason: Reason, pin_action: PinTriesExceededAction, new_pvv: bytes | None,
    decision_id: str, response: bytes, assessed: Assessed | None, new_id: NewId,
) -> LedgerWrite:  # fmt: skip
    """A decline by the core checks (``checks``, with its PIN effects), or (``reason`` from
    ``assessed.declined``) by the product or a limit before the client is asked, with its
    decline fee's usage and notification if any."""
    write = checks_declined(
        arrival=arrival, card=card, program=program, checks=checks, reason=reason,
        pin_action=pin_action, new_pvv=new_pvv, decision_id=decision_id, response=response,
        new_id=new_id,
    )  # fmt: skip
    if assessed is not None:
        write.notifications += fee_notifications(
            arrival=arrival, card=card, program=program, assessed=assessed, decided=reason,
            mode=FEE_NOTIFIED, new_id=new_id,
        )  # fmt: skip
        write.usage = assessed.counted.usage() if assessed.counted else ()
    return write


def client_answered(
    *, arrival: Arrival, card: CardFacts, program: ProgramRow, checks: AuthorizeResult,
    pin_action: PinTriesExceededAction, new_pvv: bytes | None, answer: ClientAnswer,
    latency_us: int, assessed: Assessed, fee_mode: str, decision_id: str, response: bytes,
    new_id: NewId,
) -> LedgerWrite:  # fmt: skip
    """The client's answer: its record and client call, the counters it leaves counted
    (``assessed.counted``, as the client's answer left it) and its fee's notification
    (``fee_mode``: FEE_POSTED also posts a SHADOW programme's decline fee)."""
    request, received = arrival.request, arrival.received
    approved = answer.reason in APPROVALS
    counted = assessed.counted
    write = checks_declined(
        arrival=arrival, card=card, program=program, checks=checks, reason=answer.reason,
        pin_action=pin_action, new_pvv=new_pvv, decision_id=decision_id, response=response,
        new_id=new_id, approved_minor=answer.approved_minor if approved else 0,
        fee_minor=assessed.fee_minor if approved else assessed.decline_fee_minor,
    )  # fmt: skip
    call = ClientCall(
        source=request.source,
        message_id=request.message_id,
        program_id=program.id,
        outcome="CLIENT",
        created_at=received,
        client_decision=answer.reason.name,
        client_response_code=answer.response_code,
        client_reason=answer.client_reason,
        latency_us=latency_us,
    )
    if approved and counted is not None:
        call.usage_keys, call.usage_minor = counted.keys, counted.amount_minor
        call.network_reference = request.network_reference
    write.client_calls = (call,)
    write.usage = counted.usage() if counted is not None else ()
    write.notifications += fee_notifications(
        arrival=arrival, card=card, program=program, assessed=assessed,
        decided=answer.reason, mode=fee_mode, response_code=answer.response_code,
        new_id=new_id,
    )  # fmt: skip
    if fee_mode == FEE_POSTED:  # a SHADOW programme's decline fee, taken from its ledger
        taken = taken_fee(
            request, received, card, program, assessed.decline_fee_minor, new_id(),
            "decline fee",
        )  # fmt: skip
        write.balance_changes, write.entries = taken.changes, taken.entries
    return write


def mirrored(
    *, write: LedgerWrite, arrival: Arrival, card: CardFacts, plan: HoldPlan,
    amount_minor: int, hold_id: str,
) -> LedgerWrite:  # fmt: skip
    """A SHADOW programme's client approval (``write``) held on the shadow ledger too,
    without a funds check (the client decided)."""
    request, received = arrival.request, arrival.received
    held = hold_record(
        hold_id, request, card, plan, received, amount_minor=amount_minor, fee_minor=0,
        # A reversal or clearing of the hold adjusts the limits it counted.
        usage_keys=tuple(k for c in write.client_calls for k in c.usage_keys),
    )  # fmt: skip
    return LedgerWrite(
        decision=write.decision,
        holds=(held,),
        balance_changes=(hold(card.account_id, request.billing_asset, amount_minor),),
        usage=write.usage,
        card_updates=write.card_updates,
        notifications=write.notifications,
        client_calls=write.client_calls,
    )


def stand_in_write(
    *, arrival: Arrival, card: CardFacts, program: ProgramRow, checks: AuthorizeResult,
    pin_action: PinTriesExceededAction, new_pvv: bytes | None, reason: StandInReason,
    policy: StandInPolicy, latency_us: int | None, wire: ClientReply | None,
    stand_in_counter: tuple[str, datetime] | None, assessed: Assessed,
    answer: AuthorizeAnswer, response: bytes, new_id: NewId,
) -> LedgerWrite:  # fmt: skip
    """A DECLINE or APPROVE stand-in: approved (with its fee) when the APPROVE policy's
    limits took it, counted on ``stand_in_counter`` (key, expiry); else 91, the issuer
    unavailable, without a decline fee. ``answer``: the answer encoded as ``response``."""
    request, received = arrival.request, arrival.received
    decided = Reason.APPROVED if stand_in_counter is not None else Reason.CLIENT_UNAVAILABLE
    write = checks_declined(
        arrival=arrival, card=card, program=program, checks=checks, reason=decided,
        pin_action=pin_action, new_pvv=new_pvv, decision_id=answer.decision_id,
        response=response, new_id=new_id, approved_minor=answer.approved_minor,
        fee_minor=answer.fee_minor,
    )  # fmt: skip
    call = stand_in_call(request, received, program, reason, policy, latency_us, wire)
    counted = assessed.counted
    if stand_in_counter is not None:
        key, ends = stand_in_counter
        amount = request.billing_amount_minor
        write.usage = (UsageChange(card.account_id, key, amount, 1, ends),)
        if counted is not None:
            write.usage += counted.usage()
            call.usage_keys, call.usage_minor = counted.keys, counted.amount_minor
            call.network_reference = request.network_reference
        write.notifications += (
            stand_in_advice(
                request, received, card, program, reason, policy,
                outcome(decided).response_code, amount, assessed.fee_minor,
                answer.authorization_code, new_id(),
            ),
        )  # fmt: skip
        write.notifications += fee_notifications(
            arrival=arrival, card=card, program=program, assessed=assessed,
            decided=decided, mode=FEE_NOTIFIED, new_id=new_id,
        )  # fmt: skip
    write.client_calls = (call,)
    return write


def stand_in_call(
    request: AuthorizationRequest, received: datetime, program: ProgramRow,
    reason: StandInReason, policy: StandInPolicy, latency_us: int | None,
    wire: ClientReply | None,
) -> ClientCall:  # fmt: skip
    """The record of a client call answered by standing in; ``wire``: the client's answer,
    when it gave one that could not be used."""
    return ClientCall(
        source=request.source,
        message_id=request.message_id,
        program_id=program.id,
        outcome="STAND_IN",
        created_at=received,
        stand_in_reason=reason.name,
        stand_in_policy=policy.value,
        client_decision=wire.decision_name if wire else "",
        client_response_code=wire.response_code[:8] if wire else "",
        latency_us=latency_us,
    )


def fee_notifications(
    *, arrival: Arrival, card: CardFacts, program: ProgramRow, assessed: Assessed,
    decided: Reason, mode: str, response_code: str = "", new_id: NewId,
) -> tuple[Notification, ...]:  # fmt: skip
    """The FEE notification of a decision: the fee of an approval, or the decline fee of a
    decline, with the rules that make it up and the transaction it belongs to (none without
    a fee). ``mode``: FEE_NOTIFIED (the client applies it), or what the shadow ledger did
    (FEE_POSTED, FEE_NOT_APPLIED)."""
    declined = decided not in APPROVALS
    fee = assessed.decline_fee_minor if declined else assessed.fee_minor
    if not fee:
        return ()
    request = arrival.request
    payload: dict[str, object] = {
        "stage": "AUTHORIZATION", "source": request.source,
        "message_id": request.message_id, "network_reference": request.network_reference,
        "response_code": response_code or outcome(decided).response_code, "fee_minor": fee,
        "asset": request.billing_asset, "amount_minor": request.billing_amount_minor,
        "fee_mode": mode, "on_decline": declined,
        "rules": [line.payload() for line in assessed.lines(declined=declined)],
    }  # fmt: skip
    kind = "FEE_NOT_APPLIED" if mode == FEE_NOT_APPLIED else "FEE"
    return (notification(new_id(), request, arrival.received, card, program, kind, payload),)
