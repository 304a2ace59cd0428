"""The real server, ``authswitch serve``, deciding on-ledger."""

from __future__ import annotations

import dataclasses
import secrets
from pathlib import Path

from benchmarks.fixtures import AdminFixtures, hot_sequence, zipf_sequence
from benchmarks.loadgen import Workload
from benchmarks.process import ServerSpec
from benchmarks.scenarios.base import Scenario, ScenarioContext, base_env

__all__ = ["AuthswitchScenario", "OnLedgerHotAccount", "OnLedgerSpread"]

HOT_BALANCE_MINOR = 10**15  # the most one credit may carry: nothing declines for funds
SPREAD_BALANCE_MINOR = 10**12
ZIPF_S = 1.1


def authswitch_env(ctx: ScenarioContext, **settings: str) -> dict[str, str]:
    """``authswitch serve`` on the scenario's database and Redis prefix, with fresh card
    keys; ``settings`` adds AUTHSWITCH_<NAME> variables."""
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
        }
    )
    env.update({f"AUTHSWITCH_{name.upper()}": value for name, value in settings.items()})
    return env


class AuthswitchScenario(Scenario):
    """Runs the real server; subclasses say what to create and send.

    With ``processes`` > 1, that many ``authswitch serve`` replicas share the gRPC port
    (AUTHSWITCH_GRPC_REUSEPORT; the kernel spreads the load generator's connections over
    them), each with its own group committer, on the same Postgres and Redis.
    """

    processes = 1

    def __init__(self, processes: int = 1) -> None:
        assert processes >= 1
        if processes > 1:
            self.processes = processes
            self.in_quick = False  # the same code as one process: full runs only
            self.name = f"{type(self).name}_{processes}proc"  # type: ignore[misc]
            self.description = (  # type: ignore[misc]
                f"{type(self).description} {processes} server processes on one port (SO_REUSEPORT)."
            )

    def server(self, ctx: ScenarioContext) -> ServerSpec:
        authswitch = Path(ctx.python).with_name("authswitch")
        return ServerSpec([str(authswitch), "serve"], authswitch_env(ctx))

    def servers(self, ctx: ScenarioContext) -> list[ServerSpec]:
        first = self.server(ctx)
        if self.processes == 1:
            return [first]
        specs = [dataclasses.replace(first, env={**first.env, "AUTHSWITCH_GRPC_REUSEPORT": "true"})]
        for _ in range(1, self.processes):
            env = {**specs[0].env, "AUTHSWITCH_METRICS_LISTEN": "127.0.0.1:0"}
            # Ready when it says it serves: the port may answer from another replica.
            specs.append(dataclasses.replace(first, env=env, ready_line="serving gRPC on"))
        return specs


class OnLedgerHotAccount(AuthswitchScenario):
    name = "on_ledger_hot_account"
    description = (
        "The real `authswitch serve`: every request on ONE account funded with 10^15 minor "
        "units (card lookup, checks, one Redis Lua step, group commit to Postgres)."
    )

    async def workload(self, ctx: ScenarioContext) -> Workload:
        fixtures = AdminFixtures(ctx.grpc_listen, ctx.say)
        cards = await fixtures.issue(1, balance_minor=HOT_BALANCE_MINOR, one_account=True)
        return Workload(cards, hot_sequence(ctx.rng, ctx.profile.sequence_length))


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
