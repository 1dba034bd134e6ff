"""GraphQL documents, parsed and validated once, under bounds that hold for any input.

Every document a client sends, over HTTP or WebSocket, goes through
:meth:`DocumentCache.prepare` before anything executes it:

1. its size and token count are bounded by the parser itself;
2. its *expanded* cost (fields, aliases, depth, mutation fields) is measured by one
   walk that memoises each fragment, so the work is linear in the document's size:
   a fragment used twice by each of 39 nested fragments expands to 2^39 fields and is
   refused in microseconds rather than walked for minutes;
3. the same field selected many times in one place (through fragments and inline
   fragments) is bounded too: graphql-core's check that such fields can be merged
   compares them in pairs, so 300 copies of one field cost it a third of a second;
4. only then does graphql-core validate it (without suggestions in production).

Results are cached by the SHA-256 of the text, never by the text itself, and the cache
is bounded by an estimate of the memory it holds, so a flood of distinct documents only
evicts. Cached documents are parsed without locations (a located AST keeps its whole
source alive); an invalid document is parsed again with locations to word its errors,
and only the worded errors are kept (messages and line/column pairs, no nodes, no
source), so what an entry holds is what its estimate counts.
"""

from __future__ import annotations

import hashlib
import sys
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLBoolean,
    GraphQLError,
    GraphQLID,
    GraphQLInputObjectType,
    GraphQLInputType,
    GraphQLInt,
    GraphQLList,
    GraphQLNonNull,
    GraphQLScalarType,
    GraphQLSchema,
    GraphQLString,
    InlineFragmentNode,
    NamedTypeNode,
    Node,
    NonNullTypeNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    SourceLocation,
    is_input_type,
    parse,
    specified_rules,
    type_from_ast,
    validate,
)
from graphql.execution.values import get_variable_values
from graphql.validation import ASTValidationRule, NoSchemaIntrospectionCustomRule

MAX_TOKENS = 2000
MAX_DEPTH = 10
# The standard introspection query (GraphiQL's) nests `ofType` nine levels under
# `__schema { types { fields { type …`; introspection answers only describe the schema,
# but nesting them still multiplies the answer, so they get a bound of their own.
MAX_INTROSPECTION_DEPTH = 16
MAX_ALIASES = 30
MAX_FIELDS = 1000
MAX_MUTATION_FIELDS = 10
# Fields under one response key in one place, fragments expanded (a colocated `id` in
# each of a dozen fragments is ordinary; graphql-core compares them in pairs).
MAX_REPEATED_FIELD = 20
MAX_VALIDATION_ERRORS = 20

# Error codes a client can branch on (``extensions.code``).
PARSE_FAILED = "GRAPHQL_PARSE_FAILED"
VALIDATION_FAILED = "GRAPHQL_VALIDATION_FAILED"
BAD_USER_INPUT = "BAD_USER_INPUT"

_INTROSPECTION_ROOTS = frozenset({"__schema", "__type"})
# Memory an entry holds, for the cache budget, measured with tracemalloc on hostile
# documents: per AST node of a location-free document, per kept error (its locations,
# extensions, the object) beside its message, and per entry (the Prepared, its dicts and
# its plans, the cache's slot).
_BYTES_PER_NODE = 400
_BYTES_PER_ERROR = 1024
_BYTES_PER_ENTRY = 16 * 1024
# Plans kept per document (per operation name and @skip/@include values).
_MAX_PLANS = 32


def coded(error: GraphQLError, code: str) -> GraphQLError:
    extensions = dict(error.extensions or {})
    extensions.setdefault("code", code)
    return GraphQLError(
        error.message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        original_error=error.original_error,
        extensions=extensions,
    )


@dataclass(frozen=True)
class Failure:
    """An error as the client sees it, detached from the document: a GraphQLError holds
    the nodes it is about, and through them (located) every token and the whole text."""

    message: str
    locations: tuple[tuple[int, int], ...] | None
    extensions: dict[str, Any]

    @classmethod
    def of(cls, error: GraphQLError, code: str) -> Failure:
        extensions = dict(error.extensions or {})
        extensions.setdefault("code", code)
        locations = (
            None
            if error.locations is None
            else tuple((loc.line, loc.column) for loc in error.locations)
        )
        return cls(error.message, locations, extensions)

    def error(self) -> GraphQLError:
        # A fresh error each time: one that is raised carries the raising frames along.
        error = GraphQLError(self.message, extensions=dict(self.extensions))
        if self.locations is not None:
            error.locations = [SourceLocation(line, column) for line, column in self.locations]
        return error

    @property
    def estimated_bytes(self) -> int:
        return sys.getsizeof(self.message) + _BYTES_PER_ERROR


# ------------------------------------------------------------------------------ cost


@dataclass(frozen=True)
class Cost:
    fields: int = 0
    aliases: int = 0
    depth: int = 0
    introspection_depth: int = 0
    root_fields: int = 0
    # Every selection once fragments are expanded (fields, spreads, inline fragments).
    expanded: int = 0


class CostWalker:
    """Expanded size of an operation, in time linear in the document (fragments are
    measured once each). ``visited`` counts the selections it looked at."""

    def __init__(self, fragments: dict[str, FragmentDefinitionNode]) -> None:
        self._fragments = fragments
        self._memo: dict[str, Cost] = {}
        self._active: set[str] = set()
        self.visited = 0

    def selection_set(self, node: SelectionSetNode | None) -> Cost:
        if node is None:
            return Cost()
        fields = aliases = depth = intro = roots = expanded = 0
        for selection in node.selections:
            self.visited += 1
            expanded += 1
            if isinstance(selection, FieldNode):
                child = self.selection_set(selection.selection_set)
                fields += 1 + child.fields
                aliases += (1 if selection.alias else 0) + child.aliases
                expanded += child.expanded
                roots += 1
                if selection.name.value in _INTROSPECTION_ROOTS:
                    intro = max(intro, 1 + max(child.depth, child.introspection_depth))
                else:
                    depth = max(depth, 1 + child.depth)
                    intro = max(intro, child.introspection_depth)
                continue
            if isinstance(selection, FragmentSpreadNode):
                inner = self._fragment(selection.name.value)
            elif isinstance(selection, InlineFragmentNode):
                inner = self.selection_set(selection.selection_set)
            else:  # pragma: no cover - graphql-core has no other selection kinds
                continue
            fields += inner.fields
            aliases += inner.aliases
            depth = max(depth, inner.depth)
            intro = max(intro, inner.introspection_depth)
            roots += inner.root_fields
            expanded += inner.expanded
        return Cost(fields, aliases, depth, intro, roots, expanded)

    def _fragment(self, name: str) -> Cost:
        known = self._memo.get(name)
        if known is not None:
            return known
        definition = self._fragments.get(name)
        if definition is None or name in self._active:
            return Cost()  # unknown or cyclic: validation reports it
        self._active.add(name)
        cost = self.selection_set(definition.selection_set)
        self._active.discard(name)
        self._memo[name] = cost
        return cost

    def most_repeated(self, node: SelectionSetNode, budget: int) -> tuple[int, str]:
        """The largest number of fields under one response key in one place, and that
        key, with fragments expanded and fields of the same key merged as the response
        merges them (a fragment spread twice in one place counts once, as graphql-core
        compares it once). It walks the expansion: ``budget`` is its size as
        :meth:`selection_set` measured it, and a walk that goes past it has met a cycle
        through a field (validation reports those)."""
        worst = (0, "")
        pending: list[list[SelectionSetNode]] = [[node]]
        left = [budget]
        while pending and left[0] >= 0:
            by_key: dict[str, list[SelectionSetNode]] = {}
            counts: dict[str, int] = {}
            expanded: set[str] = set()
            for selection_set in pending.pop():
                self._gather(selection_set, by_key, counts, expanded, left)
            for key, count in counts.items():
                if count > worst[0]:
                    worst = (count, key)
            pending.extend(children for children in by_key.values() if children)
        return worst

    def _gather(
        self,
        node: SelectionSetNode,
        by_key: dict[str, list[SelectionSetNode]],
        counts: dict[str, int],
        expanded: set[str],
        left: list[int],
    ) -> None:
        for selection in node.selections:
            left[0] -= 1
            if isinstance(selection, FieldNode):
                key = (selection.alias or selection.name).value
                counts[key] = counts.get(key, 0) + 1
                children = by_key.setdefault(key, [])
                if selection.selection_set is not None:
                    children.append(selection.selection_set)
            elif isinstance(selection, InlineFragmentNode):
                self._gather(selection.selection_set, by_key, counts, expanded, left)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                definition = self._fragments.get(name)
                if definition is None or name in expanded:
                    continue  # unknown (validation reports it), cyclic or already counted
                expanded.add(name)
                self._gather(definition.selection_set, by_key, counts, expanded, left)


def _cost_errors(
    document: DocumentNode,
) -> tuple[list[GraphQLError], int, dict[str | None, int]]:
    """Errors for operations over a bound; the selections visited; each operation's
    root fields, fragments expanded (a mutation request is charged one rate-limit token
    per field)."""
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    walker = CostWalker(fragments)
    errors: list[GraphQLError] = []
    roots: dict[str | None, int] = {}
    for definition in document.definitions:
        if not isinstance(definition, OperationDefinitionNode):
            continue
        cost = walker.selection_set(definition.selection_set)
        roots[definition.name.value if definition.name else None] = cost.root_fields
        problems = []
        if cost.fields > MAX_FIELDS:
            problems.append(
                f"it selects {cost.fields} fields once fragments are expanded "
                f"(at most {MAX_FIELDS})"
            )
        if cost.depth > MAX_DEPTH:
            problems.append(f"its depth is {cost.depth} (at most {MAX_DEPTH})")
        if cost.introspection_depth > MAX_INTROSPECTION_DEPTH:
            problems.append(
                f"its introspection depth is {cost.introspection_depth} "
                f"(at most {MAX_INTROSPECTION_DEPTH})"
            )
        if cost.aliases > MAX_ALIASES:
            problems.append(f"it uses {cost.aliases} aliases (at most {MAX_ALIASES})")
        if (
            definition.operation == OperationType.MUTATION
            and cost.root_fields > MAX_MUTATION_FIELDS
        ):
            problems.append(
                f"it runs {cost.root_fields} mutations (at most {MAX_MUTATION_FIELDS} per request)"
            )
        if not problems and cost.expanded <= 2 * MAX_FIELDS:
            repeats, key = walker.most_repeated(definition.selection_set, cost.expanded)
            if repeats > MAX_REPEATED_FIELD:
                problems.append(
                    f"it selects '{key[:64]}' {repeats} times in one place once fragments "
                    f"are expanded (at most {MAX_REPEATED_FIELD})"
                )
        if problems:
            name = definition.name.value if definition.name else "anonymous"
            errors.append(
                GraphQLError(
                    f"Operation '{name}' is too large: " + "; ".join(problems) + ".",
                    extensions={"code": VALIDATION_FAILED},
                )
            )
    return errors, walker.visited, roots


# ----------------------------------------------------------------------- documents


class Plans(dict[Any, Any]):
    """A document's plans, at most ``_MAX_PLANS`` (the oldest goes first): each variant
    of ``@skip``/``@include`` values and each operation name can add one."""

    def __setitem__(self, key: Any, value: Any) -> None:
        if key not in self and len(self) >= _MAX_PLANS:
            del self[next(iter(self))]
        super().__setitem__(key, value)


@dataclass
class Prepared:
    """A parsed document and its verdict. No ``failures`` means valid."""

    digest: bytes
    document: DocumentNode | None
    failures: tuple[Failure, ...]
    estimated_bytes: int
    visited: int = 0
    root_fields: dict[str | None, int] = field(default_factory=dict)
    # Filled by the planner, per operation name (and skip/include values).
    plans: Plans = field(default_factory=Plans)
    # Per operation name: its variables when every one is a plain scalar (see
    # ``simple_variables``), else None.
    simple: dict[str | None, tuple[SimpleVariable, ...] | None] = field(default_factory=dict)
    # The variables that steer @skip/@include anywhere in the document (the planner's).
    directive_variables: list[str] | None = None

    @property
    def errors(self) -> list[GraphQLError]:
        return [failure.error() for failure in self.failures]

    @property
    def valid(self) -> bool:
        return not self.failures and self.document is not None

    def operation(self, name: str | None) -> OperationDefinitionNode | None:
        """The operation to run, as graphql-core picks it (None when ambiguous/unknown)."""
        if self.document is None:
            return None
        operations = [
            d for d in self.document.definitions if isinstance(d, OperationDefinitionNode)
        ]
        if name is None:
            return operations[0] if len(operations) == 1 else None
        for operation in operations:
            if operation.name is not None and operation.name.value == name:
                return operation
        return None


@dataclass(frozen=True, slots=True)
class SimpleVariable:
    name: str
    type_: GraphQLScalarType
    required: bool


_PLAIN_SCALARS = {t.name: t for t in (GraphQLID, GraphQLString, GraphQLBoolean, GraphQLInt)}
_INT_RANGE = range(-(2**31), 2**31)


def simple_variables(
    schema: GraphQLSchema, operation: OperationDefinitionNode
) -> tuple[SimpleVariable, ...] | None:
    """The operation's variables when each is an ID, String, Boolean or Int, optionally
    non-null, without a default or directives; else None."""
    found: list[SimpleVariable] = []
    for definition in operation.variable_definitions or ():
        if definition.default_value is not None or definition.directives:
            return None
        type_node, required = definition.type, False
        if isinstance(type_node, NonNullTypeNode):
            type_node, required = type_node.type, True
        if not isinstance(type_node, NamedTypeNode):
            return None
        scalar = _PLAIN_SCALARS.get(type_node.name.value)
        if scalar is None or schema.get_type(scalar.name) is not scalar:
            return None
        found.append(SimpleVariable(definition.variable.name.value, scalar, required))
    return tuple(found)


def _plain(type_: GraphQLScalarType, value: Any) -> bool:
    """Whether graphql-core would coerce ``value`` to itself without an error."""
    if type_ is GraphQLID:
        return isinstance(value, str) and not _has_lone_surrogate(value)
    if type_ is GraphQLString:
        return isinstance(value, str)
    if type_ is GraphQLBoolean:
        return isinstance(value, bool)
    return type(value) is int and value in _INT_RANGE


def coerce_simple(
    variables: tuple[SimpleVariable, ...], values: dict[str, Any]
) -> dict[str, Any] | None:
    """The coerced variables, as graphql-core gives them, when every value is plainly
    valid; None when any needs graphql-core (to coerce it, or to word its error)."""
    coerced: dict[str, Any] = {}
    for variable in variables:
        if variable.name not in values:
            if variable.required:
                return None
            continue
        value = values[variable.name]
        if value is None:
            if variable.required:
                return None
        elif not _plain(variable.type_, value):
            return None
        coerced[variable.name] = value
    return coerced


def digest_of(query: str) -> bytes:
    return hashlib.sha256(query.encode("utf-8", "surrogatepass")).digest()


def _node_count(document: DocumentNode) -> int:
    """Every node of the AST (names, arguments, values and directives too)."""
    count = 0
    pending: list[Any] = [document]
    while pending:
        item = pending.pop()
        if isinstance(item, Node):
            count += 1
            pending.extend(getattr(item, key) for key in item.keys if key != "loc")
        elif isinstance(item, tuple | list):
            pending.extend(item)
    return count


def _failed(digest: bytes, errors: Sequence[GraphQLError], code: str, visited: int = 0) -> Prepared:
    failures = tuple(Failure.of(e, code) for e in errors)
    estimate = _BYTES_PER_ENTRY + sum(f.estimated_bytes for f in failures)
    return Prepared(digest, None, failures, estimate, visited)


def _has_lone_surrogate(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _bad_id(type_: GraphQLInputType, value: Any) -> bool:
    """Whether an ID in ``value`` (a variable's JSON, already coerced without errors)
    holds an unpaired surrogate, which no database can store."""
    if isinstance(type_, GraphQLNonNull):
        return _bad_id(type_.of_type, value)
    if isinstance(type_, GraphQLList):
        items = value if isinstance(value, list) else [value]
        return any(_bad_id(type_.of_type, item) for item in items)
    if isinstance(type_, GraphQLInputObjectType):
        if not isinstance(value, dict):
            return False
        return any(
            name in value and _bad_id(field.type, value[name])
            for name, field in type_.fields.items()
        )
    return type_ is GraphQLID and isinstance(value, str) and _has_lone_surrogate(value)


class DocumentCache:
    def __init__(
        self,
        schema: GraphQLSchema,
        *,
        production: bool,
        extra_rules: Sequence[type[ASTValidationRule]] = (),
        max_query_chars: int = 64 * 1024,
        max_bytes: int = 32 * 1024 * 1024,
        max_entries: int = 5000,
    ) -> None:
        self._schema = schema
        self.hide_suggestions = production
        rules = [*specified_rules, *extra_rules]
        if production:
            rules.append(NoSchemaIntrospectionCustomRule)
        self._rules = tuple(rules)
        self._max_query_chars = max_query_chars
        self._max_bytes = max_bytes
        self._max_entries = max_entries
        self._entries: OrderedDict[bytes, Prepared] = OrderedDict()
        self._bytes = 0

    @property
    def held_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def prepare(self, query: str) -> Prepared:
        digest = digest_of(query)
        found = self._entries.get(digest)
        if found is not None:
            self._entries.move_to_end(digest)
            return found
        prepared = self._prepare(query, digest)
        self._remember(prepared)
        return prepared

    def _parse(self, query: str, *, located: bool) -> DocumentNode:
        return parse(
            query,
            no_location=not located,
            max_lexical_tokens=MAX_TOKENS,
            max_comments=MAX_TOKENS,
            max_source_length=self._max_query_chars,
        )

    def _prepare(self, query: str, digest: bytes) -> Prepared:
        try:
            document = self._parse(query, located=False)
        except GraphQLError as error:
            # A syntax error is located by its position in the text, parsed or not.
            return _failed(digest, [error], PARSE_FAILED)
        errors, visited, roots = _cost_errors(document)
        if errors:
            return _failed(digest, errors, VALIDATION_FAILED, visited)
        errors = self._validate(document)
        if errors:
            # Word the errors with their positions in the text.
            located = self._parse(query, located=True)
            return _failed(digest, self._validate(located), VALIDATION_FAILED, visited)
        # The values a location-free AST keeps (names, literals) are slices of the text.
        estimate = _BYTES_PER_ENTRY + sys.getsizeof(query) + _node_count(document) * _BYTES_PER_NODE
        return Prepared(digest, document, (), estimate, visited, roots)

    def _validate(self, document: DocumentNode) -> list[GraphQLError]:
        return validate(
            self._schema,
            document,
            self._rules,
            max_errors=MAX_VALIDATION_ERRORS,
            hide_suggestions=self.hide_suggestions,
        )

    def _remember(self, prepared: Prepared) -> None:
        if prepared.estimated_bytes > self._max_bytes:
            return
        self._entries[prepared.digest] = prepared
        self._bytes += prepared.estimated_bytes
        while self._bytes > self._max_bytes or len(self._entries) > self._max_entries:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.estimated_bytes

    def coerce_variables(
        self,
        operation: OperationDefinitionNode,
        variables: dict[str, Any] | None,
        prepared: Prepared | None = None,
    ) -> tuple[dict[str, Any], list[GraphQLError]]:
        """The operation's variables as graphql-core will see them, or their errors
        (worded without suggestions in production).

        Plain scalar values are checked here: graphql-core's general coercion is the
        largest cost of a small query once its document is cached."""
        if prepared is not None:
            name = operation.name.value if operation.name else None
            if name not in prepared.simple:
                prepared.simple[name] = simple_variables(self._schema, operation)
            simple = prepared.simple[name]
            if simple is not None:
                coerced = coerce_simple(simple, variables or {})
                if coerced is not None:
                    return coerced, []
        result = get_variable_values(
            self._schema,
            operation.variable_definitions or (),
            variables or {},
            max_errors=MAX_VALIDATION_ERRORS,
            hide_suggestions=self.hide_suggestions,
        )
        if isinstance(result, list):
            return {}, [coded(e, BAD_USER_INPUT) for e in result]
        for definition in operation.variable_definitions or ():
            name = definition.variable.name.value
            type_ = type_from_ast(self._schema, definition.type)
            if (
                variables
                and name in variables
                and is_input_type(type_)
                and _bad_id(type_, variables[name])
            ):
                return {}, [
                    GraphQLError(
                        f"Variable '${name}' has invalid value: an ID is text without "
                        "unpaired surrogates.",
                        extensions={"code": BAD_USER_INPUT},
                    )
                ]
        return result.coerced, []
