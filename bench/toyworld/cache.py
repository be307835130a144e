"""The toy world's cache: one folder per stage under one root, made once and reused.

A stage's folder holds what it made and ``stage.json``: the stage's *key* (a digest of its
settings, which include the keys of the stages it read from and a digest of the source code that
makes it) and a summary of what it found. A stage whose folder has a stamp with the same key is
not run again; a stage whose settings, code or inputs changed is rebuilt, and with it everything
downstream (their keys change too). A stage is built in ``<stage>.partial`` and renamed into
place once complete, so an interrupted run leaves no folder that looks finished. Every build or
reuse is appended to ``log.jsonl``.

    <root>/
      log.jsonl        one line per stage per run: stage, action (built | cached), key, seconds
      world/           stage 1: datasets (.npz), preview.png
      instrument/      stage 2: the classifier (safetensors + config.json)
      autoencoder/     stage 3a: the VAE (diffusers folder)
      base/            stage 3b: pipeline/ (a diffusers StableDiffusionPipeline), samples.png
      concepts/        stage 4: training images, captions.txt, a concept per object and variant
      measurements/    stage 5: tables.md and figure.png
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["STAMP", "Cache", "StageResult", "digest", "source_digest"]

STAMP = "stage.json"


def digest(settings: Any) -> str:
    """A short SHA-256 of ``settings`` as canonical JSON."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def source_digest(paths: Sequence[Path]) -> str:
    """A short SHA-256 of the Python sources at ``paths`` (files, or folders searched for
    ``*.py``): part of a stage's key, so that changing the code that makes a stage rebuilds it."""
    hasher = hashlib.sha256()
    for path in paths:
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            name = file.relative_to(path) if path.is_dir() else Path(file.name)
            hasher.update(f"{name.as_posix()}\0".encode())
            hasher.update(hashlib.sha256(file.read_bytes()).digest())
    return hasher.hexdigest()[:16]


def _without_code(settings: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in settings.items() if key != "code"}


@dataclass(frozen=True)
class StageResult:
    """A stage's folder, key and summary, and whether this run built it (False: reused)."""

    name: str
    folder: Path
    key: str
    summary: dict[str, Any]
    built: bool
    seconds: float


@dataclass(frozen=True)
class Cache:
    """The stage folders under ``root``."""

    root: Path

    def stage(
        self,
        name: str,
        settings: dict[str, Any],
        make: Callable[[Path], dict[str, Any]],
        rebuild: bool = False,
        ignore_code: bool = False,
    ) -> StageResult:
        """The stage ``name``: reused when its folder's key matches ``settings`` (and not
        ``rebuild``), else made by ``make(folder)``, which fills the folder and returns the
        summary. With ``ignore_code``, a folder whose settings match but for their ``code``
        digest is reused too, under its old key (code changed in ways known not to matter)."""
        folder = self.root / name
        key = digest(settings)
        stamp = folder / STAMP
        if stamp.is_file() and not rebuild:
            record = json.loads(stamp.read_text())
            if record.get("key") == key:
                self._log(name, "cached", key, 0.0)
                return StageResult(name, folder, key, record["summary"], False, 0.0)
            if ignore_code and _without_code(record.get("settings", {})) == _without_code(
                json.loads(json.dumps(settings, default=str))
            ):
                self._log(name, "cached", record["key"], 0.0)
                return StageResult(name, folder, record["key"], record["summary"], False, 0.0)
        partial = self.root / f"{name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        started = time.perf_counter()
        summary = make(partial)
        seconds = round(time.perf_counter() - started, 1)
        record = {"key": key, "settings": settings, "seconds": seconds, "summary": summary}
        (partial / STAMP).write_text(json.dumps(record, indent=2, default=str) + "\n")
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
        self._log(name, "built", key, seconds)
        return StageResult(name, folder, key, summary, True, seconds)

    def log(self) -> list[dict[str, Any]]:
        """The entries of ``log.jsonl``, oldest first."""
        path = self.root / "log.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    def _log(self, name: str, action: str, key: str, seconds: float) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        entry = {
            "stage": name,
            "action": action,
            "key": key,
            "seconds": seconds,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        with (self.root / "log.jsonl").open("a") as log:
            log.write(json.dumps(entry) + "\n")
