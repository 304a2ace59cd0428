"""Reads of disputes and of the clearings they dispute. Dispute changes are written by the
group committer, with the journal entry and notification of each step."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from authswitch.adapters.postgres.errors import translated_methods
from authswitch.domain.disputes import ClearingRow, DisputeEventRow, DisputeRow
from authswitch.errors import NotFound

__all__ = ["DisputeStore"]


_DISPUTE = """SELECT id::text, program_id::text, account_id::text, card_id::text,
                     clearing_source, clearing_message_id, network_reference, asset,
                     amount_minor, reason_code, status, provisional_minor, on_ledger,
                     created_at, updated_at
              FROM disputes"""


def parse_id(value: str) -> str | None:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


@translated_methods
class DisputeStore:
    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self.pool = pool

    async def clearing(self, source: str, message_id: str) -> ClearingRow | None:
        """The posted clearing under a message key, or None (unknown, not a clearing, or
        not approved)."""
        row = await self.pool.fetchrow(
            """SELECT d.source, d.message_id, d.account_id::text, d.card_id::text,
                      a.program_id::text, d.asset, d.amount_minor,
                      coalesce((SELECT e.network_reference FROM journal_entries e
                                WHERE e.source = d.source AND e.message_id = d.message_id
                                  AND e.kind = 'CLEARING' LIMIT 1), '')
               FROM decisions d JOIN accounts a ON a.id = d.account_id
               WHERE d.source = $1 AND d.message_id = $2 AND d.kind = 'CLEARING'
                 AND d.response_code = '00' AND d.asset IS NOT NULL""",
            source,
            message_id,
        )
        return None if row is None else ClearingRow(*row)

    async def disputed_minor(self, source: str, message_id: str) -> int:
        """What the disputes of a clearing claim in total (a dispute the merchant won claims
        nothing any more: the cardholder may dispute again, for another reason)."""
        total = await self.pool.fetchval(
            """SELECT coalesce(sum(amount_minor), 0) FROM disputes
               WHERE clearing_source = $1 AND clearing_message_id = $2
                 AND status <> 'MERCHANT_WON'""",
            source,
            message_id,
        )
        return int(total)

    async def find(self, dispute_id: str) -> DisputeRow | None:
        parsed = parse_id(dispute_id)
        if parsed is None:
            return None
        row = await self.pool.fetchrow(_DISPUTE + " WHERE id = $1", parsed)
        # by name: DisputeRow's order is its clearing's fields first (DisputedClearing)
        return None if row is None else DisputeRow(**dict(row))

    async def get(self, dispute_id: str) -> DisputeRow:
        found = await self.find(dispute_id)
        if found is None:
            raise NotFound(f"dispute {dispute_id} does not exist")
        return found

    async def events(self, dispute_id: str) -> list[DisputeEventRow]:
        rows = await self.pool.fetch(
            """SELECT step, from_status, to_status, amount_minor, entry_id::text, source,
                      message_id, created_at
               FROM dispute_events WHERE dispute_id = $1 ORDER BY id""",
            dispute_id,
        )
        return [DisputeEventRow(*r) for r in rows]
