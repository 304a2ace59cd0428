"""The reference off-ledger client: a DecisionService with its own in-memory ledger.

For tests, demos, benchmarks, and as the starting point of a real client (see
docs/client-contract.md). It decides from per-account balances, holds what it approves,
applies the notifications authswitch delivers (stand-in advices, reversals, clearings,
refunds), and deduplicates them by notification id, as a real client must. Its latency,
error rate and outages can be set, to see how authswitch stands in.

    authswitch reference-client --listen 127.0.0.1:50061 --balance-minor 100000
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import logging
import random
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import json_format

from authswitch.v1 import common_pb2, decision_pb2, decision_pb2_grpc

__all__ = ["ReferenceClient", "ReferenceLedger", "serve_reference_client"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Hold:
    account_id: str
    amount_minor: int
    network_reference: str


@dataclass
class ReferenceLedger:
    """Balances per account id, in minor units of one asset (unknown accounts open with
    ``opening_minor``), and holds by the message id that made them."""

    opening_minor: int = 100_000
    balances: dict[str, int] = field(default_factory=dict)
    holds: dict[str, Hold] = field(default_factory=dict)

    def actual(self, account_id: str) -> int:
        return self.balances.setdefault(account_id, self.opening_minor)

    def available(self, account_id: str) -> int:
        held = sum(h.amount_minor for h in self.holds.values() if h.account_id == account_id)
        return self.actual(account_id) - held

    def hold(self, message_id: str, account_id: str, amount: int, reference: str) -> None:
        self.holds[message_id] = Hold(account_id, amount, reference)

    def release(self, message_id: str, amount: int | None) -> None:
        """Release all of a hold (``amount`` None) or part of it."""
        hold = self.holds.get(message_id)
        if hold is None:
            return
        left = 0 if amount is None else max(hold.amount_minor - amount, 0)
        if left:
            self.holds[message_id] = Hold(hold.account_id, left, hold.network_reference)
        else:
            del self.holds[message_id]

    def clear(self, account_id: str, reference: str, amount: int, final: bool) -> None:
        """Post a clearing; a final one releases every hold of its transaction."""
        if final:
            for message_id in [
                m for m, h in self.holds.items() if h.network_reference == reference
            ]:
                del self.holds[message_id]
        self.balances[account_id] = self.actual(account_id) - amount


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
        await self._gate(context)
        self.decisions.append(request)
        if self.answer_override is not None:
            return self.answer_override
        # A Decide for a message id seen before is its retransmission after authswitch
        # answered 96 and recorded nothing: decided afresh, its earlier hold replaced, not
        # counted against it (docs/client-contract.md, "Retransmitting after a 96").
        self.ledger.holds.pop(request.message_id, None)
        amount = request.billing_amount.amount_minor + request.fee.amount_minor
        available = self.ledger.available(request.account_id)
        reference = request.network_reference
        if amount <= available:
            self.ledger.hold(request.message_id, request.account_id, amount, reference)
            return decision_pb2.DecideResponse(decision=decision_pb2.CLIENT_DECISION_APPROVE)
        partial = available - request.fee.amount_minor
        if request.partial_approval_allowed and partial > 0:
            self.ledger.hold(request.message_id, request.account_id, available, reference)
            return decision_pb2.DecideResponse(
                decision=decision_pb2.CLIENT_DECISION_PARTIAL,
                approved_amount=common_pb2.Money(
                    amount_minor=partial, asset=request.billing_amount.asset
                ),
            )
        return decision_pb2.DecideResponse(
            decision=decision_pb2.CLIENT_DECISION_DECLINE, response_code="51", reason="no funds"
        )

    async def Notify(  # noqa: N802
        self, request: decision_pb2.NotifyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> decision_pb2.NotifyResponse:
        await self._gate(context)
        self.notifications.append(request)
        self.deliveries[request.notification_id] += 1
        if request.notification_id in self.applied:
            return decision_pb2.NotifyResponse()  # a repeat: already applied
        self.applied[request.notification_id] = request
        self._apply(request)
        return decision_pb2.NotifyResponse()

    def _apply(self, note: decision_pb2.NotifyRequest) -> None:
        payload = json_format.MessageToDict(note.payload)
        amount = int(payload.get("amount_minor", 0))
        account = note.account_id
        if note.kind == "STAND_IN_ADVICE":
            self.ledger.hold(
                str(payload.get("message_id")), account, amount,
                str(payload.get("network_reference", "")),
            )  # fmt: skip
        elif note.kind == "REVERSAL":
            original = str(payload.get("original_message_id", ""))
            self.ledger.release(original, None if payload.get("full") else amount)
        elif note.kind == "CLEARING":
            reference = str(payload.get("network_reference", ""))
            self.ledger.clear(account, reference, amount, bool(payload.get("final", True)))
        elif note.kind == "REFUND":
            self.ledger.balances[account] = self.ledger.actual(account) + amount

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
