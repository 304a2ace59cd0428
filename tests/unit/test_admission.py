"""The admission limit follows the rate decisions complete (Little's law), within bounds."""

from __future__ import annotations

import contextvars

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


def test_a_call_takes_a_free_slot_kept_for_it_until_its_handler_enters_or_it_ends() -> None:
    """A call taken by an acceptor keeps a slot until its handler enters or it ends: the
    calls in flight and those on their way never outnumber the limit, and a call that
    finds no slot free is refused (None) with nothing counted."""
    admission = Admission(ceiling=2, floor=2, latency_target_s=0)
    first, second = admission.take(), admission.take()
    assert first is not None
    assert second is not None
    assert admission.take() is None  # both slots kept for calls on their way
    assert (admission.in_flight, admission.arriving) == (0, 2)
    assert _enter(admission, first)  # the first call's handler takes its slot
    assert (admission.in_flight, admission.arriving) == (1, 1)
    assert admission.take() is None
    admission.settle(second)  # the second ended before its handler ran: its slot is free
    admission.settle(second)  # (once)
    assert (admission.in_flight, admission.arriving) == (1, 0)
    third = admission.take()
    assert third is not None
    admission.settle(first)  # an entered call's end frees nothing more: leave() does
    assert (admission.in_flight, admission.arriving) == (1, 1)
    assert _enter(admission, third)
    assert admission.in_flight == admission.limit
    assert admission.take() is None
    assert admission.park()  # waiting on a client: no longer in flight, its slot is free
    assert admission.take() is not None


def test_a_handler_entered_without_an_arrival_counts_only_in_flight() -> None:
    """grpc.aio's own request hands calls to the handler without an Arrival: try_enter
    alone admits or refuses them, and slots kept for others count against it."""
    admission = Admission(ceiling=2, floor=2, latency_target_s=0)
    kept = admission.take()
    assert kept is not None
    assert admission.try_enter()  # no Arrival in this context
    assert admission.take() is None
    assert _enter(admission, kept)
    assert not admission.try_enter()
    assert (admission.in_flight, admission.arriving) == (2, 0)
