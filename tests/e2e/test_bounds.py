"""A string over its maximum (docs/client-contract.md, Field lengths) is refused before
anything is written: response code 30 for the network's messages, INVALID_ARGUMENT for
admin calls; at the maximum it is accepted."""

from __future__ import annotations

import uuid

import grpc
import pytest

from authswitch.app import Application
from authswitch.v1 import authorization_pb2 as pb
from authswitch.v1 import common_pb2 as c
from authswitch.v1 import ledger_admin_pb2 as la
from tests.support.ledger import Ledger

pytestmark = pytest.mark.timeout(60)


async def _decisions(app: Application, *message_ids: str) -> int:
    assert app.pool is not None
    found = await app.pool.fetchval(
        "SELECT count(*) FROM decisions WHERE message_id = ANY($1::text[])", list(message_ids)
    )
    return int(found)


async def test_network_messages_over_a_bound_get_30_and_write_nothing(
    ledger: Ledger, app: Application
) -> None:
    card = await ledger.card(balance_minor=10_000)
    authorized = ledger.request(card, 1_000)
    assert (await ledger.auth.Authorize(authorized)).response_code == "00"
    long_name = pb.Merchant(mcc="5411", country="GB", name="x" * 60_000)
    gbp = c.Money(amount_minor=500, asset="GBP")
    ids = [str(uuid.uuid4()) for _ in range(6)]
    answers: list[
        pb.ClearResponse
        | pb.RefundResponse
        | pb.AdviseResponse
        | pb.ReverseResponse
        | pb.ChargebackResponse
        | pb.RepresentResponse
    ] = [
        await ledger.auth.Clear(
            pb.ClearRequest(
                source="visa", message_id=ids[0], network_reference=authorized.network_reference,
                pan=card.pan, billing_amount=gbp, final=True, merchant=long_name,
            )
        ),
        await ledger.auth.Refund(
            pb.RefundRequest(
                source="visa", message_id=ids[1], pan=card.pan, billing_amount=gbp,
                merchant=long_name,
            )
        ),
        await ledger.auth.Advise(
            pb.AdviseRequest(
                source="visa", message_id=ids[2], pan=card.pan, billing_amount=gbp,
                merchant=long_name, transaction_type=c.TRANSACTION_TYPE_PURCHASE,
            )
        ),
        await ledger.auth.Reverse(
            pb.ReverseRequest(
                source="visa", message_id=ids[3], original_message_id=authorized.message_id,
                network_reference="r" * 129,
            )
        ),
        await ledger.auth.Chargeback(
            pb.ChargebackRequest(
                source="visa", message_id=ids[4], dispute_id=str(uuid.uuid4()),
                reason_code="x" * 9,
            )
        ),
        await ledger.auth.Represent(
            pb.RepresentRequest(
                source="visa", message_id=ids[5], dispute_id=str(uuid.uuid4()) + "x",
            )
        ),
    ]  # fmt: skip
    assert [a.response_code for a in answers] == ["30"] * 6
    assert await _decisions(app, *ids) == 0
    # Nothing moved: the hold is still there in full.
    balance = await ledger.balance(card.account_id)
    assert (balance.actual_minor, balance.authorized_minor) == (10_000, 1_000)
    # At the maximum the same clearing goes through.
    cleared = await ledger.auth.Clear(
        pb.ClearRequest(
            source="visa", message_id=ids[0], network_reference=authorized.network_reference,
            pan=card.pan, billing_amount=gbp, final=True,
            merchant=pb.Merchant(mcc="5411", country="GB", name="x" * 40),
        )
    )  # fmt: skip
    assert cleared.response_code == "00"


async def test_admin_calls_over_a_bound_fail_invalid_argument(
    ledger: Ledger, app: Application
) -> None:
    assert app.pool is not None
    name = f"bounded-{uuid.uuid4().hex[:8]}-"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ledger.admin.CreateClient(la.CreateClientRequest(name=name + "x" * 200))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "name is longer than 200 characters"
    assert (
        await app.pool.fetchval("SELECT count(*) FROM clients WHERE name LIKE $1", name + "%") == 0
    )

    account_id = await ledger.account()
    key = str(uuid.uuid4())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ledger.admin.CreditAccount(
            la.CreditAccountRequest(
                account_id=account_id, amount=c.Money(amount_minor=100, asset="GBP"),
                purpose=la.ADJUSTMENT_PURPOSE_LOAD, idempotency_key=key,
                description="d" * 201,
            )
        )  # fmt: skip
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "description" in (caught.value.details() or "")
    assert (await ledger.balance(account_id)).actual_minor == 0

    program_id = await ledger.program()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ledger.admin.SetFeeSchedule(
            la.SetFeeScheduleRequest(
                product_id=await ledger.product(program_id),
                rules=[la.FeeRule(name="ok", stage=la.FEE_STAGE_AUTHORIZATION, asset="GBP",
                                  mccs=["5411", "54111"])],
            )
        )  # fmt: skip
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "rules[0].mccs is longer than 4 characters"


async def test_authorize_new_pin_is_bounded_in_the_domain(ledger: Ledger) -> None:
    card = await ledger.card(balance_minor=10_000)
    answer = await ledger.authorize(card, 100, new_pin="1" * 13)
    assert answer.response_code == "30"
