"""Credentials for OCI registries, and the challenges registries ask for them with.

Where credentials come from, first found wins:

1. ``pfx login oci://HOST[:PORT]`` — saved in the pfx config file (mode 0600) under
   ``[oci."HOST[:PORT]"]`` (:mod:`pfx.config`);
2. the docker config file — ``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json`` —
   ``auths["HOST[:PORT]"]``: ``auth`` (base64 of ``user:password``) or ``username`` and
   ``password``. Keys written as URLs (``https://HOST/v1/``) count too. Credential helpers
   (``credsStore``, ``credHelpers``) and ``identitytoken`` are *not* run or used: log in with
   ``pfx login oci://HOST`` for such a registry.

Credentials are looked up only when a registry answers 401, are sent only as that answer asks
(:class:`Challenge`), and never appear in a message: :class:`Credentials` shows where they came
from, never the password.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from pfx.config import load_config
from pfx.errors import ClientError, ErrorCode

__all__ = [
    "Challenge",
    "Credentials",
    "docker_config_file",
    "find_credentials",
    "parse_challenge",
]

_MAX_DOCKER_CONFIG = 1024 * 1024
#: ``name=value`` or ``name="quoted value"`` of a challenge, and the comma after it.
_PARAMETER = re.compile(
    r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))\s*,?'
)


@dataclass(frozen=True)
class Credentials:
    """A user name and password for one registry, and where they were found (``source``, shown
    in messages instead of them: "the credentials <source>")."""

    username: str
    password: str = field(repr=False)
    source: str = "given"

    def basic(self) -> str:
        """The ``Authorization`` header value of HTTP Basic."""
        pair = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: its scheme (lowercased) and parameters."""

    scheme: str
    parameters: dict[str, str]


def parse_challenge(header: str | None) -> Challenge | None:
    """The first challenge of a ``WWW-Authenticate`` header (``Bearer realm="…",service="…",
    scope="…"`` or ``Basic realm="…"``); None when there is none to read."""
    if not header:
        return None
    scheme, _, rest = header.strip().partition(" ")
    parameters: dict[str, str] = {}
    position = 0
    while position < len(rest):
        match = _PARAMETER.match(rest, position)
        if match is None or match.end() == position:
            break  # a second challenge or something unreadable: the first one is enough
        quoted, bare = match.group(2), match.group(3)
        value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
        parameters.setdefault(match.group(1).lower(), value)
        position = match.end()
    return Challenge(scheme.lower(), parameters) if scheme else None


def docker_config_file() -> Path:
    """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``."""
    folder = os.environ.get("DOCKER_CONFIG")
    base = Path(folder).expanduser() if folder else Path.home() / ".docker"
    return base / "config.json"


def _config_invalid(path: Path, problem: str) -> ClientError:
    return ClientError(ErrorCode.CONFIG_INVALID, f"{path}: {problem}")


def _read_docker_config(path: Path) -> dict[str, object]:
    """The docker config at ``path`` ({} when there is none); CONFIG_INVALID when unreadable."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(_MAX_DOCKER_CONFIG + 1)
    except FileNotFoundError:
        return {}
    except OSError as error:
        raise _config_invalid(path, error.strerror or str(error)) from None
    if len(data) > _MAX_DOCKER_CONFIG:
        raise _config_invalid(path, f"larger than {_MAX_DOCKER_CONFIG} bytes")
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise _config_invalid(path, "not JSON") from None
    if not isinstance(document, dict):
        raise _config_invalid(path, "not a JSON object")
    return document


def _auths_key(key: str) -> str:
    """An ``auths`` key as a host: ``https://HOST/v1/`` → ``HOST``."""
    bare = re.sub(r"^[a-z][a-z0-9+.-]*://", "", key.strip().lower())
    return bare.split("/", 1)[0]


def _docker_entry(path: Path, host: str, entry: object) -> Credentials | None:
    if not isinstance(entry, dict):
        return None
    source = f"in {path} (auths)"
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            decoded = ""
        username, colon, password = decoded.partition(":")
        if not colon or not username:
            raise _config_invalid(path, f"auths[{host!r}].auth is not base64 of user:password")
        return Credentials(username, password, source)
    username, password = entry.get("username"), entry.get("password")
    if isinstance(username, str) and username and isinstance(password, str):
        return Credentials(username, password, source)
    return None


def _docker_credentials(host: str) -> tuple[Credentials | None, str | None]:
    """Credentials for ``host`` in the docker config; when there are none, a hint when docker
    keeps them in a credential helper pfx does not run."""
    path = docker_config_file()
    document = _read_docker_config(path)
    auths = document.get("auths")
    if isinstance(auths, dict):
        for key, entry in auths.items():
            if isinstance(key, str) and _auths_key(key) == host:
                found = _docker_entry(path, host, entry)
                if found is not None:
                    return found, None
    helpers = document.get("credHelpers")
    if document.get("credsStore") or (isinstance(helpers, dict) and host in helpers):
        return None, f"{path} names a credential helper, which pfx does not run"
    return None, None


def find_credentials(host: str) -> tuple[Credentials | None, str | None]:
    """The credentials for ``host`` (``HOST[:PORT]``): those ``pfx login`` saved, else the docker
    config's; with None, a hint on why none were found (or None)."""
    login = load_config().oci.get(host)
    if login is not None:
        return Credentials(login.username, login.password, "saved by pfx login"), None
    return _docker_credentials(host)
