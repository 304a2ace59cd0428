"""Account-funding credits (issue 18, item 6), pure: the network's original credit
transactions (OCT: push to card, payouts, transfers) and the checks that decide them.

A credit is decided, unlike a refund: in DESIGN.md's precedence, the card's status
(41/43/62), the product (57: a product whose allowed transaction types leave out
``ORIGINAL_CREDIT``, or an account without a balance in the credit's asset), and the
product's credit limits (61/65: limits naming ``ORIGINAL_CREDIT``; no other limit caps a
credit, and those limits cap nothing else). Expiry, PIN and CVV2 are not part of an OCT.
An approved credit adds to actual and available at once, as one balanced journal entry
(customer account +amount, programme clearing account -amount).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum, unique

from authswitch.domain.authorization import CounterCheck
from authswitch.domain.codes import Reason
from authswitch.domain.limits import Limit

__all__ = ["ORIGINAL_CREDIT", "CreditType", "credit_decision", "credit_limits"]

# authswitch.v1.TransactionType.TRANSACTION_TYPE_ORIGINAL_CREDIT: not an authorisation type.
ORIGINAL_CREDIT = 9


@unique
class CreditType(IntEnum):
    """Numbered as ``authswitch.v1.CreditType``."""

    UNSPECIFIED = 0
    PERSON_TO_PERSON = 1
    ACCOUNT_TO_ACCOUNT = 2
    DISBURSEMENT = 3
    GAMBLING_PAYOUT = 4
    TOP_UP = 5


def credit_limits(limits: Sequence[Limit], asset: str) -> list[Limit]:
    """The product limits that cap a credit in ``asset``: those naming ORIGINAL_CREDIT."""
    return [x for x in limits if ORIGINAL_CREDIT in x.transaction_types and x.asset == asset]


@dataclass(frozen=True, slots=True)
class CreditDecision:
    reason: Reason
    usage: dict[str, tuple[int, int]]  # counters after the credit (changed ones)


def credit_decision(
    status_reason: Reason | None,
    product_reason: Reason | None,
    has_balance: bool,
    amount_minor: int,
    limits: Sequence[CounterCheck],
    usage: Mapping[str, tuple[int, int]],
) -> CreditDecision:
    """The rule ``credit.lua`` applies atomically (its reference)."""
    reason = status_reason or product_reason
    if reason is None and not has_balance:
        reason = Reason.TRANSACTION_NOT_PERMITTED
    if reason is None:
        for limit in limits:
            spent = usage.get(limit.key, (0, 0))[0] if limit.key else 0
            if limit.amount_max_minor >= 0 and spent + amount_minor > limit.amount_max_minor:
                reason = Reason.AMOUNT_LIMIT_EXCEEDED
                break
    if reason is None:
        for limit in limits:
            uses = usage.get(limit.key, (0, 0))[1]
            if limit.key and limit.count_max >= 0 and uses + 1 > limit.count_max:
                reason = Reason.COUNT_LIMIT_EXCEEDED
                break
    if reason is not None:
        return CreditDecision(reason, {})
    after = {
        limit.key: (usage.get(limit.key, (0, 0))[0] + amount_minor,
                    usage.get(limit.key, (0, 0))[1] + 1)
        for limit in limits if limit.key
    }  # fmt: skip
    return CreditDecision(Reason.APPROVED, after)
