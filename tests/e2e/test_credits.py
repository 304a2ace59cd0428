"""Account-funding credits, the network's original credit transactions (issue 18, item 6),
end to end: a real server on a real gRPC socket, real Postgres and Redis."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from authswitch.app import Application
from authswitch.v1 import authorization_pb2 as pb
from authswitch.v1 import common_pb2 as c
from authswitch.v1 import ledger_admin_pb2 as la
from tests.support.ledger import IssuedCard, Ledger

pytestmark = pytest.mark.timeout(90)

CREDIT = c.TRANSACTION_TYPE_ORIGINAL_CREDIT


def credit_request(
    card: IssuedCard, amount_minor: int, asset: str = "GBP", *, message_id: str | None = None,
    credit_type: pb.CreditType.ValueType = pb.CREDIT_TYPE_PERSON_TO_PERSON,
    sender_name: str = "A Sender", pan: str | None = None,
) -> pb.CreditRequest:  # fmt: skip
    return pb.CreditRequest(
        source="visa", message_id=message_id or str(uuid.uuid4()),
        network_reference=str(uuid.uuid4()), pan=card.pan if pan is None else pan,
        billing_amount=c.Money(amount_minor=amount_minor, asset=asset),
        transaction_amount=c.Money(amount_minor=amount_minor, asset=asset),
        credit_type=credit_type, sender_name=sender_name,
        merchant=pb.Merchant(mcc="6012", country="GB", name="Payouts Ltd"),
    )  # fmt: skip


async def credit(
    ledger: Ledger, card: IssuedCard, amount_minor: int, **kw: object
) -> pb.CreditResponse:
    return await ledger.auth.Credit(credit_request(card, amount_minor, **kw))  # type: ignore[arg-type]


async def test_a_credit_is_one_balanced_entry_and_a_notification(
    ledger: Ledger, app: Application
) -> None:
    card = await ledger.card(1_000)
    response = await credit(ledger, card, 5_000)
    assert (response.response_code, response.reason) == ("00", pb.REASON_APPROVED)
    assert response.credited == c.Money(amount_minor=5_000, asset="GBP")
    assert (response.balance.actual_minor, response.balance.available_minor) == (6_000, 6_000)
    balance = await ledger.balance(card.account_id)
    assert (balance.actual_minor, balance.available_minor) == (6_000, 6_000)
    assert (await ledger.authorize(card, 6_000)).response_code == "00"  # spendable at once
    assert app.pool is not None
    postings = await app.pool.fetch(
        "SELECT account_id::text, amount_minor FROM postings WHERE entry_id = $1",
        uuid.UUID(response.entry_id),
    )
    assert sum(p["amount_minor"] for p in postings) == 0
    assert {p["account_id"]: p["amount_minor"] for p in postings}[card.account_id] == 5_000
    rows = await app.pool.fetch(
        "SELECT payload FROM notifications WHERE card_id = $1 AND kind = 'CREDIT'",
        card.card_id,
    )
    payload = json.loads(rows[0]["payload"])
    assert (payload["amount_minor"], payload["credit_type"], payload["sender_name"]) == (
        5_000, "PERSON_TO_PERSON", "A Sender",
    )  # fmt: skip


async def test_a_credit_is_idempotent(ledger: Ledger) -> None:
    card = await ledger.card(0)
    request = credit_request(card, 2_500)
    first = await ledger.auth.Credit(request)
    again = await ledger.auth.Credit(request)
    assert first.response_code == "00"
    assert again == first
    assert (await ledger.balance(card.account_id)).actual_minor == 2_500
    request.billing_amount.amount_minor = 2_600
    assert (await ledger.auth.Credit(request)).response_code == "94"
    assert (await ledger.balance(card.account_id)).actual_minor == 2_500


async def test_concurrent_retransmissions_credit_once(ledger: Ledger) -> None:
    card = await ledger.card(0)
    request = credit_request(card, 1_000)
    responses = await asyncio.gather(*(ledger.auth.Credit(request) for _ in range(20)))
    assert {r.response_code for r in responses} == {"00"}
    assert len({r.decision_id for r in responses}) == 1
    assert (await ledger.balance(card.account_id)).actual_minor == 1_000


@pytest.mark.parametrize(
    ("status", "code"),
    [(c.CARD_STATUS_LOST, "41"), (c.CARD_STATUS_STOLEN, "43"), (c.CARD_STATUS_BLOCKED, "62"),
     (c.CARD_STATUS_CLOSED, "62")],
)  # fmt: skip
async def test_card_status_declines(
    ledger: Ledger, status: c.CardStatus.ValueType, code: str
) -> None:
    card = await ledger.card(1_000)
    await ledger.admin.ChangeCardStatus(
        la.ChangeCardStatusRequest(card_id=card.card_id, status=status, reason="test")
    )
    assert (await credit(ledger, card, 1_000)).response_code == code
    assert (await ledger.balance(card.account_id)).actual_minor == 1_000


async def test_malformed_and_unknown(ledger: Ledger) -> None:
    card = await ledger.card(0)
    assert (await credit(ledger, card, 0)).response_code == "13"
    assert (await credit(ledger, card, -5)).response_code == "13"
    assert (await credit(ledger, card, 100, credit_type=99)).response_code == "30"
    assert (await credit(ledger, card, 100, sender_name="x" * 31)).response_code == "30"
    assert (await credit(ledger, card, 100, asset="XXX")).response_code == "30"
    assert (await credit(ledger, card, 100, pan="4000000000000002")).response_code == "14"
    # An asset the account holds no balance in: not permitted.
    declined = await credit(ledger, card, 100, asset="EUR")
    assert (declined.response_code, declined.reason) == ("57", pb.REASON_TRANSACTION_NOT_PERMITTED)
    assert (await ledger.balance(card.account_id)).actual_minor == 0


async def test_credits_have_their_own_limits(ledger: Ledger) -> None:
    card = await ledger.card(100_000)
    await ledger.limit(
        card.product_id, subject=la.LIMIT_SUBJECT_CARD, period=la.PERIOD_DAY,
        amount_max_minor=10_000, count_max=3, transaction_types=[CREDIT],
    )  # fmt: skip
    await ledger.limit(
        card.product_id,
        subject=la.LIMIT_SUBJECT_CARD,
        period=la.PERIOD_DAY,
        amount_max_minor=5_000,
    )  # a purchase limit (every authorisation type): it caps no credit
    assert (await credit(ledger, card, 6_000)).response_code == "00"
    over = await credit(ledger, card, 4_001)
    assert (over.response_code, over.detail) == ("61", "credit amount limit exceeded")
    assert (await credit(ledger, card, 2_000)).response_code == "00"
    assert (await credit(ledger, card, 1_000)).response_code == "00"
    count = await credit(ledger, card, 1)  # 90.01 of 100.00, but a fourth credit today
    assert (count.response_code, count.detail) == ("65", "credit count limit exceeded")
    # The credit limit caps nothing else: purchases meet their own 50.00 only.
    assert (await ledger.authorize(card, 5_000)).response_code == "00"
    usage = await ledger.usage(card.account_id)
    assert sorted(usage.values()) == [(5_000, 1), (9_000, 3)]


async def test_a_count_limit_on_credits(ledger: Ledger) -> None:
    card = await ledger.card(0)
    await ledger.limit(
        card.product_id, subject=la.LIMIT_SUBJECT_ACCOUNT, period=la.PERIOD_MONTH, count_max=2,
        transaction_types=[CREDIT],
    )  # fmt: skip
    assert [(await credit(ledger, card, 100)).response_code for _ in range(3)] == [
        "00", "00", "65",
    ]  # fmt: skip


async def test_concurrent_credits_never_pass_a_limit_together(ledger: Ledger) -> None:
    card = await ledger.card(0)
    await ledger.limit(
        card.product_id, subject=la.LIMIT_SUBJECT_ACCOUNT, period=la.PERIOD_DAY,
        amount_max_minor=10_000, transaction_types=[CREDIT],
    )  # fmt: skip
    responses = await asyncio.gather(*(credit(ledger, card, 1_000) for _ in range(25)))
    assert [r.response_code for r in responses].count("00") == 10
    assert (await ledger.balance(card.account_id)).actual_minor == 10_000


async def test_a_product_that_does_not_take_credits(ledger: Ledger) -> None:
    purchases_only = await ledger.card(
        0, product_kwargs={"allowed_transaction_types": [c.TRANSACTION_TYPE_PURCHASE]}
    )
    assert (await credit(ledger, purchases_only, 100)).response_code == "57"
    with_credits = await ledger.card(
        0, product_kwargs={"allowed_transaction_types": [c.TRANSACTION_TYPE_PURCHASE, CREDIT]}
    )
    assert (await credit(ledger, with_credits, 100)).response_code == "00"


async def test_an_authorisation_of_the_credit_type_is_malformed(ledger: Ledger) -> None:
    card = await ledger.card(10_000)
    assert (await ledger.authorize(card, 100, transaction_type=CREDIT)).response_code == "30"
