"""GraphQL enums, generated from the domain's own (the wire values are the domain's)."""

from __future__ import annotations

from enum import Enum, StrEnum
from typing import Any

import strawberry

from blueline.domain import LineStatus, SetupChange, SetupStatus
from blueline.errors import USER_ERROR_CODES


def _mirror(name: str, source: type[StrEnum] | tuple[str, ...], description: str) -> Any:
    members = (
        {m.value: m.value for m in source}
        if isinstance(source, type)
        else {code: code for code in source}
    )
    return strawberry.enum(Enum(name, members), name=name, description=description)  # type: ignore[call-overload]


IMessageSetupStatus = _mirror(
    "IMessageSetupStatus", SetupStatus, "CLOSED, SUSPENDED, ACTIVE or PENDING, in that order"
)
PhoneLineStatus = _mirror("PhoneLineStatus", LineStatus, "RELEASED is final")
IMessageSetupChange = _mirror("IMessageSetupChange", SetupChange, "What an update reports")
UserErrorCode = _mirror(
    "UserErrorCode", USER_ERROR_CODES, "Why a mutation did not do what it was asked"
)

BY_DOMAIN: dict[type[StrEnum], Any] = {
    SetupStatus: IMessageSetupStatus,
    LineStatus: PhoneLineStatus,
    SetupChange: IMessageSetupChange,
}
