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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypedDict, Unpack

import grpc
import pytest
from prometheus_client import REGISTRY

from authswitch.app import Application
from authswitch.demo import demo_pan
from authswitch.domain.offledger import AnswerReserve
from authswitch.domain.signatures import SIGNATURE_HEADER, verify
from authswitch.reference_client import ReferenceClient, ReferenceLedger, serve_reference_client
from authswitch.service.clock import ManualClock
from authswitch.v1 import authorization_pb2 as pb
from authswitch.v1 import common_pb2 as c
from authswitch.v1 import decision_pb2 as dpb
from authswitch.v1 import ledger_admin_pb2 as la
from tests.conftest import TEST_KEYS, settings_for
from tests.support.certs import TestCA
from tests.support.ledger import ISSUED_PANS, IssuedCard, Ledger, TransactionKind
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
    balance_minor: int = 0, limits: Sequence[dict[str, Any]] = (),
    fees: Sequence[la.FeeRule] = (), product: dict[str, Any] | None = None,
    **routing: Unpack[StandInLimits],
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
    product_id = await w.ledger.product(program_id, **(product or {}))
    for limit in limits:
        await w.ledger.limit(product_id, **limit)
    if fees:
        await w.ledger.fees(product_id, *fees)
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


async def test_a_token_payment_tells_the_client_its_cards_last_four(w: World) -> None:
    """The network sends the token (a device wallet's DPAN), not the PAN: the client still
    learns the last four digits of the card it issued."""
    card = await off_ledger_card(w)
    token = demo_pan("48950000")
    while token[-4:] == card.pan[-4:]:  # the digits must tell the two apart
        token = demo_pan("48950000")
    ISSUED_PANS.append(token)  # the session's log check looks for it too
    provisioned = await w.ledger.auth.ProvisionToken(
        pb.ProvisionTokenRequest(
            pan=card.pan, expiry=card.expiry, cvv2=card.cvv2, token=token,
            token_expiry="3106", token_requestor_id="40010030273",
        )
    )  # fmt: skip
    assert provisioned.status == pb.TOKEN_STATUS_ACTIVE
    request = w.ledger.request(card, 1_500, pan="", cvv2="", expiry="3106")
    request.token = token
    response = await w.ledger.auth.Authorize(request)
    assert response.response_code == "00"
    asked = w.client.decisions[-1]
    assert asked.message_id == request.message_id
    assert (asked.card_id, asked.pan_last_four) == (card.card_id, card.pan[-4:])


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
    # A decision number the protocol does not know: stood in for, and recorded by number.
    w.client.answer_override = dpb.DecideResponse(decision=7, response_code="00")  # type: ignore[arg-type]
    unknown = w.ledger.request(card, 100)
    response = await w.ledger.auth.Authorize(unknown)
    assert (response.response_code, response.stand_in_reason) == (
        "91", pb.STAND_IN_REASON_INVALID_ANSWER,
    )  # fmt: skip
    assert await client_call(w, unknown.message_id) == {
        "outcome": "STAND_IN", "stand_in_reason": "INVALID_ANSWER", "client_decision": "7",
    }  # fmt: skip


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


async def asked(w: World, message_id: str) -> list[Any]:
    """What the client received for ``message_id``, once it has (within 2 s)."""
    for _ in range(100):
        seen = [r for r in w.client.received if r.message_id == message_id]
        if seen:
            return seen
        await asyncio.sleep(0.02)
    raise AssertionError("the client was not asked")


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
        seen = await asked(w, request.message_id)
        # Slack for the gateway's deadline as the server learns it (grpc-timeout is sent
        # rounded up, and the two clocks are read a moment apart).
        assert 0 < seen[0].time_left_ms <= bound_ms - reserve_ms + 20
        response = await call
        assert (response.response_code, response.stand_in) == ("91", True)


async def test_stand_ins_that_took_long_past_the_budget_raise_the_reserve(w: World) -> None:
    """A process keeps back what its recent stand-ins needed when that is more than the
    setting: here the setting is 0, so any time a stand-in takes after the client's budget
    ran out (its timer, its commit) is kept back from the next client."""
    service = w.app.offledger
    assert service is not None
    setting = service.reserve
    service.reserve = AnswerReserve(0)
    try:
        card = await off_ledger_card(w, deadline_ms=400, breaker_failures=1_000)
        w.client.latency_ms = 5_000
        stood_in = await asyncio.gather(
            *(w.ledger.authorize(card, 100) for _ in range(AnswerReserve.EVERY))
        )
        assert {r.stand_in_reason for r in stood_in} == {pb.STAND_IN_REASON_TIMEOUT}
        observed = service.reserve.observed_ms
        assert 0 < observed <= 200
        request = w.ledger.request(card, 100)
        call = asyncio.ensure_future(w.ledger.auth.Authorize(request, timeout=10.0))
        seen = await asked(w, request.message_id)
        assert 0 < seen[0].time_left_ms <= 400 - observed
        assert (await call).stand_in_reason == pb.STAND_IN_REASON_TIMEOUT
        shown = REGISTRY.get_sample_value("authswitch_client_answer_reserve_seconds")
        assert shown == observed / 1000
    finally:
        service.reserve = setting


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
    first_request = w.ledger.request(card, 1_500)
    first = await w.ledger.auth.Authorize(first_request)
    assert (first.response_code, first.stand_in) == ("00", True)
    assert (await w.ledger.authorize(card, 600)).response_code == "51"
    assert await w.ledger.figures(card.account_id) == (2_000, 500, 1_500)
    # With the client back, its approvals are mirrored in the shadow ledger too.
    w.client.outage = False
    assert (await w.ledger.authorize(card, 300)).stand_in is False
    assert await w.ledger.figures(card.account_id) == (2_000, 200, 1_800)
    # The stand-in approval was advised with what was decided; the 51 was not advised
    # (the contract: every stand-in approval is advised, a decline holds nothing).
    w.clock.advance(timedelta(minutes=5))  # past the failed deliveries' backoff

    def advices() -> list[dict[str, object]]:
        return [dict(n.payload) for n in w.client.applied.values()
                if n.kind == "STAND_IN_ADVICE" and n.account_id == card.account_id]  # fmt: skip

    await eventually(lambda: len(advices()) == 1, "the stand-in approval advised")
    [advice] = advices()
    assert advice["message_id"] == first_request.message_id
    assert (advice["response_code"], advice["approved_minor"], advice["amount_minor"]) == (
        "00", 1_500, 1_500,
    )  # fmt: skip
    assert advice["authorization_code"] == first.authorization_code
    assert w.app.pool is not None
    kinds = await w.app.pool.fetch(
        "SELECT kind FROM notifications WHERE account_id = $1 ORDER BY seq", card.account_id
    )
    assert [r["kind"] for r in kinds].count("STAND_IN_ADVICE") == 1


# -- limits and counters (issue 17 item 2) ---------------------------------------------------

DAY_LIMIT = {"subject": la.LIMIT_SUBJECT_CARD, "period": la.PERIOD_DAY}


def _asked(w: World, message_id: str) -> bool:
    return any(r.message_id == message_id for r in w.client.received)


async def _used(w: World, card: IssuedCard) -> tuple[int, int]:
    """(amount, count) of the card's one daily limit counter."""
    usage = await w.ledger.usage(card.account_id)
    found = [v for k, v in usage.items() if k.startswith("L:")]
    assert len(found) <= 1, usage
    return found[0] if found else (0, 0)


async def test_off_ledger_limits_apply_before_the_client_is_asked(w: World) -> None:
    """Seed 004 for off-ledger programmes: a product's limits decline 61 (amount) and 65
    (count) before the client is asked, as on-ledger."""
    card = await off_ledger_card(w, limits=[
        {"subject": la.LIMIT_SUBJECT_CARD, "period": la.PERIOD_TRANSACTION,
         "amount_max_minor": 500},
        {**DAY_LIMIT, "count_max": 2},
    ])  # fmt: skip
    # The issue's own case: 10.00 against a 5.00 per-transaction limit.
    over = w.ledger.request(card, 1_000)
    response = await w.ledger.auth.Authorize(over)
    assert (response.response_code, response.reason) == ("61", pb.REASON_AMOUNT_LIMIT_EXCEEDED)
    assert not _asked(w, over.message_id)
    for _ in range(2):
        assert (await w.ledger.authorize(card, 500)).response_code == "00"
    third = w.ledger.request(card, 100)
    response = await w.ledger.auth.Authorize(third)
    assert (response.response_code, response.reason) == ("65", pb.REASON_COUNT_LIMIT_EXCEEDED)
    assert not _asked(w, third.message_id)
    assert await _used(w, card) == (1_000, 2)
    # A retransmission of the 65 replays it; nothing more is counted.
    assert (await w.ledger.auth.Authorize(third)).response_code == "65"
    assert await _used(w, card) == (1_000, 2)


async def test_off_ledger_counters_follow_the_answer_and_reversals(w: World) -> None:
    """The amount counted before asking becomes what the client approved: all of it, part
    of it, or nothing for a decline; a reversal forwarded to the client gives back what it
    reverses (once, however often retransmitted), counts stay."""
    card = await off_ledger_card(w, limits=[{**DAY_LIMIT, "amount_max_minor": 20_000}])
    first = w.ledger.request(card, 3_000)
    assert (await w.ledger.auth.Authorize(first)).response_code == "00"
    assert await _used(w, card) == (3_000, 1)
    # The client holds 10,000 for a new account: 7,000 left; 9,000 asked, 7,000 approved.
    partial = await w.ledger.authorize(card, 9_000, partial=True)
    assert (partial.response_code, partial.approved_amount.amount_minor) == ("10", 7_000)
    assert await _used(w, card) == (10_000, 2)
    declined = await w.ledger.authorize(card, 1_000)  # nothing left at the client
    assert (declined.response_code, declined.reason) == ("51", pb.REASON_CLIENT_DECLINED)
    assert await _used(w, card) == (10_000, 2)
    # Reversals of the first: 1,000, then the rest (2,000), then the rest again (nothing).
    assert (await w.ledger.reverse(first.message_id, 1_000)).response_code == "00"
    assert await _used(w, card) == (9_000, 2)
    full = str(uuid.uuid4())
    assert (await w.ledger.reverse(first.message_id, message_id=full)).response_code == "00"
    assert await _used(w, card) == (7_000, 2)
    retransmitted = await w.ledger.reverse(first.message_id, message_id=full)
    assert retransmitted.response_code == "00"
    assert (await w.ledger.reverse(first.message_id)).response_code == "00"  # another one
    assert await _used(w, card) == (7_000, 2)
    # The cache agrees with Postgres: 13,000 more fits the 20,000, 13,001 does not (61).
    assert (await w.ledger.authorize(card, 13_001)).response_code == "61"
    w.client.ledger.open_account(card.account_id, "GBP", 100_000)
    assert (await w.ledger.authorize(card, 13_000)).response_code == "00"
    assert await _used(w, card) == (20_000, 3)


async def test_off_ledger_clearings_move_the_counters_to_what_settled(w: World) -> None:
    """Seed 004 at clearing: the amount-based counters follow what settled (the amount and
    the clearing fee), counts stay; a retransmitted clearing changes nothing."""
    clearing_fee = la.FeeRule(
        name="clearing", stage=la.FEE_STAGE_CLEARING, asset="GBP", flat_minor=10
    )
    card = await off_ledger_card(
        w, limits=[{**DAY_LIMIT, "amount_max_minor": 20_000}], fees=[clearing_fee]
    )
    first = w.ledger.request(card, 3_000)
    assert (await w.ledger.auth.Authorize(first)).response_code == "00"
    assert await _used(w, card) == (3_000, 1)
    # A partial clearing of 1,000 settles 1,010 against 1,000 of what was counted.
    partial = await w.ledger.clear(card, first.network_reference, 1_000, final=False)
    assert partial.response_code == "00"
    assert await _used(w, card) == (3_010, 1)
    # The final one, 2,500: 2,510 settled against the 2,000 still counted.
    final_id = str(uuid.uuid4())
    final = await w.ledger.clear(card, first.network_reference, 2_500, message_id=final_id)
    assert final.response_code == "00"
    assert await _used(w, card) == (3_520, 1)
    again = await w.ledger.clear(card, first.network_reference, 2_500, message_id=final_id)
    assert again.response_code == "00"
    # Nothing is left to give back: a late reversal changes nothing either.
    assert (await w.ledger.reverse(first.message_id)).response_code == "00"
    assert await _used(w, card) == (3_520, 1)
    # The cache agrees: 16,480 more fits the 20,000, 16,481 does not.
    assert (await w.ledger.authorize(card, 16_481)).response_code == "61"


async def test_off_ledger_limits_in_stand_in(w: World) -> None:
    """A stand-in approval counts as a client approval; a stand-in decline (91) counts
    nothing; the shadow stand-in counts once, as on-ledger."""
    card = await off_ledger_card(
        w, stand_in=la.STAND_IN_POLICY_APPROVE, stand_in_asset="GBP",
        stand_in_transaction_max_minor=2_000, stand_in_daily_max_minor=5_000,
        breaker_failures=100, limits=[{**DAY_LIMIT, "amount_max_minor": 4_000}],
    )  # fmt: skip
    w.client.outage = True
    assert (await w.ledger.authorize(card, 1_500)).response_code == "00"
    assert await _used(w, card) == (1_500, 1)
    assert (await w.ledger.authorize(card, 2_001)).response_code == "91"  # stand-in limit
    assert await _used(w, card) == (1_500, 1)
    assert (await w.ledger.authorize(card, 2_501)).response_code == "61"  # product limit
    assert await _used(w, card) == (1_500, 1)

    shadow = await off_ledger_card(
        w, stand_in=la.STAND_IN_POLICY_SHADOW, balance_minor=10_000, breaker_failures=100,
        limits=[{**DAY_LIMIT, "amount_max_minor": 3_000, "count_max": 5}],
    )  # fmt: skip
    assert (await w.ledger.authorize(shadow, 2_000)).response_code == "00"
    assert await _used(w, shadow) == (2_000, 1)
    assert (await w.ledger.authorize(shadow, 1_001)).response_code == "61"
    assert await _used(w, shadow) == (2_000, 1)
    w.client.outage = False
    # The client approves; the shadow ledger mirrors the hold with its counters, so the
    # reversal (through the shadow ledger) gives the amount back.
    approved = w.ledger.request(shadow, 1_000)
    response = await w.ledger.auth.Authorize(approved)
    assert (response.response_code, response.stand_in) == ("00", False)
    assert await _used(w, shadow) == (3_000, 2)
    assert (await w.ledger.reverse(approved.message_id)).response_code == "00"
    assert await _used(w, shadow) == (2_000, 2)


# -- fees (issue 17 item 1) -------------------------------------------------------------------

PURCHASE, ATM, ENQUIRY = (
    c.TRANSACTION_TYPE_PURCHASE, c.TRANSACTION_TYPE_CASH_WITHDRAWAL,
    c.TRANSACTION_TYPE_BALANCE_ENQUIRY,
)  # fmt: skip
DECLINE_FEE = la.FeeRule(
    name="decline", stage=la.FEE_STAGE_AUTHORIZATION, asset="GBP", flat_minor=30,
    on_decline=True,
)  # fmt: skip


def _fees_of(w: World, card: IssuedCard) -> list[dict[str, Any]]:
    kinds = ("FEE", "FEE_NOT_APPLIED")
    return [dict(n.payload) for n in w.client.applied.values()
            if n.kind in kinds and n.account_id == card.account_id]  # fmt: skip


async def test_every_fee_rule_reaches_an_off_ledger_client(w: World) -> None:
    """Seed 004 for off-ledger programmes: percentage, threshold, free uses, decline,
    zero-value and clearing fees are computed as on-ledger and sent as FEE notifications
    naming their rules, amount and transaction."""
    rules = [
        la.FeeRule(name="purchase", stage=la.FEE_STAGE_AUTHORIZATION, asset="GBP",
                   transaction_types=[PURCHASE], flat_minor=25, bps=100),
        la.FeeRule(name="big purchase", stage=la.FEE_STAGE_AUTHORIZATION, asset="GBP",
                   transaction_types=[PURCHASE], flat_minor=50, above_minor=5_000),
        la.FeeRule(name="atm", stage=la.FEE_STAGE_AUTHORIZATION, asset="GBP",
                   transaction_types=[ATM], flat_minor=100, free_uses=2,
                   free_period=la.PERIOD_DAY),
        la.FeeRule(name="enquiry", stage=la.FEE_STAGE_AUTHORIZATION, asset="GBP",
                   transaction_types=[ENQUIRY], flat_minor=50),
        DECLINE_FEE,
        la.FeeRule(name="clearing", stage=la.FEE_STAGE_CLEARING, asset="GBP",
                   transaction_types=[PURCHASE], flat_minor=10),
    ]  # fmt: skip
    card = await off_ledger_card(w, fees=rules, product={"blocked_mccs": ["7995"]})
    first = w.ledger.request(card, 4_000)  # 0.25 + 1%
    answer = await w.ledger.auth.Authorize(first)
    assert (answer.response_code, answer.fee.amount_minor) == ("00", 65)
    assert w.client.decisions[-1].fee.amount_minor == 65  # the client was told in Decide
    big = await w.ledger.authorize(card, 5_100)  # 0.25 + 1%, and 0.50 above 50.00
    assert (big.response_code, big.fee.amount_minor) == ("00", 126)
    atm: TransactionKind = {"transaction_type": ATM, "channel": c.CHANNEL_ATM}
    withdrawals = [await w.ledger.authorize(card, 100, **atm) for _ in range(3)]
    assert [(r.response_code, r.fee.amount_minor) for r in withdrawals] == [
        ("00", 0), ("00", 0), ("00", 100),
    ]  # fmt: skip
    declined = await w.ledger.authorize(card, 1_000)  # the client has 309 left
    assert (declined.response_code, declined.fee.amount_minor) == ("51", 30)
    not_permitted = await w.ledger.authorize(card, 100, mcc="7995")
    assert (not_permitted.response_code, not_permitted.fee.amount_minor) == ("57", 30)
    enquiry = await w.ledger.authorize(card, 0, transaction_type=ENQUIRY, channel=c.CHANNEL_ATM)
    assert (enquiry.response_code, enquiry.fee.amount_minor) == ("00", 50)
    assert (await w.ledger.clear(card, first.network_reference, 4_000)).response_code == "00"

    await eventually(lambda: len(_fees_of(w, card)) == 7, "seven fee notifications")
    fees = _fees_of(w, card)
    summary = [
        (f["stage"], f["fee_minor"], f["fee_mode"], f["on_decline"],
         [(r["name"], r["fee_minor"]) for r in f["rules"]])
        for f in fees
    ]  # fmt: skip
    assert summary == [
        ("AUTHORIZATION", 65, "NOTIFIED", False, [("purchase", 65)]),
        ("AUTHORIZATION", 126, "NOTIFIED", False, [("purchase", 76), ("big purchase", 50)]),
        ("AUTHORIZATION", 100, "NOTIFIED", False, [("atm", 100)]),
        ("AUTHORIZATION", 30, "NOTIFIED", True, [("decline", 30)]),
        ("AUTHORIZATION", 30, "NOTIFIED", True, [("decline", 30)]),
        ("AUTHORIZATION", 50, "NOTIFIED", False, [("enquiry", 50)]),
        ("CLEARING", 10, "NOTIFIED", False, [("clearing", 10)]),
    ]
    # Each names the transaction it belongs to.
    assert fees[0]["message_id"] == first.message_id
    assert fees[-1]["network_reference"] == first.network_reference
    assert [f["response_code"] for f in fees[:6]] == ["00", "00", "00", "51", "57", "00"]
    # The reference client applied them: the decline fees were posted, the rest held with
    # their approvals (and the first's released by its clearing, which posted 40.10).
    ledger = w.client.ledger
    assert ledger.actual(card.account_id) == 10_000 - 30 - 30 - 4_000 - 10


async def test_the_shadow_ledger_charges_a_client_declines_fee(w: World) -> None:
    """A SHADOW programme's client declines: the decline fee is posted in the shadow ledger
    when available covers it (POSTED), else not applied (FEE_NOT_APPLIED), and the client's
    ledger stays where the shadow ledger is."""
    card, program_id = await _shadow_program(w, opening_minor=1_000, rules=[DECLINE_FEE])
    declined = await w.ledger.authorize(card, 2_000)
    assert (declined.response_code, declined.fee.amount_minor) == ("51", 30)
    assert await w.ledger.figures(card.account_id) == (970, 970, 0)
    await _in_step(w, card, program_id, "decline fee posted")
    poor, poor_program = await _shadow_program(w, opening_minor=10, rules=[DECLINE_FEE])
    assert (await w.ledger.authorize(poor, 2_000)).response_code == "51"
    assert await w.ledger.figures(poor.account_id) == (10, 10, 0)
    await _in_step(w, poor, poor_program, "decline fee not applied")
    assert [f["fee_mode"] for f in _fees_of(w, card)] == ["POSTED"]
    assert [(f["fee_mode"], f["fee_minor"]) for f in _fees_of(w, poor)] == [("NOT_APPLIED", 30)]
    # In stand-in the shadow ledger decides, and charges, as on-ledger: the decline fee of
    # its own 51 is posted there too, and the client follows.
    w.client.outage = True
    assert (await w.ledger.authorize(card, 5_000)).response_code == "51"
    w.client.outage = False
    w.clock.advance(timedelta(minutes=5))
    assert await w.ledger.figures(card.account_id) == (940, 940, 0)
    await _in_step(w, card, program_id, "stand-in decline fee")


async def test_an_approve_stand_in_charges_the_fee_as_the_client_would(w: World) -> None:
    """The APPROVE stand-in prices the approval as the client would have been told: the
    fee is in the answer, the advice and its FEE notification (with its rules)."""
    rule = la.FeeRule(name="purchase", stage=la.FEE_STAGE_AUTHORIZATION, asset="GBP",
                      transaction_types=[PURCHASE], flat_minor=25, bps=100)  # fmt: skip
    card = await off_ledger_card(
        w, stand_in=la.STAND_IN_POLICY_APPROVE, stand_in_asset="GBP",
        stand_in_transaction_max_minor=5_000, stand_in_daily_max_minor=5_000,
        breaker_failures=100, fees=[rule],
    )  # fmt: skip
    w.client.outage = True
    answer = await w.ledger.authorize(card, 2_000)
    assert (answer.response_code, answer.stand_in, answer.fee.amount_minor) == ("00", True, 45)
    w.client.outage = False
    w.clock.advance(timedelta(minutes=5))
    await eventually(lambda: len(_fees_of(w, card)) == 1, "the stand-in's fee")
    [fee] = _fees_of(w, card)
    assert (fee["fee_minor"], [r["name"] for r in fee["rules"]]) == (45, ["purchase"])
    [advice] = [n.payload for n in w.client.applied.values()
                if n.kind == "STAND_IN_ADVICE" and n.account_id == card.account_id]  # fmt: skip
    assert (advice["approved_minor"], advice["fee_minor"]) == (2_000, 45)


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
                            "CARD_STATUS_CHANGED", "CARD_EXPIRED"],
        "admin notifications",
    )  # fmt: skip
    expired = next(n for n in w.client.applied.values() if n.kind == "CARD_EXPIRED"
                   and n.account_id == card.account_id)  # fmt: skip
    assert expired.card_id == old.card_id
    # The PIN tries blocked the card (the product's default, BLOCK_CARD), and the client's
    # ledger knows the card as blocked, and why.
    blocked = [n for n in w.client.applied.values() if n.account_id == card.account_id
               and n.kind == "CARD_STATUS_CHANGED"][-1]  # fmt: skip
    assert blocked.payload["reason"] == "PIN_TRIES_EXCEEDED"
    assert w.client.ledger.card_status[card.card_id] == "BLOCKED"
    assert (await w.ledger.authorize(card, 100)).response_code == "62"


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


async def _shadow_program(
    w: World, *, opening_minor: int, rules: Sequence[la.FeeRule] = ()
) -> tuple[IssuedCard, str]:
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
        *rules,
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


async def test_a_partial_shadow_stand_in_is_followed_exactly(w: World) -> None:
    card, program_id = await _shadow_program(w, opening_minor=2_000)
    w.client.outage = True
    partial = await w.ledger.authorize(card, 5_000, partial=True)
    assert (partial.response_code, partial.stand_in) == ("10", True)
    w.client.outage = False
    w.clock.advance(timedelta(minutes=5))
    await _in_step(w, card, program_id, "partial stand-in approval")
    [advice] = [n.payload for n in w.client.applied.values()
                if n.kind == "STAND_IN_ADVICE" and n.account_id == card.account_id]  # fmt: skip
    assert (advice["response_code"], advice["amount_minor"]) == ("10", 5_000)
    assert advice["approved_minor"] == partial.approved_amount.amount_minor < 5_000
    assert advice["fee_minor"] == partial.fee.amount_minor == 25
    # A decline in stand-in is not advised, and the client stays in step.
    w.client.outage = True
    declined = await w.ledger.authorize(card, 1_000)
    assert (declined.response_code, declined.stand_in) == ("51", True)
    w.client.outage = False
    w.clock.advance(timedelta(minutes=5))
    await _in_step(w, card, program_id, "a declined stand-in")
    advised = [n for n in w.client.applied.values()
               if n.kind == "STAND_IN_ADVICE" and n.account_id == card.account_id]  # fmt: skip
    assert len(advised) == 1


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
