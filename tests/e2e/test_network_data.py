"""The point-of-sale, 3-D Secure and risk data of an authorisation (issue 18, item 4), end
to end: a real server on a real gRPC socket, real Postgres and Redis."""

from __future__ import annotations

import pytest

from authswitch.v1 import authorization_pb2 as pb
from authswitch.v1 import common_pb2 as c
from tests.support.ledger import IssuedCard, Ledger

pytestmark = pytest.mark.timeout(60)


def full_data() -> pb.NetworkData:
    data = pb.NetworkData(
        pos_entry_mode=pb.POS_ENTRY_MODE_ECOMMERCE,
        terminal_type=pb.TERMINAL_TYPE_ECOMMERCE,
        card_present=pb.PRESENCE_NOT_PRESENT,
        cardholder_present=pb.PRESENCE_NOT_PRESENT,
        three_ds=pb.ThreeDSecure(result=pb.THREE_DS_RESULT_AUTHENTICATED, eci="05"),
        recurring=True,
        card_on_file=True,
        merchant_initiated=True,
        avs_result=pb.AVS_RESULT_MATCH,
    )
    data.network_risk_score = 120
    return data


async def send(
    ledger: Ledger, card: IssuedCard, amount_minor: int, data: pb.NetworkData, **kwargs: object
) -> pb.AuthorizeResponse:
    request = ledger.request(card, amount_minor, **kwargs)  # type: ignore[arg-type]
    request.network_data.CopyFrom(data)
    return await ledger.auth.Authorize(request)


async def test_a_request_with_every_field_is_approved(ledger: Ledger) -> None:
    card = await ledger.card(10_000)
    response = await send(ledger, card, 2_500, full_data())
    assert response.response_code == "00"
    assert response.balance.available_minor == 7_500


@pytest.mark.parametrize(
    "field",
    ["pos_entry_mode", "terminal_type", "card_present", "cardholder_present", "avs_result"],
)
async def test_a_value_outside_its_set_is_a_format_error(ledger: Ledger, field: str) -> None:
    card = await ledger.card(10_000)
    data = full_data()
    setattr(data, field, 99)
    response = await send(ledger, card, 1_000, data)
    assert (response.response_code, response.reason) == ("30", pb.REASON_FORMAT_ERROR)
    assert (await ledger.balance(card.account_id)).available_minor == 10_000


@pytest.mark.parametrize(
    ("three_ds", "score", "code"),
    [
        (pb.ThreeDSecure(result=99), 10, "30"),  # type: ignore[arg-type]
        (pb.ThreeDSecure(result=pb.THREE_DS_RESULT_AUTHENTICATED, eci="03"), 10, "30"),
        (pb.ThreeDSecure(result=pb.THREE_DS_RESULT_AUTHENTICATED, eci="5"), 10, "30"),
        (pb.ThreeDSecure(result=pb.THREE_DS_RESULT_AUTHENTICATED, eci="050"), 10, "30"),
        (pb.ThreeDSecure(result=pb.THREE_DS_RESULT_ATTEMPTED, eci="06"), 1_000, "30"),
        (pb.ThreeDSecure(result=pb.THREE_DS_RESULT_ATTEMPTED, eci="06"), -1, "30"),
        (pb.ThreeDSecure(result=pb.THREE_DS_RESULT_ATTEMPTED, eci="06"), 999, "00"),
        (pb.ThreeDSecure(result=pb.THREE_DS_RESULT_FAILED, eci="07"), 0, "00"),
    ],
)
async def test_three_ds_and_risk_score_are_validated(
    ledger: Ledger, three_ds: pb.ThreeDSecure, score: int, code: str
) -> None:
    card = await ledger.card(10_000)
    data = full_data()
    data.three_ds.CopyFrom(three_ds)
    data.network_risk_score = score
    assert (await send(ledger, card, 1_000, data)).response_code == code


async def test_a_card_present_cannot_be_an_ecommerce_entry(ledger: Ledger) -> None:
    card = await ledger.card(10_000)
    data = full_data()
    data.card_present = pb.PRESENCE_PRESENT
    assert (await send(ledger, card, 1_000, data)).response_code == "30"
    data.pos_entry_mode = pb.POS_ENTRY_MODE_CHIP
    assert (await send(ledger, card, 1_000, data, channel=c.CHANNEL_POS)).response_code == "00"


async def test_cashback_is_held_with_the_purchase(ledger: Ledger) -> None:
    card = await ledger.card(10_000)
    data = pb.NetworkData(
        pos_entry_mode=pb.POS_ENTRY_MODE_CHIP,
        card_present=pb.PRESENCE_PRESENT,
        cashback_amount=c.Money(amount_minor=2_000, asset="GBP"),
    )
    # 30.00 of goods and 20.00 cash: billing_amount is the total, and the total is held.
    response = await send(ledger, card, 5_000, data, channel=c.CHANNEL_POS)
    assert response.response_code == "00"
    balance = await ledger.balance(card.account_id)
    assert (balance.available_minor, balance.authorized_minor) == (5_000, 5_000)


async def test_cashback_is_validated(ledger: Ledger) -> None:
    card = await ledger.card(10_000)
    more = pb.NetworkData(cashback_amount=c.Money(amount_minor=5_001, asset="GBP"))
    assert (await send(ledger, card, 5_000, more)).response_code == "13"
    negative = pb.NetworkData(cashback_amount=c.Money(amount_minor=-1, asset="GBP"))
    assert (await send(ledger, card, 5_000, negative)).response_code == "13"
    other_asset = pb.NetworkData(cashback_amount=c.Money(amount_minor=100, asset="EUR"))
    assert (await send(ledger, card, 5_000, other_asset)).response_code == "30"
    no_asset = pb.NetworkData(cashback_amount=c.Money(amount_minor=100))
    assert (await send(ledger, card, 5_000, no_asset)).response_code == "30"
    at_atm = pb.NetworkData(cashback_amount=c.Money(amount_minor=100, asset="GBP"))
    response = await send(
        ledger, card, 5_000, at_atm, transaction_type=c.TRANSACTION_TYPE_CASH_WITHDRAWAL,
        channel=c.CHANNEL_ATM,
    )  # fmt: skip
    assert response.response_code == "30"
    assert (await ledger.balance(card.account_id)).available_minor == 10_000


async def test_a_purchase_with_cashback_is_not_partially_approved(ledger: Ledger) -> None:
    card = await ledger.card(4_000)
    with_cash = pb.NetworkData(cashback_amount=c.Money(amount_minor=1_000, asset="GBP"))
    response = await send(ledger, card, 5_000, with_cash, partial=True)
    assert response.response_code == "51"
    response = await send(ledger, card, 5_000, pb.NetworkData(), partial=True)
    assert (response.response_code, response.approved_amount.amount_minor) == ("10", 4_000)


async def test_an_atm_surcharge_is_part_of_the_withdrawal(ledger: Ledger) -> None:
    card = await ledger.card(10_000)
    data = pb.NetworkData(
        terminal_type=pb.TERMINAL_TYPE_ATM,
        card_present=pb.PRESENCE_PRESENT,
        atm_surcharge=c.Money(amount_minor=250, asset="GBP"),
    )
    response = await send(
        ledger, card, 2_250, data, transaction_type=c.TRANSACTION_TYPE_CASH_WITHDRAWAL,
        channel=c.CHANNEL_ATM, pin=card.pin,
    )  # fmt: skip
    assert response.response_code == "00"
    assert (await ledger.balance(card.account_id)).available_minor == 7_750
    # On a purchase, a surcharge is a format error.
    assert (await send(ledger, card, 1_000, data)).response_code == "30"


async def test_the_same_message_with_other_network_data_is_a_different_payload(
    ledger: Ledger,
) -> None:
    card = await ledger.card(10_000)
    request = ledger.request(card, 1_000)
    request.network_data.CopyFrom(full_data())
    assert (await ledger.auth.Authorize(request)).response_code == "00"
    request.network_data.avs_result = pb.AVS_RESULT_NO_MATCH
    assert (await ledger.auth.Authorize(request)).response_code == "94"
