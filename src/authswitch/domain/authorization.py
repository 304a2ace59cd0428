"""Authorisation rules: request validation, the core checks and the decision (pure).

The stateful part of a decision (card status, PIN tries, limits, funds) runs atomically in
Redis (``adapters/redis/lua/authorize.lua``). :func:`decide` is the same rule in Python: the
reference the Lua script is tested against, and the model of the property tests.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from enum import Enum, IntEnum, unique

from authswitch.domain.cards import expiry_valid_format, is_expired, pan_valid, pin_valid_format
from authswitch.domain.cardsec import CardKeys
from authswitch.domain.codes import Reason
from authswitch.domain.controls import VelocityCheck
from authswitch.domain.ledger import Balance
from authswitch.domain.money import AMOUNT_MAX_MINOR, Asset
from authswitch.domain.networkdata import NetworkData, network_data_reason

__all__ = [
    "NO_CHARGES",
    "PARTIAL_APPROVAL_TYPES",
    "ZERO_VALUE_TYPES",
    "AuthorizationRequest",
    "CardFacts",
    "CardState",
    "CardStatus",
    "Channel",
    "Charges",
    "CounterCheck",
    "DecisionResult",
    "FeeMode",
    "FreeUseCheck",
    "PinMode",
    "PinTriesExceededAction",
    "PreChecks",
    "ProductRules",
    "TransactionType",
    "Usage",
    "counter_deltas",
    "decide",
    "identifier_ok",
    "prechecks",
    "validate",
]


@unique
class TransactionType(IntEnum):
    """Numbered as ``authswitch.v1.TransactionType``."""

    PURCHASE = 1
    CASH_WITHDRAWAL = 2
    BALANCE_ENQUIRY = 3
    ACCOUNT_VERIFICATION = 4
    PIN_CHANGE = 5
    PIN_UNBLOCK = 6
    QUASI_CASH = 7
    PRE_AUTHORIZATION = 8


@unique
class Channel(IntEnum):
    """Numbered as ``authswitch.v1.Channel``."""

    POS = 1
    ECOMMERCE = 2
    ATM = 3
    MOTO = 4


class CardStatus(Enum):
    """Stored by name; numbered on the wire as ``authswitch.v1.CardStatus``."""

    ACTIVE = 1
    INACTIVE = 2
    BLOCKED = 3
    SUSPENDED = 4
    LOST = 5
    STOLEN = 6
    CLOSED = 7
    EXPIRED = 8

    @property
    def decline_reason(self) -> Reason | None:
        """The reason a card in this status is declined (check 3), None when active."""
        return _STATUS_DECLINE[self]


_STATUS_DECLINE: dict[CardStatus, Reason | None] = {
    CardStatus.ACTIVE: None,
    CardStatus.INACTIVE: Reason.CARD_INACTIVE,
    CardStatus.BLOCKED: Reason.CARD_BLOCKED,
    CardStatus.SUSPENDED: Reason.CARD_SUSPENDED,
    CardStatus.LOST: Reason.CARD_LOST,
    CardStatus.STOLEN: Reason.CARD_STOLEN,
    CardStatus.CLOSED: Reason.CARD_CLOSED,
    CardStatus.EXPIRED: Reason.CARD_EXPIRED,
}

# Non-financial requests: they carry no amount and never hold funds (a fee may apply).
ZERO_VALUE_TYPES = frozenset(
    {
        TransactionType.BALANCE_ENQUIRY,
        TransactionType.ACCOUNT_VERIFICATION,
        TransactionType.PIN_CHANGE,
        TransactionType.PIN_UNBLOCK,
    }
)
# Requests an acquirer may partially approve (ISO 8583 response code 10).
PARTIAL_APPROVAL_TYPES = frozenset({TransactionType.PURCHASE, TransactionType.PRE_AUTHORIZATION})

_TRANSACTION_TYPES = frozenset(int(t) for t in TransactionType)
_CHANNELS = frozenset(int(c) for c in Channel)

# Limits on identifiers: they become Postgres keys and Redis key names.
SOURCE_LEN_MAX = 64
MESSAGE_ID_LEN_MAX = 128
NETWORK_REFERENCE_LEN_MAX = 128
NEW_PIN_LEN_MAX = 12
_MCC = re.compile(r"^\d{4}$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_CVV2 = re.compile(r"^\d{3,4}$")


@dataclass(slots=True)
class AuthorizationRequest:
    """An authorisation request as the domain sees it. Holds card secrets: never log it
    (``repr`` redacts them)."""

    source: str
    message_id: str
    transaction_type: int
    pan: str = field(repr=False)
    billing_amount_minor: int
    billing_asset: str
    network_reference: str = ""
    pin: str = field(default="", repr=False)
    expiry_yymm: str = field(default="", repr=False)
    cvv2: str = field(default="", repr=False)
    new_pin: str = field(default="", repr=False)
    transaction_amount_minor: int = 0
    transaction_asset: str = ""
    partial_allowed: bool = False
    mcc: str = ""
    merchant_country: str = ""
    channel: int = 0
    incremental: bool = False
    original_message_id: str = ""
    merchant_id: str = ""
    network: NetworkData | None = None  # None: the network sent no point-of-sale data
    token: str = field(default="", repr=False)  # a network token (DPAN) instead of pan

    @property
    def type(self) -> TransactionType:
        return TransactionType(self.transaction_type)

    @property
    def is_zero_value(self) -> bool:
        return self.transaction_type in ZERO_VALUE_TYPES


def identifier_ok(value: str, length_max: int, *, required: bool) -> bool:
    """A source, message id or reference: printable ASCII without spaces, bounded."""
    if not value:
        return not required
    # Printable ASCII is 0x20-0x7e: without the space, [\x21-\x7e]+ (faster than a regex).
    return (
        len(value) <= length_max and value.isascii() and value.isprintable() and (" " not in value)
    )


def validate(request: AuthorizationRequest, assets: Mapping[str, Asset]) -> Reason | None:
    """Check 1 (format) and the PAN's form (check 2, before any lookup).

    Returns the decline reason, or None when the request is well formed. A well-formed
    request can still be declined by the later checks.
    """
    if not identifier_ok(request.source, SOURCE_LEN_MAX, required=True):
        return Reason.FORMAT_ERROR
    if not identifier_ok(request.message_id, MESSAGE_ID_LEN_MAX, required=True):
        return Reason.FORMAT_ERROR
    if not identifier_ok(request.network_reference, NETWORK_REFERENCE_LEN_MAX, required=False):
        return Reason.FORMAT_ERROR
    if not identifier_ok(
        request.original_message_id, MESSAGE_ID_LEN_MAX, required=request.incremental
    ):
        return Reason.FORMAT_ERROR
    transaction_type = request.transaction_type
    if transaction_type not in _TRANSACTION_TYPES:
        return Reason.FORMAT_ERROR
    if request.channel and request.channel not in _CHANNELS:
        return Reason.FORMAT_ERROR
    if request.billing_asset not in assets:
        return Reason.FORMAT_ERROR
    if request.transaction_asset and request.transaction_asset not in assets:
        return Reason.FORMAT_ERROR
    if request.mcc and not _MCC.match(request.mcc):
        return Reason.FORMAT_ERROR
    if request.merchant_country and not _COUNTRY.match(request.merchant_country):
        return Reason.FORMAT_ERROR
    if request.expiry_yymm and not expiry_valid_format(request.expiry_yymm):
        return Reason.FORMAT_ERROR
    if request.pin and not pin_valid_format(request.pin):
        return Reason.FORMAT_ERROR
    if len(request.new_pin) > NEW_PIN_LEN_MAX:  # read for PIN changes only, bounded always
        return Reason.FORMAT_ERROR
    if request.cvv2 and not _CVV2.match(request.cvv2):
        return Reason.FORMAT_ERROR
    if transaction_type == TransactionType.PIN_CHANGE and not (
        request.pin and pin_valid_format(request.new_pin)
    ):
        return Reason.FORMAT_ERROR
    if transaction_type == TransactionType.PIN_UNBLOCK and not request.pin:
        return Reason.FORMAT_ERROR
    for amount in (request.billing_amount_minor, request.transaction_amount_minor):
        if not 0 <= amount <= AMOUNT_MAX_MINOR:
            return Reason.INVALID_AMOUNT
    if transaction_type in ZERO_VALUE_TYPES:
        if request.billing_amount_minor != 0:
            return Reason.INVALID_AMOUNT
    elif request.billing_amount_minor == 0:
        return Reason.INVALID_AMOUNT
    if request.network is not None:
        reason = network_data_reason(
            request.network,
            transaction_type=transaction_type,
            billing_amount_minor=request.billing_amount_minor,
            billing_asset=request.billing_asset,
        )
        if reason is not None:
            return reason
    if request.token:  # a network token instead of the PAN: no CVV2 with it
        if request.pan or request.cvv2:
            return Reason.FORMAT_ERROR
        if not pan_valid(request.token):
            return Reason.INVALID_PAN
        return None
    if not pan_valid(request.pan):
        return Reason.INVALID_PAN
    return None


class PinTriesExceededAction(Enum):
    """What a product does when a wrong PIN uses up the last try (stored by name; numbered
    on the wire as ``authswitch.v1.PinTriesExceededAction``)."""

    BLOCK_CARD = 1  # seed 000: the card is blocked (62 for every later request)
    BLOCK_PIN = 2  # only PIN requests are refused (75) until a PIN unblock or a new PIN


@dataclass(frozen=True, slots=True)
class ProductRules:
    """What a product permits (check 8)."""

    allowed_types: frozenset[int] = frozenset()  # empty: all
    allowed_channels: frozenset[int] = frozenset()  # empty: all
    blocked_mccs: frozenset[str] = frozenset()
    pin_tries_max: int = 3
    pin_tries_exceeded_action: PinTriesExceededAction = PinTriesExceededAction.BLOCK_CARD

    def permits(self, request: AuthorizationRequest) -> bool:
        if self.allowed_types and request.transaction_type not in self.allowed_types:
            return False
        if self.allowed_channels and request.channel not in self.allowed_channels:
            return False
        return not (request.mcc and request.mcc in self.blocked_mccs)


@dataclass(frozen=True, slots=True)
class CardFacts:
    """What rarely changes about a card, cached in process: where its state lives."""

    card_id: str
    account_id: str
    program_id: str
    product_id: str
    expiry_yymm: str
    # (asset, account id): linked accounts holding an asset the card's own account does not
    # hold, in the order they were linked (seed 001: a GBP main account, a EUR wallet).
    spend_accounts: tuple[tuple[str, str], ...] = ()
    # The card or its account has spend controls (any version): only then are they looked
    # up, so a card without any costs nothing more (service/controls.py).
    controlled: bool = False
    # The last four digits of the card's PAN (what a token payment's client is told).
    last_four: str = ""
    # The assets the card's own account holds (what a conversion converts into).
    account_assets: tuple[str, ...] = ()

    def spending(self, asset: str) -> CardFacts:
        """The card as it spends ``asset``: from the first linked account that holds it when
        the card's own account does not, else from its own account."""
        for held, account_id in self.spend_accounts:
            if held == asset:
                return CardFacts(
                    self.card_id,
                    account_id,
                    self.program_id,
                    self.product_id,
                    self.expiry_yymm,
                    controlled=self.controlled,
                    last_four=self.last_four,
                    account_assets=(asset,),
                )
        return self


class PinMode(Enum):
    """How check 5 and 6 treat the PIN of a request."""

    NONE = ""  # no PIN in the request: checks 5 and 6 do not apply
    VERIFY = "verify"
    UNBLOCK = "unblock"  # the correct PIN resets the tries even when they are exhausted
    CHANGE = "change"  # the correct PIN is replaced by the new one


@dataclass(slots=True)
class PreChecks:
    """The stateless parts of checks 4 to 8, computed before the atomic step.

    The atomic step applies them in precedence order around the stateful checks, so a
    stateless failure never hides an earlier stateful one (a lost card with a bad CVV2 is
    declined 41, not N7).
    """

    expiry_reason: Reason | None
    pin_mode: PinMode
    pvv: bytes  # the PIN verification value of the request's PIN, empty without a PIN
    new_pvv: bytes
    cvv2_reason: Reason | None
    product_reason: Reason | None


def prechecks(
    request: AuthorizationRequest,
    pan_hmac: bytes,
    card: CardFacts,
    rules: ProductRules,
    keys: CardKeys,
    today: date,
) -> PreChecks:
    expiry_reason: Reason | None = None
    if is_expired(card.expiry_yymm, today):
        expiry_reason = Reason.CARD_EXPIRED
    elif request.expiry_yymm and request.expiry_yymm != card.expiry_yymm:
        expiry_reason = Reason.EXPIRY_MISMATCH

    pin_mode = PinMode.NONE
    pvv = new_pvv = b""
    if request.pin:
        pvv = keys.pin_verification_value(pan_hmac, request.pin)
        pin_mode = PinMode.VERIFY
        if request.transaction_type == TransactionType.PIN_UNBLOCK:
            pin_mode = PinMode.UNBLOCK
        elif request.transaction_type == TransactionType.PIN_CHANGE:
            pin_mode = PinMode.CHANGE
            new_pvv = keys.pin_verification_value(pan_hmac, request.new_pin)

    cvv2_reason: Reason | None = None
    if request.cvv2 and not keys.cvv2_matches(request.pan, card.expiry_yymm, request.cvv2):
        cvv2_reason = Reason.CVV2_MISMATCH

    product_reason = None if rules.permits(request) else Reason.TRANSACTION_NOT_PERMITTED
    return PreChecks(expiry_reason, pin_mode, pvv, new_pvv, cvv2_reason, product_reason)


@dataclass(frozen=True, slots=True)
class CardState:
    """The card state the atomic step reads and writes."""

    status: CardStatus
    pin_tries: int
    pin_tries_max: int
    pvv: bytes  # empty when no PIN is set: every PIN is then wrong


class FeeMode(IntEnum):
    """What happened to the fee of a decision (numbers shared with authorize.lua)."""

    NONE = 0
    HELD = 1  # included in the hold of an approval
    POSTED = 2  # debited from actual and available (zero-value or declined request)
    NOT_APPLIED = 3  # the available balance did not cover it: not charged, notified


@dataclass(frozen=True, slots=True)
class CounterCheck:
    """A counter the decision reads (for a limit or a fee's free uses) and adds to."""

    key: str  # empty: a per-transaction limit, nothing counted
    previous: str
    amount_max_minor: int = -1  # -1: no amount cap
    count_max: int = -1  # -1: no count cap
    expires_at: datetime | None = None  # when the counter's period is over


@dataclass(frozen=True, slots=True)
class FreeUseCheck:
    """A fee charged only when its counter has used up ``free_uses``."""

    counter: CounterCheck
    free_uses: int
    fee_minor: int


@dataclass(frozen=True, slots=True)
class Charges:
    """Fees and limits of one decision, computed before the atomic step."""

    fixed_fee_minor: int = 0
    decline_fee_minor: int = 0
    limits: tuple[CounterCheck, ...] = ()
    free_uses: tuple[FreeUseCheck, ...] = ()


NO_CHARGES = Charges()

Usage = Mapping[str, tuple[int, int]]  # counter key -> (amount used, count used)


@dataclass(frozen=True, slots=True)
class DecisionResult:
    reason: Reason
    approved_minor: int  # amount held, excluding the fee
    fee_minor: int  # the fee charged (held or posted); 0 when not applied
    card: CardState
    balance: Balance | None  # after the decision; None when the account has no such asset
    pin_blocked_now: bool = False  # this request used up the last PIN try
    fee_mode: FeeMode = FeeMode.NONE
    # Counters after the decision (the changed ones; (0, 0) for a velocity bucket dropped).
    usage: Usage = field(default_factory=dict)
    velocity_rule: int = 0  # the 1-based velocity rule that declined 61/65, 0: none
    velocity_blocked: int = 0  # the rule whose decline count blocked the card, 0: none


# Declines after which a decline fee applies: the card and cardholder were verified.
FEE_BEARING_DECLINES = frozenset(
    {
        Reason.TRANSACTION_NOT_PERMITTED,
        Reason.AMOUNT_LIMIT_EXCEEDED,
        Reason.COUNT_LIMIT_EXCEEDED,
        Reason.INSUFFICIENT_FUNDS,
    }
)


def counter_deltas(
    reason: Reason,
    *,
    zero_value: bool,
    approved_minor: int,
    charged_minor: int,
    fee_mode: FeeMode,
    charges: Charges,
) -> dict[str, tuple[int, int]]:
    """What a decision adds to each counter (amount, uses), per seed 004: an approval adds its
    amount and fee and one use; a zero-value approval adds its fee and one use; a declined
    request that carries a fee adds the fee charged and one use; other declines add nothing.
    Free-use counters count approvals only."""
    deltas: dict[str, tuple[int, int]] = {}

    def add(key: str, amount: int, uses: int) -> None:
        if key:
            before = deltas.get(key, (0, 0))
            deltas[key] = (before[0] + amount, before[1] + uses)

    if reason in (Reason.APPROVED, Reason.PARTIALLY_APPROVED) and not zero_value:
        for limit in charges.limits:
            add(limit.key, approved_minor + charged_minor, 1)
        for free in charges.free_uses:
            add(free.counter.key, 0, 1)
        return deltas
    posted = fee_mode in (FeeMode.POSTED, FeeMode.NOT_APPLIED)
    if posted:
        for limit in charges.limits:
            add(limit.key, charged_minor, 1)
    if reason is Reason.APPROVED:
        if not posted:
            for limit in charges.limits:
                add(limit.key, 0, 1)
        for free in charges.free_uses:
            add(free.counter.key, 0, 1)
    return deltas


def decide(
    card: CardState,
    balance: Balance | None,
    pre: PreChecks,
    *,
    amount_minor: int,
    partial_allowed: bool,
    zero_value: bool,
    charges: Charges = NO_CHARGES,
    usage: Usage | None = None,
    checks_only: bool = False,
    velocity: Sequence[VelocityCheck] = (),
) -> DecisionResult:
    """Checks 3 to 10 in precedence order, and the resulting state. The reference for
    ``authorize.lua``: the two must agree on every input. ``velocity``: the spend controls'
    rolling windows, whose buckets are counters of ``usage``."""
    usage = usage or {}
    reason, card, blocked = _card_checks(card, pre)
    if checks_only:  # off-ledger: the client decides funds and limits
        return DecisionResult(reason or Reason.APPROVED, 0, 0, card, balance, blocked)

    fee = charges.fixed_fee_minor + sum(
        f.fee_minor for f in charges.free_uses if usage.get(f.counter.key, (0, 0))[1] >= f.free_uses
    )
    if reason is None:
        reason = _limit_reason(charges, usage, amount_minor + fee)
    velocity_rule = 0
    if reason is None and not zero_value:
        reason, velocity_rule = _velocity_limits(velocity, usage, amount_minor + fee)
    if reason is None and balance is None:
        reason = Reason.NO_BALANCE_IN_ASSET
    approved = 0
    if reason is None:
        assert balance is not None
        reason, approved = _funds(
            balance.available_minor, amount_minor, fee, zero_value=zero_value,
            partial_allowed=partial_allowed,
        )  # fmt: skip
    balance, charged, fee_mode = _charged(reason, balance, approved, fee, charges, zero_value)
    deltas = counter_deltas(
        reason, zero_value=zero_value, approved_minor=approved, charged_minor=charged,
        fee_mode=fee_mode, charges=charges,
    )  # fmt: skip
    after = {
        key: (usage.get(key, (0, 0))[0] + amount, usage.get(key, (0, 0))[1] + uses)
        for key, (amount, uses) in deltas.items()
    }
    velocity_blocked = 0
    if velocity:
        velocity_blocked = _velocity_count(
            velocity, usage, after, reason=reason, zero_value=zero_value,
            amount_minor=approved + charged,
        )  # fmt: skip
        if velocity_blocked:
            card = replace(card, status=CardStatus.BLOCKED)
    return DecisionResult(
        reason, approved, charged, card, balance, blocked, fee_mode, after, velocity_rule,
        velocity_blocked,
    )  # fmt: skip


def _card_checks(card: CardState, pre: PreChecks) -> tuple[Reason | None, CardState, bool]:
    """Checks 3 to 8 (status, expiry, PIN tries and PIN, CVV2, product): the first that
    fails, the card after them (PIN tries counted, a new PIN set) and whether the card's
    PIN was blocked now."""
    reason: Reason | None = card.status.decline_reason
    blocked = False
    if reason is None and pre.expiry_reason is not None:
        reason = pre.expiry_reason
    if reason is None and pre.pin_mode is not PinMode.NONE:
        if pre.pin_mode is not PinMode.UNBLOCK and card.pin_tries >= card.pin_tries_max:
            reason = Reason.PIN_TRIES_EXCEEDED
        elif not card.pvv or pre.pvv != card.pvv:
            tries = min(card.pin_tries + 1, card.pin_tries_max)
            blocked = tries >= card.pin_tries_max > card.pin_tries
            card = replace(card, pin_tries=tries)
            reason = Reason.INCORRECT_PIN
        else:
            card = replace(card, pin_tries=0)
            if pre.pin_mode is PinMode.CHANGE:
                card = replace(card, pvv=pre.new_pvv)
    if reason is None and pre.cvv2_reason is not None:
        reason = pre.cvv2_reason
    if reason is None and pre.product_reason is not None:
        reason = pre.product_reason
    return reason, card, blocked


def _limit_reason(charges: Charges, usage: Usage, counted_minor: int) -> Reason | None:
    """Check 9: every amount limit first, then every count limit."""
    for limit in charges.limits:
        used = usage.get(limit.key, (0, 0))[0] if limit.key else 0
        if limit.amount_max_minor >= 0 and used + counted_minor > limit.amount_max_minor:
            return Reason.AMOUNT_LIMIT_EXCEEDED
    for limit in charges.limits:
        if not limit.key:
            continue
        if limit.count_max >= 0 and usage.get(limit.key, (0, 0))[1] + 1 > limit.count_max:
            return Reason.COUNT_LIMIT_EXCEEDED
    return None


def _funds(
    available_minor: int, amount_minor: int, fee_minor: int, *, zero_value: bool,
    partial_allowed: bool,
) -> tuple[Reason, int]:  # fmt: skip
    """Check 10: the reason and the amount approved."""
    if zero_value:
        return Reason.APPROVED, 0
    if amount_minor + fee_minor <= available_minor:
        return Reason.APPROVED, amount_minor
    if partial_allowed and available_minor - fee_minor > 0:
        return Reason.PARTIALLY_APPROVED, available_minor - fee_minor
    return Reason.INSUFFICIENT_FUNDS, 0


def _charged(
    reason: Reason, balance: Balance | None, approved_minor: int, fee_minor: int,
    charges: Charges, zero_value: bool,
) -> tuple[Balance | None, int, FeeMode]:  # fmt: skip
    """The balance after the decision, the fee charged and how: held with an approval,
    posted for a zero-value request or a fee-bearing decline (when available covers it),
    else not applied."""
    if reason in (Reason.APPROVED, Reason.PARTIALLY_APPROVED) and not zero_value:
        assert balance is not None
        return (
            balance.hold(approved_minor + fee_minor),
            fee_minor,
            (FeeMode.HELD if fee_minor else FeeMode.NONE),
        )
    posting = fee_minor if reason is Reason.APPROVED else 0
    if reason in FEE_BEARING_DECLINES:
        posting = charges.decline_fee_minor
    if not posting:
        return balance, 0, FeeMode.NONE
    if balance is not None and posting <= balance.available_minor:
        return balance.debit(posting), posting, FeeMode.POSTED
    return balance, 0, FeeMode.NOT_APPLIED


def _window(usage: Usage, prefix: str, first: int, last: int) -> tuple[int, int]:
    """What a rolling window's buckets hold: (amount, count)."""
    buckets = [usage.get(f"{prefix}{b}", (0, 0)) for b in range(first, last + 1)]
    return sum(a for a, _ in buckets), sum(n for _, n in buckets)


def _velocity_limits(
    velocity: Sequence[VelocityCheck], usage: Usage, amount_with_fee: int
) -> tuple[Reason | None, int]:
    """The first velocity rule an approval would exceed, by amount (61) then approvals (65)."""
    for n, v in enumerate(velocity, 1):
        if v.amount_max_minor < 0 and v.approvals_max < 0:
            continue
        spent, uses = _window(usage, v.approvals_prefix, v.first_bucket, v.last_bucket)
        if v.amount_max_minor >= 0 and spent + amount_with_fee > v.amount_max_minor:
            return Reason.AMOUNT_LIMIT_EXCEEDED, n
        if v.approvals_max >= 0 and uses + 1 > v.approvals_max:
            return Reason.COUNT_LIMIT_EXCEEDED, n
    return None, 0


# Declines that count towards a velocity rule's decline maximum: those after the card's
# status was found good (expiry onwards).
_VELOCITY_COUNTED_DECLINES = frozenset(
    r for r in Reason if Reason.CARD_EXPIRED <= r <= Reason.NO_BALANCE_IN_ASSET
)


def _velocity_count(
    velocity: Sequence[VelocityCheck], usage: Usage, after: dict[str, tuple[int, int]], *,
    reason: Reason, zero_value: bool, amount_minor: int,
) -> int:  # fmt: skip
    """Adds the decision to the current buckets (in ``after``; the bucket that left the
    window dropped as (0, 0)); returns the 1-based rule whose decline maximum this decline
    exceeded (the card is then blocked), 0 for none."""

    def bump(prefix: str, v: VelocityCheck, amount: int) -> None:
        key = f"{prefix}{v.last_bucket}"
        was = after.get(key, usage.get(key, (0, 0)))
        after[key] = (was[0] + amount, was[1] + 1)
        after[f"{prefix}{v.first_bucket - 1}"] = (0, 0)

    blocked = 0
    if reason in (Reason.APPROVED, Reason.PARTIALLY_APPROVED):
        if not zero_value:  # a zero-value approval counts towards nothing
            for v in velocity:
                bump(v.approvals_prefix, v, amount_minor)
    elif reason in _VELOCITY_COUNTED_DECLINES:
        for n, v in enumerate(velocity, 1):
            if v.declines_max < 0:
                continue
            _, declines = _window(usage, v.declines_prefix, v.first_bucket, v.last_bucket)
            bump(v.declines_prefix, v, 0)
            if declines + 1 > v.declines_max and not blocked:
                blocked = n
    return blocked
