"""Network tokens (device wallets; issue 18, item 5), pure: token status and its
transitions, what a token does to an authorisation, and the provisioning decision.

A token (DPAN) stands for a card in a wallet. It has a status of its own, so one device's
token can be suspended while the card and its other tokens go on working; the card's
status still applies to every token (a lost card declines 41 whatever its tokens).

A token as it is kept is :class:`TokenRow`, and one found by its number :class:`TokenMatch`
(read by ``adapters/postgres/tokens.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from enum import Enum, IntEnum, unique

from authswitch.domain.cards import is_expired
from authswitch.domain.codes import Reason

__all__ = [
    "DEFAULT_POLICY",
    "TokenDecision",
    "TokenMatch",
    "TokenPolicy",
    "TokenRow",
    "TokenStatus",
    "provisioning_decision",
    "token_expiry_reason",
    "transition_allowed",
]


class TokenStatus(Enum):
    """Stored by name; numbered on the wire as ``authswitch.v1.TokenStatus``."""

    ACTIVE = 1
    INACTIVE = 2  # provisioned with step-up, not yet activated
    SUSPENDED = 3
    DEACTIVATED = 4  # final


@unique
class TokenDecision(IntEnum):
    """Numbered as ``authswitch.v1.TokenDecision``."""

    APPROVE = 1
    DECLINE = 2
    REQUIRE_STEP_UP = 3


_TRANSITIONS = {
    TokenStatus.INACTIVE: {TokenStatus.ACTIVE, TokenStatus.DEACTIVATED},
    TokenStatus.ACTIVE: {TokenStatus.SUSPENDED, TokenStatus.DEACTIVATED},
    TokenStatus.SUSPENDED: {TokenStatus.ACTIVE, TokenStatus.DEACTIVATED},
    TokenStatus.DEACTIVATED: set(),
}


def transition_allowed(current: TokenStatus, new: TokenStatus) -> bool:
    """Whether a token may go from ``current`` to ``new`` (the same status: a no-op)."""
    return new is current or new in _TRANSITIONS[current]


def token_expiry_reason(
    status: TokenStatus, token_expiry_yymm: str, card_expiry_yymm: str, request_expiry_yymm: str,
    today: date,
) -> Reason | None:  # fmt: skip
    """What replaces check 4 (expiry) for an authorisation carrying a token: the token's
    status first (right after the card's), then the card's and the token's expiry, and the
    request's expiry against the token's."""
    if status is not TokenStatus.ACTIVE:
        return Reason.TOKEN_NOT_ACTIVE
    if is_expired(card_expiry_yymm, today) or is_expired(token_expiry_yymm, today):
        return Reason.CARD_EXPIRED
    if request_expiry_yymm and request_expiry_yymm != token_expiry_yymm:
        return Reason.EXPIRY_MISMATCH
    return None


@dataclass(frozen=True, slots=True)
class TokenPolicy:
    """A product's provisioning policy."""

    tokens_allowed: bool = True
    step_up_always: bool = False
    step_up_declines_min: int = 3  # declines in the last 24 hours; 0: not a reason
    decline_declines_min: int = 0
    step_up_risk_score_min: int | None = None
    decline_risk_score_min: int | None = None


# Without a policy of its own a product takes tokens, with step-up after three declined
# authorisations of the card in a day (the networks' "yellow path" for a card showing
# signs of misuse).
DEFAULT_POLICY = TokenPolicy()


def provisioning_decision(
    card_problem: str | None, policy: TokenPolicy, *, declines_24h: int,
    wallet_risk_score: int | None,
) -> tuple[TokenDecision, str]:  # fmt: skip
    """Approve, decline or require step-up, and why. ``card_problem`` is what is wrong with
    the card or the data the cardholder entered (status, expiry, CVV2), None when nothing."""
    if card_problem is not None:
        return TokenDecision.DECLINE, card_problem
    if not policy.tokens_allowed:
        return TokenDecision.DECLINE, "the product does not allow tokens"
    score = wallet_risk_score
    decline_score = policy.decline_risk_score_min
    if decline_score is not None and score is not None and score >= decline_score:
        return TokenDecision.DECLINE, f"wallet risk score {score}"
    if policy.decline_declines_min and declines_24h >= policy.decline_declines_min:
        return TokenDecision.DECLINE, f"{declines_24h} declined authorisations in 24 hours"
    if policy.step_up_always:
        return TokenDecision.REQUIRE_STEP_UP, "the product requires step-up for every token"
    step_up_score = policy.step_up_risk_score_min
    if step_up_score is not None and score is not None and score >= step_up_score:
        return TokenDecision.REQUIRE_STEP_UP, f"wallet risk score {score}"
    if policy.step_up_declines_min and declines_24h >= policy.step_up_declines_min:
        return (
            TokenDecision.REQUIRE_STEP_UP,
            f"{declines_24h} declined authorisations in 24 hours",
        )
    return TokenDecision.APPROVE, "approved"


@dataclass(frozen=True, slots=True)
class TokenMatch:
    """A token found by its number, with what an authorisation needs of its card."""

    token_id: str
    card_pan_hmac: bytes
    status: TokenStatus
    expiry_yymm: str


@dataclass(frozen=True, slots=True)
class TokenRow:
    """A network token as it is kept."""

    token_id: str
    card_id: str
    last_four: str
    expiry_yymm: str
    token_requestor_id: str
    status: TokenStatus
    created_at: datetime
