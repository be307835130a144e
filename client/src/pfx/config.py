"""Where pfx keeps things, and the configuration file.

Folders:

- configuration: ``$PFX_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/pfx``, else ``~/.config/pfx``
  (``config.toml``, the trust policy, keys);
- cache: ``$PFX_CACHE_DIR``, else ``$XDG_CACHE_HOME/pfx``, else ``~/.cache/pfx``.

``config.toml`` holds up to three string keys, and the credentials ``pfx login oci://HOST`` saved
for OCI registries, keyed by ``HOST[:PORT]``::

    registry = "https://registry.example.com"   # the registry to talk to
    token = "pfx_..."                            # the API token for it
    default_key = "~/.config/pfx/keys/pfx_ed25519"  # private key that signs pushes

    [oci."ghcr.io"]                              # an OCI registry's user name and password
    username = "alice"
    password = "ghp_..."

Settings are resolved flags > environment (``PFX_REGISTRY``, ``PFX_TOKEN``, ``PFX_OFFLINE``) >
config file > defaults. A file that is not valid TOML, has an unknown key or a value that is not a
non-empty string is refused with CONFIG_INVALID, naming the file.

pfx writes its files with :func:`write_private_file`: mode 0600 from the moment they exist, in
folders created 0700, through a temporary file and a rename, so a reader never sees half a file.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from perfusion_format import write_atomic
from pfx.errors import ClientError, ErrorCode
from pfx.oci_reference import parse_oci_host

__all__ = [
    "CONFIG_FILE_NAME",
    "Config",
    "OciLogin",
    "cache_dir",
    "config_dir",
    "config_file",
    "effective_registry",
    "effective_token",
    "load_config",
    "make_private_dirs",
    "offline",
    "read_toml",
    "save_config",
    "write_private_file",
]

CONFIG_FILE_NAME = "config.toml"
_TRUE_WORDS = frozenset({"1", "true", "yes"})


def _folder(variable: str, xdg_variable: str, fallback: str) -> Path:
    configured = os.environ.get(variable)
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get(xdg_variable)
    base = Path(xdg).expanduser() if xdg else Path.home() / fallback
    return base / "pfx"


def config_dir() -> Path:
    """The configuration folder: ``$PFX_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/pfx``, else
    ``~/.config/pfx``."""
    return _folder("PFX_CONFIG_DIR", "XDG_CONFIG_HOME", ".config")


def cache_dir() -> Path:
    """The cache folder: ``$PFX_CACHE_DIR``, else ``$XDG_CACHE_HOME/pfx``, else ``~/.cache/pfx``."""
    return _folder("PFX_CACHE_DIR", "XDG_CACHE_HOME", ".cache")


def config_file() -> Path:
    """The configuration file, ``config.toml`` in :func:`config_dir`."""
    return config_dir() / CONFIG_FILE_NAME


def make_private_dirs(folder: Path) -> Path:
    """Create ``folder`` and its missing parents with mode 0700 (existing ones are left alone)."""
    missing = [path for path in (folder, *folder.parents) if not path.exists()]
    for path in reversed(missing):
        path.mkdir(mode=0o700, exist_ok=True)
    return folder


def write_private_file(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (:func:`perfusion_format.write_atomic`); the file
    has mode 0600 from the moment it exists. Several processes may write the same path at once:
    each rename is whole, the last one wins."""
    write_atomic(path, data, mode=0o600)


def read_toml(path: Path) -> dict[str, Any] | None:
    """The table in the TOML file at ``path``, None when there is no file; CONFIG_INVALID if the
    file is not UTF-8 TOML."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        return None
    except ValueError as error:  # tomllib.TOMLDecodeError, UnicodeDecodeError
        raise ClientError(ErrorCode.CONFIG_INVALID, f"{path}: {error}") from None


@dataclass(frozen=True)
class OciLogin:
    """The credentials of one OCI registry, sent as HTTP Basic (or to its token service)."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class Config:
    """The settings stored in ``config.toml``; None where the file does not set a key."""

    registry: str | None = None
    """The registry's base URL."""

    token: str | None = None
    """The API token sent to the registry."""

    default_key: Path | None = None
    """The private key file (PEM) that signs pushed concepts."""

    oci: dict[str, OciLogin] = field(default_factory=dict)
    """The credentials ``pfx login oci://HOST`` saved, by ``HOST[:PORT]``."""


_KEYS = ("registry", "token", "default_key")
_OCI = "oci"


def _oci_logins(path: Path, table: object) -> dict[str, OciLogin]:
    """The ``oci`` table of the config file at ``path``, checked."""
    if not isinstance(table, dict):
        raise ClientError(ErrorCode.CONFIG_INVALID, f"{path}: oci must be a table")
    logins = {}
    for host, entry in table.items():
        fields = entry if isinstance(entry, dict) else {}
        if set(fields) != {"username", "password"} or not all(
            isinstance(value, str) and value for value in fields.values()
        ):
            raise ClientError(
                ErrorCode.CONFIG_INVALID,
                f"{path}: oci.{host!r} must hold exactly a username and a password (strings)",
            )
        try:
            key = parse_oci_host(f"oci://{host}")
        except ClientError:
            raise ClientError(ErrorCode.CONFIG_INVALID, f"{path}: {host!r} is no host") from None
        logins[key] = OciLogin(fields["username"], fields["password"])
    return logins


def load_config() -> Config:
    """Read :func:`config_file`; an absent file gives an empty :class:`Config`.

    Raises ClientError (CONFIG_INVALID) when the file is not valid TOML, holds a key other than
    ``registry``, ``token``, ``default_key`` and ``oci``, or a value that is not a non-empty
    string (``oci``: see the module docstring).
    """
    path = config_file()
    table = read_toml(path) or {}
    unknown = sorted(set(table) - {*_KEYS, _OCI})
    if unknown:
        raise ClientError(ErrorCode.CONFIG_INVALID, f"{path}: unknown key {unknown[0]!r}")
    oci = _oci_logins(path, table.pop(_OCI, {}))
    for key, value in table.items():
        if not isinstance(value, str) or not value:
            raise ClientError(ErrorCode.CONFIG_INVALID, f"{path}: {key} must be a non-empty string")
    key_path = table.get("default_key")
    return Config(
        registry=table.get("registry"),
        token=table.get("token"),
        default_key=Path(key_path).expanduser() if key_path else None,
        oci=oci,
    )


def save_config(config: Config) -> Path:
    """Write ``config`` to :func:`config_file` (mode 0600, atomically); returns the file's path.

    Keys that are None (and an empty ``oci`` table) are left out of the file.
    """
    values = {key: getattr(config, key) for key in _KEYS}
    table: dict[str, Any] = {key: str(value) for key, value in values.items() if value is not None}
    if config.oci:
        table[_OCI] = {
            host: {"username": login.username, "password": login.password}
            for host, login in sorted(config.oci.items())
        }
    path = make_private_dirs(config_dir()) / CONFIG_FILE_NAME
    write_private_file(path, tomli_w.dumps(table).encode("utf-8"))
    return path


def _setting(flag: str | None, variable: str, key: str) -> str | None:
    """``flag``, else the environment variable, else the config file's ``key`` (read only then)."""
    if flag:
        return flag
    return os.environ.get(variable) or getattr(load_config(), key)


def effective_registry(flag: str | None = None) -> str | None:
    """The registry URL: ``flag``, else ``$PFX_REGISTRY``, else the config file's ``registry``."""
    return _setting(flag, "PFX_REGISTRY", "registry")


def effective_token(flag: str | None = None) -> str | None:
    """The API token: ``flag``, else ``$PFX_TOKEN``, else the config file's ``token``."""
    return _setting(flag, "PFX_TOKEN", "token")


def offline() -> bool:
    """True when ``$PFX_OFFLINE`` is ``1``, ``true`` or ``yes`` (any case): use the cache only."""
    return os.environ.get("PFX_OFFLINE", "").strip().lower() in _TRUE_WORDS
