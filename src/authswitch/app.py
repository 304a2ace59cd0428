"""The application: composes adapters and services, and owns their lifecycle.

    created → starting → serving → draining → stopped

``start()`` brings up the stores (embedded ones if none are configured), migrates, loads the
catalogue, starts the group committer and the gRPC server, and only then reports SERVING on
``grpc.health.v1``. ``stop()`` reports NOT_SERVING, stops accepting RPCs and lets in-flight
ones finish within the grace period, flushes the group committer, and closes the pools.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import signal
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from grpc_health.v1 import health_pb2

from authswitch import metrics
from authswitch.adapters.client.decision import ClientChannels
from authswitch.adapters.client.webhook import WebhookSender
from authswitch.adapters.grpc.acceptors import Acceptors
from authswitch.adapters.grpc.access import AccessPolicy
from authswitch.adapters.grpc.admission import Admission
from authswitch.adapters.grpc.codec.admin import AdminReplies
from authswitch.adapters.grpc.codec.authorization import AuthorizeReplies
from authswitch.adapters.grpc.codec.disputes import DisputeReplyEncoder
from authswitch.adapters.grpc.codec.lifecycle import LifecycleReplyEncoder
from authswitch.adapters.grpc.health_port import start_health_port
from authswitch.adapters.grpc.server import SERVICE_NAMES, HealthServicer, build_server
from authswitch.adapters.grpc.servicers import (
    AuthorizationServicer,
    LedgerAdminServicer,
    Services,
)
from authswitch.adapters.postgres.audit import AuditStore
from authswitch.adapters.postgres.cards import CardStore
from authswitch.adapters.postgres.catalog import CatalogStore
from authswitch.adapters.postgres.catalog_changes import CatalogChangeStore
from authswitch.adapters.postgres.committer import GroupCommitter
from authswitch.adapters.postgres.disputes import DisputeStore
from authswitch.adapters.postgres.files import FileScheduleStore
from authswitch.adapters.postgres.holds import HoldStore
from authswitch.adapters.postgres.ledger import LedgerStore
from authswitch.adapters.postgres.migrations import migrate
from authswitch.adapters.postgres.outbox import OutboxStore
from authswitch.adapters.postgres.partitions import PartitionStore
from authswitch.adapters.postgres.pool import create_pool
from authswitch.adapters.postgres.reconcile import ReconciliationStore
from authswitch.adapters.postgres.reports import ReportStore
from authswitch.adapters.redis.cache import LedgerCache
from authswitch.adapters.redis.client import RedisClient, RedisClients, connect_clients
from authswitch.adapters.sinks import DirectorySink
from authswitch.config import Settings, load_card_keys
from authswitch.domain.cardsec import CardKeys
from authswitch.embedded import EmbeddedPostgres, EmbeddedRedis
from authswitch.loop_lag import LoopLag
from authswitch.secrets import SecretStore
from authswitch.service.admin import AdminService
from authswitch.service.authorization import AuthorizationService
from authswitch.service.cache_sync import CacheSync
from authswitch.service.catalog import Catalog
from authswitch.service.catalog_watch import CatalogWatch
from authswitch.service.clock import Clock, SystemClock
from authswitch.service.disputes import DisputeService
from authswitch.service.files import FileDeliveries, FileSchedules
from authswitch.service.jobs import PeriodicJob
from authswitch.service.lifecycle import LifecycleService
from authswitch.service.linked import LinkedSpend
from authswitch.service.offledger import OffLedgerService
from authswitch.service.outbox import OutboxSettings, OutboxWorker
from authswitch.service.partitions import PartitionMaintenance
from authswitch.service.posting import Poster
from authswitch.service.reconcile import Reconciler
from authswitch.service.reports import ReportWriter, ScheduledReports

__all__ = ["Application", "State"]

METRICS_FLUSH_S = 1.0
LIVENESS = "liveness"  # the health service name of the liveness probe
AGE_OFF_LOCK_KEY = 0x61676531  # "age1": one age-off sweep at a time across replicas
CARD_EXPIRY_LOCK_KEY = 0x65787031  # "exp1"
REPORT_LOCK_KEY = 0x72707431  # "rpt1"
RECONCILE_LOCK_KEY = 0x72636E31  # "rcn1"
FILES_LOCK_KEY = 0x66696C31  # "fil1"
PARTITIONS_LOCK_KEY = 0x70727431  # "prt1": partitions made ahead
RETENTION_LOCK_KEY = 0x72657431  # "ret1": old partitions dropped

log = logging.getLogger(__name__)


class State(enum.Enum):
    CREATED = "created"
    STARTING = "starting"
    SERVING = "serving"
    DRAINING = "draining"
    STOPPED = "stopped"


_TRANSITIONS = {
    State.CREATED: {State.STARTING},
    State.STARTING: {State.SERVING, State.DRAINING},
    State.SERVING: {State.DRAINING},
    State.DRAINING: {State.STOPPED},
    State.STOPPED: set(),
}


class Application:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        keys: CardKeys | None = None,
        run_jobs: bool = True,
        listen_early: bool = True,
    ) -> None:
        """``run_jobs``: run the periodic jobs here (one worker of a host runs them).
        ``listen_early``: open the gRPC port before the stores are reached, answering
        NOT_SERVING until they are (one process behind a readiness probe); else open it only
        once ready (one of several workers on a shared port: new connections then go to
        workers that can serve them)."""
        self.settings = settings
        self.run_jobs = run_jobs
        self.listen_early = listen_early
        self.clock = clock or SystemClock()
        self._keys = keys
        self.state = State.CREATED
        self.grpc_port = 0
        self._embedded_pg: EmbeddedPostgres | None = None
        self._embedded_redis: EmbeddedRedis | None = None
        self._dsn = self._redis_url = ""  # of the embedded stores, once started
        self.pool: asyncpg.Pool[Any] | None = None
        # Where reports and reconciliation read (AUTHSWITCH_REPORTS_POSTGRES_DSN), when not
        # the main pool.
        self.reports_pool: asyncpg.Pool[Any] | None = None
        self.redis: RedisClient | None = None  # one server, or a Redis Cluster
        self.redis_clients: RedisClients | None = None
        self.admission: Admission | None = None  # the authorisations admitted, once listening
        self.server: grpc.aio.Server | None = None
        self.acceptors: Acceptors | None = None  # of the server's Authorize calls
        self.health_server: grpc.aio.Server | None = None  # AUTHSWITCH_HEALTH_LISTEN
        self.health = HealthServicer()
        self.services = Services()
        self.loop_lag = LoopLag()  # authswitch_event_loop_lag_seconds, once started
        self._stopped = asyncio.Event()

    def _move(self, to: State) -> None:
        assert to in _TRANSITIONS[self.state], f"{self.state.value} -> {to.value}"
        log.info("lifecycle", extra={"from": self.state.value, "to": to.value})
        self.state = to

    # -- composition ------------------------------------------------------------------------

    async def start(self) -> None:
        self._move(State.STARTING)
        settings = self.settings
        for name in SERVICE_NAMES:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        # "liveness" is SERVING while the process runs, ready or not: a probe of it restarts
        # a wedged process, never a starting, draining or store-less one.
        await self.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        try:
            # Embedded stores are child processes: they start before the gRPC server
            # exists, because a fork() taken once grpc's threads run is unsafe (it aborted
            # the embedded Postgres). `authswitch serve` starts them in its supervisor.
            await self._start_embedded(settings)
            if self.listen_early:
                # The port opens next, answering NOT_SERVING (and UNAVAILABLE to calls)
                # until Postgres, Redis and the catalogue are ready.
                await self._listen(settings)
                await self._start_components(settings)
            else:
                await self._start_components(settings)
                await self._listen(settings)
        except BaseException:
            await self._close()
            self.state = State.STOPPED
            raise
        self._move(State.SERVING)
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def _listen(self, settings: Settings) -> None:
        policy = AccessPolicy.from_settings(settings)
        if not policy.enabled:
            log.warning("no gateway or admin credentials configured: every caller may call")
        self.admission = Admission(
            ceiling=settings.authorize_in_flight_max,
            floor=min(settings.authorize_in_flight_min, settings.authorize_in_flight_max),
            latency_target_s=settings.authorize_latency_target_ms / 1000,
            waiting_max=settings.client_waiting_max,
        )
        self.server, self.grpc_port, self.acceptors = build_server(
            settings,
            AuthorizationServicer(self.services, admission=self.admission),
            LedgerAdminServicer(self.services),
            self.health,
            policy,
        )
        await self.server.start()
        self.acceptors.start(self.server, self.admission)  # once it runs: they take its calls
        self.health_server = await start_health_port(settings.health_listen, self.health)
        log.info("gRPC listening", extra={"listen": settings.grpc_listen, "port": self.grpc_port})

    async def _start_embedded(self, settings: Settings) -> None:
        loop = asyncio.get_running_loop()
        if not settings.postgres_dsn:
            self._embedded_pg = EmbeddedPostgres(settings.data_dir)
            self._dsn = await loop.run_in_executor(None, self._embedded_pg.start)
        if not settings.redis_url:
            self._embedded_redis = EmbeddedRedis(settings.data_dir)
            self._redis_url = await loop.run_in_executor(None, self._embedded_redis.start)

    async def _start_components(self, settings: Settings) -> None:
        keys = self._keys
        if keys is None:
            keys, generated = load_card_keys(settings)
            if generated:
                log.warning("using development card keys from the data directory")
        reports_pool = await self._connect_stores(settings)
        cache = await self._start_ledger(settings, keys)
        secrets = self._start_offledger_and_outbox(settings, cache)
        self.jobs: list[PeriodicJob] = []
        lease = settings.postgres_pgbouncer  # behind pgbouncer, jobs take leases (jobs.py)
        assert self.pool is not None
        # One writer of the reports and files (it holds no state), for the jobs of both.
        report_writer = ReportWriter(ReportStore(reports_pool, primary=self.pool))
        self._add_ledger_jobs(settings, cache, reports_pool, report_writer, lease=lease)
        self._start_back_office(settings, keys, report_writer, secrets, lease=lease)
        if not self.run_jobs:  # another worker of this host runs them
            self.jobs = []
        for job in self.jobs:
            job.start()
        metrics.declare_known_series()
        self._flush_metrics()
        self.loop_lag.start()
        self.services.authorization = self.authorization
        self.services.lifecycle = self.lifecycle
        self.services.admin = self.admin
        self.services.disputes = self.disputes
        self.services.files = self.files

    async def _connect_stores(self, settings: Settings) -> asyncpg.Pool[Any]:
        """The pools (migrated when asked) and the Redis clients; the pool reports read."""
        dsn = settings.postgres_dsn or self._dsn
        redis_url = settings.redis_url or self._redis_url

        self.pool = await create_pool(
            dsn,
            min_size=settings.postgres_pool_min,
            max_size=settings.postgres_pool_max,
            statement_timeout_ms=settings.postgres_statement_timeout_ms,
            pgbouncer=settings.postgres_pgbouncer,
        )
        if settings.reports_postgres_dsn:
            self.reports_pool = await create_pool(
                settings.reports_postgres_dsn,
                min_size=1,
                max_size=settings.reports_postgres_pool_max,
                statement_timeout_ms=settings.postgres_statement_timeout_ms,
                pgbouncer=settings.postgres_pgbouncer,
                application_name="authswitch-reports",
                read_only=True,
            )
        reports_pool = self.reports_pool or self.pool
        if settings.migrate_on_start:
            async with self.pool.acquire() as conn:
                await migrate(conn, progress=log.info)
        # One server or a Redis Cluster (redis+cluster://...), by the URL: adapters/redis/client.py
        self.redis_clients = await connect_clients(
            redis_url,
            pool_max=settings.redis_pool_max,
            timeout_s=settings.redis_timeout_ms / 1000,
        )
        self.redis = self.redis_clients.admin
        return reports_pool

    async def _start_ledger(self, settings: Settings, keys: CardKeys) -> LedgerCache:
        """The cache, catalogue, group committer and the services that decide and post."""
        assert self.pool is not None
        assert self.redis_clients is not None
        catalog_store = CatalogStore(self.pool)
        ledger = LedgerStore(self.pool)
        holds = HoldStore(self.pool)
        cards = CardStore(self.pool)
        audit = AuditStore(self.pool)
        cache = LedgerCache(
            self.redis_clients.ledger,
            settings.redis_key_prefix,
            marker_ttl_s=settings.idempotency_marker_ttl_s,
            fenced=self.redis_clients.fenced,
        )
        # A new generation: every account is reloaded from Postgres before its next
        # decision, so nothing a crashed process left in Redis decides anything.
        await cache.start_generation(int(self.clock.now().timestamp() * 1000))
        catalog = Catalog(catalog_store, cards, cards_max=settings.card_cache_entries_max)
        await catalog.load()
        await self._watch_catalog(settings, catalog)
        self.committer = self._start_committer(settings)
        sync = CacheSync(
            cache, ledger, self.clock, drain_timeout_s=settings.postgres_statement_timeout_ms / 1000
        )
        poster = Poster(holds=holds, cache=cache, sync=sync, committer=self.committer)
        await sync.start()
        self.cache, self.holds, self.catalog, self.sync = cache, holds, catalog, sync
        self.authorization = AuthorizationService(
            keys=keys,
            catalog=catalog,
            holds=holds,
            cards=cards,
            cache=cache,
            sync=sync,
            committer=self.committer,
            clock=self.clock,
            replies=AuthorizeReplies(),
        )
        self.admin = AdminService(
            keys=keys,
            catalog_store=catalog_store,
            ledger=ledger,
            holds=holds,
            cards=cards,
            audit=audit,
            outbox=OutboxStore(self.pool),
            catalog=catalog,
            sync=sync,
            poster=poster,
            clock=self.clock,
            replies=AdminReplies(),
        )
        self.poster = poster
        self.lifecycle = LifecycleService(
            keys=keys,
            catalog=catalog,
            ledger=ledger,
            holds=holds,
            cards=cards,
            audit=audit,
            poster=poster,
            clock=self.clock,
            replies=LifecycleReplyEncoder(),
        )
        return cache

    def _start_committer(self, settings: Settings) -> GroupCommitter:
        assert self.pool is not None
        committer = GroupCommitter(
            self.pool,
            batch_max=settings.group_commit_batch_max,
            queue_max=settings.group_commit_queue_max,
            linger_us=settings.group_commit_linger_us,
            one_statement=not settings.postgres_pgbouncer,
        )
        committer.start()
        return committer

    async def _watch_catalog(self, settings: Settings, catalog: Catalog) -> None:
        """Other processes' catalogue changes drop this one's copies (catalog_watch.py)."""
        assert self.pool is not None
        changes = CatalogChangeStore(self.pool)
        self.catalog_watch = CatalogWatch(changes, catalog, poll_ms=settings.catalog_poll_ms)
        await self.catalog_watch.start()

    def _start_offledger_and_outbox(self, settings: Settings, cache: LedgerCache) -> SecretStore:
        """The off-ledger clients' channels and service, and the outbox worker; the secrets."""
        assert self.pool is not None
        assert self.committer is not None
        catalog = self.catalog
        secrets = SecretStore(Path(settings.secrets_dir) if settings.secrets_dir else None)
        self.channels = ClientChannels(secrets)
        self.webhook = WebhookSender(
            timeout_s=settings.outbox_delivery_timeout_ms / 1000,
            ca_file=Path(settings.webhook_ca_file) if settings.webhook_ca_file else None,
        )
        self.offledger = OffLedgerService(
            authorization=self.authorization,
            channels=self.channels,
            cache=cache,
            committer=self.committer,
            clock=self.clock,
            answer_reserve_ms=settings.off_ledger_answer_reserve_ms,
        )
        self.authorization.offledger = self.offledger
        self.authorization.linked = LinkedSpend(self.authorization)
        self.outbox = OutboxWorker(
            OutboxStore(self.pool),
            catalog=catalog,
            channels=self.channels,
            webhook=self.webhook,
            secrets=secrets,
            clock=self.clock,
            settings=OutboxSettings(
                poll_ms=settings.outbox_poll_ms,
                concurrency_max=settings.outbox_concurrency_max,
                backoff_initial_ms=settings.outbox_backoff_initial_ms,
                backoff_max_ms=settings.outbox_backoff_max_ms,
                dead_after_s=settings.outbox_dead_after_s,
                delivery_timeout_ms=settings.outbox_delivery_timeout_ms,
            ),
        )
        self.committer.after_notifications = self.outbox.wake
        self.outbox.start()
        return secrets

    def _add_ledger_jobs(
        self, settings: Settings, cache: LedgerCache, reports_pool: asyncpg.Pool[Any],
        report_writer: ReportWriter, *, lease: bool,
    ) -> None:  # fmt: skip
        """The periodic jobs of the ledger: age-off, card expiry, the balance report and
        reconciliation (started with the others by _start_components)."""
        assert self.pool is not None
        if settings.age_off_interval_s:
            lifecycle = self.lifecycle
            self.jobs.append(
                PeriodicJob(
                    "age_off",
                    settings.age_off_interval_s,
                    lambda: lifecycle.age_off(limit=settings.age_off_batch_max),
                    self.pool,
                    lock_key=AGE_OFF_LOCK_KEY,
                    lease=lease,
                )
            )
        if settings.card_expiry_interval_s:
            admin = self.admin
            self.jobs.append(
                PeriodicJob(
                    "card_expiry",
                    settings.card_expiry_interval_s,
                    admin.expire_cards,
                    self.pool,
                    lock_key=CARD_EXPIRY_LOCK_KEY,
                    lease=lease,
                )
            )
        reports_dir = Path(settings.reports_dir or settings.data_dir / "reports")
        scheduled = ScheduledReports(
            report_writer, DirectorySink(reports_dir), self.clock, settings.balance_report_at
        )
        self.jobs.append(
            PeriodicJob(
                "balance_report", 60.0, scheduled.run_due, self.pool, REPORT_LOCK_KEY, lease=lease
            )
        )
        if settings.reconcile_interval_s:
            reconciler = Reconciler(
                ReconciliationStore(self.pool, snapshot_pool=reports_pool), cache, self.clock
            )

            async def reconcile() -> int:
                return len((await reconciler.run()).breaks)

            self.jobs.append(
                PeriodicJob(
                    "reconcile", settings.reconcile_interval_s, reconcile, self.pool,
                    RECONCILE_LOCK_KEY, lease=lease,
                )
            )  # fmt: skip

    def _start_back_office(
        self, settings: Settings, keys: CardKeys, report_writer: ReportWriter,
        secrets: SecretStore, *, lease: bool,
    ) -> None:  # fmt: skip
        """Disputes, file schedules and deliveries, partition maintenance, and their jobs."""
        assert self.pool is not None
        catalog, poster = self.catalog, self.poster
        self.disputes = DisputeService(
            keys=keys, catalog=catalog, disputes=DisputeStore(self.pool), poster=poster,
            clock=self.clock, replies=DisputeReplyEncoder(),
        )  # fmt: skip
        file_schedules = FileScheduleStore(self.pool)
        self.files = FileSchedules(file_schedules, self.clock)
        self.deliveries = FileDeliveries(
            file_schedules,
            report_writer,
            secrets,
            self.clock,
            settings.data_dir / "spool",
        )
        if settings.file_delivery_interval_s:
            self.jobs.append(
                PeriodicJob(
                    "file_delivery", settings.file_delivery_interval_s, self.deliveries.run_due,
                    self.pool, FILES_LOCK_KEY, lease=lease,
                )
            )  # fmt: skip
        self.partitions = PartitionMaintenance(
            PartitionStore(self.pool), self.clock,
            months_ahead=settings.partition_months_ahead,
            retention_months=settings.partition_retention_months,
        )  # fmt: skip
        if settings.partition_maintenance_interval_s:
            self.jobs.append(
                PeriodicJob(
                    "partitions", settings.partition_maintenance_interval_s,
                    self.partitions.create_ahead, self.pool, PARTITIONS_LOCK_KEY, lease=lease,
                )
            )  # fmt: skip
            if settings.partition_retention_months:
                self.jobs.append(
                    PeriodicJob(
                        "retention", settings.partition_maintenance_interval_s,
                        self.partitions.retire, self.pool, RETENTION_LOCK_KEY, lease=lease,
                    )
                )  # fmt: skip

    def _flush_metrics(self) -> None:
        """The decision path's counts into their series, once a second (metrics.py): a
        worker's series are read by its supervisor from files, not scraped from it."""
        metrics.flush_hot()
        if self.state in (State.STARTING, State.SERVING):
            loop = asyncio.get_running_loop()
            self._metrics_flush = loop.call_later(METRICS_FLUSH_S, self._flush_metrics)

    # -- shutdown ---------------------------------------------------------------------------

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain and stop; safe to call more than once."""
        if self.state in (State.DRAINING, State.STOPPED):
            await self._stopped.wait()
            return
        self._move(State.DRAINING)
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        await self.health.enter_graceful_shutdown()
        if self.server is not None:
            # Stops accepting, lets in-flight RPCs finish for up to ``grace`` seconds.
            await self.server.stop(grace)
        if self.acceptors is not None:
            await self.acceptors.closed()
        await self._close()
        if self.health_server is not None:  # last: probes see NOT_SERVING through the drain
            await self.health_server.stop(0)
        self._move(State.STOPPED)
        self._stopped.set()

    async def _close(self) -> None:
        flush = getattr(self, "_metrics_flush", None)
        if flush is not None:
            flush.cancel()
        self.loop_lag.stop()
        metrics.flush_hot()
        if self.server is not None and self.state is State.STARTING:
            await self.server.stop(0)  # a failed start: nothing is in flight
            if self.acceptors is not None:
                await self.acceptors.closed()
            if self.health_server is not None:
                await self.health_server.stop(0)
        for job in getattr(self, "jobs", []):
            await job.stop()
        watch = getattr(self, "catalog_watch", None)
        if watch is not None:
            await watch.stop()
        committer = getattr(self, "committer", None)
        if committer is not None:
            await committer.stop()
        outbox = getattr(self, "outbox", None)
        if outbox is not None:
            await outbox.stop()
        for closing in (getattr(self, "channels", None), getattr(self, "webhook", None)):
            if closing is not None:
                await closing.close()
        sync = getattr(self, "sync", None)
        if sync is not None:  # the background reloads started by failures
            await sync.drain()
        if self.redis_clients is not None:
            await self.redis_clients.aclose()
            self.redis_clients = None
            self.redis = None
        if self.reports_pool is not None:
            await self.reports_pool.close()
            self.reports_pool = None
        if self.pool is not None:
            await self.pool.close()
            self.pool = None
        loop = asyncio.get_running_loop()
        if self._embedded_redis is not None:
            await loop.run_in_executor(None, self._embedded_redis.stop)
            self._embedded_redis = None
        if self._embedded_pg is not None:
            await loop.run_in_executor(None, self._embedded_pg.stop)
            self._embedded_pg = None

    async def run_until_signalled(self) -> None:
        """Serve until SIGTERM or SIGINT, then drain and stop."""
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop_requested.set)
        await stop_requested.wait()
        log.info("signal received, draining")
        await self.stop()
