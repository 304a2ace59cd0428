"""Spend controls of a card or an account (issue 18, item 1), pure.

A card's controls and its spend account's controls both apply, on top of the product's
rules (which always apply: a control narrows them, never widens them). What a control
checks without state (merchant category, country and id, channel, card presence, and
decline rules over the network data) declines **57**, DESIGN.md check 8; its amount and
count limits decline **61** and **65**, check 9, counted in the same atomic Redis step as
the product's limits (they are the same kind of counter). A control set may replace the
product's limits of its subject (``replace_product_limits``): that is the one thing a
control overrides.

Controls are versioned: a new version replaces the whole set from its ``effective_from``;
the version in force at a decision is the one with the latest ``effective_from`` not after
the decision's time (the latest version number among equals), as for fee schedules.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Protocol

from authswitch.domain.codes import Reason
from authswitch.domain.limits import Counter, Period, period_bounds
from authswitch.domain.networkdata import NetworkData, Presence
from authswitch.domain.records import UsageChange

__all__ = [
    "CONTROL_LIST_MAX",
    "COUNTRY_LIST_MAX",
    "LIFETIME_EXPIRES_AT",
    "RULES_MAX",
    "CardPresence",
    "ControlPeriod",
    "ControlSubject",
    "ControlVersion",
    "DeclineRule",
    "MccRange",
    "SpendControls",
    "SpendLimit",
    "VelocityCheck",
    "VelocityRule",
    "Violation",
    "check",
    "in_force",
    "limit_counter",
    "next_scheduled",
    "problem",
    "velocity_check",
    "velocity_usage",
]

# Bounds on one control set (so that a set, and a card listing its controls, fit a message).
CONTROL_LIST_MAX = 100
COUNTRY_LIST_MAX = 250
RULES_MAX = 20
LIMIT_NAME = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
_MCC = re.compile(r"^\d{4}$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
MERCHANT_ID_LEN_MAX = 15
# Velocity windows: a rolling window is counted in this many buckets of window/20 each, and
# a decision reads the current bucket and the 20 before it: an event counts for at least
# the window and at most a twentieth longer (never less: the rule is never looser).
VELOCITY_BUCKETS = 20
VELOCITY_WINDOW_S_MIN = 60
VELOCITY_WINDOW_S_MAX = 7 * 86_400
# A lifetime counter never runs out; its durable row carries this expiry.
LIFETIME_EXPIRES_AT = datetime(9999, 12, 31, tzinfo=UTC)


class ControlSubject(Enum):
    CARD = "CARD"
    ACCOUNT = "ACCOUNT"


class ControlPeriod(Enum):
    TRANSACTION = "TRANSACTION"
    DAY = "DAY"
    MONTH = "MONTH"
    LIFETIME = "LIFETIME"


class CardPresence(Enum):
    ANY = "ANY"
    PRESENT_ONLY = "PRESENT_ONLY"
    NOT_PRESENT_ONLY = "NOT_PRESENT_ONLY"


@dataclass(frozen=True, slots=True)
class MccRange:
    """An inclusive range of merchant category codes (four digits compare as strings)."""

    from_mcc: str
    to_mcc: str

    def contains(self, mcc: str) -> bool:
        return self.from_mcc <= mcc <= self.to_mcc


@dataclass(frozen=True, slots=True)
class SpendLimit:
    name: str
    period: ControlPeriod
    asset: str
    amount_max_minor: int | None = None
    count_max: int | None = None
    transaction_types: frozenset[int] = frozenset()  # empty: all

    def applies(self, transaction_type: int, asset: str) -> bool:
        if asset != self.asset:
            return False
        return not self.transaction_types or transaction_type in self.transaction_types


@dataclass(frozen=True, slots=True)
class DeclineRule:
    """Declines a request for which every condition set holds."""

    name: str
    channels: frozenset[int] = frozenset()
    pos_entry_modes: frozenset[int] = frozenset()
    transaction_types: frozenset[int] = frozenset()
    without_three_ds: bool = False
    amount_above_minor: int | None = None
    asset: str = ""
    network_risk_score_min: int | None = None
    card_not_present: bool = False
    stored_credential: bool = False

    def has_condition(self) -> bool:
        return bool(
            self.channels
            or self.pos_entry_modes
            or self.transaction_types
            or self.without_three_ds
            or self.amount_above_minor is not None
            or self.network_risk_score_min is not None
            or self.card_not_present
            or self.stored_credential
        )

    def matches(self, request: _Request) -> bool:
        network = request.network or _NO_NETWORK_DATA
        if self.channels and request.channel not in self.channels:
            return False
        if self.pos_entry_modes and network.pos_entry_mode not in self.pos_entry_modes:
            return False
        if self.transaction_types and request.transaction_type not in self.transaction_types:
            return False
        if self.without_three_ds and network.three_ds_authenticated:
            return False
        if self.amount_above_minor is not None and not (
            request.billing_asset == self.asset
            and request.billing_amount_minor > self.amount_above_minor
        ):
            return False
        if self.network_risk_score_min is not None and (
            network.network_risk_score is None
            or network.network_risk_score < self.network_risk_score_min
        ):
            return False
        if self.card_not_present and network.card_present == Presence.PRESENT:
            return False
        return not self.stored_credential or (
            network.recurring or network.card_on_file or network.merchant_initiated
        )


_NO_NETWORK_DATA = NetworkData()


class _Request(Protocol):
    """What the checks read of an authorisation request (AuthorizationRequest has it)."""

    transaction_type: int
    channel: int
    mcc: str
    merchant_country: str
    merchant_id: str
    billing_asset: str
    billing_amount_minor: int
    network: NetworkData | None


@dataclass(frozen=True, slots=True)
class VelocityRule:
    """Over a rolling window: more than ``approvals_max`` approvals (65) or more than
    ``amount_max_minor`` approved (61, fees included, in ``asset``) declines; more than
    ``declines_max`` declines blocks the card (62 from then on) and notifies."""

    name: str
    window_s: int
    approvals_max: int | None = None
    amount_max_minor: int | None = None
    asset: str = ""
    declines_max: int | None = None


@dataclass(frozen=True, slots=True)
class VelocityCheck:
    """One velocity rule as the atomic step reads it (-1: no maximum)."""

    approvals_prefix: str
    declines_prefix: str
    first_bucket: int
    last_bucket: int
    approvals_max: int
    amount_max_minor: int
    declines_max: int
    expires_at: datetime  # when the current bucket stops counting


def velocity_check(rule: VelocityRule, subject_id: str, now: datetime, asset: str) -> VelocityCheck:
    """The buckets of ``rule`` at ``now`` (time is passed in; bucket numbers count
    window/20-second steps since the epoch). A rule in another asset than the request's
    caps no amount."""
    width_s = rule.window_s // VELOCITY_BUCKETS
    bucket = int(now.timestamp()) // width_s
    amount_max = -1
    if rule.amount_max_minor is not None and rule.asset == asset:
        amount_max = rule.amount_max_minor
    base = f"{subject_id}:{rule.name}:{rule.window_s}:"
    return VelocityCheck(
        approvals_prefix=f"VA:{base}",
        declines_prefix=f"VD:{base}",
        first_bucket=bucket - VELOCITY_BUCKETS,
        last_bucket=bucket,
        approvals_max=-1 if rule.approvals_max is None else rule.approvals_max,
        amount_max_minor=amount_max,
        declines_max=-1 if rule.declines_max is None else rule.declines_max,
        expires_at=datetime.fromtimestamp((bucket + VELOCITY_BUCKETS + 1) * width_s, tz=UTC),
    )


def velocity_usage(
    checks: Sequence[VelocityCheck], *, account_id: str, approved: bool, counted_decline: bool,
    amount_minor: int,
) -> tuple[UsageChange, ...]:  # fmt: skip
    """What a decision adds to the velocity buckets of ``account_id``, as the atomic step
    did: an approval its amount and one approval to every rule, a counted decline one
    decline to every rule with a decline maximum (the durable counterpart, so that a cache
    rebuilt from Postgres has them)."""
    added: list[UsageChange] = []
    for check_ in checks:
        if approved:
            key = f"{check_.approvals_prefix}{check_.last_bucket}"
            added.append(UsageChange(account_id, key, amount_minor, 1, check_.expires_at))
        elif counted_decline and check_.declines_max >= 0:
            key = f"{check_.declines_prefix}{check_.last_bucket}"
            added.append(UsageChange(account_id, key, 0, 1, check_.expires_at))
    return tuple(added)


@dataclass(frozen=True, slots=True)
class SpendControls:
    allowed_mccs: frozenset[str] = frozenset()
    allowed_mcc_ranges: tuple[MccRange, ...] = ()
    blocked_mccs: frozenset[str] = frozenset()
    blocked_mcc_ranges: tuple[MccRange, ...] = ()
    allowed_countries: frozenset[str] = frozenset()
    blocked_countries: frozenset[str] = frozenset()
    allowed_merchant_ids: frozenset[str] = frozenset()
    blocked_merchant_ids: frozenset[str] = frozenset()
    allowed_channels: frozenset[int] = frozenset()
    card_presence: CardPresence = CardPresence.ANY
    limits: tuple[SpendLimit, ...] = ()
    decline_rules: tuple[DeclineRule, ...] = ()
    replace_product_limits: bool = False
    velocity_rules: tuple[VelocityRule, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The stored form (jsonb); :meth:`from_json` reads it back."""
        return {
            "allowed_mccs": sorted(self.allowed_mccs),
            "allowed_mcc_ranges": [[r.from_mcc, r.to_mcc] for r in self.allowed_mcc_ranges],
            "blocked_mccs": sorted(self.blocked_mccs),
            "blocked_mcc_ranges": [[r.from_mcc, r.to_mcc] for r in self.blocked_mcc_ranges],
            "allowed_countries": sorted(self.allowed_countries),
            "blocked_countries": sorted(self.blocked_countries),
            "allowed_merchant_ids": sorted(self.allowed_merchant_ids),
            "blocked_merchant_ids": sorted(self.blocked_merchant_ids),
            "allowed_channels": sorted(self.allowed_channels),
            "card_presence": self.card_presence.value,
            "limits": [
                {
                    "name": x.name, "period": x.period.value, "asset": x.asset,
                    "amount_max_minor": x.amount_max_minor, "count_max": x.count_max,
                    "transaction_types": sorted(x.transaction_types),
                }
                for x in self.limits
            ],
            "decline_rules": [
                {
                    "name": r.name, "channels": sorted(r.channels),
                    "pos_entry_modes": sorted(r.pos_entry_modes),
                    "transaction_types": sorted(r.transaction_types),
                    "without_three_ds": r.without_three_ds,
                    "amount_above_minor": r.amount_above_minor, "asset": r.asset,
                    "network_risk_score_min": r.network_risk_score_min,
                    "card_not_present": r.card_not_present,
                    "stored_credential": r.stored_credential,
                }
                for r in self.decline_rules
            ],
            "replace_product_limits": self.replace_product_limits,
            "velocity_rules": [
                {
                    "name": v.name, "window_s": v.window_s, "approvals_max": v.approvals_max,
                    "amount_max_minor": v.amount_max_minor, "asset": v.asset,
                    "declines_max": v.declines_max,
                }
                for v in self.velocity_rules
            ],
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SpendControls:
        return cls(
            allowed_mccs=frozenset(data["allowed_mccs"]),
            allowed_mcc_ranges=tuple(MccRange(a, b) for a, b in data["allowed_mcc_ranges"]),
            blocked_mccs=frozenset(data["blocked_mccs"]),
            blocked_mcc_ranges=tuple(MccRange(a, b) for a, b in data["blocked_mcc_ranges"]),
            allowed_countries=frozenset(data["allowed_countries"]),
            blocked_countries=frozenset(data["blocked_countries"]),
            allowed_merchant_ids=frozenset(data["allowed_merchant_ids"]),
            blocked_merchant_ids=frozenset(data["blocked_merchant_ids"]),
            allowed_channels=frozenset(data["allowed_channels"]),
            card_presence=CardPresence(data["card_presence"]),
            limits=tuple(
                SpendLimit(
                    name=x["name"], period=ControlPeriod(x["period"]), asset=x["asset"],
                    amount_max_minor=x["amount_max_minor"], count_max=x["count_max"],
                    transaction_types=frozenset(x["transaction_types"]),
                )
                for x in data["limits"]
            ),
            decline_rules=tuple(
                DeclineRule(
                    name=r["name"], channels=frozenset(r["channels"]),
                    pos_entry_modes=frozenset(r["pos_entry_modes"]),
                    transaction_types=frozenset(r["transaction_types"]),
                    without_three_ds=r["without_three_ds"],
                    amount_above_minor=r["amount_above_minor"], asset=r["asset"],
                    network_risk_score_min=r["network_risk_score_min"],
                    card_not_present=r["card_not_present"],
                    stored_credential=r["stored_credential"],
                )
                for r in data["decline_rules"]
            ),
            replace_product_limits=data["replace_product_limits"],
            velocity_rules=tuple(
                VelocityRule(
                    name=v["name"], window_s=v["window_s"], approvals_max=v["approvals_max"],
                    amount_max_minor=v["amount_max_minor"], asset=v["asset"],
                    declines_max=v["declines_max"],
                )
                for v in data.get("velocity_rules", ())
            ),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class ControlVersion:
    subject: ControlSubject
    subject_id: str
    version: int
    effective_from: datetime
    created_at: datetime
    controls: SpendControls = field(default_factory=SpendControls)


def in_force(versions: Sequence[ControlVersion], at: datetime) -> ControlVersion | None:
    """The version in force at ``at``: the latest effective_from not after it."""
    candidates = [v for v in versions if v.effective_from <= at]
    return max(candidates, key=lambda v: (v.effective_from, v.version), default=None)


def next_scheduled(versions: Sequence[ControlVersion], at: datetime) -> ControlVersion | None:
    """The next version to come into force after ``at``, if one is scheduled."""
    later = [v for v in versions if v.effective_from > at]
    return min(later, key=lambda v: (v.effective_from, -v.version), default=None)


@dataclass(frozen=True, slots=True)
class Violation:
    """A stateless control that declines a request: its reason and the rule, for the
    response's detail (never card data)."""

    reason: Reason
    detail: str


def check(controls: SpendControls, subject: ControlSubject, request: _Request) -> Violation | None:
    """The first stateless control of ``controls`` that ``request`` breaks (57), or None.

    An allow list declines a request that does not say the value it restricts (a request
    without an MCC when only some MCCs are allowed): what is not known to be allowed is
    not allowed. A block list lets such a request through."""
    who = subject.value.lower()

    def no(what: str) -> Violation:
        return Violation(Reason.TRANSACTION_NOT_PERMITTED, f"{who} spend control: {what}")

    mcc = request.mcc
    if (controls.allowed_mccs or controls.allowed_mcc_ranges) and not (
        mcc in controls.allowed_mccs or any(r.contains(mcc) for r in controls.allowed_mcc_ranges)
    ):
        return no(f"merchant category {mcc or '(none)'} is not allowed")
    if mcc and (
        mcc in controls.blocked_mccs or any(r.contains(mcc) for r in controls.blocked_mcc_ranges)
    ):
        return no(f"merchant category {mcc} is blocked")
    country = request.merchant_country
    if controls.allowed_countries and country not in controls.allowed_countries:
        return no(f"merchant country {country or '(none)'} is not allowed")
    if country and country in controls.blocked_countries:
        return no(f"merchant country {country} is blocked")
    merchant = request.merchant_id
    if controls.allowed_merchant_ids and merchant not in controls.allowed_merchant_ids:
        return no(f"merchant {merchant or '(none)'} is not allowed")
    if merchant and merchant in controls.blocked_merchant_ids:
        return no(f"merchant {merchant} is blocked")
    if controls.allowed_channels and request.channel not in controls.allowed_channels:
        return no("the channel is not allowed")
    if controls.card_presence is not CardPresence.ANY:
        present = request.network is not None and request.network.card_present == Presence.PRESENT
        if controls.card_presence is CardPresence.PRESENT_ONLY and not present:
            return no("only card-present transactions are allowed")
        if controls.card_presence is CardPresence.NOT_PRESENT_ONLY and present:
            return no("only card-not-present transactions are allowed")
    for rule in controls.decline_rules:
        if rule.matches(request):
            return no(f"decline rule {rule.name!r}")
    return None


def limit_counter(limit: SpendLimit, subject_id: str, now: datetime, time_zone: str) -> Counter:
    """The counter of a control limit. Named by the subject and the limit's name (not the
    version), so a new version with the same limit goes on counting."""
    amount_max = -1 if limit.amount_max_minor is None else limit.amount_max_minor
    count_max = -1 if limit.count_max is None else limit.count_max
    if limit.period is ControlPeriod.TRANSACTION:
        return Counter("", "", now, amount_max, -1)
    base = f"S:{subject_id}:{limit.name}"
    if limit.period is ControlPeriod.LIFETIME:
        return Counter(f"{base}:life", "", LIFETIME_EXPIRES_AT, amount_max, count_max)
    label, previous, ends = period_bounds(Period(limit.period.value), now, time_zone)
    return Counter(f"{base}:{label}", f"{base}:{previous}", ends, amount_max, count_max)


def _mcc_range_ok(r: MccRange) -> bool:
    return bool(_MCC.match(r.from_mcc) and _MCC.match(r.to_mcc) and r.from_mcc <= r.to_mcc)


def problem(
    controls: SpendControls, assets: frozenset[str], *, channels: frozenset[int],
    transaction_types: frozenset[int], entry_modes: frozenset[int],
) -> str | None:  # fmt: skip
    """What is wrong with a control set an operator sent, or None (the first problem, in
    the order the set's parts are checked)."""
    return (
        _lists_problem(controls, channels)
        or _limits_problem(controls, assets, transaction_types)
        or _decline_rules_problem(controls, assets, channels, transaction_types, entry_modes)
        or _velocity_problem(controls, assets)
    )


def _lists_problem(controls: SpendControls, channels: frozenset[int]) -> str | None:
    """The lists: MCCs and their ranges, countries, merchant ids, channels."""
    for name, values in (
        ("allowed_mccs", controls.allowed_mccs),
        ("blocked_mccs", controls.blocked_mccs),
        ("allowed_merchant_ids", controls.allowed_merchant_ids),
        ("blocked_merchant_ids", controls.blocked_merchant_ids),
    ):
        if len(values) > CONTROL_LIST_MAX:
            return f"{name} holds at most {CONTROL_LIST_MAX} entries"
    for name, ranges in (
        ("allowed_mcc_ranges", controls.allowed_mcc_ranges),
        ("blocked_mcc_ranges", controls.blocked_mcc_ranges),
    ):
        if len(ranges) > CONTROL_LIST_MAX:
            return f"{name} holds at most {CONTROL_LIST_MAX} entries"
        if not all(_mcc_range_ok(r) for r in ranges):
            return f"{name}: each range is two four-digit codes, from not after to"
    if not all(_MCC.match(m) for m in controls.allowed_mccs | controls.blocked_mccs):
        return "mccs must be four-digit codes"
    for name, countries in (
        ("allowed_countries", controls.allowed_countries),
        ("blocked_countries", controls.blocked_countries),
    ):
        if len(countries) > COUNTRY_LIST_MAX:
            return f"{name} holds at most {COUNTRY_LIST_MAX} entries"
        if not all(_COUNTRY.match(c) for c in countries):
            return f"{name} must be ISO 3166-1 alpha-2 codes (two capital letters)"
    merchants = controls.allowed_merchant_ids | controls.blocked_merchant_ids
    if any(not m or len(m) > MERCHANT_ID_LEN_MAX for m in merchants):
        return f"merchant ids are 1 to {MERCHANT_ID_LEN_MAX} characters"
    if not controls.allowed_channels <= channels:
        return "allowed_channels holds an unknown channel"
    return None


def _limits_problem(
    controls: SpendControls, assets: frozenset[str], transaction_types: frozenset[int]
) -> str | None:
    if len(controls.limits) > RULES_MAX or len(controls.decline_rules) > RULES_MAX:
        return f"at most {RULES_MAX} limits and {RULES_MAX} decline rules"
    seen: set[tuple[str, ControlPeriod]] = set()
    for limit in controls.limits:
        where = f"limit {limit.name!r}"
        if not LIMIT_NAME.match(limit.name):
            return f"{where}: a name is 1 to 40 letters, digits, '-' or '_'"
        if (limit.name, limit.period) in seen:
            return f"{where}: two limits of one name and period"
        seen.add((limit.name, limit.period))
        if limit.asset not in assets:
            return f"{where}: the product has no asset {limit.asset!r}"
        if limit.amount_max_minor is None and limit.count_max is None:
            return f"{where}: set amount_max_minor, count_max or both"
        if limit.amount_max_minor is not None and limit.amount_max_minor < 0:
            return f"{where}: amount_max_minor must not be negative"
        if limit.count_max is not None and limit.count_max < 0:
            return f"{where}: count_max must not be negative"
        if limit.period is ControlPeriod.TRANSACTION and limit.count_max is not None:
            return f"{where}: a per-transaction limit has no count"
        if not limit.transaction_types <= transaction_types:
            return f"{where}: unknown transaction type"
    return None


def _decline_rules_problem(
    controls: SpendControls, assets: frozenset[str], channels: frozenset[int],
    transaction_types: frozenset[int], entry_modes: frozenset[int],
) -> str | None:  # fmt: skip
    for rule in controls.decline_rules:
        where = f"decline rule {rule.name!r}"
        if not rule.name or len(rule.name) > 200:
            return "a decline rule has a name of 1 to 200 characters"
        if not rule.has_condition():
            return f"{where}: at least one condition"
        if (rule.amount_above_minor is None) != (not rule.asset):
            return f"{where}: amount_above_minor and asset go together"
        if rule.asset and rule.asset not in assets:
            return f"{where}: the product has no asset {rule.asset!r}"
        if rule.amount_above_minor is not None and rule.amount_above_minor < 0:
            return f"{where}: amount_above_minor must not be negative"
        if not rule.channels <= channels or not rule.transaction_types <= transaction_types:
            return f"{where}: unknown channel or transaction type"
        if not rule.pos_entry_modes <= entry_modes:
            return f"{where}: unknown POS entry mode"
    return None


def _velocity_problem(controls: SpendControls, assets: frozenset[str]) -> str | None:
    if len(controls.velocity_rules) > RULES_MAX:
        return f"at most {RULES_MAX} velocity rules"
    names: set[str] = set()
    for velocity in controls.velocity_rules:
        where = f"velocity rule {velocity.name!r}"
        if not LIMIT_NAME.match(velocity.name) or velocity.name in names:
            return f"{where}: a unique name of 1 to 40 letters, digits, '-' or '_'"
        names.add(velocity.name)
        if not VELOCITY_WINDOW_S_MIN <= velocity.window_s <= VELOCITY_WINDOW_S_MAX or (
            velocity.window_s % VELOCITY_BUCKETS
        ):
            return (
                f"{where}: window_s is {VELOCITY_WINDOW_S_MIN} to {VELOCITY_WINDOW_S_MAX}, "
                f"a multiple of {VELOCITY_BUCKETS}"
            )
        maxima = (velocity.approvals_max, velocity.amount_max_minor, velocity.declines_max)
        if all(m is None for m in maxima):
            return f"{where}: set approvals_max, amount_max_minor or declines_max"
        if any(m is not None and m < 0 for m in maxima):
            return f"{where}: maxima must not be negative"
        if (velocity.amount_max_minor is None) != (not velocity.asset):
            return f"{where}: amount_max_minor and asset go together"
        if velocity.asset and velocity.asset not in assets:
            return f"{where}: the product has no asset {velocity.asset!r}"
    return None
