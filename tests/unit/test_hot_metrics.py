"""The decision path's instruments count exactly what prometheus_client would."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from authswitch.metrics import HotCounter, HotHistogram, flush_hot

BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.1, 1.0)


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
    assert _lines(generate_latest(hot)) == _lines(generate_latest(direct))


def _lines(exposition: bytes) -> list[str]:
    return [line for line in exposition.decode().splitlines() if "_created" not in line]
