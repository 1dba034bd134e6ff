"""Answers on the wire: one compact JSON encoding for every GraphQL path (compiled
answers are spliced from SQL-built text, so both must agree byte for byte), and
GraphQL-shaped bodies for every request-level failure."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from graphql import GraphQLError
from litestar import MediaType, Response

# Request-level failure codes (`extensions.code`), stable for clients to branch on.
BAD_REQUEST = "BAD_REQUEST"
PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
UNAUTHENTICATED = "UNAUTHENTICATED"
RATE_LIMITED = "RATE_LIMITED"
UNAVAILABLE = "UNAVAILABLE"
METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
SUBSCRIPTION_TRANSPORT = "SUBSCRIPTION_TRANSPORT_REQUIRED"
INTERNAL = "INTERNAL"

JSON = "application/json"
GRAPHQL_RESPONSE_JSON = "application/graphql-response+json"


@dataclass(frozen=True, slots=True)
class Answer:
    """A complete JSON answer, sent by Litestar or straight to ASGI (``api.direct``)."""

    status: int
    body: bytes
    headers: dict[str, str] | None = None

    def response(self) -> Response[bytes]:
        return Response(
            self.body, status_code=self.status, media_type=MediaType.JSON, headers=self.headers
        )


def encode(value: Any) -> bytes:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        # A lone surrogate a client sent (echoed in an error) cannot be UTF-8: escape.
        return json.dumps(value, separators=(",", ":"), ensure_ascii=True).encode()


def internal_plain(request_id: str | None) -> Answer:
    """An unexpected failure outside GraphQL (webhooks, health)."""
    return Answer(500, encode({"error": "internal error", "requestId": request_id or ""}))


def error(message: str, code: str, **extensions: Any) -> dict[str, Any]:
    return {"message": message, "extensions": {"code": code, **extensions}}


def errors_body(*errors: dict[str, Any]) -> bytes:
    return encode({"errors": list(errors)})


def formatted(errors: list[GraphQLError]) -> list[dict[str, Any]]:
    return [dict(e.formatted) for e in errors]


def data_body(data_text: str) -> bytes:
    """The response around ``data`` already encoded as JSON text."""
    return b'{"data":' + data_text.encode() + b"}"
