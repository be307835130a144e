"""The OCI side of ``pfx push``, ``pfx pull``, ``pfx login`` and ``pfx logout``: what they do
when given ``oci://…`` (:mod:`pfx.oci`). The commands themselves live in
:mod:`pfx.cli.registry_commands`, which hands OCI references here."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pfx import oci
from pfx.errors import ClientError, ErrorCode
from pfx.oci_auth import Credentials
from pfx.oci_reference import parse_oci_host

from . import output
from .output import cell, plain

__all__ = ["PlainHttpFlag", "login", "logout", "push", "refuse_options"]

PlainHttpFlag = Annotated[
    bool,
    typer.Option(
        "--plain-http",
        help="oci:// only: speak http instead of https (for a registry on loopback).",
    ),
]


def refuse_options(reference: str, given: dict[str, bool], allowed: str) -> None:
    """USAGE_ERROR when an option in ``given`` (name → whether it was given) does not apply to
    ``reference``; ``allowed`` says which do."""
    names = [name for name, present in given.items() if present]
    if names:
        raise ClientError(
            ErrorCode.USAGE_ERROR,
            f"{', '.join(names)} cannot be used with {reference} ({allowed})",
        )


def push(
    file: Path,
    reference: str,
    sign: Path | None,
    plain_http: bool,
    progress: Callable[[int, int], None] | None,
) -> None:
    """``pfx push FILE oci://…``."""
    result = oci.push(file, reference, sign_with=sign, plain_http=plain_http, progress=progress)

    def render(console: Console) -> None:
        sent = "uploaded" if result.uploaded else "already in the repository"
        console.print(cell(f"{result.reference} pushed; bytes {sent}"))
        output.print_fields(
            console,
            [
                ("digest", result.digest),
                ("manifest", result.manifest_digest),
                ("signers", ", ".join(result.signers) or "none"),
            ],
        )

    output.emit(plain(result), render)


def login(url: str, username: str, password: str, plain_http: bool) -> None:
    """``pfx login oci://HOST --username USER``, the password already read."""
    host = parse_oci_host(url)
    result = oci.login(host, Credentials(username, password), plain_http=plain_http)
    checked = "" if result.checked else " (it asks for no credentials at /v2/: not checked)"
    output.emit(
        {**plain(result), "registry": f"oci://{host}"},
        lambda console: console.print(
            cell(f"Logged in to oci://{host} as {username}{checked}"), soft_wrap=True
        ),
    )


def logout(url: str) -> None:
    """``pfx logout oci://HOST``."""
    host = parse_oci_host(url)
    forgotten = oci.logout(host)
    output.emit(
        {"registry": f"oci://{host}", "logged_out": forgotten},
        lambda console: console.print(
            cell(f"Forgot the credentials for oci://{host}.")
            if forgotten
            else cell(f"No credentials saved for oci://{host}.")
        ),
    )
