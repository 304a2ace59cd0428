"""The naive baseline: the obvious design on the same gRPC stack as ``authswitch serve``.

Each Authorize is one Postgres transaction on the account's balance row:

    UPDATE balances SET authorized = authorized + $amount
     WHERE account_id = $account AND actual - authorized >= $amount
    RETURNING actual, authorized;                    -- no row: insufficient funds (51)
    INSERT INTO decisions (source, message_id, ...) -- the hold / decision, idempotency key

and the answer goes back after COMMIT. On a hot account every request queues on that one
row lock, for the length of a transaction including its WAL flush: what DESIGN.md §5.7's
group commit avoids. Cards are mapped to accounts by a hash of the PAN, loaded at start
(the real server caches its catalogue too), so the transaction is the only I/O.

    python -m benchmarks.servers.naive --listen 127.0.0.1:50062 --postgres-dsn postgresql://...
"""

from __future__ import annotations

import argparse
import hashlib
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from authswitch.adapters.postgres.pool import create_pool
from authswitch.v1 import authorization_pb2 as pb
from authswitch.v1 import common_pb2
from benchmarks.servers.common import AuthorizeHandler, Closer, Context, run_server

SCHEMA = """
CREATE TABLE IF NOT EXISTS balances (
    account_id bigint PRIMARY KEY,
    asset text NOT NULL,
    actual bigint NOT NULL,
    authorized bigint NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS cards (
    pan_hash bytea PRIMARY KEY,
    account_id bigint NOT NULL REFERENCES balances
);
CREATE TABLE IF NOT EXISTS decisions (
    source text NOT NULL,
    message_id text NOT NULL,
    account_id bigint,
    amount_minor bigint NOT NULL,
    response_code text NOT NULL,
    decided_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, message_id)
);
"""

RESERVE_SQL = """
UPDATE balances SET authorized = authorized + $2
 WHERE account_id = $1 AND actual - authorized >= $2
RETURNING actual, authorized
"""

RECORD_SQL = """
INSERT INTO decisions (source, message_id, account_id, amount_minor, response_code)
VALUES ($1, $2, $3, $4, $5)
"""


def pan_hash(pan: str) -> bytes:
    return hashlib.blake2b(pan.encode(), digest_size=16).digest()


async def prepare(conn: asyncpg.Connection[Any], accounts: Sequence[tuple[str, int]]) -> None:
    """Create the schema and one funded account per (PAN, balance)."""
    await conn.execute(SCHEMA)
    await conn.executemany(
        "INSERT INTO balances (account_id, asset, actual) VALUES ($1, 'GBP', $2)",
        [(i + 1, balance) for i, (_, balance) in enumerate(accounts)],
    )
    await conn.executemany(
        "INSERT INTO cards (pan_hash, account_id) VALUES ($1, $2)",
        [(pan_hash(pan), i + 1) for i, (pan, _) in enumerate(accounts)],
    )


async def reset(conn: asyncpg.Connection[Any]) -> None:
    """Forget every decision and hold, so each phase starts from the same table sizes."""
    await conn.execute("TRUNCATE decisions")
    await conn.execute("UPDATE balances SET authorized = 0")


class NaiveHandler:
    def __init__(self, pool: asyncpg.Pool[Any], cards: dict[bytes, int]) -> None:
        self.pool = pool
        self.cards = cards

    async def authorize(
        self, request: pb.AuthorizeRequest, context: Context
    ) -> pb.AuthorizeResponse:
        account = self.cards.get(pan_hash(request.pan))
        amount = request.billing_amount.amount_minor
        asset = request.billing_amount.asset
        row = None
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                if account is not None:
                    row = await conn.fetchrow(RESERVE_SQL, account, amount)
                code = "14" if account is None else "00" if row is not None else "51"
                await conn.execute(
                    RECORD_SQL, request.source, request.message_id, account, amount, code
                )
        except asyncpg.UniqueViolationError:
            return pb.AuthorizeResponse(
                decision=pb.DECISION_DECLINED,
                response_code="94",
                reason=pb.REASON_DUPLICATE_MISMATCH,
                detail="replay",
            )
        if row is None:
            return pb.AuthorizeResponse(
                decision=pb.DECISION_DECLINED,
                response_code=code,
                reason=pb.REASON_UNKNOWN_CARD if account is None else pb.REASON_INSUFFICIENT_FUNDS,
                decision_id=str(uuid.uuid4()),
            )
        actual, authorized = row["actual"], row["authorized"]
        return pb.AuthorizeResponse(
            decision=pb.DECISION_APPROVED,
            response_code="00",
            reason=pb.REASON_APPROVED,
            authorization_code=f"{authorized % 1_000_000:06d}",
            approved_amount=common_pb2.Money(amount_minor=amount, asset=asset),
            fee=common_pb2.Money(amount_minor=0, asset=asset),
            balance=common_pb2.Balance(
                asset=asset,
                actual_minor=actual,
                available_minor=actual - authorized,
                authorized_minor=authorized,
            ),
            decision_id=str(uuid.uuid4()),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--postgres-dsn", required=True)
    parser.add_argument("--pool-max", type=int, default=10, help="as authswitch's default")
    args = parser.parse_args()

    async def factory() -> tuple[AuthorizeHandler, Closer]:
        pool = await create_pool(
            args.postgres_dsn, min_size=2, max_size=args.pool_max, statement_timeout_ms=5_000
        )
        rows = await pool.fetch("SELECT pan_hash, account_id FROM cards")
        cards = {bytes(r["pan_hash"]): int(r["account_id"]) for r in rows}
        return NaiveHandler(pool, cards).authorize, pool.close

    run_server(args.listen, factory)


if __name__ == "__main__":
    main()
