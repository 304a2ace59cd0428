"""The writes of operators' calls (domain/writes/admin.py): an adjustment's movement against
its counter account, the decision an admin movement is written with and its refusal, and
the notifications of a card's status changed or expired."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authswitch.domain import postings
from authswitch.domain.authorization import CardStatus
from authswitch.domain.catalog import ProgramRow
from authswitch.domain.codes import Reason, outcome
from authswitch.domain.postings import Movement, Origin
from authswitch.domain.records import LedgerWrite
from authswitch.domain.tokens import TokenStatus
from authswitch.domain.writes.admin import (
    ADMIN_SOURCE,
    adjustment,
    admin_write,
    card_expired,
    card_status_changed,
    token_status_changed,
)
from tests.support.writes import derivable

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
PROGRAM = ProgramRow(
    "prog-1", "client-1", "Programme", "ON_LEDGER", "UTC", "clearing-1", "fees-1",
    sinks=("webhook",),
)  # fmt: skip
CREDITS = ["LOAD", "CREDIT_ADJUSTMENT", "DEBIT_REVERSAL", "WRITE_OFF"]
DEBITS = ["FEE", "DEBIT_ADJUSTMENT", "CREDIT_REVERSAL", "WRITE_ON", "UNLOAD"]


def adjusted(amount: int, credit: bool, purpose: str, allow_negative: bool = False) -> Movement:
    return adjustment(
        account_id="acct-1", program=PROGRAM, asset="GBP", amount_minor=amount, credit=credit,
        purpose=purpose, description="goodwill", key="key-1", entry_id="e-1", at=T0,
        allow_negative=allow_negative,
    )  # fmt: skip


def write(movement: Movement, amount: int = 2_500) -> LedgerWrite:
    return admin_write(
        movement=movement, decision_id="d-1", key="key-1", kind="CREDIT", fingerprint=b"fp",
        account_id="acct-1", asset="GBP", amount_minor=amount, at=T0, response=b"reply",
    )  # fmt: skip


def test_a_load_credits_the_customer_from_the_clearing_account() -> None:
    movement = adjusted(2_500, True, "LOAD")
    (change,) = movement.changes
    assert (change.account_id, change.actual_delta_minor, change.requires_funds) == (
        "acct-1", 2_500, False,
    )  # fmt: skip
    (entry,) = movement.entries
    assert (entry.id, entry.kind, entry.program_id, entry.created_at) == (
        "e-1", "LOAD", "prog-1", T0,
    )  # fmt: skip
    assert (entry.source, entry.message_id, entry.description) == (
        ADMIN_SOURCE, "key-1", "goodwill",
    )  # fmt: skip
    assert {(p.account_id, p.amount_minor) for p in entry.postings} == {
        ("acct-1", 2_500), ("clearing-1", -2_500),
    }  # fmt: skip


def test_a_fee_goes_to_fee_income_and_a_debit_needs_funds_unless_forced() -> None:
    fee = adjusted(300, False, "FEE")
    assert {(p.account_id, p.amount_minor) for p in fee.entries[0].postings} == {
        ("acct-1", -300), ("fees-1", 300),
    }  # fmt: skip
    assert fee.change.requires_funds
    assert not adjusted(300, False, "UNLOAD", allow_negative=True).change.requires_funds


@given(st.integers(1, 10**15), st.booleans(), st.data())
def test_every_adjustment_is_derivable_and_signed_by_its_direction(
    amount: int, credit: bool, data: st.DataObject
) -> None:
    purpose = data.draw(st.sampled_from(CREDITS if credit else DEBITS))
    movement = adjusted(amount, credit, purpose)
    built = write(movement, amount)
    derivable(built)
    assert movement.change.actual_delta_minor == (amount if credit else -amount)
    assert movement.change.requires_funds is not credit
    assert movement.entries[0].kind == purpose


def test_the_write_carries_its_decision_and_its_refusal() -> None:
    movement = adjusted(2_500, True, "LOAD")
    built = write(movement)
    assert (built.balance_changes, built.entries) == (movement.changes, movement.entries)
    record = built.decision
    assert (record.id, record.source, record.message_id, record.kind, record.fingerprint) == (
        "d-1", ADMIN_SOURCE, "key-1", "CREDIT", b"fp",
    )  # fmt: skip
    assert (record.card_id, record.account_id, record.asset, record.amount_minor) == (
        None, "acct-1", "GBP", 2_500,
    )  # fmt: skip
    assert (record.approved_minor, record.response_code, record.response) == (
        2_500, "00", b"reply",
    )  # fmt: skip
    assert built.refusal is not None
    refused = built.refusal()
    assert (refused.id, refused.reason, refused.approved_minor, refused.response) == (
        "d-1", int(Reason.INSUFFICIENT_FUNDS), 0, b"",
    )  # fmt: skip
    assert refused.response_code == outcome(Reason.INSUFFICIENT_FUNDS).response_code


def test_a_transfer_is_written_with_both_changes() -> None:
    origin = Origin("e-2", "prog-1", T0, ADMIN_SOURCE, "key-2")
    movement = postings.transfer("acct-1", "acct-2", "GBP", 900, "TRANSFER", origin)
    built = write(movement, 900)
    derivable(built)
    assert [c.account_id for c in built.balance_changes] == ["acct-1", "acct-2"]


def test_card_notifications() -> None:
    changed = card_status_changed(
        notification_id="n-1", program_id="prog-1", account_id="acct-1", card_id="card-1",
        previous=CardStatus.ACTIVE, status=CardStatus.BLOCKED, reason="lost", at=T0,
        sinks=("webhook",),
    )  # fmt: skip
    assert (changed.id, changed.kind, changed.account_id, changed.card_id, changed.sinks) == (
        "n-1", "CARD_STATUS_CHANGED", "acct-1", "card-1", ("webhook",),
    )  # fmt: skip
    assert changed.payload == {"from": "ACTIVE", "to": "BLOCKED", "reason": "lost"}
    expired = card_expired(
        notification_id="n-2", program_id="prog-1", account_id="acct-1", card_id="card-1",
        month="2612", at=T0, sinks=(),
    )  # fmt: skip
    assert (expired.kind, expired.payload, expired.created_at) == (
        "CARD_EXPIRED", {"month": "2612"}, T0,
    )  # fmt: skip


def test_a_velocity_block_and_a_token_change_notify_with_their_details() -> None:
    blocked = card_status_changed(
        notification_id="n-3", program_id="prog-1", account_id="acct-1", card_id="card-1",
        previous=CardStatus.ACTIVE, status=CardStatus.BLOCKED, reason="velocity", at=T0,
        sinks=(), details={"velocity_rule": "r1"},
    )  # fmt: skip
    assert blocked.payload == {
        "from": "ACTIVE", "to": "BLOCKED", "reason": "velocity", "velocity_rule": "r1",
    }  # fmt: skip
    token = token_status_changed(
        notification_id="n-4", program_id="prog-1", account_id="acct-1", card_id="card-1",
        token_id="tok-1", previous=TokenStatus.ACTIVE, status=TokenStatus.SUSPENDED,
        reason="fraud", at=T0, sinks=("client",),
    )  # fmt: skip
    assert (token.kind, token.card_id, token.sinks) == (
        "TOKEN_STATUS_CHANGED", "card-1", ("client",),
    )  # fmt: skip
    assert token.payload == {
        "token_id": "tok-1", "from": "ACTIVE", "to": "SUSPENDED", "reason": "fraud",
    }  # fmt: skip
