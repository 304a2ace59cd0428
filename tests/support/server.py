"""``authswitch serve`` as a real child process, for tests of signals, crashes and restarts."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import TEST_KEYS
from tests.support.stores import Stores


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    def __init__(
        self, stores: Stores, log_path: Path, *, postgres_dsn: str | None = None,
        redis_url: str | None = None, prefix: str | None = None, **settings: str,
    ) -> None:  # fmt: skip
        self.port = free_port()
        self.log_path = log_path
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AUTHSWITCH_")},
            "AUTHSWITCH_GRPC_LISTEN": f"127.0.0.1:{self.port}",
            "AUTHSWITCH_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
            "AUTHSWITCH_POSTGRES_DSN": postgres_dsn or stores.postgres_dsn,
            "AUTHSWITCH_REDIS_URL": redis_url or stores.redis_url,
            "AUTHSWITCH_REDIS_KEY_PREFIX": prefix or stores.redis_prefix,
            "AUTHSWITCH_PAN_KEY_HEX": TEST_KEYS.pan_key.hex(),
            "AUTHSWITCH_PIN_KEY_HEX": TEST_KEYS.pin_key.hex(),
            "AUTHSWITCH_CVV_KEY_HEX": TEST_KEYS.cvv_key.hex(),
            "AUTHSWITCH_SHUTDOWN_GRACE_S": "5",
            "AUTHSWITCH_AGE_OFF_INTERVAL_S": "0",
            "AUTHSWITCH_CARD_EXPIRY_INTERVAL_S": "0",
            # Bursts of hundreds of calls must all be taken (admission: test_admission.py).
            "AUTHSWITCH_AUTHORIZE_IN_FLIGHT_MAX": "1000",
            "AUTHSWITCH_AUTHORIZE_LATENCY_TARGET_MS": "0",
            "AUTHSWITCH_GRPC_PENDING_CALLS_MAX": "10000",
        }
        self.env.update({f"AUTHSWITCH_{k.upper()}": v for k, v in settings.items()})
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_listen(self) -> str:
        return self.env["AUTHSWITCH_METRICS_LISTEN"]

    def start(self) -> None:
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                [sys.executable, "-m", "authswitch", "serve"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def health(self, service: str = "") -> int | None:
        """The health status of ``service``, or None when the server does not answer."""
        async with grpc.aio.insecure_channel(self.target) as channel:
            try:
                response = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=1.0
                )
            except grpc.aio.AioRpcError:
                return None
            return int(response.status)

    async def wait_serving(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while await self.health() != health_pb2.HealthCheckResponse.SERVING:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"server exited {self.process.returncode}: {self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"server not serving in {timeout_s}s: {self.log()}")
            await asyncio.sleep(0.1)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    async def wait_exit(self, timeout_s: float = 30.0) -> int:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                self.process.kill()
                raise AssertionError("server did not exit")
            await asyncio.sleep(0.05)
        return int(self.process.returncode)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]
