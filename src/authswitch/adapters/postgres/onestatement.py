# ruff: noqa: S608 - the SQL is assembled from this module's fixed text only; every value
# travels in the one bound parameter.
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

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson

from authswitch.adapters.postgres.pool import Connection
from authswitch.domain.records import ClientCall, JournalEntry, LedgerWrite, Notification

__all__ = ["BatchRefused", "OneStatementResult", "suits", "write_at_once"]

REFUSED_SQLSTATE = "AS001"


class BatchRefused(Exception):
    """The one statement aborted itself: nothing was written; replay the batch."""


@dataclass(slots=True)
class OneStatementResult:
    inserted: set[int] = field(default_factory=set)  # indexes of writes whose decision is new
    pre_reversed: dict[int, int] = field(default_factory=dict)  # by write index


def suits(writes: Sequence[LedgerWrite]) -> bool:
    """Whether a batch can be written in one statement: no hold releases, tombstones,
    dispute steps or currency conversions, each key once, and each hold under its write's
    decision's key, account, asset, card and time (as every hold an authorisation or advice
    creates is)."""
    keys = set()
    for write in writes:
        if write.releases or write.tombstones or write.disputes or write.conversions:
            return False
        d = write.decision
        for h in write.holds:
            if (h.source, h.message_id, h.account_id, h.asset, h.card_id, h.created_at) != (
                d.source,
                d.message_id,
                d.account_id,
                d.asset,
                d.card_id,
                d.created_at,
            ):
                return False
        keys.add(d.key)
    return len(keys) == len(writes)  # a key twice in a batch: the general way's rules


# The batch travels as ONE json parameter, {"part": [row, ...], ...}: asyncpg encodes each
# array parameter with a fixed cost that, for batches of a few writes, outweighs its values
# (16 arrays of 5 values cost about twice what one json text does). orjson encodes it
# (about 2 µs a decision, where the standard json module took 40). The parameter is jsonb:
# Postgres parses the text once, on receipt, and each part's ``->`` is a lookup in the
# parsed value (as json, each ``->`` parsed the whole text again: 15 % of the backend's CPU
# for a one-decision batch, by perf, against 8 % as jsonb). Each part is read with
# jsonb_to_recordset; bytes travel as hex, times as ISO text.

# A notification's payload may carry keys that are not strings (json.dumps would have
# written them as strings too).
_JSON_OPTIONS = orjson.OPT_NON_STR_KEYS

_PART_COLUMNS = {
    "d": "i int8, source text, message_id text, id uuid, kind text, fingerprint text, "
    "card_id uuid, account_id uuid, asset text, amount_minor int8, approved_minor int8, "
    "fee_minor int8, response_code text, reason int2, response text, created_at timestamptz",
    # A hold shares its write's decision's key, account, asset, card and time (suits()).
    "h": "i int8, id uuid, network_reference text, amount int8, fee int8, "
    "expires_at timestamptz, kind text, usage_keys text[]",
    "c": "i int8, account_id uuid, asset text, actual int8, authorized int8, needs_funds bool",
    "e": "i int8, id uuid, program_id uuid, kind text, source text, message_id text, "
    "description text, created_at timestamptz, network_reference text, card_id uuid",
    "p": "entry_id uuid, account_id uuid, asset text, amount int8, created_at timestamptz",
    "u": "i int8, account_id uuid, key text, amount int8, count int4, expires_at timestamptz",
    "k": "i int8, source text, message_id text, program_id uuid, outcome text, "
    "stand_in_reason text, stand_in_policy text, client_decision text, "
    "client_response_code text, client_reason text, latency_us int4, created_at timestamptz, "
    "usage_minor int8, usage_keys text[], network_reference text",
    "n": "i int8, id uuid, program_id uuid, account_id uuid, card_id uuid, kind text, "
    "payload jsonb, created_at timestamptz",
    "s": "id uuid, sink text, ordering_key text",
    "q": "i int8, card_id uuid, pin_tries int2, pvv text, blocked bool",
}


def _rows(part: str) -> str:
    return f"jsonb_to_recordset($1::jsonb -> '{part}') AS x({_PART_COLUMNS[part]})"


_DECISIONS = f"""dw AS MATERIALIZED (
        SELECT * FROM {_rows("d")}
    ), ins AS (
        INSERT INTO decisions (source, message_id, id, kind, fingerprint, card_id, account_id,
            asset, amount_minor, approved_minor, fee_minor, response_code, reason, response,
            created_at)
        SELECT source, message_id, id, kind, decode(fingerprint, 'hex'), card_id, account_id,
               asset, amount_minor, approved_minor, fee_minor, response_code, reason,
               decode(response, 'hex'), created_at
        FROM dw
        ON CONFLICT (source, message_id) DO NOTHING
        RETURNING source, message_id
    ), done AS (
        SELECT dw.i, dw.source, dw.message_id, dw.account_id, dw.asset, dw.card_id, dw.created_at
        FROM dw JOIN ins USING (source, message_id)
    )"""

# As committer._apply_effects: the hold's key goes into hold_keys (the global arbiter),
# taking over a tombstone an earlier reversal left there, and the hold is written already
# reduced by what that reversal took.
# A hold's key into hold_keys (the global arbiter of hold keys), taking over the tombstone an
# earlier reversal left there: the statement after ``k AS (`` in both ways of committing, the
# holds to write being ``h``.
HOLD_KEYS = """INSERT INTO hold_keys AS t (source, message_id, hold_id, created_at)
        SELECT source, message_id, id, created_at FROM h
        ON CONFLICT (source, message_id) DO UPDATE SET
            hold_id = EXCLUDED.hold_id, created_at = EXCLUDED.created_at
        WHERE t.hold_id IS NULL
        RETURNING t.source, t.message_id, t.reversed_minor, t.reversal_full,
                  t.tombstone_at IS NOT NULL AS early"""

_HOLDS = f"""h AS (
        SELECT x.i, x.id, done.account_id, done.asset, done.card_id, done.source,
               done.message_id, x.network_reference, x.amount, x.fee, x.expires_at,
               done.created_at, x.kind, x.usage_keys
        FROM {_rows("h")} JOIN done USING (i)
    ), k AS (
        {HOLD_KEYS}
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
               CASE WHEN ended THEN 'REVERSAL' ELSE '' END, kind, usage_keys
        FROM hw
        RETURNING 1
    ), he AS (
        INSERT INTO hold_events (hold_id, account_id, asset, kind, amount_minor, at)
        SELECT id, account_id, asset, 'REVERSAL', taken, created_at FROM hw WHERE taken > 0
        RETURNING 1
    )"""
_HOLDS_GUARD = "(SELECT count(*) FROM hi) = (SELECT count(*) FROM h)"

# Postgres's last word on funds: a row is updated only if the batch's debits on it leave
# its available balance at or above zero before any of its credits (module doc). Rows are
# locked in key order first, as the write-by-write transaction locks them.
_BALANCES = """c AS (
        SELECT x.account_id, x.asset, x.actual, x.authorized, x.needs_funds
        FROM {rows} JOIN done USING (i)
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
# What tombstones took of the new holds is released at once (see _HOLDS).
_TAKEN = "UNION ALL SELECT account_id, asset, 0, -taken, false FROM hw WHERE taken > 0"
_BALANCES_GUARD = "(SELECT count(*) FROM upd) = (SELECT count(*) FROM d)"

_ENTRIES = f"""je AS (
        INSERT INTO journal_entries (id, program_id, kind, source, message_id, description,
            created_at, network_reference, card_id)
        SELECT x.id, x.program_id, x.kind, x.source, x.message_id, x.description,
               x.created_at, x.network_reference, x.card_id
        FROM {_rows("e")} JOIN done USING (i)
        RETURNING id
    ), jp AS (
        INSERT INTO postings (entry_id, account_id, asset, amount_minor, created_at)
        SELECT x.entry_id, x.account_id, x.asset, x.amount, x.created_at
        FROM {_rows("p")} JOIN je ON je.id = x.entry_id
        RETURNING 1
    )"""

_USAGE = f"""lu AS (
        INSERT INTO limit_usage AS t (account_id, key, amount_minor, count, expires_at)
        SELECT x.account_id, x.key, sum(x.amount)::int8, sum(x.count)::int4, max(x.expires_at)
        FROM {_rows("u")} JOIN done USING (i)
        GROUP BY x.account_id, x.key
        ON CONFLICT (account_id, key) DO UPDATE SET
            amount_minor = t.amount_minor + EXCLUDED.amount_minor,
            count = t.count + EXCLUDED.count,
            expires_at = GREATEST(t.expires_at, EXCLUDED.expires_at)
        RETURNING 1
    )"""

_CLIENT_CALLS = f"""cc AS (
        INSERT INTO client_calls (source, message_id, program_id, outcome, stand_in_reason,
            stand_in_policy, client_decision, client_response_code, client_reason, latency_us,
            created_at, usage_minor, usage_keys, network_reference)
        SELECT x.source, x.message_id, x.program_id, x.outcome, x.stand_in_reason,
               x.stand_in_policy, x.client_decision, x.client_response_code, x.client_reason,
               x.latency_us, x.created_at, coalesce(x.usage_minor, 0),
               coalesce(x.usage_keys, '{{}}'), coalesce(x.network_reference, '')
        FROM {_rows("k")} JOIN done USING (i)
        RETURNING 1
    )"""

# As committer.write_notifications: the outbox rows, and one delivery per sink, in order per
# account by the notification's seq.
_NOTIFICATIONS = f"""nn AS (
        INSERT INTO notifications (id, program_id, account_id, card_id, kind, payload,
            created_at)
        SELECT x.id, x.program_id, x.account_id, x.card_id, x.kind, x.payload, x.created_at
        FROM {_rows("n")} JOIN done USING (i)
        RETURNING id, program_id, seq, created_at
    ), nd AS (
        INSERT INTO notification_deliveries (notification_id, sink, program_id, ordering_key,
            seq, next_attempt_at, created_at)
        SELECT nn.id, x.sink, nn.program_id, x.ordering_key, nn.seq, nn.created_at,
               nn.created_at
        FROM {_rows("s")} JOIN nn ON nn.id = x.id
        RETURNING 1
    )"""

# As committer._apply_effects: per card, the latest write's values that are set.
_CARD_UPDATES = f"""cu AS (
        UPDATE cards c
        SET pin_tries = COALESCE(u.pin_tries, c.pin_tries),
            pvv = COALESCE(decode(u.pvv, 'hex'), c.pvv),
            status = CASE WHEN u.blocked AND c.status = 'ACTIVE' THEN 'BLOCKED'
                          ELSE c.status END,
            updated_at = now()
        FROM (
            SELECT x.card_id,
                   (array_agg(x.pin_tries ORDER BY x.i DESC)
                       FILTER (WHERE x.pin_tries IS NOT NULL))[1] AS pin_tries,
                   (array_agg(x.pvv ORDER BY x.i DESC)
                       FILTER (WHERE x.pvv IS NOT NULL))[1] AS pvv,
                   bool_or(COALESCE(x.blocked, false)) AS blocked
            FROM {_rows("q")} JOIN done USING (i)
            GROUP BY x.card_id
        ) u
        WHERE c.id = u.card_id
        RETURNING 1
    )"""


@functools.cache
def statement_text(parts: frozenset[str]) -> str:
    """The statement for a batch with ``parts`` (keys of its json parameter)."""
    ctes = [_DECISIONS]
    guards = []
    holds = "h" in parts
    if holds:
        ctes.append(_HOLDS)
        guards.append(_HOLDS_GUARD)
    if "c" in parts or holds:
        ctes.append(_BALANCES.format(rows=_rows("c"), taken=_TAKEN if holds else ""))
        guards.append(_BALANCES_GUARD)
    if "e" in parts:
        ctes.append(_ENTRIES)
    if "u" in parts:
        ctes.append(_USAGE)
    if "k" in parts:
        ctes.append(_CLIENT_CALLS)
    if "n" in parts:
        ctes.append(_NOTIFICATIONS)
    if "q" in parts:
        ctes.append(_CARD_UPDATES)
    guard = " AND ".join(guards) or "true"
    taken = (
        "(SELECT array_agg(i) FROM hw WHERE taken > 0), "
        "(SELECT array_agg(taken) FROM hw WHERE taken > 0)"
        if holds
        else "NULL::int8[], NULL::int8[]"
    )
    return f"""WITH {", ".join(ctes)}, guard AS (
        SELECT CASE WHEN {guard} THEN true
                    ELSE authswitch_batch_refused('funds, a balance row or a hold key')
               END AS ok
    )
    SELECT (SELECT ok FROM guard), (SELECT array_agg(i) FROM done), {taken}"""


def _hex(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


def parameter(writes: Sequence[LedgerWrite]) -> dict[str, list[dict[str, Any]]]:
    """The json parameter of ``writes``: their rows by part."""
    decisions: list[dict[str, Any]] = []
    parts: dict[str, list[dict[str, Any]]] = {"d": decisions}
    for i, write in enumerate(writes):
        d = write.decision
        decisions.append({
            "i": i, "source": d.source, "message_id": d.message_id, "id": d.id,
            "kind": d.kind, "fingerprint": d.fingerprint.hex(), "card_id": d.card_id,
            "account_id": d.account_id, "asset": d.asset, "amount_minor": d.amount_minor,
            "approved_minor": d.approved_minor, "fee_minor": d.fee_minor,
            "response_code": d.response_code, "reason": d.reason,
            "response": d.response.hex(), "created_at": d.created_at.isoformat(),
        })  # fmt: skip
        for h in write.holds:
            parts.setdefault("h", []).append({
                "i": i, "id": h.id, "network_reference": h.network_reference,
                "amount": h.amount_minor, "fee": h.fee_minor,
                "expires_at": h.expires_at.isoformat(), "kind": h.kind,
                "usage_keys": list(h.usage_keys),
            })  # fmt: skip
        for c in write.balance_changes:
            parts.setdefault("c", []).append({
                "i": i, "account_id": c.account_id, "asset": c.asset,
                "actual": c.actual_delta_minor, "authorized": c.authorized_delta_minor,
                "needs_funds": c.requires_funds,
            })  # fmt: skip
        if write.entries:
            _add_entries(parts, i, write.entries)
        for u in write.usage:
            parts.setdefault("u", []).append({
                "i": i, "account_id": u.account_id, "key": u.key, "amount": u.amount_minor,
                "count": u.count, "expires_at": u.expires_at.isoformat(),
            })  # fmt: skip
        for k in write.client_calls:
            parts.setdefault("k", []).append(_client_call_row(i, k))
        if write.notifications:
            _add_notifications(parts, i, write.notifications)
        for q in write.card_updates:
            parts.setdefault("q", []).append(
                {"i": i, "card_id": q.card_id, "pin_tries": q.pin_tries, "pvv": _hex(q.pvv),
                 "blocked": q.blocked}
            )  # fmt: skip
    if "e" in parts:
        parts.setdefault("p", [])
    if "n" in parts:
        parts.setdefault("s", [])
    return parts


def _add_entries(
    parts: dict[str, list[dict[str, Any]]], i: int, entries: Sequence[JournalEntry]
) -> None:
    for e in entries:
        created = e.created_at.isoformat()
        parts.setdefault("e", []).append({
            "i": i, "id": e.id, "program_id": e.program_id, "kind": e.kind,
            "source": e.source, "message_id": e.message_id,
            "description": e.description, "created_at": created,
            "network_reference": e.network_reference, "card_id": e.card_id,
        })  # fmt: skip
        for p in e.postings:
            parts.setdefault("p", []).append({
                "entry_id": e.id, "account_id": p.account_id, "asset": p.asset,
                "amount": p.amount_minor, "created_at": created,
            })  # fmt: skip


def _client_call_row(i: int, k: ClientCall) -> dict[str, Any]:
    return {
        "i": i, "source": k.source, "message_id": k.message_id,
        "program_id": k.program_id, "outcome": k.outcome,
        "stand_in_reason": k.stand_in_reason, "stand_in_policy": k.stand_in_policy,
        "client_decision": k.client_decision,
        "client_response_code": k.client_response_code,
        "client_reason": k.client_reason, "latency_us": k.latency_us,
        "created_at": k.created_at.isoformat(), "usage_minor": k.usage_minor,
        "usage_keys": list(k.usage_keys), "network_reference": k.network_reference,
    }  # fmt: skip


def _add_notifications(
    parts: dict[str, list[dict[str, Any]]], i: int, notifications: Sequence[Notification]
) -> None:
    for n in notifications:
        parts.setdefault("n", []).append({
            "i": i, "id": n.id, "program_id": n.program_id, "account_id": n.account_id,
            "card_id": n.card_id, "kind": n.kind, "payload": n.payload,
            "created_at": n.created_at.isoformat(),
        })  # fmt: skip
        ordering_key = n.account_id or n.card_id or n.program_id
        for sink in n.sinks:
            parts.setdefault("s", []).append(
                {"id": n.id, "sink": sink, "ordering_key": ordering_key}
            )


async def write_at_once(conn: Connection, writes: Sequence[LedgerWrite]) -> OneStatementResult:
    """Write ``writes`` in one statement, outside any transaction (it commits on its own).

    Raises :class:`BatchRefused` when the statement aborted itself (nothing written); any
    other error is a failure of the statement (nothing written either, unless the
    connection broke after the commit: the caller reads back what is durable).
    """
    parts = parameter(writes)
    sql = statement_text(frozenset(parts))
    try:
        row = await conn.fetchrow(sql, orjson.dumps(parts, option=_JSON_OPTIONS).decode())
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
