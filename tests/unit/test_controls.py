"""Spend controls, pure (issue 18, item 1): the checks, versions and stored form."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from authswitch.domain.authorization import AuthorizationRequest
from authswitch.domain.controls import (
    CardPresence,
    ControlPeriod,
    ControlSubject,
    ControlVersion,
    DeclineRule,
    MccRange,
    SpendControls,
    SpendLimit,
    VelocityCheck,
    check,
    in_force,
    limit_counter,
    next_scheduled,
    velocity_usage,
)
from authswitch.domain.networkdata import NetworkData, Presence, ThreeDSecureResult
from authswitch.domain.records import UsageChange

pytestmark = pytest.mark.timeout(30)

T0 = datetime(2026, 11, 23, 12, tzinfo=UTC)


def request(**kwargs: object) -> AuthorizationRequest:
    values: dict[str, object] = {
        "source": "visa", "message_id": "m", "transaction_type": 1, "pan": "4000000000000002",
        "billing_amount_minor": 1_000, "billing_asset": "GBP", "mcc": "5411",
        "merchant_country": "GB", "channel": 2,
    }  # fmt: skip
    values.update(kwargs)
    return AuthorizationRequest(**values)  # type: ignore[arg-type]


def test_mcc_ranges_are_inclusive() -> None:
    controls = SpendControls(allowed_mcc_ranges=(MccRange("3000", "3350"),))
    assert check(controls, ControlSubject.CARD, request(mcc="3000")) is None
    assert check(controls, ControlSubject.CARD, request(mcc="3350")) is None
    assert check(controls, ControlSubject.CARD, request(mcc="3351")) is not None
    assert check(controls, ControlSubject.CARD, request(mcc="")) is not None


def test_a_decline_rule_needs_every_condition() -> None:
    rule = DeclineRule("r", channels=frozenset({2}), without_three_ds=True,
                       amount_above_minor=500, asset="GBP")  # fmt: skip
    controls = SpendControls(decline_rules=(rule,))
    authenticated = NetworkData(three_ds_result=ThreeDSecureResult.AUTHENTICATED)
    assert check(controls, ControlSubject.CARD, request()) is not None
    assert check(controls, ControlSubject.CARD, request(network=authenticated)) is None
    assert check(controls, ControlSubject.CARD, request(billing_amount_minor=500)) is None
    assert check(controls, ControlSubject.CARD, request(billing_asset="EUR")) is None
    assert check(controls, ControlSubject.CARD, request(channel=1)) is None


def test_card_presence() -> None:
    present = NetworkData(card_present=Presence.PRESENT)
    only = SpendControls(card_presence=CardPresence.PRESENT_ONLY)
    assert check(only, ControlSubject.ACCOUNT, request(network=present)) is None
    assert check(only, ControlSubject.ACCOUNT, request()) is not None


def test_the_version_in_force_is_the_latest_started() -> None:
    def version(n: int, start: datetime) -> ControlVersion:
        return ControlVersion(ControlSubject.CARD, "c", n, start, T0)

    versions = [version(1, T0), version(2, T0 + timedelta(hours=1)), version(3, T0)]
    assert in_force(versions, T0 - timedelta(seconds=1)) is None
    assert in_force(versions, T0).version == 3  # type: ignore[union-attr]
    assert in_force(versions, T0 + timedelta(hours=2)).version == 2  # type: ignore[union-attr]
    assert next_scheduled(versions, T0).version == 2  # type: ignore[union-attr]


def test_the_stored_form_round_trips() -> None:
    controls = SpendControls(
        allowed_mccs=frozenset({"5411"}), blocked_mcc_ranges=(MccRange("7990", "7999"),),
        allowed_countries=frozenset({"GB"}), blocked_merchant_ids=frozenset({"X"}),
        allowed_channels=frozenset({1, 2}), card_presence=CardPresence.NOT_PRESENT_ONLY,
        limits=(SpendLimit("d", ControlPeriod.DAY, "GBP", 100, 2, frozenset({1})),),
        decline_rules=(DeclineRule("r", network_risk_score_min=700),),
        replace_product_limits=True,
    )  # fmt: skip
    assert SpendControls.from_json(controls.to_json()) == controls


def test_counters_are_named_by_subject_and_limit_not_version() -> None:
    day = limit_counter(SpendLimit("d", ControlPeriod.DAY, "GBP", 1), "card", T0, "UTC")
    assert (day.key, day.previous) == ("S:card:d:20261123", "S:card:d:20261122")
    life = limit_counter(SpendLimit("l", ControlPeriod.LIFETIME, "GBP", 1), "card", T0, "UTC")
    assert (life.key, life.previous, life.expires_at.year) == ("S:card:l:life", "", 9999)
    each = limit_counter(SpendLimit("t", ControlPeriod.TRANSACTION, "GBP", 1), "card", T0, "UTC")
    assert each.key == ""


def test_a_velocity_window_is_never_shorter_than_stated() -> None:
    from authswitch.domain.controls import VelocityRule, velocity_check

    rule = VelocityRule("v", 600, approvals_max=1)
    check_ = velocity_check(rule, "card", T0, "GBP")
    width_s = 600 // 20
    first_start = check_.first_bucket * width_s
    assert T0.timestamp() - first_start >= 600
    assert T0.timestamp() - first_start < 600 + width_s
    assert check_.expires_at.timestamp() == (check_.last_bucket + 21) * width_s
    assert velocity_check(rule, "card", T0, "EUR").amount_max_minor == -1


def test_velocity_usage_is_what_the_atomic_step_counted() -> None:
    ends = T0 + timedelta(minutes=5)
    counts_declines = VelocityCheck("VA:c:r1:60:", "VD:c:r1:60:", 7, 27, 3, -1, 2, ends)
    no_decline_max = VelocityCheck("VA:c:r2:60:", "VD:c:r2:60:", 7, 27, 3, -1, -1, ends)
    checks = (counts_declines, no_decline_max)
    approved = velocity_usage(
        checks, account_id="a1", approved=True, counted_decline=False, amount_minor=500
    )
    assert approved == (
        UsageChange("a1", "VA:c:r1:60:27", 500, 1, ends),
        UsageChange("a1", "VA:c:r2:60:27", 500, 1, ends),
    )
    declined = velocity_usage(
        checks, account_id="a1", approved=False, counted_decline=True, amount_minor=0
    )
    assert declined == (UsageChange("a1", "VD:c:r1:60:27", 0, 1, ends),)  # r2 counts none
    assert (
        velocity_usage(
            checks, account_id="a1", approved=False, counted_decline=False, amount_minor=0
        )
        == ()
    )
