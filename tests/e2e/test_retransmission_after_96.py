"""A 96 is not a stored decision (docs/client-contract.md, "Retransmitting after a 96"): a
request answered 96 because Postgres could not be reached left nothing durable, so its
retransmission under the same message id is decided afresh, on the balance as it is then,
and that decision, stored once, answers every later retransmission. Off-ledger, the client
is asked again, and its earlier hold for the message id is replaced, not added to."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
import redis.asyncio as aioredis

from authswitch.app import Application
from authswitch.reference_client import ReferenceClient, ReferenceLedger, serve_reference_client
from authswitch.v1 import authorization_pb2 as pb
from authswitch.v1 import common_pb2 as c
from authswitch.v1 import ledger_admin_pb2 as la
from tests.conftest import TEST_KEYS, settings_for
from tests.support.ledger import Ledger
from tests.support.proxy import FaultProxy, dsn_through, target_of_dsn
from tests.support.stores import Stores


@pytest.fixture
async def proxy(stores: Stores) -> AsyncIterator[FaultProxy]:
    started = FaultProxy(target_of_dsn(stores.postgres_dsn))
    await started.start()
    try:
        yield started
    finally:
        await started.stop()


async def _records(dsn: str, request: pb.AuthorizeRequest) -> list[tuple[str, int]]:
    """(response code, hold amount or 0) of every durable decision under the request's id."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT d.response_code, coalesce(h.amount_minor, 0) FROM decisions d "
            "LEFT JOIN holds h USING (source, message_id) "
            "WHERE d.source = $1 AND d.message_id = $2",
            request.source,
            request.message_id,
        )
    finally:
        await conn.close()
    return [(r[0], int(r[1])) for r in rows]


@contextlib.asynccontextmanager
async def _app(stores: Stores, proxy: FaultProxy, prefix: str) -> AsyncIterator[Ledger]:
    """authswitch reaching Postgres through ``proxy``."""
    app = Application(
        settings_for(
            stores,
            postgres_dsn=dsn_through(stores.postgres_dsn, proxy.port),
            redis_key_prefix=prefix,
            postgres_statement_timeout_ms=1_500,
        ),
        keys=TEST_KEYS,
    )
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            yield Ledger(channel)
    finally:
        await app.stop()
        client = aioredis.Redis.from_url(stores.redis_url)
        try:
            async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
                await client.delete(key)
        finally:
            await client.aclose()


async def test_a_request_answered_96_is_decided_afresh_when_retransmitted(
    stores: Stores, proxy: FaultProxy
) -> None:
    async with _app(stores, proxy, stores.redis_prefix + "r96") as ledger:
        card = await ledger.card(10_000)  # 100.00
        assert (await ledger.authorize(card, 1)).response_code == "00"  # cached, warm

        # Postgres unreachable: every connection cut, new ones refused.
        proxy.refuse = True
        await proxy.cut()
        first = ledger.request(card, 4_000)  # 40.00
        second = ledger.request(card, 1_000)  # 10.00
        assert (await ledger.auth.Authorize(first, timeout=20)).response_code == "96"
        assert (await ledger.auth.Authorize(second, timeout=20)).response_code == "96"
        proxy.refuse = False

        # Nothing of either is durable, and nothing is held for them.
        assert await _records(stores.postgres_dsn, first) == []
        assert await _records(stores.postgres_dsn, second) == []
        assert await ledger.figures(card.account_id) == (10_000, 9_999, 1)

        # Meanwhile another purchase takes most of the balance.
        assert (await ledger.authorize(card, 8_000)).response_code == "00"

        # The 40.00 retransmitted: decided afresh on the balance as it is now (19.99
        # left), not answered 96 again and not approved on the balance of before.
        again = await ledger.auth.Authorize(first, timeout=20)
        assert again.response_code == "51"
        assert await _records(stores.postgres_dsn, first) == [("51", 0)]
        # That decision is stored: every later retransmission gets it, byte for byte.
        assert await ledger.auth.Authorize(first, timeout=20) == again

        # The 10.00 retransmitted: approved, once, with one durable record and one hold.
        approved = await ledger.auth.Authorize(second, timeout=20)
        assert approved.response_code == "00"
        assert await ledger.auth.Authorize(second, timeout=20) == approved
        assert await _records(stores.postgres_dsn, second) == [("00", 1_000)]
        assert await ledger.figures(card.account_id) == (10_000, 999, 9_001)


async def test_off_ledger_the_client_decides_the_retransmission_afresh(
    stores: Stores, proxy: FaultProxy
) -> None:
    client = ReferenceClient(ReferenceLedger(opening_minor=10_000), token="r96-token")
    client_server, client_port = await serve_reference_client(client, "127.0.0.1:0")
    os.environ["AUTHSWITCH_SECRET_R96_TOKEN"] = "r96-token"
    try:
        async with _app(stores, proxy, stores.redis_prefix + "o96") as ledger:
            program_id = await ledger.program(c.LEDGER_MODE_OFF_LEDGER)
            await ledger.admin.SetProgramRouting(
                la.SetProgramRoutingRequest(
                    program_id=program_id, target=f"127.0.0.1:{client_port}",
                    tls=la.CLIENT_TLS_NONE, token_secret="r96-token", deadline_ms=2_000,
                    stand_in=la.STAND_IN_POLICY_DECLINE, breaker_failures=5,
                    breaker_open_ms=5_000,
                )
            )  # fmt: skip
            account_id = await ledger.account(await ledger.product(program_id))
            card = await ledger.card(account_id=account_id)
            assert (await ledger.authorize(card, 1)).response_code == "00"  # warm

            # The client approves 60.00 of its 100.00 and holds it; authswitch cannot record
            # the decision and answers 96.
            proxy.refuse = True
            await proxy.cut()
            request = ledger.request(card, 6_000)
            assert (await ledger.auth.Authorize(request, timeout=20)).response_code == "96"
            proxy.refuse = False
            asked = [d for d in client.decisions if d.message_id == request.message_id]
            assert len(asked) == 1, "the client was not asked before the failure"
            assert await _records(stores.postgres_dsn, request) == []

            # The retransmission asks the client again; its earlier hold for the message id
            # is replaced, so it approves (the stale hold would have left 39.99: 51).
            again = await ledger.auth.Authorize(request, timeout=20)
            assert again.response_code == "00", again
            asked = [d for d in client.decisions if d.message_id == request.message_id]
            assert len(asked) == 2
            assert asked[0].decision_id != asked[1].decision_id  # a new decision
            assert client.ledger.available(account_id) == 10_000 - 1 - 6_000
            assert await _records(stores.postgres_dsn, request) == [("00", 0)]
            assert await ledger.auth.Authorize(request, timeout=20) == again
            assert len([d for d in client.decisions if d.message_id == request.message_id]) == 2
    finally:
        await client_server.stop(1)
        os.environ.pop("AUTHSWITCH_SECRET_R96_TOKEN", None)
