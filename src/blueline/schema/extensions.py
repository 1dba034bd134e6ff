"""Schema extensions: masking of unexpected errors (logged with a request id the client
gets back), and per-operation metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from graphql import GraphQLError
from strawberry.extensions import MaskErrors, SchemaExtension

from blueline.errors import BluelineError
from blueline.observability.metrics import metrics
from blueline.observability.request_id import current_request_id, new_request_id

logger = logging.getLogger("blueline.graphql")

UNEXPECTED = "Unexpected error. Quote the requestId when you report it."
_MAX_OPERATION_NAMES = 200
_seen_operations: set[str] = set()


def is_unexpected(error: GraphQLError) -> bool:
    """Validation errors and the resolvers' own GraphQLErrors are meant for the client;
    anything else is a failure whose text could say too much."""
    original = error.original_error
    return original is not None and not isinstance(original, GraphQLError | BluelineError)


class MaskUnexpectedErrors(MaskErrors):
    def __init__(self) -> None:
        super().__init__(should_mask_error=is_unexpected, error_message=UNEXPECTED)

    def anonymise_error(self, error: GraphQLError) -> GraphQLError:
        request_id = current_request_id() or new_request_id()
        original = error.original_error
        logger.error(
            "unexpected error in GraphQL resolver at %s",
            ".".join(str(p) for p in error.path or []),
            exc_info=(type(original), original, original.__traceback__) if original else None,
            extra={"request_id": request_id},
        )
        return GraphQLError(
            message=UNEXPECTED,
            nodes=error.nodes,
            source=error.source,
            positions=error.positions,
            path=error.path,
            original_error=None,
            extensions={"code": "INTERNAL", "requestId": request_id},
        )


def _operation_label(name: str | None) -> str:
    # Operation names come from clients: bound the label set so metrics cannot explode.
    label = (name or "anonymous")[:64]
    if label in _seen_operations:
        return label
    if len(_seen_operations) < _MAX_OPERATION_NAMES:
        _seen_operations.add(label)
        return label
    return "other"


class OperationMetrics(SchemaExtension):
    def on_operation(self) -> Iterator[None]:
        started = time.perf_counter()
        yield
        context = self.execution_context
        label = _operation_label(context.operation_name)
        result = context.result
        outcome = "error" if result is not None and getattr(result, "errors", None) else "ok"
        m = metrics()
        m.graphql_requests.labels(label, outcome).inc()
        m.graphql_seconds.labels(label).observe(time.perf_counter() - started)
