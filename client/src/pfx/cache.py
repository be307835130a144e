"""The local, content-addressed cache of concept files (like huggingface_hub's).

Layout under the root (:func:`pfx.config.cache_dir` by default)::

    blobs/sha256/<64 hex>                          the concept file's bytes, named by their SHA-256
    refs/<registry>/<namespace>/<name>/<ref>       a text file: "sha256:<64 hex>" (tag or version)
    oci-refs/<host>/<repo…>/_tags/<tag>            the same for a tag of an OCI repository,
    oci-refs/<host>/<repo…>/_manifests/<64 hex>    and for an OCI manifest digest

``<registry>`` is :func:`registry_slug` of the registry URL: its host and port, filesystem-safe
(``http://127.0.0.1:8080`` → ``127.0.0.1_8080``); ``<host>`` likewise of an OCI ``HOST[:PORT]``.
Namespaces, names, tags and versions follow the registry's rules (spec/registry-api.md §3), OCI
repositories (one folder per path component) and tags the distribution spec's, so no ref can name
a path outside its folder: anything else is refused with REFERENCE_INVALID. Every OCI ref holds
the digest of the concept *file* (the manifest's one layer), so a tag or a manifest digest pulled
once resolves offline; ``_tags`` and ``_manifests`` cannot be repository components.

Rules the cache keeps:

- Every file is written to a temporary file (``.<name>.<random>.tmp``) in its folder, then renamed:
  readers never see half a file, and two processes storing the same blob both succeed. Listings
  ignore temporary files; :meth:`Cache.prune` removes those older than an hour.
- A blob is only handed out after it re-hashes to its name. A blob that does not is *corrupt*:
  :meth:`Cache.get` removes it, records its digest in :attr:`Cache.corrupted` and returns None, as
  for a blob that is not cached, so the caller fetches it again. :meth:`Cache.verify` only reports;
  :meth:`Cache.prune` removes corrupt blobs too. A ref file that does not hold a digest is removed
  and read as absent.
- Links are never followed below the root (the root itself may be a link). A link where a blob
  should be is a corrupt blob; a link or file where a folder should be raises CACHE_CORRUPT.
- :meth:`Cache.get` sets a blob's modification time to now: it is the "last used" time that
  :meth:`Cache.prune` measures age by.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

from perfusion_format import (
    check_digest,
    content_digest,
    file_digest,
    is_digest,
    is_name,
    is_tag,
    is_temporary,
)
from pfx.config import cache_dir, make_private_dirs, write_private_file
from pfx.errors import ClientError, ErrorCode
from pfx.oci_reference import is_oci_repository

__all__ = ["Cache", "CacheEntry", "PruneReport", "registry_slug", "split_repository"]

_SLUG = re.compile(r"[a-z0-9_][a-z0-9._-]*")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_BLOBS = ("blobs", "sha256")
_REFS = "refs"
_OCI_REFS = "oci-refs"
_OCI_TAGS = "_tags"
_OCI_MANIFESTS = "_manifests"
_MAX_REF_FILE = 128
_STALE_TEMPORARY = timedelta(hours=1)


def _invalid(message: str) -> ClientError:
    return ClientError(ErrorCode.REFERENCE_INVALID, message)


def registry_slug(registry: str) -> str:
    """The folder name for a registry URL: its host, and its port unless it is the default.

    ``http://127.0.0.1:8080`` → ``127.0.0.1_8080``, ``https://Registry.example.com/`` →
    ``registry.example.com``; characters other than letters, digits, ``.`` and ``-`` become
    ``_``. Raises REFERENCE_INVALID unless ``registry`` is an http(s) URL with a host.
    """
    try:
        parts = urlsplit(registry)
        port = parts.port
    except ValueError:
        raise _invalid(f"{registry!r} is not a registry URL") from None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise _invalid(f"{registry!r} is not an http(s) URL with a host")
    slug = re.sub(r"[^a-z0-9.-]", "_", parts.hostname)
    if port is not None and port != _DEFAULT_PORTS[parts.scheme]:
        slug = f"{slug}_{port}"
    if not _SLUG.fullmatch(slug):
        raise _invalid(f"{registry!r} has an unusable host")
    return slug


def _hex(digest: str) -> str:
    try:
        return check_digest(digest)
    except ValueError:
        raise _invalid(f"{digest!r} is not a digest (sha256: and 64 lowercase hex)") from None


def _check_repository(namespace: str, name: str) -> None:
    for kind, value in (("namespace", namespace), ("repository name", name)):
        if not is_name(value):
            raise _invalid(f"{value!r} is not a valid {kind}")


def split_repository(repository: str) -> tuple[str, str]:
    """``"namespace/name"`` as ``(namespace, name)``; REFERENCE_INVALID unless both parts follow
    the registry's naming rules."""
    namespace, _, name = repository.partition("/")
    _check_repository(namespace, name)
    return namespace, name


def _ref_parts(registry: str, namespace: str, name: str, ref: str) -> tuple[str, ...]:
    """The folder names of a ref file below ``refs/``, each checked against the registry's rules."""
    _check_repository(namespace, name)
    if not is_tag(ref):
        raise _invalid(f"{ref!r} is not a valid tag or version")
    return (registry_slug(registry), namespace, name, ref)


def _oci_ref_parts(host: str, repository: str, ref: str) -> tuple[str, ...]:
    """The folder names of an OCI ref file below ``oci-refs/``, each checked."""
    slug = re.sub(r"[^a-z0-9.-]", "_", host.lower())
    if not _SLUG.fullmatch(slug):
        raise _invalid(f"{host!r} is not a registry host")
    if not is_oci_repository(repository):
        raise _invalid(f"{repository!r} is not an OCI repository name")
    if is_digest(ref):
        kind, file_name = _OCI_MANIFESTS, _hex(ref)
    elif is_tag(ref):
        kind, file_name = _OCI_TAGS, ref
    else:
        raise _invalid(f"{ref!r} is not a valid tag or digest")
    return (slug, *repository.split("/"), kind, file_name)


def _intact(path: Path, *, touch: bool = False) -> bool | None:
    """Whether the blob ``path`` is a regular file (not a link) whose SHA-256 is its name: None
    when there is no file. With ``touch``, an intact blob's modification time is set to now."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as error:
        if error.errno == errno.ELOOP:  # a link
            return False
        raise
    with os.fdopen(descriptor, "rb") as handle:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            return False
        if file_digest(handle) != f"sha256:{path.name}":
            return False
        if touch:
            os.utime(descriptor)
    return True


def _children(folder: Path | None) -> Iterator[os.DirEntry[str]]:
    """The entries of ``folder``, or nothing when it is None or absent."""
    if folder is None:
        return
    try:
        with os.scandir(folder) as entries:
            yield from entries
    except FileNotFoundError:
        return


@dataclass(frozen=True)
class CacheEntry:
    """One cached blob."""

    digest: str
    """``sha256:<hex>``, the blob's name (not re-checked when listing; see :meth:`Cache.verify`)."""
    size: int
    """Its size in bytes."""
    path: Path
    """Where it lies."""
    last_used: datetime
    """When it was stored or last handed out by :meth:`Cache.get` (UTC)."""
    refs: tuple[str, ...]
    """The refs that point at it, as ``<registry>/<namespace>/<name>:<ref>``."""


@dataclass(frozen=True)
class PruneReport:
    """What :meth:`Cache.prune` removed."""

    blobs: tuple[str, ...] = ()
    """Digests of the removed blobs."""
    refs: tuple[str, ...] = ()
    """The removed refs (``<registry>/<namespace>/<name>:<ref>``), all of whose blobs are gone."""
    temporary_files: int = 0
    """How many stale temporary files (older than an hour) were removed."""
    freed_bytes: int = 0
    """The size of the removed blobs."""


@dataclass(frozen=True)
class _Ref:
    path: Path
    label: str
    digest: str


class Cache:
    """The blob and ref store rooted at ``root`` (default :func:`pfx.config.cache_dir`).

    ``corrupted`` lists the digests of the corrupt blobs this object found and removed (see the
    module docstring), so a command can say why it fetches a cached concept again.
    """

    def __init__(self, root: Path | None = None) -> None:
        self.root = cache_dir() if root is None else root
        self.corrupted: list[str] = []

    # -- folders ---------------------------------------------------------------------------------

    def _folder(self, parts: tuple[str, ...], *, create: bool) -> Path | None:
        """The folder ``root/parts…``, created (0700) when ``create``, else None when absent.
        Raises CACHE_CORRUPT when any part is a link or not a folder."""
        folder = make_private_dirs(self.root) if create else self.root
        for part in parts:
            folder = folder / part
            try:
                mode = folder.lstat().st_mode
            except FileNotFoundError:
                if not create:
                    return None
                folder.mkdir(mode=0o700, exist_ok=True)
                mode = folder.lstat().st_mode
            if not stat.S_ISDIR(mode):
                raise ClientError(
                    ErrorCode.CACHE_CORRUPT,
                    f"{folder} is not a folder (pfx follows no links in its cache)",
                )
        return folder

    def _blob_path(self, digest: str, *, create: bool = False) -> Path | None:
        """Where the blob ``digest`` lies (None when the blob folder is absent and not created)."""
        hex_digest = _hex(digest)
        folder = self._folder(_BLOBS, create=create)
        return None if folder is None else folder / hex_digest

    def _discard(self, path: Path, digest: str) -> None:
        path.unlink(missing_ok=True)
        self.corrupted.append(digest)

    # -- blobs -----------------------------------------------------------------------------------

    def get(self, digest: str) -> Path | None:
        """The path of the blob ``digest`` once it re-hashes to ``digest``, else None.

        A corrupt blob is removed and its digest appended to :attr:`corrupted` before None is
        returned. A hit sets the blob's modification time to now (its "last used" time).
        """
        path = self._blob_path(digest)
        if path is None:
            return None
        intact = _intact(path, touch=True)
        if intact is False:
            self._discard(path, digest)
        return path if intact else None

    def store(self, digest: str, data: bytes) -> Path:
        """Store ``data`` as the blob ``digest`` and return its path.

        Raises DIGEST_MISMATCH, writing nothing, unless SHA-256(data) is ``digest``. An intact
        copy already cached is kept (and its last-used time refreshed).
        """
        path = self._blob_path(digest, create=True)
        assert path is not None  # created
        actual = content_digest(data)
        if actual != digest:
            raise ClientError(
                ErrorCode.DIGEST_MISMATCH, f"expected {digest}, the bytes are {actual}"
            )
        cached = self.get(digest)
        if cached is not None:
            return cached
        write_private_file(path, data)
        return path

    def _blobs(self) -> Iterator[tuple[str, Path, os.stat_result]]:
        """Each blob file's digest, path and status (of a link, not its target); temporary and
        stray files are skipped."""
        for entry in _children(self._folder(_BLOBS, create=False)):
            digest = f"sha256:{entry.name}"
            if is_digest(digest) and not entry.is_dir(follow_symlinks=False):
                yield digest, Path(entry.path), entry.stat(follow_symlinks=False)

    def size(self) -> int:
        """The total size of the cached blobs in bytes."""
        return sum(info.st_size for _, _, info in self._blobs())

    def verify(self) -> list[tuple[str, bool]]:
        """Re-hash every blob: ``(digest, intact)`` pairs, sorted by digest. Removes nothing."""
        return sorted((digest, bool(_intact(path))) for digest, path, _ in self._blobs())

    # -- refs ------------------------------------------------------------------------------------

    def set_ref(self, registry: str, namespace: str, name: str, ref: str, digest: str) -> None:
        """Record that ``namespace/name:ref`` on ``registry`` resolves to ``digest``."""
        parts = _ref_parts(registry, namespace, name, ref)
        _hex(digest)
        folder = self._folder((_REFS, *parts[:-1]), create=True)
        assert folder is not None  # created
        write_private_file(folder / parts[-1], f"{digest}\n".encode("ascii"))

    def ref(self, registry: str, namespace: str, name: str, ref: str) -> str | None:
        """The digest ``namespace/name:ref`` on ``registry`` last resolved to, or None."""
        *parents, file_name = _ref_parts(registry, namespace, name, ref)
        folder = self._folder((_REFS, *parents), create=False)
        return None if folder is None else _read_ref(folder / file_name)

    def set_oci_ref(self, host: str, repository: str, ref: str, digest: str) -> None:
        """Record that the tag or manifest digest ``ref`` of the OCI repository ``repository`` on
        ``host`` (``HOST[:PORT]``) holds the concept file ``digest``."""
        *parents, file_name = _oci_ref_parts(host, repository, ref)
        _hex(digest)
        folder = self._folder((_OCI_REFS, *parents), create=True)
        assert folder is not None  # created
        write_private_file(folder / file_name, f"{digest}\n".encode("ascii"))

    def oci_ref(self, host: str, repository: str, ref: str) -> str | None:
        """The concept file digest the OCI tag or manifest digest ``ref`` last held, or None."""
        *parents, file_name = _oci_ref_parts(host, repository, ref)
        folder = self._folder((_OCI_REFS, *parents), create=False)
        return None if folder is None else _read_ref(folder / file_name)

    def _all_refs(self) -> Iterator[_Ref]:
        """Every valid ref file, the registry's and the OCI ones."""
        yield from self._refs()
        yield from self._oci_refs()

    def _oci_refs(self) -> Iterator[_Ref]:
        """Every valid OCI ref file, labelled ``oci/<host>/<repo>:<tag>`` or ``…@sha256:<hex>``;
        unreadable ones are removed on the way."""
        root = self._folder((_OCI_REFS,), create=False)
        if root is None:
            return
        for folder, _, files in os.walk(root):  # os.walk does not descend into links
            where = Path(folder)
            if where.name not in (_OCI_TAGS, _OCI_MANIFESTS):
                continue
            label = "oci/" + where.parent.relative_to(root).as_posix()
            for name in sorted(files):
                if where.name == _OCI_TAGS and is_tag(name):
                    shown = f"{label}:{name}"
                elif where.name == _OCI_MANIFESTS and is_digest(f"sha256:{name}"):
                    shown = f"{label}@sha256:{name}"
                else:
                    continue
                digest = _read_ref(where / name)
                if digest is not None:
                    yield _Ref(where / name, shown, digest)

    def _refs(self) -> Iterator[_Ref]:
        """Every valid ref file; unreadable ones are removed on the way (as :meth:`ref` does)."""
        level: list[tuple[Path | None, str]] = [(self._folder((_REFS,), create=False), "")]
        for _ in range(3):  # registry, namespace, name
            level = [
                (Path(entry.path), f"{prefix}{entry.name}/")
                for folder, prefix in level
                for entry in _children(folder)
                if entry.is_dir(follow_symlinks=False)
            ]
        for folder, prefix in level:
            for entry in _children(folder):
                if is_tag(entry.name) and not entry.is_dir(follow_symlinks=False):
                    digest = _read_ref(Path(entry.path))
                    if digest is not None:
                        yield _Ref(Path(entry.path), prefix.rstrip("/") + ":" + entry.name, digest)

    # -- listing and pruning ---------------------------------------------------------------------

    def entries(self) -> list[CacheEntry]:
        """Every cached blob with the refs that point at it, most recently used first."""
        refs: dict[str, list[str]] = {}
        for ref in self._all_refs():
            refs.setdefault(ref.digest, []).append(ref.label)
        entries = [
            CacheEntry(
                digest=digest,
                size=info.st_size,
                path=path,
                last_used=datetime.fromtimestamp(info.st_mtime, UTC),
                refs=tuple(sorted(refs.get(digest, ()))),
            )
            for digest, path, info in self._blobs()
        ]
        return sorted(entries, key=lambda entry: (-entry.last_used.timestamp(), entry.digest))

    def prune(self, older_than: timedelta | None = None) -> PruneReport:
        """Remove corrupt blobs and, with ``older_than``, blobs not used for that long (referenced
        or not); with None, blobs that no ref points at. Then remove the refs whose blob is gone
        and temporary files older than an hour."""
        now = time.time()
        cutoff = None if older_than is None else now - older_than.total_seconds()
        refs = list(self._all_refs())
        referenced = {ref.digest for ref in refs}
        removed: list[str] = []
        freed = 0
        for digest, path, info in self._blobs():
            intact = _intact(path)
            if intact is None:  # removed meanwhile by another process
                continue
            if not intact:
                self._discard(path, digest)
            elif digest not in referenced if cutoff is None else info.st_mtime < cutoff:
                path.unlink(missing_ok=True)
            else:
                continue
            removed.append(digest)
            freed += info.st_size
        kept = {digest for digest, _, _ in self._blobs()}
        dangling = [ref for ref in refs if ref.digest not in kept]
        for ref in dangling:
            ref.path.unlink(missing_ok=True)
        return PruneReport(
            blobs=tuple(sorted(removed)),
            refs=tuple(sorted(ref.label for ref in dangling)),
            temporary_files=self._remove_stale_temporary_files(now),
            freed_bytes=freed,
        )

    def _remove_stale_temporary_files(self, now: float) -> int:
        cutoff = now - _STALE_TEMPORARY.total_seconds()
        removed = 0
        for folder, _, files in os.walk(self.root):  # os.walk does not descend into links
            for name in files:
                path = Path(folder) / name
                try:
                    stale = is_temporary(name) and path.lstat().st_mtime < cutoff
                except FileNotFoundError:  # renamed into place meanwhile
                    continue
                if stale:
                    path.unlink(missing_ok=True)
                    removed += 1
        return removed


def _read_ref(path: Path) -> str | None:
    """The digest in the ref file at ``path``; None when absent, and a file that does not hold
    one (or is a link) is removed and read as absent."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as error:
        if error.errno != errno.ELOOP:
            raise
        text = ""
    else:
        with os.fdopen(descriptor, "rb") as handle:
            text = handle.read(_MAX_REF_FILE).decode("ascii", "replace").strip()
    if is_digest(text):
        return text
    path.unlink(missing_ok=True)
    return None
