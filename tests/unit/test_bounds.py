"""Every string field of every request has a maximum, documented in docs/client-contract.md,
and the checks find a value one character over it wherever it is nested."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from authswitch.adapters.grpc.bounded import authorize_too_long, first_too_long, len_max
from authswitch.domain.bounds import FIELD_LEN_MAX, FIELD_LEN_MAX_BY_MESSAGE
from authswitch.v1 import authorization_pb2, common_pb2, ledger_admin_pb2

ROOT = Path(__file__).resolve().parents[2]


def _request_types() -> list[Descriptor]:
    return [
        method.input_type
        for module in (authorization_pb2, ledger_admin_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]


def _string_fields(
    descriptor: Descriptor, path: tuple[FieldDescriptor, ...] = ()
) -> Iterator[tuple[FieldDescriptor, ...]]:
    """Every string field reachable from ``descriptor``, as the chain of fields to it."""
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            yield (*path, field)
        elif field.type == FieldDescriptor.TYPE_MESSAGE and field not in path:
            assert field.message_type is not None
            yield from _string_fields(field.message_type, (*path, field))


def test_every_string_field_of_every_request_has_a_maximum() -> None:
    missing = sorted(
        {
            chain[-1].full_name
            for request in _request_types()
            for chain in _string_fields(request)
            if chain[-1].full_name not in FIELD_LEN_MAX_BY_MESSAGE
            and chain[-1].name not in FIELD_LEN_MAX
        }
    )
    assert not missing, f"add these to authswitch.domain.bounds: {missing}"


def test_the_documented_table_is_the_code_table() -> None:
    text = (ROOT / "docs" / "client-contract.md").read_text()
    section = text.split("## Field lengths", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `([\w.]+)`[^|]*\| (\d+) \|", section, flags=re.MULTILINE))
    documented = {name: int(n) for name, n in rows.items()}
    expected = dict(FIELD_LEN_MAX)
    expected["Merchant.name"] = FIELD_LEN_MAX_BY_MESSAGE["authswitch.v1.Merchant.name"]
    expected["FxRate.rate"] = FIELD_LEN_MAX_BY_MESSAGE["authswitch.v1.FxRate.rate"]
    expected["CreateProductRequest.hold_validity_days_by_mcc"] = 4
    expected["shares_bps"] = 36  # keyed by customer id, in each holder request
    assert documented == expected


def _with_value(request: Message, chain: tuple[FieldDescriptor, ...], value: str) -> None:
    """Set the string at the end of ``chain`` (through repeated and map fields too)."""
    target = request
    for field in chain[:-1]:
        container = getattr(target, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            raise AssertionError("maps are handled by the caller")
        target = container.add() if field.is_repeated else container
    last = chain[-1]
    if last.is_repeated:
        getattr(target, last.name).append(value)
    else:
        setattr(target, last.name, value)


def _cases() -> list[tuple[str, Descriptor, tuple[FieldDescriptor, ...]]]:
    cases = []
    for request in _request_types():
        for chain in _string_fields(request):
            if any(
                f.message_type is not None and f.message_type.GetOptions().map_entry
                for f in chain[:-1]
            ):
                continue  # map keys: their own test
            name = request.name + "." + ".".join(f.name for f in chain)
            cases.append((name, request, chain))
    return cases


@pytest.mark.timeout(60)
def test_one_character_over_is_found_anywhere() -> None:
    for name, request_type, chain in _cases():
        longest = len_max(chain[-1])
        at_max = GetMessageClass(request_type)()
        _with_value(at_max, chain, "x" * longest)
        assert first_too_long(at_max) is None, name
        over = GetMessageClass(request_type)()
        _with_value(over, chain, "x" * (longest + 1))
        found = first_too_long(over)
        assert found is not None, name
        assert found[1] == longest, name
        assert found[0].replace("[0]", "").endswith(chain[-1].name), (name, found)


def test_map_keys_are_bounded() -> None:
    request = ledger_admin_pb2.CreateProductRequest(hold_validity_days_by_mcc={"7011": 31})
    assert first_too_long(request) is None
    request.hold_validity_days_by_mcc["70111"] = 31
    assert first_too_long(request) == ("hold_validity_days_by_mcc key", 4)


@pytest.mark.timeout(60)
def test_the_hot_path_check_of_authorize_agrees_with_the_table() -> None:
    chains = list(_string_fields(authorization_pb2.AuthorizeRequest.DESCRIPTOR))
    assert len(chains) == 20  # sixteen, token, and three in network_data
    for chain in chains:
        path = ".".join(f.name for f in chain)
        longest = len_max(chain[-1])
        request = authorization_pb2.AuthorizeRequest()
        _with_value(request, chain, "x" * longest)
        assert authorize_too_long(request) is None, path
        _with_value(request, chain, "x" * (longest + 1))
        assert authorize_too_long(request) == path


def test_the_merchant_name_is_iso_8583_de43() -> None:
    request = authorization_pb2.ClearRequest(merchant=authorization_pb2.Merchant(name="x" * 60_000))
    assert first_too_long(request) == ("merchant.name", 40)


def test_the_decision_path_bounds_every_string_of_an_authorisation() -> None:
    """Authorize checks merchant_too_long and validate() instead of authorize_too_long:
    together they refuse every string one character over its maximum."""
    from authswitch.adapters.grpc.bounded import merchant_too_long
    from authswitch.adapters.grpc.codec.authorization import authorization_request_of
    from authswitch.domain.authorization import validate
    from authswitch.domain.codes import Reason
    from authswitch.domain.money import Asset, AssetCategory

    assets = {"GBP": Asset("GBP", AssetCategory.FIAT, 2, "826")}
    descriptor = authorization_pb2.AuthorizeRequest.DESCRIPTOR
    for chain in _string_fields(descriptor):
        path = ".".join(f.name for f in chain)
        request = authorization_pb2.AuthorizeRequest(
            source="s", message_id="m", transaction_type=common_pb2.TRANSACTION_TYPE_PURCHASE,
            pan="4111111111111111",
            billing_amount=common_pb2.Money(amount_minor=100, asset="GBP"),
        )  # fmt: skip
        _with_value(request, chain, "x" * (len_max(chain[-1]) + 1))
        refused = merchant_too_long(request.merchant) is not None or validate(
            authorization_request_of(request), assets
        ) in (Reason.FORMAT_ERROR, Reason.INVALID_AMOUNT, Reason.INVALID_PAN)
        assert refused, path
