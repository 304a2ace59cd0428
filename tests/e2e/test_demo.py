"""The README's walkthroughs run against a real server and say what the README says."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time

import grpc
import pytest

from authswitch.app import Application
from authswitch.demo import run_demo
from authswitch.v1 import ledger_admin_pb2, ledger_admin_pb2_grpc

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        ("card", ["Demo card ready", "balance GBP 100.00", "client ", "report balances --client "]),
        ("lifecycle", ["cleared 45.00 (matched: True)", "reversed it", "client "]),
        ("fees", ["fee"]),
        (
            "dispute",
            [
                "disputed: not received (provisional credit) actual GBP 100.00",
                "merchant won: provisional credit taken back actual GBP 40.00 "
                "available GBP -40.00 authorised GBP 80.00",
                "OPEN -> CHARGEBACK -> REPRESENTMENT -> MERCHANT_WON",
            ],
        ),
    ],
)
async def test_walkthrough(
    app: Application, capsys: pytest.CaptureFixture[str], scenario: str, expected: list[str]
) -> None:
    assert await run_demo(f"127.0.0.1:{app.grpc_port}", scenario) == 0
    out = " ".join(capsys.readouterr().out.split())
    for line in expected:
        assert line in out, out


def _demo_without_server(target: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSWITCH_")}
    started = time.monotonic()
    finished = subprocess.run(
        [sys.executable, "-m", "authswitch", "demo", "--target", target],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return time.monotonic() - started, finished


@pytest.mark.parametrize("listening", [False, True], ids=["refused", "silent"])
def test_demo_without_a_server_says_so_within_5_s(listening: bool) -> None:
    """Nothing on the port (refused at once), or a socket that accepts and never answers
    (the readiness deadline): either way a non-zero exit within 5 s, naming the target."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        if listening:
            sock.listen(8)
        target = f"127.0.0.1:{sock.getsockname()[1]}"
        elapsed_s, finished = _demo_without_server(target)
    assert finished.returncode != 0
    assert f"no authswitch server at {target}" in finished.stderr, finished.stderr
    assert "Traceback" not in finished.stderr
    assert finished.stdout == ""
    assert elapsed_s < 5.0, f"took {elapsed_s:.1f} s"


async def test_demo_prints_the_ids_it_created(
    app: Application, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every id the README asks for comes from the command that created it: the client id
    the balance report takes is printed by the demo, and it is a real client."""
    assert await run_demo(f"127.0.0.1:{app.grpc_port}") == 0
    out = capsys.readouterr().out
    found = re.search(r"^\s+client\s+([0-9a-f-]{36})$", out, re.MULTILINE)
    assert found is not None, out
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        admin = ledger_admin_pb2_grpc.LedgerAdminServiceStub(channel)
        got = await admin.GetClient(ledger_admin_pb2.GetClientRequest(client_id=found[1]))
    assert got.client.name == "Demo"
    assert f"--client {found[1]}" in out
