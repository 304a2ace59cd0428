"""The whole ledger writes of the lifecycle after an authorisation (seed 001, DESIGN.md §3):
advices, reversals, hold releases (by a reversal, by age or by an operator), clearings,
refunds and original credits, and the messages that are only recorded, or recorded and
forwarded to an off-ledger client. One pure function per event.

Ids, the time and the reply's bytes are arguments. service/lifecycle.py gathers the facts,
runs the cache step with the change an event's ``*_change`` or ``*_movement`` function gives,
encodes the reply (it shows the balance after the change) and commits the write; each write
derives its own change from the same facts by the same function, so the cache and the
commit apply equal changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from authswitch.domain import postings
from authswitch.domain.authorization import CardFacts, CounterCheck
from authswitch.domain.catalog import ProgramRow
from authswitch.domain.codes import Reason
from authswitch.domain.credits import CreditType
from authswitch.domain.fees import FeeQuote
from authswitch.domain.fx import Conversion, fx_payload
from authswitch.domain.ledger import BalanceChange
from authswitch.domain.lifecycle import ClearingPlan, HoldRow, ReleasePlan, plan_reduction
from authswitch.domain.messages.lifecycle import Advice, Clearing, OriginalCredit, Refund, Reversal
from authswitch.domain.postings import Movement, Origin
from authswitch.domain.records import (
    ConversionRecord,
    DecisionRecord,
    HoldRecord,
    HoldRelease,
    LedgerWrite,
    Notification,
    Tombstone,
    UsageChange,
)
from authswitch.domain.writes.common import decision, to_program

__all__ = [
    "UsageDelta",
    "advice",
    "advice_change",
    "advice_fields",
    "advice_recorded",
    "clearing",
    "clearing_fields",
    "clearing_movement",
    "credit",
    "credit_declined",
    "credit_fields",
    "decision",
    "forwarded",
    "hold_release",
    "refund",
    "refund_fields",
    "refund_movement",
    "release_change",
    "release_usage",
    "reversal_fields",
    "reversal_recorded",
    "reversal_tombstoned",
    "unknown_card",
]

# A change to a limit counter: (key, amount, count).
UsageDelta = tuple[str, int, int]


# -- the parts every write is made of ------------------------------------------------------


def _decided(
    kind: str, request: Advice | Reversal | Clearing | Refund | OriginalCredit,
    card: CardFacts | None, asset: str | None, amount_minor: int, decision_id: str,
    now: datetime, response: bytes, fingerprint: bytes,
) -> DecisionRecord:  # fmt: skip
    """The decision of a network message about ``card`` acknowledged with ``response``."""
    return decision(
        kind=kind, source=request.source, message_id=request.message_id,
        fingerprint=fingerprint, response=response, decision_id=decision_id, now=now,
        card=card, asset=asset, amount_minor=amount_minor,
    )  # fmt: skip


def _card_notes(
    kind: str, program: ProgramRow, card: CardFacts, payload: dict[str, object],
    now: datetime, note_ids: tuple[str, str], fee: dict[str, object] | None = None,
) -> tuple[Notification, ...]:  # fmt: skip
    """The ``kind`` notification of a message about ``card``, and when ``fee`` gives a
    fee's details a FEE notification after it (the message's payload is added); the
    notifications take their ids from ``note_ids`` in that order."""
    note_id, fee_note_id = note_ids
    notes = (to_program(note_id, program, kind, payload, now, card.account_id, card.card_id),)
    if fee is None:
        return notes
    fee_payload = {**payload, **fee}
    fee_note = to_program(
        fee_note_id, program, "FEE", fee_payload, now, card.account_id, card.card_id
    )
    return (*notes, fee_note)


def _conversions(
    source: str, message_id: str, kind: str, conversion: Conversion | None, now: datetime
) -> tuple[ConversionRecord, ...]:
    if conversion is None:
        return ()
    return (ConversionRecord(source, message_id, kind, conversion, now),)


# -- messages recorded, with nothing held, released or posted ------------------------------


def unknown_card(
    *, kind: str, source: str, message_id: str, asset: str, amount_minor: int,
    decision_id: str, now: datetime, response: bytes, fingerprint: bytes,
) -> LedgerWrite:  # fmt: skip
    """A settlement message for a card authswitch does not know: answered 14, nothing
    posted, kept for the operators."""
    record = decision(
        kind=kind, source=source, message_id=message_id, fingerprint=fingerprint,
        response=response, decision_id=decision_id, now=now, asset=asset,
        amount_minor=amount_minor, reason=Reason.UNKNOWN_CARD,
    )  # fmt: skip
    return LedgerWrite(decision=record)


def advice_recorded(
    *, request: Advice, card: CardFacts | None, asset: str, amount_minor: int,
    decision_id: str, now: datetime, response: bytes, fingerprint: bytes,
) -> LedgerWrite:  # fmt: skip
    """An advice that holds nothing (an unknown card, no balance in the asset): acknowledged
    all the same, the network having approved it already."""
    record = _decided(
        "ADVICE", request, card, asset, amount_minor, decision_id, now, response, fingerprint
    )
    return LedgerWrite(decision=record)


def reversal_recorded(
    *, request: Reversal, requested_minor: int, decision_id: str, now: datetime,
    response: bytes, fingerprint: bytes,
) -> LedgerWrite:  # fmt: skip
    """A reversal acknowledged without releasing anything: its hold has ended already, or
    its original held nothing."""
    record = _decided(
        "REVERSAL", request, None, None, requested_minor, decision_id, now, response, fingerprint
    )
    return LedgerWrite(decision=record)


def reversal_tombstoned(
    *, request: Reversal, requested_minor: int, card: CardFacts | None, decision_id: str,
    now: datetime, response: bytes, fingerprint: bytes,
) -> LedgerWrite:  # fmt: skip
    """A reversal whose original is unknown: acknowledged, and a tombstone left under the
    original's key, so that the original holds only what was not reversed if it ever comes
    (``requested_minor`` 0: all of it)."""
    tombstone = Tombstone(
        request.source, request.original_message_id, requested_minor, requested_minor == 0, now
    )
    record = _decided(
        "REVERSAL", request, card, None, requested_minor, decision_id, now, response, fingerprint
    )
    return LedgerWrite(decision=record, tombstones=(tombstone,))


def forwarded(
    *, kind: str, source: str, message_id: str, card: CardFacts, program: ProgramRow,
    fields: dict[str, object], fee: dict[str, object] | None = None, decision_id: str,
    note_ids: tuple[str, str], now: datetime, response: bytes, fingerprint: bytes,
) -> LedgerWrite:  # fmt: skip
    """A message for an off-ledger client, whose ledger settles: recorded, and queued to the
    client as a notification of its ``fields``; ``fee``: the details of a FEE notification
    to follow it (the message's fields are added)."""
    record = decision(
        kind=kind, source=source, message_id=message_id, fingerprint=fingerprint,
        response=response, decision_id=decision_id, now=now, card=card,
        asset=str(fields.get("asset", "")) or None,
        amount_minor=int(str(fields.get("amount_minor", 0))),
    )  # fmt: skip
    payload = {"source": source, "message_id": message_id, **fields}
    notes = _card_notes(kind, program, card, payload, now, note_ids, fee)
    return LedgerWrite(decision=record, notifications=notes)


def advice_fields(request: Advice) -> dict[str, object]:
    """What the notification of an advice forwarded to an off-ledger client tells."""
    return {
        "network_reference": request.network_reference,
        "original_message_id": request.original_message_id,
        "amount_minor": request.amount_minor,
        "asset": request.asset,
        "authorization_code": request.authorization_code,
        "mcc": request.mcc,
    }


def reversal_fields(request: Reversal, requested_minor: int) -> dict[str, object]:
    """What the notification of a reversal forwarded to an off-ledger client tells
    (``requested_minor`` 0: all of it)."""
    return {
        "original_message_id": request.original_message_id,
        "amount_minor": requested_minor, "asset": request.asset,
        "full": requested_minor == 0, "network_reference": request.network_reference,
    }  # fmt: skip


def clearing_fields(
    request: Clearing, amount_minor: int, quote: FeeQuote
) -> tuple[dict[str, object], dict[str, object] | None]:
    """What the notification of a clearing of ``amount_minor`` forwarded to an off-ledger
    client tells, and the details of the FEE notification that follows it when ``quote``
    (the clearing fee computed as on-ledger) charges a fee: the client applies it (seed
    004: "fees are communicated to you via webhook")."""
    fields: dict[str, object] = {
        "network_reference": request.network_reference, "amount_minor": amount_minor,
        "asset": request.asset, "final": request.final, "mcc": request.mcc,
        "merchant": request.merchant_name, "fee_minor": quote.fixed_minor,
    }  # fmt: skip
    if not quote.fixed_minor:
        return fields, None
    lines = quote.charged_lines(declined=False, free_charged=frozenset())
    fee: dict[str, object] = {
        "stage": "CLEARING", "fee_mode": "NOTIFIED", "on_decline": False,
        "rules": [line.payload() for line in lines],
    }  # fmt: skip
    return fields, fee


def refund_fields(request: Refund) -> dict[str, object]:
    """What the notification of a refund forwarded to an off-ledger client tells."""
    return {
        "network_reference": request.network_reference, "amount_minor": request.amount_minor,
        "asset": request.asset, "merchant": request.merchant_name,
    }  # fmt: skip


def credit_fields(request: OriginalCredit) -> dict[str, object]:
    """What the notification of an original credit tells, on-ledger or forwarded."""
    return {
        "network_reference": request.network_reference, "amount_minor": request.amount_minor,
        "asset": request.asset, "credit_type": CreditType(request.credit_type).name,
        "originator": request.originator_name, "sender_name": request.sender_name,
    }  # fmt: skip


# -- advice: a hold raised or lowered to the advised total ---------------------------------


def advice_change(
    *, card: CardFacts, asset: str, amount_minor: int, held: Sequence[HoldRow]
) -> BalanceChange:
    """An advice's change to the authorised balance: what takes the transaction's open holds
    (``held``) to the advised ``amount_minor``, up or down. Never requires funds: the network
    has approved already."""
    return postings.hold(card.account_id, asset, amount_minor - sum(h.amount_minor for h in held))


def advice(
    *, request: Advice, card: CardFacts, program: ProgramRow, asset: str, amount_minor: int,
    original: HoldRow | None, held: Sequence[HoldRow], validity_days: int,
    conversion: Conversion | None, decision_id: str, hold_id: str, note_id: str,
    now: datetime, response: bytes, fingerprint: bytes,
) -> LedgerWrite:  # fmt: skip
    """An advice posted on-ledger (its change: :func:`advice_change`): a new hold of what it
    adds to the transaction's open holds ``held``, or those holds lowered newest first by
    what it takes away. ``amount_minor`` and ``asset`` are the account's (converted, with the
    markup, when ``conversion``); ``original``: the advised authorisation's open hold."""
    change = advice_change(card=card, asset=asset, amount_minor=amount_minor, held=held)
    delta = change.authorized_delta_minor
    holds: tuple[HoldRecord, ...] = ()
    releases: tuple[HoldRelease, ...] = ()
    if delta > 0:
        holds = (_advice_hold(request, card, asset, delta, original, held, validity_days,
                              conversion, hold_id, now),)  # fmt: skip
    elif delta < 0:
        releases = tuple(
            HoldRelease(plan, card.account_id, asset, now, "ADVICE")
            for plan in plan_reduction([h.open_hold() for h in held], -delta)
        )
    record = _decided(
        "ADVICE", request, card, asset, amount_minor, decision_id, now, response, fingerprint
    )
    payload = {
        "source": request.source, "message_id": request.message_id,
        "network_reference": request.network_reference,
        "original_message_id": request.original_message_id, "amount_minor": amount_minor,
        "held_minor": delta, "asset": asset,
        "authorization_code": request.authorization_code, **fx_payload(conversion),
    }  # fmt: skip
    return LedgerWrite(
        decision=record, holds=holds, releases=releases, balance_changes=(change,),
        notifications=_card_notes("ADVICE", program, card, payload, now, (note_id, "")),
        conversions=_conversions(request.source, request.message_id, "ADVICE", conversion, now),
    )  # fmt: skip


def _advice_hold(
    request: Advice, card: CardFacts, asset: str, delta: int, original: HoldRow | None,
    held: Sequence[HoldRow], validity_days: int, conversion: Conversion | None,
    hold_id: str, now: datetime,
) -> HoldRecord:  # fmt: skip
    """The hold an advice adds: ``delta`` more than its transaction holds already."""
    return HoldRecord(
        id=hold_id,
        account_id=card.account_id,
        asset=asset,
        card_id=card.card_id,
        source=request.source,
        message_id=request.message_id,
        network_reference=original.network_reference if original else request.network_reference,
        amount_minor=delta,
        fee_minor=0,
        expires_at=now + timedelta(days=validity_days),
        created_at=now,
        kind="ADVICE",
        # The whole converted amount is held (no original): an early reversal takes its
        # share (docs/fx.md).
        billing_minor=conversion.billing_minor if conversion and not held else 0,
    )


# -- a hold released: by a reversal, by age, by an operator --------------------------------


def release_usage(hold: HoldRow, plan: ReleasePlan, reason: str) -> list[UsageDelta]:
    """What releasing ``plan`` of ``hold`` for ``reason`` gives back to the limits' usage: a
    reversal, what it releases of the amount-based limits the hold counted in (counts
    stay); anything else, nothing."""
    if reason != "REVERSAL" or not plan.release_minor:
        return []
    return [(key, -plan.release_minor, 0) for key in hold.usage_keys]


def release_change(hold: HoldRow, plan: ReleasePlan) -> BalanceChange:
    """Releasing ``plan`` of ``hold``: its account's authorised balance less what it
    releases."""
    assert hold.account_id is not None
    assert hold.asset is not None
    return postings.release(hold.account_id, hold.asset, plan.release_minor)


def hold_release(
    *, hold: HoldRow, plan: ReleasePlan, reason: str, source: str, message_id: str,
    program: ProgramRow, conversion: Conversion | None = None, decision_id: str,
    note_id: str, now: datetime, response: bytes, fingerprint: bytes,
) -> LedgerWrite:  # fmt: skip
    """Release ``plan`` of ``hold`` for ``reason`` (REVERSAL, AGE_OFF or RELEASE), guarded
    on the hold being as planned (its change: :func:`release_change`, its usage:
    :func:`release_usage`); ``conversion``: a reversal's share of a converted hold."""
    change = release_change(hold, plan)
    account_id, asset = change.account_id, change.asset
    record = decision(
        kind=reason, source=source, message_id=message_id, fingerprint=fingerprint,
        response=response, decision_id=decision_id, now=now, account_id=account_id,
        asset=asset, amount_minor=plan.release_minor,
    )  # fmt: skip
    payload: dict[str, object] = {
        "source": source, "message_id": message_id, "hold_id": hold.id,
        "original_message_id": hold.message_id, "released_minor": plan.release_minor,
        "asset": asset, "hold_ended": plan.ends,
    }  # fmt: skip
    note = to_program(note_id, program, reason, payload, now, account_id, hold.card_id)
    return LedgerWrite(
        decision=record,
        releases=(HoldRelease(plan, account_id, asset, now, reason),),
        balance_changes=(change,),
        usage=tuple(
            UsageChange(account_id, k, a, c, now) for k, a, c in release_usage(hold, plan, reason)
        ),
        notifications=(note,),
        conversions=_conversions(source, message_id, reason, conversion, now),
    )


# -- clearing: the amount and its fees posted, the matched holds released ------------------


def clearing_movement(
    *, request: Clearing, card: CardFacts, program: ProgramRow, plan: ClearingPlan,
    asset: str, rules_fee_minor: int, markup_minor: int, entry_id: str,
    fee_entry_ids: tuple[str, str], now: datetime,
) -> Movement:  # fmt: skip
    """What a clearing posts of ``plan`` (its amount in the account's ``asset``): the
    cleared amount, and to the programme's fee account its rules' fee and the conversion
    markup, each that is charged as an entry of its own (ids from ``fee_entry_ids``)."""
    fee_lines = [
        (charged, program.fee_account_id, Origin(
            fee_entry_id, program.id, now, request.source, request.message_id, what,
            request.network_reference, card.card_id,
        ))
        for charged, what, fee_entry_id in (
            (rules_fee_minor, "clearing fee", fee_entry_ids[0]),
            (markup_minor, "currency conversion markup", fee_entry_ids[1]),
        )
        if charged
    ]  # fmt: skip
    origin = Origin(
        entry_id, program.id, now, request.source, request.message_id,
        request.merchant_name[:200], request.network_reference, card.card_id,
    )  # fmt: skip
    return postings.clearing(
        card.account_id, asset, plan.posted_minor, plan.released_minor,
        program.clearing_account_id, origin, fee_lines,
    )  # fmt: skip


def clearing(
    *, request: Clearing, card: CardFacts, program: ProgramRow, plan: ClearingPlan,
    asset: str, rules_fee_minor: int, markup_minor: int, conversion: Conversion | None,
    usage: Sequence[UsageDelta], expiry: dict[str, datetime], decision_id: str,
    entry_id: str, fee_entry_ids: tuple[str, str], note_ids: tuple[str, str], now: datetime,
    response: bytes, fingerprint: bytes,
) -> LedgerWrite:  # fmt: skip
    """A clearing posted on-ledger: what :func:`clearing_movement` posts of these facts, the
    holds of ``plan`` released, the limits' ``usage`` changed (each key expiring at
    ``expiry[key]``), and a CLEARING notification followed by a FEE one when a fee was
    posted."""
    movement = clearing_movement(
        request=request, card=card, program=program, plan=plan, asset=asset,
        rules_fee_minor=rules_fee_minor, markup_minor=markup_minor, entry_id=entry_id,
        fee_entry_ids=fee_entry_ids, now=now,
    )  # fmt: skip
    amount, fee_minor = plan.posted_minor, rules_fee_minor + markup_minor
    record = _decided(
        "CLEARING", request, card, asset, amount, decision_id, now, response, fingerprint
    )
    payload = {
        "source": request.source, "message_id": request.message_id,
        "network_reference": request.network_reference, "matched": plan.matched,
        "final": request.final, "amount_minor": amount, "released_minor":
        plan.released_minor, "fee_minor": fee_minor, "asset": asset,
        **fx_payload(conversion),
    }  # fmt: skip
    posted_fee: dict[str, object] | None = (
        {"stage": "CLEARING", "fee_mode": "POSTED"} if fee_minor else None
    )
    return LedgerWrite(
        decision=record,
        releases=tuple(
            HoldRelease(r, card.account_id, asset, now, "CLEARING") for r in plan.releases
        ),
        entries=movement.entries,
        balance_changes=movement.changes,
        usage=tuple(
            UsageChange(card.account_id, key, delta, uses, expiry[key])
            for key, delta, uses in usage
        ),
        notifications=_card_notes("CLEARING", program, card, payload, now, note_ids, posted_fee),
        conversions=_conversions(request.source, request.message_id, "CLEARING", conversion, now),
    )


# -- money from the network to the cardholder: refunds and original credits ----------------


def refund_movement(
    *, request: Refund, card: CardFacts, program: ProgramRow, amount_minor: int, asset: str,
    entry_id: str, now: datetime,
) -> Movement:  # fmt: skip
    """A refund of ``amount_minor`` (in the account's ``asset``) credited to the card's
    account from the programme's clearing account."""
    return postings.credit(
        card.account_id, asset, amount_minor, program.clearing_account_id, "REFUND",
        Origin(
            entry_id, program.id, now, request.source, request.message_id,
            request.merchant_name[:200], request.network_reference, card.card_id,
        ),
    )  # fmt: skip


def refund(
    *, request: Refund, card: CardFacts, program: ProgramRow, amount_minor: int, asset: str,
    conversion: Conversion | None, decision_id: str, entry_id: str, note_id: str,
    now: datetime, response: bytes, fingerprint: bytes,
) -> LedgerWrite:  # fmt: skip
    """A refund posted on-ledger: what :func:`refund_movement` posts (``amount_minor`` in
    the account's ``asset``, converted without markup when ``conversion``) and a REFUND
    notification."""
    movement = refund_movement(
        request=request, card=card, program=program, amount_minor=amount_minor, asset=asset,
        entry_id=entry_id, now=now,
    )  # fmt: skip
    amount = amount_minor
    record = _decided(
        "REFUND", request, card, asset, amount, decision_id, now, response, fingerprint
    )
    payload = {
        "source": request.source, "message_id": request.message_id,
        "network_reference": request.network_reference, "amount_minor": amount,
        "asset": asset, **fx_payload(conversion),
    }  # fmt: skip
    return LedgerWrite(
        decision=record, entries=movement.entries, balance_changes=movement.changes,
        notifications=_card_notes("REFUND", program, card, payload, now, (note_id, "")),
        conversions=_conversions(request.source, request.message_id, "REFUND", conversion, now),
    )  # fmt: skip


def credit_declined(
    *, request: OriginalCredit, card: CardFacts, reason: Reason, decision_id: str,
    now: datetime, response: bytes, fingerprint: bytes,
) -> LedgerWrite:  # fmt: skip
    """An original credit declined for ``reason``: recorded, nothing credited."""
    assert reason is not Reason.APPROVED
    record = decision(
        kind="CREDIT", source=request.source, message_id=request.message_id,
        fingerprint=fingerprint, response=response, decision_id=decision_id, now=now,
        card=card, asset=request.asset, amount_minor=request.amount_minor, reason=reason,
    )  # fmt: skip
    return LedgerWrite(decision=record)


def credit(
    *, request: OriginalCredit, card: CardFacts, program: ProgramRow,
    counters: Sequence[CounterCheck], fields: dict[str, object], decision_id: str,
    entry_id: str, note_id: str, now: datetime, response: bytes, fingerprint: bytes,
) -> LedgerWrite:  # fmt: skip
    """An original credit approved: credited to the card's account from the programme's
    clearing account as one entry, counted in each of the product's credit limits
    (``counters``) that has a period, and told of in a CREDIT notification of ``fields``."""
    amount, asset = request.amount_minor, request.asset
    record = _decided(
        "CREDIT", request, card, asset, amount, decision_id, now, response, fingerprint
    )
    credited = postings.credit(
        card.account_id, asset, amount, program.clearing_account_id, "CREDIT",
        Origin(
            entry_id, program.id, now, request.source, request.message_id,
            f"original credit ({CreditType(request.credit_type).name.lower()})",
            request.network_reference, card.card_id,
        ),
    )  # fmt: skip
    payload = {"source": request.source, "message_id": request.message_id, **fields}
    note = to_program(note_id, program, "CREDIT", payload, now, card.account_id, card.card_id)
    usage = tuple(
        UsageChange(card.account_id, c.key, amount, 1, c.expires_at)
        for c in counters
        if c.key and c.expires_at is not None
    )
    return LedgerWrite(
        decision=record, entries=credited.entries, balance_changes=credited.changes,
        usage=usage, notifications=(note,),
    )  # fmt: skip
