"""The lifecycle's whole ledger writes (domain/writes/lifecycle.py), event by event: the
decision each records, the holds, releases and tombstones, the journal and the balance
changes, the usage, the notifications and the conversions.

Two invariants hold for every write that moves a balance (see tests/unit/test_postings.py):
each balance change's actual delta is the sum of the write's postings to its account and
asset, and its authorised delta is what the write's holds add less what its releases take
away, so balances stay derivable from the journal and the holds. No write carries a PAN.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import TypedDict

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authswitch.domain.authorization import CardFacts, CounterCheck
from authswitch.domain.catalog import ProgramRow
from authswitch.domain.codes import Code, Reason, outcome
from authswitch.domain.credits import CreditType
from authswitch.domain.fees import FeeLine, FeeQuote
from authswitch.domain.fx import Conversion
from authswitch.domain.lifecycle import (
    ClearingPlan,
    HoldEnd,
    HoldRow,
    ReleasePlan,
    plan_clearing,
    plan_reversal,
)
from authswitch.domain.messages.lifecycle import Advice, Clearing, OriginalCredit, Refund, Reversal
from authswitch.domain.records import LedgerWrite
from authswitch.domain.writes import lifecycle as writes
from tests.support.writes import derivable

pytestmark = pytest.mark.timeout(120)

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
PAN = "4111111111111111"
CARD = CardFacts("card-1", "acct-1", "prog-1", "prod-1", "2912", last_four="1111")
PROGRAM = ProgramRow(
    id="prog-1", client_id="client-1", name="Programme", mode="ON_LEDGER", time_zone="UTC",
    clearing_account_id="clearing-1", fee_account_id="fees-1", sinks=("client", "webhook"),
)  # fmt: skip


class Answered(TypedDict):
    """What every write takes once its message is answered."""

    now: datetime
    response: bytes
    fingerprint: bytes


class ClearingFacts(TypedDict):
    request: Clearing
    card: CardFacts
    program: ProgramRow
    plan: ClearingPlan
    asset: str
    rules_fee_minor: int
    markup_minor: int
    entry_id: str
    fee_entry_ids: tuple[str, str]


ANSWERED: Answered = {"now": T0, "response": b"\x08\x01reply", "fingerprint": b"fp"}
CONVERSION = Conversion("USD", 1_250, "GBP", 1_000, 20, "0.8", T0 - timedelta(hours=1))
AMOUNTS = st.integers(1, 10**12)


def hold_row(
    hold_id: str, amount: int, *, minutes: int = 0, usage_keys: tuple[str, ...] = ()
) -> HoldRow:
    return HoldRow(
        id=hold_id, account_id=CARD.account_id, asset="GBP", card_id=CARD.card_id,
        source="visa", message_id=f"auth-{hold_id}", network_reference="ref-1",
        amount_minor=amount, original_minor=amount, status="OPEN", tombstone=False,
        created_at=T0 + timedelta(minutes=minutes), expires_at=T0 + timedelta(days=7),
        ended_at=None, usage_keys=usage_keys,
    )  # fmt: skip


def consistent(write: LedgerWrite) -> None:
    """Derivable (tests/support/writes.py), and each balance change's authorised delta is
    the write's holds less its releases on that account (none without a change)."""
    derivable(write)
    held: dict[tuple[str, str], int] = defaultdict(int)
    for hold in write.holds:
        held[(hold.account_id, hold.asset)] += hold.amount_minor
    for release in write.releases:
        held[(release.account_id, release.asset)] -= release.plan.release_minor
    for change in write.balance_changes:
        assert held.pop(change.key, 0) == change.authorized_delta_minor
    assert not [k for k, v in held.items() if v], "holds or releases without a change"


def no_pan(write: LedgerWrite) -> None:
    assert PAN not in repr(write)
    for note in write.notifications:
        assert PAN not in repr(note.payload)
        assert "pan" not in note.payload


def kinds(write: LedgerWrite) -> list[str]:
    return [n.kind for n in write.notifications]


# -- the decision record -------------------------------------------------------------------


def test_a_decision_records_what_was_acknowledged() -> None:
    record = writes.decision(
        kind="CLEARING", source="visa", message_id="m1", decision_id="d1", card=CARD,
        asset="GBP", amount_minor=4_500, **ANSWERED,
    )  # fmt: skip
    assert (record.id, record.key, record.kind) == ("d1", ("visa", "m1"), "CLEARING")
    assert (record.card_id, record.account_id) == (CARD.card_id, CARD.account_id)
    assert (record.amount_minor, record.approved_minor, record.fee_minor) == (4_500, 4_500, 0)
    assert (record.response_code, record.reason) == (Code.APPROVED, int(Reason.APPROVED))
    assert (record.response, record.fingerprint, record.created_at) == (
        ANSWERED["response"], ANSWERED["fingerprint"], T0,
    )  # fmt: skip
    # A hold released names its account, and no card.
    other = writes.decision(
        kind="AGE_OFF", source="system", message_id="ageoff:h1", decision_id="d2",
        account_id="wallet-1", **ANSWERED,
    )  # fmt: skip
    assert (other.card_id, other.account_id, other.asset) == (None, "wallet-1", None)
    # An account named wins over the card's.
    both = writes.decision(
        kind="CLEARING", source="visa", message_id="m2", decision_id="d3", card=CARD,
        account_id="wallet-1", **ANSWERED,
    )  # fmt: skip
    assert (both.card_id, both.account_id) == (CARD.card_id, "wallet-1")


def test_an_unknown_card_is_answered_14_and_posts_nothing() -> None:
    write = writes.unknown_card(
        kind="REFUND", source="visa", message_id="m1", asset="GBP", amount_minor=700,
        decision_id="d1", **ANSWERED,
    )  # fmt: skip
    assert write.decision.response_code == Code.UNKNOWN_CARD
    assert write.decision.reason == Reason.UNKNOWN_CARD  # the code's reason, not APPROVED
    assert (write.decision.card_id, write.decision.account_id) == (None, None)
    assert write == LedgerWrite(decision=write.decision)


# -- advice --------------------------------------------------------------------------------


def advice_request(amount: int, original: str = "auth-h0") -> Advice:
    return Advice(
        "visa", "adv-1", PAN, amount, "GBP", network_reference="ref-adv",
        original_message_id=original, authorization_code="A1B2C3", mcc="5411",
    )  # fmt: skip


def advise(amount: int, held: list[HoldRow], conversion: Conversion | None = None) -> LedgerWrite:
    return writes.advice(
        request=advice_request(amount), card=CARD, program=PROGRAM, asset="GBP",
        amount_minor=amount, original=held[0] if held else None, held=held, validity_days=7,
        conversion=conversion, decision_id="d1", hold_id="new-hold", note_id="n1", **ANSWERED,
    )  # fmt: skip


@given(AMOUNTS, st.lists(st.integers(1, 10**9), max_size=4))
def test_an_advice_takes_the_holds_to_the_advised_total(amount: int, held_minor: list[int]) -> None:
    held = [hold_row(f"h{i}", a, minutes=i) for i, a in enumerate(held_minor)]
    write = advise(amount, held)
    consistent(write)
    no_pan(write)
    delta = amount - sum(held_minor)
    (change,) = write.balance_changes
    assert change == writes.advice_change(card=CARD, asset="GBP", amount_minor=amount, held=held)
    assert (change.authorized_delta_minor, change.actual_delta_minor) == (delta, 0)
    assert not change.requires_funds  # the network approved it already
    assert write.decision.amount_minor == amount
    if delta > 0:
        (hold,) = write.holds
        assert (hold.id, hold.amount_minor, hold.kind) == ("new-hold", delta, "ADVICE")
        assert hold.expires_at == T0 + timedelta(days=7)
        # Under the original's reference, when there is one, to be cleared with it.
        assert hold.network_reference == ("ref-1" if held else "ref-adv")
        assert not write.releases
    else:
        assert not write.holds
        # Newest first; only the oldest may keep part of what it held.
        released = [r.plan.hold_id for r in write.releases]
        assert released == [f"h{i}" for i in reversed(range(len(held)))][: len(released)]
        assert all(r.reason == "ADVICE" for r in write.releases)
    (note,) = write.notifications
    assert (note.kind, note.id, note.sinks) == ("ADVICE", "n1", PROGRAM.sinks)
    assert note.payload["held_minor"] == delta
    assert note.payload["authorization_code"] == "A1B2C3"
    assert write.conversions == ()


def test_a_converted_advice_records_its_conversion_and_its_billing_amount() -> None:
    amount = CONVERSION.total_minor
    write = advise(amount, [], CONVERSION)
    consistent(write)
    assert write.holds[0].billing_minor == CONVERSION.billing_minor
    (record,) = write.conversions
    assert (record.kind, record.conversion, record.message_id) == ("ADVICE", CONVERSION, "adv-1")
    assert write.notifications[0].payload["billing_amount_minor"] == CONVERSION.billing_minor
    # A hold added on top of others does not carry the billing amount: the whole converted
    # amount is not in it.
    topped = advise(amount, [hold_row("h0", 10)], CONVERSION)
    assert topped.holds[0].billing_minor == 0


def test_an_advice_recorded_holds_nothing() -> None:
    write = writes.advice_recorded(
        request=advice_request(900), card=None, asset="GBP", amount_minor=900,
        decision_id="d1", **ANSWERED,
    )  # fmt: skip
    assert write == LedgerWrite(decision=write.decision)
    assert (write.decision.kind, write.decision.card_id, write.decision.amount_minor) == (
        "ADVICE", None, 900,
    )  # fmt: skip
    no_pan(write)


# -- reversals recorded and tombstones -----------------------------------------------------


def reversal_request(amount: int | None) -> Reversal:
    return Reversal("visa", "rev-1", "auth-x", amount, "GBP", "ref-1", pan=PAN)


@pytest.mark.parametrize("requested", [0, 250])
def test_a_reversal_of_an_unknown_original_leaves_a_tombstone(requested: int) -> None:
    write = writes.reversal_tombstoned(
        request=reversal_request(requested or None), requested_minor=requested, card=CARD,
        decision_id="d1", **ANSWERED,
    )  # fmt: skip
    (tombstone,) = write.tombstones
    assert (tombstone.source, tombstone.message_id) == ("visa", "auth-x")
    assert (tombstone.reversed_minor, tombstone.full, tombstone.at) == (
        requested, requested == 0, T0,
    )  # fmt: skip
    assert (write.decision.kind, write.decision.card_id) == ("REVERSAL", CARD.card_id)
    assert write.decision.amount_minor == requested
    assert not write.balance_changes
    assert not write.releases
    assert not write.notifications
    no_pan(write)


def test_a_reversal_recorded_releases_nothing() -> None:
    write = writes.reversal_recorded(
        request=reversal_request(250), requested_minor=250, decision_id="d1", **ANSWERED
    )
    assert write == LedgerWrite(decision=write.decision)
    assert (write.decision.kind, write.decision.amount_minor) == ("REVERSAL", 250)
    assert write.decision.card_id is None


# -- a hold released -----------------------------------------------------------------------


@given(AMOUNTS, st.integers(0, 10**12), st.sampled_from(["REVERSAL", "AGE_OFF", "RELEASE"]))
def test_a_hold_release_gives_back_what_it_releases(
    held_minor: int, requested: int, reason: str
) -> None:
    hold = hold_row("h1", held_minor, usage_keys=("day", "month"))
    plan = plan_reversal(hold.open_hold(), requested)
    if reason != "REVERSAL":
        plan = ReleasePlan(hold.id, held_minor, held_minor, HoldEnd.EXPIRED)
    write = writes.hold_release(
        hold=hold, plan=plan, reason=reason, source="visa", message_id="rev-1",
        program=PROGRAM, decision_id="d1", note_id="n1", **ANSWERED,
    )  # fmt: skip
    consistent(write)
    no_pan(write)
    (release,) = write.releases
    assert (release.plan, release.reason, release.at) == (plan, reason, T0)
    assert write.balance_changes == (writes.release_change(hold, plan),)
    assert write.balance_changes[0].authorized_delta_minor == -plan.release_minor
    assert (write.decision.kind, write.decision.amount_minor) == (reason, plan.release_minor)
    assert write.decision.account_id == CARD.account_id
    # Only a reversal gives back to the amount-based limits (counts stay).
    given_back = [(u.key, u.amount_minor, u.count) for u in write.usage]
    assert given_back == writes.release_usage(hold, plan, reason)
    if reason == "REVERSAL" and plan.release_minor:
        assert given_back == [("day", -plan.release_minor, 0), ("month", -plan.release_minor, 0)]
    else:
        assert given_back == []
    (note,) = write.notifications
    assert note.kind == reason
    assert note.payload["released_minor"] == plan.release_minor
    assert note.payload["hold_ended"] is plan.ends
    assert write.conversions == ()


def test_a_reversal_of_a_converted_hold_records_its_share() -> None:
    hold = hold_row("h1", 1_020)
    plan = plan_reversal(hold.open_hold(), 510)
    write = writes.hold_release(
        hold=hold, plan=plan, reason="REVERSAL", source="visa", message_id="rev-1",
        program=PROGRAM, conversion=CONVERSION, decision_id="d1", note_id="n1", **ANSWERED,
    )  # fmt: skip
    (record,) = write.conversions
    assert (record.kind, record.message_id, record.conversion) == (
        "REVERSAL", "rev-1", CONVERSION,
    )  # fmt: skip


# -- clearing ------------------------------------------------------------------------------


def clearing_request(amount: int, final: bool) -> Clearing:
    return Clearing(
        "visa", "clr-1", PAN, amount, "GBP", "ref-1", final=final, mcc="5411",
        merchant_name="Corner Shop",
    )  # fmt: skip


@given(
    st.integers(0, 10**12),
    st.lists(st.integers(1, 10**9), max_size=3),
    st.booleans(),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
)
def test_a_clearing_posts_its_amount_and_fees_and_releases_its_holds(
    amount: int, held_minor: list[int], final: bool, rules_fee: int, markup: int
) -> None:
    held = [hold_row(f"h{i}", a, minutes=i, usage_keys=("day",)) for i, a in enumerate(held_minor)]
    plan = plan_clearing([h.open_hold() for h in held], amount, final=final)
    request = clearing_request(amount, final)
    facts: ClearingFacts = {
        "request": request, "card": CARD, "program": PROGRAM, "plan": plan, "asset": "GBP",
        "rules_fee_minor": rules_fee, "markup_minor": markup, "entry_id": "e1",
        "fee_entry_ids": ("fee-e1", "fee-e2"),
    }  # fmt: skip
    usage = [("day", amount - plan.released_minor, 0)]
    write = writes.clearing(
        **facts, conversion=None, usage=usage, expiry={"day": T0}, decision_id="d1",
        note_ids=("n1", "n2"), **ANSWERED,
    )  # fmt: skip
    consistent(write)
    no_pan(write)
    movement = writes.clearing_movement(**facts, now=T0)
    assert write.balance_changes == movement.changes
    assert write.entries == movement.entries
    (change,) = write.balance_changes
    assert change.actual_delta_minor == -(amount + rules_fee + markup)
    assert change.authorized_delta_minor == -plan.released_minor
    assert [(e.id, e.kind) for e in write.entries] == [
        *([("e1", "CLEARING")] if amount else []),
        *([("fee-e1", "FEE")] if rules_fee else []),
        *([("fee-e2", "FEE")] if markup else []),
    ]
    assert all(p.account_id != "fees-1" for e in write.entries[:1] if amount for p in e.postings)
    assert [r.plan for r in write.releases] == list(plan.releases)
    assert write.decision.amount_minor == amount
    assert [(u.key, u.amount_minor, u.expires_at) for u in write.usage] == [
        ("day", amount - plan.released_minor, T0)
    ]
    fee = rules_fee + markup
    assert kinds(write) == (["CLEARING", "FEE"] if fee else ["CLEARING"])
    clearing_note = write.notifications[0]
    assert clearing_note.payload["fee_minor"] == fee
    assert clearing_note.payload["matched"] is plan.matched
    if fee:
        fee_note = write.notifications[1]
        assert fee_note.id == "n2"
        assert fee_note.payload == {
            **clearing_note.payload, "stage": "CLEARING", "fee_mode": "POSTED",
        }  # fmt: skip


def test_a_converted_clearing_records_its_conversion() -> None:
    plan = plan_clearing([], CONVERSION.account_minor, final=True)
    write = writes.clearing(
        request=clearing_request(CONVERSION.billing_minor, True), card=CARD, program=PROGRAM,
        plan=plan, asset="GBP", rules_fee_minor=0, markup_minor=CONVERSION.markup_minor,
        conversion=CONVERSION, usage=[], expiry={}, decision_id="d1", entry_id="e1",
        fee_entry_ids=("f1", "f2"), note_ids=("n1", "n2"), **ANSWERED,
    )  # fmt: skip
    consistent(write)
    assert [e.description for e in write.entries] == ["Corner Shop", "currency conversion markup"]
    assert write.conversions[0].conversion == CONVERSION
    assert write.notifications[0].payload["fx_rate"] == CONVERSION.rate_text


# -- refunds and original credits ----------------------------------------------------------


@given(AMOUNTS)
def test_a_refund_is_credited_from_the_clearing_account(amount: int) -> None:
    request = Refund("visa", "ref-1", PAN, amount, "GBP", "nref", merchant_name="Shop")
    write = writes.refund(
        request=request, card=CARD, program=PROGRAM, amount_minor=amount, asset="GBP",
        conversion=None, decision_id="d1", entry_id="e1", note_id="n1", **ANSWERED,
    )  # fmt: skip
    consistent(write)
    no_pan(write)
    (entry,) = write.entries
    assert (entry.id, entry.kind, entry.description) == ("e1", "REFUND", "Shop")
    assert {(p.account_id, p.amount_minor) for p in entry.postings} == {
        (CARD.account_id, amount),
        ("clearing-1", -amount),
    }
    assert write.balance_changes[0].actual_delta_minor == amount
    assert (write.decision.kind, write.decision.amount_minor) == ("REFUND", amount)
    assert kinds(write) == ["REFUND"]
    assert write.notifications[0].payload["amount_minor"] == amount


def credit_request(amount: int) -> OriginalCredit:
    return OriginalCredit(
        "visa", "oct-1", PAN, amount, "GBP", int(CreditType.PERSON_TO_PERSON), "nref",
        sender_name="A Sender", originator_name="Wallet Co",
    )  # fmt: skip


@given(AMOUNTS)
def test_an_original_credit_is_credited_and_counted(amount: int) -> None:
    request = credit_request(amount)
    counters = [
        CounterCheck("credit:day", "", expires_at=T0 + timedelta(days=1)),
        CounterCheck("", ""),  # a per-transaction limit: nothing counted
        CounterCheck("credit:open", ""),  # no period: nothing counted
    ]
    write = writes.credit(
        request=request, card=CARD, program=PROGRAM, counters=counters,
        fields=writes.credit_fields(request), decision_id="d1", entry_id="e1", note_id="n1",
        **ANSWERED,
    )  # fmt: skip
    consistent(write)
    no_pan(write)
    assert write.balance_changes[0].actual_delta_minor == amount
    assert write.entries[0].description == "original credit (person_to_person)"
    assert [(u.key, u.amount_minor, u.count) for u in write.usage] == [("credit:day", amount, 1)]
    assert (write.decision.kind, write.decision.approved_minor) == ("CREDIT", amount)
    (note,) = write.notifications
    assert note.kind == "CREDIT"
    assert note.payload["credit_type"] == "PERSON_TO_PERSON"
    assert note.payload["sender_name"] == "A Sender"


def test_an_original_credit_declined_credits_nothing() -> None:
    reason = Reason.AMOUNT_LIMIT_EXCEEDED
    write = writes.credit_declined(
        request=credit_request(5_000), card=CARD, reason=reason, decision_id="d1", **ANSWERED
    )
    assert write == LedgerWrite(decision=write.decision)
    record = write.decision
    assert (record.amount_minor, record.approved_minor) == (5_000, 0)
    assert (record.reason, record.response_code) == (int(reason), outcome(reason).response_code)
    assert record.response_code != Code.APPROVED


# -- forwarded to an off-ledger client -----------------------------------------------------


def test_a_forwarded_message_is_recorded_and_notified() -> None:
    request = advice_request(1_500)
    write = writes.forwarded(
        kind="ADVICE", source="visa", message_id="adv-1", card=CARD, program=PROGRAM,
        fields=writes.advice_fields(request), decision_id="d1", note_ids=("n1", "n2"),
        **ANSWERED,
    )  # fmt: skip
    no_pan(write)
    assert (write.decision.asset, write.decision.amount_minor) == ("GBP", 1_500)
    assert not write.balance_changes
    assert not write.entries
    assert not write.holds
    (note,) = write.notifications
    assert (note.id, note.kind, note.account_id) == ("n1", "ADVICE", CARD.account_id)
    assert note.payload["source"] == "visa"
    assert note.payload["mcc"] == "5411"


@pytest.mark.parametrize("fee_minor", [0, 35])
def test_a_forwarded_clearing_tells_its_fee_for_the_client_to_apply(fee_minor: int) -> None:
    lines = (FeeLine("r1", "clearing fee", fee_minor, "fixed"),) if fee_minor else ()
    fields, fee = writes.clearing_fields(
        clearing_request(4_000, True), 4_000, FeeQuote(fixed_minor=fee_minor, lines=lines)
    )
    write = writes.forwarded(
        kind="CLEARING", source="visa", message_id="clr-1", card=CARD, program=PROGRAM,
        fields=fields, fee=fee, decision_id="d1", note_ids=("n1", "n2"), **ANSWERED,
    )  # fmt: skip
    no_pan(write)
    assert fields["fee_minor"] == fee_minor
    if not fee_minor:
        assert fee is None
        assert kinds(write) == ["CLEARING"]
        return
    assert kinds(write) == ["CLEARING", "FEE"]
    fee_payload = write.notifications[1].payload
    assert fee_payload["fee_mode"] == "NOTIFIED"
    assert fee_payload["rules"] == [{"rule_id": "r1", "name": "clearing fee", "fee_minor": 35}]
    assert fee_payload["amount_minor"] == 4_000  # the message's fields come with it


def test_forwarded_fields_name_no_card_number() -> None:
    for fields in (
        writes.advice_fields(advice_request(1)),
        writes.reversal_fields(reversal_request(None), 0),
        writes.refund_fields(Refund("visa", "r", PAN, 1, "GBP")),
        writes.credit_fields(credit_request(1)),
        writes.clearing_fields(clearing_request(1, False), 1, FeeQuote())[0],
    ):
        assert PAN not in repr(fields)
    assert writes.reversal_fields(reversal_request(None), 0)["full"] is True
    assert writes.reversal_fields(reversal_request(250), 250)["full"] is False
