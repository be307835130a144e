"""Request accounting around the whole app: rate limits (429 + Retry-After), Prometheus metrics
and one structured (JSON) access-log line per request.

Implemented as a plain ASGI middleware (no per-request task or body buffering). Limits and
counters live in the process: with several replicas each enforces its own share, which bounds a
client at replicas × the configured rate.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

__all__ = [
    "CALLER_NAME",
    "MULTIPROCESS_VARIABLE",
    "ROUTE_PREFIX",
    "Metrics",
    "RateLimit",
    "RequestAccounting",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

access_log = logging.getLogger("pfx_registry.access")
#: Where the app leaves the caller's user name for the access log (``scope["state"]``).
CALLER_NAME = "pfx_caller"
#: Scope key a mount sets to its path prefix, so that its routes are labelled in full.
ROUTE_PREFIX = "pfx.route_prefix"

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, math.inf)
#: The variable that puts prometheus_client in multiprocess mode (set by ``serve --workers N``).
MULTIPROCESS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
#: A request id a client may choose (else the server makes one): at most 128 safe characters.
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


@dataclass
class RateLimit:
    """Token buckets: ``rate`` requests per second with bursts of ``burst``, per key (a token's
    hash, or the client address for anonymous requests). ``rate`` 0 disables the limit."""

    rate: float
    burst: float
    max_keys: int = 100_000
    _buckets: OrderedDict[str, tuple[float, float]] = field(default_factory=OrderedDict)

    def retry_after(self, key: str, now: float) -> float:
        """0 when a request may pass now (and count it), else the seconds until one may."""
        if self.rate <= 0:
            return 0.0
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait


class Metrics:
    """Request counters and latency histograms by (method, route, status), kept by
    ``prometheus_client``.

    With several worker processes (``serve --workers N``), ``PROMETHEUS_MULTIPROC_DIR`` names a
    folder that ``serve`` creates before it starts them: every process writes its samples there,
    and a scrape of any process adds up those of all (prometheus_client's multiprocess mode), so
    one consistent set of counters is exposed whichever process answers.
    """

    def __init__(self) -> None:
        self._registry = CollectorRegistry()
        self._requests = Counter(
            "pfx_requests",
            "Requests answered, by method, route and status.",
            ["method", "route", "status"],
            registry=self._registry,
        )
        self._durations = Histogram(
            "pfx_request_duration_seconds",
            "Time to answer a request, by route.",
            ["route"],
            buckets=_BUCKETS,
            registry=self._registry,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one request and its duration."""
        self._requests.labels(method, route, str(status)).inc()
        self._durations.labels(route).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The exposition served at /metrics, and its content type."""
        if os.environ.get(MULTIPROCESS_VARIABLE):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self._registry), CONTENT_TYPE_LATEST


class RequestAccounting:
    """ASGI middleware: refuse over-limit requests with 429, then time, count and log the rest."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        token_limit: RateLimit,
        address_limit: RateLimit,
        body_limit: Callable[[str], int],
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.token_limit = token_limit
        self.address_limit = address_limit
        self.body_limit = body_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _request_id(scope)
        client = (scope.get("client") or ("-", 0))[0]
        authorization = _header(scope, b"authorization")
        now = time.monotonic()
        # Every request spends from its address's bucket (so made-up tokens cannot escape the
        # address limit); a request with a token also spends from the token's own bucket.
        wait = self.address_limit.retry_after("a:" + client, now)
        if authorization and wait == 0:
            key = "t:" + hashlib.sha256(authorization).hexdigest()[:32]
            wait = self.token_limit.retry_after(key, now)
        status, sent = 500, 0
        limit = self.body_limit(scope["path"])
        declared = _header(scope, b"content-length")
        started_response = refused = False

        async def send_and_record(message: Message) -> None:
            nonlocal status, started_response, sent
            if message["type"] == "http.response.start":
                status, started_response = message["status"], True
                headers = [*message.get("headers", ()), (b"x-request-id", request_id)]
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        async def send_from_app(message: Message) -> None:
            if not refused:  # once the 413 is sent, whatever the app answers is dropped
                await send_and_record(message)

        if wait > 0:
            await _refuse(
                send_and_record,
                429,
                "RATE_LIMITED",
                f"too many requests; retry in {_seconds(wait)} s",
                [(b"retry-after", str(_seconds(wait)).encode())],
            )
        elif declared is not None and declared.isdigit() and int(declared) > limit:
            await _refuse(send_and_record, 413, "TOO_LARGE", f"the body exceeds {limit} bytes")
        else:
            received = 0

            async def receive_bounded() -> Message:
                nonlocal received, refused
                message = await receive()
                received += len(message.get("body", b""))
                if received > limit and not started_response and not refused:
                    refused = True
                    await _refuse(
                        send_and_record, 413, "TOO_LARGE", f"the body exceeds {limit} bytes"
                    )
                    return {"type": "http.disconnect"}
                return message

            await self.app(scope, receive_bounded, send_from_app)
        route = getattr(scope.get("route"), "path", None)
        # a mounted route's path is relative to its mount (/v2/): label it in full
        route = scope.get(ROUTE_PREFIX, "") + route if route else "unmatched"
        seconds = time.perf_counter() - started
        self.metrics.observe(scope["method"], route, status, seconds)
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(
                json.dumps(
                    {
                        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                        "request_id": request_id.decode(),
                        "method": scope["method"],
                        "path": scope["path"],
                        "route": route,
                        "status": status,
                        "bytes": sent,
                        "ms": round(seconds * 1000, 2),
                        "client": client,
                        # the user the token belongs to (set by the app), never the token
                        "caller": scope.get("state", {}).get(CALLER_NAME),
                    }
                )
            )


def _request_id(scope: Scope) -> bytes:
    """The client's ``X-Request-ID`` when it is a safe short value, else a new one."""
    given = _header(scope, b"x-request-id")
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex.encode()


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value
    return None


def _seconds(wait: float) -> int:
    return max(1, math.ceil(wait))


async def _refuse(
    send: Send,
    status: int,
    code: str,
    message: str,
    headers: list[tuple[bytes, bytes]] = (),  # type: ignore[assignment]
) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
