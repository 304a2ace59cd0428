"""Who owns an account, and how much of it (pure): joint holders' shares (seed 000) and the
split of a balance between them for the pooled FBO balance file (seed 002).

A joint account's holders own equal shares unless shares are set: the FDIC deems
co-owners' interests equal unless the deposit account records say otherwise
(12 CFR 330.9(b)), and pass-through insurance is computed from what the balance file says
each beneficial owner holds. Shares are basis points of the account, all set or none.

A balance is split in whole minor units by the largest-remainder method, so the parts always
add up to the balance (the file reconciles to the FBO total to the minor unit): each holder
gets the floor of their exact share, and the units left over go one each to the holders
with the largest remainders, ties to the lowest customer id.

An account's holder as it is kept is :class:`Holder` (``adapters/postgres/ownership.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "HOLDERS_MAX",
    "SHARES_TOTAL_BPS",
    "Holder",
    "ShareError",
    "split_by_shares",
    "valid_shares",
]

SHARES_TOTAL_BPS = 10_000
HOLDERS_MAX = 20  # joint holders of one account, at most


class ShareError(ValueError):
    """Shares that do not describe the account's holders."""


@dataclass(frozen=True, slots=True)
class Holder:
    """A holder of an account: a customer, and their share (when shares are set)."""

    customer_id: str
    share_bps: int | None  # None: equal shares


def valid_shares(holders: Sequence[str], shares_bps: Mapping[str, int]) -> dict[str, int] | None:
    """The shares to store for ``holders``: None (equal) when ``shares_bps`` is empty, else
    exactly one share per holder, each 1..10,000 basis points, summing to 10,000."""
    if not shares_bps:
        return None
    missing = sorted(set(holders) - set(shares_bps))
    strangers = sorted(set(shares_bps) - set(holders))
    if missing or strangers:
        raise ShareError(
            "shares must name every holder and no one else"
            + (f"; missing {', '.join(missing)}" if missing else "")
            + (f"; not holders: {', '.join(strangers)}" if strangers else "")
        )
    if any(not 1 <= share <= SHARES_TOTAL_BPS for share in shares_bps.values()):
        raise ShareError("each share is 1 to 10000 basis points")
    total = sum(shares_bps.values())
    if total != SHARES_TOTAL_BPS:
        raise ShareError(f"shares sum to {total} basis points, not {SHARES_TOTAL_BPS}")
    return dict(shares_bps)


def split_by_shares(amount_minor: int, weights: Sequence[tuple[str, int]]) -> dict[str, int]:
    """Split ``amount_minor`` (which may be negative: a debit balance) between owners in
    proportion to their positive ``weights``; the parts sum to ``amount_minor``."""
    assert weights, "an amount is split between at least one owner"
    assert all(weight > 0 for _, weight in weights)
    total = sum(weight for _, weight in weights)
    parts: dict[str, int] = {}
    remainders: list[tuple[int, str]] = []
    for owner, weight in weights:
        base, remainder = divmod(amount_minor * weight, total)  # floor, remainder in [0, total)
        parts[owner] = parts.get(owner, 0) + base
        remainders.append((remainder, owner))
    left = amount_minor - sum(parts.values())
    assert 0 <= left < len(weights)
    for _, owner in sorted(remainders, key=lambda r: (-r[0], r[1]))[:left]:
        parts[owner] += 1
    assert sum(parts.values()) == amount_minor
    return parts
