"""grpc_redis_ceiling: the gRPC stack plus one Redis Lua reservation, nothing durable."""

from __future__ import annotations

from benchmarks.fixtures import EXPIRY, card_pan, hot_sequence
from benchmarks.loadgen import Card, Workload
from benchmarks.process import ServerSpec
from benchmarks.scenarios.base import Scenario, ScenarioContext, base_env

__all__ = ["GrpcRedisCeiling"]


class GrpcRedisCeiling(Scenario):
    name = "grpc_redis_ceiling"
    description = (
        "Same gRPC stack (grpc.aio on uvloop, same protos and server options) answering from "
        "ONE Redis Lua reservation per request on one hot account; nothing durable, no card "
        "checks. The ceiling of this stack on this machine."
    )
    open_shares = (0.5,)

    def server(self, ctx: ScenarioContext) -> ServerSpec:
        argv = [
            ctx.python, "-m", "benchmarks.servers.ceiling",
            "--listen", ctx.grpc_listen,
            "--redis-url", ctx.redis_url,
            "--prefix", ctx.redis_prefix,
        ]  # fmt: skip
        return ServerSpec(argv, base_env())

    async def workload(self, ctx: ScenarioContext) -> Workload:
        card = Card(card_pan(0), EXPIRY, "000")
        return Workload([card], hot_sequence(ctx.rng, ctx.profile.sequence_length))
