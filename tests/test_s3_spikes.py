"""Verified recipes: every client the package uses, against a real S3 server (SeaweedFS on 127.0.0.1, plain http).

Credentials are always passed explicitly; the machine's AWS_* variables and ~/.aws files are hidden from each test.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import dlt
import duckdb
import polars as pl
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError
from conftest import REPO
from deltalake import DeltaTable, write_deltalake
from dlt.common.configuration.specs import AwsCredentials
from faults import FaultProxy
from fsspec.core import url_to_fs
from s3_server import S3Identity, S3Server, load_duckdb_extensions, running_s3_server

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _no_ambient_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Only what a test passes may sign its requests: no AWS_* variable, profile or instance metadata."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "DESTINATION__", "SOURCES__")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def proxy(s3_server: S3Server) -> Iterator[FaultProxy]:
    with FaultProxy(s3_server.endpoint_url) as running:
        yield running


def _code(error: ClientError) -> tuple[str, int]:
    return error.response["Error"]["Code"], error.response["ResponseMetadata"]["HTTPStatusCode"]


def _refused(call: Any) -> tuple[str, int]:
    with pytest.raises(ClientError) as raised:
        call()
    return _code(raised.value)


def _parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def test_server_checks_signatures_and_per_bucket_permissions(s3_server: S3Server) -> None:
    bucket, key = s3_server.bucket, f"perm/{secrets.token_hex(4)}"
    other = s3_server.create_bucket()
    admin = s3_server.client()
    admin.put_object(Bucket=bucket, Key=key, Body=b"v")
    admin.put_object(Bucket=other, Key=key, Body=b"v")
    reader = s3_server.client(s3_server.reader)
    assert reader.get_object(Bucket=bucket, Key=key)["Body"].read() == b"v"
    assert key in [o["Key"] for o in reader.list_objects_v2(Bucket=bucket, Prefix="perm/")["Contents"]]
    assert _refused(lambda: reader.put_object(Bucket=bucket, Key=key, Body=b"w")) == ("AccessDenied", 403)
    assert _refused(lambda: reader.get_object(Bucket=other, Key=key)) == ("AccessDenied", 403)
    nobody = s3_server.client(s3_server.nobody)
    assert _refused(lambda: nobody.list_objects_v2(Bucket=bucket)) == ("AccessDenied", 403)
    assert _refused(lambda: nobody.get_object(Bucket=bucket, Key=key)) == ("AccessDenied", 403)
    forged = s3_server.client(S3Identity("forged", s3_server.admin.access_key, "not-the-secret"))
    assert _refused(lambda: forged.get_object(Bucket=bucket, Key=key)) == ("SignatureDoesNotMatch", 403)
    unknown = s3_server.client(S3Identity("unknown", "AKNOSUCHKEY", "whatever"))
    assert _refused(lambda: unknown.get_object(Bucket=bucket, Key=key)) == ("InvalidAccessKeyId", 403)
    assert _refused(lambda: admin.list_objects_v2(Bucket="no-such-bucket")) == ("NoSuchBucket", 404)
    with pytest.raises(urllib.error.HTTPError) as unsigned:
        urllib.request.urlopen(f"{s3_server.endpoint_url}/{bucket}/{key}", timeout=5)
    assert unsigned.value.code == 403
    listening = {c.laddr.ip for c in psutil.Process(s3_server.pid).net_connections("inet")
                 if c.status == psutil.CONN_LISTEN}
    assert listening == {"127.0.0.1"}


def test_server_stops_with_its_sockets_and_data_when_the_block_fails(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="a failing test"), running_s3_server("first", root=tmp_path) as server:
        assert server.startup_seconds < 30
        assert server.client().list_buckets()["Buckets"][0]["Name"] == "first"
        started = server
        raise RuntimeError("a failing test")
    assert not psutil.pid_exists(started.pid)
    assert not started.data_dir.exists()
    assert not list(Path("/tmp").glob(f"seaweedfs-*-{started.ports['s3.port']}.sock"))
    for port in started.ports.values():
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))
            probe.listen()


def test_conditional_put_compare_and_swap_and_conditional_delete_are_atomic(s3_server: S3Server,
                                                                            s3_bucket: str) -> None:
    admin = s3_server.client()
    clients = [s3_server.client() for _ in range(8)]

    def race(write: Any) -> tuple[list[int], list[tuple[str, int]]]:
        winners: list[int] = []
        losers: list[tuple[str, int]] = []

        def attempt(i: int) -> None:
            try:
                write(clients[i], i)
                winners.append(i)
            except ClientError as error:
                losers.append(_code(error))

        threads = [threading.Thread(target=attempt, args=(i,)) for i in range(len(clients))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return winners, losers

    for round_ in range(3):
        winners, losers = race(lambda c, i, r=round_: c.put_object(Bucket=s3_bucket, Key=f"create/{r}",
                                                                    Body=str(i).encode(), IfNoneMatch="*"))
        assert len(winners) == 1 and losers == [("PreconditionFailed", 412)] * 7
        assert admin.get_object(Bucket=s3_bucket, Key=f"create/{round_}")["Body"].read() == str(winners[0]).encode()
        base = admin.put_object(Bucket=s3_bucket, Key="cas", Body=f"base {round_}".encode())["ETag"]
        winners, losers = race(lambda c, i, e=base: c.put_object(Bucket=s3_bucket, Key="cas", Body=str(i).encode(),
                                                                  IfMatch=e))
        assert len(winners) == 1 and losers == [("PreconditionFailed", 412)] * 7
    etag = admin.head_object(Bucket=s3_bucket, Key="cas")["ETag"]
    assert _refused(lambda: admin.delete_object(Bucket=s3_bucket, Key="cas", IfMatch='"0"')) == (
        "PreconditionFailed", 412)
    admin.delete_object(Bucket=s3_bucket, Key="cas", IfMatch=etag)
    assert _refused(lambda: admin.head_object(Bucket=s3_bucket, Key="cas"))[1] == 404


class LeaseHeld(Exception):
    """Another run holds the lease (and it has not expired)."""


@dataclass
class Lease:
    key: str
    etag: str


def _server_now(response: dict[str, Any]) -> datetime:
    return parsedate_to_datetime(response["ResponseMetadata"]["HTTPHeaders"]["date"])


def _lease_body(holder: str, ttl: int) -> bytes:
    return json.dumps({"holder": holder, "ttl_seconds": ttl, "nonce": secrets.token_hex(8)}).encode()


def take_lease(client: Any, bucket: str, key: str, holder: str, ttl: int) -> Lease:
    """The recipe: create with If-None-Match; a lease past its expiry (server clock) is taken over with If-Match."""
    for _ in range(3):
        try:
            created = client.put_object(Bucket=bucket, Key=key, Body=_lease_body(holder, ttl), IfNoneMatch="*")
            return Lease(key, created["ETag"])
        except ClientError as error:
            if _code(error)[0] != "PreconditionFailed":
                raise
        try:
            current = client.get_object(Bucket=bucket, Key=key)
        except ClientError as error:
            if _code(error)[0] == "NoSuchKey":
                continue
            raise
        lease = json.loads(current["Body"].read())
        expires = current["LastModified"] + timedelta(seconds=lease["ttl_seconds"])
        if _server_now(current) < expires:
            raise LeaseHeld(f"the lake is locked by {lease['holder']} until {expires.astimezone(UTC):%H:%M:%S} UTC")
        try:
            taken = client.put_object(Bucket=bucket, Key=key, Body=_lease_body(holder, ttl), IfMatch=current["ETag"])
            return Lease(key, taken["ETag"])
        except ClientError as error:
            if _code(error)[0] != "PreconditionFailed":
                raise
    raise LeaseHeld(f"the lease {key} changed hands while it was being taken")


def renew_lease(client: Any, bucket: str, lease: Lease, holder: str, ttl: int) -> Lease:
    """Extend a held lease; a 412 means another run took it over (this run must stop writing)."""
    renewed = client.put_object(Bucket=bucket, Key=lease.key, Body=_lease_body(holder, ttl), IfMatch=lease.etag)
    return Lease(lease.key, renewed["ETag"])


def release_lease(client: Any, bucket: str, lease: Lease) -> None:
    """Delete the lease only if it is still this holder's (a conditional DELETE)."""
    client.delete_object(Bucket=bucket, Key=lease.key, IfMatch=lease.etag)


def test_lease_recipe_serializes_runs_and_expires_a_dead_holder(s3_server: S3Server, s3_bucket: str) -> None:
    run_a, run_b = s3_server.client(), s3_server.client()
    key = "lake/.retail_bronze.lease"
    held = take_lease(run_a, s3_bucket, key, "run-a@host1 pid 11", ttl=60)
    with pytest.raises(LeaseHeld, match=r"locked by run-a@host1 pid 11 until \d\d:\d\d:\d\d UTC"):
        take_lease(run_b, s3_bucket, key, "run-b@host2 pid 22", ttl=60)
    held = renew_lease(run_a, s3_bucket, held, "run-a@host1 pid 11", ttl=60)
    release_lease(run_a, s3_bucket, held)
    dead = take_lease(run_b, s3_bucket, key, "run-b@host2 pid 22", ttl=0)
    contenders = [s3_server.client() for _ in range(4)]
    outcomes: dict[int, str] = {}

    def contend(i: int) -> None:
        try:
            take_lease(contenders[i], s3_bucket, key, f"run-{i}", ttl=60)
            outcomes[i] = "took"
        except LeaseHeld as refused:
            outcomes[i] = str(refused)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(len(contenders))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [i for i, outcome in outcomes.items() if outcome == "took"]
    assert len(winners) == 1
    holder = json.loads(run_a.get_object(Bucket=s3_bucket, Key=key)["Body"].read())["holder"]
    assert holder == f"run-{winners[0]}"
    assert all(f"run-{winners[0]}" in o or "changed hands" in o for i, o in outcomes.items() if i not in winners)
    assert _refused(lambda: renew_lease(run_b, s3_bucket, dead, "run-b@host2 pid 22", ttl=60)) == (
        "PreconditionFailed", 412)
    assert _refused(lambda: release_lease(run_b, s3_bucket, dead)) == ("PreconditionFailed", 412)
    assert json.loads(run_a.get_object(Bucket=s3_bucket, Key=key)["Body"].read())["holder"] == holder


@pytest.mark.parametrize("style", ["client_kwargs", "endpoint_url"])
def test_fsspec_lists_reads_and_gives_a_change_signature(s3_server: S3Server, s3_bucket: str, style: str) -> None:
    admin = s3_server.client()
    admin.put_object(Bucket=s3_bucket, Key="raw/orders/2024/a.csv", Body=b"id,x\n1,2\n")
    admin.put_object(Bucket=s3_bucket, Key="raw/orders/b.csv", Body=b"id,x\n3,4\n")
    who = s3_server.admin
    options: dict[str, Any] = (
        s3_server.fsspec_options() if style == "client_kwargs"
        else {"key": who.access_key, "secret": who.secret_key, "endpoint_url": s3_server.endpoint_url})
    fs, root = url_to_fs(f"s3://{s3_bucket}/raw", **options)
    assert root == f"{s3_bucket}/raw"
    assert fs.find(root) == [f"{s3_bucket}/raw/orders/2024/a.csv", f"{s3_bucket}/raw/orders/b.csv"]
    path = f"{s3_bucket}/raw/orders/b.csv"
    with fs.open(path, "rb") as handle:
        assert handle.read() == b"id,x\n3,4\n"
    listed = {e["name"]: e for e in fs.ls(f"{s3_bucket}/raw/orders", detail=True)}[path]
    fs.invalidate_cache()
    info = fs.info(path)
    assert (info["type"], info["size"], info["ETag"]) == ("file", 9, listed["ETag"])
    assert info["ETag"].startswith('"') and info["LastModified"].utcoffset() == timedelta(0)
    admin.put_object(Bucket=s3_bucket, Key="raw/orders/b.csv", Body=b"id,x\n3,4\n")
    fs.invalidate_cache()
    assert fs.info(path)["ETag"] == info["ETag"]
    admin.put_object(Bucket=s3_bucket, Key="raw/orders/b.csv", Body=b"id,x\n3,5\n")
    fs.invalidate_cache()
    changed = fs.info(path)
    assert changed["size"] == info["size"] and changed["ETag"] != info["ETag"]
    assert changed["LastModified"] >= info["LastModified"]
    admin.delete_object(Bucket=s3_bucket, Key="raw/orders/2024/a.csv")
    fs.invalidate_cache()
    assert fs.find(root) == [path]
    denied, _ = url_to_fs(f"s3://{s3_bucket}", **s3_server.fsspec_options(s3_server.nobody))
    with pytest.raises(PermissionError, match="Access Denied"):
        denied.ls(s3_bucket)
    with pytest.raises(FileNotFoundError, match="bucket does not exist"):
        fs.ls("no-such-bucket")


def test_s3fs_reports_a_failed_condition_on_seaweedfs_as_einval_not_file_exists(s3_server: S3Server,
                                                                                  s3_bucket: str) -> None:
    fs, _ = url_to_fs(f"s3://{s3_bucket}", **s3_server.fsspec_options())
    fs.pipe_file(f"{s3_bucket}/lease", b"a", mode="create")
    with pytest.raises(OSError) as raised:
        fs.pipe_file(f"{s3_bucket}/lease", b"b", mode="create")
    assert not isinstance(raised.value, FileExistsError) and raised.value.errno == 22
    cause = raised.value.__cause__
    assert isinstance(cause, ClientError) and _code(cause) == ("PreconditionFailed", 412)
    assert fs.cat_file(f"{s3_bucket}/lease") == b"a"


ROWS = pa.table({"id": pa.array([1, 2, 3], pa.int64()), "name": ["a", "b", "c"]})


@dlt.source(section="s3_spike", name="s3_spike")
def _listing_source(raw_url: str = dlt.config.value, credentials: AwsCredentials = dlt.secrets.value) -> Any:
    fs, root = url_to_fs(raw_url, **credentials.to_s3fs_credentials())

    @dlt.resource
    def files() -> Iterator[list[dict[str, str]]]:
        yield [{"path": path} for path in fs.find(root)]

    return files


@pytest.mark.parametrize("configured_by", ["dlt_section", "plain_aws_variables"])
def test_a_source_resolves_its_bucket_credentials_from_its_config_section_or_plain_aws_variables(
        s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch, configured_by: str) -> None:
    s3_server.client().put_object(Bucket=s3_bucket, Key="raw/orders/a.csv", Body=b"id\n1\n")
    monkeypatch.setenv("SOURCES__S3_SPIKE__RAW_URL", f"s3://{s3_bucket}/raw")
    if configured_by == "dlt_section":
        for name, value in s3_server.dlt_env("SOURCES__S3_SPIKE__CREDENTIALS").items():
            monkeypatch.setenv(name, value)
    else:
        for name, value in s3_server.delta_storage_options().items():
            monkeypatch.setenv(name, value)
    assert list(_listing_source().files) == [{"path": f"{s3_bucket}/raw/orders/a.csv"}]


@pytest.mark.parametrize("configured_by", ["environment", "code"])
def test_dlt_filesystem_destination_writes_parquet_and_delta_to_the_bucket(
        s3_server: S3Server, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        configured_by: str) -> None:
    bucket_url = f"s3://{s3_bucket}/lake"
    if configured_by == "environment":
        for name, value in s3_server.dlt_env("DESTINATION__FILESYSTEM__CREDENTIALS").items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("DESTINATION__FILESYSTEM__BUCKET_URL", bucket_url)
        destination: Any = "filesystem"
    else:
        credentials = AwsCredentials(aws_access_key_id=s3_server.admin.access_key,
                                     aws_secret_access_key=s3_server.admin.secret_key,
                                     endpoint_url=s3_server.endpoint_url, region_name=s3_server.region)
        destination = dlt.destinations.filesystem(bucket_url, credentials=credentials)
    pipeline = dlt.pipeline(f"s3_{configured_by}_{secrets.token_hex(3)}", destination=destination,
                            dataset_name="bronze", pipelines_dir=str(tmp_path / "pipelines"))

    @dlt.resource(table_name="mirror", table_format="delta", primary_key="id",
                  write_disposition={"disposition": "merge", "strategy": "upsert"})
    def mirror() -> Iterator[pa.Table]:
        yield ROWS

    info = pipeline.run([dlt.resource(ROWS, name="changes", write_disposition="append"), mirror()],
                        loader_file_format="parquet")
    assert not info.has_failed_jobs
    object_store = pipeline.destination_client().config.credentials.to_object_store_rs_credentials()
    assert object_store["aws_allow_http"] == "true"
    fs, _ = url_to_fs(bucket_url, **s3_server.fsspec_options())
    files = fs.find(f"{s3_bucket}/lake/bronze/changes")
    assert len(files) == 1 and files[0].endswith(".parquet")
    with fs.open(files[0], "rb") as handle:
        assert pq.read_table(handle).select(["id", "name"]).to_pylist() == ROWS.to_pylist()
    delta = DeltaTable(f"{bucket_url}/bronze/mirror", storage_options=s3_server.delta_storage_options())
    assert sorted(delta.to_pyarrow_table().select(["id", "name"]).to_pylist(), key=str) == ROWS.to_pylist()


SECRETS_TOML = """\
[destination.lake.credentials]
aws_access_key_id = "{key}"
aws_secret_access_key = "{secret}"
endpoint_url = "{endpoint}"
region_name = "{region}"
"""
CONFIG_TOML = """\
[destination.lake]
bucket_url = "s3://{bucket}/toml_lake"
"""
TOML_RUN = """\
import dlt, pyarrow as pa
pipeline = dlt.pipeline("toml_lake", destination=dlt.destinations.filesystem(destination_name="lake"),
                        dataset_name="bronze", pipelines_dir="pipelines")
info = pipeline.run(pa.table({"id": [1, 2]}), table_name="t", loader_file_format="parquet")
print(pipeline.destination_client().config.bucket_url, info.has_failed_jobs)
"""


def test_dlt_takes_a_named_lake_destination_from_secrets_and_config_toml(s3_server: S3Server, s3_bucket: str,
                                                                          tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / ".dlt").mkdir(parents=True)
    who = s3_server.admin
    (project / ".dlt" / "secrets.toml").write_text(SECRETS_TOML.format(
        key=who.access_key, secret=who.secret_key, endpoint=s3_server.endpoint_url, region=s3_server.region))
    (project / ".dlt" / "config.toml").write_text(CONFIG_TOML.format(bucket=s3_bucket))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DESTINATION__"))}
    done = subprocess.run([sys.executable, "-c", TOML_RUN], cwd=project, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [f"s3://{s3_bucket}/toml_lake", "False"]
    fs, _ = url_to_fs(f"s3://{s3_bucket}", **s3_server.fsspec_options())
    assert len(fs.find(f"{s3_bucket}/toml_lake/bronze/t")) == 1


def test_deltalake_commits_with_if_none_match_and_needs_no_locking_option(s3_server: S3Server, s3_bucket: str,
                                                                        proxy: FaultProxy) -> None:
    uri = f"s3://{s3_bucket}/delta/plain"
    options = s3_server.delta_storage_options(endpoint_url=proxy.url)
    write_deltalake(uri, pa.table({"id": [0]}), storage_options=options)
    write_deltalake(uri, pa.table({"id": [1]}), storage_options=options, mode="append")
    write_deltalake(uri, pa.table({"id": [2]}), storage_options={**options, "AWS_S3_ALLOW_UNSAFE_RENAME": "true"},
                    mode="append")
    commits = proxy.requests("PUT", r"_delta_log/\d{20}\.json$")
    assert [c.target.rsplit("/", 1)[1] for c in commits] == [f"{v:020d}.json" for v in range(3)]
    assert all(c.headers.get("if-none-match") == "*" and c.status == 200 for c in commits)
    assert not proxy.requests(path=r"_commit_|\.tmp|x-id=CopyObject")
    table = DeltaTable(uri, storage_options=s3_server.delta_storage_options())
    assert table.version() == 2 and sorted(table.to_pyarrow_table()["id"].to_pylist()) == [0, 1, 2]


def test_deltalake_concurrent_commits_each_win_one_version_and_lose_nothing(s3_server: S3Server, s3_bucket: str,
                                                                            proxy: FaultProxy) -> None:
    uri = f"s3://{s3_bucket}/delta/race"
    direct = s3_server.delta_storage_options()
    write_deltalake(uri, pa.table({"id": [0]}), storage_options=direct)
    stalled = proxy.inject("stall", method="PUT", path=r"_delta_log/0{19}1\.json$", seconds=1.0)
    late = threading.Thread(target=write_deltalake, args=(uri, pa.table({"id": [1]})),
                            kwargs={"storage_options": s3_server.delta_storage_options(endpoint_url=proxy.url),
                                    "mode": "append"})
    late.start()
    while stalled.fired == 0:
        time.sleep(0.01)
    write_deltalake(uri, pa.table({"id": [2]}), storage_options=direct, mode="append")
    late.join()
    assert [(c.target[-25:], c.status) for c in proxy.requests("PUT", r"_delta_log/")] == [
        ("00000000000000000001.json", 412), ("00000000000000000002.json", 200)]
    table = DeltaTable(uri, storage_options=direct)
    assert table.version() == 2 and sorted(table.to_pyarrow_table()["id"].to_pylist()) == [0, 1, 2]

    stress = f"s3://{s3_bucket}/delta/stress"
    write_deltalake(stress, pa.table({"writer": [-1], "i": [-1]}), storage_options=direct)

    def writer(n: int) -> None:
        for i in range(4):
            write_deltalake(stress, pa.table({"writer": [n], "i": [i]}), storage_options=direct, mode="append")

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    table = DeltaTable(stress, storage_options=direct)
    assert table.version() == 12 and len(table.history()) == 13
    rows = sorted((r["writer"], r["i"]) for r in table.to_pyarrow_table().to_pylist())
    assert rows == sorted([(-1, -1)] + [(n, i) for n in range(3) for i in range(4)])


def test_deltalake_retries_transient_faults_bounds_persistent_ones_and_reports_a_lost_commit_answer(
        s3_server: S3Server, s3_bucket: str, proxy: FaultProxy) -> None:
    direct = s3_server.delta_storage_options()
    proxied = s3_server.delta_storage_options(endpoint_url=proxy.url)
    transient = f"s3://{s3_bucket}/delta/transient"
    write_deltalake(transient, pa.table({"id": [0]}), storage_options=direct)
    proxy.inject("error", method="PUT", path=r"\.parquet$", status=503)
    proxy.inject("error", method="PUT", path=r"_delta_log/", status=500)
    write_deltalake(transient, pa.table({"id": [1]}), storage_options=proxied, mode="append")
    assert [e.status for e in proxy.requests("PUT")] == [503, 200, 500, 200]
    assert DeltaTable(transient, storage_options=direct).version() == 1

    persistent = f"s3://{s3_bucket}/delta/persistent"
    write_deltalake(persistent, pa.table({"id": [0]}), storage_options=direct)
    proxy.clear()
    proxy.inject("error", method="PUT", path=r"_delta_log/", status=503, times=None)
    started = time.monotonic()
    with pytest.raises(OSError, match="503 Service Unavailable"):
        write_deltalake(persistent, pa.table({"id": [1]}), mode="append",
                        storage_options={**proxied, "max_retries": "2", "retry_timeout": "5s"})
    assert time.monotonic() - started < 5 and len(proxy.requests("PUT", r"_delta_log/")) == 3
    assert DeltaTable(persistent, storage_options=direct).version() == 0

    lost = f"s3://{s3_bucket}/delta/lost"
    write_deltalake(lost, pa.table({"id": [0]}), storage_options=direct)
    proxy.clear()
    proxy.inject("drop_response", method="PUT", path=r"_delta_log/")
    with pytest.raises(OSError, match=r"_delta_log/0{19}1\.json") as raised:
        write_deltalake(lost, pa.table({"id": [1]}), storage_options=proxied, mode="append")
    assert "\x1b[" in str(raised.value)
    table = DeltaTable(lost, storage_options=direct)
    assert table.version() == 1 and sorted(table.to_pyarrow_table()["id"].to_pylist()) == [0, 1]


def test_duckdb_reads_parquet_and_delta_on_the_bucket_offline(s3_server: S3Server, s3_bucket: str,
                                                              tmp_path: Path) -> None:
    admin = s3_server.client()
    admin.put_object(Bucket=s3_bucket, Key="changes/t/1.parquet", Body=_parquet(pa.table({"id": [1, 2],
                                                                                           "v": ["a", "b"]})))
    admin.put_object(Bucket=s3_bucket, Key="changes/t/2.parquet", Body=_parquet(pa.table({"id": [3],
                                                                                           "w": [1.5]})))
    write_deltalake(f"s3://{s3_bucket}/delta/t", ROWS, storage_options=s3_server.delta_storage_options())
    with duckdb.connect() as con:
        con.execute(f"SET extension_directory = '{tmp_path / 'extensions'}'")
        con.execute("SET autoinstall_known_extensions = false")
        load_duckdb_extensions(con, "httpfs", "delta")
        con.execute(s3_server.duckdb_secret_sql())
        changes = con.execute(f"SELECT id, v, w FROM read_parquet('s3://{s3_bucket}/changes/t/*.parquet', "
                              "union_by_name = true) ORDER BY id").fetchall()
        mirror = con.execute(f"SELECT id, name FROM delta_scan('s3://{s3_bucket}/delta/t') ORDER BY id").fetchall()
    assert changes == [(1, "a", None), (2, "b", None), (3, None, 1.5)]
    assert mirror == [(1, "a"), (2, "b"), (3, "c")]
    assert not (tmp_path / "extensions").exists()
    with duckdb.connect() as con:
        load_duckdb_extensions(con, "httpfs", "delta")
        con.execute(s3_server.duckdb_secret_sql(identity=s3_server.nobody))
        with pytest.raises(duckdb.Error, match="403"):
            con.execute(f"SELECT count(*) FROM read_parquet('s3://{s3_bucket}/changes/t/*.parquet')").fetchall()
        with pytest.raises(duckdb.Error, match="privileges"):
            con.execute(f"SELECT count(*) FROM delta_scan('s3://{s3_bucket}/delta/t')").fetchall()


def test_polars_reads_delta_and_parquet_on_the_bucket(s3_server: S3Server, s3_bucket: str) -> None:
    options = s3_server.delta_storage_options()
    write_deltalake(f"s3://{s3_bucket}/delta/t", ROWS, storage_options=options)
    s3_server.client().put_object(Bucket=s3_bucket, Key="changes/1.parquet", Body=_parquet(ROWS))
    delta = pl.read_delta(f"s3://{s3_bucket}/delta/t", storage_options=options).sort("id")
    assert delta.select("id", "name").rows() == [(1, "a"), (2, "b"), (3, "c")]
    lazy = pl.scan_delta(f"s3://{s3_bucket}/delta/t", storage_options=options)
    assert lazy.select(pl.col("id").sum()).collect().item() == 6
    parquet = pl.read_parquet(f"s3://{s3_bucket}/changes/*.parquet", storage_options=options)
    assert parquet.sort("id").rows() == [(1, "a"), (2, "b"), (3, "c")]


def test_sail_reads_delta_locally_and_on_the_bucket(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    write_deltalake(str(tmp_path / "local"), ROWS)
    write_deltalake(f"s3://{s3_bucket}/delta/t", ROWS, storage_options=s3_server.delta_storage_options())
    s3_server.client().put_object(Bucket=s3_bucket, Key="changes/1.parquet", Body=_parquet(ROWS))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({**s3_server.delta_storage_options(), "AWS_EC2_METADATA_DISABLED": "true"})
    done = subprocess.run([sys.executable, str(REPO / "tests" / "cases" / "s3" / "sail_read.py"),
                           f"delta:{tmp_path / 'local'}", f"delta:s3://{s3_bucket}/delta/t",
                           f"parquet:s3://{s3_bucket}/changes/"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["rows"] for r in results] == [[[1, "a"], [2, "b"], [3, "c"]]] * 3
