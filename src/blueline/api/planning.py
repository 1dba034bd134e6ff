"""From a validated GraphQL document to a plan (``selection``), and from a plan and a
record to a response: the compiled path's half that knows GraphQL.

Fields are collected exactly as graphql-core's executor collects them (response keys
in first-seen order, fragments by type condition, ``@skip``/``@include``, a fragment
spread already visited in a selection set skipped), so a compiled answer has the same
keys in the same order as an executed one; the differential tests hold both paths to
byte-identical answers over generated documents.

A plan is made once per document, operation and values of the variables that
``@skip``/``@include`` read; arguments that vary per request become slots.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from graphql import (
    BooleanValueNode,
    DocumentNode,
    EnumValueNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLInterfaceType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    NullValueNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    StringValueNode,
    ValueNode,
    VariableNode,
)

from blueline import readmodel as rm
from blueline.api.documents import Prepared
from blueline.persistence.reads import WORKSPACE_SLOT, root_slot, variable_slot
from blueline.schema import arguments
from blueline.selection import TYPENAME, Alternatives, Pick, QueryPlan, Selection, Slot

_MAX_DIRECTIVE_VARIABLES = 4


class NotCompilable(Exception):
    """The document asks for something only ordinary execution answers."""


# ----------------------------------------------------------------- field collection


class _Collector:
    def __init__(
        self,
        schema: GraphQLSchema,
        fragments: dict[str, FragmentDefinitionNode],
        directive_values: dict[str, Any],
    ) -> None:
        self.schema = schema
        self.fragments = fragments
        self.directive_values = directive_values

    def _included(self, node: FieldNode | FragmentSpreadNode | InlineFragmentNode) -> bool:
        for directive in node.directives or ():
            name = directive.name.value
            if name not in ("skip", "include"):
                continue
            (argument,) = directive.arguments or ()
            value = self._boolean(argument.value)
            if name == "skip" and value:
                return False
            if name == "include" and not value:
                return False
        return True

    def _boolean(self, node: ValueNode) -> bool:
        if isinstance(node, BooleanValueNode):
            return node.value
        if isinstance(node, VariableNode):
            return bool(self.directive_values.get(node.name.value))
        raise NotCompilable("unexpected directive argument")

    def _matches(self, condition: str | None, type_name: str) -> bool:
        if condition is None or condition == type_name:
            return True
        condition_type = self.schema.get_type(condition)
        runtime = self.schema.get_type(type_name)
        if isinstance(condition_type, GraphQLInterfaceType) and isinstance(
            runtime, GraphQLObjectType
        ):
            return self.schema.is_sub_type(condition_type, runtime)
        return False

    def collect(
        self, selection_sets: list[SelectionSetNode], type_name: str
    ) -> dict[str, list[FieldNode]]:
        grouped: dict[str, list[FieldNode]] = {}
        visited: set[str] = set()
        for selection_set in selection_sets:
            self._visit(selection_set, type_name, grouped, visited)
        return grouped

    def _visit(
        self,
        selection_set: SelectionSetNode,
        type_name: str,
        grouped: dict[str, list[FieldNode]],
        visited: set[str],
    ) -> None:
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                if self._included(selection):
                    key = selection.alias.value if selection.alias else selection.name.value
                    grouped.setdefault(key, []).append(selection)
            elif isinstance(selection, InlineFragmentNode):
                condition = (
                    selection.type_condition.name.value if selection.type_condition else None
                )
                if self._included(selection) and self._matches(condition, type_name):
                    self._visit(selection.selection_set, type_name, grouped, visited)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                if name in visited or not self._included(selection):
                    continue
                fragment = self.fragments.get(name)
                if fragment is None or not self._matches(
                    fragment.type_condition.name.value, type_name
                ):
                    continue
                visited.add(name)
                self._visit(fragment.selection_set, type_name, grouped, visited)


def _literal(node: ValueNode) -> Any:
    if isinstance(node, VariableNode):
        return Slot(variable_slot(node.name.value))
    if isinstance(node, NullValueNode):
        return None
    if isinstance(node, IntValueNode):
        return int(node.value)
    if isinstance(node, StringValueNode | EnumValueNode | BooleanValueNode):
        return node.value
    raise NotCompilable("unexpected argument value")


def _named(graphql_type: Any) -> Any:
    while isinstance(graphql_type, GraphQLNonNull | GraphQLList):
        graphql_type = graphql_type.of_type
    return graphql_type


class _Planner:
    def __init__(self, collector: _Collector) -> None:
        self.c = collector

    def selection(self, nodes: list[FieldNode], type_name: str) -> Selection:
        sets = [n.selection_set for n in nodes if n.selection_set is not None]
        grouped = self.c.collect(sets, type_name)
        object_type = self.c.schema.get_type(type_name)
        assert isinstance(object_type, GraphQLObjectType)
        picks: list[Pick] = []
        for key, field_nodes in grouped.items():
            first = field_nodes[0]
            name = first.name.value
            if name == TYPENAME:
                picks.append(Pick(key, name))
                continue
            if name.startswith("__"):
                raise NotCompilable("introspection")
            definition = object_type.fields[name]
            arguments = tuple((a.name.value, _literal(a.value)) for a in first.arguments or ())
            children: Selection | Alternatives | None = None
            child_type = _named(definition.type)
            if isinstance(child_type, GraphQLObjectType):
                children = self.selection(field_nodes, child_type.name)
            elif isinstance(child_type, GraphQLInterfaceType):
                children = self.alternatives(field_nodes, child_type)
            picks.append(Pick(key, name, arguments, children))
        return Selection(type_name, tuple(picks))

    def alternatives(self, nodes: list[FieldNode], interface: GraphQLInterfaceType) -> Alternatives:
        possible = self.c.schema.get_possible_types(interface)
        return Alternatives(tuple(self.selection(nodes, t.name) for t in possible))


def _directive_variables(document: DocumentNode) -> list[str]:
    names: list[str] = []

    def walk(selection_set: SelectionSetNode | None) -> None:
        if selection_set is None:
            return
        for selection in selection_set.selections:
            for directive in selection.directives or ():
                for argument in directive.arguments or ():
                    if isinstance(argument.value, VariableNode):
                        name = argument.value.name.value
                        if name not in names:
                            names.append(name)
            walk(getattr(selection, "selection_set", None))

    for definition in document.definitions:
        if isinstance(definition, OperationDefinitionNode | FragmentDefinitionNode):
            walk(definition.selection_set)
    return names


@dataclass(frozen=True)
class PlanKey:
    operation: str | None
    directive_values: tuple[tuple[str, bool], ...]


def plan_key(
    prepared: Prepared, operation_name: str | None, variables: dict[str, Any]
) -> PlanKey | None:
    """The plan cache key for these variables; None when too many variables steer
    ``@skip``/``@include`` to cache a plan per combination."""
    names = prepared.directive_variables
    if names is None:
        assert prepared.document is not None
        names = prepared.directive_variables = _directive_variables(prepared.document)
    if len(names) > _MAX_DIRECTIVE_VARIABLES:
        return None
    return PlanKey(operation_name, tuple((n, bool(variables.get(n))) for n in names))


def _collector(schema: GraphQLSchema, document: DocumentNode, key: PlanKey) -> _Collector:
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    return _Collector(schema, fragments, dict(key.directive_values))


def plan_query(
    schema: GraphQLSchema, document: DocumentNode, operation: OperationDefinitionNode, key: PlanKey
) -> QueryPlan | None:
    """The compiled plan of a query operation, or None when only ordinary execution can
    answer it (introspection, other root fields)."""
    if operation.operation != OperationType.QUERY:
        return None
    try:
        planner = _Planner(_collector(schema, document, key))
        grouped = planner.c.collect([operation.selection_set], "Query")
        roots: list[Pick] = []
        query_type = schema.query_type
        assert query_type is not None
        for response_key, nodes in grouped.items():
            name = nodes[0].name.value
            if name == TYPENAME:
                roots.append(Pick(response_key, name))
                continue
            if name not in rm.LIST_ROOTS and name not in rm.ONE_ROOTS:
                return None
            first = nodes[0]
            args = tuple((a.name.value, _literal(a.value)) for a in first.arguments or ())
            child_type = _named(query_type.fields[name].type)
            children: Selection | Alternatives
            if isinstance(child_type, GraphQLInterfaceType):
                children = planner.alternatives(nodes, child_type)
            else:
                children = planner.selection(nodes, child_type.name)
            roots.append(Pick(response_key, name, args, children))
        return QueryPlan(tuple(roots))
    except NotCompilable:
        return None


def plan_subscription(
    schema: GraphQLSchema, document: DocumentNode, operation: OperationDefinitionNode, key: PlanKey
) -> Pick | None:
    """The one root field of a subscription and what its updates select."""
    if operation.operation != OperationType.SUBSCRIPTION:
        return None
    try:
        planner = _Planner(_collector(schema, document, key))
        grouped = planner.c.collect([operation.selection_set], "Subscription")
        if len(grouped) != 1:
            return None
        ((response_key, nodes),) = grouped.items()
        name = nodes[0].name.value
        subscription_type = schema.subscription_type
        if name == TYPENAME or subscription_type is None:
            return None
        args = tuple((a.name.value, _literal(a.value)) for a in nodes[0].arguments or ())
        child_type = _named(subscription_type.fields[name].type)
        return Pick(response_key, name, args, planner.selection(nodes, child_type.name))
    except NotCompilable:
        return None


@dataclass(frozen=True, eq=False)
class MutationPlan:
    """A mutation whose payload the compiled path answers: one change, run as its
    resolver runs it, then the record it names read by one compiled statement.

    ``roots`` and ``payload`` are the response keys in order; the one root that is not
    ``__typename`` is ``key``, and ``read`` reads the payload's record field under its
    response key (None when the payload does not select the record).
    """

    roots: tuple[Pick, ...]
    key: str
    field: str
    node: FieldNode
    payload_type: str
    payload: tuple[Pick, ...]
    read: QueryPlan | None


def plan_mutation(
    schema: GraphQLSchema,
    document: DocumentNode,
    operation: OperationDefinitionNode,
    key: PlanKey,
    records: dict[str, tuple[str, str]],
) -> MutationPlan | None:
    """The compiled plan of a mutation, or None when only ordinary execution answers it.

    ``records``: per mutation field, its payload's record field and the query root that
    reads that record by id. A document of one such field (besides ``__typename``)
    whose payload selects ``__typename``, ``userErrors`` and the record at most once
    compiles; anything else executes.
    """
    if operation.operation != OperationType.MUTATION:
        return None
    mutation_type = schema.mutation_type
    assert mutation_type is not None
    try:
        planner = _Planner(_collector(schema, document, key))
        grouped = planner.c.collect([operation.selection_set], mutation_type.name)
        changes = [k for k, nodes in grouped.items() if nodes[0].name.value != TYPENAME]
        if len(changes) != 1:
            return None
        [response_key] = changes
        nodes = grouped[response_key]
        name = nodes[0].name.value
        if name not in records or len(nodes) != 1:
            return None
        definition = mutation_type.fields[name]
        if not isinstance(definition.type, GraphQLNonNull):
            return None
        payload_type = _named(definition.type)
        record_field, read_root = records[name]
        sets = [n.selection_set for n in nodes if n.selection_set is not None]
        payload: list[Pick] = []
        read: QueryPlan | None = None
        for pick_key, field_nodes in planner.c.collect(sets, payload_type.name).items():
            field_name = field_nodes[0].name.value
            if field_name == TYPENAME:
                payload.append(Pick(pick_key, field_name))
            elif field_name == "userErrors":
                payload.append(
                    Pick(pick_key, field_name, children=planner.selection(field_nodes, "UserError"))
                )
            elif field_name == record_field and read is None:
                record_type = _named(payload_type.fields[field_name].type)
                selection = planner.selection(field_nodes, record_type.name)
                alternatives = Alternatives(
                    tuple(
                        selection if t.name == record_type.name else Selection(t.name, ())
                        for t in rm.ONE_ROOTS[read_root].types
                    )
                )
                read = QueryPlan((Pick(pick_key, read_root, children=alternatives),))
                payload.append(Pick(pick_key, field_name, children=selection))
            else:
                return None
        roots = tuple(Pick(k, TYPENAME) if k != response_key else Pick(k, name) for k in grouped)
        return MutationPlan(
            roots,
            response_key,
            name,
            nodes[0],
            payload_type.name,
            tuple(payload),
            read,
        )
    except NotCompilable:
        return None


# --------------------------------------------------------------------------- binding


class Unbindable(Exception):
    """An argument needs an error only ordinary execution words."""


def _resolve(value: Any, variables: dict[str, Any], default: Any) -> Any:
    if isinstance(value, Slot):
        name = value.name.removeprefix("var.")
        return variables.get(name, default)
    return value


def bind(plan: QueryPlan, variables: dict[str, Any], workspace_id: str) -> dict[str, Any]:
    """The slot values of ``plan`` for one request (``variables`` already coerced).

    Raises :class:`Unbindable` for argument values that need an error: the ordinary
    path raises it in its own words.
    """
    values: dict[str, Any] = {WORKSPACE_SLOT: workspace_id}
    for name, value in variables.items():
        values[variable_slot(name)] = value
    for index, pick in enumerate(plan.roots):
        if pick.name == TYPENAME:
            continue
        given = dict(pick.arguments)
        try:
            if pick.name in rm.LIST_ROOTS:
                root = rm.LIST_ROOTS[pick.name]
                first = _resolve(given.get("first"), variables, None)
                values[root_slot(index, "first")] = arguments.page_size(first)
                after = _resolve(given.get("after"), variables, None)
                values[root_slot(index, "after")] = arguments.cursor_key(root.connection, after)
                for f in root.filters:
                    values[root_slot(index, f.argument.name)] = arguments.filter_value(
                        _resolve(given.get(f.argument.name), variables, None)
                    )
            else:
                values[root_slot(index, "id")] = str(_resolve(given.get("id"), variables, ""))
        except arguments.ArgumentError as error:
            raise Unbindable(str(error)) from None
    return values


# ------------------------------------------------------------------------- rendering


def render(
    selection: Selection, record: dict[str, Any], variables: dict[str, Any]
) -> dict[str, Any]:
    """A record as ``selection`` asks for it: the same keys and values, in the same
    order, as ordinary execution gives for that record."""
    type_ = rm.TYPES[selection.type_name]
    out: dict[str, Any] = {}
    for pick in selection.picks:
        if pick.name == TYPENAME:
            out[pick.key] = selection.type_name
            continue
        field = type_.field(pick.name)
        if isinstance(field.source, rm.ListOf):
            relation = type_.relations[field.source.relation]
            reveal = _resolve(pick.argument(relation.reveal_argument, False), variables, False)
            assert isinstance(pick.children, Selection)
            children = rm.visible_children(type_, field.source.relation, record, bool(reveal))
            out[pick.key] = [render(pick.children, child, variables) for child in children]
        else:
            out[pick.key] = record[pick.name]
    return out


def render_update(
    selection: Selection, update: dict[str, Any], variables: dict[str, Any]
) -> dict[str, Any]:
    """One subscription update (``eventId``, ``change`` and snapshot records)."""
    out: dict[str, Any] = {}
    for pick in selection.picks:
        if pick.name == TYPENAME:
            out[pick.key] = selection.type_name
        elif isinstance(pick.children, Selection):
            out[pick.key] = render(pick.children, update[pick.name], variables)
        else:
            out[pick.key] = update[pick.name]
    return out


def picks_in(selection: Selection) -> Iterator[Pick]:
    for pick in selection.picks:
        yield pick
        if isinstance(pick.children, Selection):
            yield from picks_in(pick.children)
