"""``pfx-registry``: the registry's command line."""

from __future__ import annotations

import argparse

import uvicorn

from .app import create_app


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``pfx-registry`` console command."""
    parser = argparse.ArgumentParser(prog="pfx-registry", description="The pfx concept registry.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="start the registry (uvicorn)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8700, help="port to bind (default 8700)")
    arguments = parser.parse_args(argv)

    print(
        f"pfx registry on http://{arguments.host}:{arguments.port}\n"
        "  This build serves GET /healthz and POST /v1/concepts/validate only: storage, the\n"
        "  index, accounts and push/pull arrive with the registry issue."
    )
    uvicorn.run(create_app(), host=arguments.host, port=arguments.port, log_level="info")
