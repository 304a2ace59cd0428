"""Authorize calls taken from gRPC's core several at a time (adapters/grpc/acceptors.py): on
the grpcio the project pins the dispatch is there and in use; every call taken is answered,
other methods still go the stock way, and the server stops with its requests outstanding."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from prometheus_client import REGISTRY

from authswitch.adapters.grpc import acceptors
from authswitch.adapters.grpc.admission import OVERLOADED_DETAILS
from authswitch.app import Application
from authswitch.v1 import authorization_pb2 as pb
from tests.conftest import TEST_KEYS, settings_for
from tests.support.ledger import Ledger
from tests.support.stores import Stores, decisions_stored

pytestmark = pytest.mark.timeout(60)


def test_the_pinned_grpcio_has_the_dispatch() -> None:
    """A grpcio without it would quietly take calls one at a time: fail here instead."""
    assert acceptors.available()


@pytest.mark.parametrize("count", [8, 0])
async def test_every_call_is_answered_and_the_server_stops(stores: Stores, count: int) -> None:
    app = Application(settings_for(stores, grpc_acceptors=count), keys=TEST_KEYS)
    await app.start()
    stopped = False
    try:
        assert app.acceptors is not None
        assert app.acceptors.outstanding == count
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            ledger = Ledger(channel)
            card = await ledger.card(1_000_000)  # LedgerAdminService: the generic handlers
            requests = [ledger.request(card, 100) for _ in range(300)]
            answers = await asyncio.gather(
                *(ledger.auth.Authorize(r, timeout=30) for r in requests)
            )
            assert [a.response_code for a in answers] == ["00"] * len(requests)
            assert len({a.decision_id for a in answers}) == len(requests)
            # A retransmission is answered with the same bytes, whichever acceptor took it.
            again = await ledger.auth.Authorize(requests[7], timeout=30)
            assert again == answers[7]
            await app.stop(grace_s=2)
            stopped = True
            assert app.acceptors.outstanding == 0
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await ledger.auth.Authorize(ledger.request(card, 100), timeout=5)
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        if not stopped:
            await app.stop()


@pytest.mark.parametrize("count", [8, 0])
async def test_calls_when_the_server_stops_are_answered_or_refused_undecided(
    stores: Stores, count: int
) -> None:
    """Stopping with calls arriving: each taken is answered within the grace; the others end
    refused (UNAVAILABLE) or cancelled by gRPC's core, with nothing of them written — with
    the acceptors as without them."""
    app = Application(settings_for(stores, grpc_acceptors=count), keys=TEST_KEYS)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            ledger = Ledger(channel)
            card = await ledger.card(1_000_000)
            requests = [ledger.request(card, 100) for _ in range(100)]
            calls = [asyncio.ensure_future(ledger.auth.Authorize(r, timeout=30)) for r in requests]
            await asyncio.sleep(0)  # the calls are on their way
            stopping = asyncio.ensure_future(app.stop(grace_s=10))
            results = await asyncio.gather(*calls, return_exceptions=True)
            await stopping
            answered = [r for r in results if isinstance(r, pb.AuthorizeResponse)]
            refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
            assert len(answered) + len(refused) == len(calls), results
            assert {r.response_code for r in answered} <= {"00"}
            assert {r.code() for r in refused} <= {
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.CANCELLED,
            }
            stored = await decisions_stored(stores.postgres_dsn, (r.message_id for r in requests))
            assert stored == len(answered)
    finally:
        await app.stop()


async def test_without_the_dispatch_authorize_is_served_the_stock_way(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A grpcio whose private dispatch differs: Authorize is a generic method again, taken
    one call at a time, and still answered."""
    monkeypatch.setattr(acceptors, "available", lambda: False)
    app = Application(settings_for(stores, grpc_acceptors=8), keys=TEST_KEYS)
    await app.start()
    try:
        assert app.acceptors is not None
        assert (app.acceptors.usable, app.acceptors.count, app.acceptors.outstanding) == (
            False,
            0,
            0,
        )
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            ledger = Ledger(channel)
            card = await ledger.card(1_000_000)
            answers = await asyncio.gather(
                *(ledger.auth.Authorize(ledger.request(card, 100), timeout=30) for _ in range(50))
            )
            assert {a.response_code for a in answers} == {"00"}
    finally:
        await app.stop()


async def test_refusals_add_acceptors_that_leave_once_none_are_refused(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each call refused at the admission limit adds an acceptor, up to the surge; once none
    has been refused for SURGE_HOLD_S, each call taken retires one, down to the count."""
    monkeypatch.setattr(acceptors, "SURGE_HOLD_S", 0.3)
    settings = settings_for(
        stores,
        grpc_acceptors=2,
        grpc_acceptors_surge=6,
        authorize_in_flight_max=1,
        authorize_in_flight_min=1,
    )
    app = Application(settings, keys=TEST_KEYS)

    def gauge() -> float:
        return REGISTRY.get_sample_value("authswitch_grpc_acceptors_surging") or 0.0

    await app.start()
    before = gauge()
    try:
        assert app.acceptors is not None
        assert (app.acceptors.outstanding, app.acceptors.surging) == (2, 0)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            ledger = Ledger(channel)
            card = await ledger.card(1_000_000)
            burst = await asyncio.gather(
                *(ledger.auth.Authorize(ledger.request(card, 100), timeout=30) for _ in range(60)),
                return_exceptions=True,
            )
            refused = [r for r in burst if isinstance(r, grpc.aio.AioRpcError)]
            assert refused, "one call in flight at most: a burst of 60 must see refusals"
            assert {r.code() for r in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
            # Refused by the acceptors or the handler, not by grpc.aio's dispatch.
            assert {r.details() for r in refused} == {OVERLOADED_DETAILS}
            assert app.acceptors.surging == min(6, len(refused))
            assert app.acceptors.outstanding == 2 + app.acceptors.surging
            assert gauge() == before + app.acceptors.surging
            await asyncio.sleep(0.4)  # none refused since
            for _ in range(8):
                answer = await ledger.auth.Authorize(ledger.request(card, 100), timeout=30)
                assert answer.response_code == "00"
            assert (app.acceptors.outstanding, app.acceptors.surging) == (2, 0)
            assert gauge() == before
            await asyncio.gather(  # surging again as the server stops: the gauge is given back
                *(ledger.auth.Authorize(ledger.request(card, 100), timeout=30) for _ in range(60)),
                return_exceptions=True,
            )
            assert app.acceptors.surging > 0
    finally:
        await app.stop()
    assert gauge() == before


async def test_a_call_taken_keeps_the_handlers_contract() -> None:
    """The acceptors' own dispatch of a call (one task, its answer and status in one batch)
    keeps what grpc.aio's gives a handler: its answer, an abort's status, a status it set,
    its trailing metadata and deadline, and UNKNOWN for an exception."""

    async def behaviour(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        if request == b"abort":
            await context.abort(grpc.StatusCode.NOT_FOUND, "gone")
        if request == b"raise":
            raise RuntimeError("boom: 4111111111111111")  # never echoed to the caller
        if request == b"code":
            context.set_code(grpc.StatusCode.FAILED_PRECONDITION)
            context.set_details("not now")
            return b"ignored"
        context.set_trailing_metadata((("x-seen", request.decode()),))
        remaining = context.time_remaining()
        return b"answer:" + (b"deadline" if remaining is not None and remaining > 0 else b"none")

    server = grpc.aio.server()
    taking = acceptors.Acceptors(2)
    handler = grpc.unary_unary_rpc_method_handler(behaviour)
    assert taking.register(server, "test.Probe", {"Echo": handler})
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    taking.start(server)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            echo = channel.unary_unary("/test.Probe/Echo", None, None)
            call = echo(b"hello", timeout=10)
            assert await call == b"answer:deadline"
            assert ("x-seen", "hello") in tuple(await call.trailing_metadata())
            assert await echo(b"plain") == b"answer:none"
            for request, code, details in (
                (b"abort", grpc.StatusCode.NOT_FOUND, "gone"),
                (b"code", grpc.StatusCode.FAILED_PRECONDITION, "not now"),
                (b"raise", grpc.StatusCode.UNKNOWN, "unexpected RuntimeError"),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await echo(request, timeout=10)
                assert failed.value.code() is code, request
                assert failed.value.details() == details
            answers = await asyncio.gather(*(echo(b"many", timeout=10) for _ in range(50)))
            assert answers == [b"answer:deadline"] * 50
    finally:
        await server.stop(0)
        await taking.closed()
