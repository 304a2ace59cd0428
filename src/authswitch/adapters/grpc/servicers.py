"""gRPC servicers: translate protobuf messages to domain calls and back. No rules here."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from authswitch import metrics
from authswitch.adapters.grpc.access import CALLER
from authswitch.adapters.grpc.admission import OVERLOADED_DETAILS, Admission
from authswitch.adapters.grpc.bounded import merchant_too_long
from authswitch.adapters.grpc.codec.admin import (
    AdminReplies,
    account_message,
    card_message,
    client_message,
    credit_of,
    debit_of,
    delivery_message,
    fx_rate_message,
    history_entry_message,
    hold_message,
    holder_messages,
    program_message,
    routing_of,
    transfer_of,
)
from authswitch.adapters.grpc.codec.authorization import authorization_request_of
from authswitch.adapters.grpc.codec.charges import (
    fee_rule_message,
    fee_rule_of,
    limit_message,
    limit_of,
)
from authswitch.adapters.grpc.codec.common import balance_message
from authswitch.adapters.grpc.codec.disputes import (
    dispute_history_message,
    keyless_bytes,
    network_step_of,
    open_dispute_of,
    resolve_dispute_of,
)
from authswitch.adapters.grpc.codec.files import new_file_schedule_of, schedule_message
from authswitch.adapters.grpc.codec.lifecycle import (
    advice_of,
    clearing_of,
    original_credit_of,
    refund_of,
    reversal_of,
)
from authswitch.adapters.grpc.codec.tokens import (
    card_tokens_message,
    provision_message,
    provision_token_of,
    token_policy_of,
)
from authswitch.adapters.grpc.controls import (
    control_subject,
    controls_from_message,
    version_message,
)
from authswitch.adapters.grpc.errors import grpc_errors
from authswitch.adapters.grpc.paging import fill_page, page_size, read_page_token
from authswitch.domain.authorization import (
    CardStatus,
    PinTriesExceededAction,
)
from authswitch.domain.controls import in_force, next_scheduled
from authswitch.domain.reports import valid_prefix
from authswitch.domain.tokens import TokenStatus
from authswitch.errors import Expired, RequestError, StoreUnavailable
from authswitch.futures import cancel_requested
from authswitch.service.accounts import AccountService
from authswitch.service.admin import AdminService
from authswitch.service.authorization import AuthorizationService
from authswitch.service.disputes import DisputeService
from authswitch.service.files import FileSchedules
from authswitch.service.lifecycle import LifecycleService
from authswitch.v1 import (
    authorization_pb2,
    common_pb2,
    ledger_admin_pb2,
)

__all__ = [
    "AuthorizationServicer",
    "LedgerAdminServicer",
    "Services",
]

Context = grpc.aio.ServicerContext[Any, Any]

_ACCOUNT_TYPES = {
    common_pb2.ACCOUNT_TYPE_SINGLE: "SINGLE",
    common_pb2.ACCOUNT_TYPE_MULTI_CURRENCY: "MULTI_CURRENCY",
}
_MODES = {
    common_pb2.LEDGER_MODE_ON_LEDGER: "ON_LEDGER",
    common_pb2.LEDGER_MODE_OFF_LEDGER: "OFF_LEDGER",
}


def _actor(context: Context) -> str:
    """Who made an admin call, for the audit log: the authenticated caller, and the person
    the calling tool says it acts for (x-authswitch-actor), which only adds detail."""
    caller = CALLER.get()
    for key, value in context.invocation_metadata() or ():
        if key == "x-authswitch-actor" and isinstance(value, str):
            return f"{caller}/{value[:64]}"
    return caller


def _pin_tries_exceeded_action(value: int) -> PinTriesExceededAction:
    if value == 0:
        return PinTriesExceededAction.BLOCK_CARD
    try:
        return PinTriesExceededAction(value)
    except ValueError:
        raise RequestError("pin_tries_exceeded_action must be a known action") from None


def _card_status(value: int, *, default: CardStatus | None = None) -> CardStatus:
    if value == common_pb2.CARD_STATUS_UNSPECIFIED and default is not None:
        return default
    try:
        return CardStatus(value)
    except ValueError:
        raise RequestError("status must be a known card status") from None


class Services:
    """The services the servicers call. Empty while the application starts: the port is
    open (health answers NOT_SERVING) before the stores are, and calls get UNAVAILABLE."""

    def __init__(self) -> None:
        self.authorization: AuthorizationService | None = None
        self.lifecycle: LifecycleService | None = None
        self.admin: AdminService | None = None
        self.disputes: DisputeService | None = None
        self.files: FileSchedules | None = None

    def ready(self) -> bool:
        return self.authorization is not None


class _Ready:
    """Servicer access to the services, refused until they are ready."""

    def __init__(self, services: Services) -> None:
        self._services = services

    @property
    def lifecycle(self) -> LifecycleService:
        if self._services.lifecycle is None:
            raise StoreUnavailable("starting")
        return self._services.lifecycle

    @property
    def disputes(self) -> DisputeService:
        if self._services.disputes is None:
            raise StoreUnavailable("starting")
        return self._services.disputes

    @property
    def files(self) -> FileSchedules:
        if self._services.files is None:
            raise StoreUnavailable("starting")
        return self._services.files


class AuthorizationServicer(_Ready):
    def __init__(self, services: Services, *, admission: Admission | None = None) -> None:
        super().__init__(services)
        self.admission = admission or Admission(ceiling=256, floor=64, latency_target_s=0)

    @property
    def service(self) -> AuthorizationService:
        if self._services.authorization is None:
            raise StoreUnavailable("starting")
        return self._services.authorization

    async def Authorize(  # noqa: N802 - gRPC method name
        self, request: authorization_pb2.AuthorizeRequest, context: Context
    ) -> authorization_pb2.AuthorizeResponse:
        """The message-level form of :meth:`authorize_wire` (the server registers that)."""
        wire = await self.authorize_wire(request.SerializeToString(), context)
        return authorization_pb2.AuthorizeResponse.FromString(wire)

    async def authorize_wire(self, data: bytes, context: Context) -> bytes:
        """Authorize, bytes in and bytes out: the request is parsed once here, and the
        response goes back as the bytes stored with the decision (never parsed back).

        Never raises for a fault: every fault is answered with a response code (96 at
        worst). Before the server is ready the call is refused UNAVAILABLE, so the gateway
        retries another replica."""
        service = self._services.authorization
        if service is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "starting")
            raise AssertionError("unreachable")  # abort raises
        # Admission: past the limit a call is refused at once, before any work, so that
        # calls piling up on a slow store are bounded and the gateway can try another
        # replica or stand in while there is time.
        admission = self.admission
        if not admission.try_enter():
            metrics.SHED.inc()
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, OVERLOADED_DETAILS)
        # A call whose deadline has passed is never decided: its caller has given up, and
        # whatever it retries with will be decided instead.
        try:
            remaining_s = context.time_remaining()
            if remaining_s is not None and remaining_s <= 0:
                metrics.EXPIRED.inc()
                await context.abort(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    "the call's deadline passed before a decision",
                )
            try:
                request = authorization_pb2.AuthorizeRequest.FromString(data)
            except DecodeError:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the request does not parse")
                raise AssertionError("unreachable") from None
            if merchant_too_long(request.merchant) is not None:  # the others: validate()
                return service.format_error(request.transaction_type)
            try:
                response = await service.authorize(
                    authorization_request_of(request),
                    request.SerializeToString(deterministic=True),
                    deadline_s=None if remaining_s is None else time.monotonic() + remaining_s,
                    waits=admission,
                )
            except Expired as exc:
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))
                raise AssertionError("unreachable") from None
        finally:
            admission.leave()
        if cancel_requested():  # the caller went away; its decision was made regardless
            raise asyncio.CancelledError
        return response

    # The network retries an unacknowledged advice, reversal or clearing, so a fault on
    # these is a gRPC error (UNAVAILABLE) rather than a response code.

    @grpc_errors
    async def Advise(  # noqa: N802
        self, request: authorization_pb2.AdviseRequest, context: Context
    ) -> bytes:
        return await self.lifecycle.advise(
            advice_of(request), request.SerializeToString(deterministic=True)
        )

    @grpc_errors
    async def Reverse(  # noqa: N802
        self, request: authorization_pb2.ReverseRequest, context: Context
    ) -> bytes:
        return await self.lifecycle.reverse(
            reversal_of(request), request.SerializeToString(deterministic=True)
        )

    @grpc_errors
    async def Clear(  # noqa: N802
        self, request: authorization_pb2.ClearRequest, context: Context
    ) -> bytes:
        return await self.lifecycle.clear(
            clearing_of(request), request.SerializeToString(deterministic=True)
        )

    @grpc_errors
    async def Refund(  # noqa: N802
        self, request: authorization_pb2.RefundRequest, context: Context
    ) -> bytes:
        return await self.lifecycle.refund(
            refund_of(request), request.SerializeToString(deterministic=True)
        )

    @grpc_errors
    async def ProvisionToken(  # noqa: N802
        self, request: authorization_pb2.ProvisionTokenRequest, context: Context
    ) -> authorization_pb2.ProvisionTokenResponse:
        return provision_message(await self.service.tokens.provision(provision_token_of(request)))

    @grpc_errors
    async def Credit(  # noqa: N802
        self, request: authorization_pb2.CreditRequest, context: Context
    ) -> bytes:
        return await self.lifecycle.credit(
            original_credit_of(request), request.SerializeToString(deterministic=True)
        )

    @grpc_errors
    async def Chargeback(  # noqa: N802
        self, request: authorization_pb2.ChargebackRequest, context: Context
    ) -> bytes:
        return await self.disputes.chargeback(
            network_step_of(request), request.SerializeToString(deterministic=True)
        )

    @grpc_errors
    async def Represent(  # noqa: N802
        self, request: authorization_pb2.RepresentRequest, context: Context
    ) -> bytes:
        return await self.disputes.represent(
            network_step_of(request), request.SerializeToString(deterministic=True)
        )


class LedgerAdminServicer(_Ready):
    @property
    def service(self) -> AdminService:
        if self._services.admin is None:
            raise StoreUnavailable("starting")
        return self._services.admin

    @grpc_errors
    async def CreateClient(  # noqa: N802
        self, request: ledger_admin_pb2.CreateClientRequest, context: Context
    ) -> ledger_admin_pb2.CreateClientResponse:
        client_id = await self.service.create_client(request.name, actor=_actor(context))
        return ledger_admin_pb2.CreateClientResponse(client_id=client_id)

    @grpc_errors
    async def ListClients(  # noqa: N802
        self, request: ledger_admin_pb2.ListClientsRequest, context: Context
    ) -> ledger_admin_pb2.ListClientsResponse:
        limit = page_size(request.page_size, default=100, maximum=1_000)
        after = _time_key(request.page_token, "clients")
        rows = await self.service.catalog_store.clients(limit=limit + 1, after=after)
        response = ledger_admin_pb2.ListClientsResponse()
        items = [(client_message(r), (r.created_at.isoformat(), r.client_id)) for r in rows]
        response.next_page_token = fill_page(response.clients, items, limit=limit, kind="clients")
        return response

    @grpc_errors
    async def GetClient(  # noqa: N802
        self, request: ledger_admin_pb2.GetClientRequest, context: Context
    ) -> ledger_admin_pb2.GetClientResponse:
        row = await self.service.catalog_store.client(request.client_id)
        return ledger_admin_pb2.GetClientResponse(client=client_message(row))

    @grpc_errors
    async def ListPrograms(  # noqa: N802
        self, request: ledger_admin_pb2.ListProgramsRequest, context: Context
    ) -> ledger_admin_pb2.ListProgramsResponse:
        limit = page_size(request.page_size, default=100, maximum=1_000)
        after = _time_key(request.page_token, "programs")
        rows = await self.service.catalog_store.programs(
            client_id=request.client_id, limit=limit + 1, after=after
        )
        items = [(program_message(r), (r.created_at.isoformat(), r.program_id)) for r in rows]
        response = ledger_admin_pb2.ListProgramsResponse()
        response.next_page_token = fill_page(response.programs, items, limit=limit, kind="programs")
        return response

    @grpc_errors
    async def CreateProgram(  # noqa: N802
        self, request: ledger_admin_pb2.CreateProgramRequest, context: Context
    ) -> ledger_admin_pb2.CreateProgramResponse:
        mode = _MODES.get(request.mode)
        if mode is None:
            raise RequestError("mode must be LEDGER_MODE_ON_LEDGER or LEDGER_MODE_OFF_LEDGER")
        program_id = await self.service.create_program(
            request.client_id, request.name, mode, request.time_zone, request.country,
            actor=_actor(context),
        )  # fmt: skip
        return ledger_admin_pb2.CreateProgramResponse(program_id=program_id)

    @grpc_errors
    async def CreateProduct(  # noqa: N802
        self, request: ledger_admin_pb2.CreateProductRequest, context: Context
    ) -> ledger_admin_pb2.CreateProductResponse:
        account_types = [_ACCOUNT_TYPES.get(t, "?") for t in request.account_types]
        product_id = await self.service.create_product(
            request.program_id,
            request.name,
            account_types=account_types,
            assets=list(request.assets),
            allowed_transaction_types=list(request.allowed_transaction_types),
            allowed_channels=list(request.allowed_channels),
            blocked_mccs=list(request.blocked_mccs),
            pin_tries_max=request.pin_tries_max,
            hold_validity_days=request.hold_validity_days,
            pin_tries_exceeded_action=_pin_tries_exceeded_action(request.pin_tries_exceeded_action),
            hold_validity_by_mcc=dict(request.hold_validity_days_by_mcc),
            actor=_actor(context),
        )
        return ledger_admin_pb2.CreateProductResponse(product_id=product_id)

    @grpc_errors
    async def CreateAccount(  # noqa: N802
        self, request: ledger_admin_pb2.CreateAccountRequest, context: Context
    ) -> ledger_admin_pb2.CreateAccountResponse:
        account_type = _ACCOUNT_TYPES.get(request.account_type, "")
        if request.account_type and not account_type:
            raise RequestError("account_type must be a known account type")
        account_id = await self.service.create_account(
            request.product_id,
            account_type,
            list(request.assets),
            name=request.name,
            reference=request.reference,
            profile_id=request.profile_id,
            customer_ids=list(request.customer_ids),
            actor=_actor(context),
        )
        return ledger_admin_pb2.CreateAccountResponse(account_id=account_id)

    @grpc_errors
    async def GetAccount(  # noqa: N802
        self, request: ledger_admin_pb2.GetAccountRequest, context: Context
    ) -> ledger_admin_pb2.GetAccountResponse:
        row = await self.service.ledger.account_details(request.account_id)
        balances = await self.service.balances(request.account_id)
        return account_message(row, balances)

    @grpc_errors
    async def CreateCard(  # noqa: N802
        self, request: ledger_admin_pb2.CreateCardRequest, context: Context
    ) -> ledger_admin_pb2.CreateCardResponse:
        created = await self.service.create_card(
            request.account_id,
            request.pan,
            request.expiry,
            _card_status(request.status, default=CardStatus.ACTIVE),
            request.pin,
            actor=_actor(context),
        )
        return ledger_admin_pb2.CreateCardResponse(
            card_id=created.card_id, bin=created.bin, last_four=created.last_four, cvv2=created.cvv2
        )

    @grpc_errors
    async def SetCardPin(  # noqa: N802
        self, request: ledger_admin_pb2.SetCardPinRequest, context: Context
    ) -> ledger_admin_pb2.SetCardPinResponse:
        await self.service.set_card_pin(request.card_id, request.pin, actor=_actor(context))
        return ledger_admin_pb2.SetCardPinResponse()

    @grpc_errors
    async def ChangeCardStatus(  # noqa: N802
        self, request: ledger_admin_pb2.ChangeCardStatusRequest, context: Context
    ) -> ledger_admin_pb2.ChangeCardStatusResponse:
        status = _card_status(request.status)
        previous = await self.service.change_card_status(
            request.card_id, status, request.reason, actor=_actor(context)
        )
        return ledger_admin_pb2.ChangeCardStatusResponse(
            previous_status=previous.value,  # type: ignore[arg-type]
            status=status.value,  # type: ignore[arg-type]
        )

    @grpc_errors
    async def CreditAccount(  # noqa: N802
        self, request: ledger_admin_pb2.CreditAccountRequest, context: Context
    ) -> bytes:
        fingerprint = self.service.keys.fingerprint(request.SerializeToString(deterministic=True))
        return await self.service.adjust(
            credit_of(request), fingerprint=fingerprint, actor=_actor(context)
        )

    @grpc_errors
    async def DebitAccount(  # noqa: N802
        self, request: ledger_admin_pb2.DebitAccountRequest, context: Context
    ) -> bytes:
        fingerprint = self.service.keys.fingerprint(request.SerializeToString(deterministic=True))
        return await self.service.adjust(
            debit_of(request), fingerprint=fingerprint, actor=_actor(context)
        )

    @grpc_errors
    async def GetBalances(  # noqa: N802
        self, request: ledger_admin_pb2.GetBalancesRequest, context: Context
    ) -> ledger_admin_pb2.GetBalancesResponse:
        balances = await self.service.balances(request.account_id)
        return ledger_admin_pb2.GetBalancesResponse(
            account_id=request.account_id,
            balances=[balance_message(asset, b) for asset, b in balances.items()],
        )

    @grpc_errors
    async def ReleaseHold(  # noqa: N802
        self, request: ledger_admin_pb2.ReleaseHoldRequest, context: Context
    ) -> bytes:
        return await self.lifecycle.release_hold(
            request.hold_id, request.reason, request.idempotency_key, actor=_actor(context)
        )

    @grpc_errors
    async def ListHolds(  # noqa: N802
        self, request: ledger_admin_pb2.ListHoldsRequest, context: Context
    ) -> ledger_admin_pb2.ListHoldsResponse:
        limit = page_size(request.page_size, default=100, maximum=1_000)
        rows = await self.service.holds.holds_of_account(
            request.account_id, open_only=request.open_only, limit=limit + 1,
            before=_time_key(request.page_token, "holds"),
        )  # fmt: skip
        response = ledger_admin_pb2.ListHoldsResponse()
        converted = await self.service.fx.conversions([(h.source, h.message_id) for h in rows])
        items = []
        for h in rows:
            message = hold_message(h, converted.get((h.source, h.message_id)))
            items.append((message, (h.created_at.isoformat(), h.id)))
        response.next_page_token = fill_page(response.holds, items, limit=limit, kind="holds")
        return response

    @grpc_errors
    async def ListAccountHistory(  # noqa: N802
        self, request: ledger_admin_pb2.ListAccountHistoryRequest, context: Context
    ) -> ledger_admin_pb2.ListAccountHistoryResponse:
        limit = page_size(request.page_size, default=50, maximum=500)
        before = _time_key(request.page_token, "history")
        rows = await self.service.ledger.history(request.account_id, before=before, limit=limit + 1)
        converted = await self.service.fx.conversions([(r.source, r.message_id) for r in rows])
        items = [
            (
                history_entry_message(r, converted.get((r.source, r.message_id))),
                (r.at.isoformat(), r.reference),
            )
            for r in rows
        ]
        response = ledger_admin_pb2.ListAccountHistoryResponse()
        response.next_page_token = fill_page(response.entries, items, limit=limit, kind="history")
        return response

    @grpc_errors
    async def CreateCustomer(  # noqa: N802
        self, request: ledger_admin_pb2.CreateCustomerRequest, context: Context
    ) -> ledger_admin_pb2.CreateCustomerResponse:
        customer_id = await self.service.create_customer(
            request.program_id, request.name, request.reference, actor=_actor(context)
        )
        return ledger_admin_pb2.CreateCustomerResponse(customer_id=customer_id)

    @grpc_errors
    async def LinkCardAccount(  # noqa: N802
        self, request: ledger_admin_pb2.LinkCardAccountRequest, context: Context
    ) -> ledger_admin_pb2.LinkCardAccountResponse:
        await self.service.link_card_account(
            request.card_id, request.account_id, actor=_actor(context)
        )
        return ledger_admin_pb2.LinkCardAccountResponse()

    @grpc_errors
    async def GetCard(  # noqa: N802
        self, request: ledger_admin_pb2.GetCardRequest, context: Context
    ) -> ledger_admin_pb2.GetCardResponse:
        card = await self.service.cards.details(request.card_id)
        now = self.service.clock.now()
        controls = []
        for subject_id in (card.card_id, card.account_id):
            versions = await self.service.spend_controls(subject_id)
            for shown in (in_force(versions, now), next_scheduled(versions, now)):
                if shown is not None:
                    controls.append(version_message(shown))
        return card_message(card, controls)

    @grpc_errors
    async def RegisterAsset(  # noqa: N802
        self, request: ledger_admin_pb2.RegisterAssetRequest, context: Context
    ) -> ledger_admin_pb2.RegisterAssetResponse:
        category = common_pb2.AssetCategory.Name(request.asset.category).removeprefix(
            "ASSET_CATEGORY_"
        )
        await self.service.register_asset(
            request.asset.code,
            category,
            request.asset.exponent,
            request.asset.numeric_code,
            actor=_actor(context),
        )
        return ledger_admin_pb2.RegisterAssetResponse()

    @grpc_errors
    async def ListAssets(  # noqa: N802
        self, request: ledger_admin_pb2.ListAssetsRequest, context: Context
    ) -> ledger_admin_pb2.ListAssetsResponse:
        limit = page_size(request.page_size, default=100, maximum=1_000)
        after = read_page_token(request.page_token, "assets", 1)[0] if request.page_token else ""
        assets = sorted(
            (a for a in self.service.catalog.assets.values() if a.code > str(after)),
            key=lambda a: a.code,
        )[: limit + 1]
        items = [
            (
                ledger_admin_pb2.Asset(
                    code=a.code,
                    category=common_pb2.AssetCategory.Value(f"ASSET_CATEGORY_{a.category.value}"),
                    exponent=a.exponent,
                    numeric_code=a.numeric_code,
                ),
                (a.code,),
            )
            for a in assets
        ]
        response = ledger_admin_pb2.ListAssetsResponse()
        response.next_page_token = fill_page(response.assets, items, limit=limit, kind="assets")
        return response

    @grpc_errors
    async def SetFeeSchedule(  # noqa: N802
        self, request: ledger_admin_pb2.SetFeeScheduleRequest, context: Context
    ) -> ledger_admin_pb2.SetFeeScheduleResponse:
        effective = None
        if request.HasField("effective_from"):
            effective = request.effective_from.ToDatetime(tzinfo=UTC)
        version = await self.service.set_fee_schedule(
            request.product_id,
            effective,
            [fee_rule_of(rule) for rule in request.rules],
            actor=_actor(context),
        )
        return ledger_admin_pb2.SetFeeScheduleResponse(version=version)

    @grpc_errors
    async def ListFeeSchedules(  # noqa: N802
        self, request: ledger_admin_pb2.ListFeeSchedulesRequest, context: Context
    ) -> ledger_admin_pb2.ListFeeSchedulesResponse:
        limit = page_size(request.page_size, default=10, maximum=100)
        after = 0
        if request.page_token:
            (after,) = read_page_token(request.page_token, "fee_schedules", 1)
            if not isinstance(after, int):
                raise RequestError("page_token is not one this server issued for this list")
        await self.service.catalog.product(request.product_id)
        # The catalogue holds every version in memory for decisions; a page is a slice.
        schedules = await self.service.catalog_store.fee_schedules(request.product_id)
        items = []
        for schedule in [s for s in schedules if s.version > after][: limit + 1]:
            entry = ledger_admin_pb2.FeeSchedule(
                version=schedule.version, rules=[fee_rule_message(r) for r in schedule.rules]
            )
            entry.effective_from.FromDatetime(schedule.effective_from)
            items.append((entry, (schedule.version,)))
        response = ledger_admin_pb2.ListFeeSchedulesResponse()
        response.next_page_token = fill_page(
            response.schedules, items, limit=limit, kind="fee_schedules"
        )
        return response

    @grpc_errors
    async def CreateLimit(  # noqa: N802
        self, request: ledger_admin_pb2.CreateLimitRequest, context: Context
    ) -> ledger_admin_pb2.CreateLimitResponse:
        limit_id = await self.service.create_limit(
            request.product_id, limit_of(request.limit), actor=_actor(context)
        )
        return ledger_admin_pb2.CreateLimitResponse(limit_id=limit_id)

    @grpc_errors
    async def ListLimits(  # noqa: N802
        self, request: ledger_admin_pb2.ListLimitsRequest, context: Context
    ) -> ledger_admin_pb2.ListLimitsResponse:
        limit = page_size(request.page_size, default=100, maximum=1_000)
        await self.service.catalog.product(request.product_id)
        # Limits are never removed, and come in creation order: a page starts after the
        # limit its token names.
        limits = await self.service.catalog_store.limits(request.product_id)
        start = 0
        if request.page_token:
            (after,) = read_page_token(request.page_token, "limits", 1)
            ids = [x.id for x in limits]
            if after not in ids:
                raise RequestError("page_token is not one this server issued for this list")
            start = ids.index(str(after)) + 1
        items = [(limit_message(x), (x.id,)) for x in limits[start : start + limit + 1]]
        response = ledger_admin_pb2.ListLimitsResponse()
        response.next_page_token = fill_page(response.limits, items, limit=limit, kind="limits")
        return response

    @grpc_errors
    async def SetSpendControls(  # noqa: N802
        self, request: ledger_admin_pb2.SetSpendControlsRequest, context: Context
    ) -> ledger_admin_pb2.SetSpendControlsResponse:
        effective_from = (
            request.effective_from.ToDatetime(tzinfo=UTC)
            if request.HasField("effective_from")
            else None
        )
        version = await self.service.set_spend_controls(
            control_subject(request.subject), request.subject_id,
            controls_from_message(request.controls), effective_from, actor=_actor(context),
        )  # fmt: skip
        return ledger_admin_pb2.SetSpendControlsResponse(version=version)

    @grpc_errors
    async def ListSpendControls(  # noqa: N802
        self, request: ledger_admin_pb2.ListSpendControlsRequest, context: Context
    ) -> ledger_admin_pb2.ListSpendControlsResponse:
        control_subject(request.subject)
        limit = page_size(request.page_size, default=10, maximum=100)
        after = 0
        if request.page_token:
            (after,) = read_page_token(request.page_token, "spend_controls", 1)
            if not isinstance(after, int):
                raise RequestError("page_token is not one this server issued for this list")
        versions = await self.service.spend_controls(request.subject_id)
        items = [(version_message(v), (v.version,)) for v in versions if v.version > after][
            : limit + 1
        ]
        response = ledger_admin_pb2.ListSpendControlsResponse()
        response.next_page_token = fill_page(
            response.versions, items, limit=limit, kind="spend_controls"
        )
        return response

    @grpc_errors
    async def SetFxRate(  # noqa: N802
        self, request: ledger_admin_pb2.SetFxRateRequest, context: Context
    ) -> ledger_admin_pb2.SetFxRateResponse:
        given = request.rate
        effective = (
            given.effective_from.ToDatetime(tzinfo=UTC)
            if given.HasField("effective_from")
            else self.service.clock.now()
        )
        rate = await self.service.fx.set_rate(
            given.base_asset, given.quote_asset, given.rate, effective, given.max_age_seconds,
            actor=_actor(context),
        )  # fmt: skip
        return ledger_admin_pb2.SetFxRateResponse(rate=fx_rate_message(rate))

    @grpc_errors
    async def ListFxRates(  # noqa: N802
        self, request: ledger_admin_pb2.ListFxRatesRequest, context: Context
    ) -> ledger_admin_pb2.ListFxRatesResponse:
        limit = page_size(request.page_size, default=100, maximum=1_000)
        before = read_page_token(request.page_token, "fx", 1)[0] if request.page_token else None
        rows = await self.service.fx.list_rates(
            request.base_asset, request.quote_asset, limit=limit + 1,
            before_id=int(before) if before is not None else None,
        )  # fmt: skip
        response = ledger_admin_pb2.ListFxRatesResponse()
        response.next_page_token = fill_page(
            response.rates, [(fx_rate_message(r), (i,)) for i, r in rows], limit=limit, kind="fx"
        )
        return response

    @grpc_errors
    async def SetProductFx(  # noqa: N802
        self, request: ledger_admin_pb2.SetProductFxRequest, context: Context
    ) -> ledger_admin_pb2.SetProductFxResponse:
        await self.service.fx.set_product(
            request.product_id, enabled=request.enabled, markup_bps=request.markup_bps,
            actor=_actor(context),
        )  # fmt: skip
        return ledger_admin_pb2.SetProductFxResponse()

    @grpc_errors
    async def SetTokenPolicy(  # noqa: N802
        self, request: ledger_admin_pb2.SetTokenPolicyRequest, context: Context
    ) -> ledger_admin_pb2.SetTokenPolicyResponse:
        await self.service.tokens.set_policy(
            request.product_id, token_policy_of(request), actor=_actor(context)
        )
        return ledger_admin_pb2.SetTokenPolicyResponse()

    @grpc_errors
    async def SetTokenStatus(  # noqa: N802
        self, request: ledger_admin_pb2.SetTokenStatusRequest, context: Context
    ) -> ledger_admin_pb2.SetTokenStatusResponse:
        try:
            status = TokenStatus(request.status)
        except ValueError:
            raise RequestError("status must be a known token status") from None
        previous = await self.service.tokens.set_status(
            request.token_id, status, request.reason, actor=_actor(context)
        )
        return ledger_admin_pb2.SetTokenStatusResponse(
            previous=previous.value  # type: ignore[arg-type]
        )

    @grpc_errors
    async def ListCardTokens(  # noqa: N802
        self, request: ledger_admin_pb2.ListCardTokensRequest, context: Context
    ) -> ledger_admin_pb2.ListCardTokensResponse:
        return card_tokens_message(await self.service.tokens.of_card(request.card_id))

    @grpc_errors
    async def GetUsage(  # noqa: N802
        self, request: ledger_admin_pb2.GetUsageRequest, context: Context
    ) -> ledger_admin_pb2.GetUsageResponse:
        rows = await self.service.ledger.usage(request.account_id, self.service.clock.now())
        return ledger_admin_pb2.GetUsageResponse(
            usage=[ledger_admin_pb2.Usage(key=k, amount_minor=a, count=c) for k, a, c in rows]
        )

    @grpc_errors
    async def SetProgramRouting(  # noqa: N802
        self, request: ledger_admin_pb2.SetProgramRoutingRequest, context: Context
    ) -> ledger_admin_pb2.SetProgramRoutingResponse:
        routing = routing_of(request)
        await self.service.set_routing(request.program_id, routing, actor=_actor(context))
        return ledger_admin_pb2.SetProgramRoutingResponse()

    @grpc_errors
    async def SetNotificationSink(  # noqa: N802
        self, request: ledger_admin_pb2.SetNotificationSinkRequest, context: Context
    ) -> ledger_admin_pb2.SetNotificationSinkResponse:
        sink = {1: "client", 2: "webhook"}.get(request.sink, "")
        await self.service.set_sink(
            request.program_id, sink, request.url, request.secret_name, request.remove,
            actor=_actor(context),
        )  # fmt: skip
        return ledger_admin_pb2.SetNotificationSinkResponse()

    @grpc_errors
    async def SetMovementSubscription(  # noqa: N802
        self, request: ledger_admin_pb2.SetMovementSubscriptionRequest, context: Context
    ) -> ledger_admin_pb2.SetMovementSubscriptionResponse:
        await self.service.set_movements(request.program_id, request.enabled, actor=_actor(context))
        return ledger_admin_pb2.SetMovementSubscriptionResponse()

    @grpc_errors
    async def ListNotifications(  # noqa: N802
        self, request: ledger_admin_pb2.ListNotificationsRequest, context: Context
    ) -> ledger_admin_pb2.ListNotificationsResponse:
        status = {1: "PENDING", 2: "DELIVERED", 3: "DEAD"}.get(request.status)
        limit = page_size(request.page_size, default=100, maximum=1_000)
        before = None
        if request.page_token:
            seq, sink = read_page_token(request.page_token, "notifications", 2)
            if not isinstance(seq, int):
                raise RequestError("page_token is not one this server issued for this list")
            before = (seq, str(sink))
        rows = await self.service.outbox.notification_deliveries(
            request.program_id, status, limit + 1, before
        )
        items = [(delivery_message(r), (r.seq, r.sink)) for r in rows]
        response = ledger_admin_pb2.ListNotificationsResponse()
        response.next_page_token = fill_page(
            response.deliveries, items, limit=limit, kind="notifications"
        )
        return response

    @grpc_errors
    async def RedriveNotifications(  # noqa: N802
        self, request: ledger_admin_pb2.RedriveNotificationsRequest, context: Context
    ) -> ledger_admin_pb2.RedriveNotificationsResponse:
        count = await self.service.outbox.redrive(
            request.program_id, self.service.clock.now(), _actor(context)
        )
        return ledger_admin_pb2.RedriveNotificationsResponse(redriven=count)

    @grpc_errors
    async def SetBalanceReport(  # noqa: N802
        self, request: ledger_admin_pb2.SetBalanceReportRequest, context: Context
    ) -> ledger_admin_pb2.SetBalanceReportResponse:
        if not valid_prefix(request.prefix):
            raise RequestError("prefix must be 1 to 15 letters, digits or underscores")
        await self.service.catalog_store.set_report_subscription(
            request.client_id, request.prefix, request.enabled, _actor(context)
        )
        return ledger_admin_pb2.SetBalanceReportResponse()

    @grpc_errors
    async def OpenDispute(  # noqa: N802
        self, request: ledger_admin_pb2.OpenDisputeRequest, context: Context
    ) -> bytes:
        return await self.disputes.open(
            open_dispute_of(request), keyless_bytes(request), actor=_actor(context)
        )

    @grpc_errors
    async def ResolveDispute(  # noqa: N802
        self, request: ledger_admin_pb2.ResolveDisputeRequest, context: Context
    ) -> bytes:
        return await self.disputes.resolve(
            resolve_dispute_of(request), keyless_bytes(request), actor=_actor(context)
        )

    @grpc_errors
    async def GetDispute(  # noqa: N802
        self, request: ledger_admin_pb2.GetDisputeRequest, context: Context
    ) -> ledger_admin_pb2.GetDisputeResponse:
        return dispute_history_message(*await self.disputes.get(request.dispute_id))

    @grpc_errors
    async def CreateFileSchedule(  # noqa: N802
        self, request: ledger_admin_pb2.CreateFileScheduleRequest, context: Context
    ) -> ledger_admin_pb2.CreateFileScheduleResponse:
        row = await self.files.create(new_file_schedule_of(request.schedule), actor=_actor(context))
        return ledger_admin_pb2.CreateFileScheduleResponse(schedule=schedule_message(row))

    @grpc_errors
    async def ListFileSchedules(  # noqa: N802
        self, request: ledger_admin_pb2.ListFileSchedulesRequest, context: Context
    ) -> ledger_admin_pb2.ListFileSchedulesResponse:
        limit = page_size(request.page_size, default=100, maximum=1_000)
        listed = await self.files.list(
            program_id=request.program_id, client_id=request.client_id, limit=limit + 1,
            after=_time_key(request.page_token, "file_schedules"),
        )  # fmt: skip
        items = [(schedule_message(row), (row.created_at.isoformat(), row.id)) for row in listed]
        response = ledger_admin_pb2.ListFileSchedulesResponse()
        response.next_page_token = fill_page(
            response.schedules, items, limit=limit, kind="file_schedules"
        )
        return response

    @grpc_errors
    async def SetFileScheduleEnabled(  # noqa: N802
        self, request: ledger_admin_pb2.SetFileScheduleEnabledRequest, context: Context
    ) -> ledger_admin_pb2.SetFileScheduleEnabledResponse:
        await self.files.set_enabled(request.schedule_id, request.enabled, actor=_actor(context))
        return ledger_admin_pb2.SetFileScheduleEnabledResponse()

    # -- accounts of a customer (issue 17): pots and joint holders ------------------------

    @property
    def accounts(self) -> AccountService:
        admin = self.service
        built: AccountService | None = getattr(self, "_accounts", None)
        if built is None or built.admin is not admin:
            built = self._accounts = AccountService(admin, AdminReplies())
        return built

    @grpc_errors
    async def Transfer(  # noqa: N802
        self, request: ledger_admin_pb2.TransferRequest, context: Context
    ) -> bytes:
        fingerprint = self.service.keys.fingerprint(request.SerializeToString(deterministic=True))
        return await self.accounts.transfer(
            transfer_of(request), fingerprint=fingerprint, actor=_actor(context)
        )

    @grpc_errors
    async def AddAccountHolder(  # noqa: N802
        self, request: ledger_admin_pb2.AddAccountHolderRequest, context: Context
    ) -> ledger_admin_pb2.AddAccountHolderResponse:
        holders = await self.accounts.add_holder(
            request.account_id, request.customer_id, dict(request.shares_bps),
            actor=_actor(context),
        )  # fmt: skip
        return ledger_admin_pb2.AddAccountHolderResponse(holders=holder_messages(holders))

    @grpc_errors
    async def RemoveAccountHolder(  # noqa: N802
        self, request: ledger_admin_pb2.RemoveAccountHolderRequest, context: Context
    ) -> ledger_admin_pb2.RemoveAccountHolderResponse:
        holders = await self.accounts.remove_holder(
            request.account_id, request.customer_id, dict(request.shares_bps),
            actor=_actor(context),
        )  # fmt: skip
        return ledger_admin_pb2.RemoveAccountHolderResponse(holders=holder_messages(holders))

    @grpc_errors
    async def SetAccountHolderShares(  # noqa: N802
        self, request: ledger_admin_pb2.SetAccountHolderSharesRequest, context: Context
    ) -> ledger_admin_pb2.SetAccountHolderSharesResponse:
        holders = await self.accounts.set_shares(
            request.account_id, dict(request.shares_bps), actor=_actor(context)
        )
        return ledger_admin_pb2.SetAccountHolderSharesResponse(holders=holder_messages(holders))

    @grpc_errors
    async def ListAccountHolders(  # noqa: N802
        self, request: ledger_admin_pb2.ListAccountHoldersRequest, context: Context
    ) -> ledger_admin_pb2.ListAccountHoldersResponse:
        holders = await self.accounts.list_holders(request.account_id)
        return ledger_admin_pb2.ListAccountHoldersResponse(holders=holder_messages(holders))


def _time_key(token: str, kind: str) -> tuple[datetime, str] | None:
    """The (time, id) cursor of a page token of ``kind``; None for the first page."""
    if not token:
        return None
    at, ident = read_page_token(token, kind, 2)
    try:
        return datetime.fromisoformat(str(at)), str(ident)
    except ValueError:
        raise RequestError("page_token is not one this server issued for this list") from None
