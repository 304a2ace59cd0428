"""``authswitch demo``: walkthroughs against a running server, printing each balance move.

    authswitch demo                  a funded demo card, and how to authorise against it
    authswitch demo lifecycle        authorise 40.00, clear 45.00, refund 5.00
    authswitch demo fees             a fee and a limit on the demo product, and their effect
    authswitch demo off-ledger       a programme whose own ledger is the reference client

Every walkthrough creates its own client, programme, product, account and card. PANs are
test numbers in the 999999 BIN, printed to the operator's terminal (never to a log).
"""

from __future__ import annotations

import secrets
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc

from authswitch.adapters.grpc.client import ServerUnreachable, connect
from authswitch.domain.cards import luhn_valid
from authswitch.domain.money import format_unsigned
from authswitch.v1 import (
    authorization_pb2,
    authorization_pb2_grpc,
    common_pb2,
    ledger_admin_pb2,
    ledger_admin_pb2_grpc,
)

__all__ = ["SCENARIOS", "demo_pan", "run_demo"]

SCENARIOS = ("card", "lifecycle", "fees", "off-ledger", "dispute")


def demo_pan(bin_: str = "99999900") -> str:
    """A random 16-digit PAN with a valid check digit in a test BIN."""
    body = bin_ + "".join(str(secrets.randbelow(10)) for _ in range(15 - len(bin_)))
    for digit in "0123456789":
        if luhn_valid(body + digit):
            return body + digit
    raise AssertionError("unreachable: one check digit always fits")


def _expiry_in_years(years: int) -> str:
    now = datetime.now(UTC)
    return f"{(now.year + years) % 100:02d}{now.month:02d}"


def _gbp(minor: int) -> str:
    return "GBP " + format_unsigned(minor, 2)


@dataclass
class _Card:
    client_id: str
    program_id: str
    product_id: str
    account_id: str
    card_id: str
    pan: str
    expiry: str
    cvv2: str


class _Demo:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.admin = ledger_admin_pb2_grpc.LedgerAdminServiceStub(channel)
        self.auth = authorization_pb2_grpc.AuthorizationServiceStub(channel)

    async def card(
        self,
        mode: common_pb2.LedgerMode.ValueType = common_pb2.LEDGER_MODE_ON_LEDGER,
        load_minor: int = 10_000,
    ) -> _Card:
        client = await self.admin.CreateClient(ledger_admin_pb2.CreateClientRequest(name="Demo"))
        program = await self.admin.CreateProgram(
            ledger_admin_pb2.CreateProgramRequest(
                client_id=client.client_id, name="Demo programme", mode=mode,
                time_zone="Europe/London", country="GB",
            )
        )  # fmt: skip
        product = await self.admin.CreateProduct(
            ledger_admin_pb2.CreateProductRequest(
                program_id=program.program_id,
                name="Demo GBP prepaid",
                account_types=[
                    common_pb2.ACCOUNT_TYPE_SINGLE,
                    common_pb2.ACCOUNT_TYPE_MULTI_CURRENCY,
                ],
                assets=["GBP", "EUR", "USD"],
            )
        )
        account = await self.admin.CreateAccount(
            ledger_admin_pb2.CreateAccountRequest(
                product_id=product.product_id,
                account_type=common_pb2.ACCOUNT_TYPE_SINGLE,
                assets=["GBP"],
                name="Demo account",
                reference="DEMO0001",
            )
        )
        if load_minor:
            await self.admin.CreditAccount(
                ledger_admin_pb2.CreditAccountRequest(
                    account_id=account.account_id,
                    amount=common_pb2.Money(amount_minor=load_minor, asset="GBP"),
                    purpose=ledger_admin_pb2.ADJUSTMENT_PURPOSE_LOAD,
                    idempotency_key=f"demo-load-{uuid.uuid4()}",
                    description="demo load",
                )
            )
        pan, expiry = demo_pan(), _expiry_in_years(3)
        card = await self.admin.CreateCard(
            ledger_admin_pb2.CreateCardRequest(
                account_id=account.account_id, pan=pan, expiry=expiry, pin="1234"
            )
        )
        return _Card(
            client.client_id, program.program_id, product.product_id, account.account_id,
            card.card_id, pan, expiry, card.cvv2,
        )  # fmt: skip

    def request(
        self, card: _Card, amount_minor: int, **fields: object
    ) -> authorization_pb2.AuthorizeRequest:
        fields.setdefault("transaction_type", common_pb2.TRANSACTION_TYPE_PURCHASE)
        fields.setdefault("channel", common_pb2.CHANNEL_ECOMMERCE)
        return authorization_pb2.AuthorizeRequest(
            source="demo",
            message_id=str(uuid.uuid4()),
            network_reference=str(uuid.uuid4()),
            pan=card.pan,
            auth=authorization_pb2.AuthData(expiry=card.expiry, cvv2=card.cvv2),
            billing_amount=common_pb2.Money(amount_minor=amount_minor, asset="GBP"),
            merchant=authorization_pb2.Merchant(mcc="5411", country="GB", name="Demo shop"),
            **fields,  # type: ignore[arg-type]
        )

    @staticmethod
    def ids(card: _Card) -> None:
        """The ids the walkthrough created, for the reports and admin calls that take them."""
        print(
            f"  client {card.client_id}  programme {card.program_id}\n"
            f"  account {card.account_id}  card {card.card_id}"
        )

    async def show(self, card: _Card, step: str) -> None:
        response = await self.admin.GetBalances(
            ledger_admin_pb2.GetBalancesRequest(account_id=card.account_id)
        )
        (balance,) = response.balances
        print(
            f"  {step:<44} actual {_gbp(balance.actual_minor):>12}   "
            f"available {_gbp(balance.available_minor):>12}   "
            f"authorised {_gbp(balance.authorized_minor):>11}"
        )


async def run_demo(target: str, scenario: str = "card") -> int:
    try:
        channel = await connect(target)
    except ServerUnreachable as exc:
        print(f"authswitch: {exc}: start one with `make serve`", file=sys.stderr)
        return 1
    async with channel:
        demo = _Demo(channel)
        try:
            if scenario == "lifecycle":
                await _lifecycle(demo)
            elif scenario == "fees":
                await _fees(demo)
            elif scenario == "off-ledger":
                await _off_ledger(demo)
            elif scenario == "dispute":
                await _dispute(demo)
            else:
                await _card(demo, target)
        except grpc.aio.AioRpcError as exc:
            print(f"authswitch: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    return 0


async def _card(demo: _Demo, target: str) -> None:
    card = await demo.card()
    print(
        f"""Demo card ready on {target}
  client    {card.client_id}
  programme {card.program_id} (on-ledger)
  account   {card.account_id}  balance GBP 100.00
  card      {card.card_id}
  PAN {card.pan}  expiry {card.expiry}  CVV2 {card.cvv2}  PIN 1234

Authorise GBP 40.00 against it (run in the project's virtualenv):

  .venv/bin/python - <<'PY'
import asyncio, uuid, grpc
from authswitch.v1 import authorization_pb2 as a, authorization_pb2_grpc as ag, common_pb2 as c
async def main():
    async with grpc.aio.insecure_channel("{target}") as ch:
        r = await ag.AuthorizationServiceStub(ch).Authorize(a.AuthorizeRequest(
            source="demo", message_id=str(uuid.uuid4()), network_reference=str(uuid.uuid4()),
            transaction_type=c.TRANSACTION_TYPE_PURCHASE, pan="{card.pan}",
            auth=a.AuthData(expiry="{card.expiry}", cvv2="{card.cvv2}"),
            billing_amount=c.Money(amount_minor=4000, asset="GBP"),
            merchant=a.Merchant(mcc="5411", country="GB"), channel=c.CHANNEL_ECOMMERCE))
        print(r)
asyncio.run(main())
PY

The client's balance report, and today's transaction file of the programme:

  .venv/bin/authswitch report balances --client {card.client_id} --prefix DEMO --out reports/
  .venv/bin/authswitch report transactions --program {card.program_id} \\
      --date {datetime.now(UTC):%Y-%m-%d} --out reports/

More walkthroughs: authswitch demo lifecycle | fees | off-ledger | dispute"""
    )


async def _lifecycle(demo: _Demo) -> None:
    print("A card transaction's life on the ledger (seed 001):")
    card = await demo.card()
    await demo.show(card, "loaded 100.00")
    purchase = demo.request(card, 4_000)
    answer = await demo.auth.Authorize(purchase)
    await demo.show(card, f"authorised 40.00 ({answer.response_code})")
    cleared = await demo.auth.Clear(
        authorization_pb2.ClearRequest(
            source="demo", message_id=str(uuid.uuid4()),
            network_reference=purchase.network_reference, pan=card.pan,
            billing_amount=common_pb2.Money(amount_minor=4_500, asset="GBP"), final=True,
        )
    )  # fmt: skip
    await demo.show(card, f"cleared 45.00 (matched: {cleared.matched})")
    await demo.auth.Refund(
        authorization_pb2.RefundRequest(
            source="demo", message_id=str(uuid.uuid4()), pan=card.pan,
            billing_amount=common_pb2.Money(amount_minor=500, asset="GBP"),
        )
    )  # fmt: skip
    await demo.show(card, "refunded 5.00")
    hotel = demo.request(card, 2_000)
    await demo.auth.Authorize(hotel)
    await demo.show(card, "authorised 20.00")
    await demo.auth.Reverse(
        authorization_pb2.ReverseRequest(
            source="demo", message_id=str(uuid.uuid4()), original_message_id=hotel.message_id
        )
    )
    await demo.show(card, "reversed it")
    history = await demo.admin.ListAccountHistory(
        ledger_admin_pb2.ListAccountHistoryRequest(account_id=card.account_id)
    )
    print("  history, newest first: " + ", ".join(e.kind for e in history.entries))
    demo.ids(card)


async def _dispute(demo: _Demo) -> None:
    print("A disputed purchase: provisional credit, chargeback, representment, merchant wins:")
    card = await demo.card()
    await demo.show(card, "loaded 100.00")
    purchase = demo.request(card, 6_000)
    await demo.auth.Authorize(purchase)
    clearing_id = str(uuid.uuid4())
    await demo.auth.Clear(
        authorization_pb2.ClearRequest(
            source="demo", message_id=clearing_id, network_reference=purchase.network_reference,
            pan=card.pan, billing_amount=common_pb2.Money(amount_minor=6_000, asset="GBP"),
            final=True, merchant=authorization_pb2.Merchant(mcc="5732", name="Demo TVs"),
        )
    )  # fmt: skip
    await demo.show(card, "bought a 60.00 television (cleared)")
    opened = await demo.admin.OpenDispute(
        ledger_admin_pb2.OpenDisputeRequest(
            clearing_source="demo", clearing_message_id=clearing_id, reason_code="13.1",
            amount=common_pb2.Money(amount_minor=6_000, asset="GBP"), provisional_credit=True,
            idempotency_key=str(uuid.uuid4()),
        )
    )  # fmt: skip
    dispute = opened.dispute
    await demo.show(card, "disputed: not received (provisional credit)")
    await demo.auth.Chargeback(
        authorization_pb2.ChargebackRequest(
            source="demo", message_id=str(uuid.uuid4()), dispute_id=dispute.dispute_id,
            amount=dispute.amount, reason_code="13.1",
        )
    )  # fmt: skip
    await demo.show(card, "chargeback accepted by the network")
    await demo.auth.Authorize(demo.request(card, 8_000))
    await demo.show(card, "spent 80.00 meanwhile")
    await demo.auth.Represent(
        authorization_pb2.RepresentRequest(
            source="demo",
            message_id=str(uuid.uuid4()),
            dispute_id=dispute.dispute_id,
            amount=dispute.amount,
        )
    )
    await demo.show(card, "merchant re-presented (proof of delivery)")
    await demo.admin.ResolveDispute(
        ledger_admin_pb2.ResolveDisputeRequest(
            dispute_id=dispute.dispute_id, outcome=ledger_admin_pb2.DISPUTE_OUTCOME_MERCHANT_WON,
            idempotency_key=str(uuid.uuid4()),
        )
    )  # fmt: skip
    await demo.show(card, "merchant won: provisional credit taken back")
    got = await demo.admin.GetDispute(
        ledger_admin_pb2.GetDisputeRequest(dispute_id=dispute.dispute_id)
    )
    print(f"  dispute {dispute.dispute_id}: " + " -> ".join(e.step for e in got.events))
    print(
        "  today's files: authswitch report transactions|chargebacks "
        f"--program {card.program_id} --date {datetime.now(UTC):%Y-%m-%d} --out reports/"
    )
    demo.ids(card)


async def _fees(demo: _Demo) -> None:
    print("Fees and limits on a product (seed 004):")
    card = await demo.card()
    await demo.admin.SetFeeSchedule(
        ledger_admin_pb2.SetFeeScheduleRequest(
            product_id=card.product_id,
            rules=[
                ledger_admin_pb2.FeeRule(
                    name="purchase fee", stage=ledger_admin_pb2.FEE_STAGE_AUTHORIZATION,
                    transaction_types=[common_pb2.TRANSACTION_TYPE_PURCHASE], asset="GBP",
                    flat_minor=25, bps=100,
                ),
                ledger_admin_pb2.FeeRule(
                    name="balance enquiry", stage=ledger_admin_pb2.FEE_STAGE_AUTHORIZATION,
                    transaction_types=[common_pb2.TRANSACTION_TYPE_BALANCE_ENQUIRY],
                    asset="GBP", flat_minor=50,
                ),
            ],
        )
    )  # fmt: skip
    await demo.admin.CreateLimit(
        ledger_admin_pb2.CreateLimitRequest(
            product_id=card.product_id,
            limit=ledger_admin_pb2.Limit(
                subject=ledger_admin_pb2.LIMIT_SUBJECT_CARD,
                period=ledger_admin_pb2.PERIOD_DAY,
                asset="GBP",
                amount_max_minor=6_000,
            ),
        )
    )
    print("  fees: purchases 0.25 + 1%; balance enquiries 0.50. Limit: GBP 60.00 a day.")
    await demo.show(card, "loaded 100.00")
    answer = await demo.auth.Authorize(demo.request(card, 4_000))
    await demo.show(card, f"authorised 40.00 + fee {format_unsigned(answer.fee.amount_minor, 2)}")
    enquiry = await demo.auth.Authorize(
        demo.request(card, 0, transaction_type=common_pb2.TRANSACTION_TYPE_BALANCE_ENQUIRY,
                     channel=common_pb2.CHANNEL_ATM)
    )  # fmt: skip
    await demo.show(
        card, f"ATM balance enquiry, fee {format_unsigned(enquiry.fee.amount_minor, 2)}"
    )
    over = await demo.auth.Authorize(demo.request(card, 2_000))
    await demo.show(card, f"20.00 more: declined {over.response_code} (daily limit)")
    demo.ids(card)


async def _off_ledger(demo: _Demo) -> None:
    target = "127.0.0.1:50061"
    print(f"An off-ledger programme whose ledger is the reference client at {target}")
    print("(start it first: .venv/bin/authswitch reference-client --listen 127.0.0.1:50061)")
    card = await demo.card(mode=common_pb2.LEDGER_MODE_OFF_LEDGER, load_minor=0)
    await demo.admin.SetProgramRouting(
        ledger_admin_pb2.SetProgramRoutingRequest(
            program_id=card.program_id, target=target, tls=ledger_admin_pb2.CLIENT_TLS_NONE,
            deadline_ms=500, stand_in=ledger_admin_pb2.STAND_IN_POLICY_APPROVE,
            stand_in_asset="GBP", stand_in_transaction_max_minor=2_500,
            stand_in_daily_max_minor=10_000,
        )
    )  # fmt: skip
    await demo.admin.SetNotificationSink(
        ledger_admin_pb2.SetNotificationSinkRequest(
            program_id=card.program_id, sink=ledger_admin_pb2.NOTIFICATION_SINK_CLIENT
        )
    )
    for amount in (4_000, 2_000, 200_000):
        answer = await demo.auth.Authorize(demo.request(card, amount))
        who = f"stand-in ({authorization_pb2.StandInReason.Name(answer.stand_in_reason)})"
        print(
            f"  authorise {_gbp(amount):>14}: {answer.response_code} "
            f"decided by {who if answer.stand_in else 'the client'}"
        )
    print("  the client also receives notifications: stop it and authorise again to see")
    print("  stand-in approvals (up to 25.00) and their advices delivered when it is back.")
    demo.ids(card)
