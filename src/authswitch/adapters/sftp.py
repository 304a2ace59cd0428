"""Report delivery over SFTP: key authentication, mandatory host key verification, an atomic
rename into place, and bounded retries of transient failures.

A file is uploaded to ``.<name>.partial`` in the remote directory and renamed to ``name``
only once complete (``posix-rename@openssh.com`` where the server offers it, so an existing
file is replaced in one step), so the sponsor bank's collector never sees a partial file.

Failures come in two kinds:

* **transient** (refused, reset or dropped connections, timeouts, SFTP errors other than
  permission): retried up to ``attempts`` tries in all, with exponential backoff and jitter;
  when the tries run out, :class:`DeliveryError` is raised, chained from the last error;
* **permanent** (authentication refused, host key not trusted, permission denied on the
  remote path, and other configuration mismatches): raised at once, as asyncssh raised it.

Neither the key nor anything derived from it reaches a log line or an exception message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import posixpath
import random
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO

with warnings.catch_warnings():
    # asyncssh imports DSA keys' support, which cryptography 51 deprecates on import: not a
    # key type this sink uses, and nothing an operator can act on.
    warnings.filterwarnings("ignore", message="DSA is deprecated")
    import asyncssh

from authswitch.adapters.sinks import check_name
from authswitch.domain.retry import backoff_ms
from authswitch.errors import AuthswitchError

__all__ = ["DeliveryError", "SftpSink"]

log = logging.getLogger(__name__)

ATTEMPTS_MAX = 20
# Bytes read from the local file and written per SFTP write call (asyncssh splits each call
# into parallel requests); also the most of the file held in memory at once.
CHUNK_BYTES = 1024 * 1024
# One try (connect, upload, rename) must finish within a base time plus the file's size at
# this slow rate; a stalled connection is then abandoned and retried.
TRANSFER_BASE_S = 60.0
TRANSFER_RATE_MIN_BYTES_PER_S = 64 * 1024

# Retrying these cannot help until someone changes a key, a known_hosts entry, a username,
# algorithms, or permissions on the server.
_PERMANENT: tuple[type[Exception], ...] = (
    asyncssh.PermissionDenied,
    asyncssh.HostKeyNotVerifiable,
    asyncssh.IllegalUserName,
    asyncssh.KeyExchangeFailed,
    asyncssh.ProtocolNotSupported,
    asyncssh.SFTPPermissionDenied,
)
# OSError covers refused and reset connections and TimeoutError (connect and transfer).
_TRANSIENT: tuple[type[Exception], ...] = (
    OSError,
    asyncssh.DisconnectError,
    asyncssh.ChannelOpenError,
    asyncssh.SFTPError,
)


class DeliveryError(AuthswitchError):
    """Every try of a delivery failed transiently; ``__cause__`` is the last error."""


class SftpSink:
    """Delivers finished files to ``remote_dir`` on an SFTP server, one connection per file.

    ``client_key`` is a private key (OpenSSH or PEM, unencrypted) and ``known_hosts`` the
    content of an OpenSSH known_hosts file naming the server's host key (``[host]:port`` for
    a port other than 22). Both are parsed here, so that a bad secret fails at once.
    ``sleep`` is injected so that tests can record the backoff instead of waiting.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        username: str,
        client_key: bytes,
        known_hosts: bytes,
        remote_dir: str = ".",
        attempts: int = 4,
        initial_backoff_ms: int = 500,
        max_backoff_ms: int = 8_000,
        connect_timeout_s: float = 10.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not host or not username:
            raise ValueError("sftp needs a host and a username")
        if not 1 <= port <= 65535:
            raise ValueError(f"sftp port must be 1 to 65535, not {port}")
        if not remote_dir:
            raise ValueError("sftp remote_dir must not be empty (use '.' for the home)")
        if not 1 <= attempts <= ATTEMPTS_MAX:
            raise ValueError(f"sftp attempts must be 1 to {ATTEMPTS_MAX}, not {attempts}")
        if not 1 <= initial_backoff_ms <= max_backoff_ms:
            raise ValueError("sftp backoff needs 1 <= initial_backoff_ms <= max_backoff_ms")
        if not connect_timeout_s > 0:
            raise ValueError("sftp connect_timeout_s must be positive")
        self.host = host
        self.port = port
        self.username = username
        self.remote_dir = remote_dir
        self.attempts = attempts
        self.initial_backoff_ms = initial_backoff_ms
        self.max_backoff_ms = max_backoff_ms
        self.connect_timeout_s = connect_timeout_s
        self._sleep = sleep
        try:
            self._client_key = asyncssh.import_private_key(client_key)
        except ValueError:  # asyncssh.KeyImportError is one
            # asyncssh's message is safe, but the key's bytes never travel in a traceback
            raise ValueError("sftp client_key is not an unencrypted private key") from None
        try:
            self._known_hosts = asyncssh.import_known_hosts(known_hosts.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ValueError(f"sftp known_hosts cannot be parsed: {exc}") from None

    def describe(self) -> str:
        """``sftp://user@host:port/path``; a relative remote_dir is shown under ``~`` (as
        curl writes it). Never a credential."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.remote_dir.startswith("/"):
            path = self.remote_dir
        else:
            relative = posixpath.normpath(self.remote_dir)
            path = "/~" if relative == "." else f"/~/{relative}"
        return f"sftp://{self.username}@{host}:{self.port}{path}"

    async def put(self, local: Path, name: str) -> None:
        """Upload the local file so that it appears on the server as remote_dir/name only
        when complete.

        Raises ValueError for a name that is not a plain file name (before any I/O),
        :class:`DeliveryError` when every try failed transiently, and a permanent failure's
        own exception (e.g. ``asyncssh.PermissionDenied``) at once.
        """
        check_name(name)
        size_bytes = (await asyncio.to_thread(local.stat)).st_size  # a missing file: at once
        deadline_s = self.connect_timeout_s + TRANSFER_BASE_S
        deadline_s += size_bytes / TRANSFER_RATE_MIN_BYTES_PER_S
        destination = self.describe()
        for attempt in range(1, self.attempts + 1):
            try:
                async with asyncio.timeout(deadline_s):
                    await self._put_once(local, name)
            except _PERMANENT:
                raise
            except _TRANSIENT as exc:
                if attempt == self.attempts:
                    raise DeliveryError(
                        f"delivery to {destination} failed after {attempt} tries; "
                        f"last error: {type(exc).__name__}"
                    ) from exc
                pause_ms = backoff_ms(
                    attempt,
                    initial_ms=self.initial_backoff_ms,
                    max_ms=self.max_backoff_ms,
                    jitter=random.random(),  # noqa: S311 - spreading retries, not a secret
                )
                log.warning(
                    "sftp delivery failed; retrying",
                    extra={
                        "destination": destination,
                        "attempt": attempt,
                        "error": type(exc).__name__,
                        "retry_in_ms": pause_ms,
                    },
                )
                await self._sleep(pause_ms / 1000)
            else:
                return
        raise AssertionError("unreachable: the last try returns or raises")

    async def _put_once(self, local: Path, name: str) -> None:
        final = posixpath.join(self.remote_dir, name)
        partial = posixpath.join(self.remote_dir, f".{name}.partial")
        async with (
            asyncssh.connect(
                self.host,
                self.port,
                username=self.username,
                client_keys=[self._client_key],
                known_hosts=self._known_hosts,
                # Nothing from ~/.ssh (config, agent, other keys) may change where or as
                # whom this connects; key authentication only.
                config=None,
                agent_path=None,
                preferred_auth="publickey",
                password_auth=False,
                kbdint_auth=False,
                host_based_auth=False,
                gss_auth=False,
                gss_kex=False,
                connect_timeout=self.connect_timeout_s,
            ) as connection,
            connection.start_sftp_client() as sftp,
        ):
            # A leftover of an earlier failed try goes first (the open truncates it anyway,
            # but it may be of another owner or mode).
            with contextlib.suppress(asyncssh.SFTPNoSuchFile):
                await sftp.remove(partial)
            await self._upload(sftp, local, partial)
            try:
                await sftp.posix_rename(partial, final)
            except asyncssh.SFTPOpUnsupported:
                # Plain SFTP rename refuses an existing target: a reader may briefly find
                # no file, but never a partial one.
                with contextlib.suppress(asyncssh.SFTPNoSuchFile):
                    await sftp.remove(final)
                await sftp.rename(partial, final)
            log.info("sftp delivered", extra={"destination": self.describe(), "file": name})

    @staticmethod
    async def _upload(sftp: asyncssh.SFTPClient, local: Path, remote: str) -> None:
        source: IO[bytes] = await asyncio.to_thread(local.open, "rb")
        try:
            async with await sftp.open(remote, "wb") as target:
                offset = 0
                while chunk := await asyncio.to_thread(source.read, CHUNK_BYTES):
                    await target.write(chunk, offset)
                    offset += len(chunk)
                with contextlib.suppress(asyncssh.SFTPOpUnsupported):
                    await target.fsync()  # on the server's disk before the rename
        finally:
            await asyncio.to_thread(source.close)
