"""What a decision leaves behind: the plain records the group committer makes durable.

Treat them as values: never change one after it is built. They are not frozen dataclasses
only because every decision builds several, and a frozen dataclass costs about seven times
as much to build (each field set through ``object.__setattr__``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

from authswitch.domain.disputes import DisputedClearing
from authswitch.domain.fx import Conversion
from authswitch.domain.ledger import BalanceChange
from authswitch.domain.lifecycle import ReleasePlan

__all__ = [
    "CardUpdate",
    "ClientCall",
    "ConversionRecord",
    "DecisionRecord",
    "DisputeChange",
    "DisputeOpening",
    "HoldRecord",
    "HoldRelease",
    "JournalEntry",
    "LedgerWrite",
    "Notification",
    "Posting",
    "StoredDecision",
    "Tombstone",
    "UsageChange",
    "WriteResult",
    "WriteStatus",
]


@dataclass(slots=True)
class DecisionRecord:
    """The durable outcome of one message, keyed by (source, message_id)."""

    id: str
    source: str
    message_id: str
    kind: str
    fingerprint: bytes = field(repr=False)
    card_id: str | None
    account_id: str | None
    asset: str | None
    amount_minor: int
    approved_minor: int
    fee_minor: int
    response_code: str
    reason: int
    response: bytes = field(repr=False)
    created_at: datetime

    @property
    def key(self) -> tuple[str, str]:
        return (self.source, self.message_id)


@dataclass(slots=True)
class HoldRecord:
    id: str
    account_id: str
    asset: str
    card_id: str | None
    source: str
    message_id: str
    network_reference: str
    amount_minor: int
    fee_minor: int
    expires_at: datetime
    created_at: datetime
    kind: str = "AUTHORIZATION"  # AUTHORIZATION, INCREMENTAL, ADVICE
    usage_keys: tuple[str, ...] = ()  # the limit counters its amount was counted in
    # A converted hold's amount in the billing asset (docs/fx.md), 0 for any other: a
    # reversal that came first is in that asset, and takes its share of the hold.
    billing_minor: int = 0


@dataclass(slots=True)
class HoldRelease:
    """Release part or all of an open hold, guarded: the write conflicts unless the hold is
    still open at exactly ``plan.expected_minor``."""

    plan: ReleasePlan
    account_id: str
    asset: str
    at: datetime
    reason: str  # what released it: REVERSAL, CLEARING, AGE_OFF, RELEASE, ADVICE


@dataclass(slots=True)
class Tombstone:
    """A reversal whose original is unknown, left under the original's key so that the
    original, if it ever arrives, holds only what was not reversed."""

    source: str
    message_id: str
    reversed_minor: int
    full: bool
    at: datetime


@dataclass(slots=True)
class Posting:
    """A positive amount increases the account's balance."""

    account_id: str
    asset: str
    amount_minor: int


@dataclass(slots=True)
class JournalEntry:
    id: str
    program_id: str
    kind: str
    postings: tuple[Posting, ...]
    created_at: datetime
    source: str = ""
    message_id: str = ""
    description: str = ""
    network_reference: str = ""
    card_id: str | None = None

    def __post_init__(self) -> None:
        totals: dict[str, int] = defaultdict(int)
        for posting in self.postings:
            totals[posting.asset] += posting.amount_minor
        unbalanced = {asset: total for asset, total in totals.items() if total}
        if unbalanced or len(self.postings) < 2:
            raise ValueError(f"journal entry {self.id} does not balance: {unbalanced}")


@dataclass(slots=True)
class UsageChange:
    """Adds to a counter (a limit's or a fee rule's free uses) of an account."""

    account_id: str
    key: str
    amount_minor: int
    count: int
    expires_at: datetime


@dataclass(slots=True)
class Notification:
    """A durable notification, written with the change it tells of and delivered to each of
    ``sinks`` at least once, in order per account."""

    id: str
    program_id: str
    kind: str
    payload: dict[str, Any]
    created_at: datetime
    account_id: str | None = None
    card_id: str | None = None
    sinks: tuple[str, ...] = ()


@dataclass(slots=True)
class ClientCall:
    """What an off-ledger decision did: the client's answer, or the stand-in and why."""

    source: str
    message_id: str
    program_id: str
    outcome: str  # CLIENT or STAND_IN
    created_at: datetime
    stand_in_reason: str = ""
    stand_in_policy: str = ""
    client_decision: str = ""
    client_response_code: str = ""
    client_reason: str = ""
    latency_us: int | None = None
    # The limit counters an approval added to, and how much (given back by reversals).
    usage_keys: tuple[str, ...] = ()
    usage_minor: int = 0
    network_reference: str = ""  # of an approval that counted (its clearings adjust it)


@dataclass(slots=True)
class CardUpdate:
    """New values of a card's PIN state after a decision (None: unchanged). ``blocked``: the
    PIN tries were used up on a BLOCK_CARD product, so an ACTIVE card becomes BLOCKED (a card
    an operator has meanwhile set to another status keeps it)."""

    card_id: str
    pin_tries: int | None = None
    pvv: bytes | None = field(default=None, repr=False)
    blocked: bool = False


@dataclass(frozen=True, slots=True)
class DisputeOpening(DisputedClearing):
    """A new dispute of a clearing (its fields first, as a kept dispute's); the write
    conflicts if the clearing's disputes (but those the merchant won) would then claim more
    than ``cleared_minor``. Frozen, as :class:`DisputedClearing` is: one is built per
    opened dispute, off the decision path."""

    reason_code: str
    on_ledger: bool
    cleared_minor: int


@dataclass(slots=True)
class DisputeChange:
    """One step of a dispute, guarded: the write conflicts unless the dispute is still in
    ``from_status`` (None: it does not exist yet and ``opening`` creates it)."""

    dispute_id: str
    step: str
    from_status: str | None
    to_status: str
    amount_minor: int
    provisional_minor: int
    source: str
    message_id: str
    at: datetime
    entry_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    opening: DisputeOpening | None = None


@dataclass(slots=True)
class ConversionRecord:
    """What a message converted (docs/fx.md), kept under the message's key."""

    source: str
    message_id: str
    kind: str  # AUTHORIZATION, REVERSAL, CLEARING, REFUND
    conversion: Conversion
    created_at: datetime


@dataclass(slots=True)
class LedgerWrite:
    """One unit of work for the group committer: all of it is committed, or none.

    ``refusal`` builds the decision to record instead when Postgres refuses the funds of a
    change marked ``requires_funds`` (only possible when the cache was stale).
    """

    decision: DecisionRecord
    holds: tuple[HoldRecord, ...] = ()
    releases: tuple[HoldRelease, ...] = ()
    tombstones: tuple[Tombstone, ...] = ()
    balance_changes: tuple[BalanceChange, ...] = ()
    entries: tuple[JournalEntry, ...] = ()
    card_updates: tuple[CardUpdate, ...] = ()
    usage: tuple[UsageChange, ...] = ()
    notifications: tuple[Notification, ...] = ()
    client_calls: tuple[ClientCall, ...] = ()
    disputes: tuple[DisputeChange, ...] = ()
    conversions: tuple[ConversionRecord, ...] = ()
    refusal: Callable[[], DecisionRecord] | None = field(default=None, repr=False)


class WriteStatus(Enum):
    """What the group committer did with a write."""

    COMMITTED = "committed"  # the write's own decision is durable
    REFUSED = "refused"  # Postgres refused the funds; the refusal decision is durable
    DUPLICATE = "duplicate"  # the message id already had a decision; nothing was written
    CONFLICT = "conflict"  # a hold it releases changed meanwhile; nothing was written, retry


@dataclass(slots=True)
class StoredDecision:
    """A durable decision as read back from Postgres."""

    id: str
    source: str
    message_id: str
    fingerprint: bytes
    reason: int
    response_code: str
    response: bytes
    account_id: str | None


@dataclass(slots=True)
class WriteResult:
    status: WriteStatus
    decision: StoredDecision  # what is durable under the write's (source, message_id)
    # Of the hold this write created, what an earlier reversal had already taken back
    # (the hold was written over that reversal's tombstone); the cache must release it.
    pre_reversed_minor: int = 0
