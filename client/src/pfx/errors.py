"""Error codes the pfx client adds to those of perfusion_format.

A failure a user can cause is reported with a stable code and a one-line message. Problems with a
concept file or a key carry perfusion_format's codes (``perfusion_format.ErrorCode``: NOT_SIGNED,
KEY_INVALID, …); the codes below cover what happens around them. Tools match on the code, never
on the message.
"""

from __future__ import annotations

from enum import StrEnum

from perfusion_format import PerfusionError

__all__ = ["ClientError", "ErrorCode", "RegistryError"]


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

    CONFIG_INVALID = "CONFIG_INVALID"
    """``config.toml`` or ``trust.toml`` is not valid TOML, or holds an unknown key or bad value."""

    REFERENCE_INVALID = "REFERENCE_INVALID"
    """A registry URL, namespace, name, tag, version or digest is malformed."""

    DIGEST_MISMATCH = "DIGEST_MISMATCH"
    """Bytes do not hash to the digest they were fetched or stored under."""

    CACHE_CORRUPT = "CACHE_CORRUPT"
    """The local cache holds something pfx did not put there (a link or file for a folder)."""

    UNTRUSTED = "UNTRUSTED"
    """A concept is validly signed, but by no key the trust policy trusts for its name."""

    NOT_CACHED = "NOT_CACHED"
    """Offline (``PFX_OFFLINE=1``) and the reference is not in the local cache."""

    REGISTRY_UNREACHABLE = "REGISTRY_UNREACHABLE"
    """The registry could not be reached (connection refused, DNS, timeout), retries included."""

    REGISTRY_PROTOCOL = "REGISTRY_PROTOCOL"
    """The registry's answer is not what its API specifies (not JSON, a field missing, …)."""

    NOT_A_CONCEPT = "NOT_A_CONCEPT"
    """An OCI reference names something other than a concept (a container image, an index,
    another artifact type): spec/concept-format.md §9 says what a concept's manifest is."""


class ClientError(PerfusionError):
    """A failure of the client's own, with one of the codes above (exit code 2)."""


class RegistryError(ClientError):
    """The registry refused a request: its error ``code`` (``NOT_FOUND``, ``VERSION_EXISTS``,
    ``SIGNATURE_REQUIRED``, ``RATE_LIMITED``, … — spec/registry-api.md §6; from an OCI registry
    the distribution spec's: ``UNAUTHORIZED``, ``DENIED``, ``MANIFEST_UNKNOWN``, …), the HTTP
    ``status``, the registry's own message ``detail`` and the answer's ``X-Request-ID`` (what
    the registry's access log names the request by). ``message`` reads
    ``registry answered 404: concept alice/teddy not found (request 5f0c…)``."""

    def __init__(self, code: str, status: int, detail: str, request_id: str | None = None) -> None:
        where = f" (request {request_id})" if request_id else ""
        super().__init__(code, f"registry answered {status}: {detail}{where}")
        self.status = status
        self.detail = detail
        self.request_id = request_id
