"""The reference client's ledger (pure): each notification kind, with the payloads of
programs whose messages are only forwarded (the client works out what to release) and of
programs with a shadow ledger (authswitch says what it released)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authswitch.reference_client import ReferenceLedger

pytestmark = pytest.mark.timeout(30)

A = "account-1"


def ledger(opening_minor: int = 10_000) -> ReferenceLedger:
    book = ReferenceLedger(opening_minor=0)
    book.open_account(A, "GBP", opening_minor)
    return book


def figures(book: ReferenceLedger) -> tuple[int, int, int]:
    return book.actual(A, "GBP"), book.available(A, "GBP"), book.held(A, "GBP")


def note(book: ReferenceLedger, kind: str, **payload: object) -> None:
    book.apply(kind, A, "card-1", {"asset": "GBP", **payload})


def test_a_partial_clearing_releases_oldest_first_and_the_final_one_the_rest() -> None:
    book = ledger()
    book.hold("auth-1", A, "GBP", 4_000, 0, "NR1")
    book.hold("incr-1", A, "GBP", 1_000, 0, "NR1")  # an incremental authorisation
    note(book, "CLEARING", network_reference="NR1", amount_minor=4_500, final=False)
    assert figures(book) == (5_500, 5_000, 500)
    assert list(book.holds) == ["incr-1"]  # the oldest went first
    note(book, "CLEARING", network_reference="NR1", amount_minor=300, final=True)
    assert figures(book) == (5_200, 5_200, 0)


def test_shadow_clearings_release_what_authswitch_released() -> None:
    book = ledger()
    book.hold("auth-1", A, "GBP", 4_000, 25, "NR1")
    note(
        book, "CLEARING", network_reference="NR1", amount_minor=2_000, final=False,
        released_minor=2_000, fee_minor=10,
    )  # fmt: skip
    note(book, "FEE", stage="CLEARING", fee_mode="POSTED", fee_minor=10, message_id="clr-1")
    assert figures(book) == (7_990, 5_965, 2_025)


def test_reversals_partial_full_and_before_their_authorisation() -> None:
    book = ledger()
    book.hold("auth-1", A, "GBP", 3_000, 0, "NR1")
    note(book, "REVERSAL", original_message_id="auth-1", amount_minor=1_000, full=False)
    assert figures(book) == (10_000, 8_000, 2_000)
    note(book, "REVERSAL", original_message_id="auth-1", amount_minor=0, full=True)
    assert figures(book) == (10_000, 10_000, 0)
    # A reversal first: the late authorisation holds only what was not reversed.
    note(book, "REVERSAL", original_message_id="auth-2", amount_minor=400, full=False)
    book.hold("auth-2", A, "GBP", 1_000, 0, "NR2")
    assert figures(book) == (10_000, 9_400, 600)
    note(book, "REVERSAL", original_message_id="auth-3", amount_minor=0, full=True)
    book.hold("auth-3", A, "GBP", 1_000, 0, "NR3")
    assert book.held(A, "GBP") == 600


def test_advices_hold_the_difference_with_their_transaction() -> None:
    book = ledger()
    note(book, "ADVICE", message_id="adv-1", network_reference="NR1", amount_minor=1_500)
    assert figures(book) == (10_000, 8_500, 1_500)
    book.hold("auth-2", A, "GBP", 4_000, 0, "NR2")
    book.hold("incr-2", A, "GBP", 500, 0, "NR2")
    note(
        book, "ADVICE", message_id="adv-2", network_reference="X", amount_minor=4_200,
        original_message_id="auth-2",
    )  # fmt: skip
    assert book.held(A, "GBP") == 1_500 + 4_200
    assert book.holds["incr-2"].open_minor == 200  # lowered newest first
    note(
        book, "ADVICE", message_id="adv-3", network_reference="X", amount_minor=5_000,
        original_message_id="auth-2",
    )  # fmt: skip
    assert book.holds["adv-3"].network_reference == "NR2"  # joins the transaction
    assert book.held(A, "GBP") == 1_500 + 5_000
    # With a shadow ledger, the advice says what it held (or released).
    note(book, "ADVICE", message_id="adv-4", original_message_id="auth-2", held_minor=-800)
    assert book.held(A, "GBP") == 1_500 + 4_200


def test_fees_by_mode_each_charged_once() -> None:
    book = ledger()
    # A shadow stand-in: the fee (HELD) is notified before the advice it is held with.
    note(book, "FEE", message_id="si-1", stage="AUTHORIZATION", fee_mode="HELD", fee_minor=25)
    note(book, "STAND_IN_ADVICE", message_id="si-1", network_reference="NR1", amount_minor=2_000)
    assert figures(book) == (10_000, 7_975, 2_025)
    # A fee the client charged when it decided is not charged again when notified.
    book.hold("auth-2", A, "GBP", 1_000, 25, "NR2")
    book.fees_charged.add("auth-2")
    note(book, "FEE", message_id="auth-2", stage="AUTHORIZATION", fee_mode="NOTIFIED",
         fee_minor=25)  # fmt: skip
    assert book.held(A, "GBP") == 2_025 + 1_025
    # An approving stand-in's fee, notified after its advice, joins its hold.
    note(book, "STAND_IN_ADVICE", message_id="si-3", network_reference="NR3", amount_minor=100)
    note(book, "FEE", message_id="si-3", stage="AUTHORIZATION", fee_mode="NOTIFIED",
         fee_minor=25)  # fmt: skip
    assert book.holds["si-3"].open_minor == 125
    # Posted (a zero-value request's fee), not applied, and a clearing fee.
    note(book, "FEE", message_id="be-1", stage="AUTHORIZATION", fee_mode="POSTED", fee_minor=50)
    note(book, "FEE_NOT_APPLIED", message_id="be-2", fee_minor=50, fee_mode="NOT_APPLIED")
    note(book, "FEE", message_id="clr-1", stage="CLEARING", fee_mode="POSTED", fee_minor=10)
    assert book.actual(A, "GBP") == 10_000 - 50 - 10


def test_a_fee_with_nothing_to_hold_is_charged_only_when_covered() -> None:
    book = ledger(opening_minor=40)
    note(book, "FEE", message_id="pin-1", stage="AUTHORIZATION", fee_mode="NOTIFIED",
         fee_minor=50)  # fmt: skip
    assert figures(book) == (40, 40, 0)
    note(book, "FEE", message_id="pin-2", stage="AUTHORIZATION", fee_mode="NOTIFIED",
         fee_minor=30)  # fmt: skip
    assert figures(book) == (10, 10, 0)


def test_a_declined_stand_in_holds_nothing() -> None:
    book = ledger()
    note(book, "STAND_IN_ADVICE", message_id="si-1", amount_minor=5_000, response_code="51")
    assert figures(book) == (10_000, 10_000, 0)
    note(
        book, "STAND_IN_ADVICE", message_id="si-2", amount_minor=5_000, approved_minor=1_975,
        response_code="10",
    )  # fmt: skip
    assert figures(book) == (10_000, 8_025, 1_975)


def test_disputes_refunds_releases_and_card_events() -> None:
    book = ledger()
    note(book, "DISPUTE", step="OPEN", customer_minor=1_000)
    note(book, "DISPUTE", step="MERCHANT_WON", customer_minor=-1_000)
    note(book, "DISPUTE", step="CARDHOLDER_WON", customer_minor=700)
    note(book, "REFUND", amount_minor=300)
    book.hold("auth-1", A, "GBP", 900, 0, "NR1")
    note(book, "AGE_OFF", original_message_id="auth-1", released_minor=900)
    note(book, "CARD_STATUS_CHANGED", **{"from": "ACTIVE", "to": "BLOCKED"})
    assert figures(book) == (11_000, 11_000, 0)
    assert book.card_status == {"card-1": "BLOCKED"}


def test_an_account_of_several_assets_needs_the_asset_named() -> None:
    book = ledger()
    book.open_account(A, "EUR", 500)
    with pytest.raises(ValueError, match="several assets"):
        book.actual(A)
    assert book.actual(A, "EUR") == 500


@given(
    holds=st.lists(st.integers(1, 10_000), min_size=1, max_size=5),
    cleared=st.lists(st.integers(0, 12_000), min_size=1, max_size=5),
)
def test_partial_clearings_never_release_more_than_held_or_cleared(
    holds: list[int], cleared: list[int]
) -> None:
    book = ledger(opening_minor=100_000)
    for index, amount in enumerate(holds):
        book.hold(f"auth-{index}", A, "GBP", amount, 0, "NR1")
    for amount in cleared:
        held_before = book.held(A, "GBP")
        note(book, "CLEARING", network_reference="NR1", amount_minor=amount, final=False)
        assert held_before - book.held(A, "GBP") == min(amount, held_before)
    assert book.actual(A, "GBP") == 100_000 - sum(cleared)
