"""Descriptions are Markdown (CommonMark), rendered so that they can never inject markup: raw
HTML is shown as text, links keep only safe schemes (markdown-it refuses ``javascript:``,
``vbscript:``, ``file:`` and ``data:``) and carry ``rel="nofollow ugc noopener"``, and images are
not rendered (the catalog shows its own previews; a remote image would track readers)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.token import Token
from markupsafe import Markup

__all__ = ["render_markdown"]


def _link_open(renderer: Any, tokens: Sequence[Token], index: int, options: Any, env: Any) -> str:
    tokens[index].attrSet("rel", "nofollow ugc noopener")
    return renderer.renderToken(tokens, index, options, env)  # type: ignore[no-any-return]


_MARKDOWN = MarkdownIt("commonmark", {"html": False, "linkify": False}).disable("image")
_MARKDOWN.add_render_rule("link_open", _link_open)


def render_markdown(text: str) -> Markup:
    """``text`` (CommonMark) as HTML that is safe to place in a page."""
    return Markup(_MARKDOWN.render(text))  # noqa: S704 (html is off: the output is escaped)
