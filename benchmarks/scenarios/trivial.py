"""trivial_handler: the gRPC stack answering a constant, the floor every row pays."""

from __future__ import annotations

from benchmarks.fixtures import EXPIRY, card_pan, hot_sequence
from benchmarks.loadgen import Card, Workload
from benchmarks.process import ServerSpec
from benchmarks.scenarios.base import Scenario, ScenarioContext, base_env

__all__ = ["TrivialHandler"]


class TrivialHandler(Scenario):
    name = "trivial_handler"
    description = (
        "Same gRPC stack (grpc.aio on uvloop, same protos and server options) answering "
        "every Authorize with one constant AuthorizeResponse built at start: no store, no "
        "check. The floor of the stack: what every other row pays per call before deciding."
    )

    def server(self, ctx: ScenarioContext) -> ServerSpec:
        argv = [ctx.python, "-m", "benchmarks.servers.trivial", "--listen", ctx.grpc_listen]
        return ServerSpec(argv, base_env())

    async def workload(self, ctx: ScenarioContext) -> Workload:
        card = Card(card_pan(0), EXPIRY, "000")
        return Workload([card], hot_sequence(ctx.rng, ctx.profile.sequence_length))

    async def between_phases(self, ctx: ScenarioContext) -> None:
        """Nothing: it writes nothing anywhere."""
