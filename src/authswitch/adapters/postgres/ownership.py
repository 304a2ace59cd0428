"""Who holds which account (joint holders and their shares), and each beneficial owner's
balance as the pooled FBO balance file and its reconciliation read it (seed 002).

The split of a balance between holders is ``domain/holders.py: split_by_shares`` done in
SQL, so that a report over a million accounts streams from Postgres instead of holding every
customer in memory; a test checks the two agree.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg

from authswitch.adapters.postgres.audit import audit
from authswitch.adapters.postgres.errors import translated_methods
from authswitch.adapters.postgres.ids import uuid_or_not_found
from authswitch.adapters.postgres.pool import Connection
from authswitch.domain.holders import HOLDERS_MAX, Holder, ShareError, valid_shares
from authswitch.errors import NotFound, PreconditionFailed, RequestError

__all__ = ["OWNER_BALANCES", "HolderStore", "OwnerBalance", "owner_balances"]

# Each beneficial owner's balance per asset in one program ($1): an account's actual balance
# is split between its holders (by their shares, or equally), an account without holders is
# its own owner (its id), and every owner's parts are summed across the accounts they hold.
# The largest remainder goes first, ties to the lowest customer id, in code point order.
OWNER_BALANCES = """
WITH owners AS (
    SELECT acc.id AS account_id, coalesce(h.customer_id::text, acc.id::text) AS owner,
           coalesce(h.share_bps, 1)::numeric AS weight
    FROM accounts acc
    LEFT JOIN account_holders h ON h.account_id = acc.id
    WHERE acc.program_id = $1 AND acc.kind = 'CUSTOMER'
), weighed AS (
    SELECT o.owner, b.account_id, b.asset, b.actual_minor::numeric AS amount, o.weight,
           sum(o.weight) OVER (PARTITION BY b.account_id, b.asset) AS total
    FROM owners o JOIN balances b ON b.account_id = o.account_id
), based AS (
    SELECT owner, account_id, asset, amount, floor(amount * weight / total) AS base,
           amount * weight - floor(amount * weight / total) * total AS remainder
    FROM weighed
), ranked AS (
    SELECT owner, asset, base,
           amount - sum(base) OVER (PARTITION BY account_id, asset) AS leftover,
           row_number() OVER (PARTITION BY account_id, asset
                              ORDER BY remainder DESC, owner COLLATE "C") AS place
    FROM based
)
SELECT owner, r.asset, a.exponent,
       sum(base + CASE WHEN place <= leftover THEN 1 ELSE 0 END)::bigint AS balance
FROM ranked r JOIN assets a ON a.code = r.asset
GROUP BY owner, r.asset, a.exponent
ORDER BY owner COLLATE "C", r.asset
"""


@dataclass(frozen=True, slots=True)
class OwnerBalance:
    """One beneficial owner's balance of one asset in one program (``OWNER_BALANCES``)."""

    owner: str  # a customer id, or the id of an account without holders
    asset: str
    exponent: int
    balance_minor: int


async def owner_balances(
    conn: Connection, program_id: str, *, prefetch: int | None = None
) -> AsyncIterator[OwnerBalance]:
    """``OWNER_BALANCES`` of a program, streamed from a server-side cursor: ``conn`` is in a
    transaction (the report's or the reconciliation's snapshot)."""
    async for row in conn.cursor(OWNER_BALANCES, program_id, prefetch=prefetch):
        yield OwnerBalance(row[0], row[1], row[2], int(row[3]))


_ACCOUNT = "SELECT program_id::text, kind FROM accounts WHERE id = $1"
_ACCOUNT_FOR_UPDATE = _ACCOUNT + " FOR UPDATE"


@translated_methods
class HolderStore:
    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self.pool = pool

    async def holders(self, account_id: str) -> list[Holder]:
        async with self.pool.acquire() as conn:
            await self._account(conn, account_id, lock=False)
            return await self._holders(conn, account_id)

    async def common_holders(self, first_account_id: str, second_account_id: str) -> set[str]:
        rows = await self.pool.fetch(
            """SELECT a.customer_id::text FROM account_holders a
               JOIN account_holders b ON b.customer_id = a.customer_id
               WHERE a.account_id = $1 AND b.account_id = $2""",
            uuid_or_not_found(first_account_id, "account"),
            uuid_or_not_found(second_account_id, "account"),
        )
        return {r[0] for r in rows}

    async def change(
        self,
        account_id: str,
        *,
        add: str | None = None,
        remove: str | None = None,
        shares_bps: Mapping[str, int] | None = None,
        actor: str,
    ) -> list[Holder]:
        """Add or remove one holder and set every holder's share (None: keep them when the
        holders did not change; an empty mapping: equal shares), in one transaction under
        the account's row lock. Returns the holders after."""
        async with self.pool.acquire() as conn, conn.transaction():
            program_id = await self._account(conn, account_id, lock=True)
            before = await self._holders(conn, account_id)
            holders = await self._holders_after(conn, program_id, before, add, remove)
            changed = set(holders) != {h.customer_id for h in before}
            if shares_bps is None:
                # Set shares no longer describe other holders: back to equal shares.
                current = {h.customer_id: h.share_bps for h in before if h.share_bps}
                shares_bps = current if not changed else {}
            try:
                shares = valid_shares(holders, shares_bps)
            except ShareError as exc:
                raise RequestError(str(exc)) from None
            await self._write_holders(conn, account_id, holders, shares, add, remove)
            after = await self._holders(conn, account_id)
            if after != before:
                await audit(
                    conn, actor, "account_holders", account_id,
                    {"added": add, "removed": remove,
                     "holders": {h.customer_id: h.share_bps for h in after}},
                )  # fmt: skip
            return after

    @staticmethod
    async def _holders_after(
        conn: Any, program_id: str, before: list[Holder], add: str | None, remove: str | None
    ) -> list[str]:
        """The account's holders once ``add`` joins them and ``remove`` leaves, in order;
        raises when the change is not allowed."""
        holders = [h.customer_id for h in before]
        if add is not None:
            customer = await conn.fetchval(
                "SELECT program_id::text FROM customers WHERE id = $1",
                uuid_or_not_found(add, "customer"),
            )
            if customer is None:
                raise NotFound(f"customer {add} does not exist")
            if customer != program_id:
                raise PreconditionFailed("the customer is not in the account's program")
            if add not in holders:
                if len(holders) >= HOLDERS_MAX:
                    raise PreconditionFailed(f"an account has at most {HOLDERS_MAX} holders")
                holders.append(add)
        if remove is not None and remove in holders:
            if len(holders) == 1:
                raise PreconditionFailed(
                    "an account keeps at least one holder: add the new holder first"
                )
            holders.remove(remove)
        return holders

    @staticmethod
    async def _write_holders(
        conn: Any, account_id: str, holders: list[str], shares: Mapping[str, int] | None,
        add: str | None, remove: str | None,
    ) -> None:  # fmt: skip
        """Write the holders as planned: the one removed, the one added, every share."""
        if remove is not None and remove not in holders:
            await conn.execute(
                "DELETE FROM account_holders WHERE account_id = $1 AND customer_id = $2",
                account_id,
                remove,
            )
        if add is not None:
            await conn.execute(
                """INSERT INTO account_holders (account_id, customer_id) VALUES ($1, $2)
                   ON CONFLICT DO NOTHING""",
                account_id,
                add,
            )
        await conn.execute(
            """UPDATE account_holders h SET share_bps = s.share
               FROM (SELECT unnest($2::uuid[]) AS customer_id,
                            unnest($3::int[]) AS share) s
               WHERE h.account_id = $1 AND h.customer_id = s.customer_id""",
            account_id,
            holders,
            [(shares or {}).get(c) for c in holders],
        )

    @staticmethod
    async def _account(conn: Any, account_id: str, *, lock: bool) -> str:
        query = _ACCOUNT_FOR_UPDATE if lock else _ACCOUNT
        row = await conn.fetchrow(query, uuid_or_not_found(account_id, "account"))
        if row is None:
            raise NotFound(f"account {account_id} does not exist")
        if row["kind"] != "CUSTOMER":
            raise PreconditionFailed("only customer accounts have holders")
        return str(row["program_id"])

    @staticmethod
    async def _holders(conn: Any, account_id: str) -> list[Holder]:
        rows = await conn.fetch(
            """SELECT customer_id::text, share_bps FROM account_holders WHERE account_id = $1
               ORDER BY added_at, customer_id""",
            account_id,
        )
        return [Holder(r[0], r[1]) for r in rows]
