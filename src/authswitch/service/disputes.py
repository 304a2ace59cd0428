"""Disputes of cleared transactions: opened and resolved by operators (the admin API), moved
by the network's chargeback and representment messages (the gateway API).

Each step is planned from the dispute as read (domain/disputes.py), then written in one
group commit with its journal entry, its balance change, its event and its notification,
guarded on the dispute still being where it was read; a step that lost a race is planned
again. Every step is idempotent on its message key: (source, message_id) for the network,
(admin, idempotency key) for operators.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from authswitch.adapters.postgres.disputes import DisputeStore, parse_id
from authswitch.adapters.redis.cache import ApplyResult
from authswitch.domain.authorization import (
    MESSAGE_ID_LEN_MAX,
    NETWORK_REFERENCE_LEN_MAX,
    SOURCE_LEN_MAX,
    identifier_ok,
)
from authswitch.domain.cardsec import CardKeys
from authswitch.domain.catalog import ProgramRow
from authswitch.domain.codes import Code
from authswitch.domain.disputes import (
    ClearingRow,
    DisputeEventRow,
    DisputeRow,
    DisputeState,
    DisputeStatus,
    DisputeStep,
    ImpossibleStep,
    StepPlan,
    plan_open,
    plan_step,
)
from authswitch.domain.ledger import Balance
from authswitch.domain.messages.disputes import (
    DisputeNetworkStep,
    DisputeOutcome,
    NetworkStepAnswer,
    OpenDispute,
    ResolveDispute,
)
from authswitch.domain.money import AMOUNT_MAX_MINOR
from authswitch.domain.offledger import StandInPolicy
from authswitch.domain.records import DisputeOpening, LedgerWrite
from authswitch.domain.writes.disputes import (
    PlannedStep,
    refused_step,
    step_movement,
    step_write,
)
from authswitch.errors import InternalError, NotFound, PreconditionFailed, RequestError
from authswitch.service.admin import ADMIN_SOURCE, require_idempotency_key
from authswitch.service.catalog import Catalog
from authswitch.service.clock import Clock
from authswitch.service.posting import Posted, Poster, PostStatus

__all__ = ["DisputeReplies", "DisputeService"]

PLAN_ATTEMPTS_MAX = 5
# Network reason codes: Visa "13.1", Mastercard "4853", Amex "C08".
_REASON_CODE = re.compile(r"^[A-Za-z0-9.]{1,8}$")

_OUTCOME_STEP = {
    DisputeOutcome.CARDHOLDER_WON: DisputeStep.CARDHOLDER_WON,
    DisputeOutcome.MERCHANT_WON: DisputeStep.MERCHANT_WON,
}


class DisputeReplies(Protocol):
    """The replies stored with a dispute step's decision, as the bytes that are sent: a
    retry gets those bytes again as they were stored (the gRPC codec implements this)."""

    def opened(self, dispute: DisputeRow, balance: Balance | None) -> bytes: ...

    def resolved(self, dispute: DisputeRow, balance: Balance | None) -> bytes: ...

    def chargeback(self, answer: NetworkStepAnswer) -> bytes: ...

    def represent(self, answer: NetworkStepAnswer) -> bytes: ...


class DisputeService:
    def __init__(
        self,
        *,
        keys: CardKeys,
        catalog: Catalog,
        disputes: DisputeStore,
        poster: Poster,
        clock: Clock,
        replies: DisputeReplies,
    ) -> None:
        self.keys = keys
        self.catalog = catalog
        self.disputes = disputes
        self.poster = poster
        self.clock = clock
        self.replies = replies

    # -- operators ------------------------------------------------------------------------

    async def open(self, request: OpenDispute, canonical: bytes, *, actor: str) -> bytes:
        """The OpenDisputeResponse's bytes. ``canonical``: the request's bytes without its
        idempotency key, for the fingerprint."""
        key = request.idempotency_key
        require_idempotency_key(key)
        if not _REASON_CODE.match(request.reason_code):
            raise RequestError("reason_code must be 1 to 8 letters, digits or dots")
        amount = request.amount_minor
        if amount is None or not 0 < amount <= AMOUNT_MAX_MINOR:
            raise RequestError("amount must be positive")
        fingerprint = self.keys.fingerprint(b"dispute-open:" + canonical)
        replay = await self._replay(ADMIN_SOURCE, key, fingerprint)
        if replay is not None:
            return replay
        if not identifier_ok(
            request.clearing_source, SOURCE_LEN_MAX, required=True
        ) or not identifier_ok(request.clearing_message_id, MESSAGE_ID_LEN_MAX, required=True):
            raise RequestError("clearing_source and clearing_message_id are required")
        clearing = await self.disputes.clearing(
            request.clearing_source, request.clearing_message_id
        )
        if clearing is None:
            raise NotFound(
                f"no posted clearing {request.clearing_source}/{request.clearing_message_id}"
            )
        if request.asset != clearing.asset:
            raise RequestError(f"the clearing was in {clearing.asset}, not {request.asset}")
        program = await self.catalog.program(clearing.program_id)
        on_ledger = _on_ledger(program)
        if request.provisional_credit and not on_ledger:
            raise PreconditionFailed(
                "provisional credit is for on-ledger programs; the client's ledger credits "
                "an off-ledger cardholder (it is notified of the dispute)"
            )
        plan = plan_open(amount, provisional_credit=request.provisional_credit)
        for _ in range(PLAN_ATTEMPTS_MAX):
            left = clearing.amount_minor - await self.disputes.disputed_minor(
                clearing.source, clearing.message_id
            )
            if amount > left:
                raise PreconditionFailed(
                    f"at most {left} of the clearing's {clearing.amount_minor} can still be "
                    "disputed"
                )
            now = self.clock.now()
            dispute = _new_dispute(clearing, amount, request.reason_code, plan, on_ledger, now)
            step = PlannedStep(
                dispute, DisputeStep.OPEN, None, plan, ADMIN_SOURCE, key, fingerprint,
                {"actor": actor, "reason_code": request.reason_code},
                opening=DisputeOpening(
                    program_id=clearing.program_id, account_id=clearing.account_id,
                    card_id=clearing.card_id, clearing_source=clearing.source,
                    clearing_message_id=clearing.message_id,
                    network_reference=clearing.network_reference, asset=clearing.asset,
                    reason_code=request.reason_code, on_ledger=on_ledger,
                    cleared_minor=clearing.amount_minor,
                ),
            )  # fmt: skip
            posted = await self._write(step, program, _admin_response(step, self.replies.opened))
            if posted.status is not PostStatus.CONFLICT:
                return self._stored(posted, fingerprint)
        raise InternalError("the dispute could not be opened: its clearing kept changing")

    async def resolve(self, request: ResolveDispute, canonical: bytes, *, actor: str) -> bytes:
        """The ResolveDisputeResponse's bytes. ``canonical``: the request's bytes without its
        idempotency key, for the fingerprint."""
        key = request.idempotency_key
        require_idempotency_key(key)
        if request.outcome is None:
            raise RequestError("outcome must be CARDHOLDER_WON or MERCHANT_WON")
        step = _OUTCOME_STEP[request.outcome]
        fingerprint = self.keys.fingerprint(b"dispute-resolve:" + canonical)
        replay = await self._replay(ADMIN_SOURCE, key, fingerprint)
        if replay is not None:
            return replay
        for _ in range(PLAN_ATTEMPTS_MAX):
            dispute = await self.disputes.get(request.dispute_id)
            try:
                planned = self._plan(dispute, step, ADMIN_SOURCE, key, fingerprint, actor=actor)
            except ImpossibleStep as exc:
                raise PreconditionFailed(str(exc)) from None
            program = await self.catalog.program(dispute.program_id)
            posted = await self._write(
                planned, program, _admin_response(planned, self.replies.resolved)
            )
            if posted.status is not PostStatus.CONFLICT:
                return self._stored(posted, fingerprint)
        raise InternalError("the dispute could not be resolved: it kept changing")

    async def get(self, dispute_id: str) -> tuple[DisputeRow, list[DisputeEventRow]]:
        """A dispute and its history, oldest step first."""
        dispute = await self.disputes.get(dispute_id)
        return dispute, await self.disputes.events(dispute.id)

    # -- the network ----------------------------------------------------------------------

    async def chargeback(self, request: DisputeNetworkStep, canonical: bytes) -> bytes:
        """The ChargebackResponse's bytes (``canonical``: the request's, for the fingerprint)."""
        return await self._network(
            request, canonical, DisputeStep.CHARGEBACK, self.replies.chargeback
        )

    async def represent(self, request: DisputeNetworkStep, canonical: bytes) -> bytes:
        """The RepresentResponse's bytes (``canonical``: the request's, for the fingerprint)."""
        return await self._network(
            request, canonical, DisputeStep.REPRESENTMENT, self.replies.represent
        )

    async def _network(
        self, request: DisputeNetworkStep, canonical: bytes, step: DisputeStep,
        encode: Callable[[NetworkStepAnswer], bytes],
    ) -> bytes:  # fmt: skip
        if (
            not identifier_ok(request.source, SOURCE_LEN_MAX, required=True)
            or not identifier_ok(request.message_id, MESSAGE_ID_LEN_MAX, required=True)
            or not identifier_ok(
                request.network_reference, NETWORK_REFERENCE_LEN_MAX, required=False
            )
            or not (request.reason_code == "" or _REASON_CODE.match(request.reason_code))
            or parse_id(request.dispute_id) is None
            or request.amount_minor is None
            or request.asset not in self.catalog.assets
        ):
            return encode(NetworkStepAnswer(Code.FORMAT_ERROR))
        fingerprint = self.keys.fingerprint(canonical)
        stored = await self.poster.holds.find_decision(request.source, request.message_id)
        if stored is not None:
            return (
                stored.response
                if stored.fingerprint == fingerprint
                else encode(NetworkStepAnswer(Code.DUPLICATE_MISMATCH))
            )
        for _ in range(PLAN_ATTEMPTS_MAX):
            dispute = await self.disputes.find(request.dispute_id)
            if dispute is None:
                posted = await self._refuse(request, fingerprint, encode, Code.NO_RECORD)
            elif (request.amount_minor, request.asset) != (dispute.amount_minor, dispute.asset):
                posted = await self._refuse(
                    request, fingerprint, encode, Code.INVALID_AMOUNT, dispute
                )
            else:
                try:
                    planned = self._plan(
                        dispute, step, request.source, request.message_id, fingerprint,
                        network_reference=request.network_reference,
                        reason_code=request.reason_code,
                    )  # fmt: skip
                except ImpossibleStep:
                    posted = await self._refuse(
                        request, fingerprint, encode, Code.INVALID_TRANSACTION, dispute
                    )
                else:
                    program = await self.catalog.program(dispute.program_id)
                    posted = await self._write(planned, program, _network_response(planned, encode))
            if posted.status is not PostStatus.CONFLICT:
                assert posted.decision is not None
                if posted.decision.fingerprint != fingerprint:
                    return encode(NetworkStepAnswer(Code.DUPLICATE_MISMATCH))
                return posted.decision.response
        raise InternalError("the dispute step could not be planned: the dispute kept changing")

    async def _refuse(
        self, request: DisputeNetworkStep, fingerprint: bytes,
        encode: Callable[[NetworkStepAnswer], bytes], response_code: str,
        dispute: DisputeRow | None = None,
    ) -> Posted:  # fmt: skip
        """Record a refused network step, so that its retries get the same answer (with the
        dispute's status when there is a dispute)."""
        assert request.amount_minor is not None  # checked before any step is planned
        decision_id = str(uuid.uuid4())
        status = DisputeStatus(dispute.status) if dispute is not None else None
        response = encode(NetworkStepAnswer(response_code, status, decision_id=decision_id))
        return await self.poster.record(
            refused_step(
                source=request.source, message_id=request.message_id, fingerprint=fingerprint,
                response=response, decision_id=decision_id, at=self.clock.now(),
                dispute=dispute, amount_minor=request.amount_minor, response_code=response_code,
            )
        )  # fmt: skip

    # -- shared ---------------------------------------------------------------------------

    def _plan(
        self, dispute: DisputeRow, step: DisputeStep, source: str, message_id: str,
        fingerprint: bytes, **detail: str,
    ) -> PlannedStep:  # fmt: skip
        current = DisputeStatus(dispute.status)
        plan = plan_step(
            DisputeState(current, dispute.amount_minor, dispute.provisional_minor), step
        )
        after = _replace(dispute, plan, self.clock.now())
        return PlannedStep(
            after, step, current, plan, source, message_id, fingerprint, dict(detail)
        )

    async def _replay(self, source: str, message_id: str, fingerprint: bytes) -> bytes | None:
        """The reply stored with an operator's step already made, as it was stored."""
        stored = await self.poster.holds.find_decision(source, message_id)
        if stored is None:
            return None
        if stored.fingerprint != fingerprint:
            raise PreconditionFailed("idempotency_key was used for another change")
        return stored.response

    @staticmethod
    def _stored(posted: Posted, fingerprint: bytes) -> bytes:
        assert posted.decision is not None
        if posted.decision.fingerprint != fingerprint:
            raise PreconditionFailed("idempotency_key was used for another change")
        return posted.decision.response

    async def _write(
        self, step: PlannedStep, program: ProgramRow,
        respond: Callable[[str, str, Balance | None], bytes],
    ) -> Posted:  # fmt: skip
        """Write one step: through the cache when it changes the cardholder's balance."""
        dispute = step.dispute
        movement = step_movement(step=step, program=program, new_id=_new_uuid)
        entry_id = movement.entries[0].id if movement.entries else None
        decision_id, notification_id = str(uuid.uuid4()), str(uuid.uuid4())
        change_of_balance = movement.change if movement.changes else None

        def build(balance: Balance | None) -> LedgerWrite:
            return step_write(
                step=step, program=program, movement=movement, decision_id=decision_id,
                notification_id=notification_id,
                response=respond(decision_id, entry_id or "", balance),
            )  # fmt: skip

        if change_of_balance is not None:

            def build_applied(applied: ApplyResult) -> LedgerWrite:
                return build(applied.balance)

            posted = await self.poster.post(
                change_of_balance, source=step.source, message_id=step.message_id,
                fingerprint=step.fingerprint, build=build_applied, program=program,
            )  # fmt: skip
            if posted.status is PostStatus.NO_BALANCE:
                raise PreconditionFailed(
                    f"the account holds no {dispute.asset} balance to credit or debit"
                )
            return posted
        return await self.poster.record(build(None))


def _new_uuid() -> str:
    return str(uuid.uuid4())


def _on_ledger(program: ProgramRow) -> bool:
    """Whether the program's card balances are on authswitch's ledger (on-ledger, or an
    off-ledger program keeping a shadow ledger)."""
    if program.mode == "ON_LEDGER":
        return True
    return program.routing is not None and program.routing.stand_in is StandInPolicy.SHADOW


def _new_dispute(
    clearing: ClearingRow, amount_minor: int, reason_code: str, plan: StepPlan,
    on_ledger: bool, now: datetime,
) -> DisputeRow:  # fmt: skip
    return DisputeRow(
        id=str(uuid.uuid4()), program_id=clearing.program_id, account_id=clearing.account_id,
        card_id=clearing.card_id, clearing_source=clearing.source,
        clearing_message_id=clearing.message_id, network_reference=clearing.network_reference,
        asset=clearing.asset, amount_minor=amount_minor,
        reason_code=reason_code, status=plan.status.value,
        provisional_minor=plan.provisional_minor, on_ledger=on_ledger, created_at=now,
        updated_at=now,
    )  # fmt: skip


def _replace(dispute: DisputeRow, plan: StepPlan, now: datetime) -> DisputeRow:
    return DisputeRow(
        id=dispute.id, program_id=dispute.program_id, account_id=dispute.account_id,
        card_id=dispute.card_id, clearing_source=dispute.clearing_source,
        clearing_message_id=dispute.clearing_message_id,
        network_reference=dispute.network_reference, asset=dispute.asset,
        amount_minor=dispute.amount_minor, reason_code=dispute.reason_code,
        status=plan.status.value, provisional_minor=plan.provisional_minor,
        on_ledger=dispute.on_ledger, created_at=dispute.created_at, updated_at=now,
    )  # fmt: skip


def _admin_response(
    step: PlannedStep, encode: Callable[[DisputeRow, Balance | None], bytes]
) -> Callable[[str, str, Balance | None], bytes]:
    def respond(_decision_id: str, _entry_id: str, balance: Balance | None) -> bytes:
        return encode(step.dispute, balance)

    return respond


def _network_response(
    step: PlannedStep, encode: Callable[[NetworkStepAnswer], bytes]
) -> Callable[[str, str, Balance | None], bytes]:
    def respond(decision_id: str, entry_id: str, _balance: Balance | None) -> bytes:
        status = DisputeStatus(step.dispute.status)
        return encode(
            NetworkStepAnswer(Code.APPROVED, status, entry_id=entry_id, decision_id=decision_id)
        )

    return respond
