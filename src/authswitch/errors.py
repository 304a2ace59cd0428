"""The one exception tree of authswitch.

Three kinds of failure are kept apart:

* a **business decline** is not an exception: it is a response code in a normal reply;
* a **bad request** raises :class:`RequestError` (or a subclass) before anything is written;
  the gRPC boundary maps it to ``INVALID_ARGUMENT``, ``NOT_FOUND``, ``ALREADY_EXISTS`` or
  ``FAILED_PRECONDITION``;
* an **internal fault** raises :class:`InternalError` (or lets a store's own exception
  through): it is logged with context and counted, and the caller gets ``UNAVAILABLE`` /
  ``INTERNAL``, or response code 96 on the authorisation path.

The mapping to the wire lives in one place: ``authswitch.adapters.grpc.errors``.

    AuthswitchError
    ├── ConfigError                    settings that cannot work; the process exits
    ├── RequestError                   bad input; nothing was written
    │   ├── NotFound
    │   ├── AlreadyExists              includes an idempotency key reused with another payload
    │   └── PreconditionFailed         valid input the current state refuses
    └── InternalError
        ├── StoreUnavailable           Postgres or Redis cannot be reached
        └── Overloaded                 a bounded queue is full; retry later
"""

from __future__ import annotations

__all__ = [
    "AlreadyExists",
    "AuthswitchError",
    "ConfigError",
    "InternalError",
    "NotFound",
    "Overloaded",
    "PreconditionFailed",
    "RequestError",
    "StoreUnavailable",
]


class AuthswitchError(Exception):
    """Base of every error authswitch raises on purpose."""


class ConfigError(AuthswitchError):
    pass


class RequestError(AuthswitchError):
    pass


class NotFound(RequestError):
    pass


class AlreadyExists(RequestError):
    pass


class PreconditionFailed(RequestError):
    pass


class InternalError(AuthswitchError):
    pass


class StoreUnavailable(InternalError):
    pass


class Overloaded(InternalError):
    pass
