"""PIN tries exceeded (seed 000: "blocking of a card if the number of online PIN tries are
exceeded"; issue 17 item 4).

A wrong PIN that uses up the card's last try does what the product says
(``pin_tries_exceeded_action``):

* ``BLOCK_CARD`` (the default): the card's status becomes BLOCKED in the same commit as the
  decision, so every later request is declined 62 (card status, check 3) until an operator
  sets it ACTIVE again, which also resets the tries. The client is told why: a
  ``PIN_TRIES_EXCEEDED`` notification naming the action, and a ``CARD_STATUS_CHANGED`` from
  ACTIVE to BLOCKED with the reason ``PIN_TRIES_EXCEEDED``.
* ``BLOCK_PIN``: only the PIN is blocked (75 for PIN requests until a PIN unblock or a new
  PIN); requests without a PIN still pass. Only ``PIN_TRIES_EXCEEDED`` is notified.

The decision paths (on-ledger, off-ledger) build their card update and notifications here;
the cached card state is then reloaded from Postgres, outside the decision's in-flight mark
(:meth:`AuthorizationService.redis_step`), so that the next request sees the blocked card.
This happens only on the decision that used up the tries: other decisions pay nothing.
"""

from __future__ import annotations

from datetime import datetime

from authswitch.domain.authorization import (
    AuthorizationRequest,
    CardFacts,
    PinTriesExceededAction,
)
from authswitch.domain.catalog import ProgramRow
from authswitch.domain.records import CardUpdate, Notification
from authswitch.service.ids import new_id

__all__ = ["PIN_TRIES_EXCEEDED_REASON", "pin_effects"]

# The reason a card blocked by its PIN tries carries in CARD_STATUS_CHANGED.
PIN_TRIES_EXCEEDED_REASON = "PIN_TRIES_EXCEEDED"


def pin_effects(
    *,
    request: AuthorizationRequest,
    card: CardFacts,
    program: ProgramRow,
    action: PinTriesExceededAction,
    received: datetime,
    pin_tries: int,
    pin_tries_changed: bool,
    pin_changed: bool,
    pin_blocked_now: bool,
    new_pvv: bytes | None,
) -> tuple[tuple[CardUpdate, ...], tuple[Notification, ...]]:
    """The card update and notifications a decision's PIN outcome needs (both empty when
    the PIN state did not change)."""
    if not (pin_tries_changed or pin_changed or pin_blocked_now):
        return (), ()
    block_card = pin_blocked_now and action is PinTriesExceededAction.BLOCK_CARD
    update = CardUpdate(
        card.card_id,
        pin_tries=pin_tries,
        pvv=new_pvv if pin_changed else None,
        blocked=block_card,
    )
    if not pin_blocked_now:
        return (update,), ()

    def note(kind: str, payload: dict[str, object]) -> Notification:
        return Notification(
            id=new_id(),
            program_id=program.id,
            kind=kind,
            payload=payload,
            created_at=received,
            account_id=card.account_id,
            card_id=card.card_id,
            sinks=program.sinks,
        )

    notes: tuple[Notification, ...] = (
        note(
            "PIN_TRIES_EXCEEDED",
            {
                "source": request.source,
                "message_id": request.message_id,
                "pin_tries": pin_tries,
                "action": action.name,
                "card_status": "BLOCKED" if block_card else "ACTIVE",
            },
        ),
    )
    if block_card:
        notes += (
            note(
                "CARD_STATUS_CHANGED",
                {"from": "ACTIVE", "to": "BLOCKED", "reason": PIN_TRIES_EXCEEDED_REASON},
            ),
        )
    return (update,), notes
