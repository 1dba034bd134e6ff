"""Write side: expected failures become ``userErrors``, never GraphQL errors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import strawberry
from strawberry.utils.str_converters import to_camel_case

from blueline.errors import BluelineError
from blueline.resolvers.records import one, user_errors
from blueline.schema.context import AppInfo, Context
from blueline.schema.payloads import (
    CloseImessageSetupInput,
    CloseImessageSetupPayload,
    CreateImessageSetupInput,
    CreateImessageSetupPayload,
    ReactivateImessageSetupInput,
    ReactivateImessageSetupPayload,
    ReleaseImessagePhoneLineInput,
    ReleaseImessagePhoneLinePayload,
    RequestImessagePhoneLineInput,
    RequestImessagePhoneLinePayload,
    SuspendImessageSetupInput,
    SuspendImessageSetupPayload,
    UpdateImessageSetupInput,
    UpdateImessageSetupPayload,
)
from blueline.schema.permissions import AUTHENTICATED

T = TypeVar("T")


@dataclass(frozen=True)
class Change:
    """What a mutation does, for its resolver and for the compiled path alike: run it,
    then read the record it names for the payload."""

    run: Callable[[Context, Any], Awaitable[str]]
    # The payload field (its Python name) that holds the changed record, and the query
    # root that reads that record by id.
    record: str
    read_root: str

    @property
    def record_field(self) -> str:
        return to_camel_case(self.record)


# Keyed by GraphQL field name; each takes the mutation's ``input``.
CHANGES: dict[str, Change] = {
    "createImessageSetup": Change(
        lambda c, i: c.runtime.provisioning.create_setup(
            c.workspace_id, c.origin, i.business_name, i.label, i.idempotency_key
        ),
        "setup",
        "imessageSetup",
    ),
    "requestImessagePhoneLine": Change(
        lambda c, i: c.runtime.provisioning.request_line(c.workspace_id, c.origin, str(i.setup_id)),
        "phone_line",
        "node",
    ),
    "updateImessageSetup": Change(
        lambda c, i: c.runtime.lifecycle.update(
            c.workspace_id, c.origin, str(i.setup_id), i.business_name, i.label
        ),
        "setup",
        "imessageSetup",
    ),
    "suspendImessageSetup": Change(
        lambda c, i: c.runtime.lifecycle.suspend(c.workspace_id, c.origin, str(i.setup_id)),
        "setup",
        "imessageSetup",
    ),
    "reactivateImessageSetup": Change(
        lambda c, i: c.runtime.lifecycle.reactivate(c.workspace_id, c.origin, str(i.setup_id)),
        "setup",
        "imessageSetup",
    ),
    "closeImessageSetup": Change(
        lambda c, i: c.runtime.lifecycle.close(c.workspace_id, c.origin, str(i.setup_id)),
        "setup",
        "imessageSetup",
    ),
    "releaseImessagePhoneLine": Change(
        lambda c, i: c.runtime.lifecycle.release_line(
            c.workspace_id, c.origin, str(i.phone_line_id)
        ),
        "phone_line",
        "node",
    ),
}


async def _payload(info: AppInfo, payload: Callable[..., T], name: str, input: Any) -> T:
    change = CHANGES[name]
    try:
        object_id = await change.run(info.context, input)
    except BluelineError as error:
        return payload(**{change.record: None, "user_errors": user_errors(error)})
    record = await one(info, change.read_root, object_id)
    return payload(**{change.record: record, "user_errors": []})


@strawberry.type
class Mutation:
    @strawberry.mutation(
        permission_classes=AUTHENTICATED, description="Create a setup and its provider subaccount"
    )
    async def create_imessage_setup(
        self, info: AppInfo, input: CreateImessageSetupInput
    ) -> CreateImessageSetupPayload:
        return await _payload(info, CreateImessageSetupPayload, "createImessageSetup", input)

    @strawberry.mutation(
        permission_classes=AUTHENTICATED, description="Ask the provider for another phone line"
    )
    async def request_imessage_phone_line(
        self, info: AppInfo, input: RequestImessagePhoneLineInput
    ) -> RequestImessagePhoneLinePayload:
        return await _payload(
            info, RequestImessagePhoneLinePayload, "requestImessagePhoneLine", input
        )

    @strawberry.mutation(
        permission_classes=AUTHENTICATED,
        description="Rename a setup (the business name is changed at the provider too) or "
        "change its label",
    )
    async def update_imessage_setup(
        self, info: AppInfo, input: UpdateImessageSetupInput
    ) -> UpdateImessageSetupPayload:
        return await _payload(info, UpdateImessageSetupPayload, "updateImessageSetup", input)

    @strawberry.mutation(
        permission_classes=AUTHENTICATED,
        description="Stop the subaccount upstream (numbers stay); no new lines meanwhile",
    )
    async def suspend_imessage_setup(
        self, info: AppInfo, input: SuspendImessageSetupInput
    ) -> SuspendImessageSetupPayload:
        return await _payload(info, SuspendImessageSetupPayload, "suspendImessageSetup", input)

    @strawberry.mutation(permission_classes=AUTHENTICATED, description="Undo a suspension")
    async def reactivate_imessage_setup(
        self, info: AppInfo, input: ReactivateImessageSetupInput
    ) -> ReactivateImessageSetupPayload:
        return await _payload(
            info, ReactivateImessageSetupPayload, "reactivateImessageSetup", input
        )

    @strawberry.mutation(
        permission_classes=AUTHENTICATED,
        description="Close for good: the subaccount is closed upstream, every line released, "
        "the stored credentials destroyed",
    )
    async def close_imessage_setup(
        self, info: AppInfo, input: CloseImessageSetupInput
    ) -> CloseImessageSetupPayload:
        return await _payload(info, CloseImessageSetupPayload, "closeImessageSetup", input)

    @strawberry.mutation(
        permission_classes=AUTHENTICATED,
        description="Give a line back: an assigned number is released, a pending request "
        "cancelled; RELEASED is final",
    )
    async def release_imessage_phone_line(
        self, info: AppInfo, input: ReleaseImessagePhoneLineInput
    ) -> ReleaseImessagePhoneLinePayload:
        return await _payload(
            info, ReleaseImessagePhoneLinePayload, "releaseImessagePhoneLine", input
        )
