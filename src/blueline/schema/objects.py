"""The GraphQL object types, generated from the read model.

Every object is served from a *record* (``readmodel``): a dict keyed by field name in
wire form. Resolvers here only pick from it, so a field added to the read model
appears in the schema, in compiled reads, in event snapshots and in subscriptions
without being written anywhere else.


Annotations here are evaluated at import time (no ``from __future__ import
annotations``): the generated resolvers' argument types are built at run time.
"""

from typing import Annotated, Any

import strawberry
from strawberry.types import Info

from blueline import readmodel as rm
from blueline.schema.enums import BY_DOMAIN
from blueline.schema.scalars import DateTime

Record = dict[str, Any]


@strawberry.interface(description="An object with a globally unique, opaque id")
class Node:
    id: strawberry.ID

    @classmethod
    def resolve_type(cls, obj: Any, _info: Info[Any, Any], _type: Any) -> str:
        # Ids carry their type in their prefix, so a bare record is enough.
        found = rm.node_type_of(str(obj["id"]))
        if found is None:  # pragma: no cover - only read-model records get here
            raise TypeError("not a node record")
        return found.name


_SCALARS: dict[rm.Kind, Any] = {
    rm.Kind.ID: strawberry.ID,
    rm.Kind.STRING: str,
    rm.Kind.INT: int,
    rm.Kind.BOOLEAN: bool,
    rm.Kind.DATETIME: DateTime,
}

OBJECTS: dict[str, Any] = {}


def _scalar_resolver(field: rm.Field) -> Any:
    name = field.name
    if field.kind is rm.Kind.ENUM:
        assert field.enum is not None
        enum = BY_DOMAIN[field.enum]

        def resolve_enum(root: Record) -> Any:
            value = root[name]
            return None if value is None else enum(value)

        return resolve_enum

    def resolve(root: Record) -> Any:
        return root[name]

    return resolve


def _graphql_type(field: rm.Field) -> Any:
    if field.kind is rm.Kind.ENUM:
        assert field.enum is not None
        base = BY_DOMAIN[field.enum]
    else:
        base = _SCALARS[field.kind]
    return base | None if field.nullable else base


def _list_resolver(parent: rm.ObjectType, field: rm.Field) -> Any:
    assert isinstance(field.source, rm.ListOf)
    relation_name = field.source.relation
    relation = parent.relations[relation_name]
    argument = next(a for a in field.arguments if a.name == relation.reveal_argument)
    child = OBJECTS[relation.child]

    def resolve(
        root: Record,
        reveal: Annotated[
            bool | None,
            strawberry.argument(name=argument.name, description=argument.description),
        ] = argument.default,
    ) -> Any:
        return rm.visible_children(parent, relation_name, root, bool(reveal))

    return resolve, list[child]  # type: ignore[valid-type]


def _object_type(type_: rm.ObjectType) -> Any:
    namespace: dict[str, Any] = {"__doc__": type_.description}
    for field in type_.fields:
        if field.kind is rm.Kind.LIST:
            resolver, graphql_type = _list_resolver(type_, field)
        else:
            resolver = _scalar_resolver(field)
            graphql_type = _graphql_type(field)
        namespace[f"_f_{field.name}"] = strawberry.field(
            resolver=resolver,
            name=field.name,
            description=field.description,
            graphql_type=graphql_type,
        )
    name = type_.name

    def is_type_of(obj: Any, _info: Any) -> bool:
        # Records are plain dicts: their id's prefix names their type.
        found = rm.node_type_of(str(obj.get("id", ""))) if isinstance(obj, dict) else None
        return found is not None and found.name == name

    namespace["is_type_of"] = staticmethod(is_type_of)
    bases = (Node,) if type_.id_prefix else ()
    cls = type(type_.name, bases, namespace)
    return strawberry.type(cls, name=type_.name, description=type_.description)


def _picker(name: str, graphql_type: Any, description: str | None = None) -> Any:
    def resolve(root: Record) -> Any:
        return root[name]

    return strawberry.field(
        resolver=resolve, name=name, graphql_type=graphql_type, description=description
    )


def _make(name: str, description: str, fields: dict[str, Any]) -> Any:
    namespace: dict[str, Any] = {f"_f_{key}": value for key, value in fields.items()}
    return strawberry.type(type(name, (), namespace), name=name, description=description)


# Children first: a list field's resolver names its item type.
for _type in (rm.PHONE_LINE, rm.SETUP, rm.AUDIT_EVENT):
    OBJECTS[_type.name] = _object_type(_type)

PageInfo = _make(
    "PageInfo",
    "Where a page sits in its list (Relay cursor connections)",
    {
        "hasNextPage": _picker("hasNextPage", bool),
        "hasPreviousPage": _picker("hasPreviousPage", bool),
        "startCursor": _picker("startCursor", str | None),
        "endCursor": _picker("endCursor", str | None),
    },
)

CONNECTIONS: dict[str, Any] = {}
for _connection in (rm.SETUP_CONNECTION, rm.AUDIT_CONNECTION):
    _node = OBJECTS[_connection.node.name]
    _edge = _make(
        _connection.edge_name,
        f"One {_connection.node.name} of a page and its cursor",
        {"cursor": _picker("cursor", str), "node": _picker("node", _node)},
    )
    _fields: dict[str, Any] = {
        "edges": _picker("edges", list[_edge]),  # type: ignore[valid-type]
        "pageInfo": _picker("pageInfo", PageInfo),
    }
    if _connection.counts_total:
        _fields["totalCount"] = _picker(
            "totalCount", int, "How many match the arguments (counted only when selected)"
        )
    CONNECTIONS[_connection.name] = _make(
        _connection.name, f"A page of {_connection.node.name}s", _fields
    )

IMessageSetup = OBJECTS[rm.SETUP.name]
PhoneLine = OBJECTS[rm.PHONE_LINE.name]
AuditEvent = OBJECTS[rm.AUDIT_EVENT.name]
IMessageSetupConnection = CONNECTIONS[rm.SETUP_CONNECTION.name]
AuditEventConnection = CONNECTIONS[rm.AUDIT_CONNECTION.name]
