"""Works out the fees and limits of a transaction from the catalogue (seed 004): which fee
schedule is in force, which rules and limits apply, and the counters they read and add to.
Pure rules live in domain.fees and domain.limits; this module only gathers their inputs."""

from __future__ import annotations

from datetime import datetime

from authswitch.adapters.postgres.store import ProgramRow
from authswitch.domain.authorization import Charges, CounterCheck, FreeUseCheck
from authswitch.domain.fees import FeeContext, FeeQuote, Stage, quote, schedule_in_force
from authswitch.domain.limits import counter_for_limit, free_use_counter
from authswitch.domain.records import UsageChange
from authswitch.service.catalog import Catalog

__all__ = ["ChargeCalculator", "is_international", "usage_changes"]


def is_international(program: ProgramRow, merchant_country: str) -> bool:
    """A merchant outside the program's country; unknown countries count as domestic."""
    return bool(program.country and merchant_country and merchant_country != program.country)


def usage_changes(
    account_id: str, deltas: dict[str, tuple[int, int]], expiries: dict[str, datetime]
) -> tuple[UsageChange, ...]:
    return tuple(
        UsageChange(account_id, key, amount, count, expiries[key])
        for key, (amount, count) in deltas.items()
        if amount or count
    )


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
        checks: list[CounterCheck] = []
        for limit in await self.catalog.limits(product_id):
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

    async def for_authorization(
        self, product_id: str, program: ProgramRow, *, card_id: str, account_id: str,
        transaction_type: int, channel: int, mcc: str, merchant_country: str, asset: str,
        amount_minor: int, at: datetime,
    ) -> Charges:  # fmt: skip
        context = FeeContext(
            Stage.AUTHORIZATION, transaction_type, channel, mcc,
            is_international(program, merchant_country), asset, amount_minor,
        )  # fmt: skip
        fees = await self.fee_quote(product_id, at, context)
        free_uses = []
        for fee in fees.after_free_uses:
            counter = free_use_counter(fee.rule_id, fee.free_period, card_id, at, program.time_zone)
            check = CounterCheck(counter.key, counter.previous, expires_at=counter.expires_at)
            free_uses.append(FreeUseCheck(check, fee.free_uses, fee.fee_minor))
        limits = await self.limit_counters(
            product_id, program, card_id=card_id, account_id=account_id,
            transaction_type=transaction_type, asset=asset, at=at,
        )  # fmt: skip
        return Charges(fees.fixed_minor, fees.on_decline_minor, limits, tuple(free_uses))


def expiries_of(charges: Charges) -> dict[str, datetime]:
    """When each counter of ``charges`` runs out (for the durable usage rows)."""
    found: dict[str, datetime] = {}
    for check in (*charges.limits, *(f.counter for f in charges.free_uses)):
        if check.key and check.expires_at is not None:
            found[check.key] = check.expires_at
    return found
