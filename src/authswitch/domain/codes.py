"""Response codes and the precedence of the core checks (DESIGN.md §2).

The core checks run in the order of :class:`Check`; the first that fails decides the
response. Every outcome is a :class:`Reason` (machine-readable, numbered as on the wire)
that maps to exactly one ISO 8583 field-39 response code and one :class:`Decision`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, unique

__all__ = [
    "Check",
    "Code",
    "Decision",
    "Outcome",
    "Reason",
    "outcome",
]


@unique
class Check(IntEnum):
    """The core checks, in precedence order: the first failing check wins."""

    FORMAT = 1
    PAN = 2
    CARD_STATUS = 3
    EXPIRY = 4
    PIN_TRIES = 5
    PIN = 6
    CVV2 = 7
    PRODUCT = 8
    LIMITS = 9
    FUNDS = 10


@unique
class Decision(IntEnum):
    """Numbered as ``authswitch.v1.Decision``."""

    APPROVED = 1
    PARTIALLY_APPROVED = 2
    DECLINED = 3


@unique
class Reason(IntEnum):
    """Numbered as ``authswitch.v1.Reason``; a unit test keeps the two in step."""

    APPROVED = 1
    PARTIALLY_APPROVED = 2
    FORMAT_ERROR = 10
    INVALID_AMOUNT = 11
    INVALID_PAN = 12
    UNKNOWN_CARD = 13
    CARD_LOST = 14
    CARD_STOLEN = 15
    CARD_BLOCKED = 16
    CARD_SUSPENDED = 17
    CARD_INACTIVE = 18
    CARD_CLOSED = 19
    CARD_EXPIRED = 20
    EXPIRY_MISMATCH = 21
    PIN_TRIES_EXCEEDED = 22
    INCORRECT_PIN = 23
    CVV2_MISMATCH = 24
    TRANSACTION_NOT_PERMITTED = 25
    AMOUNT_LIMIT_EXCEEDED = 26
    COUNT_LIMIT_EXCEEDED = 27
    INSUFFICIENT_FUNDS = 28
    NO_BALANCE_IN_ASSET = 29
    TOKEN_NOT_ACTIVE = 30
    FX_RATE_UNAVAILABLE = 31
    INVALID_TRANSACTION = 32
    NO_RECORD = 33
    CLIENT_DECLINED = 40
    CLIENT_UNAVAILABLE = 41
    SYSTEM_ERROR = 50
    DUPLICATE_MISMATCH = 51


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a reason means on the wire."""

    reason: Reason
    response_code: str
    decision: Decision
    check: Check | None  # the core check that produces it, None when no check does


_D = Decision.DECLINED
_OUTCOMES: dict[Reason, Outcome] = {
    o.reason: o
    for o in (
        Outcome(Reason.APPROVED, "00", Decision.APPROVED, None),
        Outcome(Reason.PARTIALLY_APPROVED, "10", Decision.PARTIALLY_APPROVED, None),
        Outcome(Reason.FORMAT_ERROR, "30", _D, Check.FORMAT),
        Outcome(Reason.INVALID_AMOUNT, "13", _D, Check.FORMAT),
        Outcome(Reason.INVALID_PAN, "14", _D, Check.PAN),
        Outcome(Reason.UNKNOWN_CARD, "14", _D, Check.PAN),
        Outcome(Reason.CARD_LOST, "41", _D, Check.CARD_STATUS),
        Outcome(Reason.CARD_STOLEN, "43", _D, Check.CARD_STATUS),
        Outcome(Reason.CARD_BLOCKED, "62", _D, Check.CARD_STATUS),
        Outcome(Reason.CARD_SUSPENDED, "62", _D, Check.CARD_STATUS),
        Outcome(Reason.CARD_INACTIVE, "62", _D, Check.CARD_STATUS),
        Outcome(Reason.CARD_CLOSED, "62", _D, Check.CARD_STATUS),
        Outcome(Reason.CARD_EXPIRED, "54", _D, Check.EXPIRY),
        Outcome(Reason.EXPIRY_MISMATCH, "54", _D, Check.EXPIRY),
        Outcome(Reason.PIN_TRIES_EXCEEDED, "75", _D, Check.PIN_TRIES),
        Outcome(Reason.INCORRECT_PIN, "55", _D, Check.PIN),
        Outcome(Reason.CVV2_MISMATCH, "N7", _D, Check.CVV2),
        Outcome(Reason.TRANSACTION_NOT_PERMITTED, "57", _D, Check.PRODUCT),
        Outcome(Reason.AMOUNT_LIMIT_EXCEEDED, "61", _D, Check.LIMITS),
        Outcome(Reason.COUNT_LIMIT_EXCEEDED, "65", _D, Check.LIMITS),
        Outcome(Reason.INSUFFICIENT_FUNDS, "51", _D, Check.FUNDS),
        Outcome(Reason.NO_BALANCE_IN_ASSET, "51", _D, Check.FUNDS),
        # A network token's own status: applied right after the card's (check 3), numbered
        # after the checks' reasons because it came later (docs/tokens.md).
        Outcome(Reason.TOKEN_NOT_ACTIVE, "62", _D, None),
        # No usable rate to convert the billing asset (docs/fx.md): decided where the funds
        # check would have used the converted amount, so every earlier check comes first.
        Outcome(Reason.FX_RATE_UNAVAILABLE, "05", _D, Check.FUNDS),
        # A network step's own refusals (dispute steps), no core check's: the step is not
        # possible in its record's state, or its record is not found.
        Outcome(Reason.INVALID_TRANSACTION, "12", _D, None),
        Outcome(Reason.NO_RECORD, "25", _D, None),
        Outcome(Reason.CLIENT_DECLINED, "05", _D, None),
        Outcome(Reason.CLIENT_UNAVAILABLE, "91", _D, None),
        Outcome(Reason.SYSTEM_ERROR, "96", _D, None),
        Outcome(Reason.DUPLICATE_MISMATCH, "94", _D, None),
    )
}
assert set(_OUTCOMES) == set(Reason), "every reason needs an outcome"


def outcome(reason: Reason) -> Outcome:
    """The response code and decision of ``reason``."""
    return _OUTCOMES[reason]


class Code:
    """ISO 8583 field-39 codes by name, for the answers that are not an authorisation's
    :class:`Reason`: advices, reversals, clearings, refunds, dispute steps and a message
    refused at the edge. Where a name is also a reason's, the code is that reason's."""

    APPROVED = outcome(Reason.APPROVED).response_code  # 00
    PARTIALLY_APPROVED = outcome(Reason.PARTIALLY_APPROVED).response_code  # 10
    INVALID_TRANSACTION = outcome(Reason.INVALID_TRANSACTION).response_code  # 12
    INVALID_AMOUNT = outcome(Reason.INVALID_AMOUNT).response_code  # 13
    UNKNOWN_CARD = outcome(Reason.UNKNOWN_CARD).response_code  # 14
    NO_RECORD = outcome(Reason.NO_RECORD).response_code  # 25
    FORMAT_ERROR = outcome(Reason.FORMAT_ERROR).response_code  # 30
    NO_BALANCE_IN_ASSET = outcome(Reason.NO_BALANCE_IN_ASSET).response_code  # 51
    INSUFFICIENT_FUNDS = outcome(Reason.INSUFFICIENT_FUNDS).response_code  # 51
    CLIENT_DECLINED = outcome(Reason.CLIENT_DECLINED).response_code  # 05
    DUPLICATE_MISMATCH = outcome(Reason.DUPLICATE_MISMATCH).response_code  # 94
