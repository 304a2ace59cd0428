"""Disputes of cleared transactions (pure): which steps a dispute may take, and what money
each step moves.

A cardholder disputes a cleared transaction; the issuer may credit the amount provisionally,
raises a chargeback through the network, and the acquirer may re-present. Three accounts
take part: the cardholder's, the program's clearing account (what is settled with the
network) and the program's disputes account (what the issuer has fronted or is owed while a
dispute runs). Every path leaves the disputes account where it started unless the issuer
absorbs the loss (a cardholder win without a successful chargeback).

    step            from                   to               provisional credit  none
    OPEN            -                      OPEN             cust +A, disp -A    -
    CHARGEBACK      OPEN                   CHARGEBACK_SENT  clr -A, disp +A     (same)
    REPRESENTMENT   CHARGEBACK_SENT        REPRESENTED      clr +A, disp -A     (same)
    CARDHOLDER_WON  OPEN, CHARGEBACK_SENT  CARDHOLDER_WON   -                   cust +A, disp -A
    CARDHOLDER_WON  REPRESENTED            CARDHOLDER_WON   clr -A, disp +A     cust +A, clr -A
    MERCHANT_WON    OPEN, REPRESENTED      MERCHANT_WON     cust -A, disp +A    -

(cust: the cardholder's account, clr: clearing, disp: disputes. A cardholder win after a
representment is a won pre-arbitration or arbitration: the network returns the amount again.)

The clearing a dispute disputes, a dispute and its steps, as they are kept, are plain values
here too (read by ``adapters/postgres/disputes.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum

__all__ = [
    "ClearingRow",
    "DisputeEventRow",
    "DisputeRow",
    "DisputeState",
    "DisputeStatus",
    "DisputeStep",
    "DisputedClearing",
    "ImpossibleStep",
    "StepPlan",
    "plan_open",
    "plan_step",
]


class DisputeStatus(Enum):
    OPEN = "OPEN"
    CHARGEBACK_SENT = "CHARGEBACK_SENT"
    REPRESENTED = "REPRESENTED"
    CARDHOLDER_WON = "CARDHOLDER_WON"
    MERCHANT_WON = "MERCHANT_WON"

    @property
    def final(self) -> bool:
        return self in (DisputeStatus.CARDHOLDER_WON, DisputeStatus.MERCHANT_WON)


class DisputeStep(Enum):
    OPEN = "OPEN"
    CHARGEBACK = "CHARGEBACK"
    REPRESENTMENT = "REPRESENTMENT"
    CARDHOLDER_WON = "CARDHOLDER_WON"
    MERCHANT_WON = "MERCHANT_WON"


_S = DisputeStatus
_TRANSITIONS: dict[tuple[DisputeStatus | None, DisputeStep], DisputeStatus] = {
    (None, DisputeStep.OPEN): _S.OPEN,
    (_S.OPEN, DisputeStep.CHARGEBACK): _S.CHARGEBACK_SENT,
    (_S.CHARGEBACK_SENT, DisputeStep.REPRESENTMENT): _S.REPRESENTED,
    (_S.OPEN, DisputeStep.CARDHOLDER_WON): _S.CARDHOLDER_WON,
    (_S.CHARGEBACK_SENT, DisputeStep.CARDHOLDER_WON): _S.CARDHOLDER_WON,
    (_S.REPRESENTED, DisputeStep.CARDHOLDER_WON): _S.CARDHOLDER_WON,
    (_S.OPEN, DisputeStep.MERCHANT_WON): _S.MERCHANT_WON,
    (_S.REPRESENTED, DisputeStep.MERCHANT_WON): _S.MERCHANT_WON,
}


class ImpossibleStep(ValueError):
    """The dispute's state does not allow the step."""

    def __init__(self, status: DisputeStatus | None, step: DisputeStep) -> None:
        allowed = sorted(s.value for (f, s) in _TRANSITIONS if f is status)
        where = status.value if status else "no dispute"
        super().__init__(
            f"a dispute in {where} cannot take the step {step.value}"
            + (f" (allowed: {', '.join(allowed)})" if allowed else " (it is closed)")
        )
        self.status = status
        self.step = step


@dataclass(frozen=True, slots=True)
class DisputeState:
    status: DisputeStatus
    amount_minor: int
    provisional_minor: int  # credited provisionally and not taken back


@dataclass(frozen=True, slots=True)
class StepPlan:
    """The outcome of a step: the new state, and the amounts to post to each account (each
    positive amount increases the account's balance; they sum to zero)."""

    status: DisputeStatus
    provisional_minor: int
    customer_minor: int = 0
    clearing_minor: int = 0
    disputes_minor: int = 0

    def __post_init__(self) -> None:
        assert self.customer_minor + self.clearing_minor + self.disputes_minor == 0

    @property
    def moves_money(self) -> bool:
        return bool(self.customer_minor or self.clearing_minor or self.disputes_minor)


def plan_open(amount_minor: int, *, provisional_credit: bool) -> StepPlan:
    assert amount_minor > 0
    if provisional_credit:
        return StepPlan(_S.OPEN, amount_minor, customer_minor=amount_minor,
                        disputes_minor=-amount_minor)  # fmt: skip
    return StepPlan(_S.OPEN, 0)


def plan_step(state: DisputeState, step: DisputeStep) -> StepPlan:
    """The next state of a dispute and the money a step moves; raises ImpossibleStep."""
    target = _TRANSITIONS.get((state.status, step))
    if target is None or step is DisputeStep.OPEN:
        raise ImpossibleStep(state.status, step)
    amount, provisional = state.amount_minor, state.provisional_minor
    if step is DisputeStep.CHARGEBACK:
        return StepPlan(target, provisional, clearing_minor=-amount, disputes_minor=amount)
    if step is DisputeStep.REPRESENTMENT:
        return StepPlan(target, provisional, clearing_minor=amount, disputes_minor=-amount)
    if step is DisputeStep.CARDHOLDER_WON:
        # The cardholder is owed the whole amount: what is not yet credited is credited now.
        owed = amount - provisional
        if state.status is _S.REPRESENTED:
            # The network returns the amount again (pre-arbitration or arbitration won).
            return StepPlan(target, provisional, customer_minor=owed, clearing_minor=-amount,
                            disputes_minor=amount - owed)  # fmt: skip
        return StepPlan(target, provisional, customer_minor=owed, disputes_minor=-owed)
    # MERCHANT_WON: a provisional credit is taken back.
    return StepPlan(target, 0, customer_minor=-provisional, disputes_minor=provisional)


@dataclass(frozen=True, slots=True)
class ClearingRow:
    """A posted clearing, as a dispute sees it."""

    source: str
    message_id: str
    account_id: str
    card_id: str | None
    program_id: str
    asset: str
    amount_minor: int
    network_reference: str


@dataclass(frozen=True, slots=True)
class DisputedClearing:
    """The clearing a dispute is about: whose it is, its message key, its network reference
    and asset. A dispute as kept (:class:`DisputeRow`) and a dispute being opened
    (``records.DisputeOpening``) both begin with these fields."""

    program_id: str
    account_id: str
    card_id: str | None
    clearing_source: str
    clearing_message_id: str
    network_reference: str
    asset: str


@dataclass(frozen=True, slots=True)
class DisputeRow(DisputedClearing):
    """A dispute as it is kept: its clearing's fields (:class:`DisputedClearing`, first in
    the constructor's order), then its own."""

    id: str
    amount_minor: int
    reason_code: str
    status: str
    provisional_minor: int
    on_ledger: bool
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class DisputeEventRow:
    """One step a dispute took, as it is kept."""

    step: str
    from_status: str
    to_status: str
    amount_minor: int
    entry_id: str | None
    source: str
    message_id: str
    created_at: datetime
