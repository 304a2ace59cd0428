"""Where report files go: a pluggable sink that writes a file atomically.

A report is written to a temporary name and only renamed into place once complete, so a
reader (or a sponsor bank's collector) never sees a partial file, and a failure leaves none.
``ReportSink`` is written into as the report streams out; ``FileSink`` delivers a finished
file (a directory here, SFTP in adapters/sftp.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO, Protocol

__all__ = ["DirectorySink", "FileSink", "ReportSink", "check_name"]


class ReportSink(Protocol):
    def open(self, name: str) -> contextlib.AbstractAsyncContextManager[IO[bytes]]:
        """A file to write ``name`` into; it appears under ``name`` only if the block
        completes without an exception."""
        ...


class FileSink(Protocol):
    async def put(self, local: Path, name: str) -> None:
        """Deliver the finished file ``local`` as ``name``; it appears only when complete."""
        ...

    def describe(self) -> str:
        """Where files go, for logs and delivery records (never a credential)."""
        ...


def check_name(name: str) -> None:
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"not a plain file name: {name!r}")


class DirectorySink:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def describe(self) -> str:
        return f"file://{self.directory.resolve()}"

    async def put(self, local: Path, name: str) -> None:
        check_name(name)

        def copy() -> None:
            with self._atomic(name) as handle, local.open("rb") as source:
                shutil.copyfileobj(source, handle, 1024 * 1024)

        await asyncio.to_thread(copy)

    @contextlib.asynccontextmanager
    async def open(self, name: str) -> AsyncIterator[IO[bytes]]:
        with self._atomic(name) as handle:
            yield handle

    @contextlib.contextmanager
    def _atomic(self, name: str) -> Iterator[IO[bytes]]:
        check_name(name)
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=".partial-", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self.directory / name)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
