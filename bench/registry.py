"""Benchmark the registry over real HTTP on loopback, beside reference servers, in one run.

Prints markdown tables: resolve and download throughput and latency (wrk) for the registry on
embedded defaults (folder + SQLite) and on S3 (moto's server) + PostgreSQL (a throwaway cluster),
beside nginx serving the same file statically, pypiserver serving a package file of the same size,
and bare FastAPI apps (constant JSON, FileResponse, bytes from memory); publish throughput; search
latency at 100,000 indexed concepts; the web catalog's pages beside their JSON twins on that
index, and their weight; and the issue's targets beside the numbers.

    python -m bench.registry [--quick] [--duration S] [--only SECTION ...]

Sections: embedded, s3, baselines, publish, search, pages. Every server is a subprocess on a free
127.0.0.1 port; each is stopped and every temporary folder removed at the end, on Ctrl-C too.

It installs nothing. The tools it needs, and how to get them (Debian, as root; the venv's pip)::

    apt-get update && apt-get install -y wrk nginx postgresql-15
    .venv/bin/pip install pypiserver      # not a project dependency: the bench's reference only
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import math
import os
import platform
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

import perfusion_format as pf

from .common import (
    REPO,
    Processes,
    concept_bytes,
    cpu_model,
    fmt,
    free_port,
    load_average,
    markdown_table,
    package_version,
    percentile,
    print_section,
    print_table,
    progress,
)

POSTGRES_SCRIPT = REPO / ".ci" / "postgres"
PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
BIN = Path(sys.executable).parent
SECTIONS = ("embedded", "s3", "baselines", "publish", "search", "pages")
CONNECTIONS = (1, 16, 64)
#: The issue's targets.
DOWNLOAD_VS_NGINX = 0.3
DOWNLOAD_VS_PYPISERVER = 10.0
RESOLVE_VS_BARE_JSON = 0.7
#: Issue 16: downloads through /v2/ blobs keep the hot-path performance of /v1/.
OCI_BLOB_VS_DOWNLOAD = 0.9
RESOLVE_P99_MS = 25.0
SEARCH_P50_MS = 10.0
PAGE_P50_MS = 20.0
PAGE_BYTES = 50_000  # HTML + CSS + JS (+ icon) of a page, "under 50 KB"
PAGE_REQUESTS = 200  # timed requests per page and per JSON twin
#: The package's static files a page links (stylesheet, script, icon).
STATIC_LINK = re.compile(r'(?:href|src)="(/-/static/[^"]+)"')
NAMESPACE = "admin"  # the account `pfx-registry admin create-token` creates
CONCEPT = "teddy"
RESOLVE_PATH = f"/v1/concepts/{NAMESPACE}/{CONCEPT}/versions/latest"
DOWNLOAD_PATH = RESOLVE_PATH + "/file"
INSTALL = {
    "wrk": "apt-get update && apt-get install -y wrk",
    "nginx": "apt-get update && apt-get install -y nginx",
    "pypi-server": ".venv/bin/pip install pypiserver",
    "postgres": "apt-get update && apt-get install -y postgresql-15 (or set PG_BIN)",
    "moto": ".venv/bin/pip install -e 'registry[test]' (moto[server])",
    "pfx-registry": "make install",
}
#: Dummy credentials for moto; nothing of the developer's own AWS configuration is used.
AWS_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
BARE_APP = '''"""Bare FastAPI baselines for bench/registry.py."""
import os
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, Response

PATH = os.environ["PFX_BENCH_FILE"]
DATA = Path(PATH).read_bytes()
app = FastAPI()


@app.get("/json")
async def constant() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/json-sync")
def constant_sync() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/file")
async def file() -> FileResponse:
    return FileResponse(PATH, media_type="application/octet-stream")


@app.get("/memory")
async def memory() -> Response:
    return Response(DATA, media_type="application/octet-stream")
'''
NGINX_CONF = """worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log;
events {{ worker_connections 1024; }}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    sendfile on;
    keepalive_requests 1000000;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root}/www;
    }}
}}
"""


# -- tools and the machine -------------------------------------------------------------------


def missing_tools(sections: Sequence[str]) -> list[str]:
    """The tools the chosen sections need that this machine lacks."""
    needed = {"wrk"} if set(sections) & {"embedded", "s3", "baselines"} else set()
    if set(sections) & {"embedded", "s3", "publish", "search", "pages"}:
        needed.add("pfx-registry")
    if "baselines" in sections:
        needed |= {"nginx", "pypi-server"}
    if "s3" in sections:
        needed |= {"postgres", "moto"}
    missing = []
    for tool in sorted(needed):
        if tool == "postgres":
            present = all((PG_BIN / name).exists() for name in ("initdb", "pg_ctl", "createdb"))
        elif tool == "moto":
            present = importlib.util.find_spec("moto") is not None
        elif tool in ("pypi-server", "pfx-registry"):
            present = (BIN / tool).exists() or shutil.which(tool) is not None
        else:
            present = shutil.which(tool) is not None
        if not present:
            missing.append(tool)
    return missing


def executable(name: str) -> str:
    """The venv's console script ``name``, else the one on PATH."""
    local = BIN / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def command_output(argv: Sequence[str]) -> str:
    """First line a version command prints (stdout or stderr), or ``—``."""
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "—"
    text = (result.stdout or result.stderr).strip()
    return text.splitlines()[0] if text else "—"


def machine_table() -> str:
    """The machine and the versions of everything measured."""
    wrk = command_output(["wrk", "-v"])
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    rows = [
        ("CPU", f"{os.cpu_count()} × {cpu_model()}"),
        ("OS", f"{platform.system()} {platform.release()}"),
        ("Python", platform.python_version()),
        ("wrk", wrk.split(" [")[0] if wrk != "—" else wrk),
        ("nginx", command_output(["nginx", "-v"]).replace("nginx version: ", "")),
        ("pypiserver", package_version("pypiserver")),
        ("uvicorn", f"{package_version('uvicorn')} ({http}, {loop} loop)"),
        ("fastapi / starlette", f"{package_version('fastapi')} / {package_version('starlette')}"),
        ("SQLAlchemy / SQLite", f"{package_version('SQLAlchemy')} / {sqlite3.sqlite_version}"),
        ("PostgreSQL", command_output([str(PG_BIN / "postgres"), "--version"])),
        ("moto / boto3", f"{package_version('moto')} / {package_version('boto3')}"),
    ]
    return markdown_table(("", "version"), rows)


# -- processes -------------------------------------------------------------------------------


# -- wrk -------------------------------------------------------------------------------------


@dataclass
class WrkResult:
    """One wrk run."""

    connections: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # socket errors + responses that are neither 2xx nor 3xx


_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _duration_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str, connections: int) -> WrkResult:
    """The numbers of a ``wrk --latency`` report."""

    def find(pattern: str) -> re.Match[str] | None:
        return re.search(pattern, output, re.MULTILINE)

    rate = find(r"^Requests/sec:\s+([\d.]+)")
    count = find(r"^\s+(\d+) requests in")
    p50 = find(r"^\s+50%\s+(\S+)")
    p99 = find(r"^\s+99%\s+(\S+)")
    if rate is None or count is None:
        raise RuntimeError(f"could not read wrk's report:\n{output}")
    requests = int(count.group(1))
    errors = 0
    socket_errors = find(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
    if socket_errors:
        errors += sum(int(group) for group in socket_errors.groups())
    non_2xx = find(r"Non-2xx or 3xx responses: (\d+)")
    if non_2xx:
        errors += int(non_2xx.group(1))
    return WrkResult(
        connections,
        float(rate.group(1)),
        _duration_ms(p50.group(1)) if p50 and requests else math.nan,
        _duration_ms(p99.group(1)) if p99 and requests else math.nan,
        requests,
        errors,
    )


def run_wrk(url: str, connections: int, seconds: float) -> WrkResult:
    """``wrk -t2 -c{connections} -d{seconds}s --latency`` (one thread for one connection)."""
    threads = min(2, connections)
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
    argv += ["--timeout", "2s", "--latency", url]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"wrk failed ({result.returncode}): {result.stderr.strip()}")
    return parse_wrk(result.stdout, connections)


@dataclass
class Series:
    """One endpoint of one server measured at several connection counts."""

    server: str
    endpoint: str
    body: str  # what one response is (status and size), from a probe
    results: dict[int, WrkResult] = field(default_factory=dict)


# -- sequential latency ----------------------------------------------------------------------


def timed_get(client: httpx.Client, url: str, params: dict[str, str] | None = None) -> float:
    """One GET that must succeed (2xx): its wall time in ms, as the client saw it."""
    begun = time.perf_counter()
    client.get(url, params=params).raise_for_status()
    return (time.perf_counter() - begun) * 1e3


def interleaved(
    client: httpx.Client, urls: Sequence[str], count: int, warm_up: int = 20
) -> list[list[float]]:
    """``count`` timed GETs of each of ``urls`` (ms, one list per URL), after ``warm_up``
    untimed rounds; one after another, taking turns (the first URL goes first every other
    round), so the machine's moods fall on each alike."""
    for _ in range(warm_up):
        for url in urls:
            timed_get(client, url)
    times: list[list[float]] = [[] for _ in urls]
    for round_ in range(count):
        order = range(len(urls)) if round_ % 2 == 0 else reversed(range(len(urls)))
        for index in order:
            times[index].append(timed_get(client, urls[index]))
    return times


# -- concepts --------------------------------------------------------------------------------


def push(
    client: httpx.Client, url: str, token: str, name: str, payload: bytes, version: str = "1.0"
) -> None:
    """Upload a concept file and publish it as a public version tagged latest."""
    digest = pf.content_digest(payload)
    headers = {"Authorization": f"Bearer {token}"}
    client.put(f"{url}/v1/blobs/{digest}", content=payload, headers=headers).raise_for_status()
    client.put(
        f"{url}/v1/concepts/{NAMESPACE}/{name}/versions/{version}",
        json={"digest": digest, "private": False},
        headers=headers,
    ).raise_for_status()


# -- the bench -------------------------------------------------------------------------------


class Bench:
    """Everything one run starts, measures and prints."""

    def __init__(self, root: Path, seconds: float, quick: bool, search_rows: int) -> None:
        self.root = root
        self.seconds = seconds
        self.quick = quick
        self.search_rows = search_rows
        (root / "logs").mkdir()
        self.processes = Processes(root / "logs")
        self.cleanups: list[Callable[[], None]] = []
        self.series: dict[str, Series] = {}
        self.search_p50: dict[str, float] = {}
        self.search_facts: dict[str, Any] | None = None
        self.page_p50: dict[str, float] = {}
        self.page_bytes: dict[str, int] = {}
        self.concept = concept_bytes(seed=0, dtype="F32")
        self.base_env = {k: v for k, v in os.environ.items() if not k.startswith("PFX_")}
        self.base_env["NO_PROXY"] = self.base_env["no_proxy"] = "127.0.0.1,localhost"
        # Capacity is what is measured, not the per-client rate limiter (one client here).
        self.base_env |= {"PFX_RATE_LIMIT_TOKEN": "0", "PFX_RATE_LIMIT_ADDRESS": "0"}

    def close(self) -> None:
        """Stop every process and backend this run started."""
        self.processes.stop_all()
        for cleanup in reversed(self.cleanups):
            with contextlib.suppress(Exception):
                cleanup()

    # -- measuring

    def probe(self, url: str) -> str:
        """One request: its status and body size (wrk reports neither)."""
        # A generous timeout: a server that stalled in the previous sweep may need a while.
        response = httpx.get(url, timeout=120, trust_env=False, follow_redirects=False)
        if response.status_code >= 400:
            raise RuntimeError(f"GET {url}: {response.status_code} {response.text[:200]}")
        return f"{response.status_code}, {len(response.content):,} B"

    def server_header(self, url: str) -> str:
        """What a server calls itself (its Server header)."""
        response = httpx.get(url, timeout=30, trust_env=False)
        return response.headers.get("server", "?")

    def sweep(self, key: str, server: str, endpoint: str, url: str) -> Series:
        """Measure ``url`` at every connection count (after a probe and a short warm-up)."""
        progress(f"wrk: {server} {endpoint}")
        series = Series(server, endpoint, self.probe(url))
        run_wrk(url, 16, 1)  # warm-up
        for connections in CONNECTIONS:
            series.results[connections] = run_wrk(url, connections, self.seconds)
        self.series[key] = series
        return series

    def emit_series(self, title: str, keys: Sequence[str]) -> None:
        """A table of measured series."""
        rows = []
        for key in keys:
            series = self.series[key]
            for connections, result in series.results.items():
                rows.append(
                    (
                        series.server,
                        series.endpoint,
                        series.body,
                        connections,
                        fmt(result.requests_per_s, 0),
                        fmt(result.p50_ms, 2),
                        fmt(result.p99_ms, 2),
                        result.errors if result.requests else "STALLED: 0 responses",
                    )
                )
        headers = ("server", "endpoint", "response", "conns", "req/s", "p50 ms", "p99 ms", "errors")
        print_table(title, headers, rows)

    # -- the registry

    def start_registry(self, name: str, data: Path, env: dict[str, str]) -> tuple[str, Any]:
        """``pfx-registry serve`` (single process, as shipped) on a free port."""
        port = free_port()
        argv = [executable("pfx-registry"), "serve", "--host", "127.0.0.1", "--port", str(port)]
        process = self.processes.start(name, [*argv, "--data", str(data)], env)
        url = f"http://127.0.0.1:{port}"
        self.processes.wait_http(name, process, url + "/healthz")
        return url, process

    def admin_token(self, data: Path, env: dict[str, str]) -> str:
        """A new administrator token from ``pfx-registry admin create-token``."""
        result = subprocess.run(
            [executable("pfx-registry"), "admin", "create-token", "--data", str(data)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=True,
        )
        return result.stdout.strip().splitlines()[-1]

    @property
    def oci_blob_path(self) -> str:
        """The /v2/ path of the benchmark concept's file (the same bytes as DOWNLOAD_PATH)."""
        return f"/v2/{NAMESPACE}/{CONCEPT}/blobs/{pf.content_digest(self.concept)}"

    def registry_with_concept(self, name: str, env: dict[str, str]) -> tuple[str, Any]:
        """A registry on ``env``'s backends with the 64 KiB concept published publicly."""
        data = self.root / name
        url, process = self.start_registry(name, data, env)
        token = self.admin_token(data, env)
        with httpx.Client(trust_env=False, timeout=60) as client:
            push(client, url, token, CONCEPT, self.concept)
        return url, process

    def embedded(self) -> None:
        """Section 1: folder + SQLite."""
        progress("registry on folder + SQLite")
        url, process = self.registry_with_concept("embedded", self.base_env)
        try:
            self.sweep(
                "embedded.healthz",
                "registry folder+SQLite",
                "/healthz (app + middleware, no SQL)",
                url + "/healthz",
            )
            self.sweep("embedded.resolve", "registry folder+SQLite", "resolve", url + RESOLVE_PATH)
            self.sweep(
                "embedded.download", "registry folder+SQLite", "download", url + DOWNLOAD_PATH
            )
            self.sweep(
                "embedded.oci_blob",
                "registry folder+SQLite",
                "OCI blob (GET /v2/…/blobs/<digest>)",
                url + self.oci_blob_path,
            )
        finally:
            self.processes.stop(process)
        self.emit_series(
            "Registry on embedded defaults (folder + SQLite), single uvicorn process",
            ["embedded.healthz", "embedded.resolve", "embedded.download", "embedded.oci_blob"],
        )

    def s3(self) -> None:
        """Section 2: S3 (moto's server) + PostgreSQL (throwaway cluster)."""
        progress("moto S3 server and a PostgreSQL cluster")
        env = {**self.base_env, **AWS_ENVIRONMENT}
        for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL"):
            env.pop(name, None)
        port = free_port()
        moto = self.processes.start(
            "moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env
        )
        endpoint = f"http://127.0.0.1:{port}"
        self.processes.wait_http("moto", moto, endpoint + "/moto-api/")
        import boto3

        boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        ).create_bucket(Bucket="pfx-bench")
        cluster = self.root / "postgres"
        self.cleanups.append(lambda: stop_postgres(cluster))
        database_url = start_postgres(cluster)
        env |= {
            "PFX_S3_BUCKET": "pfx-bench",
            "PFX_S3_ENDPOINT": endpoint,
            "PFX_DATABASE_URL": database_url,
        }
        server = "registry S3+PostgreSQL"
        url, process = self.registry_with_concept("s3", env)
        try:
            self.sweep("s3.resolve", server, "resolve", url + RESOLVE_PATH)
            self.sweep("s3.download", server, "download (streamed)", url + DOWNLOAD_PATH)
            self.sweep("s3.oci_blob", server, "OCI blob (streamed)", url + self.oci_blob_path)
        finally:
            self.processes.stop(process)
        url, process = self.start_registry(
            "s3-redirect", self.root / "s3", env | {"PFX_S3_REDIRECT": "1"}
        )
        try:
            self.sweep(
                "s3.redirect", server, "download (PFX_S3_REDIRECT=1: 307 only)", url + DOWNLOAD_PATH
            )
        finally:
            self.processes.stop(process)
            self.processes.stop(moto)
        self.emit_series(
            "Registry on S3 (moto server) + PostgreSQL 15, single uvicorn process",
            ["s3.resolve", "s3.download", "s3.oci_blob", "s3.redirect"],
        )

    # -- reference servers

    def baselines(self) -> None:
        """Section 3: nginx, pypiserver and bare FastAPI apps serving the same bytes."""
        www = self.root / "nginx" / "www"
        www.mkdir(parents=True)
        path = www / "concept.safetensors"
        path.write_bytes(self.concept)
        progress("nginx")
        port = free_port()
        conf = self.root / "nginx" / "nginx.conf"
        conf.write_text(NGINX_CONF.format(root=self.root / "nginx", port=port))
        nginx = self.processes.start(
            "nginx",
            [
                "nginx",
                "-e",
                str(self.root / "nginx" / "error.log"),
                "-c",
                str(conf),
                "-g",
                "daemon off;",
            ],
            self.base_env,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            self.processes.wait_http("nginx", nginx, url + "/")
            self.sweep(
                "nginx", "nginx (1 worker, sendfile)", "static file", url + "/concept.safetensors"
            )
        finally:
            self.processes.stop(nginx)

        progress("pypiserver")
        packages = self.root / "packages"
        packages.mkdir()
        package = packages / "pfx-bench-concept-1.0.tar.gz"
        with tarfile.open(package, "w:gz", compresslevel=1) as archive:
            archive.add(path, arcname="pfx-bench-concept-1.0/concept.safetensors")
        port = free_port()
        pypi = self.processes.start(
            "pypiserver",
            [
                executable("pypi-server"),
                "run",
                "-p",
                str(port),
                "-i",
                "127.0.0.1",
                "--disable-fallback",
                str(packages),
            ],
            self.base_env,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            self.processes.wait_http("pypiserver", pypi, url + "/health")
            self.sweep(
                "pypiserver",
                f"pypiserver (default: {self.server_header(url + '/health')})",
                "package file",
                f"{url}/packages/{package.name}",
            )
        finally:
            self.processes.stop(pypi)

        progress("bare FastAPI apps")
        (self.root / "bare").mkdir()
        (self.root / "bare" / "bench_bare_app.py").write_text(BARE_APP)
        port = free_port()
        bare = self.processes.start(
            "bare-fastapi",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "bench_bare_app:app",
                "--app-dir",
                str(self.root / "bare"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            self.base_env | {"PFX_BENCH_FILE": str(path)},
        )
        url = f"http://127.0.0.1:{port}"
        try:
            self.processes.wait_http("bare-fastapi", bare, url + "/json")
            server = "bare FastAPI (uvicorn)"
            self.sweep("bare.json", server, "constant JSON (async def)", url + "/json")
            self.sweep(
                "bare.json-sync", server, "constant JSON (def, threadpool)", url + "/json-sync"
            )
            self.sweep("bare.file", server, "FileResponse", url + "/file")
            self.sweep("bare.memory", server, "bytes from memory", url + "/memory")
        finally:
            self.processes.stop(bare)
        self.emit_series(
            "Reference servers on the same machine, same 64 KiB file",
            ["nginx", "pypiserver", "bare.json", "bare.json-sync", "bare.file", "bare.memory"],
        )

    # -- publish

    def publish(self) -> None:
        """Section 4: upload + publish of distinct concepts, sequential and 8 threads."""
        progress("publish throughput (folder + SQLite)")
        data = self.root / "publish"
        url, process = self.start_registry("publish", data, self.base_env)
        token = self.admin_token(data, self.base_env)
        pool_size = 300 if self.quick else 1500
        payloads = [concept_bytes(seed, "F16", name=f"Concept {seed}") for seed in range(pool_size)]
        cursor = iter(enumerate(payloads))
        lock = threading.Lock()
        rows = []

        def worker(deadline: float, done: list[float], errors: list[str]) -> None:
            with httpx.Client(trust_env=False, timeout=60) as client:
                while time.monotonic() < deadline:
                    with lock:
                        item = next(cursor, None)
                    if item is None:
                        return
                    index, payload = item
                    started = time.perf_counter()
                    try:
                        push(client, url, token, f"push-{index}", payload)
                    except httpx.HTTPError as error:
                        errors.append(str(error))
                        continue
                    done.append((time.perf_counter() - started) * 1e3)

        try:
            for threads in (1, 8):
                done: list[float] = []
                errors: list[str] = []
                started = time.monotonic()
                deadline = started + self.seconds
                workers = [
                    threading.Thread(target=worker, args=(deadline, done, errors))
                    for _ in range(threads)
                ]
                for thread in workers:
                    thread.start()
                for thread in workers:
                    thread.join()
                elapsed = time.monotonic() - started
                rows.append(
                    (
                        "sequential" if threads == 1 else f"{threads} threads",
                        f"{len(payloads[0]):,} B",
                        len(done),
                        fmt(len(done) / elapsed, 1),
                        fmt(statistics.median(done), 1) if done else "—",
                        fmt(percentile(done, 0.99), 1) if done else "—",
                        len(errors),
                    )
                )
        finally:
            self.processes.stop(process)
        headers = ("clients", "file", "pushes", "pushes/s", "p50 ms", "p99 ms", "errors")
        print_table(
            "Publish throughput, folder + SQLite (PUT blob + PUT version per push, httpx)",
            headers,
            rows,
        )

    # -- search

    def search_index(self) -> tuple[Path, dict[str, Any]]:
        """The populated SQLite index the search and pages sections read (made once a run) and
        what :func:`populate_index` says of it."""
        data = self.root / "search"
        if self.search_facts is None:
            data.mkdir()
            progress(f"populating the SQLite index with {self.search_rows:,} concepts")
            started = time.monotonic()
            self.search_facts = populate_index(data, self.search_rows)
            progress(f"populated in {time.monotonic() - started:.1f} s")
        return data, self.search_facts

    def search(self) -> None:
        """Section 5: search latency over a populated SQLite index."""
        data, facts = self.search_index()
        url, process = self.start_registry("search", data, self.base_env)
        queries = [
            ("no words (newest 20)", {}),
            (f"common word ({facts['common']:,} indexed)", {"q": COMMON_WORD}),
            (f"rare word ({facts['rare']} indexed)", {"q": RARE_WORD}),
            ("common word + family=sdxl", {"q": COMMON_WORD, "family": "sdxl"}),
            ("common word, sort=recent", {"q": COMMON_WORD, "sort": "recent"}),
            ("two words", {"q": f"{COMMON_WORD} dog"}),
            ("no match", {"q": "qqqxqqq"}),
        ]
        rows = []
        budget = self.seconds
        try:
            with httpx.Client(trust_env=False, timeout=120) as client:
                for label, params in queries:
                    progress(f"search: {label}")
                    response = client.get(url + "/v1/search", params=params)
                    response.raise_for_status()
                    found = len(response.json()["results"])
                    times: list[float] = []
                    deadline = time.monotonic() + budget
                    while len(times) < 200 and (time.monotonic() < deadline or len(times) < 5):
                        times.append(timed_get(client, url + "/v1/search", params))
                    p50 = statistics.median(times)
                    self.search_p50[label] = p50
                    query = "&".join(f"{k}={v}" for k, v in params.items()) or "(empty)"
                    rows.append(
                        (
                            label,
                            f"`{query}`",
                            found,
                            len(times),
                            fmt(p50, 1),
                            fmt(percentile(times, 0.99), 1),
                            "met" if p50 <= SEARCH_P50_MS else "MISSED",
                        )
                    )
        finally:
            self.processes.stop(process)
        headers = ("query", "params", "results", "requests", "p50 ms", "p99 ms", "p50 ≤ 10 ms")
        print_table(
            f"Search latency at {self.search_rows:,} indexed concepts "
            "(SQLite, anonymous, sequential httpx)",
            headers,
            rows,
        )

    # -- catalog pages

    def pages(self) -> None:
        """Section 6: the web catalog's pages beside their JSON twins, on the search index."""
        data, facts = self.search_index()
        if facts["example"] is None:
            raise RuntimeError("the index holds no public concept with a preview: more rows")
        ns, name = facts["example"]
        pairs: list[tuple[str, str | None]] = [
            ("/", None),
            (f"/-/search?q={COMMON_WORD}", f"/v1/search?q={COMMON_WORD}"),
            ("/-/search", "/v1/search"),
            (
                f"/-/search?q={COMMON_WORD}&family=sdxl",
                f"/v1/search?q={COMMON_WORD}&family=sdxl",
            ),
            (f"/{ns}/{name}", f"/v1/concepts/{ns}/{name}"),
            (f"/{ns}", f"/v1/concepts/{ns}"),
        ]
        rows = []
        weights: dict[str, tuple[int, dict[str, int]]] = {}
        url, process = self.start_registry("pages", data, self.base_env)
        try:
            with httpx.Client(trust_env=False, timeout=120) as client:
                for page_path, json_path in pairs:
                    progress(f"pages: {page_path} beside {json_path or 'nothing'}")
                    html = client.get(url + page_path)
                    html.raise_for_status()
                    assets = {
                        link: len(client.get(url + link).raise_for_status().content)
                        for link in dict.fromkeys(STATIC_LINK.findall(html.text))
                    }
                    weights[page_path] = (len(html.content), assets)
                    paths = [page_path] if json_path is None else [page_path, json_path]
                    times = interleaved(client, [url + path for path in paths], PAGE_REQUESTS)
                    page_p50 = statistics.median(times[0])
                    self.page_p50[page_path] = page_p50
                    json_p50 = statistics.median(times[1]) if json_path else math.nan
                    rows.append(
                        (
                            f"`{page_path}`",
                            f"`{json_path}`" if json_path else "—",
                            fmt(page_p50, 1),
                            fmt(percentile(times[0], 0.99), 1),
                            fmt(json_p50, 1) if json_path else "—",
                            fmt(percentile(times[1], 0.99), 1) if json_path else "—",
                            f"{page_p50 / json_p50:.1f}×" if json_path else "—",
                            "met" if page_p50 <= PAGE_P50_MS else "MISSED",
                        )
                    )
        finally:
            self.processes.stop(process)
        headers = (
            "page",
            "JSON twin",
            "page p50 ms",
            "page p99 ms",
            "JSON p50 ms",
            "JSON p99 ms",
            "page / JSON (p50)",
            f"page p50 ≤ {PAGE_P50_MS:g} ms",
        )
        print_table(
            f"Catalog pages beside their JSON twins at {self.search_rows:,} indexed concepts "
            f"(SQLite, anonymous; {PAGE_REQUESTS} sequential httpx requests each after a "
            "warm-up, page and twin alternating; client-observed over loopback, an upper bound "
            "of server time)",
            headers,
            rows,
        )
        weight_rows = []
        for page_path, (html_bytes, assets) in weights.items():
            total = html_bytes + sum(assets.values())
            self.page_bytes[page_path] = total
            linked = ", ".join(
                f"{link.split('/')[-1].split('?')[0]} {size:,}" for link, size in assets.items()
            )
            weight_rows.append(
                (
                    f"`{page_path}`",
                    html_bytes,
                    linked,
                    total,
                    "met" if total < PAGE_BYTES else "MISSED",
                )
            )
        print_table(
            "Page weight: the HTML and the static files it links (uncompressed bytes; preview "
            "thumbnails not counted)",
            ("page", "HTML B", "linked CSS, JS, icon (B)", "total B", f"< {PAGE_BYTES:,} B"),
            weight_rows,
        )

    # -- targets

    def targets(self) -> None:
        """The issue's targets beside the measured numbers (where both sides were measured)."""
        rows: list[tuple[object, ...]] = []

        def ratio(key: str, base: str, goal: float, label: str) -> None:
            if key not in self.series or base not in self.series:
                return
            for connections in CONNECTIONS:
                mine = self.series[key].results[connections].requests_per_s
                theirs = self.series[base].results[connections].requests_per_s
                value = mine / theirs if theirs else math.nan
                rows.append(
                    (
                        label,
                        connections,
                        f"{fmt(mine, 0)} / {fmt(theirs, 0)}",
                        f"{value:.2f}×",
                        f"≥ {goal:g}×",
                        "met" if value >= goal else "MISSED",
                    )
                )

        def p99(key: str, label: str) -> None:
            if key not in self.series:
                return
            for connections, result in self.series[key].results.items():
                rows.append(
                    (
                        label,
                        connections,
                        f"p99 {fmt(result.p99_ms, 2)} ms",
                        "",
                        f"≤ {RESOLVE_P99_MS:g} ms",
                        "met" if result.requests and result.p99_ms <= RESOLVE_P99_MS else "MISSED",
                    )
                )

        for prefix, name in (("embedded", "folder+SQLite"), ("s3", "S3+PostgreSQL")):
            ratio(f"{prefix}.download", "nginx", DOWNLOAD_VS_NGINX, f"download {name} vs nginx")
            ratio(
                f"{prefix}.download",
                "pypiserver",
                DOWNLOAD_VS_PYPISERVER,
                f"download {name} vs pypiserver",
            )
            ratio(
                f"{prefix}.resolve",
                "bare.json",
                RESOLVE_VS_BARE_JSON,
                f"resolve {name} vs bare JSON",
            )
            p99(f"{prefix}.resolve", f"resolve {name}")
            ratio(
                f"{prefix}.oci_blob",
                f"{prefix}.download",
                OCI_BLOB_VS_DOWNLOAD,
                f"/v2/ blob vs /v1/ download {name}",
            )

        def p50_goal(label: str, p50: float, goal: float) -> None:
            met = "met" if p50 <= goal else "MISSED"
            rows.append((label, 1, f"p50 {fmt(p50, 1)} ms", "", f"≤ {goal:g} ms", met))

        for label, p50 in self.search_p50.items():
            p50_goal(f"search: {label}", p50, SEARCH_P50_MS)
        for page_path, p50 in self.page_p50.items():
            p50_goal(f"page: `{page_path}`", p50, PAGE_P50_MS)
        for page_path, total in self.page_bytes.items():
            met = "met" if total < PAGE_BYTES else "MISSED"
            weight = (f"page weight: `{page_path}`", "—", f"{total:,} B", "", f"< {PAGE_BYTES:,} B")
            rows.append((*weight, met))
        if rows:
            headers = (
                "target",
                "conns",
                "measured (req/s: registry / reference)",
                "ratio",
                "goal",
                "",
            )
            print_table("The issue's targets", headers, rows)


# -- PostgreSQL ------------------------------------------------------------------------------


def start_postgres(directory: Path) -> str:
    """A throwaway cluster in ``directory`` (``.ci/postgres start``); its database URL."""
    result = subprocess.run(
        [str(POSTGRES_SCRIPT), "start", str(directory)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise RuntimeError(f".ci/postgres start failed: {result.stderr.strip()}")
    return lines[-1]


def stop_postgres(directory: Path) -> None:
    """Stop the cluster and remove its folder (``.ci/postgres stop``)."""
    if directory.exists():
        subprocess.run(
            [str(POSTGRES_SCRIPT), "stop", str(directory)],
            capture_output=True,
            timeout=60,
            check=False,
        )


# -- the search index ------------------------------------------------------------------------

COMMON_WORD = "portrait"
RARE_WORD = "zeppelin"
SUPERCLASSES = (
    "dog", "cat", "person", "man", "woman", "car", "teddy", "toy", "bird", "house", "chair",
    "mug", "shoe", "bag", "robot", "castle", "tree", "flower", "guitar", "bicycle", "lamp",
    "statue", "boat", "clock", "horse", "vase", "backpack", "sneaker", "sofa", "cake",
)  # fmt: skip
LABELS = ("style", "object", "person", "animal", "toy", "art", "photo", "3d", "anime", "vintage")
LICENSES = ("CC-BY-4.0", "MIT", "openrail++", "CC0-1.0", None)


def vocabulary(rng: random.Random, size: int) -> list[str]:
    """Synthetic words from syllables, none containing the common or rare probe words."""
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "te", "vo", "zu", "pe", "dri", "glo",
                 "shan", "tor", "bel", "quin", "mar", "fen", "os", "ul"]  # fmt: skip
    words: set[str] = set()
    while len(words) < size:
        word = "".join(rng.choice(syllables) for _ in range(rng.randint(2, 4)))
        if COMMON_WORD not in word and RARE_WORD not in word and "dog" not in word:
            words.add(word)
    return sorted(words)


def populate_index(data: Path, count: int, seed: int = 7) -> dict[str, Any]:
    """Fill a fresh SQLite index in ``data`` with ``count`` repositories (about 5 % private),
    each with one version of its own concept blob tagged ``latest``; varied names, tokens,
    superclasses, descriptions and download counts; a license and author on some files and a
    preview on about a quarter. Returns how many concepts hold the common and the rare word, and
    ``example``: ``(namespace, name)`` of a public concept with a preview and a license."""
    from sqlalchemy import insert

    from pfx_registry.db import (
        accounts,
        blobs,
        concept_files,
        create_index_engine,
        previews,
        repositories,
        tags,
        versions,
    )
    from pfx_registry.migrate import upgrade

    try:
        from pfx_registry.search import refresh
    except ImportError:  # a registry whose search scans the core tables needs no documents
        refresh = None

    rng = random.Random(seed)
    # What the catalog pages show beyond search draws from its own generator, so the searchable
    # text (and the search section's counts) stay those of earlier runs.
    extras = random.Random(seed + 1)
    example: tuple[str, str] | None = None
    words = vocabulary(rng, 4000)
    engine = create_index_engine(f"sqlite:///{data / 'index.db'}")
    upgrade(engine)
    families = ("sd-1", "sd-2", "sdxl")
    rare_rows = set(rng.sample(range(count), min(5, count)))
    common = 0
    owners = 200
    with engine.begin() as connection:
        connection.execute(
            insert(accounts),
            [{"id": i + 1, "name": f"user{i}", "kind": "user"} for i in range(owners)],
        )
        for start in range(0, count, 10_000):
            blob_rows, fact_rows, repository_rows, version_rows = [], [], [], []
            tag_rows, preview_rows = [], []
            for i in range(start, min(count, start + 10_000)):
                digest = pf.content_digest(f"concept {i}".encode())
                family = rng.choices(families, weights=(5, 2, 3))[0]
                superclass = rng.choice(SUPERCLASSES)
                text = rng.sample(words, rng.randint(6, 18))
                if rng.random() < 0.3:
                    text.insert(rng.randrange(len(text) + 1), COMMON_WORD)
                    common += 1
                if i in rare_rows:
                    text.append(RARE_WORD)
                name = f"{rng.choice(words)}-{superclass}-{i}"
                blob_rows.append({"digest": digest, "size": 34048, "media_type": pf.MEDIA_TYPE})
                fact_rows.append(
                    {
                        "digest": digest,
                        "weights_digest": pf.content_digest(digest.encode()),
                        "format_version": pf.FORMAT_VERSION,
                        "title": f"{rng.choice(words).title()} {superclass}",
                        "token": f"<{rng.choice(words)}{i % 997}>",
                        "superclass": superclass,
                        "family": family,
                        "base_fingerprint": "sha256:" + "0" * 64,
                        "dtype": rng.choice(("F16", "F32", "BF16")),
                        "signers": "",
                        "license": extras.choice(LICENSES),
                        "author": f"Author {i % 997}" if extras.random() < 0.5 else None,
                    }
                )
                repository_rows.append(
                    {
                        "id": i + 1,
                        "namespace_id": 1 + i % owners,
                        "name": name,
                        "private": rng.random() < 0.05,
                        "description": " ".join(text).capitalize() + ".",
                        "labels": " ".join(rng.sample(LABELS, rng.randint(0, 3))),
                        "downloads": int(extras.paretovariate(1.2)) - 1,  # mostly 0, a long tail
                    }
                )
                version_rows.append(
                    {"id": i + 1, "repository_id": i + 1, "version": "1.0", "digest": digest}
                )
                tag_rows.append({"repository_id": i + 1, "tag": "latest", "version_id": i + 1})
                if extras.random() < 0.25:
                    image = pf.content_digest(f"preview {i}".encode())
                    blob_rows.append({"digest": image, "size": 20_000, "media_type": "image/png"})
                    preview_rows.append(
                        {"repository_id": i + 1, "digest": image, "media_type": "image/png"}
                    )
                    public = not repository_rows[-1]["private"]
                    if example is None and public and fact_rows[-1]["license"]:
                        example = (f"user{i % owners}", name)
            connection.execute(insert(blobs), blob_rows)
            connection.execute(insert(concept_files), fact_rows)
            connection.execute(insert(repositories), repository_rows)
            connection.execute(insert(versions), version_rows)
            connection.execute(insert(tags), tag_rows)
            if preview_rows:
                connection.execute(insert(previews), preview_rows)
            if refresh is not None:  # the registry's own search documents (full-text index)
                for row in repository_rows:
                    refresh(connection, row["id"])
    engine.dispose()
    return {"common": common, "rare": len(rare_rows), "example": example}


# -- main ------------------------------------------------------------------------------------


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def temporary_root() -> Iterator[Path]:
    """A temporary folder, open to the nginx and postgres OS users (they run as others)."""
    root = Path(tempfile.mkdtemp(prefix="pfx-bench-registry-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run the chosen sections and print their tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2-second runs, a smaller pool")
    parser.add_argument("--duration", type=float, help="seconds per wrk run (default 5; quick 2)")
    parser.add_argument(
        "--only", action="append", choices=SECTIONS, help="run only this section (repeatable)"
    )
    parser.add_argument(
        "--search-rows", type=int, default=100_000, help="concepts in the search index"
    )
    arguments = parser.parse_args(argv)
    sections = arguments.only or list(SECTIONS)
    seconds = arguments.duration or (2.0 if arguments.quick else 5.0)
    missing = missing_tools(sections)
    if missing:
        print("bench.registry: missing tools: " + ", ".join(missing), file=sys.stderr)
        for tool in missing:
            print(f"  {tool}: {INSTALL[tool]}", file=sys.stderr)
        return 2
    # Also when started where SIGINT is ignored (a background job): Ctrl-C/kill must clean up.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    print("## Registry benchmark (loopback)\n")
    print(machine_table())
    print(f"\nLoad average at the start (1, 5, 15 min): {load_average()}")
    print(
        f"\nwrk -t2 -c{{1,16,64}} -d{seconds:g}s --latency (-t1 at one connection), after a "
        "1-second warm-up; client and servers share the CPUs above. The registry runs as "
        "`pfx-registry serve` (one uvicorn process) with PFX_RATE_LIMIT_TOKEN=0 and "
        "PFX_RATE_LIMIT_ADDRESS=0: one client would otherwise be refused with 429."
    )
    failed = []
    with temporary_root() as root:
        bench = Bench(root, seconds, arguments.quick, arguments.search_rows)
        try:
            for section in SECTIONS:
                if section not in sections:
                    continue
                try:
                    getattr(bench, section)()
                except (
                    RuntimeError,
                    OSError,
                    httpx.HTTPError,
                    subprocess.SubprocessError,
                ) as error:
                    failed.append(section)
                    print_section(f"Section {section} FAILED", f"```\n{error}\n```")
            bench.targets()
        except KeyboardInterrupt:
            progress("interrupted; cleaning up")
            return 130
        finally:
            bench.close()
    print(f"\nLoad average at the end: {load_average()}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
