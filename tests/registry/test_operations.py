"""Operations: Prometheus metrics, JSON access logs, and rate limits answering 429 with
Retry-After — per token and per anonymous address."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from test_api import migrate_and_add_administrator

from pfx_registry.app import create_app
from pfx_registry.observability import RateLimit
from pfx_registry.settings import Settings


def test_token_bucket_refills_at_its_rate() -> None:
    limit = RateLimit(rate=2.0, burst=3.0)
    assert [limit.retry_after("k", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limit.retry_after("k", 0.0) == pytest.approx(0.5)  # 1 token missing at 2 per second
    assert limit.retry_after("k", 0.5) == 0.0  # one token refilled
    assert limit.retry_after("other", 0.5) == 0.0  # keys are independent
    assert RateLimit(rate=0, burst=0).retry_after("k", 0.0) == 0.0  # 0 turns it off


def test_rate_limits_answer_429_with_retry_after(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, rate_limit_token=1.0, rate_limit_address=1.0)
    with TestClient(create_app(settings)) as client:
        statuses = [client.get("/healthz").status_code for _ in range(6)]
        assert statuses[:4] == [200] * 4 and statuses[4:] == [429, 429]  # burst is 4× the rate
        limited = client.get("/healthz")
        assert limited.json()["error"]["code"] == "RATE_LIMITED"
        assert int(limited.headers["retry-after"]) >= 1
        # a made-up token does not escape the address's limit
        assert client.get("/healthz", headers={"Authorization": "Bearer pfx_x"}).status_code == 429
    per_token = Settings(data_dir=tmp_path / "t", rate_limit_token=1.0, rate_limit_address=100.0)
    with TestClient(create_app(per_token)) as client:
        headers = {"Authorization": "Bearer pfx_x"}
        statuses = [client.get("/healthz", headers=headers).status_code for _ in range(5)]
        assert statuses == [200] * 4 + [429]  # the token's own bucket
        assert client.get("/healthz").status_code == 200  # the address still has room


def test_metrics_and_access_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(data_dir=tmp_path, rate_limit_token=0, rate_limit_address=0)
    app = create_app(settings)
    admin = migrate_and_add_administrator(app.state.registry.engine)
    with (
        TestClient(app) as client,
        caplog.at_level(logging.INFO, logger="pfx_registry.access"),
    ):
        client.get("/v1/concepts/nobody/thing")
        client.get("/v1/concepts/nobody/thing")
        client.get("/healthz")
        whoami = client.get(
            "/v1/whoami", headers={"Authorization": f"Bearer {admin}", "X-Request-ID": "trace-7"}
        )
        text = client.get("/metrics").text
    assert whoami.headers["x-request-id"] == "trace-7"
    assert (
        'pfx_requests_total{method="GET",route="/v1/concepts/{ns}/{name}",status="404"} 2.0' in text
    )
    assert 'pfx_request_duration_seconds_count{route="/healthz"} 1.0' in text
    assert "# TYPE pfx_request_duration_seconds histogram" in text
    lines = [json.loads(record.message) for record in caplog.records]
    assert {
        "method": "GET",
        "path": "/healthz",
        "route": "/healthz",
        "status": 200,
        "caller": None,
    }.items() <= lines[2].items()
    assert lines[0]["status"] == 404 and lines[0]["ms"] >= 0
    assert lines[0]["bytes"] == len(
        b'{"error":{"code":"NOT_FOUND","message":"namespace nobody not found"}}'
    )
    assert datetime.fromisoformat(lines[0]["time"]).utcoffset() is not None
    assert lines[3]["request_id"] == "trace-7" and lines[3]["caller"] == "root"
    assert lines[0]["request_id"] != lines[1]["request_id"]
    assert admin not in "".join(record.message for record in caplog.records)


def test_every_answer_carries_a_request_id(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, rate_limit_token=0, rate_limit_address=1.0, max_json_bytes=1024
    )
    with TestClient(create_app(settings)) as client:
        answers = [
            client.get("/healthz"),
            client.get("/v1/concepts/nobody/thing"),
            client.post("/v1/orgs", content=b"x" * 2000),  # 413 before the app
            client.get("/healthz", headers={"X-Request-ID": "bad id!"}),
        ]
        answers += [client.get("/healthz") for _ in range(4)]  # past the burst of 4: 429
    assert [a.status_code for a in answers][-1] == 429 and answers[2].status_code == 413
    ids = [a.headers.get("x-request-id") for a in answers]
    assert all(ids) and len(set(ids)) == len(ids), ids  # an unsafe id sent is replaced


def test_request_bodies_are_bounded(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, rate_limit_token=0, rate_limit_address=0, max_json_bytes=1000
    )
    url = "/v1/concepts/a/b/versions/1"
    with TestClient(create_app(settings)) as client:
        declared = client.put(
            url, content=b"x" * 1001, headers={"content-type": "application/json"}
        )
        assert declared.status_code == 413
        assert declared.json()["error"]["code"] == "TOO_LARGE"

        def chunks():  # no Content-Length: the limit applies while the body streams in
            for _ in range(5):
                yield b"y" * 300

        streamed = client.put(url, content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413
        assert streamed.json()["error"]["code"] == "TOO_LARGE"
        small = client.put(url, content=b"{}", headers={"content-type": "application/json"})
        assert small.status_code == 400  # within the limit: the request itself is judged


def test_streamed_upload_over_the_limit_is_413(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, rate_limit_token=0, rate_limit_address=0, max_concept_bytes=1000
    )

    def chunks():  # no Content-Length
        for _ in range(5):
            yield b"z" * 300

    app = create_app(settings)
    admin = migrate_and_add_administrator(app.state.registry.engine)
    with TestClient(app) as client:
        response = client.put(
            f"/v1/blobs/sha256:{'0' * 64}",
            content=chunks(),
            headers={"Authorization": f"Bearer {admin}"},
        )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "TOO_LARGE"
