"""First start and startup errors of `authswitch serve` (real processes): it reaches SERVING
on fresh data directories every time, and when it cannot start it says what failed and where,
in one line, before anything listens."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from authswitch.config import Settings
from tests.support.server import ServerProcess, free_port
from tests.support.stores import Stores

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

EMBEDDED_LEG = not os.environ.get("AUTHSWITCH_TEST_POSTGRES_DSN")
# The first start on a fresh machine once died 2 times in 10 (a fork taken after grpc's
# threads existed killed the embedded Postgres): the embedded leg of CI starts it 20 times.
FRESH_STARTS = 20 if EMBEDDED_LEG else 3


def _env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSWITCH_")}
    env.update({f"AUTHSWITCH_{k.upper()}": v for k, v in settings.items()})
    return env


def _serve(env: dict[str, str], timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "authswitch", "serve"],
        env=env, capture_output=True, text=True, timeout=timeout_s, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("attempt", range(FRESH_STARTS))
async def test_a_fresh_data_dir_reaches_serving(
    stores: Stores, tmp_path: Path, attempt: int
) -> None:
    server = ServerProcess(stores, tmp_path / "serve.log", workers="1")
    # Nothing configured but the ports and the data directory: the embedded stores.
    for name in ("POSTGRES_DSN", "REDIS_URL", "PAN_KEY_HEX", "PIN_KEY_HEX", "CVV_KEY_HEX"):
        server.env.pop(f"AUTHSWITCH_{name}")
    server.env["AUTHSWITCH_DATA_DIR"] = str(tmp_path / "data")
    server.start()
    try:
        await server.wait_serving(timeout_s=120)
        assert await server.health() == health_pb2.HealthCheckResponse.SERVING
        server.signal()
        assert await server.wait_exit() == 0, server.log()
    finally:
        server.kill()
    assert "Traceback" not in server.log()
    assert "skipping fork() handlers" not in server.log()


def test_a_taken_grpc_port_is_named(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _serve(_env(grpc_listen=f"127.0.0.1:{port}", data_dir=str(tmp_path)))
    assert done.returncode != 0
    assert f"cannot listen for gRPC on 127.0.0.1:{port} (AUTHSWITCH_GRPC_LISTEN)" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_taken_metrics_port_is_named(stores: Stores, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _serve(_env(
            grpc_listen=f"127.0.0.1:{free_port()}", metrics_listen=f"127.0.0.1:{port}",
            postgres_dsn=stores.postgres_dsn, redis_url=stores.redis_url,
            pan_key_hex="a" * 64, pin_key_hex="b" * 64, cvv_key_hex="c" * 64,
        ))  # fmt: skip
    assert done.returncode != 0
    assert f"metrics on 127.0.0.1:{port} (AUTHSWITCH_METRICS_LISTEN)" in done.stderr
    assert "Traceback" not in done.stderr


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed on return: nothing listens there


def test_an_unreachable_postgres_is_named(stores: Stores, tmp_path: Path) -> None:
    port = _closed_port()
    done = _serve(_env(
        grpc_listen=f"127.0.0.1:{free_port()}", metrics_listen=f"127.0.0.1:{free_port()}",
        postgres_dsn=f"postgresql://postgres:secret@127.0.0.1:{port}/db",
        redis_url=stores.redis_url, pan_key_hex="a" * 64, pin_key_hex="b" * 64,
        cvv_key_hex="c" * 64,
    ))  # fmt: skip
    assert done.returncode != 0
    assert f"Postgres at 127.0.0.1:{port} (AUTHSWITCH_POSTGRES_DSN): connect" in done.stderr
    assert "refused" in done.stderr
    assert "secret" not in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unreachable_redis_is_named(stores: Stores, tmp_path: Path) -> None:
    port = _closed_port()
    done = _serve(_env(
        grpc_listen=f"127.0.0.1:{free_port()}", metrics_listen=f"127.0.0.1:{free_port()}",
        postgres_dsn=stores.postgres_dsn, redis_url=f"redis://127.0.0.1:{port}/0",
        pan_key_hex="a" * 64, pin_key_hex="b" * 64, cvv_key_hex="c" * 64,
    ))  # fmt: skip
    assert done.returncode != 0
    assert f"Redis at 127.0.0.1:{port} (AUTHSWITCH_REDIS_URL):" in done.stderr
    assert "refused" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_embedded_postgres_that_cannot_start_shows_its_log(tmp_path: Path) -> None:
    """A data directory the embedded Postgres cannot use: the error names the store and
    shows the last lines of its own log."""
    data = tmp_path / "data" / "postgres"
    data.mkdir(parents=True)
    (data / "PG_VERSION").write_text("7\n")  # a cluster of a version it cannot run
    done = _serve(_env(
        grpc_listen=f"127.0.0.1:{free_port()}", metrics_listen=f"127.0.0.1:{free_port()}",
        data_dir=str(tmp_path / "data"),
    ), timeout_s=120)  # fmt: skip
    assert done.returncode != 0
    assert "the embedded Postgres did not start" in done.stderr
    assert "the last lines of its log" in done.stderr


def test_a_misspelt_setting_is_refused_before_anything_listens(tmp_path: Path) -> None:
    port = free_port()
    started = time.monotonic()
    done = _serve(_env(grpc_listen=f"127.0.0.1:{port}", grpc_listn="x", data_dir=str(tmp_path)))
    assert done.returncode == 2
    assert "AUTHSWITCH_GRPC_LISTN (did you mean AUTHSWITCH_GRPC_LISTEN?)" in done.stderr
    assert time.monotonic() - started < 30
    assert not (tmp_path / "postgres").exists()  # nothing was started


def test_serve_help_lists_every_setting_with_its_default() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "authswitch", "serve", "--help"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    from dataclasses import fields

    for f in fields(Settings):
        assert f"AUTHSWITCH_{f.name.upper()}  [" in done.stdout, f.name
    assert "AUTHSWITCH_POSTGRES_STATEMENT_TIMEOUT_MS  [5000 milliseconds]" in done.stdout
    assert "``" not in done.stdout  # plain words, not RST
    assert "seed 00" not in done.stdout


async def test_the_supervisor_creates_no_grpc_object() -> None:
    """The supervisor starts child processes (embedded stores, workers): a fork taken once
    grpc's threads exist is unsafe, so it never creates a gRPC object."""
    code = (
        "import asyncio, threading, authswitch.supervisor, authswitch.cli; "
        "import os; print(len(os.listdir('/proc/self/task')))"
    )
    done = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await done.communicate()
    assert out.decode().strip() == "1"  # no thread of grpc's (or anyone's) running
