"""The ``pfx`` command line: ``app`` holds the commands, ``main()`` runs it for the console script.

``main()`` is the one place where failures become output: a user mistake prints one line,
``error[CODE]: message``, on stderr and exits non-zero — never a traceback (``PFX_DEBUG=1`` adds
one). The exit codes are listed in ``pfx --help``.

Nothing here imports torch, diffusers, fastapi or boto3; commands that need the runtime import it
inside their own function.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence
from typing import Annotated

import typer

from pfx import __version__
from pfx.errors import ErrorCode

from . import (
    account_commands,
    checkpoint_commands,
    format_commands,
    generate_command,
    local_commands,
    output,
    registry_commands,
    train_command,
)

__all__ = ["app", "main"]

app = typer.Typer(
    name="pfx",
    epilog=output.EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,  # locals can hold keys and tokens
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"pfx {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Show the version and exit.", is_eager=True, callback=_print_version
        ),
    ] = False,
) -> None:
    """Share Perfusion concepts: keys, signing, verification, inspection, a registry to push to
    and pull from, and generation."""


format_commands.register(app)
registry_commands.register(app)
account_commands.register(app)
local_commands.register(app)
generate_command.register(app)
checkpoint_commands.register(app)
train_command.register(app)


def _debug() -> bool:
    return os.environ.get("PFX_DEBUG", "") not in ("", "0")


def main(args: Sequence[str] | None = None) -> int:
    """Run the ``pfx`` command line on ``args`` (default ``sys.argv[1:]``); return the exit code."""
    output.set_json_mode(False)
    arguments = list(sys.argv[1:] if args is None else args)
    try:
        result = app(args=arguments, prog_name="pfx", standalone_mode=False)
    except typer.TyperException as error:  # a usage error: shown as typer shows it, exit 2
        from typer import rich_utils

        rich_utils.rich_format_error(error)
        # --json may not have been read when parsing failed before it
        if output.json_mode() or "--json" in arguments:
            output.print_json_error(ErrorCode.USAGE_ERROR, error.format_message())
        return error.exit_code
    except (KeyboardInterrupt, typer.Abort):
        return output.EXIT_INTERRUPTED
    except BrokenPipeError:  # stdout was closed early, as by `pfx inspect --json x | head -1`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return output.EXIT_INVALID
    except Exception as error:
        if _debug():
            traceback.print_exception(error)
        failure = output.describe_failure(error)
        output.print_error(failure.code, failure.message)
        return failure.exit_code
    return result if isinstance(result, int) else output.EXIT_OK
