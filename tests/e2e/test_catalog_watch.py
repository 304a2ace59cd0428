"""A catalogue change made through one process applies in every process (issue 18: spend
controls set through LedgerAdminService take effect everywhere): two applications on the
same Postgres and Redis, as two worker processes are."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest

from authswitch.app import Application
from authswitch.v1 import ledger_admin_pb2 as la
from tests.conftest import TEST_KEYS, settings_for
from tests.support.ledger import Ledger
from tests.support.stores import Stores

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
async def other(stores: Stores) -> AsyncIterator[Ledger]:
    """A second process's server."""
    app = Application(settings_for(stores, catalog_poll_ms=50), keys=TEST_KEYS)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            yield Ledger(channel)
    finally:
        await app.stop()


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + 20
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.05)


async def test_spend_controls_set_in_one_process_apply_in_another(
    ledger: Ledger, other: Ledger
) -> None:
    card = await ledger.card(100_000)
    assert (await other.authorize(card, 100, mcc="7995")).response_code == "00"  # cached there
    await ledger.admin.SetSpendControls(
        la.SetSpendControlsRequest(
            subject=la.CONTROL_SUBJECT_CARD, subject_id=card.card_id,
            controls=la.SpendControls(blocked_mccs=["7995"]),
        )
    )  # fmt: skip

    async def declined() -> bool:
        return (await other.authorize(card, 100, mcc="7995")).response_code == "57"

    await eventually(declined, "the other process applies the card's new controls")


async def test_a_product_limit_set_in_one_process_applies_in_another(
    ledger: Ledger, other: Ledger
) -> None:
    card = await ledger.card(100_000)
    assert (await other.authorize(card, 6_000)).response_code == "00"  # limits cached there
    await ledger.limit(
        card.product_id, subject=la.LIMIT_SUBJECT_CARD, period=la.PERIOD_TRANSACTION,
        amount_max_minor=5_000,
    )  # fmt: skip

    async def declined() -> bool:
        return (await other.authorize(card, 6_000)).response_code == "61"

    await eventually(declined, "the other process applies the product's new limit")
