"""Calls taken from gRPC's core several at a time, not one.

grpc.aio's server asks gRPC's core for the next call of a method, awaits it, hands it to a
task and only then asks again: one request outstanding per method. Each call taken costs
about five turns of the event loop and a wake-up of gRPC's poller thread, and under load,
when every turn runs many callbacks, that chain, not the CPU, sets the rate: with 64 calls in
flight a hot-account run kept a median of 5 of them in its handlers (the rest waited in core)
with the process's main thread 72 % busy.

Here the methods given to :meth:`Acceptors.register` (Authorize) are registered methods, and
``count`` more requests for their calls are kept outstanding, each by a task that hands the
call to grpc.aio's own dispatch (the functions its main loop calls, in the same order) and
asks again. Side by side on one host (make bench-quick, the hot account, 64 in flight):
1,645-1,717 decisions/s with grpc.aio's one request, 2,509-2,646/s with 8 more; the server's
CPU per decision 540-575 µs against 370-398.

That dispatch is grpc.aio's private API (cygrpc's AioServer._request_registered_call,
_handle_rpc, _schedule_rpc_coro, _MethodResolver). :func:`available` checks it is there; with
a grpcio without it the server takes calls the stock way and says so once in its log
(tests/e2e/test_acceptors.py fails instead, on the grpcio the project pins).

Calls taken here are bounded by the admission limit of their handler (Authorize), not by
grpc.aio's ``maximum_concurrent_rpcs``; while that limit is reached an acceptor asks for no
more calls (under 2x overload, quick runs, two alternating pairs: answered p99 180 and 266 ms
against 303 and 428, refusals' p99 69 and 53 ms against 293 and 86, more answered a second).
A request outstanding with core ends only when core hands it a call or shuts down: the
tasks are never cancelled while the server runs (a cancelled one would leave its request to
take a call nobody answers); they end when the server's shutdown fails their requests
(:meth:`Acceptors.closed`).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from typing import Any, TypeAlias, cast

import grpc

from authswitch.adapters.grpc.admission import Admission

_cygrpc: Any = importlib.import_module("grpc._cython.cygrpc")  # untyped, private

__all__ = ["Acceptors", "available"]

log = logging.getLogger(__name__)

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # subscriptable only in the stubs
_PRIVATE = ("_handle_rpc", "_schedule_rpc_coro", "_MethodResolver", "_RequestCallError")
CLOSE_TIMEOUT_S = 2.0  # after the server stopped, for its requests to fail


# The dispatch's functions and their parameters, as grpc.aio's main loop calls them.
_SIGNATURES = {
    "_handle_rpc": (
        "method_name", "method_resolver", "interceptors", "rpc_state", "loop",
        "concurrency_exceeded",
    ),
    "_schedule_rpc_coro": ("rpc_coro", "rpc_state", "loop", "method_name"),
}  # fmt: skip


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
    """``count`` more outstanding requests for calls of each registered method."""

    def __init__(self, count: int) -> None:
        assert count >= 0
        self.usable = available()
        self.count = count if self.usable else 0
        if count and not self.usable:
            log.warning("this grpcio lacks the dispatch of several acceptors: one per method")
        self._handlers: dict[str, Handler] = {}
        self._acceptors: list[asyncio.Task[None]] = []
        self._calls: set[asyncio.Task[Any]] = set()
        self._admission: Admission | None = None

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
        """Once the server has started: the outstanding requests. With ``admission``, an
        acceptor whose call found it full asks for no other until it has room again."""
        self._admission = admission
        if not self.count or not self._handlers:
            return
        aio = server._server  # type: ignore[attr-defined]  # grpc.aio's AioServer
        resolver = _cygrpc._MethodResolver([], dict(self._handlers))
        for method in self._handlers:
            for _ in range(self.count):
                task = asyncio.ensure_future(self._accept(aio, resolver, method))
                self._acceptors.append(task)

    async def _accept(self, aio: Any, resolver: Any, method: str) -> None:
        loop = asyncio.get_running_loop()
        name = method.encode()
        while aio.is_running():
            try:
                rpc_state = await aio._request_registered_call(name)
            except _cygrpc._RequestCallError:
                continue  # core failed this request (as its shutdown does): ask again, or end
            # As grpc.aio's main loop: the call's coroutine runs inside the task that listens
            # for the client's cancellation, which keeps it to its end.
            call = _cygrpc._handle_rpc(method, resolver, (), rpc_state, loop, False)
            task = loop.create_task(_cygrpc._schedule_rpc_coro(call, rpc_state, loop, method))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)
            if self._admission is not None and self._admission.full:
                # Overloaded: a call taken now would only be refused, at the cost of its
                # whole way through grpc.aio. Left in core, it waits for grpc.aio's own
                # request (which the admission answers) or core refuses it, in C.
                await self._admission.room()

    @property
    def outstanding(self) -> int:
        """Acceptor tasks still running (each with a request outstanding, or about to)."""
        return sum(1 for t in self._acceptors if not t.done())

    async def closed(self) -> None:
        """After the server stopped: its shutdown failed every request; the tasks end."""
        if not self._acceptors:
            return
        _, pending = await asyncio.wait(self._acceptors, timeout=CLOSE_TIMEOUT_S)
        for task in pending:  # the server is stopped: nothing can take a call any more
            task.cancel()
        await asyncio.gather(*self._acceptors, return_exceptions=True)
        self._acceptors.clear()
