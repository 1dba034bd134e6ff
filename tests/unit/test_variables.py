"""Plain scalar variables are coerced without graphql-core's general machinery; the
answer (values or errors) must be the one graphql-core gives, value for value."""

from __future__ import annotations

from typing import Any

from graphql import OperationDefinitionNode
from hypothesis import example, given, settings
from hypothesis import strategies as st

from blueline.api.schema import build_schema

DOCUMENT = """
query Q($id: ID!, $maybeId: ID, $text: String, $flag: Boolean!, $count: Int, $many: Int!) {
  node(id: $id) { id }
  auditEvents(setupId: $maybeId, after: $text, first: $count) @include(if: $flag) {
    edges { cursor }
  }
  imessageSetups(first: $many) { totalCount }
}"""
NAMES = ("id", "maybeId", "text", "flag", "count", "many")
SCHEMA = build_schema()
DOCUMENTS = SCHEMA.documents

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**33), max_value=2**33),
    st.sampled_from([2**31 - 1, 2**31, -(2**31), -(2**31) - 1]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.sampled_from(["\ud800", "ims_\udfff", ""]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def operation() -> tuple[Any, OperationDefinitionNode]:
    prepared = DOCUMENTS.prepare(DOCUMENT)
    assert prepared.valid, prepared.errors
    node = prepared.operation("Q")
    assert node is not None
    return prepared, node


def answer(coerced: dict[str, Any], errors: list[Any]) -> tuple[Any, ...]:
    return coerced, [(e.message, e.extensions) for e in errors]


# Required ones are mostly present and plain, so that every other value is tried with
# them: a missing required variable alone sends everything to graphql-core.
variable_sets = st.fixed_dictionaries(
    {
        "id": st.one_of(st.text(max_size=8), values),
        "flag": st.one_of(st.booleans(), values),
        "many": st.one_of(st.integers(-(2**31), 2**31 - 1), values),
    },
    optional={"maybeId": values, "text": values, "count": values, "unknown": values},
)


@settings(max_examples=500, deadline=None)
@example({"id": "ims_\ud800", "flag": True, "many": 1})  # an ID no database stores
@example({"id": "ims_1", "flag": True, "many": True})  # JSON true is no Int
@example({"id": 7, "flag": False, "many": 2**31})  # an Int as ID; beyond 32 bits
@given(st.one_of(variable_sets, st.dictionaries(st.sampled_from(NAMES), values)))
def test_plain_scalars_coerce_exactly_as_graphql_core_does(variables: dict[str, Any]) -> None:
    prepared, node = operation()
    fast = DOCUMENTS.coerce_variables(node, variables, prepared)
    general = DOCUMENTS.coerce_variables(node, variables)
    assert answer(*fast) == answer(*general)
    assert list(fast[0]) == list(general[0])  # in the same order


def test_the_plain_path_is_taken_for_plain_values_only() -> None:
    prepared, node = operation()
    plain = {"id": "ims_1", "flag": True, "many": 3}
    assert DOCUMENTS.coerce_variables(node, plain, prepared) == (plain, [])
    assert prepared.simple["Q"] is not None
    with_default = DOCUMENTS.prepare(
        "query D($n: Int = 3) { imessageSetups(first: $n) { totalCount } }"
    )
    default_node = with_default.operation("D")
    assert default_node is not None
    assert DOCUMENTS.coerce_variables(default_node, {}, with_default) == ({"n": 3}, [])
    assert with_default.simple["D"] is None
