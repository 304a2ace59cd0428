"""The client's DecisionService on the wire (decision.proto): what authswitch asks, what
the client answers, and the notifications delivered to it."""

from __future__ import annotations

from typing import Any, cast

from google.protobuf import struct_pb2

from authswitch.adapters.grpc.codec.authorization import network_data_message
from authswitch.adapters.grpc.codec.common import money_message
from authswitch.domain.messages.decision import ClientReply, DecideAsk, Notice
from authswitch.v1 import decision_pb2

__all__ = ["client_reply_of", "decide_request_message", "notify_request_message"]

_DECISION_NAMES: dict[int, str] = {
    int(value): name for name, value in decision_pb2.ClientDecision.items()
}


def decide_request_message(ask: DecideAsk) -> decision_pb2.DecideRequest:
    call = decision_pb2.DecideRequest(
        decision_id=ask.decision_id,
        source=ask.source,
        message_id=ask.message_id,
        network_reference=ask.network_reference,
        program_id=ask.program_id,
        card_id=ask.card_id,
        account_id=ask.account_id,
        pan_last_four=ask.pan_last_four,
        transaction_type=ask.transaction_type,  # type: ignore[arg-type]
        partial_approval_allowed=ask.partial_allowed,
        channel=ask.channel,  # type: ignore[arg-type]
        core_checks=[decision_pb2.CoreCheck(check=name, passed=True) for name in ask.core_checks],
        time_left_ms=ask.time_left_ms,
        incremental=ask.incremental,
        original_message_id=ask.original_message_id,
    )
    call.billing_amount.CopyFrom(money_message(ask.billing_minor, ask.billing_asset))
    if ask.transaction_asset:
        call.transaction_amount.CopyFrom(
            money_message(ask.transaction_minor, ask.transaction_asset)
        )
    call.fee.CopyFrom(money_message(ask.fee_minor, ask.billing_asset))
    call.merchant.mcc = ask.mcc
    call.merchant.country = ask.merchant_country
    call.merchant.merchant_id = ask.merchant_id
    if ask.network is not None:
        call.network_data.CopyFrom(network_data_message(ask.network))
    call.received_at.FromDatetime(ask.received_at)
    return call


def client_reply_of(response: decision_pb2.DecideResponse) -> ClientReply:
    decision = int(response.decision)
    return ClientReply(
        decision=decision,
        # A number the protocol does not know is kept as its number, for the record.
        decision_name=_DECISION_NAMES.get(decision, str(decision)),
        approved_minor=response.approved_amount.amount_minor,
        approved_asset=response.approved_amount.asset,
        response_code=response.response_code,
        authorization_code=response.authorization_code,
        reason=response.reason,
    )


def notify_request_message(notice: Notice) -> decision_pb2.NotifyRequest:
    payload = struct_pb2.Struct()
    payload.update(cast(Any, notice.payload))
    request = decision_pb2.NotifyRequest(
        notification_id=notice.notification_id,
        kind=notice.kind,
        program_id=notice.program_id,
        account_id=notice.account_id,
        card_id=notice.card_id,
        sequence=notice.sequence,
        attempt=notice.attempt,
        payload=payload,
    )
    request.created_at.FromDatetime(notice.created_at)
    return request
