"""Servers under test as child processes: started on a port checked to be free, awaited
until they answer grpc.health.v1 (or accept connections), stopped by their own pid. A server
may start processes of its own (``authswitch serve``: a supervisor and its workers); stopping
it stops them, and any of them still alive once it has exited is killed by its pid."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.system import port_is_free, process_tree, start_ticks

__all__ = ["PortTaken", "ServerGroup", "ServerProcess", "ServerSpec", "split_listen"]


class PortTaken(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """How to run a server: its command line and its complete environment."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    # Whether it answers grpc.health.v1; otherwise readiness is an accepted connection.
    health: bool = True
    # Set: ready once its output shows this line too (a replica sharing the port with
    # others, where the port's answer may come from another one).
    ready_line: str = ""


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host, int(port)


class ServerProcess:
    def __init__(self, name: str, spec: ServerSpec, listen: str, log_path: Path) -> None:
        self.name = name
        self.spec = spec
        self.listen = listen
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    async def start(self, timeout_s: float = 120.0, *, shared: bool = False) -> None:
        """``shared``: the port is already held by the other replicas of a group."""
        host, port = split_listen(self.listen)
        if not shared and not port_is_free(host, port):
            raise PortTaken(
                f"{self.listen} is in use before starting {self.name}: a server left from an "
                "earlier run? (grpcio's SO_REUSEPORT would let it share the port silently)"
            )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self._process = subprocess.Popen(  # noqa: ASYNC220 - returns at once
            self.spec.argv,
            env=self.spec.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while not await self._ready():
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self._process.returncode} while starting; "
                    f"see {self.log_path}:\n{self._tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{self.name} not ready in {timeout_s:g}s; see {self.log_path}")
            await asyncio.sleep(0.1)

    async def _ready(self) -> bool:
        if self.spec.ready_line and self.spec.ready_line not in self._tail(200):
            return False
        host, port = split_listen(self.listen)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.settimeout(0.5)
            if probe.connect_ex((host, port)) != 0:
                return False
        if not self.spec.health:
            return True
        async with grpc.aio.insecure_channel(self.listen) as channel:
            try:
                response = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=2.0
                )
            except grpc.aio.AioRpcError:
                return False
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)

    def _tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM to our own pid (never by name), SIGKILL if it does not exit in time
        (authswitch's supervisor drains its workers within 20 s); then SIGKILL to any of its
        descendants still alive, each by its pid and start time."""
        process, self._process = self._process, None
        if process is None:
            return None
        descendants = {
            pid: start_ticks(pid) for pid in process_tree(process.pid) if pid != process.pid
        }
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
        left = [pid for pid, ticks in descendants.items() if ticks and start_ticks(pid) == ticks]
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self._log is not None:
            if left:
                note = f"\n[benchmark] killed {len(left)} process(es) left after exit: {left}\n"
                self._log.write(note.encode())
            self._log.close()
            self._log = None
        return process.returncode


class ServerGroup:
    """One server or several replicas on one port (SO_REUSEPORT): started one after
    another, stopped together; their CPU is the sum of their process trees'."""

    def __init__(self, name: str, specs: list[ServerSpec], listen: str, workdir: Path) -> None:
        assert specs
        self.listen = listen
        self.servers = [
            ServerProcess(
                name if i == 0 else f"{name} replica {i + 1}",
                spec,
                listen,
                workdir / ("server.log" if i == 0 else f"server-{i + 1}.log"),
            )
            for i, spec in enumerate(specs)
        ]

    @property
    def pids(self) -> list[int]:
        return [server.pid for server in self.servers]

    @property
    def log_path(self) -> Path:
        return self.servers[0].log_path

    async def start(self) -> None:
        try:
            for i, server in enumerate(self.servers):
                await server.start(shared=i > 0)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> int | None:
        """Stops every replica; the first non-zero exit code, else the first one's."""
        codes = [server.stop() for server in self.servers]
        return next((code for code in codes if code), codes[0])
