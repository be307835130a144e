"""The names a registry gives concepts (spec/registry-api.md §3), shared by the registry and the
client so that both accept exactly the same ones:

- a namespace or repository name matches :data:`NAME_PATTERN` (1–64 characters);
- a version or tag name matches :data:`TAG_PATTERN` (1–128 characters).

No name is empty, ``.`` or ``..``, or holds a ``/``, so a name is always safe as one path segment
or one folder name. A digest (:data:`perfusion_format.digest.DIGEST`) is never a valid tag.
"""

from __future__ import annotations

import re

__all__ = ["NAME", "NAME_PATTERN", "TAG", "TAG_PATTERN", "is_name", "is_tag"]

#: A namespace or repository name: lowercase letters, digits, ``.``, ``_`` and ``-``, starting and
#: ending with a letter or digit, 1 to 64 characters. For use inside larger patterns.
NAME_PATTERN = r"[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?"
#: A version or tag name: letters, digits, ``.``, ``_`` and ``-``, not starting with ``.`` or
#: ``-``, 1 to 128 characters. For use inside larger patterns.
TAG_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}"
NAME = re.compile(NAME_PATTERN)
TAG = re.compile(TAG_PATTERN)


def is_name(text: str) -> bool:
    """Whether ``text`` is a valid namespace or repository name."""
    return NAME.fullmatch(text) is not None


def is_tag(text: str) -> bool:
    """Whether ``text`` is a valid version or tag name."""
    return TAG.fullmatch(text) is not None
