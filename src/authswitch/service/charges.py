"""Works out the fees and limits of a transaction from the catalogue (seed 004): which fee
schedule is in force, which rules and limits apply, and the counters they read and add to.
Pure rules live in domain.fees and domain.limits; this module only gathers their inputs."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from authswitch.domain.authorization import (
    NO_CHARGES,
    AuthorizationRequest,
    Charges,
    CounterCheck,
    FreeUseCheck,
)
from authswitch.domain.catalog import ProgramRow
from authswitch.domain.fees import (
    FeeContext,
    FeeQuote,
    FeeSchedule,
    Stage,
    quote,
    schedule_in_force,
)
from authswitch.domain.limits import Limit, counter_for_limit, free_use_counter
from authswitch.service.catalog import Catalog

__all__ = ["ChargeCalculator", "is_international"]


def is_international(program: ProgramRow, merchant_country: str) -> bool:
    """A merchant outside the program's country; unknown countries count as domestic."""
    return bool(program.country and merchant_country and merchant_country != program.country)


class ChargeCalculator:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    async def fee_quote(self, product_id: str, at: datetime, context: FeeContext) -> FeeQuote:
        schedule = schedule_in_force(await self.catalog.fee_schedules(product_id), at)
        return quote(schedule, context)

    async def limit_counters(
        self, product_id: str, program: ProgramRow, *, card_id: str, account_id: str,
        transaction_type: int, asset: str, at: datetime,
    ) -> tuple[CounterCheck, ...]:  # fmt: skip
        return _limit_counters(
            await self.catalog.limits(product_id), program, card_id=card_id,
            account_id=account_id, transaction_type=transaction_type, asset=asset, at=at,
        )  # fmt: skip

    def peek_for_authorization(
        self, product_id: str, program: ProgramRow, request: AuthorizationRequest, *,
        card_id: str, account_id: str, at: datetime,
    ) -> Charges | None:  # fmt: skip
        """The charges of an authorisation when the product's fees and limits are cached
        (no I/O), else None."""
        cached = self.catalog.peek_fees_and_limits(product_id)
        if cached is None:
            return None
        schedules, limits = cached
        if not schedules and not limits:
            return NO_CHARGES
        return _charges(schedules, limits, program, request, card_id, account_id, at)

    async def with_product_limits(
        self, product_id: str, program: ProgramRow, request: AuthorizationRequest, *,
        card_id: str, account_id: str, at: datetime, keep: Callable[[Limit], bool],
    ) -> Charges:  # fmt: skip
        """The charges of an authorisation counting only the product limits ``keep``
        accepts (spend controls that replace the product's limits)."""
        limits = [x for x in await self.catalog.limits(product_id) if keep(x)]
        schedules = await self.catalog.fee_schedules(product_id)
        return _charges(schedules, limits, program, request, card_id, account_id, at)

    async def for_authorization(
        self, product_id: str, program: ProgramRow, request: AuthorizationRequest, *,
        card_id: str, account_id: str, at: datetime,
    ) -> Charges:  # fmt: skip
        schedules = await self.catalog.fee_schedules(product_id)
        limits = await self.catalog.limits(product_id)
        return _charges(schedules, limits, program, request, card_id, account_id, at)


def _limit_counters(
    limits: list[Limit], program: ProgramRow, *, card_id: str, account_id: str,
    transaction_type: int, asset: str, at: datetime,
) -> tuple[CounterCheck, ...]:  # fmt: skip
    checks: list[CounterCheck] = []
    for limit in limits:
        if not limit.applies(transaction_type, asset):
            continue
        counter = counter_for_limit(limit, card_id, account_id, at, program.time_zone)
        checks.append(
            CounterCheck(
                counter.key, counter.previous, counter.amount_max_minor, counter.count_max,
                counter.expires_at,
            )
        )  # fmt: skip
    return tuple(checks)


def _charges(
    schedules: list[FeeSchedule], limits: list[Limit], program: ProgramRow,
    request: AuthorizationRequest, card_id: str, account_id: str, at: datetime,
) -> Charges:  # fmt: skip
    """The fees and limits of an authorisation, from its product's schedules and limits."""
    transaction_type, asset = request.transaction_type, request.billing_asset
    context = FeeContext(
        Stage.AUTHORIZATION, transaction_type, request.channel, request.mcc,
        is_international(program, request.merchant_country), asset,
        request.billing_amount_minor,
    )  # fmt: skip
    fees = quote(schedule_in_force(schedules, at), context)
    free_uses = []
    for fee in fees.after_free_uses:
        counter = free_use_counter(fee.rule_id, fee.free_period, card_id, at, program.time_zone)
        check = CounterCheck(counter.key, counter.previous, expires_at=counter.expires_at)
        free_uses.append(FreeUseCheck(check, fee.free_uses, fee.fee_minor))
    checks = _limit_counters(
        limits, program, card_id=card_id, account_id=account_id,
        transaction_type=transaction_type, asset=asset, at=at,
    )  # fmt: skip
    return Charges(fees.fixed_minor, fees.on_decline_minor, checks, tuple(free_uses))
