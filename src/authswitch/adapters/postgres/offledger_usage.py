"""What off-ledger approvals counted against their limits, and the reversals that give it
back (issue 17 item 2; service/offledger_limits.py)."""

from __future__ import annotations

from typing import Any

import asyncpg

from authswitch.adapters.postgres.errors import translated

__all__ = ["return_usage", "settle_usage"]


@translated
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


@translated
async def settle_usage(
    pool: asyncpg.Pool[Any],
    *,
    card_id: str,
    network_reference: str,
    clearing: str,
    amount_minor: int,
    settled_minor: int,
    final: bool,
) -> tuple[str, tuple[str, ...], int] | None:
    """A clearing forwarded to an off-ledger client moves the amount-based counters its
    transaction's approvals counted to what settled (seed 004; counts stay), as an on-ledger
    matched clearing does: what it releases of the counted amount (all of it when ``final``,
    else up to ``amount_minor``, oldest approval first) is replaced by ``settled_minor``
    (the amount and the clearing fee). Once per clearing message (``clearing``). Returns
    (account id, counter keys, the change), or None when the clearing matches no approval
    that counted."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            """SELECT k.source, k.message_id, k.usage_keys,
                      k.usage_minor - k.usage_returned_minor AS remaining,
                      $3 = ANY(k.usage_returned_by) AS done, d.account_id::text AS account_id
               FROM client_calls k JOIN decisions d USING (source, message_id)
               WHERE k.network_reference = $1 AND k.usage_minor > 0 AND d.card_id = $2
               ORDER BY k.created_at, k.message_id
               FOR UPDATE OF k""",
            network_reference,
            card_id,
            clearing,
        )
        if not rows or any(r["done"] for r in rows) or not network_reference:
            return None
        to_release = None if final else amount_minor
        released = 0
        for row in rows:
            take = int(row["remaining"])
            if to_release is not None:
                take = min(take, to_release - released)
            await conn.execute(
                """UPDATE client_calls
                   SET usage_returned_minor = usage_returned_minor + $3,
                       usage_returned_by = array_append(usage_returned_by, $4)
                   WHERE source = $1 AND message_id = $2""",
                row["source"],
                row["message_id"],
                max(take, 0),
                clearing,
            )
            released += max(take, 0)
        keys = tuple(rows[0]["usage_keys"])
        change = settled_minor - released
        if change:
            await conn.execute(
                """UPDATE limit_usage SET amount_minor = amount_minor + $3
                   WHERE account_id = $1 AND key = ANY($2::text[])""",
                rows[0]["account_id"],
                list(keys),
                change,
            )
        return rows[0]["account_id"], keys, change
