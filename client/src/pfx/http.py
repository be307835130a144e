"""The client's HTTP layer: one request to the registry, retried, read whole, and its answer
turned into a result (:mod:`pfx.results`) or an error (:mod:`pfx.errors`).

- **Retries.** Requests that are safe to repeat (``GET``, ``HEAD``, ``PUT``, ``DELETE``) are
  retried with exponential backoff and jitter on ``429``, ``502``, ``503``, ``504`` and transport
  errors (but a failed TLS handshake), honouring ``Retry-After`` (never waiting more than
  :data:`MAX_RETRY_WAIT`); a ``POST`` is retried only when the registry provably did nothing
  (the connection was never made, or ``429``, which the registry answers before anything else).
- **Bounded answers.** An answer is read whole, and refused (``REGISTRY_PROTOCOL``) past
  :data:`MAX_ANSWER_BYTES`.
- **Errors.** The registry's error answers raise :class:`~pfx.errors.RegistryError` (its
  ``code``, ``status`` and message); a registry that cannot be reached raises
  ``REGISTRY_UNREACHABLE``; an answer that is not what the API specifies raises
  ``REGISTRY_PROTOCOL`` instead of a ``KeyError``.
- **Parsing.** :func:`parse_result` checks decoded JSON against a result dataclass's field types.
"""

from __future__ import annotations

import json
import math
import random
import re
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, is_dataclass
from datetime import UTC, datetime
from functools import cache
from types import NoneType, UnionType
from typing import Any, Self, TypeVar, get_args, get_origin, get_type_hints
from urllib.parse import quote

import httpx

from pfx import __version__
from pfx.errors import ClientError, ErrorCode, RegistryError

__all__ = [
    "MAX_ANSWER_BYTES",
    "MAX_REDIRECTS",
    "MAX_RETRY_WAIT",
    "REDIRECT_STATUSES",
    "Answer",
    "BaseClient",
    "Chunks",
    "Progress",
    "api_path",
    "compact",
    "is_tls_failure",
    "parse_result",
    "result_member",
]

Progress = Callable[[int, int], None]
"""``progress(done, total)``: bytes sent or received so far, of ``total`` (0 when unknown)."""

#: The longest a retry waits, whatever ``Retry-After`` says.
MAX_RETRY_WAIT = 30.0
#: The most redirects a download follows.
MAX_REDIRECTS = 5
#: The statuses of redirects.
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_RETRY_STATUSES = frozenset({429, 502, 503, 504})
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE"})
#: Transport errors raised before any byte of the request left: safe to retry for every method.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_CHUNK = 64 * 1024
_MAX_DETAIL = 500
#: The most bytes read from one answer: a concept file is at most 4 MiB and the largest JSON
#: answer (a 100-result search page) well under this; a server sending more is refused.
MAX_ANSWER_BYTES = 16 * 1024 * 1024
#: The codes of body-less error answers to ``HEAD /v1/blobs/{digest}`` (spec §4.1, §6).
_HEAD_CODES = {
    400: "DIGEST_INVALID",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    413: "TOO_LARGE",
    429: "RATE_LIMITED",
    503: "UNAVAILABLE",
}


# -- parsing answers -----------------------------------------------------------------------------

_Result = TypeVar("_Result")


#: The request ids a registry answers with (``X-Request-ID``, spec/registry-api.md §8).
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def _protocol_error(message: str) -> ClientError:
    return ClientError(ErrorCode.REGISTRY_PROTOCOL, message)


@cache
def _hints(kind: type) -> dict[str, Any]:
    return get_type_hints(kind)


def parse_result(kind: type[_Result], value: object, where: str, **known: Any) -> _Result:
    """``value`` (decoded JSON) as the dataclass ``kind``; fields in ``known`` are not read.
    Unknown members are ignored; a missing or mistyped one raises REGISTRY_PROTOCOL."""
    if not isinstance(value, dict):
        raise _protocol_error(f"the registry's answer is malformed: {where} is not an object")
    arguments = dict(known)
    for item in fields(kind):  # type: ignore[arg-type]
        if item.name not in known:
            hint = _hints(kind)[item.name]
            arguments[item.name] = _convert(hint, value.get(item.name), f"{where}.{item.name}")
    return kind(**arguments)


def _convert(hint: Any, value: object, where: str) -> Any:
    """``value`` checked against (and converted to) the type ``hint`` of a result field."""
    origin = get_origin(hint)
    if origin is UnionType:  # ``X | None``
        if value is None:
            return None
        (inner,) = (argument for argument in get_args(hint) if argument is not NoneType)
        return _convert(inner, value, where)
    if origin is list and isinstance(value, list):
        (item,) = get_args(hint)
        return [_convert(item, element, f"{where}[{i}]") for i, element in enumerate(value)]
    if origin is dict and isinstance(value, dict):
        _, item = get_args(hint)
        return {key: _convert(item, element, f"{where}.{key}") for key, element in value.items()}
    if is_dataclass(hint):
        return parse_result(hint, value, where)  # type: ignore[arg-type]
    if hint is datetime and isinstance(value, str):
        return _timestamp(value, where)
    if origin is None and isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    shown = "missing" if value is None else f"a JSON {type(value).__name__}"
    raise _protocol_error(f"the registry's answer is malformed: {where} is {shown}")


def _timestamp(value: str, where: str) -> datetime:
    """An ISO 8601 timestamp; one without an offset is UTC (spec §9)."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _protocol_error(f"the registry's answer is malformed: {where} is no time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def result_member(body: object, name: str, hint: Any, where: str) -> Any:
    """The member ``name`` of the answer object ``body``, checked against ``hint``."""
    if not isinstance(body, dict):
        raise _protocol_error(f"the registry's answer is malformed: {where} is not an object")
    return _convert(hint, body.get(name), f"{where}.{name}")


# -- transport -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """A response read whole."""

    method: str
    status: int
    headers: httpx.Headers
    body: bytes
    url: httpx.URL

    def json(self) -> Any:
        """The body as JSON; REGISTRY_PROTOCOL when it is not."""
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            kind = self.headers.get("content-type", "no content type")
            raise _protocol_error(
                f"registry answered {self.status} to {self.method} {self.url.path} with a body "
                f"that is not JSON ({kind})"
            ) from None


class Chunks:
    """An upload body sent in chunks, reporting progress; iterable again for a retry."""

    def __init__(self, data: bytes, progress: Progress) -> None:
        self.data = data
        self.progress = progress

    def __iter__(self) -> Iterator[bytes]:
        view = memoryview(self.data)
        for start in range(0, len(view), _CHUNK):
            chunk = view[start : start + _CHUNK]
            yield bytes(chunk)
            self.progress(start + len(chunk), len(view))


def _segment(value: str) -> str:
    """One URL path segment, percent-encoded; never empty, ``.`` or ``..``."""
    if not value:
        raise ValueError("a name or reference in a registry URL cannot be empty")
    encoded = quote(value, safe=":@")
    return encoded.replace(".", "%2E") if encoded in (".", "..") else encoded


def api_path(*segments: str) -> str:
    """``/v1/<segment>/…`` with each segment encoded by :func:`_segment`."""
    return "/v1/" + "/".join(_segment(segment) for segment in segments)


def _retry_after(answer: Answer) -> float | None:
    """``Retry-After`` in seconds, when the answer carries a number there."""
    try:
        seconds = float(answer.headers.get("retry-after", ""))
    except ValueError:
        return None  # absent, or an HTTP date: use the backoff
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def is_tls_failure(error: BaseException) -> bool:
    """Whether a transport error is a failed TLS handshake (a certificate, or a server that does
    not speak TLS): trying again cannot help."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def compact(**values: Any) -> dict[str, Any]:
    """The arguments that are not ``None``: a request body or query without omitted fields."""
    return {name: value for name, value in values.items() if value is not None}


class BaseClient:
    """The HTTP side of :class:`pfx.client.Client`: one ``httpx.Client`` (connections are reused;
    use it as a context manager or call :meth:`close`), and the requests every endpoint makes.

    ``url`` is the registry's root; ``token`` is sent as ``Authorization: Bearer`` (anonymous
    without). ``timeout`` applies to connecting and to each read or write. A request is tried at
    most ``retries + 1`` times; the n-th retry waits ``Retry-After`` when the answer has one,
    else ``backoff * 2**n`` seconds with jitter, never more than :data:`MAX_RETRY_WAIT`.
    ``transport`` replaces httpx's (for tests and proxies).
    """

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        timeout: float,
        retries: int,
        backoff: float,
        transport: httpx.BaseTransport | None,
    ) -> None:
        if retries < 0 or backoff < 0:
            raise ValueError("retries and backoff cannot be negative")
        self.url = url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self._authorization = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.url,
            headers={"User-Agent": f"pfx/{__version__}"},
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def _exchange(
        self,
        method: str,
        url: str,
        *,
        authorized: bool = True,
        progress: Progress | None = None,
        **request: Any,
    ) -> Answer:
        """Send one request, retrying as the class documents; the answer read whole (reporting
        a 200's body to ``progress``). REGISTRY_UNREACHABLE when no answer came."""
        headers = {**request.pop("headers", {}), **(self._authorization if authorized else {})}
        attempt = 0
        while True:
            sent = self._http.build_request(method, url, headers=headers, **request)
            try:
                answer = self._attempt(sent, progress)
            except httpx.TransportError as error:
                repeatable = method in _IDEMPOTENT or isinstance(error, _NOT_SENT)
                if repeatable and attempt < self.retries and not is_tls_failure(error):
                    self._wait(attempt, None)
                    attempt += 1
                    continue
                reason = str(error) or type(error).__name__
                hint = self._unreachable_hint(error)
                raise ClientError(
                    ErrorCode.REGISTRY_UNREACHABLE,
                    f"no answer from {sent.url} after {attempt + 1} attempts: {reason}{hint}",
                ) from error
            repeatable = method in _IDEMPOTENT or answer.status == 429
            if answer.status in _RETRY_STATUSES and repeatable and attempt < self.retries:
                self._wait(attempt, _retry_after(answer))
                attempt += 1
                continue
            return answer

    def _unreachable_hint(self, error: httpx.TransportError) -> str:
        """What to add to the message of a registry that could not be reached (nothing here)."""
        return ""

    def _attempt(self, request: httpx.Request, progress: Progress | None) -> Answer:
        """Send ``request`` once and read the answer whole."""
        response = self._http.send(request, stream=True)
        try:
            total = int(response.headers.get("content-length", "0") or 0)
            received = bytearray()
            for chunk in response.iter_bytes():
                received += chunk
                if len(received) > MAX_ANSWER_BYTES:
                    raise _protocol_error(
                        f"{request.method} {request.url.path}: the answer exceeds "
                        f"{MAX_ANSWER_BYTES} bytes"
                    )
                if progress is not None and response.status_code == 200:
                    progress(len(received), total)
            body = bytes(received)
        finally:
            response.close()
        return Answer(request.method, response.status_code, response.headers, body, request.url)

    def _wait(self, attempt: int, retry_after: float | None) -> None:
        if retry_after is None:
            retry_after = self.backoff * 2**attempt * random.uniform(0.5, 1.0)  # noqa: S311
        time.sleep(min(retry_after, MAX_RETRY_WAIT))

    def _call(self, method: str, path: str, **request: Any) -> Answer:
        """A request whose answer must be a success (2xx); RegistryError otherwise."""
        answer = self._exchange(method, path, **request)
        if answer.status < 300:
            return answer
        raise self._failure(answer)

    def _json(self, method: str, path: str, **request: Any) -> Any:
        """A request answered with JSON: the decoded body."""
        return self._call(method, path, **request).json()

    def _failure(self, answer: Answer) -> ClientError:
        """The error an unsuccessful answer stands for."""
        if 300 <= answer.status < 400:
            return _protocol_error(
                f"registry answered {answer.status} to {answer.method} {answer.url.path}, "
                "a redirect this endpoint does not make"
            )
        request_id = answer.headers.get("x-request-id")
        if request_id is not None and not _REQUEST_ID.fullmatch(request_id):
            request_id = None  # only a short, plain id is worth showing
        if answer.method == "HEAD" and not answer.body and answer.status in _HEAD_CODES:
            detail = "an answer to HEAD carries no message"
            return RegistryError(_HEAD_CODES[answer.status], answer.status, detail, request_id)
        error = result_member(answer.json(), "error", dict, "error answer")
        code = result_member(error, "code", str, "error answer.error")
        detail = result_member(error, "message", str, "error answer.error")
        return RegistryError(code, answer.status, detail[:_MAX_DETAIL], request_id)

    def _follow(self, answer: Answer, progress: Progress | None) -> Answer:
        """The answer at the end of the redirects ``answer`` starts (at most
        :data:`MAX_REDIRECTS`), each followed with a ``GET`` that carries no credentials: the
        target, such as a presigned storage URL, is its own credential and may be another host
        (spec §7)."""
        for _ in range(MAX_REDIRECTS):
            if answer.status not in REDIRECT_STATUSES or "location" not in answer.headers:
                break
            target = str(answer.url.join(answer.headers["location"]))
            answer = self._exchange("GET", target, authorized=False, progress=progress)
        return answer

    def _bytes(self, path: str, progress: Progress | None) -> bytes:
        """A blob's bytes from ``path``, following redirects to a presigned URL without sending
        the token there (:meth:`_follow`)."""
        answer = self._follow(self._exchange("GET", path, progress=progress), progress)
        if answer.status == 200:
            return answer.body
        raise self._failure(answer)
