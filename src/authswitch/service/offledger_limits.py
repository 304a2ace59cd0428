"""Limits and counters of off-ledger programmes (seed 004: "limits and counters are still
incremented as configured"; issue 17 item 2).

An off-ledger product's limits apply as an on-ledger product's do (check 9: 61 amount,
65 count), **before the client is asked**: once the core checks pass, the authorisation's
amount and its authorisation fee are checked against every limit of the product and, when
they fit, counted at once (one atomic Redis step, ``limits.lua``), so that concurrent
authorisations cannot together exceed a limit while their clients decide. Then:

* the client (or the APPROVE stand-in) approves in full: the count stands, and is made
  durable with the decision;
* it approves part: the amount counted comes down to what was approved (and its fee);
* it declines, or the DECLINE stand-in answers 91: what was counted is taken back;
* the SHADOW stand-in decides from the shadow ledger as an on-ledger programme would
  (``authorize.lua`` checks and counts the limits itself): what was counted here is taken
  back first, so nothing is counted twice.

The approval remembers its counters (``client_calls.usage_keys``, and on a shadow programme
its hold's ``usage_keys``), so that a reversal gives the amount back (counts stay, as
on-ledger). A product without limits costs nothing here: no Redis step, no statement.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from authswitch.adapters.postgres.store import ProgramRow
from authswitch.adapters.redis.cache import LedgerCache, Miss
from authswitch.domain.authorization import CounterCheck
from authswitch.domain.codes import Reason
from authswitch.domain.records import UsageChange
from authswitch.errors import StoreUnavailable
from authswitch.service.cache_sync import CacheSync
from authswitch.service.charges import ChargeCalculator

__all__ = ["Counted", "OffLedgerLimits"]


@dataclass(slots=True)
class Counted:
    """What an off-ledger authorisation counted before its client was asked."""

    account_id: str
    limits: tuple[CounterCheck, ...]
    amount_minor: int  # the requested amount and its authorisation fee
    uses: int = 1

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(c.key for c in self.limits if c.key)

    def usage(self, amount_minor: int) -> tuple[UsageChange, ...]:
        """The durable counter changes of an approval counting ``amount_minor``."""
        return tuple(
            UsageChange(self.account_id, c.key, amount_minor, self.uses, c.expires_at)
            for c in self.limits
            if c.key and c.expires_at is not None
        )


class OffLedgerLimits:
    def __init__(self, *, cache: LedgerCache, sync: CacheSync, charges: ChargeCalculator) -> None:
        self.cache = cache
        self.sync = sync
        self.charges = charges

    async def count(
        self,
        *,
        product_id: str,
        program: ProgramRow,
        card_id: str,
        account_id: str,
        transaction_type: int,
        asset: str,
        amount_minor: int,
        at: datetime,
    ) -> Counted | Reason | None:
        """Check the limits and count ``amount_minor`` (the request and its fee): the
        counts made, the decline (61 or 65) when a limit would be exceeded, or None when no
        limit applies. Runs inside the decision's in-flight mark."""
        limits = await self.charges.limit_counters(
            product_id, program, card_id=card_id, account_id=account_id,
            transaction_type=transaction_type, asset=asset, at=at,
        )  # fmt: skip
        if not limits:
            return None
        result = await self.cache.count_limits(account_id, limits, amount_minor, 1, check=True)
        if isinstance(result, Miss):
            # The state the core checks just ran on is gone (evicted, a new generation): the
            # decision is not made (96); its undo reloads the account.
            raise StoreUnavailable("the account's cached state went away during a decision")
        if result == "AMOUNT":
            return Reason.AMOUNT_LIMIT_EXCEEDED
        if result == "COUNT":
            return Reason.COUNT_LIMIT_EXCEEDED
        return Counted(account_id, limits, amount_minor)

    async def adjust(self, counted: Counted, amount_minor: int, uses: int) -> None:
        """Add ``amount_minor`` and ``uses`` (negative: take back) to what was counted."""
        if not (amount_minor or uses):
            return
        result = await self.cache.count_limits(
            counted.account_id, counted.limits, amount_minor, uses, check=False
        )
        if isinstance(result, Miss):
            raise StoreUnavailable("the account's cached state went away during a decision")
        counted.amount_minor += amount_minor
        counted.uses += uses

    async def take_back(self, counted: Counted | None) -> None:
        """Nothing stays counted (a decline, or a stand-in that counts by itself)."""
        if counted is not None:
            await self.adjust(counted, -counted.amount_minor, -counted.uses)
