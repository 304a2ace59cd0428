"""Disputes through the real APIs: every path with the cardholder's, the clearing and the
disputes account's balances checked after each step, the state machine's refusals,
idempotency of every step, the amount cap under concurrency, and the ledger still
reconciling afterwards."""

from __future__ import annotations

import asyncio
import json
import uuid

import grpc
import pytest

from authswitch.adapters.postgres.reconcile import ReconciliationStore
from authswitch.app import Application
from authswitch.domain.codes import Reason
from authswitch.service.reconcile import Reconciler
from authswitch.v1 import common_pb2 as c
from authswitch.v1 import ledger_admin_pb2 as la
from tests.support.ledger import IssuedCard, Ledger

pytestmark = pytest.mark.timeout(120)

CARDHOLDER, MERCHANT = la.DISPUTE_OUTCOME_CARDHOLDER_WON, la.DISPUTE_OUTCOME_MERCHANT_WON


class Books:
    """Reads the three accounts a dispute moves: (actual, available, authorised) of the
    cardholder, and what was posted to the program's clearing and disputes accounts since
    ``start``."""

    def __init__(self, app: Application, ledger: Ledger, card: IssuedCard) -> None:
        self.app, self.ledger, self.card = app, ledger, card
        self.base = (0, 0)

    async def start(self) -> None:
        _, clearing, disputes = await self()
        self.base = (clearing, disputes)

    async def __call__(self) -> tuple[tuple[int, int, int], int, int]:
        assert self.app.pool is not None
        rows = await self.app.pool.fetch(
            """SELECT s.kind, coalesce(sum(p.amount_minor), 0)
               FROM accounts a JOIN accounts s ON s.program_id = a.program_id
               LEFT JOIN postings p ON p.account_id = s.id
               WHERE a.id = $1 AND s.kind IN ('CLEARING', 'DISPUTES') GROUP BY s.kind""",
            self.card.account_id,
        )
        system = {r[0]: int(r[1]) for r in rows}
        customer = await self.ledger.figures(self.card.account_id)
        return customer, system["CLEARING"] - self.base[0], system["DISPUTES"] - self.base[1]


async def _setup(app: Application, ledger: Ledger) -> tuple[IssuedCard, Books, str]:
    card = await ledger.card(10_000)
    books = Books(app, ledger, card)
    await books.start()
    clearing, _ = await ledger.cleared(card, 4_000)
    assert await books() == ((6_000, 6_000, 0), 4_000, 0)
    return card, books, clearing


async def test_provisional_credit_chargeback_cardholder_wins(
    app: Application, ledger: Ledger
) -> None:
    _, books, clearing = await _setup(app, ledger)
    opened = await ledger.open_dispute(clearing, 4_000, provisional=True)
    dispute = opened.dispute
    assert dispute.status == c.DISPUTE_STATUS_OPEN
    assert dispute.provisional_credit.amount_minor == 4_000
    assert opened.balance.available_minor == 10_000
    assert await books() == ((10_000, 10_000, 0), 4_000, -4_000)
    charged = await ledger.chargeback(dispute)
    assert (charged.response_code, charged.status) == ("00", c.DISPUTE_STATUS_CHARGEBACK_SENT)
    assert charged.entry_id
    assert await books() == ((10_000, 10_000, 0), 0, 0)
    won = await ledger.resolve_dispute(dispute.dispute_id, CARDHOLDER)
    assert won.dispute.status == c.DISPUTE_STATUS_CARDHOLDER_WON
    assert await books() == ((10_000, 10_000, 0), 0, 0)  # the credit became final


async def test_representment_then_merchant_wins_may_go_below_zero(
    app: Application, ledger: Ledger
) -> None:
    card, books, clearing = await _setup(app, ledger)
    dispute = (await ledger.open_dispute(clearing, 4_000, provisional=True)).dispute
    assert (await ledger.chargeback(dispute)).response_code == "00"
    # The cardholder spends the provisional credit meanwhile.
    assert (await ledger.authorize(card, 9_000)).response_code == "00"
    assert await books() == ((10_000, 1_000, 9_000), 0, 0)
    represented = await ledger.represent(dispute)
    assert (represented.response_code, represented.status) == ("00", c.DISPUTE_STATUS_REPRESENTED)
    assert await books() == ((10_000, 1_000, 9_000), 4_000, -4_000)
    lost = await ledger.resolve_dispute(dispute.dispute_id, MERCHANT)
    assert lost.dispute.status == c.DISPUTE_STATUS_MERCHANT_WON
    assert lost.dispute.provisional_credit.amount_minor == 0
    assert lost.balance.available_minor == -3_000
    assert await books() == ((6_000, -3_000, 9_000), 4_000, 0)
    assert app.pool is not None
    notes = await app.pool.fetch(
        """SELECT payload FROM notifications WHERE kind = 'DISPUTE' AND account_id = $1
           ORDER BY created_at, id""",
        card.account_id,
    )
    steps = [json.loads(n[0])["step"] for n in notes]
    assert steps == ["OPEN", "CHARGEBACK", "REPRESENTMENT", "MERCHANT_WON"]
    assert json.loads(notes[-1][0])["customer_minor"] == -4_000


async def test_without_provisional_credit_the_win_credits(app: Application, ledger: Ledger) -> None:
    _, books, clearing = await _setup(app, ledger)
    dispute = (await ledger.open_dispute(clearing, 1_500)).dispute
    assert dispute.provisional_credit.amount_minor == 0
    assert await books() == ((6_000, 6_000, 0), 4_000, 0)  # nothing moves at opening
    assert (await ledger.chargeback(dispute)).response_code == "00"
    assert await books() == ((6_000, 6_000, 0), 2_500, 1_500)
    won = await ledger.resolve_dispute(dispute.dispute_id, CARDHOLDER)
    assert won.balance.actual_minor == 7_500
    assert await books() == ((7_500, 7_500, 0), 2_500, 0)


async def test_arbitration_won_after_representment(app: Application, ledger: Ledger) -> None:
    _, books, clearing = await _setup(app, ledger)
    dispute = (await ledger.open_dispute(clearing, 4_000)).dispute
    await ledger.chargeback(dispute)
    await ledger.represent(dispute)
    assert await books() == ((6_000, 6_000, 0), 4_000, 0)
    await ledger.resolve_dispute(dispute.dispute_id, CARDHOLDER)
    assert await books() == ((10_000, 10_000, 0), 0, 0)


async def test_withdrawn_dispute_takes_back_the_provisional_credit(
    app: Application, ledger: Ledger
) -> None:
    _, books, clearing = await _setup(app, ledger)
    dispute = (await ledger.open_dispute(clearing, 4_000, provisional=True)).dispute
    await ledger.resolve_dispute(dispute.dispute_id, MERCHANT)
    assert await books() == ((6_000, 6_000, 0), 4_000, 0)
    # The merchant's win frees the amount: the cardholder disputes again, for another reason.
    other = (await ledger.open_dispute(clearing, 4_000, reason_code="4853")).dispute
    await ledger.resolve_dispute(other.dispute_id, MERCHANT)  # nothing was credited
    assert await books() == ((6_000, 6_000, 0), 4_000, 0)


async def test_impossible_steps_are_refused_with_the_state(
    app: Application, ledger: Ledger
) -> None:
    _, books, clearing = await _setup(app, ledger)
    dispute = (await ledger.open_dispute(clearing, 4_000, provisional=True)).dispute
    early_id = str(uuid.uuid4())
    early = await ledger.represent(dispute, message_id=early_id)  # no chargeback yet
    assert (early.response_code, early.status) == ("12", c.DISPUTE_STATUS_OPEN)
    assert app.pool is not None
    reason = await app.pool.fetchval(
        "SELECT reason FROM decisions WHERE source = 'visa' AND message_id = $1", early_id
    )
    assert reason == int(Reason.INVALID_TRANSACTION)  # recorded with 12's reason, not 57's
    await ledger.chargeback(dispute)
    again = await ledger.chargeback(dispute)  # a second chargeback, under a new message id
    assert (again.response_code, again.status) == ("12", c.DISPUTE_STATUS_CHARGEBACK_SENT)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await ledger.resolve_dispute(dispute.dispute_id, MERCHANT)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "CHARGEBACK_SENT cannot take the step MERCHANT_WON" in str(refused.value.details())
    await ledger.resolve_dispute(dispute.dispute_id, CARDHOLDER)
    with pytest.raises(grpc.aio.AioRpcError) as closed:
        await ledger.resolve_dispute(dispute.dispute_id, CARDHOLDER)
    assert closed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "closed" in str(closed.value.details())
    assert await books() == ((10_000, 10_000, 0), 0, 0)  # the refusals moved nothing


async def test_network_messages_for_unknown_or_mismatched_disputes(
    app: Application, ledger: Ledger
) -> None:
    _, books, clearing = await _setup(app, ledger)
    dispute = (await ledger.open_dispute(clearing, 4_000)).dispute
    unknown = la.Dispute()
    unknown.CopyFrom(dispute)
    unknown.dispute_id = str(uuid.uuid4())
    unknown_id, short_id = str(uuid.uuid4()), str(uuid.uuid4())
    assert (await ledger.chargeback(unknown, message_id=unknown_id)).response_code == "25"
    short = await ledger.chargeback(dispute, amount_minor=3_999, message_id=short_id)
    assert short.response_code == "13"
    # Each refusal is recorded with the reason of its own code (not 57's).
    assert app.pool is not None
    recorded = await app.pool.fetch(
        "SELECT message_id, response_code, reason FROM decisions WHERE source = 'visa'"
        " AND message_id = ANY($1::text[])",
        [unknown_id, short_id],
    )
    assert {(r["message_id"], r["response_code"], r["reason"]) for r in recorded} == {
        (unknown_id, "25", int(Reason.NO_RECORD)),
        (short_id, "13", int(Reason.INVALID_AMOUNT)),
    }
    malformed = la.Dispute()
    malformed.CopyFrom(dispute)
    malformed.dispute_id = "not-an-id"
    assert (await ledger.chargeback(malformed)).response_code == "30"
    assert await books() == ((6_000, 6_000, 0), 4_000, 0)


async def test_every_step_is_idempotent(app: Application, ledger: Ledger) -> None:
    _, books, clearing = await _setup(app, ledger)
    key = str(uuid.uuid4())
    first = await ledger.open_dispute(clearing, 4_000, provisional=True, key=key)
    retried = await ledger.open_dispute(clearing, 4_000, provisional=True, key=key)
    assert retried == first
    with pytest.raises(grpc.aio.AioRpcError) as reused:
        await ledger.open_dispute(clearing, 3_000, provisional=True, key=key)
    assert reused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    dispute = first.dispute
    message_id = str(uuid.uuid4())
    charged = await ledger.chargeback(dispute, message_id=message_id)
    assert await ledger.chargeback(dispute, message_id=message_id) == charged
    other_payload = await ledger.chargeback(dispute, message_id=message_id, amount_minor=1)
    assert other_payload.response_code == "94"
    resolve_key = str(uuid.uuid4())
    won = await ledger.resolve_dispute(dispute.dispute_id, CARDHOLDER, key=resolve_key)
    assert await ledger.resolve_dispute(dispute.dispute_id, CARDHOLDER, key=resolve_key) == won
    assert await books() == ((10_000, 10_000, 0), 0, 0)  # each step once
    got = await ledger.admin.GetDispute(la.GetDisputeRequest(dispute_id=dispute.dispute_id))
    assert [e.step for e in got.events] == ["OPEN", "CHARGEBACK", "CARDHOLDER_WON"]
    assert [e.to_status for e in got.events] == [
        c.DISPUTE_STATUS_OPEN, c.DISPUTE_STATUS_CHARGEBACK_SENT, c.DISPUTE_STATUS_CARDHOLDER_WON,
    ]  # fmt: skip
    assert got.events[1].entry_id == charged.entry_id


async def test_disputes_never_claim_more_than_was_cleared(app: Application, ledger: Ledger) -> None:
    _, books, clearing = await _setup(app, ledger)
    results = await asyncio.gather(
        *(ledger.open_dispute(clearing, 3_000, provisional=True) for _ in range(4)),
        return_exceptions=True,
    )
    opened = [r for r in results if isinstance(r, la.OpenDisputeResponse)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(opened) == 1, results
    assert {r.code() for r in refused} == {grpc.StatusCode.FAILED_PRECONDITION}
    assert await books() == ((9_000, 9_000, 0), 4_000, -3_000)
    with pytest.raises(grpc.aio.AioRpcError) as over:
        await ledger.open_dispute(clearing, 1_001)
    assert "at most 1000" in str(over.value.details())
    await ledger.open_dispute(clearing, 1_000)  # exactly what is left


async def test_bad_dispute_requests_write_nothing(app: Application, ledger: Ledger) -> None:
    card, books, clearing = await _setup(app, ledger)
    refund = await ledger.refund(card, 500)
    cases: list[tuple[dict[str, object], grpc.StatusCode]] = [
        ({"clearing_message_id": str(uuid.uuid4())}, grpc.StatusCode.NOT_FOUND),
        ({"amount": 0}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"asset": "EUR"}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"reason_code": "no spaces!"}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"key": ""}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"amount": 4_001}, grpc.StatusCode.FAILED_PRECONDITION),
    ]
    for overrides, code in cases:
        values: dict[str, object] = {"clearing_message_id": clearing, "amount": 4_000}
        values.update(overrides)
        request = la.OpenDisputeRequest(
            clearing_source="visa", clearing_message_id=str(values["clearing_message_id"]),
            reason_code=str(values.get("reason_code", "13.1")),
            amount=c.Money(amount_minor=int(str(values["amount"])),
                           asset=str(values.get("asset", "GBP"))),
            provisional_credit=True,
            idempotency_key=str(values.get("key", uuid.uuid4())),
        )  # fmt: skip
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await ledger.admin.OpenDispute(request)
        assert error.value.code() == code, overrides
    assert refund.response_code == "00"
    assert await books() == ((6_500, 6_500, 0), 3_500, 0)
    assert app.pool is not None
    count = await app.pool.fetchval(
        "SELECT count(*) FROM disputes WHERE account_id = $1", card.account_id
    )
    assert count == 0


async def test_the_ledger_reconciles_after_disputes(app: Application, ledger: Ledger) -> None:
    card, _, clearing = await _setup(app, ledger)
    dispute = (await ledger.open_dispute(clearing, 2_000, provisional=True)).dispute
    await ledger.chargeback(dispute)
    await ledger.represent(dispute)
    await ledger.resolve_dispute(dispute.dispute_id, MERCHANT)
    assert app.pool is not None
    assert app.cache is not None
    account = await app.pool.fetchrow(
        "SELECT program_id::text FROM accounts WHERE id = $1", card.account_id
    )
    assert account is not None
    report = await Reconciler(ReconciliationStore(app.pool), app.cache, app.clock).run(
        program_id=account[0]
    )
    assert report.ok, report.to_text()
