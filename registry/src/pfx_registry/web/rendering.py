"""Pages: the templates, what every page is sent with (a strict Content-Security-Policy and
other protective headers), and the error page browsers get instead of JSON.

Templates are Jinja2 with autoescaping on, so every value placed in a page is escaped; the only
markup that is not comes from :func:`~.markdown.render_markdown`. Pages carry no inline script or
style: the CSP allows scripts, styles and images from this origin only.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from functools import cache
from importlib.resources import files
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from pfx_registry.service.sessions import Session

from .markdown import render_markdown

__all__ = ["PAGE_HEADERS", "error_page", "page", "static_asset"]

_PACKAGE = files("pfx_registry.web")

#: Sent with every page: no script, style or image from elsewhere, no framing, no MIME sniffing.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    # pages differ by who is signed in: never kept by a shared cache
    "Cache-Control": "private, no-cache",
    "Vary": "Cookie",
}

#: What an error page says, by status; a 404 never says more (a hidden concept and a missing one
#: must give the same page).
_ERROR_TITLES = {
    400: "Bad request",
    401: "Sign-in needed",
    403: "Not allowed",
    404: "Not found",
    405: "Method not allowed",
    413: "Too large",
    415: "Unsupported media type",
    422: "Refused",
    429: "Too many requests",
    503: "Unavailable",
}
NOT_FOUND_MESSAGE = "There is no such page, or you may not see it."


def human_size(count: int) -> str:
    """``count`` bytes for people: ``812 B``, ``98.3 KB``, ``3.1 MB`` (decimal units)."""
    if count < 1000:
        return f"{count} B"
    if count < 1_000_000:
        return f"{count / 1000:.1f} KB"
    return f"{count / 1_000_000:.1f} MB"


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else ""


@cache
def static_asset(name: str) -> tuple[bytes, str]:
    """A file of the package's static folder and its version (the first 12 hex digits of its
    SHA-256, which page links carry so the file can be cached as immutable)."""
    data = _PACKAGE.joinpath("static", name).read_bytes()
    return data, hashlib.sha256(data).hexdigest()[:12]


def _static_url(name: str) -> str:
    return f"/-/static/{name}?v={static_asset(name)[1]}"


@cache
def _environment() -> Environment:
    environment = Environment(
        loader=FileSystemLoader(str(_PACKAGE.joinpath("templates"))),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["size"] = human_size
    environment.filters["when"] = _when
    environment.filters["markdown"] = render_markdown
    environment.globals["static"] = _static_url
    return environment


def page(
    request: Request,
    template: str,
    visitor: Session | None,
    status: int = 200,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    """Render ``template`` for ``visitor`` (None: signed out) with the page headers."""
    context.setdefault("path", request.url.path)
    html = _environment().get_template(template).render(visitor=visitor, **context)
    return HTMLResponse(html, status_code=status, headers={**PAGE_HEADERS, **(headers or {})})


def error_page(
    request: Request, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> HTMLResponse:
    """The page a browser gets for an error. It depends on the status and message only — never
    on who asks or on what exists — so a hidden concept's 404 is byte-for-byte a missing one's."""
    title = _ERROR_TITLES.get(status, "Error")
    if status == 404:
        message = NOT_FOUND_MESSAGE
    return page(
        request,
        "error.html",
        None,
        status,
        headers,
        path=None,  # not even the sign-in link's return address
        title=title,
        status_code=status,
        code=code,
        message=message,
    )
