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
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeVar

from authswitch.adapters.grpc.codec.common import balance_message
from authswitch.adapters.postgres.catalog import ProgramRow
from authswitch.adapters.postgres.disputes import ClearingRow, DisputeRow, DisputeStore, parse_id
from authswitch.adapters.redis.cache import ApplyResult
from authswitch.domain import postings
from authswitch.domain.authorization import (
    MESSAGE_ID_LEN_MAX,
    NETWORK_REFERENCE_LEN_MAX,
    SOURCE_LEN_MAX,
    identifier_ok,
)
from authswitch.domain.cardsec import CardKeys
from authswitch.domain.codes import Code, Reason
from authswitch.domain.disputes import (
    DisputeState,
    DisputeStatus,
    DisputeStep,
    ImpossibleStep,
    StepPlan,
    plan_open,
    plan_step,
)
from authswitch.domain.ledger import Balance
from authswitch.domain.money import AMOUNT_MAX_MINOR
from authswitch.domain.offledger import StandInPolicy
from authswitch.domain.records import (
    DecisionRecord,
    DisputeChange,
    DisputeOpening,
    LedgerWrite,
    Notification,
)
from authswitch.errors import InternalError, NotFound, PreconditionFailed, RequestError
from authswitch.service.admin import ADMIN_SOURCE, require_idempotency_key
from authswitch.service.catalog import Catalog
from authswitch.service.clock import Clock
from authswitch.service.posting import Posted, Poster, PostStatus
from authswitch.v1 import authorization_pb2 as pb
from authswitch.v1 import common_pb2, ledger_admin_pb2

__all__ = ["DisputeService", "dispute_message"]

PLAN_ATTEMPTS_MAX = 5
# Network reason codes: Visa "13.1", Mastercard "4853", Amex "C08".
_REASON_CODE = re.compile(r"^[A-Za-z0-9.]{1,8}$")

_STATUS = {s: common_pb2.DisputeStatus.Value(f"DISPUTE_STATUS_{s.value}") for s in DisputeStatus}


class _Response(Protocol):
    def SerializeToString(self, *, deterministic: bool = ...) -> bytes: ...  # noqa: N802


_N = TypeVar("_N", pb.ChargebackResponse, pb.RepresentResponse)
_A = TypeVar("_A", ledger_admin_pb2.OpenDisputeResponse, ledger_admin_pb2.ResolveDisputeResponse)


def dispute_message(row: DisputeRow) -> ledger_admin_pb2.Dispute:
    message = ledger_admin_pb2.Dispute(
        dispute_id=row.id,
        program_id=row.program_id,
        account_id=row.account_id,
        card_id=row.card_id or "",
        clearing_source=row.clearing_source,
        clearing_message_id=row.clearing_message_id,
        network_reference=row.network_reference,
        amount=common_pb2.Money(amount_minor=row.amount_minor, asset=row.asset),
        reason_code=row.reason_code,
        status=_STATUS[DisputeStatus(row.status)],
        provisional_credit=common_pb2.Money(amount_minor=row.provisional_minor, asset=row.asset),
    )
    message.created_at.FromDatetime(row.created_at)
    message.updated_at.FromDatetime(row.updated_at)
    return message


@dataclass(frozen=True, slots=True)
class _Step:
    """A step about to be written: what it is, who asked, and how it is answered."""

    dispute: DisputeRow  # as it will be after the step
    step: DisputeStep
    from_status: DisputeStatus | None
    plan: StepPlan
    source: str
    message_id: str
    fingerprint: bytes
    detail: dict[str, object]
    opening: DisputeOpening | None = None


class DisputeService:
    def __init__(
        self,
        *,
        keys: CardKeys,
        catalog: Catalog,
        disputes: DisputeStore,
        poster: Poster,
        clock: Clock,
    ) -> None:
        self.keys = keys
        self.catalog = catalog
        self.disputes = disputes
        self.poster = poster
        self.clock = clock

    # -- operators ------------------------------------------------------------------------

    async def open(
        self, request: ledger_admin_pb2.OpenDisputeRequest, *, actor: str
    ) -> ledger_admin_pb2.OpenDisputeResponse:
        key = request.idempotency_key
        require_idempotency_key(key)
        if not _REASON_CODE.match(request.reason_code):
            raise RequestError("reason_code must be 1 to 8 letters, digits or dots")
        if not request.HasField("amount") or not 0 < request.amount.amount_minor <= (
            AMOUNT_MAX_MINOR
        ):
            raise RequestError("amount must be positive")
        fingerprint = self.keys.fingerprint(b"dispute-open:" + _canonical(request))
        replay = await self._replay(
            ADMIN_SOURCE, key, fingerprint, ledger_admin_pb2.OpenDisputeResponse.FromString
        )
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
        amount = request.amount.amount_minor
        if request.amount.asset != clearing.asset:
            raise RequestError(f"the clearing was in {clearing.asset}, not {request.amount.asset}")
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
            dispute = _new_dispute(clearing, request, plan, on_ledger, now)
            step = _Step(
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
            posted = await self._write(step, program, _admin_response(step, _open_response))
            if posted.status is not PostStatus.CONFLICT:
                return self._stored(posted, fingerprint, ledger_admin_pb2.OpenDisputeResponse)
        raise InternalError("the dispute could not be opened: its clearing kept changing")

    async def resolve(
        self, request: ledger_admin_pb2.ResolveDisputeRequest, *, actor: str
    ) -> ledger_admin_pb2.ResolveDisputeResponse:
        key = request.idempotency_key
        require_idempotency_key(key)
        outcomes = {
            ledger_admin_pb2.DISPUTE_OUTCOME_CARDHOLDER_WON: DisputeStep.CARDHOLDER_WON,
            ledger_admin_pb2.DISPUTE_OUTCOME_MERCHANT_WON: DisputeStep.MERCHANT_WON,
        }
        step = outcomes.get(request.outcome)
        if step is None:
            raise RequestError("outcome must be CARDHOLDER_WON or MERCHANT_WON")
        fingerprint = self.keys.fingerprint(b"dispute-resolve:" + _canonical(request))
        replay = await self._replay(
            ADMIN_SOURCE, key, fingerprint, ledger_admin_pb2.ResolveDisputeResponse.FromString
        )
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
                planned, program, _admin_response(planned, _resolve_response)
            )
            if posted.status is not PostStatus.CONFLICT:
                return self._stored(posted, fingerprint, ledger_admin_pb2.ResolveDisputeResponse)
        raise InternalError("the dispute could not be resolved: it kept changing")

    async def get(self, dispute_id: str) -> ledger_admin_pb2.GetDisputeResponse:
        dispute = await self.disputes.get(dispute_id)
        response = ledger_admin_pb2.GetDisputeResponse(dispute=dispute_message(dispute))
        for event in await self.disputes.events(dispute.id):
            message = response.events.add(
                step=event.step,
                from_status=(_STATUS[DisputeStatus(event.from_status)] if event.from_status else 0),
                to_status=_STATUS[DisputeStatus(event.to_status)],
                amount=common_pb2.Money(amount_minor=event.amount_minor, asset=dispute.asset),
                entry_id=event.entry_id or "",
                source=event.source,
                message_id=event.message_id,
            )
            message.created_at.FromDatetime(event.created_at)
        return response

    # -- the network ----------------------------------------------------------------------

    async def chargeback(
        self, request: pb.ChargebackRequest, canonical: bytes
    ) -> pb.ChargebackResponse:
        return await self._network(
            request, canonical, DisputeStep.CHARGEBACK, pb.ChargebackResponse,
            pb.ChargebackResponse.FromString,
        )  # fmt: skip

    async def represent(
        self, request: pb.RepresentRequest, canonical: bytes
    ) -> pb.RepresentResponse:
        return await self._network(
            request, canonical, DisputeStep.REPRESENTMENT, pb.RepresentResponse,
            pb.RepresentResponse.FromString,
        )  # fmt: skip

    async def _network(
        self, request: pb.ChargebackRequest | pb.RepresentRequest, canonical: bytes,
        step: DisputeStep, cls: type[_N], parse: Callable[[bytes], _N],
    ) -> _N:  # fmt: skip
        if (
            not identifier_ok(request.source, SOURCE_LEN_MAX, required=True)
            or not identifier_ok(request.message_id, MESSAGE_ID_LEN_MAX, required=True)
            or not identifier_ok(
                request.network_reference, NETWORK_REFERENCE_LEN_MAX, required=False
            )
            or not (request.reason_code == "" or _REASON_CODE.match(request.reason_code))
            or parse_id(request.dispute_id) is None
            or not request.HasField("amount")
            or request.amount.asset not in self.catalog.assets
        ):
            return cls(response_code=Code.FORMAT_ERROR)
        fingerprint = self.keys.fingerprint(canonical)
        stored = await self.poster.holds.find_decision(request.source, request.message_id)
        if stored is not None:
            return (
                parse(stored.response)
                if stored.fingerprint == fingerprint
                else cls(response_code=Code.DUPLICATE_MISMATCH)
            )
        for _ in range(PLAN_ATTEMPTS_MAX):
            dispute = await self.disputes.find(request.dispute_id)
            if dispute is None:
                posted = await self._refuse(request, fingerprint, cls(response_code=Code.NO_RECORD))
            elif (request.amount.amount_minor, request.amount.asset) != (
                dispute.amount_minor, dispute.asset,
            ):  # fmt: skip
                posted = await self._refuse(
                    request, fingerprint,
                    cls(
                        response_code=Code.INVALID_AMOUNT,
                        status=_STATUS[DisputeStatus(dispute.status)],
                    ),
                    dispute,
                )  # fmt: skip
            else:
                try:
                    planned = self._plan(
                        dispute, step, request.source, request.message_id, fingerprint,
                        network_reference=request.network_reference,
                        reason_code=request.reason_code,
                    )  # fmt: skip
                except ImpossibleStep:
                    posted = await self._refuse(
                        request, fingerprint,
                        cls(
                            response_code=Code.INVALID_TRANSACTION,
                            status=_STATUS[DisputeStatus(dispute.status)],
                        ),
                        dispute,
                    )  # fmt: skip
                else:
                    program = await self.catalog.program(dispute.program_id)
                    posted = await self._write(planned, program, _network_response(planned, cls))
            if posted.status is not PostStatus.CONFLICT:
                assert posted.decision is not None
                if posted.decision.fingerprint != fingerprint:
                    return cls(response_code=Code.DUPLICATE_MISMATCH)
                return parse(posted.decision.response)
        raise InternalError("the dispute step could not be planned: the dispute kept changing")

    async def _refuse(
        self, request: pb.ChargebackRequest | pb.RepresentRequest, fingerprint: bytes,
        response: _Response, dispute: DisputeRow | None = None,
    ) -> Posted:  # fmt: skip
        """Record a refused network step, so that its retries get the same answer."""
        decision_id = str(uuid.uuid4())
        setattr(response, "decision_id", decision_id)  # noqa: B010 - either response type
        record = _decision(
            request.source, request.message_id, fingerprint, response, decision_id,
            self.clock.now(), dispute, amount_minor=request.amount.amount_minor,
            response_code=getattr(response, "response_code", ""),
        )  # fmt: skip
        return await self.poster.record(LedgerWrite(decision=record))

    # -- shared ---------------------------------------------------------------------------

    def _plan(
        self, dispute: DisputeRow, step: DisputeStep, source: str, message_id: str,
        fingerprint: bytes, **detail: str,
    ) -> _Step:  # fmt: skip
        current = DisputeStatus(dispute.status)
        plan = plan_step(
            DisputeState(current, dispute.amount_minor, dispute.provisional_minor), step
        )
        after = _replace(dispute, plan, self.clock.now())
        return _Step(after, step, current, plan, source, message_id, fingerprint, dict(detail))

    async def _replay(
        self, source: str, message_id: str, fingerprint: bytes, parse: Callable[[bytes], _A]
    ) -> _A | None:
        stored = await self.poster.holds.find_decision(source, message_id)
        if stored is None:
            return None
        if stored.fingerprint != fingerprint:
            raise PreconditionFailed("idempotency_key was used for another change")
        return parse(stored.response)

    @staticmethod
    def _stored(posted: Posted, fingerprint: bytes, cls: type[_A]) -> _A:
        assert posted.decision is not None
        if posted.decision.fingerprint != fingerprint:
            raise PreconditionFailed("idempotency_key was used for another change")
        return cls.FromString(posted.decision.response)

    async def _write(
        self, step: _Step, program: ProgramRow,
        respond: Callable[[str, str, Balance | None], _Response],
    ) -> Posted:  # fmt: skip
        """Write one step: through the cache when it changes the cardholder's balance."""
        dispute = step.dispute
        now = dispute.updated_at
        movement = _step_movement(step, program)
        entry_id = movement.entries[0].id if movement.entries else None
        amount = dispute.amount_minor
        change = _step_change(step, entry_id)
        note = Notification(
            id=str(uuid.uuid4()), program_id=program.id, kind="DISPUTE",
            payload=_step_payload(step, entry_id), created_at=now,
            account_id=dispute.account_id, card_id=dispute.card_id, sinks=program.sinks,
        )  # fmt: skip
        decision_id = str(uuid.uuid4())
        change_of_balance = movement.change if movement.changes else None

        def build(balance: Balance | None) -> LedgerWrite:
            response = respond(decision_id, entry_id or "", balance)
            record = _decision(
                step.source, step.message_id, step.fingerprint, response, decision_id, now,
                dispute, amount_minor=amount,
            )  # fmt: skip
            return LedgerWrite(
                decision=record,
                entries=movement.entries,
                balance_changes=movement.changes,
                notifications=(note,),
                disputes=(change,),
            )

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


def _step_movement(step: _Step, program: ProgramRow) -> postings.Movement:
    """What a step moves on the ledger: nothing off-ledger or when it moves no money."""
    dispute, plan = step.dispute, step.plan
    if not (dispute.on_ledger and plan.moves_money):
        return postings.Movement(())
    return postings.dispute_step(
        dispute.account_id, dispute.asset, f"DISPUTE_{step.step.value}",
        postings.Origin(
            str(uuid.uuid4()), program.id, dispute.updated_at, step.source, step.message_id,
            f"dispute {dispute.id} {step.step.value.lower().replace('_', ' ')}",
            dispute.network_reference, dispute.card_id,
        ),
        (
            (dispute.account_id, plan.customer_minor),
            (program.clearing_account_id, plan.clearing_minor),
            (program.dispute_account_id, plan.disputes_minor),
        ),
        customer_minor=plan.customer_minor,
    )  # fmt: skip


def _step_payload(step: _Step, entry_id: str | None) -> dict[str, object]:
    """The DISPUTE notification of a step."""
    dispute = step.dispute
    return {
        "dispute_id": dispute.id, "step": step.step.value,
        "from_status": step.from_status.value if step.from_status else "",
        "to_status": dispute.status, "amount_minor": dispute.amount_minor,
        "asset": dispute.asset, "provisional_minor": dispute.provisional_minor,
        # What the step does to the cardholder's balance, wherever that is kept: an
        # off-ledger client applies it to its own ledger (docs/client-contract.md).
        "customer_minor": step.plan.customer_minor,
        "reason_code": dispute.reason_code, "network_reference": dispute.network_reference,
        "clearing_source": dispute.clearing_source,
        "clearing_message_id": dispute.clearing_message_id, "entry_id": entry_id or "",
    }  # fmt: skip


def _step_change(step: _Step, entry_id: str | None) -> DisputeChange:
    """The dispute's row and history change of a step."""
    dispute = step.dispute
    return DisputeChange(
        dispute_id=dispute.id, step=step.step.value,
        from_status=step.from_status.value if step.from_status else None,
        to_status=dispute.status, amount_minor=dispute.amount_minor,
        provisional_minor=dispute.provisional_minor, source=step.source,
        message_id=step.message_id, at=dispute.updated_at, entry_id=entry_id,
        detail=step.detail, opening=step.opening,
    )  # fmt: skip


def _canonical(
    request: ledger_admin_pb2.OpenDisputeRequest | ledger_admin_pb2.ResolveDisputeRequest,
) -> bytes:
    """The request without its idempotency key, for the fingerprint."""
    copy = type(request).FromString(request.SerializeToString(deterministic=True))
    copy.idempotency_key = ""
    return copy.SerializeToString(deterministic=True)


def _on_ledger(program: ProgramRow) -> bool:
    """Whether the program's card balances are on authswitch's ledger (on-ledger, or an
    off-ledger program keeping a shadow ledger)."""
    if program.mode == "ON_LEDGER":
        return True
    return program.routing is not None and program.routing.stand_in is StandInPolicy.SHADOW


def _new_dispute(
    clearing: ClearingRow, request: ledger_admin_pb2.OpenDisputeRequest, plan: StepPlan,
    on_ledger: bool, now: datetime,
) -> DisputeRow:  # fmt: skip
    return DisputeRow(
        id=str(uuid.uuid4()), program_id=clearing.program_id, account_id=clearing.account_id,
        card_id=clearing.card_id, clearing_source=clearing.source,
        clearing_message_id=clearing.message_id, network_reference=clearing.network_reference,
        asset=clearing.asset, amount_minor=request.amount.amount_minor,
        reason_code=request.reason_code, status=plan.status.value,
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


def _decision(
    source: str, message_id: str, fingerprint: bytes, response: _Response, decision_id: str,
    now: datetime, dispute: DisputeRow | None, *, amount_minor: int,
    response_code: str = Code.APPROVED,
) -> DecisionRecord:  # fmt: skip
    approved = response_code == Code.APPROVED
    return DecisionRecord(
        id=decision_id, source=source, message_id=message_id, kind="DISPUTE",
        fingerprint=fingerprint, card_id=dispute.card_id if dispute else None,
        account_id=dispute.account_id if dispute else None,
        asset=dispute.asset if dispute else None, amount_minor=amount_minor,
        approved_minor=amount_minor if approved else 0, fee_minor=0,
        response_code=response_code,
        reason=int(Reason.APPROVED if approved else Reason.TRANSACTION_NOT_PERMITTED),
        response=response.SerializeToString(), created_at=now,
    )  # fmt: skip


def _open_response(
    dispute: ledger_admin_pb2.Dispute, balance: common_pb2.Balance | None
) -> ledger_admin_pb2.OpenDisputeResponse:
    return ledger_admin_pb2.OpenDisputeResponse(dispute=dispute, balance=balance)


def _resolve_response(
    dispute: ledger_admin_pb2.Dispute, balance: common_pb2.Balance | None
) -> ledger_admin_pb2.ResolveDisputeResponse:
    return ledger_admin_pb2.ResolveDisputeResponse(dispute=dispute, balance=balance)


def _admin_response(
    step: _Step,
    make: Callable[[ledger_admin_pb2.Dispute, common_pb2.Balance | None], _A],
) -> Callable[[str, str, Balance | None], _A]:
    def respond(_decision_id: str, _entry_id: str, balance: Balance | None) -> _A:
        message = balance_message(step.dispute.asset, balance) if balance is not None else None
        return make(dispute_message(step.dispute), message)

    return respond


def _network_response(step: _Step, cls: type[_N]) -> Callable[[str, str, Balance | None], _N]:
    def respond(decision_id: str, entry_id: str, _balance: Balance | None) -> _N:
        return cls(
            response_code=Code.APPROVED, status=_STATUS[DisputeStatus(step.dispute.status)],
            decision_id=decision_id, entry_id=entry_id,
        )  # fmt: skip

    return respond
