"""Steady authorisation load for fault tests: a few workers, each sending one authorisation
after another until stopped, every outcome kept with the time its answer arrived, so that a
test can ask what was answered while a store was down."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass

import grpc

from authswitch.v1 import authorization_pb2 as pb
from tests.support.ledger import IssuedCard, Ledger

__all__ = ["Outcome", "SteadyLoad"]


@dataclass(frozen=True, slots=True)
class Outcome:
    request: pb.AuthorizeRequest
    account_id: str
    sent_at: float  # time.monotonic()
    answered_at: float
    code: str  # the response code, or "" for a gRPC error
    status: grpc.StatusCode | None  # the gRPC error's status, None for an answer

    @property
    def approved(self) -> bool:
        return self.code in ("00", "10")


class SteadyLoad:
    """``workers`` tasks sending authorisations of ``amount_minor`` on ``cards`` in turn."""

    def __init__(
        self, ledger: Ledger, cards: list[IssuedCard], *, amount_minor: int = 100,
        workers: int = 8, timeout_s: float = 15.0, pause_s: float = 0.0,
    ) -> None:  # fmt: skip
        assert cards
        assert workers > 0
        self.ledger = ledger
        self._cards = itertools.cycle(cards)
        self.amount_minor = amount_minor
        self.workers = workers
        self.timeout_s = timeout_s
        self.pause_s = pause_s
        self.outcomes: list[Outcome] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        assert not self._tasks, "started twice"
        self._tasks = [asyncio.ensure_future(self._worker()) for _ in range(self.workers)]

    async def stop(self) -> None:
        """Stop sending; every call already sent is answered (or fails) first."""
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _worker(self) -> None:
        while not self._stop.is_set():
            card = next(self._cards)
            request = self.ledger.request(card, self.amount_minor)
            sent = time.monotonic()
            status: grpc.StatusCode | None = None
            try:
                response = await self.ledger.auth.Authorize(request, timeout=self.timeout_s)
            except grpc.aio.AioRpcError as exc:
                code, status = "", exc.code()
                await asyncio.sleep(0.05)  # the server is away: do not spin
            else:
                code = response.response_code
            self.outcomes.append(
                Outcome(request, card.account_id, sent, time.monotonic(), code, status)
            )
            if self.pause_s:
                await asyncio.sleep(self.pause_s)

    def approved(self) -> set[str]:
        return {o.request.message_id for o in self.outcomes if o.approved}

    def answered_between(self, start: float, end: float) -> list[Outcome]:
        return [o for o in self.outcomes if start <= o.answered_at <= end]

    def codes(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for outcome in self.outcomes:
            key = outcome.code or f"grpc:{outcome.status.name if outcome.status else '?'}"
            counts[key] = counts.get(key, 0) + 1
        return counts

    async def wait_for_approval_after(self, moment: float, timeout_s: float = 30.0) -> float:
        """Until an approval sent after ``moment`` is answered; returns when it was."""
        deadline = time.monotonic() + timeout_s
        while True:
            answered = [o.answered_at for o in self.outcomes if o.sent_at >= moment and o.approved]
            if answered:
                return min(answered)
            if time.monotonic() > deadline:
                raise AssertionError(f"no approval within {timeout_s}s of recovery: {self.codes()}")
            await asyncio.sleep(0.05)
