"""A direct path for the hottest query shape: the setups list.

graphql-core resolves a list field by field (a few microseconds each), which for a page
of 50 setups costs several times the SQL. For a document that asks only for the list
and plain fields of it, this extension builds the same response in one pass over the
rows and hands it to Strawberry as the execution result. Anything else (fragments,
directives, other root fields, arguments it cannot read with certainty) goes the
ordinary way, as do inputs that need an error: the ordinary path words those.

The plan for a document is computed once per query text and cached.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from graphql import (
    BooleanValueNode,
    EnumValueNode,
    ExecutionResult,
    FieldNode,
    GraphQLError,
    IntValueNode,
    NonNullTypeNode,
    NullValueNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    StringValueNode,
    ValueNode,
    VariableNode,
)
from strawberry.extensions import SchemaExtension

from blueline.persistence import queries
from blueline.persistence.models import SetupStatus
from blueline.persistence.queries import SetupRow
from blueline.resolvers.common import MAX_FIRST, decode_cursor, encode_cursor

_PLAN_CACHE_SIZE = 256
_UNSET = object()

Tree = tuple[tuple[str, str, "Tree | None"], ...]  # (response key, field name, children)

_NODE_FIELDS: dict[str, Callable[[SetupRow], Any]] = {
    "id": lambda r: r.setup.id,
    "businessName": lambda r: r.setup.business_name,
    "label": lambda r: r.setup.label,
    "status": lambda r: str(r.setup.status),
    "phoneLineCount": lambda r: r.phone_line_count,
    "createdAt": lambda r: r.setup.created_at.isoformat(),
    "updatedAt": lambda r: r.setup.updated_at.isoformat(),
    "__typename": lambda _r: "IMessageSetup",
}
_ALLOWED: dict[str, set[str]] = {
    "connection": {"edges", "pageInfo", "totalCount", "__typename"},
    "edges": {"cursor", "node", "__typename"},
    "node": set(_NODE_FIELDS),
    "pageInfo": {"hasNextPage", "endCursor", "__typename"},
}
_CHILD_LEVEL = {"edges": "edges", "node": "node", "pageInfo": "pageInfo"}


@dataclass(frozen=True)
class ListPlan:
    root_key: str
    arguments: dict[str, ValueNode]
    defaults: dict[str, ValueNode | None]  # variable name -> its default, if declared
    tree: Tree
    wants_total: bool


def _tree(selection_set: SelectionSetNode | None, level: str) -> Tree | None:
    if selection_set is None:
        return None
    out: list[tuple[str, str, Tree | None]] = []
    keys: set[str] = set()
    for selection in selection_set.selections:
        if not isinstance(selection, FieldNode) or selection.directives or selection.arguments:
            return None
        name = selection.name.value
        key = selection.alias.value if selection.alias else name
        if name not in _ALLOWED[level] or key in keys:
            return None  # unknown field, or a repeated key whose merge rules we skip
        keys.add(key)
        children: Tree | None = None
        if name in _CHILD_LEVEL:
            children = _tree(selection.selection_set, _CHILD_LEVEL[name])
            if children is None:
                return None
        elif selection.selection_set is not None:
            return None
        out.append((key, name, children))
    return tuple(out)


def plan_for(operation: OperationDefinitionNode) -> ListPlan | None:
    if operation.operation != OperationType.QUERY or operation.directives:
        return None
    if any(isinstance(d.type, NonNullTypeNode) for d in operation.variable_definitions or ()):
        return None  # graphql-core's variable coercion words those errors; keep it
    selections = operation.selection_set.selections
    if len(selections) != 1:
        return None
    root = selections[0]
    if not isinstance(root, FieldNode) or root.name.value != "imessageSetups" or root.directives:
        return None
    arguments = {arg.name.value: arg.value for arg in root.arguments or ()}
    if not set(arguments) <= {"first", "after", "status"}:
        return None
    tree = _tree(root.selection_set, "connection")
    if tree is None:
        return None
    defaults: dict[str, ValueNode | None] = {
        d.variable.name.value: d.default_value for d in operation.variable_definitions or ()
    }
    return ListPlan(
        root_key=root.alias.value if root.alias else "imessageSetups",
        arguments=arguments,
        defaults=defaults,
        tree=tree,
        wants_total=any(name == "totalCount" for _, name, _ in tree),
    )


def _literal(node: ValueNode | None) -> Any:
    if node is None or isinstance(node, NullValueNode):
        return None
    if isinstance(node, IntValueNode):
        return int(node.value)
    if isinstance(node, StringValueNode | EnumValueNode):
        return node.value
    if isinstance(node, BooleanValueNode):
        return node.value
    return _UNSET


def _argument(plan: ListPlan, name: str, variables: dict[str, Any]) -> Any:
    node = plan.arguments.get(name)
    if node is None:
        return None
    if isinstance(node, VariableNode):
        variable = node.name.value
        if variable in variables:
            return variables[variable]
        if variable in plan.defaults:
            return _literal(plan.defaults[variable])
        return None
    return _literal(node)


def _render(tree: Tree, value: Callable[[str, Tree | None], Any]) -> dict[str, Any]:
    return {key: value(name, children) for key, name, children in tree}


class SetupListFastPath(SchemaExtension):
    _plans: OrderedDict[str, ListPlan | None] = OrderedDict()

    def _plan(self) -> ListPlan | None:
        context = self.execution_context
        query = context.query
        document = context.graphql_document
        if query is None or document is None:
            return None
        key = f"{context.operation_name or ''}\x00{query}"
        if key in self._plans:
            self._plans.move_to_end(key)
            return self._plans[key]
        operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
        if len(document.definitions) != len(operations):
            found = None  # fragment definitions: the ordinary path
        else:
            named = [
                op
                for op in operations
                if context.operation_name is None
                or (op.name and op.name.value == context.operation_name)
            ]
            found = plan_for(named[0]) if len(named) == 1 else None
        self._plans[key] = found
        if len(self._plans) > _PLAN_CACHE_SIZE:
            self._plans.popitem(last=False)
        return found

    async def on_execute(self) -> AsyncIterator[None]:
        plan = self._plan()
        if plan is not None:
            try:
                result = await self._execute(plan)
            except Exception:
                # Errors raised here would skip error masking; the ordinary path meets
                # the same failure and reports it masked, with a request id.
                result = None
            if result is not None:
                self.execution_context.result = result
        yield

    async def _execute(self, plan: ListPlan) -> ExecutionResult | None:
        variables = self.execution_context.variables or {}
        first = _argument(plan, "first", variables)
        after = _argument(plan, "after", variables)
        status = _argument(plan, "status", variables)
        first = 20 if first is None else first
        if (
            type(first) is not int
            or not 0 <= first <= MAX_FIRST
            or not (after is None or isinstance(after, str))
            or status not in (None, "ACTIVE", "PENDING")
        ):
            return None  # the ordinary path reports the error in its own words
        try:
            after_id = decode_cursor(after) if after is not None else None
        except GraphQLError:
            return None
        context = self.execution_context.context
        workspace_id = await context.authorize()
        wanted = SetupStatus(status) if status is not None else None
        async with context.runtime.db.snapshot() as session:
            page = await queries.list_setups(
                session, workspace_id, first=first, after_id=after_id, status=wanted
            )
            total = (
                await queries.count_setups(session, workspace_id, wanted)
                if plan.wants_total
                else None
            )
        rows = page.rows
        cursors = [encode_cursor(row.setup.id) for row in rows]

        def node_value(row: SetupRow) -> Callable[[str, Tree | None], Any]:
            return lambda name, _children: _NODE_FIELDS[name](row)

        def edge_value(index: int) -> Callable[[str, Tree | None], Any]:
            def value(name: str, children: Tree | None) -> Any:
                if name == "cursor":
                    return cursors[index]
                if name == "node":
                    assert children is not None
                    return _render(children, node_value(rows[index]))
                return "IMessageSetupEdge"

            return value

        def page_info_value(name: str, _children: Tree | None) -> Any:
            if name == "hasNextPage":
                return page.has_next_page
            if name == "endCursor":
                return cursors[-1] if cursors else None
            return "PageInfo"

        def connection_value(name: str, children: Tree | None) -> Any:
            if name == "edges":
                assert children is not None
                return [_render(children, edge_value(i)) for i in range(len(rows))]
            if name == "pageInfo":
                assert children is not None
                return _render(children, page_info_value)
            if name == "totalCount":
                return total or 0
            return "IMessageSetupConnection"

        return ExecutionResult(data={plan.root_key: _render(plan.tree, connection_value)})
