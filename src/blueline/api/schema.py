"""The GraphQL schema and the document cache that serves it."""

from __future__ import annotations

from typing import Any

import strawberry
from strawberry.schema.config import StrawberryConfig
from strawberry.schema.validation_rules.maybe_null import MaybeNullValidationRule
from strawberry.schema.validation_rules.one_of import OneOfInputValidationRule

from blueline.api.documents import DocumentCache
from blueline.api.extensions import MaskUnexpectedErrors, PreparedDocuments
from blueline.resolvers.mutation import Mutation
from blueline.resolvers.query import Query
from blueline.resolvers.subscription import Subscription
from blueline.schema.objects import OBJECTS
from blueline.schema.scalars import SCALARS


class BluelineSchema(strawberry.Schema):
    documents: DocumentCache

    def __init__(self, *, production: bool, **kwargs: Any) -> None:
        self.production = production
        super().__init__(**kwargs)

    def process_errors(self, errors: Any, execution_context: Any = None) -> None:
        # Errors meant for the client (validation, bad arguments) are not server faults,
        # and unexpected ones are logged with their request id when masked.
        return None

    def _get_custom_context_kwargs(
        self, operation_extensions: dict[str, Any] | None = None, *, sync: bool = False
    ) -> dict[str, Any]:
        kwargs = super()._get_custom_context_kwargs(operation_extensions, sync=sync)
        # graphql-core words "Did you mean" in coercion errors too, not only for fields.
        kwargs["hide_suggestions"] = self.production
        return kwargs


def build_schema(*, production: bool = False, max_query_chars: int = 64 * 1024) -> BluelineSchema:
    holder: list[DocumentCache] = []
    schema = BluelineSchema(
        production=production,
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        types=list(OBJECTS.values()),
        extensions=[lambda: PreparedDocuments(holder[0]), MaskUnexpectedErrors],
        config=StrawberryConfig(disable_field_suggestions=production, scalar_map=SCALARS),
    )
    schema.documents = DocumentCache(
        schema._schema,
        production=production,
        extra_rules=(MaybeNullValidationRule, OneOfInputValidationRule),
        max_query_chars=max_query_chars,
    )
    holder.append(schema.documents)
    return schema
