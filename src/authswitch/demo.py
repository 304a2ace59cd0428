"""``authswitch demo``: a funded demo card on a running server, and how to use it.

Creates a client, an on-ledger program, a product, a GBP account loaded with 100.00 and a
card, then prints the card's details and a ready-to-run authorisation. The PAN is a test
number in the 999999 BIN, printed to the operator's terminal (never to a log).
"""

from __future__ import annotations

import secrets
import sys
import uuid
from datetime import UTC, datetime

import grpc

from authswitch.domain.cards import luhn_valid
from authswitch.v1 import common_pb2, ledger_admin_pb2, ledger_admin_pb2_grpc

__all__ = ["demo_pan", "run_demo"]


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


async def run_demo(target: str) -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            await channel.channel_ready()
        except grpc.aio.AioRpcError:
            print(f"no authswitch server at {target}: start one with `make serve`", file=sys.stderr)
            return 1
        admin = ledger_admin_pb2_grpc.LedgerAdminServiceStub(channel)
        client = await admin.CreateClient(ledger_admin_pb2.CreateClientRequest(name="Demo client"))
        program = await admin.CreateProgram(
            ledger_admin_pb2.CreateProgramRequest(
                client_id=client.client_id,
                name="Demo program",
                mode=common_pb2.LEDGER_MODE_ON_LEDGER,
                time_zone="Europe/London",
            )
        )
        product = await admin.CreateProduct(
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
        account = await admin.CreateAccount(
            ledger_admin_pb2.CreateAccountRequest(
                product_id=product.product_id,
                account_type=common_pb2.ACCOUNT_TYPE_SINGLE,
                assets=["GBP"],
                name="Demo account",
                reference="DEMO0001",
            )
        )
        await admin.CreditAccount(
            ledger_admin_pb2.CreditAccountRequest(
                account_id=account.account_id,
                amount=common_pb2.Money(amount_minor=10_000, asset="GBP"),
                purpose=ledger_admin_pb2.ADJUSTMENT_PURPOSE_LOAD,
                idempotency_key=f"demo-load-{uuid.uuid4()}",
                description="demo load",
            )
        )
        pan, expiry, pin = demo_pan(), _expiry_in_years(3), "1234"
        card = await admin.CreateCard(
            ledger_admin_pb2.CreateCardRequest(
                account_id=account.account_id, pan=pan, expiry=expiry, pin=pin
            )
        )
    print(
        f"""Demo card ready on {target}
  client   {client.client_id}
  program  {program.program_id} (on-ledger)
  product  {product.product_id}
  account  {account.account_id}  balance GBP 100.00
  card     {card.card_id}
  PAN {pan}  expiry {expiry}  CVV2 {card.cvv2}  PIN {pin}

Authorise GBP 40.00 against it (run in the project's virtualenv):

  .venv/bin/python - <<'PY'
import asyncio, uuid, grpc
from authswitch.v1 import authorization_pb2 as a, authorization_pb2_grpc as ag, common_pb2 as c
async def main():
    async with grpc.aio.insecure_channel("{target}") as ch:
        r = await ag.AuthorizationServiceStub(ch).Authorize(a.AuthorizeRequest(
            source="demo", message_id=str(uuid.uuid4()), network_reference=str(uuid.uuid4()),
            transaction_type=c.TRANSACTION_TYPE_PURCHASE, pan="{pan}",
            auth=a.AuthData(expiry="{expiry}", cvv2="{card.cvv2}"),
            billing_amount=c.Money(amount_minor=4000, asset="GBP"),
            merchant=a.Merchant(mcc="5411", country="GB"), channel=c.CHANNEL_ECOMMERCE))
        print(r)
asyncio.run(main())
PY
"""
    )
    return 0
