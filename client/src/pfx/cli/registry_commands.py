"""Registry commands: ``login``, ``logout``, ``whoami``, ``push``, ``pull``, ``search``, ``ls``,
``show``, ``tag``, ``yank`` and ``rm``.

The registry is ``--registry URL``, else ``$PFX_REGISTRY``, else the one ``pfx login`` saved; the
token likewise (``--token``, ``$PFX_TOKEN``, the config file). Transfers show a progress bar on
stderr unless ``--json`` is given. ``push``, ``pull``, ``login`` and ``logout`` also take
``oci://HOST[:PORT]/…`` for any OCI registry (:mod:`pfx.cli.oci_commands`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from pfx import oci, transfer
from pfx.config import load_config, save_config
from pfx.errors import ClientError, ErrorCode
from pfx.oci_reference import is_oci_reference, parse_oci_host
from pfx.reference import parse_reference

from . import oci_commands, output
from .oci_commands import PlainHttpFlag, refuse_options
from .output import JsonFlag, cell, plain

__all__ = ["register"]

RegistryOption = Annotated[
    str | None,
    typer.Option(
        "--registry",
        help="Registry URL (default: $PFX_REGISTRY, else the one `pfx login` saved).",
        metavar="URL",
        show_default=False,
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        help="API token (default: $PFX_TOKEN, else the one `pfx login` saved).",
        metavar="TOKEN",
        show_default=False,
    ),
]


@contextmanager
def transfer_progress(description: str) -> Iterator[Callable[[int, int], None] | None]:
    """A ``progress(done, total)`` callback drawing a bar on stderr; None in JSON mode or when
    stderr is not a terminal."""
    if output.json_mode() or not sys.stderr.isatty():
        yield None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _secret(given: str | None, prompt: str, from_stdin: bool = False) -> str:
    """``given``, else one line of stdin when it is piped (or ``from_stdin``), else a hidden
    prompt; USAGE_ERROR when empty."""
    if given is None:
        given = (
            sys.stdin.readline().strip()
            if from_stdin or not sys.stdin.isatty()
            else typer.prompt(prompt, hide_input=True)
        )
    if not given:
        raise ClientError(ErrorCode.USAGE_ERROR, f"no {prompt.lower()} given")
    return given


def login(
    url: Annotated[
        str,
        typer.Argument(
            help="The registry's URL, e.g. https://pfx.example.org, or oci://HOST[:PORT]."
        ),
    ],
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            help="API token (oci://: the password or access token); default: read from stdin "
            "when piped, else prompted (hidden).",
            show_default=False,
        ),
    ] = None,
    username: Annotated[
        str | None,
        typer.Option("--username", "-u", help="oci:// only: the user name.", show_default=False),
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="oci:// only: read the password from stdin.")
    ] = False,
    plain_http: PlainHttpFlag = False,
    json: JsonFlag = False,
) -> None:
    """Check credentials against a registry and save them in the config file (mode 0600): a
    pfx registry's token, or an OCI registry's user name and password."""
    if is_oci_reference(url):
        parse_oci_host(url)  # a malformed URL is refused before a password is asked for
        if not username:
            raise ClientError(ErrorCode.USAGE_ERROR, f"logging in to {url} needs --username")
        if token is not None and password_stdin:
            raise ClientError(ErrorCode.USAGE_ERROR, "give --token or --password-stdin, not both")
        password = _secret(token, "Password", from_stdin=password_stdin)
        oci_commands.login(url, username, password, plain_http)
        return
    refuse_options(
        url,
        {"--username": username is not None, "--password-stdin": password_stdin},
        "they are for oci:// registries",
    )
    refuse_options(url, {"--plain-http": plain_http}, "a pfx registry's URL says its scheme")
    token = _secret(token, "Token")
    from pfx.client import Client  # httpx: loaded by the commands that talk to a registry

    with Client(url, token) as client:
        identity = client.whoami()
    if identity.name is None:
        raise ClientError(ErrorCode.USAGE_ERROR, f"{url} did not accept the token")
    path = save_config(replace(load_config(), registry=url.rstrip("/"), token=token))
    payload = {"registry": url.rstrip("/"), "user": identity.name, "scope": identity.scope}
    output.emit(
        {**payload, "config": str(path)},
        lambda console: console.print(
            cell(f"Logged in to {payload['registry']} as {identity.name} ({identity.scope})")
        ),
    )


def logout(
    registry: Annotated[
        str | None,
        typer.Argument(
            metavar="[oci://HOST]", help="Forget this OCI registry's credentials instead."
        ),
    ] = None,
    json: JsonFlag = False,
) -> None:
    """Forget the saved token (the registry URL stays), or an OCI registry's credentials."""
    if registry is not None:
        if not is_oci_reference(registry):
            raise ClientError(
                ErrorCode.USAGE_ERROR,
                f"{registry!r}: pfx logout forgets the pfx registry's token without an "
                "argument, or an OCI registry's credentials with oci://HOST[:PORT]",
            )
        oci_commands.logout(registry)
        return
    config = load_config()
    had_token = config.token is not None
    if had_token:
        save_config(replace(config, token=None))
    output.emit(
        {"logged_out": had_token},
        lambda console: console.print("Logged out." if had_token else "Not logged in."),
    )


def whoami(
    registry: RegistryOption = None, token: TokenOption = None, json: JsonFlag = False
) -> None:
    """Who the token belongs to on the registry."""
    with transfer.connect(registry, token) as client:
        identity = client.whoami()
        url = client.url
    payload = {"registry": url, **plain(identity)}
    output.emit(
        payload,
        lambda console: output.print_fields(
            console,
            [
                ("registry", url),
                ("user", identity.name or "(anonymous)"),
                ("scope", identity.scope or "-"),
                ("admin", "yes" if identity.admin else "no"),
            ],
        ),
    )


def push(
    file: Annotated[Path, typer.Argument(help="The concept file.", show_default=False)],
    reference: Annotated[
        str, typer.Argument(help="NS/NAME:VERSION, or oci://HOST[:PORT]/REPO[:TAG]")
    ],
    tag: Annotated[
        list[str] | None,
        typer.Option("--tag", "-t", help="Tag for (repeatable; default latest)"),
    ] = None,
    public: Annotated[
        bool | None,
        typer.Option(
            "--public/--private",
            help="Visibility (default: a new repository is private; an existing one unchanged).",
            show_default=False,
        ),
    ] = None,
    sign: Annotated[
        Path | None,
        typer.Option("--sign", help="Sign with this private key (default: config default_key)."),
    ] = None,
    preview: Annotated[
        list[Path] | None, typer.Option("--preview", help="Preview image (repeatable).")
    ] = None,
    description: Annotated[
        Path | None, typer.Option("--description", help="Markdown file describing the concept.")
    ] = None,
    label: Annotated[list[str] | None, typer.Option("--label", help="Label (repeatable).")] = None,
    registry: RegistryOption = None,
    token: TokenOption = None,
    plain_http: PlainHttpFlag = False,
    json: JsonFlag = False,
) -> None:
    """Validate, sign if asked, upload (unless the registry has the bytes) and publish — to the
    pfx registry, or as an OCI artifact to any OCI registry (oci://…)."""
    if is_oci_reference(reference):
        pfx_only = {
            "--tag": bool(tag),
            "--public/--private": public is not None,
            "--preview": bool(preview),
            "--description": description is not None,
            "--label": bool(label),
            "--registry": registry is not None,
            "--token": token is not None,
        }
        refuse_options(reference, pfx_only, "an OCI push takes --sign, --plain-http and --json")
        with transfer_progress("upload") as progress:
            oci_commands.push(file, reference, sign, plain_http, progress)
        return
    refuse_options(reference, {"--plain-http": plain_http}, "it is for oci:// references")
    text = description.read_text(encoding="utf-8") if description else None
    with transfer.connect(registry, token) as client, transfer_progress("upload") as progress:
        result = transfer.push(
            file,
            reference,
            client=client,
            tags=tag,
            private=None if public is None else not public,
            sign_with=sign,
            previews=preview or (),
            description=text,
            labels=label,
            progress=progress,
        )
    version = result.version
    payload = {
        "reference": result.reference,
        "digest": result.digest,
        "uploaded": result.uploaded,
        "created": version.created,
        "signers": version.signers,
        "previews": list(result.previews),
    }

    def render(console: Console) -> None:
        state = "published" if version.created else "already published (same digest)"
        sent = "uploaded" if result.uploaded else "already on the registry"
        console.print(cell(f"{result.reference} {state}; bytes {sent}"))
        output.print_fields(
            console, [("digest", result.digest), ("signers", ", ".join(version.signers) or "none")]
        )

    output.emit(payload, render)


def pull(
    reference: Annotated[
        str,
        typer.Argument(
            help="NS/NAME[:TAG] or NS/NAME@sha256:DIGEST, or oci://HOST[:PORT]/REPO[:TAG] or "
            "oci://HOST[:PORT]/REPO@sha256:MANIFEST",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path | None, typer.Option("--output", "-o", help="Also write the file here.")
    ] = None,
    allow_unsigned: Annotated[
        bool,
        typer.Option(
            "--allow-unsigned",
            help="Accept a concept that is unsigned or signed by keys you do not trust.",
        ),
    ] = False,
    registry: RegistryOption = None,
    token: TokenOption = None,
    plain_http: PlainHttpFlag = False,
    json: JsonFlag = False,
) -> None:
    """Fetch a concept into the cache, verified against its digest and your trust policy (from
    the pfx registry, or from any OCI registry: oci://…)."""
    with transfer_progress("download") as progress:
        result = _pull(reference, out, allow_unsigned, registry, token, plain_http, progress)
    payload = {**plain(result), "trust": plain(result.trust)}

    if result.trust.status != "trusted" and not output.json_mode():
        Console(stderr=True).print(cell(f"warning: {result.trust.message}"), soft_wrap=True)

    def render(console: Console) -> None:
        source = "from the cache" if result.from_cache else "downloaded"
        console.print(cell(f"{result.reference} {source}: {result.trust.message}"), soft_wrap=True)
        output.print_fields(console, [("digest", result.digest), ("path", result.path)])

    output.emit(payload, render)


def _pull(
    reference: str,
    out: Path | None,
    allow_unsigned: bool,
    registry: str | None,
    token: str | None,
    plain_http: bool,
    progress: Callable[[int, int], None] | None,
) -> transfer.PullResult:
    """The pull of ``pfx pull``, from an OCI registry or the pfx registry."""
    if is_oci_reference(reference):
        refuse_options(
            reference,
            {"--registry": registry is not None, "--token": token is not None},
            "credentials come from `pfx login oci://HOST` or the docker config",
        )
        return oci.pull(
            reference,
            allow_unsigned=allow_unsigned,
            output=out,
            plain_http=plain_http,
            progress=progress,
        )
    refuse_options(reference, {"--plain-http": plain_http}, "it is for oci:// references")
    client = transfer.connect(registry, token) if registry or token else None
    try:
        return transfer.pull(
            reference, client=client, allow_unsigned=allow_unsigned, output=out, progress=progress
        )
    finally:
        if client is not None:
            client.close()


def search(
    query: Annotated[str, typer.Argument(help="Words to find (empty: everything).")] = "",
    family: Annotated[str | None, typer.Option(help="sd-1, sd-2, sdxl or custom.")] = None,
    ns: Annotated[str | None, typer.Option("--ns", help="Only this namespace.")] = None,
    signed_by: Annotated[str | None, typer.Option(help="Only concepts this key id signed.")] = None,
    superclass: Annotated[str | None, typer.Option(help="Only this superclass word.")] = None,
    sort: Annotated[str, typer.Option(help="relevance, downloads or recent.")] = "relevance",
    limit: Annotated[int, typer.Option(help="Results to show (1-100).", min=1, max=100)] = 20,
    registry: RegistryOption = None,
    token: TokenOption = None,
    json: JsonFlag = False,
) -> None:
    """Search the concepts you may read."""
    with transfer.connect(registry, token) as client:
        page = client.search(
            query,
            family=family,
            namespace=ns,
            signer=signed_by,
            superclass=superclass,
            sort=sort,
            limit=limit,
        )

    def render(console: Console) -> None:
        rows = output.table("reference", "token", "family", "downloads", "signed", "title")
        for hit in page.results:
            signed = "yes" if hit.signers else "no"
            rows.add_row(
                *(cell(v) for v in (hit.reference, hit.token, hit.family, hit.downloads, signed)),
                cell(hit.title),
            )
        console.print(rows if page.results else "No concepts found.")

    output.emit(plain(page), render)


def ls(
    ns: Annotated[str | None, typer.Argument(help="Namespace (default: your own).")] = None,
    registry: RegistryOption = None,
    token: TokenOption = None,
    json: JsonFlag = False,
) -> None:
    """List the concepts of a namespace that you may read."""
    with transfer.connect(registry, token) as client:
        namespace = ns or client.whoami().name
        if namespace is None:
            raise ClientError(ErrorCode.USAGE_ERROR, "name a namespace (anonymous: none)")
        concepts = client.list_namespace(namespace)

    def render(console: Console) -> None:
        rows = output.table("concept", "visibility", "downloads")
        for concept in concepts:
            visibility = "private" if concept.private else "public"
            name = f"{namespace}/{concept.name}"
            rows.add_row(cell(name), cell(visibility), cell(concept.downloads))
        console.print(rows if concepts else f"No concepts in {namespace} that you may read.")

    output.emit({"namespace": namespace, "concepts": [plain(c) for c in concepts]}, render)


def show(
    repository: Annotated[str, typer.Argument(help="NS/NAME", show_default=False)],
    registry: RegistryOption = None,
    token: TokenOption = None,
    json: JsonFlag = False,
) -> None:
    """A concept's versions, tags, signers, downloads and preview links."""
    ref = parse_reference(repository)
    with transfer.connect(registry, token) as client:
        info = client.repository(ref.namespace, ref.name)
        url = client.url

    def render(console: Console) -> None:
        output.print_fields(
            console,
            [
                ("concept", f"{info.namespace}/{info.name}"),
                ("visibility", "private" if info.private else "public"),
                ("downloads", info.downloads),
                ("labels", ", ".join(info.labels) or "-"),
                ("tags", ", ".join(f"{t} -> {v}" for t, v in info.tags.items()) or "-"),
            ],
        )
        rows = output.table("version", "digest", "token", "family", "signers", "yanked")
        for version in info.versions:
            rows.add_row(
                *(
                    cell(value)
                    for value in (
                        version.version,
                        version.digest,
                        version.token,
                        version.family,
                        ", ".join(version.signers) or "unsigned",
                        "yanked" if version.yanked else "",
                    )
                )
            )
        console.print(rows)
        for image in info.previews:
            console.print(cell(f"preview {image.media_type}: {url}{image.url}"))
        if info.description:
            console.print(cell(info.description.splitlines()[0]))

    output.emit(plain(info), render)


def tag(
    reference: Annotated[str, typer.Argument(help="NS/NAME:VERSION to point at.")],
    tag_name: Annotated[str, typer.Argument(metavar="TAG", help="The tag to create or move.")],
    registry: RegistryOption = None,
    token: TokenOption = None,
    json: JsonFlag = False,
) -> None:
    """Create or move a tag."""
    ref = parse_reference(reference, needs_version=True)
    assert ref.tag is not None
    with transfer.connect(registry, token) as client:
        result = client.move_tag(ref.namespace, ref.name, tag_name, ref.tag)
    message = f"{ref.repository}:{result.tag} -> {result.version}"
    output.emit(plain(result), lambda console: console.print(cell(message)))


def yank(
    reference: Annotated[str, typer.Argument(help="NS/NAME:VERSION")],
    undo: Annotated[bool, typer.Option("--undo", help="Unyank instead.")] = False,
    registry: RegistryOption = None,
    token: TokenOption = None,
    json: JsonFlag = False,
) -> None:
    """Hide a version from tags and search (pulls by digest keep working)."""
    ref = parse_reference(reference, needs_version=True)
    assert ref.tag is not None
    with transfer.connect(registry, token) as client:
        action = client.unyank if undo else client.yank
        result = action(ref.namespace, ref.name, ref.tag)
    state = "yanked" if result.yanked else "not yanked"
    output.emit(plain(result), lambda console: console.print(cell(f"{ref}: {state}")))


def rm(
    repository: Annotated[str, typer.Argument(help="NS/NAME")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    registry: RegistryOption = None,
    token: TokenOption = None,
    json: JsonFlag = False,
) -> None:
    """Delete a concept repository with all its versions and tags (admin)."""
    ref = parse_reference(repository)
    if not yes and not typer.confirm(f"Delete {ref.repository} and all its versions?"):
        typer.echo("Nothing deleted.", err=True)
        raise typer.Exit(output.EXIT_INVALID)
    with transfer.connect(registry, token) as client:
        client.delete_repository(ref.namespace, ref.name)
    output.emit(
        {"deleted": ref.repository},
        lambda console: console.print(cell(f"Deleted {ref.repository}")),
    )


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    for command in (login, logout, whoami, push, pull, search, ls, show, tag, yank, rm):
        app.command()(command)
