"""pfx_registry — the concept registry service (FastAPI on uvicorn).

What exists today: the application factory, a health endpoint, and a validation endpoint that
checks an uploaded concept file with :mod:`perfusion_format` and returns what the server itself
reads from it. Storage, the index and access control arrive with the registry issue.
"""

from .app import create_app

__all__ = ["__version__", "create_app"]

__version__ = "0.1.0"
