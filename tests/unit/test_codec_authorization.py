"""An authorisation's answer encodes to the protobuf message the network reads: each field
where the wire expects it (adapters/grpc/codec/authorization.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from authswitch.adapters.grpc.codec.authorization import AuthorizeReplies
from authswitch.domain.codes import Reason
from authswitch.domain.fx import Conversion
from authswitch.domain.ledger import Balance
from authswitch.domain.messages.authorization import AuthorizeAnswer
from authswitch.v1 import authorization_pb2 as pb
from authswitch.v1 import common_pb2 as c


def decoded(answer: AuthorizeAnswer) -> pb.AuthorizeResponse:
    return pb.AuthorizeResponse.FromString(AuthorizeReplies.authorize(answer))


def test_an_approval_shows_amounts_and_balance() -> None:
    balance = Balance(actual_minor=1_000, authorized_minor=300)
    response = decoded(AuthorizeAnswer(Reason.APPROVED, "GBP", 300, 25, balance, "A1B2C3", "d-1"))
    assert response == pb.AuthorizeResponse(
        decision=pb.DECISION_APPROVED, response_code="00", reason=pb.REASON_APPROVED,
        authorization_code="A1B2C3", decision_id="d-1",
        approved_amount=c.Money(amount_minor=300, asset="GBP"),
        fee=c.Money(amount_minor=25, asset="GBP"),
        balance=c.Balance(asset="GBP", actual_minor=1_000, available_minor=700,
                          authorized_minor=300),
    )  # fmt: skip


def test_a_format_error_shows_no_amounts() -> None:
    response = decoded(AuthorizeAnswer(Reason.FORMAT_ERROR, detail="bad"))
    assert response == pb.AuthorizeResponse(
        decision=pb.DECISION_DECLINED, response_code="30", reason=pb.REASON_FORMAT_ERROR,
        detail="bad",
    )  # fmt: skip
    assert not response.HasField("approved_amount")
    assert not response.HasField("balance")


def test_a_client_code_and_a_stand_in_show() -> None:
    client = decoded(AuthorizeAnswer(Reason.CLIENT_DECLINED, "GBP", response_code="62"))
    assert (client.response_code, client.stand_in) == ("62", False)
    stood = decoded(AuthorizeAnswer(Reason.CLIENT_UNAVAILABLE, "GBP", stand_in_reason=1))
    assert (stood.stand_in, stood.stand_in_reason) == (True, pb.STAND_IN_REASON_TIMEOUT)
    assert stood.response_code == "91"


def test_a_converted_approval_shows_the_network_amount_approved_whole() -> None:
    conversion = Conversion(
        billing_minor=4_000, billing_asset="GBP", account_minor=50_000, account_asset="SAT",
        markup_minor=1_000, rate_text="0.0000125",
        rate_effective_from=datetime(2026, 12, 1, tzinfo=UTC),
    )  # fmt: skip
    balance = Balance(actual_minor=100_000, authorized_minor=51_000)
    approved = decoded(
        AuthorizeAnswer(Reason.APPROVED, "SAT", 51_000, 1_000, balance, conversion=conversion)
    )
    assert approved.approved_amount == c.Money(amount_minor=4_000, asset="GBP")
    assert approved.fx.account_amount == c.Money(amount_minor=50_000, asset="SAT")
    assert approved.fx.rate == "0.0000125"
    declined = decoded(AuthorizeAnswer(Reason.INSUFFICIENT_FUNDS, "SAT", conversion=conversion))
    assert declined.approved_amount == c.Money(amount_minor=0, asset="SAT")
    assert declined.fx.billing_amount == c.Money(amount_minor=4_000, asset="GBP")
