"""The notification outbox worker (DESIGN.md §6): delivers every notification at least
once to each sink of its program, in order per account, with a stable notification id and
an attempt count, retrying with capped exponential backoff until acknowledged or until the
dead-letter horizon, after which an operator re-drives it.

Order: a delivery is only attempted when it is the earliest pending one of its (sink,
account), so a failing notification holds back the later ones of the same account but not
those of other accounts. Several replicas may run the worker: a delivery is claimed by
pushing its next attempt time out by a lease in one UPDATE, which only one of them wins; a
replica that dies mid-delivery leaves the claim to expire and the delivery to be retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from dataclasses import dataclass
from datetime import timedelta

from authswitch import metrics
from authswitch.adapters.client.decision import ClientChannels
from authswitch.adapters.client.webhook import WebhookSender
from authswitch.adapters.postgres.outbox import OutboxStore
from authswitch.domain.messages.decision import Notice
from authswitch.domain.outbox import Claim, QueuedNotification
from authswitch.domain.retry import backoff_ms
from authswitch.secrets import SecretStore
from authswitch.service.catalog import Catalog
from authswitch.service.clock import Clock

__all__ = ["OutboxSettings", "OutboxWorker"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OutboxSettings:
    poll_ms: int = 200
    concurrency_max: int = 16
    backoff_initial_ms: int = 500
    backoff_max_ms: int = 60_000
    dead_after_s: int = 24 * 3600
    delivery_timeout_ms: int = 5_000

    @property
    def lease_s(self) -> float:
        """How long a claimed delivery is left alone by other replicas."""
        return self.delivery_timeout_ms / 1000 * 2 + 1


class OutboxWorker:
    def __init__(
        self,
        store: OutboxStore,
        *,
        catalog: Catalog,
        channels: ClientChannels,
        webhook: WebhookSender,
        secrets: SecretStore,
        clock: Clock,
        settings: OutboxSettings,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.channels = channels
        self.webhook = webhook
        self.secrets = secrets
        self.clock = clock
        self.settings = settings
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._gauges_at = 0.0

    def start(self) -> None:
        assert self._task is None
        self._task = asyncio.create_task(self._loop(), name="outbox")

    def wake(self) -> None:
        """Look for work now rather than at the next poll (new notifications were written)."""
        self._wake.set()

    async def stop(self) -> None:
        """Finish the deliveries in progress, then stop; pending ones stay in Postgres."""
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                done = await self.run_once()
                await self._update_gauges()
            except Exception as exc:
                done = 0
                metrics.STORE_ERRORS.labels("postgres", "outbox").inc()
                log.warning("outbox round failed", extra={"error": type(exc).__name__})
            if done:
                continue  # there may be more: the next heads of the same accounts
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_ms / 1000)

    async def run_once(self) -> int:
        """Claim the due deliveries (at most ``concurrency_max``), attempt them, record the
        outcomes; returns how many were attempted."""
        now = self.clock.now()
        lease_until = now + timedelta(seconds=self.settings.lease_s)
        claims = await self.store.claim(now, self.settings.concurrency_max, lease_until)
        if claims:
            await asyncio.gather(*(self._deliver(c) for c in claims))
        return len(claims)

    async def _deliver(self, claim: Claim) -> None:
        note = await self.store.notification(claim)
        started = time.perf_counter()
        error = ""
        try:
            if claim.sink == "client":
                await self._to_client(note, claim.attempt)
            else:
                await self._to_webhook(note, claim.attempt)
        except Exception as exc:
            error = f"{type(exc).__name__}: {str(exc)[:200]}"
        outcome = "ok" if not error else "error"
        metrics.OUTBOX_DELIVERIES.labels(claim.sink, outcome).inc()
        metrics.CLIENT_SECONDS.labels(f"notify_{claim.sink}", outcome).observe(
            time.perf_counter() - started
        )
        await self._record(claim, error)

    async def _to_client(self, note: QueuedNotification, attempt: int) -> None:
        program = await self.catalog.program(note.program_id)
        if program.routing is None:
            raise LookupError("the program has no client endpoint")
        notice = Notice(
            notification_id=note.id,
            kind=note.kind,
            program_id=note.program_id,
            account_id=note.account_id,
            card_id=note.card_id,
            sequence=note.seq,
            attempt=attempt,
            payload=note.payload,
            created_at=note.created_at,
        )
        connection = await self.channels.connection(program.id, program.routing)
        await connection.notify(notice, timeout_s=self.settings.delivery_timeout_ms / 1000)

    async def _to_webhook(self, note: QueuedNotification, attempt: int) -> None:
        program = await self.catalog.program(note.program_id)
        if not program.webhook_url:
            raise LookupError("the program has no webhook")
        body = json.dumps(
            {
                "notification_id": note.id,
                "kind": note.kind,
                "program_id": note.program_id,
                "account_id": note.account_id,
                "card_id": note.card_id,
                "sequence": note.seq,
                "attempt": attempt,
                "created_at": note.created_at.isoformat(),
                "payload": note.payload,
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        await self.webhook.send(
            program.webhook_url,
            body,
            secret=self.secrets.get(program.webhook_secret),
            timestamp=int(self.clock.now().timestamp()),
            notification_id=note.id,
            attempt=attempt,
        )

    async def _record(self, claim: Claim, error: str) -> None:
        now = self.clock.now()
        if not error:
            await self.store.delivered(claim, now)
            return
        if (now - claim.created_at).total_seconds() >= self.settings.dead_after_s:
            log.warning("notification dead-lettered", extra={"sink": claim.sink, "error": error})
            await self.store.dead(claim, error)
            return
        pause = backoff_ms(
            claim.attempt,
            initial_ms=self.settings.backoff_initial_ms,
            max_ms=self.settings.backoff_max_ms,
            jitter=random.random(),  # noqa: S311 - spreading retries, not a secret
        )
        await self.store.retry_at(claim, now + timedelta(milliseconds=pause), error)

    async def _update_gauges(self) -> None:
        if time.monotonic() - self._gauges_at < 5:
            return
        self._gauges_at = time.monotonic()
        now = self.clock.now()
        seen = set()
        for depth in await self.store.depths():
            seen.add(depth.sink)
            metrics.OUTBOX_DEPTH.labels(depth.sink).set(depth.pending)
            metrics.OUTBOX_DEAD_LETTERS.labels(depth.sink).set(depth.dead)
            oldest = depth.oldest_pending
            age = (now - oldest).total_seconds() if oldest is not None else 0.0
            metrics.OUTBOX_OLDEST_AGE_SECONDS.labels(depth.sink).set(max(age, 0.0))
        for sink in ("client", "webhook"):
            if sink not in seen:
                metrics.OUTBOX_DEPTH.labels(sink).set(0)
                metrics.OUTBOX_DEAD_LETTERS.labels(sink).set(0)
                metrics.OUTBOX_OLDEST_AGE_SECONDS.labels(sink).set(0)
