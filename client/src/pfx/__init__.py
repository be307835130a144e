"""pfx — the command line and Python client for Perfusion concepts."""
