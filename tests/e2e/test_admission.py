"""Overload: past the admission limit an authorisation is refused at once, with nothing
written, and the process goes on deciding; a call whose deadline passed while it queued is
never decided."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from authswitch import metrics
from authswitch.app import Application
from authswitch.reference_client import ReferenceClient, ReferenceLedger, serve_reference_client
from authswitch.v1 import authorization_pb2 as pb
from authswitch.v1 import common_pb2 as c
from authswitch.v1 import ledger_admin_pb2 as la
from tests.conftest import TEST_KEYS, settings_for
from tests.support.ledger import Ledger
from tests.support.proxy import FaultProxy, dsn_through, target_of_dsn
from tests.support.stores import Stores, decisions_stored

pytestmark = pytest.mark.timeout(60)


async def test_authorisations_past_the_limit_are_refused_with_nothing_written(
    stores: Stores,
) -> None:
    app = Application(settings_for(stores, authorize_in_flight_max=4), keys=TEST_KEYS)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            ledger = Ledger(channel)
            card = await ledger.card(1_000_000)
            shed_before = metrics.SHED._value.get()
            requests = [ledger.request(card, 100) for _ in range(200)]
            results = await asyncio.gather(
                *(ledger.auth.Authorize(r, timeout=20) for r in requests), return_exceptions=True
            )
            answered = [r for r in results if isinstance(r, pb.AuthorizeResponse)]
            refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
            assert len(answered) + len(refused) == len(requests), results
            assert refused, "200 calls at once never went past 4 in flight"
            assert answered, "nothing was taken in"
            assert {r.code() for r in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
            assert {r.response_code for r in answered} == {"00"}
            assert metrics.SHED._value.get() - shed_before == len(refused)
            # Nothing of a refused call was written: only the answered ones are decisions.
            stored = await decisions_stored(stores.postgres_dsn, (r.message_id for r in requests))
            assert stored == len(answered)
            # The limit counts calls in flight, not calls ever made: it decides on.
            assert (await ledger.authorize(card, 100)).response_code == "00"
    finally:
        await app.stop()


async def test_a_stalled_store_fills_the_handlers_and_the_rest_is_refused_at_once(
    stores: Stores,
) -> None:
    """Postgres stops answering: the calls taken in wait on the commit, the next ones are
    refused RESOURCE_EXHAUSTED at once (not queued behind them), and once Postgres answers
    again every call that was taken in is decided and durable."""
    proxy = FaultProxy(target_of_dsn(stores.postgres_dsn))
    await proxy.start()
    app = Application(
        settings_for(
            stores, postgres_dsn=dsn_through(stores.postgres_dsn, proxy.port),
            authorize_in_flight_max=8, postgres_statement_timeout_ms=30_000,
        ),
        keys=TEST_KEYS,
    )  # fmt: skip
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            ledger = Ledger(channel)
            card = await ledger.card(1_000_000)
            proxy.stall()
            taken = [ledger.request(card, 100) for _ in range(8)]
            waiting = [asyncio.ensure_future(ledger.auth.Authorize(r, timeout=30)) for r in taken]
            await asyncio.sleep(0.5)  # they reached the handlers and wait on the commit
            assert not any(w.done() for w in waiting)
            loop = asyncio.get_running_loop()
            refused_in = []
            for request in [ledger.request(card, 100) for _ in range(20)]:
                started = loop.time()
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await ledger.auth.Authorize(request, timeout=30)
                assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
                refused_in.append(loop.time() - started)
            # Refused without waiting for the store (generously: a loaded test machine).
            assert max(refused_in) < 2.0, refused_in
            # Every slot is in flight; none is kept for a call on its way (each refused one
            # found none, and was refused before its request was read).
            admission = app.admission
            assert admission is not None
            assert (admission.in_flight, admission.limit, admission.arriving) == (8, 8, 0)
            proxy.resume()
            answers = await asyncio.gather(*waiting)
            assert {a.response_code for a in answers} == {"00"}
            # Every slot came back.
            for _ in range(100):
                if (admission.in_flight, admission.arriving) == (0, 0):
                    break
                await asyncio.sleep(0.01)
            assert (admission.in_flight, admission.arriving) == (0, 0)
            stored = await decisions_stored(stores.postgres_dsn, (r.message_id for r in taken))
            assert stored == len(taken)
    finally:
        proxy.resume()
        await app.stop()
        await proxy.stop()


async def test_a_call_whose_deadline_passed_while_it_queued_is_not_decided(
    stores: Stores,
) -> None:
    """Calls wait while the server cannot take them (its event loop busy): those whose
    deadline has passed by then are never decided, and nothing of them is written."""
    app = Application(settings_for(stores), keys=TEST_KEYS)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            ledger = Ledger(channel)
            card = await ledger.card(1_000_000)
            late = [ledger.request(card, 100) for _ in range(20)]
            calls = [asyncio.ensure_future(ledger.auth.Authorize(r, timeout=0.2)) for r in late]
            await asyncio.sleep(0)  # sent
            time.sleep(0.5)  # noqa: ASYNC251 - the server's loop too is busy past the deadlines
            results = await asyncio.gather(*calls, return_exceptions=True)
            assert all(
                isinstance(r, grpc.aio.AioRpcError)
                and r.code() is grpc.StatusCode.DEADLINE_EXCEEDED
                for r in results
            ), results
            await asyncio.sleep(0.5)  # whatever the server still had of them is finished
            stored = await decisions_stored(stores.postgres_dsn, (r.message_id for r in late))
            assert stored == 0
            assert (await ledger.authorize(card, 100)).response_code == "00"
    finally:
        await app.stop()


async def test_calls_waiting_on_a_slow_client_are_not_counted_in_flight(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Off-ledger calls waiting on their client leave the admission count (it measures the
    process's own work): with 2 allowed in flight, 6 calls wait on a slow client at once and
    are answered by it; past AUTHSWITCH_CLIENT_WAITING_MAX the stand-in answers at once,
    without asking the client (OVERLOADED). None is refused RESOURCE_EXHAUSTED."""
    monkeypatch.setenv("AUTHSWITCH_SECRET_CLIENT_TOKEN", "client-token")
    client = ReferenceClient(ReferenceLedger(opening_minor=1_000_000), token="client-token")
    client.latency_ms = 1_500
    client_server, client_port = await serve_reference_client(client, "127.0.0.1:0")
    app = Application(
        settings_for(
            stores, authorize_in_flight_max=2, authorize_in_flight_min=2, client_waiting_max=6,
            redis_key_prefix=stores.redis_prefix + "wait",
        ),
        keys=TEST_KEYS,
    )  # fmt: skip
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            ledger = Ledger(channel)
            program_id = await ledger.program(c.LEDGER_MODE_OFF_LEDGER)
            await ledger.admin.SetProgramRouting(
                la.SetProgramRoutingRequest(
                    program_id=program_id, target=f"127.0.0.1:{client_port}",
                    tls=la.CLIENT_TLS_NONE, token_secret="client-token", deadline_ms=10_000,
                    stand_in=la.STAND_IN_POLICY_DECLINE, breaker_failures=3,
                    breaker_open_ms=5_000,
                )
            )  # fmt: skip
            account_id = await ledger.account(await ledger.product(program_id))
            card = await ledger.card(account_id=account_id)
            waiting: list[asyncio.Future[pb.AuthorizeResponse]] = []
            for n in range(6):
                request = ledger.request(card, 100)
                waiting.append(asyncio.ensure_future(ledger.auth.Authorize(request, timeout=20)))
                while not any(r.message_id == request.message_id for r in client.received):
                    if waiting[-1].done():  # answered (or refused) without the client
                        raise AssertionError(f"call {n} never reached the client: {waiting[-1]}")
                    await asyncio.sleep(0.01)  # the call is with the client: the next one
            assert app.admission is not None
            assert app.admission.waiting == 6
            # Six wait on the client: the next calls are stood in for at once, not asked.
            for _ in range(2):
                request = ledger.request(card, 100)
                response = await ledger.auth.Authorize(request, timeout=5)
                assert (response.response_code, response.stand_in) == ("91", True)
                assert response.stand_in_reason == pb.STAND_IN_REASON_OVERLOADED
                assert all(r.message_id != request.message_id for r in client.received)
            answered = await asyncio.gather(*waiting)
            assert [(r.response_code, r.stand_in) for r in answered] == [("00", False)] * 6
            assert (app.admission.waiting, app.admission.in_flight) == (0, 0)
    finally:
        await app.stop()
        await client_server.stop(1)
