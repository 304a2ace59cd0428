"""Admission of authorisations: how many may be in flight in this process's handlers.

A decision's time in the handler is, by Little's law, the number in flight divided by the rate
they complete. Under overload the number in flight climbs to whatever limit there is, so a
fixed limit is a fixed latency only at one speed of machine. Here the limit follows the rate:
enough calls in flight to keep the process busy for ``latency_target_s``, and no more —
between a floor (bursts on an idle process, and batching, need room) and a ceiling
(``AUTHSWITCH_AUTHORIZE_IN_FLIGHT_MAX``). A call beyond it is refused at once,
RESOURCE_EXHAUSTED, with nothing written, while there is still time for the gateway to try
another replica or stand in.

A call waiting on an off-ledger client's answer is not the process's work: it costs memory,
not CPU, and for as long as the client takes (up to the programme's deadline). While it waits
it leaves the count above (``park``) and is counted apart, up to ``waiting_max``; it comes
back, never refused, when the answer (or the deadline) arrives (``unpark``). So a slow client
neither has its calls refused by the rate of the process's own decisions nor crowds out the
on-ledger calls; past ``waiting_max`` the programme's stand-in answers without asking.

Calls also wait before any handler runs: in gRPC's core, until this process's event loop
takes them. That queue is bounded by the server options (``server_options``:
``grpc.server.max_pending_requests``), where gRPC itself refuses calls beyond it.

With the acceptors (acceptors.py), a call gRPC's core hands over takes a slot free under the
limit as it comes (:meth:`Admission.take`), kept for it until its handler enters; with none
free it is refused there, before its request is read (those that grpc.aio's own request
takes are refused by the handler, as above).

The rate is measured over windows of ``window_s`` and smoothed; no clock is read per call
but once per window's end, on a completion.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable

__all__ = ["OVERLOADED_DETAILS", "Admission", "Arrival", "limit_for"]

# The details of a call refused RESOURCE_EXHAUSTED at the limit, wherever it is refused.
OVERLOADED_DETAILS = "overloaded: too many authorisations in flight"
WINDOW_S = 0.25
SMOOTHING = 0.5  # weight of the newest window's rate


def limit_for(rate_per_s: float, latency_target_s: float, floor: int, ceiling: int) -> int:
    """Calls in flight that the process completes within ``latency_target_s`` at
    ``rate_per_s``, within [floor, ceiling]."""
    return max(floor, min(ceiling, int(rate_per_s * latency_target_s)))


class Arrival:
    """A call taken for a free slot (:meth:`Admission.take`), on its way to its handler:
    the slot stays kept for it until the handler enters (or the call ends)."""

    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending = True


# The Arrival of the call whose task runs in this context (set by the acceptors).
ARRIVAL: contextvars.ContextVar[Arrival | None] = contextvars.ContextVar(
    "authswitch_arrival", default=None
)


class Admission:
    """Counts authorisations in flight and says whether one more may start."""

    def __init__(
        self,
        *,
        ceiling: int,
        floor: int,
        latency_target_s: float,
        waiting_max: int = 1_000,
        clock: Callable[[], float] = time.monotonic,
        window_s: float = WINDOW_S,
    ) -> None:
        assert 0 < floor <= ceiling
        assert latency_target_s >= 0
        assert waiting_max >= 0
        self.ceiling = ceiling
        self.floor = floor
        self.latency_target_s = latency_target_s
        self._clock = clock
        self._window_s = window_s
        self.in_flight = 0
        self.waiting_max = waiting_max
        self.waiting = 0  # admitted calls waiting on an off-ledger client, not in in_flight
        # From the ceiling down, once completions show the rate (never, without a target).
        self.limit = ceiling
        self.rate_per_s = 0.0
        self._completed = 0
        self._window_ends = clock() + window_s
        # Slots kept for calls taken (take()) but not yet in their handler (Arrival):
        # in_flight + these never pass the limit.
        self._arriving = 0

    @property
    def arriving(self) -> int:
        """Slots kept for calls on their way to their handler."""
        return self._arriving

    def take(self) -> Arrival | None:
        """A call has come: a slot is kept for it until its handler enters
        (:meth:`try_enter`, with the Arrival in :data:`ARRIVAL`) or its task ends
        (:meth:`settle`), whichever is first; None when no slot is free (refuse it)."""
        if self.in_flight + self._arriving >= self.limit:
            return None
        self._arriving += 1
        return Arrival()

    def settle(self, arrival: Arrival) -> None:
        """The call's task has ended: a slot still kept for it is free."""
        if arrival.pending:
            arrival.pending = False
            self._arriving -= 1

    def try_enter(self) -> bool:
        arrival = ARRIVAL.get()
        if arrival is not None and arrival.pending:  # the slot kept for this call
            arrival.pending = False
            self._arriving -= 1
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def park(self) -> bool:
        """An admitted call starts waiting on a client: it no longer counts in flight.
        False (and nothing changes) when ``waiting_max`` calls already wait."""
        if self.waiting >= self.waiting_max:
            return False
        self.waiting += 1
        self.in_flight -= 1
        return True

    def unpark(self) -> None:
        """The parked call is back to finish its decision, whatever the limit now is."""
        self.waiting -= 1
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1
        self._count_completion()

    def _count_completion(self) -> None:
        """One more completed; at a window's end, the rate and the limit from it."""
        self._completed += 1
        if self.latency_target_s == 0 or self._completed < 16:
            return
        now = self._clock()
        if now < self._window_ends:
            return
        elapsed = now - self._window_ends + self._window_s
        rate = self._completed / elapsed
        self.rate_per_s = (
            rate if self.rate_per_s == 0 else (SMOOTHING * rate + (1 - SMOOTHING) * self.rate_per_s)
        )
        self.limit = limit_for(self.rate_per_s, self.latency_target_s, self.floor, self.ceiling)
        self._completed = 0
        self._window_ends = now + self._window_s
