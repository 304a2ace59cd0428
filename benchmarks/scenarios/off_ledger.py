"""Off-ledger scenarios: the real ``authswitch serve`` running its core checks, then asking
the client's DecisionService within the program's deadline, and standing in when it does not
answer in time.

The client is ``benchmarks/loadgen/decision_stub`` (C++, built with the load generator),
started before the server and stopped by its pid after it; its CPU is measured over each
phase like the server's (the ``client`` column). It approves every Decide after a fixed
5 ms, or never answers (``stand_in``). A Python stub (grpc.aio on uvloop) was tried first:
about 0.9 ms of CPU per call, as much as the server under test on these two cores, and
uvloop's millisecond timers fired up to 1 ms early or late.

Fixtures are made through LedgerAdminService as tests/e2e/test_offledger.py does: one client;
``profile.off_ledger_programs`` off-ledger programs, each routed to the stub (plain text, no
bearer token: neither TLS nor the token is measured), with the default deadline made explicit
(``DEADLINE_MS``) and an approving stand-in (so that a stand-in answers 00, like the client);
each program with one GBP product, one account and one card. Requests are spread uniformly
over the cards. No notification sink is subscribed: stand-in advices are written to the
outbox with the decision, but nothing delivers them during the run.

After each phase, what authswitch recorded of its calls to the client (``client_calls``: who
decided, why it stood in, the call's latency as authswitch timed it) is added to the phase.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any, ClassVar

import asyncpg
import grpc

from authswitch.v1 import common_pb2, ledger_admin_pb2, ledger_admin_pb2_grpc
from benchmarks.fixtures import AMOUNT_MAX_MINOR, ASSET, EXPIRY, amounts, card_pan
from benchmarks.loadgen import Card, Workload
from benchmarks.process import ServerProcess, ServerSpec
from benchmarks.scenarios.base import LatencyTarget, ScenarioContext, base_env
from benchmarks.scenarios.on_ledger import AuthswitchScenario

__all__ = ["CLIENT_DELAY_MS", "DEADLINE_MS", "OffLedgerForward", "StandIn"]

# The program's deadline for the client's answer: SetProgramRouting's default, made explicit.
DEADLINE_MS = 1_000
CLIENT_DELAY_MS = 5  # the stub's own latency before each approval
# Stand-in approvals: any benchmark amount, and no daily cap within reach.
STAND_IN_DAILY_MAX_MINOR = 10**15


@dataclass(frozen=True, slots=True)
class Breaker:
    """A program's circuit-breaker settings; 0 leaves authswitch's default (5 consecutive
    failures, 50 % of a 20-call window, open 5,000 ms)."""

    failures: int = 0
    error_rate_pct: int = 0
    window: int = 0
    open_ms: int = 0


_CLIENT_CALLS = """
    SELECT outcome, stand_in_reason, count(*) AS n,
           percentile_disc(0.5) WITHIN GROUP (ORDER BY latency_us) AS p50_us,
           percentile_disc(0.99) WITHIN GROUP (ORDER BY latency_us) AS p99_us,
           max(latency_us) AS max_us
    FROM client_calls
    WHERE starts_with(message_id, $1)
    GROUP BY outcome, stand_in_reason
    ORDER BY n DESC
"""


def uniform_sequence(rng: random.Random, cards: int, length: int) -> list[tuple[int, int]]:
    """Each request's card chosen uniformly."""
    return [(rng.randrange(cards), amount) for amount in amounts(rng, length)]


class OffLedgerScenario(AuthswitchScenario):
    """``authswitch serve`` with off-ledger programs routed to the decision stub."""

    never_answer: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self._client: ServerProcess | None = None
        self._client_listen = ""
        self._programs: list[str] = []
        self._generation = 0  # how many times the programs' routing was set again

    # -- the client ---------------------------------------------------------------------------

    async def setup(self, ctx: ScenarioContext) -> None:
        self._client_listen = ctx.free_listen()
        argv = [str(ctx.binaries.decision_stub), "--listen", self._client_listen]
        if self.never_answer:
            argv.append("--never-answer")
        else:
            argv += ["--delay-us", str(CLIENT_DELAY_MS * 1000)]
        client = ServerProcess(
            "decision_stub",
            ServerSpec(argv, base_env()),
            self._client_listen,
            ctx.workdir / "client.log",
        )
        await client.start(timeout_s=30)
        self._client = client
        mode = "never answering" if self.never_answer else f"approving after {CLIENT_DELAY_MS} ms"
        ctx.say(f"  client stub on {self._client_listen}, {mode}")

    async def teardown(self, ctx: ScenarioContext) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.stop()
        self._programs = []
        self._generation = 0

    def helper_pids(self) -> dict[str, int]:
        return {"client": self._client.pid} if self._client is not None else {}

    # -- fixtures -----------------------------------------------------------------------------

    def breaker(self) -> Breaker:
        """The programs' circuit breaker: authswitch's defaults."""
        return Breaker()

    def _routing(self, program_id: str) -> ledger_admin_pb2.SetProgramRoutingRequest:
        breaker = self.breaker()
        return ledger_admin_pb2.SetProgramRoutingRequest(
            program_id=program_id,
            target=self._client_listen,
            tls=ledger_admin_pb2.CLIENT_TLS_NONE,
            deadline_ms=DEADLINE_MS,
            stand_in=ledger_admin_pb2.STAND_IN_POLICY_APPROVE,
            stand_in_asset=ASSET,
            stand_in_transaction_max_minor=AMOUNT_MAX_MINOR,
            stand_in_daily_max_minor=STAND_IN_DAILY_MAX_MINOR,
            breaker_failures=breaker.failures,
            breaker_error_rate_pct=breaker.error_rate_pct,
            breaker_window=breaker.window,
            breaker_open_ms=breaker.open_ms,
        )

    async def workload(self, ctx: ScenarioContext) -> Workload:
        count = ctx.profile.off_ledger_programs
        ctx.say(f"  creating {count} off-ledger programs (one account and card each)")
        cards: list[Card | None] = [None] * count
        programs: list[str] = [""] * count
        async with grpc.aio.insecure_channel(ctx.grpc_listen) as channel:
            admin = ledger_admin_pb2_grpc.LedgerAdminServiceStub(channel)
            client = await admin.CreateClient(
                ledger_admin_pb2.CreateClientRequest(name="bench off-ledger")
            )

            async def issue(index: int) -> None:
                program = await admin.CreateProgram(
                    ledger_admin_pb2.CreateProgramRequest(
                        client_id=client.client_id,
                        name=f"bench off-ledger {index}",
                        mode=common_pb2.LEDGER_MODE_OFF_LEDGER,
                        time_zone="Europe/London",
                        country="GB",
                    )
                )
                await admin.SetProgramRouting(self._routing(program.program_id))
                product = await admin.CreateProduct(
                    ledger_admin_pb2.CreateProductRequest(
                        program_id=program.program_id,
                        name="bench GBP",
                        account_types=[common_pb2.ACCOUNT_TYPE_SINGLE],
                        assets=[ASSET],
                    )
                )
                account = await admin.CreateAccount(
                    ledger_admin_pb2.CreateAccountRequest(
                        product_id=product.product_id,
                        account_type=common_pb2.ACCOUNT_TYPE_SINGLE,
                        assets=[ASSET],
                        name="bench",
                    )
                )
                pan = card_pan(index)
                created = await admin.CreateCard(
                    ledger_admin_pb2.CreateCardRequest(
                        account_id=account.account_id,
                        pan=pan,
                        expiry=EXPIRY,
                        status=common_pb2.CARD_STATUS_ACTIVE,
                    )
                )
                cards[index] = Card(pan, EXPIRY, created.cvv2)
                programs[index] = program.program_id

            for start in range(0, count, 16):
                await asyncio.gather(*(issue(i) for i in range(start, min(start + 16, count))))
        self._programs = programs
        issued = [card for card in cards if card is not None]
        assert len(issued) == count
        return Workload(issued, uniform_sequence(ctx.rng, count, ctx.profile.sequence_length))

    # -- per phase ----------------------------------------------------------------------------

    async def after_phase(self, ctx: ScenarioContext, message_id_prefix: str) -> dict[str, Any]:
        """Who decided the phase's requests, and the client calls' latency as authswitch
        timed them (from ``client_calls``, written with each decision)."""
        conn = await asyncpg.connect(ctx.postgres_dsn)
        try:
            rows = await conn.fetch(_CLIENT_CALLS, message_id_prefix + "-")
        finally:
            await conn.close()
        by_outcome = [
            {
                "outcome": row["outcome"],
                "stand_in_reason": row["stand_in_reason"] or None,
                "calls": row["n"],
                "latency_p50_ms": _ms(row["p50_us"]),
                "latency_p99_ms": _ms(row["p99_us"]),
                "latency_max_ms": _ms(row["max_us"]),
            }
            for row in rows
        ]
        return {"client_calls": by_outcome}


def _ms(us: int | None) -> float | None:
    return None if us is None else round(us / 1000, 3)


class OffLedgerForward(OffLedgerScenario):
    name = "off_ledger_forward"
    description = (
        "The real `authswitch serve` with off-ledger programs (64 in the full run, 8 in the "
        "quick one; one card each, requests spread uniformly): core checks, then each "
        f"authorisation forwarded to the client's DecisionService, a C++ stub approving after "
        f"a fixed {CLIENT_DELAY_MS} ms (plain text, on this machine); deadline {DEADLINE_MS:,} "
        "ms, the decision recorded by group commit before the answer."
    )
    target = LatencyTarget(
        text=f"off-ledger added latency p99 ≤ 2 ms over the client's own ({CLIENT_DELAY_MS} ms)",
        baseline_ms=CLIENT_DELAY_MS,
        budget_ms=2.0,
    )


class StandIn(OffLedgerScenario):
    name = "stand_in"
    description = (
        "As off_ledger_forward, but the client accepts every Decide and never answers: each "
        f"decision is the stand-in's (policy APPROVE) once the {DEADLINE_MS:,} ms deadline "
        "has passed. The circuit breaker is set as leniently as the admin API allows (opens "
        "after 1,000 consecutive failures) and renewed before each phase, so it never opens "
        "and every call waits for the deadline. The closed loop is bound by the deadline "
        "(64 in flight / 1 s), not by the server: every open-loop rate is run."
    )
    target = LatencyTarget(
        text="stand-in answers within the deadline at p99",
        baseline_ms=DEADLINE_MS,
        budget_ms=0.0,
    )
    never_answer = True

    def breaker(self) -> Breaker:
        # The most lenient settings the admin API accepts (failures 1..1,000, window
        # 1..10,000, open 10..600,000 ms). open_ms alternates at each renewal: a changed
        # setting gives the program a new breaker, with no failure counted (between_phases).
        return Breaker(1_000, 100, 10_000, 600_000 - self._generation % 2)

    def open_loop_capacity(self, closed: dict[str, Any]) -> float | None:
        """The closed loop is bound by the deadline (64 calls in flight for 1 s each), not by
        the server: its capacity is estimated from its CPU instead, as the rate at which the
        closed loop's server CPU per decision fills one core (one event loop)."""
        server_cores = float(closed["cores_busy"].get("server") or 0.0)
        if server_cores <= 0:
            return None
        return float(closed["throughput_per_s"]) / server_cores

    async def between_phases(self, ctx: ScenarioContext) -> None:
        """Give every program a fresh circuit breaker (its routing set again, with another
        open_ms), then VACUUM and CHECKPOINT. authswitch's breaker opens after 1,000
        consecutive failures at most, and recounts its window on every call (the cost grows
        with the failures counted): spreading the cards over several programs and renewing
        the breakers keeps both far off in any phase."""
        self._generation += 1
        async with grpc.aio.insecure_channel(ctx.grpc_listen) as channel:
            admin = ledger_admin_pb2_grpc.LedgerAdminServiceStub(channel)
            for program_id in self._programs:
                await admin.SetProgramRouting(self._routing(program_id))
        await super().between_phases(ctx)
