"""Every run is recorded and answered later by `load-info`: new, no-op, changed, failed and killed-then-completed
runs; from the warehouse and the lake, from the lake alone, and for loads no run recorded (derived from the sinks)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pytest
from conftest import REPO, SAMPLE, Sandbox, box_args, make_sandbox, query, run_cli
from deltalake import DeltaTable

from retail_bronze_source import run as run_module
from retail_bronze_source.observe import load_info
from retail_bronze_source.observe.load_info import RunNotFound
from retail_bronze_source.observe.metrics import MetricsConfig
from retail_bronze_source.observe.record import RunRecord
from retail_bronze_source.observe.report import ReportConfig
from retail_bronze_source.run import Layout, run_bronze

TABLES = ["customers", "orders", "stores", "events"]


def _raw(root: Path) -> Path:
    raw = root / "raw"
    for table in TABLES:
        shutil.copytree(SAMPLE / table, raw / table)
    return raw


def _run(box: Sandbox) -> RunRecord:
    result = run_bronze(box.layout, table_names=TABLES, pipelines_dir=str(box.pipelines_dir))
    assert result.record is not None
    return result.record


def _manifest(box: Sandbox, load_id: str) -> dict[str, tuple[int, ...]]:
    """table -> (files, new, changed, file rejects, read, valid, superseded, late, rejected) of one load."""
    rows = query(box.warehouse, "SELECT table_name, count(*), count(*) FILTER (WHERE replaced_fingerprint IS NULL), "
                 "count(*) FILTER (WHERE replaced_fingerprint IS NOT NULL), count(*) FILTER (WHERE status = "
                 "'file_rejected'), sum(row_count), sum(valid_count), sum(superseded_count), sum(late_count), "
                 "sum(reject_count) FROM bronze.manifest_processed_files WHERE load_id = ? GROUP BY ALL", [load_id])
    return {r[0]: tuple(int(x) for x in r[1:]) for r in rows}


def _figures(record: RunRecord) -> dict[str, tuple[int, ...]]:
    return {name: (f.files_new + f.files_changed, f.files_new, f.files_changed, f.files_rejected, f.rows_read,
                   f.rows_valid, f.rows_superseded, f.rows_late, f.rows_rejected)
            for name, f in record.tables.items() if f.files_read}


def _reasons(box: Sandbox, load_id: str) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for table, reason, n in query(box.warehouse, "SELECT table_name, reason_code, count(*) FROM bronze.rejects "
                                  "WHERE load_id = ? GROUP BY ALL", [load_id]):
        out.setdefault(table, {})[reason] = n
    return out


def _delta_version_with(box: Sandbox, table: str, load_id: str) -> int:
    history = DeltaTable(str(box.lake / "bronze" / "delta" / table)).history()
    return max(h["version"] for h in history if h.get("retail_bronze.load_id") == load_id)


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Sandbox, list[RunRecord]]:
    """A first run, a no-op run, then a run with one new and one changed file."""
    root = tmp_path_factory.mktemp("three_runs")
    box = make_sandbox(root, raw=_raw(root))
    first = _run(box)
    noop = _run(box)
    shutil.copy(SAMPLE / "customers" / "customers_2.csv", box.raw / "customers" / "customers_3.csv")
    changed = box.raw / "orders" / "orders_2024-03-08.csv"
    changed.write_text("\n".join(changed.read_text().splitlines()[:-3]) + "\n")
    third = _run(box)
    return box, [first, noop, third]


def test_first_run_record_is_what_the_warehouse_holds(three_runs: tuple[Sandbox, list[RunRecord]]) -> None:
    box, (first, _, _) = three_runs
    assert first.recorded and first.status == "ok" and first.warehouse_load_id and first.lake_load_id
    assert _figures(first) == _manifest(box, first.warehouse_load_id)
    assert {t: f.rejects for t, f in first.tables.items() if f.rejects} == _reasons(box, first.warehouse_load_id)
    assert all(f.files_unchanged == 0 for f in first.tables.values())
    assert first.tables["stores"].rejects == {"FILE_ENCODING": 1} and first.tables["stores"].files_rejected == 1
    for table in ("orders", "customers", "rejects", "manifest_processed_files"):
        sink = first.sinks[table]
        assert sink.delta_version == _delta_version_with(box, table, first.warehouse_load_id)
        assert sink.change_log_files == len(list((box.lake / "bronze" / "parquet" / table).glob(
            f"{first.lake_load_id}.*.parquet")))
    loaded = query(box.warehouse, "SELECT count(*) FROM bronze.orders WHERE _dlt_load_id = ?",
                   [first.warehouse_load_id])[0][0]
    assert first.sinks["orders"].duckdb_rows == loaded == first.sinks["orders"].change_log_rows
    assert list(first.steps)[:3] == ["prepare", "extract", "normalize"] and first.steps["record"] < 5
    assert sorted(first.rejects_csv) == sorted(
        str(p.relative_to(box.lake)) for p in (box.lake / "_rejects").glob(f"*/{first.warehouse_load_id}.csv"))


def test_a_no_op_run_records_its_unchanged_files(three_runs: tuple[Sandbox, list[RunRecord]]) -> None:
    _, (_, noop, _) = three_runs
    files = {t: len(list((SAMPLE / t).iterdir())) for t in TABLES}
    assert noop.status == "ok" and noop.warehouse_load_id is None and noop.lake_load_id is None
    assert {t: f.files_unchanged for t, f in noop.tables.items()} == files
    assert all(f.files_read == 0 and f.rows_read == 0 for f in noop.tables.values())
    assert noop.sinks == {}


def test_a_run_with_new_and_changed_files(three_runs: tuple[Sandbox, list[RunRecord]]) -> None:
    box, (_, _, third) = three_runs
    assert third.warehouse_load_id
    assert (third.tables["customers"].files_new, third.tables["customers"].files_changed) == (1, 0)
    assert (third.tables["orders"].files_new, third.tables["orders"].files_changed) == (0, 1)
    assert third.tables["orders"].files_unchanged == len(list((SAMPLE / "orders").iterdir())) - 1
    assert third.tables["customers"].files_unchanged == len(list((SAMPLE / "customers").iterdir()))
    assert _figures(third) == _manifest(box, third.warehouse_load_id)
    assert third.tables["customers"].rows_superseded == query(
        box.warehouse, "SELECT sum(superseded_count) FROM bronze.manifest_processed_files WHERE load_id = ? AND "
        "table_name = 'customers'", [third.warehouse_load_id])[0][0]


def test_load_info_reads_back_every_run_from_warehouse_and_lake(three_runs: tuple[Sandbox, list[RunRecord]]) -> None:
    box, runs = three_runs
    found = load_info(box.layout, last=10)
    assert [r.run_id for r in found] == [r.run_id for r in runs]
    assert [r.to_json() for r in found] == [r.to_json() for r in runs]
    assert [r.run_id for r in load_info(box.layout)] == [runs[-1].run_id]
    by_load = load_info(box.layout, load_id=runs[0].warehouse_load_id)
    by_lake_load = load_info(box.layout, load_id=runs[0].lake_load_id)
    assert [r.run_id for r in by_load] == [r.run_id for r in by_lake_load] == [runs[0].run_id]
    for record in runs:
        stored = json.loads((box.lake / "_retail_bronze" / "runs" / f"{record.run_id}.json").read_text())
        assert stored == record.to_json()
    tables = query(box.warehouse, "SELECT table_name, rows_read, files_unchanged FROM _retail_bronze.run_tables "
                   "WHERE run_id = ? ORDER BY 1", [runs[1].run_id])
    assert tables == sorted((t, 0, f.files_unchanged) for t, f in runs[1].tables.items())
    with pytest.raises(RunNotFound):
        load_info(box.layout, load_id="123.456")


def test_load_info_on_a_new_machine_with_only_the_warehouse_and_lake(tmp_path: Path,
                                                                   three_runs: tuple[Sandbox, list[RunRecord]]) -> None:
    box, runs = three_runs
    moved = make_sandbox(tmp_path)
    shutil.copytree(box.lake, moved.lake)
    moved.warehouse.parent.mkdir(parents=True)
    shutil.copy(box.warehouse, moved.warehouse)
    assert [r.to_json() for r in load_info(moved.layout, last=3)] == [r.to_json() for r in runs]
    moved.warehouse.unlink()
    assert [r.to_json() for r in load_info(moved.layout, last=3)] == [r.to_json() for r in runs]


def test_loads_no_run_recorded_are_derived_from_the_sinks(tmp_path: Path,
                                                          three_runs: tuple[Sandbox, list[RunRecord]]) -> None:
    """As for runs made before run records existed: the records are gone, the figures are read from the sinks."""
    box, (first, _, third) = three_runs
    old = make_sandbox(tmp_path)
    shutil.copytree(box.lake, old.lake)
    shutil.rmtree(old.lake / "_retail_bronze" / "runs")
    old.warehouse.parent.mkdir(parents=True)
    shutil.copy(box.warehouse, old.warehouse)
    with duckdb.connect(str(old.warehouse)) as con:
        con.execute("DROP TABLE _retail_bronze.runs; DROP TABLE _retail_bronze.run_tables")
    derived = load_info(old.layout, last=5)
    assert [r.warehouse_load_id for r in derived] == [first.warehouse_load_id, third.warehouse_load_id]
    for record, recorded in zip(derived, (first, third), strict=True):
        assert not record.recorded and record.status == "loaded" and record.steps == {}
        assert record.lake_load_id == recorded.lake_load_id and record.ingestion_ts == recorded.ingestion_ts
        assert _figures(record) == _figures(recorded)
        assert {t: (s.duckdb_rows, s.change_log_files, s.change_log_rows, s.delta_version)
                for t, s in record.sinks.items()} == {
            t: (s.duckdb_rows, s.change_log_files, s.change_log_rows, s.delta_version)
            for t, s in recorded.sinks.items()}
    assert derived[1].tables["orders"].files_unchanged == third.tables["orders"].files_unchanged


def test_a_failed_run_is_recorded_with_its_error_and_the_next_run_completes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    box = make_sandbox(tmp_path, raw=_raw(tmp_path))

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise OSError("the lake is unreachable")

    monkeypatch.setattr(run_module, "sync_change_log", unreachable)
    with pytest.raises(OSError, match="unreachable"):
        run_bronze(box.layout, table_names=TABLES, pipelines_dir=str(box.pipelines_dir))
    [failed] = load_info(box.layout)
    assert failed.status == "failed" and failed.errors == ["OSError: the lake is unreachable"]
    assert failed.warehouse_load_id and failed.lake_load_id is None
    assert _figures(failed) == _manifest(box, failed.warehouse_load_id)
    monkeypatch.undo()
    after = _run(box)
    assert after.status == "ok" and after.warehouse_load_id is None and after.lake_load_id
    assert after.sinks["orders"].change_log_rows == failed.sinks["orders"].duckdb_rows
    assert [r.status for r in load_info(box.layout, last=5)] == ["failed", "ok"]


def test_audit_results_show_when_write_audit_publish_wrote_them(tmp_path: Path) -> None:
    box = make_sandbox(tmp_path, raw=_raw(tmp_path))
    record = _run(box)
    assert record.audits == [] and "audits: no audits" in _text(box)
    with duckdb.connect(str(box.warehouse)) as con:
        con.execute("CREATE TABLE bronze.audit_results (load_id VARCHAR, table_name VARCHAR, audit VARCHAR, "
                    "expected VARCHAR, observed VARCHAR, passed BOOLEAN)")
        con.execute("INSERT INTO bronze.audit_results VALUES (?, 'orders', 'row_count', '>= 100', '2059', true), "
                    "(?, 'orders', 'customers_exist', '0 orphans', '12 orphans', false), "
                    "('1.0', 'orders', 'row_count', '>= 1', '0', false)",
                    [record.warehouse_load_id, record.warehouse_load_id])
    [shown] = load_info(box.layout)
    assert [(a.audit, a.passed) for a in shown.audits] == [("customers_exist", False), ("row_count", True)]
    assert shown.shown_status == "audit_failed"
    assert "audits: 1 passed, 1 failed" in _text(box) and "customers_exist: expected 0 orphans" in _text(box)


def _text(box: Sandbox) -> str:
    done = run_cli("load-info", "--lake", str(box.lake), "--warehouse", str(box.warehouse))
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_configuration_keys_are_read_through_dlt(monkeypatch: pytest.MonkeyPatch) -> None:
    assert MetricsConfig.configured() == MetricsConfig() and not MetricsConfig().enabled
    assert ReportConfig.configured() == ReportConfig(enabled=True, runs=30)
    monkeypatch.setenv("RETAIL_BRONZE__METRICS__TEXTFILE_DIR", "/var/lib/node")
    monkeypatch.setenv("RETAIL_BRONZE__METRICS__PUSHGATEWAY_URL", "http://127.0.0.1:9091")
    monkeypatch.setenv("RETAIL_BRONZE__METRICS__JOB", "bronze")
    monkeypatch.setenv("RETAIL_BRONZE__METRICS__PUSH_TIMEOUT", "2.5")
    monkeypatch.setenv("RETAIL_BRONZE__REPORT__ENABLED", "false")
    monkeypatch.setenv("RETAIL_BRONZE__REPORT__RUNS", "7")
    assert MetricsConfig.configured() == MetricsConfig("/var/lib/node", "http://127.0.0.1:9091", "bronze", 2.5)
    assert ReportConfig.configured() == ReportConfig(enabled=False, runs=7)


@pytest.mark.slow
def test_cli_prints_the_recorded_figures_and_load_info(tmp_path: Path) -> None:
    box = make_sandbox(tmp_path, raw=_raw(tmp_path))
    done = run_cli(*box_args(box, TABLES))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:len(TABLES)]] == [f"extracted {t}" for t in TABLES]
    header = next(line for line in lines if line.startswith("table "))
    assert header.split()[:10] == ["table", "new", "changed", "unchanged", "rejected", "read", "valid",
                                   "superseded", "late", "rejected"]
    stores = next(line for line in lines if line.startswith("stores "))
    assert stores.split()[1:5] == ["2", "0", "0", "1"] and "FILE_ENCODING=1" in stores
    again = run_cli(*box_args(box, TABLES))
    files = sum(len(list((box.raw / t).iterdir())) for t in TABLES)
    assert f"nothing new: {files} file(s) unchanged in {len(TABLES)} table(s)" in again.stdout
    assert "warehouse load - (nothing new)" in again.stdout
    shown = run_cli("load-info", "--last", "2", "--json", "--lake", str(box.lake), "--warehouse", str(box.warehouse))
    assert shown.returncode == 0, shown.stderr
    records = json.loads(shown.stdout)
    assert [r["tables"]["stores"]["files_rejected"] for r in records] == [1, 0]
    assert records[0]["audits"] == [] and records[1]["tables"]["stores"]["files_unchanged"] == 2
    text = run_cli("load-info", records[0]["warehouse_load_id"], "--lake", str(box.lake), "--warehouse",
                   str(box.warehouse))
    assert text.returncode == 0 and f"run {records[0]['run_id']}: ok" in text.stdout
    missing = run_cli("load-info", "42.0", "--lake", str(box.lake), "--warehouse", str(box.warehouse))
    assert missing.returncode == 2 and "no run or load '42.0'" in missing.stderr
    report = box.lake / "_retail_bronze" / "report"
    shutil.rmtree(report)
    pages = run_cli("report", "--last", "5", "--lake", str(box.lake), "--warehouse", str(box.warehouse))
    assert pages.returncode == 0, pages.stderr
    assert sorted(p.name for p in report.iterdir()) == sorted([*(f"{r['run_id']}.html" for r in records),
                                                               "index.html"])


@pytest.mark.slow
def test_a_killed_run_is_answered_from_the_sinks_and_the_next_run_names_it(tmp_path: Path) -> None:
    box = make_sandbox(tmp_path, raw=_raw(tmp_path))
    first = run_cli(*box_args(box, TABLES))
    assert first.returncode == 0, first.stderr
    shutil.copy(SAMPLE / "customers" / "customers_2.csv", box.raw / "customers" / "customers_3.csv")
    killed = subprocess.run([sys.executable, str(REPO / "scripts" / "bronze_dlt_pipeline.py"), *box_args(box, TABLES)],
                            cwd=REPO, env={**os.environ, "RETAIL_BRONZE_CRASH_AT": "warehouse_loaded"},
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL
    [load] = [row[0] for row in query(box.warehouse, "SELECT load_id FROM bronze._dlt_loads WHERE status = 0 "
                                      "ORDER BY inserted_at DESC LIMIT 1")]
    [alone] = load_info(box.layout)
    assert alone.run_id == load and not alone.recorded and alone.lake_load_id is None
    done = run_cli(*box_args(box, TABLES))
    assert done.returncode == 0, done.stderr
    assert f"completed earlier loads no run recorded (a killed run): {load}" in done.stdout
    recorded, derived, completing = load_info(box.layout, last=3)
    assert recorded.recorded and recorded.tables["customers"].files_new == 3
    assert not derived.recorded and derived.warehouse_load_id == load and derived.status == "loaded"
    assert derived.tables["customers"].files_new == 1 and derived.tables["customers"].files_unchanged == 3
    assert _figures(derived) == _manifest(box, load)
    assert completing.recorded and completing.earlier_loads == [load] and completing.warehouse_load_id is None
    assert derived.lake_load_id == completing.lake_load_id is not None
    assert derived.sinks["customers"].delta_version == _delta_version_with(box, "customers", load)
    assert derived.sinks["customers"].change_log_rows == derived.sinks["customers"].duckdb_rows > 0


def test_records_and_report_of_a_lake_on_s3(tmp_path: Path, s3_server: Any, s3_bucket: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The record and the report go through the lake's store: on a bucket, read back with only the lake left."""
    for key, value in s3_server.dlt_env("DESTINATION__RETAIL_BRONZE_LAKE__CREDENTIALS").items():
        monkeypatch.setenv(key, value)
    lake = f"s3://{s3_bucket}/lake"
    layout = Layout(raw_url=str(_raw(tmp_path)), lake=lake, warehouse=tmp_path / "warehouse.duckdb")
    result = run_bronze(layout, table_names=TABLES, pipelines_dir=str(tmp_path / "pipelines"))
    assert result.record is not None and result.record.warehouse_load_id is not None
    history = DeltaTable(f"{lake}/bronze/delta/orders", storage_options=s3_server.delta_storage_options()).history()
    assert result.record.sinks["orders"].delta_version == max(
        h["version"] for h in history if h.get("retail_bronze.load_id") == result.record.warehouse_load_id)
    keys = {o["Key"] for o in s3_server.client().list_objects_v2(Bucket=s3_bucket, Prefix="lake/_retail_bronze/")[
        "Contents"]}
    run_id = result.record.run_id
    assert {f"lake/_retail_bronze/runs/{run_id}.json", f"lake/_retail_bronze/report/{run_id}.html",
            "lake/_retail_bronze/report/index.html"} <= keys
    (tmp_path / "warehouse.duckdb").unlink()
    [read] = load_info(warehouse=tmp_path / "warehouse.duckdb", lake=lake)
    assert read.to_json() == result.record.to_json()
