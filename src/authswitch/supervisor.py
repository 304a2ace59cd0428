"""``authswitch serve``: a supervisor and N worker processes sharing the gRPC port.

One Python process decides on one core at most (the GIL), so a host's cores are used by
``AUTHSWITCH_WORKERS`` worker processes (default: the number of cores), each a whole server
listening on the same port with SO_REUSEPORT: the kernel spreads the gateway's connections
over them. This process, the supervisor, never creates a gRPC object: grpc's threads make a
``fork()`` taken after they exist unsafe (the embedded Postgres was seen to abort), so
everything that starts a child process happens here, before any worker exists:

1. the port is checked free (a taken port fails loudly, naming the listener);
2. the embedded Postgres and Redis start, when no DSN or URL is configured;
3. the migrations run, once;
4. the metrics endpoint opens: one for all workers (prometheus_client's multiprocess mode:
   each worker writes its series to files in a private directory, read at each scrape);
5. the workers start, and the server is announced once every worker is ready.

A worker that exits is started again (after a pause that grows while it keeps failing); the
others serve meanwhile, and its replacement reloads every account it touches from Postgres
(a new cache generation), so nothing it held in Redis decides anything. Worker 0 also runs
the periodic jobs (age-off, expiry, reports, reconciliation, file deliveries, partitions),
so they run once per host; across hosts their leases and locks keep them single.

SIGTERM or SIGINT: every worker drains (stops accepting, finishes what it decides, flushes
its group commit), then the embedded stores stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from redis.exceptions import RedisError

from authswitch import __version__
from authswitch.config import Settings, load_card_keys, parse_listen
from authswitch.embedded import EmbeddedPostgres, EmbeddedRedis
from authswitch.errors import ConfigError, unreachable
from authswitch.metrics_http import MetricsServer, start_metrics_server
from authswitch.worker import COUNT_ENV, INDEX_ENV, READY_FD_ENV, SUPERVISOR_ENV

__all__ = ["Supervisor", "serve"]

log = logging.getLogger("authswitch.supervisor")

READY_TIMEOUT_S = 120.0  # a worker's start: stores reached, catalogue loaded, port bound
RESTART_PAUSE_MIN_S = 0.5
RESTART_PAUSE_MAX_S = 30.0
STABLE_AFTER_S = 60.0  # a worker up this long is healthy again: its restart pause resets
KILL_AFTER_GRACE_S = 10.0  # beyond the drain grace, a worker still running is killed


class StartupError(Exception):
    """The server could not start; the message says what and where."""


@dataclass
class _Slot:
    index: int
    process: asyncio.subprocess.Process | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    started_at: float = 0.0
    pause_s: float = RESTART_PAUSE_MIN_S
    restarts: int = 0
    # Reads the worker's "ready" line (held here: the loop keeps only a weak reference).
    reader: asyncio.Task[None] | None = None


def _check_free(listen: str, what: str, setting: str) -> None:
    """Fail when ``listen`` is taken (bound without SO_REUSEPORT, so any holder shows)."""
    host, port = parse_listen(listen)
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise StartupError(
                f"cannot listen for {what} on {listen} ({setting}): {exc.strerror}"
            ) from None


class Supervisor:
    def __init__(self, settings: Settings, *, workers: int) -> None:
        if workers < 1:
            raise ConfigError("AUTHSWITCH_WORKERS must be at least 1")
        self.settings = settings
        self.workers = workers
        self._slots = [_Slot(i) for i in range(workers)]
        self._env: dict[str, str] = {}
        self._stopping = asyncio.Event()
        self._metrics_dir: Path | None = None
        self._embedded: list[EmbeddedPostgres | EmbeddedRedis] = []

    # -- start ------------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        metrics_server = None
        try:
            _check_free(self.settings.grpc_listen, "gRPC", "AUTHSWITCH_GRPC_LISTEN")
            env = await self._prepare()
            metrics_server = self._serve_metrics()
            self._env = env
            for slot in self._slots:
                await self._spawn(slot)
            await self._await_ready()
            print(
                f"authswitch {__version__} serving gRPC on {self.settings.grpc_listen} "
                f"with {self.workers} worker(s) (metrics on {self.settings.metrics_listen}); "
                "Ctrl-C to stop",
                file=sys.stderr,
                flush=True,
            )
            await self._supervise()
            return 0
        finally:
            await self._stop_workers()
            if metrics_server is not None:
                metrics_server.shutdown()
                metrics_server.server_close()
            await self._stop_stores()
            if self._metrics_dir is not None:
                shutil.rmtree(self._metrics_dir, ignore_errors=True)

    async def _prepare(self) -> dict[str, str]:
        """Stores, keys and schema, before any worker: the environment workers start with."""
        settings = self.settings
        loop = asyncio.get_running_loop()
        env = dict(os.environ)
        keys, generated = load_card_keys(settings)
        if generated:
            log.warning("using development card keys from the data directory")
            env["AUTHSWITCH_PAN_KEY_HEX"] = keys.pan_key.hex()
            env["AUTHSWITCH_PIN_KEY_HEX"] = keys.pin_key.hex()
            env["AUTHSWITCH_CVV_KEY_HEX"] = keys.cvv_key.hex()
        dsn, redis_url = settings.postgres_dsn, settings.redis_url
        if not dsn:
            postgres = EmbeddedPostgres(settings.data_dir)
            self._embedded.append(postgres)
            dsn = await loop.run_in_executor(None, _named_start, postgres, "Postgres")
            env["AUTHSWITCH_POSTGRES_DSN"] = dsn
        if not redis_url:
            redis = EmbeddedRedis(settings.data_dir)
            self._embedded.append(redis)
            redis_url = await loop.run_in_executor(None, _named_start, redis, "Redis")
            env["AUTHSWITCH_REDIS_URL"] = redis_url
        await _reach_redis(redis_url, settings)
        try:
            if settings.migrate_on_start:
                await _migrate(dsn, settings)
            else:
                await _reach_postgres(dsn, settings)
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            raise StartupError(
                unreachable("Postgres", dsn, "AUTHSWITCH_POSTGRES_DSN", exc)
            ) from None
        env["AUTHSWITCH_MIGRATE_ON_START"] = "false"
        if self.workers > 1:
            env["AUTHSWITCH_GRPC_REUSEPORT"] = "true"
        self._metrics_dir = Path(tempfile.mkdtemp(prefix="authswitch-metrics-"))
        env["PROMETHEUS_MULTIPROC_DIR"] = str(self._metrics_dir)
        env[SUPERVISOR_ENV] = str(os.getpid())
        env[COUNT_ENV] = str(self.workers)
        return env

    def _serve_metrics(self) -> MetricsServer:
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self._metrics_dir))  # type: ignore[no-untyped-call]
        try:
            return start_metrics_server(self.settings.metrics_listen, registry=registry)
        except OSError as exc:
            raise StartupError(
                f"cannot listen for metrics on {self.settings.metrics_listen} "
                f"(AUTHSWITCH_METRICS_LISTEN): {exc.strerror}"
            ) from None

    async def _spawn(self, slot: _Slot) -> None:
        read_fd, write_fd = os.pipe()
        env = {**self._env, INDEX_ENV: str(slot.index), READY_FD_ENV: str(write_fd)}
        slot.ready = asyncio.Event()
        try:
            slot.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "authswitch.worker",
                env=env,
                pass_fds=(write_fd,),
                stdin=subprocess.DEVNULL,
                # Its own session: a terminal's Ctrl-C reaches the supervisor, which drains
                # the workers in order.
                start_new_session=True,
            )  # fmt: skip
        finally:
            os.close(write_fd)
        slot.started_at = time.monotonic()
        slot.reader = asyncio.get_running_loop().create_task(self._read_ready(slot, read_fd))

    async def _read_ready(self, slot: _Slot, read_fd: int) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", 0)
        )
        try:
            if (await reader.readline()).startswith(b"ready"):
                slot.ready.set()
        finally:
            transport.close()

    async def _await_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        for slot in self._slots:
            while not slot.ready.is_set():
                assert slot.process is not None
                if slot.process.returncode is not None:
                    raise StartupError(
                        f"worker {slot.index} exited with {slot.process.returncode} while "
                        "starting (its log lines above say why)"
                    )
                if self._stopping.is_set():
                    return
                if time.monotonic() > deadline:
                    raise StartupError(f"worker {slot.index} not ready in {READY_TIMEOUT_S}s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(slot.ready.wait(), 0.1)

    # -- run --------------------------------------------------------------------------------

    async def _supervise(self) -> None:
        waits = {
            asyncio.ensure_future(slot.process.wait()): slot
            for slot in self._slots
            if slot.process is not None
        }
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                done, _ = await asyncio.wait({stop, *waits}, return_when=asyncio.FIRST_COMPLETED)
                for finished in done - {stop}:
                    slot = waits.pop(finished)
                    await self._restart(slot)
                    if slot.process is not None and not self._stopping.is_set():
                        waits[asyncio.ensure_future(slot.process.wait())] = slot
        finally:
            stop.cancel()
            for pending in waits:
                pending.cancel()

    async def _restart(self, slot: _Slot) -> None:
        assert slot.process is not None
        code = slot.process.returncode
        self._forget(slot)
        if self._stopping.is_set():
            return
        if time.monotonic() - slot.started_at > STABLE_AFTER_S:
            slot.pause_s = RESTART_PAUSE_MIN_S
        log.error(
            "worker exited; starting it again",
            extra={"worker": slot.index, "exit_code": code, "pause_s": slot.pause_s},
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), slot.pause_s)
        if self._stopping.is_set():
            return
        slot.pause_s = min(slot.pause_s * 2, RESTART_PAUSE_MAX_S)
        slot.restarts += 1
        await self._spawn(slot)

    def _forget(self, slot: _Slot) -> None:
        """A worker is gone: its live gauges no longer count (its counters still do)."""
        if slot.process is None or self._metrics_dir is None:
            return
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(  # type: ignore[no-untyped-call]
            slot.process.pid, path=str(self._metrics_dir)
        )

    # -- stop -------------------------------------------------------------------------------

    async def _stop_workers(self) -> None:
        running = [s.process for s in self._slots if s.process and s.process.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        deadline = self.settings.shutdown_grace_s + KILL_AFTER_GRACE_S
        for process in running:
            try:
                await asyncio.wait_for(process.wait(), deadline)
            except TimeoutError:
                log.error("worker did not drain in time; killed", extra={"pid": process.pid})
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()

    async def _stop_stores(self) -> None:
        loop = asyncio.get_running_loop()
        for store in reversed(self._embedded):
            await loop.run_in_executor(None, store.stop)
        self._embedded.clear()


def _named_start(store: EmbeddedPostgres | EmbeddedRedis, name: str) -> str:
    """Start an embedded store; a failure names the store and its own log's last lines."""
    try:
        return store.start()
    except Exception as exc:
        raise StartupError(
            f"the embedded {name} did not start ({type(exc).__name__}: {exc}); the last lines "
            f"of its log:\n{store.log_tail()}"
        ) from exc


async def _reach_postgres(dsn: str, settings: Settings) -> None:
    conn = await asyncpg.connect(dsn, timeout=10)
    await conn.close()


async def _reach_redis(url: str, settings: Settings) -> None:
    """Fail before any worker starts when Redis does not answer."""
    from authswitch.adapters.redis.client import connect_clients

    try:
        clients = await connect_clients(
            url, pool_max=1, timeout_s=max(settings.redis_timeout_ms / 1000, 2.0)
        )
    except (OSError, TimeoutError, RedisError) as exc:
        raise StartupError(unreachable("Redis", url, "AUTHSWITCH_REDIS_URL", exc)) from None
    await clients.aclose()


async def _migrate(dsn: str, settings: Settings) -> None:
    from authswitch.adapters.postgres.migrations import migrate_database

    await migrate_database(dsn, pgbouncer=settings.postgres_pgbouncer, progress=log.info)


def serve(settings: Settings, *, workers: int) -> int:
    """Run the supervisor until SIGTERM or SIGINT; the exit status."""
    import uvloop

    try:
        return uvloop.run(Supervisor(settings, workers=workers).run())
    except StartupError as exc:
        print(f"authswitch: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
