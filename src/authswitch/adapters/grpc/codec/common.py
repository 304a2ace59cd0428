"""Money, balances and currency conversions as protobuf messages."""

from __future__ import annotations

from authswitch.domain.fx import Conversion
from authswitch.domain.ledger import Balance
from authswitch.v1 import common_pb2

__all__ = [
    "balance_message",
    "balance_or_none",
    "fx_message",
    "fx_or_none",
    "money_message",
    "money_or_none",
]


def money_message(amount_minor: int, asset: str) -> common_pb2.Money:
    return common_pb2.Money(amount_minor=amount_minor, asset=asset)


def balance_message(asset: str, balance: Balance) -> common_pb2.Balance:
    return common_pb2.Balance(
        asset=asset,
        actual_minor=balance.actual_minor,
        available_minor=balance.available_minor,
        authorized_minor=balance.authorized_minor,
    )


def fx_message(conversion: Conversion) -> common_pb2.FxConversion:
    return common_pb2.FxConversion(
        billing_amount=money_message(conversion.billing_minor, conversion.billing_asset),
        account_amount=money_message(conversion.account_minor, conversion.account_asset),
        markup=money_message(conversion.markup_minor, conversion.account_asset),
        rate=conversion.rate_text,
        rate_effective_from=conversion.rate_effective_from.isoformat(),
    )


# A field given None is left unset (absent on the wire): an answer that shows no amount, no
# balance or no conversion.


def money_or_none(amount_minor: int | None, asset: str) -> common_pb2.Money | None:
    return None if amount_minor is None else money_message(amount_minor, asset)


def balance_or_none(asset: str, balance: Balance | None) -> common_pb2.Balance | None:
    return None if balance is None else balance_message(asset, balance)


def fx_or_none(conversion: Conversion | None) -> common_pb2.FxConversion | None:
    return None if conversion is None else fx_message(conversion)
