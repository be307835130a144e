"""Local commands, no registry involved: ``pfx trust`` (the trust policy pulls are judged by)
and ``pfx cache`` (the content-addressed cache of pulled concepts)."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pfx.cache import Cache
from pfx.errors import ClientError, ErrorCode
from pfx.trust import TrustPolicy

from . import output
from .output import JsonFlag, cell, plain

__all__ = ["register"]

trust_app = typer.Typer(
    help="Which signing keys you trust, for which concepts.", no_args_is_help=True
)
cache_app = typer.Typer(help="The local cache of pulled concepts.", no_args_is_help=True)

_AGE = re.compile(r"([1-9][0-9]*)([dhm])")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def _print_policy(console: Console, policy: TrustPolicy) -> None:
    console.print(cell(f"level: {policy.level}"))
    if not policy.rules:
        console.print(
            "No trusted keys: pulls accept only what --allow-unsigned or the level allows."
        )
        return
    table = output.table("pattern", "key id")
    for rule in policy.rules:
        table.add_row(cell(rule.pattern), cell(rule.key_id))
    console.print(table)


def _policy_payload(policy: TrustPolicy) -> dict[str, object]:
    return {"level": policy.level, "rules": plain(list(policy.rules))}


@trust_app.command("add")
def trust_add(
    pattern: Annotated[str, typer.Argument(help="Concepts: NS/NAME, NS/* or *.")],
    key: Annotated[Path, typer.Argument(help="The public key file to trust for them.")],
    json: JsonFlag = False,
) -> None:
    """Trust a public key for the concepts PATTERN matches."""
    policy = TrustPolicy.load()
    rule = policy.add(pattern, key)
    policy.save()
    output.emit(
        plain(rule), lambda console: console.print(cell(f"Trusting {rule.key_id} for {pattern}"))
    )


@trust_app.command("rm")
def trust_rm(
    key_id: Annotated[str, typer.Argument(help="The key id (ed25519:…), from pfx trust ls.")],
    pattern: Annotated[
        str | None, typer.Option(help="Only this pattern (default: revoke the key everywhere).")
    ] = None,
    json: JsonFlag = False,
) -> None:
    """Stop trusting a key (everywhere, or for one pattern)."""
    policy = TrustPolicy.load()
    removed = policy.remove(key_id, pattern)
    if not removed:
        raise ClientError(ErrorCode.USAGE_ERROR, f"no trust rule for {key_id}")
    policy.save()
    output.emit(
        {"removed": plain(list(removed))},
        lambda console: console.print(cell(f"Removed {len(removed)} rule(s) for {key_id}")),
    )


@trust_app.command("ls")
def trust_ls(json: JsonFlag = False) -> None:
    """The trust level and rules."""
    policy = TrustPolicy.load()
    output.emit(_policy_payload(policy), lambda console: _print_policy(console, policy))


@trust_app.command("level")
def trust_level(
    level: Annotated[str, typer.Argument(help="enforce (default), warn or off.")],
    json: JsonFlag = False,
) -> None:
    """How pulls treat unsigned or untrusted concepts: refuse, warn, or ignore."""
    policy = TrustPolicy.load()
    policy.set_level(level)
    policy.save()
    output.emit(_policy_payload(policy), lambda console: _print_policy(console, policy))


@cache_app.command("ls")
def cache_ls(json: JsonFlag = False) -> None:
    """Cached concepts, their sizes and the references that point at them."""
    cache = Cache()
    entries = cache.entries()

    def render(console: Console) -> None:
        table = output.table("digest", "size", "last used", "references")
        for entry in entries:
            when = entry.last_used.strftime("%Y-%m-%d %H:%M")
            table.add_row(
                cell(entry.digest), cell(entry.size), cell(when), cell(", ".join(entry.refs))
            )
        console.print(table if entries else "The cache is empty.")
        console.print(cell(f"{len(entries)} concepts, {cache.size():,} bytes in {cache.root}"))

    output.emit({"root": str(cache.root), "size": cache.size(), "entries": plain(entries)}, render)


@cache_app.command("verify")
def cache_verify(json: JsonFlag = False) -> int:
    """Re-hash every cached concept; exit 1 when one is corrupt (prune removes it)."""
    results = Cache().verify()
    bad = [digest for digest, ok in results if not ok]

    def render(console: Console) -> None:
        for digest in bad:
            console.print(cell(f"corrupt: {digest}"))
        console.print(cell(f"{len(results) - len(bad)} of {len(results)} cached concepts intact"))

    output.emit({"checked": len(results), "corrupt": bad}, render)
    return output.EXIT_INVALID if bad else output.EXIT_OK


def _age(text: str) -> timedelta:
    match = _AGE.fullmatch(text)
    if match is None:
        raise typer.BadParameter("expected a number and d, h or m, e.g. 30d")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


@cache_app.command("prune")
def cache_prune(
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            help="Also remove concepts unused for this long (e.g. 30d, 12h).",
            show_default=False,
        ),
    ] = None,
    json: JsonFlag = False,
) -> None:
    """Remove unreferenced and corrupt concepts (and, with --older-than, unused ones)."""
    report = Cache().prune(_age(older_than) if older_than else None)
    output.emit(
        plain(report),
        lambda console: console.print(
            cell(
                f"Removed {len(report.blobs)} concepts and {len(report.refs)} references, "
                f"{report.freed_bytes:,} bytes freed"
            )
        ),
    )


def register(app: typer.Typer) -> None:
    """Add this module's command groups to ``app``."""
    app.add_typer(trust_app, name="trust")
    app.add_typer(cache_app, name="cache")
