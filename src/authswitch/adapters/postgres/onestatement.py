# ruff: noqa: S608 - the SQL is assembled from this module's fixed text and numbered
# placeholders only; every value travels as a bound parameter.
"""A batch of writes in ONE statement: the group committer's common case.

A batch of authorisations is decisions, holds, balance changes, and now and then counters,
notifications, client calls, fee postings or PIN state. Written the general way
(``committer.write_batch``) that is a transaction of six statements or more: BEGIN, lock the
balances, insert the decisions, the holds, update the balances, COMMIT, each a round trip.
Here it is one statement of data-modifying CTEs, run outside a transaction (its own implicit
one): one round trip, the commit included.

It decides exactly what the general way decides, or nothing:

* A decision whose key already exists (a retransmission another process decided) is not
  inserted, and nothing of its write is applied (every part joins the inserted decisions).
* Postgres's last word on funds: each balance row is updated only if the batch's debits on it
  that require funds leave its available balance at or above zero even before any of the
  batch's credits (a sufficient condition for ``admit_in_order`` admitting every write). If a
  row fails that, or is missing, or a hold's key was taken, the statement aborts itself
  (``authswitch_batch_refused``, SQLSTATE AS001: nothing of it is written) and the caller
  replays the batch write by write in a transaction, which refuses exactly the writes it must.
* Balance rows are locked in key order, as the general way locks them.

Writes that release or tombstone holds, or move disputes, need the general way's checks of
those rows: a batch with any of them is not written here (:func:`suits`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from authswitch.adapters.postgres.pool import Connection
from authswitch.domain.records import LedgerWrite

__all__ = ["BatchRefused", "OneStatementResult", "suits", "write_at_once"]

REFUSED_SQLSTATE = "AS001"


class BatchRefused(Exception):
    """The one statement aborted itself: nothing was written; replay the batch."""


@dataclass(slots=True)
class OneStatementResult:
    inserted: set[int] = field(default_factory=set)  # indexes of writes whose decision is new
    pre_reversed: dict[int, int] = field(default_factory=dict)  # by write index


def suits(writes: Sequence[LedgerWrite]) -> bool:
    """Whether a batch can be written in one statement."""
    keys = set()
    for write in writes:
        if write.releases or write.tombstones or write.disputes:
            return False
        keys.add(write.decision.key)
    return len(keys) == len(writes)  # a key twice in a batch: the general way's rules


class _Statement:
    """The SQL text (by the parts a batch has) and its arguments."""

    def __init__(self) -> None:
        self.ctes: list[str] = []
        self.args: list[Any] = []
        self.guards: list[str] = []

    def arg(self, values: list[Any], sql_type: str) -> str:
        self.args.append(values)
        return f"${len(self.args)}::{sql_type}[]"

    def unnest(self, columns: list[tuple[str, str, list[Any]]]) -> str:
        """``unnest($1::t1[], $2::t2[], ...) AS alias(c1, c2, ...)`` text for ``columns``."""
        params = ", ".join(self.arg(values, sql_type) for _, sql_type, values in columns)
        names = ", ".join(name for name, _, _ in columns)
        return f"unnest({params}) AS x({names})"


def _decisions(st: _Statement, writes: Sequence[LedgerWrite]) -> None:
    records = [w.decision for w in writes]
    source = st.arg([d.source for d in records], "text")
    message_id = st.arg([d.message_id for d in records], "text")
    rest = ", ".join(
        st.arg(values, sql_type)
        for values, sql_type in (
            ([d.id for d in records], "uuid"),
            ([d.kind for d in records], "text"),
            ([d.fingerprint for d in records], "bytea"),
            ([d.card_id for d in records], "uuid"),
            ([d.account_id for d in records], "uuid"),
            ([d.asset for d in records], "text"),
            ([d.amount_minor for d in records], "int8"),
            ([d.approved_minor for d in records], "int8"),
            ([d.fee_minor for d in records], "int8"),
            ([d.response_code for d in records], "text"),
            ([d.reason for d in records], "int2"),
            ([d.response for d in records], "bytea"),
            ([d.created_at for d in records], "timestamptz"),
        )
    )
    st.ctes.append(
        f"""ins AS (
            INSERT INTO decisions (source, message_id, id, kind, fingerprint, card_id,
                account_id, asset, amount_minor, approved_minor, fee_minor, response_code,
                reason, response, created_at)
            SELECT * FROM unnest({source}, {message_id}, {rest})
            ON CONFLICT (source, message_id) DO NOTHING
            RETURNING source, message_id
        ), done AS (
            SELECT w.i - 1 AS i
            FROM unnest({source}, {message_id}) WITH ORDINALITY AS w(source, message_id, i)
            JOIN ins USING (source, message_id)
        )"""
    )


def _holds(st: _Statement, writes: Sequence[LedgerWrite]) -> bool:
    owned = [(i, h) for i, w in enumerate(writes) for h in w.holds]
    if not owned:
        return False
    table = st.unnest(
        [
            ("i", "int8", [i for i, _ in owned]),
            ("id", "uuid", [h.id for _, h in owned]),
            ("account_id", "uuid", [h.account_id for _, h in owned]),
            ("asset", "text", [h.asset for _, h in owned]),
            ("card_id", "uuid", [h.card_id for _, h in owned]),
            ("source", "text", [h.source for _, h in owned]),
            ("message_id", "text", [h.message_id for _, h in owned]),
            ("network_reference", "text", [h.network_reference for _, h in owned]),
            ("amount", "int8", [h.amount_minor for _, h in owned]),
            ("fee", "int8", [h.fee_minor for _, h in owned]),
            ("expires_at", "timestamptz", [h.expires_at for _, h in owned]),
            ("created_at", "timestamptz", [h.created_at for _, h in owned]),
            ("kind", "text", [h.kind for _, h in owned]),
            # text[][] cannot be unnested into rows of arrays: keys travel space-joined.
            ("usage_keys", "text", [" ".join(h.usage_keys) for _, h in owned]),
        ]
    )
    # As committer._apply_effects: the hold's key goes into hold_keys (the global arbiter),
    # taking over a tombstone an earlier reversal left there, and the hold is written
    # already reduced by what that reversal took.
    st.ctes.append(
        f"""h AS (
            SELECT x.* FROM {table} JOIN done USING (i)
        ), k AS (
            INSERT INTO hold_keys AS t (source, message_id, hold_id, created_at)
            SELECT source, message_id, id, created_at FROM h
            ON CONFLICT (source, message_id) DO UPDATE SET
                hold_id = EXCLUDED.hold_id, created_at = EXCLUDED.created_at
            WHERE t.hold_id IS NULL
            RETURNING t.source, t.message_id, t.reversed_minor, t.reversal_full,
                      t.tombstone_at IS NOT NULL AS early
        ), hw AS (
            SELECT h.*, LEAST(k.reversed_minor, h.amount) AS reversed,
                   k.early AND (k.reversal_full OR h.amount <= k.reversed_minor) AS ended,
                   CASE WHEN k.reversal_full THEN h.amount
                        ELSE LEAST(k.reversed_minor, h.amount) END AS taken
            FROM h JOIN k USING (source, message_id)
        ), hi AS (
            INSERT INTO holds (id, account_id, asset, card_id, source, message_id,
                network_reference, amount_minor, original_minor, reversed_minor, fee_minor,
                status, expires_at, created_at, ended_at, end_reason, kind, usage_keys)
            SELECT id, account_id, asset, card_id, source, message_id, network_reference,
                   amount - taken, amount, reversed, fee,
                   CASE WHEN ended THEN 'REVERSED' ELSE 'OPEN' END, expires_at, created_at,
                   CASE WHEN ended THEN created_at END,
                   CASE WHEN ended THEN 'REVERSAL' ELSE '' END, kind,
                   coalesce(string_to_array(nullif(usage_keys, ''), ' '), '{{}}')
            FROM hw
            RETURNING 1
        ), he AS (
            INSERT INTO hold_events (hold_id, account_id, asset, kind, amount_minor, at)
            SELECT id, account_id, asset, 'REVERSAL', taken, created_at FROM hw WHERE taken > 0
            RETURNING 1
        )"""
    )
    st.guards.append("(SELECT count(*) FROM hi) = (SELECT count(*) FROM h)")
    return True


def _balances(st: _Statement, writes: Sequence[LedgerWrite], holds: bool) -> None:
    owned = [(i, c) for i, w in enumerate(writes) for c in w.balance_changes]
    if not owned and not holds:
        return
    table = st.unnest(
        [
            ("i", "int8", [i for i, _ in owned]),
            ("account_id", "uuid", [c.account_id for _, c in owned]),
            ("asset", "text", [c.asset for _, c in owned]),
            ("actual", "int8", [c.actual_delta_minor for _, c in owned]),
            ("authorized", "int8", [c.authorized_delta_minor for _, c in owned]),
            ("needs_funds", "bool", [c.requires_funds for _, c in owned]),
        ]
    )
    # What tombstones took of the new holds is released at once (see _holds).
    taken = (
        "UNION ALL SELECT account_id, asset, 0, -taken, false FROM hw WHERE taken > 0"
        if holds
        else ""
    )
    st.ctes.append(
        f"""c AS (
            SELECT x.account_id, x.asset, x.actual, x.authorized, x.needs_funds
            FROM {table} JOIN done USING (i)
            {taken}
        ), d AS (
            SELECT account_id, asset, sum(actual)::int8 AS actual,
                   sum(authorized)::int8 AS authorized, bool_or(needs_funds) AS needs_funds,
                   sum(LEAST(actual - authorized, 0))::int8 AS debits
            FROM c GROUP BY account_id, asset
        ), lk AS MATERIALIZED (
            SELECT b.account_id, b.asset FROM balances b JOIN d USING (account_id, asset)
            ORDER BY b.account_id, b.asset
            FOR UPDATE OF b
        ), upd AS (
            UPDATE balances b
            SET actual_minor = b.actual_minor + d.actual,
                authorized_minor = b.authorized_minor + d.authorized
            FROM lk JOIN d USING (account_id, asset)
            WHERE b.account_id = lk.account_id AND b.asset = lk.asset
              AND (NOT d.needs_funds OR b.actual_minor - b.authorized_minor + d.debits >= 0)
            RETURNING 1
        )"""
    )
    st.guards.append("(SELECT count(*) FROM upd) = (SELECT count(*) FROM d)")


def _entries(st: _Statement, writes: Sequence[LedgerWrite]) -> None:
    owned = [(i, e) for i, w in enumerate(writes) for e in w.entries]
    if not owned:
        return
    entries = st.unnest(
        [
            ("i", "int8", [i for i, _ in owned]),
            ("id", "uuid", [e.id for _, e in owned]),
            ("program_id", "uuid", [e.program_id for _, e in owned]),
            ("kind", "text", [e.kind for _, e in owned]),
            ("source", "text", [e.source for _, e in owned]),
            ("message_id", "text", [e.message_id for _, e in owned]),
            ("description", "text", [e.description for _, e in owned]),
            ("created_at", "timestamptz", [e.created_at for _, e in owned]),
            ("network_reference", "text", [e.network_reference for _, e in owned]),
            ("card_id", "uuid", [e.card_id for _, e in owned]),
        ]
    )
    postings = [(e, p) for _, e in owned for p in e.postings]
    lines = st.unnest(
        [
            ("entry_id", "uuid", [e.id for e, _ in postings]),
            ("account_id", "uuid", [p.account_id for _, p in postings]),
            ("asset", "text", [p.asset for _, p in postings]),
            ("amount", "int8", [p.amount_minor for _, p in postings]),
            ("created_at", "timestamptz", [e.created_at for e, _ in postings]),
        ]
    )
    st.ctes.append(
        f"""je AS (
            INSERT INTO journal_entries (id, program_id, kind, source, message_id,
                description, created_at, network_reference, card_id)
            SELECT x.id, x.program_id, x.kind, x.source, x.message_id, x.description,
                   x.created_at, x.network_reference, x.card_id
            FROM {entries} JOIN done USING (i)
            RETURNING id
        ), jp AS (
            INSERT INTO postings (entry_id, account_id, asset, amount_minor, created_at)
            SELECT x.entry_id, x.account_id, x.asset, x.amount, x.created_at
            FROM {lines} JOIN je ON je.id = x.entry_id
            RETURNING 1
        )"""
    )


def _usage(st: _Statement, writes: Sequence[LedgerWrite]) -> None:
    owned = [(i, u) for i, w in enumerate(writes) for u in w.usage]
    if not owned:
        return
    table = st.unnest(
        [
            ("i", "int8", [i for i, _ in owned]),
            ("account_id", "uuid", [u.account_id for _, u in owned]),
            ("key", "text", [u.key for _, u in owned]),
            ("amount", "int8", [u.amount_minor for _, u in owned]),
            ("count", "int4", [u.count for _, u in owned]),
            ("expires_at", "timestamptz", [u.expires_at for _, u in owned]),
        ]
    )
    st.ctes.append(
        f"""lu AS (
            INSERT INTO limit_usage AS t (account_id, key, amount_minor, count, expires_at)
            SELECT x.account_id, x.key, sum(x.amount)::int8, sum(x.count)::int4,
                   max(x.expires_at)
            FROM {table} JOIN done USING (i)
            GROUP BY x.account_id, x.key
            ON CONFLICT (account_id, key) DO UPDATE SET
                amount_minor = t.amount_minor + EXCLUDED.amount_minor,
                count = t.count + EXCLUDED.count,
                expires_at = GREATEST(t.expires_at, EXCLUDED.expires_at)
            RETURNING 1
        )"""
    )


def _client_calls(st: _Statement, writes: Sequence[LedgerWrite]) -> None:
    owned = [(i, k) for i, w in enumerate(writes) for k in w.client_calls]
    if not owned:
        return
    table = st.unnest(
        [
            ("i", "int8", [i for i, _ in owned]),
            ("source", "text", [k.source for _, k in owned]),
            ("message_id", "text", [k.message_id for _, k in owned]),
            ("program_id", "uuid", [k.program_id for _, k in owned]),
            ("outcome", "text", [k.outcome for _, k in owned]),
            ("stand_in_reason", "text", [k.stand_in_reason for _, k in owned]),
            ("stand_in_policy", "text", [k.stand_in_policy for _, k in owned]),
            ("client_decision", "text", [k.client_decision for _, k in owned]),
            ("client_response_code", "text", [k.client_response_code for _, k in owned]),
            ("client_reason", "text", [k.client_reason for _, k in owned]),
            ("latency_us", "int4", [k.latency_us for _, k in owned]),
            ("created_at", "timestamptz", [k.created_at for _, k in owned]),
        ]
    )
    st.ctes.append(
        f"""cc AS (
            INSERT INTO client_calls (source, message_id, program_id, outcome,
                stand_in_reason, stand_in_policy, client_decision, client_response_code,
                client_reason, latency_us, created_at)
            SELECT x.source, x.message_id, x.program_id, x.outcome, x.stand_in_reason,
                   x.stand_in_policy, x.client_decision, x.client_response_code,
                   x.client_reason, x.latency_us, x.created_at
            FROM {table} JOIN done USING (i)
            RETURNING 1
        )"""
    )


def _notifications(st: _Statement, writes: Sequence[LedgerWrite]) -> None:
    owned = [(i, n) for i, w in enumerate(writes) for n in w.notifications]
    if not owned:
        return
    table = st.unnest(
        [
            ("i", "int8", [i for i, _ in owned]),
            ("id", "uuid", [n.id for _, n in owned]),
            ("program_id", "uuid", [n.program_id for _, n in owned]),
            ("account_id", "uuid", [n.account_id for _, n in owned]),
            ("card_id", "uuid", [n.card_id for _, n in owned]),
            ("kind", "text", [n.kind for _, n in owned]),
            ("payload", "jsonb", [json.dumps(n.payload, sort_keys=True) for _, n in owned]),
            ("created_at", "timestamptz", [n.created_at for _, n in owned]),
        ]
    )
    deliveries = [(n, sink) for _, n in owned for sink in n.sinks]
    sinks = st.unnest(
        [
            ("id", "uuid", [n.id for n, _ in deliveries]),
            ("sink", "text", [sink for _, sink in deliveries]),
            (
                "ordering_key",
                "text",
                [n.account_id or n.card_id or n.program_id for n, _ in deliveries],
            ),
        ]
    )
    # As committer.write_notifications: the outbox rows, and one delivery per sink, in order
    # per account by the notification's seq.
    st.ctes.append(
        f"""nn AS (
            INSERT INTO notifications (id, program_id, account_id, card_id, kind, payload,
                created_at)
            SELECT x.id, x.program_id, x.account_id, x.card_id, x.kind, x.payload, x.created_at
            FROM {table} JOIN done USING (i)
            RETURNING id, program_id, seq, created_at
        ), nd AS (
            INSERT INTO notification_deliveries (notification_id, sink, program_id,
                ordering_key, seq, next_attempt_at, created_at)
            SELECT nn.id, x.sink, nn.program_id, x.ordering_key, nn.seq, nn.created_at,
                   nn.created_at
            FROM {sinks} JOIN nn ON nn.id = x.id
            RETURNING 1
        )"""
    )


def _card_updates(st: _Statement, writes: Sequence[LedgerWrite]) -> None:
    owned = [(i, u) for i, w in enumerate(writes) for u in w.card_updates]
    if not owned:
        return
    table = st.unnest(
        [
            ("i", "int8", [i for i, _ in owned]),
            ("card_id", "uuid", [u.card_id for _, u in owned]),
            ("pin_tries", "int2", [u.pin_tries for _, u in owned]),
            ("pvv", "bytea", [u.pvv for _, u in owned]),
        ]
    )
    # As committer._apply_effects: per card, the latest write's values that are set.
    st.ctes.append(
        f"""cu AS (
            UPDATE cards c
            SET pin_tries = COALESCE(u.pin_tries, c.pin_tries),
                pvv = COALESCE(u.pvv, c.pvv),
                updated_at = now()
            FROM (
                SELECT x.card_id,
                       (array_agg(x.pin_tries ORDER BY x.i DESC)
                           FILTER (WHERE x.pin_tries IS NOT NULL))[1] AS pin_tries,
                       (array_agg(x.pvv ORDER BY x.i DESC)
                           FILTER (WHERE x.pvv IS NOT NULL))[1] AS pvv
                FROM {table} JOIN done USING (i)
                GROUP BY x.card_id
            ) u
            WHERE c.id = u.card_id
            RETURNING 1
        )"""
    )


def statement(writes: Sequence[LedgerWrite]) -> tuple[str, list[Any]]:
    """The one statement writing ``writes`` (which :func:`suits`), and its arguments."""
    st = _Statement()
    _decisions(st, writes)
    holds = _holds(st, writes)
    _balances(st, writes, holds)
    _entries(st, writes)
    _usage(st, writes)
    _client_calls(st, writes)
    _notifications(st, writes)
    _card_updates(st, writes)
    guard = " AND ".join(st.guards) or "true"
    taken = (
        "(SELECT array_agg(i) FROM hw WHERE taken > 0), "
        "(SELECT array_agg(taken) FROM hw WHERE taken > 0)"
        if holds
        else "NULL::int8[], NULL::int8[]"
    )
    sql = (
        "WITH "
        + ",\n".join(st.ctes)
        + f""",
        guard AS (
            SELECT CASE WHEN {guard} THEN true
                        ELSE authswitch_batch_refused('funds, a balance row or a hold key')
                   END AS ok
        )
        SELECT (SELECT ok FROM guard), (SELECT array_agg(i) FROM done), {taken}"""
    )
    return sql, st.args


async def write_at_once(conn: Connection, writes: Sequence[LedgerWrite]) -> OneStatementResult:
    """Write ``writes`` in one statement, outside any transaction (it commits on its own).

    Raises :class:`BatchRefused` when the statement aborted itself (nothing written); any
    other error is a failure of the statement (nothing written either, unless the
    connection broke after the commit: the caller reads back what is durable).
    """
    sql, args = statement(writes)
    try:
        row = await conn.fetchrow(sql, *args)
    except asyncpg.PostgresError as exc:
        if exc.sqlstate == REFUSED_SQLSTATE or isinstance(exc, asyncpg.DeadlockDetectedError):
            raise BatchRefused(str(exc)) from exc
        raise
    assert row is not None
    assert row[0] is True, "the statement's guard passed or raised"
    result = OneStatementResult(inserted=set(row[1] or ()))
    for index, amount in zip(row[2] or (), row[3] or (), strict=True):
        result.pre_reversed[index] = result.pre_reversed.get(index, 0) + amount
    return result
