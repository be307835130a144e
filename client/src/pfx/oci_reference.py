"""References to concepts in any OCI registry: ``oci://HOST[:PORT]/REPO[:TAG][@sha256:<hex>]``.

``HOST`` is a DNS name or an IPv4 address (lowercased; IPv6 literals are not accepted — give the
host a name), with an optional port. ``REPO`` is one or more lowercase path components as the
OCI distribution spec spells them (``[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*``, joined by ``/``), and
``HOST/REPO`` is at most 255 characters. A missing tag means ``latest``; a digest names a
*manifest* (what ``skopeo inspect --raw`` prints the hash of), not the concept file.

``HOST/REPO`` is also the name the trust policy judges an OCI concept by
(``pfx trust add '127.0.0.1:5000/acme/*' KEY.pub``; see :mod:`pfx.trust`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from perfusion_format import DIGEST_PATTERN, FILE_SUFFIX, TAG_PATTERN
from pfx.errors import ClientError, ErrorCode
from pfx.reference import DEFAULT_TAG

__all__ = [
    "SCHEME",
    "OciReference",
    "is_oci_name",
    "is_oci_reference",
    "is_oci_repository",
    "parse_oci_host",
    "parse_oci_reference",
]

SCHEME = "oci://"
_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_HOST = rf"{_LABEL}(?:\.{_LABEL})*(?::[0-9]{{1,5}})?"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = rf"{_COMPONENT}(?:/{_COMPONENT})*"
_MAX_NAME = 255
_HOST_RE = re.compile(_HOST)
_REPOSITORY_RE = re.compile(_REPOSITORY)
_REFERENCE_RE = re.compile(
    rf"(?P<host>{_HOST})/(?P<repository>{_REPOSITORY})"
    rf"(?::(?P<tag>{TAG_PATTERN}))?(?:@(?P<digest>{DIGEST_PATTERN}))?"
)
_SHAPE = "oci://HOST[:PORT]/REPO[:TAG] or oci://HOST[:PORT]/REPO@sha256:<64 hex>"


def _invalid(message: str) -> ClientError:
    return ClientError(ErrorCode.REFERENCE_INVALID, message)


def is_oci_reference(text: str) -> bool:
    """Whether ``text`` is meant as an OCI reference (it starts with ``oci://``)."""
    return text.strip().lower().startswith(SCHEME)


def _good_host(host: str) -> bool:
    if not _HOST_RE.fullmatch(host):
        return False
    _, colon, port = host.partition(":")
    return not colon or 0 < int(port) < 65536


def is_oci_repository(text: str) -> bool:
    """Whether ``text`` is a repository name of the OCI distribution spec (``acme/teddy``)."""
    return len(text) <= _MAX_NAME and _REPOSITORY_RE.fullmatch(text) is not None


def is_oci_name(text: str) -> bool:
    """Whether ``text`` is ``HOST[:PORT]/REPO``, the name of an OCI repository."""
    host, _, repository = text.partition("/")
    return len(text) <= _MAX_NAME and _good_host(host) and is_oci_repository(repository)


@dataclass(frozen=True)
class OciReference:
    """A parsed OCI reference: the registry's host, the repository and a tag or a manifest
    digest (both may be given: the digest is what is fetched)."""

    host: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """``HOST/REPO``: what the trust policy and the cache know the repository by."""
        return f"{self.host}/{self.repository}"

    @property
    def target(self) -> str:
        """What to fetch: the manifest digest when pinned, else the tag (default ``latest``)."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def file_name(self) -> str:
        """The concept file's name in a pushed manifest: the repository's last component and
        ``.perfusion.safetensors`` (what the pfx registry's /v2/ names ``ns/name`` files too)."""
        return self.repository.rsplit("/", 1)[-1] + FILE_SUFFIX

    def url(self, plain_http: bool = False) -> str:
        """The registry's root URL: ``https://HOST`` (``http://`` with ``plain_http``)."""
        return f"{'http' if plain_http else 'https'}://{self.host}"

    def __str__(self) -> str:
        if self.digest:
            return f"{SCHEME}{self.name}@{self.digest}"
        return f"{SCHEME}{self.name}:{self.target}"


def parse_oci_reference(text: str, *, for_push: bool = False) -> OciReference:
    """Parse ``oci://HOST[:PORT]/REPO[:TAG][@sha256:<hex>]``; REFERENCE_INVALID with the expected
    shape otherwise. ``for_push`` refuses a digest (a push names a tag)."""
    stripped = text.strip()
    rest = stripped[len(SCHEME) :] if is_oci_reference(stripped) else None
    if rest is not None:
        host, slash, path = rest.partition("/")
        rest = f"{host.lower()}{slash}{path}"
    match = _REFERENCE_RE.fullmatch(rest) if rest is not None else None
    if match is None or not _good_host(match["host"]) or len(rest or "") > 2 * _MAX_NAME:
        raise _invalid(
            f"not an OCI reference: {text!r} (expected {_SHAPE}; repository names are "
            "lowercase letters and digits joined by '.', '_', '__', '-' and '/')"
        )
    reference = OciReference(**match.groupdict())
    if len(reference.name) > _MAX_NAME:
        raise _invalid(f"{reference.name!r} is longer than {_MAX_NAME} characters")
    if for_push and reference.digest is not None:
        raise _invalid(f"{text!r} names a digest: push to a tag (oci://HOST/REPO:TAG)")
    return reference


def parse_oci_host(text: str) -> str:
    """The ``HOST[:PORT]`` of ``oci://HOST[:PORT]`` (a trailing ``/`` is allowed), lowercased;
    REFERENCE_INVALID otherwise."""
    stripped = text.strip()
    host = stripped[len(SCHEME) :].rstrip("/").lower() if is_oci_reference(stripped) else ""
    if not _good_host(host):
        raise _invalid(f"not an OCI registry: {text!r} (expected oci://HOST[:PORT])")
    return host
