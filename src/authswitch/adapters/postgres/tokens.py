"""Where network tokens and token policies are kept (migration 0041)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import asyncpg

from authswitch.adapters.postgres.audit import audit
from authswitch.adapters.postgres.committer import write_notifications
from authswitch.adapters.postgres.errors import translated_methods
from authswitch.adapters.postgres.ids import uuid_or_not_found
from authswitch.domain.records import Notification
from authswitch.domain.tokens import (
    TokenMatch,
    TokenPolicy,
    TokenRow,
    TokenStatus,
    transition_allowed,
)
from authswitch.errors import NotFound, PreconditionFailed

__all__ = ["TokenStore"]

CARD_TOKENS_MAX = 100


_COLUMNS = """t.id::text, t.card_id::text, t.last_four, t.expiry_yymm, t.token_requestor_id,
              t.status, t.created_at"""


def _row(r: Any) -> TokenRow:
    return TokenRow(r[0], r[1], r[2], r[3], r[4], TokenStatus[r[5]], r[6])


@translated_methods
class TokenStore:
    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self.pool = pool

    async def resolve(self, token_hmac: bytes) -> TokenMatch | None:
        """The token of an authorisation, read fresh (its status is never cached)."""
        row = await self.pool.fetchrow(
            """SELECT t.id::text, c.pan_hmac, t.status, t.expiry_yymm
               FROM network_tokens t JOIN cards c ON c.id = t.card_id
               WHERE t.token_hmac = $1""",
            token_hmac,
        )
        if row is None:
            return None
        return TokenMatch(row[0], bytes(row[1]), TokenStatus[row[2]], row[3])

    async def by_hmac(self, token_hmac: bytes) -> TokenRow | None:
        row = await self.pool.fetchrow(
            f"SELECT {_COLUMNS} FROM network_tokens t WHERE t.token_hmac = $1",  # noqa: S608
            token_hmac,
        )
        return None if row is None else _row(row)

    async def declines_since(self, card_id: str, since: datetime) -> int:
        """The card's declined authorisations since ``since``."""
        value = await self.pool.fetchval(
            """SELECT count(*) FROM decisions
               WHERE card_id = $1 AND kind = 'AUTHORIZE' AND created_at >= $2
                 AND response_code NOT IN ('00', '10')""",
            uuid_or_not_found(card_id, "card"),
            since,
        )
        return int(value or 0)

    async def add(
        self, *, card_id: str, token_hmac: bytes, last_four: str, expiry_yymm: str,
        token_requestor_id: str, status: TokenStatus, at: datetime,
    ) -> TokenRow:  # fmt: skip
        """Store a new token; a token already stored (a repeated request) is returned as it
        is."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"""INSERT INTO network_tokens AS t (id, card_id, token_hmac, last_four,
                        expiry_yymm, token_requestor_id, status, created_at, updated_at)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
                    ON CONFLICT (token_hmac) DO NOTHING
                    RETURNING {_COLUMNS}""",  # noqa: S608 - fixed column list
                str(uuid.uuid4()), card_id, token_hmac, last_four, expiry_yymm,
                token_requestor_id, status.name, at,
            )  # fmt: skip
            if row is None:
                row = await conn.fetchrow(
                    f"SELECT {_COLUMNS} FROM network_tokens t WHERE t.token_hmac = $1",  # noqa: S608
                    token_hmac,
                )
                assert row is not None
            else:
                await audit(
                    conn, "network", "provision_token", row[0],
                    {"card_id": card_id, "status": status.name,
                     "token_requestor_id": token_requestor_id},
                )  # fmt: skip
        return _row(row)

    async def set_status(
        self, token_id: str, status: TokenStatus, reason: str, actor: str,
        notify: Callable[[str, str, str, TokenStatus], Notification],
    ) -> TokenStatus:  # fmt: skip
        """Change a token's status (audited, notified in the same transaction); returns the
        previous one. ``notify`` gets (program id, account id, card id, previous status)."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """SELECT t.status, t.card_id::text, c.account_id::text, c.program_id::text
                   FROM network_tokens t JOIN cards c ON c.id = t.card_id
                   WHERE t.id = $1 FOR UPDATE OF t""",
                uuid_or_not_found(token_id, "token"),
            )
            if row is None:
                raise NotFound(f"token {token_id} does not exist")
            previous = TokenStatus[row["status"]]
            if not transition_allowed(previous, status):
                raise PreconditionFailed(f"a {previous.name} token cannot become {status.name}")
            if previous is status:
                return previous
            await conn.execute(
                "UPDATE network_tokens SET status = $2, updated_at = now() WHERE id = $1",
                token_id, status.name,
            )  # fmt: skip
            await audit(
                conn, actor, "set_token_status", token_id,
                {"from": previous.name, "to": status.name, "reason": reason},
            )  # fmt: skip
            await write_notifications(
                conn, [notify(row["program_id"], row["account_id"], row["card_id"], previous)]
            )
        return previous

    async def card_of(self, token_id: str) -> str:
        card_id = await self.pool.fetchval(
            "SELECT card_id::text FROM network_tokens WHERE id = $1",
            uuid_or_not_found(token_id, "token"),
        )
        if card_id is None:
            raise NotFound(f"token {token_id} does not exist")
        return str(card_id)

    async def of_card(self, card_id: str) -> list[TokenRow]:
        rows = await self.pool.fetch(
            f"""SELECT {_COLUMNS} FROM network_tokens t WHERE t.card_id = $1
                ORDER BY t.created_at, t.id LIMIT {CARD_TOKENS_MAX}""",  # noqa: S608
            uuid_or_not_found(card_id, "card"),
        )
        return [_row(r) for r in rows]

    async def policy(self, product_id: str) -> TokenPolicy | None:
        row = await self.pool.fetchrow(
            """SELECT tokens_allowed, step_up_always, step_up_declines_min,
                      decline_declines_min, step_up_risk_score_min, decline_risk_score_min
               FROM token_policies WHERE product_id = $1""",
            uuid_or_not_found(product_id, "product"),
        )
        return None if row is None else TokenPolicy(*row)

    async def set_policy(self, product_id: str, policy: TokenPolicy, actor: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            found = await conn.fetchval(
                "SELECT true FROM products WHERE id = $1", uuid_or_not_found(product_id, "product")
            )
            if not found:
                raise NotFound(f"product {product_id} does not exist")
            await conn.execute(
                """INSERT INTO token_policies (product_id, tokens_allowed, step_up_always,
                       step_up_declines_min, decline_declines_min, step_up_risk_score_min,
                       decline_risk_score_min, updated_at)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, now())
                   ON CONFLICT (product_id) DO UPDATE SET
                       tokens_allowed = EXCLUDED.tokens_allowed,
                       step_up_always = EXCLUDED.step_up_always,
                       step_up_declines_min = EXCLUDED.step_up_declines_min,
                       decline_declines_min = EXCLUDED.decline_declines_min,
                       step_up_risk_score_min = EXCLUDED.step_up_risk_score_min,
                       decline_risk_score_min = EXCLUDED.decline_risk_score_min,
                       updated_at = now()""",
                product_id, policy.tokens_allowed, policy.step_up_always,
                policy.step_up_declines_min, policy.decline_declines_min,
                policy.step_up_risk_score_min, policy.decline_risk_score_min,
            )  # fmt: skip
            await audit(
                conn, actor, "set_token_policy", product_id,
                {"tokens_allowed": policy.tokens_allowed},
            )  # fmt: skip
