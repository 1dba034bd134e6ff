"""The Strawberry schema, built from settings (production turns off introspection and
suggestions)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.extensions import (
    MaskErrors,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
    SchemaExtension,
    ValidationCache,
)
from strawberry.schema.config import StrawberryConfig

from blueline.errors import BluelineError
from blueline.resolvers.mutation import Mutation
from blueline.resolvers.query import Query
from blueline.resolvers.subscription import Subscription
from blueline.schema.types import IMessageSetupType, PhoneLineType

MAX_DEPTH = 10
MAX_ALIASES = 30
MAX_TOKENS = 2000


def _should_mask(error: GraphQLError) -> bool:
    original = error.original_error
    # Validation errors and the resolvers' own GraphQLErrors are meant for the client;
    # anything else is an unexpected failure whose text could say too much.
    return original is not None and not isinstance(original, GraphQLError | BluelineError)


def build_schema(*, production: bool = False) -> strawberry.Schema:
    extensions: list[Callable[[], SchemaExtension] | type[SchemaExtension]] = [
        lambda: QueryDepthLimiter(max_depth=MAX_DEPTH),
        lambda: MaxAliasesLimiter(max_alias_count=MAX_ALIASES),
        lambda: MaxTokensLimiter(max_token_count=MAX_TOKENS),
        lambda: MaskErrors(should_mask_error=_should_mask),
        ParserCache,
        ValidationCache,
    ]
    if production:
        from strawberry.extensions import DisableIntrospection

        extensions.append(DisableIntrospection)
    config: Any = StrawberryConfig(disable_field_suggestions=production)
    return strawberry.Schema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        types=[IMessageSetupType, PhoneLineType],
        extensions=extensions,
        config=config,
    )
