"""The point-of-sale, authentication and risk data of an authorisation (pure).

What the network message says about how, where and by whom the card was used: ISO 8583
DE22 (POS entry mode), DE25 / DE61 (terminal, card and cardholder presence), the 3-D Secure
outcome and its electronic commerce indicator, the stored-credential flags (recurring, card
on file, merchant initiated), the address verification result, cash back (DE54), the ATM
operator's surcharge (DE28) and the network's risk score.

Every value is validated: a number outside its set answers 30 (format error), an amount
that does not fit its transaction answers 13 (invalid amount). Cash back and the ATM
surcharge are **part of** the billing amount, as the networks send them (Visa and
Mastercard include both in DE4/DE6), so they are held with the purchase and nothing is
added to the hold for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, unique

from authswitch.domain.codes import Reason

__all__ = [
    "ECI_VALUES",
    "NETWORK_RISK_SCORE_MAX",
    "AvsResult",
    "NetworkData",
    "PosEntryMode",
    "Presence",
    "TerminalType",
    "ThreeDSecureResult",
    "network_data_reason",
]


@unique
class PosEntryMode(IntEnum):
    """Numbered as ``authswitch.v1.PosEntryMode``."""

    UNSPECIFIED = 0
    MANUAL = 1
    MAGNETIC_STRIPE = 2
    CHIP = 3
    CONTACTLESS = 4
    CREDENTIAL_ON_FILE = 5
    ECOMMERCE = 6
    CHIP_FALLBACK = 7


@unique
class TerminalType(IntEnum):
    """Numbered as ``authswitch.v1.TerminalType``."""

    UNSPECIFIED = 0
    ATTENDED = 1
    UNATTENDED = 2
    ATM = 3
    ECOMMERCE = 4
    MOBILE_POS = 5
    MOTO = 6


@unique
class Presence(IntEnum):
    """Numbered as ``authswitch.v1.Presence``."""

    UNSPECIFIED = 0
    PRESENT = 1
    NOT_PRESENT = 2


@unique
class ThreeDSecureResult(IntEnum):
    """Numbered as ``authswitch.v1.ThreeDSecureResult``."""

    UNSPECIFIED = 0
    AUTHENTICATED = 1
    ATTEMPTED = 2
    FAILED = 3
    NOT_PERFORMED = 4


@unique
class AvsResult(IntEnum):
    """Numbered as ``authswitch.v1.AvsResult``."""

    UNSPECIFIED = 0
    MATCH = 1
    ADDRESS_ONLY = 2
    POSTAL_CODE_ONLY = 3
    NO_MATCH = 4
    UNAVAILABLE = 5


# Electronic commerce indicators: Mastercard's 00/01/02 and the 05/06/07 of Visa, Amex,
# Discover and JCB. Anything else is a format error.
ECI_VALUES = frozenset({"00", "01", "02", "05", "06", "07"})
# The networks' risk scores, on one scale: Mastercard's 0-999 as sent, Visa's 0-99 times 10.
NETWORK_RISK_SCORE_MAX = 999

_POS_ENTRY_MODES = frozenset(int(m) for m in PosEntryMode)
_TERMINAL_TYPES = frozenset(int(t) for t in TerminalType)
_PRESENCES = frozenset(int(p) for p in Presence)
_THREE_DS_RESULTS = frozenset(int(r) for r in ThreeDSecureResult)
_AVS_RESULTS = frozenset(int(r) for r in AvsResult)

# Transaction types (authswitch.v1.TransactionType numbers) that may carry each amount.
_PURCHASE = 1
_CASH_WITHDRAWAL = 2


@dataclass(frozen=True, slots=True)
class NetworkData:
    """The network data of one request, as numbers of the wire enums (validated by
    :func:`network_data_reason` before anything uses them)."""

    pos_entry_mode: int = 0
    terminal_type: int = 0
    card_present: int = 0
    cardholder_present: int = 0
    three_ds_result: int = 0
    eci: str = ""
    recurring: bool = False
    card_on_file: bool = False
    merchant_initiated: bool = False
    avs_result: int = 0
    cashback_minor: int = 0
    cashback_asset: str = ""
    atm_surcharge_minor: int = 0
    atm_surcharge_asset: str = ""
    network_risk_score: int | None = None

    @property
    def three_ds_authenticated(self) -> bool:
        return self.three_ds_result == ThreeDSecureResult.AUTHENTICATED

    def as_payload(self) -> dict[str, object]:
        """The data by name, for records and notifications (only what was sent)."""
        payload: dict[str, object] = {}
        if self.pos_entry_mode:
            payload["pos_entry_mode"] = PosEntryMode(self.pos_entry_mode).name
        if self.terminal_type:
            payload["terminal_type"] = TerminalType(self.terminal_type).name
        if self.card_present:
            payload["card_present"] = self.card_present == Presence.PRESENT
        if self.cardholder_present:
            payload["cardholder_present"] = self.cardholder_present == Presence.PRESENT
        if self.three_ds_result:
            payload["three_ds_result"] = ThreeDSecureResult(self.three_ds_result).name
        if self.eci:
            payload["eci"] = self.eci
        for flag in ("recurring", "card_on_file", "merchant_initiated"):
            if getattr(self, flag):
                payload[flag] = True
        if self.avs_result:
            payload["avs_result"] = AvsResult(self.avs_result).name
        if self.cashback_minor:
            payload["cashback_minor"] = self.cashback_minor
        if self.atm_surcharge_minor:
            payload["atm_surcharge_minor"] = self.atm_surcharge_minor
        if self.network_risk_score is not None:
            payload["network_risk_score"] = self.network_risk_score
        return payload


def network_data_reason(
    data: NetworkData, *, transaction_type: int, billing_amount_minor: int, billing_asset: str
) -> Reason | None:
    """Why ``data`` is malformed for its request (30 or 13), or None when it is well formed."""
    if (
        data.pos_entry_mode not in _POS_ENTRY_MODES
        or data.terminal_type not in _TERMINAL_TYPES
        or data.card_present not in _PRESENCES
        or data.cardholder_present not in _PRESENCES
        or data.three_ds_result not in _THREE_DS_RESULTS
        or data.avs_result not in _AVS_RESULTS
    ):
        return Reason.FORMAT_ERROR
    if data.eci and data.eci not in ECI_VALUES:
        return Reason.FORMAT_ERROR
    if data.network_risk_score is not None and not (
        0 <= data.network_risk_score <= NETWORK_RISK_SCORE_MAX
    ):
        return Reason.FORMAT_ERROR
    # A card present at the terminal cannot have been keyed in by a merchant on file, nor
    # be an e-commerce entry: contradictory presence is a malformed message.
    if data.card_present == Presence.PRESENT and data.pos_entry_mode in (
        PosEntryMode.CREDENTIAL_ON_FILE,
        PosEntryMode.ECOMMERCE,
    ):
        return Reason.FORMAT_ERROR
    for amount, asset, allowed_type in (
        (data.cashback_minor, data.cashback_asset, _PURCHASE),
        (data.atm_surcharge_minor, data.atm_surcharge_asset, _CASH_WITHDRAWAL),
    ):
        if not amount and not asset:
            continue
        if asset != billing_asset:
            return Reason.FORMAT_ERROR
        if transaction_type != allowed_type:
            return Reason.FORMAT_ERROR
        if not 0 <= amount <= billing_amount_minor:
            return Reason.INVALID_AMOUNT
    return None
