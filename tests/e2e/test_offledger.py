"""Off-ledger switching end to end: a real reference client over gRPC, real stores, and a
clock the tests control (the circuit breaker and the outbox's retries follow it)."""

from __future__ import annotations

import asyncio
import functools
import http.server
import json
import ssl
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TypedDict, Unpack

import grpc
import pytest

from authswitch.app import Application
from authswitch.domain.signatures import SIGNATURE_HEADER, verify
from authswitch.reference_client import ReferenceClient, ReferenceLedger, serve_reference_client
from authswitch.service.clock import ManualClock
from authswitch.v1 import authorization_pb2 as pb
from authswitch.v1 import common_pb2 as c
from authswitch.v1 import decision_pb2 as dpb
from authswitch.v1 import ledger_admin_pb2 as la
from tests.conftest import TEST_KEYS, settings_for
from tests.support.certs import TestCA
from tests.support.ledger import IssuedCard, Ledger
from tests.support.stores import Stores

pytestmark = pytest.mark.timeout(120)

WEBHOOK_SECRET = b"w" * 32


@dataclass
class Webhook:
    """An HTTPS server that records what it is sent; it can be told to fail."""

    url: str
    ca_file: Path
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    failing: bool = False


@dataclass
class World:
    app: Application
    ledger: Ledger
    clock: ManualClock
    client: ReferenceClient
    client_target: str
    webhook: Webhook
    restart: Callable[[], Awaitable[None]]


@pytest.fixture(scope="module")
def webhook_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Webhook]:
    directory = tmp_path_factory.mktemp("webhook")
    ca = TestCA()
    cert, key = ca.issue("localhost", server=True).write(directory, "server")
    ca_file = directory / "ca.crt"
    ca_file.write_bytes(ca.cert_pem)
    hook = Webhook(url="", ca_file=ca_file)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if hook.failing:
                self.send_response(503)
            else:
                hook.received.append((dict(self.headers.items()), body))
                self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hook.url = f"https://127.0.0.1:{server.server_address[1]}/hooks/authswitch"
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
async def world(stores: Stores, webhook_server: Webhook) -> AsyncIterator[World]:
    clock = ManualClock()
    client = ReferenceClient(ReferenceLedger(opening_minor=10_000), token="client-token")
    client_server, port = await serve_reference_client(client, "127.0.0.1:0")
    overrides = {
        "redis_key_prefix": stores.redis_prefix + "o",
        "outbox_poll_ms": 50,
        "outbox_backoff_initial_ms": 1_000,
        "webhook_ca_file": str(webhook_server.ca_file),
    }
    import os

    os.environ["AUTHSWITCH_SECRET_CLIENT_TOKEN"] = "client-token"
    os.environ["AUTHSWITCH_SECRET_WEBHOOK_KEY"] = WEBHOOK_SECRET.decode()
    holder: dict[str, Application] = {}

    async def start() -> None:
        app = Application(settings_for(stores, **overrides), clock=clock, keys=TEST_KEYS)
        await app.start()
        holder["app"] = app

    async def restart() -> None:
        await holder["app"].stop()
        await start()
        current.app = holder["app"]
        current.ledger.channel = grpc.aio.insecure_channel(f"127.0.0.1:{current.app.grpc_port}")
        current.ledger.__init__(current.ledger.channel)  # type: ignore[misc]

    await start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{holder['app'].grpc_port}")
    current = World(
        holder["app"], Ledger(channel), clock, client, f"127.0.0.1:{port}", webhook_server, restart
    )
    try:
        yield current
    finally:
        await holder["app"].stop()
        await client_server.stop(1)
        os.environ.pop("AUTHSWITCH_SECRET_CLIENT_TOKEN", None)
        os.environ.pop("AUTHSWITCH_SECRET_WEBHOOK_KEY", None)


@pytest.fixture
def w(world: World) -> World:
    world.client.outage = False
    world.client.latency_ms = 0
    world.client.answer_override = None
    return world


class StandInLimits(TypedDict, total=False):
    """The stand-in limits of a program's routing (SetProgramRoutingRequest fields)."""

    stand_in_asset: str
    stand_in_transaction_max_minor: int
    stand_in_daily_max_minor: int


async def off_ledger_card(
    w: World, *, stand_in: la.StandInPolicy.ValueType = la.STAND_IN_POLICY_DECLINE,
    deadline_ms: int = 400, breaker_failures: int = 3,
    sinks: tuple[la.NotificationSink.ValueType, ...] = (la.NOTIFICATION_SINK_CLIENT,),
    balance_minor: int = 0, **routing: Unpack[StandInLimits],
) -> IssuedCard:  # fmt: skip
    program_id = await w.ledger.program(c.LEDGER_MODE_OFF_LEDGER)
    await w.ledger.admin.SetProgramRouting(
        la.SetProgramRoutingRequest(
            program_id=program_id, target=w.client_target, tls=la.CLIENT_TLS_NONE,
            token_secret="client-token", deadline_ms=deadline_ms, stand_in=stand_in,
            breaker_failures=breaker_failures, breaker_open_ms=5_000, **routing,
        )
    )  # fmt: skip
    for sink in sinks:
        await w.ledger.admin.SetNotificationSink(
            la.SetNotificationSinkRequest(program_id=program_id, sink=sink)
            if sink == la.NOTIFICATION_SINK_CLIENT
            else la.SetNotificationSinkRequest(
                program_id=program_id, sink=sink, url=w.webhook.url, secret_name="webhook-key"
            )
        )
    product_id = await w.ledger.product(program_id)
    account_id = await w.ledger.account(product_id)
    if balance_minor:
        await w.ledger.credit(account_id, balance_minor)
    return await w.ledger.card(account_id=account_id)


async def client_call(w: World, message_id: str) -> dict[str, object]:
    assert w.app.pool is not None
    row = await w.app.pool.fetchrow(
        "SELECT outcome, stand_in_reason, client_decision FROM client_calls WHERE message_id = $1",
        message_id,
    )
    assert row is not None
    return dict(row)


async def eventually(check: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.05)


# -- forwarded decisions ---------------------------------------------------------------------


async def test_forwarded_approve_partial_and_decline(w: World) -> None:
    card = await off_ledger_card(w)
    approve = w.ledger.request(card, 4_000)
    response = await w.ledger.auth.Authorize(approve)
    assert (response.response_code, response.stand_in) == ("00", False)
    assert await client_call(w, approve.message_id) == {
        "outcome": "CLIENT", "stand_in_reason": "", "client_decision": "APPROVED",
    }  # fmt: skip
    asked = w.client.decisions[-1]
    assert asked.account_id == card.account_id
    assert asked.pan_last_four == card.pan[-4:]
    assert all(check.passed for check in asked.core_checks)
    assert 0 < asked.time_left_ms <= 400
    partial = await w.ledger.authorize(card, 9_000, partial=True)  # 6,000 left at the client
    assert (partial.response_code, partial.approved_amount.amount_minor) == ("10", 6_000)
    decline = await w.ledger.authorize(card, 1)
    assert (decline.response_code, decline.reason) == ("51", pb.REASON_CLIENT_DECLINED)
    # authswitch keeps no balance for an off-ledger program: nothing was held here.
    assert await w.ledger.figures(card.account_id) == (0, 0, 0)


async def test_core_checks_run_first_and_the_client_is_not_asked(w: World) -> None:
    card = await off_ledger_card(w)
    asked = len(w.client.decisions)
    await w.ledger.admin.ChangeCardStatus(
        la.ChangeCardStatusRequest(card_id=card.card_id, status=c.CARD_STATUS_LOST)
    )
    assert (await w.ledger.authorize(card, 100)).response_code == "41"
    wrong_cvv = f"{(int(card.cvv2) + 1) % 1000:03d}"
    assert (await w.ledger.authorize(card, 100, cvv2=wrong_cvv)).response_code == "41"
    assert len(w.client.decisions) == asked


async def test_an_invalid_answer_is_not_trusted(w: World) -> None:
    card = await off_ledger_card(w)
    w.client.answer_override = dpb.DecideResponse(
        decision=dpb.CLIENT_DECISION_DECLINE,
        response_code="00",  # a "decline" that approves
    )
    request = w.ledger.request(card, 100)
    response = await w.ledger.auth.Authorize(request)
    assert (response.response_code, response.stand_in) == ("91", True)
    assert response.stand_in_reason == pb.STAND_IN_REASON_INVALID_ANSWER
    w.client.answer_override = dpb.DecideResponse(
        decision=dpb.CLIENT_DECISION_PARTIAL,  # partial when the acquirer allows none
        approved_amount=c.Money(amount_minor=50, asset="GBP"),
    )
    assert (
        await w.ledger.authorize(card, 100)
    ).stand_in_reason == pb.STAND_IN_REASON_INVALID_ANSWER


# -- stand-in --------------------------------------------------------------------------------


async def test_a_slow_client_is_stood_in_for_within_the_deadline(w: World) -> None:
    card = await off_ledger_card(w, deadline_ms=300)
    w.client.latency_ms = 2_000
    request = w.ledger.request(card, 100)
    # The gateway gives authswitch the deadline plus a second: a switch that waited for the
    # slow client would miss it and this call would fail.
    response = await w.ledger.auth.Authorize(request, timeout=1.3)
    assert (response.response_code, response.stand_in) == ("91", True)
    assert response.stand_in_reason == pb.STAND_IN_REASON_TIMEOUT
    assert (await client_call(w, request.message_id))["stand_in_reason"] == "TIMEOUT"


async def test_the_client_gets_the_deadline_less_the_answer_reserve(w: World) -> None:
    """The client is told how long it has: what is left of the programme's deadline, or of
    the gateway's own when that is shorter, less the reserve authswitch keeps for answering
    without it (AUTHSWITCH_OFF_LEDGER_ANSWER_RESERVE_MS)."""
    reserve_ms = w.app.settings.off_ledger_answer_reserve_ms
    card = await off_ledger_card(w, deadline_ms=3_000)
    w.client.latency_ms = 5_000
    for gateway_timeout_s, bound_ms in ((10.0, 3_000), (1.0, 1_000)):
        request = w.ledger.request(card, 100)
        call = asyncio.ensure_future(w.ledger.auth.Authorize(request, timeout=gateway_timeout_s))
        for _ in range(100):
            seen = [r for r in w.client.received if r.message_id == request.message_id]
            if seen:
                break
            await asyncio.sleep(0.02)
        assert seen, "the client was not asked"
        # Slack for the gateway's deadline as the server learns it (grpc-timeout is sent
        # rounded up, and the two clocks are read a moment apart).
        assert 0 < seen[0].time_left_ms <= bound_ms - reserve_ms + 20
        response = await call
        assert (response.response_code, response.stand_in) == ("91", True)


async def test_breaker_opens_on_failures_then_closes_on_recovery(w: World) -> None:
    card = await off_ledger_card(w, breaker_failures=3)
    w.client.outage = True
    reasons = [(await w.ledger.authorize(card, 100)).stand_in_reason for _ in range(3)]
    assert reasons == [pb.STAND_IN_REASON_UNAVAILABLE] * 3
    asked = len(w.client.decisions)
    open_ = await w.ledger.authorize(card, 100)
    assert (open_.response_code, open_.stand_in_reason) == ("91", pb.STAND_IN_REASON_BREAKER_OPEN)
    w.client.outage = False
    still_open = await w.ledger.authorize(card, 100)
    assert still_open.stand_in_reason == pb.STAND_IN_REASON_BREAKER_OPEN
    assert len(w.client.decisions) == asked  # while open, the client is not asked at all
    w.clock.advance(timedelta(seconds=6))  # past breaker_open_ms: one probe goes through
    probe = await w.ledger.authorize(card, 100)
    assert (probe.response_code, probe.stand_in) == ("00", False)
    after = await w.ledger.authorize(card, 100)
    assert (after.response_code, after.stand_in) == ("00", False)


async def test_stand_in_approvals_within_limits_and_their_advices(w: World) -> None:
    card = await off_ledger_card(
        w, stand_in=la.STAND_IN_POLICY_APPROVE, stand_in_asset="GBP",
        stand_in_transaction_max_minor=2_000, stand_in_daily_max_minor=3_000,
        breaker_failures=100,
    )  # fmt: skip
    w.client.outage = True
    first = w.ledger.request(card, 1_500)
    assert (await w.ledger.auth.Authorize(first)).response_code == "00"
    too_big = await w.ledger.authorize(card, 2_001)
    assert too_big.response_code == "91"
    second = w.ledger.request(card, 1_500)
    response = await w.ledger.auth.Authorize(second)
    assert (response.response_code, response.stand_in) == ("00", True)
    over_day = await w.ledger.authorize(card, 1)
    assert over_day.response_code == "91"  # 3,000 a day used up
    # A retransmission of a stand-in approval replays it; it is not a new stand-in.
    assert (await w.ledger.auth.Authorize(second)).response_code == "00"
    # The client comes back: every stand-in approval reaches it as an advice, exactly once
    # per notification id (it may be delivered more than once, never as another id).
    w.client.outage = False
    w.clock.advance(timedelta(minutes=5))  # past every retry's backoff
    expected = {first.message_id, second.message_id}

    def advised() -> set[str]:
        return {
            str(n.payload["message_id"])
            for n in w.client.applied.values()
            if n.kind == "STAND_IN_ADVICE" and n.account_id == card.account_id
        }

    await eventually(lambda: advised() == expected, "both advices delivered")
    ids = [n.notification_id for n in w.client.applied.values() if n.kind == "STAND_IN_ADVICE"
           and n.account_id == card.account_id]  # fmt: skip
    assert len(ids) == 2
    sequences = [n.sequence for n in w.client.notifications if n.account_id == card.account_id]
    assert sequences == sorted(sequences)  # in order per account
    # The client's ledger now holds both, from the advices alone.
    assert w.client.ledger.available(card.account_id) == 10_000 - 3_000


async def test_shadow_stand_in_decides_from_the_shadow_balance(w: World) -> None:
    card = await off_ledger_card(
        w, stand_in=la.STAND_IN_POLICY_SHADOW, balance_minor=2_000, breaker_failures=100
    )
    w.client.outage = True
    first = await w.ledger.authorize(card, 1_500)
    assert (first.response_code, first.stand_in) == ("00", True)
    assert (await w.ledger.authorize(card, 600)).response_code == "51"
    assert await w.ledger.figures(card.account_id) == (2_000, 500, 1_500)
    # With the client back, its approvals are mirrored in the shadow ledger too.
    w.client.outage = False
    assert (await w.ledger.authorize(card, 300)).stand_in is False
    assert await w.ledger.figures(card.account_id) == (2_000, 200, 1_800)


# -- notifications ---------------------------------------------------------------------------


async def test_settlement_messages_are_forwarded_as_notifications(w: World) -> None:
    card = await off_ledger_card(w)
    auth = w.ledger.request(card, 1_000)
    assert (await w.ledger.auth.Authorize(auth)).response_code == "00"
    reversal = await w.ledger.reverse(auth.message_id, 400)
    clearing = await w.ledger.clear(card, auth.network_reference, 600)
    refund = await w.ledger.refund(card, 50)
    assert [r.response_code for r in (reversal, clearing, refund)] == ["00", "00", "00"]

    def kinds() -> list[str]:
        return [n.kind for n in w.client.applied.values() if n.account_id == card.account_id]

    await eventually(lambda: kinds() == ["REVERSAL", "CLEARING", "REFUND"], "forwarded")
    clearing_note = next(n for n in w.client.applied.values() if n.kind == "CLEARING"
                         and n.account_id == card.account_id)  # fmt: skip
    assert clearing_note.payload["network_reference"] == auth.network_reference
    # The client's ledger followed: 1,000 held, 400 reversed, 600 cleared, 50 refunded.
    assert w.client.ledger.actual(card.account_id) == 10_000 - 600 + 50
    assert w.client.ledger.available(card.account_id) == 10_000 - 600 + 50


async def test_admin_notifications(w: World) -> None:
    card = await off_ledger_card(w)
    await w.ledger.admin.ChangeCardStatus(
        la.ChangeCardStatusRequest(
            card_id=card.card_id, status=c.CARD_STATUS_BLOCKED, reason="fraud"
        )
    )
    for _ in range(3):
        await w.ledger.authorize(card, 100, pin="0000")
    await w.ledger.admin.ChangeCardStatus(
        la.ChangeCardStatusRequest(card_id=card.card_id, status=c.CARD_STATUS_ACTIVE)
    )
    for _ in range(3):
        await w.ledger.authorize(card, 100, pin="0000")
    old = await w.ledger.card(account_id=card.account_id, expiry="2001")
    assert await w.app.admin.expire_cards() >= 1

    def kinds() -> list[str]:
        return [n.kind for n in w.client.applied.values() if n.account_id == card.account_id]

    await eventually(
        lambda: kinds() == ["CARD_STATUS_CHANGED", "CARD_STATUS_CHANGED", "PIN_TRIES_EXCEEDED",
                            "CARD_EXPIRED"],
        "admin notifications",
    )  # fmt: skip
    expired = next(n for n in w.client.applied.values() if n.kind == "CARD_EXPIRED"
                   and n.account_id == card.account_id)  # fmt: skip
    assert expired.card_id == old.card_id


async def test_webhook_deliveries_are_signed(w: World) -> None:
    card = await off_ledger_card(w, sinks=(la.NOTIFICATION_SINK_WEBHOOK,))
    before = len(w.webhook.received)
    auth = w.ledger.request(card, 1_000)
    await w.ledger.auth.Authorize(auth)
    await w.ledger.reverse(auth.message_id)
    await eventually(lambda: len(w.webhook.received) > before, "a webhook delivery")
    headers, body = w.webhook.received[-1]
    document = json.loads(body)
    assert document["kind"] == "REVERSAL"
    assert document["account_id"] == card.account_id
    now = int(w.clock.now().timestamp())
    signature = headers[SIGNATURE_HEADER]
    assert verify(WEBHOOK_SECRET, signature, body, now=now)
    tampered = body.replace(b"REVERSAL", b"REFUND__")
    assert not verify(WEBHOOK_SECRET, signature, tampered, now=now)
    assert not verify(b"x" * 32, signature, body, now=now)
    assert not verify(WEBHOOK_SECRET, signature, body, now=now + 3_600)  # replayed later


async def test_webhook_retries_until_it_answers(w: World) -> None:
    card = await off_ledger_card(w, sinks=(la.NOTIFICATION_SINK_WEBHOOK,))
    w.webhook.failing = True
    await w.ledger.refund(card, 10)
    assert w.app.pool is not None

    async def failed_once() -> bool:
        value = await w.app.pool.fetchval(  # type: ignore[union-attr]
            "SELECT max(d.last_error) FROM notification_deliveries d JOIN notifications n "
            "ON n.id = d.notification_id WHERE n.account_id = $1", card.account_id,
        )  # fmt: skip
        return bool(value)

    for _ in range(400):
        if await failed_once():
            break
        await asyncio.sleep(0.05)
    w.webhook.failing = False
    before = len(w.webhook.received)
    w.clock.advance(timedelta(minutes=5))
    await eventually(lambda: len(w.webhook.received) > before, "the retried delivery")
    headers, _ = w.webhook.received[-1]
    assert int(headers["X-Authswitch-Attempt"]) >= 2


async def test_dead_letters_and_redrive(w: World) -> None:
    card = await off_ledger_card(w)
    w.client.outage = True
    await w.ledger.refund(card, 10)
    w.clock.advance(timedelta(days=2))  # past the dead-letter horizon: the next failure kills it
    listed: list[la.NotificationDelivery] = []
    for _ in range(400):
        program_id = await _program_of(w, card)
        listed = list(
            (await w.ledger.admin.ListNotifications(
                la.ListNotificationsRequest(program_id=program_id, status=la.DELIVERY_STATUS_DEAD)
            )).deliveries
        )  # fmt: skip
        if listed:
            break
        await asyncio.sleep(0.05)
    assert listed, "the notification never died"
    w.client.outage = False
    redriven = await w.ledger.admin.RedriveNotifications(
        la.RedriveNotificationsRequest(program_id=program_id)
    )
    assert redriven.redriven >= 1
    notification_id = listed[0].notification_id
    await eventually(lambda: notification_id in w.client.applied, "the redriven delivery")


async def _program_of(w: World, card: IssuedCard) -> str:
    assert w.app.pool is not None
    return str(
        await w.app.pool.fetchval("SELECT program_id::text FROM cards WHERE id = $1", card.card_id)
    )


async def test_the_outbox_survives_a_restart(w: World) -> None:
    card = await off_ledger_card(
        w, stand_in=la.STAND_IN_POLICY_APPROVE, stand_in_asset="GBP",
        stand_in_transaction_max_minor=5_000, stand_in_daily_max_minor=50_000,
        breaker_failures=100,
    )  # fmt: skip
    w.client.outage = True
    approvals = [w.ledger.request(card, 100) for _ in range(3)]
    for request in approvals:
        assert (await w.ledger.auth.Authorize(request)).stand_in
    await w.restart()
    w.client.outage = False
    w.clock.advance(timedelta(minutes=5))
    expected = {r.message_id for r in approvals}

    def advised() -> set[str]:
        return {
            str(n.payload["message_id"]) for n in w.client.applied.values()
            if n.kind == "STAND_IN_ADVICE" and n.account_id == card.account_id
        }  # fmt: skip

    await eventually(lambda: advised() == expected, "advices after the restart")


async def test_routing_validation(w: World) -> None:
    program_id = await w.ledger.program(c.LEDGER_MODE_OFF_LEDGER)
    bad = [
        {"target": "", "deadline_ms": 100},
        {"target": "h:1", "deadline_ms": 5},
        {"target": "h:1", "tls": la.CLIENT_TLS_MTLS},  # no certificate
        {"target": "h:1", "token_secret": "bad name!"},
        {"target": "h:1", "stand_in": la.STAND_IN_POLICY_APPROVE},  # no stand-in asset
    ]
    for fields in bad:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await w.ledger.admin.SetProgramRouting(
                la.SetProgramRoutingRequest(program_id=program_id, **fields)  # type: ignore[arg-type]
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, fields
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await w.ledger.admin.SetNotificationSink(
            la.SetNotificationSinkRequest(program_id=program_id, sink=la.NOTIFICATION_SINK_CLIENT)
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_unconfigured_off_ledger_program_stands_in(w: World) -> None:
    program_id = await w.ledger.program(c.LEDGER_MODE_OFF_LEDGER)
    product_id = await w.ledger.product(program_id)
    card = await w.ledger.card(account_id=await w.ledger.account(product_id))
    response = await w.ledger.authorize(card, 100)
    assert (response.response_code, response.stand_in_reason) == (
        "91", pb.STAND_IN_REASON_NOT_CONFIGURED,
    )  # fmt: skip


# -- the reference client's ledger follows authswitch's shadow ledger exactly ----------------


async def _shadow_program(w: World, *, opening_minor: int) -> tuple[IssuedCard, str]:
    """A SHADOW program with a 0.25 authorisation fee and a 0.10 clearing fee on purchases,
    a card whose account holds ``opening_minor`` in authswitch and at the client."""
    program_id = await w.ledger.program(c.LEDGER_MODE_OFF_LEDGER)
    await w.ledger.admin.SetProgramRouting(
        la.SetProgramRoutingRequest(
            program_id=program_id, target=w.client_target, tls=la.CLIENT_TLS_NONE,
            token_secret="client-token", deadline_ms=400, stand_in=la.STAND_IN_POLICY_SHADOW,
            breaker_failures=100, breaker_open_ms=5_000,
        )
    )  # fmt: skip
    await w.ledger.admin.SetNotificationSink(
        la.SetNotificationSinkRequest(program_id=program_id, sink=la.NOTIFICATION_SINK_CLIENT)
    )
    product_id = await w.ledger.product(program_id)
    purchases = [c.TRANSACTION_TYPE_PURCHASE]
    await w.ledger.fees(
        product_id,
        la.FeeRule(name="auth", stage=la.FEE_STAGE_AUTHORIZATION, asset="GBP", flat_minor=25,
                   transaction_types=purchases),
        la.FeeRule(name="clearing", stage=la.FEE_STAGE_CLEARING, asset="GBP", flat_minor=10,
                   transaction_types=purchases),
    )  # fmt: skip
    account_id = await w.ledger.account(product_id)
    await w.ledger.credit(account_id, opening_minor)
    w.client.ledger.open_account(account_id, "GBP", opening_minor)
    return await w.ledger.card(account_id=account_id), program_id


async def _in_step(w: World, card: IssuedCard, program_id: str, what: str) -> None:
    """Wait until every notification of the program is delivered, then compare the client's
    ledger with the shadow ledger: actual, available and authorised (held)."""
    assert w.app.pool is not None
    deadline = time.monotonic() + 20
    while await w.app.pool.fetchval(
        """SELECT count(*) FROM notification_deliveries
           WHERE program_id = $1 AND status <> 'DELIVERED'""",
        program_id,
    ):
        assert time.monotonic() < deadline, f"notifications not delivered after {what}"
        await asyncio.sleep(0.05)
    ledger = w.client.ledger
    client = (
        ledger.actual(card.account_id, "GBP"), ledger.available(card.account_id, "GBP"),
        ledger.held(card.account_id, "GBP"),
    )  # fmt: skip
    assert client == await w.ledger.figures(card.account_id), what


async def test_the_reference_client_keeps_the_shadow_ledger_exactly(w: World) -> None:
    card, program_id = await _shadow_program(w, opening_minor=20_000)
    step = functools.partial(_in_step, w, card, program_id)
    await step("opening")
    # The client decides, with the authorisation fee it is told of, and the shadow mirrors it.
    first = w.ledger.request(card, 5_000)
    assert (await w.ledger.auth.Authorize(first)).response_code == "00"
    await step("approved by the client, fee held")
    partial = await w.ledger.clear(card, first.network_reference, 2_000, final=False)
    assert (partial.response_code, partial.released.amount_minor) == ("00", 2_000)
    await step("partial clearing, with its clearing fee")
    final = await w.ledger.clear(card, first.network_reference, 3_100)
    assert final.response_code == "00"
    await step("final clearing, for more than was left held")
    second = w.ledger.request(card, 3_000)
    assert (await w.ledger.auth.Authorize(second)).response_code == "00"
    assert (await w.ledger.reverse(second.message_id, 1_000)).released.amount_minor == 1_000
    await step("partial reversal")
    assert (await w.ledger.reverse(second.message_id)).released.amount_minor == 2_025
    await step("full reversal")
    # The client is down: the shadow ledger stands in, the fee held with the approval.
    w.client.outage = True
    stood_in = w.ledger.request(card, 2_000)
    answer = await w.ledger.auth.Authorize(stood_in)
    assert (answer.response_code, answer.stand_in) == ("00", True)
    w.client.outage = False
    w.clock.advance(timedelta(minutes=5))  # past the failed deliveries' backoff
    await step("stand-in approval, advised with its fee")
    assert (await w.ledger.clear(card, stood_in.network_reference, 2_000)).response_code == "00"
    await step("clearing of the stand-in")
    # The network's own stand-in (0120), then an advice lowering an approval.
    assert (await w.ledger.advise(card, 1_500)).response_code == "00"
    await step("advice")
    fourth = w.ledger.request(card, 4_000)
    assert (await w.ledger.auth.Authorize(fourth)).response_code == "00"
    lowered = await w.ledger.advise(card, 3_500, original_message_id=fourth.message_id)
    assert lowered.held.amount_minor == 3_500 - 4_025
    await step("advice for less than was authorised")
    refund = await w.ledger.refund(card, 500)
    assert refund.response_code == "00"
    await step("refund")
    # Disputes of the final clearing: provisional credit, chargeback, cardholder wins; and
    # one without provisional credit the merchant wins after a representment.
    assert w.app.pool is not None
    clearing_id = await w.app.pool.fetchval(
        """SELECT message_id FROM decisions WHERE kind = 'CLEARING' AND account_id = $1
           ORDER BY created_at, message_id LIMIT 1 OFFSET 1""",
        card.account_id,
    )
    won = (await w.ledger.open_dispute(clearing_id, 1_000, provisional=True)).dispute
    assert (await w.ledger.chargeback(won)).response_code == "00"
    await w.ledger.resolve_dispute(won.dispute_id, la.DISPUTE_OUTCOME_CARDHOLDER_WON)
    lost = (await w.ledger.open_dispute(clearing_id, 800)).dispute
    assert (await w.ledger.chargeback(lost)).response_code == "00"
    assert (await w.ledger.represent(lost)).response_code == "00"
    await w.ledger.resolve_dispute(lost.dispute_id, la.DISPUTE_OUTCOME_CARDHOLDER_WON)
    await step("disputes")
    # An operator removes the stale advice hold by hand.
    holds = await w.ledger.admin.ListHolds(
        la.ListHoldsRequest(account_id=card.account_id, open_only=True)
    )
    advice_hold = next(h for h in holds.holds if h.original.amount_minor == 1_500)
    await w.ledger.admin.ReleaseHold(
        la.ReleaseHoldRequest(
            hold_id=advice_hold.hold_id, reason="stale", idempotency_key=str(uuid.uuid4())
        )
    )
    await step("manual release")
    # Every kind of money notification was applied, each once.
    kinds = {n.kind for n in w.client.applied.values() if n.account_id == card.account_id}
    assert kinds >= {
        "FEE", "CLEARING", "REVERSAL", "STAND_IN_ADVICE", "ADVICE", "REFUND", "DISPUTE",
        "RELEASE",
    }  # fmt: skip
    actual, _, held = await w.ledger.figures(card.account_id)
    assert held == 3_500  # the lowered approval is all that is still held
    assert actual == 20_000 - 2_010 - 3_110 - 2_010 + 500 + 1_000 + 800


@pytest.mark.xfail(
    strict=True,
    reason="issue 17 item 5 (hot path): a shadow stand-in advice carries the requested amount "
    "and no response code, so a partial approval is advised as the whole amount",
)
async def test_a_partial_shadow_stand_in_is_followed_exactly(w: World) -> None:
    card, program_id = await _shadow_program(w, opening_minor=2_000)
    w.client.outage = True
    partial = await w.ledger.authorize(card, 5_000, partial=True)
    assert (partial.response_code, partial.stand_in) == ("10", True)
    w.client.outage = False
    w.clock.advance(timedelta(minutes=5))
    await _in_step(w, card, program_id, "partial stand-in approval")


async def test_the_client_receives_the_network_data(w: World) -> None:
    """Issue 18, item 4: the point-of-sale, 3-D Secure and risk data reach the client's
    DecideRequest as the network sent them."""
    card = await off_ledger_card(w)
    request = w.ledger.request(card, 1_500)
    request.merchant.merchant_id = "MID000123"
    request.network_data.CopyFrom(
        pb.NetworkData(
            pos_entry_mode=pb.POS_ENTRY_MODE_CREDENTIAL_ON_FILE,
            terminal_type=pb.TERMINAL_TYPE_ECOMMERCE,
            card_present=pb.PRESENCE_NOT_PRESENT,
            cardholder_present=pb.PRESENCE_NOT_PRESENT,
            three_ds=pb.ThreeDSecure(result=pb.THREE_DS_RESULT_ATTEMPTED, eci="06"),
            recurring=True,
            card_on_file=True,
            merchant_initiated=True,
            avs_result=pb.AVS_RESULT_POSTAL_CODE_ONLY,
        )
    )
    request.network_data.network_risk_score = 0
    assert (await w.ledger.auth.Authorize(request)).response_code == "00"
    sent = next(d for d in w.client.decisions if d.message_id == request.message_id)
    assert sent.network_data == request.network_data
    assert sent.network_data.HasField("network_risk_score")
    assert sent.merchant.merchant_id == "MID000123"
    plain = w.ledger.request(card, 100)
    assert (await w.ledger.auth.Authorize(plain)).response_code == "00"
    sent = next(d for d in w.client.decisions if d.message_id == plain.message_id)
    assert not sent.HasField("network_data")


async def test_spend_controls_decline_before_the_client_is_asked(w: World) -> None:
    """Issue 18, item 1: a card's stateless spend controls are core checks off-ledger too
    (57, naming the control); the client is not asked."""
    card = await off_ledger_card(w)
    await w.ledger.admin.SetSpendControls(
        la.SetSpendControlsRequest(
            subject=la.CONTROL_SUBJECT_CARD, subject_id=card.card_id,
            controls=la.SpendControls(blocked_mccs=["7995"]),
        )
    )  # fmt: skip
    asked = len(w.client.received)
    declined = await w.ledger.authorize(card, 1_000, mcc="7995")
    assert (declined.response_code, declined.detail) == (
        "57", "card spend control: merchant category 7995 is blocked",
    )  # fmt: skip
    assert len(w.client.received) == asked
    assert (await w.ledger.authorize(card, 1_000)).response_code == "00"
    assert len(w.client.received) == asked + 1


async def test_an_original_credit_reaches_the_client_as_a_notification(w: World) -> None:
    """Issue 18, item 6: off-ledger, an original credit is acknowledged and forwarded (kind
    CREDIT); the reference client credits its ledger."""
    card = await off_ledger_card(w)
    before = w.client.ledger.available(card.account_id, "GBP")
    response = await w.ledger.auth.Credit(
        pb.CreditRequest(
            source="visa", message_id=str(uuid.uuid4()), pan=card.pan,
            billing_amount=c.Money(amount_minor=700, asset="GBP"),
            credit_type=pb.CREDIT_TYPE_DISBURSEMENT,
        )
    )  # fmt: skip
    assert response.response_code == "00"
    await eventually(
        lambda: w.client.ledger.available(card.account_id, "GBP") == before + 700,
        "the client credits its ledger",
    )
