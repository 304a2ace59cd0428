"""The group committer's one-statement batches (adapters/postgres/onestatement.py): the
same outcome as the write-by-write transaction, or nothing written and that transaction run
instead — on a real Postgres, through the application's own pool."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from authswitch import metrics
from authswitch.adapters.postgres.committer import GroupCommitter
from authswitch.adapters.postgres.onestatement import BatchRefused, suits, write_at_once
from authswitch.app import Application
from authswitch.domain.ledger import BalanceChange
from authswitch.domain.records import (
    DecisionRecord,
    HoldRecord,
    LedgerWrite,
    WriteResult,
    WriteStatus,
)
from authswitch.service.ids import new_id
from tests.support.ledger import Ledger

pytestmark = pytest.mark.timeout(60)

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def _hold_write(account_id: str, amount: int, *, message_id: str = "") -> LedgerWrite:
    """An approval of ``amount`` as the authorisation path writes it."""
    message_id = message_id or secrets.token_hex(8)
    decision = DecisionRecord(
        id=new_id(), source="one", message_id=message_id, kind="AUTHORIZE",
        fingerprint=b"f" * 16, card_id=None, account_id=account_id, asset="GBP",
        amount_minor=amount, approved_minor=amount, fee_minor=0, response_code="00",
        reason=1, response=b"approved", created_at=NOW,
    )  # fmt: skip

    def refusal() -> DecisionRecord:
        return DecisionRecord(
            id=decision.id, source="one", message_id=message_id, kind="AUTHORIZE",
            fingerprint=b"f" * 16, card_id=None, account_id=account_id, asset="GBP",
            amount_minor=amount, approved_minor=0, fee_minor=0, response_code="51",
            reason=28, response=b"refused", created_at=NOW,
        )  # fmt: skip

    hold = HoldRecord(
        id=new_id(), account_id=account_id, asset="GBP", card_id=None, source="one",
        message_id=message_id, network_reference=message_id, amount_minor=amount, fee_minor=0,
        expires_at=NOW + timedelta(days=7), created_at=NOW,
    )  # fmt: skip
    change = BalanceChange(account_id, "GBP", authorized_delta_minor=amount, requires_funds=True)
    return LedgerWrite(decision=decision, holds=(hold,), balance_changes=(change,), refusal=refusal)


async def _figures(pool: asyncpg.Pool[asyncpg.Record], account_id: str) -> tuple[int, int, int]:
    row = await pool.fetchrow(
        """SELECT b.actual_minor, b.authorized_minor,
                  (SELECT count(*) FROM holds h WHERE h.account_id = b.account_id)
           FROM balances b WHERE b.account_id = $1 AND b.asset = 'GBP'""",
        account_id,
    )
    assert row is not None
    return (row[0], row[1], row[2])


async def _commit(
    app: Application, writes: list[LedgerWrite], *, one_statement: bool
) -> list[WriteResult]:
    assert app.pool is not None
    committer = GroupCommitter(app.pool, batch_max=64, queue_max=64, one_statement=one_statement)
    committer.start()
    try:
        return list(await asyncio.gather(*(committer.submit(w) for w in writes)))
    finally:
        await committer.stop()


async def test_a_batch_of_approvals_is_one_statement(app: Application, ledger: Ledger) -> None:
    assert app.pool is not None
    account = await ledger.account()
    await ledger.credit(account, 10_000)
    writes = [_hold_write(account, 3_000) for _ in range(3)]
    assert suits(writes)
    async with app.pool.acquire() as conn:
        done = await write_at_once(conn, writes)
    assert done.inserted == {0, 1, 2}
    assert not done.pre_reversed
    assert await _figures(app.pool, account) == (10_000, 9_000, 3)
    # A decision already durable is never written twice, nor are its effects.
    async with app.pool.acquire() as conn:
        again = await write_at_once(conn, [writes[1], _hold_write(account, 500)])
    assert again.inserted == {1}
    assert await _figures(app.pool, account) == (10_000, 9_500, 4)


async def test_refused_funds_write_nothing_and_replay_decides_as_the_transaction(
    app: Application, ledger: Ledger
) -> None:
    """The cache said yes to three approvals of 30.00, but Postgres holds only 50.00 (the
    cache was stale): the one statement refuses itself, writing nothing, and the replay
    admits the first and records the others' refusals — exactly what the write-by-write
    transaction decides on an identical account."""
    assert app.pool is not None
    outcomes = []
    for one_statement in (True, False):
        account = await ledger.account()
        await ledger.credit(account, 5_000)
        writes = [_hold_write(account, 3_000) for _ in range(3)]
        async with app.pool.acquire() as conn:
            with pytest.raises(BatchRefused):
                await write_at_once(conn, writes)
        assert await _figures(app.pool, account) == (5_000, 0, 0)  # nothing written
        replays = metrics.COMMIT_REPLAYS._value.get()
        results = await _commit(app, writes, one_statement=one_statement)
        assert metrics.COMMIT_REPLAYS._value.get() == replays + (1 if one_statement else 0)
        stored = await app.pool.fetch(
            "SELECT message_id, response_code FROM decisions WHERE account_id = $1",
            account,
        )
        code_of = {r["message_id"]: r["response_code"] for r in stored}
        outcomes.append(
            (
                [r.status for r in results],
                [code_of[w.decision.message_id] for w in writes],
                await _figures(app.pool, account),
            )
        )
    assert outcomes[0] == outcomes[1]
    statuses, codes, figures = outcomes[0]
    assert statuses == [WriteStatus.COMMITTED, WriteStatus.REFUSED, WriteStatus.REFUSED]
    assert codes == ["00", "51", "51"]
    assert figures == (5_000, 3_000, 1)


async def test_a_hold_over_an_earlier_reversal_is_written_reduced(
    app: Application, ledger: Ledger
) -> None:
    """A reversal that came before its authorisation left a tombstone: the hold is written
    already reduced by it, and the balance holds only the rest — as the transaction does."""
    assert app.pool is not None
    figures = []
    for one_statement in (True, False):
        account = await ledger.account()
        await ledger.credit(account, 10_000)
        message_id = secrets.token_hex(8)
        await app.pool.execute(
            """INSERT INTO hold_keys (source, message_id, reversed_minor, reversal_full,
                   tombstone_at) VALUES ('one', $1, 1000, false, now())""",
            message_id,
        )
        (result,) = await _commit(
            app, [_hold_write(account, 3_000, message_id=message_id)], one_statement=one_statement
        )
        assert result.status is WriteStatus.COMMITTED
        assert result.pre_reversed_minor == 1_000
        hold = await app.pool.fetchrow(
            "SELECT amount_minor, reversed_minor, status FROM holds WHERE message_id = $1",
            message_id,
        )
        assert hold is not None
        events = await app.pool.fetchval(
            """SELECT sum(e.amount_minor) FROM hold_events e JOIN holds h ON h.id = e.hold_id
               WHERE h.message_id = $1 AND e.kind = 'REVERSAL'""",
            message_id,
        )
        figures.append((tuple(hold), events, await _figures(app.pool, account)))
    assert figures[0] == figures[1]
    assert figures[0] == ((2_000, 1_000, "OPEN"), 1_000, (10_000, 2_000, 1))
