"""The key check as a request makes it, with nothing remembered between calls."""

from __future__ import annotations

from blueline.access import Authenticator, Caller
from blueline.persistence.database import Database


async def authenticate(db: Database, header: str | None) -> Caller | None:
    return await Authenticator(db, ttl_s=0).authenticate(header)
