"""The benchmark suite: every scenario side by side in one run.

    python -m benchmarks.run            full run (about 18 minutes on a quiet machine)
    python -m benchmarks.run --quick    CI smoke run (about two minutes once the generator
                                        is built); no timing assertions anywhere

Writes benchmarks/results/latest.json and latest.md. Runs on the machine's Postgres and Redis
(default 127.0.0.1:5432 as postgres, 127.0.0.1:6379; --postgres-dsn / --redis-url or
BENCH_POSTGRES_DSN / BENCH_REDIS_URL to change), or on the embedded ones of authswitch when
those do not answer (--stores). Each scenario gets a fresh database and a unique Redis key
prefix, both removed afterwards. Builds the C++ load generator first (installing its Debian
packages when missing). See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from benchmarks.harness import Harness
from benchmarks.loadgen import Binaries, ensure_built
from benchmarks.profiles import FULL, QUICK
from benchmarks.profiling import find_py_spy
from benchmarks.remote_postgres import RemotePostgres
from benchmarks.report import write_results
from benchmarks.scenarios import SCENARIOS
from benchmarks.stores import PostgresCluster, redis_pid
from benchmarks.system import BASE_PORT, machine_info
from benchmarks.targets import check_targets

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def say(text: str) -> None:
    print(text, flush=True)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="authswitch benchmark suite (docs/benchmarks.md)",
    )
    parser.add_argument("--quick", action="store_true", help="CI smoke mode, about two minutes")
    names = [s.name for s in SCENARIOS]
    parser.add_argument(
        "--only",
        metavar="NAME[,NAME]",
        help=f"run only these scenarios (of {', '.join(names)})",
    )
    parser.add_argument(
        "--postgres-dsn",
        default=os.environ.get("BENCH_POSTGRES_DSN", DEFAULT_POSTGRES_DSN),
        help="a Postgres server DSN with CREATE DATABASE rights (default %(default)s)",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS_URL),
        help="default %(default)s",
    )
    parser.add_argument(
        "--stores",
        choices=("auto", "machine", "embedded"),
        default="auto",
        help="the machine's Postgres and Redis, authswitch's embedded ones, or the machine's "
        "when they answer (default)",
    )
    parser.add_argument(
        "--label",
        default="",
        help="free text recorded with the results (what was measured, e.g. a commit)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="output directory (default benchmarks/results; with --quick, results/quick, "
        "so that a smoke run never replaces the full run's results kept in git)",
    )
    parser.add_argument("--base-port", type=int, default=BASE_PORT, help="first port to try")
    parser.add_argument(
        "--keep-workdir", action="store_true", help="keep server logs and request files"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample each server with py-spy during the closed loop (perturbs the figures)",
    )
    parser.add_argument(
        "--no-generator-ceiling",
        action="store_true",
        help="skip measuring the load generator against the C++ echo server",
    )
    parser.add_argument(
        "--remote-postgres",
        choices=("auto", "netem", "proxy", "off"),
        default="auto",
        help="how the remote rows put 1 ms between the server and their Postgres: tc netem "
        "in a network namespace, the C++ delay proxy, netem when the kernel has it (default), "
        "or not at all (the rows are reported unavailable)",
    )
    parser.add_argument(
        "--closed-s", type=float, help="length of the closed-loop phase instead of the profile's"
    )
    parser.add_argument(
        "--open-s", type=float, help="length of each open-loop phase instead of the profile's"
    )
    parser.add_argument(
        "--quiet-wait-s",
        type=float,
        help="wait at most this long for a quiet machine before each phase instead of the "
        "profile's (0: do not wait)",
    )
    parser.add_argument(
        "--rates",
        metavar="N[,N]",
        help="open-loop rates (requests/s) instead of the profile's, e.g. 100,200",
    )
    args = parser.parse_args(argv)
    if args.rates:
        try:
            args.rates = tuple(int(r) for r in args.rates.split(","))
        except ValueError:
            parser.error("--rates: whole numbers separated by commas")
        if not args.rates or min(args.rates) < 1:
            parser.error("--rates: each rate at least 1/s")
    if args.only:
        wanted = {n.strip() for n in args.only.split(",") if n.strip()}
        unknown = wanted - set(names)
        if unknown:
            parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
        args.only = wanted
    return args


def _profile(args: argparse.Namespace) -> Any:
    profile = QUICK if args.quick else FULL
    if args.rates:
        profile = dataclasses.replace(profile, open_rates=args.rates)
    if args.closed_s:
        profile = dataclasses.replace(profile, closed_s=args.closed_s)
    if args.open_s:
        profile = dataclasses.replace(profile, open_s=args.open_s)
    if args.quiet_wait_s is not None:
        profile = dataclasses.replace(profile, quiet_wait_s=args.quiet_wait_s)
    return profile


def _source_version() -> dict[str, Any]:
    """The commit measured, and whether src/ differed from it (read-only git commands)."""
    root = Path(__file__).resolve().parent.parent

    def git(*argv: str) -> str:
        result = subprocess.run(
            ["git", "-C", str(root), *argv], capture_output=True, text=True, check=False
        )
        return result.stdout.strip() if result.returncode == 0 else ""

    return {
        "commit": git("rev-parse", "HEAD") or None,
        "src_modified": bool(git("status", "--porcelain", "--", "src", "protos")),
    }


class StoreUnreachable(Exception):
    pass


async def _describe_stores(postgres_dsn: str, redis_url: str) -> dict[str, Any]:
    """Versions and the durability settings that matter; raises StoreUnreachable."""
    try:
        conn = await asyncpg.connect(postgres_dsn, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        raise StoreUnreachable(f"cannot reach Postgres at {postgres_dsn}: {exc}") from None
    try:
        rows = await conn.fetch(
            "SELECT name, setting FROM pg_settings WHERE name = ANY($1::text[])",
            ["server_version", "fsync", "synchronous_commit", "wal_sync_method"],
        )
    finally:
        await conn.close()
    settings = {r["name"]: r["setting"] for r in rows}
    client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=5)
    try:
        info: dict[str, Any] = await client.info("server")
    except (OSError, aioredis.RedisError) as exc:
        raise StoreUnreachable(f"cannot reach Redis at {redis_url}: {exc}") from None
    finally:
        await client.aclose()
    return {
        "postgres": f"PostgreSQL {settings.pop('server_version', '?').split()[0]}",
        "postgres_settings": settings,
        "redis": f"Redis {info.get('redis_version', '?')}",
    }


@contextlib.contextmanager
def _embedded_stores() -> Iterator[tuple[str, str]]:
    """authswitch's embedded Postgres and Redis (PyPI wheels), in a temporary directory."""
    from authswitch.embedded import EmbeddedPostgres, EmbeddedRedis

    directory = Path(tempfile.mkdtemp(prefix="authswitch-bench-stores-"))
    postgres, redis = EmbeddedPostgres(directory), EmbeddedRedis(directory)
    try:
        dsn = postgres.start()
        url = redis.start()
        yield dsn, url
    finally:
        redis.stop()
        postgres.stop()
        shutil.rmtree(directory, ignore_errors=True)


async def _main(args: argparse.Namespace) -> int:
    # SIGTERM or SIGINT (even where a background job ignores SIGINT) cancels the run, so
    # the servers started are stopped and the databases and Redis keys removed.
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    started = time.monotonic()
    profile = _profile(args)
    say(f"authswitch benchmarks: {profile.name} run")
    t0 = time.monotonic()
    binaries = ensure_built(say)
    build_s = time.monotonic() - t0
    with contextlib.ExitStack() as stack:
        stores: dict[str, Any] | None = None
        if args.stores != "embedded":
            try:
                stores = await _describe_stores(args.postgres_dsn, args.redis_url)
                stores["kind"] = "machine"
            except StoreUnreachable as exc:
                if args.stores == "machine":
                    raise SystemExit(str(exc)) from None
                say(f"{exc}: using authswitch's embedded Postgres and Redis instead")
        if stores is None:
            args.postgres_dsn, args.redis_url = stack.enter_context(_embedded_stores())
            stores = await _describe_stores(args.postgres_dsn, args.redis_url)
            stores["kind"] = "embedded"
        return await _run(args, binaries, build_s, stores, started)


async def _run(
    args: argparse.Namespace,
    binaries: Binaries,
    build_s: float,
    stores: dict[str, Any],
    started: float,
) -> int:
    profile = _profile(args)
    postgres = await PostgresCluster.open(args.postgres_dsn)
    if postgres is None:
        say("  the Postgres cluster's processes are not visible here: no Postgres CPU figures")
    pid = await redis_pid(args.redis_url)
    if pid is None:
        say("  the redis-server process is not visible here: no Redis CPU figures")
    py_spy = None
    if args.profile:
        py_spy = find_py_spy()
        if py_spy is None:
            raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    workdir = Path(tempfile.mkdtemp(prefix="authswitch-bench-"))
    wanted = [
        s
        for s in SCENARIOS
        if ((s.name in args.only) if args.only else (s.in_quick or not args.quick))
    ]
    remote = None
    if args.remote_postgres != "off" and any(s.remote_postgres for s in wanted):
        remote = RemotePostgres(
            mode=args.remote_postgres,
            local_dsn=args.postgres_dsn,
            proxy_binary=binaries.delay_proxy,
            workdir=workdir,
            say=say,
        )
    harness = Harness(
        profile=profile,
        binaries=binaries,
        postgres_dsn=args.postgres_dsn,
        redis_url=args.redis_url,
        postgres=postgres,
        redis_pid=pid,
        workdir=workdir,
        say=say,
        base_port=args.base_port,
        py_spy=py_spy,
        remote=remote,
    )
    run: dict[str, Any] = {
        "machine": machine_info(),
        "profile": {
            "name": profile.name,
            "warmup_s": profile.warmup_s,
            "closed_s": profile.closed_s,
            "concurrency": profile.concurrency,
            "open_rates": list(profile.open_rates),
            "open_s": profile.open_s,
            "recovery_s": profile.recovery_s,
            "quiet_wait_s": profile.quiet_wait_s,
            "spread_accounts": profile.spread_accounts,
            "off_ledger_programs": profile.off_ledger_programs,
            "channels": profile.channels,
            "noisy_cores": profile.noisy_cores,
            "noisy_retries": profile.noisy_retries,
        },
        "stores": {**stores, "postgres_cpu": postgres is not None, "redis_cpu": pid is not None},
        "command": " ".join(["python -m benchmarks.run", *sys.argv[1:]]),
        "source": {**_source_version(), "label": args.label or None},
        "loadgen_build_s": round(build_s, 1),
        "profiled": py_spy is not None,
        "generator": None,
        "scenarios": [],
    }
    try:
        if not args.no_generator_ceiling:
            run["generator"] = await harness.calibrate()
        for scenario in wanted:  # the quick run leaves out the full-run-only variants
            index = SCENARIOS.index(scenario)
            run["scenarios"].append(await harness.run_scenario(scenario, index))
    finally:
        if remote is not None:
            run["stores"]["remote_postgres"] = remote.describe() | {"mode": args.remote_postgres}
            remote.stop()
        if postgres is not None:
            await postgres.close()
    run["elapsed_s"] = round(time.monotonic() - started, 1)
    run["targets"] = check_targets(run)
    results = args.results or (RESULTS_DIR / "quick" if args.quick else RESULTS_DIR)
    json_path, md_path = write_results(run, results)
    failed = [s["name"] for s in run["scenarios"] if s["status"] == "failed"]
    if args.keep_workdir or failed or args.profile:
        say(f"server logs and request files kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    say(f"wrote {json_path} and {md_path} in {run['elapsed_s']:.0f} s")
    if failed:
        say(f"FAILED: {', '.join(failed)}")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return asyncio.run(_main(_parse(argv)))
    except asyncio.CancelledError:
        print("interrupted: servers stopped, databases and Redis keys removed", flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
