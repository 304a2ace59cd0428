"""The authorisation decision path (DESIGN.md §2 and §5).

    validate → find the card → stateless checks → one Redis step (stateful checks, funds,
    reservation, idempotency marker) → group commit → answer

The answer goes back only once the decision is durable in Postgres. When the Redis step or
the commit fails, the reservation is undone by reloading the account from Postgres (the
truth) and the answer is 96. A retransmission (same source and message id) gets the stored
response byte for byte; a different payload under the same id gets 94.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from authswitch import metrics
from authswitch.adapters.postgres.cards import CardStore
from authswitch.adapters.postgres.committer import GroupCommitter
from authswitch.adapters.postgres.controls import ControlStore
from authswitch.adapters.postgres.holds import HoldStore
from authswitch.adapters.redis.cache import AuthorizeOutcome, Duplicate, LedgerCache, Miss
from authswitch.domain.authorization import (
    NO_CHARGES,
    PARTIAL_APPROVAL_TYPES,
    AuthorizationRequest,
    CardFacts,
    Charges,
    FeeMode,
    PinTriesExceededAction,
    PreChecks,
    prechecks,
    validate,
)
from authswitch.domain.cardsec import CardKeys
from authswitch.domain.catalog import ProductRow, ProgramRow
from authswitch.domain.codes import Reason, outcome
from authswitch.domain.fx import Conversion, FxRate, RateProblem, convert_billing, converted_into
from authswitch.domain.lifecycle import hold_validity_days
from authswitch.domain.messages.authorization import AuthorizeAnswer
from authswitch.domain.records import DecisionRecord, LedgerWrite, StoredDecision, WriteStatus
from authswitch.domain.writes.authorization import (
    HoldPlan,
    StandIn,
    authorization_write,
    decision_record,
    type_label,
    without_card,
)
from authswitch.errors import Expired, InternalError
from authswitch.futures import Detached
from authswitch.service.cache_sync import CacheSync
from authswitch.service.catalog import NOT_CACHED, Catalog
from authswitch.service.charges import ChargeCalculator
from authswitch.service.clock import Clock
from authswitch.service.controls import ControlPlan, SpendControlService
from authswitch.service.ids import authorization_code, new_id
from authswitch.service.posting import durable_original
from authswitch.service.tokens import TokenService

__all__ = ["AuthorizationService", "Job", "OffLedgerRouter", "Replies"]

log = logging.getLogger(__name__)

# A Redis step that misses the cache reloads and tries again, this many times at most.
CACHE_ATTEMPTS_MAX = 3


class OffLedgerRouter(Protocol):
    async def decide(self, job: Job) -> StoredDecision: ...


class Waits(Protocol):
    """Where a call waiting on something outside the process (an off-ledger client) stops
    counting as the process's work while it waits (the inbound admission)."""

    def park(self) -> bool:
        """Start waiting; False when too many calls already wait (then nothing changed)."""
        ...

    def unpark(self) -> None:
        """Back from a wait that ``park`` allowed."""
        ...


class _Unbounded:
    """Waits with no bound, for callers without an admission (tests, tools)."""

    def park(self) -> bool:
        return True

    def unpark(self) -> None:
        return None


UNBOUNDED_WAITS: Waits = _Unbounded()


class LinkedRouter(Protocol):
    async def decide(self, job: Job, spend_account_id: str) -> StoredDecision: ...


class Replies(Protocol):
    """The wire form of an authorisation's answer: the bytes stored with its decision and
    sent as they are (adapters/grpc/codec/authorization.py)."""

    def authorize(self, answer: AuthorizeAnswer) -> bytes: ...


@dataclass(slots=True)
class Job:
    """One authorisation being decided, with what was looked up for it."""

    ctx: _Context
    card: CardFacts
    product: ProductRow
    program: ProgramRow
    pre: PreChecks
    controls: ControlPlan | None = None  # the card's spend controls in force, if any


class _Context:
    """One authorisation being decided: the request, and what was derived from it on arrival."""

    __slots__ = (
        "conversion",
        "deadline_s",
        "fingerprint",
        "fx_problem",
        "mode",
        "received",
        "request",
        "started",
        "waits",
    )

    def __init__(
        self,
        request: AuthorizationRequest,
        fingerprint: bytes,
        received: datetime,
        started: float = 0.0,
        deadline_s: float | None = None,
        waits: Waits = UNBOUNDED_WAITS,
    ) -> None:
        self.request = request
        self.fingerprint = fingerprint
        self.received = received
        self.started = started  # time.perf_counter() when the request arrived
        self.deadline_s = deadline_s  # time.monotonic() when its caller gives up, if known
        self.mode = "on_ledger"  # for the metrics: who decided
        self.waits = waits  # where a wait on an off-ledger client is counted
        # A billing asset converted into the account's (docs/fx.md): ``request`` is then the
        # converted request, and this what it converted; ``fx_problem`` why it could not be.
        self.conversion: Conversion | None = None
        self.fx_problem = ""


class AuthorizationService:
    def __init__(
        self,
        *,
        keys: CardKeys,
        catalog: Catalog,
        holds: HoldStore,
        cards: CardStore,
        cache: LedgerCache,
        sync: CacheSync,
        committer: GroupCommitter,
        clock: Clock,
        replies: Replies,
    ) -> None:
        self.keys = keys
        self.replies = replies
        # Answers that depend on nothing but their reason, encoded once.
        self._format_responses = {
            reason: replies.authorize(AuthorizeAnswer(reason, detail=detail))
            for reason, detail in _FORMAT_DETAIL.items()
        }
        self._system_error_response = replies.authorize(
            AuthorizeAnswer(Reason.SYSTEM_ERROR, detail="internal error")
        )
        self._mismatch_response = replies.authorize(
            AuthorizeAnswer(Reason.DUPLICATE_MISMATCH, detail="message id reused")
        )
        self.catalog = catalog
        self.holds = holds
        self.cache = cache
        self.sync = sync
        self.committer = committer
        self.clock = clock
        self.charges = ChargeCalculator(catalog)
        self.controls = SpendControlService(
            catalog, ControlStore(holds.pool), cards, cache, self.charges
        )
        self.tokens = TokenService(keys=keys, catalog=catalog, cards=cards, clock=clock)
        # Set by the application when off-ledger switching is wired (it needs this service).
        self.offledger: OffLedgerRouter | None = None
        # Set by the application: a card spending from a linked account (service/linked.py).
        self.linked: LinkedRouter | None = None
        # Originals in flight in this process, by (source, message id): a retransmission
        # arriving meanwhile waits for the original's durable answer.
        self._originals: dict[tuple[str, str], asyncio.Future[StoredDecision]] = {}
        # Metric children by (mode, transaction type, response code).
        self._counted: dict[tuple[str, int, str], tuple[Any, Any]] = {}
        self._seconds: dict[str, metrics.HotHistogram] = {}

    async def authorize(
        self,
        request: AuthorizationRequest,
        canonical: bytes,
        *,
        deadline_s: float | None = None,
        waits: Waits = UNBOUNDED_WAITS,
    ) -> bytes:
        """Decide one authorisation; the response's bytes. Never raises for a fault, which
        is answered 96.

        ``canonical`` is the request's deterministic encoding, the payload compared for
        idempotency; ``deadline_s`` (``time.monotonic()``) when the caller gives up;
        ``waits`` counts the time an off-ledger call waits on its client apart.

        Runs in the caller's task, with no task of its own: once Redis has been asked to
        reserve funds, a cancellation of the caller waits for that step and the commit to
        finish (``futures.py``), so the in-flight bookkeeping always holds.
        """
        started = time.perf_counter()
        reason = validate(request, self.catalog.assets)
        mode = "on_ledger"
        if reason is Reason.FORMAT_ERROR or reason is Reason.INVALID_AMOUNT:
            # A malformed request is answered and nothing is written.
            response = self._format_responses[reason]
            code = outcome(reason).response_code
        else:
            ctx = _Context(
                request,
                self.keys.fingerprint(canonical),
                self.clock.now(),
                started,
                deadline_s,
                waits,
            )
            try:
                stored = await self._answer(ctx, reason)
            except Expired:
                metrics.EXPIRED.inc()
                raise
            except Exception as exc:
                log.error(
                    "authorisation failed, answered 96",
                    extra={"error": type(exc).__name__, "message_id": request.message_id},
                    exc_info=not isinstance(exc, InternalError),
                )
                response, code = self._system_error_response, _SYSTEM_ERROR_CODE
            else:
                if stored.fingerprint != ctx.fingerprint:
                    response, code = self._mismatch_response, _MISMATCH_CODE
                else:
                    response, code = stored.response, stored.response_code
            mode = ctx.mode
        counted = self._counted.get((mode, request.transaction_type, code))
        if counted is None:
            counted = self._count(mode, request.transaction_type, code)
        counted[0].inc()
        counted[1].observe(time.perf_counter() - started)
        return response

    def format_error(self, transaction_type: int) -> bytes:
        """The answer to a request malformed in a way only its wire form shows (a string
        over its maximum): 30, nothing written."""
        code = outcome(Reason.FORMAT_ERROR).response_code
        counted = self._counted.get(("on_ledger", transaction_type, code))
        if counted is None:
            counted = self._count("on_ledger", transaction_type, code)
        counted[0].inc()
        counted[1].observe(0.0)
        return self._format_responses[Reason.FORMAT_ERROR]

    def _count(self, mode: str, transaction_type: int, code: str) -> tuple[Any, Any]:
        """The metric children of a decision's labels, bound once (bounded sets)."""
        label = type_label(transaction_type)
        children = (
            metrics.HotCounter(metrics.DECISIONS.labels(mode, label, code)),
            self._seconds.get(mode)
            or self._seconds.setdefault(
                mode, metrics.HotHistogram(metrics.DECISION_SECONDS.labels(mode))
            ),
        )
        self._counted[(mode, transaction_type, code)] = children
        return children

    async def _answer(self, ctx: _Context, early: Reason | None) -> StoredDecision:
        request = ctx.request
        key = (request.source, request.message_id)
        original = self._originals.get(key)
        if original is not None:  # a retransmission while the original is in flight here
            return await original
        future: asyncio.Future[StoredDecision] = Detached(loop=asyncio.get_running_loop())
        self._originals[key] = future
        try:
            stored = await self._decide(ctx, early)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # marked retrieved: waiters re-raise it themselves
            raise
        else:
            future.set_result(stored)
        finally:
            del self._originals[key]
        return stored

    async def _decide(self, ctx: _Context, early: Reason | None) -> StoredDecision:
        """Decide and make durable; returns what is durable under the message id."""
        request = ctx.request
        if early is not None:  # the PAN failed its form check: declined 14 without a lookup
            return await self._record_without_card(ctx, early)
        token = None
        if request.token:  # a network token (docs/tokens.md): resolved to its card
            token = await self.tokens.resolve(request.token)
            if token is None:
                return await self._record_without_card(ctx, Reason.UNKNOWN_CARD)
            pan_hmac = token.card_pan_hmac
        else:
            pan_hmac = self.keys.pan_hmac(request.pan)
        catalog = self.catalog
        # The catalogue is cached in process: a hit costs no await.
        card = catalog.peek_card(pan_hmac)
        if card is NOT_CACHED:
            card = await catalog.card(pan_hmac)
        if card is None:
            return await self._record_without_card(ctx, Reason.UNKNOWN_CARD)
        product = catalog.peek_product(card.product_id) or await catalog.product(card.product_id)
        program = catalog.peek_program(card.program_id) or await catalog.program(card.program_id)
        pre = prechecks(request, pan_hmac, card, product.rules, self.keys, ctx.received.date())
        if token is not None:
            self.tokens.apply(
                token, pre, card.expiry_yymm, request.expiry_yymm, ctx.received.date()
            )
        job = Job(ctx, card, product, program, pre)
        on_ledger = program.mode != "OFF_LEDGER"
        # Linked accounts hold assets the card's own account does not: a transaction in one
        # of them spends from the first that holds it (docs/accounts.md).
        spend = card.spending(request.billing_asset) if on_ledger and card.spend_accounts else card
        if on_ledger and spend is card and product.fx is not None and not request.is_zero_value:
            into = converted_into(product.assets, card.account_assets, request.billing_asset)
            if into is not None:  # converted before anything counts its amount (docs/fx.md)
                self._convert(job, into, await catalog.fx_rates(ctx.received))
        if card.controlled:  # spend controls: looked up only for a card that has some
            job.controls = await self.controls.plan(card, program, ctx.request, pre, ctx.received)
        if not on_ledger:
            assert self.offledger is not None, "off-ledger switching is not wired"
            ctx.mode = "off_ledger"
            return await self.offledger.decide(job)
        if spend is not card:
            assert self.linked is not None, "linked accounts are not wired"
            return await self.linked.decide(job, spend.account_id)
        return await self.on_ledger(job)

    def _convert(
        self, job: Job, into: str, rates: Mapping[tuple[str, str], Sequence[FxRate]]
    ) -> None:
        """Convert the request of ``job`` into ``into`` at the rate in force, the product's
        markup a fee (docs/fx.md); or note why it cannot be, for the funds check to decline
        it (so every earlier check keeps its precedence)."""
        ctx, product = job.ctx, job.product
        request = ctx.request
        assert product.fx is not None
        conversion = convert_billing(
            request.billing_asset, request.billing_amount_minor, into, rates=rates,
            markup=product.fx, assets=self.catalog.assets, at=ctx.received,
        )  # fmt: skip
        if isinstance(conversion, RateProblem):
            ctx.fx_problem = conversion.detail
            return
        ctx.conversion = conversion
        ctx.request = dataclasses.replace(
            request,
            billing_asset=into,
            billing_amount_minor=conversion.account_minor,
            partial_allowed=False,  # the network's amount is approved whole, or not at all
        )

    async def on_ledger(self, job: Job, stand_in: StandIn | None = None) -> StoredDecision:
        """Decide from the ledger in authswitch: the program's own (on-ledger), or the shadow
        ledger of an off-ledger program whose client did not answer (``stand_in``)."""
        ctx, card, product, program, pre = job.ctx, job.card, job.product, job.program, job.pre
        request = ctx.request
        partial = request.partial_allowed and request.transaction_type in PARTIAL_APPROVAL_TYPES
        charges = self.charges.peek_for_authorization(
            product.id, program, request, card_id=card.card_id, account_id=card.account_id,
            at=ctx.received,
        ) or await self.charges.for_authorization(
            product.id, program, request, card_id=card.card_id, account_id=card.account_id,
            at=ctx.received,
        )  # fmt: skip
        if job.controls is not None:
            charges = await self.controls.charges(
                job.controls, charges, product_id=product.id, program=program,
                request=request, card=card, at=ctx.received,
            )  # fmt: skip
        if ctx.conversion is not None and ctx.conversion.markup_minor:  # a fee, held
            charges = dataclasses.replace(
                charges, fixed_fee_minor=charges.fixed_fee_minor + ctx.conversion.markup_minor
            )
        hold_plan = self._plain_hold_plan(job)
        if request.incremental:
            hold_plan = await self._incremental_hold_plan(job, hold_plan)

        def attempt(mark: str) -> Awaitable[AuthorizeOutcome | Miss | Duplicate]:
            # A stand-in's decision runs inside the off-ledger decision's mark on the account.
            return self.reserve(job, mark if stand_in is None else "", partial, charges)

        async def finish(result: AuthorizeOutcome) -> StoredDecision:
            detail = ""
            if ctx.fx_problem and result.reason is Reason.NO_BALANCE_IN_ASSET:
                result.reason, detail = Reason.FX_RATE_UNAVAILABLE, ctx.fx_problem
            if job.controls is not None:
                detail = await self.controls.detail(
                    job.controls, result, charges, account_id=card.account_id, request=request
                )
            write = self._write_for(
                ctx, card, program, pre, result, hold_plan, charges, stand_in,
                product.rules.pin_tries_exceeded_action, detail,
            )  # fmt: skip
            if job.controls is not None and job.controls.velocity_checks:
                write.usage += self.controls.velocity_usage(job.controls, result, card.account_id)
            stored = await self._commit(card, result, write)
            if result.velocity_blocked:
                assert job.controls is not None
                await self.controls.block(job.controls, result, card, program, ctx.received)
            return stored

        return await self.redis_step(job, attempt, finish)

    def _plain_hold_plan(self, job: Job) -> HoldPlan:
        request, product = job.ctx.request, job.product
        return HoldPlan(
            network_reference=request.network_reference,
            kind="AUTHORIZATION",
            validity_days=hold_validity_days(
                product.hold_validity_days, product.hold_validity_by_mcc, request.mcc
            ),
        )

    async def _incremental_hold_plan(self, job: Job, plan: HoldPlan) -> HoldPlan:
        """An increment joins its original's transaction, so that clearings of it release
        both; without an open original it is an authorisation of its own."""
        request = job.ctx.request
        original = await self.holds.hold_by_message(request.source, request.original_message_id)
        if (
            original is not None
            and original.status == "OPEN"
            and original.card_id == job.card.card_id
        ):
            return HoldPlan(original.network_reference, "INCREMENTAL", plan.validity_days)
        return plan

    async def hold_plan(self, job: Job) -> HoldPlan:
        """Where a hold of ``job`` belongs (its transaction, kind and validity)."""
        plan = self._plain_hold_plan(job)
        if job.ctx.request.incremental:
            plan = await self._incremental_hold_plan(job, plan)
        return plan

    def reserve(
        self, job: Job, mark: str, partial: bool = False, charges: Charges = NO_CHARGES, *,
        checks_only: bool = False,
    ) -> Awaitable[AuthorizeOutcome | Miss | Duplicate]:  # fmt: skip
        """The atomic Redis step of an authorisation: every check and the funds, the hold,
        the fees, the limits' and spend controls' counters and the idempotency marker.
        ``checks_only``: the core checks (status, expiry, PIN tries, PIN, CVV2, product) and
        the marker alone, nothing held, for a decision made elsewhere (an off-ledger client,
        a linked account). ``mark``: the operation's in-flight mark (service/cache_sync.py)."""
        card, ctx = job.card, job.ctx
        request = ctx.request
        return self.cache.authorize(
            account_id=card.account_id,
            card_id=card.card_id,
            asset=request.billing_asset,
            amount_minor=request.billing_amount_minor,
            partial_allowed=partial,
            zero_value=request.is_zero_value,
            pre=job.pre,
            source=request.source,
            message_id=request.message_id,
            fingerprint=ctx.fingerprint,
            charges=charges,
            checks_only=checks_only,
            velocity=() if checks_only or job.controls is None else job.controls.velocity_checks,
            mark=mark,
        )

    async def redis_step(
        self,
        job: Job,
        attempt: Callable[[str], Awaitable[AuthorizeOutcome | Miss | Duplicate]],
        finish: Callable[[AuthorizeOutcome], Awaitable[StoredDecision]],
    ) -> StoredDecision:
        """Run the atomic Redis step and make its outcome durable, with the in-flight
        bookkeeping that keeps reloads exact: reload on a miss, replay on a duplicate, and
        reload from Postgres after any failure."""
        card, request = job.card, job.ctx.request
        deadline_s = job.ctx.deadline_s
        if deadline_s is not None and time.monotonic() >= deadline_s:
            # Its caller has given up (a lookup took long): decide nothing.
            raise Expired("the call's deadline passed before a decision")
        for _ in range(CACHE_ATTEMPTS_MAX):
            with self.sync.in_flight(card.account_id) as mark:
                try:
                    result = await attempt(mark)
                    if isinstance(result, AuthorizeOutcome):
                        stored = await finish(result)
                        if not result.pin_blocked_now:
                            return stored
                except Exception:
                    # Whether Redis or Postgres failed, the cached state may now hold a
                    # reservation with nothing durable behind it: reload it from Postgres
                    # once this operation no longer counts as in flight.
                    self.sync.undo_later(card.account_id, request.source, request.message_id)
                    raise
            # Outside the in-flight mark: a reload waits for marked operations to finish.
            if isinstance(result, AuthorizeOutcome):  # it used up the card's PIN tries
                await self._reload_blocked_card(job)
                return stored
            if isinstance(result, Duplicate):
                return await self._stored_original(job.ctx, card)
            await self.sync.after_miss(card.account_id, card.card_id if result.card_only else None)
        raise InternalError("the account's cached state could not be loaded")

    async def _commit(
        self, card: CardFacts, result: AuthorizeOutcome, write: LedgerWrite
    ) -> StoredDecision:
        written = await self.committer.submit(write)
        if written.status is WriteStatus.COMMITTED:
            if written.pre_reversed_minor:
                # A reversal arrived before this authorisation: Postgres holds only what it
                # did not reverse, and the cache must hold no more.
                asset = write.decision.asset
                assert asset is not None
                await self.cache.adjust(
                    card.account_id, result.epoch, asset, 0, -written.pre_reversed_minor
                )
            return written.decision
        # Refused by Postgres (the cache was stale), or a duplicate that only Postgres knew
        # of: nothing of this request is durable, so its Redis effects must go. A hold alone
        # is taken back exactly; anything more (PIN state, a posted fee, counters) by a reload.
        if (
            written.status is WriteStatus.REFUSED
            or result.pin_tries_changed
            or result.pin_changed
            or result.fee_mode is not FeeMode.NONE
            or write.usage
        ):
            log.warning("the cache disagreed with Postgres; reloading the account")
            self.sync.refresh_later(card.account_id, written.status.value)
        elif result.held_minor:
            asset = write.decision.asset
            assert asset is not None
            await self.cache.adjust(card.account_id, result.epoch, asset, 0, -result.held_minor)
        return written.decision

    async def _reload_blocked_card(self, job: Job) -> None:
        """After a decision that used up the PIN tries: the card's cached state from
        Postgres, so that a BLOCK_CARD product's next request sees the card blocked."""
        card = job.card
        try:
            await self.sync.load_card(card.account_id, card.card_id)
        except Exception as exc:  # durable already; the next reload brings the status
            metrics.STORE_ERRORS.labels("redis", "load_card").inc()
            log.warning(
                "the blocked card's cached state was not reloaded",
                extra={"error": type(exc).__name__},
            )
            self.sync.refresh_later(card.account_id, "pin_blocked")

    # For the decision paths built on this one (service/linked.py).
    commit = _commit

    def _write_for(
        self, ctx: _Context, card: CardFacts, program: ProgramRow, pre: PreChecks,
        result: AuthorizeOutcome, plan: HoldPlan, charges: Charges,
        stand_in: StandIn | None = None,
        pin_action: PinTriesExceededAction = PinTriesExceededAction.BLOCK_CARD, detail: str = "",
    ) -> LedgerWrite:  # fmt: skip
        """What a decision leaves behind (domain/writes/authorization.py), with the answer's
        bytes."""
        decision_id = new_id()
        approved = result.reason is Reason.APPROVED or result.reason is Reason.PARTIALLY_APPROVED
        answer = self._answer_of(ctx, result, approved, decision_id, detail, stand_in)
        return authorization_write(
            arrival=ctx, card=card, program=program, new_pvv=pre.new_pvv, result=result,
            plan=plan, charges=charges, answer=answer, response=self.replies.authorize(answer),
            pin_action=pin_action, stand_in=stand_in,
            refusal=self._refusal(ctx, card, decision_id) if result.held_minor else None,
            new_id=new_id,
        )  # fmt: skip

    def _refusal(
        self, ctx: _Context, card: CardFacts, decision_id: str
    ) -> Callable[[], DecisionRecord]:
        """The decision recorded instead when Postgres refuses the funds (a stale cache)."""

        def refusal() -> DecisionRecord:
            declined = self.replies.authorize(
                AuthorizeAnswer(
                    Reason.INSUFFICIENT_FUNDS, ctx.request.billing_asset, decision_id=decision_id
                )
            )
            return decision_record(
                arrival=ctx, decision_id=decision_id, reason=Reason.INSUFFICIENT_FUNDS,
                response=declined, card=card, result=None,
            )  # fmt: skip

        return refusal

    @staticmethod
    def _answer_of(
        ctx: _Context, result: AuthorizeOutcome, approved: bool, decision_id: str, detail: str,
        stand_in: StandIn | None,
    ) -> AuthorizeAnswer:  # fmt: skip
        """The answer to the network (a converted request's shows both amounts)."""
        return AuthorizeAnswer(
            result.reason,
            ctx.request.billing_asset,
            result.approved_minor,
            result.fee_minor,
            result.balance if approved else None,
            authorization_code() if approved else "",
            decision_id,
            detail,
            stand_in_reason=stand_in.reason.value if stand_in is not None else 0,
            conversion=ctx.conversion,
        )

    write_for = _write_for  # for service/linked.py

    async def _record_without_card(self, ctx: _Context, reason: Reason) -> StoredDecision:
        decision_id = new_id()
        response = self.replies.authorize(AuthorizeAnswer(reason, decision_id=decision_id))
        write = without_card(arrival=ctx, decision_id=decision_id, reason=reason, response=response)
        written = await self.committer.submit(write)
        return written.decision

    async def _stored_original(self, ctx: _Context, card: CardFacts) -> StoredDecision:
        """The durable decision of an earlier message with this id, found by its marker."""
        request = ctx.request
        stored = await durable_original(self.holds, request.source, request.message_id)
        if stored is not None:
            return stored
        # A marker with nothing durable behind it: its request failed (96) or its process
        # died before committing. Decide afresh; Postgres arbitrates if both commit.
        await self.cache.forget_marker(card.account_id, request.source, request.message_id)
        return await self._decide(ctx, None)


_FORMAT_DETAIL = {
    Reason.FORMAT_ERROR: "malformed request: a required field is missing or invalid",
    Reason.INVALID_AMOUNT: (
        "invalid amount: missing, negative, too large, or not zero for a non-financial request"
    ),
}
_SYSTEM_ERROR_CODE = outcome(Reason.SYSTEM_ERROR).response_code
_MISMATCH_CODE = outcome(Reason.DUPLICATE_MISMATCH).response_code
