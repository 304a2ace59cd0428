"""The lifecycle after an authorisation, end to end: one test per row of DESIGN.md §3's
table, seed 001's worked examples, reordered and repeated messages."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import grpc
import pytest

from authswitch.adapters.redis.cache import ApplyResult
from authswitch.app import Application
from authswitch.service.clock import ManualClock
from authswitch.v1 import authorization_pb2 as pb
from authswitch.v1 import common_pb2 as c
from authswitch.v1 import ledger_admin_pb2 as la
from tests.support.clocked import clocked_app
from tests.support.ledger import Ledger
from tests.support.stores import Stores

pytestmark = pytest.mark.timeout(60)


async def _authorized(
    ledger: Ledger, card: object, amount: int, **kw: object
) -> pb.AuthorizeRequest:
    request = ledger.request(card, amount, **kw)  # type: ignore[arg-type]
    response = await ledger.auth.Authorize(request)
    assert response.response_code in ("00", "10"), response
    return request


# -- one test per row of the balance table ---------------------------------------------------


async def test_credit_and_debit_rows(ledger: Ledger) -> None:
    card = await ledger.card(10_000)
    assert await ledger.figures(card.account_id) == (10_000, 10_000, 0)
    await ledger.admin.DebitAccount(
        la.DebitAccountRequest(
            account_id=card.account_id, amount=c.Money(amount_minor=1_000, asset="GBP"),
            purpose=la.ADJUSTMENT_PURPOSE_DEBIT_ADJUSTMENT, idempotency_key=str(uuid.uuid4()),
        )
    )  # fmt: skip
    assert await ledger.figures(card.account_id) == (9_000, 9_000, 0)


async def test_authorisation_row(ledger: Ledger) -> None:
    card = await ledger.card(10_000)
    await _authorized(ledger, card, 4_000)
    assert await ledger.figures(card.account_id) == (10_000, 6_000, 4_000)


async def test_full_and_partial_reversal_rows(ledger: Ledger) -> None:
    card = await ledger.card(10_000)
    auth = await _authorized(ledger, card, 4_000)
    partial = await ledger.reverse(auth.message_id, 1_500)
    assert (partial.result, partial.released.amount_minor) == (pb.REVERSAL_RESULT_RELEASED, 1_500)
    assert await ledger.figures(card.account_id) == (10_000, 7_500, 2_500)
    full = await ledger.reverse(auth.message_id)
    assert full.released.amount_minor == 2_500
    assert await ledger.figures(card.account_id) == (10_000, 10_000, 0)
    again = await ledger.reverse(auth.message_id)
    assert again.result == pb.REVERSAL_RESULT_HOLD_ALREADY_ENDED
    assert await ledger.figures(card.account_id) == (10_000, 10_000, 0)


async def test_incremental_authorisation_row(ledger: Ledger) -> None:
    card = await ledger.card(50_000)
    hotel = await _authorized(ledger, card, 20_000, mcc="7011")
    increment = ledger.request(card, 5_000, mcc="7011")
    increment.incremental = True
    increment.original_message_id = hotel.message_id
    assert (await ledger.auth.Authorize(increment)).response_code == "00"
    assert await ledger.figures(card.account_id) == (50_000, 25_000, 25_000)
    # The final clearing of the stay releases the original and its increment together.
    cleared = await ledger.clear(card, hotel.network_reference, 24_000)
    assert cleared.matched
    assert cleared.released.amount_minor == 25_000
    assert await ledger.figures(card.account_id) == (26_000, 26_000, 0)


async def test_matched_clearing_row_seed_001(ledger: Ledger) -> None:
    """Available 100.00, spend 40.00 → 60.00; clearing of 45.00 matched → 55.00 / 55.00."""
    card = await ledger.card(10_000)
    auth = await _authorized(ledger, card, 4_000)
    assert await ledger.figures(card.account_id) == (10_000, 6_000, 4_000)
    cleared = await ledger.clear(card, auth.network_reference, 4_500)
    assert (cleared.response_code, cleared.matched) == ("00", True)
    assert (cleared.released.amount_minor, cleared.posted.amount_minor) == (4_000, 4_500)
    assert await ledger.figures(card.account_id) == (5_500, 5_500, 0)


async def test_unmatched_clearing_double_debit_then_age_off_seed_001(
    clocked: tuple[Application, Ledger, ManualClock],
) -> None:
    """An unmatched clearing of 40.00 while the 40.00 hold is open → available 20.00 (the
    double debit) until the hold ages off → 60.00."""
    app, ledger, clock = clocked
    card = await ledger.card(10_000)
    await _authorized(ledger, card, 4_000)
    cleared = await ledger.clear(card, "some-other-reference", 4_000)
    assert not cleared.matched
    assert await ledger.figures(card.account_id) == (6_000, 2_000, 4_000)
    clock.advance(timedelta(days=7, seconds=1))
    assert await _age_off_all(app) >= 1
    assert await ledger.figures(card.account_id) == (6_000, 6_000, 0)


async def test_refund_row(ledger: Ledger) -> None:
    card = await ledger.card(10_000)
    refund = await ledger.refund(card, 2_500)
    assert (refund.response_code, refund.credited.amount_minor) == ("00", 2_500)
    assert await ledger.figures(card.account_id) == (12_500, 12_500, 0)


async def test_a_retransmitted_refund_waits_for_its_original_instead_of_crediting_twice(
    ledger: Ledger, app: Application, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same refund twice at once: the second finds the first's marker while the first
    is still committing, and must answer with the first's decision rather than take the
    marker for a failed attempt's and credit the cache a second time."""
    card = await ledger.card(10_000)
    request = pb.RefundRequest(
        source="visa", message_id=str(uuid.uuid4()), network_reference=str(uuid.uuid4()),
        pan=card.pan, billing_amount=c.Money(amount_minor=2_500, asset="GBP"),
    )  # fmt: skip
    applied: list[str] = []
    apply = app.cache.apply

    async def counting_apply(**kw: Any) -> Any:
        result = await apply(**kw)
        if kw["marker"][1] == request.message_id and isinstance(result, ApplyResult):
            applied.append(result.status)
        return result

    monkeypatch.setattr(app.cache, "apply", counting_apply)
    first, second = await asyncio.gather(ledger.auth.Refund(request), ledger.auth.Refund(request))
    assert first == second
    assert (first.response_code, first.credited.amount_minor) == ("00", 2_500)
    assert len(applied) == 1  # the credit reached the cache once
    assert await ledger.figures(card.account_id) == (12_500, 12_500, 0)
    cached = await app.cache.read_balances(card.account_id)
    assert cached is not None
    assert cached["GBP"].actual_minor == 12_500


async def test_advice_row_posts_even_below_zero(ledger: Ledger) -> None:
    card = await ledger.card(1_000)
    advice = await ledger.advise(card, 3_000)
    assert (advice.response_code, advice.result) == ("00", pb.ADVICE_RESULT_HOLD_POSTED)
    assert await ledger.figures(card.account_id) == (1_000, -2_000, 3_000)
    assert (await ledger.authorize(card, 1)).response_code == "51"


# -- the awkward cases -----------------------------------------------------------------------


async def test_advice_completes_its_original_instead_of_holding_twice(ledger: Ledger) -> None:
    card = await ledger.card(10_000)
    auth = await _authorized(ledger, card, 4_000)
    advice = await ledger.advise(card, 4_500, original_message_id=auth.message_id)
    assert advice.result == pb.ADVICE_RESULT_HOLD_UPDATED
    assert await ledger.figures(card.account_id) == (10_000, 5_500, 4_500)
    lower = await ledger.advise(card, 3_000, original_message_id=auth.message_id)
    assert lower.result == pb.ADVICE_RESULT_HOLD_UPDATED
    assert await ledger.figures(card.account_id) == (10_000, 7_000, 3_000)


async def test_advice_twice_holds_once(ledger: Ledger) -> None:
    card = await ledger.card(10_000)
    message_id = str(uuid.uuid4())
    first = await ledger.advise(card, 2_000, message_id=message_id, network_reference="n1")
    second = await ledger.advise(card, 2_000, message_id=message_id, network_reference="n1")
    assert first == second
    assert await ledger.figures(card.account_id) == (10_000, 8_000, 2_000)


async def test_clearing_twice_posts_once(ledger: Ledger) -> None:
    card = await ledger.card(10_000)
    auth = await _authorized(ledger, card, 4_000)
    message_id = str(uuid.uuid4())
    first = await ledger.clear(card, auth.network_reference, 4_000, message_id=message_id)
    second = await ledger.clear(card, auth.network_reference, 4_000, message_id=message_id)
    assert first == second
    assert await ledger.figures(card.account_id) == (6_000, 6_000, 0)


async def test_reversal_twice_releases_once(ledger: Ledger) -> None:
    card = await ledger.card(10_000)
    auth = await _authorized(ledger, card, 4_000)
    message_id = str(uuid.uuid4())
    first = await ledger.reverse(auth.message_id, 1_000, message_id=message_id)
    second = await ledger.reverse(auth.message_id, 1_000, message_id=message_id)
    assert first == second
    assert await ledger.figures(card.account_id) == (10_000, 7_000, 3_000)


async def test_reversal_before_its_authorisation_leaves_nothing_held(ledger: Ledger) -> None:
    card = await ledger.card(10_000)
    request = ledger.request(card, 4_000)
    early = await ledger.reverse(request.message_id, pan=card.pan)
    assert (early.response_code, early.result) == ("00", pb.REVERSAL_RESULT_ORIGINAL_NOT_FOUND)
    late = await ledger.auth.Authorize(request)
    assert late.response_code == "00"
    assert await ledger.figures(card.account_id) == (10_000, 10_000, 0)
    holds = await ledger.admin.ListHolds(la.ListHoldsRequest(account_id=card.account_id))
    assert [h.status for h in holds.holds] == [la.HOLD_STATUS_REVERSED]
    # And the cache agrees: the whole balance can be spent.
    assert (await ledger.authorize(card, 10_000)).response_code == "00"


async def test_partial_reversal_before_its_authorisation(ledger: Ledger) -> None:
    card = await ledger.card(10_000)
    request = ledger.request(card, 4_000)
    await ledger.reverse(request.message_id, 1_000)
    assert (await ledger.auth.Authorize(request)).response_code == "00"
    assert await ledger.figures(card.account_id) == (10_000, 7_000, 3_000)
    assert (await ledger.authorize(card, 7_001)).response_code == "51"
    assert (await ledger.authorize(card, 7_000)).response_code == "00"


async def test_reversal_of_a_decline_holds_nothing(ledger: Ledger) -> None:
    card = await ledger.card(100)
    request = ledger.request(card, 4_000)
    assert (await ledger.auth.Authorize(request)).response_code == "51"
    reversal = await ledger.reverse(request.message_id)
    assert reversal.result == pb.REVERSAL_RESULT_NOTHING_HELD
    assert await ledger.figures(card.account_id) == (100, 100, 0)


async def test_partial_then_final_clearings(ledger: Ledger) -> None:
    """Split shipment: 100.00 authorised, cleared 30.00 then 50.00 (final)."""
    card = await ledger.card(20_000)
    auth = await _authorized(ledger, card, 10_000)
    first = await ledger.clear(card, auth.network_reference, 3_000, final=False)
    assert (first.matched, first.released.amount_minor) == (True, 3_000)
    assert await ledger.figures(card.account_id) == (17_000, 10_000, 7_000)
    last = await ledger.clear(card, auth.network_reference, 5_000, final=True)
    assert (last.matched, last.released.amount_minor) == (True, 7_000)
    assert await ledger.figures(card.account_id) == (12_000, 12_000, 0)
    after = await ledger.clear(card, auth.network_reference, 1_000, final=True)
    assert not after.matched  # nothing left to match: posted directly
    assert await ledger.figures(card.account_id) == (11_000, 11_000, 0)


async def test_partial_clearing_releases_the_oldest_hold_first(ledger: Ledger) -> None:
    card = await ledger.card(50_000)
    first = await _authorized(ledger, card, 3_000)
    increment = ledger.request(card, 2_000)
    increment.incremental = True
    increment.original_message_id = first.message_id
    assert (await ledger.auth.Authorize(increment)).response_code == "00"
    await ledger.clear(card, first.network_reference, 3_500, final=False)
    holds = await ledger.admin.ListHolds(la.ListHoldsRequest(account_id=card.account_id))
    by_message = {h.message_id: (h.status, h.amount.amount_minor) for h in holds.holds}
    assert by_message[first.message_id] == (la.HOLD_STATUS_CLEARED, 0)
    assert by_message[increment.message_id] == (la.HOLD_STATUS_OPEN, 1_500)


async def test_clearing_after_reversal_is_unmatched(ledger: Ledger) -> None:
    card = await ledger.card(10_000)
    auth = await _authorized(ledger, card, 4_000)
    await ledger.reverse(auth.message_id)
    cleared = await ledger.clear(card, auth.network_reference, 4_000)
    assert not cleared.matched
    assert await ledger.figures(card.account_id) == (6_000, 6_000, 0)


async def test_manual_release_of_a_stale_hold(ledger: Ledger) -> None:
    card = await ledger.card(10_000)
    await _authorized(ledger, card, 4_000)
    await ledger.clear(card, "unmatched-ref", 4_000)
    assert await ledger.figures(card.account_id) == (6_000, 2_000, 4_000)
    holds = await ledger.admin.ListHolds(
        la.ListHoldsRequest(account_id=card.account_id, open_only=True)
    )
    (hold,) = holds.holds
    request = la.ReleaseHoldRequest(
        hold_id=hold.hold_id, reason="matched by hand", idempotency_key="r1-" + hold.hold_id
    )
    released = await ledger.admin.ReleaseHold(request)
    assert released.released.amount_minor == 4_000
    assert await ledger.figures(card.account_id) == (6_000, 6_000, 0)
    assert await ledger.admin.ReleaseHold(request) == released  # idempotent
    other = la.ReleaseHoldRequest(
        hold_id=hold.hold_id, reason="again", idempotency_key="r2-" + hold.hold_id
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ledger.admin.ReleaseHold(other)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_lifecycle_replies_are_the_stored_bytes(ledger: Ledger, app: Application) -> None:
    """A clearing's and a hold release's replies are the bytes stored with their decisions,
    first time and every retransmission alike (never parsed back)."""
    card = await ledger.card(10_000)
    auth = await _authorized(ledger, card, 4_000)
    clear = ledger.channel.unary_unary(
        "/authswitch.v1.AuthorizationService/Clear",
        request_serializer=pb.ClearRequest.SerializeToString,
        response_deserializer=None,  # the reply's bytes as they came
    )
    clearing = pb.ClearRequest(
        source="visa", message_id=str(uuid.uuid4()), network_reference="unmatched-ref",
        pan=card.pan, billing_amount=c.Money(amount_minor=1_500, asset="GBP"), final=True,
        merchant=pb.Merchant(mcc="5411", country="GB", name="Shop"),
    )  # fmt: skip
    first, second = await clear(clearing), await clear(clearing)
    assert first == second == await _stored_reply(app, "visa", clearing.message_id)
    cleared = pb.ClearResponse.FromString(first)
    assert (cleared.response_code, cleared.matched, cleared.posted.amount_minor) == (
        "00", False, 1_500,
    )  # fmt: skip
    release = ledger.channel.unary_unary(
        "/authswitch.v1.LedgerAdminService/ReleaseHold",
        request_serializer=la.ReleaseHoldRequest.SerializeToString,
        response_deserializer=None,  # the reply's bytes as they came
    )
    hold = await app.holds.hold_by_message(auth.source, auth.message_id)
    assert hold is not None
    request = la.ReleaseHoldRequest(hold_id=hold.id, reason="by hand", idempotency_key=hold.id)
    first, second = await release(request), await release(request)
    assert first == second == await _stored_reply(app, "admin", hold.id)
    assert la.ReleaseHoldResponse.FromString(first).released.amount_minor == 4_000


async def _stored_reply(app: Application, source: str, message_id: str) -> bytes:
    assert app.pool is not None
    stored = await app.pool.fetchval(
        "SELECT response FROM decisions WHERE source = $1 AND message_id = $2", source, message_id
    )
    return bytes(stored)


async def test_malformed_lifecycle_messages_write_nothing(ledger: Ledger, app: Application) -> None:
    card = await ledger.card(10_000)
    assert (await ledger.clear(card, "r", -5)).response_code == "13"
    assert (await ledger.refund(card, 0)).response_code == "13"
    assert (await ledger.clear(card, "r", 5, "XXX")).response_code == "30"
    bad_reverse = await ledger.auth.Reverse(pb.ReverseRequest(source="visa", message_id="m"))
    assert bad_reverse.response_code == "30"
    assert await ledger.figures(card.account_id) == (10_000, 10_000, 0)


async def test_history_newest_first_in_pages(ledger: Ledger) -> None:
    card = await ledger.card(10_000)
    auth = await _authorized(ledger, card, 4_000)
    await ledger.clear(card, auth.network_reference, 4_000)
    await ledger.refund(card, 500)
    seen: list[la.HistoryEntry] = []
    token = ""
    while True:
        page = await ledger.admin.ListAccountHistory(
            la.ListAccountHistoryRequest(account_id=card.account_id, page_size=2, page_token=token)
        )
        seen.extend(page.entries)
        token = page.next_page_token
        if not token:
            break
    kinds = [e.kind for e in seen]
    assert kinds == ["REFUND", "CLEARING", "CLEARING", "AUTHORIZATION", "LOAD"]
    assert sum(e.actual_delta_minor for e in seen) == 6_500
    assert sum(e.authorized_delta_minor for e in seen) == 0
    times = [e.at.ToDatetime() for e in seen]
    assert times == sorted(times, reverse=True)


async def test_journal_entries_balance_and_derive_balances(
    ledger: Ledger, app: Application
) -> None:
    card = await ledger.card(10_000)
    auth = await _authorized(ledger, card, 4_000)
    await ledger.clear(card, auth.network_reference, 4_500)
    await ledger.refund(card, 1_000)
    assert app.pool is not None
    unbalanced = await app.pool.fetchval(
        "SELECT count(*) FROM (SELECT entry_id, asset FROM postings GROUP BY entry_id, asset "
        "HAVING sum(amount_minor) <> 0) x"
    )
    assert unbalanced == 0
    derived = await app.pool.fetchval(
        "SELECT sum(amount_minor) FROM postings WHERE account_id = $1", card.account_id
    )
    assert derived == (await ledger.figures(card.account_id))[0] == 6_500


# -- age-off, driven by a clock the test controls --------------------------------------------


@pytest.fixture(scope="module")
async def clocked(stores: Stores) -> AsyncIterator[tuple[Application, Ledger, ManualClock]]:
    async with clocked_app(stores, "c") as opened:
        yield opened


async def _age_off_all(app: Application) -> int:
    """Sweep until a sweep releases nothing; how many holds were released. The clocked
    application shares the session's database, whose other tests' holds have expired too by
    the advanced clock: one sweep (1,000 holds at most, oldest expiry first) need not reach
    this test's hold."""
    released = 0
    while swept := await app.lifecycle.age_off():
        released += swept
    return released


async def test_age_off_never_early_never_twice(
    clocked: tuple[Application, Ledger, ManualClock],
) -> None:
    app, ledger, clock = clocked
    card = await ledger.card(10_000)
    await _authorized(ledger, card, 1_000)
    hotel = await _authorized(ledger, card, 2_000, mcc="7011")
    clock.advance(timedelta(days=6, hours=23))
    await _age_off_all(app)
    assert await ledger.figures(card.account_id) == (10_000, 7_000, 3_000)  # not early
    clock.advance(timedelta(hours=2))
    await _age_off_all(app)
    assert await ledger.figures(card.account_id) == (10_000, 8_000, 2_000)
    # The hotel hold lives 31 days; a clock that jumps back does not bring anything back.
    clock.advance(timedelta(days=-3))
    await _age_off_all(app)
    assert await ledger.figures(card.account_id) == (10_000, 8_000, 2_000)
    clock.advance(timedelta(days=30))
    await _age_off_all(app)
    assert await _age_off_all(app) == 0  # twice: nothing more
    assert await ledger.figures(card.account_id) == (10_000, 10_000, 0)
    holds = await ledger.admin.ListHolds(la.ListHoldsRequest(account_id=card.account_id))
    assert {h.status for h in holds.holds} == {la.HOLD_STATUS_EXPIRED}
    reversal = await ledger.reverse(hotel.message_id)
    assert reversal.result == pb.REVERSAL_RESULT_HOLD_ALREADY_ENDED
