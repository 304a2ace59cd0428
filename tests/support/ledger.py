"""Builds test fixtures (clients, programs, products, accounts, cards) through the real
admin API, and sends authorisations, over a real gRPC channel."""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field
from typing import Any, TypedDict

import grpc

from authswitch.demo import demo_pan
from authswitch.v1 import (
    authorization_pb2,
    authorization_pb2_grpc,
    common_pb2,
    ledger_admin_pb2,
    ledger_admin_pb2_grpc,
)

EXPIRY = "3012"  # December 2030
_counter = itertools.count()
# Every PAN the tests issue: conftest searches all captured logs for them at the end.
ISSUED_PANS: list[str] = []


class TransactionKind(TypedDict):
    """What kind of message an authorisation is: ``**kind`` for ``Ledger.authorize``."""

    transaction_type: common_pb2.TransactionType.ValueType
    channel: common_pb2.Channel.ValueType


@dataclass
class IssuedCard:
    pan: str
    expiry: str
    cvv2: str
    pin: str
    card_id: str
    account_id: str
    product_id: str
    program_id: str
    all_pans: list[str] = field(default_factory=list)


class Ledger:
    """A thin client for tests: one program per ``Ledger`` unless told otherwise."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.admin = ledger_admin_pb2_grpc.LedgerAdminServiceStub(channel)
        self.auth = authorization_pb2_grpc.AuthorizationServiceStub(channel)
        self.pans: list[str] = []

    async def program(
        self, mode: common_pb2.LedgerMode.ValueType = common_pb2.LEDGER_MODE_ON_LEDGER, *,
        country: str = "GB", time_zone: str = "Europe/London",
    ) -> str:  # fmt: skip
        client = await self.admin.CreateClient(ledger_admin_pb2.CreateClientRequest(name="test"))
        program = await self.admin.CreateProgram(
            ledger_admin_pb2.CreateProgramRequest(
                client_id=client.client_id, name="p", mode=mode, country=country,
                time_zone=time_zone,
            )
        )  # fmt: skip
        return program.program_id

    async def product(self, program_id: str | None = None, **kwargs: Any) -> str:
        program_id = program_id or await self.program()
        kwargs.setdefault("assets", ["GBP", "EUR", "USD", "JPY", "BTC"])
        kwargs.setdefault(
            "account_types",
            [common_pb2.ACCOUNT_TYPE_SINGLE, common_pb2.ACCOUNT_TYPE_MULTI_CURRENCY],
        )
        product = await self.admin.CreateProduct(
            ledger_admin_pb2.CreateProductRequest(program_id=program_id, name="prod", **kwargs)
        )
        return product.product_id

    async def account(
        self, product_id: str | None = None, assets: tuple[str, ...] = ("GBP",)
    ) -> str:
        product_id = product_id or await self.product()
        account_type = (
            common_pb2.ACCOUNT_TYPE_SINGLE
            if len(assets) == 1
            else common_pb2.ACCOUNT_TYPE_MULTI_CURRENCY
        )
        account = await self.admin.CreateAccount(
            ledger_admin_pb2.CreateAccountRequest(
                product_id=product_id, account_type=account_type, assets=list(assets), name="acct"
            )
        )
        return account.account_id

    async def credit(self, account_id: str, amount_minor: int, asset: str = "GBP") -> Any:
        return await self.admin.CreditAccount(
            ledger_admin_pb2.CreditAccountRequest(
                account_id=account_id,
                amount=common_pb2.Money(amount_minor=amount_minor, asset=asset),
                purpose=ledger_admin_pb2.ADJUSTMENT_PURPOSE_LOAD,
                idempotency_key=str(uuid.uuid4()),
            )
        )

    async def card(
        self,
        balance_minor: int = 10_000,
        asset: str = "GBP",
        *,
        account_id: str | None = None,
        product_kwargs: dict[str, Any] | None = None,
        status: common_pb2.CardStatus.ValueType = common_pb2.CARD_STATUS_ACTIVE,
        pin: str = "1234",
        expiry: str = EXPIRY,
    ) -> IssuedCard:
        product_id = ""
        if account_id is None:
            product_id = await self.product(**(product_kwargs or {}))
            account_id = await self.account(product_id, (asset,))
            if balance_minor:
                await self.credit(account_id, balance_minor, asset)
        pan = demo_pan("4" + f"{next(_counter) % 100_000:05d}" + "00")
        self.pans.append(pan)
        ISSUED_PANS.append(pan)
        created = await self.admin.CreateCard(
            ledger_admin_pb2.CreateCardRequest(
                account_id=account_id, pan=pan, expiry=expiry, status=status, pin=pin
            )
        )
        return IssuedCard(
            pan, expiry, created.cvv2, pin, created.card_id, account_id, product_id, ""
        )

    async def balance(self, account_id: str, asset: str = "GBP") -> common_pb2.Balance:
        response = await self.admin.GetBalances(
            ledger_admin_pb2.GetBalancesRequest(account_id=account_id)
        )
        for balance in response.balances:
            if balance.asset == asset:
                return balance
        raise AssertionError(f"no {asset} balance")

    async def authorize(
        self,
        card: IssuedCard,
        amount_minor: int,
        asset: str = "GBP",
        *,
        transaction_type: common_pb2.TransactionType.ValueType = (
            common_pb2.TRANSACTION_TYPE_PURCHASE
        ),
        message_id: str | None = None,
        pin: str | None = None,
        cvv2: str | None = None,
        expiry: str | None = None,
        new_pin: str = "",
        mcc: str = "5411",
        channel: common_pb2.Channel.ValueType = common_pb2.CHANNEL_ECOMMERCE,
        partial: bool = False,
        source: str = "visa",
        pan: str | None = None,
        country: str = "GB",
    ) -> authorization_pb2.AuthorizeResponse:
        request = self.request(
            card, amount_minor, asset, transaction_type=transaction_type, message_id=message_id,
            pin=pin, cvv2=cvv2, expiry=expiry, new_pin=new_pin, mcc=mcc, channel=channel,
            partial=partial, source=source, pan=pan, country=country,
        )  # fmt: skip
        return await self.auth.Authorize(request)

    @staticmethod
    def request(
        card: IssuedCard,
        amount_minor: int,
        asset: str = "GBP",
        *,
        transaction_type: common_pb2.TransactionType.ValueType = (
            common_pb2.TRANSACTION_TYPE_PURCHASE
        ),
        message_id: str | None = None,
        pin: str | None = None,
        cvv2: str | None = None,
        expiry: str | None = None,
        new_pin: str = "",
        mcc: str = "5411",
        channel: common_pb2.Channel.ValueType = common_pb2.CHANNEL_ECOMMERCE,
        partial: bool = False,
        source: str = "visa",
        pan: str | None = None,
        country: str = "GB",
    ) -> authorization_pb2.AuthorizeRequest:
        return authorization_pb2.AuthorizeRequest(
            source=source,
            message_id=message_id or str(uuid.uuid4()),
            network_reference=str(uuid.uuid4()),
            transaction_type=transaction_type,
            pan=card.pan if pan is None else pan,
            auth=authorization_pb2.AuthData(
                pin=pin or "",
                expiry=card.expiry if expiry is None else expiry,
                cvv2=card.cvv2 if cvv2 is None else cvv2,
                new_pin=new_pin,
            ),
            transaction_amount=common_pb2.Money(amount_minor=amount_minor, asset=asset),
            billing_amount=common_pb2.Money(amount_minor=amount_minor, asset=asset),
            partial_approval_allowed=partial,
            merchant=authorization_pb2.Merchant(mcc=mcc, country=country, name="Test shop"),
            channel=channel,
        )

    async def advise(
        self, card: IssuedCard, amount_minor: int, asset: str = "GBP", *,
        original_message_id: str = "", network_reference: str | None = None,
        message_id: str | None = None, mcc: str = "5411",
    ) -> authorization_pb2.AdviseResponse:  # fmt: skip
        return await self.auth.Advise(
            authorization_pb2.AdviseRequest(
                source="visa",
                message_id=message_id or str(uuid.uuid4()),
                network_reference=network_reference or str(uuid.uuid4()),
                transaction_type=common_pb2.TRANSACTION_TYPE_PURCHASE,
                pan=card.pan,
                billing_amount=common_pb2.Money(amount_minor=amount_minor, asset=asset),
                merchant=authorization_pb2.Merchant(mcc=mcc, country="GB"),
                original_message_id=original_message_id,
            )
        )

    async def reverse(
        self, original_message_id: str, amount_minor: int = 0, asset: str = "GBP", *,
        message_id: str | None = None, pan: str = "",
    ) -> authorization_pb2.ReverseResponse:  # fmt: skip
        request = authorization_pb2.ReverseRequest(
            source="visa",
            message_id=message_id or str(uuid.uuid4()),
            original_message_id=original_message_id,
            pan=pan,
        )
        if amount_minor:
            request.amount.CopyFrom(common_pb2.Money(amount_minor=amount_minor, asset=asset))
        return await self.auth.Reverse(request)

    async def clear(
        self, card: IssuedCard, network_reference: str, amount_minor: int, asset: str = "GBP", *,
        final: bool = True, message_id: str | None = None,
    ) -> authorization_pb2.ClearResponse:  # fmt: skip
        return await self.auth.Clear(
            authorization_pb2.ClearRequest(
                source="visa",
                message_id=message_id or str(uuid.uuid4()),
                network_reference=network_reference,
                pan=card.pan,
                billing_amount=common_pb2.Money(amount_minor=amount_minor, asset=asset),
                final=final,
                merchant=authorization_pb2.Merchant(mcc="5411", country="GB", name="Shop"),
            )
        )

    async def refund(
        self, card: IssuedCard, amount_minor: int, asset: str = "GBP", *,
        message_id: str | None = None,
    ) -> authorization_pb2.RefundResponse:  # fmt: skip
        return await self.auth.Refund(
            authorization_pb2.RefundRequest(
                source="visa",
                message_id=message_id or str(uuid.uuid4()),
                network_reference=str(uuid.uuid4()),
                pan=card.pan,
                billing_amount=common_pb2.Money(amount_minor=amount_minor, asset=asset),
            )
        )

    async def figures(self, account_id: str, asset: str = "GBP") -> tuple[int, int, int]:
        """(actual, available, authorised) from Postgres."""
        balance = await self.balance(account_id, asset)
        return balance.actual_minor, balance.available_minor, balance.authorized_minor

    async def fees(self, product_id: str, *rules: ledger_admin_pb2.FeeRule, **kw: Any) -> int:
        response = await self.admin.SetFeeSchedule(
            ledger_admin_pb2.SetFeeScheduleRequest(product_id=product_id, rules=list(rules), **kw)
        )
        return response.version

    async def limit(self, product_id: str, **fields: Any) -> str:
        fields.setdefault("asset", "GBP")
        response = await self.admin.CreateLimit(
            ledger_admin_pb2.CreateLimitRequest(
                product_id=product_id, limit=ledger_admin_pb2.Limit(**fields)
            )
        )
        return response.limit_id

    async def usage(self, account_id: str) -> dict[str, tuple[int, int]]:
        response = await self.admin.GetUsage(
            ledger_admin_pb2.GetUsageRequest(account_id=account_id)
        )
        return {u.key: (u.amount_minor, u.count) for u in response.usage}

    # -- disputes ---------------------------------------------------------------------------

    async def cleared(
        self, card: IssuedCard, amount_minor: int, asset: str = "GBP"
    ) -> tuple[str, authorization_pb2.ClearResponse]:
        """Authorise and clear ``amount_minor``; returns the clearing's message id."""
        request = self.request(card, amount_minor, asset)
        assert (await self.auth.Authorize(request)).response_code == "00"
        message_id = str(uuid.uuid4())
        response = await self.clear(
            card, request.network_reference, amount_minor, asset, message_id=message_id
        )
        assert response.response_code == "00", response
        return message_id, response

    async def open_dispute(
        self, clearing_message_id: str, amount_minor: int, asset: str = "GBP", *,
        provisional: bool = False, reason_code: str = "13.1", key: str | None = None,
    ) -> ledger_admin_pb2.OpenDisputeResponse:  # fmt: skip
        return await self.admin.OpenDispute(
            ledger_admin_pb2.OpenDisputeRequest(
                clearing_source="visa", clearing_message_id=clearing_message_id,
                reason_code=reason_code,
                amount=common_pb2.Money(amount_minor=amount_minor, asset=asset),
                provisional_credit=provisional, idempotency_key=key or str(uuid.uuid4()),
            )
        )  # fmt: skip

    async def resolve_dispute(
        self,
        dispute_id: str,
        outcome: ledger_admin_pb2.DisputeOutcome.ValueType,
        *,
        key: str | None = None,
    ) -> ledger_admin_pb2.ResolveDisputeResponse:
        return await self.admin.ResolveDispute(
            ledger_admin_pb2.ResolveDisputeRequest(
                dispute_id=dispute_id, outcome=outcome,
                idempotency_key=key or str(uuid.uuid4()),
            )
        )  # fmt: skip

    async def chargeback(
        self, dispute: ledger_admin_pb2.Dispute, *, message_id: str | None = None,
        amount_minor: int | None = None,
    ) -> authorization_pb2.ChargebackResponse:  # fmt: skip
        return await self.auth.Chargeback(
            authorization_pb2.ChargebackRequest(
                source="visa", message_id=message_id or str(uuid.uuid4()),
                dispute_id=dispute.dispute_id, network_reference="CB" + dispute.dispute_id[:8],
                amount=common_pb2.Money(
                    amount_minor=dispute.amount.amount_minor if amount_minor is None
                    else amount_minor, asset=dispute.amount.asset,
                ),
                reason_code=dispute.reason_code,
            )
        )  # fmt: skip

    async def represent(
        self, dispute: ledger_admin_pb2.Dispute, *, message_id: str | None = None
    ) -> authorization_pb2.RepresentResponse:
        return await self.auth.Represent(
            authorization_pb2.RepresentRequest(
                source="visa", message_id=message_id or str(uuid.uuid4()),
                dispute_id=dispute.dispute_id, network_reference="RP" + dispute.dispute_id[:8],
                amount=dispute.amount, reason_code="2700",
            )
        )  # fmt: skip
