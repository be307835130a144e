"""Download counting off the request path.

A download adds one to its repository's counter in memory (:meth:`DownloadCounter.add`, no SQL);
the counts are written to the index in one transaction by :meth:`DownloadCounter.flush` — every
second by the app's background task, before any answer that reports downloads (repository,
listing, search), and at shutdown. Counts survive a failed flush (they are put back and written by
the next one); a process that is killed loses at most its last second of counts. Each replica
counts its own downloads and adds them to the shared counter, so no count is lost between them.
"""

from __future__ import annotations

import threading
from collections import Counter

from sqlalchemy import Engine, update

from .db import repositories

__all__ = ["DownloadCounter"]


class DownloadCounter:
    """Downloads counted in memory and not yet written to the index, per repository id."""

    def __init__(self) -> None:
        self._pending: Counter[int] = Counter()
        self._lock = threading.Lock()

    def add(self, repository_id: int) -> None:
        """Count one download of the repository."""
        with self._lock:
            self._pending[repository_id] += 1

    def flush(self, engine: Engine) -> int:
        """Write the pending counts to the index; the number of downloads written. On a failure
        the counts are kept for the next flush and the error is raised."""
        with self._lock:
            pending, self._pending = self._pending, Counter()
        if not pending:
            return 0
        try:
            with engine.begin() as connection:
                for repository_id, count in sorted(pending.items()):
                    connection.execute(
                        update(repositories)
                        .where(repositories.c.id == repository_id)
                        .values(downloads=repositories.c.downloads + count)
                    )
        except BaseException:
            with self._lock:
                self._pending.update(pending)
            raise
        return sum(pending.values())
