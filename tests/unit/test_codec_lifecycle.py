"""The lifecycle's codec (adapters/grpc/codec/lifecycle.py): the domain's enums numbered as
the wire's, presence kept both ways, and nothing shown that an answer leaves out."""

from __future__ import annotations

from authswitch.adapters.grpc.codec.lifecycle import (
    LifecycleReplyEncoder,
    clearing_of,
    original_credit_of,
    reversal_of,
)
from authswitch.domain.codes import Code, Reason
from authswitch.domain.ledger import Balance
from authswitch.domain.messages.lifecycle import (
    AdviceAnswer,
    AdviceResult,
    CreditAnswer,
    HoldReleaseAnswer,
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
