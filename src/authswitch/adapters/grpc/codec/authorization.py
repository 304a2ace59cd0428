"""Authorisation requests and answers on the wire (authorization.proto)."""

from __future__ import annotations

from authswitch.adapters.grpc.codec.common import balance_message, fx_message, money_message
from authswitch.domain.authorization import AuthorizationRequest
from authswitch.domain.codes import Reason, outcome
from authswitch.domain.messages.authorization import AuthorizeAnswer
from authswitch.domain.networkdata import NetworkData
from authswitch.v1 import authorization_pb2 as pb

__all__ = [
    "AuthorizeReplies",
    "authorization_request_of",
    "network_data_message",
    "network_data_of",
]


_APPROVALS = frozenset({Reason.APPROVED, Reason.PARTIALLY_APPROVED})


class AuthorizeReplies:
    """The bytes of an authorisation's answer, as stored with its decision and sent."""

    @staticmethod
    def authorize(answer: AuthorizeAnswer) -> bytes:
        return authorize_message(answer).SerializeToString()


def authorize_message(answer: AuthorizeAnswer) -> pb.AuthorizeResponse:
    result = outcome(answer.reason)
    response = pb.AuthorizeResponse(
        decision=int(result.decision),  # type: ignore[arg-type]
        response_code=answer.response_code or result.response_code,
        reason=int(answer.reason),  # type: ignore[arg-type]
        authorization_code=answer.authorization_code,
        decision_id=answer.decision_id,
        detail=answer.detail,
    )
    asset = answer.asset
    if asset:
        response.approved_amount.CopyFrom(money_message(answer.approved_minor, asset))
        response.fee.CopyFrom(money_message(answer.fee_minor, asset))
    if answer.balance is not None:
        response.balance.CopyFrom(balance_message(asset, answer.balance))
    if answer.stand_in_reason:
        response.stand_in = True
        response.stand_in_reason = answer.stand_in_reason  # type: ignore[assignment]
    conversion = answer.conversion
    if conversion is not None:
        response.fx.CopyFrom(fx_message(conversion))
        if answer.reason in _APPROVALS:  # the network's amount, approved whole
            response.approved_amount.CopyFrom(
                money_message(conversion.billing_minor, conversion.billing_asset)
            )
    return response


def authorization_request_of(request: pb.AuthorizeRequest) -> AuthorizationRequest:
    """The domain view of an authorisation request; validation happens in the domain.

    A purchase with cash back is approved in full or not at all (partial approval is
    withdrawn from it): a partial approval cannot say whether the cash was given."""
    network = None
    partial_allowed = request.partial_approval_allowed
    if request.HasField("network_data"):  # one cheap check when the network sent none
        network = network_data_of(request.network_data)
        if network.cashback_minor:
            partial_allowed = False
    return AuthorizationRequest(
        source=request.source,
        message_id=request.message_id,
        network_reference=request.network_reference,
        transaction_type=request.transaction_type,
        pan=request.pan,
        pin=request.auth.pin,
        expiry_yymm=request.auth.expiry,
        cvv2=request.auth.cvv2,
        new_pin=request.auth.new_pin,
        transaction_amount_minor=request.transaction_amount.amount_minor,
        transaction_asset=request.transaction_amount.asset,
        billing_amount_minor=request.billing_amount.amount_minor,
        billing_asset=request.billing_amount.asset,
        partial_allowed=partial_allowed,
        mcc=request.merchant.mcc,
        merchant_country=request.merchant.country,
        channel=request.channel,
        incremental=request.incremental,
        original_message_id=request.original_message_id,
        merchant_id=request.merchant.merchant_id,
        network=network,
        token=request.token,
    )


def network_data_of(data: pb.NetworkData) -> NetworkData:
    """The domain view of a request's network data (validated by the domain)."""
    return NetworkData(
        pos_entry_mode=data.pos_entry_mode,
        terminal_type=data.terminal_type,
        card_present=data.card_present,
        cardholder_present=data.cardholder_present,
        three_ds_result=data.three_ds.result,
        eci=data.three_ds.eci,
        recurring=data.recurring,
        card_on_file=data.card_on_file,
        merchant_initiated=data.merchant_initiated,
        avs_result=data.avs_result,
        cashback_minor=data.cashback_amount.amount_minor,
        cashback_asset=data.cashback_amount.asset,
        atm_surcharge_minor=data.atm_surcharge.amount_minor,
        atm_surcharge_asset=data.atm_surcharge.asset,
        network_risk_score=(
            data.network_risk_score if data.HasField("network_risk_score") else None
        ),
    )


def network_data_message(data: NetworkData) -> pb.NetworkData:
    """The wire form of validated network data, for the client's DecideRequest."""
    message = pb.NetworkData(
        pos_entry_mode=data.pos_entry_mode,  # type: ignore[arg-type]
        terminal_type=data.terminal_type,  # type: ignore[arg-type]
        card_present=data.card_present,  # type: ignore[arg-type]
        cardholder_present=data.cardholder_present,  # type: ignore[arg-type]
        recurring=data.recurring,
        card_on_file=data.card_on_file,
        merchant_initiated=data.merchant_initiated,
        avs_result=data.avs_result,  # type: ignore[arg-type]
    )
    if data.three_ds_result or data.eci:
        message.three_ds.result = data.three_ds_result  # type: ignore[assignment]
        message.three_ds.eci = data.eci
    if data.cashback_asset:
        message.cashback_amount.CopyFrom(money_message(data.cashback_minor, data.cashback_asset))
    if data.atm_surcharge_asset:
        message.atm_surcharge.CopyFrom(
            money_message(data.atm_surcharge_minor, data.atm_surcharge_asset)
        )
    if data.network_risk_score is not None:
        message.network_risk_score = data.network_risk_score
    return message
