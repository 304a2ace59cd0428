"""Network tokens (issue 18, item 5), end to end: provisioning decisions, token status
independent of the card, and authorisations carrying a token; a real server on a real
gRPC socket, real Postgres and Redis."""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf.message import Message

from authswitch.app import Application
from authswitch.demo import demo_pan
from authswitch.v1 import authorization_pb2 as pb
from authswitch.v1 import common_pb2 as c
from authswitch.v1 import ledger_admin_pb2 as la
from tests.support.ledger import ISSUED_PANS, IssuedCard, Ledger

pytestmark = pytest.mark.timeout(90)

APPLE_PAY = "40010030273"
TOKEN_EXPIRY = "3106"


def new_token() -> str:
    token = demo_pan("48950000")
    ISSUED_PANS.append(token)  # the session's log check looks for it too
    return token


async def provision(
    ledger: Ledger, card: IssuedCard, token: str, *, score: int | None = None, **kw: str
) -> pb.ProvisionTokenResponse:
    request = pb.ProvisionTokenRequest(
        pan=kw.get("pan", card.pan), expiry=kw.get("expiry", card.expiry),
        cvv2=kw.get("cvv2", card.cvv2), token=token, token_expiry=TOKEN_EXPIRY,
        token_requestor_id=APPLE_PAY,
    )  # fmt: skip
    if score is not None:
        request.wallet_risk_score = score
    return await ledger.auth.ProvisionToken(request)


async def pay(
    ledger: Ledger, card: IssuedCard, token: str, amount_minor: int = 1_000, **kw: object
) -> pb.AuthorizeResponse:
    request = ledger.request(card, amount_minor, pan="", cvv2="", expiry=TOKEN_EXPIRY)
    request.token = token
    for name, value in kw.items():
        if isinstance(value, Message):
            getattr(request, name).CopyFrom(value)
        else:
            setattr(request, name, value)
    return await ledger.auth.Authorize(request)


async def status(ledger: Ledger, token_id: str, to: pb.TokenStatus.ValueType) -> None:
    await ledger.admin.SetTokenStatus(
        la.SetTokenStatusRequest(token_id=token_id, status=to, reason="test")
    )


async def test_a_provisioned_token_pays_from_its_card(ledger: Ledger, app: Application) -> None:
    card = await ledger.card(10_000)
    token = new_token()
    provisioned = await provision(ledger, card, token)
    assert provisioned.decision == pb.TOKEN_DECISION_APPROVE
    assert provisioned.status == pb.TOKEN_STATUS_ACTIVE
    response = await pay(ledger, card, token, 2_500)
    assert response.response_code == "00"
    assert response.balance.available_minor == 7_500
    listed = await ledger.admin.ListCardTokens(la.ListCardTokensRequest(card_id=card.card_id))
    assert [(t.token_id, t.last_four, t.status) for t in listed.tokens] == [
        (provisioned.token_id, token[-4:], pb.TOKEN_STATUS_ACTIVE)
    ]
    # The token number is kept only as its keyed hash.
    assert app.pool is not None
    assert await app.pool.fetchval(
        "SELECT count(*) FROM network_tokens WHERE token_hmac = $1", token.encode()
    ) == 0  # fmt: skip
    # The same token again: idempotent, the same token.
    again = await provision(ledger, card, token)
    assert (again.decision, again.token_id) == (pb.TOKEN_DECISION_APPROVE, provisioned.token_id)


async def test_a_token_has_its_own_status(ledger: Ledger, app: Application) -> None:
    card = await ledger.card(10_000)
    phone, watch = new_token(), new_token()
    phone_id = (await provision(ledger, card, phone)).token_id
    await provision(ledger, card, watch)
    await status(ledger, phone_id, pb.TOKEN_STATUS_SUSPENDED)
    suspended = await pay(ledger, card, phone)
    assert (suspended.response_code, suspended.reason) == ("62", pb.REASON_TOKEN_NOT_ACTIVE)
    assert (await pay(ledger, card, watch)).response_code == "00"  # the card's other token
    assert (await ledger.authorize(card, 100)).response_code == "00"  # and the card itself
    await status(ledger, phone_id, pb.TOKEN_STATUS_ACTIVE)
    assert (await pay(ledger, card, phone)).response_code == "00"
    await status(ledger, phone_id, pb.TOKEN_STATUS_DEACTIVATED)
    assert (await pay(ledger, card, phone)).response_code == "62"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await status(ledger, phone_id, pb.TOKEN_STATUS_ACTIVE)  # deactivation is final
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert app.pool is not None
    rows = await app.pool.fetch(
        "SELECT payload FROM notifications WHERE card_id = $1 AND kind = 'TOKEN_STATUS_CHANGED'"
        " ORDER BY seq",
        card.card_id,
    )
    assert [json.loads(r["payload"])["to"] for r in rows] == ["SUSPENDED", "ACTIVE", "DEACTIVATED"]


async def test_the_card_status_still_applies_to_its_tokens(ledger: Ledger) -> None:
    card = await ledger.card(10_000)
    token = new_token()
    token_id = (await provision(ledger, card, token)).token_id
    await status(ledger, token_id, pb.TOKEN_STATUS_SUSPENDED)
    await ledger.admin.ChangeCardStatus(
        la.ChangeCardStatusRequest(card_id=card.card_id, status=c.CARD_STATUS_LOST, reason="x")
    )
    assert (await pay(ledger, card, token)).response_code == "41"  # check 3 before the token


async def test_token_requests_are_validated(ledger: Ledger) -> None:
    card = await ledger.card(10_000)
    token = new_token()
    await provision(ledger, card, token)
    assert (await pay(ledger, card, token, auth=pb.AuthData(cvv2="123"))).response_code == "30"
    assert (await pay(ledger, card, token, pan=card.pan)).response_code == "30"
    card_expiry = pb.AuthData(expiry=card.expiry)  # the card's, not the token's
    assert (await pay(ledger, card, token, auth=card_expiry)).response_code == "54"
    assert (await pay(ledger, card, token[:-1] + "x")).response_code == "14"
    assert (await pay(ledger, card, new_token())).response_code == "14"  # never provisioned
    with_pin = pb.AuthData(pin=card.pin, expiry=TOKEN_EXPIRY)
    assert (await pay(ledger, card, token, auth=with_pin)).response_code == "00"


async def test_provisioning_declines_a_card_that_is_not_fit(ledger: Ledger) -> None:
    card = await ledger.card(10_000)
    assert (await provision(ledger, card, new_token(), cvv2="000")).decision == (
        pb.TOKEN_DECISION_DECLINE
    )
    assert (await provision(ledger, card, new_token(), expiry="3001")).decision == (
        pb.TOKEN_DECISION_DECLINE
    )
    unknown = await provision(ledger, card, new_token(), pan=demo_pan("99999900"))
    assert (unknown.decision, unknown.token_id) == (pb.TOKEN_DECISION_DECLINE, "")
    await ledger.admin.ChangeCardStatus(
        la.ChangeCardStatusRequest(card_id=card.card_id, status=c.CARD_STATUS_SUSPENDED, reason="x")
    )
    declined = await provision(ledger, card, new_token())
    assert (declined.decision, declined.detail) == (
        pb.TOKEN_DECISION_DECLINE, "the card is suspended",
    )  # fmt: skip
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await provision(ledger, card, "1234")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_recent_declines_require_step_up_then_activation(ledger: Ledger) -> None:
    card = await ledger.card(1_000)
    for _ in range(3):
        assert (await ledger.authorize(card, 5_000)).response_code == "51"
    token = new_token()
    stepped = await provision(ledger, card, token)
    assert stepped.decision == pb.TOKEN_DECISION_REQUIRE_STEP_UP
    assert stepped.status == pb.TOKEN_STATUS_INACTIVE
    assert stepped.detail == "3 declined authorisations in 24 hours"
    assert (await pay(ledger, card, token, 100)).response_code == "62"
    await status(ledger, stepped.token_id, pb.TOKEN_STATUS_ACTIVE)  # step-up passed
    assert (await pay(ledger, card, token, 100)).response_code == "00"


async def test_the_product_policy_decides(ledger: Ledger) -> None:
    card = await ledger.card(10_000)
    policy = la.SetTokenPolicyRequest(
        product_id=card.product_id, tokens_allowed=True, step_up_risk_score_min=50,
        decline_risk_score_min=90,
    )  # fmt: skip
    await ledger.admin.SetTokenPolicy(policy)
    assert [
        (await provision(ledger, card, new_token(), score=score)).decision for score in (10, 50, 90)
    ] == [pb.TOKEN_DECISION_APPROVE, pb.TOKEN_DECISION_REQUIRE_STEP_UP, pb.TOKEN_DECISION_DECLINE]
    await ledger.admin.SetTokenPolicy(
        la.SetTokenPolicyRequest(product_id=card.product_id, tokens_allowed=False)
    )
    refused = await provision(ledger, card, new_token())
    assert (refused.decision, refused.detail) == (
        pb.TOKEN_DECISION_DECLINE, "the product does not allow tokens",
    )  # fmt: skip
    await ledger.admin.SetTokenPolicy(
        la.SetTokenPolicyRequest(product_id=card.product_id, tokens_allowed=True,
                                 step_up_always=True)
    )  # fmt: skip
    assert (await provision(ledger, card, new_token())).decision == (
        pb.TOKEN_DECISION_REQUIRE_STEP_UP
    )
