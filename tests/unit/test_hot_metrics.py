"""The decision path's instruments count exactly what prometheus_client would."""

from __future__ import annotations

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from authswitch.metrics import HotCounter, HotHistogram, flush_hot

BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.1, 1.0)


@settings(deadline=None)
@given(st.lists(st.floats(0, 2, allow_nan=False), max_size=60), st.integers(0, 3))
def test_hot_instruments_match_direct_ones(values: list[float], flushes: int) -> None:
    direct, hot = CollectorRegistry(), CollectorRegistry()
    direct_h = Histogram("h", "h", ["m"], buckets=BUCKETS, registry=direct).labels("x")
    direct_c = Counter("c", "c", ["m"], registry=direct).labels("x")
    hot_h = HotHistogram(Histogram("h", "h", ["m"], buckets=BUCKETS, registry=hot).labels("x"))
    hot_c = HotCounter(Counter("c", "c", ["m"], registry=hot).labels("x"))
    positions = range(len(values) + 1)
    cut = set(random.Random(len(values)).sample(positions, min(flushes, len(positions))))
    for index, value in enumerate(values):
        if index in cut:
            flush_hot()  # a flush in the middle adds only what is new
        direct_h.observe(value)
        hot_h.observe(value)
        direct_c.inc()
        hot_c.inc()
    flush_hot()
    flush_hot()  # a flush with nothing new adds nothing
    hot_lines, direct_lines = _lines(generate_latest(hot)), _lines(generate_latest(direct))
    assert [line for line in hot_lines if "_sum" not in line] == [
        line for line in direct_lines if "_sum" not in line
    ]
    # The sum is folded in as differences of running totals: equal up to float rounding.
    (hot_sum,) = [float(line.split()[-1]) for line in hot_lines if line.startswith("h_sum")]
    (direct_sum,) = [float(line.split()[-1]) for line in direct_lines if line.startswith("h_sum")]
    assert math.isclose(hot_sum, direct_sum, rel_tol=1e-9, abs_tol=1e-12)


def _lines(exposition: bytes) -> list[str]:
    return [line for line in exposition.decode().splitlines() if "_created" not in line]
