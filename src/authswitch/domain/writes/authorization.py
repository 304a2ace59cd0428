"""The write of an authorisation decision (DESIGN.md §2 and §5): its record with the response's
bytes, its hold or posted fee, its counters, the card's PIN state, its notifications, the
off-ledger client call it stood in for and what it converted — as one
:class:`~authswitch.domain.records.LedgerWrite` for the group committer.

:func:`authorization_write` is on the hot path (issue 15 measures the CPU of a decision): it
builds nothing the decision does not write, and no call on it passes more than 15 keyword
arguments (at 16, CPython 3.11 compiles the call to build a dict each time).

The service decides (the atomic Redis step) and encodes the answer; everything written
follows from what was decided and is built here. ``new_id`` is where the ids of the records
an event needs come from (ids are drawn only for the records the event has: an approval
without a fee formats no fee notification's id).

PIN tries exceeded (seed 000: "blocking of a card if the number of online PIN tries are
exceeded"; issue 17 item 4): a wrong PIN that uses up the card's last try does what the
product says (``pin_tries_exceeded_action``):

* ``BLOCK_CARD`` (the default): the card's status becomes BLOCKED in the same commit as the
  decision, so every later request is declined 62 (card status, check 3) until an operator
  sets it ACTIVE again, which also resets the tries. The client is told why: a
  ``PIN_TRIES_EXCEEDED`` notification naming the action, and a ``CARD_STATUS_CHANGED`` from
  ACTIVE to BLOCKED with the reason ``PIN_TRIES_EXCEEDED``.
* ``BLOCK_PIN``: only the PIN is blocked (75 for PIN requests until a PIN unblock or a new
  PIN); requests without a PIN still pass. Only ``PIN_TRIES_EXCEEDED`` is notified.

The cached card state is then reloaded from Postgres by the service, outside the decision's
in-flight mark, so that the next request sees the blocked card. This happens only on the
decision that used up the tries: other decisions pay nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from authswitch.domain import postings
from authswitch.domain.authorization import (
    AuthorizationRequest,
    CardFacts,
    Charges,
    FeeMode,
    PinTriesExceededAction,
    counter_deltas,
)
from authswitch.domain.catalog import ProgramRow
from authswitch.domain.codes import Reason, outcome
from authswitch.domain.fx import Conversion
from authswitch.domain.ledger import Balance, BalanceChange
from authswitch.domain.messages.authorization import AuthorizeAnswer
from authswitch.domain.offledger import StandInPolicy, StandInReason
from authswitch.domain.postings import Origin
from authswitch.domain.records import (
    CardUpdate,
    ClientCall,
    ConversionRecord,
    DecisionRecord,
    HoldRecord,
    JournalEntry,
    LedgerWrite,
    Notification,
    UsageChange,
)
from authswitch.domain.writes.common import to_program
from authswitch.domain.writes.movements import movement, subscribed

__all__ = [
    "APPROVALS",
    "KIND_AUTHORIZE",
    "PIN_TRIES_EXCEEDED_REASON",
    "Arrival",
    "AuthorizeResult",
    "HoldPlan",
    "NewId",
    "StandIn",
    "authorization_write",
    "checks_declined",
    "decision_record",
    "expiries_of",
    "hold_record",
    "notification",
    "pin_effects",
    "stand_in_advice",
    "taken_fee",
    "type_label",
    "usage_changes",
    "with_first_step",
    "without_card",
]

# Where the ids of new records come from (service/ids.py's new_id; a counter in tests).
NewId = Callable[[], str]

KIND_AUTHORIZE = "AUTHORIZE"
APPROVALS = frozenset({Reason.APPROVED, Reason.PARTIALLY_APPROVED})
# The reason a card blocked by its PIN tries carries in CARD_STATUS_CHANGED.
PIN_TRIES_EXCEEDED_REASON = "PIN_TRIES_EXCEEDED"

_TYPE_LABELS = {
    1: "purchase", 2: "cash_withdrawal", 3: "balance_enquiry", 4: "account_verification",
    5: "pin_change", 6: "pin_unblock", 7: "quasi_cash", 8: "pre_authorization",
}  # fmt: skip


def type_label(transaction_type: int) -> str:
    """A transaction type's name in metrics, notifications and journal descriptions."""
    return _TYPE_LABELS.get(transaction_type, "other")


class Arrival(Protocol):
    """An authorisation as it arrived (service/authorization.py's context): the request
    (converted, if it was: docs/fx.md), its fingerprint, when it arrived, and what it
    converted."""

    @property
    def request(self) -> AuthorizationRequest: ...
    @property
    def fingerprint(self) -> bytes: ...
    @property
    def received(self) -> datetime: ...
    @property
    def conversion(self) -> Conversion | None: ...


class AuthorizeResult(Protocol):
    """What the atomic Redis step decided (adapters/redis/cache.py's AuthorizeOutcome)."""

    @property
    def reason(self) -> Reason: ...
    @property
    def approved_minor(self) -> int: ...
    @property
    def fee_minor(self) -> int: ...
    @property
    def balance(self) -> Balance | None: ...
    @property
    def pin_tries(self) -> int: ...
    @property
    def pin_tries_changed(self) -> bool: ...
    @property
    def pin_blocked_now(self) -> bool: ...
    @property
    def pin_changed(self) -> bool: ...
    @property
    def fee_mode(self) -> FeeMode: ...
    @property
    def held_minor(self) -> int: ...
    @property
    def posted_fee_minor(self) -> int: ...


@dataclass(slots=True)
class HoldPlan:
    """Where a hold belongs: its transaction, kind and validity."""

    network_reference: str
    kind: str
    validity_days: int


@dataclass(slots=True)
class StandIn:
    """An off-ledger decision made in authswitch instead of by the client, from the shadow
    ledger: why, under which policy, and the record of the client call."""

    reason: StandInReason
    policy: StandInPolicy
    call: ClientCall


def authorization_write(
    *, arrival: Arrival, card: CardFacts, program: ProgramRow, new_pvv: bytes | None,
    result: AuthorizeResult, plan: HoldPlan, charges: Charges, answer: AuthorizeAnswer,
    response: bytes, pin_action: PinTriesExceededAction, stand_in: StandIn | None,
    refusal: Callable[[], DecisionRecord] | None, new_id: NewId,
) -> LedgerWrite:  # fmt: skip
    """What an on-ledger decision leaves behind: its record (``answer``, and ``response``
    its bytes), hold or posted fee, counters, card updates and notifications, as one write.
    ``refusal``: the decision recorded instead if Postgres refuses the hold's funds."""
    request, received, conversion = arrival.request, arrival.received, arrival.conversion
    decision_id = answer.decision_id
    record = decision_record(
        arrival=arrival, decision_id=decision_id, reason=result.reason, response=response,
        card=card, result=result,
    )  # fmt: skip
    holds: tuple[HoldRecord, ...] = ()
    changes: tuple[BalanceChange, ...] = ()
    held = result.held_minor  # a property: read once
    if held:
        holds = (hold_record(
            new_id(), request, card, plan, received, amount_minor=held, fee_minor=result.fee_minor,
            usage_keys=tuple(c.key for c in charges.limits if c.key),
            billing_minor=conversion.billing_minor if conversion else 0,
        ),)  # fmt: skip
        changes = (
            postings.hold(card.account_id, request.billing_asset, held, requires_funds=True),
        )
    entries: tuple[JournalEntry, ...] = ()
    posted_fee = result.posted_fee_minor
    if posted_fee:
        # A zero-value or declined request's fee, taken from actual and available.
        taken = taken_fee(
            request, received, card, program, posted_fee, new_id(),
            f"authorisation fee ({type_label(request.transaction_type)})",
        )  # fmt: skip
        changes, entries = taken.changes, taken.entries
    notifications: tuple[Notification, ...] = ()
    if result.fee_mode is not FeeMode.NONE:
        notifications = (_fee_notification(request, received, card, program, result, new_id()),)
    usage = usage_of(request, card, result, charges) if charges.limits or charges.free_uses else ()
    updates: tuple[CardUpdate, ...] = ()
    if result.pin_tries_changed or result.pin_changed:
        updates, pin_notes = pin_effects(
            request=request, received=received, card=card, program=program, action=pin_action,
            result=result, new_pvv=new_pvv, new_id=new_id,
        )  # fmt: skip
        notifications += pin_notes
    if program.movements:  # subscribed to movements (service/movements.py)
        notifications += _movement_of(
            request, received, card, program, result, plan, decision_id, new_id
        )
    calls: tuple[ClientCall, ...] = ()
    if stand_in is not None:
        calls = (stand_in.call,)
        notifications += _advised(
            request, received, card, program, result, answer, stand_in, new_id
        )
    conversions: tuple[ConversionRecord, ...] = ()
    if conversion is not None:  # docs/fx.md
        conversions = (ConversionRecord(
            request.source, request.message_id, "AUTHORIZATION", conversion, received
        ),)  # fmt: skip
    return LedgerWrite(
        decision=record, holds=holds, balance_changes=changes, entries=entries,
        card_updates=updates, usage=usage, notifications=notifications, client_calls=calls,
        conversions=conversions, refusal=refusal,
    )  # fmt: skip


def _advised(
    request: AuthorizationRequest, received: datetime, card: CardFacts, program: ProgramRow,
    result: AuthorizeResult, answer: AuthorizeAnswer, stand_in: StandIn, new_id: NewId,
) -> tuple[Notification, ...]:  # fmt: skip
    """What a shadow stand-in advises the client of: an approval (full or partial), with its
    code and amounts; a decline holds nothing and is not advised."""
    if result.reason not in APPROVALS:
        return ()
    return (
        stand_in_advice(
            request, received, card, program, stand_in.reason, stand_in.policy,
            outcome(result.reason).response_code, result.approved_minor, result.fee_minor,
            answer.authorization_code, new_id(),
        ),
    )  # fmt: skip


def decision_record(
    *, arrival: Arrival, decision_id: str, reason: Reason, response: bytes,
    card: CardFacts | None, result: AuthorizeResult | None, approved_minor: int = 0,
    fee_minor: int = 0,
) -> DecisionRecord:  # fmt: skip
    """An authorisation's durable outcome: the amounts approved and charged are
    ``result``'s when the ledger decided, else as the reply shows them (an off-ledger
    client's, a stand-in's)."""
    request = arrival.request
    return DecisionRecord(
        id=decision_id,
        source=request.source,
        message_id=request.message_id,
        kind=KIND_AUTHORIZE,
        fingerprint=arrival.fingerprint,
        card_id=card.card_id if card else None,
        account_id=card.account_id if card else None,
        asset=request.billing_asset,
        amount_minor=request.billing_amount_minor,
        approved_minor=result.approved_minor if result else approved_minor,
        fee_minor=result.fee_minor if result else fee_minor,
        response_code=outcome(reason).response_code,
        reason=int(reason),
        response=response,
        created_at=arrival.received,
    )


def without_card(
    *, arrival: Arrival, decision_id: str, reason: Reason, response: bytes
) -> LedgerWrite:
    """A decline before any card was found (unknown card or token, a PAN failing its form
    check): the record alone."""
    return LedgerWrite(
        decision=decision_record(
            arrival=arrival, decision_id=decision_id, reason=reason, response=response,
            card=None, result=None,
        )
    )  # fmt: skip


def checks_declined(
    *, arrival: Arrival, card: CardFacts, program: ProgramRow, checks: AuthorizeResult,
    reason: Reason, pin_action: PinTriesExceededAction, new_pvv: bytes | None,
    decision_id: str, response: bytes, new_id: NewId, approved_minor: int = 0,
    fee_minor: int = 0,
) -> LedgerWrite:  # fmt: skip
    """The record of a decision made outside the ledger's funds step (an off-ledger
    programme's, a linked account's), with the card's checks' effects (``checks``: that
    step's outcome, whose PIN effects the write carries; ``reason``: what decided it;
    ``approved_minor`` and ``fee_minor``: what the reply shows)."""
    updates, notes = pin_effects(
        request=arrival.request, received=arrival.received, card=card, program=program,
        action=pin_action, result=checks, new_pvv=new_pvv, new_id=new_id,
    )  # fmt: skip
    return LedgerWrite(
        decision=decision_record(
            arrival=arrival, decision_id=decision_id, reason=reason, response=response,
            card=card, result=None, approved_minor=approved_minor, fee_minor=fee_minor,
        ),
        card_updates=updates,
        notifications=notes,
    )  # fmt: skip


def with_first_step(
    write: LedgerWrite, *, card_updates: tuple[CardUpdate, ...],
    notifications: tuple[Notification, ...],
) -> LedgerWrite:  # fmt: skip
    """A linked account's decision (service/linked.py): its write with the card's PIN state
    changes of the first step, on the card's own account, and their notifications first."""
    write.card_updates = card_updates
    write.notifications = (*notifications, *write.notifications)
    return write


def hold_record(
    hold_id: str, request: AuthorizationRequest, card: CardFacts, plan: HoldPlan,
    received: datetime, *, amount_minor: int, fee_minor: int, usage_keys: tuple[str, ...],
    billing_minor: int = 0,
) -> HoldRecord:  # fmt: skip
    """The hold of an approval (or of an off-ledger client's, on its shadow ledger): its
    amount and fee, its transaction, its validity and the counters it was counted in."""
    return HoldRecord(
        id=hold_id,
        account_id=card.account_id,
        asset=request.billing_asset,
        card_id=card.card_id,
        source=request.source,
        message_id=request.message_id,
        network_reference=plan.network_reference,
        amount_minor=amount_minor,
        fee_minor=fee_minor,
        expires_at=received + timedelta(days=plan.validity_days),
        created_at=received,
        kind=plan.kind,
        usage_keys=usage_keys,
        billing_minor=billing_minor,
    )


def taken_fee(
    request: AuthorizationRequest, received: datetime, card: CardFacts, program: ProgramRow,
    fee_minor: int, entry_id: str, description: str,
) -> postings.Movement:  # fmt: skip
    """A fee taken from the actual balance at authorisation, posted to the programme's fee
    income."""
    return postings.fee(
        card.account_id, request.billing_asset, fee_minor, program.fee_account_id,
        Origin(
            entry_id, program.id, received, request.source, request.message_id, description,
            request.network_reference, card.card_id,
        ),
    )  # fmt: skip


def notification(
    notification_id: str, request: AuthorizationRequest, received: datetime, card: CardFacts,
    program: ProgramRow, kind: str, payload: dict[str, object],
) -> Notification:  # fmt: skip
    """A notification of an authorisation, to the programme's sinks."""
    return to_program(
        notification_id, program, kind, payload, received, card.account_id, card.card_id
    )


def _fee_notification(
    request: AuthorizationRequest, received: datetime, card: CardFacts, program: ProgramRow,
    result: AuthorizeResult, notification_id: str,
) -> Notification:  # fmt: skip
    """FEE (held or posted) or FEE_NOT_APPLIED (available did not cover it)."""
    return notification(
        notification_id, request, received, card, program,
        "FEE_NOT_APPLIED" if result.fee_mode is FeeMode.NOT_APPLIED else "FEE",
        {
            "stage": "AUTHORIZATION",
            "source": request.source,
            "message_id": request.message_id,
            "transaction_type": type_label(request.transaction_type),
            "response_code": outcome(result.reason).response_code,
            "fee_minor": result.fee_minor,
            "fee_mode": result.fee_mode.name,
            "asset": request.billing_asset,
            "amount_minor": request.billing_amount_minor,
        },
    )  # fmt: skip


def _movement_of(
    request: AuthorizationRequest, received: datetime, card: CardFacts, program: ProgramRow,
    result: AuthorizeResult, plan: HoldPlan, decision_id: str, new_id: NewId,
) -> tuple[Notification, ...]:  # fmt: skip
    """The MOVEMENT of an authorisation, approved (its hold, with the fee) or declined
    (nothing moved, or a posted decline fee), when ``program`` is subscribed."""
    if not subscribed(program):
        return ()
    return (
        movement(
            program, notification_id=new_id(), kind="AUTHORIZATION",
            account_id=card.account_id, card_id=card.card_id, asset=request.billing_asset,
            actual_delta_minor=-result.posted_fee_minor, authorized_delta_minor=result.held_minor,
            balance_after=result.balance, created_at=received, source=request.source,
            message_id=request.message_id,
            details={
                "decision_id": decision_id,
                "response_code": outcome(result.reason).response_code,
                "network_reference": plan.network_reference,
                "transaction_type": type_label(request.transaction_type),
                "amount_minor": request.billing_amount_minor,
                "approved_minor": result.approved_minor, "fee_minor": result.fee_minor,
                "fee_mode": result.fee_mode.name,
            },
        ),
    )  # fmt: skip


def usage_of(
    request: AuthorizationRequest, card: CardFacts, result: AuthorizeResult, charges: Charges
) -> tuple[UsageChange, ...]:
    """What the decision adds to its limits' and free uses' counters."""
    deltas = counter_deltas(
        result.reason, zero_value=request.is_zero_value, approved_minor=result.approved_minor,
        charged_minor=result.fee_minor, fee_mode=result.fee_mode, charges=charges,
    )  # fmt: skip
    return usage_changes(card.account_id, deltas, expiries_of(charges))


def usage_changes(
    account_id: str, deltas: dict[str, tuple[int, int]], expiries: dict[str, datetime]
) -> tuple[UsageChange, ...]:
    return tuple(
        UsageChange(account_id, key, amount, count, expiries[key])
        for key, (amount, count) in deltas.items()
        if amount or count
    )


def expiries_of(charges: Charges) -> dict[str, datetime]:
    """When each counter of ``charges`` runs out (for the durable usage rows)."""
    found: dict[str, datetime] = {}
    for check in (*charges.limits, *(f.counter for f in charges.free_uses)):
        if check.key and check.expires_at is not None:
            found[check.key] = check.expires_at
    return found


def pin_effects(
    *, request: AuthorizationRequest, received: datetime, card: CardFacts,
    program: ProgramRow, action: PinTriesExceededAction, result: AuthorizeResult,
    new_pvv: bytes | None, new_id: NewId,
) -> tuple[tuple[CardUpdate, ...], tuple[Notification, ...]]:  # fmt: skip
    """The card update and notifications a decision's PIN outcome needs (both empty when
    the PIN state did not change)."""
    pin_tries, pin_changed = result.pin_tries, result.pin_changed
    blocked_now = result.pin_blocked_now
    if not (result.pin_tries_changed or pin_changed or blocked_now):
        return (), ()
    block_card = blocked_now and action is PinTriesExceededAction.BLOCK_CARD
    update = CardUpdate(
        card.card_id,
        pin_tries=pin_tries,
        pvv=new_pvv if pin_changed else None,
        blocked=block_card,
    )
    if not blocked_now:
        return (update,), ()
    notes: tuple[Notification, ...] = (
        notification(
            new_id(), request, received, card, program, "PIN_TRIES_EXCEEDED",
            {
                "source": request.source,
                "message_id": request.message_id,
                "pin_tries": pin_tries,
                "action": action.name,
                "card_status": "BLOCKED" if block_card else "ACTIVE",
            },
        ),
    )  # fmt: skip
    if block_card:
        notes += (
            notification(
                new_id(), request, received, card, program, "CARD_STATUS_CHANGED",
                {"from": "ACTIVE", "to": "BLOCKED", "reason": PIN_TRIES_EXCEEDED_REASON},
            ),
        )  # fmt: skip
    return (update,), notes


def stand_in_advice(
    request: AuthorizationRequest, received: datetime, card: CardFacts, program: ProgramRow,
    reason: StandInReason, policy: StandInPolicy, response_code: str, approved_minor: int,
    fee_minor: int, authorization_code: str, notification_id: str,
) -> Notification:  # fmt: skip
    """The STAND_IN_ADVICE notification of an approval made standing in."""
    return notification(
        notification_id, request, received, card, program, "STAND_IN_ADVICE",
        {
            "source": request.source,
            "message_id": request.message_id,
            "network_reference": request.network_reference,
            "transaction_type": request.transaction_type,
            "amount_minor": request.billing_amount_minor,
            "asset": request.billing_asset,
            "stand_in_reason": reason.name,
            "stand_in_policy": policy.value,
            "response_code": response_code,
            "approved_minor": approved_minor,
            "fee_minor": fee_minor,
            "authorization_code": authorization_code,
        },
    )  # fmt: skip
