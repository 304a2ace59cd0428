"""latest.json and latest.md from one run's results."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.targets import check_targets

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
        *_remote(run["stores"].get("remote_postgres")),
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
        "| delay proxy µs | loadgen µs | total µs | decisions per Postgres commit "
        "| other processes (cores) | speed probe ms |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for s in run["scenarios"]:
        closed = next((p for p in s["phases"] if p["mode"] == "closed"), None)
        if closed is None:
            lines.append(f"| {s['name']} | {s['status']} | | | | | | | | | | | |")
            continue
        lines.append(
            f"| {s['name']} | {_num(closed['throughput_per_s'])} | {closed['errors']} "
            f"| {_cpu(closed, 'server')} | {_cpu(closed, 'postgres')} | {_cpu(closed, 'redis')} "
            f"| {_cpu(closed, 'client')} | {_cpu(closed, 'delay_proxy')} "
            f"| {_cpu(closed, 'loadgen')} | {_cpu(closed, 'total')} "
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
            if p["mode"] != "open" or p["phase"].startswith(("overload_", "recovery_")):
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
    lines += _overload(run)
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


def _remote(remote: dict[str, Any] | None) -> list[str]:
    """How the remote rows' Postgres was 1 ms away, when a remote row was run."""
    if not remote or not remote.get("delay"):
        return []
    trips = remote.get("select_1_round_trip_ms") or {}
    how = {
        "netem": "tc netem on a veth pair into a network namespace",
        "proxy": "benchmarks/loadgen/delay_proxy (its CPU in the delay proxy column)",
    }.get(remote["delay"], remote["delay"])
    why = f" (no netem: {remote['why_not_netem']})" if remote.get("why_not_netem") else ""
    return [
        "",
        f"Remote rows: a Postgres cluster of the benchmark's own, "
        f"{_num(remote['delay_ms_each_way'], 0)} ms away each way through {how}{why}; "
        f"SELECT 1 round trip min {_num(trips.get('min'), 2)} ms, p50 "
        f"{_num(trips.get('p50'), 2)} ms (the machine's Postgres on loopback: p50 "
        f"{_num(trips.get('loopback_p50'), 2)} ms).",
    ]


def _overload(run: dict[str, Any]) -> list[str]:
    """Each overload and recovery phase, its calls by gRPC status with their latency."""
    lines = []
    for s in run["scenarios"]:
        for p in s["phases"]:
            if not p["phase"].startswith(("overload_", "recovery_")):
                continue
            for status, figures in sorted(
                p.get("latency_by_status", {}).items(), key=lambda kv: -kv[1]["count"]
            ):
                sent = figures.get("from_send", {})
                lines.append(
                    f"| {s['name']} | {p['phase']} | {_num(p['rate_per_s'])} "
                    f"| {_num(p['throughput_per_s'])} | {status} | {_num(figures['count'])} "
                    f"| {_num(figures['p50_ms'], 2)} | {_num(figures['p99_ms'], 2)} "
                    f"| {_num(figures['max_ms'], 2)} | {_num(sent.get('p50_ms'), 2)} "
                    f"| {_num(sent.get('p99_ms'), 2)} | {_cpu(p, 'server')} |"
                )
    if not lines:
        return []
    return [
        "",
        "## Overload",
        "",
        "An open loop at twice the scenario's closed-loop maximum, then, from the instant it "
        "stops sending, one at half of it (its late answers still arriving): every call by "
        "how it ended, latency from its intended send time, and (sent p50, sent p99) from "
        "the instant the generator actually sent it: where the generator, on the same cores, "
        "fell behind its schedule, the difference is its own delay. achieved/s counts all "
        "calls completed in the phase's window, refusals included.",
        "",
        "| scenario | phase | rate/s | achieved/s | status | calls | p50 ms | p99 ms | max ms "
        "| sent p50 ms | sent p99 ms | server µs |",
        "|---|---|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|",
        *lines,
    ]


def _verdict(met: bool | None, limit: dict[str, Any] | None = None) -> str:
    if met is None:
        return "not measured"
    if met:
        return "met"
    if limit is not None and not limit["reachable"]:
        return "**not met**: out of reach on this machine (limit)"
    return "**not met**"


def _limit(t: dict[str, Any]) -> str:
    limit = t.get("limit")
    return "-" if limit is None else f"{_num(limit['value'], 2)} {t['unit']}"


def _targets(run: dict[str, Any]) -> list[str]:
    """The issue's targets, met or not, from this run's rows; then each latency target
    phase by phase."""
    targets = run.get("targets") or []
    lines = []
    if targets:
        lines += [
            "",
            "## Targets",
            "",
            f"Issue 15's targets, from this run's rows only ({run['profile']['name']} run). "
            "Latencies are the generator's percentiles (a histogram bucket's upper bound). "
            "*Limit here*: the best this machine allows by a row of the same run that does "
            "less than authswitch must (how, under the table); a target that even that row "
            "misses is out of reach on this machine."
            + (
                f" (Recomputed from the run's rows on {run['targets_recomputed_at']}.)"
                if run.get("targets_recomputed_at")
                else ""
            ),
            "",
            "| target | this run | target | limit here | verdict |",
            "|---|--:|--:|--:|---|",
        ]
        for t in targets:
            value = "-" if t["value"] is None else f"{_num(t['value'], 2)} {t['unit']}"
            sign = "≤" if t["comparison"] == "<=" else "≥"
            lines.append(
                f"| {t['name']} | {value} | {sign} {_num(t['threshold'], 1)} {t['unit']} "
                f"| {_limit(t)} | {_verdict(t['met'], t.get('limit'))} |"
            )
        lines.append("")
        for t in targets:
            limit = t.get("limit")
            bullet = f"* {t['name']}: {t['figures']}."
            if limit is not None:
                bullet += f" Limit here: {limit['figures']}."
            lines.append(bullet)
    by_phase = []
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
            by_phase.append(
                f"* {s['name']}, {_num(checked['rate_per_s'])}/s: {target['text']}: p99 "
                f"{_num(checked['p99_ms'], 2)} ms - {_num(target['baseline_ms'], 0)} ms = "
                f"{added} ms added (budget {_num(target['budget_ms'], 0)} ms): {verdict}. "
                f"Decided: {_decided_by(phases.get(checked['phase'], {}))}."
            )
        if not target["phases"]:
            by_phase.append(f"* {s['name']}: {target['text']}: no open-loop phase was run")
    if by_phase:
        lines += [
            "",
            "### Latency targets, phase by phase" if targets else "## Targets",
            "",
            "From the open-loop phases: what each p99 adds to the latency the scenario has by "
            "design (the client's own, or the deadline), from the lower to the upper bound of "
            "the p99's histogram bucket when they differ; who decided, and the call to the "
            "client as authswitch timed it (`client_calls`).",
            "",
            *by_phase,
        ]
    return lines


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


def rerender(directory: Path) -> tuple[Path, Path]:
    """Recompute a stored run's targets from its own rows (after a change to how targets
    are judged) and write its latest.json and latest.md again; the measurements stay."""
    run = json.loads((directory / "latest.json").read_text())
    run["targets"] = check_targets(run)
    run["targets_recomputed_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    return write_results(run, directory)


if __name__ == "__main__":
    import sys

    for written in rerender(Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results")):
        print(f"wrote {written}")
