"""Shared fixtures: real Postgres and Redis (the machine's when AUTHSWITCH_TEST_* name them,
embedded otherwise), and a real authswitch server on a real gRPC socket."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator

import grpc
import pytest
import uvloop

from authswitch.app import Application
from authswitch.config import Settings
from authswitch.domain.cardsec import CardKeys
from tests.support.ledger import ISSUED_PANS, Ledger
from tests.support.stores import Stores, open_stores

TEST_KEYS = CardKeys(b"p" * 32, b"i" * 32, b"c" * 32)


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Tests run on uvloop, as the server does."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(scope="session")
async def stores() -> AsyncIterator[Stores]:
    async with open_stores() as opened:
        yield opened


def settings_for(stores: Stores, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "grpc_listen": "127.0.0.1:0",
        "metrics_listen": "127.0.0.1:0",
        "postgres_dsn": stores.postgres_dsn,
        "redis_url": stores.redis_url,
        "redis_key_prefix": stores.redis_prefix,
        "postgres_pool_max": 6,
        "shutdown_grace_s": 2.0,
        "age_off_interval_s": 0.0,  # tests age holds off explicitly, by their own clock
        "card_expiry_interval_s": 0.0,
        "reconcile_interval_s": 0.0,
        "file_delivery_interval_s": 0.0,
        # Tests fire bursts of hundreds of calls at once, and each must be answered:
        # admission past the limits has its own test (tests/e2e/test_admission.py).
        "authorize_in_flight_max": 1_000,
        "authorize_latency_target_ms": 0,
        "grpc_pending_calls_max": 10_000,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


_SERVED: list[bool] = []  # whether an application ran this session (it logs its lifecycle)


@pytest.fixture(scope="session")
async def app(stores: Stores) -> AsyncIterator[Application]:
    _SERVED.append(True)
    application = Application(settings_for(stores), keys=TEST_KEYS)
    await application.start()
    try:
        yield application
    finally:
        await application.stop()


@pytest.fixture(scope="session")
async def channel(app: Application) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as opened:
        yield opened


@pytest.fixture
def ledger(channel: grpc.aio.Channel) -> Ledger:
    return Ledger(channel)


class _RawLogs(logging.Handler):
    """Every log record of the session, as written by the code (before any redaction)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        parts = [record.getMessage(), " ".join(f"{k}={v}" for k, v in record.__dict__.items())]
        if record.exc_info:
            parts.append(logging.Formatter().formatException(record.exc_info))
        self.texts.append(" ".join(parts))


@pytest.fixture(scope="session", autouse=True)
def _no_card_numbers_in_logs() -> Iterator[None]:
    """Captures all logs of the session at DEBUG and fails the session if a PAN issued by a
    test appears in any of them: the code never logs a PAN (redaction is only a backstop)."""
    handler = _RawLogs()
    logger = logging.getLogger("authswitch")
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
        logger.setLevel(previous)
    if _SERVED:
        assert handler.texts, "an application ran but no log line was captured"
    from tests.e2e.test_security import SECRETS

    secrets = [*ISSUED_PANS, *SECRETS]
    leaked = [(s[:6], text[:200]) for text in handler.texts for s in secrets if s in text]
    assert not leaked, f"card numbers or secrets in logs: {leaked[:3]}"
