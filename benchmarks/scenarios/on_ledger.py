"""The real server, ``authswitch serve``, deciding on-ledger."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import ClassVar

from benchmarks.fixtures import AdminFixtures, hot_sequence, zipf_sequence
from benchmarks.loadgen import Workload
from benchmarks.process import ServerSpec
from benchmarks.scenarios.base import Overload, Scenario, ScenarioContext, base_env

__all__ = [
    "AuthswitchScenario",
    "OnLedgerHotAccount",
    "OnLedgerHotAccountRemote",
    "OnLedgerHotAccountWorkers",
    "OnLedgerSpread",
    "Overload2x",
    "authswitch_env",
]

HOT_BALANCE_MINOR = 10**15  # the most one credit may carry: nothing declines for funds
SPREAD_BALANCE_MINOR = 10**12
ZIPF_S = 1.1


def authswitch_env(ctx: ScenarioContext, **settings: str) -> dict[str, str]:
    """``authswitch serve`` on the scenario's database and Redis prefix, with fresh card
    keys and ONE worker process; ``settings`` adds or overrides AUTHSWITCH_<NAME>
    variables (``workers="2"``...)."""
    env = base_env()
    env.update(
        {
            "AUTHSWITCH_GRPC_LISTEN": ctx.grpc_listen,
            "AUTHSWITCH_METRICS_LISTEN": ctx.metrics_listen,
            "AUTHSWITCH_POSTGRES_DSN": ctx.postgres_dsn,
            "AUTHSWITCH_REDIS_URL": ctx.redis_url,
            "AUTHSWITCH_REDIS_KEY_PREFIX": ctx.redis_prefix,
            "AUTHSWITCH_PAN_KEY_HEX": secrets.token_hex(32),
            "AUTHSWITCH_PIN_KEY_HEX": secrets.token_hex(32),
            "AUTHSWITCH_CVV_KEY_HEX": secrets.token_hex(32),
            "AUTHSWITCH_LOG_LEVEL": "WARNING",
            "AUTHSWITCH_DATA_DIR": str(ctx.workdir / "data"),
            "AUTHSWITCH_WORKERS": "1",
        }
    )
    env.update({f"AUTHSWITCH_{name.upper()}": value for name, value in settings.items()})
    # Experiments: BENCH_SERVER_SETTINGS="grpc_pending_calls_max=32,workers=2" overrides
    # settings of every authswitch row (docs/benchmarks.md, "Trying a setting").
    for item in filter(None, os.environ.get("BENCH_SERVER_SETTINGS", "").split(",")):
        name, _, value = item.partition("=")
        env[f"AUTHSWITCH_{name.strip().upper()}"] = value.strip()
    return env


class AuthswitchScenario(Scenario):
    """Runs the real server, ``authswitch serve``: a supervisor and ``workers`` worker
    processes (one unless a subclass says otherwise) sharing the gRPC port; subclasses say
    what to create and send. Ready once the supervisor says every worker serves."""

    workers: ClassVar[int] = 1

    def server(self, ctx: ScenarioContext) -> ServerSpec:
        authswitch = Path(ctx.python).with_name("authswitch")
        env = authswitch_env(ctx, workers=str(self.workers))
        return ServerSpec([str(authswitch), "serve"], env, ready_line="serving gRPC on")


class OnLedgerHotAccount(AuthswitchScenario):
    name = "on_ledger_hot_account"
    description = (
        "The real `authswitch serve`: every request on ONE account funded with 10^15 minor "
        "units (card lookup, checks, one Redis Lua step, group commit to Postgres)."
    )
    open_shares: ClassVar[tuple[float, ...]] = (0.5,)

    async def workload(self, ctx: ScenarioContext) -> Workload:
        fixtures = AdminFixtures(ctx.grpc_listen, ctx.say)
        cards = await fixtures.issue(1, balance_minor=HOT_BALANCE_MINOR, one_account=True)
        return Workload(cards, hot_sequence(ctx.rng, ctx.profile.sequence_length))


class OnLedgerHotAccountWorkers(OnLedgerHotAccount):
    name = "on_ledger_hot_account_workers"
    workers = os.cpu_count() or 1
    channels = 8
    open_shares = ()
    in_quick = False  # the same code as one worker: full runs (or --only) only
    description = (
        f"As on_ledger_hot_account, with as many worker processes as cores ({workers} "
        "here; AUTHSWITCH_WORKERS) sharing the port, each with its own group committer; the "
        f"load generator opens {channels} connections so that the kernel spreads them over "
        "the workers. CPU is the supervisor's and every worker's."
    )


class OnLedgerHotAccountRemote(OnLedgerHotAccount):
    name = "on_ledger_hot_account_remote"
    description = (
        "As on_ledger_hot_account (one worker), on a Postgres cluster of the benchmark's own "
        "reached through 1 ms of delay each way (the shape of Postgres on another host); "
        "Redis stays on loopback."
    )
    open_shares = ()
    remote_postgres = True
    in_quick = False


class Overload2x(OnLedgerHotAccount):
    name = "overload_2x"
    overload = Overload(share=2.0, recovery_share=0.5)
    profile_open_rates = False
    open_shares = ()
    description = (
        "As on_ledger_hot_account (one worker), measuring its closed-loop maximum, then an "
        "open loop at twice that maximum for the open-loop length (20 s in the full run), "
        "then at once an open loop at half of it (5 s full): the calls answered (status OK) "
        "and those refused (RESOURCE_EXHAUSTED) or ended otherwise (DEADLINE_EXCEEDED, "
        "CANCELLED, UNAVAILABLE) reported apart, each with its latency from its intended "
        "send time; every call with the generator's default 10 s deadline."
    )


class OnLedgerSpread(AuthswitchScenario):
    name = "on_ledger_spread"
    description = (
        "The real `authswitch serve`: many funded accounts with one card each (10,000 in the "
        f"full run), the card of each request chosen Zipf-distributed (s={ZIPF_S})."
    )

    async def workload(self, ctx: ScenarioContext) -> Workload:
        count = ctx.profile.spread_accounts
        ctx.say(f"  creating {count:,} funded accounts and cards through the admin API")
        fixtures = AdminFixtures(ctx.grpc_listen, ctx.say)
        cards = await fixtures.issue(count, balance_minor=SPREAD_BALANCE_MINOR)
        return Workload(cards, zipf_sequence(ctx.rng, count, ctx.profile.sequence_length, s=ZIPF_S))
