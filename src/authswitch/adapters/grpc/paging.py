"""Pages of the List RPCs: a page size, a byte budget, and an opaque page token.

A page ends at ``page_size`` items or before the response would outgrow ``PAGE_BYTES_MAX``,
whichever comes first, so no page can exceed the server's 64 KiB message limit however
large its items are (a response over the limit fails RESOURCE_EXHAUSTED at the caller).
The token is the sort key of the last item sent; the next page starts after it (keyset
paging), so an item is listed exactly once even while items are added.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

from google.protobuf.message import Message

from authswitch.errors import RequestError

__all__ = ["PAGE_BYTES_MAX", "fill_page", "page_size", "page_token", "read_page_token"]

# The server's messages are at most 64 KiB (AUTHSWITCH_GRPC_MAX_MESSAGE_BYTES): the rest of a
# response (its token and other fields) fits in what this leaves.
PAGE_BYTES_MAX = 60 * 1024
# A repeated message field costs its tag (1 byte) and length (at most 3 bytes below 2 MiB)
# besides the item.
_ITEM_OVERHEAD_BYTES = 4

_M = TypeVar("_M", bound=Message)
_M_contra = TypeVar("_M_contra", bound=Message, contravariant=True)


class _Repeated(Protocol[_M_contra]):
    def append(self, value: _M_contra) -> None: ...


def page_size(requested: int, *, default: int, maximum: int) -> int:
    if requested < 0:
        raise RequestError("page_size must not be negative")
    return min(requested or default, maximum)


def page_token(kind: str, *key: str | int) -> str:
    """An opaque token naming the list it belongs to and the key of the last item sent."""
    return base64.urlsafe_b64encode(json.dumps([kind, *key]).encode()).decode()


def read_page_token(token: str, kind: str, arity: int) -> list[Any]:
    """The key a token of list ``kind`` carries; a token of another list, or not one this
    server made, is a RequestError."""
    try:
        decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, TypeError, binascii.Error):
        decoded = None
    if (
        not isinstance(decoded, list)
        or len(decoded) != arity + 1
        or decoded[0] != kind
        or not all(isinstance(v, str | int) for v in decoded[1:])
    ):
        raise RequestError("page_token is not one this server issued for this list")
    return decoded[1:]


def fill_page(
    into: _Repeated[_M],
    items: Sequence[tuple[_M, tuple[str | int, ...]]],
    *,
    limit: int,
    kind: str,
    budget_bytes: int = PAGE_BYTES_MAX,
) -> str:
    """Append items (each with its sort key) to ``into`` up to ``limit`` and the byte budget;
    returns the next page token, or "" when nothing is left. ``items`` holds up to
    ``limit + 1`` items: one more than a page says whether more remain."""
    assert limit > 0
    used = 0
    for count, (message, _key) in enumerate(items):
        if count == limit:
            return page_token(kind, *items[count - 1][1])
        size = message.ByteSize() + _ITEM_OVERHEAD_BYTES
        if count > 0 and used + size > budget_bytes:
            return page_token(kind, *items[count - 1][1])
        # Every item fits a page alone: requests are smaller than the message limit, and
        # what is listed was bounded on the way in.
        assert size <= budget_bytes, f"{kind} item of {size} bytes exceeds a page"
        into.append(message)
        used += size
    return ""
