"""The name and digest grammar of perfusion_format, held to the table of spec/registry-api.md §3.

The patterns are read from the spec's table (``| kind | rule | else |``), so a change to either
side that the other does not follow fails here, and the length bounds the table states are
checked at their edges.
"""

from __future__ import annotations

import re

import pytest
from concept_factory import REPO

import perfusion_format as pf

SPEC = REPO / "spec" / "registry-api.md"


def _section_three_rules() -> dict[str, tuple[str, int, int]]:
    """``kind → (pattern, shortest, longest)`` for the pattern rows of §3's table."""
    text = SPEC.read_text(encoding="utf-8")
    section = text.split("## 3. Names and references", 1)[1].split("\n## ", 1)[0]
    row = re.compile(r"^\| ([^|]+) \| `([^`]+)` \((\d+)–(\d+) characters\) \|", re.MULTILINE)
    return {kind: (rule, int(low), int(high)) for kind, rule, low, high in row.findall(section)}


RULES = _section_three_rules()
PATTERNS = {"namespace, repository": pf.NAME_PATTERN, "version, tag": pf.TAG_PATTERN}


def test_the_table_has_the_rows_the_library_implements() -> None:
    assert set(RULES) == set(PATTERNS)


@pytest.mark.parametrize("kind", sorted(PATTERNS))
def test_patterns_are_the_spec_rules(kind: str) -> None:
    rule, _, _ = RULES[kind]
    assert PATTERNS[kind].replace("(?:", "(") == rule  # the library's groups do not capture


@pytest.mark.parametrize(
    ("kind", "check", "first", "rest"),
    [("namespace, repository", pf.is_name, "a", "b"), ("version, tag", pf.is_tag, "A", "b")],
)
def test_length_bounds_are_the_spec_bounds(kind: str, check, first: str, rest: str) -> None:
    _, shortest, longest = RULES[kind]
    assert check(first + rest * (shortest - 1))
    assert check(first + rest * (longest - 1))
    assert not check(first + rest * longest)
    assert not check("")


@pytest.mark.parametrize(
    ("text", "name", "tag"),
    [
        ("acme", True, True),
        ("Acme", False, True),
        ("a.b_c-d", True, True),
        ("-a", False, False),
        ("a-", False, True),
        ("_a", False, True),
        (".", False, False),
        ("..", False, False),
        ("a/b", False, False),
        ("a:b", False, False),
        ("a\n", False, False),
        ("sha256:" + "0" * 64, False, False),
    ],
)
def test_names_and_tags(text: str, name: bool, tag: bool) -> None:
    assert (pf.is_name(text), pf.is_tag(text)) == (name, tag)


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ("sha256:" + "0123456789abcdef" * 4, True),
        ("sha256:" + "A" * 64, False),
        ("sha256:" + "a" * 63, False),
        ("sha256:" + "a" * 65, False),
        ("sha512:" + "a" * 64, False),
        ("sha256:" + "a" * 64 + "\n", False),
        ("sha256:../../etc/passwd", False),
        ("", False),
    ],
)
def test_digest_grammar(text: str, valid: bool) -> None:
    assert pf.is_digest(text) is valid
    if valid:
        assert pf.check_digest(text) == text.removeprefix("sha256:")
    else:
        with pytest.raises(ValueError, match="not a sha256 digest"):
            pf.check_digest(text)


def test_digests_of_bytes_and_files_agree(tmp_path) -> None:
    path = tmp_path / "data"
    path.write_bytes(b"concept bytes")
    with open(path, "rb") as handle:
        assert pf.file_digest(handle) == pf.content_digest(b"concept bytes")
    assert pf.is_digest(pf.content_digest(b""))
