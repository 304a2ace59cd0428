"""trivial_handler: the gRPC stack answering a constant, the floor every row pays."""

from __future__ import annotations

from benchmarks.fixtures import EXPIRY, card_pan, hot_sequence
from benchmarks.loadgen import Card, Workload
from benchmarks.process import ServerSpec
from benchmarks.scenarios.base import Overload, Scenario, ScenarioContext, base_env

__all__ = ["TrivialHandler", "TrivialHandlerOverload2x"]


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


class TrivialHandlerOverload2x(TrivialHandler):
    """overload_2x's phases against the floor of the stack: what grpc.aio itself does with
    twice the calls it can answer, with no admission limit and nothing to decide. Beside
    overload_2x it shows which part of the answered and refused latencies is the stack's."""

    name = "trivial_handler_overload_2x"
    overload = Overload(share=2.0, recovery_share=0.5)
    profile_open_rates = False
    open_shares = ()
    in_quick = False
    description = (
        "As trivial_handler (grpc.aio answering a constant, same server options), measuring "
        "its closed-loop maximum, then an open loop at twice that maximum and a recovery at "
        "half of it, as overload_2x: the stack's own latency and refusals under overload."
    )
