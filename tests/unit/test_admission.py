"""The admission limit follows the rate decisions complete (Little's law), within bounds."""

from __future__ import annotations

import asyncio

import pytest

from authswitch.adapters.grpc.admission import Admission, limit_for


def test_limit_is_what_completes_within_the_target() -> None:
    assert limit_for(1_000, 0.05, 16, 256) == 50
    assert limit_for(100, 0.05, 16, 256) == 16  # the floor: bursts and batching need room
    assert limit_for(100_000, 0.05, 16, 256) == 256  # the ceiling


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_limit_starts_at_the_ceiling_and_follows_the_measured_rate() -> None:
    clock = _Clock()
    admission = Admission(ceiling=256, floor=16, latency_target_s=0.05, clock=clock)
    assert admission.limit == 256
    # 2,000 decisions a second for a second: 100 in flight complete within 50 ms.
    for _ in range(2_000):
        assert admission.try_enter()
        clock.now += 0.0005
        admission.leave()
    assert 90 <= admission.limit <= 110, admission.limit
    # Full: the next call is refused, and nothing is counted for it.
    for _ in range(admission.limit):
        assert admission.try_enter()
    assert not admission.try_enter()
    assert admission.in_flight == admission.limit


def test_without_a_target_the_limit_is_the_ceiling() -> None:
    clock = _Clock()
    admission = Admission(ceiling=8, floor=4, latency_target_s=0, clock=clock)
    for _ in range(1_000):
        admission.try_enter()
        clock.now += 0.001
        admission.leave()
    assert admission.limit == 8
    assert [admission.try_enter() for _ in range(9)] == [True] * 8 + [False]


def test_a_call_waiting_on_a_client_leaves_the_count_in_flight_and_comes_back() -> None:
    admission = Admission(ceiling=2, floor=2, latency_target_s=0, waiting_max=3)
    assert admission.try_enter()
    assert admission.try_enter()
    assert not admission.try_enter()
    # Both start waiting on their clients: two more calls may start.
    assert admission.park()
    assert admission.park()
    assert (admission.in_flight, admission.waiting) == (0, 2)
    assert admission.try_enter()
    assert admission.try_enter()
    assert admission.park()
    assert admission.try_enter()
    # Three wait already: the fourth may not (and nothing changes for it).
    assert not admission.park()
    assert (admission.in_flight, admission.waiting) == (2, 3)
    # Back from the client, a call is counted again, above the limit if need be: it was
    # admitted, and it is never refused half-way.
    admission.unpark()
    assert (admission.in_flight, admission.waiting) == (3, 2)
    assert not admission.try_enter()
    for _ in range(3):
        admission.leave()
    admission.unpark()
    admission.unpark()
    for _ in range(2):
        admission.leave()
    assert (admission.in_flight, admission.waiting) == (0, 0)


@pytest.mark.timeout(10)
async def test_room_waits_while_full_and_is_given_by_a_leave_or_a_park() -> None:
    admission = Admission(ceiling=2, floor=2, latency_target_s=0)
    await asyncio.wait_for(admission.room(), 1)  # room at once
    assert admission.try_enter()
    assert admission.try_enter()
    assert admission.full
    waiters = [asyncio.ensure_future(admission.room()) for _ in range(3)]
    await asyncio.sleep(0.01)
    assert not any(w.done() for w in waiters)
    waiters[0].cancel()  # one waiter gone: the others still wait on the same room
    await asyncio.sleep(0.01)
    assert not any(w.done() for w in waiters[1:])
    admission.leave()
    await asyncio.wait_for(asyncio.gather(*waiters[1:]), 1)
    assert admission.try_enter()
    assert admission.full
    parked = asyncio.ensure_future(admission.room())
    await asyncio.sleep(0.01)
    assert not parked.done()
    assert admission.park()  # waiting on a client: no longer in flight
    await asyncio.wait_for(parked, 1)
