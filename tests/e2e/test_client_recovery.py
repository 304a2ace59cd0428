"""A client that was down gets the next call soon after it is back: a channel that failed
does not keep a recovered client out for longer than the circuit breaker's probe interval
(breaker_open_ms). The reference client is a real process, started after authswitch."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import pytest

from authswitch.v1 import authorization_pb2 as pb
from authswitch.v1 import common_pb2 as c
from authswitch.v1 import ledger_admin_pb2 as la
from tests.support.ledger import Ledger
from tests.support.server import free_port

pytestmark = pytest.mark.timeout(120)

BREAKER_OPEN_MS = 1_000  # a short probe interval: the channel must not be the bottleneck
SLACK_S = 1.0  # a probe's own connection and the test's polling


async def _start_reference_client(port: int) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSWITCH_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "authswitch", "reference-client", "--listen", f"127.0.0.1:{port}",
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    line = await asyncio.wait_for(process.stderr.readline(), 30)
    assert b"serving" in line, line
    return process


async def test_a_client_started_late_decides_within_the_probe_interval(ledger: Ledger) -> None:
    port = free_port()  # nothing listens there yet
    program_id = await ledger.program(c.LEDGER_MODE_OFF_LEDGER)
    await ledger.admin.SetProgramRouting(
        la.SetProgramRoutingRequest(
            program_id=program_id, target=f"127.0.0.1:{port}", tls=la.CLIENT_TLS_NONE,
            deadline_ms=500, stand_in=la.STAND_IN_POLICY_DECLINE,
            breaker_open_ms=BREAKER_OPEN_MS,
        )
    )  # fmt: skip
    card = await ledger.card(account_id=await ledger.account(await ledger.product(program_id)))

    async def authorize() -> pb.AuthorizeResponse:
        return await ledger.authorize(card, 100)

    # The client is down for a while: the channel fails and backs off, the breaker opens.
    reasons = set()
    down_until = time.monotonic() + 8.0  # long enough for the backoff to reach its 2 s cap
    while time.monotonic() < down_until:
        answer = await authorize()
        assert answer.stand_in, answer
        reasons.add(answer.stand_in_reason)
        await asyncio.sleep(0.25)
    assert pb.STAND_IN_REASON_BREAKER_OPEN in reasons

    process = await _start_reference_client(port)
    try:
        back = time.monotonic()
        while True:
            answer = await authorize()
            waited_s = time.monotonic() - back
            if not answer.stand_in:
                break
            assert waited_s < BREAKER_OPEN_MS / 1000 + SLACK_S, (
                f"still stood in {waited_s:.1f} s after the client came back: {answer}"
            )
            await asyncio.sleep(0.1)
        assert answer.response_code == "00"
        print(f"the client decided {waited_s:.1f} s after it was back")
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.communicate(), 30)
