"""A real pfx registry for end-to-end tests: ``pfx-registry serve`` as a subprocess on a free
loopback port, spoken to over HTTP.

The fixture ``registry_server`` (session scope, registered for every test by tests/conftest.py) is
parametrized over two backends:

- ``folder+sqlite`` — the embedded defaults, in a pytest tmp folder;
- ``s3+postgres`` — blobs in a bucket of the session's moto server, downloads answered with 307
  redirects to presigned URLs (``PFX_S3_REDIRECT=1``), the index in a fresh PostgreSQL database;
  ``s3+sqlite`` instead where no PostgreSQL is at hand (no ``$PFX_TEST_DATABASE_URL`` and no
  server binaries for ``.ci/postgres``).

Rate limits are off (``PFX_RATE_LIMIT_TOKEN=0``, ``PFX_RATE_LIMIT_ADDRESS=0``). The registry's
administrator token comes from ``pfx-registry admin create-token``, as an operator gets it. The
server is shared by the whole session: tests make names of their own with :func:`unique_name`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from backends import DATABASE_URL_VARIABLE, free_port, fresh_postgres_database, stop_process

from pfx.client import Client

PFX_REGISTRY = Path(sys.executable).with_name("pfx-registry")
_POSTGRES_AVAILABLE = (
    bool(os.environ.get(DATABASE_URL_VARIABLE))
    or (Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")) / "initdb").exists()
)
BACKENDS = ["folder+sqlite", "s3+postgres" if _POSTGRES_AVAILABLE else "s3+sqlite"]
#: Settings of the developer's environment that must not reach the test server.
_CLEARED = ("PFX_DATA_DIR", "PFX_DATABASE_URL", "PFX_S3_BUCKET", "PFX_S3_ENDPOINT", "PFX_S3_PREFIX")


def unique_name(prefix: str) -> str:
    """A namespace or repository name no other test uses: ``prefix-<8 hex>``."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Account:
    """A user of the test registry and one token of theirs."""

    name: str
    token: str


@dataclass(frozen=True)
class RegistryServer:
    """A running registry: its ``url``, the administrator's ``admin_token`` and ways to act in
    it as new users."""

    url: str
    admin_token: str
    backend: str

    def client(self, token: str | None = None, **options: Any) -> Client:
        """A :class:`pfx.client.Client` of this registry (anonymous without ``token``)."""
        return Client(self.url, token, **options)

    def create_token(self, user: str, scope: str = "write") -> str:
        """A new token of ``user`` with ``scope``, created by the administrator."""
        with self.client(self.admin_token) as admin:
            return admin.create_token(unique_name("test"), scope, user=user).token

    def create_user(self, prefix: str = "user", scope: str = "write") -> Account:
        """A new user (named ``prefix-<hex>``) and a token of theirs with ``scope``."""
        with self.client(self.admin_token) as admin:
            name = admin.create_user(unique_name(prefix)).name
        return Account(name, self.create_token(name, scope))

    def create_org(self, owner: Account, prefix: str = "org") -> str:
        """A new organization administered by ``owner``; its name."""
        name = unique_name(prefix)
        with self.client(owner.token) as client:
            client.create_org(name)
        return name


def _run_registry(arguments: list[str], environment: dict[str, str], log: Path) -> str:
    """Run ``pfx-registry ARGUMENTS`` to its end; its stdout (stderr goes to ``log``)."""
    with open(log, "ab") as stderr:
        result = subprocess.run(
            [str(PFX_REGISTRY), *arguments],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            timeout=120,
            check=False,
        )
    if result.returncode != 0:
        pytest.fail(f"pfx-registry {arguments[0]} failed:\n{log.read_text()}", pytrace=False)
    return result.stdout


def wait_until_ready(
    process: subprocess.Popen[bytes],
    url: str,
    log: Path,
    probe: str = "/readyz",
    ready: tuple[int, ...] = (200,),
) -> None:
    """Poll ``probe`` until it answers one of the ``ready`` statuses; fail with the server's
    output if the process exits or 120 s pass (a loaded 2-core machine starts slowly)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}{probe}", timeout=1.0, trust_env=False).status_code in ready:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    state = "did not become ready" if process.poll() is None else f"exited ({process.returncode})"
    pytest.fail(f"the registry {state}; its output:\n{log.read_text()}", pytrace=False)


@pytest.fixture(scope="session", params=BACKENDS)
def registry_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RegistryServer]:
    """A registry server of each backend for the session (see the module docstring)."""
    blobs, index = request.param.split("+")
    settings = {"PFX_RATE_LIMIT_TOKEN": "0", "PFX_RATE_LIMIT_ADDRESS": "0"}
    if blobs == "s3":
        s3 = request.getfixturevalue("s3_server")  # puts test AWS credentials in os.environ
        s3.start()  # in case an outage test left it stopped
        settings |= {
            "PFX_S3_BUCKET": s3.create_bucket(),
            "PFX_S3_ENDPOINT": s3.endpoint,
            "PFX_S3_REDIRECT": "1",
        }
    if index == "postgres":
        settings["PFX_DATABASE_URL"] = fresh_postgres_database(
            request.getfixturevalue("postgres_url")
        )
    environment = {k: v for k, v in os.environ.items() if k not in _CLEARED} | settings
    folder = tmp_path_factory.mktemp("registry")
    data, log = folder / "data", folder / "registry.log"
    admin_token = _run_registry(
        ["admin", "create-token", "--data", str(data)], environment, log
    ).split()[-1]
    port = free_port()
    with open(log, "ab") as output:
        process = subprocess.Popen(
            [str(PFX_REGISTRY), "serve", "--port", str(port), "--data", str(data)],
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(process, url, log)
        yield RegistryServer(url, admin_token, request.param)
    finally:
        stop_process(process)


# -- stand-ins -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """What a scripted server answers; with ``cut``, only the body's first ``cut`` bytes are
    sent (after a ``Content-Length`` announcing all of them), then the connection is closed."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    cut: int | None = None


@dataclass(frozen=True)
class Seen:
    """A request a scripted server received."""

    method: str
    path: str
    headers: Message


@dataclass(frozen=True)
class Scripted:
    """A scripted server's address and the requests it has received."""

    url: str
    seen: list[Seen]


def error_reply(status: int, code: str, **headers: str) -> Reply:
    """The registry's error shape."""
    body = json.dumps({"error": {"code": code, "message": "scripted"}}).encode()
    return Reply(status, body, {"Content-Type": "application/json", **headers})


@contextmanager
def scripted(*replies: Reply) -> Iterator[Scripted]:
    """An HTTP server on a loopback socket that answers its n-th request with ``replies[n]``
    (the last reply forever) and records every request."""
    seen: list[Seen] = []

    class Handler(BaseHTTPRequestHandler):
        def answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append(Seen(self.command, self.path, self.headers))
            reply = replies[min(len(seen), len(replies)) - 1]
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(reply.body[: reply.cut])
            if reply.cut is not None:
                self.close_connection = True

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = answer

        def log_message(self, *_arguments: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Scripted(f"http://127.0.0.1:{server.server_port}", seen)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy ``source`` to ``sink`` until either closes, then shut both down."""
    with suppress(OSError):
        while data := source.recv(64 * 1024):
            sink.sendall(data)
    for end in (source, sink):
        with suppress(OSError):
            end.shutdown(socket.SHUT_RDWR)


@contextmanager
def relay(target: str) -> Iterator[str]:
    """A TCP relay from a free loopback port to the server at the URL ``target``: the URL to use
    instead. On exit it stops listening and cuts every connection, so from then on its URL is a
    registry that is down (connections refused)."""
    parts = urlsplit(target)
    listener = socket.create_server(("127.0.0.1", 0))
    open_sockets = [listener]

    def accept() -> None:
        while True:
            try:
                near, _ = listener.accept()
            except OSError:  # the listener was closed
                return
            far = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80))
            open_sockets.extend((near, far))
            for source, sink in ((near, far), (far, near)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        for end in open_sockets:
            with suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()
        thread.join()
