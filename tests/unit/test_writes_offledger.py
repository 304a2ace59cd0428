"""The writes of off-ledger decisions (domain/writes/offledger.py): a decline before the
client is asked, the client's answer (and on a SHADOW programme its hold and decline fee),
and a DECLINE or APPROVE stand-in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from authswitch.adapters.redis.cache import AuthorizeOutcome
from authswitch.domain.authorization import (
    AuthorizationRequest,
    CardFacts,
    Charges,
    CounterCheck,
    PinTriesExceededAction,
)
from authswitch.domain.catalog import ProgramRow
from authswitch.domain.codes import Reason, outcome
from authswitch.domain.fees import FeeLine, FeeQuote
from authswitch.domain.messages.authorization import AuthorizeAnswer
from authswitch.domain.messages.decision import ClientReply
from authswitch.domain.offledger import (
    Assessed,
    ClientAnswer,
    Counted,
    StandInPolicy,
    StandInReason,
)
from authswitch.domain.records import LedgerWrite
from authswitch.domain.writes.authorization import HoldPlan
from authswitch.domain.writes.offledger import (
    FEE_NOT_APPLIED,
    FEE_NOTIFIED,
    FEE_POSTED,
    client_answered,
    declined_by_checks,
    mirrored,
    stand_in_write,
)
from tests.support.writes import Arrived, Ids, derivable, no_secret

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
PAN, PIN, CVV2 = "4111111111111111", "pin:24680", "cvv:739"
LIMIT_ENDS = T0 + timedelta(days=1)
CARD = CardFacts("card-1", "acct-1", "prog-1", "prod-1", "2912")
PROGRAM = ProgramRow(
    "prog-1", "client-1", "Programme", "OFF_LEDGER", "UTC", "clearing-1", "fees-1",
    sinks=("client",),
)  # fmt: skip
ARRIVAL = Arrived(
    AuthorizationRequest(
        "visa", "m-1", 1, PAN, 10_000, "GBP", "ref-1", pin=PIN, expiry_yymm="2912", cvv2=CVV2
    ),
    b"fp",
    T0,
)
QUOTE = FeeQuote(
    fixed_minor=40,
    on_decline_minor=30,
    lines=(FeeLine("r1", "Purchase fee", 40, "fixed"), FeeLine("r2", "Decline", 30, "on_decline")),
)
PASSED = AuthorizeOutcome(Reason.APPROVED, 0, 0, None, b"e", 0, False, False, False)
BLOCK = PinTriesExceededAction.BLOCK_CARD


def assessed(*, counted: bool = True, declined: Reason | None = None) -> Assessed:
    limit = CounterCheck("L:day", "L:prev", expires_at=LIMIT_ENDS)
    return Assessed(
        QUOTE, 40, frozenset(),
        Counted("acct-1", Charges(limits=(limit,)), 10_040) if counted else None, declined,
    )  # fmt: skip


def answered(answer: ClientAnswer, fee_mode: str, ids: Ids | None = None) -> LedgerWrite:
    return client_answered(
        arrival=ARRIVAL, card=CARD, program=PROGRAM, checks=PASSED, pin_action=BLOCK,
        new_pvv=None, answer=answer, latency_us=1_500, assessed=assessed(), fee_mode=fee_mode,
        decision_id="d-1", response=b"reply", new_id=ids or Ids(),
    )  # fmt: skip


APPROVED = ClientAnswer(Reason.APPROVED, 10_000, "00", "123456", "ok")
DECLINED = ClientAnswer(Reason.CLIENT_DECLINED, 0, "05", "", "no")


def test_a_decline_before_the_client_is_asked_notifies_its_decline_fee() -> None:
    checks = AuthorizeOutcome(
        Reason.TRANSACTION_NOT_PERMITTED, 0, 0, None, b"e", 0, False, False, False
    )
    built = declined_by_checks(
        arrival=ARRIVAL, card=CARD, program=PROGRAM, checks=checks,
        reason=Reason.TRANSACTION_NOT_PERMITTED, pin_action=BLOCK, new_pvv=None,
        decision_id="d-1", response=b"57", assessed=assessed(), new_id=Ids(),
    )  # fmt: skip
    assert (built.decision.id, built.decision.reason) == ("d-1", Reason.TRANSACTION_NOT_PERMITTED)
    (note,) = built.notifications
    assert (note.kind, note.sinks) == ("FEE", ("client",))
    assert note.payload == {
        "stage": "AUTHORIZATION", "source": "visa", "message_id": "m-1",
        "network_reference": "ref-1",
        "response_code": outcome(Reason.TRANSACTION_NOT_PERMITTED).response_code,
        "fee_minor": 30, "asset": "GBP", "amount_minor": 10_000, "fee_mode": "NOTIFIED",
        "on_decline": True,
        "rules": [{"rule_id": "r2", "name": "Decline", "fee_minor": 30}],
    }  # fmt: skip
    assert [(u.key, u.amount_minor, u.count) for u in built.usage] == [("L:day", 10_040, 1)]
    # The core checks' decline alone: nothing counted, nothing notified.
    plain = declined_by_checks(
        arrival=ARRIVAL, card=CARD, program=PROGRAM, checks=checks, reason=checks.reason,
        pin_action=BLOCK, new_pvv=None, decision_id="d-1", response=b"57", assessed=None,
        new_id=Ids(),
    )  # fmt: skip
    assert (plain.usage, plain.notifications) == ((), ())


def test_the_clients_approval_records_its_call_and_counters() -> None:
    built = answered(APPROVED, FEE_NOTIFIED)
    record = built.decision
    assert (record.reason, record.response) == (1, b"reply")
    # What the reply shows: the client's approved amount and the fee notified with it.
    assert (record.approved_minor, record.fee_minor) == (10_000, 40)
    (call,) = built.client_calls
    assert (call.outcome, call.client_decision, call.client_response_code) == (
        "CLIENT", "APPROVED", "00",
    )  # fmt: skip
    assert (call.client_reason, call.latency_us, call.program_id) == ("ok", 1_500, "prog-1")
    assert (call.usage_keys, call.usage_minor, call.network_reference) == (
        ("L:day",), 10_040, "ref-1",
    )  # fmt: skip
    (fee,) = built.notifications
    assert (fee.payload["fee_minor"], fee.payload["fee_mode"], fee.payload["on_decline"]) == (
        40, "NOTIFIED", False,
    )  # fmt: skip
    assert (built.balance_changes, built.holds) == ((), ())


def test_a_clients_decline_keeps_no_usage_keys() -> None:
    built = answered(DECLINED, FEE_NOTIFIED)
    declined = assessed()
    assert (built.decision.approved_minor, built.decision.fee_minor) == (
        0, declined.decline_fee_minor,
    )  # fmt: skip
    (call,) = built.client_calls
    assert (call.usage_keys, call.usage_minor, call.network_reference) == ((), 0, "")
    assert built.notifications[0].payload["response_code"] == "05"  # the client's own code


def test_a_shadow_programmes_decline_fee_is_posted_or_not_applied() -> None:
    ids = Ids()
    posted = answered(DECLINED, FEE_POSTED, ids)
    derivable(posted)
    (change,) = posted.balance_changes
    assert (change.account_id, change.actual_delta_minor, change.authorized_delta_minor) == (
        "acct-1", -30, 0,
    )  # fmt: skip
    (entry,) = posted.entries
    assert (entry.kind, entry.description, entry.card_id) == ("FEE", "decline fee", "card-1")
    assert {(p.account_id, p.amount_minor) for p in entry.postings} == {
        ("acct-1", -30), ("fees-1", 30),
    }  # fmt: skip
    assert [(n.kind, n.payload["fee_mode"]) for n in posted.notifications] == [("FEE", "POSTED")]
    assert ids.drawn == 2
    missed = answered(DECLINED, FEE_NOT_APPLIED)
    assert (missed.balance_changes, missed.entries) == ((), ())
    assert [(n.kind, n.payload["fee_mode"]) for n in missed.notifications] == [
        ("FEE_NOT_APPLIED", "NOT_APPLIED"),
    ]  # fmt: skip


def test_a_shadow_programme_holds_the_clients_approval() -> None:
    approved = answered(APPROVED, FEE_NOTIFIED)
    built = mirrored(
        write=approved, arrival=ARRIVAL, card=CARD, plan=HoldPlan("ref-1", "INCREMENTAL", 3),
        amount_minor=10_040, hold_id="h-1",
    )  # fmt: skip
    (hold,) = built.holds
    assert (hold.id, hold.amount_minor, hold.fee_minor, hold.kind) == (
        "h-1", 10_040, 0, "INCREMENTAL",
    )  # fmt: skip
    assert (hold.usage_keys, hold.expires_at) == (("L:day",), T0 + timedelta(days=3))
    (change,) = built.balance_changes
    assert (change.authorized_delta_minor, change.actual_delta_minor) == (10_040, 0)
    assert not change.requires_funds  # the client decided
    assert built.decision is approved.decision
    assert (built.usage, built.notifications, built.client_calls) == (
        approved.usage, approved.notifications, approved.client_calls,
    )  # fmt: skip


def stand_in(counter: tuple[str, datetime] | None, wire: ClientReply | None = None) -> LedgerWrite:
    decided = Reason.APPROVED if counter else Reason.CLIENT_UNAVAILABLE
    answer = AuthorizeAnswer(  # as service/offledger.py answers a stand-in
        decided, "GBP", 10_000 if counter else 0, 40 if counter else 0,
        authorization_code="777777" if counter else "", decision_id="d-1",
    )  # fmt: skip
    return stand_in_write(
        arrival=ARRIVAL, card=CARD, program=PROGRAM, checks=PASSED, pin_action=BLOCK,
        new_pvv=None, reason=StandInReason.TIMEOUT, policy=StandInPolicy.APPROVE,
        latency_us=None, wire=wire, stand_in_counter=counter, assessed=assessed(),
        answer=answer, response=b"reply", new_id=Ids(),
    )  # fmt: skip


def test_an_approving_stand_in_counts_advises_and_notifies_its_fee() -> None:
    ends = T0 + timedelta(hours=12)
    built = stand_in(("S:card-1:20261203", ends))
    assert (built.decision.id, built.decision.reason) == ("d-1", int(Reason.APPROVED))
    assert (built.decision.approved_minor, built.decision.fee_minor) == (10_000, 40)
    assert [(u.key, u.amount_minor, u.count, u.expires_at) for u in built.usage] == [
        ("S:card-1:20261203", 10_000, 1, ends), ("L:day", 10_040, 1, LIMIT_ENDS),
    ]  # fmt: skip
    (call,) = built.client_calls
    assert (call.outcome, call.stand_in_reason, call.stand_in_policy) == (
        "STAND_IN", "TIMEOUT", "APPROVE",
    )  # fmt: skip
    assert (call.usage_keys, call.usage_minor, call.network_reference) == (
        ("L:day",), 10_040, "ref-1",
    )  # fmt: skip
    advice, fee = built.notifications
    assert advice.kind == "STAND_IN_ADVICE"
    assert (advice.payload["approved_minor"], advice.payload["fee_minor"]) == (10_000, 40)
    assert (advice.payload["authorization_code"], advice.payload["response_code"]) == (
        "777777", "00",
    )  # fmt: skip
    assert (fee.kind, fee.payload["fee_minor"]) == ("FEE", 40)


def test_a_stand_in_that_cannot_approve_answers_91_and_counts_nothing() -> None:
    wire = ClientReply(9, "", 0, "", "ZZZZZZZZZZ", "", "garbled")
    built = stand_in(None, wire)
    assert built.decision.response_code == outcome(Reason.CLIENT_UNAVAILABLE).response_code
    assert (built.usage, built.notifications) == ((), ())
    (call,) = built.client_calls
    assert (call.client_response_code, call.usage_keys) == ("ZZZZZZZZ", ())  # cut to 8


@pytest.mark.parametrize("fee_mode", [FEE_NOTIFIED, FEE_POSTED, FEE_NOT_APPLIED])
@pytest.mark.parametrize("approve", [True, False])
def test_every_off_ledger_write_is_derivable_and_holds_no_card_secret(
    fee_mode: str, approve: bool
) -> None:
    built = answered(APPROVED if approve else DECLINED, fee_mode)
    derivable(built)
    no_secret(built, PAN, PIN, CVV2)
    for counter in (None, ("S:k", T0)):
        no_secret(stand_in(counter), PAN, PIN, CVV2)
