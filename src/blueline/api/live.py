"""Running operations for the transports (HTTP, multipart HTTP, WebSocket): prepare,
coerce, then answer through the compiled path when the plan allows, else through
Strawberry. Subscriptions stream update payloads as JSON text; a compiled one renders
each event once per document and variables, and every subscriber of that document
gets the same text.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from graphql import OperationDefinitionNode, OperationType

from blueline.api import responses
from blueline.api.documents import Prepared
from blueline.api.mutations import RECORDS, CompiledMutations
from blueline.api.planning import (
    MutationPlan,
    Unbindable,
    bind,
    plan_key,
    plan_mutation,
    plan_query,
    plan_subscription,
    render_update,
)
from blueline.api.schema import BluelineSchema
from blueline.domain import Caller
from blueline.errors import BluelineError, StorageUnavailable
from blueline.events.stream import CLOSE_FORBIDDEN, REVOKED, StreamEnded
from blueline.events.updates import line_updates, setup_updates, update_record
from blueline.runtime import Runtime
from blueline.schema.context import Context
from blueline.selection import Pick, QueryPlan, Selection, Slot

logger = logging.getLogger("blueline.graphql")

STREAM_ENDED = "STREAM_ENDED"


@dataclass
class Operation:
    query: str
    name: str | None
    node: OperationDefinitionNode
    prepared: Prepared
    variables: dict[str, Any] | None
    coerced: dict[str, Any]

    @property
    def kind(self) -> OperationType:
        return self.node.operation

    @property
    def label(self) -> str | None:
        """The operation's own name (what metrics count it under)."""
        return self.node.name.value if self.node.name else None

    @property
    def cost(self) -> int:
        """Rate-limit tokens: one, or one per mutation field."""
        if self.kind != OperationType.MUTATION:
            return 1
        name = self.node.name.value if self.node.name else None
        return max(1, self.prepared.root_fields.get(name, 1))


class LiveEnd(Exception):
    """A stream ended with an error the client should see; ``close_code`` asks the
    WebSocket to close (reconnect with `after`, or stop)."""

    def __init__(self, errors: list[dict[str, Any]], close_code: int | None = None) -> None:
        super().__init__(errors[0]["message"] if errors else "stream ended")
        self.errors = errors
        self.close_code = close_code


def _ended(error: BluelineError) -> LiveEnd:
    close = error.close_code if isinstance(error, StreamEnded) else None
    return LiveEnd([responses.error(error.message, error.code)], close)


class Runner:
    def __init__(self, runtime: Runtime, schema: BluelineSchema) -> None:
        self.runtime = runtime
        self.schema = schema
        self.documents = schema.documents
        self._mutations = CompiledMutations(runtime, schema)

    def prepare(
        self, query: str, operation_name: str | None, variables: dict[str, Any] | None
    ) -> Operation | list[dict[str, Any]]:
        """The operation to run, or the errors to answer instead."""
        prepared = self.documents.prepare(query)
        if not prepared.valid:
            return responses.formatted(prepared.errors)
        node = prepared.operation(operation_name)
        if node is None:
            message = (
                f"Unknown operation named '{operation_name}'."
                if operation_name is not None
                else "Must provide operation name if query contains multiple operations."
            )
            return [responses.error(message, responses.BAD_REQUEST)]
        coerced, errors = self.documents.coerce_variables(node, variables, prepared)
        if errors:
            return responses.formatted(errors)
        return Operation(query, operation_name, node, prepared, variables, coerced)

    def context(self, caller: Caller, request_id: str | None, transport: str) -> Context:
        return Context(self.runtime, caller, request_id, transport)

    # -- queries and mutations

    def _plan(self, op: Operation) -> QueryPlan | MutationPlan | None:
        """The compiled plan of a query or mutation, made once per document and key."""
        assert op.prepared.document is not None
        if not self.runtime.settings.compiled_reads:
            return None
        key = plan_key(op.prepared, op.name, op.coerced)
        if key is None:
            return None
        plans = op.prepared.plans
        if key not in plans:
            schema, document = self.schema._schema, op.prepared.document
            if op.kind == OperationType.MUTATION:
                plans[key] = plan_mutation(schema, document, op.node, key, RECORDS)
            else:
                plans[key] = plan_query(schema, document, op.node, key)
        plan: QueryPlan | MutationPlan | None = plans[key]
        return plan

    async def execute(
        self, op: Operation, caller: Caller, request_id: str | None, transport: str = "http"
    ) -> tuple[bytes, bool]:
        """The response body, and whether the storage was unavailable (a 503)."""
        plan = self._plan(op) if op.kind != OperationType.SUBSCRIPTION else None
        if isinstance(plan, MutationPlan):
            arguments = self._mutations.arguments(plan, op.node, op.variables, caller)
            if arguments is not None:
                context = self.context(caller, request_id, transport)
                return await self._mutations.answer(plan, arguments, op.coerced, context)
        elif plan is not None:
            try:
                values = bind(plan, op.coerced, caller.workspace_id)
            except Unbindable:
                pass  # the ordinary path words the argument's error
            else:
                try:
                    text = await self.runtime.reads.data_text(plan, values)
                except StorageUnavailable:
                    return _unavailable_body(), True
                except Exception:
                    # Unexpected: the ordinary path meets the same failure and
                    # reports it masked, with the request id, in its usual shape.
                    logger.debug("compiled read failed; executing instead", exc_info=True)
                else:
                    return responses.data_body(text), False
        result = await self.schema.execute(
            op.query,
            variable_values=op.variables,
            context_value=self.context(caller, request_id, transport),
            operation_name=op.name,
        )
        payload: dict[str, Any] = {"data": result.data}
        unavailable = False
        if result.errors:
            payload["errors"] = responses.formatted(result.errors)
            unavailable = any(
                (e.extensions or {}).get("code") == responses.UNAVAILABLE for e in result.errors
            )
        return responses.encode(payload), unavailable

    # -- subscriptions

    def _subscription_plan(self, op: Operation) -> Pick | None:
        assert op.prepared.document is not None
        if not self.runtime.settings.compiled_reads:
            return None
        key = plan_key(op.prepared, op.name, op.coerced)
        if key is None:
            return None
        plans = op.prepared.plans
        sub_key = ("subscription", key)
        if sub_key not in plans:
            plans[sub_key] = plan_subscription(
                self.schema._schema, op.prepared.document, op.node, key
            )
        pick: Pick | None = plans[sub_key]
        return pick

    async def subscribe(
        self, op: Operation, caller: Caller, request_id: str | None, transport: str
    ) -> AsyncIterator[str]:
        """Update payloads (``{"data": …}`` as JSON text) until the stream ends; an end
        the client must hear about raises :class:`LiveEnd`."""
        pick = self._subscription_plan(op)
        if pick is not None:
            async for text in self._compiled(pick, op, caller):
                yield text
            return
        async for text in self._executed(op, caller, request_id, transport):
            yield text

    async def _compiled(self, pick: Pick, op: Operation, caller: Caller) -> AsyncIterator[str]:
        runtime = self.runtime
        variables = op.coerced

        def argument(name: str) -> Any:
            value = pick.argument(name)
            if isinstance(value, Slot):
                return variables.get(value.name.removeprefix("var."))
            return value

        wanted = line_updates if pick.name == "phoneLineUpdates" else setup_updates
        setup_id = argument("setupId")
        try:
            events = await runtime.updates.open(
                caller.workspace_id,
                wanted=wanted,
                setup_id=None if setup_id is None else str(setup_id),
                after=argument("after"),
            )
        except StorageUnavailable:
            raise LiveEnd([_unavailable_error()], 1013) from None
        except BluelineError as error:
            raise _ended(error) from None
        selection = pick.children
        assert isinstance(selection, Selection)
        memo_key = (id(pick), json.dumps(variables, sort_keys=True, default=str))
        try:
            async for event in events:
                if not runtime.authenticator.still_active(caller):
                    raise StreamEnded(REVOKED, CLOSE_FORBIDDEN)
                text = event.memo.get(memo_key)
                if text is None:
                    rendered = render_update(selection, update_record(event), variables)
                    text = responses.encode({"data": {pick.key: rendered}}).decode()
                    event.memo[memo_key] = text
                yield text
        except StorageUnavailable:
            # The stream cannot read the log: the client resumes with `after` later.
            raise LiveEnd([_unavailable_error()], 1013) from None
        except BluelineError as error:
            raise _ended(error) from None

    async def _executed(
        self, op: Operation, caller: Caller, request_id: str | None, transport: str
    ) -> AsyncIterator[str]:
        results = await self.schema.subscribe(
            op.query,
            variable_values=op.variables,
            context_value=self.context(caller, request_id, transport),
            operation_name=op.name,
        )
        if not hasattr(results, "__aiter__"):
            errors = getattr(results, "errors", None) or []
            raise LiveEnd(responses.formatted(errors))
        async for result in results:
            if result.errors:
                errors = responses.formatted(result.errors)
                close = None
                for e in result.errors:
                    original = e.original_error
                    if isinstance(original, StreamEnded):
                        close = original.close_code
                raise LiveEnd(errors, close)
            yield responses.encode({"data": result.data}).decode()


def _unavailable_error() -> dict[str, Any]:
    return responses.error(
        "The service is briefly unavailable; retry shortly", responses.UNAVAILABLE
    )


def _unavailable_body() -> bytes:
    return responses.errors_body(_unavailable_error())
