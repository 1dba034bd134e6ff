"""Reads compiled to SQL: a whole query plan becomes one statement whose single value is
the JSON text of the response's ``data``.

Each field's SQL comes from its read-model source (``readmodel``), so the compiled
documents, the ordinary resolvers' records and the event snapshots all read a field the
same way. The caller's workspace is applied here, to every root, by :func:`_scope`: no
caller of this module writes a tenancy predicate.

Values a request binds (variables, normalised list arguments, the workspace) are named
slots; :class:`CompiledRead` lists them in placeholder order.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from blueline import readmodel as rm
from blueline.batching import Batcher
from blueline.domain import SetupState
from blueline.errors import StorageUnavailable
from blueline.persistence.database import CACHEABLE_STATEMENT_CHARS, UNAVAILABLE
from blueline.persistence.dialect import Dialect, ParamType, json_key, sql_literal
from blueline.selection import TYPENAME, Alternatives, Pick, QueryPlan, Selection, Slot

if TYPE_CHECKING:
    from blueline.persistence.database import Database

WORKSPACE_SLOT = "workspace"


def root_slot(index: int, name: str) -> str:
    """The slot of a root field's normalised argument (``first``, ``after``, ``id``, a
    filter), by the root's position in the plan."""
    return f"r{index}.{name}"


def variable_slot(name: str) -> str:
    return f"var.{name}"


@dataclass(frozen=True)
class CompiledRead:
    sql: str
    slots: tuple[str, ...]

    def parameters(self, values: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(values.get(slot) for slot in self.slots)


class SqlBuilder:
    def __init__(
        self, dialect: Dialect, present: frozenset[str] = frozenset(), *, offset: int = 0
    ) -> None:
        self.dialect = dialect
        # Placeholders start after `offset` bound values, so that copies of a statement
        # can share one (see `Reads`).
        self._offset = offset
        # Optional slots that hold a value in this variant: a predicate on an absent one
        # is left out of the SQL rather than written as `$n IS NULL OR …`, which would
        # keep PostgreSQL's generic plans from using the index.
        self.present = present
        self._slots: dict[str, int] = {}
        self._aliases = 0

    def param(self, slot: str, kind: ParamType) -> str:
        index = self._slots.setdefault(slot, len(self._slots) + 1)
        return self.dialect.placeholder(self._offset + index, kind)

    def alias(self) -> str:
        self._aliases += 1
        return f"t{self._aliases}"

    def slots(self) -> tuple[str, ...]:
        return tuple(sorted(self._slots, key=self._slots.__getitem__))


# ----------------------------------------------------------------- tenancy, visibility


def _scope(b: SqlBuilder, type_: rm.ObjectType, alias: str) -> str:
    """Rows of ``type_`` the caller may see: its workspace only, and setups only once
    provisioning finished (a half-created setup is no one's to see)."""
    workspace = f"{alias}.workspace_id = {b.param(WORKSPACE_SLOT, 'text')}"
    if type_ is rm.SETUP:
        return f"{workspace} AND {alias}.state = {sql_literal(SetupState.READY)}"
    if type_ is rm.PHONE_LINE:
        return (
            f"{workspace} AND EXISTS (SELECT 1 FROM {rm.SETUP.table} p WHERE p.id = "
            f"{alias}.setup_id AND p.state = {sql_literal(SetupState.READY)})"
        )
    return workspace


# --------------------------------------------------------------------------- objects


def _value(b: SqlBuilder, field: rm.Field, expr: str) -> str:
    d = b.dialect
    if field.kind in (rm.Kind.ID, rm.Kind.STRING, rm.Kind.ENUM):
        return d.json_text(expr)
    if field.kind is rm.Kind.INT:
        return d.json_int(expr)
    if field.kind is rm.Kind.BOOLEAN:
        return d.json_bool(expr)
    if field.kind is rm.Kind.DATETIME:
        return d.json_datetime(expr)
    raise ValueError(f"no scalar encoding for {field.kind}")


def _argument_sql(b: SqlBuilder, value: Any, kind: ParamType) -> str:
    if isinstance(value, Slot):
        return b.param(value.name, kind)
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if value is None:
        return "NULL"
    raise ValueError(f"unsupported literal {value!r}")


def _field_sql(b: SqlBuilder, type_: rm.ObjectType, alias: str, pick: Pick) -> str:
    if pick.name == TYPENAME:
        return sql_literal(json.dumps(type_.name))
    field = type_.field(pick.name)
    source = field.source
    if isinstance(source, rm.Column):
        return _value(b, field, f"{alias}.{source.name}")
    if isinstance(source, rm.ColumnWhen):
        expr = (
            f"CASE WHEN {alias}.{source.when} = {sql_literal(source.equals)} "
            f"THEN {alias}.{source.name} END"
        )
        return _value(b, field, expr)
    relation = type_.relations[source.relation]
    child = rm.TYPES[relation.child]
    c = b.alias()
    visible = f"{c}.{relation.hidden_column} <> {sql_literal(relation.hidden_value)}"
    if isinstance(source, rm.CountOf):
        return b.dialect.json_int(
            f"SELECT count(*) FROM {child.table} {c} "
            f"WHERE {c}.{relation.foreign_key} = {alias}.id AND {visible}"
        )
    assert isinstance(source, rm.ListOf)
    assert isinstance(pick.children, Selection)
    reveal = _argument_sql(b, pick.argument(relation.reveal_argument, False), "boolean")
    element = _object_sql(b, child, c, pick.children)
    return b.dialect.json_array(
        element,
        f"FROM {child.table} {c} WHERE {c}.{relation.foreign_key} = {alias}.id "
        f"AND (COALESCE({reveal}, FALSE) OR {visible})",
        f"{c}.{relation.order_by}",
    )


def _object_sql(b: SqlBuilder, type_: rm.ObjectType, alias: str, selection: Selection) -> str:
    return _json_object([(pick.key, _field_sql(b, type_, alias, pick)) for pick in selection.picks])


def _json_object(members: list[tuple[str, str]]) -> str:
    if not members:
        return "'{}'"
    parts: list[str] = []
    for position, (key, value) in enumerate(members):
        prefix = json_key(key) if position == 0 else "',' || " + json_key(key)
        parts.append(f"{prefix} || {value}")
    return "('{' || " + " || ".join(parts) + " || '}')"


# ------------------------------------------------------------------------------ roots


def _one_root(b: SqlBuilder, index: int, root: rm.OneRoot, pick: Pick) -> str:
    node_id = b.param(root_slot(index, "id"), "text")
    alternatives: list[str] = []
    for type_ in root.types:
        if isinstance(pick.children, Alternatives):
            selection = pick.children.for_type(type_.name)
        else:
            assert pick.children is not None
            selection = pick.children
        alias = b.alias()
        alternatives.append(
            f"(SELECT {_object_sql(b, type_, alias, selection)} FROM {type_.table} {alias} "
            f"WHERE {alias}.id = {node_id} AND {_scope(b, type_, alias)})"
        )
    return f"COALESCE({', '.join(alternatives)}, 'null')"


def optional_slots(plan: QueryPlan) -> tuple[str, ...]:
    """Slots whose presence selects a variant of the plan's statement."""
    slots: list[str] = []
    for index, pick in enumerate(plan.roots):
        root = rm.LIST_ROOTS.get(pick.name)
        if root is not None:
            slots.append(root_slot(index, "after"))
            slots.extend(root_slot(index, f.argument.name) for f in root.filters)
    return tuple(slots)


def _filters(b: SqlBuilder, index: int, root: rm.ListRoot, alias: str) -> str:
    clauses = []
    for f in root.filters:
        slot = root_slot(index, f.argument.name)
        if slot in b.present:
            clauses.append(f" AND {alias}.{f.column} = {b.param(slot, 'text')}")
    return "".join(clauses)


def _cursor_sql(b: SqlBuilder, connection: rm.Connection, key_expr: str) -> str:
    key_text = key_expr if connection.order_column == "id" else f"CAST({key_expr} AS TEXT)"
    return b.dialect.json_text(f"{sql_literal(connection.cursor_prefix)} || {key_text}")


def _list_root(b: SqlBuilder, index: int, root: rm.ListRoot, pick: Pick) -> str:
    """One keyset page, newest first, in one derived table of ``first + 1`` rows (the
    extra row answers ``hasNextPage``) aggregated into the connection's JSON."""
    connection = root.connection
    node_type = connection.node
    order = connection.order_column
    first = b.param(root_slot(index, "first"), "bigint")
    after_slot = root_slot(index, "after")
    after = (
        b.param(after_slot, "text" if order == "id" else "bigint")
        if after_slot in b.present
        else None
    )
    t = b.alias()
    where = f"{_scope(b, node_type, t)}{_filters(b, index, root, t)}"
    keyset = f" AND {t}.{order} < {after}" if after is not None else ""
    selection = pick.children
    assert isinstance(selection, Selection)

    edge_members: list[tuple[str, str]] = []
    for edges_pick in selection.picks:
        if edges_pick.name != "edges":
            continue
        assert isinstance(edges_pick.children, Selection)
        members: list[tuple[str, str]] = []
        for edge_pick in edges_pick.children.picks:
            if edge_pick.name == "cursor":
                members.append((edge_pick.key, _cursor_sql(b, connection, f"{t}.{order}")))
            elif edge_pick.name == "node":
                assert isinstance(edge_pick.children, Selection)
                members.append((edge_pick.key, _object_sql(b, node_type, t, edge_pick.children)))
            else:
                members.append((edge_pick.key, sql_literal(json.dumps(connection.edge_name))))
        edge_members.append((edges_pick.key, _json_object(members)))

    columns = [f"{t}.{order} AS k", f"row_number() OVER (ORDER BY {t}.{order} DESC) AS rn"]
    columns += [f"{edge_sql} AS e{i}" for i, (_key, edge_sql) in enumerate(edge_members)]
    page = (
        f"SELECT {', '.join(columns)} FROM {node_type.table} {t} WHERE {where}{keyset} "
        f"ORDER BY {t}.{order} DESC LIMIT {first} + 1"
    )
    in_page = f"page.rn <= {first}"
    d = b.dialect

    def cursor_of(aggregate: str) -> str:
        key = f"{aggregate}(page.k) FILTER (WHERE {in_page})"
        return _cursor_sql(b, connection, key)

    members = []
    edge_index = 0
    for conn_pick in selection.picks:
        if conn_pick.name == "edges":
            joined = d.ordered_concat(f"page.e{edge_index}", "page.rn", in_page)
            members.append((conn_pick.key, f"('[' || {joined} || ']')"))
            edge_index += 1
        elif conn_pick.name == "pageInfo":
            assert isinstance(conn_pick.children, Selection)
            info: list[tuple[str, str]] = []
            for info_pick in conn_pick.children.picks:
                if info_pick.name == "hasNextPage":
                    info.append((info_pick.key, d.json_bool(f"count(page.k) > {first}")))
                elif info_pick.name == "hasPreviousPage":
                    # Rows at or after the cursor's key come before this page.
                    if after is None:
                        info.append((info_pick.key, "'false'"))
                    else:
                        p = b.alias()
                        earlier = (
                            f"EXISTS (SELECT 1 FROM {node_type.table} {p} "
                            f"WHERE {_scope(b, node_type, p)}{_filters(b, index, root, p)} "
                            f"AND {p}.{order} >= {after})"
                        )
                        info.append((info_pick.key, d.json_bool(earlier)))
                elif info_pick.name == "startCursor":
                    info.append((info_pick.key, cursor_of("max")))
                elif info_pick.name == "endCursor":
                    info.append((info_pick.key, cursor_of("min")))
                else:
                    info.append((info_pick.key, sql_literal('"PageInfo"')))
            members.append((conn_pick.key, _json_object(info)))
        elif conn_pick.name == "totalCount":
            c = b.alias()
            members.append(
                (
                    conn_pick.key,
                    d.json_int(
                        f"SELECT count(*) FROM {node_type.table} {c} "
                        f"WHERE {_scope(b, node_type, c)}{_filters(b, index, root, c)}"
                    ),
                )
            )
        else:
            members.append((conn_pick.key, sql_literal(json.dumps(connection.name))))
    # Joined onto one row and grouped by it, so the connection is one row even when the
    # page is empty (and whether or not any member aggregates).
    return (
        f"(SELECT {_json_object(members)} FROM (SELECT 1 AS one) base "
        f"LEFT JOIN ({page}) page ON TRUE GROUP BY base.one)"
    )


def compile_query(
    plan: QueryPlan, dialect: Dialect, present: frozenset[str] = frozenset(), *, offset: int = 0
) -> CompiledRead:
    """The statement answering ``plan``: one row, one column, the ``data`` object's JSON.
    ``present`` names the :func:`optional_slots` that hold a value; placeholders start
    after ``offset`` bound values.

    One statement reads one snapshot, so a page and its ``totalCount`` always agree.
    """
    b = SqlBuilder(dialect, present, offset=offset)
    members: list[tuple[str, str]] = []
    for index, pick in enumerate(plan.roots):
        if pick.name == TYPENAME:
            members.append((pick.key, "'\"Query\"'"))
        elif pick.name in rm.LIST_ROOTS:
            members.append((pick.key, _list_root(b, index, rm.LIST_ROOTS[pick.name], pick)))
        else:
            members.append((pick.key, _one_root(b, index, rm.ONE_ROOTS[pick.name], pick)))
    return CompiledRead(sql=f"SELECT {_json_object(members)}", slots=b.slots())


def record_sql(b: SqlBuilder, type_: rm.ObjectType, alias: str) -> str:
    """The full record of the ``alias`` row of ``type_`` (for snapshots written inside a
    statement that selects ``FROM <table> <alias>``)."""
    return _object_sql(b, type_, alias, full_selection(type_))


def full_selection(type_: rm.ObjectType) -> Selection:
    """Every field of a type, keyed by its own name, lists with hidden rows included."""
    picks: list[Pick] = []
    for field in type_.fields:
        if isinstance(field.source, rm.ListOf):
            relation = type_.relations[field.source.relation]
            child = rm.TYPES[relation.child]
            picks.append(
                Pick(
                    key=field.name,
                    name=field.name,
                    arguments=((relation.reveal_argument, True),),
                    children=full_selection(child),
                )
            )
        else:
            picks.append(Pick(key=field.name, name=field.name))
    return Selection(type_.name, tuple(picks))


# ------------------------------------------------------------------ ordinary records


def _page_info() -> Selection:
    return Selection(
        "PageInfo",
        tuple(Pick(n, n) for n in ("hasNextPage", "hasPreviousPage", "startCursor", "endCursor")),
    )


@cache
def list_records_plan(root_name: str, *, with_total: bool) -> QueryPlan:
    """A page of full records with its cursors and page info (for resolvers)."""
    root = rm.LIST_ROOTS[root_name]
    node = Pick("node", "node", children=full_selection(root.connection.node))
    edges = Pick(
        "edges",
        "edges",
        children=Selection(root.connection.edge_name, (Pick("cursor", "cursor"), node)),
    )
    picks = [edges, Pick("pageInfo", "pageInfo", children=_page_info())]
    if with_total:
        picks.append(Pick("totalCount", "totalCount"))
    return QueryPlan(
        (Pick(root_name, root_name, children=Selection(root.connection.name, tuple(picks))),)
    )


@cache
def one_record_plan(root_name: str) -> QueryPlan:
    root = rm.ONE_ROOTS[root_name]
    alternatives = Alternatives(tuple(full_selection(t) for t in root.types))
    return QueryPlan((Pick(root_name, root_name, children=alternatives),))


# Reads of one statement that are in flight together go to PostgreSQL as one statement
# of copies, `SELECT (q1), (q2), …`, each with its own values: one round trip, one
# parse of the answer and one executor start instead of one each. Two such statements
# of one text run at once (one can be on the wire while the next fills); reads that run
# alone use as many connections as the pool has. A batch never grows past what the driver
# keeps prepared, nor past a budget of database time, so that cheap reads share
# statements while expensive ones (a `totalCount` over a large workspace) run alone,
# side by side on the pool's connections, instead of one after the other in one
# statement.
_TOGETHER_CONCURRENCY = 2
_TOGETHER_MAX = 16
BATCH_BUDGET_S = 0.002
# The last column of every statement sent through `BatchedRead`: the time PostgreSQL
# spent executing it, measured by PostgreSQL, so that neither the network nor this
# process's event loop counts towards a read's cost (planning, done at bind, does not
# count either).
_SPENT = "extract(epoch FROM clock_timestamp() - statement_timestamp())::float8"


class BatchedRead:
    """A compiled read and the batcher that sends its concurrent runs together."""

    __slots__ = (
        "_budget_s",
        "_copies",
        "_counted",
        "_db",
        "_dialect",
        "_plan",
        "_pool_size",
        "_present",
        "batcher",
        "compiled",
        "cost_s",
        "most",
    )

    def __init__(
        self,
        plan: QueryPlan,
        present: frozenset[str],
        dialect: Dialect,
        db: Database,
        *,
        budget_s: float = BATCH_BUDGET_S,
        pool_size: int = _TOGETHER_CONCURRENCY,
        counted: Callable[[int], None] = lambda _chars: None,
    ) -> None:
        self._counted = counted
        self._plan = plan
        self._present = present
        self._dialect = dialect
        self._db = db
        self._budget_s = budget_s
        self._pool_size = pool_size
        self.compiled = compile_query(plan, dialect, present)
        self._copies: dict[int, str] = {}
        self.most = self._most_copies() if dialect.is_postgresql else 1
        # A moving average of one copy's database time (0 until it first runs).
        self.cost_s = 0.0
        # Each run's values and when it arrived.
        self.batcher: Batcher[tuple[tuple[Any, ...], float], str | None] = Batcher(
            self._run,
            max_size=self.most,
            concurrency=_TOGETHER_CONCURRENCY,
            # A read that fails for its own values (not for the database) fails alone.
            alone_on=lambda exc: not isinstance(exc, StorageUnavailable),
            name="blueline-reads-together",
        )

    async def submit(self, arguments: tuple[Any, ...]) -> str:
        text = await self.batcher.submit((arguments, time.monotonic()))
        if text is None:
            raise StorageUnavailable(UNAVAILABLE)
        return text

    async def _run(self, batch: list[tuple[tuple[Any, ...], float]]) -> list[str | None]:
        # A read queued here behind statements of its kind (stuck on a lock, say) has
        # waited for a connection as surely as one queued in the pool: past the pool's
        # timeout it is refused, as the pool would refuse it, rather than sent late.
        now = time.monotonic()
        wait_s = self._db.limits.pool_timeout_s
        late = [now - arrived > wait_s for _, arrived in batch]
        live = [arguments for (arguments, _), over in zip(batch, late, strict=True) if not over]
        texts = iter(await self._fetch(live) if live else [])
        return [None if over else next(texts) for over in late]

    async def _fetch(self, batch: list[tuple[Any, ...]]) -> list[str]:
        arguments = batch[0] if len(batch) == 1 else [v for args in batch for v in args]
        started = time.perf_counter()
        try:
            async with self._db.read() as conn:
                row = await conn.fetchrow(self.copies(len(batch)), arguments)
        except StorageUnavailable:
            # A batch past the statement timeout teaches the cost too (timed here, the
            # only clock there is), so the next runs go alone rather than time out.
            self._learn(time.perf_counter() - started, len(batch))
            raise
        assert row is not None  # a SELECT without FROM is one row
        *texts, spent = row
        self._learn(float(spent), len(batch))
        return [str(text) for text in texts]

    def _learn(self, spent_s: float, count: int) -> None:
        sample = max(spent_s / count, 1e-6)
        self.cost_s = sample if not self.cost_s else self.cost_s + (sample - self.cost_s) * 0.2
        size = self.batcher.max_size = max(1, min(self.most, int(self._budget_s / self.cost_s)))
        # Batches of two or more run two at a time: more at once measured slower on the
        # list and the tail longer. Reads too dear to share run side by side instead,
        # the ones already waiting included.
        self.batcher.full_concurrency = self._pool_size if size == 1 else _TOGETHER_CONCURRENCY

    def copies(self, count: int) -> str:
        """One statement whose first ``count`` columns answer ``count`` runs of this
        one, the k-th with the k-th run's values, and whose last is the time spent."""
        sql = self._copies.get(count)
        if sql is None:
            sql = self._copies[count] = self._copy_text(count)
            self._counted(len(sql))
        return sql

    def _most_copies(self) -> int:
        """The most copies that fit in a cacheable statement. A copy's placeholders
        grow longer with its offset (`$1` becomes `$49`), so the last copy of the
        first estimate, compiled once, bounds every copy before it."""
        room = CACHEABLE_STATEMENT_CHARS - len("SELECT ") - len(f", {_SPENT}")
        estimate = max(1, min(_TOGETHER_MAX, room // (len(self.compiled.sql) + 4)))
        width = len(self.compiled.slots)
        last = compile_query(
            self._plan, self._dialect, self._present, offset=(estimate - 1) * width
        )
        return max(1, min(estimate, room // (len(last.sql) + 4)))

    def _copy_text(self, count: int) -> str:
        width = len(self.compiled.slots)
        parts = (
            compile_query(self._plan, self._dialect, self._present, offset=k * width).sql
            for k in range(count)
        )
        return "SELECT " + ", ".join(f"({part})" for part in parts) + f", {_SPENT}"


class Reads:
    """Runs compiled reads; statements are compiled once per plan and variant."""

    def __init__(
        self,
        db: Database,
        *,
        max_statements: int = 2048,
        max_chars: int = 32 * 1024 * 1024,
        batch_budget_s: float = BATCH_BUDGET_S,
    ) -> None:
        self._db = db
        self._budget_s = batch_budget_s
        # Each read may hold up to 16 statement texts: the cache is bounded by their
        # size as well as by their number (distinct documents are the caller's choice).
        self._max_chars = max_chars
        self._chars = 0
        self._compiled: dict[tuple[QueryPlan, frozenset[str]], BatchedRead] = {}
        self._optional: dict[QueryPlan, tuple[str, ...]] = {}
        self._max = max_statements

    def entry(self, plan: QueryPlan, values: dict[str, Any]) -> BatchedRead:
        optional = self._optional.get(plan)
        if optional is None:
            optional = self._optional[plan] = optional_slots(plan)
        present = frozenset(s for s in optional if values.get(s) is not None)
        key = (plan, present)
        entry = self._compiled.get(key)
        if entry is None:
            if len(self._compiled) >= self._max or self._chars >= self._max_chars:
                # Batches in flight keep their statement; only the lookup forgets it.
                self._compiled.clear()
                self._optional.clear()
                self._chars = 0
            entry = BatchedRead(
                plan,
                present,
                self._db.dialect,
                self._db,
                budget_s=self._budget_s,
                pool_size=self._db.limits.raw_pool_size,
                counted=self._count,
            )
            self._compiled[key] = entry
            self._chars += len(entry.compiled.sql)
        return entry

    def _count(self, chars: int) -> None:
        self._chars += chars

    async def data_text(self, plan: QueryPlan, values: dict[str, Any]) -> str:
        """The JSON text of ``data`` for ``plan`` with these slot values."""
        entry = self.entry(plan, values)
        arguments = entry.compiled.parameters(values)
        if self._db.dialect.is_postgresql:
            return await entry.submit(arguments)
        # SQLite answers one statement at a time anyway: nothing to share.
        async with self._db.read() as conn:
            text: str = await conn.fetchval(entry.compiled.sql, arguments)
        return text

    async def data(self, plan: QueryPlan, values: dict[str, Any]) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(await self.data_text(plan, values))
        return parsed

    async def close(self) -> None:
        """Cancels the reads still waiting or running (at shutdown)."""
        entries = list(self._compiled.values())
        self._compiled.clear()
        for entry in entries:
            await entry.batcher.close()
