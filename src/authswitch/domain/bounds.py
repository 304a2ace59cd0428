"""The longest each string field of a request may be (the checks that walk a request are
in adapters/grpc/bounded.py).

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

__all__ = ["FIELD_LEN_MAX", "FIELD_LEN_MAX_BY_MESSAGE", "FIELD_LEN_MAX_FALLBACK"]

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
FIELD_LEN_MAX_FALLBACK = 200
