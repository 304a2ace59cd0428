"""The longest each string field of a request may be, and a check of a whole request.

Every string field of every request the server accepts has a maximum here (a unit test
walks the protos and fails on one without). Where ISO 8583 fixes a length, it is that
length; elsewhere it is the longest value the field can meaningfully hold. Beyond it an
authorisation-type message is answered response code 30 (format error) and an admin call
INVALID_ARGUMENT, in both cases before anything is written. docs/client-contract.md lists
the same table (a test compares them).

Lengths are in characters (Unicode code points), as ``len()`` counts them.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

__all__ = [
    "FIELD_LEN_MAX",
    "FIELD_LEN_MAX_BY_MESSAGE",
    "authorize_too_long",
    "first_too_long",
    "len_max",
    "merchant_too_long",
]

_UUID = 36

# By field name: a name means the same wherever it appears.
FIELD_LEN_MAX: Mapping[str, int] = MappingProxyType(
    {
        # The network's identifiers (the idempotency key is (source, message_id)).
        "source": 64,
        "message_id": 128,
        "original_message_id": 128,
        "network_reference": 128,
        "clearing_source": 64,
        "clearing_message_id": 128,
        # Card data: ISO 8583 DE2 (PAN, 12-19 digits), DE14 (expiry, YYMM), PIN 4-12 digits
        # (ISO 9564), CVV2 3-4 digits.
        "pan": 19,
        "pin": 12,
        "new_pin": 12,
        "expiry": 4,
        "cvv2": 4,
        # The merchant: DE18 (MCC), DE42 (card acceptor id), DE41 (terminal id), ISO 3166-1
        # alpha-2 country; the name is a Merchant override below.
        "mcc": 4,
        "mccs": 4,
        "blocked_mccs": 4,
        "merchant_id": 15,
        "terminal_id": 8,
        "country": 2,
        # The 3-D Secure electronic commerce indicator: two digits.
        "eci": 2,
        # Spend controls (ledger_admin.proto SpendControls).
        "allowed_mccs": 4,
        "from_mcc": 4,
        "to_mcc": 4,
        "allowed_countries": 2,
        "blocked_countries": 2,
        "allowed_merchant_ids": 15,
        "blocked_merchant_ids": 15,
        # Network tokens: a DPAN is a PAN (DE2), its expiry YYMM; a token requestor id has
        # 11 digits.
        "token": 19,
        "token_expiry": 4,
        "token_requestor_id": 11,
        "token_id": _UUID,
        # An original credit's sender (Visa's sender name).
        "sender_name": 30,
        # DE38 (approval code); a network's dispute reason code ("13.1", "4853").
        "authorization_code": 6,
        "reason_code": 8,
        # Assets: a registered code of 3-12 letters and digits; ISO 4217 numeric code.
        "asset": 12,
        "assets": 12,
        "stand_in_asset": 12,
        "base_asset": 12,
        "quote_asset": 12,
        "code": 12,
        "numeric_code": 3,
        # authswitch's own ids are UUIDs.
        "client_id": _UUID,
        "program_id": _UUID,
        "product_id": _UUID,
        "account_id": _UUID,
        "card_id": _UUID,
        "hold_id": _UUID,
        "customer_ids": _UUID,
        "profile_id": _UUID,
        "dispute_id": _UUID,
        "schedule_id": _UUID,
        "limit_id": _UUID,
        "customer_id": _UUID,
        "from_account_id": _UUID,
        "to_account_id": _UUID,
        "subject_id": _UUID,
        # Operators' text.
        "name": 200,
        "reference": 200,
        "description": 200,
        "reason": 200,
        "idempotency_key": 128,
        # Configuration.
        "time_zone": 64,  # IANA names are at most 32 today
        "target": 255,  # host:port
        "url": 2_000,
        "ca_secret": 64,  # secret names: authswitch.secrets
        "cert_secret": 64,
        "key_secret": 64,
        "token_secret": 64,
        "secret_name": 64,
        "known_hosts_secret": 64,
        "prefix": 15,  # seed 003's file name prefix
        "cron": 100,
        "directory": 4_096,  # PATH_MAX
        "host": 253,  # a DNS name
        "username": 64,
        "remote_dir": 1_024,
        # A page token this server issued.
        "page_token": 512,
    }
)

# By message and field, where a field's maximum differs from its name's.
FIELD_LEN_MAX_BY_MESSAGE: Mapping[str, int] = MappingProxyType(
    {
        # A currency conversion rate: 30 significant digits, a point, and leading zeros.
        "authswitch.v1.FxRate.rate": 64,
        # ISO 8583 DE43 (card acceptor name/location) is 40 characters.
        "authswitch.v1.Merchant.name": 40,
        # CreateProductRequest.hold_validity_days_by_mcc is keyed by MCC (DE18).
        "authswitch.v1.CreateProductRequest.HoldValidityDaysByMccEntry.key": 4,
        # Holders' shares are keyed by customer id.
        "authswitch.v1.AddAccountHolderRequest.SharesBpsEntry.key": _UUID,
        "authswitch.v1.RemoveAccountHolderRequest.SharesBpsEntry.key": _UUID,
        "authswitch.v1.SetAccountHolderSharesRequest.SharesBpsEntry.key": _UUID,
    }
)

# A field missing from both tables (the unit test makes that impossible) is held to this.
_FALLBACK_LEN_MAX = 200


def len_max(field: FieldDescriptor) -> int:
    """The longest a string field may be."""
    found = FIELD_LEN_MAX_BY_MESSAGE.get(field.full_name)
    if found is None:
        found = FIELD_LEN_MAX.get(field.name, _FALLBACK_LEN_MAX)
    return found


def first_too_long(message: Message, *, _path: str = "") -> tuple[str, int] | None:
    """The path of the first string field (nested messages, repeated fields and map keys and
    values included) longer than its maximum, with that maximum; None when all fit.

    Only fields that are set are visited, so a small request costs little."""
    for field, value in message.ListFields():
        path = f"{_path}{field.name}"
        if field.type == FieldDescriptor.TYPE_STRING:
            longest = len_max(field)
            values = value if field.is_repeated else (value,)
            if any(len(v) > longest for v in values):
                return path, longest
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            entry = field.message_type
            assert entry is not None
            if entry.GetOptions().map_entry:
                found = _map_too_long(value, entry, path)
            elif field.is_repeated:
                found = next(
                    (
                        hit
                        for index, item in enumerate(value)
                        if (hit := first_too_long(item, _path=f"{path}[{index}]."))
                    ),
                    None,
                )
            else:
                found = first_too_long(value, _path=f"{path}.")
            if found is not None:
                return found
    return None


def _map_too_long(
    mapping: Mapping[object, object], entry: object, path: str
) -> tuple[str, int] | None:
    key_field = entry.fields_by_name["key"]  # type: ignore[attr-defined]
    value_field = entry.fields_by_name["value"]  # type: ignore[attr-defined]
    for key, value in mapping.items():
        if key_field.type == FieldDescriptor.TYPE_STRING and len(str(key)) > len_max(key_field):
            return f"{path} key", len_max(key_field)
        if value_field.type == FieldDescriptor.TYPE_STRING and len(str(value)) > len_max(
            value_field
        ):
            return f"{path}[{key!r}]", len_max(value_field)
        if value_field.type == FieldDescriptor.TYPE_MESSAGE and isinstance(value, Message):
            found = first_too_long(value, _path=f"{path}[{key!r}].")
            if found is not None:
                return found
    return None


# The hot path's check of an AuthorizeRequest: the same maxima as the tables, as plain len()
# comparisons over its string fields (a fraction of first_too_long's cost). A unit
# test checks it against the tables field by field.
_SOURCE_MAX = FIELD_LEN_MAX["source"]
_MESSAGE_ID_MAX = FIELD_LEN_MAX["message_id"]
_REFERENCE_MAX = FIELD_LEN_MAX["network_reference"]
_ORIGINAL_MAX = FIELD_LEN_MAX["original_message_id"]
_PAN_MAX = FIELD_LEN_MAX["pan"]
_PIN_MAX = FIELD_LEN_MAX["pin"]
_NEW_PIN_MAX = FIELD_LEN_MAX["new_pin"]
_EXPIRY_MAX = FIELD_LEN_MAX["expiry"]
_CVV2_MAX = FIELD_LEN_MAX["cvv2"]
_ASSET_MAX = FIELD_LEN_MAX["asset"]
_MCC_MAX = FIELD_LEN_MAX["mcc"]
_COUNTRY_MAX = FIELD_LEN_MAX["country"]
_MERCHANT_NAME_MAX = FIELD_LEN_MAX_BY_MESSAGE["authswitch.v1.Merchant.name"]
_MERCHANT_ID_MAX = FIELD_LEN_MAX["merchant_id"]
_TERMINAL_ID_MAX = FIELD_LEN_MAX["terminal_id"]
_ECI_MAX = FIELD_LEN_MAX["eci"]
_TOKEN_MAX = FIELD_LEN_MAX["token"]


def authorize_too_long(request: Message) -> str | None:
    """The first string field of an ``AuthorizeRequest`` longer than its maximum, or None.
    Cheap enough for every authorisation; answer 30 (format error) when it finds one."""
    r: Any = request
    auth, merchant = r.auth, r.merchant
    checks: tuple[tuple[str, int, str], ...] = (
        (r.source, _SOURCE_MAX, "source"),
        (r.message_id, _MESSAGE_ID_MAX, "message_id"),
        (r.network_reference, _REFERENCE_MAX, "network_reference"),
        (r.original_message_id, _ORIGINAL_MAX, "original_message_id"),
        (r.pan, _PAN_MAX, "pan"),
        (r.token, _TOKEN_MAX, "token"),
        (auth.pin, _PIN_MAX, "auth.pin"),
        (auth.new_pin, _NEW_PIN_MAX, "auth.new_pin"),
        (auth.expiry, _EXPIRY_MAX, "auth.expiry"),
        (auth.cvv2, _CVV2_MAX, "auth.cvv2"),
        (r.transaction_amount.asset, _ASSET_MAX, "transaction_amount.asset"),
        (r.billing_amount.asset, _ASSET_MAX, "billing_amount.asset"),
        (merchant.mcc, _MCC_MAX, "merchant.mcc"),
        (merchant.country, _COUNTRY_MAX, "merchant.country"),
        (merchant.name, _MERCHANT_NAME_MAX, "merchant.name"),
        (merchant.merchant_id, _MERCHANT_ID_MAX, "merchant.merchant_id"),
        (merchant.terminal_id, _TERMINAL_ID_MAX, "merchant.terminal_id"),
    )
    if r.HasField("network_data"):
        network = r.network_data
        checks += (
            (network.three_ds.eci, _ECI_MAX, "network_data.three_ds.eci"),
            (network.cashback_amount.asset, _ASSET_MAX, "network_data.cashback_amount.asset"),
            (network.atm_surcharge.asset, _ASSET_MAX, "network_data.atm_surcharge.asset"),
        )
    for value, longest, path in checks:
        if len(value) > longest:
            return str(path)
    return None


def merchant_too_long(merchant: Message) -> str | None:
    """The first string of an authorisation's ``Merchant`` over its maximum, or None: the
    strings of an ``AuthorizeRequest`` that ``authorization.validate`` does not bound itself
    (it checks every other one by its form). The decision path calls this and validate()
    only, instead of :func:`authorize_too_long` (a unit test holds the two to the table)."""
    m: Any = merchant
    if len(m.name) > _MERCHANT_NAME_MAX:
        return "merchant.name"
    if len(m.merchant_id) > _MERCHANT_ID_MAX:
        return "merchant.merchant_id"
    if len(m.terminal_id) > _TERMINAL_ID_MAX:
        return "merchant.terminal_id"
    return None
