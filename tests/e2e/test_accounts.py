"""A customer's accounts end to end (issue 17): transfers between them (pots), and joint
holders with their shares in the pooled FBO balance file."""

from __future__ import annotations

import asyncio
import csv
import uuid
from pathlib import Path

import grpc
import pytest

from authswitch.adapters.postgres.reconcile import ReconciliationStore
from authswitch.adapters.postgres.reports import ReportStore
from authswitch.adapters.sinks import DirectorySink
from authswitch.app import Application
from authswitch.domain.holders import split_by_shares
from authswitch.service.reconcile import Reconciler, read_fbo_file
from authswitch.service.reports import ReportWriter
from authswitch.v1 import common_pb2 as c
from authswitch.v1 import ledger_admin_pb2 as la
from tests.support.ledger import IssuedCard, Ledger, TransactionKind

pytestmark = pytest.mark.timeout(90)


async def _code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value.code()


async def _customer(ledger: Ledger, program_id: str) -> str:
    created = await ledger.admin.CreateCustomer(la.CreateCustomerRequest(program_id=program_id))
    return created.customer_id


async def _account(
    ledger: Ledger, product_id: str, *holders: str, assets: tuple[str, ...] = ("GBP",)
) -> str:
    account_type = c.ACCOUNT_TYPE_SINGLE if len(assets) == 1 else c.ACCOUNT_TYPE_MULTI_CURRENCY
    created = await ledger.admin.CreateAccount(
        la.CreateAccountRequest(
            product_id=product_id, account_type=account_type, assets=list(assets),
            customer_ids=list(holders),
        )
    )  # fmt: skip
    return created.account_id


def _transfer(
    source: str, target: str, amount_minor: int, key: str | None = None, asset: str = "GBP"
) -> la.TransferRequest:
    return la.TransferRequest(
        from_account_id=source, to_account_id=target,
        amount=c.Money(amount_minor=amount_minor, asset=asset),
        idempotency_key=str(uuid.uuid4()) if key is None else key, description="to my pot",
    )  # fmt: skip


# -- transfers between a customer's accounts ---------------------------------------------------


async def test_a_transfer_to_a_pot_is_one_balanced_entry_the_pot_can_spend(
    ledger: Ledger, app: Application
) -> None:
    program_id = await ledger.program()
    product_id = await ledger.product(program_id)
    customer = await _customer(ledger, program_id)
    main = await _account(ledger, product_id, customer)
    pot = await _account(ledger, product_id, customer)
    await ledger.credit(main, 10_000)
    key = f"pot-{uuid.uuid4()}"
    request = _transfer(main, pot, 3_000, key=key)
    moved = await ledger.admin.Transfer(request)
    assert (moved.from_balance.actual_minor, moved.from_balance.available_minor) == (7_000, 7_000)
    assert await ledger.figures(main) == (7_000, 7_000, 0)
    assert await ledger.figures(pot) == (3_000, 3_000, 0)
    # One journal entry, balanced, touching only the two accounts (not the clearing account).
    assert app.pool is not None
    postings = await app.pool.fetch(
        """SELECT p.account_id::text, p.amount_minor, e.kind FROM postings p
           JOIN journal_entries e ON e.id = p.entry_id WHERE e.id = $1""",
        moved.entry_id,
    )
    assert sorted((r[0], r[1], r[2]) for r in postings) == sorted(
        [(main, -3_000, "TRANSFER"), (pot, 3_000, "TRANSFER")]
    )
    # The pot's cached balance learned of the credit: a card on the pot spends all of it.
    card = await ledger.card(account_id=pot)
    assert (await ledger.authorize(card, 3_000)).response_code == "00"
    # A retry is the same transfer; the same key for another transfer is refused.
    assert await ledger.admin.Transfer(request) == moved
    assert await ledger.figures(main) == (7_000, 7_000, 0)
    other = _transfer(main, pot, 3_001, key=key)
    assert await _code_of(ledger.admin.Transfer(other)) == grpc.StatusCode.ALREADY_EXISTS
    # Back from the pot: nothing is left once the card's hold is counted.
    back = _transfer(pot, main, 1)
    with pytest.raises(grpc.aio.AioRpcError) as short:
        await ledger.admin.Transfer(back)
    assert short.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "insufficient" in (short.value.details() or "")
    # A retry gets its first answer forever: even once the accounts share no holder.
    partner = await _customer(ledger, program_id)
    await ledger.admin.AddAccountHolder(
        la.AddAccountHolderRequest(account_id=pot, customer_id=partner)
    )
    await ledger.admin.RemoveAccountHolder(
        la.RemoveAccountHolderRequest(account_id=pot, customer_id=customer)
    )
    assert await ledger.admin.Transfer(request) == moved
    fresh = _transfer(main, pot, 100)
    assert await _code_of(ledger.admin.Transfer(fresh)) == grpc.StatusCode.FAILED_PRECONDITION
    report = await Reconciler(ReconciliationStore(app.pool), app.cache, app.clock).run(
        program_id=program_id
    )
    assert report.ok, report.to_text()


async def test_transfers_that_are_refused_write_nothing(ledger: Ledger, app: Application) -> None:
    program_id = await ledger.program()
    product_id = await ledger.product(program_id)
    alice, bob = await _customer(ledger, program_id), await _customer(ledger, program_id)
    main = await _account(ledger, product_id, alice)
    pot = await _account(ledger, product_id, alice)
    bobs = await _account(ledger, product_id, bob)
    euros = await _account(ledger, product_id, alice, assets=("EUR",))
    nobody = await _account(ledger, product_id)
    await ledger.credit(main, 1_000)
    assert app.pool is not None
    before = await app.pool.fetchval("SELECT count(*) FROM decisions WHERE kind = 'TRANSFER'")
    refusals = {
        "another customer's account": (_transfer(main, bobs, 100), "FAILED_PRECONDITION"),
        "an account without holders": (_transfer(main, nobody, 100), "FAILED_PRECONDITION"),
        "no such balance at the target": (_transfer(main, euros, 100), "FAILED_PRECONDITION"),
        "no such balance at the source": (
            _transfer(main, pot, 100, asset="EUR"), "FAILED_PRECONDITION"
        ),
        "more than available": (_transfer(main, pot, 1_001), "FAILED_PRECONDITION"),
        "to itself": (_transfer(main, main, 100), "INVALID_ARGUMENT"),
        "nothing": (_transfer(main, pot, 0), "INVALID_ARGUMENT"),
        "no key": (_transfer(main, pot, 100, key=""), "INVALID_ARGUMENT"),
        "an unknown asset": (_transfer(main, pot, 100, asset="ZZZ"), "INVALID_ARGUMENT"),
        "an unknown account": (_transfer(main, str(uuid.uuid4()), 100), "NOT_FOUND"),
    }  # fmt: skip
    for what, (request, code) in refusals.items():
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await ledger.admin.Transfer(request)
        assert caught.value.code().name == code, what
    assert await app.pool.fetchval("SELECT count(*) FROM decisions WHERE kind = 'TRANSFER'") == (
        before
    )
    assert await ledger.figures(main) == (1_000, 1_000, 0)
    # Off-ledger programs keep their balances in the client's ledger.
    off_program = await ledger.program(c.LEDGER_MODE_OFF_LEDGER)
    off_product = await ledger.product(off_program)
    carol = await _customer(ledger, off_program)
    off_main = await _account(ledger, off_product, carol)
    off_pot = await _account(ledger, off_product, carol)
    refused = await _code_of(ledger.admin.Transfer(_transfer(off_main, off_pot, 100)))
    assert refused == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_joint_holder_may_move_joint_money_to_their_own_pot(ledger: Ledger) -> None:
    program_id = await ledger.program()
    product_id = await ledger.product(program_id)
    alice, bob = await _customer(ledger, program_id), await _customer(ledger, program_id)
    joint = await _account(ledger, product_id, alice, bob)
    alices_pot = await _account(ledger, product_id, alice)
    await ledger.credit(joint, 5_000)
    await ledger.admin.Transfer(_transfer(joint, alices_pot, 2_000))
    assert await ledger.figures(alices_pot) == (2_000, 2_000, 0)


async def test_concurrent_transfers_never_overdraw_the_source(ledger: Ledger) -> None:
    program_id = await ledger.program()
    product_id = await ledger.product(program_id)
    customer = await _customer(ledger, program_id)
    main = await _account(ledger, product_id, customer)
    pots = [await _account(ledger, product_id, customer) for _ in range(3)]
    await ledger.credit(main, 10_000)

    refusals: list[grpc.StatusCode] = []

    async def move(n: int) -> bool:
        try:
            await ledger.admin.Transfer(_transfer(main, pots[n % 3], 1_000))
        except grpc.aio.AioRpcError as exc:
            refusals.append(exc.code())
            return False
        return True

    done = await asyncio.gather(*(move(n) for n in range(25)))
    assert sum(done) == 10
    assert set(refusals) == {grpc.StatusCode.FAILED_PRECONDITION}
    assert await ledger.figures(main) == (0, 0, 0)
    in_pots = [await ledger.figures(pot) for pot in pots]
    assert sum(actual for actual, _, _ in in_pots) == 10_000
    assert all(actual == available for actual, available, _ in in_pots)


# -- joint holders ---------------------------------------------------------------------------


def _holders(response: object) -> dict[str, int]:
    return {h.customer_id: h.share_bps for h in response.holders}  # type: ignore[attr-defined]


async def test_holders_are_added_and_removed_with_their_shares(
    ledger: Ledger, app: Application
) -> None:
    program_id = await ledger.program()
    product_id = await ledger.product(program_id)
    a, b, cc = [await _customer(ledger, program_id) for _ in range(3)]
    account = await _account(ledger, product_id, a)
    admin = ledger.admin
    added = await admin.AddAccountHolder(
        la.AddAccountHolderRequest(account_id=account, customer_id=b)
    )
    assert _holders(added) == {a: 0, b: 0}  # equal shares
    again = await admin.AddAccountHolder(
        la.AddAccountHolderRequest(account_id=account, customer_id=b)
    )
    assert _holders(again) == {a: 0, b: 0}  # adding a holder twice changes nothing
    shared = await admin.SetAccountHolderShares(
        la.SetAccountHolderSharesRequest(account_id=account, shares_bps={a: 7_000, b: 3_000})
    )
    assert _holders(shared) == {a: 7_000, b: 3_000}
    # A new holder without shares: the shares no longer describe the holders, back to equal.
    third = await admin.AddAccountHolder(
        la.AddAccountHolderRequest(account_id=account, customer_id=cc)
    )
    assert _holders(third) == {a: 0, b: 0, cc: 0}
    bad_shares = [{a: 5_000, b: 5_000}, {a: 5_000, b: 2_500, cc: 2_501}, {a: 10_000, b: 0, cc: 0}]
    for shares in bad_shares:
        set_shares = la.SetAccountHolderSharesRequest(account_id=account, shares_bps=shares)
        assert await _code_of(admin.SetAccountHolderShares(set_shares)) == (
            grpc.StatusCode.INVALID_ARGUMENT
        ), shares
    removed = await admin.RemoveAccountHolder(
        la.RemoveAccountHolderRequest(account_id=account, customer_id=b,
                                      shares_bps={a: 6_000, cc: 4_000})
    )  # fmt: skip
    assert _holders(removed) == {a: 6_000, cc: 4_000}
    not_a_holder = await admin.RemoveAccountHolder(
        la.RemoveAccountHolderRequest(account_id=account, customer_id=b)
    )
    assert _holders(not_a_holder) == {a: 0, cc: 0}  # nothing removed; shares as given (equal)
    await admin.RemoveAccountHolder(
        la.RemoveAccountHolderRequest(account_id=account, customer_id=cc)
    )
    last = la.RemoveAccountHolderRequest(account_id=account, customer_id=a)
    assert await _code_of(admin.RemoveAccountHolder(last)) == grpc.StatusCode.FAILED_PRECONDITION
    listed = await admin.ListAccountHolders(la.ListAccountHoldersRequest(account_id=account))
    assert _holders(listed) == {a: 0}
    # Customers of another program, unknown customers and accounts.
    stranger = await _customer(ledger, await ledger.program())
    for request, code in (
        (la.AddAccountHolderRequest(account_id=account, customer_id=stranger),
         grpc.StatusCode.FAILED_PRECONDITION),
        (la.AddAccountHolderRequest(account_id=account, customer_id=str(uuid.uuid4())),
         grpc.StatusCode.NOT_FOUND),
        (la.AddAccountHolderRequest(account_id=str(uuid.uuid4()), customer_id=a),
         grpc.StatusCode.NOT_FOUND),
    ):  # fmt: skip
        assert await _code_of(admin.AddAccountHolder(request)) == code
    assert app.pool is not None
    audited = await app.pool.fetchval(
        "SELECT count(*) FROM audit_log WHERE action = 'account_holders' AND subject_id = $1",
        account,
    )
    assert audited == 6  # every change, and no call that changed nothing


async def test_the_fbo_file_gives_each_customer_their_share(
    ledger: Ledger, app: Application, tmp_path: Path
) -> None:
    program_id = await ledger.program()
    product_id = await ledger.product(program_id)
    a, b, cc = sorted([await _customer(ledger, program_id) for _ in range(3)])
    alone = await _account(ledger, product_id, a)
    pair = await _account(ledger, product_id, a, b)
    trio = await _account(ledger, product_id, a, b, cc)
    overdrawn = await _account(ledger, product_id, b, cc)
    unowned = await _account(ledger, product_id)
    multi = await _account(ledger, product_id, a, cc, assets=("GBP", "EUR"))
    await ledger.credit(alone, 10_001)
    await ledger.credit(pair, 10_001)  # 50.01 / 50.00: the odd penny to the lowest id
    await ledger.credit(trio, 100)
    await ledger.admin.SetAccountHolderShares(
        la.SetAccountHolderSharesRequest(
            account_id=trio, shares_bps={a: 2_000, b: 3_000, cc: 5_000}
        )
    )
    await ledger.admin.DebitAccount(
        la.DebitAccountRequest(
            account_id=overdrawn, amount=c.Money(amount_minor=7, asset="GBP"),
            purpose=la.ADJUSTMENT_PURPOSE_DEBIT_ADJUSTMENT, idempotency_key=str(uuid.uuid4()),
            allow_negative=True,
        )
    )  # fmt: skip
    await ledger.credit(unowned, 500)
    await ledger.credit(multi, 333, "EUR")
    assert app.pool is not None
    name, lines = await ReportWriter(ReportStore(app.pool)).fbo_balances(
        DirectorySink(tmp_path), program_id=program_id, at=app.clock.now()
    )
    rows = list(csv.DictReader((tmp_path / name).read_text().splitlines()))
    found = {(r["customer_id"], r["asset"]): r["balance"] for r in rows}
    # Expected from the pure rule, account by account.
    expected: dict[tuple[str, str], int] = {}
    accounts = [
        (alone, "GBP", 10_001, [(a, 1)]), (pair, "GBP", 10_001, [(a, 1), (b, 1)]),
        (trio, "GBP", 100, [(a, 2_000), (b, 3_000), (cc, 5_000)]),
        (overdrawn, "GBP", -7, [(b, 1), (cc, 1)]), (unowned, "GBP", 500, [(unowned, 1)]),
        (multi, "GBP", 0, [(a, 1), (cc, 1)]), (multi, "EUR", 333, [(a, 1), (cc, 1)]),
    ]  # fmt: skip
    for _, asset, amount, weights in accounts:
        for owner, part in split_by_shares(amount, weights).items():
            expected[(owner, asset)] = expected.get((owner, asset), 0) + part
    assert found == {
        key: f"{'+' if v >= 0 else '-'}{abs(v) // 100}.{abs(v) % 100:02d}"
        for key, v in expected.items()
    }
    assert found[(a, "GBP")] == "+150.22"  # 100.01 + 50.01 + 0.20
    assert found[(cc, "EUR")] == "+1.66"
    assert lines == len(expected)
    # The partner's file, when it agrees, reconciles; the total is the FBO total.
    fbo = read_fbo_file(tmp_path / name, {"GBP": 2, "EUR": 2})
    report = await Reconciler(ReconciliationStore(app.pool), app.cache, app.clock).run(
        program_id=program_id, fbo=fbo
    )
    assert report.ok, report.to_text()
    assert sum(v for (_, asset), v in fbo.items() if asset == "GBP") == 10_001 * 2 + 100 - 7 + 500


# -- a card spends from the linked account holding the billing currency ----------------------


async def _main_and_wallet(ledger: Ledger) -> tuple[IssuedCard, str]:
    """A GBP main account (100.00) with a card, and a EUR wallet (50.00) linked to it."""
    program_id = await ledger.program()
    product_id = await ledger.product(program_id)
    customer = await _customer(ledger, program_id)
    main = await _account(ledger, product_id, customer)
    wallet = await _account(ledger, product_id, customer, assets=("EUR",))
    await ledger.credit(main, 10_000)
    await ledger.credit(wallet, 5_000, "EUR")
    card = await ledger.card(account_id=main, pin="4321")
    await ledger.admin.LinkCardAccount(
        la.LinkCardAccountRequest(card_id=card.card_id, account_id=wallet)
    )
    return card, wallet


async def test_a_card_spends_from_the_linked_account_holding_the_currency(
    ledger: Ledger, app: Application
) -> None:
    """Seed 001 (issue 17 item 7): a GBP main account and a EUR wallet behind one card; a
    GBP purchase draws on the main account, a EUR one on the wallet, and the wallet's
    clearings, refunds and reversals stay on the wallet."""
    card, wallet = await _main_and_wallet(ledger)
    gbp = await ledger.authorize(card, 4_000)
    assert (gbp.response_code, gbp.balance.available_minor) == ("00", 6_000)
    eur = ledger.request(card, 2_000, "EUR")
    answer = await ledger.auth.Authorize(eur)
    assert (answer.response_code, answer.balance.asset) == ("00", "EUR")
    assert answer.balance.available_minor == 3_000
    assert await ledger.figures(card.account_id) == (10_000, 6_000, 4_000)
    assert await ledger.figures(wallet, "EUR") == (5_000, 3_000, 2_000)
    # The retransmission is answered as stored, nothing held twice.
    assert await ledger.auth.Authorize(eur) == answer
    assert await ledger.figures(wallet, "EUR") == (5_000, 3_000, 2_000)
    # The wallet's funds decide: 30.01 more is refused, 30.00 is not.
    assert (await ledger.authorize(card, 3_001, "EUR")).response_code == "51"
    partial_request = ledger.request(card, 3_500, "EUR", partial=True)
    partial = await ledger.auth.Authorize(partial_request)
    assert (partial.response_code, partial.approved_amount.amount_minor) == ("10", 3_000)
    # A currency neither account holds is declined (no FX in the switch).
    assert (await ledger.authorize(card, 100, "USD")).response_code == "51"
    # Settlement in EUR stays on the wallet.
    cleared = await ledger.clear(card, eur.network_reference, 2_000, "EUR")
    assert (cleared.response_code, cleared.matched) == ("00", True)
    assert (await ledger.refund(card, 500, "EUR")).response_code == "00"
    assert await ledger.figures(wallet, "EUR") == (3_500, 500, 3_000)
    holds = await ledger.admin.ListHolds(la.ListHoldsRequest(account_id=wallet, open_only=True))
    assert [h.original.amount_minor for h in holds.holds] == [3_000]
    reversed_ = await ledger.reverse(partial_request.message_id)
    assert (reversed_.response_code, reversed_.released.amount_minor) == ("00", 3_000)
    assert await ledger.figures(wallet, "EUR") == (3_500, 3_500, 0)
    assert await ledger.figures(card.account_id) == (10_000, 6_000, 4_000)
    # Every journal entry still balances, and the cache agrees with Postgres.
    assert app.pool is not None
    assert not await app.pool.fetchval(
        """SELECT count(*) FROM (SELECT entry_id FROM postings GROUP BY entry_id
           HAVING sum(amount_minor) <> 0) x"""
    )


async def test_the_card_has_one_set_of_pin_tries_whichever_account_it_spends(
    ledger: Ledger,
) -> None:
    """The card's status and PIN tries live with the card, not with the account a
    transaction spends from: wrong PINs in EUR and GBP count together, the block applies to
    both, and unblocking the card reopens both."""
    card, wallet = await _main_and_wallet(ledger)
    atm: TransactionKind = {
        "channel": c.CHANNEL_ATM,
        "transaction_type": c.TRANSACTION_TYPE_CASH_WITHDRAWAL,
    }
    assert (await ledger.authorize(card, 100, "EUR", pin="0000", **atm)).response_code == "55"
    assert (await ledger.authorize(card, 100, "GBP", pin="0000", **atm)).response_code == "55"
    assert (await ledger.authorize(card, 100, "EUR", pin="0000", **atm)).response_code == "55"
    # The third wrong PIN blocked the card (BLOCK_CARD, the default): in both currencies.
    assert (await ledger.authorize(card, 100, "GBP")).response_code == "62"
    assert (await ledger.authorize(card, 100, "EUR")).response_code == "62"
    await ledger.admin.ChangeCardStatus(
        la.ChangeCardStatusRequest(card_id=card.card_id, status=c.CARD_STATUS_ACTIVE)
    )
    assert (await ledger.authorize(card, 100, "EUR", pin="4321", **atm)).response_code == "00"
    assert (await ledger.authorize(card, 100, "GBP", pin="4321", **atm)).response_code == "00"
    assert await ledger.figures(wallet, "EUR") == (5_000, 4_900, 100)
