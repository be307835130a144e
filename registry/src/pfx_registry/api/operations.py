"""Operations endpoints, outside /v1 and without authentication: liveness, readiness (within
2 s whatever the backends do) and Prometheus metrics."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from typing import Any

from fastapi import APIRouter, Request, Response
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from pfx_registry.errors import BackendUnavailable
from pfx_registry.state import Registry

from .responses import errors

__all__ = ["READY_DEADLINE", "Readiness", "check_ready", "router"]

router = APIRouter(tags=["operations"], responses=errors(413, 429))

#: Seconds /readyz waits for its checks before it answers 503 (the spec promises an answer within
#: 2 s, whatever the backends do).
READY_DEADLINE = 1.5


def check_ready(registry: Registry) -> dict[str, Any]:
    """Raise BackendUnavailable unless the index and the blob store answer."""
    try:
        with registry.engine.connect() as connection:
            connection.execute(text("select 1"))
    except OperationalError as error:
        raise BackendUnavailable(
            f"the index is unavailable ({type(error.orig).__name__})"
        ) from error
    registry.blobs.check()
    return {"status": "ready"}


class Readiness:
    """Runs :func:`check_ready` on a thread of its own, one check at a time: a probe waits at most
    READY_DEADLINE seconds for the check in flight, started by it or by an earlier probe. A check
    that outlives its probes' deadlines (an index that does not answer) is left to end by the
    index's own timeouts and is reused meanwhile, so a hung backend holds one thread, not one per
    probe."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._lock = threading.Lock()
        self._current: Future[dict[str, Any]] | None = None

    async def check(self) -> dict[str, Any]:
        """The result of the check in flight or of a new one; BackendUnavailable past the
        deadline."""
        with self._lock:
            if self._current is None or self._current.done():
                self._current = Future()
                threading.Thread(
                    target=self._run, args=(self._current,), name="pfx-readyz", daemon=True
                ).start()
            current = self._current
        waiter = asyncio.wrap_future(current)
        try:
            done, _pending = await asyncio.wait({waiter}, timeout=READY_DEADLINE)
        finally:
            waiter.cancel()  # ends this probe's wait; a check already running is not cancelled
        if not done:
            raise BackendUnavailable(
                f"the index or the blob store did not answer within {READY_DEADLINE} s"
            )
        return waiter.result()

    def _run(self, future: Future[dict[str, Any]]) -> None:
        if not future.set_running_or_notify_cancel():
            return  # its only probe left before it started
        try:
            future.set_result(check_ready(self._registry))
        except BaseException as error:  # handed to the waiting probes
            future.set_exception(error)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
def prometheus(request: Request) -> Response:
    """Request counters and latency histograms (Prometheus text format)."""
    body, media_type = request.app.state.metrics.render()
    return Response(body, media_type=media_type)


@router.get("/healthz")
async def health() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", responses=errors(503))
async def ready(request: Request) -> dict[str, Any]:
    """Readiness: the index and the blob store both answer within READY_DEADLINE seconds
    (503 otherwise)."""
    readiness: Readiness = request.app.state.readiness
    return await readiness.check()
