"""The read model: every field a client can read, declared once, with where it comes from.

Each GraphQL object type lists its fields and, for each, its source in storage. The
rest derives from this table:

- the Strawberry types (``schema.objects``) and so ``schema.graphql``;
- the SQL that answers reads, both the compiled documents and the ordinary resolvers'
  full records (``persistence.reads``);
- the snapshot stored with every event (the full record, built by the same SQL), from
  which subscriptions and replay answer;
- the renderer that answers subscriptions from those snapshots (``api.planning``).

A *record* is a JSON object keyed by GraphQL field name holding every field of its type
in wire form (datetimes as RFC 3339 text in UTC, enums as their names); a relation holds
every related record, hidden ones included, and the field's arguments filter them.

Framework-free and storage-engine-free: sources name columns; ``persistence`` turns them
into SQL for each database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from blueline import ids
from blueline.domain import LineStatus, SetupStatus


class Kind(StrEnum):
    ID = "ID"
    STRING = "String"
    INT = "Int"
    BOOLEAN = "Boolean"
    DATETIME = "DateTime"
    ENUM = "Enum"
    LIST = "List"


@dataclass(frozen=True)
class Column:
    """The value of a column of the type's own table."""

    name: str


@dataclass(frozen=True)
class ColumnWhen:
    """A column's value while another column holds ``equals``; null otherwise."""

    name: str
    when: str
    equals: str


@dataclass(frozen=True)
class CountOf:
    """How many visible rows a relation has (hidden ones never count)."""

    relation: str


@dataclass(frozen=True)
class ListOf:
    """The related rows, in the relation's order, filtered by the field's arguments."""

    relation: str


Source = Column | ColumnWhen | CountOf | ListOf


@dataclass(frozen=True)
class Argument:
    name: str
    kind: Kind
    default: Any
    description: str


@dataclass(frozen=True)
class Relation:
    """Child rows of another type that point at this one.

    Rows whose ``hidden_column`` equals ``hidden_value`` are left out of lists unless
    the field's ``reveal_argument`` is true, and never counted.
    """

    child: str
    foreign_key: str
    order_by: str
    hidden_column: str
    hidden_value: str
    reveal_argument: str

    def is_hidden(self, record: dict[str, Any], child: ObjectType) -> bool:
        return bool(record[child.field_for_column(self.hidden_column).name] == self.hidden_value)


@dataclass(frozen=True)
class Field:
    name: str
    kind: Kind
    source: Source
    nullable: bool = False
    description: str | None = None
    enum: type[StrEnum] | None = None
    item: str | None = None
    arguments: tuple[Argument, ...] = ()


@dataclass(frozen=True)
class ObjectType:
    name: str
    table: str
    id_prefix: str
    description: str
    fields: tuple[Field, ...]
    relations: dict[str, Relation] = field(default_factory=dict)

    def field(self, name: str) -> Field:
        for candidate in self.fields:
            if candidate.name == name:
                return candidate
        raise KeyError(f"{self.name} has no field {name!r}")

    def field_for_column(self, column: str) -> Field:
        for candidate in self.fields:
            if isinstance(candidate.source, Column) and candidate.source.name == column:
                return candidate
        raise KeyError(f"{self.name} exposes no field for column {column!r}")


PHONE_LINE = ObjectType(
    name="PhoneLine",
    table="phone_line",
    id_prefix=ids.PHONE_LINE,
    description="A phone line of a setup: pending until the provider places a number.",
    fields=(
        Field("id", Kind.ID, Column("id")),
        Field(
            "status",
            Kind.ENUM,
            Column("status"),
            enum=LineStatus,
            description="PENDING, ASSIGNED, or RELEASED (final)",
        ),
        Field(
            "phoneNumber",
            Kind.STRING,
            Column("phone_number"),
            nullable=True,
            description="E.164, set once ASSIGNED",
        ),
        Field(
            "requestId",
            Kind.STRING,
            ColumnWhen("request_id", when="status", equals=LineStatus.PENDING),
            nullable=True,
            description="The outstanding provider request, set while PENDING",
        ),
        Field("requestedAt", Kind.DATETIME, Column("requested_at")),
        Field("assignedAt", Kind.DATETIME, Column("assigned_at"), nullable=True),
        Field("releasedAt", Kind.DATETIME, Column("released_at"), nullable=True),
    ),
)

SETUP = ObjectType(
    name="IMessageSetup",
    table="imessage_setup",
    id_prefix=ids.SETUP,
    description="An iMessage channel: a subaccount at the provider and its phone lines.",
    fields=(
        Field("id", Kind.ID, Column("id")),
        Field("businessName", Kind.STRING, Column("business_name")),
        Field("label", Kind.STRING, Column("label"), description="Operator-facing label"),
        Field(
            "status",
            Kind.ENUM,
            Column("status"),
            enum=SetupStatus,
            description="CLOSED, SUSPENDED, ACTIVE (an assigned line) or PENDING, in that order",
        ),
        Field(
            "phoneLineCount",
            Kind.INT,
            CountOf("lines"),
            description="Lines PENDING or ASSIGNED (released ones are not counted)",
        ),
        Field(
            "phoneLines",
            Kind.LIST,
            ListOf("lines"),
            item="PhoneLine",
            description="The setup's lines, oldest first",
            arguments=(
                Argument(
                    "includeReleased",
                    Kind.BOOLEAN,
                    False,
                    "Also list RELEASED lines",
                ),
            ),
        ),
        Field("createdAt", Kind.DATETIME, Column("created_at")),
        Field("updatedAt", Kind.DATETIME, Column("updated_at")),
        Field("suspendedAt", Kind.DATETIME, Column("suspended_at"), nullable=True),
        Field("closedAt", Kind.DATETIME, Column("closed_at"), nullable=True),
    ),
    relations={
        "lines": Relation(
            child="PhoneLine",
            foreign_key="setup_id",
            order_by="id",
            hidden_column="status",
            hidden_value=LineStatus.RELEASED,
            reveal_argument="includeReleased",
        )
    },
)

AUDIT_EVENT = ObjectType(
    name="AuditEvent",
    table="audit_event",
    id_prefix=ids.AUDIT_EVENT,
    description="One change to a setup or a line, who made it and from which request.",
    fields=(
        Field("id", Kind.ID, Column("id")),
        Field("occurredAt", Kind.DATETIME, Column("occurred_at")),
        Field(
            "action",
            Kind.STRING,
            Column("action"),
            description="setup.created, setup.updated, setup.suspended, setup.reactivated, "
            "setup.closed, line.requested, line.assigned or line.released",
        ),
        Field(
            "actor",
            Kind.STRING,
            Column("actor"),
            description='"api_key:<key id>", "provider", "system:reconcile", '
            '"system:recovery" or "cli"',
        ),
        Field("setupId", Kind.ID, Column("setup_id")),
        Field("phoneLineId", Kind.ID, Column("phone_line_id"), nullable=True),
        Field(
            "requestId",
            Kind.STRING,
            Column("request_id"),
            nullable=True,
            description="The X-Request-ID of the request that caused it, when there was one",
        ),
        Field(
            "changes",
            Kind.STRING,
            Column("changes"),
            description="JSON object {field: [before, after]}; never a secret",
        ),
    ),
)

TYPES: dict[str, ObjectType] = {t.name: t for t in (SETUP, PHONE_LINE, AUDIT_EVENT)}
NODE_TYPES_BY_PREFIX: dict[str, ObjectType] = {t.id_prefix: t for t in TYPES.values()}


def node_type_of(node_id: str) -> ObjectType | None:
    """The type an opaque id belongs to (ids carry their type in their prefix)."""
    prefix = ids.prefix_of(node_id)
    return NODE_TYPES_BY_PREFIX.get(prefix) if prefix else None


def visible_children(
    parent: ObjectType, relation_name: str, record: dict[str, Any], reveal: bool
) -> list[dict[str, Any]]:
    """A record's related records as a list field shows them."""
    relation = parent.relations[relation_name]
    child = TYPES[relation.child]
    children: list[dict[str, Any]] = record[_list_field(parent, relation_name).name]
    if reveal:
        return children
    return [c for c in children if not relation.is_hidden(c, child)]


def _list_field(parent: ObjectType, relation_name: str) -> Field:
    for candidate in parent.fields:
        if isinstance(candidate.source, ListOf) and candidate.source.relation == relation_name:
            return candidate
    raise KeyError(relation_name)


# ----------------------------------------------------------------- lists and roots


@dataclass(frozen=True)
class Connection:
    """A Relay connection over one type: newest first, keyset-paged by ``order_column``.

    Cursors are ``cursor_prefix`` + the key; the prefix names the ordering, so a cursor
    from another list (or another ordering) is refused instead of misread.
    """

    name: str
    edge_name: str
    node: ObjectType
    order_column: str
    cursor_prefix: str
    counts_total: bool


@dataclass(frozen=True)
class Filter:
    """A list argument that restricts rows to ``column = value`` when given."""

    argument: Argument
    column: str
    enum: type[StrEnum] | None = None


@dataclass(frozen=True)
class ListRoot:
    name: str
    connection: Connection
    filters: tuple[Filter, ...]
    description: str


@dataclass(frozen=True)
class OneRoot:
    """One object by id; null when missing or not the caller's. ``types`` are the types
    the id may name (one for a typed lookup, every node type for ``node``)."""

    name: str
    types: tuple[ObjectType, ...]
    description: str


MAX_PAGE = 100
DEFAULT_PAGE = 20

SETUP_CONNECTION = Connection(
    name="IMessageSetupConnection",
    edge_name="IMessageSetupEdge",
    node=SETUP,
    order_column="id",
    cursor_prefix="c1:",
    counts_total=True,
)
AUDIT_CONNECTION = Connection(
    name="AuditEventConnection",
    edge_name="AuditEventEdge",
    node=AUDIT_EVENT,
    order_column="seq",
    cursor_prefix="a1:",
    counts_total=False,
)

LIST_ROOTS: dict[str, ListRoot] = {
    "imessageSetups": ListRoot(
        name="imessageSetups",
        connection=SETUP_CONNECTION,
        filters=(
            Filter(
                Argument("status", Kind.ENUM, None, "Only setups with this status"),
                column="status",
                enum=SetupStatus,
            ),
        ),
        description="Setups of your workspace, newest first",
    ),
    "auditEvents": ListRoot(
        name="auditEvents",
        connection=AUDIT_CONNECTION,
        filters=(
            Filter(
                Argument("setupId", Kind.ID, None, "Only changes to this setup"),
                column="setup_id",
            ),
        ),
        description="Every change to your workspace's setups and lines, newest first",
    ),
}
ONE_ROOTS: dict[str, OneRoot] = {
    "imessageSetup": OneRoot(
        name="imessageSetup",
        types=(SETUP,),
        description="One setup; null when missing or not yours",
    ),
    "node": OneRoot(
        name="node",
        types=(SETUP, PHONE_LINE, AUDIT_EVENT),
        description="Any object by its id; null when missing or not yours",
    ),
}


# --------------------------------------------------------------------- live updates


@dataclass(frozen=True)
class UpdateShape:
    """What a subscription yields per event: its id, optionally what changed, and
    snapshots (records) of objects as the change left them."""

    name: str
    description: str
    objects: tuple[tuple[str, ObjectType], ...]
    has_change: bool


PHONE_LINE_UPDATE = UpdateShape(
    name="PhoneLineUpdate",
    description="A line created, assigned or released, with its setup as the change left it",
    objects=(("setup", SETUP), ("phoneLine", PHONE_LINE)),
    has_change=False,
)
SETUP_UPDATE = UpdateShape(
    name="IMessageSetupUpdate",
    description="Any change to a setup or its lines, with the setup as the change left it",
    objects=(("setup", SETUP),),
    has_change=True,
)
