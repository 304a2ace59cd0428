"""naive_postgres: one Postgres transaction per request on the hot balance row."""

from __future__ import annotations

import asyncpg

from benchmarks.fixtures import EXPIRY, card_pan, hot_sequence
from benchmarks.loadgen import Card, Workload
from benchmarks.process import ServerSpec
from benchmarks.scenarios.base import Scenario, ScenarioContext, base_env
from benchmarks.servers import naive

__all__ = ["NaivePostgres", "NaivePostgresRemote"]

BALANCE_MINOR = 10**15


class NaivePostgres(Scenario):
    name = "naive_postgres"
    description = (
        "The obvious design as a baseline, same gRPC stack: each request is one Postgres "
        "transaction, a conditional UPDATE ... RETURNING of the one hot balance row plus an "
        "INSERT of the decision, committed before the answer."
    )

    def _card(self) -> Card:
        return Card(card_pan(0), EXPIRY, "000")

    async def setup(self, ctx: ScenarioContext) -> None:
        conn = await asyncpg.connect(ctx.postgres_dsn)
        try:
            await naive.prepare(conn, [(self._card().pan, BALANCE_MINOR)])
        finally:
            await conn.close()

    def server(self, ctx: ScenarioContext) -> ServerSpec:
        argv = [
            ctx.python, "-m", "benchmarks.servers.naive",
            "--listen", ctx.grpc_listen,
            "--postgres-dsn", ctx.postgres_dsn,
        ]  # fmt: skip
        return ServerSpec(argv, base_env())

    async def workload(self, ctx: ScenarioContext) -> Workload:
        return Workload([self._card()], hot_sequence(ctx.rng, ctx.profile.sequence_length))

    async def between_phases(self, ctx: ScenarioContext) -> None:
        """Empty the decisions table and release every hold, then VACUUM: each phase starts
        from the same table sizes (a growing table and dead balance-row versions would
        slow later phases)."""
        conn = await asyncpg.connect(ctx.postgres_dsn)
        try:
            await naive.reset(conn)
        finally:
            await conn.close()
        await super().between_phases(ctx)


class NaivePostgresRemote(NaivePostgres):
    name = "naive_postgres_remote"
    description = (
        "As naive_postgres, on a Postgres cluster of the benchmark's own reached through "
        "1 ms of delay each way (the shape of Postgres on another host): each request holds "
        "the hot row's lock for the round trips of its transaction."
    )
    remote_postgres = True
    in_quick = False
