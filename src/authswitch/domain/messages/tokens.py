"""Network tokens' provisioning request and its answer, as plain values."""

from __future__ import annotations

from dataclasses import dataclass, field

from authswitch.domain.tokens import TokenDecision, TokenStatus

__all__ = ["ProvisionAnswer", "ProvisionToken"]


@dataclass(frozen=True, slots=True)
class ProvisionToken:
    """A token service's ProvisionTokenRequest. The card numbers and the CVV2 are kept out
    of the repr (never logged). ``wallet_risk_score`` None: the wallet sent none."""

    pan: str = field(repr=False)
    expiry: str
    cvv2: str = field(repr=False)
    token: str = field(repr=False)
    token_expiry: str
    token_requestor_id: str
    wallet_risk_score: int | None


@dataclass(frozen=True, slots=True)
class ProvisionAnswer:
    """The provisioning decision and why; the token's id and status when it is provisioned
    (``token_id`` empty and ``status`` None when it is not)."""

    decision: TokenDecision
    detail: str
    token_id: str = ""
    status: TokenStatus | None = None
