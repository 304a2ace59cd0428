"""Balance arithmetic (DESIGN.md §3) and the admission rule for batches of balance changes.

Three figures per balance, with the invariant ``available = actual - authorized``
(``authorized`` is the sum of open holds). Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

__all__ = [
    "Balance",
    "BalanceChange",
    "admit_in_order",
]

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Balance:
    """One asset's balance of one account, in minor units."""

    actual_minor: int = 0
    authorized_minor: int = 0

    @property
    def available_minor(self) -> int:
        return self.actual_minor - self.authorized_minor

    # Each method is one row of the table in DESIGN.md §3.

    def credit(self, amount_minor: int) -> Balance:
        """Load, credit adjustment, debit reversal, write-off, network refund."""
        assert amount_minor >= 0
        return Balance(self.actual_minor + amount_minor, self.authorized_minor)

    def debit(self, amount_minor: int) -> Balance:
        """Fee, debit adjustment, credit reversal, write-on."""
        assert amount_minor >= 0
        return Balance(self.actual_minor - amount_minor, self.authorized_minor)

    def hold(self, amount_minor: int) -> Balance:
        """Approved authorisation (amount plus auth fee), incremental authorisation."""
        assert amount_minor >= 0
        return Balance(self.actual_minor, self.authorized_minor + amount_minor)

    def release(self, amount_minor: int) -> Balance:
        """Reversal (full or partial) or age-off of a hold."""
        assert 0 <= amount_minor <= self.authorized_minor
        return Balance(self.actual_minor, self.authorized_minor - amount_minor)

    def clear_matched(self, hold_minor: int, clearing_minor: int, fee_minor: int = 0) -> Balance:
        """Clearing matched to a hold: the hold goes, the clearing (and its fee) is posted."""
        return self.release(hold_minor).debit(clearing_minor + fee_minor)

    def clear_unmatched(self, clearing_minor: int, fee_minor: int = 0) -> Balance:
        """Clearing with no hold to match: posted directly (seed 001's double debit)."""
        return self.debit(clearing_minor + fee_minor)

    def apply(self, change: BalanceChange) -> Balance:
        return Balance(
            self.actual_minor + change.actual_delta_minor,
            self.authorized_minor + change.authorized_delta_minor,
        )


@dataclass(slots=True)
class BalanceChange:
    """A change to one balance. ``requires_funds`` marks changes that must not take the
    available balance below zero (approvals, ordinary debits); advices and clearings, which
    the network has already approved, do not."""

    account_id: str
    asset: str
    actual_delta_minor: int = 0
    authorized_delta_minor: int = 0
    requires_funds: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.account_id, self.asset)

    @property
    def available_delta_minor(self) -> int:
        return self.actual_delta_minor - self.authorized_delta_minor


def admit_in_order(
    balances: Mapping[tuple[str, str], Balance],
    writes: Iterable[tuple[K, Sequence[BalanceChange]]],
) -> tuple[set[K], dict[tuple[str, str], Balance]]:
    """Replay ``writes`` (each a group of changes, all or none) in order from ``balances``,
    and refuse each write with a change that requires funds and would take its available
    balance below zero (or further below it).

    Returns the ids of the refused writes and the balances after the admitted ones. This is
    Postgres's last word on a batch: the Redis reservation already made the same decision,
    so a refusal only happens when the cache was stale.
    """
    after = dict(balances)
    refused: set[K] = set()
    for ident, changes in writes:
        trial: dict[tuple[str, str], Balance] = {}
        for change in changes:
            current = trial.get(change.key) or after.get(change.key, Balance())
            proposed = current.apply(change)
            if (
                change.requires_funds
                and change.available_delta_minor < 0
                and proposed.available_minor < 0
            ):
                refused.add(ident)
                break
            trial[change.key] = proposed
        else:
            after.update(trial)
    return refused, after
