"""Inputs, mutation payloads, user errors and update envelopes."""

from __future__ import annotations

from typing import Any

import strawberry

from blueline import readmodel as rm
from blueline.schema.enums import IMessageSetupChange, UserErrorCode
from blueline.schema.objects import OBJECTS, IMessageSetup, PhoneLine, Record


@strawberry.type(description="An expected failure, naming the input field it is about")
class UserError:
    field: list[str] | None
    message: str
    code: UserErrorCode


@strawberry.input
class CreateImessageSetupInput:
    business_name: str
    label: str = strawberry.field(description="Operator-facing label")
    idempotency_key: str | None = strawberry.field(
        default=None,
        description="Send the same key when retrying a create: it returns the first setup",
    )


@strawberry.input
class RequestImessagePhoneLineInput:
    setup_id: strawberry.ID


@strawberry.input
class UpdateImessageSetupInput:
    setup_id: strawberry.ID
    business_name: str | None = None
    label: str | None = None


@strawberry.input
class SuspendImessageSetupInput:
    setup_id: strawberry.ID


@strawberry.input
class ReactivateImessageSetupInput:
    setup_id: strawberry.ID


@strawberry.input
class CloseImessageSetupInput:
    setup_id: strawberry.ID


@strawberry.input
class ReleaseImessagePhoneLineInput:
    phone_line_id: strawberry.ID


def _setup_payload(name: str) -> Any:
    cls = type(
        name,
        (),
        {
            "__annotations__": {
                "setup": IMessageSetup | None,
                "user_errors": list[UserError],
            }
        },
    )
    return strawberry.type(cls, name=name)


CreateImessageSetupPayload = _setup_payload("CreateImessageSetupPayload")
UpdateImessageSetupPayload = _setup_payload("UpdateImessageSetupPayload")
SuspendImessageSetupPayload = _setup_payload("SuspendImessageSetupPayload")
ReactivateImessageSetupPayload = _setup_payload("ReactivateImessageSetupPayload")
CloseImessageSetupPayload = _setup_payload("CloseImessageSetupPayload")


@strawberry.type
class RequestImessagePhoneLinePayload:
    phone_line: PhoneLine | None
    user_errors: list[UserError]


@strawberry.type
class ReleaseImessagePhoneLinePayload:
    phone_line: PhoneLine | None
    user_errors: list[UserError]


def _update_type(shape: rm.UpdateShape) -> Any:
    def pick(name: str, graphql_type: Any) -> Any:
        def resolve(root: Record) -> Any:
            return root[name]

        return strawberry.field(resolver=resolve, name=name, graphql_type=graphql_type)

    namespace: dict[str, Any] = {
        "_f_eventId": pick("eventId", str),
    }
    if shape.has_change:

        def resolve_change(root: Record) -> Any:
            return IMessageSetupChange(root["change"])

        namespace["_f_change"] = strawberry.field(
            resolver=resolve_change, name="change", graphql_type=IMessageSetupChange
        )
    for key, type_ in shape.objects:
        namespace[f"_f_{key}"] = pick(key, OBJECTS[type_.name])
    cls = type(shape.name, (), namespace)
    return strawberry.type(cls, name=shape.name, description=shape.description)


PhoneLineUpdate = _update_type(rm.PHONE_LINE_UPDATE)
IMessageSetupUpdate = _update_type(rm.SETUP_UPDATE)
