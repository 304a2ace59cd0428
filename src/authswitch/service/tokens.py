"""Network tokens (issue 18, item 5; rules in ``domain/tokens.py``): provisioning
decisions for the networks' token services, token status changes, and what a token does to
an authorisation carrying it."""

from __future__ import annotations

import logging
from datetime import date, timedelta

from authswitch.adapters.postgres.cards import CardStore
from authswitch.adapters.postgres.tokens import TokenStore
from authswitch.domain.authorization import CardStatus, PreChecks
from authswitch.domain.cards import expiry_valid_format, is_expired, pan_valid
from authswitch.domain.cardsec import CardKeys
from authswitch.domain.messages.tokens import ProvisionAnswer, ProvisionToken
from authswitch.domain.records import Notification
from authswitch.domain.tokens import (
    DEFAULT_POLICY,
    TokenDecision,
    TokenMatch,
    TokenPolicy,
    TokenRow,
    TokenStatus,
    provisioning_decision,
    token_expiry_reason,
)
from authswitch.domain.writes.admin import token_status_changed
from authswitch.errors import RequestError
from authswitch.service.catalog import Catalog
from authswitch.service.clock import Clock
from authswitch.service.ids import new_id

__all__ = ["DECLINES_WINDOW", "TokenService"]

log = logging.getLogger(__name__)

# Recent declines, for the provisioning policy: those of the last day.
DECLINES_WINDOW = timedelta(hours=24)
_TOKEN_REQUESTOR_DIGITS = 11


class TokenService:
    def __init__(self, *, keys: CardKeys, catalog: Catalog, cards: CardStore, clock: Clock) -> None:
        self.keys = keys
        self.catalog = catalog
        self.cards = cards
        self.tokens = TokenStore(cards.pool)
        self.clock = clock

    # -- authorisations carrying a token ---------------------------------------------------

    async def resolve(self, token: str) -> TokenMatch | None:
        """The token of an authorisation (one indexed read; only token requests pay it)."""
        return await self.tokens.resolve(self.keys.token_hmac(token))

    @staticmethod
    def apply(
        token: TokenMatch, pre: PreChecks, card_expiry_yymm: str, request_expiry_yymm: str,
        today: date,
    ) -> None:  # fmt: skip
        """Check 4 for a token request: the token's status (right after the card's), the
        card's and token's expiry, the request's expiry against the token's."""
        pre.expiry_reason = token_expiry_reason(
            token.status, token.expiry_yymm, card_expiry_yymm, request_expiry_yymm, today
        )

    # -- provisioning ------------------------------------------------------------------------

    async def provision(self, request: ProvisionToken) -> ProvisionAnswer:
        if not (
            pan_valid(request.pan)
            and pan_valid(request.token)
            and expiry_valid_format(request.expiry)
            and expiry_valid_format(request.token_expiry)
            and len(request.token_requestor_id) == _TOKEN_REQUESTOR_DIGITS
            and request.token_requestor_id.isdigit()
            and (not request.cvv2 or (request.cvv2.isdigit() and 3 <= len(request.cvv2) <= 4))
            and (request.wallet_risk_score is None or 0 <= request.wallet_risk_score <= 99)
        ):
            raise RequestError(
                "pan and token are 12-19 digit card numbers, expiry and token_expiry YYMM, "
                "token_requestor_id 11 digits, cvv2 3-4 digits, wallet_risk_score 0-99"
            )
        token_hmac = self.keys.token_hmac(request.token)
        card = await self.catalog.card(self.keys.pan_hmac(request.pan))
        existing = await self.tokens.by_hmac(token_hmac)
        if existing is not None:  # the same token again: its state as it is
            if card is None or existing.card_id != card.card_id:
                return _response(TokenDecision.DECLINE, "the token belongs to another card")
            return _existing(existing)
        now = self.clock.now()
        problem: str | None = None
        declines = 0
        policy = DEFAULT_POLICY
        if card is None:
            problem = "unknown card"
        else:
            status = CardStatus[(await self.cards.details(card.card_id)).status]
            if status is not CardStatus.ACTIVE:
                problem = f"the card is {status.name.lower()}"
            elif is_expired(card.expiry_yymm, now.date()) or request.expiry != card.expiry_yymm:
                problem = "the card's expiry does not match, or has passed"
            elif request.cvv2 and not self.keys.cvv2_matches(
                request.pan, card.expiry_yymm, request.cvv2
            ):
                problem = "CVV2 does not match"
            elif is_expired(request.token_expiry, now.date()):
                problem = "the token's expiry has passed"
            else:
                policy = await self.tokens.policy(card.product_id) or DEFAULT_POLICY
                declines = await self.tokens.declines_since(card.card_id, now - DECLINES_WINDOW)
        decision, detail = provisioning_decision(
            problem, policy, declines_24h=declines, wallet_risk_score=request.wallet_risk_score
        )
        if decision is TokenDecision.DECLINE or card is None:
            log.info("token provisioning declined", extra={"detail": detail})
            return _response(TokenDecision.DECLINE, detail)
        initial = TokenStatus.ACTIVE if decision is TokenDecision.APPROVE else TokenStatus.INACTIVE
        row = await self.tokens.add(
            card_id=card.card_id, token_hmac=token_hmac, last_four=request.token[-4:],
            expiry_yymm=request.token_expiry, token_requestor_id=request.token_requestor_id,
            status=initial, at=now,
        )  # fmt: skip
        if row.card_id != card.card_id:  # provisioned concurrently for another card
            return _response(TokenDecision.DECLINE, "the token belongs to another card")
        return _response(decision, detail, row)

    # -- operators -----------------------------------------------------------------------------

    async def set_status(
        self, token_id: str, status: TokenStatus, reason: str, *, actor: str
    ) -> TokenStatus:
        now = self.clock.now()

        def notify(
            program_id: str, account_id: str, card_id: str, previous: TokenStatus
        ) -> Notification:
            return token_status_changed(
                notification_id=new_id(), program_id=program_id, account_id=account_id,
                card_id=card_id, token_id=token_id, previous=previous, status=status,
                reason=reason, at=now, sinks=sinks.get(program_id, ()),
            )  # fmt: skip

        sinks: dict[str, tuple[str, ...]] = {}
        card_id = await self.tokens.card_of(token_id)
        program_id = await self.cards.card_program(card_id)
        sinks[program_id] = (await self.catalog.program(program_id)).sinks
        return await self.tokens.set_status(token_id, status, reason, actor, notify)

    async def of_card(self, card_id: str) -> list[TokenRow]:
        await self.cards.details(card_id)  # NotFound for an unknown card
        return await self.tokens.of_card(card_id)

    async def set_policy(self, product_id: str, policy: TokenPolicy, *, actor: str) -> None:
        maxima = (policy.step_up_risk_score_min, policy.decline_risk_score_min)
        if policy.step_up_declines_min < 0 or policy.decline_declines_min < 0:
            raise RequestError("declines minima must not be negative")
        if any(m is not None and not 0 <= m <= 99 for m in maxima):
            raise RequestError("risk score minima are 0 to 99")
        await self.tokens.set_policy(product_id, policy, actor)


def _response(decision: TokenDecision, detail: str, row: TokenRow | None = None) -> ProvisionAnswer:
    if row is None:
        return ProvisionAnswer(decision, detail)
    return ProvisionAnswer(decision, detail, row.token_id, row.status)


def _existing(row: TokenRow) -> ProvisionAnswer:
    decision = {
        TokenStatus.ACTIVE: TokenDecision.APPROVE,
        TokenStatus.INACTIVE: TokenDecision.REQUIRE_STEP_UP,
    }.get(row.status, TokenDecision.DECLINE)
    return _response(decision, f"the token is already provisioned ({row.status.name})", row)
