"""Mutations answered without Strawberry's executor: the change runs exactly as its
resolver runs it (``resolvers.mutation.CHANGES``), and the payload's record is read by
one compiled statement whose JSON text goes into the answer as it is.

What the executor would decide is decided the same way here, before anything runs: the
caller's key (the resolvers' permission), the arguments (graphql-core's coercion, then
Strawberry's conversion to its input types). Once the change has run, nothing falls back
to execution: a failure is answered as the executor would word it, masked the same way.
The differential tests hold both paths to byte-identical answers.
"""

from __future__ import annotations

from typing import Any

from graphql import GraphQLEnumType, OperationDefinitionNode, located_error
from graphql.execution.values import get_argument_values, get_variable_values
from strawberry.schema.schema_converter import GraphQLCoreConverter
from strawberry.types.arguments import convert_arguments

from blueline.api import responses
from blueline.api.extensions import MaskUnexpectedErrors
from blueline.api.planning import MutationPlan, bind
from blueline.api.schema import BluelineSchema
from blueline.domain import Caller
from blueline.errors import BluelineError
from blueline.persistence.reads import root_slot
from blueline.resolvers.mutation import CHANGES
from blueline.resolvers.records import user_errors
from blueline.runtime import Runtime
from blueline.schema.context import Context
from blueline.schema.payloads import UserError
from blueline.selection import TYPENAME, Selection

# Per mutation field: its payload's record field and the query root reading it by id.
RECORDS = {name: (change.record_field, change.read_root) for name, change in CHANGES.items()}


class CompiledMutations:
    def __init__(self, runtime: Runtime, schema: BluelineSchema) -> None:
        self._runtime = runtime
        self._schema = schema
        self._masking = MaskUnexpectedErrors()
        error_codes = schema._schema.get_type("UserErrorCode")
        assert isinstance(error_codes, GraphQLEnumType)
        self._error_codes = error_codes
        mutation_type = schema._schema.mutation_type
        assert mutation_type is not None
        self._mutation_type = mutation_type

    def arguments(
        self,
        plan: MutationPlan,
        operation: OperationDefinitionNode,
        variables: dict[str, Any] | None,
        caller: Caller | None,
    ) -> dict[str, Any] | None:
        """The resolver's keyword arguments, or None when the executor must answer
        (no live key, or arguments it words an error for)."""
        if caller is None or not self._runtime.authenticator.still_active(caller):
            return None
        schema = self._schema._schema
        definition = self._mutation_type.fields[plan.field]
        try:
            # As the executor coerces them (with their sources, which defaults need).
            values = get_variable_values(
                schema, operation.variable_definitions or (), variables or {}
            )
            if isinstance(values, list):
                return None
            raw = get_argument_values(definition, plan.node, values)
            field = definition.extensions[GraphQLCoreConverter.DEFINITION_BACKREF]
            converted: dict[str, Any] = convert_arguments(
                raw,
                field.arguments,
                scalar_registry=self._schema.schema_converter.scalar_registry,
                config=self._schema.config,
            )
        except Exception:
            return None
        return converted

    async def answer(
        self,
        plan: MutationPlan,
        arguments: dict[str, Any],
        variables: dict[str, Any],
        context: Context,
    ) -> tuple[bytes, bool]:
        """The response body, and whether the storage was unavailable (a 503)."""
        change = CHANGES[plan.field]
        try:
            object_id = await change.run(context, arguments["input"])
        except BluelineError as error:
            if not error.user_facing:
                return self._failed(plan, error)
            return self._body(plan, user_errors(error), "null"), False
        except Exception as exc:
            return self._failed(plan, exc)
        record = "null"
        if plan.read is not None:
            values = bind(plan.read, variables, context.workspace_id)
            values[root_slot(0, "id")] = object_id
            try:
                text = await self._runtime.reads.data_text(plan.read, values)
            except Exception as exc:
                # The resolver reads the record itself: its failure is the mutation's.
                return self._failed(plan, exc)
            prefix = "{" + _json(plan.read.roots[0].key) + ":"
            assert text.startswith(prefix)
            record = text[len(prefix) : -1]
        return self._body(plan, [], record), False

    def _body(self, plan: MutationPlan, problems: list[UserError], record: str) -> bytes:
        parts = []
        for pick in plan.payload:
            if pick.name == TYPENAME:
                value = _json(plan.payload_type)
            elif pick.name == "userErrors":
                assert isinstance(pick.children, Selection)
                value = _json([self._user_error(pick.children, p) for p in problems])
            else:
                value = record
            parts.append(f"{_json(pick.key)}:{value}")
        payload = "{" + ",".join(parts) + "}"
        roots = [
            f"{_json(p.key)}:{payload if p.key == plan.key else _json(self._mutation_type.name)}"
            for p in plan.roots
        ]
        return ('{"data":{' + ",".join(roots) + "}}").encode()

    def _user_error(self, selection: Selection, problem: UserError) -> dict[str, Any]:
        values = {
            TYPENAME: "UserError",
            "field": problem.field,
            "message": problem.message,
            "code": self._error_codes.serialize(problem.code),
        }
        return {pick.key: values[pick.name] for pick in selection.picks}

    def _failed(self, plan: MutationPlan, exc: Exception) -> tuple[bytes, bool]:
        """The executor's answer to a failure of the mutation field: the error masked
        as the schema's extension masks it, and ``data`` null (payloads are non-null)."""
        error = self._masking.anonymise_error(located_error(exc, [plan.node], [plan.key]))
        unavailable = (error.extensions or {}).get("code") == responses.UNAVAILABLE
        body = '{"data":null,"errors":' + _json(responses.formatted([error])) + "}"
        return body.encode(), unavailable


def _json(value: Any) -> str:
    return responses.encode(value).decode()
