"""Expected failures of the domain, each with a stable code clients can branch on.

No framework imports: the GraphQL layer maps these to ``userErrors``; the webhook
route maps its own failures to HTTP statuses.
"""

from __future__ import annotations

from collections.abc import Sequence


class BluelineError(Exception):
    """An expected failure. ``message`` is safe to show a client: it never holds a secret."""

    code = "ERROR"

    def __init__(self, message: str, *, field: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class ValidationFailed(BluelineError):
    code = "INVALID_INPUT"

    def __init__(self, problems: Sequence[BluelineError]) -> None:
        super().__init__("; ".join(p.message for p in problems))
        self.problems = list(problems)


class InvalidInput(BluelineError):
    code = "INVALID_INPUT"


class NotFound(BluelineError):
    code = "NOT_FOUND"


class IdempotencyKeyReused(BluelineError):
    code = "IDEMPOTENCY_KEY_REUSED"


class ProviderUnavailable(BluelineError):
    code = "PROVIDER_UNAVAILABLE"


class ProviderRejected(BluelineError):
    """The provider answered, but not with what the contract promises (a 4xx, bad JSON)."""

    code = "PROVIDER_ERROR"


class ConfigurationError(BluelineError):
    code = "CONFIGURATION_ERROR"


class DecryptionFailed(BluelineError):
    code = "DECRYPTION_FAILED"
