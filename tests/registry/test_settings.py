"""The registry's settings: one class read from ``PFX_*`` variables, parsed as pydantic parses
them, refused at start with one line naming the variable, and documented completely."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from pfx_registry.settings import Settings, settings_error

SPEC = Path(__file__).resolve().parents[2] / "spec" / "registry-api.md"


def _clear_pfx(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("PFX_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("text", "value"),
    [("True", True), ("yes", True), ("1", True), ("ON", True), ("false", False), ("no", False)],
)
def test_booleans_parse_as_pydantic_does(
    monkeypatch: pytest.MonkeyPatch, text: str, value: bool
) -> None:
    _clear_pfx(monkeypatch)
    monkeypatch.setenv("PFX_S3_REDIRECT", text)
    assert Settings.from_env().s3_redirect is value


def test_every_setting_is_read_from_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear_pfx(monkeypatch)
    given: dict[str, tuple[str, object]] = {
        "PFX_DATA_DIR": ("/srv/pfx", Path("/srv/pfx")),
        "PFX_DATABASE_URL": ("postgresql+psycopg://pfx@db/pfx", "postgresql+psycopg://pfx@db/pfx"),
        "PFX_S3_BUCKET": ("concepts", "concepts"),
        "PFX_S3_ENDPOINT": ("http://minio:9000", "http://minio:9000"),
        "PFX_S3_PREFIX": ("prod/", "prod/"),
        "PFX_S3_REDIRECT": ("yes", True),
        "PFX_PRESIGN_SECONDS": ("60", 60),
        "PFX_MAX_CONCEPT_BYTES": ("1000000", 1_000_000),
        "PFX_MAX_PREVIEW_BYTES": ("2000", 2000),
        "PFX_MAX_JSON_BYTES": ("4096", 4096),
        "PFX_RATE_LIMIT_TOKEN": ("7.5", 7.5),
        "PFX_RATE_LIMIT_ADDRESS": ("0", 0.0),
        "PFX_READ_CACHE_SECONDS": ("0.25", 0.25),
        "PFX_BLOB_CACHE_BYTES": ("0", 0),
        "PFX_SESSION_SECONDS": ("3600", 3600),
        "PFX_SIGNED_URL_SECRET": ("0123456789abcdef-secret", "0123456789abcdef-secret"),
        "PFX_SIGNED_URL_SECONDS": ("30", 30),
        "PFX_ACCEL_REDIRECT": ("/_pfx/store/", "/_pfx/store/"),
        "PFX_EDGE_CACHE_SECONDS": ("120", 120),
        "PFX_EDGE_RESOLVE_SECONDS": ("5", 5),
    }
    assert set(given) == set(Settings.variables()), "a setting of the class is not tested here"
    for name, (text, _) in given.items():
        monkeypatch.setenv(name, text)
    settings = Settings.from_env()
    for name, (_, expected) in given.items():
        assert getattr(settings, Settings.variables()[name]) == expected, name
    assert Settings.from_env(data_dir="elsewhere").data_dir == Path("elsewhere")
    monkeypatch.setenv("PFX_DATABASE_URL", "")  # empty is unset
    assert Settings.from_env().database_url is None


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("PFX_RATE_LIMIT_TOKEN", "ten"),
        ("PFX_RATE_LIMIT_ADDRESS", "-1"),
        ("PFX_S3_REDIRECT", "maybe"),
        ("PFX_MAX_CONCEPT_BYTES", "99999999999"),
        ("PFX_PRESIGN_SECONDS", "0"),
        ("PFX_BLOB_CACHE_BYTES", "1.5"),
        ("PFX_SESSION_SECONDS", "59"),
        ("PFX_SIGNED_URL_SECRET", "short"),
        ("PFX_ACCEL_REDIRECT", "no-slashes"),
        ("PFX_EDGE_RESOLVE_SECONDS", "3601"),
    ],
)
def test_an_invalid_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, text: str
) -> None:
    _clear_pfx(monkeypatch)
    monkeypatch.setenv(name, text)
    with pytest.raises(ValidationError) as raised:
        Settings.from_env()
    line = settings_error(raised.value)
    assert line.startswith(f"{name}: ") and "\n" not in line


def test_the_server_refuses_to_start_with_an_invalid_value(tmp_path: Path) -> None:
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PFX_")},
        "PFX_RATE_LIMIT_TOKEN": "ten",
    }
    for command in (["serve", "--port", "1"], ["migrate"], ["gc"]):
        result = subprocess.run(
            [
                str(Path(sys.executable).with_name("pfx-registry")),
                *command,
                "--data",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            env=environment,
            timeout=120,
            check=False,
        )
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert lines[0].startswith("pfx-registry: error: PFX_RATE_LIMIT_TOKEN: ")
    assert not (tmp_path / "index.db").exists()  # nothing was created


def test_the_spec_lists_exactly_the_settings() -> None:
    text = SPEC.read_text()
    table = text[text.index("The server is configured from the environment") :]
    table = table[: table.index("**Consistency.**")]
    documented = set(re.findall(r"`(PFX_[A-Z0-9_]+)`", table))
    assert documented == set(Settings.variables())
