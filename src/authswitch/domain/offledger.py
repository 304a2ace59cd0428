"""Off-ledger rules (DESIGN.md §6), pure: the circuit breaker, the stand-in policy, and what
counts as a valid answer from a client. Time is passed in as monotonic milliseconds.
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass
from enum import Enum

from authswitch.domain.authorization import Charges
from authswitch.domain.codes import Code, Reason
from authswitch.domain.fees import FeeLine, FeeQuote
from authswitch.domain.records import UsageChange

__all__ = [
    "DEADLINE_MS_DEFAULT",
    "DEADLINE_MS_MAX",
    "DEADLINE_MS_MIN",
    "AnswerReserve",
    "Assessed",
    "BreakerConfig",
    "BreakerState",
    "CircuitBreaker",
    "ClientAnswer",
    "ClientRouting",
    "Counted",
    "StandInPolicy",
    "StandInReason",
    "breaker_of",
    "check_answer",
    "deadline_ms_of",
]


class StandInPolicy(Enum):
    DECLINE = "DECLINE"  # answer 91
    APPROVE = "APPROVE"  # approve within per-transaction and per-day stand-in limits
    SHADOW = "SHADOW"  # decide from the on-ledger shadow balance


class StandInReason(Enum):
    """Why authswitch answered instead of the client (numbered as on the wire)."""

    TIMEOUT = 1
    UNAVAILABLE = 2
    BREAKER_OPEN = 3
    INVALID_ANSWER = 4
    NOT_CONFIGURED = 5
    OVERLOADED = 6  # too many calls already waiting on clients: the client was not asked


class BreakerState(Enum):
    CLOSED = "closed"  # calls go through
    OPEN = "open"  # calls do not go through; stand-in answers at once
    HALF_OPEN = "half_open"  # one probe call goes through to test the client


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    failures_max: int = 5  # consecutive failures that open the breaker
    error_rate_pct: int = 50  # or this share of failures among the last `window` calls
    window: int = 20
    open_ms: int = 5_000  # how long it stays open before a probe

    def __post_init__(self) -> None:
        assert self.failures_max >= 1
        assert 1 <= self.error_rate_pct <= 100
        assert self.window >= 1
        assert self.open_ms >= 1


class CircuitBreaker:
    """Opens after ``failures_max`` consecutive failures, or when the failures among the
    last ``window`` calls (once there are that many) reach ``error_rate_pct``; after
    ``open_ms`` lets one probe through (half-open); closes when a probe succeeds and opens
    again when it fails."""

    def __init__(self, config: BreakerConfig) -> None:
        self.config = config
        self.state = BreakerState.CLOSED
        self._consecutive = 0
        self._recent: collections.deque[bool] = collections.deque(maxlen=config.window)
        self._failures = 0  # among ``_recent``, counted as they come and go
        self._opened_at_ms = 0
        self._probing = False

    def allow(self, now_ms: int) -> bool:
        """Whether a call may go to the client now (a half-open probe counts as one)."""
        if self.state is BreakerState.OPEN:
            if now_ms - self._opened_at_ms < self.config.open_ms:
                return False
            self.state = BreakerState.HALF_OPEN
            self._probing = False
        if self.state is BreakerState.HALF_OPEN:
            if self._probing:
                return False
            self._probing = True
            return True
        return True

    def record(self, success: bool, now_ms: int) -> None:
        if self.state is BreakerState.HALF_OPEN:
            self._probing = False
            if success:
                self._close()
            else:
                self._open(now_ms)
            return
        if self.state is BreakerState.OPEN:
            return  # a late answer from before it opened changes nothing
        recent, window = self._recent, self.config.window
        if len(recent) == window and not recent[0]:  # the oldest call leaves the window
            self._failures -= 1
        recent.append(success)
        if success:
            self._consecutive = 0
        else:
            self._consecutive += 1
            self._failures += 1
        full = len(recent) == window
        if self._consecutive >= self.config.failures_max or (
            full and self._failures * 100 >= self.config.error_rate_pct * window
        ):
            self._open(now_ms)

    def _open(self, now_ms: int) -> None:
        self.state = BreakerState.OPEN
        self._opened_at_ms = now_ms
        self._consecutive = 0
        self._recent.clear()
        self._failures = 0

    def _close(self) -> None:
        self.state = BreakerState.CLOSED
        self._consecutive = 0
        self._recent.clear()
        self._failures = 0


class AnswerReserve:
    """Of a programme's deadline, what is kept back from its client for answering without
    it: the stand-in decision and its durable record, once the client's budget has run out.

    At least the configured reserve; raised, when recent stand-ins took longer than that past
    the client's budget (a busy process: the timer fires late, the commit waits its turn), to
    the 99th percentile of the last ``WINDOW`` of them plus a quarter; never more than half the
    deadline (the client keeps at least half, even of a deadline shorter than twice the
    setting). How long a stand-in takes does not depend on the reserve, so raising it feeds
    nothing back."""

    WINDOW = 256
    EVERY = 16  # observations between two recomputations of the percentile

    def __init__(self, minimum_ms: int) -> None:
        assert minimum_ms >= 0
        self.minimum_ms = minimum_ms
        self._past: collections.deque[float] = collections.deque(maxlen=self.WINDOW)
        self._unsorted = 0
        self._observed_ms = 0

    def ms(self, deadline_ms: int) -> int:
        """The reserve for a programme whose deadline is ``deadline_ms``."""
        return min(max(self.minimum_ms, self._observed_ms), deadline_ms // 2)

    @property
    def observed_ms(self) -> int:
        """What recent stand-ins need (0 before any was seen)."""
        return self._observed_ms

    def observe(self, past_budget_ms: float) -> None:
        """A stand-in after a timeout answered ``past_budget_ms`` after the client's budget
        ended."""
        self._past.append(past_budget_ms)
        self._unsorted += 1
        if self._unsorted >= self.EVERY:
            self._unsorted = 0
            ordered = sorted(self._past)
            p99 = ordered[min(len(ordered) - 1, (len(ordered) * 99) // 100)]
            self._observed_ms = int(p99 * 1.25) + 1


_CODE = re.compile(r"^[0-9A-Z]{2}$")
# Codes that mean approval: a client that declines with one of them is not believed.
_APPROVAL_CODES = frozenset({"00", "08", "10", "11", "16", "85"})


DEADLINE_MS_DEFAULT = 1_000
DEADLINE_MS_MIN, DEADLINE_MS_MAX = 20, 10_000


def deadline_ms_of(requested_ms: int) -> int | None:
    """A programme's deadline from the admin API (0: the default); None when out of range."""
    deadline = requested_ms or DEADLINE_MS_DEFAULT
    return deadline if DEADLINE_MS_MIN <= deadline <= DEADLINE_MS_MAX else None


def breaker_of(
    failures: int, error_rate_pct: int, window: int, open_ms: int
) -> BreakerConfig | None:
    """A circuit breaker from the admin API's values, each 0 meaning its default; None when
    one is out of range."""
    d = BreakerConfig()
    values = (
        failures or d.failures_max, error_rate_pct or d.error_rate_pct, window or d.window,
        open_ms or d.open_ms,
    )  # fmt: skip
    if min(values) < 1 or values[1] > 100:
        return None
    return BreakerConfig(*values)


@dataclass(frozen=True, slots=True)
class ClientRouting:
    """Where a program's DecisionService is and how to treat it."""

    target: str
    tls: str = "NONE"  # NONE, TLS, MTLS
    ca_secret: str = ""
    cert_secret: str = ""
    key_secret: str = ""
    token_secret: str = ""
    deadline_ms: int = DEADLINE_MS_DEFAULT
    stand_in: StandInPolicy = StandInPolicy.DECLINE
    stand_in_asset: str = ""
    stand_in_transaction_max_minor: int = 0
    stand_in_daily_max_minor: int = 0
    breaker: BreakerConfig = BreakerConfig()


def routing_problem(target: str, transaction_max_minor: int, daily_max_minor: int) -> str | None:
    """Why a client routing with these values cannot be set, or None when it can (the
    deadline and the breaker are checked by :func:`deadline_ms_of` and :func:`breaker_of`)."""
    if not 3 <= len(target) <= 255 or " " in target:
        return "target must be host:port"
    if min(transaction_max_minor, daily_max_minor) < 0:
        return "stand-in limits must not be negative"
    return None


@dataclass(frozen=True, slots=True)
class ClientAnswer:
    """A client's answer, checked: what authswitch will tell the network."""

    reason: Reason  # APPROVED, PARTIALLY_APPROVED or CLIENT_DECLINED
    approved_minor: int
    response_code: str
    authorization_code: str
    client_reason: str


def check_answer(
    decision: int,
    *,
    approved_minor: int,
    approved_asset: str,
    response_code: str,
    authorization_code: str,
    client_reason: str,
    requested_minor: int,
    asset: str,
    partial_allowed: bool,
) -> ClientAnswer | None:
    """The answer to give the network, or None when the client's answer is invalid (and
    must not be trusted: the stand-in policy answers instead). ``decision`` is the wire
    number of ``ClientDecision``: 1 approve, 2 partial, 3 decline."""
    if authorization_code and not re.fullmatch(r"[0-9A-Za-z]{6}", authorization_code):
        return None
    reason_text = client_reason[:200]
    if decision == 1:
        return ClientAnswer(
            Reason.APPROVED, requested_minor, Code.APPROVED, authorization_code, reason_text
        )
    if decision == 2:
        if not partial_allowed or approved_asset != asset:
            return None
        if not 0 < approved_minor < requested_minor:
            return None
        return ClientAnswer(
            Reason.PARTIALLY_APPROVED,
            approved_minor,
            Code.PARTIALLY_APPROVED,
            authorization_code,
            reason_text,
        )
    if decision == 3:
        code = response_code or Code.CLIENT_DECLINED
        if not _CODE.match(code) or code in _APPROVAL_CODES:
            return None
        return ClientAnswer(Reason.CLIENT_DECLINED, 0, code, "", reason_text)
    return None


# What an off-ledger authorisation counted and was charged before its client was asked
# (service/offledger_limits.py counts it).


@dataclass(slots=True)
class Counted:
    """What an off-ledger authorisation counted before its client was asked."""

    account_id: str
    charges: Charges
    amount_minor: int  # on each limit: the requested amount and its fee
    uses: int = 1  # on each limit
    free_uses: int = 1  # on each free-use fee's counter

    @property
    def keys(self) -> tuple[str, ...]:
        """The limit counters (those a reversal gives back to)."""
        return tuple(c.key for c in self.charges.limits if c.key)

    def usage(self) -> tuple[UsageChange, ...]:
        """The durable counter changes of what is counted now."""
        changes = [
            UsageChange(self.account_id, c.key, self.amount_minor, self.uses, c.expires_at)
            for c in self.charges.limits
            if c.key and c.expires_at is not None and (self.amount_minor or self.uses)
        ]
        changes += [
            UsageChange(self.account_id, f.counter.key, 0, self.free_uses, f.counter.expires_at)
            for f in self.charges.free_uses
            if f.counter.expires_at is not None and self.free_uses
        ]
        return tuple(changes)


@dataclass(slots=True)
class Assessed:
    """An off-ledger authorisation's fees, and its limits' verdict."""

    quote: FeeQuote
    fee_minor: int  # the fee of an approval: fixed, plus the free-use fees now charged
    free_charged: frozenset[str]  # rule ids of the free-use fees charged
    counted: Counted | None  # None: the product has no limit or free-use fee here
    declined: Reason | None = None  # 61 or 65: the client is not asked

    @property
    def decline_fee_minor(self) -> int:
        return self.quote.on_decline_minor

    def lines(self, *, declined: bool) -> list[FeeLine]:
        return self.quote.charged_lines(declined=declined, free_charged=self.free_charged)
