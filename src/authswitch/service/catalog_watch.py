"""Keeps a process's catalogue cache in step with changes made by other processes.

The catalogue (``service/catalog.py``) is cached in each worker process; an admin change
drops the entry at once in the process that made it, and records it in ``catalog_changes``
(migration 0042). Every process polls that table every ``poll_ms`` and drops what changed
elsewhere, so a change (a fee schedule, a limit, a card's spend controls) applies in every
process within one poll interval. A poll is one indexed read per process, never per
decision, and works through pgbouncer (unlike LISTEN/NOTIFY). A process that missed rows
that were already deleted (asleep for more than a day) drops its whole catalogue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from authswitch.adapters.postgres.catalog_changes import CatalogChangeStore, note_change
from authswitch.service.catalog import Catalog

__all__ = ["CHANGES_KEPT_S", "CatalogWatch", "note_change"]

log = logging.getLogger(__name__)

CHANGES_KEPT_S = 86_400
_BATCH_MAX = 1_000
_CLEANUP_EVERY = 1_000  # polls


class CatalogWatch:
    def __init__(self, changes: CatalogChangeStore, catalog: Catalog, *, poll_ms: int) -> None:
        assert poll_ms > 0
        self.changes = changes
        self.catalog = catalog
        self.poll_s = poll_ms / 1000
        self._last = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start after the changes made so far (the cache is empty at start)."""
        self._last = await self.changes.last_id()
        self._task = asyncio.create_task(self._run(), name="catalog-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def poll(self) -> int:
        """Drop what changed since the last poll; returns how many changes were applied."""
        rows = await self.changes.after(self._last, _BATCH_MAX)
        if not rows:
            return 0
        if self._last and rows[0].id != self._last + 1:
            # A gap: rows deleted while this process slept, or an id whose row is not yet
            # committed (ids are not gapless). Its change is committed before its row is
            # written, so dropping everything now is always right.
            self.catalog.forget_all()
        for row in rows:
            self.catalog.forget(row.kind, row.ident)
        self._last = rows[-1].id
        return len(rows)

    async def _run(self) -> None:
        polls = 0
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.poll()
                polls += 1
                if polls % _CLEANUP_EVERY == 0:
                    await self.changes.delete_older_than(CHANGES_KEPT_S)
            except Exception as exc:  # the next poll tries again; nothing is lost
                log.warning("catalogue changes not read", extra={"error": type(exc).__name__})
