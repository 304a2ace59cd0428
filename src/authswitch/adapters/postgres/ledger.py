"""Where accounts are kept: opening them, whose they are, their balances, their history
(hold events and postings) and live limit counters, and what the ledger cache is loaded
with on a miss (an account's balances, card states and counters, or one card's state)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from authswitch.adapters.postgres.audit import audit
from authswitch.adapters.postgres.errors import (
    UNREACHABLE,
    translated_methods,
    translates_inline,
    unavailable,
)
from authswitch.adapters.postgres.ids import uuid_or_not_found
from authswitch.adapters.postgres.pool import REPLICATION_BARRIER, Connection
from authswitch.domain.accounts import AccountDetails, AccountRow, HistoryRow
from authswitch.domain.authorization import CardState, CardStatus
from authswitch.domain.catalog import ProductRow
from authswitch.domain.ledger import Balance
from authswitch.errors import NotFound

__all__ = ["LedgerStore"]


@translated_methods
class LedgerStore:
    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self.pool = pool

    async def account(self, account_id: str) -> AccountRow:
        row = await self.pool.fetchrow(
            """SELECT id::text, program_id::text, product_id::text, kind, account_type
               FROM accounts WHERE id = $1""",
            uuid_or_not_found(account_id, "account"),
        )
        if row is None:
            raise NotFound(f"account {account_id} does not exist")
        return AccountRow(*row)

    async def account_details(self, account_id: str) -> AccountDetails:
        """An account with whose it is: its client, programme and product."""
        row = await self.pool.fetchrow(
            """SELECT a.id::text AS account_id, p.client_id::text AS client_id,
                      a.program_id::text AS program_id,
                      coalesce(a.product_id::text, '') AS product_id, a.kind, a.account_type,
                      a.name, a.reference, coalesce(a.profile_id::text, '') AS profile_id,
                      a.created_at
               FROM accounts a JOIN programs p ON p.id = a.program_id WHERE a.id = $1""",
            uuid_or_not_found(account_id, "account"),
        )
        if row is None:
            raise NotFound(f"account {account_id} does not exist")
        return AccountDetails(**dict(row))

    async def create_account(
        self,
        *,
        account_id: str,
        product: ProductRow,
        account_type: str,
        assets: list[str],
        name: str,
        reference: str,
        profile_id: str | None,
        customer_ids: list[str],
        actor: str,
    ) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """INSERT INTO accounts (id, program_id, product_id, kind, account_type, name,
                       reference, profile_id)
                   VALUES ($1, $2, $3, 'CUSTOMER', $4, $5, $6, $7)""",
                account_id,
                product.program_id,
                product.id,
                account_type,
                name,
                reference,
                profile_id,
            )
            await conn.executemany(
                "INSERT INTO balances (account_id, asset, is_base) VALUES ($1, $2, $3)",
                [(account_id, asset, index == 0) for index, asset in enumerate(assets)],
            )
            if customer_ids:
                await conn.executemany(
                    "INSERT INTO account_holders (account_id, customer_id) VALUES ($1, $2)",
                    [(account_id, customer_id) for customer_id in customer_ids],
                )
            await audit(
                conn, actor, "create_account", account_id,
                {"product_id": product.id, "account_type": account_type, "assets": assets},
            )  # fmt: skip

    async def balances(self, account_id: str) -> dict[str, Balance]:
        await self.account(account_id)
        rows = await self.pool.fetch(
            """SELECT asset, actual_minor, authorized_minor FROM balances
               WHERE account_id = $1 ORDER BY is_base DESC, asset""",
            account_id,
        )
        return {r[0]: Balance(r[1], r[2]) for r in rows}

    async def history(
        self, account_id: str, *, before: tuple[datetime, str] | None, limit: int
    ) -> list[HistoryRow]:
        """Balance changes of an account, newest first: hold events and postings.

        ``before`` is the (time, reference) of the last entry of the previous page.
        """
        await self.account(account_id)
        cursor_at, cursor_ref = before or (None, "")
        rows = await self.pool.fetch(
            """
            WITH events AS (
                SELECT h.created_at AS at, h.kind, h.asset, 0::bigint AS actual_delta,
                       h.original_minor AS authorized_delta, h.id::text AS reference,
                       h.message_id AS description, h.source, h.message_id
                FROM holds h WHERE h.account_id = $1
                UNION ALL
                SELECT v.at, v.kind, v.asset, 0, -v.amount_minor,
                       v.hold_id::text || ':' || v.id, '', '', ''
                FROM hold_events v WHERE v.account_id = $1
                UNION ALL
                SELECT p.created_at, e.kind, p.asset, p.amount_minor, 0, e.id::text,
                       e.description, e.source, e.message_id
                FROM postings p JOIN journal_entries e ON e.id = p.entry_id
                WHERE p.account_id = $1
            )
            SELECT at, kind, asset, actual_delta, authorized_delta, reference, description,
                   source, message_id
            FROM events
            WHERE $2::timestamptz IS NULL OR (at, reference) < ($2, $3)
            ORDER BY at DESC, reference DESC
            LIMIT $4""",
            account_id,
            cursor_at,
            cursor_ref,
            limit,
        )
        return [HistoryRow(**dict(r)) for r in rows]

    async def usage(self, account_id: str, now: datetime) -> list[tuple[str, int, int]]:
        await self.account(account_id)
        rows = await self.pool.fetch(
            """SELECT key, amount_minor, count FROM limit_usage
               WHERE account_id = $1 AND expires_at > $2 ORDER BY key""",
            account_id,
            now,
        )
        return [(r[0], r[1], r[2]) for r in rows]

    @translates_inline  # a cache miss of a decision
    async def account_state(
        self, account_id: str, now: datetime
    ) -> tuple[dict[str, Balance], dict[str, CardState], dict[str, tuple[int, int]]]:
        """Balances, card states and live counters of an account, from one snapshot, and
        only once a synchronous standby holds all of it (what the cache is loaded with must
        survive a failover)."""
        try:
            async with self.pool.acquire() as conn:
                async with conn.transaction(isolation="repeatable_read"):
                    balance_rows, card_rows, usage_rows = await _account_rows(conn, account_id, now)
                await conn.execute(REPLICATION_BARRIER)
        except UNREACHABLE as exc:
            raise unavailable(exc) from exc
        balances = {r[0]: Balance(r[1], r[2]) for r in balance_rows}
        cards = {r[0]: _card_state(r) for r in card_rows}
        usage = {r[0]: (r[1], r[2]) for r in usage_rows}
        return balances, cards, usage

    @translates_inline  # a cache miss of a decision
    async def card_state(self, card_id: str) -> tuple[str, CardState] | None:
        """(account id, state) of one card."""
        try:
            row = await self.pool.fetchrow(
                """SELECT id::text, status, pin_tries, pin_tries_max, pvv, account_id::text
                   FROM cards WHERE id = $1""",
                card_id,
            )
        except UNREACHABLE as exc:
            raise unavailable(exc) from exc
        return None if row is None else (row["account_id"], _card_state(row))


def _card_state(row: Any) -> CardState:
    return CardState(
        status=CardStatus[row["status"]],
        pin_tries=row["pin_tries"],
        pin_tries_max=row["pin_tries_max"],
        pvv=bytes(row["pvv"] or b""),
    )


async def _account_rows(
    conn: Connection, account_id: str, now: datetime
) -> tuple[list[Any], list[Any], list[Any]]:
    """The rows of an account's cached state: balances, cards, live counters."""
    balance_rows = await conn.fetch(
        "SELECT asset, actual_minor, authorized_minor FROM balances WHERE account_id = $1",
        account_id,
    )
    # The account's own cards, and those that spend from it as a linked account
    # (their status is checked on their own account first; see service/linked.py).
    card_rows = await conn.fetch(
        """SELECT id::text, status, pin_tries, pin_tries_max, pvv
           FROM cards WHERE account_id = $1
           UNION ALL
           SELECT c.id::text, c.status, c.pin_tries, c.pin_tries_max, c.pvv
           FROM card_accounts l JOIN cards c ON c.id = l.card_id
           WHERE l.account_id = $1 AND c.account_id <> $1""",
        account_id,
    )
    usage_rows = await conn.fetch(
        """SELECT key, amount_minor, count FROM limit_usage
           WHERE account_id = $1 AND expires_at > $2""",
        account_id,
        now,
    )
    return balance_rows, card_rows, usage_rows
