"""The admin API end to end: catalogue rules, adjustments, idempotency, clear errors."""

from __future__ import annotations

import uuid

import grpc
import pytest

from authswitch.app import Application
from authswitch.v1 import common_pb2 as c
from authswitch.v1 import ledger_admin_pb2 as la
from tests.support.ledger import Ledger

pytestmark = pytest.mark.timeout(60)


async def _code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value.code()


async def test_catalogue_validation_errors(ledger: Ledger) -> None:
    admin = ledger.admin
    assert await _code_of(admin.CreateClient(la.CreateClientRequest(name=""))) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    bad_client = la.CreateProgramRequest(
        client_id=str(uuid.uuid4()), name="p", mode=c.LEDGER_MODE_ON_LEDGER
    )
    assert await _code_of(admin.CreateProgram(bad_client)) == grpc.StatusCode.NOT_FOUND
    client = await admin.CreateClient(la.CreateClientRequest(name="c"))
    no_mode = la.CreateProgramRequest(client_id=client.client_id, name="p")
    assert await _code_of(admin.CreateProgram(no_mode)) == grpc.StatusCode.INVALID_ARGUMENT
    bad_zone = la.CreateProgramRequest(
        client_id=client.client_id, name="p", mode=c.LEDGER_MODE_ON_LEDGER, time_zone="Mars/Base"
    )
    assert await _code_of(admin.CreateProgram(bad_zone)) == grpc.StatusCode.INVALID_ARGUMENT
    program_id = await ledger.program()
    unknown_asset = la.CreateProductRequest(program_id=program_id, name="x", assets=["ZZZ"])
    assert await _code_of(admin.CreateProduct(unknown_asset)) == grpc.StatusCode.INVALID_ARGUMENT
    garbage_id = la.GetBalancesRequest(account_id="not-a-uuid")
    assert await _code_of(admin.GetBalances(garbage_id)) == grpc.StatusCode.NOT_FOUND


async def test_multi_currency_account_refused_on_single_currency_product(ledger: Ledger) -> None:
    product_id = await ledger.product(account_types=[c.ACCOUNT_TYPE_SINGLE], assets=["GBP", "EUR"])
    request = la.CreateAccountRequest(
        product_id=product_id, account_type=c.ACCOUNT_TYPE_MULTI_CURRENCY, assets=["GBP", "EUR"]
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ledger.admin.CreateAccount(request)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "MULTI_CURRENCY" in (caught.value.details() or "")
    single_two = la.CreateAccountRequest(
        product_id=product_id, account_type=c.ACCOUNT_TYPE_SINGLE, assets=["GBP", "EUR"]
    )
    assert (
        await _code_of(ledger.admin.CreateAccount(single_two)) == grpc.StatusCode.INVALID_ARGUMENT
    )
    outside = la.CreateAccountRequest(
        product_id=product_id, account_type=c.ACCOUNT_TYPE_SINGLE, assets=["USD"]
    )
    assert (
        await _code_of(ledger.admin.CreateAccount(outside)) == grpc.StatusCode.FAILED_PRECONDITION
    )


async def test_multi_currency_account_uses_the_billing_asset(ledger: Ledger) -> None:
    product_id = await ledger.product()
    account_id = await ledger.account(product_id, ("GBP", "EUR", "JPY"))
    await ledger.credit(account_id, 5_000, "EUR")
    await ledger.credit(account_id, 1_000, "JPY")
    card = await ledger.card(account_id=account_id)
    assert (await ledger.authorize(card, 4_000, "EUR")).response_code == "00"
    assert (await ledger.authorize(card, 1_001, "JPY")).response_code == "51"
    assert (await ledger.authorize(card, 1_000, "JPY")).response_code == "00"
    assert (await ledger.authorize(card, 1, "GBP")).response_code == "51"
    assert (await ledger.authorize(card, 1, "USD")).response_code == "51"
    assert (await ledger.balance(account_id, "EUR")).available_minor == 1_000
    assert (await ledger.balance(account_id, "JPY")).available_minor == 0


async def test_duplicate_pan_is_already_exists(ledger: Ledger) -> None:
    card = await ledger.card(0)
    again = la.CreateCardRequest(account_id=card.account_id, pan=card.pan, expiry="3012")
    assert await _code_of(ledger.admin.CreateCard(again)) == grpc.StatusCode.ALREADY_EXISTS
    bad = la.CreateCardRequest(account_id=card.account_id, pan="4111111111111112", expiry="3012")
    assert await _code_of(ledger.admin.CreateCard(bad)) == grpc.StatusCode.INVALID_ARGUMENT


async def test_credit_and_debit_post_balanced_entries(ledger: Ledger, app: Application) -> None:
    account_id = await ledger.account()
    credit = await ledger.credit(account_id, 10_000)
    assert credit.balance.available_minor == 10_000
    debit = await ledger.admin.DebitAccount(
        la.DebitAccountRequest(
            account_id=account_id,
            amount=c.Money(amount_minor=2_500, asset="GBP"),
            purpose=la.ADJUSTMENT_PURPOSE_FEE,
            idempotency_key=str(uuid.uuid4()),
        )
    )
    assert (debit.balance.actual_minor, debit.balance.available_minor) == (7_500, 7_500)
    assert app.pool is not None
    sums = await app.pool.fetch(
        "SELECT e.kind, sum(p.amount_minor) AS total, count(*) AS n FROM journal_entries e "
        "JOIN postings p ON p.entry_id = e.id WHERE e.id = ANY($1::uuid[]) GROUP BY e.id, e.kind",
        [credit.entry_id, debit.entry_id],
    )
    assert {(r["kind"], r["total"], r["n"]) for r in sums} == {("LOAD", 0, 2), ("FEE", 0, 2)}
    fee_income = await app.pool.fetchval(
        "SELECT p.amount_minor FROM postings p JOIN accounts a ON a.id = p.account_id "
        "WHERE p.entry_id = $1 AND a.kind = 'FEE_INCOME'",
        debit.entry_id,
    )
    assert fee_income == 2_500


async def test_adjustments_are_idempotent(ledger: Ledger) -> None:
    account_id = await ledger.account()
    request = la.CreditAccountRequest(
        account_id=account_id,
        amount=c.Money(amount_minor=1_000, asset="GBP"),
        purpose=la.ADJUSTMENT_PURPOSE_LOAD,
        idempotency_key=str(uuid.uuid4()),
    )
    first = await ledger.admin.CreditAccount(request)
    second = await ledger.admin.CreditAccount(request)
    assert first == second
    assert (await ledger.balance(account_id)).actual_minor == 1_000
    request.amount.amount_minor = 2_000
    assert await _code_of(ledger.admin.CreditAccount(request)) == grpc.StatusCode.ALREADY_EXISTS
    assert (await ledger.balance(account_id)).actual_minor == 1_000


async def test_a_retried_adjustment_gets_the_stored_reply_bytes(
    ledger: Ledger, app: Application
) -> None:
    """The reply is the bytes stored with the decision, first time and every retry alike."""
    account_id = await ledger.account()
    await ledger.credit(account_id, 1_000)
    raw = ledger.channel.unary_unary(
        "/authswitch.v1.LedgerAdminService/DebitAccount",
        request_serializer=la.DebitAccountRequest.SerializeToString,
        response_deserializer=None,  # the reply's bytes as they came
    )
    request = la.DebitAccountRequest(
        account_id=account_id, amount=c.Money(amount_minor=400, asset="GBP"),
        purpose=la.ADJUSTMENT_PURPOSE_FEE, idempotency_key=str(uuid.uuid4()),
    )  # fmt: skip
    first, second = await raw(request), await raw(request)
    assert app.pool is not None
    stored = await app.pool.fetchval(
        "SELECT response FROM decisions WHERE source = 'admin' AND message_id = $1",
        request.idempotency_key,
    )
    assert first == second == bytes(stored)
    debit = la.DebitAccountResponse.FromString(first)
    assert (debit.balance.asset, debit.balance.actual_minor) == ("GBP", 600)


async def test_debit_beyond_available_needs_allow_negative(ledger: Ledger) -> None:
    account_id = await ledger.account()
    await ledger.credit(account_id, 1_000)
    request = la.DebitAccountRequest(
        account_id=account_id,
        amount=c.Money(amount_minor=1_500, asset="GBP"),
        purpose=la.ADJUSTMENT_PURPOSE_DEBIT_ADJUSTMENT,
        idempotency_key=str(uuid.uuid4()),
    )
    assert await _code_of(ledger.admin.DebitAccount(request)) == grpc.StatusCode.FAILED_PRECONDITION
    assert (await ledger.balance(account_id)).actual_minor == 1_000
    request.allow_negative = True
    debit = await ledger.admin.DebitAccount(request)
    assert debit.balance.available_minor == -500


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"amount": c.Money(amount_minor=0, asset="GBP")}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"amount": c.Money(amount_minor=-5, asset="GBP")}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"amount": c.Money(amount_minor=5, asset="XXX")}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"amount": c.Money(amount_minor=5, asset="EUR")}, grpc.StatusCode.FAILED_PRECONDITION),
        ({"purpose": la.ADJUSTMENT_PURPOSE_FEE}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"purpose": la.ADJUSTMENT_PURPOSE_UNSPECIFIED}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"idempotency_key": ""}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"account_id": str(uuid.uuid4())}, grpc.StatusCode.NOT_FOUND),
    ],
)
async def test_bad_credits_are_refused_and_write_nothing(
    ledger: Ledger, app: Application, change: dict[str, object], code: grpc.StatusCode
) -> None:
    account_id = await ledger.account()
    fields: dict[str, object] = {
        "account_id": account_id,
        "amount": c.Money(amount_minor=100, asset="GBP"),
        "purpose": la.ADJUSTMENT_PURPOSE_LOAD,
        "idempotency_key": str(uuid.uuid4()),
    }
    fields.update(change)
    assert await _code_of(ledger.admin.CreditAccount(la.CreditAccountRequest(**fields))) == code  # type: ignore[arg-type]
    assert app.pool is not None
    assert (
        await app.pool.fetchval("SELECT count(*) FROM decisions WHERE account_id = $1", account_id)
        == 0
    )


async def test_set_pin_resets_tries(ledger: Ledger) -> None:
    block_pin = {"pin_tries_exceeded_action": la.PIN_TRIES_EXCEEDED_ACTION_BLOCK_PIN}
    card = await ledger.card(10_000, pin="4321", product_kwargs=block_pin)
    for _ in range(3):
        await ledger.authorize(card, 100, pin="0000")
    assert (await ledger.authorize(card, 100, pin="4321")).response_code == "75"
    await ledger.admin.SetCardPin(la.SetCardPinRequest(card_id=card.card_id, pin="5555"))
    assert (await ledger.authorize(card, 100, pin="5555")).response_code == "00"


async def test_a_new_pin_does_not_unblock_a_blocked_card(ledger: Ledger) -> None:
    """On a BLOCK_CARD product (the default) the card stays blocked until an operator
    changes its status: a new PIN is not an unblock."""
    card = await ledger.card(10_000, pin="4321")
    for _ in range(3):
        await ledger.authorize(card, 100, pin="0000")
    await ledger.admin.SetCardPin(la.SetCardPinRequest(card_id=card.card_id, pin="5555"))
    assert (await ledger.authorize(card, 100, pin="5555")).response_code == "62"
    await ledger.admin.ChangeCardStatus(
        la.ChangeCardStatusRequest(card_id=card.card_id, status=c.CARD_STATUS_ACTIVE)
    )
    assert (await ledger.authorize(card, 100, pin="5555")).response_code == "00"


async def test_postgres_has_the_last_word_on_funds(ledger: Ledger, app: Application) -> None:
    """A cache that thinks there is more money than Postgres knows of cannot overspend."""
    card = await ledger.card(10_000)
    assert (await ledger.authorize(card, 100)).response_code == "00"
    assert app.redis is not None
    await app.redis.hincrby(app.cache.keys.state(card.account_id), "a:GBP", 1_000_000)
    response = await ledger.authorize(card, 50_000)
    assert response.response_code == "51"
    balance = await ledger.balance(card.account_id)
    assert (balance.actual_minor, balance.authorized_minor) == (10_000, 100)
    # The refusal reloads the account, after which the cache agrees with Postgres again.
    for _ in range(50):
        cached = await app.cache.read_balances(card.account_id)
        if cached and cached["GBP"].actual_minor == 10_000:
            break
        import asyncio

        await asyncio.sleep(0.02)
    assert cached is not None
    assert cached["GBP"].actual_minor == 10_000
    assert cached["GBP"].authorized_minor == 100


async def test_every_admin_idempotency_key_is_checked_alike(ledger: Ledger) -> None:
    """Adjustments, transfers and manual releases take the same keys: printable, no spaces,
    at most 128 characters; nothing is written for a bad one."""
    card = await ledger.card(10_000)
    money = c.Money(amount_minor=100, asset="GBP")
    for key in ("", "with space", "x" * 129):
        credit = la.CreditAccountRequest(
            account_id=card.account_id, amount=money, purpose=la.ADJUSTMENT_PURPOSE_LOAD,
            idempotency_key=key,
        )  # fmt: skip
        assert await _code_of(ledger.admin.CreditAccount(credit)) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )
        transfer = la.TransferRequest(
            from_account_id=card.account_id, to_account_id=card.account_id, amount=money,
            idempotency_key=key,
        )  # fmt: skip
        assert await _code_of(ledger.admin.Transfer(transfer)) == grpc.StatusCode.INVALID_ARGUMENT
    assert await ledger.figures(card.account_id) == (10_000, 10_000, 0)
    good = la.CreditAccountRequest(
        account_id=card.account_id, amount=money, purpose=la.ADJUSTMENT_PURPOSE_LOAD,
        idempotency_key="k" * 128,
    )  # fmt: skip
    await ledger.admin.CreditAccount(good)
    assert await ledger.figures(card.account_id) == (10_100, 10_100, 0)
