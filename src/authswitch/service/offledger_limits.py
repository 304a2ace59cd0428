"""Fees, limits and counters of off-ledger programmes (seed 004: "for Off Ledger programmes,
fees are communicated to you via webhook" and "limits and counters are still incremented as
configured"; issue 17 items 1 and 2).

Every fee rule is computed for an off-ledger authorisation as for an on-ledger one (flat,
percentage, threshold, after free uses, decline fees, zero-value requests), and the
product's limits apply as on-ledger (check 9: 61 amount, 65 count), **before the client is
asked**: once the core checks pass, one atomic Redis step (``limits.lua``) prices the
free-use fees from their counters, checks the amount and its fee against every limit and,
when they fit, counts them at once, so that concurrent authorisations cannot together exceed
a limit while their clients decide. Then:

* the client (or the APPROVE stand-in) approves in full: the counts stand, made durable with
  the decision;
* it approves part: the amount counted comes down to what was approved (and its fee);
* it declines: what was counted is taken back, and a decline fee, if the product has one,
  counts itself and one use (as authorize.lua counts a posted decline fee); a DECLINE or
  APPROVE stand-in's 91 takes everything back (the issuer was unavailable: no decline fee);
* the SHADOW stand-in decides from the shadow ledger as an on-ledger programme would
  (``authorize.lua`` prices, checks and counts by itself): what was counted here is taken
  back first, so nothing is counted twice.

The approval remembers its limit counters (``client_calls.usage_keys``, and on a shadow
programme its hold's ``usage_keys``) so that a reversal gives the amount back (counts stay,
as on-ledger). A product with no limit and no free-use fee costs no Redis step here.
"""

from __future__ import annotations

from datetime import datetime

from authswitch.adapters.redis.cache import LedgerCache, Miss
from authswitch.domain.authorization import Charges, CounterCheck, FreeUseCheck
from authswitch.domain.catalog import ProgramRow
from authswitch.domain.codes import Reason
from authswitch.domain.fees import FeeContext, Stage
from authswitch.domain.limits import free_use_counter
from authswitch.domain.offledger import Assessed, Counted
from authswitch.errors import StoreUnavailable
from authswitch.service.charges import ChargeCalculator, is_international

__all__ = ["Assessed", "Counted", "OffLedgerCharges"]


class OffLedgerCharges:
    def __init__(self, *, cache: LedgerCache, charges: ChargeCalculator) -> None:
        self.cache = cache
        self.charges = charges

    async def assess(
        self,
        *,
        product_id: str,
        program: ProgramRow,
        card_id: str,
        account_id: str,
        transaction_type: int,
        channel: int,
        mcc: str,
        merchant_country: str,
        asset: str,
        amount_minor: int,
        at: datetime,
    ) -> Assessed:
        """Price the authorisation, check its limits and count it (inside the decision's
        in-flight mark)."""
        context = FeeContext(
            Stage.AUTHORIZATION, transaction_type, channel, mcc,
            is_international(program, merchant_country), asset, amount_minor,
        )  # fmt: skip
        quote = await self.charges.fee_quote(product_id, at, context)
        limits = await self.charges.limit_counters(
            product_id, program, card_id=card_id, account_id=account_id,
            transaction_type=transaction_type, asset=asset, at=at,
        )  # fmt: skip
        if not limits and not quote.after_free_uses:
            return Assessed(quote, quote.fixed_minor, frozenset(), None)
        frees: list[FreeUseCheck] = []
        for free in quote.after_free_uses:
            counter = free_use_counter(
                free.rule_id, free.free_period, card_id, at, program.time_zone
            )
            check = CounterCheck(counter.key, counter.previous, expires_at=counter.expires_at)
            frees.append(FreeUseCheck(check, free.free_uses, free.fee_minor))
        charges = Charges(quote.fixed_minor, quote.on_decline_minor, limits, tuple(frees))
        result = await self.cache.count_charges(account_id, charges, amount_minor, 1, check=True)
        if isinstance(result, Miss):
            # The state the core checks just ran on is gone (evicted, a new generation): the
            # decision is not made (96); its undo reloads the account.
            raise StoreUnavailable("the account's cached state went away during a decision")
        outcome, fee, charged = result
        free_charged = frozenset(quote.after_free_uses[i].rule_id for i in charged)
        if outcome == "OK":
            counted = Counted(account_id, charges, amount_minor + fee)
            return Assessed(quote, fee, free_charged, counted)
        # Over a limit: only a decline fee is counted (itself and one use).
        decline = quote.on_decline_minor
        counted = Counted(account_id, charges, decline, 1 if decline else 0, free_uses=0)
        reason = (
            Reason.AMOUNT_LIMIT_EXCEEDED if outcome == "AMOUNT" else Reason.COUNT_LIMIT_EXCEEDED
        )
        return Assessed(quote, fee, free_charged, counted, reason)

    async def assess_decline(
        self, *, product_id: str, program: ProgramRow, card_id: str, account_id: str,
        transaction_type: int, channel: int, mcc: str, merchant_country: str, asset: str,
        amount_minor: int, at: datetime,
    ) -> Assessed:  # fmt: skip
        """A request the product does not permit (57, before the client is asked): its
        decline fee, counted with one use on the limits as on-ledger."""
        context = FeeContext(
            Stage.AUTHORIZATION, transaction_type, channel, mcc,
            is_international(program, merchant_country), asset, amount_minor,
        )  # fmt: skip
        quote = await self.charges.fee_quote(product_id, at, context)
        decline = quote.on_decline_minor
        if not decline:
            return Assessed(quote, 0, frozenset(), None, Reason.TRANSACTION_NOT_PERMITTED)
        limits = await self.charges.limit_counters(
            product_id, program, card_id=card_id, account_id=account_id,
            transaction_type=transaction_type, asset=asset, at=at,
        )  # fmt: skip
        charges = Charges(0, decline, limits)
        counted = Counted(account_id, charges, decline, 1, free_uses=0)
        if limits:
            result = await self.cache.count_charges(
                account_id, charges, 0, 0, check=False, decline=True
            )
            if isinstance(result, Miss):
                raise StoreUnavailable("the account's cached state went away during a decision")
        return Assessed(quote, 0, frozenset(), counted, Reason.TRANSACTION_NOT_PERMITTED)

    async def approve(self, counted: Counted | None, approved_total_minor: int) -> None:
        """An approval of ``approved_total_minor`` (the approved amount and its fee)."""
        if counted is not None:
            await self._move(counted, approved_total_minor, 1, 1)

    async def decline(self, counted: Counted | None, decline_fee_minor: int) -> None:
        """A decline: only its decline fee stays counted (itself and one use), if any."""
        if counted is not None:
            uses = 1 if decline_fee_minor else 0
            await self._move(counted, decline_fee_minor, uses, 0)

    async def _move(self, counted: Counted, amount_minor: int, uses: int, free_uses: int) -> None:
        delta_amount = amount_minor - counted.amount_minor
        delta_uses = uses - counted.uses
        delta_free = free_uses - counted.free_uses
        if delta_amount or delta_uses or delta_free:
            result = await self.cache.count_charges(
                counted.account_id, counted.charges, delta_amount, delta_uses, check=False,
                free_delta=delta_free,
            )  # fmt: skip
            if isinstance(result, Miss):
                raise StoreUnavailable("the account's cached state went away during a decision")
        counted.amount_minor, counted.uses, counted.free_uses = amount_minor, uses, free_uses
