"""The ledger model, pure: random lifecycles of one account driven straight through
domain/postings.py (holds, releases, fees, clearings, refunds, credits, adjustments,
transfers, dispute steps), checked after every step against DESIGN.md §3's invariants:
each balance is what its journal postings and open holds say, every entry balances, a hold
is released at most by what it holds, and nothing that requires funds takes available below
zero."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from authswitch.domain import postings
from authswitch.domain.ledger import Balance, BalanceChange
from authswitch.domain.postings import Movement, Origin
from authswitch.domain.records import JournalEntry

pytestmark = pytest.mark.timeout(120)

T0 = datetime(2026, 12, 3, tzinfo=UTC)
CUSTOMER, POT, CLEARING, FEES, DISPUTES = "cust", "pot", "clearing", "fees", "disputes"
amounts = st.integers(1, 10_000)


class PostingsMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.balances: dict[str, Balance] = defaultdict(Balance)
        self.journal: list[JournalEntry] = []
        self.holds: dict[int, int] = {}  # open holds: id -> what each still holds
        self.counter = 0

    def _origin(self) -> Origin:
        self.counter += 1
        return Origin(f"e{self.counter}", "prog", T0, "visa", f"m{self.counter}")

    def _apply(self, change: BalanceChange) -> None:
        before = self.balances[change.account_id]
        after = Balance(
            before.actual_minor + change.actual_delta_minor,
            before.authorized_minor + change.authorized_delta_minor,
        )
        if change.requires_funds:  # what the group commit admits: never below zero
            assert after.available_minor >= 0
        self.balances[change.account_id] = after

    def _move(self, movement: Movement) -> None:
        for change in movement.changes:
            self._apply(change)
        self.journal += movement.entries

    # -- events ---------------------------------------------------------------------------

    @rule(amount=amounts)
    def load(self, amount: int) -> None:
        self._move(
            postings.adjustment(
                CUSTOMER, "GBP", amount, CLEARING, "LOAD", self._origin(), requires_funds=False
            )
        )

    @rule(amount=amounts)
    def authorise(self, amount: int) -> None:
        if amount > self.balances[CUSTOMER].available_minor:
            return  # declined 51: nothing moves
        self._apply(postings.hold(CUSTOMER, "GBP", amount, requires_funds=True))
        self.holds[self.counter] = amount
        self.counter += 1

    @precondition(lambda self: self.holds)
    @rule(data=st.data())
    def reverse_or_age_off(self, data: st.DataObject) -> None:
        hold = data.draw(st.sampled_from(sorted(self.holds)))
        released = data.draw(st.integers(1, self.holds[hold]))
        self._apply(postings.release(CUSTOMER, "GBP", released))
        self._end(hold, released)

    @rule(data=st.data(), amount=st.integers(0, 10_000), fee=st.integers(0, 500))
    def clear(self, data: st.DataObject, amount: int, fee: int) -> None:
        hold = data.draw(st.sampled_from([None, *sorted(self.holds)]))
        released = 0 if hold is None else self.holds[hold]  # a final clearing ends its hold
        fees = [(fee, FEES, self._origin())] if fee else []
        self._move(
            postings.clearing(CUSTOMER, "GBP", amount, released, CLEARING, self._origin(), fees)
        )
        if hold is not None:
            self._end(hold, released)

    @rule(amount=amounts, kind=st.sampled_from(["REFUND", "CREDIT"]))
    def credit(self, amount: int, kind: str) -> None:
        self._move(postings.credit(CUSTOMER, "GBP", amount, CLEARING, kind, self._origin()))

    @rule(amount=amounts)
    def fee(self, amount: int) -> None:
        if amount <= self.balances[CUSTOMER].available_minor:
            self._move(postings.fee(CUSTOMER, "GBP", amount, FEES, self._origin()))

    @rule(amount=amounts)
    def transfer_to_pot(self, amount: int) -> None:
        if amount <= self.balances[CUSTOMER].available_minor:
            self._move(postings.transfer(CUSTOMER, POT, "GBP", amount, "TRANSFER", self._origin()))

    @rule(amount=amounts, won=st.booleans())
    def dispute(self, amount: int, won: bool) -> None:
        # Opened with a provisional credit from the disputes account; lost, it is taken back.
        legs = ((CUSTOMER, amount), (CLEARING, 0), (DISPUTES, -amount))
        self._move(
            postings.dispute_step(
                CUSTOMER, "GBP", "DISPUTE_OPEN", self._origin(), legs, customer_minor=amount
            )
        )
        if not won:
            back = ((CUSTOMER, -amount), (CLEARING, 0), (DISPUTES, amount))
            self._move(
                postings.dispute_step(
                    CUSTOMER, "GBP", "DISPUTE_MERCHANT_WON", self._origin(), back,
                    customer_minor=-amount,
                )
            )  # fmt: skip

    def _end(self, hold: int, released: int) -> None:
        assert 0 < released <= self.holds[hold]  # a hold ends once, never below zero
        self.holds[hold] -= released
        if not self.holds[hold]:
            del self.holds[hold]

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def balances_are_their_postings_and_open_holds(self) -> None:
        posted: dict[str, int] = defaultdict(int)
        for entry in self.journal:
            totals: dict[str, int] = defaultdict(int)
            for posting in entry.postings:
                posted[posting.account_id] += posting.amount_minor
                totals[posting.asset] += posting.amount_minor
            assert not any(totals.values()), f"entry {entry.id} does not balance"
        for account, balance in self.balances.items():
            assert balance.actual_minor == posted[account], account
        assert self.balances[CUSTOMER].authorized_minor == sum(self.holds.values())
        assert sum(posted.values()) == 0  # the journal as a whole balances


def test_postings_keep_every_balance_derivable() -> None:
    PostingsMachine.TestCase.settings = settings(
        max_examples=60, stateful_step_count=40, deadline=None
    )
    PostingsMachine.TestCase().runTest()
