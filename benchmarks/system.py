"""The machine: CPU time of processes from /proc, machine-wide CPU, the machine's
description, and port checks."""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = [
    "MachineTimes",
    "ProcTimes",
    "all_processes_cpu_s",
    "children_of",
    "cpu_speed_probe",
    "machine_info",
    "machine_times",
    "port_is_free",
    "proc_times",
    "process_tree",
    "start_ticks",
    "tree_cpu_s",
]

CLK_TCK = os.sysconf("SC_CLK_TCK")
# The first port the servers listen on: below Linux's ephemeral range (32768-60999 by
# default), so that an outgoing connection's source port never takes a server's port
# between the check that it is free and the server's bind (CI failed so once, at 50152).
BASE_PORT = 20151


@dataclass(frozen=True, slots=True)
class ProcTimes:
    """One process's CPU seconds (all its threads); ``reaped`` is what its waited-for
    children used (cutime + cstime)."""

    ppid: int
    own_s: float
    reaped_s: float


def proc_times(pid: int) -> ProcTimes | None:
    """utime + stime of ``pid`` from /proc/<pid>/stat, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): ppid is field 4, utime..cstime are fields 14..17.
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return ProcTimes(int(fields[1]), (utime + stime) / CLK_TCK, (cutime + cstime) / CLK_TCK)


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot, field 22 of /proc/<pid>/stat): with the
    pid, it names one process even after the pid is reused. None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return int(raw[raw.rindex(")") + 2 :].split()[19])


def process_tree(root: int) -> dict[int, ProcTimes]:
    """``root`` and every live descendant (children, their children...), with CPU times,
    from one scan of /proc; empty when ``root`` is gone."""
    everyone: dict[int, ProcTimes] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            times = proc_times(int(entry.name))
            if times is not None:
                everyone[int(entry.name)] = times
    if root not in everyone:
        return {}
    children: dict[int, list[int]] = {}
    for pid, times in everyone.items():
        children.setdefault(times.ppid, []).append(pid)
    tree: dict[int, ProcTimes] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in tree:
            continue
        tree[pid] = everyone[pid]
        todo.extend(children.get(pid, ()))
    return tree


def tree_cpu_s(tree: dict[int, ProcTimes]) -> float:
    """CPU seconds of a process tree: each live process's own time and what it reaped. A
    child that exits is reaped by its parent, so its time moves from its own entry into
    its parent's reaped time: the sum carries on across exits (a worker restarted, say)."""
    return sum(t.own_s + t.reaped_s for t in tree.values())


def all_processes_cpu_s() -> float:
    """CPU seconds of every live process, each with what it reaped from its exited
    children: the difference between two readings is what the whole machine ran between
    them (a child that exited meanwhile is in its parent's reaped time). Unlike /proc/stat,
    which samples at timer ticks and so aliases with a constant-rate load, this is exact."""
    total = 0.0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            times = proc_times(int(entry.name))
            if times is not None:
                total += times.own_s + times.reaped_s
    return total


def children_of(ppid: int) -> dict[int, ProcTimes]:
    """Every live process whose parent is ``ppid``, with its CPU times."""
    found: dict[int, ProcTimes] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        times = proc_times(int(entry.name))
        if times is not None and times.ppid == ppid:
            found[int(entry.name)] = times
    return found


@dataclass(frozen=True, slots=True)
class MachineTimes:
    """Machine-wide CPU seconds from /proc/stat, summed over all cores: tick-sampled, so
    only indicative (see all_processes_cpu_s); steal is the hypervisor's."""

    busy_s: float
    idle_s: float
    steal_s: float

    def __sub__(self, other: MachineTimes) -> MachineTimes:
        return MachineTimes(
            self.busy_s - other.busy_s, self.idle_s - other.idle_s, self.steal_s - other.steal_s
        )


def machine_times() -> MachineTimes:
    with open("/proc/stat") as handle:
        line = handle.readline()
    # cpu  user nice system idle iowait irq softirq steal guest guest_nice
    values = [int(v) for v in line.split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = values[:8]
    busy = user + nice + system + irq + softirq
    return MachineTimes(busy / CLK_TCK, (idle + iowait) / CLK_TCK, steal / CLK_TCK)


def cpu_speed_probe(rounds: int = 3, iterations: int = 300_000) -> float:
    """CPU milliseconds (best of ``rounds``) this process needs for a fixed pure-Python loop:
    how fast the host runs right now. It moves with the hypervisor's load even when no
    steal is reported, and per-decision CPU figures move with it."""
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        total = 0
        for i in range(iterations):
            total += i * i % 7
        best = min(best, time.process_time() - started)
    return round(best * 1000, 1)


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _os_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    return platform.system()


def _memory_gib() -> float:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    return 0.0


def machine_info() -> dict[str, Any]:
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count() or 0,
        "cores_usable": len(os.sched_getaffinity(0)),
        "memory_gib": _memory_gib(),
        "kernel": platform.release(),
        "os": _os_name(),
        "python": sys.version.split()[0],
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def port_is_free(host: str, port: int) -> bool:
    """Nothing listens on host:port, not even a socket with SO_REUSEPORT (which would let a
    new grpcio server share the port silently): a plain bind must succeed and a connect
    must be refused. (SO_REUSEADDR on the probe only tolerates connections of an earlier
    server lingering in TIME_WAIT; it never lets a bind succeed beside a listener.)"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        if probe.connect_ex((host, port)) == 0:
            return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True
