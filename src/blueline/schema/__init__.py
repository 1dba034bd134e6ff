"""The Strawberry schema, built from settings (production turns off introspection and
suggestions)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.extensions import (
    AddValidationRules,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
    SchemaExtension,
    ValidationCache,
)
from strawberry.schema.config import StrawberryConfig

from blueline.resolvers.mutation import Mutation
from blueline.resolvers.query import Query
from blueline.resolvers.subscription import Subscription
from blueline.schema.extensions import MaskUnexpectedErrors, OperationMetrics
from blueline.schema.fast_paths import SetupListFastPath
from blueline.schema.types import IMessageSetupType, PhoneLineType

MAX_DEPTH = 10
MAX_ALIASES = 30
MAX_TOKENS = 2000


class BluelineSchema(strawberry.Schema):
    def process_errors(self, errors: list[GraphQLError], execution_context: Any = None) -> None:
        # Errors meant for the client (validation, bad arguments) are not server faults,
        # and unexpected ones are logged with their request id by MaskUnexpectedErrors.
        return None


def build_schema(*, production: bool = False, fast_paths: bool = True) -> BluelineSchema:
    # The limiters make new rule classes per instance, and ValidationCache keys on the
    # rule classes: built per request, the cache would never hit. Build them once.
    limit_rules = [
        *QueryDepthLimiter(max_depth=MAX_DEPTH).validation_rules,
        *MaxAliasesLimiter(max_alias_count=MAX_ALIASES).validation_rules,
    ]
    extensions: list[Callable[[], SchemaExtension] | type[SchemaExtension]] = [
        lambda: AddValidationRules(limit_rules),
        lambda: MaxTokensLimiter(max_token_count=MAX_TOKENS),
        MaskUnexpectedErrors,
        OperationMetrics,
        ParserCache,
        ValidationCache,
    ]
    if fast_paths:
        extensions.append(SetupListFastPath)
    if production:
        from strawberry.extensions import DisableIntrospection

        extensions.append(DisableIntrospection)
    config: Any = StrawberryConfig(disable_field_suggestions=production)
    return BluelineSchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        types=[IMessageSetupType, PhoneLineType],
        extensions=extensions,
        config=config,
    )
