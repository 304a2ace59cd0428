"""The plug-in point: a scenario is a small class with four steps.

    setup(ctx)           before its server starts: schema, fixtures written directly
    server(ctx)          the server's command line and environment (a ServerSpec)
    workload(ctx)        once the server answers: fixtures through its API, and what the
                         load generator sends (cards, and a sequence of card and amount)
    between_phases(ctx)  before every measured phase: reset or VACUUM so that phases and
                         scenarios start from comparable table sizes
    teardown(ctx)        after its server stopped

and, optionally: ``helper_pids`` (helper processes it started, such as an off-ledger
client, whose CPU is measured with the server's), ``open_loop_capacity`` (the rate above
which an open-loop phase is skipped), ``after_phase`` (figures of its own for each phase) and
``target`` (a latency target checked against every open-loop phase).

The harness (benchmarks/run.py) owns everything else, identically for every scenario: a
fresh database and Redis key prefix, free ports, starting and stopping the server by pid,
warm-up, the closed- and open-loop phases, and the CPU accounting. A scenario that cannot
run yet returns the reason from ``unavailable()`` and is reported as such.

To add one: subclass ``Scenario`` (or ``AuthswitchScenario`` for the real server), give
it a ``name`` and ``description``, and list an instance in ``benchmarks/scenarios/__init__.py``.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import asyncpg

from benchmarks.loadgen import DEFAULT_DEADLINE_MS, Binaries, Workload
from benchmarks.process import ServerSpec
from benchmarks.profiles import Profile

__all__ = ["LatencyTarget", "Overload", "Scenario", "ScenarioContext", "base_env"]


@dataclass(frozen=True)
class ScenarioContext:
    """What the harness gives a scenario for one run."""

    profile: Profile
    postgres_dsn: str  # a fresh database of its own, dropped after the scenario
    database: str
    redis_url: str
    redis_prefix: str  # unique; every key under it is deleted after the scenario
    grpc_listen: str  # host:port, checked free
    metrics_listen: str  # host:port, checked free
    workdir: Path
    rng: random.Random
    say: Callable[[str], None]
    binaries: Binaries  # the C++ builds: the generator, the echo server, the decision stub
    free_listen: Callable[[], str]  # another host:port, checked free (for a helper server)
    python: str = sys.executable


@dataclass(frozen=True, slots=True)
class LatencyTarget:
    """A target on each open-loop phase's p99: at most ``baseline_ms + budget_ms``, where
    the baseline is what the scenario waits by design (a client's own latency, a deadline)
    and the budget what the switch may add to it."""

    text: str  # the target as stated, for the report
    baseline_ms: float
    budget_ms: float


@dataclass(frozen=True, slots=True)
class Overload:
    """After the closed loop: an open loop at ``share`` times the closed-loop maximum for the
    profile's open-loop length, and, from the instant it stops sending, an open loop at
    ``recovery_share`` times that maximum for the profile's ``recovery_s`` (the first one's
    late answers still arriving meanwhile): does throughput come back at once?"""

    share: float = 2.0
    recovery_share: float = 0.5
    deadline_ms: int = DEFAULT_DEADLINE_MS  # every call's, in both phases


def base_env() -> dict[str, str]:
    """The harness's environment without any AUTHSWITCH_* variable (authswitch refuses
    unknown ones, and a stray setting would change what is measured)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSWITCH_")}
    env.setdefault("GRPC_VERBOSITY", "ERROR")
    return env


class Scenario:
    name: ClassVar[str]
    description: ClassVar[str]
    target: ClassVar[LatencyTarget | None] = None
    in_quick: ClassVar[bool] = True  # part of the quick (smoke) run unless named with --only
    # HTTP/2 connections of the load generator; None: the profile's. Several server
    # processes sharing a port need enough of them for the kernel to spread.
    channels: ClassVar[int | None] = None
    # Open-loop phases: the profile's rates (``profile_open_rates``), and one at each of
    # ``open_shares`` times this scenario's own closed-loop maximum (named ``open_0.5x``...).
    profile_open_rates: ClassVar[bool] = True
    open_shares: ClassVar[tuple[float, ...]] = ()
    # Set: the overload phases (above) after the other open-loop phases.
    overload: ClassVar[Overload | None] = None
    # On the remote rows' Postgres (benchmarks/remote_postgres.py: a cluster of the
    # benchmark's own, 1 ms away each way) instead of the machine's.
    remote_postgres: ClassVar[bool] = False

    def unavailable(self) -> str | None:
        """Why this scenario cannot run here (reported instead of figures), or None."""
        return None

    async def setup(self, ctx: ScenarioContext) -> None:
        """Before the server starts."""

    def server(self, ctx: ScenarioContext) -> ServerSpec:
        raise NotImplementedError

    def servers(self, ctx: ScenarioContext) -> list[ServerSpec]:
        """The processes serving ``ctx.grpc_listen``: one by default; replicas sharing the
        port (SO_REUSEPORT) when a scenario says so."""
        return [self.server(ctx)]

    async def workload(self, ctx: ScenarioContext) -> Workload:
        """Once the server answers: create fixtures and say what to send."""
        raise NotImplementedError

    async def between_phases(self, ctx: ScenarioContext) -> None:
        """Before each measured phase. By default VACUUM ANALYZE and CHECKPOINT the
        scenario's database, so dead rows and dirty pages of one phase do not land on
        the next."""
        conn = await asyncpg.connect(ctx.postgres_dsn)
        try:
            await conn.execute("VACUUM (ANALYZE)")
            await conn.execute("CHECKPOINT")
        finally:
            await conn.close()

    async def teardown(self, ctx: ScenarioContext) -> None:
        """After the server stopped (the harness drops the database and Redis keys)."""

    def helper_pids(self) -> dict[str, int]:
        """Processes this scenario started besides the server (a client it calls, say), by
        the name of their CPU column: measured over each phase like the server."""
        return {}

    def open_loop_capacity(self, closed: dict[str, Any]) -> float | None:
        """The rate (requests/s) whose open-loop phases would only measure a queue, from the
        closed-loop phase's result: by default its throughput. None runs every rate (for a
        closed loop bound by a fixed wait rather than by the server)."""
        return float(closed["throughput_per_s"])

    async def after_phase(self, ctx: ScenarioContext, message_id_prefix: str) -> dict[str, Any]:
        """Figures of this scenario's own for the phase just measured, whose requests' message
        ids all start with ``message_id_prefix``; added to the phase's result."""
        return {}
