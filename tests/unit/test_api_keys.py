"""API keys: minted with 256 random bits, kept only as a hash, presented as a bearer token.

The unit part covers the key format and the header parsing; the database part mints and
authenticates keys on PostgreSQL and SQLite and reads the stored rows back.
"""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text
from sqlmodel import col

from blueline.access import (
    Authenticator,
    Caller,
    bootstrap_default_workspace,
    create_api_key,
)
from blueline.errors import InvalidInput
from blueline.persistence.database import Database
from blueline.persistence.models import ApiKey, Workspace
from blueline.security import api_keys


async def authenticate(db: Database, header: str | None) -> Caller | None:
    """The key check as every request makes it, with nothing remembered between calls."""
    return await Authenticator(db, ttl_s=0).authenticate(header)


def random_part(key: str) -> bytes:
    body = key.removeprefix(api_keys.KEY_PREFIX)
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))


def test_minted_keys_carry_the_prefix_and_at_least_32_random_bytes() -> None:
    key = api_keys.mint()
    assert key.startswith(api_keys.KEY_PREFIX)
    assert len(random_part(key)) >= 32
    assert key.isascii()
    assert " " not in key


def test_minted_keys_are_unique() -> None:
    keys = {api_keys.mint() for _ in range(2000)}
    assert len(keys) == 2000
    assert len({random_part(k) for k in keys}) == 2000


def test_digest_is_a_stable_sha256_hex_of_the_key() -> None:
    key = api_keys.mint()
    assert api_keys.digest(key) == api_keys.digest(key)
    assert api_keys.digest(key) == hashlib.sha256(key.encode()).hexdigest()
    assert len(api_keys.digest(key)) == 64
    assert api_keys.digest(key) != api_keys.digest(key + "x")
    assert key not in api_keys.digest(key)


def test_display_prefix_reveals_only_a_few_characters() -> None:
    key = api_keys.mint()
    shown = api_keys.display_prefix(key)
    assert key.startswith(shown)
    assert len(shown) <= len(api_keys.KEY_PREFIX) + 6


def test_bearer_header_yields_the_key() -> None:
    key = api_keys.mint()
    assert api_keys.parse_bearer(f"Bearer {key}") == key
    assert api_keys.parse_bearer(f"bearer {key}") == key
    assert api_keys.parse_bearer(f"BEARER {key}  ") == key


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Token bl_live_abcdef",
        "Bearerbl_live_abcdef",
        "Bearer sk_live_abcdef",
        "Bearer " + "bl_live_" + "A" * 300,
        "bl_live_abcdef",
        "\x00\x01garbage",
    ],
)
def test_other_schemes_garbage_and_oversized_tokens_are_refused(header: str | None) -> None:
    assert api_keys.parse_bearer(header) is None


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.text(max_size=400), st.text(max_size=250).map("Bearer ".__add__)))
def test_parse_bearer_never_raises_and_only_returns_prefixed_bounded_tokens(
    header: str | None,
) -> None:
    token = api_keys.parse_bearer(header)
    if token is not None:
        assert token.startswith(api_keys.KEY_PREFIX)
        assert len(token) <= 200


# -- against the database


async def test_created_key_authenticates_as_its_workspace(db: Database) -> None:
    key = await create_api_key(db, "clinic-a")
    caller = await authenticate(db, f"Bearer {key}")
    assert caller is not None
    async with db.session() as session:
        workspace = (
            (await session.execute(select(Workspace).where(col(Workspace.name) == "clinic-a")))
            .scalars()
            .one()
        )
        stored = (
            (await session.execute(select(ApiKey).where(col(ApiKey.id) == caller.api_key_id)))
            .scalars()
            .one()
        )
    assert caller.workspace_id == workspace.id
    assert stored.workspace_id == workspace.id


async def test_unknown_malformed_and_missing_keys_do_not_authenticate(db: Database) -> None:
    key = await create_api_key(db, "clinic-a")
    assert await authenticate(db, None) is None
    assert await authenticate(db, "") is None
    assert await authenticate(db, key) is None
    assert await authenticate(db, f"Basic {key}") is None
    assert await authenticate(db, f"Bearer {api_keys.mint()}") is None
    assert await authenticate(db, f"Bearer {key[:-1]}") is None


async def test_keys_of_one_workspace_share_it_and_other_workspaces_are_separate(
    db: Database,
) -> None:
    first = await create_api_key(db, "clinic-a")
    second = await create_api_key(db, "  clinic-a  ")
    other = await create_api_key(db, "clinic-b")
    a1 = await authenticate(db, f"Bearer {first}")
    a2 = await authenticate(db, f"Bearer {second}")
    b = await authenticate(db, f"Bearer {other}")
    assert a1 is not None
    assert a2 is not None
    assert b is not None
    assert a1.workspace_id == a2.workspace_id
    assert a1.api_key_id != a2.api_key_id
    assert b.workspace_id != a1.workspace_id


async def test_revoked_key_no_longer_authenticates(db: Database) -> None:
    key = await create_api_key(db, "clinic-a")
    caller = await authenticate(db, f"Bearer {key}")
    assert caller is not None
    async with db.transaction() as session:
        row = await session.get(ApiKey, caller.api_key_id)
        assert row is not None
        row.revoked_at = row.created_at
        session.add(row)
    assert await authenticate(db, f"Bearer {key}") is None


@pytest.mark.parametrize("name", ["", "   ", "x" * 129, "tab\there"])
async def test_invalid_workspace_names_are_refused(db: Database, name: str) -> None:
    with pytest.raises(InvalidInput):
        await create_api_key(db, name)


async def test_only_the_hash_of_a_key_is_stored(db: Database) -> None:
    keys = [await create_api_key(db, "clinic-a") for _ in range(3)]
    async with db.session() as session:
        rows = (await session.execute(text("SELECT * FROM api_key"))).mappings().all()
    assert len(rows) == 3
    stored = [str(value) for row in rows for value in row.values() if value is not None]
    for key in keys:
        secret_part = key.removeprefix(api_keys.KEY_PREFIX)
        for value in stored:
            assert key not in value
            assert secret_part not in value
    assert sorted(row["key_hash"] for row in rows) == sorted(api_keys.digest(k) for k in keys)


async def test_default_workspace_is_bootstrapped_once_on_an_empty_database(
    db: Database,
) -> None:
    key = await bootstrap_default_workspace(db)
    assert key is not None
    assert await authenticate(db, f"Bearer {key}") is not None
    assert await bootstrap_default_workspace(db) is None
