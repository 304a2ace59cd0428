"""Prometheus series. Units are in the names; label values are bounded sets (never a PAN,
an account id or a message id).

The series are module-level, in the default registry, so every part of the process counts
into the same ones. ``authswitch serve`` runs worker processes, which write their series to
files (prometheus_client's multiprocess mode, ``PROMETHEUS_MULTIPROC_DIR``); its supervisor
serves the sum on ``AUTHSWITCH_METRICS_LISTEN``. Each gauge says how workers' values
combine (``multiprocess_mode``): a per-process quantity is summed over live workers, a
figure of the whole ledger (read from Postgres by whichever worker ran the job) is the
latest or the largest.

On the decision path a series is not touched per call: prometheus_client takes a lock per
increment (and, across workers, writes a memory-mapped file), several microseconds each.
:class:`HotCounter` and :class:`HotHistogram` count in plain integers instead and fold the
counts into their series in :func:`flush_hot`, which runs before every scrape of this
process and once a second in a worker (whose series the supervisor reads from the files).
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.registry import Collector

# No *_created series: they double the series count, and rate() needs none of them.
disable_created_metrics()  # type: ignore[no-untyped-call]

__all__ = [
    "ACCEPTORS_SURGING",
    "CACHE_LOADS",
    "CACHE_MARKS_EXPIRED",
    "CLIENT_ANSWER_RESERVE_SECONDS",
    "CLIENT_SECONDS",
    "COMMIT_BATCH_SECONDS",
    "COMMIT_BATCH_SIZE",
    "COMMIT_QUEUE_DEPTH",
    "COMMIT_QUEUE_WAIT_SECONDS",
    "COMMIT_REPLAYS",
    "DECISIONS",
    "DECISION_SECONDS",
    "EVENT_LOOP_LAG_SECONDS",
    "EXPIRED",
    "FILE_DELIVERIES",
    "FILE_DELIVERIES_PENDING",
    "GRPC_HANDLED",
    "GRPC_HANDLING_SECONDS",
    "GRPC_STARTED",
    "OUTBOX_DEAD_LETTERS",
    "OUTBOX_DELIVERIES",
    "OUTBOX_DEPTH",
    "OUTBOX_OLDEST_AGE_SECONDS",
    "RECONCILIATION_BREAKS",
    "RECONCILIATION_DRIFT_MINOR",
    "RECONCILIATION_LAST_RUN_SECONDS",
    "SHED",
    "STAND_INS",
    "STORE_ERRORS",
    "HotCounter",
    "HotHistogram",
    "declare_known_series",
    "flush_hot",
]

_HOT: list[HotCounter | HotHistogram] = []
_FLUSH_LOCK = threading.Lock()


class HotCounter:
    """A counter's child for the decision path: ``inc`` adds to a plain integer (the event
    loop's thread is its only writer); :func:`flush_hot` adds what is new to the series."""

    __slots__ = ("_child", "_flushed", "count")

    def __init__(self, child: Any) -> None:
        self._child = child
        self.count = 0
        self._flushed = 0
        _HOT.append(self)

    def inc(self, amount: int = 1) -> None:
        self.count += amount

    def _flush(self) -> None:
        count = self.count
        if count != self._flushed:
            self._child.inc(count - self._flushed)
            self._flushed = count


class HotHistogram:
    """A histogram's child for the decision path: ``observe`` counts into plain per-bucket
    integers; :func:`flush_hot` adds what is new to the series' buckets and sum (the
    buckets prometheus_client keeps, non-cumulative, one per upper bound)."""

    __slots__ = ("_bounds", "_child", "_flushed", "_flushed_total", "counts", "total")

    def __init__(self, child: Any) -> None:
        self._child = child
        self._bounds: list[float] = list(child._upper_bounds)
        self.counts = [0] * len(self._bounds)
        self._flushed = [0] * len(self._bounds)
        self.total = 0.0
        self._flushed_total = 0.0
        _HOT.append(self)

    def observe(self, amount: float) -> None:
        # The first bucket whose upper bound is at least the amount, as observe() finds it.
        self.counts[bisect.bisect_left(self._bounds, amount)] += 1
        self.total += amount

    def _flush(self) -> None:
        buckets = self._child._buckets
        for index, count in enumerate(self.counts):
            if count != self._flushed[index]:
                buckets[index].inc(count - self._flushed[index])
                self._flushed[index] = count
        total = self.total
        if total != self._flushed_total:
            self._child._sum.inc(total - self._flushed_total)
            self._flushed_total = total


def flush_hot() -> None:
    """Fold the decision path's counts into their series (any thread; rare)."""
    with _FLUSH_LOCK:
        for instrument in list(_HOT):
            instrument._flush()


class _FlushFirst(Collector):
    """Registered before every series, so a scrape of this process sees every count."""

    def collect(self) -> Iterable[Any]:
        flush_hot()
        return ()


REGISTRY.register(_FlushFirst())

# Millisecond-range buckets: a decision takes about a millisecond; the network allows seconds.
_LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
)  # fmt: skip

GRPC_STARTED = Counter(
    "grpc_server_started_total",
    "RPCs started on the server.",
    ["grpc_type", "grpc_service", "grpc_method"],
)
GRPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, regardless of success or failure.",
    ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
)
GRPC_HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Response latency of RPCs handled by the server.",
    ["grpc_type", "grpc_service", "grpc_method"],
    buckets=_LATENCY_BUCKETS_S,
)

DECISIONS = Counter(
    "authswitch_decisions_total",
    "Authorisation decisions by ledger mode, transaction type and ISO 8583 response code.",
    ["mode", "transaction_type", "response_code"],
)
DECISION_SECONDS = Histogram(
    "authswitch_decision_seconds",
    "Time from receiving an authorisation to having its durable answer.",
    ["mode"],
    buckets=_LATENCY_BUCKETS_S,
)
COMMIT_BATCH_SIZE = Histogram(
    "authswitch_group_commit_batch_size",
    "Writes per group-commit transaction.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
COMMIT_BATCH_SECONDS = Histogram(
    "authswitch_group_commit_seconds",
    "Duration of one group-commit transaction.",
    buckets=_LATENCY_BUCKETS_S,
)
COMMIT_QUEUE_WAIT_SECONDS = Histogram(
    "authswitch_group_commit_wait_seconds",
    "Time a write waits in the group-commit queue before its transaction starts.",
    buckets=_LATENCY_BUCKETS_S,
)
EVENT_LOOP_LAG_SECONDS = Histogram(
    "authswitch_event_loop_lag_seconds",
    "How late a callback due on the process's event loop ran (sampled ten times a second): "
    "the wait every step of every call has for the loop, by about a millisecond's precision.",
    buckets=_LATENCY_BUCKETS_S,
)
COMMIT_QUEUE_DEPTH = Gauge(
    "authswitch_group_commit_queue_depth",
    "Writes waiting for the group committer.",
    multiprocess_mode="livesum",
)
STORE_ERRORS = Counter(
    "authswitch_store_errors_total",
    "Errors talking to a store, by store and operation.",
    ["store", "operation"],
)
CACHE_LOADS = Counter(
    "authswitch_cache_loads_total",
    "Account states (or single cards) loaded into Redis from Postgres, by cause.",
    ["cause"],
)
CACHE_MARKS_EXPIRED = Counter(
    "authswitch_cache_marks_expired_total",
    "In-flight marks dropped by account reloads as their processes' (a mark older than any "
    "write can take is one whose process died mid-write).",
)

STAND_INS = Counter(
    "authswitch_stand_ins_total",
    "Off-ledger decisions made by the stand-in policy instead of the client, by reason.",
    ["reason", "policy"],
)
CLIENT_SECONDS = Histogram(
    "authswitch_client_seconds",
    "Latency of calls to off-ledger clients' DecisionService, by method and outcome.",
    ["method", "outcome"],
    buckets=_LATENCY_BUCKETS_S,
)
CLIENT_ANSWER_RESERVE_SECONDS = Gauge(
    "authswitch_client_answer_reserve_seconds",
    "Of an off-ledger deadline, what was last kept back from the client for answering without "
    "it: the configured reserve, or more when recent stand-ins needed more.",
    multiprocess_mode="livemax",
)
OUTBOX_DEPTH = Gauge(
    "authswitch_outbox_depth",
    "Notifications waiting for delivery (pending or retrying), by sink.",
    ["sink"],
    multiprocess_mode="livemax",
)
OUTBOX_OLDEST_AGE_SECONDS = Gauge(
    "authswitch_outbox_oldest_age_seconds",
    "Age of the oldest undelivered notification, by sink.",
    ["sink"],
    multiprocess_mode="livemax",
)
OUTBOX_DELIVERIES = Counter(
    "authswitch_outbox_deliveries_total",
    "Notification delivery attempts, by sink and outcome.",
    ["sink", "outcome"],
)
OUTBOX_DEAD_LETTERS = Gauge(
    "authswitch_outbox_dead_letters",
    "Notifications that exhausted their retry horizon and wait for an operator re-drive.",
    ["sink"],
    multiprocess_mode="livemax",
)
RECONCILIATION_BREAKS = Gauge(
    "authswitch_reconciliation_breaks",
    "Breaks found by the last reconciliation run, by check.",
    ["check"],
    multiprocess_mode="mostrecent",
)
RECONCILIATION_DRIFT_MINOR = Gauge(
    "authswitch_reconciliation_drift_minor",
    "Sum of absolute differences found by the last reconciliation run, in minor units, by check.",
    ["check"],
    multiprocess_mode="mostrecent",
)
RECONCILIATION_LAST_RUN_SECONDS = Gauge(
    "authswitch_reconciliation_last_run_timestamp_seconds",
    "Unix time of the last completed reconciliation run.",
    multiprocess_mode="mostrecent",
)
FILE_DELIVERIES = Counter(
    "authswitch_file_deliveries_total",
    "Scheduled file delivery attempts, by file kind and outcome (delivered, failed).",
    ["kind", "outcome"],
)
FILE_DELIVERIES_PENDING = Gauge(
    "authswitch_file_deliveries_pending",
    "Due files not yet delivered (claimed, or failed and waiting to be retried), by kind.",
    ["kind"],
    multiprocess_mode="mostrecent",
)

ACCEPTORS_SURGING = Gauge(
    "authswitch_grpc_acceptors_surging",
    "Requests for Authorize calls kept outstanding with gRPC's core beyond "
    "AUTHSWITCH_GRPC_ACCEPTORS, added while calls are refused (at most "
    "AUTHSWITCH_GRPC_ACCEPTORS_SURGE; they go a second after the last refusal).",
    multiprocess_mode="livesum",
)
SHED = Counter(
    "authswitch_authorizations_shed_total",
    "Authorisations refused RESOURCE_EXHAUSTED on arrival: AUTHSWITCH_AUTHORIZE_IN_FLIGHT_MAX "
    "were in flight in the handlers (typically waiting on a slow store)",
)
EXPIRED = Counter(
    "authswitch_authorizations_expired_total",
    "Authorisations refused DEADLINE_EXCEEDED on arrival, undecided: their gRPC deadline had "
    "passed while they queued (the caller had given up on them).",
)
COMMIT_REPLAYS = Counter(
    "authswitch_group_commit_replays_total",
    "Batches whose one-statement write refused itself (Postgres saw other funds than the "
    "cache, or a lock cycle) and were replayed write by write in a transaction.",
)


# Label values known in advance: their series exist (at zero) from the first scrape, so a
# dashboard or an alert never sees "no data" for a count that is merely zero.
_KNOWN_STORE_ERRORS = (
    ("postgres", "group_commit"), ("postgres", "group_commit_recover"), ("postgres", "outbox"),
    ("redis", "undo"), ("redis", "transfer"), ("redis", "load_card"),
)  # fmt: skip
_STAND_IN_REASONS = (
    "timeout", "unavailable", "breaker_open", "invalid_answer", "not_configured", "overloaded",
)  # fmt: skip
_STAND_IN_POLICIES = ("decline", "approve", "shadow")
_CACHE_LOAD_CAUSES = (
    "miss", "card", "card_moved", "failure", "refused", "admin", "shadow", "duplicate",
    "conflict", "transfer", "pin_blocked",
)  # fmt: skip


def declare_known_series() -> None:
    """Create the children of every label set known in advance (at zero)."""
    for store, operation in _KNOWN_STORE_ERRORS:
        STORE_ERRORS.labels(store, operation)
    for reason in _STAND_IN_REASONS:
        for policy in _STAND_IN_POLICIES:
            STAND_INS.labels(reason, policy)
        CLIENT_SECONDS.labels("decide", reason)
    CLIENT_SECONDS.labels("decide", "ok")
    for cause in _CACHE_LOAD_CAUSES:
        CACHE_LOADS.labels(cause)
