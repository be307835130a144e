"""pfx.config: where pfx keeps things, the config file and the precedence of settings."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from pfx import config
from pfx.config import Config, load_config, save_config
from pfx.errors import ClientError, ErrorCode

_VARIABLES = (
    "PFX_CONFIG_DIR",
    "PFX_CACHE_DIR",
    "XDG_CONFIG_HOME",
    "XDG_CACHE_HOME",
    "PFX_REGISTRY",
    "PFX_TOKEN",
    "PFX_OFFLINE",
)


@pytest.fixture(autouse=True)
def _clean_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No PFX_* or XDG_* variable from outside; HOME is a temporary folder."""
    for variable in _VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture
def config_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PFX_CONFIG_DIR pointed at a folder that does not exist yet."""
    folder = tmp_path / "config"
    monkeypatch.setenv("PFX_CONFIG_DIR", str(folder))
    return folder


# -- folders -------------------------------------------------------------------------------------

_FOLDERS = [
    (config.config_dir, "PFX_CONFIG_DIR", "XDG_CONFIG_HOME", ".config"),
    (config.cache_dir, "PFX_CACHE_DIR", "XDG_CACHE_HOME", ".cache"),
]


@pytest.mark.parametrize(
    ("folder", "variable", "xdg", "fallback"), _FOLDERS, ids=["config", "cache"]
)
def test_folder_precedence(
    folder: Callable[[], Path],
    variable: str,
    xdg: str,
    fallback: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert folder() == tmp_path / "home" / fallback / "pfx"
    monkeypatch.setenv(xdg, str(tmp_path / "xdg"))
    assert folder() == tmp_path / "xdg" / "pfx"
    monkeypatch.setenv(variable, "~/elsewhere")
    assert folder() == tmp_path / "home" / "elsewhere"  # no "pfx" appended, ~ expanded


# -- the config file -----------------------------------------------------------------------------


def test_no_file_is_an_empty_config(config_folder: Path) -> None:
    assert load_config() == Config()
    assert not config_folder.exists()


def test_save_and_load_round_trip(config_folder: Path) -> None:
    saved = Config(
        registry="http://127.0.0.1:8080",
        token='pfx_"quoted"\\back\nslash\u00e9',  # TOML escaping: quote, backslash, newline
        default_key=Path("/keys/signing key"),
    )
    path = save_config(saved)
    assert path == config_folder / "config.toml"
    assert load_config() == saved
    assert [entry.name for entry in config_folder.iterdir()] == ["config.toml"]  # no temp file


def test_saved_file_is_0600_in_a_0700_folder(
    config_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_folder.mkdir()
    (config_folder / "config.toml").write_text('registry = "http://old"\n')
    os.chmod(config_folder / "config.toml", 0o644)
    save_config(Config(token="pfx_secret"))
    assert stat.S_IMODE((config_folder / "config.toml").stat().st_mode) == 0o600

    nested = config_folder.parent / "new" / "pfx"
    monkeypatch.setenv("PFX_CONFIG_DIR", str(nested))
    save_config(Config(token="pfx_secret"))
    assert stat.S_IMODE(nested.stat().st_mode) == 0o700
    assert stat.S_IMODE(nested.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((nested / "config.toml").stat().st_mode) == 0o600


def test_unset_keys_are_left_out_and_default_key_expands_home(
    config_folder: Path, tmp_path: Path
) -> None:
    save_config(Config(default_key=Path("~/key")))
    text = (config_folder / "config.toml").read_text()
    assert "registry" not in text
    assert "token" not in text
    assert load_config().default_key == tmp_path / "home" / "key"


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        (b'registry = "http://x', "Unterminated string"),
        (b"registry = 1\nregistry = 2\n", "line 2"),
        (b'registy = "http://x"\n', "unknown key 'registy'"),
        (b"token = 42\n", "token must be a non-empty string"),
        (b'token = ""\n', "token must be a non-empty string"),
        (b"[registry]\nurl = 'x'\n", "registry must be a non-empty string"),
        (b'token = "\xff"\n', "utf-8"),
    ],
    ids=["unterminated", "duplicate", "unknown-key", "number", "empty", "table", "not-utf8"],
)
def test_malformed_file_is_config_invalid_naming_the_file(
    config_folder: Path, content: bytes, complaint: str
) -> None:
    config_folder.mkdir()
    path = config_folder / "config.toml"
    path.write_bytes(content)
    with pytest.raises(ClientError) as caught:
        load_config()
    assert caught.value.code == ErrorCode.CONFIG_INVALID
    assert caught.value.message.startswith(f"{path}: ")
    assert complaint in caught.value.message
    assert "\n" not in caught.value.message


# -- precedence ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """A setting resolved flag > environment > file: its function, variable and file key."""

    effective: Callable[[str | None], str | None]
    variable: str
    key: str


@pytest.fixture(
    params=[
        Setting(config.effective_registry, "PFX_REGISTRY", "registry"),
        Setting(config.effective_token, "PFX_TOKEN", "token"),
    ],
    ids=lambda setting: setting.key,
)
def setting(request: pytest.FixtureRequest) -> Setting:
    return request.param


def test_flag_beats_environment_beats_file_beats_default(
    setting: Setting, config_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    effective = setting.effective
    assert effective(None) is None
    save_config(Config(**{setting.key: "from-file"}))
    assert effective(None) == "from-file"
    monkeypatch.setenv(setting.variable, "")  # empty is unset
    assert effective(None) == "from-file"
    monkeypatch.setenv(setting.variable, "from-env")
    assert effective(None) == "from-env"
    assert effective("from-flag") == "from-flag"


def test_a_bad_config_file_matters_only_when_it_is_read(
    setting: Setting, config_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_folder.mkdir()
    (config_folder / "config.toml").write_text(f"{setting.key} = [")
    assert setting.effective("from-flag") == "from-flag"
    monkeypatch.setenv(setting.variable, "from-env")
    assert setting.effective(None) == "from-env"
    monkeypatch.delenv(setting.variable)
    with pytest.raises(ClientError, match="CONFIG_INVALID"):
        setting.effective(None)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, False),
        ("", False),
        ("1", True),
        ("true", True),
        ("YES", True),
        (" True ", True),
        ("0", False),
        ("false", False),
        ("on", False),
    ],
)
def test_offline(value: str | None, expected: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if value is not None:
        monkeypatch.setenv("PFX_OFFLINE", value)
    assert config.offline() is expected
