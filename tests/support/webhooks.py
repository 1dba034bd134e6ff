"""Build and send Standard Webhooks deliveries the way a provider does.

Signed with the ``standardwebhooks`` library, not with Blueline's own code, so the
tests would catch Blueline departing from the standard."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from datetime import UTC, datetime
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook


def assignment_body(subaccount_id: str, request_id: str, phone_number: str) -> bytes:
    event = {
        "type": "line.assigned",
        "data": {
            "subaccount_id": subaccount_id,
            "request_id": request_id,
            "phone_number": phone_number,
        },
    }
    return json.dumps(event, separators=(",", ":")).encode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    try:
        text = body.decode()
    except UnicodeDecodeError:
        # The library signs text; the standard signs bytes: sign these by its formula.
        key = base64.b64decode(secret.removeprefix("whsec_"))
        content = f"{msg_id}.{timestamp}.".encode() + body
        return "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
    when = datetime.fromtimestamp(timestamp, tz=UTC)
    return str(Webhook(secret).sign(msg_id, when, text))


def signed_headers(
    secret: str, body: bytes, *, msg_id: str | None = None, timestamp: int | None = None
) -> dict[str, str]:
    msg_id = msg_id or f"msg_{secrets.token_hex(8)}"
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
        "content-type": "application/json",
    }


async def subaccount_of(sandbox: httpx.AsyncClient, setup_id: str) -> dict[str, Any]:
    """The provider's view of a setup's subaccount, secrets included (sandbox only)."""
    response = await sandbox.get("/sandbox/subaccounts", params={"external_id": setup_id})
    response.raise_for_status()
    [account] = response.json()["data"]
    return dict(account)
