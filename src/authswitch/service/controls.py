"""Spend controls in a decision (issue 18, item 1; rules in ``domain/controls.py``).

Only a card whose card or account has controls (``CardFacts.controlled``, a flag cached
with the card) comes here: a card without any costs one attribute check.

Where they are evaluated, so that no race lets two requests pass a control only one
should:

* the stateless controls (merchant, channel, presence, decline rules) depend only on the
  request and the version in force, and their decline (57) is handed to the atomic Redis
  step as the product check's outcome (``PreChecks.product_reason``): the step applies it in
  DESIGN.md's precedence, after card status, expiry, PIN and CVV2;
* the amount and count limits are counters of that same Redis step, beside the product's
  limits: read, checked and incremented in one Lua call, rebuilt from Postgres
  (``limit_usage``) after a cache loss, adjusted by reversals and clearings like any limit.

The decline's detail names the control. For a limit it is worked out after the decision
from the counters (the decision itself was atomic; under concurrent requests on the same
counter the detail may name a limit the next request filled).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime

from authswitch.adapters.postgres.cards import CardStore
from authswitch.adapters.postgres.controls import ControlStore
from authswitch.adapters.redis.cache import AuthorizeOutcome, LedgerCache
from authswitch.domain.authorization import (
    AuthorizationRequest,
    CardFacts,
    CardStatus,
    Charges,
    CounterCheck,
    PreChecks,
)
from authswitch.domain.catalog import ProgramRow
from authswitch.domain.codes import Reason
from authswitch.domain.controls import (
    ControlPeriod,
    ControlSubject,
    ControlVersion,
    SpendLimit,
    VelocityCheck,
    VelocityRule,
    Violation,
    check,
    in_force,
    limit_counter,
    velocity_check,
    velocity_usage,
)
from authswitch.domain.limits import Limit, Subject
from authswitch.domain.money import format_unsigned
from authswitch.domain.records import Notification, UsageChange
from authswitch.domain.writes.admin import card_status_changed
from authswitch.service.catalog import Catalog
from authswitch.service.charges import ChargeCalculator
from authswitch.service.ids import new_id

log = logging.getLogger(__name__)

__all__ = ["ControlPlan", "SpendControlService"]


@dataclass(frozen=True, slots=True)
class ControlPlan:
    """What a card's controls in force do to one request."""

    violation: Violation | None  # a stateless control declines it (57)
    applied: bool  # the violation is the request's product-check outcome (not the product's)
    limits: tuple[tuple[ControlSubject, SpendLimit, CounterCheck], ...]
    replaced: frozenset[Subject]  # the product limits of these subjects do not apply
    velocity: tuple[tuple[ControlSubject, VelocityRule, VelocityCheck], ...] = ()

    @property
    def velocity_checks(self) -> tuple[VelocityCheck, ...]:
        return tuple(check_ for _, _, check_ in self.velocity)


class SpendControlService:
    def __init__(
        self,
        catalog: Catalog,
        store: ControlStore,
        cards: CardStore,
        cache: LedgerCache,
        charges: ChargeCalculator,
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.cards = cards
        self.cache = cache
        self.calculator = charges

    async def versions(self, subject_id: str) -> list[ControlVersion]:
        """Every version of a card's or an account's controls (cached in process)."""
        cached = self.catalog.peek_controls(subject_id)
        if cached is None:
            cached = await self.store.versions(subject_id)
            self.catalog.keep_controls(subject_id, cached)
        return cached

    async def plan(
        self,
        card: CardFacts,
        program: ProgramRow,
        request: AuthorizationRequest,
        pre: PreChecks,
        at: datetime,
    ) -> ControlPlan | None:
        """The controls in force for ``request``; a stateless decline becomes the product
        check's outcome in ``pre`` (when the product itself permits the request)."""
        subjects = (
            (ControlSubject.CARD, card.card_id),
            (ControlSubject.ACCOUNT, card.account_id),
        )
        violation: Violation | None = None
        limits: list[tuple[ControlSubject, SpendLimit, CounterCheck]] = []
        replaced: set[Subject] = set()
        velocity: list[tuple[ControlSubject, VelocityRule, VelocityCheck]] = []
        found = False
        for subject, subject_id in subjects:
            version = in_force(await self.versions(subject_id), at)
            if version is None:
                continue
            found = True
            controls = version.controls
            if violation is None:
                violation = check(controls, subject, request)
            for limit in controls.limits:
                if not limit.applies(request.transaction_type, request.billing_asset):
                    continue
                counter = limit_counter(limit, subject_id, at, program.time_zone)
                checked = CounterCheck(
                    counter.key, counter.previous, counter.amount_max_minor, counter.count_max,
                    counter.expires_at,
                )  # fmt: skip
                limits.append((subject, limit, checked))
            if controls.replace_product_limits:
                replaced.add(Subject(subject.value))
            for rule in controls.velocity_rules:
                velocity.append(
                    (subject, rule, velocity_check(rule, subject_id, at, request.billing_asset))
                )
        if not found:
            return None
        applied = False
        if violation is not None and pre.product_reason is None:
            pre.product_reason = violation.reason
            applied = True
        return ControlPlan(violation, applied, tuple(limits), frozenset(replaced), tuple(velocity))

    async def charges(
        self,
        plan: ControlPlan,
        base: Charges,
        *,
        product_id: str,
        program: ProgramRow,
        request: AuthorizationRequest,
        card: CardFacts,
        at: datetime,
    ) -> Charges:
        """``base`` (the product's fees and limits) with the controls' limits first, and
        without the product limits the controls replace."""
        if plan.replaced:
            replaced = plan.replaced

            def keep(limit: Limit) -> bool:
                return limit.subject not in replaced

            base = await self.calculator.with_product_limits(
                product_id, program, request, card_id=card.card_id,
                account_id=card.account_id, at=at, keep=keep,
            )  # fmt: skip
        if not plan.limits:
            return base
        return replace(base, limits=tuple(c for _, _, c in plan.limits) + base.limits)

    async def detail(
        self,
        plan: ControlPlan,
        result: AuthorizeOutcome,
        charges: Charges,
        *,
        account_id: str,
        request: AuthorizationRequest,
    ) -> str:
        """The decline's detail when a control declined it, else empty."""
        reason = result.reason
        if result.velocity_rule:
            subject, rule, _ = plan.velocity[result.velocity_rule - 1]
            what = (
                f"{rule.amount_max_minor} {rule.asset} minor units"
                if reason is Reason.AMOUNT_LIMIT_EXCEEDED
                else f"{rule.approvals_max} approvals"
            )
            return (
                f"{subject.value.lower()} velocity rule {rule.name!r} "
                f"({what} in {rule.window_s} s) exceeded"
            )
        if reason is Reason.TRANSACTION_NOT_PERMITTED:
            return plan.violation.detail if plan.applied and plan.violation else ""
        if reason not in (Reason.AMOUNT_LIMIT_EXCEEDED, Reason.COUNT_LIMIT_EXCEEDED):
            return ""
        if not plan.limits:
            return ""
        keys = [c.key for _, _, c in plan.limits if c.key]
        used = await self.cache.usage(account_id, keys) if keys else {}
        amount = request.billing_amount_minor + charges.fixed_fee_minor
        for subject, limit, counter in plan.limits:
            spent, uses = used.get(counter.key, (0, 0)) if counter.key else (0, 0)
            if (
                reason is Reason.AMOUNT_LIMIT_EXCEEDED
                and counter.amount_max_minor >= 0
                and spent + amount > counter.amount_max_minor
            ):
                cap = format_unsigned(counter.amount_max_minor, self._exponent(limit.asset))
                return (
                    f"{subject.value.lower()} spend limit {limit.name!r} "
                    f"({_PERIOD_LABEL[limit.period]}, {cap} {limit.asset}) exceeded"
                )
            if (
                reason is Reason.COUNT_LIMIT_EXCEEDED
                and counter.key
                and counter.count_max >= 0
                and uses + 1 > counter.count_max
            ):
                return (
                    f"{subject.value.lower()} spend limit {limit.name!r} "
                    f"({_PERIOD_LABEL[limit.period]}, {counter.count_max} transactions) exceeded"
                )
        return ""

    def velocity_usage(
        self, plan: ControlPlan, result: AuthorizeOutcome, account_id: str
    ) -> tuple[UsageChange, ...]:
        """The durable counterpart of what the atomic step added to the velocity buckets."""
        return velocity_usage(
            plan.velocity_checks,
            account_id=account_id,
            approved=result.held_minor > 0,
            counted_decline=_counted_decline(result.reason),
            amount_minor=result.held_minor,
        )

    async def block(
        self, plan: ControlPlan, result: AuthorizeOutcome, card: CardFacts, program: ProgramRow,
        at: datetime,
    ) -> None:  # fmt: skip
        """Make a velocity block durable: the atomic step has blocked the card in the cache;
        this sets it BLOCKED in Postgres and notifies (CARD_STATUS_CHANGED), in one
        transaction. A failure is logged: the cache keeps the card blocked meanwhile."""
        subject, rule, _ = plan.velocity[result.velocity_blocked - 1]
        reason = (
            f"velocity: {subject.value.lower()} rule {rule.name!r}, more than "
            f"{rule.declines_max} declines in {rule.window_s} s"
        )

        def notify(program_id: str, account_id: str, previous: CardStatus) -> Notification:
            return card_status_changed(
                notification_id=new_id(), program_id=program_id, account_id=account_id,
                card_id=card.card_id, previous=previous, status=CardStatus.BLOCKED,
                reason=reason, at=at, sinks=program.sinks, details={"velocity_rule": rule.name},
            )  # fmt: skip

        try:
            await self.cards.change_card_status(
                card.card_id, CardStatus.BLOCKED, reason, "velocity", notify
            )
        except Exception as exc:
            log.error(
                "a velocity block was not made durable",
                extra={"error": type(exc).__name__, "card_id": card.card_id},
            )
        else:
            log.warning("card blocked by a velocity rule", extra={"card_id": card.card_id})

    def _exponent(self, asset: str) -> int:
        found = self.catalog.assets.get(asset)
        return found.exponent if found is not None else 0


def _counted_decline(reason: Reason) -> bool:
    """A decline a velocity rule counts: after the card's status was found good (checks 4
    to 10), as the atomic step counts them."""
    return Reason.CARD_EXPIRED <= reason <= Reason.NO_BALANCE_IN_ASSET


_PERIOD_LABEL = {
    ControlPeriod.TRANSACTION: "per transaction",
    ControlPeriod.DAY: "per day",
    ControlPeriod.MONTH: "per month",
    ControlPeriod.LIFETIME: "lifetime",
}
