"""Off-ledger switching (DESIGN.md §6): the core checks run here, the client's
DecisionService decides within the program's deadline, and the stand-in policy answers when
the client is slow, down, or behind an open circuit breaker.

Every decision is recorded durably (the answer, and in ``client_calls`` the client's answer
or the stand-in and why, with the latency) before the network gets its response. A stand-in
approval is marked as such and an advice (``STAND_IN_ADVICE``) is queued to the client.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

from authswitch import metrics
from authswitch.adapters.client.decision import ClientChannels
from authswitch.adapters.postgres.committer import GroupCommitter
from authswitch.adapters.redis.cache import (
    ApplyResult,
    AuthorizeOutcome,
    LedgerCache,
    Miss,
)
from authswitch.domain.codes import Check, Reason
from authswitch.domain.limits import Period, period_bounds
from authswitch.domain.messages.authorization import AuthorizeAnswer
from authswitch.domain.messages.decision import ClientReply, DecideAsk
from authswitch.domain.offledger import (
    AnswerReserve,
    Assessed,
    BreakerState,
    CircuitBreaker,
    ClientAnswer,
    ClientRouting,
    StandInPolicy,
    StandInReason,
    check_answer,
)
from authswitch.domain.records import ClientCall, LedgerWrite, StoredDecision, WriteStatus
from authswitch.domain.writes.authorization import StandIn
from authswitch.domain.writes.offledger import (
    FEE_NOT_APPLIED,
    FEE_NOTIFIED,
    FEE_POSTED,
    client_answered,
    declined_by_checks,
    mirrored,
    stand_in_call,
    stand_in_write,
)
from authswitch.errors import ClientCallFailed, ClientTimedOut, StoreUnavailable
from authswitch.service.authorization import AuthorizationService, Job
from authswitch.service.clock import Clock
from authswitch.service.ids import authorization_code, new_id
from authswitch.service.offledger_limits import OffLedgerCharges

__all__ = ["OffLedgerService"]

log = logging.getLogger(__name__)

_CORE_CHECKS = (
    Check.FORMAT, Check.PAN, Check.CARD_STATUS, Check.EXPIRY, Check.PIN_TRIES, Check.PIN,
    Check.CVV2, Check.PRODUCT,
)  # fmt: skip
_CORE_CHECK_NAMES = tuple(check.name for check in _CORE_CHECKS)
_STAND_IN_LABELS = {r: r.name.lower() for r in StandInReason}


class OffLedgerService:
    def __init__(
        self,
        *,
        authorization: AuthorizationService,
        channels: ClientChannels,
        cache: LedgerCache,
        committer: GroupCommitter,
        clock: Clock,
        answer_reserve_ms: int = 100,
    ) -> None:
        """``answer_reserve_ms``: of the programme's deadline, at least what is kept back
        for deciding without the client and making that durable, so that a silent client's
        stand-in still answers within the deadline (more when recent stand-ins needed more:
        ``AnswerReserve``)."""
        self.auth = authorization
        self.reserve = AnswerReserve(answer_reserve_ms)
        metrics.CLIENT_ANSWER_RESERVE_SECONDS.set(answer_reserve_ms / 1000)
        self.channels = channels
        self.cache = cache
        self.committer = committer
        self.clock = clock
        self.charges = OffLedgerCharges(cache=cache, charges=authorization.charges)
        self._breakers: dict[str, tuple[object, CircuitBreaker]] = {}

    def breaker(self, program_id: str, routing: ClientRouting) -> CircuitBreaker:
        """The program's breaker; a new one when its settings change."""
        found = self._breakers.get(program_id)
        if found is None or found[0] != routing.breaker:
            found = (routing.breaker, CircuitBreaker(routing.breaker))
            self._breakers[program_id] = found
        return found[1]

    def _now_ms(self) -> int:
        return int(self.clock.now().timestamp() * 1000)

    async def decide(self, job: Job) -> StoredDecision:
        async def finish(checks: AuthorizeOutcome) -> StoredDecision:
            if checks.reason is Reason.TRANSACTION_NOT_PERMITTED:  # it may carry a decline fee
                assessed = await self.charges.assess_decline(**self._pricing(job))
                write = self._declined_by_checks(job, checks, assessed=assessed)
                return await self._commit(job, checks, write)
            if checks.reason is not Reason.APPROVED:
                return await self._commit(job, checks, self._declined_by_checks(job, checks))
            return await self._ask(job, checks)

        return await self.auth.redis_step(
            job, lambda mark: self.auth.reserve(job, mark, checks_only=True), finish
        )

    def _pricing(self, job: Job) -> dict[str, Any]:
        request = job.ctx.request
        return {
            "product_id": job.product.id, "program": job.program, "card_id": job.card.card_id,
            "account_id": job.card.account_id, "transaction_type": request.transaction_type,
            "channel": request.channel, "mcc": request.mcc,
            "merchant_country": request.merchant_country, "asset": request.billing_asset,
            "amount_minor": request.billing_amount_minor, "at": job.ctx.received,
        }  # fmt: skip

    def _declined_by_checks(
        self, job: Job, checks: AuthorizeOutcome, *, assessed: Assessed | None = None
    ) -> LedgerWrite:
        """A decline by the core checks, or (``assessed.declined``) by the product or a
        limit before the client is asked, with its decline fee if any."""
        ctx, card = job.ctx, job.card
        reason = assessed.declined if assessed and assessed.declined else checks.reason
        decision_id = new_id()
        fee = assessed.decline_fee_minor if assessed else 0
        detail = ""
        plan = job.controls
        if reason is Reason.TRANSACTION_NOT_PERMITTED and plan and plan.applied:
            assert plan.violation is not None
            detail = plan.violation.detail  # a spend control declined it
        response = self.auth.replies.authorize(
            AuthorizeAnswer(
                reason, ctx.request.billing_asset, fee_minor=fee, decision_id=decision_id,
                detail=detail,
            )
        )  # fmt: skip
        return declined_by_checks(
            arrival=ctx, card=card, program=job.program, checks=checks, reason=reason,
            pin_action=job.product.rules.pin_tries_exceeded_action, new_pvv=job.pre.new_pvv,
            decision_id=decision_id, response=response, assessed=assessed, new_id=new_id,
        )  # fmt: skip

    async def _ask(self, job: Job, checks: AuthorizeOutcome) -> StoredDecision:
        """Every core check passed: ask the client, or stand in."""
        ctx, program = job.ctx, job.program
        request = ctx.request
        routing = program.routing
        # The fees, as on-ledger, and check 9 before the client is asked: the product's
        # limits, counted at once (service/offledger_limits.py).
        assessed = await self.charges.assess(**self._pricing(job))
        if assessed.declined is not None:
            write = self._declined_by_checks(job, checks, assessed=assessed)
            return await self._commit(job, checks, write)
        fee = assessed.fee_minor
        decision_id = new_id()
        if routing is None:
            return await self._stand_in(job, checks, StandInReason.NOT_CONFIGURED, None, assessed)
        breaker = self.breaker(program.id, routing)
        if not breaker.allow(self._now_ms()):
            return await self._stand_in(job, checks, StandInReason.BREAKER_OPEN, None, assessed)
        left_ms = self._client_budget_ms(ctx, routing.deadline_ms)
        if left_ms <= 0:
            breaker.record(False, self._now_ms())
            return await self._stand_in(job, checks, StandInReason.TIMEOUT, 0, assessed)
        if not ctx.waits.park():
            # As many calls as the process lets wait on clients already do: stand in now,
            # without asking (the breaker is not told: the client did nothing wrong).
            return await self._stand_in(job, checks, StandInReason.OVERLOADED, None, assessed)
        call = _decide_request(job, decision_id, fee, left_ms)
        started = time.perf_counter()
        failure: StandInReason | None = None
        answer: ClientAnswer | None = None
        wire: ClientReply | None = None
        try:
            probe = breaker.state is BreakerState.HALF_OPEN
            connection = await self.channels.connection(program.id, routing, probe=probe)
            wire = await connection.decide(call, timeout_s=left_ms / 1000)
        except (ClientTimedOut, TimeoutError):
            failure = StandInReason.TIMEOUT
        except ClientCallFailed:
            failure = StandInReason.UNAVAILABLE
        except Exception as exc:  # a client we cannot even connect to (bad secrets, ...)
            log.warning("client call failed", extra={"error": type(exc).__name__})
            failure = StandInReason.UNAVAILABLE
        finally:
            ctx.waits.unpark()
        latency_us = int((time.perf_counter() - started) * 1_000_000)
        if wire is not None:
            answer = check_answer(
                wire.decision,
                approved_minor=wire.approved_minor,
                approved_asset=wire.approved_asset,
                response_code=wire.response_code,
                authorization_code=wire.authorization_code,
                client_reason=wire.reason,
                requested_minor=request.billing_amount_minor,
                asset=request.billing_asset,
                partial_allowed=request.partial_allowed,
            )
            if answer is None:
                failure = StandInReason.INVALID_ANSWER
        metrics.CLIENT_SECONDS.labels(
            "decide", "ok" if failure is None else _STAND_IN_LABELS[failure]
        ).observe(latency_us / 1_000_000)
        breaker.record(failure is None, self._now_ms())
        if failure is not None or answer is None:
            stored = await self._stand_in(
                job, checks, failure or StandInReason.INVALID_ANSWER, latency_us, assessed, wire
            )
            if failure is StandInReason.TIMEOUT:
                # How long answering without the client took past its budget (a late timer
                # included): what the reserve must cover.
                self.reserve.observe((time.perf_counter() - started) * 1000 - left_ms)
                reserve_s = self.reserve.ms(routing.deadline_ms) / 1000
                metrics.CLIENT_ANSWER_RESERVE_SECONDS.set(reserve_s)
            return stored
        return await self._answered(job, checks, answer, latency_us, assessed, decision_id)

    def _client_budget_ms(self, ctx: Any, deadline_ms: int) -> int:
        """How long the client may take: what is left of the programme's deadline (or of
        the gateway's own, when shorter), less the reserve for answering without it."""
        now = time.perf_counter()
        left_ms = deadline_ms - (now - ctx.started) * 1000
        if ctx.deadline_s is not None:
            left_ms = min(left_ms, (ctx.deadline_s - time.monotonic()) * 1000)
        return int(left_ms - self.reserve.ms(deadline_ms))

    async def _answered(
        self, job: Job, checks: AuthorizeOutcome, answer: ClientAnswer, latency_us: int,
        assessed: Assessed, decision_id: str,
    ) -> StoredDecision:  # fmt: skip
        ctx, program = job.ctx, job.program
        request = ctx.request
        approved = answer.reason in (Reason.APPROVED, Reason.PARTIALLY_APPROVED)
        counted, fee = assessed.counted, assessed.fee_minor
        if approved:  # a partial approval counts what it approved
            await self.charges.approve(counted, answer.approved_minor + fee)
        else:  # a decline counts its decline fee only
            await self.charges.decline(counted, assessed.decline_fee_minor)
        response = self.auth.replies.authorize(
            AuthorizeAnswer(
                answer.reason,
                request.billing_asset,
                answer.approved_minor,
                fee if approved else assessed.decline_fee_minor,
                authorization_code=(answer.authorization_code or authorization_code())
                if approved
                else "",
                decision_id=decision_id,
                response_code=answer.response_code,
            )
        )
        shadow = program.routing is not None and program.routing.stand_in is StandInPolicy.SHADOW
        if not approved and shadow and assessed.decline_fee_minor:
            # The shadow ledger charges the decline fee as an on-ledger programme would.
            return await self._post_decline_fee(
                job, checks, answer, latency_us, assessed, decision_id, response
            )
        write = self._client_answered(
            job, checks, answer, latency_us, assessed, FEE_NOTIFIED, decision_id, response
        )
        if approved and shadow:
            return await self._mirror(job, write, answer.approved_minor + fee)
        return await self._commit(job, checks, write)

    def _client_answered(
        self, job: Job, checks: AuthorizeOutcome, answer: ClientAnswer, latency_us: int,
        assessed: Assessed, fee_mode: str, decision_id: str, response: bytes,
    ) -> LedgerWrite:  # fmt: skip
        return client_answered(
            arrival=job.ctx, card=job.card, program=job.program, checks=checks,
            pin_action=job.product.rules.pin_tries_exceeded_action, new_pvv=job.pre.new_pvv,
            answer=answer, latency_us=latency_us, assessed=assessed, fee_mode=fee_mode,
            decision_id=decision_id, response=response, new_id=new_id,
        )  # fmt: skip

    async def _mirror(self, job: Job, write: LedgerWrite, amount_minor: int) -> StoredDecision:
        """Keep the shadow ledger of a SHADOW program in step with the client: the client's
        approval is held there too, without a funds check (the client decided)."""
        ctx, card = job.ctx, job.card
        request = ctx.request
        applied = await self.cache.apply(
            account_id=card.account_id, asset=request.billing_asset, actual_delta_minor=0,
            held_delta_minor=amount_minor, requires_funds=False,
        )  # fmt: skip
        if not (isinstance(applied, ApplyResult) and applied.status == "OK"):
            # No shadow balance in this asset, or the state is not loaded: record the
            # decision; the reload brings the shadow ledger back in step with Postgres.
            self.auth.sync.refresh_later(card.account_id, "shadow")
            return await self._commit_plain(write)
        plan = await self.auth.hold_plan(job)
        held = mirrored(
            write=write, arrival=ctx, card=card, plan=plan, amount_minor=amount_minor,
            hold_id=new_id(),
        )  # fmt: skip
        written = await self.committer.submit(held)
        if written.status is not WriteStatus.COMMITTED or written.pre_reversed_minor:
            self.auth.sync.refresh_later(card.account_id, "shadow")
        return written.decision

    async def _post_decline_fee(
        self, job: Job, checks: AuthorizeOutcome, answer: ClientAnswer, latency_us: int,
        assessed: Assessed, decision_id: str, response: bytes,
    ) -> StoredDecision:  # fmt: skip
        """A client's decline on a SHADOW programme: the decline fee is taken from the
        shadow ledger's actual and available balance when available covers it, else not
        applied (seed 004), and the client is told which."""
        card, request = job.card, job.ctx.request
        fee = assessed.decline_fee_minor
        applied = await self.cache.apply(
            account_id=card.account_id, asset=request.billing_asset, actual_delta_minor=-fee,
            held_delta_minor=0, requires_funds=True,
        )  # fmt: skip
        if not isinstance(applied, ApplyResult) or applied.status != "OK":
            # Not covered (or the state is not loaded, or holds no such asset): nothing
            # changed in the shadow ledger, and the client is told the fee was not applied.
            write = self._client_answered(
                job, checks, answer, latency_us, assessed, FEE_NOT_APPLIED, decision_id,
                response,
            )  # fmt: skip
            return await self._commit(job, checks, write)
        write = self._client_answered(
            job, checks, answer, latency_us, assessed, FEE_POSTED, decision_id, response
        )
        written = await self.committer.submit(write)
        if written.status is not WriteStatus.COMMITTED:  # nothing durable: take it back
            await self.cache.adjust(card.account_id, applied.epoch, request.billing_asset, fee, 0)
            if checks.pin_tries_changed or checks.pin_changed or write.usage:
                self.auth.sync.refresh_later(card.account_id, written.status.value)
        return written.decision

    async def _stand_in(
        self, job: Job, checks: AuthorizeOutcome, reason: StandInReason, latency_us: int | None,
        assessed: Assessed, wire: ClientReply | None = None,
    ) -> StoredDecision:  # fmt: skip
        ctx, card, program = job.ctx, job.card, job.program
        request = ctx.request
        routing = program.routing
        policy = routing.stand_in if routing is not None else StandInPolicy.DECLINE
        metrics.STAND_INS.labels(_STAND_IN_LABELS[reason], policy.value.lower()).inc()
        if policy is StandInPolicy.SHADOW:
            call = stand_in_call(request, ctx.received, program, reason, policy, latency_us, wire)
            return await self._stand_in_shadow(job, assessed, reason, policy, call)

        decision_id = new_id()
        counter: tuple[str, datetime] | None = None
        if policy is StandInPolicy.APPROVE and routing is not None:
            counter = await self._within_stand_in_limits(job, routing)
        approved = counter is not None
        counted, fee = assessed.counted, assessed.fee_minor
        if approved:
            await self.charges.approve(counted, request.billing_amount_minor + fee)
        else:  # 91: the issuer was unavailable, no decline fee
            await self.charges.decline(counted, 0)
        reason_code = Reason.APPROVED if approved else Reason.CLIENT_UNAVAILABLE
        answer = AuthorizeAnswer(
            reason_code,
            request.billing_asset,
            request.billing_amount_minor if approved else 0,
            fee if approved else 0,
            authorization_code=authorization_code() if approved else "",
            decision_id=decision_id,
            stand_in_reason=reason.value,
        )
        write = stand_in_write(
            arrival=ctx, card=card, program=program, checks=checks,
            pin_action=job.product.rules.pin_tries_exceeded_action, new_pvv=job.pre.new_pvv,
            reason=reason, policy=policy, latency_us=latency_us, wire=wire,
            stand_in_counter=counter, assessed=assessed, answer=answer,
            response=self.auth.replies.authorize(answer), new_id=new_id,
        )  # fmt: skip
        return await self._commit(job, checks, write)

    async def _stand_in_shadow(
        self, job: Job, assessed: Assessed, reason: StandInReason, policy: StandInPolicy,
        call: ClientCall,
    ) -> StoredDecision:  # fmt: skip
        """Decide from the shadow ledger, as an on-ledger program would. The core checks
        already ran, and marked the message: that mark is this decision's own. The limits
        are checked and counted there again: what was counted here goes."""
        card, request = job.card, job.ctx.request
        await self.charges.decline(assessed.counted, 0)
        await self.cache.forget_marker(card.account_id, request.source, request.message_id)
        # What the shadow ledger decides is written as an on-ledger decision, with this call
        # and (an approval, full or partial) the stand-in's advice.
        return await self.auth.on_ledger(job, StandIn(reason, policy, call))

    async def _within_stand_in_limits(
        self, job: Job, routing: ClientRouting
    ) -> tuple[str, datetime] | None:
        """Whether a stand-in approval fits the per-transaction and per-day limits; counts
        it atomically per card and day when it does, and returns that counter (its key and
        expiry)."""
        ctx, card = job.ctx, job.card
        request = ctx.request
        amount = request.billing_amount_minor
        if request.billing_asset != routing.stand_in_asset:
            return None
        if amount > routing.stand_in_transaction_max_minor:
            return None
        label, previous, ends = period_bounds(Period.DAY, ctx.received, job.program.time_zone)
        key, previous_key = f"S:{card.card_id}:{label}", f"S:{card.card_id}:{previous}"
        added = await self.cache.add_within(
            card.account_id, key, previous_key, amount, routing.stand_in_daily_max_minor
        )
        if isinstance(added, Miss):
            # The state the core checks just ran on is gone (a new generation): the decision
            # is not made (96); its undo reloads the account, outside the in-flight mark this
            # runs in (a reload here would wait for that mark, its own).
            raise StoreUnavailable("the account's cached state went away during a decision")
        if not added:
            return None
        return key, ends

    async def _commit(
        self, job: Job, checks: AuthorizeOutcome, write: LedgerWrite
    ) -> StoredDecision:
        written = await self.committer.submit(write)
        if written.status is not WriteStatus.COMMITTED and (
            checks.pin_tries_changed or checks.pin_changed or write.usage
        ):
            self.auth.sync.refresh_later(job.card.account_id, written.status.value)
        return written.decision

    async def _commit_plain(self, write: LedgerWrite) -> StoredDecision:
        return (await self.committer.submit(write)).decision


def _decide_request(job: Job, decision_id: str, fee: int, left_ms: int) -> DecideAsk:
    ctx, card = job.ctx, job.card
    request = ctx.request
    return DecideAsk(
        decision_id=decision_id,
        source=request.source,
        message_id=request.message_id,
        network_reference=request.network_reference,
        program_id=job.program.id,
        card_id=card.card_id,
        account_id=card.account_id,
        pan_last_four=card.last_four,  # the card's own PAN, also when the network sent a token
        transaction_type=request.transaction_type,
        partial_allowed=request.partial_allowed,
        channel=request.channel,
        core_checks=_CORE_CHECK_NAMES,
        time_left_ms=left_ms,
        incremental=request.incremental,
        original_message_id=request.original_message_id,
        billing_minor=request.billing_amount_minor,
        billing_asset=request.billing_asset,
        transaction_minor=request.transaction_amount_minor,
        transaction_asset=request.transaction_asset,
        fee_minor=fee,
        mcc=request.mcc,
        merchant_country=request.merchant_country,
        merchant_id=request.merchant_id,
        network=request.network,
        received_at=ctx.received,
    )
