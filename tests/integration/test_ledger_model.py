"""A Hypothesis state machine drives random sequences of lifecycle messages (authorisation,
advice, incremental, reversal — also before its original — clearing, refund, adjustments and
clock jumps with age-off) through a real server, and checks after every step against a pure
model: available = actual - authorised; every hold ends exactly once; every journal entry
balances; Redis equals the Postgres-derived balance."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import grpc
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from authswitch.app import Application
from authswitch.demo import demo_pan
from authswitch.service.clock import ManualClock
from authswitch.v1 import authorization_pb2 as pb
from authswitch.v1 import authorization_pb2_grpc as pbg
from authswitch.v1 import common_pb2 as c
from authswitch.v1 import ledger_admin_pb2 as la
from authswitch.v1 import ledger_admin_pb2_grpc as lag
from tests.conftest import TEST_KEYS, settings_for
from tests.support.stores import Stores
from tests.support.threaded import ThreadedApp

pytestmark = pytest.mark.timeout(600)

VALIDITY = timedelta(days=7)
AGE_OFF_SWEEPS_MAX = 5
amounts = st.integers(1, 5_000)


@dataclass
class Hold:
    message_id: str
    reference: str
    amount: int
    created_at: datetime
    expires_at: datetime


@dataclass
class Model:
    actual: int = 0
    holds: dict[str, Hold] = field(default_factory=dict)  # open holds by message id
    ended: set[str] = field(default_factory=set)
    references: list[str] = field(default_factory=list)  # transactions, oldest first

    @property
    def authorized(self) -> int:
        return sum(h.amount for h in self.holds.values())

    @property
    def available(self) -> int:
        return self.actual - self.authorized

    def of(self, reference: str) -> list[Hold]:
        return sorted(
            (h for h in self.holds.values() if h.reference == reference),
            key=lambda h: (h.created_at, h.message_id),
        )

    def release(self, hold: Hold, amount: int) -> None:
        hold.amount -= amount
        if hold.amount == 0:
            del self.holds[hold.message_id]
            self.ended.add(hold.message_id)


@pytest.fixture(scope="module")
def server(stores: Stores) -> Iterator[tuple[ThreadedApp, ManualClock]]:
    clock = ManualClock()
    app = Application(
        settings_for(stores, redis_key_prefix=stores.redis_prefix + "m"),
        clock=clock,
        keys=TEST_KEYS,
    )
    threaded = ThreadedApp(app)
    threaded.start()
    try:
        yield threaded, clock
    finally:
        threaded.stop()


def test_ledger_state_machine(server: tuple[ThreadedApp, ManualClock]) -> None:
    threaded, clock = server
    app = threaded.app
    channel = grpc.insecure_channel(f"127.0.0.1:{app.grpc_port}")
    auth = pbg.AuthorizationServiceStub(channel)
    admin = lag.LedgerAdminServiceStub(channel)
    client = admin.CreateClient(la.CreateClientRequest(name="model"))
    program = admin.CreateProgram(
        la.CreateProgramRequest(client_id=client.client_id, name="m", mode=c.LEDGER_MODE_ON_LEDGER)
    )
    product = admin.CreateProduct(
        la.CreateProductRequest(program_id=program.program_id, name="m", assets=["GBP"])
    )

    class LedgerMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.model = Model()
            account = admin.CreateAccount(
                la.CreateAccountRequest(product_id=product.product_id, assets=["GBP"])
            )
            self.account_id = account.account_id
            self.pan = demo_pan("41234500")
            # Identifiers from a counter, so that Hypothesis can replay a run exactly.
            self.prefix = uuid.uuid4().hex[:12]
            self.counter = 0
            self.card = admin.CreateCard(
                la.CreateCardRequest(account_id=self.account_id, pan=self.pan, expiry="3012")
            )

        def _id(self, kind: str) -> str:
            self.counter += 1
            return f"{self.prefix}-{kind}-{self.counter:04d}"

        # -- messages -------------------------------------------------------------------

        @invariant()
        def time_passes(self) -> None:
            # A second between messages, so holds of one transaction have an order.
            clock.advance(timedelta(seconds=1))

        def _authorize(self, amount: int, message_id: str, reference: str, **kw: object) -> str:
            response = auth.Authorize(
                pb.AuthorizeRequest(
                    source="visa", message_id=message_id, network_reference=reference,
                    transaction_type=c.TRANSACTION_TYPE_PURCHASE, pan=self.pan,
                    billing_amount=c.Money(amount_minor=amount, asset="GBP"),
                    merchant=pb.Merchant(mcc="5411"), channel=c.CHANNEL_ECOMMERCE, **kw,  # type: ignore[arg-type]
                )
            )  # fmt: skip
            return response.response_code

        @rule(amount=amounts)
        def authorize(self, amount: int) -> None:
            message_id, reference = self._id("m"), self._id("r")
            code = self._authorize(amount, message_id, reference)
            if amount <= self.model.available:
                assert code == "00"
                self._hold(message_id, reference, amount)
            else:
                assert code == "51"

        def _hold(self, message_id: str, reference: str, amount: int) -> None:
            now = clock.now()
            self.model.holds[message_id] = Hold(message_id, reference, amount, now, now + VALIDITY)
            if reference not in self.model.references:
                self.model.references.append(reference)

        @rule(amount=amounts, reversed_=st.integers(0, 5_000))
        def authorize_after_its_reversal(self, amount: int, reversed_: int) -> None:
            message_id, reference = self._id("m"), self._id("r")
            early = self._reverse(message_id, reversed_)
            assert early.result == pb.REVERSAL_RESULT_ORIGINAL_NOT_FOUND
            code = self._authorize(amount, message_id, reference)
            if amount > self.model.available:
                assert code == "51"
                return
            assert code == "00"
            left = 0 if reversed_ == 0 else max(amount - reversed_, 0)
            if left:
                self._hold(message_id, reference, left)
            else:
                self.model.ended.add(message_id)

        @precondition(lambda self: self.model.holds)
        @rule(data=st.data(), amount=amounts)
        def incremental(self, data: st.DataObject, amount: int) -> None:
            original = data.draw(st.sampled_from(sorted(self.model.holds)))
            message_id = self._id("m")
            code = self._authorize(
                amount,
                message_id,
                self._id("x"),
                incremental=True,
                original_message_id=original,
            )
            if amount <= self.model.available:
                assert code == "00"
                self._hold(message_id, self.model.holds[original].reference, amount)
            else:
                assert code == "51"

        @rule(amount=amounts)
        def advice(self, amount: int) -> None:
            message_id, reference = self._id("m"), self._id("r")
            response = auth.Advise(
                pb.AdviseRequest(
                    source="visa", message_id=message_id, network_reference=reference,
                    pan=self.pan, billing_amount=c.Money(amount_minor=amount, asset="GBP"),
                    merchant=pb.Merchant(mcc="5411"),
                )
            )  # fmt: skip
            assert response.result == pb.ADVICE_RESULT_HOLD_POSTED
            self._hold(message_id, reference, amount)

        def _reverse(self, original: str, amount: int) -> pb.ReverseResponse:
            request = pb.ReverseRequest(
                source="visa", message_id=self._id("x"), original_message_id=original
            )
            if amount:
                request.amount.CopyFrom(c.Money(amount_minor=amount, asset="GBP"))
            return auth.Reverse(request)

        @precondition(lambda self: self.model.holds or self.model.ended)
        @rule(data=st.data(), amount=st.integers(0, 5_000))
        def reversal(self, data: st.DataObject, amount: int) -> None:
            original = data.draw(
                st.sampled_from(sorted(self.model.holds) + sorted(self.model.ended))
            )
            response = self._reverse(original, amount)
            hold = self.model.holds.get(original)
            if hold is None:
                assert response.result in (
                    pb.REVERSAL_RESULT_HOLD_ALREADY_ENDED, pb.REVERSAL_RESULT_NOTHING_HELD,
                    pb.REVERSAL_RESULT_ORIGINAL_NOT_FOUND,
                )  # fmt: skip
                return
            release = hold.amount if amount == 0 else min(amount, hold.amount)
            assert response.released.amount_minor == release
            self.model.release(hold, release)

        @rule(
            data=st.data(), amount=st.integers(0, 6_000), final=st.booleans(), matched=st.booleans()
        )
        def clearing(self, data: st.DataObject, amount: int, final: bool, matched: bool) -> None:
            reference = self._id("r")
            if matched and self.model.references:
                reference = data.draw(st.sampled_from(self.model.references))
            response = auth.Clear(
                pb.ClearRequest(
                    source="visa", message_id=self._id("x"), network_reference=reference,
                    pan=self.pan, billing_amount=c.Money(amount_minor=amount, asset="GBP"),
                    final=final,
                )
            )  # fmt: skip
            holds = self.model.of(reference)
            released = 0
            remaining = amount
            for hold in holds:
                take = hold.amount if final else min(remaining, hold.amount)
                if take <= 0:
                    break
                remaining -= take
                released += take
                self.model.release(hold, take)
            assert response.matched == bool(released or (holds and final))
            assert response.released.amount_minor == released
            self.model.actual -= amount

        @rule(amount=amounts)
        def refund(self, amount: int) -> None:
            auth.Refund(
                pb.RefundRequest(
                    source="visa", message_id=self._id("x"), pan=self.pan,
                    billing_amount=c.Money(amount_minor=amount, asset="GBP"),
                )
            )  # fmt: skip
            self.model.actual += amount

        @rule(amount=st.integers(1, 20_000))
        def load(self, amount: int) -> None:
            admin.CreditAccount(
                la.CreditAccountRequest(
                    account_id=self.account_id, amount=c.Money(amount_minor=amount, asset="GBP"),
                    purpose=la.ADJUSTMENT_PURPOSE_LOAD, idempotency_key=self._id("x"),
                )
            )  # fmt: skip
            self.model.actual += amount

        @rule(amount=amounts)
        def debit(self, amount: int) -> None:
            request = la.DebitAccountRequest(
                account_id=self.account_id, amount=c.Money(amount_minor=amount, asset="GBP"),
                purpose=la.ADJUSTMENT_PURPOSE_DEBIT_ADJUSTMENT, idempotency_key=self._id("x"),
            )  # fmt: skip
            if amount <= self.model.available:
                admin.DebitAccount(request)
                self.model.actual -= amount
            else:
                with pytest.raises(grpc.RpcError) as caught:
                    admin.DebitAccount(request)
                assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION

        @rule(hours=st.integers(-48, 24 * 9))
        def clock_jump_and_age_off(self, hours: int) -> None:
            clock.advance(timedelta(hours=hours))
            now = clock.now()
            expired = [h for h in self.model.holds.values() if h.expires_at <= now]
            # The sweep releases what it can and leaves a hold whose release failed (a
            # timeout under load, say) to its next run, as the periodic job does: sweep
            # again while any of this account's expired holds is open (the invariants then
            # check that exactly the model's expired holds ended).
            assert app.pool is not None
            for _ in range(AGE_OFF_SWEEPS_MAX):
                threaded.call(app.lifecycle.age_off())  # every account's, earlier runs' too
                left = threaded.call(
                    app.pool.fetchval(
                        """SELECT count(*) FROM holds
                           WHERE account_id = $1 AND status = 'OPEN' AND expires_at <= $2""",
                        self.account_id, now,
                    )
                )  # fmt: skip
                if not left:
                    break
            for hold in expired:
                self.model.release(hold, hold.amount)

        # -- faults: the model does not change, the invariants must still hold -------------

        @rule()
        def cache_flushed(self) -> None:
            """Every key of this application gone from Redis (FLUSHALL, for it)."""

            async def flush() -> None:
                assert app.redis is not None
                async for key in app.redis.scan_iter(match=f"{app.cache.keys.prefix}:*"):
                    await app.redis.delete(key)

            threaded.call(flush())

        @rule()
        def scripts_flushed(self) -> None:
            redis = app.redis
            assert redis is not None

            async def flush() -> None:
                await redis.script_flush()

            threaded.call(flush())

        @rule()
        def account_evicted(self) -> None:
            threaded.call(app.cache.invalidate(self.account_id))

        # -- what must hold after every step ----------------------------------------------

        @invariant()
        def balances_match_the_model(self) -> None:
            response = admin.GetBalances(la.GetBalancesRequest(account_id=self.account_id))
            (balance,) = response.balances
            assert balance.actual_minor == self.model.actual
            assert balance.authorized_minor == self.model.authorized
            assert balance.available_minor == balance.actual_minor - balance.authorized_minor

        @invariant()
        def cache_matches_postgres(self) -> None:
            cached = threaded.call(app.cache.read_balances(self.account_id))
            if cached is not None:  # not loaded yet is fine: it loads from Postgres
                assert cached["GBP"].actual_minor == self.model.actual
                assert cached["GBP"].authorized_minor == self.model.authorized

        @invariant()
        def holds_end_exactly_once(self) -> None:
            assert app.pool is not None
            rows = threaded.call(
                app.pool.fetch(
                    """SELECT h.message_id, h.status, h.amount_minor, h.original_minor,
                              coalesce(sum(e.amount_minor), 0) AS released,
                              count(e.*) FILTER (WHERE e.kind IN ('AGE_OFF', 'RELEASE')) AS ends
                       FROM holds h LEFT JOIN hold_events e ON e.hold_id = h.id
                       WHERE h.account_id = $1 GROUP BY h.id, h.created_at""",
                    self.account_id,
                )
            )
            for row in rows:
                assert row["original_minor"] == row["amount_minor"] + row["released"], dict(row)
                assert (row["status"] == "OPEN") == (row["amount_minor"] > 0), dict(row)
                assert row["ends"] <= 1
                assert (row["status"] == "OPEN") == (row["message_id"] in self.model.holds)

        @invariant()
        def journal_balances(self) -> None:
            assert app.pool is not None
            unbalanced = threaded.call(
                app.pool.fetchval(
                    """SELECT count(*) FROM (
                           SELECT p.entry_id FROM postings p
                           WHERE p.entry_id IN (SELECT entry_id FROM postings WHERE account_id = $1)
                           GROUP BY p.entry_id, p.asset HAVING sum(p.amount_minor) <> 0) x""",
                    self.account_id,
                )
            )
            assert unbalanced == 0
            posted = threaded.call(
                app.pool.fetchval(
                    "SELECT coalesce(sum(amount_minor), 0) FROM postings WHERE account_id = $1",
                    self.account_id,
                )
            )
            assert posted == self.model.actual

    try:
        run_state_machine_as_test(
            LedgerMachine,
            settings=settings(
                max_examples=25,
                stateful_step_count=25,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
    finally:
        channel.close()
