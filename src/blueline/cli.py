"""``blueline`` command line: serve, migrate, api-keys, sandbox-provider, keys, reconcile,
prune."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import ValidationError

from blueline.errors import BluelineError
from blueline.settings import Settings

if TYPE_CHECKING:
    from blueline.persistence.database import Database

T = TypeVar("T")

# How `serve` runs uvicorn (the benchmarks run the app the same way).
UVICORN_OPTIONS: dict[str, Any] = {
    "log_level": "warning",
    "ws": "websockets-sansio",
    # Line updates are small: compression costs more memory per socket (~34 KiB) and
    # CPU per frame than it saves.
    "ws_per_message_deflate": False,
    "timeout_graceful_shutdown": 10,
}


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

    upgrade(settings.database_url)


def _on_database(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    """Migrate, then run one piece of work on a database opened for it alone."""
    _migrate(settings)

    from blueline.persistence.database import Database

    async def run() -> T:
        db = Database(settings.database_url)
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
    problems = settings.production_problems()
    if problems:
        for problem in problems:
            print(f"refusing to start in production: {problem}", file=sys.stderr)
        return 2
    # Imported after the checks so a refusal is immediate.
    import uvicorn

    from blueline.app import create_app
    from blueline.runtime import load_vault
    from blueline.security.access import bootstrap_default_workspace

    if settings.is_production and settings.database_url.startswith("sqlite"):
        logging.getLogger("blueline").warning(
            "production on SQLite: use PostgreSQL (BLUELINE_DATABASE_URL=postgresql+asyncpg://…)"
        )
    load_vault(settings, create_keyring=True)
    key = _on_database(settings, bootstrap_default_workspace)
    if key is not None:
        print(f"API key: {key}", flush=True)
    print(f"Blueline listening on http://{settings.host}:{settings.port}/graphql", flush=True)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, **UVICORN_OPTIONS)
    return 0


def cmd_migrate(_args: argparse.Namespace) -> int:
    _migrate(_settings())
    print("database is at the latest migration")
    return 0


def cmd_api_keys_create(args: argparse.Namespace) -> int:
    from blueline.security.access import create_api_key

    key = _on_database(_settings(), lambda db: create_api_key(db, args.workspace))
    print(f"API key for workspace {args.workspace.strip()!r} (shown once, store it now):")
    print(key, flush=True)
    return 0


def cmd_api_keys_list(args: argparse.Namespace) -> int:
    from blueline.security.access import list_api_keys

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
    from blueline.security.access import revoke_api_key

    _on_database(_settings(), lambda db: revoke_api_key(db, args.key_id))
    print(f"revoked {args.key_id}: refused from the next request or operation on")
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
    from blueline.runtime import load_vault
    from blueline.security.rotation import rotate_all

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
        async with open_runtime(settings) as runtime:
            report = await runtime.provisioning.reconcile(args.min_age)
            if settings.redis_url:
                # Publish what this pass committed; without Redis the API process's
                # relay picks the events up from the outbox.
                while await runtime.relay.pass_once():
                    pass
            return (
                f"setups completed: {report.completed}, failed: {report.failed}, "
                f"discarded: {report.discarded}, deferred: {report.deferred}; "
                f"lines assigned: {report.lines_assigned}"
            )

    print(asyncio.run(run()))
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from blueline.persistence.retention import prune

    pruned = _on_database(_settings(), lambda db: prune(db, args.days))
    print(f"pruned {pruned.deliveries} webhook deliveries and {pruned.events} events")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from blueline.schema import build_schema

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
