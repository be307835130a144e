"""In-process caches on the hot read paths: resolutions and callers for a short time, blob bytes
for as long as memory allows.

**Read cache** (:class:`ReadCache`). Resolving a reference or a token costs several SQL statements
and a worker-thread hop; the answer changes only when something is written. Answers are kept for
``ttl`` seconds (``PFX_READ_CACHE_SECONDS``, default 1; 0 turns caching off) and dropped as soon
as this process commits a write to the index (:func:`watch_writes` counts commits that wrote, and
an answer loaded while a write committed is not kept). Writes made by *another* process (another
replica, ``pfx-registry`` admin commands) are seen within ``ttl`` seconds — the same bound a CDN's
``max-age`` gives.

**Blob cache** (:class:`BlobCache`). Blobs are addressed by their digest and never change, so their
bytes can be kept without any invalidation: a least-recently-used set of at most
``PFX_BLOB_CACHE_BYTES`` (default 64 MiB). Whether a caller may *see* a blob is never cached here;
that is a read-cache answer like any other.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from sqlalchemy import Engine, event
from starlette.concurrency import run_in_threadpool

from .errors import ApiError

__all__ = ["BlobCache", "ReadCache", "watch_writes"]

T = TypeVar("T")

#: Statements that only read (the first word, upper case); anything else counts as a write.
_READS = frozenset({"SELECT", "PRAGMA", "BEGIN", "SAVEPOINT", "RELEASE", "SHOW", "SET"})


class ReadCache:
    """Answers (and 404s) kept for ``ttl`` seconds, dropped when this process writes."""

    def __init__(self, ttl: float, max_entries: int = 50_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.generation = 0
        self._entries: OrderedDict[Hashable, tuple[float, Any, ApiError | None]] = OrderedDict()
        self._lock = threading.Lock()

    def invalidate(self) -> None:
        """Forget every answer (called after each commit that wrote to the index)."""
        with self._lock:
            self.generation += 1
            self._entries.clear()

    async def get(self, key: Hashable, load: Callable[[], T]) -> T:
        """The answer for ``key``: from the cache when fresh, else ``load()`` run on a worker
        thread and kept. A 404 raised by ``load`` is kept and raised again like an answer."""
        now = time.monotonic()
        entry = self._entries.get(key)
        if entry is not None and entry[0] > now:
            if entry[2] is not None:
                raise entry[2]
            return entry[1]  # type: ignore[no-any-return]
        generation = self.generation
        try:
            value = await run_in_threadpool(load)
        except ApiError as error:
            if error.status == 404:
                self._keep(key, generation, None, error)
            raise
        self._keep(key, generation, value, None)
        return value

    def _keep(self, key: Hashable, generation: int, value: Any, error: ApiError | None) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            if generation != self.generation:
                return  # a write committed while this answer was loaded: it may be stale
            self._entries[key] = (time.monotonic() + self.ttl, value, error)
            self._entries.move_to_end(key)
            if len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)


def watch_writes(engine: Engine, cache: ReadCache) -> None:
    """Invalidate ``cache`` whenever a transaction on ``engine`` that wrote commits."""

    @event.listens_for(engine, "before_cursor_execute")
    def _note_write(connection: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        words = statement.lstrip().split(None, 1)
        if words and words[0].upper() not in _READS:
            connection.info["pfx_wrote"] = True

    @event.listens_for(engine, "commit")
    def _committed(connection: Any) -> None:
        if connection.info.pop("pfx_wrote", False):
            cache.invalidate()

    @event.listens_for(engine, "rollback")
    def _rolled_back(connection: Any) -> None:
        connection.info.pop("pfx_wrote", None)


class BlobCache:
    """The bytes of recently sent blobs, least recently used first out, at most ``capacity``
    bytes in all (0 keeps nothing)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.size = 0
        self._blobs: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, digest: str) -> bytes | None:
        """The cached bytes of ``digest``, or None."""
        with self._lock:
            data = self._blobs.get(digest)
            if data is not None:
                self._blobs.move_to_end(digest)
            return data

    def put(self, digest: str, data: bytes) -> None:
        """Keep ``data`` (the bytes whose sha256 is ``digest``), evicting the least recent."""
        if len(data) > self.capacity:
            return
        with self._lock:
            if digest in self._blobs:
                return
            self._blobs[digest] = data
            self.size += len(data)
            while self.size > self.capacity:
                _, evicted = self._blobs.popitem(last=False)
                self.size -= len(evicted)

    def discard(self, digest: str) -> None:
        """Forget ``digest`` (its bytes were deleted from the store)."""
        with self._lock:
            data = self._blobs.pop(digest, None)
            if data is not None:
                self.size -= len(data)
