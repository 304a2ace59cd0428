"""The MOVEMENT notification (service/movements.py says who gets one and when): what moved
on a customer balance, the balance after it, and the message it belongs to."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from authswitch.domain.catalog import ProgramRow
from authswitch.domain.ledger import Balance
from authswitch.domain.records import Notification
from authswitch.domain.writes.common import to_program

__all__ = ["MOVEMENT", "movement", "subscribed"]

MOVEMENT = "MOVEMENT"


def subscribed(program: ProgramRow | None) -> bool:
    return program is not None and program.movements and program.mode == "ON_LEDGER"


def movement(
    program: ProgramRow,
    *,
    notification_id: str,
    kind: str,
    account_id: str,
    card_id: str | None,
    asset: str,
    actual_delta_minor: int,
    authorized_delta_minor: int,
    balance_after: Balance | None,
    created_at: datetime,
    source: str,
    message_id: str,
    details: Mapping[str, object] | None = None,
) -> Notification:
    """One MOVEMENT notification (the caller checks the subscription)."""
    payload: dict[str, object] = dict(details or {})
    payload.update(
        movement=kind, source=source, message_id=message_id, asset=asset,
        actual_delta_minor=actual_delta_minor, authorized_delta_minor=authorized_delta_minor,
        available_delta_minor=actual_delta_minor - authorized_delta_minor,
    )  # fmt: skip
    if balance_after is not None:
        payload["balance_after"] = {
            "actual_minor": balance_after.actual_minor,
            "available_minor": balance_after.available_minor,
            "authorized_minor": balance_after.authorized_minor,
        }
    return to_program(notification_id, program, MOVEMENT, payload, created_at, account_id, card_id)
