"""The two file primitives every pfx package shares: bounded reads and atomic writes.

A bounded read refuses a file over its cap before reading it (and never reads more than the cap
plus one byte, should the file grow meanwhile). An atomic write puts the bytes in a temporary file
``.<name>.<random>.tmp`` (created exclusively, so never through a link), flushes it to disk,
renames it over the target and flushes the folder: readers see the old file or the new one, never
half of one, and a crash leaves at most a temporary file that :func:`is_temporary` recognises.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from .container import MAX_FILE_SIZE
from .errors import ErrorCode, FormatError

__all__ = ["TEMPORARY_SUFFIX", "is_temporary", "read_bounded", "write_atomic"]

#: How the name of every temporary file :func:`write_atomic` makes ends.
TEMPORARY_SUFFIX = ".tmp"


def read_bounded(path: str | os.PathLike[str], limit: int = MAX_FILE_SIZE) -> bytes:
    """Read a whole file, refusing (FILE_TOO_LARGE) before reading more than ``limit`` bytes."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > limit:
            raise FormatError(ErrorCode.FILE_TOO_LARGE, f"{size} bytes exceeds {limit}")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise FormatError(ErrorCode.FILE_TOO_LARGE, f"more than {limit} bytes")
    return data


def is_temporary(name: str) -> bool:
    """True for the name of a temporary file :func:`write_atomic` writes before renaming."""
    return name.startswith(".") and name.endswith(TEMPORARY_SUFFIX)


def write_atomic(
    path: str | os.PathLike[str],
    data: bytes,
    *,
    mode: int | None = None,
    folder: str | os.PathLike[str] | None = None,
) -> None:
    """Replace ``path`` with ``data`` atomically.

    ``mode`` is the new file's permission bits; by default an existing file's are kept, and a new
    file gets what the umask allows. The temporary file is made in ``folder`` (default: the
    target's folder; it must be on the target's file system). Several processes may write the
    same path at once: each rename is whole, the last one wins.
    """
    target = Path(path)
    if mode is None:
        mode = _current_mode(target)
    descriptor, temporary = tempfile.mkstemp(
        dir=target.parent if folder is None else folder,
        prefix=f".{target.name}.",
        suffix=TEMPORARY_SUFFIX,
    )
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_folder(target.parent)


def _current_mode(target: Path) -> int:
    """``target``'s permission bits, or those the umask gives a new file."""
    try:
        return target.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_folder(folder: Path) -> None:
    """Make a rename into ``folder`` durable (best effort: not every system opens folders)."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
