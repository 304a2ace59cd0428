"""Channels of the command-line tools to a running authswitch server.

A tool must never wait without a deadline: ``connect`` waits for the server within
``ready_timeout_s`` (a refused connection fails at once, a silent address at the deadline),
and every call on the channel gets ``call_timeout_s`` unless it sets its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import grpc

__all__ = [
    "CALL_TIMEOUT_S",
    "READY_TIMEOUT_S",
    "ServerUnreachable",
    "connect",
]

READY_TIMEOUT_S = 2.0
CALL_TIMEOUT_S = 30.0


class ServerUnreachable(Exception):
    """No authswitch server answered at the target within the deadline."""

    def __init__(self, target: str, why: str) -> None:
        super().__init__(f"no authswitch server at {target} ({why})")
        self.target = target


class _ConnectFailed(Exception):
    pass


if TYPE_CHECKING:
    _Interceptor = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
else:  # not subscriptable at run time
    _Interceptor = grpc.aio.UnaryUnaryClientInterceptor


class _DefaultDeadline(_Interceptor):
    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s

    async def intercept_unary_unary(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, Any], grpc.aio.UnaryUnaryCall[Any, Any]
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        if client_call_details.timeout is None:
            client_call_details = grpc.aio.ClientCallDetails(
                client_call_details.method,
                self._timeout_s,
                client_call_details.metadata,
                client_call_details.credentials,
                client_call_details.wait_for_ready,
            )
        return await continuation(client_call_details, request)


async def connect(
    target: str,
    *,
    ready_timeout_s: float = READY_TIMEOUT_S,
    call_timeout_s: float = CALL_TIMEOUT_S,
) -> grpc.aio.Channel:
    """A plaintext channel to ``target``, connected; raises :class:`ServerUnreachable` when
    the connection is refused or not made within ``ready_timeout_s``. The caller closes it."""
    assert ready_timeout_s > 0
    assert call_timeout_s > 0
    # grpc-stubs leaves the interceptor type to a cast (ClientInterceptor is a placeholder).
    interceptor = cast("grpc.aio.ClientInterceptor", _DefaultDeadline(call_timeout_s))
    channel = grpc.aio.insecure_channel(target, interceptors=[interceptor])
    try:
        await asyncio.wait_for(_ready(channel), ready_timeout_s)
    except TimeoutError:
        await channel.close(None)
        raise ServerUnreachable(target, f"no answer within {ready_timeout_s:g} s") from None
    except _ConnectFailed:
        await channel.close(None)
        raise ServerUnreachable(target, "nothing answers: connection failed") from None
    except BaseException:
        await channel.close(None)
        raise
    return channel


async def _ready(channel: grpc.aio.Channel) -> None:
    """Until the channel is READY; a failed first attempt (nothing listening) ends it."""
    state = channel.get_state(try_to_connect=True)
    while state is not grpc.ChannelConnectivity.READY:
        if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            raise _ConnectFailed
        await channel.wait_for_state_change(state)
        state = channel.get_state(try_to_connect=True)
