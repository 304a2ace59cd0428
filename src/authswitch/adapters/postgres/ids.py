"""Ids checked before they reach SQL."""

from __future__ import annotations

import uuid

from authswitch.errors import NotFound

__all__ = ["uuid_or_not_found"]


def uuid_or_not_found(value: str, what: str) -> str:
    """Reject ids that are not UUIDs before they reach SQL (a clear NotFound, not a 500)."""
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError):
        raise NotFound(f"{what} {value!r} does not exist") from None
