"""Every List RPC pages with a token, and every page fits the 64 KiB message limit; the ids
an operator needs (clients, programmes) can be listed, and cards and accounts say whose they
are."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from authswitch.adapters.grpc.paging import PAGE_BYTES_MAX
from authswitch.app import Application
from authswitch.v1 import common_pb2, ledger_admin_pb2
from tests.conftest import TEST_KEYS, settings_for
from tests.support.ledger import Ledger
from tests.support.stores import Stores
from tests.support.stores import test_database as fresh_database

pytestmark = pytest.mark.timeout(120)

MESSAGE_BYTES_MAX = 64 * 1024


async def _all_pages(
    call: Callable[[Any], Awaitable[Any]], request: Any, field: str
) -> tuple[list[Any], int]:
    """Every item of a list, page by page, and how many pages it took. Each page must fit
    the message limit (a larger one would have failed RESOURCE_EXHAUSTED already)."""
    items: list[Any] = []
    pages = 0
    while True:
        response = await call(request)
        pages += 1
        assert response.ByteSize() <= MESSAGE_BYTES_MAX
        items.extend(getattr(response, field))
        if not response.next_page_token:
            return items, pages
        assert getattr(response, field), "a page with a token has items"
        request.page_token = response.next_page_token


async def test_clients_are_listed_each_once_and_got_by_id(ledger: Ledger) -> None:
    names = [f"client {uuid.uuid4().hex[:8]}" for _ in range(5)]
    ids = [
        (await ledger.admin.CreateClient(ledger_admin_pb2.CreateClientRequest(name=n))).client_id
        for n in names
    ]
    listed, pages = await _all_pages(
        ledger.admin.ListClients, ledger_admin_pb2.ListClientsRequest(page_size=2), "clients"
    )
    listed_ids = [c.client_id for c in listed]
    assert len(listed_ids) == len(set(listed_ids)), "a client listed twice"
    assert set(ids) <= set(listed_ids)
    assert pages >= 3
    got = await ledger.admin.GetClient(ledger_admin_pb2.GetClientRequest(client_id=ids[0]))
    assert got.client.name == names[0]
    assert got.client.created_at.seconds > 0
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await ledger.admin.GetClient(ledger_admin_pb2.GetClientRequest(client_id=str(uuid.uuid4())))
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND


async def test_programs_of_a_client(ledger: Ledger) -> None:
    client = await ledger.admin.CreateClient(ledger_admin_pb2.CreateClientRequest(name="two"))
    created = []
    for mode in (common_pb2.LEDGER_MODE_ON_LEDGER, common_pb2.LEDGER_MODE_OFF_LEDGER):
        program = await ledger.admin.CreateProgram(
            ledger_admin_pb2.CreateProgramRequest(client_id=client.client_id, name="p", mode=mode)
        )
        created.append(program.program_id)
    listed, _ = await _all_pages(
        ledger.admin.ListPrograms,
        ledger_admin_pb2.ListProgramsRequest(client_id=client.client_id, page_size=1),
        "programs",
    )
    assert [p.program_id for p in listed] == created
    assert [p.mode for p in listed] == [
        common_pb2.LEDGER_MODE_ON_LEDGER,
        common_pb2.LEDGER_MODE_OFF_LEDGER,
    ]
    assert {p.client_id for p in listed} == {client.client_id}


async def test_card_and_account_name_their_client(ledger: Ledger) -> None:
    client = await ledger.admin.CreateClient(ledger_admin_pb2.CreateClientRequest(name="owner"))
    program = await ledger.admin.CreateProgram(
        ledger_admin_pb2.CreateProgramRequest(
            client_id=client.client_id, name="p", mode=common_pb2.LEDGER_MODE_ON_LEDGER
        )
    )
    product_id = await ledger.product(program.program_id)
    account_id = await ledger.account(product_id)
    await ledger.credit(account_id, 1_234)
    card = await ledger.card(account_id=account_id)
    got = await ledger.admin.GetCard(ledger_admin_pb2.GetCardRequest(card_id=card.card_id))
    assert (got.client_id, got.program_id, got.product_id) == (
        client.client_id,
        program.program_id,
        product_id,
    )
    account = await ledger.admin.GetAccount(
        ledger_admin_pb2.GetAccountRequest(account_id=account_id)
    )
    assert (account.client_id, account.program_id, account.product_id) == (
        client.client_id,
        program.program_id,
        product_id,
    )
    assert account.kind == "CUSTOMER"
    assert account.account_type == common_pb2.ACCOUNT_TYPE_SINGLE
    assert account.name == "acct"
    assert [(b.asset, b.actual_minor) for b in account.balances] == [("GBP", 1_234)]
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await ledger.admin.GetAccount(
            ledger_admin_pb2.GetAccountRequest(account_id=str(uuid.uuid4()))
        )
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.fixture
async def own_database(stores: Stores) -> AsyncIterator[Ledger]:
    """A server on a database of its own: the 5,000 holds stay out of the session's, whose
    other tests age holds off in batches."""
    async with fresh_database(stores.postgres_dsn) as dsn:
        app = Application(
            settings_for(stores, postgres_dsn=dsn, redis_key_prefix=stores.redis_prefix + "l"),
            keys=TEST_KEYS,
        )
        await app.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
                yield Ledger(channel)
        finally:
            await app.stop()


@pytest.mark.timeout(300)
async def test_5000_holds_of_one_account_are_listed_each_once(own_database: Ledger) -> None:
    """At the largest page size (1,000) a page of holds would be ~250 KB: pages end at the
    byte budget instead, and the token carries on, so every hold is listed exactly once."""
    ledger = own_database
    holds = 5_000
    card = await ledger.card(balance_minor=holds)
    semaphore = asyncio.Semaphore(64)

    async def one() -> None:
        async with semaphore:
            answer = await ledger.authorize(card, 1)
            assert answer.response_code == "00", answer

    await asyncio.gather(*(one() for _ in range(holds)))
    listed, pages = await _all_pages(
        ledger.admin.ListHolds,
        ledger_admin_pb2.ListHoldsRequest(account_id=card.account_id, page_size=1_000),
        "holds",
    )
    ids = [h.hold_id for h in listed]
    assert len(ids) == holds
    assert len(set(ids)) == holds
    assert pages > holds // 1_000, "pages are bounded by bytes, not only by count"
    created = [h.created_at.ToDatetime() for h in listed]
    assert created == sorted(created, reverse=True), "newest first across pages"
    open_only, _ = await _all_pages(
        ledger.admin.ListHolds,
        ledger_admin_pb2.ListHoldsRequest(
            account_id=card.account_id, page_size=1_000, open_only=True
        ),
        "holds",
    )
    assert len({h.hold_id for h in open_only}) == holds


async def test_every_list_pages_each_item_once(ledger: Ledger) -> None:
    card = await ledger.card(balance_minor=10_000)
    for _ in range(3):
        await ledger.authorize(card, 100)
    for amount in (100, 200, 300):
        await ledger.limit(
            card.product_id,
            subject=ledger_admin_pb2.LIMIT_SUBJECT_CARD,
            period=ledger_admin_pb2.PERIOD_DAY,
            asset="GBP",
            amount_max_minor=100_000 + amount,
        )
    rule = ledger_admin_pb2.FeeRule(
        name="f", stage=ledger_admin_pb2.FEE_STAGE_AUTHORIZATION, asset="GBP", flat_minor=1
    )
    for _ in range(3):
        await ledger.fees(card.product_id, rule)

    assets, _ = await _all_pages(
        ledger.admin.ListAssets, ledger_admin_pb2.ListAssetsRequest(page_size=2), "assets"
    )
    codes = [a.code for a in assets]
    assert codes == sorted(set(codes))
    assert {"GBP", "EUR", "BTC"} <= set(codes)

    limits, pages = await _all_pages(
        ledger.admin.ListLimits,
        ledger_admin_pb2.ListLimitsRequest(product_id=card.product_id, page_size=2),
        "limits",
    )
    assert [x.amount_max_minor for x in limits] == [100_100, 100_200, 100_300]
    assert pages == 2

    schedules, pages = await _all_pages(
        ledger.admin.ListFeeSchedules,
        ledger_admin_pb2.ListFeeSchedulesRequest(product_id=card.product_id, page_size=1),
        "schedules",
    )
    assert [s.version for s in schedules] == [1, 2, 3]
    assert pages == 3

    history, _ = await _all_pages(
        ledger.admin.ListAccountHistory,
        ledger_admin_pb2.ListAccountHistoryRequest(account_id=card.account_id, page_size=1),
        "entries",
    )
    references = [e.reference for e in history]
    assert len(references) == len(set(references)) == 4  # the load and three holds


async def test_page_size_and_token_are_checked(ledger: Ledger) -> None:
    account_id = await ledger.account()
    other = await ledger.admin.ListClients(ledger_admin_pb2.ListClientsRequest(page_size=1))
    assert other.next_page_token
    for request in (
        ledger_admin_pb2.ListHoldsRequest(account_id=account_id, page_token="not a token"),
        # a token of another list
        ledger_admin_pb2.ListHoldsRequest(account_id=account_id, page_token=other.next_page_token),
        ledger_admin_pb2.ListHoldsRequest(account_id=account_id, page_size=-1),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await ledger.admin.ListHolds(request)
        assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_page_budget_leaves_room_for_the_rest_of_a_response() -> None:
    assert PAGE_BYTES_MAX + 1_024 < MESSAGE_BYTES_MAX
