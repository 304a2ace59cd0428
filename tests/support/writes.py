"""Helpers for the tests of domain/writes: ids drawn in order, an arrival, and the two
checks every write must pass — its balance changes derivable from its journal entries, and
no card secret anywhere in it."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from authswitch.domain.authorization import AuthorizationRequest
from authswitch.domain.fx import Conversion
from authswitch.domain.records import LedgerWrite


class Ids:
    """``new_id`` for tests: "id-1", "id-2", ... and how many were drawn."""

    def __init__(self) -> None:
        self.drawn = 0

    def __call__(self) -> str:
        self.drawn += 1
        return f"id-{self.drawn}"


@dataclass
class Arrived:
    """What domain/writes/authorization.py's Arrival asks of an authorisation."""

    request: AuthorizationRequest
    fingerprint: bytes
    received: datetime
    conversion: Conversion | None = None


def derivable(write: LedgerWrite) -> None:
    """Every entry balances, and each balance change's actual delta is exactly what the
    write's entries post to that account and asset (nothing posted to a changed account
    without its change): balances stay derivable from the journal (tests/unit/
    test_postings.py)."""
    posted: dict[tuple[str, str], int] = defaultdict(int)
    for entry in write.entries:
        totals: dict[str, int] = defaultdict(int)
        for posting in entry.postings:
            posted[(posting.account_id, posting.asset)] += posting.amount_minor
            totals[posting.asset] += posting.amount_minor
        assert not any(totals.values()), "an entry that does not balance"
    for change in write.balance_changes:
        assert posted.pop(change.key, 0) == change.actual_delta_minor
    changed = {c.account_id for c in write.balance_changes}
    assert not [k for k, v in posted.items() if k[0] in changed and v]


def texts(value: object) -> list[str | bytes]:
    """Every string and bytes in ``value``: its fields, items, keys and, for a write, its
    refusal's record."""
    found: list[str | bytes] = []
    stack: list[object] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str | bytes):
            found.append(item)
        elif isinstance(item, Enum):
            found.append(item.name)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            if isinstance(item, LedgerWrite) and item.refusal is not None:
                stack.append(item.refusal())
            stack.extend(
                getattr(item, f.name) for f in dataclasses.fields(item) if f.name != "refusal"
            )
        else:
            found.append(repr(item))
    return found


def no_secret(write: LedgerWrite, *secrets: str) -> None:
    """None of ``secrets`` (a PAN, PIN, CVV2) anywhere in ``write``, as text or bytes."""
    for text in texts(write):
        for secret in secrets:
            if isinstance(text, bytes):
                assert secret.encode() not in text, f"a card secret in the write: {text!r}"
            else:
                assert secret not in text, f"a card secret in the write: {text!r}"
