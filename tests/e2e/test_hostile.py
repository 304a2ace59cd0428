"""Hostile input: bytes that do not parse, invalid UTF-8, oversize messages, absurd values,
unknown enums and fields, and Hypothesis-generated requests. Each gets INVALID_ARGUMENT (or
RESOURCE_EXHAUSTED for size) or a format-error response, nothing is written, and the server
stays up."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authswitch.app import Application
from authswitch.v1 import authorization_pb2 as pb
from authswitch.v1 import authorization_pb2_grpc as pbg
from authswitch.v1 import common_pb2 as c
from authswitch.v1 import ledger_admin_pb2 as la
from tests.conftest import TEST_KEYS, settings_for
from tests.support.ledger import Ledger
from tests.support.stores import Stores
from tests.support.threaded import ThreadedApp

pytestmark = pytest.mark.timeout(300)

AUTHORIZE = "/authswitch.v1.AuthorizationService/Authorize"


def _raw(channel: grpc.aio.Channel, method: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    return channel.unary_unary(method, request_serializer=None, response_deserializer=None)


async def _still_serving(channel: grpc.aio.Channel) -> None:
    health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING


async def _decisions(app: Application) -> int:
    assert app.pool is not None
    return int(await app.pool.fetchval("SELECT count(*) FROM decisions"))


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xff\xff\xff",  # not protobuf at all
        b"\x0a\x05ab",  # a length that runs past the end
        b"\x0a\x02\xff\xfe",  # field 1 (source) holding invalid UTF-8
        b"\x12\x03\xc3\x28\x41",  # message_id with an invalid UTF-8 sequence
    ],
)
async def test_bytes_that_do_not_parse_are_invalid_argument(
    channel: grpc.aio.Channel, app: Application, payload: bytes
) -> None:
    before = await _decisions(app)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _raw(channel, AUTHORIZE)(payload)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _raw(channel, "/authswitch.v1.LedgerAdminService/CreateClient")(payload)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await _decisions(app) == before
    await _still_serving(channel)


async def test_oversize_messages_are_refused(ledger: Ledger, channel: grpc.aio.Channel) -> None:
    card = await ledger.card(1_000)
    request = ledger.request(card, 100)
    request.merchant.name = "x" * 70_000  # above the 64 KiB limit
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ledger.auth.Authorize(request)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ledger.admin.CreateClient(la.CreateClientRequest(name="y" * 100_000))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await _still_serving(channel)


async def test_absurd_and_unknown_values(ledger: Ledger, app: Application) -> None:
    card = await ledger.card(1_000)
    before = await _decisions(app)
    cases: list[pb.AuthorizeRequest] = []
    mutations: tuple[Callable[[pb.AuthorizeRequest], None], ...] = (
        lambda r: setattr(r, "message_id", "m" * 10_000),
        lambda r: setattr(r, "source", "s" * 65),
        lambda r: setattr(r, "transaction_type", 12345),
        lambda r: setattr(r, "channel", -7),
        lambda r: setattr(r.billing_amount, "amount_minor", -(2**63)),
        lambda r: setattr(r.billing_amount, "amount_minor", 2**63 - 1),
        lambda r: setattr(r.billing_amount, "asset", "gbp"),
        lambda r: setattr(r.billing_amount, "asset", "G" * 5_000),
        lambda r: setattr(r, "pan", "4" * 5_000),
        lambda r: setattr(r.auth, "pin", "12345678901234567890"),
        lambda r: setattr(r.merchant, "mcc", "\u0000\u0000\u0000\u0000"),
        lambda r: setattr(r.merchant, "country", "😀"),
    )
    for mutate in mutations:
        request = ledger.request(card, 100)
        mutate(request)
        cases.append(request)
    responses = await asyncio.gather(*(ledger.auth.Authorize(r) for r in cases))
    codes = [r.response_code for r in responses]
    assert set(codes) <= {"30", "13", "14"}, codes
    # A well-formed request with an invalid PAN is declined 14 and recorded; everything
    # malformed is answered and leaves nothing behind.
    recorded = sum(1 for code in codes if code == "14")
    assert await _decisions(app) == before + recorded


async def test_unknown_fields_are_ignored(ledger: Ledger, channel: grpc.aio.Channel) -> None:
    card = await ledger.card(1_000)
    request = ledger.request(card, 100)
    extra = b"\xa8\x1f\x01" + b"\xb2\x1f\x03abc"  # fields 501 (varint) and 502 (bytes)
    raw = await _raw(channel, AUTHORIZE)(request.SerializeToString() + extra)
    assert pb.AuthorizeResponse.FromString(raw).response_code == "00"


async def test_hostile_admin_text(ledger: Ledger) -> None:
    for name in ("nul\x00inside", "\x1b[31mred", "tab\there"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await ledger.admin.CreateClient(la.CreateClientRequest(name=name))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ledger.admin.GetBalances(la.GetBalancesRequest(account_id="'; DROP TABLE x; --"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


# -- Hypothesis: arbitrary requests against a server in its own thread -------------------------

texts = st.one_of(st.text(max_size=40), st.sampled_from(["", "GBP", "visa", "5411", "3012"]))
amounts = st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-5, 10_000))
enums = st.integers(-(2**31), 2**31 - 1) | st.integers(0, 9)


@st.composite
def requests(draw: st.DrawFn) -> pb.AuthorizeRequest:
    return pb.AuthorizeRequest(
        source=draw(texts),
        message_id=draw(texts),
        network_reference=draw(texts),
        transaction_type=draw(enums),  # type: ignore[arg-type]
        pan=draw(st.one_of(texts, st.from_regex(r"\A4\d{15}\Z"))),
        auth=pb.AuthData(pin=draw(texts), expiry=draw(texts), cvv2=draw(texts)),
        billing_amount=c.Money(amount_minor=draw(amounts), asset=draw(texts)),
        transaction_amount=c.Money(amount_minor=draw(amounts), asset=draw(texts)),
        partial_approval_allowed=draw(st.booleans()),
        merchant=pb.Merchant(mcc=draw(texts), country=draw(texts)),
        channel=draw(enums),  # type: ignore[arg-type]
        incremental=draw(st.booleans()),
        original_message_id=draw(texts),
    )


@pytest.fixture(scope="module")
def threaded(stores: Stores) -> Iterator[ThreadedApp]:
    app = Application(
        settings_for(stores, redis_key_prefix=stores.redis_prefix + "h"), keys=TEST_KEYS
    )
    running = ThreadedApp(app)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def test_generated_requests_never_break_the_server(threaded: ThreadedApp) -> None:
    """Every generated request gets a response with a known code; a format error (30, 13)
    writes nothing; the server keeps serving."""
    app = threaded.app
    channel = grpc.insecure_channel(f"127.0.0.1:{app.grpc_port}")
    stub = pbg.AuthorizationServiceStub(channel)
    assert app.pool is not None

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(requests())
    def check(request: pb.AuthorizeRequest) -> None:
        response = stub.Authorize(request, timeout=10)
        assert response.response_code in {"00", "10", "13", "14", "30", "51", "05", "91", "94"}
        if response.response_code in ("30", "13"):
            assert not response.decision_id
            key = request.source + request.message_id  # with a NUL it cannot be stored
            if request.source and request.message_id and "\x00" not in key:
                written = threaded.call(
                    app.pool.fetchval(  # type: ignore[union-attr]
                        "SELECT count(*) FROM decisions WHERE source = $1 AND message_id = $2",
                        request.source, request.message_id,
                    )
                )  # fmt: skip
                assert written == 0

    try:
        check()
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        channel.close()
