"""Rules of the transaction lifecycle after an authorisation (pure): how long a hold lives,
what a reversal releases, and how a clearing is matched to holds (seed 001, DESIGN.md §3);
and a hold as it is kept (:class:`HoldRow`, read by ``adapters/postgres/holds.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

__all__ = [
    "ClearingPlan",
    "HoldEnd",
    "HoldRow",
    "OpenHold",
    "ReleasePlan",
    "hold_validity_days",
    "plan_clearing",
    "plan_reduction",
    "plan_reversal",
]

# Merchant categories whose authorisations are estimates settled much later: lodging, car
# rental, cruise lines. Their holds live for this many days unless the product says
# otherwise. (3351-3441 are car rental chains, 3501-3999 hotel chains.)
EXTENDED_VALIDITY_DAYS = 31
_EXTENDED_MCCS = frozenset({"7011", "7512", "7513", "7519", "4411"})


def _extended(mcc: str) -> bool:
    if mcc in _EXTENDED_MCCS:
        return True
    return mcc.isdigit() and (3351 <= int(mcc) <= 3441 or 3501 <= int(mcc) <= 3999)


def hold_validity_days(default_days: int, by_mcc: Mapping[str, int], mcc: str) -> int:
    """Days an authorisation hold lives before it ages off: the product's per-MCC setting,
    else the extended validity of lodging and rental categories, else the product default."""
    if mcc in by_mcc:
        return by_mcc[mcc]
    if _extended(mcc):
        return max(default_days, EXTENDED_VALIDITY_DAYS)
    return default_days


class HoldEnd(Enum):
    """How a hold ends; each hold ends exactly once."""

    CLEARED = "CLEARED"
    REVERSED = "REVERSED"
    EXPIRED = "EXPIRED"
    RELEASED = "RELEASED"  # removed by an operator


@dataclass(frozen=True, slots=True)
class OpenHold:
    id: str
    amount_minor: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class HoldRow:
    """A hold as it is kept, or the tombstone of a reversal that came before its hold."""

    id: str
    account_id: str | None
    asset: str | None
    card_id: str | None
    source: str
    message_id: str
    network_reference: str
    amount_minor: int
    original_minor: int
    status: str
    tombstone: bool
    created_at: datetime
    expires_at: datetime
    ended_at: datetime | None
    usage_keys: tuple[str, ...] = ()

    def open_hold(self) -> OpenHold:
        return OpenHold(self.id, self.amount_minor, self.created_at)


@dataclass(frozen=True, slots=True)
class ReleasePlan:
    """Release ``release_minor`` of a hold currently at ``expected_minor``; the hold ends
    (as ``end``) when nothing remains."""

    hold_id: str
    expected_minor: int
    release_minor: int
    end: HoldEnd

    def __post_init__(self) -> None:
        assert 0 <= self.release_minor <= self.expected_minor

    @property
    def ends(self) -> bool:
        return self.release_minor == self.expected_minor


def plan_reversal(hold: OpenHold, requested_minor: int) -> ReleasePlan:
    """A reversal releases what it asks for, at most what is held; zero asks for all."""
    assert requested_minor >= 0
    release = hold.amount_minor if requested_minor == 0 else min(requested_minor, hold.amount_minor)
    return ReleasePlan(hold.id, hold.amount_minor, release, HoldEnd.REVERSED)


@dataclass(frozen=True, slots=True)
class ClearingPlan:
    releases: tuple[ReleasePlan, ...]
    posted_minor: int

    @property
    def released_minor(self) -> int:
        return sum(r.release_minor for r in self.releases)

    @property
    def matched(self) -> bool:
        return bool(self.releases)


def plan_clearing(holds: Sequence[OpenHold], clearing_minor: int, *, final: bool) -> ClearingPlan:
    """Match a clearing to the open holds of its transaction.

    The clearing amount is always posted. A final clearing releases every hold of the
    transaction, whatever was cleared (the difference returns to the available balance); a
    partial clearing releases holds oldest first up to its own amount, so that later
    clearings of the same authorisation find the rest still held. With no hold, nothing is
    released: the unmatched clearing of seed 001, debited while any stale hold remains.
    """
    assert clearing_minor >= 0
    ordered = sorted(holds, key=lambda h: (h.created_at, h.id))
    releases: list[ReleasePlan] = []
    if final:
        releases = [
            ReleasePlan(h.id, h.amount_minor, h.amount_minor, HoldEnd.CLEARED) for h in ordered
        ]
    else:
        remaining = clearing_minor
        for hold in ordered:
            if remaining <= 0:
                break
            release = min(remaining, hold.amount_minor)
            releases.append(ReleasePlan(hold.id, hold.amount_minor, release, HoldEnd.CLEARED))
            remaining -= release
    return ClearingPlan(tuple(releases), clearing_minor)


def plan_reduction(holds: Sequence[OpenHold], reduce_minor: int) -> list[ReleasePlan]:
    """Lower a transaction's holds by ``reduce_minor``, newest first (an advice for less
    than was authorised). Holds that reach zero end as reversed."""
    assert 0 <= reduce_minor <= sum(h.amount_minor for h in holds)
    plans: list[ReleasePlan] = []
    remaining = reduce_minor
    for hold in sorted(holds, key=lambda h: (h.created_at, h.id), reverse=True):
        if remaining <= 0:
            break
        release = min(remaining, hold.amount_minor)
        plans.append(ReleasePlan(hold.id, hold.amount_minor, release, HoldEnd.REVERSED))
        remaining -= release
    return plans
