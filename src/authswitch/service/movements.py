"""Movements in near real time (seed 000: "as and when there are movements on the values
those are sent to client platform in near real time to keep the client side fund movements
in sync"; issue 17 item 3).

An on-ledger programme subscribed with ``SetMovementSubscription`` gets a ``MOVEMENT``
notification for every event that moves (or, for a declined authorisation, could have moved)
a customer balance: load, adjustment, authorisation approved or declined, advice, reversal,
clearing, refund, fee, dispute step, age-off, manual release, transfer. Each says what moved
(``actual_delta_minor``, ``authorized_delta_minor``, ``available_delta_minor``), the balance
after it (``balance_after``: actual, available, authorised, as the ledger applied it), and the
message it belongs to. It is written in the same commit as the movement itself and goes out
through the durable outbox (the programme's sinks): at least once, under a stable
notification id, in order per account (``sequence``).

A programme that is not subscribed pays one attribute test per decision: no statement, no
Redis step, no row.
"""

from __future__ import annotations

from collections.abc import Mapping

from authswitch.domain.catalog import ProgramRow
from authswitch.domain.ledger import Balance, BalanceChange
from authswitch.domain.records import LedgerWrite
from authswitch.domain.writes.movements import MOVEMENT, movement, subscribed
from authswitch.service.ids import new_id

__all__ = ["MOVEMENT", "subscribed", "with_movement"]

# The movement a balance-changing decision kind is (admin adjustments by their purpose).
_KINDS = {
    "ADVICE": "ADVICE", "REVERSAL": "REVERSAL", "CLEARING": "CLEARING", "REFUND": "REFUND",
    "AGE_OFF": "AGE_OFF", "RELEASE": "RELEASE", "DISPUTE": "DISPUTE", "TRANSFER": "TRANSFER",
}  # fmt: skip


def with_movement(
    write: LedgerWrite,
    program: ProgramRow | None,
    change: BalanceChange,
    balance_after: Balance | None,
    kind: str = "",
    extra: Mapping[str, object] | None = None,
) -> LedgerWrite:
    """``write`` with the MOVEMENT notifications of its balance changes, when ``program``
    is subscribed: the change applied in the cache (``change``, with the balance after it)
    and any other customer balance it changes (a transfer's destination, whose balance after
    is known only once it is reloaded from Postgres: its movement has none)."""
    if not subscribed(program):
        return write
    assert program is not None
    decision = write.decision
    kind = kind or _KINDS.get(decision.kind, decision.kind)
    # The details of the message: what the write already notifies of it, if anything.
    details: dict[str, object] = {}
    for note in write.notifications:
        if note.account_id == change.account_id and note.kind != MOVEMENT:
            details = {k: v for k, v in note.payload.items() if k not in _RESERVED}
            break
    details.update(extra or {})
    details.setdefault("decision_id", decision.id)
    notes = [
        movement(
            program, notification_id=new_id(), kind=kind, account_id=change.account_id,
            card_id=decision.card_id,
            asset=change.asset, actual_delta_minor=change.actual_delta_minor,
            authorized_delta_minor=change.authorized_delta_minor, balance_after=balance_after,
            created_at=decision.created_at, source=decision.source,
            message_id=decision.message_id, details=details,
        )
    ]  # fmt: skip
    for other in write.balance_changes:
        if other.account_id != change.account_id:
            notes.append(
                movement(
                    program, notification_id=new_id(), kind=kind,
                    account_id=other.account_id, card_id=None,
                    asset=other.asset, actual_delta_minor=other.actual_delta_minor,
                    authorized_delta_minor=other.authorized_delta_minor, balance_after=None,
                    created_at=decision.created_at, source=decision.source,
                    message_id=decision.message_id, details={"decision_id": decision.id},
                )
            )  # fmt: skip
    write.notifications = (*write.notifications, *notes)
    return write


# Fields of a movement's own that a message's details must not overwrite.
_RESERVED = frozenset({
    "movement", "source", "message_id", "asset", "actual_delta_minor",
    "authorized_delta_minor", "available_delta_minor", "balance_after",
})  # fmt: skip
