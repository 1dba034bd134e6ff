"""Refusals of the simulated provider, independent of the HTTP layer that renders them."""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = ["Conflict", "NotFound", "OutOfNumbers", "SandboxError", "SubaccountSuspended"]


class SandboxError(Exception):
    status_code: ClassVar[int] = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def body(self) -> dict[str, Any]:
        # The shape Litestar gives its own HTTP errors, so every refusal looks alike.
        return {"status_code": self.status_code, "detail": self.detail}


class NotFound(SandboxError):
    status_code = 404


class Conflict(SandboxError):
    status_code = 409


class SubaccountSuspended(Conflict):
    """The partner API documents this one answer body exactly, so it is kept apart."""

    def __init__(self) -> None:
        super().__init__("subaccount is suspended")

    def body(self) -> dict[str, Any]:
        return {"error": self.detail}


class OutOfNumbers(SandboxError):
    status_code = 503
