"""Off-ledger switching (DESIGN.md §6): the core checks run here, the client's
DecisionService decides within the program's deadline, and the stand-in policy answers when
the client is slow, down, or behind an open circuit breaker.

Every decision is recorded durably (the answer, and in ``client_calls`` the client's answer
or the stand-in and why, with the latency) before the network gets its response. A stand-in
approval is marked as such and an advice (``STAND_IN_ADVICE``) is queued to the client.
"""

from __future__ import annotations

import logging
import secrets
import time
from datetime import timedelta
from typing import Any

import grpc

from authswitch import metrics
from authswitch.adapters.client.decision import ClientChannels
from authswitch.adapters.postgres.committer import GroupCommitter, StoredDecision, WriteStatus
from authswitch.adapters.redis.cache import (
    ApplyResult,
    AuthorizeOutcome,
    Duplicate,
    LedgerCache,
    Miss,
)
from authswitch.domain.codes import Check, Reason
from authswitch.domain.fees import FeeContext, Stage
from authswitch.domain.ledger import BalanceChange
from authswitch.domain.limits import Period, period_bounds
from authswitch.domain.networkdata import NetworkData
from authswitch.domain.offledger import (
    BreakerState,
    CircuitBreaker,
    ClientAnswer,
    ClientRouting,
    StandInPolicy,
    StandInReason,
    check_answer,
)
from authswitch.domain.records import (
    CardUpdate,
    ClientCall,
    HoldRecord,
    LedgerWrite,
    Notification,
    UsageChange,
)
from authswitch.service.authorization import (
    AuthorizationService,
    Job,
    StandIn,
    response_for,
)
from authswitch.service.charges import is_international
from authswitch.service.clock import Clock
from authswitch.service.ids import new_id
from authswitch.v1 import authorization_pb2, common_pb2, decision_pb2

__all__ = ["OffLedgerService"]

log = logging.getLogger(__name__)

_CORE_CHECKS = (
    Check.FORMAT, Check.PAN, Check.CARD_STATUS, Check.EXPIRY, Check.PIN_TRIES, Check.PIN,
    Check.CVV2, Check.PRODUCT,
)  # fmt: skip
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
        answer_reserve_ms: int = 50,
    ) -> None:
        """``answer_reserve_ms``: of the programme's deadline, what is kept back for
        deciding without the client and making that durable, so that a silent client's
        stand-in still answers within the deadline."""
        assert answer_reserve_ms >= 0
        self.auth = authorization
        self.answer_reserve_ms = answer_reserve_ms
        self.channels = channels
        self.cache = cache
        self.committer = committer
        self.clock = clock
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
        ctx, card, pre = job.ctx, job.card, job.pre
        request = ctx.request

        async def attempt() -> AuthorizeOutcome | Miss | Duplicate:
            # The core checks (status, expiry, PIN tries, PIN, CVV2, product) and the
            # idempotency marker; no funds, no limits, nothing held.
            return await self.cache.authorize(
                account_id=card.account_id,
                card_id=card.card_id,
                asset=request.billing_asset,
                amount_minor=request.billing_amount_minor,
                partial_allowed=False,
                zero_value=True,
                pre=pre,
                source=request.source,
                message_id=request.message_id,
                fingerprint=ctx.fingerprint,
                checks_only=True,
            )

        async def finish(checks: AuthorizeOutcome) -> StoredDecision:
            if checks.reason is not Reason.APPROVED:
                return await self._commit(job, checks, self._declined_by_checks(job, checks))
            return await self._ask(job, checks)

        return await self.auth.redis_step(job, attempt, finish)

    def _declined_by_checks(self, job: Job, checks: AuthorizeOutcome) -> LedgerWrite:
        ctx, card = job.ctx, job.card
        decision_id = new_id()
        detail = ""
        plan = job.controls
        if checks.reason is Reason.TRANSACTION_NOT_PERMITTED and plan and plan.applied:
            assert plan.violation is not None
            detail = plan.violation.detail  # a spend control declined it
        response = response_for(checks.reason, decision_id=decision_id, detail=detail)
        record = self.auth.record(
            ctx, decision_id, checks.reason, response.SerializeToString(), card, None
        )
        return LedgerWrite(
            decision=record,
            card_updates=self._card_updates(job, checks),
            notifications=self._pin_notification(job, checks),
        )

    def _card_updates(self, job: Job, checks: AuthorizeOutcome) -> tuple[CardUpdate, ...]:
        if not (checks.pin_tries_changed or checks.pin_changed):
            return ()
        pvv = job.pre.new_pvv if checks.pin_changed else None
        return (CardUpdate(job.card.card_id, pin_tries=checks.pin_tries, pvv=pvv),)

    def _pin_notification(self, job: Job, checks: AuthorizeOutcome) -> tuple[Notification, ...]:
        if not checks.pin_blocked_now:
            return ()
        request = job.ctx.request
        return (
            _notification(
                job, "PIN_TRIES_EXCEEDED",
                {"source": request.source, "message_id": request.message_id},
            ),
        )  # fmt: skip

    async def _ask(self, job: Job, checks: AuthorizeOutcome) -> StoredDecision:
        """Every core check passed: ask the client, or stand in."""
        ctx, program = job.ctx, job.program
        request = ctx.request
        routing = program.routing
        fee = await self._fee(job)
        decision_id = new_id()
        if routing is None:
            return await self._stand_in(job, checks, StandInReason.NOT_CONFIGURED, None, fee)
        breaker = self.breaker(program.id, routing)
        if not breaker.allow(self._now_ms()):
            return await self._stand_in(job, checks, StandInReason.BREAKER_OPEN, None, fee)
        left_ms = self._client_budget_ms(ctx, routing.deadline_ms)
        if left_ms <= 0:
            breaker.record(False, self._now_ms())
            return await self._stand_in(job, checks, StandInReason.TIMEOUT, 0, fee)
        call = _decide_request(job, decision_id, fee, left_ms)
        started = time.perf_counter()
        failure: StandInReason | None = None
        answer: ClientAnswer | None = None
        wire: decision_pb2.DecideResponse | None = None
        try:
            probe = breaker.state is BreakerState.HALF_OPEN
            connection = await self.channels.connection(program.id, routing, probe=probe)
            wire = await connection.decide(call, timeout_s=left_ms / 1000)
        except grpc.aio.AioRpcError as exc:
            timed_out = exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            failure = StandInReason.TIMEOUT if timed_out else StandInReason.UNAVAILABLE
        except TimeoutError:
            failure = StandInReason.TIMEOUT
        except Exception as exc:  # a client we cannot even connect to (bad secrets, ...)
            log.warning("client call failed", extra={"error": type(exc).__name__})
            failure = StandInReason.UNAVAILABLE
        latency_us = int((time.perf_counter() - started) * 1_000_000)
        if wire is not None:
            answer = check_answer(
                wire.decision,
                approved_minor=wire.approved_amount.amount_minor,
                approved_asset=wire.approved_amount.asset,
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
            return await self._stand_in(
                job, checks, failure or StandInReason.INVALID_ANSWER, latency_us, fee, wire
            )
        return await self._answered(job, checks, answer, latency_us, fee, decision_id)

    def _client_budget_ms(self, ctx: Any, deadline_ms: int) -> int:
        """How long the client may take: what is left of the programme's deadline (or of
        the gateway's own, when shorter), less the reserve for answering without it."""
        now = time.perf_counter()
        left_ms = deadline_ms - (now - ctx.started) * 1000
        if ctx.deadline_s is not None:
            left_ms = min(left_ms, (ctx.deadline_s - time.monotonic()) * 1000)
        return int(left_ms - self.answer_reserve_ms)

    async def _fee(self, job: Job) -> int:
        """The authorisation fee, sent to the client to apply (off-ledger fees are only
        notified)."""
        request = job.ctx.request
        context = FeeContext(
            Stage.AUTHORIZATION, request.transaction_type, request.channel, request.mcc,
            is_international(job.program, request.merchant_country), request.billing_asset,
            request.billing_amount_minor,
        )  # fmt: skip
        quote = await self.auth.charges.fee_quote(job.product.id, job.ctx.received, context)
        return quote.fixed_minor

    async def _answered(
        self, job: Job, checks: AuthorizeOutcome, answer: ClientAnswer, latency_us: int,
        fee: int, decision_id: str,
    ) -> StoredDecision:  # fmt: skip
        ctx, card, program = job.ctx, job.card, job.program
        request = ctx.request
        approved = answer.reason in (Reason.APPROVED, Reason.PARTIALLY_APPROVED)
        response = response_for(
            answer.reason,
            asset=request.billing_asset,
            approved_minor=answer.approved_minor,
            fee_minor=fee if approved else 0,
            authorization_code=(answer.authorization_code or _auth_code()) if approved else "",
            decision_id=decision_id,
        )
        response.response_code = answer.response_code
        record = self.auth.record(
            ctx, decision_id, answer.reason, response.SerializeToString(), card, None
        )
        call = ClientCall(
            source=request.source,
            message_id=request.message_id,
            program_id=program.id,
            outcome="CLIENT",
            created_at=ctx.received,
            client_decision=answer.reason.name,
            client_response_code=answer.response_code,
            client_reason=answer.client_reason,
            latency_us=latency_us,
        )
        notifications = self._pin_notification(job, checks) + self._fee_notification(
            job, fee, approved
        )
        write = LedgerWrite(
            decision=record,
            card_updates=self._card_updates(job, checks),
            notifications=notifications,
            client_calls=(call,),
        )
        shadow = program.routing is not None and program.routing.stand_in is StandInPolicy.SHADOW
        if approved and shadow:
            return await self._mirror(job, write, answer.approved_minor + fee)
        return await self._commit(job, checks, write)

    async def _mirror(self, job: Job, write: LedgerWrite, amount_minor: int) -> StoredDecision:
        """Keep the shadow ledger of a SHADOW program in step with the client: the client's
        approval is held there too, without a funds check (the client decided)."""
        ctx, card = job.ctx, job.card
        request = ctx.request
        change = BalanceChange(
            card.account_id, request.billing_asset, authorized_delta_minor=amount_minor
        )
        applied = await self.cache.apply(
            account_id=card.account_id, asset=request.billing_asset, actual_delta_minor=0,
            held_delta_minor=amount_minor, requires_funds=False,
        )  # fmt: skip
        if not (isinstance(applied, ApplyResult) and applied.status == "OK"):
            # No shadow balance in this asset, or the state is not loaded: record the
            # decision; the reload brings the shadow ledger back in step with Postgres.
            await self.auth.sync.refresh(card.account_id, "shadow")
            return await self._commit_plain(write)
        plan = await self.auth.hold_plan(job)
        hold = HoldRecord(
            id=new_id(),
            account_id=card.account_id,
            asset=request.billing_asset,
            card_id=card.card_id,
            source=request.source,
            message_id=request.message_id,
            network_reference=plan.network_reference,
            amount_minor=amount_minor,
            fee_minor=0,
            expires_at=ctx.received + timedelta(days=plan.validity_days),
            created_at=ctx.received,
            kind=plan.kind,
        )
        mirrored = LedgerWrite(
            decision=write.decision,
            holds=(hold,),
            balance_changes=(change,),
            card_updates=write.card_updates,
            notifications=write.notifications,
            client_calls=write.client_calls,
        )
        written = await self.committer.submit(mirrored)
        if written.status is not WriteStatus.COMMITTED or written.pre_reversed_minor:
            await self.auth.sync.refresh(card.account_id, "shadow")
        return written.decision

    def _fee_notification(self, job: Job, fee: int, approved: bool) -> tuple[Notification, ...]:
        if not fee or not approved:
            return ()
        request = job.ctx.request
        payload = {
            "stage": "AUTHORIZATION", "source": request.source,
            "message_id": request.message_id, "fee_minor": fee, "asset": request.billing_asset,
            "fee_mode": "NOTIFIED",
        }  # fmt: skip
        return (_notification(job, "FEE", payload),)

    async def _stand_in(
        self, job: Job, checks: AuthorizeOutcome, reason: StandInReason, latency_us: int | None,
        fee: int, wire: decision_pb2.DecideResponse | None = None,
    ) -> StoredDecision:  # fmt: skip
        ctx, card, program = job.ctx, job.card, job.program
        request = ctx.request
        routing = program.routing
        policy = routing.stand_in if routing is not None else StandInPolicy.DECLINE
        metrics.STAND_INS.labels(_STAND_IN_LABELS[reason], policy.value.lower()).inc()
        call = ClientCall(
            source=request.source,
            message_id=request.message_id,
            program_id=program.id,
            outcome="STAND_IN",
            created_at=ctx.received,
            stand_in_reason=reason.name,
            stand_in_policy=policy.value,
            client_decision=decision_pb2.ClientDecision.Name(wire.decision) if wire else "",
            client_response_code=wire.response_code[:8] if wire else "",
            latency_us=latency_us,
        )
        if policy is StandInPolicy.SHADOW:
            # Decide from the shadow ledger, as an on-ledger program would. The core checks
            # already ran, and marked the message: that mark is this decision's own.
            await self.cache.forget_marker(card.account_id, request.source, request.message_id)
            advice = _notification(job, "STAND_IN_ADVICE", _advice_payload(job, reason, policy))
            stand_in = StandIn(reason.value, call, (advice,))
            return await self.auth.on_ledger(job, stand_in)

        decision_id = new_id()
        approved = False
        usage: tuple[UsageChange, ...] = ()
        if policy is StandInPolicy.APPROVE and routing is not None:
            approved, usage = await self._within_stand_in_limits(job, routing)
        reason_code = Reason.APPROVED if approved else Reason.CLIENT_UNAVAILABLE
        response = response_for(
            reason_code,
            asset=request.billing_asset,
            approved_minor=request.billing_amount_minor if approved else 0,
            fee_minor=fee if approved else 0,
            authorization_code=_auth_code() if approved else "",
            decision_id=decision_id,
        )
        response.stand_in = True
        response.stand_in_reason = reason.value  # type: ignore[assignment]
        record = self.auth.record(
            ctx, decision_id, reason_code, response.SerializeToString(), card, None
        )
        notifications = self._pin_notification(job, checks)
        if approved:
            payload = _advice_payload(job, reason, policy)
            payload["authorization_code"] = response.authorization_code
            notifications += (_notification(job, "STAND_IN_ADVICE", payload),)
            notifications += self._fee_notification(job, fee, True)
        write = LedgerWrite(
            decision=record,
            card_updates=self._card_updates(job, checks),
            usage=usage,
            notifications=notifications,
            client_calls=(call,),
        )
        return await self._commit(job, checks, write)

    async def _within_stand_in_limits(
        self, job: Job, routing: ClientRouting
    ) -> tuple[bool, tuple[UsageChange, ...]]:
        """Whether a stand-in approval fits the per-transaction and per-day limits; counts
        it atomically per card and day when it does."""
        ctx, card = job.ctx, job.card
        request = ctx.request
        amount = request.billing_amount_minor
        if request.billing_asset != routing.stand_in_asset:
            return False, ()
        if amount > routing.stand_in_transaction_max_minor:
            return False, ()
        label, previous, ends = period_bounds(Period.DAY, ctx.received, job.program.time_zone)
        key, previous_key = f"S:{card.card_id}:{label}", f"S:{card.card_id}:{previous}"
        for _ in range(2):
            added = await self.cache.add_within(
                card.account_id, key, previous_key, amount, routing.stand_in_daily_max_minor
            )
            if isinstance(added, Miss):
                await self.auth.sync.reload(card.account_id, "miss")
                continue
            if not added:
                return False, ()
            return True, (UsageChange(card.account_id, key, amount, 1, ends),)
        return False, ()

    async def _commit(
        self, job: Job, checks: AuthorizeOutcome, write: LedgerWrite
    ) -> StoredDecision:
        written = await self.committer.submit(write)
        if written.status is not WriteStatus.COMMITTED and (
            checks.pin_tries_changed or checks.pin_changed or write.usage
        ):
            await self.auth.sync.refresh(job.card.account_id, written.status.value)
        return written.decision

    async def _commit_plain(self, write: LedgerWrite) -> StoredDecision:
        return (await self.committer.submit(write)).decision


def _auth_code() -> str:
    return f"{secrets.randbelow(1_000_000):06d}"


def _notification(job: Job, kind: str, payload: dict[str, object]) -> Notification:
    return Notification(
        id=new_id(),
        program_id=job.program.id,
        kind=kind,
        payload=payload,
        created_at=job.ctx.received,
        account_id=job.card.account_id,
        card_id=job.card.card_id,
        sinks=job.program.sinks,
    )


def _advice_payload(job: Job, reason: StandInReason, policy: StandInPolicy) -> dict[str, object]:
    request = job.ctx.request
    return {
        "source": request.source,
        "message_id": request.message_id,
        "network_reference": request.network_reference,
        "transaction_type": request.transaction_type,
        "amount_minor": request.billing_amount_minor,
        "asset": request.billing_asset,
        "stand_in_reason": reason.name,
        "stand_in_policy": policy.value,
    }


def _decide_request(
    job: Job, decision_id: str, fee: int, left_ms: int
) -> decision_pb2.DecideRequest:
    ctx, card = job.ctx, job.card
    request = ctx.request
    call = decision_pb2.DecideRequest(
        decision_id=decision_id,
        source=request.source,
        message_id=request.message_id,
        network_reference=request.network_reference,
        program_id=job.program.id,
        card_id=card.card_id,
        account_id=card.account_id,
        pan_last_four=request.pan[-4:],
        transaction_type=request.transaction_type,  # type: ignore[arg-type]
        partial_approval_allowed=request.partial_allowed,
        channel=request.channel,  # type: ignore[arg-type]
        core_checks=[
            decision_pb2.CoreCheck(check=check.name, passed=True) for check in _CORE_CHECKS
        ],
        time_left_ms=left_ms,
        incremental=request.incremental,
        original_message_id=request.original_message_id,
    )
    call.billing_amount.CopyFrom(
        common_pb2.Money(amount_minor=request.billing_amount_minor, asset=request.billing_asset)
    )
    if request.transaction_asset:
        call.transaction_amount.CopyFrom(
            common_pb2.Money(
                amount_minor=request.transaction_amount_minor, asset=request.transaction_asset
            )
        )
    call.fee.CopyFrom(common_pb2.Money(amount_minor=fee, asset=request.billing_asset))
    call.merchant.mcc = request.mcc
    call.merchant.country = request.merchant_country
    call.merchant.merchant_id = request.merchant_id
    if request.network is not None:
        call.network_data.CopyFrom(network_data_message(request.network))
    call.received_at.FromDatetime(ctx.received)
    return call


def network_data_message(data: NetworkData) -> authorization_pb2.NetworkData:
    """The wire form of validated network data, for the client's DecideRequest."""
    message = authorization_pb2.NetworkData(
        pos_entry_mode=data.pos_entry_mode,  # type: ignore[arg-type]
        terminal_type=data.terminal_type,  # type: ignore[arg-type]
        card_present=data.card_present,  # type: ignore[arg-type]
        cardholder_present=data.cardholder_present,  # type: ignore[arg-type]
        recurring=data.recurring,
        card_on_file=data.card_on_file,
        merchant_initiated=data.merchant_initiated,
        avs_result=data.avs_result,  # type: ignore[arg-type]
    )
    if data.three_ds_result or data.eci:
        message.three_ds.result = data.three_ds_result  # type: ignore[assignment]
        message.three_ds.eci = data.eci
    if data.cashback_asset:
        message.cashback_amount.CopyFrom(
            common_pb2.Money(amount_minor=data.cashback_minor, asset=data.cashback_asset)
        )
    if data.atm_surcharge_asset:
        message.atm_surcharge.CopyFrom(
            common_pb2.Money(amount_minor=data.atm_surcharge_minor, asset=data.atm_surcharge_asset)
        )
    if data.network_risk_score is not None:
        message.network_risk_score = data.network_risk_score
    return message
