"""The lifecycle's messages after an authorisation, as plain values: the network's advice,
reversal, clearing, refund and original credit, and their answers; the answer to an
operator's hold release.

A request carries the fields the lifecycle reads, its billing amount as ``amount_minor``
and ``asset`` (an absent amount: 0 and ""; ``None`` where its presence matters). The PAN
is never shown by ``repr``.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field
from enum import IntEnum, unique

from authswitch.domain.codes import Reason
from authswitch.domain.fx import Conversion
from authswitch.domain.ledger import Balance

__all__ = [
    "Advice",
    "AdviceAnswer",
    "AdviceResult",
    "BilledMessage",
    "Clearing",
    "ClearingAnswer",
    "CreditAnswer",
    "HoldReleaseAnswer",
    "LifecycleAnswer",
    "OriginalCredit",
    "Refund",
    "RefundAnswer",
    "Reversal",
    "ReversalAnswer",
    "ReversalResult",
]


@unique
class AdviceResult(IntEnum):
    """Numbered as ``authswitch.v1.AdviceResult``; a unit test keeps the two in step."""

    UNSPECIFIED = 0
    HOLD_POSTED = 1
    HOLD_UPDATED = 2
    RECORDED_UNKNOWN_CARD = 3
    RECORDED_NO_BALANCE = 4


@unique
class ReversalResult(IntEnum):
    """Numbered as ``authswitch.v1.ReversalResult``; a unit test keeps the two in step."""

    UNSPECIFIED = 0
    RELEASED = 1
    ORIGINAL_NOT_FOUND = 2
    NOTHING_HELD = 3
    HOLD_ALREADY_ENDED = 4


# -- requests ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BilledMessage:
    """What the network's advice, refund and original credit begin with: their message key,
    the card's number and the billing amount (always sent)."""

    source: str
    message_id: str
    pan: str = field(repr=False)
    amount_minor: int
    asset: str


@dataclass(frozen=True, slots=True)
class Advice(BilledMessage):
    """The network's AdviseRequest: a transaction it approved (in stand-in, or after an
    authorisation that timed out)."""

    network_reference: str = ""
    original_message_id: str = ""
    authorization_code: str = ""
    mcc: str = ""


@dataclass(frozen=True, slots=True)
class Reversal:
    """The network's ReverseRequest. ``amount_minor`` None: no amount was sent (the whole
    remaining hold is released, as with zero)."""

    source: str
    message_id: str
    original_message_id: str
    amount_minor: int | None
    asset: str
    network_reference: str = ""
    pan: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class Clearing:
    """The network's ClearRequest. ``amount_minor`` None: no billing amount was sent."""

    source: str
    message_id: str
    pan: str = field(repr=False)
    amount_minor: int | None
    asset: str
    network_reference: str = ""
    final: bool = False
    transaction_type: int = 0
    channel: int = 0
    mcc: str = ""
    merchant_country: str = ""
    merchant_name: str = ""


@dataclass(frozen=True, slots=True)
class Refund(BilledMessage):
    """The network's RefundRequest."""

    network_reference: str = ""
    merchant_name: str = ""


@dataclass(frozen=True, slots=True)
class OriginalCredit(BilledMessage):
    """The network's CreditRequest, an original credit. ``credit_type`` as numbered on the
    wire (``authswitch.domain.credits.CreditType``), checked by the service."""

    credit_type: int
    network_reference: str = ""
    sender_name: str = ""
    originator_name: str = ""


# -- answers ----------------------------------------------------------------------------------
# An amount of an answer is None when the answer shows none (nothing was held, released or
# posted); ``balance`` is the account's balance in ``asset`` after the message, when shown.


@dataclass(frozen=True, slots=True)
class LifecycleAnswer:
    """What every answer to the network's lifecycle messages says: its response code and
    decision, and the balance after it in ``asset`` (keywords only: each answer's own
    fields come after ``decision_id`` in its constructor)."""

    response_code: str
    decision_id: str = ""
    _: KW_ONLY
    asset: str = ""
    balance: Balance | None = None


@dataclass(frozen=True, slots=True)
class AdviceAnswer(LifecycleAnswer):
    result: AdviceResult = AdviceResult.UNSPECIFIED
    held_minor: int | None = None
    fx: Conversion | None = None


@dataclass(frozen=True, slots=True)
class ReversalAnswer(LifecycleAnswer):
    result: ReversalResult = ReversalResult.UNSPECIFIED
    released_minor: int | None = None
    fx: Conversion | None = None


@dataclass(frozen=True, slots=True)
class ClearingAnswer(LifecycleAnswer):
    matched: bool = False
    released_minor: int | None = None
    posted_minor: int | None = None
    fee_minor: int | None = None
    entry_id: str = ""
    fx: Conversion | None = None


@dataclass(frozen=True, slots=True)
class RefundAnswer(LifecycleAnswer):
    credited_minor: int | None = None
    entry_id: str = ""
    fx: Conversion | None = None


@dataclass(frozen=True, slots=True)
class CreditAnswer(LifecycleAnswer):
    """``reason`` None: none shown (a message recorded without a decision of its own)."""

    reason: Reason | None = None
    credited_minor: int | None = None
    entry_id: str = ""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class HoldReleaseAnswer:
    """An operator's or the age-off's release of a hold: what it released, in ``asset``."""

    released_minor: int
    asset: str
    balance: Balance
