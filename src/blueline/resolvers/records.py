"""Records for the ordinary (executed) path, read with the same compiled SQL as the
compiled path, and the mapping of expected failures to ``userErrors``."""

from __future__ import annotations

from typing import Any

from graphql import GraphQLError

from blueline import readmodel as rm
from blueline.errors import BluelineError, ValidationFailed
from blueline.persistence.reads import (
    WORKSPACE_SLOT,
    list_records_plan,
    one_record_plan,
    root_slot,
)
from blueline.schema import arguments
from blueline.schema.context import AppInfo
from blueline.schema.enums import UserErrorCode
from blueline.schema.payloads import UserError

BAD_USER_INPUT = "BAD_USER_INPUT"


def user_errors(error: BluelineError) -> list[UserError]:
    """Expected failures as userErrors; anything else is not the client's to see."""
    if not error.user_facing:
        raise error
    problems = error.problems if isinstance(error, ValidationFailed) else [error]
    return [
        UserError(field=p.field, message=p.message, code=UserErrorCode(p.code)) for p in problems
    ]


async def one(info: AppInfo, root_name: str, object_id: str) -> dict[str, Any] | None:
    context = info.context
    values = {WORKSPACE_SLOT: context.workspace_id, root_slot(0, "id"): object_id}
    data = await context.runtime.reads.data(one_record_plan(root_name), values)
    found: dict[str, Any] | None = data[root_name]
    return found


def _selects(selections: list[Any], name: str, budget: list[int]) -> bool:
    for selection in selections:
        budget[0] -= 1
        if budget[0] < 0:
            return True  # documents are bounded in size; past that, count to be safe
        if getattr(selection, "name", None) == name and not hasattr(selection, "type_condition"):
            return True
        inner = getattr(selection, "selections", None)
        if inner and not hasattr(selection, "arguments") and _selects(inner, name, budget):
            return True
    return False


def selects(info: AppInfo, name: str) -> bool:
    """Whether the current field's own selection (through fragments) asks for ``name``."""
    return any(_selects(field.selections, name, [2000]) for field in info.selected_fields)


async def page(
    info: AppInfo, root_name: str, first: Any, after: Any, filters: dict[str, Any]
) -> dict[str, Any]:
    root = rm.LIST_ROOTS[root_name]
    try:
        size = arguments.page_size(first)
        key = arguments.cursor_key(root.connection, after)
    except arguments.ArgumentError as error:
        raise GraphQLError(str(error), extensions={"code": BAD_USER_INPUT}) from None
    context = info.context
    values: dict[str, Any] = {
        WORKSPACE_SLOT: context.workspace_id,
        root_slot(0, "first"): size,
        root_slot(0, "after"): key,
    }
    for f in root.filters:
        values[root_slot(0, f.argument.name)] = arguments.filter_value(filters.get(f.argument.name))
    with_total = root.connection.counts_total and selects(info, "totalCount")
    data = await context.runtime.reads.data(
        list_records_plan(root_name, with_total=with_total), values
    )
    result: dict[str, Any] = data[root_name]
    return result
