"""The C++ load generator (benchmarks/loadgen/): building it, feeding it, running it. The
same build makes the echo server (the generator's calibration), the off-ledger client stub
and the delay proxy of the remote-Postgres rows.

The generator is compiled against Debian's gRPC and protobuf; the Debian packages are
installed (as root, with apt-get, saying so) when missing. Python only pre-generates the
request parameters: the cards (PAN, expiry, CVV2) and a sequence of (card, amount) that
the generator cycles through, giving every request its own message id.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "APT_PACKAGES",
    "DEFAULT_DEADLINE_MS",
    "LOADGEN_DIR",
    "Binaries",
    "Card",
    "Workload",
    "ensure_built",
    "run_loadgen",
    "write_params",
]

LOADGEN_DIR = Path(__file__).resolve().parent / "loadgen"
DEFAULT_DEADLINE_MS = 10_000  # every call's gRPC deadline unless a phase says otherwise
APT_PACKAGES = (
    "libgrpc++-dev",
    "protobuf-compiler-grpc",
    "protobuf-compiler",
    "libprotobuf-dev",
    "pkg-config",
    "make",
    "g++",
)


@dataclass(frozen=True, slots=True)
class Binaries:
    loadgen: Path
    echo_server: Path
    decision_stub: Path  # the off-ledger client of the off-ledger scenarios
    delay_proxy: Path  # the remote rows' delay, where the kernel has no netem


@dataclass(frozen=True, slots=True)
class Card:
    pan: str
    expiry: str
    cvv2: str


@dataclass(frozen=True, slots=True)
class Workload:
    """What the generator sends: ``requests`` is a sequence of (index into ``cards``,
    amount in minor units), used cyclically."""

    cards: Sequence[Card]
    requests: Sequence[tuple[int, int]]
    asset: str = "GBP"


def _missing_packages() -> list[str]:
    missing = []
    for package in APT_PACKAGES:
        result = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", package],
            capture_output=True,
            text=True,
            check=False,
        )
        if "install ok installed" not in result.stdout:
            missing.append(package)
    return missing


def ensure_built(say: Callable[[str], None]) -> Binaries:
    """Install the build dependencies if missing, then ``make`` the generator (a no-op when
    it is up to date)."""
    if shutil.which("dpkg-query") is not None:
        missing = _missing_packages()
        if missing:
            if os.geteuid() != 0:
                raise RuntimeError(
                    "the load generator needs these Debian packages; install them as root:\n"
                    f"  apt-get install -y {' '.join(missing)}"
                )
            say(f"installing the load generator's build dependencies: {' '.join(missing)}")
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
            subprocess.run(
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
                check=True,
                env=env,
            )
    say("building the load generator (make -C benchmarks/loadgen)")
    result = subprocess.run(
        ["make", "-C", str(LOADGEN_DIR), f"-j{os.cpu_count() or 1}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"building the load generator failed:\n{result.stdout}{result.stderr}")
    build = LOADGEN_DIR / "build"
    return Binaries(
        build / "loadgen", build / "echo_server", build / "decision_stub", build / "delay_proxy"
    )


def write_params(workload: Workload, path: Path) -> None:
    lines = [f"cards {len(workload.cards)}"]
    lines += [f"{c.pan} {c.expiry} {c.cvv2}" for c in workload.cards]
    lines.append(f"requests {len(workload.requests)}")
    lines += [f"{card} {amount}" for card, amount in workload.requests]
    path.write_text("\n".join(lines) + "\n")


async def run_loadgen(
    binary: Path,
    *,
    target: str,
    params: Path,
    prefix: str,
    mode: str,
    duration_s: float,
    concurrency: int = 64,
    rate_per_s: float = 0.0,
    channels: int = 2,
    asset: str = "GBP",
    deadline_ms: int = DEFAULT_DEADLINE_MS,
    start_at_ns: int = 0,
) -> dict[str, Any]:
    """Run the generator once and return its JSON report. ``start_at_ns``: when to start
    sending, on ``time.monotonic_ns()``'s clock (CLOCK_MONOTONIC); 0: once connected."""
    argv = [
        str(binary),
        "--target", target,
        "--params", str(params),
        "--prefix", prefix,
        "--mode", mode,
        "--duration", f"{duration_s:g}",
        "--channels", str(channels),
        "--asset", asset,
        "--deadline-ms", str(deadline_ms),
    ]  # fmt: skip
    if start_at_ns:
        argv += ["--start-at-ns", str(start_at_ns)]
    if mode == "closed":
        argv += ["--concurrency", str(concurrency)]
    else:
        argv += ["--rate", f"{rate_per_s:g}"]
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        stdout, stderr = await process.communicate()
    except asyncio.CancelledError:
        if process.returncode is None:
            process.kill()  # our own child, by its pid
            await process.wait()
        raise
    if process.returncode != 0:
        raise RuntimeError(
            f"loadgen exited with {process.returncode}: {stderr.decode(errors='replace')}"
        )
    report: dict[str, Any] = json.loads(stdout)
    return report
