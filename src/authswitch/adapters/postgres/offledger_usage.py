"""What off-ledger approvals counted against their limits, and the reversals that give it
back (issue 17 item 2; service/offledger_limits.py)."""

from __future__ import annotations

from typing import Any

import asyncpg

__all__ = ["return_usage"]


async def return_usage(
    pool: asyncpg.Pool[Any],
    *,
    source: str,
    original_message_id: str,
    reversal: str,
    requested_minor: int | None,
) -> tuple[str, tuple[str, ...], int] | None:
    """A reversal forwarded to an off-ledger client gives back to the amount-based counters
    what its authorisation counted (``requested_minor``, or all of it for a full reversal),
    at most what is left, once per reversal message (``reversal``: its source and message
    id). Returns (account id, counter keys, amount given back), or None when nothing is."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            """SELECT k.usage_keys, k.usage_minor - k.usage_returned_minor AS remaining,
                      $3 = ANY(k.usage_returned_by) AS done, d.account_id::text AS account_id
               FROM client_calls k JOIN decisions d USING (source, message_id)
               WHERE k.source = $1 AND k.message_id = $2
               FOR UPDATE OF k""",
            source,
            original_message_id,
            reversal,
        )
        if row is None or row["done"] or not row["usage_keys"] or row["account_id"] is None:
            return None
        remaining = int(row["remaining"])
        amount = remaining if requested_minor is None else min(requested_minor, remaining)
        if amount <= 0:
            return None
        await conn.execute(
            """UPDATE client_calls
               SET usage_returned_minor = usage_returned_minor + $3,
                   usage_returned_by = array_append(usage_returned_by, $4)
               WHERE source = $1 AND message_id = $2""",
            source,
            original_message_id,
            amount,
            reversal,
        )
        keys = tuple(row["usage_keys"])
        await conn.execute(
            """UPDATE limit_usage SET amount_minor = amount_minor - $3
               WHERE account_id = $1 AND key = ANY($2::text[])""",
            row["account_id"],
            list(keys),
            amount,
        )
        return row["account_id"], keys, amount
