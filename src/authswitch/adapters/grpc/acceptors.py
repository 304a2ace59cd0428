"""Calls taken from gRPC's core several at a time, not one.

grpc.aio's server asks gRPC's core for the next call of a method, awaits it, hands it to a
task and only then asks again: one request outstanding per method. Each call taken costs
about five turns of the event loop and a wake-up of gRPC's poller thread, and under load,
when every turn runs many callbacks, that chain, not the CPU, sets the rate: with 64 calls in
flight a hot-account run kept a median of 5 of them in its handlers (the rest waited in core)
with the process's main thread 72 % busy.

Here the methods given to :meth:`Acceptors.register` (Authorize) are registered methods, and
``count`` more requests for their calls are kept outstanding, each by a task that hands the
call to a task of its own (:func:`_serve`) and asks again. Side by side on one host (make
bench-quick, the hot account, 64 in flight): 1,645-1,717 decisions/s with grpc.aio's one
request, 2,509-2,646/s with 8 more; the server's CPU per decision 540-575 µs against 370-398.
With 32 more (the default since), six alternating pairs against 8: 3-11 % more decisions/s,
25.5 decisions per commit against 23, and 8 % less CPU per decision: the calls let in by a
committed batch's answers reach their handlers together rather than 8 at a time, and share the
next batch. (The ceiling row, one Redis call per request and no batch, gains nothing from it.)

Taking and serving calls so is grpc.aio's private API (cygrpc's
AioServer._request_registered_call, execute_batch, its batch operations and its servicer
context). :func:`available` checks it is there; with
a grpcio without it the server takes calls the stock way and says so once in its log
(tests/e2e/test_acceptors.py fails instead, on the grpcio the project pins).

Calls taken here are bounded by the admission limit of their handler (Authorize), not by
grpc.aio's ``maximum_concurrent_rpcs``: a call that comes when the admission has no slot free
(:meth:`Admission.take`) is refused at once, RESOURCE_EXHAUSTED, its request never read and no
handler run (:func:`_refuse`); one that comes with a slot keeps
it until its handler enters (the handler finds the call's :class:`Arrival` in its task's
context) or the call ends. The requests stay outstanding under overload, so calls do not
wait in gRPC's core for a slot: they are answered or refused as fast as the event loop turns.
(Two earlier designs, measured under 2x overload in 10 s quick runs, alternating: acceptors
that asked core for a call only with a slot kept for it left the excess waiting in core's
pending calls, about 30 ms, or cancelled by core (CANCELLED, never RESOURCE_EXHAUSTED):
answered p99 174-261 ms, 11-15 thousand refused and 43-48 thousand CANCELLED, against
137-160 ms, 28-36 thousand refused and 22-34 thousand CANCELLED with this one; before that,
acceptors that took every call and refused it in the handler, after reading it, answered
1,310-1,600/s against 1,780-2,330 with 8 acceptors.)
Under overload the event loop's turns grow long, and ``count`` requests take at most that
many calls a turn: the rest wait in core's pending queue (``grpc_pending_calls_max``), where
their refusal waits turns too, or overflow it and end CANCELLED by core, which tells the
gateway nothing. So each call refused adds one more acceptor, up to ``surge`` more; once a
second (``SURGE_HOLD_S``) has passed with none refused, each call taken retires one of them,
down to ``count``. A closed loop below capacity refuses nothing and never surges.
A refusal is one task and one batch (:func:`_refuse`), where grpc.aio's own refusal of a call
over its concurrency limit (``_handle_rpc`` with ``concurrency_exceeded``, as the acceptors
used until 2026-12-06) was two tasks and two batches: at 4,000 calls a second offered against
about 2,200 of capacity (quick runs, three alternating pairs), 1,403-1,557 answers a second
against 1,115-1,162, answered p99 133-150 ms against 174-239, refusals' p99 61-77 ms against
86-117, and 0-341 calls CANCELLED by core against 589-2,200.
An admitted call is one task and two batches (:func:`_serve`), where grpc.aio's dispatch
(``_schedule_rpc_coro``, as the acceptors used until 2026-12-06) was two tasks and three
batches: the hot account's closed loop (quick runs, three alternating pairs) took 339-359 µs
of server CPU per decision against 379-407, at 2,614-2,725 decisions/s against 2,230-2,573.
A request outstanding with core ends only when core hands it a call or shuts down: the
tasks are never cancelled while they have one (a cancelled one would leave its request to
take a call nobody answers); they end when the server's shutdown fails their requests
(:meth:`Acceptors.closed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import importlib
import logging
from collections.abc import Coroutine
from typing import Any, TypeAlias, cast

import grpc

from authswitch import metrics
from authswitch.adapters.grpc.admission import ARRIVAL, OVERLOADED_DETAILS, Admission, Arrival

_cygrpc: Any = importlib.import_module("grpc._cython.cygrpc")  # untyped, private

__all__ = ["Acceptors", "available"]

log = logging.getLogger(__name__)

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # subscriptable only in the stubs
_PRIVATE = (
    "_RequestCallError", "execute_batch", "ExecuteBatchError", "SendInitialMetadataOperation",
    "SendStatusFromServerOperation", "ReceiveCloseOnServerOperation", "StatusCode",
    "ReceiveMessageOperation", "SendMessageOperation", "_ServicerContext", "AbortError",
)  # fmt: skip
CLOSE_TIMEOUT_S = 2.0  # after the server stopped, for its requests to fail
# After the last refusal, how long the acceptors added while calls were refused stay.
SURGE_HOLD_S = 1.0


# The private functions called here, with the parameters they are called with.
_SIGNATURES = {"execute_batch": ("grpc_call_wrapper", "operations", "loop")}


async def _finish(
    rpc_state: Any,
    loop: asyncio.AbstractEventLoop,
    code: Any,
    details: str,
    trailing: tuple[Any, ...] = (),
    message: bytes | None = None,
) -> None:
    """A call's last batch: initial metadata, its answer (if any), its status, and the
    client's close."""
    ops: tuple[Any, ...] = (_cygrpc.SendInitialMetadataOperation((), 0),)
    if message is not None:
        ops += (_cygrpc.SendMessageOperation(message, 0),)
    ops += (
        _cygrpc.SendStatusFromServerOperation(trailing, code, details, 0),
        _cygrpc.ReceiveCloseOnServerOperation(0),
    )
    with contextlib.suppress(_cygrpc.ExecuteBatchError):  # the client has gone already
        await _cygrpc.execute_batch(rpc_state, ops, loop)


def _refuse(rpc_state: Any, loop: asyncio.AbstractEventLoop) -> Coroutine[Any, Any, None]:
    """RESOURCE_EXHAUSTED for a call taken with no slot free, its request never read: one
    batch in one task. grpc.aio's own refusal (``_handle_rpc`` with ``concurrency_exceeded``,
    under ``_schedule_rpc_coro``) costs two tasks and two batches, resolves the method and
    parses the call's metadata first."""
    return _finish(rpc_state, loop, _cygrpc.StatusCode.resource_exhausted, OVERLOADED_DETAILS)


async def _serve(
    rpc_state: Any, handler: Handler, loop: asyncio.AbstractEventLoop, method: str
) -> None:
    """An admitted unary call, in one task and two batches: its request read, the handler
    run, then its answer, status and the client's close in one batch. grpc.aio's dispatch
    (``_schedule_rpc_coro``) runs a second task per call, which listens for the client's
    cancellation in a batch of its own, and resolves the method and parses the metadata
    before the handler does.

    Without that listener a call the client cancels runs to its end (as a decision does
    anyway: the write it started outlives a cancellation), its answer then going nowhere;
    at shutdown the server waits for it (bounded by the handlers' own deadlines).
    """
    receive = _cygrpc.ReceiveMessageOperation(0)
    try:
        await _cygrpc.execute_batch(rpc_state, (receive,), loop)
    except _cygrpc.ExecuteBatchError:
        return  # the call ended before its request came (the client left, or a shutdown)
    raw = receive.message()
    if raw is None:
        return  # the client cancelled at once
    context = _cygrpc._ServicerContext(rpc_state, None, None, loop)
    code = _cygrpc.StatusCode.ok
    details = ""
    message: bytes | None = None
    try:
        deserialize = handler.request_deserializer
        request = deserialize(raw) if deserialize is not None else raw
        behaviour: Any = handler.unary_unary
        response = await behaviour(request, context)
        set_code = context.code()
        if set_code is None or set_code is grpc.StatusCode.OK:
            serialize = handler.response_serializer
            message = serialize(response) if serialize is not None else response
        else:
            code, details = set_code.value[0], context.details() or ""
    except _cygrpc.AbortError:
        return  # context.abort sent the status
    except Exception as exc:  # as grpc.aio: logged, and UNKNOWN to the caller
        log.exception("unexpected %s in %s", type(exc).__name__, method)
        # Its type only: an exception's text could carry what a request held.
        code, details = _cygrpc.StatusCode.unknown, f"unexpected {type(exc).__name__}"
    await _finish(rpc_state, loop, code, details, context.trailing_metadata(), message)


def _settle(admission: Admission, arrival: Arrival, _: object) -> None:
    """A call's task has ended (a done callback): the slot kept for it, if still kept."""
    admission.settle(arrival)


def _parameters(function: Any) -> tuple[str, ...]:
    code = getattr(function, "__code__", None)
    return tuple(code.co_varnames[: code.co_argcount]) if code is not None else ()


def available() -> bool:
    """Whether this grpcio exposes the dispatch the acceptors use, as they call it."""
    return (
        all(hasattr(_cygrpc, name) for name in _PRIVATE)
        and all(_parameters(getattr(_cygrpc, f)) == p for f, p in _SIGNATURES.items())
        and hasattr(_cygrpc.AioServer, "_request_registered_call")
        and hasattr(_cygrpc.AioServer, "add_registered_method_handlers")
    )


class Acceptors:
    """``count`` more outstanding requests for calls of each registered method, and up to
    ``surge`` more of them while calls are being refused."""

    def __init__(self, count: int, surge: int = 0) -> None:
        assert count >= 0
        assert surge >= 0
        self.usable = available()
        self.count = count if self.usable else 0
        self.surge = surge if self.count else 0
        if count and not self.usable:
            log.warning("this grpcio lacks the dispatch of several acceptors: one per method")
        self._handlers: dict[str, Handler] = {}
        self._acceptors: set[asyncio.Task[None]] = set()
        self._calls: set[asyncio.Task[Any]] = set()
        self._admission: Admission | None = None
        self._server: Any = None
        # Acceptors running beyond ``count``, by method; when the last refusal was (loop time).
        self._surging: dict[str, int] = {}
        self._refused_at = -SURGE_HOLD_S

    def register(
        self,
        server: grpc.aio.Server,
        service: str,
        handlers: dict[str, Handler],
    ) -> bool:
        """Before the server starts: ``handlers`` (by method name) become registered methods
        of ``server`` (gRPC core matches their calls by name, before any generic handler).
        False (nothing done) with a grpcio without the dispatch: register them generic."""
        if not self.usable:
            return False
        cast(Any, server).add_registered_method_handlers(service, handlers)  # not in stubs
        self._handlers.update({f"/{service}/{name}": h for name, h in handlers.items()})
        return True

    def start(self, server: grpc.aio.Server, admission: Admission | None = None) -> None:
        """Once the server has started: the outstanding requests. With ``admission``, a call
        that finds no slot free is refused at once (RESOURCE_EXHAUSTED)."""
        self._admission = admission
        if not self.count or not self._handlers:
            return
        self._server = server._server  # type: ignore[attr-defined]  # grpc.aio's AioServer
        for method in self._handlers:
            self._surging[method] = 0
            for _ in range(self.count):
                self._spawn(method)

    def _spawn(self, method: str) -> None:
        task = asyncio.ensure_future(self._accept(method))
        self._acceptors.add(task)
        task.add_done_callback(self._acceptors.discard)

    async def _accept(self, method: str) -> None:
        loop = asyncio.get_running_loop()
        aio = self._server
        name = method.encode()
        handler = self._handlers[method]
        admission = self._admission
        while aio.is_running():
            try:
                rpc_state = await aio._request_registered_call(name)
            except _cygrpc._RequestCallError:
                continue  # core failed this request (as its shutdown does): ask again, or end
            arrival = None if admission is None else admission.take()
            refused = admission is not None and arrival is None
            retire = False
            if refused:  # no slot: RESOURCE_EXHAUSTED at once, the request never read
                metrics.SHED.inc()
                self._refused_at = loop.time()
                if self._surging[method] < self.surge:  # calls come faster than taken
                    self._surging[method] += 1
                    metrics.ACCEPTORS_SURGING.inc()
                    self._spawn(method)
            elif self._surging[method] and loop.time() - self._refused_at >= SURGE_HOLD_S:
                self._surging[method] -= 1  # the surge is over: this one asks no more
                metrics.ACCEPTORS_SURGING.dec()
                retire = True
            if refused:
                task = loop.create_task(_refuse(rpc_state, loop))
            else:
                coro = _serve(rpc_state, handler, loop, method)
                if arrival is None:
                    task = loop.create_task(coro)
                else:
                    # Its slot stays kept until its handler enters (or it ends): the handler
                    # finds the Arrival in its task's context.
                    context = contextvars.copy_context()
                    context.run(ARRIVAL.set, arrival)
                    task = loop.create_task(coro, context=context)
                    assert admission is not None  # (an Arrival comes only from it)
                    task.add_done_callback(functools.partial(_settle, admission, arrival))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)
            if retire:
                return

    @property
    def outstanding(self) -> int:
        """Acceptor tasks still running (each with a request outstanding, or about to)."""
        return sum(1 for t in self._acceptors if not t.done())

    @property
    def surging(self) -> int:
        """Acceptors running beyond ``count`` (all methods), added while calls were refused."""
        return sum(self._surging.values())

    async def closed(self) -> None:
        """After the server stopped: its shutdown failed every request; the tasks end."""
        running = list(self._acceptors)  # (those that saw the server stop have ended)
        if running:
            _, pending = await asyncio.wait(running, timeout=CLOSE_TIMEOUT_S)
            for task in pending:  # the server is stopped: nothing can take a call any more
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
        self._acceptors.clear()
        metrics.ACCEPTORS_SURGING.dec(self.surging)
        self._surging = dict.fromkeys(self._surging, 0)
