"""Raw files and the lake in an S3 bucket (a real SeaweedFS server on loopback, keys it checks): the same rows in
every sink as on local disk, credentials the dlt way and never written anywhere, one-line refusals that write
nothing, a lease that keeps runs from interleaving, and other engines reading the lake."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO, SAMPLE, Sandbox, _comparable, make_sandbox, query, run_cli, snapshot, warehouse_table
from deltalake import DeltaTable
from s3_server import S3Server, load_duckdb_extensions

TABLES = ["customers", "order_items", "events", "sensors", "returns", "exchange_rates"]
Snapshot = dict[str, dict[str, list[tuple[Any, ...]]]]
RAW_SECTION = "SOURCES__RETAIL_BRONZE__CREDENTIALS"
LAKE_SECTION = "DESTINATION__RETAIL_BRONZE_LAKE__CREDENTIALS"

pytestmark = pytest.mark.slow


def _clean_env() -> dict[str, str]:
    """This process's environment without any AWS or dlt credential: each test says where its keys come from."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("AWS_", "SOURCES__", "DESTINATION__", "CREDENTIALS__"))}


def _dlt_env(server: S3Server, **identities: Any) -> dict[str, str]:
    """Credentials in the source's and the lake's dlt sections."""
    return {**server.dlt_env(RAW_SECTION, identities.get("raw")), **server.dlt_env(LAKE_SECTION, identities.get("lake"))}


def _upload(server: S3Server, bucket: str, prefix: str, tables: list[str], source: Path = SAMPLE) -> None:
    fs = fsspec.filesystem("s3", **server.fsspec_options())
    for table in tables:
        for path in sorted((source / table).rglob("*")):
            if path.is_file():
                fs.put_file(str(path), f"{bucket}/{prefix}/{path.relative_to(source).as_posix()}")


def _run(box: Sandbox, raw: str, lake: str, env: dict[str, str], *extra: str,
         tables: list[str] = TABLES) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bronze_dlt_pipeline.py"), "--raw", raw, "--lake", lake,
         "--warehouse", str(box.warehouse), "--pipelines-dir", str(box.pipelines_dir), "--tables", ",".join(tables),
         *extra], cwd=box.warehouse.parent.parent, env={**_clean_env(), **env}, capture_output=True, text=True,
        timeout=600)


def _s3_lake_snapshot(server: S3Server, lake: str, box: Sandbox, tables: list[str]) -> Snapshot:
    """Every table in the warehouse, and in the change log and Delta read from the bucket."""
    fs = fsspec.filesystem("s3", **server.fsspec_options())
    root = lake.removeprefix("s3://")
    out: Snapshot = {}
    for name in [*tables, "rejects", "manifest_processed_files"]:
        files = sorted(p for p in fs.find(f"{root}/bronze/parquet/{name}") if p.endswith(".parquet"))
        parts = [pq.read_table(p, filesystem=fs) for p in files]
        log = pa.concat_tables(parts, promote_options="permissive")
        delta = DeltaTable(f"{lake}/bronze/delta/{name}", storage_options=server.delta_storage_options())
        out[name] = {"duckdb": _comparable(warehouse_table(box.warehouse, name)), "parquet": _comparable(log),
                     "delta": _comparable(delta.to_pyarrow_table())}
    return out


def local_snapshot(root: Path, tables: list[str]) -> Snapshot:
    """Every sink after a run of the sample's `tables` from and into local disk under `root`."""
    raw = root / "raw"
    for table in tables:
        shutil.copytree(SAMPLE / table, raw / table)
    box = make_sandbox(root, raw=raw)
    done = run_cli("--raw", str(raw), "--lake", str(box.lake), "--warehouse", str(box.warehouse), "--pipelines-dir",
                   str(box.pipelines_dir), "--tables", ",".join(tables), env=_clean_env())
    assert done.returncode == 0, done.stderr
    return snapshot(box, tables)


@pytest.fixture(scope="module")
def local_clean(tmp_path_factory: pytest.TempPathFactory) -> Snapshot:
    """The same tables loaded from and into local disk."""
    return local_snapshot(tmp_path_factory.mktemp("local"), TABLES)


def test_raw_and_lake_in_a_bucket_hold_what_a_local_run_holds(s3_server: S3Server, s3_bucket: str, tmp_path: Path,
                                                                local_clean: Snapshot) -> None:
    _upload(s3_server, s3_bucket, "drops", TABLES)
    box = make_sandbox(tmp_path)
    raw, lake = f"s3://{s3_bucket}/drops", f"s3://{s3_bucket}/lake"
    first = _run(box, raw, lake, _dlt_env(s3_server))
    assert first.returncode == 0, first.stderr
    assert _s3_lake_snapshot(s3_server, lake, box, TABLES) == local_clean
    versions = {t: DeltaTable(f"{lake}/bronze/delta/{t}", storage_options=s3_server.delta_storage_options()).version()
                for t in TABLES}
    loads = warehouse_table(box.warehouse, "_dlt_loads").num_rows
    again = _run(box, raw, lake, _dlt_env(s3_server))
    assert again.returncode == 0, again.stderr
    assert warehouse_table(box.warehouse, "_dlt_loads").num_rows == loads  # nothing new: no load at all
    assert versions == {t: DeltaTable(f"{lake}/bronze/delta/{t}",
                                      storage_options=s3_server.delta_storage_options()).version() for t in TABLES}
    assert _s3_lake_snapshot(s3_server, lake, box, TABLES) == local_clean
    fs = fsspec.filesystem("s3", **s3_server.fsspec_options())
    csvs = sorted(p.rsplit("/", 2)[-2] for p in fs.find(f"{s3_bucket}/lake/_rejects") if p.endswith(".csv"))
    assert csvs == [row[0] for row in query(box.warehouse, "SELECT DISTINCT table_name FROM bronze.rejects ORDER BY 1")]
    assert len(csvs) >= 4
    assert not [p for p in fs.find(f"{s3_bucket}/lake/_retail_bronze") if "probe-" in p or p.endswith("lease.json")]


def _every_byte(server: S3Server, bucket: str, *local: Path) -> list[tuple[str, bytes]]:
    """Every object of the bucket and every file under the local folders, with its bytes."""
    fs = fsspec.filesystem("s3", **server.fsspec_options())
    found = [(f"s3://{p}", fs.cat_file(p)) for p in fs.find(bucket)]
    for folder in local:
        found += [(str(p), p.read_bytes()) for p in folder.rglob("*") if p.is_file()]
    return found


def test_credentials_come_from_dlt_sections_and_are_never_written(s3_server: S3Server, s3_bucket: str,
                                                                  tmp_path: Path) -> None:
    _upload(s3_server, s3_bucket, "drops", ["customers", "returns"])
    box = make_sandbox(tmp_path)
    lake = f"s3://{s3_bucket}/lake"
    secret = s3_server.admin.secret_key
    done = _run(box, f"s3://{s3_bucket}/drops", lake, _dlt_env(s3_server), tables=["customers", "returns"])
    assert done.returncode == 0, done.stderr
    assert query(box.warehouse, "SELECT count(*) FROM bronze.returns")[0][0] > 0  # the Delta input, read from S3
    info = subprocess.run([str(Path(sys.executable).parent / "dlt"), "pipeline", "--pipelines-dir",
                           str(box.pipelines_dir), done.stdout.split("inspect: dlt pipeline")[1].split()[2], "trace"],
                          env={**_clean_env(), **_dlt_env(s3_server)}, capture_output=True, text=True, timeout=300)
    leaks = [name for name, data in _every_byte(s3_server, s3_bucket, box.pipelines_dir, box.warehouse.parent)
             if secret.encode() in data]
    assert leaks == []
    assert secret not in done.stdout + done.stderr + info.stdout + info.stderr


def test_plain_aws_variables_keep_working(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    _upload(s3_server, s3_bucket, "drops", ["customers", "returns"])
    box = make_sandbox(tmp_path)
    env = {k: v for k, v in s3_server.delta_storage_options().items() if k != "AWS_ALLOW_HTTP"}
    done = _run(box, f"s3://{s3_bucket}/drops", f"s3://{s3_bucket}/lake", env, tables=["customers", "returns"])
    assert done.returncode == 0, done.stderr
    delta = DeltaTable(f"s3://{s3_bucket}/lake/bronze/delta/returns", storage_options=s3_server.delta_storage_options())
    assert delta.to_pyarrow_table().num_rows == query(box.warehouse, "SELECT count(*) FROM bronze.returns")[0][0] > 0


@pytest.mark.parametrize("fault", ["closed endpoint", "missing bucket", "wrong secret", "read-only key",
                                   "key without any permission"])
def test_an_unusable_bucket_is_refused_in_one_line_before_anything_is_written(
        s3_server: S3Server, s3_bucket: str, tmp_path: Path, fault: str) -> None:
    _upload(s3_server, s3_bucket, "drops", ["customers"])
    box = make_sandbox(tmp_path)
    raw, lake = f"s3://{s3_bucket}/drops", f"s3://{s3_bucket}/lake"
    env = _dlt_env(s3_server)
    expected = {"closed endpoint": "cannot reach the endpoint", "missing bucket": "does not exist",
                "wrong secret": "the credentials were refused", "read-only key": "permission denied",
                "key without any permission": "cannot read the raw root"}[fault]
    if fault == "closed endpoint":
        env[f"{LAKE_SECTION}__ENDPOINT_URL"] = "http://127.0.0.1:9"
    elif fault == "missing bucket":
        raw = "s3://no-such-bucket-here/drops"  # SeaweedFS makes a missing bucket on a write, so the raw side
    elif fault == "wrong secret":
        env[f"{LAKE_SECTION}__AWS_SECRET_ACCESS_KEY"] = "not-the-secret"
    elif fault == "read-only key":
        # The reader may read and list the server's first bucket only: the raw root is readable, the lake is not.
        _upload(s3_server, s3_server.bucket, "drops", ["customers"])
        raw, lake = f"s3://{s3_server.bucket}/drops", f"s3://{s3_server.bucket}/lake-{s3_bucket}"
        env = _dlt_env(s3_server, raw=s3_server.reader, lake=s3_server.reader)
    else:
        env = _dlt_env(s3_server, raw=s3_server.nobody)
    started = time.monotonic()
    done = _run(box, raw, lake, env, tables=["customers"])
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("error: ") and expected in line, line
    assert s3_server.admin.secret_key not in line and "not-the-secret" not in line
    assert time.monotonic() - started < 60
    assert not box.warehouse.exists()
    fs = fsspec.filesystem("s3", **s3_server.fsspec_options())
    if fs.exists(lake.removeprefix("s3://")):
        assert fs.find(lake.removeprefix("s3://")) == []


def test_a_held_lease_makes_another_run_wait_then_refuse_naming_the_holder(
        s3_server: S3Server, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from retail_bronze_source.lease import lake_lease
    from retail_bronze_source.storage import LAKE_SECTION as SECTION
    from retail_bronze_source.storage import open_store

    _upload(s3_server, s3_bucket, "drops", ["customers"])
    box = make_sandbox(tmp_path)
    raw, lake = f"s3://{s3_bucket}/drops", f"s3://{s3_bucket}/lake"
    for name, value in s3_server.dlt_env(LAKE_SECTION).items():
        monkeypatch.setenv(name, value)
    with lake_lease(open_store(lake, SECTION), timeout=5):
        started = time.monotonic()
        refused = _run(box, raw, lake, _dlt_env(s3_server), "--lock-timeout", "3", tables=["customers"])
        assert refused.returncode == 2
        assert time.monotonic() - started >= 3
        [line] = refused.stderr.splitlines()
        assert f"another run holds the lake {lake} (pid {os.getpid()} on " in line and "waited 3 s" in line
    done = _run(box, raw, lake, _dlt_env(s3_server), "--lock-timeout", "3", tables=["customers"])
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("holder", ["dead process of this host", "expired lease of another host",
                                    "live lease of another host"])
def test_a_dead_or_expired_lease_is_taken_over_and_a_live_one_is_not(
        s3_server: S3Server, s3_bucket: str, tmp_path: Path, holder: str) -> None:
    import socket

    _upload(s3_server, s3_bucket, "drops", ["customers"])
    box = make_sandbox(tmp_path)
    raw, lake = f"s3://{s3_bucket}/drops", f"s3://{s3_bucket}/lake"
    if holder == "dead process of this host":
        gone = subprocess.Popen(["true"])
        gone.wait()
        body = {"holder": f"pid {gone.pid} on {socket.gethostname()}", "pid": gone.pid,
                "host": socket.gethostname(), "ttl_seconds": 3600, "nonce": "a"}
    else:
        ttl = 1 if holder.startswith("expired") else 3600
        body = {"holder": "pid 4242 on elsewhere", "pid": 4242, "host": "elsewhere", "ttl_seconds": ttl,
                "nonce": "b"}
    s3_server.client().put_object(Bucket=s3_bucket, Key="lake/_retail_bronze/lease.json",
                                  Body=json.dumps(body).encode())
    time.sleep(2)
    done = _run(box, raw, lake, _dlt_env(s3_server), "--lock-timeout", "2", tables=["customers"])
    if holder.startswith("live"):
        assert done.returncode == 2 and "another run holds the lake" in done.stderr
        assert "pid 4242 on elsewhere" in done.stderr
        return
    assert done.returncode == 0, done.stderr
    assert query(box.warehouse, "SELECT count(*) FROM bronze.customers")[0][0] > 0
    fs = fsspec.filesystem("s3", **s3_server.fsspec_options())
    assert not fs.exists(f"{s3_bucket}/lake/_retail_bronze/lease.json")  # released at the end of the run


def test_two_concurrent_runs_on_one_bucket_lake_serialize(s3_server: S3Server, s3_bucket: str,
                                                          tmp_path: Path, local_clean: Snapshot) -> None:
    _upload(s3_server, s3_bucket, "drops", TABLES)
    box = make_sandbox(tmp_path)
    raw, lake = f"s3://{s3_bucket}/drops", f"s3://{s3_bucket}/lake"
    command = [sys.executable, str(REPO / "scripts" / "bronze_dlt_pipeline.py"), "--raw", raw, "--lake", lake,
               "--warehouse", str(box.warehouse), "--pipelines-dir", str(box.pipelines_dir), "--tables",
               ",".join(TABLES), "--lock-timeout", "300"]
    env = {**_clean_env(), **_dlt_env(s3_server)}
    runs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outcomes = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outcomes
    assert query(box.warehouse, "SELECT count(*) FROM bronze._dlt_loads")[0][0] == 1
    assert _s3_lake_snapshot(s3_server, lake, box, TABLES) == local_clean


@pytest.mark.parametrize(("point", "after"), [("warehouse_loaded", 1), ("lake_loaded", 1),
                                              ("delta_table_mirrored", 3), ("random", 0)])
def test_a_run_killed_on_the_way_to_the_bucket_converges(s3_server: S3Server, s3_bucket: str, tmp_path: Path,
                                                         local_clean: Snapshot, point: str, after: int) -> None:
    _upload(s3_server, s3_bucket, "drops", TABLES)
    box = make_sandbox(tmp_path)
    raw, lake = f"s3://{s3_bucket}/drops", f"s3://{s3_bucket}/lake"
    env = _dlt_env(s3_server)
    if point == "random":
        command = [sys.executable, str(REPO / "scripts" / "bronze_dlt_pipeline.py"), "--raw", raw, "--lake", lake,
                   "--warehouse", str(box.warehouse), "--pipelines-dir", str(box.pipelines_dir), "--tables",
                   ",".join(TABLES)]
        for delay in (4.0, 7.0, 10.0):
            run = subprocess.Popen(command, env={**_clean_env(), **env}, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
            time.sleep(delay)
            run.kill()
            run.wait()
    else:
        killed = _run(box, raw, lake, {**env, "RETAIL_BRONZE_CRASH_AT": point,
                                       "RETAIL_BRONZE_CRASH_AFTER": str(after)})
        assert killed.returncode == -9, killed.stderr
    done = _run(box, raw, lake, env)
    assert done.returncode == 0, done.stderr
    assert _s3_lake_snapshot(s3_server, lake, box, TABLES) == local_clean


@pytest.mark.parametrize("where", ["local disk", "bucket"])
def test_other_engines_read_the_lake(s3_server: S3Server, s3_bucket: str, tmp_path: Path, where: str) -> None:
    """DuckDB (`delta_scan`, `read_parquet(..., union_by_name = true)`), polars and Sail (the Spark API without a
    JVM) each read the same rows as the warehouse holds."""
    import polars as pl

    tables = ["customers", "events"]
    box = make_sandbox(tmp_path)
    if where == "bucket":
        _upload(s3_server, s3_bucket, "drops", tables)
        raw, lake = f"s3://{s3_bucket}/drops", f"s3://{s3_bucket}/lake"
        options: dict[str, str] | None = s3_server.delta_storage_options()
    else:
        for table in tables:
            shutil.copytree(SAMPLE / table, box.raw / table)
        raw, lake, options = str(box.raw), str(box.lake), None
    done = _run(box, raw, lake, _dlt_env(s3_server), tables=tables)
    assert done.returncode == 0, done.stderr
    sail_env = {**_clean_env(), **(options or {}), "AWS_EC2_METADATA_DISABLED": "true"}
    sail = subprocess.run([sys.executable, str(REPO / "tests" / "cases" / "s3" / "sail_read.py"),
                           *(f"delta:{lake}/bronze/delta/{t}" for t in tables)], env=sail_env, capture_output=True,
                          text=True, timeout=300)
    assert sail.returncode == 0, sail.stderr[-2000:]
    sail_rows = {json.loads(line)["location"].rsplit("/", 1)[-1]: json.loads(line) for line in sail.stdout.splitlines()}
    for table in tables:
        expected = sorted(r[0] for r in query(box.warehouse, f"SELECT src_row_hash FROM bronze.{table}"))
        with duckdb.connect() as con:
            load_duckdb_extensions(con, "httpfs", "delta")
            if options:
                con.execute(s3_server.duckdb_secret_sql())
            scanned = sorted(r[0] for r in con.execute(
                f"SELECT src_row_hash FROM delta_scan('{lake}/bronze/delta/{table}')").fetchall())
            logged = sorted(r[0] for r in con.execute(
                f"SELECT src_row_hash FROM read_parquet('{lake}/bronze/parquet/{table}/*.parquet', "
                "union_by_name = true)").fetchall())
        polars = pl.read_delta(f"{lake}/bronze/delta/{table}", storage_options=options)
        column = sail_rows[table]["columns"].index("src_row_hash")
        assert scanned == expected and logged == expected and len(expected) > 100
        assert sorted(polars["src_row_hash"].to_list()) == expected
        assert sorted(row[column] for row in sail_rows[table]["rows"]) == expected


def test_the_source_reads_a_bucket_inside_a_users_own_pipeline(s3_server: S3Server, s3_bucket: str, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """`retail_source(raw_url="s3://...")` in a pipeline of the user's own, its credentials in the source's dlt
    section, into a DuckDB destination and into dlt's filesystem destination in the bucket."""
    import dlt

    from retail_bronze_source import retail_source

    _upload(s3_server, s3_bucket, "drops", ["customers", "returns"])
    for name, value in {**s3_server.dlt_env(RAW_SECTION),
                        **s3_server.dlt_env("DESTINATION__FILESYSTEM__CREDENTIALS")}.items():
        monkeypatch.setenv(name, value)
    raw = f"s3://{s3_bucket}/drops"
    into_duckdb = dlt.pipeline("mine", destination=dlt.destinations.duckdb(str(tmp_path / "mine.duckdb")),
                               dataset_name="bronze", pipelines_dir=str(tmp_path / "p"))
    into_duckdb.run(retail_source(raw_url=raw, table_names=["customers", "returns"]), loader_file_format="parquet")
    into_bucket = dlt.pipeline("mine_s3", destination=dlt.destinations.filesystem(f"s3://{s3_bucket}/mine"),
                               dataset_name="bronze", pipelines_dir=str(tmp_path / "p"))
    into_bucket.run(retail_source(raw_url=raw, table_names=["customers", "returns"]), loader_file_format="parquet")
    fs = fsspec.filesystem("s3", **s3_server.fsspec_options())
    for table in ("customers", "returns"):
        files = [p for p in fs.find(f"{s3_bucket}/mine/bronze/{table}") if p.endswith(".parquet")]
        in_bucket = sorted(pa.concat_tables([pq.read_table(p, filesystem=fs) for p in files])["src_row_hash"].to_pylist())
        in_duckdb = sorted(r[0] for r in query(tmp_path / "mine.duckdb", f"SELECT src_row_hash FROM bronze.{table}"))
        assert in_bucket == in_duckdb and len(in_duckdb) > 10


def test_a_lost_warehouse_is_restored_from_the_lake_in_the_bucket(s3_server: S3Server, s3_bucket: str,
                                                                  tmp_path: Path, local_clean: Snapshot) -> None:
    _upload(s3_server, s3_bucket, "drops", TABLES)
    box = make_sandbox(tmp_path)
    raw, lake = f"s3://{s3_bucket}/drops", f"s3://{s3_bucket}/lake"
    assert _run(box, raw, lake, _dlt_env(s3_server)).returncode == 0
    box.warehouse.unlink()
    shutil.rmtree(box.pipelines_dir)
    done = _run(box, raw, lake, _dlt_env(s3_server))
    assert done.returncode == 0, done.stderr
    assert "restored from the lake's Delta tables" in done.stdout
    assert _s3_lake_snapshot(s3_server, lake, box, TABLES) == local_clean
    other = make_sandbox(tmp_path / "other")
    refused = _run(other, raw, lake, _dlt_env(s3_server))
    assert refused.returncode == 2 and f"the lake {lake} mirrors the warehouse" in refused.stderr


def test_a_dry_run_reads_a_bucket_and_writes_nothing(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    _upload(s3_server, s3_bucket, "drops", ["customers"])
    box = make_sandbox(tmp_path)
    done = _run(box, f"s3://{s3_bucket}/drops", f"s3://{s3_bucket}/lake", _dlt_env(s3_server), "--dry-run",
                tables=["customers"])
    assert done.returncode == 0, done.stderr
    [line] = [line for line in done.stdout.splitlines() if line.startswith("customers")]
    assert int(line.split()[1]) == len(list((SAMPLE / "customers").iterdir()))
    fs = fsspec.filesystem("s3", **s3_server.fsspec_options())
    assert not fs.exists(f"{s3_bucket}/lake") or fs.find(f"{s3_bucket}/lake") == []
    assert not box.warehouse.exists()


def _orders_day(first_customer: int) -> bytes:
    """A day of 200 orders whose customers are numbered from `first_customer` (the sample knows 1 to 300)."""
    header = ("order_id,customer_id,store_id,order_ts,order_dt,status,channel,currency,total_amount,customer_email,"
              "note,updated_at\n")
    return (header + "".join(f"{200000 + i},{first_customer + i},{1 + i % 30},2024-03-09T10:{i % 60:02d}:00+00:00,"
                             f"2024-03-09,paid,web,EUR,{10 + i}.50,,,2024-03-09T11:00:00+00:00\n"
                             for i in range(200))).encode()


def test_write_audit_publish_on_a_bucket_lake_publishes_nothing_until_the_audits_pass(
        s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    tables = ["customers", "stores", "orders"]
    delivery = "orders/orders_2024-03-09.csv"
    local = make_sandbox(tmp_path / "local", raw=tmp_path / "local" / "raw")
    for table in tables:
        shutil.copytree(SAMPLE / table, local.raw / table)
    (local.raw / delivery).write_bytes(_orders_day(first_customer=1))
    never_failed = run_cli("--raw", str(local.raw), "--lake", str(local.lake), "--warehouse", str(local.warehouse),
                           "--pipelines-dir", str(local.pipelines_dir), "--tables", ",".join(tables), env=_clean_env())
    assert never_failed.returncode == 0, never_failed.stderr

    _upload(s3_server, s3_bucket, "drops", tables)
    box = make_sandbox(tmp_path / "s3")
    raw, lake = f"s3://{s3_bucket}/drops", f"s3://{s3_bucket}/lake"
    fs = fsspec.filesystem("s3", skip_instance_cache=True, use_listings_cache=False, **s3_server.fsspec_options())

    def published() -> dict[str, bytes]:
        """Every data object of the lake (change log, Delta, rejects CSVs), not the run records and pages."""
        return {p: fs.cat_file(p) for folder in ("bronze", "_rejects") for p in fs.find(f"{s3_bucket}/lake/{folder}")}

    assert _run(box, raw, lake, _dlt_env(s3_server), "--wap", tables=tables).returncode == 0
    before = published()
    assert any("/bronze/delta/orders/_delta_log/" in p for p in before)

    fs.pipe_file(f"{s3_bucket}/drops/{delivery}", _orders_day(first_customer=900001))
    failed = _run(box, raw, lake, _dlt_env(s3_server), "--wap", tables=tables)
    assert failed.returncode == 4, failed.stderr
    assert "audit failed: orders references:customer_id->customers" in failed.stderr
    assert published() == before
    assert (box.warehouse.with_name(box.warehouse.name + ".wap") / box.warehouse.name).exists()
    run_id = failed.stdout.split("load-info ")[1].split(";")[0]
    record = json.loads(fs.cat_file(f"{s3_bucket}/lake/_retail_bronze/runs/{run_id}.json"))
    assert (record["status"], record["exit_code"], record["wap"]["outcome"]) == ("audit_failed", 4, "failed")

    fs.pipe_file(f"{s3_bucket}/drops/{delivery}", _orders_day(first_customer=1))
    fixed = _run(box, raw, lake, _dlt_env(s3_server), "--wap", tables=tables)
    assert fixed.returncode == 0, fixed.stderr
    assert not box.warehouse.with_name(box.warehouse.name + ".wap").exists()
    assert _s3_lake_snapshot(s3_server, lake, box, tables) == snapshot(local, tables)
