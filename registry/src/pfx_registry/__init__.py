"""pfx_registry — the concept registry service (FastAPI on uvicorn).

Blobs in a local folder or any S3-compatible service, the index in SQLite or PostgreSQL;
:func:`create_app` builds the application, ``pfx-registry`` runs and administers it. The API is
specified in spec/registry-api.md.
"""

from .app import create_app

__all__ = ["__version__", "create_app"]

__version__ = "0.1.0"
