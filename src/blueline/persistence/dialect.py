"""Every difference between PostgreSQL and SQLite that Blueline's SQL depends on, in one
place: placeholders, building JSON text in SQL, ordered aggregation, upserts.

Statements elsewhere in ``persistence`` are written once against these primitives, so
each decision (what a field looks like on the wire, how a list is ordered) exists once
for both databases; the test suite runs every path on both and compares.

JSON is built as text, not with the databases' JSON constructors: PostgreSQL's
``json_build_object`` puts spaces around colons and ``jsonb`` reorders keys, while a
GraphQL response must keep the document's order and be byte-identical on every path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

Name = Literal["postgresql", "sqlite"]
# How a bound value is typed on PostgreSQL (asyncpg infers nothing from Python values
# in every position, e.g. in `$1 IS NULL`).
ParamType = Literal["text", "bigint", "boolean", "timestamptz"]

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def json_key(key: str) -> str:
    """A GraphQL name as the SQL literal of its JSON key text (``"key":``)."""
    if not _IDENTIFIER.match(key):
        raise ValueError(f"not a GraphQL name: {key!r}")
    return f"'\"{key}\":'"


def sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class Dialect:
    name: Name

    @property
    def is_postgresql(self) -> bool:
        return self.name == "postgresql"

    # -- parameters

    def placeholder(self, index: int, kind: ParamType) -> str:
        """The ``index``-th (1-based) bound value; the same index may appear many times."""
        if self.is_postgresql:
            return f"${index}::{kind}"
        return f"?{index}"

    # -- JSON text of a value (every result is text; SQL NULL becomes 'null')

    def json_text(self, expr: str) -> str:
        if self.is_postgresql:
            return f"COALESCE(to_json(({expr})::text)::text, 'null')"
        return f"COALESCE(json_quote(CAST(({expr}) AS TEXT)), 'null')"

    def json_int(self, expr: str) -> str:
        if self.is_postgresql:
            return f"COALESCE(({expr})::text, 'null')"
        return f"COALESCE(CAST(({expr}) AS TEXT), 'null')"

    def json_bool(self, expr: str) -> str:
        return f"(CASE WHEN ({expr}) THEN 'true' WHEN NOT ({expr}) THEN 'false' ELSE 'null' END)"

    def json_datetime(self, expr: str) -> str:
        """RFC 3339 in UTC with microseconds and ``Z``: the one wire form of a timestamp
        (``wire_datetime`` in Python). SQLite stores ``YYYY-MM-DD HH:MM:SS.ffffff`` UTC."""
        if self.is_postgresql:
            text = f"to_char(({expr}) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
        else:
            text = f"replace(({expr}), ' ', 'T') || 'Z'"
        return f"COALESCE('\"' || {text} || '\"', 'null')"

    def json_array(self, element: str, source: str, order: str) -> str:
        """``[e1,e2,…]`` of ``element`` over ``source`` (``FROM … WHERE …``) in ``order``."""
        if self.is_postgresql:
            inner = f"(SELECT string_agg({element}, ',' ORDER BY {order}) {source})"
        else:
            # SQLite before 3.44 has no ORDER BY inside group_concat; it aggregates an
            # ordered subquery in its order.
            inner = (
                f"(SELECT group_concat(e, ',') FROM "
                f"(SELECT {element} AS e {source} ORDER BY {order}))"
            )
        return f"('[' || COALESCE({inner}, '') || ']')"

    def ordered_concat(self, element: str, order: str, where: str) -> str:
        """Comma-joined ``element`` of the current group's rows matching ``where``, in
        ``order`` (the rows of an already ordered derived table on SQLite)."""
        if self.is_postgresql:
            return (
                f"COALESCE(string_agg({element}, ',' ORDER BY {order}) FILTER (WHERE {where}), '')"
            )
        return f"COALESCE(group_concat({element}, ',') FILTER (WHERE {where}), '')"

    def member_of(self, expr: str, index: int) -> str:
        """``expr`` is one of the texts bound at ``index`` (see :meth:`members`): one
        statement text for any number of values."""
        if self.is_postgresql:
            return f"{expr} = ANY(${index}::text[])"
        return f"{expr} IN (SELECT value FROM json_each(?{index}))"

    def members(self, values: list[str]) -> Any:
        return list(values) if self.is_postgresql else json.dumps(values)

    def texts(self, index: int, alias: str, column: str) -> str:
        """A one-column table named ``alias`` of the texts bound at ``index`` (see
        :meth:`members`). PostgreSQL estimates an array parameter at ten rows where it
        takes a JSON record set for a hundred: joined to a table of a few thousand rows,
        a batch of a few is then probed by index instead of hashed against a full
        scan. The array is read through a sub-select so that the estimate is ten rows
        whatever values are bound: given the values themselves the planner counts them,
        finds every new plan cheaper than the cached one and plans on every call (a
        statement outside a write transaction may keep custom plans)."""
        if self.is_postgresql:
            return f"unnest((SELECT ${index}::text[])) AS {alias}({column})"
        return f"(SELECT value AS {column} FROM json_each(?{index})) AS {alias}"

    def rows(self, index: int, alias: str, columns: Sequence[tuple[str, ParamType]]) -> str:
        """A table named ``alias`` of the rows bound at ``index`` (see :meth:`rows_value`):
        one statement text applies a whole batch, whatever its size."""
        if self.is_postgresql:
            typed = ", ".join(f"{name} {kind}" for name, kind in columns)
            return f"json_to_recordset(${index}::json) AS {alias}({typed})"
        picked = ", ".join(f"json_extract(value, '$.{name}') AS {name}" for name, _ in columns)
        return f"(SELECT {picked} FROM json_each(?{index})) AS {alias}"

    @staticmethod
    def rows_value(rows: Sequence[Mapping[str, Any]]) -> str:
        return json.dumps(list(rows), separators=(",", ":"))

    @property
    def lock_rows(self) -> str:
        """Appended to a SELECT to lock its rows (SQLite's write lock already serialises
        writers)."""
        return " FOR UPDATE" if self.is_postgresql else ""

    # -- values bound to and read from raw statements

    def timestamp(self, value: datetime) -> Any:
        """A timestamp as the column stores it (SQLite: the text SQLAlchemy writes)."""
        if self.is_postgresql:
            return value
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")

    def read_timestamp(self, value: Any) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, datetime):
            return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
        return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)


POSTGRESQL = Dialect("postgresql")
SQLITE = Dialect("sqlite")


def dialect_named(name: str) -> Dialect:
    if name == "postgresql":
        return POSTGRESQL
    if name == "sqlite":
        return SQLITE
    raise ValueError(f"unsupported database {name!r}")
