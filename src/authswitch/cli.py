"""The ``authswitch`` command.

authswitch serve      run the gRPC server (embedded Postgres and Redis by default)
authswitch migrate    apply the database migrations and exit
authswitch demo       create a funded demo card on a running server and show how to use it
authswitch reference-client
                      run the reference off-ledger client (a DecisionService)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from authswitch import __version__
from authswitch.config import Settings
from authswitch.errors import ConfigError
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


async def _serve(settings: Settings) -> int:
    from authswitch.app import Application
    from authswitch.metrics_http import start_metrics_server

    app = Application(settings)
    metrics_server = start_metrics_server(settings.metrics_listen)
    try:
        await app.start()
        print(
            f"authswitch {__version__} serving gRPC on {settings.grpc_listen} "
            f"(metrics on {settings.metrics_listen}); Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        await app.run_until_signalled()
    finally:
        if app.state.value != "stopped":
            await app.stop()
        metrics_server.shutdown()
    return 0


async def _migrate(settings: Settings) -> int:
    from authswitch.adapters.postgres.migrations import migrate
    from authswitch.adapters.postgres.pool import create_pool
    from authswitch.embedded import EmbeddedPostgres

    embedded = None
    dsn = settings.postgres_dsn
    if not dsn:
        embedded = EmbeddedPostgres(settings.data_dir)
        dsn = await asyncio.get_running_loop().run_in_executor(None, embedded.start)
    pool = await create_pool(dsn, min_size=1, max_size=1, statement_timeout_ms=600_000)
    try:
        async with pool.acquire() as conn:
            applied = await migrate(conn, progress=lambda text: print(text, file=sys.stderr))
        print(f"{len(applied)} migration(s) applied; the schema is current", file=sys.stderr)
    finally:
        await pool.close()
        if embedded is not None:
            embedded.stop()
    return 0


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="authswitch", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"authswitch {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the gRPC server")
    commands.add_parser("migrate", help="apply database migrations and exit")
    demo = commands.add_parser("demo", help="create a funded demo card on a running server")
    demo.add_argument("--target", help="host:port of the server (default AUTHSWITCH_GRPC_LISTEN)")
    demo.add_argument(
        "scenario", nargs="?", default="card", choices=("card", "lifecycle", "fees", "off-ledger"),
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
    args = parser.parse_args(argv)

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"authswitch: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)

    try:
        if args.command == "serve":
            return _run(_serve(settings))
        if args.command == "migrate":
            return _run(_migrate(settings))
        if args.command == "demo":
            from authswitch.demo import run_demo

            return _run(run_demo(args.target or settings.grpc_listen, args.scenario))
        if args.command == "reference-client":
            return _run(_reference_client(args))
    except ConfigError as exc:
        print(f"authswitch: configuration error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"authswitch: {exc}", file=sys.stderr)
        return 1
    parser.error(f"unknown command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
