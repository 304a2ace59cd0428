"""Velocity rules over rolling windows (issue 18, item 2), end to end: a real server on a
real gRPC socket, real Postgres and Redis, and a clock the tests move."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from authswitch.app import Application
from authswitch.service.clock import ManualClock
from authswitch.v1 import authorization_pb2 as pb
from authswitch.v1 import common_pb2 as c
from authswitch.v1 import ledger_admin_pb2 as la
from tests.conftest import TEST_KEYS, settings_for
from tests.support.ledger import IssuedCard, Ledger
from tests.support.stores import Stores

pytestmark = pytest.mark.timeout(90)


@dataclass
class World:
    app: Application
    ledger: Ledger
    clock: ManualClock


@pytest.fixture(scope="module")
async def w(stores: Stores) -> AsyncIterator[World]:
    # Noon UTC, so that no test's window crosses a day in the program's time zone.
    clock = ManualClock(datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0))
    app = Application(
        settings_for(stores, redis_key_prefix=stores.redis_prefix + "v"), clock=clock,
        keys=TEST_KEYS,
    )  # fmt: skip
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            yield World(app, Ledger(channel), clock)
    finally:
        await app.stop()


async def velocity(
    w: World, card: IssuedCard, *rules: la.VelocityRule,
    subject: la.ControlSubject.ValueType = la.CONTROL_SUBJECT_CARD,
) -> None:  # fmt: skip
    subject_id = card.card_id if subject == la.CONTROL_SUBJECT_CARD else card.account_id
    await w.ledger.admin.SetSpendControls(
        la.SetSpendControlsRequest(
            subject=subject, subject_id=subject_id,
            controls=la.SpendControls(velocity_rules=list(rules)),
        )
    )  # fmt: skip


def rule(name: str, window_s: int, **maxima: Any) -> la.VelocityRule:
    if "amount_max_minor" in maxima:
        maxima.setdefault("asset", "GBP")
    return la.VelocityRule(name=name, window_s=window_s, **maxima)


def codes(*responses: pb.AuthorizeResponse) -> list[str]:
    return [r.response_code for r in responses]


async def test_more_than_n_approvals_in_the_last_hour_declines_65(w: World) -> None:
    card = await w.ledger.card(100_000)
    await velocity(w, card, rule("hourly", 3_600, approvals_max=3))
    assert codes(*[await w.ledger.authorize(card, 100) for _ in range(3)]) == ["00"] * 3
    declined = await w.ledger.authorize(card, 100)
    assert declined.response_code == "65"
    assert declined.detail == "card velocity rule 'hourly' (3 approvals in 3600 s) exceeded"
    # Rolling, not calendar: 59 minutes on it is still declined, an hour and a bucket later
    # the three approvals have left the window.
    w.clock.advance(timedelta(minutes=59))
    assert (await w.ledger.authorize(card, 100)).response_code == "65"
    w.clock.advance(timedelta(minutes=5))
    assert (await w.ledger.authorize(card, 100)).response_code == "00"


async def test_more_than_x_amount_in_the_window_declines_61(w: World) -> None:
    card = await w.ledger.card(100_000)
    await velocity(w, card, rule("amount", 3_600, amount_max_minor=10_000))
    assert codes(await w.ledger.authorize(card, 6_000), await w.ledger.authorize(card, 4_000)) == [
        "00", "00",
    ]  # fmt: skip
    declined = await w.ledger.authorize(card, 1)
    assert declined.response_code == "61"
    assert declined.detail.startswith("card velocity rule 'amount'")
    w.clock.advance(timedelta(minutes=40))
    assert (await w.ledger.authorize(card, 1)).response_code == "61"
    w.clock.advance(timedelta(minutes=24))
    assert (await w.ledger.authorize(card, 10_000)).response_code == "00"


async def test_k_declines_in_ten_minutes_block_the_card_and_notify(w: World) -> None:
    card = await w.ledger.card(100_000)
    await velocity(w, card, rule("declines", 600, declines_max=2))
    assert codes(
        await w.ledger.authorize(card, 100, cvv2="000"),
        await w.ledger.authorize(card, 100, cvv2="000"),
        await w.ledger.authorize(card, 100),
    ) == ["N7", "N7", "00"]
    third = await w.ledger.authorize(card, 1_000_000)  # 51: the third decline blocks
    assert third.response_code == "51"
    blocked = await w.ledger.authorize(card, 100)
    assert (blocked.response_code, blocked.reason) == ("62", pb.REASON_CARD_BLOCKED)
    got = await w.ledger.admin.GetCard(la.GetCardRequest(card_id=card.card_id))
    assert got.status == c.CARD_STATUS_BLOCKED
    assert w.app.pool is not None
    rows = await w.app.pool.fetch(
        "SELECT payload FROM notifications WHERE card_id = $1 AND kind = 'CARD_STATUS_CHANGED'",
        card.card_id,
    )
    payloads = [json.loads(r["payload"]) for r in rows]
    assert [(p["from"], p["to"], p["velocity_rule"]) for p in payloads] == [
        ("ACTIVE", "BLOCKED", "declines")
    ]
    # Blocked in Postgres too: a cache rebuilt from it keeps the card blocked.
    assert w.app.redis is not None
    await w.app.redis.delete(w.app.cache.keys.state(card.account_id))
    assert (await w.ledger.authorize(card, 100)).response_code == "62"


async def test_declines_outside_the_window_do_not_block(w: World) -> None:
    card = await w.ledger.card(100_000)
    await velocity(w, card, rule("declines", 600, declines_max=1))
    assert (await w.ledger.authorize(card, 100, cvv2="000")).response_code == "N7"
    w.clock.advance(timedelta(minutes=11))
    assert (await w.ledger.authorize(card, 100, cvv2="000")).response_code == "N7"
    assert (await w.ledger.authorize(card, 100)).response_code == "00"


async def test_concurrent_requests_never_pass_a_velocity_rule_together(w: World) -> None:
    card = await w.ledger.card(100_000)
    second = await w.ledger.card(account_id=card.account_id)
    await velocity(
        w, card, rule("burst", 3_600, approvals_max=5), subject=la.CONTROL_SUBJECT_ACCOUNT
    )
    responses = await asyncio.gather(
        *(w.ledger.authorize((card, second)[n % 2], 100) for n in range(30))
    )
    assert codes(*responses).count("00") == 5
    assert codes(*responses).count("65") == 25


async def test_windows_are_rebuilt_from_postgres_after_a_cache_loss(w: World) -> None:
    card = await w.ledger.card(100_000)
    await velocity(w, card, rule("hourly", 3_600, approvals_max=3, amount_max_minor=5_000))
    assert codes(await w.ledger.authorize(card, 2_000), await w.ledger.authorize(card, 2_000)) == [
        "00", "00",
    ]  # fmt: skip
    assert w.app.redis is not None
    await w.app.redis.delete(w.app.cache.keys.state(card.account_id))
    assert (await w.ledger.authorize(card, 1_001)).response_code == "61"
    assert (await w.ledger.authorize(card, 1_000)).response_code == "00"
    assert (await w.ledger.authorize(card, 1)).response_code == "61"


@pytest.mark.parametrize(
    "bad",
    [
        rule("x", 59, approvals_max=1),
        rule("x", 610, approvals_max=1),
        rule("x", 600),
        rule("x", 600, approvals_max=-1),
        la.VelocityRule(name="x", window_s=600, amount_max_minor=1),
        rule("bad name", 600, approvals_max=1),
    ],
)
async def test_malformed_velocity_rules_are_refused(w: World, bad: la.VelocityRule) -> None:
    card = await w.ledger.card(100)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await velocity(w, card, bad)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
