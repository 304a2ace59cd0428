"""Time partitioning (migration 0007): rows land in their month's partition, the maintenance
job makes months ahead (and moves rows that landed in a default partition), retention drops
an old month only when nothing in it is still needed, and an existing database migrates.

The tests that move a clock use years no other test writes in (2019, 2029), so that what
they make and drop is theirs alone."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from authswitch.adapters.postgres.migrations import discover, migrate
from authswitch.adapters.postgres.partitions import PARTITIONED_TABLES, month_of
from authswitch.adapters.postgres.reconcile import ReconciliationStore
from authswitch.app import Application
from authswitch.service.clock import ManualClock
from authswitch.service.reconcile import Reconciler
from authswitch.v1 import common_pb2 as c
from authswitch.v1 import ledger_admin_pb2 as la
from tests.support import stores as store_support
from tests.support.clocked import clocked_app
from tests.support.ledger import Ledger
from tests.support.stores import Stores

pytestmark = pytest.mark.timeout(180)


async def _partition_of(
    pool: asyncpg.Pool[asyncpg.Record], table: str, where: str, *args: object
) -> set[str]:
    rows = await pool.fetch(
        f"SELECT DISTINCT tableoid::regclass::text FROM {table} WHERE {where}",
        *args,
    )
    return {r[0] for r in rows}


async def _tables(pool: asyncpg.Pool[asyncpg.Record], pattern: str) -> set[str]:
    rows = await pool.fetch(
        "SELECT relname FROM pg_class WHERE relname LIKE $1 AND relkind = 'r'", pattern
    )
    return {r[0] for r in rows}


async def _status_change(ledger: Ledger, card_id: str) -> None:
    for status in (c.CARD_STATUS_BLOCKED, c.CARD_STATUS_ACTIVE):
        await ledger.admin.ChangeCardStatus(
            la.ChangeCardStatusRequest(card_id=card_id, status=status, reason="test")
        )


async def test_rows_land_in_their_months_partition(ledger: Ledger, app: Application) -> None:
    assert app.pool is not None
    month = f"{month_of(datetime.now(UTC)):%Y%m}"
    card = await ledger.card(10_000)
    approved = await ledger.authorize(card, 1_000)
    assert approved.response_code == "00"
    program = await app.pool.fetchval(
        "SELECT program_id FROM accounts WHERE id = $1", card.account_id
    )
    await ledger.admin.SetNotificationSink(
        la.SetNotificationSinkRequest(
            program_id=str(program), sink=la.NOTIFICATION_SINK_WEBHOOK,
            url="https://127.0.0.1:9/unreachable", secret_name="nothing",
        )
    )  # fmt: skip
    await _status_change(ledger, card.card_id)
    account = card.account_id
    assert await _partition_of(app.pool, "holds", "account_id = $1", account) == {f"holds_p{month}"}
    assert await _partition_of(app.pool, "postings", "account_id = $1", account) == {
        f"postings_p{month}"
    }
    assert await _partition_of(
        app.pool, "journal_entries", "id IN (SELECT entry_id FROM postings WHERE account_id = $1)",
        account,
    ) == {f"journal_entries_p{month}"}  # fmt: skip
    assert await _partition_of(app.pool, "notifications", "account_id = $1", account) == {
        f"notifications_p{month}"
    }
    assert await _partition_of(
        app.pool, "notification_deliveries",
        "notification_id IN (SELECT id FROM notifications WHERE account_id = $1)", account,
    ) == {f"notification_deliveries_p{month}"}  # fmt: skip
    # The hold's key is in hold_keys, pointing at it; the hold is found by its key and id.
    key = await app.pool.fetchrow(
        "SELECT hold_id::text, created_at FROM hold_keys WHERE message_id = $1",
        await app.pool.fetchval("SELECT message_id FROM holds WHERE account_id = $1", account),
    )
    assert key is not None
    hold = await app.holds.hold(key["hold_id"])
    assert (hold.status, hold.created_at) == ("OPEN", key["created_at"])
    assert (await app.holds.hold_by_message(hold.source, hold.message_id)) == hold
    # Leave nothing for other tests' outbox workers to retry.
    await app.pool.execute(
        "UPDATE notification_deliveries SET status = 'DELIVERED' WHERE program_id = $1", program
    )


async def test_maintenance_makes_months_ahead_and_moves_default_rows(stores: Stores) -> None:
    clock = ManualClock(datetime(2029, 5, 10, 12, tzinfo=UTC))
    async with clocked_app(stores, "p29", clock, partition_maintenance_interval_s=0.0) as (
        app, ledger, _,
    ):  # fmt: skip
        assert app.pool is not None
        card = await ledger.card(10_000)
        request = ledger.request(card, 2_500)
        assert (await ledger.auth.Authorize(request)).response_code == "00"
        # No partition for May 2029 yet: the rows wait in the default partitions.
        assert await _partition_of(app.pool, "holds", "account_id = $1", card.account_id) == {
            "holds_default"
        }
        assert await _partition_of(app.pool, "postings", "account_id = $1", card.account_id) == {
            "postings_default"
        }
        created = await app.partitions.create_ahead()
        assert created == len(PARTITIONED_TABLES) * 4  # May and three months ahead
        for table in PARTITIONED_TABLES:
            assert await _tables(app.pool, f"{table}_p2029%") == {
                f"{table}_p2029{m:02d}" for m in range(5, 9)
            }
        assert await app.partitions.create_ahead() == 0
        # The rows moved to their month, and the hold still works where it now is.
        assert await _partition_of(app.pool, "holds", "account_id = $1", card.account_id) == {
            "holds_p202905"
        }
        assert await _partition_of(app.pool, "postings", "account_id = $1", card.account_id) == {
            "postings_p202905"
        }
        cleared = await ledger.clear(card, request.network_reference, 2_000)
        assert cleared.response_code == "00"
        assert await ledger.figures(card.account_id) == (8_000, 8_000, 0)
        program = await app.pool.fetchval(
            "SELECT program_id::text FROM accounts WHERE id = $1", card.account_id
        )
        reconciler = Reconciler(ReconciliationStore(app.pool), app.cache, clock)
        assert (await reconciler.run(program_id=program)).ok


async def test_retention_drops_a_month_only_when_nothing_in_it_is_needed(
    stores: Stores, tmp_path: Path
) -> None:
    clock = ManualClock(datetime(2019, 3, 10, 12, tzinfo=UTC))
    async with clocked_app(
        stores, "p19", clock, partition_maintenance_interval_s=0.0, partition_retention_months=2,
        file_delivery_interval_s=0.0,
    ) as (app, ledger, _):  # fmt: skip
        assert app.pool is not None
        pool = app.pool
        await app.partitions.create_ahead()  # March to June 2019
        # March 2019: a load, an authorisation left open, a notification that cannot be
        # delivered, and a daily transaction file scheduled but not delivered yet.
        card = await ledger.card(10_000)
        held = ledger.request(card, 3_000)
        assert (await ledger.auth.Authorize(held)).response_code == "00"
        program = await pool.fetchval(
            "SELECT program_id::text FROM accounts WHERE id = $1", card.account_id
        )
        await ledger.admin.SetNotificationSink(
            la.SetNotificationSinkRequest(
                program_id=program, sink=la.NOTIFICATION_SINK_WEBHOOK,
                url="https://127.0.0.1:9/unreachable", secret_name="nothing",
            )
        )  # fmt: skip
        await _status_change(ledger, card.card_id)
        schedule = (
            await ledger.admin.CreateFileSchedule(
                la.CreateFileScheduleRequest(
                    schedule=la.FileSchedule(
                        kind=la.FILE_KIND_TRANSACTIONS, program_id=program, cron="30 2 * * *",
                        directory=str(tmp_path),
                    )
                )
            )
        ).schedule  # fmt: skip

        clock.set(datetime(2019, 7, 2, 12, tzinfo=UTC))  # keep May and June; drop before
        # April's holds and outbox hold nothing: dropped. April's journal waits with March's
        # for the daily file, which has delivered nothing since it was made.
        assert await app.partitions.retire() == 2
        outcomes = {(o.family, o.month): o for o in app.partitions.last_retention}
        march, april = date(2019, 3, 1), date(2019, 4, 1)
        assert not outcomes[("holds", march)].dropped
        assert "open" in outcomes[("holds", march)].reason
        assert not outcomes[("outbox", march)].dropped
        assert "not delivered" in outcomes[("outbox", march)].reason
        for month in (march, april):
            assert not outcomes[("journal", month)].dropped
            assert "daily file" in outcomes[("journal", month)].reason
        assert outcomes[("holds", april)].dropped
        assert outcomes[("outbox", april)].dropped
        assert await _tables(pool, "%_p201904") == {"journal_entries_p201904", "postings_p201904"}

        # Made safe: the hold ages off, the notifications are delivered, and the daily files
        # catch up (as far back as they go: CATCH_UP_MAX due times, June's).
        assert await app.lifecycle.age_off() == 1
        # The outbox dead-letters them (they are months old); then, as if re-driven and
        # acknowledged, they are delivered.
        for _ in range(300):
            if await pool.fetchval(
                """SELECT bool_and(status = 'DEAD') FROM notification_deliveries
                   WHERE created_at < '2019-04-01'"""
            ):
                break
            await asyncio.sleep(0.05)
        await pool.execute(
            """UPDATE notification_deliveries SET status = 'DELIVERED', delivered_at = now()
               WHERE created_at < '2019-04-01'"""
        )
        assert await app.deliveries.run_due(schedule_id=schedule.schedule_id) > 0
        assert await app.partitions.retire() == 4, app.partitions.last_retention
        assert {(o.family, o.month, o.dropped) for o in app.partitions.last_retention} == {
            ("holds", march, True), ("journal", march, True), ("outbox", march, True),
            ("journal", april, True),
        }  # fmt: skip
        assert await _tables(pool, "%_p201903") == set()
        assert await _tables(pool, "%_p201905") == {f"{t}_p201905" for t in PARTITIONED_TABLES}

        # What the dropped postings summed to still counts: the ledger reconciles.
        totals = await pool.fetchval(
            "SELECT amount_minor FROM posting_archive_totals WHERE account_id = $1",
            card.account_id,
        )
        assert totals == 10_000
        assert await ledger.figures(card.account_id) == (10_000, 10_000, 0)
        report = await Reconciler(ReconciliationStore(pool), app.cache, clock).run(
            program_id=program
        )
        assert report.ok, report.to_text()
        # The dropped hold's key went with it: a late reversal is acknowledged, nothing held.
        assert await pool.fetchval(
            "SELECT count(*) FROM hold_keys WHERE message_id = $1", held.message_id
        ) == 0  # fmt: skip
        late = await ledger.reverse(held.message_id, message_id=str(uuid.uuid4()))
        assert late.response_code == "00"
        # The account works on as before.
        assert (await ledger.authorize(card, 1_000)).response_code == "00"


async def test_an_existing_database_migrates(stores: Stores) -> None:
    """A database at migration 0006 with rows in every table 0007 partitions (a tombstone, a
    hold written over one, entries, notifications) migrates with every row where it belongs."""
    at = datetime(2025, 12, 31, 23, 30, tzinfo=UTC)
    async with store_support.test_database(stores.postgres_dsn) as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            for migration in discover()[:6]:
                await conn.execute(migration.sql)
            await conn.execute(
                """CREATE TABLE schema_migrations (version integer PRIMARY KEY,
                       name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            await conn.executemany(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                [(m.version, m.name) for m in discover()[:6]],
            )
            ids = await _old_rows(conn, at)
            applied = await migrate(conn)
            assert [m.version for m in applied] == [m.version for m in discover()[6:]]

            for table in PARTITIONED_TABLES:
                assert await conn.fetchval(
                    "SELECT relkind::text FROM pg_class WHERE relname = $1", table
                ) == "p"  # fmt: skip
                # December 2025 (the rows) through three months after today.
                assert f"{table}_p202512" in await _tables_of(conn, table)
            hold = await conn.fetchrow(
                "SELECT tableoid::regclass::text AS part, * FROM holds WHERE id = $1", ids["hold"]
            )
            assert hold is not None
            assert hold["part"] == "holds_p202512"
            assert (hold["amount_minor"], hold["reversed_minor"]) == (700, 300)
            assert await conn.fetchval("SELECT count(*) FROM holds") == 1  # no tombstone
            keys = {
                r["message_id"]: r for r in await conn.fetch("SELECT * FROM hold_keys")
            }  # fmt: skip
            assert keys["m-hold"]["hold_id"] == ids["hold"]
            assert keys["m-tomb"]["hold_id"] is None
            assert (keys["m-tomb"]["reversed_minor"], keys["m-tomb"]["tombstone_at"]) == (50, at)
            assert await conn.fetchval(
                "SELECT tableoid::regclass::text FROM postings WHERE entry_id = $1", ids["entry"]
            ) == "postings_p202512"  # fmt: skip
            assert await conn.fetchval(
                "SELECT created_at FROM notification_deliveries WHERE notification_id = $1",
                ids["notification"],
            ) == at  # fmt: skip
            # The notification sequence carries on after the moved rows.
            new_seq = await conn.fetchval(
                """INSERT INTO notifications (id, program_id, kind, payload, created_at)
                   VALUES (gen_random_uuid(), $1, 'X', '{}', now()) RETURNING seq""",
                ids["program"],
            )
            assert new_seq == 42 + 1
            # A posting must reference an entry of its month.
            with pytest.raises(asyncpg.ForeignKeyViolationError):
                await conn.execute(
                    "INSERT INTO postings VALUES ($1, $2, 'GBP', 1, $3)",
                    uuid.uuid4(), ids["account"], at,
                )  # fmt: skip
            assert await migrate(conn) == []
        finally:
            await conn.close()


async def _tables_of(conn: asyncpg.Connection[asyncpg.Record], table: str) -> set[str]:
    rows = await conn.fetch(
        """SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           WHERE i.inhparent = $1::regclass""",
        table,
    )
    return {r[0] for r in rows}


async def _old_rows(conn: asyncpg.Connection[asyncpg.Record], at: datetime) -> dict[str, object]:
    client, program, product, account, entry, notification, hold = (uuid.uuid4() for _ in range(7))
    await conn.execute("INSERT INTO clients (id, name) VALUES ($1, 'c')", client)
    await conn.execute(
        "INSERT INTO programs (id, client_id, name, mode) VALUES ($1, $2, 'p', 'ON_LEDGER')",
        program, client,
    )  # fmt: skip
    await conn.execute(
        """INSERT INTO products (id, program_id, name, account_types, assets)
           VALUES ($1, $2, 'x', '{SINGLE}', '{GBP}')""",
        product, program,
    )  # fmt: skip
    await conn.execute(
        """INSERT INTO accounts (id, program_id, product_id, kind, account_type)
           VALUES ($1, $2, $3, 'CUSTOMER', 'SINGLE')""",
        account, program, product,
    )  # fmt: skip
    # A hold written over a tombstone (300 reversed early), and a tombstone still waiting.
    await conn.execute(
        """INSERT INTO holds (id, account_id, asset, source, message_id, amount_minor,
               original_minor, status, expires_at, created_at, reversed_minor)
           VALUES ($1, $2, 'GBP', 'visa', 'm-hold', 700, 1000, 'OPEN', $3, $3, 300)""",
        hold, account, at,
    )  # fmt: skip
    await conn.execute(
        """INSERT INTO holds (id, source, message_id, amount_minor, original_minor, status,
               expires_at, created_at, ended_at, end_reason, tombstone, reversed_minor)
           VALUES (gen_random_uuid(), 'visa', 'm-tomb', 0, 0, 'REVERSED', $1, $1, $1,
                   'REVERSAL', true, 50)""",
        at,
    )
    await conn.execute(
        """INSERT INTO journal_entries (id, program_id, kind, created_at)
           VALUES ($1, $2, 'LOAD', $3)""",
        entry, program, at,
    )  # fmt: skip
    await conn.execute("INSERT INTO postings VALUES ($1, $2, 'GBP', 100, $3)", entry, account, at)
    await conn.execute(
        """INSERT INTO notifications (id, seq, program_id, kind, payload, created_at)
           OVERRIDING SYSTEM VALUE VALUES ($1, 42, $2, 'X', '{}', $3)""",
        notification, program, at,
    )  # fmt: skip
    await conn.execute(
        """INSERT INTO notification_deliveries (notification_id, sink, program_id, ordering_key,
               seq, next_attempt_at)
           VALUES ($1, 'client', $2, 'k', 42, $3)""",
        notification, program, at + timedelta(seconds=1),
    )  # fmt: skip
    return {
        "program": program, "account": account, "entry": entry, "notification": notification,
        "hold": hold,
    }  # fmt: skip
