"""The group committer's linger (AUTHSWITCH_GROUP_COMMIT_LINGER_US): a lone write is
committed at once; writes that queued while a batch committed (the process is busy) wait
for more and go in one statement with them. On a real Postgres, through the application's
pool; which writes shared a statement is read from Postgres (their rows' ``xmin``)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from authswitch.adapters.postgres.committer import LINGER_BACKLOG, GroupCommitter
from authswitch.app import Application
from tests.e2e.test_one_statement import _hold_write
from tests.support.ledger import Ledger

pytestmark = pytest.mark.timeout(60)


async def _transactions(pool: asyncpg.Pool[asyncpg.Record], message_ids: list[str]) -> list[str]:
    """The transaction that wrote each message's decision, in the order given."""
    rows = await pool.fetch(
        "SELECT message_id, xmin::text FROM decisions WHERE message_id = ANY($1)", message_ids
    )
    by_message = {r["message_id"]: r["xmin"] for r in rows}
    return [by_message[m] for m in message_ids]


async def _until_a_statement_waits_on_a_lock(pool: asyncpg.Pool[asyncpg.Record]) -> None:
    for _ in range(1_000):  # Postgres is polled: nothing here can be told when it waits
        if await pool.fetchval(
            """SELECT count(*) > 0 FROM pg_stat_activity
               WHERE datname = current_database() AND wait_event_type = 'Lock'"""
        ):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no statement waited on the lock")


async def test_a_lone_write_does_not_linger(app: Application, ledger: Ledger) -> None:
    assert app.pool is not None
    account = await ledger.account()
    await ledger.credit(account, 10_000)
    # Were a lone write to linger, it would wait a minute: past this test's timeout.
    committer = GroupCommitter(app.pool, batch_max=64, queue_max=64, linger_us=60_000_000)
    committer.start()
    try:
        for _ in range(3):  # one after another: never a backlog
            await committer.submit(_hold_write(account, 100))
    finally:
        await committer.stop()


async def test_a_backlog_lingers_for_more_and_commits_as_one(
    app: Application, ledger: Ledger
) -> None:
    assert app.pool is not None
    account = await ledger.account()
    await ledger.credit(account, 10_000)
    committer = GroupCommitter(app.pool, batch_max=64, queue_max=64, linger_us=300_000)
    committer.start()
    blocker = await app.pool.acquire()
    try:
        # The first batch waits on the account's balance row, locked here; meanwhile a
        # backlog queues behind it.
        lock = blocker.transaction()
        await lock.start()
        await blocker.execute("SELECT 1 FROM balances WHERE account_id = $1 FOR UPDATE", account)
        first = _hold_write(account, 100)
        first_done = asyncio.ensure_future(committer.submit(first))
        await _until_a_statement_waits_on_a_lock(app.pool)
        backlog = [_hold_write(account, 100) for _ in range(LINGER_BACKLOG)]
        backlog_done = [asyncio.ensure_future(committer.submit(w)) for w in backlog]
        await asyncio.sleep(0)
        await lock.rollback()
        await first_done
        # The first batch has committed, and the committer has found the backlog waiting:
        # it lingers, so a write arriving now joins that backlog's statement.
        late = _hold_write(account, 100)
        await committer.submit(late)
        await asyncio.gather(*backlog_done)
    finally:
        await app.pool.release(blocker)
        await committer.stop()
    first_tx, *backlog_tx, late_tx = await _transactions(
        app.pool, [w.decision.message_id for w in (first, *backlog, late)]
    )
    assert set(backlog_tx) == {late_tx}
    assert first_tx != late_tx
