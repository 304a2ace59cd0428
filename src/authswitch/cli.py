"""The ``authswitch`` command.

authswitch serve      run the gRPC server (embedded Postgres and Redis by default)
authswitch migrate    apply the database migrations and exit
authswitch demo       create a funded demo card on a running server and show how to use it
authswitch reference-client
                      run the reference off-ledger client (a DecisionService)
authswitch report balances --client ID --prefix P --out DIR
                      seed 003's daily account balance report of a client
authswitch report subledger --program ID --date YYYY-MM-DD --out DIR
authswitch report fbo --program ID --out DIR
                      seed 002's subledger net-change and pooled FBO balance files
authswitch report transactions|chargebacks|settlement --program ID --date YYYY-MM-DD --out DIR
                      the sponsor bank's daily transaction and chargeback files, and the
                      daily settlement position per network
authswitch files run [--schedule ID]
                      deliver the scheduled files that are due now (each at most once)
authswitch files schedule --kind K (--program ID | --client ID) --cron "30 2 * * *"
                      (--directory DIR | --sftp USER@HOST[:PORT][/DIR] --key-secret NAME
                      --known-hosts-secret NAME)       schedule a file on a running server
authswitch files list [--program ID | --client ID]
authswitch reconcile [--program ID] [--fbo-csv FILE] [--json]
                      check the ledger; exit 1 on any break
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import AsyncIterator, Coroutine, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from authswitch import __version__
from authswitch.config import PREFIX, Settings
from authswitch.demo import SCENARIOS
from authswitch.errors import ConfigError, RequestError
from authswitch.logs import configure_logging

__all__ = ["main"]

log = logging.getLogger("authswitch")

# gRPC core prints informational lines (e.g. about fork()) to stderr outside our logs.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def _run(coro: Coroutine[Any, Any, int]) -> int:
    import uvloop

    try:
        return uvloop.run(coro)
    except KeyboardInterrupt:
        return 130


async def _migrate(settings: Settings) -> int:
    from authswitch.adapters.postgres.migrations import migrate_database
    from authswitch.embedded import EmbeddedPostgres

    embedded = None
    dsn = settings.postgres_dsn
    if not dsn:
        embedded = EmbeddedPostgres(settings.data_dir)
        dsn = await asyncio.get_running_loop().run_in_executor(None, embedded.start)
    try:
        applied = await migrate_database(
            dsn, pgbouncer=settings.postgres_pgbouncer,
            progress=lambda text: print(text, file=sys.stderr),
        )  # fmt: skip
        print(f"{len(applied)} migration(s) applied; the schema is current")
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


@asynccontextmanager
async def _databases(settings: Settings) -> AsyncIterator[tuple[Any, Any]]:
    """Small pools on the configured Postgres (or the embedded one of the data directory):
    the main one, and the one reports read (AUTHSWITCH_REPORTS_POSTGRES_DSN, a read replica;
    without it, the main one again)."""
    from authswitch.adapters.postgres.pool import create_pool
    from authswitch.embedded import EmbeddedPostgres

    embedded = None
    dsn = settings.postgres_dsn
    if not dsn:
        embedded = EmbeddedPostgres(settings.data_dir)
        dsn = await asyncio.get_running_loop().run_in_executor(None, embedded.start)
    pool = reports = None
    try:
        pool = await create_pool(
            dsn, min_size=1, max_size=2, statement_timeout_ms=3_600_000,
            pgbouncer=settings.postgres_pgbouncer,
        )  # fmt: skip
        if settings.reports_postgres_dsn:
            reports = await create_pool(
                settings.reports_postgres_dsn, min_size=1, max_size=2,
                statement_timeout_ms=3_600_000, pgbouncer=settings.postgres_pgbouncer,
                application_name="authswitch-reports", read_only=True,
            )  # fmt: skip
        yield pool, reports or pool
    finally:
        for opened in (reports, pool):
            if opened is not None:
                await opened.close()
        if embedded is not None:
            embedded.stop()


async def _report(settings: Settings, args: argparse.Namespace) -> int:
    from authswitch.adapters.postgres.reports import ReportStore
    from authswitch.adapters.sinks import DirectorySink
    from authswitch.service.reports import ReportWriter

    sink = DirectorySink(args.out)
    now = datetime.now(UTC)
    async with _databases(settings) as (pool, reports):
        writer = ReportWriter(ReportStore(reports, primary=pool))
        if args.kind == "balances":
            name, count = await writer.balance_report(
                sink, client_id=args.client, prefix=args.prefix, at=now,
                progress=lambda text: print(text, file=sys.stderr),
            )  # fmt: skip
        elif args.kind in ("subledger", "transactions", "chargebacks", "settlement"):
            try:
                day = date.fromisoformat(args.date)
            except ValueError:
                raise RequestError("--date must be YYYY-MM-DD") from None
            write = {
                "subledger": writer.subledger_net_changes, "transactions": writer.transactions,
                "chargebacks": writer.chargebacks, "settlement": writer.settlement,
            }[args.kind]  # fmt: skip
            name, count = await write(sink, program_id=args.program, day=day)
        else:
            name, count = await writer.fbo_balances(sink, program_id=args.program, at=now)
    print(f"wrote {args.out / name} ({count} records)")
    return 0


async def _files(settings: Settings, args: argparse.Namespace) -> int:
    """Deliver what is due now, as the server's job does; a rerun sends nothing twice."""
    from authswitch.adapters.postgres.files import FileScheduleStore
    from authswitch.adapters.postgres.reports import ReportStore
    from authswitch.secrets import SecretStore
    from authswitch.service.clock import SystemClock
    from authswitch.service.files import FileDeliveries
    from authswitch.service.reports import ReportWriter

    secrets = SecretStore(Path(settings.secrets_dir) if settings.secrets_dir else None)
    async with _databases(settings) as (pool, reports):
        store = FileScheduleStore(pool)
        deliveries = FileDeliveries(
            store, ReportWriter(ReportStore(reports, primary=pool)), secrets, SystemClock(),
            settings.data_dir / "spool",
        )  # fmt: skip
        delivered = await deliveries.run_due(schedule_id=args.schedule)
        failed = await store.failed_deliveries(args.schedule)
    print(f"delivered {delivered} file(s)")
    for row in failed:
        print(
            f"pending: schedule {row.schedule_id} due {row.due_at:%Y-%m-%d %H:%M %Z} after "
            f"{row.attempts} attempt(s): {row.last_error}"
        )
    return 1 if failed else 0


def _sftp_destination(text: str, key_secret: str, known_hosts_secret: str) -> Any:
    """USER@HOST[:PORT][/REMOTE_DIR] as an SftpDestination."""
    import re

    from authswitch.v1 import ledger_admin_pb2

    match = re.fullmatch(r"([^@/:]+)@([^@/:]+)(?::(\d{1,5}))?(?:/(.*))?", text)
    if match is None:
        raise RequestError("--sftp must be USER@HOST[:PORT][/REMOTE_DIR]")
    user, host, port, remote = match.groups()
    return ledger_admin_pb2.SftpDestination(
        host=host, port=int(port or 22), username=user, key_secret=key_secret,
        known_hosts_secret=known_hosts_secret, remote_dir=remote or ".",
    )  # fmt: skip


async def _file_schedules(target: str, args: argparse.Namespace) -> int:
    import grpc

    from authswitch.adapters.grpc.client import ServerUnreachable, connect
    from authswitch.v1 import ledger_admin_pb2, ledger_admin_pb2_grpc

    try:
        channel = await connect(target)
    except ServerUnreachable as exc:
        print(f"authswitch: {exc}", file=sys.stderr)
        return 1
    async with channel:
        admin = ledger_admin_pb2_grpc.LedgerAdminServiceStub(channel)
        try:
            if args.action == "list":
                schedules: list[ledger_admin_pb2.FileSchedule] = []
                token = ""
                while True:  # every page
                    listed = await admin.ListFileSchedules(
                        ledger_admin_pb2.ListFileSchedulesRequest(
                            program_id=args.program, client_id=args.client, page_token=token
                        )
                    )
                    schedules.extend(listed.schedules)
                    token = listed.next_page_token
                    if not token:
                        break
            else:
                schedule = ledger_admin_pb2.FileSchedule(
                    kind=ledger_admin_pb2.FileKind.Value(f"FILE_KIND_{args.kind.upper()}"),
                    program_id=args.program or "", client_id=args.client or "",
                    cron=args.cron, time_zone=args.time_zone, prefix=args.prefix,
                )  # fmt: skip
                if args.directory:
                    schedule.directory = args.directory
                else:
                    schedule.sftp.CopyFrom(
                        _sftp_destination(args.sftp, args.key_secret, args.known_hosts_secret)
                    )
                created = await admin.CreateFileSchedule(
                    ledger_admin_pb2.CreateFileScheduleRequest(schedule=schedule)
                )
                schedules = [created.schedule]
        except grpc.aio.AioRpcError as exc:
            print(f"authswitch: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 2 if exc.code() != grpc.StatusCode.UNAVAILABLE else 1
    for s in schedules:
        where = s.directory or (
            f"sftp://{s.sftp.username}@{s.sftp.host}:{s.sftp.port}/{s.sftp.remote_dir}"
        )
        kind = ledger_admin_pb2.FileKind.Name(s.kind).removeprefix("FILE_KIND_").lower()
        print(
            f"{s.schedule_id}  {kind:<12} {s.program_id or s.client_id}  {s.cron!r} "
            f"{s.time_zone}  -> {where}{'' if s.enabled else '  (disabled)'}"
        )
    return 0


async def _reconcile(settings: Settings, args: argparse.Namespace) -> int:
    from authswitch.adapters.postgres.reconcile import ReconciliationStore
    from authswitch.service.clock import SystemClock
    from authswitch.service.reconcile import Reconciler, read_fbo_file

    async with _databases(settings) as (pool, reports):
        store = ReconciliationStore(pool, snapshot_pool=reports)
        fbo = None
        if args.fbo_csv is not None:
            fbo = read_fbo_file(args.fbo_csv, await store.exponents())
        cache, client = await _cache_if_reachable(settings)
        try:
            reconciler = Reconciler(store, cache, SystemClock())
            report = await reconciler.run(program_id=args.program, fbo=fbo)
        finally:
            if client is not None:
                await client.aclose()
    print(report.to_json() if args.json else report.to_text())
    return 0 if report.ok else 1


async def _cache_if_reachable(settings: Settings) -> tuple[Any, Any]:
    """The Redis cache to compare, when one answers (the embedded one runs with serve)."""
    from authswitch.adapters.redis.cache import LedgerCache
    from authswitch.adapters.redis.client import connect_clients
    from authswitch.embedded import EmbeddedRedis

    url = settings.redis_url or EmbeddedRedis(settings.data_dir).url
    try:
        clients = await connect_clients(url, pool_max=4, timeout_s=2.0)  # one or a cluster
    except Exception:
        print("authswitch: Redis not reachable, cache_equals_postgres skipped", file=sys.stderr)
        return None, None
    cache = LedgerCache(
        clients.ledger, settings.redis_key_prefix, marker_ttl_s=60, fenced=clients.fenced
    )
    return cache, clients


async def _reference_client(args: argparse.Namespace) -> int:
    import signal

    from authswitch.reference_client import (
        ReferenceClient,
        ReferenceLedger,
        serve_reference_client,
    )

    if not 0 <= args.error_rate <= 1 or args.latency_ms < 0:
        print("authswitch: --error-rate is 0..1 and --latency-ms not negative", file=sys.stderr)
        return 2
    token = os.environ.get(args.token_env, "") if args.token_env else ""
    client = ReferenceClient(
        ReferenceLedger(opening_minor=args.balance_minor),
        latency_ms=args.latency_ms,
        error_rate=args.error_rate,
        token=token,
    )
    server, _ = await serve_reference_client(client, args.listen)
    print(f"reference client serving DecisionService on {args.listen}", file=sys.stderr)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(2)
    return 0


def _parser() -> argparse.ArgumentParser:
    """The command line: its commands and their options."""
    parser = argparse.ArgumentParser(prog="authswitch", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"authswitch {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    from authswitch.config import settings_help

    serving = commands.add_parser(
        "serve",
        help="run the gRPC server",
        description="Run the gRPC server: a supervisor and its worker processes, on the "
        "embedded Postgres and Redis unless AUTHSWITCH_POSTGRES_DSN and AUTHSWITCH_REDIS_URL "
        "name yours. Settings come from the environment:",
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serving.add_argument(
        "--workers", type=int, default=0,
        help="worker processes sharing the gRPC port (default AUTHSWITCH_WORKERS, or one per "
        "core)",
    )  # fmt: skip
    commands.add_parser("migrate", help="apply database migrations and exit")
    demo = commands.add_parser("demo", help="create a funded demo card on a running server")
    demo.add_argument("--target", help="host:port of the server (default AUTHSWITCH_GRPC_LISTEN)")
    demo.add_argument(
        "scenario", nargs="?", default="card", choices=SCENARIOS,
        help="what to walk through (default: a funded demo card)",
    )  # fmt: skip
    reference = commands.add_parser(
        "reference-client", help="run the reference off-ledger client (a DecisionService)"
    )
    reference.add_argument("--listen", default="127.0.0.1:50061", help="host:port to serve on")
    reference.add_argument("--latency-ms", type=int, default=0, help="added to every answer")
    reference.add_argument("--error-rate", type=float, default=0.0, help="share of calls failed")
    reference.add_argument(
        "--balance-minor", type=int, default=100_000, help="opening balance of every account"
    )
    reference.add_argument(
        "--token-env", default="", help="environment variable holding the expected bearer token"
    )
    _add_report(commands)
    _add_files(commands)
    reconcile = commands.add_parser("reconcile", help="check the ledger; exit 1 on any break")
    reconcile.add_argument("--program", help="only this program")
    reconcile.add_argument("--fbo-csv", type=Path, help="the partner's pooled FBO balance file")
    reconcile.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _add_report(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """authswitch report: one command per report file."""
    report = commands.add_parser("report", help="write a report file")
    kinds = report.add_subparsers(dest="kind", required=True)
    balances = kinds.add_parser("balances", help="seed 003's account balance report")
    balances.add_argument("--client", required=True, help="client id")
    balances.add_argument(
        "--prefix", required=True, help="file name prefix (1-15 of A-Z a-z 0-9 _)"
    )
    balances.add_argument("--out", required=True, type=Path, help="directory to write into")
    for kind, text in (
        ("subledger", "seed 002's daily subledger net changes"),
        ("transactions", "the daily transaction file (docs/files.md)"),
        ("chargebacks", "the daily chargeback file (docs/files.md)"),
        ("settlement", "the daily settlement position per network (docs/files.md)"),
    ):
        daily = kinds.add_parser(kind, help=text)
        daily.add_argument("--program", required=True)
        daily.add_argument("--date", required=True, help="YYYY-MM-DD, in the program's time zone")
        daily.add_argument("--out", required=True, type=Path)
    fbo = kinds.add_parser("fbo", help="seed 002's pooled FBO balance file")
    fbo.add_argument("--program", required=True)
    fbo.add_argument("--out", required=True, type=Path)


def _add_files(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """authswitch files: delivering scheduled files, and scheduling them on a server."""
    files = commands.add_parser("files", help="scheduled file delivery")
    actions = files.add_subparsers(dest="action", required=True)
    run = actions.add_parser("run", help="deliver the due files now; exit 1 if any is pending")
    run.add_argument("--schedule", help="only this schedule (its due files, enabled or not)")
    schedule = actions.add_parser("schedule", help="schedule a file on a running server")
    schedule.add_argument(
        "--target", help="host:port of the server (default AUTHSWITCH_GRPC_LISTEN)"
    )
    schedule.add_argument(
        "--kind", required=True,
        choices=(
            "balances", "transactions", "chargebacks", "subledger", "fbo", "settlement",
            "subledger_sync",
        ),
    )  # fmt: skip
    owner = schedule.add_mutually_exclusive_group(required=True)
    owner.add_argument("--program", help="program id (every file but balances)")
    owner.add_argument("--client", help="client id (balances)")
    schedule.add_argument("--cron", required=True, help='five fields, e.g. "30 2 * * *"')
    schedule.add_argument("--time-zone", default="", help="IANA zone (default: the program's)")
    schedule.add_argument("--prefix", default="", help="balance report file name prefix")
    where = schedule.add_mutually_exclusive_group(required=True)
    where.add_argument("--directory", help="an absolute directory on the server")
    where.add_argument("--sftp", help="USER@HOST[:PORT][/REMOTE_DIR]")
    schedule.add_argument("--key-secret", default="", help="secret holding the SFTP private key")
    schedule.add_argument(
        "--known-hosts-secret", default="", help="secret holding the server's known_hosts lines"
    )
    listing = actions.add_parser("list", help="list the file schedules of a running server")
    listing.add_argument(
        "--target", help="host:port of the server (default AUTHSWITCH_GRPC_LISTEN)"
    )
    listing.add_argument("--program", default="")
    listing.add_argument("--client", default="")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"authswitch: configuration error: {exc}", file=sys.stderr)
        return 2
    level = settings.log_level
    if args.command not in ("serve", "reference-client") and PREFIX + "LOG_LEVEL" not in os.environ:
        # A one-shot command's output is its result (on stdout); its progress logs are not
        # news unless asked for with AUTHSWITCH_LOG_LEVEL. Warnings and errors still show.
        level = "WARNING"
    configure_logging(level, settings.log_format)

    try:
        status = _command(settings, args)
    except ConfigError as exc:
        print(f"authswitch: configuration error: {exc}", file=sys.stderr)
        return 2
    except RequestError as exc:
        print(f"authswitch: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"authswitch: {exc}", file=sys.stderr)
        return 1
    if status is None:
        parser.error(f"unknown command {args.command}")
    return status


def _command(settings: Settings, args: argparse.Namespace) -> int | None:
    """Run the command ``args`` name; its exit status (None: no such command)."""
    if args.command == "serve":
        from authswitch.supervisor import serve

        workers = args.workers or settings.workers or os.cpu_count() or 1
        return serve(settings, workers=workers)
    if args.command == "migrate":
        return _run(_migrate(settings))
    if args.command == "demo":
        from authswitch.demo import run_demo

        return _run(run_demo(args.target or settings.grpc_listen, args.scenario))
    if args.command == "reference-client":
        return _run(_reference_client(args))
    if args.command == "report":
        return _run(_report(settings, args))
    if args.command == "reconcile":
        return _run(_reconcile(settings, args))
    if args.command == "files" and args.action == "run":
        return _run(_files(settings, args))
    if args.command == "files":
        if getattr(args, "directory", None):
            args.directory = str(Path(args.directory).resolve())  # the server's view
        return _run(_file_schedules(args.target or settings.grpc_listen, args))
    return None


if __name__ == "__main__":
    sys.exit(main())
