"""Concept references as users type them: ``NS/NAME``, ``NS/NAME:TAG`` (or a version name) and
``NS/NAME@sha256:<64 hex>`` — the shapes of docker and oras references, without a host (the
registry comes from ``--registry``, ``PFX_REGISTRY`` or the config file)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from perfusion_format import DIGEST_PATTERN, NAME_PATTERN, TAG_PATTERN
from pfx.errors import ClientError, ErrorCode

__all__ = ["DEFAULT_TAG", "Reference", "parse_reference"]

DEFAULT_TAG = "latest"

#: Names, tags and digests as the registry spells them (spec/registry-api.md §3).
_REFERENCE = re.compile(
    rf"(?P<namespace>{NAME_PATTERN})/(?P<name>{NAME_PATTERN})"
    rf"(?::(?P<tag>{TAG_PATTERN}))?(?:@(?P<digest>{DIGEST_PATTERN}))?"
)


@dataclass(frozen=True)
class Reference:
    """A parsed reference: the repository and either a tag/version name or a digest."""

    namespace: str
    name: str
    tag: str | None = None
    digest: str | None = None

    @property
    def repository(self) -> str:
        """``namespace/name``."""
        return f"{self.namespace}/{self.name}"

    @property
    def target(self) -> str:
        """What to resolve on the registry: the digest when pinned, else the tag (default
        ``latest``)."""
        return self.digest or self.tag or DEFAULT_TAG

    def __str__(self) -> str:
        if self.digest:
            return f"{self.repository}@{self.digest}"
        return f"{self.repository}:{self.target}"


def parse_reference(text: str, *, needs_version: bool = False) -> Reference:
    """Parse ``NS/NAME[:TAG][@sha256:DIGEST]``; REFERENCE_INVALID with the expected shape when
    ``text`` is not one. ``needs_version`` (for ``push``) requires ``:VERSION`` and no digest."""
    match = _REFERENCE.fullmatch(text.strip())
    if match is None:
        shape = "NS/NAME:VERSION" if needs_version else "NS/NAME[:TAG] or NS/NAME@sha256:<hex>"
        raise ClientError(
            ErrorCode.REFERENCE_INVALID,
            f"not a concept reference: {text!r} (expected {shape}; names are lowercase "
            "letters, digits, '.', '_' and '-')",
        )
    reference = Reference(**match.groupdict())
    if needs_version and (reference.tag is None or reference.digest is not None):
        raise ClientError(
            ErrorCode.REFERENCE_INVALID,
            f"{text!r} names no version: push to NS/NAME:VERSION (e.g. acme/teddy:1.0)",
        )
    return reference
