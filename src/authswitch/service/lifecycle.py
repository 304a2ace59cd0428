"""The on-ledger transaction lifecycle after an authorisation (seed 001, DESIGN.md §1, §3):
advices, reversals, clearings, refunds, manual hold removal and age-off.

Every message is idempotent on (source, message_id) and acknowledged with "00" unless it is
malformed (30 / 13, nothing written). Each changes balances the same way as an
authorisation: one atomic Redis step, then the group commit, then the answer. A message that
releases a hold is planned from the hold as read, and the commit is guarded on that hold
being unchanged; if another message moved it first, the plan is made again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Protocol

from authswitch.adapters.postgres.audit import AuditStore
from authswitch.adapters.postgres.cards import CardStore
from authswitch.adapters.postgres.holds import HoldStore
from authswitch.adapters.postgres.ledger import LedgerStore
from authswitch.adapters.postgres.offledger_usage import return_usage, settle_usage
from authswitch.adapters.redis.cache import ApplyResult, CreditOutcome, Duplicate, Miss
from authswitch.domain.authorization import (
    MESSAGE_ID_LEN_MAX,
    NETWORK_REFERENCE_LEN_MAX,
    SOURCE_LEN_MAX,
    CardFacts,
    Charges,
    CounterCheck,
    TransactionType,
    identifier_ok,
)
from authswitch.domain.cards import pan_valid
from authswitch.domain.cardsec import CardKeys
from authswitch.domain.catalog import ProgramRow
from authswitch.domain.codes import Code, Reason, outcome
from authswitch.domain.credits import ORIGINAL_CREDIT, CreditType, credit_limits
from authswitch.domain.fees import FeeContext, Stage
from authswitch.domain.fx import (
    Conversion,
    ProductFx,
    RateProblem,
    convert_billing,
    converted_into,
    share_of,
)
from authswitch.domain.ledger import Balance
from authswitch.domain.lifecycle import (
    ClearingPlan,
    HoldEnd,
    HoldRow,
    ReleasePlan,
    hold_validity_days,
    plan_clearing,
    plan_reversal,
)
from authswitch.domain.limits import counter_for_limit
from authswitch.domain.messages.lifecycle import (
    Advice,
    AdviceAnswer,
    AdviceResult,
    Clearing,
    ClearingAnswer,
    CreditAnswer,
    HoldReleaseAnswer,
    OriginalCredit,
    Refund,
    RefundAnswer,
    Reversal,
    ReversalAnswer,
    ReversalResult,
)
from authswitch.domain.money import AMOUNT_MAX_MINOR
from authswitch.domain.offledger import StandInPolicy
from authswitch.domain.records import LedgerWrite, StoredDecision, WriteStatus
from authswitch.domain.writes import lifecycle as writes
from authswitch.errors import InternalError, NotFound, PreconditionFailed
from authswitch.service.admin import ADMIN_SOURCE, require_idempotency_key
from authswitch.service.catalog import Catalog
from authswitch.service.charges import ChargeCalculator, is_international
from authswitch.service.clock import Clock
from authswitch.service.ids import new_id
from authswitch.service.posting import Posted, Poster, PostStatus

__all__ = ["SYSTEM_SOURCE", "LifecycleReplies", "LifecycleService"]

log = logging.getLogger(__name__)

_NO_MARKUP = ProductFx(0)  # refunds convert without the product's markup

# Work authswitch does by itself (age-off) is recorded under this source.
SYSTEM_SOURCE = "system"
# A message re-plans at most this many times when holds move under it.
PLAN_ATTEMPTS_MAX = 5
# Holds released concurrently by one age-off sweep.
SWEEP_CONCURRENCY_MAX = 16


class LifecycleReplies(Protocol):
    """The replies to lifecycle messages as bytes: the form stored with their decisions, so
    that a retransmission is answered with the very bytes of the first answer
    (``authswitch.adapters.grpc.codec.lifecycle.LifecycleReplyEncoder``)."""

    def advise(self, answer: AdviceAnswer) -> bytes: ...

    def reverse(self, answer: ReversalAnswer) -> bytes: ...

    def clear(self, answer: ClearingAnswer) -> bytes: ...

    def refund(self, answer: RefundAnswer) -> bytes: ...

    def credit(self, answer: CreditAnswer) -> bytes: ...

    def release_hold(self, answer: HoldReleaseAnswer) -> bytes: ...


def _release_reply(replies: LifecycleReplies, asset: str) -> Callable[[int, Balance], bytes]:
    def respond(released: int, balance: Balance) -> bytes:
        return replies.release_hold(HoldReleaseAnswer(released, asset, balance))

    return respond


class LifecycleService:
    def __init__(
        self,
        *,
        keys: CardKeys,
        catalog: Catalog,
        ledger: LedgerStore,
        holds: HoldStore,
        cards: CardStore,
        audit: AuditStore,
        poster: Poster,
        clock: Clock,
        replies: LifecycleReplies,
    ) -> None:
        self.keys = keys
        self.catalog = catalog
        self.ledger = ledger
        self.holds = holds
        self.cards = cards
        self.audit = audit
        self.poster = poster
        self.clock = clock
        self.replies = replies
        self.charges = ChargeCalculator(catalog)
        # Credits in flight in this process by (source, message id): a retransmission that
        # arrives meanwhile waits for the original instead of racing it.
        self._credits: dict[tuple[str, str], asyncio.Future[None]] = {}

    # -- shared ---------------------------------------------------------------------------

    def _format_error(
        self, source: str, message_id: str, amount_minor: int | None, asset: str, *,
        pan: str = "", pan_required: bool = False, amount_required: bool = False,
    ) -> str | None:  # fmt: skip
        """The response code of a malformed message (30 or 13), or None; ``amount_minor``
        None: the message carries no amount."""
        if not identifier_ok(source, SOURCE_LEN_MAX, required=True):
            return Code.FORMAT_ERROR
        if not identifier_ok(message_id, MESSAGE_ID_LEN_MAX, required=True):
            return Code.FORMAT_ERROR
        if (pan or pan_required) and not pan_valid(pan):
            return Code.FORMAT_ERROR
        if amount_minor is not None:
            if asset not in self.catalog.assets:
                return Code.FORMAT_ERROR
            if not 0 <= amount_minor <= AMOUNT_MAX_MINOR:
                return Code.INVALID_AMOUNT
            if amount_required and amount_minor == 0:
                return Code.INVALID_AMOUNT
        elif amount_required:
            return Code.FORMAT_ERROR
        return None

    async def _card(self, pan: str) -> CardFacts | None:
        return await self.catalog.card(self.keys.pan_hmac(pan)) if pan else None

    def _answer(self, posted: Posted, fingerprint: bytes, kind: str) -> bytes:
        """The reply to a message of ``kind`` whose decision ``posted`` holds: the bytes
        stored with the decision, as they are (a retransmission gets the first answer)."""
        stored: StoredDecision | None = posted.decision
        assert stored is not None
        if stored.fingerprint != fingerprint:
            # The message id was used for another message.
            return self._reply(kind, Code.DUPLICATE_MISMATCH)
        return stored.response

    def _reply(self, kind: str, response_code: str, decision_id: str = "") -> bytes:
        """A reply to a message of ``kind`` that carries only a response code and, when the
        message was recorded, its decision id."""
        replies = self.replies
        match kind:
            case "ADVICE":
                return replies.advise(AdviceAnswer(response_code, decision_id))
            case "REVERSAL":
                return replies.reverse(ReversalAnswer(response_code, decision_id))
            case "CLEARING":
                return replies.clear(ClearingAnswer(response_code, decision_id))
            case "REFUND":
                return replies.refund(RefundAnswer(response_code, decision_id))
            case "CREDIT":
                return replies.credit(CreditAnswer(response_code, decision_id))
        raise AssertionError(f"no reply for a message of kind {kind}")

    # -- advice ---------------------------------------------------------------------------

    async def advise(self, request: Advice, canonical: bytes) -> bytes:
        """The reply to an advice, as bytes; ``canonical``: the request's deterministic
        bytes, which its fingerprint is made of."""
        bad = self._format_error(
            request.source, request.message_id, request.amount_minor, request.asset,
            pan=request.pan, pan_required=True, amount_required=True,
        )  # fmt: skip
        if bad or not identifier_ok(
            request.original_message_id, MESSAGE_ID_LEN_MAX, required=False
        ):
            return self.replies.advise(AdviceAnswer(bad or Code.FORMAT_ERROR))
        fingerprint = self.keys.fingerprint(canonical)
        amount, asset = request.amount_minor, request.asset
        card = await self._card(request.pan)
        if card is None:
            posted = await self._advice_recorded(
                request, fingerprint, AdviceResult.RECORDED_UNKNOWN_CARD, new_id(),
                self.clock.now(), asset=asset, amount_minor=amount,
            )  # fmt: skip
            return self._answer(posted, fingerprint, "ADVICE")
        product = await self.catalog.product(card.product_id)
        program = await self.catalog.program(card.program_id)
        if program.mode == "ON_LEDGER":  # from a linked account holding the asset
            card = card.spending(asset)
        if _forward_only(program):
            forwarded, _ = await self._forward(
                "ADVICE", request.source, request.message_id, fingerprint, card, program,
                writes.advice_fields(request),
            )  # fmt: skip
            return forwarded
        now = self.clock.now()
        validity = hold_validity_days(
            product.hold_validity_days, product.hold_validity_by_mcc, request.mcc
        )
        # Converted at today's rate with the markup (docs/fx.md); without a usable rate the
        # advice is recorded and holds nothing, as one in an asset the account does not hold.
        conversion = await self._converted(card, asset, amount, markup=True)
        if isinstance(conversion, RateProblem):
            log.warning("advice not held: no usable rate", extra={"detail": conversion.detail})
            conversion = None
        for _ in range(PLAN_ATTEMPTS_MAX):
            posted = await self._advise_once(
                request, card, program, fingerprint, validity, now, conversion
            )
            if posted.status is not PostStatus.CONFLICT:
                return self._answer(posted, fingerprint, "ADVICE")
        raise InternalError("advice could not be planned: its hold kept changing")

    async def _advise_once(
        self, request: Advice, card: CardFacts, program: ProgramRow,
        fingerprint: bytes, validity: int, now: datetime, conversion: Conversion | None,
    ) -> Posted:  # fmt: skip
        amount, asset = request.amount_minor, request.asset
        if conversion is not None:  # held in the account's asset, the markup with it
            amount, asset = conversion.total_minor, conversion.account_asset
        original, held = await self._advised_holds(request, card, asset)
        decision_id, hold_id, note_id = new_id(), new_id(), new_id()
        result = AdviceResult.HOLD_POSTED if original is None else AdviceResult.HOLD_UPDATED
        # Never declined: the network has approved already, so no funds check.
        change = writes.advice_change(card=card, asset=asset, amount_minor=amount, held=held)

        def build(applied: ApplyResult) -> LedgerWrite:
            assert applied.balance is not None
            response = self.replies.advise(
                AdviceAnswer(
                    Code.APPROVED, decision_id, result,
                    held_minor=change.authorized_delta_minor, asset=asset,
                    balance=applied.balance, fx=conversion,
                )
            )  # fmt: skip
            return writes.advice(
                request=request, card=card, program=program, asset=asset, amount_minor=amount,
                original=original, held=held, validity_days=validity, conversion=conversion,
                decision_id=decision_id, hold_id=hold_id, note_id=note_id, now=now,
                response=response, fingerprint=fingerprint,
            )  # fmt: skip

        posted = await self.poster.post(
            change,
            source=request.source,
            message_id=request.message_id,
            fingerprint=fingerprint,
            build=build,
            program=program,
        )
        if posted.status is PostStatus.NO_BALANCE:
            posted = await self._advice_recorded(
                request, fingerprint, AdviceResult.RECORDED_NO_BALANCE, decision_id, now,
                card=card, asset=asset, amount_minor=amount,
            )  # fmt: skip
        return posted

    async def _advised_holds(
        self, request: Advice, card: CardFacts, asset: str
    ) -> tuple[HoldRow | None, list[HoldRow]]:
        """The advice's original hold, if it is open on the card's account in ``asset``, and
        every open hold under its reference; (None, []) otherwise."""
        if not request.original_message_id:
            return None, []
        found = await self.holds.hold_by_message(request.source, request.original_message_id)
        if (
            found is None
            or found.status != "OPEN"
            or found.account_id != card.account_id
            or found.asset != asset
        ):
            return None, []
        # The advised amount is the transaction's total: its original and any increments or
        # earlier advices, all under the original's reference.
        return found, await self.holds.open_holds(card.card_id, found.network_reference, asset)

    async def _advice_recorded(
        self, request: Advice, fingerprint: bytes, result: AdviceResult,
        decision_id: str, now: datetime, *,
        card: CardFacts | None = None, asset: str, amount_minor: int,
    ) -> Posted:  # fmt: skip
        """Record an advice that holds nothing (an unknown card, no balance in the asset):
        acknowledged all the same, the network having approved it already."""
        response = self.replies.advise(AdviceAnswer(Code.APPROVED, decision_id, result))
        write = writes.advice_recorded(
            request=request, card=card, asset=asset, amount_minor=amount_minor,
            decision_id=decision_id, now=now, response=response, fingerprint=fingerprint,
        )  # fmt: skip
        return await self.poster.record(write)

    # -- reversal -------------------------------------------------------------------------

    async def reverse(self, request: Reversal, canonical: bytes) -> bytes:
        """The reply to a reversal, as bytes (``canonical`` as :meth:`advise`)."""
        bad = self._format_error(
            request.source, request.message_id, request.amount_minor, request.asset,
            pan=request.pan,
        )  # fmt: skip
        if bad or not identifier_ok(request.original_message_id, MESSAGE_ID_LEN_MAX, required=True):
            return self.replies.reverse(ReversalAnswer(bad or Code.FORMAT_ERROR))
        fingerprint = self.keys.fingerprint(canonical)
        requested = request.amount_minor or 0
        card = await self._card(request.pan) or await self._card_of_message(
            request.source, request.original_message_id
        )
        if card is not None:
            program = await self.catalog.program(card.program_id)
            if _forward_only(program):
                forwarded, acknowledged = await self._forward(
                    "REVERSAL", request.source, request.message_id, fingerprint, card, program,
                    writes.reversal_fields(request, requested),
                )  # fmt: skip
                if acknowledged:
                    await self._return_off_ledger_usage(
                        card.account_id, request.source, request.original_message_id,
                        f"{request.source}:{request.message_id}", requested or None,
                    )  # fmt: skip
                return forwarded
        for _ in range(PLAN_ATTEMPTS_MAX):
            posted = await self._reverse_once(request, requested, fingerprint)
            if posted is None:  # the amount's asset is not the hold's
                return self.replies.reverse(ReversalAnswer(Code.FORMAT_ERROR))
            if posted.status is not PostStatus.CONFLICT:
                return self._answer(posted, fingerprint, "REVERSAL")
        raise InternalError("reversal could not be planned: its hold kept changing")

    async def _return_off_ledger_usage(
        self, account_id: str, source: str, original_message_id: str, reversal: str,
        requested_minor: int | None,
    ) -> None:  # fmt: skip
        """A reversal forwarded to an off-ledger client gives back to the amount-based limits
        what its authorisation counted (counts stay, as on-ledger); once per reversal, also
        when a retransmission finds the reversal already recorded."""

        async def durable() -> tuple[Sequence[str], int] | None:
            returned = await return_usage(
                self.holds.pool, source=source, original_message_id=original_message_id,
                reversal=reversal, requested_minor=requested_minor,
            )  # fmt: skip
            return None if returned is None else (returned[1], -returned[2])

        await self._move_off_ledger_usage(account_id, durable)

    async def _settle_off_ledger_usage(
        self, account_id: str, card_id: str, network_reference: str, clearing: str,
        amount_minor: int, settled_minor: int, final: bool,
    ) -> None:  # fmt: skip
        """A clearing forwarded to an off-ledger client: the amount-based limits its
        transaction counted follow what settled (seed 004; counts stay)."""

        async def durable() -> tuple[Sequence[str], int] | None:
            settled = await settle_usage(
                self.holds.pool, card_id=card_id, network_reference=network_reference,
                clearing=clearing, amount_minor=amount_minor, settled_minor=settled_minor,
                final=final,
            )  # fmt: skip
            return None if settled is None or not settled[2] else (settled[1], settled[2])

        await self._move_off_ledger_usage(account_id, durable)

    async def _move_off_ledger_usage(
        self, account_id: str, durable: Callable[[], Awaitable[tuple[Sequence[str], int] | None]]
    ) -> None:
        """Off-ledger usage moves: in Postgres first (``durable``: the counters' keys and the
        change, or None for none), then in the cached counters, inside the account's
        in-flight mark so that a reload sees both or neither. Where the mark cannot be
        taken (the state is not loaded, or a reload is under way) the counters are left
        alone and the account is reloaded after the Postgres write."""
        sync, cache = self.poster.sync, self.poster.cache
        with sync.in_flight(account_id) as mark:
            try:
                admitted = await cache.admit(account_id, mark)
                moved = await durable()
                if moved is not None and not admitted:
                    sync.refresh_later(account_id, "usage")
                elif moved is not None:
                    keys, change = moved
                    counters = tuple(CounterCheck(key, "") for key in keys)
                    await cache.count_charges(
                        account_id, Charges(limits=counters), change, 0, check=False
                    )
            except Exception:
                self.poster.sync.refresh_later(account_id, "failure")
                raise

    async def _reverse_once(
        self, request: Reversal, requested: int, fingerprint: bytes
    ) -> Posted | None:
        now = self.clock.now()
        decision_id = new_id()
        hold = await self.holds.hold_by_message(request.source, request.original_message_id)
        if hold is None or hold.tombstone:
            return await self._reverse_unheld(
                request, hold, requested, fingerprint, decision_id, now
            )
        if hold.status != "OPEN":
            return await self._reversal_recorded(
                request, fingerprint, decision_id, now, requested,
                ReversalResult.HOLD_ALREADY_ENDED,
            )  # fmt: skip
        asked_asset = request.asset if request.amount_minor is not None else None
        share = await self._reversal_share(hold, asked_asset, requested)
        if share is None:
            return None
        conversion, requested = share
        return await self._release(
            hold, plan_reversal(hold.open_hold(), requested), "REVERSAL", request.source,
            request.message_id, fingerprint, decision_id, now,
            _reversal_reply(self.replies, hold.asset or "", decision_id, conversion), conversion,
        )  # fmt: skip

    async def _reverse_unheld(
        self, request: Reversal, hold: HoldRow | None, requested: int,
        fingerprint: bytes, decision_id: str, now: datetime,
    ) -> Posted:  # fmt: skip
        """A reversal with no hold to release: its original held nothing, or is unknown (or
        only earlier reversals of it are), which leaves a tombstone, so that the original
        holds only what was not reversed if it ever comes."""
        if hold is None and await self.holds.decision_exists(
            request.source, request.original_message_id
        ):
            return await self._reversal_recorded(
                request, fingerprint, decision_id, now, requested, ReversalResult.NOTHING_HELD
            )
        card = await self._card(request.pan)
        response = self.replies.reverse(
            ReversalAnswer(Code.APPROVED, decision_id, ReversalResult.ORIGINAL_NOT_FOUND)
        )
        write = writes.reversal_tombstoned(
            request=request, requested_minor=requested, card=card, decision_id=decision_id,
            now=now, response=response, fingerprint=fingerprint,
        )  # fmt: skip
        return await self.poster.record(write)

    async def _reversal_recorded(
        self, request: Reversal, fingerprint: bytes, decision_id: str, now: datetime,
        requested: int, result: ReversalResult,
    ) -> Posted:  # fmt: skip
        """Record a reversal acknowledged without releasing anything."""
        response = self.replies.reverse(ReversalAnswer(Code.APPROVED, decision_id, result))
        write = writes.reversal_recorded(
            request=request, requested_minor=requested, decision_id=decision_id, now=now,
            response=response, fingerprint=fingerprint,
        )  # fmt: skip
        return await self.poster.record(write)

    async def _reversal_share(
        self, hold: HoldRow, asked_asset: str | None, requested: int
    ) -> tuple[Conversion | None, int] | None:
        """What a reversal asking for ``requested`` in ``asked_asset`` (None: it sent no
        amount) releases of ``hold``, with the conversion when it asks in the billing asset
        of a converted hold; None when its amount's asset is neither the hold's nor the
        hold's billing asset."""
        asset = hold.asset or ""
        if asked_asset is None or asked_asset == asset:
            return None, requested
        # A converted hold (docs/fx.md): what the reversal asks for in the billing asset
        # releases its share of the hold, so at the authorisation's rate, exactly.
        original = await self.catalog.fx_store.conversion(hold.source, hold.message_id)
        if original is None or original.billing_asset != asked_asset:
            return None
        billed = min(requested, original.billing_minor)
        share = share_of(hold.original_minor, billed, original.billing_minor)
        conversion = Conversion(
            asked_asset, billed, asset, share, 0, original.rate_text,
            original.rate_effective_from,
        )  # fmt: skip
        return conversion, share

    async def _release(
        self, hold: HoldRow, plan: ReleasePlan, reason: str, source: str, message_id: str,
        fingerprint: bytes, decision_id: str, now: datetime,
        respond: Callable[[int, Balance], bytes], conversion: Conversion | None = None,
    ) -> Posted:  # fmt: skip
        """Release (part of) one hold; the write conflicts if the hold moved meanwhile."""
        change = writes.release_change(hold, plan)
        # A reversal gives back to amount-based limits what it releases (counts stay).
        usage = writes.release_usage(hold, plan, reason)
        account = await self.ledger.account(change.account_id)
        program = await self.catalog.program(account.program_id)
        note_id = new_id()

        def build(applied: ApplyResult) -> LedgerWrite:
            assert applied.balance is not None
            return writes.hold_release(
                hold=hold, plan=plan, reason=reason, source=source, message_id=message_id,
                program=program, conversion=conversion, decision_id=decision_id,
                note_id=note_id, now=now, response=respond(plan.release_minor, applied.balance),
                fingerprint=fingerprint,
            )  # fmt: skip

        return await self.poster.post(
            change, source=source, message_id=message_id, fingerprint=fingerprint, build=build,
            usage=usage, program=program,
        )  # fmt: skip

    # -- clearing and refund --------------------------------------------------------------

    async def clear(self, request: Clearing, canonical: bytes) -> bytes:
        """The reply to a clearing, as bytes (``canonical`` as :meth:`advise`)."""
        # An absent amount is checked as zero in no asset (a format error, as the asset is
        # not one), like the other messages' amounts.
        bad = self._format_error(
            request.source, request.message_id, request.amount_minor or 0, request.asset,
            pan=request.pan, pan_required=True,
        )  # fmt: skip
        if bad or not identifier_ok(
            request.network_reference, NETWORK_REFERENCE_LEN_MAX, required=False
        ):
            return self.replies.clear(ClearingAnswer(bad or Code.FORMAT_ERROR))
        amount, asset = request.amount_minor, request.asset
        if amount is None:
            return self.replies.clear(ClearingAnswer(Code.FORMAT_ERROR))
        fingerprint = self.keys.fingerprint(canonical)
        found = await self._settlement_card("CLEARING", request, amount, fingerprint)
        if isinstance(found, bytes):
            return found
        card, program = found
        if _forward_only(program):
            return await self._forward_clearing(request, amount, fingerprint, card, program)
        conversion = await self._converted(card, asset, amount, markup=True)
        if isinstance(conversion, RateProblem):
            log.warning("clearing not posted: no usable rate", extra={"detail": conversion.detail})
            return self.replies.clear(ClearingAnswer(Code.NO_BALANCE_IN_ASSET))
        for _ in range(PLAN_ATTEMPTS_MAX):
            posted = await self._clear_once(request, amount, card, program, fingerprint, conversion)
            if posted.status is PostStatus.NO_BALANCE:
                # No balance in the asset: nothing posted.
                return self.replies.clear(ClearingAnswer(Code.NO_BALANCE_IN_ASSET))
            if posted.status is not PostStatus.CONFLICT:
                return self._answer(posted, fingerprint, "CLEARING")
        raise InternalError("clearing could not be planned: its holds kept changing")

    async def _settlement_card(
        self, kind: str, request: Clearing | Refund | OriginalCredit, amount: int,
        fingerprint: bytes, *, spending: bool = True,
    ) -> tuple[CardFacts, ProgramRow] | bytes:  # fmt: skip
        """The card of a clearing, refund or credit of ``amount`` and its programme, the
        card spending from the linked account holding the asset when ``spending`` and the
        programme is on-ledger; or, for a card authswitch does not know, the message's
        reply."""
        asset = request.asset
        card = await self._card(request.pan)
        if card is None:
            return await self._unknown_card(
                kind, request.source, request.message_id, fingerprint, asset, amount
            )
        program = await self.catalog.program(card.program_id)
        if spending and program.mode == "ON_LEDGER":  # from a linked account holding the asset
            card = card.spending(asset)
        return card, program

    async def _forward_clearing(
        self, request: Clearing, amount: int, fingerprint: bytes, card: CardFacts,
        program: ProgramRow,
    ) -> bytes:  # fmt: skip
        """A clearing of ``amount`` for an off-ledger client: recorded and forwarded; the
        amount-based limits its transaction counted then follow what settled."""
        asset = request.asset
        # The clearing fee is computed as on-ledger and sent for the client to apply
        # (seed 004: "fees are communicated to you via webhook").
        context = FeeContext(
            Stage.CLEARING, request.transaction_type or int(TransactionType.PURCHASE),
            request.channel, request.mcc,
            is_international(program, request.merchant_country), asset, amount,
        )  # fmt: skip
        quote = await self.charges.fee_quote(card.product_id, self.clock.now(), context)
        fields, fee = writes.clearing_fields(request, amount, quote)
        forwarded, acknowledged = await self._forward(
            "CLEARING", request.source, request.message_id, fingerprint, card, program,
            fields, fee=fee,
        )  # fmt: skip
        if acknowledged and request.network_reference:
            await self._settle_off_ledger_usage(
                card.account_id, card.card_id, request.network_reference,
                f"{request.source}:{request.message_id}", amount,
                amount + quote.fixed_minor, request.final,
            )  # fmt: skip
        return forwarded

    async def _clear_once(
        self, request: Clearing, amount: int, card: CardFacts, program: ProgramRow,
        fingerprint: bytes, conversion: Conversion | None,
    ) -> Posted:  # fmt: skip
        asset = request.asset
        markup = 0
        if conversion is not None:  # posted in the account's asset, the markup a fee
            amount, asset = conversion.account_minor, conversion.account_asset
            markup = conversion.markup_minor
        now = self.clock.now()
        holds = []
        if request.network_reference:
            holds = await self.holds.open_holds(card.card_id, request.network_reference, asset)
        plan = plan_clearing([h.open_hold() for h in holds], amount, final=request.final)
        transaction_type = request.transaction_type or int(TransactionType.PURCHASE)
        context = FeeContext(
            Stage.CLEARING, transaction_type, request.channel, request.mcc,
            is_international(program, request.merchant_country), asset, amount,
        )  # fmt: skip
        rules_fee = (await self.charges.fee_quote(card.product_id, now, context)).fixed_minor
        fee = rules_fee + markup
        decision_id, entry_id = new_id(), new_id()
        fee_entry_ids = (new_id(), new_id())
        note_ids = (new_id(), new_id())
        movement = writes.clearing_movement(
            request=request, card=card, program=program, plan=plan, asset=asset,
            rules_fee_minor=rules_fee, markup_minor=markup, entry_id=entry_id,
            fee_entry_ids=fee_entry_ids, now=now,
        )  # fmt: skip
        usage, expiry = await self._clearing_usage(
            card, program, holds, plan, amount + fee, transaction_type, asset, now
        )

        def build(applied: ApplyResult) -> LedgerWrite:
            assert applied.balance is not None
            response = self.replies.clear(_clearing_answer(
                plan, amount, fee, asset, applied.balance, decision_id, entry_id, conversion
            ))  # fmt: skip
            return writes.clearing(
                request=request, card=card, program=program, plan=plan, asset=asset,
                rules_fee_minor=rules_fee, markup_minor=markup, conversion=conversion,
                usage=usage, expiry=expiry, decision_id=decision_id, entry_id=entry_id,
                fee_entry_ids=fee_entry_ids, note_ids=note_ids, now=now, response=response,
                fingerprint=fingerprint,
            )  # fmt: skip

        return await self.poster.post(
            movement.change, source=request.source, message_id=request.message_id,
            fingerprint=fingerprint, build=build, usage=usage, program=program,
        )  # fmt: skip

    async def _clearing_usage(
        self, card: CardFacts, program: ProgramRow, holds: list[HoldRow], plan: ClearingPlan,
        settled: int, transaction_type: int, asset: str, now: datetime,
    ) -> tuple[list[tuple[str, int, int]], dict[str, datetime]]:  # fmt: skip
        """What a clearing that settled ``settled`` changes in the limits' usage, as (key,
        amount, count) changes, and each key's expiry."""
        # Amount-based limits follow what settled; counts are never reduced at clearing.
        # A matched clearing corrects the period of its first authorisation; an unmatched
        # one counts in the current period.
        if plan.matched:
            keys = next((h.usage_keys for h in holds if h.usage_keys), ())
            usage = [(key, settled - plan.released_minor, 0) for key in keys]
            expiry = dict.fromkeys(keys, now)  # the rows exist; their expiry is kept
        else:
            counters = await self.charges.limit_counters(
                card.product_id, program, card_id=card.card_id, account_id=card.account_id,
                transaction_type=transaction_type, asset=asset, at=now,
            )  # fmt: skip
            usage = [(c.key, settled, 0) for c in counters if c.key]
            expiry = {c.key: c.expires_at or now for c in counters if c.key}
        return [u for u in usage if u[1]], expiry

    async def _converted(
        self, card: CardFacts, asset: str, amount: int, *, markup: bool
    ) -> Conversion | RateProblem | None:
        """``amount`` of ``asset`` converted into the card account's asset at the rate in
        force now (docs/fx.md), with the product's markup or none; or why it cannot be.
        None when nothing converts (the account holds the asset, the product does not
        convert, or the programme is off-ledger)."""
        product = await self.catalog.product(card.product_id)
        if product.fx is None:
            return None
        if (await self.catalog.program(card.program_id)).mode != "ON_LEDGER":
            return None  # an off-ledger client's shadow ledger is not converted
        into = converted_into(product.assets, card.account_assets, asset)
        if into is None:
            return None
        now = self.clock.now()
        return convert_billing(
            asset, amount, into, rates=await self.catalog.fx_rates(now),
            markup=product.fx if markup else _NO_MARKUP, assets=self.catalog.assets, at=now,
        )  # fmt: skip

    async def refund(self, request: Refund, canonical: bytes) -> bytes:
        """The reply to a refund, as bytes (``canonical`` as :meth:`advise`)."""
        bad = self._format_error(
            request.source, request.message_id, request.amount_minor, request.asset,
            pan=request.pan, pan_required=True, amount_required=True,
        )  # fmt: skip
        if bad:
            return self.replies.refund(RefundAnswer(bad))
        fingerprint = self.keys.fingerprint(canonical)
        amount, asset = request.amount_minor, request.asset
        found = await self._settlement_card("REFUND", request, amount, fingerprint)
        if isinstance(found, bytes):
            return found
        card, program = found
        if _forward_only(program):
            forwarded, _ = await self._forward(
                "REFUND", request.source, request.message_id, fingerprint, card, program,
                writes.refund_fields(request),
            )  # fmt: skip
            return forwarded
        conversion = await self._converted(card, asset, amount, markup=False)
        if isinstance(conversion, RateProblem):
            log.warning("refund not posted: no usable rate", extra={"detail": conversion.detail})
            return self.replies.refund(RefundAnswer(Code.NO_BALANCE_IN_ASSET))
        posted = await self._post_refund(request, fingerprint, card, program, conversion)
        if posted.status is PostStatus.NO_BALANCE:
            return self.replies.refund(RefundAnswer(Code.NO_BALANCE_IN_ASSET))
        return self._answer(posted, fingerprint, "REFUND")

    async def _post_refund(
        self, request: Refund, fingerprint: bytes, card: CardFacts,
        program: ProgramRow, conversion: Conversion | None,
    ) -> Posted:  # fmt: skip
        """Credit a refund to the card's account from the programme's clearing account."""
        amount, asset = request.amount_minor, request.asset
        if conversion is not None:  # credited in the account's asset (docs/fx.md)
            amount, asset = conversion.account_minor, conversion.account_asset
        now = self.clock.now()
        decision_id, entry_id, note_id = new_id(), new_id(), new_id()
        refunded = writes.refund_movement(
            request=request, card=card, program=program, amount_minor=amount, asset=asset,
            entry_id=entry_id, now=now,
        )  # fmt: skip

        def build(applied: ApplyResult) -> LedgerWrite:
            assert applied.balance is not None
            response = self.replies.refund(
                RefundAnswer(
                    Code.APPROVED, decision_id, credited_minor=amount, asset=asset,
                    balance=applied.balance, entry_id=entry_id, fx=conversion,
                )
            )  # fmt: skip
            return writes.refund(
                request=request, card=card, program=program, amount_minor=amount, asset=asset,
                conversion=conversion, decision_id=decision_id, entry_id=entry_id,
                note_id=note_id, now=now, response=response, fingerprint=fingerprint,
            )  # fmt: skip

        return await self.poster.post(
            refunded.change, source=request.source, message_id=request.message_id,
            fingerprint=fingerprint, build=build, program=program,
        )  # fmt: skip

    # -- account-funding credits (issue 18, item 6) ----------------------------------------

    async def credit(self, request: OriginalCredit, canonical: bytes) -> bytes:
        """An original credit transaction: decided (status, product, credit limits) and, when
        approved, credited as one balanced journal entry, in one atomic Redis step and the
        group commit, at most once per (source, message id). docs/credits.md. Its reply as
        bytes (``canonical`` as :meth:`advise`)."""
        bad = self._format_error(
            request.source, request.message_id, request.amount_minor, request.asset,
            pan=request.pan, pan_required=True, amount_required=True,
        )  # fmt: skip
        if not bad and (
            not identifier_ok(request.network_reference, NETWORK_REFERENCE_LEN_MAX, required=False)
            or request.credit_type not in _CREDIT_TYPES
            or len(request.sender_name) > SENDER_NAME_LEN_MAX
        ):
            bad = Code.FORMAT_ERROR
        if bad:
            reason = Reason.FORMAT_ERROR if bad == Code.FORMAT_ERROR else Reason.INVALID_AMOUNT
            return self.replies.credit(_credit_answer(reason))
        key = (request.source, request.message_id)
        original = self._credits.get(key)
        if original is not None:  # a retransmission while the original is in flight here
            with contextlib.suppress(Exception):
                await asyncio.shield(original)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._credits[key] = future
        try:
            return await self._credit(request, canonical)
        finally:
            if self._credits.get(key) is future:
                del self._credits[key]
            future.set_result(None)

    async def _credit(self, request: OriginalCredit, canonical: bytes) -> bytes:
        fingerprint = self.keys.fingerprint(canonical)
        amount, asset = request.amount_minor, request.asset
        found = await self._settlement_card("CREDIT", request, amount, fingerprint, spending=False)
        if isinstance(found, bytes):
            return found
        card, program = found
        fields = writes.credit_fields(request)
        if _forward_only(program):
            forwarded, _ = await self._forward(
                "CREDIT", request.source, request.message_id, fingerprint, card, program,
                fields,
            )  # fmt: skip
            return forwarded
        product = await self.catalog.product(card.product_id)
        allowed = product.rules.allowed_types
        product_reason = (
            Reason.TRANSACTION_NOT_PERMITTED if allowed and ORIGINAL_CREDIT not in allowed else None
        )
        now = self.clock.now()
        counters = await self._credit_counters(product.id, card, program, asset, now)
        poster = self.poster

        async def step(mark: str) -> bytes | Miss | Duplicate:
            result = await poster.cache.credit(
                account_id=card.account_id, card_id=card.card_id, asset=asset,
                amount_minor=amount, product_reason=product_reason, limits=counters,
                source=request.source, message_id=request.message_id, fingerprint=fingerprint,
                mark=mark,
            )  # fmt: skip
            if not isinstance(result, CreditOutcome):
                return result
            write = self._credit_write(
                request, fingerprint, card, program, result, counters, fields, now
            )
            written = await poster.committer.submit(write)
            if written.status is not WriteStatus.COMMITTED:
                # Nothing of this credit is durable: the cache must not keep it.
                poster.sync.refresh_later(card.account_id, written.status.value)
            return self._answer(
                Posted(PostStatus.COMMITTED, written.decision), fingerprint, "CREDIT"
            )

        done = await poster.attempts(
            card.account_id, request.source, request.message_id, step, card.card_id
        )
        if isinstance(done, StoredDecision):  # the original's durable answer
            return self._answer(Posted(PostStatus.DUPLICATE, done), fingerprint, "CREDIT")
        return done

    async def _credit_counters(
        self, product_id: str, card: CardFacts, program: ProgramRow, asset: str, now: datetime
    ) -> list[CounterCheck]:
        """The counters of the product's credit limits in ``asset`` a credit is checked
        against and counts in."""
        counters = []
        for limit in credit_limits(await self.catalog.limits(product_id), asset):
            counter = counter_for_limit(
                limit, card.card_id, card.account_id, now, program.time_zone
            )
            counters.append(
                CounterCheck(counter.key, counter.previous, counter.amount_max_minor,
                             counter.count_max, counter.expires_at)
            )  # fmt: skip
        return counters

    def _credit_write(
        self, request: OriginalCredit, fingerprint: bytes, card: CardFacts,
        program: ProgramRow, result: CreditOutcome, counters: list[CounterCheck],
        fields: dict[str, object], now: datetime,
    ) -> LedgerWrite:  # fmt: skip
        amount, asset = request.amount_minor, request.asset
        decision_id = new_id()
        if result.reason is not Reason.APPROVED:
            declined = _credit_answer(
                result.reason, decision_id, _CREDIT_DECLINE_DETAIL.get(result.reason, "")
            )
            return writes.credit_declined(
                request=request, card=card, reason=result.reason, decision_id=decision_id,
                now=now, response=self.replies.credit(declined), fingerprint=fingerprint,
            )  # fmt: skip
        assert result.balance is not None
        entry_id, note_id = new_id(), new_id()
        response = self.replies.credit(
            CreditAnswer(
                outcome(result.reason).response_code, decision_id, result.reason,
                credited_minor=amount, asset=asset, balance=result.balance, entry_id=entry_id,
            )
        )  # fmt: skip
        return writes.credit(
            request=request, card=card, program=program, counters=counters, fields=fields,
            decision_id=decision_id, entry_id=entry_id, note_id=note_id, now=now,
            response=response, fingerprint=fingerprint,
        )  # fmt: skip

    async def _card_of_message(self, source: str, message_id: str) -> CardFacts | None:
        """The card of an earlier message (a reversal may carry no PAN)."""
        stored = await self.holds.find_decision(source, message_id)
        if stored is None or stored.account_id is None:
            return None
        return await self.cards.card_of_decision(source, message_id)

    async def _forward(
        self, kind: str, source: str, message_id: str, fingerprint: bytes, card: CardFacts,
        program: ProgramRow, fields: dict[str, object], fee: dict[str, object] | None = None,
    ) -> tuple[bytes, bool]:  # fmt: skip
        """Off-ledger: the client's ledger settles. Record the message, acknowledge it, and
        queue it to the client as a notification, in the same transaction; ``fee``: the
        details of a FEE notification to follow it (the message's fields are added). The
        reply, and whether it acknowledges this message ("00", this time or the first)."""
        decision_id = new_id()
        write = writes.forwarded(
            kind=kind, source=source, message_id=message_id, card=card, program=program,
            fields=fields, fee=fee, decision_id=decision_id,
            note_ids=(new_id(), new_id()), now=self.clock.now(),
            response=self._reply(kind, Code.APPROVED, decision_id), fingerprint=fingerprint,
        )  # fmt: skip
        posted = await self.poster.record(write)
        stored = posted.decision
        assert stored is not None
        acknowledged = stored.fingerprint == fingerprint and stored.response_code == Code.APPROVED
        return self._answer(posted, fingerprint, kind), acknowledged

    async def _unknown_card(
        self, kind: str, source: str, message_id: str, fingerprint: bytes, asset: str,
        amount: int,
    ) -> bytes:  # fmt: skip
        """Record a settlement message for a card authswitch does not know: answered 14,
        nothing posted, kept for the operators."""
        decision_id = new_id()
        write = writes.unknown_card(
            kind=kind, source=source, message_id=message_id, asset=asset, amount_minor=amount,
            decision_id=decision_id, now=self.clock.now(),
            response=self._reply(kind, Code.UNKNOWN_CARD, decision_id), fingerprint=fingerprint,
        )  # fmt: skip
        posted = await self.poster.record(write)
        return self._answer(posted, fingerprint, kind)

    # -- hold removal: by an operator, and by age -----------------------------------------

    async def release_hold(
        self, hold_id: str, reason: str, idempotency_key: str, *, actor: str
    ) -> bytes:
        """Remove a stale hold by hand (seed 001: "the amount is manually removed"); the
        reply as bytes, a repeated release's as stored with the first."""
        require_idempotency_key(idempotency_key)
        fingerprint = self.keys.fingerprint(f"release:{hold_id}:{reason}".encode())
        for _ in range(PLAN_ATTEMPTS_MAX):
            hold = await self.holds.hold(hold_id)
            if hold.tombstone:
                raise NotFound(f"hold {hold_id} does not exist")
            if hold.status != "OPEN":
                stored = await self.holds.find_decision(ADMIN_SOURCE, idempotency_key)
                if stored is not None and stored.fingerprint == fingerprint:
                    return stored.response
                raise PreconditionFailed(f"hold {hold_id} has already ended ({hold.status})")
            plan = ReleasePlan(hold.id, hold.amount_minor, hold.amount_minor, HoldEnd.RELEASED)
            posted = await self._release(
                hold, plan, "RELEASE", ADMIN_SOURCE, idempotency_key, fingerprint,
                new_id(), self.clock.now(), _release_reply(self.replies, hold.asset or ""),
            )  # fmt: skip
            if posted.status is PostStatus.CONFLICT:
                continue
            stored = posted.decision
            assert stored is not None
            if stored.fingerprint != fingerprint:
                raise PreconditionFailed("idempotency_key was used for another change")
            await self.audit.record(
                actor,
                "release_hold",
                hold_id,
                {"reason": reason, "amount_minor": plan.release_minor},
            )
            return stored.response
        raise InternalError("hold release could not be planned: the hold kept changing")

    async def age_off(self, *, limit: int = 1_000) -> int:
        """Release every hold whose validity has passed (by the injected clock); returns how
        many were released. Each hold ages off at most once: its release is keyed
        ("system", "ageoff:<hold>") and guarded on the hold still being open."""
        now = self.clock.now()
        holds = await self.holds.expired_holds(now, limit)
        gate = asyncio.Semaphore(SWEEP_CONCURRENCY_MAX)

        async def expire(hold: HoldRow) -> bool:
            async with gate:
                plan = ReleasePlan(hold.id, hold.amount_minor, hold.amount_minor, HoldEnd.EXPIRED)
                posted = await self._release(
                    hold, plan, "AGE_OFF", SYSTEM_SOURCE, f"ageoff:{hold.id}",
                    f"ageoff:{hold.id}".encode(), new_id(), now,
                    _release_reply(self.replies, hold.asset or ""),
                )  # fmt: skip
                return posted.status is PostStatus.COMMITTED

        results = await asyncio.gather(*(expire(h) for h in holds), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            log.warning(
                "age-off: some holds not released this time",
                extra={
                    "failures": len(failures),
                    "errors": sorted({type(f).__name__ for f in failures}),
                },
            )
        return sum(1 for r in results if r is True)


SENDER_NAME_LEN_MAX = 30
_CREDIT_TYPES = frozenset(int(t) for t in CreditType)
_CREDIT_DECLINE_DETAIL = {
    Reason.TRANSACTION_NOT_PERMITTED: (
        "credit not permitted: the product does not take original credits, or the account "
        "holds no balance in the asset"
    ),
    Reason.AMOUNT_LIMIT_EXCEEDED: "credit amount limit exceeded",
    Reason.COUNT_LIMIT_EXCEEDED: "credit count limit exceeded",
}


def _credit_answer(reason: Reason, decision_id: str = "", detail: str = "") -> CreditAnswer:
    return CreditAnswer(outcome(reason).response_code, decision_id, reason, detail=detail)


def _forward_only(program: ProgramRow) -> bool:
    """An off-ledger program without a shadow ledger: lifecycle messages are only recorded
    and forwarded to the client."""
    if program.mode != "OFF_LEDGER":
        return False
    return program.routing is None or program.routing.stand_in is not StandInPolicy.SHADOW


def _reversal_reply(
    replies: LifecycleReplies, asset: str, decision_id: str, conversion: Conversion | None
) -> Callable[[int, Balance], bytes]:
    """How a reversal that released a hold in ``asset`` is answered."""

    def respond(released: int, balance: Balance) -> bytes:
        return replies.reverse(
            ReversalAnswer(
                Code.APPROVED, decision_id, ReversalResult.RELEASED, released_minor=released,
                asset=asset, balance=balance, fx=conversion,
            )
        )  # fmt: skip

    return respond


def _clearing_answer(
    plan: ClearingPlan, amount: int, fee: int, asset: str, balance: Balance, decision_id: str,
    entry_id: str, conversion: Conversion | None,
) -> ClearingAnswer:  # fmt: skip
    """How a clearing posted on-ledger is answered."""
    return ClearingAnswer(
        Code.APPROVED, decision_id, plan.matched, released_minor=plan.released_minor,
        posted_minor=amount, fee_minor=fee, asset=asset, balance=balance,
        entry_id=entry_id if amount else "", fx=conversion,
    )  # fmt: skip
