"""Network tokens' messages: the token services' ProvisionToken (gateway API) and the
operators' token policy, status and list (admin API)."""

from __future__ import annotations

from authswitch.domain.messages.tokens import ProvisionAnswer, ProvisionToken
from authswitch.domain.tokens import TokenPolicy, TokenRow
from authswitch.v1 import authorization_pb2 as pb
from authswitch.v1 import ledger_admin_pb2

__all__ = ["card_tokens_message", "provision_message", "provision_token_of", "token_policy_of"]


def provision_token_of(request: pb.ProvisionTokenRequest) -> ProvisionToken:
    return ProvisionToken(
        pan=request.pan,
        expiry=request.expiry,
        cvv2=request.cvv2,
        token=request.token,
        token_expiry=request.token_expiry,
        token_requestor_id=request.token_requestor_id,
        wallet_risk_score=(
            request.wallet_risk_score if request.HasField("wallet_risk_score") else None
        ),
    )


def provision_message(answer: ProvisionAnswer) -> pb.ProvisionTokenResponse:
    response = pb.ProvisionTokenResponse(
        decision=int(answer.decision),  # type: ignore[arg-type]
        detail=answer.detail,
    )
    if answer.status is not None:  # a token provisioned, now or before
        response.token_id = answer.token_id
        response.status = answer.status.value  # type: ignore[assignment]
    return response


def token_policy_of(request: ledger_admin_pb2.SetTokenPolicyRequest) -> TokenPolicy:
    step_up = request.step_up_risk_score_min
    decline = request.decline_risk_score_min
    return TokenPolicy(
        tokens_allowed=request.tokens_allowed,
        step_up_always=request.step_up_always,
        step_up_declines_min=request.step_up_declines_min,
        decline_declines_min=request.decline_declines_min,
        step_up_risk_score_min=step_up if request.HasField("step_up_risk_score_min") else None,
        decline_risk_score_min=decline if request.HasField("decline_risk_score_min") else None,
    )


def card_tokens_message(rows: list[TokenRow]) -> ledger_admin_pb2.ListCardTokensResponse:
    response = ledger_admin_pb2.ListCardTokensResponse()
    for row in rows:
        token = response.tokens.add(
            token_id=row.token_id, card_id=row.card_id, last_four=row.last_four,
            expiry=row.expiry_yymm, token_requestor_id=row.token_requestor_id,
            status=row.status.value,
        )  # fmt: skip
        token.created_at.FromDatetime(row.created_at)
    return response
