"""Authorisations end to end: a real server on a real gRPC socket, real Postgres and Redis."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from authswitch.app import Application
from authswitch.v1 import authorization_pb2 as pb
from authswitch.v1 import common_pb2 as c
from authswitch.v1 import ledger_admin_pb2 as la
from tests.support.ledger import Ledger, TransactionKind

pytestmark = pytest.mark.timeout(60)


async def test_seed_001_spend_40_of_100(ledger: Ledger) -> None:
    card = await ledger.card(10_000)
    response = await ledger.authorize(card, 4_000)
    assert response.response_code == "00"
    assert response.decision == pb.DECISION_APPROVED
    assert response.reason == pb.REASON_APPROVED
    assert len(response.authorization_code) == 6
    assert response.approved_amount.amount_minor == 4_000
    assert response.balance.available_minor == 6_000
    assert response.balance.actual_minor == 10_000
    balance = await ledger.balance(card.account_id)
    assert (balance.actual_minor, balance.available_minor, balance.authorized_minor) == (
        10_000,
        6_000,
        4_000,
    )


async def test_then_60_is_the_most_that_can_be_spent(ledger: Ledger) -> None:
    card = await ledger.card(10_000)
    assert (await ledger.authorize(card, 4_000)).response_code == "00"
    assert (await ledger.authorize(card, 6_001)).response_code == "51"
    assert (await ledger.authorize(card, 6_000)).response_code == "00"
    assert (await ledger.balance(card.account_id)).available_minor == 0


async def test_approval_is_durable_before_the_answer(ledger: Ledger, app: Application) -> None:
    card = await ledger.card(10_000)
    message_id = str(uuid.uuid4())
    response = await ledger.authorize(card, 2_500, message_id=message_id)
    assert response.response_code == "00"
    assert app.pool is not None
    row = await app.pool.fetchrow(
        "SELECT d.response_code, h.amount_minor, h.status FROM decisions d "
        "JOIN holds h USING (source, message_id) WHERE d.message_id = $1",
        message_id,
    )
    assert row is not None
    assert tuple(row) == ("00", 2_500, "OPEN")


@pytest.mark.parametrize(
    ("status", "code", "reason"),
    [
        (c.CARD_STATUS_LOST, "41", pb.REASON_CARD_LOST),
        (c.CARD_STATUS_STOLEN, "43", pb.REASON_CARD_STOLEN),
        (c.CARD_STATUS_BLOCKED, "62", pb.REASON_CARD_BLOCKED),
        (c.CARD_STATUS_SUSPENDED, "62", pb.REASON_CARD_SUSPENDED),
        (c.CARD_STATUS_INACTIVE, "62", pb.REASON_CARD_INACTIVE),
        (c.CARD_STATUS_CLOSED, "62", pb.REASON_CARD_CLOSED),
        (c.CARD_STATUS_EXPIRED, "54", pb.REASON_CARD_EXPIRED),
    ],
)
async def test_card_status_declines(
    ledger: Ledger, status: c.CardStatus.ValueType, code: str, reason: int
) -> None:
    card = await ledger.card(10_000, status=status)
    response = await ledger.authorize(card, 100)
    assert (response.response_code, response.reason) == (code, reason)
    assert response.decision == pb.DECISION_DECLINED
    assert (await ledger.balance(card.account_id)).available_minor == 10_000


async def test_unknown_and_invalid_pans_are_14(ledger: Ledger) -> None:
    card = await ledger.card(10_000)
    unknown = card.pan[:-2] + ("00" if card.pan[-2:] != "00" else "11")
    from authswitch.demo import demo_pan

    fresh = demo_pan("55555500")
    response = await ledger.authorize(card, 100, pan=fresh)
    assert (response.response_code, response.reason) == ("14", pb.REASON_UNKNOWN_CARD)
    response = await ledger.authorize(card, 100, pan=unknown if unknown != card.pan else "1")
    assert response.response_code == "14"
    response = await ledger.authorize(card, 100, pan="4111111111111112")  # bad check digit
    assert (response.response_code, response.reason) == ("14", pb.REASON_INVALID_PAN)


async def test_expiry_declines(ledger: Ledger) -> None:
    card = await ledger.card(10_000)
    response = await ledger.authorize(card, 100, expiry="2901")
    assert (response.response_code, response.reason) == ("54", pb.REASON_EXPIRY_MISMATCH)
    old = await ledger.card(10_000, expiry="2001")
    response = await ledger.authorize(old, 100, expiry="2001")
    assert (response.response_code, response.reason) == ("54", pb.REASON_CARD_EXPIRED)


async def test_block_pin_refuses_pin_requests_after_three_wrong_pins(
    ledger: Ledger, app: Application
) -> None:
    block_pin = {"pin_tries_exceeded_action": la.PIN_TRIES_EXCEEDED_ACTION_BLOCK_PIN}
    card = await ledger.card(10_000, pin="4321", product_kwargs=block_pin)
    atm: TransactionKind = {
        "transaction_type": c.TRANSACTION_TYPE_CASH_WITHDRAWAL,
        "channel": c.CHANNEL_ATM,
    }
    assert (await ledger.authorize(card, 100, pin="4321", **atm)).response_code == "00"
    for _ in range(3):
        response = await ledger.authorize(card, 100, pin="0000", **atm)
        assert (response.response_code, response.reason) == ("55", pb.REASON_INCORRECT_PIN)
    # The tries are exhausted: even the right PIN is now refused (75), and nothing is held.
    response = await ledger.authorize(card, 100, pin="4321", **atm)
    assert (response.response_code, response.reason) == ("75", pb.REASON_PIN_TRIES_EXCEEDED)
    assert app.pool is not None
    tries = await app.pool.fetchval("SELECT pin_tries FROM cards WHERE id = $1", card.card_id)
    assert tries == 3
    # A card-not-present purchase carries no PIN and is not affected by the PIN block.
    assert (await ledger.authorize(card, 100)).response_code == "00"
    # PIN unblock with the right PIN resets the tries.
    unblock = await ledger.authorize(
        card, 0, pin="4321", transaction_type=c.TRANSACTION_TYPE_PIN_UNBLOCK, channel=c.CHANNEL_ATM
    )
    assert unblock.response_code == "00"
    assert (await ledger.authorize(card, 100, pin="4321", **atm)).response_code == "00"


async def _notifications(app: Application, card_id: str) -> list[tuple[str, dict[str, Any]]]:
    assert app.pool is not None
    rows = await app.pool.fetch(
        "SELECT kind, payload FROM notifications WHERE card_id = $1 ORDER BY seq", card_id
    )
    return [
        (r["kind"], r["payload"] if isinstance(r["payload"], dict) else json.loads(r["payload"]))
        for r in rows
    ]


async def test_pin_tries_exceeded_blocks_the_card(ledger: Ledger, app: Application) -> None:
    """Seed 000 (issue 17 item 4): the default product blocks the card when the last PIN try
    is used up; every later request gets the card-status code, with or without a PIN, and
    the admin notification says why. Unblocking (ChangeCardStatus ACTIVE) resets the tries."""
    card = await ledger.card(10_000, pin="4321")
    atm: TransactionKind = {
        "transaction_type": c.TRANSACTION_TYPE_CASH_WITHDRAWAL,
        "channel": c.CHANNEL_ATM,
    }
    for _ in range(3):
        response = await ledger.authorize(card, 100, pin="0000", **atm)
        assert (response.response_code, response.reason) == ("55", pb.REASON_INCORRECT_PIN)
    assert app.pool is not None
    row = await app.pool.fetchrow("SELECT status, pin_tries FROM cards WHERE id = $1", card.card_id)
    assert row is not None
    assert tuple(row) == ("BLOCKED", 3)
    # Every later request, the right PIN, no PIN, or a PIN unblock: the card is blocked (62).
    for response in (
        await ledger.authorize(card, 100, pin="4321", **atm),
        await ledger.authorize(card, 100),
        await ledger.authorize(
            card, 0, pin="4321", transaction_type=c.TRANSACTION_TYPE_PIN_UNBLOCK,
            channel=c.CHANNEL_ATM,
        ),
    ):  # fmt: skip
        assert (response.response_code, response.reason) == ("62", pb.REASON_CARD_BLOCKED)
    got = await ledger.admin.GetCard(la.GetCardRequest(card_id=card.card_id))
    assert got.status == c.CARD_STATUS_BLOCKED
    notes = await _notifications(app, card.card_id)
    assert [kind for kind, _ in notes] == ["PIN_TRIES_EXCEEDED", "CARD_STATUS_CHANGED"]
    assert notes[0][1]["action"] == "BLOCK_CARD"
    assert notes[0][1]["card_status"] == "BLOCKED"
    assert notes[1][1] == {"from": "ACTIVE", "to": "BLOCKED", "reason": "PIN_TRIES_EXCEEDED"}
    # Nothing was held for the refused requests.
    assert (await ledger.balance(card.account_id)).available_minor == 10_000

    # The operator unblocks the card: the tries start again from zero.
    await ledger.admin.ChangeCardStatus(
        la.ChangeCardStatusRequest(
            card_id=card.card_id, status=c.CARD_STATUS_ACTIVE, reason="customer verified"
        )
    )
    assert await app.pool.fetchval("SELECT pin_tries FROM cards WHERE id = $1", card.card_id) == 0
    assert (await ledger.authorize(card, 100, pin="4321", **atm)).response_code == "00"
    # Two wrong PINs do not block it again (the tries were reset, not left at three).
    for _ in range(2):
        assert (await ledger.authorize(card, 100, pin="0000", **atm)).response_code == "55"
    assert (await ledger.authorize(card, 100)).response_code == "00"


async def test_an_operator_status_set_meanwhile_is_kept(ledger: Ledger, app: Application) -> None:
    """A card an operator reported lost is not turned into a blocked one by a PIN block."""
    card = await ledger.card(10_000, pin="4321")
    for _ in range(2):
        assert (await ledger.authorize(card, 100, pin="0000")).response_code == "55"
    await ledger.admin.ChangeCardStatus(
        la.ChangeCardStatusRequest(card_id=card.card_id, status=c.CARD_STATUS_LOST)
    )
    # The lost card is declined 41 before its PIN is even looked at: no third try counted.
    assert (await ledger.authorize(card, 100, pin="0000")).response_code == "41"
    assert app.pool is not None
    row = await app.pool.fetchrow("SELECT status, pin_tries FROM cards WHERE id = $1", card.card_id)
    assert row is not None
    assert tuple(row) == ("LOST", 2)


async def test_a_correct_pin_resets_the_tries(ledger: Ledger, app: Application) -> None:
    card = await ledger.card(10_000, pin="4321")
    assert (await ledger.authorize(card, 100, pin="1111")).response_code == "55"
    assert (await ledger.authorize(card, 100, pin="4321")).response_code == "00"
    assert app.pool is not None
    assert await app.pool.fetchval("SELECT pin_tries FROM cards WHERE id = $1", card.card_id) == 0


async def test_pin_change_then_the_new_pin_works(ledger: Ledger) -> None:
    card = await ledger.card(10_000, pin="4321")
    change = await ledger.authorize(
        card, 0, pin="4321", new_pin="9876", transaction_type=c.TRANSACTION_TYPE_PIN_CHANGE,
        channel=c.CHANNEL_ATM,
    )  # fmt: skip
    assert change.response_code == "00"
    assert (await ledger.authorize(card, 100, pin="4321")).response_code == "55"
    assert (await ledger.authorize(card, 100, pin="9876")).response_code == "00"


async def test_cvv2_mismatch_is_n7(ledger: Ledger) -> None:
    card = await ledger.card(10_000)
    wrong = f"{(int(card.cvv2) + 1) % 1000:03d}"
    response = await ledger.authorize(card, 100, cvv2=wrong)
    assert (response.response_code, response.reason) == ("N7", pb.REASON_CVV2_MISMATCH)


async def test_product_restrictions_are_57(ledger: Ledger) -> None:
    card = await ledger.card(
        10_000,
        product_kwargs={
            "blocked_mccs": ["7995"],
            "allowed_transaction_types": [c.TRANSACTION_TYPE_PURCHASE],
            "allowed_channels": [c.CHANNEL_ECOMMERCE, c.CHANNEL_POS],
        },
    )
    gambling = await ledger.authorize(card, 100, mcc="7995")
    assert (gambling.response_code, gambling.reason) == ("57", pb.REASON_TRANSACTION_NOT_PERMITTED)
    cash = await ledger.authorize(card, 100, transaction_type=c.TRANSACTION_TYPE_CASH_WITHDRAWAL)
    assert cash.response_code == "57"
    atm = await ledger.authorize(card, 100, channel=c.CHANNEL_ATM)
    assert atm.response_code == "57"
    assert (await ledger.authorize(card, 100)).response_code == "00"


async def test_precedence_first_failing_check_wins(ledger: Ledger) -> None:
    """A lost card with a wrong CVV2, an expiry mismatch and no funds is declined 41."""
    card = await ledger.card(
        0, status=c.CARD_STATUS_LOST, product_kwargs={"blocked_mccs": ["5411"]}
    )
    response = await ledger.authorize(card, 100, cvv2="000", expiry="2901", pin="0000")
    assert response.response_code == "41"
    ok = await ledger.card(0, product_kwargs={"blocked_mccs": ["5411"]})
    wrong_cvv = f"{(int(ok.cvv2) + 1) % 1000:03d}"
    assert (await ledger.authorize(ok, 100, cvv2=wrong_cvv, expiry="2901")).response_code == "54"
    assert (await ledger.authorize(ok, 100, cvv2=wrong_cvv)).response_code == "N7"
    assert (await ledger.authorize(ok, 100)).response_code == "57"
    assert (await ledger.authorize(ok, 100, mcc="5999")).response_code == "51"


async def test_no_balance_in_the_billing_asset_is_51(ledger: Ledger) -> None:
    card = await ledger.card(10_000, "GBP")
    response = await ledger.authorize(card, 100, "EUR")
    assert (response.response_code, response.reason) == ("51", pb.REASON_NO_BALANCE_IN_ASSET)


async def test_partial_approval(ledger: Ledger) -> None:
    card = await ledger.card(3_000)
    response = await ledger.authorize(card, 5_000, partial=True)
    assert (response.response_code, response.decision) == ("10", pb.DECISION_PARTIALLY_APPROVED)
    assert response.approved_amount.amount_minor == 3_000
    assert (await ledger.balance(card.account_id)).available_minor == 0
    assert (await ledger.authorize(card, 100, partial=True)).response_code == "51"


async def test_balance_enquiry_and_account_verification_hold_nothing(ledger: Ledger) -> None:
    card = await ledger.card(12_345)
    enquiry = await ledger.authorize(card, 0, transaction_type=c.TRANSACTION_TYPE_BALANCE_ENQUIRY)
    assert enquiry.response_code == "00"
    assert (enquiry.balance.available_minor, enquiry.balance.actual_minor) == (12_345, 12_345)
    verification = await ledger.authorize(
        card, 0, transaction_type=c.TRANSACTION_TYPE_ACCOUNT_VERIFICATION
    )
    assert verification.response_code == "00"
    assert (await ledger.balance(card.account_id)).authorized_minor == 0


async def test_duplicate_gets_the_identical_response(ledger: Ledger, app: Application) -> None:
    card = await ledger.card(10_000)
    request = ledger.request(card, 4_000)
    first = await ledger.auth.Authorize(request)
    second = await ledger.auth.Authorize(request)
    assert first.response_code == "00"
    assert second == first
    assert (await ledger.balance(card.account_id)).available_minor == 6_000
    assert app.pool is not None
    holds = await app.pool.fetchval(
        "SELECT count(*) FROM holds WHERE message_id = $1", request.message_id
    )
    assert holds == 1


async def test_a_decline_stays_a_decline(ledger: Ledger) -> None:
    card = await ledger.card(1_000)
    request = ledger.request(card, 4_000)
    assert (await ledger.auth.Authorize(request)).response_code == "51"
    await ledger.credit(card.account_id, 10_000)
    assert (await ledger.auth.Authorize(request)).response_code == "51"


async def test_same_id_different_payload_is_94(ledger: Ledger) -> None:
    card = await ledger.card(10_000)
    request = ledger.request(card, 4_000)
    assert (await ledger.auth.Authorize(request)).response_code == "00"
    changed = pb.AuthorizeRequest()
    changed.CopyFrom(request)
    changed.billing_amount.amount_minor = 4_001
    response = await ledger.auth.Authorize(changed)
    assert (response.response_code, response.reason) == ("94", pb.REASON_DUPLICATE_MISMATCH)
    assert (await ledger.balance(card.account_id)).available_minor == 6_000


async def test_concurrent_duplicates_hold_once(ledger: Ledger) -> None:
    card = await ledger.card(10_000)
    request = ledger.request(card, 1_000)
    responses = await asyncio.gather(*(ledger.auth.Authorize(request) for _ in range(20)))
    assert {r.response_code for r in responses} == {"00"}
    assert len({r.authorization_code for r in responses}) == 1
    assert (await ledger.balance(card.account_id)).available_minor == 9_000


async def test_200_concurrent_on_100_00_exactly_100_approved(
    ledger: Ledger, app: Application
) -> None:
    card = await ledger.card(10_000)
    responses = await asyncio.gather(*(ledger.authorize(card, 100) for _ in range(200)))
    codes = [r.response_code for r in responses]
    assert codes.count("00") == 100
    assert codes.count("51") == 100
    balance = await ledger.balance(card.account_id)
    assert (balance.available_minor, balance.authorized_minor) == (0, 10_000)
    assert app.pool is not None
    holds = await app.pool.fetchval(
        "SELECT count(*) FROM holds WHERE account_id = $1 AND status = 'OPEN'", card.account_id
    )
    assert holds == 100


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda r: r.ClearField("message_id"), "30"),
        (lambda r: r.ClearField("source"), "30"),
        (lambda r: setattr(r, "message_id", "has space"), "30"),
        (lambda r: setattr(r.billing_amount, "asset", "XXX"), "30"),
        (lambda r: setattr(r.billing_amount, "asset", ""), "30"),
        (lambda r: setattr(r.billing_amount, "amount_minor", -1), "13"),
        (lambda r: setattr(r.billing_amount, "amount_minor", 0), "13"),
        (lambda r: setattr(r.billing_amount, "amount_minor", 2**62), "13"),
        (lambda r: setattr(r, "transaction_type", 0), "30"),
        (lambda r: setattr(r, "transaction_type", 99), "30"),
        (lambda r: setattr(r.merchant, "mcc", "54"), "30"),
        (lambda r: setattr(r.auth, "expiry", "3013"), "30"),
        (lambda r: setattr(r.auth, "pin", "12"), "30"),
        (lambda r: setattr(r.auth, "cvv2", "12a"), "30"),
    ],
)
async def test_malformed_requests_write_nothing(
    ledger: Ledger, app: Application, mutate: object, code: str
) -> None:
    card = await ledger.card(10_000)
    request = ledger.request(card, 100)
    mutate(request)  # type: ignore[operator]
    response = await ledger.auth.Authorize(request)
    assert response.response_code == code
    assert response.detail
    assert app.pool is not None
    written = await app.pool.fetchval(
        "SELECT count(*) FROM decisions WHERE account_id = $1 AND kind = 'AUTHORIZE'",
        card.account_id,
    )
    assert written == 0
    assert (await ledger.balance(card.account_id)).available_minor == 10_000


async def test_zero_amount_purchase_is_13(ledger: Ledger) -> None:
    card = await ledger.card(10_000)
    assert (await ledger.authorize(card, 0)).response_code == "13"


async def test_declines_are_recorded(ledger: Ledger, app: Application) -> None:
    card = await ledger.card(100)
    request = ledger.request(card, 4_000)
    assert (await ledger.auth.Authorize(request)).response_code == "51"
    assert app.pool is not None
    stored = await app.pool.fetchval(
        "SELECT response_code FROM decisions WHERE message_id = $1", request.message_id
    )
    assert stored == "51"


async def test_card_status_change_takes_effect_at_once(ledger: Ledger) -> None:
    from authswitch.v1 import ledger_admin_pb2 as la

    card = await ledger.card(10_000)
    assert (await ledger.authorize(card, 100)).response_code == "00"
    await ledger.admin.ChangeCardStatus(
        la.ChangeCardStatusRequest(card_id=card.card_id, status=c.CARD_STATUS_LOST, reason="call")
    )
    assert (await ledger.authorize(card, 100)).response_code == "41"


async def test_cache_rebuilt_after_flush(ledger: Ledger, app: Application) -> None:
    card = await ledger.card(10_000)
    assert (await ledger.authorize(card, 1_000)).response_code == "00"
    assert app.redis is not None
    await app.redis.delete(app.cache.keys.state(card.account_id))
    response = await ledger.authorize(card, 9_000)
    assert response.response_code == "00"
    assert (await ledger.authorize(card, 1)).response_code == "51"
    cached = await app.cache.read_balances(card.account_id)
    assert cached is not None
    assert cached["GBP"].available_minor == 0


async def test_script_flush_is_survived(ledger: Ledger, app: Application) -> None:
    card = await ledger.card(10_000)
    assert app.redis is not None
    await app.redis.script_flush()
    assert (await ledger.authorize(card, 1_000)).response_code == "00"
