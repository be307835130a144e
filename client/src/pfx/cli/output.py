"""What the CLI prints, in one place: results as rich text or one JSON object, failures as one line.

Every command takes ``--json`` (:data:`JsonFlag`) and hands its result to :func:`emit`: in JSON mode
the result is printed as one JSON object on stdout, otherwise a ``render`` function draws it with
rich. A failure is printed by :func:`print_error` as ``error[CODE]: message`` on stderr (and, in
JSON mode, also as ``{"error": {"code": ..., "message": ...}}`` on stdout); :func:`describe_failure`
turns an exception into its code, message and exit code.

Text that comes from files (metadata, tensor names, messages quoting them) is shown with control
and bidi-override characters escaped and never interpreted as rich markup, so a concept file from a
stranger cannot move the cursor, recolour the terminal or fake lines of output.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

import perfusion_format as pf
from pfx.errors import ClientError, ErrorCode, RegistryError

__all__ = [
    "EXIT_CODES_HELP",
    "EXIT_INTERRUPTED",
    "EXIT_INVALID",
    "EXIT_OK",
    "EXIT_REGISTRY",
    "EXIT_USAGE",
    "Failure",
    "JsonFlag",
    "cell",
    "describe_failure",
    "emit",
    "json_mode",
    "naming",
    "plain",
    "print_error",
    "print_fields",
    "print_json_error",
    "printable",
    "progress_bar",
    "set_json_mode",
    "table",
]

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_REGISTRY = 3
EXIT_INTERRUPTED = 130

#: Client codes that mean "this concept is not the one asked for or not trusted" (exit 1, like
#: a file that fails verification), rather than a usage or I/O problem (exit 2).
_REFUSED = frozenset(
    {
        ErrorCode.DIGEST_MISMATCH,
        ErrorCode.UNTRUSTED,
        ErrorCode.NOT_A_CONCEPT,
        pf.ErrorCode.NOT_SIGNED,
        pf.ErrorCode.SIGNATURE_INVALID,
    }
)
#: Client codes about reaching the registry (exit 3, like the registry's own refusals).
_UNREACHED = frozenset({ErrorCode.REGISTRY_UNREACHABLE, ErrorCode.REGISTRY_PROTOCOL})

EXIT_CODES_HELP = (
    "Exit codes: 0 success; 1 the file is invalid, fails verification or is not trusted (or an "
    "unexpected error); 2 usage, I/O, config or key problems; 3 the registry refused the request "
    "or could not be reached; 130 interrupted. "
    "Errors print one line, error[CODE]: message, on stderr; with --json also "
    '{"error": {"code": ..., "message": ...}} on stdout. Set PFX_DEBUG=1 for tracebacks.'
)

# Unicode "Cf" characters that reorder text on screen (Trojan Source); other Cf characters such as
# the zero-width joiner inside emoji are left alone.
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


class _Mode:
    """Whether this invocation prints JSON; set by the ``--json`` flag, reset by ``main()``."""

    json = False


def set_json_mode(enabled: bool) -> bool:
    """Switch JSON output on or off (the ``--json`` flag's callback); returns ``enabled``."""
    _Mode.json = enabled
    return enabled


def json_mode() -> bool:
    """True when this invocation prints JSON instead of text."""
    return _Mode.json


JsonFlag = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print one JSON object to stdout instead of text (errors too).",
        is_eager=True,  # known before any other parameter can fail, so usage errors follow it
        callback=set_json_mode,
    ),
]


def printable(text: str) -> str:
    """``text`` on one line, safe for a terminal: control and bidi characters become escapes."""
    return "".join(
        ascii(char)[1:-1] if unicodedata.category(char) == "Cc" or char in _BIDI_CONTROLS else char
        for char in text
    )


def cell(value: object) -> Text:
    """A table cell showing ``value`` literally (escaped with :func:`printable`, no markup)."""
    return Text(printable(str(value)))


def table(*columns: str, title: str | None = None) -> Table:
    """A table with the CLI's style; long values fold instead of being cut off."""
    result = Table(title=title, title_justify="left", title_style="bold", header_style="bold")
    for column in columns:
        result.add_column(column, overflow="fold")
    return result


def print_fields(console: Console, fields: Iterable[tuple[str, object]]) -> None:
    """Print aligned ``label  value`` lines; values never wrap, so digests copy whole."""
    rows = list(fields)
    width = max((len(label) for label, _ in rows), default=0)
    for label, value in rows:
        console.print(Text(f"{label:<{width}}  ", style="bold") + cell(value), soft_wrap=True)


def progress_bar(label: str, *columns: ProgressColumn) -> Progress:
    """A transient ``label  ━━━━  done/total  [columns]  elapsed`` bar on stderr, off in JSON
    mode."""
    return Progress(
        TextColumn(label),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        *columns,
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=json_mode(),
        transient=True,
    )


def emit(payload: Mapping[str, Any], render: Callable[[Console], None]) -> None:
    """Print ``payload`` as one JSON object in JSON mode; otherwise let ``render`` draw it."""
    if json_mode():
        typer.echo(json.dumps(payload, indent=2))
    else:
        render(Console(highlight=False))


@dataclass(frozen=True)
class Failure:
    """How a failure is reported: its stable code, a one-line message and the exit code."""

    code: str
    message: str
    exit_code: int


def _os_message(error: OSError) -> str:
    if error.filename is None:
        return str(error)
    return f"{error.filename}: {error.strerror or error}"


def _is_runtime_input_error(error: pf.PerfusionError) -> bool:
    """Whether ``error`` is perfusion_runtime's about a run's inputs — folders, images, masks,
    settings, checkpoints (``ErrorCategory.INPUT``): a usage and I/O problem, exit 2; the
    runtime's other categories exit 1. Only a command that imported the runtime can raise its
    errors, so the runtime is looked up here, never imported."""
    runtime = sys.modules.get("perfusion_runtime")
    return (
        runtime is not None
        and isinstance(error, runtime.PerfusionRuntimeError)
        and error.category is runtime.ErrorCategory.INPUT
    )


def describe_failure(error: Exception) -> Failure:
    """Map an exception raised by a command to the code, message and exit code reported for it.

    perfusion_format and perfusion_runtime errors keep their code (exit 2 for key files, bad
    training inputs and the client's own errors such as MODEL_INVALID, 1 for a file that is
    invalid, fails verification or does not fit the model); ``OSError`` becomes IO_ERROR
    (KEY_EXISTS when a file already exists) with exit 2; anything else is a bug, INTERNAL_ERROR
    with exit 1.
    """
    if isinstance(error, RegistryError) or (
        isinstance(error, ClientError) and error.code in _UNREACHED
    ):
        return Failure(str(error.code), error.message, EXIT_REGISTRY)
    if isinstance(error, pf.PerfusionError):
        usage = (
            isinstance(error, pf.KeyFileError | ClientError) and error.code not in _REFUSED
        ) or _is_runtime_input_error(error)
        return Failure(str(error.code), error.message, EXIT_USAGE if usage else EXIT_INVALID)
    if isinstance(error, FileExistsError):
        return Failure(ErrorCode.KEY_EXISTS, _os_message(error), EXIT_USAGE)
    if isinstance(error, OSError):
        return Failure(ErrorCode.IO_ERROR, _os_message(error), EXIT_USAGE)
    message = f"{type(error).__name__}: {error} (a bug in pfx; PFX_DEBUG=1 shows the traceback)"
    return Failure(ErrorCode.INTERNAL_ERROR, message, EXIT_INVALID)


def plain(value: Any) -> Any:
    """``value`` (dataclasses, lists, dicts, datetimes, paths) as JSON-ready data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = dataclasses.fields(value)
        return {field.name: plain(getattr(value, field.name)) for field in fields}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    return value


@contextmanager
def naming(path: Path) -> Iterator[None]:
    """Name ``path`` in the message of a perfusion_format error raised inside the block."""
    try:
        yield
    except pf.PerfusionError as error:
        raise type(error)(error.code, f"{path}: {error.message}") from error


def print_json_error(code: str, message: str) -> None:
    """Print ``{"error": {"code": ..., "message": ...}}`` on stdout."""
    typer.echo(json.dumps({"error": {"code": str(code), "message": message}}))


def print_error(code: str, message: str) -> None:
    """Report a failure: ``error[CODE]: message`` on stderr, and as JSON on stdout in JSON mode."""
    typer.echo(f"error[{code}]: {printable(message)}", err=True)
    if json_mode():
        print_json_error(code, message)
