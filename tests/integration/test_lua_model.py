"""authorize.lua and the pure rule it mirrors (domain.authorization.decide) agree on every
input: Hypothesis generates card states, balances and request facts, and each example runs
through both, the script on the real Redis."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import TypeVar

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from authswitch.adapters.redis.cache import AccountSnapshot, AuthorizeOutcome, LedgerCache
from authswitch.adapters.redis.pipeline import PipelinedRedis, address_from_url
from authswitch.domain.authorization import (
    CardState,
    CardStatus,
    Charges,
    CounterCheck,
    FreeUseCheck,
    PinMode,
    PreChecks,
    decide,
)
from authswitch.domain.codes import Reason
from authswitch.domain.controls import VelocityCheck
from authswitch.domain.ledger import Balance
from tests.support.stores import Stores

pytestmark = pytest.mark.timeout(300)

PVV_A, PVV_B = b"\x01" * 16, b"\x02" * 16

cards = st.builds(
    CardState,
    # Mostly active cards, so that most examples reach the later checks.
    status=st.one_of(st.just(CardStatus.ACTIVE), st.sampled_from(list(CardStatus))),
    pin_tries=st.integers(0, 4),
    pin_tries_max=st.integers(1, 3),
    pvv=st.sampled_from([b"", PVV_A]),
)
prechecks = st.builds(
    PreChecks,
    expiry_reason=st.sampled_from([None, None, None, Reason.CARD_EXPIRED, Reason.EXPIRY_MISMATCH]),
    pin_mode=st.sampled_from(list(PinMode)),
    pvv=st.sampled_from([PVV_A, PVV_B]),
    new_pvv=st.just(PVV_B),
    cvv2_reason=st.sampled_from([None, None, None, Reason.CVV2_MISMATCH]),
    product_reason=st.sampled_from([None, None, None, Reason.TRANSACTION_NOT_PERMITTED]),
)
counters = st.builds(
    CounterCheck,
    key=st.sampled_from(["", "L:a", "L:b"]),
    previous=st.sampled_from(["", "L:old"]),
    amount_max_minor=st.sampled_from([-1, 0, 500, 5_000, 200_000]),
    count_max=st.sampled_from([-1, 0, 1, 3]),
)
charges = st.builds(
    Charges,
    fixed_fee_minor=st.sampled_from([0, 0, 50, 250]),
    decline_fee_minor=st.sampled_from([0, 0, 100]),
    limits=st.lists(counters, max_size=2, unique_by=lambda c: c.key).map(tuple),
    free_uses=st.lists(
        st.builds(
            FreeUseCheck,
            counter=st.builds(
                CounterCheck, key=st.sampled_from(["F:x", "F:y"]), previous=st.just("")
            ),
            free_uses=st.integers(0, 3),
            fee_minor=st.sampled_from([100, 200]),
        ),
        max_size=2,
        unique_by=lambda f: f.counter.key,
    ).map(tuple),
)
# Velocity rules: a window of buckets 100-103 (99 has just left it); two rules at most,
# each with counters of its own, some buckets already holding approvals or declines.
FIRST_BUCKET, LAST_BUCKET = 100, 103
velocity_rules = st.lists(
    st.builds(
        VelocityCheck,
        approvals_prefix=st.sampled_from(["VA:r1:", "VA:r2:"]),
        declines_prefix=st.just(""),  # set from the approvals prefix below
        first_bucket=st.just(FIRST_BUCKET),
        last_bucket=st.just(LAST_BUCKET),
        approvals_max=st.sampled_from([-1, 0, 1, 3]),
        amount_max_minor=st.sampled_from([-1, 0, 500, 5_000, 200_000]),
        declines_max=st.sampled_from([-1, 0, 1, 2]),
        expires_at=st.just(datetime(2030, 1, 1, tzinfo=UTC)),
    ),
    max_size=2,
    unique_by=lambda v: v.approvals_prefix,
).map(lambda rules: tuple(replace(v, declines_prefix="VD" + v.approvals_prefix[2:]) for v in rules))
_BUCKET_KEYS = [
    f"{kind}:{rule}:{bucket}"
    for kind in ("VA", "VD")
    for rule in ("r1", "r2")
    for bucket in (FIRST_BUCKET - 1, FIRST_BUCKET, FIRST_BUCKET + 2, LAST_BUCKET)
]
usages = st.dictionaries(
    st.sampled_from(["L:a", "L:b", "F:x", "F:y", "L:old", *_BUCKET_KEYS]),
    st.tuples(st.integers(0, 10_000), st.integers(0, 4)),
    max_size=8,
)
balances = st.one_of(
    st.none(),
    st.builds(Balance, st.integers(-10_000, 1_000_000), st.integers(0, 500_000)),
)


def _as_bytes(value: bytes | str) -> bytes:
    """The client does not decode responses: every field and value comes back as bytes."""
    assert isinstance(value, bytes), value
    return value


async def _run(
    stores: Stores, card: CardState, balance: Balance | None, pre: PreChecks, amount: int,
    charges: Charges, usage: dict[str, tuple[int, int]], partial: bool, zero_value: bool,
    checks_only: bool, velocity: tuple[VelocityCheck, ...] = (),
) -> tuple[AuthorizeOutcome, Balance | None, CardState, dict[str, tuple[int, int]]]:  # fmt: skip
    client = aioredis.Redis.from_url(stores.redis_url)
    ledger = PipelinedRedis(address_from_url(stores.redis_url), timeout_s=5.0)
    try:
        cache = LedgerCache(ledger, stores.redis_prefix + "-lua", marker_ttl_s=60)
        cache.generation = 1
        account = secrets.token_hex(8)
        await cache.load(
            AccountSnapshot(
                account, {"GBP": balance} if balance else {}, {"card": card}, dict(usage)
            )
        )
        outcome = await cache.authorize(
            account_id=account, card_id="card", asset="GBP", amount_minor=amount,
            partial_allowed=partial, zero_value=zero_value, pre=pre, charges=charges,
            checks_only=checks_only, velocity=velocity,
            source="s", message_id=secrets.token_hex(8), fingerprint=b"f",
        )  # fmt: skip
        assert isinstance(outcome, AuthorizeOutcome)
        state = {
            _as_bytes(k): _as_bytes(v)
            for k, v in (await client.hgetall(cache.keys.state(account))).items()
        }
        after_balance = None
        if b"a:GBP" in state:
            after_balance = Balance(int(state[b"a:GBP"]), int(state[b"h:GBP"]))
        status_after = {int(s.decline_reason) if s.decline_reason else 0: s for s in CardStatus}[
            int(state[b"c:card"])
        ]
        after_card = CardState(
            status_after, int(state[b"t:card"]), card.pin_tries_max, bytes(state[b"p:card"])
        )
        after_usage = {
            k[3:].decode(): (int(v), int(state[b"uc:" + k[3:]]))
            for k, v in state.items()
            if k.startswith(b"ua:")
        }
        await client.delete(cache.keys.state(account))
        return outcome, after_balance, after_card, after_usage
    finally:
        await ledger.aclose()
        await client.aclose()


_ACTIVE = CardState(CardStatus.ACTIVE, 0, 3, PVV_A)
_PLAIN = PreChecks(None, PinMode.NONE, b"", b"", None, None)
_TestFn = TypeVar("_TestFn", bound=Callable[..., None])


def _boundaries(test: _TestFn) -> _TestFn:
    """Exact boundaries random integers would rarely hit."""
    cases = [
        (Balance(1_000, 0), 1_000, 0, False),  # exactly the available balance
        (Balance(1_000, 0), 1_001, 0, False),  # one over
        (Balance(1_000, 0), 900, 100, False),  # amount plus fee exactly fits
        (Balance(1_000, 0), 901, 100, True),  # partial: 900 left after the fee
        (Balance(1_000, 900), 500, 100, True),  # partial: nothing left after the fee
        (Balance(1_000, 1_000), 1, 0, True),  # partial with nothing available
        (Balance(-50, 0), 1, 0, True),  # a negative balance (after an advice)
    ]
    for balance, amount, fee, partial in cases:
        test = example(
            card=_ACTIVE, balance=balance, pre=_PLAIN, amount=amount,
            charges=Charges(fixed_fee_minor=fee), usage={}, partial=partial, zero_value=False,
            checks_only=False, velocity=(),
        )(test)  # fmt: skip
    # Velocity boundaries: exactly at a window's amount and approvals maxima, and the decline
    # that reaches a rule's decline maximum (the card blocked).
    rule = VelocityCheck(
        "VA:r1:", "VD:r1:", FIRST_BUCKET, LAST_BUCKET, approvals_max=3, amount_max_minor=5_000,
        declines_max=2, expires_at=datetime(2030, 1, 1, tzinfo=UTC),
    )  # fmt: skip
    held = {"VA:r1:99": (9_000, 9), "VA:r1:100": (3_000, 1), "VA:r1:103": (1_000, 1)}
    for amount, fee, usage in [
        (1_000, 0, held),  # 5,000 exactly: approved
        (1_001, 0, held),  # one over: 61
        (1_000, 50, held),  # the fee counts too: 61
        (1, 0, {**held, "VA:r1:102": (0, 1)}),  # a fourth approval: 65
        (2_000_000, 0, {"VD:r1:101": (0, 1), "VD:r1:103": (0, 1)}),  # 51, a third decline
    ]:
        test = example(
            card=_ACTIVE, balance=Balance(1_000_000, 0), pre=_PLAIN, amount=amount,
            charges=Charges(fixed_fee_minor=fee), usage=usage, partial=False, zero_value=False,
            checks_only=False, velocity=(rule,),
        )(test)  # fmt: skip
    return test


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    card=cards,
    balance=balances,
    pre=prechecks,
    amount=st.integers(1, 600_000),
    charges=charges,
    usage=usages,
    partial=st.booleans(),
    zero_value=st.booleans(),
    checks_only=st.booleans(),
    velocity=velocity_rules,
)
@_boundaries
def test_lua_agrees_with_the_model(
    stores: Stores, card: CardState, balance: Balance | None, pre: PreChecks, amount: int,
    charges: Charges, usage: dict[str, tuple[int, int]], partial: bool, zero_value: bool,
    checks_only: bool, velocity: tuple[VelocityCheck, ...],
) -> None:  # fmt: skip
    if zero_value:
        amount = 0
    expected = decide(
        card, balance, pre, amount_minor=amount, partial_allowed=partial,
        zero_value=zero_value, charges=charges, usage=usage, checks_only=checks_only,
        velocity=velocity,
    )  # fmt: skip
    outcome, after_balance, after_card, after_usage = asyncio.run(
        _run(
            stores, card, balance, pre, amount, charges, usage, partial, zero_value,
            checks_only, velocity,
        )
    )  # fmt: skip
    assert outcome.reason == expected.reason
    assert (outcome.velocity_rule, outcome.velocity_blocked) == (
        expected.velocity_rule,
        expected.velocity_blocked,
    )
    assert after_card.status == expected.card.status
    assert outcome.approved_minor == expected.approved_minor
    assert outcome.fee_minor == expected.fee_minor
    assert outcome.fee_mode == expected.fee_mode
    assert outcome.pin_blocked_now == expected.pin_blocked_now
    assert after_balance == expected.balance
    assert (after_card.pin_tries, after_card.pvv) == (expected.card.pin_tries, expected.card.pvv)
    # Every counter the model changed, as the script left it (previous periods dropped).
    written = {k for k in after_usage if after_usage[k] != usage.get(k)}
    assert written <= set(expected.usage)
    for key, value in expected.usage.items():
        assert after_usage.get(key, (0, 0)) == value, key
    dropped = {c.previous for c in charges.limits if c.previous and c.key in expected.usage}
    for key in dropped - set(expected.usage):
        assert key not in after_usage
