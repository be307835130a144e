"""Errors raised by perfusion_format, each carrying a stable code from spec/concept-format.md.

Exception tree::

    PerfusionError                 every error this package raises (has .code and .message)
    ├── FormatError (ValueError)   the bytes are not a valid v1 concept file
    │   └── SignatureError         an embedded signature is malformed or does not hold
    ├── VerificationError          a valid file fails a policy (unsigned, missing signer)
    └── KeyFileError (ValueError)  a key file cannot be read or is not an Ed25519 key

The codes are part of the specification: tools match on ``error.code``, never on the message.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Stable error codes. The spec's section "Error codes" defines each one."""

    FILE_TOO_LARGE = "FILE_TOO_LARGE"
    TRUNCATED = "TRUNCATED"
    BAD_HEADER_LENGTH = "BAD_HEADER_LENGTH"
    HEADER_TOO_LARGE = "HEADER_TOO_LARGE"
    HEADER_INVALID = "HEADER_INVALID"
    DUPLICATE_NAME = "DUPLICATE_NAME"
    BAD_OFFSETS = "BAD_OFFSETS"
    DTYPE_NOT_ALLOWED = "DTYPE_NOT_ALLOWED"
    MIXED_DTYPES = "MIXED_DTYPES"
    METADATA_INVALID = "METADATA_INVALID"
    NOT_A_CONCEPT = "NOT_A_CONCEPT"
    UNSUPPORTED_VERSION = "UNSUPPORTED_VERSION"
    MISSING_FIELD = "MISSING_FIELD"
    INVALID_FIELD = "INVALID_FIELD"
    MISSING_TENSOR = "MISSING_TENSOR"
    UNEXPECTED_TENSOR = "UNEXPECTED_TENSOR"
    KEY_TARGETS = "KEY_TARGETS"
    SHAPE_MISMATCH = "SHAPE_MISMATCH"
    NON_FINITE = "NON_FINITE"
    DEGENERATE_GATE = "DEGENERATE_GATE"
    SIGNATURE_MALFORMED = "SIGNATURE_MALFORMED"
    SIGNATURE_INVALID = "SIGNATURE_INVALID"
    NOT_SIGNED = "NOT_SIGNED"
    SIGNER_MISSING = "SIGNER_MISSING"
    KEY_INVALID = "KEY_INVALID"


class PerfusionError(Exception):
    """Base class of every error this package raises: a stable ``code`` and a one-line message.

    ``code`` is an :class:`ErrorCode` here; packages built on this one (the runtime, the client)
    subclass it with codes of their own, so one ``except PerfusionError`` catches them all.
    """

    def __init__(self, code: str, message: str) -> None:
        message = _one_line(message)
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def _one_line(text: str) -> str:
    """``text`` with every non-printable character (newlines, controls) written as an escape:
    messages quote untrusted file content and must stay one line."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


class FormatError(PerfusionError, ValueError):
    """The bytes are not a valid Perfusion concept file (v1)."""


class SignatureError(FormatError):
    """An embedded signature entry is malformed, or its signature does not hold."""


class VerificationError(PerfusionError):
    """A valid concept file does not satisfy a verification policy."""


class KeyFileError(PerfusionError, ValueError):
    """A key file or encoded key cannot be read as an Ed25519 key."""
