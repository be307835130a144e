"""``make cluster``: the scaled-out shape on one machine, in the foreground.

A throwaway PostgreSQL 15 (``.ci/postgres``), the S3-protocol server (moto's server mode), N
registry replicas (``pfx-registry serve``) on PostgreSQL + S3, and nginx in front
(deploy/nginx.conf, rendered) on http://127.0.0.1:8780. Prints the address and an administrator
token, runs until Ctrl-C, then stops everything and removes its temporary folder: nothing is left
running and nothing is written into the repository.

    python deploy/cluster.py [--port 8780] [--replicas 2] [--store s3|folder]

:class:`Cluster` is also what the nginx tests and bench/cluster.py start (and kill pieces of).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = Path(__file__).with_name("nginx.conf")
POSTGRES_SCRIPT = REPO / ".ci" / "postgres"
BIN = Path(sys.executable).parent
#: The internal location the registry hands downloads to (deploy/nginx.conf).
ACCEL_PREFIX = "/_pfx/store/"
#: Dummy credentials for the local S3-protocol server (it checks none).
AWS_LOCAL = {
    "AWS_ACCESS_KEY_ID": "pfx-local",
    "AWS_SECRET_ACCESS_KEY": "pfx-local",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


class ClusterError(Exception):
    """A part of the cluster did not start (the message says which and why)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def nginx_binary() -> str | None:
    """nginx's path (Debian: ``apt-get install -y nginx``), or None."""
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )


def render_nginx(
    *,
    listen: str,
    replicas: list[str],
    work: Path,
    secret: str,
    store_location: str,
    workers: int = 1,
) -> str:
    """deploy/nginx.conf with its ``{{NAME}}`` values filled in."""
    values = {
        "USER_LINE": "user root;" if os.geteuid() == 0 else "",
        "WORKERS": str(workers),
        "RUN_DIR": str(work / "run"),
        "LOG_DIR": str(work / "log"),
        "CACHE_DIR": str(work / "cache"),
        "LISTEN": listen,
        "UPSTREAM_SERVERS": "\n".join(
            f"        server {address} max_fails=1 fail_timeout=2s;" for address in replicas
        ),
        "SIGNED_URL_SECRET": secret,
        "STORE_LOCATION": store_location,
    }
    text = TEMPLATE.read_text()
    for name, value in values.items():
        text = text.replace("{{" + name + "}}", value)
    return text


def folder_store_location(data_dir: Path) -> str:
    """The internal store location for the folder store: files sent with sendfile."""
    return f"            alias {data_dir}/$1;"


def s3_store_location(endpoint: str, bucket: str) -> str:
    """The internal store location for S3: proxied to the bucket (path style), without the
    client's credentials; X-Accel-Redirect targets carry a presigned query."""
    host = urlsplit(endpoint).netloc
    return "\n".join(
        f"            {line}"
        for line in (
            f"proxy_pass {endpoint}/{bucket}/$1$is_args$args;",
            f"proxy_set_header Host {host};",
            'proxy_set_header Authorization "";',
            'proxy_set_header Cookie "";',
            "proxy_hide_header ETag;",
            "proxy_hide_header x-amz-request-id;",
            "proxy_hide_header x-amz-id-2;",
            "proxy_hide_header x-amzn-requestid;",
            "proxy_hide_header x-amz-sdk-checksum-algorithm;",
            "proxy_hide_header x-amz-content-sha256;",
            "proxy_hide_header Access-Control-Allow-Origin;",
        )
    )


def _output(command: list[str], failure: str, environment: dict[str, str] | None = None) -> str:
    """``command``'s stdout; ClusterError(``failure`` and the end of its stderr) if it fails."""
    result = subprocess.run(
        command, env=environment, capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        raise ClusterError(f"{failure}: {result.stderr.strip()[-500:]}")
    return result.stdout


@dataclass
class Cluster:
    """The processes of a local cluster (see the module docstring); a context manager."""

    port: int = 8780
    replicas: int = 2
    store: str = "s3"
    #: extra ``PFX_*`` settings for every replica
    settings: dict[str, str] = field(default_factory=dict)
    #: an existing PostgreSQL database to use instead of starting one (tests)
    database_url: str | None = None
    #: quiet: replica and moto output go to log files only
    work: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pfx-cluster-")))
    #: nginx worker processes
    nginx_workers: int = field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)))
    admin_token: str = ""
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    replica_ports: list[int] = field(default_factory=list)
    _processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _environment: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """nginx's address."""
        return f"http://127.0.0.1:{self.port}"

    def replica_url(self, index: int) -> str:
        """One replica's own address (bypassing nginx)."""
        return f"http://127.0.0.1:{self.replica_ports[index]}"

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_exception: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start every part, in dependency order, and wait until nginx answers."""
        nginx = nginx_binary()
        if nginx is None:
            raise ClusterError("nginx is not installed (Debian: apt-get install -y nginx)")
        self.work.chmod(0o755)  # PostgreSQL's own user needs to reach its folder inside
        for folder in ("run", "log", "cache", "data"):
            (self.work / folder).mkdir(parents=True, exist_ok=True)
        environment = {k: v for k, v in os.environ.items() if not k.startswith("PFX_")}
        environment |= AWS_LOCAL | {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1"}
        database_url = self.database_url or self._start_postgres()
        settings = {
            "PFX_DATA_DIR": str(self.work / "data"),
            "PFX_DATABASE_URL": database_url,
            "PFX_SIGNED_URL_SECRET": self.secret,
            "PFX_ACCEL_REDIRECT": ACCEL_PREFIX,
        }
        if self.store == "s3":
            endpoint = self._start_s3()
            settings |= {"PFX_S3_BUCKET": "pfx", "PFX_S3_ENDPOINT": endpoint}
            location = s3_store_location(endpoint, "pfx")
        else:
            location = folder_store_location(self.work / "data")
        self._environment = environment | settings | self.settings
        self.secret = self.settings.get("PFX_SIGNED_URL_SECRET") or self.secret
        self.admin_token = self._run(["admin", "create-token"]).split()[-1]
        self.replica_ports = [free_port() for _ in range(self.replicas)]
        for index in range(self.replicas):  # all at once, as a deployment would
            self.start_replica(index, wait=False)
        for index in range(self.replicas):
            self._wait(f"{self.replica_url(index)}/readyz", f"replica {index}")
        config = self.work / "nginx.conf"
        config.write_text(
            render_nginx(
                listen=f"127.0.0.1:{self.port}",
                replicas=[f"127.0.0.1:{port}" for port in self.replica_ports],
                work=self.work,
                secret=self.secret,
                store_location=location,
                workers=self.nginx_workers,
            )
        )
        self._spawn("nginx", [nginx, "-p", str(self.work), "-c", str(config), "-g", "daemon off;"])
        self._wait(f"{self.url}/readyz", "nginx")

    def _start_postgres(self) -> str:
        command = [str(POSTGRES_SCRIPT), "start", str(self.work / "postgres")]
        return _output(command, "PostgreSQL did not start").strip().splitlines()[-1]

    def _start_s3(self) -> str:
        port = free_port()
        self._spawn(
            "s3",
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            environment=os.environ | AWS_LOCAL,
        )
        endpoint = f"http://127.0.0.1:{port}"
        self._wait(f"{endpoint}/moto-api/", "the S3 server")
        httpx.put(f"{endpoint}/pfx", timeout=10, trust_env=False).raise_for_status()
        return endpoint

    def _run(self, arguments: list[str]) -> str:
        command = [str(BIN / "pfx-registry"), *arguments]
        return _output(command, f"pfx-registry {arguments[0]} failed", self._environment)

    def _spawn(
        self, name: str, command: list[str], environment: dict[str, str] | None = None
    ) -> None:
        with open(self.work / "log" / f"{name}.log", "ab") as log:
            self._processes[name] = subprocess.Popen(
                command,
                env=environment if environment is not None else self._environment,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches this script only; it stops the rest
            )

    def _wait(self, url: str, what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with suppress(httpx.TransportError):
                if httpx.get(url, timeout=2, trust_env=False).status_code < 500:
                    return
            time.sleep(0.1)
        logs = "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-1500:]}"
            for path in sorted((self.work / "log").glob("*.log"))
        )
        raise ClusterError(f"{what} did not answer at {url}\n{logs}")

    def start_replica(self, index: int, *, wait: bool = True) -> None:
        """Start replica ``index`` (again); with ``wait``, until it is ready."""
        port = self.replica_ports[index]
        command = [str(BIN / "pfx-registry"), "serve", "--port", str(port)]
        self._spawn(f"replica-{index}", command)
        if wait:
            self._wait(f"{self.replica_url(index)}/readyz", f"replica {index}")

    def kill_replica(self, index: int) -> None:
        """``kill -9`` replica ``index``."""
        process = self._processes.pop(f"replica-{index}")
        process.send_signal(signal.SIGKILL)
        process.wait()

    def postgres(self, action: str) -> None:
        """``pg_ctl stop`` (fast) or ``start`` the cluster's own PostgreSQL."""
        pg_bin = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
        command = [str(pg_bin / "pg_ctl"), "--pgdata", str(self.work / "postgres" / "data")]
        if action == "stop":
            command += ["--mode=fast", "--wait", "stop"]
        else:
            command += ["--log", str(self.work / "postgres" / "server.log"), "--wait", "start"]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, capture_output=True, timeout=60, check=True)

    def stop(self) -> None:
        """Stop every process (nginx first, PostgreSQL last) and remove the work folder."""
        for name in sorted(self._processes, key=lambda n: (n != "nginx", n.startswith("s3"))):
            process = self._processes[name]
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self._processes.clear()
        if (self.work / "postgres").exists():
            subprocess.run(
                [str(POSTGRES_SCRIPT), "stop", str(self.work / "postgres")],
                capture_output=True,
                timeout=60,
                check=False,
            )
        shutil.rmtree(self.work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Run a cluster in the foreground until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="make cluster", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8780, help="nginx's port (default 8780)")
    parser.add_argument("--replicas", type=int, default=2, help="registry replicas (default 2)")
    parser.add_argument("--store", choices=("s3", "folder"), default="s3", help="default s3")
    arguments = parser.parse_args(argv)
    cluster = Cluster(arguments.port, arguments.replicas, arguments.store)
    stop = False

    def interrupted(*_arguments: object) -> None:
        nonlocal stop
        stop = True

    # Ctrl-C (SIGINT) and SIGTERM both stop the cluster; set here explicitly, since a shell
    # that starts this in the background leaves SIGINT ignored.
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    try:
        with cluster:
            print(f"pfx cluster on {cluster.url}  (nginx → {arguments.replicas} replicas)")
            print(f"  admin token: {cluster.admin_token}")
            print(f"  replicas:    {', '.join(map(cluster.replica_url, range(cluster.replicas)))}")
            print(f"  logs:        {cluster.work / 'log'}  (removed on exit)")
            print(f"  try:         pfx login {cluster.url} --token <admin token>")
            print("Ctrl-C stops everything.", flush=True)
            while not stop:
                time.sleep(0.5)
    except ClusterError as error:
        print(f"make cluster: error: {error}", file=sys.stderr)
        return 1
    print("cluster stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
