"""The write of an authorisation decision (domain/writes/authorization.py), event by event:
its record, hold, balance change (derivable from its entries), counters, card update and
notifications — and never a card secret."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authswitch.adapters.redis.cache import AuthorizeOutcome
from authswitch.domain.authorization import (
    AuthorizationRequest,
    CardFacts,
    Charges,
    CounterCheck,
    FeeMode,
    FreeUseCheck,
    PinTriesExceededAction,
)
from authswitch.domain.catalog import ProgramRow
from authswitch.domain.codes import Reason, outcome
from authswitch.domain.fx import Conversion
from authswitch.domain.ledger import Balance
from authswitch.domain.messages.authorization import AuthorizeAnswer
from authswitch.domain.offledger import StandInPolicy, StandInReason
from authswitch.domain.records import ClientCall, DecisionRecord, LedgerWrite
from authswitch.domain.writes.authorization import (
    HoldPlan,
    StandIn,
    authorization_write,
    checks_declined,
    decision_record,
    type_label,
    with_first_step,
    without_card,
)
from tests.support.writes import Arrived, Ids, derivable, no_secret

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
PAN, PIN, NEW_PIN, CVV2 = "4111111111111111", "pin:24680", "newpin:1357", "cvv:739"
SECRETS = (PAN, PIN, NEW_PIN, CVV2)
LIMIT_ENDS, FREE_ENDS = T0 + timedelta(days=1), T0 + timedelta(days=30)
CHARGES = Charges(
    fixed_fee_minor=50,
    limits=(
        CounterCheck("L:day", "L:prev", amount_max_minor=10**9, expires_at=LIMIT_ENDS),
        CounterCheck("", ""),  # a per-transaction limit: nothing counted
    ),
    free_uses=(FreeUseCheck(CounterCheck("F:month", "F:prev", expires_at=FREE_ENDS), 3, 25),),
)
CARD = CardFacts("card-1", "acct-1", "prog-1", "prod-1", "2912", last_four="1111")
PLAN = HoldPlan("ref-1", "AUTHORIZATION", 7)


def request(amount_minor: int = 10_000, transaction_type: int = 1) -> AuthorizationRequest:
    return AuthorizationRequest(
        "visa", "m-1", transaction_type, PAN, amount_minor, "GBP", "ref-1", pin=PIN,
        expiry_yymm="2912", cvv2=CVV2, new_pin=NEW_PIN,
    )  # fmt: skip


def program(*, movements: bool = False, mode: str = "ON_LEDGER") -> ProgramRow:
    return ProgramRow(
        "prog-1", "client-1", "Programme", mode, "UTC", "clearing-1", "fees-1",
        sinks=("webhook",), movements=movements,
    )  # fmt: skip


def result(
    reason: Reason = Reason.APPROVED, approved_minor: int = 10_000, fee_minor: int = 0,
    fee_mode: FeeMode = FeeMode.NONE, *, pin_tries: int = 0, tries_changed: bool = False,
    blocked_now: bool = False, pin_changed: bool = False,
) -> AuthorizeOutcome:  # fmt: skip
    return AuthorizeOutcome(
        reason, approved_minor, fee_minor, Balance(50_000, 10_000 + fee_minor), b"epoch",
        pin_tries, tries_changed, blocked_now, pin_changed, fee_mode,
    )  # fmt: skip


def refusal() -> DecisionRecord:
    return decision_record(
        arrival=Arrived(request(), b"fp", T0), decision_id="d-1",
        reason=Reason.INSUFFICIENT_FUNDS, response=b"declined", card=CARD, result=None,
    )  # fmt: skip


def write(
    outcome_: AuthorizeOutcome, *, ids: Ids | None = None, charges: Charges = CHARGES,
    arrival: Arrived | None = None, prog: ProgramRow | None = None,
    stand_in: StandIn | None = None, action: PinTriesExceededAction = (
        PinTriesExceededAction.BLOCK_CARD
    ), new_pvv: bytes | None = None, code: str = "123456",
) -> LedgerWrite:  # fmt: skip
    approved = outcome_.reason in (Reason.APPROVED, Reason.PARTIALLY_APPROVED)
    answer = AuthorizeAnswer(
        outcome_.reason, "GBP", outcome_.approved_minor, outcome_.fee_minor,
        authorization_code=code if approved else "", decision_id="d-1",
    )  # fmt: skip
    return authorization_write(
        arrival=arrival or Arrived(request(), b"fp", T0), card=CARD, program=prog or program(),
        new_pvv=new_pvv, result=outcome_, plan=PLAN, charges=charges, answer=answer,
        response=b"reply", pin_action=action, stand_in=stand_in,
        refusal=refusal if outcome_.held_minor else None, new_id=ids or Ids(),
    )  # fmt: skip


def test_an_approval_holds_its_amount_and_counts_it() -> None:
    ids = Ids()
    built = write(result(approved_minor=10_000), ids=ids)
    record = built.decision
    assert (record.id, record.source, record.message_id, record.kind) == (
        "d-1", "visa", "m-1", "AUTHORIZE",
    )  # fmt: skip
    assert (record.card_id, record.account_id, record.asset) == ("card-1", "acct-1", "GBP")
    assert (record.amount_minor, record.approved_minor, record.fee_minor) == (10_000, 10_000, 0)
    assert (record.response_code, record.reason, record.response) == ("00", 1, b"reply")
    assert (record.fingerprint, record.created_at) == (b"fp", T0)
    (hold,) = built.holds
    assert (hold.id, hold.account_id, hold.asset, hold.card_id) == (
        "id-1", "acct-1", "GBP", "card-1",
    )  # fmt: skip
    assert (hold.amount_minor, hold.fee_minor, hold.kind, hold.network_reference) == (
        10_000, 0, "AUTHORIZATION", "ref-1",
    )  # fmt: skip
    assert (hold.expires_at, hold.created_at, hold.usage_keys) == (
        T0 + timedelta(days=7), T0, ("L:day",),
    )  # fmt: skip
    (change,) = built.balance_changes
    assert (change.account_id, change.asset) == ("acct-1", "GBP")
    assert (change.actual_delta_minor, change.authorized_delta_minor) == (0, 10_000)
    assert change.requires_funds
    assert built.entries == ()  # a hold is a reservation, not a posting
    assert built.refusal is refusal
    # The limit counts the amount and one use; the free-use fee's counter one use.
    assert {(u.key, u.amount_minor, u.count, u.expires_at) for u in built.usage} == {
        ("L:day", 10_000, 1, LIMIT_ENDS), ("F:month", 0, 1, FREE_ENDS),
    }  # fmt: skip
    assert all(u.account_id == "acct-1" for u in built.usage)
    assert (built.notifications, built.card_updates, built.client_calls) == ((), (), ())
    assert built.conversions == ()
    assert ids.drawn == 1  # the hold's id only: nothing else is built


def test_a_held_fee_is_held_with_the_amount_and_notified() -> None:
    built = write(result(approved_minor=10_000, fee_minor=75, fee_mode=FeeMode.HELD))
    assert built.holds[0].amount_minor == 10_075
    assert built.holds[0].fee_minor == 75
    assert built.balance_changes[0].authorized_delta_minor == 10_075
    (note,) = built.notifications
    assert (note.kind, note.program_id, note.account_id, note.card_id, note.sinks) == (
        "FEE", "prog-1", "acct-1", "card-1", ("webhook",),
    )  # fmt: skip
    assert note.payload == {
        "stage": "AUTHORIZATION", "source": "visa", "message_id": "m-1",
        "transaction_type": "purchase", "response_code": "00", "fee_minor": 75,
        "fee_mode": "HELD", "asset": "GBP", "amount_minor": 10_000,
    }  # fmt: skip
    assert {(u.key, u.amount_minor) for u in built.usage} == {("L:day", 10_075), ("F:month", 0)}


def test_a_declined_requests_posted_fee_is_a_derivable_movement() -> None:
    ids = Ids()
    built = write(
        result(Reason.INSUFFICIENT_FUNDS, 0, 150, FeeMode.POSTED),
        ids=ids, arrival=Arrived(request(transaction_type=2), b"fp", T0),
    )  # fmt: skip
    assert built.holds == ()
    assert built.refusal is None
    assert built.decision.response_code == outcome(Reason.INSUFFICIENT_FUNDS).response_code
    derivable(built)
    (change,) = built.balance_changes
    assert (change.account_id, change.actual_delta_minor, change.authorized_delta_minor) == (
        "acct-1", -150, 0,
    )  # fmt: skip
    (entry,) = built.entries
    assert (entry.kind, entry.program_id, entry.created_at, entry.card_id) == (
        "FEE", "prog-1", T0, "card-1",
    )  # fmt: skip
    assert entry.description == "authorisation fee (cash_withdrawal)"
    assert {(p.account_id, p.amount_minor) for p in entry.postings} == {
        ("acct-1", -150), ("fees-1", 150),
    }  # fmt: skip
    assert [n.kind for n in built.notifications] == ["FEE"]
    assert built.notifications[0].payload["fee_mode"] == "POSTED"
    # A declined request that carries a fee counts the fee and one use on its limits.
    assert {(u.key, u.amount_minor, u.count) for u in built.usage} == {("L:day", 150, 1)}
    assert ids.drawn == 2  # the entry's and the notification's


def test_a_fee_available_did_not_cover_is_not_applied_but_notified() -> None:
    built = write(result(Reason.INSUFFICIENT_FUNDS, 0, 150, FeeMode.NOT_APPLIED))
    assert (built.balance_changes, built.entries, built.holds) == ((), (), ())
    assert [n.kind for n in built.notifications] == ["FEE_NOT_APPLIED"]


def test_a_subscribed_programme_is_told_of_the_movement() -> None:
    built = write(
        result(approved_minor=10_000, fee_minor=75, fee_mode=FeeMode.HELD),
        prog=program(movements=True),
    )  # fmt: skip
    fee, movement = built.notifications
    assert (fee.kind, movement.kind) == ("FEE", "MOVEMENT")
    assert movement.payload == {
        "decision_id": "d-1", "response_code": "00", "network_reference": "ref-1",
        "transaction_type": "purchase", "amount_minor": 10_000, "approved_minor": 10_000,
        "fee_minor": 75, "fee_mode": "HELD", "movement": "AUTHORIZATION", "source": "visa",
        "message_id": "m-1", "asset": "GBP", "actual_delta_minor": 0,
        "authorized_delta_minor": 10_075, "available_delta_minor": -10_075,
        "balance_after": {
            "actual_minor": 50_000, "available_minor": 39_925, "authorized_minor": 10_075,
        },
    }  # fmt: skip
    # An off-ledger programme's flag (a shadow stand-in decides here) sends nothing.
    off = write(result(), prog=program(movements=True, mode="OFF_LEDGER"))
    assert off.notifications == ()


def test_a_wrong_pin_counts_a_try_and_nothing_is_notified() -> None:
    built = write(result(Reason.INCORRECT_PIN, 0, pin_tries=2, tries_changed=True))
    (update,) = built.card_updates
    assert (update.card_id, update.pin_tries, update.pvv, update.blocked) == (
        "card-1", 2, None, False,
    )  # fmt: skip
    assert built.notifications == ()
    assert (built.holds, built.balance_changes) == ((), ())


@pytest.mark.parametrize(
    ("action", "kinds", "blocked"),
    [
        (PinTriesExceededAction.BLOCK_CARD, ["PIN_TRIES_EXCEEDED", "CARD_STATUS_CHANGED"], True),
        (PinTriesExceededAction.BLOCK_PIN, ["PIN_TRIES_EXCEEDED"], False),
    ],
)
def test_the_last_pin_try_does_what_the_product_says(
    action: PinTriesExceededAction, kinds: list[str], blocked: bool
) -> None:
    built = write(
        result(Reason.PIN_TRIES_EXCEEDED, 0, pin_tries=3, tries_changed=True, blocked_now=True),
        action=action,
    )  # fmt: skip
    assert built.card_updates[0].blocked is blocked
    assert [n.kind for n in built.notifications] == kinds
    exceeded = built.notifications[0].payload
    assert exceeded == {
        "source": "visa", "message_id": "m-1", "pin_tries": 3, "action": action.name,
        "card_status": "BLOCKED" if blocked else "ACTIVE",
    }  # fmt: skip
    if blocked:
        assert built.notifications[1].payload == {
            "from": "ACTIVE", "to": "BLOCKED", "reason": "PIN_TRIES_EXCEEDED",
        }  # fmt: skip


def test_a_pin_change_writes_the_new_pvv() -> None:
    built = write(result(approved_minor=0, pin_changed=True), new_pvv=b"new-pvv")
    assert built.card_updates[0].pvv == b"new-pvv"
    unchanged = write(result(approved_minor=0, pin_tries=0, tries_changed=True), new_pvv=b"x")
    assert unchanged.card_updates[0].pvv is None  # a PVV only when the PIN changed


def test_a_shadow_stand_in_records_its_call_and_advises_an_approval() -> None:
    call = ClientCall("visa", "m-1", "prog-1", "STAND_IN", T0, stand_in_reason="TIMEOUT")
    stand_in = StandIn(StandInReason.TIMEOUT, StandInPolicy.SHADOW, call)
    built = write(result(Reason.PARTIALLY_APPROVED, 6_000), stand_in=stand_in, code="654321")
    assert built.client_calls == (call,)
    (advice,) = built.notifications
    assert advice.kind == "STAND_IN_ADVICE"
    assert advice.payload == {
        "source": "visa", "message_id": "m-1", "network_reference": "ref-1",
        "transaction_type": 1, "amount_minor": 10_000, "asset": "GBP",
        "stand_in_reason": "TIMEOUT", "stand_in_policy": "SHADOW",
        "response_code": outcome(Reason.PARTIALLY_APPROVED).response_code,
        "approved_minor": 6_000, "fee_minor": 0, "authorization_code": "654321",
    }  # fmt: skip
    declined = write(result(Reason.INSUFFICIENT_FUNDS, 0), stand_in=stand_in)
    assert declined.client_calls == (call,)
    assert declined.notifications == ()  # a decline holds nothing and is not advised


def test_a_converted_approval_keeps_its_conversion() -> None:
    conversion = Conversion("USD", 12_500, "GBP", 10_000, 200, "0.8", T0)
    arrival = Arrived(request(10_000), b"fp", T0, conversion)
    built = write(result(approved_minor=10_000), arrival=arrival)
    assert built.holds[0].billing_minor == 12_500
    (kept,) = built.conversions
    assert (kept.source, kept.message_id, kept.kind, kept.conversion, kept.created_at) == (
        "visa", "m-1", "AUTHORIZATION", conversion, T0,
    )  # fmt: skip


def test_without_a_card_only_the_decline_is_recorded() -> None:
    built = without_card(
        arrival=Arrived(request(), b"fp", T0), decision_id="d-9", reason=Reason.UNKNOWN_CARD,
        response=b"14",
    )  # fmt: skip
    record = built.decision
    assert (record.id, record.card_id, record.account_id, record.approved_minor) == (
        "d-9", None, None, 0,
    )  # fmt: skip
    assert record.response_code == outcome(Reason.UNKNOWN_CARD).response_code
    assert built == LedgerWrite(decision=record)
    no_secret(built, *SECRETS)


def test_a_decline_by_the_card_checks_carries_its_pin_effects() -> None:
    ids = Ids()
    built = checks_declined(
        arrival=Arrived(request(), b"fp", T0), card=CARD, program=program(),
        checks=result(Reason.PIN_TRIES_EXCEEDED, 0, pin_tries=3, tries_changed=True,
                      blocked_now=True),
        reason=Reason.PIN_TRIES_EXCEEDED, pin_action=PinTriesExceededAction.BLOCK_CARD,
        new_pvv=None, decision_id="d-2", response=b"75", new_id=ids,
    )  # fmt: skip
    assert (built.decision.id, built.decision.approved_minor) == ("d-2", 0)
    assert built.card_updates[0].blocked
    assert [n.id for n in built.notifications] == ["id-1", "id-2"]
    assert (built.holds, built.balance_changes, built.usage) == ((), (), ())
    # A linked spend: the first step's PIN effects go first in the second step's write.
    spent = with_first_step(
        write(result(), prog=program(movements=True)),
        card_updates=built.card_updates, notifications=built.notifications,
    )  # fmt: skip
    assert spent.card_updates == built.card_updates
    assert [n.kind for n in spent.notifications] == [
        "PIN_TRIES_EXCEEDED", "CARD_STATUS_CHANGED", "MOVEMENT",
    ]  # fmt: skip


def test_the_same_facts_and_ids_build_the_same_write() -> None:
    first = write(result(approved_minor=1, fee_minor=2, fee_mode=FeeMode.HELD))
    again = write(result(approved_minor=1, fee_minor=2, fee_mode=FeeMode.HELD))
    assert first == again


REASONS = st.sampled_from(list(Reason))


@given(
    REASONS, st.integers(0, 10**12), st.integers(0, 10**9), st.sampled_from(list(FeeMode)),
    st.booleans(), st.booleans(), st.booleans(), st.booleans(),
)  # fmt: skip
def test_every_outcome_writes_a_derivable_change_and_no_card_secret(
    reason: Reason, approved: int, fee: int, fee_mode: FeeMode, tries_changed: bool,
    blocked_now: bool, pin_changed: bool, movements: bool,
) -> None:  # fmt: skip
    if fee_mode in (FeeMode.POSTED, FeeMode.NOT_APPLIED):
        # authorize.lua posts a fee only for a zero-value approval or a decline: an approval
        # with an amount holds its fee.
        approved = 0
    outcome_ = result(
        reason, approved, fee, fee_mode, pin_tries=1, tries_changed=tries_changed,
        blocked_now=blocked_now, pin_changed=pin_changed,
    )  # fmt: skip
    built = write(outcome_, prog=program(movements=movements), new_pvv=b"pvv")
    derivable(built)
    no_secret(built, *SECRETS)
    # The authorised balance moves by what the hold holds, nothing else.
    assert sum(c.authorized_delta_minor for c in built.balance_changes) == sum(
        h.amount_minor for h in built.holds
    )
    assert sum(h.amount_minor for h in built.holds) == outcome_.held_minor
    assert -sum(c.actual_delta_minor for c in built.balance_changes) == (outcome_.posted_fee_minor)
    assert all(c.account_id == "acct-1" for c in built.balance_changes)
    assert (built.refusal is not None) == bool(outcome_.held_minor)
    assert built.decision.response_code == outcome(reason).response_code
    assert len({n.id for n in built.notifications}) == len(built.notifications)


def test_every_transaction_type_has_one_name() -> None:
    assert [type_label(t) for t in (1, 8, 99)] == ["purchase", "pre_authorization", "other"]
