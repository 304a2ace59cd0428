"""Operations: health and reflection, metrics and their labels, graceful shutdown on
SIGTERM, and NOT_SERVING until the stores are ready (real child processes)."""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path

import asyncpg
import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from authswitch.app import Application
from authswitch.metrics_http import start_metrics_server
from authswitch.v1 import ledger_admin_pb2 as la
from tests.support.ledger import Ledger
from tests.support.proxy import FaultProxy, dsn_through, target_of_dsn
from tests.support.server import ServerProcess
from tests.support.stores import Stores

pytestmark = pytest.mark.timeout(120)

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-")
_LONG_DIGITS = re.compile(r"\d{9,}")


async def test_health_liveness_and_reflection(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "liveness", "authswitch.v1.AuthorizationService"):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING, service
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name async for r in responses for s in r.list_services_response.service}
    assert {"authswitch.v1.AuthorizationService", "authswitch.v1.LedgerAdminService",
            "grpc.health.v1.Health"} <= names  # fmt: skip


async def test_metrics_are_exposed_with_bounded_labels(ledger: Ledger, app: Application) -> None:
    card = await ledger.card(1_000)
    await ledger.authorize(card, 100)
    await ledger.authorize(card, 100_000)
    server = start_metrics_server("127.0.0.1:0")
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        async with httpx.AsyncClient() as http:
            text = (await http.get(url, timeout=5)).text
    finally:
        server.shutdown()
        server.server_close()
    for series in (
        'grpc_server_started_total{grpc_method="Authorize",grpc_service="authswitch.v1.AuthorizationService",grpc_type="unary"}',
        'grpc_server_handled_total{grpc_code="OK",grpc_method="Authorize"',
        "grpc_server_handling_seconds_bucket{",
        'authswitch_decisions_total{mode="on_ledger",response_code="00",transaction_type="purchase"}',
        'authswitch_decisions_total{mode="on_ledger",response_code="51",transaction_type="purchase"}',
        'authswitch_decision_seconds_bucket{le="0.005",mode="on_ledger"}',
        "authswitch_group_commit_batch_size_bucket",
        "authswitch_group_commit_wait_seconds_bucket",
        "authswitch_cache_loads_total",
        # Declared series are there before their first event.
        'authswitch_store_errors_total{operation="group_commit",store="postgres"}',
        'authswitch_stand_ins_total{policy="decline",reason="timeout"}',
        'authswitch_client_seconds_count{method="decide",outcome="ok"}',
    ):
        assert series in text, series
    assert "_created" not in text  # they would double the series count
    assert "authswitch_event_loop_lag_seconds_bucket" in text
    sampled = app.loop_lag.samples
    await asyncio.sleep(0.35)  # the serving process samples its loop ten times a second
    assert app.loop_lag.samples >= sampled + 2
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            for name, value in sample.labels.items():
                assert not _UUID.search(value), (sample.name, name, value)
                assert not _LONG_DIGITS.search(value), (sample.name, name, value)


async def test_an_oversize_call_is_counted_like_any_other(ledger: Ledger, app: Application) -> None:
    def handled() -> float:
        value = REGISTRY.get_sample_value(
            "grpc_server_handled_total",
            {"grpc_type": "unary", "grpc_service": "authswitch.v1.AuthorizationService",
             "grpc_method": "Authorize", "grpc_code": "RESOURCE_EXHAUSTED"},
        )  # fmt: skip
        return value or 0.0

    before = handled()
    card = await ledger.card(1_000)
    request = ledger.request(card, 100)
    request.merchant.name = "x" * 70_000  # over the 64 KiB limit
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ledger.auth.Authorize(request)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert handled() == before + 1


async def test_sigterm_drains_in_flight_decisions_and_exits_zero(
    stores: Stores, tmp_path: Path
) -> None:
    server = ServerProcess(stores, tmp_path / "serve.log", group_commit_linger_us="2000")
    server.start()
    try:
        await server.wait_serving()
        async with grpc.aio.insecure_channel(server.target) as channel:
            ledger = Ledger(channel)
            card = await ledger.card(1_000_000)
            requests = [ledger.request(card, 100) for _ in range(200)]
            calls = [asyncio.ensure_future(ledger.auth.Authorize(r)) for r in requests]
            await asyncio.sleep(0.05)
            server.signal()
            results = await asyncio.gather(*calls, return_exceptions=True)
        assert await server.wait_exit() == 0, server.log()
    finally:
        server.kill()
    answered = [
        (r.message_id, res.response_code)
        for r, res in zip(requests, results, strict=True)
        if not isinstance(res, BaseException)
    ]
    refused = [res for res in results if isinstance(res, BaseException)]
    assert answered, "no call finished before the drain"
    assert {code for _, code in answered} == {"00"}
    # Calls the server had not taken in when it stopped accepting are refused, never failed.
    assert all(
        isinstance(e, grpc.aio.AioRpcError)
        and e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        for e in refused
    ), refused[:3]
    # Every approval a caller received is durable, and every hold has its decision.
    conn = await asyncpg.connect(stores.postgres_dsn)
    try:
        held = {
            r[0]
            for r in await conn.fetch(
                "SELECT h.message_id FROM holds h JOIN decisions d USING (source, message_id) "
                "WHERE h.account_id = $1 AND d.response_code = '00'",
                card.account_id,
            )
        }
        orphans = await conn.fetchval(
            "SELECT count(*) FROM holds h LEFT JOIN decisions d USING (source, message_id) "
            "WHERE h.account_id = $1 AND d.message_id IS NULL",
            card.account_id,
        )
    finally:
        await conn.close()
    assert {m for m, _ in answered} <= held
    assert orphans == 0
    log = server.log_path.read_text(errors="replace")
    assert "draining" in log
    assert card.pan not in log


async def test_not_serving_until_the_stores_are_ready(stores: Stores, tmp_path: Path) -> None:
    proxy = FaultProxy(target_of_dsn(stores.postgres_dsn))
    await proxy.start()
    proxy.connect_delay_s = 2.0  # a Postgres that takes its time to accept
    dsn = dsn_through(stores.postgres_dsn, proxy.port)
    # One worker, as in a pod behind its probes (several workers open the port only once
    # ready: tests/e2e/test_workers.py).
    server = ServerProcess(stores, tmp_path / "serve.log", postgres_dsn=dsn, workers="1")
    server.start()
    try:
        seen: list[int | None] = []
        for _ in range(400):
            status = await server.health()
            seen.append(status)
            if status == health_pb2.HealthCheckResponse.SERVING:
                break
            await asyncio.sleep(0.05)
        assert health_pb2.HealthCheckResponse.NOT_SERVING in seen, seen[:10]
        assert seen[-1] == health_pb2.HealthCheckResponse.SERVING, server.log()
        assert await server.health("liveness") == health_pb2.HealthCheckResponse.SERVING
        server.signal()
        assert await server.wait_exit() == 0
    finally:
        server.kill()
        await proxy.stop()


async def test_calls_before_ready_are_unavailable(stores: Stores, tmp_path: Path) -> None:
    proxy = FaultProxy(target_of_dsn(stores.postgres_dsn))
    await proxy.start()
    proxy.connect_delay_s = 2.0
    server = ServerProcess(
        stores, tmp_path / "serve.log",
        postgres_dsn=dsn_through(stores.postgres_dsn, proxy.port), workers="1",
    )  # fmt: skip
    server.start()
    try:
        for _ in range(200):
            if await server.health() is not None:
                break
            await asyncio.sleep(0.02)
        async with grpc.aio.insecure_channel(server.target) as channel:
            ledger = Ledger(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await ledger.admin.CreateClient(la.CreateClientRequest(name=str(uuid.uuid4())))
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.kill()
        await proxy.stop()
