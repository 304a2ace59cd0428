"""Settings: one frozen object read from ``AUTHSWITCH_*`` environment variables (12-factor).

Every setting has a named default; units are in the names. Secrets (the card keys) come from
the environment or from files named by ``*_FILE`` variables, and never appear in ``repr``.
Without ``AUTHSWITCH_POSTGRES_DSN`` / ``AUTHSWITCH_REDIS_URL`` the server starts embedded
Postgres and Redis under ``AUTHSWITCH_DATA_DIR``.
"""

from __future__ import annotations

import difflib
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from authswitch.domain.cardsec import KEY_BYTES_MIN, CardKeys
from authswitch.errors import ConfigError

__all__ = ["HELP", "Settings", "load_card_keys", "parse_listen", "settings_help"]

PREFIX = "AUTHSWITCH_"
SECRET_PREFIX = "AUTHSWITCH_SECRET_"  # noqa: S105 - a name prefix, not a secret


def parse_listen(value: str) -> tuple[str, int]:
    """``"127.0.0.1:50051"`` → ("127.0.0.1", 50051); ``"[::]:50051"`` → ("::", 50051)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"expected host:port, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - an explicit empty host


@dataclass(frozen=True, slots=True)
class Settings:
    """All settings; the environment variable of a field is ``AUTHSWITCH_<FIELD>``."""

    grpc_listen: str = "127.0.0.1:50051"
    metrics_listen: str = "127.0.0.1:9464"
    postgres_dsn: str = field(default="", repr=False)  # empty: embedded Postgres
    # Empty: embedded Redis. A Redis Cluster: redis+cluster://host:port,host:port (seeds).
    # Behind Sentinel: redis+sentinel://sentinel:26379,sentinel:26379/master-name[/db].
    redis_url: str = field(default="", repr=False)
    data_dir: Path = Path(".authswitch")
    redis_key_prefix: str = "as"
    migrate_on_start: bool = True
    log_level: str = "INFO"
    log_format: str = "json"  # json | text

    # The group committer: a batch starts when the previous one has committed, with every
    # write waiting then (at most ``group_commit_batch_max``); when two or more were
    # waiting (the process is busy), it first waits ``group_commit_linger_us`` for more, so
    # that under load each statement carries more writes. A lone write commits at once.
    group_commit_batch_max: int = 256
    group_commit_linger_us: int = 1_000
    group_commit_queue_max: int = 20_000

    postgres_pool_min: int = 2
    postgres_pool_max: int = 10
    postgres_statement_timeout_ms: int = 5_000
    # The Postgres DSNs are pgbouncers in transaction pooling mode: no prepared statement
    # cache, settings per transaction, leases instead of session locks (docs/scaling.md).
    postgres_pgbouncer: bool = False
    # Where reports, daily files and reconciliation read their snapshots (a read replica);
    # empty: the main DSN. Its pool holds at most reports_postgres_pool_max connections.
    reports_postgres_dsn: str = field(default="", repr=False)
    reports_postgres_pool_max: int = 4
    # Monthly partitions of the journal, holds and outbox: this many months ahead are made
    # every partition_maintenance_interval_s (0 turns maintenance and retention off), and
    # months older than partition_retention_months are dropped once nothing in them is
    # needed (0: kept forever).
    partition_months_ahead: int = 3
    partition_maintenance_interval_s: float = 3600.0
    partition_retention_months: int = 0
    # Connections to Redis; on a cluster, commands in flight and connections per node.
    redis_pool_max: int = 64
    redis_timeout_ms: int = 2_000

    # Idempotency markers in Redis (Postgres keeps every decision forever).
    idempotency_marker_ttl_s: int = 7 * 24 * 3600
    card_cache_entries_max: int = 200_000
    # How often expired holds are aged off; 0 turns the sweeper off (tests drive it).
    age_off_interval_s: float = 60.0
    age_off_batch_max: int = 1_000

    # TLS on the gRPC port (both files, PEM); with a client CA too, mutual TLS is required.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    # Who may call what: AuthorizationService needs the gateway role, LedgerAdminService the
    # admin role, proven by a client certificate's common name (comma-separated lists) or a
    # bearer token (files of tokens, one per line, so they can be rotated). None set: open.
    gateway_subjects: str = ""
    admin_subjects: str = ""
    gateway_token_file: str = ""
    admin_token_file: str = ""

    grpc_max_message_bytes: int = 64 * 1024
    grpc_max_concurrent_streams: int = 1_000
    # Authorisations in flight in this process's handlers (most waiting on Postgres or
    # Redis); past it a new one is refused at once with RESOURCE_EXHAUSTED, nothing written.
    authorize_in_flight_max: int = 256
    # Below that ceiling, the limit follows the rate decisions complete: as many in flight
    # as complete within authorize_latency_target_ms (0: the ceiling, fixed), and never
    # fewer than authorize_in_flight_min (bursts and batching need room).
    authorize_latency_target_ms: int = 50
    authorize_in_flight_min: int = 64
    # Off-ledger calls waiting on their client's answer do not count above (they cost memory,
    # not CPU, for up to the programme's deadline); at most this many wait at once in one
    # process, and beyond it the programme's stand-in answers without asking.
    client_waiting_max: int = 1_000
    # Calls that wait in gRPC's core for this process to take them: near this many some are
    # refused at random, beyond it all, at once (the caller sees CANCELLED; nothing was
    # decided). It bounds the wait before a call reaches the admission limit above: a
    # process takes a few hundred calls a second from that queue when it is saturated, so
    # 64 waiting is already ~100 ms (docs/operations.md, "Overload").
    grpc_pending_calls_max: int = 64
    # Authorize calls gRPC's core may hand this process at once, beyond grpc.aio's one: each
    # is a request for a call kept outstanding (adapters/grpc/acceptors.py); a call taken
    # with the admission limit reached is refused as it comes (RESOURCE_EXHAUSTED). 0:
    # grpc.aio's one request only. 32: a whole batch's answers let as many new calls in.
    grpc_acceptors: int = 32
    # While calls are being refused (overload), up to this many more acceptors, one added per
    # refusal: calls then come faster than the event loop's turns take them, and those not
    # taken wait in core (then CANCELLED). Once a second passes with none refused, each call
    # taken retires one. 0: never more than grpc_acceptors.
    grpc_acceptors_surge: int = 96
    # Let several authswitch processes on one host listen on the same port (SO_REUSEPORT):
    # the kernel spreads new connections over them, so one host's cores all decide. Each
    # process is a replica (its own metrics port). Off: a taken port fails loudly.
    grpc_reuseport: bool = False
    # Worker processes of `authswitch serve` sharing the gRPC port; 0: one per core.
    workers: int = 0
    shutdown_grace_s: float = 10.0

    # Named secrets of programs (client tokens, TLS material, webhook keys) are read from
    # AUTHSWITCH_SECRET_<NAME> or from the file <secrets_dir>/<name>.
    secrets_dir: str = ""

    # Off-ledger: of a programme's deadline, what is kept back from the client for answering
    # without it (the stand-in decision and its durable record), so that the answer to a
    # silent client still goes back within the deadline. The client is told what it has
    # (DecideRequest.time_left_ms). The least kept back: a busy process keeps back what its
    # recent stand-ins needed (domain/offledger.py, AnswerReserve).
    off_ledger_answer_reserve_ms: int = 100

    # Notifications: how often the outbox is polled when idle, how many deliveries run at
    # once, the backoff between attempts, and when a notification is given up (dead letter).
    outbox_poll_ms: int = 200
    # How often a process reads the catalogue changes other processes made (fee schedules,
    # limits, spend controls...): a change applies everywhere within this.
    catalog_poll_ms: int = 500
    outbox_concurrency_max: int = 16
    outbox_backoff_initial_ms: int = 500
    outbox_backoff_max_ms: int = 60_000
    outbox_dead_after_s: int = 24 * 3600
    outbox_delivery_timeout_ms: int = 5_000
    # A CA bundle webhooks' certificates are checked against (empty: the system's).
    webhook_ca_file: str = ""
    # How often cards past their expiry month are set to EXPIRED; 0 turns the job off.
    card_expiry_interval_s: float = 3600.0

    # Reports: the daily account balance report of each subscribed client is written to
    # reports_dir (empty: <data_dir>/reports) once a day after balance_report_at (HH:MM, UTC).
    reports_dir: str = ""
    balance_report_at: str = "01:05"
    # How often the ledger reconciles itself (metrics only; `authswitch reconcile` prints);
    # 0 turns it off.
    reconcile_interval_s: float = 3600.0
    # How often scheduled files (admin CreateFileSchedule) are checked and the due ones
    # delivered; 0 turns deliveries off.
    file_delivery_interval_s: float = 60.0

    # Card keys, hex. Empty: read from *_FILE, or (development only) generated in data_dir.
    pan_key_hex: str = field(default="", repr=False)
    pin_key_hex: str = field(default="", repr=False)
    cvv_key_hex: str = field(default="", repr=False)

    # A plaintext host:port serving grpc.health.v1 only, for probes that cannot speak TLS
    # (Kubernetes' gRPC probes) when the gRPC port has TLS; empty: off.
    health_listen: str = ""

    @property
    def embedded_postgres(self) -> bool:
        return not self.postgres_dsn

    @property
    def embedded_redis(self) -> bool:
        return not self.redis_url

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every field from ``AUTHSWITCH_<FIELD>``; unknown ``AUTHSWITCH_*`` names fail,
        so a misspelt setting is never silently ignored."""
        env = os.environ if env is None else env
        known = {f.name.upper() for f in fields(cls)}
        known |= {"PAN_KEY_FILE", "PIN_KEY_FILE", "CVV_KEY_FILE"}
        known |= {"TEST_POSTGRES_DSN", "TEST_REDIS_URL"}  # read by the test suite
        known |= {"TEST_REQUIRE_ENGINES"}  # the test suite: fail, not skip, without pgbouncer
        # Set by `authswitch serve` for its workers (authswitch/worker.py), not by people.
        known |= {"WORKER_INDEX", "WORKER_READY_FD", "WORKER_SUPERVISOR_PID", "WORKER_COUNT"}
        unknown = sorted(
            name
            for name in env
            if name.startswith(PREFIX)
            and name[len(PREFIX) :] not in known
            and not name.startswith(SECRET_PREFIX)
        )
        if unknown:
            raise ConfigError("unknown settings: " + "; ".join(_suggest(n, known) for n in unknown))
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(PREFIX + f.name.upper())
            if raw is None:
                continue
            values[f.name] = _convert(f.name, raw, f.default)
        for name in ("pan", "pin", "cvv"):
            path = env.get(f"{PREFIX}{name.upper()}_KEY_FILE")
            if path and f"{name}_key_hex" not in values:
                values[f"{name}_key_hex"] = Path(path).read_text().strip()
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def validate(self) -> None:
        for listen in (self.grpc_listen, self.metrics_listen):
            parse_listen(listen)
        positive = (
            "group_commit_batch_max", "group_commit_queue_max", "postgres_pool_max",
            "redis_pool_max", "redis_timeout_ms", "idempotency_marker_ttl_s",
            "card_cache_entries_max", "age_off_batch_max", "grpc_max_message_bytes",
            "grpc_max_concurrent_streams", "authorize_in_flight_max", "authorize_in_flight_min",
            "grpc_pending_calls_max", "client_waiting_max",
            "postgres_statement_timeout_ms", "outbox_poll_ms", "catalog_poll_ms",
            "outbox_concurrency_max", "outbox_backoff_initial_ms", "outbox_backoff_max_ms",
            "outbox_dead_after_s", "outbox_delivery_timeout_ms", "reports_postgres_pool_max",
            "partition_months_ahead",
        )  # fmt: skip
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"AUTHSWITCH_{name.upper()} must be positive")
        if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", self.balance_report_at):
            raise ConfigError("AUTHSWITCH_BALANCE_REPORT_AT must be HH:MM")
        if not 0 <= self.grpc_acceptors <= ACCEPTORS_MAX:
            raise ConfigError(f"AUTHSWITCH_GRPC_ACCEPTORS must be 0 to {ACCEPTORS_MAX}")
        if not 0 <= self.grpc_acceptors_surge <= ACCEPTORS_MAX - self.grpc_acceptors:
            raise ConfigError(
                "AUTHSWITCH_GRPC_ACCEPTORS_SURGE must be 0 to "
                f"{ACCEPTORS_MAX} - AUTHSWITCH_GRPC_ACCEPTORS"
            )
        if self.reconcile_interval_s < 0:
            raise ConfigError("AUTHSWITCH_RECONCILE_INTERVAL_S must not be negative")
        if self.file_delivery_interval_s < 0:
            raise ConfigError("AUTHSWITCH_FILE_DELIVERY_INTERVAL_S must not be negative")
        if self.card_expiry_interval_s < 0:
            raise ConfigError("AUTHSWITCH_CARD_EXPIRY_INTERVAL_S must not be negative")
        if self.age_off_interval_s < 0:
            raise ConfigError("AUTHSWITCH_AGE_OFF_INTERVAL_S must not be negative")
        if self.partition_maintenance_interval_s < 0:
            raise ConfigError("AUTHSWITCH_PARTITION_MAINTENANCE_INTERVAL_S must not be negative")
        if self.partition_retention_months < 0:
            raise ConfigError("AUTHSWITCH_PARTITION_RETENTION_MONTHS must not be negative")
        if self.off_ledger_answer_reserve_ms < 0:
            raise ConfigError("AUTHSWITCH_OFF_LEDGER_ANSWER_RESERVE_MS must not be negative")
        if self.authorize_latency_target_ms < 0:
            raise ConfigError("AUTHSWITCH_AUTHORIZE_LATENCY_TARGET_MS must not be negative")
        if self.workers < 0:
            raise ConfigError("AUTHSWITCH_WORKERS must not be negative (0: one per core)")
        if self.group_commit_linger_us < 0:
            raise ConfigError("AUTHSWITCH_GROUP_COMMIT_LINGER_US must not be negative")
        if not 0 < self.postgres_pool_min <= self.postgres_pool_max:
            raise ConfigError("need 0 < AUTHSWITCH_POSTGRES_POOL_MIN <= _MAX")
        if self.log_format not in ("json", "text"):
            raise ConfigError("AUTHSWITCH_LOG_FORMAT must be json or text")
        if not self.redis_key_prefix or "{" in self.redis_key_prefix:
            raise ConfigError("AUTHSWITCH_REDIS_KEY_PREFIX must be non-empty, without braces")


# What each setting does, in plain words: `authswitch serve --help` lists them with their
# defaults and units (a unit test keeps this in step with the fields).
HELP: dict[str, str] = {
    "grpc_listen": "host:port the gRPC server listens on",
    "metrics_listen": "host:port of the Prometheus /metrics endpoint",
    "postgres_dsn": "Postgres to use, e.g. postgresql://user@db:5432/authswitch (empty: an "
    "embedded Postgres in the data directory)",
    "redis_url": "Redis to use: redis://host:port/db, rediss:// with TLS, unix:///path, or "
    "redis+cluster://host:port,host:port for a cluster (empty: an embedded Redis)",
    "data_dir": "where the embedded Postgres and Redis, development card keys and reports are kept",
    "redis_key_prefix": "prefix of every Redis key, so several deployments can share one Redis",
    "migrate_on_start": "apply database migrations when the server starts",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "log_format": "json (one object per line) or text",
    "group_commit_batch_max": "most decisions written to Postgres in one transaction",
    "group_commit_linger_us": "how long a batch waits for more decisions when two or more "
    "were already waiting as the previous one committed (0: never)",
    "group_commit_queue_max": "most decisions waiting to be written; beyond it a decision is "
    "answered 96",
    "postgres_pool_min": "Postgres connections kept open per process",
    "postgres_pool_max": "most Postgres connections per process",
    "postgres_statement_timeout_ms": "how long one Postgres statement may run",
    "postgres_pgbouncer": "the Postgres DSNs point at pgbouncer in transaction pooling mode",
    "reports_postgres_dsn": "a read replica for reports, files and reconciliation (empty: the "
    "main Postgres)",
    "reports_postgres_pool_max": "most connections to the reports replica",
    "partition_months_ahead": "monthly partitions made ahead of time",
    "partition_maintenance_interval_s": "how often partitions are made and old ones dropped "
    "(0: never)",
    "partition_retention_months": "months of journal, holds and outbox kept (0: all)",
    "redis_pool_max": "most Redis connections for administration (decisions share one "
    "pipelined connection per node)",
    "redis_timeout_ms": "how long a Redis command may take before the connection is given up",
    "idempotency_marker_ttl_s": "how long Redis remembers a message id (Postgres keeps every "
    "decision forever)",
    "card_cache_entries_max": "cards remembered in each process",
    "age_off_interval_s": "how often expired holds are released (0: never)",
    "age_off_batch_max": "most holds released in one sweep",
    "tls_cert_file": "PEM certificate of the gRPC port (with tls_key_file: TLS)",
    "tls_key_file": "PEM private key of the gRPC port",
    "tls_client_ca_file": "PEM CA of client certificates (set: mutual TLS required)",
    "gateway_subjects": "client certificate names allowed to call AuthorizationService, "
    "comma-separated",
    "admin_subjects": "client certificate names allowed to call LedgerAdminService, "
    "comma-separated",
    "gateway_token_file": "file of bearer tokens (one per line) of the gateway role",
    "admin_token_file": "file of bearer tokens (one per line) of the admin role",
    "grpc_max_message_bytes": "largest request accepted",
    "grpc_max_concurrent_streams": "most calls at once on one connection",
    "authorize_in_flight_max": "most authorisations in flight in one process; beyond it a "
    "call is refused at once (RESOURCE_EXHAUSTED)",
    "authorize_latency_target_ms": "below that ceiling, as many authorisations in flight as "
    "the process completes in this time (0: the ceiling, fixed)",
    "authorize_in_flight_min": "... but never fewer than this many",
    "client_waiting_max": "most off-ledger calls waiting on their clients at once in one "
    "process (not counted in flight); beyond it the stand-in answers without asking",
    "grpc_pending_calls_max": "calls waiting for a process to take them; beyond it they are "
    "refused at once (CANCELLED)",
    "grpc_acceptors": "Authorize calls gRPC may hand the process at once beyond grpc.aio's "
    "one (0: only that one)",
    "grpc_acceptors_surge": "more of them while calls are being refused (overload), one per "
    "refusal, gone a second after the last (0: none)",
    "grpc_reuseport": "let several processes share the gRPC port (serve --workers does it itself)",
    "workers": "worker processes sharing the gRPC port (0: one per core)",
    "shutdown_grace_s": "how long calls in flight get to finish after SIGTERM",
    "secrets_dir": "directory of named secrets (files), besides AUTHSWITCH_SECRET_<NAME>",
    "off_ledger_answer_reserve_ms": "of an off-ledger programme's deadline, the least time kept "
    "back for answering without the client (more while recent stand-ins needed more)",
    "outbox_poll_ms": "how often the notification outbox is checked when idle",
    "catalog_poll_ms": "how often the catalogue changes of other processes are read (a fee "
    "schedule, limit or spend control applies everywhere within this)",
    "outbox_concurrency_max": "most notifications being delivered at once",
    "outbox_backoff_initial_ms": "first pause before a failed delivery is retried",
    "outbox_backoff_max_ms": "longest pause between retries",
    "outbox_dead_after_s": "a notification undelivered this long is set aside (dead letter)",
    "outbox_delivery_timeout_ms": "how long one delivery may take",
    "webhook_ca_file": "PEM CA bundle webhook certificates are checked against (empty: the "
    "system's)",
    "card_expiry_interval_s": "how often cards past their expiry month are set to expired "
    "(0: never)",
    "reports_dir": "where the daily balance reports are written (empty: <data_dir>/reports)",
    "balance_report_at": "time of day (HH:MM, UTC) after which the daily balance reports are "
    "written",
    "reconcile_interval_s": "how often the ledger reconciles itself (0: never)",
    "file_delivery_interval_s": "how often due scheduled files are delivered (0: never)",
    "pan_key_hex": "the PAN key, hex, at least 32 bytes (or AUTHSWITCH_PAN_KEY_FILE)",
    "pin_key_hex": "the PIN verification key, hex (or AUTHSWITCH_PIN_KEY_FILE)",
    "cvv_key_hex": "the card verification key, hex (or AUTHSWITCH_CVV_KEY_FILE)",
    "health_listen": "a plaintext host:port serving only grpc.health.v1, for probes that "
    "cannot speak TLS (empty: off)",
}

_UNITS = (
    ("_ms", "milliseconds"), ("_us", "microseconds"), ("_s", "seconds"), ("_bytes", "bytes"),
    ("_months", "months"),
)  # fmt: skip


ACCEPTORS_MAX = 256


def settings_help() -> str:
    """Every setting: its variable, default and unit, and what it does."""
    lines = []
    defaults = Settings()
    for f in fields(Settings):
        default = getattr(defaults, f.name)
        shown = (
            "(empty)"
            if default == ""
            else str(default).lower()
            if isinstance(default, bool)
            else str(default)
        )
        unit = next((u for suffix, u in _UNITS if f.name.endswith(suffix)), "")
        lines.append(f"  {PREFIX}{f.name.upper()}  [{shown}{' ' + unit if unit else ''}]")
        lines.append(f"      {HELP[f.name]}")
    return "\n".join(lines)


def _suggest(name: str, known: set[str]) -> str:
    """``name``, and the setting it was probably meant to be."""
    close = difflib.get_close_matches(name[len(PREFIX) :], sorted(known), n=1, cutoff=0.75)
    return f"{name} (did you mean {PREFIX}{close[0]}?)" if close else name


def _convert(name: str, raw: str, default: object) -> object:
    try:
        if isinstance(default, bool):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, Path):
            return Path(raw)
    except ValueError:
        raise ConfigError(f"AUTHSWITCH_{name.upper()}: cannot read {raw!r}") from None
    return raw


def load_card_keys(settings: Settings) -> tuple[CardKeys, bool]:
    """The card keys from settings, or development keys kept in the data directory.

    Returns the keys and whether they were generated for development. Keys in the data
    directory are only acceptable beside the embedded Postgres they protect.
    """
    given = (settings.pan_key_hex, settings.pin_key_hex, settings.cvv_key_hex)
    if all(given):
        try:
            return CardKeys(*(bytes.fromhex(k) for k in given)), False
        except ValueError as exc:
            raise ConfigError(f"card keys: {exc}") from None
    if any(given):
        raise ConfigError("set all three of AUTHSWITCH_PAN/PIN/CVV_KEY_HEX (or _FILE), or none")
    if not settings.embedded_postgres:
        raise ConfigError(
            "AUTHSWITCH_PAN_KEY_HEX, _PIN_KEY_HEX and _CVV_KEY_HEX (or *_KEY_FILE) are required "
            "with an external Postgres; development keys are only generated for the embedded one"
        )
    path = settings.data_dir / "dev-card-keys"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [secrets.token_hex(KEY_BYTES_MIN) for _ in range(3)]
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join(lines) + "\n")
    pan, pin, cvv = path.read_text().split()
    return CardKeys(bytes.fromhex(pan), bytes.fromhex(pin), bytes.fromhex(cvv)), True
