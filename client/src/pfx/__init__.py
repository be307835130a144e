"""pfx — the command line and Python client for Perfusion concepts."""

__version__ = "0.1.0"
