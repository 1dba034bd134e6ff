"""Expected failures of the domain, each with a stable code clients can branch on.

No framework imports: the GraphQL layer maps these to ``userErrors`` (its
``UserErrorCode`` enum is built from :data:`USER_ERROR_CODES`); the webhook route and
the CLI map their own.
"""

from __future__ import annotations

from collections.abc import Sequence


class BluelineError(Exception):
    """An expected failure. ``message`` is safe to show a client: it never holds a secret."""

    code = "ERROR"
    # Shown to GraphQL clients in userErrors (the rest are operator-facing only).
    user_facing = False

    def __init__(self, message: str, *, field: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidInput(BluelineError):
    code = "INVALID_INPUT"
    user_facing = True


class ValidationFailed(InvalidInput):
    def __init__(self, problems: Sequence[BluelineError]) -> None:
        super().__init__("; ".join(p.message for p in problems))
        self.problems = list(problems)


class NotFound(BluelineError):
    code = "NOT_FOUND"
    user_facing = True


class IdempotencyKeyReused(BluelineError):
    code = "IDEMPOTENCY_KEY_REUSED"
    user_facing = True


class SetupSuspended(BluelineError):
    code = "SETUP_SUSPENDED"
    user_facing = True


class SetupClosed(BluelineError):
    code = "SETUP_CLOSED"
    user_facing = True


class LineLimitReached(BluelineError):
    code = "LINE_LIMIT_REACHED"
    user_facing = True


class OperationInProgress(BluelineError):
    """Another change to the same setup is still waiting on the provider."""

    code = "OPERATION_IN_PROGRESS"
    user_facing = True


class ProviderUnavailable(BluelineError):
    code = "PROVIDER_UNAVAILABLE"
    user_facing = True


class ProviderRejected(BluelineError):
    """The provider answered, but not with what the contract promises (a 4xx, bad JSON)."""

    code = "PROVIDER_ERROR"
    user_facing = True


class ConfigurationError(BluelineError):
    code = "CONFIGURATION_ERROR"


class DecryptionFailed(BluelineError):
    code = "DECRYPTION_FAILED"


class StorageUnavailable(BluelineError):
    """The database could not answer in time (down, restarting, pool exhausted, a
    statement over its timeout). Nothing was changed; the caller may retry."""

    code = "UNAVAILABLE"


def _user_facing_codes() -> tuple[str, ...]:
    seen: dict[str, None] = {}
    pending: list[type[BluelineError]] = [BluelineError]
    while pending:
        cls = pending.pop(0)
        if cls.user_facing:
            seen.setdefault(cls.code, None)
        pending.extend(cls.__subclasses__())
    return tuple(seen)


# Every code a client can find in `userErrors`, in a stable order.
USER_ERROR_CODES: tuple[str, ...] = _user_facing_codes()
