"""Spend controls per card and per account (issue 18, item 1), end to end: a real server on
a real gRPC socket, real Postgres and Redis."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from authswitch.app import Application
from authswitch.v1 import authorization_pb2 as pb
from authswitch.v1 import common_pb2 as c
from authswitch.v1 import ledger_admin_pb2 as la
from tests.support.ledger import IssuedCard, Ledger

pytestmark = pytest.mark.timeout(90)

CARD, ACCOUNT = la.CONTROL_SUBJECT_CARD, la.CONTROL_SUBJECT_ACCOUNT


async def control(
    ledger: Ledger, subject: la.ControlSubject.ValueType, subject_id: str, *,
    effective_from: datetime | None = None, **fields: Any,
) -> int:  # fmt: skip
    request = la.SetSpendControlsRequest(
        subject=subject, subject_id=subject_id, controls=la.SpendControls(**fields)
    )
    if effective_from is not None:
        request.effective_from.FromDatetime(effective_from)
    return (await ledger.admin.SetSpendControls(request)).version


async def send(
    ledger: Ledger, card: IssuedCard, amount_minor: int, *, merchant_id: str = "",
    network_data: pb.NetworkData | None = None, **kwargs: Any,
) -> pb.AuthorizeResponse:  # fmt: skip
    request = ledger.request(card, amount_minor, **kwargs)
    request.merchant.merchant_id = merchant_id
    if network_data is not None:
        request.network_data.CopyFrom(network_data)
    return await ledger.auth.Authorize(request)


def codes(*responses: pb.AuthorizeResponse) -> list[str]:
    return [r.response_code for r in responses]


async def test_a_blocked_mcc_declines_57_naming_the_control(ledger: Ledger) -> None:
    card = await ledger.card(10_000)
    await control(ledger, CARD, card.card_id, blocked_mccs=["7995"])
    declined = await send(ledger, card, 1_000, mcc="7995")
    assert (declined.response_code, declined.reason) == ("57", pb.REASON_TRANSACTION_NOT_PERMITTED)
    assert declined.detail == "card spend control: merchant category 7995 is blocked"
    assert (await send(ledger, card, 1_000, mcc="5411")).response_code == "00"
    assert (await ledger.balance(card.account_id)).available_minor == 9_000


async def test_account_controls_apply_to_every_card_of_the_account(ledger: Ledger) -> None:
    card = await ledger.card(10_000)
    second = await ledger.card(account_id=card.account_id)
    other = await ledger.card(10_000)
    await control(
        ledger, ACCOUNT, card.account_id, allowed_mccs=["5411"],
        allowed_mcc_ranges=[la.MccRange(from_mcc="3000", to_mcc="3350")],
    )  # fmt: skip
    for issued in (card, second):
        assert codes(
            await send(ledger, issued, 100, mcc="5411"),
            await send(ledger, issued, 100, mcc="3000"),
            await send(ledger, issued, 100, mcc="3350"),
            await send(ledger, issued, 100, mcc="3351"),
            await send(ledger, issued, 100, mcc="5812"),
        ) == ["00", "00", "00", "57", "57"]
    declined = await send(ledger, second, 100, mcc="5812")
    assert declined.detail == "account spend control: merchant category 5812 is not allowed"
    assert (await send(ledger, other, 100, mcc="5812")).response_code == "00"


async def test_countries_merchants_channels_and_card_presence(ledger: Ledger) -> None:
    card = await ledger.card(100_000)
    await control(
        ledger, CARD, card.card_id, allowed_countries=["GB", "FR"], blocked_merchant_ids=["BAD1"],
        allowed_channels=[c.CHANNEL_POS, c.CHANNEL_ECOMMERCE],
        card_presence=la.CARD_PRESENCE_CONTROL_NOT_PRESENT_ONLY,
    )  # fmt: skip
    present = pb.NetworkData(card_present=pb.PRESENCE_PRESENT)
    assert codes(
        await send(ledger, card, 100, country="FR"),
        await send(ledger, card, 100, country="DE"),
        await send(ledger, card, 100, merchant_id="BAD1"),
        await send(ledger, card, 100, merchant_id="GOOD1"),
        await send(ledger, card, 100, channel=c.CHANNEL_MOTO),
        await send(ledger, card, 100, channel=c.CHANNEL_POS, network_data=present),
        await send(ledger, card, 100, channel=c.CHANNEL_POS),
    ) == ["00", "57", "57", "00", "57", "57", "00"]
    only_here = await ledger.card(100_000)
    await control(
        ledger, CARD, only_here.card_id, allowed_merchant_ids=["SHOP1"],
        card_presence=la.CARD_PRESENCE_CONTROL_PRESENT_ONLY,
    )  # fmt: skip
    assert codes(
        await send(ledger, only_here, 100, merchant_id="SHOP1", network_data=present),
        await send(ledger, only_here, 100, merchant_id="SHOP2", network_data=present),
        await send(ledger, only_here, 100, merchant_id="SHOP1"),
    ) == ["00", "57", "57"]


async def test_decline_ecommerce_without_3ds_above_an_amount(ledger: Ledger) -> None:
    card = await ledger.card(100_000)
    rule = la.DeclineRule(
        name="3DS above 50", channels=[c.CHANNEL_ECOMMERCE], without_three_ds=True,
        amount_above_minor=5_000, asset="GBP",
    )  # fmt: skip
    await control(ledger, CARD, card.card_id, decline_rules=[rule])
    authenticated = pb.NetworkData(
        three_ds=pb.ThreeDSecure(result=pb.THREE_DS_RESULT_AUTHENTICATED, eci="05")
    )
    attempted = pb.NetworkData(three_ds=pb.ThreeDSecure(result=pb.THREE_DS_RESULT_ATTEMPTED))
    declined = await send(ledger, card, 5_001)
    assert declined.response_code == "57"
    assert declined.detail == "card spend control: decline rule '3DS above 50'"
    assert codes(
        await send(ledger, card, 5_000),
        await send(ledger, card, 5_001, network_data=attempted),
        await send(ledger, card, 5_001, network_data=authenticated),
        await send(ledger, card, 5_001, channel=c.CHANNEL_POS),
    ) == ["00", "57", "00", "00"]


async def test_risk_score_and_stored_credential_rules(ledger: Ledger) -> None:
    card = await ledger.card(100_000)
    rules = [
        la.DeclineRule(name="risky", network_risk_score_min=800),
        la.DeclineRule(name="no subscriptions", stored_credential=True),
    ]
    await control(ledger, CARD, card.card_id, decline_rules=rules)
    risky = pb.NetworkData()
    risky.network_risk_score = 800
    calm = pb.NetworkData()
    calm.network_risk_score = 799
    assert codes(
        await send(ledger, card, 100, network_data=risky),
        await send(ledger, card, 100, network_data=calm),
        await send(ledger, card, 100),
        await send(ledger, card, 100, network_data=pb.NetworkData(recurring=True)),
    ) == ["57", "00", "00", "57"]


async def test_an_earlier_check_wins_over_a_control(ledger: Ledger) -> None:
    """DESIGN.md precedence: card status (41), CVV2 (N7) before the product check (57)."""
    card = await ledger.card(10_000)
    await control(ledger, CARD, card.card_id, blocked_mccs=["7995"])
    assert (await send(ledger, card, 100, mcc="7995", cvv2="000")).response_code == "N7"
    await ledger.admin.ChangeCardStatus(
        la.ChangeCardStatusRequest(card_id=card.card_id, status=c.CARD_STATUS_LOST, reason="x")
    )
    declined = await send(ledger, card, 100, mcc="7995")
    assert (declined.response_code, declined.detail) == ("41", "")


async def test_amount_and_count_limits_per_transaction_day_month_lifetime(
    ledger: Ledger,
) -> None:
    card = await ledger.card(1_000_000)
    await control(
        ledger, CARD, card.card_id,
        limits=[
            la.SpendLimit(name="each", period=la.PERIOD_TRANSACTION, asset="GBP",
                          amount_max_minor=50_000),
            la.SpendLimit(name="daily", period=la.PERIOD_DAY, asset="GBP",
                          amount_max_minor=100_000),
            la.SpendLimit(name="monthly", period=la.PERIOD_MONTH, asset="GBP", count_max=4),
            la.SpendLimit(name="ever", period=la.PERIOD_LIFETIME, asset="GBP",
                          amount_max_minor=150_000),
        ],
    )  # fmt: skip
    each = await send(ledger, card, 50_001)
    assert each.response_code == "61"
    assert each.detail == "card spend limit 'each' (per transaction, 500.00 GBP) exceeded"
    assert codes(await send(ledger, card, 50_000), await send(ledger, card, 50_000)) == ["00"] * 2
    daily = await send(ledger, card, 1)
    assert daily.response_code == "61"
    assert daily.detail == "card spend limit 'daily' (per day, 1000.00 GBP) exceeded"
    # The monthly count (4) and lifetime amount (1,500.00) are counted under their names.
    usage = await ledger.usage(card.account_id)
    month = datetime.now(UTC).astimezone().strftime("%Y%m")
    assert usage[f"S:{card.card_id}:ever:life"] == (100_000, 2)
    assert any(k.startswith(f"S:{card.card_id}:monthly:") and v == (100_000, 2)
               for k, v in usage.items()), (usage, month)  # fmt: skip


async def test_count_and_lifetime_limits_decline_65_and_61(ledger: Ledger) -> None:
    card = await ledger.card(1_000_000)
    await control(
        ledger, CARD, card.card_id,
        limits=[
            la.SpendLimit(name="few", period=la.PERIOD_MONTH, asset="GBP", count_max=2),
            la.SpendLimit(name="ever", period=la.PERIOD_LIFETIME, asset="GBP",
                          amount_max_minor=1_000),
        ],
    )  # fmt: skip
    assert codes(await send(ledger, card, 400), await send(ledger, card, 400)) == ["00", "00"]
    third = await send(ledger, card, 300)  # 11.00 ever, and a third transaction this month
    assert third.response_code == "61"  # amount is checked before count (check 9)
    assert third.detail == "card spend limit 'ever' (lifetime, 10.00 GBP) exceeded"
    fourth = await send(ledger, card, 10)
    assert fourth.response_code == "65"
    assert fourth.detail == "card spend limit 'few' (per month, 2 transactions) exceeded"


async def test_an_account_limit_counts_every_card(ledger: Ledger) -> None:
    card = await ledger.card(100_000)
    second = await ledger.card(account_id=card.account_id)
    await control(
        ledger, ACCOUNT, card.account_id,
        limits=[la.SpendLimit(name="daily", period=la.PERIOD_DAY, asset="GBP",
                              amount_max_minor=10_000)],
    )  # fmt: skip
    assert codes(
        await send(ledger, card, 6_000),
        await send(ledger, second, 4_001),
        await send(ledger, second, 4_000),
    ) == ["00", "61", "00"]
    assert (await send(ledger, second, 4_001)).detail.startswith("account spend limit 'daily'")


async def test_concurrent_requests_never_pass_a_control_limit_together(ledger: Ledger) -> None:
    card = await ledger.card(1_000_000)
    second = await ledger.card(account_id=card.account_id)
    await control(
        ledger, ACCOUNT, card.account_id,
        limits=[la.SpendLimit(name="daily", period=la.PERIOD_DAY, asset="GBP",
                              amount_max_minor=10_000, count_max=7)],
    )  # fmt: skip
    responses = await asyncio.gather(
        *(send(ledger, (card, second)[n % 2], 1_000) for n in range(40))
    )
    assert codes(*responses).count("00") == 7
    balance = await ledger.balance(card.account_id)
    assert balance.authorized_minor == 7_000


async def test_a_reversal_gives_back_what_it_released(ledger: Ledger) -> None:
    card = await ledger.card(100_000)
    await control(
        ledger, CARD, card.card_id,
        limits=[la.SpendLimit(name="daily", period=la.PERIOD_DAY, asset="GBP",
                              amount_max_minor=10_000)],
    )  # fmt: skip
    request = ledger.request(card, 10_000)
    assert (await ledger.auth.Authorize(request)).response_code == "00"
    assert (await send(ledger, card, 1)).response_code == "61"
    await ledger.reverse(request.message_id)
    assert (await send(ledger, card, 10_000)).response_code == "00"


async def test_counters_are_rebuilt_from_postgres_after_a_cache_loss(
    ledger: Ledger, app: Application
) -> None:
    card = await ledger.card(100_000)
    await control(
        ledger, CARD, card.card_id,
        limits=[la.SpendLimit(name="daily", period=la.PERIOD_DAY, asset="GBP",
                              amount_max_minor=10_000)],
    )  # fmt: skip
    assert (await send(ledger, card, 8_000)).response_code == "00"
    assert app.redis is not None
    await app.redis.delete(app.cache.keys.state(card.account_id))
    assert (await send(ledger, card, 2_001)).response_code == "61"
    assert (await send(ledger, card, 2_000)).response_code == "00"


async def test_controls_may_replace_the_product_limits(ledger: Ledger) -> None:
    card = await ledger.card(100_000)
    await ledger.limit(
        card.product_id, subject=la.LIMIT_SUBJECT_CARD, period=la.PERIOD_DAY,
        amount_max_minor=5_000,
    )  # fmt: skip
    other = await ledger.card(account_id=card.account_id)
    generous = [la.SpendLimit(name="vip", period=la.PERIOD_DAY, asset="GBP",
                              amount_max_minor=20_000)]  # fmt: skip
    await control(ledger, CARD, card.card_id, limits=generous)
    assert (await send(ledger, card, 6_000)).response_code == "61"  # narrowing only
    await control(ledger, CARD, card.card_id, limits=generous, replace_product_limits=True)
    assert codes(
        await send(ledger, card, 6_000),
        await send(ledger, card, 14_000),
        await send(ledger, card, 1),
        await send(ledger, other, 6_000),  # the product's limit still holds for other cards
    ) == ["00", "00", "61", "61"]


async def test_versions_are_effective_dated_and_listed_with_the_card(ledger: Ledger) -> None:
    card = await ledger.card(100_000)
    now = datetime.now(UTC)
    first = await control(ledger, CARD, card.card_id, blocked_mccs=["7995"])
    later = await control(
        ledger, CARD, card.card_id, effective_from=now + timedelta(hours=1),
        blocked_mccs=["5411"],
    )  # fmt: skip
    assert (first, later) == (1, 2)
    assert codes(
        await send(ledger, card, 100, mcc="7995"), await send(ledger, card, 100, mcc="5411")
    ) == ["57", "00"]
    got = await ledger.admin.GetCard(la.GetCardRequest(card_id=card.card_id))
    assert [(v.version, list(v.controls.blocked_mccs)) for v in got.spend_controls] == [
        (1, ["7995"]),
        (2, ["5411"]),
    ]
    await control(ledger, ACCOUNT, card.account_id, blocked_countries=["US"])
    # Backdated before version 1 took effect, a version is never in force: version 1 is
    # later. An empty set from now lifts the card's controls.
    backdated = await control(
        ledger, CARD, card.card_id, effective_from=now - timedelta(days=1), blocked_mccs=["0001"]
    )
    assert (await send(ledger, card, 100, mcc="7995")).response_code == "57"
    lifted = await control(ledger, CARD, card.card_id)
    assert (backdated, lifted) == (3, 4)
    assert codes(
        await send(ledger, card, 100, mcc="7995"), await send(ledger, card, 100, country="US")
    ) == ["00", "57"]
    got = await ledger.admin.GetCard(la.GetCardRequest(card_id=card.card_id))
    assert [(v.subject, v.version) for v in got.spend_controls] == [
        (CARD, 4), (CARD, 2), (ACCOUNT, 1),
    ]  # fmt: skip
    listed = await ledger.admin.ListSpendControls(
        la.ListSpendControlsRequest(subject=CARD, subject_id=card.card_id, page_size=2)
    )
    assert [v.version for v in listed.versions] == [1, 2]
    rest = await ledger.admin.ListSpendControls(
        la.ListSpendControlsRequest(
            subject=CARD, subject_id=card.card_id, page_token=listed.next_page_token
        )
    )
    assert [v.version for v in rest.versions] == [3, 4]
    assert not rest.next_page_token


@pytest.mark.parametrize(
    "fields",
    [
        {"blocked_mccs": ["79"]},
        {"allowed_mcc_ranges": [la.MccRange(from_mcc="5000", to_mcc="4000")]},
        {"allowed_countries": ["gb"]},
        {"limits": [la.SpendLimit(name="bad name", period=la.PERIOD_DAY, asset="GBP",
                                  amount_max_minor=1)]},
        {"limits": [la.SpendLimit(name="x", period=la.PERIOD_DAY, asset="XXX",
                                  amount_max_minor=1)]},
        {"limits": [la.SpendLimit(name="x", period=la.PERIOD_DAY, asset="GBP")]},
        {"limits": [la.SpendLimit(name="x", period=la.PERIOD_TRANSACTION, asset="GBP",
                                  count_max=1)]},
        {"decline_rules": [la.DeclineRule(name="nothing")]},
        {"decline_rules": [la.DeclineRule(name="half", amount_above_minor=1)]},
        {"blocked_mccs": [f"{n:04d}" for n in range(101)]},
    ],
)  # fmt: skip
async def test_malformed_controls_are_refused(ledger: Ledger, fields: dict[str, Any]) -> None:
    card = await ledger.card(10_000)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await control(ledger, CARD, card.card_id, **fields)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    listed = await ledger.admin.ListSpendControls(
        la.ListSpendControlsRequest(subject=CARD, subject_id=card.card_id)
    )
    assert not listed.versions


async def test_unknown_subjects_and_lifetime_product_limits_are_refused(ledger: Ledger) -> None:
    card = await ledger.card(10_000)
    for subject, ident in ((CARD, card.account_id), (ACCOUNT, card.card_id), (0, card.card_id)):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await control(ledger, subject, ident, blocked_mccs=["7995"])  # type: ignore[arg-type]
        assert refused.value.code() in (
            grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT
        )  # fmt: skip
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await ledger.limit(card.product_id, subject=la.LIMIT_SUBJECT_CARD,
                           period=la.PERIOD_LIFETIME, amount_max_minor=1)  # fmt: skip
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
