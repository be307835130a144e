"""``pfx keygen``, ``sign``, ``verify`` and ``inspect``: signing keys and concept files, offline.

Every concept file is read with a bounded read and fully validated (structure, shapes, and that
each embedded signature holds) before anything else happens; ``sign`` replaces the file atomically,
so a failure leaves it byte for byte as it was.
"""

from __future__ import annotations

import dataclasses
import errno
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

import perfusion_format as pf
from pfx.config import config_dir, make_private_dirs

from . import output
from .output import JsonFlag, cell

__all__ = ["default_key_path", "inspect", "keygen", "register", "sign", "verify"]

DEFAULT_KEY_NAME = "pfx_ed25519"
#: Tensor name prefixes with one tensor per cross-attention layer (16 to 70 of them), which
#: ``inspect`` shows as one summary row unless ``--tensors`` is given.
_PER_LAYER_PREFIXES = ("value_target.", "key_target.")


def default_key_path() -> Path:
    """Where ``pfx keygen`` writes the private key and ``pfx sign`` reads it by default."""
    return config_dir() / "keys" / DEFAULT_KEY_NAME


def _public_key_path(private_key_path: Path) -> Path:
    return private_key_path.with_name(private_key_path.name + ".pub")


def _read_concept(path: Path) -> tuple[bytes, pf.Concept]:
    """The file's bytes and the validated concept they hold."""
    with output.naming(path):
        data = pf.read_bounded(path)
        return data, pf.loads(data)


FileArgument = Annotated[
    Path,
    typer.Argument(
        help="A concept file (*.perfusion.safetensors).", metavar="FILE", show_default=False
    ),
]


def keygen(
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Private key path; the public key goes to PATH.pub. Default: "
            "<config>/keys/pfx_ed25519; <config> is $PFX_CONFIG_DIR, else $XDG_CONFIG_HOME/pfx, "
            "else ~/.config/pfx.",
            metavar="PATH",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing key pair at PATH.")
    ] = False,
    json: JsonFlag = False,
) -> None:
    """Create an Ed25519 signing key: PATH (private, mode 0600) and PATH.pub (public)."""
    private_path = out or default_key_path()
    public_path = _public_key_path(private_path)
    existing = [path for path in (private_path, public_path) if path.exists() or path.is_symlink()]
    if existing and not force:
        message = "already exists (pass --force to replace the key pair)"
        raise FileExistsError(errno.EEXIST, message, str(existing[0]))
    make_private_dirs(private_path.parent)
    for path in existing:
        path.unlink()
    key = pf.PrivateKey.generate()
    pf.save_private_key(key, private_path)
    key_id = key.public_key.key_id

    def render(console: Console) -> None:
        console.print(cell(f"Created signing key {key_id}"))
        output.print_fields(
            console,
            [
                ("private key", f"{private_path}  (keep it secret)"),
                ("public key", f"{public_path}  (share it with whoever verifies)"),
            ],
        )

    payload = {
        "key_id": key_id,
        "private_key_path": str(private_path),
        "public_key_path": str(public_path),
    }
    output.emit(payload, render)


def sign(
    file: FileArgument,
    key: Annotated[
        Path | None,
        typer.Option(
            "--key",
            "-k",
            help="Private key file. Default: the key `pfx keygen` writes.",
            metavar="PRIVATE",
            show_default=False,
        ),
    ] = None,
    json: JsonFlag = False,
) -> None:
    """Sign FILE with a private key, replacing it atomically. Signing again is a no-op."""
    data, concept = _read_concept(file)
    key_path = key or default_key_path()
    with output.naming(key_path):
        private_key = pf.load_private_key(key_path)
    signed = pf.sign(concept, private_key)
    changed = signed is not concept
    if changed:
        data = pf.dumps(signed)
        pf.write_atomic(file, data)
    key_id = private_key.public_key.key_id
    payload = {
        "file": str(file),
        "key_id": key_id,
        "changed": changed,
        "weights_digest": signed.weights_digest,
        "content_digest": pf.content_digest(data),
        "signatures": len(signed.signatures),
        "signers": [signature.key_id for signature in signed.signatures],
    }

    def render(console: Console) -> None:
        if changed:
            console.print(cell(f"Signed {file} with {key_id}"))
        else:
            console.print(cell(f"{file} is already signed by {key_id}; the file is unchanged"))
        output.print_fields(
            console,
            [
                ("weights digest", payload["weights_digest"]),
                ("content digest", payload["content_digest"]),
                ("signatures", payload["signatures"]),
            ],
        )

    output.emit(payload, render)


def verify(
    file: FileArgument,
    keys: Annotated[
        list[Path] | None,
        typer.Option(
            "--key",
            "-k",
            help="A public key (or private key file) that must have signed FILE; repeatable.",
            metavar="PUBLIC",
            show_default=False,
        ),
    ] = None,
    json: JsonFlag = False,
) -> None:
    """Check that FILE is valid and signed, every signature holds, and each --key signed it.

    Without --key this checks integrity only: the signatures hold, but not whose keys they are.
    """
    data, concept = _read_concept(file)
    required = []
    for path in keys or ():
        with output.naming(path):
            required.append(pf.load_public_key(path))
    with output.naming(file):
        result = pf.verify(concept, required)
    required_ids = [public_key.key_id for public_key in required]
    payload = {
        "file": str(file),
        "ok": True,
        "content_digest": pf.content_digest(data),
        "weights_digest": result.weights_digest,
        "signers": list(result.signers),
        "required": required_ids,
    }

    def render(console: Console) -> None:
        console.print(cell(f"OK: {file} is valid and every signature holds"))
        output.print_fields(
            console,
            [
                ("content digest", payload["content_digest"]),
                ("weights digest", payload["weights_digest"]),
                *(
                    ("signed by", f"{key_id}{'  (required)' if key_id in required_ids else ''}")
                    for key_id in result.signers
                ),
            ],
        )
        if not required:
            console.print(
                "note: no --key given, so this checked integrity only, not who signed; "
                "pass --key with a public key you trust",
                style="yellow",
                markup=False,
            )

    output.emit(payload, render)


def _tensor_rows(concept: pf.Concept) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "dtype": tensor.dtype,
            "shape": list(tensor.shape),
            "bytes": tensor.array.nbytes,
        }
        for name, tensor in sorted(concept.tensors.items())
    ]


def _render_inspect(console: Console, payload: dict[str, Any], all_tensors: bool) -> None:
    title = payload["metadata"].get("modelspec.title", "")
    console.print(cell(title), style="bold")
    output.print_fields(
        console,
        [
            ("file", payload["file"]),
            ("file size", f"{payload['size']:,} bytes"),
            ("family", payload["family"]),
            ("dtype", payload["dtype"]),
            ("format version", payload["format_version"]),
            ("content digest", payload["content_digest"]),
            ("weights digest", payload["weights_digest"]),
            *(("signed by", key_id) for key_id in payload["signers"]),
        ],
    )
    if not payload["signers"]:
        console.print("unsigned", style="yellow")

    metadata = output.table("key", "value", title="Metadata")
    for key, value in payload["metadata"].items():
        metadata.add_row(cell(key), cell(value))
    console.print(metadata)

    tensors = output.table("name", "dtype", "shape", "bytes", title="Tensors")
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in payload["tensors"]:
        prefix = next((p for p in _PER_LAYER_PREFIXES if row["name"].startswith(p)), None)
        if prefix and not all_tensors:
            groups.setdefault(prefix, []).append(row)
            continue
        tensors.add_row(
            cell(row["name"]), cell(row["dtype"]), cell(row["shape"]), cell(f"{row['bytes']:,}")
        )
    for prefix, rows in groups.items():
        widths = [row["shape"][0] for row in rows]
        tensors.add_row(
            cell(f"{prefix}* ({len(rows)} layers)"),
            cell(rows[0]["dtype"]),
            cell(f"[{min(widths)}…{max(widths)}]"),
            cell(f"{sum(row['bytes'] for row in rows):,}"),
        )
    if groups:
        tensors.caption = "--tensors lists every layer"
    console.print(tensors)

    sizes = output.table("part", "bytes", title="Size")
    report = dict(payload["size_report"])
    file_total = report.pop("total")
    for part, size in report.items():
        sizes.add_row(cell(part.replace("_", " ")), cell(f"{size:,}"))
    sizes.add_row(cell("total"), cell(f"{file_total:,}"), style="bold")
    console.print(sizes)


def inspect(
    file: FileArgument,
    all_tensors: Annotated[
        bool, typer.Option("--tensors", help="List every tensor (text mode; JSON always does).")
    ] = False,
    json: JsonFlag = False,
) -> None:
    """Show FILE's metadata, tensors, sizes, digests and signers (the file is validated first)."""
    data, concept = _read_concept(file)
    payload = {
        "file": str(file),
        "size": len(data),
        "content_digest": pf.content_digest(data),
        "weights_digest": concept.weights_digest,
        "format_version": concept.version,
        "family": concept.family.name,
        "dtype": concept.dtype,
        "signers": [signature.key_id for signature in concept.signatures],
        "metadata": dict(sorted(concept.metadata.items())),
        "tensors": _tensor_rows(concept),
        "size_report": dataclasses.asdict(pf.size_report(concept)),
    }
    output.emit(payload, lambda console: _render_inspect(console, payload, all_tensors))


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    for command in (keygen, sign, verify, inspect):
        app.command()(command)
