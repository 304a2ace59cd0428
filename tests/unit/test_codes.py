from __future__ import annotations

from authswitch.domain.codes import Check, Decision, Reason, outcome
from authswitch.v1 import authorization_pb2 as pb


def test_reasons_match_the_wire_enum() -> None:
    wire = {name.removeprefix("REASON_"): value for name, value in pb.Reason.items() if value}
    assert wire == {r.name: r.value for r in Reason}


def test_decisions_match_the_wire_enum() -> None:
    wire = {name.removeprefix("DECISION_"): value for name, value in pb.Decision.items() if value}
    assert wire == {d.name: d.value for d in Decision}


def test_check_precedence_is_the_documented_order() -> None:
    assert [c.name for c in sorted(Check)] == [
        "FORMAT", "PAN", "CARD_STATUS", "EXPIRY", "PIN_TRIES", "PIN", "CVV2", "PRODUCT",
        "LIMITS", "FUNDS",
    ]  # fmt: skip


def test_reasons_of_checks_are_numbered_in_check_order() -> None:
    """The wire enum lists declines in precedence order, so a reader can trust it."""
    by_check = [r for r in Reason if outcome(r).check is not None]
    checks = [outcome(r).check for r in by_check]
    assert checks == sorted(checks)  # type: ignore[type-var]


def test_iso_codes() -> None:
    expected = {
        Reason.APPROVED: "00", Reason.PARTIALLY_APPROVED: "10", Reason.FORMAT_ERROR: "30",
        Reason.INVALID_AMOUNT: "13", Reason.UNKNOWN_CARD: "14", Reason.INVALID_PAN: "14",
        Reason.CARD_LOST: "41", Reason.CARD_STOLEN: "43", Reason.CARD_BLOCKED: "62",
        Reason.CARD_CLOSED: "62", Reason.CARD_EXPIRED: "54", Reason.EXPIRY_MISMATCH: "54",
        Reason.PIN_TRIES_EXCEEDED: "75", Reason.INCORRECT_PIN: "55", Reason.CVV2_MISMATCH: "N7",
        Reason.TRANSACTION_NOT_PERMITTED: "57", Reason.AMOUNT_LIMIT_EXCEEDED: "61",
        Reason.COUNT_LIMIT_EXCEEDED: "65", Reason.INSUFFICIENT_FUNDS: "51",
        Reason.CLIENT_DECLINED: "05", Reason.CLIENT_UNAVAILABLE: "91", Reason.SYSTEM_ERROR: "96",
        Reason.DUPLICATE_MISMATCH: "94", Reason.INVALID_TRANSACTION: "12",
        Reason.NO_RECORD: "25",
    }  # fmt: skip
    for reason, code in expected.items():
        assert outcome(reason).response_code == code, reason
    assert outcome(Reason.APPROVED).decision is Decision.APPROVED
    assert outcome(Reason.INSUFFICIENT_FUNDS).decision is Decision.DECLINED
