"""HTTPS webhooks: a JSON body signed with HMAC-SHA256 over the timestamp and the body."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx

from authswitch.domain.signatures import SIGNATURE_HEADER, sign

__all__ = ["WebhookSender"]


class WebhookSender:
    def __init__(self, *, timeout_s: float, ca_file: Path | None = None) -> None:
        verify: ssl.SSLContext | bool = True
        if ca_file is not None:
            verify = ssl.create_default_context(cafile=str(ca_file))
        self._client = httpx.AsyncClient(
            timeout=timeout_s,
            verify=verify,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
        )

    async def send(
        self, url: str, body: bytes, *, secret: bytes, timestamp: int, notification_id: str,
        attempt: int,
    ) -> None:  # fmt: skip
        """Deliver once; raises on a non-2xx answer or a transport error."""
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(secret, timestamp, body),
            "X-Authswitch-Notification-Id": notification_id,
            "X-Authswitch-Attempt": str(attempt),
        }
        response = await self._client.post(url, content=body, headers=headers)
        if not 200 <= response.status_code < 300:
            raise httpx.HTTPStatusError(
                f"webhook answered {response.status_code}", request=response.request,
                response=response,
            )  # fmt: skip

    async def close(self) -> None:
        await self._client.aclose()
