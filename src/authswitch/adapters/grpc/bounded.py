"""Requests with a string longer than its maximum (authswitch.domain.bounds) are refused
before any work: an authorisation-type message (its response has a response code) is
answered 30, format error; any other call fails INVALID_ARGUMENT naming the field. Nothing
is written either way.

``Authorize`` is not wrapped here: its own path checks the same bounds
(:func:`merchant_too_long` and the domain's ``validate``) so that the answer carries its
decision fields. The maxima are the domain's (authswitch.domain.bounds); the walks over a
message are here, with protobuf.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from authswitch.domain.bounds import (
    FIELD_LEN_MAX,
    FIELD_LEN_MAX_BY_MESSAGE,
    FIELD_LEN_MAX_FALLBACK,
)
from authswitch.domain.codes import Code

__all__ = [
    "FORMAT_ERROR",
    "authorize_too_long",
    "bounded",
    "first_too_long",
    "len_max",
    "merchant_too_long",
]

FORMAT_ERROR = Code.FORMAT_ERROR  # ISO 8583 DE39

Behaviour = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


def bounded(behaviour: Behaviour, response_type: type[Message]) -> Behaviour:
    answers_with_a_code = "response_code" in response_type.DESCRIPTOR.fields_by_name

    async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, Message):
            found = first_too_long(request)
            if found is not None:
                path, longest = found
                if answers_with_a_code:
                    return cast(Any, response_type)(response_code=FORMAT_ERROR)
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{path} is longer than {longest} characters",
                )
        return await behaviour(request, context)

    return handle


def len_max(field: FieldDescriptor) -> int:
    """The longest a string field may be."""
    found = FIELD_LEN_MAX_BY_MESSAGE.get(field.full_name)
    if found is None:
        found = FIELD_LEN_MAX.get(field.name, FIELD_LEN_MAX_FALLBACK)
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
