"""Request bodies of the /v1 API and the limits on what one request may carry.

Types are strict: a boolean is ``true`` or ``false`` (never ``"yes"``), a list is a JSON array, a
string is a string; a mistyped field is 400 BAD_REQUEST. Free text (descriptions, token and key
names) is Unicode without lone surrogates and without control characters (a description may hold
line breaks and tabs), so that whatever is stored can be encoded by every database and echoed in
any answer. Names (namespaces, repositories, versions, tags, labels) are checked against their
grammar by the service layer before any SQL.

Every limit below is listed in spec/registry-api.md ("Limits and timeouts"): together they bound
the work one request can make the index do to milliseconds.
"""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

__all__ = [
    "MAX_DESCRIPTION",
    "MAX_LABELS",
    "MAX_TAGS",
    "Membership",
    "NewKey",
    "NewOrganization",
    "NewToken",
    "NewUser",
    "Policy",
    "PublishRequest",
    "RepositoryUpdate",
    "TagRequest",
    "check_text",
]

#: Tags one publish may set.
MAX_TAGS = 16
#: Labels of a repository.
MAX_LABELS = 16
#: Characters of a repository's description.
MAX_DESCRIPTION = 16_384
#: Characters of a token's or a key's name.
MAX_NAME_TEXT = 128
#: Characters of a name-like field (a user, a digest, a version, a tag, a label) before its
#: grammar is checked; the grammars themselves are shorter.
MAX_FIELD = 256


def check_text(value: str, *, multiline: bool = False) -> str:
    """``value`` when it is storable, printable text: no lone surrogate (which no database and no
    UTF-8 answer can carry) and no control character (line breaks and tabs allowed with
    ``multiline``). ValueError otherwise (400 through the request validation)."""
    for char in value:
        category = unicodedata.category(char)
        if category == "Cs":
            raise ValueError("contains a lone UTF-16 surrogate")
        if category == "Cc" and not (multiline and char in "\n\r\t"):
            raise ValueError(f"contains the control character U+{ord(char):04X}")
    return value


def _utc(moment: datetime) -> datetime:
    """The same instant in UTC (ValueError for one that UTC cannot represent, past year 9999)."""
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError("out of range") from None


def _line(value: str) -> str:
    return check_text(value)


def _multiline(value: str) -> str:
    return check_text(value, multiline=True)


#: A name-like value: its grammar is checked by the service layer (400 NAME_INVALID there).
Name = Annotated[str, Field(max_length=MAX_FIELD), AfterValidator(_line)]
Line = Annotated[str, Field(max_length=MAX_NAME_TEXT), AfterValidator(_line)]
Description = Annotated[str, Field(max_length=MAX_DESCRIPTION), AfterValidator(_multiline)]


class Body(BaseModel):
    """A request body: strict types, unknown fields ignored (newer clients may send more)."""

    model_config = ConfigDict(strict=True)


class PublishRequest(Body):
    """Body of a publish: the digest of an uploaded concept file, and optional settings."""

    digest: Name
    tags: Annotated[list[Name], Field(max_length=MAX_TAGS)] = Field(
        default_factory=lambda: ["latest"]
    )
    private: bool | None = None
    description: Description | None = None
    labels: Annotated[list[Name], Field(max_length=MAX_LABELS)] | None = None


class TagRequest(Body):
    """Body of a tag move: the version the tag should name."""

    version: Name


class RepositoryUpdate(Body):
    """Fields of a repository that can change."""

    private: bool | None = None
    description: Description | None = None
    labels: Annotated[list[Name], Field(max_length=MAX_LABELS)] | None = None


class NewUser(Body):
    """Body of a user creation (registry administrators only)."""

    name: Name
    admin: bool = False


class NewOrganization(Body):
    """Body of an organization creation."""

    name: Name


class Membership(Body):
    """Body of a membership change."""

    user: Name
    role: Name = "reader"


class NewToken(Body):
    """Body of a token creation: a name, a scope no wider than the caller's, an optional expiry
    with its UTC offset (``2027-01-01T00:00:00+00:00``; no later than the calling token's own)."""

    name: Annotated[Line, Field(min_length=1)]
    scope: Name = "read"
    # JSON has no date type: an ISO 8601 string is parsed (strictly: it must carry an offset)
    expires_at: Annotated[AwareDatetime, Field(strict=False), AfterValidator(_utc)] | None = None
    user: Name | None = None  # registry administrators may create tokens for other users


class NewKey(Body):
    """Body of a key registration: the raw Ed25519 public key in base64, or its PEM."""

    public_key: Annotated[str, Field(max_length=4096), AfterValidator(_multiline)]
    name: Line = ""


class Policy(Body):
    """A namespace's policy."""

    require_signatures: bool | None = None
    protected_tags: bool | None = None
