"""What the simulated provider knows: its settings, subaccounts, lines and announcements.

Plain records with their JSON views; the rules that change them live in ``state``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = [
    "DeliveryAttempt",
    "Line",
    "LineStatus",
    "SandboxConfig",
    "Subaccount",
    "SubaccountStatus",
    "WebhookEvent",
    "new_token",
    "now_iso",
]

LineStatus = Literal["pending", "assigned", "released"]
SubaccountStatus = Literal["active", "suspended", "closed"]


def new_token(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """How the sandbox behaves; replaced as a whole by ``PUT /sandbox/config``."""

    assign_immediately: bool = False
    auto_assign_after_s: float | None = 3.0
    failure_rate: float = 0.0
    deliver_webhooks: bool = True
    latency_ms: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "assign_immediately": self.assign_immediately,
            "auto_assign_after_s": self.auto_assign_after_s,
            "failure_rate": self.failure_rate,
            "deliver_webhooks": self.deliver_webhooks,
            "latency_ms": self.latency_ms,
        }


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """One announcement; redeliveries reuse it verbatim so the receiver can dedupe by id."""

    webhook_id: str
    request_id: str
    body: bytes


@dataclass(slots=True)
class Line:
    request_id: str
    subaccount_id: str
    status: LineStatus = "pending"
    # Kept after release: the provider still reports which number the line had.
    phone_number: str | None = None
    last_event: WebhookEvent | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "status": self.status,
            "phone_number": self.phone_number,
        }


@dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    webhook_id: str
    request_id: str
    attempt: int
    status_code: int | None
    error: str | None
    at: str

    def as_json(self) -> dict[str, Any]:
        return {
            "webhook_id": self.webhook_id,
            "request_id": self.request_id,
            "attempt": self.attempt,
            "status_code": self.status_code,
            "error": self.error,
            "at": self.at,
        }


@dataclass(slots=True)
class Subaccount:
    id: str
    business_name: str
    external_id: str
    webhook_url: str
    api_key: str
    api_secret: str
    webhook_secret: str
    status: SubaccountStatus = "active"
    lines: list[Line] = field(default_factory=list)
    deliveries: list[DeliveryAttempt] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The partner API view (what a real provider returns on create and lookup)."""
        return {
            "id": self.id,
            "business_name": self.business_name,
            "external_id": self.external_id,
            "status": self.status,
            "credentials": {"api_key": self.api_key, "api_secret": self.api_secret},
            "webhook_secret": self.webhook_secret,
            "lines": [line.as_json() for line in self.lines],
        }

    def as_sandbox_json(self) -> dict[str, Any]:
        """The inspection view: adds what only a simulator can show."""
        return {
            **self.as_json(),
            "webhook_url": self.webhook_url,
            "deliveries": [d.as_json() for d in self.deliveries],
        }
