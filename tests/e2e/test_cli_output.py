"""Every command keeps its result and its logs apart: the result on stdout (so it can be
piped and parsed), logs and progress on stderr. One-shot commands log only warnings unless
AUTHSWITCH_LOG_LEVEL asks for more."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from authswitch.app import Application
from authswitch.v1 import ledger_admin_pb2
from tests.conftest import TEST_KEYS
from tests.support.cli import run_cli
from tests.support.ledger import Ledger
from tests.support.server import free_port
from tests.support.stores import Stores

pytestmark = pytest.mark.timeout(120)

LOUD = {"AUTHSWITCH_LOG_LEVEL": "DEBUG"}  # every log line there is, to see where it goes


def _log_lines(text: str) -> list[str]:
    """Lines that are structured log records."""
    found = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "level" in record and "logger" in record:
            found.append(line)
    return found


def _apart(finished: subprocess.CompletedProcess[str], result: str) -> None:
    assert finished.returncode == 0, finished.stderr
    assert result in finished.stdout, (finished.stdout, finished.stderr)
    assert not _log_lines(finished.stdout), finished.stdout
    assert result not in finished.stderr


@pytest.fixture
async def program_and_client(ledger: Ledger) -> tuple[str, str]:
    card = await ledger.card(balance_minor=1_000)
    got = await ledger.admin.GetCard(ledger_admin_pb2.GetCardRequest(card_id=card.card_id))
    return got.program_id, got.client_id


async def test_migrate(app: Application, stores: Stores) -> None:
    _apart(run_cli(stores, "migrate", env=LOUD), "the schema is current")


async def test_reconcile_text_and_json(app: Application, stores: Stores) -> None:
    _apart(run_cli(stores, "reconcile", env=LOUD), "reconciled")
    finished = run_cli(stores, "reconcile", "--json", env=LOUD)
    assert finished.returncode in (0, 1), finished.stderr
    json.loads(finished.stdout)  # the whole of stdout is the report


async def test_reports(
    app: Application, stores: Stores, program_and_client: tuple[str, str], tmp_path: Path
) -> None:
    program_id, client_id = program_and_client
    today = f"{datetime.now(UTC):%Y-%m-%d}"
    for args in (
        ("balances", "--client", client_id, "--prefix", "ACME"),
        ("subledger", "--program", program_id, "--date", today),
        ("transactions", "--program", program_id, "--date", today),
        ("chargebacks", "--program", program_id, "--date", today),
        ("fbo", "--program", program_id),
    ):
        _apart(run_cli(stores, "report", *args, "--out", str(tmp_path), env=LOUD), "wrote ")


async def test_files(
    app: Application, stores: Stores, program_and_client: tuple[str, str], tmp_path: Path
) -> None:
    program_id, _ = program_and_client
    target = ("--target", f"127.0.0.1:{app.grpc_port}")
    scheduled = await _cli(
        stores, "files", "schedule", *target, "--kind", "transactions", "--program", program_id,
        "--cron", "30 2 * * *", "--directory", str(tmp_path),
    )  # fmt: skip
    _apart(scheduled, program_id)
    _apart(await _cli(stores, "files", "list", *target, "--program", program_id), "30 2")
    _apart(
        await _cli(stores, "files", "run", "--schedule", uuid_of(scheduled.stdout)), "delivered "
    )


async def _cli(stores: Stores, *args: str) -> subprocess.CompletedProcess[str]:
    """The command in a child process, without blocking the loop the test server runs on."""
    return await asyncio.to_thread(run_cli, stores, *args, env=LOUD)


def uuid_of(text: str) -> str:
    return text.split(maxsplit=1)[0]


async def test_demo(app: Application, stores: Stores) -> None:
    target = f"127.0.0.1:{app.grpc_port}"
    _apart(await _cli(stores, "demo", "--target", target), "Demo card ready")


async def test_one_shot_commands_log_only_warnings_by_default(
    app: Application, stores: Stores
) -> None:
    finished = run_cli(stores, "reconcile")
    assert finished.returncode == 0, finished.stderr
    levels = {json.loads(line)["level"] for line in _log_lines(finished.stderr)}
    assert levels <= {"WARNING", "ERROR", "CRITICAL"}, finished.stderr


def test_reference_client_writes_nothing_to_stdout() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSWITCH_")}
    env |= {"AUTHSWITCH_PAN_KEY_HEX": TEST_KEYS.pan_key.hex(), **LOUD}
    process = subprocess.Popen(
        [sys.executable, "-m", "authswitch", "reference-client", "--listen",
         f"127.0.0.1:{free_port()}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + 30
        line = process.stderr.readline()
        while "serving" not in line:
            assert time.monotonic() < deadline, line
            assert process.poll() is None, line
            line = process.stderr.readline()
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, _ = process.communicate(timeout=30)
    assert stdout == ""
