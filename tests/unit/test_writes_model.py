"""The ledger model, one level up from tests/unit/test_postings_model.py: random lifecycles
of a card's account, its pot and a SHADOW programme's card, where every event is built as its
whole :class:`~authswitch.domain.records.LedgerWrite` by the pure functions of
domain/writes/ (issue 19 item 1) and applied to the model as the group committer applies it
(adapters/postgres/committer.py, mirrored in :meth:`WritesMachine.commit`).

Checked after every step, as DESIGN.md §3 says: each balance is what its journal postings and
open holds say, every entry balances, a hold is released at most by what it holds (and only
as it is), and nothing that requires funds takes available below zero. Checked of every
write: its decision has the event's key; a change the model's funds step (the Lua's rule,
:func:`lua`) found covered is admitted and leaves available at or above zero, one it found
short is refused with the write's refusal; and no PAN, PIN or CVV2 anywhere in it.

Events: authorisations decided by the funds step (approved, partly, declined 51, zero-value;
fee held, posted or not applied; the cache sometimes stale, so Postgres refuses the hold),
reversals (of an open hold, full or partial; of an ended or empty original; of an original
not come yet, a tombstone its hold later takes over), advices, age-offs and operators'
releases, clearings (matched final or partial, over or under the hold, unmatched; fees and
markup), refunds, original credits (approved, declined), operators' adjustments and transfers
(a debit beyond available refused unless forced), dispute steps, and an off-ledger client's
answer on a SHADOW programme (its approval mirrored as a hold, its decline fee posted).

Not mirrored, because every write here is a batch of its own with fresh facts: duplicates
and conflicts (asserted never to arise), a converted hold's share of an early reversal (the
model converts nothing) and the dispute claim check (the rules never over-claim a clearing).

A second machine rather than the old one driven differently: the old one pins the movement
functions of domain/postings.py one by one with the simplest state, so a fault there is
shrunk to a few postings; this one needs holds keyed by message, tombstones, transactions,
clearings and disputes, the state the write functions are given as facts.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TypedDict

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from authswitch.adapters.redis.cache import AuthorizeOutcome
from authswitch.domain import postings
from authswitch.domain.authorization import (
    AuthorizationRequest,
    CardFacts,
    Charges,
    CounterCheck,
    FeeMode,
    PinTriesExceededAction,
)
from authswitch.domain.catalog import ProgramRow
from authswitch.domain.codes import Reason
from authswitch.domain.credits import CreditType
from authswitch.domain.disputes import (
    DisputeRow,
    DisputeState,
    DisputeStatus,
    DisputeStep,
    ImpossibleStep,
    plan_open,
    plan_step,
)
from authswitch.domain.fees import FeeLine, FeeQuote
from authswitch.domain.ledger import Balance
from authswitch.domain.lifecycle import HoldEnd, HoldRow, ReleasePlan, plan_clearing, plan_reversal
from authswitch.domain.messages.authorization import AuthorizeAnswer
from authswitch.domain.messages.lifecycle import Advice, Clearing, OriginalCredit, Refund, Reversal
from authswitch.domain.offledger import Assessed, ClientAnswer, Counted
from authswitch.domain.postings import Origin
from authswitch.domain.records import (
    DecisionRecord,
    DisputeOpening,
    HoldRecord,
    JournalEntry,
    LedgerWrite,
)
from authswitch.domain.writes import admin, lifecycle
from authswitch.domain.writes.authorization import (
    APPROVALS,
    HoldPlan,
    authorization_write,
    decision_record,
)
from authswitch.domain.writes.disputes import PlannedStep, step_movement, step_write
from authswitch.domain.writes.offledger import (
    FEE_NOT_APPLIED,
    FEE_NOTIFIED,
    FEE_POSTED,
    client_answered,
    mirrored,
)
from tests.support.writes import Arrived, Ids, no_secret

pytestmark = pytest.mark.timeout(120)

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
GBP = "GBP"
PAN, PIN, CVV2 = "4111111111111111", "pin:24680", "cvv:739"
SECRETS = (PAN, PIN, CVV2)
PROGRAM = ProgramRow(
    "prog-1", "client-1", "Programme", "ON_LEDGER", "UTC", "clearing-1", "fees-1",
    dispute_account_id="disputes-1", sinks=("webhook",), movements=True,
)  # fmt: skip
SHADOW = ProgramRow(
    "prog-2", "client-2", "Shadowed", "SHADOW", "UTC", "clearing-2", "fees-2",
    sinks=("client",),
)  # fmt: skip
CARD = CardFacts("card-1", "acct-1", "prog-1", "prod-1", "2912", last_four="1111")
SHADOW_CARD = CardFacts("card-2", "acct-2", "prog-2", "prod-2", "2912", last_four="1111")
POT = "pot-1"  # a second account of the card's customer, for transfers
LIMIT = CounterCheck("L:day", "L:prev", amount_max_minor=10**12, expires_at=T0 + timedelta(days=1))
CREDITS = ["LOAD", "CREDIT_ADJUSTMENT", "DEBIT_REVERSAL", "WRITE_OFF"]
DEBITS = ["FEE", "DEBIT_ADJUSTMENT", "CREDIT_REVERSAL", "WRITE_ON", "UNLOAD"]

amounts = st.integers(1, 20_000)
fees = st.integers(0, 300)


class Answered(TypedDict):
    """What every lifecycle write takes once its message is answered."""

    now: datetime
    response: bytes
    fingerprint: bytes


@dataclass(slots=True)
class Decided:
    """What the model's funds step decided of an authorisation (authorize.lua's rule)."""

    reason: Reason
    approved_minor: int
    charged_minor: int
    fee_mode: FeeMode
    held_minor: int
    posted_minor: int


def lua(available: int, amount: int, fee: int, decline_fee: int, partial: bool) -> Decided:
    """authorize.lua's funds step (no limits, no PIN): approve what available covers with its
    fee, a part of it if partial approval is allowed, else decline 51 and post the decline
    fee if available covers it; a zero-value request is approved and its fee posted."""
    zero = amount == 0
    if zero:
        reason, approved = Reason.APPROVED, 0
    elif amount + fee <= available:
        reason, approved = Reason.APPROVED, amount
    elif partial and available - fee > 0:
        reason, approved = Reason.PARTIALLY_APPROVED, available - fee
    else:
        reason, approved = Reason.INSUFFICIENT_FUNDS, 0
    if reason in APPROVALS and not zero:
        mode = FeeMode.HELD if fee else FeeMode.NONE
        return Decided(reason, approved, fee, mode, approved + fee, 0)
    posting = fee if reason is Reason.APPROVED else decline_fee
    if not posting:
        return Decided(reason, approved, 0, FeeMode.NONE, 0, 0)
    if posting <= available:
        return Decided(reason, approved, posting, FeeMode.POSTED, 0, posting)
    return Decided(reason, approved, 0, FeeMode.NOT_APPLIED, 0, 0)


class WritesMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        # The balance rows (the committer refuses a write on a row that does not exist).
        self.balances: dict[tuple[str, str], Balance] = {
            (CARD.account_id, GBP): Balance(),
            (POT, GBP): Balance(),
            (SHADOW_CARD.account_id, GBP): Balance(),
        }
        self.journal: list[JournalEntry] = []
        self.holds: dict[str, HoldRow] = {}  # the open holds, at what each still holds
        self.ended: set[str] = set()
        # hold_keys: a message's key -> its hold's id, or None for a tombstone (early reversal)
        self.hold_keys: dict[tuple[str, str], str | None] = {}
        self.tombstones: dict[tuple[str, str], tuple[int, bool]] = {}
        self.decisions: dict[tuple[str, str], DecisionRecord] = {}
        self.authorised: set[str] = set()  # message ids of authorisations decided
        self.early: list[str] = []  # originals reversed before they came
        self.asked: dict[str, tuple[int, bool]] = {}  # of each: what reversals asked, full
        self.clearings: dict[str, int] = {}  # posted clearing message id -> amount cleared
        self.claimed: dict[str, int] = defaultdict(int)  # by the clearing's open disputes
        self.disputes: dict[str, DisputeRow] = {}
        self.ids = Ids()
        self.n = 0
        self.now = T0

    # -- the committer, for one write in a batch of its own ------------------------------

    def _next(self, prefix: str) -> str:
        self.n += 1
        self.now = T0 + timedelta(seconds=self.n)
        return f"{prefix}-{self.n}"

    def commit(
        self, write: LedgerWrite, key: tuple[str, str], *, funded: bool | None = None
    ) -> bool:
        """Apply ``write`` as adapters/postgres/committer.py's write_batch does for a batch of
        one; True if its effects were applied, False if it was refused (its refusal's record
        kept instead). ``funded``: whether the rule's funds step found the changes that
        require funds covered, so the write must be admitted (True) or refused (False); None:
        it found nothing either way."""
        assert write.decision.key == key, "the decision is not under the event's key"
        assert key not in self.decisions, "the model gives every event a new key"
        no_secret(write, *SECRETS)
        # _check_holds: a release needs its hold open at exactly what it planned, once per
        # batch; a tombstone conflicts with a real hold under its key. The model hands every
        # write fresh facts, so a conflict is the write planning what it was not given.
        released: set[str] = set()
        for release in write.releases:
            plan = release.plan
            row = self.holds.get(plan.hold_id)
            assert row is not None, f"a release of a hold not open: {plan.hold_id}"
            assert plan.hold_id not in released, "two releases of one hold in a write"
            assert row.amount_minor == plan.expected_minor, "a release planned on another amount"
            assert 0 <= plan.release_minor <= plan.expected_minor
            assert (release.account_id, release.asset) == (row.account_id, row.asset)
            released.add(plan.hold_id)
        for tomb in write.tombstones:
            assert self.hold_keys.get((tomb.source, tomb.message_id)) is None
        # _refused_funds: a change on a missing balance row, or one that requires funds and
        # takes available below zero (or further below) refuses the whole write; the changes
        # replayed in order, as domain/ledger.admit_in_order does.
        refused = False
        trial: dict[tuple[str, str], Balance] = {}
        for change in write.balance_changes:
            if change.key not in self.balances:
                refused = True
                break
            proposed = trial.get(change.key, self.balances[change.key]).apply(change)
            if (
                change.requires_funds
                and change.available_delta_minor < 0
                and proposed.available_minor < 0
            ):
                refused = True
                break
            trial[change.key] = proposed
        if funded is not None:
            assert refused is not funded, (
                "refused what the funds step found covered" if funded
                else "admitted what the funds step found short"
            )  # fmt: skip
        if refused:
            assert write.refusal is not None, "a write that requires funds must say how"
            record = write.refusal()
            assert record.key == key, "the refusal is not under the event's key"
            assert record.reason == Reason.INSUFFICIENT_FUNDS
            self.decisions[key] = record
            return False
        self.decisions[key] = write.decision
        # _apply_effects: the balance deltas summed; the new holds (each taking over an early
        # reversal's tombstone under its key, written reduced by what it took, which comes
        # off the authorised delta: _INSERT_HOLDS, here unconverted only); the releases
        # (_RELEASE_HOLDS: a hold at zero ends); the tombstones (_INSERT_TOMBSTONES: added
        # to one already there); the balances; the entries.
        deltas: dict[tuple[str, str], list[int]] = {}
        for change in write.balance_changes:
            delta = deltas.setdefault(change.key, [0, 0])
            delta[0] += change.actual_delta_minor
            delta[1] += change.authorized_delta_minor
        for hold in write.holds:
            self._insert_hold(hold, deltas)
        for release in write.releases:
            plan = release.plan
            row = self.holds[plan.hold_id]
            left = row.amount_minor - plan.release_minor
            assert plan.ends is (left == 0)
            if left:
                self.holds[plan.hold_id] = replace(row, amount_minor=left)
            else:
                del self.holds[plan.hold_id]
                self.ended.add(plan.hold_id)
        for tomb in write.tombstones:
            key_ = (tomb.source, tomb.message_id)
            self.hold_keys[key_] = None
            reversed_, full = self.tombstones.get(key_, (0, False))
            self.tombstones[key_] = (reversed_ + tomb.reversed_minor, full or tomb.full)
        for account, (actual, authorized) in deltas.items():
            before = self.balances[account]
            after = Balance(before.actual_minor + actual, before.authorized_minor + authorized)
            self.balances[account] = after
        for change in write.balance_changes:
            if change.requires_funds and change.available_delta_minor < 0:
                assert self.balances[change.key].available_minor >= 0
        self.journal += write.entries
        return True

    def _insert_hold(self, hold: HoldRecord, deltas: dict[tuple[str, str], list[int]]) -> None:
        key = (hold.source, hold.message_id)
        assert hold.amount_minor > 0, "a hold of nothing"
        assert hold.billing_minor == 0  # the model converts nothing
        assert self.hold_keys.get(key) is None, "a hold key was taken by a hold"
        assert hold.id not in self.holds
        assert hold.id not in self.ended
        taken, ended = 0, False
        if key in self.tombstones:
            asked, full = self.tombstones.pop(key)
            taken = hold.amount_minor if full else min(asked, hold.amount_minor)
            ended = full or hold.amount_minor <= asked
        self.hold_keys[key] = hold.id
        deltas.setdefault((hold.account_id, hold.asset), [0, 0])[1] -= taken
        if ended:
            self.ended.add(hold.id)
            return
        self.holds[hold.id] = HoldRow(
            id=hold.id, account_id=hold.account_id, asset=hold.asset, card_id=hold.card_id,
            source=hold.source, message_id=hold.message_id,
            network_reference=hold.network_reference, amount_minor=hold.amount_minor - taken,
            original_minor=hold.amount_minor, status="OPEN", tombstone=False,
            created_at=hold.created_at, expires_at=hold.expires_at, ended_at=None,
            usage_keys=hold.usage_keys,
        )  # fmt: skip

    def _available(self, account_id: str) -> int:
        return self.balances[(account_id, GBP)].available_minor

    def _open(self, account_id: str | None = None) -> list[HoldRow]:
        return sorted(
            (h for h in self.holds.values() if account_id in (None, h.account_id)),
            key=lambda h: h.id,
        )

    def _refs(self) -> list[str]:
        return sorted({h.network_reference for h in self._open(CARD.account_id)})

    @initialize(amount=st.integers(0, 60_000), shadow=st.integers(0, 2_000))
    def load(self, amount: int, shadow: int) -> None:
        """The card's account and the shadow ledger loaded first (so that most
        authorisations find funds, and decline fees are posted)."""
        if amount:
            self._adjust(amount, "LOAD", False, CARD.account_id)
        if shadow:
            self._adjust(shadow, "LOAD", False, SHADOW_CARD.account_id)

    # -- authorisations -------------------------------------------------------------------

    @rule(
        data=st.data(), amount=st.just(0) | st.integers(1, 20_000), fee=fees, decline_fee=fees,
        partial=st.booleans(),
    )  # fmt: skip
    def authorise(
        self, data: st.DataObject, amount: int, fee: int, decline_fee: int, partial: bool
    ) -> None:
        """An authorisation decided by the funds step, maybe of an original already
        reversed (the hold then takes over the tombstone)."""
        message_id = self._next("auth")
        late = data.draw(st.booleans(), label="of an original reversed")
        asked: tuple[int, bool] | None = None  # what reversals that came first asked for
        if late and self.early:
            message_id = data.draw(st.sampled_from(self.early))
            self.early.remove(message_id)
            asked = self.asked.pop(message_id)
        self.authorised.add(message_id)
        ref = f"ref-{message_id}"
        # Mostly the cache is Postgres's balance; when it is stale (it saw more than
        # Postgres has), Postgres refuses a hold it cannot fund, and the write's refusal is
        # recorded instead. A posted fee is not checked again: it requires no funds.
        stale = data.draw(st.sampled_from([0, 0, 0, 1, 500, 5_000]), label="stale")
        available = self._available(CARD.account_id)
        decided = lua(available + stale, amount, fee, decline_fee, partial)
        funded = decided.held_minor <= available or not decided.held_minor
        before = self.balances[(CARD.account_id, GBP)]
        after = Balance(
            before.actual_minor - decided.posted_minor,
            before.authorized_minor + decided.held_minor,
        )
        request = AuthorizationRequest(
            "visa", message_id, 1, PAN, amount, GBP, ref, pin=PIN, expiry_yymm="2912",
            cvv2=CVV2, partial_allowed=partial,
        )  # fmt: skip
        arrival = Arrived(request, f"fp-{message_id}".encode(), self.now)
        result = AuthorizeOutcome(
            decided.reason, decided.approved_minor, decided.charged_minor, after, b"epoch",
            0, False, False, False, decided.fee_mode,
        )  # fmt: skip
        answer = AuthorizeAnswer(
            decided.reason, GBP, decided.approved_minor, decided.charged_minor, after,
            authorization_code="A1B2C3" if decided.reason in APPROVALS else "",
            decision_id=self.ids(),
        )  # fmt: skip

        def refusal() -> DecisionRecord:
            return decision_record(
                arrival=arrival, decision_id=answer.decision_id,
                reason=Reason.INSUFFICIENT_FUNDS, response=b"51", card=CARD, result=None,
            )  # fmt: skip

        write = authorization_write(
            arrival=arrival, card=CARD, program=PROGRAM, new_pvv=None, result=result,
            plan=HoldPlan(ref, "AUTHORIZATION", 7),
            charges=Charges(fee, decline_fee, limits=(LIMIT,)), answer=answer,
            response=b"reply", pin_action=PinTriesExceededAction.BLOCK_CARD, stand_in=None,
            refusal=refusal if result.held_minor else None, new_id=self.ids,
        )  # fmt: skip
        if not self.commit(write, ("visa", message_id), funded=funded):
            assert self.balances[(CARD.account_id, GBP)] == before
            return
        if asked is None or not decided.held_minor:
            # The cache's atomic step and the commit apply equal changes.
            assert self.balances[(CARD.account_id, GBP)] == after
            return
        # The hold holds only what the reversals that came first did not take back (all of
        # it if one was full); the rest was never held.
        (hold,) = write.holds
        reversed_minor, full = asked
        left = 0 if full else max(0, decided.held_minor - reversed_minor)
        assert (self.holds[hold.id].amount_minor if hold.id in self.holds else 0) == left
        assert self.balances[(CARD.account_id, GBP)] == Balance(
            after.actual_minor, before.authorized_minor + left
        )

    @rule(data=st.data(), requested=st.integers(0, 25_000))
    def reverse(self, data: st.DataObject, requested: int) -> None:
        """A reversal, full (0) or partial: of an open hold, of an original that holds
        nothing (recorded), or of one not yet come (a tombstone)."""
        choices = [*self._open(CARD.account_id), "ended", "early"]
        choice = data.draw(st.sampled_from(choices))
        message_id = self._next("rev")
        answered: Answered = {"now": self.now, "response": b"rev", "fingerprint": b"fp"}
        if isinstance(choice, HoldRow):
            plan = plan_reversal(choice.open_hold(), requested)
            write = lifecycle.hold_release(
                hold=choice, plan=plan, reason="REVERSAL", source="visa",
                message_id=message_id, program=PROGRAM, decision_id=self.ids(),
                note_id=self.ids(), **answered,
            )  # fmt: skip
            assert self.commit(write, ("visa", message_id))
            # It releases what it asks for, at most what is held; zero asks for all.
            released = choice.amount_minor if not requested else min(requested, choice.amount_minor)
            left = self.holds[choice.id].amount_minor if choice.id in self.holds else 0
            assert left == choice.amount_minor - released
            return
        elif choice == "ended":
            # An original decided whose hold has ended, or that held nothing.
            done = [
                m for m in sorted(self.authorised)
                if self.hold_keys.get(("visa", m)) not in self.holds
            ]  # fmt: skip
            if not done:
                return
            original = data.draw(st.sampled_from(done))
            write = lifecycle.reversal_recorded(
                request=Reversal("visa", message_id, original, requested or None, GBP, pan=PAN),
                requested_minor=requested, decision_id=self.ids(), **answered,
            )  # fmt: skip
        else:
            # An original not come yet: a new one, or one reversed before.
            original = data.draw(st.sampled_from([f"late-{self.n}", *self.early]))
            if original not in self.early:
                self.early.append(original)
            reversed_minor, full = self.asked.get(original, (0, False))
            self.asked[original] = (reversed_minor + requested, full or not requested)
            write = lifecycle.reversal_tombstoned(
                request=Reversal("visa", message_id, original, requested or None, GBP, pan=PAN),
                requested_minor=requested, card=CARD, decision_id=self.ids(), **answered,
            )  # fmt: skip
        assert self.commit(write, ("visa", message_id))

    @precondition(lambda self: self.holds)
    @rule(data=st.data(), operator=st.booleans())
    def age_off_or_release(self, data: st.DataObject, operator: bool) -> None:
        """A hold (either programme's) aged off, or released by an operator."""
        hold = data.draw(st.sampled_from(self._open()))
        end, reason = (HoldEnd.RELEASED, "RELEASE") if operator else (HoldEnd.EXPIRED, "AGE_OFF")
        plan = ReleasePlan(hold.id, hold.amount_minor, hold.amount_minor, end)
        source, message_id = ("admin", self._next("release")) if operator else (
            "system", f"ageoff:{hold.id}"
        )  # fmt: skip
        self._next("t")
        program = PROGRAM if hold.account_id == CARD.account_id else SHADOW
        write = lifecycle.hold_release(
            hold=hold, plan=plan, reason=reason, source=source, message_id=message_id,
            program=program, decision_id=self.ids(), note_id=self.ids(), now=self.now,
            response=b"", fingerprint=message_id.encode(),
        )  # fmt: skip
        assert self.commit(write, (source, message_id))
        assert hold.id in self.ended

    @rule(data=st.data(), amount=st.integers(0, 20_000))
    def advise(self, data: st.DataObject, amount: int) -> None:
        """An advice taking a transaction's open holds up or down to its amount (a
        transaction of none: a new hold)."""
        ref = data.draw(st.sampled_from([None, *self._refs()]))
        message_id = self._next("adv")
        ref = ref or f"ref-{message_id}"
        held = [h for h in self._open(CARD.account_id) if h.network_reference == ref]
        held.sort(key=lambda h: (h.created_at, h.id))
        if not held and not amount:
            return  # nothing held, nothing advised
        request = Advice(
            "visa", message_id, PAN, amount, GBP, network_reference=ref,
            original_message_id=held[0].message_id if held else "", authorization_code="X1",
            mcc="5411",
        )  # fmt: skip
        write = lifecycle.advice(
            request=request, card=CARD, program=PROGRAM, asset=GBP, amount_minor=amount,
            original=held[0] if held else None, held=held, validity_days=7, conversion=None,
            decision_id=self.ids(), hold_id=self.ids(), note_id=self.ids(), now=self.now,
            response=b"adv", fingerprint=b"fp",
        )  # fmt: skip
        assert self.commit(write, ("visa", message_id))
        left = sum(h.amount_minor for h in self._open() if h.network_reference == ref)
        assert left == amount, "an advice takes its transaction's holds to its amount"

    # -- settlement ------------------------------------------------------------------------

    @rule(
        data=st.data(), final=st.booleans(), rules_fee=fees, markup=st.integers(0, 50),
        over=st.integers(-5_000, 5_000),
    )  # fmt: skip
    def clear(
        self, data: st.DataObject, final: bool, rules_fee: int, markup: int, over: int
    ) -> None:
        """A clearing of a transaction's holds, for more or less than they hold (or of none:
        unmatched), with its fees."""
        ref = data.draw(st.sampled_from([None, *self._refs()]))
        message_id = self._next("clr")
        ref = ref or f"ref-{message_id}"
        held = [h for h in self._open(CARD.account_id) if h.network_reference == ref]
        amount = max(0, sum(h.amount_minor for h in held) + over)
        plan = plan_clearing([h.open_hold() for h in held], amount, final=final)
        request = Clearing(
            "visa", message_id, PAN, amount, GBP, ref, final=final, mcc="5411",
            merchant_name="Corner Shop",
        )  # fmt: skip
        write = lifecycle.clearing(
            request=request, card=CARD, program=PROGRAM, plan=plan, asset=GBP,
            rules_fee_minor=rules_fee, markup_minor=markup, conversion=None,
            usage=[(LIMIT.key, amount - plan.released_minor, 0)],
            expiry={LIMIT.key: T0 + timedelta(days=1)}, decision_id=self.ids(),
            entry_id=self.ids(), fee_entry_ids=(self.ids(), self.ids()),
            note_ids=(self.ids(), self.ids()), now=self.now, response=b"clr",
            fingerprint=b"fp",
        )  # fmt: skip
        before = self.balances[(CARD.account_id, GBP)]
        assert self.commit(write, ("visa", message_id))
        after = self.balances[(CARD.account_id, GBP)]
        assert after.actual_minor == before.actual_minor - amount - rules_fee - markup
        assert after.authorized_minor == before.authorized_minor - plan.released_minor
        if final:
            assert not [h for h in self._open() if h.network_reference == ref]
        if amount:
            self.clearings[message_id] = amount

    @rule(amount=amounts)
    def refund(self, amount: int) -> None:
        message_id = self._next("rfd")
        write = lifecycle.refund(
            request=Refund("visa", message_id, PAN, amount, GBP, "nref", merchant_name="Shop"),
            card=CARD, program=PROGRAM, amount_minor=amount, asset=GBP, conversion=None,
            decision_id=self.ids(), entry_id=self.ids(), note_id=self.ids(), now=self.now,
            response=b"rfd", fingerprint=b"fp",
        )  # fmt: skip
        assert self.commit(write, ("visa", message_id))

    @rule(amount=amounts, declined=st.booleans())
    def original_credit(self, amount: int, declined: bool) -> None:
        message_id = self._next("oct")
        request = OriginalCredit(
            "visa", message_id, PAN, amount, GBP, int(CreditType.PERSON_TO_PERSON), "nref",
            sender_name="A Sender", originator_name="Wallet Co",
        )  # fmt: skip
        answered: Answered = {"now": self.now, "response": b"oct", "fingerprint": b"fp"}
        if declined:
            write = lifecycle.credit_declined(
                request=request, card=CARD, reason=Reason.AMOUNT_LIMIT_EXCEEDED,
                decision_id=self.ids(), **answered,
            )  # fmt: skip
        else:
            write = lifecycle.credit(
                request=request, card=CARD, program=PROGRAM, counters=[LIMIT],
                fields=lifecycle.credit_fields(request), decision_id=self.ids(),
                entry_id=self.ids(), note_id=self.ids(), **answered,
            )  # fmt: skip
        assert self.commit(write, ("visa", message_id))

    # -- operators -------------------------------------------------------------------------

    @rule(
        amount=amounts, purpose=st.sampled_from(CREDITS + DEBITS),
        allow_negative=st.booleans(),
        account=st.sampled_from([CARD.account_id, POT, SHADOW_CARD.account_id]),
    )  # fmt: skip
    def adjust(self, amount: int, purpose: str, allow_negative: bool, account: str) -> None:
        """An operator's credit or debit; a debit beyond available is refused unless
        forced."""
        self._adjust(amount, purpose, allow_negative, account)

    def _adjust(self, amount: int, purpose: str, allow_negative: bool, account: str) -> None:
        credit = purpose in CREDITS
        key = self._next("key")
        movement = admin.adjustment(
            account_id=account, asset=GBP, amount_minor=amount, credit=credit,
            program=SHADOW if account == SHADOW_CARD.account_id else PROGRAM,
            purpose=purpose, description="goodwill", key=key, entry_id=self.ids(), at=self.now,
            allow_negative=allow_negative,
        )  # fmt: skip
        write = admin.admin_write(
            movement=movement, decision_id=self.ids(), key=key, kind=purpose,
            fingerprint=b"fp", account_id=account, asset=GBP, amount_minor=amount,
            at=self.now, response=b"adj",
        )  # fmt: skip
        # A debit that must be funded is refused beyond available; anything else never is.
        checked = not credit and not allow_negative
        funded = amount <= self._available(account) if checked else True
        self.commit(write, (admin.ADMIN_SOURCE, key), funded=funded)

    @rule(amount=amounts, to_pot=st.booleans())
    def transfer(self, amount: int, to_pot: bool) -> None:
        """Between the card's account and its pot: the source must be funded."""
        source, target = (CARD.account_id, POT) if to_pot else (POT, CARD.account_id)
        key = self._next("key")
        movement = postings.transfer(
            source, target, GBP, amount, "TRANSFER",
            Origin(self.ids(), PROGRAM.id, self.now, admin.ADMIN_SOURCE, key, "to pot"),
        )  # fmt: skip
        write = admin.admin_write(
            movement=movement, decision_id=self.ids(), key=key, kind="TRANSFER",
            fingerprint=b"fp", account_id=source, asset=GBP, amount_minor=amount,
            at=self.now, response=b"xfer",
        )  # fmt: skip
        self.commit(write, (admin.ADMIN_SOURCE, key), funded=amount <= self._available(source))

    # -- disputes ------------------------------------------------------------------------

    @rule(data=st.data(), provisional=st.booleans())
    def open_dispute(self, data: st.DataObject, provisional: bool) -> None:
        """A dispute of a posted clearing, for at most what its other disputes leave."""
        open_ = sorted(m for m, a in self.clearings.items() if a > self.claimed[m])
        if not open_:
            return
        clearing = data.draw(st.sampled_from(open_))
        amount = data.draw(st.integers(1, self.clearings[clearing] - self.claimed[clearing]))
        plan = plan_open(amount, provisional_credit=provisional)
        dispute_id, key = self.ids(), self._next("key")
        row = DisputeRow(
            PROGRAM.id, CARD.account_id, CARD.card_id, "visa", clearing, f"ref-{clearing}",
            GBP, id=dispute_id, amount_minor=amount, reason_code="13.1",
            status=plan.status.value, provisional_minor=plan.provisional_minor,
            on_ledger=True, created_at=self.now, updated_at=self.now,
        )  # fmt: skip
        opening = DisputeOpening(
            PROGRAM.id, CARD.account_id, CARD.card_id, "visa", clearing, f"ref-{clearing}",
            GBP, reason_code="13.1", on_ledger=True, cleared_minor=self.clearings[clearing],
        )  # fmt: skip
        step = PlannedStep(
            row, DisputeStep.OPEN, None, plan, admin.ADMIN_SOURCE, key, b"fp", {}, opening
        )
        self._dispute_step(step, key)
        self.claimed[clearing] += amount

    @precondition(lambda self: self.disputes)
    @rule(data=st.data(), step=st.sampled_from(list(DisputeStep)))
    def dispute_step(self, data: st.DataObject, step: DisputeStep) -> None:
        """A step of an open dispute, if its state allows it."""
        row = self.disputes[data.draw(st.sampled_from(sorted(self.disputes)))]
        status = DisputeStatus(row.status)
        try:
            plan = plan_step(DisputeState(status, row.amount_minor, row.provisional_minor), step)
        except ImpossibleStep:
            return
        key = self._next("key")
        after = replace(
            row, status=plan.status.value, provisional_minor=plan.provisional_minor,
            updated_at=self.now,
        )  # fmt: skip
        self._dispute_step(
            PlannedStep(after, step, status, plan, admin.ADMIN_SOURCE, key, b"fp", {}), key
        )
        if plan.status is DisputeStatus.MERCHANT_WON:
            self.claimed[row.clearing_message_id] -= row.amount_minor

    def _dispute_step(self, step: PlannedStep, key: str) -> None:
        before = self.balances[(CARD.account_id, GBP)]
        movement = step_movement(step=step, program=PROGRAM, new_id=self.ids)
        write = step_write(
            step=step, program=PROGRAM, movement=movement, decision_id=self.ids(),
            notification_id=self.ids(), response=b"dsp",
        )  # fmt: skip
        assert self.commit(write, (admin.ADMIN_SOURCE, key))
        after = self.balances[(CARD.account_id, GBP)]
        assert after.actual_minor - before.actual_minor == step.plan.customer_minor
        assert after.authorized_minor == before.authorized_minor
        (change,) = write.disputes
        assert (change.dispute_id, change.to_status) == (step.dispute.id, step.dispute.status)
        if DisputeStatus(step.dispute.status).final:
            self.disputes.pop(step.dispute.id, None)
        else:
            self.disputes[step.dispute.id] = step.dispute

    # -- an off-ledger client's answer on a SHADOW programme --------------------------------

    @rule(amount=amounts, approve=st.booleans(), decline_fee=fees)
    def client_answers(self, amount: int, approve: bool, decline_fee: int) -> None:
        """The client's approval, mirrored as a hold on the shadow ledger without a funds
        check; or its decline, whose decline fee the shadow ledger posts when available
        covers it."""
        message_id = self._next("oauth")
        request = AuthorizationRequest(
            "visa", message_id, 1, PAN, amount, GBP, f"ref-{message_id}", pin=PIN,
            expiry_yymm="2912", cvv2=CVV2,
        )  # fmt: skip
        arrival = Arrived(request, b"fp", self.now)
        quote = FeeQuote(
            on_decline_minor=decline_fee,
            lines=(FeeLine("r2", "Decline", decline_fee, "on_decline"),) if decline_fee else (),
        )  # fmt: skip
        assessed = Assessed(
            quote, 0, frozenset(), Counted(SHADOW_CARD.account_id, Charges(limits=(LIMIT,)), amount)
        )
        answer = (
            ClientAnswer(Reason.APPROVED, amount, "00", "123456", "ok") if approve
            else ClientAnswer(Reason.CLIENT_DECLINED, 0, "05", "", "no")
        )  # fmt: skip
        mode = FEE_NOTIFIED
        if not approve and decline_fee:  # the funds step of service/offledger.py
            covered = decline_fee <= self._available(SHADOW_CARD.account_id)
            mode = FEE_POSTED if covered else FEE_NOT_APPLIED
        write = client_answered(
            arrival=arrival, card=SHADOW_CARD, program=SHADOW,
            checks=AuthorizeOutcome(Reason.APPROVED, 0, 0, None, b"e", 0, False, False, False),
            pin_action=PinTriesExceededAction.BLOCK_CARD, new_pvv=None, answer=answer,
            latency_us=900, assessed=assessed, fee_mode=mode, decision_id=self.ids(),
            response=b"client", new_id=self.ids,
        )  # fmt: skip
        if approve:
            write = mirrored(
                write=write, arrival=arrival, card=SHADOW_CARD,
                plan=HoldPlan(request.network_reference, "AUTHORIZATION", 7),
                amount_minor=amount, hold_id=self.ids(),
            )  # fmt: skip
        before = self.balances[(SHADOW_CARD.account_id, GBP)]
        assert self.commit(write, ("visa", message_id))
        after = self.balances[(SHADOW_CARD.account_id, GBP)]
        if mode == FEE_POSTED:  # the funds step found the fee covered
            assert after.available_minor >= 0
            assert after.actual_minor == before.actual_minor - decline_fee
        held = amount if approve else 0
        assert after.authorized_minor == before.authorized_minor + held

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def balances_are_their_postings_and_open_holds(self) -> None:
        posted: dict[tuple[str, str], int] = defaultdict(int)
        for entry in self.journal:
            totals: dict[str, int] = defaultdict(int)
            for posting in entry.postings:
                posted[(posting.account_id, posting.asset)] += posting.amount_minor
                totals[posting.asset] += posting.amount_minor
            assert not any(totals.values()), f"entry {entry.id} does not balance"
        held: dict[tuple[str, str], int] = defaultdict(int)
        for hold in self.holds.values():
            assert hold.account_id is not None
            assert hold.asset is not None
            assert 0 < hold.amount_minor <= hold.original_minor, "a hold released past zero"
            held[(hold.account_id, hold.asset)] += hold.amount_minor
        for key, balance in self.balances.items():
            assert balance.actual_minor == posted[key], f"{key}: actual is not its postings"
            assert balance.authorized_minor == held[key], f"{key}: authorised is not its holds"
        assert not set(held) - set(self.balances), "a hold on an account without a balance"
        assert sum(posted.values()) == 0  # the journal as a whole balances
        assert len({e.id for e in self.journal}) == len(self.journal), "an entry id twice"

    @invariant()
    def holds_end_once(self) -> None:
        assert not set(self.holds) & self.ended
        for key, hold_id in self.hold_keys.items():
            # A key holds a tombstone until its hold takes it over, or a hold: never both.
            assert (hold_id is None) is (key in self.tombstones), key


def test_the_write_functions_keep_every_balance_derivable() -> None:
    WritesMachine.TestCase.settings = settings(
        max_examples=300, stateful_step_count=50, deadline=None
    )
    WritesMachine.TestCase().runTest()
