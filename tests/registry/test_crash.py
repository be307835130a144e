"""A registry killed with SIGKILL in the middle of a burst of pushes comes back consistent.

A real ``pfx-registry serve`` runs on folder+SQLite and on S3+PostgreSQL (moto's S3 server and a
fresh database on the session's PostgreSQL cluster). Several client threads push in a loop —
upload a concept file, then publish it as the first version of a repository of its own — and the
server is killed (``SIGKILL``: no shutdown, no rollback, no flush) once a number of pushes have been
acknowledged, with others in flight. It is then started again on the same stores, and the index is
read directly (SQLAlchemy on the same URL) next to the blob store:

- no repository without a version (a publish creates both, or neither);
- no blob row uploaded by a user without that user's row in ``blob_uploads`` (which is what lets
  the uploader see and publish the blob);
- no version whose blob row or concept facts are missing;
- every blob row's bytes are in the store, with the size the row records;
- every push the server acknowledged (201/200) still resolves, and its file downloads whole; every
  acknowledged upload is still visible to its uploader;
- and the restarted registry takes new pushes.

Why: a crash can land between any two steps of a request (bytes stored, rows inserted, answer
sent). Each step must be atomic and ordered so that what was acknowledged is durable and nothing
half-made is left for readers to trip over.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from backends import free_port, fresh_postgres_database, stop_process
from registry_server import (
    _CLEARED,
    PFX_REGISTRY,
    Account,
    RegistryServer,
    wait_until_ready,
)
from sqlalchemy import exists, select
from test_api import concept_bytes, migrate_and_add_administrator

import perfusion_format as pf
from pfx_registry.db import blob_uploads, blobs, concept_files, repositories, versions
from pfx_registry.settings import Settings
from pfx_registry.state import open_registry

#: Client threads pushing at once.
PUSHERS = 4
#: Pushes each thread has ready (the burst ends at the kill, long before they run out).
PUSHES_PER_PUSHER = 60
#: Acknowledged pushes after which the server is killed.
KILL_AFTER = 20
#: Seconds the burst may take to reach KILL_AFTER before the test gives up waiting.
BURST_DEADLINE = 30.0


@dataclass
class Deployment:
    """A registry's stores and settings, and its server process, which can be killed and then
    started again on the same stores (on a new port)."""

    backend: str
    data: Path
    environment: dict[str, str]
    log: Path
    admin_token: str = ""
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> RegistryServer:
        """Start ``pfx-registry serve`` on a free loopback port and wait until it is ready."""
        if not self.admin_token:  # first start: the schema and an administrator, in-process
            registry = open_registry(self.settings())
            self.admin_token = migrate_and_add_administrator(registry.engine)
            registry.engine.dispose()
        port = free_port()
        with open(self.log, "ab") as output:
            self.process = subprocess.Popen(
                [str(PFX_REGISTRY), "serve", "--port", str(port), "--data", str(self.data)],
                env=self.environment,
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(self.process, url, self.log)
        return RegistryServer(url, self.admin_token, self.backend)

    def kill(self) -> None:
        """SIGKILL the server and reap it."""
        assert self.process is not None and self.process.poll() is None, "the server had died"
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.process = None

    def stop(self) -> None:
        """Stop the server, if it runs."""
        if self.process is not None:
            stop_process(self.process)
            self.process = None

    def settings(self) -> Settings:
        """The settings the server runs with (for reading its stores directly)."""
        return Settings(
            data_dir=self.data,
            database_url=self.environment.get("PFX_DATABASE_URL"),
            s3_bucket=self.environment.get("PFX_S3_BUCKET"),
            s3_endpoint=self.environment.get("PFX_S3_ENDPOINT"),
        )


@pytest.fixture(params=["folder+sqlite", "s3+postgres"])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    """A registry of each backend, not started yet; its server is stopped at the end."""
    blob_store, index = request.param.split("+")
    chosen = {"PFX_RATE_LIMIT_TOKEN": "0", "PFX_RATE_LIMIT_ADDRESS": "0"}
    if blob_store == "s3":
        s3 = request.getfixturevalue("s3_server")  # puts test AWS credentials in os.environ
        s3.start()  # in case an outage test left it stopped
        chosen |= {"PFX_S3_BUCKET": s3.create_bucket(), "PFX_S3_ENDPOINT": s3.endpoint}
    if index == "postgres":
        chosen["PFX_DATABASE_URL"] = fresh_postgres_database(
            request.getfixturevalue("postgres_url")
        )
    inherited = {name: value for name, value in os.environ.items() if name not in _CLEARED}
    deployment = Deployment(
        request.param, tmp_path / "data", inherited | chosen, tmp_path / "registry.log"
    )
    try:
        yield deployment
    finally:
        deployment.stop()


@dataclass(frozen=True)
class Push:
    """A publish the server acknowledged: ``ns/name:version`` names ``digest``."""

    ns: str
    name: str
    version: str
    digest: str


@dataclass
class Ledger:
    """What the pushing threads saw, shared between them: acknowledged pushes and uploads, the
    statuses of every answer received, and how many requests the kill cut off unanswered."""

    pushes: list[Push] = field(default_factory=list)
    uploads: list[str] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    cut: int = 0
    changed: threading.Condition = field(default_factory=threading.Condition)
    stop: threading.Event = field(default_factory=threading.Event)

    def answered(self, what: str, response: httpx.Response) -> bool:
        """Count an answer; True when it is a success (2xx)."""
        with self.changed:
            self.statuses[f"{what} {response.status_code}"] += 1
        return response.is_success

    def uploaded(self, digest: str) -> None:
        """Record an acknowledged upload."""
        with self.changed:
            self.uploads.append(digest)

    def cut_off(self) -> None:
        """Count a request that the server never answered."""
        with self.changed:
            self.cut += 1

    def acknowledge(self, push: Push) -> None:
        """Record an acknowledged push and wake whoever waits for the count."""
        with self.changed:
            self.pushes.append(push)
            self.changed.notify_all()


def push_until_gone(url: str, account: Account, pusher: int, ledger: Ledger) -> None:
    """Push fresh concepts as ``account`` (upload, then publish as version 1 of the repository
    ``p<pusher>-<n>``) until they run out, ``ledger.stop`` is set, or the server stops
    answering."""
    first = 1000 * (pusher + 1)
    files = [concept_bytes(seed) for seed in range(first, first + PUSHES_PER_PUSHER)]
    with httpx.Client(
        base_url=url,
        headers={"Authorization": f"Bearer {account.token}"},
        timeout=30.0,
        trust_env=False,
    ) as http:
        for number, data in enumerate(files):
            if ledger.stop.is_set():
                return
            digest = pf.content_digest(data)
            name = f"p{pusher}-{number}"
            try:
                if not ledger.answered("upload", http.put(f"/v1/blobs/{digest}", content=data)):
                    continue
                ledger.uploaded(digest)
                published = http.put(
                    f"/v1/concepts/{account.name}/{name}/versions/1", json={"digest": digest}
                )
            except httpx.TransportError:
                ledger.cut_off()
                return  # killed
            if ledger.answered("publish", published):
                ledger.acknowledge(Push(account.name, name, "1", digest))


def burst_and_kill(deployment: Deployment, server: RegistryServer, account: Account) -> Ledger:
    """Run :data:`PUSHERS` pushing threads against ``server`` and SIGKILL it once
    :data:`KILL_AFTER` pushes are acknowledged (the others are then mid-request); what the
    threads saw."""
    ledger = Ledger()
    threads = [
        threading.Thread(target=push_until_gone, args=(server.url, account, n, ledger), daemon=True)
        for n in range(PUSHERS)
    ]
    for thread in threads:
        thread.start()
    with ledger.changed:
        reached = ledger.changed.wait_for(
            lambda: len(ledger.pushes) >= KILL_AFTER, timeout=BURST_DEADLINE
        )
    deployment.kill()
    ledger.stop.set()
    for thread in threads:
        thread.join(timeout=60)
    assert reached, f"only {len(ledger.pushes)} pushes acknowledged: {dict(ledger.statuses)}"
    return ledger


def inconsistencies(settings: Settings) -> list[str]:
    """What is wrong in the index and blob store of ``settings``, read directly (empty: all
    consistent)."""
    registry = open_registry(settings)
    problems: list[str] = []
    try:
        with registry.engine.connect() as connection:
            empty = connection.execute(
                select(repositories.c.name).where(
                    ~exists().where(versions.c.repository_id == repositories.c.id)
                )
            ).scalars()
            problems += [f"repository {name} has no version" for name in empty]
            unowned = connection.execute(
                select(blobs.c.digest).where(
                    blobs.c.uploaded_by.is_not(None),
                    ~exists().where(
                        blob_uploads.c.digest == blobs.c.digest,
                        blob_uploads.c.account_id == blobs.c.uploaded_by,
                    ),
                )
            ).scalars()
            problems += [
                f"blob {digest} has no blob_uploads row of its uploader" for digest in unowned
            ]
            for table in (blobs, concept_files):
                dangling = connection.execute(
                    select(versions.c.version, versions.c.digest).where(
                        ~exists().where(table.c.digest == versions.c.digest)
                    )
                ).all()
                problems += [
                    f"version {v} names {d}, absent from {table.name}" for v, d in dangling
                ]
            rows = connection.execute(select(blobs.c.digest, blobs.c.size)).all()
        for digest, size in rows:
            stored = registry.blobs.size(digest)
            if stored != size:
                problems.append(f"blob {digest}: {size} bytes indexed, {stored} in the store")
    finally:
        registry.engine.dispose()
    return problems


def test_kill_during_pushes_leaves_a_consistent_registry(deployment: Deployment) -> None:
    """SIGKILL mid-burst, restart on the same stores: the index and the store agree, and every
    acknowledged push and upload is still there."""
    server = deployment.start()
    pusher = server.create_user("pusher")
    ledger = burst_and_kill(deployment, server, pusher)

    restarted = deployment.start()
    assert inconsistencies(deployment.settings()) == []
    with restarted.client(pusher.token, retries=0) as client:
        for push in ledger.pushes:
            assert client.resolve(push.ns, push.name, push.version).digest == push.digest, push
            data = client.download(push.ns, push.name, push.version)
            assert pf.content_digest(data) == push.digest, push
        missing = [digest for digest in ledger.uploads if not client.blob_exists(digest)]
        assert not missing, f"{len(missing)} acknowledged uploads are gone"
        after = concept_bytes(999_999)
        client.upload_blob(after)
        assert client.publish(pusher.name, "after", "1", pf.content_digest(after)).created
    refused = {status: n for status, n in ledger.statuses.items() if not status.endswith(" 201")}
    assert not refused, f"answers other than 201 before the kill: {refused} ({ledger.cut} cut off)"
