"""The scenarios, in the order they run. Add one by listing an instance here (see base.py)."""

from __future__ import annotations

from benchmarks.scenarios.base import Scenario, ScenarioContext
from benchmarks.scenarios.ceiling import GrpcRedisCeiling
from benchmarks.scenarios.naive import NaivePostgres, NaivePostgresRemote
from benchmarks.scenarios.off_ledger import OffLedgerForward, StandIn
from benchmarks.scenarios.on_ledger import (
    OnLedgerHotAccount,
    OnLedgerHotAccountRemote,
    OnLedgerHotAccountWorkers,
    OnLedgerSpread,
    Overload2x,
)
from benchmarks.scenarios.trivial import TrivialHandler, TrivialHandlerOverload2x

__all__ = ["SCENARIOS", "Scenario", "ScenarioContext"]

SCENARIOS: tuple[Scenario, ...] = (
    TrivialHandler(),
    GrpcRedisCeiling(),
    NaivePostgres(),
    OnLedgerHotAccount(),
    OnLedgerHotAccountWorkers(),
    OnLedgerSpread(),
    OffLedgerForward(),
    StandIn(),
    Overload2x(),
    TrivialHandlerOverload2x(),
    NaivePostgresRemote(),
    OnLedgerHotAccountRemote(),
)
