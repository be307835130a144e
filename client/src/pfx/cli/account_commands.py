"""Account commands on the registry: ``pfx org``, ``pfx token``, ``pfx key`` and ``pfx policy``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

import perfusion_format as pf
from pfx import transfer

from . import output
from .output import JsonFlag, cell, plain
from .registry_commands import RegistryOption, TokenOption

__all__ = ["register"]

org_app = typer.Typer(help="Organizations and their members.", no_args_is_help=True)
token_app = typer.Typer(help="Your API tokens.", no_args_is_help=True)
key_app = typer.Typer(help="Signing keys registered for a namespace.", no_args_is_help=True)

Role = Annotated[str, typer.Option(help="reader, writer or admin.")]


def _rows(
    console: Console, columns: tuple[str, ...], rows: list[tuple[object, ...]], empty: str
) -> None:
    if not rows:
        console.print(empty)
        return
    table = output.table(*columns)
    for row in rows:
        table.add_row(*(cell(value) for value in row))
    console.print(table)


@org_app.command("create")
def org_create(
    name: Annotated[str, typer.Argument(help="The organization's name.")],
    registry: RegistryOption = None,
    token: TokenOption = None,
    json: JsonFlag = False,
) -> None:
    """Create an organization; you become its admin."""
    with transfer.connect(registry, token) as client:
        client.create_org(name)
    output.emit({"org": name}, lambda console: console.print(cell(f"Created organization {name}")))


@org_app.command("ls")
def org_ls(
    org: Annotated[str | None, typer.Argument(help="List this organization's members.")] = None,
    registry: RegistryOption = None,
    token: TokenOption = None,
    json: JsonFlag = False,
) -> None:
    """Your organizations and roles, or the members of ORG."""
    with transfer.connect(registry, token) as client:
        if org is None:
            orgs = client.list_orgs()
            output.emit(
                {"orgs": plain(orgs)},
                lambda console: _rows(
                    console,
                    ("organization", "your role"),
                    [(o.name, o.role) for o in orgs],
                    "You belong to no organization.",
                ),
            )
            return
        members = client.list_members(org)
    output.emit(
        {"org": org, "members": plain(members)},
        lambda console: _rows(console, ("member", "role"), [(m.user, m.role) for m in members], ""),
    )


@org_app.command("add-member")
def org_add_member(
    org: Annotated[str, typer.Argument(help="The organization.")],
    user: Annotated[str, typer.Argument(help="The user to add (or whose role to change).")],
    role: Role = "reader",
    registry: RegistryOption = None,
    token: TokenOption = None,
    json: JsonFlag = False,
) -> None:
    """Add a member to an organization, or change their role (org admins)."""
    with transfer.connect(registry, token) as client:
        membership = client.set_member(org, user, role)
    message = f"{membership.user} is {membership.role} of {membership.org}"
    output.emit(plain(membership), lambda console: console.print(cell(message)))


@org_app.command("remove-member")
def org_remove_member(
    org: Annotated[str, typer.Argument(help="The organization.")],
    user: Annotated[str, typer.Argument(help="The user to remove.")],
    registry: RegistryOption = None,
    token: TokenOption = None,
    json: JsonFlag = False,
) -> None:
    """Remove a member from an organization (org admins)."""
    with transfer.connect(registry, token) as client:
        client.remove_member(org, user)
    output.emit(
        {"org": org, "removed": user},
        lambda console: console.print(cell(f"{user} is no longer a member of {org}")),
    )


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="What the token is for (e.g. ci).")],
    scope: Annotated[str, typer.Option(help="read, write or admin.")] = "read",
    days: Annotated[int | None, typer.Option(help="Expire after this many days.", min=1)] = None,
    user: Annotated[str | None, typer.Option(help="For another user (registry admins).")] = None,
    registry: RegistryOption = None,
    token: TokenOption = None,
    json: JsonFlag = False,
) -> None:
    """Create an API token; its secret is printed once, never stored by the registry."""
    expires = datetime.now(UTC) + timedelta(days=days) if days else None
    with transfer.connect(registry, token) as client:
        created = client.create_token(name, scope, expires, user)
    payload = {**plain(created), "token": created.token}

    def render(console: Console) -> None:
        console.print(cell(f"Token {created.name} ({created.scope}), id {created.id}:"))
        console.print(cell(created.token), soft_wrap=True)
        console.print("Store it now: it is not shown again.")

    output.emit(payload, render)


@token_app.command("ls")
def token_ls(
    registry: RegistryOption = None, token: TokenOption = None, json: JsonFlag = False
) -> None:
    """Your tokens (never their secrets), revoked and expired ones included."""
    with transfer.connect(registry, token) as client:
        tokens = client.list_tokens()
    rows = [
        (
            t.id,
            t.name,
            t.scope,
            t.created_at.date(),
            t.expires_at.isoformat() if t.expires_at else "never",
            "revoked" if t.revoked else "",
        )
        for t in tokens
    ]
    output.emit(
        {"tokens": plain(tokens)},
        lambda console: _rows(console, ("id", "name", "scope", "created", "expires", ""), rows, ""),
    )


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[int, typer.Argument(metavar="ID", help="The token's id (pfx token ls).")],
    registry: RegistryOption = None,
    token: TokenOption = None,
    json: JsonFlag = False,
) -> None:
    """Revoke one of your tokens (the one in use too)."""
    with transfer.connect(registry, token) as client:
        client.revoke_token(token_id)
    output.emit({"revoked": token_id}, lambda console: console.print(f"Revoked token {token_id}."))


@key_app.command("add")
def key_add(
    namespace: Annotated[str, typer.Argument(help="Your user name or an organization you admin.")],
    public_key: Annotated[Path, typer.Argument(help="The public key file (PFX_KEY.pub).")],
    name: Annotated[str, typer.Option(help="A label for the key.")] = "",
    registry: RegistryOption = None,
    token: TokenOption = None,
    json: JsonFlag = False,
) -> None:
    """Register a public signing key for a namespace (for its signature policy)."""
    key = pf.load_public_key(public_key)
    with transfer.connect(registry, token) as client:
        info = client.add_key(namespace, key, name)
    message = f"{info.key_id} registered for {namespace}"
    output.emit(plain(info), lambda console: console.print(cell(message)))


@key_app.command("ls")
def key_ls(
    namespace: Annotated[str, typer.Argument(help="The namespace.")],
    registry: RegistryOption = None,
    token: TokenOption = None,
    json: JsonFlag = False,
) -> None:
    """The signing keys registered for a namespace."""
    with transfer.connect(registry, token) as client:
        keys = client.list_keys(namespace)
    rows = [(k.key_id, k.name) for k in keys]
    output.emit(
        {"namespace": namespace, "keys": plain(keys)},
        lambda console: _rows(console, ("key id", "name"), rows, f"No keys for {namespace}."),
    )


def policy(
    namespace: Annotated[str, typer.Argument(help="The namespace.")],
    require_signatures: Annotated[
        bool | None,
        typer.Option(
            "--require-signatures/--no-require-signatures",
            help="Refuse pushes not signed by one of the namespace's keys.",
            show_default=False,
        ),
    ] = None,
    protected_tags: Annotated[
        bool | None,
        typer.Option(
            "--protect-tags/--unprotect-tags",
            help="Only admins move existing tags.",
            show_default=False,
        ),
    ] = None,
    registry: RegistryOption = None,
    token: TokenOption = None,
    json: JsonFlag = False,
) -> None:
    """Show a namespace's policy, or change it (namespace admins)."""
    with transfer.connect(registry, token) as client:
        if require_signatures is None and protected_tags is None:
            current = client.policy(namespace)
        else:
            current = client.set_policy(namespace, require_signatures, protected_tags)
    output.emit(
        {"namespace": namespace, **plain(current)},
        lambda console: output.print_fields(
            console,
            [
                ("namespace", namespace),
                ("require signatures", "yes" if current.require_signatures else "no"),
                ("protected tags", "yes" if current.protected_tags else "no"),
            ],
        ),
    )


def register(app: typer.Typer) -> None:
    """Add this module's command groups to ``app``."""
    app.add_typer(org_app, name="org")
    app.add_typer(token_app, name="token")
    app.add_typer(key_app, name="key")
    app.command()(policy)
