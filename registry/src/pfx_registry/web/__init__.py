"""The web catalog: server-rendered pages for browsers, served by the registry itself.

Pages (spec/registry-api.md §9 fixes their paths): ``/`` (home), ``/-/search``, ``/{ns}``,
``/{ns}/{name}`` and ``/{ns}/{name}/-/versions/{version}``; ``/-/login``, ``/-/logout`` and
``/-/tokens``. Everything the catalog adds lives under ``/-/`` or after a concept's path, so no
namespace can shadow it (``-`` is not a valid name; the API's first segments are reserved names).

- :mod:`.pages` — the reading pages; :mod:`.files` — static files, previews, thumbnails and
  downloads; :mod:`.account` — signing in and out, tokens;
- :mod:`.visitors` — the session cookie and the anti-forgery checks;
- :mod:`.rendering` — templates, the page headers (a strict CSP) and the HTML error page;
- :mod:`.markdown` — descriptions rendered safely; :mod:`.thumbnails` — card images.

Pages read through the same service calls as the API, so they show exactly what the visitor's
token may read. Works without JavaScript; the one script (copy buttons) is a static file.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.routing import APIRoute

from . import account, files, pages
from .paths import is_page_path
from .rendering import error_page

__all__ = ["ROUTERS", "error_page", "is_page_path", "router_methods"]

#: The catalog's routers, matched after the API's: ``/{ns}`` and ``/{ns}/{name}`` come last.
ROUTERS: tuple[APIRouter, ...] = (files.router, account.router, pages.router)


def router_methods(router: APIRouter, path: str) -> set[str]:
    """The methods ``router``'s routes answer at ``path`` (for a 405's ``Allow``)."""
    return {
        method
        for route in router.routes
        if isinstance(route, APIRoute) and route.path_regex.match(path)
        for method in route.methods
    }
