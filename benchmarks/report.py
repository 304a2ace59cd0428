"""latest.json and latest.md from one run's results."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

__all__ = ["markdown", "write_results"]


def _num(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float | int):
        return f"{value:,.{digits}f}"
    return str(value)


def _cpu(phase: dict[str, Any], key: str) -> str:
    return _num(phase["cpu_us_per_decision"].get(key))


def _commits(phase: dict[str, Any]) -> str:
    return _num(phase.get("decisions_per_commit"), 1)


def _source(source: dict[str, Any]) -> str:
    label = f" ({source['label']})" if source.get("label") else ""
    if not source.get("commit"):
        return f"Measured: {source['label']}." if label else ""
    modified = " with uncommitted changes in src/ or protos/" if source["src_modified"] else ""
    return f"Measured: commit {source['commit'][:10]}{modified}{label}."


def _settings(settings: dict[str, str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(settings.items()))


def markdown(run: dict[str, Any]) -> str:
    m = run["machine"]
    profile = run["profile"]
    lines = [
        f"# authswitch benchmarks — {profile['name']} run, {m['timestamp']}",
        "",
        f"Machine: {m['cpu_model']}, {m['cores']} cores, {m['memory_gib']} GiB, "
        f"kernel {m['kernel']}, {m['os']}, Python {m['python']}. "
        f"Stores ({run['stores']['kind']}): {run['stores']['postgres']} "
        f"({_settings(run['stores'].get('postgres_settings', {}))}), {run['stores']['redis']}. "
        f"Run took {run['elapsed_s']:.0f} s. {_source(run.get('source') or {})}",
        "",
        "Every process shares the same cores: CPU is per decision (µs), for each process "
        "involved, measured from /proc over each phase. Compare rows of this run only. "
        "The speed probe is the CPU time of a fixed Python loop just before the phase: "
        "when it moves, the host's speed moved, and every CPU figure with it.",
        *(
            ["", "**Profiled run** (py-spy attached to the servers): figures are perturbed."]
            if run.get("profiled")
            else []
        ),
        "",
        f"## Closed loop: {profile['concurrency']} calls in flight for {profile['closed_s']:g} s "
        f"(after {profile['warmup_s']:g} s of warm-up)",
        "",
        "| scenario | decisions/s | errors | server µs | Postgres µs | Redis µs | client µs "
        "| loadgen µs | total µs | decisions per Postgres commit | other processes (cores) "
        "| speed probe ms |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for s in run["scenarios"]:
        closed = next((p for p in s["phases"] if p["mode"] == "closed"), None)
        if closed is None:
            lines.append(f"| {s['name']} | {s['status']} | | | | | | | | | | |")
            continue
        lines.append(
            f"| {s['name']} | {_num(closed['throughput_per_s'])} | {closed['errors']} "
            f"| {_cpu(closed, 'server')} | {_cpu(closed, 'postgres')} | {_cpu(closed, 'redis')} "
            f"| {_cpu(closed, 'client')} | {_cpu(closed, 'loadgen')} | {_cpu(closed, 'total')} "
            f"| {_commits(closed)} | {_num(closed['cores_busy'].get('other_processes'), 2)} "
            f"| {_num(closed.get('cpu_speed_probe_ms'), 1)} |"
        )
    lines += [
        "",
        f"## Open loop: constant rate for {profile['open_s']:g} s each",
        "",
        "Requests sent at fixed intervals whatever the server does; latency measured from "
        "each request's intended send time (no coordinated omission), log-linear histogram "
        "(≤ 0.8 % bucket error).",
        "",
        "| scenario | rate/s | achieved/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms "
        "| errors | server µs | total µs | decisions per commit |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for s in run["scenarios"]:
        if s["status"] != "ok":
            lines.append(f"| {s['name']} | {s['status']} | | | | | | | | | | |")
            continue
        for p in s["phases"]:
            if p["mode"] != "open":
                continue
            lines.append(
                f"| {s['name']} | {_num(p['rate_per_s'])} | {_num(p['throughput_per_s'])} "
                f"| {_num(p['p50_ms'], 2)} | {_num(p['p90_ms'], 2)} | {_num(p['p99_ms'], 2)} "
                f"| {_num(p['p999_ms'], 2)} | {_num(p['max_ms'], 2)} | {p['errors']} "
                f"| {_cpu(p, 'server')} | {_cpu(p, 'total')} | {_commits(p)} |"
            )
        for skipped in s.get("skipped_phases", []):
            capacity = skipped.get("capacity_per_s", s["throughput_per_s"])
            basis = "closed-loop max" if capacity == s["throughput_per_s"] else "estimated"
            lines.append(
                f"| {s['name']} | {_num(skipped['rate_per_s'])} | over capacity ({basis} "
                f"{_num(capacity)}/s): skipped | | | | | | | | | |"
            )
    lines += _targets(run)
    gen = run.get("generator")
    if gen:
        lines += [
            "",
            "## The load generator's own ceiling",
            "",
            f"benchmarks/loadgen (C++, gRPC callback API, {gen['channels']} connections) "
            "against a trivial C++ server on the same machine:",
            "",
            "| phase | calls/s | p50 ms | p99 ms | loadgen µs/call | loadgen cores "
            "| echo server µs/call |",
            "|---|--:|--:|--:|--:|--:|--:|",
        ]
        for p in gen["phases"]:
            lines.append(
                f"| {p['phase']} | {_num(p['throughput_per_s'])} | {_num(p['p50_ms'], 2)} "
                f"| {_num(p['p99_ms'], 2)} | {_num(p['loadgen_cpu_us_per_call'])} "
                f"| {_num(p['loadgen_cores_busy'], 2)} | {_num(p['echo_server_cpu_us_per_call'])} |"
            )
    notes = [f"* {s['name']}: {s['note']}" for s in run["scenarios"] if s.get("note")]
    for s in run["scenarios"]:
        for p in s["phases"]:
            discarded = p.get("discarded_noisy_attempts") or []
            if discarded:
                cores = ", ".join(f"{d['other_processes_cores']:.2f}" for d in discarded)
                notes.append(
                    f"* {s['name']} {p['phase']}: run {len(discarded) + 1} times; other "
                    f"processes took {cores} cores during the discarded attempts"
                )
            other = p["cores_busy"].get("other_processes")
            if other is not None and other > run["profile"].get("noisy_cores", 0.3):
                notes.append(
                    f"* {s['name']} {p['phase']}: other processes took {other:.2f} cores "
                    "during the phase reported (a noisy neighbour)"
                )
    if notes:
        lines += ["", "## Notes", "", *notes]
    return "\n".join(lines) + "\n"


def _decided_by(phase: dict[str, Any]) -> str:
    """Who decided a phase's requests, from what authswitch recorded of its client calls."""
    parts = []
    for group in phase.get("client_calls") or []:
        who = "the client" if group["outcome"] == "CLIENT" else "stand-in"
        if group["stand_in_reason"]:
            who += f" ({group['stand_in_reason']})"
        parts.append(
            f"{_num(group['calls'])} by {who}, the call to the client taking p50 "
            f"{_num(group['latency_p50_ms'], 2)} ms, p99 {_num(group['latency_p99_ms'], 2)} ms"
        )
    return "; ".join(parts) if parts else "no client call recorded"


def _targets(run: dict[str, Any]) -> list[str]:
    """A line per open-loop phase of each scenario with a latency target: met or not."""
    lines = []
    for s in run["scenarios"]:
        target = s.get("target")
        if not target:
            continue
        phases = {p["phase"]: p for p in s["phases"]}
        for checked in target["phases"]:
            verdict = {True: "met", False: "**not met**"}.get(
                checked["met"], "undecided (the budget is within the p99's histogram bucket)"
            )
            added = _num(checked["added_ms"], 2)
            if checked.get("added_floor_ms", checked["added_ms"]) != checked["added_ms"]:
                added = f"{_num(checked['added_floor_ms'], 2)} to {added}"
            lines.append(
                f"* {s['name']}, {_num(checked['rate_per_s'])}/s: {target['text']}: p99 "
                f"{_num(checked['p99_ms'], 2)} ms - {_num(target['baseline_ms'], 0)} ms = "
                f"{added} ms added (budget {_num(target['budget_ms'], 0)} ms): {verdict}. "
                f"Decided: {_decided_by(phases.get(checked['phase'], {}))}."
            )
        if not target["phases"]:
            lines.append(f"* {s['name']}: {target['text']}: no open-loop phase was run")
    if not lines:
        return []
    return [
        "",
        "## Targets",
        "",
        "From the open-loop phases: what each p99 adds to the latency the scenario has by "
        "design (the client's own, or the deadline), from the lower to the upper bound of the "
        "p99's histogram bucket when they differ; who decided, and the call to the client as "
        "authswitch timed it (`client_calls`).",
        "",
        *lines,
    ]


_NUMBER_TRIPLE = re.compile(r"\[\s*(\d+),\s*(\d+),\s*(\d+)\s*\]")


def write_results(run: dict[str, Any], directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    json_path, md_path = directory / "latest.json", directory / "latest.md"
    text = json.dumps(run, indent=2)
    # One line per histogram bucket ([lower_us, upper_us, count]), not five.
    text = _NUMBER_TRIPLE.sub(r"[\1, \2, \3]", text)
    json_path.write_text(text + "\n")
    md_path.write_text(markdown(run))
    return json_path, md_path
