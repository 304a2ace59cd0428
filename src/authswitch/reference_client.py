"""The reference off-ledger client: a DecisionService with its own in-memory ledger.

For tests, demos, benchmarks, and as the starting point of a real client (see
docs/client-contract.md). It decides from per-account balances, holds what it approves, and
applies every notification authswitch delivers, deduplicated by notification id as a real
client must, so that its ledger stays exactly where authswitch's shadow ledger is:

=================  ===============================================================
kind               what the ledger does
=================  ===============================================================
STAND_IN_ADVICE    holds what authswitch approved for the message (replacing any hold
                   of its own for it); a declined stand-in holds nothing
ADVICE             the network approved in stand-in: holds the difference between the
                   advised amount and what the transaction holds (less: releases it,
                   newest hold first)
REVERSAL           releases what was reversed (all of it for a full reversal); one for
                   an authorisation not seen yet is kept and applied when it comes
CLEARING           debits the cleared amount; releases the transaction's holds: all of
                   them when final, else oldest first up to the cleared amount
REFUND             credits the amount
CREDIT             an original credit (push to card, payout): credits the amount
FEE                HELD or an authorisation fee to apply: added to the message's hold;
                   POSTED or a clearing fee: debited; one it charged itself already
                   (in Decide) is not charged twice
FEE_NOT_APPLIED    nothing (the fee was not charged)
DISPUTE            credits (or debits) ``customer_minor``
AGE_OFF, RELEASE   releases what authswitch released
CARD_*, PIN_*      records the card's state; no money moves
=================  ===============================================================

When a payload says what authswitch itself released (``released_minor``, ``held_minor``:
programs with a shadow ledger), that is what is applied; otherwise (programs whose
messages are only forwarded) the client works it out by the same rules. Its latency, error
rate and outages can be set, to see how authswitch stands in.

    authswitch reference-client --listen 127.0.0.1:50061 --balance-minor 100000
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import itertools
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import json_format

from authswitch.domain.codes import Code
from authswitch.v1 import common_pb2, decision_pb2, decision_pb2_grpc

__all__ = ["ReferenceClient", "ReferenceLedger", "serve_reference_client"]

log = logging.getLogger(__name__)

_APPROVED_CODES = frozenset({Code.APPROVED, Code.PARTIALLY_APPROVED})


@dataclass(slots=True)
class Hold:
    """A reservation made for one message: its amount and fee, less what was released."""

    account_id: str
    asset: str
    network_reference: str
    order: int  # creation order: clearings release oldest first, advices reduce newest first
    principal_minor: int = 0
    fee_minor: int = 0
    released_minor: int = 0

    @property
    def open_minor(self) -> int:
        return max(self.principal_minor + self.fee_minor - self.released_minor, 0)


@dataclass
class ReferenceLedger:
    """Balances per (account id, asset) in minor units (a balance not seen before opens at
    ``opening_minor``, or at what :meth:`open_account` set), and holds by the message id
    that made them. Pure: no I/O, no clock."""

    opening_minor: int = 100_000
    balances: dict[tuple[str, str], int] = field(default_factory=dict)
    holds: dict[str, Hold] = field(default_factory=dict)
    # Reversals that came before their authorisation: message id -> amount (None: full).
    early_reversals: dict[str, int | None] = field(default_factory=dict)
    # Authorisation fees charged in Decide, by message id: a later FEE notification of the
    # same message is not charged again.
    fees_charged: set[str] = field(default_factory=set)
    card_status: dict[str, str] = field(default_factory=dict)
    _orders: itertools.count[int] = field(default_factory=itertools.count, repr=False)

    # -- balances -------------------------------------------------------------------------

    def _asset(self, account_id: str, asset: str | None) -> str:
        if asset is not None:
            return asset
        seen = {a for (account, a) in self.balances if account == account_id}
        seen |= {h.asset for h in self.holds.values() if h.account_id == account_id}
        if len(seen) > 1:
            raise ValueError(f"account {account_id} holds several assets: name one")
        return next(iter(seen), "")

    def open_account(self, account_id: str, asset: str, balance_minor: int) -> None:
        self.balances[(account_id, asset)] = balance_minor

    def actual(self, account_id: str, asset: str | None = None) -> int:
        return self.balances.setdefault(
            (account_id, self._asset(account_id, asset)), self.opening_minor
        )

    def held(self, account_id: str, asset: str | None = None) -> int:
        asset = self._asset(account_id, asset)
        return sum(
            h.open_minor
            for h in self.holds.values()
            if h.account_id == account_id and h.asset == asset
        )

    def available(self, account_id: str, asset: str | None = None) -> int:
        asset = self._asset(account_id, asset)
        return self.actual(account_id, asset) - self.held(account_id, asset)

    def post(self, account_id: str, asset: str, delta_minor: int) -> None:
        """Change the actual balance (a credit is positive)."""
        self.balances[(account_id, asset)] = self.actual(account_id, asset) + delta_minor

    # -- holds ----------------------------------------------------------------------------

    def _hold_of(self, message_id: str, account_id: str, asset: str, reference: str) -> Hold:
        hold = self.holds.get(message_id)
        if hold is None:
            hold = Hold(account_id, asset, reference, next(self._orders))
            self.holds[message_id] = hold
        elif reference and not hold.network_reference:
            hold.network_reference = reference
        return hold

    def hold(
        self, message_id: str, account_id: str, asset: str, principal_minor: int,
        fee_minor: int, reference: str,
    ) -> None:  # fmt: skip
        """Hold an approval's amount and fee under its message id (replacing what was held
        for it); a reversal that came first takes its part at once."""
        hold = self._hold_of(message_id, account_id, asset, reference)
        hold.principal_minor, hold.fee_minor = principal_minor, fee_minor
        if message_id in self.early_reversals:
            self.release(message_id, self.early_reversals.pop(message_id))

    def add_fee(self, message_id: str, account_id: str, asset: str, fee_minor: int) -> None:
        self._hold_of(message_id, account_id, asset, "").fee_minor = fee_minor

    def release(self, message_id: str, amount_minor: int | None) -> int:
        """Release all of a hold (``amount_minor`` None) or part of it; returns how much.
        A hold released in full is forgotten."""
        hold = self.holds.get(message_id)
        if hold is None:
            return 0
        released = hold.open_minor if amount_minor is None else min(amount_minor, hold.open_minor)
        hold.released_minor += released
        if hold.open_minor == 0:
            del self.holds[message_id]
        return released

    def transaction(self, account_id: str, asset: str, reference: str) -> list[str]:
        """The message ids of a transaction's open holds, oldest first."""
        found = [
            (h.order, m)
            for m, h in self.holds.items()
            if h.account_id == account_id and h.asset == asset
            and reference and h.network_reference == reference
        ]  # fmt: skip
        return [m for _, m in sorted(found)]

    def release_oldest_first(
        self, account_id: str, asset: str, reference: str, amount_minor: int | None
    ) -> int:
        """Release the transaction's holds oldest first up to ``amount_minor`` (None: all)."""
        released = 0
        for message_id in self.transaction(account_id, asset, reference):
            if amount_minor is not None and released >= amount_minor:
                break
            released += self.release(
                message_id, None if amount_minor is None else amount_minor - released
            )
        return released

    def reduce_newest_first(
        self, account_id: str, asset: str, reference: str, amount_minor: int
    ) -> None:
        for message_id in reversed(self.transaction(account_id, asset, reference)):
            if amount_minor <= 0:
                break
            amount_minor -= self.release(message_id, amount_minor)

    # -- notifications --------------------------------------------------------------------

    def apply(self, kind: str, account_id: str, card_id: str, payload: Mapping[str, Any]) -> None:
        """Apply one notification (already deduplicated by its id)."""
        asset = str(payload.get("asset", "")) or self._asset(account_id, None)

        def amount(key: str) -> int:
            return int(payload.get(key, 0) or 0)

        message_id = str(payload.get("message_id", ""))
        reference = str(payload.get("network_reference", ""))
        if kind == "STAND_IN_ADVICE":
            code = str(payload.get("response_code", Code.APPROVED))
            if code not in _APPROVED_CODES:
                self.release(message_id, None)  # declined in stand-in: nothing is held
                return
            key = "approved_minor" if "approved_minor" in payload else "amount_minor"
            approved = amount(key)
            hold = self._hold_of(message_id, account_id, asset, reference)
            self.hold(message_id, account_id, asset, approved, hold.fee_minor, reference)
        elif kind == "ADVICE":
            self._advice(account_id, asset, message_id, reference, payload)
        elif kind == "REVERSAL":
            original = str(payload.get("original_message_id", ""))
            if "released_minor" in payload:
                self.release(original, amount("released_minor"))
            else:
                requested = None if payload.get("full") else amount("amount_minor")
                if original in self.holds:
                    self.release(original, requested)
                else:
                    self.early_reversals[original] = requested
        elif kind == "CLEARING":
            final = bool(payload.get("final", True))
            if "released_minor" in payload:
                to_release: int | None = amount("released_minor")
            else:
                to_release = None if final else amount("amount_minor")
            self.release_oldest_first(account_id, asset, reference, to_release)
            self.post(account_id, asset, -amount("amount_minor"))
        elif kind in ("REFUND", "CREDIT"):  # CREDIT: an original credit (push to card)
            self.post(account_id, asset, amount("amount_minor"))
        elif kind == "FEE":
            self._fee(account_id, asset, message_id, payload)
        elif kind == "DISPUTE":
            self.post(account_id, asset, amount("customer_minor"))
        elif kind in ("AGE_OFF", "RELEASE"):
            self.release(str(payload.get("original_message_id", "")), amount("released_minor"))
        elif kind == "CARD_STATUS_CHANGED":
            self.card_status[card_id] = str(payload.get("to", ""))
        elif kind == "CARD_EXPIRED":
            self.card_status[card_id] = "EXPIRED"
        elif kind == "PIN_TRIES_EXCEEDED":  # BLOCK_CARD products block the card too
            status = payload.get("card_status") or self.card_status.get(card_id, "ACTIVE")
            self.card_status[card_id] = str(status)
        elif kind != "FEE_NOT_APPLIED":
            log.info("reference client: notification kind %s has no effect", kind)

    def _advice(
        self, account_id: str, asset: str, message_id: str, reference: str,
        payload: Mapping[str, Any],
    ) -> None:  # fmt: skip
        original = self.holds.get(str(payload.get("original_message_id", "")))
        if original is not None and (original.account_id, original.asset) != (account_id, asset):
            original = None
        if original is not None:
            reference = original.network_reference
        if "held_minor" in payload:
            delta = int(payload.get("held_minor", 0) or 0)
        else:
            held = 0
            if original is not None:
                transaction = self.transaction(account_id, asset, reference)
                held = sum(self.holds[m].open_minor for m in transaction)
            delta = int(payload.get("amount_minor", 0) or 0) - held
        if delta > 0:
            self.hold(message_id, account_id, asset, delta, 0, reference)
        elif delta < 0:
            self.reduce_newest_first(account_id, asset, reference, -delta)

    def _fee(
        self, account_id: str, asset: str, message_id: str, payload: Mapping[str, Any]
    ) -> None:
        fee = int(payload.get("fee_minor", 0) or 0)
        mode = str(payload.get("fee_mode", ""))
        stage = str(payload.get("stage", "AUTHORIZATION"))
        if mode == "POSTED" or stage == "CLEARING":
            self.post(account_id, asset, -fee)
        elif message_id in self.fees_charged:
            return  # charged with the hold when this client decided
        elif mode == "HELD" or message_id in self.holds:
            self.add_fee(message_id, account_id, asset, fee)
        elif fee <= self.available(account_id, asset):
            # A fee without an approval to hold it with (a zero-value or declined request):
            # charged when the balance covers it, as seed 004 says of on-ledger programs.
            self.post(account_id, asset, -fee)


class ReferenceClient(decision_pb2_grpc.DecisionServiceServicer):
    def __init__(
        self,
        ledger: ReferenceLedger | None = None,
        *,
        latency_ms: int = 0,
        error_rate: float = 0.0,
        token: str = "",
        seed: int | None = None,
    ) -> None:
        self.ledger = ledger or ReferenceLedger()
        self.latency_ms = latency_ms
        self.error_rate = error_rate
        self.outage = False
        self.token = token
        # Every Decide request, answered or not (the latest last); ``decisions``: those answered.
        self.received: list[decision_pb2.DecideRequest] = []
        self.decisions: list[decision_pb2.DecideRequest] = []
        self.notifications: list[decision_pb2.NotifyRequest] = []  # every delivery received
        self.applied: dict[str, decision_pb2.NotifyRequest] = {}  # first delivery of each id
        self.deliveries: collections.Counter[str] = collections.Counter()
        self.answer_override: decision_pb2.DecideResponse | None = None
        self._random = random.Random(seed)  # noqa: S311 - simulated failures, not secrets

    async def _gate(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if self.outage:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "reference client: outage")
        if self.token:
            metadata = dict(context.invocation_metadata() or ())
            given = str(metadata.get("authorization", ""))
            if not hmac.compare_digest(given, f"Bearer {self.token}"):
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad token")
        if self.latency_ms:
            await asyncio.sleep(self.latency_ms / 1000)
        if self.error_rate and self._random.random() < self.error_rate:
            await context.abort(grpc.StatusCode.INTERNAL, "reference client: injected error")

    async def Decide(  # noqa: N802
        self, request: decision_pb2.DecideRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> decision_pb2.DecideResponse:
        started = time.monotonic()
        self.received.append(request)
        await self._gate(context)
        self.decisions.append(request)
        if self.answer_override is not None:
            return self.answer_override
        ledger = self.ledger
        # A Decide for a message id seen before is its retransmission after authswitch
        # answered 96 and recorded nothing: decided afresh, its earlier hold replaced, not
        # counted against it (docs/client-contract.md, "Retransmitting after a 96").
        ledger.holds.pop(request.message_id, None)
        asset, account = request.billing_amount.asset, request.account_id
        requested, fee = request.billing_amount.amount_minor, request.fee.amount_minor
        available = ledger.available(account, asset)
        reference = request.network_reference
        if request.incremental and request.original_message_id in ledger.holds:
            reference = ledger.holds[request.original_message_id].network_reference
        # An answer later than authswitch waits for is discarded (it stands in, and tells
        # us with an advice): holding for it would hold twice, or hold for a decline.
        late = (time.monotonic() - started) * 1000 >= request.time_left_ms > 0
        if requested + fee <= available:
            approved = requested
            answer = decision_pb2.DecideResponse(decision=decision_pb2.CLIENT_DECISION_APPROVE)
        elif request.partial_approval_allowed and available - fee > 0:
            approved = available - fee
            answer = decision_pb2.DecideResponse(
                decision=decision_pb2.CLIENT_DECISION_PARTIAL,
                approved_amount=common_pb2.Money(amount_minor=approved, asset=asset),
            )
        else:
            return decision_pb2.DecideResponse(
                decision=decision_pb2.CLIENT_DECISION_DECLINE,
                response_code=Code.INSUFFICIENT_FUNDS,
                reason="no funds",
            )
        if not late:
            ledger.hold(request.message_id, account, asset, approved, fee, reference)
            if fee:
                ledger.fees_charged.add(request.message_id)
        return answer

    async def Notify(  # noqa: N802
        self, request: decision_pb2.NotifyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> decision_pb2.NotifyResponse:
        await self._gate(context)
        self.notifications.append(request)
        self.deliveries[request.notification_id] += 1
        if request.notification_id in self.applied:
            return decision_pb2.NotifyResponse()  # a repeat: already applied
        self.applied[request.notification_id] = request
        payload = json_format.MessageToDict(request.payload)
        self.ledger.apply(request.kind, request.account_id, request.card_id, payload)
        return decision_pb2.NotifyResponse()

    def kinds(self) -> list[str]:
        return [n.kind for n in self.applied.values()]


async def serve_reference_client(
    client: ReferenceClient, listen: str
) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    decision_pb2_grpc.add_DecisionServiceServicer_to_server(client, server)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    return server, port
