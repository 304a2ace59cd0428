"""Optional py-spy sampling of the server during the closed-loop phase (--profile).

py-spy's own CPU lands in the "other processes" column and slows the server a little:
figures of a profiled run are for finding where time goes, not for comparison.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["find_py_spy", "start_py_spy", "summarize"]


def find_py_spy() -> Path | None:
    beside = Path(sys.executable).with_name("py-spy")
    if beside.exists():
        return beside
    found = shutil.which("py-spy")
    return Path(found) if found else None


async def start_py_spy(
    binary: Path, pid: int, duration_s: float, output: Path
) -> asyncio.subprocess.Process:
    """Sample every thread of ``pid`` and of its subprocesses (authswitch's workers) at
    250 Hz for ``duration_s``, without pausing them."""
    return await asyncio.create_subprocess_exec(
        str(binary), "record",
        "--pid", str(pid),
        "--subprocesses",
        "--duration", str(max(int(duration_s), 1)),
        "--rate", "250",
        "--nonblocking",
        "--format", "raw",
        "--output", str(output),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


def _function(frame: str) -> str:
    """``name (path/file.py:line)`` → ``name (file.py)``: lines of one function merged."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = path.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{name} ({short})" if where else name


def summarize(raw: Path, top: int = 25) -> dict[str, Any]:
    """Shares of samples, by function: where it is on the stack (inclusive), and where it
    is the innermost frame (self)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_function(f) for f in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if total == 0:
        return {"samples": 0}
    return {
        "samples": total,
        "inclusive": [[f, round(n / total, 3)] for f, n in inclusive.most_common(top)],
        "self": [[f, round(n / total, 3)] for f, n in own.most_common(top)],
        "raw": str(raw),
    }
