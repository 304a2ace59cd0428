"""The pure off-ledger rules (domain/offledger.py): the circuit breaker and what counts as a
valid answer from a client (DESIGN.md §6, docs/client-contract.md)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authswitch.domain.codes import Reason
from authswitch.domain.offledger import (
    DEADLINE_MS_DEFAULT,
    AnswerReserve,
    BreakerConfig,
    BreakerState,
    CircuitBreaker,
    ClientAnswer,
    breaker_of,
    check_answer,
    deadline_ms_of,
    routing_problem,
)

CONFIG = BreakerConfig(failures_max=3, error_rate_pct=50, window=10, open_ms=1_000)


def test_consecutive_failures_open_it_and_a_probe_after_open_ms_closes_it() -> None:
    breaker = CircuitBreaker(CONFIG)
    for t in range(3):
        assert breaker.allow(t)
        breaker.record(False, t)
    states = [breaker.state]
    assert not breaker.allow(999 + 2)  # 1,000 ms after it opened at 2 is 1,002
    assert breaker.allow(1_002)  # the one probe
    states.append(breaker.state)
    assert not breaker.allow(1_003)  # no second call while the probe is out
    breaker.record(True, 1_010)
    states.append(breaker.state)
    assert states == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]
    assert breaker.allow(1_011)


def test_a_failed_probe_opens_it_again_for_a_whole_open_ms() -> None:
    breaker = CircuitBreaker(CONFIG)
    for t in range(3):
        breaker.record(False, t)
    assert breaker.allow(1_500)
    breaker.record(False, 1_600)
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow(2_599)
    assert breaker.allow(2_600)


def test_the_error_rate_opens_it_once_the_window_is_full() -> None:
    breaker = CircuitBreaker(CONFIG)
    # Alternating failures never reach three in a row; five of ten is 50 %.
    for i in range(9):
        breaker.record(i % 2 == 0, i)
        assert breaker.state is BreakerState.CLOSED
    breaker.record(False, 9)
    assert breaker.state is BreakerState.OPEN


def test_a_late_answer_while_open_changes_nothing() -> None:
    breaker = CircuitBreaker(CONFIG)
    for t in range(3):
        breaker.record(False, t)
    breaker.record(True, 10)
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow(500)


@given(
    st.lists(st.tuples(st.sampled_from(["ok", "fail", "hold"]), st.integers(0, 600)), max_size=200)
)
def test_never_a_call_while_open_and_one_probe_at_a_time(
    events: list[tuple[str, int]],
) -> None:
    """Calls succeed, fail, or (a probe only) stay out until a later event answers them."""
    breaker = CircuitBreaker(CONFIG)
    now = 0
    opened_at = 0
    probe_out = False

    def record(success: bool) -> None:
        nonlocal opened_at
        was_open = breaker.state is BreakerState.OPEN
        breaker.record(success, now)
        if breaker.state is BreakerState.OPEN and not was_open:
            opened_at = now

    for kind, step in events:
        now += step
        if probe_out and kind != "hold":
            record(kind == "ok")  # the probe's answer arrives
            probe_out = False
            continue
        before = breaker.state
        allowed = breaker.allow(now)
        if probe_out:
            assert not allowed
        elif before is BreakerState.OPEN:
            assert allowed == (now - opened_at >= CONFIG.open_ms)
        elif before is BreakerState.CLOSED:
            assert allowed
        if not allowed:
            continue
        if breaker.state is BreakerState.HALF_OPEN and kind == "hold":
            probe_out = True
        else:
            record(kind != "fail")


@given(
    st.integers(1, 5),
    st.integers(1, 100),
    st.integers(1, 12),
    st.lists(st.booleans(), max_size=120),
)
def test_it_opens_exactly_when_a_recount_of_its_window_says_so(
    failures_max: int, rate_pct: int, window: int, outcomes: list[bool]
) -> None:
    """The breaker keeps its failures counted as calls enter and leave the window; a model
    that recounts the whole window after every call opens it at the same call."""
    config = BreakerConfig(failures_max, rate_pct, window, open_ms=10**9)
    breaker = CircuitBreaker(config)
    recent: list[bool] = []
    consecutive = 0
    for success in outcomes:
        breaker.record(success, 0)
        recent = [*recent, success][-window:]
        consecutive = 0 if success else consecutive + 1
        failures = recent.count(False)
        expected = consecutive >= failures_max or (
            len(recent) == window and failures * 100 >= rate_pct * window
        )
        assert (breaker.state is BreakerState.OPEN) == expected
        if expected:
            return  # open: nothing more is counted until a probe


def test_the_answer_reserve_is_the_setting_until_stand_ins_need_more() -> None:
    reserve = AnswerReserve(100)
    assert reserve.ms(1_000) == 100
    for _ in range(AnswerReserve.WINDOW):
        reserve.observe(8.0)  # an idle process: its stand-ins need far less than 100 ms
    assert (reserve.observed_ms, reserve.ms(1_000)) == (11, 100)
    for _ in range(AnswerReserve.WINDOW):
        reserve.observe(120.0)  # a busy one: 120 ms past the client's budget
    assert reserve.observed_ms == 151  # 120 ms and a quarter
    assert reserve.ms(1_000) == 151
    assert reserve.ms(200) == 100  # never more than half the deadline
    for _ in range(AnswerReserve.WINDOW):
        reserve.observe(4.0)  # the load went: the reserve comes back down to the setting
    assert reserve.ms(1_000) == 100
    assert reserve.ms(120) == 60  # a deadline shorter than twice the setting: half for each


def test_the_answer_reserve_follows_the_99th_percentile_not_the_worst() -> None:
    reserve = AnswerReserve(0)
    for i in range(AnswerReserve.WINDOW):
        reserve.observe(1_000.0 if i == 0 else 20.0)  # one stall among 256
    assert reserve.ms(10_000) == 26


def _answer(decision: int, **kw: object) -> ClientAnswer | None:
    args: dict[str, object] = {
        "approved_minor": 0,
        "approved_asset": "GBP",
        "response_code": "",
        "authorization_code": "ABC123",
        "client_reason": "",
        "requested_minor": 5_000,
        "asset": "GBP",
        "partial_allowed": True,
    }
    args.update(kw)
    return check_answer(decision, **args)  # type: ignore[arg-type]


def test_an_approval_is_for_the_amount_requested() -> None:
    answer = _answer(1, approved_minor=1)
    assert answer is not None
    assert (answer.reason, answer.approved_minor, answer.response_code) == (
        Reason.APPROVED,
        5_000,
        "00",
    )


def test_a_partial_approval_must_be_allowed_in_the_asset_and_between_zero_and_the_amount() -> None:
    ok = _answer(2, approved_minor=2_000)
    assert ok is not None
    assert (ok.reason, ok.approved_minor, ok.response_code) == (
        Reason.PARTIALLY_APPROVED,
        2_000,
        "10",
    )
    assert _answer(2, approved_minor=2_000, partial_allowed=False) is None
    assert _answer(2, approved_minor=2_000, approved_asset="EUR") is None
    assert _answer(2, approved_minor=0) is None
    assert _answer(2, approved_minor=5_000) is None


def test_a_decline_keeps_its_code_but_never_one_that_means_approval() -> None:
    default = _answer(3)
    assert default is not None
    assert (default.reason, default.response_code, default.approved_minor) == (
        Reason.CLIENT_DECLINED,
        "05",
        0,
    )
    declined = _answer(3, response_code="51")
    assert declined is not None
    assert declined.response_code == "51"
    for approving in ("00", "08", "10", "11", "16", "85"):
        assert _answer(3, response_code=approving) is None
    assert _answer(3, response_code="5") is None
    assert _answer(3, response_code="a1") is None


def test_a_malformed_authorization_code_or_an_unknown_decision_is_not_believed() -> None:
    assert _answer(1, authorization_code="ABC12") is None
    assert _answer(1, authorization_code="ABC 12") is None
    assert _answer(1, authorization_code="") is not None
    assert _answer(0) is None
    assert _answer(4) is None


def test_the_client_reason_is_cut_to_200_characters() -> None:
    answer = _answer(3, client_reason="x" * 500)
    assert answer is not None
    assert len(answer.client_reason) == 200


def test_routing_values_from_the_admin_api_zero_meaning_the_default() -> None:
    assert deadline_ms_of(0) == DEADLINE_MS_DEFAULT == 1_000
    assert (deadline_ms_of(20), deadline_ms_of(10_000)) == (20, 10_000)
    assert deadline_ms_of(19) is None
    assert deadline_ms_of(10_001) is None
    assert breaker_of(0, 0, 0, 0) == BreakerConfig()
    assert breaker_of(2, 100, 4, 250) == BreakerConfig(2, 100, 4, 250)
    assert breaker_of(0, 101, 0, 0) is None
    assert breaker_of(-1, 0, 0, 0) is None


@pytest.mark.parametrize(
    ("target", "transaction_max", "daily_max", "problem"),
    [
        ("client.example:443", 0, 0, None),
        ("a:1", 5_000, 50_000, None),
        ("ab", 0, 0, "target must be host:port"),
        ("x" * 256, 0, 0, "target must be host:port"),
        ("client example:443", 0, 0, "target must be host:port"),
        ("client.example:443", -1, 0, "stand-in limits must not be negative"),
        ("client.example:443", 0, -1, "stand-in limits must not be negative"),
    ],
)
def test_a_routing_problem(
    target: str, transaction_max: int, daily_max: int, problem: str | None
) -> None:
    assert routing_problem(target, transaction_max, daily_max) == problem
