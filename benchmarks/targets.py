"""The targets of issue 15, checked against one run's rows only (ratios between rows of
the same run: figures from two runs on these machines are not comparable).

Each target is a dict: ``name``, ``value`` (this run's figure, None when a row it needs did
not run), ``threshold``, ``comparison`` ("<=" or ">="), ``unit``, ``met`` (True, False, or
None when it could not be decided), ``figures`` (what the value was computed from),
``rows`` (the scenarios it reads) and ``limit``: None, or what the machine allows by a row
of the same run that does less than authswitch must (``value``, ``figures``, and
``reachable``: False when even that row misses the target — the measurement that proves a
target out of reach on this machine). Latencies are the generator's percentiles: a
histogram bucket's upper bound, never optimistic.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TARGET_ROWS", "check_targets"]

CEILING = "grpc_redis_ceiling"
NAIVE = "naive_postgres"
HOT = "on_ledger_hot_account"
WORKERS = "on_ledger_hot_account_workers"
NAIVE_REMOTE = "naive_postgres_remote"
HOT_REMOTE = "on_ledger_hot_account_remote"
OVERLOAD = "overload_2x"
TRIVIAL = "trivial_handler"
TRIVIAL_OVERLOAD = "trivial_handler_overload_2x"
OFF_LEDGER = "off_ledger_forward"
STAND_IN = "stand_in"
TARGET_ROWS = (
    CEILING,
    NAIVE,
    HOT,
    WORKERS,
    NAIVE_REMOTE,
    HOT_REMOTE,
    OVERLOAD,
    OFF_LEDGER,
    STAND_IN,
)

REFUSED = "RESOURCE_EXHAUSTED"
TIMES = "\N{MULTIPLICATION SIGN}"  # the unit of a ratio


class _Missing(Exception):
    """A row or phase a target needs is not in this run (the message says which)."""


def _num(value: float, digits: int = 2) -> str:
    return f"{value:,.{digits}f}"


class _Run:
    def __init__(self, run: dict[str, Any]) -> None:
        self.rows = {s["name"]: s for s in run["scenarios"]}
        self.machine: dict[str, Any] = run.get("machine") or {}

    def row(self, name: str) -> dict[str, Any]:
        row: dict[str, Any] | None = self.rows.get(name)
        if row is None:
            raise _Missing(f"{name} was not run")
        if row["status"] != "ok":
            raise _Missing(f"{name} {row['status']}: {row.get('note') or ''}".rstrip(": "))
        return row

    def closed(self, name: str) -> dict[str, Any]:
        phase: dict[str, Any] | None = next(
            (p for p in self.row(name)["phases"] if p["mode"] == "closed"), None
        )
        if phase is None:
            raise _Missing(f"{name} has no closed-loop phase")
        return phase

    def phase(self, name: str, phase: str) -> dict[str, Any]:
        row = self.row(name)
        found: dict[str, Any] | None = next((p for p in row["phases"] if p["phase"] == phase), None)
        if found is None:
            skipped = next((p for p in row.get("skipped_phases", []) if p["phase"] == phase), None)
            why = f": {skipped['note']}" if skipped else ""
            raise _Missing(f"{name} has no {phase} phase{why}")
        return found

    def throughput(self, name: str) -> float:
        value = float(self.closed(name)["throughput_per_s"])
        if value <= 0:
            raise _Missing(f"{name} completed nothing in its closed loop")
        return value

    def server_cpu_us(self, name: str) -> float:
        value = self.closed(name)["cpu_us_per_decision"].get("server")
        if not value:
            raise _Missing(f"{name} has no server CPU figure")
        return float(value)


def _passes(value: float, threshold: float, comparison: str) -> bool:
    return value <= threshold if comparison == "<=" else value >= threshold


def _limit(limit: Any, threshold: float, comparison: str) -> dict[str, Any] | None:
    """``limit()`` returns (value, figures): the best the machine allows by a row that does
    less than authswitch must; None when that row did not run."""
    if limit is None:
        return None
    try:
        value, figures = limit()
    except _Missing:
        return None
    return {
        "value": round(value, 3),
        "figures": figures,
        "reachable": _passes(value, threshold, comparison),
    }


def _target(
    name: str,
    threshold: float,
    comparison: str,
    unit: str,
    rows: tuple[str, ...],
    compute: Any,
    limit: Any = None,
) -> dict[str, Any]:
    """``compute()`` returns (value, figures) or (value, figures, met) to override the
    comparison; raising _Missing leaves the target undecided. ``limit``: see _limit."""
    base = {
        "name": name,
        "threshold": threshold,
        "comparison": comparison,
        "unit": unit,
        "rows": list(rows),
        "limit": _limit(limit, threshold, comparison),
    }
    try:
        outcome = compute()
    except _Missing as missing:
        return {**base, "value": None, "met": None, "figures": f"not measured: {missing}"}
    value, figures = outcome[0], outcome[1]
    if len(outcome) > 2:
        met = outcome[2]
    elif value is None:
        met = None
    else:
        met = _passes(value, threshold, comparison)
    return {
        **base,
        "value": None if value is None else round(value, 3),
        "met": met,
        "figures": figures,
    }


def _ratio(run: _Run, top: str, bottom: str, what: str) -> tuple[float, str]:
    a, b = run.throughput(top), run.throughput(bottom)
    return a / b, f"{top} {_num(a, 0)}/s ÷ {bottom} {_num(b, 0)}/s ({what}, closed loop)"


def _remote_limit(run: _Run) -> tuple[float, str]:
    """The most one process of this stack could reach over the remote naive row: the
    ceiling (gRPC and one Redis call, no Postgres at all) ÷ that row."""
    ceiling, naive = run.throughput(CEILING), run.throughput(NAIVE_REMOTE)
    return ceiling / naive, (
        f"one process of the stack with no Postgres at all, {CEILING} {_num(ceiling, 0)}/s ÷ "
        f"{NAIVE_REMOTE} {_num(naive, 0)}/s"
    )


def _cpu_limit(run: _Run, name: str, over: str) -> tuple[float, str]:
    """The most ``name`` could decide with every core busy at its own CPU per decision (all
    processes, the load generator's included, share the cores), ÷ ``over``'s rate."""
    cores = int(run.machine.get("cores_usable") or run.machine.get("cores") or 0)
    total = run.closed(name)["cpu_us_per_decision"].get("total")
    if not cores or not total:
        raise _Missing(f"{name} has no total CPU figure")
    most, other = cores * 1e6 / float(total), run.throughput(over)
    return most / other, (
        f"{cores} cores ÷ {name}'s {_num(float(total), 0)} µs of CPU per decision (every "
        f"process, the load generator's included) = {_num(most, 0)}/s with every core busy, "
        f"÷ {over} {_num(other, 0)}/s"
    )


def _half_max_limit(run: _Run) -> tuple[float, str]:
    """The ceiling by the same measure: it does less per decision than authswitch (gRPC and
    one Redis call; no Postgres), at half of its own maximum."""
    phase = run.phase(CEILING, "open_0.5x")
    return float(phase["p99_ms"]), (
        f"{CEILING}, which does less per decision (no Postgres), by the same measure: p99 "
        f"{_num(phase['p99_ms'])} ms at half its own maximum ({_num(phase['rate_per_s'], 0)}/s)"
    )


def _p50_limit(run: _Run, rate: int = 200) -> tuple[float, str]:
    """The ceiling plus what one Postgres transaction adds in the naive row (naive's p50
    over the constant answer's), ÷ the ceiling: a design that made one Redis step and then
    one Postgres transaction, each at the cost the rows beside it measure."""
    name = f"open_{rate}"
    ceiling = float(run.phase(CEILING, name)["p50_ms"])
    naive = float(run.phase(NAIVE, name)["p50_ms"])
    trivial = float(run.phase(TRIVIAL, name)["p50_ms"])
    return (ceiling + naive - trivial) / ceiling, (
        f"the ceiling's p50 plus what one Postgres transaction adds at {rate}/s in the naive "
        f"row ({NAIVE} p50 {_num(naive)} ms - {TRIVIAL} p50 {_num(trivial)} ms), ÷ the "
        f"ceiling's: ({_num(ceiling)} + {_num(naive - trivial)}) ÷ {_num(ceiling)} ms"
    )


def _latency_target(run: _Run, name: str) -> tuple[float | None, str, bool | None]:
    """The worst phase of a scenario's LatencyTarget (checked by the harness on every
    open-loop phase): its added p99, met only when every phase met it."""
    target = run.row(name).get("target")
    if not target or not target["phases"]:
        raise _Missing(f"{name} ran no open-loop phase")
    phases = target["phases"]
    worst = max(phases, key=lambda p: p["added_ms"])
    verdicts = [p["met"] for p in phases]
    met = False if False in verdicts else None if None in verdicts else True
    figures = "; ".join(
        f"{p['rate_per_s']}/s: p99 {_num(p['p99_ms'])} ms - {_num(target['baseline_ms'], 0)} ms"
        f" = {_num(p['added_floor_ms'])} to {_num(p['added_ms'])} ms"
        + ("" if p["met"] is not None else " (undecided: the budget is inside the p99's bucket)")
        for p in phases
    )
    if name == OFF_LEDGER:
        figures += _floors_at(run, [int(p["rate_per_s"]) for p in phases])
    return float(worst["added_ms"]), figures, met


def _floors_at(run: _Run, rates: list[int]) -> str:
    """At the same open-loop rates, the p99 of the stack answering a constant, of the ceiling
    (one Redis call) and of the naive row (one Postgres transaction): what an answer costs
    before the client is even asked, and with the durable write every decision makes."""
    found = []
    for rate in rates:
        for name in (TRIVIAL, CEILING, NAIVE):
            try:
                p99 = run.phase(name, f"open_{rate}")["p99_ms"]
            except _Missing:
                continue
            found.append(f"{name} {rate}/s p99 {_num(p99)} ms")
    return (". Beside it, with no client at all: " + ", ".join(found)) if found else ""


def _off_ledger_limit(run: _Run) -> tuple[float, str]:
    """An off-ledger decision answers only after its durable record (DESIGN.md section 5, rule
    1): on top of the client's own time and the call to it, it makes the write the naive row
    makes, a gRPC call in and one Postgres transaction. The naive row's p99 at the same rate
    is therefore a floor under the added p99 (a sum of non-negative times is at least each
    part); the limit is the lowest such floor among the rates both rows ran, the most
    favourable to the target."""
    target = run.row(OFF_LEDGER).get("target")
    if not target or not target["phases"]:
        raise _Missing(f"{OFF_LEDGER} ran no open-loop phase")
    floors = []
    for p in target["phases"]:
        rate = int(p["rate_per_s"])
        try:
            floors.append((float(run.phase(NAIVE, f"open_{rate}")["p99_ms"]), rate))
        except _Missing:
            continue
    if not floors:
        raise _Missing(f"{NAIVE} ran none of {OFF_LEDGER}'s open-loop rates")
    best, rate = min(floors)
    return best, (
        f"{NAIVE} at {rate}/s, one gRPC call and one durable Postgres transaction with no "
        f"client to ask, has p99 {_num(best)} ms; an off-ledger decision makes the same write "
        "after the client answers (no approval without a durable record) and a gRPC call to "
        "the client besides"
    )


def _overload_floor(run: _Run, statuses: tuple[str, ...] | None) -> tuple[float, str]:
    """Under the same overload (twice its own maximum), how fast grpc.aio answering a
    constant ended its calls: of the given statuses (None: the fastest status) at p99."""
    phase, _ = _overload(run, TRIVIAL_OVERLOAD)
    lag = _send_lag(phase)
    if lag:
        # Its latencies are then the generator's delay, not the stack's: no floor.
        raise _Missing(f"{TRIVIAL_OVERLOAD}'s generator fell behind ({lag})")
    found = {
        status: float(s["p99_ms"])
        for status, s in phase["latency_by_status"].items()
        if statuses is None or status in statuses
    }
    if not found:
        raise _Missing(f"{TRIVIAL_OVERLOAD} ended no call {'/'.join(statuses or ())}")
    status = min(found, key=found.__getitem__)
    return found[status], (
        f"{TRIVIAL_OVERLOAD}, a constant answer with no admission limit, offered "
        f"{phase['rate_per_s']:,}/s (twice its own maximum): its {status} calls ended at p99 "
        f"{_num(found[status])} ms"
    )


# An open loop whose generator sent this share of its calls late, or one call this late,
# did not offer its rate: what it measured includes the generator's own delay.
LATE_SHARE_MAX = 0.01
SEND_LAG_MAX_MS = 10.0


def _send_lag(phase: dict[str, Any]) -> str:
    """How far behind its schedule the generator fell in ``phase`` ("" if it kept up)."""
    late, sent = int(phase.get("late_sends") or 0), int(phase.get("sent") or 0)
    lag = float(phase.get("max_send_lag_ms") or 0.0)
    if not sent or (late / sent <= LATE_SHARE_MAX and lag <= SEND_LAG_MAX_MS):
        return ""  # (a run from before the generator counted late sends: nothing known)
    return f"{late:,} of {sent:,} calls sent late, up to {_num(lag)} ms"


def _overload(run: _Run, name: str = OVERLOAD) -> tuple[dict[str, Any], dict[str, Any]]:
    row = run.row(name)
    phases = [p for p in row["phases"] if p["phase"].startswith("overload_")]
    if not phases:
        raise _Missing(f"{name} has no overload phase")
    return phases[0], next((p for p in row["phases"] if p["phase"].startswith("recovery_")), {})


def _stack_floor(run: _Run) -> str:
    """The same overload against grpc.aio answering a constant, when it ran: the part of
    the latencies that is the stack's own."""
    try:
        phase, _ = _overload(run, TRIVIAL_OVERLOAD)
    except _Missing:
        return ""
    parts = [
        f"{status} {s['count']:,} (p50 {_num(s['p50_ms'])}, p99 {_num(s['p99_ms'])} ms)"
        for status, s in sorted(phase["latency_by_status"].items(), key=lambda kv: -kv[1]["count"])
    ]
    lag = _send_lag(phase)
    return (
        f". The stack's floor, {TRIVIAL_OVERLOAD} (a constant answer, no admission limit) "
        f"offered {phase['rate_per_s']:,}/s: "
        + "; ".join(parts)
        + (f" (the generator fell behind: {lag}; no floor)" if lag else "")
    )


def _from_send(figures: dict[str, Any]) -> str:
    """The calls' p99 measured from their actual send (what the generator's lateness adds
    to the p99 from the intended send is not the server's)."""
    sent = figures.get("from_send")
    return f"; from the actual send p99 {_num(sent['p99_ms'])} ms" if sent else ""


def _overload_figures(run: _Run) -> str:
    phase, recovery = _overload(run)
    statuses = phase["latency_by_status"]
    parts = [
        f"{status} {s['count']:,} (p50 {_num(s['p50_ms'])}, p99 {_num(s['p99_ms'])}, "
        f"max {_num(s['max_ms'])} ms{_from_send(s)})"
        for status, s in sorted(statuses.items(), key=lambda kv: -kv[1]["count"])
    ]
    text = f"offered {phase['rate_per_s']:,}/s for {phase['duration_s']:g} s: " + "; ".join(parts)
    if lag := _send_lag(phase):
        text += f" (the generator fell behind: {lag})"
    if recovery:
        text += (
            f"; then {recovery['rate_per_s']:,}/s for {recovery['duration_s']:g} s: "
            f"{_num(recovery['throughput_per_s'], 0)}/s answered in its window, p99 "
            f"{_num(recovery['p99_ms'])} ms"
        )
    return text + _stack_floor(run)


def _answered_p99(run: _Run) -> tuple[float | None, str]:
    phase, _ = _overload(run)
    ok = phase["latency_by_status"].get("OK")
    return (float(ok["p99_ms"]) if ok else None), _overload_figures(run)


def _refusal_p99(run: _Run) -> tuple[float | None, str, bool | None]:
    """The refusals' p99, met only when every call not answered was refused (no deadline
    passed, no cancellation, nothing unavailable)."""
    phase, _ = _overload(run)
    statuses = phase["latency_by_status"]
    refused = statuses.get(REFUSED)
    others = {k: v["count"] for k, v in statuses.items() if k not in ("OK", REFUSED)}
    figures = f"offered {phase['rate_per_s']:,}/s: " + (
        f"{refused['count']:,} refused, p50 {_num(refused['p50_ms'])}, p99 "
        f"{_num(refused['p99_ms'])}, max {_num(refused['max_ms'])} ms{_from_send(refused)}"
        if refused
        else "none refused"
    )
    if others:
        figures += "; calls neither answered nor refused: " + ", ".join(
            f"{k} {n:,}" for k, n in others.items()
        )
    figures += _stack_floor(run)
    if refused is None:
        return None, figures, not others
    value = float(refused["p99_ms"])
    return value, figures, value <= 10.0 and not others


def check_targets(run: dict[str, Any]) -> list[dict[str, Any]]:
    r = _Run(run)

    def cpu_ratio() -> tuple[float, str]:
        hot, ceiling = r.server_cpu_us(HOT), r.server_cpu_us(CEILING)
        return hot / ceiling, (
            f"{HOT} {_num(hot, 0)} µs ÷ {CEILING} {_num(ceiling, 0)} µs of server CPU per "
            "decision (closed loop)"
        )

    def half_max_p99() -> tuple[float, str]:
        hot = r.phase(HOT, "open_0.5x")
        text = f"{HOT} at {hot['rate_per_s']:,}/s: p99 {_num(hot['p99_ms'])} ms"
        try:
            ceiling = r.phase(CEILING, "open_0.5x")
            text += (
                f" (the ceiling at half its own maximum, {ceiling['rate_per_s']:,}/s: "
                f"p99 {_num(ceiling['p99_ms'])} ms)"
            )
        except _Missing:
            pass
        return float(hot["p99_ms"]), text

    def p50_200() -> tuple[float, str]:
        hot, ceiling = r.phase(HOT, "open_200"), r.phase(CEILING, "open_200")
        return float(hot["p50_ms"]) / float(ceiling["p50_ms"]), (
            f"{HOT} p50 {_num(hot['p50_ms'])} ms ÷ {CEILING} p50 {_num(ceiling['p50_ms'])} ms "
            "at 200/s"
        )

    return [
        _target(
            "hot-account server CPU per decision ÷ the ceiling's",
            1.3, "<=", TIMES, (HOT, CEILING), cpu_ratio,
        ),
        _target(
            "hot ÷ ceiling, decisions/s, one process",
            0.8, ">=", TIMES, (HOT, CEILING), lambda: _ratio(r, HOT, CEILING, "one worker each"),
            lambda: _cpu_limit(r, HOT, CEILING),
        ),
        _target(
            "hot ÷ naive, local Postgres",
            1.8, ">=", TIMES, (HOT, NAIVE), lambda: _ratio(r, HOT, NAIVE, "the machine's Postgres"),
        ),
        _target(
            "hot ÷ naive, remote Postgres (1 ms each way)",
            12.0, ">=", TIMES, (HOT_REMOTE, NAIVE_REMOTE),
            lambda: _ratio(r, HOT_REMOTE, NAIVE_REMOTE, "Postgres 1 ms away"),
            lambda: _remote_limit(r),
        ),
        _target(
            "workers = cores ÷ one process, hot account",
            1.5, ">=", TIMES, (WORKERS, HOT),
            lambda: _ratio(r, WORKERS, HOT, f"{r.row(WORKERS).get('server_workers', '?')} "
                           "workers against one"),
            lambda: _cpu_limit(r, WORKERS, HOT),
        ),
        _target(
            "open loop at half its own maximum, p99 (hot account)",
            5.0, "<=", "ms", (HOT, CEILING), half_max_p99, lambda: _half_max_limit(r),
        ),
        _target(
            "p50 at 200/s open loop ÷ the ceiling's p50",
            2.0, "<=", TIMES, (HOT, CEILING), p50_200, lambda: _p50_limit(r),
        ),
        _target(
            f"overload 2{TIMES}: answered p99",
            100.0, "<=", "ms", (OVERLOAD,), lambda: _answered_p99(r),
            lambda: _overload_floor(r, ("OK",)),
        ),
        _target(
            f"overload 2{TIMES}: refusal p99 (every call not answered refused)",
            10.0, "<=", "ms", (OVERLOAD,), lambda: _refusal_p99(r),
            lambda: _overload_floor(r, None),
        ),
        _target(
            "off-ledger added latency p99 (over the client's own 5 ms)",
            2.0, "<=", "ms", (OFF_LEDGER,), lambda: _latency_target(r, OFF_LEDGER),
            lambda: _off_ledger_limit(r),
        ),
        _target(
            "stand-in answer p99 over the deadline (1,000 ms)",
            0.0, "<=", "ms", (STAND_IN,), lambda: _latency_target(r, STAND_IN),
        ),
    ]  # fmt: skip
