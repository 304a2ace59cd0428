"""The writes of dispute steps (domain/writes/disputes.py): each step's entry and balance
change as planned (derivable), its DISPUTE notification, dispute change and decision, and
the record of a refused network step."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authswitch.domain.catalog import ProgramRow
from authswitch.domain.codes import Code, Reason, outcome
from authswitch.domain.disputes import (
    DisputeRow,
    DisputeState,
    DisputeStatus,
    DisputeStep,
    ImpossibleStep,
    StepPlan,
    plan_open,
    plan_step,
)
from authswitch.domain.records import DisputeOpening, LedgerWrite
from authswitch.domain.writes.disputes import (
    PlannedStep,
    refused_step,
    step_movement,
    step_write,
)
from tests.support.writes import Ids, derivable

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
PROGRAM = ProgramRow(
    "prog-1", "client-1", "Programme", "ON_LEDGER", "UTC", "clearing-1", "fees-1",
    dispute_account_id="disputes-1", sinks=("webhook",),
)  # fmt: skip


def dispute(plan: StepPlan, amount_minor: int, *, on_ledger: bool = True) -> DisputeRow:
    return DisputeRow(
        "prog-1", "acct-1", "card-1", "visa", "clr-1", "ref-1", "GBP", id="dsp-1",
        amount_minor=amount_minor, reason_code="13.1", status=plan.status.value,
        provisional_minor=plan.provisional_minor, on_ledger=on_ledger, created_at=T0,
        updated_at=T0,
    )  # fmt: skip


def written(step: PlannedStep, ids: Ids | None = None) -> LedgerWrite:
    movement = step_movement(step=step, program=PROGRAM, new_id=ids or Ids())
    return step_write(
        step=step, program=PROGRAM, movement=movement, decision_id="d-1",
        notification_id="n-1", response=b"reply",
    )  # fmt: skip


def opened(amount: int, provisional: bool, *, on_ledger: bool = True) -> PlannedStep:
    plan = plan_open(amount, provisional_credit=provisional)
    row = dispute(plan, amount, on_ledger=on_ledger)
    opening = DisputeOpening(
        "prog-1", "acct-1", "card-1", "visa", "clr-1", "ref-1", "GBP",
        reason_code="13.1", on_ledger=on_ledger, cleared_minor=20_000,
    )  # fmt: skip
    return PlannedStep(
        row, DisputeStep.OPEN, None, plan, "admin", "key-1", b"fp", {"actor": "ops"}, opening
    )


def test_opening_with_provisional_credit_credits_the_cardholder() -> None:
    ids = Ids()
    step = opened(5_000, True)
    built = written(step, ids)
    derivable(built)
    (change,) = built.balance_changes
    assert (change.account_id, change.asset, change.actual_delta_minor) == ("acct-1", "GBP", 5_000)
    assert not change.requires_funds
    (entry,) = built.entries
    assert (entry.id, entry.kind, entry.program_id, entry.source, entry.message_id) == (
        "id-1", "DISPUTE_OPEN", "prog-1", "admin", "key-1",
    )  # fmt: skip
    assert (entry.description, entry.network_reference, entry.card_id) == (
        "dispute dsp-1 open", "ref-1", "card-1",
    )  # fmt: skip
    assert {(p.account_id, p.amount_minor) for p in entry.postings} == {
        ("acct-1", 5_000), ("disputes-1", -5_000),
    }  # fmt: skip
    record = built.decision
    assert (record.id, record.source, record.message_id, record.kind) == (
        "d-1", "admin", "key-1", "DISPUTE",
    )  # fmt: skip
    assert (record.amount_minor, record.approved_minor, record.response_code) == (
        5_000, 5_000, "00",
    )  # fmt: skip
    assert (record.card_id, record.account_id, record.asset, record.response) == (
        "card-1", "acct-1", "GBP", b"reply",
    )  # fmt: skip
    (note,) = built.notifications
    assert (note.id, note.kind, note.account_id, note.sinks) == (
        "n-1", "DISPUTE", "acct-1", ("webhook",),
    )  # fmt: skip
    assert note.payload == {
        "dispute_id": "dsp-1", "step": "OPEN", "from_status": "", "to_status": "OPEN",
        "amount_minor": 5_000, "asset": "GBP", "provisional_minor": 5_000,
        "customer_minor": 5_000, "reason_code": "13.1", "network_reference": "ref-1",
        "clearing_source": "visa", "clearing_message_id": "clr-1", "entry_id": "id-1",
    }  # fmt: skip
    (kept,) = built.disputes
    assert (kept.dispute_id, kept.step, kept.from_status, kept.to_status) == (
        "dsp-1", "OPEN", None, "OPEN",
    )  # fmt: skip
    assert (kept.entry_id, kept.detail, kept.opening) == ("id-1", {"actor": "ops"}, step.opening)


def test_a_step_that_moves_no_money_writes_no_entry_and_draws_no_id() -> None:
    ids = Ids()
    built = written(opened(5_000, False), ids)
    assert (built.balance_changes, built.entries) == ((), ())
    assert ids.drawn == 0
    assert built.notifications[0].payload["entry_id"] == ""
    assert built.disputes[0].entry_id is None


def test_an_off_ledger_dispute_moves_nothing_here_but_tells_the_client() -> None:
    built = written(opened(5_000, True, on_ledger=False))
    assert (built.balance_changes, built.entries) == ((), ())
    # The client's ledger credits the cardholder: the notification says by how much.
    assert built.notifications[0].payload["customer_minor"] == 5_000


def test_a_chargeback_moves_clearing_to_disputes_not_the_cardholder() -> None:
    state = DisputeState(DisputeStatus.OPEN, 5_000, 0)
    plan = plan_step(state, DisputeStep.CHARGEBACK)
    step = PlannedStep(
        replace(dispute(plan, 5_000), updated_at=T0 + timedelta(days=2)), DisputeStep.CHARGEBACK,
        DisputeStatus.OPEN, plan, "visa", "cb-1", b"fp", {"reason_code": "13.1"},
    )  # fmt: skip
    built = written(step)
    assert built.balance_changes == ()  # nothing for the cardholder
    (entry,) = built.entries
    assert {(p.account_id, p.amount_minor) for p in entry.postings} == {
        ("clearing-1", -5_000), ("disputes-1", 5_000),
    }  # fmt: skip
    assert entry.created_at == built.decision.created_at == T0 + timedelta(days=2)
    assert built.disputes[0].from_status == "OPEN"
    assert built.notifications[0].payload["from_status"] == "OPEN"


def test_a_refused_network_step_is_recorded_alone() -> None:
    plan = plan_open(5_000, provisional_credit=False)
    built = refused_step(
        source="visa", message_id="cb-9", fingerprint=b"fp", response=b"12", decision_id="d-9",
        at=T0, dispute=dispute(plan, 5_000), amount_minor=4_000,
        response_code=Code.INVALID_TRANSACTION,
    )  # fmt: skip
    record = built.decision
    assert (record.response_code, record.reason) == (
        Code.INVALID_TRANSACTION, int(Reason.INVALID_TRANSACTION),
    )  # fmt: skip
    assert (record.amount_minor, record.approved_minor, record.account_id) == (4_000, 0, "acct-1")
    assert built == LedgerWrite(decision=record)
    unknown = refused_step(
        source="visa", message_id="cb-9", fingerprint=b"fp", response=b"25", decision_id="d-9",
        at=T0, dispute=None, amount_minor=4_000, response_code=Code.NO_RECORD,
    )  # fmt: skip
    assert (unknown.decision.card_id, unknown.decision.account_id, unknown.decision.asset) == (
        None, None, None,
    )  # fmt: skip
    assert unknown.decision.reason == int(Reason.NO_RECORD)


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (Code.INVALID_TRANSACTION, Reason.INVALID_TRANSACTION),
        (Code.INVALID_AMOUNT, Reason.INVALID_AMOUNT),
        (Code.NO_RECORD, Reason.NO_RECORD),
    ],
)
def test_a_refused_step_records_the_reason_of_its_own_code(code: str, reason: Reason) -> None:
    """Each refusal's stored reason answers to its response code (codes.py), never a
    reason of another code (57, before)."""
    plan = plan_open(5_000, provisional_credit=False)
    record = refused_step(
        source="visa", message_id="cb-9", fingerprint=b"fp", response=b"", decision_id="d-9",
        at=T0, dispute=dispute(plan, 5_000), amount_minor=4_000, response_code=code,
    ).decision  # fmt: skip
    assert (record.reason, outcome(Reason(record.reason)).response_code) == (int(reason), code)


def test_a_dispute_step_answered_with_a_code_of_no_step_is_refused_unwritten() -> None:
    plan = plan_open(5_000, provisional_credit=False)
    with pytest.raises(ValueError, match="'51'"):
        refused_step(
            source="visa", message_id="cb-9", fingerprint=b"fp", response=b"",
            decision_id="d-9", at=T0, dispute=dispute(plan, 5_000), amount_minor=4_000,
            response_code=Code.INSUFFICIENT_FUNDS,
        )  # fmt: skip


STEPS = st.lists(st.sampled_from(list(DisputeStep)[1:]), max_size=4)


@given(st.integers(1, 10**12), st.booleans(), STEPS)
def test_every_path_of_steps_posts_what_it_plans(
    amount: int, provisional: bool, steps: list[DisputeStep]
) -> None:
    """Along any path, each step's write is derivable, moves the cardholder by the plan's
    customer amount, and posts the plan's legs; the cardholder's total is what the plans
    say (in the end: the whole amount if the cardholder won, nothing if the merchant did)."""
    step = opened(amount, provisional)
    total = 0
    for next_step in [None, *steps]:
        if next_step is not None:
            current = DisputeStatus(step.dispute.status)
            state = DisputeState(current, amount, step.dispute.provisional_minor)
            try:
                plan = plan_step(state, next_step)
            except ImpossibleStep:
                break
            step = PlannedStep(
                dispute(plan, amount), next_step, current, plan, "visa", "m", b"fp", {}
            )
        built = written(step)
        derivable(built)
        customer = sum(c.actual_delta_minor for c in built.balance_changes)
        assert customer == step.plan.customer_minor
        legs = {
            "acct-1": step.plan.customer_minor, "clearing-1": step.plan.clearing_minor,
            "disputes-1": step.plan.disputes_minor,
        }  # fmt: skip
        posted = {p.account_id: p.amount_minor for e in built.entries for p in e.postings}
        assert posted == {k: v for k, v in legs.items() if v}
        total += customer
    final = DisputeStatus(step.dispute.status)
    if final is DisputeStatus.CARDHOLDER_WON:
        assert total == amount
    elif final is DisputeStatus.MERCHANT_WON:
        assert total == 0
