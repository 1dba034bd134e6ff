"""Signed webhook deliveries, the provider's side of Standard Webhooks.

Signing goes through the ``standardwebhooks`` reference library rather than code of
our own, so a receiver that departs from the standard fails against the sandbox.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import time
from datetime import UTC, datetime

import httpx
from standardwebhooks.webhooks import Webhook

from blueline_sandbox.domain import DeliveryAttempt, Subaccount, WebhookEvent, now_iso

__all__ = ["WebhookSender", "new_webhook_secret", "signed_headers"]

logger = logging.getLogger(__name__)


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def signed_headers(secret: str, event: WebhookEvent, timestamp: int) -> dict[str, str]:
    # The header carries whole seconds, and the library signs the floored timestamp:
    # both must name the same second.
    signature = Webhook(secret).sign(
        event.webhook_id, datetime.fromtimestamp(timestamp, UTC), event.body.decode()
    )
    return {
        "content-type": "application/json",
        "webhook-id": event.webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


class WebhookSender:
    """Posts an event until the receiver answers 2xx, with doubling pauses in between.

    Every attempt is signed afresh (a new timestamp) and logged on the subaccount.
    """

    def __init__(
        self,
        client: httpx.AsyncClient | None,
        *,
        attempts: int,
        backoff_s: float,
        timeout_s: float,
    ) -> None:
        if attempts < 1:
            raise ValueError("webhook_attempts must be at least 1")
        self._client = client
        self._owns_client = client is None
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._timeout_s = timeout_s

    async def deliver(self, subaccount: Subaccount, event: WebhookEvent) -> None:
        delay_s = self._backoff_s
        for attempt in range(1, self._attempts + 1):
            headers = signed_headers(subaccount.webhook_secret, event, int(time.time()))
            status_code: int | None = None
            error: str | None = None
            try:
                response = await self._http().post(
                    subaccount.webhook_url,
                    content=event.body,
                    headers=headers,
                    timeout=self._timeout_s,
                )
                status_code = response.status_code
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                error = f"{type(exc).__name__}: {exc}"
            subaccount.deliveries.append(
                DeliveryAttempt(
                    webhook_id=event.webhook_id,
                    request_id=event.request_id,
                    attempt=attempt,
                    status_code=status_code,
                    error=error,
                    at=now_iso(),
                )
            )
            if status_code is not None and 200 <= status_code < 300:
                return
            if attempt < self._attempts:
                await asyncio.sleep(delay_s)
                delay_s *= 2
        logger.warning(
            "sandbox webhook %s for %s gave up after %d attempts",
            event.webhook_id,
            event.request_id,
            self._attempts,
        )

    async def aclose(self) -> None:
        """Close the client if this sender made it; an injected one stays open."""
        if self._owns_client and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    def _http(self) -> httpx.AsyncClient:
        # Created lazily so an app mounted without lifespan events still delivers.
        if self._client is None:
            self._client = httpx.AsyncClient(follow_redirects=False)
        return self._client
