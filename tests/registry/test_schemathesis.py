"""Property-based fuzzing of the registry's own OpenAPI document with Schemathesis (4.x): every
operation, requests that fit the schema and requests that do not, sent in-process (ASGI) to a
registry on a folder with SQLite and on a folder with PostgreSQL. Whatever a client sends, the
answer is never a 5xx.

Each operation gets a bounded number of examples without shrinking (to keep the run short); all
failures are collected and reported together with a curl command that reproduces each one.
"""

from __future__ import annotations

import hashlib
import traceback
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from backends import fresh_postgres_database
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.generation import GenerationMode
from test_api import concept_bytes, migrate_and_add_administrator

from pfx_registry.app import create_app
from pfx_registry.settings import Settings

#: Examples per operation and generation mode (about 30 operations × 2 modes).
EXAMPLES = 40

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]
]


class ServerErrors:
    """ASGI middleware that behaves like a real server when the app raises: the client gets a
    500 (if nothing was sent yet) and the exception is kept for the report instead of being
    raised into the test."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.raised: list[str] = []

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as error:
            frames = traceback.extract_tb(error.__traceback__)
            where = next(
                (
                    f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}"
                    for f in reversed(frames)
                    if "pfx_registry" in f.filename
                ),
                "?",
            )
            self.raised.append(f"{type(error).__name__}: {error} (at {where})")
            if not started and scope["type"] == "http":
                await send({"type": "http.response.start", "status": 500, "headers": []})
                await send({"type": "http.response.body", "body": b"Internal Server Error"})


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def registry(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ServerErrors, str]:
    """A registry on a folder and SQLite or PostgreSQL with an administrator's token and one
    published public concept (root/teddy:1), wrapped in :class:`ServerErrors`."""
    data: Path = tmp_path_factory.mktemp("schemathesis")
    settings = Settings(data_dir=data, rate_limit_token=0, rate_limit_address=0)
    if request.param == "postgres":
        database = fresh_postgres_database(request.getfixturevalue("postgres_url"))
        settings = settings.model_copy(update={"database_url": database})
    app = create_app(settings)
    engine = app.state.registry.engine
    admin = migrate_and_add_administrator(engine)
    with TestClient(app) as client:
        headers = {"Authorization": f"Bearer {admin}"}
        payload = concept_bytes(60)
        digest = "sha256:" + hashlib.sha256(payload).hexdigest()
        assert (
            client.put(f"/v1/blobs/{digest}", content=payload, headers=headers).status_code == 201
        )
        published = client.put(
            "/v1/concepts/root/teddy/versions/1",
            json={"digest": digest, "private": False},
            headers=headers,
        )
        assert published.status_code == 201, published.text
    return ServerErrors(app), admin


def test_no_request_is_answered_with_a_server_error(registry: tuple[ServerErrors, str]) -> None:
    """Fuzz every operation as the registry administrator; no answer may be a 5xx."""
    app, admin = registry
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures: dict[str, str] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(
                generation_mode=mode, headers={"authorization": f"Bearer {admin}"}
            )

            @given(case=strategy)
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,  # the same requests every run
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def fuzz(case: schemathesis.Case) -> None:
                raised = len(app.raised)
                try:
                    case.call_and_validate(checks=[not_a_server_error])
                except FailureGroup as failure:  # the check's report, with a curl to reproduce it
                    cause = app.raised[raised] if len(app.raised) > raised else "(no exception)"
                    key = f"{case.operation.label} → {cause.split(' (at')[0][:80]}"
                    failures.setdefault(key, f"{cause}\n{str(failure).strip()[-500:]}")

            try:
                fuzz()
            except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
                assert mode is GenerationMode.NEGATIVE, operation.label
    report = "\n\n".join(f"{key}\n{detail}" for key, detail in sorted(failures.items()))
    assert not failures, f"{len(failures)} kinds of server errors:\n\n{report}"
