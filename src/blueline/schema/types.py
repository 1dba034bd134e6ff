"""GraphQL types. Built from domain rows by the ``from_*`` constructors; no field ever
carries a credential or a webhook secret (the row columns holding them are never read
here)."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any

import strawberry

from blueline.persistence.models import LineStatus, PhoneLine, SetupStatus
from blueline.persistence.queries import SetupRow


@strawberry.enum(name="IMessageSetupStatus")
class IMessageSetupStatusEnum(Enum):
    PENDING = "PENDING"
    ACTIVE = "ACTIVE"


@strawberry.enum(name="PhoneLineStatus")
class PhoneLineStatusEnum(Enum):
    PENDING = "PENDING"
    ASSIGNED = "ASSIGNED"


@strawberry.interface
class Node:
    id: strawberry.ID


@strawberry.type(name="PhoneLine")
class PhoneLineType(Node):
    status: PhoneLineStatusEnum
    phone_number: str | None = strawberry.field(description="E.164, set when ASSIGNED")
    request_id: str | None = strawberry.field(
        description="The outstanding provider request, set when PENDING"
    )
    requested_at: datetime
    assigned_at: datetime | None

    @classmethod
    def from_row(cls, line: PhoneLine) -> PhoneLineType:
        pending = line.status == LineStatus.PENDING
        return cls(
            id=strawberry.ID(line.id),
            status=PhoneLineStatusEnum(str(line.status)),
            phone_number=line.phone_number,
            request_id=line.request_id if pending else None,
            requested_at=line.requested_at,
            assigned_at=line.assigned_at,
        )

    @classmethod
    def from_snapshot(cls, data: dict[str, Any]) -> PhoneLineType:
        pending = data["status"] == LineStatus.PENDING
        return cls(
            id=strawberry.ID(data["id"]),
            status=PhoneLineStatusEnum(data["status"]),
            phone_number=data["phone_number"],
            request_id=data["request_id"] if pending else None,
            requested_at=datetime.fromisoformat(data["requested_at"]),
            assigned_at=(
                datetime.fromisoformat(data["assigned_at"]) if data["assigned_at"] else None
            ),
        )


@strawberry.type(name="IMessageSetup")
class IMessageSetupType(Node):
    business_name: str
    label: str = strawberry.field(description="Operator-facing label")
    status: IMessageSetupStatusEnum = strawberry.field(
        description="PENDING: no assigned line yet; ACTIVE: at least one assigned line"
    )
    phone_line_count: int
    created_at: datetime
    updated_at: datetime

    @strawberry.field(description="Every line of the setup, oldest first")
    async def phone_lines(self, info: strawberry.Info) -> list[PhoneLineType]:
        lines = await info.context.lines().load(str(self.id))
        return [PhoneLineType.from_row(line) for line in lines]

    @classmethod
    def from_row(cls, row: SetupRow) -> IMessageSetupType:
        setup = row.setup
        return cls(
            id=strawberry.ID(setup.id),
            business_name=setup.business_name,
            label=setup.label,
            status=IMessageSetupStatusEnum(str(setup.status)),
            phone_line_count=row.phone_line_count,
            created_at=setup.created_at,
            updated_at=setup.updated_at,
        )

    @classmethod
    def from_snapshot(cls, data: dict[str, Any]) -> IMessageSetupType:
        return cls(
            id=strawberry.ID(data["id"]),
            business_name=data["business_name"],
            label=data["label"],
            status=IMessageSetupStatusEnum(data["status"]),
            phone_line_count=int(data["phone_line_count"]),
            created_at=datetime.fromisoformat(data["created_at"]),
            updated_at=datetime.fromisoformat(data["updated_at"]),
        )


def setup_status(value: IMessageSetupStatusEnum | None) -> SetupStatus | None:
    return SetupStatus(value.value) if value is not None else None


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None


@strawberry.type(name="IMessageSetupEdge")
class IMessageSetupEdge:
    cursor: str
    node: IMessageSetupType


@strawberry.type(name="IMessageSetupConnection")
class IMessageSetupConnection:
    edges: list[IMessageSetupEdge]
    page_info: PageInfo
    # Counted only when the query selects it: most list views do not need it per page.
    _total: strawberry.Private[int | None]

    @strawberry.field
    def total_count(self) -> int:
        return self._total or 0


@strawberry.type
class UserError:
    field: list[str] | None
    message: str
    code: str


@strawberry.input
class CreateImessageSetupInput:
    business_name: str
    label: str
    idempotency_key: str | None = None


@strawberry.type
class CreateImessageSetupPayload:
    setup: IMessageSetupType | None
    user_errors: list[UserError]


@strawberry.input
class RequestImessagePhoneLineInput:
    setup_id: strawberry.ID


@strawberry.type
class RequestImessagePhoneLinePayload:
    phone_line: PhoneLineType | None
    user_errors: list[UserError]


@strawberry.type
class PhoneLineUpdate:
    event_id: str
    setup: IMessageSetupType
    phone_line: PhoneLineType
