"""authswitch_event_loop_lag_seconds: a loop held up is seen late by as long as it was held."""

from __future__ import annotations

import asyncio
import time

from authswitch import metrics
from authswitch.loop_lag import LoopLag


def _late_over(bound_s: float) -> int:
    """Samples observed so far later than ``bound_s``, by the series' buckets."""
    metrics.flush_hot()
    child = metrics.EVENT_LOOP_LAG_SECONDS
    counts = [b.get() for b in child._buckets]
    return int(sum(c for le, c in zip(child._upper_bounds, counts, strict=True) if le > bound_s))


def test_a_held_loop_is_observed_late_by_at_least_the_hold() -> None:
    async def main() -> None:
        probe = LoopLag(interval_s=0.01)
        probe.start()
        await asyncio.sleep(0.05)  # a few samples on an idle loop
        before = _late_over(0.25)
        # The loop is held (on purpose): the sample due meanwhile runs 0.39 s late or more.
        time.sleep(0.4)  # noqa: ASYNC251
        await asyncio.sleep(0.05)
        probe.stop()
        assert _late_over(0.25) == before + 1
        with_stopped = _late_over(0.0)
        await asyncio.sleep(0.05)
        assert _late_over(0.0) == with_stopped  # stopped: nothing more is sampled

    asyncio.run(main())
