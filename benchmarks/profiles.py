"""How long and how hard: the full run and the quick (CI smoke) run."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FULL", "QUICK", "Profile"]


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    warmup_s: float  # closed loop, not measured, after the fixtures are made
    closed_s: float  # the measured closed-loop phase
    concurrency: int  # calls in flight in the closed loop
    open_rates: tuple[int, ...]  # requests/s of the open-loop phases
    open_s: float  # length of each open-loop phase
    spread_accounts: int  # funded accounts (one card each) of on_ledger_spread
    off_ledger_programs: int  # off-ledger programs (one account and card each)
    sequence_length: int  # pre-generated (card, amount) pairs, used cyclically
    calibration_s: float  # the generator against the C++ echo server
    recovery_s: float  # the phase at half capacity right after an overload (overload_2x)
    channels: int = 2  # HTTP/2 connections of the generator
    # Before each measured phase, wait up to this long for the machine to be quiet (other
    # processes below ``quiet_cores`` of CPU), so a neighbour's burst does not land on one
    # scenario only; the background load seen is reported with each phase either way.
    quiet_wait_s: float = 0.0
    quiet_cores: float = 0.25
    quiet_sample_s: float = 0.5
    # A phase during which other processes took more than ``noisy_cores`` on average is run
    # again, at most ``noisy_retries`` times (the discarded attempts are reported).
    noisy_cores: float = 0.3
    noisy_retries: int = 0
    # An open-loop rate above this share of the closed-loop maximum would mostly measure a
    # queue (on this noisy machine, one growing for the whole phase): such phases are
    # skipped and reported as over capacity.
    open_rate_max_share: float = 0.9
    # The open-loop rate whose latencies are the scenario's headline p50/p99 (the lowest
    # rate run when this one was not).
    summary_rate: int = 500
    # Between an overload and its recovery phase: the generators connect before the
    # instant planned for the handover, started this long ahead of it.
    handover_lead_s: float = 1.0


FULL = Profile(
    name="full",
    warmup_s=5,
    closed_s=20,
    concurrency=64,
    open_rates=(100, 200, 500, 1000),
    open_s=20,
    spread_accounts=10_000,
    off_ledger_programs=64,
    sequence_length=200_000,
    calibration_s=10,
    recovery_s=5,
    quiet_wait_s=120,
    noisy_retries=2,
)

QUICK = Profile(
    name="quick",
    warmup_s=1,
    closed_s=2.5,
    concurrency=64,
    open_rates=(200,),
    open_s=2.5,
    spread_accounts=200,
    off_ledger_programs=8,
    sequence_length=20_000,
    calibration_s=1.5,
    recovery_s=1.5,
    quiet_sample_s=0.25,
)
