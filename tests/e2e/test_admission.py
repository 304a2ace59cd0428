"""Overload: past AUTHSWITCH_AUTHORIZE_IN_FLIGHT_MAX an authorisation is refused at once,
with nothing written, and the process goes on deciding."""

from __future__ import annotations

import asyncio

import asyncpg
import grpc
import pytest

from authswitch import metrics
from authswitch.app import Application
from authswitch.v1 import authorization_pb2 as pb
from tests.conftest import TEST_KEYS, settings_for
from tests.support.ledger import Ledger
from tests.support.stores import Stores

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
            conn = await asyncpg.connect(stores.postgres_dsn)
            try:
                stored = await conn.fetchval(
                    "SELECT count(*) FROM decisions WHERE message_id = ANY($1::text[])",
                    [r.message_id for r in requests],
                )
            finally:
                await conn.close()
            assert stored == len(answered)
            # The limit counts calls in flight, not calls ever made: it decides on.
            assert (await ledger.authorize(card, 100)).response_code == "00"
    finally:
        await app.stop()
