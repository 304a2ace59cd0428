"""Retry schedules, pure: exponential backoff with a cap and full jitter."""

from __future__ import annotations

__all__ = ["backoff_ms"]


def backoff_ms(attempt: int, *, initial_ms: int, max_ms: int, jitter: float) -> int:
    """The pause before retry number ``attempt`` (1 for the first retry).

    ``initial_ms`` doubles with each attempt up to ``max_ms``; ``jitter`` in [0, 1) picks a
    point in the upper half of that ceiling, so that many failing deliveries do not retry in
    step while the pause still grows.
    """
    assert attempt >= 1
    assert 0 <= jitter < 1
    ceiling = min(max_ms, initial_ms * 2 ** min(attempt - 1, 30))
    return int(ceiling / 2 + ceiling / 2 * jitter)
