"""The admission limit follows the rate decisions complete (Little's law), within bounds."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from authswitch.adapters.grpc.admission import ARRIVAL, Admission, Arrival, limit_for


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


def _enter(admission: Admission, arrival: Arrival) -> bool:
    """``try_enter`` as the handler of an acceptor's call runs it: in its own context,
    with the call's Arrival (acceptors.py)."""

    def enter() -> bool:
        ARRIVAL.set(arrival)
        return admission.try_enter()

    return contextvars.copy_context().run(enter)


@pytest.mark.timeout(10)
async def test_room_promises_free_slots_only_and_waits_for_a_leave_or_a_park() -> None:
    """The acceptors ask gRPC's core for a call only with a slot promised to it, kept for
    the call until its handler enters or it ends: the slots promised and kept, and the
    calls in flight, never outnumber the limit."""
    admission = Admission(ceiling=2, floor=2, latency_target_s=0)
    await asyncio.wait_for(admission.room(), 1)  # a slot at once, promised
    await asyncio.wait_for(admission.room(), 1)
    third = asyncio.ensure_future(admission.room())  # both slots promised: it waits
    await asyncio.sleep(0.01)
    assert not third.done()
    first = admission.arrived()  # the first call came: its slot is kept for it...
    admission.abandon()  # ...and none came for the second (core failed the request)
    await asyncio.wait_for(third, 1)  # that slot is the third waiter's
    assert _enter(admission, first)  # the first call's handler takes its slot
    fourth = asyncio.ensure_future(admission.room())
    await asyncio.sleep(0.01)
    assert not fourth.done()  # one in flight, one promised
    lost = admission.arrived()  # the third's call came, and ended before its handler ran
    admission.settle(lost)
    await asyncio.wait_for(fourth, 1)  # its slot is free again
    assert _enter(admission, admission.arrived())
    assert admission.in_flight == admission.limit
    waiters = [asyncio.ensure_future(admission.room()) for _ in range(3)]
    await asyncio.sleep(0.01)
    assert not any(w.done() for w in waiters)
    waiters[0].cancel()  # one waiter gone: the others still wait, in turn
    await asyncio.sleep(0.01)
    assert not any(w.done() for w in waiters[1:])
    admission.leave()  # one slot: the next waiter's, not both
    await asyncio.wait_for(waiters[1], 1)
    await asyncio.sleep(0.01)
    assert not waiters[2].done()
    assert _enter(admission, admission.arrived())
    assert admission.park()  # waiting on a client: no longer in flight, its slot is free
    await asyncio.wait_for(waiters[2], 1)


@pytest.mark.timeout(10)
async def test_calls_leaving_together_wake_one_waiter_per_free_slot() -> None:
    """A committed batch ends many calls in one turn of the loop: only as many waiting
    acceptors as there are slots free (counting those promised already) may ask for a
    call, else the rest would take calls only to refuse them."""
    admission = Admission(ceiling=8, floor=8, latency_target_s=0)
    for _ in range(8):
        assert admission.try_enter()
    waiters = [asyncio.ensure_future(admission.room()) for _ in range(6)]
    await asyncio.sleep(0.01)
    for _ in range(3):
        admission.leave()
    await asyncio.sleep(0.01)
    assert [w.done() for w in waiters] == [True] * 3 + [False] * 3
    admission.leave()  # a fourth slot, while the three promised have not arrived yet
    await asyncio.sleep(0.01)
    assert sum(w.done() for w in waiters) == 4
    # A woken waiter cancelled before it runs gives its slot to the next one.
    late = asyncio.ensure_future(admission.room())
    await asyncio.sleep(0.01)
    admission.leave()  # the fifth waiter is woken...
    waiters[4].cancel()  # ...and cancelled before it runs
    await asyncio.sleep(0.01)
    assert waiters[4].cancelled()
    assert waiters[5].done()
    assert not late.done()
    late.cancel()
    await asyncio.gather(*waiters, late, return_exceptions=True)
