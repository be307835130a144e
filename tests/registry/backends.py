"""The registry's real backends for tests: a throwaway PostgreSQL 15 cluster and an S3-protocol
server (moto's server mode) on loopback, spoken to over their real protocols.

The fixtures are registered for every test by tests/conftest.py (a ``conftest.py`` in this folder
would clash with the root one's module name, which tests import as ``from conftest import ...``):

- ``postgres_url`` (session) — ``postgresql+psycopg://...`` of a database the tests may use:
  ``$PFX_TEST_DATABASE_URL`` when set (.ci/run starts one cluster for the whole run), else a
  cluster this session starts with ``.ci/postgres`` and removes at its end.
- ``s3_server`` (session) — an :class:`S3Server`: moto's server as a subprocess on a free loopback
  port; ``.url``/``.endpoint``, ``stop()``/``start()`` (same port) for outage tests,
  ``create_bucket(name=None) -> name`` and ``client()`` (boto3).
- ``s3_endpoint`` (session) — the server's ``http://127.0.0.1:PORT``.
- ``blob_store`` (function, params ``"folder"`` and ``"s3"``) — a fresh, empty
  :class:`~pfx_registry.blobs.FolderBlobStore` in ``tmp_path`` or
  :class:`~pfx_registry.blobs.S3BlobStore` on a bucket of its own.

While the S3 fixtures are alive the environment holds dummy AWS credentials and region (and no
AWS config file or proxy for loopback), restored afterwards. Helpers are importable too:
``from backends import S3Server, TcpProxy, free_port, fresh_postgres_database, start_postgres,
stop_postgres, stop_process``.
"""

from __future__ import annotations

import os
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pfx_registry.blobs import BlobStore, FolderBlobStore, S3BlobStore

REPO = Path(__file__).resolve().parents[2]
POSTGRES_SCRIPT = REPO / ".ci" / "postgres"
DATABASE_URL_VARIABLE = "PFX_TEST_DATABASE_URL"

#: What the S3 fixtures put in the environment: boto3 finds these credentials and region, and
#: nothing from the developer's own AWS configuration.
AWS_TEST_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
_AWS_CLEARED = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """End a server subprocess: SIGTERM, then SIGKILL if it is still there after 10 s."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class TcpProxy:
    """A TCP forwarder from a free loopback port (``port``) to ``target``, for network-failure
    tests. ``blackhole()`` makes it a peer that accepts and never answers: it stops accepting and
    moving bytes in either direction while every socket stays open, so the kernel still completes
    handshakes (up to the backlog) and acknowledges what is sent; ``heal()`` resumes, delivering
    what was held. ``close()`` ends every connection."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port: int = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._forwarding = threading.Event()
        self._forwarding.set()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="tcp-proxy", daemon=True)
        self._thread.start()

    def blackhole(self) -> None:
        """Stop accepting and forwarding; keep every socket open."""
        self._forwarding.clear()

    def heal(self) -> None:
        """Accept and forward again."""
        self._forwarding.set()

    def close(self) -> None:
        """Stop the forwarder and close every socket."""
        self._closed.set()
        self._forwarding.set()
        self._thread.join(timeout=10)
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()

    def _serve(self) -> None:
        while not self._closed.is_set():
            if not self._forwarding.wait(0.05):
                continue
            for key, _events in self._selector.select(0.05):
                if key.fileobj is self._listener:
                    self._accept()
                elif key.fileobj.fileno() != -1:  # type: ignore[union-attr]
                    # (-1: its partner ended earlier in this batch and closed both)
                    self._pipe(key.fileobj, key.data)  # type: ignore[arg-type]

    def _accept(self) -> None:
        client, _address = self._listener.accept()
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        self._selector.register(client, selectors.EVENT_READ, upstream)
        self._selector.register(upstream, selectors.EVENT_READ, client)

    def _pipe(self, source: socket.socket, destination: socket.socket) -> None:
        try:
            data = source.recv(65536)
            if data:
                destination.sendall(data)
                return
        except OSError:
            pass
        for end in (source, destination):
            if end.fileno() != -1:
                self._selector.unregister(end)
                end.close()


# --- PostgreSQL -------------------------------------------------------------------------------


def start_postgres(directory: Path) -> str:
    """Start a throwaway cluster in ``directory`` (empty or absent) with ``.ci/postgres start``
    and return its database URL; :class:`RuntimeError` with the script's message on failure."""
    result = subprocess.run(
        [str(POSTGRES_SCRIPT), "start", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise RuntimeError(
            f".ci/postgres start failed (exit {result.returncode}): {result.stderr.strip()}"
        )
    return lines[-1]


def stop_postgres(directory: Path) -> None:
    """Stop the cluster in ``directory`` and remove the folder (``.ci/postgres stop``)."""
    subprocess.run(
        [str(POSTGRES_SCRIPT), "stop", str(directory)],
        capture_output=True,
        timeout=60,
        check=False,
    )


def fresh_postgres_database(base_url: str) -> str:
    """A new empty database on the cluster of ``base_url``; its URL."""
    import sqlalchemy

    name = "t" + uuid.uuid4().hex[:12]
    engine = sqlalchemy.create_engine(base_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return base_url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a PostgreSQL 15 database for this session: ``$PFX_TEST_DATABASE_URL`` when set
    (shared with any other pytest-xdist worker), else a cluster started here and removed at the
    end. Tests that need isolation make their own schema or database in it."""
    preset = os.environ.get(DATABASE_URL_VARIABLE)
    if preset:
        yield preset
        return
    # Not under pytest's tmp folders: they are closed (0700) to the postgres OS user.
    directory = Path(tempfile.mkdtemp(prefix="pfx-postgres-"))
    try:
        url = start_postgres(directory)
    except RuntimeError as error:
        stop_postgres(directory)
        shutil.rmtree(directory, ignore_errors=True)
        pytest.fail(f"no PostgreSQL for the tests: {error}", pytrace=False)
    try:
        yield url
    finally:
        stop_postgres(directory)


# --- S3 ---------------------------------------------------------------------------------------


class S3Server:
    """moto's S3-protocol server (``python -m moto.server``) as a subprocess on a fixed loopback
    port. ``stop()`` and ``start()`` keep the port, so clients made before an outage reach the
    server again after it; a restarted server is empty (moto keeps its state in memory)."""

    def __init__(self, port: int, log: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.endpoint = self.url  # the same, by the name boto3 and the registry's settings use
        self.log = log
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        """Whether the subprocess is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        """Start the server (no-op when running) and wait until it answers HTTP."""
        import httpx

        if self.running:
            return
        with open(self.log, "ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"moto server exited: {self.log.read_text(errors='replace')}")
            try:
                httpx.get(self.url + "/moto-api/", timeout=1.0, trust_env=False)
                return
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto server did not answer on {self.url}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server (no-op when stopped); the port is then closed."""
        process, self._process = self._process, None
        if process is not None:
            stop_process(process)

    def client(self) -> Any:
        """A boto3 S3 client for this server."""
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1")

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a unique name unless ``name``) and return its name."""
        bucket = name or f"pfx-test-{uuid.uuid4().hex[:20]}"
        self.client().create_bucket(Bucket=bucket)
        return bucket


@pytest.fixture(scope="session")
def aws_test_environment() -> Iterator[None]:
    """Dummy AWS credentials and region for boto3, loopback bypassing any proxy; restored at the
    end of the session."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in AWS_TEST_ENVIRONMENT.items():
            patch.setenv(name, value)
        for name in _AWS_CLEARED:
            patch.delenv(name, raising=False)
        for name in ("NO_PROXY", "no_proxy"):
            existing = os.environ.get(name)
            patch.setenv(name, f"{existing},127.0.0.1" if existing else "127.0.0.1,localhost")
        yield


@pytest.fixture(scope="session")
def s3_server(
    aws_test_environment: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[S3Server]:
    """The session's moto server (its log is ``moto.log`` in a pytest tmp folder)."""
    server = S3Server(free_port(), tmp_path_factory.mktemp("moto") / "moto.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_endpoint(s3_server: S3Server) -> str:
    """``http://127.0.0.1:PORT`` of the session's S3-protocol server."""
    return s3_server.url


@pytest.fixture(params=["folder", "s3"])
def blob_store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    """A fresh, empty blob store of each backend: a folder in ``tmp_path``, or a new bucket on the
    session's S3-protocol server (started only when an S3 case runs)."""
    if request.param == "folder":
        return FolderBlobStore(tmp_path / "blobs")
    server: S3Server = request.getfixturevalue("s3_server")
    server.start()  # in case an outage test left it stopped
    return S3BlobStore(server.create_bucket(), endpoint_url=server.url)
