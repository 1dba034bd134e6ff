"""Provider credentials and webhook secrets at rest: stored only as vault ciphertext bound
to their row, absent from the database files, the logs and every repr, and re-encrypted
by `blueline keys rotate`."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlmodel import col

from blueline import ids
from blueline.access import create_api_key
from blueline.domain import Origin
from blueline.errors import DecryptionFailed
from blueline.persistence.database import Database
from blueline.persistence.models import (
    IMessageSetup,
    PhoneLine,
    SetupState,
    SetupStatus,
)
from blueline.persistence.types import utcnow
from blueline.rotation import rotate_all
from blueline.runtime import Runtime, open_runtime
from blueline.security.vault import Keyring, Vault, credentials_aad, webhook_secret_aad
from blueline.settings import Settings
from blueline.webhooks import signature
from blueline.webhooks.intake import Outcome
from tests.conftest import Api, keyring_spec, make_settings
from tests.support.auth import authenticate

BLUELINE = Path(sys.executable).with_name("blueline")

CREATE = """
mutation Create($input: CreateImessageSetupInput!) {
  createImessageSetup(input: $input) {
    setup { id status phoneLines { id status requestId phoneNumber } }
    userErrors { code message }
  }
}"""

DETAIL = "query($id: ID!) { imessageSetup(id: $id) { id status phoneLines { status } } }"


@dataclass(frozen=True)
class Upstream:
    """What the provider holds for one setup, as the sandbox shows it."""

    subaccount_id: str
    api_key: str
    api_secret: str
    webhook_secret: str
    request_ids: list[str]

    @property
    def plaintexts(self) -> list[str]:
        return [self.api_key, self.api_secret, self.webhook_secret, self.webhook_key_b64]

    @property
    def webhook_key_b64(self) -> str:
        return self.webhook_secret.removeprefix(signature.SECRET_PREFIX)


async def upstream_of(sandbox: httpx.AsyncClient, setup_id: str) -> Upstream:
    response = await sandbox.get("/sandbox/subaccounts", params={"external_id": setup_id})
    response.raise_for_status()
    [account] = response.json()["data"]
    return Upstream(
        subaccount_id=account["id"],
        api_key=account["credentials"]["api_key"],
        api_secret=account["credentials"]["api_secret"],
        webhook_secret=account["webhook_secret"],
        request_ids=[line["request_id"] for line in account["lines"]],
    )


async def workspace_of(db: Database, name: str = "clinic-a") -> str:
    caller = await authenticate(db, f"Bearer {await create_api_key(db, name)}")
    assert caller is not None
    return caller.workspace_id


async def create_setups(runtime: Runtime, count: int, name: str = "Acme Dental") -> list[str]:
    workspace_id = await workspace_of(runtime.db)
    origin = Origin("api_key:key_test")
    return [
        await runtime.provisioning.create_setup(workspace_id, origin, f"{name} {i}", "Front desk")
        for i in range(count)
    ]


async def stored_setup(db: Database, setup_id: str) -> IMessageSetup:
    async with db.session() as session:
        row = await session.get(IMessageSetup, setup_id)
    assert row is not None
    return row


def signed_assignment(
    upstream: Upstream, request_id: str, number: str
) -> tuple[dict[str, str], bytes]:
    body = json.dumps(
        {
            "type": "line.assigned",
            "data": {
                "subaccount_id": upstream.subaccount_id,
                "request_id": request_id,
                "phone_number": number,
            },
        }
    ).encode()
    msg_id = "msg_" + secrets.token_hex(8)
    ts = int(time.time())
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": signature.sign(upstream.webhook_secret, msg_id, ts, body),
    }
    return headers, body


def assert_absent(haystack: bytes | str, upstreams: list[Upstream], where: str) -> None:
    data = haystack.encode() if isinstance(haystack, str) else haystack
    for upstream in upstreams:
        for plaintext in upstream.plaintexts:
            assert plaintext.encode() not in data, f"a provider secret appears in {where}"


async def database_bytes(db: Database) -> bytes:
    """Everything the database holds: the SQLite files, or every row of every table."""
    if db.is_sqlite:
        path = Path(make_url(db.url).database or "")
        files = [Path(f"{path}{suffix}") for suffix in ("", "-wal", "-journal", "-shm")]
        existing = [f for f in files if f.exists()]
        assert path in existing
        return b"".join(f.read_bytes() for f in existing)
    chunks: list[str] = []
    async with db.session() as session:
        tables = (
            await session.execute(
                text(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
                )
            )
        ).scalars()
        for table in list(tables):
            rows = await session.execute(text(f'SELECT CAST(t AS text) FROM "{table}" AS t'))
            chunks.extend(str(row) for row in rows.scalars())
    assert chunks
    return "\n".join(chunks).encode()


# -- what the row holds


async def test_row_holds_vault_tokens_that_decrypt_to_the_provider_secrets(
    runtime: Runtime, sandbox: httpx.AsyncClient
) -> None:
    [setup_id] = await create_setups(runtime, 1)
    upstream = await upstream_of(sandbox, setup_id)
    row = await stored_setup(runtime.db, setup_id)

    assert row.subaccount_id == upstream.subaccount_id
    assert row.credentials_enc is not None
    assert row.webhook_secret_enc is not None
    for token in (row.credentials_enc, row.webhook_secret_enc):
        kid, sep, encoded = token.partition(":")
        assert (kid, sep) == (runtime.vault.primary_kid, ":")
        base64.b64decode(encoded, validate=True)
    assert runtime.vault.decrypt(row.credentials_enc, aad=credentials_aad(setup_id)) == (
        f"{upstream.api_key}\n{upstream.api_secret}"
    )
    assert (
        runtime.vault.decrypt(row.webhook_secret_enc, aad=webhook_secret_aad(setup_id))
        == upstream.webhook_secret
    )


async def test_stored_secrets_are_bound_to_their_own_row_and_column(
    runtime: Runtime, sandbox: httpx.AsyncClient
) -> None:
    first, second = await create_setups(runtime, 2)
    row = await stored_setup(runtime.db, first)
    assert row.credentials_enc is not None
    assert row.webhook_secret_enc is not None
    upstream = await upstream_of(sandbox, first)
    wrong_bindings = [
        (row.credentials_enc, credentials_aad(second)),
        (row.credentials_enc, webhook_secret_aad(first)),
        (row.webhook_secret_enc, webhook_secret_aad(second)),
        (row.webhook_secret_enc, credentials_aad(first)),
    ]
    for token, aad in wrong_bindings:
        with pytest.raises(DecryptionFailed) as caught:
            runtime.vault.decrypt(token, aad=aad)
        assert_absent(str(caught.value), [upstream], "the decryption error")


async def test_webhook_secret_copied_onto_another_setup_is_not_accepted(
    runtime: Runtime, sandbox: httpx.AsyncClient
) -> None:
    victim, attacker = await create_setups(runtime, 2)
    victim_row = await stored_setup(runtime.db, victim)
    async with runtime.db.transaction() as session:
        row = await session.get(IMessageSetup, attacker)
        assert row is not None
        row.webhook_secret_enc = victim_row.webhook_secret_enc
        session.add(row)
    attacker_upstream = await upstream_of(sandbox, attacker)
    victim_upstream = await upstream_of(sandbox, victim)
    forged = Upstream(
        subaccount_id=attacker_upstream.subaccount_id,
        api_key="",
        api_secret="",
        webhook_secret=victim_upstream.webhook_secret,
        request_ids=[],
    )
    headers, body = signed_assignment(forged, attacker_upstream.request_ids[0], "+14155550101")
    answer = await runtime.intake.handle(attacker, headers, body, "127.0.0.1")
    assert answer is Outcome.REJECTED


# -- where the plaintext must never appear


async def test_provider_secrets_appear_nowhere_in_the_database(
    runtime: Runtime, sandbox: httpx.AsyncClient
) -> None:
    setup_ids = await create_setups(runtime, 2)
    upstreams = [await upstream_of(sandbox, s) for s in setup_ids]
    headers, body = signed_assignment(upstreams[0], upstreams[0].request_ids[0], "+14155550123")
    assert await runtime.intake.handle(setup_ids[0], headers, body, "::1") is Outcome.ACCEPTED
    line_id = await runtime.provisioning.request_line(
        (await stored_setup(runtime.db, setup_ids[1])).workspace_id,
        Origin("api_key:key_test"),
        setup_ids[1],
    )
    assert line_id.startswith("pl_")

    dump = await database_bytes(runtime.db)
    for setup_id in setup_ids:
        assert setup_id.encode() in dump  # the scan does see the rows
    assert_absent(dump, upstreams, "the database")


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Everything logged at DEBUG and above, by any thread, from before the server starts."""
    caplog.set_level(logging.DEBUG)
    return caplog


async def test_provider_secrets_never_reach_the_logs(
    debug_logs: pytest.LogCaptureFixture,
    server: tuple[str, Settings],
    api: Api,
    sandbox: httpx.AsyncClient,
) -> None:
    created = (await api.data(CREATE, {"input": {"businessName": "Acme", "label": "Desk"}}))[
        "createImessageSetup"
    ]
    assert created["userErrors"] == []
    setup_id = created["setup"]["id"]
    upstream = await upstream_of(sandbox, setup_id)
    [request_id] = upstream.request_ids

    # A forged delivery (logged as rejected) and the real, signed one.
    forged = await api.http.post(
        f"/webhooks/imessage/{setup_id}",
        content=b'{"type":"line.assigned"}',
        headers={
            "webhook-id": "msg_forged",
            "webhook-timestamp": str(int(time.time())),
            "webhook-signature": "v1,AAAA",
        },
    )
    assert forged.status_code == 401
    placed = await sandbox.post(f"/sandbox/line-requests/{request_id}/assign", json={})
    assert placed.status_code == 200
    for _ in range(100):
        detail = (await api.data(DETAIL, {"id": setup_id}))["imessageSetup"]
        if detail["status"] == "ACTIVE":
            break
        await asyncio.sleep(0.05)
    assert detail["status"] == "ACTIVE"

    records = debug_logs.records
    assert records, "nothing was captured: the scan would prove nothing"
    rendered = [debug_logs.text]
    for record in records:
        rendered.append(record.getMessage())
        rendered.append(repr(record.args))
        rendered.append(repr(record.__dict__))
    assert_absent("\n".join(rendered), [upstream], "the logs")


async def test_reprs_show_no_provider_secret(runtime: Runtime, sandbox: httpx.AsyncClient) -> None:
    [setup_id] = await create_setups(runtime, 1)
    upstream = await upstream_of(sandbox, setup_id)
    row = await stored_setup(runtime.db, setup_id)
    account = await runtime.provider.find_subaccount(setup_id)
    assert account is not None
    assert account.api_key == upstream.api_key  # the dataclass does hold them

    async with runtime.db.session() as session:
        lines = (
            (await session.execute(select(PhoneLine).where(col(PhoneLine.setup_id) == setup_id)))
            .scalars()
            .all()
        )
    shown = [
        repr(row),
        str(row),
        repr(account),
        str(account),
        repr(runtime),
        repr(runtime.provider),
        repr(runtime.vault),
        repr(runtime.provisioning.__dict__.get("_vault")),
        repr(runtime.settings),
        repr(lines),
    ]
    assert_absent("\n".join(shown), [upstream], "a repr")
    assert row.credentials_enc is not None
    assert row.webhook_secret_enc is not None
    assert row.credentials_enc not in repr(row)
    assert row.webhook_secret_enc not in repr(row)
    encryption_keys = runtime.settings.encryption_keys
    assert encryption_keys is not None
    material = encryption_keys.get_secret_value().partition(":")[2]
    assert material not in "\n".join(shown)


# -- blueline keys rotate


def cli_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLUELINE_")}
    env["BLUELINE_DATABASE_URL"] = database_url
    env.update({f"BLUELINE_{k.upper()}": v for k, v in extra.items()})
    return env


async def run_cli(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    assert BLUELINE.exists(), BLUELINE
    return await asyncio.to_thread(
        subprocess.run,
        [str(BLUELINE), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def old_and_new() -> tuple[str, str]:
    return keyring_spec("old"), keyring_spec("new")


async def test_keys_rotate_re_encrypts_every_secret_under_the_new_primary_once(
    database_url: str,
    sandbox_url: str,
    sandbox: httpx.AsyncClient,
    tmp_path: Path,
    old_and_new: tuple[str, str],
) -> None:
    old, new = old_and_new
    old_settings = make_settings(database_url, sandbox_url, encryption_keys=old)
    async with open_runtime(old_settings) as runtime:
        setup_ids = await create_setups(runtime, 2)
    upstreams = {s: await upstream_of(sandbox, s) for s in setup_ids}

    db = Database(database_url)
    try:
        new_only = Vault(Keyring.parse(new))
        before = {s: await stored_setup(db, s) for s in setup_ids}
        for setup_id, row in before.items():
            assert row.credentials_enc is not None
            assert row.credentials_enc.startswith("old:")
            assert row.webhook_secret_enc is not None
            assert row.webhook_secret_enc.startswith("old:")
            with pytest.raises(DecryptionFailed):
                new_only.decrypt(row.credentials_enc, aad=credentials_aad(setup_id))
            with pytest.raises(DecryptionFailed):
                new_only.decrypt(row.webhook_secret_enc, aad=webhook_secret_aad(setup_id))

        env = cli_env(database_url, encryption_keys=f"{new},{old}")
        first = await run_cli(tmp_path, env, "keys", "rotate")
        assert first.returncode == 0, first.stderr
        assert "re-encrypted 4 secret(s)" in first.stdout
        assert_absent(first.stdout + first.stderr, list(upstreams.values()), "the CLI output")
        assert old.partition(":")[2] not in first.stdout + first.stderr
        assert new.partition(":")[2] not in first.stdout + first.stderr

        after = {s: await stored_setup(db, s) for s in setup_ids}
        for setup_id, row in after.items():
            upstream = upstreams[setup_id]
            assert row.credentials_enc is not None
            assert row.credentials_enc.startswith("new:")
            assert row.webhook_secret_enc is not None
            assert row.webhook_secret_enc.startswith("new:")
            assert new_only.decrypt(row.credentials_enc, aad=credentials_aad(setup_id)) == (
                f"{upstream.api_key}\n{upstream.api_secret}"
            )
            assert (
                new_only.decrypt(row.webhook_secret_enc, aad=webhook_secret_aad(setup_id))
                == upstream.webhook_secret
            )

        second = await run_cli(tmp_path, env, "keys", "rotate")
        assert second.returncode == 0, second.stderr
        assert "re-encrypted 0 secret(s)" in second.stdout
        again = {s: await stored_setup(db, s) for s in setup_ids}
        for setup_id in setup_ids:
            assert again[setup_id].credentials_enc == after[setup_id].credentials_enc
            assert again[setup_id].webhook_secret_enc == after[setup_id].webhook_secret_enc
    finally:
        await db.dispose()

    # With the old key retired, webhooks still verify against the re-encrypted secret.
    new_settings = make_settings(database_url, sandbox_url, encryption_keys=new)
    async with open_runtime(new_settings) as runtime:
        setup_id = setup_ids[0]
        upstream = upstreams[setup_id]
        headers, body = signed_assignment(upstream, upstream.request_ids[0], "+14155550142")
        answer = await runtime.intake.handle(setup_id, headers, body, "127.0.0.1")
        assert answer is Outcome.ACCEPTED


async def test_rotation_walks_every_row_across_batches_and_skips_rows_without_secrets(
    db: Database, old_and_new: tuple[str, str]
) -> None:
    old, new = old_and_new
    old_vault = Vault(Keyring.parse(old))
    workspace_id = await workspace_of(db)
    now = utcnow()
    setups = []
    for i in range(230):
        setup_id = ids.new_id(ids.SETUP)
        with_secrets = i % 10 != 0
        setups.append(
            IMessageSetup(
                id=setup_id,
                workspace_id=workspace_id,
                business_name=f"Clinic {i}",
                label="Desk",
                state=SetupState.READY if with_secrets else SetupState.FAILED,
                status=SetupStatus.PENDING,
                subaccount_id=f"sa_{i}" if with_secrets else None,
                credentials_enc=(
                    old_vault.encrypt(f"ak_{i}\nsecret_{i}", aad=credentials_aad(setup_id))
                    if with_secrets
                    else None
                ),
                webhook_secret_enc=(
                    old_vault.encrypt(f"whsec_{i}", aad=webhook_secret_aad(setup_id))
                    if with_secrets
                    else None
                ),
                created_at=now,
                updated_at=now,
            )
        )
    async with db.transaction() as session:
        session.add_all(setups)

    rotating = Vault(Keyring.parse(f"{new},{old}"))
    assert await rotate_all(db, rotating) == 2 * 207
    assert await rotate_all(db, rotating) == 0

    new_only = Vault(Keyring.parse(new))
    async with db.session() as session:
        stored = (await session.execute(select(IMessageSetup))).scalars().all()
    assert len(stored) == 230
    for i, setup in enumerate(sorted(stored, key=lambda s: int(s.business_name.split()[1]))):
        if i % 10 == 0:
            assert setup.credentials_enc is None
            assert setup.webhook_secret_enc is None
            continue
        assert setup.credentials_enc is not None
        assert setup.webhook_secret_enc is not None
        assert new_only.decrypt(setup.credentials_enc, aad=credentials_aad(setup.id)) == (
            f"ak_{i}\nsecret_{i}"
        )
        assert new_only.decrypt(setup.webhook_secret_enc, aad=webhook_secret_aad(setup.id)) == (
            f"whsec_{i}"
        )


async def test_keys_rotate_with_an_invalid_keyring_fails_without_echoing_it(
    tmp_path: Path,
) -> None:
    material = base64.b64encode(secrets.token_bytes(16)).decode()
    env = cli_env(f"sqlite+aiosqlite:///{tmp_path / 'rotate.db'}", encryption_keys=f"k1:{material}")
    result = await run_cli(tmp_path, env, "keys", "rotate")
    assert result.returncode != 0
    assert material not in result.stdout + result.stderr
    assert "32 bytes" in result.stderr
