"""Currency conversion (issue 18, item 3; docs/fx.md), end to end: a card whose account holds
a crypto asset spends in GBP at the admin-set rate plus the product's markup; reversals at
the original rate, clearings and refunds at the rate of their day; missing and stale rates;
a real server on a real gRPC socket, real Postgres and Redis."""

from __future__ import annotations

import csv
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import grpc
import pytest

from authswitch.adapters.postgres.reports import ReportStore
from authswitch.adapters.sinks import DirectorySink
from authswitch.app import Application
from authswitch.service.reports import ReportWriter
from authswitch.v1 import common_pb2 as c
from authswitch.v1 import ledger_admin_pb2 as la
from tests.support.ledger import IssuedCard, Ledger

pytestmark = pytest.mark.timeout(90)

SATS = 100_000_000


async def coin(ledger: Ledger) -> str:
    """A crypto asset of this test alone (rates are per pair, shared by the session)."""
    code = "X" + secrets.token_hex(4).upper()
    await ledger.admin.RegisterAsset(
        la.RegisterAssetRequest(
            asset=la.Asset(code=code, category=c.ASSET_CATEGORY_CRYPTO, exponent=8)
        )
    )
    return code


async def set_rate(
    ledger: Ledger, base: str, quote: str, rate: str, *, max_age_s: int = 3_600,
    effective_from: datetime | None = None,
) -> la.SetFxRateResponse:  # fmt: skip
    given = la.FxRate(base_asset=base, quote_asset=quote, rate=rate, max_age_seconds=max_age_s)
    if effective_from is not None:
        given.effective_from.FromDatetime(effective_from)
    return await ledger.admin.SetFxRate(la.SetFxRateRequest(rate=given))


async def coin_card(
    ledger: Ledger, *, markup_bps: int = 200, balance: int = SATS, fx: bool = True
) -> tuple[IssuedCard, str]:
    """A card on an account holding only a fresh coin (1 coin in it), its product
    converting GBP with ``markup_bps``."""
    asset = await coin(ledger)
    product_id = await ledger.product(assets=[asset])
    account_id = await ledger.account(product_id, (asset,))
    await ledger.credit(account_id, balance, asset)
    if fx:
        await ledger.admin.SetProductFx(
            la.SetProductFxRequest(product_id=product_id, enabled=True, markup_bps=markup_bps)
        )
    card = await ledger.card(account_id=account_id)
    card.product_id = product_id
    return card, asset


async def test_a_gbp_purchase_spends_from_a_coin_account_at_the_rate_plus_markup(
    ledger: Ledger,
) -> None:
    card, asset = await coin_card(ledger, markup_bps=200)
    await set_rate(ledger, "GBP", asset, "0.0000125")  # 1 GBP = 1,250 satoshi
    response = await ledger.authorize(card, 4_000)  # 40.00 GBP
    assert response.response_code == "00", response
    # 40.00 GBP is 50,000 satoshi; 2 % markup is 1,000 more, a fee held with the purchase.
    assert (response.approved_amount.amount_minor, response.approved_amount.asset) == (
        4_000,
        "GBP",
    )
    assert (response.fee.amount_minor, response.fee.asset) == (1_000, asset)
    assert response.fx.billing_amount == c.Money(amount_minor=4_000, asset="GBP")
    assert response.fx.account_amount == c.Money(amount_minor=50_000, asset=asset)
    assert response.fx.markup == c.Money(amount_minor=1_000, asset=asset)
    assert response.fx.rate == "0.0000125"
    assert response.balance.asset == asset
    assert await ledger.figures(card.account_id, asset) == (SATS, SATS - 51_000, 51_000)
    holds = await ledger.admin.ListHolds(la.ListHoldsRequest(account_id=card.account_id))
    assert [(h.amount.amount_minor, h.amount.asset) for h in holds.holds] == [(51_000, asset)]
    assert holds.holds[0].fx == response.fx  # the hold shows both amounts and the rate


async def test_without_fx_on_the_product_a_foreign_billing_asset_is_declined_51(
    ledger: Ledger,
) -> None:
    card, asset = await coin_card(ledger, fx=False)
    await set_rate(ledger, "GBP", asset, "0.0000125")
    response = await ledger.authorize(card, 4_000)
    assert (response.response_code, response.reason) == ("51", 29)  # NO_BALANCE_IN_ASSET
    assert not response.HasField("fx")


async def test_a_missing_or_stale_rate_declines_05_with_the_reason_and_holds_nothing(
    ledger: Ledger,
) -> None:
    card, asset = await coin_card(ledger)
    missing = await ledger.authorize(card, 4_000)
    assert (missing.response_code, missing.reason) == ("05", 31)  # FX_RATE_UNAVAILABLE
    assert f"no GBP to {asset} rate" in missing.detail
    await set_rate(
        ledger, "GBP", asset, "0.0000125", max_age_s=60,
        effective_from=datetime.now(UTC) - timedelta(minutes=5),
    )  # fmt: skip
    stale = await ledger.authorize(card, 4_000)
    assert (stale.response_code, stale.reason) == ("05", 31)
    assert "older than its maximum age of 60 s" in stale.detail
    assert await ledger.figures(card.account_id, asset) == (SATS, SATS, 0)


async def test_earlier_checks_keep_their_precedence_over_a_missing_rate(ledger: Ledger) -> None:
    card, _ = await coin_card(ledger)
    response = await ledger.authorize(card, 4_000, cvv2="000" if card.cvv2 != "000" else "001")
    assert response.response_code == "N7"  # the CVV2 check comes before funds


async def test_a_rate_set_later_applies_to_the_next_authorisation_and_replays_are_identical(
    ledger: Ledger,
) -> None:
    card, asset = await coin_card(ledger, markup_bps=0)
    await set_rate(ledger, "GBP", asset, "0.00001")
    request = ledger.request(card, 1_000)
    first = await ledger.auth.Authorize(request)
    assert first.fx.account_amount.amount_minor == 10_000
    assert await ledger.auth.Authorize(request) == first  # a retransmission: the same answer
    await set_rate(ledger, "GBP", asset, "0.00002")
    second = await ledger.authorize(card, 1_000)
    assert (second.fx.account_amount.amount_minor, second.fx.rate) == (20_000, "0.00002")
    assert await ledger.figures(card.account_id, asset) == (SATS, SATS - 30_000, 30_000)


async def test_a_future_rate_is_not_used_before_it_takes_effect(ledger: Ledger) -> None:
    card, asset = await coin_card(ledger, markup_bps=0)
    await set_rate(ledger, "GBP", asset, "0.00001")
    await set_rate(
        ledger, "GBP", asset, "0.5", effective_from=datetime.now(UTC) + timedelta(hours=1)
    )
    response = await ledger.authorize(card, 1_000)
    assert (response.response_code, response.fx.rate) == ("00", "0.00001")


async def test_reversals_release_at_the_original_rate(ledger: Ledger) -> None:
    card, asset = await coin_card(ledger, markup_bps=200)
    await set_rate(ledger, "GBP", asset, "0.0000125")
    request = ledger.request(card, 4_000)
    assert (await ledger.auth.Authorize(request)).response_code == "00"  # holds 51,000
    await set_rate(ledger, "GBP", asset, "0.00005")  # the rate moves: reversals ignore it
    partial = await ledger.reverse(request.message_id, 1_000, "GBP")  # a quarter of it
    assert partial.response_code == "00", partial
    assert partial.released == c.Money(amount_minor=12_750, asset=asset)
    assert partial.fx.billing_amount == c.Money(amount_minor=1_000, asset="GBP")
    assert partial.fx.rate == "0.0000125"
    rest = await ledger.reverse(request.message_id)
    assert rest.released == c.Money(amount_minor=38_250, asset=asset)
    assert await ledger.figures(card.account_id, asset) == (SATS, SATS, 0)


async def test_a_clearing_converts_at_its_own_rate_and_posts_the_difference(
    ledger: Ledger,
) -> None:
    card, asset = await coin_card(ledger, markup_bps=200)
    await set_rate(ledger, "GBP", asset, "0.0000125")
    request = ledger.request(card, 4_000)
    assert (await ledger.auth.Authorize(request)).response_code == "00"  # holds 51,000
    await set_rate(ledger, "GBP", asset, "0.000013")  # 40.00 GBP is now 52,000 satoshi
    cleared = await ledger.clear(card, request.network_reference, 4_000, "GBP")
    assert cleared.response_code == "00", cleared
    assert cleared.matched
    assert cleared.released == c.Money(amount_minor=51_000, asset=asset)
    assert cleared.posted == c.Money(amount_minor=52_000, asset=asset)
    assert cleared.fee == c.Money(amount_minor=1_040, asset=asset)  # the markup
    assert (cleared.fx.rate, cleared.fx.markup.amount_minor) == ("0.000013", 1_040)
    spent = 52_000 + 1_040
    assert await ledger.figures(card.account_id, asset) == (SATS - spent, SATS - spent, 0)
    history = await ledger.admin.ListAccountHistory(
        la.ListAccountHistoryRequest(account_id=card.account_id)
    )
    posted = {
        (e.kind, e.description): (e.actual_delta_minor, e.fx.billing_amount.amount_minor, e.fx.rate)
        for e in history.entries
        if e.actual_delta_minor
    }
    # The journal: the clearing and its markup, each with the billing amount and the rate.
    assert posted[("CLEARING", "Shop")] == (-52_000, 4_000, "0.000013")
    assert posted[("FEE", "currency conversion markup")] == (-1_040, 4_000, "0.000013")


async def test_a_refund_converts_at_the_rate_of_its_day_without_markup(ledger: Ledger) -> None:
    card, asset = await coin_card(ledger, markup_bps=200)
    await set_rate(ledger, "GBP", asset, "0.00001")
    refunded = await ledger.refund(card, 2_500)
    assert refunded.response_code == "00", refunded
    assert refunded.credited == c.Money(amount_minor=25_000, asset=asset)
    assert (refunded.fx.markup.amount_minor, refunded.fx.rate) == (0, "0.00001")
    assert await ledger.figures(card.account_id, asset) == (SATS + 25_000, SATS + 25_000, 0)


async def test_a_clearing_or_refund_without_a_rate_posts_nothing(ledger: Ledger) -> None:
    card, asset = await coin_card(ledger)
    assert (await ledger.refund(card, 2_500)).response_code == "51"
    assert (await ledger.clear(card, "ref-1", 2_500, "GBP")).response_code == "51"
    assert await ledger.figures(card.account_id, asset) == (SATS, SATS, 0)


async def test_rates_are_listed_newest_first_and_bad_ones_refused(ledger: Ledger) -> None:
    asset = await coin(ledger)
    for rate in ("0.1", "0.2", "0.3"):
        await set_rate(ledger, "GBP", asset, rate)
    first = await ledger.admin.ListFxRates(
        la.ListFxRatesRequest(base_asset="GBP", quote_asset=asset, page_size=2)
    )
    assert [r.rate for r in first.rates] == ["0.3", "0.2"]
    second = await ledger.admin.ListFxRates(
        la.ListFxRatesRequest(
            base_asset="GBP", quote_asset=asset, page_size=2, page_token=first.next_page_token
        )
    )
    assert ([r.rate for r in second.rates], second.next_page_token) == (["0.1"], "")
    for quote, rate, max_age_s in (
        (asset, "0", 60), (asset, "-1", 60), (asset, "1e5", 60), (asset, " 1", 60),
        (asset, "0.5", 0), (asset, "0.5", 32 * 86_400), ("NOPE", "0.5", 60), ("GBP", "0.5", 60),
    ):  # fmt: skip
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await set_rate(ledger, "GBP", quote, rate, max_age_s=max_age_s)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (quote, rate, max_age_s)
    listed = await ledger.admin.ListFxRates(
        la.ListFxRatesRequest(base_asset="GBP", quote_asset=asset)
    )
    assert len(listed.rates) == 3  # nothing refused was written


async def test_a_product_markup_out_of_range_is_refused(ledger: Ledger) -> None:
    product_id = await ledger.product()
    for enabled, bps in ((True, 10_001), (True, -1), (False, 50)):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await ledger.admin.SetProductFx(
                la.SetProductFxRequest(product_id=product_id, enabled=enabled, markup_bps=bps)
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await ledger.admin.SetProductFx(
            la.SetProductFxRequest(product_id="00000000-0000-0000-0000-000000000000", enabled=True)
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_advices_hold_the_converted_amount_with_its_markup(ledger: Ledger) -> None:
    card, asset = await coin_card(ledger, markup_bps=200)
    await set_rate(ledger, "GBP", asset, "0.0000125")
    standalone = await ledger.advise(card, 4_000)  # the network stood in: 51,000 held
    assert (standalone.held.amount_minor, standalone.held.asset) == (51_000, asset)
    assert standalone.fx.markup.amount_minor == 1_000
    request = ledger.request(card, 4_000)
    assert (await ledger.auth.Authorize(request)).response_code == "00"  # 51,000 more
    # The network advises the transaction's total of 48.00 GBP: 61,200 held for it.
    update = await ledger.advise(
        card, 4_800, original_message_id=request.message_id,
        network_reference=request.network_reference,
    )  # fmt: skip
    assert update.result == 2, update  # ADVICE_RESULT_HOLD_UPDATED
    assert update.held.amount_minor == 10_200
    assert await ledger.figures(card.account_id, asset) == (SATS, SATS - 112_200, 112_200)


async def test_an_advice_without_a_rate_is_recorded_and_holds_nothing(ledger: Ledger) -> None:
    card, asset = await coin_card(ledger)
    response = await ledger.advise(card, 4_000)
    assert (response.response_code, response.result) == ("00", 4), response  # NO_BALANCE
    assert await ledger.figures(card.account_id, asset) == (SATS, SATS, 0)


async def test_a_reversal_before_its_converted_original_takes_its_share(ledger: Ledger) -> None:
    card, asset = await coin_card(ledger, markup_bps=200)
    await set_rate(ledger, "GBP", asset, "0.0000125")
    request = ledger.request(card, 4_000)
    early = await ledger.reverse(request.message_id, 1_000, "GBP", pan=card.pan)
    assert early.result == 2, early  # REVERSAL_RESULT_ORIGINAL_NOT_FOUND: kept for it
    assert (await ledger.auth.Authorize(request)).response_code == "00"
    # 51,000 authorised, a quarter of it (10.00 of 40.00 GBP) reversed already: 38,250.
    assert await ledger.figures(card.account_id, asset) == (SATS, SATS - 38_250, 38_250)


async def test_limits_count_the_converted_amount_in_the_account_asset(ledger: Ledger) -> None:
    card, asset = await coin_card(ledger, markup_bps=0)
    await ledger.limit(
        card.product_id, subject=la.LIMIT_SUBJECT_CARD, period=la.PERIOD_DAY,
        amount_max_minor=60_000, asset=asset,
    )  # fmt: skip
    await set_rate(ledger, "GBP", asset, "0.0000125")
    assert (await ledger.authorize(card, 4_000)).response_code == "00"  # 50,000 counted
    assert (await ledger.authorize(card, 800)).response_code == "00"  # 10,000: 60,000
    over = await ledger.authorize(card, 1)  # 13 satoshi more
    assert over.response_code == "61", over
    (used,) = [v for k, v in (await ledger.usage(card.account_id)).items() if k.startswith("L:")]
    assert used == (60_000, 2)


async def test_the_transaction_file_shows_the_billing_amount_and_rate(
    ledger: Ledger, app: Application, tmp_path: Path
) -> None:
    card, asset = await coin_card(ledger, markup_bps=200)
    await set_rate(ledger, "GBP", asset, "0.000013")
    cleared = await ledger.clear(card, "ref-fx", 4_000, "GBP", message_id="clr-fx")
    assert cleared.response_code == "00", cleared
    account = await ledger.admin.GetAccount(la.GetAccountRequest(account_id=card.account_id))
    history = await ledger.admin.ListAccountHistory(
        la.ListAccountHistoryRequest(account_id=card.account_id)
    )
    posted_at = next(e.at for e in history.entries if e.kind == "CLEARING").ToDatetime(UTC)
    assert app.pool is not None
    name, _ = await ReportWriter(ReportStore(app.pool)).transactions(
        DirectorySink(tmp_path), program_id=account.program_id,
        day=posted_at.astimezone(ZoneInfo("Europe/London")).date(),
    )  # fmt: skip
    rows = list(csv.DictReader((tmp_path / name).read_text().splitlines()))
    mine = [r for r in rows if r["message_id"] == "clr-fx"]
    assert {(r["entry_type"], r["account_kind"], r["amount_minor"]) for r in mine} == {
        ("CLEARING", "CUSTOMER", "-52000"), ("CLEARING", "CLEARING", "52000"),
        ("FEE", "CUSTOMER", "-1040"), ("FEE", "FEE_INCOME", "1040"),
    }  # fmt: skip
    assert {(r["billing_asset"], r["billing_amount"], r["fx_rate"]) for r in mine} == {
        ("GBP", "40.00", "0.000013")
    }
    others = [r for r in rows if r["message_id"] != "clr-fx"]
    assert {(r["billing_asset"], r["fx_rate"]) for r in others} <= {("", "")}
