"""``blueline`` command line: serve, migrate, api-keys, sandbox-provider, keys, reconcile,
audit, prune, schema."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

from pydantic import ValidationError

from blueline.errors import BluelineError
from blueline.settings import Settings

if TYPE_CHECKING:
    from blueline.persistence.database import Database

T = TypeVar("T")


def _settings(**overrides: object) -> Settings:
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SystemExit(f"invalid configuration: {exc}") from None


def _configure_logging() -> None:
    from blueline.observability.logs import configure_logging

    try:
        production = Settings().is_production
    except ValidationError:
        production = False  # the command itself reports the bad configuration
    configure_logging(json=production)


def _migrate(settings: Settings) -> None:
    from blueline.persistence.migrate import upgrade

    upgrade(settings.database_url.get_secret_value())


def _on_database(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    """Migrate, then run one piece of work on a database opened for it alone."""
    _migrate(settings)

    from blueline.runtime import database_for

    async def run() -> T:
        db = database_for(settings)
        try:
            return await work(db)
        finally:
            await db.dispose()

    return asyncio.run(run())


def cmd_serve(args: argparse.Namespace) -> int:
    overrides: dict[str, object] = {}
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    settings = _settings(**overrides)
    problems = settings.problems()
    if problems:
        where = " in production" if settings.is_production else ""
        for problem in problems:
            print(f"refusing to start{where}: {problem}", file=sys.stderr)
        return 2
    # Imported after the checks so a refusal is immediate.
    import uvicorn

    from blueline.access import bootstrap_default_workspace
    from blueline.app import Server, create_app, uvicorn_options
    from blueline.runtime import load_vault

    if settings.is_production and settings.database_url.get_secret_value().startswith("sqlite"):
        logging.getLogger("blueline").warning(
            "production on SQLite: use PostgreSQL (BLUELINE_DATABASE_URL=postgresql+asyncpg://…)"
        )
    load_vault(settings, create_keyring=True)
    key = _on_database(settings, bootstrap_default_workspace)
    if key is not None:
        print(f"API key: {key}", flush=True)
    print(f"Blueline listening on http://{settings.host}:{settings.port}/graphql", flush=True)
    config = uvicorn.Config(
        create_app(settings), host=settings.host, port=settings.port, **uvicorn_options(settings)
    )
    Server(config, owns_process=True).run()
    return 0


def cmd_migrate(_args: argparse.Namespace) -> int:
    _migrate(_settings())
    print("database is at the latest migration")
    return 0


def cmd_api_keys_create(args: argparse.Namespace) -> int:
    from blueline.access import create_api_key

    key = _on_database(_settings(), lambda db: create_api_key(db, args.workspace))
    print(f"API key for workspace {args.workspace.strip()!r} (shown once, store it now):")
    print(key, flush=True)
    return 0


def cmd_api_keys_list(args: argparse.Namespace) -> int:
    from blueline.access import list_api_keys

    def when(value: object) -> str:
        return value.isoformat(timespec="seconds") if isinstance(value, datetime) else "-"

    print(f"{'id':32} {'workspace':20} {'key':16} {'created':25} {'last used':25} revoked")
    for key in _on_database(_settings(), lambda db: list_api_keys(db, args.workspace)):
        print(
            f"{key.id:32} {key.workspace[:20]:20} {key.display_prefix + '…':16} "
            f"{when(key.created_at):25} {when(key.last_used_at):25} {when(key.revoked_at)}"
        )
    return 0


def cmd_api_keys_revoke(args: argparse.Namespace) -> int:
    from blueline.access import REVOKED_MESSAGE, revoke_api_key

    settings = _settings()
    _on_database(settings, lambda db: revoke_api_key(db, args.key_id))
    if settings.redis_url_value:
        # Every API process hears it at once (they also poll the database, so a
        # process away from Redis still stops the key within about a second).
        from blueline.events.bus import CONTROL_CHANNEL

        async def announce() -> None:
            import redis.asyncio as aioredis

            client = aioredis.Redis.from_url(settings.redis_url_value or "", socket_timeout=2)
            try:
                await client.publish(
                    CONTROL_CHANNEL, json.dumps({"type": REVOKED_MESSAGE, "key_id": args.key_id})
                )
            finally:
                await client.aclose()

        try:
            asyncio.run(announce())
        except Exception as exc:  # the database poll still reaches every process
            print(
                f"warning: could not announce the revocation on Redis ({type(exc).__name__})",
                file=sys.stderr,
            )
    print(f"revoked {args.key_id}: refused everywhere within about a second")
    return 0


def cmd_sandbox_provider(args: argparse.Namespace) -> int:
    import uvicorn

    from blueline_sandbox import create_sandbox_app

    settings = _settings()
    app = create_sandbox_app(
        settings.provider_api_key.get_secret_value(),
        auto_assign_after_s=settings.sandbox_auto_assign_after_s,
    )
    print(f"sandbox provider listening on http://{args.host}:{args.port}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def cmd_keys_rotate(_args: argparse.Namespace) -> int:
    from blueline.rotation import rotate_all
    from blueline.runtime import load_vault

    settings = _settings()
    vault = load_vault(settings)
    changed = _on_database(settings, lambda db: rotate_all(db, vault))
    print(f"re-encrypted {changed} secret(s) under the primary key")
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    from blueline.runtime import open_runtime

    settings = _settings()
    _migrate(settings)

    async def run() -> str:
        async with open_runtime(settings, command=True) as runtime:
            if settings.redis_url_value:
                # Events this pass commits are published as it commits them; without
                # Redis the API process's sweep publishes them from the log.
                await runtime.bus.start()
            report = await runtime.reconcile(args.min_age)
            await runtime.lifecycle.wait_background()
            return (
                f"setups completed: {report.completed}, failed: {report.failed}, "
                f"discarded: {report.discarded}, deferred: {report.deferred}; "
                f"lines assigned: {report.lines_assigned}, adopted: {report.lines_adopted}, "
                f"released: {report.lines_released}; setups synced: {report.setups_synced}; "
                f"operations finished: {report.operations_finished}"
            )

    print(asyncio.run(run()))
    return 0


def cmd_audit_verify(_args: argparse.Namespace) -> int:
    from blueline.audit import verify
    from blueline.runtime import load_vault

    settings = _settings()
    vault = load_vault(settings)
    result = _on_database(settings, lambda db: verify(db, vault))
    if result.broken is not None:
        print(f"audit chain broken: {result.broken}")
        return 1
    print(f"audit chain intact: {result.records} record(s) in {result.workspaces} workspace(s)")
    return 0


def cmd_audit_export(args: argparse.Namespace) -> int:
    from blueline.audit import export

    since = None
    if args.since is not None:
        try:
            since = datetime.fromisoformat(args.since.replace("Z", "+00:00"))
        except ValueError:
            print(f"error: --since {args.since!r} is not an ISO 8601 time", file=sys.stderr)
            return 2
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)

    async def write(db: Database) -> int:
        count = 0
        async for line in export(db, since=since, workspace=args.workspace):
            sys.stdout.write(line + "\n")
            count += 1
        return count

    _on_database(_settings(), write)
    sys.stdout.flush()
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from blueline.persistence.retention import prune

    pruned = _on_database(_settings(), lambda db: prune(db, args.days))
    print(f"pruned {pruned.deliveries} webhook deliveries and {pruned.events} events")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from blueline.api.schema import build_schema

    sdl = build_schema().as_str() + "\n"
    if args.output == "-":
        sys.stdout.write(sdl)
    else:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(sdl)
        print(f"wrote {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blueline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the API (GraphQL, webhooks, health)")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.set_defaults(func=cmd_serve)

    migrate = commands.add_parser("migrate", help="apply database migrations and exit")
    migrate.set_defaults(func=cmd_migrate)

    api_keys = commands.add_parser("api-keys", help="manage API keys")
    api_keys_commands = api_keys.add_subparsers(dest="api_keys_command", required=True)
    create = api_keys_commands.add_parser("create", help="mint a key (last line of stdout)")
    create.add_argument("--workspace", required=True)
    create.set_defaults(func=cmd_api_keys_create)
    listing = api_keys_commands.add_parser("list", help="list keys (never the keys themselves)")
    listing.add_argument("--workspace", default=None)
    listing.set_defaults(func=cmd_api_keys_list)
    revoke = api_keys_commands.add_parser("revoke", help="revoke a key by its id (key_…)")
    revoke.add_argument("key_id")
    revoke.set_defaults(func=cmd_api_keys_revoke)

    sandbox = commands.add_parser("sandbox-provider", help="run the provider simulator")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8100)
    sandbox.set_defaults(func=cmd_sandbox_provider)

    keys = commands.add_parser("keys", help="manage the encryption keyring")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    rotate = keys_commands.add_parser("rotate", help="re-encrypt secrets under the primary key")
    rotate.set_defaults(func=cmd_keys_rotate)

    reconcile = commands.add_parser("reconcile", help="one recovery and reconciliation pass")
    reconcile.add_argument("--min-age", type=float, default=0.0, metavar="SECONDS")
    reconcile.set_defaults(func=cmd_reconcile)

    audit = commands.add_parser("audit", help="check or export the audit trail")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    audit_verify = audit_commands.add_parser(
        "verify", help="recompute the hash chain; exit 1 naming the first bad record"
    )
    audit_verify.set_defaults(func=cmd_audit_verify)
    audit_export = audit_commands.add_parser("export", help="write records as JSON lines")
    audit_export.add_argument("--since", default=None, metavar="ISO")
    audit_export.add_argument("--workspace", default=None, metavar="NAME")
    audit_export.set_defaults(func=cmd_audit_export)

    prune = commands.add_parser(
        "prune", help="delete webhook deliveries and published events older than DAYS (>= 7)"
    )
    prune.add_argument("--days", type=float, default=7.0)
    prune.set_defaults(func=cmd_prune)

    schema = commands.add_parser("schema", help="export the GraphQL SDL (schema.graphql)")
    schema.add_argument("--output", default="schema.graphql", help="a path, or - for stdout")
    schema.set_defaults(func=cmd_schema)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    _configure_logging()
    try:
        code = args.func(args)
    except BluelineError as error:
        print(f"error: {error.message}", file=sys.stderr)
        code = 1
    raise SystemExit(code)
