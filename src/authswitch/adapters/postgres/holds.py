"""Where holds and decisions are kept, as read back: a decision by its message key, a hold
by its id or message key (or the tombstone of a reversal that came first), the open holds of
a card's transaction, the holds that expired, and an account's holds page by page. They are
written by the group committer (committer.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from authswitch.adapters.postgres.committer import stored_decision_of
from authswitch.adapters.postgres.errors import (
    UNREACHABLE,
    translated_methods,
    translates_inline,
    unavailable,
)
from authswitch.adapters.postgres.ids import uuid_or_not_found
from authswitch.domain.lifecycle import HoldRow
from authswitch.domain.records import StoredDecision
from authswitch.errors import NotFound

__all__ = ["HoldStore"]


# A constant, formatted into the holds queries below (never a value: values are parameters).
# Tombstones live in hold_keys, not in holds (migration 0007): no row of holds is one.
_HOLD_COLUMNS = """id::text, account_id::text, asset, card_id::text, source, message_id,
    network_reference, amount_minor, original_minor, status, false AS tombstone, created_at,
    expires_at, ended_at, usage_keys"""


def _holds_where(condition: str) -> str:
    """A holds query; ``condition`` is always a literal of this module, never a value."""
    return f"SELECT {_HOLD_COLUMNS} FROM holds WHERE {condition}"  # noqa: S608


@translated_methods
class HoldStore:
    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self.pool = pool

    async def find_decision(self, source: str, message_id: str) -> StoredDecision | None:
        row = await self.pool.fetchrow(
            """SELECT id::text, source, message_id, fingerprint, reason, response_code, response,
                      account_id::text
               FROM decisions WHERE source = $1 AND message_id = $2""",
            source,
            message_id,
        )
        return None if row is None else stored_decision_of(row)

    async def decision_exists(self, source: str, message_id: str) -> bool:
        found = await self.pool.fetchval(
            "SELECT true FROM decisions WHERE source = $1 AND message_id = $2",
            source,
            message_id,
        )
        return bool(found)

    @translates_inline  # each incremental authorisation
    async def hold_by_message(self, source: str, message_id: str) -> HoldRow | None:
        """The hold under a message key; a tombstone (``tombstone=True``, nothing held) when
        only reversals of that message have come; None when neither is known (or the hold's
        month was dropped by retention)."""
        try:
            row = await self.pool.fetchrow(
                """SELECT k.hold_id IS NULL AS is_tombstone, k.tombstone_at, h.id::text,
                          h.account_id::text, h.asset, h.card_id::text, h.source, h.message_id,
                          h.network_reference, h.amount_minor, h.original_minor, h.status,
                          false AS tombstone, h.created_at, h.expires_at, h.ended_at,
                          h.usage_keys
                   FROM hold_keys k
                   LEFT JOIN holds h ON h.id = k.hold_id AND h.created_at = k.created_at
                   WHERE k.source = $1 AND k.message_id = $2""",
                source,
                message_id,
            )
        except UNREACHABLE as exc:
            raise unavailable(exc) from exc
        if row is None:
            return None
        if row["is_tombstone"]:
            at = row["tombstone_at"]
            return HoldRow(
                id="", account_id=None, asset=None, card_id=None, source=source,
                message_id=message_id, network_reference="", amount_minor=0, original_minor=0,
                status="REVERSED", tombstone=True, created_at=at, expires_at=at, ended_at=at,
            )  # fmt: skip
        if row["id"] is None:
            return None
        values = dict(row)
        del values["is_tombstone"], values["tombstone_at"]
        return _hold_row(values)

    async def hold(self, hold_id: str) -> HoldRow:
        row = await self.pool.fetchrow(
            _holds_where("id = $1"),
            uuid_or_not_found(hold_id, "hold"),
        )
        if row is None:
            raise NotFound(f"hold {hold_id} does not exist")
        return _hold_row(row)

    async def open_holds(self, card_id: str, network_reference: str, asset: str) -> list[HoldRow]:
        """The open holds of one transaction of a card."""
        rows = await self.pool.fetch(
            _holds_where(
                """card_id = $1 AND network_reference = $2 AND status = 'OPEN' AND asset = $3
                   ORDER BY created_at, id"""
            ),
            card_id,
            network_reference,
            asset,
        )
        return [_hold_row(r) for r in rows]

    async def expired_holds(self, now: datetime, limit: int) -> list[HoldRow]:
        rows = await self.pool.fetch(
            _holds_where("status = 'OPEN' AND expires_at <= $1 ORDER BY expires_at LIMIT $2"),
            now,
            limit,
        )
        return [_hold_row(r) for r in rows]

    async def holds_of_account(
        self,
        account_id: str,
        *,
        open_only: bool,
        limit: int,
        before: tuple[datetime, str] | None = None,
    ) -> list[HoldRow]:
        """Newest first; ``before`` is the (created_at, id) of the last hold of the previous
        page."""
        if not await self.pool.fetchval(
            "SELECT true FROM accounts WHERE id = $1", uuid_or_not_found(account_id, "account")
        ):
            raise NotFound(f"account {account_id} does not exist")
        cursor_at, cursor_id = before or (None, None)
        rows = await self.pool.fetch(
            _holds_where(
                """account_id = $1 AND ($2 = false OR status = 'OPEN')
                   AND ($4::timestamptz IS NULL OR (created_at, id) < ($4, $5::uuid))
                   ORDER BY created_at DESC, id DESC LIMIT $3"""
            ),
            account_id,
            open_only,
            limit,
            cursor_at,
            cursor_id,
        )
        return [_hold_row(r) for r in rows]


def _hold_row(row: Any) -> HoldRow:
    values = dict(row)
    values["usage_keys"] = tuple(values["usage_keys"])
    return HoldRow(**values)
