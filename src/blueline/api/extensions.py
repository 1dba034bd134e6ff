"""Strawberry extensions: documents from the shared cache, and error masking."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from graphql import GraphQLError
from strawberry.extensions import MaskErrors, SchemaExtension

from blueline.api.documents import DocumentCache
from blueline.errors import BluelineError, StorageUnavailable
from blueline.observability.request_id import current_request_id, new_request_id

logger = logging.getLogger("blueline.graphql")

UNEXPECTED = "Unexpected error. Quote the requestId when you report it."
UNAVAILABLE = "UNAVAILABLE"
STORAGE_UNAVAILABLE = "The service is briefly unavailable; retry shortly"


class PreparedDocuments(SchemaExtension):
    """Parse and validation come from :class:`DocumentCache`, so ordinary execution
    gets the same bounds, the same cache and the same error wording as everything
    else (Strawberry's own parser cache keys on the whole text)."""

    def __init__(self, documents: DocumentCache) -> None:
        self._documents = documents

    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        if context.graphql_document is None and context.query:
            prepared = self._documents.prepare(context.query)
            if prepared.valid:
                context.graphql_document = prepared.document
            else:
                context.pre_execution_errors = prepared.errors
                raise prepared.errors[0]
        yield

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        if context.pre_execution_errors is None:
            context.pre_execution_errors = []  # validated when cached: skip a second pass
        yield


def is_unexpected(error: GraphQLError) -> bool:
    """Resolvers' GraphQLErrors and expected failures are meant for the client; anything
    else is a fault whose text could say too much."""
    original = error.original_error
    return original is not None and not isinstance(original, GraphQLError | BluelineError)


class MaskUnexpectedErrors(MaskErrors):
    def __init__(self) -> None:
        super().__init__(should_mask_error=lambda _e: True, error_message=UNEXPECTED)

    def anonymise_error(self, error: GraphQLError) -> GraphQLError:
        original = error.original_error
        if isinstance(original, StorageUnavailable):
            return _with(error, STORAGE_UNAVAILABLE, {"code": UNAVAILABLE})
        if isinstance(original, BluelineError):
            return _with(error, original.message, {"code": original.code})
        if not is_unexpected(error):
            return error
        request_id = current_request_id() or new_request_id()
        logger.error(
            "unexpected error in GraphQL resolver at %s",
            ".".join(str(p) for p in error.path or []),
            exc_info=(type(original), original, original.__traceback__) if original else None,
            extra={"request_id": request_id},
        )
        return _with(error, UNEXPECTED, {"code": "INTERNAL", "requestId": request_id})


def _with(error: GraphQLError, message: str, extensions: dict[str, Any]) -> GraphQLError:
    return GraphQLError(
        message=message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        original_error=None,
        extensions={**(error.extensions or {}), **extensions},
    )
