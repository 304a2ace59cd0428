"""Where spend controls are kept: the ``spend_controls`` table (migration 0040)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import asyncpg

from authswitch.adapters.postgres.audit import audit
from authswitch.adapters.postgres.errors import (
    UNREACHABLE,
    translated_methods,
    translates_inline,
    unavailable,
)
from authswitch.adapters.postgres.ids import uuid_or_not_found
from authswitch.domain.controls import ControlSubject, ControlVersion, SpendControls
from authswitch.errors import NotFound

__all__ = ["ControlStore"]


@translated_methods
class ControlStore:
    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self.pool = pool

    async def add_version(
        self, subject: ControlSubject, subject_id: str, effective_from: datetime,
        controls: SpendControls, actor: str,
    ) -> int:  # fmt: skip
        """Store a new version of the subject's controls; returns its version number. The
        subject's row is locked so that concurrent versions are numbered one after another."""
        table = "cards" if subject is ControlSubject.CARD else "accounts"
        subject_id = uuid_or_not_found(subject_id, subject.value.lower())
        async with self.pool.acquire() as conn, conn.transaction():
            found = await conn.fetchval(
                f"SELECT true FROM {table} WHERE id = $1 FOR UPDATE",  # noqa: S608 - fixed names
                subject_id,
            )
            if not found:
                raise NotFound(f"{subject.value.lower()} {subject_id} does not exist")
            version = await conn.fetchval(
                "SELECT coalesce(max(version), 0) + 1 FROM spend_controls WHERE subject_id = $1",
                subject_id,
            )
            await conn.execute(
                """INSERT INTO spend_controls (subject_id, version, subject, effective_from,
                                               controls)
                   VALUES ($1, $2, $3, $4, $5)""",
                subject_id, version, subject.value, effective_from,
                json.dumps(controls.to_json(), sort_keys=True),
            )  # fmt: skip
            await audit(
                conn, actor, "set_spend_controls", subject_id,
                {"subject": subject.value, "version": version,
                 "effective_from": effective_from.isoformat()},
            )  # fmt: skip
        return int(version)

    @translates_inline  # a decision whose controls are not cached
    async def versions(self, subject_id: str) -> list[ControlVersion]:
        """Every version of the subject's controls, oldest first."""
        subject_id = uuid_or_not_found(subject_id, "card or account")
        try:
            rows = await self.pool.fetch(
                """SELECT subject, version, effective_from, created_at, controls
                   FROM spend_controls WHERE subject_id = $1 ORDER BY version""",
                subject_id,
            )
        except UNREACHABLE as exc:
            raise unavailable(exc) from exc
        return [
            ControlVersion(
                subject=ControlSubject(r["subject"]),
                subject_id=subject_id,
                version=r["version"],
                effective_from=r["effective_from"],
                created_at=r["created_at"],
                controls=SpendControls.from_json(json.loads(r["controls"])),
            )
            for r in rows
        ]
