"""The pure rules of a decision: validation, the precedence of the core checks, fees and
limits (properties with Hypothesis, worked examples by hand)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authswitch.domain.authorization import (
    AuthorizationRequest,
    CardFacts,
    CardState,
    CardStatus,
    Charges,
    CounterCheck,
    FeeMode,
    PinMode,
    PreChecks,
    ProductRules,
    TransactionType,
    decide,
    prechecks,
    validate,
)
from authswitch.domain.cardsec import CardKeys
from authswitch.domain.codes import Check, Reason, outcome
from authswitch.domain.fees import (
    FeeContext,
    FeeLine,
    FeeRule,
    FeeSchedule,
    Region,
    Stage,
    percent_of,
    quote,
    schedule_in_force,
)
from authswitch.domain.ledger import Balance
from authswitch.domain.limits import Limit, Period, Subject, counter_for_limit, period_bounds
from authswitch.domain.money import Asset, AssetCategory

KEYS = CardKeys(b"p" * 32, b"i" * 32, b"c" * 32)
GBP = {"GBP": Asset("GBP", AssetCategory.FIAT, 2, "826")}
PAN = "4111111111111111"


def request(**fields: object) -> AuthorizationRequest:
    values: dict[str, object] = {
        "source": "visa", "message_id": "m1", "transaction_type": 1, "pan": PAN,
        "billing_amount_minor": 100, "billing_asset": "GBP",
    }  # fmt: skip
    values.update(fields)
    return AuthorizationRequest(**values)  # type: ignore[arg-type]


def test_validate_accepts_a_well_formed_request() -> None:
    assert validate(request(), GBP) is None


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"source": ""}, Reason.FORMAT_ERROR),
        ({"message_id": "x" * 129}, Reason.FORMAT_ERROR),
        ({"message_id": "tab\there"}, Reason.FORMAT_ERROR),
        ({"transaction_type": 0}, Reason.FORMAT_ERROR),
        ({"billing_asset": "EUR"}, Reason.FORMAT_ERROR),  # not a registered asset here
        ({"billing_amount_minor": -1}, Reason.INVALID_AMOUNT),
        ({"billing_amount_minor": 10**16}, Reason.INVALID_AMOUNT),
        ({"transaction_type": 3}, Reason.INVALID_AMOUNT),  # an enquiry with an amount
        ({"pan": "4111111111111112"}, Reason.INVALID_PAN),
        ({"incremental": True}, Reason.FORMAT_ERROR),  # without its original
    ],
)
def test_validate_refuses(fields: dict[str, object], reason: Reason) -> None:
    assert validate(request(**fields), GBP) is reason


def test_repr_never_shows_card_secrets() -> None:
    text = repr(request(pin="1234", cvv2="987", expiry_yymm="3012"))
    assert PAN not in text
    assert "987" not in text
    assert "1234" not in text


def test_a_card_spends_a_currency_from_the_first_linked_account_holding_it() -> None:
    card = CardFacts(
        "card", "main", "prog", "prod", "2612",
        (("EUR", "wallet"), ("USD", "dollars"), ("EUR", "later wallet")),
    )  # fmt: skip
    assert card.spending("GBP") is card  # its own account's currency (or none linked holds)
    assert card.spending("EUR").account_id == "wallet"
    assert card.spending("USD").account_id == "dollars"
    spent = card.spending("EUR")
    assert (spent.card_id, spent.expiry_yymm, spent.spend_accounts) == ("card", "2612", ())
    assert CardFacts("card", "main", "prog", "prod", "2612").spending("EUR").account_id == "main"


def test_prechecks_compute_stateless_failures() -> None:
    card = CardFacts("card", "acct", "prog", "prod", "2612")
    rules = ProductRules(blocked_mccs=frozenset({"7995"}))
    pan_hmac = KEYS.pan_hmac(PAN)
    good = prechecks(
        request(expiry_yymm="2612", cvv2=KEYS.cvv2(PAN, "2612")), pan_hmac, card, rules, KEYS,
        date(2026, 11, 23),
    )  # fmt: skip
    assert (good.expiry_reason, good.cvv2_reason, good.product_reason) == (None, None, None)
    bad = prechecks(
        request(expiry_yymm="2611", cvv2="000", mcc="7995", pin="1234"), pan_hmac, card, rules,
        KEYS, date(2027, 1, 1),
    )  # fmt: skip
    assert bad.expiry_reason is Reason.CARD_EXPIRED
    assert bad.cvv2_reason is (None if KEYS.cvv2(PAN, "2612") == "000" else Reason.CVV2_MISMATCH)
    assert bad.product_reason is Reason.TRANSACTION_NOT_PERMITTED
    assert bad.pin_mode is PinMode.VERIFY
    assert bad.pvv == KEYS.pin_verification_value(pan_hmac, "1234")


# -- precedence: the first failing check wins -------------------------------------------------

PVV = b"\x01" * 16
failures = st.fixed_dictionaries(
    {
        "status": st.sampled_from(list(CardStatus)),
        "expiry": st.sampled_from([None, Reason.CARD_EXPIRED]),
        "tries_exhausted": st.booleans(),
        "wrong_pin": st.booleans(),
        "cvv2": st.sampled_from([None, Reason.CVV2_MISMATCH]),
        "product": st.sampled_from([None, Reason.TRANSACTION_NOT_PERMITTED]),
        "over_limit": st.booleans(),
        "no_funds": st.booleans(),
    }
)


@given(failures)
def test_the_first_failing_check_decides(f: dict[str, object]) -> None:
    card = CardState(f["status"], 3 if f["tries_exhausted"] else 0, 3, PVV)  # type: ignore[arg-type]
    pre = PreChecks(
        f["expiry"], PinMode.VERIFY, b"\x02" * 16 if f["wrong_pin"] else PVV, b"",  # type: ignore[arg-type]
        f["cvv2"], f["product"],  # type: ignore[arg-type]
    )  # fmt: skip
    charges = Charges(limits=(CounterCheck("", "", 50 if f["over_limit"] else -1),))
    balance = Balance(0 if f["no_funds"] else 10_000, 0)
    result = decide(
        card, balance, pre, amount_minor=100, partial_allowed=False, zero_value=False,
        charges=charges,
    )  # fmt: skip
    failing = [
        (Check.CARD_STATUS, f["status"] is not CardStatus.ACTIVE),
        (Check.EXPIRY, f["expiry"] is not None),
        (Check.PIN_TRIES, f["tries_exhausted"]),
        (Check.PIN, f["wrong_pin"]),
        (Check.CVV2, f["cvv2"] is not None),
        (Check.PRODUCT, f["product"] is not None),
        (Check.LIMITS, f["over_limit"]),
        (Check.FUNDS, f["no_funds"]),
    ]
    first = next((check for check, fails in failing if fails), None)
    if f["status"] is CardStatus.EXPIRED:
        first = Check.EXPIRY  # a card set to expired is declined 54, as an expired card is
    assert outcome(result.reason).check is first


# -- fees ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "bps", "fee"),
    [(1_234, 150, 19), (1_233, 150, 18), (100, 50, 1), (99, 50, 0), (0, 10_000, 0), (7, 10_000, 7)],
)
def test_percent_rounds_half_up(amount: int, bps: int, fee: int) -> None:
    assert percent_of(amount, bps) == fee


@given(st.integers(0, 10**12), st.integers(0, 10_000))
def test_percent_is_within_half_a_minor_unit(amount: int, bps: int) -> None:
    from fractions import Fraction

    exact = Fraction(amount * bps, 10_000)
    assert abs(percent_of(amount, bps) - exact) <= Fraction(1, 2)


def test_caps_and_combined_rules() -> None:
    capped = FeeRule(
        "r", Stage.AUTHORIZATION, "GBP", flat_minor=25, bps=100, min_minor=50, max_minor=200
    )
    assert [capped.charge(a) for a in (0, 2_500, 10_000, 100_000)] == [50, 50, 125, 200]


def test_schedule_in_force_is_the_latest_not_after_the_time() -> None:
    t = datetime(2026, 11, 1, tzinfo=UTC)
    v1, v2, v3 = (FeeSchedule(v, t + timedelta(days=10 * v), ()) for v in (1, 2, 3))
    assert schedule_in_force([v1, v2, v3], t) is None
    assert schedule_in_force([v1, v2, v3], t + timedelta(days=15)) is v1
    assert schedule_in_force([v3, v1, v2], t + timedelta(days=25)) is v2
    assert schedule_in_force([v1, v2, v3], t + timedelta(days=99)) is v3


def test_quote_sums_matching_rules_and_splits_conditional_ones() -> None:
    rules = (
        FeeRule("flat", Stage.AUTHORIZATION, "GBP", flat_minor=100),
        FeeRule("atm", Stage.AUTHORIZATION, "GBP", flat_minor=200, free_uses=3, free_period="MONTH",
                transaction_types=frozenset({2})),
        FeeRule("decline", Stage.AUTHORIZATION, "GBP", flat_minor=50, on_decline=True),
        FeeRule("fx", Stage.AUTHORIZATION, "GBP", bps=300, region=Region.INTERNATIONAL),
        FeeRule("eur", Stage.AUTHORIZATION, "EUR", flat_minor=999),
        FeeRule("clearing", Stage.CLEARING, "GBP", flat_minor=999),
    )  # fmt: skip
    schedule = FeeSchedule(1, datetime(2026, 1, 1, tzinfo=UTC), rules)
    ctx = FeeContext(Stage.AUTHORIZATION, 2, 3, "6011", True, "GBP", 10_000)
    q = quote(schedule, ctx)
    assert (q.fixed_minor, q.on_decline_minor) == (400, 50)
    assert [(f.rule_id, f.fee_minor) for f in q.after_free_uses] == [("atm", 200)]

    # The lines name each rule's part (what an off-ledger FEE notification lists).
    def parts(lines: list[FeeLine]) -> list[tuple[str, int]]:
        return [(line.rule_id, line.fee_minor) for line in lines]

    assert parts(q.charged_lines(declined=False, free_charged=frozenset())) == [
        ("flat", 100), ("fx", 300),
    ]  # fmt: skip
    assert parts(q.charged_lines(declined=False, free_charged=frozenset({"atm"}))) == [
        ("flat", 100), ("atm", 200), ("fx", 300),
    ]  # fmt: skip
    assert parts(q.charged_lines(declined=True, free_charged=frozenset({"atm"}))) == [
        ("decline", 50),
    ]  # fmt: skip


@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 500), st.booleans(),
                          st.booleans()), max_size=6), st.integers(0, 10**9))  # fmt: skip
def test_the_lines_of_a_quote_add_up_to_its_fees(
    specs: list[tuple[int, int, bool, bool]], amount: int
) -> None:
    rules = tuple(
        FeeRule(f"r{i}", Stage.AUTHORIZATION, "GBP", flat_minor=flat, bps=bps,
                on_decline=decline, free_uses=2 if free and not decline else 0,
                free_period="DAY" if free and not decline else "")
        for i, (flat, bps, decline, free) in enumerate(specs)
    )  # fmt: skip
    q = quote(
        FeeSchedule(1, datetime(2026, 1, 1, tzinfo=UTC), rules),
        FeeContext(Stage.AUTHORIZATION, 1, 1, "5411", False, "GBP", amount),
    )
    every_free = frozenset(f.rule_id for f in q.after_free_uses)
    approved = q.charged_lines(declined=False, free_charged=every_free)
    assert sum(line.fee_minor for line in approved) == q.total_if(
        {f.rule_id: f.free_uses for f in q.after_free_uses}
    )
    declined = q.charged_lines(declined=True, free_charged=every_free)
    assert sum(line.fee_minor for line in declined) == q.on_decline_minor


@given(
    fee=st.integers(0, 5_000),
    actual=st.integers(0, 10_000),
    held=st.integers(0, 10_000),
)
def test_a_zero_value_fee_never_makes_available_negative(fee: int, actual: int, held: int) -> None:
    held = min(held, actual)
    card = CardState(CardStatus.ACTIVE, 0, 3, PVV)
    pre = PreChecks(None, PinMode.NONE, b"", b"", None, None)
    result = decide(
        card, Balance(actual, held), pre, amount_minor=0, partial_allowed=False,
        zero_value=True, charges=Charges(fixed_fee_minor=fee),
    )  # fmt: skip
    assert result.reason is Reason.APPROVED
    assert result.balance is not None
    assert result.balance.available_minor >= 0
    if fee and fee > actual - held:
        assert (result.fee_mode, result.fee_minor) == (FeeMode.NOT_APPLIED, 0)
    elif fee:
        assert result.fee_mode is FeeMode.POSTED
        assert result.balance.actual_minor == actual - fee


# -- limits ----------------------------------------------------------------------------------


def test_periods_follow_the_program_time_zone() -> None:
    # 23:30 UTC on 31 March 2026 is already 1 April in London (BST).
    moment = datetime(2026, 3, 31, 23, 30, tzinfo=UTC)
    assert period_bounds(Period.DAY, moment, "Europe/London")[:2] == ("20260401", "20260331")
    assert period_bounds(Period.DAY, moment, "UTC")[:2] == ("20260331", "20260330")
    label, previous, ends = period_bounds(Period.MONTH, moment, "Europe/London")
    assert (label, previous) == ("202604", "202603")
    assert ends == datetime(2026, 4, 30, 23, 0, tzinfo=UTC)  # midnight 1 May, London


def test_counter_keys_name_limit_subject_and_period() -> None:
    moment = datetime(2026, 11, 23, 12, tzinfo=UTC)
    card_limit = Limit("L1", Subject.CARD, Period.DAY, "GBP", count_max=3)
    account_limit = Limit("L2", Subject.ACCOUNT, Period.MONTH, "GBP", amount_max_minor=500)
    per_txn = Limit("L3", Subject.CARD, Period.TRANSACTION, "GBP", amount_max_minor=100)
    assert counter_for_limit(card_limit, "c", "a", moment, "UTC").key == "L:L1:c:20261123"
    assert counter_for_limit(account_limit, "c", "a", moment, "UTC").key == "L:L2:a:202611"
    assert counter_for_limit(per_txn, "c", "a", moment, "UTC").key == ""
    assert card_limit.applies(TransactionType.PURCHASE, "GBP")
    assert not card_limit.applies(TransactionType.PURCHASE, "EUR")
