"""Foreign exchange: a card spending in one asset from an account that holds another.

When a product allows it (``ProductFx``), an authorisation in a billing asset the card's
accounts do not hold is converted into the account's asset at the admin-set rate in force
(``FxRate``), and the product's markup is added as a fee. Everything is exact: a rate is a
decimal kept as a :class:`~fractions.Fraction`, amounts are integers of minor units, and
the one rounding (half up, to the account asset's minor unit) is stated here.

* ``rate`` is how many units of the *quote* asset (the account's) one unit of the *base*
  asset (the billing currency) buys, in major units: GBP→BTC 0.0000125 means 1.00 GBP is
  0.0000125 BTC. A pair is one direction: BTC→GBP is a rate of its own.
* A rate is in force from ``effective_from`` until the next rate of its pair takes over,
  and may be used for ``max_age_s`` after ``effective_from``: an older one is stale, and a
  stale or missing rate declines (``Reason.FX_RATE_UNAVAILABLE``) rather than guess.
* The converted amount and the markup are each rounded half up; a reversal releases the
  share of the hold it reverses (the original rate, exactly); a clearing converts at the
  rate in force when it arrives, so a rate that moved posts the difference.

No I/O and no clock: the caller passes the time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from fractions import Fraction

from authswitch.domain.fees import percent_of
from authswitch.domain.money import AMOUNT_MAX_MINOR, Asset

__all__ = [
    "MARKUP_BPS_MAX",
    "MAX_AGE_S_MAX",
    "RATE_DIGITS_MAX",
    "Conversion",
    "FxRate",
    "ProductFx",
    "RateProblem",
    "by_pair",
    "convert",
    "convert_billing",
    "convert_with_markup",
    "converted_into",
    "fx_payload",
    "parse_rate",
    "rate_in_force",
    "share_of",
]

RATE_DIGITS_MAX = 30  # significant digits of a rate
MAX_AGE_S_MAX = 31 * 86_400  # a rate older than a month is never used
MARKUP_BPS_MAX = 10_000  # 100 %
_RATE = re.compile(r"^\d{1,30}(\.\d{1,30})?$")


def parse_rate(text: str) -> Fraction:
    """``"0.0000125" -> Fraction(1, 80000)``: a positive plain decimal of at most
    RATE_DIGITS_MAX significant digits; anything else (signs, exponents, zero) is refused."""
    if not _RATE.match(text):
        raise ValueError(f"a rate is a positive plain decimal, got {text!r}")
    try:
        value = Decimal(text)
    except InvalidOperation:  # pragma: no cover - the pattern admits only decimals
        raise ValueError(f"not a decimal: {text!r}") from None
    if value <= 0:
        raise ValueError("a rate must be more than zero")
    digits = "".join(map(str, value.as_tuple().digits)).strip("0")  # exact: no context
    if len(digits) > RATE_DIGITS_MAX:
        raise ValueError(f"a rate has at most {RATE_DIGITS_MAX} significant digits")
    return Fraction(value)


def _round_half_up(value: Fraction) -> int:
    """``value`` (not negative) rounded half up to an integer."""
    assert value >= 0
    return int((value + Fraction(1, 2)).__floor__())


def convert(amount_minor: int, rate: Fraction, *, from_exponent: int, to_exponent: int) -> int:
    """``amount_minor`` of the base asset in minor units of the quote asset, rounded half
    up: ``4000`` GBP pence at 0.0000125 BTC/GBP, exponents 2 → 8, is ``50000`` satoshi."""
    assert amount_minor >= 0
    return _round_half_up(amount_minor * rate * Fraction(10) ** (to_exponent - from_exponent))


def share_of(total_minor: int, part_minor: int, whole_minor: int) -> int:
    """The share of ``total_minor`` that ``part_minor`` of ``whole_minor`` is, rounded half
    up; all of it when ``part_minor`` is the whole (what a reversal at the original rate
    releases of a converted hold)."""
    assert 0 <= part_minor <= whole_minor
    assert whole_minor > 0
    if part_minor == whole_minor:
        return total_minor
    return _round_half_up(Fraction(total_minor * part_minor, whole_minor))


@dataclass(frozen=True, slots=True)
class ProductFx:
    """A product's currency conversion: on, and its markup in basis points."""

    markup_bps: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.markup_bps <= MARKUP_BPS_MAX:
            raise ValueError(f"markup must be 0..{MARKUP_BPS_MAX} basis points")


@dataclass(frozen=True, slots=True)
class FxRate:
    """One rate of a pair, set by an admin."""

    base: str  # the billing asset
    quote: str  # the account's asset
    rate_text: str  # as set: what responses, records and files show
    effective_from: datetime
    max_age_s: int
    # The exact value of rate_text, parsed once when the rate is made.
    rate: Fraction = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0 < self.max_age_s <= MAX_AGE_S_MAX:
            raise ValueError(f"max age must be 1..{MAX_AGE_S_MAX} seconds")
        if self.base == self.quote:
            raise ValueError("a rate converts between two different assets")
        object.__setattr__(self, "rate", parse_rate(self.rate_text))

    def stale_at(self, at: datetime) -> bool:
        return (at - self.effective_from).total_seconds() > self.max_age_s


@dataclass(frozen=True, slots=True)
class RateProblem:
    """Why no rate could be used: a decline's detail for operators."""

    detail: str


def rate_in_force(
    rates: Mapping[tuple[str, str], Sequence[FxRate]], base: str, quote: str, at: datetime
) -> FxRate | RateProblem:
    """The rate of ``base``→``quote`` in force at ``at`` (the latest that has begun), or why
    there is none: no rate of the pair has begun, or the one in force is stale."""
    current: FxRate | None = None
    for candidate in rates.get((base, quote), ()):
        if candidate.effective_from <= at and (
            current is None or candidate.effective_from > current.effective_from
        ):
            current = candidate
    if current is None:
        return RateProblem(f"no {base} to {quote} rate is in force")
    if current.stale_at(at):
        return RateProblem(
            f"the {base} to {quote} rate of {current.effective_from.isoformat()} is older "
            f"than its maximum age of {current.max_age_s} s"
        )
    return current


@dataclass(frozen=True, slots=True)
class Conversion:
    """An amount of the billing asset converted into the account's asset, with its markup
    (a fee in the account's asset). What the response, the hold's record, the journal and
    the transaction file show of it."""

    billing_asset: str
    billing_minor: int
    account_asset: str
    account_minor: int  # converted, before the markup
    markup_minor: int
    rate_text: str
    rate_effective_from: datetime

    @property
    def total_minor(self) -> int:
        """What the account gives: the converted amount and the markup."""
        return self.account_minor + self.markup_minor


def convert_with_markup(
    billing_minor: int,
    rate: FxRate,
    markup: ProductFx,
    *,
    from_exponent: int,
    to_exponent: int,
) -> Conversion:
    """``billing_minor`` of ``rate.base`` converted at ``rate``, with the markup as a fee:
    ``percent_of`` the converted amount (half up, as every percentage fee)."""
    converted = convert(
        billing_minor, rate.rate, from_exponent=from_exponent, to_exponent=to_exponent
    )
    return Conversion(
        rate.base,
        billing_minor,
        rate.quote,
        converted,
        percent_of(converted, markup.markup_bps),
        rate.rate_text,
        rate.effective_from,
    )


def by_pair(rates: Iterable[FxRate]) -> dict[tuple[str, str], list[FxRate]]:
    """Rates grouped by (base, quote), oldest first."""
    grouped: dict[tuple[str, str], list[FxRate]] = {}
    for rate in sorted(rates, key=lambda r: r.effective_from):
        grouped.setdefault((rate.base, rate.quote), []).append(rate)
    return grouped


def converted_into(
    product_assets: Sequence[str], account_assets: Sequence[str], billing_asset: str
) -> str | None:
    """The asset a message in ``billing_asset`` converts into: the first of the product's
    assets that the account holds. None when nothing converts: the account holds the billing
    asset itself (or no asset at all)."""
    if not account_assets or billing_asset in account_assets:
        return None
    return next((a for a in product_assets if a in account_assets), account_assets[0])


def convert_billing(
    billing_asset: str,
    billing_minor: int,
    into: str,
    *,
    rates: Mapping[tuple[str, str], Sequence[FxRate]],
    markup: ProductFx,
    assets: Mapping[str, Asset],
    at: datetime,
) -> Conversion | RateProblem:
    """``billing_minor`` of ``billing_asset`` in ``into`` at the rate in force at ``at``,
    with ``markup``; or why it cannot be converted."""
    found = rate_in_force(rates, billing_asset, into, at)
    if isinstance(found, RateProblem):
        return found
    conversion = convert_with_markup(
        billing_minor, found, markup,
        from_exponent=assets[billing_asset].exponent, to_exponent=assets[into].exponent,
    )  # fmt: skip
    if conversion.total_minor > AMOUNT_MAX_MINOR:
        return RateProblem(f"the amount converted into {into} is out of range")
    return conversion


def fx_payload(conversion: Conversion | None) -> dict[str, object]:
    """What a notification of a converted message adds: the billing amount and the rate."""
    if conversion is None:
        return {}
    return {
        "billing_amount_minor": conversion.billing_minor,
        "billing_asset": conversion.billing_asset,
        "fx_rate": conversion.rate_text,
        "fx_markup_minor": conversion.markup_minor,
    }
