"""Futures for operations already handed to a store, which a cancellation must not abandon.

A gRPC handler's task is cancelled when its caller goes away (a cancel, a deadline, a server
stopping). Once a decision has been sent to Redis (funds reserved) or queued for the group
commit, abandoning it halfway would leave a reservation with nothing durable behind it, or
release the in-flight mark of a write that has not committed yet. So the futures of such
operations are :class:`Detached`: cancelling the task that awaits one does not cancel it; the
task is woken with ``CancelledError`` only once the operation has finished, and can still read
its outcome. :func:`outlive_cancel` awaits one to its end and keeps the cancellation pending
on the task (``Task.cancelling()`` stays above zero) for the caller to honour once its
critical section is over.

This costs nothing on the common path (no extra task, no shield): the awaiting task simply
waits on the future, as it would on any other.
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

__all__ = ["Detached", "cancel_requested", "outlive_cancel"]

T = TypeVar("T")


class Detached(asyncio.Future[T]):
    """A future that the cancellation of an awaiting task does not cancel.

    ``Task.cancel()`` asks the future it waits on to cancel; this one declines, so the task
    stays waiting and receives its ``CancelledError`` when the future completes.
    """

    def cancel(self, msg: object = None) -> bool:
        return False


async def outlive_cancel(future: asyncio.Future[T]) -> T:
    """The outcome of ``future`` (a :class:`Detached` one), even if the awaiting task is
    cancelled meanwhile: the cancellation is swallowed here and stays requested on the task
    (see :func:`cancel_requested`), so the caller can finish what the outcome obliges it to
    (make a reservation durable, or undo it) before it gives up."""
    try:
        return await future
    except asyncio.CancelledError:
        if not future.done():  # not a Detached future: the cancellation is real
            raise
        return future.result()


def cancel_requested() -> bool:
    """Whether the current task has been asked to cancel (and swallowed it in
    :func:`outlive_cancel`)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
