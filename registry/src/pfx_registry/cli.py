"""``pfx-registry``: run, migrate and administer the registry."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from datetime import timedelta

import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError
from sqlalchemy import insert, select

from .auth import hash_token, new_token
from .db import accounts, tokens, utcnow
from .errors import ApiError
from .gc import collect_garbage
from .migrate import upgrade
from .observability import MULTIPROCESS_VARIABLE, access_log
from .service.access import check_namespace_name
from .settings import Settings, settings_error
from .state import open_registry


class ConfigurationError(Exception):
    """A ``PFX_*`` variable or an option holds an invalid value (the message names it)."""


def _settings(arguments: argparse.Namespace) -> Settings:
    try:
        return Settings.from_env(data_dir=arguments.data)
    except ValidationError as error:
        raise ConfigurationError(settings_error(error)) from None


def serve(arguments: argparse.Namespace) -> int:
    """Migrate, say how to get an admin token when there is none, and serve."""
    from .app import create_app

    settings = _settings(arguments)
    registry = open_registry(settings)
    upgrade(registry.engine)
    with registry.engine.connect() as connection:
        has_admin = connection.execute(select(accounts.c.id).where(accounts.c.is_admin)).first()
    blobs = f"s3://{settings.s3_bucket}" if settings.s3_bucket else str(settings.data_dir / "blobs")
    print(f"pfx registry on http://{arguments.host}:{arguments.port}")
    print(f"  index: {settings.index_url.split('@')[-1]}   blobs: {blobs}")
    if not has_admin:
        print(
            "  No administrator yet. Create one and get its token with:\n"
            f"    pfx-registry admin create-token --data {settings.data_dir}"
        )
    _log_access_to_stdout()
    if arguments.workers == 1:
        app = create_app(settings, migrate=False)
        uvicorn.run(app, host=arguments.host, port=arguments.port, access_log=False)
        return 0
    # Each worker process builds its own app (and caches) from the environment; their metrics
    # meet in one folder, so that a scrape of any of them counts the requests of all.
    os.environ["PFX_DATA_DIR"] = str(settings.data_dir)
    own_folder = not os.environ.get(MULTIPROCESS_VARIABLE)
    if own_folder:
        os.environ[MULTIPROCESS_VARIABLE] = tempfile.mkdtemp(prefix="pfx-registry-metrics-")
    try:
        uvicorn.run(
            "pfx_registry.cli:worker_app",
            factory=True,
            host=arguments.host,
            port=arguments.port,
            workers=arguments.workers,
            access_log=False,
        )
    finally:
        if own_folder:
            shutil.rmtree(os.environ.pop(MULTIPROCESS_VARIABLE), ignore_errors=True)
    return 0


def worker_app() -> FastAPI:
    """The app of one ``serve --workers N`` process: settings from the environment (checked by
    the parent before it started the workers), schema already migrated by the parent."""
    from .app import create_app

    _log_access_to_stdout()
    return create_app(migrate=False)


def _log_access_to_stdout() -> None:
    """One JSON line per request on standard output (the access log; never a token)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access_log.handlers[:] = [handler]
    access_log.setLevel(logging.INFO)
    access_log.propagate = False


def migrate(arguments: argparse.Namespace) -> int:
    """Bring the index schema up to date."""
    changed = upgrade(open_registry(_settings(arguments)).engine)
    print("index schema migrated" if changed else "index schema is up to date")
    return 0


def create_admin_token(arguments: argparse.Namespace) -> int:
    """Create the administrator account if needed and print a new admin token once."""
    try:
        check_namespace_name(arguments.user)
    except ApiError as error:
        raise ConfigurationError(f"--user: {error.message}") from None
    registry = open_registry(_settings(arguments))
    upgrade(registry.engine)
    secret = new_token()
    with registry.engine.begin() as connection:
        user_id = connection.execute(
            select(accounts.c.id).where(accounts.c.name == arguments.user)
        ).scalar()
        if user_id is None:
            user_id = connection.execute(
                insert(accounts)
                .values(name=arguments.user, kind="user", is_admin=True)
                .returning(accounts.c.id)
            ).scalar_one()
        expires = utcnow() + timedelta(days=arguments.days) if arguments.days else None
        connection.execute(
            insert(tokens).values(
                user_id=user_id,
                name="admin (pfx-registry admin create-token)",
                secret_hash=hash_token(secret),
                scope="admin",
                expires_at=expires,
            )
        )
    print(secret)
    return 0


def collect(arguments: argparse.Namespace) -> int:
    """Delete blobs that no version has referenced, and temp files of cut-off uploads, for the
    grace period."""
    report = collect_garbage(
        open_registry(_settings(arguments)),
        timedelta(hours=arguments.grace_hours),
        dry_run=arguments.dry_run,
    )
    verb = "would delete" if arguments.dry_run else "deleted"
    counts = f"{len(report.unreferenced)} unreferenced and {len(report.unindexed)} unindexed"
    print(f"{verb} {counts} blobs, and {len(report.stale_uploads)} stale uploads")
    for digest in (*report.unreferenced, *report.unindexed):
        print(f"  {digest}")
    for name in report.stale_uploads:
        print(f"  uploads/{name}")
    return 0


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``pfx-registry`` console command."""
    parser = argparse.ArgumentParser(prog="pfx-registry", description="The pfx concept registry.")
    commands = parser.add_subparsers(dest="command", required=True)
    data_help = (
        "folder for the embedded blob store and SQLite index (default: $PFX_DATA_DIR or data)"
    )

    run = commands.add_parser("serve", help="start the registry (uvicorn)")
    run.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    run.add_argument("--port", type=int, default=8700, help="port to bind (default 8700)")
    run.add_argument("--data", default=None, help=data_help)
    run.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes sharing the port (default 1; e.g. one per CPU core)",
    )
    run.set_defaults(handler=serve)

    schema = commands.add_parser("migrate", help="bring the index schema up to date")
    schema.add_argument("--data", default=None, help=data_help)
    schema.set_defaults(handler=migrate)

    admin = commands.add_parser("admin", help="administration").add_subparsers(
        dest="admin_command", required=True
    )
    token = admin.add_parser("create-token", help="print a new registry-administrator token")
    token.add_argument("--data", default=None, help=data_help)
    token.add_argument("--user", default="admin", help="administrator account (default admin)")
    token.add_argument("--days", type=int, default=0, help="expire after N days (default never)")
    token.set_defaults(handler=create_admin_token)

    gc = commands.add_parser(
        "gc", help="delete unreferenced blobs and cut-off uploads (after a grace period)"
    )
    gc.add_argument("--data", default=None, help=data_help)
    gc.add_argument("--grace-hours", type=float, default=24.0, help="default 24")
    gc.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
    gc.set_defaults(handler=collect)

    arguments = parser.parse_args(argv)
    try:
        status = arguments.handler(arguments)
    except ConfigurationError as error:
        print(f"pfx-registry: error: {error}", file=sys.stderr)
        status = 2
    sys.exit(status)
