"""Write side: expected failures become ``userErrors``, never GraphQL errors."""

from __future__ import annotations

import strawberry

from blueline.errors import BluelineError
from blueline.resolvers.common import user_errors
from blueline.schema.context import AppInfo
from blueline.schema.types import (
    CreateImessageSetupInput,
    CreateImessageSetupPayload,
    IMessageSetupType,
    PhoneLineType,
    RequestImessagePhoneLineInput,
    RequestImessagePhoneLinePayload,
)


@strawberry.type
class Mutation:
    @strawberry.mutation(description="Create a setup and its provider subaccount")
    async def create_imessage_setup(
        self, info: AppInfo, input: CreateImessageSetupInput
    ) -> CreateImessageSetupPayload:
        context = info.context
        try:
            row = await context.runtime.provisioning.create_setup(
                await context.authorize(), input.business_name, input.label, input.idempotency_key
            )
        except BluelineError as error:
            return CreateImessageSetupPayload(setup=None, user_errors=user_errors(error))
        return CreateImessageSetupPayload(setup=IMessageSetupType.from_row(row), user_errors=[])

    @strawberry.mutation(description="Ask the provider for another phone line")
    async def request_imessage_phone_line(
        self, info: AppInfo, input: RequestImessagePhoneLineInput
    ) -> RequestImessagePhoneLinePayload:
        context = info.context
        try:
            line = await context.runtime.provisioning.request_line(
                await context.authorize(), str(input.setup_id)
            )
        except BluelineError as error:
            return RequestImessagePhoneLinePayload(phone_line=None, user_errors=user_errors(error))
        return RequestImessagePhoneLinePayload(
            phone_line=PhoneLineType.from_row(line), user_errors=[]
        )
