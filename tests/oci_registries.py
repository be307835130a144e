"""OCI registries nobody here wrote, for tests: the CNCF distribution registry (Debian's
``docker-registry``) as a subprocess on a free loopback port, spoken to over HTTP.

Fixtures (session scope, registered for every test folder by tests/conftest.py):

- ``distribution_registry`` — no authentication, deletes enabled, filesystem storage in a pytest
  tmp folder (:meth:`Distribution.blob_file` is where a blob's bytes lie, for tampering tests);
- ``distribution_registry_with_auth`` — the same behind htpasswd Basic authentication: one user,
  :data:`USER` / :data:`PASSWORD` (the bcrypt entry is made with the ``bcrypt`` package, else
  ``htpasswd`` from apache2-utils).

A test whose tool is missing skips and says which package to install, never silently:
:func:`require_skopeo` does the same for skopeo. Both registries are shared by the session:
tests make repository names of their own.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from backends import free_port, stop_process
from registry_server import wait_until_ready

__all__ = [
    "PASSWORD",
    "USER",
    "Distribution",
    "distribution_registry",
    "distribution_registry_with_auth",
    "require_skopeo",
    "run_distribution",
]

USER = "oci-tester"
PASSWORD = "correct horse battery staple"
_INSTALL = "apt-get install -y docker-registry skopeo"


@dataclass(frozen=True)
class Distribution:
    """A running distribution registry: its ``host`` (``127.0.0.1:PORT``, for ``oci://`` and
    ``docker://`` references) and its storage folder."""

    host: str
    storage: Path
    credentials: tuple[str, str] | None = None

    @property
    def url(self) -> str:
        """``http://HOST``."""
        return f"http://{self.host}"

    def blob_file(self, digest: str) -> Path:
        """The file that holds the blob ``digest`` (filesystem driver layout)."""
        hex_digest = digest.removeprefix("sha256:")
        return self.storage.joinpath(
            "docker", "registry", "v2", "blobs", "sha256", hex_digest[:2], hex_digest, "data"
        )


def require_skopeo() -> str:
    """The skopeo binary; skips the test when it is not installed."""
    binary = shutil.which("skopeo")
    if binary is None:
        pytest.skip(f"needs skopeo: {_INSTALL}")
    return binary


def _htpasswd_entry(user: str, password: str) -> str:
    """``user:<bcrypt hash>`` for an htpasswd file; skips when neither bcrypt nor htpasswd is
    there."""
    try:
        import bcrypt
    except ImportError:
        tool = shutil.which("htpasswd")
        if tool is None:
            pytest.skip("needs the bcrypt package (client[test]) or htpasswd (apache2-utils)")
        made = subprocess.run(
            [tool, "-nbB", "-C", "4", user, password], capture_output=True, text=True, check=True
        )
        return made.stdout.strip()
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    return f"{user}:{hashed}"


@contextmanager
def run_distribution(folder: Path, *, with_auth: bool = False) -> Iterator[Distribution]:
    """``docker-registry serve`` with a config written to ``folder``, on a free loopback port,
    until the block ends; with ``with_auth``, behind htpasswd Basic authentication."""
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.skip(f"needs the CNCF distribution registry: {_INSTALL}")
    storage, log = folder / "storage", folder / "registry.log"
    host = f"127.0.0.1:{free_port()}"
    config = [
        "version: 0.1",
        "log:",
        "  level: warn",
        "  accesslog:",
        "    disabled: true",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {storage}",
        "  delete:",
        "    enabled: true",
        "http:",
        f"  addr: {host}",
        "  secret: oci-registry-tests",
    ]
    credentials = None
    if with_auth:
        credentials = (USER, PASSWORD)
        htpasswd = folder / "htpasswd"
        htpasswd.write_text(_htpasswd_entry(USER, PASSWORD) + "\n")
        config += ["auth:", "  htpasswd:", "    realm: pfx-tests", f"    path: {htpasswd}"]
    (folder / "config.yml").write_text("\n".join(config) + "\n")
    with open(log, "ab") as output:
        process = subprocess.Popen(
            [binary, "serve", str(folder / "config.yml")],
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        # 401: the registry with authentication is up too
        wait_until_ready(process, f"http://{host}", log, probe="/v2/", ready=(200, 401))
        yield Distribution(host, storage, credentials)
    finally:
        stop_process(process)


@pytest.fixture(scope="session")
def distribution_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Distribution]:
    """The distribution registry without authentication (see the module docstring)."""
    with run_distribution(tmp_path_factory.mktemp("distribution")) as registry:
        yield registry


@pytest.fixture(scope="session")
def distribution_registry_with_auth(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Distribution]:
    """The distribution registry behind htpasswd Basic authentication (:data:`USER`,
    :data:`PASSWORD`)."""
    folder = tmp_path_factory.mktemp("distribution-auth")
    with run_distribution(folder, with_auth=True) as registry:
        yield registry
