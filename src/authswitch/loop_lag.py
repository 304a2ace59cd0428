"""How late the event loop runs what is due: ``authswitch_event_loop_lag_seconds``.

Every step of every call (an arrival, a Redis reply, a commit's answers) waits for the one
event loop of its process. When the loop has more to do than time to do it, those waits grow
before any store is slow: the figure that tells an operator the process, not Postgres or the
network, is the bottleneck (docs/operations.md, Overload). A callback is scheduled every
``interval_s``; how late it runs is observed. No task, and no work on the decision path.
"""

from __future__ import annotations

import asyncio

from authswitch import metrics

__all__ = ["LoopLag"]

INTERVAL_S = 0.1


class LoopLag:
    """Samples the running loop's lag until :meth:`stop`."""

    def __init__(self, interval_s: float = INTERVAL_S) -> None:
        assert interval_s > 0
        self._interval_s = interval_s
        self._observed = metrics.HotHistogram(metrics.EVENT_LOOP_LAG_SECONDS)
        self._handle: asyncio.TimerHandle | None = None

    @property
    def samples(self) -> int:
        """Samples this probe has taken."""
        return sum(self._observed.counts)

    def start(self) -> None:
        assert self._handle is None, "started twice"
        self._schedule(asyncio.get_running_loop())

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        due = loop.time() + self._interval_s
        self._handle = loop.call_at(due, self._ran, loop, due)

    def _ran(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        self._observed.observe(max(0.0, loop.time() - due))
        self._schedule(loop)
