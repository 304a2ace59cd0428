"""A real SFTP server for tests: asyncssh's own server on 127.0.0.1, with a fresh ed25519
host key, one authorised client key, and the SFTP subsystem chrooted to a directory.

It counts the SSH connections it accepts (one per try of a delivery), can refuse the
``posix-rename@openssh.com`` request (as a server without that extension would, so that the
client falls back to remove and rename), and can deny access under chosen directories (the
tests run as root, where file modes deny nothing).
"""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

HOST = "127.0.0.1"


def new_key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519")


def known_hosts_line(key: asyncssh.SSHKey, port: int, host: str = HOST) -> bytes:
    """An OpenSSH known_hosts line trusting ``key`` as the host key of ``host:port``."""
    public = key.export_public_key("openssh").split()  # type, base64, comment
    return b"[%s]:%d %s %s\n" % (host.encode(), port, public[0], public[1])


@dataclass
class SftpServer:
    host: str
    port: int
    root: Path
    host_key: asyncssh.SSHKey
    client_key: bytes  # the authorised client's private key, OpenSSH format
    known_hosts: bytes  # trusts host_key at host:port
    posix_rename: bool = True
    denied_dirs: frozenset[str] = frozenset()
    connections: int = 0  # SSH connections accepted so far
    _open: set[asyncssh.SSHServerConnection] = field(default_factory=set)

    def known_hosts_for(self, port: int) -> bytes:
        """known_hosts for this server reached at another port (through a proxy)."""
        return known_hosts_line(self.host_key, port, self.host)


class _Server(asyncssh.SSHServer):
    def __init__(self, state: SftpServer) -> None:
        self.state = state
        self.connection: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.connection = conn
        self.state.connections += 1
        self.state._open.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.connection is not None:
            self.state._open.discard(self.connection)


class _ChrootedSftp(asyncssh.SFTPServer):
    def __init__(self, chan: asyncssh.SSHServerChannel[bytes], state: SftpServer) -> None:
        super().__init__(chan, chroot=bytes(state.root))
        self.state = state

    def _check(self, path: bytes) -> None:
        parts = posixpath.normpath(posixpath.join(b"/", path)).split(b"/")
        if any(p.decode() in self.state.denied_dirs for p in parts):
            raise asyncssh.SFTPPermissionDenied("Permission denied")

    def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> object:
        self._check(path)
        return super().open(path, pflags, attrs)

    def remove(self, path: bytes) -> None:
        self._check(path)
        super().remove(path)

    def rename(self, oldpath: bytes, newpath: bytes) -> None:
        self._check(newpath)
        super().rename(oldpath, newpath)

    def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        if not self.state.posix_rename:
            raise asyncssh.SFTPOpUnsupported("posix-rename not supported")
        self._check(newpath)
        super().posix_rename(oldpath, newpath)


@contextlib.asynccontextmanager
async def serve_sftp(
    root: Path, *, posix_rename: bool = True, denied_dirs: frozenset[str] = frozenset()
) -> AsyncIterator[SftpServer]:
    """An SFTP server serving ``root`` until the block ends; then it stops listening and
    closes the connections still open."""
    root.mkdir(parents=True, exist_ok=True)
    host_key, client_key = new_key(), new_key()
    state = SftpServer(
        host=HOST,
        port=0,
        root=root.resolve(),
        host_key=host_key,
        client_key=client_key.export_private_key("openssh"),
        known_hosts=b"",
        posix_rename=posix_rename,
        denied_dirs=denied_dirs,
    )
    acceptor = await asyncssh.listen(
        HOST,
        0,
        server_factory=lambda: _Server(state),
        server_host_keys=[host_key],
        authorized_client_keys=asyncssh.import_authorized_keys(
            client_key.export_public_key("openssh").decode()
        ),
        sftp_factory=lambda chan: _ChrootedSftp(chan, state),
        password_auth=False,
        kbdint_auth=False,
        gss_auth=False,
        gss_kex=False,
    )
    state.port = acceptor.get_port()
    state.known_hosts = known_hosts_line(host_key, state.port)
    try:
        yield state
    finally:
        acceptor.close()
        await acceptor.wait_closed()
        for conn in list(state._open):
            conn.close()
            await conn.wait_closed()
