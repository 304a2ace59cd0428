"""A card spends from the linked account that holds the billing currency (seed 001:
"multiple accounts associated to one or multiple customer and cards e.g. main, savings,
wallets, spending pots"; issue 17 item 7).

A card draws on its own account (``CreateCard.account_id``). When its own account holds no
balance in a transaction's billing asset and an account linked to the card
(``LinkCardAccount``) does, an on-ledger programme's authorisation spends from that linked
account instead: a GBP main account and a EUR wallet behind one card, the EUR purchase
held on the wallet. The first linked account holding the asset wins (the oldest link).

The card's own state (status, PIN tries, PIN) stays where it lives, in its own account's
cached state, so it has one truth: the decision takes **two** atomic Redis steps, only for
such a transaction:

1. on the card's own account, the core checks and the idempotency marker, as an off-ledger
   decision's first step (status, expiry, PIN tries and PIN, CVV2, product): a wrong PIN
   counts against the card's one set of tries, whichever currency it was for;
2. on the linked account, limits, fees, funds and the hold, as any on-ledger authorisation
   (with the stateless checks already passed: nothing about the PIN is checked again).

The decision, the hold (on the linked account) and any change to the card's PIN state are
then one write of the group commit. Clearings, refunds and advices in that asset post to the
same linked account (:meth:`CardFacts.spending`); reversals follow the hold.
"""

from __future__ import annotations

from authswitch.adapters.redis.cache import AuthorizeOutcome
from authswitch.domain.authorization import PARTIAL_APPROVAL_TYPES, PinMode, PreChecks
from authswitch.domain.codes import Reason
from authswitch.domain.messages.authorization import AuthorizeAnswer
from authswitch.domain.records import CardUpdate, Notification, StoredDecision, WriteStatus
from authswitch.domain.writes.authorization import checks_declined, pin_effects, with_first_step
from authswitch.service.authorization import AuthorizationService, Job
from authswitch.service.ids import new_id

__all__ = ["LinkedSpend"]

# The second step's stateless checks: all passed in the first.
_PASSED = PreChecks(None, PinMode.NONE, b"", b"", None, None)


class LinkedSpend:
    def __init__(self, authorization: AuthorizationService) -> None:
        self.auth = authorization

    async def decide(self, job: Job, spend_account_id: str) -> StoredDecision:
        auth = self.auth

        async def after_checks(outcome: AuthorizeOutcome) -> StoredDecision:
            if outcome.reason is not Reason.APPROVED:
                return await self._declined(job, outcome)
            return await self._spend(job, outcome, spend_account_id)

        return await auth.redis_step(
            job, lambda mark: auth.reserve(job, mark, checks_only=True), after_checks
        )

    async def _declined(self, job: Job, outcome: AuthorizeOutcome) -> StoredDecision:
        ctx, card = job.ctx, job.card
        decision_id = new_id()
        response = self.auth.replies.authorize(
            AuthorizeAnswer(outcome.reason, decision_id=decision_id)
        )
        write = checks_declined(
            arrival=ctx, card=card, program=job.program, checks=outcome, reason=outcome.reason,
            pin_action=job.product.rules.pin_tries_exceeded_action, new_pvv=job.pre.new_pvv,
            decision_id=decision_id, response=response, new_id=new_id,
        )  # fmt: skip
        written = await self.auth.committer.submit(write)
        if written.status is not WriteStatus.COMMITTED and write.card_updates:
            # The card's PIN state in the cache is ahead of Postgres: reload it (after this
            # decision's in-flight mark ends).
            self.auth.sync.refresh_later(card.account_id, written.status.value)
        return written.decision

    async def _spend(
        self, job: Job, outcome: AuthorizeOutcome, spend_account_id: str
    ) -> StoredDecision:
        """Step 2, on the linked account; the card's PIN state changes of step 1 join its
        write."""
        auth = self.auth
        ctx, program, product = job.ctx, job.program, job.product
        request = ctx.request
        card = job.card.spending(request.billing_asset)
        assert card.account_id == spend_account_id
        spend_job = Job(ctx, card, product, program, _PASSED)
        partial = request.partial_allowed and request.transaction_type in PARTIAL_APPROVAL_TYPES
        charges = await auth.charges.for_authorization(
            product.id, program, request, card_id=card.card_id, account_id=card.account_id,
            at=ctx.received,
        )  # fmt: skip
        plan = await auth.hold_plan(spend_job)
        updates, notes = _pin_effects(job, outcome)

        async def finish(result: AuthorizeOutcome) -> StoredDecision:
            write = auth.write_for(
                ctx, card, program, _PASSED, result, plan, charges, None,
                product.rules.pin_tries_exceeded_action,
            )  # fmt: skip
            write = with_first_step(write, card_updates=updates, notifications=notes)
            stored = await auth.commit(card, result, write)
            if updates and (
                stored.id != write.decision.id or stored.reason != write.decision.reason
            ):  # the card's PIN state did not commit (a refusal or a duplicate)
                auth.sync.refresh_later(job.card.account_id, "refused")
            return stored

        return await auth.redis_step(
            spend_job, lambda mark: auth.reserve(spend_job, mark, partial, charges), finish
        )


def _pin_effects(
    job: Job, outcome: AuthorizeOutcome
) -> tuple[tuple[CardUpdate, ...], tuple[Notification, ...]]:
    return pin_effects(
        request=job.ctx.request, card=job.card, program=job.program,
        action=job.product.rules.pin_tries_exceeded_action, received=job.ctx.received,
        result=outcome, new_pvv=job.pre.new_pvv, new_id=new_id,
    )  # fmt: skip
