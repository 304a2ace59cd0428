"""Fees and limits end to end (seed 004): a worked example per rule kind, each special case,
and limits under concurrency."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from authswitch.app import Application
from authswitch.service.clock import ManualClock
from authswitch.v1 import authorization_pb2 as pb
from authswitch.v1 import common_pb2 as c
from authswitch.v1 import ledger_admin_pb2 as la
from tests.support.clocked import clocked_app
from tests.support.ledger import IssuedCard, Ledger, TransactionKind
from tests.support.stores import Stores

pytestmark = pytest.mark.timeout(90)

PURCHASE = c.TRANSACTION_TYPE_PURCHASE
ATM = c.TRANSACTION_TYPE_CASH_WITHDRAWAL
ENQUIRY = c.TRANSACTION_TYPE_BALANCE_ENQUIRY
AUTH, CLEARING = la.FEE_STAGE_AUTHORIZATION, la.FEE_STAGE_CLEARING


def rule(**fields: object) -> la.FeeRule:
    fields.setdefault("stage", AUTH)
    fields.setdefault("asset", "GBP")
    return la.FeeRule(**fields)  # type: ignore[arg-type]


async def funded(ledger: Ledger, balance: int, *rules: la.FeeRule) -> tuple[IssuedCard, str]:
    product_id = await ledger.product()
    account_id = await ledger.account(product_id)
    if balance:
        await ledger.credit(account_id, balance)
    if rules:
        await ledger.fees(product_id, *rules)
    card = await ledger.card(account_id=account_id)
    return card, product_id


async def notifications(app: Application, account_id: str) -> list[tuple[str, dict[str, object]]]:
    assert app.pool is not None
    rows = await app.pool.fetch(
        "SELECT kind, payload FROM notifications WHERE account_id = $1 ORDER BY seq", account_id
    )
    return [(r["kind"], json.loads(r["payload"])) for r in rows]


# -- one worked example per rule kind --------------------------------------------------------


async def test_flat_fee_is_held_with_the_authorisation(ledger: Ledger, app: Application) -> None:
    card, _ = await funded(ledger, 10_000, rule(flat_minor=100, transaction_types=[PURCHASE]))
    response = await ledger.authorize(card, 4_000)
    assert (response.response_code, response.fee.amount_minor) == ("00", 100)
    assert await ledger.figures(card.account_id) == (10_000, 5_900, 4_100)
    kinds = [k for k, _ in await notifications(app, card.account_id)]
    assert "FEE" in kinds
    # The fee counts towards funds: 5,900 left means 5,800 + 100 fits and 5,801 does not.
    assert (await ledger.authorize(card, 5_801)).response_code == "51"
    assert (await ledger.authorize(card, 5_800)).response_code == "00"


async def test_percentage_fee_rounds_half_up_within_its_caps(ledger: Ledger) -> None:
    card, _ = await funded(
        ledger, 1_000_000, rule(bps=150, min_minor=50, max_minor=500, transaction_types=[PURCHASE])
    )
    for amount, fee in {1_000: 50, 10_000: 150, 100_000: 500}.items():
        response = await ledger.authorize(card, amount)
        assert response.fee.amount_minor == fee, amount
    uncapped, _ = await funded(ledger, 1_000_000, rule(bps=150))
    # 1.5% of 12.34 is 0.1851 → 0.19; of 12.33 it is 0.18495 → 0.18; of 0.30, 0.0045 → 0.00
    for amount, fee in {1_234: 19, 1_233: 18, 30: 0, 34: 1}.items():
        response = await ledger.authorize(uncapped, amount)
        assert response.fee.amount_minor == fee, amount


async def test_fee_above_a_threshold_only(ledger: Ledger) -> None:
    card, _ = await funded(ledger, 100_000, rule(flat_minor=300, above_minor=10_000))
    assert (await ledger.authorize(card, 10_000)).fee.amount_minor == 0
    assert (await ledger.authorize(card, 10_001)).fee.amount_minor == 300


async def test_three_free_atm_withdrawals_a_month(ledger: Ledger, app: Application) -> None:
    card, _ = await funded(
        ledger, 100_000,
        rule(flat_minor=200, transaction_types=[ATM], free_uses=3, free_period=la.PERIOD_MONTH),
    )  # fmt: skip
    atm: TransactionKind = {"transaction_type": ATM, "channel": c.CHANNEL_ATM}
    fees = [(await ledger.authorize(card, 1_000, **atm)).fee.amount_minor for _ in range(5)]
    assert fees == [0, 0, 0, 200, 200]
    purchase = await ledger.authorize(card, 1_000)  # not in the rule's scope
    assert purchase.fee.amount_minor == 0


async def test_international_fee(ledger: Ledger) -> None:
    card, _ = await funded(
        ledger, 100_000, rule(bps=300, region=la.FEE_REGION_INTERNATIONAL, name="FX")
    )
    assert (await ledger.authorize(card, 10_000, country="GB")).fee.amount_minor == 0
    assert (await ledger.authorize(card, 10_000, country="FR")).fee.amount_minor == 300


async def test_mcc_and_channel_scoping(ledger: Ledger) -> None:
    card, _ = await funded(
        ledger, 100_000, rule(flat_minor=75, mccs=["7995"], channels=[c.CHANNEL_ECOMMERCE])
    )
    assert (await ledger.authorize(card, 1_000, mcc="7995")).fee.amount_minor == 75
    assert (await ledger.authorize(card, 1_000, mcc="5411")).fee.amount_minor == 0
    pos = await ledger.authorize(card, 1_000, mcc="7995", channel=c.CHANNEL_POS)
    assert pos.fee.amount_minor == 0


# -- seed 004's special cases -----------------------------------------------------------------


async def test_zero_value_fee_posted_when_available_covers_it(
    ledger: Ledger, app: Application
) -> None:
    card, product_id = await funded(
        ledger, 1_000, rule(flat_minor=50, transaction_types=[ENQUIRY], name="ATM enquiry")
    )
    await ledger.limit(
        product_id, subject=la.LIMIT_SUBJECT_CARD, period=la.PERIOD_DAY, count_max=99
    )
    enquiry = await ledger.authorize(card, 0, transaction_type=ENQUIRY, channel=c.CHANNEL_ATM)
    assert (enquiry.response_code, enquiry.fee.amount_minor) == ("00", 50)
    assert await ledger.figures(card.account_id) == (950, 950, 0)  # actual and available
    (count,) = [
        v[1] for k, v in (await ledger.usage(card.account_id)).items() if k.startswith("L:")
    ]
    assert count == 1
    found = [p for k, p in await notifications(app, card.account_id) if k == "FEE"]
    assert found[-1]["fee_mode"] == "POSTED"


async def test_zero_value_fee_not_applied_when_available_is_short(
    ledger: Ledger, app: Application
) -> None:
    card, product_id = await funded(ledger, 30, rule(flat_minor=50, transaction_types=[ENQUIRY]))
    await ledger.limit(
        product_id, subject=la.LIMIT_SUBJECT_CARD, period=la.PERIOD_DAY, count_max=99
    )
    enquiry = await ledger.authorize(card, 0, transaction_type=ENQUIRY, channel=c.CHANNEL_ATM)
    assert (enquiry.response_code, enquiry.fee.amount_minor) == ("00", 0)
    assert await ledger.figures(card.account_id) == (30, 30, 0)
    kinds = [k for k, _ in await notifications(app, card.account_id)]
    assert "FEE_NOT_APPLIED" in kinds
    # Limits and counters are still incremented.
    assert [
        v[1] for k, v in (await ledger.usage(card.account_id)).items() if k.startswith("L:")
    ] == [1]


async def test_declined_request_with_a_fee(ledger: Ledger, app: Application) -> None:
    card, product_id = await funded(
        ledger, 1_000, rule(flat_minor=150, transaction_types=[ATM], on_decline=True)
    )
    await ledger.limit(
        product_id, subject=la.LIMIT_SUBJECT_CARD, period=la.PERIOD_DAY, count_max=99
    )
    declined = await ledger.authorize(card, 5_000, transaction_type=ATM, channel=c.CHANNEL_ATM)
    assert (declined.response_code, declined.fee.amount_minor) == ("51", 150)
    assert await ledger.figures(card.account_id) == (850, 850, 0)
    usage = await ledger.usage(card.account_id)
    assert [v for k, v in usage.items() if k.startswith("L:")] == [(150, 1)]
    # The decline fee is charged once: a retransmission replays, it does not charge again.
    again = ledger.request(card, 5_000, transaction_type=ATM, channel=c.CHANNEL_ATM)
    first = await ledger.auth.Authorize(again)
    assert await ledger.auth.Authorize(again) == first
    assert await ledger.figures(card.account_id) == (700, 700, 0)


async def test_a_lost_card_is_not_charged_a_decline_fee(ledger: Ledger) -> None:
    product_id = await ledger.product()
    await ledger.fees(product_id, rule(flat_minor=150, on_decline=True))
    account_id = await ledger.account(product_id)
    await ledger.credit(account_id, 1_000)
    lost = await ledger.card(account_id=account_id, status=c.CARD_STATUS_LOST)
    assert (await ledger.authorize(lost, 100)).response_code == "41"
    assert await ledger.figures(account_id) == (1_000, 1_000, 0)


async def test_matched_clearing_reverses_the_auth_fee_and_posts_the_clearing_fee(
    ledger: Ledger, app: Application
) -> None:
    card, product_id = await funded(
        ledger, 10_000, rule(flat_minor=100), rule(stage=CLEARING, bps=100, name="scheme")
    )
    await ledger.limit(
        product_id,
        subject=la.LIMIT_SUBJECT_CARD,
        period=la.PERIOD_MONTH,
        amount_max_minor=1_000_000,
    )
    request = ledger.request(card, 4_000)
    assert (await ledger.auth.Authorize(request)).fee.amount_minor == 100
    assert await ledger.figures(card.account_id) == (10_000, 5_900, 4_100)
    cleared = await ledger.clear(card, request.network_reference, 4_500)
    assert cleared.matched
    assert (cleared.released.amount_minor, cleared.fee.amount_minor) == (4_100, 45)
    assert await ledger.figures(card.account_id) == (5_455, 5_455, 0)
    usage = await ledger.usage(card.account_id)
    assert [v for k, v in usage.items() if k.startswith("L:")] == [(4_545, 1)]  # cleared value
    kinds = [k for k, _ in await notifications(app, card.account_id)]
    assert kinds.count("FEE") == 2
    assert "CLEARING" in kinds


async def test_unmatched_clearing_posts_its_fee_and_counts_the_amount_not_the_use(
    ledger: Ledger,
) -> None:
    card, product_id = await funded(ledger, 10_000, rule(stage=CLEARING, flat_minor=25))
    await ledger.limit(
        product_id, subject=la.LIMIT_SUBJECT_CARD, period=la.PERIOD_MONTH, count_max=10,
        amount_max_minor=1_000_000,
    )  # fmt: skip
    cleared = await ledger.clear(card, "no-such-auth", 2_000)
    assert (cleared.matched, cleared.fee.amount_minor) == (False, 25)
    assert await ledger.figures(card.account_id) == (7_975, 7_975, 0)
    assert [v for k, v in (await ledger.usage(card.account_id)).items()] == [(2_025, 0)]


async def test_reversal_gives_the_amount_back_to_the_limit(ledger: Ledger) -> None:
    card, product_id = await funded(ledger, 10_000)
    await ledger.limit(
        product_id, subject=la.LIMIT_SUBJECT_CARD, period=la.PERIOD_DAY, amount_max_minor=5_000
    )
    first = ledger.request(card, 4_000)
    assert (await ledger.auth.Authorize(first)).response_code == "00"
    assert (await ledger.authorize(card, 2_000)).response_code == "61"
    await ledger.reverse(first.message_id)
    assert (await ledger.authorize(card, 2_000)).response_code == "00"


# -- limits ----------------------------------------------------------------------------------


async def test_per_transaction_amount_limit_is_61(ledger: Ledger) -> None:
    card, product_id = await funded(ledger, 100_000, rule(flat_minor=10))
    await ledger.limit(
        product_id, subject=la.LIMIT_SUBJECT_CARD, period=la.PERIOD_TRANSACTION,
        amount_max_minor=5_000,
    )  # fmt: skip
    assert (await ledger.authorize(card, 4_990)).response_code == "00"  # 4,990 + fee 10
    response = await ledger.authorize(card, 4_991)
    assert (response.response_code, response.reason) == ("61", pb.REASON_AMOUNT_LIMIT_EXCEEDED)


async def test_daily_count_limit_by_transaction_type_is_65(ledger: Ledger) -> None:
    card, product_id = await funded(ledger, 100_000)
    await ledger.limit(
        product_id, subject=la.LIMIT_SUBJECT_CARD, period=la.PERIOD_DAY, count_max=2,
        transaction_types=[ATM],
    )  # fmt: skip
    atm: TransactionKind = {"transaction_type": ATM, "channel": c.CHANNEL_ATM}
    assert (await ledger.authorize(card, 100, **atm)).response_code == "00"
    assert (await ledger.authorize(card, 100, **atm)).response_code == "00"
    third = await ledger.authorize(card, 100, **atm)
    assert (third.response_code, third.reason) == ("65", pb.REASON_COUNT_LIMIT_EXCEEDED)
    assert (await ledger.authorize(card, 100)).response_code == "00"  # purchases are not counted


async def test_account_limit_is_shared_by_its_cards_card_limit_is_not(ledger: Ledger) -> None:
    product_id = await ledger.product()
    await ledger.limit(
        product_id, subject=la.LIMIT_SUBJECT_ACCOUNT, period=la.PERIOD_DAY, amount_max_minor=3_000
    )
    await ledger.limit(
        product_id, subject=la.LIMIT_SUBJECT_CARD, period=la.PERIOD_DAY, amount_max_minor=2_000
    )
    account_id = await ledger.account(product_id)
    await ledger.credit(account_id, 100_000)
    first, second = (
        await ledger.card(account_id=account_id),
        await ledger.card(account_id=account_id),
    )
    assert (await ledger.authorize(first, 2_000)).response_code == "00"
    assert (await ledger.authorize(first, 1)).response_code == "61"  # the card's own limit
    assert (await ledger.authorize(second, 1_000)).response_code == "00"
    assert (await ledger.authorize(second, 1)).response_code == "61"  # the account's, shared


async def test_200_concurrent_never_exceed_amount_or_count_limits(
    ledger: Ledger, app: Application
) -> None:
    card, product_id = await funded(ledger, 1_000_000)
    await ledger.limit(
        product_id, subject=la.LIMIT_SUBJECT_ACCOUNT, period=la.PERIOD_DAY, amount_max_minor=7_000
    )
    responses = await asyncio.gather(*(ledger.authorize(card, 100) for _ in range(200)))
    codes = [r.response_code for r in responses]
    assert (codes.count("00"), codes.count("61")) == (70, 130)
    card2, product2 = await funded(ledger, 1_000_000)
    await ledger.limit(
        product2, subject=la.LIMIT_SUBJECT_CARD, period=la.PERIOD_MONTH, count_max=45
    )
    responses = await asyncio.gather(*(ledger.authorize(card2, 100) for _ in range(200)))
    codes = [r.response_code for r in responses]
    assert (codes.count("00"), codes.count("65")) == (45, 155)
    usage = await ledger.usage(card2.account_id)
    assert list(usage.values()) == [(4_500, 45)]


async def test_bad_fee_and_limit_definitions_are_refused(ledger: Ledger) -> None:
    product_id = await ledger.product()
    bad = [
        rule(stage=la.FEE_STAGE_UNSPECIFIED),
        rule(asset="KWD"),  # not an asset of the product
        rule(bps=10_001),
        rule(flat_minor=-1),
        rule(free_uses=3),  # without a period
        rule(min_minor=100, max_minor=50),
        rule(stage=CLEARING, on_decline=True),
    ]
    for fee_rule in bad:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await ledger.fees(product_id, fee_rule)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, fee_rule
    for fields in (
        {"subject": la.LIMIT_SUBJECT_CARD, "period": la.PERIOD_DAY},  # caps nothing
        {"subject": la.LIMIT_SUBJECT_CARD, "period": la.PERIOD_TRANSACTION, "count_max": 1},
        {"period": la.PERIOD_DAY, "count_max": 1},
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await ledger.limit(product_id, **fields)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    schedules = await ledger.admin.ListFeeSchedules(
        la.ListFeeSchedulesRequest(product_id=product_id)
    )
    assert not schedules.schedules


# -- time: effective dates and periods, on a clock the test controls --------------------------


@pytest.fixture(scope="module")
async def clocked(stores: Stores) -> AsyncIterator[tuple[Application, Ledger, ManualClock]]:
    async with clocked_app(stores, "f") as opened:
        yield opened


async def test_the_schedule_in_force_at_the_transaction_time_applies(
    clocked: tuple[Application, Ledger, ManualClock],
) -> None:
    _, ledger, clock = clocked
    card, product_id = await funded(ledger, 100_000)
    now = clock.now()
    tomorrow = Timestamp()
    tomorrow.FromDatetime(now + timedelta(days=1))
    assert await ledger.fees(product_id, rule(flat_minor=100)) == 1
    assert await ledger.fees(product_id, rule(flat_minor=250), effective_from=tomorrow) == 2
    assert (await ledger.authorize(card, 1_000)).fee.amount_minor == 100
    clock.advance(timedelta(days=1, seconds=1))
    assert (await ledger.authorize(card, 1_000)).fee.amount_minor == 250
    listed = await ledger.admin.ListFeeSchedules(la.ListFeeSchedulesRequest(product_id=product_id))
    assert [s.version for s in listed.schedules] == [1, 2]


async def test_a_new_day_starts_a_new_count(
    clocked: tuple[Application, Ledger, ManualClock],
) -> None:
    _, ledger, clock = clocked
    card, product_id = await funded(ledger, 100_000)
    await ledger.limit(product_id, subject=la.LIMIT_SUBJECT_CARD, period=la.PERIOD_DAY, count_max=1)
    assert (await ledger.authorize(card, 100)).response_code == "00"
    assert (await ledger.authorize(card, 100)).response_code == "65"
    clock.advance(timedelta(days=1))
    assert (await ledger.authorize(card, 100)).response_code == "00"
    assert (await ledger.authorize(card, 100)).response_code == "65"
