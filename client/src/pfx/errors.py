"""Error codes the pfx client adds to those of perfusion_format.

A failure a user can cause is reported with a stable code and a one-line message. Problems with a
concept file or a key carry perfusion_format's codes (``perfusion_format.ErrorCode``: NOT_SIGNED,
KEY_INVALID, …); the codes below cover what happens around them. Tools match on the code, never
on the message.
"""

from __future__ import annotations

from enum import StrEnum

from perfusion_format import PerfusionError

__all__ = ["ClientError", "ErrorCode"]


class ErrorCode(StrEnum):
    """Stable codes for failures outside the concept format."""

    IO_ERROR = "IO_ERROR"
    """A file or folder could not be read or written (missing, no permission, a folder, …)."""

    KEY_EXISTS = "KEY_EXISTS"
    """``pfx keygen`` would overwrite a key file (pass ``--force`` to replace it)."""

    USAGE_ERROR = "USAGE_ERROR"
    """The command line itself is wrong: an unknown option, a missing argument."""

    INTERNAL_ERROR = "INTERNAL_ERROR"
    """An unexpected failure: a bug in pfx (set ``PFX_DEBUG=1`` for the traceback)."""

    MODEL_INVALID = "MODEL_INVALID"
    """``--model`` is not a diffusers pipeline folder that loads from local files."""

    RUNTIME_MISSING = "RUNTIME_MISSING"
    """A command needs perfusion-runtime (torch, diffusers), which is not installed."""


class ClientError(PerfusionError):
    """A failure of the client's own, with one of the codes above (exit code 2)."""
