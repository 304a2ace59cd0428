"""Channels to off-ledger clients' DecisionService, one per program, with the program's TLS
or mutual TLS credentials and bearer token. A failed call raises :class:`ClientTimedOut` or
:class:`ClientCallFailed` (authswitch.errors): gRPC's own errors stay in this module."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import grpc

from authswitch.adapters.grpc.codec.decision import (
    client_reply_of,
    decide_request_message,
    notify_request_message,
)
from authswitch.domain.messages.decision import ClientReply, DecideAsk, Notice
from authswitch.domain.offledger import ClientRouting
from authswitch.errors import ClientCallFailed, ClientTimedOut
from authswitch.secrets import SecretStore
from authswitch.v1 import decision_pb2, decision_pb2_grpc

__all__ = ["ClientChannels", "ClientConnection"]

log = logging.getLogger(__name__)

# Limits on a client's answer: a hostile or broken client cannot make authswitch read more.
CLIENT_MESSAGE_BYTES_MAX = 64 * 1024


@dataclass
class ClientConnection:
    routing: ClientRouting
    channel: grpc.aio.Channel
    stub: decision_pb2_grpc.DecisionServiceAsyncStub
    metadata: tuple[tuple[str, str], ...]

    async def decide(self, ask: DecideAsk, timeout_s: float) -> ClientReply:
        try:
            response: decision_pb2.DecideResponse = await self.stub.Decide(
                decide_request_message(ask), timeout=timeout_s, metadata=self.metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise _translated(exc) from exc
        return client_reply_of(response)

    async def notify(self, notice: Notice, timeout_s: float) -> None:
        request = notify_request_message(notice)
        try:
            await self.stub.Notify(request, timeout=timeout_s, metadata=self.metadata)
        except grpc.aio.AioRpcError as exc:
            raise _translated(exc) from exc


def _translated(exc: grpc.aio.AioRpcError) -> ClientCallFailed:
    """The project's error for a failed call: its status and gRPC's own description."""
    detail = f"{exc.code().name}: {exc.details() or ''}"[:300]
    if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
        return ClientTimedOut(detail)
    return ClientCallFailed(detail)


class ClientChannels:
    """One channel per program, rebuilt when the program's routing changes."""

    def __init__(self, secrets: SecretStore) -> None:
        self.secrets = secrets
        self._connections: dict[str, ClientConnection] = {}
        self._lock = asyncio.Lock()

    async def connection(
        self, program_id: str, routing: ClientRouting, *, probe: bool = False
    ) -> ClientConnection:
        """The program's connection. For a circuit breaker's probe (``probe``), a channel
        that is waiting out its reconnect backoff after a failure is replaced by a fresh one,
        which connects at once: a client that has come back is not kept out by the backoff
        for longer than the breaker's probe interval."""
        found = self._connections.get(program_id)
        if found is not None and found.routing == routing and not (probe and _failed(found)):
            return found
        async with self._lock:
            found = self._connections.get(program_id)
            if found is not None and found.routing == routing and not (probe and _failed(found)):
                return found
            if found is not None:
                await found.channel.close(grace=1.0)
            connection = self._open(routing)
            self._connections[program_id] = connection
            return connection

    def _open(self, routing: ClientRouting) -> ClientConnection:
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", CLIENT_MESSAGE_BYTES_MAX),
            ("grpc.keepalive_time_ms", 30_000),
            # Fail fast while the client is down rather than queueing calls.
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2_000),
            # A channel of its own connection: a replacement channel (see ``connection``)
            # must not share the failed one's subchannel and its backoff, as channels to
            # the same target do by default.
            ("grpc.use_local_subchannel_pool", 1),
        ]
        if routing.tls == "NONE":
            channel = grpc.aio.insecure_channel(routing.target, options=options)
        else:
            root = self.secrets.get(routing.ca_secret) if routing.ca_secret else None
            key = cert = None
            if routing.tls == "MTLS":
                key = self.secrets.get(routing.key_secret)
                cert = self.secrets.get(routing.cert_secret)
            credentials = grpc.ssl_channel_credentials(root, key, cert)
            channel = grpc.aio.secure_channel(routing.target, credentials, options=options)
        metadata: tuple[tuple[str, str], ...] = ()
        if routing.token_secret:
            token = self.secrets.get_text(routing.token_secret)
            metadata = (("authorization", f"Bearer {token}"),)
        stub = decision_pb2_grpc.DecisionServiceStub(channel)
        return ClientConnection(routing, channel, stub, metadata)

    async def close(self) -> None:
        for connection in self._connections.values():
            await connection.channel.close(grace=1.0)
        self._connections.clear()


def _failed(connection: ClientConnection) -> bool:
    """Whether the channel's last connection attempt failed (it is backing off)."""
    state = connection.channel.get_state(try_to_connect=False)
    return state is grpc.ChannelConnectivity.TRANSIENT_FAILURE
