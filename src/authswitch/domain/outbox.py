"""The notification outbox as services read it (pure values): a delivery claimed, the
notification it delivers, the depth per sink, and a delivery as the admin API lists it.
``adapters/postgres/outbox.py`` keeps them; ``service/outbox.py`` delivers them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = ["Claim", "DeliveryRow", "QueuedNotification", "SinkDepth"]


@dataclass(frozen=True, slots=True)
class Claim:
    """A delivery this process claimed: one attempt of one notification to one sink."""

    notification_id: str
    sink: str
    attempt: int
    seq: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class QueuedNotification:
    """A notification to deliver, as it was queued."""

    id: str
    program_id: str
    account_id: str  # empty when the notification is not about an account
    card_id: str
    kind: str
    payload: dict[str, Any]
    created_at: datetime
    seq: int


@dataclass(frozen=True, slots=True)
class SinkDepth:
    """How many deliveries to one sink are pending and dead, and the oldest pending."""

    sink: str
    pending: int
    dead: int
    oldest_pending: datetime | None


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    """A notification's delivery to one sink, as the admin API lists it."""

    notification_id: str
    kind: str
    account_id: str
    seq: int
    sink: str
    status: str
    attempts: int
    last_error: str
    created_at: datetime
