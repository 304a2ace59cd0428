"""An application of its own on a clock the test moves (age-off, effective dates, schedules)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from authswitch.app import Application
from authswitch.service.clock import ManualClock
from tests.conftest import TEST_KEYS, settings_for
from tests.support.ledger import Ledger
from tests.support.stores import Stores


@contextlib.asynccontextmanager
async def clocked_app(
    stores: Stores, suffix: str, clock: ManualClock | None = None, **overrides: object
) -> AsyncIterator[tuple[Application, Ledger, ManualClock]]:
    """Its Redis keys under their own prefix (``suffix``), so its cache never meets the
    session application's."""
    clock = clock or ManualClock()
    app = Application(
        settings_for(stores, redis_key_prefix=stores.redis_prefix + suffix, **overrides),
        clock=clock,
        keys=TEST_KEYS,
    )
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            yield app, Ledger(channel), clock
    finally:
        await app.stop()
