"""The cluster (deploy/cluster.py): downloads, resolves and faults, through nginx.

    python -m bench.cluster [--seconds 5] [--store folder|s3] [--skip-faults]

Prints markdown tables (bench/README.md quotes them):

1. **Downloads** (wrk, 16 and 64 connections): a public concept by digest through the cluster
   (nginx's cache), the same file served statically by a second nginx with the same worker count,
   in the same run, and their ratio; one replica streaming the same blob itself (no nginx); a
   private download (authorize at a replica, then the signed URL: two requests) and the signed
   URL's second hop alone.
2. **Resolve** (wrk): through nginx anonymously (answered from nginx's 1 s cache of public
   resolves) and with a token (always passed to the two replicas), vs one replica alone; p50/p99.
3. **Faults** (a Python driver, 64 connections, mixed resolve/download/search/push): ``kill -9``
   of one replica mid-run and its restart, then PostgreSQL stopped for 10 s; requests made,
   failed, retried, 503s with Retry-After, time to recover, and whether the index and the blob
   store agree afterwards.

Needs nginx and wrk (Debian: ``apt-get install -y nginx wrk``) and PostgreSQL 15's server.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

import perfusion_format as pf
from bench.common import concept_bytes, fmt, free_port, machine_line, print_table, progress
from bench.registry import WrkResult, parse_wrk
from deploy.cluster import Cluster, nginx_binary
from pfx.client import Client
from pfx.http import MAX_RETRY_WAIT

CONNECTIONS = (16, 64)
QUIET = {
    "PFX_RATE_LIMIT_TOKEN": "0",
    "PFX_RATE_LIMIT_ADDRESS": "0",
    "PFX_SIGNED_URL_SECONDS": "3600",  # the second-hop URL stays valid for the whole run
}

#: wrk script for a private download: the authorizing request, then the URL it redirects to.
PRIVATE_LUA = """
local path, token = "{path}", "{token}"
local next_hop = {{}}
request = function()
  local hop = table.remove(next_hop)
  if hop then return wrk.format("GET", hop) end
  return wrk.format("GET", path, {{["Authorization"] = "Bearer " .. token}})
end
response = function(status, headers, body)
  if status == 307 then table.insert(next_hop, headers["Location"]) end
end
"""


def wrk(url: str, connections: int, seconds: float, script: Path | None = None) -> WrkResult:
    """One ``wrk --latency`` run (two threads)."""
    argv = ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
    argv += ["--timeout", "2s", "--latency"]
    if script is not None:
        argv += ["-s", str(script)]
    result = subprocess.run(
        [*argv, url], capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"wrk failed ({result.returncode}): {result.stderr.strip()}")
    return parse_wrk(result.stdout, connections)


def static_nginx(folder: Path, data: bytes, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    """A second nginx serving ``data`` as a static file (the baseline); its process and URL."""
    (folder / "www").mkdir(parents=True)
    (folder / "www" / "blob").write_bytes(data)
    port = free_port()
    config = folder / "nginx.conf"
    config.write_text(
        ("user root;" if os.geteuid() == 0 else "")
        + f"""
worker_processes {workers};
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on; tcp_nopush on; tcp_nodelay on;
    keepalive_requests 100000;
    client_body_temp_path {folder}/b; proxy_temp_path {folder}/p; fastcgi_temp_path {folder}/f;
    uwsgi_temp_path {folder}/u; scgi_temp_path {folder}/s;
    server {{ listen 127.0.0.1:{port} reuseport backlog=4096; root {folder}/www; }}
}}
"""
    )
    binary = nginx_binary()
    assert binary is not None
    process = subprocess.Popen(
        [binary, "-p", str(folder), "-c", str(config), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/blob"
    for _ in range(100):
        try:
            if httpx.get(url, trust_env=False).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.05)
    process.terminate()
    process.wait()
    raise RuntimeError("the static nginx did not start")


def push(base: str, token: str, name: str, data: bytes, private: bool, version: str = "1") -> str:
    """Push ``data`` as ``admin/name:version``; its digest."""
    digest = pf.content_digest(data)
    auth = {"Authorization": f"Bearer {token}"}
    httpx.put(f"{base}/v1/blobs/{digest}", content=data, headers=auth, trust_env=False)
    answer = httpx.put(
        f"{base}/v1/concepts/admin/{name}/versions/{version}",
        json={"digest": digest, "private": private},
        headers=auth,
        trust_env=False,
    )
    answer.raise_for_status()
    return digest


def download_tables(cluster: Cluster, seconds: float, work: Path) -> None:
    """Tables 1 and 2."""
    token = cluster.admin_token
    data = concept_bytes(1, dtype="F32")
    public = push(cluster.url, token, "bench-public", data, private=False)
    secret_data = concept_bytes(2, dtype="F32")
    private = push(cluster.url, token, "bench-private", secret_data, private=True)
    auth = {"Authorization": f"Bearer {token}"}
    hop = httpx.get(f"{cluster.url}/v1/blobs/{private}", headers=auth, trust_env=False)
    signed = cluster.url + hop.headers["location"]
    assert httpx.get(signed, trust_env=False).content == secret_data
    script = work / "private.lua"
    script.write_text(PRIVATE_LUA.format(path=f"/v1/blobs/{private}", token=token))
    baseline, static_url = static_nginx(work / "static", data, cluster.nginx_workers)
    rows = []
    try:
        for connections in CONNECTIONS:
            progress(f"downloads at {connections} connections")
            wrk(f"{cluster.url}/v1/blobs/{public}", connections, 1)  # warm nginx's cache
            through = wrk(f"{cluster.url}/v1/blobs/{public}", connections, seconds)
            static = wrk(static_url, connections, seconds)
            replica = wrk(f"{cluster.replica_url(0)}/v1/blobs/{public}", connections, seconds)
            both = wrk(f"{cluster.url}/v1/blobs/{private}", connections, seconds, script)
            second = wrk(signed, connections, seconds)
            rows.append(
                (
                    connections,
                    fmt(through.requests_per_s, 0),
                    fmt(static.requests_per_s, 0),
                    f"{through.requests_per_s / static.requests_per_s:.2f}×",
                    fmt(replica.requests_per_s, 0),
                    f"{replica.requests_per_s / static.requests_per_s:.2f}×",
                    fmt(both.requests_per_s / 2, 0),
                    fmt(second.requests_per_s, 0),
                    fmt(through.p99_ms, 1),
                    "/".join(str(r.errors) for r in (through, static, replica, both, second)),
                )
            )
    finally:
        baseline.terminate()
        baseline.wait()
    print_table(
        f"Downloads of a {len(data) / 1024:.0f} KiB concept (downloads/s, wrk {seconds:g} s each)",
        [
            "connections",
            "public, cluster",
            "static nginx",
            "ratio",
            "one replica alone",
            "ratio",
            "private (authorize + signed URL)",
            "signed URL hop alone",
            "public p99 ms",
            "errors (per column)",
        ],
        rows,
        left=1,
    )
    resolve = "/v1/concepts/admin/bench-public/versions/1"
    token_script = work / "token.lua"
    token_script.write_text(f'wrk.headers["Authorization"] = "Bearer {cluster.admin_token}"\n')
    rows = []
    for connections in CONNECTIONS:
        progress(f"resolve at {connections} connections")
        wrk(cluster.url + resolve, connections, 1)  # warm nginx's cache, as for downloads
        runs = (
            (
                "cluster, anonymous (nginx's 1 s cache)",
                wrk(cluster.url + resolve, connections, seconds),
            ),
            (
                "cluster, with a token (2 replicas)",
                wrk(cluster.url + resolve, connections, seconds, token_script),
            ),
            ("one replica, anonymous", wrk(cluster.replica_url(0) + resolve, connections, seconds)),
        )
        for label, result in runs:
            rows.append(
                (
                    label,
                    connections,
                    fmt(result.requests_per_s, 0),
                    fmt(result.p50_ms, 1),
                    fmt(result.p99_ms, 1),
                    result.errors,
                )
            )
    print_table(
        f"Resolve a public version (wrk {seconds:g} s each)",
        ["server", "connections", "resolves/s", "p50 ms", "p99 ms", "errors"],
        rows,
        left=1,
    )


def signing_table(rounds: int = 2000) -> None:
    """Table 0: what one download's URL costs to sign — boto3's presign, the S3 store's reused
    presign, and a secure_link URL (no network: signing is local)."""
    import os

    from deploy.cluster import AWS_LOCAL
    from pfx_registry import signing
    from pfx_registry.blobs import S3BlobStore

    os.environ.update(AWS_LOCAL)
    store = S3BlobStore("bench", endpoint_url="http://127.0.0.1:9")
    digest = "sha256:" + "ab" * 32
    params = {"Bucket": "bench", "Key": store.key(digest)}
    ways = {
        "boto3 generate_presigned_url": lambda: store._client.generate_presigned_url(
            "get_object", Params=params, ExpiresIn=300
        ),
        "S3 store presigned_url (reused for half its lifetime)": lambda: store.presigned_url(
            digest, 300
        ),
        "secure_link URL (signing.signed_url)": lambda: signing.signed_url(
            store.key(digest), "x" * 32, 60
        ),
    }
    rows = []
    for label, sign in ways.items():
        sign()
        start = time.perf_counter()
        for _ in range(rounds):
            sign()
        rows.append((label, fmt((time.perf_counter() - start) / rounds * 1e6, 1)))
    print_table(f"Signing one download URL (µs per call, {rounds:,} calls)", ["way", "µs"], rows, 1)


# -- faults ----------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the fault driver saw."""

    made: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    retried: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    unavailable_with_retry_after: int = 0
    server_errors: int = 0
    pushed: list[tuple[str, str]] = field(default_factory=list)
    #: when each push succeeded (time.monotonic)
    push_times: list[float] = field(default_factory=list)


IDEMPOTENT = ("resolve", "download", "search")


#: pfx.Client's retry rule (pfx/http.py): 4 retries, each waiting Retry-After or 0.5 s × 2ⁿ,
#: never more than MAX_RETRY_WAIT — a budget of 20 s against the registry's `Retry-After: 5`.
RETRIES = inspect.signature(Client).parameters["retries"].default
BACKOFF = inspect.signature(Client).parameters["backoff"].default


async def one_call(client: httpx.AsyncClient, tally: Tally, kind: str, token: str) -> bool:
    """One operation of ``kind`` with pfx.Client's retry rule (every request here is
    idempotent: up to :data:`RETRIES` retries on a transport error, 502, 503 or 504, waiting
    Retry-After or the client's backoff); whether it succeeded."""
    auth = {"Authorization": f"Bearer {token}"}
    tally.made[kind] += 1
    data = b""
    if kind == "push":
        data = concept_bytes(random.randrange(1 << 30), dtype="F16")
    for attempt in range(RETRIES + 1):
        try:
            if kind == "resolve":
                answer = await client.get("/v1/concepts/admin/bench-public/versions/1")
            elif kind == "download":
                answer = await client.get(
                    "/v1/concepts/admin/bench-private/versions/1/file", headers=auth
                )
                if answer.status_code == 307:
                    answer = await client.get(answer.headers["location"])
            elif kind == "search":
                answer = await client.get("/v1/search", params={"q": "teddy"})
            else:
                digest = pf.content_digest(data)
                answer = await client.put(f"/v1/blobs/{digest}", content=data, headers=auth)
                if answer.status_code == 201:
                    version = uuid.uuid4().hex[:12]
                    answer = await client.put(
                        f"/v1/concepts/admin/bench-pushes/versions/{version}",
                        json={"digest": digest},
                        headers=auth,
                    )
                    if answer.status_code in (200, 201):
                        tally.pushed.append((version, digest))
                        tally.push_times.append(time.monotonic())
        except httpx.TransportError:
            answer = None
        if answer is not None:
            tally.statuses[answer.status_code] += 1
            if answer.status_code == 503 and "retry-after" in answer.headers:
                tally.unavailable_with_retry_after += 1
            if answer.status_code >= 500 and answer.status_code not in (502, 503, 504):
                tally.server_errors += 1
            if answer.status_code < 400:
                return True
            if answer.status_code not in (502, 503, 504):
                tally.failed[kind] += 1  # a clear answer that is not a transient one
                return False
        if attempt == RETRIES:
            break
        tally.retried[kind] += 1
        backoff = BACKOFF * 2**attempt
        wait = float(answer.headers.get("retry-after", backoff)) if answer is not None else backoff
        await asyncio.sleep(min(wait, MAX_RETRY_WAIT))
    tally.failed[kind] += 1
    return False


async def drive(
    url: str, token: str, seconds: float, connections: int, tally: Tally, events: list[Any]
) -> None:
    """``connections`` workers sending a mix (4 resolve : 3 download : 2 search : 1 push) for
    ``seconds``, while ``events`` (``(at_second, callable)``) run on a thread at their time."""
    kinds = ["resolve"] * 4 + ["download"] * 3 + ["search"] * 2 + ["push"]
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    start = time.monotonic()
    async with httpx.AsyncClient(
        base_url=url, limits=limits, timeout=10, trust_env=False
    ) as client:

        async def worker() -> None:
            while time.monotonic() - start < seconds:
                await one_call(client, tally, random.choice(kinds), token)

        async def scheduler() -> None:
            for at, action in events:
                await asyncio.sleep(max(0.0, start + at - time.monotonic()))
                await asyncio.to_thread(action)

        await asyncio.gather(scheduler(), *(worker() for _ in range(connections)))


def consistency(cluster: Cluster, tally: Tally) -> tuple[int, int]:
    """(versions pushed and acknowledged, of those whose file is not served whole)."""
    auth = {"Authorization": f"Bearer {cluster.admin_token}"}
    broken = 0
    with httpx.Client(base_url=cluster.url, headers=auth, trust_env=False, timeout=10) as client:
        for version, digest in tally.pushed:
            answer = client.get(f"/v1/concepts/admin/bench-pushes/versions/{version}/file")
            if answer.status_code == 307:
                answer = httpx.get(cluster.url + answer.headers["location"], trust_env=False)
            if answer.status_code != 200 or pf.content_digest(answer.content) != digest:
                broken += 1
    return len(tally.pushed), broken


def fault_tables(cluster: Cluster, seconds: float) -> None:
    """Table 3: kill -9 of a replica, then PostgreSQL stopped for 10 s."""
    token = cluster.admin_token
    marks: dict[str, float] = {}

    def mark(name: str, action: Any) -> Any:
        def run() -> None:
            progress(f"fault run: {name}")
            action()
            marks[name] = time.monotonic()

        return run

    kill_tally = Tally()
    events = [
        (seconds * 0.3, mark("kill", lambda: cluster.kill_replica(0))),
        (seconds * 0.5, mark("restart", lambda: cluster.start_replica(0))),
    ]
    progress("fault run: kill -9 one replica under 64 connections")
    asyncio.run(drive(cluster.url, token, seconds, 64, kill_tally, events))
    logged = (cluster.work / "log" / "access.log").read_text().splitlines()
    rejoined = sum(f"upstream=127.0.0.1:{cluster.replica_ports[0]}" in x for x in logged[-2000:])
    # a request nginx passed on to another replica logs both addresses: "upstream=a, b"
    nginx_retried = sum("upstream=" in x and ", " in x.split("upstream=")[1] for x in logged)
    pushed, broken = consistency(cluster, kill_tally)

    pg_tally = Tally()
    pg_events = [
        (3.0, mark("pg-stop", lambda: cluster.postgres("stop"))),
        (13.0, mark("pg-start", lambda: cluster.postgres("start"))),
    ]
    progress("fault run: PostgreSQL stopped for 10 s under 64 connections")
    asyncio.run(drive(cluster.url, token, 22.0, 64, pg_tally, pg_events))
    after = [t - marks["pg-start"] for t in pg_tally.push_times if t > marks["pg-start"]]
    recovery = min(after) if after else float("nan")
    rows = []
    for label, tally in (("kill -9 replica, restart", kill_tally), ("PostgreSQL 10 s", pg_tally)):
        idempotent_failed = sum(tally.failed[k] for k in IDEMPOTENT)
        rows.append(
            (
                label,
                sum(tally.made.values()),
                idempotent_failed,
                tally.failed["push"],
                tally.made["push"],
                sum(tally.retried.values()),
                tally.unavailable_with_retry_after,
                tally.server_errors,
            )
        )
    print_table(
        f"Faults through nginx (64 connections, 4 resolve : 3 download : 2 search : 1 push, "
        f"{seconds:g} s and 22 s)",
        [
            "fault",
            "operations",
            "failed idempotent (after the client's retries)",
            "failed pushes",
            "pushes",
            "retries",
            "503 + Retry-After",
            "other 5xx",
        ],
        rows,
        left=1,
    )
    print(
        f"\nDuring the kill run nginx passed {nginx_retried} requests on to the other replica. "
        f"After it: {pushed} acknowledged pushes, {broken} of them not served whole; "
        f"the restarted replica answered {rejoined} of nginx's last 2,000 logged requests. "
        f"After PostgreSQL came back (pg_ctl start returned): the first push succeeded "
        f"{recovery:.1f} s later, without restarting anything."
    )


def main(argv: list[str] | None = None) -> int:
    """Run the cluster benchmark."""
    parser = argparse.ArgumentParser(prog="python -m bench.cluster")
    parser.add_argument("--seconds", type=float, default=5, help="per wrk run (default 5)")
    parser.add_argument("--store", choices=("folder", "s3"), default="folder")
    parser.add_argument("--fault-seconds", type=float, default=20.0)
    parser.add_argument("--skip-faults", action="store_true")
    parser.add_argument("--signing-only", action="store_true", help="only the signing table")
    arguments = parser.parse_args(argv)
    if arguments.signing_only:
        signing_table()
        return 0
    missing = [tool for tool in ("wrk",) if shutil.which(tool) is None]
    if nginx_binary() is None:
        missing.append("nginx")
    if missing:
        print(f"needs {' and '.join(missing)}: apt-get install -y nginx wrk", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="pfx-bench-cluster-"))
    try:
        with Cluster(port=free_port(), store=arguments.store, settings=QUIET) as cluster:
            print(
                f"`python -m bench.cluster --store {arguments.store}` — "
                + machine_line(
                    {
                        "replicas": cluster.replicas,
                        "nginx workers": cluster.nginx_workers,
                        "store": arguments.store,
                        "index": "PostgreSQL 15",
                    }
                )
            )
            signing_table()
            download_tables(cluster, arguments.seconds, work)
            if not arguments.skip_faults:
                fault_tables(cluster, arguments.fault_seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
