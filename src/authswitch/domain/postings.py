"""Where money moves: every change to a balance, and the journal entries that post it, are
made here, one pure function per event (DESIGN.md §3; issue 19).

A hold moves only the authorised balance and posts nothing (a reservation, not a posting);
everything that moves the actual balance is a **Movement**: the balance changes the cache
and Postgres apply, and the balanced journal entries (double entry) that post them. Each
function's customer change is exactly the sum of its postings to the customer's account,
so every balance stays derivable from the journal and the open holds
(tests/unit/test_postings.py proves it for every event).

No I/O and no clock: ids, times and where an entry comes from (:class:`Origin`) are
arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from authswitch.domain.ledger import BalanceChange
from authswitch.domain.records import JournalEntry, Posting

__all__ = [
    "Movement",
    "Origin",
    "adjustment",
    "clearing",
    "credit",
    "dispute_step",
    "fee",
    "hold",
    "release",
    "transfer",
]


@dataclass(frozen=True, slots=True)
class Origin:
    """What a journal entry says of where it comes from: all of it but its kind and
    postings."""

    entry_id: str
    program_id: str
    at: datetime
    source: str = ""
    message_id: str = ""
    description: str = ""
    network_reference: str = ""
    card_id: str | None = None

    def entry(self, kind: str, postings: tuple[Posting, ...]) -> JournalEntry:
        return JournalEntry(
            id=self.entry_id, program_id=self.program_id, kind=kind, postings=postings,
            created_at=self.at, source=self.source, message_id=self.message_id,
            description=self.description, network_reference=self.network_reference,
            card_id=self.card_id,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Movement:
    """An event's balance changes (the customer's first) and the entries that post them."""

    changes: tuple[BalanceChange, ...]
    entries: tuple[JournalEntry, ...] = ()

    @property
    def change(self) -> BalanceChange:
        """The customer's change: what the cache's atomic step applies."""
        return self.changes[0]


# -- holds: the authorised balance only, nothing posted ------------------------------------


def hold(
    account_id: str, asset: str, amount_minor: int, *, requires_funds: bool = False
) -> BalanceChange:
    """An authorisation's or advice's hold: authorised +amount (an advice lowering a hold to
    its advised total passes a negative amount). ``requires_funds``: an approval, which must
    not take available below zero; an advice, which the network approved already, does
    not."""
    return BalanceChange(
        account_id, asset, authorized_delta_minor=amount_minor, requires_funds=requires_funds
    )


def release(account_id: str, asset: str, amount_minor: int) -> BalanceChange:
    """A hold released (reversal, age-off, an operator's release): authorised -amount."""
    return BalanceChange(account_id, asset, authorized_delta_minor=-amount_minor)


# -- movements of the actual balance -------------------------------------------------------


def fee(
    account_id: str, asset: str, fee_minor: int, fee_account_id: str, origin: Origin
) -> Movement:
    """A fee taken from the actual balance (a zero-value or declined request's fee): the
    customer -fee, the programme's fee income +fee."""
    return Movement(
        (BalanceChange(account_id, asset, actual_delta_minor=-fee_minor),),
        (_pair(origin, "FEE", account_id, fee_account_id, asset, -fee_minor),),
    )


def clearing(
    account_id: str,
    asset: str,
    amount_minor: int,
    released_minor: int,
    clearing_account_id: str,
    origin: Origin,
    fees: Sequence[tuple[int, str, Origin]] = (),
) -> Movement:
    """A clearing (seed 001): the cleared amount and its fees posted, the matched holds
    released. ``fees``: (amount, fee income account, origin) of each fee line."""
    charged = sum(f for f, _, _ in fees)
    entries = []
    if amount_minor:
        entries.append(
            _pair(origin, "CLEARING", account_id, clearing_account_id, asset, -amount_minor)
        )
    entries += [
        _pair(where, "FEE", account_id, fee_account_id, asset, -fee_minor)
        for fee_minor, fee_account_id, where in fees
        if fee_minor
    ]
    change = BalanceChange(
        account_id,
        asset,
        actual_delta_minor=-(amount_minor + charged),
        authorized_delta_minor=-released_minor,
    )
    return Movement((change,), tuple(entries))


def credit(
    account_id: str, asset: str, amount_minor: int, clearing_account_id: str, kind: str,
    origin: Origin,
) -> Movement:  # fmt: skip
    """Money from the network to the cardholder (a refund, an original credit): the
    customer +amount, the programme's clearing account -amount."""
    return Movement(
        (BalanceChange(account_id, asset, actual_delta_minor=amount_minor),),
        (_pair(origin, kind, account_id, clearing_account_id, asset, amount_minor),),
    )


def adjustment(
    account_id: str, asset: str, signed_minor: int, counter_account_id: str, kind: str,
    origin: Origin, *, requires_funds: bool,
) -> Movement:  # fmt: skip
    """An operator's credit (+) or debit (-) against a programme account; a debit that
    ``requires_funds`` must not take available below zero."""
    return Movement(
        (
            BalanceChange(
                account_id, asset, actual_delta_minor=signed_minor, requires_funds=requires_funds
            ),
        ),
        (_pair(origin, kind, account_id, counter_account_id, asset, signed_minor),),
    )


def transfer(
    from_account_id: str, to_account_id: str, asset: str, amount_minor: int, kind: str,
    origin: Origin,
) -> Movement:  # fmt: skip
    """Between two customer accounts: one entry, the source funded (it requires funds)."""
    return Movement(
        (
            BalanceChange(
                from_account_id, asset, actual_delta_minor=-amount_minor, requires_funds=True
            ),
            BalanceChange(to_account_id, asset, actual_delta_minor=amount_minor),
        ),
        (_pair(origin, kind, from_account_id, to_account_id, asset, -amount_minor),),
    )


def dispute_step(
    account_id: str,
    asset: str,
    kind: str,
    origin: Origin,
    legs: Sequence[tuple[str, int]],
    *,
    customer_minor: int,
) -> Movement:
    """A dispute step (domain/disputes.py plans its legs): one entry over the customer's,
    the clearing and the disputes accounts; the customer's balance moves by its leg."""
    postings = tuple(Posting(account, asset, amount) for account, amount in legs if amount)
    changes = (
        (BalanceChange(account_id, asset, actual_delta_minor=customer_minor),)
        if customer_minor
        else ()
    )
    return Movement(changes, (origin.entry(kind, postings),) if postings else ())


def _pair(
    origin: Origin, kind: str, account_id: str, other_account_id: str, asset: str,
    amount_minor: int,
) -> JournalEntry:  # fmt: skip
    """One entry of two postings: ``amount_minor`` to the account, its opposite to the
    other."""
    return origin.entry(
        kind,
        (
            Posting(account_id, asset, amount_minor),
            Posting(other_account_id, asset, -amount_minor),
        ),
    )
