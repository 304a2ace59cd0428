"""The soak's verdict (benchmarks/soak.py): growth beyond noise over the window fails, a flat
or noisy series and growth below the floor do not."""

from __future__ import annotations

import random

from benchmarks.soak import trend

MINUTES = [float(m) for m in range(10, 31)]  # the last 20 minutes of a 30-minute soak


def _verdict(values: list[float], *, floor: float = 16.0, relative: float = 0.05) -> bool:
    return trend(
        MINUTES, values, key="k", label="k", unit="", floor=floor, relative=relative
    ).failed


def test_a_flat_noisy_series_does_not_fail() -> None:
    rng = random.Random(1)
    assert not _verdict([300 + rng.gauss(0, 8) for _ in MINUTES])


def test_steady_growth_beyond_the_noise_fails() -> None:
    rng = random.Random(2)
    values = [300 + 3 * i + rng.gauss(0, 2) for i, _ in enumerate(MINUTES)]  # +60 over 20 min
    result = trend(MINUTES, values, key="k", label="k", unit="", floor=16.0, relative=0.05)
    assert result.failed
    assert 50 < result.growth < 70


def test_growth_below_the_floor_does_not_fail() -> None:
    values = [100 + 0.5 * i for i, _ in enumerate(MINUTES)]  # +10, noiseless
    assert not _verdict(values, floor=16.0, relative=0.0)
    assert _verdict(values, floor=5.0, relative=0.0)


def test_a_step_that_then_stays_flat_is_judged_by_its_trend() -> None:
    # One jump early in the window (a cache warming up) projects less than the jump itself,
    # and the noise around a line through a step is large: not a leak.
    values = [100.0] * 3 + [130.0] * 18
    assert not _verdict(values, floor=16.0, relative=0.0)


def test_shrinking_never_fails() -> None:
    assert not _verdict([500 - 10 * i for i, _ in enumerate(MINUTES)], floor=0, relative=0)
