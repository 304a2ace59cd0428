"""The lifecycle's codec (adapters/grpc/codec/lifecycle.py): the domain's enums numbered as
the wire's, presence kept both ways, and nothing shown that an answer leaves out."""

from __future__ import annotations

from datetime import UTC, datetime

from authswitch.adapters.grpc.codec.lifecycle import (
    LifecycleReplyEncoder,
    advice_of,
    clearing_of,
    original_credit_of,
    refund_of,
    reversal_of,
)
from authswitch.domain.codes import Code, Reason
from authswitch.domain.fx import Conversion
from authswitch.domain.ledger import Balance
from authswitch.domain.messages.lifecycle import (
    Advice,
    AdviceAnswer,
    AdviceResult,
    ClearingAnswer,
    CreditAnswer,
    HoldReleaseAnswer,
    OriginalCredit,
    Refund,
    RefundAnswer,
    ReversalAnswer,
    ReversalResult,
)
from authswitch.v1 import authorization_pb2 as pb
from authswitch.v1 import common_pb2, ledger_admin_pb2

PAN = "4000056655665556"


def test_results_match_the_wire_enums() -> None:
    advice = {name.removeprefix("ADVICE_RESULT_"): v for name, v in pb.AdviceResult.items()}
    assert advice == {r.name: r.value for r in AdviceResult}
    reversal = {name.removeprefix("REVERSAL_RESULT_"): v for name, v in pb.ReversalResult.items()}
    assert reversal == {r.name: r.value for r in ReversalResult}


def test_an_absent_amount_is_none_where_presence_matters() -> None:
    assert reversal_of(pb.ReverseRequest(source="s", message_id="m")).amount_minor is None
    zero = pb.ReverseRequest(amount=common_pb2.Money(amount_minor=0, asset="GBP"))
    assert (reversal_of(zero).amount_minor, reversal_of(zero).asset) == (0, "GBP")
    assert clearing_of(pb.ClearRequest(pan=PAN)).amount_minor is None
    sent = pb.ClearRequest(billing_amount=common_pb2.Money(amount_minor=5, asset="EUR"))
    assert (clearing_of(sent).amount_minor, clearing_of(sent).asset) == (5, "EUR")


def test_a_billed_request_keeps_every_field_it_is_sent() -> None:
    billed = common_pb2.Money(amount_minor=1250, asset="USD")
    merchant = pb.Merchant(mcc="7011", country="GB", name="Hotel")
    advice = pb.AdviseRequest(
        source="visa", message_id="m-1", network_reference="n-1", pan=PAN,
        billing_amount=billed, merchant=merchant, original_message_id="m-0",
        authorization_code="A1",
    )  # fmt: skip
    assert advice_of(advice) == Advice(
        "visa", "m-1", PAN, 1250, "USD", network_reference="n-1", original_message_id="m-0",
        authorization_code="A1", mcc="7011",
    )  # fmt: skip
    refund = pb.RefundRequest(
        source="visa", message_id="m-1", network_reference="n-1", pan=PAN,
        billing_amount=billed, merchant=merchant,
    )  # fmt: skip
    assert refund_of(refund) == Refund(
        "visa", "m-1", PAN, 1250, "USD", network_reference="n-1", merchant_name="Hotel"
    )
    credit = pb.CreditRequest(
        source="visa", message_id="m-1", network_reference="n-1", pan=PAN,
        billing_amount=billed, merchant=merchant, sender_name="A Sender",
        credit_type=pb.CREDIT_TYPE_PERSON_TO_PERSON,
    )  # fmt: skip
    assert original_credit_of(credit) == OriginalCredit(
        "visa", "m-1", PAN, 1250, "USD", pb.CREDIT_TYPE_PERSON_TO_PERSON,
        network_reference="n-1", sender_name="A Sender", originator_name="Hotel",
    )  # fmt: skip
    # no billing amount: 0 and ""
    empty = advice_of(pb.AdviseRequest())
    assert (empty.amount_minor, empty.asset) == (0, "")


def test_a_request_never_shows_its_pan() -> None:
    credit = original_credit_of(
        pb.CreditRequest(
            source="s", message_id="m", pan=PAN, credit_type=pb.CREDIT_TYPE_PERSON_TO_PERSON
        )
    )
    assert credit.pan == PAN
    assert PAN not in repr(credit)


def test_an_answer_without_amounts_has_none_on_the_wire() -> None:
    encoder = LifecycleReplyEncoder()
    reply = pb.AdviseResponse.FromString(encoder.advise(AdviceAnswer(Code.FORMAT_ERROR)))
    assert reply == pb.AdviseResponse(response_code=Code.FORMAT_ERROR)
    assert [f.name for f, _ in reply.ListFields()] == ["response_code"]
    zero = pb.AdviseResponse.FromString(
        encoder.advise(AdviceAnswer(Code.APPROVED, held_minor=0, asset="GBP", balance=Balance()))
    )
    assert [f.name for f, _ in zero.ListFields()] == ["response_code", "held", "balance"]
    assert pb.CreditResponse.FromString(encoder.credit(CreditAnswer("14"))).reason == 0
    declined = CreditAnswer("57", reason=Reason.TRANSACTION_NOT_PERMITTED)
    assert pb.CreditResponse.FromString(encoder.credit(declined)).reason == 25


def test_a_hold_release_answer() -> None:
    released = LifecycleReplyEncoder().release_hold(HoldReleaseAnswer(300, "GBP", Balance(900, 0)))
    reply = ledger_admin_pb2.ReleaseHoldResponse.FromString(released)
    assert (reply.released.amount_minor, reply.released.asset) == (300, "GBP")
    assert (reply.balance.actual_minor, reply.balance.available_minor) == (900, 900)


# Each reply with every field it can show, and as bytes on the wire: a reply is stored with
# its decision and a retry gets the stored bytes, so what the encoder makes must not drift
# (hex pinned from the encoder before its common fields were factored out).
_FX = Conversion("USD", 1250, "GBP", 1000, 20, "0.8", datetime(2026, 12, 1, 9, 30, tzinfo=UTC))
_BALANCE = Balance(5_000, 700)
_FULL = {
    "advise": (
        "0a02303010021a0808ac021203474250220e0a0347425010882718cc2120bc05"
        "2a03642d31323d0a0808e2091203555344120808e80712034742501a07081412"
        "034742502203302e382a19323032362d31322d30315430393a33303a30302b30"
        "303a3030"
    ),
    "reverse": (
        "0a02303010011a0808c8011203474250220e0a0347425010882718cc2120bc05"
        "2a03642d32323d0a0808e2091203555344120808e80712034742501a07081412"
        "034742502203302e382a19323032362d31322d30315430393a33303a30302b30"
        "303a3030"
    ),
    "clear": (
        "0a02303010011a0808ac021203474250220808980212034742502a0e0a034742"
        "5010882718cc2120bc053203642d333a03652d334207080512034742504a3d0a"
        "0808e2091203555344120808e80712034742501a07081412034742502203302e"
        "382a19323032362d31322d30315430393a33303a30302b30303a3030"
    ),
    "refund": (
        "0a023030120808960112034742501a0e0a0347425010882718cc2120bc052203"
        "642d342a03652d34323d0a0808e2091203555344120808e80712034742501a07"
        "081412034742502203302e382a19323032362d31322d30315430393a33303a30"
        "302b30303a3030"
    ),
    "credit": (
        "0a02303010011a080890031203474250220e0a0347425010882718cc2120bc05"
        "2a03642d353203652d353a026f6b"
    ),
    "release_hold": "0a0808ac021203474250120e0a0347425010882718cc2120bc05",
}


def test_every_reply_encodes_to_the_same_bytes() -> None:
    encoder, b = LifecycleReplyEncoder(), _BALANCE
    made = {
        "advise": encoder.advise(AdviceAnswer(
            "00", "d-1", AdviceResult.HOLD_UPDATED, held_minor=300, asset="GBP", balance=b,
            fx=_FX,
        )),
        "reverse": encoder.reverse(ReversalAnswer(
            "00", "d-2", ReversalResult.RELEASED, released_minor=200, asset="GBP", balance=b,
            fx=_FX,
        )),
        "clear": encoder.clear(ClearingAnswer(
            "00", "d-3", True, released_minor=300, posted_minor=280, fee_minor=5, asset="GBP",
            balance=b, entry_id="e-3", fx=_FX,
        )),
        "refund": encoder.refund(RefundAnswer(
            "00", "d-4", credited_minor=150, asset="GBP", balance=b, entry_id="e-4", fx=_FX,
        )),
        "credit": encoder.credit(CreditAnswer(
            "00", "d-5", Reason.APPROVED, credited_minor=400, asset="GBP", balance=b,
            entry_id="e-5", detail="ok",
        )),
        "release_hold": encoder.release_hold(HoldReleaseAnswer(300, "GBP", b)),
    }  # fmt: skip
    assert {name: reply.hex() for name, reply in made.items()} == _FULL
    # with nothing but a response code, each is that code alone
    bare = [
        encoder.advise(AdviceAnswer("30")),
        encoder.reverse(ReversalAnswer("30")),
        encoder.clear(ClearingAnswer("30")),
        encoder.refund(RefundAnswer("30")),
        encoder.credit(CreditAnswer("30")),
    ]
    assert [reply.hex() for reply in bare] == ["0a023330"] * 5
