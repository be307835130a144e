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
import time
from collections import OrderedDict, defaultdict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Metrics", "RateLimit", "RequestAccounting"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

access_log = logging.getLogger("pfx_registry.access")

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, math.inf)


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


@dataclass
class Metrics:
    """Counters and latency histograms by (method, route, status), in Prometheus text format."""

    requests: defaultdict[tuple[str, str, str], int] = field(
        default_factory=lambda: defaultdict(int)
    )
    durations: defaultdict[str, list[float]] = field(
        default_factory=lambda: defaultdict(lambda: [0.0] * (len(_BUCKETS) + 1))
    )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one request and its duration."""
        self.requests[(method, route, str(status))] += 1
        histogram = self.durations[route]
        for index, bound in enumerate(_BUCKETS):
            if seconds <= bound:
                histogram[index] += 1
        histogram[-1] += seconds

    def render(self) -> str:
        """The exposition text served at /metrics."""
        lines = [
            "# HELP pfx_requests_total Requests answered, by method, route and status.",
            "# TYPE pfx_requests_total counter",
        ]
        for (method, route, status), count in sorted(self.requests.items()):
            labels = f'method="{method}",route="{_escape(route)}",status="{status}"'
            lines.append(f"pfx_requests_total{{{labels}}} {count}")
        lines += [
            "# HELP pfx_request_duration_seconds Time to answer a request, by route.",
            "# TYPE pfx_request_duration_seconds histogram",
        ]
        for route, histogram in sorted(self.durations.items()):
            metric = "pfx_request_duration_seconds"
            label = f'route="{_escape(route)}"'
            for bound, count in zip(_BUCKETS, histogram, strict=False):
                le = "+Inf" if math.isinf(bound) else repr(bound)
                lines.append(f'{metric}_bucket{{{label},le="{le}"}} {count:g}')
            lines.append(f"{metric}_sum{{{label}}} {histogram[-1]:.6f}")
            lines.append(f"{metric}_count{{{label}}} {histogram[len(_BUCKETS) - 1]:g}")
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


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
        client = (scope.get("client") or ("-", 0))[0]
        authorization = _header(scope, b"authorization")
        now = time.monotonic()
        # Every request spends from its address's bucket (so made-up tokens cannot escape the
        # address limit); a request with a token also spends from the token's own bucket.
        wait = self.address_limit.retry_after("a:" + client, now)
        if authorization and wait == 0:
            key = "t:" + hashlib.sha256(authorization).hexdigest()[:32]
            wait = self.token_limit.retry_after(key, now)
        status = 500
        limit = self.body_limit(scope["path"])
        declared = _header(scope, b"content-length")
        if wait > 0:
            status = 429
            await _refuse(
                send,
                429,
                "RATE_LIMITED",
                f"too many requests; retry in {_seconds(wait)} s",
                [(b"retry-after", str(_seconds(wait)).encode())],
            )
        elif declared is not None and declared.isdigit() and int(declared) > limit:
            status = 413
            await _refuse(send, 413, "TOO_LARGE", f"the body exceeds {limit} bytes")
        else:
            started_response = refused = False
            received = 0

            async def send_and_record(message: Message) -> None:
                nonlocal status, started_response
                if refused:
                    return  # the 413 has been sent; whatever the app answers is dropped
                if message["type"] == "http.response.start":
                    status, started_response = message["status"], True
                await send(message)

            async def receive_bounded() -> Message:
                nonlocal received, refused, status
                message = await receive()
                received += len(message.get("body", b""))
                if received > limit and not started_response and not refused:
                    refused, status = True, 413
                    await _refuse(send, 413, "TOO_LARGE", f"the body exceeds {limit} bytes")
                    return {"type": "http.disconnect"}
                return message

            await self.app(scope, receive_bounded, send_and_record)
        route = getattr(scope.get("route"), "path", "unmatched")
        seconds = time.perf_counter() - started
        self.metrics.observe(scope["method"], route, status, seconds)
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(
                json.dumps(
                    {
                        "method": scope["method"],
                        "path": scope["path"],
                        "route": route,
                        "status": status,
                        "ms": round(seconds * 1000, 2),
                        "client": client,
                    }
                )
            )


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
