"""Where cards are kept: issuing them, their PINs, status and expiry, the customers of a
program and the accounts a card spends from, and the card behind a PAN's HMAC or a
decision."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg

from authswitch.adapters.postgres.audit import audit
from authswitch.adapters.postgres.committer import write_notifications
from authswitch.adapters.postgres.errors import translated_methods
from authswitch.adapters.postgres.ids import uuid_or_not_found
from authswitch.domain.accounts import AccountRow
from authswitch.domain.authorization import CardFacts, CardStatus
from authswitch.domain.cards import CardDetails
from authswitch.domain.catalog import ProductRow
from authswitch.domain.records import Notification
from authswitch.errors import AlreadyExists, NotFound, PreconditionFailed

__all__ = ["CardStore"]


@translated_methods
class CardStore:
    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self.pool = pool

    async def card_by_pan_hmac(self, pan_hmac: bytes) -> CardFacts | None:
        # With the linked accounts that hold an asset the card's own account does not (what
        # a transaction in that asset spends from), oldest link first.
        row = await self.pool.fetchrow(
            """SELECT c.id::text, c.account_id::text, c.program_id::text, c.product_id::text,
                      c.expiry_yymm,
                      coalesce((
                          SELECT array_agg(b.asset || ' ' || b.account_id::text
                                           ORDER BY l.created_at, l.account_id, b.asset)
                          FROM card_accounts l JOIN balances b ON b.account_id = l.account_id
                          WHERE l.card_id = c.id AND NOT EXISTS (
                              SELECT 1 FROM balances o
                              WHERE o.account_id = c.account_id AND o.asset = b.asset)
                      ), '{}') AS linked,
                      EXISTS (SELECT 1 FROM spend_controls s
                              WHERE s.subject_id IN (c.id, c.account_id)) AS controlled,
                      c.last_four,
                      array(SELECT o.asset FROM balances o WHERE o.account_id = c.account_id
                            ORDER BY o.asset) AS own_assets
               FROM cards c WHERE c.pan_hmac = $1""",
            pan_hmac,
        )
        if row is None:
            return None
        linked = tuple((pair.split(" ")[0], pair.split(" ")[1]) for pair in row["linked"])
        return CardFacts(
            row[0], row[1], row[2], row[3], row[4], spend_accounts=linked,
            controlled=row["controlled"], last_four=row["last_four"],
            account_assets=tuple(row["own_assets"]),
        )  # fmt: skip

    async def card_of_decision(self, source: str, message_id: str) -> CardFacts | None:
        row = await self.pool.fetchrow(
            """SELECT c.id::text, c.account_id::text, c.program_id::text, c.product_id::text,
                      c.expiry_yymm,
                      EXISTS (SELECT 1 FROM spend_controls s
                              WHERE s.subject_id IN (c.id, c.account_id)) AS controlled,
                      c.last_four,
                      array(SELECT o.asset FROM balances o WHERE o.account_id = c.account_id
                            ORDER BY o.asset) AS own_assets
               FROM decisions d JOIN cards c ON c.id = d.card_id
               WHERE d.source = $1 AND d.message_id = $2""",
            source,
            message_id,
        )
        if row is None:
            return None
        return CardFacts(
            row[0], row[1], row[2], row[3], row[4],
            controlled=row["controlled"], last_four=row["last_four"],
            account_assets=tuple(row["own_assets"]),
        )  # fmt: skip

    async def details(self, card_id: str) -> CardDetails:
        row = await self.pool.fetchrow(
            """SELECT c.id::text AS card_id, c.bin, c.last_four, c.expiry_yymm, c.status,
                      c.account_id::text AS account_id, c.pin_tries,
                      coalesce(array_agg(l.account_id::text ORDER BY l.created_at)
                               FILTER (WHERE l.account_id IS NOT NULL), '{}') AS linked,
                      p.client_id::text AS client_id, c.program_id::text AS program_id,
                      c.product_id::text AS product_id
               FROM cards c JOIN programs p ON p.id = c.program_id
               LEFT JOIN card_accounts l ON l.card_id = c.id
               WHERE c.id = $1 GROUP BY c.id, p.client_id""",
            uuid_or_not_found(card_id, "card"),
        )
        if row is None:
            raise NotFound(f"card {card_id} does not exist")
        return CardDetails(**{**dict(row), "linked": tuple(row["linked"])})

    async def card_pan_hmac(self, card_id: str) -> bytes:
        value = await self.pool.fetchval(
            "SELECT pan_hmac FROM cards WHERE id = $1", uuid_or_not_found(card_id, "card")
        )
        if value is None:
            raise NotFound(f"card {card_id} does not exist")
        return bytes(value)

    async def card_program(self, card_id: str) -> str:
        value = await self.pool.fetchval(
            "SELECT program_id::text FROM cards WHERE id = $1", uuid_or_not_found(card_id, "card")
        )
        if value is None:
            raise NotFound(f"card {card_id} does not exist")
        return str(value)

    async def linked_accounts(self, card_id: str) -> list[str]:
        rows = await self.pool.fetch(
            "SELECT account_id::text FROM card_accounts WHERE card_id = $1", card_id
        )
        return [r[0] for r in rows]

    async def create_card(
        self,
        *,
        card_id: str,
        account: AccountRow,
        product: ProductRow,
        pan_hmac: bytes,
        bin_: str,
        last_four: str,
        expiry_yymm: str,
        status: CardStatus,
        pvv: bytes | None,
        actor: str,
    ) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            try:
                await conn.execute(
                    """INSERT INTO cards (id, program_id, product_id, account_id, pan_hmac, bin,
                           last_four, expiry_yymm, status, pvv, pin_tries_max)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)""",
                    card_id,
                    account.program_id,
                    product.id,
                    account.id,
                    pan_hmac,
                    bin_,
                    last_four,
                    expiry_yymm,
                    status.name,
                    pvv,
                    product.rules.pin_tries_max,
                )
            except asyncpg.UniqueViolationError:
                raise AlreadyExists("a card with this PAN already exists") from None
            await audit(
                conn, actor, "create_card", card_id,
                {"account_id": account.id, "bin": bin_, "last_four": last_four,
                 "status": status.name},
            )  # fmt: skip

    async def set_card_pin(self, card_id: str, pvv: bytes, actor: str) -> str:
        """Set the PVV and reset the tries; returns the card's account id."""
        async with self.pool.acquire() as conn, conn.transaction():
            account_id = await conn.fetchval(
                """UPDATE cards SET pvv = $2, pin_tries = 0, updated_at = now() WHERE id = $1
                   RETURNING account_id::text""",
                uuid_or_not_found(card_id, "card"),
                pvv,
            )
            if account_id is None:
                raise NotFound(f"card {card_id} does not exist")
            await audit(conn, actor, "set_card_pin", card_id, {})
        return str(account_id)

    async def change_card_status(
        self,
        card_id: str,
        status: CardStatus,
        reason: str,
        actor: str,
        notify: Callable[[str, str, CardStatus], Notification] | None = None,
    ) -> tuple[CardStatus, str]:
        """Returns the previous status and the card's account id. ``notify`` builds the
        CARD_STATUS_CHANGED notification (from program id, account id and the previous
        status), written in the same transaction."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """SELECT status, account_id::text, program_id::text FROM cards
                   WHERE id = $1 FOR UPDATE""",
                uuid_or_not_found(card_id, "card"),
            )
            if row is None:
                raise NotFound(f"card {card_id} does not exist")
            previous = CardStatus[row["status"]]
            if previous is CardStatus.CLOSED and status is not CardStatus.CLOSED:
                raise PreconditionFailed("a closed card cannot be reopened")
            # Unblocking resets the PIN tries (a card blocked for its PIN tries would
            # otherwise stay PIN-blocked once active again).
            await conn.execute(
                """UPDATE cards SET status = $2, updated_at = now(),
                       pin_tries = CASE WHEN $2 = 'ACTIVE' AND status = 'BLOCKED' THEN 0
                                        ELSE pin_tries END
                   WHERE id = $1""",
                card_id,
                status.name,
            )
            await audit(
                conn, actor, "change_card_status", card_id,
                {"from": previous.name, "to": status.name, "reason": reason},
            )  # fmt: skip
            if notify is not None and previous is not status:
                await write_notifications(
                    conn, [notify(row["program_id"], row["account_id"], previous)]
                )
        return previous, row["account_id"]

    async def programs_with_cards_to_expire(self, month: str) -> list[str]:
        rows = await self.pool.fetch(
            """SELECT DISTINCT program_id::text FROM cards
               WHERE status NOT IN ('EXPIRED', 'CLOSED') AND expiry_yymm < $1""",
            month,
        )
        return [r[0] for r in rows]

    async def expire_cards(
        self, month: str, notify: Callable[[str, str, str], Notification], limit: int
    ) -> list[str]:
        """Set to EXPIRED the cards whose expiry month (YYMM) is before ``month``, with a
        CARD_EXPIRED notification each; returns their accounts (to reload)."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """UPDATE cards SET status = 'EXPIRED', updated_at = now()
                   WHERE id IN (
                       SELECT id FROM cards
                       WHERE status NOT IN ('EXPIRED', 'CLOSED') AND expiry_yymm < $1
                       LIMIT $2 FOR UPDATE SKIP LOCKED)
                   RETURNING id::text, account_id::text, program_id::text""",
                month,
                limit,
            )
            if rows:
                await write_notifications(conn, [notify(r[2], r[1], r[0]) for r in rows])
                for r in rows:
                    await audit(conn, "system", "expire_card", r[0], {"month": month})
        return sorted({r[1] for r in rows})

    async def create_customer(
        self, customer_id: str, program_id: str, name: str, reference: str, actor: str
    ) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(
                "SELECT true FROM programs WHERE id = $1", uuid_or_not_found(program_id, "program")
            ):
                raise NotFound(f"program {program_id} does not exist")
            await conn.execute(
                "INSERT INTO customers (id, program_id, name, reference) VALUES ($1, $2, $3, $4)",
                customer_id,
                program_id,
                name,
                reference,
            )
            await audit(conn, actor, "create_customer", customer_id, {"program_id": program_id})

    async def customers_in_program(self, customer_ids: list[str], program_id: str) -> set[str]:
        rows = await self.pool.fetch(
            "SELECT id::text FROM customers WHERE id = ANY($1::uuid[]) AND program_id = $2",
            [uuid_or_not_found(c, "customer") for c in customer_ids],
            program_id,
        )
        return {r[0] for r in rows}

    async def link_card_account(self, card_id: str, account_id: str, actor: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            card_program = await conn.fetchval(
                "SELECT program_id::text FROM cards WHERE id = $1",
                uuid_or_not_found(card_id, "card"),
            )
            if card_program is None:
                raise NotFound(f"card {card_id} does not exist")
            account = await conn.fetchrow(
                "SELECT program_id::text, kind FROM accounts WHERE id = $1",
                uuid_or_not_found(account_id, "account"),
            )
            if account is None:
                raise NotFound(f"account {account_id} does not exist")
            if account["program_id"] != card_program or account["kind"] != "CUSTOMER":
                raise PreconditionFailed("a card links only to customer accounts of its program")
            await conn.execute(
                "INSERT INTO card_accounts (card_id, account_id) VALUES ($1, $2) "
                "ON CONFLICT DO NOTHING",
                card_id,
                account_id,
            )
            await audit(conn, actor, "link_card_account", card_id, {"account_id": account_id})
