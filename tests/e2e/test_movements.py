"""Movements in near real time (seed 000; issue 17 item 3): an on-ledger programme that
subscribes gets a MOVEMENT notification for every balance movement, with the balance after
it, through the durable outbox (here its signed webhook), in order per account."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import grpc
import pytest

from authswitch.domain.signatures import SIGNATURE_HEADER, verify
from authswitch.v1 import common_pb2 as c
from authswitch.v1 import ledger_admin_pb2 as la
from tests.e2e import test_offledger as shared
from tests.e2e.test_offledger import WEBHOOK_SECRET, World, eventually
from tests.support.ledger import IssuedCard

# The off-ledger tests' world (a server with a manual clock, a webhook receiver), our own.
webhook_server = shared.webhook_server
world = shared.world
w = shared.w

pytestmark = pytest.mark.timeout(120)


async def _subscribed_card(w: World, *, subscribe: bool = True) -> IssuedCard:
    program_id = await w.ledger.program()
    await w.ledger.admin.SetNotificationSink(
        la.SetNotificationSinkRequest(
            program_id=program_id, sink=la.NOTIFICATION_SINK_WEBHOOK, url=w.webhook.url,
            secret_name="webhook-key",
        )
    )  # fmt: skip
    if subscribe:
        await w.ledger.admin.SetMovementSubscription(
            la.SetMovementSubscriptionRequest(program_id=program_id, enabled=True)
        )
    product_id = await w.ledger.product(program_id)
    purchases = [c.TRANSACTION_TYPE_PURCHASE]
    await w.ledger.fees(
        product_id,
        la.FeeRule(name="auth", stage=la.FEE_STAGE_AUTHORIZATION, asset="GBP", flat_minor=25,
                   transaction_types=purchases),
        la.FeeRule(name="clearing", stage=la.FEE_STAGE_CLEARING, asset="GBP", flat_minor=10,
                   transaction_types=purchases),
    )  # fmt: skip
    account_id = await w.ledger.account(product_id)
    return await w.ledger.card(account_id=account_id)


def _documents(w: World, account_id: str, kind: str = "MOVEMENT") -> list[dict[str, Any]]:
    found = []
    for headers, body in list(w.webhook.received):
        document = json.loads(body)
        if document["kind"] == kind and document["account_id"] == account_id:
            found.append((headers, body, document))
    # At least once: a repeat has the same notification id (deduplicate on it).
    unique: dict[str, dict[str, Any]] = {}
    for headers, body, document in found:
        signature = headers[SIGNATURE_HEADER]
        signed_at = int(signature.split(",")[0].removeprefix("t="))
        assert verify(WEBHOOK_SECRET, signature, body, now=signed_at)
        unique.setdefault(document["notification_id"], document)
    return list(unique.values())


async def test_every_movement_is_sent_with_the_balance_after_it(w: World) -> None:
    card = await _subscribed_card(w)
    ledger = w.ledger
    await ledger.credit(card.account_id, 10_000)  # a load
    first = ledger.request(card, 4_000)
    assert (await ledger.auth.Authorize(first)).response_code == "00"  # 4,025 held
    assert (await ledger.authorize(card, 50_000)).response_code == "51"  # declined
    assert (await ledger.reverse(first.message_id, 1_000)).response_code == "00"
    clearing_id = str(uuid.uuid4())
    cleared = await ledger.clear(card, first.network_reference, 2_500, message_id=clearing_id)
    assert cleared.response_code == "00"
    assert (await ledger.refund(card, 500)).response_code == "00"
    await ledger.admin.DebitAccount(
        la.DebitAccountRequest(
            account_id=card.account_id, amount=c.Money(amount_minor=100, asset="GBP"),
            purpose=la.ADJUSTMENT_PURPOSE_DEBIT_ADJUSTMENT, idempotency_key=str(uuid.uuid4()),
        )
    )  # fmt: skip
    assert (await ledger.advise(card, 700)).response_code == "00"
    holds = await ledger.admin.ListHolds(
        la.ListHoldsRequest(account_id=card.account_id, open_only=True)
    )
    advice_hold = next(h for h in holds.holds if h.original.amount_minor == 700)
    await ledger.admin.ReleaseHold(
        la.ReleaseHoldRequest(
            hold_id=advice_hold.hold_id, reason="stale", idempotency_key=str(uuid.uuid4())
        )
    )
    stale = ledger.request(card, 300)
    assert (await ledger.auth.Authorize(stale)).response_code == "00"
    w.clock.advance(timedelta(days=8))
    assert await w.app.lifecycle.age_off() >= 1
    await ledger.open_dispute(clearing_id, 1_000, provisional=True)

    expected = [
        "LOAD", "AUTHORIZATION", "AUTHORIZATION", "REVERSAL", "CLEARING", "REFUND",
        "ADJUSTMENT", "ADVICE", "RELEASE", "AUTHORIZATION", "AGE_OFF", "DISPUTE",
    ]  # fmt: skip
    await eventually(
        lambda: len(_documents(w, card.account_id)) == len(expected), "every movement sent"
    )
    documents = sorted(_documents(w, card.account_id), key=lambda d: d["sequence"])
    assert [d["payload"]["movement"] for d in documents] == expected
    # Stable, distinct ids; in order per account.
    assert len({d["notification_id"] for d in documents}) == len(expected)
    # Each says what moved and the balance after it: replaying the deltas from nothing
    # arrives at every balance_after in turn, and at the ledger's balance at the end.
    actual = authorized = 0
    for document in documents:
        payload = document["payload"]
        actual += payload["actual_delta_minor"]
        authorized += payload["authorized_delta_minor"]
        assert payload["available_delta_minor"] == (
            payload["actual_delta_minor"] - payload["authorized_delta_minor"]
        )
        after = payload["balance_after"]
        assert (after["actual_minor"], after["authorized_minor"]) == (actual, authorized), payload
        assert after["available_minor"] == actual - authorized
    assert (actual, actual - authorized, authorized) == await ledger.figures(card.account_id)
    # The messages they belong to.
    by_kind = {d["payload"]["movement"]: d["payload"] for d in documents}
    assert by_kind["AUTHORIZATION"]["message_id"] == stale.message_id
    authorizations = [
        d["payload"] for d in documents if d["payload"]["movement"] == "AUTHORIZATION"
    ]
    assert [(p["response_code"], p["authorized_delta_minor"], p["fee_minor"])
            for p in authorizations] == [
        ("00", 4_025, 25), ("51", 0, 0), ("00", 325, 25),
    ]  # fmt: skip
    assert by_kind["CLEARING"]["actual_delta_minor"] == -(2_500 + 10)  # with its clearing fee
    assert by_kind["REVERSAL"]["original_message_id"] == first.message_id
    assert by_kind["LOAD"]["purpose"] == "LOAD"
    assert by_kind["DISPUTE"]["actual_delta_minor"] == 1_000  # provisional credit


async def test_a_transfer_is_a_movement_of_each_account(w: World) -> None:
    card = await _subscribed_card(w)
    ledger = w.ledger
    account = await ledger.admin.GetAccount(la.GetAccountRequest(account_id=card.account_id))
    customer = (
        await ledger.admin.CreateCustomer(la.CreateCustomerRequest(program_id=account.program_id))
    ).customer_id
    opened = [
        await ledger.admin.CreateAccount(
            la.CreateAccountRequest(
                product_id=account.product_id, account_type=c.ACCOUNT_TYPE_SINGLE,
                assets=["GBP"], customer_ids=[customer],
            )
        )
        for _ in range(2)
    ]  # fmt: skip
    main, pot = (a.account_id for a in opened)
    await ledger.credit(main, 5_000)
    await ledger.admin.Transfer(
        la.TransferRequest(
            from_account_id=main, to_account_id=pot, amount=c.Money(amount_minor=1_500,
            asset="GBP"), idempotency_key=str(uuid.uuid4()),
        )
    )  # fmt: skip
    await eventually(lambda: len(_documents(w, main)) == 2, "the source's movements")
    await eventually(lambda: len(_documents(w, pot)) == 1, "the destination's movement")
    _, out = sorted(_documents(w, main), key=lambda d: d["sequence"])
    assert (out["payload"]["movement"], out["payload"]["actual_delta_minor"]) == (
        "TRANSFER",
        -1_500,
    )
    assert out["payload"]["balance_after"]["actual_minor"] == 3_500
    [into] = _documents(w, pot)
    assert (into["payload"]["movement"], into["payload"]["actual_delta_minor"]) == (
        "TRANSFER",
        1_500,
    )
    assert into["payload"]["message_id"] == out["payload"]["message_id"]


async def test_an_unsubscribed_programme_sends_no_movement(w: World) -> None:
    card = await _subscribed_card(w, subscribe=False)
    await w.ledger.credit(card.account_id, 1_000)
    assert (await w.ledger.authorize(card, 100)).response_code == "00"
    clearing = await w.ledger.clear(card, "unmatched-" + card.card_id, 100)
    assert clearing.response_code == "00"
    # Once the clearing is delivered, whatever the account notified has been.
    await eventually(lambda: bool(_documents(w, card.account_id, "CLEARING")), "clearing")
    assert _documents(w, card.account_id) == []
    assert w.app.pool is not None
    assert not await w.app.pool.fetchval(
        "SELECT count(*) FROM notifications WHERE account_id = $1 AND kind = 'MOVEMENT'",
        card.account_id,
    )


async def test_subscriptions_that_could_never_deliver_are_refused(w: World) -> None:
    off_ledger = await w.ledger.program(c.LEDGER_MODE_OFF_LEDGER)
    no_sink = await w.ledger.program()
    for program_id, needle in ((off_ledger, "off-ledger"), (no_sink, "sink")):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await w.ledger.admin.SetMovementSubscription(
                la.SetMovementSubscriptionRequest(program_id=program_id, enabled=True)
            )
        assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert needle in (refused.value.details() or "")
