"""The one JSON profile the format parses (spec/concept-format.md §2.1): strict, like safetensors.

Every JSON text in a concept file — the header, and the JSON held in the ``perfusion.training``
and ``perfusion.signatures`` metadata values — is read by :func:`loads_strict`, which accepts
RFC 8259 JSON minus everything two readers could disagree on:

- the text starts with ``{`` or ``[`` and ends with ``}`` or ``]`` (no byte order mark, no
  surrounding whitespace; whitespace between tokens is allowed);
- no ``NaN``, ``Infinity`` or ``-Infinity``, and no number that rounds to infinity as an IEEE
  binary64 (``1e400``);
- no object names a member twice (names compared after unescaping: ``"a"`` and ``"\\u0061"`` are
  the same name);
- no string (name or value) holds a lone surrogate escape such as ``"\\ud800"``: every string
  is a sequence of Unicode scalar values, so it can always be encoded as UTF-8.

The caller maps a :class:`StrictJSONError` to the error code of the place the text came from.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

__all__ = ["StrictJSONError", "has_lone_surrogate", "loads_strict"]

_SURROGATE = re.compile("[\ud800-\udfff]")


class StrictJSONError(ValueError):
    """A text is not JSON under the format's profile. ``duplicate`` names a repeated member."""

    def __init__(self, message: str, duplicate: str | None = None) -> None:
        super().__init__(message)
        self.duplicate = duplicate


def has_lone_surrogate(text: str) -> bool:
    """True when ``text`` holds a code point in U+D800–U+DFFF (not encodable as UTF-8).

    Python joins a valid ``\\uD83D\\uDE00`` escape pair into one character, so any surrogate
    left in a decoded string is a lone one.
    """
    return not text.isascii() and _SURROGATE.search(text) is not None


def _reject_constant(name: str) -> Any:
    raise StrictJSONError(f"{name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise StrictJSONError(f"the number {text[:32]} overflows a binary64 float")
    return value


def _finite_int(text: str) -> int:
    try:
        value = int(text)  # over 4,300 digits: ValueError, an overflow like any other
        float(value)
    except (ValueError, OverflowError):
        raise StrictJSONError(f"the number {text[:32]}… overflows a binary64 float") from None
    return value


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise StrictJSONError(f"the name {key!r} appears twice in an object", duplicate=key)
        result[key] = value
    return result


def _check_strings(value: Any) -> None:
    """Refuse a lone surrogate in any name or string of a decoded value (iteratively)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if has_lone_surrogate(item):
                raise StrictJSONError(f"the string {item[:40]!r} holds a lone surrogate escape")
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)


def loads_strict(text: str) -> Any:
    """Decode ``text`` under the format's JSON profile; raise :class:`StrictJSONError` if not."""
    if text[:1] not in ("{", "[") or text[-1:] not in ("}", "]"):
        raise StrictJSONError("not a JSON object or array without surrounding whitespace")
    try:
        value = json.loads(
            text,
            object_pairs_hook=_object_without_duplicates,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
            parse_int=_finite_int,
        )
    except StrictJSONError:
        raise
    except (ValueError, RecursionError) as error:
        raise StrictJSONError(f"not valid JSON ({error})") from None
    _check_strings(value)
    return value
