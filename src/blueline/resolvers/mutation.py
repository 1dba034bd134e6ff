"""Write side: expected failures become ``userErrors``, never GraphQL errors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import strawberry

from blueline.errors import BluelineError
from blueline.resolvers.records import one, user_errors
from blueline.schema.context import AppInfo
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


async def _setup_payload(info: AppInfo, payload: Any, change: Callable[[], Awaitable[str]]) -> Any:
    try:
        setup_id = await change()
    except BluelineError as error:
        return payload(setup=None, user_errors=user_errors(error))
    return payload(setup=await one(info, "imessageSetup", setup_id), user_errors=[])


async def _line_payload(info: AppInfo, payload: Any, change: Callable[[], Awaitable[str]]) -> Any:
    try:
        line_id = await change()
    except BluelineError as error:
        return payload(phone_line=None, user_errors=user_errors(error))
    return payload(phone_line=await one(info, "node", line_id), user_errors=[])


@strawberry.type
class Mutation:
    @strawberry.mutation(
        permission_classes=AUTHENTICATED, description="Create a setup and its provider subaccount"
    )
    async def create_imessage_setup(
        self, info: AppInfo, input: CreateImessageSetupInput
    ) -> CreateImessageSetupPayload:
        c = info.context
        return await _setup_payload(
            info,
            CreateImessageSetupPayload,
            lambda: c.runtime.provisioning.create_setup(
                c.workspace_id, c.origin, input.business_name, input.label, input.idempotency_key
            ),
        )

    @strawberry.mutation(
        permission_classes=AUTHENTICATED, description="Ask the provider for another phone line"
    )
    async def request_imessage_phone_line(
        self, info: AppInfo, input: RequestImessagePhoneLineInput
    ) -> RequestImessagePhoneLinePayload:
        c = info.context
        return await _line_payload(  # type: ignore[no-any-return]
            info,
            RequestImessagePhoneLinePayload,
            lambda: c.runtime.provisioning.request_line(
                c.workspace_id, c.origin, str(input.setup_id)
            ),
        )

    @strawberry.mutation(
        permission_classes=AUTHENTICATED,
        description="Rename a setup (the business name is changed at the provider too) or "
        "change its label",
    )
    async def update_imessage_setup(
        self, info: AppInfo, input: UpdateImessageSetupInput
    ) -> UpdateImessageSetupPayload:
        c = info.context
        return await _setup_payload(
            info,
            UpdateImessageSetupPayload,
            lambda: c.runtime.lifecycle.update(
                c.workspace_id, c.origin, str(input.setup_id), input.business_name, input.label
            ),
        )

    @strawberry.mutation(
        permission_classes=AUTHENTICATED,
        description="Stop the subaccount upstream (numbers stay); no new lines meanwhile",
    )
    async def suspend_imessage_setup(
        self, info: AppInfo, input: SuspendImessageSetupInput
    ) -> SuspendImessageSetupPayload:
        c = info.context
        return await _setup_payload(
            info,
            SuspendImessageSetupPayload,
            lambda: c.runtime.lifecycle.suspend(c.workspace_id, c.origin, str(input.setup_id)),
        )

    @strawberry.mutation(permission_classes=AUTHENTICATED, description="Undo a suspension")
    async def reactivate_imessage_setup(
        self, info: AppInfo, input: ReactivateImessageSetupInput
    ) -> ReactivateImessageSetupPayload:
        c = info.context
        return await _setup_payload(
            info,
            ReactivateImessageSetupPayload,
            lambda: c.runtime.lifecycle.reactivate(c.workspace_id, c.origin, str(input.setup_id)),
        )

    @strawberry.mutation(
        permission_classes=AUTHENTICATED,
        description="Close for good: the subaccount is closed upstream, every line released, "
        "the stored credentials destroyed",
    )
    async def close_imessage_setup(
        self, info: AppInfo, input: CloseImessageSetupInput
    ) -> CloseImessageSetupPayload:
        c = info.context
        return await _setup_payload(
            info,
            CloseImessageSetupPayload,
            lambda: c.runtime.lifecycle.close(c.workspace_id, c.origin, str(input.setup_id)),
        )

    @strawberry.mutation(
        permission_classes=AUTHENTICATED,
        description="Give a line back: an assigned number is released, a pending request "
        "cancelled; RELEASED is final",
    )
    async def release_imessage_phone_line(
        self, info: AppInfo, input: ReleaseImessagePhoneLineInput
    ) -> ReleaseImessagePhoneLinePayload:
        c = info.context
        return await _line_payload(  # type: ignore[no-any-return]
            info,
            ReleaseImessagePhoneLinePayload,
            lambda: c.runtime.lifecycle.release_line(
                c.workspace_id, c.origin, str(input.phone_line_id)
            ),
        )
