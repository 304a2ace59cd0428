"""The one exception tree of authswitch.

Three kinds of failure are kept apart:

* a **business decline** is not an exception: it is a response code in a normal reply;
* a **bad request** raises :class:`RequestError` (or a subclass) before anything is written;
  the gRPC boundary maps it to ``INVALID_ARGUMENT``, ``NOT_FOUND``, ``ALREADY_EXISTS`` or
  ``FAILED_PRECONDITION``;
* an **internal fault** raises :class:`InternalError` (or lets an unexpected exception
  through): it is logged with context and counted, and the caller gets ``UNAVAILABLE`` /
  ``INTERNAL``, or response code 96 on the authorisation path.

Each adapter translates its library's errors into this tree: a Postgres or Redis that
cannot be used becomes :class:`StoreUnavailable` (``adapters/postgres/errors.py``,
``adapters/redis/errors.py``), a failed client call :class:`ClientCallFailed`
(``adapters/client``). The mapping to the wire lives in one place,
``authswitch.adapters.grpc.errors``, and knows this tree only.

    AuthswitchError
    ├── ConfigError                    settings that cannot work; the process exits
    ├── Expired                        the caller's deadline passed before a decision:
    │                                  nothing decided, nothing written
    ├── ClientCallFailed               an off-ledger client's DecisionService failed the call
    │   │                              (refused, unreachable, an error status): stand in
    │   └── ClientTimedOut             ... or did not answer within the call's deadline
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
    "ClientCallFailed",
    "ClientTimedOut",
    "ConfigError",
    "Expired",
    "InternalError",
    "NotFound",
    "Overloaded",
    "PreconditionFailed",
    "RequestError",
    "StoreUnavailable",
    "unreachable",
]


class AuthswitchError(Exception):
    """Base of every error authswitch raises on purpose."""


class ConfigError(AuthswitchError):
    pass


class Expired(AuthswitchError):
    """The call's deadline passed before it was decided (it queued while the process was
    overloaded): its caller has given up, so nothing is decided and nothing written."""


class ClientCallFailed(AuthswitchError):
    """A call to an off-ledger client failed; the message says how (the gRPC status), never
    what the client sent."""


class ClientTimedOut(ClientCallFailed):
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


def unreachable(store: str, address: str, setting: str, cause: BaseException) -> str:
    """One line saying which store could not be reached, where, and why: "Postgres at
    db:5432 (AUTHSWITCH_POSTGRES_DSN): connection refused". Never the address's
    credentials."""
    from urllib.parse import urlsplit

    where = address
    if "://" in address:
        parts = urlsplit(address.split(",", maxsplit=1)[0])
        if parts.scheme == "unix" or not parts.hostname:
            where = parts.path or address
        else:
            where = f"{parts.hostname}:{parts.port or ''}".rstrip(":")
    reason = getattr(cause, "strerror", None) or str(cause) or type(cause).__name__
    if isinstance(cause, TimeoutError) and not str(cause):
        reason = "timed out"
    return f"{store} at {where} ({setting}): {str(reason).lower()}"
