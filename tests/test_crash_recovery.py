"""A run killed with SIGKILL at any moment, followed by a normal run, leaves every sink as one clean run would."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.csv as pacsv
import pytest
from conftest import REPO, SAMPLE, Sandbox, changelog_table, delta_table, make_sandbox, query, warehouse_table
from conftest import snapshot as snapshot_of

from retail_bronze_source.crash_points import POINTS
from retail_bronze_source.sinks.warehouse import undo_interrupted_jobs, warehouse_pipeline

TABLES = ["customers", "order_items", "events", "sensors"]
OUTPUTS = [*TABLES, "rejects", "manifest_processed_files"]


def _start(box: Sandbox, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "bronze_dlt_pipeline.py"), "--raw", str(box.raw), "--lake",
         str(box.lake), "--warehouse", str(box.warehouse), "--pipelines-dir", str(box.pipelines_dir),
         "--tables", ",".join(TABLES)],
        cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run(box: Sandbox, env: dict[str, str] | None = None) -> int:
    process = _start(box, env)
    _, err = process.communicate(timeout=600)
    assert process.returncode in (0, -signal.SIGKILL), err
    return process.returncode


def snapshot(box: Sandbox) -> dict[str, dict[str, list[tuple[Any, ...]]]]:
    """Every output in every sink, without the columns that differ between runs."""
    return snapshot_of(box, TABLES)


def _sandbox(root: Path) -> Sandbox:
    raw = root / "raw"
    shutil.copytree(SAMPLE, raw)
    return make_sandbox(root, raw=raw)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, list[tuple[Any, ...]]]]:
    box = _sandbox(tmp_path_factory.mktemp("clean"))
    assert _run(box) == 0
    state = snapshot(box)
    assert all(state[name]["duckdb"] for name in OUTPUTS)
    return state


def _assert_rejects_csv_complete(box: Sandbox) -> None:
    """The rejects CSVs hold every reject record of the warehouse, one file per table and load."""
    expected = sorted(query(box.warehouse, "SELECT table_name, load_id, count(*) FROM bronze.rejects GROUP BY ALL"))
    written = sorted((path.parent.name, path.stem, pacsv.read_csv(path).num_rows)
                     for path in (box.lake / "_rejects").glob("*/*.csv"))
    assert written == expected


def _assert_sinks_agree_on_run_columns(box: Sandbox) -> None:
    for name in TABLES:
        stamps = [set(t["ingestion_ts"].to_pylist()) for t in (warehouse_table(box.warehouse, name),
                                                              changelog_table(box.lake, name),
                                                              delta_table(box.lake, name))]
        assert stamps[0] == stamps[1] == stamps[2], name


KILL_POINTS = {"file_staged": 3, "warehouse_loaded": 1, "lake_loaded": 1, "delta_table_mirrored": 3}
"""Each crash point, and the how-many-th time it is reached when the run is killed."""


def test_every_crash_point_is_covered() -> None:
    assert set(KILL_POINTS) == set(POINTS)


@pytest.mark.slow
@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_kill_at_a_point_then_a_normal_run_equals_a_clean_run(tmp_path: Path, point: str, clean: dict) -> None:
    box = _sandbox(tmp_path)
    crash = {"RETAIL_BRONZE_CRASH_AT": point, "RETAIL_BRONZE_CRASH_AFTER": str(KILL_POINTS[point])}
    assert _run(box, crash) == -signal.SIGKILL
    assert _run(box) == 0
    assert snapshot(box) == clean
    _assert_sinks_agree_on_run_columns(box)
    _assert_rejects_csv_complete(box)


@pytest.mark.slow
def test_random_kills_over_several_rounds_then_a_normal_run_equals_a_clean_run(tmp_path: Path, clean: dict) -> None:
    box = _sandbox(tmp_path)
    rng = random.Random(20261123)
    killed = 0
    for _ in range(4):
        process = _start(box)
        time.sleep(rng.uniform(0.5, 6.0))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            killed += 1
        process.communicate(timeout=600)
    assert _run(box) == 0
    assert killed >= 1
    assert snapshot(box) == clean
    _assert_sinks_agree_on_run_columns(box)
    _assert_rejects_csv_complete(box)


KILL_AROUND_JOB_COMMIT = """
import os, signal, sys
sys.path.insert(0, os.getcwd())
from dlt.common.storages.load_package import PackageStorage
from retail_bronze_source.cli import main

table, moment = sys.argv[1], sys.argv[2]
record = PackageStorage.save_pending_transition

def save_pending_transition(self, load_id, file_name, state, failed_message=None):
    ours = file_name.startswith(table + ".") and file_name.endswith(".parquet") and state == "completed"
    if ours and moment == "before_marker":
        os.kill(os.getpid(), signal.SIGKILL)
    record(self, load_id, file_name, state, failed_message)
    if ours and moment == "after_marker":
        os.kill(os.getpid(), signal.SIGKILL)

PackageStorage.save_pending_transition = save_pending_transition
sys.exit(main(sys.argv[3:]))
"""
"""Kills the CLI right after DuckDB committed a load job of one table: before dlt wrote the job's completion marker
(dlt runs the job again) or just after it (dlt only records it)."""


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["before_marker", "after_marker"])
@pytest.mark.parametrize(("table", "loaded_into"), [
    ("events", "bronze"),  # an append table: new files load as plain append
    ("customers", "bronze"),  # a merge table's first load: plain append too
    ("rejects", "bronze"),  # reject records: plain append too, undone by their values
    ("manifest_processed_files", "bronze_staging"),  # delete-insert: the job loads dlt's staging dataset
])
def test_kill_after_a_job_committed_then_a_normal_run_equals_a_clean_run(tmp_path: Path, table: str, loaded_into: str,
                                                                       moment: str, clean: dict) -> None:
    box = _sandbox(tmp_path)
    args = ["--raw", str(box.raw), "--lake", str(box.lake), "--warehouse", str(box.warehouse), "--pipelines-dir",
            str(box.pipelines_dir), "--tables", ",".join(TABLES)]
    killed = subprocess.run([sys.executable, "-c", KILL_AROUND_JOB_COMMIT, table, moment, *args], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert query(box.warehouse, f"SELECT count(*) FROM {loaded_into}.{table}")[0][0] > 0
    assert _run(box) == 0
    assert snapshot(box) == clean
    _assert_sinks_agree_on_run_columns(box)


KILL_AT_SECOND_REJECTS_JOB = """
import os, signal, sys
sys.path.insert(0, os.getcwd())
from datetime import UTC, datetime
import dlt
import pyarrow as pa
from dlt.common.storages.load_package import PackageStorage
from retail_bronze_source.outputs import REJECTS_OUTPUT_SCHEMA, REJECTS_TABLE
from retail_bronze_source.sinks import LOADER_FILE_FORMAT
from retail_bronze_source.sinks.warehouse import warehouse_pipeline

record, completed = PackageStorage.save_pending_transition, []

def save_pending_transition(self, load_id, file_name, state, failed_message=None):
    if file_name.startswith(REJECTS_TABLE + ".") and state == "completed":
        completed.append(file_name)
        if len(completed) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    record(self, load_id, file_name, state, failed_message)

PackageStorage.save_pending_transition = save_pending_transition
values = {"ingestion_ts": datetime(2026, 11, 30, tzinfo=UTC), "table_name": "orders", "src_filename": "orders_1.csv", "src_row_number": 7, "reason_code": "NOT_NULL",
          "column_name": "order_id", "reason_detail": "order_id is empty", "raw_record": "{}", "load_id": "1"}
records = pa.Table.from_pylist([values, values], schema=REJECTS_OUTPUT_SCHEMA)
resource = dlt.resource([records, records], name=REJECTS_TABLE, write_disposition="append")
from pathlib import Path
warehouse_pipeline(Path(sys.argv[1]), "undo_test", pipelines_dir=sys.argv[2]).run(
    resource, loader_file_format=LOADER_FILE_FORMAT)
"""
"""Loads two jobs of identical reject records (2 each) and dies after DuckDB committed the second job, before dlt
wrote its completion marker."""


@pytest.mark.slow
def test_undoing_an_interrupted_rejects_job_keeps_equal_records_of_completed_jobs(tmp_path: Path) -> None:
    warehouse, pipelines_dir = tmp_path / "warehouse.duckdb", tmp_path / "pipelines"
    killed = subprocess.run([sys.executable, "-c", KILL_AT_SECOND_REJECTS_JOB, str(warehouse), str(pipelines_dir)],
                            cwd=REPO, env={**os.environ, "DATA_WRITER__FILE_MAX_ITEMS": "1",
                                           "NORMALIZE__PARQUET_NORMALIZER__ADD_DLT_LOAD_ID": "true"}, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert query(warehouse, "SELECT count(*) FROM bronze.rejects")[0][0] == 4

    pipeline = warehouse_pipeline(warehouse, "undo_test", pipelines_dir=str(pipelines_dir))
    assert undo_interrupted_jobs(pipeline) == 1
    assert query(warehouse, "SELECT count(*) FROM bronze.rejects")[0][0] == 2  # the completed job's records stay
    pipeline.load(raise_on_failed_jobs=False)
    assert query(warehouse, "SELECT count(*), count(DISTINCT _dlt_load_id) FROM bronze.rejects")[0] == (4, 1)


def test_sweep_removes_only_rows_of_loads_newer_than_the_last_completed_one(tmp_path: Path) -> None:
    """Rows no completed load accounts for go, down to the seventh decimal of a load id; older rows stay."""
    import duckdb
    import pyarrow as pa

    from retail_bronze_source.sinks.warehouse import sweep_orphans

    warehouse = tmp_path / "warehouse.duckdb"
    pipeline = warehouse_pipeline(warehouse, "sweep_test", pipelines_dir=str(tmp_path / "pipelines"))
    pipeline.run(pa.table({"n": [1, 2, 3], "_dlt_load_id": ["x", "x", "x"]}), table_name="t")
    completed = query(warehouse, "SELECT load_id FROM bronze._dlt_loads WHERE status = 0")[0][0]
    whole, fraction = completed.split(".")
    later = f"{whole}.{int(fraction.ljust(7, '0')) + 1:07d}"  # the next load id a clock could give
    earlier = f"{int(whole) - 1}.9999999"
    with duckdb.connect(str(warehouse)) as con:
        con.execute("UPDATE bronze.t SET _dlt_load_id = ?", [completed])
        con.execute("INSERT INTO bronze.t (n, _dlt_load_id) VALUES (4, ?), (5, ?), (6, ?)", [later, later, earlier])

    assert sweep_orphans(pipeline, {"t"}, None) == 2
    assert query(warehouse, "SELECT n FROM bronze.t ORDER BY n") == [(1,), (2,), (3,), (6,)]
