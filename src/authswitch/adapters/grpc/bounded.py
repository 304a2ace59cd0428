"""Requests with a string longer than its maximum (authswitch.domain.bounds) are refused
before any work: an authorisation-type message (its response has a response code) is
answered 30, format error; any other call fails INVALID_ARGUMENT naming the field. Nothing
is written either way.

``Authorize`` is not wrapped here: its own path checks the same bounds
(``bounds.authorize_too_long``) so that the answer carries its decision fields.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

import grpc
from google.protobuf.message import Message

from authswitch.domain.bounds import first_too_long
from authswitch.domain.codes import Code

__all__ = ["FORMAT_ERROR", "bounded"]

FORMAT_ERROR = Code.FORMAT_ERROR  # ISO 8583 DE39

Behaviour = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


def bounded(behaviour: Behaviour, response_type: type[Message]) -> Behaviour:
    answers_with_a_code = "response_code" in response_type.DESCRIPTOR.fields_by_name

    async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, Message):
            found = first_too_long(request)
            if found is not None:
                path, longest = found
                if answers_with_a_code:
                    return cast(Any, response_type)(response_code=FORMAT_ERROR)
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{path} is longer than {longest} characters",
                )
        return await behaviour(request, context)

    return handle
