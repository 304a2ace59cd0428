"""Where report files go: a pluggable sink that writes a file atomically.

A report is written to a temporary name and only renamed into place once complete, so a
reader (or a sponsor bank's collector) never sees a partial file, and a failure leaves none.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Protocol

__all__ = ["DirectorySink", "ReportSink"]


class ReportSink(Protocol):
    def open(self, name: str) -> contextlib.AbstractAsyncContextManager[IO[bytes]]:
        """A file to write ``name`` into; it appears under ``name`` only if the block
        completes without an exception."""
        ...


class DirectorySink:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @contextlib.asynccontextmanager
    async def open(self, name: str) -> AsyncIterator[IO[bytes]]:
        if "/" in name or name.startswith("."):
            raise ValueError(f"not a plain file name: {name!r}")
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
